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

use crate::math::{poly, Modulus, RnsModulus};
use crate::rng::{Csprng, Seed128};

/// An RLWE ciphertext in the coefficient domain. Both parts are limb-major
/// (PARAM-8): L·N residues, limb l at `[l·N, (l+1)·N)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) a: Vec<u64>,
    pub(crate) b: Vec<u64>,
    /// Ring degree N (the parts hold L·N residues).
    pub(crate) n: usize,
}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ciphertext(N = {})", self.n)
    }
}

/// A fresh ciphertext whose mask is re-derived from a public 16-byte seed:
/// half the size on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct SeededCiphertext {
    pub(crate) seed: Seed128,
    /// Limb-major, L·N residues.
    pub(crate) b: Vec<u64>,
}

impl std::fmt::Debug for SeededCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeededCiphertext({} residues)", self.b.len())
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

/// Output coefficients per block of [`Ciphertext::monomial_sum_add`]: 16 KiB
/// of accumulator plus 16 KiB of the input streaming through fit a 32 KiB
/// L1 (48 KiB on the project's Zen 5). 1024 and 4096 were slower.
pub(crate) const SUM_BLOCK: usize = 2048;

/// `out` (one part of a ciphertext, limb by limb) `= / +=` the same part of
/// `Σ sign · X^e · ct` over `terms`, block by block of [`SUM_BLOCK`]
/// coefficients (`overwrite` writes the sum over `out`, else adds it).
fn blocked_sum(
    q: RnsModulus,
    n: usize,
    out: &mut [u64],
    terms: &[(&Ciphertext, usize, bool)],
    part: fn(&Ciphertext) -> &[u64],
    overwrite: bool,
) {
    for (l, &m) in q.limbs().iter().enumerate() {
        let limb = l * n..(l + 1) * n;
        for (k, block) in out[limb.clone()].chunks_mut(SUM_BLOCK).enumerate() {
            let inputs = terms
                .iter()
                .map(|&(ct, e, negate)| (&part(ct)[limb.clone()], e, negate));
            if overwrite {
                poly::monomial_sum_block_into(m, block, k * SUM_BLOCK, inputs);
            } else {
                poly::monomial_sum_block(m, block, k * SUM_BLOCK, inputs);
            }
        }
    }
}

/// Applies `f` to each limb of `out` (and the matching limb of `inp`). One
/// limb: a direct call, no loop (PARAM-8's fast path).
#[inline(always)]
pub(crate) fn limbwise2(
    q: RnsModulus,
    n: usize,
    out: &mut [u64],
    inp: &[u64],
    f: impl Fn(Modulus, &mut [u64], &[u64]),
) {
    if q.len() == 1 {
        return f(q.limb(0), out, inp);
    }
    for ((o, i), &m) in out
        .chunks_exact_mut(n)
        .zip(inp.chunks_exact(n))
        .zip(q.limbs())
    {
        f(m, o, i);
    }
}

/// Applies `f` to each limb of `out`.
#[inline(always)]
pub(crate) fn limbwise1(
    q: RnsModulus,
    n: usize,
    out: &mut [u64],
    f: impl Fn(usize, Modulus, &mut [u64]),
) {
    if q.len() == 1 {
        return f(0, q.limb(0), out);
    }
    for (l, (o, &m)) in out.chunks_exact_mut(n).zip(q.limbs()).enumerate() {
        f(l, m, o);
    }
}

impl Ciphertext {
    /// The zero ciphertext of ring degree `n` with `limbs` RNS limbs.
    pub fn zero(n: usize, limbs: usize) -> Self {
        Self {
            a: vec![0; n * limbs],
            b: vec![0; n * limbs],
            n,
        }
    }

    /// The ring degree N; each part holds L·N residues.
    pub fn ring_degree(&self) -> usize {
        self.n
    }

    /// The mask and body polynomials (limb-major; every residue reduced
    /// modulo its limb).
    pub fn parts(&self) -> (&[u64], &[u64]) {
        (&self.a, &self.b)
    }

    /// Builds a ciphertext from raw limb-major parts; `None` unless both have
    /// length L·n and every residue is reduced modulo its limb.
    pub fn from_parts(
        a: Vec<u64>,
        b: Vec<u64>,
        n: usize,
        q: impl Into<RnsModulus>,
    ) -> Option<Self> {
        let q = q.into();
        let ok = q.is_reduced(&a, n) && q.is_reduced(&b, n);
        ok.then_some(Self { a, b, n })
    }

