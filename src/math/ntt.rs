//! Negacyclic number-theoretic transforms. Modulo the Goldilocks prime
//! [`SOLINAS`](super::SOLINAS) on CPUs with AVX-512 or AVX2, the crate's
//! own transform (`goldilocks_ntt`: shift twiddles, cyclic blocks after a
//! twist, transposed tail; the AVX-512 and AVX2 kernels give the same
//! outputs); modulo a prime below 2^31 on AVX2 without AVX-512, the
//! crate's own 32-bit transform (`narrow_ntt`, tfhe-ntt's outputs word for
//! word); every other case is delegated to `tfhe-ntt`, which selects
//! AVX-512 (IFMA), AVX2 or scalar kernels at run time (SIMD-1).

use super::goldilocks_ntt::GoldilocksNtt;
#[cfg(target_arch = "x86_64")]
use super::narrow_ntt::NarrowNtt;
use super::Modulus;

/// A transform of length `N` modulo one prime `p ≡ 1 (mod 2N)`.
///
/// The forward transform leaves values in a private evaluation order (bit-
/// reversed for tfhe-ntt's, permuted further for the Goldilocks one); only
/// point-wise products and sums are ever taken in that domain, and every
/// operand of one prime goes through the same plan, so the order never
/// matters to callers. Nothing in that domain is serialised (keys travel in
/// the coefficient domain and are transformed on expansion).
pub struct NttPlan {
    plan: Transform,
    modulus: Modulus,
    n_inv: u64,
    /// The evaluation order, read off the plan on first use.
    order: std::sync::OnceLock<EvalOrder>,
}

/// Where a plan puts its evaluations: point i is ψ^`exp[i]` for the
/// primitive 2N-th root ψ at index 0 (exponents odd, below 2N), and the
/// point ψ^e is at index `index[e]`.
struct EvalOrder {
    exp: Vec<u32>,
    index: Vec<u32>,
}

/// One prime's transform: 32-bit words for primes below 2^31 (the b-sets'
/// P: sixteen lanes per AVX-512 vector instead of eight, about 0.7× the
/// time; [`Narrow`]), else tfhe-ntt's 64-bit plan. Each prime has one
/// transform, so every operand of a point-wise product is in its domain.
/// The Goldilocks prime takes the crate's own transform where it runs
/// (AVX-512 or AVX2, N ≥ 64), keeping tfhe-ntt's plan for `normalize` and
/// the point-wise products, which do not depend on the order.
enum Transform {
    Wide(tfhe_ntt::prime64::Plan),
    Narrow(Narrow),
    Goldilocks(GoldilocksNtt, tfhe_ntt::prime64::Plan),
}

impl Transform {
    fn size(&self) -> usize {
        match self {
            Self::Wide(p) => p.ntt_size(),
            Self::Narrow(p) => p.tfhe.ntt_size(),
            Self::Goldilocks(g, _) => g.n(),
        }
    }

    /// Runs `f` on `buf` as 32-bit words (values below 2^31) and widens
    /// the result back: the 64-bit API of a narrow plan, off the hot paths
    /// (the key switch calls the 32-bit plan directly).
    fn narrowed(buf: &mut [u64], f: impl FnOnce(&mut [u32])) {
        let mut tmp: Vec<u32> = buf.iter().map(|&x| x as u32).collect();
        f(&mut tmp);
        for (o, &x) in buf.iter_mut().zip(&tmp) {
            *o = x as u64;
        }
    }
}

/// A prime below 2^31's transform in 32-bit words: the crate's own AVX2
/// kernels where they run (`narrow_ntt`: tfhe-ntt's outputs word for word,
/// faster on AVX2), else tfhe-ntt's plan, which also serves `normalize`.
pub(crate) struct Narrow {
    tfhe: tfhe_ntt::prime32::Plan,
    #[cfg(target_arch = "x86_64")]
    own: Option<NarrowNtt>,
}

impl Narrow {
    fn new(n: usize, p: u32) -> Option<Self> {
        let tfhe = tfhe_ntt::prime32::Plan::try_new(n, p)?;
        Some(Self {
            #[cfg(target_arch = "x86_64")]
            own: NarrowNtt::new(&tfhe),
            tfhe,
        })
    }

    /// Forward transform of reduced coefficients, reduced evaluations out
    /// in bit-reversed order.
    pub(crate) fn fwd(&self, buf: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(own) = &self.own {
            return own.fwd(buf);
        }
        self.tfhe.fwd(buf)
    }

