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

/// Weight polynomials of one layer, encoded once per model load and kept in
/// coefficient form (compact, narrow integers); each is transformed when a
/// round uses it. `weights[k][m]` multiplies input ciphertext m into output
/// ciphertext k.
pub struct EncodedLayer {
    inputs: usize,
    weights: Vec<Vec<Option<CompactPolynomial>>>,
    max_l1: u128,
}

/// One weight polynomial up to its last non-zero coefficient, each
/// coefficient in the narrowest signed width that holds all of them.
///
/// Why not the transformed polynomial: that is L·N words (32 KiB at
/// N = 4096) per interacting ciphertext pair, 4.5 GiB for ResNet-18, while
/// the coefficients are small and mostly zero beyond a short prefix. A
/// round transforms each polynomial once anyway (one forward NTT beside the
/// product it feeds), so keeping them compact costs little time.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CompactPolynomial {
    I8(Box<[i8]>),
    I16(Box<[i16]>),
    I32(Box<[i32]>),
    I64(Box<[i64]>),
}

impl CompactPolynomial {
    /// Stores `coeffs` without trailing zeros, in the narrowest width every
    /// coefficient converts to exactly (checked conversions: a value that
    /// does not fit a width moves the polynomial to the next, never
    /// truncates).
    fn new(coeffs: &[i64]) -> Self {
        let used = coeffs
            .iter()
            .rposition(|&c| c != 0)
            .map_or(0, |last| last + 1);
        let used = &coeffs[..used];
        fn narrow<T: TryFrom<i64>>(coeffs: &[i64]) -> Option<Box<[T]>> {
            coeffs.iter().map(|&c| T::try_from(c).ok()).collect()
        }
        if let Some(c) = narrow(used) {
            Self::I8(c)
        } else if let Some(c) = narrow(used) {
            Self::I16(c)
        } else if let Some(c) = narrow(used) {
            Self::I32(c)
        } else {
            Self::I64(used.into())
        }
    }

