//! LIN-1, LIN-2: homomorphic Conv2d and mat-vec products decrypt to the
//! plaintext integer reference, bit for bit, for random shapes and weights.

mod common;

use common::fixture;
use proptest::prelude::*;
use safhire::layout::{
    conv2d_reference, matvec_reference, Conv2dLayout, Conv2dShape, MatVecLayout, MatVecShape,
};
use safhire::linear::EncodedLayer;
use safhire::rng::Csprng;

fn small(rng: &mut Csprng, len: usize, bound: i64) -> Vec<i64> {
    (0..len)
        .map(|_| rng.uniform_below(2 * bound as u64 + 1) as i64 - bound)
        .collect()
}

/// Encrypts `polys`, evaluates the layer, decrypts.
fn run(layer: &EncodedLayer, polys: &[Vec<i64>], seed: u8) -> Vec<Vec<i64>> {
    let f = fixture("wide");
    let mut rng = Csprng::from_seed([seed; 16]);
    let cts: Vec<_> = polys
        .iter()
        .map(|p| f.ctx.encrypt(&f.sk, p, &mut rng))
        .collect();
    layer
        .evaluate(&f.ctx, &cts)
        .iter()
        .map(|c| f.ctx.decrypt(&f.sk, c))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn conv2d_matches_plaintext_reference(
        in_channels in 1usize..6, out_channels in 1usize..6,
        h in 1usize..20, w in 1usize..20, k in 1usize..4,
        stride in 1usize..3, padding in 0usize..2, seed in any::<u8>(),
    ) {
        let shape = Conv2dShape {
            in_channels, in_height: h, in_width: w, out_channels,
            kernel_height: k, kernel_width: k, stride, padding,
        };
        prop_assume!(h + 2 * padding >= k && w + 2 * padding >= k);
        let f = fixture("wide");
        let layout = Conv2dLayout::new(shape, f.ctx.n()).unwrap();
        let mut rng = Csprng::from_seed([seed; 16]);
        let input = small(&mut rng, shape.input_len().unwrap(), 127);
        let weights = small(&mut rng, shape.weight_len().unwrap(), 127);
        let layer = EncodedLayer::new(&f.ctx, &layout, &weights).unwrap();
        let out = run(&layer, &layout.encode_input(&input).unwrap(), seed);
        let got: Vec<i64> = layout.decode_output(&out).unwrap();
        prop_assert_eq!(got, conv2d_reference(&shape, &input, &weights).unwrap());
    }

    #[test]
    fn matvec_matches_plaintext_reference(rows in 1usize..200, cols in 1usize..3000, seed in any::<u8>()) {
        let shape = MatVecShape { rows, cols };
        let f = fixture("wide");
        let layout = MatVecLayout::new(shape, f.ctx.n()).unwrap();
        let mut rng = Csprng::from_seed([seed; 16]);
        // Keep ‖ŵ‖₁ of every output ciphertext within the wide set's 2^16.
        prop_assume!(rows * cols <= 1 << 16);
        let bound = ((1i64 << 16) / (rows * cols) as i64).clamp(1, 127);
        let input = small(&mut rng, cols, 127);
        let weights = small(&mut rng, rows * cols, bound);
        let layer = EncodedLayer::new(&f.ctx, &layout, &weights).unwrap();
        let out = run(&layer, &layout.encode_input(&input).unwrap(), seed);
        let got: Vec<i64> = layout.decode_output(&out).unwrap();
        prop_assert_eq!(got, matvec_reference(&shape, &input, &weights).unwrap());
    }
}

#[test]
fn multi_ciphertext_conv_matches_reference() {
    // 16×32×32 → 16 channels, 3×3, padding 1: the ResNet-20 first-stage shape,
    // large enough to split across several input and output ciphertexts.
    let shape = Conv2dShape {
        in_channels: 16,
        in_height: 32,
        in_width: 32,
        out_channels: 16,
        kernel_height: 3,
        kernel_width: 3,
        stride: 1,
        padding: 1,
    };
    let f = fixture("wide");
    let layout = Conv2dLayout::new(shape, f.ctx.n()).unwrap();
    assert!(layout.input_ciphertexts() > 1 && layout.output_ciphertexts() > 1);
    let mut rng = Csprng::from_seed([9; 16]);
    let input = small(&mut rng, shape.input_len().unwrap(), 127);
    let weights = small(&mut rng, shape.weight_len().unwrap(), 127);
    let layer = EncodedLayer::new(&f.ctx, &layout, &weights).unwrap();
    let out = run(&layer, &layout.encode_input(&input).unwrap(), 9);
    let got: Vec<i64> = layout.decode_output(&out).unwrap();
    assert_eq!(got, conv2d_reference(&shape, &input, &weights).unwrap());
}

// LIN-3
#[test]
fn weights_beyond_the_noise_budget_are_refused() {
    use safhire::linear::LinearError;
    let f = fixture("wide");
    // One output row with ‖w‖₁ = 2^16 + 1 > 2^W for the wide set (W = 16).
    let shape = MatVecShape { rows: 1, cols: 514 };
    let layout = MatVecLayout::new(shape, f.ctx.n()).unwrap();
    let mut weights = vec![127i64; 514];
    weights[513] = 65537 - 127 * 513;
    assert_eq!(weights.iter().sum::<i64>(), 65537);
    match EncodedLayer::new(&f.ctx, &layout, &weights) {
        Err(LinearError::NoiseBudget {
            l1, allowed_log2, ..
        }) => {
            assert_eq!((l1, allowed_log2), (65537, 16));
        }
        other => panic!("expected a noise-budget refusal, got {other:?}"),
    }
    weights[513] -= 1;
    let layer = EncodedLayer::new(&f.ctx, &layout, &weights).unwrap();
    assert_eq!(layer.max_weight_l1(), 65536);
}
