//! The facade (src/service.rs) on the shipped model: a round trip bit-exact
//! against the plaintext reference, the budget refusal as its typed error
//! on both sides, and malformed messages refused with the sender at fault
//! while the receiving side stays usable (PROTO-1, PROTO-4, PROTO-5).

use safhire::model::{Model, TestSet};
use safhire::protocol::{ErrorKind, Fault, MessageKind};
use safhire::rng::DeterministicSeeds;
use safhire::service::{Reply, ServerConnection};
use safhire::{
    ClientEvent, ClientId, ClientSession, ModelClient, ModelServer, Policy, ServiceError,
    ServiceErrorKind, Transport,
};
use std::sync::{Arc, OnceLock};

#[path = "../examples/serve_and_query.rs"]
mod serve_and_query;

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

fn model() -> Model {
    Model::from_json(MODEL).unwrap()
}

fn test_set() -> &'static TestSet {
    static S: OnceLock<TestSet> = OnceLock::new();
    S.get_or_init(|| TestSet::from_json("digits-test", TEST_SET).unwrap())
}

fn input(k: usize) -> &'static [i64] {
    &test_set().inputs[k]
}

fn reference(k: usize) -> Vec<i64> {
    model().evaluate(input(k)).unwrap()
}

/// The shipped model under a shipped policy.
fn server(policy: &str) -> ModelServer {
    ModelServer::builder(model())
        .policy(Policy::shipped(policy).unwrap())
        .build()
        .unwrap()
}

/// Drives a client session against a server connection by hand; returns
/// the logits.
fn drive(
    connection: &mut ServerConnection,
    session: &mut ClientSession,
    first: Vec<u8>,
) -> Vec<i64> {
    let mut message = first;
    loop {
        let reply = connection.receive(&message).unwrap();
        match session.receive(&reply).unwrap() {
            ClientEvent::Send(next) => message = next,
            ClientEvent::Done(logits) => return logits,
        }
    }
}

#[test]
fn a_round_trip_through_the_facade_gives_the_reference_logits() {
    let server = server("default");
    assert_eq!(server.context().params().name(), "b16");
    assert!(server.selection_explained().contains("b16: chosen"));
    let mut client = server.client(ClientId("alice".into()));
    for k in [0, 17] {
        let inference = client.infer(input(k)).unwrap();
        assert_eq!(inference.logits, reference(k), "image {k}");
        // One entry per round, each with the server's own timings.
        assert_eq!(inference.rounds.len(), server.model().rounds());
        for r in &inference.rounds {
            let phases = r.phases.expect("in process, the phases come along");
            assert!(r.server_ms.unwrap() >= phases.total_ms() * 0.99);
            assert!(r.up_bytes > 0 && r.down_bytes > 0);
        }
        // The setup carries the keys: megabytes up, a few hundred bytes down.
        assert!(inference.setup.up_bytes > 1 << 20);
        assert!(inference.setup.phases.is_none());
    }
    assert_eq!(server.queries_used(&ClientId("alice".into())).unwrap(), 2);
}

// Issue 9's latency model: each exchange adds its computation, its bytes
// at the link's bandwidth and one round trip; the setup only when asked.
#[test]
fn the_modelled_latency_adds_computation_bytes_and_round_trips() {
    use safhire::service::Link;
    let server = server("default");
    let inference = server
        .client(ClientId("carol".into()))
        .infer(input(3))
        .unwrap();
    let exchanges: Vec<_> = std::iter::once(&inference.setup)
        .chain(&inference.rounds)
        .collect();
    let compute: f64 = exchanges
        .iter()
        .map(|e| e.client_ms + e.server_ms.unwrap_or(0.0))
        .sum();
    let bytes: usize = exchanges.iter().map(|e| e.up_bytes + e.down_bytes).sum();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let infinite = Link {
        bytes_per_second: f64::INFINITY,
        round_trip_ms: 0.0,
    };
    assert!(close(
        inference.modelled_latency_ms(infinite, true),
        compute
    ));
    let slow = Link::bandwidth_only(1.25);
    assert_eq!(slow.bytes_per_second, 1.25e6);
    assert!(close(
        inference.modelled_latency_ms(slow, true),
        compute + 1e3 * bytes as f64 / 1.25e6
    ));
    let rtt = Link {
        round_trip_ms: 10.0,
        ..slow
    };
    assert!(close(
        inference.modelled_latency_ms(rtt, true) - inference.modelled_latency_ms(slow, true),
        10.0 * exchanges.len() as f64
    ));
    let setup = &inference.setup;
    let setup_cost = setup.client_ms
        + setup.server_ms.unwrap_or(0.0)
        + 1e3 * (setup.up_bytes + setup.down_bytes) as f64 / 1.25e6;
    assert!(close(
        inference.modelled_latency_ms(slow, true) - inference.modelled_latency_ms(slow, false),
        setup_cost
    ));
    // The keys dominate the traffic of the shipped model's session.
    assert!(setup.up_bytes * 2 > bytes);
}

