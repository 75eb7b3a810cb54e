//! Differential-privacy building blocks (spec/dp.md, proofs/dp.md): an exact
//! discrete Gaussian sampler (DP-1), a zero-concentrated DP accountant
//! (DP-2, DP-3, DP-4, DP-7), and the L2 sensitivity of one stage's released
//! accumulators under a stated neighbouring relation (DP-5, DP-6).
//!
//! **The mechanism** (DP-8) is applied by `engine::RoundEvaluator` when a
//! policy sets `dp_sigma`: N_Z(0, σ²) on every released pre-activation
//! accumulator, before the shuffle; `engine::CompiledModel::dp_guarantee`
//! accounts for it with this module.
//!
//! What is protected: single weights and biases (a change of
//! at most τ in one of them), against a client whose uploads stay inside the
//! declared input and clamp ranges. Not protected: the architecture, the
//! requantisation constants, anything against a client that uploads values
//! outside those ranges (the server cannot check them), nor the
//! ciphertext-level leakage (mask and noise) that circuit privacy covers.
//! No amplification by shuffling is claimed: the shuffle is treated as
//! post-processing only.

use crate::rng::Csprng;
use thiserror::Error;

/// Why a [`DiscreteGaussian`] could not be built: the requested σ² is outside
/// what the exact sampler (DP-1) supports. Always the caller's (or the
/// policy's) fault; choose another σ.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpError {
    /// σ² = `num`/`den` with a zero numerator or denominator: no noise (or a
    /// division by zero) was asked for.
    #[error("σ² = {num}/{den}: numerator and denominator must both be at least 1")]
    NonPositiveVariance {
        /// Numerator of σ².
        num: u64,
        /// Denominator of σ².
        den: u64,
    },
    /// σ² so large (or with so large a denominator) that the rejection
    /// step's exact arithmetic would not fit 128 bits.
    #[error("σ² = {num}/{den}: the sampler needs num < 2^63 and 2·num·den·(⌊σ⌋+1)² < 2^128")]
    VarianceTooLarge {
        /// Numerator of σ².
        num: u64,
        /// Denominator of σ².
        den: u64,
    },
    /// σ = 2^k with k above [`MAX_LOG2_SIGMA_POW2`].
    #[error("σ = 2^{log2_sigma}: the sampler takes σ = 2^k for k ≤ {max}", max = MAX_LOG2_SIGMA_POW2)]
    SigmaTooLarge {
        /// The requested k = log2 σ.
        log2_sigma: u32,
    },
}

// ---------------------------------------------------------------------------
// 256-bit helpers for the exact rejection step (DP-1).
// ---------------------------------------------------------------------------

/// An unsigned 256-bit integer `hi·2^128 + lo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct U256 {
    hi: u128,
    lo: u128,
}

impl U256 {
    /// The full product of two 128-bit integers.
    fn mul(a: u128, b: u128) -> U256 {
        let mask = u64::MAX as u128;
        let (a1, a0) = (a >> 64, a & mask);
        let (b1, b0) = (b >> 64, b & mask);
        let p00 = a0 * b0;
        let p01 = a0 * b1;
        let p10 = a1 * b0;
        let p11 = a1 * b1;
        // Middle column: at most 3·(2^64 − 1) < 2^66, no overflow.
        let mid = (p00 >> 64) + (p01 & mask) + (p10 & mask);
        let lo = (p00 & mask) | (mid << 64);
        let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
        U256 { hi, lo }
    }

    fn from_u128(lo: u128) -> U256 {
        U256 { hi: 0, lo }
    }

    /// `self − other`, for `other ≤ self`.
    fn sub(self, other: U256) -> U256 {
        debug_assert!(other <= self);
        let (lo, borrow) = self.lo.overflowing_sub(other.lo);
        U256 {
            hi: self.hi - other.hi - borrow as u128,
            lo,
        }
    }
}

/// Uniform on `[0, n)`, `n ≥ 1`, by rejection (no modulo bias).
fn uniform_below_u128(rng: &mut Csprng, n: u128) -> u128 {
    debug_assert!(n > 0);
    if n.is_power_of_two() {
        // The rejection below never rejects for n = 2^k, and x mod 2^k is
        // x's low k bits: the same value from the same draws, without the
        // divisions (flooding's σ = 2^k draws nothing else: PRIV-2).
        let x = if n <= u64::MAX as u128 {
            rng.next_u64() as u128
        } else {
            ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128
        };
        return x & (n - 1);
    }
    if n <= u64::MAX as u128 {
        return rng.uniform_below(n as u64) as u128;
    }
    let zone = u128::MAX - (u128::MAX % n + 1) % n;
    loop {
        let x = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
        if x <= zone {
            return x % n;
        }
    }
}

