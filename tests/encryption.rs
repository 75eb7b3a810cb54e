//! KEY-1, KEY-2, ENC-1, EXT-1: keys, seeded encryption, coefficient
//! encoding and extraction.

mod common;

use common::{fixture, random_values};
use proptest::prelude::*;
use safhire::extract::{extract_lwe, read_positions, shifted_to_constant};
use safhire::rlwe::SecretKey;
use safhire::rng::Csprng;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    // ENC-1, KEY-2: seeded encryption of any in-range vector round-trips.
    #[test]
    fn encrypt_decrypt_round_trips(len in 0usize..=4096, seed in any::<u8>(), set in prop_oneof![Just("b8"), Just("wide")]) {
        let f = fixture(set);
        let mut rng = Csprng::from_seed([seed; 16]);
        let vals = random_values(&f.ctx, &mut rng, len);
        let seeded = f.ctx.encrypt_seeded(&f.sk, &vals, &mut rng);
        let got = f.ctx.decrypt(&f.sk, &seeded.expand(f.ctx.q()));
        prop_assert_eq!(&got[..len], &vals[..]);
        prop_assert!(got[len..].iter().all(|&x| x == 0));
    }

    // EXT-1: X^-i·c carries value i in its constant coefficient, and the
    // extracted LWE decrypts to value i.
    #[test]
    fn extraction_reads_each_value(i in 0usize..4096, seed in any::<u8>()) {
        let f = fixture("b8");
        let ctx = &f.ctx;
        let mut rng = Csprng::from_seed([seed; 16]);
        let vals = random_values(ctx, &mut rng, 4096);
        let ct = ctx.encrypt(&f.sk, &vals, &mut rng);
        let shifted = shifted_to_constant(ctx.q(), &ct, i).unwrap();
        prop_assert_eq!(ctx.decrypt(&f.sk, &shifted)[0], vals[i]);
        let lwe = extract_lwe(ctx.q(), &ct, i).unwrap();
        prop_assert_eq!(ctx.decrypt_lwe(&f.sk, &lwe), Some(vals[i]));
        prop_assert_eq!(read_positions(&vals, &[i]), Some(vec![vals[i]]));
    }
}

#[test]
fn out_of_range_positions_read_as_none() {
    assert_eq!(read_positions(&[1, 2, 3], &[0, 3]), None);
    let f = fixture("b8");
    let ct = f.ctx.encrypt(&f.sk, &[1], &mut Csprng::from_seed([2; 16]));
    assert!(shifted_to_constant(f.ctx.q(), &ct, 4096).is_none());
    assert!(extract_lwe(f.ctx.q(), &ct, 4096).is_none());
}

#[test]
fn keys_are_fresh_and_debug_output_is_redacted() {
    // KEY-1: OS-seeded keys differ; Debug reveals only the ring degree.
    // THREAT-2: neither the key nor the generator prints secret material.
    let ctx = &fixture("b8").ctx;
    let a = SecretKey::generate(ctx, &mut Csprng::from_os());
    let b = SecretKey::generate(ctx, &mut Csprng::from_os());
    let mut rng = Csprng::from_seed([1; 16]);
    let ct = ctx.encrypt(&a, &[5; 64], &mut rng);
    assert_eq!(&ctx.decrypt(&a, &ct)[..64], &[5; 64]);
    assert_ne!(
        &ctx.decrypt(&b, &ct)[..64],
        &[5; 64],
        "a second OS-seeded key decrypts the first's ciphertext"
    );
    assert_eq!(format!("{a:?}"), "SecretKey(N = 4096, ..)");
    assert_eq!(format!("{:?}", Csprng::from_os()), "Csprng(..)");
}
