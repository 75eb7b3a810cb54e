//! NOISE-1, NOISE-2: measured noise on real ciphertexts against the model of
//! proofs/noise-budget.md.
//!
//! Method: each ciphertext gives one estimate of the noise variance (the
//! mean square of its N noise coefficients). Coefficients of one ciphertext
//! are correlated, ciphertexts are independent, so the estimates v_1..v_k are
//! treated as i.i.d. and the model variance V is checked against a one-sided
//! Student-t bound: mean(v) ≤ V + t_{k−1}(1 − 10⁻⁶)·sd(v)/√k. If the model is
//! a true upper bound, a run fails spuriously with probability ≤ 10⁻⁶ (under
//! the approximate normality of the mean of k estimates). The model must also
//! not be looser than 2 bits of standard deviation (V ≤ 16·mean(v)).

mod common;

use common::{fixture, random_values};
use safhire::extract::ValueRef;
use safhire::pack::{PackSource, Packer};
use safhire::rlwe::{Ciphertext, Context};
use safhire::rng::Csprng;
use statrs::distribution::{ContinuousCDF, StudentsT};

fn mean_square(samples: &[i64]) -> f64 {
    samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / samples.len() as f64
}

fn assert_within(estimates: &[f64], model: f64, what: &str) {
    let k = estimates.len() as f64;
    let mean = estimates.iter().sum::<f64>() / k;
    let sd = (estimates.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
    let t = StudentsT::new(0.0, 1.0, k - 1.0)
        .unwrap()
        .inverse_cdf(1.0 - 1e-6);
    eprintln!(
        "{what}: measured std 2^{:.2} (±{:.1}% per ciphertext), model std 2^{:.2}",
        mean.log2() / 2.0,
        100.0 * sd / mean,
        model.log2() / 2.0
    );
    assert!(
        mean <= model + t * sd / k.sqrt(),
        "{what}: measured variance exceeds the model"
    );
    assert!(
        model <= 16.0 * mean,
        "{what}: model is looser than 2 bits of std"
    );
}

fn noise_after_galois(ctx: &Context, level: u32, seed: u8) -> Vec<i64> {
    let f = fixture("b8");
    let mut rng = Csprng::from_seed([seed; 16]);
    let vals = random_values(ctx, &mut rng, ctx.n());
    let ct = ctx.encrypt(&f.sk, &vals, &mut rng);
    let g = (1usize << level) + 1;
    let key = &f.galois;
    let switched = ctx.apply_galois(key.key_for_level(level), &ct);
    // Expected phase: τ_g of the input phase.
    let before = ctx.phase(&f.sk, &ct);
    let mut twisted = vec![0u64; ctx.n()];
    safhire::math::poly::automorphism(ctx.q().limb(0), &mut twisted, &before, g);
    let after = ctx.phase(&f.sk, &switched);
    after
        .iter()
        .zip(&twisted)
        .map(|(&a, &b)| ctx.q().limb(0).centered(ctx.q().limb(0).sub(a, b)))
        .collect()
}

#[test]
fn key_switch_noise_matches_model() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let estimates: Vec<f64> = (0..64u32)
        .map(|i| mean_square(&noise_after_galois(ctx, 1 + i % 12, i as u8)))
        .collect();
    assert_within(
        &estimates,
        ctx.params().budget().pack.key_switch,
        "one key switch",
    );
}

// PACK-7: the images a pack computes from one shared gadget decomposition
// (`apply_galois_shared`, keys twisted by τ_g⁻¹, proofs/packing.md, Lemma 8)
// carry the noise of a plain key switch. One estimate per ciphertext (its
// images share digits, so they are not independent): the image of level
// 1 + i mod ℓ*, all ℓ* levels formed in the same call.
#[test]
fn shared_image_noise_matches_model() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let q = ctx.q().limb(0);
    let levels: Vec<u32> = (1..=ctx.params().shared_pack_levels()).collect();
    let estimates: Vec<f64> = (0..64u32)
        .map(|i| {
            let mut rng = Csprng::from_seed([100 + i as u8; 16]);
            let vals = random_values(ctx, &mut rng, ctx.n());
            let ct = ctx.encrypt(&f.sk, &vals, &mut rng);
            let images = ctx.apply_galois_shared(&f.galois, &levels, &ct);
            let k = i as usize % levels.len();
            let g = (1usize << levels[k]) + 1;
            let mut twisted = vec![0u64; ctx.n()];
            safhire::math::poly::automorphism(q, &mut twisted, &ctx.phase(&f.sk, &ct), g);
            let after = ctx.phase(&f.sk, &images[k]);
            let noise: Vec<i64> = after
                .iter()
                .zip(&twisted)
                .map(|(&a, &b)| q.centered(q.sub(a, b)))
                .collect();
            mean_square(&noise)
        })
        .collect();
    assert_within(
        &estimates,
        ctx.params().budget().pack.key_switch,
        "one shared image",
    );
}

