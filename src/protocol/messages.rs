//! The four protocol messages and their envelope (spec/protocol.md).
//!
//! Decoding takes untrusted bytes and the receiver's context, checks the
//! envelope before the body, bounds every count by what the parameter set
//! and the message kind allow, and decodes embedded objects with the
//! validating `wire` decoders. Field by field, with the error each broken
//! rule raises, the messages are in `spec/wire-grammar.toml` (WIRE-6).

use super::error::{ErrorKind, ProtocolError};
use crate::engine::ClientOp;
use crate::rlwe::{
    packing_galois_elements, Ciphertext, Context, SeededCiphertext, SeededGaloisKey,
    SeededPublicKey,
};
use crate::wire::{self, WireError};

/// The first four bytes of every protocol message.
pub const MAGIC: [u8; 4] = *b"SFHP";
/// The message format's version, in every envelope. Version 2 binds each
/// upload and response to its session ([`SessionId`]); version 3 adds the
/// number of images a session carries to its request (PROTO-11).
pub const VERSION: u16 = 3;

/// A session's identifier (PROTO-10): 16 bytes the server draws from its
/// CSPRNG when it accepts a session and sends in the SessionAccept; every
/// Upload and Response of the session carries it, and each side refuses a
/// message that names another session. Public, not a secret: it keeps
/// sessions from mixing data, whatever the transport does.
pub type SessionId = [u8; 16];
/// Bytes of the envelope header before a message body.
pub const ENVELOPE_LEN: usize = 20;
/// Largest message body accepted (PROTO-4).
pub const MAX_BODY: usize = 64 << 20;
/// Most rounds a model may have.
pub const MAX_ROUNDS: usize = 1024;
/// Most client ops after one stage.
pub const MAX_OPS: usize = 8;
/// Most images one session may carry (PROTO-11).
pub const MAX_BATCH: usize = 64;

/// The kind byte of a message envelope (spec/protocol.md): 16–19, apart
/// from the wire object kinds 1–4 of spec/wire-format.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// [`SessionRequest`], client → server.
    SessionRequest = 16,
    /// [`SessionAccept`], server → client.
    SessionAccept = 17,
    /// [`Upload`], client → server.
    Upload = 18,
    /// [`Response`], server → client.
    Response = 19,
}

impl MessageKind {
    fn name(self) -> &'static str {
        match self {
            MessageKind::SessionRequest => "SessionRequest",
            MessageKind::SessionAccept => "SessionAccept",
            MessageKind::Upload => "Upload",
            MessageKind::Response => "Response",
        }
    }
}

/// Client → server: the evaluation keys of a new session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRequest {
    /// How many images the session carries, 1 to [`MAX_BATCH`] (PROTO-11):
    /// each is one query of the identity's budget.
    pub(crate) batch: u32,
    /// The packing Galois keys, one per level `1..=log2 N` in order (the
    /// server needs exactly these to repack). Fewer keys are
    /// [`ErrorKind::BadKeySet`], more than log2 N a `Malformed` count, and a
    /// key of the wrong level `Wire(WrongGaloisElement)`
    /// (spec/wire-grammar.toml).
    pub(crate) galois: Vec<SeededGaloisKey>,
    /// The client's public key, which the server uses to re-randomise its
    /// responses.
    pub(crate) public: SeededPublicKey,
}

impl SessionRequest {
    /// How many images the session carries (PROTO-11).
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// The packing Galois keys, one per level `1..=log2 N` in order.
    pub fn galois(&self) -> &[SeededGaloisKey] {
        &self.galois
    }

    /// The client's public key, which re-randomises the responses.
    pub fn public(&self) -> &SeededPublicKey {
        &self.public
    }
}

/// What the client must know of round r: how many values come back and
/// which element-wise steps to apply to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundInfo {
    /// Number of values the round's response decrypts to (≥ 1).
    pub(crate) outputs: u32,
    /// The element-wise steps the client applies to them, in order (at most
    /// [`MAX_OPS`]).
    pub(crate) ops: Vec<ClientOp>,
}

impl RoundInfo {
    /// Number of values the round's response decrypts to (≥ 1).
    pub fn outputs(&self) -> u32 {
        self.outputs
    }

    /// The element-wise steps the client applies to them, in order.
    pub fn ops(&self) -> &[ClientOp] {
        &self.ops
    }
}

/// Server → client: the model metadata the client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionAccept {
    /// The session's identifier, echoed in every Upload and Response.
    pub(crate) session: SessionId,
    /// Number of input values the model takes (`C·H·W`, ≥ 1).
    pub(crate) input_len: u32,
    /// The declared input range: the client refuses inputs outside it,
    /// since the server's accumulator bounds assume it (ENG-5).
    pub(crate) input_min: i64,
    /// Upper end of the declared input range, inclusive (`≥ input_min`).
    pub(crate) input_max: i64,
    /// One entry per round, in order (1 to [`MAX_ROUNDS`]).
    pub(crate) rounds: Vec<RoundInfo>,
}

