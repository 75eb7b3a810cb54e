//! ResNet-shaped integer models with random weights, for benchmarks (MODEL-9).
//!
//! **Not trained.** The weights are small random integers from a
//! deterministic seed (ChaCha20); the shapes, layer sequence, parameter counts
//! and activation ranges are those of the real networks, the accuracy is that
//! of a random guess. Use them to measure cost, never quality.
//!
//! Construction (same for every model here):
//!
//! * input: 8-bit images, values in `[0, 255]`; after every ReLU the
//!   activations are requantised to `[0, 15]` (4 bits);
//! * each conv / linear output row draws weights in `±{1, 2, 3}` (0 with a
//!   probability chosen so the expected `‖w‖₁` is half the cap below), and
//!   its bias centres the output, `bias = −round(Σw · x̄)` for an assumed
//!   input mean `x̄` (128 for images, 4 after ReLU): a stand-in for a folded
//!   batch norm;
//! * `‖w‖₁` per row is capped so that PARAM-6's bound
//!   `‖w‖₁·max|x| + |bias| ≤ 2^14 − 1`; a residual sum of two such outputs
//!   (or one and a `[0, 15]` identity) stays below `2^15`, so every linear
//!   layer fits the b16 set (`check_against`);
//! * `relu` then `requantize` to `[0, 15]` with scale `6/σ̂`, `σ̂` an estimate
//!   of the accumulator's standard deviation, so activations use the range;
//! * average pools are sums; the `1/(H·W)` is the next requantize's scale.
//!
//! Layer pattern of a basic block with input layer `X` (index of the layer
//! whose output enters the block):
//!
//! ```text
//! conv2d 3x3 (stride s) · relu · requantize · conv2d 3x3 (index C)
//!   identity shortcut:   residual_add{from: X}
//!   projection shortcut: branch{from: X} · conv2d 1x1 stride s · residual_add{from: C}
//! · relu · requantize
//! ```
//!
//! The projection (a 1×1 stride-2 conv with folded BN, "option B") is used
//! whenever the shape changes; there is no option-A zero-padding shortcut.

use super::ir::{InputSpec, Layer, Model, Shape};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// PARAM-6 bound of every conv / linear output row in the zoo.
const ROW_BUDGET: i64 = (1 << 14) - 1;

/// Requantize scale numerator: an accumulator of one estimated standard
/// deviation maps to 6 (of 15).
const REQUANT_SIGMAS: u128 = 6;
const REQUANT_SHIFT: u32 = 16;

/// Assumed statistics of a layer's input, used to size weights, centre
/// biases and scale requantizations (not a guarantee, except `max`).
#[derive(Clone, Copy)]
struct Act {
    /// Largest |x| (exact: guaranteed by the preceding requantize or input range).
    max: i64,
    /// Assumed mean, for the centring bias.
    mean: i64,
    /// Assumed standard deviation, for the requantize scale.
    std: u128,
}

const IMAGE: Act = Act {
    max: 255,
    mean: 128,
    std: 74,
};
const HIDDEN: Act = Act {
    max: 15,
    mean: 4,
    std: 4,
};

struct Builder {
    rng: ChaCha20Rng,
    layers: Vec<Layer>,
    shape: Shape,
}

