//! PARAM-8 and PARAM-9: the multi-limb (RNS) ciphertext modulus and the s16
//! set built on it — statistical circuit privacy by the crate's own
//! formulas, a noise budget that decodes, and exact encryption, key
//! switching, packing, wire encoding and an end-to-end protocol run of the
//! shipped digits model.

mod common;

use proptest::prelude::*;
use safhire::engine::{self, CompiledModel};
use safhire::extract::{extract_lwe, shifted_to_constant, ValueRef};
use safhire::model::Model;
use safhire::pack::{PackSource, Packer};
use safhire::params::ParameterSet;
use safhire::protocol::{ClientId, Endpoint, Policy};
use safhire::rlwe::{
    Ciphertext, Context, GaloisKeys, PublicKey, SecretKey, SeededGaloisKey, SeededPublicKey,
};
use safhire::rng::Csprng;
use safhire::wire::{self, WireError};
use std::sync::{Arc, OnceLock};

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

struct Fixture {
    ctx: Arc<Context>,
    sk: SecretKey,
    seeded: Vec<SeededGaloisKey>,
    galois: GaloisKeys,
    seeded_pk: SeededPublicKey,
    pk: PublicKey,
}

fn s16() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ctx = Arc::new(Context::new(ParameterSet::shipped("s16").unwrap()));
        let mut rng = Csprng::from_seed([16; 16]);
        let sk = SecretKey::generate(&ctx, &mut rng);
        let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
        let galois = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
        let seeded_pk = SeededPublicKey::generate(&ctx, &sk, &mut rng);
        let pk = seeded_pk.expand(&ctx);
        Fixture {
            ctx,
            sk,
            seeded,
            galois,
            seeded_pk,
            pk,
        }
    })
}

fn random_values(ctx: &Context, rng: &mut Csprng, len: usize) -> Vec<i64> {
    let half = ctx.plaintext_half_range() as u64;
    (0..len)
        .map(|_| rng.uniform_below(2 * half) as i64 - half as i64)
        .collect()
}

// PARAM-8, PARAM-9: the new set is statistical by the crate's formulas.
#[test]
fn s16_has_forty_bit_statistical_circuit_privacy_and_decodes() {
    let p = ParameterSet::shipped("s16").unwrap();
    assert_eq!(p.ring_degree(), 8192);
    assert_eq!(p.limbs(), 2);
    assert_eq!(p.q().bits(), 126);
    // The distance per returned ciphertext at the set's ‖ŵ‖₁ limit.
    let sd = p.circuit_privacy_log2();
    assert!(sd <= -40.0, "SD 2^{sd}");
    assert!(p.has_statistical_circuit_privacy());
    assert!(p.flooding_rho_per_ciphertext() < (2f64).powi(-79));
    // The budget at the limit decodes with failure ≤ 2^-40 (PARAM-4).
    let b = p.budget();
    assert!(b.check().is_ok());
    assert!(b.worst_case() < b.margin);
    assert!(b.flooding_headroom_bits() > 40.0);
    // PARAM-3 on the full modulus: log2(P·q) ≤ 218 for N = 8192.
    let log_pq = p.spec().log2_pq();
    assert!((186.0..=218.0).contains(&log_pq), "{log_pq}");
    // Every single-limb set still falls short of 2^-40 (the reason s16 exists).
    for name in ["b8", "b12", "b16", "b20", "b24", "wide"] {
        assert!(ParameterSet::shipped(name).unwrap().circuit_privacy_log2() > -40.0);
    }
    // A flooding bound one bit from the margin is still refused (PARAM-4),
    // and one that no longer gives 2^-40 is computed as such.
    let mut spec = p.spec().clone();
    spec.flooding_bound_log2 = 110;
    assert!(ParameterSet::new(spec).is_err());
    let mut spec = p.spec().clone();
    spec.flooding_bound_log2 = 86;
    assert!(ParameterSet::new(spec).unwrap().circuit_privacy_log2() > -40.0);
}