/// The unshuffle repack of one fresh ciphertext in the given order, with
/// the set's ℓ* (what the budget covers): the packed ciphertext and the
/// values it must decrypt to.
fn repack(order_of: impl Fn(usize, &mut Csprng) -> Vec<usize>, seed: u8) -> (Ciphertext, Vec<i64>) {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([seed; 16]);
    let vals = random_values(ctx, &mut rng, n);
    let ct = ctx.encrypt(&f.sk, &vals, &mut rng);
    let order: Vec<ValueRef> = order_of(n, &mut rng)
        .into_iter()
        .map(|i| ValueRef::new(0, i))
        .collect();
    let mut packed = Packer::new(ctx, &f.galois)
        .with_shared_levels(ctx.params().shared_pack_levels())
        .unwrap()
        .pack_dense(&[PackSource::plain(&ct)], &order)
        .unwrap();
    let expected = order.iter().map(|v| vals[v.coeff as usize]).collect();
    (packed.remove(0), expected)
}

fn repack_noise(order_of: impl Fn(usize, &mut Csprng) -> Vec<usize>, seed: u8) -> Vec<i64> {
    let f = fixture("b8");
    let (packed, expected) = repack(order_of, seed);
    f.ctx.noise(&f.sk, &packed, &expected)
}

fn random_permutation(n: usize, rng: &mut Csprng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.uniform_below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[test]
fn repack_noise_within_model_for_structured_orders() {
    // The model is placement-independent: structured orders, whose copies of
    // one key-switch noise add coherently, must fit it too.
    let model = fixture("b8").ctx.params().budget().after_repack;
    let reversed = |n: usize, _: &mut Csprng| (0..n).rev().collect::<Vec<_>>();
    let bit_reversed = |n: usize, _: &mut Csprng| {
        let bits = n.trailing_zeros();
        (0..n)
            .map(|i| i.reverse_bits() >> (usize::BITS - bits))
            .collect::<Vec<_>>()
    };
    for (name, est) in [
        (
            "reversed",
            (0..4)
                .map(|s| mean_square(&repack_noise(reversed, s)))
                .collect::<Vec<_>>(),
        ),
        (
            "bit-reversed",
            (0..4)
                .map(|s| mean_square(&repack_noise(bit_reversed, s)))
                .collect(),
        ),
    ] {
        assert_within(&est, model, name);
    }
}

#[test]
fn measured_noise_within_model() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let n = ctx.n();
    let estimates: Vec<f64> = (0..6)
        .map(|s| mean_square(&repack_noise(random_permutation, 70 + s)))
        .collect();
    assert_within(
        &estimates,
        ctx.params().budget().after_repack,
        "repack K = N, random order",
    );

    // One repacked ciphertext for the linear layer below.
    let (packed, expected) = repack(random_permutation, 77);

    // Linear layer with ‖w‖₁ at the set's bound: the Minkowski bound holds.
    let w_l1 = 1i64 << ctx.params().max_weight_l1_log2();
    let mut w = vec![0i64; n];
    // 8 taps sharing ‖w‖₁ = 2^W, alternating signs.
    for k in 0..8 {
        w[k * 3] = if k % 2 == 0 { w_l1 / 8 } else { -(w_l1 / 8) };
    }
    let layer_pt = ctx.plaintext_ntt(&w);
    let mut acc = ctx.ntt_zero();
    ctx.mul_plain_accumulate(&mut acc, &ctx.to_ntt(&packed), &layer_pt);
    let out = ctx.from_ntt(acc);
    let prod: Vec<i64> = safhire::math::poly::negacyclic_mul_i64(&expected, &w)
        .iter()
        .map(|&x| {
            let t = 1i128 << ctx.params().plaintext_bits();
            let r = x.rem_euclid(t);
            (if r >= t / 2 { r - t } else { r }) as i64
        })
        .collect();
    let lin_noise = ctx.noise(&f.sk, &out, &prod);
    let std_bound = ctx.params().budget().after_linear_std;
    // Minkowski's bound is on the population std, for any correlation; the
    // sample of N coefficients is compared with it directly (the bound is
    // loose by more than a bit here, far beyond the ~15% sampling spread).
    let measured = mean_square(&lin_noise);
    eprintln!(
        "after linear: measured std 2^{:.2}, bound 2^{:.2}",
        measured.log2() / 2.0,
        std_bound.log2()
    );
    assert!(measured.sqrt() <= std_bound);
    assert_eq!(ctx.decrypt(&f.sk, &out), prod);
}