impl Builder {
    fn new(seed: u64, input: Shape) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            layers: Vec::new(),
            shape: input,
        }
    }

    fn last(&self) -> usize {
        self.layers.len() - 1
    }

    /// One output row: weights and centring bias, PARAM-6 bound ≤ ROW_BUDGET.
    fn row(&mut self, fan_in: usize, x: Act, weights: &mut Vec<i64>) -> i64 {
        let cap = (ROW_BUDGET / (x.max + x.mean)).max(1);
        // P(nonzero) = cap / (4·fan_in): expected ‖w‖₁ = cap/2 (mean |w| = 2).
        let denom = 4 * fan_in as u128;
        let mut l1 = 0i64;
        let mut sum = 0i64;
        for _ in 0..fan_in {
            let r = self.rng.next_u64();
            let nonzero = u128::from(r >> 32) * denom < (cap as u128) << 32;
            let magnitude = 1 + (r & 0xffff) as i64 % 3;
            let w = match (nonzero && l1 + magnitude <= cap, r & 0x1_0000 != 0) {
                (false, _) => 0,
                (true, false) => magnitude,
                (true, true) => -magnitude,
            };
            l1 += w.abs();
            sum += w;
            weights.push(w);
        }
        // |bias| ≤ ‖w‖₁·mean, so ‖w‖₁·max + |bias| ≤ cap·(max + mean) ≤ ROW_BUDGET.
        -sum * x.mean
    }

    /// Adds `rows` rows of `fan_in` weights; returns (weights, bias, estimated
    /// output variance).
    fn matrix(&mut self, rows: usize, fan_in: usize, x: Act) -> (Vec<i64>, Vec<i64>, u128) {
        let mut weights = Vec::with_capacity(rows * fan_in);
        let mut bias = Vec::with_capacity(rows);
        for _ in 0..rows {
            bias.push(self.row(fan_in, x, &mut weights));
        }
        let sum_sq: u128 = weights.iter().map(|&w| (w * w) as u128).sum();
        let var = sum_sq / rows as u128 * x.std * x.std;
        (weights, bias, var)
    }

    fn conv(&mut self, x: Act, out: usize, kernel: usize, stride: usize, padding: usize) -> u128 {
        let s = self.shape;
        let fan_in = s.channels * kernel * kernel;
        let (weights, bias, var) = self.matrix(out, fan_in, x);
        self.layers.push(Layer::Conv2d {
            out_channels: out,
            kernel_h: kernel,
            kernel_w: kernel,
            stride,
            padding,
            groups: 1,
            weights,
            bias,
        });
        self.shape = Shape::new(
            out,
            (s.height + 2 * padding - kernel) / stride + 1,
            (s.width + 2 * padding - kernel) / stride + 1,
        );
        var
    }

    fn linear(&mut self, x: Act, out: usize) {
        let (weights, bias, _) = self.matrix(out, self.shape.channels, x);
        self.layers.push(Layer::Linear {
            out_features: out,
            weights,
            bias,
        });
        self.shape = Shape::new(out, 1, 1);
    }

    /// relu, then requantize to [0, 15] with scale 6/σ̂.
    fn relu_requantize(&mut self, var: u128) {
        let sigma = var.isqrt().max(1);
        let multiplier = ((REQUANT_SIGMAS << REQUANT_SHIFT) + sigma / 2) / sigma;
        self.layers.push(Layer::Relu);
        self.layers.push(Layer::Requantize {
            multiplier: multiplier.max(1) as i64,
            shift: REQUANT_SHIFT,
            min: 0,
            max: HIDDEN.max,
        });
    }

    /// Sum pools are averages once divided by the window size `k`.
    fn requantize_average(&mut self, window: usize) {
        let w = window as i64;
        self.layers.push(Layer::Requantize {
            multiplier: (((1i64 << REQUANT_SHIFT) + w / 2) / w).max(1),
            shift: REQUANT_SHIFT,
            min: 0,
            max: HIDDEN.max,
        });
    }

    /// A basic block (see the module documentation) of `width` channels.
    fn basic_block(&mut self, width: usize, stride: usize) {
        let input = self.last();
        let in_shape = self.shape;
        let var1 = self.conv(HIDDEN, width, 3, stride, 1);
        self.relu_requantize(var1);
        let var2 = self.conv(HIDDEN, width, 3, 1, 1);
        let conv2 = self.last();
        let var_shortcut = if stride != 1 || in_shape.channels != width {
            let out_shape = self.shape;
            self.layers.push(Layer::Branch { from: input });
            self.shape = in_shape;
            let var = self.conv(HIDDEN, width, 1, stride, 0);
            debug_assert_eq!(self.shape, out_shape);
            self.layers.push(Layer::ResidualAdd { from: conv2 });
            var
        } else {
            self.layers.push(Layer::ResidualAdd { from: input });
            HIDDEN.std * HIDDEN.std
        };
        self.relu_requantize(var2 + var_shortcut);
    }

    fn finish(self, name: &str, input: Shape) -> Model {
        let spec = InputSpec {
            shape: input,
            min: 0,
            max: IMAGE.max,
        };
        // Shapes and accumulator bounds hold by construction (tests check).
        Model::new(name, spec, self.layers).expect("zoo models are valid by construction")
    }
}

