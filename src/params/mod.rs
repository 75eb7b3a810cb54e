//! Parameter sets that carry their guarantees (spec/parameters.md).
//!
//! A [`ParameterSet`] can only be obtained through [`ParameterSet::new`] (or
//! the loaders that call it), which checks security and the noise budget.
//! Holding one is therefore proof that the checks passed.

mod noise;
mod security;

pub use noise::{NoiseBudget, PackNoise};
pub use security::{he_standard_max_log_q, MIN_SECURITY_BITS};

use crate::math::{Modulus, RnsModulus, MAX_LIMBS};
use serde::Deserialize;
use thiserror::Error;

/// The shipped parameter sets (spec/parameters.toml), embedded at build time (PARAM-1).
pub const SHIPPED_TOML: &str = include_str!("../../spec/parameters.toml");

/// A parameter set as written in TOML: untrusted until validated.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    /// The set's name (`b8`, `b12`, …, `wide`), by which it is pinned and
    /// reported. Not part of the fingerprint (PARAM-5): only the fields are.
    pub name: String,
    /// N, the ring degree (power of two).
    pub ring_degree: usize,
    /// q: one NTT-friendly prime below 2^64, or (PARAM-8) a list of them
    /// whose product, the RNS modulus, is below 2^128.
    pub ciphertext_modulus: CiphertextModulus,
    /// P, the special modulus of the Galois keys (prime, ≡ 1 mod 2N, P < q).
    pub special_modulus: u64,
    /// Fresh noise is TUniform(noise_bound_log2) everywhere.
    pub noise_bound_log2: u32,
    /// b: every accumulator fits in b signed bits; t = 2^b.
    pub plaintext_bits: u32,
    /// Largest ‖ŵ‖₁, summed over every weight polynomial feeding one output
    /// ciphertext (stacked outputs included), that the noise budget covers.
    pub max_weight_l1_log2: u32,
    /// Key-switch gadget: digits of `gadget_base_log` bits, `gadget_levels` of them.
    pub gadget_base_log: u32,
    /// l, the number of gadget digits (rows per Galois key): B·l must reach
    /// max(64, ⌈log2 q⌉) so the top digit is no larger than the others (PARAM-2).
    pub gadget_levels: u32,
    /// ℓ*: lowest packing-tree levels whose key switches are shared per source.
    pub shared_pack_levels: u32,
    /// γ: levels replaced by client-supplied conjugates in the unshuffle repack.
    pub client_conjugate_levels: u32,
    /// Flooding bound 2^F: the flooding is N_Z(0, (2^(F−3))²), of which 2^F
    /// is the 8σ bound the decoding check uses (PRIV-2).
    pub flooding_bound_log2: u32,
    /// PARAM-7: whether `select` may choose this set for a model by itself
    /// (default true); a set with `false` is used only when pinned. Not part
    /// of the fingerprint: it changes no key or ciphertext.
    #[serde(default = "yes")]
    pub auto_select: bool,
}

fn yes() -> bool {
    true
}

/// The `ciphertext_modulus` field: one prime (`q = 0x…`) or the limbs of
/// an RNS modulus (`q = [0x…, 0x…]`, PARAM-8).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CiphertextModulus {
    /// One prime q < 2^64: the single-modulus layout.
    One(u64),
    /// The limbs q_0 … q_(L−1) of an RNS modulus, 1..=4 distinct primes whose
    /// product is below 2^128 (PARAM-8).
    Rns(Vec<u64>),
}

impl CiphertextModulus {
    /// The limbs q_0, q_1, … (one for [`CiphertextModulus::One`]).
    pub fn limbs(&self) -> &[u64] {
        match self {
            Self::One(q) => std::slice::from_ref(q),
            Self::Rns(v) => v,
        }
    }

    /// log2 q, summed over the limbs.
    pub fn log2(&self) -> f64 {
        self.limbs().iter().map(|&q| (q as f64).log2()).sum()
    }
}

impl From<u64> for CiphertextModulus {
    fn from(q: u64) -> Self {
        Self::One(q)
    }
}

impl ParameterSpec {
    /// log2(P·q): the largest modulus any key lives under (PARAM-3).
    pub fn log2_pq(&self) -> f64 {
        self.ciphertext_modulus.log2() + (self.special_modulus as f64).log2()
    }
}

