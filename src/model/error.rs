//! Errors of model validation, evaluation, accumulator checks and parsing.

use super::ir::Shape;
use crate::layout::LayoutError;
use crate::params::ParamError;
use thiserror::Error;

/// What is wrong with one layer (or with the model input): the detail of
/// [`ModelError::Layer`] and [`ModelError::Input`] (MODEL-2).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LayerProblem {
    /// A size field (or an input dimension) is 0; the model author must
    /// give a positive size.
    #[error("`{field}` must be positive, got 0")]
    ZeroSize {
        /// The offending field or input dimension.
        field: &'static str,
    },
    /// A size computation involving `field` overflows `usize`: the field is
    /// absurdly large (hostile or corrupt file).
    #[error("`{field}` is so large that the size computation overflows")]
    SizeOverflow {
        /// The field whose value made the computation overflow.
        field: &'static str,
    },
    /// An activation tensor (the input or a layer's output) would exceed
    /// [`MAX_TENSOR_LEN`](super::MAX_TENSOR_LEN) values; the model is too
    /// large for this crate and must be made smaller.
    #[error("the tensor would hold {len} values, more than the limit of {max}")]
    TensorTooLarge {
        /// Number of values the tensor would hold.
        len: usize,
        /// The limit, [`MAX_TENSOR_LEN`](super::MAX_TENSOR_LEN).
        max: usize,
    },
    /// A kernel dimension is larger than the input it slides over (after
    /// padding), so the layer would have no output; fix the layer or the
    /// shapes before it.
    #[error("`{field}` = {kernel} exceeds the (padded) input size {input}")]
    KernelTooLarge {
        /// The kernel field (`kernel_h`, `kernel_w` or `kernel`).
        field: &'static str,
        /// The kernel size along that dimension.
        kernel: usize,
        /// The input size along that dimension, padding included.
        input: usize,
    },
    /// A grouped or depthwise conv (`groups ≠ 1`), which this crate does not
    /// evaluate; export the model with ordinary convs.
    #[error("groups = {groups} is not supported (only groups = 1)")]
    UnsupportedGroups {
        /// The `groups` value found.
        groups: usize,
    },
    /// The weight array does not have the length the layer's shape implies
    /// (OIHW for conv2d, `out_features × in` for linear); the exporter is at
    /// fault.
    #[error("expected {expected} weights, got {got}")]
    WeightCount {
        /// Number of weights the shape implies.
        expected: usize,
        /// Number of weights given.
        got: usize,
    },
    /// The bias array does not hold one value per output channel (conv2d) or
    /// row (linear); the exporter is at fault.
    #[error("expected {expected} bias values (one per output), got {got}")]
    BiasCount {
        /// Number of outputs, hence of bias values required.
        expected: usize,
        /// Number of bias values given.
        got: usize,
    },
    #[error(
        "input shape {shape} is not flat: linear needs [features, 1, 1] (insert a flatten layer)"
    )]
    /// A `linear` layer whose input is not `[features, 1, 1]`; insert a
    /// `flatten` layer before it.
    NotFlat {
        /// The input shape the layer received.
        shape: Shape,
    },
    /// A `residual_add` or `branch` whose `from` is not the index of an
    /// earlier layer (`from ≥` its own index), which would make the graph
    /// cyclic.
    #[error("`from` = {from} does not name an earlier layer")]
    FromNotEarlier {
        /// The `from` index given (0-based layer index).
        from: usize,
    },
    #[error("layer {from} outputs shape {from_shape}, but this layer's input has shape {input}")]
    /// A `residual_add` whose two operands differ in shape: layer `from`
    /// outputs another shape than this layer receives.
    ShapeMismatch {
        /// The layer whose output is added (0-based index).
        from: usize,
        /// That layer's output shape.
        from_shape: Shape,
        /// This layer's input shape.
        input: Shape,
    },
    /// A `requantize` with `multiplier ≤ 0`; quantisation scales are
    /// positive, so the exporter is at fault.
    #[error("multiplier must be positive, got {multiplier}")]
    NonPositiveMultiplier {
        /// The multiplier given.
        multiplier: i64,
    },
    /// A `requantize` with `shift > 62`, beyond what the exact `i128`
    /// rounding of MODEL-3 supports.
    #[error("shift = {shift} exceeds the maximum 62")]
    ShiftTooLarge {
        /// The shift given.
        shift: u32,
    },
    /// A clamp range (of `requantize` or of the model input) with
    /// `min > max`, which no value satisfies.
    #[error("min = {min} exceeds max = {max}")]
    InvertedRange {
        /// The lower end given.
        min: i64,
        /// The upper end given.
        max: i64,
    },
    /// Any other geometry the conv/pool layout refuses (see
    /// [`LayoutError`]).
    #[error("{0}")]
    Geometry(LayoutError),
}

