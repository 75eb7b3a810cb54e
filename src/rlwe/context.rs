//! The arithmetic context of one parameter set: transforms for q and P plus
//! encoding, encryption, decryption and plaintext products.

use super::{
    expand_mask, Ciphertext, NttCiphertext, NttPlaintext, PublicKey, SecretKey, SeededCiphertext,
};
use crate::math::{poly, Modulus, NttPlan};
use crate::params::ParameterSet;
use crate::rng::Csprng;

/// Everything the arithmetic needs for one parameter set, built once.
#[derive(Debug)]
pub struct Context {
    params: ParameterSet,
    pub(crate) ntt_q: NttPlan,
    pub(crate) ntt_p: NttPlan,
}

impl Context {
    pub fn new(params: ParameterSet) -> Self {
        let n = params.ring_degree();
        // Both primes were checked ≡ 1 (mod 2N) by `ParameterSet::new`.
        let ntt_q = NttPlan::new(n, params.q().value()).expect("validated NTT prime q");
        let ntt_p = NttPlan::new(n, params.p().value()).expect("validated NTT prime P");
        Self {
            params,
            ntt_q,
            ntt_p,
        }
    }

    pub fn params(&self) -> &ParameterSet {
        &self.params
    }
    pub fn n(&self) -> usize {
        self.params.ring_degree()
    }
    pub fn q(&self) -> Modulus {
        self.ntt_q.modulus()
    }

    /// Largest magnitude a plaintext value may have: |m| < t/2.
    pub fn plaintext_half_range(&self) -> i64 {
        1i64 << (self.params.plaintext_bits() - 1)
    }

    /// ENC-1. Coefficient encoding: `values[i]` (signed, |v| < t/2) becomes Δ·v at
    /// coefficient i; missing coefficients are zero.
    ///
    /// # Panics
    /// If more than N values are given (a caller bug, not peer input).
    pub fn encode(&self, values: &[i64]) -> Vec<u64> {
        assert!(values.len() <= self.n(), "more values than coefficients");
        let q = self.q();
        let delta = self.params.delta();
        let mut out = vec![0u64; self.n()];
        for (o, &v) in out.iter_mut().zip(values) {
            *o = q.mul(delta, q.from_i64(v));
        }
        out
    }