    /// Inverse transform without the 1/N factor, reduced.
    pub(crate) fn inv(&self, buf: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(own) = &self.own {
            return own.inv(buf);
        }
        self.tfhe.inv(buf)
    }
}

impl std::fmt::Debug for NttPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NttPlan")
            .field("n", &self.plan.size())
            .field("modulus", &self.modulus.value())
            .finish()
    }
}

impl NttPlan {
    /// `None` when `p` is not an NTT-friendly prime for this `n`.
    pub fn new(n: usize, p: u64) -> Option<Self> {
        let modulus = Modulus::new(p)?;
        let plan = if p < 1 << 31 {
            Transform::Narrow(Narrow::new(n, p as u32)?)
        } else {
            let wide = tfhe_ntt::prime64::Plan::try_new(n, p)?;
            match GoldilocksNtt::new(n) {
                Some(g) if p == super::SOLINAS && GoldilocksNtt::supported() => {
                    Transform::Goldilocks(g, wide)
                }
                _ => Transform::Wide(wide),
            }
        };
        let n_inv = modulus.inv(n as u64 % p)?;
        Some(Self {
            plan,
            modulus,
            n_inv,
            order: std::sync::OnceLock::new(),
        })
    }

    /// τ_h in the evaluation domain (h odd): `perm` with
    /// forward(τ_h(x))[i] = forward(x)[perm[i]], since τ_h(x) at a point ζ
    /// is x(ζ^h). Read off this plan's own order (its transform of X lists
    /// the points), so it holds whatever order its kernels use.
    pub(crate) fn automorphism_permutation(&self, h: usize) -> Vec<u32> {
        let order = self.order.get_or_init(|| self.eval_order());
        let mask = 2 * self.n() - 1;
        order
            .exp
            .iter()
            .map(|&e| order.index[(e as usize * h) & mask])
            .collect()
    }

    fn eval_order(&self) -> EvalOrder {
        let (m, n) = (self.modulus, self.n());
        let mut points = vec![0u64; n];
        points[1] = 1;
        self.forward(&mut points);
        let mut sorted: Vec<(u64, u32)> = points.iter().zip(0u32..).map(|(&x, i)| (x, i)).collect();
        sorted.sort_unstable();
        let (mut exp, mut index) = (vec![0u32; n], vec![0u32; 2 * n]);
        let (psi, step) = (points[0], m.mul(points[0], points[0]));
        let mut power = psi;
        for e in (1..2 * n).step_by(2) {
            let k = sorted
                .binary_search_by_key(&power, |&(x, _)| x)
                .map(|k| sorted[k].1)
                .expect("a negacyclic transform evaluates at the odd powers of its first point");
            exp[k as usize] = e as u32;
            index[e] = k;
            power = m.mul(power, step);
        }
        EvalOrder { exp, index }
    }

    /// The transform length N (the ring degree).
    pub fn n(&self) -> usize {
        self.plan.size()
    }

    /// The 32-bit transform, when p < 2^31: for callers that keep their
    /// residues in 32-bit words (the one-limb key switch's mod-P side).
    pub(crate) fn narrow(&self) -> Option<&Narrow> {
        match &self.plan {
            Transform::Narrow(p) => Some(p),
            Transform::Wide(_) | Transform::Goldilocks(..) => None,
        }
    }

    /// The prime p this plan works modulo.
    pub fn modulus(&self) -> Modulus {
        self.modulus
    }

    /// `1/N mod p`, for callers that fold the normalisation into constants.
    pub fn n_inv(&self) -> u64 {
        self.n_inv
    }

    /// Forward negacyclic transform in place: coefficients in `[0, p)` in
    /// standard order, evaluations out in bit-reversed order.
    pub fn forward(&self, buf: &mut [u64]) {
        match &self.plan {
            Transform::Wide(p) => p.fwd(buf),
            Transform::Narrow(p) => Transform::narrowed(buf, |b| p.fwd(b)),
            Transform::Goldilocks(g, _) => g.forward(buf),
        }
    }

