//! Key material: the client's secret key, and what the server gets from it
//! (Galois keys for packing, a public key for re-randomisation).
//!
//! Keys travel seeded: masks are re-derived from public seeds, so only the
//! bodies are sent. The server expands them once into the NTT domain.

use super::{expand_mask, limbwise1, Context};
use crate::math::{Modulus, RnsModulus};
use crate::rng::{Csprng, Seed128};

/// The client's binary secret key. Overwritten with zeros on drop; its
/// `Debug` prints nothing secret (KEY-1, THREAT-2).
pub struct SecretKey {
    pub(crate) s: Vec<u64>,
    /// NTT of s modulo each limb of q (limb-major), with 1/N folded in.
    pub(crate) s_ntt_q: Vec<u64>,
    /// NTT of s modulo P, with 1/N folded in.
    pub(crate) s_ntt_p: Vec<u64>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(N = {}, ..)", self.s.len())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for v in [&mut self.s, &mut self.s_ntt_q, &mut self.s_ntt_p] {
            v.zeroize();
        }
    }
}

impl SecretKey {
    /// Samples a fresh binary secret key (coefficients in {0, 1}) from `rng`,
    /// which must be the client's OS-seeded CSPRNG (KEY-1).
    pub fn generate(ctx: &Context, rng: &mut Csprng) -> Self {
        let s: Vec<u64> = (0..ctx.n()).map(|_| rng.bit()).collect();
        Self::from_binary(ctx, s)
    }

    fn from_binary(ctx: &Context, s: Vec<u64>) -> Self {
        let mut s_ntt_q = s.repeat(ctx.limbs());
        ctx.ntt_q.forward(&mut s_ntt_q);
        ctx.ntt_q.normalize(&mut s_ntt_q);
        let mut s_ntt_p = s.clone();
        ctx.ntt_p.forward(&mut s_ntt_p);
        ctx.ntt_p.normalize(&mut s_ntt_p);
        Self {
            s,
            s_ntt_q,
            s_ntt_p,
        }
    }

    /// `a · s mod p` for the P-part of hybrid keys.
    fn times_mod_p(&self, ctx: &Context, a: &[u64]) -> Vec<u64> {
        let mut buf = a.to_vec();
        ctx.ntt_p.forward(&mut buf);
        ctx.ntt_p.mul_assign(&mut buf, &self.s_ntt_p);
        ctx.ntt_p.backward_unnormalized(&mut buf);
        buf
    }
}

/// One Galois key: switches `τ_g(s)` to `s`, hybrid (modulo P·q).
///
/// Row j encrypts `P·β^j·τ_g(s)` under `s` modulo `P·q`, held as its CRT
/// residues: the q part limb-major (L·N), the P part (N). Stored in the NTT
/// domain with 1/N folded in.
#[derive(Clone)]
pub struct GaloisKey {
    pub(crate) g: usize,
    pub(crate) a_q: Vec<Vec<u64>>,
    pub(crate) b_q: Vec<Vec<u64>>,
    pub(crate) a_p: PRows,
    pub(crate) b_p: PRows,
}

/// A [`GaloisKey`]'s rows with those mod P in 32-bit words: what the
/// one-limb key switch reads.
#[derive(Clone, Copy)]
pub(crate) struct NarrowKey<'a> {
    pub(crate) a_q: &'a [Vec<u64>],
    pub(crate) b_q: &'a [Vec<u64>],
    pub(crate) a_p: &'a [Vec<u32>],
    pub(crate) b_p: &'a [Vec<u32>],
}

impl GaloisKey {
    /// This key's [`HoistedKey`]: every row twisted by τ_h, h = g⁻¹ mod 2N,
    /// as the permutation τ_h is in each plan's evaluation domain (no
    /// transform: the rows are already there).
    pub(crate) fn hoisted(&self, ctx: &Context) -> HoistedKey {
        let two_n = 2 * ctx.n();
        // g is odd, so a unit mod 2N, whose units have order N: g⁻¹ = g^(N−1).
        let mut h = 1usize;
        for _ in 1..ctx.n() {
            h = h * self.g % two_n;
        }
        debug_assert_eq!(h * self.g % two_n, 1);
        let n = ctx.n();
        let q_perms: Vec<Vec<u32>> = ctx
            .ntt_q
            .limbs()
            .iter()
            .map(|plan| plan.automorphism_permutation(h))
            .collect();
        let limbwise = |row: &Vec<u64>| -> Vec<u64> {
            row.chunks_exact(n)
                .zip(&q_perms)
                .flat_map(|(limb, perm)| gather(limb, perm))
                .collect()
        };
        let p_perm = ctx.ntt_p.automorphism_permutation(h);
        HoistedKey {
            key: GaloisKey {
                g: self.g,
                a_q: self.a_q.iter().map(limbwise).collect(),
                b_q: self.b_q.iter().map(limbwise).collect(),
                a_p: self.a_p.permuted(&p_perm),
                b_p: self.b_p.permuted(&p_perm),
            },
        }
    }

