//! ENG-1, ENG-2, ENG-5, ENG-6: encrypted inference equals the plaintext
//! integer reference bit for bit, the client sees each intermediate layer
//! only shuffled, and a model is either compiled with every check passed or
//! refused — there is no other way to obtain a `CompiledModel`.

mod common;

use common::fixture;
use proptest::prelude::*;
use safhire::engine::{self, EngineError, ServerKeys};
use safhire::model::{InputSpec, Layer, Model, ModelError, Shape};
use safhire::params::ParamError;
use safhire::rlwe::Context;
use safhire::rng::Csprng;
use safhire::select::{self, Requirement};
use safhire::shuffle::{SessionSeed, ShuffleUnit};

fn small(rng: &mut Csprng, len: usize, bound: i64) -> Vec<i64> {
    (0..len)
        .map(|_| rng.uniform_below(2 * bound as u64 + 1) as i64 - bound)
        .collect()
}

fn input_spec(c: usize, h: usize, w: usize, min: i64, max: i64) -> InputSpec {
    InputSpec {
        shape: Shape::new(c, h, w),
        min,
        max,
    }
}

fn conv(
    out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    weights: Vec<i64>,
    bias: Vec<i64>,
) -> Layer {
    Layer::Conv2d {
        out_channels: out,
        kernel_h: k,
        kernel_w: k,
        stride,
        padding,
        groups: 1,
        weights,
        bias,
    }
}

fn requantize(multiplier: i64, shift: u32, max: i64) -> Layer {
    Layer::Requantize {
        multiplier,
        shift,
        min: 0,
        max,
    }
}

/// conv (C×H×W → M channels) → requantise to [0, 15] → flatten → dense → logits.
fn two_stage(rng: &mut Csprng, c: usize, hw: usize, m: usize, classes: usize) -> Model {
    conv_then_linear(rng, "two-stage", c, hw, m, classes, 3)
}

/// [`two_stage`] with its name and the dense layer's weight bound given.
fn conv_then_linear(
    rng: &mut Csprng,
    name: &str,
    c: usize,
    hw: usize,
    m: usize,
    classes: usize,
    dense_bound: i64,
) -> Model {
    let w1 = small(rng, m * c * 9, 3);
    let b1 = small(rng, m, 20);
    let w2 = small(rng, classes * m * hw * hw, dense_bound);
    let b2 = small(rng, classes, 50);
    Model::new(
        name,
        input_spec(c, hw, hw, 0, 15),
        vec![
            conv(m, 3, 1, 1, w1, b1),
            requantize(3, 4, 15),
            Layer::Flatten,
            Layer::Linear {
                out_features: classes,
                weights: w2,
                bias: b2,
            },
        ],
    )
    .unwrap()
}

fn keys(set: &str) -> ServerKeys<'static> {
    let f = fixture(set);
    ServerKeys {
        galois: &f.galois,
        public: &f.pk,
    }
}

fn random_input(rng: &mut Csprng, model: &Model) -> Vec<i64> {
    let spec = model.input();
    let span = spec.max.abs_diff(spec.min) + 1;
    (0..spec.shape.len().unwrap())
        .map(|_| spec.min + rng.uniform_below(span) as i64)
        .collect()
}

/// Encrypted logits of `model` on `input` under the fixture of `set`.
fn encrypted(set: &str, model: &Model, input: &[i64], seed: u8) -> Result<Vec<i64>, EngineError> {
    let f = fixture(set);
    let compiled = engine::compile(&f.ctx, model)?;
    let session = SessionSeed::from_bytes([seed; 32]);
    let out = engine::run(
        &f.ctx,
        &f.sk,
        keys(set),
        &compiled,
        input,
        ShuffleUnit::Element,
        &session,
    )?;
    Ok(out.logits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, .. ProptestConfig::default() })]
    // ENG-1
    #[test]
    fn encrypted_logits_equal_the_reference(c in 1usize..4, hw in 2usize..12, m in 1usize..6, classes in 1usize..12, seed in any::<u8>()) {
        let mut rng = Csprng::from_seed([seed; 16]);
        let model = two_stage(&mut rng, c, hw, m, classes);
        let input = random_input(&mut rng, &model);
        prop_assert_eq!(encrypted("b16", &model, &input, seed).unwrap(), model.evaluate(&input).unwrap());
    }
}

