//! Encrypted inference over a chain of linear stages, with the client's
//! non-linearities between them, run with both parties in one process.
//!
//! This is the computation of the hybrid protocol without its messages and
//! state machines: round r, the server unshuffles the client's upload
//! (σ_(r−1)^(−1), folded into the repack), evaluates stage r, shuffles the
//! outputs with σ_r into dense ciphertexts and sanitises them; the client
//! decrypts, applies its element-wise operation and re-encrypts. The last
//! stage is not shuffled. It is the oracle and benchmark harness the typed
//! protocol is built around; it is not itself a network protocol.

use crate::extract::ValueRef;
use crate::layout::{
    conv2d_reference, matvec_reference, Conv2dLayout, Conv2dShape, LayoutError, MatVecLayout,
    MatVecShape,
};
use crate::linear::{EncodedLayer, LinearError};
use crate::pack::{PackError, PackSource, Packer, Placement, SumPlacement};
use crate::params::{ParamError, ParameterSet};
use crate::rlwe::{Ciphertext, Context, GaloisKeys, PublicKey, SecretKey, SeededCiphertext};
use crate::rng::{Csprng, Seed128};
use crate::shuffle::{Granularity, Permutation, SessionSeed, ShuffleError, ShuffleUnit};
use crate::wire;
use std::time::Instant;
use thiserror::Error;

/// Why a model could not be compiled, or a round or inference could not be
/// run. Compilation errors are the model's (or the chosen set's) fault and
/// name the layer where they can (ENG-5); run-time errors are the caller's
/// (wrong context, input or keys), never the peer's.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A conv or mat-vec geometry, or a call, that the Cheetah layout
    /// refuses (see [`LayoutError`]).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Encoding or evaluating a linear layer failed (LIN-3's noise budget,
    /// before it is named by layer as [`EngineError::NoiseBudget`]).
    #[error(transparent)]
    Linear(#[from] LinearError),
    /// Packing the outputs or repacking an upload failed: the ciphertexts
    /// or keys given do not fit the stage.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Deriving a round's permutation failed (SHUF-2), e.g. a channel
    /// shuffle of a ragged length.
    #[error(transparent)]
    Shuffle(#[from] ShuffleError),
    /// A parameter-set check refused a quantity (see [`ParamError`]).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A stage's bias is neither empty nor one value per output: a bug in
    /// whatever built the stage.
    #[error("stage {stage}: bias has {got} entries, expected {expected}")]
    BiasLength {
        /// The stage (0-based round).
        stage: usize,
        /// The stage's output length.
        expected: usize,
        /// Bias values given.
        got: usize,
    },
    /// Consecutive stages do not chain: a stage's input length differs from
    /// the previous stage's output length (or, for stage 0, from the model
    /// input's length).
    #[error("stage {stage} takes {expected} inputs but the previous stage produces {got}")]
    ShapeMismatch {
        /// The stage whose input does not match (0-based round).
        stage: usize,
        /// Values the stage takes.
        expected: usize,
        /// Values the previous stage (or the model input) provides.
        got: usize,
    },
    /// An input (or a round's activations in the reference) of the wrong
    /// length (ENG-5): the caller's fault.
    #[error("input has {got} values, the first stage takes {expected}")]
    InputLength {
        /// Values expected: the model's input length, or the stage's.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The model uses something the engine does not compile (ENG-3: a
    /// max-pool, overlapping pools, two linear layers without a client step
    /// between them, another residual wiring), exceeds the protocol's limits
    /// on rounds or client steps, has a layer whose geometry does not fit
    /// the ring, or would overflow the set's plaintext range once the
    /// policy's DP noise is added. The message names the layer or the
    /// quantity; the model is refused rather than approximated.
    #[error("the model is not supported by the engine yet: {0}")]
    Unsupported(String),
    /// The model fails its accumulator check for the set (MODEL-5, PARAM-6).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A layer's weights exceed the set's noise budget (LIN-3, ENG-5).
    #[error(transparent)]
    NoiseBudget(Box<LayerNoise>),
    /// The compiled model belongs to another parameter set than the context (ENG-5).
    #[error("the compiled model was built for parameter set {compiled:?}, not for {given:?}: compile it for this context")]
    ParameterMismatch {
        /// Name of the set the model was compiled for.
        compiled: String,
        /// Name of the context's set.
        given: String,
    },
    /// An input value outside the model's declared range (MODEL-4, ENG-5);
    /// the value itself is the client's secret and is not shown.
    #[error("input value {index} lies outside the model's declared input range [{min}, {max}]")]
    InputOutOfRange {
        /// Position of the first offending value in the input.
        index: usize,
        /// Lower end of the declared input range.
        min: i64,
        /// Upper end of the declared input range.
        max: i64,
    },
}

/// A stage whose weights exceed the noise budget, named by its model layer.
#[derive(Debug, Error, Clone, PartialEq)]
#[error(
    "layer {layer} ({op}): output ciphertext {output} of its encrypted stage sums ‖ŵ‖₁ = {l1} (2^{l1_log2:.2}){detail}, \
     more than the {allowed_log2}-bit noise budget of set {set:?}; {hint}"
)]
pub struct LayerNoise {
    /// The model layer (0-based index).
    pub layer: usize,
    /// The layer's op.
    pub op: &'static str,
    /// The output ciphertext of the stage whose weight sum is too large.
    pub output: usize,
    /// ‖ŵ‖₁ summed over the weight polynomials that feed that ciphertext
    /// (LIN-3).
    pub l1: u128,
    /// log2 of [`l1`](Self::l1), for the message.
    pub l1_log2: f64,
    /// The set's budget: `l1` may be at most `2^allowed_log2`
    /// (`max_weight_l1_log2`).
    pub allowed_log2: u32,
    /// Name of the parameter set.
    pub set: String,
    /// What the figure includes beyond the layer's own weights.
    pub detail: String,
    /// Which shipped sets would carry it, or what to change.
    pub hint: String,
}

/// Shipped sets whose noise budget covers `l1`, or advice when none does.
fn noise_hint(l1: u128) -> String {
    let fitting: Vec<String> = ParameterSet::shipped_all()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| l1 <= 1u128 << p.max_weight_l1_log2())
        .map(|p| format!("{} (2^{})", p.name(), p.max_weight_l1_log2()))
        .collect();
    if fitting.is_empty() {
        "no shipped set covers it: use smaller weights or fewer output channels".into()
    } else {
        format!(
            "shipped sets whose budget covers it: {} (if their accumulator bits suffice)",
            fitting.join(", ")
        )
    }
}

/// The layout of one stage, with its shape and clear weights for the
/// plaintext reference.
#[derive(Debug)]
pub enum StageLayout {
    /// A convolution: its layout and its OIHW weights.
    Conv(Conv2dLayout, Vec<i64>),
    /// A matrix–vector product: its layout and its row-major weights.
    MatVec(MatVecLayout, Vec<i64>),
}

/// One linear stage: weights encoded for its layout, bias per output value.
#[derive(Debug)]
pub struct LinearStage {
    layout: StageLayout,
    encoded: EncodedLayer,
    /// Bias polynomial (coefficient domain, signed) per output ciphertext.
    bias: Vec<Vec<i64>>,
    /// Bias per output value, in output order.
    bias_values: Vec<i64>,
    input_len: usize,
    output_len: usize,
    /// Values the stage's outputs really depend on: `input_len`, or fewer
    /// when a sum pool was folded in (PROTO-6 counts these).
    independent_inputs: usize,
    /// Inputs one output depends on: C_in·k_h·k_w of the model's (unfolded)
    /// kernel for a conv, the independent inputs for a mat-vec.
    fan_in: usize,
    /// A residual connection's second operand, added to every output.
    shortcut: Option<Shortcut>,
    /// A stage the engine added with fixed 0/1 weights (a sum pool): it
    /// holds nothing of the model owner's, so PROTO-6 does not count it.
    public_weights: bool,
    /// DP-6: L2 sensitivity of the stage's released values to one weight
    /// or bias changed by 1 (τ = 1), for uploads in the declared ranges.
    sensitivity: f64,
}

/// The second operand of a residual connection (ENG-4): an activation the
/// client uploaded at an earlier round, as is or through a (1×1) conv.
#[derive(Debug)]
pub enum Shortcut {
    /// The upload of `round`, added as is.
    Identity {
        /// The earlier round whose upload is added.
        round: usize,
    },
    /// The upload of `round` through a branch conv (a projection shortcut).
    Conv {
        /// The earlier round whose upload the conv reads.
        round: usize,
        /// The branch conv, encoded like any stage.
        stage: Box<LinearStage>,
    },
}