/// Bernoulli(num/den), exactly: a uniform draw below `den` compared with
/// `num`. Certain outcomes (num = 0 or num = den) draw nothing.
fn bernoulli_ratio(rng: &mut Csprng, num: u128, den: u128) -> bool {
    debug_assert!(den > 0 && num <= den);
    if num == 0 || num == den {
        return num == den;
    }
    uniform_below_u128(rng, den) < num
}

/// Bernoulli(exp(−num/den)) for `0 ≤ num ≤ den` (CKS20 Algorithm 1, γ ≤ 1):
/// K ← 1; while Bernoulli(γ/K) = 1, K ← K + 1; return K odd. P\[K odd\] = e^(−γ).
/// Bernoulli(γ/K) is drawn as Bernoulli(num/den) ∧ Bernoulli(1/K), which has
/// the same law and keeps every denominator within 128 bits.
fn bernoulli_exp_neg_le_one(rng: &mut Csprng, num: u128, den: u128) -> bool {
    debug_assert!(num <= den);
    let mut k: u128 = 1;
    loop {
        let a = bernoulli_ratio(rng, num, den) && bernoulli_ratio(rng, 1, k);
        if !a {
            break;
        }
        k += 1;
    }
    k % 2 == 1
}

/// Bernoulli(exp(−γ)) for γ = num/den ≥ 0 (CKS20 Algorithm 1): ⌊γ⌋
/// independent Bernoulli(e^(−1)) trials, all of which must succeed, then one
/// Bernoulli(exp(−(γ − ⌊γ⌋))). The trials run as ⌊γ⌋ is peeled off one
/// subtraction at a time and stop at the first failure: the same law as
/// dividing first, with no division (DP-1).
fn bernoulli_exp_neg(rng: &mut Csprng, mut num: U256, den: u128) -> bool {
    let den_wide = U256::from_u128(den);
    while num >= den_wide {
        num = num.sub(den_wide);
        if !bernoulli_exp_neg_le_one(rng, 1, 1) {
            return false;
        }
    }
    bernoulli_exp_neg_le_one(rng, num.lo, den)
}

/// Bernoulli(exp(−num/den)), exactly, from the crate's CSPRNG (DP-1). Exposed
/// for tests; `den ≥ 1`.
pub fn sample_bernoulli_exp(num: u128, den: u128, rng: &mut Csprng) -> bool {
    assert!(den >= 1, "Bernoulli(exp(−num/den)) needs den ≥ 1");
    bernoulli_exp_neg(rng, U256::from_u128(num), den)
}

// ---------------------------------------------------------------------------
// Discrete Laplace and discrete Gaussian (DP-1).
// ---------------------------------------------------------------------------

/// Samples are conditioned on |y| ≤ `SAMPLE_MAGNITUDE_MAX` (by rejection), so
/// every value fits an `i64` and every intermediate product fits 128 bits.
/// For any σ² the sampler accepts (σ ≤ 2^57), the conditioning moves the
/// distribution by at most 2·exp(−2^124/(2σ²)) ≤ 2·exp(−2^9) in total
/// variation (discrete Gaussian tail, CKS20 §5; proofs/dp.md).
pub const SAMPLE_MAGNITUDE_MAX: u64 = 1 << 62;

/// Discrete Laplace Lap_Z(t): P\[y\] ∝ exp(−|y|/t), t ≥ 1 an integer, conditioned
/// on |y| ≤ [`SAMPLE_MAGNITUDE_MAX`] (CKS20 Algorithm 2 with s = 1). DP-1.
pub fn sample_discrete_laplace(t: u64, rng: &mut Csprng) -> i64 {
    assert!(t >= 1, "discrete Laplace scale must be at least 1");
    'outer: loop {
        // X = U + t·V: U uniform on [0, t) tilted by exp(−U/t), V geometric
        // with parameter e^(−1): X is geometric with parameter e^(−1/t).
        let u = uniform_below_u128(rng, t as u128);
        if !bernoulli_exp_neg_le_one(rng, u, t as u128) {
            continue;
        }
        let mut x = u;
        while bernoulli_exp_neg_le_one(rng, 1, 1) {
            x += t as u128;
            if x > SAMPLE_MAGNITUDE_MAX as u128 {
                // Rejected whatever V ends up being: conditioning on |y| ≤ max.
                continue 'outer;
            }
        }
        if x > SAMPLE_MAGNITUDE_MAX as u128 {
            continue; // only when t > 2^62 itself
        }
        let negative = rng.bit() == 1;
        if negative && x == 0 {
            continue;
        }
        let x = x as i64; // ≤ 2^62
        return if negative { -x } else { x };
    }
}

