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
    assert_eq!(compiled.rounds(), 3, "conv, pool+conv, pool+flatten+linear");
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

/// Runs `compiled` encrypted on a random input in [0, 15] of length `len`
/// (seeded by `seed`) and checks that its plaintext reference and its
/// encrypted logits both equal the model's evaluator, bit for bit.
fn assert_runs_exactly(model: &Model, compiled: &engine::CompiledModel, len: usize, seed: u8) {
    let f = fixture("b16");
    let mut rng = safhire::rng::Csprng::from_seed([seed; 16]);
    let input: Vec<i64> = (0..len).map(|_| rng.uniform_below(16) as i64).collect();
    let expected = model.evaluate(&input).unwrap();
    assert_eq!(compiled.reference(&input).unwrap(), expected);
    let keys = ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    };
    let session = SessionSeed::from_bytes([seed; 32]);
    let out = engine::run(
        &f.ctx,
        &f.sk,
        keys,
        compiled,
        &input,
        ShuffleUnit::Element,
        &session,
    )
    .unwrap();
    assert_eq!(out.logits, expected, "seed {seed}");
}

/// A small ResNet-style model on 2 × `side` × `side` with an identity and
/// a projection shortcut and a standalone global pool.
fn residual_model(seed: u8, side: usize) -> safhire::model::Model {
    use safhire::model::{InputSpec, Layer, Model, Shape};
    let mut rng = safhire::rng::Csprng::from_seed([seed; 16]);
    let mut w =
        |len: usize| -> Vec<i64> { (0..len).map(|_| rng.uniform_below(5) as i64 - 2).collect() };
    let conv = |w: &mut dyn FnMut(usize) -> Vec<i64>,
                cin: usize,
                cout: usize,
                k: usize,
                stride: usize,
                padding: usize| Layer::Conv2d {
        out_channels: cout,
        kernel_h: k,
        kernel_w: k,
        stride,
        padding,
        groups: 1,
        weights: w(cout * cin * k * k),
        bias: w(cout),
    };
    let rq = || Layer::Requantize {
        multiplier: 1,
        shift: 3,
        min: 0,
        max: 15,
    };
    let layers = vec![
        conv(&mut w, 2, 4, 3, 1, 1), // 0
        rq(),                        // 1
        conv(&mut w, 4, 4, 3, 1, 1), // 2
        Layer::ResidualAdd { from: 1 },
        rq(),                        // 4
        conv(&mut w, 4, 8, 3, 2, 1), // 5: 8×3×3
        rq(),
        conv(&mut w, 8, 8, 3, 1, 1), // 7
        Layer::Branch { from: 4 },
        conv(&mut w, 4, 8, 1, 2, 0), // 9: projection shortcut
        Layer::ResidualAdd { from: 7 },
        rq(),
        Layer::GlobalAvgPool,
        rq(),
        Layer::Flatten,
        Layer::Linear {
            out_features: 3,
            weights: w(3 * 8),
            bias: w(3),
        },
    ];
    let spec = InputSpec {
        shape: Shape::new(2, side, side),
        min: 0,
        max: 15,
    };
    Model::new("residual-test", spec, layers).unwrap()
}

// ENG-4: residual connections (identity and 1×1 projection) compile and
// run encrypted, bit for bit.
#[test]
fn residual_models_compile_and_run_encrypted() {
    let f = fixture("b16");
    for seed in 0..3u8 {
        let model = residual_model(seed, 6);
        let compiled = engine::compile(&f.ctx, &model).unwrap();
        assert_eq!(
            compiled
                .stages()
                .iter()
                .filter(|s| s.has_shortcut())
                .count(),
            2
        );
        // ENG-12: the identity operand is the stage's own repacked upload;
        // the 1×1 projection, embedded in the 3×3 main conv's kernel frame,
        // reads that conv's repack.
        use engine::Shortcut;
        let shortcuts: Vec<_> = compiled
            .stages()
            .iter()
            .filter_map(|s| s.shortcut())
            .collect();
        assert!(
            matches!(
                shortcuts[..],
                [
                    Shortcut::RepackedIdentity { round: 1, .. },
                    Shortcut::RepackedConv { round: 2, .. }
                ]
            ),
            "{shortcuts:?}"
        );
        assert_runs_exactly(&model, &compiled, 72, seed + 10);
    }
}

