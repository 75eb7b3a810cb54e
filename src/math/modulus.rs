//! Scalar arithmetic modulo an odd prime below 2^64.

/// The Solinas ("Goldilocks") prime 2^64 − 2^32 + 1: the ciphertext modulus of
/// every shipped parameter set. Reduction modulo it needs no division.
pub const SOLINAS: u64 = 0xffff_ffff_0000_0001;

/// An odd prime modulus with the arithmetic the ring needs. Elements are
/// always kept fully reduced in `[0, q)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    q: u64,
}

impl Modulus {
    /// Wraps `q`. Callers validate primality and NTT-friendliness (see
    /// `params`); this only rejects values the arithmetic cannot represent.
    pub const fn new(q: u64) -> Option<Self> {
        if q < 3 || q.is_multiple_of(2) {
            None
        } else {
            Some(Self { q })
        }
    }

    /// q itself.
    #[inline(always)]
    pub const fn value(self) -> u64 {
        self.q
    }

    /// ⌈log2 q⌉.
    pub const fn bits(self) -> u32 {
        64 - (self.q - 1).leading_zeros()
    }

    /// `a + b mod q`; both operands must already be in `[0, q)` (checked in
    /// debug builds only).
    #[inline(always)]
    pub fn add(self, a: u64, b: u64) -> u64 {
        debug_assert!(a < self.q && b < self.q);
        let (s, carry) = a.overflowing_add(b);
        if carry || s >= self.q {
            s.wrapping_sub(self.q)
        } else {
            s
        }
    }

    /// `a − b mod q`; both operands must already be in `[0, q)`.
    #[inline(always)]
    pub fn sub(self, a: u64, b: u64) -> u64 {
        debug_assert!(a < self.q && b < self.q);
        let (d, borrow) = a.overflowing_sub(b);
        if borrow {
            d.wrapping_add(self.q)
        } else {
            d
        }
    }

    /// `−a mod q`, mapping 0 to 0 (never to q); `a` must be in `[0, q)`.
    #[inline(always)]
    pub fn neg(self, a: u64) -> u64 {
        debug_assert!(a < self.q);
        if a == 0 {
            0
        } else {
            self.q - a
        }
    }

    /// `a·b mod q` through a 128-bit product; for [`SOLINAS`] the reduction is
    /// division-free. Any `a`, `b` < 2^64 are accepted; the result is in `[0, q)`.
    #[inline(always)]
    pub fn mul(self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// Reduces any 128-bit value.
    #[inline(always)]
    pub fn reduce_u128(self, x: u128) -> u64 {
        if self.q == SOLINAS {
            solinas_reduce(x)
        } else {
            (x % self.q as u128) as u64
        }
    }

    /// Maps a signed integer into `[0, q)`. Small magnitudes (digits,
    /// noise, weights) take a division-free path.
    #[inline(always)]
    pub fn from_i64(self, x: i64) -> u64 {
        let mag = x.unsigned_abs();
        let r = if mag < self.q { mag } else { mag % self.q };
        if x < 0 && r != 0 {
            self.q - r
        } else {
            r
        }
    }

    /// Maps a signed 128-bit integer into `[0, q)`.
    #[inline(always)]
    pub fn from_i128(self, x: i128) -> u64 {
        x.rem_euclid(self.q as i128) as u64
    }

    /// The representative of `a` in `(−q/2, q/2]`.
    #[inline(always)]
    pub fn centered(self, a: u64) -> i64 {
        debug_assert!(a < self.q);
        if a > self.q / 2 {
            -((self.q - a) as i64)
        } else {
            a as i64
        }
    }

    /// `base^exp mod q` by square-and-multiply; `base` need not be reduced and
    /// `exp = 0` gives 1. Branches on the bits of `exp`: the crate only calls it
    /// with public exponents.
    pub fn pow(self, mut base: u64, mut exp: u64) -> u64 {
        let mut acc = 1 % self.q;
        base %= self.q;
        while exp > 0 {
            if exp & 1 == 1 {
                acc = self.mul(acc, base);
            }
            base = self.mul(base, base);
            exp >>= 1;
        }
        acc
    }

    /// Multiplicative inverse (q prime, a ≠ 0 mod q).
    pub fn inv(self, a: u64) -> Option<u64> {
        let a = a % self.q;
        if a == 0 {
            None
        } else {
            Some(self.pow(a, self.q - 2))
        }
    }

    /// Deterministic Miller–Rabin, exact for all 64-bit integers.
    pub fn is_prime(n: u64) -> bool {
        if n < 2 {
            return false;
        }
        for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
            if n.is_multiple_of(p) {
                return n == p;
            }
        }
        let m = Modulus { q: n };
        let (mut d, mut s) = (n - 1, 0);
        while d % 2 == 0 {
            d /= 2;
            s += 1;
        }
        'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
            let mut x = m.pow(a, d);
            if x == 1 || x == n - 1 {
                continue;
            }
            for _ in 1..s {
                x = m.mul(x, x);
                if x == n - 1 {
                    continue 'witness;
                }
            }
            return false;
        }
        true
    }
}

