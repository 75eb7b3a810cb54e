//! The server's side (PROTO-2..PROTO-5): an [`Endpoint`] holding the model
//! and the query ledger accepts sessions; each session is a
//! `Server<AwaitingUpload>` until its last response closes it.

use super::error::{ErrorKind, ProtocolError, Rejected};
use super::ledger::{Ledger, LedgerError, MemoryLedger};
use super::messages::{Response, RoundInfo, SessionAccept, SessionId, SessionRequest, Upload};
use super::policy::Policy;
use crate::engine::{self, CompiledModel, ReceivedUpload, RoundEvaluator, RoundOutput, ServerKeys};
use crate::rlwe::{Ciphertext, Context, GaloisKeys, PublicKey};
use crate::rng::{Csprng, SeedSource};
use crate::shuffle::{Permutation, SessionSeed};
use std::sync::Arc;

/// The server's transitions, for the committed state graph (PROTO-7).
pub const TRANSITIONS: &[(&str, &str, &str)] = &[
    (
        "Endpoint",
        "recv SessionRequest / send SessionAccept",
        "AwaitingUpload",
    ),
    (
        "AwaitingUpload",
        "recv Upload(r<R-1) / send Response(r)",
        "AwaitingUpload",
    ),
    (
        "AwaitingUpload",
        "recv Upload(R-1) / send Response(R-1)",
        "Closed",
    ),
];

/// A client identity, supplied by the application: the crate authenticates
/// nothing and compares identities byte for byte, so the application must
/// map each authenticated peer to one canonical `ClientId`
/// (spec/threat-model.md §3). Query budgets are counted per identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(pub String);

/// Accepts sessions for one model under one policy.
pub struct Endpoint {
    ctx: Arc<Context>,
    model: Arc<CompiledModel>,
    /// PROTO-11: the same model compiled for sessions of k ≥ 2 images.
    batches: std::collections::BTreeMap<u32, Arc<CompiledModel>>,
    policy: Policy,
    ledger: Box<dyn Ledger>,
    /// Seeds each session's generator and session seed (KEY-1).
    seeds: Arc<dyn SeedSource>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Endpoint({} stages, policy {:?})",
            self.model.rounds(),
            self.policy.name()
        )
    }
}

/// A session in state `S`.
pub struct Server<S> {
    ctx: Arc<Context>,
    model: Arc<CompiledModel>,
    state: S,
}

impl<S> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Server<{}>",
            std::any::type_name::<S>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        )
    }
}

/// Waiting for upload `round`; holds the session's secrets.
pub struct AwaitingUpload {
    /// PROTO-10: the identifier every upload of the session must carry.
    session: SessionId,
    round: u32,
    /// Boxed, as the seed below.
    galois: Box<GaloisKeys>,
    public: PublicKey,
    /// Boxed: the state stays small enough to move by value cheaply.
    seed: Box<SessionSeed>,
    /// σ_(r−1): how upload r will be arranged.
    previous: Option<Permutation>,
    /// Every upload so far, kept for residual connections.
    history: Vec<ReceivedUpload>,
    unit: crate::shuffle::ShuffleUnit,
    /// DP-8: the policy's noise, added to every released value.
    noise: Option<Box<crate::dp::DiscreteGaussian>>,
    rng: Box<Csprng>,
}

impl std::fmt::Debug for AwaitingUpload {
    // The seed and σ are secrets: print only the round.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AwaitingUpload(round {})", self.round)
    }
}

/// What an upload leads to.
#[derive(Debug)]
pub enum ServerStep {
    /// A round before the last: send the response and keep the session for
    /// the next upload.
    Continue(Server<AwaitingUpload>, Response),
    /// The last response; the session is over.
    Closed(Response),
}

/// A stored session, for servers that keep sessions between messages: the
/// closed set of states a session can be in (PROTO-2).
#[derive(Debug)]
pub enum StoredSession {
    /// Accepted and waiting for its next upload.
    AwaitingUpload(Server<AwaitingUpload>),
    /// The last response was sent; any further message is refused.
    Closed,
}

impl Endpoint {
    /// Refuses a policy whose budget is at or above the published attack's
    /// threshold for this model, unless the policy says otherwise (PROTO-6).
    pub fn new(
        ctx: Arc<Context>,
        model: Arc<CompiledModel>,
        policy: Policy,
    ) -> Result<Self, ProtocolError> {
        // ENG-5: the compiled model must belong to this context's set.
        model.check_context(&ctx)?;
        policy.check_model(&model)?;
        policy.check_parameters(ctx.params())?;
        model.check_noise(&ctx, policy.noise())?;
        Ok(Self {
            ctx,
            model,
            batches: Default::default(),
            policy,
            ledger: Box::new(MemoryLedger::default()),
            seeds: crate::rng::os_seeds(),
        })
    }

