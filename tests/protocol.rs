//! PROTO-1..PROTO-7: the typed protocol end to end, over encoded bytes, on
//! the shipped model; refusals leave sessions unchanged and name the fault.

mod common;

use proptest::prelude::*;
use safhire::engine::ClientOp;
use safhire::engine::{self, CompiledModel};
use safhire::model::Model;
use safhire::params::ParameterSet;
use safhire::protocol::ENVELOPE_LEN;
use safhire::protocol::{
    state_graph, Client, ClientId, ClientStep, Endpoint, ErrorKind, Fault, Policy, Response,
    ServerStep, SessionAccept, SessionRequest, StoredSession, Upload,
};
use safhire::rlwe::Context;
use safhire::shuffle::ShuffleUnit;
use std::sync::{Arc, OnceLock};

// Message fields are private: a message reaches a state transition only
// through a decoder, which validates it. The tests below make the
// malformed ones from bytes, as a peer would.

/// Where an Upload's or a Response's round sits: after the envelope and
/// the 16-byte session identifier (PROTO-10).
const ROUND_AT: usize = ENVELOPE_LEN + 16;

/// An encoded Upload or Response with its round replaced.
fn with_round(mut bytes: Vec<u8>, round: u32) -> Vec<u8> {
    bytes[ROUND_AT..ROUND_AT + 4].copy_from_slice(&round.to_le_bytes());
    bytes
}

/// An encoded Upload or Response with its session identifier replaced.
fn with_session(mut bytes: Vec<u8>, session: [u8; 16]) -> Vec<u8> {
    bytes[ENVELOPE_LEN..ROUND_AT].copy_from_slice(&session);
    bytes
}

/// `bytes`' envelope header (magic, version, kind, fingerprint) around a
/// new body.
fn rewrap(bytes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = bytes[..ENVELOPE_LEN - 4].to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// An encoded Upload of the same round with no ciphertexts.
fn without_ciphertexts(bytes: &[u8]) -> Vec<u8> {
    let mut body = bytes[ENVELOPE_LEN..ROUND_AT + 4].to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    rewrap(bytes, &body)
}

/// An envelope header for `kind` under `ctx`'s set, with an empty body.
fn header(ctx: &Context, kind: safhire::protocol::MessageKind) -> Vec<u8> {
    let mut out = safhire::protocol::MAGIC.to_vec();
    out.extend_from_slice(&safhire::protocol::VERSION.to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0]);
    out.extend_from_slice(&ctx.params().fingerprint().to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// A SessionAccept body as spec/protocol.md lays it out, for accepts no
/// server would send; wrapped in `like`'s envelope, with `like`'s session
/// identifier (zeros if it has no body).
fn accept_bytes(
    like: &[u8],
    input_len: u32,
    range: (i64, i64),
    rounds: &[(u32, Vec<ClientOp>)],
) -> Vec<u8> {
    let mut body = like
        .get(ENVELOPE_LEN..ENVELOPE_LEN + 16)
        .unwrap_or(&[0; 16])
        .to_vec();
    body.extend_from_slice(&(rounds.len() as u32).to_le_bytes());
    body.extend_from_slice(&input_len.to_le_bytes());
    body.extend_from_slice(&range.0.to_le_bytes());
    body.extend_from_slice(&range.1.to_le_bytes());
    for (outputs, ops) in rounds {
        body.extend_from_slice(&outputs.to_le_bytes());
        body.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for op in ops {
            match *op {
                ClientOp::Requantize {
                    multiplier,
                    shift,
                    min,
                    max,
                } => {
                    body.push(1);
                    body.extend_from_slice(&multiplier.to_le_bytes());
                    body.extend_from_slice(&shift.to_le_bytes());
                    body.extend_from_slice(&min.to_le_bytes());
                    body.extend_from_slice(&max.to_le_bytes());
                }
                ClientOp::Relu => body.push(2),
            }
        }
    }
    rewrap(like, &body)
}

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

#[derive(serde::Deserialize)]
struct TestSet {
    inputs: Vec<Vec<i64>>,
    integer_logits: Vec<Vec<i64>>,
}

struct Setup {
    ctx: Arc<Context>,
    model: Arc<CompiledModel>,
    set: TestSet,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let ctx = Arc::new(Context::new(ParameterSet::shipped("b16").unwrap()));
        let model = Arc::new(engine::compile(&ctx, &Model::from_json(MODEL).unwrap()).unwrap());
        Setup {
            ctx,
            model,
            set: serde_json::from_str(TEST_SET).unwrap(),
        }
    })
}

