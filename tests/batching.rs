//! PROTO-11, ENG-15: sessions of several images. A batched session gives
//! each image's reference logits bit for bit, is charged one query per
//! image in one step (all or nothing), refuses what the endpoint does not
//! serve before charging, and releases each round's values as the images'
//! values shuffled together (proofs/batching.md, step 1).

mod common;

use common::fixture;
use safhire::engine::{self, CompiledModel, ServerKeys};
use safhire::model::Model;
use safhire::params::ParameterSet;
use safhire::protocol::{
    image_logits, Client, ClientId, ClientStep, Endpoint, ErrorKind, Fault, Policy, Response,
    ServerStep, SessionAccept, SessionRequest, Upload, ENVELOPE_LEN, MAX_BATCH,
};
use safhire::rlwe::Context;
use safhire::shuffle::{SessionSeed, ShuffleUnit};
use std::sync::{Arc, OnceLock};

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

/// The shipped test images and the exporter's integer logits of each.
struct TestSet {
    inputs: Vec<Vec<i64>>,
    integer_logits: Vec<Vec<i64>>,
}

fn test_set() -> TestSet {
    let set = safhire::model::TestSet::from_json("digits-test", TEST_SET).unwrap();
    TestSet {
        integer_logits: set.expected_logits.unwrap(),
        inputs: set.inputs,
    }
}

struct Setup {
    ctx: Arc<Context>,
    model: Model,
    single: Arc<CompiledModel>,
    pair: Arc<CompiledModel>,
    triple: Arc<CompiledModel>,
    set: TestSet,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let ctx = Arc::new(Context::new(ParameterSet::shipped("b16").unwrap()));
        let model = Model::from_json(MODEL).unwrap();
        let compile = |k| Arc::new(engine::compile_batch(&ctx, &model, k).unwrap());
        Setup {
            single: Arc::new(engine::compile(&ctx, &model).unwrap()),
            pair: compile(2),
            triple: compile(3),
            ctx,
            model,
            set: test_set(),
        }
    })
}

fn endpoint(policy: &str, batches: &[&Arc<CompiledModel>]) -> Endpoint {
    let s = setup();
    let mut e = Endpoint::new(
        s.ctx.clone(),
        s.single.clone(),
        Policy::shipped(policy).unwrap(),
    )
    .unwrap();
    for b in batches {
        e = e.with_batch((*b).clone()).unwrap();
    }
    e
}

/// A request for `batch` images, through its encoding.
fn request(batch: u32) -> (Client<safhire::protocol::AwaitingAccept>, SessionRequest) {
    let ctx = &setup().ctx;
    let (client, request) = Client::start_batch(ctx.clone(), batch).unwrap();
    let request = SessionRequest::decode(ctx, &request.encode(ctx)).unwrap();
    (client, request)
}

/// One session of the images `inputs` through encoded messages; the logits.
fn batched_session(server: &mut Endpoint, who: &ClientId, inputs: &[&[i64]]) -> Vec<i64> {
    let ctx = &setup().ctx;
    let (client, request) = request(inputs.len() as u32);
    assert_eq!(request.batch() as usize, inputs.len());
    let (mut session, accept) = server.accept(who, request).unwrap();
    let accept = SessionAccept::decode(ctx, &accept.encode(ctx)).unwrap();
    let client = client.receive_accept(accept).unwrap();
    assert_eq!(client.batch(), inputs.len());
    assert_eq!(client.input_len(), setup().single.input_len());
    let (mut client, mut upload) = client.send_input(&inputs.concat()).unwrap();
    loop {
        let up = Upload::decode(ctx, &upload.encode(ctx)).unwrap();
        let (next, response) = match session.receive_upload(up).unwrap() {
            ServerStep::Continue(s, r) => (Some(s), r),
            ServerStep::Closed(r) => (None, r),
        };
        let response = Response::decode(ctx, &response.encode(ctx)).unwrap();
        match client.receive_response(response).unwrap() {
            ClientStep::Continue(c, u) => {
                (client, upload) = (c, u);
                session = next.unwrap();
            }
            ClientStep::Done(logits) => {
                assert!(next.is_none());
                return logits;
            }
        }
    }
}

