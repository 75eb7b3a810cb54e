//! The server (NET-4..NET-9): accepts TLS connections, authenticates each
//! client by its bearer token, and runs its sessions against one
//! [`Endpoint`], one connection per task, the arithmetic on the blocking
//! pool.

use super::auth::TokenTable;
use super::error::{NetError, NetErrorKind};
use super::frame::{
    read_frame, valid_name, write_frame, Control, FrameError, Payload, Refusal, Timeouts,
    MAX_CONTROL_FRAME, MAX_FRAME,
};
use crate::protocol::{
    AwaitingUpload, ClientId, Endpoint, ErrorKind, Fault, Rejected, Server, ServerStep,
    SessionRequest, Upload, VERSION,
};
use crate::rlwe::Context;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How the server runs: TLS, tokens and limits (NET-8).
pub struct ServeConfig {
    /// The server's TLS 1.3 configuration ([`super::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Who may connect ([`TokenTable::load`]).
    pub tokens: TokenTable,
    /// Connections served at once; one more is refused as busy.
    pub max_sessions: usize,
    /// Connections in the TLS handshake at once (NET-8). Past it a new TCP
    /// connection is closed at once, before any TLS work: a flood of
    /// connections that never finish their handshake holds at most this
    /// many tasks and sockets, each for at most the read timeout.
    pub max_handshakes: usize,
    /// The idle and read timeouts.
    pub timeouts: Timeouts,
    /// How long sessions in flight may run on after a shutdown begins.
    pub grace: Duration,
    /// One line per connection and session on standard error.
    pub log: bool,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("tokens", &self.tokens)
            .field("max_sessions", &self.max_sessions)
            .field("max_handshakes", &self.max_handshakes)
            .field("timeouts", &self.timeouts)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// The defaults: 16 connections, 64 handshakes at once, 60 s idle and
    /// read timeouts, 30 s of grace on shutdown, no log.
    pub fn new(tls: Arc<rustls::ServerConfig>, tokens: TokenTable) -> Self {
        Self {
            tls,
            tokens,
            max_sessions: 16,
            max_handshakes: 64,
            timeouts: Timeouts {
                idle: Duration::from_secs(60),
                read: Duration::from_secs(60),
            },
            grace: Duration::from_secs(30),
            log: false,
        }
    }
}

/// Starts a graceful shutdown of a [`Service`] (NET-9).
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Stops accepting connections; sessions in flight run on until the
    /// grace deadline.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// What a run of the server did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Connections accepted.
    pub connections: u64,
    /// Sessions accepted (and charged).
    pub sessions: u64,
    /// Connections still open at the grace deadline, cut.
    pub cut_at_deadline: usize,
}

struct Shared {
    endpoint: Mutex<Endpoint>,
    ctx: Arc<Context>,
    acceptor: tokio_rustls::TlsAcceptor,
    tokens: TokenTable,
    slots: Arc<Semaphore>,
    /// NET-8: connections still in their TLS handshake.
    handshakes: Arc<Semaphore>,
    timeouts: Timeouts,
    hello: Vec<u8>,
    budget: u64,
    input: (u32, i64, i64),
    log: bool,
    sessions: AtomicU64,
}

/// A bound server: call [`Service::run`] to serve until shut down.
pub struct Service {
    listener: TcpListener,
    shared: Arc<Shared>,
    grace: Duration,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service({:?})", self.listener.local_addr().ok())
    }
}