// ENG-2
#[test]
fn client_sees_intermediate_values_only_shuffled() {
    let f = fixture("b16");
    let mut rng = Csprng::from_seed([5; 16]);
    let model = two_stage(&mut rng, 2, 10, 4, 10);
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let input = random_input(&mut rng, &model);
    let true_hidden = compiled.stages()[0].reference(&input).unwrap();
    for unit in [ShuffleUnit::Element, ShuffleUnit::Channel] {
        let granularity = compiled.stages()[0].granularity(unit);
        let session = SessionSeed::from_bytes([6; 32]);
        let out = engine::run(
            &f.ctx,
            &f.sk,
            keys("b16"),
            &compiled,
            &input,
            unit,
            &session,
        )
        .unwrap();
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
        assert_eq!(out.logits, model.evaluate(&input).unwrap());
        // The last round is not shuffled.
        assert_eq!(out.client_views[1], out.logits);
    }
}

// ENG-5
#[test]
fn inputs_of_the_wrong_length_or_range_are_refused() {
    let f = fixture("b16");
    let mut rng = Csprng::from_seed([7; 16]);
    let model = two_stage(&mut rng, 1, 4, 2, 3);
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    let session = SessionSeed::from_bytes([1; 32]);
    let run = |input: &[i64]| {
        engine::run(
            &f.ctx,
            &f.sk,
            keys("b16"),
            &compiled,
            input,
            ShuffleUnit::Element,
            &session,
        )
    };
    assert!(matches!(
        run(&[1, 2, 3]),
        Err(EngineError::InputLength {
            expected: 16,
            got: 3
        })
    ));
    // 16 is outside [0, 15]: the accumulator bounds would not hold.
    let mut input = vec![0i64; 16];
    input[9] = 16;
    let err = run(&input).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::InputOutOfRange {
                index: 9,
                min: 0,
                max: 15
            }
        ),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("16"),
        "the input value is the client's secret: {err}"
    );
    input[9] = -1;
    assert!(matches!(
        run(&input),
        Err(EngineError::InputOutOfRange { index: 9, .. })
    ));
}

/// A conv whose ‖w‖₁ per output is modest (it passes every set's noise
/// budget from b16 up) but whose worst-case accumulator on 8-bit inputs
/// needs 21 bits: b16 must refuse it, b24 must run it exactly.
fn overflows_b16() -> Model {
    let mut rng = Csprng::from_seed([11; 16]);
    let mut w1 = small(&mut rng, 4 * 2 * 9, 60);
    w1[0] = 127; // the worst output is channel 0
    Model::new(
        "overflows-b16",
        input_spec(2, 6, 6, 0, 255),
        vec![
            conv(4, 3, 1, 1, w1, vec![1000, -3, 0, 5]),
            Layer::Relu,
            requantize(1, 10, 255),
            Layer::Flatten,
            Layer::Linear {
                out_features: 3,
                weights: small(&mut rng, 3 * 4 * 36, 2),
                bias: vec![0, 1, 2],
            },
        ],
    )
    .unwrap()
}

// ENG-5, PARAM-6
#[test]
fn a_model_that_overflows_the_set_is_refused_by_compile_naming_the_layer() {
    let model = overflows_b16();
    let err = engine::compile(&fixture("b16").ctx, &model).unwrap_err();
    let bits = match &err {
        EngineError::Model(ModelError::AccumulatorOverflow {
            layer: 0,
            op: "conv2d",
            source:
                ParamError::AccumulatorOverflow {
                    output: 0,
                    needed_bits,
                    plaintext_bits: 16,
                    ..
                },
        }) => *needed_bits,
        other => panic!("unexpected {other:?}"),
    };
    assert!(bits > 16 && bits <= 24, "{bits}");
    let text = err.to_string();
    assert!(text.contains("layer 0 (conv2d)"), "{text}");
    assert!(
        text.contains("b24"),
        "the error names what would fit: {text}"
    );
    // The same model on a set that carries it: bit-exact.
    let mut rng = Csprng::from_seed([12; 16]);
    for seed in 0..2 {
        let input = random_input(&mut rng, &model);
        assert_eq!(
            encrypted("b24", &model, &input, seed).unwrap(),
            model.evaluate(&input).unwrap()
        );
    }
}

