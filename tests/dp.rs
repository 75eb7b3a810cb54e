//! Differential-privacy building blocks (spec/dp.md, proofs/dp.md): the exact
//! discrete Gaussian sampler (DP-1), the zCDP accountant (DP-2, DP-3, DP-4),
//! the sensitivity rules (DP-5, DP-6), the verdict (DP-7), and the worked
//! table of proofs/dp.md.
//!
//! Statistical tests use fixed seeds, so they are deterministic; the stated
//! false-failure probability is what a correct sampler would have for a seed
//! drawn at random (each bound is a two-sided 1e-6 quantile unless stated).

use safhire::dp::*;
use safhire::rng::Csprng;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// Two-sided false-failure probability of each statistical check.
const ALPHA: f64 = 1e-6;

fn z_two_sided(alpha: f64) -> f64 {
    Normal::new(0.0, 1.0)
        .unwrap()
        .inverse_cdf(1.0 - alpha / 2.0)
}

/// The exact pmf of N_Z(0, σ²) on −m..=m (floating point; reference only),
/// with the normaliser summed until the terms vanish.
fn pmf(sigma_sq: f64, m: i64) -> Vec<f64> {
    let w = |y: f64| (-y * y / (2.0 * sigma_sq)).exp();
    let mut z = 1.0;
    let mut y = 1.0;
    while w(y) > 1e-300 {
        z += 2.0 * w(y);
        y += 1.0;
    }
    (-m..=m).map(|y| w(y as f64) / z).collect()
}

/// Exact second and fourth moments of N_Z(0, σ²) (floating point).
fn moments(sigma_sq: f64) -> (f64, f64) {
    let m = (40.0 * sigma_sq.sqrt()).ceil() as i64 + 10;
    let p = pmf(sigma_sq, m);
    let (mut m2, mut m4) = (0.0, 0.0);
    for (i, pi) in p.iter().enumerate() {
        let y = (i as i64 - m) as f64;
        m2 += pi * y * y;
        m4 += pi * y.powi(4);
    }
    (m2, m4)
}

/// DP-1: mean, variance and χ² goodness of fit of 200 000 samples.
fn check_sampler(num: u64, den: u64, seed: u8) {
    check_gaussian(DiscreteGaussian::new(num, den).unwrap(), seed);
}

fn check_gaussian(dg: DiscreteGaussian, seed: u8) {
    let n = 200_000usize;
    let sigma_sq = dg.variance();
    let mut rng = Csprng::from_seed([seed; 16]);
    let samples: Vec<i64> = (0..n).map(|_| dg.sample(&mut rng)).collect();
    let z = z_two_sided(ALPHA); // 4.89
    let (var, m4) = moments(sigma_sq);

    // Mean: E = 0, sd = √(Var/n). CLT; false failure ≈ 1e-6.
    let mean = samples.iter().sum::<i64>() as f64 / n as f64;
    let sd_mean = (var / n as f64).sqrt();
    assert!(
        mean.abs() <= z * sd_mean,
        "σ² = {sigma_sq}: mean {mean} outside ±{}",
        z * sd_mean
    );

    // Second moment about the known mean 0: E = Var (exact pmf value, within
    // 2.2e-7·σ² of σ² for σ ≥ 1), sd = √((μ4 − Var²)/n). CLT; false failure ≈ 1e-6.
    let m2 = samples.iter().map(|&y| (y * y) as f64).sum::<f64>() / n as f64;
    let sd_m2 = ((m4 - var * var) / n as f64).sqrt();
    assert!(
        (m2 - var).abs() <= z * sd_m2,
        "σ² = {sigma_sq}: variance {m2}, expected {var} ± {}",
        z * sd_m2
    );

    // χ²: bins y = −k+1..=k−1 and the two open-ended bins y ≤ −k, y ≥ k,
    // with k the largest value whose own expected count is ≥ 5. Reject above
    // the χ²(2k) quantile at 1 − 1e-6: false failure 1e-6 (asymptotic χ²
    // law; every expected count ≥ 5).
    let m = (40.0 * sigma_sq.sqrt()) as i64 + 10;
    let p_all = pmf(sigma_sq, m);
    let at = |y: i64| p_all[(y + m) as usize];
    let mut k = 1i64;
    while at(k + 1) * n as f64 >= 5.0 {
        k += 1;
    }
    let mut observed = vec![0u64; (2 * k + 1) as usize];
    for &y in &samples {
        observed[(y.clamp(-k, k) + k) as usize] += 1;
    }
    let upper_tail: f64 = (k..=m).map(at).sum();
    let mut expected: Vec<f64> = (-k..=k).map(|y| at(y) * n as f64).collect();
    expected[0] = upper_tail * n as f64;
    expected[(2 * k) as usize] = upper_tail * n as f64;
    assert!(expected.iter().all(|&e| e >= 5.0), "bins too thin");
    let chi2: f64 = observed
        .iter()
        .zip(&expected)
        .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
        .sum();
    let df = (expected.len() - 1) as f64;
    let critical = ChiSquared::new(df).unwrap().inverse_cdf(1.0 - ALPHA);
    assert!(
        chi2 <= critical,
        "σ² = {sigma_sq}: χ² = {chi2} > {critical} (df {df})"
    );
    println!(
        "σ² = {sigma_sq}: mean {mean:.4} (±{:.4}), E[y²] {m2:.4} vs {var:.4} (±{:.4}), χ² {chi2:.1} ≤ {critical:.1} on {df} df",
        z * sd_mean,
        z * sd_m2
    );
}

