//! The negacyclic transform modulo the Goldilocks prime q = 2^64 − 2^32 + 1
//! with AVX-512 kernels and their 4-lane AVX2 copy, picked at run time
//! (SIMD-1): the b-sets' ciphertext modulus. Both run the same tree in the
//! same evaluation order and give identical outputs.
//!
//! A Cooley–Tukey tree of radix-2 splits `X^2t − r → (X^t − w)(X^t + w)`
//! with w² = r. Three facts make it cheaper than a generic 64-bit
//! transform:
//! - 2 has order 192 mod q (2^96 ≡ −1), so every root of unity of order
//!   dividing 64 is ±2^s with s < 96: a split whose w has order ≤ 64
//!   multiplies by shifts and the Solinas folding (2^64 ≡ 2^32 − 1) instead
//!   of a 64×64-bit product. Of each split's two square roots the tree
//!   takes the positive power of two, which only reorders the evaluations.
//!   In the negacyclic tree only the first five splits qualify (w of order
//!   4…64); a cyclic tree `X^128 − 1` has six such splits of its seven.
//! - So from N = [`TWIST_MIN`] on the negacyclic splits stop at blocks of
//!   [`BLOCK`] = 128 values, block j a residue modulo X^128 − ζ_j, and a
//!   twist turns each into a cyclic residue: a(X) mod X^128 − ζ_j evaluated
//!   at X = ψ_j·Y, with ψ_j^128 = ζ_j, is a residue modulo ζ_j·(Y^128 − 1),
//!   i.e. value i is multiplied by ψ_j^i (one general product per value).
//!   The cyclic 128-point transform that follows multiplies by shifts in
//!   its first six splits (the first has w = 1, no product at all) and by
//!   general values only in the last. At N = 4096 that is 3 general
//!   products per pair of values (the twist counts two) instead of 7; at
//!   N = 8192 the sixth negacyclic split is general too (4 instead of 8).
//!   Below [`TWIST_MIN`] the twist does not pay, and the negacyclic tree
//!   runs to the end.
//! - The last three splits act inside blocks of eight: an 8×8 transpose of
//!   each group of 64 values puts the blocks in lanes, so they run as
//!   vertical butterflies with per-lane twiddles (per-lane shift counts in
//!   the cyclic tree), and the output is left transposed (the evaluation
//!   order is private, see [`super::NttPlan`]). In the cyclic tree the
//!   twist shares a pass with the split at t = 64 (w = 1), and the splits
//!   at t = 32, 16, 8 run as passes over the block like the negacyclic
//!   ones: one branch-free loop per pass beats keeping a group in
//!   registers, where each pair would pick its twiddle's kind by a branch.
//!
//! A product by 2^s takes the cheapest reduction for its range of s (below
//! 32 no word above 2^96, from 64 no word below 2^64), and each block's
//! loop is specialised to its twiddle's kind. The inverse mirrors the
//! forward transform: Gentleman–Sande butterflies with 1/w (1/2^s =
//! −2^(96−s)), the untwist by ψ_j^−i, without the factor 1/N.

use super::{Modulus, SOLINAS};

/// 2^64 mod q.
const EPS: u64 = 0xffff_ffff;

/// The cyclic blocks' length: the first six of their seven splits multiply
/// by shifts.
const BLOCK: usize = 128;

/// The smallest N that twists its blocks into cyclic ones. Per pair of
/// values the twist costs two general products and saves one per
/// negacyclic split beyond the fifth that it replaces by a shift, which
/// counts a gain from N = 512 (three general products instead of four);
/// measured (benches/README.md), the extra pass and the per-lane shifts of
/// the tail leave 512 even or worse, 1024 a gain forward and a loss
/// inverse, and a clear gain from 2048.
const TWIST_MIN: usize = 2048;

/// One split's multiplier.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Twiddle {
    /// 2^s, s < 96 (s = 0: no product).
    Shift(u32),
    /// −2^s, s < 96.
    NegShift(u32),
    /// Any other value.
    General(u64),
}

/// The cyclic part of the tree, for N ≥ [`TWIST_MIN`].
struct Twisted {
    /// ψ_j^i for value i of block j (N values), ψ_j^128 the block's root.
    twist: Vec<u64>,
    /// ψ_j^−i, same layout.
    untwist: Vec<u64>,
    /// Forward multipliers of the cyclic splits with t = 32, 16, 8 (the one
    /// at t = 64 has w = 1), the same in every block: one stage per t, one
    /// entry per sub-block.
    fwd: Vec<Vec<Twiddle>>,
    /// Their inverses, same layout.
    inv: Vec<Vec<Twiddle>>,
    /// The last three splits per half block (two groups of 64) in the
    /// layout of [`GoldilocksNtt::fwd_tail`]: t = 4 and t = 2 as shift
    /// counts s (w = 2^s), t = 1 as values.
    fwd_tail: Vec<u64>,
    /// Their inverses: t = 4 and t = 2 as counts u with 1/w = −2^u (u = 0
    /// for w = 1), t = 1 as values.
    inv_tail: Vec<u64>,
}

/// The transform of one power-of-two length N ≥ 64 modulo [`SOLINAS`].
pub(super) struct GoldilocksNtt {
    n: usize,
    /// Forward multipliers w of the negacyclic splits, one stage per t from
    /// N/2 down to 8 (to [`BLOCK`] when twisted), one entry per block.
    fwd: Vec<Vec<Twiddle>>,
    /// The inverse multipliers 1/w, same layout.
    inv: Vec<Vec<Twiddle>>,
    /// The cyclic part from N = [`TWIST_MIN`] on (boxed: `NttPlan` holds
    /// the plan in an enum with smaller variants).
    twisted: Option<Box<Twisted>>,
    /// Without the twist, the last three splits' w per group of 64 values:
    /// 7 lane vectors (t = 4; t = 2 for each half; t = 1 for each quarter),
    /// lane l for block l of the group. Empty when twisted.
    fwd_tail: Vec<u64>,
    /// Their inverses, same layout.
    inv_tail: Vec<u64>,
}

/// The roots of unity the tree is built from: ψ of order 2N, every root a
/// power ψ^e named by its exponent e mod 2N.
struct Roots {
    m: Modulus,
    psi: u64,
    n: u64,
    /// 2^s for s < 96.
    pow2: Vec<u64>,
}

impl Roots {
    fn new(n: usize) -> Option<Self> {
        let m = Modulus::new(SOLINAS)?;
        // 7 generates the multiplicative group, so ψ has order exactly 2N.
        let psi = m.pow(7, (SOLINAS - 1) / (2 * n as u64));
        let pow2 = (0..96).map(|s| m.pow(2, s)).collect();
        Some(Self {
            m,
            psi,
            n: n as u64,
            pow2,
        })
    }

    /// ψ^e.
    fn root(&self, e: u64) -> u64 {
        self.m.pow(self.psi, e % (2 * self.n))
    }

    /// ψ^−e.
    fn root_inv(&self, e: u64) -> u64 {
        self.root(2 * self.n - e % (2 * self.n))
    }

    fn classify(&self, w: u64) -> Twiddle {
        if let Some(s) = self.pow2.iter().position(|&x| x == w) {
            Twiddle::Shift(s as u32)
        } else if let Some(s) = self.pow2.iter().position(|&x| x == self.m.neg(w)) {
            Twiddle::NegShift(s as u32)
        } else {
            Twiddle::General(w)
        }
    }

    /// The splits of blocks `X^2t − ψ^e` (e from `roots`) for t from
    /// `t_from` down to `t_to`: each block into X^t − ψ^h and
    /// X^t + ψ^h = X^t − ψ^(h+N) with 2h ≡ e, taking of the two h the one
    /// whose ψ^h is a positive power of two if either is. Returns every
    /// stage's h per block and the roots of the blocks left.
    fn splits(&self, mut roots: Vec<u64>, t_from: usize, t_to: usize) -> (Vec<Vec<u64>>, Vec<u64>) {
        let two_n = 2 * self.n;
        let mut stages = Vec::new();
        let mut t = t_from;
        while t >= t_to {
            let hs: Vec<u64> = roots
                .iter()
                .map(|&e| {
                    debug_assert!(e % 2 == 0);
                    let h = e / 2;
                    if matches!(self.classify(self.root(h)), Twiddle::NegShift(_)) {
                        (h + self.n) % two_n
                    } else {
                        h
                    }
                })
                .collect();
            roots = hs.iter().flat_map(|&h| [h, (h + self.n) % two_n]).collect();
            stages.push(hs);
            t /= 2;
        }
        (stages, roots)
    }

    /// The stages' multipliers ψ^h, or their inverses.
    fn twiddles(&self, stages: &[Vec<u64>], inverse: bool) -> Vec<Vec<Twiddle>> {
        let w = |h: u64| {
            self.classify(if inverse {
                self.root_inv(h)
            } else {
                self.root(h)
            })
        };
        stages
            .iter()
            .map(|s| s.iter().map(|&h| w(h)).collect())
            .collect()
    }
}

