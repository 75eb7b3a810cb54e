//! Protocol errors: what went wrong and whose fault it is.

use crate::engine::EngineError;
use crate::wire::WireError;
use thiserror::Error;

/// Whose fault an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The other party sent something malformed, unexpected or over budget.
    Peer,
    /// This side's caller or configuration is wrong.
    Local,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Peer => "peer",
            Fault::Local => "local",
        })
    }
}

/// A protocol error. Never carries secret material.
#[derive(Debug, Error)]
#[error("{fault} fault: {kind}")]
pub struct ProtocolError {
    /// Whose fault it is: decides whether to blame (and possibly disconnect)
    /// the peer or to fix this side.
    pub fault: Fault,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What went wrong in a [`ProtocolError`] (PROTO-4). Some kinds can be
/// either party's fault (e.g. [`ErrorKind::Malformed`]);
/// [`ProtocolError::fault`] says which.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The envelope (magic, version, reserved byte, parameter-set
    /// fingerprint, length) or an embedded key or ciphertext failed wire
    /// validation (WIRE-1..4): the peer sent a malformed message, or one for
    /// another parameter set.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The envelope declares a body longer than [`MAX_BODY`](super::MAX_BODY)
    /// (64 MiB); refused before the body is read.
    #[error("message of {got} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Declared body length in bytes.
        got: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The envelope's kind is not the one the receiving state expects (or no
    /// known kind): the peer is out of step with the protocol.
    #[error("expected a {expected} message, got kind {got}")]
    UnexpectedMessage {
        /// Name of the message kind expected.
        expected: &'static str,
        /// The kind byte received.
        got: u8,
    },
    /// An upload or response that names another session (PROTO-10): a
    /// message of one session delivered into another, by a confused or
    /// hostile transport or peer. Refused before anything else about it.
    #[error("message belongs to another session")]
    WrongSession,
    /// An upload or response for another round than the session is at: the
    /// peer replayed, skipped or reordered a message.
    #[error("message is for round {got}, the session is at round {expected}")]
    WrongRound {
        /// The round the session is at (0-based).
        expected: u32,
        /// The round the message names.
        got: u32,
    },
    /// An upload or response with another number of ciphertexts than the
    /// round's number of values implies.
    #[error("expected {expected} ciphertexts, got {got}")]
    WrongCount {
        /// Ciphertexts the round requires.
        expected: usize,
        /// Ciphertexts received.
        got: usize,
    },
    /// A message body that ends early or holds a value out of its range
    /// (a count, the rounds, lengths, client ops; PROTO-4); also, as a local
    /// fault, an input outside the model's declared range (ENG-5).
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The session request carries fewer packing Galois keys than log2 N
    /// (caught at decoding), or keys that do not expand (caught at accept,
    /// after the session was charged, PROTO-8): the client's fault. A key
    /// out of order is refused at decoding as `Wire(WrongGaloisElement)`.
    #[error("the session's keys are incomplete or out of order")]
    BadKeySet,
    /// The client identity has too few queries left for the session's
    /// images (PROTO-5, PROTO-11): the session is refused before any work,
    /// and nothing is charged. A smaller batch may still fit.
    #[error(
        "query budget exhausted: {used} of {budget} queries used, too few left for this session"
    )]
    BudgetExhausted {
        /// Queries the identity has been charged (one per image).
        used: u64,
        /// The policy's budget per identity.
        budget: u64,
    },
    /// The session request asks for a number of images per session the
    /// endpoint does not serve (PROTO-11): the client's fault, refused
    /// before the session is charged.
    #[error("the server does not serve sessions of {batch} images")]
    BatchNotServed {
        /// The number of images the request asked for.
        batch: u32,
    },
    /// The caller's input does not have the model's input length: a local
    /// fault, caught before anything is encrypted.
    #[error("input has {got} values, the model takes {expected}")]
    InputLength {
        /// The model's input length (`C·H·W`, times the session's images).
        expected: usize,
        /// Number of values passed.
        got: usize,
    },
    /// The server's policy is invalid or unsafe for the model (PROTO-6): a
    /// configuration error of this side.
    #[error("policy: {0}")]
    Policy(String),
    /// The engine refused the model, the context or the policy's noise, or
    /// failed to evaluate a round: whose fault is
    /// [`EngineError::fault`]'s call (the server's model, parameters or
    /// driver, except an upload or keys that only the round finds do not
    /// fit).
    #[error("evaluation failed: {0}")]
    Engine(#[from] EngineError),
    /// The query ledger's storage failed, or it was asked to charge zero
    /// queries (PROTO-8): this side's fault; the message never names an
    /// identity.
    #[error("{0}")]
    Ledger(super::ledger::LedgerError),
}

impl ProtocolError {
    /// An error that is the other party's fault ([`Fault::Peer`]).
    pub fn peer(kind: impl Into<ErrorKind>) -> Self {
        Self {
            fault: Fault::Peer,
            kind: kind.into(),
        }
    }
    /// An error that is this side's fault ([`Fault::Local`]).
    pub fn local(kind: impl Into<ErrorKind>) -> Self {
        Self {
            fault: Fault::Local,
            kind: kind.into(),
        }
    }
}

/// An engine error, with the fault [`EngineError::fault`] assigns it.
impl From<EngineError> for ProtocolError {
    fn from(e: EngineError) -> Self {
        Self {
            fault: e.fault(),
            kind: ErrorKind::Engine(e),
        }
    }
}

/// A message that was refused: the state it was offered to, unchanged, and
/// why (PROTO-4).
#[derive(Debug)]
pub struct Rejected<S> {
    /// The state the message was offered to, unchanged: the caller may
    /// continue with a valid message or drop the session.
    pub state: S,
    /// Why the message was refused.
    pub error: ProtocolError,
}