// PARAM-8: validation of multi-limb moduli names the field.
#[test]
fn multi_limb_moduli_are_validated() {
    use safhire::params::{CiphertextModulus, ParamError};
    let base = ParameterSet::shipped("s16").unwrap().spec().clone();
    let cases: Vec<(CiphertextModulus, &str)> = vec![
        // Not prime.
        (
            CiphertextModulus::Rns(vec![0xffff_ffff_0000_0001, 0x3fff_ffff_ffff_0003]),
            "ciphertext_modulus",
        ),
        // Repeated limb.
        (
            CiphertextModulus::Rns(vec![0xffff_ffff_0000_0001, 0xffff_ffff_0000_0001]),
            "ciphertext_modulus",
        ),
        // Too many limbs for 2^128.
        (
            CiphertextModulus::Rns(vec![
                0xffff_ffff_0000_0001,
                0x3fff_ffff_ffff_0001,
                0x3fff_ffff_fffe_8001,
            ]),
            "ciphertext_modulus",
        ),
    ];
    for (q, field) in cases {
        let mut s = base.clone();
        s.ciphertext_modulus = q.clone();
        match ParameterSet::new(s) {
            Err(ParamError::OutOfRange { field: f, .. }) => assert_eq!(f, field, "{q:?}"),
            other => panic!("{q:?}: {other:?}"),
        }
    }
    // Three digits of 32 bits do not cover 126 bits.
    let mut s = base.clone();
    s.gadget_levels = 3;
    assert!(matches!(
        ParameterSet::new(s),
        Err(ParamError::OutOfRange {
            field: "gadget_levels",
            ..
        })
    ));
    // A third limb pushes log2(P·q) past nothing here, but a larger P past
    // the HE-standard bound at N = 4096 is refused on the full modulus.
    let mut s = ParameterSet::shipped("b8").unwrap().spec().clone();
    s.ciphertext_modulus = CiphertextModulus::Rns(vec![0xffff_ffff_0000_0001, 1_099_511_922_689]);
    s.gadget_levels = 6;
    assert!(matches!(
        ParameterSet::new(s),
        Err(ParamError::Insecure { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, .. ProptestConfig::default() })]

    // ENC-1 on two limbs: encrypt/decrypt, seeded expansion, extraction.
    #[test]
    fn s16_encrypt_decrypt_and_extract(seed in any::<u64>()) {
        let f = s16();
        let ctx = &f.ctx;
        let mut rng = Csprng::from_seed([seed as u8; 16]);
        let values = random_values(ctx, &mut rng, ctx.n());
        let seeded = ctx.encrypt_seeded(&f.sk, &values, &mut rng);
        let ct = seeded.expand(ctx.q());
        prop_assert_eq!(ctx.decrypt(&f.sk, &ct), values.clone());
        // Fresh noise is TUniform(4): |e| ≤ 16.
        prop_assert!(ctx.noise_wide(&f.sk, &ct, &values).iter().all(|e| e.abs() <= 16));
        for i in [0usize, 1, 4095, 8191] {
            let shifted = shifted_to_constant(ctx.q(), &ct, i).unwrap();
            prop_assert_eq!(ctx.decrypt(&f.sk, &shifted)[0], values[i]);
            let lwe = extract_lwe(ctx.q(), &ct, i).unwrap();
            prop_assert_eq!(lwe.body.len(), 2);
            prop_assert_eq!(ctx.decrypt_lwe(&f.sk, &lwe), Some(values[i]));
        }
        // Sanitising: re-randomised and flooded at σ = 2^97, still exact.
        let mut out = ct.clone();
        ctx.rerandomize(&mut out, &f.pk, &mut rng);
        ctx.flood(&mut out, &mut rng);
        prop_assert_eq!(ctx.decrypt(&f.sk, &out), values);
    }
}

// PARAM-9: the two-sample flooding has the variance it claims, beyond 64 bits.
#[test]
fn s16_flooding_is_wide_and_centred() {
    let f = s16();
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([7; 16]);
    let zeros = vec![0i64; ctx.n()];
    let mut ct = ctx.encrypt(&f.sk, &zeros, &mut rng);
    ctx.flood(&mut ct, &mut rng);
    assert_eq!(ctx.decrypt(&f.sk, &ct), zeros);
    let noise = ctx.noise_wide(&f.sk, &ct, &zeros);
    let sigma = (2f64).powi(ctx.params().flooding_sigma_log2() as i32);
    let n = noise.len() as f64;
    let var = noise
        .iter()
        .map(|&e| (e as f64 / sigma).powi(2))
        .sum::<f64>()
        / n;
    let mean = noise.iter().map(|&e| e as f64 / sigma).sum::<f64>() / n;
    // 8192 samples: the variance ratio is 1 ± 0.1 with overwhelming odds.
    assert!((0.9..1.1).contains(&var), "variance ratio {var}");
    assert!(mean.abs() < 0.06, "mean {mean}");
    assert!(noise.iter().any(|e| e.unsigned_abs() > 1u128 << 90));
}

// Key switching over the full modulus: KS_g(τ_g(ct)) decrypts to τ_g(m).
#[test]
fn s16_key_switch_applies_the_automorphism() {
    let f = s16();
    let ctx = &f.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([3; 16]);
    let values = random_values(ctx, &mut rng, n);
    let ct = ctx.encrypt(&f.sk, &values, &mut rng);
    let t = 1i64 << ctx.params().plaintext_bits();
    for level in [1u32, 7, 13] {
        let key = f.galois.key_for_level(level);
        let g = (1usize << level) + 1;
        let switched = ctx.apply_galois(key, &ct);
        let mut expect = vec![0i64; n];
        for (i, &v) in values.iter().enumerate() {
            let j = (i * g) % (2 * n);
            let (j, v) = if j < n { (j, v) } else { (j - n, -v) };
            // Centred mod t (−(−t/2) wraps to −t/2).
            expect[j] = (v + t / 2).rem_euclid(t) - t / 2;
        }
        assert_eq!(ctx.decrypt(&f.sk, &switched), expect, "level {level}");
        let noise = ctx.noise_wide(&f.sk, &switched, &expect);
        let max = noise.iter().map(|e| e.unsigned_abs()).max().unwrap();
        // Fresh noise plus the key-switch rounding floor (≈ 2^8.4 variance).
        assert!(max < 1 << 12, "level {level}: noise {max}");
    }
}

// PACK-1 on two limbs: any selection lands where it was placed.
#[test]
fn s16_packing_round_trips() {
    let f = s16();
    let ctx = &f.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([5; 16]);
    let plain: Vec<Vec<i64>> = (0..2).map(|_| random_values(ctx, &mut rng, n)).collect();
    let cts: Vec<Ciphertext> = plain
        .iter()
        .map(|v| ctx.encrypt(&f.sk, v, &mut rng))
        .collect();
    let mut order: Vec<ValueRef> = (0..2)
        .flat_map(|s| (0..n).map(move |i| ValueRef::new(s, i)))
        .collect();
    for i in (1..order.len()).rev() {
        let j = rng.uniform_below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order.truncate(n + 300);
    let srcs: Vec<PackSource> = cts.iter().map(PackSource::plain).collect();
    let packed = Packer::new(ctx, &f.galois)
        .pack_dense(&srcs, &order)
        .unwrap();
    assert_eq!(packed.len(), 2);
    for (o, ct) in packed.iter().enumerate() {
        let got = ctx.decrypt(&f.sk, ct);
        for (p, &value) in got.iter().enumerate() {
            let expect = order
                .get(o * n + p)
                .map(|v| plain[v.source as usize][v.coeff as usize])
                .unwrap_or(0);
            assert_eq!(value, expect, "output {o} position {p}");
        }
    }
}

// WIRE-5: every limb travels and is checked against its own prime.
#[test]
fn s16_wire_round_trips_and_checks_every_limb() {
    let f = s16();
    let ctx = &f.ctx;
    let n = ctx.n();
    let mut rng = Csprng::from_seed([9; 16]);
    let values = random_values(ctx, &mut rng, n);
    let seeded = ctx.encrypt_seeded(&f.sk, &values, &mut rng);
    let ct = seeded.expand(ctx.q());

    let bytes = wire::encode_ciphertext(ctx, &ct);
    assert_eq!(bytes.len(), wire::HEADER_LEN + 4 + 16 * 2 * n);
    assert_eq!(wire::decode_ciphertext(ctx, &bytes).unwrap(), ct);
    let bytes = wire::encode_seeded_ciphertext(ctx, &seeded);
    assert_eq!(wire::decode_seeded_ciphertext(ctx, &bytes).unwrap(), seeded);
    let bytes = wire::encode_public_key(ctx, &f.seeded_pk);
    assert_eq!(wire::decode_public_key(ctx, &bytes).unwrap(), f.seeded_pk);
    for (l, key) in f.seeded.iter().enumerate() {
        let bytes = wire::encode_galois_key(ctx, key);
        assert_eq!(
            wire::decode_galois_key(ctx, &bytes, l as u32 + 1).unwrap(),
            *key
        );
    }

    // A residue of limb 1 that is reduced modulo limb 0 but not modulo
    // limb 1 (q_1 < q_0) is refused, at its index.
    let mut bytes = wire::encode_ciphertext(ctx, &ct);
    let q1 = ctx.q().limb(1).value();
    let at = wire::HEADER_LEN + 4 + 8 * (n + 5);
    bytes[at..at + 8].copy_from_slice(&q1.to_le_bytes());
    assert_eq!(
        wire::decode_ciphertext(ctx, &bytes),
        Err(WireError::Unreduced { index: n + 5 })
    );
    // A single-limb object is refused by the fingerprint and length.
    let b16 = Context::new(ParameterSet::shipped("b16").unwrap());
    let other = wire::encode_ciphertext(
        &b16,
        &b16.encrypt(&SecretKey::generate(&b16, &mut rng), &[1], &mut rng),
    );
    assert!(matches!(
        wire::decode_ciphertext(ctx, &other),
        Err(WireError::ParameterMismatch { .. })
    ));
}

#[derive(serde::Deserialize)]
struct TestSet {
    inputs: Vec<Vec<i64>>,
    integer_logits: Vec<Vec<i64>>,
}

/// Runs one session of `model` through encoded messages of the typed
/// protocol; returns the logits.
fn session(ctx: &Arc<Context>, model: &Arc<CompiledModel>, input: &[i64]) -> Vec<i64> {
    let policy = Policy::shipped("default").unwrap();
    let mut server = Endpoint::new(ctx.clone(), model.clone(), policy).unwrap();
    common::encoded_session(ctx, &mut server, &ClientId("rns".into()), input)
}

/// A one-layer 16-bit model: the cheap end-to-end run on s16.
fn small_model() -> Model {
    let json = r#"{"format": "safhire-model", "version": 1, "name": "rns-small",
        "input": {"shape": [1, 8, 8], "min": 0, "max": 15},
        "layers": [
            {"op": "conv2d", "out_channels": 4, "kernel_h": 3, "kernel_w": 3, "stride": 1,
             "padding": 1, "weights": WEIGHTS, "bias": [1, -2, 3, -4]},
            {"op": "requantize", "multiplier": 1, "shift": 2, "min": 0, "max": 15},
            {"op": "flatten"},
            {"op": "linear", "out_features": 3, "weights": LIN, "bias": [0, 5, -5]}
        ]
    }"#;
    let w: Vec<i64> = (0..36).map(|i| (i * 7 % 11) - 5).collect();
    let lin: Vec<i64> = (0..3 * 256).map(|i| (i * 5 % 7) - 3).collect();
    let json = json
        .replace("WEIGHTS", &format!("{w:?}"))
        .replace("LIN", &format!("{lin:?}"));
    Model::from_json(&json).unwrap()
}

// PROTO-1 on s16: a small model end to end, bit-exact (runs by default).
#[test]
fn s16_small_model_through_the_protocol_is_exact() {
    let f = s16();
    let model = small_model();
    let compiled = Arc::new(engine::compile(&f.ctx, &model).unwrap());
    let mut rng = Csprng::from_seed([1; 16]);
    for _ in 0..2 {
        let input: Vec<i64> = (0..64).map(|_| rng.uniform_below(16) as i64).collect();
        let want = model.evaluate(&input).unwrap();
        assert_eq!(session(&f.ctx, &compiled, &input), want);
    }
}

// PROTO-1 on s16: the shipped digits model, bit for bit against the
// plaintext integer reference of models/digits-test.json.
// About 1 s per image in the test profile, so it runs by default.
#[test]
fn s16_digits_model_through_the_protocol_is_exact() {
    let f = s16();
    let set: TestSet = serde_json::from_str(TEST_SET).unwrap();
    let model = Model::from_json(MODEL).unwrap();
    let compiled = Arc::new(engine::compile(&f.ctx, &model).unwrap());
    for k in [0usize, 3, 17] {
        let logits = session(&f.ctx, &compiled, &set.inputs[k]);
        assert_eq!(logits, set.integer_logits[k], "image {k}");
    }
}

// WIRE-5: a single-limb ciphertext is encoded exactly as before RNS moduli
// existed: header, n, then a and b as N little-endian u64 each.
#[test]
fn single_limb_encodings_are_unchanged() {
    let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
    let mut rng = Csprng::from_seed([11; 16]);
    let sk = SecretKey::generate(&ctx, &mut rng);
    let ct = ctx.encrypt(&sk, &[1, -2, 3], &mut rng);
    let bytes = wire::encode_ciphertext(&ctx, &ct);
    let n = ctx.n();
    let mut want = bytes[..wire::HEADER_LEN].to_vec();
    assert_eq!(&want[..4], b"SFHR");
    assert_eq!(u16::from_le_bytes([want[4], want[5]]), 1);
    assert_eq!(
        u64::from_le_bytes(want[8..16].try_into().unwrap()),
        ctx.params().fingerprint()
    );
    want.extend_from_slice(&(n as u32).to_le_bytes());
    let (a, b) = ct.parts();
    assert_eq!((a.len(), b.len()), (n, n));
    for &c in a.iter().chain(b) {
        want.extend_from_slice(&c.to_le_bytes());
    }
    assert_eq!(bytes, want);
}
