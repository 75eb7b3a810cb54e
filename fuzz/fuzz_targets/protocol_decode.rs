//! Protocol message decoding (PROTO-4) and permutation validation (SHUF-3):
//! never panics; whatever decodes re-encodes to exactly the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safhire::params::ParameterSet;
use safhire::protocol::{Response, SessionAccept, SessionRequest, Upload};
use safhire::rlwe::Context;
use safhire::shuffle::Permutation;
use std::sync::OnceLock;

fn ctx() -> &'static Context {
    static C: OnceLock<Context> = OnceLock::new();
    C.get_or_init(|| Context::new(ParameterSet::shipped("b16").expect("shipped set")))
}

fuzz_target!(|data: &[u8]| {
    let ctx = ctx();
    if let Ok(m) = SessionAccept::decode(ctx, data) {
        assert!(m.encode(ctx) == data, "SessionAccept decode is not canonical");
    }
    if let Ok(m) = Upload::decode(ctx, data) {
        assert!(m.encode(ctx) == data, "Upload decode is not canonical");
    }
    if let Ok(m) = Response::decode(ctx, data) {
        assert!(m.encode(ctx) == data, "Response decode is not canonical");
    }
    if let Ok(m) = SessionRequest::decode(ctx, data) {
        assert!(m.encode(ctx) == data, "SessionRequest decode is not canonical");
    }
    // Permutations from untrusted maps: valid ones invert exactly.
    let map: Vec<u32> = data.iter().map(|&b| (b % 32) as u32).collect();
    if let Ok(p) = Permutation::from_map(map.clone()) {
        let items: Vec<usize> = (0..map.len()).collect();
        let there = p.apply(&items).expect("length matches");
        assert!(p.inverse().apply(&there).expect("length matches") == items);
    }
});