impl SessionAccept {
    /// The session's identifier (PROTO-10).
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Number of input values the model takes.
    pub fn input_len(&self) -> u32 {
        self.input_len
    }

    /// The declared input range, inclusive at both ends.
    pub fn input_range(&self) -> (i64, i64) {
        (self.input_min, self.input_max)
    }

    /// One entry per round, in order.
    pub fn rounds(&self) -> &[RoundInfo] {
        &self.rounds
    }
}

/// Client → server: the activations of round `round`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The session this upload belongs to (PROTO-10).
    pub(crate) session: SessionId,
    /// The round this upload is for (0-based); must be the session's
    /// current round.
    pub(crate) round: u32,
    /// The round's input values, encrypted under the client's secret key,
    /// N per ciphertext; seeded, so each carries its body and the seed of its
    /// mask.
    pub(crate) ciphertexts: Vec<SeededCiphertext>,
}

impl Upload {
    /// The session this upload belongs to (PROTO-10).
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The round this upload is for (0-based).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The encrypted activations, in the stage's input layout.
    pub fn ciphertexts(&self) -> &[SeededCiphertext] {
        &self.ciphertexts
    }
}

/// Server → client: the (shuffled, sanitised) results of round `round`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The session this response belongs to (PROTO-10).
    pub(crate) session: SessionId,
    /// The round this response answers (0-based).
    pub(crate) round: u32,
    /// The round's outputs, packed, permuted by the round's σ (except in the
    /// last round), re-randomised and flooded.
    pub(crate) ciphertexts: Vec<Ciphertext>,
}

impl Response {
    /// The session this response belongs to (PROTO-10).
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The round this response answers (0-based).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The shuffled, packed and sanitised results.
    pub fn ciphertexts(&self) -> &[Ciphertext] {
        &self.ciphertexts
    }
}

fn envelope(ctx: &Context, kind: MessageKind, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&ctx.params().fingerprint().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn put_u32(out: &mut Vec<u8>, x: usize) {
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

fn put_object(out: &mut Vec<u8>, obj: &[u8]) {
    put_u32(out, obj.len());
    out.extend_from_slice(obj);
}

fn peer(kind: impl Into<ErrorKind>) -> ProtocolError {
    ProtocolError::peer(kind)
}

/// Checks the envelope; returns the body.
fn open<'a>(ctx: &Context, bytes: &'a [u8], kind: MessageKind) -> Result<&'a [u8], ProtocolError> {
    if bytes.len() < 20 {
        return Err(peer(WireError::Truncated {
            needed: 20,
            got: bytes.len(),
        }));
    }
    if bytes[0..4] != MAGIC {
        return Err(peer(WireError::BadMagic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(peer(WireError::UnsupportedVersion(version)));
    }
    if bytes[6] != kind as u8 {
        return Err(peer(ErrorKind::UnexpectedMessage {
            expected: kind.name(),
            got: bytes[6],
        }));
    }
    if bytes[7] != 0 {
        return Err(peer(WireError::Reserved(bytes[7])));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[8..16]);
    let got = u64::from_le_bytes(fp);
    let expected = ctx.params().fingerprint();
    if got != expected {
        return Err(peer(WireError::ParameterMismatch { expected, got }));
    }
    let len = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) as usize;
    if len > MAX_BODY {
        return Err(peer(ErrorKind::TooLarge {
            got: len,
            limit: MAX_BODY,
        }));
    }
    let body = &bytes[20..];
    if body.len() < len {
        return Err(peer(WireError::Truncated {
            needed: 20 + len,
            got: bytes.len(),
        }));
    }
    if body.len() > len {
        return Err(peer(WireError::TrailingBytes(body.len() - len)));
    }
    Ok(body)
}

/// A cursor over an untrusted body.
struct Body<'a> {
    buf: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < len {
            return Err(peer(ErrorKind::Malformed("body ends early")));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(i64::from_le_bytes(w))
    }
    fn session(&mut self) -> Result<SessionId, ProtocolError> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.take(16)?);
        Ok(id)
    }
    fn object(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    /// A count that may not exceed `max`.
    fn count(&mut self, max: usize) -> Result<usize, ProtocolError> {
        let c = self.u32()? as usize;
        if c > max {
            return Err(peer(ErrorKind::Malformed("count out of range")));
        }
        Ok(c)
    }
    fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(peer(WireError::TrailingBytes(self.buf.len())))
        }
    }
}

/// Most ciphertexts one upload or response may carry (64 MiB of them).
fn max_ciphertexts(ctx: &Context) -> usize {
    MAX_BODY / (16 * ctx.n())
}

