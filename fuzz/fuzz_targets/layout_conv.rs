//! Conv2d coefficient-encoding plans (`safhire::layout::Conv2dLayout`).
//!
//! The shape comes from the input: each field is a small value in 0..=40, or
//! (rarely) a huge one; the ring degree is a power of two in 64..=4096 or an
//! arbitrary `usize`. `Conv2dLayout::new` must never panic. On success:
//!
//! * every input placement lies in range (ciphertext < `input_ciphertexts()`,
//!   coefficient < n, channel/row/col inside the input) and no two
//!   placements share a (ciphertext, coefficient) slot;
//! * `output_positions()` are distinct, in range, and there are exactly
//!   `out_channels·out_h·out_w` of them;
//! * `weight_polynomial` returns a length-n polynomial exactly for the
//!   interacting pairs (those in `input_ciphertexts_for_output`), and an
//!   error, not a panic, for a weight vector of the wrong length or an index
//!   out of range;
//! * for small shapes, the encoded product (schoolbook negacyclic products
//!   summed over input ciphertexts, read at the output positions) equals
//!   `conv2d_reference` exactly.
//!
//! Enumerations are bounded so that huge (but valid) shapes stay fast; for
//! those only the corner outputs are checked.

#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use safhire::layout::{conv2d_reference, negacyclic_mul, Conv2dLayout, Conv2dShape, LayoutError};
use std::collections::HashSet;

/// Largest number of items any check enumerates.
const ENUM_LIMIT: usize = 1 << 18;
/// Largest number of polynomial coefficients the weight checks allocate.
const COEFF_LIMIT: usize = 1 << 22;
/// Largest schoolbook work (coefficient products) for the exactness check.
const MUL_LIMIT: usize = 1 << 24;

fn field(u: &mut Unstructured) -> usize {
    let b: u8 = u.arbitrary().unwrap_or(0);
    if b < 0xf0 {
        return (b % 41) as usize;
    }
    match b & 7 {
        0 => usize::MAX,
        1 => usize::MAX / 2 + 1,
        2 => 1 << 32,
        3 => (1 << 20) + 1,
        4 => u.arbitrary::<u16>().unwrap_or(0) as usize,
        5 => u.arbitrary::<u32>().unwrap_or(0) as usize,
        _ => u.arbitrary::<usize>().unwrap_or(0),
    }
}

fn ring_degree(u: &mut Unstructured) -> usize {
    let b: u8 = u.arbitrary().unwrap_or(0);
    if b < 0xe0 {
        return 64 << (b % 7);
    }
    match b & 3 {
        0 => 1usize.checked_shl(u.arbitrary::<u8>().unwrap_or(0) as u32 % 64).unwrap_or(0),
        1 => u.arbitrary::<u16>().unwrap_or(0) as usize,
        _ => u.arbitrary::<usize>().unwrap_or(0),
    }
}

fn small_values(u: &mut Unstructured, len: usize) -> Vec<i64> {
    (0..len).map(|_| u.arbitrary::<i8>().unwrap_or(0) as i64).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let shape = Conv2dShape {
        in_channels: field(&mut u),
        in_height: field(&mut u),
        in_width: field(&mut u),
        out_channels: field(&mut u),
        kernel_height: field(&mut u),
        kernel_width: field(&mut u),
        stride: field(&mut u),
        padding: field(&mut u),
    };
    let n = ring_degree(&mut u);
    let Ok(layout) = Conv2dLayout::new(shape, n) else {
        return;
    };
    check_layout(&layout, &shape, n, &mut u);
});

