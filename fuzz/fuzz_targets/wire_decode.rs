//! Wire decoding of untrusted bytes (WIRE-1..WIRE-4).
//!
//! Input layout: byte 0 selects the Galois-key tree level (`% 14`, so
//! 0..=13; 0 and 13 are outside 1..=log2 N for N = 4096) and the mode (high
//! bit). The rest is either
//!
//! * **raw** (high bit clear): fed as-is to all four decoders; or
//! * **synthesised** (high bit set): byte 1 picks the kind (bits 0–1) and
//!   an optional single corruption (bit 7 set: corruption number bits 2–6,
//!   modulo 12), bytes 2.. are a cyclic stream from which a
//!   well-formed object of that kind is built (header, structural fields,
//!   reduced coefficients). Random bytes almost never pass the 20-byte
//!   header check or the 4096 "coefficient < P" checks of a Galois key, so
//!   without this mode the success paths would never be reached.
//!
//! Invariants:
//! * no decoder panics, on any input;
//! * decoding is canonical: whenever `decode_*` accepts bytes, the matching
//!   `encode_*` reproduces exactly those bytes;
//! * a synthesised object without corruption is accepted by the decoder of
//!   its kind (and only by it); with one corrupted field it is rejected.

#![no_main]

use libfuzzer_sys::fuzz_target;
use safhire::params::ParameterSet;
use safhire::rlwe::{packing_galois_elements, Context};
use safhire::wire::{self, Kind};
use std::sync::OnceLock;

fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| Context::new(ParameterSet::shipped("b8").expect("shipped set b8")))
}

const KINDS: [Kind; 4] = [
    Kind::Ciphertext,
    Kind::SeededCiphertext,
    Kind::SeededGaloisKey,
    Kind::SeededPublicKey,
];

/// Decodes `bytes` with every decoder; checks canonicity of each success and
/// returns which kinds accepted.
fn decode_all(ctx: &Context, bytes: &[u8], level: u32) -> [bool; 4] {
    let mut ok = [false; 4];
    if let Ok(ct) = wire::decode_ciphertext(ctx, bytes) {
        assert_eq!(ct.ring_degree(), ctx.n());
        assert!(
            wire::encode_ciphertext(ctx, &ct) == bytes,
            "decode_ciphertext accepted a non-canonical encoding"
        );
        ok[0] = true;
    }
    if let Ok(ct) = wire::decode_seeded_ciphertext(ctx, bytes) {
        assert_eq!(ct.body().len(), ctx.n());
        assert!(
            wire::encode_seeded_ciphertext(ctx, &ct) == bytes,
            "decode_seeded_ciphertext accepted a non-canonical encoding"
        );
        ok[1] = true;
    }
    if let Ok(key) = wire::decode_galois_key(ctx, bytes, level) {
        if (1..=ctx.n().trailing_zeros()).contains(&level) {
            assert_eq!(
                key.galois_element(),
                (1usize << level) + 1,
                "Galois key for level {level} has the wrong element"
            );
        }
        assert!(
            wire::encode_galois_key(ctx, &key) == bytes,
            "decode_galois_key accepted a non-canonical encoding"
        );
        ok[2] = true;
    }
    if let Ok(pk) = wire::decode_public_key(ctx, bytes) {
        assert!(
            wire::encode_public_key(ctx, &pk) == bytes,
            "decode_public_key accepted a non-canonical encoding"
        );
        ok[3] = true;
    }
    // Kinds are distinguished by the header: at most one decoder accepts.
    assert!(ok.iter().filter(|&&b| b).count() <= 1, "bytes accepted as two kinds: {ok:?}");
    ok
}

/// A cyclic byte stream over the fuzz input (zeros when empty).
struct Stream<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Stream<'_> {
    fn u8(&mut self) -> u8 {
        if self.data.is_empty() {
            return 0;
        }
        let b = self.data[self.pos % self.data.len()];
        self.pos = self.pos.wrapping_add(1);
        b
    }
    fn u64(&mut self) -> u64 {
        let mut w = [0u8; 8];
        for b in &mut w {
            *b = self.u8();
        }
        u64::from_le_bytes(w)
    }
    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }
}