    /// The rows as a [`NarrowKey`], if those mod P are 32-bit.
    pub(crate) fn narrow(&self) -> Option<NarrowKey<'_>> {
        Some(NarrowKey {
            a_q: &self.a_q,
            b_q: &self.b_q,
            a_p: self.a_p.narrow()?,
            b_p: self.b_p.narrow()?,
        })
    }
}

/// A key part's rows modulo P, in the NTT domain: in 32-bit words where P
/// fits them (the b-sets' P < 2^31, whose one-limb key switch reads them
/// so: a third of its key bytes saved), else in 64-bit words.
#[derive(Clone)]
pub(crate) enum PRows {
    Narrow(Vec<Vec<u32>>),
    Wide(Vec<Vec<u64>>),
}

impl PRows {
    /// Empty rows of the width `narrow` says.
    fn new(narrow: bool) -> Self {
        if narrow {
            Self::Narrow(vec![])
        } else {
            Self::Wide(vec![])
        }
    }

    /// Appends a row of residues mod P (each below 2^32 when narrow).
    fn push(&mut self, row: Vec<u64>) {
        match self {
            Self::Narrow(rows) => rows.push(row.iter().map(|&x| x as u32).collect()),
            Self::Wide(rows) => rows.push(row),
        }
    }

    /// The 32-bit rows, if these are.
    pub(crate) fn narrow(&self) -> Option<&[Vec<u32>]> {
        match self {
            Self::Narrow(rows) => Some(rows),
            Self::Wide(_) => None,
        }
    }

    /// Every row with its words taken in the order `perm` lists.
    fn permuted(&self, perm: &[u32]) -> Self {
        match self {
            Self::Narrow(rows) => Self::Narrow(rows.iter().map(|r| gather(r, perm)).collect()),
            Self::Wide(rows) => Self::Wide(rows.iter().map(|r| gather(r, perm)).collect()),
        }
    }

    /// Row `j` in 64-bit words: the row itself, or widened into `buf`.
    pub(crate) fn row64<'a>(&'a self, j: usize, buf: &'a mut Vec<u64>) -> &'a [u64] {
        match self {
            Self::Wide(rows) => &rows[j],
            Self::Narrow(rows) => {
                buf.clear();
                buf.extend(rows[j].iter().map(|&x| u64::from(x)));
                buf
            }
        }
    }
}

/// The compact (seeded) form a client sends: one seed and two bodies per row (KEY-2).
#[derive(Clone, PartialEq, Eq)]
pub struct SeededGaloisKey {
    pub(crate) g: usize,
    pub(crate) rows: Vec<SeededKeyRow>,
}

/// One row j of a [`SeededGaloisKey`]: the seed of its masks (mod q and mod
/// P) and the bodies of `P·2^(B·j)·τ_g(s)` modulo each limb of q (limb-major,
/// L·N) and modulo P (N), all reduced (KEY-2, WIRE-3).
#[derive(Clone, PartialEq, Eq)]
pub struct SeededKeyRow {
    pub(crate) seed: Seed128,
    pub(crate) b_q: Vec<u64>,
    pub(crate) b_p: Vec<u64>,
}

/// The Galois keys for `g = 2^ℓ + 1`, ℓ = 1..log2 N: all PackLWEs needs.
#[derive(Clone)]
pub struct GaloisKeys {
    pub(crate) keys: Vec<GaloisKey>,
    /// `hoisted[ℓ − 1]`: level ℓ's key made [`HoistedKey`], for the
    /// levels a pack shares (ℓ ≤ the set's `shared_pack_levels`).
    pub(crate) hoisted: Vec<HoistedKey>,
}