/// The discrete Gaussian N_Z(0, σ²) with P\[y\] ∝ exp(−y²/(2σ²)) on the integers,
/// for a rational variance σ² = `num`/`den` (DP-1).
///
/// Sampling is exact (CKS20, Algorithms 1–3): every decision is an integer
/// comparison against a uniform draw from [`Csprng`]; no floating point is
/// involved. σ² is a ratio of integers, not σ, because the rejection step
/// needs σ² exactly and σ is usually irrational.
///
/// Running time: each attempt draws one Lap_Z(t) sample, t = ⌊σ⌋ + 1, and
/// accepts it with probability
/// P_acc = tanh(1/(2t)) · exp(−σ²/(2t²)) · Σ_y exp(−y²/(2σ²)),
/// which tends to √(π/2)·e^(−1/2) ≈ 0.760 for large σ ([`Self::acceptance_probability`]).
/// The loop terminates with probability 1; the number of attempts is
/// geometric with mean 1/P_acc (≈ 1.32), and each attempt uses a constant
/// expected number of random draws. There is no iteration cap: a cap would
/// bias the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscreteGaussian {
    /// σ² = num/den.
    num: u128,
    den: u64,
    /// The Laplace proposal's scale: ⌊σ⌋ + 1, or σ itself when σ = 2^k.
    t: u64,
    /// The rejection exponent is (|y|·scale − centre)²/reject_den, which is
    /// (|y| − σ²/t)²/(2σ²) written over integers: (den·t, num, 2·num·den·t²)
    /// in general, (1, 2^k, 2^(2k+1)) for σ = t = 2^k. Every value fits 128
    /// bits (|y| ≤ 2^62).
    scale: u128,
    centre: u128,
    reject_den: u128,
}

/// The largest k that [`DiscreteGaussian::with_sigma_pow2`] takes: σ = 2^57
/// keeps the truncation at 2^62 (`SAMPLE_MAGNITUDE_MAX`) beyond 2^4·σ.
pub const MAX_LOG2_SIGMA_POW2: u32 = 57;

impl DiscreteGaussian {
    /// σ² = `num`/`den`. Refuses a zero numerator or denominator, and any
    /// σ² whose exact arithmetic would not fit 128 bits: it needs
    /// num < 2^63 and 2·num·den·(⌊σ⌋+1)² < 2^128 (den·(⌊σ⌋+1) ≤ 2^64 then
    /// follows, and is checked too). Every integer σ² < 2^63 is accepted; a
    /// rational one is refused only when num·den approaches 2^126.
    pub fn new(num: u64, den: u64) -> Result<Self, DpError> {
        if num == 0 || den == 0 {
            return Err(DpError::NonPositiveVariance { num, den });
        }
        let too_large = DpError::VarianceTooLarge { num, den };
        // ⌊σ⌋ = ⌊√(num/den)⌋ = ⌊√⌊num/den⌋⌋ (k² ≤ num/den ⟺ k² ≤ ⌊num/den⌋).
        let t = (num / den).isqrt() + 1;
        let den_t = (den as u128) * (t as u128);
        if den_t > u64::MAX as u128 + 1 {
            return Err(too_large);
        }
        if num >= 1 << 63 {
            return Err(too_large);
        }
        // 2·num < 2^64 and den < 2^64: the first product fits.
        let reject_den = (2 * num as u128 * den as u128)
            .checked_mul(t as u128 * t as u128)
            .ok_or(too_large)?;
        Ok(Self {
            num: num as u128,
            den,
            t,
            scale: den_t,
            centre: num as u128,
            reject_den,
        })
    }

    /// σ = 2^`log2_sigma` exactly, for the large scales flooding needs
    /// (PRIV-2): k ≤ [`MAX_LOG2_SIGMA_POW2`]. The proposal's scale is t = σ
    /// (CKS20's algorithm is exact for any t > 0; t = σ keeps the rejection
    /// exponent (|y| − 2^k)²/2^(2k+1) within 128 bits, with a power-of-two
    /// denominator).
    pub fn with_sigma_pow2(log2_sigma: u32) -> Result<Self, DpError> {
        if log2_sigma > MAX_LOG2_SIGMA_POW2 {
            return Err(DpError::SigmaTooLarge { log2_sigma });
        }
        let sigma = 1u64 << log2_sigma;
        Ok(Self {
            num: (sigma as u128) * (sigma as u128),
            den: 1,
            t: sigma,
            scale: 1,
            centre: sigma as u128,
            reject_den: 2u128 << (2 * log2_sigma),
        })
    }

    /// σ² = `sigma`², an integer standard deviation.
    pub fn with_sigma(sigma: u32) -> Result<Self, DpError> {
        Self::new(sigma as u64 * sigma as u64, 1)
    }

    /// σ² as the exact ratio (num, den) it was built from.
    pub fn variance_ratio(&self) -> (u128, u64) {
        (self.num, self.den)
    }

