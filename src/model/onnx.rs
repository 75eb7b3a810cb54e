//! Import of quantised ONNX graphs into the integer IR (feature `onnx`,
//! requirement **MODEL-10**).
//!
//! [`import_onnx`] reads an ONNX file (parsed with the protobuf types of the
//! `tract-onnx` crate, [`tract_onnx::pb`]; no hand-written protobuf parser)
//! holding a statically quantised CNN or MLP chain and translates it into an
//! exact integer [`Model`]. Every problem is an [`OnnxError`] that says the
//! ONNX file is at fault and, for a node, names it (index in the graph's node
//! list, name and operator). Import never panics, on any input: the file
//! size, the number of nodes and the total number of tensor elements are
//! bounded ([`MAX_ONNX_BYTES`], [`MAX_NODES`], [`MAX_ELEMENTS`]), all size
//! arithmetic is checked, and nothing taken from the file is unwrapped.
//!
//! # Accepted graphs
//!
//! One graph input, the float image `[N, C, H, W]` or feature vector `[N, F]`
//! (`N` = 1 or symbolic; dropped), immediately quantised by a per-tensor
//! `QuantizeLinear`; one graph output. Nodes must be topologically sorted
//! (the ONNX rule); nodes the output does not depend on are ignored.
//! Supported operators (domain `ai.onnx` unless noted):
//!
//! * quantisation: `QuantizeLinear`, `DequantizeLinear` (per tensor only:
//!   scale and zero point are single values; `block_size` must be 0);
//! * QOperator format: `QLinearConv`, `QLinearMatMul`, and from
//!   `com.microsoft`: `QGemm`, `QLinearAveragePool`,
//!   `QLinearGlobalAveragePool` (`channels_last = 0`), `QLinearAdd`;
//! * QDQ format (what onnxruntime's `quantize_static` writes by default):
//!   float `Conv`, `MatMul`, `Gemm` whose weights are `DequantizeLinear` of
//!   integer initialisers, `AveragePool`, `GlobalAveragePool`, `Relu`, `Add`,
//!   each between `DequantizeLinear` / `QuantizeLinear` nodes;
//! * layout: `Flatten` (`axis` 0 or 1), `Reshape` to `[1, n]` / `[n]`,
//!   `Identity`, `Constant`.
//!
//! Refused, naming the node: any other operator (e.g. `MaxPool`, `Sigmoid`,
//! `ConvInteger`, `MatMulInteger`, `Softmax`), grouped or dilated
//! convolutions, asymmetric or `SAME_*` padding, pooling with padding,
//! `ceil_mode`, non-square pooling windows, per-channel quantisation, a
//! non-zero weight zero point, a bias whose scale is not input scale × weight
//! scale, `transA = 1`, an `Add` whose operands have different scales or that
//! adds a constant, `Relu` directly on a quantised integer tensor.
//!
//! # Mapping to the integer IR
//!
//! Every activation is represented by an integer IR tensor `t` and a real
//! scale `s` with *value = s·t*. A quantised tensor `q` with zero point `zp`
//! is represented as `t = q − zp` (so value = `s·(q − zp)`, the ONNX
//! dequantisation), a float tensor computed from such tensors by a linear op
//! by its exact integer accumulator.
//!
//! * **Input.** `QuantizeLinear(x, s, zp)` of the graph input, type range
//!   `[qmin, qmax]`, becomes the model input `{shape [C, H, W], min: qmin −
//!   zp, max: qmax − zp}`: the IR input is `q − zp` where `q` is the
//!   quantised input (round half to even of `x/s` plus `zp`, clamped).
//! * **Weights** must be integer initialisers (int8 in practice) with zero
//!   point 0 and a per-tensor scale `s_w`; they are copied unchanged (Conv:
//!   OIHW as in ONNX; MatMul `B[K, N]` and Gemm with `transB = 0` are
//!   transposed to the IR's row-major `out × in`).
//! * **conv2d / linear.** On an input of scale `s_x` the accumulator has
//!   scale `s_x·s_w` (`alpha·s_x·s_w` for Gemm/QGemm). The bias must be an
//!   int32 tensor at that scale (QLinearConv's and QGemm's by definition, a
//!   `DequantizeLinear` with scale `s_x·s_w` within a relative 1e-5 in QDQ),
//!   copied unchanged; a float bias is rounded (half to even) to that scale.
//!   Zero padding is exact: padding in the IR inserts `t = 0`, i.e. the
//!   value `s·0 = 0` = the real zero ONNX pads with — which is the quantised
//!   `q = zp`, exactly what QLinearConv pads with — whatever the input's
//!   zero point.
//! * **Requantisation.** `QuantizeLinear(y, s_out, zp_out)` of a tensor of
//!   scale `s` (and the output stage of every QLinear op) is
//!   `q = clamp(round(s·t/s_out) + zp_out, qmin, qmax)`, i.e.
//!   `q − zp_out = clamp(round(M·t), qmin − zp_out, qmax − zp_out)` with
//!   `M = s/s_out`: a `requantize` layer with `min = qmin − zp_out`,
//!   `max = qmax − zp_out` and the fixed-point `multiplier = round(M·2^shift)`
//!   for the largest `shift ≤ 62` that keeps `multiplier < 2^31`. Then
//!   `multiplier ≥ 2^30` unless the shift is capped at 62, so the relative
//!   error of `multiplier/2^shift` against `M` (computed in `f64` from the
//!   file's `f32` scales) is at most `2^−31`. A `QuantizeLinear` that maps a
//!   quantised tensor to the same scale and a range that contains it
//!   (`Q(DQ(q))` with equal parameters) is the identity and emits nothing.
//! * **Rounding.** The IR rounds half away from zero, onnxruntime half to
//!   even in `f32` with an `f32` multiplier: on exact ties (e.g. a 2×2
//!   average of integers, `M = 1/4`) and values within ~1e-7 relative of a
//!   rounding boundary the two can differ by 1 in an intermediate value;
//!   such differences can propagate to a few units in later layers.
//!   Measured on the fixtures (tests/onnx.rs, onnxruntime 1.32.0, 40
//!   digits): the QOperator graph is bit-exact (400/400 logits); in the QDQ
//!   graph every stage is bit-exact except the 2×2 pool requantised by
//!   `M = 1/4`, where 356 of 3840 values are ties that the IR rounds up and
//!   onnxruntime down, which leaves 122/400 logits equal (max |diff| 5) and
//!   the argmax equal on 40/40.
//! * **ReLU** is exact either way: a `Relu` node on a tensor of scale `s > 0`
//!   is the IR `relu` on `t` (`max(s·t, 0) = s·max(t, 0)`); a ReLU fused by
//!   the quantiser into the following `QuantizeLinear` (zero point `= qmin`,
//!   as onnxruntime does) is the `requantize` clamp at `min = qmin − zp = 0`.
//! * **Pools.** `AveragePool` (kernel `k × k`, no padding) is the IR
//!   `avgpool` (a *sum*) and divides the scale by `k²`; `GlobalAveragePool`
//!   is `global_avgpool` and divides it by `H·W`: the `1/k²` ends up in the
//!   next requantisation's `M`.
//! * **Flatten / Reshape** to flat is the IR `flatten` (nothing if already
//!   flat); **Add** of two activations of equal scale (relative 1e-6) is
//!   `residual_add` (value `s·t_a + s·t_b = s·(t_a + t_b)`); the graph is
//!   linearised with `branch` when an operand is not the latest layer.
//!
//! # What the imported model outputs
//!
//! The integer `t` with *graph output = s·t*: when the graph ends in
//! `QuantizeLinear` (+ `DequantizeLinear`), as quantize_static writes it,
//! `t = q − zp_out`, the requantised logits minus their zero point; when the
//! graph's output is an unquantised accumulator, `t` is that accumulator.
//! [`OnnxImport::output_scale`] and [`OnnxImport::output_zero_point`] give
//! `s` and `zp_out`. Dequantisation by a positive scale does not change the
//! argmax, so the predicted class is the argmax of the IR output.

use super::error::ModelError;
use super::ir::{InputSpec, Layer, Model, Shape, MAX_TENSOR_LEN};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use thiserror::Error;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::tract_core::framework::Framework;

