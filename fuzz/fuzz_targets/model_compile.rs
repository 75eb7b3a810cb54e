//! Bring your own model, correct or refused (ENG-5): a model file never
//! panics the parser, validation or `engine::compile`, and whatever
//! compiles computes exactly what the model's own evaluator computes.
//!
//! Input starting with `{` is a JSON model file (MODEL-8). Anything else
//! is read as a small model, block by block (a layer and usually its
//! client step), each layer's weights sized for the shape the layers
//! before it produce, so that most inputs are valid models and reach the
//! compiler: its folds (sum pools into the
//! next layer, ENG-3), pool rounds (ENG-6), split output stacks (ENG-7),
//! phase splits (ENG-13) and shortcuts (ENG-4, ENG-12). For a compiled
//! model, the compiled stages' plaintext reference (the encrypted
//! semantics, rewrites included) must equal `Model::evaluate` on inputs
//! drawn from the fuzz data, within the declared range; and so must the
//! compiled batch of 2 to 4 images (ENG-15) on the images laid one after
//! another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safhire::engine;
use safhire::model::{InputSpec, Layer, Model, Shape};
use safhire::params::ParameterSet;
use safhire::rlwe::Context;
use std::sync::OnceLock;

/// One context per set that compiles are tried on: b16 (the usual
/// choice) and b8 (small budgets: ENG-6 and ENG-7 rewrites).
fn contexts() -> &'static [Context] {
    static C: OnceLock<Vec<Context>> = OnceLock::new();
    C.get_or_init(|| {
        ["b8", "b16"]
            .iter()
            .map(|name| Context::new(ParameterSet::shipped(name).expect("shipped set")))
            .collect()
    })
}

/// Reads the fuzz data a byte at a time, then bytes of a generator seeded
/// by all of it: a short input still describes a whole model, and the
/// fuzzer's mutations of its first bytes steer the structure.
struct Bytes<'a> {
    data: &'a [u8],
    state: u64,
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        let state = data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Bytes {
            data,
            state: state | 1,
        }
    }

    fn byte(&mut self) -> u8 {
        if let Some((&b, rest)) = self.data.split_first() {
            self.data = rest;
            return b;
        }
        (xorshift(&mut self.state) >> 32) as u8
    }

    /// A value in `lo..=hi`.
    fn pick(&mut self, lo: usize, hi: usize) -> usize {
        lo + usize::from(self.byte()) % (hi - lo + 1)
    }

    /// `n` small signed weights from a generator seeded by two bytes:
    /// mostly −3..=3, one in eight zero, one in 64 up to ±100.
    fn weights(&mut self, n: usize) -> Vec<i64> {
        let mut state =
            (u64::from(self.byte()) << 8 | u64::from(self.byte())) ^ 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                let x = xorshift(&mut state);
                match x % 64 {
                    0 => (x >> 8) as i64 % 101 * if x & 64 == 0 { 1 } else { -1 },
                    1..=8 => 0,
                    _ => (x >> 8) as i64 % 7 - 3,
                }
            })
            .collect()
    }
}

/// Marsaglia's xorshift64 step: advances `x` (never 0) and returns it.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A conv on input `here`: kernel up to 3, padding below the kernel,
/// stride 1 or 2 (a kernel wider than the padded input is refused by
/// validation, and its block dropped).
fn conv(b: &mut Bytes<'_>, here: Shape) -> Layer {
    let out_channels = b.pick(1, 6);
    let kernel = b.pick(1, 3);
    let padding = b.pick(0, kernel - 1);
    let stride = b.pick(1, 2);
    Layer::Conv2d {
        out_channels,
        kernel_h: kernel,
        kernel_w: kernel,
        stride,
        padding,
        groups: 1,
        weights: b.weights(out_channels * here.channels * kernel * kernel),
        bias: b.weights(out_channels),
    }
}

/// The shape layer `layers.len() - 1` produces, if the prefix is valid.
fn last_shape(input: &InputSpec, layers: &[Layer]) -> Option<Shape> {
    let m = Model::new("fuzz", input.clone(), layers.to_vec()).ok()?;
    m.shapes().last().copied()
}

