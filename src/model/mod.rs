//! Integer quantised models (spec/model-format.md, MODEL-1..MODEL-9).
//!
//! A [`Model`] is an input specification (shape `[C, H, W]` and the integer
//! range every input value lies in) followed by a sequence of [`Layer`]s.
//! Everything is exact integer arithmetic; there are no floats anywhere.
//!
//! * [`ir`]: the layers, shape inference and validation ([`Model::new`]);
//! * [`bounds`]: worst-case intervals of every activation and the
//!   accumulator check against a [`ParameterSet`](crate::params::ParameterSet)
//!   ([`Model::bounds`], [`Model::check_against`]);
//! * [`mod@reference`]: the plaintext evaluator ([`Model::evaluate`]), the oracle
//!   that encrypted inference must match bit for bit;
//! * [`mod@format`]: the JSON model file ([`Model::from_json`], [`Model::to_json`]);
//! * `onnx` (feature `onnx`): import of quantised ONNX graphs (QDQ and
//!   QOperator) into the IR, MODEL-10;
//! * [`inputs`]: input and label files (JSON or `.npy`) for a model;
//! * `batch`: [`Model::batched`], `k` images side by side as one
//!   block-diagonal model, for a session that batches `k` queries (ENG-15);
//! * [`zoo`]: ResNet-20 / ResNet-18 shaped models with random weights, for
//!   benchmarks.
//!
//! **Who computes what.** Linear layers ([`Side::Server`]: conv2d, linear,
//! avgpool, global_avgpool, flatten, residual_add, branch) are evaluated by
//! the server on encrypted activations; non-linear layers ([`Side::Client`]:
//! relu, maxpool, requantize) by the client in plaintext after decryption.
//!
//! **Folding.** A batch-norm layer is folded into the preceding conv's integer
//! weights and bias before export; there is no batch-norm op. Average pools
//! are integer *sums* over the window: the `1/k²` (or `1/(H·W)`) is folded
//! into the multiplier of the next `requantize` (or the next layer's weights).

mod batch;
pub mod bounds;
mod error;
pub mod format;
pub mod inputs;
pub mod ir;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod reference;
pub mod zoo;

pub use bounds::{Interval, LayerBound};
pub use error::{LayerProblem, ModelError};
pub use format::Limits;
pub use inputs::{InputsError, TestSet};
pub use ir::{InputSpec, Layer, Model, Shape, Side, MAX_NAME_LEN, MAX_TENSOR_LEN};
pub use reference::requantize;