/// Why a parameter set was refused. Always the caller's (or the spec file's)
/// fault; names the offending field.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum ParamError {
    /// The TOML document does not parse, or a set has an unknown or mistyped
    /// field; carries the parser's message.
    #[error("parameter file does not parse: {0}")]
    Parse(String),
    /// [`ParameterSet::shipped`] was given a name no shipped set has.
    #[error("no parameter set named {0:?}")]
    UnknownSet(String),
    /// PARAM-2: a field is outside its allowed range.
    #[error("field `{field}` = {value} is out of range: {reason}")]
    OutOfRange {
        /// The TOML field name, e.g. `"plaintext_bits"`.
        field: &'static str,
        /// The offending value (for `ciphertext_modulus`, the offending limb, or the
        /// number of limbs when that is what is wrong).
        value: u64,
        /// The allowed range, in words.
        reason: &'static str,
    },
    /// PARAM-3: the set falls short of [`MIN_SECURITY_BITS`] on P·q.
    #[error(
        "insecure: {reason} (N = {ring_degree}, log2(P·q) = {log_pq:.1}); at least {MIN_SECURITY_BITS}-bit security is required"
    )]
    Insecure {
        /// N of the refused set.
        ring_degree: usize,
        /// log2(P·q), the modulus the check was run on.
        log_pq: f64,
        /// Which check failed: the HE-standard bound on log2(P·q), or the
        /// binary-secret noise-variance minimum of the lattice-estimator fit.
        reason: String,
    },
    /// PARAM-6: a linear layer's worst-case accumulator does not fit b signed
    /// bits (from [`ParameterSet::check_accumulator`]).
    #[error(
        "accumulator overflow: output {output} can reach |y| = {worst}, which needs {needed_bits} signed bits; \
         parameter set {set:?} carries {plaintext_bits} (use a wider set or requantise the layer)"
    )]
    AccumulatorOverflow {
        /// Name of the set that cannot carry the layer.
        set: String,
        /// Index of the worst output of the layer (not merely the first that
        /// overflows).
        output: usize,
        /// Its worst case Σ_j |w_ij|·max|x| + |bias_i| (saturating at `u128::MAX`).
        worst: u128,
        /// Signed bits that worst case needs ([`accumulator_bits`]).
        needed_bits: u32,
        /// b, the signed bits the set carries.
        plaintext_bits: u32,
    },
    /// PARAM-4: the noise model does not fit the decoding margin at
    /// 2^-[`FAILURE_BITS`] failure per coefficient (proofs/noise-budget.md).
    #[error(
        "noise budget exceeded: worst-case noise 2^{needed_log2:.2} does not fit the decoding margin 2^{margin_log2:.2} \
         at failure probability 2^-{failure_bits} per coefficient (reduce `flooding_bound_log2`, `plaintext_bits` or `max_weight_l1_log2`)"
    )]
    NoiseBudget {
        /// log2 of the worst case 2^F + k·σ ([`NoiseBudget::worst_case`]).
        needed_log2: f64,
        /// log2 of the decoding margin Δ/2 − t/2 − 1.
        margin_log2: f64,
        /// The failure exponent checked against, [`FAILURE_BITS`].
        failure_bits: u32,
    },
}

/// Decryption may fail with probability at most 2^-FAILURE_BITS per coefficient.
pub const FAILURE_BITS: u32 = 40;

/// PRIV-2: flooding is the discrete Gaussian N_Z(0, σ_f²) with
/// σ_f = 2^(F − FLOODING_SIGMAS_LOG2), so the set's flooding bound 2^F is
/// 8σ_f and the decoding check (2^F + k·σ_bf below the margin) still holds
/// at 2^-40 (proofs/noise-budget.md, "Circuit privacy").
pub const FLOODING_SIGMAS_LOG2: u32 = 3;

/// PRIV-3: the privacy bound takes the weight-dependent noise of a
/// coefficient to be at most its 2^-PRIVACY_TAIL_BITS tail; every release
/// adds N·2^-64 to δ for the cases where it is not.
pub const PRIVACY_TAIL_BITS: u32 = 64;

/// PRIV-3: the δ the circuit-privacy accountant spends on the Rényi-to-(ε, δ)
/// conversion; the tail cases of [`PRIVACY_TAIL_BITS`] come on top.
pub const CIRCUIT_PRIVACY_DELTA: f64 = 1.0 / (1u64 << 41) as f64;