#[test]
fn resnet20_compiles_to_the_same_function() {
    use safhire::model::zoo;
    let f = fixture("b16");
    let model = zoo::resnet20(1);
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    // ENG-12: each of its seven identity shortcuts joins inside its
    // stage's linear layer (a block's two convs share their input layout),
    // and its two projections read their block's repack.
    let count = |f: fn(&engine::Shortcut) -> bool| {
        compiled
            .stages()
            .iter()
            .filter(|s| s.shortcut().is_some_and(f))
            .count()
    };
    assert_eq!(
        count(|s| matches!(s, engine::Shortcut::RepackedIdentity { .. })),
        7
    );
    assert_eq!(
        count(|s| matches!(s, engine::Shortcut::RepackedConv { .. })),
        2
    );
    let mut rng = safhire::rng::Csprng::from_seed([6; 16]);
    let spec = model.input();
    let input: Vec<i64> = (0..spec.shape.len().unwrap())
        .map(|_| spec.min + rng.uniform_below((spec.max - spec.min + 1) as u64) as i64)
        .collect();
    assert_eq!(
        compiled.reference(&input).unwrap(),
        model.evaluate(&input).unwrap()
    );
}

// ENG-13: ResNet-20's two stride-2 convs price lower as stride-1 convs
// over their input's four phases, and the projections that ENG-12 embeds
// in their kernel frames are rewritten with them; every stage still
// reports the conv as stated (stride 2, its own fan-in). A small residual
// model's stride-2 block and projection do the same and run encrypted bit
// for bit (as does the digits model's folded pool, a 6×6 stride-2 conv
// over its phases, in `encrypted_inference_of_the_shipped_model_is_exact`).
#[test]
fn strided_convs_run_over_their_phases() {
    let f = fixture("b16");
    let compiled = engine::compile(&f.ctx, &safhire::model::zoo::resnet20(1)).unwrap();
    let strided: Vec<usize> = (0..compiled.stages().len())
        .filter(|&r| {
            compiled.stages()[r]
                .conv_shape()
                .is_some_and(|s| s.stride == 2)
        })
        .collect();
    assert_eq!(strided.len(), 2, "{strided:?}");
    for &r in &strided {
        let stage = &compiled.stages()[r];
        assert!(stage.evaluates_phases(), "stage {r}");
        assert_eq!(stage.conv_shape().unwrap().kernel_height, 3);
    }
    let projections: Vec<_> = compiled
        .stages()
        .iter()
        .filter_map(|s| match s.shortcut() {
            Some(engine::Shortcut::RepackedConv { round, stage }) => Some((*round, stage)),
            _ => None,
        })
        .collect();
    assert_eq!(projections.len(), 2);
    for (round, branch) in projections {
        assert!(strided.contains(&round), "reads round {round}");
        assert!(branch.evaluates_phases());
        assert_eq!(branch.conv_shape().unwrap().stride, 2);
    }
    assert!(compiled
        .stages()
        .iter()
        .filter(|s| s.conv_shape().is_some_and(|c| c.stride == 1))
        .all(|s| !s.evaluates_phases()));

    let digits = engine::compile(&f.ctx, &Model::from_json(MODEL).unwrap()).unwrap();
    assert_eq!(digits.stages()[1].conv_shape().unwrap().stride, 2);
    assert!(digits.stages()[1].evaluates_phases());

    // On 2×12×12 the block's 4 → 8 stride-2 conv prices lower over its
    // phases (on 2×6×6 it does not), and its projection reads that repack.
    for seed in 3..5u8 {
        let model = residual_model(seed, 12);
        let compiled = engine::compile(&f.ctx, &model).unwrap();
        let stage = &compiled.stages()[2];
        assert_eq!(stage.conv_shape().unwrap().stride, 2);
        assert!(stage.evaluates_phases(), "seed {seed}");
        match compiled.stages()[3].shortcut() {
            Some(engine::Shortcut::RepackedConv { round: 2, stage }) => {
                assert!(stage.evaluates_phases())
            }
            other => panic!("seed {seed}: {other:?}"),
        }
        assert_runs_exactly(&model, &compiled, 2 * 12 * 12, seed + 20);
    }
}

