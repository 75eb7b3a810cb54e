//! The arithmetic context of one parameter set: transforms for q and P plus
//! encoding, encryption, decryption and plaintext products.

use super::{
    expand_mask, limbwise1, Ciphertext, NttCiphertext, NttPlaintext, PublicKey, SecretKey,
    SeededCiphertext,
};
use crate::math::slots::SlotInverse;
use crate::math::{poly, NttPlan, RnsModulus, RnsNttPlan, MAX_LIMBS};
use crate::params::ParameterSet;
use crate::rng::Csprng;
use zeroize::Zeroizing;

/// Everything the arithmetic needs for one parameter set, built once.
#[derive(Debug)]
pub struct Context {
    params: ParameterSet,
    q: RnsModulus,
    /// One transform per limb of q (PARAM-8).
    pub(crate) ntt_q: RnsNttPlan,
    pub(crate) ntt_p: NttPlan,
    /// Δ = ⌊q/t⌋ modulo each limb.
    delta: [u64; MAX_LIMBS],
    /// The multi-limb key switch's constants (unused with one limb).
    pub(crate) rns_ks: super::keyswitch::RnsKeySwitch,
    /// On one-limb sets, the inverse transforms mod q and mod P read at a
    /// packing node's slots (PACK-6).
    pub(crate) slot_readers: Option<(SlotInverse, SlotInverse)>,
}

/// How many runs of coefficients [`Context::flood`] samples as separate
/// tasks: enough to keep two to eight threads busy on one ciphertext
/// (≈ 80 µs of sampling each at N = 4096), few enough that seeding their
/// generators costs nothing.
pub(crate) const FLOOD_CHUNKS: usize = 8;

impl Context {
    /// Builds the transforms for every limb of q and for P, and Δ = ⌊q/t⌋ per
    /// limb. Cannot fail: a [`ParameterSet`] only exists once its primes were
    /// checked NTT-friendly (PARAM-2).
    pub fn new(params: ParameterSet) -> Self {
        let n = params.ring_degree();
        let q = params.q();
        // Every prime was checked ≡ 1 (mod 2N) by `ParameterSet::new`.
        let ntt_q = RnsNttPlan::new(n, &q).expect("validated NTT primes q_i");
        let ntt_p = NttPlan::new(n, params.p().value()).expect("validated NTT prime P");
        let mut delta = [0; MAX_LIMBS];
        q.residues_u128(params.delta(), |l, r| delta[l] = r);
        let rns_ks = super::keyswitch::RnsKeySwitch::new(q, params.p(), params.gadget_base_log());
        let slot_readers = match q.len() {
            1 => SlotInverse::new(ntt_q.limb(0)).zip(SlotInverse::new(&ntt_p)),
            _ => None,
        };
        Self {
            params,
            q,
            ntt_q,
            ntt_p,
            delta,
            rns_ks,
            slot_readers,
        }
    }

    /// The validated parameter set this context was built for.
    pub fn params(&self) -> &ParameterSet {
        &self.params
    }
    /// The ring degree N.
    pub fn n(&self) -> usize {
        self.params.ring_degree()
    }
    /// The ciphertext modulus (one limb on the single-modulus sets).
    pub fn q(&self) -> RnsModulus {
        self.q
    }
    /// Number of RNS limbs of q.
    pub fn limbs(&self) -> usize {
        self.q.len()
    }

    /// The zero ciphertext of this context's ring and modulus.
    pub fn zero_ciphertext(&self) -> Ciphertext {
        Ciphertext::zero(self.n(), self.limbs())
    }

    /// Largest magnitude a plaintext value may have: |m| < t/2.
    pub fn plaintext_half_range(&self) -> i64 {
        1i64 << (self.params.plaintext_bits() - 1)
    }

    /// ENC-1. Coefficient encoding: `values[i]` (signed, |v| < t/2) becomes Δ·v at
    /// coefficient i; missing coefficients are zero. Limb-major, Δ·v taken
    /// modulo each limb (PARAM-8).
    ///
    /// # Panics
    /// If more than N values are given (a caller bug, not peer input).
    pub fn encode(&self, values: &[i64]) -> Vec<u64> {
        assert!(values.len() <= self.n(), "more values than coefficients");
        let n = self.n();
        let mut out = vec![0u64; n * self.limbs()];
        limbwise1(self.q, n, &mut out, |l, q, o| {
            let delta = self.delta[l];
            for (o, &v) in o.iter_mut().zip(values) {
                *o = q.mul(delta, q.from_i64(v));
            }
        });
        out
    }