    /// `self += other` modulo `q`, limb by limb: the phases add, and so do the
    /// noises. Both ciphertexts must have the same N and be under `q`.
    pub fn add_assign(&mut self, q: RnsModulus, other: &Ciphertext) {
        let n = self.n;
        limbwise2(q, n, &mut self.a, &other.a, |m, o, i| {
            poly::add_assign(m, o, i)
        });
        limbwise2(q, n, &mut self.b, &other.b, |m, o, i| {
            poly::add_assign(m, o, i)
        });
    }

    /// `self −= other` modulo `q`, limb by limb; the noise bounds still add.
    pub fn sub_assign(&mut self, q: RnsModulus, other: &Ciphertext) {
        let n = self.n;
        limbwise2(q, n, &mut self.a, &other.a, |m, o, i| {
            poly::sub_assign(m, o, i)
        });
        limbwise2(q, n, &mut self.b, &other.b, |m, o, i| {
            poly::sub_assign(m, o, i)
        });
    }

    /// `self += sign · X^e · other`.
    pub fn monomial_mul_add(&mut self, q: RnsModulus, other: &Ciphertext, e: usize, negate: bool) {
        let n = self.n;
        limbwise2(q, n, &mut self.a, &other.a, |m, o, i| {
            poly::monomial_mul_add(m, o, i, e, negate)
        });
        limbwise2(q, n, &mut self.b, &other.b, |m, o, i| {
            poly::monomial_mul_add(m, o, i, e, negate)
        });
    }

    /// `self += Σ sign · X^e · ct` over `terms`, the same words as
    /// [`monomial_mul_add`](Self::monomial_mul_add) term by term (exact
    /// modular sums), computed block by block of [`SUM_BLOCK`] output
    /// coefficients per part and limb: the block stays in L1 across the
    /// terms and only the inputs stream in. Term by term, the 64 KiB
    /// accumulator (two parts at N = 4096) did not fit the 48 KiB L1 with an
    /// input beside it and was read and written back from L2 for every term
    /// (benches/README.md, "Pack leaves: what bounds them").
    pub(crate) fn monomial_sum_add(&mut self, q: RnsModulus, terms: &[(&Ciphertext, usize, bool)]) {
        let n = self.n;
        blocked_sum(q, n, &mut self.a, terms, |ct| &ct.a, false);
        blocked_sum(q, n, &mut self.b, terms, |ct| &ct.b, false);
    }

    /// `self = Σ sign · X^e · ct` over `terms` in the mask and at the
    /// multiples of `stride` in the body, whatever `self` held there; the
    /// body's other coefficients keep whatever they held. Each term comes
    /// with its ciphertext's body residue-major for `stride`
    /// ([`poly::residue_major`], limb by limb), which the slots read. A
    /// packing leaf built this way in a recycled buffer equals one built
    /// from zero at every word a packed output depends on (PACK-6,
    /// proofs/packing.md, Lemma 7: no body word off a node's slots reaches
    /// the root), and nothing zeroes the buffer first. `stride` divides N.
    pub(crate) fn set_monomial_sum_at_slots(
        &mut self,
        q: RnsModulus,
        terms: &[(&Ciphertext, &[u64], usize, bool)],
        stride: usize,
    ) {
        let masks: Vec<(&Ciphertext, usize, bool)> = terms
            .iter()
            .map(|&(ct, _, e, negate)| (ct, e, negate))
            .collect();
        self.mask_sum(q, &masks, true);
        self.set_body_sum_at_slots(q, terms, stride);
    }

    /// The mask of `Σ sign · X^e · ct` over `terms`, block by block of
    /// [`SUM_BLOCK`] coefficients: written over the mask (`overwrite`) or
    /// added to it. The body is left as it is.
    pub(crate) fn mask_sum(
        &mut self,
        q: RnsModulus,
        terms: &[(&Ciphertext, usize, bool)],
        overwrite: bool,
    ) {
        blocked_sum(q, self.n, &mut self.a, terms, |ct| &ct.a, overwrite);
    }

    /// The body of `Σ sign · X^e · ct` over `terms` written at the
    /// multiples of `stride` (from each term's residue-major rows, as in
    /// [`set_monomial_sum_at_slots`](Self::set_monomial_sum_at_slots));
    /// the mask and the body's other coefficients are left as they are.
    pub(crate) fn set_body_sum_at_slots(
        &mut self,
        q: RnsModulus,
        terms: &[(&Ciphertext, &[u64], usize, bool)],
        stride: usize,
    ) {
        let n = self.n;
        debug_assert!(stride > 0 && n.is_multiple_of(stride));
        for (l, &m) in q.limbs().iter().enumerate() {
            let limb = l * n..(l + 1) * n;
            let rows = terms
                .iter()
                .map(|&(_, rows, e, negate)| (&rows[limb.clone()], e, negate));
            poly::monomial_sum_at_slots_from_rows(m, &mut self.b[limb.clone()], stride, rows);
        }
    }