// PARAM-7
#[test]
fn the_cheapest_set_that_carries_the_model_is_chosen_and_explained() {
    let model = overflows_b16();
    let sel = select::select(&model, Requirement::default(), None).unwrap();
    let tried: Vec<&str> = sel.candidates.iter().map(|c| c.set.as_str()).collect();
    let chosen = sel.context.params().name().to_owned();
    assert_eq!(tried.last(), Some(&chosen.as_str()));
    // Every cheaper set was passed over with its reason; the chosen one is
    // the first that fits the accumulator.
    let b = sel.context.params().plaintext_bits();
    assert!(model.check_against(sel.context.params()).is_ok());
    for c in &sel.candidates[..sel.candidates.len() - 1] {
        let why = c.refused.as_deref().unwrap();
        assert!(why.contains("layer"), "{}: {why}", c.set);
    }
    assert!(b >= 20, "chose {chosen} with b = {b}");
    assert!(sel.explain().contains("chosen"), "{}", sel.explain());
    // A policy that excludes sets without flooding headroom never picks `wide`.
    let strict = Requirement {
        min_flooding_headroom_bits: Some(0),
        noise: None,
    };
    let sel = select::select(&model, strict, None).unwrap();
    assert!(sel.context.params().budget().flooding_headroom_bits() >= 0.0);
    // Pinning a set that cannot carry the model returns that set's refusal.
    let err = select::select(&model, Requirement::default(), Some("b16")).unwrap_err();
    assert!(err.to_string().contains("layer 0 (conv2d)"), "{err}");
    // Pinning `wide` under a headroom requirement is refused, saying why.
    let err = select::select(&model, strict, Some("wide")).unwrap_err();
    assert!(err.to_string().contains("flooding headroom"), "{err}");
}

// ENG-5, PARAM-5
#[test]
fn a_compiled_model_runs_only_under_its_own_set() {
    let mut rng = Csprng::from_seed([8; 16]);
    let model = two_stage(&mut rng, 1, 4, 2, 3);
    let compiled = engine::compile(&fixture("b24").ctx, &model).unwrap();
    assert_eq!(compiled.parameter_set(), "b24");
    let f = fixture("b16");
    let err = engine::run(
        &f.ctx,
        &f.sk,
        keys("b16"),
        &compiled,
        &random_input(&mut rng, &model),
        ShuffleUnit::Element,
        &SessionSeed::from_bytes([2; 32]),
    )
    .unwrap_err();
    assert!(
        matches!(err, EngineError::ParameterMismatch { .. }),
        "{err:?}"
    );
}

/// [sum pool 2 →] conv 2→32 with weights ±`w` on {0, 1} inputs →
/// requantise to [0, 15] → dense. Folding the pool multiplies each output
/// channel's ‖w‖₁ by 4.
fn pooled(w: i64, pool: bool) -> Model {
    let mut rng = Csprng::from_seed([13; 16]);
    let weights: Vec<i64> = (0..32 * 2 * 9)
        .map(|_| if rng.uniform_below(2) == 0 { w } else { -w })
        .collect();
    // Worst conv output 18·w·4: shift it into [0, 15].
    let shift = (72 * w / 15).max(1).ilog2() + 1;
    let side = if pool { 4 } else { 8 };
    let mut layers = Vec::new();
    if pool {
        layers.push(Layer::AvgPool {
            kernel: 2,
            stride: 2,
        });
    }
    layers.extend([
        conv(32, 3, 1, 1, weights, vec![0; 32]),
        requantize(1, shift, 15),
        Layer::Flatten,
        Layer::Linear {
            out_features: 4,
            weights: small(&mut rng, 4 * 32 * side * side, 1),
            bias: vec![0; 4],
        },
    ]);
    Model::new("pooled", input_spec(2, 8, 8, 0, 1), layers).unwrap()
}

fn assert_bit_exact(set: &str, model: &Model, seed: u8) {
    let mut rng = Csprng::from_seed([seed; 16]);
    for s in 0..2 {
        let input = random_input(&mut rng, model);
        assert_eq!(
            encrypted(set, model, &input, s).unwrap(),
            model.evaluate(&input).unwrap(),
            "{set}"
        );
    }
}

// ENG-7
#[test]
fn a_stage_over_the_noise_budget_stacks_fewer_outputs_per_ciphertext() {
    let f = fixture("b16");
    // Small weights: the layout stacks freely.
    let light = engine::compile(&f.ctx, &pooled(1, true)).unwrap();
    assert_eq!(light.rounds(), 2);
    // ±45 folded: the layout's natural stacking puts 14 channels × 18
    // weights × 45 × 4 = 45360 > 2^15 into one ciphertext; with fewer
    // channels per ciphertext it fits, in the same number of rounds.
    let model = pooled(45, true);
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    assert_eq!(compiled.rounds(), 2, "no extra round needed");
    assert!(
        compiled.stages()[0].output_ciphertexts() > light.stages()[0].output_ciphertexts(),
        "fewer channels per ciphertext means more ciphertexts"
    );
    assert_bit_exact("b16", &model, 14);
}

