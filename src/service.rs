//! Serving a model and querying it in a few lines: the facade over the
//! typed protocol ([`crate::protocol`]), in the manner of rustls and snow.
//!
//! * [`ModelServer`] holds a compiled model, its [`Policy`] and its
//!   [`Ledger`]; [`ModelServer::builder`] chooses the parameter set and
//!   checks the policy against the model (PROTO-6) once, at build time.
//! * [`ServerConnection`] is the server's sans-IO core for one client
//!   identity: protocol messages in, replies out, one inference after
//!   another, each charged to the identity's budget when it starts
//!   (PROTO-5, PROTO-8). The application authenticates the peer and names
//!   its [`ClientId`]; the crate never takes an identity from a message.
//! * [`ClientSession`] is the client's sans-IO core for one inference: it
//!   makes the session's keys, answers each server message with the next
//!   one, and ends with the logits.
//! * [`ModelClient`] drives a [`ClientSession`] over a [`Transport`]: the
//!   in-process [`InProcess`] (a [`ServerConnection`] called directly) or,
//!   with feature `net`, `Remote` (TLS, `crate::net`), and reports per
//!   round the client's and the server's time and the bytes each way.
//!
//! Both cores are the typestates of `crate::protocol` under the hood: a
//! refused message leaves the core as it was (PROTO-4), so a malformed
//! message from the peer costs nothing but the error. Every error is a
//! [`ServiceError`] that says whose fault it is, from the point of view of
//! the side that returns it, and carries no secret material.
//!
//! ```no_run
//! use safhire::{ClientId, ModelServer, Policy};
//! use safhire::model::Model;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Model::from_json(&std::fs::read_to_string("model.json")?)?;
//! let server = ModelServer::builder(model)
//!     .policy(Policy::shipped("default")?)
//!     .build()?;
//! let mut client = server.client(ClientId("alice".into()));
//! let input = vec![0; server.input_range().len];
//! let inference = client.infer(&input)?;
//! println!("logits {:?}", inference.logits);
//! # Ok(())
//! # }
//! ```

