//! Homomorphic linear layers (LIN-1, LIN-2, LIN-3): Cheetah coefficient encodings (see
//! [`crate::layout`]) evaluated as ciphertext × plaintext products
//! accumulated in the NTT domain.

use crate::layout::{Conv2dLayout, LayoutError, MatVecLayout};
use crate::rlwe::{Ciphertext, Context, NttPlaintext};
use thiserror::Error;

/// Why a layer's weights were refused. The model owner's fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinearError {
    /// The weights do not fit the layout: wrong length, or an index out of range.
    #[error("layer layout: {0}")]
    Layout(#[from] LayoutError),
    /// The noise of one output ciphertext grows with ‖ŵ‖₁ summed over every
    /// weight polynomial feeding it (all stacked channels or rows), and the
    /// parameter set's budget covers at most 2^W (proofs/noise-budget.md).
    #[error(
        "weights too large for the noise budget: output ciphertext {output} sums ‖ŵ‖₁ = {l1} > 2^{allowed_log2} \
         (use a parameter set with a larger `max_weight_l1_log2`, or smaller weights)"
    )]
    NoiseBudget {
        /// Index of the first output ciphertext over the budget.
        output: usize,
        /// Its ‖ŵ‖₁, summed over every weight polynomial feeding it.
        l1: u128,
        /// W, the set's `max_weight_l1_log2`: at most 2^W is allowed (LIN-3).
        allowed_log2: u32,
    },
}

/// Weight polynomials of one layer, transformed once per model load.
/// `weights[k][m]` multiplies input ciphertext m into output ciphertext k.
pub struct EncodedLayer {
    inputs: usize,
    weights: Vec<Vec<Option<NttPlaintext>>>,
    max_l1: u128,
}

impl std::fmt::Debug for EncodedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncodedLayer({} inputs, {} outputs)",
            self.inputs,
            self.weights.len()
        )
    }
}

/// The layout operations [`EncodedLayer`] needs; implemented by both layouts.
pub trait CoefficientLayout {
    /// Number of input ciphertexts the layer reads.
    fn input_ciphertexts(&self) -> usize;
    /// Number of output ciphertexts the layer produces.
    fn output_ciphertexts(&self) -> usize;
    /// The weight polynomial (length N, small signed coefficients) by which
    /// input ciphertext `input_ct` is multiplied into output ciphertext
    /// `output_ct`, or `None` when the pair does not interact. Refuses weights
    /// of the wrong length and out-of-range indices.
    fn weight_polynomial(
        &self,
        weights: &[i64],
        output_ct: usize,
        input_ct: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError>;
}

impl CoefficientLayout for Conv2dLayout {
    fn input_ciphertexts(&self) -> usize {
        Conv2dLayout::input_ciphertexts(self)
    }
    fn output_ciphertexts(&self) -> usize {
        Conv2dLayout::output_ciphertexts(self)
    }
    fn weight_polynomial(
        &self,
        w: &[i64],
        o: usize,
        i: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError> {
        Conv2dLayout::weight_polynomial(self, w, o, i)
    }
}

impl CoefficientLayout for MatVecLayout {
    fn input_ciphertexts(&self) -> usize {
        MatVecLayout::input_ciphertexts(self)
    }
    fn output_ciphertexts(&self) -> usize {
        MatVecLayout::output_ciphertexts(self)
    }
    fn weight_polynomial(
        &self,
        w: &[i64],
        o: usize,
        i: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError> {
        MatVecLayout::weight_polynomial(self, w, o, i)
    }
}

impl EncodedLayer {
    /// Encodes and transforms the weights, refusing them if any output
    /// ciphertext would exceed the parameter set's noise budget (LIN-3).
    pub fn new(
        ctx: &Context,
        layout: &impl CoefficientLayout,
        weights: &[i64],
    ) -> Result<Self, LinearError> {
        let inputs = layout.input_ciphertexts();
        let allowed_log2 = ctx.params().max_weight_l1_log2();
        let mut rows = Vec::with_capacity(layout.output_ciphertexts());
        let mut max_l1 = 0u128;
        for k in 0..layout.output_ciphertexts() {
            let mut row = Vec::with_capacity(inputs);
            let mut l1 = 0u128;
            for m in 0..inputs {
                let poly = layout.weight_polynomial(weights, k, m)?;
                if let Some(w) = &poly {
                    l1 += w.iter().map(|&c| c.unsigned_abs() as u128).sum::<u128>();
                }
                row.push(poly.map(|w| ctx.plaintext_ntt(&w)));
            }
            if l1 > 1u128 << allowed_log2 {
                return Err(LinearError::NoiseBudget {
                    output: k,
                    l1,
                    allowed_log2,
                });
            }
            max_l1 = max_l1.max(l1);
            rows.push(row);
        }
        Ok(Self {
            inputs,
            weights: rows,
            max_l1,
        })
    }

    /// The largest ‖ŵ‖₁ feeding one output ciphertext (the noise factor).
    pub fn max_weight_l1(&self) -> u128 {
        self.max_l1
    }

    /// Number of input ciphertexts [`evaluate`](Self::evaluate) expects.
    pub fn input_ciphertexts(&self) -> usize {
        self.inputs
    }

    /// Evaluates the layer: each input is transformed once, each output is
    /// one accumulation and one inverse transform. Inputs, then outputs, in
    /// parallel on the caller's rayon pool (src/par.rs); each output sums
    /// its products in input order, so the result is the same on any pool.
    ///
    /// # Panics
    /// If `inputs.len()` differs from the layout's input count (a caller bug).
    pub fn evaluate(&self, ctx: &Context, inputs: &[Ciphertext]) -> Vec<Ciphertext> {
        assert_eq!(inputs.len(), self.inputs, "input ciphertext count");
        let transformed = crate::par::map(inputs, |c| ctx.to_ntt(c));
        crate::par::map(&self.weights, |row| {
            let mut acc = ctx.ntt_zero();
            for (w, x) in row.iter().zip(&transformed) {
                if let Some(w) = w {
                    ctx.mul_plain_accumulate(&mut acc, x, w);
                }
            }
            ctx.from_ntt(acc)
        })
    }
}
