//! Signed gadget decomposition (`safhire::rlwe::Decomposer`).
//!
//! For x (any u64, reduced mod q = SOLINAS) and every (base_log B, levels l)
//! with B ≤ 32, B·l ≥ 64 and l ≤ 64 (the parameter-set rules):
//!
//! * the digits recompose exactly: Σ d_j·2^(B·j) ≡ x (mod q), in i128;
//! * all but the top digit lie in [−2^(B−1), 2^(B−1));
//! * the top digit carries at most the documented bound
//!   |d_top| ≤ 2^max(0, 64 − B·(l − 1));
//! * digits beyond `levels` in the output slice are left untouched.

#![no_main]

use libfuzzer_sys::fuzz_target;
use safhire::math::{Modulus, SOLINAS};
use safhire::rlwe::Decomposer;

fuzz_target!(|data: &[u8]| {
    if data.len() < 11 {
        return;
    }
    let q = Modulus::new(SOLINAS).expect("SOLINAS is odd");
    let raw = u64::from_le_bytes(data[..8].try_into().unwrap());
    // Bias towards the centring boundary and the edges of [0, q).
    let x = match data[9] >> 5 {
        0 => raw % 8,
        1 => q.value() - 1 - raw % 8,
        2 => q.value() / 2 + raw % 8 - 4,
        _ => raw % q.value(),
    };
    let base_log = 1 + (data[8] as u32 % 32);
    let min_levels = 64usize.div_ceil(base_log as usize);
    let levels = min_levels + data[10] as usize % (64 - min_levels + 1);
    assert!(base_log as usize * levels >= 64 && levels <= 64);

    let dec = Decomposer::new(base_log, levels).expect("valid gadget: 1 ≤ B ≤ 32, B·l ≥ 64, l ≤ 64");
    // Degenerate gadgets are refused, not mis-decomposed.
    assert!(Decomposer::new(0, levels).is_none() && Decomposer::new(base_log, 0).is_none());
    const CANARY: i64 = 0x5a5a_5a5a_5a5a_5a5a;
    let mut out = vec![CANARY; levels + 1];
    dec.digits(q, x, &mut out);
    assert_eq!(out[levels], CANARY, "digits wrote past `levels`");
    let digits = &out[..levels];

    // Exact recomposition, over the integers (i128): Σ d_j 2^(Bj) ≡ x mod q.
    // |centred x| < 2^63, so digits at 2^(Bj) for Bj ≥ 126 must be zero
    // (asserted, which also keeps the sum inside i128).
    let mut acc: i128 = 0;
    for (j, &d) in digits.iter().enumerate() {
        let shift = base_log as usize * j;
        if d == 0 {
            continue;
        }
        assert!(shift < 126, "non-zero digit {d} at 2^{shift} (B = {base_log}, l = {levels}, x = {x})");
        let term = (d as i128).checked_mul(1i128 << shift).expect("digit term overflows i128");
        acc = acc.checked_add(term).expect("recomposition overflows i128");
    }
    assert_eq!(
        q.from_i128(acc),
        x,
        "digits {digits:?} do not recompose to x = {x} (B = {base_log}, l = {levels})"
    );
    assert_eq!(acc, q.centered(x) as i128, "recomposition is not the centred representative");

    let half = 1i64 << (base_log - 1);
    for (j, &d) in digits[..levels - 1].iter().enumerate() {
        assert!(
            (-half..half).contains(&d),
            "digit {j} = {d} outside [−2^{}, 2^{}) (B = {base_log}, l = {levels}, x = {x})",
            base_log - 1,
            base_log - 1
        );
    }
    let top_exp = 64i64 - base_log as i64 * (levels as i64 - 1);
    let top_bound: u64 = if top_exp <= 0 { 1 } else { 1u64 << top_exp.min(63) };
    let top = digits[levels - 1];
    assert!(
        top.unsigned_abs() <= top_bound,
        "top digit {top} exceeds 2^{top_exp} (B = {base_log}, l = {levels}, x = {x})"
    );
});