/// Key `g` with `τ_g⁻¹` applied to every row (g⁻¹ mod 2N): rows encrypting
/// `P·β^j·s` under `τ_g⁻¹(s)`. A key switch with it takes a ciphertext
/// under s to one under `τ_g⁻¹(s)`, and τ_g maps that back under s, so
/// `τ_g(KS′(D))` is an image `KS_g(τ_g(D))` whose gadget decomposition is
/// that of D's own mask: one decomposition (and its forward transforms)
/// serves every automorphism of D (PACK-7, proofs/packing.md, Lemma 8).
/// The server forms it from the client's expanded key by a permutation
/// of each row's evaluations ([`GaloisKey::hoisted`]); nothing new travels.
#[derive(Clone)]
pub(crate) struct HoistedKey {
    /// The twisted rows, in the same form as any key's; `key.g` is g.
    pub(crate) key: GaloisKey,
}

impl HoistedKey {
    /// g, the automorphism applied after the key switch.
    pub(crate) fn g(&self) -> usize {
        self.key.g
    }
}

/// `row`'s words in the order `perm` lists: a row's evaluations permuted.
fn gather<T: Copy>(row: &[T], perm: &[u32]) -> Vec<T> {
    perm.iter().map(|&i| row[i as usize]).collect()
}

/// Public key `(a, a·s + e)` for re-randomising server responses.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) a_ntt: Vec<u64>,
    pub(crate) b_ntt: Vec<u64>,
}

/// The compact form of a [`PublicKey`] the client sends: a public seed for
/// the mask and the body `a·s + e` (limb-major, reduced modulo each limb),
/// i.e. a seeded encryption of zero (KEY-2).
#[derive(Clone, PartialEq, Eq)]
pub struct SeededPublicKey {
    pub(crate) seed: Seed128,
    pub(crate) b: Vec<u64>,
}

impl std::fmt::Debug for GaloisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GaloisKeys({} keys)", self.keys.len())
    }
}

impl std::fmt::Debug for SeededGaloisKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SeededGaloisKey(g = {}, {} rows)",
            self.g,
            self.rows.len()
        )
    }
}

impl std::fmt::Debug for SeededPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeededPublicKey({} residues)", self.b.len())
    }
}

/// The Galois elements PackLWEs uses, bottom level first: 2^ℓ + 1.
pub fn packing_galois_elements(n: usize) -> impl Iterator<Item = usize> {
    (1..=n.trailing_zeros()).map(|l| (1usize << l) + 1)
}

impl SeededGaloisKey {
    /// Generates the key for `g` (odd, < 2N).
    pub fn generate(ctx: &Context, sk: &SecretKey, g: usize, rng: &mut Csprng) -> Self {
        let q = ctx.q();
        let p = ctx.params().p();
        let n = ctx.n();
        let mut tau_s = vec![0u64; n];
        // τ_g(s) as small integers (entries 0, ±1), valid in every limb.
        crate::math::poly::automorphism(p, &mut tau_s, &sk.s, g);
        let tau_s: Vec<i64> = tau_s.iter().map(|&x| p.centered(x)).collect();
        let base_log = ctx.params().gadget_base_log();
        let bound = ctx.params().noise_bound_log2();
        let rows = (0..ctx.params().gadget_levels())
            .map(|j| {
                let seed = rng.seed();
                let (a_q, a_p) = expand_key_masks(seed, n, q, p);
                let e: Vec<i64> = (0..n).map(|_| rng.tuniform(bound)).collect();
                let mut b_q = ctx.mask_times_key(&a_q, sk);
                limbwise1(q, n, &mut b_q, |_, m, o| {
                    // P·β^j mod q_l: the gadget factor this row carries.
                    let factor = m.mul(p.value() % m.value(), m.pow(2, base_log as u64 * j as u64));
                    for i in 0..n {
                        let t = m.mul(factor, m.from_i64(tau_s[i]));
                        o[i] = m.add(m.add(o[i], t), m.from_i64(e[i]));
                    }
                });
                let mut b_p = sk.times_mod_p(ctx, &a_p);
                for i in 0..n {
                    b_p[i] = p.add(b_p[i], p.from_i64(e[i]));
                }
                SeededKeyRow { seed, b_q, b_p }
            })
            .collect();
        Self { g, rows }
    }