pub use crate::engine::RoundPhases;
use crate::engine::{CompiledModel, EngineError};
use crate::model::Model;
use crate::protocol::{
    AwaitingAccept, AwaitingResponse, AwaitingUpload, Client, ClientId, ClientStep, Endpoint,
    ErrorKind, Fault, Ledger, Policy, ProtocolError, Rejected, Response, Server, ServerStep,
    SessionAccept, SessionRequest, Upload,
};
use crate::rlwe::Context;
use crate::rng::{OsSeeds, SeedSource};
use crate::select::{self, Candidate, Requirement, SelectError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use thiserror::Error;

/// An error of the facade, with the party at fault.
///
/// `fault` is seen from the side that returns the error: on the server,
/// [`Fault::Peer`] is the client; on the client, [`Fault::Peer`] is the
/// server (the in-process transport turns the server's view around).
#[derive(Debug, Error)]
#[error("{fault} fault: {kind}")]
pub struct ServiceError {
    /// Whose fault: `Peer` is the other side, `Local` this side's caller,
    /// configuration or state.
    pub fault: Fault,
    /// What went wrong.
    pub kind: ServiceErrorKind,
}

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceErrorKind {
    /// A protocol message or an input was refused (PROTO-4), or a budget
    /// was exhausted (PROTO-5).
    #[error("{0}")]
    Protocol(ErrorKind),
    /// No parameter set carries the model, or the pinned one does not
    /// (PARAM-7).
    #[error("{0}")]
    Select(Box<SelectError>),
    /// The network transport failed or the server refused (feature `net`).
    #[cfg(feature = "net")]
    #[error("{0}")]
    Net(Box<crate::net::NetErrorKind>),
    /// The call does not fit the state it was made in.
    #[error("{0}")]
    State(&'static str),
    /// This side failed on its own account (a poisoned lock).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ServiceError {
    /// The other side's fault.
    pub fn peer(kind: ServiceErrorKind) -> Self {
        Self {
            fault: Fault::Peer,
            kind,
        }
    }

    /// This side's fault.
    pub fn local(kind: ServiceErrorKind) -> Self {
        Self {
            fault: Fault::Local,
            kind,
        }
    }

    /// Whether the other side is at fault.
    pub fn is_peer_fault(&self) -> bool {
        self.fault == Fault::Peer
    }

    /// `(used, budget)` when the error is the server's refusal of a session
    /// over the identity's query budget (PROTO-5), whichever transport
    /// carried it.
    pub fn budget_exhausted(&self) -> Option<(u64, u64)> {
        match &self.kind {
            ServiceErrorKind::Protocol(ErrorKind::BudgetExhausted { used, budget }) => {
                Some((*used, *budget))
            }
            #[cfg(feature = "net")]
            ServiceErrorKind::Net(kind) => match &**kind {
                crate::net::NetErrorKind::Refused(crate::net::Refusal::BudgetExhausted {
                    used,
                    budget,
                }) => Some((*used, *budget)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The same error as the other side sees it: the fault turned around.
    fn seen_by_peer(self) -> Self {
        Self {
            fault: match self.fault {
                Fault::Peer => Fault::Local,
                Fault::Local => Fault::Peer,
            },
            kind: self.kind,
        }
    }

    fn state(what: &'static str) -> Self {
        Self::local(ServiceErrorKind::State(what))
    }
}

impl From<ProtocolError> for ServiceError {
    fn from(e: ProtocolError) -> Self {
        Self {
            fault: e.fault,
            kind: ServiceErrorKind::Protocol(e.kind),
        }
    }
}

#[cfg(feature = "net")]
impl From<crate::net::NetError> for ServiceError {
    fn from(e: crate::net::NetError) -> Self {
        Self {
            fault: e.fault,
            kind: match e.kind {
                crate::net::NetErrorKind::Protocol(kind) => ServiceErrorKind::Protocol(kind),
                other => ServiceErrorKind::Net(Box::new(other)),
            },
        }
    }
}

/// What one input must be: its length and the declared range of every
/// value (ENG-5). The client checks an input against it before it spends
/// a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputRange {
    /// Values one input has.
    pub len: usize,
    /// The least value an input may hold.
    pub min: i64,
    /// The greatest value an input may hold.
    pub max: i64,
}

impl InputRange {
    /// Refuses an input of another length or with a value outside the
    /// range: the caller's fault. The error names no value.
    pub fn check(&self, input: &[i64]) -> Result<(), ServiceError> {
        if input.len() != self.len {
            return Err(ProtocolError::local(ErrorKind::InputLength {
                expected: self.len,
                got: input.len(),
            })
            .into());
        }
        if input.iter().any(|v| !(self.min..=self.max).contains(v)) {
            return Err(ProtocolError::local(ErrorKind::Malformed(
                "input value outside the model's declared input range",
            ))
            .into());
        }
        Ok(())
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

// ---------------------------------------------------------------- server

struct Shared {
    endpoint: Mutex<Endpoint>,
    ctx: Arc<Context>,
    model: Arc<CompiledModel>,
    policy: Policy,
    input: InputRange,
    candidates: Vec<Candidate>,
    explanation: String,
}

/// A model served under a policy: the server side of the facade.
///
/// Cheap to clone (the clones share the model, the policy and the
/// ledger); every [`ServerConnection`] made from it charges the same
/// ledger, under a lock held only for the charge and the key expansion.
#[derive(Clone)]
pub struct ModelServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ModelServer({} rounds, set {:?}, policy {:?})",
            self.shared.model.rounds(),
            self.shared.ctx.params().name(),
            self.shared.policy.name()
        )
    }
}

enum Source {
    Model(Model),
    Compiled(Arc<Context>, Arc<CompiledModel>),
}

/// Configures a [`ModelServer`]: [`ModelServer::builder`] or
/// [`ModelServer::builder_compiled`], then [`Self::build`].
pub struct ModelServerBuilder {
    source: Source,
    /// PROTO-11: sizes to compile (needs `Source::Model`) and batches
    /// already compiled.
    batch_sizes: Vec<usize>,
    batches: Vec<Arc<CompiledModel>>,
    policy: Option<Policy>,
    set: Option<String>,
    ledger: Option<Box<dyn Ledger>>,
    seeds: Option<Arc<dyn SeedSource>>,
}

impl std::fmt::Debug for ModelServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelServerBuilder")
            .field("policy", &self.policy.as_ref().map(Policy::name))
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl ModelServerBuilder {
    /// The policy sessions are served under (default: the shipped
    /// `default` policy).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Pins the parameter set by name; `auto` (the default) takes the
    /// cheapest shipped set that carries the model under the policy
    /// (PARAM-7).
    pub fn parameter_set(mut self, name: impl Into<String>) -> Self {
        self.set = Some(name.into()).filter(|s| s != "auto");
        self
    }

    /// Also serves sessions of each of `sizes` images (PROTO-11), the model
    /// compiled for each by [`engine::compile_batch`](crate::engine::compile_batch)
    /// on the chosen set when the server is built; a session of k images is
    /// charged k queries. Needs [`ModelServer::builder`] (the model itself);
    /// with a compiled model use [`Self::compiled_batch`]. A size of 1 is
    /// always served and ignored here.
    pub fn batches(mut self, sizes: &[usize]) -> Self {
        self.batch_sizes.extend(sizes.iter().filter(|&&k| k != 1));
        self
    }

    /// Also serves sessions of `batched.batch()` images (PROTO-11), a batch
    /// of the same model compiled for the same set
    /// ([`engine::compile_batch`](crate::engine::compile_batch)).
    pub fn compiled_batch(mut self, batched: Arc<CompiledModel>) -> Self {
        self.batches.push(batched);
        self
    }

    /// Counts sessions in `ledger` instead of in memory (PROTO-8), e.g. a
    /// `SqliteLedger` (feature `sqlite`) shared by every process on the
    /// host.
    pub fn ledger(mut self, ledger: Box<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Draws every session's secret randomness (re-randomisation, flooding,
    /// DP noise, session seeds and identifiers) from `seeds` instead of the
    /// operating system (KEY-3: injected randomness).
    pub fn seed_source(mut self, seeds: Arc<dyn SeedSource>) -> Self {
        self.seeds = Some(seeds);
        self
    }

    /// Chooses the parameter set and compiles the model (for
    /// [`ModelServer::builder`]), then checks the policy against the model
    /// and the set (PROTO-6, PARAM-7). Every refusal is this side's fault
    /// and says why.
    pub fn build(self) -> Result<ModelServer, ServiceError> {
        let policy = match self.policy {
            Some(p) => p,
            None => Policy::shipped("default")?,
        };
        let mut batches = self.batches;
        let (ctx, model, candidates, explanation) = match self.source {
            Source::Model(model) => {
                let selection =
                    select::select(&model, Requirement::of(&policy), self.set.as_deref())
                        .map_err(|e| ServiceError::local(ServiceErrorKind::Select(Box::new(e))))?;
                let explanation = selection.explain();
                for &k in &self.batch_sizes {
                    let batched = crate::engine::compile_batch(&selection.context, &model, k)
                        .map_err(ProtocolError::from)?;
                    batches.push(Arc::new(batched));
                }
                (
                    Arc::new(selection.context),
                    Arc::new(selection.model),
                    selection.candidates,
                    explanation,
                )
            }
            Source::Compiled(ctx, model) => {
                if !self.batch_sizes.is_empty() {
                    return Err(ServiceError::state(
                        "batches of a compiled model are given compiled (compiled_batch)",
                    ));
                }
                if let Some(set) = &self.set {
                    if set != ctx.params().name() {
                        return Err(ServiceError::state(
                            "the model was compiled for another parameter set than the one pinned",
                        ));
                    }
                }
                (ctx, model, Vec::new(), String::new())
            }
        };
        let mut endpoint = Endpoint::new(ctx.clone(), model.clone(), policy.clone())?;
        for batched in batches {
            endpoint = endpoint.with_batch(batched)?;
        }
        if let Some(ledger) = self.ledger {
            endpoint = endpoint.with_ledger(ledger);
        }
        if let Some(seeds) = self.seeds {
            endpoint = endpoint.with_seed_source(seeds);
        }
        let input = InputRange {
            len: model.input_len(),
            min: model.input().min,
            max: model.input().max,
        };
        Ok(ModelServer {
            shared: Arc::new(Shared {
                endpoint: Mutex::new(endpoint),
                ctx,
                model,
                policy,
                input,
                candidates,
                explanation,
            }),
        })
    }
}

impl ModelServer {
    /// Starts configuring a server for `model`; the parameter set is chosen
    /// and the model compiled by [`ModelServerBuilder::build`].
    pub fn builder(model: Model) -> ModelServerBuilder {
        ModelServerBuilder {
            source: Source::Model(model),
            batch_sizes: Vec::new(),
            batches: Vec::new(),
            policy: None,
            set: None,
            ledger: None,
            seeds: None,
        }
    }

    /// Starts configuring a server for a model already compiled for
    /// `context` (`engine::compile` or `select::select`).
    pub fn builder_compiled(
        context: Arc<Context>,
        model: Arc<CompiledModel>,
    ) -> ModelServerBuilder {
        ModelServerBuilder {
            source: Source::Compiled(context, model),
            batch_sizes: Vec::new(),
            batches: Vec::new(),
            policy: None,
            set: None,
            ledger: None,
            seeds: None,
        }
    }

    /// The context (parameter set) sessions run under; a client needs it.
    pub fn context(&self) -> &Arc<Context> {
        &self.shared.ctx
    }

    /// The compiled model.
    pub fn model(&self) -> &Arc<CompiledModel> {
        &self.shared.model
    }

    /// The policy sessions are served under.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// What an input must be.
    pub fn input_range(&self) -> InputRange {
        self.shared.input
    }

    /// The parameter sets tried by [`Self::builder`], cheapest first, the
    /// chosen one last (empty for [`Self::builder_compiled`]).
    pub fn parameter_candidates(&self) -> &[Candidate] {
        &self.shared.candidates
    }

    /// One line per set tried, saying why it was passed over or chosen
    /// (empty for [`Self::builder_compiled`]).
    pub fn selection_explained(&self) -> &str {
        &self.shared.explanation
    }

    /// The numbers of images a session may carry, 1 first (PROTO-11).
    pub fn batches(&self) -> Result<Vec<usize>, ServiceError> {
        Ok(lock(&self.shared)?.batches().collect())
    }

    /// Queries (images) `client` has been charged so far.
    pub fn queries_used(&self, client: &ClientId) -> Result<u64, ServiceError> {
        Ok(lock(&self.shared)?.queries_used(client)?)
    }

    /// The server's side of a connection from `client`, an identity the
    /// application has authenticated (PROTO-5: budgets are per identity).
    pub fn connection(&self, client: ClientId) -> ServerConnection {
        ServerConnection {
            shared: self.shared.clone(),
            client,
            state: ConnectionState::Idle,
            last: None,
            sessions: 0,
        }
    }

    /// A client of this server in the same process, as `client`.
    pub fn client(&self, client: ClientId) -> ModelClient<InProcess> {
        ModelClient::new(self, client)
    }

    /// The endpoint inside, for a transport that drives it directly (e.g.
    /// `net::Service::bind`). Refused while clones or connections of this
    /// server are alive, since they share its ledger.
    pub fn into_endpoint(self) -> Result<Endpoint, ServiceError> {
        let shared = Arc::try_unwrap(self.shared).map_err(|_| {
            ServiceError::state("connections or clones of this server are still alive")
        })?;
        shared
            .endpoint
            .into_inner()
            .map_err(|_| ServiceError::local(ServiceErrorKind::Internal("ledger lock")))
    }

    /// Serves over TLS on `addr` (feature `net`, spec/transport.md):
    /// `net::Service::bind` with this server's endpoint; call
    /// `Service::run` on the result. Refused while clones or connections of
    /// this server are alive.
    #[cfg(feature = "net")]
    pub async fn bind(
        self,
        addr: &str,
        config: crate::net::ServeConfig,
    ) -> Result<crate::net::Service, ServiceError> {
        let endpoint = self.into_endpoint()?;
        Ok(crate::net::Service::bind(addr, endpoint, config).await?)
    }
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Endpoint>, ServiceError> {
    shared
        .endpoint
        .lock()
        .map_err(|_| ServiceError::local(ServiceErrorKind::Internal("ledger lock")))
}

/// The server's time for one message, measured around its handling and
/// never sent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerTiming {
    /// Decoding, the work (key expansion, or the round's evaluation) and
    /// encoding the reply.
    pub total_ms: f64,
    /// For a round, where the evaluation's time went.
    pub phases: Option<RoundPhases>,
}

enum ConnectionState {
    /// Waiting for a SessionRequest.
    Idle,
    /// A session is in flight.
    Session(Server<AwaitingUpload>),
}

/// The server's sans-IO core for one client identity: feed it each
/// message the client sends; it returns the reply to send back. Sessions
/// (inferences) follow one another, each exactly PROTO-1's sequence.
pub struct ServerConnection {
    shared: Arc<Shared>,
    client: ClientId,
    state: ConnectionState,
    last: Option<ServerTiming>,
    sessions: u64,
}

impl std::fmt::Debug for ServerConnection {
    // The session's secrets stay out: the identity and the round only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerConnection({:?}, {})",
            self.client.0,
            match &self.state {
                ConnectionState::Idle => "idle".to_owned(),
                ConnectionState::Session(s) => format!("awaiting upload {}", s.round()),
            }
        )
    }
}

impl ServerConnection {
    /// The identity sessions are charged to.
    pub fn client_id(&self) -> &ClientId {
        &self.client
    }

    /// Handles one message from the client and returns the reply: a
    /// SessionRequest between sessions (charged to the identity's budget
    /// before any work, PROTO-8) or the Upload of the session's current
    /// round.
    ///
    /// A refused message — malformed, out of sequence, over budget —
    /// leaves the connection as it was (PROTO-4, MC-3): a session in flight
    /// goes on with the next valid upload (MC-6: an honest client whose
    /// messages are delivered always finishes). A session refused for its
    /// budget or its keys is not started.
    pub fn receive(&mut self, message: &[u8]) -> Result<Vec<u8>, ServiceError> {
        let t = Instant::now();
        self.last = None;
        let ctx = self.shared.ctx.clone();
        match std::mem::replace(&mut self.state, ConnectionState::Idle) {
            ConnectionState::Idle => {
                let request = SessionRequest::decode(&ctx, message)?;
                let (session, accept) = lock(&self.shared)?.accept(&self.client, request)?;
                let reply = accept.encode(&ctx);
                self.state = ConnectionState::Session(session);
                self.sessions += 1;
                self.last = Some(ServerTiming {
                    total_ms: ms(t),
                    phases: None,
                });
                Ok(reply)
            }
            ConnectionState::Session(session) => {
                let upload = match Upload::decode(&ctx, message) {
                    Ok(u) => u,
                    Err(e) => {
                        self.state = ConnectionState::Session(session);
                        return Err(e.into());
                    }
                };
                let (response, phases) = match session.receive_upload_timed(upload) {
                    Ok((ServerStep::Continue(next, response), phases)) => {
                        self.state = ConnectionState::Session(next);
                        (response, phases)
                    }
                    Ok((ServerStep::Closed(response), phases)) => (response, phases),
                    Err(Rejected { state, error }) => {
                        self.state = ConnectionState::Session(state);
                        return Err(error.into());
                    }
                };
                let reply = response.encode(&ctx);
                self.last = Some(ServerTiming {
                    total_ms: ms(t),
                    phases: Some(phases),
                });
                Ok(reply)
            }
        }
    }

    /// Whether a session is in flight.
    pub fn in_session(&self) -> bool {
        matches!(self.state, ConnectionState::Session(_))
    }

    /// The round whose upload the session in flight waits for.
    pub fn round(&self) -> Option<u32> {
        match &self.state {
            ConnectionState::Idle => None,
            ConnectionState::Session(s) => Some(s.round()),
        }
    }

    /// Sessions accepted on this connection.
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// The time the last successful [`Self::receive`] took, and for a
    /// round where it went.
    pub fn last_timing(&self) -> Option<ServerTiming> {
        self.last
    }

    /// Drops the session in flight, if any (it stays charged, PROTO-8);
    /// the next message must be a SessionRequest. Returns whether there
    /// was one.
    pub fn abandon(&mut self) -> bool {
        let was = self.in_session();
        self.state = ConnectionState::Idle;
        was
    }
}

// ---------------------------------------------------------------- client

enum ClientState {
    AwaitingAccept(Client<AwaitingAccept>),
    AwaitingResponse(Client<AwaitingResponse>),
    Finished,
}

/// What the client does next.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Send this message to the server and feed its reply to
    /// [`ClientSession::receive`].
    Send(Vec<u8>),
    /// The inference is complete: the logits, in true order.
    Done(Vec<i64>),
}

/// The client's sans-IO core for one inference: [`Self::start`] makes the
/// session's keys and the SessionRequest; [`Self::receive`] answers each
/// server message with the next one, and the last with the logits.
pub struct ClientSession {
    ctx: Arc<Context>,
    /// The images' inputs one after another (PROTO-11).
    input: Vec<i64>,
    state: ClientState,
}

impl std::fmt::Debug for ClientSession {
    // Never the input or the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientSession({})",
            match &self.state {
                ClientState::AwaitingAccept(_) => "awaiting accept".to_owned(),
                ClientState::AwaitingResponse(c) => format!("awaiting response {}", c.round()),
                ClientState::Finished => "finished".to_owned(),
            }
        )
    }
}