/// Largest accepted ONNX file, in bytes (256 MiB, as for model files).
pub const MAX_ONNX_BYTES: usize = 256 << 20;
/// Most nodes in the graph.
pub const MAX_NODES: usize = 65_536;
/// Most tensor elements (initialisers and constants) in total (10^8).
pub const MAX_ELEMENTS: usize = 100_000_000;

/// The operators [`import_onnx`] understands (MODEL-10).
pub const SUPPORTED_OPS: &str = "QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, \
     QGemm, QLinearAveragePool, QLinearGlobalAveragePool, QLinearAdd, Conv, MatMul, Gemm, \
     AveragePool, GlobalAveragePool, Relu, Add, Flatten, Reshape, Identity, Constant";

/// Longest name echoed in an error message.
const MAX_ECHO: usize = 64;

/// Relative tolerance for two scales to count as equal (both come from `f32`).
const SCALE_TOLERANCE: f64 = 1e-6;
/// Relative tolerance between a bias scale and input scale × weight scale.
const BIAS_SCALE_TOLERANCE: f64 = 1e-5;

/// Why an ONNX file was refused. Every variant is a fault of the ONNX file
/// (or of reading it); node errors name the node's index, name and operator.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The file could not be opened or read (missing, permissions, I/O).
    #[error("ONNX file {path:?} could not be read: {message}")]
    Io {
        /// Path of the file (truncated for the message).
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The file exceeds [`MAX_ONNX_BYTES`]; refused before decoding.
    #[error("ONNX file is {bytes} bytes, more than the limit of {max}")]
    FileTooLarge {
        /// Size of the file in bytes.
        bytes: usize,
        /// The limit, [`MAX_ONNX_BYTES`].
        max: usize,
    },
    /// The bytes are not a decodable ONNX `ModelProto`: not an ONNX file, or
    /// a corrupt one.
    #[error("ONNX file is not a valid ONNX protobuf: {message}")]
    Decode {
        /// The protobuf decoder's message.
        message: String,
    },
    /// The graph as a whole is outside the accepted shape (no graph, an opset
    /// older than 10, more than [`MAX_NODES`] nodes, not exactly one float
    /// input of an accepted shape quantised by a `QuantizeLinear`, not
    /// exactly one output, no layers, …).
    #[error("ONNX file: {problem}")]
    Graph {
        /// What is wrong with the graph.
        problem: String,
    },
    /// An initialiser or constant tensor cannot be used (external or
    /// segmented data, negative or overflowing dimensions, wrong data type or
    /// length, or more than [`MAX_ELEMENTS`] elements in the file in total).
    #[error("ONNX file: tensor {name:?}: {problem}")]
    Tensor {
        /// The tensor's name (truncated).
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A node the output depends on uses an operator outside the supported
    /// list (module docs); re-export the model with supported operators.
    #[error("ONNX node {index} {name:?} (op {op}): unsupported operator; supported: {supported}")]
    UnsupportedOperator {
        /// Index of the node in the graph's node list.
        index: usize,
        /// The node's name (truncated).
        name: String,
        /// The node's operator type (truncated).
        op: String,
        /// The list of supported operators, for the message.
        supported: &'static str,
    },
    /// A supported operator with an attribute value the translation does not
    /// handle (groups, dilations, asymmetric or `SAME_*` padding,
    /// `ceil_mode`, `transA = 1`, …).
    #[error(
        "ONNX node {index} {name:?} (op {op}): unsupported attribute `{attribute}`: {problem}"
    )]
    UnsupportedAttribute {
        /// Index of the node in the graph's node list.
        index: usize,
        /// The node's name (truncated).
        name: String,
        /// The node's operator.
        op: String,
        /// The attribute's name.
        attribute: String,
        /// Why its value is refused.
        problem: String,
    },
    /// A supported node that cannot be translated exactly (per-channel
    /// quantisation, a non-zero weight zero point, a bias scale that is not
    /// input × weight scale, mismatched `Add` scales, missing inputs, …).
    #[error("ONNX node {index} {name:?} (op {op}): {problem}")]
    Node {
        /// Index of the node in the graph's node list.
        index: usize,
        /// The node's name (truncated).
        name: String,
        /// The node's operator.
        op: String,
        /// What prevents the translation.
        problem: String,
    },
    /// The graph translated, but the resulting integer model fails IR
    /// validation (MODEL-2), e.g. a kernel larger than its input.
    #[error("ONNX file translates to a model the IR refuses: {0}")]
    Model(#[from] ModelError),
}

/// An imported model and the quantisation of its input and output
/// (MODEL-10).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxImport {
    /// The integer model; its input is `q − input_zero_point`.
    pub model: Model,
    /// Scale of the graph input's `QuantizeLinear`.
    pub input_scale: f64,
    /// Zero point of the graph input's `QuantizeLinear`: the IR input is the
    /// quantised input `q` minus it.
    pub input_zero_point: i64,
    /// `s` with graph output `= s · t` for the IR output `t`.
    pub output_scale: f64,
    /// When the graph quantises its output: the zero point `zp` with ONNX's
    /// quantised output `q = t + zp`; `None` for an unquantised accumulator.
    pub output_zero_point: Option<i64>,
}

/// Imports an ONNX file's bytes (MODEL-10). See the module docs for what is
/// supported and how it maps to the IR.
pub fn import_onnx(bytes: &[u8]) -> Result<Model, OnnxError> {
    import_onnx_detailed(bytes).map(|import| import.model)
}

/// [`import_onnx`] of the file at `path` (refused before reading if larger
/// than [`MAX_ONNX_BYTES`]).
pub fn import_onnx_file(path: impl AsRef<Path>) -> Result<Model, OnnxError> {
    let path = path.as_ref();
    let io = |e: std::io::Error| OnnxError::Io {
        path: echo(&path.display().to_string()),
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_ONNX_BYTES as u64 {
        return Err(OnnxError::FileTooLarge {
            bytes: usize::try_from(len).unwrap_or(usize::MAX),
            max: MAX_ONNX_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    import_onnx(&bytes)
}

/// [`import_onnx`], also returning the input and output quantisation.
pub fn import_onnx_detailed(bytes: &[u8]) -> Result<OnnxImport, OnnxError> {
    if bytes.len() > MAX_ONNX_BYTES {
        return Err(OnnxError::FileTooLarge {
            bytes: bytes.len(),
            max: MAX_ONNX_BYTES,
        });
    }
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| OnnxError::Decode {
            message: echo(&format!("{e:#}")),
        })?;
    let graph = proto.graph.as_ref().ok_or_else(|| graph_err("no graph"))?;
    // The default-domain opset must be declared (an ONNX requirement; it
    // also refuses most truncated files that still decode). QuantizeLinear
    // and DequantizeLinear exist from opset 10.
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    match opset {
        Some(v) if v >= 10 => {}
        Some(v) => return Err(graph_err(format!("opset {v} is too old (need ≥ 10)"))),
        None => return Err(graph_err("no opset_import for the default ONNX domain")),
    }
    let name = if graph.name.is_empty() {
        "onnx".to_string()
    } else {
        truncate(&graph.name, super::ir::MAX_NAME_LEN)
    };
    Importer::new(graph)?.run(graph, name)
}

// ---------------------------------------------------------------------------
// Errors helpers
// ---------------------------------------------------------------------------

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// At most ~180 bytes of a message derived from the file (MODEL-7's spirit:
/// no error echoes more than 200 characters of the file).
fn echo(s: &str) -> String {
    truncate(s, 180)
}

fn graph_err(problem: impl Into<String>) -> OnnxError {
    OnnxError::Graph {
        problem: problem.into(),
    }
}

fn tensor_err(name: &str, problem: impl Into<String>) -> OnnxError {
    OnnxError::Tensor {
        name: truncate(name, MAX_ECHO),
        problem: problem.into(),
    }
}

/// The node being translated, for error messages.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    index: usize,
    node: &'a pb::NodeProto,
}

impl Ctx<'_> {
    fn name(&self) -> String {
        truncate(&self.node.name, MAX_ECHO)
    }
    fn op(&self) -> String {
        truncate(&self.node.op_type, MAX_ECHO)
    }
    fn err(&self, problem: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            index: self.index,
            name: self.name(),
            op: self.op(),
            problem: problem.into(),
        }
    }
    fn attr_err(&self, attribute: &str, problem: impl Into<String>) -> OnnxError {
        OnnxError::UnsupportedAttribute {
            index: self.index,
            name: self.name(),
            op: self.op(),
            attribute: truncate(attribute, MAX_ECHO),
            problem: problem.into(),
        }
    }
    fn unsupported(&self) -> OnnxError {
        let op = if self.node.domain.is_empty() || self.node.domain == "ai.onnx" {
            self.op()
        } else {
            format!("{}.{}", truncate(&self.node.domain, MAX_ECHO), self.op())
        };
        OnnxError::UnsupportedOperator {
            index: self.index,
            name: self.name(),
            op,
            supported: SUPPORTED_OPS,
        }
    }

    fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    fn int_attr(&self, name: &str, default: i64) -> Result<i64, OnnxError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.r#type == AttributeType::Int as i32 => Ok(a.i),
            Some(_) => Err(self.attr_err(name, "expected an integer")),
        }
    }
    fn float_attr(&self, name: &str, default: f32) -> Result<f32, OnnxError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.r#type == AttributeType::Float as i32 => Ok(a.f),
            Some(_) => Err(self.attr_err(name, "expected a float")),
        }
    }
    fn ints_attr(&self, name: &str) -> Result<Option<&[i64]>, OnnxError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == AttributeType::Ints as i32 => Ok(Some(&a.ints)),
            Some(_) => Err(self.attr_err(name, "expected a list of integers")),
        }
    }
    fn string_attr(&self, name: &str) -> Result<Option<&[u8]>, OnnxError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == AttributeType::String as i32 => Ok(Some(&a.s)),
            Some(_) => Err(self.attr_err(name, "expected a string")),
        }
    }
    /// Refuses every attribute not in `known`.
    fn only_attrs(&self, known: &[&str]) -> Result<(), OnnxError> {
        match self
            .node
            .attribute
            .iter()
            .find(|a| !known.contains(&a.name.as_str()))
        {
            Some(a) => Err(self.attr_err(&a.name, "not supported by the importer")),
            None => Ok(()),
        }
    }
    /// Input `i` (`None` if absent or the empty name of an omitted optional input).
    fn input(&self, i: usize) -> Option<&str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
    fn required(&self, i: usize) -> Result<&str, OnnxError> {
        self.input(i)
            .ok_or_else(|| self.err(format!("missing required input {i}")))
    }
}