// ENG-6
#[test]
fn a_folded_pool_that_breaks_the_noise_budget_runs_unfolded() {
    let f = fixture("b20");
    // ±1000 on b20 (‖ŵ‖₁ ≤ 2^16 per ciphertext): one channel folded has
    // 18 × 1000 × 4 = 72000 > 2^16 even alone; unfolded 18000 fits.
    let model = pooled(1000, true);
    let compiled = engine::compile(&f.ctx, &model).unwrap();
    assert_eq!(compiled.rounds(), 3, "the pool became a round of its own");
    assert!(compiled.stages()[0].has_public_weights());
    assert_eq!(compiled.stage_layers(), [0, 1, 4]);
    assert_bit_exact("b20", &model, 15);
    // One channel over the budget even without a pool: refused, naming the
    // conv, its ‖ŵ‖₁ and the limit.
    let err = engine::compile(&f.ctx, &pooled(4000, false)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, EngineError::NoiseBudget(n) if n.layer == 0 && n.op == "conv2d" && n.l1 == 72000),
        "{err:?}"
    );
    assert!(text.contains("2^16"), "{text}");
}

/// A random small model of the supported kinds.
fn arb_model() -> impl Strategy<Value = Model> {
    (
        1usize..3,
        prop::sample::select(vec![4usize, 6, 8]),
        prop::sample::select(vec![1i64, 3, 15, 255]),
        any::<bool>(),
        1usize..5,
        prop::sample::select(vec![1usize, 3]),
        prop::sample::select(vec![1i64, 7, 100]),
        1usize..6,
        any::<[u8; 16]>(),
    )
        .prop_map(|(c, hw, xmax, pool, m, k, wmax, classes, seed)| {
            let mut rng = Csprng::from_seed(seed);
            let mut layers = Vec::new();
            let mut side = hw;
            if pool {
                layers.push(Layer::AvgPool {
                    kernel: 2,
                    stride: 2,
                });
                side /= 2;
            }
            layers.push(conv(
                m,
                k,
                1,
                k / 2,
                small(&mut rng, m * c * k * k, wmax),
                small(&mut rng, m, 50),
            ));
            layers.push(Layer::Relu);
            layers.push(requantize(1 + rng.uniform_below(100) as i64, 8, 15));
            layers.push(Layer::Flatten);
            layers.push(Layer::Linear {
                out_features: classes,
                weights: small(&mut rng, classes * m * side * side, wmax.min(7)),
                bias: small(&mut rng, classes, 50),
            });
            Model::new("random", input_spec(c, hw, hw, 0, xmax), layers).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_global_rejects: 12, .. ProptestConfig::default() })]
    // ENG-5: whatever compiles (on the set the crate chooses) matches the
    // plaintext reference bit for bit; what does not compile was refused
    // by a named check.
    #[test]
    fn whatever_compiles_matches_the_reference(model in arb_model(), seed in any::<u8>()) {
        let sel = match select::select(&model, Requirement::default(), None) {
            Ok(sel) => sel,
            Err(e) => {
                prop_assert!(e.to_string().contains("layer"), "refusal names no layer: {e}");
                eprintln!("rejected: {e}");
                return Err(TestCaseError::reject("no shipped set carries it"));
            }
        };
        let set = sel.context.params().name().to_owned();
        let f = fixture(&set);
        // The fixture's context is the same set: the compiled model accepts it.
        let ctx: &Context = &f.ctx;
        let mut rng = Csprng::from_seed([seed; 16]);
        let input = random_input(&mut rng, &model);
        let out = engine::run(ctx, &f.sk, keys(&set), &sel.model, &input, ShuffleUnit::Element, &SessionSeed::from_bytes([seed; 32])).unwrap();
        prop_assert_eq!(out.logits, model.evaluate(&input).unwrap(), "set {}", set);
    }
}