/// The last three stages (t = 4, 2, 1; entries per block of 8 values: 1,
/// 2, 4) as lane vectors per group of 64 values: 7 vectors of 8, lane l for
/// block l of the group.
fn tail_lanes(stages: &[Vec<u64>], groups: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(groups * 56);
    for g in 0..groups {
        // (stage, blocks of that stage per size-8 block)
        for (stage, per) in [(0, 1), (1, 2), (2, 4)] {
            for k in 0..per {
                out.extend((0..8).map(|l| stages[stage][per * (8 * g + l) + k]));
            }
        }
    }
    out
}

impl GoldilocksNtt {
    /// `None` unless `n` is a power of two in 64..=2^31.
    pub(super) fn new(n: usize) -> Option<Self> {
        if !n.is_power_of_two() || !(64..=1 << 31).contains(&n) {
            return None;
        }
        let r = Roots::new(n)?;
        let twist = n >= TWIST_MIN;
        // Each block is a residue mod X^2t − ψ^e; start from X^N + 1 = X^N − ψ^N.
        let (neg, roots) = r.splits(vec![n as u64], n / 2, if twist { BLOCK } else { 8 });
        let (fwd, inv) = (r.twiddles(&neg, false), r.twiddles(&neg, true));
        if !twist {
            let (tail, _) = r.splits(roots, 4, 1);
            let values = |inverse: bool| -> Vec<Vec<u64>> {
                let w = |h: u64| if inverse { r.root_inv(h) } else { r.root(h) };
                tail.iter()
                    .map(|s| s.iter().map(|&h| w(h)).collect())
                    .collect()
            };
            return Some(Self {
                n,
                fwd,
                inv,
                twisted: None,
                fwd_tail: tail_lanes(&values(false), n / 64),
                inv_tail: tail_lanes(&values(true), n / 64),
            });
        }
        // Block j is a residue mod X^128 − ψ^e with e ≡ 128 (mod 256):
        // ψ_j = ψ^(e/128).
        let (mut twist, mut untwist) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &e in &roots {
            debug_assert_eq!(e % BLOCK as u64, 0);
            let step = e / BLOCK as u64;
            twist.extend((0..BLOCK as u64).map(|i| r.root(step * i)));
            untwist.extend((0..BLOCK as u64).map(|i| r.root_inv(step * i)));
        }
        // The cyclic tree of X^128 − 1 = X^128 − ψ^0.
        let (cyclic, roots) = r.splits(vec![0], BLOCK / 2, 8);
        debug_assert_eq!(cyclic[0], [0], "the first cyclic split has w = 1");
        let (tail, _) = r.splits(roots, 4, 1);
        let tail_values = |inverse: bool| -> Vec<Vec<u64>> {
            let mut stages: Vec<Vec<u64>> = tail[..2]
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|&h| {
                            // w has order ≤ 64: a shift, and 1/w = 2^−s = −2^(96−s).
                            let w = if inverse { r.root_inv(h) } else { r.root(h) };
                            match r.classify(w) {
                                Twiddle::Shift(0) => 0,
                                Twiddle::Shift(s) if !inverse => s as u64,
                                Twiddle::NegShift(u) if inverse => u as u64,
                                other => unreachable!("cyclic tail twiddle {other:?}"),
                            }
                        })
                        .collect()
                })
                .collect();
            let w = |h: u64| if inverse { r.root_inv(h) } else { r.root(h) };
            stages.push(tail[2].iter().map(|&h| w(h)).collect());
            stages
        };
        Some(Self {
            n,
            fwd,
            inv,
            twisted: Some(Box::new(Twisted {
                twist,
                untwist,
                fwd: r.twiddles(&cyclic[1..], false),
                inv: r.twiddles(&cyclic[1..], true),
                fwd_tail: tail_lanes(&tail_values(false), BLOCK / 64),
                inv_tail: tail_lanes(&tail_values(true), BLOCK / 64),
            })),
            fwd_tail: Vec::new(),
            inv_tail: Vec::new(),
        })
    }

    /// The transform length N.
    pub(super) fn n(&self) -> usize {
        self.n
    }

    /// Whether this CPU runs the kernels, AVX-512 or AVX2 (else the caller
    /// keeps tfhe-ntt).
    pub(super) fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                || std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Forward transform in place; values in `[0, q)` in and out. Callers
    /// check [`Self::supported`] first.
    pub(super) fn forward(&self, buf: &mut [u64]) {
        assert_eq!(buf.len(), self.n, "buffer length is the plan's N");
        // SIMD-1: AVX-512 where present, else AVX2 (same outputs).
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected on this CPU; the length
                // is checked above.
                return unsafe { avx512::forward(self, buf) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { avx2::forward(self, buf) };
            }
        }
        unreachable!("GoldilocksNtt used without AVX-512 or AVX2")
    }

    /// Inverse transform without the 1/N factor, in place.
    pub(super) fn backward_unnormalized(&self, buf: &mut [u64]) {
        assert_eq!(buf.len(), self.n, "buffer length is the plan's N");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: as in `forward`.
                return unsafe { avx512::backward(self, buf) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as in `forward`.
                return unsafe { avx2::backward(self, buf) };
            }
        }
        unreachable!("GoldilocksNtt used without AVX-512 or AVX2")
    }

    /// The same transform from scalar field operations: the kernels'
    /// reference in tests.
    #[cfg(test)]
    fn forward_scalar(&self, buf: &mut [u64]) {
        let m = Modulus::new(SOLINAS).unwrap();
        let value = |w: Twiddle| match w {
            Twiddle::Shift(s) => m.pow(2, s as u64),
            Twiddle::NegShift(s) => m.neg(m.pow(2, s as u64)),
            Twiddle::General(v) => v,
        };
        let butterflies = |buf: &mut [u64], t: usize, ws: &mut dyn Iterator<Item = u64>| {
            for (block, w) in buf.chunks_exact_mut(2 * t).zip(ws) {
                let (lo, hi) = block.split_at_mut(t);
                for (a, b) in lo.iter_mut().zip(hi) {
                    let v = m.mul(*b, w);
                    (*a, *b) = (m.add(*a, v), m.sub(*a, v));
                }
            }
        };
        let mut t = self.n / 2;
        for stage in &self.fwd {
            butterflies(buf, t, &mut stage.iter().map(|&w| value(w)));
            t /= 2;
        }
        // The tail's lane vectors (the first three of each group as shift
        // counts when twisted) and the groups they repeat over.
        let (tail, groups, shifts) = match &self.twisted {
            Some(tw) => {
                let blocks = buf
                    .chunks_exact_mut(BLOCK)
                    .zip(tw.twist.chunks_exact(BLOCK));
                for (block, twist) in blocks {
                    for (x, &w) in block.iter_mut().zip(twist) {
                        *x = m.mul(*x, w);
                    }
                    butterflies(block, BLOCK / 2, &mut std::iter::once(1));
                    let mut t = BLOCK / 4;
                    for stage in &tw.fwd {
                        butterflies(block, t, &mut stage.iter().map(|&w| value(w)));
                        t /= 2;
                    }
                }
                (&tw.fwd_tail, BLOCK / 64, 3)
            }
            None => (&self.fwd_tail, self.n / 64, 0),
        };
        let lane = |k: usize, i: usize| {
            if k < shifts {
                m.pow(2, tail[i])
            } else {
                tail[i]
            }
        };
        for (stage, per, first) in [(4, 1, 0), (2, 2, 1), (1, 4, 3)] {
            let mut ws = (0..self.n / 8).flat_map(|b| {
                let (g, l) = (b / 8 % groups, b % 8);
                (0..per).map(move |k| lane(first + k, g * 56 + (first + k) * 8 + l))
            });
            butterflies(buf, stage, &mut ws);
        }
        for group in buf.chunks_exact_mut(64) {
            transpose8(group);
        }
    }
}

