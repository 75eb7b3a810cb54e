//! ENG-1, ENG-2: encrypted inference over linear stages equals the plaintext
//! integer reference bit for bit, and the client sees each intermediate
//! layer only shuffled.

mod common;

use common::fixture;
use proptest::prelude::*;
use safhire::engine::{self, ClientOp, CompiledModel, LinearStage, ServerKeys};
use safhire::layout::{Conv2dShape, MatVecShape};
use safhire::rlwe::Context;
use safhire::rng::Csprng;
use safhire::shuffle::{SessionSeed, ShuffleUnit};

fn small(rng: &mut Csprng, len: usize, bound: i64) -> Vec<i64> {
    (0..len)
        .map(|_| rng.uniform_below(2 * bound as u64 + 1) as i64 - bound)
        .collect()
}

/// conv (C×H×W → M channels) → requantise to [0, 15] → dense layer → logits.
fn two_stage(
    ctx: &Context,
    rng: &mut Csprng,
    c: usize,
    hw: usize,
    m: usize,
    classes: usize,
) -> CompiledModel {
    let shape = Conv2dShape {
        in_channels: c,
        in_height: hw,
        in_width: hw,
        out_channels: m,
        kernel_height: 3,
        kernel_width: 3,
        stride: 1,
        padding: 1,
    };
    let w1 = small(rng, shape.weight_len().unwrap(), 3);
    let b1 = small(rng, m, 20);
    let conv = LinearStage::conv(ctx, shape, &w1, &b1, 0).unwrap();
    let fc_shape = MatVecShape {
        rows: classes,
        cols: conv.output_len(),
    };
    let w2 = small(rng, classes * conv.output_len(), 3);
    let b2 = small(rng, classes, 50);
    let fc = LinearStage::matvec(ctx, fc_shape, &w2, &b2, 1).unwrap();
    let op = ClientOp::Requantize {
        multiplier: 3,
        shift: 4,
        min: 0,
        max: 15,
    };
    CompiledModel::new(vec![conv, fc], vec![vec![op], vec![]]).unwrap()
}

fn keys() -> ServerKeys<'static> {
    let f = fixture("b16");
    ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, .. ProptestConfig::default() })]
    // ENG-1
    #[test]
    fn encrypted_logits_equal_the_reference(c in 1usize..4, hw in 2usize..12, m in 1usize..6, classes in 1usize..12, seed in any::<u8>()) {
        let f = fixture("b16");
        let mut rng = Csprng::from_seed([seed; 16]);
        let model = two_stage(&f.ctx, &mut rng, c, hw, m, classes);
        let input: Vec<i64> = (0..c * hw * hw).map(|_| rng.uniform_below(16) as i64).collect();
        let session = SessionSeed::from_bytes([seed; 32]);
        let out = engine::run(&f.ctx, &f.sk, keys(), &model, &input, ShuffleUnit::Element, &session).unwrap();
        prop_assert_eq!(out.logits, model.reference(&input).unwrap());
    }
}

// ENG-2
#[test]
fn client_sees_intermediate_values_only_shuffled() {
    let f = fixture("b16");
    let mut rng = Csprng::from_seed([5; 16]);
    let model = two_stage(&f.ctx, &mut rng, 2, 10, 4, 10);
    let input: Vec<i64> = (0..200).map(|_| rng.uniform_below(16) as i64).collect();
    let true_hidden = model.stages[0].reference(&input).unwrap();
    for unit in [ShuffleUnit::Element, ShuffleUnit::Channel] {
        let granularity = model.stages[0].granularity(unit);
        let session = SessionSeed::from_bytes([6; 32]);
        let out = engine::run(&f.ctx, &f.sk, keys(), &model, &input, unit, &session).unwrap();
        let seen = &out.client_views[0];
        // Same multiset, different order: the client got every value, shuffled.
        assert_ne!(
            seen, &true_hidden,
            "{granularity:?}: intermediate values arrived in true order"
        );
        let (mut a, mut b) = (seen.clone(), true_hidden.clone());
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        // Exactly σ_0: the server unshuffled correctly, so the logits are right.
        let sigma = session
            .permutation(0, true_hidden.len(), granularity)
            .unwrap();
        assert_eq!(&sigma.apply(&true_hidden).unwrap(), seen);
        assert_eq!(out.logits, model.reference(&input).unwrap());
        // The last round is not shuffled.
        assert_eq!(out.client_views[1], out.logits);
    }
}

#[test]
fn mismatched_inputs_are_refused() {
    let f = fixture("b16");
    let mut rng = Csprng::from_seed([7; 16]);
    let model = two_stage(&f.ctx, &mut rng, 1, 4, 2, 3);
    let session = SessionSeed::from_bytes([1; 32]);
    assert!(matches!(
        engine::run(
            &f.ctx,
            &f.sk,
            keys(),
            &model,
            &[1, 2, 3],
            ShuffleUnit::Element,
            &session
        ),
        Err(engine::EngineError::InputLength {
            expected: 16,
            got: 3
        })
    ));
}
