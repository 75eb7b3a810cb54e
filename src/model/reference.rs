//! The plaintext integer evaluator (MODEL-3, MODEL-4): the oracle that
//! encrypted inference must match bit for bit.
//!
//! Every value is an exact integer. Products and sums are computed in `i128`
//! and every stored value must fit `i64`; otherwise the evaluation fails with
//! [`ModelError::Overflow`] naming the layer, it never wraps. Conv2d and
//! linear products are those of [`layout::conv2d_reference`] and
//! [`layout::matvec_reference`], the same oracles the encrypted layers are
//! tested against; the bias is added afterwards (checked).

use super::error::{LayerProblem, ModelError};
use super::ir::{conv_shape, Layer, Model, Shape};
use crate::layout::{self, LayoutError, MatVecShape};

/// MODEL-3: `clamp(round_half_away_from_zero(y·multiplier / 2^shift), min, max)`,
/// computed exactly in `i128` (`|y·multiplier| ≤ 2^126`, no overflow).
///
/// Total: never panics. For the parameters a valid model allows
/// (`multiplier > 0`, `shift ≤ 62`, `min ≤ max`) it is the requantize op;
/// outside them it still returns the formula's value (`min` wins if
/// `min > max`).
pub fn requantize(y: i64, multiplier: i64, shift: u32, min: i64, max: i64) -> i64 {
    let product = i128::from(y) * i128::from(multiplier);
    let magnitude = product.unsigned_abs(); // ≤ 2^126
    let rounded = match shift {
        0 => magnitude,
        // magnitude + 2^(shift−1) ≤ 2^126 + 2^126 = 2^127: no overflow.
        1..=127 => (magnitude + (1u128 << (shift - 1))) >> shift,
        _ => 0,
    };
    // rounded ≤ 2^126 fits i128.
    let value = if product < 0 {
        -(rounded as i128)
    } else {
        rounded as i128
    };
    if value < i128::from(min) {
        min
    } else if value > i128::from(max) {
        max
    } else {
        // min ≤ value ≤ max, both i64.
        value as i64
    }
}

fn narrow(value: i128, layer: usize, op: &'static str) -> Result<i64, ModelError> {
    i64::try_from(value).map_err(|_| ModelError::Overflow { layer, op })
}

fn add_bias(
    mut y: Vec<i64>,
    bias: &[i64],
    layer: usize,
    op: &'static str,
) -> Result<Vec<i64>, ModelError> {
    if bias.is_empty() {
        return Ok(y);
    }
    let per_output = y.len() / bias.len();
    for (chunk, &b) in y.chunks_mut(per_output.max(1)).zip(bias) {
        for v in chunk {
            *v = v.checked_add(b).ok_or(ModelError::Overflow { layer, op })?;
        }
    }
    Ok(y)
}

/// Sum (`max == false`) or maximum (`max == true`) over `kernel × kernel`
/// windows with stride `stride`, no padding.
fn pool(
    x: &[i64],
    shape: &Shape,
    kernel: usize,
    stride: usize,
    max: bool,
    layer: usize,
    op: &'static str,
) -> Result<Vec<i64>, ModelError> {
    let (h, w) = (shape.height, shape.width);
    let out_h = (h - kernel) / stride + 1;
    let out_w = (w - kernel) / stride + 1;
    let mut out = Vec::with_capacity(shape.channels * out_h * out_w);
    for c in 0..shape.channels {
        for i in 0..out_h {
            for j in 0..out_w {
                let mut sum: i128 = 0;
                let mut best = i64::MIN;
                for a in 0..kernel {
                    let row = &x[(c * h + i * stride + a) * w + j * stride..][..kernel];
                    for &v in row {
                        // ≤ 2^26 terms of ≤ 2^63: no i128 overflow.
                        sum += i128::from(v);
                        best = best.max(v);
                    }
                }
                out.push(if max { best } else { narrow(sum, layer, op)? });
            }
        }
    }
    Ok(out)
}

