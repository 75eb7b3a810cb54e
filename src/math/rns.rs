//! The ciphertext modulus as a residue number system (PARAM-8):
//! q = q_0·q_1·…·q_(L−1), pairwise distinct odd primes, q < 2^128.
//!
//! Polynomials modulo q are held *limb-major*: the residues of all N
//! coefficients modulo q_0, then modulo q_1, … (length L·N). With one limb
//! the layout, and every loop over it, is exactly the single-modulus code:
//! a loop over limbs runs once, with no allocation and no indirection.
//!
//! Where the integer value of a residue vector is needed (gadget
//! decomposition, decoding, centring, Δ·m, flooding samples beyond one
//! limb) it is recomposed exactly by Garner's mixed-radix CRT into a `u128`.

use super::{add_mod, sub_mod, Modulus, MulConst};

/// At most this many limbs (their product must stay below 2^128 anyway).
pub const MAX_LIMBS: usize = 4;

/// An RNS modulus. `Copy` and small, so it is passed by value like
/// [`Modulus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RnsModulus {
    limbs: [Modulus; MAX_LIMBS],
    len: usize,
    /// q as an integer (< 2^128).
    value: u128,
    /// Garner constants: `garner[i]` = (q_0·…·q_(i−1))^-1 mod q_i.
    garner: [u64; MAX_LIMBS],
}

impl From<Modulus> for RnsModulus {
    fn from(m: Modulus) -> Self {
        Self::single(m)
    }
}

impl RnsModulus {
    /// One limb: the single-modulus case.
    pub const fn single(m: Modulus) -> Self {
        Self {
            limbs: [m; MAX_LIMBS],
            len: 1,
            value: m.value() as u128,
            garner: [1; MAX_LIMBS],
        }
    }

    /// `None` unless 1..=[`MAX_LIMBS`] odd moduli ≥ 3, pairwise coprime,
    /// whose product is below 2^128. Primality and NTT-friendliness are
    /// checked by `params` (PARAM-2).
    pub fn new(moduli: &[u64]) -> Option<Self> {
        if moduli.is_empty() || moduli.len() > MAX_LIMBS {
            return None;
        }
        let first = Modulus::new(moduli[0])?;
        let mut out = Self::single(first);
        for (i, &qi) in moduli.iter().enumerate().skip(1) {
            let m = Modulus::new(qi)?;
            // Coprime to every earlier limb, i.e. the running product is
            // invertible modulo q_i.
            if moduli[..i].iter().any(|&qj| gcd(qj, qi) != 1) {
                return None;
            }
            let prod_mod = (out.value % qi as u128) as u64;
            let inv = inverse_mod(prod_mod, qi)?;
            out.value = out.value.checked_mul(qi as u128)?;
            out.limbs[i] = m;
            out.garner[i] = inv;
            out.len = i + 1;
        }
        Some(out)
    }

    /// Number of limbs L.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a modulus has at least one limb.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The limbs q_0 … q_(L−1).
    #[inline(always)]
    pub fn limbs(&self) -> &[Modulus] {
        &self.limbs[..self.len]
    }

    /// The limb q_i as a [`Modulus`]; panics if `i ≥ L`.
    #[inline(always)]
    pub fn limb(&self, i: usize) -> Modulus {
        self.limbs()[i]
    }

    /// The one limb, if there is only one.
    pub fn single_limb(&self) -> Option<Modulus> {
        (self.len == 1).then_some(self.limbs[0])
    }

    /// q as an integer.
    #[inline(always)]
    pub fn value(&self) -> u128 {
        self.value
    }

    /// ⌈log2 q⌉.
    pub fn bits(&self) -> u32 {
        128 - (self.value - 1).leading_zeros()
    }

    /// log2 q as a float.
    pub fn log2(&self) -> f64 {
        self.limbs().iter().map(|m| (m.value() as f64).log2()).sum()
    }

    /// Whether every coefficient of a limb-major vector is reduced modulo
    /// its limb (and the length is L·n).
    pub fn is_reduced(&self, v: &[u64], n: usize) -> bool {
        v.len() == self.len * n
            && v.chunks_exact(n)
                .zip(self.limbs())
                .all(|(c, m)| c.iter().all(|&x| x < m.value()))
    }

    /// The residues of `x` (any u128) into `out[0..L]`.
    #[inline]
    pub fn residues_u128(&self, x: u128, mut put: impl FnMut(usize, u64)) {
        for (i, m) in self.limbs().iter().enumerate() {
            put(i, m.reduce_u128(x));
        }
    }

    /// The residue modulo limb `i` of a signed integer.
    #[inline(always)]
    pub fn limb_from_i128(&self, i: usize, x: i128) -> u64 {
        self.limbs[i].from_i128(x)
    }

