//! ENG-8: the server's work runs on the caller's rayon pool, and what it
//! returns does not depend on how many threads that pool has: the same
//! logits and client views from `engine::run`, and bit-identical response
//! ciphertexts from `engine::RoundEvaluator` for the same generator state.
//! `safhire bench` reports 1 and 2 threads and the projected scaling.

mod common;

use common::fixture;
use safhire::engine::{self, ReceivedUpload, RoundEvaluator, ServerKeys};
use safhire::model::Model;
use safhire::protocol::client_steps;
use safhire::rlwe::Ciphertext;
use safhire::rng::Csprng;
use safhire::shuffle::{SessionSeed, ShuffleUnit};

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

#[derive(serde::Deserialize)]
struct TestSet {
    inputs: Vec<Vec<i64>>,
    integer_logits: Vec<Vec<i64>>,
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Every round's response of the digits model on `input`, with the server's
/// and the client's generators seeded, so two runs see the same uploads.
fn transcript(input: &[i64]) -> (Vec<Vec<Ciphertext>>, Vec<i64>) {
    let f = fixture("b16");
    let model = Model::from_json(MODEL).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let keys = ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    };
    let seed = SessionSeed::from_bytes([3; 32]);
    let mut client_rng = Csprng::from_seed([1; 16]);
    let mut server_rng = Csprng::from_seed([2; 16]);
    let evaluator =
        RoundEvaluator::new(&f.ctx, keys, &compiled, &seed, ShuffleUnit::Element.into()).unwrap();
    let mut history = Vec::new();
    let mut previous = None;
    let mut held = input.to_vec();
    let mut responses = Vec::new();
    for r in 0..compiled.rounds() {
        let upload = client_steps::client_encrypt(&f.ctx, &f.sk, &held, &mut client_rng);
        history.push(ReceivedUpload::new(
            upload.iter().map(|c| c.expand(f.ctx.q())).collect(),
            previous.take(),
        ));
        let round = evaluator
            .evaluate(r, &mut history, &mut server_rng)
            .unwrap();
        held = client_steps::client_values(
            &f.ctx,
            &f.sk,
            &round.ciphertexts,
            compiled.stages()[r].output_len(),
        );
        client_steps::apply_client_ops(&compiled.client_ops()[r], &mut held);
        responses.push(round.ciphertexts);
        previous = round.shuffle;
    }
    (responses, held)
}

#[test]
fn server_responses_are_bit_identical_on_one_two_and_three_threads() {
    let set: TestSet = serde_json::from_str(TEST_SET).unwrap();
    let k = 7;
    let (one, logits) = pool(1).install(|| transcript(&set.inputs[k]));
    assert_eq!(logits, set.integer_logits[k]);
    for threads in [2, 3] {
        let (many, logits_many) = pool(threads).install(|| transcript(&set.inputs[k]));
        assert_eq!(logits_many, logits, "{threads} threads: logits");
        assert_eq!(many.len(), one.len());
        for (r, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(a == b, "{threads} threads: round {r} responses differ");
        }
    }
}

#[test]
fn engine_run_gives_the_same_logits_and_views_on_one_and_two_threads() {
    let f = fixture("b16");
    let model = Model::from_json(MODEL).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let set: TestSet = serde_json::from_str(TEST_SET).unwrap();
    let keys = ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    };
    for k in [0usize, 200] {
        let seed = SessionSeed::from_bytes([k as u8; 32]);
        let run = || {
            engine::run(
                &f.ctx,
                &f.sk,
                keys,
                &compiled,
                &set.inputs[k],
                ShuffleUnit::Element,
                &seed,
            )
            .unwrap()
        };
        let one = pool(1).install(run);
        let two = pool(2).install(run);
        assert_eq!(one.logits, set.integer_logits[k], "image {k}");
        assert_eq!(two.logits, one.logits, "image {k}: logits bit for bit");
        assert_eq!(two.client_views, one.client_views, "image {k}: views");
    }
}

#[test]
fn concurrent_sessions_share_the_global_pool() {
    // Two sessions at once, each calling the engine from a thread of its
    // own (what a server with several clients does): their loops go to the
    // one global pool, interleave there, and both stay exact.
    let f = fixture("b16");
    let model = Model::from_json(MODEL).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let set: TestSet = serde_json::from_str(TEST_SET).unwrap();
    let keys = ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = [5usize, 6]
            .into_iter()
            .map(|k| {
                let (compiled, set) = (&compiled, &set);
                s.spawn(move || {
                    let out = engine::run(
                        &f.ctx,
                        &f.sk,
                        keys,
                        compiled,
                        &set.inputs[k],
                        ShuffleUnit::Element,
                        &SessionSeed::from_bytes([k as u8; 32]),
                    )
                    .unwrap();
                    assert_eq!(out.logits, set.integer_logits[k], "session {k}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn bench_reports_one_and_two_threads_and_the_projected_scaling() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_safhire"))
            .args(args)
            .output()
            .expect("the safhire binary runs")
    };
    let out = run(&["bench", "digits", "--threads-sweep", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bit_exact"], true);
    let sweep = &report["threads_sweep"];
    let measured = sweep["measured"].as_array().unwrap();
    assert_eq!(measured[0]["threads"], 1);
    assert_eq!(measured[1]["threads"], 2);
    assert!(measured
        .iter()
        .all(|m| m["median_server_ms"].as_f64().unwrap() > 0.0));
    assert_eq!(measured[0]["speedup"], 1.0);
    let model = &sweep["model"];
    let (work, t1) = (
        model["parallel_work_ms"].as_f64().unwrap(),
        model["profiled_server_ms"].as_f64().unwrap(),
    );
    assert!(work > 0.0 && work <= t1, "work {work} of {t1} ms");
    let projection = model["projection"].as_array().unwrap();
    assert_eq!(projection.len(), 5);
    for p in projection {
        let (ideal, bound) = (
            p["ideal_ms"].as_f64().unwrap(),
            p["greedy_bound_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < ideal && ideal <= bound && bound <= t1, "{p}");
    }

    let out = run(&["bench", "digits", "--threads", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["threads"], 2);
    assert_eq!(report["bit_exact"], true);
    assert!(report["threads_sweep"].is_null());

    for args in [
        &["bench", "digits", "--threads", "0"][..],
        &["bench", "digits", "--threads", "2", "--threads-sweep"][..],
        &["bench", "digits", "--repeat", "3"][..],
    ] {
        assert_eq!(run(args).status.code(), Some(2), "{args:?}");
    }
}
