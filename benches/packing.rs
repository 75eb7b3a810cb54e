//! Criterion benchmarks of the arithmetic core (benches/README.md has the
//! figures and the machine). Run: `cargo bench --bench packing`.
//!
//! Baseline, measured in the same run: tfhe-rs's built-in LWE packing key
//! switch (`keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext`,
//! q = 2^64, N = 4096, base 2^20 × 2 levels — its cheapest setting). Its cost
//! is exactly linear in K (one independent key switch per LWE), so it is
//! measured at K = 16 and compared per packed value.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use safhire::extract::ValueRef;
use safhire::pack::{PackSource, Packer, Placement};
use safhire::params::ParameterSet;
use safhire::rlwe::{Ciphertext, Context, GaloisKeys, SecretKey};
use safhire::rng::Csprng;
use std::hint::black_box;
use std::time::Duration;

struct Setup {
    ctx: Context,
    sk: SecretKey,
    keys: GaloisKeys,
}

fn setup() -> Setup {
    setup_set("b8")
}

fn setup_set(name: &str) -> Setup {
    let ctx = Context::new(ParameterSet::shipped(name).unwrap());
    let mut rng = Csprng::from_seed([1; 16]);
    let sk = SecretKey::generate(&ctx, &mut rng);
    let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
    let keys = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
    Setup { ctx, sk, keys }
}

