//! The negacyclic transform modulo a prime p < 2^31 in 32-bit words, for
//! CPUs with AVX2 but not AVX-512 (SIMD-1). Its outputs are tfhe-ntt's word
//! for word (the same root, tree and bit-reversed order, reduced values),
//! so keys, `SlotInverse` and every product are unchanged; it is faster
//! because tfhe-ntt's AVX2 kernel for primes in (2^30, 2^31) — the b-sets'
//! P — spends ≈ 0.61 µs per stage at N = 4096 against ≈ 0.35 here
//! (benches/README.md, "An own AVX2 transform mod P").
//!
//! The tree is Cooley–Tukey (forward) and Gentleman–Sande (inverse): stage
//! m (1, 2, …, N/2 blocks) splits block i of length 2t = N/m with the
//! twiddle w^brev(m + i), w the primitive 2N-th root tfhe-ntt picks. Values
//! stay in [0, 2p) between stages (2p < 2^32): a butterfly reduces its two
//! operands with one unsigned minimum each, x mod p = min(x, x − p) for
//! x < 2p, and multiplies by Shoup's method, which returns [0, 2p) for any
//! 32-bit operand. The last stage reduces to [0, p).
//!
//! Stages with t ≥ 8 run on 8-lane vectors of consecutive words; the last
//! three (t = 4, 2, 1) on each 64-word group transposed as 8 × 8, so that
//! their butterflies join whole vectors, with per-lane twiddles.

use std::arch::x86_64::*;

/// The words of one group of the transposed tail: 8 blocks of 8.
const GROUP: usize = 64;
/// Twiddle vectors per group and direction: one for t = 4, two for t = 2,
/// four for t = 1.
const TAIL_VECTORS: usize = 7;

/// A twiddle and its Shoup companion ⌊w·2^32/p⌋.
#[derive(Clone, Copy, Debug)]
struct Shoup {
    w: u32,
    w_shoup: u32,
}

impl Shoup {
    fn new(w: u32, p: u32) -> Self {
        let w_shoup = (((w as u64) << 32) / p as u64) as u32;
        Self { w, w_shoup }
    }
}

/// The transform's tables for one (N, p).
#[derive(Debug)]
pub(crate) struct NarrowNtt {
    p: u32,
    n: usize,
    /// Index m + i: stage m's block i (the stages with t ≥ 8).
    fwd: Vec<Shoup>,
    inv: Vec<Shoup>,
    /// Per group, [`TAIL_VECTORS`] vectors of 8 lanes (lane = block of the
    /// t = 4 stage within the group), twiddles then Shoup companions.
    fwd_tail: Vec<[u32; 8]>,
    inv_tail: Vec<[u32; 8]>,
}

impl NarrowNtt {
    /// Where the kernels can run: AVX2.
    fn supported() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// Where the key switch uses them: AVX2 without AVX-512, where
    /// tfhe-ntt's 16-lane kernels are as fast (benches/README.md, "The
    /// key switch's AVX2 schemes on AVX-512").
    fn preferred() -> bool {
        Self::supported() && !std::arch::is_x86_feature_detected!("avx512f")
    }

    /// The tables for tfhe-ntt's `plan` (p < 2^31, N ≥ 64) where the key
    /// switch prefers these kernels ([`preferred`](Self::preferred)), else
    /// `None`.
    pub(crate) fn new(plan: &tfhe_ntt::prime32::Plan) -> Option<Self> {
        Self::preferred().then(|| Self::build(plan)).flatten()
    }