impl ClientSession {
    /// Generates the session's keys; returns the session and the
    /// SessionRequest to send. The input is encrypted once the server's
    /// SessionAccept has said what the model takes.
    pub fn start(ctx: Arc<Context>, input: &[i64]) -> (Self, Vec<u8>) {
        Self::start_with(ctx, input, &OsSeeds)
    }

    /// [`Self::start`] with the session's secret randomness (keys, noise)
    /// drawn from `seeds` (KEY-3: injected randomness).
    pub fn start_with(ctx: Arc<Context>, input: &[i64], seeds: &dyn SeedSource) -> (Self, Vec<u8>) {
        let (client, request) = Client::start_with(ctx.clone(), seeds);
        let message = request.encode(&ctx);
        (
            Self {
                ctx,
                input: input.to_vec(),
                state: ClientState::AwaitingAccept(client),
            },
            message,
        )
    }

    /// [`Self::start_with`] for a session of several images (PROTO-11):
    /// `inputs` holds one input per image (1 to
    /// [`MAX_BATCH`](crate::protocol::MAX_BATCH) of them, checked against
    /// the model once it is accepted), and the logits come back image after
    /// image.
    pub fn start_batch_with(
        ctx: Arc<Context>,
        inputs: &[&[i64]],
        seeds: &dyn SeedSource,
    ) -> Result<(Self, Vec<u8>), ServiceError> {
        let batch = u32::try_from(inputs.len()).unwrap_or(u32::MAX);
        let (client, request) = Client::start_batch_with(ctx.clone(), batch, seeds)?;
        let message = request.encode(&ctx);
        Ok((
            Self {
                ctx,
                input: inputs.concat(),
                state: ClientState::AwaitingAccept(client),
            },
            message,
        ))
    }