    /// Inverse of [`encode`](Self::encode) on a phase: round(t·x/q), centred mod t.
    pub fn decode(&self, phase: &[u64]) -> Vec<i64> {
        let q = self.q().value() as u128;
        let bits = self.params.plaintext_bits();
        let t = 1u128 << bits;
        phase
            .iter()
            .map(|&x| {
                let r = ((x as u128 * t + q / 2) / q) % t;
                if r >= t / 2 {
                    r as i64 - t as i64
                } else {
                    r as i64
                }
            })
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

    /// `b = a·s + plain + e` with fresh TUniform noise from `rng`.
    pub(crate) fn encrypt_with_mask(
        &self,
        sk: &SecretKey,
        a: Vec<u64>,
        plain: &[u64],
        rng: &mut Csprng,
    ) -> Ciphertext {
        let q = self.q();
        let mut b = self.mask_times_key(&a, sk);
        let bound = self.params.noise_bound_log2();
        for (bi, &m) in b.iter_mut().zip(plain) {
            let e = q.from_i64(rng.tuniform(bound));
            *bi = q.add(q.add(*bi, m), e);
        }
        Ciphertext { a, b }
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
        let q = self.q();
        let n = self.n();
        let inv = q
            .inv(q.pow(2, gamma as u64))
            .expect("2^γ is invertible modulo odd q");
        let mut plain = self.encode(values);
        poly::scalar_mul_assign(q, &mut plain, inv);
        let base = self.encrypt_seeded_plain(sk, &plain, rng);
        let conjugates = (1u32..(1 << gamma))
            .map(|t| {
                let g = (1..=gamma)
                    .filter(|l| t & (1 << (l - 1)) != 0)
                    .fold(1usize, |acc, l| acc * ((1usize << l) + 1) % (2 * n));
                let mut twisted = vec![0u64; n];
                poly::automorphism(q, &mut twisted, &plain, g);
                self.encrypt_seeded_plain(sk, &twisted, rng)
            })
            .collect();
        (base, conjugates)
    }

    /// `b − a·s`.
    pub fn phase(&self, sk: &SecretKey, ct: &Ciphertext) -> Vec<u64> {
        let q = self.q();
        let mut p = self.mask_times_key(&ct.a, sk);
        for (pi, &bi) in p.iter_mut().zip(&ct.b) {
            *pi = q.sub(bi, *pi);
        }
        p
    }

    /// Decrypts an LWE ciphertext extracted by [`crate::extract::extract_lwe`].
    pub fn decrypt_lwe(&self, sk: &SecretKey, lwe: &crate::extract::LweCiphertext) -> Option<i64> {
        let q = self.q();
        if lwe.mask.len() != self.n() || lwe.body >= q.value() {
            return None;
        }
        let dot = lwe.mask.iter().zip(&sk.s).fold(
            0u64,
            |acc, (&a, &s)| if s == 1 { q.add(acc, a) } else { acc },
        );
        Some(self.decode(&[q.sub(lwe.body, dot)])[0])
    }

    pub fn decrypt(&self, sk: &SecretKey, ct: &Ciphertext) -> Vec<i64> {
        self.decode(&self.phase(sk, ct))
    }

    /// Centred noise `phase − Δ·expected` per coefficient (for measurement).
    pub fn noise(&self, sk: &SecretKey, ct: &Ciphertext, expected: &[i64]) -> Vec<i64> {
        let q = self.q();
        let enc = self.encode(expected);
        self.phase(sk, ct)
            .iter()
            .zip(&enc)
            .map(|(&p, &m)| q.centered(q.sub(p, m)))
            .collect()
    }

    pub fn to_ntt(&self, ct: &Ciphertext) -> NttCiphertext {
        let mut out = NttCiphertext {
            a: ct.a.clone(),
            b: ct.b.clone(),
        };
        self.ntt_q.forward(&mut out.a);
        self.ntt_q.forward(&mut out.b);
        out
    }

    pub fn ntt_zero(&self) -> NttCiphertext {
        NttCiphertext {
            a: vec![0; self.n()],
            b: vec![0; self.n()],
        }
    }

    /// Transforms a weight polynomial once, with 1/N folded in.
    pub fn plaintext_ntt(&self, coeffs: &[i64]) -> NttPlaintext {
        let mut values = vec![0u64; self.n()];
        let n = coeffs.len().min(self.n());
        self.ntt_q.forward_signed(&coeffs[..n], &mut values);
        self.ntt_q.normalize(&mut values);
        NttPlaintext { values }
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
        Ciphertext { a: acc.a, b: acc.b }
    }

    /// Adds an encoded plaintext (a bias) to the body.
    pub fn add_plain(&self, ct: &mut Ciphertext, values: &[i64]) {
        poly::add_assign(self.q(), &mut ct.b, &self.encode(values));
    }

    /// PRIV-1 / THREAT-1, part 1: adds a fresh public-key encryption of zero
    /// so the mask is no longer a public function of the client's masks.
    pub fn rerandomize(&self, ct: &mut Ciphertext, pk: &PublicKey, rng: &mut Csprng) {
        let q = self.q();
        let n = self.n();
        let bound = self.params.noise_bound_log2();
        let mut u: Vec<u64> = (0..n).map(|_| rng.bit()).collect();
        self.ntt_q.forward(&mut u);
        for (key, ct_part) in [(&pk.a_ntt, &mut ct.a), (&pk.b_ntt, &mut ct.b)] {
            let mut prod = u.clone();
            self.ntt_q.mul_assign(&mut prod, key);
            self.ntt_q.backward_unnormalized(&mut prod);
            for (c, &p) in ct_part.iter_mut().zip(&prod) {
                let e = q.from_i64(rng.tuniform(bound));
                *c = q.add(q.add(*c, p), e);
            }
        }
    }

    /// PRIV-1 / THREAT-1, part 2; PRIV-2: floods the body with the discrete
    /// Gaussian N_Z(0, σ_f²), σ_f = 2^(F−3) (F from the parameter set),
    /// sampled exactly (dp::DiscreteGaussian) so that its Rényi bound holds.
    pub fn flood(&self, ct: &mut Ciphertext, rng: &mut Csprng) {
        let q = self.q();
        let flood = crate::dp::DiscreteGaussian::with_sigma_pow2(self.params.flooding_sigma_log2())
            .expect("PARAM validation keeps F − 3 within the sampler's range");
        for c in ct.b.iter_mut() {
            *c = q.add(*c, q.from_i64(flood.sample(rng)));
        }
    }
}
