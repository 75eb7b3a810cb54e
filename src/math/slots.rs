//! The inverse transform read at the multiples of h = N/M only: what a
//! packing node needs of a key switch's body (PACK-6, proofs/packing.md,
//! Lemma 7), at a fraction of a full inverse transform's cost.
//!
//! The evaluations F_i = f(x_i) at the N roots x_i of X^N + 1 fall into M
//! fibres of the map x ↦ x^h = y, h roots each. Writing f = Σ_{r<h} X^r·f_r(X^h),
//! the sum of f over a fibre is h·f_0(y) (the powers x^r, 0 < r < h, sum to
//! zero over it), and f_0's coefficients are f's at the multiples of h. So
//! the unnormalised inverse's coefficient k·h is
//!
//! ```text
//! Σ_i F_i·x_i^(−k·h) = Σ_y y^(−k) · (Σ_{x^h = y} F(x)),
//! ```
//!
//! one pass of N additions into M fibre sums and an M × M product, instead
//! of the N·log2(N)/2 butterflies of the whole inverse.

use super::{Modulus, NttPlan};

/// Up to how many slots a reading pays: above, the M × M product costs
/// more than the whole inverse.
pub(crate) const MAX_SLOTS: usize = 64;

/// One slot count M: fibre f is the f-th block of N/M consecutive
/// evaluations. Both transforms the key switch uses order their
/// evaluations so (a transform tree's splits end in the factors X^h − y);
/// [`SlotInverse::new`] checks it for every M it keeps.
#[derive(Debug)]
struct Fibres {
    /// `weights[k·M + f]` = scale·y_f^(−k), scale the inverse's own factor
    /// (N for an unnormalised one) over N.
    weights: Vec<u64>,
}

/// [`NttPlan::backward_unnormalized`] read at the multiples of N/M, for
/// every power of two M ≤ [`MAX_SLOTS`].
#[derive(Debug)]
pub(crate) struct SlotInverse {
    m: Modulus,
    /// Index log2(M) − 1, for M = 2..=MAX_SLOTS.
    fibres: Vec<Fibres>,
}

impl SlotInverse {
    /// Learns the evaluation order and the inverse's scale from the plan
    /// itself: its transform of X gives the root at each index, and its
    /// inverse of the transform of 1 gives the scale. Serves M = 2, 4, …
    /// up to the first M whose fibres are not blocks of consecutive
    /// evaluations (or [`MAX_SLOTS`]); `None` if that is M = 2 (then the
    /// key switch inverts in full).
    pub(crate) fn new(plan: &NttPlan) -> Option<Self> {
        let (m, n) = (plan.modulus(), plan.n());
        let mut roots = vec![0u64; n];
        roots[1] = 1;
        plan.forward(&mut roots);
        let mut one = vec![0u64; n];
        one[0] = 1;
        plan.forward(&mut one);
        plan.backward_unnormalized(&mut one);
        let scale = m.mul(one[0], plan.n_inv());
        // y = x^h for the most slots first, then squared for half as many.
        let top = MAX_SLOTS.min(n / 2);
        let mut powers: Vec<u64> = roots.iter().map(|&x| m.pow(x, (n / top) as u64)).collect();
        let mut levels = Vec::new();
        let mut slots = top;
        while slots >= 2 {
            levels.push(Self::fibres(m, scale, &powers, slots));
            for y in &mut powers {
                *y = m.mul(*y, *y);
            }
            slots /= 2;
        }
        let fibres: Vec<Fibres> = levels.into_iter().rev().map_while(|f| f).collect();
        (!fibres.is_empty()).then_some(Self { m, fibres })
    }