    /// Inverse of [`encode`](Self::encode) on a phase: round(t·x/q), centred
    /// mod t, with x recomposed exactly by the CRT on a multi-limb q.
    pub fn decode(&self, phase: &[u64]) -> Vec<i64> {
        let bits = self.params.plaintext_bits();
        let t = 1u128 << bits;
        let centre = |r: u128| {
            if r >= t / 2 {
                r as i64 - t as i64
            } else {
                r as i64
            }
        };
        if let Some(q) = self.q.single_limb() {
            let q = q.value() as u128;
            return phase
                .iter()
                .map(|&x| centre(((x as u128 * t + q / 2) / q) % t))
                .collect();
        }
        let n = phase.len() / self.limbs();
        (0..n)
            .map(|i| centre(self.q.scale_round(self.q.coefficient(phase, n, i), bits)))
            .collect()
    }

    /// `a · s` in the coefficient domain.
    pub(crate) fn mask_times_key(&self, a: &[u64], sk: &SecretKey) -> Vec<u64> {
        let mut buf = a.to_vec();
        self.ntt_q.forward(&mut buf);
        self.ntt_q.mul_assign(&mut buf, &sk.s_ntt_q);
        self.ntt_q.backward_unnormalized(&mut buf);
        buf
    }

    /// Adds the small signed `e[i]` to coefficient i of every limb of `v`.
    pub(crate) fn add_small(&self, v: &mut [u64], i: usize, e: i64) {
        let n = self.n();
        for (l, q) in self.q.limbs().iter().enumerate() {
            let x = &mut v[l * n + i];
            *x = q.add(*x, q.from_i64(e));
        }
    }

    /// `b = a·s + plain + e` with fresh TUniform noise from `rng`.
    pub(crate) fn encrypt_with_mask(
        &self,
        sk: &SecretKey,
        a: Vec<u64>,
        plain: &[u64],
        rng: &mut Csprng,
    ) -> Ciphertext {
        let n = self.n();
        let mut b = self.mask_times_key(&a, sk);
        let bound = self.params.noise_bound_log2();
        if let Some(q) = self.q.single_limb() {
            for (bi, &m) in b.iter_mut().zip(plain) {
                let e = q.from_i64(rng.tuniform(bound));
                *bi = q.add(q.add(*bi, m), e);
            }
        } else {
            limbwise1(self.q, n, &mut b, |l, q, o| {
                poly::add_assign(q, o, &plain[l * n..(l + 1) * n])
            });
            for i in 0..n {
                let e = rng.tuniform(bound);
                self.add_small(&mut b, i, e);
            }
        }
        Ciphertext { a, b, n }
    }

    /// Encrypts an encoded plaintext with a mask derived from a fresh public
    /// seed (drawn from `rng`); only the seed and body need to travel (KEY-2).
    pub fn encrypt_seeded_plain(
        &self,
        sk: &SecretKey,
        plain: &[u64],
        rng: &mut Csprng,
    ) -> SeededCiphertext {
        let seed = rng.seed();
        let a = expand_mask(seed, self.n(), self.q());
        let ct = self.encrypt_with_mask(sk, a, plain, rng);
        SeededCiphertext { seed, b: ct.b }
    }

    /// Encrypts signed values (coefficient encoding).
    pub fn encrypt_seeded(
        &self,
        sk: &SecretKey,
        values: &[i64],
        rng: &mut Csprng,
    ) -> SeededCiphertext {
        self.encrypt_seeded_plain(sk, &self.encode(values), rng)
    }

    /// Secret-key encryption of `values` (at most N, |v| < t/2, ENC-1) with
    /// fresh TUniform noise: [`encrypt_seeded`](Self::encrypt_seeded) with the
    /// mask expanded, for use on the same side.
    pub fn encrypt(&self, sk: &SecretKey, values: &[i64], rng: &mut Csprng) -> Ciphertext {
        self.encrypt_seeded(sk, values, rng).expand(self.q())
    }