/// Every message of one session, both directions, with both parties'
/// randomness drawn from deterministic sources seeded `client` and `server`.
fn transcript(client: u8, server_seed: u8) -> (Vec<Vec<u8>>, Vec<i64>) {
    let server = ModelServer::builder(model())
        .seed_source(Arc::new(DeterministicSeeds::new([server_seed; 16])))
        .build()
        .unwrap();
    let mut connection = server.connection(ClientId("alice".into()));
    let seeds = DeterministicSeeds::new([client; 16]);
    let (mut session, first) =
        ClientSession::start_with(server.context().clone(), input(3), &seeds);
    let mut messages = vec![first];
    loop {
        let reply = connection.receive(messages.last().unwrap()).unwrap();
        messages.push(reply);
        match session.receive(messages.last().unwrap()).unwrap() {
            ClientEvent::Send(next) => messages.push(next),
            ClientEvent::Done(logits) => return (messages, logits),
        }
    }
}

// KEY-3: randomness is injected. With the same deterministic sources two
// runs exchange the same bytes; another seed on either side changes the
// messages that side's randomness reaches (client: every message it sends;
// server: the accept's session id and every response), never the logits.
#[test]
fn injected_seed_sources_make_sessions_reproducible() {
    let (a, logits) = transcript(1, 2);
    assert_eq!(logits, reference(3));
    let (b, _) = transcript(1, 2);
    assert_eq!(a, b, "same seeds, same transcript");
    let (c, logits_c) = transcript(9, 2);
    assert_eq!(logits_c, logits);
    let (d, logits_d) = transcript(1, 9);
    assert_eq!(logits_d, logits);
    assert_eq!(a.len(), c.len());
    for (i, (x, y)) in a.iter().zip(&c).enumerate() {
        // Even messages are the client's, odd ones the server's; the
        // server's accept and responses name the session, which the
        // client's uploads echo, so only the server's own seed moves them.
        if i % 2 == 0 {
            assert_ne!(x, y, "client message {i} must follow the client's seed");
        }
    }
    for (i, (x, y)) in a.iter().zip(&d).enumerate() {
        if i % 2 == 1 {
            assert_ne!(x, y, "server message {i} must follow the server's seed");
        }
    }
    // The default source is the operating system: two sessions differ.
    let server = server("default");
    let (_, r1) = ClientSession::start(server.context().clone(), input(3));
    let (_, r2) = ClientSession::start(server.context().clone(), input(3));
    assert_ne!(r1, r2);
}

// The example's own logic: two images bit-exact, the third session refused.
#[test]
fn the_serve_and_query_example_is_exact_and_stops_at_the_budget() {
    let outcome = serve_and_query::run(false).unwrap();
    assert_eq!(outcome.images.len(), 2);
    for (logits, reference) in &outcome.images {
        assert_eq!(logits, reference);
    }
    let refused = outcome.over_budget.expect("the third session is refused");
    assert_eq!(refused.budget_exhausted(), Some((2, 2)), "{refused}");
}

