use super::*;

fn b8() -> ParameterSpec {
    ParameterSet::shipped("b8").unwrap().spec().clone()
}

#[test]
fn shipped_sets_validate() {
    // PARAM-1: every shipped set passes its own checks.
    let sets = ParameterSet::load_all(SHIPPED_TOML).unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["b8", "b12", "b16", "b20", "b24", "wide", "s16"]);
}

// PARAM-7
#[test]
fn cost_order_puts_cheaper_sets_first_and_states_headroom() {
    let sets = ParameterSet::shipped_all().unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s.name()).collect();
    // Equal cost (N, gadget digits) for the b-sets: smaller b first; `wide`
    // has one more key-switch digit; s16 has twice the ring degree.
    assert_eq!(names, ["b8", "b12", "b16", "b20", "b24", "wide", "s16"]);
    for pair in sets.windows(2) {
        assert_ne!(
            ParameterSet::cost_order(&pair[0], &pair[1]),
            std::cmp::Ordering::Greater
        );
    }
    // The sets added for 20–24-bit accumulators have positive headroom.
    for name in ["b20", "b24"] {
        let p = ParameterSet::shipped(name).unwrap();
        assert!(p.budget().flooding_headroom_bits() > 0.0, "{name}");
    }
}

#[test]
fn unknown_set_is_refused() {
    assert_eq!(
        ParameterSet::shipped("b9"),
        Err(ParamError::UnknownSet("b9".into()))
    );
}

