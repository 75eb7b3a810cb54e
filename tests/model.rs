//! MODEL-1..MODEL-9: the integer model IR, its validation, the reference
//! evaluator, worst-case accumulator bounds, the JSON model file and the zoo.

use proptest::prelude::*;
use safhire::model::format::Limits;
use safhire::model::{
    requantize, zoo, InputSpec, Layer, LayerProblem, Model, ModelError, Shape, Side, MAX_TENSOR_LEN,
};
use safhire::params::{ParamError, ParameterSet};
use std::time::Instant;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn spec(c: usize, h: usize, w: usize, min: i64, max: i64) -> InputSpec {
    InputSpec {
        shape: Shape::new(c, h, w),
        min,
        max,
    }
}

#[allow(clippy::too_many_arguments)]
fn conv(
    out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    weights: Vec<i64>,
    bias: Vec<i64>,
) -> Layer {
    Layer::Conv2d {
        out_channels: out,
        kernel_h: kh,
        kernel_w: kw,
        stride,
        padding,
        groups: 1,
        weights,
        bias,
    }
}

fn rq(multiplier: i64, shift: u32, min: i64, max: i64) -> Layer {
    Layer::Requantize {
        multiplier,
        shift,
        min,
        max,
    }
}

/// The hand-computed model of `hand_computed_model_evaluates_exactly`.
fn hand_model(linear_scale: i64) -> Model {
    Model::new(
        "hand",
        spec(1, 3, 3, 0, 9),
        vec![
            // Two 2×2 output channels: [[2,0],[0,-1]] + 1 and all-ones − 20.
            conv(2, 2, 2, 1, 0, vec![2, 0, 0, -1, 1, 1, 1, 1], vec![1, -20]),
            Layer::Relu,
            rq(3, 2, 0, 5),
            Layer::Flatten,
            Layer::Linear {
                out_features: 2,
                weights: [vec![1; 8], vec![0, 0, -1, 0, 0, 0, 2, -1]]
                    .concat()
                    .into_iter()
                    .map(|w| w * linear_scale)
                    .collect(),
                bias: vec![0, 10],
            },
        ],
    )
    .unwrap()
}

/// Deterministic small pseudo-random numbers (splitmix64).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn vec(&mut self, len: usize, lo: i64, hi: i64) -> Vec<i64> {
        (0..len).map(|_| self.range(lo, hi)).collect()
    }
}

/// A valid random small model: `ops` picks the layer kinds, `seed` the
/// sizes and weights. Every op of the IR can appear.
fn random_model(c: usize, h: usize, w: usize, ops: &[u8], seed: u64) -> Model {
    let mut rng = Mix(seed);
    let lo = -(rng.below(4) as i64);
    let input = spec(c, h, w, lo, lo + 1 + rng.below(8) as i64);
    let mut layers: Vec<Layer> = Vec::new();
    let mut shapes: Vec<Shape> = Vec::new();
    let mut cur = input.shape;
    for &op in ops {
        let layer = match op % 10 {
            0 => {
                let padding = rng.below(2) as usize;
                let kh = 1 + rng.below((cur.height + 2 * padding).min(3) as u64) as usize;
                let kw = 1 + rng.below((cur.width + 2 * padding).min(3) as u64) as usize;
                let out = 1 + rng.below(3) as usize;
                let n = out * cur.channels * kh * kw;
                conv(
                    out,
                    kh,
                    kw,
                    1 + rng.below(2) as usize,
                    padding,
                    rng.vec(n, -3, 3),
                    rng.vec(out, -5, 5),
                )
            }
            1 if cur.height == 1 && cur.width == 1 => {
                let out = 1 + rng.below(4) as usize;
                Layer::Linear {
                    out_features: out,
                    weights: rng.vec(out * cur.channels, -3, 3),
                    bias: rng.vec(out, -5, 5),
                }
            }
            1 | 4 => Layer::Flatten,
            2 | 8 => {
                let kernel = 1 + rng.below(cur.height.min(cur.width).min(2) as u64) as usize;
                let stride = 1 + rng.below(2) as usize;
                if op % 10 == 2 {
                    Layer::AvgPool { kernel, stride }
                } else {
                    Layer::MaxPool { kernel, stride }
                }
            }
            3 => Layer::GlobalAvgPool,
            5 => match shapes.iter().rposition(|s| *s == cur) {
                Some(from) => Layer::ResidualAdd { from },
                None => Layer::Relu,
            },
            6 if !shapes.is_empty() => Layer::Branch {
                from: rng.below(shapes.len() as u64) as usize,
            },
            9 => {
                let min = -(rng.below(9) as i64);
                rq(
                    1 + rng.below(5) as i64,
                    rng.below(5) as u32,
                    min,
                    min + rng.below(17) as i64,
                )
            }
            _ => Layer::Relu,
        };
        layers.push(layer);
        let m = Model::new("random", input, layers.clone()).expect("generator builds valid models");
        cur = m.output_shape();
        shapes = m.shapes().to_vec();
    }
    if layers.is_empty() {
        layers.push(Layer::Relu);
    }
    Model::new("random", input, layers).unwrap()
}

fn random_input(model: &Model, seed: u64) -> Vec<i64> {
    let s = model.input();
    let mut rng = Mix(seed);
    rng.vec(s.shape.len().unwrap(), s.min, s.max)
}

fn layer_error(result: Result<Model, ModelError>) -> (usize, &'static str, LayerProblem) {
    match result {
        Err(ModelError::Layer { layer, op, problem }) => (layer, op, problem),
        other => panic!("expected a layer error, got {other:?}"),
    }
}

fn b16() -> ParameterSet {
    ParameterSet::shipped("b16").unwrap()
}

// ---------------------------------------------------------------------------
// MODEL-1, MODEL-3, MODEL-4: semantics on hand-computed models
// ---------------------------------------------------------------------------

/// MODEL-3, MODEL-4 by hand: input [[1,2,3],[4,5,6],[7,8,9]].
/// conv ch0 = 2·x[i][j] − x[i+1][j+1] + 1 = [−2, −1, 1, 2];
/// conv ch1 = window sum − 20 = [12, 16, 24, 28] − 20 = [−8, −4, 4, 8];
/// relu → [0,0,1,2 | 0,0,4,8]; requantize ·3/4 half away, clamp [0,5]:
/// 1 → 0.75 → 1, 2 → 1.5 → 2, 4 → 3, 8 → 6 → 5 ⇒ [0,0,1,2,0,0,3,5];
/// linear row0 = sum = 11; row1 = −1 + 6 − 5 + 10 = 10.
#[test]
fn hand_computed_model_evaluates_exactly() {
    let m = hand_model(1);
    let input: Vec<i64> = (1..=9).collect();
    let all = m.evaluate_all(&input).unwrap();
    assert_eq!(all[0], [-2, -1, 1, 2, -8, -4, 4, 8]);
    assert_eq!(all[1], [0, 0, 1, 2, 0, 0, 4, 8]);
    assert_eq!(all[2], [0, 0, 1, 2, 0, 0, 3, 5]);
    assert_eq!(all[3], all[2]);
    assert_eq!(all[4], [11, 10]);
    assert_eq!(m.evaluate(&input).unwrap(), [11, 10]);
    assert_eq!(
        m.shapes(),
        [
            Shape::new(2, 2, 2),
            Shape::new(2, 2, 2),
            Shape::new(2, 2, 2),
            Shape::new(8, 1, 1),
            Shape::new(2, 1, 1),
        ]
    );
    assert_eq!(m.output_shape(), Shape::new(2, 1, 1));
    assert_eq!(m.weight_count(), 8 + 16);
    assert_eq!(m.parameter_count(), 8 + 2 + 16 + 2);
    // The per-layer step agrees with the whole run.
    assert_eq!(m.apply_layer(2, &all[1], None).unwrap(), all[2]);
    assert!(matches!(
        m.apply_layer(5, &all[1], None),
        Err(ModelError::NoSuchLayer {
            index: 5,
            layers: 5
        })
    ));
    assert!(matches!(
        m.apply_layer(2, &all[1][..3], None),
        Err(ModelError::InputLength {
            expected: 8,
            got: 3
        })
    ));
}