/// One upload as the server keeps it: the client's ciphertexts and the
/// permutation its values are arranged by (σ_(r−1); none for round 0).
#[derive(Debug)]
pub struct ReceivedUpload {
    /// The upload's ciphertexts, expanded from their seeds, N values each.
    pub ciphertexts: Vec<Ciphertext>,
    /// σ_(r−1): true value k sits at slot `σ(k)`; `None` when the values
    /// are in true order (round 0).
    pub arranged_by: Option<Permutation>,
}

impl ReceivedUpload {
    /// Where true value k of this upload sits.
    fn value(&self, n: usize, k: usize) -> ValueRef {
        let slot = self.arranged_by.as_ref().map_or(k, |p| p.image(k));
        ValueRef::new(slot / n, slot % n)
    }
}

/// What the client does to each (shuffled) value between two stages; must
/// be element-wise so it commutes with the shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// clamp(round_half_away(y·multiplier / 2^shift), min, max).
    Requantize {
        /// Fixed-point scale numerator (> 0).
        multiplier: i64,
        /// Scale denominator exponent (≤ 62).
        shift: u32,
        /// Lower clamp bound, inclusive.
        min: i64,
        /// Upper clamp bound, inclusive.
        max: i64,
    },
    /// `max(y, 0)`.
    Relu,
}

impl ClientOp {
    /// The op on one value, exactly as the reference evaluator computes it
    /// (MODEL-3).
    pub fn apply(self, y: i64) -> i64 {
        match self {
            ClientOp::Relu => y.max(0),
            ClientOp::Requantize {
                multiplier,
                shift,
                min,
                max,
            } => crate::model::requantize(y, multiplier, shift, min, max),
        }
    }
}

impl LinearStage {
    /// A Conv2d stage; `weights` OIHW, `bias` one per output channel (or empty).
    pub(crate) fn conv(
        ctx: &Context,
        shape: Conv2dShape,
        weights: &[i64],
        bias: &[i64],
        stage: usize,
    ) -> Result<Self, EngineError> {
        Self::conv_stacking(ctx, shape, weights, bias, stage, usize::MAX)
    }

    /// A Conv2d stage with at most `max_stack` output channels per output
    /// ciphertext (ENG-7).
    fn conv_stacking(
        ctx: &Context,
        shape: Conv2dShape,
        weights: &[i64],
        bias: &[i64],
        stage: usize,
        max_stack: usize,
    ) -> Result<Self, EngineError> {
        let layout = Conv2dLayout::with_max_stack(shape, ctx.n(), max_stack)?;
        let encoded = EncodedLayer::new(ctx, &layout, weights)?;
        let positions = layout.output_positions();
        let per_channel = layout.output_height() * layout.output_width();
        check_bias(bias, shape.out_channels, stage)?;
        let bias_values: Vec<i64> = (0..positions.len())
            .map(|k| bias.get(k / per_channel).copied().unwrap_or(0))
            .collect();
        Ok(Self {
            input_len: shape.input_len()?,
            output_len: positions.len(),
            bias: bias_polys(ctx, &positions, layout.output_ciphertexts(), &bias_values),
            bias_values,
            encoded,
            independent_inputs: shape.input_len()?,
            fan_in: shape.in_channels * shape.kernel_height * shape.kernel_width,
            shortcut: None,
            public_weights: false,
            sensitivity: 0.0,
            layout: StageLayout::Conv(layout, weights.to_vec()),
        })
    }

    /// A matrix–vector stage with at most `max_rows` rows per output
    /// ciphertext (ENG-7).
    fn matvec_stacking(
        ctx: &Context,
        shape: MatVecShape,
        weights: &[i64],
        bias: &[i64],
        stage: usize,
        max_rows: usize,
    ) -> Result<Self, EngineError> {
        let layout = MatVecLayout::with_max_rows(shape, ctx.n(), max_rows)?;
        let encoded = EncodedLayer::new(ctx, &layout, weights)?;
        let positions = layout.output_positions();
        check_bias(bias, shape.rows, stage)?;
        let bias_values: Vec<i64> = (0..positions.len())
            .map(|k| bias.get(k).copied().unwrap_or(0))
            .collect();
        Ok(Self {
            input_len: shape.cols,
            output_len: positions.len(),
            bias: bias_polys(ctx, &positions, layout.output_ciphertexts(), &bias_values),
            bias_values,
            encoded,
            independent_inputs: shape.cols,
            fan_in: shape.cols,
            shortcut: None,
            public_weights: false,
            sensitivity: 0.0,
            layout: StageLayout::MatVec(layout, weights.to_vec()),
        })
    }

    /// Values the stage reads: the length of its round's upload (before
    /// any sum pool folded into the stage).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// The stage as a convolution (its layout's shape, a folded pool
    /// included), or `None` for a matrix–vector stage. Architecture, not
    /// weights: what a client can learn by probing (spec/threat-model.md).
    pub fn conv_shape(&self) -> Option<Conv2dShape> {
        match &self.layout {
            StageLayout::Conv(l, _) => Some(*l.shape()),
            StageLayout::MatVec(..) => None,
        }
    }

    /// The stage as a matrix–vector product, or `None` for a convolution.
    pub fn matvec_shape(&self) -> Option<MatVecShape> {
        match &self.layout {
            StageLayout::MatVec(l, _) => Some(*l.shape()),
            StageLayout::Conv(..) => None,
        }
    }

    /// The stage's weights as evaluated (OIHW or row-major; a folded pool
    /// repeats them) and its bias per output value: the audit's ground truth.
    pub(crate) fn weights_and_bias(&self) -> (&[i64], &[i64]) {
        let w = match &self.layout {
            StageLayout::Conv(_, w) | StageLayout::MatVec(_, w) => w,
        };
        (w, &self.bias_values)
    }

    /// A residual connection's second operand, if any.
    pub fn shortcut(&self) -> Option<&Shortcut> {
        self.shortcut.as_ref()
    }

    /// LIN-3's noise factor of one output ciphertext, worst over the stage:
    /// the largest Σ‖ŵ‖₁, plus the residual operand's (1 for an identity
    /// shortcut, its own weights' for a projection: both noises add up).
    pub fn noise_l1(&self) -> u128 {
        let extra = match &self.shortcut {
            None => 0,
            Some(Shortcut::Identity { .. }) => 1,
            Some(Shortcut::Conv { stage, .. }) => stage.encoded.max_weight_l1(),
        };
        self.encoded.max_weight_l1() + extra
    }

    /// Number of ciphertexts the stage's outputs occupy before packing.
    pub fn output_ciphertexts(&self) -> usize {
        self.bias.len()
    }

    /// The number of independent input values (after any folded pool): the
    /// dimension d of the linear map a chosen-input attack must solve.
    pub fn independent_inputs(&self) -> usize {
        self.independent_inputs
    }

    /// PROTO-6: chosen queries the best known attack needs to recover this
    /// stage's weights and biases exactly, under shuffle granularity
    /// `unit`; `None` for a stage with public weights. Element shuffling:
    /// fan-in + 1 (the d+1 attack, d = C_in·k_h·k_w for a conv, the
    /// independent inputs for a mat-vec), plus a projection shortcut's
    /// fan-in. Channel shuffling leaves a conv's spatial order in the clear,
    /// and one query suffices; a mat-vec's channels are single values, so
    /// it is element shuffling there.
    pub fn attack_queries(&self, unit: ShuffleUnit) -> Option<u64> {
        if self.public_weights {
            return None;
        }
        let shortcut = match &self.shortcut {
            Some(Shortcut::Conv { stage, .. }) => stage.fan_in,
            _ => 0,
        };
        Some(match (&self.layout, unit) {
            (StageLayout::Conv(..), ShuffleUnit::Channel) => 1,
            _ => (self.fan_in.min(self.independent_inputs) + shortcut) as u64 + 1,
        })
    }

    /// Whether the stage's weights are fixed by the engine (a sum pool),
    /// not the model owner's.
    pub fn has_public_weights(&self) -> bool {
        self.public_weights
    }

    /// Whether a residual operand is added to this stage's outputs.
    pub fn has_shortcut(&self) -> bool {
        self.shortcut.is_some()
    }