    /// The transform [`Context::plaintext_ntt`] gives for the original
    /// coefficients, into a reused buffer.
    fn transform_into(&self, ctx: &Context, out: &mut NttPlaintext) {
        match self {
            Self::I8(c) => ctx.plaintext_ntt_into(c, out),
            Self::I16(c) => ctx.plaintext_ntt_into(c, out),
            Self::I32(c) => ctx.plaintext_ntt_into(c, out),
            Self::I64(c) => ctx.plaintext_ntt_into(c, out),
        }
    }
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
    /// Encodes the weights, refusing them if any output
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
                // An all-zero polynomial (e.g. a batch's off-diagonal
                // block, ENG-15) adds nothing: no product is formed for it.
                let poly = layout
                    .weight_polynomial(weights, k, m)?
                    .filter(|w| w.iter().any(|&c| c != 0));
                if let Some(w) = &poly {
                    l1 += w.iter().map(|&c| c.unsigned_abs() as u128).sum::<u128>();
                }
                row.push(poly.map(|w| CompactPolynomial::new(&w)));
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
    /// one accumulation and one inverse transform, each weight polynomial
    /// is transformed when its product is accumulated (into one buffer per
    /// output task, so memory grows with the threads, not the weights).
    /// Inputs, then outputs, in parallel on the caller's rayon pool
    /// (src/par.rs); each output sums its products in input order, so the
    /// result is the same on any pool.
    ///
    /// # Panics
    /// If `inputs.len()` differs from the layout's input count (a caller bug).
    pub fn evaluate(&self, ctx: &Context, inputs: &[Ciphertext]) -> Vec<Ciphertext> {
        assert_eq!(inputs.len(), self.inputs, "input ciphertext count");
        let transformed = crate::par::map(inputs, |c| ctx.to_ntt(c));
        crate::par::map(&self.weights, |row| {
            let mut acc = ctx.ntt_zero();
            let mut w_ntt = ctx.plaintext_ntt_buffer();
            for (w, x) in row.iter().zip(&transformed) {
                if let Some(w) = w {
                    w.transform_into(ctx, &mut w_ntt);
                    ctx.mul_plain_accumulate(&mut acc, x, &w_ntt);
                }
            }
            ctx.from_ntt(acc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterSet;
    use crate::rlwe::SecretKey;
    use crate::rng::Csprng;
    use proptest::prelude::*;

    impl CompactPolynomial {
        /// The stored coefficients, widened back to i64.
        fn coefficients(&self) -> Vec<i64> {
            match self {
                Self::I8(c) => c.iter().map(|&x| x.into()).collect(),
                Self::I16(c) => c.iter().map(|&x| x.into()).collect(),
                Self::I32(c) => c.iter().map(|&x| x.into()).collect(),
                Self::I64(c) => c.to_vec(),
            }
        }

        fn width_bits(&self) -> u32 {
            match self {
                Self::I8(_) => 8,
                Self::I16(_) => 16,
                Self::I32(_) => 32,
                Self::I64(_) => 64,
            }
        }
    }

    /// The bits a signed integer type needs to hold `x`.
    fn bits_needed(x: i64) -> u32 {
        [8u32, 16, 32]
            .into_iter()
            .find(|&b| x >= -(1i64 << (b - 1)) && x < 1i64 << (b - 1))
            .unwrap_or(64)
    }

    #[test]
    fn a_coefficient_too_wide_for_a_width_widens_the_polynomial_never_truncates() {
        let cases: [(&[i64], u32); 9] = [
            (&[0, -128, 127, 0, 0], 8),
            (&[5, 300, 0], 16),
            (&[128], 16),
            (&[-129], 16),
            (&[32767, -32768], 16),
            (&[1, 32768], 32),
            (&[i64::from(i32::MIN) - 1], 64),
            (&[i64::MIN, 0, i64::MAX], 64),
            (&[0, 0, 0], 8),
        ];
        for (coeffs, bits) in cases {
            let compact = CompactPolynomial::new(coeffs);
            assert_eq!(compact.width_bits(), bits, "{coeffs:?}");
            let mut back = compact.coefficients();
            assert!(back.last() != Some(&0), "trailing zeros dropped: {back:?}");
            back.resize(coeffs.len(), 0);
            assert_eq!(back, coeffs);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn compact_form_round_trips_exactly_in_the_narrowest_width(
            coeffs in proptest::collection::vec(
                prop_oneof![Just(0i64), -3i64..=3, -200i64..=200, any::<i32>().prop_map(i64::from), any::<i64>()],
                0..64,
            ),
        ) {
            let compact = CompactPolynomial::new(&coeffs);
            let used = coeffs.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
            prop_assert_eq!(compact.coefficients(), &coeffs[..used]);
            let widest = coeffs.iter().map(|&c| bits_needed(c)).max().unwrap_or(8);
            prop_assert_eq!(compact.width_bits(), widest);
        }
    }

    /// The transform as it was made once per model before (the oracle).
    fn transformed_once(ctx: &Context, coeffs: &[i64]) -> NttPlaintext {
        let mut values = vec![0u64; ctx.n() * ctx.limbs()];
        ctx.ntt_q.forward_signed(coeffs, &mut values);
        ctx.ntt_q.normalize(&mut values);
        NttPlaintext { values }
    }

    // The per-round transform is the one made once per model before:
    // same values bit for bit, on a one-limb and a two-limb set, and the
    // evaluated layer equals the products of the once-transformed weights.
    #[test]
    fn per_round_transforms_equal_the_transform_made_once() {
        for set in ["b16", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let mut rng = Csprng::from_seed([7; 16]);
            let mut buf = ctx.plaintext_ntt_buffer();
            for bound in [3u64, 300, 1 << 20, 1 << 40] {
                let coeffs: Vec<i64> = (0..ctx.n())
                    .map(|i| {
                        let x = rng.uniform_below(2 * bound + 1) as i64 - bound as i64;
                        if i % 5 == 0 {
                            x
                        } else {
                            0
                        }
                    })
                    .collect();
                // Dirty buffer: the transform must overwrite all of it.
                buf.values.fill(u64::MAX);
                CompactPolynomial::new(&coeffs).transform_into(&ctx, &mut buf);
                assert!(
                    buf.values == transformed_once(&ctx, &coeffs).values,
                    "{set}, bound {bound}"
                );
            }

            let shape = crate::layout::Conv2dShape {
                in_channels: 3,
                in_height: 12,
                in_width: 12,
                out_channels: 4,
                kernel_height: 3,
                kernel_width: 3,
                stride: 1,
                padding: 1,
            };
            let layout = crate::layout::Conv2dLayout::new(shape, ctx.n()).unwrap();
            let weights: Vec<i64> = (0..shape.weight_len().unwrap())
                .map(|_| rng.uniform_below(255) as i64 - 127)
                .collect();
            let layer = EncodedLayer::new(&ctx, &layout, &weights).unwrap();
            let sk = SecretKey::generate(&ctx, &mut rng);
            let input: Vec<i64> = (0..shape.input_len().unwrap())
                .map(|_| rng.uniform_below(15) as i64 - 7)
                .collect();
            let cts: Vec<Ciphertext> = layout
                .encode_input(&input)
                .unwrap()
                .iter()
                .map(|p| ctx.encrypt(&sk, p, &mut rng))
                .collect();
            let transformed: Vec<_> = cts.iter().map(|c| ctx.to_ntt(c)).collect();
            let expected: Vec<Ciphertext> = (0..layout.output_ciphertexts())
                .map(|k| {
                    let mut acc = ctx.ntt_zero();
                    for (m, x) in transformed.iter().enumerate() {
                        if let Some(w) = layout.weight_polynomial(&weights, k, m).unwrap() {
                            ctx.mul_plain_accumulate(&mut acc, x, &transformed_once(&ctx, &w));
                        }
                    }
                    ctx.from_ntt(acc)
                })
                .collect();
            assert!(layer.evaluate(&ctx, &cts) == expected, "{set}");
        }
    }
}