// ---------------------------------------------------------------------------
// Values of the graph
// ---------------------------------------------------------------------------

/// Where an IR tensor comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Input,
    Layer(usize),
}

/// A quantised integer type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct QType {
    qmin: i64,
    qmax: i64,
}

fn qtype_of(data_type: i32) -> Option<QType> {
    let (qmin, qmax) = match DataType::try_from(data_type).ok()? {
        DataType::Uint8 => (0, 255),
        DataType::Int8 => (-128, 127),
        DataType::Uint16 => (0, 65_535),
        DataType::Int16 => (-32_768, 32_767),
        DataType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => return None,
    };
    Some(QType { qmin, qmax })
}

/// A runtime tensor: IR tensor `t` (output of `at`) with value `scale · t`.
#[derive(Clone, Copy, Debug)]
struct Act {
    at: Source,
    shape: Shape,
    /// Whether the ONNX tensor is 2-D `[1, F]` (else 4-D `[1, C, H, W]`).
    flat2d: bool,
    scale: f64,
    /// For an ONNX quantised tensor `q = t + zp`: `zp`.
    zero_point: Option<i64>,
    /// A range known to contain every value of `t`, if any.
    range: Option<(i64, i64)>,
}

/// Numeric content of a constant tensor.
#[derive(Clone, Debug)]
enum Data {
    /// Integer elements and their ONNX type.
    Int(Vec<i64>, i32),
    Float(Vec<f64>),
    /// `DequantizeLinear(values, scale, zero_point)` of an integer constant.
    Dequant {
        values: Vec<i64>,
        scale: f64,
        zero_point: i64,
    },
}

#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Data,
}

impl Const {
    fn len(&self) -> usize {
        match &self.data {
            Data::Int(v, _) | Data::Dequant { values: v, .. } => v.len(),
            Data::Float(v) => v.len(),
        }
    }
}

#[derive(Clone, Debug)]
enum Value {
    /// The float graph input, not yet quantised.
    FloatInput,
    Act(Act),
    Const(Const),
}

/// Converts an initialiser / constant to a [`Const`], charging its elements
/// to `budget`.
fn read_tensor(t: &pb::TensorProto, budget: &mut usize) -> Result<Const, OnnxError> {
    let name = &t.name;
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
        || !t.external_data.is_empty()
    {
        return Err(tensor_err(name, "external data is not supported"));
    }
    if t.segment.is_some() {
        return Err(tensor_err(name, "segmented tensors are not supported"));
    }
    let mut dims = Vec::with_capacity(t.dims.len().min(8));
    let mut len: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| tensor_err(name, "negative dimension"))?;
        len = len
            .checked_mul(d)
            .ok_or_else(|| tensor_err(name, "size overflows"))?;
        dims.push(d);
    }
    if len > *budget {
        return Err(tensor_err(
            name,
            format!("more than {MAX_ELEMENTS} tensor elements in the file"),
        ));
    }
    *budget -= len;
    let raw = &t.raw_data;
    let wrong = |got: usize| {
        tensor_err(
            name,
            format!("holds {got} values, its dimensions say {len}"),
        )
    };
    let raw_check = |width: usize| -> Result<(), OnnxError> {
        if len.checked_mul(width) != Some(raw.len()) {
            Err(tensor_err(
                name,
                format!(
                    "raw data is {} bytes, expected {len} values of {width} bytes",
                    raw.len()
                ),
            ))
        } else {
            Ok(())
        }
    };
    let dt = DataType::try_from(t.data_type)
        .map_err(|_| tensor_err(name, format!("unknown data type {}", t.data_type)))?;
    let data = match dt {
        DataType::Float => {
            if !raw.is_empty() {
                raw_check(4)?;
                Data::Float(
                    raw.chunks_exact(4)
                        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                )
            } else if t.float_data.len() == len {
                Data::Float(t.float_data.iter().map(|&f| f64::from(f)).collect())
            } else {
                return Err(wrong(t.float_data.len()));
            }
        }
        DataType::Double => {
            if !raw.is_empty() {
                raw_check(8)?;
                Data::Float(
                    raw.chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                )
            } else if t.double_data.len() == len {
                Data::Float(t.double_data.clone())
            } else {
                return Err(wrong(t.double_data.len()));
            }
        }
        DataType::Uint8 | DataType::Int8 | DataType::Uint16 | DataType::Int16 | DataType::Int32 => {
            let width = match dt {
                DataType::Uint8 | DataType::Int8 => 1,
                DataType::Uint16 | DataType::Int16 => 2,
                _ => 4,
            };
            let values: Vec<i64> = if !raw.is_empty() {
                raw_check(width)?;
                raw.chunks_exact(width)
                    .map(|c| match (dt, c) {
                        (DataType::Uint8, [a]) => i64::from(*a),
                        (DataType::Int8, [a]) => i64::from(*a as i8),
                        (DataType::Uint16, [a, b]) => i64::from(u16::from_le_bytes([*a, *b])),
                        (DataType::Int16, [a, b]) => i64::from(i16::from_le_bytes([*a, *b])),
                        (_, [a, b, c, d]) => i64::from(i32::from_le_bytes([*a, *b, *c, *d])),
                        _ => 0, // unreachable: chunks_exact(width) matches dt
                    })
                    .collect()
            } else if t.int32_data.len() == len {
                // int32_data holds the values of the narrow types too; check
                // they are in the type's range.
                let q = qtype_of(t.data_type).ok_or_else(|| wrong(0))?;
                let values: Vec<i64> = t.int32_data.iter().map(|&v| i64::from(v)).collect();
                if values.iter().any(|v| *v < q.qmin || *v > q.qmax) {
                    return Err(tensor_err(name, "a value is out of its type's range"));
                }
                values
            } else {
                return Err(wrong(t.int32_data.len()));
            };
            Data::Int(values, t.data_type)
        }
        DataType::Int64 => {
            if !raw.is_empty() {
                raw_check(8)?;
                Data::Int(
                    raw.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                    t.data_type,
                )
            } else if t.int64_data.len() == len {
                Data::Int(t.int64_data.clone(), t.data_type)
            } else {
                return Err(wrong(t.int64_data.len()));
            }
        }
        other => {
            return Err(tensor_err(
                name,
                format!("data type {} is not supported", other.as_str_name()),
            ))
        }
    };
    Ok(Const { dims, data })
}

