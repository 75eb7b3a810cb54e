//! Frames (NET-1) and control messages (NET-2): a 4-byte big-endian length
//! prefix, then a payload that is either a protocol message (`SFHP`
//! envelope) or a control message (`SFHN` header).
//!
//! [`read_frame`] checks the declared length against the caller's limit
//! before it reads or allocates any payload byte, and grows the buffer only
//! as bytes arrive. [`Control::decode`] checks every length and range and
//! never panics. Their grammar, with the error each broken rule raises, is
//! in `spec/wire-grammar.toml` (WIRE-6).

use super::error::{NetError, NetErrorKind};
use crate::protocol::{Fault, ENVELOPE_LEN, MAGIC as PROTOCOL_MAGIC, MAX_BODY};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame after authentication: the protocol's largest message
/// body plus its envelope header (NET-1).
pub const MAX_FRAME: usize = MAX_BODY + ENVELOPE_LEN;
/// The largest frame the server reads before the client has authenticated,
/// and the largest control message (NET-1).
pub const MAX_CONTROL_FRAME: usize = 4096;
/// The first four bytes of a control message (NET-2).
pub const CONTROL_MAGIC: [u8; 4] = *b"SFHN";
/// The transport's version, in every control message (NET-2).
pub const TRANSPORT_VERSION: u16 = 1;
/// Bytes of a control message's header: magic, version, kind, reserved.
const CONTROL_HEADER: usize = 8;
/// Longest token an Auth message may carry.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Longest parameter-set name or client id in a control message.
pub const MAX_NAME_LEN: usize = 64;
/// Longest detail text of a Refusal.
pub const MAX_DETAIL_LEN: usize = 512;

/// What is wrong with a frame or a control message; the sender's fault.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix declares more than the receiver accepts (NET-1).
    #[error("frame of {got} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The declared length.
        got: u64,
        /// The receiver's limit.
        limit: usize,
    },
    /// A frame of length 0.
    #[error("empty frame")]
    Empty,
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame: {got} of {needed} bytes")]
    Truncated {
        /// Bytes the frame has (prefix included).
        needed: u64,
        /// Bytes that came.
        got: u64,
    },
    /// The payload is neither a protocol message nor a control message.
    #[error("the payload is neither a protocol message nor a control message")]
    UnknownMagic,
    /// A control message of another transport version.
    #[error("unsupported transport version {0}")]
    UnsupportedVersion(u16),
    /// A control message kind this version does not know.
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
    /// A control message whose body breaks its layout.
    #[error("malformed control message: {0}")]
    Malformed(&'static str),
}

/// The read and idle timeouts of one side (NET-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long the next frame may take to start.
    pub idle: Duration,
    /// How long a frame may take once its first byte has arrived, and how
    /// long any write may take.
    pub read: Duration,
}

/// Reads one frame of at most `limit` payload bytes (NET-1). `Ok(None)` is
/// an end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
    timeouts: Timeouts,
) -> Result<Option<Vec<u8>>, NetError> {
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(timeouts.idle, reader.read(&mut first)).await {
        Err(_) => return Err(NetError::timeout("waiting for the next frame")),
        Ok(Ok(n)) => n,
        // A TLS peer that closes without close_notify, between frames, is
        // still a close: every message is length-delimited.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
        Ok(Err(e)) => return Err(NetError::io("reading a frame", e)),
    };
    if n == 0 {
        return Ok(None);
    }
    let rest = async {
        let mut header = [first[0], 0, 0, 0];
        read_exact_or_truncated(reader, &mut header[1..], 4, 1).await?;
        let len = u32::from_be_bytes(header);
        check_len(len, limit).map_err(NetError::peer_frame)?;
        let len = len as usize;
        // Grow with what arrives, not with what was declared.
        let mut payload = Vec::with_capacity(len.min(64 << 10));
        let got = (&mut *reader)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    NetError::peer_frame(FrameError::Truncated {
                        needed: 4 + len as u64,
                        got: 4,
                    })
                } else {
                    NetError::io("reading a frame", e)
                }
            })?;
        if got < len {
            return Err(NetError::peer_frame(FrameError::Truncated {
                needed: 4 + len as u64,
                got: 4 + got as u64,
            }));
        }
        Ok(payload)
    };
    match tokio::time::timeout(timeouts.read, rest).await {
        Err(_) => Err(NetError::timeout("reading a frame")),
        Ok(r) => r.map(Some),
    }
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    needed: u64,
    already: u64,
) -> Result<(), NetError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = match reader.read(&mut buf[filled..]).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(NetError::io("reading a frame", e)),
        };
        if n == 0 {
            return Err(NetError::peer_frame(FrameError::Truncated {
                needed,
                got: already + filled as u64,
            }));
        }
        filled += n;
    }
    Ok(())
}

