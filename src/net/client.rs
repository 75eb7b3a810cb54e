//! The client (NET-3..NET-6): connects over TLS, checks the server's
//! Hello, authenticates, then runs inferences one session each, measuring
//! per round its own time, the server's, the network's and the bytes.

use super::error::{NetError, NetErrorKind};
use super::frame::{
    read_frame, write_frame, Control, Payload, Timeouts, MAX_CONTROL_FRAME, MAX_FRAME,
};
use super::tls::{self, ClientStream};
use crate::params::ParameterSet;
use crate::protocol::{
    Client, ClientStep, ErrorKind, ProtocolError, Response, SessionAccept, VERSION,
};
use crate::rlwe::Context;
use crate::rng::SeedSource;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How to reach a server and who to be.
#[derive(Clone)]
pub struct ConnectConfig {
    /// `HOST:PORT` to connect to.
    pub addr: String,
    /// The name the server's certificate must carry (DNS name or IP).
    pub server_name: String,
    /// The client's TLS configuration ([`tls::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// The bearer token ([`super::read_token_file`]).
    pub token: Vec<u8>,
    /// Connecting, and every wait for the server: a round's response
    /// included, so it must exceed the server's slowest round.
    pub timeout: Duration,
    /// The parameter set the server must announce; `None` accepts any
    /// shipped set whose fingerprint matches the announced one (NET-4).
    pub parameters: Option<ParameterSet>,
}

impl std::fmt::Debug for ConnectConfig {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the handshake established (NET-4, NET-5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// The parameter set's name.
    pub set: String,
    /// Its fingerprint (PARAM-5).
    pub fingerprint: u64,
    /// The identity the server matched the token to.
    pub client_id: String,
    /// Sessions that identity had used when this connection opened.
    pub used: u64,
    /// The policy's budget per identity.
    pub budget: u64,
    /// Values one input has.
    pub input_len: usize,
    /// The least value an input may hold.
    pub input_min: i64,
    /// The greatest value an input may hold.
    pub input_max: i64,
}

/// Time and traffic of one exchange (the session setup, or one round).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Exchange {
    /// This side's computation: key generation for the setup; for round r
    /// the decryption of response r, the client steps and the encryption of
    /// the next upload (round 0 also the first encryption).
    pub client_ms: f64,
    /// The server's computation, as it reports it (decode, evaluate, encode).
    pub server_ms: f64,
    /// The round trip less the server's computation: transfer, TLS, queueing.
    pub network_ms: f64,
    /// Frame bytes sent (length prefixes included, TLS records not).
    pub up_bytes: usize,
    /// Frame bytes received.
    pub down_bytes: usize,
}

impl Exchange {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Exchange) {
        self.client_ms += other.client_ms;
        self.server_ms += other.server_ms;
        self.network_ms += other.network_ms;
        self.up_bytes += other.up_bytes;
        self.down_bytes += other.down_bytes;
    }
}

/// One inference over the network.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference {
    /// The logits, in true order; for a session of several images, theirs
    /// one after another.
    pub logits: Vec<i64>,
    /// The images the session carried (PROTO-11).
    pub batch: usize,
    /// SessionRequest → SessionAccept: the keys.
    pub setup: Exchange,
    /// One per encrypted round.
    pub rounds: Vec<Exchange>,
}

impl Inference {
    /// Each image's logits, in the order the images were given.
    pub fn image_logits(&self) -> impl Iterator<Item = &[i64]> {
        crate::protocol::image_logits(&self.logits, self.batch)
    }

    /// The setup and every round, summed.
    pub fn total(&self) -> Exchange {
        let mut t = self.setup;
        for r in &self.rounds {
            t.add(r);
        }
        t
    }
}

/// An authenticated connection to a server.
pub struct Connection {
    stream: ClientStream,
    ctx: Arc<Context>,
    info: ServerInfo,
    timeouts: Timeouts,
    connect_ms: f64,
    /// Seeds each session's keys and noise (KEY-3).
    seeds: Arc<dyn SeedSource>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({:?})", self.info)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn unexpected(expected: &'static str, got: &Control) -> NetError {
    NetError::peer(NetErrorKind::Unexpected {
        expected,
        got: format!("a {got} control message"),
    })
}

fn handshake(message: String) -> NetError {
    NetError::peer(NetErrorKind::Handshake(message))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NetError::local(NetErrorKind::Internal("a computation failed")))?
}