/// THREAT-1 through the engine: every response a round returns is
/// flooded. A client with a 2^30 spike in its upload's error would read
/// 2^30·w_(o,0) in output o's noise if the response were only
/// re-randomised (tests/circuit_privacy.rs shows that reading works); from
/// the engine's responses it reads noise. Fails if the engine stops
/// flooding.
#[test]
fn engine_responses_are_flooded_against_the_noise_channel() {
    use safhire::engine::{ReceivedUpload, RoundEvaluator};
    use safhire::protocol::client_steps;
    use safhire::rlwe::Ciphertext;
    let f = fixture("b16");
    let ctx = &f.ctx;
    let q = ctx.q().limb(0); // single-limb set
    let mut rng = Csprng::from_seed([21; 16]);
    let outputs = 16;
    let mut w = small(&mut rng, outputs * 64, 3);
    for o in 0..outputs {
        w[o * 64] = (o as i64 % 7) - 3; // column 0: the target, never 0 for o ≠ 3
    }
    let model = Model::new(
        "one-linear",
        input_spec(64, 1, 1, 0, 15),
        vec![Layer::Linear {
            out_features: outputs,
            weights: w.clone(),
            bias: vec![0; outputs],
        }],
    )
    .unwrap();
    let compiled = engine::compile(ctx, &model).unwrap();
    let input = random_input(&mut rng, &model);
    let honest = ctx.encrypt(&f.sk, &input, &mut rng);
    let (a, b) = honest.parts();
    let mut b = b.to_vec();
    b[0] = q.add(b[0], 1 << 30);
    let spiked = Ciphertext::from_parts(a.to_vec(), b, ctx.n(), q).unwrap();
    let mut history = [ReceivedUpload::new(vec![spiked], None)];
    let seed = SessionSeed::from_bytes([9; 32]);
    let round = RoundEvaluator::new(
        ctx,
        keys("b16"),
        &compiled,
        &seed,
        ShuffleUnit::Element.into(),
    )
    .unwrap()
    .evaluate(0, &mut history, &mut Csprng::from_seed([22; 16]))
    .unwrap();
    assert!(round.shuffle.is_none(), "the last round is not shuffled");
    let response = round.ciphertexts;
    // The logits still decrypt exactly (the spike is far below Δ/2).
    let logits = client_steps::client_values(ctx, &f.sk, &response, outputs);
    assert_eq!(logits, model.evaluate(&input).unwrap());
    // Output o sits at coefficient o·N/16; read its noise / 2^30.
    let values = ctx.decrypt(&f.sk, &response[0]);
    let noise = ctx.noise(&f.sk, &response[0], &values);
    let stride = ctx.n() / outputs;
    let read: Vec<i64> = (0..outputs)
        .map(|o| (noise[o * stride] as f64 / (1u64 << 30) as f64).round() as i64)
        .collect();
    let column: Vec<i64> = (0..outputs).map(|o| w[o * 64]).collect();
    // Flooded with 2^46: each reading is uniform over about ±2^16, an exact
    // hit ≈ 2^-17 per output; more than 2 hits among 16 has probability < 2^-40.
    let hits = read.iter().zip(&column).filter(|(a, b)| a == b).count();
    assert!(
        hits <= 2,
        "{hits} of {outputs} weights read off the noise: {read:?}"
    );
}

/// A model on a 1×`h`×`w` input in [0, 15].
fn tiny(h: usize, w: usize, layers: Vec<Layer>) -> Model {
    Model::new("refused", input_spec(1, h, w, 0, 15), layers).unwrap()
}

fn linear(inputs: usize, outputs: usize) -> Layer {
    Layer::Linear {
        out_features: outputs,
        weights: vec![1; inputs * outputs],
        bias: vec![0; outputs],
    }
}