// PROTO-5: over budget, the session is refused before any work; the client
// sees its own fault, the server its peer's; another identity goes on.
#[test]
fn the_budget_refusal_is_a_typed_error_on_both_sides() {
    let server = server("default");
    let budget = server.policy().query_budget();
    let alice = ClientId("alice".into());
    // Server side, by hand: sessions accepted and abandoned, each charged.
    let mut connection = server.connection(alice.clone());
    let ctx = server.context().clone();
    for used in 1..=budget {
        let (_, request) = ClientSession::start(ctx.clone(), input(0));
        connection.receive(&request).unwrap();
        assert!(connection.in_session());
        assert!(connection.abandon());
        assert_eq!(server.queries_used(&alice).unwrap(), used);
    }
    let (_, request) = ClientSession::start(ctx.clone(), input(0));
    let err = connection.receive(&request).unwrap_err();
    assert_eq!(err.fault, Fault::Peer, "{err}");
    assert!(matches!(
        err.kind,
        ServiceErrorKind::Protocol(ErrorKind::BudgetExhausted { used, budget: b }) if used == budget && b == budget
    ));
    assert_eq!(err.budget_exhausted(), Some((budget, budget)));
    assert!(!connection.in_session());

    // Client side, through the in-process transport: the client's fault.
    let mut client = server.client(alice.clone());
    let err = client.infer(input(1)).unwrap_err();
    assert_eq!(err.fault, Fault::Local, "{err}");
    assert_eq!(err.budget_exhausted(), Some((budget, budget)));
    assert!(err.to_string().contains("query budget exhausted"), "{err}");
    assert_eq!(server.queries_used(&alice).unwrap(), budget);

    // Another identity has a budget of its own.
    let mut carol = server.client(ClientId("carol".into()));
    assert_eq!(carol.infer(input(1)).unwrap().logits, reference(1));
}

// PROTO-4 on the server: malformed or out-of-sequence messages are the
// client's fault, charge nothing, and leave the connection where it was.
#[test]
fn a_malformed_message_to_the_server_is_the_clients_fault_and_the_session_goes_on() {
    let server = server("default");
    let who = ClientId("mallory".into());
    let mut connection = server.connection(who.clone());
    let ctx = server.context().clone();
    let (mut session, request) = ClientSession::start(ctx.clone(), input(3));

    // Before a session: garbage, a truncated request, a lone upload.
    for bad in [
        b"not a protocol message".to_vec(),
        request[..request.len() / 2].to_vec(),
        Vec::new(),
    ] {
        let err = connection.receive(&bad).unwrap_err();
        assert_eq!(err.fault, Fault::Peer, "{err}");
        assert!(!connection.in_session());
    }
    assert_eq!(server.queries_used(&who).unwrap(), 0, "nothing was charged");

    let accept = connection.receive(&request).unwrap();
    let ClientEvent::Send(upload) = session.receive(&accept).unwrap() else {
        panic!("the accept is answered by upload 0")
    };
    // In the session: the request again, a flipped envelope, a truncated
    // upload, trailing bytes. Each is refused, the round stays 0.
    let mut flipped = upload.clone();
    flipped[6] = MessageKind::Response as u8;
    let mut trailing = upload.clone();
    trailing.push(0);
    for bad in [
        request.clone(),
        flipped,
        upload[..upload.len() - 1].to_vec(),
        trailing,
    ] {
        let err = connection.receive(&bad).unwrap_err();
        assert_eq!(err.fault, Fault::Peer, "{err}");
        assert!(matches!(err.kind, ServiceErrorKind::Protocol(_)), "{err}");
        assert_eq!(connection.round(), Some(0));
    }
    // Any single damaged byte of the envelope, the round, the count or the
    // first object's length is refused the same way, without a panic.
    for i in 0..32 {
        for flip in [0x01u8, 0x80] {
            let mut bad = upload.clone();
            bad[i] ^= flip;
            let err = connection.receive(&bad).unwrap_err();
            assert_eq!(err.fault, Fault::Peer, "byte {i}: {err}");
            assert_eq!(connection.round(), Some(0), "byte {i}");
        }
    }
    // The untouched session completes, bit-exact, charged once.
    assert_eq!(drive(&mut connection, &mut session, upload), reference(3));
    assert!(!connection.in_session());
    assert_eq!(server.queries_used(&who).unwrap(), 1);
}