    /// Consecutive outputs forming one channel (H·W of a conv; 1 for a
    /// matrix–vector product, whose outputs are channels of their own).
    pub fn channel_size(&self) -> usize {
        match &self.layout {
            StageLayout::Conv(l, _) => l.output_height() * l.output_width(),
            StageLayout::MatVec(..) => 1,
        }
    }

    /// The granularity σ_r has for this stage under `unit`.
    pub fn granularity(&self, unit: ShuffleUnit) -> Granularity {
        match unit {
            ShuffleUnit::Element => Granularity::Element,
            ShuffleUnit::Channel => Granularity::Channel {
                channel_size: self.channel_size(),
            },
        }
    }
    /// Values the stage releases to the client (its outputs).
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// (flat input index, input ciphertext, coefficient) of every placement.
    fn input_placements(&self) -> Vec<(usize, usize, usize)> {
        match &self.layout {
            StageLayout::Conv(l, _) => {
                let s = l.shape();
                l.input_placements()
                    .iter()
                    .map(|p| {
                        (
                            (p.channel * s.in_height + p.row) * s.in_width + p.col,
                            p.ciphertext,
                            p.coefficient,
                        )
                    })
                    .collect()
            }
            StageLayout::MatVec(l, _) => l
                .input_placements()
                .iter()
                .map(|p| (p.col, p.ciphertext, p.coefficient))
                .collect(),
        }
    }

    fn output_positions(&self) -> Vec<(usize, usize)> {
        match &self.layout {
            StageLayout::Conv(l, _) => l.output_positions(),
            StageLayout::MatVec(l, _) => l.output_positions(),
        }
    }

    fn input_ciphertexts(&self) -> usize {
        self.encoded.input_ciphertexts()
    }

    /// The plaintext integer result of this stage (the reference), from
    /// the direct convolution / product, independent of the layout.
    pub fn reference(&self, input: &[i64]) -> Result<Vec<i64>, EngineError> {
        let mut out = match &self.layout {
            StageLayout::Conv(l, w) => conv2d_reference(l.shape(), input, w)?,
            StageLayout::MatVec(l, w) => matvec_reference(l.shape(), input, w)?,
        };
        for (v, b) in out.iter_mut().zip(&self.bias_values) {
            *v += b;
        }
        Ok(out)
    }
}

fn check_bias(bias: &[i64], expected: usize, stage: usize) -> Result<(), EngineError> {
    if !bias.is_empty() && bias.len() != expected {
        return Err(EngineError::BiasLength {
            stage,
            expected,
            got: bias.len(),
        });
    }
    Ok(())
}

fn bias_polys(
    ctx: &Context,
    positions: &[(usize, usize)],
    cts: usize,
    bias: &[i64],
) -> Vec<Vec<i64>> {
    let mut polys = vec![vec![0i64; ctx.n()]; cts];
    for (&(ct, c), &b) in positions.iter().zip(bias) {
        polys[ct][c] = b;
    }
    polys
}

/// Coefficient stride of a shuffle-pack of `k` values: 1 when they fill
/// whole ciphertexts, else N over the next power of two ≥ k.
fn output_stride(n: usize, k: usize) -> usize {
    if k >= n || k == 0 {
        1
    } else {
        n / k.next_power_of_two()
    }
}

/// How a round's outputs are released to the client (DP-8): the shuffle's
/// granularity, and the discrete Gaussian noise, if any, added to every
/// released value before the shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release<'a> {
    /// What σ_r permutes: single values or whole channels.
    pub unit: ShuffleUnit,
    /// The discrete Gaussian added to every released value; `None` for
    /// exact accumulators.
    pub noise: Option<&'a crate::dp::DiscreteGaussian>,
}

impl From<ShuffleUnit> for Release<'_> {
    /// No noise: the client gets the exact accumulators.
    fn from(unit: ShuffleUnit) -> Self {
        Release { unit, noise: None }
    }
}

/// Where the server's time in one round went, as [`server_round_timed`]
/// measures it; kept out of every message.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundPhases {
    /// Repacking the upload into the stage's input layout, σ_(r−1)^(−1)
    /// folded in (and a projection shortcut's repack).
    pub repack_ms: f64,
    /// The stage's linear evaluation, its bias and any DP noise (and a
    /// projection shortcut's evaluation).
    pub linear_ms: f64,
    /// Shuffling the outputs with σ_r and packing them, residual operand
    /// included, into the response.
    pub pack_ms: f64,
    /// Re-randomising and flooding every response ciphertext (PRIV-1).
    pub sanitise_ms: f64,
}

impl RoundPhases {
    /// The four phases, summed.
    pub fn total_ms(&self) -> f64 {
        self.repack_ms + self.linear_ms + self.pack_ms + self.sanitise_ms
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &RoundPhases) {
        self.repack_ms += other.repack_ms;
        self.linear_ms += other.linear_ms;
        self.pack_ms += other.pack_ms;
        self.sanitise_ms += other.sanitise_ms;
    }
}

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Per-round measurements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundStats {
    /// Client time in ms: encrypting and encoding the upload, then decoding,
    /// decrypting and applying the client steps to the response.
    pub client_ms: f64,
    /// Server time in ms: decoding the upload, the round
    /// ([`server_round`]) and encoding the response.
    pub server_ms: f64,
    /// Bytes of the encoded upload (seeded ciphertexts).
    pub up_bytes: usize,
    /// Bytes of the encoded response.
    pub down_bytes: usize,
}

/// The result of one encrypted inference.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference {
    /// The last stage's outputs after its client steps, in true order; equal
    /// to the plaintext reference bit for bit (ENG-1).
    pub logits: Vec<i64>,
    /// Measurements of each round, in order.
    pub rounds: Vec<RoundStats>,
    /// The values the client decrypted each round, as it saw them.
    pub client_views: Vec<Vec<i64>>,
}

/// A model compiled for encrypted evaluation under one parameter set (ENG-5):
/// stages, and the client's element-wise steps after each stage (after the
/// last one they act on the logits, in true order).
///
/// The only way to obtain one is [`compile`] (or [`crate::select`]), which
/// checks everything the result depends on — shapes, the accumulator bound
/// of every layer (MODEL-5), the noise budget of every stage (LIN-3) — so
/// holding one proves the checks passed for the set it names. [`run`] and
/// the protocol's `Endpoint` accept nothing else and refuse a context of
/// another set.
#[derive(Debug)]
pub struct CompiledModel {
    stages: Vec<LinearStage>,
    client_ops: Vec<Vec<ClientOp>>,
    input: crate::model::InputSpec,
    set: String,
    fingerprint: u64,
    /// The model layer each stage came from (for reports and errors).
    stage_layers: Vec<usize>,
    /// The largest worst-case |accumulator| of any layer (MODEL-5).
    worst_accumulator: u128,
}

impl CompiledModel {
    fn assemble(
        ctx: &Context,
        input: crate::model::InputSpec,
        stages: Vec<LinearStage>,
        client_ops: Vec<Vec<ClientOp>>,
        stage_layers: Vec<usize>,
    ) -> Result<Self, EngineError> {
        if stages.is_empty() || client_ops.len() != stages.len() {
            return Err(EngineError::Unsupported(format!(
                "a model needs at least one linear layer ({} stages, {} client step lists)",
                stages.len(),
                client_ops.len()
            )));
        }
        // The protocol's limits (PROTO-4) hold for every compiled model, so
        // a session can always describe it.
        use crate::protocol::{MAX_OPS, MAX_ROUNDS};
        if stages.len() > MAX_ROUNDS {
            return Err(EngineError::Unsupported(format!(
                "the model needs {} encrypted rounds, more than the protocol's {MAX_ROUNDS}",
                stages.len()
            )));
        }
        if let Some(r) = client_ops.iter().position(|o| o.len() > MAX_OPS) {
            return Err(EngineError::Unsupported(format!(
                "layer {}: {} client steps after one linear layer, more than the protocol's {MAX_OPS}",
                stage_layers.get(r).copied().unwrap_or(0),
                client_ops[r].len()
            )));
        }
        let input_len = input.shape.len().unwrap_or(0);
        if stages[0].input_len() != input_len {
            return Err(EngineError::ShapeMismatch {
                stage: 0,
                expected: stages[0].input_len(),
                got: input_len,
            });
        }
        for (i, pair) in stages.windows(2).enumerate() {
            if pair[0].output_len() != pair[1].input_len() {
                return Err(EngineError::ShapeMismatch {
                    stage: i + 1,
                    expected: pair[1].input_len(),
                    got: pair[0].output_len(),
                });
            }
        }
        Ok(Self {
            stages,
            client_ops,
            input,
            set: ctx.params().name().to_owned(),
            fingerprint: ctx.params().fingerprint(),
            stage_layers,
            worst_accumulator: 0,
        })
    }