    /// Inverse transform *without* the 1/N factor: callers fold 1/N into a
    /// pre-transformed operand (keys, weights) and save a pass.
    pub fn backward_unnormalized(&self, buf: &mut [u64]) {
        match &self.plan {
            Transform::Wide(p) => p.inv(buf),
            Transform::Narrow(p) => Transform::narrowed(buf, |b| p.inv(b)),
            Transform::Goldilocks(g, _) => g.backward_unnormalized(buf),
        }
    }

    /// Inverse transform including the 1/N factor.
    pub fn backward(&self, buf: &mut [u64]) {
        match &self.plan {
            Transform::Goldilocks(g, p) => {
                g.backward_unnormalized(buf);
                p.normalize(buf);
            }
            Transform::Wide(p) => {
                p.inv(buf);
                p.normalize(buf);
            }
            Transform::Narrow(p) => Transform::narrowed(buf, |b| {
                p.inv(b);
                p.tfhe.normalize(b);
            }),
        }
    }

    /// Multiplies every value by 1/N.
    pub fn normalize(&self, buf: &mut [u64]) {
        match &self.plan {
            Transform::Wide(p) | Transform::Goldilocks(_, p) => p.normalize(buf),
            Transform::Narrow(p) => Transform::narrowed(buf, |b| p.tfhe.normalize(b)),
        }
    }

    /// `acc += lhs ⊙ rhs` point-wise. Small primes use tfhe-ntt's vectorised
    /// (Shoup/IFMA) kernel; the Solinas prime its division-free reduction.
    #[inline]
    pub fn mul_accumulate(&self, acc: &mut [u64], lhs: &[u64], rhs: &[u64]) {
        let m = self.modulus;
        match &self.plan {
            _ if m.value() == super::SOLINAS => solinas_simd::mul_accumulate(acc, lhs, rhs),
            Transform::Wide(p) | Transform::Goldilocks(_, p) => p.mul_accumulate(acc, lhs, rhs),
            // Off the hot paths (see `narrowed`): field ops.
            Transform::Narrow(_) => {
                for ((a, &l), &r) in acc.iter_mut().zip(lhs).zip(rhs) {
                    *a = m.add(*a, m.mul(l, r));
                }
            }
        }
    }

    /// `lhs ⊙= rhs` point-wise.
    #[inline]
    pub fn mul_assign(&self, lhs: &mut [u64], rhs: &[u64]) {
        let m = self.modulus;
        for (a, &r) in lhs.iter_mut().zip(rhs) {
            *a = m.mul(*a, r);
        }
    }

    /// Transforms a polynomial with small signed coefficients.
    pub fn forward_signed(&self, coeffs: &[i64], out: &mut [u64]) {
        for (o, &c) in out.iter_mut().zip(coeffs) {
            *o = self.modulus.from_i64(c);
        }
        self.forward(out);
    }
}

/// The Solinas prime's point-wise multiply-accumulate, from 64-bit
/// operations only and branch-free, compiled once per instruction set and
/// picked at run time (SIMD-1): tfhe-ntt has no vectorised kernel for it.
mod solinas_simd {
    use crate::math::{add_mod, mulhi_split, solinas_reduce_split, SOLINAS};

    #[inline(always)]
    fn kernel(acc: &mut [u64], lhs: &[u64], rhs: &[u64]) {
        let n = acc.len();
        let (lhs, rhs) = (&lhs[..n], &rhs[..n]);
        for (i, a) in acc.iter_mut().enumerate() {
            let (l, r) = (lhs[i], rhs[i]);
            let prod = solinas_reduce_split(l.wrapping_mul(r), mulhi_split(l, r));
            *a = add_mod(SOLINAS, *a, prod);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    unsafe fn kernel_avx512(acc: &mut [u64], lhs: &[u64], rhs: &[u64]) {
        kernel(acc, lhs, rhs)
    }

    /// `acc += lhs ⊙ rhs` modulo [`SOLINAS`], all reduced.
    pub(super) fn mul_accumulate(acc: &mut [u64], lhs: &[u64], rhs: &[u64]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the features were detected on this CPU.
            return unsafe { kernel_avx512(acc, lhs, rhs) };
        }
        // Without AVX-512's 64-bit lanes the widening scalar multiply wins.
        let m = crate::math::Modulus::new(SOLINAS).expect("odd");
        for ((a, &l), &r) in acc.iter_mut().zip(lhs).zip(rhs) {
            *a = m.add(*a, m.mul(l, r));
        }
    }
}

/// The transforms of an RNS modulus, one [`NttPlan`] per limb, acting on
/// limb-major buffers of length L·N (PARAM-8). With one limb every method is
/// the single plan's, called directly (no chunking).
#[derive(Debug)]
pub struct RnsNttPlan {
    plans: Vec<NttPlan>,
    n: usize,
}

impl RnsNttPlan {
    /// `None` unless every limb is an NTT-friendly prime for `n`.
    pub fn new(n: usize, q: &super::RnsModulus) -> Option<Self> {
        let plans = q
            .limbs()
            .iter()
            .map(|m| NttPlan::new(n, m.value()))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { plans, n })
    }