    /// Encrypts `values` for an unshuffle repack that skips the lowest γ
    /// tree levels: the ciphertext of m and of each conjugate τ_G(m),
    /// G = Π_{ℓ∈t}(2^ℓ+1) for every non-empty t ⊆ {1..γ}, all encoded at
    /// Δ·2^(−γ) mod q (proofs/packing.md, Lemma 5). Upload grows by 2^γ;
    /// these ciphertexts are only meaningful as packing sources.
    pub fn encrypt_with_conjugates(
        &self,
        sk: &SecretKey,
        values: &[i64],
        gamma: u32,
        rng: &mut Csprng,
    ) -> (SeededCiphertext, Vec<SeededCiphertext>) {
        let n = self.n();
        let mut plain = self.encode(values);
        limbwise1(self.q, n, &mut plain, |_, q, o| {
            let inv = q
                .inv(q.pow(2, gamma as u64))
                .expect("2^γ is invertible modulo odd q");
            poly::scalar_mul_assign(q, o, inv)
        });
        let base = self.encrypt_seeded_plain(sk, &plain, rng);
        let conjugates = (1u32..(1 << gamma))
            .map(|t| {
                let g = (1..=gamma)
                    .filter(|l| t & (1 << (l - 1)) != 0)
                    .fold(1usize, |acc, l| acc * ((1usize << l) + 1) % (2 * n));
                let mut twisted = vec![0u64; n * self.limbs()];
                super::limbwise2(self.q, n, &mut twisted, &plain, |q, o, i| {
                    poly::automorphism(q, o, i, g)
                });
                self.encrypt_seeded_plain(sk, &twisted, rng)
            })
            .collect();
        (base, conjugates)
    }

    /// `b − a·s` (limb-major).
    pub fn phase(&self, sk: &SecretKey, ct: &Ciphertext) -> Vec<u64> {
        let n = self.n();
        let mut p = self.mask_times_key(&ct.a, sk);
        limbwise1(self.q, n, &mut p, |l, q, o| {
            for (pi, &bi) in o.iter_mut().zip(&ct.b[l * n..(l + 1) * n]) {
                *pi = q.sub(bi, *pi);
            }
        });
        p
    }

    /// The phase, each coefficient as its centred integer in (−q/2, q/2].
    pub fn phase_centered(&self, sk: &SecretKey, ct: &Ciphertext) -> Vec<i128> {
        let n = self.n();
        let p = self.phase(sk, ct);
        (0..n)
            .map(|i| self.q.centered(self.q.coefficient(&p, n, i)))
            .collect()
    }

    /// Decrypts an LWE ciphertext extracted by [`crate::extract::extract_lwe`].
    pub fn decrypt_lwe(&self, sk: &SecretKey, lwe: &crate::extract::LweCiphertext) -> Option<i64> {
        let n = self.n();
        if lwe.mask.len() != n * self.limbs() || lwe.body.len() != self.limbs() {
            return None;
        }
        let mut phase = vec![0u64; self.limbs()];
        for (l, q) in self.q.limbs().iter().enumerate() {
            if lwe.body[l] >= q.value() {
                return None;
            }
            let dot = lwe.mask[l * n..(l + 1) * n]
                .iter()
                .zip(&sk.s)
                .fold(
                    0u64,
                    |acc, (&a, &s)| if s == 1 { q.add(acc, a) } else { acc },
                );
            phase[l] = q.sub(lwe.body[l], dot);
        }
        if self.limbs() == 1 {
            return Some(self.decode(&[phase[0]])[0]);
        }
        let x = self.q.compose(|l| phase[l]);
        let r = self.q.scale_round(x, self.params.plaintext_bits()) as i64;
        let t = 1i64 << self.params.plaintext_bits();
        Some(if r >= t / 2 { r - t } else { r })
    }

    /// All N plaintext values of `ct`: the phase `b − a·s`, decoded and centred
    /// mod t. Correct whenever the noise is below the decoding margin
    /// Δ/2 − t/2 − 1 that PARAM-4 budgets for; beyond it the values are
    /// silently wrong, not an error.
    pub fn decrypt(&self, sk: &SecretKey, ct: &Ciphertext) -> Vec<i64> {
        self.decode(&self.phase(sk, ct))
    }