// ENG-3, ENG-5: every refusal of `compile` is typed: the problem, and the
// layer it is at, checked here by variant and index, not by message.
#[test]
fn compile_refusals_are_typed_with_the_problem_and_the_layer() {
    use safhire::engine::CompileProblem as P;
    let f = fixture("b16");
    let n = f.ctx.n();
    let refusal = |model: Model| match engine::compile(&f.ctx, &model) {
        Err(EngineError::Compile(e)) => {
            // The message names the layer whenever the error does.
            if let Some(layer) = e.layer() {
                assert!(e.to_string().contains(&format!("layer {layer} (")), "{e}");
            }
            assert_eq!(
                EngineError::Compile(e.clone()).fault(),
                safhire::protocol::Fault::Local
            );
            (e.layer(), e.problem().clone())
        }
        Err(other) => panic!("expected a compile refusal, got {other}"),
        Ok(_) => panic!("expected a compile refusal, the model compiled"),
    };
    let conv1 = || conv(1, 1, 1, 0, vec![1], vec![0]);

    let max_pool = tiny(
        4,
        4,
        vec![
            conv1(),
            Layer::Relu,
            Layer::MaxPool {
                kernel: 2,
                stride: 2,
            },
            Layer::Flatten,
            linear(4, 2),
        ],
    );
    assert_eq!(refusal(max_pool), (Some(2), P::MaxPool));

    let overlapping = tiny(
        4,
        4,
        vec![
            Layer::AvgPool {
                kernel: 2,
                stride: 1,
            },
            conv1(),
        ],
    );
    assert_eq!(
        refusal(overlapping),
        (
            Some(0),
            P::OverlappingPool {
                kernel: 2,
                stride: 1
            }
        )
    );

    let two_linear = tiny(4, 4, vec![conv1(), conv1()]);
    assert_eq!(refusal(two_linear), (Some(1), P::NoClientStepBetween));

    let relu_first = tiny(4, 4, vec![Layer::Relu, conv1()]);
    assert_eq!(refusal(relu_first), (Some(0), P::ClientStepFirst));

    let nine_steps = tiny(1, 1, [vec![linear(1, 1)], vec![Layer::Relu; 9]].concat());
    assert_eq!(
        refusal(nine_steps),
        (
            Some(0),
            P::TooManyClientSteps {
                steps: 9,
                limit: safhire::protocol::MAX_OPS
            }
        )
    );

    let rounds = safhire::protocol::MAX_ROUNDS + 1;
    let deep = tiny(
        1,
        1,
        (0..rounds)
            .flat_map(|_| [linear(1, 1), Layer::Relu])
            .collect(),
    );
    assert_eq!(
        refusal(deep),
        (
            None,
            P::TooManyRounds {
                rounds,
                limit: safhire::protocol::MAX_ROUNDS
            }
        )
    );

    // Three padded rows of N + 2 coefficients do not fit one ciphertext.
    let wide = tiny(3, n, vec![conv(1, 3, 1, 1, vec![1; 9], vec![0])]);
    match refusal(wide) {
        (Some(0), P::Geometry(_)) => {}
        other => panic!("expected a geometry refusal at layer 0, got {other:?}"),
    }

    let not_square = tiny(2, 4, vec![Layer::GlobalAvgPool, Layer::Relu]);
    assert_eq!(
        refusal(not_square),
        (
            Some(0),
            P::GlobalPoolNotSquare {
                height: 2,
                width: 4
            }
        )
    );

    // DP-8: noise whose tail leaves the 16-bit range is refused for the
    // model as a whole.
    let compiled = engine::compile(&f.ctx, &tiny(1, 1, vec![linear(1, 1)])).unwrap();
    let loud = safhire::dp::DiscreteGaussian::with_sigma_pow2(20).unwrap();
    match compiled.check_noise(&f.ctx, Some(&loud)) {
        Err(EngineError::Compile(e)) => {
            assert_eq!(e.layer(), None);
            assert!(
                matches!(
                    e.problem(),
                    P::NoiseOverflow {
                        plaintext_bits: 16,
                        ..
                    }
                ),
                "{e}"
            );
        }
        other => panic!("expected a noise refusal, got {other:?}"),
    }
}

// ENG-5: a round's refusal says whose fault it is. An upload with too few
// ciphertexts for the stage (what a peer could send if nothing before the
// round counted them) is the peer's; a round or history the model does not
// have, or another set's context, is the caller's.
#[test]
fn a_rounds_refusal_says_whose_fault_it_is() {
    use safhire::engine::{ReceivedUpload, RoundEvaluator};
    use safhire::protocol::Fault;
    let f = fixture("b16");
    let compiled = engine::compile(&f.ctx, &tiny(1, 1, vec![linear(1, 1)])).unwrap();
    // ENG-10: the refusal comes from the weights' per-round layout, not a
    // repack, and is the same.
    assert!(compiled.stages()[0].reads_upload_directly());
    let seed = SessionSeed::from_bytes([4; 32]);
    let release = ShuffleUnit::Element.into();
    let round = RoundEvaluator::new(&f.ctx, keys("b16"), &compiled, &seed, release).unwrap();
    let mut rng = Csprng::from_seed([5; 16]);
    let mut empty = [ReceivedUpload::new(Vec::new(), None)];
    let err = round.evaluate(0, &mut empty, &mut rng).unwrap_err();
    assert!(matches!(err, EngineError::Pack(_)), "{err}");
    assert_eq!(err.fault(), Fault::Peer);
    let err = round.evaluate(1, &mut empty, &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::NoSuchRound {
                round: 1,
                rounds: 1
            }
        ),
        "{err}"
    );
    assert_eq!(err.fault(), Fault::Local);
    let err = round.evaluate(0, &mut [], &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::HistoryLength {
                round: 0,
                expected: 1,
                got: 0
            }
        ),
        "{err}"
    );
    assert_eq!(err.fault(), Fault::Local);
    let other = fixture("b24");
    let err = RoundEvaluator::new(&other.ctx, keys("b24"), &compiled, &seed, release).unwrap_err();
    assert!(
        matches!(err, EngineError::ParameterMismatch { .. }),
        "{err}"
    );
    assert_eq!(err.fault(), Fault::Local);
}