    /// The ring degree N (the length of one limb's block).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The plan of limb `i`.
    pub fn limb(&self, i: usize) -> &NttPlan {
        &self.plans[i]
    }

    /// The plans of all L limbs, in limb order.
    pub fn limbs(&self) -> &[NttPlan] {
        &self.plans
    }

    /// Forward transform of every limb of a limb-major buffer of length L·N.
    pub fn forward(&self, buf: &mut [u64]) {
        if let [one] = &self.plans[..] {
            return one.forward(buf);
        }
        for (c, p) in buf.chunks_exact_mut(self.n).zip(&self.plans) {
            p.forward(c);
        }
    }

    /// Inverse transform of every limb *without* the 1/N factor; see
    /// [`NttPlan::backward_unnormalized`].
    pub fn backward_unnormalized(&self, buf: &mut [u64]) {
        if let [one] = &self.plans[..] {
            return one.backward_unnormalized(buf);
        }
        for (c, p) in buf.chunks_exact_mut(self.n).zip(&self.plans) {
            p.backward_unnormalized(c);
        }
    }

    /// Inverse transform including the 1/N factor.
    pub fn backward(&self, buf: &mut [u64]) {
        self.backward_unnormalized(buf);
        self.normalize(buf);
    }

    /// Multiplies every value of every limb by 1/N modulo that limb.
    pub fn normalize(&self, buf: &mut [u64]) {
        if let [one] = &self.plans[..] {
            return one.normalize(buf);
        }
        for (c, p) in buf.chunks_exact_mut(self.n).zip(&self.plans) {
            p.normalize(c);
        }
    }

    /// `acc += lhs ⊙ rhs` point-wise, limb by limb (all three limb-major, L·N).
    #[inline]
    pub fn mul_accumulate(&self, acc: &mut [u64], lhs: &[u64], rhs: &[u64]) {
        if let [one] = &self.plans[..] {
            return one.mul_accumulate(acc, lhs, rhs);
        }
        let n = self.n;
        for (((a, l), r), p) in acc
            .chunks_exact_mut(n)
            .zip(lhs.chunks_exact(n))
            .zip(rhs.chunks_exact(n))
            .zip(&self.plans)
        {
            p.mul_accumulate(a, l, r);
        }
    }

    /// `lhs ⊙= rhs` point-wise, limb by limb (both limb-major, L·N).
    #[inline]
    pub fn mul_assign(&self, lhs: &mut [u64], rhs: &[u64]) {
        if let [one] = &self.plans[..] {
            return one.mul_assign(lhs, rhs);
        }
        let n = self.n;
        for ((a, r), p) in lhs
            .chunks_exact_mut(n)
            .zip(rhs.chunks_exact(n))
            .zip(&self.plans)
        {
            p.mul_assign(a, r);
        }
    }

