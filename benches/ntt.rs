//! The negacyclic transforms of the key switch (benches/README.md lever log,
//! "Goldilocks NTT"): tfhe-ntt's 64-bit plan against the crate's own
//! Goldilocks transform (`NttPlan` for q = 2^64 − 2^32 + 1 on AVX-512 or
//! AVX2) at the shipped degrees, and tfhe-ntt's 32-bit plan for the
//! b-sets' special prime P at theirs (N = 4096), and its 64-bit plan for
//! the wider special primes a two-digit gadget would need (benches/README.md,
//! "The next lever, costed": 37 and 44 bits, IFMA-sized on AVX-512).
//! Run: `cargo bench --bench ntt`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use safhire::math::{NttPlan, SOLINAS};
use std::hint::black_box;

/// The b-sets' special prime P (spec/parameters.toml).
const P: u32 = 2147377153;

/// Primes ≡ 1 mod 2^13 of 37 and 44 bits: the special prime of a
/// two-digit gadget (B = 32) at N = 4096, at the noise floor and at the
/// security bound (benches/README.md, "The next lever, costed").
const WIDE_P: [u64; 2] = [137438822401, 17592186028033];

fn values(n: usize, modulus: u64) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % modulus
        })
        .collect()
}

fn transforms(c: &mut Criterion) {
    let mut g = c.benchmark_group("ntt");
    for n in [4096usize, 8192] {
        let q = values(n, SOLINAS);
        let tfhe = tfhe_ntt::prime64::Plan::try_new(n, SOLINAS).unwrap();
        let ours = NttPlan::new(n, SOLINAS).unwrap();
        let mut buf = q.clone();
        g.bench_function(BenchmarkId::new("q_fwd_tfhe", n), |b| {
            b.iter(|| tfhe.fwd(black_box(&mut buf)))
        });
        g.bench_function(BenchmarkId::new("q_inv_tfhe", n), |b| {
            b.iter(|| tfhe.inv(black_box(&mut buf)))
        });
        buf.copy_from_slice(&q);
        g.bench_function(BenchmarkId::new("q_fwd_plan", n), |b| {
            b.iter(|| ours.forward(black_box(&mut buf)))
        });
        g.bench_function(BenchmarkId::new("q_inv_plan", n), |b| {
            b.iter(|| ours.backward_unnormalized(black_box(&mut buf)))
        });
        // P ≡ 1 mod 2^14 serves N = 4096 only: the set at N = 8192 (s16)
        // has a 61-bit special prime, transformed like q.
        let Some(narrow) = tfhe_ntt::prime32::Plan::try_new(n, P) else {
            continue;
        };
        let mut p: Vec<u32> = values(n, P as u64).iter().map(|&x| x as u32).collect();
        g.bench_function(BenchmarkId::new("p_fwd_tfhe32", n), |b| {
            b.iter(|| narrow.fwd(black_box(&mut p)))
        });
        g.bench_function(BenchmarkId::new("p_inv_tfhe32", n), |b| {
            b.iter(|| narrow.inv(black_box(&mut p)))
        });
        for wide in WIDE_P {
            let bits = 64 - wide.leading_zeros();
            let plan = tfhe_ntt::prime64::Plan::try_new(n, wide).unwrap();
            let mut w = values(n, wide);
            g.bench_function(BenchmarkId::new(format!("p{bits}_fwd_tfhe64"), n), |b| {
                b.iter(|| plan.fwd(black_box(&mut w)))
            });
            g.bench_function(BenchmarkId::new(format!("p{bits}_inv_tfhe64"), n), |b| {
                b.iter(|| plan.inv(black_box(&mut w)))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = transforms
}
criterion_main!(benches);