    /// σ² as a float (for accounting, never for sampling).
    pub fn variance(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// The Laplace proposal's scale t: ⌊σ⌋ + 1, or σ for σ = 2^k.
    pub fn laplace_scale(&self) -> u64 {
        self.t
    }

    /// One sample (CKS20 Algorithm 3): Y ← Lap_Z(t); accept with probability
    /// exp(−(|Y| − σ²/t)²/(2σ²)) = exp(−(|Y|·den·t − num)²/(2·num·den·t²)).
    pub fn sample(&self, rng: &mut Csprng) -> i64 {
        self.sample_counting(rng).0
    }

    /// A sample and the number of Laplace proposals it took (≥ 1).
    pub fn sample_counting(&self, rng: &mut Csprng) -> (i64, u64) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let y = sample_discrete_laplace(self.t, rng);
            let a = (y.unsigned_abs() as u128 * self.scale).abs_diff(self.centre);
            if bernoulli_exp_neg(rng, U256::mul(a, a), self.reject_den) {
                return (y, attempts);
            }
        }
    }

    /// The probability that one proposal is accepted (float; documentation and
    /// tests only). See the type's documentation.
    pub fn acceptance_probability(&self) -> f64 {
        let s2 = self.variance();
        let t = self.t as f64;
        (1.0 / (2.0 * t)).tanh() * (-s2 / (2.0 * t * t)).exp() * gaussian_mass(s2)
    }
}

/// Σ_y exp(−y²/(2σ²)) over the integers, in floating point.
fn gaussian_mass(sigma_sq: f64) -> f64 {
    let mut sum = 1.0;
    let mut y = 1.0_f64;
    loop {
        let term = (-y * y / (2.0 * sigma_sq)).exp();
        if term < 1e-300 {
            return sum;
        }
        sum += 2.0 * term;
        y += 1.0;
    }
}

/// One sample of N_Z(0, σ²), σ² = `sigma_sq_num`/`sigma_sq_den` (DP-1).
pub fn sample_discrete_gaussian(
    sigma_sq_num: u64,
    sigma_sq_den: u64,
    rng: &mut Csprng,
) -> Result<i64, DpError> {
    Ok(DiscreteGaussian::new(sigma_sq_num, sigma_sq_den)?.sample(rng))
}

// ---------------------------------------------------------------------------
// zCDP accountant (DP-2, DP-3, DP-4).
// ---------------------------------------------------------------------------

/// ρ of the (discrete) Gaussian mechanism with L2 sensitivity Δ₂ and noise
/// N(0, σ²) or N_Z(0, σ²) on every coordinate: ρ = Δ₂²/(2σ²) (Bun–Steinke
/// 2016, Prop. 1.6; CKS20 Thm. 4 for the discrete Gaussian). DP-2.
pub fn gaussian_rho(sensitivity_l2: f64, sigma: f64) -> f64 {
    assert!(
        sensitivity_l2 >= 0.0 && sensitivity_l2.is_finite(),
        "sensitivity must be finite and ≥ 0"
    );
    assert!(sigma > 0.0 && sigma.is_finite(), "σ must be finite and > 0");
    sensitivity_l2 * sensitivity_l2 / (2.0 * sigma * sigma)
}

/// A running total of ρ (zero-concentrated DP, Bun–Steinke 2016). Composition
/// adds ρ (DP-3); [`Accountant::epsilon`] and [`Accountant::delta`] convert to
/// (ε, δ)-DP (DP-4).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accountant {
    rho: f64,
}

impl Accountant {
    /// An accountant with nothing charged (ρ = 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// An accountant already holding `rho`.
    ///
    /// # Panics
    /// If `rho` is negative or not finite (a caller bug).
    pub fn from_rho(rho: f64) -> Self {
        assert!(rho >= 0.0 && rho.is_finite(), "ρ must be finite and ≥ 0");
        Self { rho }
    }

    /// The total ρ charged so far (zCDP, ≥ 0).
    pub fn rho(&self) -> f64 {
        self.rho
    }

    /// Charge one ρ-zCDP release (DP-3: ρ adds).
    pub fn add_rho(&mut self, rho: f64) -> &mut Self {
        assert!(rho >= 0.0 && rho.is_finite(), "ρ must be finite and ≥ 0");
        self.rho += rho;
        self
    }

    /// Charge one (discrete) Gaussian release (DP-2).
    pub fn add_gaussian(&mut self, sensitivity_l2: f64, sigma: f64) -> &mut Self {
        self.add_rho(gaussian_rho(sensitivity_l2, sigma))
    }

    /// The total of `k` adaptive repetitions of what this accountant holds
    /// (DP-3): kρ.
    pub fn compose(&self, k: u64) -> Accountant {
        Accountant {
            rho: self.rho * k as f64,
        }
    }

    /// The smallest ε this code can certify at `delta` (DP-4): the minimum of
    /// [`epsilon_tight`] and [`epsilon_simple`].
    pub fn epsilon(&self, delta: f64) -> f64 {
        epsilon_tight(self.rho, delta).min(epsilon_simple(self.rho, delta))
    }