    /// Exact CRT recomposition (Garner): the integer in `[0, q)` whose
    /// residues are `r(0) … r(L−1)` (each reduced modulo its limb).
    #[inline]
    pub fn compose(&self, r: impl Fn(usize) -> u64) -> u128 {
        let r0 = r(0);
        if self.len == 1 {
            return r0 as u128;
        }
        // x = v_0 + q_0·(v_1 + q_1·(v_2 + …)), each v_i < q_i.
        let mut x = r0 as u128;
        let mut radix = self.limbs[0].value() as u128;
        for i in 1..self.len {
            let m = self.limbs[i];
            let xi = m.reduce_u128(x);
            let v = m.mul(m.sub(r(i), xi), self.garner[i]);
            // x + radix·v < radix·q_i ≤ q < 2^128.
            x += radix * v as u128;
            if i + 1 < self.len {
                radix *= m.value() as u128;
            }
        }
        x
    }

    /// The integer value of coefficient `i` of a limb-major vector of
    /// ring degree `n`.
    #[inline]
    pub fn coefficient(&self, v: &[u64], n: usize, i: usize) -> u128 {
        self.compose(|l| v[l * n + i])
    }

    /// Writes `x` (< q) as coefficient `i` of a limb-major vector.
    #[inline]
    pub fn set_coefficient(&self, v: &mut [u64], n: usize, i: usize, x: u128) {
        self.residues_u128(x, |l, r| v[l * n + i] = r);
    }

    /// The representative of `x ∈ [0, q)` in `(−q/2, q/2]`.
    #[inline(always)]
    pub fn centered(&self, x: u128) -> i128 {
        debug_assert!(x < self.value);
        if x > self.value / 2 {
            -((self.value - x) as i128)
        } else {
            x as i128
        }
    }

    /// `x` mod q for a signed integer.
    #[inline]
    pub fn from_i128(&self, x: i128) -> u128 {
        let r = x.unsigned_abs() % self.value;
        if x < 0 && r != 0 {
            self.value - r
        } else {
            r
        }
    }

    /// (a + b) mod q for a, b < q.
    #[inline]
    pub fn add(&self, a: u128, b: u128) -> u128 {
        let (s, carry) = a.overflowing_add(b);
        if carry || s >= self.value {
            s.wrapping_sub(self.value)
        } else {
            s
        }
    }

    /// (a − b) mod q for a, b < q.
    #[inline]
    pub fn sub(&self, a: u128, b: u128) -> u128 {
        let (d, borrow) = a.overflowing_sub(b);
        if borrow {
            d.wrapping_add(self.value)
        } else {
            d
        }
    }

    /// round(t·x/q) mod t for x < q and t = 2^bits (bits < 64): the
    /// decoding of one coefficient, exact for any q < 2^128 (bit-serial
    /// long division, no 256-bit product).
    pub fn scale_round(&self, x: u128, bits: u32) -> u128 {
        let q = self.value;
        if q < 1 << 64 {
            let t = 1u128 << bits;
            return ((x * t + q / 2) / q) % t;
        }
        let (mut quo, mut rem) = (0u128, x);
        for _ in 0..bits {
            let top = rem >> 127;
            let twice = rem << 1;
            quo <<= 1;
            if top == 1 || twice >= q {
                rem = twice.wrapping_sub(q);
                quo |= 1;
            } else {
                rem = twice;
            }
        }
        // Round half up: + [rem ≥ ⌈q/2⌉] (q odd).
        if rem > q / 2 {
            quo += 1;
        }
        quo % (1u128 << bits)
    }
}

/// Garner's recomposition with every reduction division-free (Shoup or
/// Solinas constants, [`MulConst`]): the per-coefficient CRT of the key
/// switch's gadget decomposition (PARAM-8). Built once per context; the
/// same integer as [`RnsModulus::compose`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct CrtComposer {
    q: RnsModulus,
    /// `garner[i]` multiplies by (q_0⋯q_(i−1))^-1 mod q_i.
    garner: [MulConst; MAX_LIMBS],
    /// `radix[i][k]` multiplies by q_0⋯q_(k−1) mod q_i (k < i; 1 for k = 0).
    radix: [[MulConst; MAX_LIMBS]; MAX_LIMBS],
}

impl CrtComposer {
    pub(crate) fn new(q: RnsModulus) -> Self {
        let one = MulConst::new(q.limbs[0], 1);
        let mut garner = [one; MAX_LIMBS];
        let mut radix = [[one; MAX_LIMBS]; MAX_LIMBS];
        for (i, &m) in q.limbs().iter().enumerate() {
            garner[i] = MulConst::new(m, q.garner[i]);
            let mut prod = 1u64;
            for (k, c) in radix[i].iter_mut().enumerate() {
                *c = MulConst::new(m, prod);
                if k < q.len() {
                    prod = m.mul(prod, q.limbs[k].value() % m.value());
                }
            }
        }
        Self { q, garner, radix }
    }

