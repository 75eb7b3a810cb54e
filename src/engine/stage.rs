//! What [`super::compile`] produces: a [`CompiledModel`] of
//! [`LinearStage`]s with the client's [`ClientOp`]s after each, and the
//! values a round reads ([`ReceivedUpload`], [`Release`]).
//!
//! Fields are private (the engine's siblings see a few, `pub(super)`): a
//! stage or a compiled model comes out of `compile`, which checked it, or
//! not at all.

use super::error::{CompileError, CompileProblem, EngineError};
use crate::extract::ValueRef;
use crate::layout::{
    conv2d_reference, dilate_polynomial, matvec_reference, Conv2dLayout, Conv2dShape,
    InputPlacement, LayoutError, MatVecLayout, MatVecShape, PhaseSplit,
};
use crate::linear::{CoefficientLayout, EncodedLayer, LinearError};
use crate::pack::{pack_price, PackError};
use crate::protocol::client_steps::{apply_client_ops, output_stride, response_ciphertexts};
use crate::rlwe::{Ciphertext, Context};
use crate::rng::Csprng;
use crate::shuffle::{Granularity, Permutation, ShuffleUnit};

/// The layout of one stage, with its shape and clear weights for the
/// plaintext reference.
#[derive(Debug)]
pub(super) enum StageLayout {
    /// A convolution: its layout and its OIHW weights.
    Conv(Conv2dLayout, Vec<i64>),
    /// A matrix–vector product: its layout and its row-major weights.
    MatVec(MatVecLayout, Vec<i64>),
}

/// One linear stage: weights encoded for its layout, bias per output value.
#[derive(Debug)]
pub struct LinearStage {
    layout: StageLayout,
    /// ENG-9: N over the ring degree `layout` was built for; every position
    /// the layout names is multiplied by it at N.
    dilation: usize,
    /// ENG-11: output ciphertexts of the layout summed into one, output
    /// ciphertext o's values at coefficient s·c + (o mod interleave).
    interleave: usize,
    pub(super) encoded: EncodedLayer,
    /// Bias polynomial (coefficient domain, signed) per output ciphertext.
    pub(super) bias: Vec<Vec<i64>>,
    /// Bias per output value, in output order.
    bias_values: Vec<i64>,
    input_len: usize,
    output_len: usize,
    /// Values the stage's outputs really depend on: `input_len`, or fewer
    /// when a sum pool was folded in (PROTO-6 counts these).
    pub(super) independent_inputs: usize,
    /// Inputs one output depends on: C_in·k_h·k_w of the model's (unfolded)
    /// kernel for a conv, the independent inputs for a mat-vec.
    pub(super) fan_in: usize,
    /// A residual connection's second operand, added to every output.
    pub(super) shortcut: Option<Shortcut>,
    /// A stage the engine added with fixed 0/1 weights (a sum pool): it
    /// holds nothing of the model owner's, so PROTO-6 does not count it.
    pub(super) public_weights: bool,
    /// DP-6: L2 sensitivity of the stage's released values to one weight
    /// or bias changed by 1 (τ = 1), for uploads in the declared ranges.
    pub(super) sensitivity: f64,
    /// ENG-10: a mat-vec stage that reads its upload as it arrived, with
    /// the weights' columns permuted per round, instead of repacking it.
    reads_upload: Option<UploadRead>,
    /// ENG-13: a strided conv evaluated as a stride-1 conv over its
    /// input's phases; `layout` then holds the phase form's layout and
    /// weights.
    phases: Option<Box<Phased>>,
}

/// ENG-13: a strided conv as the model states it, evaluated in its phase
/// form: what the audit, PROTO-6 and the threat model see.
#[derive(Debug)]
struct Phased {
    split: PhaseSplit,
    /// The strided conv's weights, OIHW.
    weights: Vec<i64>,
}

/// ENG-10: how a mat-vec stage reads its upload without a repack. The
/// upload holds true value k at slot σ(k) (ciphertext ⌊σ(k)/N⌋,
/// coefficient σ(k) mod N); row i's weight polynomial for upload
/// ciphertext c carries W[i][k] at `output_coefficient − (σ(k) mod N)` for
/// every k in c, so the product's coefficient `output_coefficient` is
/// Σ_k W[i][k]·x_k. One row per output ciphertext: the weights reach no
/// other coefficient of the upload, so a coefficient the upload should not
/// use (past its values) meets only zeros, as in the repack, which drops it.
/// ENG-14 stacks a final stage's rows at the response's coefficients
/// instead ([`StackedRows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UploadRead {
    /// Upload ciphertexts read: ⌈cols/N⌉.
    input_ciphertexts: usize,
    /// The coefficient of its output ciphertext every row lands at:
    /// min(cols, N) − 1, the highest a used slot reaches, so no product
    /// term wraps around (X^N = −1) onto it.
    output_coefficient: usize,
    /// ENG-14: the rows stacked at the response's coefficients, packed by
    /// a trace ([`crate::pack::Packer::trace_groups`]).
    stacked: Option<StackedRows>,
}

/// ENG-14: a final stage's rows stacked so that row i lands at coefficient
/// S·i of the response, S its stride. Row i is laid into output ciphertext
/// g = i mod G at coefficient S_g·⌊i/G⌋, G = S_g/S, where S_g ≥ the
/// stage's columns: a product coefficient S_g·j then holds one row's sum
/// (an upload's values reach it through that row only). The output pack
/// joins the G groups and traces them to the multiples of S
/// ([`crate::pack::Packer::trace_groups`]); G = 1 where the columns fit in
/// S, every row in one ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackedRows {
    stride: usize,
    group_stride: usize,
}

impl StackedRows {
    /// S, the response's stride: row i lands at coefficient S·i.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// S_g, the stride of the rows within one output ciphertext.
    pub fn group_stride(&self) -> usize {
        self.group_stride
    }

    /// G = S_g/S: the groups the rows are laid in, row i in group i mod G.
    pub fn groups(&self) -> usize {
        self.group_stride / self.stride
    }