    /// The tables on any CPU the kernels run on (the tests check them on
    /// AVX-512 CPUs too), else `None`: the root is read off tfhe-ntt's
    /// transform of X, whose first evaluation is w.
    fn build(plan: &tfhe_ntt::prime32::Plan) -> Option<Self> {
        let (n, p) = (plan.ntt_size(), plan.modulus());
        if n < GROUP || p >= 1 << 31 || !Self::supported() {
            return None;
        }
        let mut x = vec![0u32; n];
        x[1] = 1;
        plan.fwd(&mut x);
        let w = x[0] as u64;
        let (pw, log_n) = (p as u64, n.trailing_zeros());
        let pow = |mut b: u64, mut e: u64| {
            let mut r = 1u64;
            while e > 0 {
                if e & 1 == 1 {
                    r = r * b % pw;
                }
                b = b * b % pw;
                e >>= 1;
            }
            r
        };
        // w^brev(k) and its inverse, w^(2N − brev(k)), for k < N.
        let brev = |k: usize| (k.reverse_bits() >> (usize::BITS - log_n)) as u64;
        let twiddle = |k: usize| pow(w, brev(k)) as u32;
        let twiddle_inv = |k: usize| pow(w, 2 * n as u64 - brev(k)) as u32;
        let fwd = (0..n).map(|k| Shoup::new(twiddle(k), p)).collect();
        let inv = (0..n).map(|k| Shoup::new(twiddle_inv(k), p)).collect();
        let tail = |f: &dyn Fn(usize) -> u32| {
            let mut out = Vec::with_capacity(2 * TAIL_VECTORS * n / GROUP);
            for g in 0..n / GROUP {
                // Vector v, lane r: the twiddle of the lane's block b at
                // t = 4, of its halves at t = 2, of its quarters at t = 1.
                let lanes: [[u32; 8]; TAIL_VECTORS] = std::array::from_fn(|v| {
                    std::array::from_fn(|r| {
                        let b = 8 * g + r;
                        f(match v {
                            0 => n / 8 + b,
                            1 | 2 => n / 4 + 2 * b + (v - 1),
                            _ => n / 2 + 4 * b + (v - 3),
                        })
                    })
                });
                let shoup = lanes.map(|v| v.map(|w| Shoup::new(w, p).w_shoup));
                out.extend_from_slice(&lanes);
                out.extend_from_slice(&shoup);
            }
            out
        };
        Some(Self {
            p,
            n,
            fwd,
            inv,
            fwd_tail: tail(&twiddle),
            inv_tail: tail(&twiddle_inv),
        })
    }

    /// The forward transform: coefficients in [0, p) in, evaluations in
    /// tfhe-ntt's bit-reversed order out, reduced.
    pub(crate) fn fwd(&self, buf: &mut [u32]) {
        assert_eq!(buf.len(), self.n);
        // SAFETY: `new` built this plan only where `supported` detected
        // AVX2 on this CPU.
        unsafe { forward(self, buf) }
    }

    /// The inverse without the 1/N factor, reduced.
    pub(crate) fn inv(&self, buf: &mut [u32]) {
        assert_eq!(buf.len(), self.n);
        // SAFETY: as in `fwd`.
        unsafe { backward(self, buf) }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn splat(x: u32) -> __m256i {
    _mm256_set1_epi32(x as i32)
}

/// `x mod p` for x < 2p: x − p wraps above x when x < p.
#[inline]
#[target_feature(enable = "avx2")]
fn reduce(x: __m256i, p: __m256i) -> __m256i {
    _mm256_min_epu32(x, _mm256_sub_epi32(x, p))
}

/// `y·w mod p` in [0, 2p) for any 32-bit y (Shoup): with q = ⌊y·w'/2^32⌋,
/// y·w − q·p lies in [0, 2p), computed mod 2^32. `w_shoup_odd` holds the
/// odd lanes' companions in the low halves of the 64-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn mul_shoup(
    y: __m256i,
    w: __m256i,
    w_shoup: __m256i,
    w_shoup_odd: __m256i,
    p: __m256i,
) -> __m256i {
    let even = _mm256_srli_epi64::<32>(_mm256_mul_epu32(y, w_shoup));
    let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(y), w_shoup_odd);
    let q = _mm256_blend_epi32::<0b1010_1010>(even, odd);
    _mm256_sub_epi32(_mm256_mullo_epi32(y, w), _mm256_mullo_epi32(q, p))
}

/// A twiddle as vectors: (w, w', w' of the odd lanes).
type Twiddle = (__m256i, __m256i, __m256i);

#[inline]
#[target_feature(enable = "avx2")]
fn splat_twiddle(t: Shoup) -> Twiddle {
    let s = splat(t.w_shoup);
    (splat(t.w), s, s)
}

/// Both halves of a butterfly's output reduced when it is the `last`
/// stage's, else left in [0, 2p).
#[inline]
#[target_feature(enable = "avx2")]
fn finish((s, d): (__m256i, __m256i), p: __m256i, last: bool) -> (__m256i, __m256i) {
    if last {
        (reduce(s, p), reduce(d, p))
    } else {
        (s, d)
    }
}

/// (x + y, x − y + p) for x, y < p: both in [0, 2p).
#[inline]
#[target_feature(enable = "avx2")]
fn sum_and_difference(x: __m256i, y: __m256i, p: __m256i) -> (__m256i, __m256i) {
    let s = _mm256_add_epi32(x, y);
    (s, _mm256_add_epi32(_mm256_sub_epi32(x, y), p))
}

/// The forward butterfly on [0, 2p): (x + y·w, x − y·w).
#[inline]
#[target_feature(enable = "avx2")]
fn forward_pair(x: __m256i, y: __m256i, w: Twiddle, p: __m256i, last: bool) -> (__m256i, __m256i) {
    let t = reduce(mul_shoup(y, w.0, w.1, w.2, p), p);
    finish(sum_and_difference(reduce(x, p), t, p), p, last)
}