// PROTO-4 on the client: a malformed reply is the server's fault and leaves
// the client session where it was.
#[test]
fn a_malformed_message_to_the_client_is_the_servers_fault_and_the_session_goes_on() {
    let server = server("default");
    let mut connection = server.connection(ClientId("alice".into()));
    let ctx = server.context().clone();
    let (mut session, request) = ClientSession::start(ctx, input(5));
    let accept = connection.receive(&request).unwrap();

    let mut wrong_set = accept.clone();
    wrong_set[8] ^= 1; // the parameter set's fingerprint
    for bad in [
        b"garbage".to_vec(),
        accept[..accept.len() - 3].to_vec(),
        wrong_set,
    ] {
        let err = session.receive(&bad).unwrap_err();
        assert_eq!(err.fault, Fault::Peer, "{err}");
        assert!(!session.is_finished());
        assert_eq!(session.round(), None);
    }
    for i in 0..20 {
        let mut bad = accept.clone();
        bad[i] ^= 0x40;
        let err = session.receive(&bad).unwrap_err();
        assert_eq!(err.fault, Fault::Peer, "byte {i}: {err}");
        assert_eq!(session.round(), None, "byte {i}");
    }
    let ClientEvent::Send(upload) = session.receive(&accept).unwrap() else {
        panic!("the accept is answered by upload 0")
    };
    let response = connection.receive(&upload).unwrap();
    // PROTO-10: bytes 20..36 are the session identifier, then the round.
    let mut bad_session = response.clone();
    bad_session[20] ^= 1;
    let err = session.receive(&bad_session).unwrap_err();
    assert!(
        matches!(
            err.kind,
            ServiceErrorKind::Protocol(ErrorKind::WrongSession)
        ),
        "{err}"
    );
    let mut bad_round = response.clone();
    bad_round[36] ^= 1; // the response's round number
    let err = session.receive(&bad_round).unwrap_err();
    assert_eq!(err.fault, Fault::Peer, "{err}");
    assert!(
        matches!(
            err.kind,
            ServiceErrorKind::Protocol(ErrorKind::WrongRound {
                expected: 0,
                got: 1
            })
        ),
        "{err}"
    );
    assert_eq!(session.round(), Some(0));
    let ClientEvent::Send(next) = session.receive(&response).unwrap() else {
        panic!("round 0 is not the last")
    };
    assert_eq!(drive(&mut connection, &mut session, next), reference(5));
    assert!(session.is_finished());
    // A finished session refuses everything: the caller's fault.
    let err = session.receive(&response).unwrap_err();
    assert_eq!(err.fault, Fault::Local);
}

/// A transport that damages one message on its way, in either direction.
struct Tamper<T> {
    inner: T,
    /// Damage the n-th message sent (counting from 0), or the n-th reply.
    upload: Option<usize>,
    reply: Option<usize>,
    sent: usize,
}

impl<T: Transport> Transport for Tamper<T> {
    fn exchange(&mut self, message: &[u8]) -> Result<Reply, ServiceError> {
        let k = self.sent;
        self.sent += 1;
        let mut message = message.to_vec();
        if self.upload == Some(k) {
            message.truncate(message.len() - 1);
        }
        let mut reply = self.inner.exchange(&message)?;
        if self.reply == Some(k) {
            reply.message.truncate(reply.message.len() - 1);
        }
        Ok(reply)
    }

    fn abandon(&mut self) {
        self.inner.abandon();
    }
}

// Through ModelClient: the fault is seen from the client's side, the
// failed inference's session is abandoned, and the next inference works.
#[test]
fn a_damaged_message_fails_one_inference_with_the_right_fault_and_the_client_goes_on() {
    let server = server("benchmark");
    let who = ClientId("alice".into());
    let transport = |upload, reply| Tamper {
        inner: safhire::InProcess::new(server.connection(who.clone())),
        upload,
        reply,
        sent: 0,
    };
    // The second reply (response 0) arrives damaged: the server's fault.
    let mut client =
        ModelClient::with_transport(server.context().clone(), transport(None, Some(1)), None);
    let err = client.infer(input(7)).unwrap_err();
    assert_eq!(err.fault, Fault::Peer, "{err}");
    assert!(
        !client.transport().inner.connection().in_session(),
        "abandoned"
    );
    assert_eq!(client.infer(input(7)).unwrap().logits, reference(7));

    // The second message (upload 0) leaves damaged: the server refuses it,
    // which from the client's side is the client's fault.
    let mut client =
        ModelClient::with_transport(server.context().clone(), transport(Some(1), None), None);
    let err = client.infer(input(8)).unwrap_err();
    assert_eq!(err.fault, Fault::Local, "{err}");
    assert_eq!(client.infer(input(8)).unwrap().logits, reference(8));
}

