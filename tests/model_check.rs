//! The protocol, model-checked (MC-1..MC-8, spec/protocol.md): stateright
//! explores every interleaving, within small bounds, of
//! - an honest client (`alice`) running the real `ClientSession` against
//!   endpoint 0;
//! - a malicious client (`mallory`) that replays any message it has seen
//!   (its own, and the honest client's, as a worst case with no transport
//!   confidentiality) to any endpoint under its own identity, and starts a
//!   session of its own;
//! - two server endpoints (`ModelServer`s, each with a real
//!   `ServerConnection` per identity) sharing one ledger, either of which
//!   may crash (its sessions are lost, the ledger survives);
//! - a network that delays, reorders, duplicates and drops the honest
//!   client's messages in both directions.
//!
//! Nothing of the protocol is re-implemented: every message is made and
//! every transition taken by the crate's sans-IO cores, on a two-round model
//! small enough for real cryptography. The model's state records what each
//! core has accepted (its history), so the checker can hash and compare
//! states; a core is rebuilt by replaying its history when a state is
//! revisited (randomness is injected per core and per session, so a replay
//! is exact), and every transition's result is cached.
//!
//! Each safety property is also run against a deliberately broken server
//! built from the same cores in this file (a ledger charged after the work,
//! a server without its round check), and must fail there: a property that
//! cannot fail checks nothing.

mod common;

use safhire::model::Model as NnModel;
use safhire::protocol::{
    ClientId, Ledger, LedgerError, Response, SessionAccept, SessionRequest, Upload,
};
use safhire::rlwe::Context;
use safhire::rng::{Csprng, SeedSource};
use safhire::service::ServerConnection;
use safhire::shuffle::{Granularity, SessionSeed};
use safhire::{ClientEvent, ClientSession, ModelServer, Policy};
use stateright::{Checker, Expectation, Model, Property};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

const ALICE: usize = 0;
const MALLORY: usize = 1;
const NAMES: [&str; 2] = ["alice", "mallory"];
const ENDPOINTS: usize = 2;

// The safety properties that the broken variants must fail.
const BUDGET: &str = "no identity is served more sessions than its budget";
const ONCE: &str = "no round is evaluated twice";
const UNMIXED: &str = "every evaluated upload belongs to its session";
const REFUSAL: &str = "a refused message changes no state";
const SECRET: &str = "no server secret reaches the wire";
const LIVE: &str = "the honest client gets its logits";

// ------------------------------------------------------------ the workload

/// The shared two-round model (tests/common).
fn network_model() -> &'static NnModel {
    static M: OnceLock<NnModel> = OnceLock::new();
    M.get_or_init(|| common::two_round_model("model-check", 61))
}

fn input(who: usize) -> Vec<i64> {
    (0..9)
        .map(|i| ((who as i64 + 3) * 7 + i * 5) % 16)
        .collect()
}

fn policy(budget: u64) -> Policy {
    let toml = format!(
        "[[policy]]\nname = \"mc\"\ngranularity = \"element\"\nquery_budget = {budget}\n\
         allow_budget_above_attack_threshold = true\n"
    );
    Policy::load(&toml, "mc").unwrap()
}

// ------------------------------------------------------- messages by content

/// A message, named by a hash of its bytes; the bytes and a readable label
/// (for printed traces) live in a table shared by the whole run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Msg(u64);

struct Stored {
    bytes: Arc<Vec<u8>>,
    label: String,
}

fn messages() -> &'static Mutex<HashMap<u64, Stored>> {
    static T: OnceLock<Mutex<HashMap<u64, Stored>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

impl Msg {
    fn intern(bytes: Vec<u8>, label: String) -> Msg {
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let id = h.finish();
        messages().lock().unwrap().entry(id).or_insert(Stored {
            bytes: Arc::new(bytes),
            label,
        });
        Msg(id)
    }

    fn bytes(self) -> Arc<Vec<u8>> {
        messages().lock().unwrap()[&self.0].bytes.clone()
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match messages().lock().unwrap().get(&self.0) {
            Some(s) => f.write_str(&s.label),
            None => write!(f, "msg#{:x}", self.0),
        }
    }
}

// ------------------------------------------------- the server's environment

/// The shared ledger. The model's state holds the counts; before each
/// transition the harness writes the count the transition starts from, so
/// a replayed transition sees what the original saw.
#[derive(Debug, Clone)]
struct SharedLedger {
    counts: Arc<Mutex<[u64; 2]>>,
    /// The broken variant: checks the budget but does not count; the
    /// harness counts the session when it closes ("after the work").
    charge_after_work: bool,
    /// The broken variant: counts a refused charge too.
    counts_refusals: bool,
}

