//! Hybrid (special-modulus) key switching in the NTT domain.
//!
//! Input: `(a', b')` under `τ_g(s)`. The mask is split into signed digits
//! `a' = Σ_j d_j β^j` (exact; with B·l ≥ ⌈log2 q⌉ the top digit is as small
//! as the others), each digit is multiplied with key row j modulo P·q, and
//! the result is divided by P with rounding. The key noise is divided by P;
//! what remains is the rounding floor (proofs/noise-budget.md, Lemma 1).
//!
//! On a multi-limb q (PARAM-8) each mask coefficient is first recomposed to
//! its integer in `[0, q)` by the CRT and centred, so the digits are those
//! of the full modulus; the digits are then reduced into every limb and P,
//! and the division by P is done limb by limb: P is a separate prime.

use super::{Ciphertext, Context, GaloisKey};
use crate::math::Modulus;
#[cfg(test)]
use crate::math::RnsModulus;

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
        Self::covering(base_log, levels, 64)
    }

    /// `None` unless 1 ≤ B ≤ 32 and 1 ≤ l ≤ 64 with B·l ≥ `bits` (digits
    /// that cover a modulus of `bits` bits, at most 128: PARAM-8).
    pub fn covering(base_log: u32, levels: usize, bits: u32) -> Option<Self> {
        let ok = (1..=32).contains(&base_log)
            && (1..=64).contains(&levels)
            && bits <= 128
            && base_log as usize * levels >= bits as usize;
        ok.then_some(Self { base_log, levels })
    }

    /// The number of digits l (gadget levels), one per key row.
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
        self.digits_centered(q.centered(x) as i128, out);
    }

    /// Digits of a centred integer `y` (|y| ≤ q/2 < 2^127): `y = Σ d_j 2^(B j)`
    /// exactly, `d_j ∈ [−2^(B−1), 2^(B−1))` except the top one, which takes
    /// the carry (`|d_top| ≤ 2^(bits−1−B(l−1)) + 1`, at most 2^B when
    /// B·l ≥ bits).
    ///
    /// # Panics
    /// If `out` is shorter than [`levels`](Self::levels) (a caller bug).
    #[inline]
    pub fn digits_centered(&self, mut y: i128, out: &mut [i64]) {
        // Masks and shifts only: no division in the key-switch hot loop.
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
    acc_q: [Vec<u64>; 2],
    acc_p: [Vec<u64>; 2],
    dq: Vec<u64>,
    dp: Vec<u64>,
}

impl KeySwitchScratch {
    pub(crate) fn new(n: usize, levels: usize, limbs: usize) -> Self {
        Self {
            digits: vec![vec![0; n]; levels],
            acc_q: [vec![0; n * limbs], vec![0; n * limbs]],
            acc_p: [vec![0; n], vec![0; n]],
            dq: vec![0; n * limbs],
            dp: vec![0; n],
        }
    }

    /// Whether this scratch serves key switches at ring degree `n` with
    /// `levels` gadget digits and `limbs` RNS limbs.
    pub(crate) fn fits(&self, n: usize, levels: usize, limbs: usize) -> bool {
        self.digits.len() == levels && self.dp.len() == n && self.dq.len() == n * limbs
    }
}

impl Context {
    /// The gadget of this set: digits covering ⌈log2 q⌉ bits (PARAM-2 checked).
    pub(crate) fn decomposer(&self) -> Decomposer {
        Decomposer::covering(
            self.params().gadget_base_log(),
            self.params().gadget_levels(),
            self.q().bits().max(64),
        )
        .expect("validated gadget")
    }

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
        let dec = self.decomposer();

