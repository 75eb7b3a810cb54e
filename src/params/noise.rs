//! The noise budget (proofs/noise-budget.md): a variance model of every
//! step of one protocol round, and the check that decoding fails with
//! probability at most 2^-40 per coefficient.
//!
//! Round: client encrypts → server repacks (unshuffle, PackLWEs) → linear
//! layer with ‖w‖₁ ≤ 2^W → output PackLWEs → re-randomise → flood → client
//! decrypts. All figures are variances in integer units (mod q).

use super::security::tuniform_variance;
use super::{ParamError, ParameterSpec, FAILURE_BITS};

/// Variance of the key-switch noise a packing tree adds, by tree shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackNoise {
    /// Variance added by one hybrid key switch.
    pub key_switch: f64,
    /// Variance added by a whole packing (depth log2 N) with the set's ℓ*.
    pub pack: f64,
}

/// The derived budget of one parameter set.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseBudget {
    /// Fresh encryption noise variance.
    pub fresh: f64,
    /// Variances of one key switch and of a whole packing tree (NOISE-1).
    pub pack: PackNoise,
    /// After the unshuffle repack: fresh + pack, or with γ conjugates
    /// 4^γ·fresh + the pack above level γ, whichever is larger.
    pub after_repack: f64,
    /// Std bound after the linear layer: ‖ŵ‖₁ · std (Minkowski, any
    /// correlation), ‖ŵ‖₁ summed over every weight polynomial feeding one
    /// output ciphertext, checked per layer by `linear::EncodedLayer`.
    pub after_linear_std: f64,
    /// Re-randomisation with a public-key encryption of zero.
    pub rerandomize: f64,
    /// Everything but flooding, at the client, as a variance.
    pub before_flooding: f64,
    /// Flooding bound 2^F = 8σ_f of the Gaussian flooding (PRIV-2).
    pub flooding_bound: f64,
    /// Number of standard deviations for a 2^-40 two-sided Gaussian tail.
    pub tail_sigmas: f64,
    /// Decoding margin: Δ/2 minus the rounding slack of Δ = ⌊q/t⌋.
    pub margin: f64,
}

