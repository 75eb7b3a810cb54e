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
    pub fault: Fault,
    pub kind: ErrorKind,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("message of {got} bytes exceeds the {limit}-byte limit")]
    TooLarge { got: usize, limit: usize },
    #[error("expected a {expected} message, got kind {got}")]
    UnexpectedMessage { expected: &'static str, got: u8 },
    #[error("message is for round {got}, the session is at round {expected}")]
    WrongRound { expected: u32, got: u32 },
    #[error("expected {expected} ciphertexts, got {got}")]
    WrongCount { expected: usize, got: usize },
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("the session's keys are incomplete or out of order")]
    BadKeySet,
    #[error("query budget exhausted: {used} of {budget} inferences used")]
    BudgetExhausted { used: u64, budget: u64 },
    #[error("input has {got} values, the model takes {expected}")]
    InputLength { expected: usize, got: usize },
    #[error("policy: {0}")]
    Policy(String),
    #[error("evaluation failed: {0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Ledger(super::ledger::LedgerError),
}

impl ProtocolError {
    pub fn peer(kind: impl Into<ErrorKind>) -> Self {
        Self {
            fault: Fault::Peer,
            kind: kind.into(),
        }
    }
    pub fn local(kind: impl Into<ErrorKind>) -> Self {
        Self {
            fault: Fault::Local,
            kind: kind.into(),
        }
    }
}

/// A message that was refused: the state it was offered to, unchanged, and
/// why (PROTO-4).
#[derive(Debug)]
pub struct Rejected<S> {
    pub state: S,
    pub error: ProtocolError,
}