    /// The server's working form.
    pub fn expand(&self, ctx: &Context) -> GaloisKey {
        let (q, p, n) = (ctx.q(), ctx.params().p(), ctx.n());
        // Narrow exactly where the one-limb key switch reads 32-bit words.
        let narrow = ctx.ntt_p.narrow().is_some();
        let mut key = GaloisKey {
            g: self.g,
            a_q: vec![],
            b_q: vec![],
            a_p: PRows::new(narrow),
            b_p: PRows::new(narrow),
        };
        let to_ntt_q = |mut v: Vec<u64>| {
            ctx.ntt_q.forward(&mut v);
            ctx.ntt_q.normalize(&mut v);
            v
        };
        let to_ntt_p = |mut v: Vec<u64>| {
            ctx.ntt_p.forward(&mut v);
            ctx.ntt_p.normalize(&mut v);
            v
        };
        for row in &self.rows {
            let (a_q, a_p) = expand_key_masks(row.seed, n, q, p);
            key.a_q.push(to_ntt_q(a_q));
            key.a_p.push(to_ntt_p(a_p));
            key.b_q.push(to_ntt_q(row.b_q.clone()));
            key.b_p.push(to_ntt_p(row.b_p.clone()));
        }
        key
    }

    /// The Galois element g (odd, < 2N): the key switches τ_g(s) back to s.
    pub fn galois_element(&self) -> usize {
        self.g
    }
}

/// Masks of a hybrid key row: uniform mod each limb of q and uniform mod P
/// from one seed, i.e. uniform mod P·q by the CRT.
fn expand_key_masks(seed: Seed128, n: usize, q: RnsModulus, p: Modulus) -> (Vec<u64>, Vec<u64>) {
    let mut rng = Csprng::from_seed(seed);
    let mut a_q = vec![0; n * q.len()];
    let mut a_p = vec![0; n];
    for (c, m) in a_q.chunks_exact_mut(n).zip(q.limbs()) {
        rng.fill_uniform(c, m.value());
    }
    rng.fill_uniform(&mut a_p, p.value());
    (a_q, a_p)
}

impl GaloisKeys {
    /// All packing keys, seeded, as the client sends them.
    pub fn generate_seeded(
        ctx: &Context,
        sk: &SecretKey,
        rng: &mut Csprng,
    ) -> Vec<SeededGaloisKey> {
        packing_galois_elements(ctx.n())
            .map(|g| SeededGaloisKey::generate(ctx, sk, g, rng))
            .collect()
    }

    /// Expands and checks that exactly the packing elements are present.
    pub fn from_seeded(ctx: &Context, seeded: &[SeededGaloisKey]) -> Option<Self> {
        let expected: Vec<usize> = packing_galois_elements(ctx.n()).collect();
        let got: Vec<usize> = seeded.iter().map(|k| k.g).collect();
        if expected != got {
            return None;
        }
        let keys: Vec<GaloisKey> = seeded.iter().map(|k| k.expand(ctx)).collect();
        let shared = (ctx.params().shared_pack_levels() as usize).min(keys.len());
        let hoisted = keys[..shared].iter().map(|k| k.hoisted(ctx)).collect();
        Some(Self { keys, hoisted })
    }

    /// The key for tree level ℓ ∈ 1..=log2 N (g = 2^ℓ + 1).
    ///
    /// # Panics
    /// If ℓ is outside 1..=log2 N (a caller bug).
    pub fn key_for_level(&self, l: u32) -> &GaloisKey {
        &self.keys[l as usize - 1]
    }

    /// Level ℓ's [`HoistedKey`], ℓ ∈ 1..=`shared_pack_levels`.
    ///
    /// # Panics
    /// If ℓ is outside that range (a caller bug).
    pub(crate) fn hoisted_for_level(&self, l: u32) -> &HoistedKey {
        &self.hoisted[l as usize - 1]
    }
}

impl SeededPublicKey {
    /// Encrypts zero under `sk` with a mask from a fresh public seed and TUniform
    /// noise from `rng` (KEY-1): the key the server re-randomises with (PRIV-1).
    pub fn generate(ctx: &Context, sk: &SecretKey, rng: &mut Csprng) -> Self {
        let seed = rng.seed();
        let a = expand_mask(seed, ctx.n(), ctx.q());
        let zero = vec![0u64; ctx.n() * ctx.limbs()];
        let ct = ctx.encrypt_with_mask(sk, a, &zero, rng);
        Self { seed, b: ct.b }
    }