    /// Transforms a polynomial with small signed coefficients (`coeffs` of
    /// length ≤ N, zero-padded) into every limb of `out` (length L·N). Any
    /// signed width: weights are kept in their narrowest (`linear`).
    pub fn forward_signed<T: Copy + Into<i64>>(&self, coeffs: &[T], out: &mut [u64]) {
        for (c, p) in out.chunks_exact_mut(self.n).zip(&self.plans) {
            let m = p.modulus();
            c.fill(0);
            for (o, &x) in c.iter_mut().zip(coeffs) {
                *o = m.from_i64(x.into());
            }
            p.forward(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::poly;
    use crate::math::SOLINAS;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn ntt_product_is_negacyclic_product(
            a in proptest::collection::vec(-1000i64..1000, 64),
            b in proptest::collection::vec(-1000i64..1000, 64),
            p in prop_oneof![Just(SOLINAS), Just(2147377153u64)],
        ) {
            let plan = NttPlan::new(64, p).unwrap();
            let m = plan.modulus();
            let mut fa = vec![0; 64];
            let mut fb = vec![0; 64];
            plan.forward_signed(&a, &mut fa);
            plan.forward_signed(&b, &mut fb);
            prop_assert!(fa.iter().all(|&x| x < p));
            plan.mul_assign(&mut fa, &fb);
            plan.backward(&mut fa);
            let expect = poly::negacyclic_mul_i64(&a, &b);
            let got: Vec<i128> = fa.iter().map(|&x| m.centered(x) as i128).collect();
            prop_assert_eq!(got, expect);
        }

        // PARAM-8: the per-limb transforms of a two-limb q multiply exactly:
        // the CRT-recomposed, centred product is the integer product.
        #[test]
        fn rns_ntt_product_is_the_integer_product(
            a in proptest::collection::vec(-(1i64 << 40)..(1i64 << 40), 64),
            b in proptest::collection::vec(-(1i64 << 40)..(1i64 << 40), 64),
        ) {
            let q = crate::math::RnsModulus::new(&[SOLINAS, 0x3fff_ffff_ffff_0001]).unwrap();
            let plan = RnsNttPlan::new(64, &q).unwrap();
            let (mut fa, mut fb) = (vec![0; 128], vec![0; 128]);
            plan.forward_signed(&a, &mut fa);
            plan.forward_signed(&b, &mut fb);
            let mut acc = vec![0; 128];
            plan.mul_accumulate(&mut acc, &fa, &fb);
            plan.mul_assign(&mut fa, &fb);
            prop_assert_eq!(&acc, &fa);
            plan.backward(&mut fa);
            // Products of 40-bit values summed 64 times exceed 2^64 but
            // not q/2 ≈ 2^125: only the RNS modulus holds them.
            let expect = poly::negacyclic_mul_i64(&a, &b);
            let got: Vec<i128> = (0..64).map(|i| q.centered(q.coefficient(&fa, 64, i))).collect();
            prop_assert_eq!(got, expect);
        }

        // A prime below 2^31 takes the 32-bit transform: its products are
        // the 64-bit transform's (the negacyclic product), and its 64-bit
        // API round-trips.
        #[test]
        fn narrow_transform_products_match_the_wide_ones(
            a in proptest::collection::vec(0u64..2147377153, 64),
            b in proptest::collection::vec(0u64..2147377153, 64),
        ) {
            let p = 2147377153u64;
            let narrow = NttPlan::new(64, p).unwrap();
            prop_assert!(narrow.narrow().is_some());
            let wide = tfhe_ntt::prime64::Plan::try_new(64, p).unwrap();
            let (mut fa, mut fb) = (a.clone(), b.clone());
            narrow.forward(&mut fa);
            narrow.forward(&mut fb);
            // Reduced, as the key switch's deferred sums mod P assume.
            prop_assert!(fa.iter().chain(&fb).all(|&x| x < p));
            let mut acc = vec![0; 64];
            narrow.mul_accumulate(&mut acc, &fa, &fb);
            narrow.backward(&mut acc);
            let (mut wa, mut wb) = (a.clone(), b.clone());
            wide.fwd(&mut wa);
            wide.fwd(&mut wb);
            let mut wacc = vec![0; 64];
            wide.mul_accumulate(&mut wacc, &wa, &wb);
            wide.inv(&mut wacc);
            wide.normalize(&mut wacc);
            prop_assert_eq!(&acc, &wacc);
            narrow.backward(&mut fa);
            prop_assert_eq!(&fa, &a);
        }

        // SIMD-1: the vectorised accumulate agrees with scalar field ops.
        #[test]
        fn mul_accumulate_matches_scalar(
            seed in proptest::collection::vec(any::<u64>(), 3 * 64),
            p in prop_oneof![Just(SOLINAS), Just(2147377153u64)],
        ) {
            let plan = NttPlan::new(64, p).unwrap();
            let m = plan.modulus();
            let v: Vec<u64> = seed.iter().map(|&x| x % p).collect();
            let (a, rest) = v.split_at(64);
            let (l, r) = rest.split_at(64);
            let mut acc = a.to_vec();
            plan.mul_accumulate(&mut acc, l, r);
            let expect: Vec<u64> = (0..64).map(|i| m.add(a[i], m.mul(l[i], r[i]))).collect();
            prop_assert_eq!(acc, expect);
        }
    }
}