/// Transposes a row-major 8×8 block.
#[cfg(test)]
fn transpose8(group: &mut [u64]) {
    for r in 0..8 {
        for c in r + 1..8 {
            group.swap(8 * r + c, 8 * c + r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{GoldilocksNtt, Twiddle, Twisted, BLOCK, EPS, SOLINAS};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn splat(x: u64) -> __m512i {
        _mm512_set1_epi64(x as i64)
    }

    /// `a + b mod q` for a, b < q.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn add(a: __m512i, b: __m512i) -> __m512i {
        let neg_b = _mm512_sub_epi64(splat(SOLINAS), b);
        let wraps = _mm512_cmpge_epu64_mask(a, neg_b);
        _mm512_mask_sub_epi64(_mm512_add_epi64(a, b), wraps, a, neg_b)
    }

    /// `a − b mod q` for a, b < q.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn sub(a: __m512i, b: __m512i) -> __m512i {
        let borrow = _mm512_cmplt_epu64_mask(a, b);
        let d = _mm512_sub_epi64(a, b);
        _mm512_mask_add_epi64(d, borrow, d, splat(SOLINAS))
    }

    /// `lo + mid·2^64 + top·2^96 mod q`, reduced, for mid < 2^32 in its low
    /// half (the high half is ignored) and top < q: 2^64 ≡ 2^32 − 1 and
    /// 2^96 ≡ −1.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn fold(lo: __m512i, mid: __m512i, top: __m512i) -> __m512i {
        // mid_lo·(2^32 − 1) < 2^64.
        let mid_lo = _mm512_and_si512(mid, splat(EPS));
        let mid_term = _mm512_sub_epi64(_mm512_slli_epi64::<32>(mid), mid_lo);
        // lo − top: on a borrow the wrapped value is ≥ 2^64 − q + 1 > EPS,
        // and adding q is subtracting 2^64 − q = EPS.
        let borrow = _mm512_cmplt_epu64_mask(lo, top);
        let r = _mm512_sub_epi64(lo, top);
        let r = _mm512_mask_sub_epi64(r, borrow, r, splat(EPS));
        // r + mid_term: on a carry the true sum is ≥ 2^64, subtract q.
        let s = _mm512_add_epi64(r, mid_term);
        let carry = _mm512_cmplt_epu64_mask(s, mid_term);
        let s = _mm512_mask_add_epi64(s, carry, s, splat(EPS));
        let big = _mm512_cmpge_epu64_mask(s, splat(SOLINAS));
        _mm512_mask_sub_epi64(s, big, s, splat(SOLINAS))
    }

    /// `x·w mod q` for x < 2^64, w < q, with `w_hi` = w >> 32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn mul(x: __m512i, w: __m512i, w_hi: __m512i) -> __m512i {
        let x_hi = _mm512_srli_epi64::<32>(x);
        let ll = _mm512_mul_epu32(x, w);
        let lh = _mm512_mul_epu32(x, w_hi);
        let hl = _mm512_mul_epu32(x_hi, w);
        let hh = _mm512_mul_epu32(x_hi, w_hi);
        // The 128-bit product as lo + hi·2^64, without carries lost.
        let mid = _mm512_add_epi64(lh, _mm512_srli_epi64::<32>(ll));
        let mid2 = _mm512_add_epi64(hl, _mm512_and_si512(mid, splat(EPS)));
        let hi = _mm512_add_epi64(
            _mm512_add_epi64(hh, _mm512_srli_epi64::<32>(mid)),
            _mm512_srli_epi64::<32>(mid2),
        );
        let lo = _mm512_or_si512(
            _mm512_slli_epi64::<32>(mid2),
            _mm512_and_si512(ll, splat(EPS)),
        );
        // hi·2^64 = hi_lo·2^64 + hi_hi·2^96; hi_hi < 2^32 < q.
        fold(lo, hi, _mm512_srli_epi64::<32>(hi))
    }

    /// `x·2^s mod q` for x < q, s < 32: with x·2^s = lo + mid·2^64 and
    /// mid < 2^32, lo + mid·(2^32 − 1), the second term below q, and a
    /// carry out of 2^64 is worth 2^32 − 1. Each range of s has its own
    /// reduction: the splat-twiddle splits spend most of their time here.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_pow2_low(x: __m512i, s: u32) -> __m512i {
        let lo = _mm512_sll_epi64(x, count(s));
        let mid = _mm512_srl_epi64(x, count(64 - s));
        let mid_term = _mm512_sub_epi64(_mm512_slli_epi64::<32>(mid), mid);
        let sum = _mm512_add_epi64(lo, mid_term);
        let carry = _mm512_cmplt_epu64_mask(sum, mid_term);
        let sum = _mm512_mask_add_epi64(sum, carry, sum, splat(EPS));
        let big = _mm512_cmpge_epu64_mask(sum, splat(SOLINAS));
        _mm512_mask_sub_epi64(sum, big, sum, splat(SOLINAS))
    }

    /// `x·2^s mod q` for x < q, 32 ≤ s < 64: lo + mid·2^64 + top·2^96
    /// with top = mid >> 32, folded.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_pow2_mid(x: __m512i, s: u32) -> __m512i {
        let mid = _mm512_srl_epi64(x, count(64 - s));
        fold(
            _mm512_sll_epi64(x, count(s)),
            mid,
            _mm512_srli_epi64::<32>(mid),
        )
    }

    /// `x·2^s mod q` for x < q, 64 ≤ s < 96: lo = 0, and y = x << (s − 32)
    /// is mid·2^32 (mod 2^64; the bits above are top's), so the value is
    /// y − mid − top with y − mid = mid·(2^32 − 1) < q and
    /// top = x >> (96 − s) < q.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_pow2_high(x: __m512i, s: u32) -> __m512i {
        let y = _mm512_sll_epi64(x, count(s - 32));
        let mid = _mm512_srli_epi64::<32>(y);
        let top = _mm512_srl_epi64(x, count(96 - s));
        sub(_mm512_sub_epi64(y, mid), top)
    }

    /// A shift count for `_mm512_sll_epi64` and friends.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn count(c: u32) -> __m128i {
        _mm_cvtsi64_si128(c as i64)
    }

    /// `x·2^s mod q` per lane for x < q, s ≤ 96 (96 negates): x·2^s =
    /// lo + mid·2^64 + top·2^96 folded, with per-lane shift counts (counts
    /// of 64 or more, and negative ones, give zero).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_pow2v(x: __m512i, s: __m512i) -> __m512i {
        let lo = _mm512_sllv_epi64(x, s);
        let mid = _mm512_or_si512(
            _mm512_srlv_epi64(x, _mm512_sub_epi64(splat(64), s)),
            _mm512_sllv_epi64(x, _mm512_sub_epi64(s, splat(64))),
        );
        let top = _mm512_srlv_epi64(x, _mm512_sub_epi64(splat(96), s));
        fold(lo, mid, top)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const u64) -> __m512i {
        // SAFETY (caller): 8 readable values at p.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut u64, v: __m512i) {
        // SAFETY (caller): 8 writable values at p.
        unsafe { _mm512_storeu_si512(p.cast(), v) }
    }

    /// A general twiddle's (w, w >> 32) splatted, hidden from the
    /// optimiser: when LLVM sees that a splat's high halves are zero it
    /// drops the masks `_mm512_mul_epu32` stands for and lowers a full
    /// 64-bit product (six multiplies instead of four per `mul`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn splat_split(w: Twiddle) -> (__m512i, __m512i) {
        let v = match w {
            Twiddle::General(v) => v,
            _ => 0,
        };
        std::hint::black_box((splat(v), splat(v >> 32)))
    }

    /// A block loop's multiplier kind, as a const parameter so that each
    /// kind gets its own loop without branches (LLVM does not unswitch
    /// them): w = 1, 2^s by the range of s, or a general value.
    const ONE: u8 = 0;
    const LOW: u8 = 1;
    const MID: u8 = 2;
    const HIGH: u8 = 3;
    const GENERAL: u8 = 4;

    /// `x·w` for a twiddle of kind `KIND` (2^s, or `split` for a general
    /// one).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn times_kind<const KIND: u8>(x: __m512i, s: u32, split: (__m512i, __m512i)) -> __m512i {
        match KIND {
            ONE => x,
            LOW => mul_pow2_low(x, s),
            MID => mul_pow2_mid(x, s),
            HIGH => mul_pow2_high(x, s),
            _ => mul(x, split.0, split.1),
        }
    }

    /// Calls `$f::<KIND, NEGATE>($lo, $hi, s, split)` for twiddle `$w`.
    macro_rules! dispatch {
        ($f:ident, $lo:expr, $hi:expr, $w:expr) => {{
            let none = (_mm512_setzero_si512(), _mm512_setzero_si512());
            match $w {
                Twiddle::Shift(0) => $f::<ONE, false>($lo, $hi, 0, none),
                Twiddle::Shift(s @ 0..32) => $f::<LOW, false>($lo, $hi, s, none),
                Twiddle::Shift(s @ 32..64) => $f::<MID, false>($lo, $hi, s, none),
                Twiddle::Shift(s) => $f::<HIGH, false>($lo, $hi, s, none),
                Twiddle::NegShift(s @ 0..32) => $f::<LOW, true>($lo, $hi, s, none),
                Twiddle::NegShift(s @ 32..64) => $f::<MID, true>($lo, $hi, s, none),
                Twiddle::NegShift(s) => $f::<HIGH, true>($lo, $hi, s, none),
                Twiddle::General(_) => $f::<GENERAL, false>($lo, $hi, 0, splat_split($w)),
            }
        }};
    }

    /// One block's Cooley–Tukey butterflies: (a, b) → (a + wb, a − wb).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_block(lo: &mut [u64], hi: &mut [u64], w: Twiddle) {
        dispatch!(forward_loop, lo, hi, w)
    }

    /// [`forward_block`] for one kind of twiddle; `NEGATE` for w = −2^s.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_loop<const KIND: u8, const NEGATE: bool>(
        lo: &mut [u64],
        hi: &mut [u64],
        s: u32,
        split: (__m512i, __m512i),
    ) {
        for (a, b) in lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 values.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let v = times_kind::<KIND>(y, s, split);
            let (s, d) = (add(x, v), sub(x, v));
            let (s, d) = if NEGATE { (d, s) } else { (s, d) };
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), s);
                store(b.as_mut_ptr(), d);
            }
        }
    }

    /// One block's Gentleman–Sande butterflies: (a, b) → (a + b, (a − b)/w).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_block(lo: &mut [u64], hi: &mut [u64], w_inv: Twiddle) {
        dispatch!(backward_loop, lo, hi, w_inv)
    }

    /// [`backward_block`] for one kind of twiddle; `NEGATE` for
    /// 1/w = −2^s.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_loop<const KIND: u8, const NEGATE: bool>(
        lo: &mut [u64],
        hi: &mut [u64],
        s: u32,
        split: (__m512i, __m512i),
    ) {
        for (a, b) in lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 values.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let d = if NEGATE { sub(y, x) } else { sub(x, y) };
            let (s, d) = (add(x, y), times_kind::<KIND>(d, s, split));
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), s);
                store(b.as_mut_ptr(), d);
            }
        }
    }

    /// Rows (i, i + d) → lanes with bit d clear from `a`'s, set from `b`'s:
    /// the swap of their off-diagonal d×d blocks.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn swap_blocks(v: &mut [__m512i; 8], i: usize, d: usize) {
        let (lo, hi) = match d {
            4 => (
                _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0),
                _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4),
            ),
            2 => (
                _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0),
                _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2),
            ),
            _ => (
                _mm512_set_epi64(14, 6, 12, 4, 10, 2, 8, 0),
                _mm512_set_epi64(15, 7, 13, 5, 11, 3, 9, 1),
            ),
        };
        let (a, b) = (v[i], v[i + d]);
        v[i] = _mm512_permutex2var_epi64(a, lo, b);
        v[i + d] = _mm512_permutex2var_epi64(a, hi, b);
    }

    /// Transposes the 8×8 block held in `v` (row r in v[r]): swapping the
    /// off-diagonal blocks at d = 4, 2, 1. Straight-line so that `v` stays
    /// in registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(v: &mut [__m512i; 8]) {
        swap_blocks(v, 0, 4);
        swap_blocks(v, 1, 4);
        swap_blocks(v, 2, 4);
        swap_blocks(v, 3, 4);
        swap_blocks(v, 0, 2);
        swap_blocks(v, 1, 2);
        swap_blocks(v, 4, 2);
        swap_blocks(v, 5, 2);
        swap_blocks(v, 0, 1);
        swap_blocks(v, 2, 1);
        swap_blocks(v, 4, 1);
        swap_blocks(v, 6, 1);
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_pair(v: &mut [__m512i; 8], i: usize, j: usize, w: __m512i) {
        let p = mul(v[j], w, _mm512_srli_epi64::<32>(w));
        (v[i], v[j]) = (add(v[i], p), sub(v[i], p));
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_pair(v: &mut [__m512i; 8], i: usize, j: usize, w: __m512i) {
        let (a, b) = (v[i], v[j]);
        (v[i], v[j]) = (add(a, b), mul(sub(a, b), w, _mm512_srli_epi64::<32>(w)));
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_shift_pair(v: &mut [__m512i; 8], i: usize, j: usize, s: __m512i) {
        let p = mul_pow2v(v[j], s);
        (v[i], v[j]) = (add(v[i], p), sub(v[i], p));
    }

    /// The inverse of [`forward_shift_pair`] for per-lane `u` with 1/w = −2^u
    /// (u = 0: w = 1): (a, b) → (a + b, (b − a)·2^u), or (a − b) where u = 0.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_shift_pair(v: &mut [__m512i; 8], i: usize, j: usize, u: __m512i) {
        let (a, b) = (v[i], v[j]);
        let negate = _mm512_test_epi64_mask(u, u);
        let d = _mm512_mask_blend_epi64(negate, sub(a, b), sub(b, a));
        (v[i], v[j]) = (add(a, b), mul_pow2v(d, u));
    }

    /// A split of the tail's t = 4 or t = 2: by per-lane shift counts in
    /// the cyclic tree (`SHIFTS`), else by general per-lane twiddles.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_upper_pair<const SHIFTS: bool>(
        v: &mut [__m512i; 8],
        i: usize,
        j: usize,
        w: __m512i,
    ) {
        if SHIFTS {
            forward_shift_pair(v, i, j, w)
        } else {
            forward_pair(v, i, j, w)
        }
    }

    /// [`forward_upper_pair`] undone.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_upper_pair<const SHIFTS: bool>(
        v: &mut [__m512i; 8],
        i: usize,
        j: usize,
        w: __m512i,
    ) {
        if SHIFTS {
            backward_shift_pair(v, i, j, w)
        } else {
            backward_pair(v, i, j, w)
        }
    }

    /// The last three forward splits on a transposed group (v[c] holds
    /// value c of the group's 8 blocks): t = 4 with twiddle vector 0, t = 2
    /// with 1 (low half) and 2 (high half), t = 1 with 3..7 by quarter.
    /// With `SHIFTS` (the cyclic tree) t = 4 and t = 2 multiply by per-lane
    /// shifts, vectors 0..3 holding the counts.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_tail<const SHIFTS: bool>(v: &mut [__m512i; 8], w: &[__m512i; 7]) {
        forward_upper_pair::<SHIFTS>(v, 0, 4, w[0]);
        forward_upper_pair::<SHIFTS>(v, 1, 5, w[0]);
        forward_upper_pair::<SHIFTS>(v, 2, 6, w[0]);
        forward_upper_pair::<SHIFTS>(v, 3, 7, w[0]);
        forward_upper_pair::<SHIFTS>(v, 0, 2, w[1]);
        forward_upper_pair::<SHIFTS>(v, 1, 3, w[1]);
        forward_upper_pair::<SHIFTS>(v, 4, 6, w[2]);
        forward_upper_pair::<SHIFTS>(v, 5, 7, w[2]);
        forward_pair(v, 0, 1, w[3]);
        forward_pair(v, 2, 3, w[4]);
        forward_pair(v, 4, 5, w[5]);
        forward_pair(v, 6, 7, w[6]);
    }

    /// [`forward_tail`] undone, without the factor 8.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_tail<const SHIFTS: bool>(v: &mut [__m512i; 8], w: &[__m512i; 7]) {
        backward_pair(v, 0, 1, w[3]);
        backward_pair(v, 2, 3, w[4]);
        backward_pair(v, 4, 5, w[5]);
        backward_pair(v, 6, 7, w[6]);
        backward_upper_pair::<SHIFTS>(v, 0, 2, w[1]);
        backward_upper_pair::<SHIFTS>(v, 1, 3, w[1]);
        backward_upper_pair::<SHIFTS>(v, 4, 6, w[2]);
        backward_upper_pair::<SHIFTS>(v, 5, 7, w[2]);
        backward_upper_pair::<SHIFTS>(v, 0, 4, w[0]);
        backward_upper_pair::<SHIFTS>(v, 1, 5, w[0]);
        backward_upper_pair::<SHIFTS>(v, 2, 6, w[0]);
        backward_upper_pair::<SHIFTS>(v, 3, 7, w[0]);
    }

    /// A group's 64 values as 8 rows, and its 7 tail twiddle vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_group(group: &[u64], tw: &[u64]) -> ([__m512i; 8], [__m512i; 7]) {
        assert!(group.len() >= 64 && tw.len() >= 56);
        let (mut v, mut w) = ([_mm512_setzero_si512(); 8], [_mm512_setzero_si512(); 7]);
        // Plain loops: a closure would not inherit the target feature.
        for (r, x) in v.iter_mut().enumerate() {
            // SAFETY: 64 values in the group.
            *x = unsafe { load(group[8 * r..].as_ptr()) };
        }
        for (k, x) in w.iter_mut().enumerate() {
            // SAFETY: 56 twiddles per group.
            *x = unsafe { load(tw[8 * k..].as_ptr()) };
        }
        (v, w)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store_group(group: &mut [u64], v: &[__m512i; 8]) {
        assert!(group.len() >= 64);
        for (r, x) in v.iter().enumerate() {
            // SAFETY: 64 values in the group.
            unsafe { store(group[8 * r..].as_mut_ptr(), *x) };
        }
    }

    /// The splits of `stages`, the first with half-size `t`, halving it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_stages(buf: &mut [u64], stages: &[Vec<Twiddle>], mut t: usize) {
        for stage in stages {
            for (block, &w) in buf.chunks_exact_mut(2 * t).zip(stage) {
                let (lo, hi) = block.split_at_mut(t);
                forward_block(lo, hi, w);
            }
            t /= 2;
        }
    }

    /// The inverse splits of `stages` in reverse order, the first (the last
    /// stage) with half-size `t`, doubling it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_stages(buf: &mut [u64], stages: &[Vec<Twiddle>], mut t: usize) {
        for stage in stages.iter().rev() {
            for (block, &w) in buf.chunks_exact_mut(2 * t).zip(stage) {
                let (lo, hi) = block.split_at_mut(t);
                backward_block(lo, hi, w);
            }
            t *= 2;
        }
    }

    /// One block of [`BLOCK`] values: the twist by `twist`, then the cyclic
    /// transform.
    #[target_feature(enable = "avx512f")]
    fn forward_cyclic(tw: &Twisted, block: &mut [u64], twist: &[u64]) {
        let (lo, hi) = block.split_at_mut(BLOCK / 2);
        let (twist_lo, twist_hi) = twist.split_at(BLOCK / 2);
        let pairs = lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8));
        for ((a, b), (wa, wb)) in pairs.zip(twist_lo.chunks_exact(8).zip(twist_hi.chunks_exact(8)))
        {
            // SAFETY: every chunk holds 8 values.
            let (x, y, wa, wb) = unsafe {
                (
                    load(a.as_ptr()),
                    load(b.as_ptr()),
                    load(wa.as_ptr()),
                    load(wb.as_ptr()),
                )
            };
            let x = mul(x, wa, _mm512_srli_epi64::<32>(wa));
            let y = mul(y, wb, _mm512_srli_epi64::<32>(wb));
            // The split at t = 64 has w = 1.
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), add(x, y));
                store(b.as_mut_ptr(), sub(x, y));
            }
        }
        forward_stages(block, &tw.fwd, BLOCK / 4);
        let groups = block.chunks_exact_mut(64).zip(tw.fwd_tail.chunks_exact(56));
        for (group, tail) in groups {
            let (mut v, w) = load_group(group, tail);
            transpose(&mut v);
            forward_tail::<true>(&mut v, &w);
            store_group(group, &v);
        }
    }

    /// [`forward_cyclic`] undone, without the factor 128.
    #[target_feature(enable = "avx512f")]
    fn backward_cyclic(tw: &Twisted, block: &mut [u64], untwist: &[u64]) {
        let groups = block.chunks_exact_mut(64).zip(tw.inv_tail.chunks_exact(56));
        for (group, tail) in groups {
            let (mut v, w) = load_group(group, tail);
            backward_tail::<true>(&mut v, &w);
            transpose(&mut v);
            store_group(group, &v);
        }
        backward_stages(block, &tw.inv, 8);
        let (lo, hi) = block.split_at_mut(BLOCK / 2);
        let (untwist_lo, untwist_hi) = untwist.split_at(BLOCK / 2);
        let pairs = lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8));
        for ((a, b), (wa, wb)) in
            pairs.zip(untwist_lo.chunks_exact(8).zip(untwist_hi.chunks_exact(8)))
        {
            // SAFETY: every chunk holds 8 values.
            let (x, y, wa, wb) = unsafe {
                (
                    load(a.as_ptr()),
                    load(b.as_ptr()),
                    load(wa.as_ptr()),
                    load(wb.as_ptr()),
                )
            };
            let (s, d) = (add(x, y), sub(x, y));
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), mul(s, wa, _mm512_srli_epi64::<32>(wa)));
                store(b.as_mut_ptr(), mul(d, wb, _mm512_srli_epi64::<32>(wb)));
            }
        }
    }

    /// # Safety
    /// AVX-512F is available; `buf.len() == plan.n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(plan: &GoldilocksNtt, buf: &mut [u64]) {
        forward_stages(buf, &plan.fwd, plan.n / 2);
        if let Some(tw) = &plan.twisted {
            for (block, twist) in buf
                .chunks_exact_mut(BLOCK)
                .zip(tw.twist.chunks_exact(BLOCK))
            {
                forward_cyclic(tw, block, twist);
            }
            return;
        }
        for (group, tail) in buf.chunks_exact_mut(64).zip(plan.fwd_tail.chunks_exact(56)) {
            let (mut v, w) = load_group(group, tail);
            transpose(&mut v);
            forward_tail::<false>(&mut v, &w);
            store_group(group, &v);
        }
    }

    /// # Safety
    /// AVX-512F is available; `buf.len() == plan.n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(plan: &GoldilocksNtt, buf: &mut [u64]) {
        if let Some(tw) = &plan.twisted {
            for (block, untwist) in buf
                .chunks_exact_mut(BLOCK)
                .zip(tw.untwist.chunks_exact(BLOCK))
            {
                backward_cyclic(tw, block, untwist);
            }
        } else {
            for (group, tail) in buf.chunks_exact_mut(64).zip(plan.inv_tail.chunks_exact(56)) {
                let (mut v, w) = load_group(group, tail);
                backward_tail::<false>(&mut v, &w);
                transpose(&mut v);
                store_group(group, &v);
            }
        }
        // The negacyclic stages ended at t = N >> (their number).
        backward_stages(buf, &plan.inv, plan.n >> plan.inv.len());
    }
}