// PARAM-2
#[test]
fn each_out_of_range_field_is_named() {
    type Mutation = Box<dyn Fn(&mut ParameterSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("ring_degree", Box::new(|s| s.ring_degree = 3000)),
        (
            "ciphertext_modulus",
            Box::new(|s| s.ciphertext_modulus = (crate::math::SOLINAS - 2).into()),
        ),
        (
            "special_modulus",
            Box::new(|s| s.special_modulus = 2147377155),
        ),
        ("noise_bound_log2", Box::new(|s| s.noise_bound_log2 = 0)),
        ("plaintext_bits", Box::new(|s| s.plaintext_bits = 60)),
        ("gadget_levels", Box::new(|s| s.gadget_levels = 2)),
        (
            "shared_pack_levels",
            Box::new(|s| s.shared_pack_levels = 13),
        ),
        (
            "client_conjugate_levels",
            Box::new(|s| s.client_conjugate_levels = 7),
        ),
        (
            "flooding_bound_log2",
            Box::new(|s| s.flooding_bound_log2 = 0),
        ),
    ];
    for (field, mutate) in cases {
        let mut s = b8();
        mutate(&mut s);
        match ParameterSet::new(s) {
            Err(ParamError::OutOfRange { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected OutOfRange, got {other:?}"),
        }
    }
}

// PARAM-3
#[test]
fn too_little_noise_is_insecure() {
    let mut s = b8();
    s.noise_bound_log2 = 1;
    assert!(matches!(
        ParameterSet::new(s),
        Err(ParamError::Insecure { .. })
    ));
}

#[test]
fn too_large_modulus_is_insecure() {
    // A 61-bit special modulus makes log2(P·q) = 125 > 109 at N = 4096.
    let mut s = b8();
    s.special_modulus = 0x1fff_ffff_ffe0_0001;
    assert!(crate::math::Modulus::is_prime(s.special_modulus));
    assert!(matches!(
        ParameterSet::new(s),
        Err(ParamError::Insecure { .. })
    ));
}

// PARAM-4
#[test]
fn flooding_beyond_the_margin_is_refused() {
    let mut s = b8();
    s.flooding_bound_log2 = 55;
    assert!(matches!(
        ParameterSet::new(s),
        Err(ParamError::NoiseBudget { .. })
    ));
}

#[test]
fn toml_errors_are_reported_not_panicked() {
    assert!(matches!(
        ParameterSet::load_all("[[set]]\nname = 3"),
        Err(ParamError::Parse(_))
    ));
    assert!(matches!(
        ParameterSet::load_all("garbage ="),
        Err(ParamError::Parse(_))
    ));
    let extra = SHIPPED_TOML.replacen("name = \"b8\"", "name = \"b8\"\nextra = 1", 1);
    assert!(matches!(
        ParameterSet::load_all(&extra),
        Err(ParamError::Parse(_))
    ));
}

#[test]
fn tail_bound_is_two_to_minus_forty() {
    let k = noise::gaussian_tail_sigmas(40);
    let p = statrs::function::erf::erfc(k / std::f64::consts::SQRT_2);
    assert!((p.log2() + 40.0).abs() < 1e-6, "{k} gives 2^{}", p.log2());
    assert!((7.0..7.2).contains(&k));
}

#[test]
fn fingerprints_differ_between_sets() {
    let a = ParameterSet::shipped("b8").unwrap().fingerprint();
    let b = ParameterSet::shipped("b12").unwrap().fingerprint();
    assert_ne!(a, b);
}

// PARAM-6
#[test]
fn accumulator_overflow_is_refused_naming_the_worst_output() {
    let p = ParameterSet::shipped("b8").unwrap();
    let fits: [&[i64]; 2] = [&[1, -2, 3], &[10, 0, -5]];
    assert_eq!(p.check_accumulator(fits, &[1, 1], 7), Ok(()));
    // Output 1: (10 + 0 + 5)·8 + 8 = 128 = 2^7 needs 9 signed bits.
    let err = p.check_accumulator(fits, &[1, 8], 8).unwrap_err();
    // Output 0 overflows first (6·8 + 90 = 138) but output 1 is the worst
    // (15·8 + 100 = 220): the error reports the worst of the layer.
    let worst = p.check_accumulator(fits, &[90, 100], 8).unwrap_err();
    assert!(
        matches!(
            worst,
            ParamError::AccumulatorOverflow {
                output: 1,
                worst: 220,
                ..
            }
        ),
        "{worst:?}"
    );
    assert_eq!(
        err,
        ParamError::AccumulatorOverflow {
            set: "b8".into(),
            output: 1,
            worst: 128,
            needed_bits: 9,
            plaintext_bits: 8
        }
    );
    assert!(err.to_string().contains("output 1"));
    // Saturates instead of overflowing on absurd inputs.
    let huge: [&[i64]; 1] = [&[i64::MIN, i64::MAX]];
    assert!(p.check_accumulator(huge, &[], u64::MAX).is_err());
}

// PRIV-3: the printed circuit-privacy figures equal proofs/noise-budget.md
// table 3 (proofs/budget_table.py section 3): ρ per ciphertext
// N·(2·k_64·σ_bf)²/(2σ_f²) and the distance √(ρ/2) + N·2^-64.
#[test]
fn circuit_privacy_bound_matches_the_proof_table() {
    for (name, rho, sd) in [
        ("b8", -32.24, -16.62),
        ("b12", -16.24, -8.62),
        ("b16", -0.24, -0.62),
        ("b20", 9.76, 4.38),
        ("b24", 15.76, 7.38),
        ("wide", 24.71, 11.86),
        // PARAM-9: the statistical set (N·2^-64 dominates its distance).
        ("s16", -104.24, -50.59),
    ] {
        let p = ParameterSet::shipped(name).unwrap();
        let got = p.flooding_rho_per_ciphertext().log2();
        assert!((got - rho).abs() < 0.01, "{name}: ρ 2^{got}");
        assert!(
            (p.circuit_privacy_log2() - sd).abs() < 0.01,
            "{name}: {}",
            p.circuit_privacy_log2()
        );
        let says_none = p.circuit_privacy_statement().starts_with("no statistical");
        assert_eq!(says_none, sd >= -1.0, "{name}");
    }
}

// PRIV-3: the per-stage bound equals the set's at the set's ‖ŵ‖₁ limit, and
// shrinks with the square of a smaller one (ρ ∝ σ_bf² ≈ l1²·Var_repack).
#[test]
fn flooding_rho_follows_the_stage_noise() {
    let p = ParameterSet::shipped("b16").unwrap();
    let b = p.budget();
    let at_limit = b.before_flooding_at((2f64).powi(p.max_weight_l1_log2() as i32));
    assert!((at_limit / b.before_flooding - 1.0).abs() < 1e-12);
    let big = p.flooding_rho_at(b.before_flooding_at(1024.0));
    let small = p.flooding_rho_at(b.before_flooding_at(512.0));
    // Var(l1) = l1²·r + c with c ≪ l1²·r here: the ratio is just under 4.
    assert!((3.9..4.0).contains(&(big / small)), "{}", big / small);
    assert_eq!(p.flooding_sigma_log2(), p.flooding_bound_log2() - 3);
}

// PARAM-5, PARAM-8: a single-limb set's fingerprint is the FNV-1a of the
// fields in their original order (q as one u64), so keys and ciphertexts
// of the b-sets stay valid across the RNS generalisation; a multi-limb set
// hashes every limb and the limb count.
#[test]
fn single_limb_fingerprints_are_unchanged() {
    let fnv = |fields: &[u64]| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for x in fields {
            for b in x.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    };
    for p in ParameterSet::shipped_all().unwrap() {
        let s = p.spec();
        let tail = [
            s.special_modulus,
            s.noise_bound_log2 as u64,
            s.plaintext_bits as u64,
            s.max_weight_l1_log2 as u64,
            s.gadget_base_log as u64,
            s.gadget_levels as u64,
            s.shared_pack_levels as u64,
            s.client_conjugate_levels as u64,
            s.flooding_bound_log2 as u64,
        ];
        let mut fields = vec![s.ring_degree as u64];
        fields.extend_from_slice(s.ciphertext_modulus.limbs());
        if p.limbs() > 1 {
            fields.push(p.limbs() as u64);
        }
        fields.extend_from_slice(&tail);
        assert_eq!(p.fingerprint(), fnv(&fields), "{}", p.name());
    }
    // b8's value as the single-modulus code computed it.
    assert_eq!(
        ParameterSet::shipped("b8").unwrap().fingerprint(),
        fnv(&[
            4096,
            crate::math::SOLINAS,
            2147377153,
            4,
            8,
            7,
            22,
            3,
            5,
            0,
            54
        ])
    );
}

// PARAM-7: s16 is never chosen automatically.
#[test]
fn only_pinning_uses_s16() {
    let sets = ParameterSet::shipped_all().unwrap();
    let auto: Vec<&str> = sets
        .iter()
        .filter(|p| p.auto_select())
        .map(|p| p.name())
        .collect();
    assert_eq!(auto, ["b8", "b12", "b16", "b20", "b24", "wide"]);
    let s16 = ParameterSet::shipped("s16").unwrap();
    assert!(!s16.auto_select());
    assert!(s16
        .circuit_privacy_statement()
        .starts_with("statistical circuit privacy"));
}
