//! The JSON model file, version 1 (spec/model-format.md, MODEL-6..MODEL-8).
//!
//! ```json
//! {"format":"safhire-model","version":1,"name":"tiny",
//!  "input":{"shape":[1,8,8],"min":0,"max":15},
//!  "layers":[{"op":"conv2d","out_channels":2,"kernel_h":3,"kernel_w":3,
//!             "stride":1,"padding":1,"weights":[...],"bias":[0,0]},
//!            {"op":"requantize","multiplier":3,"shift":4,"min":0,"max":15}, ...]}
//! ```
//!
//! Parsing is strict (unknown fields, fields the op does not take, `null`s
//! and duplicate keys are errors) and bounded: the text length, the total
//! number of weights and biases and the number of layers are limited
//! ([`Limits`]) and the latter two are enforced *while* parsing, so a hostile
//! file cannot make the parser allocate more than the limits allow. Every
//! error is a [`ModelError`] that says the model file is at fault.

use super::error::ModelError;
use super::ir::{InputSpec, Layer, Model, Shape};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

/// The `format` tag of a model file.
pub const FORMAT_TAG: &str = "safhire-model";
/// The version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// Size limits applied by [`Model::from_json_with_limits`] (MODEL-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Longest accepted file, in bytes.
    pub max_bytes: usize,
    /// Most weights and biases, summed over all layers.
    pub max_parameters: usize,
    /// Most layers.
    pub max_layers: usize,
}

impl Limits {
    /// 256 MiB, 10^8 weights and biases, 65 536 layers.
    pub const DEFAULT: Limits = Limits {
        max_bytes: 256 << 20,
        max_parameters: 100_000_000,
        max_layers: 65_536,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// ---------------------------------------------------------------------------
// Parse-time budget. serde's derive offers no way to pass state into nested
// deserializers, so the budget of the parse running on this thread lives in
// thread-locals, set and cleared by `Budget::start` / drop.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Exceeded {
    Parameters,
    Layers,
}

thread_local! {
    static PARAMETERS_LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    static LAYERS_LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    static EXCEEDED: Cell<Option<Exceeded>> = const { Cell::new(None) };
}

struct Budget;

impl Budget {
    fn start(limits: &Limits) -> Self {
        PARAMETERS_LEFT.with(|c| c.set(limits.max_parameters));
        LAYERS_LEFT.with(|c| c.set(limits.max_layers));
        EXCEEDED.with(|c| c.set(None));
        Budget
    }

    fn exceeded(&self) -> Option<Exceeded> {
        EXCEEDED.with(Cell::get)
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        PARAMETERS_LEFT.with(|c| c.set(usize::MAX));
        LAYERS_LEFT.with(|c| c.set(usize::MAX));
        EXCEEDED.with(|c| c.set(None));
    }
}

/// Takes one unit from `counter`; records `kind` and fails when none is left.
fn take<E: de::Error>(
    counter: &'static std::thread::LocalKey<Cell<usize>>,
    kind: Exceeded,
) -> Result<(), E> {
    let left = counter.with(Cell::get);
    if left == 0 {
        EXCEEDED.with(|c| c.set(Some(kind)));
        return Err(E::custom("size limit exceeded"));
    }
    counter.with(|c| c.set(left - 1));
    Ok(())
}

/// A JSON array, each element charged to a budget before it is stored.
struct BoundedSeq<T> {
    counter: &'static std::thread::LocalKey<Cell<usize>>,
    kind: Exceeded,
    _marker: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<T>()? {
            take::<A::Error>(self.counter, self.kind)?;
            out.push(v);
        }
        Ok(out)
    }
}

fn parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i64>>, D::Error> {
    d.deserialize_seq(BoundedSeq {
        counter: &PARAMETERS_LEFT,
        kind: Exceeded::Parameters,
        _marker: PhantomData,
    })
    .map(Some)
}

fn layer_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LayerV1>, D::Error> {
    let layers: Vec<Object<LayerV1>> = d.deserialize_seq(BoundedSeq {
        counter: &LAYERS_LEFT,
        kind: Exceeded::Layers,
        _marker: PhantomData,
    })?;
    Ok(layers.into_iter().map(|o| o.0).collect())
}

