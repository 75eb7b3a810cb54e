//! ENG-3 on the shipped model: the digits CNN (models/) compiles to stages
//! whose plaintext semantics equal the model's reference evaluator and the
//! training script's integer logits, and encrypted inference on a sample of
//! the test set gives the same logits bit for bit.

mod common;

use common::fixture;
use safhire::engine::{self, ServerKeys};
use safhire::model::Model;
use safhire::shuffle::{SessionSeed, ShuffleUnit};

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

#[derive(serde::Deserialize)]
struct TestSet {
    inputs: Vec<Vec<i64>>,
    labels: Vec<usize>,
    integer_logits: Vec<Vec<i64>>,
}

fn test_set() -> TestSet {
    serde_json::from_str(TEST_SET).unwrap()
}

fn argmax(v: &[i64]) -> usize {
    // First index on ties, as the training script does.
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn reference_evaluator_matches_the_training_script() {
    let model = Model::from_json(MODEL).unwrap();
    let set = test_set();
    assert_eq!(set.inputs.len(), 360);
    let mut correct = 0;
    for ((x, label), logits) in set.inputs.iter().zip(&set.labels).zip(&set.integer_logits) {
        let got = model.evaluate(x).unwrap();
        assert_eq!(&got, logits);
        correct += usize::from(argmax(&got) == *label);
    }
    // The shipped README states 98.61 % (355 / 360).
    assert_eq!(correct, 355);
}

// ENG-3
#[test]
fn compiled_stages_equal_the_model_on_the_whole_test_set() {
    let f = fixture("b16");
    let model = Model::from_json(MODEL).unwrap();
    model.check_against(f.ctx.params()).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    assert_eq!(
        compiled.stages.len(),
        3,
        "conv, pool+conv, pool+flatten+linear"
    );
    for x in &test_set().inputs {
        assert_eq!(compiled.reference(x).unwrap(), model.evaluate(x).unwrap());
    }
}

#[test]
fn encrypted_inference_of_the_shipped_model_is_exact() {
    let f = fixture("b16");
    let model = Model::from_json(MODEL).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let set = test_set();
    let keys = ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    };
    for k in [0usize, 101, 359] {
        let seed = SessionSeed::from_bytes([k as u8; 32]);
        let out = engine::run(
            &f.ctx,
            &f.sk,
            keys,
            &compiled,
            &set.inputs[k],
            ShuffleUnit::Element,
            &seed,
        )
        .unwrap();
        assert_eq!(out.logits, set.integer_logits[k], "test image {k}");
    }
}