/// Multiplication by a fixed `w` modulo q, division-free: Shoup's method
/// (precomputed ⌊w·2^64/q⌋) for q < 2^63, the Solinas reduction for
/// [`SOLINAS`], a plain [`Modulus::mul`] otherwise. For the per-limb
/// constants of the RNS key switch (CRT, division by P).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MulConst {
    q: Modulus,
    w: u64,
    /// ⌊w·2^64/q⌋ when Shoup's method applies, else 0 (unused).
    w_shoup: u64,
    shoup: bool,
}

impl MulConst {
    /// Multiplication by `w mod q`.
    pub(crate) fn new(q: Modulus, w: u64) -> Self {
        let w = w % q.value();
        let shoup = q.value() < 1 << 63;
        let w_shoup = if shoup {
            (((w as u128) << 64) / q.value() as u128) as u64
        } else {
            0
        };
        Self {
            q,
            w,
            w_shoup,
            shoup,
        }
    }

    /// The factor w, reduced.
    pub(crate) fn factor(self) -> u64 {
        self.w
    }

    /// Whether [`mul_split`](Self::mul_split) serves this modulus (Shoup's
    /// q < 2^63, or [`SOLINAS`]).
    pub(crate) fn splittable(self) -> bool {
        self.shoup || self.q.value() == SOLINAS
    }

    /// `a·w mod q` for any `a` < 2^64, in `[0, q)`.
    #[inline(always)]
    pub(crate) fn mul(self, a: u64) -> u64 {
        if !self.shoup {
            return self.q.mul(a, self.w);
        }
        let est = ((a as u128 * self.w_shoup as u128) >> 64) as u64;
        self.shoup_finish(a, est)
    }

    /// `a·w mod q` as [`mul`](Self::mul), from 64-bit operations only and
    /// without a branch, so a loop of it vectorises (SIMD kernels); only
    /// when [`splittable`](Self::splittable), with `SOLINAS_Q` telling
    /// which of the two cases this is.
    #[inline(always)]
    pub(crate) fn mul_split<const SOLINAS_Q: bool>(self, a: u64) -> u64 {
        if SOLINAS_Q {
            solinas_reduce_split(a.wrapping_mul(self.w), mulhi_split(a, self.w))
        } else {
            self.shoup_finish(a, mulhi_split(a, self.w_shoup))
        }
    }

    /// Shoup's last step: a·w − est·q lies in [0, 2q), and 2q < 2^64.
    #[inline(always)]
    fn shoup_finish(self, a: u64, est: u64) -> u64 {
        let q = self.q.value();
        let r = a.wrapping_mul(self.w).wrapping_sub(est.wrapping_mul(q));
        r - select(r >= q, q)
    }
}

/// The high 64 bits of a·b from four 32×32-bit products: slower than one
/// widening multiply on a scalar core, but vectorisable.
#[inline(always)]
pub(crate) fn mulhi_split(a: u64, b: u64) -> u64 {
    const LOW: u64 = 0xffff_ffff;
    let (a0, a1, b0, b1) = (a & LOW, a >> 32, b & LOW, b >> 32);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    // The carry out of the middle 32-bit column (each term < 2^32).
    let mid = (p00 >> 32) + (p01 & LOW) + (p10 & LOW);
    p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32)
}

/// (hi·2^64 + lo) mod [`SOLINAS`], the reduction of [`Modulus::mul`] with
/// selects in place of branches.
#[inline(always)]
pub(crate) fn solinas_reduce_split(lo: u64, hi: u64) -> u64 {
    const EPSILON: u64 = 0xffff_ffff; // 2^64 mod SOLINAS
    let (t0, borrow) = lo.overflowing_sub(hi >> 32);
    let t0 = t0.wrapping_sub(select(borrow, EPSILON));
    let (t2, carry) = t0.overflowing_add((hi & EPSILON) * EPSILON);
    let t2 = t2.wrapping_add(select(carry, EPSILON));
    t2 - select(t2 >= SOLINAS, SOLINAS)
}