// ---------------------------------------------------------------------------
// Fixed-point requantisation
// ---------------------------------------------------------------------------

/// `(multiplier, shift)` with `multiplier / 2^shift ≈ m`: the largest
/// `shift ≤ 62` with `round(m·2^shift) < 2^31`. `None` if `m` is not a
/// positive finite number representable that way.
fn fixed_point(m: f64) -> Option<(i64, u32)> {
    if !(m.is_finite() && m > 0.0) {
        return None;
    }
    let limit = 2f64.powi(31);
    for shift in (0..=62u32).rev() {
        let scaled = (m * 2f64.powi(shift as i32)).round();
        if scaled < limit {
            return if scaled >= 1.0 {
                // 1 ≤ scaled < 2^31: exact conversion.
                Some((scaled as i64, shift))
            } else {
                None
            };
        }
    }
    None
}

fn relative_eq(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.abs().max(b.abs())
}

/// Round half to even (onnxruntime's rounding) of a finite `f64` into `i64`.
fn round_even(x: f64) -> Option<i64> {
    if !x.is_finite() || x.abs() >= 2f64.powi(62) {
        return None;
    }
    // |x| < 2^62: exact conversion after rounding.
    Some(x.round_ties_even() as i64)
}

// ---------------------------------------------------------------------------
// The importer
// ---------------------------------------------------------------------------

struct Importer {
    values: HashMap<String, Value>,
    layers: Vec<Layer>,
    /// Output shape of every emitted layer.
    shapes: Vec<Shape>,
    budget: usize,
    input_shape: Shape,
    input_flat2d: bool,
    /// `(scale, zero point, type)` of the graph input's quantisation.
    input_quant: Option<(f64, i64, QType)>,
}

/// Parses a graph-input dimension: `None` for a symbolic/unknown one.
fn dim_value(d: &pb::tensor_shape_proto::Dimension) -> Option<i64> {
    match d.value {
        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
        _ => None,
    }
}