    /// Handles one message from the server (PROTO-1): the SessionAccept
    /// (then the input is checked and encrypted: upload 0), or the Response
    /// of the current round (then the next upload, or the logits).
    ///
    /// A refused message leaves the session as it was (PROTO-4), with the
    /// server at fault. An input the accepted model does not take is the
    /// caller's fault and ends the session.
    pub fn receive(&mut self, message: &[u8]) -> Result<ClientEvent, ServiceError> {
        match std::mem::replace(&mut self.state, ClientState::Finished) {
            ClientState::AwaitingAccept(client) => {
                let accept = match SessionAccept::decode(&self.ctx, message) {
                    Ok(a) => a,
                    Err(e) => {
                        self.state = ClientState::AwaitingAccept(client);
                        return Err(e.into());
                    }
                };
                let ready = match client.receive_accept(accept) {
                    Ok(r) => r,
                    Err(Rejected { state, error }) => {
                        self.state = ClientState::AwaitingAccept(state);
                        return Err(error.into());
                    }
                };
                let input = std::mem::take(&mut self.input);
                let (client, upload) = ready.send_input(&input).map_err(|r| r.error)?;
                self.state = ClientState::AwaitingResponse(client);
                Ok(ClientEvent::Send(upload.encode(&self.ctx)))
            }
            ClientState::AwaitingResponse(client) => {
                let response = match Response::decode(&self.ctx, message) {
                    Ok(r) => r,
                    Err(e) => {
                        self.state = ClientState::AwaitingResponse(client);
                        return Err(e.into());
                    }
                };
                match client.receive_response(response) {
                    Ok(ClientStep::Continue(next, upload)) => {
                        self.state = ClientState::AwaitingResponse(next);
                        Ok(ClientEvent::Send(upload.encode(&self.ctx)))
                    }
                    Ok(ClientStep::Done(logits)) => Ok(ClientEvent::Done(logits)),
                    Err(Rejected { state, error }) => {
                        self.state = ClientState::AwaitingResponse(state);
                        Err(error.into())
                    }
                }
            }
            ClientState::Finished => Err(ServiceError::state("the session is over")),
        }
    }

