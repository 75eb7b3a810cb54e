//! Coefficient-domain operations on polynomials of `Z_q[X]/(X^N+1)` that the
//! protocol needs beyond products: monomial shifts and automorphisms.
//!
//! All negations are modulo `q`: `X^N = −1` must map to `q − c`, not to the
//! two's-complement negation a power-of-two library would use.

use super::Modulus;

/// `out += sign · X^e · inp` for a monomial exponent `e` taken modulo `2N`.
/// This is the workhorse of extraction and packing: every value of a
/// ciphertext is a monomial shift away from its constant coefficient.
#[inline]
pub fn monomial_mul_add(m: Modulus, out: &mut [u64], inp: &[u64], e: usize, negate: bool) {
    let n = inp.len();
    debug_assert_eq!(out.len(), n);
    let e = e % (2 * n);
    // X^e = −X^(e−N) for e ≥ N.
    let (shift, negate) = if e >= n {
        (e - n, !negate)
    } else {
        (e, negate)
    };
    // Coefficient i lands on i+shift; the ones that wrap past N change sign.
    let (head, tail) = inp.split_at(n - shift);
    let (out_low, out_high) = out.split_at_mut(shift);
    if negate {
        sub_assign(m, out_high, head);
        add_assign(m, out_low, tail);
    } else {
        add_assign(m, out_high, head);
        sub_assign(m, out_low, tail);
    }
}

/// `out += Σ ± X^e·inp` over `terms` at the multiples of `stride` only,
/// the words [`monomial_sum_block`] writes there; the other coefficients
/// are left as they are. `(X^e·f)[j] = f[j − e]`, indices mod 2N with
/// `f[i + N] = −f[i]`; N is a power of two, so the indices wrap by masking.
/// The reference for [`monomial_sum_at_slots_from_rows`], which the
/// packer's leaves use (their bodies matter only at the node's slots:
/// proofs/packing.md, Lemma 7).
pub fn monomial_sum_at_slots<'a>(
    m: Modulus,
    out: &mut [u64],
    stride: usize,
    terms: impl Iterator<Item = (&'a [u64], usize, bool)>,
) {
    let n = out.len();
    debug_assert!(n.is_power_of_two() && stride > 0 && n.is_multiple_of(stride));
    let wrap = 2 * n - 1;
    for (inp, e, negate) in terms {
        debug_assert_eq!(inp.len(), n);
        // Index of f read at output 0; output j reads j − e = start + j.
        let start = (2 * n - (e & wrap)) & wrap;
        for j in (0..n).step_by(stride) {
            let i = (start + j) & wrap;
            let x = inp[i & (n - 1)];
            out[j] = if negate ^ (i >= n) {
                m.sub(out[j], x)
            } else {
                m.add(out[j], x)
            };
        }
    }
}

/// `f` residue-major for `stride` S: `out[r·M + k] = f[r + k·S]` for
/// r < S, k < M = N/S, so the M coefficients of one residue class mod S
/// (the words a packing leaf's slots read from one image: Lemma 7 of
/// proofs/packing.md) are contiguous. `inp`, `out`: N words; S divides N.
pub fn residue_major(inp: &[u64], stride: usize, out: &mut [u64]) {
    let n = inp.len();
    debug_assert!(out.len() == n && stride > 0 && n.is_multiple_of(stride));
    let slots = n / stride;
    for (k, chunk) in inp.chunks_exact(stride).enumerate() {
        for (r, &x) in chunk.iter().enumerate() {
            out[r * slots + k] = x;
        }
    }
}

/// `out[k·S] = Σ ± (X^e·f)[k·S]` for k < N/S over `terms`, each f given
/// [`residue_major`] for the same S (`stride`); the other coefficients of
/// `out` are left as they are, and what `out` held at k·S is ignored. The
/// words of [`monomial_sum_at_slots`] from zero: output k·S reads
/// f̃[r + (c + k)·S] with −e ≡ r + c·S (mod 2N), r < S, so one term reads
/// one row of M contiguous words (negated past the row's end, where the
/// index passes N), where the strided reads missed the cache once per slot.
pub fn monomial_sum_at_slots_from_rows<'a>(
    m: Modulus,
    out: &mut [u64],
    stride: usize,
    terms: impl Iterator<Item = (&'a [u64], usize, bool)> + Clone,
) {
    let n = out.len();
    debug_assert!(n.is_power_of_two() && stride > 0 && n.is_multiple_of(stride));
    let (wrap, slots, q) = (2 * n - 1, n / stride, m.value());
    let row_of = |e: usize| {
        let start = (2 * n - (e & wrap)) & wrap;
        (start & (stride - 1), start / stride)
    };
    for k in 0..slots {
        out[k * stride] = 0;
    }
    let mut ahead = terms.clone().skip(PREFETCH_AHEAD);
    for (rows, e, negate) in terms {
        debug_assert_eq!(rows.len(), n);
        if let Some((later, e, _)) = ahead.next() {
            let r = row_of(e).0;
            for k in (0..slots).step_by(8) {
                prefetch(&later[r * slots + k]);
            }
        }
        let (r, c) = row_of(e);
        let row = &rows[r * slots..(r + 1) * slots];
        let negate = u64::from(negate).wrapping_neg();
        for k in 0..slots {
            let col = (c + k) & (2 * slots - 1);
            let flip = negate ^ u64::from(col >= slots).wrapping_neg();
            out[k * stride] = add_flipped(q, out[k * stride], row[col & (slots - 1)], flip);
        }
    }
}