/// The AVX-512 kernels on AVX2 (SIMD-1): the same tree and evaluation
/// order with 4-lane vectors, so both builds give identical outputs (every
/// kernel leaves values in [0, q), and the scalar tree is their common
/// reference). AVX2 has no unsigned 64-bit compare: `x ^ 2^63` (which is
/// also `x + 2^63`) turns it into `_mm256_cmpgt_epi64`, and the masked
/// corrections become an `and` with the all-ones lane mask.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{GoldilocksNtt, Twiddle, Twisted, BLOCK, EPS, SOLINAS};
    use std::arch::x86_64::*;

    const SIGN: u64 = 1 << 63;

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn splat(x: u64) -> __m256i {
        _mm256_set1_epi64x(x as i64)
    }

    /// `x ^ 2^63`: unsigned order becomes signed order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn flip(x: __m256i) -> __m256i {
        _mm256_xor_si256(x, splat(SIGN))
    }

    /// All ones in the lanes where a < b (unsigned).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lt(a: __m256i, b: __m256i) -> __m256i {
        _mm256_cmpgt_epi64(flip(b), flip(a))
    }

    /// `a + b mod q` for a, b < q: a + b ≥ q iff a > q − 1 − b, and then
    /// a + b − q ≡ a + b + EPS (mod 2^64). (Tested as a "greater than"
    /// so that LLVM needs no negated mask: it lowers an `and` with EPS as
    /// a blend, which cannot absorb a negation the way `vpandn` does.)
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn add(a: __m256i, b: __m256i) -> __m256i {
        // (q − 1 − b) ^ 2^63 = ((q − 1) ^ 2^63) − b, with b ≤ q − 1.
        let limit_flipped = _mm256_sub_epi64(splat((SOLINAS - 1) ^ SIGN), b);
        let wraps = _mm256_cmpgt_epi64(flip(a), limit_flipped);
        _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_and_si256(wraps, splat(EPS)))
    }

    /// `a − b mod q` for a, b < q: on a borrow adding q is subtracting EPS.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn sub(a: __m256i, b: __m256i) -> __m256i {
        let borrow = lt(a, b);
        let d = _mm256_sub_epi64(a, b);
        _mm256_sub_epi64(d, _mm256_and_si256(borrow, splat(EPS)))
    }

    /// `s mod q` for any s < 2^64, given as `s ^ 2^63`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn reduce_flipped(s_flipped: __m256i) -> __m256i {
        let big = _mm256_cmpgt_epi64(s_flipped, splat((SOLINAS - 1) ^ SIGN));
        // Flipped back last: a caller's compare flips the result again,
        // and LLVM cancels the two.
        flip(_mm256_add_epi64(
            s_flipped,
            _mm256_and_si256(big, splat(EPS)),
        ))
    }

    /// `(r + t) ^ 2^63` with a carry out of 2^64 folded as + EPS, for
    /// t ≤ (2^32 − 1)^2 (the folded sum does not wrap again), as in the
    /// AVX-512 kernels; flipped, because the carry test needs it so.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn add_folded_flipped(r: __m256i, t: __m256i) -> __m256i {
        // (r + t) ^ 2^63 = r + (t ^ 2^63), below t ^ 2^63 on a carry.
        let t_flipped = flip(t);
        let s_flipped = _mm256_add_epi64(r, t_flipped);
        let carry = _mm256_cmpgt_epi64(t_flipped, s_flipped);
        _mm256_add_epi64(s_flipped, _mm256_and_si256(carry, splat(EPS)))
    }

    /// `lo + mid·2^64 + top·2^96 mod q` as in the AVX-512 `fold`: of `mid`
    /// only the low 32 bits count, top < q; reduced. Also the key
    /// product's reduction (`rlwe::keyswitch`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn fold(lo: __m256i, mid: __m256i, top: __m256i) -> __m256i {
        let mid_lo = _mm256_and_si256(mid, splat(EPS));
        let mid_term = _mm256_sub_epi64(_mm256_slli_epi64::<32>(mid), mid_lo);
        let borrow = lt(lo, top);
        let r = _mm256_sub_epi64(lo, top);
        let r = _mm256_sub_epi64(r, _mm256_and_si256(borrow, splat(EPS)));
        reduce_flipped(add_folded_flipped(r, mid_term))
    }

    /// `x·w mod q` for x < 2^64, w < q, with `w_hi` = w >> 32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn mul(x: __m256i, w: __m256i, w_hi: __m256i) -> __m256i {
        let x_hi = _mm256_srli_epi64::<32>(x);
        let ll = _mm256_mul_epu32(x, w);
        let lh = _mm256_mul_epu32(x, w_hi);
        let hl = _mm256_mul_epu32(x_hi, w);
        let hh = _mm256_mul_epu32(x_hi, w_hi);
        let mid = _mm256_add_epi64(lh, _mm256_srli_epi64::<32>(ll));
        let mid2 = _mm256_add_epi64(hl, _mm256_and_si256(mid, splat(EPS)));
        let hi = _mm256_add_epi64(
            _mm256_add_epi64(hh, _mm256_srli_epi64::<32>(mid)),
            _mm256_srli_epi64::<32>(mid2),
        );
        let lo = _mm256_or_si256(
            _mm256_slli_epi64::<32>(mid2),
            _mm256_and_si256(ll, splat(EPS)),
        );
        fold(lo, hi, _mm256_srli_epi64::<32>(hi))
    }

    /// `x·2^s mod q` for x < q, s < 32 (see the AVX-512 `mul_pow2_low`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_pow2_low(x: __m256i, s: u32) -> __m256i {
        let lo = _mm256_sll_epi64(x, count(s));
        let mid = _mm256_srl_epi64(x, count(64 - s));
        let mid_term = _mm256_sub_epi64(_mm256_slli_epi64::<32>(mid), mid);
        reduce_flipped(add_folded_flipped(lo, mid_term))
    }

    /// `x·2^s mod q` for x < q, 32 ≤ s < 64.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_pow2_mid(x: __m256i, s: u32) -> __m256i {
        let mid = _mm256_srl_epi64(x, count(64 - s));
        fold(
            _mm256_sll_epi64(x, count(s)),
            mid,
            _mm256_srli_epi64::<32>(mid),
        )
    }

    /// `x·2^s mod q` for x < q, 64 ≤ s < 96.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_pow2_high(x: __m256i, s: u32) -> __m256i {
        let y = _mm256_sll_epi64(x, count(s - 32));
        let mid = _mm256_srli_epi64::<32>(y);
        let top = _mm256_srl_epi64(x, count(96 - s));
        sub(_mm256_sub_epi64(y, mid), top)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn count(c: u32) -> __m128i {
        _mm_cvtsi64_si128(c as i64)
    }

    /// `x·2^s mod q` per lane for x < q, s ≤ 96 (AVX2's variable shifts
    /// also give zero for counts of 64 or more and negative ones).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_pow2v(x: __m256i, s: __m256i) -> __m256i {
        let lo = _mm256_sllv_epi64(x, s);
        let mid = _mm256_or_si256(
            _mm256_srlv_epi64(x, _mm256_sub_epi64(splat(64), s)),
            _mm256_sllv_epi64(x, _mm256_sub_epi64(s, splat(64))),
        );
        let top = _mm256_srlv_epi64(x, _mm256_sub_epi64(splat(96), s));
        fold(lo, mid, top)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const u64) -> __m256i {
        // SAFETY (caller): 4 readable values at p.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(p: *mut u64, v: __m256i) {
        // SAFETY (caller): 4 writable values at p.
        unsafe { _mm256_storeu_si256(p.cast(), v) }
    }

    /// A general twiddle's (w, w >> 32) splatted, hidden from the optimiser
    /// (see the AVX-512 `splat_split`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat_split(w: Twiddle) -> (__m256i, __m256i) {
        let v = match w {
            Twiddle::General(v) => v,
            _ => 0,
        };
        std::hint::black_box((splat(v), splat(v >> 32)))
    }

    const ONE: u8 = 0;
    const LOW: u8 = 1;
    const MID: u8 = 2;
    const HIGH: u8 = 3;
    const GENERAL: u8 = 4;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn times_kind<const KIND: u8>(x: __m256i, s: u32, split: (__m256i, __m256i)) -> __m256i {
        match KIND {
            ONE => x,
            LOW => mul_pow2_low(x, s),
            MID => mul_pow2_mid(x, s),
            HIGH => mul_pow2_high(x, s),
            _ => mul(x, split.0, split.1),
        }
    }

    macro_rules! dispatch {
        ($f:ident, $lo:expr, $hi:expr, $w:expr) => {{
            let none = (_mm256_setzero_si256(), _mm256_setzero_si256());
            match $w {
                Twiddle::Shift(0) => $f::<ONE, false>($lo, $hi, 0, none),
                Twiddle::Shift(s @ 0..32) => $f::<LOW, false>($lo, $hi, s, none),
                Twiddle::Shift(s @ 32..64) => $f::<MID, false>($lo, $hi, s, none),
                Twiddle::Shift(s) => $f::<HIGH, false>($lo, $hi, s, none),
                Twiddle::NegShift(s @ 0..32) => $f::<LOW, true>($lo, $hi, s, none),
                Twiddle::NegShift(s @ 32..64) => $f::<MID, true>($lo, $hi, s, none),
                Twiddle::NegShift(s) => $f::<HIGH, true>($lo, $hi, s, none),
                Twiddle::General(_) => $f::<GENERAL, false>($lo, $hi, 0, splat_split($w)),
            }
        }};
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_block(lo: &mut [u64], hi: &mut [u64], w: Twiddle) {
        dispatch!(forward_loop, lo, hi, w)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_loop<const KIND: u8, const NEGATE: bool>(
        lo: &mut [u64],
        hi: &mut [u64],
        s: u32,
        split: (__m256i, __m256i),
    ) {
        for (a, b) in lo.chunks_exact_mut(4).zip(hi.chunks_exact_mut(4)) {
            // SAFETY: both chunks hold 4 values.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let v = times_kind::<KIND>(y, s, split);
            let (s, d) = (add(x, v), sub(x, v));
            let (s, d) = if NEGATE { (d, s) } else { (s, d) };
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), s);
                store(b.as_mut_ptr(), d);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_block(lo: &mut [u64], hi: &mut [u64], w_inv: Twiddle) {
        dispatch!(backward_loop, lo, hi, w_inv)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_loop<const KIND: u8, const NEGATE: bool>(
        lo: &mut [u64],
        hi: &mut [u64],
        s: u32,
        split: (__m256i, __m256i),
    ) {
        for (a, b) in lo.chunks_exact_mut(4).zip(hi.chunks_exact_mut(4)) {
            // SAFETY: both chunks hold 4 values.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let d = if NEGATE { sub(y, x) } else { sub(x, y) };
            let (s, d) = (add(x, y), times_kind::<KIND>(d, s, split));
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), s);
                store(b.as_mut_ptr(), d);
            }
        }
    }

    /// Transposes the 4×4 block in `r` (row i in r[i]).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose4(r: [__m256i; 4]) -> [__m256i; 4] {
        let t0 = _mm256_unpacklo_epi64(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi64(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi64(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi64(r[2], r[3]);
        [
            _mm256_permute2x128_si256::<0x20>(t0, t2),
            _mm256_permute2x128_si256::<0x20>(t1, t3),
            _mm256_permute2x128_si256::<0x31>(t0, t2),
            _mm256_permute2x128_si256::<0x31>(t1, t3),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_pair(v: &mut [__m256i; 8], i: usize, j: usize, w: __m256i) {
        let p = mul(v[j], w, _mm256_srli_epi64::<32>(w));
        (v[i], v[j]) = (add(v[i], p), sub(v[i], p));
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_pair(v: &mut [__m256i; 8], i: usize, j: usize, w: __m256i) {
        let (a, b) = (v[i], v[j]);
        (v[i], v[j]) = (add(a, b), mul(sub(a, b), w, _mm256_srli_epi64::<32>(w)));
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_shift_pair(v: &mut [__m256i; 8], i: usize, j: usize, s: __m256i) {
        let p = mul_pow2v(v[j], s);
        (v[i], v[j]) = (add(v[i], p), sub(v[i], p));
    }

    /// (a, b) → (a + b, (b − a)·2^u), or (a − b) where u = 0.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_shift_pair(v: &mut [__m256i; 8], i: usize, j: usize, u: __m256i) {
        let (a, b) = (v[i], v[j]);
        let keep = _mm256_cmpeq_epi64(u, _mm256_setzero_si256());
        let d = _mm256_blendv_epi8(sub(b, a), sub(a, b), keep);
        (v[i], v[j]) = (add(a, b), mul_pow2v(d, u));
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_upper_pair<const SHIFTS: bool>(
        v: &mut [__m256i; 8],
        i: usize,
        j: usize,
        w: __m256i,
    ) {
        if SHIFTS {
            forward_shift_pair(v, i, j, w)
        } else {
            forward_pair(v, i, j, w)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_upper_pair<const SHIFTS: bool>(
        v: &mut [__m256i; 8],
        i: usize,
        j: usize,
        w: __m256i,
    ) {
        if SHIFTS {
            backward_shift_pair(v, i, j, w)
        } else {
            backward_pair(v, i, j, w)
        }
    }

    /// The AVX-512 `forward_tail` on four of a group's eight blocks.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_tail<const SHIFTS: bool>(v: &mut [__m256i; 8], w: &[__m256i; 7]) {
        forward_upper_pair::<SHIFTS>(v, 0, 4, w[0]);
        forward_upper_pair::<SHIFTS>(v, 1, 5, w[0]);
        forward_upper_pair::<SHIFTS>(v, 2, 6, w[0]);
        forward_upper_pair::<SHIFTS>(v, 3, 7, w[0]);
        forward_upper_pair::<SHIFTS>(v, 0, 2, w[1]);
        forward_upper_pair::<SHIFTS>(v, 1, 3, w[1]);
        forward_upper_pair::<SHIFTS>(v, 4, 6, w[2]);
        forward_upper_pair::<SHIFTS>(v, 5, 7, w[2]);
        forward_pair(v, 0, 1, w[3]);
        forward_pair(v, 2, 3, w[4]);
        forward_pair(v, 4, 5, w[5]);
        forward_pair(v, 6, 7, w[6]);
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_tail<const SHIFTS: bool>(v: &mut [__m256i; 8], w: &[__m256i; 7]) {
        backward_pair(v, 0, 1, w[3]);
        backward_pair(v, 2, 3, w[4]);
        backward_pair(v, 4, 5, w[5]);
        backward_pair(v, 6, 7, w[6]);
        backward_upper_pair::<SHIFTS>(v, 0, 2, w[1]);
        backward_upper_pair::<SHIFTS>(v, 1, 3, w[1]);
        backward_upper_pair::<SHIFTS>(v, 4, 6, w[2]);
        backward_upper_pair::<SHIFTS>(v, 5, 7, w[2]);
        backward_upper_pair::<SHIFTS>(v, 0, 4, w[0]);
        backward_upper_pair::<SHIFTS>(v, 1, 5, w[0]);
        backward_upper_pair::<SHIFTS>(v, 2, 6, w[0]);
        backward_upper_pair::<SHIFTS>(v, 3, 7, w[0]);
    }

    /// Lanes 4h..4h + 4 of a group's 7 tail twiddle vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_twiddles(tw: &[u64], h: usize) -> [__m256i; 7] {
        assert!(tw.len() >= 56 && h < 2);
        let mut w = [_mm256_setzero_si256(); 7];
        for (k, x) in w.iter_mut().enumerate() {
            // SAFETY: 56 twiddles per group, 8k + 4h + 4 ≤ 56.
            *x = unsafe { load(tw[8 * k + 4 * h..].as_ptr()) };
        }
        w
    }

    /// A group's 64 values (8 blocks of 8, row-major) as two halves of
    /// columns: `v[h][c]` lane l holds value c of block 4h + l, the AVX-512
    /// kernels' transposed row c, lanes 4h..4h + 4.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_transposed(group: &[u64]) -> [[__m256i; 8]; 2] {
        assert!(group.len() >= 64);
        let mut v = [[_mm256_setzero_si256(); 8]; 2];
        for (h, half) in v.iter_mut().enumerate() {
            for q in 0..2 {
                let mut rows = [_mm256_setzero_si256(); 4];
                for (l, row) in rows.iter_mut().enumerate() {
                    // SAFETY: 8(4h + l) + 4q + 4 ≤ 64.
                    *row = unsafe { load(group[8 * (4 * h + l) + 4 * q..].as_ptr()) };
                }
                half[4 * q..4 * q + 4].copy_from_slice(&transpose4(rows));
            }
        }
        v
    }

    /// Stores transposed rows: `v[h][c]` to values 8c + 4h..8c + 4h + 4.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_rows(group: &mut [u64], v: &[[__m256i; 8]; 2]) {
        assert!(group.len() >= 64);
        for (h, half) in v.iter().enumerate() {
            for (c, x) in half.iter().enumerate() {
                // SAFETY: 8c + 4h + 4 ≤ 64.
                unsafe { store(group[8 * c + 4 * h..].as_mut_ptr(), *x) };
            }
        }
    }

    /// Loads transposed rows, the inverse of [`store_rows`].
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_rows(group: &[u64]) -> [[__m256i; 8]; 2] {
        assert!(group.len() >= 64);
        let mut v = [[_mm256_setzero_si256(); 8]; 2];
        for (h, half) in v.iter_mut().enumerate() {
            for (c, x) in half.iter_mut().enumerate() {
                // SAFETY: 8c + 4h + 4 ≤ 64.
                *x = unsafe { load(group[8 * c + 4 * h..].as_ptr()) };
            }
        }
        v
    }

    /// Stores two halves of columns back as row-major blocks, the inverse
    /// of [`load_transposed`].
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_transposed(group: &mut [u64], v: &[[__m256i; 8]; 2]) {
        assert!(group.len() >= 64);
        for (h, half) in v.iter().enumerate() {
            for q in 0..2 {
                let rows = transpose4([
                    half[4 * q],
                    half[4 * q + 1],
                    half[4 * q + 2],
                    half[4 * q + 3],
                ]);
                for (l, row) in rows.iter().enumerate() {
                    // SAFETY: 8(4h + l) + 4q + 4 ≤ 64.
                    unsafe { store(group[8 * (4 * h + l) + 4 * q..].as_mut_ptr(), *row) };
                }
            }
        }
    }

    /// The tail of one group: transpose, the last three splits, output
    /// left transposed. Both halves are loaded before either is stored:
    /// the transposed rows overlap both halves' blocks.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_group<const SHIFTS: bool>(group: &mut [u64], tail: &[u64]) {
        let mut v = load_transposed(group);
        for (h, half) in v.iter_mut().enumerate() {
            forward_tail::<SHIFTS>(half, &load_twiddles(tail, h));
        }
        store_rows(group, &v);
    }

    /// [`forward_group`] undone, without the factor 8.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_group<const SHIFTS: bool>(group: &mut [u64], tail: &[u64]) {
        let mut v = load_rows(group);
        for (h, half) in v.iter_mut().enumerate() {
            backward_tail::<SHIFTS>(half, &load_twiddles(tail, h));
        }
        store_transposed(group, &v);
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn forward_stages(buf: &mut [u64], stages: &[Vec<Twiddle>], mut t: usize) {
        for stage in stages {
            for (block, &w) in buf.chunks_exact_mut(2 * t).zip(stage) {
                let (lo, hi) = block.split_at_mut(t);
                forward_block(lo, hi, w);
            }
            t /= 2;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn backward_stages(buf: &mut [u64], stages: &[Vec<Twiddle>], mut t: usize) {
        for stage in stages.iter().rev() {
            for (block, &w) in buf.chunks_exact_mut(2 * t).zip(stage) {
                let (lo, hi) = block.split_at_mut(t);
                backward_block(lo, hi, w);
            }
            t *= 2;
        }
    }

    /// One block of [`BLOCK`] values: the twist, then the cyclic transform.
    #[target_feature(enable = "avx2")]
    fn forward_cyclic(tw: &Twisted, block: &mut [u64], twist: &[u64]) {
        let (lo, hi) = block.split_at_mut(BLOCK / 2);
        let (twist_lo, twist_hi) = twist.split_at(BLOCK / 2);
        let pairs = lo.chunks_exact_mut(4).zip(hi.chunks_exact_mut(4));
        for ((a, b), (wa, wb)) in pairs.zip(twist_lo.chunks_exact(4).zip(twist_hi.chunks_exact(4)))
        {
            // SAFETY: every chunk holds 4 values.
            let (x, y, wa, wb) = unsafe {
                (
                    load(a.as_ptr()),
                    load(b.as_ptr()),
                    load(wa.as_ptr()),
                    load(wb.as_ptr()),
                )
            };
            let x = mul(x, wa, _mm256_srli_epi64::<32>(wa));
            let y = mul(y, wb, _mm256_srli_epi64::<32>(wb));
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), add(x, y));
                store(b.as_mut_ptr(), sub(x, y));
            }
        }
        forward_stages(block, &tw.fwd, BLOCK / 4);
        for (group, tail) in block.chunks_exact_mut(64).zip(tw.fwd_tail.chunks_exact(56)) {
            forward_group::<true>(group, tail);
        }
    }

    /// [`forward_cyclic`] undone, without the factor 128.
    #[target_feature(enable = "avx2")]
    fn backward_cyclic(tw: &Twisted, block: &mut [u64], untwist: &[u64]) {
        for (group, tail) in block.chunks_exact_mut(64).zip(tw.inv_tail.chunks_exact(56)) {
            backward_group::<true>(group, tail);
        }
        backward_stages(block, &tw.inv, 8);
        let (lo, hi) = block.split_at_mut(BLOCK / 2);
        let (untwist_lo, untwist_hi) = untwist.split_at(BLOCK / 2);
        let pairs = lo.chunks_exact_mut(4).zip(hi.chunks_exact_mut(4));
        for ((a, b), (wa, wb)) in
            pairs.zip(untwist_lo.chunks_exact(4).zip(untwist_hi.chunks_exact(4)))
        {
            // SAFETY: every chunk holds 4 values.
            let (x, y, wa, wb) = unsafe {
                (
                    load(a.as_ptr()),
                    load(b.as_ptr()),
                    load(wa.as_ptr()),
                    load(wb.as_ptr()),
                )
            };
            let (s, d) = (add(x, y), sub(x, y));
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), mul(s, wa, _mm256_srli_epi64::<32>(wa)));
                store(b.as_mut_ptr(), mul(d, wb, _mm256_srli_epi64::<32>(wb)));
            }
        }
    }

    /// # Safety
    /// AVX2 is available; `buf.len() == plan.n`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn forward(plan: &GoldilocksNtt, buf: &mut [u64]) {
        forward_stages(buf, &plan.fwd, plan.n / 2);
        if let Some(tw) = &plan.twisted {
            for (block, twist) in buf
                .chunks_exact_mut(BLOCK)
                .zip(tw.twist.chunks_exact(BLOCK))
            {
                forward_cyclic(tw, block, twist);
            }
            return;
        }
        for (group, tail) in buf.chunks_exact_mut(64).zip(plan.fwd_tail.chunks_exact(56)) {
            forward_group::<false>(group, tail);
        }
    }

    /// # Safety
    /// AVX2 is available; `buf.len() == plan.n`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn backward(plan: &GoldilocksNtt, buf: &mut [u64]) {
        if let Some(tw) = &plan.twisted {
            for (block, untwist) in buf
                .chunks_exact_mut(BLOCK)
                .zip(tw.untwist.chunks_exact(BLOCK))
            {
                backward_cyclic(tw, block, untwist);
            }
        } else {
            for (group, tail) in buf.chunks_exact_mut(64).zip(plan.inv_tail.chunks_exact(56)) {
                backward_group::<false>(group, tail);
            }
        }
        backward_stages(buf, &plan.inv, plan.n >> plan.inv.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field() -> Modulus {
        Modulus::new(SOLINAS).unwrap()
    }

    /// The schoolbook negacyclic product mod q.
    fn negacyclic(a: &[u64], b: &[u64]) -> Vec<u64> {
        let (m, n) = (field(), a.len());
        let mut out = vec![0; n];
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                let p = m.mul(x, y);
                let k = (i + j) % n;
                out[k] = if i + j < n {
                    m.add(out[k], p)
                } else {
                    m.sub(out[k], p)
                };
            }
        }
        out
    }

    fn values(n: usize) -> impl Strategy<Value = Vec<u64>> {
        let v = prop_oneof![Just(0), Just(SOLINAS - 1), Just(1), 0..SOLINAS];
        proptest::collection::vec(v, n)
    }

    // The tree splits X^N + 1 into linear factors: every output is the
    // input evaluated at a distinct root of X^N + 1 (N = 64 without the
    // twist, N = 2048 and 4096 with it).
    #[test]
    fn outputs_are_evaluations_at_distinct_roots() {
        let m = field();
        for n in [64, TWIST_MIN, 4096] {
            let plan = GoldilocksNtt::new(n).unwrap();
            assert_eq!(plan.twisted.is_some(), n >= TWIST_MIN);
            // a = X: the outputs are the roots themselves.
            let mut x = vec![0; n];
            x[1] = 1;
            plan.forward_scalar(&mut x);
            let mut seen = x.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), n);
            for &r in &x {
                assert_eq!(m.pow(r, n as u64), SOLINAS - 1);
            }
            // And any a is evaluated at those roots.
            let a: Vec<u64> = (0..n as u64).map(|i| m.pow(3, i + 7)).collect();
            let mut fa = a.clone();
            plan.forward_scalar(&mut fa);
            for (&r, &got) in x.iter().zip(&fa) {
                let expect = a.iter().rev().fold(0, |acc, &c| m.add(m.mul(acc, r), c));
                assert_eq!(got, expect);
            }
        }
    }

    // Without the twist the first five negacyclic splits multiply by shifts
    // and the rest by general values; with it every split before the tail
    // is a shift up to N = 4096 (N = 8192 has one general negacyclic
    // split), and the cyclic tail's first two splits are shifts by
    // construction (`new` checks them).
    #[test]
    fn shift_splits() {
        let is_shift = |w: &Twiddle| matches!(w, Twiddle::Shift(_));
        for n in [256, 4096, 8192] {
            let plan = GoldilocksNtt::new(n).unwrap();
            for (i, stage) in plan.fwd.iter().enumerate() {
                assert_eq!(stage.iter().all(is_shift), i < 5, "N = {n}, stage {i}");
                assert_eq!(stage.iter().any(is_shift), i < 5, "N = {n}, stage {i}");
            }
            if let Some(tw) = &plan.twisted {
                assert_eq!(tw.fwd.len(), 3);
                assert!(tw.fwd.iter().flatten().all(is_shift), "N = {n}");
                // The first sub-block of every stage has w = 1.
                assert!(tw.fwd.iter().all(|s| s[0] == Twiddle::Shift(0)));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        // SIMD-1: the kernels (AVX-512, else AVX2) compute the scalar tree
        // exactly, and the inverse undoes them up to the factor N.
        #[test]
        fn kernels_match_the_scalar_tree_and_invert(
            a in values(4096),
            log_n in 6u32..=13,
        ) {
            if !GoldilocksNtt::supported() {
                return Ok(()); // tfhe-ntt serves this CPU; nothing of ours to check
            }
            let m = field();
            let n = 1usize << log_n;
            let plan = GoldilocksNtt::new(n).unwrap();
            let a: Vec<u64> = a.iter().cycle().take(n).copied().collect();
            let (mut fast, mut slow) = (a.clone(), a.clone());
            plan.forward(&mut fast);
            plan.forward_scalar(&mut slow);
            prop_assert_eq!(&fast, &slow);
            plan.backward_unnormalized(&mut fast);
            let n_mod = n as u64 % SOLINAS;
            let expect: Vec<u64> = a.iter().map(|&x| m.mul(x, n_mod)).collect();
            prop_assert_eq!(fast, expect);
        }

        // The point-wise product is the negacyclic product.
        #[test]
        fn pointwise_product_is_the_negacyclic_product(
            a in values(TWIST_MIN),
            b in values(TWIST_MIN),
            n in prop_oneof![Just(64usize), Just(128), Just(TWIST_MIN)],
        ) {
            if !GoldilocksNtt::supported() {
                return Ok(()); // tfhe-ntt serves this CPU; nothing of ours to check
            }
            let m = field();
            let plan = GoldilocksNtt::new(n).unwrap();
            let (a, b) = (&a[..n], &b[..n]);
            let (mut fa, mut fb) = (a.to_vec(), b.to_vec());
            plan.forward(&mut fa);
            plan.forward(&mut fb);
            for (x, y) in fa.iter_mut().zip(&fb) {
                *x = m.mul(*x, *y);
            }
            plan.backward_unnormalized(&mut fa);
            let n_inv = m.inv(n as u64).unwrap();
            let got: Vec<u64> = fa.iter().map(|&x| m.mul(x, n_inv)).collect();
            prop_assert_eq!(got, negacyclic(a, b));
        }
    }

    // SIMD-1: where AVX-512 runs, the AVX2 kernels give its outputs
    // (elsewhere the proptests above check the AVX2 ones against the
    // scalar tree).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_match_the_avx512_ones() {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2"))
        {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for log_n in 6..=13 {
            let n = 1usize << log_n;
            let plan = GoldilocksNtt::new(n).unwrap();
            let mut a: Vec<u64> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % SOLINAS
                })
                .collect();
            (a[0], a[n - 1]) = (SOLINAS - 1, SOLINAS - 1);
            let (mut wide, mut narrow) = (a.clone(), a.clone());
            // SAFETY: both features were detected; the lengths are N.
            unsafe {
                avx512::forward(&plan, &mut wide);
                avx2::forward(&plan, &mut narrow);
            }
            assert_eq!(wide, narrow, "forward, N = {n}");
            let (mut wide, mut narrow) = (a.clone(), a);
            // SAFETY: as above.
            unsafe {
                avx512::backward(&plan, &mut wide);
                avx2::backward(&plan, &mut narrow);
            }
            assert_eq!(wide, narrow, "inverse, N = {n}");
        }
    }

    // N = 4096, the b-sets' degree, and 8192 (s16's q_0): one random
    // product each against schoolbook.
    #[test]
    fn products_at_4096_and_8192_are_negacyclic_products() {
        if !GoldilocksNtt::supported() {
            return;
        }
        let m = field();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % SOLINAS
        };
        for n in [4096, 8192] {
            let plan = GoldilocksNtt::new(n).unwrap();
            let mut a: Vec<u64> = (0..n).map(|_| next()).collect();
            let b: Vec<u64> = (0..n).map(|_| next()).collect();
            (a[0], a[1], a[n - 1]) = (0, SOLINAS - 1, SOLINAS - 1);
            let (mut fa, mut fb) = (a.clone(), b.clone());
            plan.forward(&mut fa);
            plan.forward(&mut fb);
            for (x, y) in fa.iter_mut().zip(&fb) {
                *x = m.mul(*x, *y);
            }
            plan.backward_unnormalized(&mut fa);
            let n_inv = m.inv(n as u64).unwrap();
            let got: Vec<u64> = fa.iter().map(|&x| m.mul(x, n_inv)).collect();
            assert_eq!(got, negacyclic(&a, &b), "N = {n}");
        }
    }
}