/// `mask` if `c`, else 0, without a branch.
#[inline(always)]
pub(crate) fn select(c: bool, mask: u64) -> u64 {
    mask & (c as u64).wrapping_neg()
}

/// (a − b) mod q for a, b < q, without a branch.
#[inline(always)]
pub(crate) fn sub_mod(q: u64, a: u64, b: u64) -> u64 {
    let (d, borrow) = a.overflowing_sub(b);
    d.wrapping_add(select(borrow, q))
}

/// (a + b) mod q for a, b < q, without a branch.
#[inline(always)]
pub(crate) fn add_mod(q: u64, a: u64, b: u64) -> u64 {
    // a − (q − b), plus q when that borrows; q − b ∈ (0, q].
    sub_mod(q, a, q - b)
}

/// x mod (2^64 − 2^32 + 1) using 2^64 ≡ 2^32 − 1 and 2^96 ≡ −1.
#[inline(always)]
fn solinas_reduce(x: u128) -> u64 {
    const EPSILON: u64 = 0xffff_ffff; // 2^64 mod SOLINAS
    let lo = x as u64;
    let hi = (x >> 64) as u64;
    let hi_hi = hi >> 32;
    let hi_lo = hi & EPSILON;
    let (mut t0, borrow) = lo.overflowing_sub(hi_hi);
    if borrow {
        t0 = t0.wrapping_sub(EPSILON);
    }
    let t1 = hi_lo * EPSILON;
    let (mut t2, carry) = t0.overflowing_add(t1);
    if carry {
        t2 = t2.wrapping_add(EPSILON);
    }
    if t2 >= SOLINAS {
        t2 - SOLINAS
    } else {
        t2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn solinas_reduction_matches_division(x in any::<u128>()) {
            prop_assert_eq!(solinas_reduce(x), (x % SOLINAS as u128) as u64);
        }

        #[test]
        fn field_laws(a in 0..SOLINAS, b in 0..SOLINAS) {
            let m = Modulus::new(SOLINAS).unwrap();
            prop_assert_eq!(m.sub(m.add(a, b), b), a);
            prop_assert_eq!(m.add(a, m.neg(a)), 0);
            if a != 0 {
                prop_assert_eq!(m.mul(a, m.inv(a).unwrap()), 1);
            }
            let c = m.centered(a);
            prop_assert_eq!(m.from_i64(c), a);
        }

        #[test]
        fn from_i64_matches_euclidean_remainder(x in any::<i64>(), q in prop_oneof![Just(SOLINAS), Just(2147377153u64), 3u64..1000]) {
            let m = Modulus::new(q | 1).unwrap();
            prop_assert_eq!(m.from_i64(x), (x as i128).rem_euclid((q | 1) as i128) as u64);
        }
    }

    proptest! {
        // The division-free constant multiplication is the field product,
        // for any 64-bit operand, on Shoup's moduli and on Solinas.
        #[test]
        fn mul_const_matches_field_mul(
            a in any::<u64>(),
            w in any::<u64>(),
            q in prop_oneof![Just(SOLINAS), Just(0x3fff_ffff_ffff_0001u64), Just(2305843009213317121u64), Just(2147377153u64), 3u64..1000, (1u64 << 63)..u64::MAX],
        ) {
            let m = Modulus::new(q | 1).unwrap();
            let expect = ((a as u128 * (w % m.value()) as u128) % m.value() as u128) as u64;
            let c = MulConst::new(m, w);
            prop_assert_eq!(c.mul(a), expect);
            if c.splittable() {
                let split = if m.value() == SOLINAS {
                    c.mul_split::<true>(a)
                } else {
                    c.mul_split::<false>(a)
                };
                prop_assert_eq!(split, expect);
            }
        }

        // The vectorisable pieces against u128 arithmetic.
        #[test]
        fn split_arithmetic_is_exact(a in any::<u64>(), b in any::<u64>(), x in any::<u128>()) {
            prop_assert_eq!(mulhi_split(a, b), ((a as u128 * b as u128) >> 64) as u64);
            prop_assert_eq!(mulhi_split(u64::MAX, u64::MAX), u64::MAX - 1);
            prop_assert_eq!(solinas_reduce_split(x as u64, (x >> 64) as u64), (x % SOLINAS as u128) as u64);
        }
    }

    #[test]
    fn primality() {
        assert!(Modulus::is_prime(SOLINAS));
        assert!(Modulus::is_prime(2147377153));
        assert!(!Modulus::is_prime(SOLINAS - 2));
        assert!(!Modulus::is_prime(1));
    }
}