/// A CIFAR-style ResNet: 3×3 stem (stride 1, no max-pool), then `stages`
/// of `blocks` basic blocks (`widths[i]` channels, stride 2 entering every
/// stage but the first), global average pool, linear to `classes`.
fn resnet(
    name: &str,
    seed: u64,
    input: Shape,
    widths: &[usize],
    blocks: usize,
    classes: usize,
) -> Model {
    let mut b = Builder::new(seed, input);
    let stem = b.conv(IMAGE, widths[0], 3, 1, 1);
    b.relu_requantize(stem);
    for (stage, &width) in widths.iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            b.basic_block(width, stride);
        }
    }
    let plane = b.shape.height * b.shape.width;
    b.layers.push(Layer::GlobalAvgPool);
    b.shape = Shape::new(b.shape.channels, 1, 1);
    b.requantize_average(plane);
    b.layers.push(Layer::Flatten);
    b.linear(HIDDEN, classes);
    b.finish(name, input)
}

/// MODEL-9: ResNet-20 for CIFAR-10: input `3×32×32` in `[0, 255]`; 3×3 stem
/// to 16 channels; 3 stages × 3 basic blocks of 16 / 32 / 64 channels
/// (32×32, 16×16, 8×8), 1×1 stride-2 projection shortcuts at the two
/// downsampling blocks; global average pool; linear 64 → 10.
/// 22 weighted layers (19 conv + 2 shortcut conv + 1 linear), 74 IR layers,
/// 270 896 weights + 794 biases. Random weights (see the module docs).
pub fn resnet20(seed: u64) -> Model {
    resnet(
        "resnet20",
        seed,
        Shape::new(3, 32, 32),
        &[16, 32, 64],
        3,
        10,
    )
}

/// MODEL-9: ResNet-18 for Tiny-ImageNet: input `3×64×64` in `[0, 255]`;
/// 3×3 stride-1 stem to 64 channels **without** the ImageNet 7×7/2 conv and
/// max-pool (the usual Tiny-ImageNet / CIFAR adaptation); 4 stages × 2 basic
/// blocks of 64 / 128 / 256 / 512 channels (64×64 down to 8×8), 1×1 stride-2
/// projection shortcuts; global average pool; linear 512 → 200.
/// 21 weighted layers (17 conv + 3 shortcut conv + 1 linear), 69 IR layers,
/// 11 261 632 weights + 5 000 biases. Random weights (see the module docs).
pub fn resnet18(seed: u64) -> Model {
    resnet(
        "resnet18",
        seed,
        Shape::new(3, 64, 64),
        &[64, 128, 256, 512],
        2,
        200,
    )
}

/// MODEL-9: a tiny CNN for fast end-to-end tests of the encrypted pipeline:
/// input `1×8×8` in `[0, 255]`; conv 3×3 1→4 (pad 1) · relu · requantize ·
/// maxpool 2 · conv 3×3 4→4 (pad 1) · residual_add · relu · requantize ·
/// avgpool 2 · requantize · flatten · linear 16 → 10. Every op but
/// global_avgpool and branch; 12 IR layers. Random weights.
pub fn tiny(seed: u64) -> Model {
    let input = Shape::new(1, 8, 8);
    let mut b = Builder::new(seed, input);
    let var = b.conv(IMAGE, 4, 3, 1, 1);
    b.relu_requantize(var);
    b.layers.push(Layer::MaxPool {
        kernel: 2,
        stride: 2,
    });
    b.shape = Shape::new(4, 4, 4);
    let pooled = b.last();
    let var = b.conv(HIDDEN, 4, 3, 1, 1);
    b.layers.push(Layer::ResidualAdd { from: pooled });
    b.relu_requantize(var + HIDDEN.std * HIDDEN.std);
    b.layers.push(Layer::AvgPool {
        kernel: 2,
        stride: 2,
    });
    b.shape = Shape::new(4, 2, 2);
    b.requantize_average(4);
    b.layers.push(Layer::Flatten);
    b.shape = Shape::new(16, 1, 1);
    b.linear(HIDDEN, 10);
    b.finish("tiny", input)
}