fn slot(client: &ClientId) -> usize {
    NAMES
        .iter()
        .position(|n| *n == client.0)
        .expect("a modelled identity")
}

impl Ledger for SharedLedger {
    fn charge_queries(
        &mut self,
        client: &ClientId,
        queries: u64,
        budget: u64,
    ) -> Result<u64, LedgerError> {
        if queries == 0 {
            return Err(LedgerError::ZeroQueries);
        }
        let mut counts = self.counts.lock().unwrap();
        let used = counts[slot(client)];
        let Some(after) = used.checked_add(queries).filter(|&after| after <= budget) else {
            if self.counts_refusals {
                counts[slot(client)] = used.saturating_add(queries);
            }
            return Err(LedgerError::Exhausted { used, budget });
        };
        if !self.charge_after_work {
            counts[slot(client)] = after;
        }
        Ok(after)
    }

    fn used(&self, client: &ClientId) -> Result<u64, LedgerError> {
        Ok(self.counts.lock().unwrap()[slot(client)])
    }
}

/// A deterministic seed source re-keyed before each transition (from the
/// endpoint, the identity and the ledger count), so a session's secrets do
/// not depend on the order in which the checker explores; it records every
/// byte it hands out, so the harness can look for them on the wire (MC-7).
#[derive(Default)]
struct KeyedSeeds {
    stream: Mutex<Option<Csprng>>,
    handed_out: Mutex<Vec<[u8; 16]>>,
}

impl KeyedSeeds {
    fn rekey(&self, key: [u8; 16]) {
        *self.stream.lock().unwrap() = Some(Csprng::from_seed(key));
        self.handed_out.lock().unwrap().clear();
    }

    fn take_handed_out(&self) -> Vec<[u8; 16]> {
        std::mem::take(&mut *self.handed_out.lock().unwrap())
    }
}

impl SeedSource for KeyedSeeds {
    fn fill(&self, out: &mut [u8]) {
        let mut stream = self.stream.lock().unwrap();
        let stream = stream.as_mut().expect("re-keyed before each transition");
        stream.fill_bytes(out);
        let mut log = self.handed_out.lock().unwrap();
        for chunk in out.chunks(16) {
            let mut c = [0u8; 16];
            c[..chunk.len()].copy_from_slice(chunk);
            log.push(c);
        }
    }
}

fn key(parts: &[u64]) -> [u8; 16] {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_le_bytes());
    k[8..].copy_from_slice(&h.finish().to_le_bytes());
    k
}

// ------------------------------------------------------------ the variants

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// The crate's server, unchanged.
    Real,
    /// Broken: the ledger checks the budget when a session starts but
    /// counts it only when the session's last response is sent.
    LedgerChargedAfterWork,
    /// Broken: an upload for a round the session has already answered is
    /// evaluated again (the server is rewound to before that round), as a
    /// server without PROTO-4's round check would.
    NoRoundCheck,
    /// Broken: an upload of another session for the current round is
    /// evaluated in this one, as a server that ignores PROTO-10's session
    /// id would.
    NoSessionCheck,
    /// Broken: the ledger counts a refused charge too (increment, then
    /// check), so a refusal changes state.
    LedgerCountsRefusals,
    /// Broken: the accept carries the bytes the server's seed source
    /// handed out (its session seed).
    LeaksSeed,
    /// Broken: the accept carries round 0's permutation.
    LeaksPermutation,
}

#[derive(Clone, Copy, Debug)]
struct Bounds {
    budget: u64,
    /// Messages mallory may send (replays or its own request).
    mallory_sends: u8,
    /// Whether mallory may start a session with keys of its own.
    mallory_session: bool,
    /// Endpoint crashes.
    crashes: u8,
    /// Whether the network may drop the honest client's messages.
    drops: bool,
    /// Extra copies the network may deliver of each honest message.
    duplicates: u8,
}

// ------------------------------------------------------------- the system

/// Whose message a packet in flight is, and to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Dest {
    /// To endpoint 0, on the honest client's connection.
    Server,
    /// To the honest client.
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Packet {
    dest: Dest,
    msg: Msg,
    /// Further copies the network may still deliver.
    copies: u8,
}

/// A server connection (endpoint, identity): what it has accepted, each
/// with the ledger count it started from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Conn {
    history: Vec<(Msg, u64)>,
    /// Sessions accepted on it (the current one's index is this − 1).
    sessions: u64,
    /// The round whose upload the session in flight waits for.
    round: Option<u32>,
}

