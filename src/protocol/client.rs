//! The client's typestate (PROTO-2): `Client<AwaitingAccept>` →
//! `Client<Ready>` → `Client<AwaitingResponse>` (once per round) → logits.

use super::client_steps::{self, response_ciphertexts};
use super::error::{ErrorKind, ProtocolError, Rejected};
use super::messages::{Response, SessionAccept, SessionRequest, Upload};
use crate::rlwe::{Context, GaloisKeys, SecretKey, SeededPublicKey};
use crate::rng::{Csprng, OsSeeds, SeedSource};
use std::sync::Arc;

/// The client's transitions, for the committed state graph (PROTO-7):
/// (from, input, to).
pub const TRANSITIONS: &[(&str, &str, &str)] = &[
    ("Start", "start / send SessionRequest", "AwaitingAccept"),
    ("AwaitingAccept", "recv SessionAccept", "Ready"),
    ("Ready", "send_input / send Upload(0)", "AwaitingResponse"),
    (
        "AwaitingResponse",
        "recv Response(r<R-1) / send Upload(r+1)",
        "AwaitingResponse",
    ),
    ("AwaitingResponse", "recv Response(R-1)", "Done"),
];

/// The logits of a session of `batch` images, split image by image
/// (PROTO-11: the logits come back one image after another).
pub fn image_logits(logits: &[i64], batch: usize) -> impl Iterator<Item = &[i64]> {
    logits
        .chunks((logits.len() / batch.max(1)).max(1))
        .take(batch)
}

/// A client session in state `S`.
pub struct Client<S> {
    ctx: Arc<Context>,
    sk: SecretKey,
    rng: Box<Csprng>,
    state: S,
}

impl<S> std::fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Client<{}>",
            std::any::type_name::<S>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        )
    }
}

/// Waiting for the server to accept the session.
#[derive(Debug)]
pub struct AwaitingAccept {
    /// The images the request asked for (PROTO-11).
    batch: u32,
}

/// Session accepted; the model's metadata is known.
#[derive(Debug)]
pub struct Ready {
    accept: SessionAccept,
    batch: u32,
}

/// An upload for round `round` is out.
#[derive(Debug)]
pub struct AwaitingResponse {
    accept: SessionAccept,
    round: u32,
}

/// What a response leads to.
#[derive(Debug)]
pub enum ClientStep {
    /// The next round's upload is ready to send.
    Continue(Client<AwaitingResponse>, Upload),
    /// The inference is complete: the logits, in true order; for a
    /// session of k images, the k images' logits one after another.
    Done(Vec<i64>),
}

impl Client<AwaitingAccept> {
    /// Generates the session keys and the request that carries them, with
    /// randomness from the operating system.
    pub fn start(ctx: Arc<Context>) -> (Self, SessionRequest) {
        Self::start_with(ctx, &OsSeeds)
    }

    /// [`Client::start`] with the session's secret generator (keys, noise,
    /// re-encryptions) seeded from `seeds` (KEY-3: injected randomness).
    pub fn start_with(ctx: Arc<Context>, seeds: &dyn SeedSource) -> (Self, SessionRequest) {
        Self::open(ctx, 1, seeds)
    }

    /// [`Client::start`] for a session of `batch` images (PROTO-11), 1 to
    /// [`MAX_BATCH`](super::MAX_BATCH): one session, one set of keys and
    /// the rounds of one inference for all of them, charged `batch`
    /// queries. The server refuses a batch it does not serve.
    pub fn start_batch(
        ctx: Arc<Context>,
        batch: u32,
    ) -> Result<(Self, SessionRequest), ProtocolError> {
        Self::start_batch_with(ctx, batch, &OsSeeds)
    }

    /// [`Client::start_batch`] with injected randomness (KEY-3).
    pub fn start_batch_with(
        ctx: Arc<Context>,
        batch: u32,
        seeds: &dyn SeedSource,
    ) -> Result<(Self, SessionRequest), ProtocolError> {
        if batch == 0 || batch as usize > super::MAX_BATCH {
            return Err(ProtocolError::local(ErrorKind::Malformed(
                "a session carries 1 to MAX_BATCH images",
            )));
        }
        Ok(Self::open(ctx, batch, seeds))
    }

    /// The keys and the request of a session of `batch` images (checked).
    fn open(ctx: Arc<Context>, batch: u32, seeds: &dyn SeedSource) -> (Self, SessionRequest) {
        let mut rng = Box::new(Csprng::from_source(seeds));
        let sk = SecretKey::generate(&ctx, &mut rng);
        let galois = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
        let public = SeededPublicKey::generate(&ctx, &sk, &mut rng);
        (
            Self {
                ctx,
                sk,
                rng,
                state: AwaitingAccept { batch },
            },
            SessionRequest {
                batch,
                galois,
                public,
            },
        )
    }