/// What the client does with a response.
enum Next {
    Upload(Client<crate::protocol::AwaitingResponse>, Vec<u8>),
    Done(Vec<i64>),
}

impl Connection {
    /// Connects, checks the server's Hello (NET-4), authenticates (NET-5).
    pub async fn connect(config: &ConnectConfig) -> Result<Self, NetError> {
        let t = Instant::now();
        let timeouts = Timeouts {
            idle: config.timeout,
            read: config.timeout,
        };
        let mut stream = tls::connect(
            &config.addr,
            &config.server_name,
            config.tls.clone(),
            config.timeout,
        )
        .await?;
        let (protocol_version, fingerprint, set) = match read_control(&mut stream, timeouts).await?
        {
            Control::Hello {
                protocol_version,
                fingerprint,
                set,
            } => (protocol_version, fingerprint, set),
            other => return Err(unexpected("a Hello", &other)),
        };
        if protocol_version != VERSION {
            return Err(handshake(format!(
                "the server speaks protocol version {protocol_version}, this client {VERSION}"
            )));
        }
        let params = match &config.parameters {
            Some(p) if p.name() != set => {
                return Err(handshake(format!(
                    "the server runs parameter set {set:?}, this client expects {:?}",
                    p.name()
                )))
            }
            Some(p) => p.clone(),
            None => ParameterSet::shipped(&set).map_err(|_| {
                handshake(format!(
                    "the server runs parameter set {set:?}, which this client does not ship"
                ))
            })?,
        };
        if params.fingerprint() != fingerprint {
            return Err(handshake(format!(
                "parameter set {set:?} has fingerprint {:#018x} here; the server announced {fingerprint:#018x}",
                params.fingerprint()
            )));
        }
        let ctx = Arc::new(Context::new(params));
        let auth = Control::Auth {
            token: config.token.clone(),
        };
        write_frame(&mut stream, &auth.encode(), timeouts.read).await?;
        let info = match read_control(&mut stream, timeouts).await? {
            Control::Welcome {
                used,
                budget,
                input_len,
                input_min,
                input_max,
                client_id,
            } => ServerInfo {
                set,
                fingerprint,
                client_id,
                used,
                budget,
                input_len: input_len as usize,
                input_min,
                input_max,
            },
            other => return Err(unexpected("a Welcome", &other)),
        };
        Ok(Connection {
            stream,
            ctx,
            info,
            timeouts,
            connect_ms: ms(t),
            seeds: crate::rng::os_seeds(),
        })
    }

    /// The same connection with each session's keys and noise drawn from
    /// `seeds` instead of the operating system (KEY-3: injected
    /// randomness).
    pub fn with_seed_source(mut self, seeds: Arc<dyn SeedSource>) -> Self {
        self.seeds = seeds;
        self
    }

    /// What the handshake established.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The context of the server's parameter set.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Time from the TCP connect to the Welcome, in milliseconds.
    pub fn connect_ms(&self) -> f64 {
        self.connect_ms
    }

    /// Checks an input against the model's length and range as the Welcome
    /// announced them, before a session (and a unit of budget) is spent.
    pub fn check_input(&self, input: &[i64]) -> Result<(), NetError> {
        let i = &self.info;
        if input.len() != i.input_len {
            return Err(ProtocolError::local(ErrorKind::InputLength {
                expected: i.input_len,
                got: input.len(),
            })
            .into());
        }
        if input
            .iter()
            .any(|v| !(i.input_min..=i.input_max).contains(v))
        {
            return Err(ProtocolError::local(ErrorKind::Malformed(
                "input value outside the model's declared input range",
            ))
            .into());
        }
        Ok(())
    }

    /// Runs one inference as one session (NET-6): the server charges it to
    /// this client's budget when it accepts it.
    pub async fn infer(&mut self, input: &[i64]) -> Result<Inference, NetError> {
        self.infer_batch(&[input]).await
    }