/// Single-field corruptions of a well-formed encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Corruption {
    None,
    Magic,
    Version,
    Kind,
    Reserved,
    Fingerprint,
    DeclaredLength,
    RingDegree,
    GaloisElement,
    RowCount,
    Unreduced,
    TrailingByte,
    Truncated,
}

impl Corruption {
    fn from_byte(b: u8) -> Self {
        use Corruption::*;
        // Half of the inputs are uncorrupted.
        if b & 0x80 == 0 {
            return None;
        }
        [
            Magic,
            Version,
            Kind,
            Reserved,
            Fingerprint,
            DeclaredLength,
            RingDegree,
            GaloisElement,
            RowCount,
            Unreduced,
            TrailingByte,
            Truncated,
        // Bits 2–6, independent of the kind in bits 0–1: every corruption
        // reaches every kind (taken from the low bits, corruption i only
        // ever met kind i mod 4, so a Galois key was never given a wrong
        // element or row count).
        ][((b >> 2) & 0x1f) as usize % 12]
    }
}

fn put_u32(out: &mut Vec<u8>, x: u32) {
    out.extend_from_slice(&x.to_le_bytes());
}

/// Any value different from `x`, chosen by the stream.
fn other_u32(s: &mut Stream, x: u32) -> u32 {
    let y = s.u32();
    if y == x {
        x.wrapping_add(1)
    } else {
        y
    }
}

/// A coefficient for `modulus`: reduced, biased towards the edges.
fn coefficient(s: &mut Stream, modulus: u64) -> u64 {
    let r = s.u64();
    match r & 7 {
        0 => 0,
        1 => modulus - 1,
        _ => r % modulus,
    }
}