    /// The round whose response the session waits for; `None` before the
    /// accept and once finished.
    pub fn round(&self) -> Option<u32> {
        match &self.state {
            ClientState::AwaitingResponse(c) => Some(c.round()),
            _ => None,
        }
    }

    /// Whether the session has ended, with the logits or an error.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, ClientState::Finished)
    }
}

// ------------------------------------------------------------- transport

/// The server's reply to one message, as a transport delivers it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    /// The reply message.
    pub message: Vec<u8>,
    /// The server's time for the message, if the transport knows it.
    pub server: Option<ServerTiming>,
    /// Bytes sent, framing included.
    pub up_bytes: usize,
    /// Bytes received, framing included.
    pub down_bytes: usize,
}

/// Carries the client's messages to a server and its replies back: one
/// reply per message, in order (PROTO-1).
pub trait Transport {
    /// Sends `message` and waits for the reply. A refusal by the server is
    /// an error whose fault is seen from the client's side.
    fn exchange(&mut self, message: &[u8]) -> Result<Reply, ServiceError>;

    /// Called when an inference fails in the middle of a session: lets the
    /// transport drop what the server side holds for it. The default does
    /// nothing.
    fn abandon(&mut self) {}
}

/// The in-process transport: the client's messages go straight to a
/// [`ServerConnection`] of the same process, encoded and decoded exactly
/// as over a network, and the server's per-round timings come along.
#[derive(Debug)]
pub struct InProcess {
    connection: ServerConnection,
}