#[test]
fn discrete_gaussian_sigma_3_matches_its_pmf() {
    // DP-1. Three checks at 1e-6 each: ≤ 3e-6 false failure in all.
    check_sampler(9, 1, 31);
}

#[test]
fn discrete_gaussian_sigma_20_matches_its_pmf() {
    // DP-1. Three checks at 1e-6 each: ≤ 3e-6 false failure in all.
    check_sampler(400, 1, 32);
}

#[test]
fn discrete_gaussian_power_of_two_sigmas_match_their_pmf() {
    // DP-1, PRIV-2: the flooding form (t = σ = 2^k, power-of-two rejection
    // denominator) at σ = 4 and σ = 32. Three checks at 1e-6 each per σ.
    for (k, seed) in [(2, 35), (5, 36)] {
        let dg = DiscreteGaussian::with_sigma_pow2(k).unwrap();
        assert_eq!(dg.laplace_scale(), 1 << k);
        assert_eq!(dg.variance(), (4f64).powi(k as i32));
        check_gaussian(dg, seed);
    }
    assert!(matches!(
        DiscreteGaussian::with_sigma_pow2(58),
        Err(DpError::SigmaTooLarge { log2_sigma: 58 })
    ));
    // The largest scale samples, within the truncation.
    let top = DiscreteGaussian::with_sigma_pow2(57).unwrap();
    let mut rng = Csprng::from_seed([12; 16]);
    assert!((0..100).all(|_| top.sample(&mut rng).unsigned_abs() <= 1 << 62));
}

#[test]
fn discrete_gaussian_rational_variances_match_their_pmf() {
    // DP-1: non-integer σ² (σ = 1/2, where t = 1, and σ² = 10/3). ≤ 6e-6.
    check_sampler(1, 4, 33);
    check_sampler(10, 3, 34);
}

#[test]
fn discrete_gaussian_variance_is_just_below_sigma_squared() {
    // The reference for the variance checks: Var N_Z(0, σ²) < σ² (CKS20), and
    // the gap 1 − Var/σ² ≈ 8π²σ²·exp(−2π²σ²) is 2.11e-7 at σ = 1 (computed
    // here and with mpmath at 50 digits: 2.1123e-7), 1.6e-32 at σ = 2.
    let (v1, _) = moments(1.0);
    assert!(
        v1 < 1.0 && 1.0 - v1 < 2.2e-7 && 1.0 - v1 > 2.0e-7,
        "{}",
        1.0 - v1
    );
    for s2 in [4.0, 9.0, 400.0] {
        let (v, _) = moments(s2);
        assert!((v / s2 - 1.0).abs() < 1e-12);
    }
}

