//! The negacyclic transform modulo the Goldilocks prime q = 2^64 − 2^32 + 1
//! with AVX-512 kernels (SIMD-1): the b-sets' ciphertext modulus.
//!
//! A Cooley–Tukey tree of radix-2 splits `X^2t − r → (X^t − w)(X^t + w)`
//! with w² = r. Two facts about q make it cheaper than a generic 64-bit
//! transform:
//! - 2 has order 192 (2^96 ≡ −1), so every root of unity of order dividing
//!   64 is ±2^s with s < 96: the first five splits (w of order 4…64)
//!   multiply by shifts and the Solinas folding (2^64 ≡ 2^32 − 1) instead of
//!   a 64×64-bit product. Of each split's two square roots the tree takes
//!   the positive power of two, which only reorders the evaluations.
//! - The last three splits act inside blocks of eight: an 8×8 transpose of
//!   each group of 64 values puts the blocks in lanes, so they run as
//!   vertical butterflies with per-lane twiddles, and the output is left
//!   transposed (the evaluation order is private, see [`super::NttPlan`]).

use super::{Modulus, SOLINAS};

/// 2^64 mod q.
const EPS: u64 = 0xffff_ffff;

/// One split's multiplier.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Twiddle {
    /// 2^s, s < 96.
    Shift(u32),
    /// −2^s, s < 96.
    NegShift(u32),
    /// Any other value.
    General(u64),
}

/// The transform of one power-of-two length N ≥ 64 modulo [`SOLINAS`].
pub(super) struct GoldilocksNtt {
    n: usize,
    /// Forward multipliers w of the splits with half-size t ≥ 8, one
    /// stage per t from N/2 down, one entry per block.
    fwd: Vec<Vec<Twiddle>>,
    /// The inverse multipliers 1/w, same layout.
    inv: Vec<Vec<Twiddle>>,
    /// The last three splits' w per group of 64 values: 7 lane vectors
    /// (t = 4; t = 2 for each half; t = 1 for each quarter), lane l for
    /// block l of the group.
    fwd_tail: Vec<u64>,
    /// Their inverses, same layout.
    inv_tail: Vec<u64>,
}

impl GoldilocksNtt {
    /// `None` unless `n` is a power of two in 64..=2^31.
    pub(super) fn new(n: usize) -> Option<Self> {
        if !n.is_power_of_two() || !(64..=1 << 31).contains(&n) {
            return None;
        }
        let m = Modulus::new(SOLINAS)?;
        let two_n = 2 * n as u64;
        // 7 generates the multiplicative group, so ψ has order exactly 2N.
        let psi = m.pow(7, (SOLINAS - 1) / two_n);
        let pow2: Vec<u64> = (0..96).map(|s| m.pow(2, s)).collect();
        let classify = |w: u64| {
            if let Some(s) = pow2.iter().position(|&x| x == w) {
                Twiddle::Shift(s as u32)
            } else if let Some(s) = pow2.iter().position(|&x| x == m.neg(w)) {
                Twiddle::NegShift(s as u32)
            } else {
                Twiddle::General(w)
            }
        };
        // Each block is a residue mod X^2t − ψ^e; start from X^N + 1.
        let mut roots = vec![n as u64];
        let (mut fwd, mut inv) = (Vec::new(), Vec::new());
        let (mut tail_f, mut tail_i): (Vec<Vec<u64>>, Vec<Vec<u64>>) = (Vec::new(), Vec::new());
        let mut t = n / 2;
        while t >= 1 {
            let (mut stage_f, mut stage_i) = (Vec::new(), Vec::new());
            let mut next = Vec::with_capacity(2 * roots.len());
            for &e in &roots {
                debug_assert!(e % 2 == 0);
                let mut h = e / 2;
                if matches!(classify(m.pow(psi, h)), Twiddle::NegShift(_)) {
                    h = (h + n as u64) % two_n;
                }
                let w = m.pow(psi, h);
                let w_inv = m.pow(psi, (two_n - h) % two_n);
                if t >= 8 {
                    stage_f.push(classify(w));
                    stage_i.push(classify(w_inv));
                } else {
                    stage_f.push(Twiddle::General(w));
                    stage_i.push(Twiddle::General(w_inv));
                }
                next.push(h);
                next.push((h + n as u64) % two_n);
            }
            if t >= 8 {
                fwd.push(stage_f);
                inv.push(stage_i);
            } else {
                let value = |w: &Twiddle| match *w {
                    Twiddle::General(v) => v,
                    _ => unreachable!("tail twiddles are stored as values"),
                };
                tail_f.push(stage_f.iter().map(value).collect());
                tail_i.push(stage_i.iter().map(value).collect());
            }
            roots = next;
            t /= 2;
        }
        let tail = |stages: &[Vec<u64>]| {
            let mut out = Vec::with_capacity(n / 64 * 56);
            for g in 0..n / 64 {
                // (stage, blocks of that stage per size-8 block)
                for (stage, per) in [(0, 1), (1, 2), (2, 4)] {
                    for k in 0..per {
                        out.extend((0..8).map(|l| stages[stage][per * (8 * g + l) + k]));
                    }
                }
            }
            out
        };
        Some(Self {
            n,
            fwd,
            inv,
            fwd_tail: tail(&tail_f),
            inv_tail: tail(&tail_i),
        })
    }