impl Service {
    /// Listens on `addr` (port 0 for an ephemeral port) to serve
    /// `endpoint`'s model under its policy and ledger.
    pub async fn bind(
        addr: &str,
        endpoint: Endpoint,
        config: ServeConfig,
    ) -> Result<Self, NetError> {
        if config.max_sessions == 0 {
            return Err(NetError::config("max_sessions must be at least 1"));
        }
        if config.max_handshakes == 0 {
            return Err(NetError::config("max_handshakes must be at least 1"));
        }
        let ctx = endpoint.context().clone();
        let params = ctx.params();
        if !valid_name(params.name()) {
            return Err(NetError::config(format!(
                "parameter set name {:?} cannot be announced (NET-4)",
                params.name()
            )));
        }
        let hello = Control::Hello {
            protocol_version: VERSION,
            fingerprint: params.fingerprint(),
            set: params.name().to_owned(),
        }
        .encode();
        let model = endpoint.model();
        let input_len = u32::try_from(model.input_len())
            .map_err(|_| NetError::config("the model's input is too long to announce"))?;
        let input = (input_len, model.input().min, model.input().max);
        let budget = endpoint.policy().query_budget();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| NetError::config(format!("cannot listen on {addr}: {e}")))?;
        let (tx, _) = watch::channel(false);
        Ok(Self {
            listener,
            grace: config.grace,
            shared: Arc::new(Shared {
                endpoint: Mutex::new(endpoint),
                ctx,
                acceptor: tokio_rustls::TlsAcceptor::from(config.tls),
                tokens: config.tokens,
                slots: Arc::new(Semaphore::new(config.max_sessions)),
                handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
                timeouts: config.timeouts,
                hello,
                budget,
                input,
                log: config.log,
                sessions: AtomicU64::new(0),
            }),
            shutdown: ShutdownHandle(Arc::new(tx)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.listener
            .local_addr()
            .map_err(|e| NetError::config(format!("the listening address: {e}")))
    }

    /// A handle that shuts this server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until [`ShutdownHandle::shutdown`], then stops accepting and
    /// waits for the connections in flight up to the grace deadline (NET-9).
    pub async fn run(self) -> ServeSummary {
        let Service {
            listener,
            shared,
            grace,
            shutdown,
        } = self;
        let mut stop = shutdown.0.subscribe();
        let mut tasks = JoinSet::new();
        let mut connections = 0u64;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections += 1;
                        // NET-8: no handshake slot, no TLS work: close it.
                        let Ok(handshake) = shared.handshakes.clone().try_acquire_owned() else {
                            if shared.log {
                                eprintln!(
                                    "connection {connections} from {peer}: closed, too many TLS handshakes in progress"
                                );
                            }
                            drop(tcp);
                            continue;
                        };
                        let rx = shutdown.0.subscribe();
                        tasks.spawn(handle(shared.clone(), tcp, peer, connections, handshake, rx));
                    }
                    Err(e) => {
                        // E.g. out of file descriptors: the listener stays.
                        if shared.log {
                            eprintln!("accept failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        if shared.log && e.is_panic() {
                            eprintln!("a connection task panicked; the server goes on");
                        }
                    }
                }
            }
        }
        drop(listener);
        if shared.log {
            eprintln!(
                "shutting down: no new connections; {} in flight get up to {:.0} s",
                tasks.len(),
                grace.as_secs_f64()
            );
        }
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        let mut cut_at_deadline = 0;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    cut_at_deadline = tasks.len();
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
                joined = tasks.join_next() => if joined.is_none() { break },
            }
        }
        ServeSummary {
            connections,
            sessions: shared.sessions.load(Ordering::Relaxed),
            cut_at_deadline,
        }
    }
}

/// A refusal the server decided on, as an error that ends the connection.
fn refuse(r: Refusal) -> NetError {
    let fault = match r {
        Refusal::Busy | Refusal::ShuttingDown | Refusal::ServerError => Fault::Local,
        _ => Fault::Peer,
    };
    NetError {
        fault,
        kind: NetErrorKind::Refused(r),
    }
}

/// NET-7: what to tell a client whose connection ends with `e`; `None` when
/// the connection itself failed.
fn refusal_for(e: &NetError) -> Option<Refusal> {
    match (&e.kind, e.fault) {
        (NetErrorKind::Refused(r), _) => Some(r.clone()),
        (NetErrorKind::Protocol(ErrorKind::BudgetExhausted { used, budget }), _) => {
            Some(Refusal::BudgetExhausted {
                used: *used,
                budget: *budget,
            })
        }
        (NetErrorKind::Timeout(_), _) => Some(Refusal::Timeout),
        (NetErrorKind::Io { .. } | NetErrorKind::Closed(_) | NetErrorKind::Tls(_), _) => None,
        (_, Fault::Peer) => Some(Refusal::ProtocolViolation(e.kind.to_string())),
        (_, Fault::Local) => Some(Refusal::ServerError),
    }
}