// PROTO-11, ENG-15: each image's logits, bit for bit, in the order given.
#[test]
fn a_batched_session_gives_each_images_reference_logits() {
    let s = setup();
    let mut server = endpoint("benchmark", &[&s.pair, &s.triple]);
    assert_eq!(server.batches().collect::<Vec<_>>(), [1, 2, 3]);
    let who = ClientId("batch".into());
    for (k, first) in [(3usize, 0usize), (2, 5)] {
        let inputs: Vec<&[i64]> = s.set.inputs[first..first + k]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let logits = batched_session(&mut server, &who, &inputs);
        let split: Vec<&[i64]> = image_logits(&logits, k).collect();
        assert_eq!(split.len(), k);
        for (i, got) in split.iter().enumerate() {
            assert_eq!(
                *got,
                s.set.integer_logits[first + i].as_slice(),
                "image {i}"
            );
        }
    }
    // PROTO-5: one query per image.
    assert_eq!(server.queries_used(&who).unwrap(), 5);
}

// PROTO-8, PROTO-11: k queries in one step, all or nothing.
#[test]
fn a_batch_is_charged_as_its_images_all_or_nothing() {
    let s = setup();
    // The default policy allows 2 queries per identity.
    let mut server = endpoint("default", &[&s.pair]);
    let input: &[i64] = &s.set.inputs[0];

    let alice = ClientId("alice".into());
    batched_session(&mut server, &alice, &[input, input]);
    assert_eq!(server.queries_used(&alice).unwrap(), 2);
    let err = server.accept(&alice, request(1).1).unwrap_err();
    assert!(matches!(
        err.kind,
        ErrorKind::BudgetExhausted { used: 2, budget: 2 }
    ));
    assert_eq!(err.fault, Fault::Peer);
    assert_eq!(server.queries_used(&alice).unwrap(), 2);

    // One query used, two asked: refused, and nothing charged.
    let bob = ClientId("bob".into());
    batched_session(&mut server, &bob, &[input]);
    let err = server.accept(&bob, request(2).1).unwrap_err();
    assert!(matches!(
        err.kind,
        ErrorKind::BudgetExhausted { used: 1, budget: 2 }
    ));
    assert_eq!(server.queries_used(&bob).unwrap(), 1);
    // The one query left still serves one image.
    assert_eq!(
        batched_session(&mut server, &bob, &[input]),
        s.set.integer_logits[0]
    );
    assert_eq!(server.queries_used(&bob).unwrap(), 2);
}

// PROTO-11: a batch the endpoint does not serve is the client's fault and
// costs nothing.
#[test]
fn an_unserved_batch_is_refused_before_the_charge() {
    let s = setup();
    let mut server = endpoint("benchmark", &[&s.pair]);
    let who = ClientId("carol".into());
    let err = server.accept(&who, request(3).1).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::BatchNotServed { batch: 3 }));
    assert_eq!(err.fault, Fault::Peer);
    assert_eq!(server.queries_used(&who).unwrap(), 0);
    // Without `with_batch`, only single images are served.
    let mut plain = endpoint("benchmark", &[]);
    let err = plain.accept(&who, request(2).1).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::BatchNotServed { batch: 2 }));
    assert_eq!(plain.queries_used(&who).unwrap(), 0);
}

// PROTO-11: `with_batch` serves batches of its own model only, on its set,
// within the budget.
#[test]
fn with_batch_refuses_what_it_cannot_serve() {
    let s = setup();
    let local_policy = |r: Result<Endpoint, safhire::protocol::ProtocolError>| {
        let e = r.unwrap_err();
        assert_eq!(e.fault, Fault::Local, "{e}");
        e
    };
    let plain = || endpoint("default", &[]);
    // Three images cost three queries; the default budget is 2.
    let e = local_policy(plain().with_batch(s.triple.clone()));
    assert!(matches!(e.kind, ErrorKind::Policy(_)), "{e}");
    // A "batch" of one image is the model itself.
    local_policy(plain().with_batch(s.single.clone()));
    // A batch of another model.
    let other = common::two_round_model("other", 7);
    let other_pair = Arc::new(engine::compile_batch(&s.ctx, &other, 2).unwrap());
    local_policy(plain().with_batch(other_pair));
    // The same model batched on another set.
    let b20 = Context::new(ParameterSet::shipped("b20").unwrap());
    let elsewhere = Arc::new(engine::compile_batch(&b20, &s.model, 2).unwrap());
    local_policy(plain().with_batch(elsewhere));
    // Within the budget, of this model, on this set: served.
    assert!(plain().with_batch(s.pair.clone()).is_ok());
}