impl SessionRequest {
    /// The message in its envelope, bound to `ctx`'s parameter set by its
    /// fingerprint.
    pub fn encode(&self, ctx: &Context) -> Vec<u8> {
        let mut body = Vec::new();
        put_u32(&mut body, self.batch as usize);
        put_u32(&mut body, self.galois.len());
        for k in &self.galois {
            put_object(&mut body, &wire::encode_galois_key(ctx, k));
        }
        put_object(&mut body, &wire::encode_public_key(ctx, &self.public));
        envelope(ctx, MessageKind::SessionRequest, body)
    }

    /// Decodes a session request from untrusted bytes (PROTO-4): the envelope
    /// first (magic, version, kind, fingerprint, length), then the body and
    /// every embedded object with the validating `wire` decoders; the batch
    /// must be 1 to [`MAX_BATCH`] and the key count `log2 N`. Every error is
    /// the peer's fault.
    pub fn decode(ctx: &Context, bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut b = Body {
            buf: open(ctx, bytes, MessageKind::SessionRequest)?,
        };
        let batch = b.u32()?;
        if batch == 0 || batch as usize > MAX_BATCH {
            return Err(peer(ErrorKind::Malformed("batch out of range")));
        }
        let expected = packing_galois_elements(ctx.n()).count();
        let count = b.count(expected)?;
        if count != expected {
            return Err(peer(ErrorKind::BadKeySet));
        }
        let galois = (1..=count as u32)
            .map(|level| wire::decode_galois_key(ctx, b.object()?, level).map_err(peer))
            .collect::<Result<Vec<_>, _>>()?;
        let public = wire::decode_public_key(ctx, b.object()?).map_err(peer)?;
        b.finish()?;
        Ok(Self {
            batch,
            galois,
            public,
        })
    }
}

impl SessionAccept {
    /// The message in its envelope, bound to `ctx`'s parameter set by its
    /// fingerprint.
    pub fn encode(&self, ctx: &Context) -> Vec<u8> {
        let mut body = self.session.to_vec();
        put_u32(&mut body, self.rounds.len());
        put_u32(&mut body, self.input_len as usize);
        body.extend_from_slice(&self.input_min.to_le_bytes());
        body.extend_from_slice(&self.input_max.to_le_bytes());
        for r in &self.rounds {
            put_u32(&mut body, r.outputs as usize);
            put_u32(&mut body, r.ops.len());
            for op in &r.ops {
                match *op {
                    ClientOp::Requantize {
                        multiplier,
                        shift,
                        min,
                        max,
                    } => {
                        body.push(1);
                        body.extend_from_slice(&multiplier.to_le_bytes());
                        put_u32(&mut body, shift as usize);
                        body.extend_from_slice(&min.to_le_bytes());
                        body.extend_from_slice(&max.to_le_bytes());
                    }
                    ClientOp::Relu => body.push(2),
                }
            }
        }
        envelope(ctx, MessageKind::SessionAccept, body)
    }

