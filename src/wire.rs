//! Versioned binary encoding of ciphertexts and keys (spec/wire-format.md).
//!
//! Every object starts with a fixed 20-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SFHR` |
//! | 4..6 | format version, little-endian (currently 1) |
//! | 6 | object kind |
//! | 7 | reserved, 0 |
//! | 8..16 | parameter-set fingerprint |
//! | 16..20 | body length in bytes |
//!
//! The header is checked — magic, version, kind, fingerprint, and the body
//! length against the exact size the kind must have under the parameter set
//! — before a single body byte is interpreted. Coefficients must be reduced;
//! trailing bytes are an error. Decoding never panics and never allocates
//! more than the expected size (WIRE-1, WIRE-2, WIRE-3, WIRE-4). Under an RNS
//! modulus every polynomial modulo q carries all its limbs, limb-major, each
//! checked against its own prime (WIRE-5, PARAM-8).
//!
//! `spec/wire-grammar.toml` states every field, range and length rule of
//! these objects, of the protocol messages and of the transport frames,
//! with the error each broken rule raises; the decoders accept exactly its
//! encodings (WIRE-6), and the fuzz targets' dictionaries and seeds are
//! generated from it (WIRE-7).

use crate::rlwe::{Ciphertext, Context, SeededCiphertext, SeededGaloisKey, SeededPublicKey};
use thiserror::Error;

/// The first four bytes of every object: `SFHR` (protocol messages use
/// `SFHP`).
pub const MAGIC: [u8; 4] = *b"SFHR";
/// The one format version this build writes and accepts; any other is
/// [`WireError::UnsupportedVersion`].
pub const VERSION: u16 = 1;
/// Bytes of the fixed header that precedes every body.
pub const HEADER_LEN: usize = 20;

/// The object kinds of format version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A full [`Ciphertext`]: body `n: u32, a, b` (L·n residues each).
    Ciphertext = 1,
    /// A [`SeededCiphertext`]: body `n: u32, seed[16], b`.
    SeededCiphertext = 2,
    /// A [`SeededGaloisKey`]: body `g: u32, n: u32, rows: u32`, then per row
    /// `seed[16], b_q (L·n), b_P (n)`.
    SeededGaloisKey = 3,
    /// A [`SeededPublicKey`]: body `n: u32, seed[16], b`.
    SeededPublicKey = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Kind::Ciphertext,
            2 => Kind::SeededCiphertext,
            3 => Kind::SeededGaloisKey,
            4 => Kind::SeededPublicKey,
            _ => return None,
        })
    }
}