    /// ENG-3, ENG-5: the compiled stages' plaintext semantics must equal the
    /// model's reference evaluator. Checked on the all-minimum, all-maximum
    /// and a fixed pseudo-random input, so that a compiler bug is a
    /// refusal, never an `Ok` with wrong logits. Not a proof: the proofs
    /// and tests of the compilation rules are.
    fn self_check(&self, model: &crate::model::Model) -> Result<(), EngineError> {
        let spec = model.input();
        let len = self.input_len();
        let span = spec.max.abs_diff(spec.min).saturating_add(1);
        let mut rng = Csprng::from_seed([0x5a; 16]);
        let random: Vec<i64> = (0..len)
            .map(|_| spec.min.wrapping_add(rng.uniform_below(span) as i64))
            .collect();
        for input in [vec![spec.min; len], vec![spec.max; len], random] {
            // An input on which the reference itself overflows i64 proves nothing here.
            let Ok(want) = model.evaluate(&input) else {
                continue;
            };
            if self.reference(&input)? != want {
                return Err(EngineError::Unsupported(
                    "internal: the compiled stages disagree with the model's reference evaluator; \
                     this is a bug in safhire's compiler, please report it with the model"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The encrypted stages, one per round.
    pub fn stages(&self) -> &[LinearStage] {
        &self.stages
    }

    /// The client's steps after each stage.
    pub fn client_ops(&self) -> &[Vec<ClientOp>] {
        &self.client_ops
    }

    /// Number of rounds (stages).
    pub fn rounds(&self) -> usize {
        self.stages.len()
    }

    /// The model input: shape and the range every value must lie in.
    pub fn input(&self) -> &crate::model::InputSpec {
        &self.input
    }

    /// Number of input values.
    pub fn input_len(&self) -> usize {
        self.stages[0].input_len()
    }

    /// The model layer (index) each stage evaluates.
    pub fn stage_layers(&self) -> &[usize] {
        &self.stage_layers
    }

    /// The name of the parameter set the model was compiled for.
    pub fn parameter_set(&self) -> &str {
        &self.set
    }

    /// DP-8: refuses noise that could push a released value past the set's
    /// accumulator range: the worst-case accumulator plus k·σ, with
    /// P[|noise| ≥ k·σ] ≤ 2^-40 for the discrete Gaussian (its tail is
    /// sub-Gaussian, CKS20), must stay below 2^(b−1).
    pub fn check_noise(
        &self,
        ctx: &Context,
        noise: Option<&crate::dp::DiscreteGaussian>,
    ) -> Result<(), EngineError> {
        let Some(noise) = noise else {
            return Ok(());
        };
        let k = (2.0 * 41.0 * std::f64::consts::LN_2).sqrt();
        let tail = (k * noise.variance().sqrt()).ceil();
        let limit = 2f64.powi(ctx.params().plaintext_bits() as i32 - 1);
        if self.worst_accumulator as f64 + tail >= limit {
            return Err(EngineError::Unsupported(format!(
                "DP noise with σ = {:.0} (2^-40 tail {tail}) on top of the worst-case accumulator {} exceeds the {}-bit range of set {:?}: use a wider set or less noise",
                noise.variance().sqrt(),
                self.worst_accumulator,
                ctx.params().plaintext_bits(),
                self.set
            )));
        }
        Ok(())
    }

    /// DP-8: the (ε, δ) of `budget` sessions, each releasing every stage
    /// once with noise σ, under DP-5's relation (one weight or bias by τ),
    /// composed over stages by summing ρ (DP-3), for uploads in the declared
    /// ranges. `None` when no stage holds weights of the model owner's.
    pub fn dp_guarantee(
        &self,
        sigma: f64,
        budget: u64,
        delta: f64,
        tau: f64,
    ) -> Option<crate::dp::Guarantee> {
        let releases: Vec<crate::dp::StageRelease> = self
            .stages
            .iter()
            .filter(|s| !s.public_weights)
            .map(|s| crate::dp::StageRelease {
                sensitivity_l2: tau * s.sensitivity,
                sigma,
            })
            .collect();
        (!releases.is_empty()).then(|| {
            crate::dp::budget_guarantee(&releases, budget, delta, crate::dp::StageComposition::Sum)
        })
    }

    /// PRIV-3: the circuit-privacy guarantee of the noise channel over
    /// `budget` sessions, against clients with honest keys and uploads: each
    /// stage's response ciphertexts, at ρ per ciphertext from that stage's
    /// own noise (its LIN-3 factor, not the set's worst case), summed over a
    /// session and over the budget (zCDP composes additively), then (ε, δ)
    /// at δ = 2^-41 plus N·2^-64 per returned ciphertext for the noise tail
    /// (proofs/noise-budget.md, "Circuit privacy"). `params` must be the
    /// set the model was compiled for.
    pub fn circuit_privacy(
        &self,
        params: &crate::params::ParameterSet,
        budget: u64,
    ) -> crate::dp::Guarantee {
        let n = params.ring_degree();
        let (mut rho, mut ciphertexts) = (0.0, 0u64);
        for s in &self.stages {
            let cts = response_ciphertexts(n, s.output_len());
            let bf = params.budget().before_flooding_at(s.noise_l1() as f64);
            rho += cts as f64 * params.flooding_rho_at(bf);
            ciphertexts += cts as u64;
        }
        let acc = crate::dp::Accountant::from_rho(rho).compose(budget);
        let conversion = crate::params::CIRCUIT_PRIVACY_DELTA;
        let epsilon = acc.epsilon(conversion);
        let tail = (ciphertexts.saturating_mul(budget)) as f64
            * n as f64
            * (2f64).powi(-(crate::params::PRIVACY_TAIL_BITS as i32));
        crate::dp::Guarantee {
            rho: acc.rho(),
            epsilon,
            delta: conversion + tail,
            verdict: crate::dp::meaningful(epsilon),
        }
    }

    /// ENG-5: refuses a context of another parameter set.
    pub fn check_context(&self, ctx: &Context) -> Result<(), EngineError> {
        if ctx.params().fingerprint() == self.fingerprint {
            Ok(())
        } else {
            Err(EngineError::ParameterMismatch {
                compiled: self.set.clone(),
                given: ctx.params().name().to_owned(),
            })
        }
    }

    /// ENG-5: refuses an input of the wrong length or with a value outside
    /// the declared range (the accumulator bounds assume it).
    pub fn check_input(&self, input: &[i64]) -> Result<(), EngineError> {
        if input.len() != self.input_len() {
            return Err(EngineError::InputLength {
                expected: self.input_len(),
                got: input.len(),
            });
        }
        let (min, max) = (self.input.min, self.input.max);
        match input.iter().position(|v| !(min..=max).contains(v)) {
            Some(index) => Err(EngineError::InputOutOfRange { index, min, max }),
            None => Ok(()),
        }
    }

    /// Plaintext integer inference with exactly the encrypted semantics.
    pub fn reference(&self, input: &[i64]) -> Result<Vec<i64>, EngineError> {
        let mut held: Vec<Vec<i64>> = vec![input.to_vec()];
        for (i, stage) in self.stages.iter().enumerate() {
            let x = &held[i];
            if x.len() != stage.input_len() {
                return Err(EngineError::InputLength {
                    expected: stage.input_len(),
                    got: x.len(),
                });
            }
            let mut y = self.stage_reference(i, &held)?;
            apply_client_ops(&self.client_ops[i], &mut y);
            held.push(y);
        }
        Ok(held.pop().unwrap_or_default())
    }

    /// Stage `r`'s released values in true order, its residual operand
    /// included, when `uploads[j]` is round j's upload in true order.
    pub fn stage_reference(&self, r: usize, uploads: &[Vec<i64>]) -> Result<Vec<i64>, EngineError> {
        let stage = &self.stages[r];
        let mut out = stage.reference(&uploads[r])?;
        match &stage.shortcut {
            Some(Shortcut::Identity { round }) => {
                for (v, s) in out.iter_mut().zip(&uploads[*round]) {
                    *v += s;
                }
            }
            Some(Shortcut::Conv { round, stage: sc }) => {
                for (v, s) in out.iter_mut().zip(sc.reference(&uploads[*round])?) {
                    *v += s;
                }
            }
            None => {}
        }
        Ok(out)
    }
}

/// The server's session material.
#[derive(Clone, Copy, Debug)]
pub struct ServerKeys<'a> {
    /// The client's packing Galois keys, for repacking and packing.
    pub galois: &'a GaloisKeys,
    /// The client's public key, for re-randomising responses (PRIV-1).
    pub public: &'a PublicKey,
}

/// The client's upload for one round: its values in chunks of N, seeded.
pub fn client_encrypt(
    ctx: &Context,
    sk: &SecretKey,
    values: &[i64],
    rng: &mut Csprng,
) -> Vec<SeededCiphertext> {
    values
        .chunks(ctx.n())
        .map(|c| ctx.encrypt_seeded(sk, c, rng))
        .collect()
}

/// Number of ciphertexts that carry `count` values in a response.
pub fn response_ciphertexts(n: usize, count: usize) -> usize {
    count.div_ceil(n).max(1)
}

/// The client's reading of a response: the `count` values, in slot order.
pub fn client_values(
    ctx: &Context,
    sk: &SecretKey,
    responses: &[Ciphertext],
    count: usize,
) -> Vec<i64> {
    let stride = output_stride(ctx.n(), count);
    let mut values = Vec::with_capacity(count);
    for ct in responses {
        values.extend(ctx.decrypt(sk, ct).into_iter().step_by(stride));
    }
    values.truncate(count);
    values
}

/// Applies a client step list to every value (it commutes with σ_r).
pub fn apply_client_ops(ops: &[ClientOp], values: &mut [i64]) {
    for v in values.iter_mut() {
        *v = ops.iter().fold(*v, |acc, op| op.apply(acc));
    }
}

/// Repacks an upload into `stage`'s input layout (the unshuffle), then
/// evaluates the stage and adds its bias.
fn evaluate_stage(
    ctx: &Context,
    packer: &Packer<'_>,
    stage: &LinearStage,
    upload: &ReceivedUpload,
    phases: &mut RoundPhases,
) -> Result<Vec<Ciphertext>, EngineError> {
    let t = Instant::now();
    let n = ctx.n();
    let sources: Vec<PackSource> = upload.ciphertexts.iter().map(PackSource::plain).collect();
    let placements: Vec<Placement> = stage
        .input_placements()
        .into_iter()
        .map(|(k, ct, coeff)| Placement {
            value: upload.value(n, k),
            output: ct,
            position: coeff,
        })
        .collect();
    let mut repacked = packer.pack(&sources, &placements)?;
    repacked.resize_with(stage.input_ciphertexts(), || ctx.zero_ciphertext());
    phases.repack_ms += elapsed_ms(t);
    let t = Instant::now();
    let mut outputs = stage.encoded.evaluate(ctx, &repacked);
    for (ct, bias) in outputs.iter_mut().zip(&stage.bias) {
        ctx.add_plain(ct, bias);
    }
    phases.linear_ms += elapsed_ms(t);
    Ok(outputs)
}

/// The server's half of round `r`: unshuffle (σ_(r−1)^(−1), folded into the
/// repack), evaluate stage r, add its bias and any residual operand, shuffle
/// with σ_r (none after the last stage), pack, sanitise. `history[j]` is
/// upload j (`history.len() == r + 1`). Returns the response and σ_r.
///
/// The work runs on the caller's rayon pool, by default the global one
/// shared by every session of the process (ENG-8, `src/par.rs`); the
/// response depends only on the arguments and `rng`'s state, never on the
/// number of threads.
#[allow(clippy::too_many_arguments)]
pub fn server_round(
    ctx: &Context,
    keys: ServerKeys<'_>,
    model: &CompiledModel,
    r: usize,
    history: &[ReceivedUpload],
    release: Release<'_>,
    seed: &SessionSeed,
    rng: &mut Csprng,
) -> Result<(Vec<Ciphertext>, Option<Permutation>), EngineError> {
    server_round_timed(ctx, keys, model, r, history, release, seed, rng)
        .map(|(packed, shuffle, _)| (packed, shuffle))
}

/// [`server_round`], also returning where its time went (repack, linear,
/// pack, sanitise). The same computation: the timings are measured around
/// it and never enter the response.
#[allow(clippy::too_many_arguments)]
pub fn server_round_timed(
    ctx: &Context,
    keys: ServerKeys<'_>,
    model: &CompiledModel,
    r: usize,
    history: &[ReceivedUpload],
    release: Release<'_>,
    seed: &SessionSeed,
    rng: &mut Csprng,
) -> Result<(Vec<Ciphertext>, Option<Permutation>, RoundPhases), EngineError> {
    let mut phases = RoundPhases::default();
    model.check_context(ctx)?;
    let n = ctx.n();
    let stage = model.stages.get(r).ok_or_else(|| {
        EngineError::Unsupported(format!(
            "round {r}: the model has {} rounds",
            model.rounds()
        ))
    })?;
    if history.len() != r + 1 {
        return Err(EngineError::Unsupported(format!(
            "round {r} needs the {} uploads so far, got {}",
            r + 1,
            history.len()
        )));
    }
    let packer = Packer::new(ctx, keys.galois);
    let mut outputs = evaluate_stage(ctx, &packer, stage, &history[r], &mut phases)?;
    let positions = stage.output_positions();
    let t = Instant::now();
    if let Some(noise) = release.noise {
        // DP-8: one independent sample per released value, before the
        // shuffle. A residual operand joins the same value in the pack, so
        // the noise covers the sum the client sees.
        let mut polys = vec![vec![0i64; n]; outputs.len()];
        for &(ct, c) in &positions {
            polys[ct][c] = noise.sample(rng);
        }
        for (ct, poly) in outputs.iter_mut().zip(&polys) {
            ctx.add_plain(ct, poly);
        }
    }
    phases.linear_ms += elapsed_ms(t);
    // The residual operand joins inside the output pack: its values are
    // extra terms of the same leaves (PACK-5).
    // `extra_refs[k]` is output k's residual operand (empty: no shortcut).
    let offset = outputs.len();
    let (extra, extra_refs): (Vec<Ciphertext>, Vec<ValueRef>) = match &stage.shortcut {
        None => (Vec::new(), Vec::new()),
        Some(Shortcut::Identity { round }) => {
            let up = &history[*round];
            let refs = (0..positions.len())
                .map(|k| {
                    let v = up.value(n, k);
                    ValueRef::new(offset + v.source as usize, v.coeff as usize)
                })
                .collect();
            (up.ciphertexts.clone(), refs)
        }
        Some(Shortcut::Conv { round, stage: sc }) => {
            let out = evaluate_stage(ctx, &packer, sc, &history[*round], &mut phases)?;
            let refs = sc
                .output_positions()
                .into_iter()
                .map(|(ct, c)| ValueRef::new(offset + ct, c))
                .collect();
            (out, refs)
        }
    };
    let t = Instant::now();
    let shuffle = if r + 1 == model.stages.len() {
        None
    } else {
        Some(seed.permutation(r as u64, positions.len(), stage.granularity(release.unit))?)
    };
    // Slot s receives true output σ^(−1)(s).
    let inverse = shuffle.as_ref().map(Permutation::inverse);
    let stride = output_stride(n, positions.len());
    let placements: Vec<SumPlacement> = (0..positions.len())
        .map(|slot| {
            let k = inverse.as_ref().map_or(slot, |p| p.image(slot));
            let (ct, c) = positions[k];
            let mut values = vec![ValueRef::new(ct, c)];
            if let Some(&residual) = extra_refs.get(k) {
                values.push(residual);
            }
            SumPlacement {
                values,
                output: slot / n,
                // Fewer values than a ciphertext holds go to every
                // stride-th coefficient: empty upper tree nodes cost nothing.
                position: (slot % n) * stride,
            }
        })
        .collect();
    let out_sources: Vec<PackSource> = outputs
        .iter()
        .chain(&extra)
        .map(PackSource::plain)
        .collect();
    let mut packed = packer.pack_sums(&out_sources, &placements)?;
    packed.resize_with(response_ciphertexts(n, positions.len()), || {
        ctx.zero_ciphertext()
    });
    phases.pack_ms += elapsed_ms(t);
    let t = Instant::now();
    // Sanitise each response ciphertext in parallel, each with a generator
    // of its own seeded from `rng` in order (ENG-8, src/par.rs): the result
    // does not depend on the number of threads.
    let seeds: Vec<Seed128> = packed.iter().map(|_| rng.seed()).collect();
    crate::par::update(&mut packed, |i, ct| {
        let mut rng = Csprng::from_seed(seeds[i]);
        ctx.rerandomize(ct, keys.public, &mut rng);
        ctx.flood(ct, &mut rng);
    });
    phases.sanitise_ms += elapsed_ms(t);
    Ok((packed, shuffle, phases))
}

/// Runs one encrypted inference (ENG-1); both parties' work, timed
/// separately, every message through the wire encoding. The client's
/// decrypted values are recorded as it saw them, shuffled by σ_r (ENG-2).
pub fn run(
    ctx: &Context,
    sk: &SecretKey,
    keys: ServerKeys<'_>,
    model: &CompiledModel,
    input: &[i64],
    unit: ShuffleUnit,
    seed: &SessionSeed,
) -> Result<Inference, EngineError> {
    run_release(ctx, sk, keys, model, input, unit.into(), seed)
}

/// [`run`] with the outputs released as `release` says (DP-8: with noise,
/// the logits are no longer the reference's).
pub fn run_release(
    ctx: &Context,
    sk: &SecretKey,
    keys: ServerKeys<'_>,
    model: &CompiledModel,
    input: &[i64],
    release: Release<'_>,
    seed: &SessionSeed,
) -> Result<Inference, EngineError> {
    model.check_context(ctx)?;
    model.check_input(input)?;
    model.check_noise(ctx, release.noise)?;
    let internal =
        |e: wire::WireError| EngineError::Unsupported(format!("internal encoding error: {e}"));
    let mut client_rng = Csprng::from_os();
    let mut server_rng = Csprng::from_os();
    let mut rounds = Vec::new();
    let mut views = Vec::new();
    // What the client holds, in the order it holds it.
    let mut activations = input.to_vec();
    let mut previous: Option<Permutation> = None;
    let mut history: Vec<ReceivedUpload> = Vec::new();
    for r in 0..model.stages.len() {
        let mut stats = RoundStats::default();
        let t = Instant::now();
        let uploads: Vec<Vec<u8>> = client_encrypt(ctx, sk, &activations, &mut client_rng)
            .iter()
            .map(|c| wire::encode_seeded_ciphertext(ctx, c))
            .collect();
        stats.client_ms += t.elapsed().as_secs_f64() * 1e3;
        stats.up_bytes = uploads.iter().map(Vec::len).sum();

        let t = Instant::now();
        let received: Vec<Ciphertext> = crate::par::map(&uploads, |b| {
            wire::decode_seeded_ciphertext(ctx, b).map(|s| s.expand(ctx.q()))
        })
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(internal)?;
        history.push(ReceivedUpload {
            ciphertexts: received,
            arranged_by: previous.take(),
        });
        let (packed, shuffle) = server_round(
            ctx,
            keys,
            model,
            r,
            &history,
            release,
            seed,
            &mut server_rng,
        )?;
        let downloads: Vec<Vec<u8>> = crate::par::map(&packed, |c| wire::encode_ciphertext(ctx, c));
        stats.server_ms += t.elapsed().as_secs_f64() * 1e3;
        stats.down_bytes = downloads.iter().map(Vec::len).sum();

        let t = Instant::now();
        let responses: Vec<Ciphertext> = downloads
            .iter()
            .map(|b| wire::decode_ciphertext(ctx, b))
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let mut values = client_values(ctx, sk, &responses, model.stages[r].output_len());
        views.push(values.clone());
        apply_client_ops(&model.client_ops[r], &mut values);
        stats.client_ms += t.elapsed().as_secs_f64() * 1e3;
        rounds.push(stats);
        activations = values;
        previous = shuffle;
    }
    Ok(Inference {
        logits: activations,
        rounds,
        client_views: views,
    })
}

/// Compiles a validated model into encrypted stages (ENG-3, ENG-5).
///
/// First the model's accumulator bounds are checked against the context's
/// set (MODEL-5): a model whose worst-case accumulator does not fit `b` is
/// refused here, whatever path it takes afterwards. Every `conv2d`/`linear`
/// starts a stage; sum pools right before it (and a `flatten`) are folded
/// into its weights exactly — a k×k sum pool of stride k followed by a conv
/// with kernel K, stride s, padding p is the conv with kernel kK, stride ks,
/// padding kp and each weight repeated over a k×k block — so the server
/// never needs a separate repack for them. Folding multiplies the stage's
/// ‖ŵ‖₁ by k²; when that breaks the noise budget (or the layout), the pool
/// becomes a round of its own with fixed 0/1 weights instead, and the layer
/// runs unfolded on the pooled values (ENG-6): exact, one round more.
/// `requantize`/`relu` become client steps; a global pool right before a
/// client step is a 0/1 mat-vec stage; residual adds become shortcuts
/// (ENG-4). Max-pooling is refused with [`EngineError::Unsupported`] for now.
/// Every refusal names the layer, its op, the quantity and the limit.
pub fn compile(ctx: &Context, model: &crate::model::Model) -> Result<CompiledModel, EngineError> {
    use crate::model::Layer;
    model.check_against(ctx.params())?;
    let mut b = Stages::default();
    // Pools waiting for the next conv/linear: total sum-pool factor per axis,
    // and the index of the last of them.
    let mut pool = 1usize;
    let mut pool_layer = 0usize;
    let mut flattened = false;
    // A side branch being built.
    let mut branch_round: Option<usize> = None;
    let mut branch_conv: Option<LinearStage> = None;
    // Main layer of a residual stage → its projection shortcut's conv layer.
    let mut branch_layers: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut branch_layer: Option<usize> = None;
    let layers = model.layers();
    for (i, layer) in layers.iter().enumerate() {
        let op = layer.op_name();
        let input = model
            .input_shape(i)
            .ok_or_else(|| EngineError::Unsupported(format!("layer {i} ({op}): no input shape")))?;
        let next_is_client = matches!(
            layers.get(i + 1),
            Some(Layer::Requantize { .. } | Layer::Relu)
        );
        match layer {
            Layer::Branch { from } => {
                let round = round_of(&b.held, *from)
                    .filter(|_| b.main_layer.is_some() && branch_round.is_none())
                    .ok_or_else(|| EngineError::Unsupported(format!("layer {i} ({op}): a branch must start from an earlier client-held activation inside a stage")))?;
                branch_round = Some(round);
            }
            Layer::Conv2d { weights, bias, .. } if branch_round.is_some() => {
                // The branch's conv (e.g. a 1×1 projection shortcut).
                let from = b.held[branch_round.unwrap_or(0)];
                let src = from.map_or(model.input().shape, |l| model.shapes()[l]);
                let shape = crate::model::ir::conv_shape(&src, layer).ok_or_else(|| {
                    EngineError::Unsupported(format!("layer {i} ({op}): not a conv"))
                })?;
                if branch_conv.is_some() {
                    return Err(EngineError::Unsupported(format!(
                        "layer {i} ({op}): a branch of more than one conv"
                    )));
                }
                branch_conv = Some(
                    LinearStage::conv(ctx, shape, weights, bias, b.stages.len())
                        .map_err(at_layer(ctx, i, op, ""))?,
                );
                branch_layer = Some(i);
            }
            Layer::ResidualAdd { from } => {
                let stage = b
                    .stages
                    .last_mut()
                    .filter(|s| s.shortcut.is_none() && b.ops.last().is_some_and(Vec::is_empty))
                    .ok_or_else(|| {
                        EngineError::Unsupported(format!(
                            "layer {i} ({op}): a residual add must follow a linear layer directly"
                        ))
                    })?;
                let shortcut = match (branch_round.take(), branch_conv.take()) {
                    (Some(round), Some(conv)) if Some(*from) == b.main_layer => {
                        if let (Some(main), Some(branch)) = (b.main_layer, branch_layer.take()) {
                            branch_layers.insert(main, branch);
                        }
                        Shortcut::Conv {
                            round,
                            stage: Box::new(conv),
                        }
                    }
                    (None, None) => Shortcut::Identity {
                        round: round_of(&b.held, *from).ok_or_else(|| {
                            EngineError::Unsupported(format!("layer {i} ({op}): residual from layer {from}, which the client never uploaded"))
                        })?,
                    },
                    _ => return Err(EngineError::Unsupported(format!("layer {i} ({op}): unsupported residual wiring"))),
                };
                stage.shortcut = Some(shortcut);
                let l1 = stage.noise_l1();
                let allowed_log2 = ctx.params().max_weight_l1_log2();
                if l1 > 1u128 << allowed_log2 {
                    let err = EngineError::Linear(LinearError::NoiseBudget {
                        output: 0,
                        l1,
                        allowed_log2,
                    });
                    return Err(at_layer(
                        ctx,
                        i,
                        op,
                        " (the linear layer's weights plus the residual operand)",
                    )(err));
                }
            }
            Layer::AvgPool { kernel, stride } => {
                if kernel != stride || flattened {
                    return Err(EngineError::Unsupported(format!(
                        "layer {i} ({op}): only non-overlapping sum pools (kernel = stride, before any flatten) are supported"
                    )));
                }
                if input.height % kernel != 0 || input.width % kernel != 0 {
                    return Err(EngineError::Unsupported(format!(
                        "layer {i} ({op}): pool {kernel} does not divide the {}×{} input",
                        input.height, input.width
                    )));
                }
                pool *= kernel;
                pool_layer = i;
                if next_is_client {
                    b.push_pool(ctx, model, i, pool)?;
                    pool = 1;
                }
            }
            Layer::GlobalAvgPool => {
                if input.height != input.width || flattened {
                    return Err(EngineError::Unsupported(format!(
                        "layer {i} ({op}): global pool over a non-square input"
                    )));
                }
                pool *= input.height;
                pool_layer = i;
                if next_is_client {
                    b.push_pool(ctx, model, i, pool)?;
                    pool = 1;
                }
            }
            Layer::Flatten => flattened = true,
            Layer::Conv2d { .. } | Layer::Linear { .. } => {
                if flattened && matches!(layer, Layer::Conv2d { .. }) {
                    return Err(EngineError::Unsupported(format!(
                        "layer {i} ({op}): conv2d after flatten"
                    )));
                }
                start_stage(&b.stages, &b.ops, i, layers[i].op_name())?;
                let (c, h, w) = held_shape(model, i)?;
                let folded = linear_stage(ctx, layer, (c, h, w), pool, b.stages.len());
                match folded {
                    Ok(stage) => {
                        b.stages.push(stage);
                        b.stage_layers.push(i);
                        b.held.push(held_layer(model, i));
                    }
                    Err(folded_err) if pool > 1 => {
                        // ENG-6: the pool as a round of its own, then the
                        // layer on the pooled values.
                        let pooled = pool_stage(ctx, (c, h, w), pool, b.stages.len())
                            .map_err(at_layer(ctx, pool_layer, layers[pool_layer].op_name(), ""))?;
                        b.stages.push(pooled);
                        b.stage_layers.push(pool_layer);
                        b.held.push(held_layer(model, i));
                        b.ops.push(Vec::new());
                        let detail = match folded_err {
                            EngineError::Linear(LinearError::NoiseBudget { l1, .. }) => format!(
                                " (unfolded from its {pool}×{pool} sum pool, which folded in gives {l1})"
                            ),
                            other => format!(
                                " (unfolded from its {pool}×{pool} sum pool, which could not be folded in: {other})"
                            ),
                        };
                        let stage =
                            linear_stage(ctx, layer, (c, h / pool, w / pool), 1, b.stages.len())
                                .map_err(at_layer(ctx, i, op, &detail))?;
                        b.stages.push(stage);
                        b.stage_layers.push(i);
                        b.held.push(Some(i - 1));
                    }
                    Err(e) => return Err(at_layer(ctx, i, op, "")(e)),
                }
                b.main_layer = Some(i);
                b.ops.push(Vec::new());
                pool = 1;
                flattened = false;
            }
            Layer::Requantize {
                multiplier,
                shift,
                min,
                max,
            } => client_step(
                &mut b.ops,
                i,
                ClientOp::Requantize {
                    multiplier: *multiplier,
                    shift: *shift,
                    min: *min,
                    max: *max,
                },
            )?,
            Layer::Relu => client_step(&mut b.ops, i, ClientOp::Relu)?,
            other => {
                return Err(EngineError::Unsupported(format!(
                    "layer {i} ({}) is not supported by the engine yet",
                    other.op_name()
                )))
            }
        }
    }
    if pool != 1 {
        // The model ends with a pool: its sums are the logits.
        b.push_pool(ctx, model, pool_layer, pool)?;
    }
    let mut compiled =
        CompiledModel::assemble(ctx, *model.input(), b.stages, b.ops, b.stage_layers)?;
    compiled.self_check(model)?;
    let bounds = model.bounds();
    compiled.worst_accumulator = bounds
        .iter()
        .filter_map(|b| b.accumulator)
        .max()
        .unwrap_or(0);
    for (stage, &layer) in compiled.stages.iter_mut().zip(&compiled.stage_layers) {
        if stage.public_weights {
            continue;
        }
        stage.sensitivity = layer_sensitivity(model, &bounds, layer);
        if let Some(branch) = branch_layers.get(&layer) {
            stage.sensitivity = stage
                .sensitivity
                .max(layer_sensitivity(model, &bounds, *branch));
        }
    }
    Ok(compiled)
}

/// The stages `compile` has built so far, with the client's steps after
/// each and what the client holds at each round.
#[derive(Default)]
struct Stages {
    stages: Vec<LinearStage>,
    ops: Vec<Vec<ClientOp>>,
    /// The model layer each stage evaluates.
    stage_layers: Vec<usize>,
    /// The layer whose output the client uploads at each round (None: input).
    held: Vec<Option<usize>>,
    /// The open stage's main conv/linear layer.
    main_layer: Option<usize>,
}

impl Stages {
    /// A `pool × pool` sum pool ending at layer `i` as a stage of its own
    /// with 0/1 weights: a pool with a client step right after it (its
    /// requantisation, say), or one at the end of the model, cannot be
    /// folded into a next linear layer.
    fn push_pool(
        &mut self,
        ctx: &Context,
        model: &crate::model::Model,
        i: usize,
        pool: usize,
    ) -> Result<(), EngineError> {
        let op = model.layers()[i].op_name();
        start_stage(&self.stages, &self.ops, i, op)?;
        let (c, h, w) = held_shape(model, i)?;
        let stage = pool_stage(ctx, (c, h, w), pool, self.stages.len())
            .map_err(at_layer(ctx, i, op, ""))?;
        self.stages.push(stage);
        self.stage_layers.push(i);
        self.held.push(held_layer(model, i));
        self.ops.push(Vec::new());
        self.main_layer = Some(i);
        Ok(())
    }
}

/// DP-6: the L2 sensitivity (τ = 1) of a conv2d or linear layer's outputs
/// to one of its weights or biases, for inputs within the propagated
/// bounds of MODEL-5.
fn layer_sensitivity(
    model: &crate::model::Model,
    bounds: &[crate::model::LayerBound],
    layer: usize,
) -> f64 {
    use crate::dp::StageShape;
    use crate::model::Layer;
    let x = bounds.get(layer).map_or(0, |b| b.input.max_abs()) as f64;
    let shape = match (&model.layers()[layer], model.input_shape(layer)) {
        (
            Layer::Conv2d {
                kernel_h,
                kernel_w,
                stride,
                padding,
                ..
            },
            Some(input),
        ) => StageShape::Conv2d {
            in_h: input.height,
            in_w: input.width,
            kernel_h: *kernel_h,
            kernel_w: *kernel_w,
            stride_h: *stride,
            stride_w: *stride,
            pad_h: *padding,
            pad_w: *padding,
        },
        _ => StageShape::Linear,
    };
    crate::dp::l2_sensitivity(&shape, x, 1.0)
}

/// Names the layer in a noise-budget refusal (LIN-3), with the figure's
/// `detail` and the shipped sets that would carry it.
fn at_layer<'a>(
    ctx: &'a Context,
    layer: usize,
    op: &'static str,
    detail: &'a str,
) -> impl Fn(EngineError) -> EngineError + 'a {
    move |e| match e {
        EngineError::Linear(LinearError::NoiseBudget {
            output,
            l1,
            allowed_log2,
        }) => EngineError::NoiseBudget(Box::new(LayerNoise {
            layer,
            op,
            output,
            l1,
            l1_log2: (l1 as f64).log2(),
            allowed_log2,
            set: ctx.params().name().to_owned(),
            detail: detail.to_owned(),
            hint: noise_hint(l1),
        })),
        EngineError::Layout(e) => EngineError::Unsupported(format!("layer {layer} ({op}): {e}")),
        other => other,
    }
}

/// The stage of a conv2d or linear layer on the held `[C, H, W]` tensor,
/// with a preceding `pool × pool` sum pool folded into its weights.
fn linear_stage(
    ctx: &Context,
    layer: &crate::model::Layer,
    (c, h, w): (usize, usize, usize),
    pool: usize,
    index: usize,
) -> Result<LinearStage, EngineError> {
    use crate::model::Layer;
    match layer {
        Layer::Conv2d {
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            weights,
            bias,
            ..
        } => {
            let shape = Conv2dShape {
                in_channels: c,
                in_height: h,
                in_width: w,
                out_channels: *out_channels,
                kernel_height: kernel_h * pool,
                kernel_width: kernel_w * pool,
                stride: stride * pool,
                padding: padding * pool,
            };
            let folded = fold_conv_weights(weights, *out_channels, c, *kernel_h, *kernel_w, pool);
            let mut stage = fewer_stacked(*out_channels, |cap| {
                LinearStage::conv_stacking(ctx, shape, &folded, bias, index, cap)
            })?;
            stage.independent_inputs = c * (h / pool) * (w / pool);
            // On the pooled values the folded kernel is the model's own.
            stage.fan_in = c * kernel_h * kernel_w;
            Ok(stage)
        }
        Layer::Linear {
            out_features,
            weights,
            bias,
        } => {
            // Columns of the pooled input spread over each pooled window.
            let (hp, wp) = (h / pool, w / pool);
            let cols = c * h * w;
            let in_pooled = c * hp * wp;
            let mut folded = vec![0i64; out_features * cols];
            for o in 0..*out_features {
                for ch in 0..c {
                    for y in 0..hp * pool {
                        for x in 0..wp * pool {
                            let src = (ch * hp + y / pool) * wp + x / pool;
                            folded[o * cols + (ch * h + y) * w + x] = weights[o * in_pooled + src];
                        }
                    }
                }
            }
            let shape = MatVecShape {
                rows: *out_features,
                cols,
            };
            let mut stage = fewer_stacked(*out_features, |cap| {
                LinearStage::matvec_stacking(ctx, shape, &folded, bias, index, cap)
            })?;
            stage.independent_inputs = in_pooled;
            stage.fan_in = in_pooled;
            Ok(stage)
        }
        other => Err(EngineError::Unsupported(format!(
            "{} is not a conv2d or linear layer",
            other.op_name()
        ))),
    }
}

/// ENG-7: the stage as the layout stacks it, or, when that breaks the noise
/// budget, with at most `outputs`/2, /4, … 1 outputs per output
/// ciphertext: ‖ŵ‖₁ per output ciphertext sums every stacked output's
/// weights, so fewer stacked outputs is an exact rewrite that trades more
/// output ciphertexts for less noise. Returns the last refusal if even one
/// output per ciphertext is too much.
fn fewer_stacked(
    outputs: usize,
    build: impl Fn(usize) -> Result<LinearStage, EngineError>,
) -> Result<LinearStage, EngineError> {
    let mut cap = usize::MAX;
    loop {
        match build(cap) {
            Err(EngineError::Linear(LinearError::NoiseBudget { .. })) if cap > 1 => {
                cap = if cap == usize::MAX {
                    outputs / 2
                } else {
                    cap / 2
                }
                .max(1);
            }
            other => return other,
        }
    }
}

/// A sum pool over `pool × pool` windows of `[C, H, W]` as a stage of its
/// own with fixed 0/1 weights: a mat-vec when the window is the whole
/// plane (global pool), else a stride-`pool` conv that maps each channel to
/// itself.
fn pool_stage(
    ctx: &Context,
    (c, h, w): (usize, usize, usize),
    pool: usize,
    index: usize,
) -> Result<LinearStage, EngineError> {
    let mut stage = if pool == h && pool == w {
        let cols = c * h * w;
        let mut weights = vec![0i64; c * cols];
        for ch in 0..c {
            weights[ch * cols + ch * h * w..ch * cols + (ch + 1) * h * w].fill(1);
        }
        fewer_stacked(c, |cap| {
            LinearStage::matvec_stacking(
                ctx,
                MatVecShape { rows: c, cols },
                &weights,
                &[],
                index,
                cap,
            )
        })?
    } else {
        let shape = Conv2dShape {
            in_channels: c,
            in_height: h,
            in_width: w,
            out_channels: c,
            kernel_height: pool,
            kernel_width: pool,
            stride: pool,
            padding: 0,
        };
        let block = pool * pool;
        let mut weights = vec![0i64; c * c * block];
        for ch in 0..c {
            let start = (ch * c + ch) * block;
            weights[start..start + block].fill(1);
        }
        fewer_stacked(c, |cap| {
            LinearStage::conv_stacking(ctx, shape, &weights, &[], index, cap)
        })?
    };
    stage.public_weights = true;
    Ok(stage)
}

/// [C, H, W] of the tensor the client holds when layer `i` (a conv or
/// linear) starts a stage: the input of the pools and flatten before it.
/// The layer whose output is the tensor the client holds when layer `i`
/// starts a stage (None: the model input).
fn held_layer(model: &crate::model::Model, i: usize) -> Option<usize> {
    let layers = model.layers();
    let mut j = i;
    while j > 0
        && matches!(
            layers[j - 1],
            crate::model::Layer::AvgPool { .. }
                | crate::model::Layer::GlobalAvgPool
                | crate::model::Layer::Flatten
        )
    {
        j -= 1;
    }
    j.checked_sub(1)
}

/// The round at which the client uploaded the output of `layer`.
fn round_of(held: &[Option<usize>], layer: usize) -> Option<usize> {
    held.iter().position(|&h| h == Some(layer))
}

fn held_shape(model: &crate::model::Model, i: usize) -> Result<(usize, usize, usize), EngineError> {
    let mut j = i;
    let layers = model.layers();
    while j > 0
        && matches!(
            layers[j - 1],
            crate::model::Layer::AvgPool { .. }
                | crate::model::Layer::GlobalAvgPool
                | crate::model::Layer::Flatten
        )
    {
        j -= 1;
    }
    let s = model
        .input_shape(j)
        .ok_or_else(|| EngineError::Unsupported(format!("layer {j}: no input shape")))?;
    Ok((s.channels, s.height, s.width))
}

fn start_stage(
    stages: &[LinearStage],
    ops: &[Vec<ClientOp>],
    i: usize,
    op: &str,
) -> Result<(), EngineError> {
    // A pool stage the engine added (ENG-6) needs no client step after it.
    if stages.last().is_some_and(|s| s.public_weights) {
        return Ok(());
    }
    if let Some(last) = ops.last() {
        if last.is_empty() && !stages.is_empty() {
            return Err(EngineError::Unsupported(format!(
                "layer {i} ({op}): two linear layers without a client step between them (fold them into one, or requantise between them)"
            )));
        }
    }
    Ok(())
}

fn client_step(ops: &mut [Vec<ClientOp>], i: usize, op: ClientOp) -> Result<(), EngineError> {
    let name = match op {
        ClientOp::Relu => "relu",
        ClientOp::Requantize { .. } => "requantize",
    };
    ops.last_mut().map(|o| o.push(op)).ok_or_else(|| {
        EngineError::Unsupported(format!(
            "layer {i} ({name}): a client step before the first linear layer"
        ))
    })
}

/// Repeats each weight over a `pool × pool` block (the folded sum pool).
fn fold_conv_weights(
    w: &[i64],
    out: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    pool: usize,
) -> Vec<i64> {
    if pool == 1 {
        return w.to_vec();
    }
    let (fh, fw) = (kh * pool, kw * pool);
    let mut folded = vec![0i64; out * cin * fh * fw];
    for o in 0..out {
        for c in 0..cin {
            for y in 0..fh {
                for x in 0..fw {
                    folded[((o * cin + c) * fh + y) * fw + x] =
                        w[((o * cin + c) * kh + y / pool) * kw + x / pool];
                }
            }
        }
    }
    folded
}