impl Importer {
    fn new(graph: &pb::GraphProto) -> Result<Self, OnnxError> {
        if graph.node.len() > MAX_NODES {
            return Err(graph_err(format!(
                "{} nodes, more than the limit of {MAX_NODES}",
                graph.node.len()
            )));
        }
        let mut budget = MAX_ELEMENTS;
        let mut values = HashMap::new();
        for t in &graph.initializer {
            let c = read_tensor(t, &mut budget)?;
            values.insert(t.name.clone(), Value::Const(c));
        }
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !values.contains_key(&i.name))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            _ => {
                return Err(graph_err(format!(
                    "expected exactly one graph input (besides initialisers), found {}",
                    inputs.len()
                )))
            }
        };
        let tensor_type = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t,
            _ => return Err(graph_err("the graph input is not a tensor")),
        };
        if tensor_type.elem_type != DataType::Float as i32 {
            return Err(graph_err(
                "the graph input must be float, quantised by a QuantizeLinear node",
            ));
        }
        let dims: Vec<Option<i64>> = tensor_type
            .shape
            .as_ref()
            .map(|s| s.dim.iter().map(dim_value).collect())
            .unwrap_or_default();
        let bad_shape = || {
            graph_err(format!(
                "graph input shape {dims:?} is not [N, C, H, W] or [N, F] with N = 1 or symbolic"
            ))
        };
        let mut sizes = Vec::with_capacity(3);
        match dims.first() {
            Some(None) | Some(Some(1)) => {}
            _ => return Err(bad_shape()),
        }
        for d in dims.iter().skip(1) {
            match d {
                Some(v) if *v >= 1 => {
                    sizes.push(usize::try_from(*v).map_err(|_| bad_shape())?);
                }
                _ => return Err(bad_shape()),
            }
        }
        let (input_shape, input_flat2d) = match sizes.as_slice() {
            [c, h, w] => (Shape::new(*c, *h, *w), false),
            [f] => (Shape::new(*f, 1, 1), true),
            _ => return Err(bad_shape()),
        };
        match input_shape.len() {
            Some(n) if n <= MAX_TENSOR_LEN => {}
            _ => return Err(graph_err("the graph input is too large")),
        }
        values.insert(input.name.clone(), Value::FloatInput);
        Ok(Self {
            values,
            layers: Vec::new(),
            shapes: Vec::new(),
            budget,
            input_shape,
            input_flat2d,
            input_quant: None,
        })
    }

    fn run(mut self, graph: &pb::GraphProto, name: String) -> Result<OnnxImport, OnnxError> {
        let output = match graph.output.as_slice() {
            [one] => one.name.clone(),
            other => {
                return Err(graph_err(format!(
                    "expected exactly one graph output, found {}",
                    other.len()
                )))
            }
        };
        let live = live_nodes(graph, &output);
        for (index, node) in graph.node.iter().enumerate() {
            if !live.contains(&index) {
                continue;
            }
            let ctx = Ctx { index, node };
            let value = self.node(ctx)?;
            match node.output.as_slice() {
                [out] if !out.is_empty() => {
                    if self.values.contains_key(out) {
                        return Err(ctx.err(format!(
                            "output {:?} is already defined",
                            truncate(out, MAX_ECHO)
                        )));
                    }
                    self.values.insert(out.clone(), value);
                }
                _ => return Err(ctx.err("expected exactly one output")),
            }
        }
        let act = match self.values.get(&output) {
            Some(Value::Act(a)) => *a,
            Some(Value::FloatInput) => {
                return Err(graph_err("the graph output is the unquantised graph input"))
            }
            Some(Value::Const(_)) => return Err(graph_err("the graph output is a constant")),
            None => {
                return Err(graph_err(format!(
                    "the graph output {:?} is produced by no node",
                    truncate(&output, MAX_ECHO)
                )))
            }
        };
        if self.layers.is_empty() {
            return Err(graph_err("the graph has no layers"));
        }
        self.make_current(act.at)
            .map_err(|p| graph_err(format!("graph output: {p}")))?;
        let (input_scale, input_zero_point, q) = self
            .input_quant
            .ok_or_else(|| graph_err("the graph input is never quantised"))?;
        let input = InputSpec {
            shape: self.input_shape,
            min: q.qmin - input_zero_point,
            max: q.qmax - input_zero_point,
        };
        // A graph ending in DequantizeLinear outputs s·(q − zp): report the
        // zero point of the quantised tensor it reads.
        let output_zero_point = act.zero_point.or_else(|| {
            let node = graph
                .node
                .iter()
                .find(|n| n.output.first() == Some(&output))?;
            if node.op_type != "DequantizeLinear" {
                return None;
            }
            match self.values.get(node.input.first()?)? {
                Value::Act(a) => a.zero_point,
                _ => None,
            }
        });
        let model = Model::new(name, input, self.layers)?;
        Ok(OnnxImport {
            model,
            input_scale,
            input_zero_point,
            output_scale: act.scale,
            output_zero_point,
        })
    }

    // ----- layer emission -------------------------------------------------

    /// The source of the latest layer's output.
    fn current(&self) -> Source {
        match self.layers.len() {
            0 => Source::Input,
            n => Source::Layer(n - 1),
        }
    }

    fn shape_of(&self, src: Source) -> Shape {
        match src {
            Source::Input => self.input_shape,
            Source::Layer(l) => self.shapes.get(l).copied().unwrap_or(self.input_shape),
        }
    }

    /// Makes `src` the latest output (emitting a `branch` if needed).
    fn make_current(&mut self, src: Source) -> Result<(), String> {
        if src == self.current() {
            return Ok(());
        }
        match src {
            Source::Layer(from) => {
                let shape = self.shape_of(src);
                self.push(Layer::Branch { from }, shape);
                Ok(())
            }
            Source::Input => {
                Err("the IR cannot re-read the model input after other layers".to_string())
            }
        }
    }

    fn push(&mut self, layer: Layer, shape: Shape) -> Source {
        self.layers.push(layer);
        self.shapes.push(shape);
        Source::Layer(self.layers.len() - 1)
    }

    /// Emits `layer` reading `x` (made current first), returning its output.
    fn emit(&mut self, ctx: Ctx, x: &Act, layer: Layer, shape: Shape) -> Result<Source, OnnxError> {
        if shape.is_empty() || shape.len().is_none_or(|n| n > MAX_TENSOR_LEN) {
            return Err(ctx.err(format!("output shape {shape} is empty or too large")));
        }
        if self.layers.len() >= MAX_NODES.saturating_mul(2) {
            return Err(ctx.err("too many layers"));
        }
        self.make_current(x.at).map_err(|p| ctx.err(p))?;
        Ok(self.push(layer, shape))
    }

    // ----- value access ---------------------------------------------------

    fn value(&self, ctx: Ctx, name: &str) -> Result<&Value, OnnxError> {
        self.values.get(name).ok_or_else(|| {
            ctx.err(format!(
                "input {:?} is not produced by an earlier node, an initialiser or the graph input",
                truncate(name, MAX_ECHO)
            ))
        })
    }

    fn act(&self, ctx: Ctx, i: usize) -> Result<Act, OnnxError> {
        let name = ctx.required(i)?;
        match self.value(ctx, name)? {
            Value::Act(a) => Ok(*a),
            Value::FloatInput => Err(ctx.err(format!(
                "input {i} is the unquantised graph input (quantise it with QuantizeLinear first)"
            ))),
            Value::Const(_) => Err(ctx.err(format!(
                "input {i} is a constant where an activation is expected"
            ))),
        }
    }

    /// A float (dequantised) activation.
    fn float_act(&self, ctx: Ctx, i: usize) -> Result<Act, OnnxError> {
        let a = self.act(ctx, i)?;
        if a.zero_point.is_some() {
            return Err(ctx.err(format!(
                "input {i} is a quantised integer tensor where a float tensor is expected"
            )));
        }
        Ok(a)
    }

    fn constant(&self, ctx: Ctx, i: usize) -> Result<&Const, OnnxError> {
        let name = ctx.required(i)?;
        match self.value(ctx, name)? {
            Value::Const(c) => Ok(c),
            _ => Err(ctx.err(format!(
                "input {i} must be a constant (initialiser), not a computed tensor"
            ))),
        }
    }

    /// A per-tensor scale: one positive finite float.
    fn scale(&self, ctx: Ctx, i: usize) -> Result<f64, OnnxError> {
        let c = self.constant(ctx, i)?;
        match &c.data {
            Data::Float(v) if v.len() == 1 => {
                let s = v[0];
                if s.is_finite() && s > 0.0 {
                    Ok(s)
                } else {
                    Err(ctx.err(format!("scale (input {i}) must be positive and finite")))
                }
            }
            Data::Float(_) => Err(ctx.err(format!(
                "scale (input {i}) has {} values: only per-tensor quantisation is supported",
                c.len()
            ))),
            _ => Err(ctx.err(format!("scale (input {i}) must be a float"))),
        }
    }

    /// A per-tensor zero point and its type; an absent one is uint8 0.
    fn zero_point(&self, ctx: Ctx, i: usize) -> Result<(i64, QType), OnnxError> {
        if ctx.input(i).is_none() {
            return Ok((0, QType { qmin: 0, qmax: 255 }));
        }
        let c = self.constant(ctx, i)?;
        match &c.data {
            Data::Int(v, dt) if v.len() == 1 => {
                let q = qtype_of(*dt).ok_or_else(|| {
                    ctx.err(format!("zero point (input {i}) has an unsupported type"))
                })?;
                Ok((v[0], q))
            }
            Data::Int(v, _) => Err(ctx.err(format!(
                "zero point (input {i}) has {} values: only per-tensor quantisation is supported",
                v.len()
            ))),
            _ => Err(ctx.err(format!("zero point (input {i}) must be an integer"))),
        }
    }

    /// Integer weights with zero point 0 and their scale: a `DequantizeLinear`
    /// constant (QDQ) or an integer constant with the given scale / zero
    /// point inputs (QOperator).
    fn weights(
        &self,
        ctx: Ctx,
        i: usize,
        quant: Option<(usize, usize)>,
    ) -> Result<(Vec<usize>, Vec<i64>, f64), OnnxError> {
        let c = self.constant(ctx, i)?;
        let (values, scale, zp) = match (&c.data, quant) {
            (Data::Dequant {
                values,
                scale,
                zero_point,
            }, None) => (values, *scale, *zero_point),
            (Data::Int(values, _), Some((s, z))) => {
                let scale = self.scale(ctx, s)?;
                let (zp, _) = self.zero_point(ctx, z)?;
                (values, scale, zp)
            }
            (Data::Float(_), _) => {
                return Err(ctx.err(format!(
                    "weights (input {i}) are float: only integer weights (DequantizeLinear of an integer initialiser) are supported"
                )))
            }
            _ => return Err(ctx.err(format!("weights (input {i}) are not quantised integers"))),
        };
        if zp != 0 {
            return Err(ctx.err(format!(
                "weight zero point is {zp}: only 0 (symmetric weights) is supported"
            )));
        }
        Ok((c.dims.clone(), values.clone(), scale))
    }

    /// The bias as integers at the accumulator scale `acc_scale`
    /// (`int32_at_acc`: a raw integer bias is at that scale by definition).
    fn bias(
        &self,
        ctx: Ctx,
        i: usize,
        acc_scale: f64,
        beta: f64,
        count: usize,
    ) -> Result<Vec<i64>, OnnxError> {
        if ctx.input(i).is_none() {
            return Ok(vec![0; count]);
        }
        let c = self.constant(ctx, i)?;
        if c.len() != count {
            return Err(ctx.err(format!(
                "bias (input {i}) has {} values, expected one per output ({count})",
                c.len()
            )));
        }
        match &c.data {
            Data::Int(values, _) if beta == 1.0 => Ok(values.clone()),
            Data::Dequant {
                values,
                scale,
                zero_point,
            } => {
                if *zero_point != 0 {
                    return Err(ctx.err(format!(
                        "bias zero point is {zero_point}: only 0 is supported"
                    )));
                }
                if !relative_eq(beta * scale, acc_scale, BIAS_SCALE_TOLERANCE) {
                    return Err(ctx.err(format!(
                        "bias scale {} is not input scale × weight scale {acc_scale}",
                        beta * scale
                    )));
                }
                Ok(values.clone())
            }
            Data::Float(values) => values
                .iter()
                .map(|v| round_even(beta * v / acc_scale))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| ctx.err("bias is too large for the accumulator scale")),
            Data::Int(..) => Err(ctx.err("integer bias with beta ≠ 1 is not supported")),
        }
    }

    // ----- building blocks shared by the QDQ and QOperator forms ----------

    /// `DequantizeLinear(q, scale, zp)` of a quantised activation.
    fn dequantize(&self, ctx: Ctx, x: Act, scale: f64, zp: i64) -> Result<Act, OnnxError> {
        match x.zero_point {
            Some(z) if z == zp => Ok(Act {
                scale,
                zero_point: None,
                ..x
            }),
            Some(z) => Err(ctx.err(format!(
                "dequantises with zero point {zp} a tensor quantised with zero point {z}"
            ))),
            None => Err(ctx.err("dequantises a tensor that is not quantised")),
        }
    }

    /// `QuantizeLinear(x, scale, zp)` of a float activation: a `requantize`
    /// layer, or nothing when it is the identity.
    fn quantize(
        &mut self,
        ctx: Ctx,
        x: Act,
        scale: f64,
        zp: i64,
        q: QType,
    ) -> Result<Act, OnnxError> {
        let min = q
            .qmin
            .checked_sub(zp)
            .ok_or_else(|| ctx.err("zero point out of range"))?;
        let max = q
            .qmax
            .checked_sub(zp)
            .ok_or_else(|| ctx.err("zero point out of range"))?;
        if min > max || min > 0 || max < 0 {
            return Err(ctx.err(format!(
                "zero point {zp} is outside the type's range [{}, {}]",
                q.qmin, q.qmax
            )));
        }
        let out = Act {
            scale,
            zero_point: Some(zp),
            range: Some((min, max)),
            ..x
        };
        let identity = relative_eq(x.scale, scale, 1e-12)
            && x.range.is_some_and(|(lo, hi)| lo >= min && hi <= max);
        if identity {
            return Ok(out);
        }
        let m = x.scale / scale;
        let (multiplier, shift) = fixed_point(m).ok_or_else(|| {
            ctx.err(format!(
                "requantisation multiplier {m:e} (input scale / output scale) is out of range"
            ))
        })?;
        let layer = Layer::Requantize {
            multiplier,
            shift,
            min,
            max,
        };
        let at = self.emit(ctx, &x, layer, x.shape)?;
        Ok(Act { at, ..out })
    }

    fn conv(
        &mut self,
        ctx: Ctx,
        x: Act,
        w: (Vec<usize>, Vec<i64>, f64),
        bias_input: usize,
    ) -> Result<Act, OnnxError> {
        let (dims, weights, w_scale) = w;
        ctx.only_attrs(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        if x.flat2d {
            return Err(ctx.err("convolution of a flat (2-D) tensor"));
        }
        let [o, c, kh, kw] = dims.as_slice() else {
            return Err(ctx.err(format!(
                "weights have shape {dims:?}, expected [O, C, kH, kW]"
            )));
        };
        let (o, c, kh, kw) = (*o, *c, *kh, *kw);
        // All sizes ≥ 1 before anything is allocated from them (a zero size
        // would let `o` exceed the weights' element count).
        if o == 0 || kh == 0 || kw == 0 {
            return Err(ctx.err(format!("weights have an empty dimension: {dims:?}")));
        }
        if c != x.shape.channels {
            return Err(ctx.err(format!(
                "weights expect {c} input channels, the input has {}",
                x.shape.channels
            )));
        }
        if ctx.int_attr("group", 1)? != 1 {
            return Err(ctx.attr_err("group", "only group = 1 is supported"));
        }
        check_auto_pad(ctx)?;
        check_no_dilation(ctx)?;
        if let Some(k) = ctx.ints_attr("kernel_shape")? {
            if k.len() != 2 || k[0] as i128 != kh as i128 || k[1] as i128 != kw as i128 {
                return Err(ctx.attr_err("kernel_shape", "does not match the weights' shape"));
            }
        }
        let padding = uniform(ctx, "pads", 4, 0)?;
        let stride = uniform(ctx, "strides", 2, 1)?;
        if stride == 0 {
            return Err(ctx.attr_err("strides", "must be positive"));
        }
        let acc_scale = x.scale * w_scale;
        let bias = self.bias(ctx, bias_input, acc_scale, 1.0, o)?;
        let out_dim = |n: usize, k: usize| -> Option<usize> {
            let padded = n.checked_add(padding.checked_mul(2)?)?;
            (k >= 1 && k <= padded).then(|| (padded - k) / stride + 1)
        };
        let shape = match (out_dim(x.shape.height, kh), out_dim(x.shape.width, kw)) {
            (Some(h), Some(wd)) if o >= 1 => Shape::new(o, h, wd),
            _ => return Err(ctx.err("kernel larger than the padded input, or an empty size")),
        };
        // Zero padding in the IR pads t = q − zp = 0, i.e. the real value 0:
        // exactly what ONNX pads a dequantised (and QLinearConv a quantised,
        // with q = zp) input with, whatever the zero point.
        let layer = Layer::Conv2d {
            out_channels: o,
            kernel_h: kh,
            kernel_w: kw,
            stride,
            padding,
            groups: 1,
            weights,
            bias,
        };
        let at = self.emit(ctx, &x, layer, shape)?;
        Ok(Act {
            at,
            shape,
            flat2d: false,
            scale: acc_scale,
            zero_point: None,
            range: None,
        })
    }

    /// A linear layer `y = x·B (+ C)` with `B` `[K, N]` (or `[N, K]` if
    /// `trans_b`).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        ctx: Ctx,
        x: Act,
        w: (Vec<usize>, Vec<i64>, f64),
        trans_b: bool,
        alpha: f64,
        bias: Option<(usize, f64)>,
    ) -> Result<Act, OnnxError> {
        let (dims, weights, w_scale) = w;
        if !x.flat2d {
            return Err(ctx.err(format!(
                "input of shape {} is not flat [1, F]: insert a Flatten",
                x.shape
            )));
        }
        let [r, c] = dims.as_slice() else {
            return Err(ctx.err(format!("weights have shape {dims:?}, expected 2-D")));
        };
        let (k, n) = if trans_b { (*c, *r) } else { (*r, *c) };
        if n == 0 {
            return Err(ctx.err(format!("weights have an empty dimension: {dims:?}")));
        }
        if k != x.shape.channels {
            return Err(ctx.err(format!(
                "weights expect {k} input features, the input has {}",
                x.shape.channels
            )));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(ctx.attr_err("alpha", "must be positive"));
        }
        let acc_scale = alpha * x.scale * w_scale;
        let bias = match bias {
            Some((i, beta)) => self.bias(ctx, i, acc_scale, beta, n)?,
            None => vec![0; n],
        };
        // IR weights are row-major `out × in`.
        let weights = if trans_b {
            weights
        } else {
            let mut t = Vec::with_capacity(weights.len());
            for o in 0..n {
                for i in 0..k {
                    // i·n + o < k·n = weights.len() (the constant's dims).
                    t.push(weights.get(i * n + o).copied().unwrap_or(0));
                }
            }
            t
        };
        let shape = Shape::new(n, 1, 1);
        let layer = Layer::Linear {
            out_features: n,
            weights,
            bias,
        };
        let at = self.emit(ctx, &x, layer, shape)?;
        Ok(Act {
            at,
            shape,
            flat2d: true,
            scale: acc_scale,
            zero_point: None,
            range: None,
        })
    }

    fn avgpool(&mut self, ctx: Ctx, x: Act, global: bool) -> Result<Act, OnnxError> {
        if x.flat2d {
            return Err(ctx.err("pooling of a flat (2-D) tensor"));
        }
        if global {
            ctx.only_attrs(&["channels_last"])?;
            if ctx.int_attr("channels_last", 0)? != 0 {
                return Err(ctx.attr_err("channels_last", "only 0 (NCHW) is supported"));
            }
            let area = x
                .shape
                .height
                .checked_mul(x.shape.width)
                .ok_or_else(|| ctx.err("size overflows"))?;
            let shape = Shape::new(x.shape.channels, 1, 1);
            let at = self.emit(ctx, &x, Layer::GlobalAvgPool, shape)?;
            return Ok(Act {
                at,
                shape,
                scale: x.scale / area as f64,
                zero_point: None,
                range: None,
                ..x
            });
        }
        ctx.only_attrs(&[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
            "channels_last",
        ])?;
        if ctx.int_attr("channels_last", 0)? != 0 {
            return Err(ctx.attr_err("channels_last", "only 0 (NCHW) is supported"));
        }
        if ctx.int_attr("ceil_mode", 0)? != 0 {
            return Err(ctx.attr_err("ceil_mode", "only 0 is supported"));
        }
        check_auto_pad(ctx)?;
        check_no_dilation(ctx)?;
        if uniform(ctx, "pads", 4, 0)? != 0 {
            return Err(ctx.attr_err("pads", "pooling with padding is not supported"));
        }
        let kernel = match ctx.ints_attr("kernel_shape")? {
            Some([a, b]) if a == b && *a >= 1 => {
                usize::try_from(*a).map_err(|_| ctx.attr_err("kernel_shape", "too large"))?
            }
            _ => {
                return Err(ctx.attr_err(
                    "kernel_shape",
                    "must be a square 2-D window [k, k] with k ≥ 1",
                ))
            }
        };
        let stride = uniform(ctx, "strides", 2, 1)?;
        if stride == 0 {
            return Err(ctx.attr_err("strides", "must be positive"));
        }
        let (h, w) = (x.shape.height, x.shape.width);
        if kernel > h || kernel > w {
            return Err(ctx.err("pooling window larger than the input"));
        }
        let shape = Shape::new(
            x.shape.channels,
            (h - kernel) / stride + 1,
            (w - kernel) / stride + 1,
        );
        let area = kernel
            .checked_mul(kernel)
            .ok_or_else(|| ctx.err("size overflows"))?;
        let at = self.emit(ctx, &x, Layer::AvgPool { kernel, stride }, shape)?;
        Ok(Act {
            at,
            shape,
            scale: x.scale / area as f64,
            zero_point: None,
            range: None,
            ..x
        })
    }

    fn add(&mut self, ctx: Ctx, a: Act, b: Act) -> Result<Act, OnnxError> {
        if a.shape != b.shape || a.flat2d != b.flat2d {
            return Err(ctx.err(format!(
                "operands have shapes {} and {} (broadcasting is not supported)",
                a.shape, b.shape
            )));
        }
        if !relative_eq(a.scale, b.scale, SCALE_TOLERANCE) {
            return Err(ctx.err(format!(
                "operands have scales {:e} and {:e}: only an Add of equal scales maps to residual_add",
                a.scale, b.scale
            )));
        }
        // One operand becomes the layer's input, the other its `from`.
        let (main, other) = if b.at == self.current() {
            (b, a)
        } else {
            (a, b)
        };
        let from = match other.at {
            Source::Layer(l) => l,
            Source::Input => {
                return Err(ctx.err("an Add reading the model input is not supported by the IR"))
            }
        };
        let at = self.emit(ctx, &main, Layer::ResidualAdd { from }, main.shape)?;
        let range = match (a.range, b.range) {
            (Some((l1, h1)), Some((l2, h2))) => l1.checked_add(l2).zip(h1.checked_add(h2)),
            _ => None,
        };
        Ok(Act {
            at,
            zero_point: None,
            range,
            ..main
        })
    }

    fn flatten_to(&mut self, ctx: Ctx, x: Act) -> Result<Act, OnnxError> {
        if x.flat2d {
            return Ok(x);
        }
        let n = x.shape.len().ok_or_else(|| ctx.err("size overflows"))?;
        let shape = Shape::new(n, 1, 1);
        if x.shape.is_flat() {
            // [1, C, 1, 1] → [1, C]: the IR tensor is already [C, 1, 1].
            return Ok(Act { flat2d: true, ..x });
        }
        let at = self.emit(ctx, &x, Layer::Flatten, shape)?;
        Ok(Act {
            at,
            shape,
            flat2d: true,
            ..x
        })
    }

    // ----- nodes ----------------------------------------------------------

    fn node(&mut self, ctx: Ctx) -> Result<Value, OnnxError> {
        let domain = ctx.node.domain.as_str();
        let std = domain.is_empty() || domain == "ai.onnx";
        let ms = domain == "com.microsoft";
        match (ctx.node.op_type.as_str(), std, ms) {
            ("QuantizeLinear", true, _) => {
                ctx.only_attrs(&["axis", "saturate", "block_size"])?;
                if ctx.int_attr("block_size", 0)? != 0 {
                    return Err(ctx.attr_err("block_size", "blocked quantisation is not supported"));
                }
                let scale = self.scale(ctx, 1)?;
                let (zp, q) = self.zero_point(ctx, 2)?;
                let name = ctx.required(0)?;
                match self.value(ctx, name)? {
                    Value::FloatInput => {
                        if self.input_quant.is_some() {
                            return Err(ctx.err("the graph input is quantised twice"));
                        }
                        let min = q.qmin - zp;
                        let max = q.qmax - zp;
                        if min > 0 || max < 0 {
                            return Err(
                                ctx.err(format!("zero point {zp} is outside the type's range"))
                            );
                        }
                        self.input_quant = Some((scale, zp, q));
                        Ok(Value::Act(Act {
                            at: Source::Input,
                            shape: self.input_shape,
                            flat2d: self.input_flat2d,
                            scale,
                            zero_point: Some(zp),
                            range: Some((min, max)),
                        }))
                    }
                    Value::Const(c) => {
                        let values = match &c.data {
                            Data::Float(v) => v,
                            _ => return Err(ctx.err("quantises a non-float constant")),
                        };
                        let values = values
                            .iter()
                            .map(|v| {
                                round_even(v / scale)
                                    .and_then(|r| r.checked_add(zp))
                                    .map(|r| r.clamp(q.qmin, q.qmax))
                            })
                            .collect::<Option<Vec<i64>>>()
                            .ok_or_else(|| ctx.err("constant out of range"))?;
                        // Carries its own scale and zero point, as if by
                        // DequantizeLinear, for QDQ pairs Q → DQ of weights.
                        Ok(Value::Const(Const {
                            dims: c.dims.clone(),
                            data: Data::Dequant {
                                values,
                                scale,
                                zero_point: zp,
                            },
                        }))
                    }
                    Value::Act(_) => {
                        let x = self.float_act(ctx, 0)?;
                        Ok(Value::Act(self.quantize(ctx, x, scale, zp, q)?))
                    }
                }
            }
            ("DequantizeLinear", true, _) => {
                ctx.only_attrs(&["axis", "block_size"])?;
                if ctx.int_attr("block_size", 0)? != 0 {
                    return Err(ctx.attr_err("block_size", "blocked quantisation is not supported"));
                }
                let scale = self.scale(ctx, 1)?;
                let (zp, _) = self.zero_point(ctx, 2)?;
                let name = ctx.required(0)?;
                match self.value(ctx, name)? {
                    Value::Const(c) => match &c.data {
                        Data::Int(values, _) | Data::Dequant { values, .. } => {
                            Ok(Value::Const(Const {
                                dims: c.dims.clone(),
                                data: Data::Dequant {
                                    values: values.clone(),
                                    scale,
                                    zero_point: zp,
                                },
                            }))
                        }
                        Data::Float(_) => Err(ctx.err("dequantises a float constant")),
                    },
                    _ => {
                        let x = self.act(ctx, 0)?;
                        Ok(Value::Act(self.dequantize(ctx, x, scale, zp)?))
                    }
                }
            }
            ("Conv", true, _) => {
                let x = self.float_act(ctx, 0)?;
                let w = self.weights(ctx, 1, None)?;
                Ok(Value::Act(self.conv(ctx, x, w, 2)?))
            }
            ("QLinearConv", true, _) => {
                let x = self.qlinear_input(ctx, 0, 1, 2)?;
                let w = self.weights(ctx, 3, Some((4, 5)))?;
                let (ys, (yzp, yq)) = (self.scale(ctx, 6)?, self.zero_point(ctx, 7)?);
                let acc = self.conv(ctx, x, w, 8)?;
                Ok(Value::Act(self.quantize(ctx, acc, ys, yzp, yq)?))
            }
            ("MatMul", true, _) => {
                ctx.only_attrs(&[])?;
                let x = self.float_act(ctx, 0)?;
                let w = self.weights(ctx, 1, None)?;
                Ok(Value::Act(self.linear(ctx, x, w, false, 1.0, None)?))
            }
            ("QLinearMatMul", true, _) => {
                ctx.only_attrs(&[])?;
                let x = self.qlinear_input(ctx, 0, 1, 2)?;
                let w = self.weights(ctx, 3, Some((4, 5)))?;
                let (ys, (yzp, yq)) = (self.scale(ctx, 6)?, self.zero_point(ctx, 7)?);
                let acc = self.linear(ctx, x, w, false, 1.0, None)?;
                Ok(Value::Act(self.quantize(ctx, acc, ys, yzp, yq)?))
            }
            ("Gemm", true, _) => {
                ctx.only_attrs(&["alpha", "beta", "transA", "transB"])?;
                let (alpha, beta, trans_b) = gemm_attrs(ctx)?;
                let x = self.float_act(ctx, 0)?;
                let w = self.weights(ctx, 1, None)?;
                Ok(Value::Act(self.linear(
                    ctx,
                    x,
                    w,
                    trans_b,
                    alpha,
                    Some((2, beta)),
                )?))
            }
            ("QGemm", _, true) => {
                ctx.only_attrs(&["alpha", "transA", "transB"])?;
                let (alpha, _, trans_b) = gemm_attrs(ctx)?;
                let x = self.qlinear_input(ctx, 0, 1, 2)?;
                let w = self.weights(ctx, 3, Some((4, 5)))?;
                // C is int32 at scale alpha·s_a·s_b by QGemm's definition.
                let acc = self.linear(ctx, x, w, trans_b, alpha, Some((6, 1.0)))?;
                if ctx.input(7).is_none() {
                    return Ok(Value::Act(acc)); // float output
                }
                let (ys, (yzp, yq)) = (self.scale(ctx, 7)?, self.zero_point(ctx, 8)?);
                Ok(Value::Act(self.quantize(ctx, acc, ys, yzp, yq)?))
            }
            ("AveragePool", true, _) | ("GlobalAveragePool", true, _) => {
                let x = self.float_act(ctx, 0)?;
                let global = ctx.node.op_type == "GlobalAveragePool";
                Ok(Value::Act(self.avgpool(ctx, x, global)?))
            }
            ("QLinearAveragePool", _, true) | ("QLinearGlobalAveragePool", _, true) => {
                let x = self.qlinear_input(ctx, 0, 1, 2)?;
                let (ys, (yzp, yq)) = (self.scale(ctx, 3)?, self.zero_point(ctx, 4)?);
                let global = ctx.node.op_type == "QLinearGlobalAveragePool";
                let sum = self.avgpool(ctx, x, global)?;
                Ok(Value::Act(self.quantize(ctx, sum, ys, yzp, yq)?))
            }
            ("Relu", true, _) => {
                ctx.only_attrs(&[])?;
                let x = self.float_act(ctx, 0)?;
                if x.range.is_some_and(|(lo, _)| lo >= 0) {
                    return Ok(Value::Act(x)); // already non-negative
                }
                let at = self.emit(ctx, &x, Layer::Relu, x.shape)?;
                Ok(Value::Act(Act {
                    at,
                    range: x.range.map(|(lo, hi)| (lo.max(0), hi.max(0))),
                    ..x
                }))
            }
            ("Add", true, _) => {
                ctx.only_attrs(&[])?;
                let a = self.float_act(ctx, 0)?;
                let b = self.float_act(ctx, 1)?;
                Ok(Value::Act(self.add(ctx, a, b)?))
            }
            ("QLinearAdd", _, true) => {
                ctx.only_attrs(&[])?;
                let a = self.qlinear_input(ctx, 0, 1, 2)?;
                let b = self.qlinear_input(ctx, 3, 4, 5)?;
                let (ys, (yzp, yq)) = (self.scale(ctx, 6)?, self.zero_point(ctx, 7)?);
                let sum = self.add(ctx, a, b)?;
                Ok(Value::Act(self.quantize(ctx, sum, ys, yzp, yq)?))
            }
            ("Flatten", true, _) => {
                ctx.only_attrs(&["axis"])?;
                let axis = ctx.int_attr("axis", 1)?;
                if axis != 0 && axis != 1 {
                    return Err(ctx.attr_err(
                        "axis",
                        "only 0 or 1 (flatten all but the batch) is supported",
                    ));
                }
                let x = self.act(ctx, 0)?;
                Ok(Value::Act(self.flatten_to(ctx, x)?))
            }
            ("Reshape", true, _) => {
                ctx.only_attrs(&["allowzero"])?;
                let x = self.act(ctx, 0)?;
                let target = match &self.constant(ctx, 1)?.data {
                    Data::Int(v, _) => v.clone(),
                    _ => return Err(ctx.err("the target shape must be an integer constant")),
                };
                let n = x.shape.len().ok_or_else(|| ctx.err("size overflows"))?;
                let n = i64::try_from(n).map_err(|_| ctx.err("size overflows"))?;
                let flat = matches!(target.as_slice(), [d] if *d == n || *d == -1)
                    || matches!(target.as_slice(), [b, d]
                        if (*b == 1 || *b == 0 || (*b == -1 && *d == n)) && (*d == n || *d == -1));
                if !flat {
                    return Err(ctx.err(format!(
                        "only a reshape to flat [1, {n}] is supported, got {:?}",
                        &target[..target.len().min(8)]
                    )));
                }
                Ok(Value::Act(self.flatten_to(ctx, x)?))
            }
            ("Identity", true, _) => {
                ctx.only_attrs(&[])?;
                let name = ctx.required(0)?;
                Ok(self.value(ctx, name)?.clone())
            }
            ("Constant", true, _) => {
                ctx.only_attrs(&["value"])?;
                let t = ctx
                    .attr("value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| ctx.attr_err("value", "only a tensor `value` is supported"))?;
                Ok(Value::Const(read_tensor(t, &mut self.budget)?))
            }
            _ => Err(ctx.unsupported()),
        }
    }

    /// The quantised input of a QLinear op dequantised with its scale and
    /// zero point inputs.
    fn qlinear_input(&self, ctx: Ctx, x: usize, s: usize, z: usize) -> Result<Act, OnnxError> {
        let a = self.act(ctx, x)?;
        let scale = self.scale(ctx, s)?;
        let (zp, _) = self.zero_point(ctx, z)?;
        self.dequantize(ctx, a, scale, zp)
    }
}