    /// The smallest δ this code can certify at `epsilon` (DP-4).
    pub fn delta(&self, epsilon: f64) -> f64 {
        delta_tight(self.rho, epsilon).min(delta_simple(self.rho, epsilon))
    }
}

fn check_delta(delta: f64) {
    assert!(
        delta > 0.0 && delta < 1.0,
        "δ must lie in (0, 1), got {delta}"
    );
}

/// ε = ρ + 2·√(ρ·ln(1/δ)) (Bun–Steinke 2016, Prop. 1.3). DP-4.
pub fn epsilon_simple(rho: f64, delta: f64) -> f64 {
    check_delta(delta);
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// δ = exp(−(ε − ρ)²/(4ρ)) for ε > ρ, else 1: the inverse of
/// [`epsilon_simple`]. DP-4.
pub fn delta_simple(rho: f64, epsilon: f64) -> f64 {
    if rho == 0.0 {
        return 0.0;
    }
    if epsilon <= rho {
        return 1.0;
    }
    (-(epsilon - rho).powi(2) / (4.0 * rho)).exp()
}

/// ln δ_α(ε) for α = 1 + e^u (CKS20 Prop. 12 / Cor. 13):
/// δ_α = exp((α−1)(αρ−ε))/(α−1) · (1 − 1/α)^α.
fn ln_delta_at(rho: f64, epsilon: f64, u: f64) -> f64 {
    let am1 = u.exp();
    let alpha = 1.0 + am1;
    am1 * (alpha * rho - epsilon) + alpha * (-1.0 / alpha).ln_1p() - u
}

/// ε_α(δ) for α = 1 + e^u: the ε at which δ_α(ε) = δ,
/// ε = αρ + (ln(1/δ) + α·ln(1 − 1/α) − ln(α − 1))/(α − 1).
fn epsilon_at(rho: f64, ln_inv_delta: f64, u: f64) -> f64 {
    let am1 = u.exp();
    let alpha = 1.0 + am1;
    alpha * rho + (ln_inv_delta + alpha * (-1.0 / alpha).ln_1p() - u) / am1
}

/// Minimise `f(u)` over u = ln(α − 1) ∈ [−30, 60]: a grid of step 0.05, then
/// golden-section search in the best cell's neighbourhood. Any α gives a valid
/// bound; the search only decides how tight it is, so an imperfect minimum
/// errs on the safe side.
fn minimise_over_alpha(f: impl Fn(f64) -> f64) -> f64 {
    let (lo, hi, step) = (-30.0_f64, 60.0_f64, 0.05_f64);
    let n = ((hi - lo) / step) as usize;
    let mut best = (lo, f(lo));
    for i in 1..=n {
        let u = lo + i as f64 * step;
        let v = f(u);
        if v < best.1 {
            best = (u, v);
        }
    }
    let (mut a, mut b) = (best.0 - step, best.0 + step);
    let g = (5.0_f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    best.1.min(fc).min(fd)
}

/// The tight conversion of ρ-zCDP to (ε, δ)-DP (CKS20 Cor. 13):
/// ε(δ) = inf_{α>1} αρ + (ln(1/δ) + α·ln(1 − 1/α) − ln(α − 1))/(α − 1),
/// evaluated at a numerically chosen α (every α is a valid bound). Never
/// below 0. DP-4.
pub fn epsilon_tight(rho: f64, delta: f64) -> f64 {
    check_delta(delta);
    assert!(rho >= 0.0 && rho.is_finite(), "ρ must be finite and ≥ 0");
    let l = (1.0 / delta).ln();
    minimise_over_alpha(|u| epsilon_at(rho, l, u)).max(0.0)
}

/// The tight conversion in the other direction (CKS20 Cor. 13):
/// δ(ε) = inf_{α>1} exp((α−1)(αρ−ε))/(α−1) · (1 − 1/α)^α, at most 1. DP-4.
pub fn delta_tight(rho: f64, epsilon: f64) -> f64 {
    assert!(rho >= 0.0 && rho.is_finite(), "ρ must be finite and ≥ 0");
    assert!(epsilon >= 0.0, "ε must be ≥ 0");
    minimise_over_alpha(|u| ln_delta_at(rho, epsilon, u))
        .exp()
        .min(1.0)
}

// ---------------------------------------------------------------------------
// Plain-words verdict (DP-7).
// ---------------------------------------------------------------------------

/// ε above this is reported as no meaningful protection (DP-7): a bound of
/// e^10 ≈ 22 026 on how much one release may shift an adversary's odds about
/// a single weight says nothing useful.
pub const EPSILON_MEANINGLESS_ABOVE: f64 = 10.0;
/// ε at or below this is reported as the strong regime usually meant by
/// "differential privacy" (odds move by at most e ≈ 2.7).
pub const EPSILON_STRONG_AT_MOST: f64 = 1.0;

/// What an ε means, in words (DP-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// ε ≤ 1.
    Strong,
    /// 1 < ε ≤ 10.
    Weak,
    /// ε > 10 (or not finite).
    NoMeaningfulProtection,
}

/// Classify ε (DP-7). Thresholds: [`EPSILON_STRONG_AT_MOST`],
/// [`EPSILON_MEANINGLESS_ABOVE`].
pub fn meaningful(epsilon: f64) -> Verdict {
    if epsilon.is_nan() || epsilon > EPSILON_MEANINGLESS_ABOVE {
        Verdict::NoMeaningfulProtection
    } else if epsilon > EPSILON_STRONG_AT_MOST {
        Verdict::Weak
    } else {
        Verdict::Strong
    }
}

/// One sentence for ε at δ (DP-7), e.g.
/// "ε = 37 at δ = 1e-6: no meaningful protection".
pub fn describe(epsilon: f64, delta: f64) -> String {
    let words = match meaningful(epsilon) {
        Verdict::Strong => "strong protection of single weights and biases (ε ≤ 1)",
        Verdict::Weak => {
            "weak protection: one release may shift an adversary's odds by up to e^ε (1 < ε ≤ 10)"
        }
        Verdict::NoMeaningfulProtection => "no meaningful protection (ε > 10)",
    };
    format!("ε = {epsilon:.3} at δ = {delta:e}: {words}")
}

/// PRIV-3 in words: the circuit-privacy guarantee of the noise channel over
/// `budget` sessions (`engine::CompiledModel::circuit_privacy`), e.g.
/// "over 8 sessions: ε = 0.41 at δ = 4.5e-13 …: strong".
pub fn describe_noise_channel(g: &Guarantee, budget: u64) -> String {
    let words = match g.verdict {
        Verdict::Strong => "strong (ε ≤ 1)",
        Verdict::Weak => "weak (1 < ε ≤ 10)",
        Verdict::NoMeaningfulProtection => "no meaningful protection (ε > 10)",
    };
    format!(
        "over {budget} query(ies), one per image: ε = {:.3} at δ = {:.1e} (zCDP ρ = {:.3e}), between any two models that release the same values, against clients with honest keys and uploads: {words}",
        g.epsilon, g.delta, g.rho
    )
}

// ---------------------------------------------------------------------------
// Sensitivity of one stage's release (DP-5, DP-6).
// ---------------------------------------------------------------------------

/// The geometry of one encrypted stage, as plain numbers (not the engine's
/// types). Channels do not enter the sensitivity: a weight `w[o][c][k][l]`
/// touches output channel o only, through input channel c only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageShape {
    /// A 2-D convolution with zero padding, no dilation. `in_h`, `in_w` are
    /// the spatial size of the stage's input *as the weights see it*: for a
    /// stage with a folded k×k sum pool, the pooled grid.
    Conv2d {
        /// Input height in rows, as the weights see it.
        in_h: usize,
        /// Input width in columns, as the weights see it.
        in_w: usize,
        /// Kernel height (≥ 1, at most `in_h + 2·pad_h`).
        kernel_h: usize,
        /// Kernel width (≥ 1, at most `in_w + 2·pad_w`).
        kernel_w: usize,
        /// Vertical stride (≥ 1).
        stride_h: usize,
        /// Horizontal stride (≥ 1).
        stride_w: usize,
        /// Zero rows added above and below.
        pad_h: usize,
        /// Zero columns added left and right.
        pad_w: usize,
    },
    /// A matrix–vector product: every weight enters exactly one output.
    Linear,
}