impl InProcess {
    /// A transport to `connection`.
    pub fn new(connection: ServerConnection) -> Self {
        Self { connection }
    }

    /// The server's side.
    pub fn connection(&self) -> &ServerConnection {
        &self.connection
    }

    /// The server's side, e.g. to feed it a message by hand.
    pub fn connection_mut(&mut self) -> &mut ServerConnection {
        &mut self.connection
    }
}

impl Transport for InProcess {
    fn exchange(&mut self, message: &[u8]) -> Result<Reply, ServiceError> {
        let reply = self
            .connection
            .receive(message)
            .map_err(ServiceError::seen_by_peer)?;
        Ok(Reply {
            up_bytes: message.len(),
            down_bytes: reply.len(),
            server: self.connection.last_timing(),
            message: reply,
        })
    }

    fn abandon(&mut self) {
        self.connection.abandon();
    }
}

/// Time and traffic of one exchange: the session setup, or one round.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    /// The client's computation: key generation for the setup; for round
    /// r the decryption of response r, the client steps and the encryption
    /// of the next upload (round 0 also the first encryption).
    pub client_ms: f64,
    /// The server's computation as the transport reports it (setup: key
    /// expansion; round: decode, evaluate, encode).
    pub server_ms: Option<f64>,
    /// The round trip less the server's computation: transfer, queueing.
    pub transport_ms: f64,
    /// Bytes sent.
    pub up_bytes: usize,
    /// Bytes received.
    pub down_bytes: usize,
    /// For a round, where the server's evaluation time went, when the
    /// transport knows it (in process).
    pub phases: Option<RoundPhases>,
}

