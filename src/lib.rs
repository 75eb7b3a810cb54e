//! # safhire
//!
//! Hybrid private inference for quantised neural networks with RLWE: the
//! server evaluates linear layers on encrypted activations, shuffles and
//! packs the results; the client decrypts, applies the exact non-linearity,
//! re-encrypts. See `spec/` for the normative protocol and `proofs/` for the
//! correctness and noise derivations.
//!
//! This crate is built in layers:
//! * [`params`]: validated parameter sets (security, noise budget);
//! * [`math`]: modular arithmetic and NTTs (the backend seam);
//! * [`rlwe`]: keys, encryption, plaintext products, key switching;
//! * [`layout`]: Cheetah-style coefficient encodings of Conv2d and mat-vec;
//! * [`extract`] and [`pack`]: value references and PackLWEs packing;
//! * [`par`]: the server's loops on rayon's global pool, and their
//!   work/span profile;
//! * [`shuffle`]: per-round secret permutations;
//! * [`dp`]: discrete Gaussian sampler, zCDP accountant and per-stage
//!   sensitivity; the server adds the noise when a policy sets `dp_sigma`;
//! * [`model`]: quantised model IR, reference evaluator, JSON format;
//! * [`engine`]: a model compiled to encrypted stages, run round by round;
//! * [`audit`]: chosen-input attacks run through the real protocol;
//! * [`select`]: the cheapest shipped parameter set that carries a model;
//! * [`wire`]: versioned binary encoding of keys and ciphertexts;
//! * [`service`]: the small API for integrators: [`ModelServer`] and
//!   [`ModelClient`] over the typed protocol, sans-IO cores
//!   ([`ServerConnection`], [`ClientSession`]) and an in-process transport;
//! * `net` (feature `net`): the protocol over TLS between two processes,
//!   with bearer-token authentication and server limits (spec/transport.md).
//!
//! **What is protected, and what is not.** Encryption hides the client's
//! input from the server (RLWE, ≥128-bit, spec/parameters.md). Shuffling the
//! intermediate values does *not* stop a client that chooses its inputs from
//! recovering a layer (d+1 queries suffice, "Shuffling is Not Enough"); the
//! crate claims no more than `proofs/` shows.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]
#![warn(missing_docs)]

pub mod audit;
pub mod dp;
pub mod engine;
pub mod extract;
pub mod layout;
pub mod linear;
pub mod math;
pub mod model;
#[cfg(feature = "net")]
pub mod net;
pub mod pack;
pub mod par;
pub mod params;
pub mod protocol;
pub mod rlwe;
pub mod rng;
pub mod select;
pub mod service;
pub mod shuffle;
pub mod wire;

pub use protocol::{ClientId, Fault, Policy};
#[cfg(feature = "net")]
pub use service::Remote;
pub use service::{
    ClientEvent, ClientSession, InProcess, ModelClient, ModelServer, ModelServerBuilder,
    ServerConnection, ServiceError, ServiceErrorKind, Transport,
};
