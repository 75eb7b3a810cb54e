//! Worst-case value ranges and the accumulator check (MODEL-5).
//!
//! Starting from the declared input range, an interval `[min, max]` that
//! contains every value of a layer's output (for every input in range) is
//! propagated through the network:
//!
//! * conv2d / linear: per output `o`, `bias_o + Σ_j min(w_oj·lo, w_oj·hi)` to
//!   `bias_o + Σ_j max(w_oj·lo, w_oj·hi)`, where `[lo, hi]` is the input
//!   interval, widened to contain 0 when the conv pads (padding reads zeros);
//!   the output interval is the hull over `o`;
//! * avgpool (sum of `k²` values): `[k²·lo, k²·hi]`; global_avgpool: `[H·W·lo, H·W·hi]`;
//! * residual_add: the sum of the two intervals; flatten, branch: unchanged
//!   (branch: the interval of layer `from`);
//! * relu: `[max(lo, 0), max(hi, 0)]`; maxpool: unchanged; requantize: the
//!   op applied to both ends (it is monotone since `multiplier > 0`).
//!
//! Intervals are held as `i64`: a value outside `i64` makes the evaluator fail
//! (MODEL-4), so clamping an interval to `i64` keeps it sound for every
//! evaluation that succeeds. Worst-case accumulators are computed without
//! that clamp (saturating at `u128::MAX`).
//!
//! The worst-case accumulator `|y|` of a linear layer, the figure checked
//! against a parameter set's `b` bits, is PARAM-6's bound
//! `max_o (Σ_j |w_oj|·max|x| + |bias_o|)` for conv2d and linear (exactly what
//! [`ParameterSet::check_accumulator`] computes; it is ≥ the interval bound),
//! and `max(|min|, |max|)` of the (unclamped) output interval for the other
//! linear layers. Every linear layer is checked, even one whose output the
//! client never decrypts directly (conservative).

use super::error::ModelError;
use super::ir::{Layer, Model, Side};
use crate::params::{ParamError, ParameterSet};

/// A closed integer interval `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval {
    /// Lower end, inclusive.
    pub min: i64,
    /// Upper end, inclusive; `min ≤ max` for every interval this module
    /// computes.
    pub max: i64,
}

impl Interval {
    /// `max(|min|, |max|)`.
    pub fn max_abs(&self) -> u64 {
        self.min.unsigned_abs().max(self.max.unsigned_abs())
    }

    /// Whether `v` lies in the interval.
    pub fn contains(&self, v: i64) -> bool {
        self.min <= v && v <= self.max
    }
}

/// The propagated bounds of one layer (MODEL-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerBound {
    /// Interval of the layer's input (the previous layer's output).
    pub input: Interval,
    /// Interval containing every value the layer outputs.
    pub output: Interval,
    /// For linear (server-side) layers, the worst-case `|y|` checked against
    /// the parameter set; `None` for client-side layers.
    pub accumulator: Option<u128>,
}

/// A wide interval (before clamping to `i64`).
#[derive(Clone, Copy)]
struct Wide {
    min: i128,
    max: i128,
}

impl Wide {
    fn of(i: Interval) -> Self {
        Self {
            min: i128::from(i.min),
            max: i128::from(i.max),
        }
    }

    fn scale(self, k: usize) -> Self {
        let k = i128::try_from(k).unwrap_or(i128::MAX);
        Self {
            min: self.min.saturating_mul(k),
            max: self.max.saturating_mul(k),
        }
    }

    fn max_abs(self) -> u128 {
        self.min.unsigned_abs().max(self.max.unsigned_abs())
    }

    fn clamp(self) -> Interval {
        let narrow = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        Interval {
            min: narrow(self.min),
            max: narrow(self.max),
        }
    }
}

/// Per-row intervals and PARAM-6 bound of a weight matrix on input `x`.
/// Returns (hull of the output intervals, max_o (‖w_o‖₁·max|x| + |b_o|)).
fn weighted(weights: &[i64], bias: &[i64], x: Interval, pads: bool) -> (Wide, u128) {
    let x_abs = u128::from(x.max_abs());
    let (lo, hi) = if pads {
        (i128::from(x.min.min(0)), i128::from(x.max.max(0)))
    } else {
        (i128::from(x.min), i128::from(x.max))
    };
    let fan_in = weights.len() / bias.len().max(1);
    let mut hull = Wide {
        min: i128::MAX,
        max: i128::MIN,
    };
    let mut worst = 0u128;
    for (row, &b) in weights.chunks(fan_in.max(1)).zip(bias) {
        let (mut row_lo, mut row_hi) = (i128::from(b), i128::from(b));
        let mut l1 = 0u128;
        for &w in row {
            let w = i128::from(w);
            // |w·x| ≤ 2^126: the products fit.
            let (a, c) = (w * lo, w * hi);
            row_lo = row_lo.saturating_add(a.min(c));
            row_hi = row_hi.saturating_add(a.max(c));
            l1 = l1.saturating_add(w.unsigned_abs());
        }
        hull.min = hull.min.min(row_lo);
        hull.max = hull.max.max(row_hi);
        let bound = l1
            .saturating_mul(x_abs)
            .saturating_add(u128::from(b.unsigned_abs()));
        worst = worst.max(bound);
    }
    (hull, worst)
}

