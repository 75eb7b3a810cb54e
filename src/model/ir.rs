//! The integer model IR: layers, shapes, and validation (MODEL-1, MODEL-2).
//!
//! Tensors are `[C][H][W]` row-major ("channel-major"): value `(c, i, j)` is
//! at index `(c·H + i)·W + j`. A flat tensor of `n` features is `[n, 1, 1]`.
//! Conv weights are OIHW row-major, linear weights row-major `out × in`.
//! Exact semantics of every op: [`crate::model::reference`] and
//! spec/model-format.md (MODEL-3).

use super::error::{LayerProblem, ModelError};
use crate::layout::{Conv2dShape, LayoutError};
use std::fmt;

/// Largest number of values any activation tensor (the input included) may
/// hold: 2^26 (512 MiB of `i64`). Keeps evaluation memory bounded (MODEL-2).
pub const MAX_TENSOR_LEN: usize = 1 << 26;

/// Longest model name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A tensor shape `[channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of channels `C` (features, for a flat tensor).
    pub channels: usize,
    /// Height `H` in rows (1 for a flat tensor).
    pub height: usize,
    /// Width `W` in columns (1 for a flat tensor).
    pub width: usize,
}

impl Shape {
    /// The shape `[channels, height, width]`; not validated (a zero size is
    /// refused later, by [`Model::new`]).
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// `C·H·W`, or `None` on overflow.
    pub fn len(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }

    /// Whether `C·H·W == 0`.
    pub fn is_empty(&self) -> bool {
        self.channels == 0 || self.height == 0 || self.width == 0
    }

    /// `[n, 1, 1]`: the shape a linear layer takes.
    pub fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}]", self.channels, self.height, self.width)
    }
}

/// The model input: its shape and the closed range `[min, max]` every input
/// value lies in (the accumulator bounds of MODEL-5 start from it, and the
/// evaluator refuses inputs outside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputSpec {
    /// Shape of the input tensor, flattened in CHW order when encrypted.
    pub shape: Shape,
    /// Smallest value any input may take, inclusive.
    pub min: i64,
    /// Largest value any input may take, inclusive (`min ≤ max`, MODEL-2).
    pub max: i64,
}

/// Which party evaluates a layer (MODEL-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Linear: evaluated by the server on encrypted activations.
    Server,
    /// Non-linear: evaluated by the client in plaintext.
    Client,
}

/// One layer of an integer model (MODEL-1). Each layer reads the output of
/// the previous layer (the model input for layer 0) unless stated otherwise;
/// semantics in MODEL-3.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Layer {
    /// 2-D cross-correlation with zero padding, plus bias:
    /// `y[o][i][j] = bias[o] + Σ_{c,k,l} w[o][c][k][l] · x[c][i·s+k−p][j·s+l−p]`.
    /// `weights` is OIHW (`out_channels × C × kernel_h × kernel_w`), `bias`
    /// has `out_channels` values. A folded batch norm is just these weights
    /// and bias. Only `groups = 1` is supported.
    Conv2d {
        /// Number of output channels `O` (≥ 1).
        out_channels: usize,
        /// Kernel height in rows (≥ 1, at most the padded input height).
        kernel_h: usize,
        /// Kernel width in columns (≥ 1, at most the padded input width).
        kernel_w: usize,
        /// Step between windows, in both directions (≥ 1).
        stride: usize,
        /// Zero padding added on every side, in rows/columns.
        padding: usize,
        /// Channel groups; must be 1 (validation refuses anything else).
        groups: usize,
        /// Integer weights, OIHW row-major.
        weights: Vec<i64>,
        /// One integer bias per output channel, in the accumulator's scale.
        bias: Vec<i64>,
    },
    /// `y = W·x + bias` on a flat input `[in, 1, 1]`; `weights` row-major
    /// `out_features × in`. Output `[out_features, 1, 1]`.
    Linear {
        /// Number of outputs (≥ 1).
        out_features: usize,
        /// Integer weights, row-major `out_features × in`.
        weights: Vec<i64>,
        /// One integer bias per output, in the accumulator's scale.
        bias: Vec<i64>,
    },
    /// Integer **sum** over each `kernel × kernel` window (no padding); the
    /// `1/kernel²` of an average is folded into the next requantize.
    AvgPool {
        /// Window side, in rows and columns (≥ 1).
        kernel: usize,
        /// Step between windows (≥ 1).
        stride: usize,
    },
    /// Integer **sum** over `H × W` per channel; output `[C, 1, 1]`.
    GlobalAvgPool,
    /// Reshape `[C, H, W]` to `[C·H·W, 1, 1]` (values unchanged, CHW order).
    Flatten,
    /// Adds the output of layer `from` (`from <` this layer's index, same
    /// shape as this layer's input) element-wise to the input.
    ResidualAdd {
        /// 0-based index of the earlier layer whose output is added.
        from: usize,
    },
    /// Outputs (a copy of) the output of layer `from` (`from <` this layer's index),
    /// ignoring the previous layer: starts a side branch, e.g. the projection
    /// shortcut of a ResNet block, which a later `ResidualAdd` joins.
    Branch {
        /// 0-based index of the earlier layer whose output is copied.
        from: usize,
    },
    /// `max(x, 0)` element-wise.
    Relu,
    /// Maximum over each `kernel × kernel` window (no padding).
    MaxPool {
        /// Window side, in rows and columns (≥ 1).
        kernel: usize,
        /// Step between windows (≥ 1).
        stride: usize,
    },
    /// `clamp(round_half_away_from_zero(y·multiplier / 2^shift), min, max)`,
    /// exactly, in `i128` ([`crate::model::requantize`]).
    Requantize {
        /// Fixed-point scale numerator (> 0).
        multiplier: i64,
        /// Scale denominator exponent: the product is divided by `2^shift`
        /// (≤ 62).
        shift: u32,
        /// Lower clamp bound, inclusive.
        min: i64,
        /// Upper clamp bound, inclusive (`min ≤ max`).
        max: i64,
    },
}

