//! Hybrid (special-modulus) key switching in the NTT domain.
//!
//! Input: `(a', b')` under `τ_g(s)`. The mask is split into signed digits
//! `a' = Σ_j d_j β^j` (exact; with B·l ≥ ⌈log2 q⌉ the top digit is as small
//! as the others), each digit is multiplied with key row j modulo P·q, and
//! the result is divided by P with rounding. The key noise is divided by P;
//! what remains is the rounding floor (proofs/noise-budget.md, Lemma 1).
//!
//! On a multi-limb q (PARAM-8) each mask coefficient is first recomposed to
//! its integer in `[0, q)` by the CRT and centred, so the digits are those
//! of the full modulus; the digits are then reduced into every limb and P,
//! and the division by P is done limb by limb: P is a separate prime. With
//! two limbs (s16) the CRT, the digits and the division by P run as
//! branch-free kernels over whole arrays (64-bit words only, Shoup
//! constants), vectorised like `poly`'s add/sub; the tests hold them to the
//! per-coefficient u128 reference bit for bit. One limb (the b-sets) needs
//! no CRT: the centred residue fits one signed word, so its digits come
//! from one-word kernels, which write their residues mod q and mod P
//! directly; all digits are transformed first (mod P by tfhe-ntt's 32-bit
//! plan), then one pass per prime forms both key products over all levels
//! with deferred reductions (`one_limb_plan`).

use super::keys::{HoistedKey, NarrowKey};
use super::{Ciphertext, Context, GaloisKey, GaloisKeys};
use crate::math::slots::SlotInverse;
use crate::math::{CrtComposer, Modulus, MulConst, RnsModulus, MAX_LIMBS, SOLINAS};

/// Signed base-2^B digit decomposition of centred residues mod q.
#[derive(Clone, Copy, Debug)]
pub struct Decomposer {
    base_log: u32,
    levels: usize,
}

impl Decomposer {
    /// `None` unless 1 ≤ B ≤ 32 and 1 ≤ l ≤ 64 with B·l ≥ 64 (digits that
    /// cover a 64-bit residue).
    pub fn new(base_log: u32, levels: usize) -> Option<Self> {
        Self::covering(base_log, levels, 64)
    }

    /// `None` unless 1 ≤ B ≤ 32 and 1 ≤ l ≤ 64 with B·l ≥ `bits` (digits
    /// that cover a modulus of `bits` bits, at most 128: PARAM-8).
    pub fn covering(base_log: u32, levels: usize, bits: u32) -> Option<Self> {
        let ok = (1..=32).contains(&base_log)
            && (1..=64).contains(&levels)
            && bits <= 128
            && base_log as usize * levels >= bits as usize;
        ok.then_some(Self { base_log, levels })
    }

    /// The number of digits l (gadget levels), one per key row.
    pub fn levels(&self) -> usize {
        self.levels
    }

    /// Digits of `x` (a residue mod q, read centred): `x ≡ Σ d_j 2^(B j)`,
    /// `d_j ∈ [−2^(B−1), 2^(B−1))` except the top one, which takes the carry
    /// (`|d_top| ≤ 2^(64−B(l−1))`).
    ///
    /// # Panics
    /// If `out` is shorter than [`levels`](Self::levels) (a caller bug).
    #[inline]
    pub fn digits(&self, q: Modulus, x: u64, out: &mut [i64]) {
        self.digits_centered(q.centered(x) as i128, out);
    }

    /// Digits of a centred integer `y` (|y| ≤ q/2 < 2^127): `y = Σ d_j 2^(B j)`
    /// exactly, `d_j ∈ [−2^(B−1), 2^(B−1))` except the top one, which takes
    /// the carry (`|d_top| ≤ 2^(bits−1−B(l−1)) + 1`, at most 2^B when
    /// B·l ≥ bits).
    ///
    /// # Panics
    /// If `out` is shorter than [`levels`](Self::levels) (a caller bug).
    #[inline]
    pub fn digits_centered(&self, mut y: i128, out: &mut [i64]) {
        // Masks and shifts only: no division in the key-switch hot loop.
        let mask = (1i128 << self.base_log) - 1;
        let half = 1i128 << (self.base_log - 1);
        for d in out.iter_mut().take(self.levels - 1) {
            let r = ((y + half) & mask) - half;
            *d = r as i64;
            y = (y - r) >> self.base_log;
        }
        out[self.levels - 1] = y as i64;
    }
}

/// The first `L` rows of n words of `v` (which holds at least L·n).
fn rows_mut<T, const L: usize>(v: &mut [T], n: usize) -> [&mut [T]; L] {
    let mut rows = v.chunks_exact_mut(n);
    std::array::from_fn(|_| rows.next().expect("L rows of n words"))
}

/// The key switch's constants, built once per context (PARAM-8): a
/// division-free CRT for a multi-limb decomposition and P^-1 per limb for
/// the division by P (one limb included).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RnsKeySwitch {
    crt: CrtComposer,
    /// P^-1 mod q_i.
    p_inv: [MulConst; MAX_LIMBS],
    /// Whether every gadget digit (|d| ≤ 2^B) is below every limb and P, so
    /// a digit maps to a residue by one conditional add.
    small_digits: bool,
    /// Whether P/2 is below every limb, so the centred [x_P] maps to a
    /// residue by one conditional add.
    small_p: bool,
    /// The two-limb CRT as a vectorised kernel, when q has two limbs and
    /// q_1 is one [`MulConst::splittable`] serves.
    crt2: Option<simd::Crt2>,
    /// Whether the one-limb fused path's kernels serve (the b-sets): q is
    /// the Solinas prime, P < 2^32, digits and P/2 below both, P^-1
    /// splittable. The path also needs P's 32-bit transform (P < 2^31).
    fused_one_limb: bool,
}

impl RnsKeySwitch {
    pub(crate) fn new(q: RnsModulus, p: Modulus, base_log: u32) -> Self {
        let min_limb = q.limbs().iter().map(|m| m.value()).min().unwrap_or(0);
        let mut p_inv = [MulConst::new(q.limb(0), 1); MAX_LIMBS];
        for (c, &m) in p_inv.iter_mut().zip(q.limbs()) {
            // No inverse only if P ≡ 0 mod q_i, which PARAM-2's distinct
            // primes rule out; 0 then keeps this total.
            *c = MulConst::new(m, m.inv(p.value()).unwrap_or(0));
        }
        let crt2 = match q.limbs() {
            &[q0, q1] => {
                let r0_mod_q1 = MulConst::new(q1, 1);
                let garner = MulConst::new(q1, q1.inv(q0.value()).unwrap_or(0));
                let half = q.value() / 2;
                (r0_mod_q1.splittable() && garner.splittable()).then_some(simd::Crt2 {
                    q0: q0.value(),
                    q1: q1.value(),
                    r0_mod_q1,
                    garner,
                    q_lo: q.value() as u64,
                    q_hi: (q.value() >> 64) as u64,
                    half_lo: half as u64,
                    half_hi: (half >> 64) as u64,
                })
            }
            _ => None,
        };
        let small_digits = base_log < 64 && 1u64 << base_log < min_limb.min(p.value());
        let small_p = p.value() / 2 < min_limb;
        let fused_one_limb = q.len() == 1
            && q.limb(0).value() == SOLINAS
            && p.value() < 1 << 32
            && small_digits
            && small_p
            && p_inv[0].splittable();
        Self {
            crt: CrtComposer::new(q),
            crt2,
            p_inv,
            small_digits,
            small_p,
            fused_one_limb,
        }
    }

    /// Whether the fused one-limb path serves `levels` digits: the b-sets'
    /// 3 and wide's 4, with the sum of `levels` products mod P (each below
    /// (P − 1)^2) exact in a 64-bit word.
    fn fused_one_limb_serves(&self, p: Modulus, levels: usize) -> bool {
        let max_product = (p.value() - 1) as u128 * (p.value() - 1) as u128;
        self.fused_one_limb
            && matches!(levels, 3 | 4)
            && levels as u128 * max_product <= u64::MAX as u128
    }

    /// The gadget digits of every coefficient of the limb-major `a` (`L`
    /// limbs of `n`): CRT to the integer in `[0, q)`, centred, then split
    /// as [`Decomposer::digits_centered`]; digit j of coefficient i goes to
    /// `rows[j][i]`.
    fn decompose<const L: usize>(
        &self,
        dec: Decomposer,
        a: &[u64],
        n: usize,
        rows: &mut [Vec<i64>],
    ) {
        let levels = dec.levels();
        let mut tmp = [0i64; 64];
        for i in 0..n {
            let r: [u64; L] = std::array::from_fn(|l| a[l * n + i]);
            let y = self.crt.centered(self.crt.compose(r));
            dec.digits_centered(y, &mut tmp[..levels]);
            for (row, &d) in rows.iter_mut().zip(&tmp[..levels]) {
                row[i] = d;
            }
        }
    }

    /// [`decompose`](Self::decompose) for two limbs, in vectorised passes
    /// over whole arrays: the CRT into the centred integers (as 64-bit
    /// halves in `y`, which holds 2N words), then one pass per digit.
    fn decompose_two_limbs(
        &self,
        dec: Decomposer,
        a: &[u64],
        n: usize,
        rows: &mut [Vec<i64>],
        y: &mut [u64],
    ) {
        let Some(crt2) = self.crt2 else {
            return self.decompose::<2>(dec, a, n, rows);
        };
        let (r0, r1) = a.split_at(n);
        let (y_lo, y_hi) = y[..2 * n].split_at_mut(n);
        simd::crt2_centred(crt2, r0, r1, y_lo, y_hi);
        let (last, digit_rows) = rows[..dec.levels()].split_last_mut().expect("levels ≥ 1");
        for row in digit_rows {
            simd::digit_step(dec.base_log, y_lo, y_hi, &mut row[..n]);
        }
        // The top digit takes the rest (as `digits_centered`'s `y as i64`).
        for (d, &lo) in last[..n].iter_mut().zip(y_lo.iter()) {
            *d = lo as i64;
        }
    }

    /// [`decompose`](Self::decompose) for one limb q < 2^64, in vectorised
    /// passes over whole arrays: the centred residues go into the top row,
    /// which each pass turns into the rest after one more digit, and which
    /// ends as the top digit (the one that takes the carry).
    fn decompose_one_limb(
        &self,
        dec: Decomposer,
        q: Modulus,
        a: &[u64],
        n: usize,
        rows: &mut [Vec<i64>],
    ) {
        let (rest, digit_rows) = rows[..dec.levels()].split_last_mut().expect("levels ≥ 1");
        let rest = &mut rest[..n];
        simd::centre(q.value(), &a[..n], rest);
        for row in digit_rows {
            simd::digit_step_one(dec.base_log, rest, &mut row[..n]);
        }
    }

    /// `out[i] = digits[i] mod m`: one branch-free conditional add when the
    /// digits are known smaller than m (vectorised).
    #[inline]
    fn digits_mod(&self, m: Modulus, out: &mut [u64], digits: &[i64]) {
        if self.small_digits {
            return simd::digits_mod(m.value(), out, digits);
        }
        for (o, &d) in out.iter_mut().zip(digits) {
            *o = m.from_i64(d);
        }
    }

    /// Limb `l` (modulus `m`) of the division by P and the sum into `out`:
    /// `out.a −= (x_a − [x_a,P])·P^-1`, `out.b += b' − (x_b − [x_b,P])·P^-1`,
    /// [·] centred in (−P/2, P/2].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn mod_down_add<W: simd::PWord>(
        &self,
        l: usize,
        m: Modulus,
        p: Modulus,
        (aq, bq): (&[u64], &[u64]),
        (ap, bp): (&[W], &[W]),
        ct_b: &[u64],
        (out_a, out_b): (&mut [u64], &mut [u64]),
    ) {
        let p_inv = self.p_inv[l];
        if self.small_p && p_inv.splittable() {
            let consts = simd::ModDown {
                q: m.value(),
                p: p.value(),
                p_inv,
            };
            let ops = simd::ModDownOperands {
                aq,
                bq,
                ap,
                bp,
                ct_b,
                out_a,
                out_b,
            };
            return simd::mod_down_add(consts, ops, true);
        }
        let mod_down = |xq: u64, xp: W| p_inv.mul(m.sub(xq, m.from_i64(p.centered(xp.widen()))));
        for i in 0..out_a.len() {
            let a = mod_down(aq[i], ap[i]);
            let b = mod_down(bq[i], bp[i]);
            out_a[i] = m.sub(out_a[i], a);
            out_b[i] = m.add(out_b[i], m.sub(ct_b[i], b));
        }
    }
}

/// The key switch's per-coefficient loops as branch-free kernels, compiled
/// once per instruction set and picked at run time, as `poly`'s add/sub
/// (SIMD-1).
mod simd {
    use crate::math::{
        add_mod, mulhi_split, select, solinas_reduce_split, sub_mod, MulConst, SOLINAS,
    };

    /// One limb's constants of the division by P.
    #[derive(Clone, Copy)]
    pub(super) struct ModDown {
        /// The limb q_i.
        pub(super) q: u64,
        /// The special prime P, with P/2 < q_i.
        pub(super) p: u64,
        /// P^-1 mod q_i; [`MulConst::splittable`].
        pub(super) p_inv: MulConst,
    }

    /// A word of the accumulators mod P: `u64`, or `u32` where the
    /// one-limb path's narrow transform (P < 2^31) left them, read as they
    /// are instead of widened by a pass of their own.
    pub(super) trait PWord: Copy {
        fn widen(self) -> u64;
        /// Words i..i + 4 as 64-bit lanes. The caller enables AVX2, and
        /// `inline(always)` puts the intrinsic inside its body.
        ///
        /// # Safety
        /// i + 4 ≤ s.len(), on a CPU with AVX2.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load4(s: &[Self], i: usize) -> std::arch::x86_64::__m256i;
        /// Words i..i + 8 as 64-bit lanes, the caller enabling AVX-512 F.
        ///
        /// # Safety
        /// i + 8 ≤ s.len(), on a CPU with AVX-512 F.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load8(s: &[Self], i: usize) -> std::arch::x86_64::__m512i;
    }

    impl PWord for u64 {
        #[inline(always)]
        fn widen(self) -> u64 {
            self
        }
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load4(s: &[u64], i: usize) -> std::arch::x86_64::__m256i {
            // SAFETY (caller): 4 words at i.
            unsafe { std::arch::x86_64::_mm256_loadu_si256(s.as_ptr().add(i).cast()) }
        }
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load8(s: &[u64], i: usize) -> std::arch::x86_64::__m512i {
            // SAFETY (caller): 8 words at i.
            unsafe { std::arch::x86_64::_mm512_loadu_si512(s.as_ptr().add(i).cast()) }
        }
    }

    impl PWord for u32 {
        #[inline(always)]
        fn widen(self) -> u64 {
            self as u64
        }
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load4(s: &[u32], i: usize) -> std::arch::x86_64::__m256i {
            use std::arch::x86_64::*;
            // SAFETY (caller): 4 words at i, AVX2.
            unsafe { _mm256_cvtepu32_epi64(_mm_loadu_si128(s.as_ptr().add(i).cast())) }
        }
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load8(s: &[u32], i: usize) -> std::arch::x86_64::__m512i {
            use std::arch::x86_64::*;
            // SAFETY (caller): 8 words at i, AVX-512 F.
            unsafe { _mm512_cvtepu32_epi64(_mm256_loadu_si256(s.as_ptr().add(i).cast())) }
        }
    }