fn random_order(rng: &mut Csprng, n: usize, k: usize) -> Vec<ValueRef> {
    let mut all: Vec<ValueRef> = (0..n).map(|i| ValueRef::new(0, i)).collect();
    for i in (1..n).rev() {
        let j = rng.uniform_below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

fn arithmetic(c: &mut Criterion) {
    let s = setup();
    let ctx = &s.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([2; 16]);
    let vals: Vec<i64> = (0..n as i64).map(|i| i % 100).collect();
    let ct = ctx.encrypt(&s.sk, &vals, &mut rng);
    let w: Vec<i64> = (0..576).map(|i| (i % 255) - 127).collect();
    let w_ntt = ctx.plaintext_ntt(&w);
    let ct_ntt = ctx.to_ntt(&ct);

    let mut g = c.benchmark_group("arithmetic");
    g.bench_function("encrypt_seeded", |b| {
        b.iter(|| ctx.encrypt_seeded(&s.sk, black_box(&vals), &mut rng))
    });
    g.bench_function("decrypt", |b| b.iter(|| ctx.decrypt(&s.sk, black_box(&ct))));
    g.bench_function("ct_x_pt_pointwise", |b| {
        b.iter(|| {
            let mut acc = ctx.ntt_zero();
            ctx.mul_plain_accumulate(&mut acc, black_box(&ct_ntt), &w_ntt);
            acc
        })
    });
    g.bench_function("ct_x_pt_full", |b| {
        b.iter(|| {
            let mut acc = ctx.ntt_zero();
            ctx.mul_plain_accumulate(&mut acc, &ctx.to_ntt(black_box(&ct)), &w_ntt);
            ctx.from_ntt(acc)
        })
    });
    g.bench_function("key_switch", |b| {
        b.iter(|| ctx.apply_galois(s.keys.key_for_level(1), black_box(&ct)))
    });
    g.finish();

    // The generator (KEY-1) against the one it replaced, tfhe-csprng's
    // AES-CTR read byte by byte as the crate used to: the same keystream.
    let mut g = c.benchmark_group("rng");
    let mut buf = vec![0u8; 64 << 10];
    g.bench_function("tfhe_csprng_64KiB", |b| {
        use tfhe_csprng::generators::{DefaultRandomGenerator, RandomGenerator};
        let mut old = DefaultRandomGenerator::new(tfhe_csprng::seeders::Seed(3));
        b.iter(|| {
            for x in buf.iter_mut() {
                *x = old.next_byte().unwrap_or(0);
            }
            black_box(&buf);
        })
    });
    g.bench_function("csprng_64KiB", |b| {
        let mut new = Csprng::from_seed([3; 16]);
        b.iter(|| {
            new.fill_bytes(&mut buf);
            black_box(&buf);
        })
    });
    let mut flooded = ct.clone();
    g.bench_function("flood_one_ciphertext", |b| {
        b.iter(|| ctx.flood(black_box(&mut flooded), &mut rng))
    });
    g.finish();

    let mut g = c.benchmark_group("pack");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let src = [PackSource::plain(&ct)];
    let packer = Packer::new(ctx, &s.keys);
    for k in [256usize, 1024, 4096] {
        let order = random_order(&mut rng, n, k);
        // Into coefficients 0..K (what a dense shuffle-pack produces).
        g.bench_with_input(BenchmarkId::new("safhire_dense", k), &order, |b, order| {
            b.iter(|| packer.pack_dense(&src, order).unwrap())
        });
        // Into coefficients k·N/K, PackLWEs's natural layout for K < N.
        let strided: Vec<Placement> = order
            .iter()
            .enumerate()
            .map(|(i, &value)| Placement {
                value,
                output: 0,
                position: i * (n / k),
            })
            .collect();
        g.bench_with_input(BenchmarkId::new("safhire_strided", k), &strided, |b, p| {
            b.iter(|| packer.pack(&src, p).unwrap())
        });
    }
    g.finish();
}

/// One hybrid key switch per shipped set of the b16/s16 comparison
/// (issue 9): one limb at N = 4096 against two limbs at N = 8192.
fn key_switch_by_set(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_switch_set");
    for name in ["b16", "s16"] {
        let s = setup_set(name);
        let ctx = &s.ctx;
        let mut rng = Csprng::from_seed([3; 16]);
        let vals: Vec<i64> = (0..ctx.n() as i64).map(|i| i % 100).collect();
        let ct = ctx.encrypt(&s.sk, &vals, &mut rng);
        g.bench_function(name, |b| {
            b.iter(|| ctx.apply_galois(s.keys.key_for_level(1), black_box(&ct)))
        });
    }
    g.finish();
}

fn tfhe_baseline(c: &mut Criterion) {
    use tfhe::core_crypto::prelude::*;
    let n = 4096;
    let k = 16;
    let mut seeder = new_seeder();
    let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let mut enc_gen =
        EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder.as_mut());
    let glwe_sk: GlweSecretKeyOwned<u64> = allocate_and_generate_new_binary_glwe_secret_key(
        GlweDimension(1),
        PolynomialSize(n),
        &mut secret_gen,
    );
    let lwe_sk = glwe_sk.as_lwe_secret_key();
    let noise = DynamicDistribution::new_t_uniform(3);
    let modulus = CiphertextModulus::new_native();
    let pksk = allocate_and_generate_new_lwe_packing_keyswitch_key(
        &lwe_sk,
        &glwe_sk,
        DecompositionBaseLog(20),
        DecompositionLevelCount(2),
        noise,
        modulus,
        &mut enc_gen,
    );
    let mut list = LweCiphertextList::new(0u64, LweSize(n + 1), LweCiphertextCount(k), modulus);
    let plain = PlaintextList::new(1u64 << 40, PlaintextCount(k));
    encrypt_lwe_ciphertext_list(&lwe_sk, &mut list, &plain, noise, &mut enc_gen);
    let mut out = GlweCiphertext::new(0u64, GlweSize(2), PolynomialSize(n), modulus);

    let mut g = c.benchmark_group("pack");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function(BenchmarkId::new("tfhe_native_packing_keyswitch", k), |b| {
        b.iter(|| {
            keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext(
                &pksk,
                black_box(&list),
                &mut out,
            )
        })
    });
    g.finish();
}

/// ENG-14 (issue 9): the last round of a pair of digits images, 20 rows of
/// 512 columns at the response's stride S = 128 on b16. Baseline, in the
/// same run: the rows packed one per source ciphertext (ENG-10's layout,
/// each row's sum at its last used coefficient); against it the rows
/// stacked in 4 groups at S_g = 512 and traced (`Packer::trace_groups`).
fn last_rows(c: &mut Criterion) {
    let s = setup_set("b16");
    let ctx = &s.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([4; 16]);
    let vals: Vec<i64> = (0..n as i64).map(|i| i % 100).collect();
    let (rows, cols, stride, group_stride) = (20, 512, n / 32, 512);
    let products: Vec<Ciphertext> = (0..rows)
        .map(|_| ctx.encrypt(&s.sk, &vals, &mut rng))
        .collect();
    let sources: Vec<PackSource> = products.iter().map(PackSource::plain).collect();
    let placements: Vec<Placement> = (0..rows)
        .map(|i| Placement {
            value: ValueRef::new(i, cols - 1),
            output: 0,
            position: i * stride,
        })
        .collect();
    let groups = &products[..group_stride / stride];
    let packer = Packer::new(ctx, &s.keys);
    let mut g = c.benchmark_group("last_rows");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("rows_20_one_per_source", |b| {
        b.iter(|| packer.pack(&sources, &placements).unwrap())
    });
    g.bench_function("rows_20_in_4_groups_traced", |b| {
        b.iter(|| packer.trace_groups(groups, group_stride, stride).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    arithmetic,
    key_switch_by_set,
    last_rows,
    tfhe_baseline
);
criterion_main!(benches);
