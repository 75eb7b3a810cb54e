//! Homomorphic linear layers: Cheetah coefficient encodings (see
//! [`crate::layout`]) evaluated as ciphertext × plaintext products
//! accumulated in the NTT domain.

use crate::layout::{Conv2dLayout, LayoutError, MatVecLayout};
use crate::rlwe::{Ciphertext, Context, NttPlaintext};

/// Weight polynomials of one layer, transformed once per model load.
/// `weights[k][m]` multiplies input ciphertext m into output ciphertext k.
pub struct EncodedLayer {
    inputs: usize,
    weights: Vec<Vec<Option<NttPlaintext>>>,
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
    fn input_ciphertexts(&self) -> usize;
    fn output_ciphertexts(&self) -> usize;
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
    pub fn new(
        ctx: &Context,
        layout: &impl CoefficientLayout,
        weights: &[i64],
    ) -> Result<Self, LayoutError> {
        let inputs = layout.input_ciphertexts();
        let weights = (0..layout.output_ciphertexts())
            .map(|k| {
                (0..inputs)
                    .map(|m| {
                        Ok(layout
                            .weight_polynomial(weights, k, m)?
                            .map(|w| ctx.plaintext_ntt(&w)))
                    })
                    .collect::<Result<Vec<_>, LayoutError>>()
            })
            .collect::<Result<Vec<_>, LayoutError>>()?;
        Ok(Self { inputs, weights })
    }

    pub fn input_ciphertexts(&self) -> usize {
        self.inputs
    }

    /// Evaluates the layer: each input is transformed once, each output is
    /// one accumulation and one inverse transform.
    ///
    /// # Panics
    /// If `inputs.len()` differs from the layout's input count (a caller bug).
    pub fn evaluate(&self, ctx: &Context, inputs: &[Ciphertext]) -> Vec<Ciphertext> {
        assert_eq!(inputs.len(), self.inputs, "input ciphertext count");
        let transformed: Vec<_> = inputs.iter().map(|c| ctx.to_ntt(c)).collect();
        self.weights
            .iter()
            .map(|row| {
                let mut acc = ctx.ntt_zero();
                for (w, x) in row.iter().zip(&transformed) {
                    if let Some(w) = w {
                        ctx.mul_plain_accumulate(&mut acc, x, w);
                    }
                }
                ctx.from_ntt(acc)
            })
            .collect()
    }
}