    /// The same endpoint with each session's secret randomness (its
    /// generator for re-randomisation, flooding and DP noise, its session
    /// seed and identifier) drawn from `seeds` instead of the operating
    /// system (KEY-3: injected randomness).
    pub fn with_seed_source(mut self, seeds: Arc<dyn SeedSource>) -> Self {
        self.seeds = seeds;
        self
    }

    /// The same endpoint with its sessions counted in `ledger` instead of
    /// in memory (PROTO-8), e.g. a `SqliteLedger` (feature `sqlite`)
    /// shared by every process on the host, or a `PostgresLedger` (feature
    /// `postgres`, PROTO-9) shared by servers on several hosts.
    pub fn with_ledger(mut self, ledger: Box<dyn Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// The same endpoint also serving sessions of `batched.batch()` images
    /// (PROTO-11), `batched` being its model compiled by
    /// [`engine::compile_batch`]: such a session is charged that many
    /// queries in one step, so the policy's budget counts images whatever
    /// the batch. Refused (this side's fault) when `batched` is not a batch
    /// of 2 to [`MAX_BATCH`](super::MAX_BATCH) images of this endpoint's
    /// model on its parameter set, when its noise does not fit under the
    /// policy, or when one session of it would need more queries than the
    /// budget holds.
    pub fn with_batch(mut self, batched: Arc<CompiledModel>) -> Result<Self, ProtocolError> {
        let refuse = |why: String| ProtocolError::local(ErrorKind::Policy(why));
        let k = batched.batch();
        if !(2..=super::MAX_BATCH).contains(&k) {
            return Err(refuse(format!(
                "a batch of {k} images; an endpoint serves batches of 2 to {}",
                super::MAX_BATCH
            )));
        }
        if !self.model.batches_the_same_model(&batched) {
            return Err(refuse(
                "the batched model is not a batch of the endpoint's model".into(),
            ));
        }
        batched.check_context(&self.ctx)?;
        batched.check_noise(&self.ctx, self.policy.noise())?;
        let budget = self.policy.query_budget();
        if k as u64 > budget {
            return Err(refuse(format!(
                "a session of {k} images costs {k} queries, more than the budget of {budget}"
            )));
        }
        self.batches.insert(k as u32, batched);
        Ok(self)
    }

    /// The numbers of images a session may carry, 1 first (PROTO-11).
    pub fn batches(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(1).chain(self.batches.keys().map(|&k| k as usize))
    }

    /// The context (parameter set) sessions run under.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The compiled model this endpoint serves.
    pub fn model(&self) -> &CompiledModel {
        &self.model
    }

    /// The policy sessions are served under (its query budget, its
    /// shuffle granularity).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Queries (images) `client` has been charged so far.
    pub fn queries_used(&self, client: &ClientId) -> Result<u64, ProtocolError> {
        self.ledger
            .used(client)
            .map_err(|e| ProtocolError::local(ErrorKind::Ledger(e)))
    }

    /// Accepts a session: charges its images to `client`'s budget before
    /// any work (PROTO-5, PROTO-8: a session whose keys then fail to expand
    /// still counts; PROTO-11: a session of k images is k queries), expands
    /// the keys, draws the session seed (PROTO-3). A batch the endpoint
    /// does not serve is refused before the charge.
    pub fn accept(
        &mut self,
        client: &ClientId,
        request: SessionRequest,
    ) -> Result<(Server<AwaitingUpload>, SessionAccept), ProtocolError> {
        let model = match request.batch {
            1 => self.model.clone(),
            batch => self
                .batches
                .get(&batch)
                .cloned()
                .ok_or_else(|| ProtocolError::peer(ErrorKind::BatchNotServed { batch }))?,
        };
        let budget = self.policy.query_budget();
        // MC-1: one atomic charge before any work, whichever endpoint.
        let queries = u64::from(request.batch);
        self.ledger
            .charge_queries(client, queries, budget)
            .map_err(|e| match e {
                LedgerError::Exhausted { used, budget } => {
                    ProtocolError::peer(ErrorKind::BudgetExhausted { used, budget })
                }
                other => ProtocolError::local(ErrorKind::Ledger(other)),
            })?;
        let galois = GaloisKeys::from_seeded(&self.ctx, &request.galois)
            .map(Box::new)
            .ok_or_else(|| ProtocolError::peer(ErrorKind::BadKeySet))?;
        let public = request.public.expand(&self.ctx);
        let mut rng = Box::new(Csprng::from_source(&*self.seeds));
        // PROTO-10: a fresh identifier binds the session's messages. MC-7:
        // it is drawn from the session's generator, never the seed itself.
        let mut id: SessionId = [0; 16];
        rng.fill_bytes(&mut id);
        let accept = SessionAccept {
            session: id,
            input_len: model.input_len() as u32,
            input_min: model.input().min,
            input_max: model.input().max,
            rounds: model
                .stages()
                .iter()
                .zip(model.client_ops())
                .map(|(s, ops)| RoundInfo {
                    outputs: s.output_len() as u32,
                    ops: ops.clone(),
                })
                .collect(),
        };
        let session = Server {
            ctx: self.ctx.clone(),
            model,
            state: AwaitingUpload {
                session: id,
                round: 0,
                galois,
                public,
                seed: Box::new(SessionSeed::from_source(&*self.seeds)),
                previous: None,
                history: Vec::new(),
                unit: self.policy.unit(),
                noise: self.policy.noise().map(|n| Box::new(*n)),
                rng,
            },
        };
        Ok((session, accept))
    }
}

impl Server<AwaitingUpload> {
    /// The round whose upload the session expects next (0-based).
    pub fn round(&self) -> u32 {
        self.state.round
    }

