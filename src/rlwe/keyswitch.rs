//! Hybrid (special-modulus) key switching in the NTT domain.
//!
//! Input: `(a', b')` under `τ_g(s)`. The mask is split into signed digits
//! `a' = Σ_j d_j β^j` (exact; with B·l ≥ 64 the top digit is as small as
//! the others), each digit is
//! multiplied with key row j modulo P·q, and the result is divided by P with
//! rounding. The key noise is divided by P; what remains is the rounding
//! floor (proofs/noise-budget.md, Lemma 1).

use super::{Ciphertext, Context, GaloisKey};
use crate::math::Modulus;

/// Signed base-2^B digit decomposition of centred residues mod q.
#[derive(Clone, Copy, Debug)]
pub struct Decomposer {
    base_log: u32,
    levels: usize,
}

impl Decomposer {
    /// `None` unless 1 ≤ B ≤ 32 and 1 ≤ l ≤ 64 with B·l ≥ 64 (digits that
    /// cover a 64-bit residue).
    pub fn new(base_log: u32, levels: usize) -> Option<Self> {
        let ok = (1..=32).contains(&base_log)
            && (1..=64).contains(&levels)
            && base_log as usize * levels >= 64;
        ok.then_some(Self { base_log, levels })
    }

    pub fn levels(&self) -> usize {
        self.levels
    }

    /// Digits of `x` (a residue mod q, read centred): `x ≡ Σ d_j 2^(B j)`,
    /// `d_j ∈ [−2^(B−1), 2^(B−1))` except the top one, which takes the carry
    /// (`|d_top| ≤ 2^(64−B(l−1))`).
    ///
    /// # Panics
    /// If `out` is shorter than [`levels`](Self::levels) (a caller bug).
    #[inline]
    pub fn digits(&self, q: Modulus, x: u64, out: &mut [i64]) {
        // Masks and shifts only: no division in the key-switch hot loop.
        let mut y = q.centered(x) as i128;
        let mask = (1i128 << self.base_log) - 1;
        let half = 1i128 << (self.base_log - 1);
        for d in out.iter_mut().take(self.levels - 1) {
            let r = ((y + half) & mask) - half;
            *d = r as i64;
            y = (y - r) >> self.base_log;
        }
        out[self.levels - 1] = y as i64;
    }
}

/// Scratch space for key switches, reused across calls.
pub(crate) struct KeySwitchScratch {
    digits: Vec<Vec<i64>>,
    acc: [Vec<u64>; 4],
    dq: Vec<u64>,
    dp: Vec<u64>,
}

impl KeySwitchScratch {
    pub(crate) fn new(n: usize, levels: usize) -> Self {
        Self {
            digits: vec![vec![0; n]; levels],
            acc: [vec![0; n], vec![0; n], vec![0; n], vec![0; n]],
            dq: vec![0; n],
            dp: vec![0; n],
        }
    }

    /// Whether this scratch serves key switches at ring degree `n` with
    /// `levels` gadget digits.
    pub(crate) fn fits(&self, n: usize, levels: usize) -> bool {
        self.digits.len() == levels && self.dq.len() == n
    }
}

impl Context {
    /// Key-switches `ct` (under `τ_g(s)`) to `s`, adding the result to `out`.
    pub(crate) fn key_switch_add(
        &self,
        key: &GaloisKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
    ) {
        let q = self.q();
        let p = self.params().p();
        let n = self.n();
        let levels = self.params().gadget_levels();
        // PARAM-2 checked B ≤ 32 and B·l ≥ 64.
        let dec =
            Decomposer::new(self.params().gadget_base_log(), levels).expect("validated gadget");

        let mut tmp = [0i64; 64];
        for (i, &x) in ct.a.iter().enumerate() {
            dec.digits(q, x, &mut tmp[..levels]);
            for (row, &d) in scratch.digits.iter_mut().zip(&tmp[..levels]) {
                row[i] = d;
            }
        }
        let [acc_aq, acc_bq, acc_ap, acc_bp] = &mut scratch.acc;
        for acc in [&mut *acc_aq, &mut *acc_bq, &mut *acc_ap, &mut *acc_bp] {
            acc.fill(0);
        }
        for j in 0..levels {
            for i in 0..n {
                let d = scratch.digits[j][i];
                scratch.dq[i] = q.from_i64(d);
                scratch.dp[i] = p.from_i64(d);
            }
            self.ntt_q.forward(&mut scratch.dq);
            self.ntt_p.forward(&mut scratch.dp);
            self.ntt_q.mul_accumulate(acc_aq, &scratch.dq, &key.a_q[j]);
            self.ntt_q.mul_accumulate(acc_bq, &scratch.dq, &key.b_q[j]);
            self.ntt_p.mul_accumulate(acc_ap, &scratch.dp, &key.a_p[j]);
            self.ntt_p.mul_accumulate(acc_bp, &scratch.dp, &key.b_p[j]);
        }
        for acc in [&mut *acc_aq, &mut *acc_bq] {
            self.ntt_q.backward_unnormalized(acc);
        }
        for acc in [&mut *acc_ap, &mut *acc_bp] {
            self.ntt_p.backward_unnormalized(acc);
        }
        // Divide by P with rounding: (x_q − [x_P]) · P^-1 mod q, [·] centred.
        let p_inv = q.inv(p.value()).expect("P < q, both prime");
        let mod_down = |xq: u64, xp: u64| q.mul(q.sub(xq, q.from_i64(p.centered(xp))), p_inv);
        for i in 0..n {
            let a = mod_down(acc_aq[i], acc_ap[i]);
            let b = mod_down(acc_bq[i], acc_bp[i]);
            // out += (−a, b' − b).
            out.a[i] = q.sub(out.a[i], a);
            out.b[i] = q.add(out.b[i], q.sub(ct.b[i], b));
        }
    }

    /// `KS_g(τ_g(ct))`: the automorphism applied homomorphically.
    pub fn apply_galois(&self, key: &GaloisKey, ct: &Ciphertext) -> Ciphertext {
        let twisted = ct.automorphism(self.q(), key.g);
        let mut out = Ciphertext::zero(self.n());
        let mut scratch = KeySwitchScratch::new(self.n(), self.params().gadget_levels());
        self.key_switch_add(key, &twisted, &mut out, &mut scratch);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::SOLINAS;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn digits_recompose_exactly(x in 0..SOLINAS, (b, l) in prop_oneof![Just((22u32, 3usize)), Just((16, 4)), Just((32, 2))]) {
            let q = Modulus::new(SOLINAS).unwrap();
            let dec = Decomposer::new(b, l).unwrap();
            let mut d = vec![0i64; l];
            dec.digits(q, x, &mut d);
            let mut acc: i128 = 0;
            for (j, &dj) in d.iter().enumerate() {
                acc += dj as i128 * (1i128 << (b as usize * j));
            }
            prop_assert_eq!(q.from_i128(acc), x);
            for &dj in &d[..l - 1] {
                prop_assert!(dj >= -(1i64 << (b - 1)) && dj < (1i64 << (b - 1)));
            }
            prop_assert!(d[l - 1].unsigned_abs() <= 1u64 << (64 - b * (l as u32 - 1)).min(63));
        }
    }

    #[test]
    fn decomposer_rejects_degenerate_gadgets() {
        assert!(Decomposer::new(0, 64).is_none());
        assert!(Decomposer::new(33, 2).is_none());
        assert!(Decomposer::new(16, 0).is_none());
        assert!(Decomposer::new(16, 3).is_none());
        assert!(Decomposer::new(16, 4).is_some());
    }
}