/// PARAM-9: the largest log2 σ_f a multi-limb set may flood with. Beyond
/// the sampler's 2^57 a flooding sample is 2^(s−57)·y + z with y, z ~
/// N_Z(0, 2^114); z smooths the lattice 2^(s−57)·Z as long as 2^57 ≥
/// √2·2^(s−57)·η_ε(Z), which for ε = 2^-128 (η ≈ 5.4) holds up to s = 111.
pub const MAX_WIDE_FLOODING_SIGMA_LOG2: u32 = 111;

/// PARAM-9: log2 of the statistical distance, per coefficient, between the
/// two-sample flooding and the discrete Gaussian of its variance (2ε for
/// ε = 2^-128, Peikert 2010, Thm 3.1); added per coefficient to the
/// circuit-privacy bound of sets that use it.
pub const WIDE_FLOODING_SD_LOG2: i32 = -127;

/// Signed bits needed to hold every integer of absolute value ≤ `worst`.
pub fn accumulator_bits(worst: u128) -> u32 {
    129 - worst.leading_zeros()
}

/// A validated parameter set.
#[derive(Clone, Debug, PartialEq)]
pub struct ParameterSet {
    spec: ParameterSpec,
    budget: NoiseBudget,
}

impl ParameterSet {
    /// The one constructor: checks ranges, primality, security and the noise
    /// budget (spec/parameters.md, PARAM-2..PARAM-5).
    pub fn new(spec: ParameterSpec) -> Result<Self, ParamError> {
        check_ranges(&spec)?;
        security::check(&spec)?;
        let budget = NoiseBudget::derive(&spec);
        budget.check()?;
        Ok(Self { spec, budget })
    }