/// Why received bytes were refused. Always the sender's fault, except
/// [`NoSuchLevel`](Self::NoSuchLevel) (the caller's); no variant carries
/// secret material or echoes more than a field's value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the header, or than the header plus the declared body
    /// (WIRE-2).
    #[error("peer sent {got} bytes, fewer than the {needed} the header or body needs")]
    Truncated {
        /// Bytes the header or body needs.
        needed: usize,
        /// Bytes received.
        got: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("peer sent data without the SFHR magic")]
    BadMagic,
    /// The header names a format version other than [`VERSION`]; carries it.
    #[error("peer uses wire format version {0}, this build speaks version {VERSION}")]
    UnsupportedVersion(u16),
    /// The object kind byte is not the kind the receiver asked to decode (or
    /// no kind at all).
    #[error("peer sent object kind {got}, expected {expected:?}")]
    WrongKind {
        /// The kind the receiver asked to decode.
        expected: Kind,
        /// The kind byte received.
        got: u8,
    },
    /// The reserved header byte 7 is not zero; carries it.
    #[error("peer's reserved header byte is {0}, must be 0")]
    Reserved(u8),
    /// The object was made under another parameter set (PARAM-5).
    #[error("peer's object belongs to another parameter set (fingerprint {got:#018x}, expected {expected:#018x})")]
    ParameterMismatch {
        /// The receiver's set fingerprint.
        expected: u64,
        /// The fingerprint in the header.
        got: u64,
    },
    /// The declared body length differs from the exact size of the kind under
    /// the parameter set ([`body_len`]); checked before any body byte is read
    /// (WIRE-1).
    #[error("peer declared a {declared}-byte body; this kind is exactly {expected} bytes under these parameters")]
    BadLength {
        /// The body length in the header.
        declared: usize,
        /// The exact body length of the kind under the set.
        expected: usize,
    },
    /// Bytes follow the object; carries how many (WIRE-2).
    #[error("peer sent {0} bytes after the object")]
    TrailingBytes(usize),
    /// The ring degree in the body is not the set's N (WIRE-2).
    #[error("peer sent ring degree {got}, expected {expected}")]
    WrongRingDegree {
        /// The set's N.
        expected: usize,
        /// The ring degree in the body.
        got: usize,
    },
    /// A coefficient is not reduced modulo its limb (or P for `b_P`) (WIRE-3,
    /// WIRE-5).
    #[error("peer sent coefficient {index} not reduced modulo its modulus")]
    Unreduced {
        /// Index of the residue among all residues read so far, in body order
        /// (block l of a limb-major polynomial starts at l·n; for a
        /// ciphertext, b starts at L·n).
        index: usize,
    },
    /// A Galois key for another element than the 2^ℓ + 1 of the level asked for
    /// (WIRE-2).
    #[error("peer sent a Galois key for element {got}, expected {expected}")]
    WrongGaloisElement {
        /// 2^ℓ + 1 for the level asked for.
        expected: usize,
        /// The element in the body.
        got: usize,
    },
    /// A Galois key whose row count is not the set's `gadget_levels` (WIRE-2).
    #[error("peer sent a key with {got} gadget rows, expected {expected}")]
    WrongRowCount {
        /// The set's `gadget_levels`.
        expected: usize,
        /// The row count in the body.
        got: usize,
    },
    /// The *caller* asked [`decode_galois_key`] for a level outside
    /// 1..=log2 N: the one variant that is not the peer's fault. Checked before
    /// the bytes are read.
    #[error("caller asked for Galois key level {level}; this ring has levels 1..={max}")]
    NoSuchLevel {
        /// The level asked for.
        level: u32,
        /// log2 N, the top level.
        max: u32,
    },
}

fn header(kind: Kind, ctx: &Context, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&ctx.params().fingerprint().to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out
}

fn put_u32(out: &mut Vec<u8>, x: usize) {
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

fn put_poly(out: &mut Vec<u8>, p: &[u64]) {
    for &c in p {
        out.extend_from_slice(&c.to_le_bytes());
    }
}

/// A cursor over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Running count of coefficients read, for error messages.
    coeffs: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated {
                needed: self.pos.saturating_add(len),
                got: self.buf.len(),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<usize, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn seed(&mut self) -> Result<[u8; 16], WireError> {
        let mut s = [0u8; 16];
        s.copy_from_slice(self.take(16)?);
        Ok(s)
    }
    fn poly(&mut self, n: usize, modulus: u64) -> Result<Vec<u64>, WireError> {
        let bytes = self.take(n * 8)?;
        let mut out = Vec::with_capacity(n);
        for chunk in bytes.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let c = u64::from_le_bytes(w);
            if c >= modulus {
                return Err(WireError::Unreduced { index: self.coeffs });
            }
            self.coeffs += 1;
            out.push(c);
        }
        Ok(out)
    }
    /// A limb-major polynomial modulo an RNS modulus (PARAM-8): L blocks of
    /// n coefficients, block l reduced modulo limb l (one block, and the
    /// same bytes as [`poly`](Self::poly), on single-limb sets).
    fn rns_poly(&mut self, n: usize, q: crate::math::RnsModulus) -> Result<Vec<u64>, WireError> {
        if q.len() == 1 {
            return self.poly(n, q.limb(0).value());
        }
        let mut out = Vec::with_capacity(n * q.len());
        for m in q.limbs() {
            out.extend(self.poly(n, m.value())?);
        }
        Ok(out)
    }
    fn ring_degree(&mut self, expected: usize) -> Result<usize, WireError> {
        let got = self.u32()?;
        if got != expected {
            return Err(WireError::WrongRingDegree { expected, got });
        }
        Ok(got)
    }
}