    /// Runs the inferences of several images as one session (PROTO-11),
    /// charged one query per image; the logits come back image after image
    /// ([`Inference::image_logits`]). The server refuses a number of images
    /// it does not serve before charging the session.
    pub async fn infer_batch(&mut self, inputs: &[&[i64]]) -> Result<Inference, NetError> {
        for input in inputs {
            self.check_input(input)?;
        }
        let batch = inputs.len();
        let t = Instant::now();
        let ctx = self.ctx.clone();
        let seeds = self.seeds.clone();
        let (client, request) = blocking(move || {
            let k = u32::try_from(batch).unwrap_or(u32::MAX);
            let (client, request) = Client::start_batch_with(ctx.clone(), k, &*seeds)?;
            Ok((client, request.encode(&ctx)))
        })
        .await?;
        let keygen_ms = ms(t);
        let (accept, mut setup) = self.exchange(&request).await?;
        setup.client_ms = keygen_ms;

        let t = Instant::now();
        let (ctx, input) = (self.ctx.clone(), inputs.concat());
        let (mut client, mut upload) = blocking(move || {
            let accept = SessionAccept::decode(&ctx, &accept)?;
            let client = client.receive_accept(accept).map_err(|r| r.error)?;
            let (client, upload) = client.send_input(&input).map_err(|r| r.error)?;
            Ok((client, upload.encode(&ctx)))
        })
        .await?;
        let mut pending_ms = ms(t);
        let mut rounds = Vec::new();
        loop {
            let (response, mut exchange) = self.exchange(&upload).await?;
            let t = Instant::now();
            let ctx = self.ctx.clone();
            let next = blocking(move || {
                let response = Response::decode(&ctx, &response)?;
                match client.receive_response(response).map_err(|r| r.error)? {
                    ClientStep::Continue(c, u) => Ok(Next::Upload(c, u.encode(&ctx))),
                    ClientStep::Done(logits) => Ok(Next::Done(logits)),
                }
            })
            .await?;
            exchange.client_ms = pending_ms + ms(t);
            pending_ms = 0.0;
            rounds.push(exchange);
            match next {
                Next::Upload(c, u) => (client, upload) = (c, u),
                Next::Done(logits) => {
                    return Ok(Inference {
                        logits,
                        batch,
                        setup,
                        rounds,
                    })
                }
            }
        }
    }

    /// Closes the connection cleanly (TLS close_notify).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(self.timeouts.read, self.stream.shutdown()).await;
    }

    async fn send(&mut self, payload: &[u8]) -> Result<usize, NetError> {
        write_frame(&mut self.stream, payload, self.timeouts.read).await
    }

    async fn read(&mut self, limit: usize) -> Result<Vec<u8>, NetError> {
        read_some(&mut self.stream, limit, self.timeouts).await
    }

    /// Sends a protocol message; returns the reply message and the
    /// exchange's time and traffic (NET-6: the reply is followed by the
    /// server's ServerTime). A Refusal is the typed error (NET-7). For a
    /// driver of its own (`service::Remote`); `client_ms` is left at 0.
    pub async fn exchange(&mut self, payload: &[u8]) -> Result<(Vec<u8>, Exchange), NetError> {
        let t = Instant::now();
        let up_bytes = self.send(payload).await?;
        let reply = self.read(MAX_FRAME).await?;
        match Payload::parse(&reply).map_err(NetError::peer_frame)? {
            Payload::Message(_) => {}
            Payload::Control(Control::Refusal(r)) => return Err(NetError::refused(r)),
            Payload::Control(c) => return Err(unexpected("a protocol message", &c)),
        }
        let micros = match read_control(&mut self.stream, self.timeouts).await? {
            Control::ServerTime { micros } => micros,
            other => return Err(unexpected("a ServerTime", &other)),
        };
        let round_trip_ms = ms(t);
        let server_ms = micros as f64 / 1e3;
        let down_bytes = 4 + reply.len() + 4 + Control::ServerTime { micros }.encode().len();
        Ok((
            reply,
            Exchange {
                client_ms: 0.0,
                server_ms,
                network_ms: (round_trip_ms - server_ms).max(0.0),
                up_bytes,
                down_bytes,
            },
        ))
    }
}

async fn read_some(
    stream: &mut ClientStream,
    limit: usize,
    timeouts: Timeouts,
) -> Result<Vec<u8>, NetError> {
    read_frame(stream, limit, timeouts)
        .await?
        .ok_or(NetError::peer(NetErrorKind::Closed("by the server")))
}

/// A control message; a Refusal becomes the typed error (NET-7).
async fn read_control(stream: &mut ClientStream, timeouts: Timeouts) -> Result<Control, NetError> {
    let frame = read_some(stream, MAX_CONTROL_FRAME, timeouts).await?;
    match Payload::parse(&frame).map_err(NetError::peer_frame)? {
        Payload::Control(Control::Refusal(r)) => Err(NetError::refused(r)),
        Payload::Control(c) => Ok(c),
        Payload::Message(_) => Err(NetError::peer(NetErrorKind::Unexpected {
            expected: "a control message",
            got: "a protocol message".into(),
        })),
    }
}