/// Accepts only a JSON object (serde's derive would also take an array of
/// the fields in order, which the format does not allow).
struct ObjectOnly<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(ObjectOnly(PhantomData))
}

/// A `T` that must be written as a JSON object.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Object)
    }
}

/// Parses the whole text as one JSON object of type `T` (no trailing data).
fn parse_object<'de, T: Deserialize<'de>>(json: &'de str) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value = object(&mut de)?;
    de.end()?;
    Ok(value)
}

/// An optional field that, when present, must not be `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------
// The file's serde types (MODEL-6).
// ---------------------------------------------------------------------------

/// Only `format` and `version`, read first so that a file of another format
/// or version gets a precise error (other fields are skipped unparsed).
#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "present")]
    format: Option<String>,
    #[serde(default, deserialize_with = "present")]
    version: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    format: String,
    version: u64,
    name: String,
    #[serde(deserialize_with = "object")]
    input: InputV1,
    #[serde(deserialize_with = "layer_list")]
    layers: Vec<LayerV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputV1 {
    shape: [usize; 3],
    min: i64,
    max: i64,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
enum Op {
    Conv2d,
    Linear,
    #[serde(rename = "avgpool")]
    AvgPool,
    #[serde(rename = "global_avgpool")]
    GlobalAvgPool,
    Flatten,
    ResidualAdd,
    Branch,
    #[default]
    Relu,
    #[serde(rename = "maxpool")]
    MaxPool,
    Requantize,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Conv2d => "conv2d",
            Op::Linear => "linear",
            Op::AvgPool => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::ResidualAdd => "residual_add",
            Op::Branch => "branch",
            Op::Relu => "relu",
            Op::MaxPool => "maxpool",
            Op::Requantize => "requantize",
        }
    }
}

/// One layer as written: the union of all ops' fields, each optional; which
/// ones an op requires or accepts is checked in [`LayerV1::into_layer`].
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LayerV1 {
    op: Op,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    out_channels: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    kernel_h: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    kernel_w: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    stride: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    padding: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    groups: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    out_features: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    kernel: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    from: Option<usize>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    multiplier: Option<i64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    shift: Option<u32>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    min: Option<i64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    max: Option<i64>,
    #[serde(
        default,
        deserialize_with = "parameters",
        skip_serializing_if = "Option::is_none"
    )]
    weights: Option<Vec<i64>>,
    #[serde(
        default,
        deserialize_with = "parameters",
        skip_serializing_if = "Option::is_none"
    )]
    bias: Option<Vec<i64>>,
}

/// Takes the fields of one layer, checking required / allowed ones.
struct Fields {
    spec: LayerV1,
    index: usize,
    op: &'static str,
}

impl Fields {
    fn missing(&self, field: &'static str) -> ModelError {
        ModelError::MissingField {
            layer: self.index,
            op: self.op,
            field,
        }
    }

    fn need<T>(&self, value: Option<T>, field: &'static str) -> Result<T, ModelError> {
        value.ok_or_else(|| self.missing(field))
    }