/// A small model from bytes: input shape and range, then up to 8 blocks
/// (a linear layer and its client step, a pool, a residual add, …).
fn decode(data: &[u8]) -> Option<Model> {
    let mut b = Bytes::new(data);
    let shape = Shape {
        channels: b.pick(1, 4),
        height: b.pick(1, 8),
        width: b.pick(1, 8),
    };
    let max = b.pick(1, 15) as i64;
    let min = if b.byte() % 4 == 0 { -max } else { 0 };
    let input = InputSpec { shape, min, max };
    let mut layers: Vec<Layer> = Vec::new();
    let mut here = shape;
    for _ in 0..b.pick(1, 8) {
        let before = layers.len();
        let op = b.byte() % 12;
        // Most linear layers are followed by a client step, so that the
        // model has several rounds; a few are not (the compiler must
        // refuse two linear layers in one round, or fold a pool).
        let client_step = b.byte() % 4 != 0;
        match op {
            0..=3 | 10 => {
                if op == 10 {
                    // A projection branch from an earlier layer's output.
                    let from = b.pick(0, layers.len().saturating_sub(1));
                    layers.push(Layer::Branch { from });
                    here = last_shape(&input, &layers).unwrap_or(here);
                }
                layers.push(conv(&mut b, here));
            }
            4 | 5 => {
                if here.height * here.width > 1 {
                    layers.push(Layer::Flatten);
                }
                let out_features = b.pick(1, 12);
                let flat = here.channels * here.height * here.width;
                layers.push(Layer::Linear {
                    out_features,
                    weights: b.weights(out_features * flat),
                    bias: b.weights(out_features),
                });
            }
            6 => {
                let kernel = b.pick(1, 2);
                let stride = b.pick(1, kernel);
                layers.push(Layer::AvgPool { kernel, stride });
            }
            7 => layers.push(Layer::GlobalAvgPool),
            8 | 9 => {
                // A residual add of an earlier output of this shape.
                let shapes = Model::new("fuzz", input.clone(), layers.clone())
                    .map(|m| m.shapes().to_vec())
                    .unwrap_or_default();
                let same: Vec<usize> = (0..shapes.len().saturating_sub(1))
                    .filter(|&j| shapes[j] == here)
                    .collect();
                if same.is_empty() {
                    continue;
                }
                let from = same[b.pick(0, same.len() - 1)];
                layers.push(Layer::ResidualAdd { from });
            }
            _ => layers.push(Layer::Relu),
        }
        if (op <= 5 || op == 8 || op == 10) && client_step {
            if b.byte() % 2 == 0 {
                layers.push(Layer::Relu);
            }
            layers.push(Layer::Requantize {
                multiplier: b.pick(1, 255) as i64,
                shift: b.pick(0, 12) as u32,
                min: if b.byte() % 2 == 0 { 0 } else { -15 },
                max: 15,
            });
        }
        match last_shape(&input, &layers) {
            Some(s) => here = s,
            None => layers.truncate(before),
        }
    }
    Model::new("fuzz", input, layers).ok()
}

/// An input in the model's declared range, from the fuzz data.
fn input_for(model: &Model, data: &[u8], salt: u8) -> Vec<i64> {
    let spec = model.input();
    let span = (spec.max - spec.min) as u64 + 1;
    let len = spec.shape.len().expect("a validated shape has a length");
    (0..len)
        .map(|i| {
            let byte = data.get(i % data.len().max(1)).copied().unwrap_or(0);
            let mixed = u64::from(byte ^ salt).wrapping_mul(0x9e37_79b9) ^ i as u64;
            spec.min + (mixed % span) as i64
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let model = if data.first() == Some(&b'{') {
        match std::str::from_utf8(data).ok().map(Model::from_json) {
            Some(Ok(m)) => m,
            _ => return,
        }
    } else {
        match decode(data) {
            Some(m) => m,
            None => return,
        }
    };
    for ctx in contexts() {
        // A refusal is an answer (its message is the compiler's concern);
        // a panic or a wrong result is not.
        let Ok(compiled) = engine::compile(ctx, &model) else {
            continue;
        };
        for salt in [0u8, 0x5a, 0xff] {
            let input = input_for(&model, data, salt);
            let want = model
                .evaluate(&input)
                .expect("a compiled model evaluates every in-range input (MODEL-5)");
            let got = compiled
                .reference(&input)
                .expect("the compiled stages evaluate every in-range input");
            assert_eq!(
                got,
                want,
                "compiled stages differ from the model ({})",
                ctx.params().name()
            );
        }
        // ENG-15: the model's batch of k images (k from the data) is
        // refused or computes the images' own results, one after another.
        let k = 2 + usize::from(data.last().copied().unwrap_or(0) % 3);
        let Ok(batch) = engine::compile_batch(ctx, &model, k) else {
            continue;
        };
        let inputs: Vec<Vec<i64>> = (0..k as u8)
            .map(|salt| input_for(&model, data, salt.wrapping_mul(0x3b)))
            .collect();
        let want: Vec<i64> = inputs
            .iter()
            .flat_map(|x| model.evaluate(x).expect("in-range inputs evaluate"))
            .collect();
        let got = batch
            .reference(&inputs.concat())
            .expect("the batch's stages evaluate in-range inputs");
        assert_eq!(got, want, "batch of {k} differs ({})", ctx.params().name());
    }
});