impl Layer {
    /// The op name used in the model file and in error messages.
    pub fn op_name(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "conv2d",
            Layer::Linear { .. } => "linear",
            Layer::AvgPool { .. } => "avgpool",
            Layer::GlobalAvgPool => "global_avgpool",
            Layer::Flatten => "flatten",
            Layer::ResidualAdd { .. } => "residual_add",
            Layer::Branch { .. } => "branch",
            Layer::Relu => "relu",
            Layer::MaxPool { .. } => "maxpool",
            Layer::Requantize { .. } => "requantize",
        }
    }

    /// MODEL-1: linear layers run on the server, non-linear ones on the client.
    pub fn side(&self) -> Side {
        match self {
            Layer::Conv2d { .. }
            | Layer::Linear { .. }
            | Layer::AvgPool { .. }
            | Layer::GlobalAvgPool
            | Layer::Flatten
            | Layer::ResidualAdd { .. }
            | Layer::Branch { .. } => Side::Server,
            Layer::Relu | Layer::MaxPool { .. } | Layer::Requantize { .. } => Side::Client,
        }
    }

    /// Whether the layer is linear (evaluated by the server).
    pub fn is_linear(&self) -> bool {
        self.side() == Side::Server
    }

    /// Number of weights (0 for layers without).
    pub fn weight_count(&self) -> usize {
        match self {
            Layer::Conv2d { weights, .. } | Layer::Linear { weights, .. } => weights.len(),
            _ => 0,
        }
    }

    /// Number of weights and biases.
    pub fn parameter_count(&self) -> usize {
        match self {
            Layer::Conv2d { weights, bias, .. } | Layer::Linear { weights, bias, .. } => {
                weights.len().saturating_add(bias.len())
            }
            _ => 0,
        }
    }

    /// The earlier layer this layer reads besides (or instead of) its input.
    pub fn reads_from(&self) -> Option<usize> {
        match self {
            Layer::ResidualAdd { from } | Layer::Branch { from } => Some(*from),
            _ => None,
        }
    }
}

/// A validated integer model: holding one proves MODEL-2's checks passed.
/// Construct with [`Model::new`] or [`Model::from_json`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    name: String,
    input: InputSpec,
    layers: Vec<Layer>,
    /// Output shape of every layer.
    shapes: Vec<Shape>,
}