/// Why a model was refused, or an evaluation or check failed.
///
/// Validation errors name the layer (0-based index into the layer list) and
/// its op; errors of the `from_json` family concern the model file
/// (MODEL-6, MODEL-7) and say so.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ModelError {
    // ----- validation (MODEL-2) -----
    /// The layer list is empty (MODEL-1 requires at least one layer).
    #[error("model has no layers")]
    NoLayers,
    /// The model name exceeds [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes.
    #[error("model name is {len} bytes long, more than the limit of {max}")]
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The limit, [`MAX_NAME_LEN`](super::MAX_NAME_LEN).
        max: usize,
    },
    /// The input specification is invalid (a zero or overflowing dimension,
    /// an oversized tensor, or `min > max`).
    #[error("model input: {problem}")]
    Input {
        /// What is wrong with it.
        problem: LayerProblem,
    },
    #[error("layer {layer} ({op}): {problem}")]
    /// A layer failed validation (MODEL-2); the model author must fix that
    /// layer.
    Layer {
        /// 0-based index into the layer list.
        layer: usize,
        /// The layer's op, as spelled in the model file.
        op: &'static str,
        /// What is wrong with it.
        problem: LayerProblem,
    },

    // ----- evaluation (MODEL-4) -----
    /// The caller asked about a layer index past the end of the model; a
    /// caller bug.
    #[error("no layer {index}: the model has {layers} layers")]
    NoSuchLayer {
        /// The index asked for (0-based).
        index: usize,
        /// Number of layers in the model.
        layers: usize,
    },
    /// An input whose length is not `C·H·W` of the model's input shape
    /// (MODEL-4); the caller supplied the wrong tensor.
    #[error("input has {got} values, the model expects {expected}")]
    InputLength {
        /// `C·H·W` of the model's input shape.
        expected: usize,
        /// Number of values supplied.
        got: usize,
    },
    #[error("input value {index} is {value}, outside the declared input range [{min}, {max}]")]
    /// An input value outside the model's declared input range (MODEL-4);
    /// the caller must quantise or clamp its input. Refused because the
    /// accumulator check (MODEL-5) only covers inputs in that range.
    InputOutOfRange {
        /// Position of the value in the flattened CHW input.
        index: usize,
        /// The value found.
        value: i64,
        /// Declared lower end of the input range.
        min: i64,
        /// Declared upper end of the input range.
        max: i64,
    },
    /// An exact activation of the layer does not fit `i64` during reference
    /// evaluation (MODEL-4); the result is refused rather than wrapped. The
    /// model's weights are too large for its inputs.
    #[error("layer {layer} ({op}): integer overflow (an exact value does not fit i64)")]
    Overflow {
        /// 0-based index of the layer.
        layer: usize,
        /// The layer's op.
        op: &'static str,
    },

    // ----- accumulator check (MODEL-5) -----
    #[error("layer {layer} ({op}): {source}; {}", fit_hint(.source))]
    /// A linear layer's worst-case accumulator needs more plaintext bits
    /// than the parameter set carries (MODEL-5), so decryption could wrap.
    /// Pick a set with enough bits (the message lists the shipped ones) or
    /// requantise the layer.
    AccumulatorOverflow {
        /// 0-based index of the layer.
        layer: usize,
        /// The layer's op.
        op: &'static str,
        /// The parameter-set refusal, with the output and the bits needed.
        source: ParamError,
    },

    // ----- batching (ENG-15) -----
    /// [`Model::batched`](super::Model::batched) was asked for a batch of
    /// `k = 0` images; a batch holds at least one.
    #[error("a batch must hold at least one image, got k = 0")]
    EmptyBatch,
    /// [`Model::batched`](super::Model::batched) would build a model with
    /// more than `max` weights and biases in total (the block-diagonal
    /// weights grow as `k²`), or counting them overflows; refused before
    /// anything is allocated. Batch fewer images per session.
    #[error("batching {k} images needs more than {max} weights and biases; use a smaller batch")]
    BatchTooLarge {
        /// The number of images asked for.
        k: usize,
        /// The limit on weights and biases of the batched model.
        max: usize,
    },

    // ----- model file (MODEL-6, MODEL-7) -----
    /// The model file is not well-formed for the format (bad JSON, unknown
    /// or duplicate field, `null`, wrong type, out-of-range integer, trailing
    /// data; MODEL-6). The file is at fault.
    #[error("model file is not valid: {message}")]
    Json {
        /// What the parser found, echoing at most 200 characters of the
        /// file (MODEL-7).
        message: String,
    },
    /// The file's `format` field is not `"safhire-model"`: not a model file.
    #[error("model file: `format` is {found:?}, expected \"safhire-model\"")]
    NotAModel {
        /// The `format` value found (truncated as in MODEL-7).
        found: String,
    },
    /// The file declares a format version this build does not read
    /// (MODEL-6); a newer exporter wrote it.
    #[error("model file: unsupported version {version} (this build reads version 1)")]
    UnsupportedVersion {
        /// The version found.
        version: u64,
    },
    /// The file exceeds the byte limit of [`Limits`](super::Limits) and was
    /// refused before parsing (MODEL-7).
    #[error("model file is {bytes} bytes, more than the limit of {max}")]
    FileTooLarge {
        /// Size of the file in bytes.
        bytes: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The file holds more weights and biases in total than
    /// [`Limits`](super::Limits) allows; refused while parsing, before the
    /// excess is allocated (MODEL-7).
    #[error("model file holds more than {max} weights and biases")]
    TooManyParameters {
        /// The limit on weights and biases.
        max: usize,
    },
    /// The file holds more layers than [`Limits`](super::Limits) allows;
    /// refused while parsing (MODEL-7).
    #[error("model file holds more than {max} layers")]
    TooManyLayers {
        /// The limit on layers.
        max: usize,
    },
    #[error("model file: layer {layer} ({op}) lacks the required field `{field}`")]
    /// A layer lacks a field its op requires (MODEL-6); the file is at fault.
    MissingField {
        /// 0-based index of the layer in the file.
        layer: usize,
        /// The layer's op.
        op: &'static str,
        /// The missing field.
        field: &'static str,
    },
    #[error("model file: layer {layer} ({op}) has field `{field}`, which {op} does not take")]
    /// A layer carries a field its op does not take (MODEL-6), e.g. `weights`
    /// on a `relu`; the file is at fault.
    FieldNotAllowed {
        /// 0-based index of the layer in the file.
        layer: usize,
        /// The layer's op.
        op: &'static str,
        /// The field that is not allowed.
        field: &'static str,
    },
}

/// What would carry an accumulator that overflowed: the shipped sets with
/// enough bits, or the advice to requantise when none has.
fn fit_hint(source: &ParamError) -> String {
    let ParamError::AccumulatorOverflow { needed_bits, .. } = source else {
        return String::new();
    };
    let fitting: Vec<String> = crate::params::ParameterSet::shipped_all()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.plaintext_bits() >= *needed_bits)
        .map(|p| p.name().to_owned())
        .collect();
    if fitting.is_empty() {
        format!("no shipped set carries {needed_bits} bits: requantise the layer (smaller weights or activations)")
    } else {
        format!("shipped sets with enough bits: {}", fitting.join(", "))
    }
}