    /// (output ciphertext, coefficient) of row i.
    fn position(&self, i: usize) -> (usize, usize) {
        let groups = self.groups();
        (i % groups, self.group_stride * (i / groups))
    }
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
    /// ENG-12: the upload of `round` as is, added inside the linear layer:
    /// `stage` is the identity conv in this stage's own layout (same input
    /// placements as round `round`'s stage, same output positions as this
    /// one), evaluated on the ciphertexts round `round` repacked, so the
    /// output pack takes one term per value instead of two.
    RepackedIdentity {
        /// The earlier (or this) round whose repacked upload is added.
        round: usize,
        /// The identity conv, encoded in this stage's layout.
        stage: Box<LinearStage>,
    },
    /// ENG-12: the upload of `round` through a branch conv laid out in
    /// round `round`'s stage layout (its kernel embedded in that stage's
    /// kernel frame), evaluated on the ciphertexts that round repacked: a
    /// projection shortcut without a repack of its own.
    RepackedConv {
        /// The earlier round whose repacked upload the conv reads.
        round: usize,
        /// The branch conv, encoded in round `round`'s stage layout.
        stage: Box<LinearStage>,
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
    ciphertexts: Vec<Ciphertext>,
    arranged_by: Option<Permutation>,
    /// ENG-12: the upload repacked into its round's stage layout, kept
    /// while a round not yet evaluated reads it for a shortcut.
    repacked: Option<Vec<Ciphertext>>,
}

impl ReceivedUpload {
    /// The upload `ciphertexts` (expanded from their seeds, N values each),
    /// its values arranged by `arranged_by`: σ_(r−1), under which true
    /// value k sits at slot `σ(k)`, or `None` for values in true order
    /// (round 0). A round that finds too few ciphertexts for its stage
    /// refuses the upload as the peer's fault ([`EngineError::fault`]).
    pub fn new(ciphertexts: Vec<Ciphertext>, arranged_by: Option<Permutation>) -> Self {
        Self {
            ciphertexts,
            arranged_by,
            repacked: None,
        }
    }

    /// The upload's ciphertexts, N values each.
    pub fn ciphertexts(&self) -> &[Ciphertext] {
        &self.ciphertexts
    }

    /// σ_(r−1), the permutation the values are arranged by; `None` when
    /// they are in true order (round 0).
    pub fn arranged_by(&self) -> Option<&Permutation> {
        self.arranged_by.as_ref()
    }

    /// ENG-12: the upload as its round's stage repacked it, if a later
    /// (or the same) round's shortcut still reads it.
    pub(super) fn repacked(&self) -> Option<&[Ciphertext]> {
        self.repacked.as_deref()
    }

    /// Keeps (or, with `None`, drops) the repack [`repacked`](Self::repacked) returns.
    pub(super) fn keep_repacked(&mut self, repacked: Option<Vec<Ciphertext>>) {
        self.repacked = repacked;
    }