/// The honest client's session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Honest {
    Idle,
    /// Messages accepted from the server so far.
    Running {
        history: Vec<Msg>,
    },
    /// Logits arrived; whether they equal the plaintext reference, and
    /// after how many accepted server messages.
    Done {
        exact: bool,
        accepted: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    ledger: [u64; 2],
    /// SessionAccepts sent to each identity, on every endpoint.
    accepted: [u64; 2],
    conns: [[Conn; 2]; ENDPOINTS],
    alice: Honest,
    net: BTreeSet<Packet>,
    /// Every message on the wire, for mallory's replays.
    seen: BTreeSet<Msg>,
    mallory_sends: u8,
    mallory_session: bool,
    crashes: u8,
    /// (endpoint, identity, session, round) evaluated so far.
    evaluated: BTreeSet<(u8, u8, u64, u32)>,
    // Violations observed on a transition, kept so that the property
    // that names them fails in every later state.
    evaluated_twice: bool,
    rejected_changed_state: bool,
    response_out_of_order: bool,
    mixed_sessions: bool,
    secret_on_wire: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    AliceStarts,
    Deliver(Packet),
    Duplicate(Packet),
    Drop(Packet),
    MallorySends { msg: Msg, endpoint: u8 },
    MalloryStarts { endpoint: u8 },
    Crash { endpoint: u8 },
}

/// What one transition of a server connection produced.
#[derive(Clone, Debug)]
struct ConnStep {
    /// The reply, or `None` when the message was refused.
    reply: Option<Msg>,
    /// Whether the connection moved on (false for a refusal, and for the
    /// broken server's answer to a replayed round).
    advance: bool,
    round: Option<u32>,
    sessions: u64,
    /// The real ledger's count for the identity after the step.
    ledger_after: u64,
    /// Whether an accepted upload belonged to another session than the
    /// connection's (MC-5).
    mixed_sessions: bool,
    /// The round evaluated by this step, if it answered an upload.
    evaluated: Option<u32>,
    /// Whether a refusal left the connection and the ledger as they were.
    refusal_changed_state: bool,
    /// Whether the reply carries bytes the server's seed source handed out.
    secret_on_wire: bool,
    /// Whether this step closed a session (its last response).
    closed: bool,
    /// The bytes the connection actually took, when the broken server
    /// rewrote the message (its history must replay those).
    taken: Option<Msg>,
}

/// A server connection after a history: (endpoint, identity, what it has
/// accepted, each with the ledger count it started from).
type ConnKey = (usize, usize, Vec<(Msg, u64)>);

/// What one message did to the honest client.
#[derive(Clone, Debug)]
struct ClientStep {
    /// `None` when it refused the message, else the next upload or the
    /// logits.
    outcome: Option<Result<Msg, Vec<i64>>>,
    refusal_changed_state: bool,
}

struct System {
    server: Server,
    bounds: Bounds,
    servers: Vec<ModelServer>,
    counts: Arc<Mutex<[u64; 2]>>,
    seeds: Vec<Arc<KeyedSeeds>>,
    ctx: Arc<Context>,
    rounds: u32,
    reference: Vec<i64>,
    live_conns: Mutex<HashMap<ConnKey, ServerConnection>>,
    conn_steps: Mutex<HashMap<(ConnKey, Msg, u64), ConnStep>>,
    live_clients: Mutex<HashMap<Vec<Msg>, ClientSession>>,
    client_steps: Mutex<HashMap<(Vec<Msg>, Msg), ClientStep>>,
    requests: Mutex<HashMap<usize, Msg>>,
    secrets: Mutex<HashSet<[u8; 16]>>,
}

impl System {
    fn new(server: Server, bounds: Bounds) -> Self {
        let counts = Arc::new(Mutex::new([0u64; 2]));
        let seeds: Vec<Arc<KeyedSeeds>> = (0..ENDPOINTS).map(|_| Arc::default()).collect();
        let servers: Vec<ModelServer> = seeds
            .iter()
            .map(|s| {
                ModelServer::builder(network_model().clone())
                    .policy(policy(bounds.budget))
                    .ledger(Box::new(SharedLedger {
                        counts: counts.clone(),
                        charge_after_work: server == Server::LedgerChargedAfterWork,
                        counts_refusals: server == Server::LedgerCountsRefusals,
                    }))
                    .seed_source(s.clone())
                    .build()
                    .unwrap()
            })
            .collect();
        let ctx = servers[0].context().clone();
        let rounds = servers[0].model().rounds() as u32;
        Self {
            server,
            bounds,
            servers,
            counts,
            seeds,
            ctx,
            rounds,
            reference: network_model().evaluate(&input(ALICE)).unwrap(),
            live_conns: Mutex::default(),
            conn_steps: Mutex::default(),
            live_clients: Mutex::default(),
            client_steps: Mutex::default(),
            requests: Mutex::default(),
            secrets: Mutex::default(),
        }
    }