impl Model {
    /// Applies layer `index` alone (MODEL-3): `input` is the output of layer
    /// `index − 1` (the model input for layer 0) and `from` the output of
    /// layer [`Layer::reads_from`] for residual_add / branch (ignored
    /// otherwise). This is the per-layer step an encrypted pipeline checks
    /// against, e.g. the client's non-linear layers.
    pub fn apply_layer(
        &self,
        index: usize,
        input: &[i64],
        from: Option<&[i64]>,
    ) -> Result<Vec<i64>, ModelError> {
        let layers = self.layers();
        let layer = layers.get(index).ok_or(ModelError::NoSuchLayer {
            index,
            layers: layers.len(),
        })?;
        let op = layer.op_name();
        let shape = self.input_shape(index).ok_or(ModelError::NoSuchLayer {
            index,
            layers: layers.len(),
        })?;
        // Validated: the size fits.
        let len = shape.len().unwrap_or(usize::MAX);
        if input.len() != len {
            return Err(ModelError::InputLength {
                expected: len,
                got: input.len(),
            });
        }
        let from = match layer.reads_from() {
            Some(j) => {
                let want = self.shapes().get(j).and_then(Shape::len).unwrap_or(0);
                let got = from.unwrap_or(&[]);
                if got.len() != want {
                    return Err(ModelError::InputLength {
                        expected: want,
                        got: got.len(),
                    });
                }
                got
            }
            None => &[],
        };
        let overflow = ModelError::Overflow { layer: index, op };
        let layout_error = |e: LayoutError| match e {
            LayoutError::ArithmeticOverflow => ModelError::Overflow { layer: index, op },
            other => ModelError::Layer {
                layer: index,
                op,
                problem: LayerProblem::Geometry(other),
            },
        };
        match layer {
            Layer::Conv2d { weights, bias, .. } => {
                let conv = conv_shape(&shape, layer).ok_or(ModelError::NoSuchLayer {
                    index,
                    layers: layers.len(),
                })?;
                let y = layout::conv2d_reference(&conv, input, weights).map_err(layout_error)?;
                add_bias(y, bias, index, op)
            }
            Layer::Linear {
                out_features,
                weights,
                bias,
            } => {
                let mv = MatVecShape {
                    rows: *out_features,
                    cols: len,
                };
                let y = layout::matvec_reference(&mv, input, weights).map_err(layout_error)?;
                add_bias(y, bias, index, op)
            }
            Layer::AvgPool { kernel, stride } => {
                pool(input, &shape, *kernel, *stride, false, index, op)
            }
            Layer::MaxPool { kernel, stride } => {
                pool(input, &shape, *kernel, *stride, true, index, op)
            }
            Layer::GlobalAvgPool => input
                .chunks(shape.height * shape.width)
                .map(|plane| narrow(plane.iter().map(|&v| i128::from(v)).sum(), index, op))
                .collect(),
            Layer::Flatten => Ok(input.to_vec()),
            Layer::ResidualAdd { .. } => input
                .iter()
                .zip(from)
                .map(|(&a, &b)| a.checked_add(b).ok_or(overflow.clone()))
                .collect(),
            Layer::Branch { .. } => Ok(from.to_vec()),
            Layer::Relu => Ok(input.iter().map(|&v| v.max(0)).collect()),
            Layer::Requantize {
                multiplier,
                shift,
                min,
                max,
            } => Ok(input
                .iter()
                .map(|&v| requantize(v, *multiplier, *shift, *min, *max))
                .collect()),
        }
    }

    /// MODEL-4: evaluates the model on `input` (`[C][H][W]`, every value in
    /// the declared input range) and returns the last layer's output, the
    /// logits.
    pub fn evaluate(&self, input: &[i64]) -> Result<Vec<i64>, ModelError> {
        let mut outputs = self.run(input, false)?;
        Ok(outputs.pop().flatten().unwrap_or_default())
    }

    /// MODEL-4: like [`Model::evaluate`] but returns the output of every
    /// layer, in layer order (the last one is the logits).
    pub fn evaluate_all(&self, input: &[i64]) -> Result<Vec<Vec<i64>>, ModelError> {
        Ok(self
            .run(input, true)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Runs all layers; keeps every output if `keep_all`, else only those a
    /// later layer still reads (and the last).
    fn run(&self, input: &[i64], keep_all: bool) -> Result<Vec<Option<Vec<i64>>>, ModelError> {
        let spec = self.input();
        let expected = spec.shape.len().unwrap_or(usize::MAX);
        if input.len() != expected {
            return Err(ModelError::InputLength {
                expected,
                got: input.len(),
            });
        }
        if let Some((index, &value)) = input
            .iter()
            .enumerate()
            .find(|(_, &v)| v < spec.min || v > spec.max)
        {
            return Err(ModelError::InputOutOfRange {
                index,
                value,
                min: spec.min,
                max: spec.max,
            });
        }
        let layers = self.layers();
        // last_use[j]: the last layer index that reads the output of layer j.
        let mut last_use: Vec<usize> = (0..layers.len()).map(|j| j + 1).collect();
        for (i, layer) in layers.iter().enumerate() {
            if let Some(j) = layer.reads_from() {
                if let Some(slot) = last_use.get_mut(j) {
                    *slot = (*slot).max(i);
                }
            }
        }
        let mut outputs: Vec<Option<Vec<i64>>> = vec![None; layers.len()];
        for (i, layer) in layers.iter().enumerate() {
            let missing = || ModelError::NoSuchLayer {
                index: i,
                layers: layers.len(),
            };
            let x = match i {
                0 => input,
                _ => outputs[i - 1].as_deref().ok_or_else(missing)?,
            };
            let from = match layer.reads_from() {
                Some(j) => Some(
                    outputs
                        .get(j)
                        .and_then(|o| o.as_deref())
                        .ok_or_else(missing)?,
                ),
                None => None,
            };
            let y = self.apply_layer(i, x, from)?;
            outputs[i] = Some(y);
            if !keep_all {
                // Drop every output no later layer reads.
                for j in [i.checked_sub(1), layer.reads_from()].into_iter().flatten() {
                    if last_use[j] <= i {
                        outputs[j] = None;
                    }
                }
            }
        }
        Ok(outputs)
    }
}