/// NET-1: a declared length the receiver accepts.
pub fn check_len(len: u32, limit: usize) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if u64::from(len) > limit as u64 {
        return Err(FrameError::TooLarge {
            got: u64::from(len),
            limit,
        });
    }
    Ok(())
}

/// The bytes of one frame: the length prefix, then `payload`.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, NetError> {
    let len = frame_len(payload)?;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn frame_len(payload: &[u8]) -> Result<u32, NetError> {
    if payload.is_empty() || payload.len() > MAX_FRAME {
        return Err(NetError::local(NetErrorKind::Frame(
            if payload.is_empty() {
                FrameError::Empty
            } else {
                FrameError::TooLarge {
                    got: payload.len() as u64,
                    limit: MAX_FRAME,
                }
            },
        )));
    }
    Ok(payload.len() as u32)
}

/// Writes one frame and flushes it, within `timeout` (NET-8); returns the
/// bytes written (prefix included).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    timeout: Duration,
) -> Result<usize, NetError> {
    let len = frame_len(payload)?;
    let write = async {
        writer.write_all(&len.to_be_bytes()).await?;
        writer.write_all(payload).await?;
        writer.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Err(_) => Err(NetError::timeout("writing a frame")),
        Ok(Err(e)) => Err(NetError::io("writing a frame", e)),
        Ok(Ok(())) => Ok(4 + payload.len()),
    }
}

/// What a payload is (NET-2).
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A protocol message envelope, to be decoded with the receiver's
    /// context.
    Message(&'a [u8]),
    /// A control message, decoded.
    Control(Control),
}

impl<'a> Payload<'a> {
    /// Classifies and, for control messages, decodes a payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, FrameError> {
        match payload.get(..4) {
            Some(m) if m == PROTOCOL_MAGIC => Ok(Payload::Message(payload)),
            Some(m) if m == CONTROL_MAGIC => Control::decode(payload).map(Payload::Control),
            _ => Err(FrameError::UnknownMagic),
        }
    }
}

/// Why the server ends a connection (NET-7). Sent as a Refusal control
/// message; the client reports it as [`NetErrorKind::Refused`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The client identity has used its whole query budget.
    BudgetExhausted {
        /// Sessions the identity has used.
        used: u64,
        /// The policy's budget.
        budget: u64,
    },
    /// No valid bearer token was presented.
    Unauthenticated,
    /// Every session slot is taken.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
    /// The client's message was refused; the detail says why.
    ProtocolViolation(String),
    /// The client was too slow to send a frame.
    Timeout,
    /// The server failed on its own account; no detail is given.
    ServerError,
}

impl Refusal {
    /// The wire code (NET-7).
    pub fn code(&self) -> u8 {
        match self {
            Refusal::BudgetExhausted { .. } => 1,
            Refusal::Unauthenticated => 2,
            Refusal::Busy => 3,
            Refusal::ShuttingDown => 4,
            Refusal::ProtocolViolation(_) => 5,
            Refusal::Timeout => 6,
            Refusal::ServerError => 7,
        }
    }

