//! Serving a model over the network (feature `net`, spec/transport.md):
//! the protocol of [`crate::protocol`] between two processes over TLS 1.3.
//!
//! * [`frame`]: length-prefixed frames and the control messages (NET-1,
//!   NET-2); the limit is checked before any payload byte is read;
//! * [`tls`]: rustls configurations from PEM files, the client's connect,
//!   throwaway development certificates (NET-3);
//! * [`auth`]: bearer tokens, stored as SHA-256 digests and compared in
//!   constant time; the identity comes from the server's file (NET-5);
//! * [`Service`]: the server: handshake, authentication, sessions against
//!   one [`crate::protocol::Endpoint`], limits, graceful shutdown
//!   (NET-4..NET-9);
//! * [`Connection`]: the client: checks the server's parameter set,
//!   authenticates, runs inferences with per-round time and traffic.
//!
//! Budgets are charged where they always are, in `Endpoint::accept`
//! (PROTO-8), and only for authenticated clients.

pub mod auth;
mod client;
mod error;
pub mod frame;
mod server;
pub mod tls;

pub use auth::{read_token_file, TokenTable};
pub use client::{ConnectConfig, Connection, Exchange, Inference, ServerInfo};
pub use error::{NetError, NetErrorKind};
pub use frame::{Control, FrameError, Refusal, Timeouts, MAX_CONTROL_FRAME, MAX_FRAME};
pub use server::{ServeConfig, ServeSummary, Service, ShutdownHandle};