    /// Decodes a session accept from untrusted bytes (PROTO-4): the envelope
    /// first (magic, version, kind, fingerprint, length), then the body and
    /// every embedded object with the validating `wire` decoders; the result is
    /// [`validate`](Self::validate)d. Every error is the peer's fault.
    pub fn decode(ctx: &Context, bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut b = Body {
            buf: open(ctx, bytes, MessageKind::SessionAccept)?,
        };
        let session = b.session()?;
        let rounds = b.count(MAX_ROUNDS)?;
        let input_len = b.u32()?;
        let (input_min, input_max) = (b.i64()?, b.i64()?);
        let mut infos = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let outputs = b.u32()?;
            let n_ops = b.count(MAX_OPS)?;
            let mut ops = Vec::with_capacity(n_ops);
            for _ in 0..n_ops {
                let op = match b.take(1)?[0] {
                    1 => ClientOp::Requantize {
                        multiplier: b.i64()?,
                        shift: b.u32()?,
                        min: b.i64()?,
                        max: b.i64()?,
                    },
                    2 => ClientOp::Relu,
                    _ => return Err(peer(ErrorKind::Malformed("unknown client op"))),
                };
                ops.push(op);
            }
            infos.push(RoundInfo { outputs, ops });
        }
        b.finish()?;
        let accept = Self {
            session,
            input_len,
            input_min,
            input_max,
            rounds: infos,
        };
        accept.validate(ctx)?;
        Ok(accept)
    }

    /// The checks a `SessionAccept` must pass before a client acts on it,
    /// whether it was decoded or built inside the crate (its fields are
    /// private, PROTO-4): at least one and
    /// at most `MAX_ROUNDS` rounds, input and output lengths that fit the
    /// parameter set's message limit, non-empty ranges, at most `MAX_OPS`
    /// client steps per round, and requantisation parameters the client can
    /// apply (multiplier > 0, shift ≤ 62). A failure is the peer's fault.
    pub fn validate(&self, ctx: &Context) -> Result<(), ProtocolError> {
        let limit = max_ciphertexts(ctx) * ctx.n();
        if self.rounds.is_empty() {
            return Err(peer(ErrorKind::Malformed("a model has at least one round")));
        }
        if self.rounds.len() > MAX_ROUNDS {
            return Err(peer(ErrorKind::Malformed("too many rounds")));
        }
        if self.input_len == 0 || self.input_len as usize > limit {
            return Err(peer(ErrorKind::Malformed("input length out of range")));
        }
        if self.input_min > self.input_max {
            return Err(peer(ErrorKind::Malformed("input range is empty")));
        }
        for r in &self.rounds {
            if r.outputs == 0 || r.outputs as usize > limit {
                return Err(peer(ErrorKind::Malformed("output length out of range")));
            }
            if r.ops.len() > MAX_OPS {
                return Err(peer(ErrorKind::Malformed("too many client ops")));
            }
            for op in &r.ops {
                if let ClientOp::Requantize {
                    multiplier,
                    shift,
                    min,
                    max,
                } = *op
                {
                    if multiplier <= 0 || shift > 62 || min > max {
                        return Err(peer(ErrorKind::Malformed(
                            "requantize parameters out of range",
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The body both round messages share: session, round and their
/// ciphertexts as counted objects, in the envelope of `kind`.
fn encode_round<T>(
    ctx: &Context,
    kind: MessageKind,
    (session, round): (&SessionId, u32),
    ciphertexts: &[T],
    encode: impl Fn(&Context, &T) -> Vec<u8>,
) -> Vec<u8> {
    let mut body = session.to_vec();
    put_u32(&mut body, round as usize);
    put_u32(&mut body, ciphertexts.len());
    for c in ciphertexts {
        put_object(&mut body, &encode(ctx, c));
    }
    envelope(ctx, kind, body)
}

/// [`encode_round`]'s inverse on untrusted bytes, for both messages'
/// `decode`, with the validating `wire` decoder `decode` for each object.
fn decode_round<T>(
    ctx: &Context,
    bytes: &[u8],
    kind: MessageKind,
    decode: impl Fn(&Context, &[u8]) -> Result<T, WireError>,
) -> Result<(SessionId, u32, Vec<T>), ProtocolError> {
    let mut b = Body {
        buf: open(ctx, bytes, kind)?,
    };
    let session = b.session()?;
    let round = b.u32()?;
    let count = b.count(max_ciphertexts(ctx))?;
    let ciphertexts = (0..count)
        .map(|_| decode(ctx, b.object()?).map_err(peer))
        .collect::<Result<Vec<_>, _>>()?;
    b.finish()?;
    Ok((session, round, ciphertexts))
}

impl Upload {
    /// The message in its envelope, bound to `ctx`'s parameter set by its
    /// fingerprint.
    pub fn encode(&self, ctx: &Context) -> Vec<u8> {
        let id = (&self.session, self.round);
        encode_round(
            ctx,
            MessageKind::Upload,
            id,
            &self.ciphertexts,
            wire::encode_seeded_ciphertext,
        )
    }

    /// Decodes an upload from untrusted bytes (PROTO-4): the envelope first
    /// (magic, version, kind, fingerprint, length), then the body and every
    /// embedded object with the validating `wire` decoders; the count is
    /// bounded by what fits in [`MAX_BODY`]. Every error is the peer's fault.
    pub fn decode(ctx: &Context, bytes: &[u8]) -> Result<Self, ProtocolError> {
        let (session, round, ciphertexts) = decode_round(
            ctx,
            bytes,
            MessageKind::Upload,
            wire::decode_seeded_ciphertext,
        )?;
        Ok(Self {
            session,
            round,
            ciphertexts,
        })
    }
}

impl Response {
    /// The message in its envelope, bound to `ctx`'s parameter set by its
    /// fingerprint.
    pub fn encode(&self, ctx: &Context) -> Vec<u8> {
        let id = (&self.session, self.round);
        encode_round(
            ctx,
            MessageKind::Response,
            id,
            &self.ciphertexts,
            wire::encode_ciphertext,
        )
    }

    /// Decodes a response from untrusted bytes (PROTO-4): the envelope first
    /// (magic, version, kind, fingerprint, length), then the body and every
    /// embedded object with the validating `wire` decoders; the count is
    /// bounded by what fits in [`MAX_BODY`]. Every error is the peer's fault.
    pub fn decode(ctx: &Context, bytes: &[u8]) -> Result<Self, ProtocolError> {
        let (session, round, ciphertexts) =
            decode_round(ctx, bytes, MessageKind::Response, wire::decode_ciphertext)?;
        Ok(Self {
            session,
            round,
            ciphertexts,
        })
    }
}