fn gemm_attrs(ctx: Ctx) -> Result<(f64, f64, bool), OnnxError> {
    if ctx.int_attr("transA", 0)? != 0 {
        return Err(ctx.attr_err("transA", "only transA = 0 is supported"));
    }
    let trans_b = match ctx.int_attr("transB", 0)? {
        0 => false,
        1 => true,
        _ => return Err(ctx.attr_err("transB", "must be 0 or 1")),
    };
    let alpha = f64::from(ctx.float_attr("alpha", 1.0)?);
    let beta = f64::from(ctx.float_attr("beta", 1.0)?);
    if !(beta.is_finite() && beta > 0.0) {
        return Err(ctx.attr_err("beta", "must be positive"));
    }
    Ok((alpha, beta, trans_b))
}

fn check_no_dilation(ctx: Ctx) -> Result<(), OnnxError> {
    match ctx.ints_attr("dilations")? {
        Some(d) if d.iter().any(|&v| v != 1) => {
            Err(ctx.attr_err("dilations", "only dilation 1 is supported"))
        }
        _ => Ok(()),
    }
}

fn check_auto_pad(ctx: Ctx) -> Result<(), OnnxError> {
    match ctx.string_attr("auto_pad")? {
        None | Some(b"NOTSET") | Some(b"VALID") => Ok(()),
        Some(_) => Err(ctx.attr_err(
            "auto_pad",
            "only NOTSET or VALID (explicit pads) is supported",
        )),
    }
}