    /// A client's session and its SessionRequest, always with the same
    /// keys for the same client (so a replay rebuilds the same session).
    fn start_client(&self, who: usize) -> (ClientSession, Vec<u8>) {
        let seeds = KeyedSeeds::default();
        seeds.rekey(key(&[7, who as u64]));
        ClientSession::start_with(self.ctx.clone(), &input(who), &seeds)
    }

    /// A client's SessionRequest (alice's, or mallory's own), made once.
    fn request(&self, who: usize) -> Msg {
        *self.requests.lock().unwrap().entry(who).or_insert_with(|| {
            let (session, bytes) = self.start_client(who);
            if who == ALICE {
                self.live_clients
                    .lock()
                    .unwrap()
                    .insert(Vec::new(), session);
            }
            Msg::intern(bytes, format!("{}.request", NAMES[who]))
        })
    }

    /// Runs one message through connection (endpoint, identity) after
    /// `history`, with the ledger count at `used`; cached.
    fn conn_step(
        &self,
        e: usize,
        who: usize,
        history: &[(Msg, u64)],
        msg: Msg,
        used: u64,
    ) -> ConnStep {
        let cache_key = ((e, who, history.to_vec()), msg, used);
        if let Some(step) = self.conn_steps.lock().unwrap().get(&cache_key) {
            return step.clone();
        }
        let mut conn = self.conn_after(e, who, history);
        let step = self.run_conn(e, who, &mut conn, history, msg, used);
        if step.advance {
            let mut next = history.to_vec();
            next.push((step.taken.unwrap_or(msg), used));
            self.live_conns.lock().unwrap().insert((e, who, next), conn);
        } else {
            self.live_conns
                .lock()
                .unwrap()
                .insert((e, who, history.to_vec()), conn);
        }
        self.conn_steps
            .lock()
            .unwrap()
            .insert(cache_key, step.clone());
        step
    }

    /// The live connection after `history`, rebuilt by replay if the one
    /// kept was consumed by another branch.
    fn conn_after(&self, e: usize, who: usize, history: &[(Msg, u64)]) -> ServerConnection {
        if let Some(c) = self
            .live_conns
            .lock()
            .unwrap()
            .remove(&(e, who, history.to_vec()))
        {
            return c;
        }
        let mut conn = self.servers[e].connection(ClientId(NAMES[who].into()));
        for (k, &(m, used)) in history.iter().enumerate() {
            self.prepare(e, who, used, k);
            conn.receive(&m.bytes())
                .expect("a replayed transition succeeds again");
        }
        conn
    }

    fn prepare(&self, e: usize, who: usize, used: u64, step: usize) {
        self.counts.lock().unwrap()[who] = used;
        self.seeds[e].rekey(key(&[e as u64, who as u64, used, step as u64]));
    }

    fn run_conn(
        &self,
        e: usize,
        who: usize,
        conn: &mut ServerConnection,
        history: &[(Msg, u64)],
        msg: Msg,
        used: u64,
    ) -> ConnStep {
        self.prepare(e, who, used, history.len());
        let (round, sessions) = (conn.round(), conn.sessions());
        let bytes = msg.bytes();
        match conn.receive(&bytes) {
            Ok(mut reply) => {
                let handed_out = self.seeds[e].take_handed_out();
                if self.server == Server::LeaksSeed {
                    if let Some(seed) = handed_out.last() {
                        reply.extend_from_slice(seed);
                    }
                }
                if self.server == Server::LeaksPermutation && handed_out.len() >= 3 {
                    // The endpoint draws its generator's seed, then the
                    // 32-byte session seed.
                    let mut bytes = [0u8; 32];
                    bytes[..16].copy_from_slice(&handed_out[1]);
                    bytes[16..].copy_from_slice(&handed_out[2]);
                    let len = self.servers[0].model().stages()[0].output_len();
                    let sigma = SessionSeed::from_bytes(bytes)
                        .permutation(0, len, Granularity::Element)
                        .unwrap();
                    for k in 0..sigma.len() {
                        reply.extend_from_slice(&(sigma.image(k) as u32).to_le_bytes());
                    }
                }
                let secrets = self.secrets(&handed_out);
                let secret_on_wire = reply.windows(16).any(|w| secrets.contains(w));
                // MC-5: an upload the server took must carry the session
                // id of the accept that opened the session in flight.
                let mixed_sessions = round.is_some()
                    && Upload::decode(&self.ctx, &bytes)
                        .map(|u| Some(u.session()) != self.session_of(e, who, history))
                        .unwrap_or(true);
                let name = match round {
                    None => format!("e{e}.accept({} #{})", NAMES[who], sessions + 1),
                    Some(r) => format!("e{e}.response({} #{sessions}, round {r})", NAMES[who]),
                };
                ConnStep {
                    reply: Some(Msg::intern(reply, name)),
                    advance: true,
                    round: conn.round(),
                    sessions: conn.sessions(),
                    ledger_after: self.counts.lock().unwrap()[who],
                    mixed_sessions,
                    evaluated: round,
                    refusal_changed_state: false,
                    secret_on_wire,
                    closed: round.is_some() && conn.round().is_none(),
                    taken: None,
                }
            }
            Err(_) => {
                let ledger_after = self.counts.lock().unwrap()[who];
                let unchanged =
                    conn.round() == round && conn.sessions() == sessions && ledger_after == used;
                if self.server == Server::NoRoundCheck {
                    if let Some(step) = self.rewound(e, who, history, msg, used, sessions) {
                        return step;
                    }
                }
                if self.server == Server::NoSessionCheck && round.is_some() {
                    if let Some(step) = self.adopted(e, who, conn, history, msg, used) {
                        return step;
                    }
                }
                ConnStep {
                    reply: None,
                    advance: false,
                    round,
                    sessions,
                    ledger_after,
                    mixed_sessions: false,
                    evaluated: None,
                    refusal_changed_state: !unchanged,
                    secret_on_wire: false,
                    closed: false,
                    taken: None,
                }
            }
        }
    }