    /// Centred noise `phase − Δ·expected` per coefficient (for measurement).
    /// Noise beyond ±2^63 (possible only on multi-limb sets, whose flooding
    /// exceeds 64 bits) saturates; [`noise_wide`](Self::noise_wide) is exact.
    pub fn noise(&self, sk: &SecretKey, ct: &Ciphertext, expected: &[i64]) -> Vec<i64> {
        self.noise_wide(sk, ct, expected)
            .into_iter()
            .map(|e| e.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
            .collect()
    }

    /// Centred noise `phase − Δ·expected` per coefficient, exact.
    pub fn noise_wide(&self, sk: &SecretKey, ct: &Ciphertext, expected: &[i64]) -> Vec<i128> {
        let n = self.n();
        let enc = self.encode(expected);
        let mut p = self.phase(sk, ct);
        limbwise1(self.q, n, &mut p, |l, q, o| {
            poly::sub_assign(q, o, &enc[l * n..(l + 1) * n])
        });
        (0..n)
            .map(|i| self.q.centered(self.q.coefficient(&p, n, i)))
            .collect()
    }

    /// Forward transform of both parts, for accumulating plaintext products with
    /// [`mul_plain_accumulate`](Self::mul_plain_accumulate).
    pub fn to_ntt(&self, ct: &Ciphertext) -> NttCiphertext {
        let mut out = NttCiphertext {
            a: ct.a.clone(),
            b: ct.b.clone(),
        };
        self.ntt_q.forward(&mut out.a);
        self.ntt_q.forward(&mut out.b);
        out
    }

    /// The zero accumulator in the NTT domain (L·N zeros per part).
    pub fn ntt_zero(&self) -> NttCiphertext {
        NttCiphertext {
            a: vec![0; self.n() * self.limbs()],
            b: vec![0; self.n() * self.limbs()],
        }
    }

    /// Transforms a weight polynomial once, with 1/N folded in.
    pub fn plaintext_ntt(&self, coeffs: &[i64]) -> NttPlaintext {
        let mut out = self.plaintext_ntt_buffer();
        self.plaintext_ntt_into(coeffs, &mut out);
        out
    }

    /// A buffer for [`plaintext_ntt_into`](Self::plaintext_ntt_into).
    pub(crate) fn plaintext_ntt_buffer(&self) -> NttPlaintext {
        NttPlaintext {
            values: vec![0u64; self.n() * self.limbs()],
        }
    }

    /// [`plaintext_ntt`](Self::plaintext_ntt) into a reused buffer (from
    /// [`plaintext_ntt_buffer`](Self::plaintext_ntt_buffer)), from
    /// coefficients of any signed width: the same values, no allocation.
    pub(crate) fn plaintext_ntt_into<T: Copy + Into<i64>>(
        &self,
        coeffs: &[T],
        out: &mut NttPlaintext,
    ) {
        let n = coeffs.len().min(self.n());
        self.ntt_q.forward_signed(&coeffs[..n], &mut out.values);
        self.ntt_q.normalize(&mut out.values);
    }

    /// `acc += ct · w`, exact, in the NTT domain.
    pub fn mul_plain_accumulate(
        &self,
        acc: &mut NttCiphertext,
        ct: &NttCiphertext,
        w: &NttPlaintext,
    ) {
        self.ntt_q.mul_accumulate(&mut acc.a, &ct.a, &w.values);
        self.ntt_q.mul_accumulate(&mut acc.b, &ct.b, &w.values);
    }

    /// Back to coefficients (1/N was folded into the plaintexts).
    pub fn from_ntt(&self, mut acc: NttCiphertext) -> Ciphertext {
        self.ntt_q.backward_unnormalized(&mut acc.a);
        self.ntt_q.backward_unnormalized(&mut acc.b);
        Ciphertext {
            a: acc.a,
            b: acc.b,
            n: self.n(),
        }
    }

    /// Adds an encoded plaintext (a bias) to the body.
    pub fn add_plain(&self, ct: &mut Ciphertext, values: &[i64]) {
        let enc = self.encode(values);
        super::limbwise2(self.q, self.n(), &mut ct.b, &enc, |q, o, i| {
            poly::add_assign(q, o, i)
        });
    }

    /// PRIV-1 / THREAT-1, part 1: adds a fresh public-key encryption of zero
    /// so the mask is no longer a public function of the client's masks.
    pub fn rerandomize(&self, ct: &mut Ciphertext, pk: &PublicKey, rng: &mut Csprng) {
        let n = self.n();
        let bound = self.params.noise_bound_log2();
        let bits: Zeroizing<Vec<u64>> = Zeroizing::new((0..n).map(|_| rng.bit()).collect());
        // The binary u in every limb (one limb: the vector itself), secret:
        // wiped when dropped.
        let mut u = Zeroizing::new(bits.repeat(self.limbs()));
        self.ntt_q.forward(&mut u);
        for (key, ct_part) in [(&pk.a_ntt, &mut ct.a), (&pk.b_ntt, &mut ct.b)] {
            let prod = self.times_public_key_part(&u, key);
            if let Some(q) = self.q.single_limb() {
                for (c, &p) in ct_part.iter_mut().zip(&prod) {
                    let e = q.from_i64(rng.tuniform(bound));
                    *c = q.add(q.add(*c, p), e);
                }
            } else {
                super::limbwise2(self.q, n, ct_part, &prod, |q, o, i| {
                    poly::add_assign(q, o, i)
                });
                for i in 0..n {
                    let e = rng.tuniform(bound);
                    self.add_small(ct_part, i, e);
                }
            }
        }
    }

    /// u·k for the re-randomiser u given in the evaluation domain and one
    /// part k of a public key (`PublicKey`'s parts are stored pre-scaled by
    /// N^-1 for the unnormalised inverse): what [`Self::rerandomize`] adds,
    /// before its small errors.
    pub(crate) fn times_public_key_part(&self, u_ntt: &[u64], key: &[u64]) -> Vec<u64> {
        let mut prod = u_ntt.to_vec();
        self.ntt_q.mul_assign(&mut prod, key);
        self.ntt_q.backward_unnormalized(&mut prod);
        prod
    }

    /// PRIV-1 / THREAT-1, part 2; PRIV-2: floods the body with the discrete
    /// Gaussian N_Z(0, σ_f²), σ_f = 2^(F−3) (F from the parameter set),
    /// sampled exactly (dp::DiscreteGaussian) so that its Rényi bound holds.
    /// Beyond the sampler's 2^57 (multi-limb sets, PARAM-9) a sample is
    /// 2^(s−57)·y + z with y, z ~ N_Z(0, 2^114): within statistical distance
    /// [`crate::params::WIDE_FLOODING_SD_LOG2`] of N_Z(0, 2^(2s) + 2^114),
    /// whose σ is at least 2^s (proofs/noise-budget.md, "Circuit privacy").
    ///
    /// The N samples are drawn in 8 runs (`FLOOD_CHUNKS`) of consecutive
    /// coefficients, each from a generator of its own seeded from `rng` in
    /// order, and the runs go to the thread pool (ENG-8): one response
    /// ciphertext's flooding no longer holds one thread while the others
    /// wait, and the samples do not depend on the number of threads.
    pub fn flood(&self, ct: &mut Ciphertext, rng: &mut Csprng) {
        let n = self.n();
        let s = self.params.flooding_sigma_log2();
        let max = crate::dp::MAX_LOG2_SIGMA_POW2;
        let flood = crate::dp::DiscreteGaussian::with_sigma_pow2(s.min(max))
            .expect("PARAM validation keeps F − 3 within the sampler's range");
        // The seeds and samples are secret: wiped when dropped, as KEY-1
        // wipes the generators they come from.
        let chunk = n.div_ceil(FLOOD_CHUNKS);
        let seeds: Zeroizing<Vec<crate::rng::Seed128>> =
            Zeroizing::new((0..n.div_ceil(chunk)).map(|_| rng.seed()).collect());
        let samples: Vec<Zeroizing<Vec<i128>>> = crate::par::map_range(seeds.len(), |k| {
            let mut rng = Csprng::from_seed(seeds[k]);
            let len = chunk.min(n - k * chunk);
            Zeroizing::new(
                (0..len)
                    .map(|_| {
                        if s <= max {
                            flood.sample(&mut rng) as i128
                        } else {
                            let y = flood.sample(&mut rng) as i128;
                            let z = flood.sample(&mut rng) as i128;
                            (y << (s - max)) + z
                        }
                    })
                    .collect(),
            )
        });
        let samples = samples.iter().flat_map(|run| run.iter());
        if let Some(q) = self.q.single_limb() {
            debug_assert!(s <= max);
            for (c, &e) in ct.b.iter_mut().zip(samples) {
                *c = q.add(*c, q.from_i64(e as i64));
            }
            return;
        }
        for (i, &e) in samples.enumerate() {
            for (l, q) in self.q.limbs().iter().enumerate() {
                let x = &mut ct.b[l * n + i];
                *x = q.add(*x, q.from_i128(e));
            }
        }
    }
}