fn internal(what: &'static str) -> NetError {
    NetError::local(NetErrorKind::Internal(what))
}

/// Runs CPU-heavy work on the blocking pool (NET-8).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| internal("a computation failed"))?
}

fn micros(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

struct Conn {
    stream: ServerStream,
    timeouts: Timeouts,
}

impl Conn {
    async fn send(&mut self, payload: &[u8]) -> Result<(), NetError> {
        write_frame(&mut self.stream, payload, self.timeouts.read)
            .await
            .map(|_| ())
    }

    async fn read(&mut self, limit: usize) -> Result<Option<Vec<u8>>, NetError> {
        read_frame(&mut self.stream, limit, self.timeouts).await
    }

    async fn send_time(&mut self, micros: u64) -> Result<(), NetError> {
        self.send(&Control::ServerTime { micros }.encode()).await
    }
}

/// What the log says about a connection.
#[derive(Default)]
struct ConnLog {
    client: Option<ClientId>,
    sessions: u64,
}

async fn handle(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    handshake: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let t = shared.timeouts;
    let accepted = tokio::time::timeout(t.read, shared.acceptor.accept(tcp)).await;
    // The handshake is over either way: its slot goes back (NET-8).
    drop(handshake);
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if shared.log {
                eprintln!("connection {id} from {peer}: TLS handshake failed: {e}");
            }
            return;
        }
        Err(_) => {
            if shared.log {
                eprintln!("connection {id} from {peer}: TLS handshake timed out");
            }
            return;
        }
    };
    let mut conn = Conn {
        stream,
        timeouts: t,
    };
    let mut log = ConnLog::default();
    let result = serve(&shared, &mut conn, &mut shutdown, &mut log, id).await;
    let who = log
        .client
        .as_ref()
        .map_or("unauthenticated".to_owned(), |c| {
            format!("client {:?}", c.0)
        });
    match result {
        Ok(()) => {
            if shared.log {
                eprintln!(
                    "connection {id} from {peer} ({who}): closed by the client after {} session(s)",
                    log.sessions
                );
            }
        }
        Err(e) => {
            let refusal = refusal_for(&e);
            if let Some(r) = &refusal {
                if conn
                    .send(&Control::Refusal(r.clone()).encode())
                    .await
                    .is_ok()
                {
                    linger(&mut conn.stream, t.read).await;
                }
            }
            if shared.log {
                eprintln!(
                    "connection {id} from {peer} ({who}): closed after {} session(s): {e}{}",
                    log.sessions,
                    refusal.map_or(String::new(), |r| format!(" (sent: {r})"))
                );
            }
        }
    }
    let _ = tokio::time::timeout(t.read, conn.stream.shutdown()).await;
}

/// After a refusal (NET-7): closes this side, then reads and drops what the
/// client may still be sending, for a bounded time, so that its unread
/// bytes do not make the kernel reset the connection before the client has
/// read the refusal.
async fn linger(stream: &mut ServerStream, limit: Duration) {
    let _ = tokio::time::timeout(limit, stream.shutdown()).await;
    let mut sink = vec![0u8; 64 << 10];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limit.min(Duration::from_secs(2)), drain).await;
}