fn check_layout(layout: &Conv2dLayout, shape: &Conv2dShape, n: usize, u: &mut Unstructured) {
    assert_eq!(layout.shape(), shape);
    assert_eq!(layout.ring_degree(), n);
    // A valid layout implies a valid shape: the derived sizes exist.
    let out_h = shape.output_height().expect("layout accepted, output_height refused");
    let out_w = shape.output_width().expect("layout accepted, output_width refused");
    let input_len = shape.input_len().expect("layout accepted, input_len refused");
    let weight_len = shape.weight_len().expect("layout accepted, weight_len refused");
    let output_len = shape.output_len().expect("layout accepted, output_len refused");
    assert_eq!((layout.output_height(), layout.output_width()), (out_h, out_w));
    assert_eq!(Some(output_len), shape.out_channels.checked_mul(out_h).and_then(|x| x.checked_mul(out_w)));
    let (in_cts, out_cts) = (layout.input_ciphertexts(), layout.output_ciphertexts());
    assert!(in_cts >= 1 && out_cts >= 1);
    assert!(layout.row_pitch() * shape.kernel_height <= n, "kernel rows exceed n");

    // Corner outputs: in range even when the shape is too big to enumerate.
    for (o, i, j) in [
        (0, 0, 0),
        (shape.out_channels - 1, out_h - 1, out_w - 1),
        (shape.out_channels / 2, out_h / 2, out_w / 2),
    ] {
        let (ct, coeff) = layout.output_position(o, i, j).expect("in-range output refused");
        assert!(ct < out_cts && coeff < n, "output ({o},{i},{j}) at ({ct},{coeff}) out of range");
    }
    assert!(layout.output_position(shape.out_channels, 0, 0).is_err());
    assert!(layout.output_position(0, out_h, 0).is_err());
    assert!(layout.output_position(0, 0, out_w).is_err());

    // Input placements.
    let small_inputs = in_cts.checked_mul(n).is_some_and(|x| x <= ENUM_LIMIT);
    if small_inputs {
        let placements = layout.input_placements();
        let mut slots = HashSet::new();
        let mut values = HashSet::new();
        for pl in &placements {
            assert!(pl.ciphertext < in_cts, "placement ciphertext {} ≥ {in_cts}", pl.ciphertext);
            assert!(pl.coefficient < n, "placement coefficient {} ≥ n = {n}", pl.coefficient);
            assert!(
                pl.channel < shape.in_channels && pl.row < shape.in_height && pl.col < shape.in_width,
                "placement of a value outside the input: {pl:?}"
            );
            assert!(slots.insert((pl.ciphertext, pl.coefficient)), "two values share a slot: {pl:?}");
            assert!(
                values.insert((pl.ciphertext, pl.channel, pl.row, pl.col)),
                "value placed twice in one ciphertext: {pl:?}"
            );
        }
    }

    // Output positions.
    if output_len <= ENUM_LIMIT {
        let positions = layout.output_positions();
        assert_eq!(positions.len(), output_len, "output position count");
        let mut seen = HashSet::new();
        for &(ct, coeff) in &positions {
            assert!(ct < out_cts && coeff < n, "output position ({ct},{coeff}) out of range");
            assert!(seen.insert((ct, coeff)), "two outputs share position ({ct},{coeff})");
        }
    }

    // Weight polynomials.
    let wrong_len = match u.arbitrary::<u8>().unwrap_or(0) % 3 {
        0 => 0,
        1 => weight_len.saturating_sub(1),
        _ => weight_len.saturating_add(1).min(ENUM_LIMIT + 1),
    };
    if wrong_len != weight_len && wrong_len <= ENUM_LIMIT + 1 {
        let bad = vec![1i64; wrong_len];
        assert!(matches!(
            layout.weight_polynomial(&bad, 0, 0),
            Err(LayoutError::WeightCountMismatch { .. })
        ));
    }
    if weight_len > ENUM_LIMIT {
        return;
    }
    let weights = small_values(u, weight_len);
    assert!(layout.weight_polynomial(&weights, out_cts, 0).is_err());
    assert!(layout.weight_polynomial(&weights, 0, in_cts).is_err());
    assert!(layout.input_ciphertexts_for_output(out_cts).is_err());
    let max_pairs = (COEFF_LIMIT / n).clamp(1, 64);
    let mut pairs = 0;
    'pairs: for o in 0..out_cts {
        let range = layout.input_ciphertexts_for_output(o).expect("in-range output ct refused");
        assert!(range.end <= in_cts && range.start < range.end, "bad input range {range:?}");
        // One interacting and one non-interacting neighbour of each end.
        for i in [range.start, range.end - 1, range.start.wrapping_sub(1), range.end] {
            if i >= in_cts {
                continue;
            }
            if pairs == max_pairs {
                break 'pairs;
            }
            pairs += 1;
            let w = layout.weight_polynomial(&weights, o, i).expect("valid pair refused");
            match w {
                Some(poly) => {
                    assert!(range.contains(&i), "weight for non-interacting pair ({o},{i})");
                    assert_eq!(poly.len(), n, "weight polynomial length");
                }
                None => assert!(!range.contains(&i), "no weight for interacting pair ({o},{i})"),
            }
        }
    }

    // Exactness on small instances.
    // (input_len = C·H·W counts values no output reads, so it can be huge
    // even when few are placed.)
    if !small_inputs || input_len > ENUM_LIMIT || output_len > ENUM_LIMIT || n > 1024 {
        return;
    }
    let interacting = layout.channel_blocks();
    let work = out_cts.saturating_mul(interacting).saturating_mul(n).saturating_mul(n);
    if work > MUL_LIMIT {
        return;
    }
    let input = small_values(u, input_len);
    let wrong = vec![0i64; input_len + 1];
    assert!(layout.encode_input(&wrong).is_err());
    let encoded = layout.encode_input(&input).expect("encode_input refused a right-size input");
    assert_eq!(encoded.len(), in_cts);
    assert!(encoded.iter().all(|p| p.len() == n));
    let mut outputs = Vec::with_capacity(out_cts);
    for o in 0..out_cts {
        let mut acc = vec![0i128; n];
        for i in layout.input_ciphertexts_for_output(o).unwrap() {
            let w = layout.weight_polynomial(&weights, o, i).unwrap().expect("interacting pair");
            for (a, p) in acc.iter_mut().zip(negacyclic_mul(&encoded[i], &w)) {
                *a += p;
            }
        }
        outputs.push(acc);
    }
    assert!(layout.decode_output::<i128, _>(&outputs[1..]).is_err());
    let got = layout.decode_output(&outputs).expect("decode_output refused the right polys");
    let want = conv2d_reference(shape, &input, &weights).expect("i8 values cannot overflow");
    let want: Vec<i128> = want.into_iter().map(i128::from).collect();
    assert!(got == want, "encoded Conv2d differs from conv2d_reference for {shape:?}, n = {n}");
}