/// conv 1→`m` 3×3 on 1×`hw`×`hw` → requantise to [0, 15] → flatten →
/// linear to `classes` with weights in ±1: the linear reads m·hw² values.
fn conv_then_wide_linear(seed: u8, hw: usize, m: usize, classes: usize) -> Model {
    let mut rng = Csprng::from_seed([seed; 16]);
    conv_then_linear(&mut rng, "wide-linear", 1, hw, m, classes, 1)
}

/// One session round by round through [`RoundEvaluator`], as `engine::run`
/// drives it; returns the logits and each round's repack time. With `junk`,
/// every upload's last ciphertext carries random values past the round's
/// values, which no released value may depend on.
fn rounds_with_phases(
    set: &str,
    compiled: &engine::CompiledModel,
    input: &[i64],
    unit: ShuffleUnit,
    seed: u8,
    junk: bool,
) -> (Vec<i64>, Vec<f64>) {
    use safhire::engine::{ReceivedUpload, RoundEvaluator};
    use safhire::protocol::client_steps::{apply_client_ops, client_encrypt, client_values};
    let f = fixture(set);
    let session = SessionSeed::from_bytes([seed; 32]);
    let round = RoundEvaluator::new(&f.ctx, keys(set), compiled, &session, unit.into()).unwrap();
    let mut rng = Csprng::from_seed([seed; 16]);
    let (mut held, mut previous, mut history) = (input.to_vec(), None, Vec::new());
    let mut repack_ms = Vec::new();
    for r in 0..compiled.rounds() {
        let mut values = held.clone();
        if junk {
            let padded = values.len().next_multiple_of(f.ctx.n());
            let extra = common::random_values(&f.ctx, &mut rng, padded - values.len());
            values.extend(extra);
        }
        let upload = client_encrypt(&f.ctx, &f.sk, &values, &mut rng)
            .into_iter()
            .map(|c| c.expand(f.ctx.q()))
            .collect();
        history.push(ReceivedUpload::new(upload, previous.take()));
        let out = round.evaluate(r, &mut history, &mut rng).unwrap();
        repack_ms.push(out.phases.repack_ms);
        let stage_len = compiled.stages()[r].output_len();
        held = client_values(&f.ctx, &f.sk, &out.ciphertexts, stage_len);
        apply_client_ops(&compiled.client_ops()[r], &mut held);
        previous = out.shuffle;
    }
    (held, repack_ms)
}

// ENG-10: a mat-vec stage reads its upload as it arrived, the weights'
// columns laid out for σ_(r−1): its round does no repack at all (no key
// switch before the product: the repack phase is never entered), the conv
// before it still repacks, and the logits equal the reference bit for bit
// under several session seeds (random σ), element and channel shuffling,
// for an upload of one ciphertext (6·20·20 = 2400 values) and of two
// (5·30·30 = 4500 > N = 4096, the second ciphertext partly used). Values a
// client puts past its upload's values change nothing, as the repack drops
// them: with one row per output ciphertext no weight reaches them. (More
// columns than N/2, so ENG-14 could only lay one row per group and does
// not stack them; `tests/shipped_model.rs` has stacked ones.)
#[test]
fn a_matvec_stage_reads_its_upload_without_a_repack_and_stays_exact() {
    for (set, model) in [
        ("b16", conv_then_wide_linear(21, 20, 6, 9)),
        ("b20", conv_then_wide_linear(22, 30, 5, 3)),
    ] {
        let f = fixture(set);
        let compiled = engine::compile(&f.ctx, &model).unwrap();
        let stages = compiled.stages();
        assert!(!stages[0].reads_upload_directly(), "{set}: a conv repacks");
        assert!(stages[1].reads_upload_directly(), "{set}: the mat-vec");
        assert_eq!(stages[1].stacked_rows(), None, "{set}: one row each");
        let cols = stages[1].input_len();
        assert_eq!(stages[1].input_ciphertexts(), cols.div_ceil(f.ctx.n()));
        let mut rng = Csprng::from_seed([23; 16]);
        for (seed, unit, junk) in [
            (1, ShuffleUnit::Element, false),
            (2, ShuffleUnit::Element, true),
            (3, ShuffleUnit::Channel, true),
        ] {
            let input = random_input(&mut rng, &model);
            let (logits, repack_ms) = rounds_with_phases(set, &compiled, &input, unit, seed, junk);
            assert_eq!(
                logits,
                model.evaluate(&input).unwrap(),
                "{set}, seed {seed}"
            );
            assert!(repack_ms[0] > 0.0, "{set}: the conv's repack ran");
            assert_eq!(repack_ms[1], 0.0, "{set}: the mat-vec round repacked");
        }
    }
}