/// Builds an encoding of `kind` with at most one corrupted field; returns it
/// with the index (into `KINDS`) of the one decoder that must accept it, if
/// any.
fn synthesise(
    ctx: &Context,
    kind: Kind,
    level: u32,
    corruption: Corruption,
    s: &mut Stream,
) -> (Vec<u8>, Option<usize>) {
    let n = ctx.n();
    let q = ctx.q().limb(0).value(); // b8: one limb
    let p = ctx.params().p().value();
    let levels = ctx.params().gadget_levels();
    let body_len = wire::body_len(kind, ctx);
    let expected_g = packing_galois_elements(n)
        .nth(level.saturating_sub(1) as usize)
        .filter(|_| level >= 1)
        .unwrap_or(0) as u32;

    let mut out = Vec::with_capacity(wire::HEADER_LEN + body_len + 1);
    // Whether the corruption applies to this kind. (Computed up front: an
    // earlier version set a flag from inside the `field` closure, and rustc
    // 1.95 / nightly 1.97 miscompile that at opt-level ≥ 2 — see README.md.)
    let corrupted = match corruption {
        Corruption::None => false,
        Corruption::GaloisElement | Corruption::RowCount => kind == Kind::SeededGaloisKey,
        _ => true,
    };
    let field = |c: Corruption| c == corruption;

    // Header.
    let mut magic = wire::MAGIC;
    if field(Corruption::Magic) {
        let i = s.u8() as usize % 4;
        magic[i] ^= s.u8() | 1;
    }
    out.extend_from_slice(&magic);
    let version = if field(Corruption::Version) {
        let v = s.u8() as u16 | ((s.u8() as u16) << 8);
        if v == wire::VERSION {
            v + 1
        } else {
            v
        }
    } else {
        wire::VERSION
    };
    out.extend_from_slice(&version.to_le_bytes());
    let kind_byte = if field(Corruption::Kind) {
        let k = s.u8();
        if k == kind as u8 {
            k ^ 0x40
        } else {
            k
        }
    } else {
        kind as u8
    };
    out.push(kind_byte);
    out.push(if field(Corruption::Reserved) { s.u8() | 1 } else { 0 });
    let fp = ctx.params().fingerprint();
    let fp = if field(Corruption::Fingerprint) { fp ^ (s.u64() | 1) } else { fp };
    out.extend_from_slice(&fp.to_le_bytes());
    let declared = if field(Corruption::DeclaredLength) {
        other_u32(s, body_len as u32)
    } else {
        body_len as u32
    };
    put_u32(&mut out, declared);

    // Body.
    let ring_degree = if field(Corruption::RingDegree) { other_u32(s, n as u32) } else { n as u32 };
    let mut coeff_ranges: Vec<(usize, u64)> = Vec::new(); // (byte offset, modulus) of each polynomial
    let mut poly = |out: &mut Vec<u8>, modulus: u64, s: &mut Stream| {
        coeff_ranges.push((out.len(), modulus));
        for _ in 0..n {
            out.extend_from_slice(&coefficient(s, modulus).to_le_bytes());
        }
    };
    let seed = |out: &mut Vec<u8>, s: &mut Stream| {
        for _ in 0..16 {
            out.push(s.u8());
        }
    };
    match kind {
        Kind::Ciphertext => {
            put_u32(&mut out, ring_degree);
            poly(&mut out, q, s);
            poly(&mut out, q, s);
        }
        Kind::SeededCiphertext | Kind::SeededPublicKey => {
            put_u32(&mut out, ring_degree);
            seed(&mut out, s);
            poly(&mut out, q, s);
        }
        Kind::SeededGaloisKey => {
            let g = if field(Corruption::GaloisElement) { other_u32(s, expected_g) } else { expected_g };
            put_u32(&mut out, g);
            put_u32(&mut out, ring_degree);
            let rows = if field(Corruption::RowCount) {
                other_u32(s, levels as u32)
            } else {
                levels as u32
            };
            put_u32(&mut out, rows);
            for _ in 0..levels {
                seed(&mut out, s);
                poly(&mut out, q, s);
                poly(&mut out, p, s);
            }
        }
    }
    if field(Corruption::Unreduced) {
        let (offset, modulus) = coeff_ranges[s.u8() as usize % coeff_ranges.len()];
        let at = offset + 8 * (s.u32() as usize % n);
        // A value in [modulus, 2^64).
        let span = u64::MAX - modulus; // ≥ 1 for every odd modulus < 2^64
        let bad = modulus + s.u64() % (span + 1).max(1);
        out[at..at + 8].copy_from_slice(&bad.to_le_bytes());
    }
    assert_eq!(out.len(), wire::HEADER_LEN + body_len, "test harness built a wrong-size body");
    if field(Corruption::TrailingByte) {
        out.push(s.u8());
    }
    if field(Corruption::Truncated) {
        let cut = 1 + s.u32() as usize % out.len();
        out.truncate(out.len() - cut);
    }
    let valid_level = (1..=ctx.n().trailing_zeros()).contains(&level);
    let expect = if kind == Kind::SeededGaloisKey && !valid_level {
        // No Galois key exists for this level: the decoder must refuse
        // whatever the bytes say (the caller asked for the impossible).
        None
    } else if !corrupted {
        Some(kind as usize - 1)
    } else if corruption == Corruption::Kind
        && matches!(kind, Kind::SeededCiphertext | Kind::SeededPublicKey)
        && (kind_byte == Kind::SeededCiphertext as u8 || kind_byte == Kind::SeededPublicKey as u8)
    {
        // The two seeded kinds share one body layout: relabelling one as
        // the other is a well-formed object of the other kind.
        Some(kind_byte as usize - 1)
    } else {
        None
    };
    (out, expect)
}

fuzz_target!(|data: &[u8]| {
    let ctx = ctx();
    let Some((&first, rest)) = data.split_first() else {
        // The empty input: every decoder must refuse it.
        assert_eq!(decode_all(ctx, data, 0), [false; 4]);
        return;
    };
    let level = (first & 0x7f) as u32 % 14;
    if first & 0x80 == 0 {
        decode_all(ctx, rest, level);
        return;
    }
    let Some((&select, stream)) = rest.split_first() else {
        return;
    };
    let kind = KINDS[(select & 3) as usize];
    let corruption = Corruption::from_byte(select);
    let mut s = Stream { data: stream, pos: 0 };
    let (bytes, expect) = synthesise(ctx, kind, level, corruption, &mut s);
    let accepted = decode_all(ctx, &bytes, level);
    let mut expected = [false; 4];
    if let Some(i) = expect {
        expected[i] = true;
    }
    assert_eq!(
        accepted, expected,
        "{kind:?} at level {level} with corruption {corruption:?}: accepted by the wrong decoders"
    );
});