#[test]
fn bernoulli_exp_has_the_right_frequency() {
    // DP-1: Bernoulli(exp(−γ)) for γ ≤ 1 and γ > 1, 200 000 draws each;
    // binomial sd, two-sided 1e-6 each (CLT).
    let mut rng = Csprng::from_seed([9; 16]);
    let n = 200_000;
    let z = z_two_sided(ALPHA);
    for (num, den) in [(0u128, 1u128), (1, 2), (1, 1), (7, 3), (5, 1)] {
        let hits = (0..n)
            .filter(|_| sample_bernoulli_exp(num, den, &mut rng))
            .count() as f64;
        let p = (-(num as f64) / den as f64).exp();
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (hits / n as f64 - p).abs() <= z * sd + 1e-12,
            "exp(−{num}/{den}): {} vs {p}",
            hits / n as f64
        );
    }
}

#[test]
fn discrete_laplace_is_symmetric_with_the_right_zero_mass() {
    // DP-1: P[0] = tanh(1/(2t)) for Lap_Z(t); t = 5, 200 000 draws, 1e-6.
    let mut rng = Csprng::from_seed([10; 16]);
    let n = 200_000;
    let t = 5u64;
    let samples: Vec<i64> = (0..n)
        .map(|_| sample_discrete_laplace(t, &mut rng))
        .collect();
    let p0 = (1.0 / (2.0 * t as f64)).tanh();
    let zeros = samples.iter().filter(|&&y| y == 0).count() as f64 / n as f64;
    let z = z_two_sided(ALPHA);
    assert!((zeros - p0).abs() <= z * (p0 * (1.0 - p0) / n as f64).sqrt());
    let positive = samples.iter().filter(|&&y| y > 0).count() as f64 / n as f64;
    let pp = (1.0 - p0) / 2.0;
    assert!((positive - pp).abs() <= z * (pp * (1.0 - pp) / n as f64).sqrt());
}

#[test]
fn sampler_refuses_variances_it_cannot_handle_exactly() {
    // DP-1: zero or overflowing parameters are refused, not approximated.
    assert!(matches!(
        DiscreteGaussian::new(0, 1),
        Err(DpError::NonPositiveVariance { .. })
    ));
    assert!(DiscreteGaussian::new(1, 0).is_err());
    assert!(matches!(
        DiscreteGaussian::new(u64::MAX, 1),
        Err(DpError::VarianceTooLarge { .. })
    ));
    // σ² = 4/3 with a huge denominator: 2·num·den·t² = 3·2^128 − … overflows.
    assert!(matches!(
        DiscreteGaussian::new((1 << 63) - 1, 3 << 61),
        Err(DpError::VarianceTooLarge { .. })
    ));
    // Tiny σ² with a huge denominator is fine (t = 1).
    assert!(DiscreteGaussian::new(1 << 40, u64::MAX).is_ok());
    assert!(DiscreteGaussian::new((1 << 63) - 1, 1).is_ok());
    let big = DiscreteGaussian::with_sigma((1 << 31) - 1).unwrap();
    assert_eq!(big.laplace_scale(), 1 << 31);
    // Large σ still samples (and quickly).
    let mut rng = Csprng::from_seed([11; 16]);
    let y = big.sample(&mut rng);
    assert!(y.unsigned_abs() < 1 << 40);
    assert!(sample_discrete_gaussian(9, 1, &mut rng).is_ok());
    assert_eq!(DiscreteGaussian::with_sigma(3).unwrap().laplace_scale(), 4);
    assert_eq!(DiscreteGaussian::new(1, 4).unwrap().laplace_scale(), 1);
}