/// The inverse butterfly on [0, 2p): (x + y, (x − y)·w).
#[inline]
#[target_feature(enable = "avx2")]
fn backward_pair(x: __m256i, y: __m256i, w: Twiddle, p: __m256i, last: bool) -> (__m256i, __m256i) {
    let (s, d) = sum_and_difference(reduce(x, p), reduce(y, p), p);
    finish((s, mul_shoup(d, w.0, w.1, w.2, p)), p, last)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const u32) -> __m256i {
    // SAFETY (caller): 8 readable words at p.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store(p: *mut u32, v: __m256i) {
    // SAFETY (caller): 8 writable words at p.
    unsafe { _mm256_storeu_si256(p.cast(), v) }
}

/// One stage with t ≥ 8: block i of `buf` (length 2t) joins its halves
/// with twiddle `tw[i]`.
#[inline]
#[target_feature(enable = "avx2")]
fn stage(buf: &mut [u32], tw: &[Shoup], t: usize, p: __m256i, forward: bool, last: bool) {
    for (block, &w) in buf.chunks_exact_mut(2 * t).zip(tw) {
        let w = splat_twiddle(w);
        let (lo, hi) = block.split_at_mut(t);
        for (a, b) in lo.chunks_exact_mut(8).zip(hi.chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 words.
            let (x, y) = unsafe { (load(a.as_ptr()), load(b.as_ptr())) };
            let (s, d) = if forward {
                forward_pair(x, y, w, p, last)
            } else {
                backward_pair(x, y, w, p, last)
            };
            // SAFETY: as above.
            unsafe {
                store(a.as_mut_ptr(), s);
                store(b.as_mut_ptr(), d);
            }
        }
    }
}

/// Transposes the 8 × 8 block in `r` (row i in r[i]).
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t = [
        _mm256_unpacklo_epi32(r[0], r[1]),
        _mm256_unpackhi_epi32(r[0], r[1]),
        _mm256_unpacklo_epi32(r[2], r[3]),
        _mm256_unpackhi_epi32(r[2], r[3]),
        _mm256_unpacklo_epi32(r[4], r[5]),
        _mm256_unpackhi_epi32(r[4], r[5]),
        _mm256_unpacklo_epi32(r[6], r[7]),
        _mm256_unpackhi_epi32(r[6], r[7]),
    ];
    let s = [
        _mm256_unpacklo_epi64(t[0], t[2]),
        _mm256_unpackhi_epi64(t[0], t[2]),
        _mm256_unpacklo_epi64(t[1], t[3]),
        _mm256_unpackhi_epi64(t[1], t[3]),
        _mm256_unpacklo_epi64(t[4], t[6]),
        _mm256_unpackhi_epi64(t[4], t[6]),
        _mm256_unpacklo_epi64(t[5], t[7]),
        _mm256_unpackhi_epi64(t[5], t[7]),
    ];
    [
        _mm256_permute2x128_si256::<0x20>(s[0], s[4]),
        _mm256_permute2x128_si256::<0x20>(s[1], s[5]),
        _mm256_permute2x128_si256::<0x20>(s[2], s[6]),
        _mm256_permute2x128_si256::<0x20>(s[3], s[7]),
        _mm256_permute2x128_si256::<0x31>(s[0], s[4]),
        _mm256_permute2x128_si256::<0x31>(s[1], s[5]),
        _mm256_permute2x128_si256::<0x31>(s[2], s[6]),
        _mm256_permute2x128_si256::<0x31>(s[3], s[7]),
    ]
}

/// The 64-word groups of `buf` as transposed 8 × 8 blocks: `f` gets the
/// columns (column c, lane r = word 8r + c) and the group's twiddles.
#[inline]
#[target_feature(enable = "avx2")]
fn tail(
    buf: &mut [u32],
    tables: &[[u32; 8]],
    mut f: impl FnMut(&mut [__m256i; 8], &[Twiddle; TAIL_VECTORS]),
) {
    for (group, tw) in buf
        .chunks_exact_mut(GROUP)
        .zip(tables.chunks_exact(2 * TAIL_VECTORS))
    {
        let rows: [__m256i; 8] = std::array::from_fn(|r| {
            // SAFETY: the group holds 64 words.
            unsafe { load(group[8 * r..].as_ptr()) }
        });
        let mut cols = transpose8(rows);
        let twiddles: [Twiddle; TAIL_VECTORS] = std::array::from_fn(|v| {
            // SAFETY: each table entry holds 8 words.
            let (w, s) = unsafe { (load(tw[v].as_ptr()), load(tw[TAIL_VECTORS + v].as_ptr())) };
            (w, s, _mm256_srli_epi64::<32>(s))
        });
        f(&mut cols, &twiddles);
        for (r, v) in transpose8(cols).into_iter().enumerate() {
            // SAFETY: as above.
            unsafe { store(group[8 * r..].as_mut_ptr(), v) }
        }
    }
}