/// Channel shuffling with the explicit opt-in: one chosen query recovers a
/// conv stage under it, so no shipped policy serves the digits model so.
const CHANNEL_OPT_IN: &str = "[[policy]]\nname = \"channel-opt-in\"\ngranularity = \"channel\"\n\
    query_budget = 8\nallow_budget_above_attack_threshold = true\n";

fn endpoint(policy: &str) -> Endpoint {
    let s = setup();
    let policy = match policy {
        "channel-opt-in" => Policy::load(CHANNEL_OPT_IN, policy).unwrap(),
        name => Policy::shipped(name).unwrap(),
    };
    Endpoint::new(s.ctx.clone(), s.model.clone(), policy).unwrap()
}

/// Runs a whole session through encoded messages; returns the logits.
fn session(server: &mut Endpoint, who: &ClientId, input: &[i64]) -> Vec<i64> {
    common::encoded_session(&setup().ctx, server, who, input)
}

// PROTO-1, PROTO-3
#[test]
fn a_session_over_encoded_messages_gives_the_reference_logits() {
    let s = setup();
    let mut server = endpoint("default");
    for (k, policy) in [(3usize, "default"), (200, "channel-opt-in")] {
        let mut server_k = if policy == "default" {
            None
        } else {
            Some(endpoint(policy))
        };
        let ep = server_k.as_mut().unwrap_or(&mut server);
        let logits = session(ep, &ClientId("alice".into()), &s.set.inputs[k]);
        assert_eq!(
            logits, s.set.integer_logits[k],
            "image {k}, policy {policy}"
        );
    }
}

// PROTO-4: refused messages leave the state unchanged and name the peer.
#[test]
fn wrong_round_or_count_is_refused_and_the_session_survives() {
    let s = setup();
    let ctx = &s.ctx;
    let mut server = endpoint("default");
    let (client, request) = Client::start(ctx.clone());
    let (session, accept) = server.accept(&ClientId("bob".into()), request).unwrap();
    let client = client.receive_accept(accept).unwrap();
    let (client, upload) = client.send_input(&s.set.inputs[0]).unwrap();

    let wrong = Upload::decode(ctx, &with_round(upload.encode(ctx), 1)).unwrap();
    let rejected = session.receive_upload(wrong).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Peer);
    assert!(matches!(
        rejected.error.kind,
        ErrorKind::WrongRound {
            expected: 0,
            got: 1
        }
    ));
    let session = rejected.state;
    assert_eq!(session.round(), 0);

    let short = Upload::decode(ctx, &without_ciphertexts(&upload.encode(ctx))).unwrap();
    let rejected = session.receive_upload(short).unwrap_err();
    assert!(matches!(rejected.error.kind, ErrorKind::WrongCount { .. }));
    let session = rejected.state;

    // PROTO-10: the same upload under another session's identifier (a
    // message delivered into the wrong session) is refused first.
    let mut other = upload.session();
    other[0] ^= 1;
    let foreign = Upload::decode(ctx, &with_session(upload.encode(ctx), other)).unwrap();
    let rejected = session.receive_upload(foreign).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Peer);
    assert!(matches!(rejected.error.kind, ErrorKind::WrongSession));
    let session = rejected.state;
    assert_eq!(session.round(), 0);

    // The untouched session still completes correctly.
    let ServerStep::Continue(_, response) = session.receive_upload(upload).unwrap() else {
        panic!("round 0 is not the last")
    };
    let bad = Response::decode(ctx, &with_round(response.encode(ctx), 7)).unwrap();
    let rejected = client.receive_response(bad).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Peer);
    let client = rejected.state;
    assert_eq!(client.round(), 0);
    let foreign = Response::decode(ctx, &with_session(response.encode(ctx), other)).unwrap();
    let rejected = client.receive_response(foreign).unwrap_err();
    assert!(matches!(rejected.error.kind, ErrorKind::WrongSession));
    let client = rejected.state;
    assert_eq!(client.round(), 0);
    assert!(matches!(
        client.receive_response(response),
        Ok(ClientStep::Continue(..))
    ));
}