// ---------------------------------------------------------------------------
// Accountant.
// ---------------------------------------------------------------------------

#[test]
fn gaussian_rho_is_half_for_unit_ratio_and_composition_adds() {
    // DP-2: ρ = Δ²/(2σ²); DP-3: ρ adds.
    assert_eq!(gaussian_rho(1.0, 1.0), 0.5);
    assert_eq!(gaussian_rho(120.0, 120.0), 0.5);
    assert_eq!(gaussian_rho(3.0, 1.5), 2.0);
    let mut acc = Accountant::new();
    acc.add_gaussian(1.0, 1.0).add_gaussian(2.0, 2.0);
    assert_eq!(acc.rho(), 1.0);
    assert_eq!(acc.compose(8).rho(), 8.0);
    acc.add_rho(0.25);
    assert_eq!(acc.rho(), 1.25);
    // Composition is never cheaper in ε.
    let one = Accountant::from_rho(0.5);
    assert!(one.compose(2).epsilon(1e-6) > one.epsilon(1e-6));
}

#[test]
fn conversion_is_monotone_and_tight_is_below_simple() {
    // DP-4.
    for rho in [1e-6, 1e-3, 0.05, 0.5, 2.0, 50.0, 3000.0] {
        let acc = Accountant::from_rho(rho);
        let mut last = f64::INFINITY;
        for delta in [1e-12, 1e-8, 1e-6, 1e-4, 1e-2] {
            let eps = acc.epsilon(delta);
            assert!(eps < last, "ε not decreasing in δ at ρ = {rho}");
            last = eps;
            let tight = epsilon_tight(rho, delta);
            let simple = epsilon_simple(rho, delta);
            assert!(tight <= simple, "ρ {rho} δ {delta}: {tight} > {simple}");
            assert_eq!(eps, tight.min(simple));
            assert!(acc.delta(eps) <= delta * (1.0 + 1e-6));
        }
        let mut last_d = 1.0f64;
        for eps in [0.1, 1.0, 5.0, 20.0, 200.0] {
            let d = acc.delta(eps);
            assert!(d <= last_d && d <= delta_simple(rho, eps));
            last_d = d;
        }
    }
    assert_eq!(Accountant::from_rho(0.0).epsilon(1e-6), 0.0);
}

/// δ_α(ε) = exp((α−1)(αρ−ε))/(α−1)·(1 − 1/α)^α (CKS20 Cor. 13), computed
/// directly with powf (not the crate's log form).
fn delta_alpha(rho: f64, eps: f64, alpha: f64) -> f64 {
    ((alpha - 1.0) * (alpha * rho - eps)).exp() / (alpha - 1.0) * (1.0 - 1.0 / alpha).powf(alpha)
}