/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn forward(plan: &NarrowNtt, buf: &mut [u32]) {
    let (n, p) = (plan.n, splat(plan.p));
    let (mut m, mut t) = (1, n / 2);
    while t >= 8 {
        stage(buf, &plan.fwd[m..2 * m], t, p, true, false);
        m *= 2;
        t /= 2;
    }
    tail(buf, &plan.fwd_tail, |c, w| {
        for i in 0..4 {
            (c[i], c[i + 4]) = forward_pair(c[i], c[i + 4], w[0], p, false);
        }
        for (base, tw) in [(0, w[1]), (4, w[2])] {
            for i in base..base + 2 {
                (c[i], c[i + 2]) = forward_pair(c[i], c[i + 2], tw, p, false);
            }
        }
        for k in 0..4 {
            (c[2 * k], c[2 * k + 1]) = forward_pair(c[2 * k], c[2 * k + 1], w[3 + k], p, true);
        }
    });
}

/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn backward(plan: &NarrowNtt, buf: &mut [u32]) {
    let (n, p) = (plan.n, splat(plan.p));
    tail(buf, &plan.inv_tail, |c, w| {
        for k in 0..4 {
            (c[2 * k], c[2 * k + 1]) = backward_pair(c[2 * k], c[2 * k + 1], w[3 + k], p, false);
        }
        for (base, tw) in [(0, w[1]), (4, w[2])] {
            for i in base..base + 2 {
                (c[i], c[i + 2]) = backward_pair(c[i], c[i + 2], tw, p, false);
            }
        }
        for i in 0..4 {
            (c[i], c[i + 4]) = backward_pair(c[i], c[i + 4], w[0], p, false);
        }
    });
    let (mut m, mut t) = (n / 16, 8);
    while m >= 1 {
        stage(buf, &plan.inv[m..2 * m], t, p, false, m == 1);
        m /= 2;
        t *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The b-sets' P (2N | P − 1 up to N = 4096), and a prime below 2^30
    // (tfhe-ntt's other kernel; up to N = 2^17).
    const PRIMES: [u32; 2] = [2147377153, 1073479681];

    fn plans(log_n: u32, p: u32) -> (tfhe_ntt::prime32::Plan, NarrowNtt) {
        let tfhe = tfhe_ntt::prime32::Plan::try_new(1 << log_n, p).unwrap();
        let own = NarrowNtt::build(&tfhe).unwrap();
        (tfhe, own)
    }

    // SIMD-1: word for word tfhe-ntt's transform, both ways, for every
    // N the crate's sets use and more, including the largest residues.
    proptest! {
        #[test]
        fn transforms_equal_tfhe_ntts(
            log_n in 6u32..=14,
            prime in 0usize..2,
            seed in any::<u64>(),
            edge in any::<bool>(),
        ) {
            if !NarrowNtt::supported() {
                return Ok(());
            }
            let p = PRIMES[if log_n > 12 { 1 } else { prime }];
            let (tfhe, own) = plans(log_n, p);
            let mut rng = seed;
            let values: Vec<u32> = (0..1usize << log_n)
                .map(|i| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if edge && i % 3 == 0 { p - 1 } else { ((rng >> 33) % p as u64) as u32 }
                })
                .collect();
            let (mut a, mut b) = (values.clone(), values.clone());
            tfhe.fwd(&mut a);
            own.fwd(&mut b);
            prop_assert_eq!(&a, &b);
            let (mut a, mut b) = (values.clone(), values);
            tfhe.inv(&mut a);
            own.inv(&mut b);
            prop_assert_eq!(&a, &b);
        }
    }

    // The inverse undoes the forward up to N (the check does not lean on
    // tfhe-ntt), and small N or wide primes are declined.
    #[test]
    fn inverse_of_forward_is_n_times_the_input() {
        if !NarrowNtt::supported() {
            return;
        }
        let (p, log_n) = (PRIMES[0], 12);
        let (_, own) = plans(log_n, p);
        let x: Vec<u32> = (0..1u32 << log_n)
            .map(|i| i.wrapping_mul(2654435761) % p)
            .collect();
        let mut y = x.clone();
        own.fwd(&mut y);
        assert_ne!(x, y);
        own.inv(&mut y);
        let n = 1u64 << log_n;
        let want: Vec<u32> = x
            .iter()
            .map(|&v| (v as u64 * n % p as u64) as u32)
            .collect();
        assert_eq!(y, want);
        let small = tfhe_ntt::prime32::Plan::try_new(32, p).unwrap();
        assert!(NarrowNtt::build(&small).is_none());
    }
}
