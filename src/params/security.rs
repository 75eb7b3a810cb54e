//! Lattice security of a parameter set (spec/parameters.md, PARAM-3).
//!
//! Two independent checks, both must pass, both on the *largest* modulus any
//! key lives under (P·q, for the special-modulus Galois keys):
//! 1. the HomomorphicEncryption.org standard table (128-bit classical,
//!    ternary secrets, σ ≈ 3.2): log2(P·q) must not exceed its bound for N;
//! 2. the lattice-estimator fit tfhe-rs ships for *binary* secrets (132-bit
//!    target): the TUniform noise variance must reach its minimum.

use super::{ParamError, ParameterSpec};
use tfhe::core_crypto::commons::noise_formulas::secure_noise::minimal_glwe_variance_for_132_bits_security_tuniform;
use tfhe::core_crypto::prelude::{GlweDimension, PolynomialSize};

/// The security every set must reach (PARAM-3), in bits, classical.
pub const MIN_SECURITY_BITS: u32 = 128;

/// Largest log2 of the modulus for 128-bit security at ring degree `n`
/// (HE standard, Table 1, classical, uniform ternary secret).
pub fn he_standard_max_log_q(n: usize) -> Option<u32> {
    Some(match n {
        1024 => 27,
        2048 => 54,
        4096 => 109,
        8192 => 218,
        16384 => 438,
        32768 => 881,
        _ => return None,
    })
}

/// Variance of TUniform(b) in integer units.
pub fn tuniform_variance(bound_log2: u32) -> f64 {
    ((2f64).powi(2 * bound_log2 as i32 + 1) + 1.0) / 6.0
}

/// PARAM-3.
pub(super) fn check(s: &ParameterSpec) -> Result<(), ParamError> {
    // On the full modulus: every limb of q and P (PARAM-8).
    let log_pq = s.log2_pq();
    let insecure = |reason: String| ParamError::Insecure {
        ring_degree: s.ring_degree,
        log_pq,
        reason,
    };
    let bound = he_standard_max_log_q(s.ring_degree)
        .ok_or_else(|| insecure("no HE-standard bound for this ring degree".into()))?;
    if log_pq > bound as f64 {
        return Err(insecure(format!(
            "log2(P·q) exceeds the HE-standard bound {bound}"
        )));
    }
    let modulus = (2f64).powf(log_pq);
    // The fit returns a variance in torus units (fraction of the modulus).
    let min_var_torus = minimal_glwe_variance_for_132_bits_security_tuniform(
        GlweDimension(1),
        PolynomialSize(s.ring_degree),
        modulus,
    )
    .0;
    let min_var = min_var_torus * modulus * modulus;
    let var = tuniform_variance(s.noise_bound_log2);
    if var < min_var {
        return Err(insecure(format!(
            "noise variance {var:.1} is below the binary-key minimum {min_var:.1} of the tfhe-rs lattice-estimator fit"
        )));
    }
    Ok(())
}