        let mut tmp = [0i64; 64];
        if let Some(q0) = q.single_limb() {
            // PARAM-8's one-limb fast path: the single-modulus loops as they
            // were, on the one plan, with no per-limb iteration.
            for (i, &x) in ct.a.iter().enumerate() {
                dec.digits(q0, x, &mut tmp[..levels]);
                for (row, &d) in scratch.digits.iter_mut().zip(&tmp[..levels]) {
                    row[i] = d;
                }
            }
            self.key_switch_single(q0, key, ct, out, scratch);
            return;
        }
        for i in 0..n {
            let y = q.centered(q.coefficient(&ct.a, n, i));
            dec.digits_centered(y, &mut tmp[..levels]);
            for (row, &d) in scratch.digits.iter_mut().zip(&tmp[..levels]) {
                row[i] = d;
            }
        }
        let [acc_aq, acc_bq] = &mut scratch.acc_q;
        let [acc_ap, acc_bp] = &mut scratch.acc_p;
        for acc in [&mut *acc_aq, &mut *acc_bq, &mut *acc_ap, &mut *acc_bp] {
            acc.fill(0);
        }
        for j in 0..levels {
            let digits = &scratch.digits[j];
            for (c, m) in scratch.dq.chunks_exact_mut(n).zip(q.limbs()) {
                for (o, &d) in c.iter_mut().zip(digits) {
                    *o = m.from_i64(d);
                }
            }
            for (o, &d) in scratch.dp.iter_mut().zip(digits) {
                *o = p.from_i64(d);
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
        // Divide by P with rounding, limb by limb: (x_qi − [x_P]) · P^-1 mod
        // q_i, [·] centred (P is one prime, so [x_P] is the same integer in
        // every limb); then out += (−a, b' − b).
        for (l, &m) in q.limbs().iter().enumerate() {
            let p_inv = m.inv(p.value()).expect("P ≠ q_i, both prime");
            let mod_down = |xq: u64, xp: u64| m.mul(m.sub(xq, m.from_i64(p.centered(xp))), p_inv);
            let r = l * n..(l + 1) * n;
            let (oa, ob, cb) = (
                &mut out.a[r.clone()],
                &mut out.b[r.clone()],
                &ct.b[r.clone()],
            );
            let (aq, bq) = (&acc_aq[r.clone()], &acc_bq[r]);
            for i in 0..n {
                let a = mod_down(aq[i], acc_ap[i]);
                let b = mod_down(bq[i], acc_bp[i]);
                oa[i] = m.sub(oa[i], a);
                ob[i] = m.add(ob[i], m.sub(cb[i], b));
            }
        }
    }

    /// The one-limb key switch after decomposition: the single-modulus code.
    fn key_switch_single(
        &self,
        q: Modulus,
        key: &GaloisKey,
        ct: &Ciphertext,
        out: &mut Ciphertext,
        scratch: &mut KeySwitchScratch,
    ) {
        let p = self.params().p();
        let n = self.n();
        let levels = self.params().gadget_levels();
        let ntt_q = self.ntt_q.limb(0);
        let [acc_aq, acc_bq] = &mut scratch.acc_q;
        let [acc_ap, acc_bp] = &mut scratch.acc_p;
        for acc in [&mut *acc_aq, &mut *acc_bq, &mut *acc_ap, &mut *acc_bp] {
            acc.fill(0);
        }
        for j in 0..levels {
            for i in 0..n {
                let d = scratch.digits[j][i];
                scratch.dq[i] = q.from_i64(d);
                scratch.dp[i] = p.from_i64(d);
            }
            ntt_q.forward(&mut scratch.dq);
            self.ntt_p.forward(&mut scratch.dp);
            ntt_q.mul_accumulate(acc_aq, &scratch.dq, &key.a_q[j]);
            ntt_q.mul_accumulate(acc_bq, &scratch.dq, &key.b_q[j]);
            self.ntt_p.mul_accumulate(acc_ap, &scratch.dp, &key.a_p[j]);
            self.ntt_p.mul_accumulate(acc_bp, &scratch.dp, &key.b_p[j]);
        }
        for acc in [&mut *acc_aq, &mut *acc_bq] {
            ntt_q.backward_unnormalized(acc);
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
        let mut out = self.zero_ciphertext();
        let mut scratch =
            KeySwitchScratch::new(self.n(), self.params().gadget_levels(), self.limbs());
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

    proptest! {
        // PARAM-8: over a two-limb q (s16's, 126 bits) the digits of the
        // CRT-recomposed, centred value recompose to it exactly as an
        // integer, hence modulo every limb, with every digit but the top
        // in [−2^(B−1), 2^(B−1)) and the top one at most 2^B.
        #[test]
        fn digits_recompose_exactly_over_the_full_modulus(
            x in any::<u128>(),
            (b, l) in prop_oneof![Just((32u32, 4usize)), Just((22, 6)), Just((26, 5))],
        ) {
            let q = RnsModulus::new(&[SOLINAS, 0x3fff_ffff_ffff_0001]).unwrap();
            let x = x % q.value();
            let dec = Decomposer::covering(b, l, q.bits()).unwrap();
            let mut d = vec![0i64; l];
            let y = q.centered(x);
            dec.digits_centered(y, &mut d);
            let mut acc: i128 = 0;
            for &dj in d.iter().rev() {
                acc = (acc << b) + dj as i128;
            }
            prop_assert_eq!(acc, y);
            prop_assert_eq!(q.from_i128(acc), x);
            for &dj in &d[..l - 1] {
                prop_assert!(dj >= -(1i64 << (b - 1)) && dj < (1i64 << (b - 1)));
            }
            prop_assert!(d[l - 1].unsigned_abs() <= 1u64 << b);
            // The residues the key switch feeds each limb are the digits'.
            for m in q.limbs() {
                let mut r = 0u64;
                for &dj in d.iter().rev() {
                    r = m.add(m.mul(r, m.pow(2, b as u64)), m.from_i64(dj));
                }
                prop_assert_eq!(r, m.reduce_u128(x));
            }
        }
    }

    #[test]
    fn covering_gadgets_must_reach_the_modulus() {
        assert!(Decomposer::covering(32, 4, 126).is_some());
        assert!(Decomposer::covering(32, 3, 126).is_none());
        assert!(Decomposer::covering(21, 6, 127).is_none());
        assert!(Decomposer::covering(32, 5, 129).is_none());
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