    /// Whose fault the refusal is, seen from the client that receives it:
    /// `Local` for the client's own (budget, credentials, its messages,
    /// its pace), `Peer` for the server's state or failure.
    pub fn fault_for_client(&self) -> Fault {
        match self {
            Refusal::BudgetExhausted { .. }
            | Refusal::Unauthenticated
            | Refusal::ProtocolViolation(_)
            | Refusal::Timeout => Fault::Local,
            Refusal::Busy | Refusal::ShuttingDown | Refusal::ServerError => Fault::Peer,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BudgetExhausted { used, budget } => write!(
                f,
                "query budget exhausted: {used} of {budget} queries used, too few left for this session"
            ),
            Refusal::Unauthenticated => f.write_str("unauthenticated: no valid bearer token"),
            Refusal::Busy => f.write_str("busy: every session slot is taken, try again later"),
            Refusal::ShuttingDown => f.write_str("the server is shutting down"),
            Refusal::ProtocolViolation(detail) => write!(f, "protocol violation: {detail}"),
            Refusal::Timeout => f.write_str("timed out waiting for the client"),
            Refusal::ServerError => f.write_str("internal server error"),
        }
    }
}

/// A control message (NET-2; spec/transport.md § Control messages).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Server → client, first: the parameter set and versions (NET-4).
    Hello {
        /// The protocol message version the server speaks.
        protocol_version: u16,
        /// The parameter set's fingerprint (PARAM-5).
        fingerprint: u64,
        /// The parameter set's name.
        set: String,
    },
    /// Client → server, first: the bearer token (NET-5).
    Auth {
        /// The token's bytes (sent inside TLS only).
        token: Vec<u8>,
    },
    /// Server → client: the token matched (NET-5).
    Welcome {
        /// Sessions the identity has used so far.
        used: u64,
        /// The policy's query budget per identity.
        budget: u64,
        /// Values one input has.
        input_len: u32,
        /// The least value an input may hold.
        input_min: i64,
        /// The greatest value an input may hold.
        input_max: i64,
        /// The identity the token belongs to.
        client_id: String,
    },
    /// Server → client, last: why the connection ends (NET-7).
    Refusal(Refusal),
    /// Server → client, after each SessionAccept and Response: the
    /// server's computation time for it (NET-6).
    ServerTime {
        /// Microseconds.
        micros: u64,
    },
}

impl std::fmt::Display for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Hello { .. } => "Hello",
            Control::Auth { .. } => "Auth",
            Control::Welcome { .. } => "Welcome",
            Control::Refusal(_) => "Refusal",
            Control::ServerTime { .. } => "ServerTime",
        })
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
}

/// A client id or set name acceptable in a control message: 1 to 64
/// characters of `A–Z a–z 0–9 . _ @ -`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.chars().all(is_id_char)
}

impl Control {
    fn kind(&self) -> u8 {
        match self {
            Control::Hello { .. } => 1,
            Control::Auth { .. } => 2,
            Control::Welcome { .. } => 3,
            Control::Refusal(_) => 4,
            Control::ServerTime { .. } => 5,
        }
    }