    /// Parses a TOML document of `[[set]]` tables and validates every set.
    pub fn load_all(toml_text: &str) -> Result<Vec<Self>, ParamError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            set: Vec<ParameterSpec>,
        }
        let file: File = toml::from_str(toml_text).map_err(|e| ParamError::Parse(e.to_string()))?;
        file.set.into_iter().map(Self::new).collect()
    }

    /// One of the shipped sets by name: "b8", "b12", "b16" or "wide".
    pub fn shipped(name: &str) -> Result<Self, ParamError> {
        Self::load_all(SHIPPED_TOML)?
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ParamError::UnknownSet(name.to_owned()))
    }

    /// The validated fields as written in the parameter file.
    pub fn spec(&self) -> &ParameterSpec {
        &self.spec
    }
    /// The set's name, e.g. `"b8"`.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// N, a power of two in 1024..=32768.
    pub fn ring_degree(&self) -> usize {
        self.spec.ring_degree
    }
    /// log2 N: the depth of the packing tree and the number of Galois keys.
    pub fn log_ring_degree(&self) -> u32 {
        self.spec.ring_degree.trailing_zeros()
    }
    /// The ciphertext modulus q: one limb, or the RNS product of the
    /// `ciphertext_modulus` limbs (PARAM-8).
    pub fn q(&self) -> RnsModulus {
        // Checked in `check_ranges`.
        RnsModulus::new(self.spec.ciphertext_modulus.limbs()).expect("validated modulus")
    }
    /// P, the special modulus of the hybrid Galois keys: prime, ≡ 1 (mod 2N),
    /// below every limb of q and 2^62.
    pub fn p(&self) -> Modulus {
        Modulus::new(self.spec.special_modulus).expect("validated modulus")
    }
    /// b: plaintext values and accumulators are signed b-bit integers,
    /// t = 2^b.
    pub fn plaintext_bits(&self) -> u32 {
        self.spec.plaintext_bits
    }
    /// Δ = ⌊q/t⌋, the scale of coefficient encoding.
    pub fn delta(&self) -> u128 {
        self.q().value() >> self.spec.plaintext_bits
    }
    /// log2 of the bound of fresh TUniform noise: every sample lies in
    /// [−2^e, 2^e] for e = this value (1..=20).
    pub fn noise_bound_log2(&self) -> u32 {
        self.spec.noise_bound_log2
    }
    /// B: the key-switch gadget splits a residue into signed base-2^B digits.
    pub fn gadget_base_log(&self) -> u32 {
        self.spec.gadget_base_log
    }
    /// l: the number of gadget digits, and of rows per Galois key.
    pub fn gadget_levels(&self) -> usize {
        self.spec.gadget_levels as usize
    }
    /// ℓ*: the lowest packing-tree levels whose key switches are shared per
    /// source (PACK-2); at most log2 N.
    pub fn shared_pack_levels(&self) -> u32 {
        self.spec.shared_pack_levels
    }
    /// γ ≤ ℓ*: the lowest levels replaced by client conjugates in the unshuffle
    /// repack (PACK-4); 0 when the set does not use them.
    pub fn client_conjugate_levels(&self) -> u32 {
        self.spec.client_conjugate_levels
    }
    /// PARAM-7: whether automatic selection may choose this set.
    pub fn auto_select(&self) -> bool {
        self.spec.auto_select
    }
    /// Number of RNS limbs of q (PARAM-8).
    pub fn limbs(&self) -> usize {
        self.spec.ciphertext_modulus.limbs().len()
    }
    /// F: the flooding bound 2^F = 8σ_f (PRIV-2).
    pub fn flooding_bound_log2(&self) -> u32 {
        self.spec.flooding_bound_log2
    }
    /// W: the largest ‖ŵ‖₁ per output ciphertext the noise budget covers
    /// (LIN-3).
    pub fn max_weight_l1_log2(&self) -> u32 {
        self.spec.max_weight_l1_log2
    }
    /// PARAM-6: refuses a linear layer whose worst-case accumulator does not
    /// fit b signed bits. `rows[i]` are output i's weights, `bias[i]` its
    /// bias (empty = none), inputs lie in `[-input_bound, input_bound]`.
    pub fn check_accumulator<'r>(
        &self,
        rows: impl IntoIterator<Item = &'r [i64]>,
        bias: &[i64],
        input_bound: u64,
    ) -> Result<(), ParamError> {
        let b = self.spec.plaintext_bits;
        // Report the worst output of the layer, not the first that overflows.
        let mut worst_output: Option<(usize, u128)> = None;
        for (output, row) in rows.into_iter().enumerate() {
            let l1: u128 = row.iter().map(|&w| w.unsigned_abs() as u128).sum();
            let bias = bias.get(output).map_or(0, |&x| x.unsigned_abs() as u128);
            let worst = l1.saturating_mul(input_bound as u128).saturating_add(bias);
            if worst_output.is_none_or(|(_, w)| worst > w) {
                worst_output = Some((output, worst));
            }
        }
        match worst_output {
            // Signed b bits hold |y| ≤ 2^(b−1) − 1.
            Some((output, worst)) if worst >= 1u128 << (b - 1) => {
                Err(ParamError::AccumulatorOverflow {
                    set: self.spec.name.clone(),
                    output,
                    worst,
                    needed_bits: accumulator_bits(worst),
                    plaintext_bits: b,
                })
            }
            _ => Ok(()),
        }
    }

    /// Every shipped set, in [`ParameterSet::cost_order`].
    pub fn shipped_all() -> Result<Vec<Self>, ParamError> {
        let mut sets = Self::load_all(SHIPPED_TOML)?;
        sets.sort_by(Self::cost_order);
        Ok(sets)
    }

    /// PARAM-7: the order in which sets are tried for a model, cheapest
    /// first. Cost grows with the ring degree, then with the key-switch digits
    /// (one NTT-domain product each); between sets of equal cost the
    /// smaller `b` comes first, since it leaves more flooding headroom.
    pub fn cost_order(a: &Self, b: &Self) -> std::cmp::Ordering {
        let key = |p: &Self| {
            (
                p.spec.ring_degree,
                p.spec.gadget_levels,
                p.spec.plaintext_bits,
            )
        };
        key(a).cmp(&key(b))
    }

    /// PRIV-2: log2 σ_f of the discrete Gaussian flooding, F − 3.
    pub fn flooding_sigma_log2(&self) -> u32 {
        self.spec.flooding_bound_log2 - FLOODING_SIGMAS_LOG2
    }

    /// PRIV-3: the zCDP ρ of one returned ciphertext's noise channel, against
    /// a client whose keys and uploads are honest. Two models that give the
    /// same released values differ in a coefficient's noise by at most 2B,
    /// B = k_64·σ_bf (its 2^-64 tail); Gaussian flooding of σ_f on each of
    /// the N coefficients gives ρ = N·(2B)²/(2σ_f²) (proofs/noise-budget.md,
    /// "Circuit privacy").
    pub fn flooding_rho_per_ciphertext(&self) -> f64 {
        self.flooding_rho_at(self.budget.before_flooding)
    }

    /// PRIV-3: [`Self::flooding_rho_per_ciphertext`] for a ciphertext whose
    /// noise before flooding has variance `before_flooding` (a compiled
    /// stage's, `NoiseBudget::before_flooding_at`).
    pub fn flooding_rho_at(&self, before_flooding: f64) -> f64 {
        let b = noise::gaussian_tail_sigmas(PRIVACY_TAIL_BITS) * before_flooding.sqrt();
        let sigma = (2f64).powi(self.flooding_sigma_log2() as i32);
        self.spec.ring_degree as f64 * (2.0 * b).powi(2) / (2.0 * sigma * sigma)
    }

    /// log2 of the bound on the statistical distance between a returned
    /// ciphertext and one whose noise holds nothing of the weights, against a
    /// client whose keys and uploads are honest: √(ρ/2) (Pinsker, with the
    /// KL divergence at most ρ) plus N·2^-64 for the tail (PRIV-3). At −1 or
    /// above (a distance of one half or more) the bound says nothing.
    pub fn circuit_privacy_log2(&self) -> f64 {
        let n = self.spec.ring_degree as f64;
        let mut tail = n * (2f64).powi(-(PRIVACY_TAIL_BITS as i32));
        if self.flooding_sigma_log2() > crate::dp::MAX_LOG2_SIGMA_POW2 {
            // PARAM-9: the two-sample flooding's distance from N_Z(0, σ²).
            tail += n * (2f64).powi(WIDE_FLOODING_SD_LOG2);
        }
        ((self.flooding_rho_per_ciphertext() / 2.0).sqrt() + tail).log2()
    }

    /// PRIV-3: whether the per-ciphertext distance bound says anything: below
    /// one half (2^-1).
    pub fn has_statistical_circuit_privacy(&self) -> bool {
        self.circuit_privacy_log2() < -1.0
    }

    /// The circuit-privacy guarantee of one returned ciphertext in words, as
    /// the CLI prints it; a model's whole query budget is accounted by
    /// `engine::CompiledModel::circuit_privacy`.
    pub fn circuit_privacy_statement(&self) -> String {
        let bound = self.circuit_privacy_log2();
        let rho = self.flooding_rho_per_ciphertext().log2();
        if !self.has_statistical_circuit_privacy() {
            format!(
                "no statistical circuit privacy: responses are re-randomised and flooded (Gaussian, σ = 2^{}), but the noise channel's bound per returned ciphertext (zCDP ρ = 2^{rho:.1}) says nothing (proofs/noise-budget.md, \"Circuit privacy\")",
                self.flooding_sigma_log2()
            )
        } else if bound <= -(FAILURE_BITS as f64) {
            format!(
                "statistical circuit privacy: noise channel per returned ciphertext zCDP ρ ≤ 2^{rho:.1}, statistical distance ≤ 2^{bound:.1} (at most 2^-40, PARAM-9), against clients with honest keys and uploads (proofs/noise-budget.md, \"Circuit privacy\")"
            )
        } else {
            format!(
                "noise channel per returned ciphertext: zCDP ρ ≤ 2^{rho:.1}, statistical distance ≤ 2^{bound:.1}, against clients with honest keys and uploads (not 2^-40; proofs/noise-budget.md, \"Circuit privacy\")"
            )
        }
    }

    /// The derived noise budget (proofs/noise-budget.md).
    pub fn budget(&self) -> &NoiseBudget {
        &self.budget
    }
    /// A short identifier that binds ciphertexts and keys to this set on the wire (PARAM-5).
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a over the canonical field values: stable across builds.
        let s = &self.spec;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        // One limb: the same bytes as before multi-limb moduli existed, so
        // the single-limb sets keep their fingerprints (PARAM-5).
        let limbs = s.ciphertext_modulus.limbs();
        eat(s.ring_degree as u64);
        for &q in limbs {
            eat(q);
        }
        if limbs.len() > 1 {
            eat(limbs.len() as u64);
        }
        for x in [
            s.special_modulus,
            s.noise_bound_log2 as u64,
            s.plaintext_bits as u64,
            s.max_weight_l1_log2 as u64,
            s.gadget_base_log as u64,
            s.gadget_levels as u64,
            s.shared_pack_levels as u64,
            s.client_conjugate_levels as u64,
            s.flooding_bound_log2 as u64,
        ] {
            eat(x);
        }
        h
    }
}