/// One inference through the protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference {
    /// The logits, in true order; for a session of several images, theirs
    /// one after another.
    pub logits: Vec<i64>,
    /// The images the session carried (PROTO-11).
    pub batch: usize,
    /// SessionRequest → SessionAccept: the keys.
    pub setup: ExchangeStats,
    /// One per encrypted round.
    pub rounds: Vec<ExchangeStats>,
}

impl Inference {
    /// Each image's logits, in the order the images were given.
    pub fn image_logits(&self) -> impl Iterator<Item = &[i64]> {
        crate::protocol::image_logits(&self.logits, self.batch)
    }

    /// The server's time over the rounds (the setup not included).
    pub fn server_ms(&self) -> f64 {
        self.rounds.iter().filter_map(|r| r.server_ms).sum()
    }

    /// The client's time over the rounds (key generation not included).
    pub fn client_ms(&self) -> f64 {
        self.rounds.iter().map(|r| r.client_ms).sum()
    }

    /// The end-to-end latency this inference would have had over `link`,
    /// modelled from its measured computation and its bytes: each exchange
    /// (the setup when `with_setup`, then every round) costs its client and
    /// server computation, its bytes up and down at the link's bandwidth,
    /// and one round trip. A model, not a measurement: no overlap of
    /// computation with transfer, no framing or TLS overhead, no queueing.
    pub fn modelled_latency_ms(&self, link: Link, with_setup: bool) -> f64 {
        let setup = with_setup.then_some(&self.setup);
        setup
            .into_iter()
            .chain(&self.rounds)
            .map(|e| {
                let bytes = (e.up_bytes + e.down_bytes) as f64;
                e.client_ms
                    + e.server_ms.unwrap_or(0.0)
                    + 1e3 * bytes / link.bytes_per_second
                    + link.round_trip_ms
            })
            .sum()
    }
}

/// A network link for [`Inference::modelled_latency_ms`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Bandwidth, the same both ways, in bytes per second.
    pub bytes_per_second: f64,
    /// Round-trip time added once per exchange, in milliseconds.
    pub round_trip_ms: f64,
}

impl Link {
    /// A link of `mb_per_second` · 10^6 bytes per second and no propagation
    /// delay (the bandwidth-only model the paper's latencies use).
    pub fn bandwidth_only(mb_per_second: f64) -> Self {
        Self {
            bytes_per_second: mb_per_second * 1e6,
            round_trip_ms: 0.0,
        }
    }
}

/// Runs inferences against a server over a [`Transport`], one session
/// each: the client side of the facade.
pub struct ModelClient<T> {
    ctx: Arc<Context>,
    transport: T,
    input: Option<InputRange>,
    seeds: Arc<dyn SeedSource>,
}

impl<T> std::fmt::Debug for ModelClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ModelClient(set {:?}, {})",
            self.ctx.params().name(),
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        )
    }
}

impl ModelClient<InProcess> {
    /// A client of `server` in the same process, as identity `client`.
    pub fn new(server: &ModelServer, client: ClientId) -> Self {
        Self::with_transport(
            server.context().clone(),
            InProcess::new(server.connection(client)),
            Some(server.input_range()),
        )
    }
}

impl<T: Transport> ModelClient<T> {
    /// A client over any transport, for a server running `ctx`'s parameter
    /// set; `input`, when known, is checked before a session is spent.
    pub fn with_transport(ctx: Arc<Context>, transport: T, input: Option<InputRange>) -> Self {
        Self {
            ctx,
            transport,
            input,
            seeds: crate::rng::os_seeds(),
        }
    }

    /// The same client with each session's keys and noise drawn from
    /// `seeds` instead of the operating system (KEY-1: injected
    /// randomness).
    pub fn with_seed_source(mut self, seeds: Arc<dyn SeedSource>) -> Self {
        self.seeds = seeds;
        self
    }

