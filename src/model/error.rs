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
    #[error("`{field}` must be positive, got 0")]
    ZeroSize { field: &'static str },
    #[error("`{field}` is so large that the size computation overflows")]
    SizeOverflow { field: &'static str },
    #[error("the tensor would hold {len} values, more than the limit of {max}")]
    TensorTooLarge { len: usize, max: usize },
    #[error("`{field}` = {kernel} exceeds the (padded) input size {input}")]
    KernelTooLarge {
        field: &'static str,
        kernel: usize,
        input: usize,
    },
    #[error("groups = {groups} is not supported (only groups = 1)")]
    UnsupportedGroups { groups: usize },
    #[error("expected {expected} weights, got {got}")]
    WeightCount { expected: usize, got: usize },
    #[error("expected {expected} bias values (one per output), got {got}")]
    BiasCount { expected: usize, got: usize },
    #[error(
        "input shape {shape} is not flat: linear needs [features, 1, 1] (insert a flatten layer)"
    )]
    NotFlat { shape: Shape },
    #[error("`from` = {from} does not name an earlier layer")]
    FromNotEarlier { from: usize },
    #[error("layer {from} outputs shape {from_shape}, but this layer's input has shape {input}")]
    ShapeMismatch {
        from: usize,
        from_shape: Shape,
        input: Shape,
    },
    #[error("multiplier must be positive, got {multiplier}")]
    NonPositiveMultiplier { multiplier: i64 },
    #[error("shift = {shift} exceeds the maximum 62")]
    ShiftTooLarge { shift: u32 },
    #[error("min = {min} exceeds max = {max}")]
    InvertedRange { min: i64, max: i64 },
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
    #[error("model has no layers")]
    NoLayers,
    #[error("model name is {len} bytes long, more than the limit of {max}")]
    NameTooLong { len: usize, max: usize },
    #[error("model input: {problem}")]
    Input { problem: LayerProblem },
    #[error("layer {layer} ({op}): {problem}")]
    Layer {
        layer: usize,
        op: &'static str,
        problem: LayerProblem,
    },

    // ----- evaluation (MODEL-4) -----
    #[error("no layer {index}: the model has {layers} layers")]
    NoSuchLayer { index: usize, layers: usize },
    #[error("input has {got} values, the model expects {expected}")]
    InputLength { expected: usize, got: usize },
    #[error("input value {index} is {value}, outside the declared input range [{min}, {max}]")]
    InputOutOfRange {
        index: usize,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("layer {layer} ({op}): integer overflow (an exact value does not fit i64)")]
    Overflow { layer: usize, op: &'static str },

    // ----- accumulator check (MODEL-5) -----
    #[error("layer {layer} ({op}): {source}; {}", fit_hint(.source))]
    AccumulatorOverflow {
        layer: usize,
        op: &'static str,
        source: ParamError,
    },

    // ----- model file (MODEL-6, MODEL-7) -----
    #[error("model file is not valid: {message}")]
    Json { message: String },
    #[error("model file: `format` is {found:?}, expected \"safhire-model\"")]
    NotAModel { found: String },
    #[error("model file: unsupported version {version} (this build reads version 1)")]
    UnsupportedVersion { version: u64 },
    #[error("model file is {bytes} bytes, more than the limit of {max}")]
    FileTooLarge { bytes: usize, max: usize },
    #[error("model file holds more than {max} weights and biases")]
    TooManyParameters { max: usize },
    #[error("model file holds more than {max} layers")]
    TooManyLayers { max: usize },
    #[error("model file: layer {layer} ({op}) lacks the required field `{field}`")]
    MissingField {
        layer: usize,
        op: &'static str,
        field: &'static str,
    },
    #[error("model file: layer {layer} ({op}) has field `{field}`, which {op} does not take")]
    FieldNotAllowed {
        layer: usize,
        op: &'static str,
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