/// An attribute list whose `count` entries are all equal (e.g. symmetric
/// `pads`, equal `strides`); `default` when absent.
fn uniform(ctx: Ctx, name: &str, count: usize, default: usize) -> Result<usize, OnnxError> {
    match ctx.ints_attr(name)? {
        None => Ok(default),
        Some(v) if v.len() == count && v.iter().all(|x| *x == v[0]) => usize::try_from(v[0])
            .ok()
            .filter(|x| *x <= MAX_TENSOR_LEN)
            .ok_or_else(|| ctx.attr_err(name, "out of range")),
        Some(_) => Err(ctx.attr_err(
            name,
            format!("must be {count} equal values (symmetric, same along both axes)"),
        )),
    }
}

/// Indices of the nodes the graph output depends on.
fn live_nodes(graph: &pb::GraphProto, output: &str) -> HashSet<usize> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for out in &node.output {
            // The first producer wins; a redefinition is an error later.
            producer.entry(out.as_str()).or_insert(i);
        }
    }
    let mut live = HashSet::new();
    let mut stack: Vec<&str> = vec![output];
    while let Some(name) = stack.pop() {
        if let Some(&i) = producer.get(name) {
            if live.insert(i) {
                if let Some(node) = graph.node.get(i) {
                    stack.extend(node.input.iter().map(String::as_str));
                }
            }
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_10_fixed_point_multiplier() {
        for m in [1.0, 0.25, 1e-3, 0.123_456_789, 3.7, 1e-12] {
            let (mult, shift) = fixed_point(m).expect("representable");
            assert!(mult < 1 << 31);
            let approx = mult as f64 / 2f64.powi(shift as i32);
            assert!(
                ((approx - m) / m).abs() <= 2f64.powi(-31) || shift == 62,
                "{m}"
            );
        }
        assert_eq!(fixed_point(0.25), Some((1 << 30, 32)));
        assert_eq!(fixed_point(0.0), None);
        assert_eq!(fixed_point(f64::NAN), None);
        assert_eq!(fixed_point(1e-30), None);
        assert_eq!(fixed_point(3e9), None);
    }

    #[test]
    fn model_10_round_even() {
        assert_eq!(round_even(2.5), Some(2));
        assert_eq!(round_even(-2.5), Some(-2));
        assert_eq!(round_even(3.5), Some(4));
        assert_eq!(round_even(f64::INFINITY), None);
    }
}