    /// One limb of the key-switch accumulators (mod q_i and mod P, in
    /// words `W`), the input body and the output ciphertext, all of
    /// length N.
    pub(super) struct ModDownOperands<'a, W: PWord = u64> {
        pub(super) aq: &'a [u64],
        pub(super) bq: &'a [u64],
        pub(super) ap: &'a [W],
        pub(super) bp: &'a [W],
        pub(super) ct_b: &'a [u64],
        pub(super) out_a: &'a mut [u64],
        pub(super) out_b: &'a mut [u64],
    }

    #[cfg(target_arch = "x86_64")]
    impl<'a, W: PWord> ModDownOperands<'a, W> {
        /// Every slice cut to the output's length N, and the body's to
        /// nothing unless `BODY`: the vector kernels' operands.
        fn trimmed<const BODY: bool>(self) -> Self {
            let n = self.out_a.len();
            let body = |s: &'a [u64]| if BODY { &s[..n] } else { &[] };
            let body_p = |s: &'a [W]| if BODY { &s[..n] } else { &[] };
            Self {
                aq: &self.aq[..n],
                bq: body(self.bq),
                ap: &self.ap[..n],
                bp: body_p(self.bp),
                ct_b: body(self.ct_b),
                out_a: self.out_a,
                out_b: if BODY { &mut self.out_b[..n] } else { &mut [] },
            }
        }

        /// The [`trimmed`](Self::trimmed) operands from word `start` on:
        /// what a vector kernel leaves to the portable one.
        fn rest_from<const BODY: bool>(self, start: usize) -> Self {
            let body = |s: &'a [u64]| if BODY { &s[start..] } else { s };
            let body_p = |s: &'a [W]| if BODY { &s[start..] } else { s };
            Self {
                aq: &self.aq[start..],
                bq: body(self.bq),
                ap: &self.ap[start..],
                bp: body_p(self.bp),
                ct_b: body(self.ct_b),
                out_a: &mut self.out_a[start..],
                out_b: if BODY {
                    &mut self.out_b[start..]
                } else {
                    self.out_b
                },
            }
        }
    }

    /// `BODY = false` divides the mask only (`bq`, `bp`, `ct_b` and
    /// `out_b` are not read and may be empty): the body of a packing node
    /// is divided at its slots alone (PACK-6).
    #[inline(always)]
    pub(super) fn mod_down_kernel<W: PWord, const SOLINAS_Q: bool, const BODY: bool>(
        c: ModDown,
        o: ModDownOperands<W>,
    ) {
        let (q, half_p) = (c.q, c.p / 2);
        // [x_P] mod q: x_P − P + q when x_P > P/2 (then P − x_P < P/2 < q),
        // else x_P (< q).
        let lift = q.wrapping_sub(c.p);
        let down = |xq: u64, xp: W| {
            let xp = xp.widen();
            let centred = xp.wrapping_add(select(xp > half_p, lift));
            c.p_inv.mul_split::<SOLINAS_Q>(sub_mod(q, xq, centred))
        };
        let n = o.out_a.len();
        let (aq, ap) = (&o.aq[..n], &o.ap[..n]);
        if !BODY {
            for (i, out_a) in o.out_a.iter_mut().enumerate() {
                *out_a = sub_mod(q, *out_a, down(aq[i], ap[i]));
            }
            return;
        }
        let (bq, bp, ct_b) = (&o.bq[..n], &o.bp[..n], &o.ct_b[..n]);
        let out_b = &mut o.out_b[..n];
        for (i, out_a) in o.out_a.iter_mut().enumerate() {
            let a = down(aq[i], ap[i]);
            let b = down(bq[i], bp[i]);
            *out_a = sub_mod(q, *out_a, a);
            out_b[i] = add_mod(q, out_b[i], sub_mod(q, ct_b[i], b));
        }
    }

    /// [`mod_down_kernel`] for the Solinas q on AVX2's four lanes, with
    /// the Goldilocks transform's reduced add, subtract and multiply (the
    /// compiler's build of the portable kernel took its 64-bit high
    /// products lane by lane in scalar code).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mod_down_solinas_avx2<W: PWord, const BODY: bool>(
        c: ModDown,
        o: ModDownOperands<W>,
    ) {
        use crate::math::solinas_avx2::{add, mul, splat, sub};
        use std::arch::x86_64::*;
        debug_assert_eq!(c.q, SOLINAS);
        let o = o.trimmed::<BODY>();
        let n = o.out_a.len();
        let w = c.p_inv.factor();
        let (w, w_hi) = (splat(w), splat(w >> 32));
        // x_P ≤ P/2 as a signed compare: x_P < P < 2^63.
        let (half_p, lift) = (splat(c.p / 2), splat(c.q.wrapping_sub(c.p)));
        let down = |xq: __m256i, xp: __m256i| {
            let above = _mm256_cmpgt_epi64(xp, half_p);
            let centred = _mm256_add_epi64(xp, _mm256_and_si256(above, lift));
            mul(sub(xq, centred), w, w_hi)
        };
        // SAFETY (all loads and stores): i + 4 ≤ n, and each slice holds
        // n words (the body's only when BODY).
        let load = |s: &[u64], i: usize| unsafe { _mm256_loadu_si256(s[i..].as_ptr().cast()) };
        let load_p = |s: &[W], i: usize| unsafe { W::load4(s, i) };
        let whole = n - n % 4;
        for i in (0..whole).step_by(4) {
            let a = down(load(o.aq, i), load_p(o.ap, i));
            let new_a = sub(load(o.out_a, i), a);
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_si256(o.out_a[i..].as_mut_ptr().cast(), new_a) };
            if BODY {
                let b = down(load(o.bq, i), load_p(o.bp, i));
                let new_b = add(load(o.out_b, i), sub(load(o.ct_b, i), b));
                // SAFETY: as for the loads.
                unsafe { _mm256_storeu_si256(o.out_b[i..].as_mut_ptr().cast(), new_b) };
            }
        }
        mod_down_kernel::<W, true, BODY>(c, o.rest_from::<BODY>(whole))
    }

    /// [`mod_down_solinas_avx2`] on AVX-512's eight lanes (the
    /// compiler's build of the portable kernel formed each 64-bit high
    /// product from four `vpmuludq` and its carries).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    pub(super) unsafe fn mod_down_solinas_avx512<W: PWord, const BODY: bool>(
        c: ModDown,
        o: ModDownOperands<W>,
    ) {
        use crate::math::solinas_avx512::{add, mul, splat, sub};
        use std::arch::x86_64::*;
        debug_assert_eq!(c.q, SOLINAS);
        let o = o.trimmed::<BODY>();
        let n = o.out_a.len();
        let w = c.p_inv.factor();
        let (w, w_hi) = (splat(w), splat(w >> 32));
        let (half_p, lift) = (splat(c.p / 2), splat(c.q.wrapping_sub(c.p)));
        let down = |xq: __m512i, xp: __m512i| {
            let above = _mm512_cmpgt_epu64_mask(xp, half_p);
            let centred = _mm512_mask_add_epi64(xp, above, xp, lift);
            mul(sub(xq, centred), w, w_hi)
        };
        // SAFETY (all loads and stores): i + 8 ≤ n, and each slice holds
        // n words (the body's only when BODY).
        let load = |s: &[u64], i: usize| unsafe { _mm512_loadu_si512(s[i..].as_ptr().cast()) };
        let load_p = |s: &[W], i: usize| unsafe { W::load8(s, i) };
        let whole = n - n % 8;
        for i in (0..whole).step_by(8) {
            let a = down(load(o.aq, i), load_p(o.ap, i));
            let new_a = sub(load(o.out_a, i), a);
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_si512(o.out_a[i..].as_mut_ptr().cast(), new_a) };
            if BODY {
                let b = down(load(o.bq, i), load_p(o.bp, i));
                let new_b = add(load(o.out_b, i), sub(load(o.ct_b, i), b));
                // SAFETY: as for the loads.
                unsafe { _mm512_storeu_si512(o.out_b[i..].as_mut_ptr().cast(), new_b) };
            }
        }
        mod_down_kernel::<W, true, BODY>(c, o.rest_from::<BODY>(whole))
    }

    /// The constants of the two-limb CRT: x = r_0 + q_0·v_1 with
    /// v_1 = (r_1 − r_0)·q_0^-1 mod q_1, then centred modulo q = q_0·q_1.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Crt2 {
        pub(super) q0: u64,
        pub(super) q1: u64,
        /// Multiplication by 1 mod q_1: r_0 mod q_1.
        pub(super) r0_mod_q1: MulConst,
        /// q_0^-1 mod q_1.
        pub(super) garner: MulConst,
        pub(super) q_lo: u64,
        pub(super) q_hi: u64,
        /// ⌊q/2⌋.
        pub(super) half_lo: u64,
        pub(super) half_hi: u64,
    }

    #[inline(always)]
    fn crt2_kernel<const SOLINAS_Q1: bool>(
        c: Crt2,
        r0: &[u64],
        r1: &[u64],
        y_lo: &mut [u64],
        y_hi: &mut [u64],
    ) {
        let n = y_lo.len();
        let (r0, r1, y_hi) = (&r0[..n], &r1[..n], &mut y_hi[..n]);
        for (i, lo_out) in y_lo.iter_mut().enumerate() {
            let low = c.r0_mod_q1.mul_split::<SOLINAS_Q1>(r0[i]);
            let v1 = c.garner.mul_split::<SOLINAS_Q1>(sub_mod(c.q1, r1[i], low));
            // x = r_0 + q_0·v_1 < q, as two 64-bit words.
            let (lo, carry) = v1.wrapping_mul(c.q0).overflowing_add(r0[i]);
            let hi = mulhi_split(v1, c.q0) + carry as u64;
            // x − q when x > ⌊q/2⌋ (two's complement over both words).
            let above = (hi > c.half_hi) | ((hi == c.half_hi) & (lo > c.half_lo));
            let (lo, borrow) = lo.overflowing_sub(select(above, c.q_lo));
            let hi = hi
                .wrapping_sub(select(above, c.q_hi))
                .wrapping_sub(borrow as u64);
            *lo_out = lo;
            y_hi[i] = hi;
        }
    }

    /// One gadget digit of the two-word signed integers `y`, which become
    /// the rest: d = ((y + 2^(B−1)) mod 2^B) − 2^(B−1), y ← (y + 2^(B−1)) >> B
    /// (arithmetic), which is `digits_centered`'s (y − d) >> B.
    #[inline(always)]
    fn digit_step_kernel(base_log: u32, y_lo: &mut [u64], y_hi: &mut [u64], row: &mut [i64]) {
        let half = 1u64 << (base_log - 1);
        let mask = (1u64 << base_log) - 1;
        let n = row.len();
        let (y_lo, y_hi) = (&mut y_lo[..n], &mut y_hi[..n]);
        for (i, d) in row.iter_mut().enumerate() {
            let (lo, carry) = y_lo[i].overflowing_add(half);
            let hi = y_hi[i].wrapping_add(carry as u64);
            *d = (lo & mask) as i64 - half as i64;
            y_lo[i] = (lo >> base_log) | (hi << (64 - base_log));
            y_hi[i] = ((hi as i64) >> base_log) as u64;
        }
    }

    /// x centred modulo q: x − q when x > ⌊q/2⌋ = `half_q` (then
    /// q − x < 2^63, so the i64 is exact), else x; `Modulus::centered`.
    #[inline(always)]
    fn centred(q: u64, half_q: u64, x: u64) -> i64 {
        x.wrapping_sub(select(x > half_q, q)) as i64
    }

    /// One gadget digit of a signed integer y and the rest, without
    /// overflow at any |y| < 2^63: with y = 2^B·h + r (h = y >> B,
    /// 0 ≤ r < 2^B) and t = r + 2^(B−1), the digit is (t mod 2^B) − 2^(B−1)
    /// and the rest h + (t >> B) = ⌊(y + 2^(B−1)) / 2^B⌋, which is
    /// `digits_centered`'s (y − d) >> B.
    #[inline(always)]
    fn digit_and_rest(base_log: u32, y: i64) -> (i64, i64) {
        let half = 1i64 << (base_log - 1);
        let mask = (1i64 << base_log) - 1;
        let t = (y & mask) + half;
        ((t & mask) - half, (y >> base_log) + (t >> base_log))
    }

    /// `y[i]` = `a[i]` centred modulo q ([`centred`]).
    #[inline(always)]
    pub(super) fn centre_kernel(q: u64, a: &[u64], y: &mut [i64]) {
        let half_q = q / 2;
        for (y, &x) in y.iter_mut().zip(a) {
            *y = centred(q, half_q, x);
        }
    }

    /// One gadget digit of the signed integers `y` into `row`; `y` become
    /// the rests ([`digit_and_rest`]).
    #[inline(always)]
    pub(super) fn digit_step_one_kernel(base_log: u32, y: &mut [i64], row: &mut [i64]) {
        for (y, d) in y.iter_mut().zip(row.iter_mut()) {
            (*d, *y) = digit_and_rest(base_log, *y);
        }
    }

    #[inline(always)]
    pub(super) fn digits_kernel(q: u64, out: &mut [u64], digits: &[i64]) {
        for (o, &d) in out.iter_mut().zip(digits) {
            // d + q if d < 0, else d (|d| < q).
            *o = (d as u64).wrapping_add(q & (d >> 63) as u64);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    unsafe fn mod_down_avx512<W: PWord, const SOLINAS_Q: bool, const BODY: bool>(
        c: ModDown,
        o: ModDownOperands<W>,
    ) {
        mod_down_kernel::<W, SOLINAS_Q, BODY>(c, o)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn mod_down_avx2<W: PWord, const SOLINAS_Q: bool, const BODY: bool>(
        c: ModDown,
        o: ModDownOperands<W>,
    ) {
        mod_down_kernel::<W, SOLINAS_Q, BODY>(c, o)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn digits_avx512(q: u64, out: &mut [u64], digits: &[i64]) {
        digits_kernel(q, out, digits)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn digits_avx2(q: u64, out: &mut [u64], digits: &[i64]) {
        digits_kernel(q, out, digits)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    unsafe fn crt2_avx512<const SOLINAS_Q1: bool>(
        c: Crt2,
        r0: &[u64],
        r1: &[u64],
        y_lo: &mut [u64],
        y_hi: &mut [u64],
    ) {
        crt2_kernel::<SOLINAS_Q1>(c, r0, r1, y_lo, y_hi)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn crt2_avx2<const SOLINAS_Q1: bool>(
        c: Crt2,
        r0: &[u64],
        r1: &[u64],
        y_lo: &mut [u64],
        y_hi: &mut [u64],
    ) {
        crt2_kernel::<SOLINAS_Q1>(c, r0, r1, y_lo, y_hi)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    unsafe fn digit_step_avx512(b: u32, y_lo: &mut [u64], y_hi: &mut [u64], row: &mut [i64]) {
        digit_step_kernel(b, y_lo, y_hi, row)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn digit_step_avx2(b: u32, y_lo: &mut [u64], y_hi: &mut [u64], row: &mut [i64]) {
        digit_step_kernel(b, y_lo, y_hi, row)
    }

    /// The centred integers of the two-limb residues `(r0, r1)`, as low and
    /// high 64-bit words of their two's complement.
    pub(super) fn crt2_centred(
        c: Crt2,
        r0: &[u64],
        r1: &[u64],
        y_lo: &mut [u64],
        y_hi: &mut [u64],
    ) {
        let solinas = c.q1 == SOLINAS;
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe {
                    if solinas {
                        crt2_avx512::<true>(c, r0, r1, y_lo, y_hi)
                    } else {
                        crt2_avx512::<false>(c, r0, r1, y_lo, y_hi)
                    }
                };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe {
                    if solinas {
                        crt2_avx2::<true>(c, r0, r1, y_lo, y_hi)
                    } else {
                        crt2_avx2::<false>(c, r0, r1, y_lo, y_hi)
                    }
                };
            }
        }
        if solinas {
            crt2_kernel::<true>(c, r0, r1, y_lo, y_hi)
        } else {
            crt2_kernel::<false>(c, r0, r1, y_lo, y_hi)
        }
    }

    /// One digit of every `y` into `row` (1 ≤ `base_log` ≤ 32).
    pub(super) fn digit_step(base_log: u32, y_lo: &mut [u64], y_hi: &mut [u64], row: &mut [i64]) {
        debug_assert!((1..=32).contains(&base_log));
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { digit_step_avx512(base_log, y_lo, y_hi, row) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { digit_step_avx2(base_log, y_lo, y_hi, row) };
            }
        }
        digit_step_kernel(base_log, y_lo, y_hi, row)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn centre_avx512(q: u64, a: &[u64], y: &mut [i64]) {
        centre_kernel(q, a, y)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn centre_avx2(q: u64, a: &[u64], y: &mut [i64]) {
        centre_kernel(q, a, y)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn digit_step_one_avx512(b: u32, y: &mut [i64], row: &mut [i64]) {
        digit_step_one_kernel(b, y, row)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn digit_step_one_avx2(b: u32, y: &mut [i64], row: &mut [i64]) {
        digit_step_one_kernel(b, y, row)
    }

    /// `y[i]` = the centred `a[i]` modulo one limb q (`Modulus::centered`).
    pub(super) fn centre(q: u64, a: &[u64], y: &mut [i64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { centre_avx512(q, a, y) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { centre_avx2(q, a, y) };
            }
        }
        centre_kernel(q, a, y)
    }

    /// One digit of every one-word `y` into `row` (1 ≤ `base_log` ≤ 32).
    pub(super) fn digit_step_one(base_log: u32, y: &mut [i64], row: &mut [i64]) {
        debug_assert!((1..=32).contains(&base_log));
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { digit_step_one_avx512(base_log, y, row) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { digit_step_one_avx2(base_log, y, row) };
            }
        }
        digit_step_one_kernel(base_log, y, row)
    }

    /// AVX-512 F, VL and DQ: what `math::kernels()` reports as AVX-512.
    #[cfg(target_arch = "x86_64")]
    fn has_avx512() -> bool {
        crate::math::kernels() == crate::math::Kernels::Avx512
    }

    /// [`has_avx512`] with IFMA's 52-bit multiply-adds.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn has_ifma() -> bool {
        has_avx512() && std::arch::is_x86_feature_detected!("avx512ifma")
    }

    /// The division by P of one limb and its sum into the output; of the
    /// mask only unless `body` (`mod_down_kernel`).
    pub(super) fn mod_down_add<W: PWord>(c: ModDown, o: ModDownOperands<W>, body: bool) {
        debug_assert!(c.p / 2 < c.q && c.p_inv.splittable());
        match (c.q == SOLINAS, body) {
            (true, true) => mod_down_dispatch::<W, true, true>(c, o),
            (true, false) => mod_down_dispatch::<W, true, false>(c, o),
            (false, true) => mod_down_dispatch::<W, false, true>(c, o),
            (false, false) => mod_down_dispatch::<W, false, false>(c, o),
        }
    }

    fn mod_down_dispatch<W: PWord, const SOLINAS_Q: bool, const BODY: bool>(
        c: ModDown,
        o: ModDownOperands<W>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe {
                    if SOLINAS_Q {
                        mod_down_solinas_avx512::<W, BODY>(c, o)
                    } else {
                        mod_down_avx512::<W, SOLINAS_Q, BODY>(c, o)
                    }
                };
            }
            if SOLINAS_Q && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { mod_down_solinas_avx2::<W, BODY>(c, o) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { mod_down_avx2::<W, SOLINAS_Q, BODY>(c, o) };
            }
        }
        mod_down_kernel::<W, SOLINAS_Q, BODY>(c, o)
    }

    /// The digit residues mod q and mod P, both above |d|: `d + m` when
    /// d < 0, else d (as `digits_kernel`).
    #[inline(always)]
    fn residue(m: u64, d: i64) -> u64 {
        (d as u64).wrapping_add(m & (d >> 63) as u64)
    }

    /// The one-limb fused path's digits in one pass: each `a[i]` centred
    /// modulo q ([`centred`]), cut into `L` gadget digits
    /// ([`digit_and_rest`], the rest last), and each digit written as
    /// its residues mod q and mod P (both above every digit; P < 2^32, in
    /// 32-bit words). The rest stays in a register: one pass per digit
    /// wrote it and read it back.
    #[inline(always)]
    pub(super) fn one_limb_digits_kernel<const L: usize>(
        base_log: u32,
        (q, p): (u64, u64),
        a: &[u64],
        out_q: [&mut [u64]; L],
        out_p: [&mut [u32]; L],
    ) {
        let half_q = q / 2;
        let n = a.len();
        let out_q = out_q.map(|row| &mut row[..n]);
        let out_p = out_p.map(|row| &mut row[..n]);
        for (i, &x) in a.iter().enumerate() {
            let mut y = centred(q, half_q, x);
            for j in 0..L - 1 {
                let d;
                (d, y) = digit_and_rest(base_log, y);
                out_q[j][i] = residue(q, d);
                out_p[j][i] = residue(p, d) as u32;
            }
            out_q[L - 1][i] = residue(q, y);
            out_p[L - 1][i] = residue(p, y) as u32;
        }
    }

    /// The key product modulo the Solinas q in one pass: `out_a = Σ_j
    /// d_j ⊙ a_j`, `out_b = Σ_j d_j ⊙ b_j` over the `L` transformed digits
    /// (all operands reduced), each digit loaded once for both key halves
    /// and the sums kept in registers (no accumulator passes). The
    /// reductions are deferred: the 128-bit products are summed exactly in
    /// three words (c·2^128 + hi·2^64 + lo, c < L) and reduced once, using
    /// 2^128 ≡ −2^32 modulo the Solinas prime (0.9× the time of reducing
    /// each product).
    #[inline(always)]
    pub(super) fn key_product_solinas_kernel<const L: usize>(
        d: [&[u64]; L],
        (ka, kb): ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
    ) {
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        // (lo, hi, c) += x·k; hi + carry cannot wrap: hi ≤ (q − 1)^2 / 2^64 < 2^64 − 1.
        let mac = |(lo, hi, c): (u64, u64, u64), x: u64, k: u64| {
            let (lo, carry) = lo.overflowing_add(x.wrapping_mul(k));
            let (hi, wrap) = hi.overflowing_add(mulhi_split(x, k) + carry as u64);
            (lo, hi, c + wrap as u64)
        };
        let reduce =
            |(lo, hi, c): (u64, u64, u64)| sub_mod(SOLINAS, solinas_reduce_split(lo, hi), c << 32);
        for (i, out_a) in out_a.iter_mut().enumerate() {
            let (mut a, mut b) = ((0, 0, 0), (0, 0, 0));
            for j in 0..L {
                let x = d[j][i];
                a = mac(a, x, ka[j][i]);
                b = mac(b, x, kb[j][i]);
            }
            *out_a = reduce(a);
            out_b[i] = reduce(b);
        }
    }

    /// The key product modulo P < 2^32 in one pass, lazily: the `L`
    /// products of 32-bit residues are summed exactly in 64 bits (the
    /// caller checks L·(P − 1)^2 < 2^64) and reduced once, by Barrett's
    /// method with m = ⌊(2^64 − 1)/P⌋: the estimate is at most 2 short, so
    /// two conditional subtractions finish it.
    #[inline(always)]
    pub(super) fn key_product_small_kernel<const L: usize>(
        p: u64,
        d: [&[u32]; L],
        (ka, kb): ([&[u32]; L], [&[u32]; L]),
        out_a: &mut [u32],
        out_b: &mut [u32],
    ) {
        let m = u64::MAX / p;
        let reduce = |s: u64| {
            let r = s.wrapping_sub(mulhi_split(s, m).wrapping_mul(p));
            let r = r - select(r >= p, p);
            r - select(r >= p, p)
        };
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        for (i, out_a) in out_a.iter_mut().enumerate() {
            let (mut a, mut b) = (0u64, 0u64);
            for j in 0..L {
                // 32-bit operands: the product is one 32×32 multiply.
                let x = d[j][i] as u64;
                a = a.wrapping_add(x * ka[j][i] as u64);
                b = b.wrapping_add(x * kb[j][i] as u64);
            }
            *out_a = reduce(a) as u32;
            out_b[i] = reduce(b) as u32;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    unsafe fn one_limb_digits_avx512<const L: usize>(
        b: u32,
        m: (u64, u64),
        a: &[u64],
        out_q: [&mut [u64]; L],
        out_p: [&mut [u32]; L],
    ) {
        one_limb_digits_kernel(b, m, a, out_q, out_p)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn one_limb_digits_avx2<const L: usize>(
        b: u32,
        m: (u64, u64),
        a: &[u64],
        out_q: [&mut [u64]; L],
        out_p: [&mut [u32]; L],
    ) {
        one_limb_digits_kernel(b, m, a, out_q, out_p)
    }
    /// [`key_product_solinas_avx2`]'s 32-bit columns on AVX-512's eight
    /// lanes. The compiler's AVX-512 build of
    /// [`key_product_solinas_kernel`] kept its 128-bit carry chain:
    /// compares and masked adds per product, where a column adds halves.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    pub(super) unsafe fn key_product_solinas_avx512<const L: usize>(
        d: [&[u64]; L],
        k: ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
    ) {
        use std::arch::x86_64::*;
        let low = _mm512_set1_epi64(0xffff_ffff);
        let split = |x: __m512i| (x, _mm512_srli_epi64::<32>(x));
        let mac = |c: &mut [__m512i; 4], (x, x1): (__m512i, __m512i), (k, k1)| {
            let products = [
                (0, _mm512_mul_epu32(x, k)),
                (1, _mm512_mul_epu32(x, k1)),
                (1, _mm512_mul_epu32(x1, k)),
                (2, _mm512_mul_epu32(x1, k1)),
            ];
            for (w, p) in products {
                c[w] = _mm512_add_epi64(c[w], _mm512_and_si512(p, low));
                c[w + 1] = _mm512_add_epi64(c[w + 1], _mm512_srli_epi64::<32>(p));
            }
        };
        // As on AVX2: lo + mid·2^64 + top·2^96, lo < 2^64, then folded.
        let reduce = |c: [__m512i; 4]| {
            let t1 = _mm512_add_epi64(c[1], _mm512_srli_epi64::<32>(c[0]));
            let lo = _mm512_or_si512(_mm512_and_si512(c[0], low), _mm512_slli_epi64::<32>(t1));
            let mid = _mm512_add_epi64(c[2], _mm512_srli_epi64::<32>(t1));
            let top = _mm512_add_epi64(c[3], _mm512_srli_epi64::<32>(mid));
            crate::math::solinas_avx512::fold(lo, mid, top)
        };
        let zero = [_mm512_setzero_si512(); 4];
        // SAFETY: this function's features are the ones the driver needs.
        unsafe { key_product_solinas_lanes8(d, k, out_a, out_b, (zero, split, mac, reduce)) }
    }

    /// The loop both AVX-512 key products mod q share: eight outputs at a
    /// time, every operand word split once by `split`, each level's two
    /// products accumulated by `mac` into the column sums `C`, reduced once
    /// per output by `reduce`; the last n mod 8 words by the portable
    /// kernel. Inlined into each kernel, whose target features its
    /// closures' intrinsics need (checked on the binary: neither kernel
    /// calls out of its loop).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn key_product_solinas_lanes8<const L: usize, C: Copy, X: Copy>(
        d: [&[u64]; L],
        (ka, kb): ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
        (zero, split, mac, reduce): (
            C,
            impl Fn(std::arch::x86_64::__m512i) -> X,
            impl Fn(&mut C, X, X),
            impl Fn(C) -> std::arch::x86_64::__m512i,
        ),
    ) {
        use std::arch::x86_64::*;
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        // SAFETY (loads, stores): i + 8 ≤ n, and every row holds n words;
        // AVX-512 F is the caller's promise.
        let load = |row: &[u64], i: usize| unsafe { _mm512_loadu_si512(row[i..].as_ptr().cast()) };
        let whole = n - n % 8;
        for i in (0..whole).step_by(8) {
            let (mut a, mut b) = (zero, zero);
            for j in 0..L {
                let x = split(load(d[j], i));
                mac(&mut a, x, split(load(ka[j], i)));
                mac(&mut b, x, split(load(kb[j], i)));
            }
            // SAFETY: as for the loads.
            unsafe {
                _mm512_storeu_si512(out_a[i..].as_mut_ptr().cast(), reduce(a));
                _mm512_storeu_si512(out_b[i..].as_mut_ptr().cast(), reduce(b));
            }
        }
        key_product_solinas_kernel(
            rows_from(d, whole),
            (rows_from(ka, whole), rows_from(kb, whole)),
            &mut out_a[whole..],
            &mut out_b[whole..],
        );
    }
    /// [`key_product_solinas_avx512`] by IFMA's 52-bit products: with
    /// x = x_0 + x_1·2^52 (x_0 < 2^52, x_1 < 2^12) and k likewise, the
    /// products x_a·k_b add their low and high 52-bit halves to columns of
    /// weight 2^52 (`vpmadd52luq`/`vpmadd52huq` multiply and accumulate in
    /// one instruction, where the 32-bit columns take a multiply, a mask, a
    /// shift and two adds per half). With L ≤ 4 terms the columns stay
    /// below 2^56 (c_0, c_1) and 2^27 (c_2), and Σ c_w·2^(52w) is reduced
    /// once per output.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512ifma")]
    pub(super) unsafe fn key_product_solinas_ifma<const L: usize>(
        d: [&[u64]; L],
        k: ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
    ) {
        use std::arch::x86_64::*;
        debug_assert!(L <= 4);
        let (m52, m12) = (_mm512_set1_epi64((1 << 52) - 1), _mm512_set1_epi64(0xfff));
        let split = |x: __m512i| (_mm512_and_si512(x, m52), _mm512_srli_epi64::<52>(x));
        // x_1·k_1 < 2^24 has no high half.
        let mac = |c: &mut [__m512i; 3], (x0, x1): (__m512i, __m512i), (k0, k1)| {
            c[0] = _mm512_madd52lo_epu64(c[0], x0, k0);
            c[1] = _mm512_madd52hi_epu64(c[1], x0, k0);
            c[1] = _mm512_madd52lo_epu64(c[1], x0, k1);
            c[1] = _mm512_madd52lo_epu64(c[1], x1, k0);
            c[2] = _mm512_madd52hi_epu64(c[2], x0, k1);
            c[2] = _mm512_madd52hi_epu64(c[2], x1, k0);
            c[2] = _mm512_madd52lo_epu64(c[2], x1, k1);
        };
        // c_0 + c_1·2^52 + c_2·2^104 as lo + mid·2^64 + top·2^96: c_0's
        // carry moved into c_1, whose low 12 bits complete lo; mid is the
        // next 32 bits of c_1 (c_2·2^104 has none there; `fold` reads only
        // mid's low half, so c_1 >> 12 goes in unmasked) and top the rest,
        // c_1 >> 44 + c_2·2^8 < 2^36 < q.
        let reduce = |c: [__m512i; 3]| {
            let c1 = _mm512_add_epi64(c[1], _mm512_srli_epi64::<52>(c[0]));
            let lo = _mm512_or_si512(
                _mm512_and_si512(c[0], m52),
                _mm512_slli_epi64::<52>(_mm512_and_si512(c1, m12)),
            );
            let mid = _mm512_srli_epi64::<12>(c1);
            let top = _mm512_add_epi64(_mm512_srli_epi64::<32>(mid), _mm512_slli_epi64::<8>(c[2]));
            crate::math::solinas_avx512::fold(lo, mid, top)
        };
        let zero = [_mm512_setzero_si512(); 3];
        // SAFETY: this function's features include the driver's.
        unsafe { key_product_solinas_lanes8(d, k, out_a, out_b, (zero, split, mac, reduce)) }
    }
    /// Every row from word `start` on: the words a vector kernel leaves
    /// to the portable one.
    #[cfg(target_arch = "x86_64")]
    fn rows_from<T, const L: usize>(rows: [&[T]; L], start: usize) -> [&[T]; L] {
        rows.map(|r| &r[start..])
    }

    /// The key product modulo the Solinas prime on AVX2's four lanes, by
    /// 32-bit columns: with x = x1·2^32 + x0 and k likewise, each of the
    /// four `vpmuludq` products x_a·k_b (weight 2^(32(a+b))) adds its low
    /// half to column a + b and its high half to column a + b + 1. Each
    /// column sums at most 3·L halves below 2^32, exact in 64 bits, and the
    /// value Σ c_w·2^(32w) is reduced once per output. The compiler's AVX2
    /// build of [`key_product_solinas_kernel`] emulated its 128-bit carries
    /// with scalar `mul`s and lane moves (benches/README.md, "An own AVX2
    /// transform mod P; the key products and the division by P on AVX2").
    /// Outputs reduced, as the other kernels'.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn key_product_solinas_avx2<const L: usize>(
        d: [&[u64]; L],
        (ka, kb): ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
    ) {
        use std::arch::x86_64::*;
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        let low = _mm256_set1_epi64x(0xffff_ffff);
        // SAFETY (loads, stores): i + 4 ≤ n, and every row holds n words.
        let load = |row: &[u64], i: usize| unsafe { _mm256_loadu_si256(row[i..].as_ptr().cast()) };
        let mac = |c: &mut [__m256i; 4], x: __m256i, x1: __m256i, k: __m256i| {
            let k1 = _mm256_srli_epi64::<32>(k);
            let products = [
                (0, _mm256_mul_epu32(x, k)),
                (1, _mm256_mul_epu32(x, k1)),
                (1, _mm256_mul_epu32(x1, k)),
                (2, _mm256_mul_epu32(x1, k1)),
            ];
            for (w, p) in products {
                c[w] = _mm256_add_epi64(c[w], _mm256_and_si256(p, low));
                c[w + 1] = _mm256_add_epi64(c[w + 1], _mm256_srli_epi64::<32>(p));
            }
        };
        // c0 + c1·2^32 + c2·2^64 + c3·2^96 as lo + mid·2^64 + top·2^96
        // with lo < 2^64 (the carries of c0 and c1 moved up), then folded.
        let reduce = |c: [__m256i; 4]| {
            let t1 = _mm256_add_epi64(c[1], _mm256_srli_epi64::<32>(c[0]));
            let lo = _mm256_or_si256(_mm256_and_si256(c[0], low), _mm256_slli_epi64::<32>(t1));
            let mid = _mm256_add_epi64(c[2], _mm256_srli_epi64::<32>(t1));
            let top = _mm256_add_epi64(c[3], _mm256_srli_epi64::<32>(mid));
            crate::math::solinas_avx2::fold(lo, mid, top)
        };
        let whole = n - n % 4;
        for i in (0..whole).step_by(4) {
            let (mut a, mut b) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
            for j in 0..L {
                let x = load(d[j], i);
                let x1 = _mm256_srli_epi64::<32>(x);
                mac(&mut a, x, x1, load(ka[j], i));
                mac(&mut b, x, x1, load(kb[j], i));
            }
            // SAFETY: as for the loads.
            unsafe {
                _mm256_storeu_si256(out_a[i..].as_mut_ptr().cast(), reduce(a));
                _mm256_storeu_si256(out_b[i..].as_mut_ptr().cast(), reduce(b));
            }
        }
        key_product_solinas_kernel(
            rows_from(d, whole),
            (rows_from(ka, whole), rows_from(kb, whole)),
            &mut out_a[whole..],
            &mut out_b[whole..],
        );
    }
    /// [`key_product_small_avx2`]'s reduction on AVX-512's eight lanes:
    /// the compiler's build of [`key_product_small_kernel`] formed the
    /// 64-bit high product of Barrett's estimate from four `vpmuludq`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    pub(super) unsafe fn key_product_small_avx512<const L: usize>(
        p: u64,
        d: [&[u32]; L],
        (ka, kb): ([&[u32]; L], [&[u32]; L]),
        out_a: &mut [u32],
        out_b: &mut [u32],
    ) {
        use std::arch::x86_64::*;
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        let splat = |x: u64| _mm512_set1_epi64(x as i64);
        let r = (1u64 << 32) % p;
        let (hi_w, hi_shoup, lo_shoup) = (splat(r), splat((r << 32) / p), splat((1 << 32) / p));
        let (pv, two_p, low) = (splat(p), splat(2 * p), splat(0xffff_ffff));
        let sub_if =
            |x: __m512i, m: __m512i| _mm512_mask_sub_epi64(x, _mm512_cmpge_epu64_mask(x, m), x, m);
        let reduce = |s: __m512i| {
            let (s_hi, s_lo) = (_mm512_srli_epi64::<32>(s), _mm512_and_si512(s, low));
            let q_hi = _mm512_srli_epi64::<32>(_mm512_mul_epu32(s_hi, hi_shoup));
            let t_hi = _mm512_sub_epi64(_mm512_mul_epu32(s_hi, hi_w), _mm512_mul_epu32(q_hi, pv));
            let q_lo = _mm512_srli_epi64::<32>(_mm512_mul_epu32(s_lo, lo_shoup));
            let t_lo = _mm512_sub_epi64(s_lo, _mm512_mul_epu32(q_lo, pv));
            sub_if(sub_if(_mm512_add_epi64(t_hi, t_lo), two_p), pv)
        };
        let whole = n - n % 8;
        for i in (0..whole).step_by(8) {
            let (mut a, mut b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for j in 0..L {
                // SAFETY (loads and stores): i + 8 ≤ n, every row holds n words.
                let load = |row: &[u32]| unsafe { PWord::load8(row, i) };
                let (x, k_a, k_b) = (load(d[j]), load(ka[j]), load(kb[j]));
                a = _mm512_add_epi64(a, _mm512_mul_epu32(x, k_a));
                b = _mm512_add_epi64(b, _mm512_mul_epu32(x, k_b));
            }
            // SAFETY: as above.
            unsafe {
                _mm256_storeu_si256(
                    out_a[i..].as_mut_ptr().cast(),
                    _mm512_cvtepi64_epi32(reduce(a)),
                );
                _mm256_storeu_si256(
                    out_b[i..].as_mut_ptr().cast(),
                    _mm512_cvtepi64_epi32(reduce(b)),
                );
            }
        }
        key_product_small_kernel(
            p,
            rows_from(d, whole),
            (rows_from(ka, whole), rows_from(kb, whole)),
            &mut out_a[whole..],
            &mut out_b[whole..],
        );
    }
    /// [`key_product_small_kernel`]'s sums on AVX2's four 64-bit lanes,
    /// reduced without a 64-bit high product (which AVX2 lacks; the
    /// compiler's build moved every lane to a scalar `mul`): a sum s =
    /// s_hi·2^32 + s_lo becomes s_hi·(2^32 mod P) + s_lo·1, each product by
    /// Shoup's method in [0, 2P) (exact in 64 bits for 32-bit operands),
    /// and their sum below 4P takes two conditional subtractions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn key_product_small_avx2<const L: usize>(
        p: u64,
        d: [&[u32]; L],
        (ka, kb): ([&[u32]; L], [&[u32]; L]),
        out_a: &mut [u32],
        out_b: &mut [u32],
    ) {
        use std::arch::x86_64::*;
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        let splat = |x: u64| _mm256_set1_epi64x(x as i64);
        let r = (1u64 << 32) % p;
        // Shoup companions ⌊w·2^32/P⌋ of w = 2^32 mod P and w = 1.
        let (hi_w, hi_shoup, lo_shoup) = (splat(r), splat((r << 32) / p), splat((1 << 32) / p));
        let (pv, two_p, low) = (splat(p), splat(2 * p), splat(0xffff_ffff));
        // x − m where x ≥ m, for x < 2m (signed compares: x < 2^34).
        let sub_if = |x: __m256i, m: __m256i| {
            let below = _mm256_cmpgt_epi64(m, x);
            _mm256_sub_epi64(x, _mm256_andnot_si256(below, m))
        };
        let reduce = |s: __m256i| {
            let (s_hi, s_lo) = (_mm256_srli_epi64::<32>(s), _mm256_and_si256(s, low));
            let q_hi = _mm256_srli_epi64::<32>(_mm256_mul_epu32(s_hi, hi_shoup));
            let t_hi = _mm256_sub_epi64(_mm256_mul_epu32(s_hi, hi_w), _mm256_mul_epu32(q_hi, pv));
            let q_lo = _mm256_srli_epi64::<32>(_mm256_mul_epu32(s_lo, lo_shoup));
            let t_lo = _mm256_sub_epi64(s_lo, _mm256_mul_epu32(q_lo, pv));
            sub_if(sub_if(_mm256_add_epi64(t_hi, t_lo), two_p), pv)
        };
        // The low words of four 64-bit lanes, in order.
        let narrow = |v: __m256i| {
            let packed = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
            _mm256_castsi256_si128(packed)
        };
        let whole = n - n % 4;
        for i in (0..whole).step_by(4) {
            let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for j in 0..L {
                // SAFETY (loads and stores): i + 4 ≤ n, every row holds n words.
                let load = |row: &[u32]| unsafe { PWord::load4(row, i) };
                let (x, k_a, k_b) = (load(d[j]), load(ka[j]), load(kb[j]));
                a = _mm256_add_epi64(a, _mm256_mul_epu32(x, k_a));
                b = _mm256_add_epi64(b, _mm256_mul_epu32(x, k_b));
            }
            // SAFETY: as above.
            unsafe {
                _mm_storeu_si128(out_a[i..].as_mut_ptr().cast(), narrow(reduce(a)));
                _mm_storeu_si128(out_b[i..].as_mut_ptr().cast(), narrow(reduce(b)));
            }
        }
        key_product_small_kernel(
            p,
            rows_from(d, whole),
            (rows_from(ka, whole), rows_from(kb, whole)),
            &mut out_a[whole..],
            &mut out_b[whole..],
        );
    }

    /// [`one_limb_digits_kernel`] for this CPU (1 ≤ `base_log` ≤ 32).
    pub(super) fn one_limb_digits<const L: usize>(
        base_log: u32,
        m: (u64, u64),
        a: &[u64],
        out_q: [&mut [u64]; L],
        out_p: [&mut [u32]; L],
    ) {
        debug_assert!((1..=32).contains(&base_log));
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { one_limb_digits_avx512(base_log, m, a, out_q, out_p) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { one_limb_digits_avx2(base_log, m, a, out_q, out_p) };
            }
        }
        one_limb_digits_kernel(base_log, m, a, out_q, out_p)
    }

    /// [`key_product_solinas_kernel`]'s sums with the CPU's widening
    /// multiply, for CPUs without AVX-512 or AVX2: without vector lanes one
    /// 64×64 → 128-bit `mul` replaces the split's four (the split ran as
    /// scalar code on AVX2 CPUs until it got its AVX2 build, 11 % of
    /// ResNet-20's server time on a Zen 3; benches/README.md, "On AVX2:
    /// leaves and the key product").
    #[inline(always)]
    pub(super) fn key_product_solinas_wide_kernel<const L: usize>(
        d: [&[u64]; L],
        (ka, kb): ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
    ) {
        let n = out_a.len();
        let out_b = &mut out_b[..n];
        let (d, ka, kb) = (d.map(|s| &s[..n]), ka.map(|s| &s[..n]), kb.map(|s| &s[..n]));
        // (sum, c) += x·k: the exact sum is c·2^128 + sum.
        let mac = |(sum, c): (u128, u64), x: u64, k: u64| {
            let (sum, wrap) = sum.overflowing_add(x as u128 * k as u128);
            (sum, c + wrap as u64)
        };
        let reduce = |(sum, c): (u128, u64)| {
            let r = solinas_reduce_split(sum as u64, (sum >> 64) as u64);
            sub_mod(SOLINAS, r, c << 32)
        };
        for (i, out_a) in out_a.iter_mut().enumerate() {
            let (mut a, mut b) = ((0, 0), (0, 0));
            for j in 0..L {
                let x = d[j][i];
                a = mac(a, x, ka[j][i]);
                b = mac(b, x, kb[j][i]);
            }
            *out_a = reduce(a);
            out_b[i] = reduce(b);
        }
    }

    /// The key product modulo the Solinas prime, dispatched: the split
    /// products on AVX-512's lanes, AVX2's by columns (on a Zen 3: 20.4 µs
    /// per three-level product at N = 4096 against 31.9 µs for the
    /// widening multiply, a throw-away timing test), else the widening
    /// scalar multiply.
    pub(super) fn key_product_solinas<const L: usize>(
        d: [&[u64]; L],
        k: ([&[u64]; L], [&[u64]; L]),
        out_a: &mut [u64],
        out_b: &mut [u64],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_ifma() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { key_product_solinas_ifma(d, k, out_a, out_b) };
            }
            if has_avx512() {
                // SAFETY: as above.
                return unsafe { key_product_solinas_avx512(d, k, out_a, out_b) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { key_product_solinas_avx2(d, k, out_a, out_b) };
            }
        }
        key_product_solinas_wide_kernel(d, k, out_a, out_b)
    }

    /// [`key_product_small_kernel`], dispatched (P < 2^32, L·(P − 1)^2 < 2^64).
    pub(super) fn key_product_small<const L: usize>(
        p: u64,
        d: [&[u32]; L],
        k: ([&[u32]; L], [&[u32]; L]),
        out_a: &mut [u32],
        out_b: &mut [u32],
    ) {
        debug_assert!(p < 1 << 32);
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { key_product_small_avx512(p, d, k, out_a, out_b) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { key_product_small_avx2(p, d, k, out_a, out_b) };
            }
        }
        key_product_small_kernel(p, d, k, out_a, out_b)
    }

    /// `out[i] = digits[i] mod q` for digits with |d| < q.
    pub(super) fn digits_mod(q: u64, out: &mut [u64], digits: &[i64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the features were detected on this CPU.
                return unsafe { digits_avx512(q, out, digits) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { digits_avx2(q, out, digits) };
            }
        }
        digits_kernel(q, out, digits)
    }
}

/// A mask's gadget digits, forward transformed mod q and mod P (P's in
/// 32-bit words), as the fused one-limb key switch reads them: formed once
/// by [`Context::hoist_digits`] and shared, read only, by the key switches
/// of several keys (PACK-7).
pub(crate) struct HoistedDigits {
    dq: Vec<u64>,
    dp32: Vec<u32>,
}

/// Scratch space for key switches, reused across calls.
pub(crate) struct KeySwitchScratch {
    digits: Vec<Vec<i64>>,
    acc_q: [Vec<u64>; 2],
    acc_p: [Vec<u64>; 2],
    dq: Vec<u64>,
    dp: Vec<u64>,
    /// The fused one-limb path's digits and accumulators mod P < 2^31.
    dp32: Vec<u32>,
    acc_p32: [Vec<u32>; 2],
    /// A key row mod P widened to 64 bits for the per-level path.
    key_p: Vec<u64>,
}

impl KeySwitchScratch {
    pub(crate) fn new(n: usize, levels: usize, limbs: usize) -> Self {
        Self {
            digits: vec![vec![0; n]; levels],
            acc_q: [vec![0; n * limbs], vec![0; n * limbs]],
            acc_p: [vec![0; n], vec![0; n]],
            // One transformed digit per level: the fused one-limb path
            // keeps them all for its single key-product pass.
            dq: vec![0; n * limbs * levels],
            dp: vec![0; n],
            dp32: vec![0; n * levels],
            acc_p32: [vec![0; n], vec![0; n]],
            key_p: Vec::with_capacity(n),
        }
    }

    /// The fused one-limb path's digit rows (read) and accumulators
    /// (written), borrowed apart so that one call can take both.
    #[allow(clippy::type_complexity)]
    fn digits_and_accumulators(
        &mut self,
    ) -> ((&[u64], &[u32]), (&mut [Vec<u64>; 2], &mut [Vec<u32>; 2])) {
        ((&self.dq, &self.dp32), (&mut self.acc_q, &mut self.acc_p32))
    }

    /// Whether this scratch serves key switches at ring degree `n` with
    /// `levels` gadget digits and `limbs` RNS limbs.
    /// (The buffers' lengths are those [`new`](Self::new) gives: a check
    /// that disagreed with them once rebuilt every packing workspace.)
    pub(crate) fn fits(&self, n: usize, levels: usize, limbs: usize) -> bool {
        self.digits.len() == levels
            && self.digits.iter().all(|d| d.len() == n)
            && self.acc_q.iter().all(|a| a.len() == n * limbs)
            && self.acc_p.iter().all(|a| a.len() == n)
            && self.dq.len() == n * limbs * levels
            && self.dp.len() == n
            && self.dp32.len() == n * levels
            && self.acc_p32.iter().all(|a| a.len() == n)
    }
}

impl Context {
    /// The gadget of this set: digits covering ⌈log2 q⌉ bits (PARAM-2 checked).
    pub(crate) fn decomposer(&self) -> Decomposer {
        Decomposer::covering(
            self.params().gadget_base_log(),
            self.params().gadget_levels(),
            self.q().bits().max(64),
        )
        .expect("validated gadget")
    }

    /// Key-switches `ct` (under `τ_g(s)`) to `s`, adding the result to `out`.
    pub(crate) fn key_switch_add(
        &self,
        key: &GaloisKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
    ) {
        self.key_switch_add_at_slots(key, ct, out, scratch, None)
    }

    /// [`key_switch_add`](Self::key_switch_add), with `Some(M)` adding the
    /// body only at the M coefficients that are multiples of N/M (the rest
    /// of `out.b` is left as it is): all a packing node's body needs
    /// (PACK-6, proofs/packing.md, Lemma 7). Where the one-limb path's
    /// slot readers serve M, the body's two inverse transforms become
    /// [`SlotInverse::read`]s; elsewhere the body is added in full, which
    /// the lemma allows too.
    pub(crate) fn key_switch_add_at_slots(
        &self,
        key: &GaloisKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
        body_slots: Option<usize>,
    ) {
        match self.one_limb_plan(key) {
            Some((p32, key)) => {
                let readers = body_slots.and_then(|m| {
                    let (rq, rp) = self.slot_readers.as_ref()?;
                    (rq.serves(m) && rp.serves(m)).then_some((m, rq, rp))
                });
                self.one_limb_digits_forward(&ct.a, (&mut scratch.dq, &mut scratch.dp32), p32);
                let (digits, acc) = scratch.digits_and_accumulators();
                self.one_limb_products_add(key, ct, out, digits, acc, p32, readers)
            }
            None => self.key_switch_add_rns(key, ct, out, scratch),
        }
    }

    /// The images `τ_g(KS′_g(ct))` of `ct` for each of `keys`
    /// (proofs/packing.md, Lemma 8): with the fused one-limb key switch,
    /// the digits of `ct`'s mask and their forward transforms are formed
    /// once and serve every key (PACK-7); elsewhere each key switch forms
    /// its own. `work` is a buffer of `ct`'s shape, overwritten.
    pub(crate) fn key_switch_images(
        &self,
        keys: &[&HoistedKey],
        ct: &Ciphertext,
        work: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
    ) -> Vec<Ciphertext> {
        let q = self.q();
        let mut formed = false;
        keys.iter()
            .map(|hoisted| {
                work.a.fill(0);
                work.b.fill(0);
                match self.one_limb_plan(&hoisted.key) {
                    Some((p32, key)) => {
                        if !formed {
                            self.one_limb_digits_forward(
                                &ct.a,
                                (&mut scratch.dq, &mut scratch.dp32),
                                p32,
                            );
                            formed = true;
                        }
                        let (digits, acc) = scratch.digits_and_accumulators();
                        self.one_limb_products_add(key, ct, work, digits, acc, p32, None);
                    }
                    None => {
                        // Overwrites the scratch's digit rows.
                        self.key_switch_add_rns(&hoisted.key, ct, work, scratch);
                        formed = false;
                    }
                }
                work.automorphism(q, hoisted.g())
            })
            .collect()
    }

    /// The digits of `ct`'s mask for [`key_switch_image`](Self::key_switch_image),
    /// formed once (PACK-7) so that the key switches of several keys can
    /// read them on several threads; `None` where the fused one-limb key
    /// switch does not serve this set and `key`'s kind (each key switch then
    /// forms its own).
    pub(crate) fn hoist_digits(&self, key: &HoistedKey, ct: &Ciphertext) -> Option<HoistedDigits> {
        let (p32, _) = self.one_limb_plan(&key.key)?;
        let len = self.params().gadget_levels() * self.n();
        let mut digits = HoistedDigits {
            dq: vec![0; len],
            dp32: vec![0; len],
        };
        self.one_limb_digits_forward(&ct.a, (&mut digits.dq, &mut digits.dp32), p32);
        Some(digits)
    }

    /// The image `τ_g(KS′_g(ct))` of `ct` for one key, as
    /// [`key_switch_images`](Self::key_switch_images) gives it, from the
    /// `digits` [`hoist_digits`](Self::hoist_digits) formed of `ct` (or,
    /// without them, from a key switch of its own). `work` is a buffer of
    /// `ct`'s shape, overwritten.
    pub(crate) fn key_switch_image(
        &self,
        digits: Option<&HoistedDigits>,
        hoisted: &HoistedKey,
        ct: &Ciphertext,
        work: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
    ) -> Ciphertext {
        work.a.fill(0);
        work.b.fill(0);
        match (digits, self.one_limb_plan(&hoisted.key)) {
            (Some(d), Some((p32, key))) => {
                let (_, acc) = scratch.digits_and_accumulators();
                self.one_limb_products_add(key, ct, work, (&d.dq, &d.dp32), acc, p32, None)
            }
            _ => self.key_switch_add_rns(&hoisted.key, ct, work, scratch),
        }
        work.automorphism(self.q(), hoisted.g())
    }

    /// The automorphisms τ_g of `ct` for the packing tree's `levels`
    /// (g = 2^ℓ + 1), key-switched back to s, as a pack computes its
    /// images: one gadget decomposition of `ct`'s mask serves all of them
    /// (PACK-7). Each equals [`apply_galois`](Self::apply_galois) of that
    /// level's key up to the key switch's noise, which has the same bound.
    ///
    /// # Panics
    /// If a level is outside 1..=`shared_pack_levels` of the set (the
    /// levels a pack shares; a caller bug).
    pub fn apply_galois_shared(
        &self,
        keys: &GaloisKeys,
        levels: &[u32],
        ct: &Ciphertext,
    ) -> Vec<Ciphertext> {
        let hoisted: Vec<&HoistedKey> = levels.iter().map(|&l| keys.hoisted_for_level(l)).collect();
        let mut scratch =
            KeySwitchScratch::new(self.n(), self.params().gadget_levels(), self.limbs());
        let mut work = self.zero_ciphertext();
        self.key_switch_images(&hoisted, ct, &mut work, &mut scratch)
    }

    /// The key switch on any modulus (PARAM-8): digits as signed rows, then
    /// per level their residues, transforms and four accumulate passes.
    fn key_switch_add_rns(
        &self,
        key: &GaloisKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
    ) {
        let q = self.q();
        let p = self.params().p();
        let n = self.n();
        let levels = self.params().gadget_levels();
        let dec = self.decomposer();
        let rns = &self.rns_ks;
        match q.len() {
            // PARAM-8's one limb (the b-sets): no CRT, one-word kernels.
            1 => rns.decompose_one_limb(dec, q.limb(0), &ct.a, n, &mut scratch.digits),
            2 if rns.crt2.is_some() => {
                rns.decompose_two_limbs(dec, &ct.a, n, &mut scratch.digits, &mut scratch.dq)
            }
            2 => rns.decompose::<2>(dec, &ct.a, n, &mut scratch.digits),
            3 => rns.decompose::<3>(dec, &ct.a, n, &mut scratch.digits),
            _ => rns.decompose::<4>(dec, &ct.a, n, &mut scratch.digits),
        }
        let [acc_aq, acc_bq] = &mut scratch.acc_q;
        let [acc_ap, acc_bp] = &mut scratch.acc_p;
        for acc in [&mut *acc_aq, &mut *acc_bq, &mut *acc_ap, &mut *acc_bp] {
            acc.fill(0);
        }
        let (dq, dp) = (&mut scratch.dq[..n * q.len()], &mut scratch.dp[..n]);
        for j in 0..levels {
            let digits = &scratch.digits[j];
            for (c, &m) in dq.chunks_exact_mut(n).zip(q.limbs()) {
                rns.digits_mod(m, c, digits);
            }
            rns.digits_mod(p, dp, digits);
            self.ntt_q.forward(dq);
            self.ntt_p.forward(dp);
            self.ntt_q.mul_accumulate(acc_aq, dq, &key.a_q[j]);
            self.ntt_q.mul_accumulate(acc_bq, dq, &key.b_q[j]);
            let wide = &mut scratch.key_p;
            self.ntt_p
                .mul_accumulate(acc_ap, dp, key.a_p.row64(j, wide));
            self.ntt_p
                .mul_accumulate(acc_bp, dp, key.b_p.row64(j, wide));
        }
        for acc in [&mut *acc_aq, &mut *acc_bq] {
            self.ntt_q.backward_unnormalized(acc);
        }
        for acc in [&mut *acc_ap, &mut *acc_bp] {
            self.ntt_p.backward_unnormalized(acc);
        }
        let [acc_ap, acc_bp] = &scratch.acc_p;
        self.mod_down_add_all(ct, out, &scratch.acc_q, [&acc_ap[..], &acc_bp[..]]);
    }

    /// The division by P of the four accumulators (inverse transformed:
    /// mod q in `acc_q`, mod P in `acc_p`) into `out`.
    fn mod_down_add_all<W: simd::PWord>(
        &self,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        acc_q: &[Vec<u64>; 2],
        [acc_ap, acc_bp]: [&[W]; 2],
    ) {
        let (q, p, n) = (self.q(), self.params().p(), self.n());
        let rns = &self.rns_ks;
        let [acc_aq, acc_bq] = acc_q;
        // Divide by P with rounding, limb by limb: (x_qi − [x_P]) · P^-1 mod
        // q_i, [·] centred (P is one prime, so [x_P] is the same integer in
        // every limb); then out += (−a, b' − b).
        for (l, &m) in q.limbs().iter().enumerate() {
            let r = l * n..(l + 1) * n;
            rns.mod_down_add(
                l,
                m,
                p,
                (&acc_aq[r.clone()], &acc_bq[r.clone()]),
                (acc_ap, acc_bp),
                &ct.b[r.clone()],
                (&mut out.a[r.clone()], &mut out.b[r]),
            );
        }
    }

    /// The fused key switch on the b-sets' one limb
    /// (`RnsKeySwitch::fused_one_limb_serves`) computes the same integers
    /// as the per-level path in fewer passes: the digit kernels write the
    /// residues mod q and mod P directly (no signed digit rows, no
    /// `digits_mod` passes), every digit is transformed first (mod P in
    /// 32-bit words by the plan of
    /// [`NttPlan::narrow`](crate::math::NttPlan::narrow), the domain the
    /// key's P rows are in), and one pass per prime then forms both key
    /// products over all levels (no accumulator passes; the sums are
    /// reduced once). Its two halves are
    /// [`one_limb_digits_forward`](Self::one_limb_digits_forward) and
    /// [`one_limb_products_add`](Self::one_limb_products_add). Where it
    /// serves this set and `key`, this gives the plan mod P and the key's
    /// narrow rows.
    fn one_limb_plan<'k>(
        &self,
        key: &'k GaloisKey,
    ) -> Option<(&crate::math::Narrow, NarrowKey<'k>)> {
        let (p, levels) = (self.params().p(), self.params().gadget_levels());
        let p32 = self.ntt_p.narrow()?;
        let key = key.narrow()?;
        (self.limbs() == 1 && self.rns_ks.fused_one_limb_serves(p, levels)).then_some((p32, key))
    }

    /// The first half of the fused one-limb key switch: the gadget digits
    /// of the mask `a`, mod q and mod P, forward transformed into `dq` and
    /// `dp` (a scratch's `dq` and `dp32`, or a [`HoistedDigits`]), where
    /// [`one_limb_products_add`](Self::one_limb_products_add) reads them
    /// (and leaves them, for another key: PACK-7).
    fn one_limb_digits_forward(
        &self,
        a: &[u64],
        (dq, dp): (&mut [u64], &mut [u32]),
        ntt_p: &crate::math::Narrow,
    ) {
        let (q, p, n) = (self.q().limb(0), self.params().p(), self.n());
        let levels = self.params().gadget_levels();
        let base_log = self.params().gadget_base_log();
        let moduli = (q.value(), p.value());
        let (dq, dp) = (&mut dq[..levels * n], &mut dp[..levels * n]);
        let a = &a[..n];
        match levels {
            3 => simd::one_limb_digits::<3>(base_log, moduli, a, rows_mut(dq, n), rows_mut(dp, n)),
            _ => {
                debug_assert_eq!(levels, 4, "fused_one_limb_serves");
                simd::one_limb_digits::<4>(base_log, moduli, a, rows_mut(dq, n), rows_mut(dp, n))
            }
        }
        for (cq, cp) in dq.chunks_exact_mut(n).zip(dp.chunks_exact_mut(n)) {
            self.ntt_q.forward(cq);
            ntt_p.fwd(cp);
        }
    }

    /// The second half: the key products of the transformed digits
    /// (`dq`, `dp`: a scratch's own or a [`HoistedDigits`]) with `key` into
    /// the accumulators, their inverse transforms and the division by P,
    /// adding the switched `ct` (its body `ct.b`) to `out`.
    #[allow(clippy::too_many_arguments)]
    fn one_limb_products_add(
        &self,
        key: NarrowKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        (dq, dp): (&[u64], &[u32]),
        (acc_q, acc_p32): (&mut [Vec<u64>; 2], &mut [Vec<u32>; 2]),
        ntt_p: &crate::math::Narrow,
        body_slots: Option<(usize, &SlotInverse, &SlotInverse)>,
    ) {
        let (q, p, n) = (self.q().limb(0), self.params().p(), self.n());
        let levels = self.params().gadget_levels();
        let (dq, dp) = (&dq[..levels * n], &dp[..levels * n]);
        let [acc_aq, acc_bq] = &mut *acc_q;
        let [acc_ap, acc_bp] = &mut *acc_p32;
        fn rows<T, const L: usize>(v: &[T], n: usize) -> [&[T]; L] {
            std::array::from_fn(|j| &v[j * n..(j + 1) * n])
        }
        fn keys<T, const L: usize>(k: &[Vec<T>]) -> [&[T]; L] {
            std::array::from_fn(|j| &k[j][..])
        }
        let NarrowKey {
            a_q: ka_q,
            b_q: kb_q,
            a_p: ka_p,
            b_p: kb_p,
        } = key;
        let p = p.value();
        match levels {
            3 => {
                simd::key_product_solinas::<3>(
                    rows(dq, n),
                    (keys(ka_q), keys(kb_q)),
                    acc_aq,
                    acc_bq,
                );
                simd::key_product_small::<3>(
                    p,
                    rows(dp, n),
                    (keys(ka_p), keys(kb_p)),
                    acc_ap,
                    acc_bp,
                );
            }
            _ => {
                debug_assert_eq!(levels, 4, "fused_one_limb_serves");
                simd::key_product_solinas::<4>(
                    rows(dq, n),
                    (keys(ka_q), keys(kb_q)),
                    acc_aq,
                    acc_bq,
                );
                simd::key_product_small::<4>(
                    p,
                    rows(dp, n),
                    (keys(ka_p), keys(kb_p)),
                    acc_ap,
                    acc_bp,
                );
            }
        }
        // The inverse transforms mod P in 32-bit words, which the division
        // by P reads as they are; of the mask only when the body is read at
        // slots.
        let parts = if body_slots.is_some() { 1 } else { 2 };
        for acc in acc_p32.iter_mut().take(parts) {
            ntt_p.inv(acc);
        }
        for acc in acc_q.iter_mut().take(parts) {
            self.ntt_q.backward_unnormalized(acc);
        }
        let [acc_ap, acc_bp] = &*acc_p32;
        let Some((slots, read_q, read_p)) = body_slots else {
            return self.mod_down_add_all(ct, out, &*acc_q, [&acc_ap[..], &acc_bp[..]]);
        };
        // The mask in full, the body at the multiples of N/M (PACK-6): its
        // accumulators read there, then divided by the same kernel.
        let consts = simd::ModDown {
            q: q.value(),
            p,
            p_inv: self.rns_ks.p_inv[0],
        };
        let [acc_aq, acc_bq] = &*acc_q;
        let ops = simd::ModDownOperands {
            aq: acc_aq,
            bq: &[],
            ap: &acc_ap[..],
            bp: &[],
            ct_b: &[],
            out_a: &mut out.a[..n],
            out_b: &mut [],
        };
        simd::mod_down_add(consts, ops, false);
        const M: usize = crate::math::slots::MAX_SLOTS;
        let (mut bq, mut bp) = ([0u64; M], [0u64; M]);
        read_q.read(acc_bq, &mut bq[..slots]);
        read_p.read(&acc_p32[1], &mut bp[..slots]);
        let stride = n / slots;
        let (mut ct_b, mut out_b) = ([0u64; M], [0u64; M]);
        for k in 0..slots {
            ct_b[k] = ct.b[k * stride];
            out_b[k] = out.b[k * stride];
        }
        let (zeros, mut unused) = ([0u64; M], [0u64; M]);
        let ops = simd::ModDownOperands {
            aq: &zeros[..slots],
            bq: &bq[..slots],
            ap: &zeros[..slots],
            bp: &bp[..slots],
            ct_b: &ct_b[..slots],
            out_a: &mut unused[..slots],
            out_b: &mut out_b[..slots],
        };
        simd::mod_down_add(consts, ops, true);
        for (k, &b) in out_b[..slots].iter().enumerate() {
            out.b[k * stride] = b;
        }
    }

    /// `KS_g(τ_g(ct))`: the automorphism applied homomorphically.
    pub fn apply_galois(&self, key: &GaloisKey, ct: &Ciphertext) -> Ciphertext {
        let twisted = ct.automorphism(self.q(), key.g);
        let mut out = self.zero_ciphertext();
        let mut scratch =
            KeySwitchScratch::new(self.n(), self.params().gadget_levels(), self.limbs());
        self.key_switch_add(key, &twisted, &mut out, &mut scratch);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::{Kernels, SOLINAS};
    use proptest::prelude::*;

    /// The multi-limb key switch as first written (per-coefficient Garner
    /// through `RnsModulus::compose`, i128 digits, `from_i64`, division by
    /// P with `Modulus` ops): the exact reference for the kernels.
    fn key_switch_add_reference(
        ctx: &Context,
        key: &GaloisKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
    ) {
        let (q, p, n) = (ctx.q(), ctx.params().p(), ctx.n());
        let levels = ctx.params().gadget_levels();
        let dec = ctx.decomposer();
        let mut digits = vec![vec![0i64; n]; levels];
        let mut tmp = [0i64; 64];
        for i in 0..n {
            dec.digits_centered(q.centered(q.coefficient(&ct.a, n, i)), &mut tmp[..levels]);
            for (row, &d) in digits.iter_mut().zip(&tmp[..levels]) {
                row[i] = d;
            }
        }
        let limbs = q.len();
        let (mut acc_aq, mut acc_bq) = (vec![0; n * limbs], vec![0; n * limbs]);
        let (mut acc_ap, mut acc_bp) = (vec![0; n], vec![0; n]);
        for (j, digits) in digits.iter().enumerate() {
            let mut dq = vec![0u64; n * limbs];
            for (c, m) in dq.chunks_exact_mut(n).zip(q.limbs()) {
                for (o, &d) in c.iter_mut().zip(digits) {
                    *o = m.from_i64(d);
                }
            }
            let mut dp: Vec<u64> = digits.iter().map(|&d| p.from_i64(d)).collect();
            ctx.ntt_q.forward(&mut dq);
            ctx.ntt_p.forward(&mut dp);
            ctx.ntt_q.mul_accumulate(&mut acc_aq, &dq, &key.a_q[j]);
            ctx.ntt_q.mul_accumulate(&mut acc_bq, &dq, &key.b_q[j]);
            let mut wide = vec![];
            ctx.ntt_p
                .mul_accumulate(&mut acc_ap, &dp, key.a_p.row64(j, &mut wide));
            ctx.ntt_p
                .mul_accumulate(&mut acc_bp, &dp, key.b_p.row64(j, &mut wide));
        }
        ctx.ntt_q.backward_unnormalized(&mut acc_aq);
        ctx.ntt_q.backward_unnormalized(&mut acc_bq);
        ctx.ntt_p.backward_unnormalized(&mut acc_ap);
        ctx.ntt_p.backward_unnormalized(&mut acc_bp);
        for (l, &m) in q.limbs().iter().enumerate() {
            let p_inv = m.inv(p.value()).unwrap();
            let mod_down = |xq: u64, xp: u64| m.mul(m.sub(xq, m.from_i64(p.centered(xp))), p_inv);
            for i in 0..n {
                let k = l * n + i;
                let a = mod_down(acc_aq[k], acc_ap[i]);
                let b = mod_down(acc_bq[k], acc_bp[i]);
                out.a[k] = m.sub(out.a[k], a);
                out.b[k] = m.add(out.b[k], m.sub(ct.b[k], b));
            }
        }
    }

    /// Uniformly random residues, limb-major, for `q` at degree `n`.
    fn random_residues(q: RnsModulus, n: usize, rng: &mut crate::rng::Csprng) -> Vec<u64> {
        let mut v = vec![0u64; n * q.len()];
        for (c, m) in v.chunks_exact_mut(n).zip(q.limbs()) {
            rng.fill_uniform(c, m.value());
        }
        v
    }

    /// The key switch of `set` against the reference on uniformly random
    /// ciphertexts (every residue, not only small phases) added to a random
    /// output, for two Galois elements.
    fn key_switch_matches_the_reference(set: &str) {
        let ctx = Context::new(crate::params::ParameterSet::shipped(set).unwrap());
        let (q, n) = (ctx.q(), ctx.n());
        let mut rng = crate::rng::Csprng::from_seed([7; 16]);
        let sk = super::super::SecretKey::generate(&ctx, &mut rng);
        for g in [3, 2 * n - 1] {
            let key = super::super::SeededGaloisKey::generate(&ctx, &sk, g, &mut rng).expand(&ctx);
            let ct = Ciphertext {
                a: random_residues(q, n, &mut rng),
                b: random_residues(q, n, &mut rng),
                n,
            };
            let start = Ciphertext {
                a: random_residues(q, n, &mut rng),
                b: random_residues(q, n, &mut rng),
                n,
            };
            let (mut fast, mut reference) = (start.clone(), start.clone());
            let mut scratch = KeySwitchScratch::new(n, ctx.params().gadget_levels(), q.len());
            ctx.key_switch_add(&key, &ct, &mut fast, &mut scratch);
            key_switch_add_reference(&ctx, &key, &ct, &mut reference);
            assert!(
                fast == reference,
                "{set}, g = {g}: the kernels differ from the reference"
            );
            assert!(fast != start);
        }
    }

    // PACK-7: the images of one ciphertext formed from one shared gadget
    // decomposition are, word for word, what each key's own key switch
    // gives (the transformed digits survive every key's products), on the
    // fused one-limb path (b16, wide) and the per-level one (s16).
    #[test]
    fn shared_images_equal_their_own_key_switches() {
        for set in ["b16", "wide", "s16"] {
            let ctx = Context::new(crate::params::ParameterSet::shipped(set).unwrap());
            let (q, n) = (ctx.q(), ctx.n());
            let mut rng = crate::rng::Csprng::from_seed([11; 16]);
            let sk = super::super::SecretKey::generate(&ctx, &mut rng);
            let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
            let keys = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
            let levels: Vec<u32> = (1..=ctx.params().shared_pack_levels()).collect();
            assert!(levels.len() >= 2, "{set}");
            let ct = Ciphertext {
                a: random_residues(q, n, &mut rng),
                b: random_residues(q, n, &mut rng),
                n,
            };
            let shared = ctx.apply_galois_shared(&keys, &levels, &ct);
            assert_eq!(shared.len(), levels.len(), "{set}");
            for (&l, image) in levels.iter().zip(&shared) {
                let hoisted = keys.hoisted_for_level(l);
                assert_eq!(hoisted.g(), (1 << l) + 1, "{set}");
                let mut own = ctx.zero_ciphertext();
                let mut scratch = KeySwitchScratch::new(n, ctx.params().gadget_levels(), q.len());
                ctx.key_switch_add(&hoisted.key, &ct, &mut own, &mut scratch);
                assert!(
                    own.automorphism(q, hoisted.g()) == *image,
                    "{set}, level {l}: the shared decomposition changed the image"
                );
                // The same image from digits hoisted once and read by a
                // key switch of its own (the split generations of PACK-7);
                // the first level's key hoists them, as the packer does.
                let digits = ctx.hoist_digits(keys.hoisted_for_level(levels[0]), &ct);
                assert_eq!(digits.is_some(), q.len() == 1, "{set}");
                let mut work = ctx.zero_ciphertext();
                let from_hoisted =
                    ctx.key_switch_image(digits.as_ref(), hoisted, &ct, &mut work, &mut scratch);
                assert!(
                    from_hoisted == *image,
                    "{set}, level {l}: the hoisted digits changed the image"
                );
            }
            assert!(shared[0] != shared[1], "{set}");
        }
    }

    // SIMD-1: the fused one-limb path and the per-level path are the same
    // key switch, bit for bit, on every set the fused path serves.
    #[test]
    fn fused_one_limb_key_switch_matches_the_per_level_one() {
        for set in ["b8", "b16", "b24", "wide"] {
            let ctx = Context::new(crate::params::ParameterSet::shipped(set).unwrap());
            let (q, n, levels) = (ctx.q(), ctx.n(), ctx.params().gadget_levels());
            assert!(
                ctx.rns_ks.fused_one_limb_serves(ctx.params().p(), levels),
                "{set}"
            );
            let mut rng = crate::rng::Csprng::from_seed([9; 16]);
            let sk = super::super::SecretKey::generate(&ctx, &mut rng);
            let key = super::super::SeededGaloisKey::generate(&ctx, &sk, 5, &mut rng).expand(&ctx);
            let mut a = random_residues(q, n, &mut rng);
            // The centring edges and the ends of [0, q).
            let qv = q.limb(0).value();
            a[..4].copy_from_slice(&[0, qv / 2, qv / 2 + 1, qv - 1]);
            let ct = Ciphertext {
                a,
                b: random_residues(q, n, &mut rng),
                n,
            };
            let start = Ciphertext {
                a: random_residues(q, n, &mut rng),
                b: random_residues(q, n, &mut rng),
                n,
            };
            let (mut fused, mut per_level) = (start.clone(), start.clone());
            let mut scratch = KeySwitchScratch::new(n, levels, q.len());
            let (p32, narrow) = ctx.one_limb_plan(&key).expect("the fused path serves");
            ctx.one_limb_digits_forward(&ct.a, (&mut scratch.dq, &mut scratch.dp32), p32);
            let (digits, acc) = scratch.digits_and_accumulators();
            ctx.one_limb_products_add(narrow, &ct, &mut fused, digits, acc, p32, None);
            ctx.key_switch_add_rns(&key, &ct, &mut per_level, &mut scratch);
            assert!(fused == per_level, "{set}: the fused path differs");
            assert!(fused != start);
        }
    }

    // PARAM-8, SIMD-1: on s16 the vectorised multi-limb key switch (the
    // two-limb CRT and digit kernels, the division by P, the Solinas
    // accumulate) is bit for bit the reference one.
    #[test]
    fn s16_key_switch_matches_the_reference() {
        key_switch_matches_the_reference("s16");
    }

    // SIMD-1: on one limb (the b-sets' q = 2^64 − 2^32 + 1, gadgets 22×3
    // and wide's 16×4) the one-word digit kernels, the digit residues and
    // the division by P are bit for bit the reference key switch.
    #[test]
    fn one_limb_key_switch_matches_the_reference() {
        for set in ["b8", "b16", "wide"] {
            key_switch_matches_the_reference(set);
        }
    }

    /// Residues mod q that stress the one-word digit kernels: 0, ⌊q/2⌋,
    /// ⌊q/2⌋ + 1, q − 1, and centred values whose digits sit at ±2^(B−1)
    /// (the rounding edge) in every position.
    fn one_limb_edges(q: u64, b: u32, levels: usize) -> Vec<u64> {
        let mut v = vec![0, q / 2, q / 2 + 1, q - 1];
        let half = 1i128 << (b - 1);
        for j in 0..levels as u32 {
            let shift = (b * j).min(62);
            for y in [
                half << shift,
                -(half << shift),
                (half - 1) << shift,
                -((half + 1) << shift),
            ] {
                if y.unsigned_abs() <= (q / 2) as u128 {
                    v.push(y.rem_euclid(q as i128) as u64);
                }
            }
            // Every digit at the edge: y = Σ 2^(B−1)·2^(Bk), k ≤ j.
            let all: i128 = (0..=j).map(|k| half << (b * k).min(126)).sum();
            for y in [all, -all] {
                if y.unsigned_abs() <= (q / 2) as u128 {
                    v.push(y.rem_euclid(q as i128) as u64);
                }
            }
        }
        v
    }

    proptest! {
        // PARAM-8, SIMD-1: the two-limb CRT and digit kernels give every
        // coefficient the digits `digits_centered` gives its centred
        // integer, at s16's gadget and others covering 126 bits.
        #[test]
        fn crt2_digit_kernels_match_digits_centered(
            seed in any::<[u8; 16]>(),
            (b, l) in prop_oneof![Just((32u32, 4usize)), Just((22, 6)), Just((26, 5))],
            swap in any::<bool>(),
        ) {
            let limbs = if swap { [0x3fff_ffff_ffff_0001, SOLINAS] } else { [SOLINAS, 0x3fff_ffff_ffff_0001] };
            let q = RnsModulus::new(&limbs).unwrap();
            let p = Modulus::new(2305843009213317121).unwrap();
            let ks = RnsKeySwitch::new(q, p, b);
            prop_assert!(ks.crt2.is_some());
            let dec = Decomposer::covering(b, l, q.bits()).unwrap();
            let n = 67; // not a multiple of any vector width
            let mut rng = crate::rng::Csprng::from_seed(seed);
            let mut a = random_residues(q, n, &mut rng);
            // The edges: 0, ⌊q/2⌋, ⌊q/2⌋ + 1, q − 1.
            let half = q.value() / 2;
            for (i, x) in [0, half, half + 1, q.value() - 1].into_iter().enumerate() {
                q.set_coefficient(&mut a, n, i, x);
            }
            let mut rows = vec![vec![0i64; n]; l];
            let mut y = vec![0u64; 2 * n];
            ks.decompose_two_limbs(dec, &a, n, &mut rows, &mut y);
            let mut expect = vec![0i64; l];
            for i in 0..n {
                dec.digits_centered(q.centered(q.coefficient(&a, n, i)), &mut expect);
                let got: Vec<i64> = rows.iter().map(|r| r[i]).collect();
                prop_assert_eq!(&got, &expect, "coefficient {}", i);
            }
            // The generic path agrees too.
            let mut generic = vec![vec![0i64; n]; l];
            ks.decompose::<2>(dec, &a, n, &mut generic);
            prop_assert_eq!(&generic, &rows);
        }

        // SIMD-1: the division-by-P kernel is the reference formula, for
        // random accumulators, on both s16 limbs.
        #[test]
        fn mod_down_kernel_matches_field_ops(seed in any::<[u8; 16]>()) {
            let q = RnsModulus::new(&[SOLINAS, 0x3fff_ffff_ffff_0001]).unwrap();
            let p = Modulus::new(2305843009213317121).unwrap();
            let ks = RnsKeySwitch::new(q, p, 32);
            prop_assert!(ks.small_p && ks.small_digits);
            let n = 45;
            let mut rng = crate::rng::Csprng::from_seed(seed);
            for (l, &m) in q.limbs().iter().enumerate() {
                let mut draw = |modulus: u64| {
                    let mut v = vec![0u64; n];
                    rng.fill_uniform(&mut v, modulus);
                    v
                };
                let (aq, bq, ct_b) = (draw(m.value()), draw(m.value()), draw(m.value()));
                let (mut ap, bp) = (draw(p.value()), draw(p.value()));
                // The edges of the centring: P/2 and P/2 + 1, 0 and P − 1.
                ap[..4].copy_from_slice(&[p.value() / 2, p.value() / 2 + 1, 0, p.value() - 1]);
                let (out_a, out_b) = (draw(m.value()), draw(m.value()));
                let (mut fast_a, mut fast_b) = (out_a.clone(), out_b.clone());
                ks.mod_down_add(l, m, p, (&aq, &bq), (&ap, &bp), &ct_b, (&mut fast_a, &mut fast_b));
                let p_inv = m.inv(p.value()).unwrap();
                let down = |xq: u64, xp: u64| m.mul(m.sub(xq, m.from_i64(p.centered(xp))), p_inv);
                for i in 0..n {
                    prop_assert_eq!(fast_a[i], m.sub(out_a[i], down(aq[i], ap[i])));
                    prop_assert_eq!(fast_b[i], m.add(out_b[i], m.sub(ct_b[i], down(bq[i], bp[i]))));
                }
            }
        }

        // SIMD-1: digits to residues, branch-free, is `from_i64`.
        #[test]
        fn digits_mod_matches_from_i64(
            d in proptest::collection::vec(-(1i64 << 32)..=(1i64 << 32), 1..40),
            m in prop_oneof![Just(SOLINAS), Just(0x3fff_ffff_ffff_0001u64), Just(2305843009213317121u64)],
        ) {
            let m = Modulus::new(m).unwrap();
            let mut out = vec![0u64; d.len()];
            simd::digits_mod(m.value(), &mut out, &d);
            let expect: Vec<u64> = d.iter().map(|&x| m.from_i64(x)).collect();
            prop_assert_eq!(out, expect);
        }
    }

    proptest! {
        // SIMD-1: the one-limb digit kernels (dispatched and scalar) give
        // every residue the digits `Decomposer::digits` gives it, for the
        // b-sets' gadgets and others covering 64 bits, on the Solinas
        // prime and on other one-limb moduli (q < 2^63, q near 2^64), at
        // the edges and the digits' rounding edges.
        #[test]
        fn one_limb_digit_kernels_match_digits(
            seed in any::<[u8; 16]>(),
            (b, l) in prop_oneof![Just((22u32, 3usize)), Just((16, 4)), Just((32, 2)), Just((21, 4)), Just((1, 64))],
            q in prop_oneof![Just(SOLINAS), Just(0x3fff_ffff_ffff_0001u64), Just(u64::MAX - 58)],
        ) {
            let m = Modulus::new(q).unwrap();
            let dec = Decomposer::new(b, l).unwrap();
            let mut a = one_limb_edges(q, b, l);
            let mut rng = crate::rng::Csprng::from_seed(seed);
            let mut random = vec![0u64; 67];
            rng.fill_uniform(&mut random, q);
            a.extend(random);
            let n = a.len();
            let ks = RnsKeySwitch::new(RnsModulus::single(m), Modulus::new(2147377153).unwrap(), b);
            let mut rows = vec![vec![0i64; n]; l];
            ks.decompose_one_limb(dec, m, &a, n, &mut rows);
            // The scalar kernels as the fallback runs them.
            let mut scalar = vec![vec![0i64; n]; l];
            {
                let (rest, digit_rows) = scalar.split_last_mut().unwrap();
                simd::centre_kernel(q, &a, rest);
                for row in digit_rows {
                    simd::digit_step_one_kernel(b, rest, row);
                }
            }
            prop_assert_eq!(&scalar, &rows);
            let mut expect = vec![0i64; l];
            for (i, &x) in a.iter().enumerate() {
                dec.digits(m, x, &mut expect);
                let got: Vec<i64> = rows.iter().map(|r| r[i]).collect();
                prop_assert_eq!(&got, &expect, "x = {}", x);
            }
        }

        // SIMD-1: the centring kernel is `Modulus::centered`.
        #[test]
        fn centre_kernel_matches_centered(
            x in proptest::collection::vec(any::<u64>(), 1..40),
            q in prop_oneof![Just(SOLINAS), Just(0x3fff_ffff_ffff_0001u64), Just(u64::MAX - 58), Just(2147377153u64)],
        ) {
            let m = Modulus::new(q).unwrap();
            let mut a: Vec<u64> = x.iter().map(|&v| v % q).collect();
            a.extend([0, q / 2, q / 2 + 1, q - 1]);
            let (mut fast, mut scalar) = (vec![0i64; a.len()], vec![0i64; a.len()]);
            simd::centre(q, &a, &mut fast);
            simd::centre_kernel(q, &a, &mut scalar);
            let expect: Vec<i64> = a.iter().map(|&v| m.centered(v)).collect();
            prop_assert_eq!(&fast, &expect);
            prop_assert_eq!(&scalar, &expect);
        }

        // SIMD-1: the division by P on the b-sets' one limb (Solinas q,
        // P ≈ 2^31), dispatched, portable and every vector build, from
        // 64-bit and from 32-bit words mod P, is the formula the one-limb
        // key switch used with `Modulus` ops, at the centring edges and
        // the ends of [0, q).
        #[test]
        fn one_limb_mod_down_matches_field_ops(seed in any::<[u8; 16]>()) {
            let m = Modulus::new(SOLINAS).unwrap();
            let p = Modulus::new(2147377153).unwrap();
            let ks = RnsKeySwitch::new(RnsModulus::single(m), p, 22);
            prop_assert!(ks.small_p && ks.small_digits && ks.p_inv[0].splittable());
            let n = 45;
            let mut rng = crate::rng::Csprng::from_seed(seed);
            let mut draw = |modulus: u64| {
                let mut v = vec![0u64; n];
                rng.fill_uniform(&mut v, modulus);
                v
            };
            let (mut aq, bq, mut ct_b) = (draw(SOLINAS), draw(SOLINAS), draw(SOLINAS));
            let (mut ap, mut bp) = (draw(p.value()), draw(p.value()));
            let edges_p = [p.value() / 2, p.value() / 2 + 1, 0, p.value() - 1];
            ap[..4].copy_from_slice(&edges_p);
            bp[4..8].copy_from_slice(&edges_p);
            aq[..4].copy_from_slice(&[0, SOLINAS - 1, 0, SOLINAS - 1]);
            ct_b[..2].copy_from_slice(&[0, SOLINAS - 1]);
            let (mut out_a, mut out_b) = (draw(SOLINAS), draw(SOLINAS));
            out_a[..2].copy_from_slice(&[0, SOLINAS - 1]);
            out_b[2..4].copy_from_slice(&[0, SOLINAS - 1]);
            // The accumulators mod P as 64-bit words and as the narrow
            // transform's 32-bit ones (P < 2^31): every kernel reads both.
            let narrow = |v: &[u64]| v.iter().map(|&x| u32::try_from(x).unwrap()).collect::<Vec<_>>();
            let (ap32, bp32) = (narrow(&ap), narrow(&bp));
            let (mut fast_a, mut fast_b) = (out_a.clone(), out_b.clone());
            ks.mod_down_add(0, m, p, (&aq, &bq), (&ap, &bp), &ct_b, (&mut fast_a, &mut fast_b));
            let (mut fast32_a, mut fast32_b) = (out_a.clone(), out_b.clone());
            ks.mod_down_add(0, m, p, (&aq, &bq), (&ap32, &bp32), &ct_b, (&mut fast32_a, &mut fast32_b));
            let consts = simd::ModDown { q: SOLINAS, p: p.value(), p_inv: ks.p_inv[0] };
            let mut builds = Vec::new();
            builds.push(("dispatched, 32-bit P words".to_string(), fast32_a, fast32_b));
            let (mut va, mut vb) = (out_a.clone(), out_b.clone());
            simd::mod_down_kernel::<u64, true, true>(consts, simd::ModDownOperands {
                aq: &aq, bq: &bq, ap: &ap, bp: &bp, ct_b: &ct_b, out_a: &mut va, out_b: &mut vb,
            });
            builds.push(("portable".to_string(), va, vb));
            let (mut va, mut vb) = (out_a.clone(), out_b.clone());
            simd::mod_down_kernel::<u32, true, true>(consts, simd::ModDownOperands {
                aq: &aq, bq: &bq, ap: &ap32, bp: &bp32, ct_b: &ct_b, out_a: &mut va, out_b: &mut vb,
            });
            builds.push(("portable, 32-bit P words".to_string(), va, vb));
            #[cfg(target_arch = "x86_64")]
            for isa in vector_builds() {
                let (mut va, mut vb) = (out_a.clone(), out_b.clone());
                let ops = simd::ModDownOperands {
                    aq: &aq, bq: &bq, ap: &ap, bp: &bp, ct_b: &ct_b,
                    out_a: &mut va, out_b: &mut vb,
                };
                let (mut na, mut nb) = (out_a.clone(), out_b.clone());
                let ops32 = simd::ModDownOperands {
                    aq: &aq, bq: &bq, ap: &ap32, bp: &bp32, ct_b: &ct_b,
                    out_a: &mut na, out_b: &mut nb,
                };
                // SAFETY: `vector_builds` detected the features on this CPU.
                unsafe {
                    match isa {
                        Kernels::Avx512 => {
                            simd::mod_down_solinas_avx512::<u64, true>(consts, ops);
                            simd::mod_down_solinas_avx512::<u32, true>(consts, ops32);
                        }
                        _ => {
                            simd::mod_down_solinas_avx2::<u64, true>(consts, ops);
                            simd::mod_down_solinas_avx2::<u32, true>(consts, ops32);
                        }
                    }
                }
                builds.push((format!("{isa}"), va, vb));
                builds.push((format!("{isa}, 32-bit P words"), na, nb));
            }
            let p_inv = m.inv(p.value()).unwrap();
            let down = |xq: u64, xp: u64| m.mul(m.sub(xq, m.from_i64(p.centered(xp))), p_inv);
            for i in 0..n {
                let a = m.sub(out_a[i], down(aq[i], ap[i]));
                let b = m.add(out_b[i], m.sub(ct_b[i], down(bq[i], bp[i])));
                prop_assert_eq!((fast_a[i], fast_b[i]), (a, b), "coefficient {}", i);
                for (isa, va, vb) in &builds {
                    prop_assert_eq!((va[i], vb[i]), (a, b), "{} build, coefficient {}", isa, i);
                }
            }
        }

        // SIMD-1: digits to residues mod the Solinas q and mod P at the
        // b-sets' digit range (|d| ≤ 2^22), dispatched and scalar, is
        // `from_i64`, with the edges 0 and ±2^21, ±2^22.
        #[test]
        fn one_limb_digits_mod_matches_from_i64(
            d in proptest::collection::vec(-(1i64 << 22)..=(1i64 << 22), 1..40),
            m in prop_oneof![Just(SOLINAS), Just(2147377153u64)],
        ) {
            let m = Modulus::new(m).unwrap();
            let mut d = d;
            d.extend([0, 1 << 21, -(1 << 21), 1 << 22, -(1 << 22), -1]);
            let (mut fast, mut scalar) = (vec![0u64; d.len()], vec![0u64; d.len()]);
            simd::digits_mod(m.value(), &mut fast, &d);
            simd::digits_kernel(m.value(), &mut scalar, &d);
            let expect: Vec<u64> = d.iter().map(|&x| m.from_i64(x)).collect();
            prop_assert_eq!(&fast, &expect);
            prop_assert_eq!(&scalar, &expect);
        }
    }

    /// `L` rows of `n` residues mod `m` from `rng`, with the edges 0 and
    /// m − 1 in every row (so max digits meet max keys) and an all-zero
    /// stretch.
    fn edge_rows(m: u64, n: usize, count: usize, rng: &mut crate::rng::Csprng) -> Vec<Vec<u64>> {
        (0..count)
            .map(|_| {
                let mut v = vec![0u64; n];
                rng.fill_uniform(&mut v, m);
                v[..6].copy_from_slice(&[0, m - 1, m - 1, 1, m / 2, m / 2 + 1]);
                v[6..10].fill(0);
                v
            })
            .collect()
    }

    /// The key product as the per-level path forms it: accumulate passes
    /// with `Modulus` ops.
    fn key_product_reference(m: Modulus, d: &[Vec<u64>], k: &[Vec<u64>]) -> Vec<u64> {
        let mut acc = vec![0u64; d[0].len()];
        for (dj, kj) in d.iter().zip(k) {
            for ((a, &x), &y) in acc.iter_mut().zip(dj).zip(kj) {
                *a = m.add(*a, m.mul(x, y));
            }
        }
        acc
    }

    fn rows<T, const L: usize>(v: &[Vec<T>]) -> [&[T]; L] {
        std::array::from_fn(|j| &v[j][..])
    }

    /// The vector builds of the kernels this CPU can run, widest first.
    #[cfg(target_arch = "x86_64")]
    fn vector_builds() -> Vec<Kernels> {
        let mut builds = Vec::new();
        if crate::math::kernels() == Kernels::Avx512 {
            builds.push(Kernels::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            builds.push(Kernels::Avx2);
        }
        builds
    }

    fn key_product_matches<const L: usize>(seed: [u8; 16], p: u64) -> Result<(), TestCaseError> {
        let n = 67; // not a multiple of any vector width
        let mut rng = crate::rng::Csprng::from_seed(seed);
        for m in [SOLINAS, p] {
            let modulus = Modulus::new(m).unwrap();
            let (d, ka, kb) = (
                edge_rows(m, n, L, &mut rng),
                edge_rows(m, n, L, &mut rng),
                edge_rows(m, n, L, &mut rng),
            );

            let expect = (
                key_product_reference(modulus, &d, &ka),
                key_product_reference(modulus, &d, &kb),
            );
            let (mut fast_a, mut fast_b) = (vec![1u64; n], vec![1u64; n]);
            let (mut scalar_a, mut scalar_b) = (vec![1u64; n], vec![1u64; n]);
            if m == SOLINAS {
                simd::key_product_solinas::<L>(
                    rows(&d),
                    (rows(&ka), rows(&kb)),
                    &mut fast_a,
                    &mut fast_b,
                );
                simd::key_product_solinas_kernel::<L>(
                    rows(&d),
                    (rows(&ka), rows(&kb)),
                    &mut scalar_a,
                    &mut scalar_b,
                );
                // The widening kernel, whichever one dispatch picks here.
                let (mut wide_a, mut wide_b) = (vec![1u64; n], vec![1u64; n]);
                simd::key_product_solinas_wide_kernel::<L>(
                    rows(&d),
                    (rows(&ka), rows(&kb)),
                    &mut wide_a,
                    &mut wide_b,
                );
                prop_assert_eq!((&wide_a, &wide_b), (&expect.0, &expect.1), "wide kernel");
                // Every vector build this CPU runs, not only the dispatched one.
                #[cfg(target_arch = "x86_64")]
                for isa in vector_builds() {
                    let (mut va, mut vb) = (vec![1u64; n], vec![1u64; n]);
                    let (d, k) = (rows(&d), (rows(&ka), rows(&kb)));
                    // SAFETY: `vector_builds` detected the features on this CPU.
                    unsafe {
                        match isa {
                            Kernels::Avx512 => {
                                simd::key_product_solinas_avx512::<L>(d, k, &mut va, &mut vb)
                            }
                            _ => simd::key_product_solinas_avx2::<L>(d, k, &mut va, &mut vb),
                        }
                    }
                    prop_assert_eq!((&va, &vb), (&expect.0, &expect.1), "{} build", isa);
                }
                #[cfg(target_arch = "x86_64")]
                if simd::has_ifma() {
                    let (mut va, mut vb) = (vec![1u64; n], vec![1u64; n]);
                    let (d, k) = (rows(&d), (rows(&ka), rows(&kb)));
                    // SAFETY: `has_ifma` detected the features on this CPU.
                    unsafe { simd::key_product_solinas_ifma::<L>(d, k, &mut va, &mut vb) };
                    prop_assert_eq!((&va, &vb), (&expect.0, &expect.1), "IFMA build");
                }
            } else {
                // The digits and the key rows mod P in 32-bit words, as the
                // fused path keeps them.
                let narrow = |rows: &[Vec<u64>]| -> Vec<Vec<u32>> {
                    rows.iter()
                        .map(|r| r.iter().map(|&x| u32::try_from(x).unwrap()).collect())
                        .collect()
                };
                let (d32, ka, kb) = (narrow(&d), narrow(&ka), narrow(&kb));
                let (mut f32a, mut f32b) = (vec![1u32; n], vec![1u32; n]);
                let (mut s32a, mut s32b) = (vec![1u32; n], vec![1u32; n]);
                simd::key_product_small::<L>(
                    m,
                    rows(&d32),
                    (rows(&ka), rows(&kb)),
                    &mut f32a,
                    &mut f32b,
                );
                simd::key_product_small_kernel::<L>(
                    m,
                    rows(&d32),
                    (rows(&ka), rows(&kb)),
                    &mut s32a,
                    &mut s32b,
                );
                let widen = |v: &[u32]| -> Vec<u64> { v.iter().map(|&x| x as u64).collect() };
                #[cfg(target_arch = "x86_64")]
                for isa in vector_builds() {
                    let (mut va, mut vb) = (vec![1u32; n], vec![1u32; n]);
                    let (d, k) = (rows(&d32), (rows(&ka), rows(&kb)));
                    // SAFETY: `vector_builds` detected the features on this CPU.
                    unsafe {
                        match isa {
                            Kernels::Avx512 => {
                                simd::key_product_small_avx512::<L>(m, d, k, &mut va, &mut vb)
                            }
                            _ => simd::key_product_small_avx2::<L>(m, d, k, &mut va, &mut vb),
                        }
                    }
                    prop_assert_eq!((widen(&va), widen(&vb)), expect.clone(), "{} build", isa);
                }
                (fast_a, fast_b, scalar_a, scalar_b) =
                    (widen(&f32a), widen(&f32b), widen(&s32a), widen(&s32b));
            }
            prop_assert_eq!((&fast_a, &fast_b), (&expect.0, &expect.1), "modulus {}", m);
            prop_assert_eq!(
                (&scalar_a, &scalar_b),
                (&expect.0, &expect.1),
                "modulus {}",
                m
            );
        }
        Ok(())
    }

    proptest! {
        // SIMD-1: the fused key products (Solinas q; P < 2^32 summed
        // lazily), dispatched and scalar, are the accumulate passes' sums,
        // for 3 and 4 levels, with zeros and m − 1 (the largest products)
        // in every row; P = the b-sets' and the largest prime below 2^32
        // that 3 levels allow.
        #[test]
        fn key_products_match_accumulate_passes(
            seed in any::<[u8; 16]>(),
            p in prop_oneof![Just(2147377153u64), Just(2479620097u64)],
        ) {
            key_product_matches::<3>(seed, p)?;
            if 4 * (p as u128 - 1) * (p as u128 - 1) <= u64::MAX as u128 {
                key_product_matches::<4>(seed, p)?;
            }
        }

        // SIMD-1: the one-pass digit kernel (dispatched and scalar) writes
        // the residues mod q and mod P of `Decomposer::digits`.
        #[test]
        fn digit_residue_kernels_match_digits(
            seed in any::<[u8; 16]>(),
            (b, l) in prop_oneof![Just((22u32, 3usize)), Just((16, 4))],
        ) {
            let (q, p) = (Modulus::new(SOLINAS).unwrap(), Modulus::new(2147377153).unwrap());
            let dec = Decomposer::new(b, l).unwrap();
            let mut a = one_limb_edges(SOLINAS, b, l);
            let mut rng = crate::rng::Csprng::from_seed(seed);
            let mut random = vec![0u64; 67];
            rng.fill_uniform(&mut random, SOLINAS);
            a.extend(random);
            let n = a.len();
            let moduli = (SOLINAS, p.value());
            // Rows of n words, digit by digit.
            fn run<const L: usize>(fast: bool, b: u32, m: (u64, u64), a: &[u64]) -> (Vec<u64>, Vec<u32>) {
                let n = a.len();
                let (mut rq, mut rp) = (vec![0u64; L * n], vec![0u32; L * n]);
                let (out_q, out_p) = (rows_mut::<_, L>(&mut rq, n), rows_mut::<_, L>(&mut rp, n));
                if fast {
                    simd::one_limb_digits(b, m, a, out_q, out_p);
                } else {
                    simd::one_limb_digits_kernel(b, m, a, out_q, out_p);
                }
                (rq, rp)
            }
            let run = |fast: bool| match l {
                3 => run::<3>(fast, b, moduli, &a),
                _ => run::<4>(fast, b, moduli, &a),
            };
            let (fast, scalar) = (run(true), run(false));
            prop_assert_eq!(&fast, &scalar);
            let mut expect = vec![0i64; l];
            for (i, &x) in a.iter().enumerate() {
                dec.digits(q, x, &mut expect);
                for (j, &d) in expect.iter().enumerate() {
                    prop_assert_eq!(fast.0[j * n + i], q.from_i64(d), "x = {}, digit {}", x, j);
                    prop_assert_eq!(fast.1[j * n + i] as u64, p.from_i64(d), "x = {}, digit {}", x, j);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn digits_recompose_exactly(x in 0..SOLINAS, (b, l) in prop_oneof![Just((22u32, 3usize)), Just((16, 4)), Just((32, 2))]) {
            let q = Modulus::new(SOLINAS).unwrap();
            let dec = Decomposer::new(b, l).unwrap();
            let mut d = vec![0i64; l];
            dec.digits(q, x, &mut d);
            let mut acc: i128 = 0;
            for (j, &dj) in d.iter().enumerate() {
                acc += dj as i128 * (1i128 << (b as usize * j));
            }
            prop_assert_eq!(q.from_i128(acc), x);
            for &dj in &d[..l - 1] {
                prop_assert!(dj >= -(1i64 << (b - 1)) && dj < (1i64 << (b - 1)));
            }
            prop_assert!(d[l - 1].unsigned_abs() <= 1u64 << (64 - b * (l as u32 - 1)).min(63));
        }
    }

    proptest! {
        // PARAM-8: over a two-limb q (s16's, 126 bits) the digits of the
        // CRT-recomposed, centred value recompose to it exactly as an
        // integer, hence modulo every limb, with every digit but the top
        // in [−2^(B−1), 2^(B−1)) and the top one at most 2^B.
        #[test]
        fn digits_recompose_exactly_over_the_full_modulus(
            x in any::<u128>(),
            (b, l) in prop_oneof![Just((32u32, 4usize)), Just((22, 6)), Just((26, 5))],
        ) {
            let q = RnsModulus::new(&[SOLINAS, 0x3fff_ffff_ffff_0001]).unwrap();
            let x = x % q.value();
            let dec = Decomposer::covering(b, l, q.bits()).unwrap();
            let mut d = vec![0i64; l];
            let y = q.centered(x);
            dec.digits_centered(y, &mut d);
            let mut acc: i128 = 0;
            for &dj in d.iter().rev() {
                acc = (acc << b) + dj as i128;
            }
            prop_assert_eq!(acc, y);
            prop_assert_eq!(q.from_i128(acc), x);
            for &dj in &d[..l - 1] {
                prop_assert!(dj >= -(1i64 << (b - 1)) && dj < (1i64 << (b - 1)));
            }
            prop_assert!(d[l - 1].unsigned_abs() <= 1u64 << b);
            // The residues the key switch feeds each limb are the digits'.
            for m in q.limbs() {
                let mut r = 0u64;
                for &dj in d.iter().rev() {
                    r = m.add(m.mul(r, m.pow(2, b as u64)), m.from_i64(dj));
                }
                prop_assert_eq!(r, m.reduce_u128(x));
            }
        }
    }

    #[test]
    fn covering_gadgets_must_reach_the_modulus() {
        assert!(Decomposer::covering(32, 4, 126).is_some());
        assert!(Decomposer::covering(32, 3, 126).is_none());
        assert!(Decomposer::covering(21, 6, 127).is_none());
        assert!(Decomposer::covering(32, 5, 129).is_none());
    }

    #[test]
    fn decomposer_rejects_degenerate_gadgets() {
        assert!(Decomposer::new(0, 64).is_none());
        assert!(Decomposer::new(33, 2).is_none());
        assert!(Decomposer::new(16, 0).is_none());
        assert!(Decomposer::new(16, 3).is_none());
        assert!(Decomposer::new(16, 4).is_some());
    }
}