// PROTO-6: ResNet-20's cheapest stage under element shuffling is its stem
// conv: 3·3·3 + 1 = 28 queries by fan-in, but the single-pixel probes
// (AUDIT-7) need 3 groups (each corner class has one pixel, shared by the
// 3 input channels): the bias probe and 9 sessions, 10. A
// projection-shortcut stage adds the shortcut's fan-in. The default
// policy's budget is below the threshold.
#[test]
fn resnet20_attack_threshold_is_its_stem_conv() {
    use safhire::protocol::Policy;
    let f = fixture("b16");
    let compiled = engine::compile(&f.ctx, &safhire::model::zoo::resnet20(1)).unwrap();
    let policy = Policy::shipped("default").unwrap();
    assert_eq!(policy.attack_threshold(&compiled), Some((10, 0)));
    assert_eq!(
        compiled.stages()[0].attack_queries(ShuffleUnit::Element),
        Some(28)
    );
    assert!(policy.query_budget() + 1 < 10);
    let projections: Vec<u64> = compiled
        .stages()
        .iter()
        .filter(|s| s.has_shortcut())
        .filter_map(|s| s.attack_queries(ShuffleUnit::Element))
        .collect();
    // Every residual stage costs at least its own 3×3 fan-in + 1.
    assert!(projections.iter().all(|&q| q > 16 * 9), "{projections:?}");
}

// ENG-9, ENG-11: a mat-vec stage of the digits model is laid out for the
// smallest ring degree that keeps its layout's ciphertext counts at N; a
// conv stage for the degree n' = N/s that prices lowest, with k ≤ s of its
// output ciphertexts interleaved into one. Both convs (a 1×8×8 image, and
// 8×8×8 with the pool folded) dilate and interleave, so their output packs
// draw on no more sources than N's undilated layout gives them. The
// encrypted tests above run these stages bit for bit.
#[test]
fn the_digits_stages_are_laid_out_by_price() {
    use safhire::layout::{Conv2dLayout, MatVecLayout};
    let f = fixture("b16");
    let n = f.ctx.n();
    let model = Model::from_json(MODEL).unwrap();
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    for (r, stage) in compiled.stages().iter().enumerate() {
        let (s, k) = (stage.dilation(), stage.interleave());
        println!("stage {r}: dilation {s}, interleave {k}");
        assert!(s.is_power_of_two() && n.is_multiple_of(s), "stage {r}: {s}");
        assert!(
            k >= 1 && k <= s,
            "stage {r}: interleave {k} with dilation {s}"
        );
        let (inputs, outputs) = match (stage.conv_shape(), stage.matvec_shape()) {
            (Some(shape), _) => {
                assert!(s > 1 && k > 1, "stage {r}: s = {s}, k = {k}");
                // The blocking is priced too (engine::stage's unit tests
                // check the choice); what the output pack draws on is not
                // more than N's layout gives it.
                let at_n = Conv2dLayout::new(shape, n).unwrap();
                let outputs = stage.output_ciphertexts();
                assert!(
                    outputs <= at_n.output_ciphertexts(),
                    "stage {r}: the output pack has more sources than at N"
                );
                (stage.input_ciphertexts(), outputs)
            }
            (None, Some(shape)) => {
                assert_eq!(k, 1, "stage {r}: a mat-vec does not interleave");
                let at_n = MatVecLayout::new(shape, n).unwrap();
                let smaller = MatVecLayout::new(shape, n / s / 2);
                let counts = (at_n.input_ciphertexts(), at_n.output_ciphertexts());
                assert!(
                    !matches!(smaller, Ok(l) if (l.input_ciphertexts(), l.output_ciphertexts()) == counts),
                    "stage {r}: a larger dilation was possible"
                );
                counts
            }
            _ => unreachable!("a stage is a conv or a mat-vec"),
        };
        if stage.reads_upload_directly() {
            // ENG-10: the last stage, a mat-vec, reads its upload as it
            // arrived (no repack into the layout), one row per output
            // ciphertext, or all of them in one where ENG-14 stacks them;
            // the layout's counts price the repack it replaces.
            assert!(stage.matvec_shape().is_some(), "stage {r}");
            assert_eq!(stage.input_ciphertexts(), stage.input_len().div_ceil(n));
            let rows = match stage.stacked_rows() {
                Some(stacked) => stacked.groups().min(stage.output_len()),
                None => stage.output_len(),
            };
            assert_eq!(stage.output_ciphertexts(), rows);
        } else {
            assert_eq!(stage.input_ciphertexts(), inputs, "stage {r}");
            assert_eq!(stage.output_ciphertexts(), outputs, "stage {r}");
        }
    }
    let last = compiled.stages().last().unwrap();
    assert!(
        last.reads_upload_directly(),
        "the digits classifier repacks"
    );
}