// ENG-10: reading the upload directly is chosen by price. A classifier of
// 384 inputs and 7 rows would repack 384 values (hundreds of key
// switches) to save 7 products: it reads the upload. A mat-vec of 64
// inputs and 2048 rows repacks 64 values cheaply into one ciphertext,
// while one row per output ciphertext would mean 2048 products and an
// output pack from 2048 sources: it repacks, and stays exact.
#[test]
fn reading_the_upload_directly_is_chosen_by_price() {
    let f = fixture("b16");
    let narrow = engine::compile(&f.ctx, &conv_then_wide_linear(21, 8, 6, 7)).unwrap();
    assert!(narrow.stages()[1].reads_upload_directly());
    let mut rng = Csprng::from_seed([24; 16]);
    let tall = Model::new(
        "tall",
        input_spec(1, 8, 8, 0, 15),
        vec![
            Layer::Flatten,
            Layer::Linear {
                out_features: 2048,
                weights: small(&mut rng, 2048 * 64, 2),
                bias: small(&mut rng, 2048, 9),
            },
        ],
    )
    .unwrap();
    let compiled = engine::compile(&f.ctx, &tall).unwrap();
    let stage = &compiled.stages()[0];
    assert!(stage.matvec_shape().is_some() && !stage.reads_upload_directly());
    assert!(
        stage.output_ciphertexts() < 2048,
        "rows stacked as compiled"
    );
    let input = random_input(&mut rng, &tall);
    let (logits, repack_ms) =
        rounds_with_phases("b16", &compiled, &input, ShuffleUnit::Element, 5, false);
    assert_eq!(logits, tall.evaluate(&input).unwrap());
    assert!(repack_ms[0] > 0.0);
}

/// ENG-12: a round whose identity shortcut adds an earlier round's repack
/// refuses a history on which that round never ran (so its repack was
/// never kept) as the driver's fault, instead of evaluating without the
/// operand. Fails if the round skips the operand or panics.
#[test]
fn a_round_whose_shortcut_repack_was_not_kept_is_refused() {
    use safhire::engine::{ReceivedUpload, RoundEvaluator, Shortcut};
    use safhire::protocol::Fault;
    let f = fixture("b16");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([31; 16]);
    let mut c = |k: usize| {
        conv(
            4,
            k,
            1,
            k / 2,
            small(&mut rng, 4 * 4 * k * k, 2),
            vec![0; 4],
        )
    };
    let model = Model::new(
        "block",
        input_spec(4, 6, 6, 0, 15),
        vec![
            c(3),
            requantize(1, 3, 15),
            c(3),
            requantize(1, 3, 15),
            c(3),
            Layer::ResidualAdd { from: 1 },
        ],
    )
    .unwrap();
    let compiled = engine::compile(ctx, &model).unwrap();
    assert!(matches!(
        compiled.stages()[2].shortcut(),
        Some(Shortcut::RepackedIdentity { round: 1, .. })
    ));
    let input = random_input(&mut rng, &model);
    let mut history: Vec<ReceivedUpload> = (0..3)
        .map(|_| ReceivedUpload::new(vec![ctx.encrypt(&f.sk, &input, &mut rng)], None))
        .collect();
    let seed = SessionSeed::from_bytes([3; 32]);
    let err = RoundEvaluator::new(
        ctx,
        keys("b16"),
        &compiled,
        &seed,
        ShuffleUnit::Element.into(),
    )
    .unwrap()
    .evaluate(2, &mut history, &mut Csprng::from_seed([32; 16]))
    .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::RepackNotKept {
                round: 2,
                operand: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Local);
}