    /// What must never reach the wire (MC-7): every 16 bytes the server's
    /// seed source has handed out, and the first 16 bytes of the u32
    /// little-endian encoding of each round's permutation under any 32
    /// consecutive handed-out bytes taken as a session seed.
    fn secrets(&self, handed_out: &[[u8; 16]]) -> std::sync::MutexGuard<'_, HashSet<[u8; 16]>> {
        let mut secrets = self.secrets.lock().unwrap();
        secrets.extend(handed_out.iter().copied());
        for pair in handed_out.windows(2) {
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(&pair[0]);
            bytes[16..].copy_from_slice(&pair[1]);
            let seed = SessionSeed::from_bytes(bytes);
            for (r, stage) in self.servers[0].model().stages().iter().enumerate() {
                let sigma = seed
                    .permutation(r as u64, stage.output_len(), Granularity::Element)
                    .unwrap();
                let encoded: Vec<u8> = (0..sigma.len())
                    .flat_map(|k| (sigma.image(k) as u32).to_le_bytes())
                    .collect();
                if let Some(head) = encoded.get(..16) {
                    secrets.insert(head.try_into().unwrap());
                }
            }
        }
        secrets
    }

    /// The session id of the session in flight after `history`: from the
    /// accept that answered its last SessionRequest.
    fn session_of(&self, e: usize, who: usize, history: &[(Msg, u64)]) -> Option<[u8; 16]> {
        let start = history.iter().rposition(|(m, _)| self.is_request(*m))?;
        let (m, used) = history[start];
        let step = self.conn_step(e, who, &history[..start], m, used);
        let accept = SessionAccept::decode(&self.ctx, &step.reply?.bytes()).ok()?;
        Some(accept.session())
    }

    fn is_request(&self, m: Msg) -> bool {
        SessionRequest::decode(&self.ctx, &m.bytes()).is_ok()
    }

    /// The broken server without a round check: an upload of the session
    /// in flight for a round already answered is evaluated again, on the
    /// session rewound to before that round. The connection itself stays
    /// where it was.
    fn rewound(
        &self,
        e: usize,
        who: usize,
        history: &[(Msg, u64)],
        msg: Msg,
        used: u64,
        sessions: u64,
    ) -> Option<ConnStep> {
        let upload = Upload::decode(&self.ctx, &msg.bytes()).ok()?;
        let start = history.iter().rposition(|(m, _)| self.is_request(*m))?;
        let before = start + 1 + upload.round() as usize;
        if before >= history.len() {
            return None;
        }
        let mut old = self.conn_after(e, who, &history[..before]);
        self.prepare(e, who, used, before);
        let reply = old.receive(&msg.bytes()).ok()?;
        Some(ConnStep {
            reply: Some(Msg::intern(
                reply,
                format!(
                    "e{e}.response again({} #{sessions}, round {})",
                    NAMES[who],
                    upload.round()
                ),
            )),
            advance: false,
            round: None,
            sessions,
            ledger_after: used,
            mixed_sessions: false,
            evaluated: Some(upload.round()),
            refusal_changed_state: false,
            secret_on_wire: false,
            closed: false,
            taken: None,
        })
    }

    /// The broken server without a session check: an upload of another
    /// session for the round the session in flight waits for is taken as
    /// this session's (its session id overwritten with this one's, as if
    /// the field were never read) and evaluated.
    fn adopted(
        &self,
        e: usize,
        who: usize,
        conn: &mut ServerConnection,
        history: &[(Msg, u64)],
        msg: Msg,
        used: u64,
    ) -> Option<ConnStep> {
        let bytes = msg.bytes();
        let upload = Upload::decode(&self.ctx, &bytes).ok()?;
        let ours = self.session_of(e, who, history)?;
        if upload.session() == ours || Some(upload.round()) != conn.round() {
            return None;
        }
        let at = bytes.windows(16).position(|w| w == upload.session())?;
        let mut patched = bytes.to_vec();
        patched[at..at + 16].copy_from_slice(&ours);
        self.prepare(e, who, used, history.len());
        let sessions = conn.sessions();
        let reply = conn.receive(&patched).ok()?;
        Some(ConnStep {
            reply: Some(Msg::intern(
                reply,
                format!(
                    "e{e}.response to another session's upload({} #{sessions})",
                    NAMES[who]
                ),
            )),
            advance: true,
            round: conn.round(),
            sessions,
            ledger_after: used,
            mixed_sessions: true,
            evaluated: Some(upload.round()),
            refusal_changed_state: false,
            secret_on_wire: false,
            closed: conn.round().is_none(),
            taken: Some(Msg::intern(
                patched,
                format!("{msg:?} as e{e}'s {} session", NAMES[who]),
            )),
        })
    }

    /// The honest client receives `msg` after `history`; `None` when it
    /// refuses it, else the next upload or the logits. Cached.
    fn client_step(&self, history: &[Msg], msg: Msg) -> ClientStep {
        let cache_key = (history.to_vec(), msg);
        if let Some(step) = self.client_steps.lock().unwrap().get(&cache_key) {
            return step.clone();
        }
        let mut session = self.client_after(history);
        let before = format!("{session:?}");
        let outcome = match session.receive(&msg.bytes()) {
            Ok(ClientEvent::Send(next)) => {
                let label = format!("alice.upload (round {})", history.len());
                Some(Ok(Msg::intern(next, label)))
            }
            Ok(ClientEvent::Done(logits)) => Some(Err(logits)),
            Err(_) => None,
        };
        let step = ClientStep {
            // MC-3 on the client: a refusal leaves it where it was (its
            // state and round, as its Debug output shows them).
            refusal_changed_state: outcome.is_none() && format!("{session:?}") != before,
            outcome,
        };
        let mut next = history.to_vec();
        if step.outcome.is_some() {
            next.push(msg);
        }
        self.live_clients.lock().unwrap().insert(next, session);
        self.client_steps
            .lock()
            .unwrap()
            .insert(cache_key, step.clone());
        step
    }

    fn client_after(&self, history: &[Msg]) -> ClientSession {
        if let Some(s) = self.live_clients.lock().unwrap().remove(history) {
            return s;
        }
        let (mut session, _) = self.start_client(ALICE);
        for m in history {
            session
                .receive(&m.bytes())
                .expect("a replayed client step succeeds again");
        }
        session
    }

    /// Applies a server step's outcome to the state.
    fn apply(&self, s: &mut State, e: usize, who: usize, msg: Msg, step: &ConnStep) {
        let used = s.ledger[who];
        s.rejected_changed_state |= step.refusal_changed_state;
        s.secret_on_wire |= step.secret_on_wire;
        s.mixed_sessions |= step.mixed_sessions;
        s.ledger[who] = step.ledger_after;
        let Some(reply) = step.reply else { return };
        if step.evaluated.is_none() {
            s.accepted[who] += 1;
        }
        if let Some(r) = step.evaluated {
            let at = (e as u8, who as u8, step.sessions, r);
            s.evaluated_twice |= !s.evaluated.insert(at);
        }
        if step.closed && self.server == Server::LedgerChargedAfterWork {
            // The broken ledger counts the session only now.
            s.ledger[who] = used + 1;
        }
        if step.advance {
            let conn = &mut s.conns[e][who];
            conn.history.push((step.taken.unwrap_or(msg), used));
            conn.round = step.round;
            conn.sessions = step.sessions;
        }
        s.seen.insert(reply);
        if who == ALICE && e == 0 {
            s.net.insert(Packet {
                dest: Dest::Client,
                msg: reply,
                copies: self.bounds.duplicates,
            });
        }
    }
}