// PROTO-4, PROTO-11: the request carries its batch; 0 and more than
// MAX_BATCH are malformed, on both sides.
#[test]
fn the_request_names_its_batch_and_refuses_one_out_of_range() {
    let ctx = &setup().ctx;
    for k in [1u32, 2, MAX_BATCH as u32] {
        let (_, r) = Client::start_batch(ctx.clone(), k).unwrap();
        let back = SessionRequest::decode(ctx, &r.encode(ctx)).unwrap();
        assert_eq!(back.batch(), k);
        assert_eq!(back, r);
    }
    let (_, r) = Client::start_batch(ctx.clone(), 1).unwrap();
    let bytes = r.encode(ctx);
    for bad in [0u32, MAX_BATCH as u32 + 1, u32::MAX] {
        let mut b = bytes.clone();
        b[ENVELOPE_LEN..ENVELOPE_LEN + 4].copy_from_slice(&bad.to_le_bytes());
        let e = SessionRequest::decode(ctx, &b).unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Malformed("batch out of range")),
            "{bad}: {e}"
        );
        assert_eq!(e.fault, Fault::Peer);
        let e = Client::start_batch(ctx.clone(), bad).unwrap_err();
        assert_eq!(e.fault, Fault::Local);
    }
}

// PROTO-11: the client refuses an accept whose input or logits do not split
// into its images, and keeps its state.
#[test]
fn the_client_refuses_an_accept_that_does_not_split_into_its_images() {
    let s = setup();
    let mut server = endpoint("benchmark", &[&s.triple]);
    let who = ClientId("dave".into());
    let (_, single) = server.accept(&who, request(1).1).unwrap();
    let (_, triple) = server.accept(&who, request(3).1).unwrap();
    // The digits model takes 64 values and returns 10: not 3 images' worth.
    let (client, _) = request(3);
    let rejected = client.receive_accept(single).unwrap_err();
    assert_eq!(rejected.error.fault, Fault::Peer);
    assert!(matches!(rejected.error.kind, ErrorKind::Malformed(_)));
    // The state it keeps still takes a fitting accept.
    let ready = rejected.state.receive_accept(triple).unwrap();
    assert_eq!(ready.input_len(), 64);
    assert_eq!(ready.batch(), 3);
}

// ENG-15, proofs/batching.md step 1: every round of a batched session
// releases exactly the images' own values of that round, shuffled
// together; the last round their logits in order.
#[test]
fn a_batched_session_releases_the_images_values_shuffled_together() {
    let s = setup();
    let f = fixture("b16");
    let keys = ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    };
    let images: Vec<&Vec<i64>> = s.set.inputs[10..13].iter().collect();
    let batched = engine::run(
        &f.ctx,
        &f.sk,
        keys,
        &s.triple,
        &images
            .iter()
            .map(|x| x.as_slice())
            .collect::<Vec<_>>()
            .concat(),
        ShuffleUnit::Element,
        &SessionSeed::from_bytes([3; 32]),
    )
    .unwrap();
    let singles: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, x)| {
            engine::run(
                &f.ctx,
                &f.sk,
                keys,
                &s.single,
                x,
                ShuffleUnit::Element,
                &SessionSeed::from_bytes([i as u8 + 4; 32]),
            )
            .unwrap()
        })
        .collect();
    let rounds = s.single.rounds();
    assert_eq!(batched.client_views.len(), rounds);
    for r in 0..rounds {
        let mut got = batched.client_views[r].clone();
        let mut want: Vec<i64> = singles
            .iter()
            .flat_map(|o| o.client_views[r].clone())
            .collect();
        if r + 1 == rounds {
            // Not shuffled: the images' values in order.
            assert_eq!(got, want, "round {r}");
        }
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "round {r}: not the images' values");
    }
    // Shuffled together, by one σ over all images: the first third of round
    // 0's release is not image 0's values (a σ that keeps every image's
    // block in place has probability 1 / C(1536, 512) < 2^-1000; the values
    // of different images are unlikely to coincide as multisets).
    let first = &batched.client_views[0];
    let mut head = first[..first.len() / 3].to_vec();
    let mut own = singles[0].client_views[0].clone();
    head.sort_unstable();
    own.sort_unstable();
    assert_ne!(head, own, "round 0 shuffled image by image");
    let logits: Vec<i64> = images
        .iter()
        .flat_map(|x| s.model.evaluate(x).unwrap())
        .collect();
    assert_eq!(batched.logits, logits);
}

