//! Value extraction (`safhire::extract`).
//!
//! For a random ciphertext (a, b) over Z_q[X]/(X^n + 1) (q = SOLINAS, n = 64
//! mostly, other small n sometimes), a random binary key s and an index
//! i < n, with phase(c) = b − a·s computed by a schoolbook negacyclic product
//! (u128 accumulation, independent of the library's NTT):
//!
//! * `shifted_to_constant(q, ct, i)` has phase X^(−i)·phase(ct): in
//!   particular its constant coefficient is phase(ct)_i, and its body's
//!   constant coefficient is b_i;
//! * `extract_lwe(q, ct, i)` = (mask, body) has body − Σ mask_k s_k =
//!   phase(ct)_i, body = b_i, and mask = (a'_0, −a'_{n−1}, …, −a'_1) where
//!   a' is the mask of the shifted ciphertext: both agree on the phase under
//!   every key, not just this one.

#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use safhire::extract::{extract_lwe, shifted_to_constant};
use safhire::math::{Modulus, SOLINAS};
use safhire::rlwe::Ciphertext;

const SIZES: [usize; 8] = [64, 64, 64, 64, 1, 2, 8, 32];

fn coefficient(u: &mut Unstructured, q: u64) -> u64 {
    let r: u64 = u.arbitrary().unwrap_or(0);
    match r & 15 {
        0 => 0,
        1 => q - 1,
        2 => q / 2 + (r >> 62),
        _ => r % q,
    }
}

/// phase = b − a·s in Z_q[X]/(X^n + 1), schoolbook.
fn phase(q: u64, a: &[u64], b: &[u64], s: &[u64]) -> Vec<u64> {
    let n = a.len();
    let q128 = q as u128;
    // pos[k] / neg[k]: sums of products landing on X^k with sign + / −.
    let mut pos = vec![0u128; n];
    let mut neg = vec![0u128; n];
    for (i, &ai) in a.iter().enumerate() {
        for (j, &sj) in s.iter().enumerate() {
            if sj == 0 {
                continue;
            }
            let prod = ai as u128 * sj as u128 % q128;
            if i + j < n {
                pos[i + j] = (pos[i + j] + prod) % q128;
            } else {
                neg[i + j - n] = (neg[i + j - n] + prod) % q128;
            }
        }
    }
    (0..n)
        .map(|k| {
            let as_k = (pos[k] + q128 - neg[k]) % q128;
            ((b[k] as u128 + q128 - as_k) % q128) as u64
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let q = Modulus::new(SOLINAS).expect("odd modulus");
    let qv = q.value();
    let mut u = Unstructured::new(data);
    let n = SIZES[u.arbitrary::<u8>().unwrap_or(0) as usize % SIZES.len()];
    let i = u.arbitrary::<u8>().unwrap_or(0) as usize % n;
    let a: Vec<u64> = (0..n).map(|_| coefficient(&mut u, qv)).collect();
    let b: Vec<u64> = (0..n).map(|_| coefficient(&mut u, qv)).collect();
    let s: Vec<u64> = (0..n).map(|_| u.arbitrary::<bool>().unwrap_or(false) as u64).collect();
    let ct = Ciphertext::from_parts(a.clone(), b.clone(), n, q).expect("reduced parts of length n");

    let want = phase(qv, &a, &b, &s);

    // Shifted ciphertext: phase X^(−i)·phase(ct).
    // Out-of-range indices are refused, never wrapped or panicking.
    assert!(shifted_to_constant(q, &ct, n + i).is_none() && extract_lwe(q, &ct, n + i).is_none());
    let shifted = shifted_to_constant(q, &ct, i).expect("i < n");
    assert_eq!(shifted.ring_degree(), n);
    let (sa, sb) = shifted.parts();
    assert!(sa.iter().chain(sb).all(|&c| c < qv), "shifted ciphertext not reduced");
    assert_eq!(sb[0], b[i], "shifted body constant is not b_i");
    let got = phase(qv, sa, sb, &s);
    for k in 0..n {
        let expect = if k + i < n { want[k + i] } else { q.neg(want[k + i - n]) };
        assert_eq!(got[k], expect, "phase of X^(−{i})·ct at coefficient {k} (n = {n})");
    }

    // LWE sample extraction.
    let lwe = extract_lwe(q, &ct, i).expect("i < n");
    assert_eq!(lwe.mask.len(), n, "LWE dimension");
    assert!(lwe.mask.iter().all(|&c| c < qv) && lwe.body.iter().all(|&c| c < qv), "LWE not reduced");
    assert_eq!(lwe.body, [b[i]], "LWE body is not b_i (one limb)");
    let dot = lwe
        .mask
        .iter()
        .zip(&s)
        .fold(0u128, |acc, (&m, &sk)| (acc + m as u128 * sk as u128) % qv as u128);
    let lwe_phase = ((lwe.body[0] as u128 + qv as u128 - dot) % qv as u128) as u64;
    assert_eq!(lwe_phase, want[i], "LWE phase differs from RLWE phase_{i} (n = {n})");
    assert_eq!(lwe_phase, got[0], "LWE and shifted ciphertext decrypt differently");
    // Key-independent agreement: the LWE mask is the constant-coefficient
    // row of the shifted mask.
    assert_eq!(lwe.mask[0], sa[0]);
    for k in 1..n {
        assert_eq!(lwe.mask[k], q.neg(sa[n - k]), "LWE mask_{k} vs shifted mask (n = {n}, i = {i})");
    }
});
