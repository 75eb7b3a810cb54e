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

/// One term `± X^exp · inp` of a [`monomial_mul_add_many`] sum.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MonomialTerm<'a> {
    /// The polynomial shifted, of the output's length.
    pub(crate) inp: &'a [u64],
    /// Monomial exponent, taken modulo `2N`.
    pub(crate) exp: usize,
    /// Subtract instead of add.
    pub(crate) negate: bool,
}

/// Terms fused per pass over the output (issue 9): the output is read and
/// written once per group instead of once per term. Measured on a dense
/// leaf of 256 terms at N = 4096 (benches/README.md): 2 to 4 terms took
/// 0.81–0.88 of the term-by-term time, 6 or 8 (more input streams) and
/// blocking the output into L1-sized pieces took longer.
const FUSED_TERMS: usize = 4;

/// `out += Σ ±X^(e_k) · inp_k`: the same result as [`monomial_mul_add`]
/// term by term (modular sums are exact, so order and grouping change no
/// bit), with the output read and written once per group of terms instead
/// of once per term.
pub(crate) fn monomial_mul_add_many(m: Modulus, out: &mut [u64], terms: &[MonomialTerm<'_>]) {
    let n = out.len();
    debug_assert!(terms.iter().all(|t| t.inp.len() == n));
    // (shift, negate of the unwrapped range), with X^e = −X^(e−N) for e ≥ N.
    let shifts: Vec<(usize, bool)> = terms
        .iter()
        .map(|t| {
            let e = t.exp % (2 * n);
            if e >= n {
                (e - n, !t.negate)
            } else {
                (e, t.negate)
            }
        })
        .collect();
    for (group, group_shifts) in terms.chunks(FUSED_TERMS).zip(shifts.chunks(FUSED_TERMS)) {
        // The output splits where a term's range wraps past N.
        let mut cuts = [0usize; FUSED_TERMS + 2];
        cuts[1] = n;
        let mut n_cuts = 2;
        for &(s, _) in group_shifts {
            if s > 0 {
                cuts[n_cuts] = s;
                n_cuts += 1;
            }
        }
        cuts[..n_cuts].sort_unstable();
        for w in cuts[..n_cuts].windows(2) {
            let (a, b) = (w[0], w[1]);
            if a == b {
                continue;
            }
            let mut srcs: [&[u64]; FUSED_TERMS] = [&[]; FUSED_TERMS];
            let mut negs = [false; FUSED_TERMS];
            for (k, (t, &(s, neg))) in group.iter().zip(group_shifts).enumerate() {
                // Coefficient i lands on i + s; the ones that wrap change sign.
                if a >= s {
                    srcs[k] = &t.inp[a - s..b - s];
                    negs[k] = neg;
                } else {
                    srcs[k] = &t.inp[a + n - s..b + n - s];
                    negs[k] = !neg;
                }
            }
            simd::dispatch_fused(m.value(), &mut out[a..b], &srcs[..group.len()], &negs);
        }
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

/// Branch-free kernels, compiled once per instruction set (SIMD-1).
mod simd {
    #[inline(always)]
    fn add_kernel(q: u64, out: &mut [u64], inp: &[u64]) {
        for (o, &i) in out.iter_mut().zip(inp) {
            let s = o.wrapping_add(i);
            let t = s.wrapping_sub(q);
            // The true sum is ≥ q when it wrapped (s < i) or when s ≥ q.
            *o = if (s < i) | (s >= q) { t } else { s };
        }
    }

    #[inline(always)]
    fn sub_kernel(q: u64, out: &mut [u64], inp: &[u64]) {
        for (o, &i) in out.iter_mut().zip(inp) {
            let d = o.wrapping_sub(i);
            *o = if *o < i { d.wrapping_add(q) } else { d };
        }
    }

    /// `out += Σ ±srcs[k]` for `G` slices of `out`'s length, the sum kept in
    /// a register across the terms. Any modulus: every step reduced.
    #[inline(always)]
    fn fused_kernel<const G: usize>(q: u64, out: &mut [u64], srcs: &[&[u64]], negs: &[bool]) {
        let len = out.len();
        let srcs: [&[u64]; G] = std::array::from_fn(|k| &srcs[k][..len]);
        let masks: [u64; G] = std::array::from_fn(|k| if negs[k] { u64::MAX } else { 0 });
        for (j, o) in out.iter_mut().enumerate() {
            let mut x = *o;
            for k in 0..G {
                let v = srcs[k][j];
                // −v mod q, then v or −v by the term's sign, branch-free.
                let neg_v = if v == 0 { 0 } else { q - v };
                let w = v ^ ((v ^ neg_v) & masks[k]);
                let s = x.wrapping_add(w);
                let t = s.wrapping_sub(q);
                x = if (s < w) | (s >= q) { t } else { s };
            }
            *o = x;
        }
    }

    /// [`fused_kernel`] for q > 2^63 (the one-limb sets), with lazy
    /// reduction: the running sum is any u64 congruent to the true sum, a
    /// carry out of 64 bits is folded back as 2^64 ≡ c = 2^64 − q, and one
    /// final conditional subtraction makes it canonical (< 2q), so the
    /// result is the same residue, bit for bit. A negated term adds
    /// !v − (c − 1) = 2^64 − c − v ≡ −v, which lies in [1, q]; then
    /// x + w − 2^64 ≤ q − 1, so folding c back cannot carry again.
    #[inline(always)]
    fn fused_lazy_kernel<const G: usize>(q: u64, out: &mut [u64], srcs: &[&[u64]], negs: &[bool]) {
        debug_assert!(q > 1 << 63);
        let c = q.wrapping_neg();
        let len = out.len();
        let srcs: [&[u64]; G] = std::array::from_fn(|k| &srcs[k][..len]);
        let flips: [u64; G] = std::array::from_fn(|k| if negs[k] { u64::MAX } else { 0 });
        let offsets: [u64; G] = std::array::from_fn(|k| flips[k] & (c - 1));
        for (j, o) in out.iter_mut().enumerate() {
            let mut x = *o;
            for k in 0..G {
                let w = (srcs[k][j] ^ flips[k]).wrapping_sub(offsets[k]);
                let s = x.wrapping_add(w);
                x = s.wrapping_add(if s < w { c } else { 0 });
            }
            *o = if x >= q { x - q } else { x };
        }
    }

    /// The fused kernel for a run-time group size of 1 to `FUSED_TERMS`,
    /// lazy when q > 2^63.
    #[inline(always)]
    fn fused_any(q: u64, out: &mut [u64], srcs: &[&[u64]], negs: &[bool]) {
        macro_rules! by_size {
            ($kernel:ident) => {
                match srcs.len() {
                    1 => $kernel::<1>(q, out, srcs, negs),
                    2 => $kernel::<2>(q, out, srcs, negs),
                    3 => $kernel::<3>(q, out, srcs, negs),
                    4 => $kernel::<4>(q, out, srcs, negs),
                    _ => unreachable!("groups hold 1 to FUSED_TERMS terms"),
                }
            };
        }
        if q > 1 << 63 {
            by_size!(fused_lazy_kernel)
        } else {
            by_size!(fused_kernel)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn fused_avx512(q: u64, out: &mut [u64], srcs: &[&[u64]], negs: &[bool]) {
        fused_any(q, out, srcs, negs)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fused_avx2(q: u64, out: &mut [u64], srcs: &[&[u64]], negs: &[bool]) {
        fused_any(q, out, srcs, negs)
    }

    #[inline]
    pub(super) fn dispatch_fused(q: u64, out: &mut [u64], srcs: &[&[u64]], negs: &[bool]) {
        debug_assert!(out
            .iter()
            .chain(srcs.iter().copied().flatten())
            .all(|&x| x < q));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the features were detected on this CPU.
                return unsafe { fused_avx512(q, out, srcs, negs) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { fused_avx2(q, out, srcs, negs) };
            }
        }
        fused_any(q, out, srcs, negs)
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
                // The fused kernel, every group size and instruction set.
                let m = Modulus::new(SOLINAS).unwrap();
                for g in 1..=crate::math::poly::FUSED_TERMS {
                    let srcs: Vec<&[u64]> = (0..g).map(|k| if k % 2 == 0 { b } else { &seed[seed.len() - a.len()..] }).collect();
                    let negs: Vec<bool> = (0..g).map(|k| (k * 7 + a.len()) % 3 == 0).collect();
                    let mut expect = a.clone();
                    for (s, &neg) in srcs.iter().zip(&negs) {
                        for (e, &v) in expect.iter_mut().zip(*s) {
                            *e = if neg { m.sub(*e, v) } else { m.add(*e, v) };
                        }
                    }
                    let mut o = a.clone();
                    fused_any(SOLINAS, &mut o, &srcs, &negs);
                    prop_assert_eq!(&o, &expect);
                    let mut o = a.clone();
                    dispatch_fused(SOLINAS, &mut o, &srcs, &negs);
                    prop_assert_eq!(&o, &expect);
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut o = a.clone();
                        unsafe { fused_avx2(SOLINAS, &mut o, &srcs, &negs) };
                        prop_assert_eq!(&o, &expect);
                    }
                }
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    let mut o = a.clone();
                    unsafe { add_avx2(SOLINAS, &mut o, b) };
                    prop_assert_eq!(&o, &add);
                    let mut o = a.clone();
                    unsafe { sub_avx2(SOLINAS, &mut o, b) };
                    prop_assert_eq!(&o, &sub);
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
    let n = inp.len();
    debug_assert!(g % 2 == 1);
    let mask = 2 * n - 1;
    for (i, &c) in inp.iter().enumerate() {
        let j = (i * g) & mask;
        if j < n {
            out[j] = c;
        } else {
            out[j - n] = m.neg(c);
        }
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

        // The fused leaf kernel (issue 9) is bit-identical to applying the
        // terms one by one, across partial groups and wrap points.
        #[test]
        fn monomial_mul_add_many_matches_term_by_term(
            log_n in prop_oneof![Just(2usize), Just(5), Just(11), Just(12)],
            // Solinas (lazy path), a limb below 2^63 (exact path), and the
            // smallest odd q above 2^63 (lazy path, largest c = 2^64 − q).
            q in prop_oneof![Just(SOLINAS), Just(2305843009213317121u64), Just((1u64 << 63) + 1)],
            seed in any::<u64>(),
            terms in proptest::collection::vec((0usize..8, any::<u64>(), any::<bool>()), 0..20),
        ) {
            let m = Modulus::new(q).unwrap();
            let n = 1usize << log_n;
            // Residues weighted towards the edges 0, 1 and q − 1.
            let mut state = seed;
            let mut residue = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                match (state >> 60) % 4 {
                    0 => q - 1 - (state >> 62),
                    1 => (state >> 62) % 2,
                    _ => (state >> 1) % q,
                }
            };
            let out0: Vec<u64> = (0..n).map(|_| residue()).collect();
            let inps: Vec<Vec<u64>> = terms.iter().map(|_| (0..n).map(|_| residue()).collect()).collect();
            let exp = |kind: usize, r: u64| match kind {
                0 => 0,
                1 => n - 1,
                2 => n,
                3 => 2 * n - 1,
                4 => 2 * n + (r as usize % n), // beyond 2N: taken modulo 2N
                _ => r as usize % (2 * n),
            };
            let mono: Vec<MonomialTerm> = terms
                .iter()
                .zip(&inps)
                .map(|(&(kind, r, negate), inp)| MonomialTerm { inp, exp: exp(kind, r), negate })
                .collect();
            let mut expect = out0.clone();
            for t in &mono {
                monomial_mul_add(m, &mut expect, t.inp, t.exp, t.negate);
            }
            let mut got = out0.clone();
            monomial_mul_add_many(m, &mut got, &mono);
            prop_assert_eq!(got, expect);
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