    /// Multiplies by the scalar whose residue modulo limb l is `c[l]`.
    pub fn scalar_mul_assign(&mut self, q: RnsModulus, c: &[u64]) {
        let n = self.n;
        for part in [&mut self.a, &mut self.b] {
            limbwise1(q, n, part, |l, m, o| poly::scalar_mul_assign(m, o, c[l]));
        }
    }

    /// `τ_g` applied to both parts: a ciphertext of `τ_g(m)` under `τ_g(s)`.
    pub fn automorphism(&self, q: RnsModulus, g: usize) -> Ciphertext {
        let mut out = Ciphertext::zero(self.n, q.len());
        self.automorphism_into(q, g, &mut out);
        out
    }

    /// A packing node's step (proofs/packing.md, Alg. 2) at shift h and
    /// Galois element g: `self`, the even child E, becomes E + X^h·O, and
    /// `twisted` τ_g(E − X^h·O), with `diff` as scratch for the
    /// difference's mask; one pass over E and O instead of a copy and two
    /// monomial adds. With `bodies_at_slots` the
    /// bodies are formed only at the multiples of h, the node's slots
    /// (PACK-6): elsewhere `self.b` keeps E's words and `twisted.b` what it
    /// held, words that never reach the root (Lemma 7). 0 < h < N.
    pub(crate) fn pack_node_step(
        &mut self,
        q: RnsModulus,
        odd: &Ciphertext,
        (h, g): (usize, usize),
        diff: &mut Ciphertext,
        twisted: &mut Ciphertext,
        bodies_at_slots: bool,
    ) {
        let n = self.n;
        for (l, &m) in q.limbs().iter().enumerate() {
            let r = l * n..(l + 1) * n;
            let parts = [
                (&mut self.a, &mut diff.a, &mut twisted.a, &odd.a, false),
                (
                    &mut self.b,
                    &mut diff.b,
                    &mut twisted.b,
                    &odd.b,
                    bodies_at_slots,
                ),
            ];
            for (e, d, t, o, at_slots) in parts {
                let (e, t, o) = (&mut e[r.clone()], &mut t[r.clone()], &o[r.clone()]);
                if at_slots {
                    poly::add_sub_monomial_twisted_at_slots(m, e, t, o, h, g);
                } else {
                    poly::add_sub_monomial(m, e, &mut d[r.clone()], o, h);
                    poly::automorphism(m, t, &d[r.clone()], g);
                }
            }
        }
    }

    /// [`automorphism`](Self::automorphism) written into `out` (of the same
    /// ring degree and limbs; every coefficient is overwritten), reusing its
    /// buffers.
    pub(crate) fn automorphism_into(&self, q: RnsModulus, g: usize, out: &mut Ciphertext) {
        let n = self.n;
        limbwise2(q, n, &mut out.a, &self.a, |m, o, i| {
            poly::automorphism(m, o, i, g)
        });
        limbwise2(q, n, &mut out.b, &self.b, |m, o, i| {
            poly::automorphism(m, o, i, g)
        });
    }
}

impl SeededCiphertext {
    /// The public seed the mask is expanded from (KEY-2); not secret.
    pub fn seed(&self) -> &Seed128 {
        &self.seed
    }
    /// The body, limb-major.
    pub fn body(&self) -> &[u64] {
        &self.b
    }
    /// Rebuilds a seeded ciphertext from its seed and limb-major body; `None`
    /// unless the body has length L·n and every residue is reduced modulo its
    /// limb.
    pub fn from_parts(
        seed: Seed128,
        b: Vec<u64>,
        n: usize,
        q: impl Into<RnsModulus>,
    ) -> Option<Self> {
        q.into().is_reduced(&b, n).then_some(Self { seed, b })
    }

    /// Re-derives the mask from the seed.
    pub fn expand(&self, q: impl Into<RnsModulus>) -> Ciphertext {
        let q = q.into();
        let n = self.b.len() / q.len();
        Ciphertext {
            a: expand_mask(self.seed, n, q),
            b: self.b.clone(),
            n,
        }
    }
}

