//! Input and label files (MODEL-11): a user's `.npy` or JSON input file
//! never panics the parser, and whatever parses is checked against a model
//! without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safhire::model::{InputSpec, Layer, Model, Shape, TestSet};
use std::sync::OnceLock;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let input = InputSpec {
            shape: Shape::new(1, 2, 2),
            min: 0,
            max: 15,
        };
        let linear = Layer::Linear {
            out_features: 1,
            weights: vec![1; 4],
            bias: vec![0],
        };
        Model::new("fuzz", input, vec![Layer::Flatten, linear]).expect("valid model")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = TestSet::from_npy("fuzz.npy", data) {
        assert!(!set.inputs.is_empty(), "an empty input list parsed");
        let _ = set.check_against("fuzz.npy", model());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(set) = TestSet::from_json("fuzz.json", text) {
            assert!(!set.inputs.is_empty(), "an empty input list parsed");
            let _ = set.check_against("fuzz.json", model());
        }
    }
});