// ENG-15: a batch is compiled as one model with its own checks, stacks its
// last stage's rows (ENG-14) only for k a power of two, and names its model.
#[test]
fn a_batch_compiles_as_the_block_diagonal_model_and_stacks_rows_only_for_powers_of_two() {
    let s = setup();
    assert_eq!(s.single.batch(), 1);
    assert_eq!(s.pair.batch(), 2);
    assert_eq!(s.triple.batch(), 3);
    assert!(s.single.batches_the_same_model(&s.triple));
    assert_eq!(s.triple.input_len(), 3 * s.single.input_len());
    assert_eq!(s.triple.rounds(), s.single.rounds());
    for (a, b) in s.single.stages().iter().zip(s.triple.stages()) {
        assert_eq!(b.output_len(), 3 * a.output_len());
    }
    let stride = |m: &CompiledModel| {
        let stacked = m.stages().last().unwrap().stacked_rows();
        stacked.map(|s| s.stride())
    };
    // The digits model's 10 logits stack at S = 4096/16 for one image; a
    // pair's 20 rows of 512 columns at S = 4096/32 in 512/128 = 4 groups of
    // 5 rows; three images never stack (3 is not a power of two).
    assert_eq!(stride(&s.single), Some(256));
    let pair = s.pair.stages().last().unwrap();
    let stacked = pair.stacked_rows().unwrap();
    assert_eq!(
        (stacked.stride(), stacked.group_stride(), stacked.groups()),
        (128, 512, 4)
    );
    assert_eq!(pair.output_ciphertexts(), 4);
    assert_eq!(stride(&s.triple), None);
    // A last layer of 2 rows over 18 inputs stacks at S = N/P(2k) for k =
    // 1, 2, 4 (the rows fit, and the stacked ‖ŵ‖₁ is within the layout's),
    // and not for k = 3, where it would give 8 equations against 3·2.
    let small = common::two_round_model("small", 1);
    let strides: Vec<Option<usize>> = (1..=4)
        .map(|k| stride(&engine::compile_batch(&s.ctx, &small, k).unwrap()))
        .collect();
    assert_eq!(strides, [Some(2048), Some(1024), None, Some(512)]);
    assert!(engine::compile_batch(&s.ctx, &s.model, 0).is_err());
}

/// A one-layer model: linear 6 → 3 on inputs in −8..=8, weights −7..=7.
fn one_linear_layer() -> Model {
    use safhire::model::{InputSpec, Layer, Shape};
    let weights: Vec<i64> = (0..18).map(|i| (i * 5 % 15) as i64 - 7).collect();
    Model::new(
        "one-linear",
        InputSpec {
            shape: Shape::new(6, 1, 1),
            min: -8,
            max: 8,
        },
        vec![Layer::Linear {
            out_features: 3,
            weights,
            bias: vec![3, -2, 5],
        }],
    )
    .unwrap()
}