fn rows<'a>(weights: &'a [i64], bias: &[i64]) -> impl Iterator<Item = &'a [i64]> {
    let fan_in = weights.len() / bias.len().max(1);
    weights.chunks(fan_in.max(1))
}

impl Model {
    /// MODEL-5: the propagated interval of every layer's input and output and
    /// the worst-case accumulator of every linear layer, in layer order.
    /// Never fails: arithmetic saturates (see the module documentation).
    pub fn bounds(&self) -> Vec<LayerBound> {
        let spec = self.input();
        let mut out: Vec<LayerBound> = Vec::with_capacity(self.layers().len());
        let mut x = Interval {
            min: spec.min,
            max: spec.max,
        };
        for (index, layer) in self.layers().iter().enumerate() {
            let shape = self.input_shape(index).unwrap_or(spec.shape);
            let earlier = |from: usize| out.get(from).map_or(x, |b: &LayerBound| b.output);
            let (wide, weighted_bound) = match layer {
                Layer::Conv2d {
                    weights,
                    bias,
                    padding,
                    ..
                } => {
                    let (w, bound) = weighted(weights, bias, x, *padding > 0);
                    (w, Some(bound))
                }
                Layer::Linear { weights, bias, .. } => {
                    let (w, bound) = weighted(weights, bias, x, false);
                    (w, Some(bound))
                }
                Layer::AvgPool { kernel, .. } => {
                    (Wide::of(x).scale(kernel.saturating_mul(*kernel)), None)
                }
                Layer::GlobalAvgPool => (
                    Wide::of(x).scale(shape.height.saturating_mul(shape.width)),
                    None,
                ),
                Layer::Flatten | Layer::MaxPool { .. } => (Wide::of(x), None),
                Layer::ResidualAdd { from } => {
                    let (a, b) = (Wide::of(x), Wide::of(earlier(*from)));
                    (
                        Wide {
                            min: a.min + b.min,
                            max: a.max + b.max,
                        },
                        None,
                    )
                }
                Layer::Branch { from } => (Wide::of(earlier(*from)), None),
                Layer::Relu => (
                    Wide::of(Interval {
                        min: x.min.max(0),
                        max: x.max.max(0),
                    }),
                    None,
                ),
                Layer::Requantize {
                    multiplier,
                    shift,
                    min,
                    max,
                } => {
                    let rq = |v| super::requantize(v, *multiplier, *shift, *min, *max);
                    (
                        Wide::of(Interval {
                            min: rq(x.min),
                            max: rq(x.max),
                        }),
                        None,
                    )
                }
            };
            let accumulator = match layer.side() {
                Side::Server => Some(weighted_bound.unwrap_or(wide.max_abs())),
                Side::Client => None,
            };
            let bound = LayerBound {
                input: x,
                output: wide.clamp(),
                accumulator,
            };
            x = bound.output;
            out.push(bound);
        }
        out
    }

    /// MODEL-5: `(layer index, worst-case |y|)` for every linear layer.
    pub fn accumulator_bounds(&self) -> Vec<(usize, u128)> {
        self.bounds()
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.accumulator.map(|a| (i, a)))
            .collect()
    }

    /// MODEL-5: refuses the model if any linear layer's worst-case
    /// accumulator does not fit `params`' `b` signed bits (`|y| ≥ 2^(b−1)`).
    /// Conv2d and linear layers go through
    /// [`ParameterSet::check_accumulator`] (PARAM-6); the error names the
    /// layer, and `output` is the output channel / row (0 for the other
    /// linear layers, which are bounded per tensor).
    pub fn check_against(&self, params: &ParameterSet) -> Result<(), ModelError> {
        let b = params.plaintext_bits();
        let limit = 1u128 << (b - 1).min(127);
        for (index, (layer, bound)) in self.layers().iter().zip(self.bounds()).enumerate() {
            let op = layer.op_name();
            let wrap = |source: ParamError| ModelError::AccumulatorOverflow {
                layer: index,
                op,
                source,
            };
            match layer {
                Layer::Conv2d { weights, bias, .. } | Layer::Linear { weights, bias, .. } => {
                    params
                        .check_accumulator(rows(weights, bias), bias, bound.input.max_abs())
                        .map_err(wrap)?;
                }
                _ => {
                    let Some(worst) = bound.accumulator else {
                        continue;
                    };
                    if worst >= limit {
                        return Err(wrap(ParamError::AccumulatorOverflow {
                            set: params.name().to_owned(),
                            output: 0,
                            worst,
                            needed_bits: crate::params::accumulator_bits(worst),
                            plaintext_bits: b,
                        }));
                    }
                }
            }
        }
        Ok(())
    }
}