#[test]
fn tight_conversion_matches_an_independent_grid_at_rho_half() {
    // DP-4. Reference: bisection on ε of min over a fine α grid
    // (α = 1.0001..40, step 1e-4) of δ_α(ε), and the closed form minimised
    // with mpmath at 50 digits (dε_α/dα = 0): ε = 4.728386984943314 at
    // ρ = 0.5, δ = 1e-5 (the simple bound gives 5.298525912188081).
    let (rho, delta) = (0.5, 1e-5);
    let grid_delta = |eps: f64| {
        (1..=400_000)
            .map(|i| delta_alpha(rho, eps, 1.0 + i as f64 * 1e-4))
            .fold(f64::INFINITY, f64::min)
    };
    let (mut lo, mut hi) = (0.0, 20.0);
    for _ in 0..50 {
        let mid = (lo + hi) / 2.0;
        if grid_delta(mid) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let reference = hi;
    let mpmath = 4.728386984943314;
    assert!((reference / mpmath - 1.0).abs() < 1e-7, "grid {reference}");
    let eps = Accountant::from_rho(rho).epsilon(delta);
    assert!((eps / reference - 1.0).abs() < 1e-6, "{eps} vs {reference}");
    assert!((eps / mpmath - 1.0).abs() < 1e-6, "{eps} vs {mpmath}");
    assert!(eps >= mpmath * (1.0 - 1e-12), "below the infimum: {eps}");
    assert!((epsilon_simple(rho, delta) - 5.298525912188081).abs() < 1e-12);
}

/// The exact privacy curve of the Gaussian mechanism (Balle & Wang 2018,
/// the analytic Gaussian mechanism): δ(ε) = Φ(Δ/(2σ) − εσ/Δ) − e^ε·Φ(−Δ/(2σ) − εσ/Δ).
fn balle_wang_delta(eps: f64, delta_l2: f64, sigma: f64) -> f64 {
    let phi = Normal::new(0.0, 1.0).unwrap();
    let a = delta_l2 / (2.0 * sigma);
    let b = eps * sigma / delta_l2;
    phi.cdf(a - b) - eps.exp() * phi.cdf(-a - b)
}

#[test]
fn zcdp_epsilon_bounds_the_exact_gaussian_curve_within_fifteen_percent() {
    // DP-4: for one Gaussian release at δ = 1e-6, the accountant's ε is an
    // upper bound on the exact ε of the Gaussian mechanism and at most 1.15×
    // it for Δ/σ from 0.001 to 10 (mpmath: ratios 1.04–1.14).
    let delta = 1e-6;
    for ratio in [0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0] {
        let (mut lo, mut hi) = (0.0, 500.0);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if balle_wang_delta(mid, ratio, 1.0) > delta {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let exact = hi;
        let mut acc = Accountant::new();
        acc.add_gaussian(ratio, 1.0);
        let zcdp = acc.epsilon(delta);
        println!(
            "Δ/σ = {ratio}: exact ε {exact:.6}, zCDP ε {zcdp:.6}, ratio {:.4}",
            zcdp / exact
        );
        assert!(
            zcdp >= exact,
            "Δ/σ = {ratio}: zCDP {zcdp} below exact {exact}"
        );
        assert!(zcdp <= 1.15 * exact, "Δ/σ = {ratio}: {zcdp} vs {exact}");
    }
}

#[test]
fn verdict_thresholds_are_in_words() {
    // DP-7.
    assert_eq!(meaningful(0.5), Verdict::Strong);
    assert_eq!(meaningful(1.0), Verdict::Strong);
    assert_eq!(meaningful(4.0), Verdict::Weak);
    assert_eq!(meaningful(10.0), Verdict::Weak);
    assert_eq!(meaningful(37.0), Verdict::NoMeaningfulProtection);
    assert_eq!(meaningful(f64::NAN), Verdict::NoMeaningfulProtection);
    assert_eq!(meaningful(f64::INFINITY), Verdict::NoMeaningfulProtection);
    assert!(describe(37.0, 1e-6).contains("no meaningful protection"));
}

// ---------------------------------------------------------------------------
// Sensitivity.
// ---------------------------------------------------------------------------

fn conv(in_hw: usize, k: usize, stride: usize, pad: usize) -> StageShape {
    StageShape::Conv2d {
        in_h: in_hw,
        in_w: in_hw,
        kernel_h: k,
        kernel_w: k,
        stride_h: stride,
        stride_w: stride,
        pad_h: pad,
        pad_w: pad,
    }
}

#[test]
fn sensitivity_follows_the_layer_structure() {
    // DP-5 (one weight or bias by ≤ τ), DP-6 (per-kind rules).
    // Conv 3×3 pad 1 on 8×8: the centre tap reaches all 64 outputs.
    let c = conv(8, 3, 1, 1);
    assert_eq!(c.outputs_per_channel(), 64);
    assert_eq!(c.max_outputs_per_weight(), 64);
    assert_eq!(l2_sensitivity_weight(&c, 15.0, 1.0), 120.0);
    assert_eq!(l2_sensitivity_bias(&c, 1.0), 8.0);
    assert_eq!(l2_sensitivity(&c, 15.0, 1.0), 120.0);
    // Without padding every tap reaches the whole 6×6 output.
    let c0 = conv(8, 3, 1, 0);
    assert_eq!(
        (c0.outputs_per_channel(), c0.max_outputs_per_weight()),
        (36, 36)
    );
    // Pad 2 with a 3×3 kernel on 4×4: output 6×6, but a tap reaches at most 4×4.
    let c2 = conv(4, 3, 1, 2);
    assert_eq!(
        (c2.outputs_per_channel(), c2.max_outputs_per_weight()),
        (36, 16)
    );
    // Stride 2, pad 1, 3×3 on 8×8: output 4×4; the centre tap reaches all 16.
    let s2 = conv(8, 3, 2, 1);
    assert_eq!(
        (s2.outputs_per_channel(), s2.max_outputs_per_weight()),
        (16, 16)
    );
    // Linear: one output per weight and per bias.
    assert_eq!(l2_sensitivity(&StageShape::Linear, 60.0, 1.0), 60.0);
    assert_eq!(l2_sensitivity_bias(&StageShape::Linear, 1.0), 1.0);
    // τ scales linearly; with inputs below 1 the bias case dominates.
    assert_eq!(l2_sensitivity(&c, 15.0, 2.0), 240.0);
    assert_eq!(l2_sensitivity(&c, 0.5, 1.0), 8.0);
    // X after requantisation: clamp [0, 15], 2×2 sum pool folded in → 60.
    assert_eq!(x_bound_after_requantisation(0, 15, 4), 60.0);
    assert_eq!(x_bound_after_requantisation(-128, 127, 1), 128.0);
    // Unchecked uploads on b16: X = (2^15 − 1)/τ.
    assert_eq!(x_bound_unchecked_uploads(16, 1.0), 32767.0);
}

// ---------------------------------------------------------------------------
// The worked example of proofs/dp.md.
// ---------------------------------------------------------------------------

/// The shipped digits model's three stages at τ = 1 (proofs/dp.md).
fn digits_sensitivities(x0: f64, x1: f64) -> [f64; 3] {
    [
        l2_sensitivity(&conv(8, 3, 1, 1), x0, 1.0), // conv 1→8 on [0,15]
        l2_sensitivity(&conv(4, 3, 1, 1), x1, 1.0), // conv 8→16 on pooled 4×4, ≤ 60
        l2_sensitivity(&StageShape::Linear, x1, 1.0), // linear 64→10, ≤ 60
    ]
}

#[test]
fn worked_example_table_matches_proofs_dp_md() {
    // DP-3, DP-4, DP-6, DP-7: the table pasted in proofs/dp.md, recomputed and
    // asserted (4 significant digits) so the document cannot drift.
    let delta = 1e-6;
    let budget = 8;
    let sens = digits_sensitivities(15.0, x_bound_after_requantisation(0, 15, 4));
    assert_eq!(sens, [120.0, 240.0, 60.0]);
    // (σ, ρ_total sum, ε sum, ε max) as printed in proofs/dp.md.
    let table: [(f64, f64, f64, f64); 4] = [
        (10.0, 3024.0, 3429.0, 2657.0),
        (100.0, 30.24, 69.44, 57.15),
        (1000.0, 0.3024, 3.938, 3.386),
        (10000.0, 0.003024, 0.3291, 0.2849),
    ];
    println!("| σ | ρ (Σ stages, B = 8) | ε at δ = 1e-6 (Σ) | verdict (Σ) | ρ (max stage, B = 8) | ε at δ = 1e-6 (max) | verdict (max) |");
    println!("|---|---|---|---|---|---|---|");
    let rows: Vec<(Guarantee, Guarantee)> = table
        .iter()
        .map(|&(sigma, ..)| {
            let stages: Vec<StageRelease> = sens
                .iter()
                .map(|&s| StageRelease {
                    sensitivity_l2: s,
                    sigma,
                })
                .collect();
            (
                budget_guarantee(&stages, budget, delta, StageComposition::Sum),
                budget_guarantee(&stages, budget, delta, StageComposition::Max),
            )
        })
        .collect();
    for (&(sigma, ..), (sum, max)) in table.iter().zip(&rows) {
        println!(
            "| {sigma} | {:.6} | {:.4} | {:?} | {:.6} | {:.4} | {:?} |",
            sum.rho, sum.epsilon, sum.verdict, max.rho, max.epsilon, max.verdict
        );
    }
    for (&(sigma, rho_doc, eps_sum_doc, eps_max_doc), (sum, max)) in table.iter().zip(&rows) {
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 5e-4;
        assert!(close(sum.rho, rho_doc), "ρ {} vs {rho_doc}", sum.rho);
        assert!(
            close(sum.epsilon, eps_sum_doc),
            "ε {} vs {eps_sum_doc}",
            sum.epsilon
        );
        assert!(
            close(max.epsilon, eps_max_doc),
            "ε {} vs {eps_max_doc}",
            max.epsilon
        );
        // ρ_total = B·Σ ρ_s = 8·(120² + 240² + 60²)/(2σ²) = 302 400/σ²;
        // with the max, 8·240²/(2σ²) = 230 400/σ².
        assert!(close(sum.rho, 302_400.0 / (sigma * sigma)));
        assert!(close(max.rho, 230_400.0 / (sigma * sigma)));
        let expect = if sigma <= 100.0 {
            Verdict::NoMeaningfulProtection
        } else if sigma <= 1000.0 {
            Verdict::Weak
        } else {
            Verdict::Strong
        };
        assert_eq!((sum.verdict, max.verdict), (expect, expect));
    }
    // A client whose uploads are not range-checked (b16: X = 2^15 − 1) at the
    // largest σ of the table.
    let x = x_bound_unchecked_uploads(16, 1.0);
    let stages: Vec<StageRelease> = digits_sensitivities(x, x)
        .iter()
        .map(|&s| StageRelease {
            sensitivity_l2: s,
            sigma: 10_000.0,
        })
        .collect();
    let g = budget_guarantee(&stages, budget, delta, StageComposition::Sum);
    println!(
        "unchecked uploads, σ = 10000: ρ = {:.1}, ε = {:.1}",
        g.rho, g.epsilon
    );
    assert!((g.epsilon / 3913.0 - 1.0).abs() < 5e-4, "{}", g.epsilon);
    assert_eq!(g.verdict, Verdict::NoMeaningfulProtection);
}

// ---------------------------------------------------------------------------
// DP-8: the mechanism as the server applies it.
// ---------------------------------------------------------------------------

mod common;

/// One linear layer 64 → 1024 on inputs in [0, 15]: its only round returns
/// the 1024 logits unshuffled, so logits − reference is the noise itself.
fn wide_linear() -> safhire::model::Model {
    use safhire::model::{InputSpec, Layer, Model, Shape};
    let mut rng = Csprng::from_seed([41; 16]);
    let weights: Vec<i64> = (0..1024 * 64)
        .map(|_| rng.uniform_below(5) as i64 - 2)
        .collect();
    Model::new(
        "wide-linear",
        InputSpec {
            shape: Shape::new(64, 1, 1),
            min: 0,
            max: 15,
        },
        vec![Layer::Linear {
            out_features: 1024,
            weights,
            bias: vec![7; 1024],
        }],
    )
    .unwrap()
}

// DP-8: every released value carries one independent N_Z(0, σ²) sample.
// 1024 samples at σ = 50: the sample variance lies within ±25 % of σ²
// except with probability < 1e-7 (χ² with 1023 degrees of freedom: the
// half-width is 5.3 standard deviations of s²/σ², √(2/1023) = 0.044), and
// the mean within ±5.3·σ/√1024. Without noise the variance is 0; with the
// noise applied twice it is 2σ².
#[test]
fn released_values_carry_discrete_gaussian_noise() {
    use safhire::engine::{self, Release, ServerKeys};
    use safhire::shuffle::{SessionSeed, ShuffleUnit};
    let f = common::fixture("b16");
    let model = wide_linear();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let noise = DiscreteGaussian::with_sigma(50).unwrap();
    let input: Vec<i64> = (0..64).map(|i| i % 16).collect();
    let out = engine::run_release(
        &f.ctx,
        &f.sk,
        ServerKeys {
            galois: &f.galois,
            public: &f.pk,
        },
        &compiled,
        &input,
        Release {
            unit: ShuffleUnit::Element,
            noise: Some(&noise),
        },
        &SessionSeed::from_bytes([3; 32]),
    )
    .unwrap();
    let reference = model.evaluate(&input).unwrap();
    let e: Vec<f64> = out
        .logits
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let n = e.len() as f64;
    let mean = e.iter().sum::<f64>() / n;
    let var = e.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() < 5.3 * 50.0 / n.sqrt(), "mean {mean}");
    assert!(
        (var / 2500.0 - 1.0).abs() < 0.25,
        "variance {var}, σ² = 2500"
    );
}

// DP-8: noise whose 2^-40 tail would push the worst-case accumulator past
// b bits is refused by run and by the endpoint; the crate's choice of set
// takes it into account.
#[test]
fn noise_that_does_not_fit_the_accumulator_range_is_refused() {
    use safhire::engine;
    use safhire::protocol::{Endpoint, Policy};
    use safhire::select::{select, Requirement};
    use std::sync::Arc;
    let f = common::fixture("b16");
    let model = wide_linear();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    // Worst accumulator 64·2·15 + 7 = 1927; 7.54·σ must stay under 32768 − 1927.
    assert!(compiled
        .check_noise(&f.ctx, Some(&DiscreteGaussian::with_sigma(4000).unwrap()))
        .is_ok());
    let err = compiled
        .check_noise(&f.ctx, Some(&DiscreteGaussian::with_sigma(5000).unwrap()))
        .unwrap_err();
    assert!(err.to_string().contains("σ = 5000"), "{err}");
    let toml = "[[policy]]\nname = \"loud\"\ngranularity = \"element\"\nquery_budget = 8\n\
                allow_budget_above_attack_threshold = true\ndp_sigma = 5000\n";
    let loud = Policy::load(toml, "loud").unwrap();
    let ctx = Arc::new(safhire::rlwe::Context::new(f.ctx.params().clone()));
    let compiled = Arc::new(engine::compile(&ctx, &model).unwrap());
    assert!(Endpoint::new(ctx, compiled, loud.clone()).is_err());
    let sel = select(
        &model,
        Requirement {
            min_flooding_headroom_bits: None,
            noise: loud.noise().copied(),
        },
        None,
    )
    .unwrap();
    assert!(
        sel.context.params().plaintext_bits() > 16,
        "chose {}",
        sel.context.params().name()
    );
}

// DP-8, DP-6: the guarantee the CLI prints for the shipped model is the
// accountant's on the sensitivities of proofs/dp.md's worked table
// (120, 240, 60 for τ = 1).
#[test]
fn the_printed_guarantee_is_the_accountants() {
    use safhire::engine;
    use safhire::model::Model;
    let f = common::fixture("b16");
    let model = Model::from_json(include_str!("../models/digits-cnn.json")).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    for sigma in [100.0, 1000.0] {
        let g = compiled.dp_guarantee(sigma, 8, 1e-6, 1.0).unwrap();
        let releases: Vec<StageRelease> = [120.0, 240.0, 60.0]
            .iter()
            .map(|&s| StageRelease {
                sensitivity_l2: s,
                sigma,
            })
            .collect();
        let want = budget_guarantee(&releases, 8, 1e-6, StageComposition::Sum);
        assert!(
            (g.epsilon - want.epsilon).abs() < 1e-9 * want.epsilon,
            "σ = {sigma}"
        );
        assert!((g.rho - want.rho).abs() < 1e-12 * want.rho.max(1.0));
    }
}