#[test]
fn local_input_errors_are_the_callers_fault() {
    let s = setup();
    let (client, request) = Client::start(s.ctx.clone());
    let (_, accept) = endpoint("default")
        .accept(&ClientId("c".into()), request)
        .unwrap();
    let client = client.receive_accept(accept).unwrap();
    let rejected = client.send_input(&[1, 2, 3]).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Local);
    assert!(rejected.error.to_string().starts_with("local fault"));
    let rejected = rejected.state.send_input(&vec![1 << 20; 64]).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Local);
}

// PROTO-5
#[test]
fn query_budget_is_enforced_per_client_identity() {
    let s = setup();
    let mut server = endpoint("default");
    let budget = Policy::shipped("default").unwrap().query_budget();
    let (alice, carol) = (ClientId("alice".into()), ClientId("carol".into()));
    for _ in 0..budget {
        let (_, request) = Client::start(s.ctx.clone());
        server.accept(&alice, request).unwrap();
    }
    let (_, request) = Client::start(s.ctx.clone());
    let err = server.accept(&alice, request.clone()).unwrap_err();
    assert_eq!(err.fault, Fault::Peer);
    assert!(
        matches!(err.kind, ErrorKind::BudgetExhausted { used, budget: b } if used == budget && b == budget)
    );
    // Fresh keys do not reset the budget; another identity has its own.
    let (_, fresh) = Client::start(s.ctx.clone());
    assert!(server.accept(&alice, fresh).is_err());
    assert!(server.accept(&carol, request).is_ok());
}

// PROTO-6
#[test]
fn policies_are_validated_against_the_model() {
    let s = setup();
    // The digits model: conv 1→8 3×3 (fan-in 9), conv 8→16 3×3 on pooled
    // values (fan-in 72), linear on 64 pooled values. Element shuffling:
    // 10, 73 and 65 queries by fan-in, the linear layer's 10 rows of 65
    // unknowns at the 16 slots its stacked response (ENG-14) gives a client
    // that writes past its values: ⌈650/16⌉ = 41; the first conv also falls
    // to the single-pixel probes (AUDIT-7): the bias probe and one group of
    // three sessions, 4 in all, the cheapest.
    let element = Policy::shipped("default").unwrap();
    assert_eq!(element.attack_threshold(&s.model), Some((4, 0)));
    let queries: Vec<Option<u64>> = s
        .model
        .stages()
        .iter()
        .map(|st| st.attack_queries(ShuffleUnit::Element))
        .collect();
    assert_eq!(queries, [Some(10), Some(73), Some(41)]);
    // Channel shuffling: one query recovers a conv stage.
    let channel = Policy::load(SHIPPED_WITH_BUDGET, "channel").unwrap();
    assert_eq!(channel.attack_threshold(&s.model), Some((1, 0)));
    let err = Endpoint::new(s.ctx.clone(), s.model.clone(), channel).unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(err.to_string().contains("round 0"), "{err}");
    // Budget 2 is the most the first conv allows; 3 is refused.
    assert_eq!(element.query_budget(), 2);
    assert!(Endpoint::new(s.ctx.clone(), s.model.clone(), element).is_ok());
    let three = SHIPPED_WITH_BUDGET.replacen("query_budget = 2", "query_budget = 3", 1);
    let p = Policy::load(&three, "default").unwrap();
    let err = Endpoint::new(s.ctx.clone(), s.model.clone(), p).unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(err.to_string().contains("at most 2"), "{err}");
    assert!(Endpoint::new(
        s.ctx.clone(),
        s.model.clone(),
        Policy::shipped("benchmark").unwrap()
    )
    .is_ok());
    assert!(Policy::load("[[policy]]\nname = 1", "x").is_err());
    assert!(Policy::load(
        &SHIPPED_WITH_BUDGET.replace("\"element\"", "\"row\""),
        "default"
    )
    .is_err());
    assert!(Policy::load(
        &SHIPPED_WITH_BUDGET.replace("query_budget = 2", "query_budget = 0"),
        "default"
    )
    .is_err());
    assert!(Policy::shipped("nope").is_err());
}