/// For one axis: output size, and the largest number of outputs a single
/// kernel tap k reaches (taps near the border reach fewer through padding).
fn axis_coverage(input: usize, kernel: usize, stride: usize, pad: usize) -> (usize, usize) {
    assert!(kernel >= 1 && stride >= 1, "kernel and stride must be ≥ 1");
    assert!(input + 2 * pad >= kernel, "kernel larger than padded input");
    let out = (input + 2 * pad - kernel) / stride + 1;
    let best = (0..kernel)
        .map(|k| {
            (0..out)
                .filter(|&i| {
                    let pos = i * stride + k;
                    pos >= pad && pos - pad < input
                })
                .count()
        })
        .max()
        .unwrap_or(0);
    (out, best)
}

impl StageShape {
    /// (output positions per channel, the most outputs one kernel tap
    /// reaches), both 1 for a linear stage.
    fn coverage(&self) -> (usize, usize) {
        match *self {
            StageShape::Conv2d {
                in_h,
                in_w,
                kernel_h,
                kernel_w,
                stride_h,
                stride_w,
                pad_h,
                pad_w,
            } => {
                let (rows, row_taps) = axis_coverage(in_h, kernel_h, stride_h, pad_h);
                let (cols, col_taps) = axis_coverage(in_w, kernel_w, stride_w, pad_w);
                (rows * cols, row_taps * col_taps)
            }
            StageShape::Linear => (1, 1),
        }
    }