/// `k` with erfc(k/√2) = 2^-bits, by bisection on statrs' erfc.
pub fn gaussian_tail_sigmas(bits: u32) -> f64 {
    let target = (2f64).powi(-(bits as i32));
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if statrs::function::erf::erfc(mid / std::f64::consts::SQRT_2) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

impl PackNoise {
    /// NOISE-1. Key-switch variance: Σ_j d_j e_j / P (digits ≤ β/2, key noise
    /// TUniform) plus the rounding of the division by P, whose mask part
    /// meets the binary key (≈ N/2 ones).
    pub fn key_switch_variance(
        n: usize,
        p: u64,
        noise_bound_log2: u32,
        base_log: u32,
        levels: u32,
    ) -> f64 {
        let n = n as f64;
        let beta2 = (2f64).powi(2 * base_log as i32);
        let digits = n * levels as f64 * beta2 / 12.0 * tuniform_variance(noise_bound_log2);
        let rounding = (1.0 + n / 2.0) / 12.0;
        digits / (p as f64 * p as f64) + rounding
    }

    /// NOISE-2. A depth-L tree: the noise a level-ℓ key switch adds doubles in
    /// amplitude at each later level (4^(L−ℓ) in variance). A level shared
    /// per source (ℓ ≤ ℓ*) adds 4^ℓ/2 rotated copies of the noise of 2^(ℓ−1)
    /// images per node; copies of one image may add coherently, so the
    /// placement-independent factor is 2^(ℓ−1)·(2^ℓ)² = 2^(3ℓ−1)
    /// (proofs/packing.md, Lemma 3). Levels ≤ γ use client conjugates and
    /// add no key-switch noise.
    pub fn pack_variance(
        log_n: u32,
        shared_levels: u32,
        conjugate_levels: u32,
        key_switch: f64,
    ) -> f64 {
        (1..=log_n)
            .map(|l| {
                let copies = if l <= conjugate_levels {
                    0.0
                } else if l <= shared_levels {
                    (2f64).powi(3 * l as i32 - 1)
                } else {
                    1.0
                };
                (4f64).powi((log_n - l) as i32) * copies * key_switch
            })
            .sum()
    }
}

/// Everything before flooding for a linear layer with LIN-3 factor `l1`:
/// (l1·std after the repack)², the output pack's key switches (4× for a
/// residual's two operands, ENG-4) and the re-randomisation.
fn before_flooding(l1: f64, after_repack: f64, pack: f64, rerandomize: f64) -> f64 {
    (l1 * after_repack.sqrt()).powi(2) + 4.0 * pack + rerandomize
}

impl NoiseBudget {
    /// Evaluates the variance model of one round for `s` (proofs/noise-budget.md).
    /// Checks nothing: [`check`](Self::check) compares it with the margin.
    pub fn derive(s: &ParameterSpec) -> Self {
        let n = s.ring_degree;
        let log_n = n.trailing_zeros();
        let fresh = tuniform_variance(s.noise_bound_log2);
        let key_switch = PackNoise::key_switch_variance(
            n,
            s.special_modulus,
            s.noise_bound_log2,
            s.gadget_base_log,
            s.gadget_levels,
        );
        let pack = PackNoise {
            key_switch,
            pack: PackNoise::pack_variance(log_n, s.shared_pack_levels, 0, key_switch),
        };
        // With γ conjugate levels a value's noise collects up to 4^γ fresh
        // noise terms and the key switches of those levels are skipped
        // (proofs/packing.md, Lemma 5). A set with γ > 0 still accepts plain
        // sources, so the budget takes the worse of the two repacks.
        let gamma = s.client_conjugate_levels;
        let with_conjugates = (4f64).powi(gamma as i32) * fresh
            + PackNoise::pack_variance(log_n, s.shared_pack_levels, gamma, key_switch);
        let after_repack = with_conjugates.max(fresh + pack.pack);
        let after_linear_std = (2f64).powi(s.max_weight_l1_log2 as i32) * after_repack.sqrt();
        // u·e_pk + e2 − e1·s with binary u and s: ≈ (N/2 + 1 + N/2)·σ².
        let rerandomize = (n as f64 + 1.0) * fresh;
        // The output pack's leaves may sum two operands (a residual
        // connection, ENG-4): by Minkowski its key-switch noise std is at
        // most twice that of one tree, so 4× the variance.
        let before_flooding = before_flooding(
            (2f64).powi(s.max_weight_l1_log2 as i32),
            after_repack,
            pack.pack,
            rerandomize,
        );
        let t = (2f64).powi(s.plaintext_bits as i32);
        // Δ = ⌊q/t⌋ exactly (q < 2^128, PARAM-8), then as a float.
        let delta = crate::math::RnsModulus::new(s.ciphertext_modulus.limbs())
            .map_or(0.0, |q| (q.value() >> s.plaintext_bits) as f64);
        // Δ·y differs from (q/t)·y by |y|·(q mod t)/t < t/2.
        let margin = delta / 2.0 - t / 2.0 - 1.0;
        Self {
            fresh,
            pack,
            after_repack,
            after_linear_std,
            rerandomize,
            before_flooding,
            flooding_bound: (2f64).powi(s.flooding_bound_log2 as i32),
            tail_sigmas: gaussian_tail_sigmas(FAILURE_BITS),
            margin,
        }
    }

    /// Worst case: flooding at its bound plus a 2^-40 Gaussian tail of the rest.
    pub fn worst_case(&self) -> f64 {
        self.flooding_bound + self.tail_sigmas * self.before_flooding.sqrt()
    }

    /// PARAM-4: the 2^-40 per-coefficient failure bound.
    pub fn check(&self) -> Result<(), ParamError> {
        if self.worst_case() < self.margin {
            Ok(())
        } else {
            Err(ParamError::NoiseBudget {
                needed_log2: self.worst_case().log2(),
                margin_log2: self.margin.log2(),
                failure_bits: FAILURE_BITS,
            })
        }
    }

    /// PRIV-3: the noise before flooding of a stage whose LIN-3 factor is
    /// `l1` (Σ‖ŵ‖₁ of its worst output ciphertext, ≤ 2^W): the set's
    /// `before_flooding` with 2^W replaced by `l1`.
    pub fn before_flooding_at(&self, l1: f64) -> f64 {
        before_flooding(l1, self.after_repack, self.pack.pack, self.rerandomize)
    }

    /// Bits of flooding above the weight-dependent noise (its 2^-40 tail).
    pub fn flooding_headroom_bits(&self) -> f64 {
        self.flooding_bound.log2() - (self.tail_sigmas * self.before_flooding.sqrt()).log2()
    }
}