/// The uniform mask a public seed stands for: uniform modulo each limb in
/// turn, i.e. uniform modulo q by the CRT.
pub(crate) fn expand_mask(seed: Seed128, n: usize, q: RnsModulus) -> Vec<u64> {
    let mut a = vec![0; n * q.len()];
    let mut rng = Csprng::from_seed(seed);
    for (c, m) in a.chunks_exact_mut(n).zip(q.limbs()) {
        rng.fill_uniform(c, m.value());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterSet;

    fn random_ciphertext(q: RnsModulus, n: usize, rng: &mut Csprng) -> Ciphertext {
        let mut ct = Ciphertext::zero(n, q.len());
        for part in [&mut ct.a, &mut ct.b] {
            for (limb, m) in part.chunks_exact_mut(n).zip(q.limbs()) {
                rng.fill_uniform(limb, m.value());
            }
        }
        ct
    }

    // A packing node's one-pass step with full bodies is the sequence it
    // replaced (copy E, add and subtract X^h·O, twist the difference),
    // word for word, on one limb and on two, at the shifts and Galois
    // elements of the lowest and highest levels; at the slots its bodies are those words at the
    // multiples of h (PACK-6), E's elsewhere.
    #[test]
    fn pack_node_step_equals_the_separate_passes() {
        for set in ["b16", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let (q, n) = (ctx.q(), ctx.n());
            let mut rng = Csprng::from_seed([5; 16]);
            for level in [1u32, 2, 5, n.trailing_zeros()] {
                // The level's shift and Galois element (`GaloisKeys::key_for_level`).
                let (h, g) = (n >> level, (1 << level) + 1);
                let even = random_ciphertext(q, n, &mut rng);
                let odd = random_ciphertext(q, n, &mut rng);
                let mut sum = even.clone();
                sum.monomial_mul_add(q, &odd, h, false);
                let mut diff = even.clone();
                diff.monomial_mul_add(q, &odd, h, true);
                let twisted = diff.automorphism(q, g);
                let mut scratch = random_ciphertext(q, n, &mut rng);
                let (mut got, mut got_twisted) = (even.clone(), random_ciphertext(q, n, &mut rng));
                got.pack_node_step(q, &odd, (h, g), &mut scratch, &mut got_twisted, false);
                assert_eq!(
                    (&got, &got_twisted),
                    (&sum, &twisted),
                    "{set}, level {level}"
                );
                let stale = random_ciphertext(q, n, &mut rng);
                let (mut got, mut got_twisted) = (even.clone(), stale.clone());
                got.pack_node_step(q, &odd, (h, g), &mut scratch, &mut got_twisted, true);
                assert_eq!((&got.a, &got_twisted.a), (&sum.a, &twisted.a));
                for i in 0..n * q.len() {
                    let slot = (i % n) % h == 0;
                    let (b, t) = if slot {
                        (&sum.b, &twisted.b)
                    } else {
                        (&even.b, &stale.b)
                    };
                    assert_eq!(
                        (got.b[i], got_twisted.b[i]),
                        (b[i], t[i]),
                        "{set}, level {level}, {i}"
                    );
                }
            }
        }
    }

    // The packer's leaves (src/pack.rs) sum their terms block by block; the
    // words must be those of term by term, on one limb (b16) and on two
    // (s16), for exponents on both sides of N and at the block edges.
    #[test]
    fn blocked_sum_equals_term_by_term() {
        for set in ["b16", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let (q, n) = (ctx.q(), ctx.n());
            let mut rng = Csprng::from_seed([3; 16]);
            let inputs: Vec<Ciphertext> =
                (0..3).map(|_| random_ciphertext(q, n, &mut rng)).collect();
            let exps = [
                0,
                1,
                777,
                SUM_BLOCK - 1,
                SUM_BLOCK,
                SUM_BLOCK + 3,
                n - 1,
                n,
                n + SUM_BLOCK,
                n + 5,
                2 * n - 1,
            ];
            let terms: Vec<(&Ciphertext, usize, bool)> = exps
                .iter()
                .enumerate()
                .map(|(k, &e)| (&inputs[k % 3], e, k % 2 == 1))
                .collect();
            let start = random_ciphertext(q, n, &mut rng);
            let mut term_by_term = start.clone();
            for &(ct, e, negate) in &terms {
                term_by_term.monomial_mul_add(q, ct, e, negate);
            }
            let mut blocked = start.clone();
            blocked.monomial_sum_add(q, &terms);
            assert_ne!(term_by_term, start, "{set}: the terms changed nothing");
            assert_eq!(blocked, term_by_term, "{set}");
        }
    }
}