    /// The fibres of M = `slots`, from `powers` = x_i^(N/M) in evaluation
    /// order; `None` unless they are M distinct blocks.
    fn fibres(m: Modulus, scale: u64, powers: &[u64], slots: usize) -> Option<Fibres> {
        let blocks: Vec<&[u64]> = powers.chunks(powers.len() / slots).collect();
        if blocks.iter().any(|b| b.iter().any(|&y| y != b[0])) {
            return None;
        }
        let ys: Vec<u64> = blocks.iter().map(|b| b[0]).collect();
        let mut distinct = ys.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != slots {
            return None;
        }
        let mut weights = vec![0u64; slots * slots];
        for (f, &y) in ys.iter().enumerate() {
            let y_inv = m.inv(y)?;
            let mut w = scale;
            for k in 0..slots {
                weights[k * slots + f] = w;
                w = m.mul(w, y_inv);
            }
        }
        Some(Fibres { weights })
    }

    /// Whether [`read`](Self::read) serves `slots` values.
    pub(crate) fn serves(&self, slots: usize) -> bool {
        slots.is_power_of_two()
            && slots >= 2
            && slots.trailing_zeros() as usize <= self.fibres.len()
    }

    /// `out[k]` = coefficient k·N/M of the unnormalised inverse of `evals`
    /// (reduced), for k < M = `out.len()`, which [`serves`](Self::serves).
    pub(crate) fn read<T: Copy + Into<u64>>(&self, evals: &[T], out: &mut [u64]) {
        let slots = out.len();
        let fib = &self.fibres[slots.trailing_zeros() as usize - 1];
        let m = self.m;
        // Each block's sum, from its words' 32-bit halves summed apart
        // (exact in 64 bits for up to 2^32 words; the loops vectorise).
        let mut sums = [0u64; MAX_SLOTS];
        for (block, sum) in evals.chunks(evals.len() / slots).zip(&mut sums) {
            let (mut lo, mut hi) = (0u64, 0u64);
            for &v in block {
                let v: u64 = v.into();
                lo += v & 0xffff_ffff;
                hi += v >> 32;
            }
            *sum = m.reduce_u128(((hi as u128) << 32) + lo as u128);
        }
        // 2^64 mod q, to fold the high halves of the row sums.
        let two64 = m.reduce_u128(1 << 64);
        for (k, o) in out.iter_mut().enumerate() {
            let row = &fib.weights[k * slots..(k + 1) * slots];
            // The 128-bit products' halves summed apart: below 2^70 each.
            let (mut lo, mut hi) = (0u128, 0u128);
            for (&w, &s) in row.iter().zip(&sums[..slots]) {
                let p = w as u128 * s as u128;
                lo += p as u64 as u128;
                hi += p >> 64;
            }
            *o = m.add(m.reduce_u128(lo), m.mul(m.reduce_u128(hi), two64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::SOLINAS;
    use proptest::prelude::*;

    // PACK-6: the reading equals the whole inverse at the multiples of N/M,
    // for every M it serves, on the transforms the key switch uses (the
    // Solinas q and the b-sets' 32-bit P, each in its own evaluation order).
    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]
        #[test]
        fn reading_at_the_slots_equals_the_whole_inverse(seed in any::<[u8; 16]>()) {
            let mut rng = crate::rng::Csprng::from_seed(seed);
            for (n, p) in [(4096, SOLINAS), (4096, 2147377153), (256, SOLINAS)] {
                let plan = NttPlan::new(n, p).unwrap();
                let Some(reader) = SlotInverse::new(&plan) else {
                    prop_assert!(n != 4096, "the key switch's transforms are served");
                    continue;
                };
                let evals: Vec<u64> = (0..n).map(|_| rng.uniform_below(p)).collect();
                let mut whole = evals.clone();
                plan.backward_unnormalized(&mut whole);
                let mut slots = 2;
                while reader.serves(slots) {
                    let mut got = vec![0u64; slots];
                    reader.read(&evals, &mut got);
                    let want: Vec<u64> = (0..slots).map(|k| whole[k * (n / slots)] % p).collect();
                    prop_assert_eq!(got, want, "N = {}, P = {}, M = {}", n, p, slots);
                    slots *= 2;
                }
                if n == 4096 {
                    prop_assert_eq!(slots, 2 * MAX_SLOTS);
                }
                prop_assert!(!reader.serves(1) && !reader.serves(3) && !reader.serves(2 * MAX_SLOTS));
            }
        }
    }
}
