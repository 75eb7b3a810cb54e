//! WIRE-1..WIRE-4: round trips, and every malformed input is refused with a
//! typed error naming the peer, without panicking.

mod common;

use common::{fixture, random_values};
use proptest::prelude::*;
use safhire::params::ParameterSet;
use safhire::rlwe::{Context, GaloisKeys, SeededPublicKey};
use safhire::rng::Csprng;
use safhire::wire::{self, WireError};

#[test]
fn ciphertexts_round_trip() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([1; 16]);
    let vals = random_values(ctx, &mut rng, 100);
    let seeded = ctx.encrypt_seeded(&f.sk, &vals, &mut rng);
    let bytes = wire::encode_seeded_ciphertext(ctx, &seeded);
    // Seeded: half the size of a full ciphertext.
    assert_eq!(bytes.len(), wire::HEADER_LEN + 4 + 16 + 8 * ctx.n());
    let back = wire::decode_seeded_ciphertext(ctx, &bytes).unwrap();
    assert_eq!(back, seeded);
    let full = back.expand(ctx.q());
    assert_eq!(&ctx.decrypt(&f.sk, &full)[..100], &vals[..]);
    let bytes = wire::encode_ciphertext(ctx, &full);
    assert_eq!(wire::decode_ciphertext(ctx, &bytes).unwrap(), full);
}

#[test]
fn keys_round_trip_and_still_work() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([2; 16]);
    let seeded = GaloisKeys::generate_seeded(ctx, &f.sk, &mut rng);
    let decoded: Vec<_> = seeded
        .iter()
        .enumerate()
        .map(|(i, k)| {
            wire::decode_galois_key(ctx, &wire::encode_galois_key(ctx, k), i as u32 + 1).unwrap()
        })
        .collect();
    assert_eq!(decoded, seeded);
    assert!(GaloisKeys::from_seeded(ctx, &decoded).is_some());
    // Levels outside 1..=log2 N are the caller's error, whatever the bytes.
    let bytes0 = wire::encode_galois_key(ctx, &seeded[0]);
    for level in [0, 13] {
        assert_eq!(
            wire::decode_galois_key(ctx, &bytes0, level),
            Err(WireError::NoSuchLevel { level, max: 12 })
        );
    }
    // Out of order keys are refused.
    let mut swapped = decoded.clone();
    swapped.swap(0, 1);
    assert!(GaloisKeys::from_seeded(ctx, &swapped).is_none());
    let bytes = wire::encode_galois_key(ctx, &seeded[0]);
    assert!(matches!(
        wire::decode_galois_key(ctx, &bytes, 2),
        Err(WireError::WrongGaloisElement {
            expected: 5,
            got: 3
        })
    ));
    let pk = SeededPublicKey::generate(ctx, &f.sk, &mut rng);
    let back = wire::decode_public_key(ctx, &wire::encode_public_key(ctx, &pk)).unwrap();
    assert_eq!(back, pk);
}

fn sample_bytes(ctx: &Context) -> Vec<u8> {
    let f = fixture("b8");
    let mut rng = Csprng::from_seed([3; 16]);
    wire::encode_seeded_ciphertext(ctx, &ctx.encrypt_seeded(&f.sk, &[1, 2, 3], &mut rng))
}

// WIRE-1, WIRE-2, WIRE-3, WIRE-4
#[test]
fn each_header_fault_has_its_own_error() {
    let ctx = &fixture("b8").ctx;
    let good = sample_bytes(ctx);
    let dec = |b: &[u8]| wire::decode_seeded_ciphertext(ctx, b);
    assert!(matches!(dec(&good[..10]), Err(WireError::Truncated { .. })));
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(dec(&b), Err(WireError::BadMagic));
    let mut b = good.clone();
    b[4] = 9;
    assert_eq!(dec(&b), Err(WireError::UnsupportedVersion(9)));
    let mut b = good.clone();
    b[6] = 1;
    assert!(matches!(dec(&b), Err(WireError::WrongKind { got: 1, .. })));
    let mut b = good.clone();
    b[7] = 1;
    assert_eq!(dec(&b), Err(WireError::Reserved(1)));
    let mut b = good.clone();
    b[8] ^= 1;
    assert!(matches!(dec(&b), Err(WireError::ParameterMismatch { .. })));
    let mut b = good.clone();
    b[16] ^= 1;
    assert!(matches!(dec(&b), Err(WireError::BadLength { .. })));
    let mut b = good.clone();
    b.push(0);
    assert_eq!(dec(&b), Err(WireError::TrailingBytes(1)));
    assert!(matches!(
        dec(&good[..good.len() - 1]),
        Err(WireError::Truncated { .. })
    ));
    let mut b = good.clone();
    b[21] = 0; // ring degree field (4096 = 0x1000)
    assert!(matches!(dec(&b), Err(WireError::WrongRingDegree { .. })));
    let mut b = good.clone();
    let last = b.len() - 8;
    b[last..].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(dec(&b), Err(WireError::Unreduced { index: 4095 })));
    // Every message names the peer.
    assert!(dec(&good[..3]).unwrap_err().to_string().starts_with("peer"));
}

// PARAM-5
#[test]
fn objects_of_another_parameter_set_are_refused() {
    let f = fixture("b8");
    let other = Context::new(ParameterSet::shipped("b16").unwrap());
    let bytes = sample_bytes(&f.ctx);
    assert!(matches!(
        wire::decode_seeded_ciphertext(&other, &bytes),
        Err(WireError::ParameterMismatch { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let ctx = &fixture("b8").ctx;
        prop_assert!(wire::decode_seeded_ciphertext(ctx, &bytes).is_err());
        prop_assert!(wire::decode_ciphertext(ctx, &bytes).is_err());
        prop_assert!(wire::decode_galois_key(ctx, &bytes, 1).is_err());
        prop_assert!(wire::decode_public_key(ctx, &bytes).is_err());
    }

    #[test]
    fn mutated_messages_decode_or_fail_cleanly(pos in 0usize..32_788, byte in any::<u8>()) {
        let ctx = &fixture("b8").ctx;
        let mut b = sample_bytes(ctx);
        let pos = pos % b.len();
        // Writing the byte already there is no mutation.
        prop_assume!(b[pos] != byte);
        b[pos] = byte;
        if let Ok(ct) = wire::decode_seeded_ciphertext(ctx, &b) {
            // Only seed or body bytes may change without an error, and the
            // result must re-encode to exactly the received bytes.
            prop_assert!(pos >= wire::HEADER_LEN + 4);
            prop_assert_eq!(wire::encode_seeded_ciphertext(ctx, &ct), b);
        }
    }
}