    /// The payload bytes. Over-long strings are cut to their limits (the
    /// sender's own values are checked where they are made).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&CONTROL_MAGIC);
        out.extend_from_slice(&TRANSPORT_VERSION.to_le_bytes());
        out.push(self.kind());
        out.push(0);
        let short = |s: &str, max: usize| -> Vec<u8> {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.as_bytes()[..end].to_vec()
        };
        match self {
            Control::Hello {
                protocol_version,
                fingerprint,
                set,
            } => {
                out.extend_from_slice(&protocol_version.to_le_bytes());
                out.extend_from_slice(&fingerprint.to_le_bytes());
                let name = short(set, MAX_NAME_LEN);
                out.push(name.len() as u8);
                out.extend_from_slice(&name);
            }
            Control::Auth { token } => {
                let token = &token[..token.len().min(MAX_TOKEN_LEN)];
                out.extend_from_slice(&(token.len() as u16).to_le_bytes());
                out.extend_from_slice(token);
            }
            Control::Welcome {
                used,
                budget,
                input_len,
                input_min,
                input_max,
                client_id,
            } => {
                out.extend_from_slice(&used.to_le_bytes());
                out.extend_from_slice(&budget.to_le_bytes());
                out.extend_from_slice(&input_len.to_le_bytes());
                out.extend_from_slice(&input_min.to_le_bytes());
                out.extend_from_slice(&input_max.to_le_bytes());
                let id = short(client_id, MAX_NAME_LEN);
                out.push(id.len() as u8);
                out.extend_from_slice(&id);
            }
            Control::Refusal(r) => {
                out.push(r.code());
                if let Refusal::BudgetExhausted { used, budget } = r {
                    out.extend_from_slice(&used.to_le_bytes());
                    out.extend_from_slice(&budget.to_le_bytes());
                }
                let detail = match r {
                    Refusal::ProtocolViolation(d) => short(d, MAX_DETAIL_LEN),
                    _ => Vec::new(),
                };
                out.extend_from_slice(&(detail.len() as u16).to_le_bytes());
                out.extend_from_slice(&detail);
            }
            Control::ServerTime { micros } => out.extend_from_slice(&micros.to_le_bytes()),
        }
        out
    }

    /// Decodes a control message payload (NET-2): exact layout, every
    /// length and range checked, no trailing bytes.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        if payload.len() < CONTROL_HEADER {
            return Err(FrameError::Malformed("shorter than the control header"));
        }
        if payload[..4] != CONTROL_MAGIC {
            return Err(FrameError::UnknownMagic);
        }
        let version = u16::from_le_bytes([payload[4], payload[5]]);
        if version != TRANSPORT_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if payload[7] != 0 {
            return Err(FrameError::Malformed("reserved byte is not zero"));
        }
        let mut b = Cursor {
            buf: &payload[CONTROL_HEADER..],
        };
        let control = match payload[6] {
            1 => {
                let protocol_version = b.u16()?;
                let fingerprint = b.u64()?;
                let set = b.name()?;
                Control::Hello {
                    protocol_version,
                    fingerprint,
                    set,
                }
            }
            2 => {
                let len = b.u16()? as usize;
                if len == 0 || len > MAX_TOKEN_LEN {
                    return Err(FrameError::Malformed("token length out of range"));
                }
                Control::Auth {
                    token: b.take(len)?.to_vec(),
                }
            }
            3 => {
                let (used, budget) = (b.u64()?, b.u64()?);
                let input_len = b.u32()?;
                let (input_min, input_max) = (b.i64()?, b.i64()?);
                if input_len == 0 || input_min > input_max {
                    return Err(FrameError::Malformed("input specification out of range"));
                }
                let client_id = b.name()?;
                Control::Welcome {
                    used,
                    budget,
                    input_len,
                    input_min,
                    input_max,
                    client_id,
                }
            }
            4 => {
                let code = b.u8()?;
                let budget = if code == 1 {
                    Some((b.u64()?, b.u64()?))
                } else {
                    None
                };
                let len = b.u16()? as usize;
                if len > MAX_DETAIL_LEN {
                    return Err(FrameError::Malformed("refusal detail too long"));
                }
                let detail = std::str::from_utf8(b.take(len)?)
                    .map_err(|_| FrameError::Malformed("refusal detail is not UTF-8"))?
                    .to_owned();
                if code != 5 && !detail.is_empty() {
                    return Err(FrameError::Malformed("detail on a refusal that has none"));
                }
                Control::Refusal(match (code, budget) {
                    (1, Some((used, budget))) => Refusal::BudgetExhausted { used, budget },
                    (2, _) => Refusal::Unauthenticated,
                    (3, _) => Refusal::Busy,
                    (4, _) => Refusal::ShuttingDown,
                    (5, _) => Refusal::ProtocolViolation(detail),
                    (6, _) => Refusal::Timeout,
                    (7, _) => Refusal::ServerError,
                    _ => return Err(FrameError::Malformed("unknown refusal code")),
                })
            }
            5 => Control::ServerTime { micros: b.u64()? },
            other => return Err(FrameError::UnknownKind(other)),
        };
        if !b.buf.is_empty() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(control)
    }
}