    /// Number of output positions per output channel (1 for a linear stage).
    pub fn outputs_per_channel(&self) -> usize {
        self.coverage().0
    }

    /// The largest number of outputs one weight enters (max over taps).
    pub fn max_outputs_per_weight(&self) -> usize {
        self.coverage().1
    }
}

/// L2 sensitivity when one weight changes by at most τ (DP-6): each output it
/// enters moves by at most τ·X, so Δ₂ = τ·X·√(max outputs per weight).
pub fn l2_sensitivity_weight(stage: &StageShape, x_bound: f64, tau: f64) -> f64 {
    check_bounds(x_bound, tau);
    tau * x_bound * (stage.max_outputs_per_weight() as f64).sqrt()
}

/// L2 sensitivity when one bias changes by at most τ (DP-6): it enters every
/// output of its channel, Δ₂ = τ·√(outputs per channel).
pub fn l2_sensitivity_bias(stage: &StageShape, tau: f64) -> f64 {
    check_bounds(0.0, tau);
    tau * (stage.outputs_per_channel() as f64).sqrt()
}

/// L2 sensitivity of a stage's released accumulators y = W·x + b under the
/// neighbouring relation of DP-5 (one weight or one bias differs by at most τ)
/// for inputs with |x| ≤ `x_bound` (DP-6): the larger of the weight and bias
/// cases.
pub fn l2_sensitivity(stage: &StageShape, x_bound: f64, tau: f64) -> f64 {
    l2_sensitivity_weight(stage, x_bound, tau).max(l2_sensitivity_bias(stage, tau))
}

fn check_bounds(x_bound: f64, tau: f64) {
    assert!(
        x_bound >= 0.0 && x_bound.is_finite(),
        "X must be finite and ≥ 0"
    );
    assert!(tau >= 0.0 && tau.is_finite(), "τ must be finite and ≥ 0");
}

/// X for a stage whose input is the client's requantised values, clamped to
/// `[clamp_min, clamp_max]`, with a `pool_window`-element sum pool folded into
/// the stage (1 if none): X = pool_window · max(|clamp_min|, |clamp_max|).
/// Valid only for uploads that respect the clamp (DP-6); the server cannot
/// check that.
pub fn x_bound_after_requantisation(clamp_min: i64, clamp_max: i64, pool_window: u64) -> f64 {
    pool_window as f64 * clamp_min.unsigned_abs().max(clamp_max.unsigned_abs()) as f64
}

/// X for a client that uploads values outside the declared ranges but keeps
/// every accumulator decodable under both neighbouring models (DP-6): the
/// differing weight is at least τ in one of them, so |τ·x| ≤ 2^(b−1) − 1 and
/// X = (2^(b−1) − 1)/τ. Beyond that the values wrap modulo t and a released
/// coordinate can differ by up to t/2 anyway. Either way no σ that leaves the
/// accumulators usable protects against such a client.
pub fn x_bound_unchecked_uploads(accumulator_bits: u32, tau: f64) -> f64 {
    assert!((2..=62).contains(&accumulator_bits));
    assert!(tau > 0.0 && tau.is_finite());
    ((1u64 << (accumulator_bits - 1)) - 1) as f64 / tau
}

// ---------------------------------------------------------------------------
// Composition over a session and the query budget (DP-3).
// ---------------------------------------------------------------------------

/// One stage's release: its L2 sensitivity and the σ of the noise added to
/// each of its accumulators.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageRelease {
    /// Δ₂ of the stage's released accumulators under the chosen
    /// neighbouring relation (DP-6), in accumulator units.
    pub sensitivity_l2: f64,
    /// Standard deviation of the discrete Gaussian added to each accumulator
    /// (DP-8), in accumulator units; > 0.
    pub sigma: f64,
}

/// How a session's stages combine (DP-3, proofs/dp.md "Composition").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageComposition {
    /// ρ_session = Σ_s ρ_s. Valid for every neighbouring relation in which
    /// each stage may differ, in particular "one weight or bias per stage".
    Sum,
    /// ρ_session = max_s ρ_s. Valid only for DP-5's relation, where the two
    /// models differ in a single parameter and hence in a single stage.
    Max,
}

/// ρ of one session, in which every stage is released once (DP-3).
pub fn session_rho(stages: &[StageRelease], composition: StageComposition) -> f64 {
    let rhos = stages
        .iter()
        .map(|s| gaussian_rho(s.sensitivity_l2, s.sigma));
    match composition {
        StageComposition::Sum => rhos.sum(),
        StageComposition::Max => rhos.fold(0.0, f64::max),
    }
}

/// What a query budget buys: ρ, ε at δ, and the verdict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guarantee {
    /// Total zCDP ρ over the whole budget: budget × ρ per session (DP-3).
    pub rho: f64,
    /// The smallest ε certified at [`delta`](Self::delta) (DP-4).
    pub epsilon: f64,
    /// The δ the guarantee was computed for, as given.
    pub delta: f64,
    /// What ε means, in words (DP-7); print it with every ε.
    pub verdict: Verdict,
}

