//! Transport errors: what went wrong and whose fault it is, like
//! [`ProtocolError`]. No message carries a token, key material or a value
//! of a session.

use super::frame::{FrameError, Refusal};
use crate::protocol::{ErrorKind, Fault, ProtocolError};
use thiserror::Error;

/// An error of the transport, with the party at fault.
#[derive(Debug, Error)]
#[error("{fault} fault: {kind}")]
pub struct NetError {
    /// Whose fault: `Peer` is the other side (or the network between),
    /// `Local` this side's caller, configuration or state.
    pub fault: Fault,
    /// What went wrong.
    pub kind: NetErrorKind,
}

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetErrorKind {
    /// The server refused and closed the connection (NET-7).
    #[error("refused by the server: {0}")]
    Refused(Refusal),
    /// A protocol message was refused (PROTO-4).
    #[error("{0}")]
    Protocol(ErrorKind),
    /// A frame or control message broke NET-1/NET-2.
    #[error("{0}")]
    Frame(FrameError),
    /// A frame other than the one the state expects.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the state expects.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The handshake failed: versions or parameter set (NET-4).
    #[error("handshake: {0}")]
    Handshake(String),
    /// The other side closed the connection.
    #[error("the connection was closed {0}")]
    Closed(&'static str),
    /// A read, write or handshake took longer than allowed (NET-8).
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The network failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// TLS failed: certificates, handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// This side's configuration is unusable (files, addresses, options).
    #[error("{0}")]
    Config(String),
    /// This side failed on its own account (a computation that did not
    /// finish, a poisoned lock).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl NetError {
    /// The other side's fault.
    pub fn peer(kind: NetErrorKind) -> Self {
        Self {
            fault: Fault::Peer,
            kind,
        }
    }

    /// This side's fault.
    pub fn local(kind: NetErrorKind) -> Self {
        Self {
            fault: Fault::Local,
            kind,
        }
    }

    /// A frame the peer got wrong.
    pub fn peer_frame(e: FrameError) -> Self {
        Self::peer(NetErrorKind::Frame(e))
    }

    /// A timeout: the peer was too slow, or the network between.
    pub fn timeout(what: &'static str) -> Self {
        Self::peer(NetErrorKind::Timeout(what))
    }

    /// A failed read or write on the connection.
    pub fn io(what: &'static str, source: std::io::Error) -> Self {
        Self::peer(NetErrorKind::Io { what, source })
    }

    /// A local configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::local(NetErrorKind::Config(message.into()))
    }

    /// A refusal received from the server, with the fault as the client
    /// sees it (NET-7).
    pub fn refused(r: Refusal) -> Self {
        Self {
            fault: r.fault_for_client(),
            kind: NetErrorKind::Refused(r),
        }
    }

    /// The refusal, if the server refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.kind {
            NetErrorKind::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl From<ProtocolError> for NetError {
    fn from(e: ProtocolError) -> Self {
        Self {
            fault: e.fault,
            kind: NetErrorKind::Protocol(e.kind),
        }
    }
}