    /// Fails if any field other than `allowed` (and `op`) is present.
    fn only(&self, allowed: &[&'static str]) -> Result<(), ModelError> {
        let s = &self.spec;
        let present = [
            ("out_channels", s.out_channels.is_some()),
            ("kernel_h", s.kernel_h.is_some()),
            ("kernel_w", s.kernel_w.is_some()),
            ("stride", s.stride.is_some()),
            ("padding", s.padding.is_some()),
            ("groups", s.groups.is_some()),
            ("out_features", s.out_features.is_some()),
            ("kernel", s.kernel.is_some()),
            ("from", s.from.is_some()),
            ("multiplier", s.multiplier.is_some()),
            ("shift", s.shift.is_some()),
            ("min", s.min.is_some()),
            ("max", s.max.is_some()),
            ("weights", s.weights.is_some()),
            ("bias", s.bias.is_some()),
        ];
        match present
            .iter()
            .find(|(name, here)| *here && !allowed.contains(name))
        {
            Some((field, _)) => Err(ModelError::FieldNotAllowed {
                layer: self.index,
                op: self.op,
                field,
            }),
            None => Ok(()),
        }
    }
}

impl LayerV1 {
    /// MODEL-6: the IR layer, or which field is missing / not allowed.
    fn into_layer(self, index: usize) -> Result<Layer, ModelError> {
        let op = self.op;
        let mut f = Fields {
            spec: self,
            index,
            op: op.name(),
        };
        let layer = match op {
            Op::Conv2d => {
                f.only(&[
                    "out_channels",
                    "kernel_h",
                    "kernel_w",
                    "stride",
                    "padding",
                    "groups",
                    "weights",
                    "bias",
                ])?;
                let (weights, bias) = (f.spec.weights.take(), f.spec.bias.take());
                let s = &f.spec;
                Layer::Conv2d {
                    out_channels: f.need(s.out_channels, "out_channels")?,
                    kernel_h: f.need(s.kernel_h, "kernel_h")?,
                    kernel_w: f.need(s.kernel_w, "kernel_w")?,
                    stride: f.need(s.stride, "stride")?,
                    padding: f.need(s.padding, "padding")?,
                    groups: s.groups.unwrap_or(1),
                    weights: f.need(weights, "weights")?,
                    bias: f.need(bias, "bias")?,
                }
            }
            Op::Linear => {
                f.only(&["out_features", "weights", "bias"])?;
                let (weights, bias) = (f.spec.weights.take(), f.spec.bias.take());
                Layer::Linear {
                    out_features: f.need(f.spec.out_features, "out_features")?,
                    weights: f.need(weights, "weights")?,
                    bias: f.need(bias, "bias")?,
                }
            }
            Op::AvgPool | Op::MaxPool => {
                f.only(&["kernel", "stride"])?;
                let kernel = f.need(f.spec.kernel, "kernel")?;
                let stride = f.need(f.spec.stride, "stride")?;
                if op == Op::AvgPool {
                    Layer::AvgPool { kernel, stride }
                } else {
                    Layer::MaxPool { kernel, stride }
                }
            }
            Op::GlobalAvgPool | Op::Flatten | Op::Relu => {
                f.only(&[])?;
                match op {
                    Op::GlobalAvgPool => Layer::GlobalAvgPool,
                    Op::Flatten => Layer::Flatten,
                    _ => Layer::Relu,
                }
            }
            Op::ResidualAdd | Op::Branch => {
                f.only(&["from"])?;
                let from = f.need(f.spec.from, "from")?;
                if op == Op::Branch {
                    Layer::Branch { from }
                } else {
                    Layer::ResidualAdd { from }
                }
            }
            Op::Requantize => {
                f.only(&["multiplier", "shift", "min", "max"])?;
                let s = &f.spec;
                Layer::Requantize {
                    multiplier: f.need(s.multiplier, "multiplier")?,
                    shift: f.need(s.shift, "shift")?,
                    min: f.need(s.min, "min")?,
                    max: f.need(s.max, "max")?,
                }
            }
        };
        Ok(layer)
    }

    fn from_layer(layer: &Layer) -> Self {
        let mut s = LayerV1::default();
        match layer {
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
                s.op = Op::Conv2d;
                s.out_channels = Some(*out_channels);
                s.kernel_h = Some(*kernel_h);
                s.kernel_w = Some(*kernel_w);
                s.stride = Some(*stride);
                s.padding = Some(*padding);
                s.groups = (*groups != 1).then_some(*groups);
                s.weights = Some(weights.clone());
                s.bias = Some(bias.clone());
            }
            Layer::Linear {
                out_features,
                weights,
                bias,
            } => {
                s.op = Op::Linear;
                s.out_features = Some(*out_features);
                s.weights = Some(weights.clone());
                s.bias = Some(bias.clone());
            }
            Layer::AvgPool { kernel, stride } | Layer::MaxPool { kernel, stride } => {
                s.op = if matches!(layer, Layer::AvgPool { .. }) {
                    Op::AvgPool
                } else {
                    Op::MaxPool
                };
                s.kernel = Some(*kernel);
                s.stride = Some(*stride);
            }
            Layer::GlobalAvgPool => s.op = Op::GlobalAvgPool,
            Layer::Flatten => s.op = Op::Flatten,
            Layer::Relu => s.op = Op::Relu,
            Layer::ResidualAdd { from } => {
                s.op = Op::ResidualAdd;
                s.from = Some(*from);
            }
            Layer::Branch { from } => {
                s.op = Op::Branch;
                s.from = Some(*from);
            }
            Layer::Requantize {
                multiplier,
                shift,
                min,
                max,
            } => {
                s.op = Op::Requantize;
                s.multiplier = Some(*multiplier);
                s.shift = Some(*shift);
                s.min = Some(*min);
                s.max = Some(*max);
            }
        }
        s
    }
}

