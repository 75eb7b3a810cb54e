//! Batching: `k` images side by side as one model (ENG-15).
//!
//! [`Model::batched`] turns a model of input `[C, H, W]` into one of input
//! `[k·C, H, W]` whose reference evaluation on the `k` inputs laid one after
//! another is the `k` outputs laid one after another. A session of `k`
//! images evaluates this block-diagonal model.

use super::error::{LayerProblem, ModelError};
use super::format::Limits;
use super::ir::{InputSpec, Layer, Model, Shape, MAX_TENSOR_LEN};

/// Most weights and biases, summed over all layers, a batched model may
/// hold: the default model-file limit ([`Limits::DEFAULT`]), so batching
/// never builds a model larger than one this crate would load.
const MAX_BATCHED_PARAMETERS: usize = Limits::DEFAULT.max_parameters;

impl Model {
    /// ENG-15: the model that evaluates `k` images side by side, for a
    /// session that batches `k` queries.
    ///
    /// The batched model's input is the `k` images' inputs one after another
    /// (shape `[k·C, H, W]`, the same `[min, max]`), and its output is the
    /// `k` images' outputs one after another: for all in-range `x_1..x_k`,
    /// `batched(k).evaluate(x_1 ‖ … ‖ x_k) == evaluate(x_1) ‖ … ‖ evaluate(x_k)`,
    /// bit for bit (and the batched evaluation fails exactly when one of the
    /// per-image evaluations does). Name and layer sequence are unchanged;
    /// every tensor of shape `[C', H', W']` becomes `[k·C', H', W']`, image
    /// `i` holding channels `i·C'..(i+1)·C'`, a contiguous block of the CHW
    /// order.
    ///
    /// Layer by layer:
    ///
    /// * conv2d: `k·O` output channels over `k·C` input channels, weights
    ///   block-diagonal (block `i` maps input channels `i·C..(i+1)·C` to
    ///   output channels `i·O..(i+1)·O` with the original kernel, zeros
    ///   elsewhere), bias repeated `k` times; kernel, stride, padding and
    ///   `groups = 1` unchanged;
    /// * linear: block-diagonal `k·out × k·in` weights, bias repeated `k`
    ///   times. Its flat input `[k·n, 1, 1]` is the `k` images' flat tensors
    ///   one after another, because each image's channels are contiguous
    ///   (a flatten of `[k·C, H, W]` is image 1's `C·H·W` values, then image
    ///   2's, …);
    /// * avgpool, maxpool, global_avgpool: act on each channel's plane
    ///   alone, so image `i`'s channels map to image `i`'s output channels
    ///   (global_avgpool gives `[k·C, 1, 1]`, images one after another);
    ///   flatten keeps the values; relu and requantize are element-wise;
    ///   residual_add and branch refer to layers by index, and both operands
    ///   of a residual_add are batched the same way: all unchanged.
    ///
    /// **Why block-diagonal is exact.** Output `(i·O + o)` of a batched conv
    /// or linear is `bias_o` plus the sum over all `k·C` input channels of
    /// weight × input; every weight outside block `i` is 0, so the terms of
    /// other images' channels are exact zeros and the sum is term for term
    /// the original `Σ_c w[o][c]·x_i[c]`: the same integers, the same exact
    /// (checked, never wrapping) arithmetic. For the same reason the
    /// worst-case bounds of MODEL-5 ([`Model::bounds`]) are those of the
    /// original model: every row has the same `‖w‖₁` and bias.
    ///
    /// **The zero blocks are public.** They are a function of the
    /// architecture and of `k` alone, both public, and carry no weight
    /// value; the nonzero blocks are the model's own weights, repeated.
    ///
    /// `k = 1` returns a clone. Errors, never a panic, and nothing large is
    /// allocated before the sizes are checked (with checked arithmetic):
    /// [`ModelError::EmptyBatch`] for `k = 0`;
    /// [`ModelError::Input`] / [`ModelError::Layer`] with
    /// [`LayerProblem::TensorTooLarge`] or [`LayerProblem::SizeOverflow`]
    /// when a batched tensor would exceed [`MAX_TENSOR_LEN`] values (as
    /// [`Model::new`] reports it); [`ModelError::BatchTooLarge`] when the
    /// batched weights and biases (`k²` times each weight matrix, `k` times
    /// each bias) would exceed the default model-file limit
    /// ([`Limits::DEFAULT`]'s `max_parameters`).
    pub fn batched(&self, k: usize) -> Result<Model, ModelError> {
        // ENG-15: the block-diagonal model of k images side by side.
        match k {
            0 => return Err(ModelError::EmptyBatch),
            1 => return Ok(self.clone()),
            _ => {}
        }
        // Activation sizes: each tensor grows k-fold (MODEL-2's limit).
        let input_error = |problem| ModelError::Input { problem };
        batched_len(&self.input().shape, k).map_err(input_error)?;
        for (index, (layer, shape)) in self.layers().iter().zip(self.shapes()).enumerate() {
            batched_len(shape, k).map_err(|problem| ModelError::Layer {
                layer: index,
                op: layer.op_name(),
                problem,
            })?;
        }
        // Weight and bias counts, before any allocation.
        let too_large = ModelError::BatchTooLarge {
            k,
            max: MAX_BATCHED_PARAMETERS,
        };
        let k2 = k.checked_mul(k).ok_or(too_large.clone())?;
        let mut total = 0usize;
        for layer in self.layers() {
            let (weights, bias) = match layer {
                Layer::Conv2d { weights, bias, .. } | Layer::Linear { weights, bias, .. } => {
                    (weights.len(), bias.len())
                }
                _ => continue,
            };
            total = weights
                .checked_mul(k2)
                .and_then(|w| w.checked_add(bias.checked_mul(k)?))
                .and_then(|p| p.checked_add(total))
                .filter(|&t| t <= MAX_BATCHED_PARAMETERS)
                .ok_or(too_large.clone())?;
        }

        let layers = self
            .layers()
            .iter()
            .map(|layer| batch_layer(layer, k))
            .collect();
        let spec = self.input();
        let input = InputSpec {
            shape: Shape::new(
                // Checked above: k·C·H·W fits, so k·C does.
                spec.shape.channels.saturating_mul(k),
                spec.shape.height,
                spec.shape.width,
            ),
            min: spec.min,
            max: spec.max,
        };
        Model::new(self.name(), input, layers)
    }
}