    /// Evaluates round r on a validated upload (PROTO-4).
    pub fn receive_upload(self, upload: Upload) -> Result<ServerStep, Rejected<Self>> {
        self.receive_upload_timed(upload).map(|(step, _)| step)
    }

    /// [`Self::receive_upload`], also returning where the round's time went
    /// ([`engine::RoundPhases`]), for a driver that reports it; the
    /// timings never enter the response.
    pub fn receive_upload_timed(
        mut self,
        upload: Upload,
    ) -> Result<(ServerStep, engine::RoundPhases), Rejected<Self>> {
        let r = self.state.round;
        let n = self.ctx.n();
        let expected = self.model.stages()[r as usize].input_len().div_ceil(n);
        // MC-5 (PROTO-10): only this session's uploads; MC-2: only the
        // round it waits for, so no round is evaluated twice.
        let error = if upload.session != self.state.session {
            Some(ErrorKind::WrongSession)
        } else if upload.round != r {
            Some(ErrorKind::WrongRound {
                expected: r,
                got: upload.round,
            })
        } else if upload.ciphertexts.len() != expected {
            Some(ErrorKind::WrongCount {
                expected,
                got: upload.ciphertexts.len(),
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
        let q = self.ctx.q();
        let inputs: Vec<Ciphertext> = upload.ciphertexts.iter().map(|c| c.expand(q)).collect();
        let s = &mut self.state;
        s.history
            .push(ReceivedUpload::new(inputs, s.previous.clone()));
        let keys = ServerKeys {
            galois: &s.galois,
            public: &s.public,
        };
        let release = engine::Release {
            unit: s.unit,
            noise: s.noise.as_deref(),
        };
        // The evaluator borrows the session's keys and seed, so it is built
        // per upload (a few references and two cheap checks). THREAT-1:
        // every ciphertext a round returns is re-randomised and flooded
        // (PRIV-1) before it goes into the response.
        let result = RoundEvaluator::new(&self.ctx, keys, &self.model, &s.seed, release)
            .and_then(|round| round.evaluate(r as usize, &mut s.history, &mut s.rng));
        let RoundOutput {
            ciphertexts,
            shuffle,
            phases,
        } = match result {
            Ok(x) => x,
            Err(e) => {
                // Leave the session as it was (PROTO-4).
                self.state.history.pop();
                return Err(Rejected {
                    state: self,
                    error: e.into(),
                });
            }
        };
        let response = Response {
            session: self.state.session,
            round: r,
            ciphertexts,
        };
        if r as usize + 1 == self.model.rounds() {
            return Ok((ServerStep::Closed(response), phases));
        }
        self.state.previous = shuffle;
        self.state.round += 1;
        Ok((ServerStep::Continue(self, response), phases))
    }
}

impl StoredSession {
    /// Feeds an upload to a stored session. A rejected upload leaves the
    /// session as it was; a closed session refuses everything.
    pub fn receive_upload(
        self,
        upload: Upload,
    ) -> (StoredSession, Result<Response, ProtocolError>) {
        match self {
            StoredSession::Closed => (
                StoredSession::Closed,
                Err(ProtocolError::peer(ErrorKind::Malformed(
                    "the session is closed",
                ))),
            ),
            StoredSession::AwaitingUpload(s) => match s.receive_upload(upload) {
                Ok(ServerStep::Continue(next, resp)) => {
                    (StoredSession::AwaitingUpload(next), Ok(resp))
                }
                Ok(ServerStep::Closed(resp)) => (StoredSession::Closed, Ok(resp)),
                Err(Rejected { state, error }) => {
                    (StoredSession::AwaitingUpload(state), Err(error))
                }
            },
        }
    }
}