    /// The transform length N.
    pub(super) fn n(&self) -> usize {
        self.n
    }

    /// Whether this CPU runs the kernels (else the caller keeps tfhe-ntt).
    pub(super) fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
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
        #[cfg(target_arch = "x86_64")]
        if Self::supported() {
            // SAFETY: the feature was detected on this CPU; the length is
            // checked above.
            return unsafe { avx512::forward(self, buf) };
        }
        unreachable!("GoldilocksNtt used without AVX-512")
    }

    /// Inverse transform without the 1/N factor, in place.
    pub(super) fn backward_unnormalized(&self, buf: &mut [u64]) {
        assert_eq!(buf.len(), self.n, "buffer length is the plan's N");
        #[cfg(target_arch = "x86_64")]
        if Self::supported() {
            // SAFETY: as in `forward`.
            return unsafe { avx512::backward(self, buf) };
        }
        unreachable!("GoldilocksNtt used without AVX-512")
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
        // The tail's twiddles in block order, from the per-group lanes.
        for (stage, per, first) in [(4, 1, 0), (2, 2, 1), (1, 4, 3)] {
            let mut ws = (0..self.n / 8).flat_map(|b| {
                let (g, l) = (b / 8, b % 8);
                (0..per).map(move |k| self.fwd_tail[g * 56 + (first + k) * 8 + l])
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
mod avx512 {
    use super::{GoldilocksNtt, Twiddle, EPS, SOLINAS};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn splat(x: u64) -> __m512i {
        _mm512_set1_epi64(x as i64)
    }

    /// `a + b mod q` for a, b < q.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add(a: __m512i, b: __m512i) -> __m512i {
        let neg_b = _mm512_sub_epi64(splat(SOLINAS), b);
        let wraps = _mm512_cmpge_epu64_mask(a, neg_b);
        _mm512_mask_sub_epi64(_mm512_add_epi64(a, b), wraps, a, neg_b)
    }

    /// `a − b mod q` for a, b < q.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sub(a: __m512i, b: __m512i) -> __m512i {
        let borrow = _mm512_cmplt_epu64_mask(a, b);
        let d = _mm512_sub_epi64(a, b);
        _mm512_mask_add_epi64(d, borrow, d, splat(SOLINAS))
    }

    /// `lo + mid·2^64 + top·2^96 mod q`, reduced, for mid < 2^32 in its low
    /// half (the high half is ignored) and top < q: 2^64 ≡ 2^32 − 1 and
    /// 2^96 ≡ −1.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold(lo: __m512i, mid: __m512i, top: __m512i) -> __m512i {
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
    fn mul(x: __m512i, w: __m512i, w_hi: __m512i) -> __m512i {
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

    /// `x·2^s mod q` for x < q, s < 96 (shift counts of 64 or more give
    /// zero, which the split into lo/mid/top relies on).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_pow2(x: __m512i, s: u32) -> __m512i {
        let count = |c: i64| _mm_cvtsi64_si128(c);
        let s = s as i64;
        // x·2^s = lo + mid·2^64 + top·2^96 (mid's bits 64..128 of the product).
        let lo = _mm512_sll_epi64(x, count(s));
        let mid = _mm512_or_si512(
            _mm512_srl_epi64(x, count(64 - s)),
            _mm512_sll_epi64(x, count(s - 64)),
        );
        // top = x >> (96 − s) < 2^63 < q.
        let top = _mm512_srl_epi64(x, count(96 - s));
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

    /// `x·w` for one block's twiddle, with `split` = [`splat_split`]`(w)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn times(x: __m512i, w: Twiddle, split: (__m512i, __m512i)) -> __m512i {
        match w {
            Twiddle::Shift(s) | Twiddle::NegShift(s) => mul_pow2(x, s),
            Twiddle::General(_) => mul(x, split.0, split.1),
        }
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

    /// One block's Cooley–Tukey butterflies: (a, b) → (a + wb, a − wb).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_block(lo: &mut [u64], hi: &mut [u64], w: Twiddle) {
        let negate = matches!(w, Twiddle::NegShift(_));
        let split = splat_split(w);
        for (a, b) in lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 values.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let v = times(y, w, split);
            let (s, d) = (add(x, v), sub(x, v));
            let (s, d) = if negate { (d, s) } else { (s, d) };
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
        let negate = matches!(w_inv, Twiddle::NegShift(_));
        let split = splat_split(w_inv);
        for (a, b) in lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 values.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let d = if negate { sub(y, x) } else { sub(x, y) };
            let (s, d) = (add(x, y), times(d, w_inv, split));
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

    /// The last three forward splits on a transposed group (v[c] holds
    /// value c of the group's 8 blocks): t = 4 with twiddle vector 0, t = 2
    /// with 1 (low half) and 2 (high half), t = 1 with 3..7 by quarter.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn forward_tail(v: &mut [__m512i; 8], w: &[__m512i; 7]) {
        forward_pair(v, 0, 4, w[0]);
        forward_pair(v, 1, 5, w[0]);
        forward_pair(v, 2, 6, w[0]);
        forward_pair(v, 3, 7, w[0]);
        forward_pair(v, 0, 2, w[1]);
        forward_pair(v, 1, 3, w[1]);
        forward_pair(v, 4, 6, w[2]);
        forward_pair(v, 5, 7, w[2]);
        forward_pair(v, 0, 1, w[3]);
        forward_pair(v, 2, 3, w[4]);
        forward_pair(v, 4, 5, w[5]);
        forward_pair(v, 6, 7, w[6]);
    }

    /// [`forward_tail`] undone, without the factor 8.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn backward_tail(v: &mut [__m512i; 8], w: &[__m512i; 7]) {
        backward_pair(v, 0, 1, w[3]);
        backward_pair(v, 2, 3, w[4]);
        backward_pair(v, 4, 5, w[5]);
        backward_pair(v, 6, 7, w[6]);
        backward_pair(v, 0, 2, w[1]);
        backward_pair(v, 1, 3, w[1]);
        backward_pair(v, 4, 6, w[2]);
        backward_pair(v, 5, 7, w[2]);
        backward_pair(v, 0, 4, w[0]);
        backward_pair(v, 1, 5, w[0]);
        backward_pair(v, 2, 6, w[0]);
        backward_pair(v, 3, 7, w[0]);
    }

    /// # Safety
    /// AVX-512F is available; `buf.len() == plan.n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(plan: &GoldilocksNtt, buf: &mut [u64]) {
        let mut t = plan.n / 2;
        for stage in &plan.fwd {
            for (block, &w) in buf.chunks_exact_mut(2 * t).zip(stage) {
                let (lo, hi) = block.split_at_mut(t);
                forward_block(lo, hi, w);
            }
            t /= 2;
        }
        for (group, tw) in buf.chunks_exact_mut(64).zip(plan.fwd_tail.chunks_exact(56)) {
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
            transpose(&mut v);
            forward_tail(&mut v, &w);
            for (r, x) in v.iter().enumerate() {
                // SAFETY: as above.
                unsafe { store(group[8 * r..].as_mut_ptr(), *x) };
            }
        }
    }

    /// # Safety
    /// AVX-512F is available; `buf.len() == plan.n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(plan: &GoldilocksNtt, buf: &mut [u64]) {
        for (group, tw) in buf.chunks_exact_mut(64).zip(plan.inv_tail.chunks_exact(56)) {
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
            backward_tail(&mut v, &w);
            transpose(&mut v);
            for (r, x) in v.iter().enumerate() {
                // SAFETY: as above.
                unsafe { store(group[8 * r..].as_mut_ptr(), *x) };
            }
        }
        let mut t = 8;
        for stage in plan.inv.iter().rev() {
            for (block, &w) in buf.chunks_exact_mut(2 * t).zip(stage) {
                let (lo, hi) = block.split_at_mut(t);
                backward_block(lo, hi, w);
            }
            t *= 2;
        }
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
    // input evaluated at a distinct root of X^N + 1.
    #[test]
    fn outputs_are_evaluations_at_distinct_roots() {
        let m = field();
        let n = 64;
        let plan = GoldilocksNtt::new(n).unwrap();
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

    #[test]
    fn first_five_splits_are_shifts() {
        let plan = GoldilocksNtt::new(4096).unwrap();
        for (i, stage) in plan.fwd.iter().enumerate() {
            let shifts = stage
                .iter()
                .filter(|w| matches!(w, Twiddle::Shift(_)))
                .count();
            assert_eq!(shifts == stage.len(), i < 5, "stage {i}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        // SIMD-1: the AVX-512 kernels compute the scalar tree exactly, and
        // the inverse undoes them up to the factor N.
        #[test]
        fn kernels_match_the_scalar_tree_and_invert(
            a in values(4096),
            log_n in 6u32..=13,
        ) {
            prop_assume!(GoldilocksNtt::supported());
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
            a in values(128),
            b in values(128),
            n in prop_oneof![Just(64usize), Just(128)],
        ) {
            prop_assume!(GoldilocksNtt::supported());
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

    // N = 4096, the b-sets' degree: one random product against schoolbook.
    #[test]
    fn product_at_4096_is_the_negacyclic_product() {
        if !GoldilocksNtt::supported() {
            return;
        }
        let m = field();
        let n = 4096;
        let plan = GoldilocksNtt::new(n).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % SOLINAS
        };
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
        assert_eq!(got, negacyclic(&a, &b));
    }
}