    /// Where true value k of this upload sits.
    pub(super) fn value(&self, n: usize, k: usize) -> ValueRef {
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
    pub(super) fn conv(
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
    pub(super) fn conv_stacking(
        ctx: &Context,
        shape: Conv2dShape,
        weights: &[i64],
        bias: &[i64],
        stage: usize,
        max_stack: usize,
    ) -> Result<Self, EngineError> {
        let direct = priced_conv_layer(ctx, shape, weights, max_stack, None)?;
        // ENG-13: the phase form when it prices lower at no more noise; a
        // phase form that does not lay out is not taken (the direct one is
        // exact either way).
        let phased = PhaseSplit::new(shape).and_then(|split| {
            let w = split.weights(weights).ok()?;
            let choice =
                priced_conv_layer(ctx, *split.phases(), &w, max_stack, Some(&split)).ok()?;
            let better = choice.price < direct.price
                && choice.encoded.max_weight_l1() <= direct.encoded.max_weight_l1();
            better.then_some((choice, w, split))
        });
        let (choice, evaluated_weights, phases) = match phased {
            Some((choice, w, split)) => {
                let stated = Phased {
                    split,
                    weights: weights.to_vec(),
                };
                (choice, w, Some(Box::new(stated)))
            }
            None => (direct, weights.to_vec(), None),
        };
        let ConvChoice {
            layout,
            dilation,
            interleave,
            encoded,
            price: _,
        } = choice;
        let positions = place_outputs(layout.output_positions(), dilation, interleave);
        let per_channel = layout.output_height() * layout.output_width();
        check_bias(bias, shape.out_channels, stage)?;
        let bias_values: Vec<i64> = (0..positions.len())
            .map(|k| bias.get(k / per_channel).copied().unwrap_or(0))
            .collect();
        Ok(Self {
            input_len: shape.input_len()?,
            output_len: positions.len(),
            bias: bias_polys(
                ctx,
                &positions,
                layout.output_ciphertexts().div_ceil(interleave),
                &bias_values,
            ),
            bias_values,
            encoded,
            independent_inputs: shape.input_len()?,
            fan_in: shape.in_channels * shape.kernel_height * shape.kernel_width,
            shortcut: None,
            public_weights: false,
            sensitivity: 0.0,
            layout: StageLayout::Conv(layout, evaluated_weights),
            dilation,
            interleave,
            reads_upload: None,
            phases,
        })
    }

    /// ENG-12: the identity conv (output (c, y, x) = input (c, y, x)) in
    /// this stage's own layout, dilation and interleave, so that it reads
    /// the ciphertexts this stage's repack produces and writes this stage's
    /// output positions. `None` unless the stage is a conv that maps each
    /// position to itself: as many output as input channels, stride 1, odd
    /// kernel padded by half of it, no folded pool (its kernel then has a
    /// centre tap that reads the same position).
    pub(super) fn identity_in_layout(&self, ctx: &Context) -> Option<Result<Self, EngineError>> {
        let StageLayout::Conv(layout, _) = &self.layout else {
            return None;
        };
        // A phase form (ENG-13) is a strided conv: no position maps to itself.
        if self.phases.is_some() {
            return None;
        }
        let shape = *layout.shape();
        let (kh, kw) = (shape.kernel_height, shape.kernel_width);
        let maps_to_itself = shape.in_channels == shape.out_channels
            && shape.stride == 1
            && kh % 2 == 1
            && kw % 2 == 1
            && shape.padding == kh / 2
            && shape.padding == kw / 2
            && layout.output_height() == shape.in_height
            && layout.output_width() == shape.in_width
            && self.input_len == shape.input_len().ok()?;
        if !maps_to_itself {
            return None;
        }
        // OIHW: weight 1 from channel c's centre to output channel c.
        let c = shape.in_channels;
        let mut weights = vec![0i64; c * c * kh * kw];
        for ch in 0..c {
            weights[((ch * c + ch) * kh + kh / 2) * kw + kw / 2] = 1;
        }
        let bias = vec![0; self.output_len];
        Some(self.conv_in_this_layout(ctx, layout, weights, bias, 1, true, None))
    }

    /// ENG-12: this branch conv (a projection shortcut) laid out in
    /// `main`'s conv layout, dilation and interleave, so that it reads the
    /// ciphertexts `main`'s repack produces: its kernel embedded in
    /// `main`'s kernel frame at offset d = p_main − p_branch on both axes
    /// (input row s·y + d + i − p_main = s·y + i − p_branch: the same
    /// inputs), zeros elsewhere. `None` unless both are convs of one input
    /// shape, output channels, stride and output size, with the branch's
    /// kernel inside `main`'s frame. Its fan-in stays the branch's own
    /// (PROTO-6 counts the weights an attack must solve, not the zeros).
    pub(super) fn branch_in_layout_of(
        &self,
        ctx: &Context,
        main: &LinearStage,
    ) -> Option<Result<Self, EngineError>> {
        let ((b, w), (m, _)) = (self.conv_as_stated()?, main.conv_as_stated()?);
        let StageLayout::Conv(frame, _) = &main.layout else {
            return None;
        };
        let d = m.padding.checked_sub(b.padding)?;
        let fits = b.in_channels == m.in_channels
            && b.in_height == m.in_height
            && b.in_width == m.in_width
            && b.out_channels == m.out_channels
            && b.stride == m.stride
            && d + b.kernel_height <= m.kernel_height
            && d + b.kernel_width <= m.kernel_width
            && b.output_height().ok()? == m.output_height().ok()?
            && b.output_width().ok()? == m.output_width().ok()?
            && self.input_len == main.input_len;
        if !fits {
            return None;
        }
        let (kh, kw) = (m.kernel_height, m.kernel_width);
        let mut weights = vec![0i64; m.out_channels * m.in_channels * kh * kw];
        for o in 0..b.out_channels {
            for c in 0..b.in_channels {
                for i in 0..b.kernel_height {
                    for j in 0..b.kernel_width {
                        let from =
                            ((o * b.in_channels + c) * b.kernel_height + i) * b.kernel_width + j;
                        let to = ((o * m.in_channels + c) * kh + i + d) * kw + j + d;
                        weights[to] = w[from];
                    }
                }
            }
        }
        // In `main`'s phase form (ENG-13) when it has one: the embedded
        // kernel is a strided conv of `main`'s shape.
        let (evaluated, phases) = match &main.phases {
            None => (weights, None),
            Some(p) => match p.split.weights(&weights) {
                Ok(w) => (
                    w,
                    Some(Box::new(Phased {
                        split: p.split,
                        weights,
                    })),
                ),
                Err(e) => return Some(Err(e.into())),
            },
        };
        Some(main.conv_in_this_layout(
            ctx,
            frame,
            evaluated,
            self.bias_values.clone(),
            self.fan_in,
            self.public_weights,
            phases,
        ))
    }

    /// The conv as the model states it, with its OIHW weights: the strided
    /// conv of a phase form (ENG-13), else the layout's own; `None` for a
    /// mat-vec.
    fn conv_as_stated(&self) -> Option<(Conv2dShape, &[i64])> {
        match (&self.layout, &self.phases) {
            (StageLayout::Conv(..), Some(p)) => Some((*p.split.strided(), &p.weights)),
            (StageLayout::Conv(l, w), None) => Some((*l.shape(), w)),
            (StageLayout::MatVec(..), _) => None,
        }
    }

    /// A conv stage with `weights` (OIHW, in the kernel frame of `layout`,
    /// this stage's conv layout) and `bias_values` (per output, in output
    /// order) in this stage's layout, dilation and interleave; `phases`
    /// (ENG-13) when `layout` is a phase form.
    #[allow(clippy::too_many_arguments)]
    fn conv_in_this_layout(
        &self,
        ctx: &Context,
        layout: &Conv2dLayout,
        weights: Vec<i64>,
        bias_values: Vec<i64>,
        fan_in: usize,
        public_weights: bool,
        phases: Option<Box<Phased>>,
    ) -> Result<Self, EngineError> {
        let dilated = Dilated {
            layout,
            dilation: self.dilation,
            interleave: self.interleave,
        };
        let encoded = EncodedLayer::new(ctx, &dilated, &weights)?;
        let positions = self.output_positions();
        Ok(Self {
            input_len: self.input_len,
            output_len: self.output_len,
            bias: bias_polys(ctx, &positions, self.output_ciphertexts(), &bias_values),
            bias_values,
            encoded,
            independent_inputs: self.independent_inputs,
            fan_in,
            shortcut: None,
            public_weights,
            sensitivity: 0.0,
            layout: StageLayout::Conv(layout.clone(), weights),
            dilation: self.dilation,
            interleave: self.interleave,
            reads_upload: None,
            phases,
        })
    }

    /// A matrix–vector stage with at most `max_rows` rows per output
    /// ciphertext (ENG-7).
    pub(super) fn matvec_stacking(
        ctx: &Context,
        shape: MatVecShape,
        weights: &[i64],
        bias: &[i64],
        stage: usize,
        max_rows: usize,
    ) -> Result<Self, EngineError> {
        let (layout, dilation, encoded) = dilated_layer(ctx, weights, |n| {
            MatVecLayout::with_max_rows(shape, n, max_rows)
        })?;
        let reads_upload = upload_read_pays(ctx, &layout, dilation);
        let (positions, output_cts) = match &reads_upload {
            Some(read) => (read.output_positions(shape.rows), shape.rows),
            None => (
                place_outputs(layout.output_positions(), dilation, 1),
                layout.output_ciphertexts(),
            ),
        };
        check_bias(bias, shape.rows, stage)?;
        let bias_values: Vec<i64> = (0..positions.len())
            .map(|k| bias.get(k).copied().unwrap_or(0))
            .collect();
        Ok(Self {
            input_len: shape.cols,
            output_len: positions.len(),
            bias: bias_polys(ctx, &positions, output_cts, &bias_values),
            bias_values,
            encoded,
            independent_inputs: shape.cols,
            fan_in: shape.cols,
            shortcut: None,
            public_weights: false,
            sensitivity: 0.0,
            layout: StageLayout::MatVec(layout, weights.to_vec()),
            dilation,
            interleave: 1,
            reads_upload,
            phases: None,
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
        self.conv_as_stated().map(|(shape, _)| shape)
    }

    /// ENG-13: whether this strided conv is evaluated as a stride-1 conv
    /// over its input's phases ([`PhaseSplit`]); [`conv_shape`](Self::conv_shape)
    /// is the strided conv either way.
    pub fn evaluates_phases(&self) -> bool {
        self.phases.is_some()
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
        let w = match (&self.layout, &self.phases) {
            (_, Some(p)) => &p.weights,
            (StageLayout::Conv(_, w) | StageLayout::MatVec(_, w), None) => w,
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
            Some(
                Shortcut::RepackedIdentity { stage, .. }
                | Shortcut::RepackedConv { stage, .. }
                | Shortcut::Conv { stage, .. },
            ) => stage.encoded.max_weight_l1(),
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
    /// fan-in; for rows stacked at the response (ENG-14), rows·(d + 1)
    /// over the response's N/S slots. Channel shuffling leaves a conv's
    /// spatial order in the clear, and one query suffices; a mat-vec's
    /// channels are single values, so it is element shuffling there.
    pub fn attack_queries(&self, unit: ShuffleUnit) -> Option<u64> {
        if self.public_weights {
            return None;
        }
        let shortcut = match &self.shortcut {
            Some(Shortcut::Conv { stage, .. } | Shortcut::RepackedConv { stage, .. }) => {
                stage.fan_in
            }
            _ => 0,
        };
        let per_row = (self.fan_in.min(self.independent_inputs) + shortcut) as u64 + 1;
        Some(match (&self.layout, unit) {
            (StageLayout::Conv(..), ShuffleUnit::Channel) => 1,
            // ENG-14: a client that writes values past its upload's reaches
            // every one of the response's N/S slots through the stacked
            // rows, not only the `rows` released ones: rows·(d + 1)
            // unknowns at N/S equations per query.
            // The response's N/S slots are rows rounded up to a power of two.
            _ => match self.stacked_rows() {
                Some(_) => {
                    let rows = self.output_len as u64;
                    (rows * per_row).div_ceil(rows.next_power_of_two())
                }
                None => per_row,
            },
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

    /// ENG-9: the stage's dilation s: its layout was built for ring degree
    /// N/s and every position it names sits at s times its coefficient
    /// (1: built for N). Chosen at compile time: for a mat-vec the largest
    /// s at which the layout needs as many input and output ciphertexts as
    /// at N, for a conv the s (with [`interleave`](Self::interleave)) whose
    /// server work prices lowest.
    pub fn dilation(&self) -> usize {
        self.dilation
    }

    /// ENG-11: how many of the layout's output ciphertexts one of the
    /// stage's sums (1 for none, always 1 for a mat-vec): output
    /// ciphertext o's values sit at s·c + (o mod k).
    pub fn interleave(&self) -> usize {
        self.interleave
    }

    /// (flat input index, input ciphertext, coefficient at N) of every
    /// placement.
    pub(super) fn input_placements(&self) -> Vec<(usize, usize, usize)> {
        let s = self.dilation;
        match &self.layout {
            StageLayout::Conv(l, _) => {
                let shape = l.shape();
                // ENG-13: a phase form's input k holds the strided input
                // `source(k)`, or a 0 past it (placed by no one).
                let split = self.phases.as_ref().map(|p| &p.split);
                l.input_placements()
                    .iter()
                    .filter_map(|p| {
                        let k = p.flat_index(shape);
                        let k = match split {
                            Some(split) => split.source(k)?,
                            None => k,
                        };
                        Some((k, p.ciphertext, p.coefficient * s))
                    })
                    .collect()
            }
            StageLayout::MatVec(l, _) => l
                .input_placements()
                .iter()
                .map(|p| (p.col, p.ciphertext, p.coefficient * s))
                .collect(),
        }
    }

    /// (output ciphertext, coefficient at N) of every output, in true order.
    pub(super) fn output_positions(&self) -> Vec<(usize, usize)> {
        if let Some(read) = &self.reads_upload {
            return read.output_positions(self.output_len);
        }
        let positions = match &self.layout {
            StageLayout::Conv(l, _) => l.output_positions(),
            StageLayout::MatVec(l, _) => l.output_positions(),
        };
        place_outputs(positions, self.dilation, self.interleave)
    }

    /// Number of input ciphertexts the stage's product reads: those the
    /// repack arranges its inputs into, or the upload's (ENG-10).
    pub fn input_ciphertexts(&self) -> usize {
        match &self.reads_upload {
            Some(read) => read.input_ciphertexts,
            None => self.encoded.input_ciphertexts(),
        }
    }

    /// ENG-10: whether the stage reads its upload as it arrived (a
    /// mat-vec whose weights are laid out per round for σ_(r−1)) instead
    /// of repacking it into its layout.
    pub fn reads_upload_directly(&self) -> bool {
        self.reads_upload.is_some()
    }

    /// ENG-14: how the stage's rows are stacked at the response's
    /// coefficients, its output pack then a trace; `None` for a stage
    /// packed as usual.
    pub fn stacked_rows(&self) -> Option<StackedRows> {
        self.reads_upload.and_then(|read| read.stacked)
    }

    /// ENG-14: stacks the rows of the final stage (its round releases in
    /// true order, no shuffle) at the response's coefficients
    /// ([`StackedRows`]), where it reads its upload (ENG-10), has no
    /// residual operand, holds at most N rows and columns (its one upload
    /// ciphertext's values then reach row i's coefficient only through row
    /// i), some output ciphertext holds two rows or more (or there is one
    /// group), and every output ciphertext's stacked ‖ŵ‖₁ (its rows')
    /// stays within the compiled layout's, which LIN-3, the flooding and
    /// PRIV-3 are computed for. Otherwise the stage is left as it is.
    pub(super) fn stack_rows_at_response(&mut self, ctx: &Context) {
        let n = ctx.n();
        let (Some(read), None, StageLayout::MatVec(layout, weights)) =
            (&mut self.reads_upload, &self.shortcut, &self.layout)
        else {
            return;
        };
        let MatVecShape { rows, cols } = *layout.shape();
        if rows == 0 || cols == 0 || rows > n || cols > n {
            return;
        }
        let stride = output_stride(n, rows);
        let stacked = StackedRows {
            stride,
            group_stride: stride.max(cols.next_power_of_two()),
        };
        // As many groups as rows would be a row per ciphertext, as ENG-10
        // lays them, with none of its immunity to values past the upload's.
        if stacked.groups() > 1 && stacked.groups() >= rows {
            return;
        }
        let mut l1 = vec![0u128; stacked.groups().min(rows)];
        for (i, row) in weights.chunks(cols).enumerate() {
            l1[i % stacked.groups()] += row
                .iter()
                .map(|w| u128::from(w.unsigned_abs()))
                .sum::<u128>();
        }
        if l1.iter().any(|&l1| l1 > self.encoded.max_weight_l1()) {
            return;
        }
        read.stacked = Some(stacked);
        let positions = read.output_positions(rows);
        self.bias = bias_polys(ctx, &positions, l1.len(), &self.bias_values);
    }

    /// ENG-10: the stage's weights laid out for `upload` as it arrived:
    /// row i into output ciphertext i, W[i][k] placed for the slot σ(k)
    /// that holds x_k. `None` for a stage that repacks. Per-output
    /// ‖ŵ‖₁ is one row's, at most the compiled layout's (which stacks
    /// whole rows), so the noise factor `noise_l1` reports still bounds it.
    pub(super) fn encode_for_upload(
        &self,
        ctx: &Context,
        upload: &ReceivedUpload,
    ) -> Option<Result<EncodedLayer, EngineError>> {
        let read = self.reads_upload?;
        let StageLayout::MatVec(layout, weights) = &self.layout else {
            return None;
        };
        let n = ctx.n();
        let cols = layout.shape().cols;
        let sources = upload.ciphertexts().len();
        // Too short an upload is the peer's fault, as the repack says it;
        // the error names the first missing ciphertext, not a slot of σ.
        let missing = PackError::NoSuchSource {
            value: ValueRef::new(sources, 0),
            sources,
        };
        if sources < read.input_ciphertexts {
            return Some(Err(missing.into()));
        }
        // (coefficient, true column) of every value, by upload ciphertext.
        let mut by_ciphertext = vec![Vec::new(); read.input_ciphertexts];
        for k in 0..cols {
            let slot = upload.value(n, k);
            let ct = slot.source as usize;
            if ct >= sources {
                return Some(Err(missing.clone().into()));
            }
            if ct >= by_ciphertext.len() {
                by_ciphertext.resize_with(ct + 1, Vec::new);
            }
            by_ciphertext[ct].push((slot.coeff as usize, k));
        }
        let permuted = UploadMatVec {
            n,
            cols,
            rows: layout.shape().rows,
            output_coefficient: read.output_coefficient,
            stacked: read.stacked,
            by_ciphertext,
        };
        Some(EncodedLayer::new(ctx, &permuted, weights).map_err(EngineError::from))
    }

    /// The plaintext integer result of this stage (the reference), from
    /// the direct convolution / product, independent of the layout.
    pub fn reference(&self, input: &[i64]) -> Result<Vec<i64>, EngineError> {
        // A phase form (ENG-13) as evaluated, on the gathered input, so
        // that the compile's self-check (ENG-3) holds the rewrite too.
        let mut out = match (&self.layout, &self.phases) {
            (StageLayout::Conv(l, w), Some(p)) => {
                conv2d_reference(l.shape(), &p.split.gather(input)?, w)?
            }
            (StageLayout::Conv(l, w), None) => conv2d_reference(l.shape(), input, w)?,
            (StageLayout::MatVec(l, w), _) => matvec_reference(l.shape(), input, w)?,
        };
        for (v, b) in out.iter_mut().zip(&self.bias_values) {
            *v += b;
        }
        Ok(out)
    }
}

impl UploadRead {
    /// (output ciphertext, coefficient) of row i, in row order.
    fn output_positions(&self, rows: usize) -> Vec<(usize, usize)> {
        match self.stacked {
            Some(stacked) => (0..rows).map(|i| stacked.position(i)).collect(),
            None => (0..rows).map(|i| (i, self.output_coefficient)).collect(),
        }
    }
}

/// ENG-10: a mat-vec's weights laid out for one upload's slots.
struct UploadMatVec {
    n: usize,
    rows: usize,
    cols: usize,
    output_coefficient: usize,
    /// ENG-14: row i in output ciphertext i mod G, landing at S_g·⌊i/G⌋.
    stacked: Option<StackedRows>,
    /// (coefficient, true column) of every value, by upload ciphertext.
    by_ciphertext: Vec<Vec<(usize, usize)>>,
}

impl UploadMatVec {
    fn row<'w>(&self, weights: &'w [i64], i: usize) -> Result<&'w [i64], LayoutError> {
        weights
            .get(i * self.cols..(i + 1) * self.cols)
            .ok_or(LayoutError::WeightCountMismatch {
                expected: self.rows * self.cols,
                got: weights.len(),
            })
    }

    /// ENG-14: the rows of group g in one polynomial, W[i][k] where x_k's
    /// coefficient c lands on t = S_g·⌊i/G⌋: at t − c, or negated at
    /// N + t − c when that is negative (X^N = −1). A product coefficient
    /// S_g·j then holds one row's sum alone: another row of the group
    /// reaches it only from coefficients S_g·(j − j') + c (mod N), none of
    /// them below cols ≤ S_g.
    fn stacked_polynomial(
        &self,
        weights: &[i64],
        values: &[(usize, usize)],
        stacked: StackedRows,
        group: usize,
    ) -> Result<Vec<i64>, LayoutError> {
        let mut poly = vec![0i64; self.n];
        let stride = stacked.group_stride();
        for i in (group..self.rows).step_by(stacked.groups()) {
            let row = self.row(weights, i)?;
            for &(coeff, k) in values {
                if coeff >= stride {
                    return Err(LayoutError::IndexOutOfRange {
                        field: "coefficient",
                        index: coeff,
                        bound: stride,
                    });
                }
                let target = stacked.position(i).1;
                if target >= coeff {
                    poly[target - coeff] = row[k];
                } else {
                    poly[self.n + target - coeff] = -row[k];
                }
            }
        }
        Ok(poly)
    }
}

impl CoefficientLayout for UploadMatVec {
    fn input_ciphertexts(&self) -> usize {
        self.by_ciphertext.len()
    }
    fn output_ciphertexts(&self) -> usize {
        match self.stacked {
            Some(stacked) => stacked.groups().min(self.rows),
            None => self.rows,
        }
    }
    fn weight_polynomial(
        &self,
        weights: &[i64],
        output_ct: usize,
        input_ct: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError> {
        let values = self
            .by_ciphertext
            .get(input_ct)
            .ok_or(LayoutError::IndexOutOfRange {
                field: "input_ct",
                index: input_ct,
                bound: self.by_ciphertext.len(),
            })?;
        if let Some(stacked) = self.stacked {
            let bound = self.output_ciphertexts();
            if output_ct >= bound {
                return Err(LayoutError::IndexOutOfRange {
                    field: "output_ct",
                    index: output_ct,
                    bound,
                });
            }
            return self
                .stacked_polynomial(weights, values, stacked, output_ct)
                .map(Some);
        }
        let row = self.row(weights, output_ct)?;
        let mut poly = vec![0i64; self.n];
        for &(coeff, k) in values {
            // Slots fill coefficients 0..min(cols, N): coeff ≤ output_coefficient.
            let at =
                self.output_coefficient
                    .checked_sub(coeff)
                    .ok_or(LayoutError::IndexOutOfRange {
                        field: "coefficient",
                        index: coeff,
                        bound: self.output_coefficient + 1,
                    })?;
            poly[at] = row[k];
        }
        Ok(Some(poly))
    }
}

/// A forward or inverse transform of one polynomial, in rotate-adds (the
/// unit of PACK-2's cost model, where a key switch is 96 on the one-limb
/// sets): ≈ 12 µs against ≈ 1 µs (benches/README.md). Only ENG-10's
/// choice depends on it, never a result.
const TRANSFORM_IN_ROTATIONS: u64 = 12;

/// Laying one weight polynomial out per round (ENG-10), in rotate-adds:
/// writing, scanning and compacting N coefficients.
const LAYOUT_IN_ROTATIONS: u64 = 8;

/// ENG-10: reads the upload directly when that prices below the repack,
/// in PACK-2's unit (src/pack.rs). Repacking: the repack (every upload
/// ciphertext a source of the layout's input ciphertexts), the layout's
/// transforms (two per input and output ciphertext, one per weight
/// polynomial) and the output pack from its output ciphertexts. Reading:
/// the transforms of one output ciphertext per row, a weight polynomial
/// laid out per row and upload ciphertext, and the output pack from one
/// source per row. Priced without σ, which changes no count.
fn upload_read_pays(ctx: &Context, layout: &MatVecLayout, dilation: usize) -> Option<UploadRead> {
    let n = ctx.n();
    let MatVecShape { rows, cols } = *layout.shape();
    let read = UploadRead {
        input_ciphertexts: cols.div_ceil(n),
        output_coefficient: cols.min(n) - 1,
        stacked: None,
    };
    let (ins, outs) = (layout.input_ciphertexts(), layout.output_ciphertexts());
    let repack = repack_price(ctx, &layout.input_placements(), ins, dilation, cols);
    // The response is the same either way; only its sources differ.
    let response = response_positions(n, rows);
    let repacking = repack + transforms_price(ins, outs) + pack_price(ctx, &response, outs as u64);
    let reading = transforms_price(read.input_ciphertexts, rows)
        + (rows * read.input_ciphertexts) as u64 * LAYOUT_IN_ROTATIONS
        + pack_price(ctx, &response, rows as u64);
    (reading < repacking).then_some(read)
}

/// The coefficients a response of `values` values fills, by response
/// ciphertext (slot order, every `output_stride`-th coefficient): what the
/// output pack places, whatever the stage's layout.
fn response_positions(n: usize, values: usize) -> Vec<Vec<usize>> {
    let stride = output_stride(n, values);
    (0..response_ciphertexts(n, values))
        .map(|c| {
            (c * n..values.min((c + 1) * n))
                .map(|s| (s % n) * stride)
                .collect()
        })
        .collect()
}

/// The transforms of a stage with `ins` input and `outs` output
/// ciphertexts, in rotate-adds: two per input and output ciphertext, one
/// per weight polynomial.
fn transforms_price(ins: usize, outs: usize) -> u64 {
    (2 * ins + outs * ins + 2 * outs) as u64 * TRANSFORM_IN_ROTATIONS
}

/// ENG-9: the part of a conv stage's server work its layout fixes, built
/// for ring degree N/`dilation`, in PACK-2's unit (src/pack.rs): the
/// repack of its upload (`response_ciphertexts` of the input values;
/// σ_(r−1) changes no count) into the layout's input ciphertexts. An
/// estimate that picks the layout, never a result.
/// A phase form's (ENG-13) upload is the strided conv's input, and its
/// positions past that input stay empty.
fn conv_repack_price(
    ctx: &Context,
    layout: &Conv2dLayout,
    dilation: usize,
    split: Option<&PhaseSplit>,
) -> u64 {
    let shape = *layout.shape();
    let values = split
        .map_or(shape, |s| *s.strided())
        .input_len()
        .unwrap_or(ctx.n());
    let mut placements = layout.input_placements();
    if let Some(split) = split {
        placements.retain(|p| split.source(p.flat_index(&shape)).is_some());
    }
    repack_price(
        ctx,
        &placements,
        layout.input_ciphertexts(),
        dilation,
        values,
    )
}

/// PACK-2's price of repacking an upload of `values` values (dense, N per
/// ciphertext; σ_(r−1) changes no count) to `placements` in `ins` input
/// ciphertexts of a layout built for N/`dilation`: what ENG-9 and ENG-10
/// weigh against other work, never a result.
fn repack_price(
    ctx: &Context,
    placements: &[InputPlacement],
    ins: usize,
    dilation: usize,
    values: usize,
) -> u64 {
    let mut positions = vec![Vec::new(); ins];
    for p in placements {
        positions[p.ciphertext].push(p.coefficient * dilation);
    }
    let upload = response_ciphertexts(ctx.n(), values) as u64;
    pack_price(ctx, &positions, upload)
}

/// ENG-9, ENG-11: the rest of a conv stage's server work with `ins` input
/// and `outs` output ciphertexts (after interleaving): the transforms and
/// the output pack of `released` values from `outs` sources.
fn conv_product_price(ctx: &Context, ins: usize, outs: usize, released: usize) -> u64 {
    let response = response_positions(ctx.n(), released);
    transforms_price(ins, outs) + pack_price(ctx, &response, outs as u64)
}

/// A conv layout as a stage evaluates it: built for N/`dilation`,
/// `interleave` output ciphertexts summed into one (ENG-9, ENG-11).
struct ConvChoice {
    layout: Conv2dLayout,
    dilation: usize,
    interleave: usize,
    encoded: EncodedLayer,
    /// Its server work in PACK-2's unit (ENG-9).
    price: u64,
}

/// ENG-9, ENG-11: a conv stage laid out for the ring degree n' = N/s (a
/// power of two, halving from N while the shape fits) and the channel
/// blocking ([`Conv2dLayout::block_alternatives`]), with k ≤ s of its
/// output ciphertexts interleaved into one, whichever prices lowest
/// ([`conv_repack_price`] plus [`conv_product_price`]; ties to the larger
/// s, then k), never above N's undilated layout, its weights encoded at N.
/// A choice with more output ciphertexts than N's layout is not taken.
/// A choice whose noise factor (the largest ‖ŵ‖₁ of an output ciphertext)
/// exceeds N's layout's, or the budget (LIN-3) where N's breaks it, gives
/// way to the next cheapest, N's layout last: the stage's noise figures
/// (LIN-3, the flooding, PRIV-3) are never worse than N's layout gives,
/// and choosing never refuses a stage that fits at N. k·T stays within
/// N's T (and `max_stack`, ENG-7), so the first candidate usually passes.
fn priced_conv_layer(
    ctx: &Context,
    shape: Conv2dShape,
    weights: &[i64],
    max_stack: usize,
    split: Option<&PhaseSplit>,
) -> Result<ConvChoice, EngineError> {
    let n = ctx.n();
    let released = shape.output_len()?;
    let full = Conv2dLayout::with_max_stack(shape, n, max_stack)?;
    let full_encoded = match EncodedLayer::new(ctx, &full, weights) {
        Ok(encoded) => Some(encoded),
        Err(LinearError::NoiseBudget { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let stack_at_n = full.output_channels_per_ciphertext().min(max_stack);
    let full_price = conv_repack_price(ctx, &full, 1, split)
        + conv_product_price(
            ctx,
            full.input_ciphertexts(),
            full.output_ciphertexts(),
            released,
        );
    // The block alternatives of every degree the shape fits (N's too),
    // and (price, dilation, interleave, index into `layouts`) of each
    // choice that prices at most N's default layout.
    let mut layouts = Vec::new();
    let mut candidates = Vec::new();
    let mut degree = n;
    while degree >= 1 {
        let alternatives = Conv2dLayout::block_alternatives(shape, degree, max_stack);
        if alternatives.is_empty() {
            break;
        }
        let dilation = n / degree;
        for layout in alternatives {
            let (ins, outs) = (layout.input_ciphertexts(), layout.output_ciphertexts());
            let repack = conv_repack_price(ctx, &layout, dilation, split);
            let widest = dilation
                .min(outs)
                .min(stack_at_n / layout.output_channels_per_ciphertext())
                .max(1);
            // The widest, and the powers of two below it should that one
            // break the noise budget.
            let narrower = (0..).map(|i| 1usize << i).take_while(|&k| k < widest);
            for interleave in std::iter::once(widest).chain(narrower) {
                let sources = outs.div_ceil(interleave);
                let price = repack + conv_product_price(ctx, ins, sources, released);
                // More output-pack sources than N's layout has are not
                // taken: their images outgrow the caches, which the price
                // does not see (ResNet-20's round 7 packed 2.2× slower from
                // 32 sources that priced lower; benches/README.md).
                if price <= full_price && sources <= full.output_ciphertexts() {
                    candidates.push((price, dilation, interleave, layouts.len()));
                }
            }
            layouts.push(layout);
        }
        degree /= 2;
    }
    // Cheapest first; at equal price the larger dilation, then interleave.
    candidates.sort_by_key(|&(price, dilation, interleave, _)| {
        (
            price,
            std::cmp::Reverse(dilation),
            std::cmp::Reverse(interleave),
        )
    });
    for (price, dilation, interleave, index) in candidates {
        let dilated = Dilated {
            layout: &layouts[index],
            dilation,
            interleave,
        };
        match EncodedLayer::new(ctx, &dilated, weights) {
            Ok(encoded)
                if full_encoded
                    .as_ref()
                    .is_none_or(|f| encoded.max_weight_l1() <= f.max_weight_l1()) =>
            {
                return Ok(ConvChoice {
                    layout: layouts.swap_remove(index),
                    dilation,
                    interleave,
                    encoded,
                    price,
                })
            }
            Ok(_) | Err(LinearError::NoiseBudget { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let encoded = match full_encoded {
        Some(encoded) => encoded,
        None => EncodedLayer::new(ctx, &full, weights)?,
    };
    Ok(ConvChoice {
        layout: full,
        dilation: 1,
        interleave: 1,
        encoded,
        price: full_price,
    })
}

/// ENG-9: a layout built for ring degree N/`dilation`, as seen at N: its
/// weight polynomials spread by [`dilate_polynomial`], and (ENG-11) each
/// run of `interleave` ≤ `dilation` consecutive output ciphertexts summed
/// into one, output ciphertext o's polynomials times X^(o mod interleave):
/// its values land at s·c + (o mod interleave), free in the others'.
struct Dilated<'a, L> {
    layout: &'a L,
    dilation: usize,
    interleave: usize,
}

impl<L: CoefficientLayout> CoefficientLayout for Dilated<'_, L> {
    fn input_ciphertexts(&self) -> usize {
        self.layout.input_ciphertexts()
    }
    fn output_ciphertexts(&self) -> usize {
        self.layout.output_ciphertexts().div_ceil(self.interleave)
    }
    fn weight_polynomial(
        &self,
        weights: &[i64],
        output_ct: usize,
        input_ct: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError> {
        let k = self.interleave;
        let first = output_ct * k;
        let last = (first + k).min(self.layout.output_ciphertexts());
        let mut sum: Option<Vec<i64>> = None;
        for (shift, o) in (first..last).enumerate() {
            let Some(poly) = self.layout.weight_polynomial(weights, o, input_ct)? else {
                continue;
            };
            let dilated = dilate_polynomial(&poly, self.dilation);
            let sum = sum.get_or_insert_with(|| vec![0; dilated.len()]);
            // Nonzero only at multiples of s ≤ N − s, and shift < s: no
            // coefficient wraps, none meets another shift's.
            for (i, &w) in dilated.iter().enumerate().step_by(self.dilation) {
                sum[i + shift] = w;
            }
        }
        Ok(sum)
    }
}

/// ENG-9: the layout `build` gives for the smallest ring degree n' (a power
/// of two, n' ≤ N) whose input and output ciphertext counts are N's, with
/// s = N/n' and the weights encoded at N. The repack of a small layer then
/// places its values at multiples of s, where the PackLWEs tree has few
/// nodes above its lowest levels (proofs/pool-folding.md, "Dilated
/// layouts"); the ct×pt work is unchanged. Halving stops at the first
/// degree that changes the counts or refuses the shape. Should the smaller
/// degree's stacking break the noise budget (LIN-3) where N's does not, the
/// stage keeps N's layout, so dilating never refuses a stage.
fn dilated_layer<L: CoefficientLayout>(
    ctx: &Context,
    weights: &[i64],
    build: impl Fn(usize) -> Result<L, LayoutError>,
) -> Result<(L, usize, EncodedLayer), EngineError> {
    let n = ctx.n();
    let full = build(n)?;
    let counts = |l: &L| (l.input_ciphertexts(), l.output_ciphertexts());
    let mut smallest = None;
    let mut degree = n / 2;
    while degree >= 1 {
        match build(degree) {
            Ok(l) if counts(&l) == counts(&full) => smallest = Some((l, n / degree)),
            _ => break,
        }
        degree /= 2;
    }
    if let Some((layout, dilation)) = smallest {
        let dilated = Dilated {
            layout: &layout,
            dilation,
            interleave: 1,
        };
        match EncodedLayer::new(ctx, &dilated, weights) {
            Ok(encoded) => return Ok((layout, dilation, encoded)),
            Err(LinearError::NoiseBudget { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let encoded = EncodedLayer::new(ctx, &full, weights)?;
    Ok((full, 1, encoded))
}

/// Output positions of a layout built for ring degree N/`dilation`, at N,
/// with `interleave` output ciphertexts summed into one (ENG-11): output
/// ciphertext o's coefficient c goes to ciphertext o / interleave,
/// coefficient s·c + (o mod interleave).
fn place_outputs(
    positions: Vec<(usize, usize)>,
    dilation: usize,
    interleave: usize,
) -> Vec<(usize, usize)> {
    positions
        .into_iter()
        .map(|(ct, c)| (ct / interleave, c * dilation + ct % interleave))
        .collect()
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

/// How a round's outputs are released to the client (DP-8): the shuffle's
/// granularity, and the discrete Gaussian noise, if any, added to every
/// released value before the shuffle. Its fields stay public: every
/// combination is a valid request, and the noise is checked against the
/// model where it is used ([`RoundEvaluator::new`](super::RoundEvaluator::new),
/// [`run_release`](super::run_release)).
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

/// A model compiled for encrypted evaluation under one parameter set (ENG-5):
/// stages, and the client's element-wise steps after each stage (after the
/// last one they act on the logits, in true order).
///
/// The only way to obtain one is [`compile`](super::compile) (or
/// [`crate::select`]), which checks everything the result depends on —
/// shapes, the accumulator bound of every layer (MODEL-5), the noise budget
/// of every stage (LIN-3) — so holding one proves the checks passed for the
/// set it names. [`run`](super::run), [`RoundEvaluator`](super::RoundEvaluator)
/// and the protocol's `Endpoint` accept nothing else and refuse a context
/// of another set.
#[derive(Debug)]
pub struct CompiledModel {
    pub(super) stages: Vec<LinearStage>,
    pub(super) client_ops: Vec<Vec<ClientOp>>,
    input: crate::model::InputSpec,
    set: String,
    fingerprint: u64,
    /// The model layer each stage came from (for reports and errors).
    pub(super) stage_layers: Vec<usize>,
    /// The largest worst-case |accumulator| of any layer (MODEL-5).
    pub(super) worst_accumulator: u128,
    /// Images per session (ENG-15): 1, or k for the block-diagonal model of
    /// `compile_batch`.
    pub(super) batch: usize,
    /// The model this one evaluates (the base model when batched): an
    /// endpoint serves batches of its own model only.
    pub(super) model_digest: u64,
}

impl CompiledModel {
    /// The stages and client steps `compile` built, checked against the
    /// protocol's limits (PROTO-4) and chained shape by shape.
    pub(super) fn assemble(
        ctx: &Context,
        model: &crate::model::Model,
        stages: Vec<LinearStage>,
        client_ops: Vec<Vec<ClientOp>>,
        stage_layers: Vec<usize>,
    ) -> Result<Self, EngineError> {
        let input = *model.input();
        if stages.is_empty() {
            return Err(CompileError::model(CompileProblem::NoLinearLayer).into());
        }
        if client_ops.len() != stages.len() || stage_layers.len() != stages.len() {
            return Err(CompileError::model(CompileProblem::Internal(
                "not one client step list and one layer per stage",
            ))
            .into());
        }
        // The protocol's limits (PROTO-4) hold for every compiled model, so
        // a session can always describe it.
        use crate::protocol::{MAX_OPS, MAX_ROUNDS};
        if stages.len() > MAX_ROUNDS {
            return Err(CompileError::model(CompileProblem::TooManyRounds {
                rounds: stages.len(),
                limit: MAX_ROUNDS,
            })
            .into());
        }
        if let Some(r) = client_ops.iter().position(|o| o.len() > MAX_OPS) {
            let layer = stage_layers[r];
            return Err(CompileError::at(
                layer,
                model.layers().get(layer).map_or("?", |l| l.op_name()),
                CompileProblem::TooManyClientSteps {
                    steps: client_ops[r].len(),
                    limit: MAX_OPS,
                },
            )
            .into());
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
            batch: 1,
            model_digest: 0,
        })
    }

    /// ENG-3, ENG-5: the compiled stages' plaintext semantics must equal the
    /// model's reference evaluator. Checked on the all-minimum, all-maximum
    /// and a fixed pseudo-random input, so that a compiler bug is a
    /// refusal, never an `Ok` with wrong logits. Not a proof: the proofs
    /// and tests of the compilation rules are.
    pub(super) fn self_check(&self, model: &crate::model::Model) -> Result<(), EngineError> {
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
                return Err(CompileError::model(CompileProblem::ReferenceMismatch).into());
            }
        }
        Ok(())
    }

    /// Images per session (ENG-15): 1 unless compiled by
    /// [`compile_batch`](super::compile_batch). The input is the images'
    /// inputs one after another and the logits theirs, in the same order.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Whether `other` evaluates the same model as this one, batched or not
    /// (PROTO-11: an endpoint serves batches of its own model only).
    pub fn batches_the_same_model(&self, other: &CompiledModel) -> bool {
        self.model_digest == other.model_digest && self.fingerprint == other.fingerprint
    }

    /// The encrypted stages, one per round.
    pub fn stages(&self) -> &[LinearStage] {
        &self.stages
    }

    /// ENG-12: whether a stage from `from` on reads round `round`'s
    /// repacked upload for a shortcut (so the repack must be kept).
    pub(super) fn repack_needed(&self, round: usize, from: usize) -> bool {
        self.stages.iter().skip(from).any(|s| {
            matches!(
                &s.shortcut,
                Some(Shortcut::RepackedIdentity { round: r, .. } | Shortcut::RepackedConv { round: r, .. })
                    if *r == round
            )
        })
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
        // `assemble` refuses a model without stages.
        self.stages.first().map_or(0, LinearStage::input_len)
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
            return Err(CompileError::model(CompileProblem::NoiseOverflow {
                sigma: noise.variance().sqrt(),
                tail,
                worst_accumulator: self.worst_accumulator,
                plaintext_bits: ctx.params().plaintext_bits(),
                set: self.set.clone(),
            })
            .into());
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
        let stage = self.stages.get(r).ok_or(EngineError::NoSuchRound {
            round: r,
            rounds: self.rounds(),
        })?;
        if uploads.len() <= r {
            return Err(EngineError::HistoryLength {
                round: r,
                expected: r + 1,
                got: uploads.len(),
            });
        }
        let mut out = stage.reference(&uploads[r])?;
        match &stage.shortcut {
            Some(Shortcut::Identity { round } | Shortcut::RepackedIdentity { round, .. }) => {
                for (v, s) in out.iter_mut().zip(&uploads[*round]) {
                    *v += s;
                }
            }
            Some(
                Shortcut::Conv { round, stage: sc } | Shortcut::RepackedConv { round, stage: sc },
            ) => {
                for (v, s) in out.iter_mut().zip(sc.reference(&uploads[*round])?) {
                    *v += s;
                }
            }
            None => {}
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterSet;

    // ENG-9, ENG-11: on the digits model's two conv shapes (1×8×8 → 8,
    // 3×3; 8×8×8 → 16, 6×6 stride 2, a folded pool), the chosen layout
    // dilates and interleaves, prices below N's undilated layout, and its
    // noise factor stays at most N's (k = 16 on the second shape would sum
    // 16 channels where N's layout stacks 7: the rule must refuse it).
    #[test]
    fn priced_conv_layouts_never_raise_the_noise_factor() {
        let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
        let shapes = [
            Conv2dShape {
                in_channels: 1,
                in_height: 8,
                in_width: 8,
                out_channels: 8,
                kernel_height: 3,
                kernel_width: 3,
                stride: 1,
                padding: 1,
            },
            Conv2dShape {
                in_channels: 8,
                in_height: 8,
                in_width: 8,
                out_channels: 16,
                kernel_height: 6,
                kernel_width: 6,
                stride: 2,
                padding: 2,
            },
        ];
        let mut rng = Csprng::from_seed([7; 16]);
        for shape in shapes {
            let count =
                shape.out_channels * shape.in_channels * shape.kernel_height * shape.kernel_width;
            let weights: Vec<i64> = (0..count)
                .map(|_| rng.uniform_below(31) as i64 - 15)
                .collect();
            let full = Conv2dLayout::new(shape, ctx.n()).unwrap();
            let full_noise = EncodedLayer::new(&ctx, &full, &weights)
                .unwrap()
                .max_weight_l1();
            let released = shape.output_len().unwrap();
            let full_price = conv_repack_price(&ctx, &full, 1, None)
                + conv_product_price(
                    &ctx,
                    full.input_ciphertexts(),
                    full.output_ciphertexts(),
                    released,
                );
            let choice = priced_conv_layer(&ctx, shape, &weights, usize::MAX, None).unwrap();
            let (s, k) = (choice.dilation, choice.interleave);
            assert!(s > 1 && k > 1 && k <= s, "{shape:?}: s = {s}, k = {k}");
            let outs = choice.layout.output_ciphertexts().div_ceil(k);
            let price = conv_repack_price(&ctx, &choice.layout, s, None)
                + conv_product_price(&ctx, choice.layout.input_ciphertexts(), outs, released);
            assert!(price < full_price, "{shape:?}: {price} vs {full_price}");
            assert!(
                choice.encoded.max_weight_l1() <= full_noise,
                "{shape:?}: noise factor {} above N's {full_noise}",
                choice.encoded.max_weight_l1()
            );
            assert!(
                k * choice.layout.output_channels_per_ciphertext()
                    <= full.output_channels_per_ciphertext(),
                "{shape:?}: more channels summed than N's layout stacks"
            );
        }
    }
}