impl Model for System {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            ledger: [0; 2],
            accepted: [0; 2],
            conns: Default::default(),
            alice: Honest::Idle,
            net: BTreeSet::new(),
            seen: BTreeSet::new(),
            mallory_sends: self.bounds.mallory_sends,
            mallory_session: self.bounds.mallory_session,
            crashes: self.bounds.crashes,
            evaluated: BTreeSet::new(),
            evaluated_twice: false,
            rejected_changed_state: false,
            response_out_of_order: false,
            mixed_sessions: false,
            secret_on_wire: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.alice == Honest::Idle {
            actions.push(Action::AliceStarts);
        }
        for p in &s.net {
            actions.push(Action::Deliver(p.clone()));
            if p.copies > 0 {
                actions.push(Action::Duplicate(p.clone()));
            }
            if self.bounds.drops {
                actions.push(Action::Drop(p.clone()));
            }
        }
        if s.mallory_sends > 0 {
            for &msg in &s.seen {
                for endpoint in 0..ENDPOINTS as u8 {
                    actions.push(Action::MallorySends { msg, endpoint });
                }
            }
            if s.mallory_session {
                for endpoint in 0..ENDPOINTS as u8 {
                    actions.push(Action::MalloryStarts { endpoint });
                }
            }
        }
        if s.crashes > 0 {
            for endpoint in 0..ENDPOINTS as u8 {
                actions.push(Action::Crash { endpoint });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let duplicate = matches!(action, Action::Duplicate(_));
        match action {
            Action::AliceStarts => {
                let request = self.request(ALICE);
                s.alice = Honest::Running {
                    history: Vec::new(),
                };
                s.seen.insert(request);
                s.net.insert(Packet {
                    dest: Dest::Server,
                    msg: request,
                    copies: self.bounds.duplicates,
                });
            }
            Action::Deliver(p) | Action::Duplicate(p) => {
                s.net.remove(&p);
                if duplicate {
                    s.net.insert(Packet {
                        copies: p.copies - 1,
                        ..p.clone()
                    });
                }
                match p.dest {
                    Dest::Server => {
                        let conn = s.conns[0][ALICE].clone();
                        let step = self.conn_step(0, ALICE, &conn.history, p.msg, s.ledger[ALICE]);
                        self.apply(&mut s, 0, ALICE, p.msg, &step);
                    }
                    Dest::Client => {
                        let Honest::Running { history } = &s.alice else {
                            return Some(s);
                        };
                        let history = history.clone();
                        let step = self.client_step(&history, p.msg);
                        s.rejected_changed_state |= step.refusal_changed_state;
                        if step.outcome.is_some() && !history.is_empty() {
                            // MC-2: the k-th response taken answers round k − 1.
                            let round = Response::decode(&self.ctx, &p.msg.bytes())
                                .map(|r| r.round() as usize);
                            s.response_out_of_order |= round.ok() != Some(history.len() - 1);
                        }
                        match step.outcome {
                            None => {}
                            Some(Ok(upload)) => {
                                let mut h = history;
                                h.push(p.msg);
                                s.alice = Honest::Running { history: h };
                                s.seen.insert(upload);
                                s.net.insert(Packet {
                                    dest: Dest::Server,
                                    msg: upload,
                                    copies: self.bounds.duplicates,
                                });
                            }
                            Some(Err(logits)) => {
                                s.alice = Honest::Done {
                                    exact: logits == self.reference,
                                    accepted: history.len() + 1,
                                };
                            }
                        }
                    }
                }
            }
            Action::Drop(p) => {
                s.net.remove(&p);
            }
            Action::MallorySends { msg, endpoint } => {
                s.mallory_sends -= 1;
                let e = endpoint as usize;
                let conn = s.conns[e][MALLORY].clone();
                let step = self.conn_step(e, MALLORY, &conn.history, msg, s.ledger[MALLORY]);
                self.apply(&mut s, e, MALLORY, msg, &step);
            }
            Action::MalloryStarts { endpoint } => {
                s.mallory_sends -= 1;
                s.mallory_session = false;
                let request = self.request(MALLORY);
                s.seen.insert(request);
                let e = endpoint as usize;
                let conn = s.conns[e][MALLORY].clone();
                let step = self.conn_step(e, MALLORY, &conn.history, request, s.ledger[MALLORY]);
                self.apply(&mut s, e, MALLORY, request, &step);
            }
            Action::Crash { endpoint } => {
                s.crashes -= 1;
                // Its connections and sessions are gone; the ledger stays.
                s.conns[endpoint as usize] = Default::default();
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            // MC-1
            Property::always(
                "no identity is served more sessions than its budget",
                |m: &System, s: &State| s.accepted.iter().all(|&a| a <= m.bounds.budget),
            ),
            // MC-2
            Property::always(ONCE, |_: &System, s: &State| !s.evaluated_twice),
            Property::always(
                "responses are accepted in order",
                |_: &System, s: &State| !s.response_out_of_order,
            ),
            // MC-3
            Property::always(
                "a refused message changes no state",
                |_: &System, s: &State| !s.rejected_changed_state,
            ),
            // MC-5
            Property::always(UNMIXED, |_: &System, s: &State| !s.mixed_sessions),
            // MC-4
            Property::always(
                "logits only after every round, and the reference's",
                |m: &System, s: &State| match s.alice {
                    Honest::Done { exact, accepted } => exact && accepted == m.rounds as usize + 1,
                    _ => true,
                },
            ),
            // MC-7
            Property::always(
                "no server secret reaches the wire",
                |_: &System, s: &State| !s.secret_on_wire,
            ),
            // Sanity: the bounds let the honest client finish, and let
            // mallory get a session of its own accepted on both endpoints.
            Property::sometimes("the honest client can finish", |_: &System, s: &State| {
                matches!(s.alice, Honest::Done { exact: true, .. })
            }),
            Property::sometimes("mallory reaches its budget", |m: &System, s: &State| {
                s.accepted[MALLORY] == m.bounds.budget
            }),
            // MC-6
            Property::eventually(LIVE, |_: &System, s: &State| {
                matches!(s.alice, Honest::Done { .. })
            }),
        ]
    }
}

fn check(server: Server, bounds: Bounds) -> impl Checker<System> {
    let checker = System::new(server, bounds).checker().spawn_bfs().join();
    eprintln!(
        "{server:?} {bounds:?}: {} states ({} unique), depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    );
    checker
}

/// Safety bounds: mallory may send three messages (one more than its
/// budget) to either endpoint, one endpoint may crash, the network may drop
/// or duplicate each of the honest client's messages.
const SAFETY: Bounds = Bounds {
    budget: 2,
    mallory_sends: 3,
    mallory_session: true,
    crashes: 1,
    drops: true,
    duplicates: 1,
};

/// Liveness bounds: a network that reorders, delays and duplicates but
/// eventually delivers, no crash; mallory still interferes.
const LIVENESS: Bounds = Bounds {
    budget: 2,
    mallory_sends: 3,
    mallory_session: true,
    crashes: 0,
    drops: false,
    duplicates: 1,
};

fn assert_holds(checker: &impl Checker<System>, liveness: bool) {
    for p in checker.model().properties() {
        let found = checker.discovery(p.name);
        match p.expectation {
            Expectation::Always => {
                if let Some(path) = found {
                    panic!("{}: counterexample\n{path:?}", p.name);
                }
            }
            Expectation::Sometimes => {
                assert!(found.is_some(), "never reached: {}", p.name);
            }
            Expectation::Eventually if liveness => {
                if let Some(path) = found {
                    panic!("{}: counterexample\n{path:?}", p.name);
                }
            }
            // Drops and crashes strand the honest client: liveness is
            // checked on a network that eventually delivers.
            Expectation::Eventually => {}
        }
    }
}

/// The broken variant must fail `property`; prints the trace it found.
fn assert_caught(server: Server, bounds: Bounds, property: &'static str) {
    let checker = check(server, bounds);
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("{server:?} was not caught by {property:?}"));
    eprintln!(
        "{server:?} caught by {property:?}:\n{:#?}",
        path.into_actions()
    );
}

// MC-1..MC-5, MC-7 on the crate's server. MC-6 must fail here: a network
// that drops the honest client's message strands it (there is no
// retransmission in the protocol core), and the checker must say so.
#[test]
fn the_real_server_keeps_every_safety_property() {
    let checker = check(Server::Real, SAFETY);
    assert_holds(&checker, false);
    assert!(
        checker.discovery(LIVE).is_some(),
        "a dropped message must strand the honest client"
    );
}

// MC-6 (and the safety properties again) on a network that delivers.
#[test]
fn the_honest_client_always_finishes_when_the_network_delivers() {
    assert_holds(&check(Server::Real, LIVENESS), true);
}

// Each property catches the bug it is there for.
#[test]
fn a_ledger_charged_after_the_work_breaks_the_budget() {
    assert_caught(Server::LedgerChargedAfterWork, SAFETY, BUDGET);
}

#[test]
fn a_server_without_its_round_check_evaluates_a_round_twice() {
    assert_caught(Server::NoRoundCheck, SAFETY, ONCE);
}

#[test]
fn a_server_without_its_session_check_mixes_sessions() {
    assert_caught(Server::NoSessionCheck, SAFETY, UNMIXED);
}

#[test]
fn a_ledger_that_counts_refusals_changes_state_on_a_refusal() {
    assert_caught(Server::LedgerCountsRefusals, SAFETY, REFUSAL);
}

#[test]
fn a_server_that_sends_its_seed_is_caught() {
    assert_caught(Server::LeaksSeed, SAFETY, SECRET);
}

#[test]
fn a_server_that_sends_a_permutation_is_caught() {
    assert_caught(Server::LeaksPermutation, SAFETY, SECRET);
}