/// A cursor over an untrusted control body.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < len {
            return Err(FrameError::Malformed("body ends early"));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }
    fn array<const K: usize>(&mut self) -> Result<[u8; K], FrameError> {
        let mut out = [0u8; K];
        out.copy_from_slice(self.take(K)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// A u8-length-prefixed name (`valid_name`).
    fn name(&mut self) -> Result<String, FrameError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) if valid_name(s) => Ok(s.to_owned()),
            _ => Err(FrameError::Malformed(
                "name is empty, too long or not [A-Za-z0-9._@-]",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    //! NET-1, NET-2: the frame codec and the control messages.

    use super::*;
    use proptest::prelude::*;

    const LONG: Timeouts = Timeouts {
        idle: Duration::from_secs(5),
        read: Duration::from_secs(5),
    };

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn read_all(bytes: &[u8], limit: usize) -> (Result<Option<Vec<u8>>, NetError>, usize) {
        let mut reader = bytes;
        let r = rt().block_on(read_frame(&mut reader, limit, LONG));
        (r, bytes.len() - reader.len())
    }

    fn frame_error(r: Result<Option<Vec<u8>>, NetError>) -> FrameError {
        match r {
            Err(NetError {
                fault: Fault::Peer,
                kind: NetErrorKind::Frame(e),
            }) => e,
            other => panic!("expected a peer frame error, got {other:?}"),
        }
    }

    // NET-1: an oversized length is refused after the 4 prefix bytes,
    // before any payload byte is read or allocated.
    #[test]
    fn an_oversized_frame_is_refused_before_its_payload_is_read() {
        let mut bytes = (u32::MAX).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[7u8; 100]);
        let (r, consumed) = read_all(&bytes, MAX_FRAME);
        assert_eq!(
            frame_error(r),
            FrameError::TooLarge {
                got: u64::from(u32::MAX),
                limit: MAX_FRAME
            }
        );
        assert_eq!(consumed, 4);
        // The pre-authentication limit.
        let bytes = encode_frame(&[1u8; MAX_CONTROL_FRAME + 1]).unwrap();
        let (r, consumed) = read_all(&bytes, MAX_CONTROL_FRAME);
        assert!(matches!(frame_error(r), FrameError::TooLarge { .. }));
        assert_eq!(consumed, 4);
        let (r, _) = read_all(&[0, 0, 0, 0], MAX_FRAME);
        assert_eq!(frame_error(r), FrameError::Empty);
    }

    // NET-1: end of stream between frames is a close, inside one truncation.
    #[test]
    fn end_of_stream_between_frames_is_a_close() {
        let (r, _) = read_all(&[], MAX_FRAME);
        assert!(matches!(r, Ok(None)));
    }

    #[test]
    fn a_writer_refuses_what_no_reader_accepts() {
        assert!(encode_frame(&[]).is_err());
        let r = rt().block_on(write_frame(&mut Vec::new(), &[], Duration::from_secs(1)));
        assert!(r.is_err());
    }

    // NET-8: a frame that stops arriving times out.
    #[test]
    fn a_stalled_frame_times_out() {
        let r = rt().block_on(async {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
            let t = Timeouts {
                idle: Duration::from_secs(5),
                read: Duration::from_millis(50),
            };
            let r = read_frame(&mut server, MAX_FRAME, t).await;
            drop(client);
            r
        });
        assert!(matches!(
            r,
            Err(NetError {
                kind: NetErrorKind::Timeout(_),
                ..
            })
        ));
    }

    fn controls() -> Vec<Control> {
        vec![
            Control::Hello {
                protocol_version: 1,
                fingerprint: 0x0123_4567_89ab_cdef,
                set: "b16".into(),
            },
            Control::Auth {
                token: b"0123456789abcdef".to_vec(),
            },
            Control::Welcome {
                used: 3,
                budget: 8,
                input_len: 64,
                input_min: 0,
                input_max: 15,
                client_id: "alice".into(),
            },
            Control::Refusal(Refusal::BudgetExhausted { used: 8, budget: 8 }),
            Control::Refusal(Refusal::Unauthenticated),
            Control::Refusal(Refusal::Busy),
            Control::Refusal(Refusal::ShuttingDown),
            Control::Refusal(Refusal::ProtocolViolation("bad round".into())),
            Control::Refusal(Refusal::Timeout),
            Control::Refusal(Refusal::ServerError),
            Control::ServerTime { micros: 1234 },
        ]
    }

    // NET-2, NET-7: every control message round-trips; every refusal code
    // is distinct.
    #[test]
    fn control_messages_round_trip() {
        let mut codes = std::collections::BTreeSet::new();
        for c in controls() {
            let bytes = c.encode();
            assert_eq!(Control::decode(&bytes).as_ref(), Ok(&c), "{c}");
            assert_eq!(Payload::parse(&bytes), Ok(Payload::Control(c.clone())));
            if let Control::Refusal(r) = &c {
                assert!(codes.insert(r.code()));
            }
        }
        assert_eq!(codes.len(), 7);
        assert_eq!(
            Payload::parse(b"SFHP...."),
            Ok(Payload::Message(&b"SFHP...."[..]))
        );
        assert_eq!(
            Payload::parse(b"GET / HTTP/1.1"),
            Err(FrameError::UnknownMagic)
        );
        assert_eq!(Payload::parse(b"SF"), Err(FrameError::UnknownMagic));
    }

    #[test]
    fn control_messages_refuse_bad_headers_and_fields() {
        let mut v = Control::ServerTime { micros: 1 }.encode();
        v[4] = 2;
        assert_eq!(Control::decode(&v), Err(FrameError::UnsupportedVersion(2)));
        let mut v = Control::ServerTime { micros: 1 }.encode();
        v[6] = 99;
        assert_eq!(Control::decode(&v), Err(FrameError::UnknownKind(99)));
        let mut v = Control::ServerTime { micros: 1 }.encode();
        v.push(0);
        assert!(matches!(Control::decode(&v), Err(FrameError::Malformed(_))));
        let bad_name = Control::Hello {
            protocol_version: 1,
            fingerprint: 1,
            set: "b 16".into(),
        };
        assert!(Control::decode(&bad_name.encode()).is_err());
        let empty_token = Control::Auth { token: vec![] };
        assert!(Control::decode(&empty_token.encode()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        // NET-1: any payload round-trips through a frame; any cut of the
        // frame is a close (at 0) or a truncation, never a panic.
        #[test]
        fn frames_round_trip_and_cuts_are_truncations(
            payload in proptest::collection::vec(any::<u8>(), 1..2048),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode_frame(&payload).unwrap();
            prop_assert_eq!(&bytes[..4], &(payload.len() as u32).to_be_bytes());
            let (r, consumed) = read_all(&bytes, MAX_FRAME);
            prop_assert_eq!(r.unwrap(), Some(payload.clone()));
            prop_assert_eq!(consumed, bytes.len());
            // Two frames back to back are read one at a time.
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            let mut reader = &two[..];
            let rt = rt();
            for _ in 0..2 {
                let f = rt.block_on(read_frame(&mut reader, MAX_FRAME, LONG)).unwrap();
                prop_assert_eq!(f, Some(payload.clone()));
            }
            let cut = cut.index(bytes.len());
            let (r, _) = read_all(&bytes[..cut], MAX_FRAME);
            if cut == 0 {
                prop_assert!(matches!(r, Ok(None)));
            } else {
                let truncated = matches!(frame_error(r), FrameError::Truncated { .. });
                prop_assert!(truncated);
            }
            // A limit one below the payload refuses it.
            let (r, _) = read_all(&bytes, payload.len() - 1);
            let too_large = matches!(frame_error(r), FrameError::TooLarge { .. });
            prop_assert!(too_large);
        }

        // NET-2: control decoding never panics on arbitrary bytes, and
        // whatever it accepts re-encodes to the same bytes.
        #[test]
        fn control_decoding_is_total_and_canonical(
            kind in 0u8..8,
            body in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut bytes = CONTROL_MAGIC.to_vec();
            bytes.extend_from_slice(&TRANSPORT_VERSION.to_le_bytes());
            bytes.push(kind);
            bytes.push(0);
            bytes.extend_from_slice(&body);
            if let Ok(c) = Control::decode(&bytes) {
                prop_assert_eq!(c.encode(), bytes);
            }
            let _ = Payload::parse(&body);
        }

        // NET-2: every truncation of a valid control message is refused.
        #[test]
        fn truncated_control_messages_are_refused(which in 0usize..11, cut in any::<prop::sample::Index>()) {
            let bytes = controls()[which].encode();
            let cut = cut.index(bytes.len());
            prop_assert!(Control::decode(&bytes[..cut]).is_err());
        }
    }
}