/// (ε, δ) for `budget` sessions of one client identity on one ledger (DP-3,
/// DP-4): ρ_total = B·ρ_session. Sybil identities or ledger resets multiply B.
pub fn budget_guarantee(
    stages: &[StageRelease],
    budget: u64,
    delta: f64,
    composition: StageComposition,
) -> Guarantee {
    let acc = Accountant::from_rho(session_rho(stages, composition)).compose(budget);
    let epsilon = acc.epsilon(delta);
    Guarantee {
        rho: acc.rho(),
        epsilon,
        delta,
        verdict: meaningful(epsilon),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // DP-1: the power-of-two shortcut returns what the plain rejection
    // returns from the same stream, draw for draw (the sampler's law and
    // its use of randomness are unchanged).
    #[test]
    fn uniform_below_u128_matches_the_plain_rejection() {
        fn plain(g: &mut Csprng, n: u128) -> u128 {
            if n <= u64::MAX as u128 {
                return g.uniform_below(n as u64) as u128;
            }
            let zone = u128::MAX - (u128::MAX % n + 1) % n;
            loop {
                let x = ((g.next_u64() as u128) << 64) | g.next_u64() as u128;
                if x <= zone {
                    return x % n;
                }
            }
        }
        for k in [0u32, 1, 43, 63, 64, 65, 87, 127] {
            let n = 1u128 << k;
            let (mut a, mut b) = (
                Csprng::from_seed([k as u8; 16]),
                Csprng::from_seed([k as u8; 16]),
            );
            for _ in 0..500 {
                assert_eq!(uniform_below_u128(&mut a, n), plain(&mut b, n), "n = 2^{k}");
            }
            assert_eq!(
                a.next_u64(),
                b.next_u64(),
                "n = 2^{k}: the streams stay aligned"
            );
        }
    }

    #[test]
    fn u256_arithmetic_agrees_with_u128() {
        // DP-1: the exact arithmetic behind the rejection step.
        let mut g = Csprng::from_seed([3; 16]);
        for _ in 0..2000 {
            let a = ((g.next_u64() as u128) << 64) | g.next_u64() as u128;
            let b = ((g.next_u64() as u128) << 64) | g.next_u64() as u128;
            let small = (a >> 64, b >> 64);
            assert_eq!(U256::mul(small.0, small.1).lo, small.0 * small.1);
            // (a·b − a) + a == a·b, limb by limb.
            let p = U256::mul(a, b);
            let d = p.sub(U256::from_u128(a));
            let (lo, c) = d.lo.overflowing_add(a);
            assert_eq!(
                U256 {
                    hi: d.hi + c as u128,
                    lo
                },
                p
            );
        }
        assert_eq!(
            U256::mul(u128::MAX, u128::MAX),
            U256 {
                hi: u128::MAX - 1,
                lo: 1
            }
        );
        assert_eq!(U256 { hi: 1, lo: 0 }.sub(U256::from_u128(1)).lo, u128::MAX);
    }

    #[test]
    fn proposal_count_matches_the_acceptance_probability() {
        // DP-1: mean attempts = 1/P_acc. 100 000 samples; the attempt count is
        // geometric with sd √(1−p)/p ≈ 0.65, so the mean's sd is ≈ 0.0021;
        // the 0.02 tolerance is > 9 sd (false failure < 1e-18).
        for (num, den) in [(9, 1), (400, 1), (1, 4), (10_000, 3)] {
            let dg = DiscreteGaussian::new(num, den).unwrap();
            let mut g = Csprng::from_seed([5; 16]);
            let n = 100_000;
            let total: u64 = (0..n).map(|_| dg.sample_counting(&mut g).1).sum();
            let mean = total as f64 / n as f64;
            let expect = 1.0 / dg.acceptance_probability();
            assert!(
                (mean - expect).abs() < 0.02,
                "{num}/{den}: {mean} vs {expect}"
            );
        }
        let big = DiscreteGaussian::with_sigma(1 << 20).unwrap();
        let limit = (std::f64::consts::PI / 2.0).sqrt() * (-0.5f64).exp();
        assert!((big.acceptance_probability() - limit).abs() < 1e-5);
    }

    #[test]
    fn tight_conversion_inverts_its_delta() {
        // DP-4: ε(δ) and δ(ε) describe the same curve.
        for rho in [1e-4, 0.01, 0.5, 3.0, 300.0] {
            for delta in [1e-3, 1e-6, 1e-10] {
                let eps = epsilon_tight(rho, delta);
                let back = delta_tight(rho, eps);
                assert!((back / delta - 1.0).abs() < 1e-6, "{rho} {delta}: {back}");
            }
        }
    }
}