const SHIPPED_WITH_BUDGET: &str = safhire::protocol::SHIPPED_POLICIES;

// PROTO-2: a stored session is a closed enum; closing is final.
#[test]
fn stored_sessions_close_after_the_last_round() {
    let s = setup();
    let ctx = &s.ctx;
    let mut server = endpoint("default");
    let (client, request) = Client::start(ctx.clone());
    let (session, accept) = server.accept(&ClientId("d".into()), request).unwrap();
    let mut stored = StoredSession::AwaitingUpload(session);
    let client = client.receive_accept(accept).unwrap();
    let (mut client, mut upload) = client.send_input(&s.set.inputs[1]).unwrap();
    let logits = loop {
        let (next, response) = stored.receive_upload(upload.clone());
        stored = next;
        match client.receive_response(response.unwrap()).unwrap() {
            ClientStep::Continue(c, u) => {
                client = c;
                upload = u;
            }
            ClientStep::Done(l) => break l,
        }
    };
    assert_eq!(logits, s.set.integer_logits[1]);
    assert!(matches!(stored, StoredSession::Closed));
    let (stored, again) = stored.receive_upload(upload);
    assert!(matches!(stored, StoredSession::Closed));
    assert_eq!(again.unwrap_err().fault, Fault::Peer);
}

// PROTO-7
#[test]
fn committed_state_graph_matches_the_code() {
    let committed = include_str!("../spec/state-machines.dot");
    assert_eq!(
        committed,
        state_graph(),
        "regenerate spec/state-machines.dot from protocol::state_graph()"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]
    // PROTO-4: no decoder panics on arbitrary or corrupted bytes.
    #[test]
    fn message_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), pos in any::<usize>(), byte in any::<u8>()) {
        let ctx = &setup().ctx;
        prop_assert!(SessionRequest::decode(ctx, &bytes).is_err());
        prop_assert!(SessionAccept::decode(ctx, &bytes).is_err() || bytes.len() >= 20);
        prop_assert!(Upload::decode(ctx, &bytes).is_err() || bytes.len() >= 28);
        prop_assert!(Response::decode(ctx, &bytes).is_err() || bytes.len() >= 28);
        // A corrupted valid SessionAccept decodes to something valid or fails cleanly.
        let mut enc = accept_bytes(
            &header(ctx, safhire::protocol::MessageKind::SessionAccept),
            64,
            (0, 15),
            &[(10, vec![ClientOp::Relu])],
        );
        prop_assert!(SessionAccept::decode(ctx, &enc).is_ok());
        let p = pos % enc.len();
        enc[p] = byte;
        if let Ok(m) = SessionAccept::decode(ctx, &enc) {
            prop_assert_eq!(m.encode(ctx), enc);
        }
    }
}