    /// The server's working form: mask re-derived from the seed, both parts
    /// transformed once into the NTT domain with 1/N folded in.
    pub fn expand(&self, ctx: &Context) -> PublicKey {
        let mut a_ntt = expand_mask(self.seed, ctx.n(), ctx.q());
        let mut b_ntt = self.b.clone();
        for v in [&mut a_ntt, &mut b_ntt] {
            ctx.ntt_q.forward(v);
            ctx.ntt_q.normalize(v);
        }
        PublicKey { a_ntt, b_ntt }
    }
}

impl std::fmt::Debug for GaloisKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GaloisKey(g = {}, {} rows)", self.g, self.a_q.len())
    }
}

impl std::fmt::Debug for SeededKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeededKeyRow(N = {})", self.b_p.len())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} residues)", self.a_ntt.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterSet;

    /// Key `seeded` expanded with τ_h applied to every row in the
    /// coefficient domain, before the transforms: what a hoisted key's rows
    /// are by definition (proofs/packing.md, Lemma 8).
    fn twisted_in_coefficients(ctx: &Context, seeded: &SeededGaloisKey, h: usize) -> GaloisKey {
        let (q, p, n) = (ctx.q(), ctx.params().p(), ctx.n());
        let twist_q = |v: Vec<u64>| {
            let mut out = vec![0; v.len()];
            for ((o, c), &m) in out
                .chunks_exact_mut(n)
                .zip(v.chunks_exact(n))
                .zip(q.limbs())
            {
                crate::math::poly::automorphism(m, o, c, h);
            }
            ctx.ntt_q.forward(&mut out);
            ctx.ntt_q.normalize(&mut out);
            out
        };
        let twist_p = |v: Vec<u64>| {
            let mut out = vec![0; n];
            crate::math::poly::automorphism(p, &mut out, &v, h);
            ctx.ntt_p.forward(&mut out);
            ctx.ntt_p.normalize(&mut out);
            out
        };
        let narrow = ctx.ntt_p.narrow().is_some();
        let mut key = GaloisKey {
            g: seeded.g,
            a_q: vec![],
            b_q: vec![],
            a_p: PRows::new(narrow),
            b_p: PRows::new(narrow),
        };
        for row in &seeded.rows {
            let (a_q, a_p) = expand_key_masks(row.seed, n, q, p);
            key.a_q.push(twist_q(a_q));
            key.a_p.push(twist_p(a_p));
            key.b_q.push(twist_q(row.b_q.clone()));
            key.b_p.push(twist_p(row.b_p.clone()));
        }
        key
    }

    fn rows64(rows: &PRows) -> Vec<Vec<u64>> {
        let mut buf = Vec::new();
        (0..match rows {
            PRows::Narrow(r) => r.len(),
            PRows::Wide(r) => r.len(),
        })
            .map(|j| rows.row64(j, &mut buf).to_vec())
            .collect()
    }

    // PACK-7: a hoisted key's rows, permuted in each plan's evaluation
    // domain, are word for word the key's rows twisted by τ_g⁻¹ in the
    // coefficient domain and transformed, for every shared level, on
    // one-limb sets (P in 32-bit words) and on s16 (two limbs).
    #[test]
    fn hoisted_rows_are_the_twisted_rows_transformed() {
        for set in ["b8", "wide", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let mut rng = Csprng::from_seed([5; 16]);
            let sk = SecretKey::generate(&ctx, &mut rng);
            let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
            let keys = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
            let two_n = 2 * ctx.n();
            for l in 1..=ctx.params().shared_pack_levels() {
                let hoisted = keys.hoisted_for_level(l);
                let g = (1usize << l) + 1;
                assert_eq!(hoisted.g(), g);
                let h = (1..two_n).find(|h| h * g % two_n == 1).unwrap();
                let reference = twisted_in_coefficients(&ctx, &seeded[l as usize - 1], h);
                let got = &hoisted.key;
                assert!(
                    got.a_q == reference.a_q && got.b_q == reference.b_q,
                    "{set}, level {l}: mod q"
                );
                assert_eq!(
                    rows64(&got.a_p),
                    rows64(&reference.a_p),
                    "{set}, level {l}: masks mod P"
                );
                assert_eq!(
                    rows64(&got.b_p),
                    rows64(&reference.b_p),
                    "{set}, level {l}: bodies mod P"
                );
                assert!(
                    got.a_q != keys.key_for_level(l).a_q,
                    "{set}, level {l}: not twisted"
                );
            }
        }
    }
}