/// MODEL-1: linear layers are server-side, the others client-side.
#[test]
fn layers_are_classified_by_side() {
    let server = [
        conv(1, 1, 1, 1, 0, vec![1], vec![0]),
        Layer::Linear {
            out_features: 1,
            weights: vec![1],
            bias: vec![0],
        },
        Layer::AvgPool {
            kernel: 1,
            stride: 1,
        },
        Layer::GlobalAvgPool,
        Layer::Flatten,
        Layer::ResidualAdd { from: 0 },
        Layer::Branch { from: 0 },
    ];
    let client = [
        Layer::Relu,
        Layer::MaxPool {
            kernel: 1,
            stride: 1,
        },
        rq(1, 0, 0, 1),
    ];
    for l in &server {
        assert_eq!(l.side(), Side::Server, "{}", l.op_name());
        assert!(l.is_linear());
    }
    for l in &client {
        assert_eq!(l.side(), Side::Client, "{}", l.op_name());
        assert!(!l.is_linear());
    }
}

/// MODEL-3: residual_add adds an earlier output; branch restarts from one.
#[test]
fn residual_add_and_branch() {
    let m = Model::new(
        "residual",
        spec(1, 2, 2, -5, 5),
        vec![
            Layer::Relu,                            // 0: [1, 0, 3, 0]
            conv(1, 1, 1, 1, 0, vec![2], vec![-1]), // 1: [1, −1, 5, −1]
            Layer::ResidualAdd { from: 0 },         // 2: [2, −1, 8, −1]
            Layer::Branch { from: 1 },              // 3: [1, −1, 5, −1]
            Layer::ResidualAdd { from: 2 },         // 4: [3, −2, 13, −2]
        ],
    )
    .unwrap();
    let all = m.evaluate_all(&[1, -2, 3, -4]).unwrap();
    assert_eq!(all[0], [1, 0, 3, 0]);
    assert_eq!(all[1], [1, -1, 5, -1]);
    assert_eq!(all[2], [2, -1, 8, -1]);
    assert_eq!(all[3], [1, -1, 5, -1]);
    assert_eq!(all[4], [3, -2, 13, -2]);
    assert_eq!(m.evaluate(&[1, -2, 3, -4]).unwrap(), [3, -2, 13, -2]);
    // A branch to a different shape: the model continues from that shape.
    let m = Model::new(
        "branch",
        spec(1, 2, 2, 0, 3),
        vec![
            Layer::Flatten,
            Layer::GlobalAvgPool,
            Layer::Branch { from: 0 },
        ],
    )
    .unwrap();
    assert_eq!(m.shapes()[1], Shape::new(4, 1, 1));
    assert_eq!(m.evaluate(&[0, 1, 2, 3]).unwrap(), [0, 1, 2, 3]);
}

/// MODEL-3: pools on a 4×4 ramp 0..15: avgpool is a window SUM.
#[test]
fn pools_sum_and_max() {
    let ramp: Vec<i64> = (0..16).collect();
    let run = |layer: Layer| {
        let m = Model::new("pool", spec(1, 4, 4, 0, 15), vec![layer]).unwrap();
        (m.evaluate(&ramp).unwrap(), m.output_shape())
    };
    assert_eq!(
        run(Layer::MaxPool {
            kernel: 2,
            stride: 2
        }),
        (vec![5, 7, 13, 15], Shape::new(1, 2, 2))
    );
    assert_eq!(
        run(Layer::AvgPool {
            kernel: 2,
            stride: 2
        }),
        (vec![10, 18, 42, 50], Shape::new(1, 2, 2))
    );
    assert_eq!(
        run(Layer::AvgPool {
            kernel: 3,
            stride: 1
        }),
        (vec![45, 54, 81, 90], Shape::new(1, 2, 2))
    );
    assert_eq!(
        run(Layer::MaxPool {
            kernel: 3,
            stride: 2
        }),
        (vec![10], Shape::new(1, 1, 1))
    );
    assert_eq!(run(Layer::GlobalAvgPool), (vec![120], Shape::new(1, 1, 1)));
    // Two channels, 1×2 planes; max over windows of negative values.
    let m = Model::new("gap", spec(2, 1, 2, -9, 9), vec![Layer::GlobalAvgPool]).unwrap();
    assert_eq!(m.evaluate(&[1, 2, -3, -9]).unwrap(), [3, -12]);
    let m = Model::new(
        "max",
        spec(1, 2, 2, -9, 9),
        vec![Layer::MaxPool {
            kernel: 2,
            stride: 1,
        }],
    )
    .unwrap();
    assert_eq!(m.evaluate(&[-4, -3, -9, -5]).unwrap(), [-3]);
}

/// MODEL-3: requantize rounds half away from zero, then clamps.
#[test]
fn requantize_rounds_half_away_from_zero() {
    let cases = [
        // (y, multiplier, shift, min, max, expected)
        (5, 1, 1, -100, 100, 3),   // 2.5 → 3
        (-5, 1, 1, -100, 100, -3), // −2.5 → −3
        (3, 1, 1, -100, 100, 2),   // 1.5 → 2
        (-3, 1, 1, -100, 100, -2),
        (1, 1, 1, -100, 100, 1), // 0.5 → 1
        (-1, 1, 1, -100, 100, -1),
        (1, 1, 2, -100, 100, 0),     // 0.25 → 0
        (3, 1, 2, -100, 100, 1),     // 0.75 → 1
        (7, 3, 0, -100, 100, 21),    // shift 0: exact product
        (100, 3, 1, -100, 100, 100), // 150 clamps
        (-100, 3, 1, 0, 15, 0),
        (i64::MAX, i64::MAX, 62, i64::MIN, i64::MAX, i64::MAX),
        (i64::MIN, i64::MAX, 62, i64::MIN, i64::MAX, i64::MIN),
        (i64::MIN, 1, 62, i64::MIN, i64::MAX, -2), // −2^63/2^62 = −2
        (3, 1, 200, -5, 5, 0),                     // total even out of spec
        (3, 1, 0, 9, 1, 9),                        // min > max: min wins, no panic
    ];
    for (y, m, s, lo, hi, want) in cases {
        assert_eq!(
            requantize(y, m, s, lo, hi),
            want,
            "requantize({y}, {m}, {s}, {lo}, {hi})"
        );
    }
}