// ENG-5: the protocol takes only a model compiled for its own context, and
// the client refuses inputs outside the declared range, state unchanged.
#[test]
fn endpoint_and_client_refuse_what_compile_did_not_check() {
    let s = setup();
    let b24 = Context::new(ParameterSet::shipped("b24").unwrap());
    let other = Arc::new(engine::compile(&b24, &Model::from_json(MODEL).unwrap()).unwrap());
    let err = Endpoint::new(s.ctx.clone(), other, Policy::shipped("default").unwrap()).unwrap_err();
    assert_eq!(err.fault, Fault::Local);
    assert!(err.to_string().contains("b24"), "{err}");
    // A policy that requires flooding headroom refuses `wide`.
    let wide = Arc::new(Context::new(ParameterSet::shipped("wide").unwrap()));
    let on_wide = Arc::new(engine::compile(&wide, &Model::from_json(MODEL).unwrap()).unwrap());
    let err = Endpoint::new(
        wide.clone(),
        on_wide.clone(),
        Policy::shipped("default").unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("flooding headroom"), "{err}");
    assert!(Endpoint::new(wide, on_wide, Policy::shipped("benchmark").unwrap()).is_ok());

    let mut server = endpoint("benchmark");
    let (client, request) = Client::start(s.ctx.clone());
    let (_, accept) = server.accept(&ClientId("range".into()), request).unwrap();
    assert_eq!(accept.input_range(), (0, 15));
    let client = client.receive_accept(accept).unwrap();
    let mut input = s.set.inputs[0].clone();
    input[5] = 16;
    let rejected = client.send_input(&input).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Local);
    assert!(
        !rejected.error.to_string().contains("16"),
        "{}",
        rejected.error
    );
    // The same client, unchanged, goes on with a valid input.
    let (_, upload) = rejected.state.send_input(&s.set.inputs[0]).unwrap();
    assert_eq!(upload.round(), 0);
}

// DP-8 through the protocol: an endpoint under the `dp` policy adds noise
// to every released value, so the logits differ from the reference (the
// last round's own noise alone makes all ten equal with probability below
// 0.004^10; earlier rounds' noise propagates on top).
#[test]
fn the_dp_policy_adds_noise_to_the_logits() {
    let s = setup();
    let dp = Policy::shipped("dp").unwrap();
    assert_eq!(dp.dp_sigma(), Some(100));
    let mut server = Endpoint::new(s.ctx.clone(), s.model.clone(), dp).unwrap();
    let logits = session(&mut server, &ClientId("noisy".into()), &s.set.inputs[7]);
    let reference = &s.set.integer_logits[7];
    assert_ne!(&logits, reference);
    assert_eq!(logits.len(), reference.len());
}

// PROTO-4: a SessionAccept cannot be built by hand (its fields are
// private), so a malformed one arrives as bytes: no rounds, an empty input
// range or an unusable requantisation is refused by the decoder as the
// peer's fault, and the client, which never saw it, takes the real accept.
#[test]
fn a_malformed_accept_is_refused_before_the_client_sees_it() {
    let s = setup();
    let ctx = &s.ctx;
    let mut server = endpoint("default");
    let (client, request) = Client::start(ctx.clone());
    let (_, good) = server.accept(&ClientId("hand".into()), request).unwrap();
    let like = good.encode(ctx);
    let (len, range) = (good.input_len(), good.input_range());
    let rounds: Vec<(u32, Vec<ClientOp>)> = good
        .rounds()
        .iter()
        .map(|r| (r.outputs(), r.ops().to_vec()))
        .collect();
    // The same fields, re-encoded by hand, decode to the same accept.
    assert_eq!(
        SessionAccept::decode(ctx, &accept_bytes(&like, len, range, &rounds)).unwrap(),
        good
    );
    let mut bad_requantize = rounds.clone();
    bad_requantize[0].1 = vec![ClientOp::Requantize {
        multiplier: 0,
        shift: 3,
        min: 0,
        max: 15,
    }];
    for bad in [
        accept_bytes(&like, len, range, &[]),
        accept_bytes(&like, len, (range.1 + 1, range.1), &rounds),
        accept_bytes(&like, len, range, &bad_requantize),
    ] {
        let error = SessionAccept::decode(ctx, &bad).unwrap_err();
        assert_eq!(error.fault, Fault::Peer, "{error}");
    }
    let client = client.receive_accept(good).unwrap();
    assert!(client.send_input(&s.set.inputs[0]).is_ok());
}