// ENG-14: a final mat-vec that reads its upload, with columns no more than
// the response's stride, lands all its rows in one ciphertext at the
// response's coefficients and is packed by the trace: the digits
// classifier (10 rows of 256 columns, S = 256) and ResNet-20's (10 × 64).
// One with more columns than the stride (40 rows of 256 columns: S = 64)
// lays its rows in S_g/S = 256/64 = 4 groups, row i in ciphertext i mod 4
// at 256·⌊i/4⌋, and traces the 4 to the multiples of 64. All run encrypted
// bit for bit (the digits model also in
// `encrypted_inference_of_the_shipped_model_is_exact`). PROTO-6 counts the
// stacked classifier's 10 rows of 64 pooled inputs and a bias, 650
// unknowns, at the response's 16 slots per query; the wide one's 40 rows
// of 257 unknowns at 64 slots.
#[test]
fn a_final_classifier_lands_at_the_response_and_is_traced() {
    let f = fixture("b16");
    let n = f.ctx.n();
    let digits = Model::from_json(MODEL).unwrap();
    let compiled = engine::compile(&f.ctx, &digits).unwrap();
    let last = compiled.stages().last().unwrap();
    let stacked = last.stacked_rows().unwrap();
    assert_eq!((stacked.stride(), stacked.groups()), (256, 1));
    assert_eq!(last.output_ciphertexts(), 1);
    assert_eq!(last.independent_inputs(), 64);
    assert_eq!(
        last.attack_queries(ShuffleUnit::Element),
        Some((10 * 65u64).div_ceil(16))
    );
    assert!(compiled.stages()[..compiled.stages().len() - 1]
        .iter()
        .all(|s| s.stacked_rows().is_none()));
    assert_runs_exactly(&digits, &compiled, 64, 21);

    let resnet = engine::compile(&f.ctx, &safhire::model::zoo::resnet20(1)).unwrap();
    let stacked = resnet.stages().last().unwrap().stacked_rows().unwrap();
    assert_eq!((stacked.stride(), stacked.groups()), (n / 16, 1));

    // 8×8 input, a 4-channel conv, flatten (256 values) and 40 outputs.
    let mut rng = safhire::rng::Csprng::from_seed([22; 16]);
    let mut w =
        |len: usize| -> Vec<i64> { (0..len).map(|_| rng.uniform_below(7) as i64 - 3).collect() };
    let json = format!(
        r#"{{"format": "safhire-model", "version": 1, "name": "wide-classifier",
        "input": {{"shape": [1, 8, 8], "min": 0, "max": 15}},
        "layers": [
          {{"op": "conv2d", "out_channels": 4, "kernel_h": 3, "kernel_w": 3,
            "stride": 1, "padding": 1, "weights": {:?}, "bias": [1, 2, 3, 4]}},
          {{"op": "requantize", "multiplier": 1, "shift": 4, "min": 0, "max": 15}},
          {{"op": "flatten"}},
          {{"op": "linear", "out_features": 40, "weights": {:?}, "bias": {:?}}}
        ]}}"#,
        w(36),
        w(40 * 256),
        w(40)
    );
    let wide = Model::from_json(&json).unwrap();
    let compiled = engine::compile(&f.ctx, &wide).unwrap();
    let last = compiled.stages().last().unwrap();
    assert!(last.reads_upload_directly());
    let stacked = last.stacked_rows().unwrap();
    assert_eq!(
        (stacked.stride(), stacked.group_stride(), stacked.groups()),
        (64, 256, 4)
    );
    assert_eq!(last.output_ciphertexts(), 4);
    assert_eq!(
        last.attack_queries(ShuffleUnit::Element),
        Some((40 * 257u64).div_ceil(64))
    );
    assert_runs_exactly(&wide, &compiled, 64, 23);
}

