//! Extraction without materialising LWE ciphertexts (EXT-1).
//!
//! Value i of an RLWE ciphertext `c` is the constant coefficient of
//! `X^(−i)·c`: a signed rotation, no key material, no noise. Packing and
//! unshuffling work on such references ([`ValueRef`]) and only rotate when a
//! value actually enters a tree. The client reads packed values back by
//! position ([`read_positions`]): partial extraction, only valid coefficients.

use crate::math::RnsModulus;
use crate::rlwe::Ciphertext;

/// Coefficient `coeff` of source ciphertext `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueRef {
    /// Index of the source ciphertext in the list a request refers to.
    pub source: u32,
    /// The coefficient (value slot) within it, in `0..N`.
    pub coeff: u32,
}

impl ValueRef {
    /// From `usize` indices, cast to `u32` without a check: callers pass a
    /// coefficient below N and a source index below the source count.
    pub fn new(source: usize, coeff: usize) -> Self {
        Self {
            source: source as u32,
            coeff: coeff as u32,
        }
    }
}

/// `X^(−i)·c`: a ciphertext whose constant coefficient encrypts value i;
/// `None` if `i ≥ N`.
pub fn shifted_to_constant(
    q: impl Into<RnsModulus>,
    ct: &Ciphertext,
    i: usize,
) -> Option<Ciphertext> {
    let q = q.into();
    let n = ct.ring_degree();
    if i >= n {
        return None;
    }
    let mut out = Ciphertext::zero(n, q.len());
    out.monomial_mul_add(q, ct, (2 * n - i) % (2 * n), false);
    Some(out)
}

/// A materialised LWE ciphertext of one coefficient, under the key's
/// coefficient vector: `b − ⟨a, s⟩ = phase_i`. Only for interoperability
/// with LWE-based tools; the protocol never needs it. On a multi-limb q
/// (PARAM-8) the mask is limb-major (L·N) and the body has one residue per
/// limb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LweCiphertext {
    /// The LWE mask, limb-major: N residues per limb, each reduced modulo it.
    pub mask: Vec<u64>,
    /// The body: coefficient i of the RLWE body, one residue per limb.
    pub body: Vec<u64>,
}

/// Sample extraction of coefficient i (mod-q negations), `None` if `i ≥ N`;
/// decrypt it with
/// [`Context::decrypt_lwe`](crate::rlwe::Context::decrypt_lwe).
pub fn extract_lwe(q: impl Into<RnsModulus>, ct: &Ciphertext, i: usize) -> Option<LweCiphertext> {
    let q = q.into();
    let (a, b) = ct.parts();
    let n = ct.ring_degree();
    if i >= n {
        return None;
    }
    let mut mask = Vec::with_capacity(n * q.len());
    let mut body = Vec::with_capacity(q.len());
    for (l, m) in q.limbs().iter().enumerate() {
        let a = &a[l * n..(l + 1) * n];
        // phase_i = b_i − Σ_j a_j s_{i−j} (negacyclic): mask_k pairs with s_k.
        mask.extend((0..n).map(|k| {
            if k <= i {
                a[i - k]
            } else {
                m.neg(a[n + i - k])
            }
        }));
        body.push(b[l * n + i]);
    }
    Some(LweCiphertext { mask, body })
}

/// Reads decrypted values at the given positions (partial extraction).
/// Positions out of range yield `None` rather than panicking.
pub fn read_positions(decrypted: &[i64], positions: &[usize]) -> Option<Vec<i64>> {
    positions
        .iter()
        .map(|&p| decrypted.get(p).copied())
        .collect()
}