#[test]
fn a_wrong_input_is_the_callers_fault_and_spends_no_session() {
    let server = server("default");
    let who = ClientId("alice".into());
    let mut client = server.client(who.clone());
    let err = client.infer(&[1, 2, 3]).unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(matches!(
        err.kind,
        ServiceErrorKind::Protocol(ErrorKind::InputLength {
            expected: 64,
            got: 3
        })
    ));
    let mut out_of_range = input(0).to_vec();
    out_of_range[0] = 16;
    let err = client.infer(&out_of_range).unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(!err.to_string().contains("16"), "{err}");
    assert_eq!(server.queries_used(&who).unwrap(), 0);
}

// PROTO-6 and PARAM-7 at build time: this side's fault, saying why.
#[test]
fn a_server_that_cannot_serve_is_refused_when_built() {
    let err = ModelServer::builder(model())
        .policy(Policy::shipped("channel").unwrap())
        .build()
        .unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(err.to_string().contains("within reach"), "{err}");

    let err = ModelServer::builder(model())
        .parameter_set("b8")
        .build()
        .unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(matches!(err.kind, ServiceErrorKind::Select(_)), "{err}");
    assert!(err.to_string().contains("layer 0 (conv2d)"), "{err}");

    // The endpoint inside is handed over only when nothing shares it.
    let shared = server("default");
    let connection = shared.connection(ClientId("a".into()));
    let err = shared.into_endpoint().unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    drop(connection);
    assert!(server("default").into_endpoint().is_ok());
}

// The same facade over TLS on localhost (feature `net`): `ModelServer::bind`
// and `ModelClient::connect`, bit-exact, and the budget refusal typed the
// same way as in process.
#[cfg(feature = "net")]
#[test]
fn over_tls_the_facade_is_exact_and_the_budget_refusal_is_typed() {
    use safhire::net::{self, ConnectConfig, ServeConfig, TokenTable};
    let dir = std::env::temp_dir().join(format!("safhire-facade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The directory holds a private key: removed when the test ends.
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    let certs = net::tls::dev_cert(&["localhost".to_owned()]).unwrap();
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("s.pem"), dir.join("s.key"));
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    std::fs::write(&cert, &certs.cert_pem).unwrap();
    std::fs::write(&key, &certs.key_pem).unwrap();
    let token = net::auth::generate_token();
    let tokens = TokenTable::parse(
        "tokens",
        &format!("alice {}\n", net::auth::token_digest_hex(token.as_bytes())),
    )
    .unwrap();
    let config = ServeConfig::new(net::tls::server_config(&cert, &key).unwrap(), tokens);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = runtime
        .block_on(server("default").bind("127.0.0.1:0", config))
        .unwrap();
    let addr = service.local_addr().unwrap();
    let shutdown = service.shutdown_handle();
    let serving = std::thread::spawn(move || runtime.block_on(service.run()));

    let mut client = ModelClient::connect(&ConnectConfig {
        addr: addr.to_string(),
        server_name: "localhost".into(),
        tls: net::tls::client_config(&ca).unwrap(),
        token: token.into_bytes(),
        timeout: std::time::Duration::from_secs(120),
        parameters: None,
    })
    .unwrap();
    assert_eq!(client.server_info().client_id, "alice");
    for k in [2, 9] {
        let inference = client.infer(input(k)).unwrap();
        assert_eq!(inference.logits, reference(k));
        assert!(inference.rounds.iter().all(|r| r.server_ms.is_some()));
    }
    let err = client.infer(input(4)).unwrap_err();
    assert_eq!(err.fault, Fault::Local, "{err}");
    assert_eq!(err.budget_exhausted(), Some((2, 2)), "{err}");
    drop(client);
    shutdown.shutdown();
    let summary = serving.join().unwrap();
    assert_eq!(summary.sessions, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