/// One connection: Hello, Auth, Welcome, then sessions (NET-4..NET-6).
async fn serve(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    shutdown: &mut watch::Receiver<bool>,
    log: &mut ConnLog,
    id: u64,
) -> Result<(), NetError> {
    if *shutdown.borrow() {
        return Err(refuse(Refusal::ShuttingDown));
    }
    // NET-8: the slot is held for the connection's life.
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        return Err(refuse(Refusal::Busy));
    };
    conn.send(&shared.hello).await?;

    // NET-5: the first frame is Auth; nothing before it reaches the ledger.
    let first = match conn.read(MAX_CONTROL_FRAME).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(NetError::peer(NetErrorKind::Closed(
                "before authenticating",
            )))
        }
        // Larger than any Auth can be: a client without credentials.
        Err(NetError {
            kind: NetErrorKind::Frame(FrameError::TooLarge { .. }),
            ..
        }) => return Err(refuse(Refusal::Unauthenticated)),
        Err(e) => return Err(e),
    };
    let client = match Payload::parse(&first) {
        Ok(Payload::Control(Control::Auth { token })) => shared.tokens.authenticate(&token),
        _ => None,
    }
    .ok_or_else(|| refuse(Refusal::Unauthenticated))?;
    log.client = Some(client.clone());
    let used = {
        let (shared, client) = (shared.clone(), client.clone());
        blocking(move || {
            let endpoint = shared
                .endpoint
                .lock()
                .map_err(|_| internal("ledger lock"))?;
            Ok(endpoint.queries_used(&client)?)
        })
        .await?
    };
    let (input_len, input_min, input_max) = shared.input;
    conn.send(
        &Control::Welcome {
            used,
            budget: shared.budget,
            input_len,
            input_min,
            input_max,
            client_id: client.0.clone(),
        }
        .encode(),
    )
    .await?;

    loop {
        // Between sessions: the next SessionRequest, a close, or shutdown.
        let frame = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Err(refuse(Refusal::ShuttingDown)),
            frame = conn.read(MAX_FRAME) => frame?,
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        if *shutdown.borrow() {
            return Err(refuse(Refusal::ShuttingDown));
        }
        expect_message(&frame, "a SessionRequest")?;
        let (mut session, accept, took) = {
            let (shared, client) = (shared.clone(), client.clone());
            blocking(move || {
                let t = Instant::now();
                let request = SessionRequest::decode(&shared.ctx, &frame)?;
                let (session, accept) = {
                    let mut endpoint = shared
                        .endpoint
                        .lock()
                        .map_err(|_| internal("ledger lock"))?;
                    // PROTO-8: charged here, once, before any work.
                    endpoint.accept(&client, request)?
                };
                Ok((session, accept.encode(&shared.ctx), micros(t)))
            })
            .await?
        };
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        log.sessions += 1;
        if shared.log {
            eprintln!(
                "connection {id} (client {:?}): session {} accepted",
                client.0, log.sessions
            );
        }
        conn.send(&accept).await?;
        conn.send_time(took).await?;
        loop {
            let frame = conn
                .read(MAX_FRAME)
                .await?
                .ok_or(NetError::peer(NetErrorKind::Closed(
                    "in the middle of a session",
                )))?;
            expect_message(&frame, "an Upload")?;
            let (next, response, took) = run_round(shared, session, frame).await?;
            conn.send(&response).await?;
            conn.send_time(took).await?;
            match next {
                Some(s) => session = s,
                None => break,
            }
        }
    }
}

/// Decodes an upload, evaluates the round and encodes the response, on the
/// blocking pool.
async fn run_round(
    shared: &Arc<Shared>,
    session: Server<AwaitingUpload>,
    frame: Vec<u8>,
) -> Result<(Option<Server<AwaitingUpload>>, Vec<u8>, u64), NetError> {
    let ctx = shared.ctx.clone();
    blocking(move || {
        let t = Instant::now();
        let upload = Upload::decode(&ctx, &frame)?;
        let (next, response) = match session.receive_upload(upload) {
            Ok(ServerStep::Continue(s, r)) => (Some(s), r),
            Ok(ServerStep::Closed(r)) => (None, r),
            Err(Rejected { error, .. }) => return Err(error.into()),
        };
        Ok((next, response.encode(&ctx), micros(t)))
    })
    .await
}

/// The frame must be a protocol message: a control message here is a
/// protocol violation of the client's.
fn expect_message(frame: &[u8], expected: &'static str) -> Result<(), NetError> {
    match Payload::parse(frame).map_err(NetError::peer_frame)? {
        Payload::Message(_) => Ok(()),
        Payload::Control(c) => Err(NetError::peer(NetErrorKind::Unexpected {
            expected,
            got: format!("a {c} control message"),
        })),
    }
}
