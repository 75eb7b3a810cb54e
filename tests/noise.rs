//! NOISE-1, NOISE-2: measured noise on real ciphertexts against the model of
//! proofs/noise-budget.md.
//!
//! Method: the noise coefficients of a ciphertext are treated as a sample
//! of the model's distribution. If the model variance V is right (or too
//! large), the sample variance s² of n draws satisfies
//! (n−1)s²/V ≤ χ²_{n−1}(1 − 10⁻⁹) with probability ≥ 1 − 10⁻⁹, so the
//! "model is an upper bound" check fails spuriously with probability at most
//! 10⁻⁹ per run (under the approximation that coefficients are independent;
//! correlated coefficients make the interval wider, see the proof). The
//! model must also not be loose by more than 2 bits of standard deviation.

mod common;

use common::{fixture, random_values};
use safhire::extract::ValueRef;
use safhire::pack::{PackSource, Packer};
use safhire::rlwe::Context;
use safhire::rng::Csprng;
use statrs::distribution::{ChiSquared, ContinuousCDF};

fn variance(samples: &[i64]) -> f64 {
    let n = samples.len() as f64;
    let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / n;
    samples
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0)
}

/// Upper end of the one-sided 1 − 10⁻⁹ confidence bound for the variance ratio.
fn chi2_upper_ratio(n: usize) -> f64 {
    let dof = (n - 1) as f64;
    ChiSquared::new(dof).unwrap().inverse_cdf(1.0 - 1e-9) / dof
}

fn assert_within(measured: f64, model: f64, n: usize, what: &str) {
    let upper = chi2_upper_ratio(n);
    eprintln!(
        "{what}: measured std 2^{:.2}, model std 2^{:.2}",
        measured.log2() / 2.0,
        model.log2() / 2.0
    );
    assert!(
        measured <= model * upper,
        "{what}: measured variance exceeds the model"
    );
    assert!(
        measured >= model / 16.0,
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
    safhire::math::poly::automorphism(ctx.q(), &mut twisted, &before, g);
    let after = ctx.phase(&f.sk, &switched);
    after
        .iter()
        .zip(&twisted)
        .map(|(&a, &b)| ctx.q().centered(ctx.q().sub(a, b)))
        .collect()
}

#[test]
fn key_switch_noise_matches_model() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let samples: Vec<i64> = (1..=4)
        .flat_map(|l| noise_after_galois(ctx, l, l as u8))
        .collect();
    let model = ctx.params().budget().pack.key_switch;
    assert_within(variance(&samples), model, samples.len(), "one key switch");
}

#[test]
fn measured_noise_within_model() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([77; 16]);
    let vals = random_values(ctx, &mut rng, n);
    let ct = ctx.encrypt(&f.sk, &vals, &mut rng);
    // A full random permutation: the unshuffle repack of one ciphertext.
    let mut order: Vec<ValueRef> = (0..n).map(|i| ValueRef::new(0, i)).collect();
    for i in (1..n).rev() {
        let j = rng.uniform_below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let packed = Packer::new(ctx, &f.galois)
        .pack_dense(&[PackSource::plain(&ct)], &order)
        .unwrap();
    let expected: Vec<i64> = order.iter().map(|v| vals[v.coeff as usize]).collect();
    let noise = ctx.noise(&f.sk, &packed[0], &expected);
    let model = ctx.params().budget().after_repack;
    assert_within(
        variance(&noise),
        model,
        noise.len(),
        "repack K = N, shared levels",
    );

    // Linear layer with ‖w‖₁ at the set's bound: the Minkowski bound holds.
    let w_l1 = 1i64 << ctx.params().max_weight_l1_log2();
    let mut w = vec![0i64; n];
    // 8 taps sharing ‖w‖₁ = 2^W, alternating signs.
    for k in 0..8 {
        w[k * 3] = if k % 2 == 0 { w_l1 / 8 } else { -(w_l1 / 8) };
    }
    let layer_pt = ctx.plaintext_ntt(&w);
    let mut acc = ctx.ntt_zero();
    ctx.mul_plain_accumulate(&mut acc, &ctx.to_ntt(&packed[0]), &layer_pt);
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
    let measured = variance(&lin_noise);
    eprintln!(
        "after linear: measured std 2^{:.2}, bound 2^{:.2}",
        measured.log2() / 2.0,
        std_bound.log2()
    );
    assert!(measured <= std_bound * std_bound * chi2_upper_ratio(lin_noise.len()));
    assert_eq!(ctx.decrypt(&f.sk, &out), prod);
}
