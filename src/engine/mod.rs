//! Encrypted inference over a chain of linear stages, with the client's
//! non-linearities between them.
//!
//! Round r, the server unshuffles the client's upload (σ_(r−1)^(−1), folded
//! into the repack), evaluates stage r, shuffles the outputs with σ_r into
//! dense ciphertexts and sanitises them; the client decrypts, applies its
//! element-wise operation and re-encrypts. The last stage is not shuffled.
//! One place per concern:
//!
//! * `compile`: [`compile`] turns a validated model into a
//!   [`CompiledModel`], or refuses it with a typed [`CompileError`];
//! * `stage`: what it produces ([`CompiledModel`], [`LinearStage`],
//!   [`ClientOp`]) and what a round reads ([`ReceivedUpload`],
//!   [`Release`]), built only by `compile` or a checked constructor;
//! * `round`: the server's half of a round, [`RoundEvaluator`], once per
//!   session;
//! * `run`: the in-process harness [`run`] / [`run_release`], both parties
//!   in one process, every message through the wire encoding: the oracle
//!   and benchmark the typed protocol is built around, not itself a
//!   network protocol;
//! * `error`: [`EngineError`], and whose fault it is
//!   ([`EngineError::fault`]).
//!
//! The client's half of a round lives with the protocol's client, in
//! [`crate::protocol::client_steps`].

mod compile;
mod error;
mod round;
mod run;
mod stage;

pub use compile::{compile, compile_batch};
pub use error::{CompileError, CompileProblem, EngineError, LayerNoise};
pub use round::{RoundEvaluator, RoundOutput, RoundPhases, ServerKeys};
pub use run::{run, run_release, Inference, RoundStats};
pub use stage::{
    ClientOp, CompiledModel, LinearStage, ReceivedUpload, Release, Shortcut, StackedRows,
};
