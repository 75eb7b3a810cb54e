//! Matrix–vector coefficient-encoding plans (`safhire::layout::MatVecLayout`).
//!
//! `rows`, `cols` are small (0..=40, or up to 2047 for the exactness check)
//! or (rarely) huge; the ring degree is a power of two in 64..=4096 or an
//! arbitrary `usize`. `MatVecLayout::new` must never panic. On success:
//!
//! * placements are in range, one per input value, no shared slot;
//! * `output_positions()` are distinct, in range, exactly `rows` of them;
//! * `weight_polynomial` gives a length-n polynomial for every pair, and an
//!   error (no panic) for wrong-length weights or out-of-range indices;
//! * for rows·cols ≤ 2000 and n ≤ 1024, the encoded product (schoolbook
//!   `negacyclic_mul` of `encode_input` and `weight_polynomial`, summed over
//!   input ciphertexts, read by `decode_output`) equals `matvec_reference`
//!   exactly — including which instances overflow `i64`.

#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use safhire::layout::{matvec_reference, negacyclic_mul, LayoutError, MatVecLayout, MatVecShape};
use std::collections::HashSet;

const ENUM_LIMIT: usize = 1 << 18;
const COEFF_LIMIT: usize = 1 << 22;

fn dim(u: &mut Unstructured) -> usize {
    let b: u8 = u.arbitrary().unwrap_or(0);
    match b {
        0..=0xbf => (b % 41) as usize,
        0xc0..=0xef => u.arbitrary::<u16>().unwrap_or(0) as usize % 2048,
        _ => match b & 7 {
            0 => usize::MAX,
            1 => usize::MAX / 2 + 1,
            2 => 1 << 32,
            3 => (1 << 20) + 1,
            4 => u.arbitrary::<u32>().unwrap_or(0) as usize,
            _ => u.arbitrary::<usize>().unwrap_or(0),
        },
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

/// Values: mostly small, sometimes full i32 so that i64 overflow of the
/// reference is reachable (sums stay far inside i128).
fn values(u: &mut Unstructured, len: usize, wide: bool) -> Vec<i64> {
    (0..len)
        .map(|_| {
            if wide {
                u.arbitrary::<i32>().unwrap_or(0) as i64
            } else {
                u.arbitrary::<i8>().unwrap_or(0) as i64
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let shape = MatVecShape { rows: dim(&mut u), cols: dim(&mut u) };
    let n = ring_degree(&mut u);
    let Ok(layout) = MatVecLayout::new(shape, n) else {
        return;
    };
    check_layout(&layout, &shape, n, &mut u);
});

fn check_layout(layout: &MatVecLayout, shape: &MatVecShape, n: usize, u: &mut Unstructured) {
    assert_eq!(layout.shape(), shape);
    assert_eq!(layout.ring_degree(), n);
    let weight_len = shape.weight_len().expect("layout accepted, weight_len refused");
    let (in_cts, out_cts) = (layout.input_ciphertexts(), layout.output_ciphertexts());
    let (ni, no) = (layout.block_cols(), layout.block_rows());
    assert!(ni >= 1 && no >= 1 && ni.checked_mul(no).is_some_and(|x| x <= n), "blocks {ni}×{no} exceed n = {n}");
    assert_eq!(in_cts, shape.cols.div_ceil(ni));
    assert_eq!(out_cts, shape.rows.div_ceil(no));

    for i in [0, shape.rows / 2, shape.rows - 1] {
        let (ct, coeff) = layout.output_position(i).expect("in-range row refused");
        assert!(ct < out_cts && coeff < n, "row {i} at ({ct},{coeff}) out of range");
    }
    assert!(layout.output_position(shape.rows).is_err());

    if shape.cols <= ENUM_LIMIT {
        let placements = layout.input_placements();
        assert_eq!(placements.len(), shape.cols);
        let mut slots = HashSet::new();
        for (j, pl) in placements.iter().enumerate() {
            assert!(pl.ciphertext < in_cts && pl.coefficient < n, "placement {pl:?} out of range");
            assert_eq!((pl.channel, pl.row, pl.col), (0, 0, j), "placement order");
            assert!(slots.insert((pl.ciphertext, pl.coefficient)), "shared slot {pl:?}");
        }
    }
    if shape.rows <= ENUM_LIMIT {
        let positions = layout.output_positions();
        assert_eq!(positions.len(), shape.rows);
        let mut seen = HashSet::new();
        for &(ct, coeff) in &positions {
            assert!(ct < out_cts && coeff < n, "output position ({ct},{coeff}) out of range");
            assert!(seen.insert((ct, coeff)), "two rows share ({ct},{coeff})");
        }
    }

    let wrong_len = match u.arbitrary::<u8>().unwrap_or(0) % 3 {
        0 => 0,
        1 => weight_len.saturating_sub(1),
        _ => weight_len.saturating_add(1),
    };
    if wrong_len <= ENUM_LIMIT + 1 {
        let bad = vec![1i64; wrong_len];
        assert!(matches!(
            layout.weight_polynomial(&bad, 0, 0),
            Err(LayoutError::WeightCountMismatch { .. })
        ));
    }
    if weight_len > ENUM_LIMIT {
        return;
    }
    let wide = u.arbitrary::<u8>().unwrap_or(0) >= 0xf0;
    let weights = values(u, weight_len, wide);
    assert!(layout.weight_polynomial(&weights, out_cts, 0).is_err());
    assert!(layout.weight_polynomial(&weights, 0, in_cts).is_err());
    let max_pairs = (COEFF_LIMIT / n).clamp(1, 64);
    let mut pairs = 0;
    'pairs: for o in [0, out_cts / 2, out_cts - 1] {
        for i in [0, in_cts / 2, in_cts - 1] {
            if pairs == max_pairs {
                break 'pairs;
            }
            pairs += 1;
            let w = layout.weight_polynomial(&weights, o, i).expect("valid pair refused");
            let w = w.expect("every mat-vec pair interacts");
            assert_eq!(w.len(), n);
        }
    }

    // Exactness.
    if weight_len > 2000 || n > 1024 {
        return;
    }
    let input = values(u, shape.cols, wide);
    assert!(layout.encode_input(&input[1..]).is_err());
    let encoded = layout.encode_input(&input).expect("right-size input refused");
    assert_eq!(encoded.len(), in_cts);
    assert!(encoded.iter().all(|p| p.len() == n));
    let mut outputs = Vec::with_capacity(out_cts);
    for o in 0..out_cts {
        let mut acc = vec![0i128; n];
        for (i, x) in encoded.iter().enumerate() {
            let w = layout.weight_polynomial(&weights, o, i).unwrap().unwrap();
            // Inputs first: negacyclic_mul skips their many zeros.
            for (a, p) in acc.iter_mut().zip(negacyclic_mul(x, &w)) {
                *a += p;
            }
        }
        outputs.push(acc);
    }
    let got: Vec<i128> = layout.decode_output(&outputs).expect("right-size outputs refused");
    assert_eq!(got.len(), shape.rows);
    match matvec_reference(shape, &input, &weights) {
        Ok(want) => {
            let want: Vec<i128> = want.into_iter().map(i128::from).collect();
            assert!(got == want, "encoded mat-vec differs from matvec_reference for {shape:?}, n = {n}");
        }
        Err(LayoutError::ArithmeticOverflow) => assert!(
            got.iter().any(|&y| i64::try_from(y).is_err()),
            "matvec_reference reported overflow but every row fits i64"
        ),
        Err(e) => panic!("matvec_reference refused a valid instance: {e}"),
    }
}