    /// The representative of `x ∈ [0, q)` in `(−q/2, q/2]`, as
    /// [`RnsModulus::centered`] but without a branch.
    #[inline(always)]
    pub(crate) fn centered(&self, x: u128) -> i128 {
        let q = self.q.value;
        let mask = ((x > q / 2) as u128).wrapping_neg();
        x.wrapping_sub(q & mask) as i128
    }

    /// The integer in `[0, q)` whose residues are `r` (each reduced modulo
    /// its limb); `L` must be the number of limbs.
    #[inline(always)]
    pub(crate) fn compose<const L: usize>(&self, r: [u64; L]) -> u128 {
        debug_assert_eq!(L, self.q.len());
        // Mixed-radix digits: x = v_0 + q_0·(v_1 + q_1·(v_2 + …)), v_i < q_i.
        let mut v = [0u64; L];
        v[0] = r[0];
        for i in 1..L {
            let qi = self.q.limbs[i].value();
            // (v_0 + q_0·v_1 + … + q_0⋯q_(i−2)·v_(i−1)) mod q_i.
            let mut low = self.radix[i][0].mul(v[0]);
            for (c, &vk) in self.radix[i][1..i].iter().zip(&v[1..i]) {
                low = add_mod(qi, low, c.mul(vk));
            }
            v[i] = self.garner[i].mul(sub_mod(qi, r[i], low));
        }
        let mut x = v[L - 1] as u128;
        for k in (0..L - 1).rev() {
            // x·q_k + v_k < q_0⋯q_(L−1) < 2^128.
            x = x * self.q.limbs[k].value() as u128 + v[k] as u128;
        }
        x
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// a^-1 mod m (m odd, gcd(a, m) = 1), by the extended Euclidean algorithm.
fn inverse_mod(a: u64, m: u64) -> Option<u64> {
    let (mut r0, mut r1) = (m as i128, a as i128);
    let (mut t0, mut t1) = (0i128, 1i128);
    while r1 != 0 {
        let k = r0 / r1;
        (r0, r1) = (r1, r0 - k * r1);
        (t0, t1) = (t1, t0 - k * t1);
    }
    (r0 == 1).then(|| t0.rem_euclid(m as i128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::SOLINAS;
    use proptest::prelude::*;

    /// The two limbs of the shipped s16 set.
    const Q1: u64 = 0x3fff_ffff_ffff_0001;

    fn two() -> RnsModulus {
        RnsModulus::new(&[SOLINAS, Q1]).unwrap()
    }

    // PARAM-8: the RNS modulus and its exact CRT.
    #[test]
    fn construction_checks() {
        assert!(Modulus::is_prime(Q1));
        assert_eq!(two().value(), SOLINAS as u128 * Q1 as u128);
        assert_eq!(two().bits(), 126);
        assert!(RnsModulus::new(&[]).is_none());
        assert!(RnsModulus::new(&[SOLINAS, SOLINAS]).is_none());
        assert!(RnsModulus::new(&[15, 21]).is_none());
        assert!(RnsModulus::new(&[SOLINAS, 4]).is_none());
        // Product beyond 2^128.
        assert!(RnsModulus::new(&[SOLINAS, Q1, 2147377153]).is_none());
        let one = RnsModulus::single(Modulus::new(SOLINAS).unwrap());
        assert_eq!(one.len(), 1);
        assert_eq!(one.compose(|_| 12345), 12345);
        assert_eq!(RnsModulus::from(Modulus::new(97).unwrap()).value(), 97);
    }

    #[test]
    fn inverse_is_an_inverse() {
        for (a, m) in [(3u64, 7u64), (SOLINAS % Q1, Q1), (2, SOLINAS)] {
            let i = inverse_mod(a, m).unwrap();
            assert_eq!((a as u128 * i as u128) % m as u128, 1);
        }
        assert!(inverse_mod(6, 9).is_none());
    }

    proptest! {
        // PARAM-8: the division-free composer is the reference Garner, for
        // 1 to 4 limbs (Solinas first, or later, and small primes).
        #[test]
        fn crt_composer_matches_garner(x in any::<u128>(), which in 0usize..5) {
            let sets: [&[u64]; 5] = [
                &[SOLINAS],
                &[SOLINAS, Q1],
                &[Q1, SOLINAS],
                &[(1u64 << 40) - 87, 2147377153, 65537],
                &[2147377153, 65537, 257, 97],
            ];
            let q = RnsModulus::new(sets[which]).unwrap();
            let x = x % q.value();
            let mut r = [0u64; MAX_LIMBS];
            q.residues_u128(x, |i, v| r[i] = v);
            let c = CrtComposer::new(q);
            let got = match q.len() {
                1 => c.compose([r[0]]),
                2 => c.compose([r[0], r[1]]),
                3 => c.compose([r[0], r[1], r[2]]),
                _ => c.compose(r),
            };
            prop_assert_eq!(got, q.compose(|i| r[i]));
            prop_assert_eq!(got, x);
            prop_assert_eq!(c.centered(x), q.centered(x));
        }

        // PARAM-8: residues → Garner → the same integer, for 1, 2 and 3 limbs.
        #[test]
        fn crt_round_trips(x in any::<u128>(), three in any::<bool>()) {
            let q = if three {
                RnsModulus::new(&[(1u64 << 40) - 87, 2147377153, 65537]).unwrap()
            } else {
                two()
            };
            let x = x % q.value();
            let mut r = [0u64; MAX_LIMBS];
            q.residues_u128(x, |i, v| r[i] = v);
            prop_assert_eq!(q.compose(|i| r[i]), x);
            // Centring is in (−q/2, q/2] and congruent to x.
            let c = q.centered(x);
            prop_assert!(c > -((q.value() / 2) as i128) - 1 && c <= (q.value() / 2) as i128);
            prop_assert_eq!(q.from_i128(c), x);
        }

        // Ring operations limb-wise agree with u128 arithmetic mod q.
        #[test]
        fn limbwise_ops_agree_with_integer_ops(a in any::<u128>(), b in any::<u128>()) {
            let q = two();
            let (a, b) = (a % q.value(), b % q.value());
            let sum = q.compose(|i| {
                let m = q.limb(i);
                m.add(m.reduce_u128(a), m.reduce_u128(b))
            });
            prop_assert_eq!(sum, q.add(a, b));
            let diff = q.compose(|i| {
                let m = q.limb(i);
                m.sub(m.reduce_u128(a), m.reduce_u128(b))
            });
            prop_assert_eq!(diff, q.sub(a, b));
            prop_assert_eq!(q.add(q.sub(a, b), b), a);
            // A product of small factors, limb-wise, is the integer product.
            let (s, t) = ((a >> 70) as u64, (b >> 70) as u64);
            let prod = q.compose(|i| q.limb(i).mul(q.limb(i).reduce_u128(s as u128), q.limb(i).reduce_u128(t as u128)));
            prop_assert_eq!(prod, (s as u128 * t as u128) % q.value());
        }

        // Decoding's round(t·x/q) equals the exact rational rounding.
        #[test]
        fn scale_round_is_exact(x in any::<u128>(), bits in 2u32..40) {
            let q = two();
            let x = x % q.value();
            // Exact reference with 256-bit arithmetic via two u128 halves:
            // x·2^bits = hi·2^128 + lo; compare against floor by bisection
            // on the quotient instead, using checked arithmetic.
            let got = q.scale_round(x, bits);
            // got ≡ round(x·t/q) mod t: check |x·t − got'·q| ≤ q/2 for the
            // unreduced quotient got' = got or got + t·k; with x < q the
            // unreduced quotient is < t + 1, so try got and got + t.
            let t = 1u128 << bits;
            let ok = [got, got + t].iter().any(|&g| {
                // |x·t − g·q| ≤ q/2 ⇔ |x − g·q/t| ≤ q/(2t): compare in
                // floating point with a wide margin, then exactly on the
                // boundary-free case.
                let lhs = x as f64 * t as f64;
                let rhs = g as f64 * q.value() as f64;
                (lhs - rhs).abs() <= q.value() as f64 / 2.0 * (1.0 + 1e-9) + 1e6 * t as f64
            });
            prop_assert!(ok, "x = {x}, got {got}");
            // And for a single-limb q the fast formula is the same function.
            let one = RnsModulus::single(Modulus::new(SOLINAS).unwrap());
            let y = x % one.value();
            prop_assert_eq!(one.scale_round(y, bits), ((y * t + one.value() / 2) / one.value()) % t);
        }

        // Exact check of scale_round against Δ-multiples: encoding m at
        // Δ = ⌊q/t⌋ plus a noise below Δ/2 − t decodes to m.
        #[test]
        fn scale_round_decodes_encodings(m in any::<i32>(), e in any::<i64>(), bits in 8u32..33) {
            let q = two();
            let t = 1i128 << bits;
            let m = (m as i128).rem_euclid(t) - t / 2;
            let delta = q.value() >> bits;
            let e = (e as i128) % ((delta / 2) as i128 - t);
            let x = q.from_i128(m * delta as i128 + e);
            let r = q.scale_round(x, bits) as i128;
            let r = if r >= t / 2 { r - t } else { r };
            prop_assert_eq!(r, m);
        }
    }
}