/// Two ResNet-style blocks on 4×6×6: stage 1 and stage 2 are 4 → 4 3×3
/// convs, and stage 2 adds round 1's upload (the identity shortcut of
/// ENG-4). With `second_kernel` = 3 the two stages share their input
/// layout, so ENG-12 adds the operand inside stage 2's linear layer from
/// round 1's kept repack; with 1 (a 1×1 second conv) the layouts differ
/// and the operand stays a second term of the output pack.
fn block_model(seed: u8, second_kernel: usize) -> safhire::model::Model {
    use safhire::model::{InputSpec, Layer, Model, Shape};
    let mut rng = safhire::rng::Csprng::from_seed([seed; 16]);
    let mut w =
        |len: usize| -> Vec<i64> { (0..len).map(|_| rng.uniform_below(5) as i64 - 2).collect() };
    let mut conv = |k: usize| Layer::Conv2d {
        out_channels: 4,
        kernel_h: k,
        kernel_w: k,
        stride: 1,
        padding: k / 2,
        groups: 1,
        weights: w(4 * 4 * k * k),
        bias: w(4),
    };
    let rq = || Layer::Requantize {
        multiplier: 1,
        shift: 3,
        min: 0,
        max: 15,
    };
    let layers = vec![
        conv(3), // 0: stage 0
        rq(),    // 1: round 1's upload
        conv(3), // 2: stage 1
        rq(),    // 3: round 2's upload
        conv(second_kernel),
        Layer::ResidualAdd { from: 1 }, // 5: stage 2 + round 1's upload
        rq(),
        Layer::Flatten,
        Layer::Linear {
            out_features: 3,
            weights: w(3 * 4 * 36),
            bias: w(3),
        },
    ];
    let spec = InputSpec {
        shape: Shape::new(4, 6, 6),
        min: 0,
        max: 15,
    };
    Model::new("block-test", spec, layers).unwrap()
}

// ENG-12: an identity shortcut whose operand was repacked in the stage's
// own input layout joins inside the linear layer (round 1's repack kept
// through round 2), one with another layout stays in the output pack;
// both give the model's logits bit for bit.
#[test]
fn identity_shortcuts_reuse_the_repack_in_the_stage_layout() {
    use safhire::engine::Shortcut;
    let f = fixture("b16");
    for (second_kernel, reused) in [(3, true), (1, false)] {
        for seed in 0..2u8 {
            let model = block_model(seed, second_kernel);
            let compiled = engine::compile(&f.ctx, &model).unwrap();
            let shortcut = compiled.stages()[2].shortcut();
            assert!(
                match shortcut {
                    Some(Shortcut::RepackedIdentity { round: 1, .. }) => reused,
                    Some(Shortcut::Identity { round: 1 }) => !reused,
                    _ => false,
                },
                "kernel {second_kernel}: {shortcut:?}"
            );
            assert_runs_exactly(&model, &compiled, 144, seed + 20);
        }
    }
}