/// Exact body size of each kind under `ctx`'s parameters.
pub fn body_len(kind: Kind, ctx: &Context) -> usize {
    let n = ctx.n();
    // L residues per coefficient modulo q (WIRE-5), one modulo P.
    let l = ctx.limbs();
    match kind {
        Kind::Ciphertext => 4 + 16 * l * n,
        Kind::SeededCiphertext => 4 + 16 + 8 * l * n,
        Kind::SeededGaloisKey => 12 + ctx.params().gadget_levels() * (16 + 8 * (l + 1) * n),
        Kind::SeededPublicKey => 4 + 16 + 8 * l * n,
    }
}

/// Checks the header and returns a reader positioned at the body.
fn open<'a>(bytes: &'a [u8], kind: Kind, ctx: &Context) -> Result<Reader<'a>, WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    }
    if bytes[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    if Kind::from_u8(bytes[6]) != Some(kind) {
        return Err(WireError::WrongKind {
            expected: kind,
            got: bytes[6],
        });
    }
    if bytes[7] != 0 {
        return Err(WireError::Reserved(bytes[7]));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[8..16]);
    let got = u64::from_le_bytes(fp);
    let expected = ctx.params().fingerprint();
    if got != expected {
        return Err(WireError::ParameterMismatch { expected, got });
    }
    let declared = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) as usize;
    let expected_len = body_len(kind, ctx);
    if declared != expected_len {
        return Err(WireError::BadLength {
            declared,
            expected: expected_len,
        });
    }
    let total = HEADER_LEN + expected_len;
    if bytes.len() < total {
        return Err(WireError::Truncated {
            needed: total,
            got: bytes.len(),
        });
    }
    if bytes.len() > total {
        return Err(WireError::TrailingBytes(bytes.len() - total));
    }
    Ok(Reader {
        buf: bytes,
        pos: HEADER_LEN,
        coeffs: 0,
    })
}

/// Encodes `ct` canonically (header, then `n, a, b`). `ct` must be under
/// `ctx`'s parameter set; that is not checked here, and a receiver refuses
/// an object whose size or coefficients do not fit its set.
pub fn encode_ciphertext(ctx: &Context, ct: &Ciphertext) -> Vec<u8> {
    let (a, b) = ct.parts();
    let mut out = header(Kind::Ciphertext, ctx, body_len(Kind::Ciphertext, ctx));
    put_u32(&mut out, ct.ring_degree());
    put_poly(&mut out, a);
    put_poly(&mut out, b);
    out
}

/// Decodes a [`Kind::Ciphertext`] from untrusted bytes: header first, then
/// the ring degree and every residue reduced modulo its limb (WIRE-1..5).
/// Never panics; re-encodes to `bytes`.
pub fn decode_ciphertext(ctx: &Context, bytes: &[u8]) -> Result<Ciphertext, WireError> {
    let mut r = open(bytes, Kind::Ciphertext, ctx)?;
    let n = r.ring_degree(ctx.n())?;
    let q = ctx.q();
    let a = r.rns_poly(n, q)?;
    let b = r.rns_poly(n, q)?;
    // Lengths and ranges were just checked.
    Ciphertext::from_parts(a, b, n, q).ok_or(WireError::Unreduced { index: 0 })
}

/// Encodes `ct` canonically (header, then `n, seed, b`); `ct` must be under
/// `ctx`'s parameter set (not checked).
pub fn encode_seeded_ciphertext(ctx: &Context, ct: &SeededCiphertext) -> Vec<u8> {
    let mut out = header(
        Kind::SeededCiphertext,
        ctx,
        body_len(Kind::SeededCiphertext, ctx),
    );
    put_u32(&mut out, ctx.n());
    out.extend_from_slice(ct.seed());
    put_poly(&mut out, ct.body());
    out
}