// PROTO-5, PROTO-11, proofs/batching.md: the published d + 1 attack (Kim &
// Lee) run through batched sessions of the real protocol. Each image is
// one chosen query (the base input, or the base plus v on one input), read
// from the unshuffled logits image by image: the layer's 6 columns and its
// bias fall to 7 images whatever the sessions' sizes, and a budget of 6
// images stops it one column short, batched or not.
#[test]
fn d_plus_one_through_batched_sessions_costs_the_same_queries() {
    let model = one_linear_layer();
    let ctx = Arc::new(Context::new(ParameterSet::shipped("b16").unwrap()));
    let compiled = Arc::new(engine::compile(&ctx, &model).unwrap());
    let (true_w, true_b) = match &model.layers()[0] {
        safhire::model::Layer::Linear { weights, bias, .. } => (weights.clone(), bias.clone()),
        _ => unreachable!(),
    };
    let (d, rows, base, v) = (6usize, 3usize, 0i64, 8i64);
    // Query q: the base input, then the base plus v on input q − 1.
    let query = |q: usize| {
        let mut x = vec![base; d];
        if q > 0 {
            x[q - 1] = base + v;
        }
        x
    };
    for budget in [7u64, 6] {
        let policy = Policy::load(
            &format!(
                "[[policy]]\nname = \"p\"\ngranularity = \"element\"\nquery_budget = {budget}\n\
                 allow_budget_above_attack_threshold = true\n"
            ),
            "p",
        )
        .unwrap();
        let mut server = Endpoint::new(ctx.clone(), compiled.clone(), policy)
            .unwrap()
            .with_batch(Arc::new(engine::compile_batch(&ctx, &model, 4).unwrap()))
            .unwrap();
        let who = ClientId("mallory".into());
        // Sessions of 4 images while 4 queries are left, then single images.
        let mut answers: Vec<Vec<i64>> = Vec::new();
        let mut sessions = Vec::new();
        while answers.len() < d + 1 {
            let k = if d + 1 - answers.len() >= 4 { 4 } else { 1 };
            let xs: Vec<Vec<i64>> = (answers.len()..answers.len() + k).map(query).collect();
            let (client, request) = Client::start_batch(ctx.clone(), k as u32).unwrap();
            let request = SessionRequest::decode(&ctx, &request.encode(&ctx)).unwrap();
            let (session, accept) = match server.accept(&who, request) {
                Ok(pair) => pair,
                Err(e) => {
                    assert!(matches!(e.kind, ErrorKind::BudgetExhausted { .. }), "{e}");
                    break;
                }
            };
            sessions.push(k);
            let client = client.receive_accept(accept).unwrap();
            let (client, upload) = client.send_input(&xs.concat()).unwrap();
            let ServerStep::Closed(response) = session.receive_upload(upload).unwrap() else {
                panic!("a one-round model closes after its round");
            };
            let ClientStep::Done(logits) = client.receive_response(response).unwrap() else {
                panic!("a one-round model ends after its response");
            };
            answers.extend(image_logits(&logits, k).map(<[i64]>::to_vec));
        }
        assert_eq!(server.queries_used(&who).unwrap(), answers.len() as u64);
        // Column q − 1 of W is (answer q − answer 0) / v; the bias is answer
        // 0 (base 0).
        let columns: Vec<Vec<i64>> = (1..answers.len())
            .map(|q| {
                (0..rows)
                    .map(|i| (answers[q][i] - answers[0][i]) / v)
                    .collect()
            })
            .collect();
        for (c, column) in columns.iter().enumerate() {
            let truth: Vec<i64> = (0..rows).map(|i| true_w[i * d + c]).collect();
            assert_eq!(column, &truth, "column {c}");
        }
        assert_eq!(answers[0], true_b);
        if budget == 7 {
            assert_eq!(sessions, [4, 1, 1, 1]);
            assert_eq!(columns.len(), d, "the whole layer in d + 1 queries");
        } else {
            assert_eq!(sessions, [4, 1, 1]);
            assert_eq!(columns.len(), d - 1, "one column short of the layer");
        }
    }
}

// PROTO-11 through the facade: the builder compiles the batches on the set
// it chooses, a client runs two images as one session, each image is one
// query, and a batch of a compiled model must come compiled.
#[test]
fn the_facade_serves_batches_it_was_asked_for() {
    use safhire::service::ModelServer;
    let s = setup();
    let server = ModelServer::builder(s.model.clone())
        .policy(Policy::shipped("default").unwrap())
        .batches(&[2])
        .build()
        .unwrap();
    assert_eq!(server.batches().unwrap(), [1, 2]);
    let mut client = server.client(ClientId("erin".into()));
    let inputs = [s.set.inputs[20].as_slice(), s.set.inputs[21].as_slice()];
    let inference = client.infer_batch(&inputs).unwrap();
    assert_eq!(inference.batch, 2);
    let got: Vec<&[i64]> = inference.image_logits().collect();
    assert_eq!(
        got,
        [
            s.set.integer_logits[20].as_slice(),
            s.set.integer_logits[21].as_slice()
        ]
    );
    assert_eq!(server.queries_used(&ClientId("erin".into())).unwrap(), 2);
    let over = client.infer(inputs[0]).unwrap_err();
    assert_eq!(over.budget_exhausted(), Some((2, 2)));
    // Three images are not served: refused, nothing charged.
    let mut frank = server.client(ClientId("frank".into()));
    let three = [inputs[0], inputs[1], inputs[0]];
    assert!(frank.infer_batch(&three).is_err());
    assert_eq!(server.queries_used(&ClientId("frank".into())).unwrap(), 0);
    // An input out of range is refused before any session.
    assert!(frank.infer_batch(&[inputs[0], &[99; 64]]).is_err());
    assert_eq!(server.queries_used(&ClientId("frank".into())).unwrap(), 0);
    // A compiled model's batches come compiled.
    let err = ModelServer::builder_compiled(s.ctx.clone(), s.single.clone())
        .batches(&[2])
        .build()
        .unwrap_err();
    assert!(!err.is_peer_fault());
}