/// MODEL-4: wrong input length, out-of-range values and overflow are errors.
#[test]
fn evaluator_refuses_bad_inputs_and_overflow() {
    let m = hand_model(1);
    assert_eq!(
        m.evaluate(&[1, 2, 3]),
        Err(ModelError::InputLength {
            expected: 9,
            got: 3
        })
    );
    assert_eq!(
        m.evaluate(&[1, 2, 3, 4, 5, 6, 7, 8, 10]),
        Err(ModelError::InputOutOfRange {
            index: 8,
            value: 10,
            min: 0,
            max: 9
        })
    );
    let big = Model::new(
        "big",
        spec(1, 1, 2, i64::MIN, i64::MAX),
        vec![conv(1, 1, 2, 1, 0, vec![1, 1], vec![0])],
    )
    .unwrap();
    assert_eq!(big.evaluate(&[1, 2]).unwrap(), [3]);
    assert_eq!(
        big.evaluate(&[i64::MAX, 1]),
        Err(ModelError::Overflow {
            layer: 0,
            op: "conv2d"
        })
    );
    let add = Model::new(
        "add",
        spec(1, 1, 1, i64::MIN, i64::MAX),
        vec![
            Layer::Flatten,
            Layer::ResidualAdd { from: 0 },
            Layer::AvgPool {
                kernel: 1,
                stride: 1,
            },
        ],
    )
    .unwrap();
    assert_eq!(add.evaluate(&[4]).unwrap(), [8]);
    assert_eq!(
        add.evaluate(&[i64::MAX / 2 + 1]),
        Err(ModelError::Overflow {
            layer: 1,
            op: "residual_add"
        })
    );
    let bias = Model::new(
        "bias",
        spec(1, 1, 1, 0, i64::MAX),
        vec![Layer::Linear {
            out_features: 1,
            weights: vec![1],
            bias: vec![1],
        }],
    )
    .unwrap();
    assert_eq!(
        bias.evaluate(&[i64::MAX]),
        Err(ModelError::Overflow {
            layer: 0,
            op: "linear"
        })
    );
    for e in [
        ModelError::Overflow {
            layer: 0,
            op: "linear",
        },
        ModelError::InputLength {
            expected: 1,
            got: 2,
        },
    ] {
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------
// MODEL-2: validation errors
// ---------------------------------------------------------------------------

/// MODEL-2: each refusal names the layer, the op and the problem.
#[test]
fn validation_refuses_bad_input_specs() {
    assert_eq!(
        Model::new("m", spec(1, 1, 1, 0, 1), vec![]),
        Err(ModelError::NoLayers)
    );
    assert_eq!(
        Model::new("m", spec(0, 1, 1, 0, 1), vec![Layer::Relu]),
        Err(ModelError::Input {
            problem: LayerProblem::ZeroSize { field: "channels" }
        })
    );
    assert_eq!(
        Model::new("m", spec(1, 1, 1, 2, 1), vec![Layer::Relu]),
        Err(ModelError::Input {
            problem: LayerProblem::InvertedRange { min: 2, max: 1 }
        })
    );
    assert_eq!(
        Model::new("m", spec(usize::MAX, 2, 1, 0, 1), vec![Layer::Relu]),
        Err(ModelError::Input {
            problem: LayerProblem::SizeOverflow { field: "shape" }
        })
    );
    assert_eq!(
        Model::new("m", spec(MAX_TENSOR_LEN + 1, 1, 1, 0, 1), vec![Layer::Relu]),
        Err(ModelError::Input {
            problem: LayerProblem::TensorTooLarge {
                len: MAX_TENSOR_LEN + 1,
                max: MAX_TENSOR_LEN
            }
        })
    );
    assert!(matches!(
        Model::new("x".repeat(300), spec(1, 1, 1, 0, 1), vec![Layer::Relu]),
        Err(ModelError::NameTooLong { len: 300, .. })
    ));
}

/// MODEL-2: each refusal names the layer, the op and the problem.
#[test]
fn validation_refuses_bad_conv_layers() {
    let input = spec(2, 4, 4, 0, 15);
    let ok = conv(3, 3, 3, 1, 0, vec![0; 54], vec![0; 3]);
    let with = |f: &dyn Fn(&mut Layer)| {
        let mut l = ok.clone();
        f(&mut l);
        layer_error(Model::new("m", input, vec![Layer::Relu, l]))
    };
    assert!(Model::new("m", input, vec![ok.clone()]).is_ok());
    let set = |field: &'static str, v: usize| {
        with(&move |l: &mut Layer| {
            if let Layer::Conv2d {
                out_channels,
                kernel_h,
                kernel_w,
                stride,
                padding,
                groups,
                ..
            } = l
            {
                *match field {
                    "out_channels" => out_channels,
                    "kernel_h" => kernel_h,
                    "kernel_w" => kernel_w,
                    "stride" => stride,
                    "padding" => padding,
                    _ => groups,
                } = v;
            }
        })
    };
    assert_eq!(
        set("groups", 2),
        (1, "conv2d", LayerProblem::UnsupportedGroups { groups: 2 })
    );
    for field in ["out_channels", "kernel_h", "kernel_w", "stride"] {
        assert_eq!(
            set(field, 0),
            (1, "conv2d", LayerProblem::ZeroSize { field })
        );
    }
    assert_eq!(
        set("kernel_h", 5),
        (
            1,
            "conv2d",
            LayerProblem::KernelTooLarge {
                field: "kernel_h",
                kernel: 5,
                input: 4
            }
        )
    );
    assert_eq!(
        set("kernel_w", 9),
        (
            1,
            "conv2d",
            LayerProblem::KernelTooLarge {
                field: "kernel_w",
                kernel: 9,
                input: 4
            }
        )
    );
    assert_eq!(
        set("padding", usize::MAX),
        (1, "conv2d", LayerProblem::SizeOverflow { field: "padding" })
    );
    assert_eq!(
        set("out_channels", usize::MAX),
        (1, "conv2d", LayerProblem::SizeOverflow { field: "weights" })
    );
    assert_eq!(
        with(&|l| if let Layer::Conv2d { weights, .. } = l {
            weights.pop();
        }),
        (
            1,
            "conv2d",
            LayerProblem::WeightCount {
                expected: 54,
                got: 53
            }
        )
    );
    assert_eq!(
        with(&|l| if let Layer::Conv2d { bias, .. } = l {
            bias.push(1);
        }),
        (
            1,
            "conv2d",
            LayerProblem::BiasCount {
                expected: 3,
                got: 4
            }
        )
    );
    // Padding makes a kernel larger than the input legal.
    let padded = conv(1, 6, 6, 1, 1, vec![0; 72], vec![0]);
    let m = Model::new("m", input, vec![padded]).unwrap();
    assert_eq!(m.output_shape(), Shape::new(1, 1, 1));
    // An output over the tensor limit.
    let huge = conv(1 << 15, 1, 1, 1, 0, vec![0; 1 << 15], vec![0; 1 << 15]);
    assert_eq!(
        layer_error(Model::new("m", spec(1, 64, 64, 0, 1), vec![huge])).2,
        LayerProblem::TensorTooLarge {
            len: 1 << 27,
            max: MAX_TENSOR_LEN
        }
    );
}

/// MODEL-2: each refusal names the layer, the op and the problem.
#[test]
fn validation_refuses_bad_linear_and_pool_layers() {
    let flat = spec(4, 1, 1, 0, 15);
    let lin = |out: usize, w: usize, b: usize| Layer::Linear {
        out_features: out,
        weights: vec![1; w],
        bias: vec![0; b],
    };
    assert!(Model::new("m", flat, vec![lin(2, 8, 2)]).is_ok());
    assert_eq!(
        layer_error(Model::new("m", spec(1, 2, 2, 0, 1), vec![lin(2, 8, 2)])),
        (
            0,
            "linear",
            LayerProblem::NotFlat {
                shape: Shape::new(1, 2, 2)
            }
        )
    );
    assert_eq!(
        layer_error(Model::new("m", flat, vec![lin(2, 7, 2)])),
        (
            0,
            "linear",
            LayerProblem::WeightCount {
                expected: 8,
                got: 7
            }
        )
    );
    assert_eq!(
        layer_error(Model::new("m", flat, vec![lin(2, 8, 1)])),
        (
            0,
            "linear",
            LayerProblem::BiasCount {
                expected: 2,
                got: 1
            }
        )
    );
    assert_eq!(
        layer_error(Model::new("m", flat, vec![lin(0, 0, 0)])),
        (
            0,
            "linear",
            LayerProblem::ZeroSize {
                field: "out_features"
            }
        )
    );
    assert_eq!(
        layer_error(Model::new("m", flat, vec![lin(usize::MAX, 0, 0)])),
        (
            0,
            "linear",
            LayerProblem::SizeOverflow {
                field: "out_features"
            }
        )
    );
    let img = spec(1, 3, 5, 0, 15);
    for (kernel, stride, problem) in [
        (0, 1, LayerProblem::ZeroSize { field: "kernel" }),
        (1, 0, LayerProblem::ZeroSize { field: "stride" }),
        (
            4,
            1,
            LayerProblem::KernelTooLarge {
                field: "kernel",
                kernel: 4,
                input: 3,
            },
        ),
    ] {
        assert_eq!(
            layer_error(Model::new(
                "m",
                img,
                vec![Layer::AvgPool { kernel, stride }]
            )),
            (0, "avgpool", problem.clone())
        );
        assert_eq!(
            layer_error(Model::new(
                "m",
                img,
                vec![Layer::MaxPool { kernel, stride }]
            )),
            (0, "maxpool", problem)
        );
    }
    let m = Model::new(
        "m",
        img,
        vec![Layer::MaxPool {
            kernel: 3,
            stride: 2,
        }],
    )
    .unwrap();
    assert_eq!(m.output_shape(), Shape::new(1, 1, 2));
}

/// MODEL-2: each refusal names the layer, the op and the problem.
#[test]
fn validation_refuses_bad_references_and_requantize() {
    let input = spec(1, 2, 2, 0, 15);
    let m = |layers: Vec<Layer>| Model::new("m", input, layers);
    // `from` pointing at itself, forward, or out of range.
    assert_eq!(
        layer_error(m(vec![Layer::Relu, Layer::ResidualAdd { from: 1 }])),
        (1, "residual_add", LayerProblem::FromNotEarlier { from: 1 })
    );
    assert_eq!(
        layer_error(m(vec![
            Layer::Relu,
            Layer::ResidualAdd { from: 7 },
            Layer::Relu
        ])),
        (1, "residual_add", LayerProblem::FromNotEarlier { from: 7 })
    );
    assert_eq!(
        layer_error(m(vec![Layer::Branch { from: 0 }])),
        (0, "branch", LayerProblem::FromNotEarlier { from: 0 })
    );
    assert_eq!(
        layer_error(m(vec![
            Layer::Flatten,
            Layer::Relu,
            Layer::Branch { from: usize::MAX }
        ])),
        (
            2,
            "branch",
            LayerProblem::FromNotEarlier { from: usize::MAX }
        )
    );
    assert_eq!(
        layer_error(m(vec![
            Layer::Relu,
            Layer::Flatten,
            Layer::ResidualAdd { from: 0 }
        ])),
        (
            2,
            "residual_add",
            LayerProblem::ShapeMismatch {
                from: 0,
                from_shape: Shape::new(1, 2, 2),
                input: Shape::new(4, 1, 1)
            }
        )
    );
    assert!(m(vec![Layer::Relu, Layer::ResidualAdd { from: 0 }]).is_ok());
    for (layer, problem) in [
        (
            rq(0, 1, 0, 1),
            LayerProblem::NonPositiveMultiplier { multiplier: 0 },
        ),
        (
            rq(-3, 1, 0, 1),
            LayerProblem::NonPositiveMultiplier { multiplier: -3 },
        ),
        (rq(1, 63, 0, 1), LayerProblem::ShiftTooLarge { shift: 63 }),
        (
            rq(1, 1, 2, 1),
            LayerProblem::InvertedRange { min: 2, max: 1 },
        ),
    ] {
        assert_eq!(
            layer_error(m(vec![Layer::Relu, layer])),
            (1, "requantize", problem)
        );
    }
    assert!(m(vec![rq(i64::MAX, 62, i64::MIN, i64::MAX)]).is_ok());
    // Messages name the layer and op.
    let e = m(vec![Layer::Relu, rq(1, 1, 2, 1)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 (requantize)") && e.contains("min = 2"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// MODEL-5: bounds and the accumulator check
// ---------------------------------------------------------------------------

/// MODEL-5 by hand for `hand_model`: input [0, 9].
#[test]
fn hand_computed_bounds() {
    let m = hand_model(1);
    let b = m.bounds();
    // conv: ch0 [1 − 9, 1 + 18] = [−8, 19]; ch1 [−20, −20 + 36] = [−20, 16].
    assert_eq!((b[0].output.min, b[0].output.max), (-20, 19));
    // PARAM-6: max(3·9 + 1, 4·9 + 20) = 56.
    assert_eq!(b[0].accumulator, Some(56));
    assert_eq!((b[1].output.min, b[1].output.max), (0, 19));
    assert_eq!(b[1].accumulator, None);
    // 19·3/4 = 14.25 → 14 → clamp 5.
    assert_eq!((b[2].output.min, b[2].output.max), (0, 5));
    assert_eq!(b[3].accumulator, Some(5));
    // linear: row0 [0, 40], row1 [10 − 10, 10 + 10]; PARAM-6 max(8·5, 4·5 + 10) = 40.
    assert_eq!((b[4].output.min, b[4].output.max), (0, 40));
    assert_eq!(b[4].accumulator, Some(40));
    assert_eq!(m.accumulator_bounds(), [(0, 56), (3, 5), (4, 40)]);
    // b8 carries |y| ≤ 127.
    let b8 = ParameterSet::shipped("b8").unwrap();
    assert_eq!(m.check_against(&b8), Ok(()));
    // ×4 linear weights: 160 ≥ 128 at layer 4, output 0.
    let err = hand_model(4).check_against(&b8).unwrap_err();
    match &err {
        ModelError::AccumulatorOverflow {
            layer: 4,
            op: "linear",
            source:
                ParamError::AccumulatorOverflow {
                    output: 0,
                    worst: 160,
                    needed_bits: 9,
                    plaintext_bits: 8,
                    ..
                },
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("layer 4 (linear)"), "{err}");
    assert_eq!(hand_model(4).check_against(&b16()), Ok(()));
}

/// MODEL-5: non-weight linear layers are checked on their interval.
#[test]
fn residual_and_pool_accumulators_are_checked() {
    let m = Model::new(
        "sum",
        spec(1, 4, 4, -100, 100),
        vec![
            Layer::AvgPool {
                kernel: 2,
                stride: 2,
            },
            Layer::ResidualAdd { from: 0 },
        ],
    )
    .unwrap();
    assert_eq!(m.accumulator_bounds(), [(0, 400), (1, 800)]);
    let b8 = ParameterSet::shipped("b8").unwrap();
    assert!(matches!(
        m.check_against(&b8),
        Err(ModelError::AccumulatorOverflow {
            layer: 0,
            op: "avgpool",
            ..
        })
    ));
    assert_eq!(m.check_against(&b16()), Ok(()));
    let relu_first = Model::new(
        "gap",
        spec(2, 4, 4, -100, 100),
        vec![Layer::Relu, Layer::GlobalAvgPool],
    )
    .unwrap();
    let b = relu_first.bounds();
    assert_eq!((b[1].output.min, b[1].output.max), (0, 1600));
    // A conv with padding: zero padding widens a positive input to include 0.
    let padded = Model::new(
        "pad",
        spec(1, 2, 2, 5, 7),
        vec![conv(1, 3, 3, 1, 1, vec![1; 9], vec![0])],
    )
    .unwrap();
    assert_eq!(padded.bounds()[0].output.min, 0);
    assert_eq!(padded.evaluate(&[5, 5, 5, 5]).unwrap(), [20, 20, 20, 20]);
}

// ---------------------------------------------------------------------------
// MODEL-6, MODEL-7, MODEL-8: the JSON model file
// ---------------------------------------------------------------------------

const TINY_JSON: &str = r#"{"format":"safhire-model","version":1,"name":"t",
 "input":{"shape":[1,2,2],"min":0,"max":3},
 "layers":[{"op":"conv2d","out_channels":1,"kernel_h":1,"kernel_w":1,"stride":1,"padding":0,"weights":[2],"bias":[1]},
           {"op":"requantize","multiplier":1,"shift":1,"min":0,"max":3},
           {"op":"flatten"},
           {"op":"linear","out_features":1,"weights":[1,1,1,1],"bias":[0]}]}"#;

fn json_err(json: &str) -> ModelError {
    Model::from_json(json).unwrap_err()
}

/// MODEL-6: a hand-written file parses to the expected IR and evaluates.
#[test]
fn parses_a_hand_written_file() {
    let m = Model::from_json(TINY_JSON).unwrap();
    assert_eq!(m.name(), "t");
    assert_eq!(m.layers().len(), 4);
    assert_eq!(m.layers()[0], conv(1, 1, 1, 1, 0, vec![2], vec![1]));
    // [0,1,2,3] → 2x+1 = [1,3,5,7] → /2 half away = [1,2,3,4→3] → sum 9.
    assert_eq!(m.evaluate(&[0, 1, 2, 3]).unwrap(), [9]);
    assert_eq!(Model::from_json(&m.to_json()).unwrap(), m);
}

/// MODEL-6, MODEL-4: the shipped digits CNN, and its noise-aware sibling
/// trained for the `dp` policy (models/README.md), parse, fit b16, and the
/// evaluator reproduces the exporter's integer logits bit for bit.
#[test]
fn shipped_digits_models_reproduce_their_logits() {
    for (model, test) in [
        ("digits-cnn.json", "digits-test.json"),
        ("digits-cnn-dp.json", "digits-cnn-dp-test.json"),
    ] {
        digits_model_reproduces_its_logits(model, test);
    }
}

fn digits_model_reproduces_its_logits(model: &str, test: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let (Ok(model), Ok(test)) = (
        std::fs::read_to_string(root.join(model)),
        std::fs::read_to_string(root.join(test)),
    ) else {
        eprintln!("models/{model} or models/{test} not present; skipped");
        return;
    };
    let m = Model::from_json(&model).unwrap();
    assert_eq!(m.check_against(&b16()), Ok(()));
    assert!(m
        .check_against(&ParameterSet::shipped("b12").unwrap())
        .is_err());
    let test: serde_json::Value = serde_json::from_str(&test).unwrap();
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let inputs = test["inputs"].as_array().unwrap();
    let logits = test["integer_logits"].as_array().unwrap();
    assert_eq!(inputs.len(), logits.len());
    for (x, want) in inputs.iter().zip(logits) {
        assert_eq!(m.evaluate(&ints(x)).unwrap(), ints(want));
    }
}

/// MODEL-6: unknown, missing, misplaced and null fields are errors.
#[test]
fn strict_fields() {
    let with = |from: &str, to: &str| {
        assert!(TINY_JSON.contains(from), "{from}");
        json_err(&TINY_JSON.replacen(from, to, 1))
    };
    // Unknown fields at every level.
    for (from, to) in [
        (r#""name":"t","#, r#""name":"t","extra":1,"#),
        (r#""min":0,"max":3}"#, r#""min":0,"max":3,"dtype":"i8"}"#),
        (r#"{"op":"flatten"}"#, r#"{"op":"flatten","axis":1}"#),
    ] {
        let e = with(from, to);
        assert!(
            matches!(&e, ModelError::Json { message } if message.contains("unknown field")),
            "{e}"
        );
    }
    // Unknown op.
    let e = with(r#""op":"flatten""#, r#""op":"softmax""#);
    assert!(
        matches!(&e, ModelError::Json { message } if message.contains("softmax")),
        "{e}"
    );
    // Missing required field.
    assert_eq!(
        with(r#""shift":1,"#, ""),
        ModelError::MissingField {
            layer: 1,
            op: "requantize",
            field: "shift"
        }
    );
    assert_eq!(
        with(r#","weights":[1,1,1,1]"#, ""),
        ModelError::MissingField {
            layer: 3,
            op: "linear",
            field: "weights"
        }
    );
    // A field of another op.
    assert_eq!(
        with(r#"{"op":"flatten"}"#, r#"{"op":"flatten","kernel":2}"#),
        ModelError::FieldNotAllowed {
            layer: 2,
            op: "flatten",
            field: "kernel"
        }
    );
    assert_eq!(
        with(r#""out_features":1,"#, r#""out_features":1,"padding":0,"#),
        ModelError::FieldNotAllowed {
            layer: 3,
            op: "linear",
            field: "padding"
        }
    );
    // null is not "absent".
    assert!(matches!(
        with(r#""shift":1"#, r#""shift":null"#),
        ModelError::Json { .. }
    ));
    assert!(matches!(
        with(r#""bias":[0]"#, r#""bias":null"#),
        ModelError::Json { .. }
    ));
    // Duplicate keys, wrong types, floats, negative sizes, out-of-range numbers.
    for (from, to) in [
        (r#""shift":1"#, r#""shift":1,"shift":2"#),
        (r#""shift":1"#, r#""shift":"1""#),
        (r#""shift":1"#, r#""shift":1.0"#),
        (r#""shift":1"#, r#""shift":-1"#),
        (r#""weights":[2]"#, r#""weights":[2.5]"#),
        (r#""weights":[2]"#, r#""weights":[9223372036854775808]"#),
        (r#""shape":[1,2,2]"#, r#""shape":[1,2]"#),
        (r#""shape":[1,2,2]"#, r#""shape":[1,2,2,1]"#),
    ] {
        assert!(matches!(with(from, to), ModelError::Json { .. }), "{to}");
    }
    // Objects only: the array form serde would otherwise accept.
    assert!(matches!(
        with(r#"{"shape":[1,2,2],"min":0,"max":3}"#, r#"[[1,2,2],0,3]"#),
        ModelError::Json { .. }
    ));
    assert!(matches!(
        with(r#"{"op":"flatten"}"#, r#"["flatten"]"#),
        ModelError::Json { .. }
    ));
    assert!(matches!(
        json_err(r#"["safhire-model",1,"t",{"shape":[1,1,1],"min":0,"max":0},[]]"#),
        ModelError::Json { .. }
    ));
    // Trailing data.
    assert!(matches!(
        json_err(&format!("{TINY_JSON} {{}}")),
        ModelError::Json { .. }
    ));
    // groups ≠ 1 parses, then fails validation naming the layer.
    assert_eq!(
        with(r#""padding":0,"#, r#""padding":0,"groups":2,"#),
        ModelError::Layer {
            layer: 0,
            op: "conv2d",
            problem: LayerProblem::UnsupportedGroups { groups: 2 }
        }
    );
    assert!(Model::from_json(&TINY_JSON.replacen(
        r#""padding":0,"#,
        r#""padding":0,"groups":1,"#,
        1
    ))
    .is_ok());
    // Validation errors come through.
    assert_eq!(
        with(r#""weights":[2]"#, r#""weights":[2,3]"#),
        ModelError::Layer {
            layer: 0,
            op: "conv2d",
            problem: LayerProblem::WeightCount {
                expected: 1,
                got: 2
            }
        }
    );
}

/// MODEL-6: format tag and version are checked first.
#[test]
fn format_and_version() {
    assert_eq!(
        json_err(&TINY_JSON.replace("safhire-model", "onnx")),
        ModelError::NotAModel {
            found: "onnx".into()
        }
    );
    assert_eq!(
        json_err(&TINY_JSON.replace(r#""version":1"#, r#""version":2"#)),
        ModelError::UnsupportedVersion { version: 2 }
    );
    // A version-2 file with fields version 1 does not know: still a version error.
    let v2 = TINY_JSON.replace(r#""version":1,"#, r#""version":2,"future":{"x":[1]},"#);
    assert_eq!(json_err(&v2), ModelError::UnsupportedVersion { version: 2 });
    assert!(matches!(
        json_err(r#"{"version":1}"#),
        ModelError::Json { .. }
    ));
    assert!(matches!(
        json_err(r#"{"format":"safhire-model"}"#),
        ModelError::Json { .. }
    ));
    let long = format!(r#"{{"format":"{}","version":1}}"#, "x".repeat(10_000));
    let e = json_err(&long);
    assert!(
        matches!(&e, ModelError::NotAModel { found } if found.len() < 300),
        "{e}"
    );
    // A huge unknown key is echoed only in part, with its location.
    let key = "k".repeat(10_000);
    let e =
        json_err(&TINY_JSON.replacen(r#""name":"t","#, &format!(r#""name":"t","{key}":1,"#), 1));
    assert!(
        matches!(&e, ModelError::Json { message } if message.len() < 400 && message.contains("line 1 column")),
        "{e}"
    );
    for e in [
        json_err(""),
        json_err("{"),
        json_err("null"),
        json_err("[]"),
        json_err("{} {}"),
    ] {
        assert!(matches!(e, ModelError::Json { .. }));
        assert!(e.to_string().starts_with("model file"), "{e}");
    }
}

/// MODEL-7: size limits, enforced while parsing, with typed errors.
#[test]
fn size_limits() {
    let small = |max_bytes, max_parameters, max_layers| Limits {
        max_bytes,
        max_parameters,
        max_layers,
    };
    assert!(Model::from_json_with_limits(TINY_JSON, &small(TINY_JSON.len(), 7, 4)).is_ok());
    assert_eq!(
        Model::from_json_with_limits(TINY_JSON, &small(100, 7, 4)),
        Err(ModelError::FileTooLarge {
            bytes: TINY_JSON.len(),
            max: 100
        })
    );
    // 1 + 1 + 4 + 1 = 7 weights and biases.
    assert_eq!(
        Model::from_json_with_limits(TINY_JSON, &small(1 << 20, 6, 4)),
        Err(ModelError::TooManyParameters { max: 6 })
    );
    assert_eq!(
        Model::from_json_with_limits(TINY_JSON, &small(1 << 20, 7, 3)),
        Err(ModelError::TooManyLayers { max: 3 })
    );
    // The budget is per parse: a failed parse leaves no state behind.
    assert!(Model::from_json(TINY_JSON).is_ok());
    assert_eq!(Limits::default(), Limits::DEFAULT);
    assert_eq!(Limits::DEFAULT.max_bytes, 256 << 20);
    assert_eq!(Limits::DEFAULT.max_parameters, 100_000_000);
    for e in [
        ModelError::FileTooLarge { bytes: 2, max: 1 },
        ModelError::TooManyParameters { max: 1 },
        ModelError::TooManyLayers { max: 1 },
        ModelError::MissingField {
            layer: 0,
            op: "relu",
            field: "x",
        },
        ModelError::FieldNotAllowed {
            layer: 0,
            op: "relu",
            field: "x",
        },
        ModelError::UnsupportedVersion { version: 9 },
        ModelError::NotAModel { found: "x".into() },
    ] {
        assert!(e.to_string().starts_with("model file"), "{e}");
    }
    // The default limit refuses an oversized file before parsing it.
    let huge = " ".repeat((256 << 20) + 1);
    assert!(matches!(
        Model::from_json(&huge),
        Err(ModelError::FileTooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------
// MODEL-9: the zoo
// ---------------------------------------------------------------------------

fn conv_count(m: &Model) -> usize {
    m.layers()
        .iter()
        .filter(|l| matches!(l, Layer::Conv2d { .. }))
        .count()
}

/// Weights of a CIFAR-style ResNet with projection shortcuts, computed
/// independently of the zoo: (weights, biases).
fn resnet_parameters(
    in_c: usize,
    widths: &[usize],
    blocks: usize,
    classes: usize,
) -> (usize, usize) {
    let (mut w, mut b) = (in_c * widths[0] * 9, widths[0]);
    let mut c = widths[0];
    for (stage, &width) in widths.iter().enumerate() {
        for block in 0..blocks {
            w += c * width * 9 + width * width * 9;
            b += 2 * width;
            if stage > 0 && block == 0 {
                w += c * width;
                b += width;
            }
            c = width;
        }
    }
    (w + c * classes, b + classes)
}

/// MODEL-9: ResNet-20: shapes, counts, b16 fit, and one reference inference.
#[test]
fn resnet20_is_well_formed_and_runs() {
    let t = Instant::now();
    let m = zoo::resnet20(1);
    assert_eq!(m.name(), "resnet20");
    assert_eq!(m.input().shape, Shape::new(3, 32, 32));
    assert_eq!(m.layers().len(), 74);
    assert_eq!(conv_count(&m), 21);
    assert_eq!(
        m.layers()
            .iter()
            .filter(|l| matches!(l, Layer::Linear { .. }))
            .count(),
        1
    );
    assert_eq!(resnet_parameters(3, &[16, 32, 64], 3, 10), (270_896, 794));
    assert_eq!(m.weight_count(), 270_896);
    assert_eq!(m.parameter_count(), 270_896 + 794);
    assert_eq!(m.output_shape(), Shape::new(10, 1, 1));
    let spatial: Vec<usize> = m.shapes().iter().map(|s| s.height).collect();
    assert!(spatial.contains(&32) && spatial.contains(&16) && spatial.contains(&8));
    assert_eq!(m.check_against(&b16()), Ok(()));
    assert!(m
        .check_against(&ParameterSet::shipped("b12").unwrap())
        .is_err());
    let worst = m
        .accumulator_bounds()
        .iter()
        .map(|&(_, a)| a)
        .max()
        .unwrap();
    assert!(worst < 1 << 15, "{worst}");
    // Every requantize output stays in [0, 15].
    for (l, b) in m.layers().iter().zip(m.bounds()) {
        if matches!(l, Layer::Requantize { .. }) {
            assert!(b.output.min >= 0 && b.output.max <= 15);
        }
    }
    assert_eq!(zoo::resnet20(1), m, "deterministic");
    assert_ne!(zoo::resnet20(2).layers(), m.layers());
    let built = t.elapsed();

    let input = random_input(&m, 7);
    let t = Instant::now();
    let all = m.evaluate_all(&input).unwrap();
    let ran = t.elapsed();
    eprintln!("resnet20: build + checks {built:?}, reference inference {ran:?}");
    let logits = all.last().unwrap();
    assert_eq!(logits.len(), 10);
    assert_eq!(&m.evaluate(&input).unwrap(), logits);
    // Within the bounds, and not degenerate (activations use their range).
    for (y, b) in all.iter().zip(m.bounds()) {
        assert!(y.iter().all(|&v| b.output.contains(v)));
    }
    let last_hidden = &all[all.len() - 5];
    assert!(last_hidden.iter().any(|&v| v > 0) && last_hidden.iter().any(|&v| v < 15));
    let distinct: std::collections::BTreeSet<_> = logits.iter().collect();
    assert!(distinct.len() > 1, "{logits:?}");
    // The model file round trip at full size.
    assert_eq!(Model::from_json(&m.to_json()).unwrap(), m);
}

/// MODEL-9: ResNet-18 (Tiny-ImageNet): shapes, counts, b16 fit.
#[test]
fn resnet18_is_well_formed() {
    let m = zoo::resnet18(1);
    assert_eq!(m.name(), "resnet18");
    assert_eq!(m.input().shape, Shape::new(3, 64, 64));
    assert_eq!(m.layers().len(), 69);
    assert_eq!(conv_count(&m), 20);
    let (w, b) = resnet_parameters(3, &[64, 128, 256, 512], 2, 200);
    assert_eq!((w, b), (11_261_632, 5_000));
    assert_eq!(m.weight_count(), w);
    assert_eq!(m.parameter_count(), w + b);
    assert_eq!(m.output_shape(), Shape::new(200, 1, 1));
    let heights: Vec<usize> = m.shapes().iter().map(|s| s.height).collect();
    for h in [64, 32, 16, 8] {
        assert!(heights.contains(&h));
    }
    assert_eq!(m.check_against(&b16()), Ok(()));
}

/// MODEL-9: the tiny model covers most ops and runs fast.
#[test]
fn tiny_zoo_model() {
    let m = zoo::tiny(3);
    assert_eq!(m.layers().len(), 12);
    assert_eq!(m.check_against(&b16()), Ok(()));
    let logits = m.evaluate(&random_input(&m, 1)).unwrap();
    assert_eq!(logits.len(), 10);
    assert_eq!(Model::from_json(&m.to_json()).unwrap(), m);
}

/// MODEL-9: ResNet-18 reference inference (about 2.3 G multiply-adds).
#[test]
#[ignore = "slow: ResNet-18 reference inference takes seconds"]
fn resnet18_reference_inference() {
    let m = zoo::resnet18(1);
    let input = random_input(&m, 7);
    let t = Instant::now();
    let logits = m.evaluate(&input).unwrap();
    eprintln!("resnet18 reference inference {:?}", t.elapsed());
    assert_eq!(logits.len(), 200);
    let b = m.bounds();
    assert!(logits.iter().all(|&v| b.last().unwrap().output.contains(v)));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn model_strategy() -> impl Strategy<Value = Model> {
    (
        1usize..=3,
        1usize..=5,
        1usize..=5,
        prop::collection::vec(any::<u8>(), 1..10),
        any::<u64>(),
    )
        .prop_map(|(c, h, w, ops, seed)| random_model(c, h, w, &ops, seed))
}

/// Usize values that stress validation.
fn wild() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(usize::MAX),
        Just(usize::MAX / 2 + 1),
        0usize..6,
        any::<usize>()
    ]
}

fn wild_layer() -> impl Strategy<Value = Layer> {
    let small_vec = || prop::collection::vec(-3i64..=3, 0..20);
    prop_oneof![
        (
            wild(),
            wild(),
            wild(),
            wild(),
            wild(),
            wild(),
            small_vec(),
            small_vec()
        )
            .prop_map(
                |(out_channels, kernel_h, kernel_w, stride, padding, groups, weights, bias)| {
                    Layer::Conv2d {
                        out_channels,
                        kernel_h,
                        kernel_w,
                        stride,
                        padding,
                        groups: groups % 3,
                        weights,
                        bias,
                    }
                }
            ),
        (wild(), small_vec(), small_vec()).prop_map(|(out_features, weights, bias)| {
            Layer::Linear {
                out_features,
                weights,
                bias,
            }
        }),
        (wild(), wild()).prop_map(|(kernel, stride)| Layer::AvgPool { kernel, stride }),
        (wild(), wild()).prop_map(|(kernel, stride)| Layer::MaxPool { kernel, stride }),
        Just(Layer::GlobalAvgPool),
        Just(Layer::Flatten),
        Just(Layer::Relu),
        wild().prop_map(|from| Layer::ResidualAdd { from }),
        wild().prop_map(|from| Layer::Branch { from }),
        (any::<i64>(), 0u32..70, any::<i64>(), any::<i64>()).prop_map(
            |(multiplier, shift, min, max)| Layer::Requantize {
                multiplier,
                shift,
                min,
                max
            }
        ),
    ]
}

/// Independent requantize: truncating division, then round the remainder.
fn requantize_by_division(y: i64, m: i64, s: u32, lo: i64, hi: i64) -> i64 {
    let p = i128::from(y) * i128::from(m);
    let d = 1i128 << s;
    let (q, r) = (p / d, p % d);
    let q = if 2 * r.abs() >= d && s > 0 {
        q + p.signum()
    } else {
        q
    };
    q.clamp(i128::from(lo), i128::from(hi)) as i64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// MODEL-8: to_json / from_json round-trips every valid model exactly.
    #[test]
    fn json_round_trip(m in model_strategy()) {
        let json = m.to_json();
        let back = Model::from_json(&json).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.to_json(), json);
    }

    /// MODEL-5: every activation of a successful evaluation lies in its
    /// propagated interval, and every linear output within its accumulator bound.
    #[test]
    fn bounds_contain_every_activation(m in model_strategy(), seed in any::<u64>()) {
        let bounds = m.bounds();
        for s in [seed, seed ^ 1, seed ^ 2] {
            let input = random_input(&m, s);
            let Ok(all) = m.evaluate_all(&input) else { continue };
            for (i, (y, b)) in all.iter().zip(&bounds).enumerate() {
                prop_assert_eq!(y.len(), m.shapes()[i].len().unwrap());
                for &v in y {
                    prop_assert!(b.output.contains(v), "layer {} value {} outside {:?}", i, v, b.output);
                    if let Some(acc) = b.accumulator {
                        prop_assert!(u128::from(v.unsigned_abs()) <= acc);
                    }
                }
            }
            prop_assert_eq!(m.evaluate(&input).unwrap(), all.last().unwrap().clone());
        }
        // check_against agrees with the reported bounds.
        let b16 = b16();
        let fits = m.accumulator_bounds().iter().all(|&(_, a)| a < 1 << 15);
        prop_assert_eq!(m.check_against(&b16).is_ok(), fits);
    }

    /// MODEL-3: requantize agrees with an independent formulation.
    #[test]
    fn requantize_matches_division(y in any::<i64>(), m in 1i64..=i64::MAX, s in 0u32..=62, a in any::<i64>(), b in any::<i64>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert_eq!(requantize(y, m, s, lo, hi), requantize_by_division(y, m, s, lo, hi));
        let small = y % 1000;
        prop_assert_eq!(requantize(small, 3, 2, -1000, 1000), requantize_by_division(small, 3, 2, -1000, 1000));
    }

    /// MODEL-2: arbitrary layer parameters never panic; a model that
    /// validates also evaluates (or reports overflow) without panicking.
    #[test]
    fn wild_models_never_panic(
        shape in (wild(), wild(), wild()),
        min in any::<i64>(), max in any::<i64>(),
        layers in prop::collection::vec(wild_layer(), 0..5),
    ) {
        let input = InputSpec { shape: Shape::new(shape.0, shape.1, shape.2), min, max };
        match Model::new("wild", input, layers) {
            Ok(m) => {
                prop_assert!(m.input().shape.len().unwrap() <= MAX_TENSOR_LEN);
                let _ = m.bounds();
                let _ = m.check_against(&b16());
                if m.input().shape.len().unwrap() <= 4096 && m.shapes().iter().all(|s| s.len().unwrap() <= 4096) {
                    let x = vec![m.input().min; m.input().shape.len().unwrap()];
                    let _ = m.evaluate(&x);
                }
                let _ = Model::from_json(&m.to_json()).unwrap();
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// MODEL-7: arbitrary text never panics the parser.
    #[test]
    fn arbitrary_text_never_panics(s in ".{0,200}") {
        prop_assert!(Model::from_json(&s).is_err());
    }

    /// MODEL-7: corrupted model files never panic the parser.
    #[test]
    fn corrupted_files_never_panic(m in model_strategy(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = m.to_json().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            let alphabet = b"{}[],:\"-0123456789aelnrtu \x00";
            bytes[i] = alphabet[b as usize % alphabet.len()];
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(back) = Model::from_json(text) {
                prop_assert_eq!(Model::from_json(&back.to_json()).unwrap(), back);
            }
        }
        // Truncations too.
        let json = m.to_json();
        for cut in [1, json.len() / 2, json.len() - 1] {
            prop_assert!(Model::from_json(&json[..cut]).is_err());
        }
    }
}

// ---------------------------------------------------------------------------
// ENG-15: k images side by side (Model::batched)
// ---------------------------------------------------------------------------

const DIGITS: &str = include_str!("../models/digits-cnn.json");
const DIGITS_TEST: &str = include_str!("../models/digits-test.json");

/// Every layer's outputs of `model` on each of `inputs`, one after another
/// (entry `l`: layer `l`'s output on input 1, then on input 2, …), or `None`
/// if any evaluation fails.
fn per_image(model: &Model, inputs: &[Vec<i64>]) -> Option<Vec<Vec<i64>>> {
    let mut out = vec![Vec::new(); model.layers().len()];
    for x in inputs {
        for (layer, y) in out.iter_mut().zip(model.evaluate_all(x).ok()?) {
            layer.extend(y);
        }
    }
    Some(out)
}

/// ENG-15: `batched` evaluates the k images side by side: every layer's
/// output is bit-exact against the per-image reference's (not only the
/// logits: a batch whose blocks were permuted could compose back to the
/// identity), fails exactly when one of the images fails,
/// every shape is the base shape with k× the channels, and the worst-case
/// bounds of MODEL-5 are the base model's.
fn check_batched(m: &Model, k: usize, inputs: &[Vec<i64>]) -> Result<(), TestCaseError> {
    let b = m.batched(k).unwrap();
    prop_assert_eq!(b.name(), m.name());
    prop_assert_eq!(b.layers().len(), m.layers().len());
    let (bi, mi) = (b.input(), m.input());
    prop_assert_eq!(
        bi.shape,
        Shape::new(k * mi.shape.channels, mi.shape.height, mi.shape.width)
    );
    prop_assert_eq!((bi.min, bi.max), (mi.min, mi.max));
    for (bs, ms) in b.shapes().iter().zip(m.shapes()) {
        prop_assert_eq!(*bs, Shape::new(k * ms.channels, ms.height, ms.width));
    }
    prop_assert_eq!(b.weight_count(), k * k * m.weight_count());
    prop_assert_eq!(b.bounds(), m.bounds());
    prop_assert_eq!(b.accumulator_bounds(), m.accumulator_bounds());
    prop_assert_eq!(
        b.check_against(&b16()).is_ok(),
        m.check_against(&b16()).is_ok()
    );
    let concat: Vec<i64> = inputs.concat();
    match (b.evaluate_all(&concat), per_image(m, inputs)) {
        (Ok(got), Some(want)) => {
            prop_assert_eq!(&b.evaluate(&concat).unwrap(), want.last().unwrap());
            for (layer, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(g, w, "layer {}", layer);
            }
        }
        (Err(ModelError::Overflow { .. }), None) => {}
        (got, want) => prop_assert!(false, "batched {:?}, per image {:?}", got, want),
    }
    Ok(())
}

/// A ResNet basic block with a projection shortcut (branch · 1×1 stride-2
/// conv · residual_add) between a stem and a global-pool classifier, random
/// sizes and weights.
fn projection_model(c: usize, side: usize, width: usize, classes: usize, seed: u64) -> Model {
    let mut rng = Mix(seed);
    let mut w = |n: usize| rng.vec(n, -3, 3);
    let (m, half) = (width, side.div_ceil(2));
    let layers = vec![
        conv(m, 3, 3, 1, 1, w(m * c * 9), w(m)),             // 0
        Layer::Relu,                                         // 1
        rq(1, 2, 0, 7),                                      // 2: X
        conv(2 * m, 3, 3, 2, 1, w(2 * m * m * 9), w(2 * m)), // 3
        Layer::Relu,                                         // 4
        rq(1, 3, 0, 7),                                      // 5
        conv(2 * m, 3, 3, 1, 1, w(4 * m * m * 9), w(2 * m)), // 6: C
        Layer::Branch { from: 2 },                           // 7
        conv(2 * m, 1, 1, 2, 0, w(2 * m * m), w(2 * m)),     // 8
        Layer::ResidualAdd { from: 6 },                      // 9
        Layer::Relu,                                         // 10
        Layer::AvgPool {
            kernel: 1,
            stride: 1,
        },
        Layer::GlobalAvgPool,
        Layer::Flatten,
        Layer::Linear {
            out_features: classes,
            weights: w(classes * 2 * m),
            bias: w(classes),
        },
    ];
    let model = Model::new("projection", spec(c, side, side, 0, 15), layers).unwrap();
    assert_eq!(model.shapes()[8], Shape::new(2 * m, half, half));
    model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// ENG-15 on random valid models (every op of the IR, convs with stride
    /// and padding): the batched model on the concatenated inputs equals
    /// the per-image references, concatenated, bit for bit.
    #[test]
    fn eng_15_batched_equals_per_image_references(
        m in model_strategy(),
        k in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let inputs: Vec<Vec<i64>> = (0..k as u64).map(|i| random_input(&m, seed.wrapping_add(i))).collect();
        check_batched(&m, k, &inputs)?;
    }

    /// ENG-15 on a ResNet block with a projection shortcut (branch + conv).
    #[test]
    fn eng_15_batched_projection_block_equals_per_image_references(
        c in 1usize..=3,
        side in 2usize..=6,
        width in 1usize..=3,
        classes in 1usize..=4,
        k in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let m = projection_model(c, side, width, classes, seed);
        let inputs: Vec<Vec<i64>> = (0..k as u64).map(|i| random_input(&m, seed ^ (i + 1))).collect();
        check_batched(&m, k, &inputs)?;
    }
}

/// ENG-15: the block-diagonal layout itself, by hand: block i maps input
/// channel(s) of image i to its output channels, zeros elsewhere; the bias
/// is repeated.
#[test]
fn eng_15_batched_weights_are_block_diagonal() {
    let b = hand_model(1).batched(2).unwrap();
    let Layer::Conv2d {
        out_channels,
        weights,
        bias,
        groups,
        ..
    } = &b.layers()[0]
    else {
        panic!("layer 0 is a conv")
    };
    assert_eq!((*out_channels, *groups), (4, 1));
    #[rustfmt::skip]
    let expected = [
        2, 0, 0, -1,  0, 0, 0, 0,
        1, 1, 1, 1,   0, 0, 0, 0,
        0, 0, 0, 0,   2, 0, 0, -1,
        0, 0, 0, 0,   1, 1, 1, 1,
    ];
    assert_eq!(weights, &expected);
    assert_eq!(bias, &[1, -20, 1, -20]);
    let Layer::Linear {
        out_features,
        weights,
        bias,
    } = &b.layers()[4]
    else {
        panic!("layer 4 is a linear")
    };
    assert_eq!(*out_features, 4);
    let (r0, r1) = (vec![1; 8], vec![0, 0, -1, 0, 0, 0, 2, -1]);
    let z = vec![0; 8];
    assert_eq!(weights, &[&r0[..], &z, &r1, &z, &z, &r0, &z, &r1].concat());
    assert_eq!(bias, &[0, 10, 0, 10]);
    // By hand: image 1 is 1..=9 (logits [11, 10]), image 2 is 9..=1.
    let x2: Vec<i64> = (1..=9).rev().collect();
    let x: Vec<i64> = (1..=9).chain(x2.iter().copied()).collect();
    let want = [vec![11, 10], hand_model(1).evaluate(&x2).unwrap()].concat();
    assert_eq!(b.evaluate(&x).unwrap(), want);
    // k = 1 is the model itself.
    assert_eq!(hand_model(1).batched(1).unwrap(), hand_model(1));
}

/// ENG-15: the shipped digits CNN batched by 3 gives each image's logits
/// (and the exporter's), and its worst-case accumulators are the base
/// model's: the zero blocks add nothing.
#[test]
fn eng_15_digits_batched_by_3_equals_per_image_references() {
    let m = Model::from_json(DIGITS).unwrap();
    let set = safhire::model::TestSet::from_json("digits-test.json", DIGITS_TEST).unwrap();
    let logits = set.expected_logits.unwrap();
    let b = m.batched(3).unwrap();
    assert_eq!(b.input().shape, Shape::new(3, 8, 8));
    assert_eq!(
        b.output_shape(),
        Shape::new(3 * m.output_shape().channels, 1, 1)
    );
    for (i, chunk) in set.inputs.chunks_exact(3).take(4).enumerate() {
        let got = b.evaluate_all(&chunk.concat()).unwrap();
        assert_eq!(got, per_image(&m, chunk).unwrap(), "batch {i}");
        let logits_got = b.evaluate(&chunk.concat()).unwrap();
        assert_eq!(&logits_got, got.last().unwrap());
        assert_eq!(logits_got, logits[3 * i..3 * i + 3].concat(), "batch {i}");
    }
    // A batch mixing images in another order keeps the order.
    let mixed = [
        set.inputs[7].clone(),
        set.inputs[0].clone(),
        set.inputs[7].clone(),
    ];
    assert_eq!(
        b.evaluate(&mixed.concat()).unwrap(),
        [&logits[7][..], &logits[0], &logits[7]].concat()
    );
    assert_eq!(b.accumulator_bounds(), m.accumulator_bounds());
    assert_eq!(b.bounds(), m.bounds());
    b.check_against(&b16()).unwrap();
    // An input out of range in any image is refused, as for one image.
    let mut bad = mixed.concat();
    bad[2 * 64 + 5] = 16;
    assert!(matches!(
        b.evaluate(&bad),
        Err(ModelError::InputOutOfRange {
            index: 133,
            value: 16,
            ..
        })
    ));
}

/// ENG-15: a batch of zero images is refused with a named error.
#[test]
fn eng_15_batch_of_zero_images_is_refused() {
    let err = hand_model(1).batched(0).unwrap_err();
    assert_eq!(err, ModelError::EmptyBatch);
    assert!(err.to_string().contains("k = 0"), "{err}");
}

/// ENG-15: a huge k is refused by checked size arithmetic, before anything
/// is allocated: too large a tensor (or an overflowing one) as Model::new
/// would report it, too many weights as BatchTooLarge.
#[test]
fn eng_15_huge_batches_are_refused_without_allocating() {
    // 64 → 64 linear: 4096 weights, tensors of 64 values.
    let linear = Model::new(
        "linear",
        spec(64, 1, 1, 0, 1),
        vec![Layer::Linear {
            out_features: 64,
            weights: vec![1; 64 * 64],
            bias: vec![0; 64],
        }],
    )
    .unwrap();
    // Tensors fit (2^20 · 64 = 2^26) but 2^40 · 4096 weights do not.
    let k = 1 << 20;
    let err = linear.batched(k).unwrap_err();
    assert_eq!(
        err,
        ModelError::BatchTooLarge {
            k,
            max: Limits::DEFAULT.max_parameters
        }
    );
    assert!(err.to_string().contains("smaller batch"), "{err}");
    // Just over the limit: (k²·4096 + k·64 > 10^8 from k = 157).
    assert!(matches!(
        linear.batched(157),
        Err(ModelError::BatchTooLarge { k: 157, .. })
    ));
    assert_eq!(
        linear.batched(156).unwrap().parameter_count(),
        156 * 156 * 4096 + 156 * 64
    );
    // The input tensor would exceed MAX_TENSOR_LEN.
    assert!(matches!(
        linear.batched((1 << 20) + 1),
        Err(ModelError::Input {
            problem: LayerProblem::TensorTooLarge {
                max: MAX_TENSOR_LEN,
                ..
            }
        })
    ));
    // k·C·H·W overflows usize.
    for k in [usize::MAX, usize::MAX / 2 + 1] {
        assert!(matches!(
            linear.batched(k),
            Err(ModelError::Input {
                problem: LayerProblem::SizeOverflow { .. }
            })
        ));
    }
    // A layer's output (not the input) too large: names the layer.
    let wide = Model::new(
        "wide",
        spec(1, 64, 64, 0, 1),
        vec![conv(64, 1, 1, 1, 0, vec![1; 64], vec![0; 64])],
    )
    .unwrap();
    let k = MAX_TENSOR_LEN / (64 * 64 * 64) + 1;
    assert!(matches!(
        wide.batched(k),
        Err(ModelError::Layer {
            layer: 0,
            op: "conv2d",
            problem: LayerProblem::TensorTooLarge { .. }
        })
    ));
    // Pure layers: only tensors limit k.
    let relu = Model::new("relu", spec(1, 1, 1, 0, 1), vec![Layer::Relu]).unwrap();
    assert_eq!(
        relu.batched(MAX_TENSOR_LEN).unwrap().input().shape.channels,
        MAX_TENSOR_LEN
    );
    assert!(relu.batched(MAX_TENSOR_LEN + 1).is_err());
}