/// Terms ahead whose words are prefetched while one is summed.
const PREFETCH_AHEAD: usize = 4;

/// `a + x` (flip = 0) or `a − x` (flip = all ones) mod q, for a, x < q,
/// without branches: the caller's loads miss the cache, and a
/// mispredicted sign or carry cancelled the loads in flight after it
/// (benches/README.md). With flip all ones, y = !x + q + 1 = q − x ∈ (0, q];
/// then a + y < 2q, less q if it carried or reached q.
#[inline(always)]
fn add_flipped(q: u64, a: u64, x: u64, flip: u64) -> u64 {
    let y = (x ^ flip).wrapping_add(flip & q.wrapping_add(1));
    let (sum, carry) = a.overflowing_add(y);
    let reduce = u64::from(carry | (sum >= q)).wrapping_neg();
    sum.wrapping_sub(q & reduce)
}

/// A hint that `x` will be read soon (no effect on the result).
#[inline(always)]
fn prefetch(x: &u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing architecturally; SSE is part
        // of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const u64).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// [`monomial_mul_add`] restricted to the output coefficients
/// `lo..lo + out.len()`: `out` is that block of the full output, `inp` the
/// whole input polynomial (N coefficients). Summing several terms block by
/// block keeps the block in L1 between terms (the packer's leaves:
/// benches/README.md, "what bounds them"). The block must lie inside `0..N`.
#[inline]
pub fn monomial_mul_add_block(
    m: Modulus,
    out: &mut [u64],
    lo: usize,
    inp: &[u64],
    e: usize,
    negate: bool,
) {
    for_each_block_piece(out, lo, inp, e, negate, |o, i, subtract| {
        if subtract {
            sub_assign(m, o, i);
        } else {
            add_assign(m, o, i);
        }
    });
}

/// Calls `f(out_piece, inp_piece, subtract)` on the (at most two)
/// non-empty contiguous pieces of `± X^e · inp` on the output block
/// `out = lo..lo + out.len()` of an N-coefficient polynomial (`inp` whole).
#[inline(always)]
fn for_each_block_piece(
    out: &mut [u64],
    lo: usize,
    inp: &[u64],
    e: usize,
    negate: bool,
    mut f: impl FnMut(&mut [u64], &[u64], bool),
) {
    let (n, len) = (inp.len(), out.len());
    let hi = lo + len;
    debug_assert!(hi <= n);
    let e = e % (2 * n);
    let (shift, negate) = if e >= n {
        (e - n, !negate)
    } else {
        (e, negate)
    };
    // Output j < shift receives −inp[j − shift + N] (it wrapped past X^N),
    // output j ≥ shift receives +inp[j − shift].
    // An empty piece's start may fall outside 0..N (wrapping): empty pieces
    // are skipped before slicing.
    let split = shift.clamp(lo, hi);
    let pieces = [
        (0..split - lo, (lo + n).wrapping_sub(shift), !negate),
        (split - lo..len, split.wrapping_sub(shift), negate),
    ];
    for (range, src, subtract) in pieces {
        if !range.is_empty() {
            let src = &inp[src..src + range.len()];
            f(&mut out[range], src, subtract);
        }
    }
}

/// `out += Σ ± X^e · inp` over `terms` on the output block
/// `lo..lo + out.len()`, the same words as [`monomial_mul_add_block`] term
/// by term (exact modular sums). Where the CPU has AVX2 but not AVX-512 and
/// q > 2^63, the block is summed lazily (in a shifted representation,
/// reduced once): half the vector operations per term of the reduced add
/// and subtract, which are what bounds the packer's leaves there
/// (benches/README.md, "On AVX2: leaves and the key product").
pub fn monomial_sum_block<'a>(
    m: Modulus,
    out: &mut [u64],
    lo: usize,
    terms: impl Iterator<Item = (&'a [u64], usize, bool)>,
) {
    sum_block(m, out, lo, terms, false)
}

/// [`monomial_sum_block`] that overwrites the block: `out` becomes the sum
/// whatever it held. The first term is written rather than added, which
/// spares the leaves of a pack zeroing their buffers (`pack`).
pub fn monomial_sum_block_into<'a>(
    m: Modulus,
    out: &mut [u64],
    lo: usize,
    terms: impl Iterator<Item = (&'a [u64], usize, bool)>,
) {
    sum_block(m, out, lo, terms, true)
}

#[inline(always)]
fn sum_block<'a>(
    m: Modulus,
    out: &mut [u64],
    lo: usize,
    mut terms: impl Iterator<Item = (&'a [u64], usize, bool)>,
    overwrite: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if lazy::serves(m) {
        // SAFETY: `serves` detected AVX2 on this CPU.
        return unsafe { lazy::sum_avx2(m.value(), out, lo, terms, overwrite) };
    }
    if overwrite {
        let Some((inp, e, negate)) = terms.next() else {
            return out.fill(0);
        };
        for_each_block_piece(out, lo, inp, e, negate, |o, i, subtract| {
            if subtract {
                for (o, &x) in o.iter_mut().zip(i) {
                    *o = m.neg(x);
                }
            } else {
                o.copy_from_slice(i);
            }
        });
    }
    for (inp, e, negate) in terms {
        monomial_mul_add_block(m, out, lo, inp, e, negate);
    }
}

/// Block sums in a lazy, shifted representation (SIMD-1), for AVX2, whose
/// 64-bit lanes have only a signed compare. The accumulator x ∈ [0, 2^64)
/// is kept as x ⊕ 2^63, so one signed compare tells whether adding a
/// reduced term y < q wrapped past 2^64; a wrap is folded back by adding
/// c = 2^64 − q (≡ 2^64 mod q), which cannot wrap again: x + y < 2^64 + q,
/// so x + y − 2^64 + c < q + c = 2^64. A borrow in x − y is folded by
/// subtracting c, which cannot borrow: x − y + 2^64 > 2^64 − q = c. Every
/// word stays congruent to the exact sum, and one subtraction of q at the
/// end reduces it (2^64 < 2q). 4 operations per term and lane, against 8
/// for the reduced add.
mod lazy {
    use super::for_each_block_piece;
    #[cfg(target_arch = "x86_64")]
    use super::Modulus;

    const SIGN: u64 = 1 << 63;

    /// AVX2 without AVX-512 (where the reduced kernels' masked compares
    /// are as cheap), and a modulus above 2^63.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(super) fn serves(m: Modulus) -> bool {
        m.value() > SIGN
            && std::arch::is_x86_feature_detected!("avx2")
            && !std::arch::is_x86_feature_detected!("avx512f")
    }

    #[inline(always)]
    pub(super) fn add(acc: &mut [u64], inp: &[u64], c: u64) {
        for (a, &y) in acc.iter_mut().zip(inp) {
            let r = a.wrapping_add(y);
            let wrapped = (r as i64) < (*a as i64);
            *a = r.wrapping_add(if wrapped { c } else { 0 });
        }
    }

    #[inline(always)]
    pub(super) fn sub(acc: &mut [u64], inp: &[u64], c: u64) {
        for (a, &y) in acc.iter_mut().zip(inp) {
            let r = a.wrapping_sub(y);
            let borrowed = (r as i64) > (*a as i64);
            *a = r.wrapping_sub(if borrowed { c } else { 0 });
        }
    }

    /// Enters the shifted representation, sums, and leaves it reduced.
    /// With `overwrite`, the first term enters it in place of `out` (as
    /// y or q − y; q stands for 0, which the final reduction handles).
    #[inline(always)]
    pub(super) fn sum<'a>(
        q: u64,
        out: &mut [u64],
        lo: usize,
        mut terms: impl Iterator<Item = (&'a [u64], usize, bool)>,
        overwrite: bool,
    ) {
        let c = q.wrapping_neg();
        if !overwrite {
            for x in out.iter_mut() {
                *x ^= SIGN;
            }
        } else if let Some((inp, e, negate)) = terms.next() {
            for_each_block_piece(out, lo, inp, e, negate, |o, i, subtract| {
                if subtract {
                    for (o, &y) in o.iter_mut().zip(i) {
                        *o = (q - y) ^ SIGN;
                    }
                } else {
                    for (o, &y) in o.iter_mut().zip(i) {
                        *o = y ^ SIGN;
                    }
                }
            });
        } else {
            return out.fill(0);
        }
        for (inp, e, negate) in terms {
            for_each_block_piece(out, lo, inp, e, negate, |o, i, subtract| {
                if subtract {
                    sub(o, i, c);
                } else {
                    add(o, i, c);
                }
            });
        }
        for x in out.iter_mut() {
            let y = *x ^ SIGN;
            *x = if y >= q { y - q } else { y };
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_avx2<'a>(
        q: u64,
        out: &mut [u64],
        lo: usize,
        terms: impl Iterator<Item = (&'a [u64], usize, bool)>,
        overwrite: bool,
    ) {
        sum(q, out, lo, terms, overwrite)
    }
}

/// `out = X^e · inp`.
pub fn monomial_mul(m: Modulus, out: &mut [u64], inp: &[u64], e: usize) {
    out.fill(0);
    monomial_mul_add(m, out, inp, e, false);
}

/// `out += inp` coefficient-wise. The hot loop of packing: dispatched at run
/// time to an AVX-512 or AVX2 build of the same branch-free code.
#[inline]
pub fn add_assign(m: Modulus, out: &mut [u64], inp: &[u64]) {
    simd::dispatch_add(m.value(), out, inp);
}

/// `out −= inp` coefficient-wise, dispatched like [`add_assign`].
#[inline]
pub fn sub_assign(m: Modulus, out: &mut [u64], inp: &[u64]) {
    simd::dispatch_sub(m.value(), out, inp);
}

/// `e ← e + X^h·o` and `d ← e − X^h·o` (with the `e` it held) in one pass,
/// for 0 ≤ h < N: a packing node's sum and difference of its children
/// (proofs/packing.md, Alg. 2), where separate passes copied E and read O
/// twice. The words of [`monomial_mul_add`] with and without `negate`.
pub fn add_sub_monomial(m: Modulus, e: &mut [u64], d: &mut [u64], o: &[u64], h: usize) {
    let n = o.len();
    debug_assert!(h < n && e.len() == n && d.len() == n);
    // Coefficient j ≥ h receives +o[j − h]; j < h receives −o[j − h + N],
    // which swaps the sum and the difference.
    let (e_low, e_high) = e.split_at_mut(h);
    let (d_low, d_high) = d.split_at_mut(h);
    let (head, tail) = o.split_at(n - h);
    simd::dispatch_add_sub::<false>(m.value(), e_high, d_high, head);
    simd::dispatch_add_sub::<true>(m.value(), e_low, d_low, tail);
}

/// [`add_sub_monomial`] at the multiples of h only, its difference
/// written through τ_g: `e[j] ← e[j] + (X^h·o)[j]` and `t[τ_g(j)] ←
/// ±(e[j] − (X^h·o)[j])` for j ≡ 0 mod h (τ_g maps these to themselves:
/// g is odd and h divides N); every other word of `e` and `t` is left as it
/// is. A packing node's bodies, which matter only at its slots (PACK-6,
/// proofs/packing.md, Lemma 7).
pub fn add_sub_monomial_twisted_at_slots(
    m: Modulus,
    e: &mut [u64],
    t: &mut [u64],
    o: &[u64],
    h: usize,
    g: usize,
) {
    let n = o.len();
    debug_assert!(h > 0 && h < n && n.is_multiple_of(h) && g % 2 == 1);
    for j in (0..n).step_by(h) {
        let (sum, diff) = if j >= h {
            (m.add(e[j], o[j - h]), m.sub(e[j], o[j - h]))
        } else {
            // X^h·o at 0 is −o[N − h].
            (m.sub(e[j], o[n - h]), m.add(e[j], o[n - h]))
        };
        e[j] = sum;
        put_twisted(m, t, j, g, diff);
    }
}

/// Branch-free kernels, compiled once per instruction set (SIMD-1).
mod simd {
    /// `x + i mod q` for x, i < q, branch-free.
    #[inline(always)]
    fn add_word(q: u64, x: u64, i: u64) -> u64 {
        let s = x.wrapping_add(i);
        let t = s.wrapping_sub(q);
        // The true sum is ≥ q when it wrapped (s < i) or when s ≥ q.
        if (s < i) | (s >= q) {
            t
        } else {
            s
        }
    }

    /// `x − i mod q` for x, i < q, branch-free.
    #[inline(always)]
    fn sub_word(q: u64, x: u64, i: u64) -> u64 {
        let d = x.wrapping_sub(i);
        if x < i {
            d.wrapping_add(q)
        } else {
            d
        }
    }

    #[inline(always)]
    fn add_kernel(q: u64, out: &mut [u64], inp: &[u64]) {
        for (o, &i) in out.iter_mut().zip(inp) {
            *o = add_word(q, *o, i);
        }
    }

    #[inline(always)]
    fn sub_kernel(q: u64, out: &mut [u64], inp: &[u64]) {
        for (o, &i) in out.iter_mut().zip(inp) {
            *o = sub_word(q, *o, i);
        }
    }

    /// `(e, d) ← (e + o, e − o)`, or `(e − o, e + o)` with `swap`.
    #[inline(always)]
    fn add_sub_kernel<const SWAP: bool>(q: u64, e: &mut [u64], d: &mut [u64], o: &[u64]) {
        for ((e, d), &i) in e.iter_mut().zip(d.iter_mut()).zip(o) {
            let (s, t) = (add_word(q, *e, i), sub_word(q, *e, i));
            (*e, *d) = if SWAP { (t, s) } else { (s, t) };
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn add_sub_avx512<const SWAP: bool>(q: u64, e: &mut [u64], d: &mut [u64], o: &[u64]) {
        add_sub_kernel::<SWAP>(q, e, d, o)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_sub_avx2<const SWAP: bool>(q: u64, e: &mut [u64], d: &mut [u64], o: &[u64]) {
        add_sub_kernel::<SWAP>(q, e, d, o)
    }

    #[inline]
    pub(super) fn dispatch_add_sub<const SWAP: bool>(
        q: u64,
        e: &mut [u64],
        d: &mut [u64],
        o: &[u64],
    ) {
        debug_assert!(e.len() == o.len() && d.len() == o.len());
        debug_assert!(e.iter().chain(o).all(|&x| x < q));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the features were detected on this CPU.
                return unsafe { add_sub_avx512::<SWAP>(q, e, d, o) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { add_sub_avx2::<SWAP>(q, e, d, o) };
            }
        }
        add_sub_kernel::<SWAP>(q, e, d, o)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn add_avx512(q: u64, out: &mut [u64], inp: &[u64]) {
        add_kernel(q, out, inp)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn sub_avx512(q: u64, out: &mut [u64], inp: &[u64]) {
        sub_kernel(q, out, inp)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_avx2(q: u64, out: &mut [u64], inp: &[u64]) {
        add_kernel(q, out, inp)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sub_avx2(q: u64, out: &mut [u64], inp: &[u64]) {
        sub_kernel(q, out, inp)
    }

    #[inline]
    pub(super) fn dispatch_add(q: u64, out: &mut [u64], inp: &[u64]) {
        debug_assert!(out.iter().chain(inp).all(|&x| x < q));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the features were detected on this CPU.
                return unsafe { add_avx512(q, out, inp) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { add_avx2(q, out, inp) };
            }
        }
        add_kernel(q, out, inp)
    }

    #[inline]
    pub(super) fn dispatch_sub(q: u64, out: &mut [u64], inp: &[u64]) {
        debug_assert!(out.iter().chain(inp).all(|&x| x < q));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the features were detected on this CPU.
                return unsafe { sub_avx512(q, out, inp) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { sub_avx2(q, out, inp) };
            }
        }
        sub_kernel(q, out, inp)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::math::{Modulus, SOLINAS};
        use proptest::prelude::*;

        proptest! {
            // SIMD-1: every instruction-set variant agrees with the scalar field ops.
            #[test]
            fn kernels_agree_with_field_ops(
                a in proptest::collection::vec(0..SOLINAS, 1..40),
                seed in proptest::collection::vec(0..SOLINAS, 40),
            ) {
                let m = Modulus::new(SOLINAS).unwrap();
                let b = &seed[..a.len()];
                let add: Vec<u64> = a.iter().zip(b).map(|(&x, &y)| m.add(x, y)).collect();
                let sub: Vec<u64> = a.iter().zip(b).map(|(&x, &y)| m.sub(x, y)).collect();
                let mut o = a.clone();
                add_kernel(SOLINAS, &mut o, b);
                prop_assert_eq!(&o, &add);
                let mut o = a.clone();
                sub_kernel(SOLINAS, &mut o, b);
                prop_assert_eq!(&o, &sub);
                let mut o = a.clone();
                dispatch_add(SOLINAS, &mut o, b);
                prop_assert_eq!(&o, &add);
                let mut o = a.clone();
                dispatch_sub(SOLINAS, &mut o, b);
                prop_assert_eq!(&o, &sub);
                let (mut o, mut d) = (a.clone(), vec![0; a.len()]);
                dispatch_add_sub::<false>(SOLINAS, &mut o, &mut d, b);
                prop_assert_eq!((&o, &d), (&add, &sub));
                let (mut o, mut d) = (a.clone(), vec![0; a.len()]);
                dispatch_add_sub::<true>(SOLINAS, &mut o, &mut d, b);
                prop_assert_eq!((&o, &d), (&sub, &add));
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    let mut o = a.clone();
                    unsafe { add_avx2(SOLINAS, &mut o, b) };
                    prop_assert_eq!(&o, &add);
                    let mut o = a.clone();
                    unsafe { sub_avx2(SOLINAS, &mut o, b) };
                    prop_assert_eq!(&o, &sub);
                    let (mut o, mut d) = (a.clone(), vec![0; a.len()]);
                    unsafe { add_sub_avx2::<false>(SOLINAS, &mut o, &mut d, b) };
                    prop_assert_eq!((&o, &d), (&add, &sub));
                    let (mut o, mut d) = (a.clone(), vec![0; a.len()]);
                    unsafe { add_sub_avx2::<true>(SOLINAS, &mut o, &mut d, b) };
                    prop_assert_eq!((&o, &d), (&sub, &add));
                }
            }
        }
    }
}

/// `out ← c · out` coefficient-wise modulo `m`; `c` need not be reduced.
pub fn scalar_mul_assign(m: Modulus, out: &mut [u64], c: u64) {
    for o in out.iter_mut() {
        *o = m.mul(*o, c);
    }
}

/// `out = τ_g(inp)`, the ring automorphism `X ↦ X^g` for odd `g`: a signed
/// permutation of the coefficients.
pub fn automorphism(m: Modulus, out: &mut [u64], inp: &[u64], g: usize) {
    debug_assert!(g % 2 == 1 && out.len() == inp.len());
    for (i, &c) in inp.iter().enumerate() {
        put_twisted(m, out, i, g, c);
    }
}

/// `τ_g(X^i)·c` into `out`: `out[i·g mod 2N] = c`, negated past N (X^N = −1).
#[inline(always)]
fn put_twisted(m: Modulus, out: &mut [u64], i: usize, g: usize, c: u64) {
    let n = out.len();
    let j = (i * g) & (2 * n - 1);
    if j < n {
        out[j] = c;
    } else {
        out[j - n] = m.neg(c);
    }
}

/// Schoolbook negacyclic product over the integers; the reference the fast
/// paths are tested against.
pub fn negacyclic_mul_i64(a: &[i64], b: &[i64]) -> Vec<i128> {
    let n = a.len();
    assert_eq!(b.len(), n, "operands must have the same length");
    let mut out = vec![0i128; n];
    for (i, &x) in a.iter().enumerate() {
        if x == 0 {
            continue;
        }
        for (j, &y) in b.iter().enumerate() {
            let k = i + j;
            let p = x as i128 * y as i128;
            if k < n {
                out[k] += p;
            } else {
                out[k - n] -= p;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::SOLINAS;
    use proptest::prelude::*;

    fn m() -> Modulus {
        Modulus::new(SOLINAS).unwrap()
    }

    /// Words near 0 and near 2^64 (reduced by the test's modulus), where
    /// sums wrap and differences borrow, or anywhere.
    fn extreme() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4, (u64::MAX - (1 << 33))..=u64::MAX, any::<u64>()]
    }

    proptest! {
        #[test]
        fn monomial_mul_matches_schoolbook(
            a in proptest::collection::vec(-50i64..50, 32),
            e in 0usize..64,
        ) {
            let m = m();
            let inp: Vec<u64> = a.iter().map(|&x| m.from_i64(x)).collect();
            let mut out = vec![0u64; 32];
            monomial_mul(m, &mut out, &inp, e);
            let mut mono = vec![0i64; 32];
            let (pos, sign) = if e >= 32 { (e - 32, -1) } else { (e, 1) };
            mono[pos] = sign;
            let expect = negacyclic_mul_i64(&a, &mono);
            let got: Vec<i128> = out.iter().map(|&x| m.centered(x) as i128).collect();
            prop_assert_eq!(got, expect);
        }

        // The blocked rotate-add (the packer's leaves) is the whole one cut
        // into blocks: terms of any exponent in 0..2N (0, N and the block
        // edges included by the range), blocks of any size, even not
        // dividing N, give the same output word for word.
        #[test]
        fn blocked_monomial_mul_add_equals_the_whole(
            start in proptest::collection::vec(0..SOLINAS, 64),
            inputs in proptest::collection::vec(proptest::collection::vec(0..SOLINAS, 64), 1..5),
            terms in proptest::collection::vec((0usize..128, any::<bool>()), 4),
            block in 1usize..70,
        ) {
            let m = m();
            let mut whole = start.clone();
            let mut blocked = start;
            for (k, &(e, negate)) in terms.iter().enumerate() {
                monomial_mul_add(m, &mut whole, &inputs[k % inputs.len()], e, negate);
            }
            for (b, chunk) in blocked.chunks_mut(block).enumerate() {
                for (k, &(e, negate)) in terms.iter().enumerate() {
                    let inp = &inputs[k % inputs.len()];
                    monomial_mul_add_block(m, chunk, b * block, inp, e, negate);
                }
            }
            prop_assert_eq!(blocked, whole);
        }

        // A packing node's one-pass sum and difference are the two monomial
        // adds it replaced, word for word, for any shift 0 ≤ h < N (both
        // pieces, the wrapped one swapping sum and difference), with words
        // where sums wrap past q and differences borrow.
        #[test]
        fn add_sub_monomial_equals_two_monomial_adds(
            e in proptest::collection::vec(extreme(), 64),
            o in proptest::collection::vec(extreme(), 64),
            h in 0usize..64,
        ) {
            let m = m();
            let e: Vec<u64> = e.iter().map(|&x| x % SOLINAS).collect();
            let o: Vec<u64> = o.iter().map(|&x| x % SOLINAS).collect();
            let (mut sum, mut diff) = (e.clone(), e.clone());
            monomial_mul_add(m, &mut sum, &o, h, false);
            monomial_mul_add(m, &mut diff, &o, h, true);
            let (mut got_sum, mut got_diff) = (e, vec![0u64; 64]);
            add_sub_monomial(m, &mut got_sum, &mut got_diff, &o, h);
            prop_assert_eq!(got_sum, sum);
            prop_assert_eq!(got_diff, diff);
        }

        // PACK-6: the bodies' step at the slots writes, at the multiples of
        // h, the words of the full sum and of the twisted full difference,
        // and leaves every other word as it was (g odd, h | N).
        #[test]
        fn twisted_step_at_slots_equals_the_full_one_there(
            e in proptest::collection::vec(0..SOLINAS, 64),
            o in proptest::collection::vec(0..SOLINAS, 64),
            stale in proptest::collection::vec(0..SOLINAS, 64),
            log_h in 0u32..6,
            g in (0usize..64).prop_map(|k| 2 * k + 1),
        ) {
            let (m, h) = (m(), 1usize << log_h);
            let (mut sum, mut diff, mut twisted) = (e.clone(), vec![0u64; 64], vec![0u64; 64]);
            add_sub_monomial(m, &mut sum, &mut diff, &o, h);
            automorphism(m, &mut twisted, &diff, g);
            let (mut got_sum, mut got_twisted) = (e.clone(), stale.clone());
            add_sub_monomial_twisted_at_slots(m, &mut got_sum, &mut got_twisted, &o, h, g);
            for j in 0..64 {
                let slot = j % h == 0;
                prop_assert_eq!(got_sum[j], if slot { sum[j] } else { e[j] });
                prop_assert_eq!(got_twisted[j], if slot { twisted[j] } else { stale[j] });
            }
        }

        // SIMD-1: the lazy block sum (shifted representation, wraps folded
        // by 2^64 − q) gives the reduced words of term by term, for moduli
        // above 2^63, with values at both ends of the range so that wraps
        // and borrows pile up over many terms; and so does the dispatched
        // sum on whatever this CPU runs.
        #[test]
        fn lazy_block_sum_equals_term_by_term(
            q in prop_oneof![Just(SOLINAS), Just(u64::MAX - 58), Just((1u64 << 63) + 29)],
            start in proptest::collection::vec(extreme(), 64),
            inputs in proptest::collection::vec(proptest::collection::vec(extreme(), 64), 1..4),
            terms in proptest::collection::vec((0usize..128, any::<bool>()), 1..40),
            block in 1usize..70,
        ) {
            let m = Modulus::new(q).unwrap();
            let reduce = |v: &[u64]| v.iter().map(|&x| x % q).collect::<Vec<u64>>();
            let inputs: Vec<Vec<u64>> = inputs.iter().map(|v| reduce(v)).collect();
            let mut whole = reduce(&start);
            let (mut lazy_sum, mut dispatched) = (whole.clone(), whole.clone());
            for (k, &(e, negate)) in terms.iter().enumerate() {
                monomial_mul_add(m, &mut whole, &inputs[k % inputs.len()], e, negate);
            }
            let term = |k: usize| (&inputs[k % inputs.len()][..], terms[k].0, terms[k].1);
            for (b, chunk) in lazy_sum.chunks_mut(block).enumerate() {
                lazy::sum(q, chunk, b * block, (0..terms.len()).map(term), false);
            }
            for (b, chunk) in dispatched.chunks_mut(block).enumerate() {
                monomial_sum_block(m, chunk, b * block, (0..terms.len()).map(term));
            }
            prop_assert_eq!(&lazy_sum, &whole);
            prop_assert_eq!(&dispatched, &whole);
        }

        // The overwriting sums (a pack's leaves in recycled buffers) give
        // the sum from zero whatever the block held (`garbage` is not
        // reduced), lazily and dispatched, and zero for no terms.
        #[test]
        fn overwriting_block_sums_ignore_what_the_block_held(
            q in prop_oneof![Just(SOLINAS), Just(u64::MAX - 58), Just((1u64 << 63) + 29)],
            garbage in proptest::collection::vec(any::<u64>(), 64),
            inputs in proptest::collection::vec(proptest::collection::vec(extreme(), 64), 1..4),
            terms in proptest::collection::vec((0usize..128, any::<bool>()), 0..12),
            block in 1usize..70,
        ) {
            let m = Modulus::new(q).unwrap();
            let inputs: Vec<Vec<u64>> =
                inputs.iter().map(|v| v.iter().map(|&x| x % q).collect()).collect();
            let mut whole = vec![0; 64];
            for (k, &(e, negate)) in terms.iter().enumerate() {
                monomial_mul_add(m, &mut whole, &inputs[k % inputs.len()], e, negate);
            }
            let term = |k: usize| (&inputs[k % inputs.len()][..], terms[k].0, terms[k].1);
            let (mut lazy_sum, mut dispatched) = (garbage.clone(), garbage.clone());
            for (b, chunk) in lazy_sum.chunks_mut(block).enumerate() {
                lazy::sum(q, chunk, b * block, (0..terms.len()).map(term), true);
            }
            for (b, chunk) in dispatched.chunks_mut(block).enumerate() {
                monomial_sum_block_into(m, chunk, b * block, (0..terms.len()).map(term));
            }
            prop_assert_eq!(&lazy_sum, &whole);
            prop_assert_eq!(&dispatched, &whole);
        }

        // PACK-6: the sum read at the multiples of a stride is the whole
        // sum's words there, for exponents anywhere in 0..4N and moduli on
        // both sides of 2^63 (values near 0 and q among the inputs: the
        // rows' branch-free sign and carry), and nothing else is written.
        #[test]
        fn sum_at_the_slots_equals_the_whole(
            q in prop_oneof![Just(SOLINAS), Just(u64::MAX - 58), Just((1u64 << 63) + 29), Just(998_244_353u64)],
            start in proptest::collection::vec(extreme(), 64),
            inputs in proptest::collection::vec(proptest::collection::vec(extreme(), 64), 1..4),
            terms in proptest::collection::vec((0usize..256, any::<bool>()), 1..20),
            log_stride in 0u32..7,
        ) {
            let m = Modulus::new(q).unwrap();
            let start: Vec<u64> = start.iter().map(|&x| x % q).collect();
            let inputs: Vec<Vec<u64>> =
                inputs.iter().map(|v| v.iter().map(|&x| x % q).collect()).collect();
            let stride = 1 << log_stride;
            let mut whole = start.clone();
            for (k, &(e, negate)) in terms.iter().enumerate() {
                monomial_mul_add(m, &mut whole, &inputs[k % inputs.len()], e, negate);
            }
            let term = |k: usize| (&inputs[k % inputs.len()][..], terms[k].0, terms[k].1);
            let mut at = start.clone();
            monomial_sum_at_slots(m, &mut at, stride, (0..terms.len()).map(term));
            for j in 0..64 {
                let expected = if j % stride == 0 { whole[j] } else { start[j] };
                prop_assert_eq!(at[j], expected);
            }
            // From residue-major rows: the sum from zero at the slots,
            // whatever they held, and nothing else written.
            let mut from_zero = vec![0; 64];
            for (k, &(e, negate)) in terms.iter().enumerate() {
                monomial_mul_add(m, &mut from_zero, &inputs[k % inputs.len()], e, negate);
            }
            let rows: Vec<Vec<u64>> = inputs
                .iter()
                .map(|f| {
                    let mut r = vec![0; 64];
                    residue_major(f, stride, &mut r);
                    r
                })
                .collect();
            let by_row = |k: usize| (&rows[k % rows.len()][..], terms[k].0, terms[k].1);
            let mut into = start.clone();
            monomial_sum_at_slots_from_rows(m, &mut into, stride, (0..terms.len()).map(by_row));
            for j in 0..64 {
                let expected = if j % stride == 0 { from_zero[j] } else { start[j] };
                prop_assert_eq!(into[j], expected);
            }
        }

        #[test]
        fn automorphism_is_a_ring_homomorphism(
            a in proptest::collection::vec(-50i64..50, 16),
            b in proptest::collection::vec(-50i64..50, 16),
            g in (0usize..16).prop_map(|k| 2 * k + 1),
        ) {
            let m = m();
            let lift = |v: &[i64]| v.iter().map(|&x| m.from_i64(x)).collect::<Vec<u64>>();
            let ab: Vec<i64> = negacyclic_mul_i64(&a, &b).iter().map(|&x| x as i64).collect();
            let (mut ta, mut tb, mut tab) = (vec![0; 16], vec![0; 16], vec![0; 16]);
            automorphism(m, &mut ta, &lift(&a), g);
            automorphism(m, &mut tb, &lift(&b), g);
            automorphism(m, &mut tab, &lift(&ab), g);
            let ca: Vec<i64> = ta.iter().map(|&x| m.centered(x)).collect();
            let cb: Vec<i64> = tb.iter().map(|&x| m.centered(x)).collect();
            let prod: Vec<u64> = negacyclic_mul_i64(&ca, &cb).iter().map(|&x| m.from_i128(x)).collect();
            prop_assert_eq!(prod, tab);
        }
    }
}