impl Model {
    /// Validates the model and infers every layer's output shape (MODEL-2).
    /// Never panics; the error names the offending layer and the problem.
    pub fn new(
        name: impl Into<String>,
        input: InputSpec,
        layers: Vec<Layer>,
    ) -> Result<Self, ModelError> {
        let name = name.into();
        if name.len() > MAX_NAME_LEN {
            return Err(ModelError::NameTooLong {
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        let shapes = infer_shapes(&input, &layers)?;
        Ok(Self {
            name,
            input,
            layers,
            shapes,
        })
    }

    /// The model's name (at most [`MAX_NAME_LEN`] bytes; may be empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input shape and declared input range.
    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    /// The layers, in evaluation order (validated: never empty).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The output shape of every layer, in layer order.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The shape of the input of layer `index` (the previous layer's output,
    /// or the model input for layer 0), or `None` if out of range.
    pub fn input_shape(&self, index: usize) -> Option<Shape> {
        match index {
            0 => Some(self.input.shape),
            i if i <= self.layers.len() => self.shapes.get(i - 1).copied(),
            _ => None,
        }
    }

    /// The shape of the model's output (the logits).
    pub fn output_shape(&self) -> Shape {
        // `new` refuses a model without layers.
        self.shapes.last().copied().unwrap_or(self.input.shape)
    }

    /// Total number of weights.
    pub fn weight_count(&self) -> usize {
        self.layers.iter().map(Layer::weight_count).sum()
    }

    /// Total number of weights and biases.
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(Layer::parameter_count).sum()
    }
}

fn input_error(problem: LayerProblem) -> ModelError {
    ModelError::Input { problem }
}

/// Checks that a tensor shape has a representable size within the limit.
fn tensor_len(shape: &Shape) -> Result<usize, LayerProblem> {
    let len = shape
        .len()
        .ok_or(LayerProblem::SizeOverflow { field: "shape" })?;
    if len > MAX_TENSOR_LEN {
        return Err(LayerProblem::TensorTooLarge {
            len,
            max: MAX_TENSOR_LEN,
        });
    }
    Ok(len)
}

fn positive(value: usize, field: &'static str) -> Result<(), LayerProblem> {
    if value == 0 {
        Err(LayerProblem::ZeroSize { field })
    } else {
        Ok(())
    }
}

fn check_count(expected: usize, got: usize, bias: bool) -> Result<(), LayerProblem> {
    match (expected == got, bias) {
        (true, _) => Ok(()),
        (false, false) => Err(LayerProblem::WeightCount { expected, got }),
        (false, true) => Err(LayerProblem::BiasCount { expected, got }),
    }
}

fn from_layout(e: LayoutError) -> LayerProblem {
    match e {
        LayoutError::ZeroDimension { field } => LayerProblem::ZeroSize { field },
        LayoutError::SizeOverflow { field } => LayerProblem::SizeOverflow { field },
        other => LayerProblem::Geometry(other),
    }
}

/// The layout-module shape of a validated conv layer on input `x`.
pub(crate) fn conv_shape(x: &Shape, layer: &Layer) -> Option<Conv2dShape> {
    match layer {
        Layer::Conv2d {
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            ..
        } => Some(Conv2dShape {
            in_channels: x.channels,
            in_height: x.height,
            in_width: x.width,
            out_channels: *out_channels,
            kernel_height: *kernel_h,
            kernel_width: *kernel_w,
            stride: *stride,
            padding: *padding,
        }),
        _ => None,
    }
}

/// Output size of a window op along one axis (no padding): `(n − k)/s + 1`.
fn pooled(
    n: usize,
    kernel: usize,
    stride: usize,
    field: &'static str,
) -> Result<usize, LayerProblem> {
    if kernel > n {
        return Err(LayerProblem::KernelTooLarge {
            field,
            kernel,
            input: n,
        });
    }
    Ok((n - kernel) / stride + 1)
}

fn pool_shape(x: &Shape, kernel: usize, stride: usize) -> Result<Shape, LayerProblem> {
    positive(kernel, "kernel")?;
    positive(stride, "stride")?;
    Ok(Shape::new(
        x.channels,
        pooled(x.height, kernel, stride, "kernel")?,
        pooled(x.width, kernel, stride, "kernel")?,
    ))
}

/// The output shape of `layer` on input shape `x`, given the output shapes of
/// all earlier layers (so `from` must be below `earlier.len()`).
fn layer_shape(layer: &Layer, x: &Shape, earlier: &[Shape]) -> Result<Shape, LayerProblem> {
    let earlier_shape = |from: usize| {
        earlier
            .get(from)
            .copied()
            .ok_or(LayerProblem::FromNotEarlier { from })
    };
    let out = match layer {
        Layer::Conv2d {
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            groups,
            weights,
            bias,
        } => {
            if *groups != 1 {
                return Err(LayerProblem::UnsupportedGroups { groups: *groups });
            }
            positive(*out_channels, "out_channels")?;
            positive(*kernel_h, "kernel_h")?;
            positive(*kernel_w, "kernel_w")?;
            positive(*stride, "stride")?;
            let pad2 = padding
                .checked_mul(2)
                .ok_or(LayerProblem::SizeOverflow { field: "padding" })?;
            for (kernel, size, field) in [
                (*kernel_h, x.height, "kernel_h"),
                (*kernel_w, x.width, "kernel_w"),
            ] {
                let padded = size
                    .checked_add(pad2)
                    .ok_or(LayerProblem::SizeOverflow { field: "padding" })?;
                if kernel > padded {
                    return Err(LayerProblem::KernelTooLarge {
                        field,
                        kernel,
                        input: padded,
                    });
                }
            }
            let shape = Conv2dShape {
                in_channels: x.channels,
                in_height: x.height,
                in_width: x.width,
                out_channels: *out_channels,
                kernel_height: *kernel_h,
                kernel_width: *kernel_w,
                stride: *stride,
                padding: *padding,
            };
            let expected = shape.weight_len().map_err(from_layout)?;
            check_count(expected, weights.len(), false)?;
            check_count(*out_channels, bias.len(), true)?;
            Shape::new(
                *out_channels,
                shape.output_height().map_err(from_layout)?,
                shape.output_width().map_err(from_layout)?,
            )
        }
        Layer::Linear {
            out_features,
            weights,
            bias,
        } => {
            if !x.is_flat() {
                return Err(LayerProblem::NotFlat { shape: *x });
            }
            positive(*out_features, "out_features")?;
            let expected =
                out_features
                    .checked_mul(x.channels)
                    .ok_or(LayerProblem::SizeOverflow {
                        field: "out_features",
                    })?;
            check_count(expected, weights.len(), false)?;
            check_count(*out_features, bias.len(), true)?;
            Shape::new(*out_features, 1, 1)
        }
        Layer::AvgPool { kernel, stride } | Layer::MaxPool { kernel, stride } => {
            pool_shape(x, *kernel, *stride)?
        }
        Layer::GlobalAvgPool => Shape::new(x.channels, 1, 1),
        Layer::Flatten => Shape::new(tensor_len(x)?, 1, 1),
        Layer::ResidualAdd { from } => {
            let from_shape = earlier_shape(*from)?;
            if from_shape != *x {
                return Err(LayerProblem::ShapeMismatch {
                    from: *from,
                    from_shape,
                    input: *x,
                });
            }
            *x
        }
        Layer::Branch { from } => earlier_shape(*from)?,
        Layer::Relu => *x,
        Layer::Requantize {
            multiplier,
            shift,
            min,
            max,
        } => {
            if *multiplier <= 0 {
                return Err(LayerProblem::NonPositiveMultiplier {
                    multiplier: *multiplier,
                });
            }
            if *shift > 62 {
                return Err(LayerProblem::ShiftTooLarge { shift: *shift });
            }
            if min > max {
                return Err(LayerProblem::InvertedRange {
                    min: *min,
                    max: *max,
                });
            }
            *x
        }
    };
    tensor_len(&out)?;
    Ok(out)
}

/// MODEL-2: validates the input and every layer, returning each layer's
/// output shape.
fn infer_shapes(input: &InputSpec, layers: &[Layer]) -> Result<Vec<Shape>, ModelError> {
    let s = input.shape;
    positive(s.channels, "channels").map_err(input_error)?;
    positive(s.height, "height").map_err(input_error)?;
    positive(s.width, "width").map_err(input_error)?;
    tensor_len(&s).map_err(input_error)?;
    if input.min > input.max {
        return Err(input_error(LayerProblem::InvertedRange {
            min: input.min,
            max: input.max,
        }));
    }
    if layers.is_empty() {
        return Err(ModelError::NoLayers);
    }
    let mut shapes: Vec<Shape> = Vec::with_capacity(layers.len());
    for (index, layer) in layers.iter().enumerate() {
        let x = shapes.last().copied().unwrap_or(s);
        let out = layer_shape(layer, &x, &shapes).map_err(|problem| ModelError::Layer {
            layer: index,
            op: layer.op_name(),
            problem,
        })?;
        shapes.push(out);
    }
    Ok(shapes)
}