    /// The context of the server's parameter set.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// What an input must be, if known before a session.
    pub fn input_range(&self) -> Option<InputRange> {
        self.input
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Runs one inference as one session (charged to this client's
    /// identity when the server accepts it). An input that does not fit
    /// the model is refused before a session starts when the range is
    /// known. On an error in the middle of a session the session is
    /// abandoned ([`Transport::abandon`]); the client stays usable.
    pub fn infer(&mut self, input: &[i64]) -> Result<Inference, ServiceError> {
        self.infer_batch(&[input])
    }

    /// Runs the inferences of several images as one session (PROTO-11):
    /// one set of keys and one round trip per round for all of them,
    /// charged one query per image; [`Inference::logits`] holds their
    /// logits image after image ([`Inference::image_logits`]). The server
    /// must serve sessions of `inputs.len()` images
    /// ([`ModelServerBuilder::batches`]), else it refuses the session
    /// before charging it. Inputs are checked as [`Self::infer`]'s.
    pub fn infer_batch(&mut self, inputs: &[&[i64]]) -> Result<Inference, ServiceError> {
        if let Some(range) = &self.input {
            for input in inputs {
                range.check(input)?;
            }
        }
        let result = self.run(inputs);
        if result.is_err() {
            self.transport.abandon();
        }
        result
    }

    fn run(&mut self, inputs: &[&[i64]]) -> Result<Inference, ServiceError> {
        let t = Instant::now();
        let (mut session, request) =
            ClientSession::start_batch_with(self.ctx.clone(), inputs, &*self.seeds)?;
        let keygen_ms = ms(t);
        let (reply, mut setup) = self.exchange(&request)?;
        setup.client_ms = keygen_ms;
        let t = Instant::now();
        let mut event = session.receive(&reply)?;
        let mut pending_ms = ms(t);
        let mut rounds = Vec::new();
        loop {
            let upload = match event {
                ClientEvent::Send(message) => message,
                ClientEvent::Done(logits) => {
                    return Ok(Inference {
                        logits,
                        batch: inputs.len(),
                        setup,
                        rounds,
                    })
                }
            };
            let (reply, mut stats) = self.exchange(&upload)?;
            let t = Instant::now();
            event = session.receive(&reply)?;
            stats.client_ms = pending_ms + ms(t);
            pending_ms = 0.0;
            rounds.push(stats);
        }
    }

    fn exchange(&mut self, message: &[u8]) -> Result<(Vec<u8>, ExchangeStats), ServiceError> {
        let t = Instant::now();
        let reply = self.transport.exchange(message)?;
        let round_trip_ms = ms(t);
        let server_ms = reply.server.map(|s| s.total_ms);
        Ok((
            reply.message,
            ExchangeStats {
                client_ms: 0.0,
                server_ms,
                transport_ms: (round_trip_ms - server_ms.unwrap_or(0.0)).max(0.0),
                up_bytes: reply.up_bytes,
                down_bytes: reply.down_bytes,
                phases: reply.server.and_then(|s| s.phases),
            },
        ))
    }
}

// ------------------------------------------------------------------- net

/// The network transport (feature `net`): a `net::Connection` over TLS
/// 1.3, authenticated by a bearer token, driven on a runtime of its own.
/// Its calls block: use it outside an async runtime (in async code, use
/// `net::Connection` directly). After an inference that failed in the
/// middle of a session the server has ended the connection (NET-7) or
/// still waits for that session's upload: connect again.
#[cfg(feature = "net")]
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    connection: crate::net::Connection,
}

#[cfg(feature = "net")]
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({:?})", self.connection)
    }
}

#[cfg(feature = "net")]
impl Remote {
    /// Connects, checks the server's Hello and authenticates (NET-3..NET-5).
    pub fn connect(config: &crate::net::ConnectConfig) -> Result<Self, ServiceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| {
                ServiceError::local(ServiceErrorKind::Internal("cannot start the I/O runtime"))
            })?;
        let connection = runtime.block_on(crate::net::Connection::connect(config))?;
        Ok(Self {
            runtime,
            connection,
        })
    }

    /// What the handshake established: the identity, its budget, the
    /// parameter set, the input range.
    pub fn info(&self) -> &crate::net::ServerInfo {
        self.connection.info()
    }

    /// Closes the connection cleanly.
    pub fn close(self) {
        let Remote {
            runtime,
            connection,
        } = self;
        runtime.block_on(connection.close());
    }
}

#[cfg(feature = "net")]
impl Transport for Remote {
    fn exchange(&mut self, message: &[u8]) -> Result<Reply, ServiceError> {
        let (reply, e) = self.runtime.block_on(self.connection.exchange(message))?;
        Ok(Reply {
            message: reply,
            server: Some(ServerTiming {
                total_ms: e.server_ms,
                phases: None,
            }),
            up_bytes: e.up_bytes,
            down_bytes: e.down_bytes,
        })
    }
}

#[cfg(feature = "net")]
impl ModelClient<Remote> {
    /// Connects to a `safhire serve` server (or `ModelServer::bind`) over
    /// TLS and authenticates; the parameter set and the input range come
    /// from the handshake (NET-4, NET-5).
    pub fn connect(config: &crate::net::ConnectConfig) -> Result<Self, ServiceError> {
        let remote = Remote::connect(config)?;
        let ctx = remote.connection.context().clone();
        let info = remote.info();
        let input = InputRange {
            len: info.input_len,
            min: info.input_min,
            max: info.input_max,
        };
        Ok(Self::with_transport(ctx, remote, Some(input)))
    }

    /// What the handshake established.
    pub fn server_info(&self) -> &crate::net::ServerInfo {
        self.transport.info()
    }

    /// Closes the connection cleanly.
    pub fn close(self) {
        self.transport.close();
    }
}

/// An engine failure (e.g. from `engine::compile` before
/// [`ModelServer::builder_compiled`]), with the fault
/// [`EngineError::fault`] assigns it: this side's for every compilation
/// problem.
impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        ProtocolError::from(e).into()
    }
}
