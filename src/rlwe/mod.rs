//! RLWE over `Z_q[X]/(X^N+1)` with coefficient encoding: keys, encryption,
//! decryption, plaintext products.
//!
//! Convention (as tfhe-rs): a ciphertext `(a, b)` under secret `s` has phase
//! `b − a·s = Δ·m + e`.

mod context;
mod keys;
mod keyswitch;

pub use context::Context;
pub use keys::{packing_galois_elements, SeededGaloisKey, SeededKeyRow, SeededPublicKey};
pub use keys::{GaloisKey, GaloisKeys, PublicKey, SecretKey};
pub use keyswitch::Decomposer;
pub(crate) use keyswitch::KeySwitchScratch;

use crate::math::{poly, Modulus};
use crate::rng::{Csprng, Seed128};

/// An RLWE ciphertext in the coefficient domain.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) a: Vec<u64>,
    pub(crate) b: Vec<u64>,
}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ciphertext(N = {})", self.a.len())
    }
}

/// A fresh ciphertext whose mask is re-derived from a public 16-byte seed:
/// half the size on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct SeededCiphertext {
    pub(crate) seed: Seed128,
    pub(crate) b: Vec<u64>,
}

impl std::fmt::Debug for SeededCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeededCiphertext(N = {})", self.b.len())
    }
}

/// A ciphertext in the NTT domain, for accumulating plaintext products.
#[derive(Clone)]
pub struct NttCiphertext {
    pub(crate) a: Vec<u64>,
    pub(crate) b: Vec<u64>,
}

/// A plaintext polynomial with small signed coefficients, transformed once
/// (with 1/N folded in) so every product with it is one point-wise pass.
#[derive(Clone)]
pub struct NttPlaintext {
    pub(crate) values: Vec<u64>,
}

impl Ciphertext {
    pub fn zero(n: usize) -> Self {
        Self {
            a: vec![0; n],
            b: vec![0; n],
        }
    }

    pub fn ring_degree(&self) -> usize {
        self.b.len()
    }

    /// The mask and body polynomials (coefficients in `[0, q)`).
    pub fn parts(&self) -> (&[u64], &[u64]) {
        (&self.a, &self.b)
    }

    /// Builds a ciphertext from raw parts; `None` unless both have length `n`
    /// and every coefficient is reduced modulo `q`.
    pub fn from_parts(a: Vec<u64>, b: Vec<u64>, n: usize, q: Modulus) -> Option<Self> {
        let ok = a.len() == n && b.len() == n && a.iter().chain(&b).all(|&x| x < q.value());
        ok.then_some(Self { a, b })
    }

    /// Sets every coefficient to zero, keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.a.fill(0);
        self.b.fill(0);
    }

    /// Becomes a copy of `other`, reusing the buffers.
    pub(crate) fn copy_from(&mut self, other: &Ciphertext) {
        self.a.clone_from(&other.a);
        self.b.clone_from(&other.b);
    }

    pub fn add_assign(&mut self, q: Modulus, other: &Ciphertext) {
        poly::add_assign(q, &mut self.a, &other.a);
        poly::add_assign(q, &mut self.b, &other.b);
    }

    pub fn sub_assign(&mut self, q: Modulus, other: &Ciphertext) {
        poly::sub_assign(q, &mut self.a, &other.a);
        poly::sub_assign(q, &mut self.b, &other.b);
    }

    /// `self += sign · X^e · other`.
    pub fn monomial_mul_add(&mut self, q: Modulus, other: &Ciphertext, e: usize, negate: bool) {
        poly::monomial_mul_add(q, &mut self.a, &other.a, e, negate);
        poly::monomial_mul_add(q, &mut self.b, &other.b, e, negate);
    }

    pub fn scalar_mul_assign(&mut self, q: Modulus, c: u64) {
        poly::scalar_mul_assign(q, &mut self.a, c);
        poly::scalar_mul_assign(q, &mut self.b, c);
    }

    /// `τ_g` applied to both parts: a ciphertext of `τ_g(m)` under `τ_g(s)`.
    pub fn automorphism(&self, q: Modulus, g: usize) -> Ciphertext {
        let mut out = Ciphertext::zero(self.ring_degree());
        self.automorphism_into(q, g, &mut out);
        out
    }

    /// [`automorphism`](Self::automorphism) written into `out` (of the same
    /// ring degree; every coefficient is overwritten), reusing its buffers.
    pub(crate) fn automorphism_into(&self, q: Modulus, g: usize, out: &mut Ciphertext) {
        poly::automorphism(q, &mut out.a, &self.a, g);
        poly::automorphism(q, &mut out.b, &self.b, g);
    }
}

impl SeededCiphertext {
    pub fn seed(&self) -> &Seed128 {
        &self.seed
    }
    pub fn body(&self) -> &[u64] {
        &self.b
    }
    pub fn from_parts(seed: Seed128, b: Vec<u64>, n: usize, q: Modulus) -> Option<Self> {
        (b.len() == n && b.iter().all(|&x| x < q.value())).then_some(Self { seed, b })
    }

    /// Re-derives the mask from the seed.
    pub fn expand(&self, q: Modulus) -> Ciphertext {
        Ciphertext {
            a: expand_mask(self.seed, self.b.len(), q),
            b: self.b.clone(),
        }
    }
}

/// The uniform mask a public seed stands for.
pub(crate) fn expand_mask(seed: Seed128, n: usize, q: Modulus) -> Vec<u64> {
    let mut a = vec![0; n];
    Csprng::from_seed(seed).fill_uniform(&mut a, q.value());
    a
}

impl std::fmt::Debug for NttCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NttCiphertext(N = {})", self.a.len())
    }
}

impl std::fmt::Debug for NttPlaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NttPlaintext(N = {})", self.values.len())
    }
}