    /// Takes the model metadata. It is validated here too
    /// (`SessionAccept::validate`), not only when decoded, so an accept
    /// built inside the crate cannot reach a later round with nothing to
    /// index either (outside it the fields are private and the decoder is
    /// the only way in); a refusal returns this state unchanged.
    /// For a session of k images the input and the logits must split into
    /// k equal parts (PROTO-11).
    pub fn receive_accept(self, accept: SessionAccept) -> Result<Client<Ready>, Rejected<Self>> {
        if let Err(error) = accept.validate(&self.ctx) {
            return Err(Rejected { state: self, error });
        }
        let batch = self.state.batch;
        let logits = accept.rounds.last().map_or(0, |r| r.outputs);
        if !accept.input_len.is_multiple_of(batch) || !logits.is_multiple_of(batch) {
            return Err(Rejected {
                state: self,
                error: ProtocolError::peer(ErrorKind::Malformed(
                    "the model's input or logits do not split into the session's images",
                )),
            });
        }
        Ok(Client {
            ctx: self.ctx,
            sk: self.sk,
            rng: self.rng,
            state: Ready { accept, batch },
        })
    }
}

impl Client<Ready> {
    /// The number of input values the model takes per image.
    pub fn input_len(&self) -> usize {
        (self.state.accept.input_len / self.state.batch) as usize
    }

    /// The number of images the session carries (PROTO-11).
    pub fn batch(&self) -> usize {
        self.state.batch as usize
    }

    /// Encrypts the input and starts round 0: `batch() · input_len()`
    /// values, the images' inputs one after another.
    pub fn send_input(
        mut self,
        input: &[i64],
    ) -> Result<(Client<AwaitingResponse>, Upload), Rejected<Self>> {
        let expected = self.state.accept.input_len as usize;
        let half = self.ctx.plaintext_half_range();
        if input.len() != expected {
            return Err(Rejected {
                error: ProtocolError::local(ErrorKind::InputLength {
                    expected,
                    got: input.len(),
                }),
                state: self,
            });
        }
        let (min, max) = (self.state.accept.input_min, self.state.accept.input_max);
        if input
            .iter()
            .any(|v| !(min..=max).contains(v) || v.abs() >= half)
        {
            // ENG-5: the server's accumulator bounds assume the declared range.
            return Err(Rejected {
                error: ProtocolError::local(ErrorKind::Malformed(
                    "input value outside the model's declared input range",
                )),
                state: self,
            });
        }
        let ciphertexts = client_steps::client_encrypt(&self.ctx, &self.sk, input, &mut self.rng);
        let accept = self.state.accept;
        let session = accept.session;
        Ok((
            Client {
                ctx: self.ctx,
                sk: self.sk,
                rng: self.rng,
                state: AwaitingResponse { accept, round: 0 },
            },
            Upload {
                session,
                round: 0,
                ciphertexts,
            },
        ))
    }
}

impl Client<AwaitingResponse> {
    /// The round whose response the session expects next (0-based).
    pub fn round(&self) -> u32 {
        self.state.round
    }

    /// Decrypts a response, applies this round's client steps, and either
    /// uploads the next round or returns the logits.
    pub fn receive_response(mut self, response: Response) -> Result<ClientStep, Rejected<Self>> {
        let round = self.state.round;
        let info = &self.state.accept.rounds[round as usize];
        let expected_cts = response_ciphertexts(self.ctx.n(), info.outputs as usize);
        // MC-2: responses are taken in round order, MC-5: of this session
        // only; MC-4: the logits come only from the last round's.
        let error = if response.session != self.state.accept.session {
            Some(ErrorKind::WrongSession)
        } else if response.round != round {
            Some(ErrorKind::WrongRound {
                expected: round,
                got: response.round,
            })
        } else if response.ciphertexts.len() != expected_cts {
            Some(ErrorKind::WrongCount {
                expected: expected_cts,
                got: response.ciphertexts.len(),
            })
        } else {
            None
        };
        if let Some(kind) = error {
            return Err(Rejected {
                state: self,
                error: ProtocolError::peer(kind),
            });
        }
        let mut values = client_steps::client_values(
            &self.ctx,
            &self.sk,
            &response.ciphertexts,
            info.outputs as usize,
        );
        client_steps::apply_client_ops(&info.ops, &mut values);
        if round as usize + 1 == self.state.accept.rounds.len() {
            return Ok(ClientStep::Done(values));
        }
        let ciphertexts = client_steps::client_encrypt(&self.ctx, &self.sk, &values, &mut self.rng);
        self.state.round += 1;
        let next_round = self.state.round;
        let session = self.state.accept.session;
        Ok(ClientStep::Continue(
            self,
            Upload {
                session,
                round: next_round,
                ciphertexts,
            },
        ))
    }
}