/// Decodes a [`Kind::SeededCiphertext`] from untrusted bytes, checked as
/// [`decode_ciphertext`]; the mask is not expanded here.
pub fn decode_seeded_ciphertext(
    ctx: &Context,
    bytes: &[u8],
) -> Result<SeededCiphertext, WireError> {
    let mut r = open(bytes, Kind::SeededCiphertext, ctx)?;
    let n = r.ring_degree(ctx.n())?;
    let seed = r.seed()?;
    let b = r.rns_poly(n, ctx.q())?;
    SeededCiphertext::from_parts(seed, b, n, ctx.q()).ok_or(WireError::Unreduced { index: 0 })
}

/// Encodes `key` canonically (header, `g, n, rows`, then each row); `key`
/// must be under `ctx`'s parameter set (not checked).
pub fn encode_galois_key(ctx: &Context, key: &SeededGaloisKey) -> Vec<u8> {
    let mut out = header(
        Kind::SeededGaloisKey,
        ctx,
        body_len(Kind::SeededGaloisKey, ctx),
    );
    put_u32(&mut out, key.g);
    put_u32(&mut out, ctx.n());
    put_u32(&mut out, key.rows.len());
    for row in &key.rows {
        out.extend_from_slice(&row.seed);
        put_poly(&mut out, &row.b_q);
        put_poly(&mut out, &row.b_p);
    }
    out
}

/// Decodes the key for tree level `level` (g = 2^level + 1).
pub fn decode_galois_key(
    ctx: &Context,
    bytes: &[u8],
    level: u32,
) -> Result<SeededGaloisKey, WireError> {
    let max = ctx.n().trailing_zeros();
    if !(1..=max).contains(&level) {
        return Err(WireError::NoSuchLevel { level, max });
    }
    let mut r = open(bytes, Kind::SeededGaloisKey, ctx)?;
    let expected_g = (1usize << level) + 1;
    let g = r.u32()?;
    if g != expected_g {
        return Err(WireError::WrongGaloisElement {
            expected: expected_g,
            got: g,
        });
    }
    let n = r.ring_degree(ctx.n())?;
    let levels = ctx.params().gadget_levels();
    let rows_declared = r.u32()?;
    if rows_declared != levels {
        return Err(WireError::WrongRowCount {
            expected: levels,
            got: rows_declared,
        });
    }
    let (q, p) = (ctx.q(), ctx.params().p().value());
    let mut rows = Vec::with_capacity(levels);
    for _ in 0..levels {
        let seed = r.seed()?;
        let b_q = r.rns_poly(n, q)?;
        let b_p = r.poly(n, p)?;
        rows.push(crate::rlwe::SeededKeyRow { seed, b_q, b_p });
    }
    Ok(SeededGaloisKey { g, rows })
}

/// Encodes `pk` canonically (header, then `n, seed, b`); `pk` must be under
/// `ctx`'s parameter set (not checked).
pub fn encode_public_key(ctx: &Context, pk: &SeededPublicKey) -> Vec<u8> {
    let mut out = header(
        Kind::SeededPublicKey,
        ctx,
        body_len(Kind::SeededPublicKey, ctx),
    );
    put_u32(&mut out, ctx.n());
    out.extend_from_slice(&pk.seed);
    put_poly(&mut out, &pk.b);
    out
}

/// Decodes a [`Kind::SeededPublicKey`] from untrusted bytes, checked as
/// [`decode_ciphertext`]. Whether the key is honestly formed cannot be
/// checked here.
pub fn decode_public_key(ctx: &Context, bytes: &[u8]) -> Result<SeededPublicKey, WireError> {
    let mut r = open(bytes, Kind::SeededPublicKey, ctx)?;
    let n = r.ring_degree(ctx.n())?;
    let seed = r.seed()?;
    let b = r.rns_poly(n, ctx.q())?;
    Ok(SeededPublicKey { seed, b })
}