/// `k·C·H·W` of `shape` if it is within [`MAX_TENSOR_LEN`].
fn batched_len(shape: &Shape, k: usize) -> Result<usize, LayerProblem> {
    let len = shape
        .len()
        .and_then(|n| n.checked_mul(k))
        .ok_or(LayerProblem::SizeOverflow { field: "shape" })?;
    if len > MAX_TENSOR_LEN {
        return Err(LayerProblem::TensorTooLarge {
            len,
            max: MAX_TENSOR_LEN,
        });
    }
    Ok(len)
}

/// One layer of the batched model (sizes checked by the caller).
fn batch_layer(layer: &Layer, k: usize) -> Layer {
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
        } => Layer::Conv2d {
            out_channels: out_channels.saturating_mul(k),
            kernel_h: *kernel_h,
            kernel_w: *kernel_w,
            stride: *stride,
            padding: *padding,
            groups: *groups,
            weights: block_diagonal(weights, bias.len(), k),
            bias: bias.repeat(k),
        },
        Layer::Linear {
            out_features,
            weights,
            bias,
        } => Layer::Linear {
            out_features: out_features.saturating_mul(k),
            weights: block_diagonal(weights, bias.len(), k),
            bias: bias.repeat(k),
        },
        // Per channel, element-wise or by layer index: unchanged.
        Layer::AvgPool { .. }
        | Layer::GlobalAvgPool
        | Layer::Flatten
        | Layer::ResidualAdd { .. }
        | Layer::Branch { .. }
        | Layer::Relu
        | Layer::MaxPool { .. }
        | Layer::Requantize { .. } => layer.clone(),
    }
}

/// The `k·rows × k·cols` block-diagonal matrix with `k` copies of the
/// row-major `rows × cols` matrix `weights` on its diagonal. A conv's OIHW
/// weights are such a matrix with `rows = O`, `cols = C·kh·kw`: row `o` of
/// block `i` reads input channels `i·C..(i+1)·C`, each with its `kh × kw`
/// kernel, exactly the block-diagonal OIHW tensor.
fn block_diagonal(weights: &[i64], rows: usize, k: usize) -> Vec<i64> {
    let cols = weights.len() / rows.max(1);
    let width = cols.saturating_mul(k);
    let mut out = vec![0i64; weights.len().saturating_mul(k).saturating_mul(k)];
    for i in 0..k {
        for (o, row) in weights.chunks_exact(cols.max(1)).enumerate() {
            let start = (i * rows + o) * width + i * cols;
            out[start..start + cols].copy_from_slice(row);
        }
    }
    out
}