/// At most this many characters of text from the file are echoed in errors.
const ECHO_LIMIT: usize = 200;

fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn json_error(e: &serde_json::Error) -> ModelError {
    let full = e.to_string();
    let message = echo(&full);
    let message = if message.len() < full.len() && e.line() > 0 {
        // The location came after the cut.
        format!("{message} at line {} column {}", e.line(), e.column())
    } else {
        message
    };
    ModelError::Json { message }
}

impl Model {
    /// Parses and validates a model file with the default [`Limits`]
    /// (MODEL-6, MODEL-7). Never panics.
    pub fn from_json(json: &str) -> Result<Model, ModelError> {
        Self::from_json_with_limits(json, &Limits::DEFAULT)
    }

    /// Parses and validates a model file under `limits`: the length first,
    /// then `format` and `version`, then the whole file with the weight and
    /// layer budgets enforced during parsing, then MODEL-2's validation.
    pub fn from_json_with_limits(json: &str, limits: &Limits) -> Result<Model, ModelError> {
        if json.len() > limits.max_bytes {
            return Err(ModelError::FileTooLarge {
                bytes: json.len(),
                max: limits.max_bytes,
            });
        }
        let header: Header = parse_object(json).map_err(|e| json_error(&e))?;
        match header.format.as_deref() {
            Some(FORMAT_TAG) => {}
            Some(other) => return Err(ModelError::NotAModel { found: echo(other) }),
            None => {
                return Err(ModelError::Json {
                    message: "missing field `format`".to_owned(),
                })
            }
        }
        match header.version {
            Some(FORMAT_VERSION) => {}
            Some(version) => return Err(ModelError::UnsupportedVersion { version }),
            None => {
                return Err(ModelError::Json {
                    message: "missing field `version`".to_owned(),
                })
            }
        }
        let budget = Budget::start(limits);
        let file: FileV1 = match parse_object(json) {
            Ok(file) => file,
            Err(e) => {
                return Err(match budget.exceeded() {
                    Some(Exceeded::Parameters) => ModelError::TooManyParameters {
                        max: limits.max_parameters,
                    },
                    Some(Exceeded::Layers) => ModelError::TooManyLayers {
                        max: limits.max_layers,
                    },
                    None => json_error(&e),
                })
            }
        };
        drop(budget);
        let [channels, height, width] = file.input.shape;
        let input = InputSpec {
            shape: Shape::new(channels, height, width),
            min: file.input.min,
            max: file.input.max,
        };
        let layers = file
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| l.into_layer(i))
            .collect::<Result<Vec<_>, _>>()?;
        Model::new(file.name, input, layers)
    }

    /// MODEL-8: the model file of this model (compact JSON);
    /// `Model::from_json(&m.to_json()) == Ok(m)`.
    pub fn to_json(&self) -> String {
        let input = self.input();
        let file = FileV1 {
            format: FORMAT_TAG.to_owned(),
            version: FORMAT_VERSION,
            name: self.name().to_owned(),
            input: InputV1 {
                shape: [input.shape.channels, input.shape.height, input.shape.width],
                min: input.min,
                max: input.max,
            },
            layers: self.layers().iter().map(LayerV1::from_layer).collect(),
        };
        // Plain structs of strings, integers and sequences: serialising them
        // to a String cannot fail.
        serde_json::to_string(&file).unwrap_or_default()
    }
}