fn out_of_range(field: &'static str, value: u64, reason: &'static str) -> ParamError {
    ParamError::OutOfRange {
        field,
        value,
        reason,
    }
}

/// PARAM-2: every field in range, the error naming the field.
fn check_ranges(s: &ParameterSpec) -> Result<(), ParamError> {
    let n = s.ring_degree;
    if !n.is_power_of_two() || !(1024..=32768).contains(&n) {
        return Err(out_of_range(
            "ring_degree",
            n as u64,
            "must be a power of two in 1024..=32768",
        ));
    }
    let two_n = 2 * n as u64;
    // PARAM-2 / PARAM-8: each limb a prime ≥ 2^40, ≡ 1 (mod 2N), distinct,
    // at most MAX_LIMBS of them, their product below 2^128.
    let limbs = s.ciphertext_modulus.limbs();
    let bad_q = |q: u64, reason: &'static str| out_of_range("ciphertext_modulus", q, reason);
    if limbs.is_empty() || limbs.len() > MAX_LIMBS {
        return Err(bad_q(
            limbs.len() as u64,
            "must be one prime or a list of 1..=4 primes",
        ));
    }
    for &q in limbs {
        if q < (1 << 40) || !Modulus::is_prime(q) || q % two_n != 1 {
            return Err(bad_q(q, "must be a prime ≥ 2^40 with q ≡ 1 (mod 2N)"));
        }
    }
    let rns = RnsModulus::new(limbs).ok_or_else(|| {
        bad_q(
            limbs[limbs.len() - 1],
            "limbs must be distinct and their product below 2^128",
        )
    })?;
    let q_min = limbs.iter().copied().min().unwrap_or(0);
    let p = s.special_modulus;
    if !Modulus::is_prime(p) || p % two_n != 1 || p >= q_min || p >= 1 << 62 {
        return Err(out_of_range(
            "special_modulus",
            p,
            "must be a prime with P ≡ 1 (mod 2N) and P < min(q_i, 2^62)",
        ));
    }
    if !(1..=20).contains(&s.noise_bound_log2) {
        return Err(out_of_range(
            "noise_bound_log2",
            s.noise_bound_log2 as u64,
            "must be in 1..=20",
        ));
    }
    let log_q = rns.bits();
    if !(2..=(log_q - 8).min(62)).contains(&s.plaintext_bits) {
        return Err(out_of_range(
            "plaintext_bits",
            s.plaintext_bits as u64,
            "must be in 2..=min(log2(q)−8, 62)",
        ));
    }
    if s.max_weight_l1_log2 > 40 {
        return Err(out_of_range(
            "max_weight_l1_log2",
            s.max_weight_l1_log2 as u64,
            "must be at most 40",
        ));
    }
    if !(1..=32).contains(&s.gadget_base_log) {
        return Err(out_of_range(
            "gadget_base_log",
            s.gadget_base_log as u64,
            "must be in 1..=32",
        ));
    }
    // Digits covering all bits of a centred representative (at least 64,
    // ⌈log2 q⌉ on a multi-limb q: PARAM-8) keep the top digit as small as
    // the others (and the key-switch noise as modelled).
    let cover = log_q.max(64);
    if s.gadget_levels == 0 || s.gadget_levels > 64 || s.gadget_base_log * s.gadget_levels < cover {
        return Err(out_of_range(
            "gadget_levels",
            s.gadget_levels as u64,
            "gadget_base_log × gadget_levels must be at least max(64, ⌈log2 q⌉)",
        ));
    }
    let log_n = n.trailing_zeros();
    if s.shared_pack_levels > log_n {
        return Err(out_of_range(
            "shared_pack_levels",
            s.shared_pack_levels as u64,
            "cannot exceed log2 N",
        ));
    }
    if s.client_conjugate_levels > s.shared_pack_levels {
        return Err(out_of_range(
            "client_conjugate_levels",
            s.client_conjugate_levels as u64,
            "cannot exceed shared_pack_levels (conjugates replace shared levels)",
        ));
    }
    // PRIV-2: σ_f = 2^(F−3) must be at least 2 and within the sampler's
    // range (dp::MAX_LOG2_SIGMA_POW2 = 57); a multi-limb set may go beyond,
    // to F − 3 ≤ MAX_WIDE_FLOODING_SIGMA_LOG2 (two samples, PARAM-9).
    let f_max = if limbs.len() > 1 {
        MAX_WIDE_FLOODING_SIGMA_LOG2 + FLOODING_SIGMAS_LOG2
    } else {
        60
    };
    if !(4..=f_max).contains(&s.flooding_bound_log2) {
        return Err(out_of_range(
            "flooding_bound_log2",
            s.flooding_bound_log2 as u64,
            "must be in 4..=60 (4..=114 on a multi-limb q)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
