//! PackLWEs (Chen–Dai–Kim–Song 2020, Alg. 2) over an odd modulus, with the
//! key switches of the lowest tree levels shared per source ciphertext.
//!
//! Every value to pack is a monomial shift `X^(−i)·c_s` of a few source
//! ciphertexts. A level-ℓ combination needs `KS(τ_g(E − X^k O))`; when E and O
//! are sums of monomials times the same few ciphertexts, that key switch
//! distributes: `Σ ±X^(g·e) · KS(τ_g(D))`, with one `KS(τ_g(D))` per source
//! image D instead of one per tree node. The lowest ℓ* levels are evaluated
//! this way, symbolically, then materialised; the levels above are the plain
//! tree. Correctness and noise: proofs/packing.md.
//!
//! The tree always has depth log2 N and places each value at an arbitrary
//! chosen coefficient, so any selection, in any order, into any layout can be
//! packed; the output coefficient holds N·(value) and sources are pre-scaled
//! by N^-1 (q is odd), so the input noise passes through unamplified.

use crate::extract::ValueRef;
use crate::rlwe::{Ciphertext, Context, GaloisKeys, KeySwitchScratch};
use std::collections::HashMap;
use thiserror::Error;

/// A source ciphertext and, optionally, client-supplied conjugates
/// `Enc(τ_G(m))` for the lowest γ levels (the paper's γ), indexed by the
/// level subset t ⊆ {1..γ} as a bit mask, `conjugates[t − 1]` for t ≥ 1.
/// A source with conjugates must come from
/// [`Context::encrypt_with_conjugates`](crate::rlwe::Context::encrypt_with_conjugates),
/// which encodes at Δ·2^(−γ) so that the 2^γ independent fresh noises sum
/// back to a small noise (proofs/packing.md, Lemma 5).
#[derive(Clone, Copy, Debug)]
pub struct PackSource<'a> {
    pub ciphertext: &'a Ciphertext,
    pub conjugates: &'a [Ciphertext],
}

impl<'a> PackSource<'a> {
    pub fn plain(ciphertext: &'a Ciphertext) -> Self {
        Self {
            ciphertext,
            conjugates: &[],
        }
    }
}

/// Where one value goes: output ciphertext `output`, coefficient `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub value: ValueRef,
    pub output: usize,
    pub position: usize,
}

/// Where the *sum* of several values goes (a residual connection adds a
/// layer's output to an earlier activation inside the packing tree: leaves
/// are sums of monomial shifts, so the sum costs no key switch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SumPlacement {
    pub values: Vec<ValueRef>,
    pub output: usize,
    pub position: usize,
}

/// A packing request the caller got wrong. Never a peer's fault: requests
/// are built by the server from validated layouts.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackError {
    #[error("value {value:?} names source {} but only {sources} sources were given", value.source)]
    NoSuchSource { value: ValueRef, sources: usize },
    #[error("value {value:?} names a coefficient ≥ N = {n}")]
    NoSuchCoefficient { value: ValueRef, n: usize },
    #[error("position {position} of output {output} is outside 0..{n}")]
    PositionOutOfRange {
        output: usize,
        position: usize,
        n: usize,
    },
    #[error("position {position} of output {output} is assigned twice")]
    PositionTaken { output: usize, position: usize },
    #[error("source {source_index} has {got} conjugates; γ = {gamma} needs 0 or {needed}")]
    ConjugateCount {
        source_index: usize,
        got: usize,
        gamma: u32,
        needed: usize,
    },
    #[error("sources carry conjugates for γ = {gamma} levels but only {shared} levels are shared")]
    ConjugatesNeedSharedLevels { gamma: u32, shared: u32 },
    #[error("position {position} of output {output} is given an empty sum")]
    EmptySum { output: usize, position: usize },
    #[error(
        "requested {requested} shared levels; the parameter set's noise budget covers {allowed}"
    )]
    SharedLevelsOverBudget { requested: u32, allowed: u32 },
}

/// One symbolic term `± X^exp · D_image(c_source)`.
#[derive(Clone, Copy, Debug)]
struct Term {
    negate: bool,
    /// Exponent modulo 2N.
    exp: u32,
    source: u32,
    /// Bit ℓ−1 set ⇔ the level-ℓ automorphism has been applied.
    image: u32,
}

/// Packs values from source ciphertexts into dense ciphertexts.
#[derive(Debug)]
pub struct Packer<'a> {
    ctx: &'a Context,
    keys: &'a GaloisKeys,
    shared_levels: u32,
    /// Choose ℓ* ≤ `shared_levels` per output by cost, or use it as given.
    adaptive: bool,
}

impl<'a> Packer<'a> {
    pub fn new(ctx: &'a Context, keys: &'a GaloisKeys) -> Self {
        Self {
            ctx,
            keys,
            shared_levels: ctx.params().shared_pack_levels(),
            adaptive: true,
        }
    }

    /// Uses exactly `levels` shared levels instead of choosing per output
    /// (fewer: more key switches, less noise). More than the parameter set
    /// allows is refused: the budget would not hold.
    pub fn with_shared_levels(mut self, levels: u32) -> Result<Self, PackError> {
        let allowed = self.ctx.params().shared_pack_levels();
        if levels > allowed {
            return Err(PackError::SharedLevelsOverBudget {
                requested: levels,
                allowed,
            });
        }
        self.shared_levels = levels;
        self.adaptive = false;
        Ok(self)
    }

    /// Packs `order[k]` into output `k / N`, coefficient `k % N`.
    pub fn pack_dense(
        &self,
        sources: &[PackSource<'_>],
        order: &[ValueRef],
    ) -> Result<Vec<Ciphertext>, PackError> {
        let n = self.ctx.n();
        let placements: Vec<Placement> = order
            .iter()
            .enumerate()
            .map(|(k, &value)| Placement {
                value,
                output: k / n,
                position: k % n,
            })
            .collect();
        self.pack(sources, &placements)
    }

    /// Packs each placement's value at its position; unassigned coefficients
    /// of the outputs decrypt to zero (PACK-1). Requests are validated before
    /// any work (PACK-3); conjugates per PACK-4.
    pub fn pack(
        &self,
        sources: &[PackSource<'_>],
        placements: &[Placement],
    ) -> Result<Vec<Ciphertext>, PackError> {
        let sums: Vec<SumPlacement> = placements
            .iter()
            .map(|p| SumPlacement {
                values: vec![p.value],
                output: p.output,
                position: p.position,
            })
            .collect();
        self.pack_sums(sources, &sums)
    }

    /// Like [`pack`](Self::pack), each position receiving the sum of its
    /// values (PACK-5). The noise of a sum is at most the sum of its terms'
    /// noises (Minkowski).
    pub fn pack_sums(
        &self,
        sources: &[PackSource<'_>],
        placements: &[SumPlacement],
    ) -> Result<Vec<Ciphertext>, PackError> {
        let n = self.ctx.n();
        let gamma = self.ctx.params().client_conjugate_levels();
        for (i, src) in sources.iter().enumerate() {
            let needed = (1usize << gamma) - 1;
            if src.conjugates.is_empty() {
                continue;
            }
            if gamma > self.shared_levels {
                return Err(PackError::ConjugatesNeedSharedLevels {
                    gamma,
                    shared: self.shared_levels,
                });
            }
            if src.conjugates.len() != needed {
                return Err(PackError::ConjugateCount {
                    source_index: i,
                    got: src.conjugates.len(),
                    gamma,
                    needed,
                });
            }
        }
        let outputs = placements.iter().map(|p| p.output + 1).max().unwrap_or(0);
        let mut slots: Vec<Vec<Vec<ValueRef>>> = vec![vec![Vec::new(); n]; outputs];
        for p in placements {
            if p.position >= n {
                return Err(PackError::PositionOutOfRange {
                    output: p.output,
                    position: p.position,
                    n,
                });
            }
            if p.values.is_empty() {
                return Err(PackError::EmptySum {
                    output: p.output,
                    position: p.position,
                });
            }
            for &value in &p.values {
                if value.source as usize >= sources.len() {
                    return Err(PackError::NoSuchSource {
                        value,
                        sources: sources.len(),
                    });
                }
                if value.coeff as usize >= n {
                    return Err(PackError::NoSuchCoefficient { value, n });
                }
            }
            let slot = &mut slots[p.output][p.position];
            if !slot.is_empty() {
                return Err(PackError::PositionTaken {
                    output: p.output,
                    position: p.position,
                });
            }
            slot.clone_from(&p.values);
        }
        let mut images = ImageCache::new(self.ctx, self.keys, sources, gamma);
        // Conjugate-bearing sources need their γ levels shared.
        let min_shared = if sources.iter().any(|s| !s.conjugates.is_empty()) {
            gamma
        } else {
            0
        };
        Ok(slots
            .iter()
            .map(|s| self.pack_one(s, &mut images, min_shared))
            .collect())
    }

    fn pack_one(
        &self,
        slots: &[Vec<ValueRef>],
        images: &mut ImageCache<'_>,
        min_shared: u32,
    ) -> Ciphertext {
        let ctx = self.ctx;
        let q = ctx.q();
        let n = ctx.n();
        let log_n = ctx.params().log_ring_degree();
        let two_n = 2 * n as u32;
        let hi = self.shared_levels.min(log_n);
        let shared = if self.adaptive {
            choose_shared_levels(slots, min_shared.min(hi), hi)
        } else {
            hi
        };

        // Level 0: one term X^(−i)·c_s per value placed (several for a sum).
        let mut nodes: Vec<Vec<Term>> = slots
            .iter()
            .map(|values| {
                values
                    .iter()
                    .map(|v| Term {
                        negate: false,
                        exp: (two_n - v.coeff) % two_n,
                        source: v.source,
                        image: 0,
                    })
                    .collect()
            })
            .collect();

        // Shared levels, symbolically (PACK-2).
        for l in 1..=shared {
            let half = n >> l; // nodes at this level; also the shift X^half
            let g = (1u32 << l) + 1;
            let bit = 1u32 << (l - 1);
            let mut next = Vec::with_capacity(half);
            for r in 0..half {
                let (even, odd) = (&nodes[r], &nodes[r + half]);
                let mut terms = Vec::with_capacity(2 * (even.len() + odd.len()));
                terms.extend_from_slice(even);
                terms.extend(odd.iter().map(|t| Term {
                    exp: (t.exp + half as u32) % two_n,
                    ..*t
                }));
                // τ_g(E − X^half O), key-switched term by term.
                let switched: Vec<Term> = terms
                    .iter()
                    .enumerate()
                    .map(|(k, t)| Term {
                        negate: t.negate ^ (k >= even.len()),
                        exp: ((t.exp as u64 * g as u64) % two_n as u64) as u32,
                        source: t.source,
                        image: t.image | bit,
                    })
                    .collect();
                terms.extend(switched);
                next.push(terms);
            }
            nodes = next;
        }

        // Materialise.
        let mut level: Vec<Option<Ciphertext>> = nodes
            .iter()
            .map(|terms| {
                if terms.is_empty() {
                    return None;
                }
                let mut ct = Ciphertext::zero(n);
                for t in terms {
                    let img = images.get(t.source, t.image);
                    ct.monomial_mul_add(q, img, t.exp as usize, t.negate);
                }
                Some(ct)
            })
            .collect();

        // Plain levels.
        let mut scratch = KeySwitchScratch::new(n, ctx.params().gadget_levels());
        for l in (shared + 1)..=log_n {
            let half = n >> l;
            let key = self.keys.key_for_level(l);
            let g = key.g;
            let mut next = Vec::with_capacity(half);
            let (lower, upper) = level.split_at_mut(half);
            for (even, odd) in lower.iter_mut().zip(upper.iter_mut()) {
                let node = match (even.take(), odd.take()) {
                    (None, None) => None,
                    (e, o) => {
                        // sum = E + X^half O, diff = E − X^half O.
                        let mut sum = Ciphertext::zero(n);
                        let mut diff = Ciphertext::zero(n);
                        if let Some(e) = &e {
                            sum.add_assign(q, e);
                            diff.add_assign(q, e);
                        }
                        if let Some(o) = &o {
                            sum.monomial_mul_add(q, o, half, false);
                            diff.monomial_mul_add(q, o, half, true);
                        }
                        let twisted = diff.automorphism(q, g);
                        ctx.key_switch_add(key, &twisted, &mut sum, &mut scratch);
                        Some(sum)
                    }
                };
                next.push(node);
            }
            level = next;
        }
        level.pop().flatten().unwrap_or_else(|| Ciphertext::zero(n))
    }
}

/// Cost of one key switch (with its node's bookkeeping) in monomial
/// rotate-adds of a ciphertext, fitted to fixed-ℓ* packs of 4096 values on
/// the development machine (≈0.32 ms against ≈0.86 µs); only the choice of
/// ℓ* depends on it, never a result.
const KEY_SWITCH_IN_ROTATIONS: u64 = 384;

/// Picks ℓ* in `lo..=hi` for one output by a cost model (PACK-2): sharing
/// level ℓ costs 2^ℓ rotate-adds per value and 2^ℓ − 1 key switches per
/// source, and saves the key switches of every non-empty node at levels ≤ ℓ.
/// A full dense output lands on ℓ* = 4, sparser ones higher.
fn choose_shared_levels(slots: &[Vec<ValueRef>], lo: u32, hi: u32) -> u32 {
    let n = slots.len();
    let occupied: Vec<usize> = (0..n).filter(|&p| !slots[p].is_empty()).collect();
    let terms: u64 = slots.iter().map(|v| v.len() as u64).sum();
    let mut sources: Vec<u32> = slots.iter().flatten().map(|v| v.source).collect();
    sources.sort_unstable();
    sources.dedup();
    // Non-empty nodes at level ℓ: distinct residues of the positions mod N/2^ℓ.
    let log_n = n.trailing_zeros();
    let nodes: Vec<u64> = (0..=log_n)
        .map(|l| {
            let modulus = n >> l;
            let mut seen = vec![false; modulus];
            occupied
                .iter()
                .filter(|&&p| !std::mem::replace(&mut seen[p % modulus], true))
                .count() as u64
        })
        .collect();
    let cost = |shared: u32| -> u64 {
        let rotations = terms * (1u64 << shared);
        let images = sources.len() as u64 * ((1u64 << shared) - 1);
        let upper: u64 = nodes[(shared + 1) as usize..].iter().sum();
        rotations + (images + upper) * KEY_SWITCH_IN_ROTATIONS
    };
    (lo..=hi).min_by_key(|&l| cost(l)).unwrap_or(lo)
}

/// The images `D_t(N^-1 · c_s)` of each source, computed on first use.
struct ImageCache<'a> {
    ctx: &'a Context,
    keys: &'a GaloisKeys,
    sources: &'a [PackSource<'a>],
    gamma: u32,
    cache: HashMap<(u32, u32), Ciphertext>,
    scratch: KeySwitchScratch,
}

impl<'a> ImageCache<'a> {
    fn new(
        ctx: &'a Context,
        keys: &'a GaloisKeys,
        sources: &'a [PackSource<'a>],
        gamma: u32,
    ) -> Self {
        Self {
            ctx,
            keys,
            sources,
            gamma,
            cache: HashMap::new(),
            scratch: KeySwitchScratch::new(ctx.n(), ctx.params().gadget_levels()),
        }
    }

    fn get(&mut self, source: u32, image: u32) -> &Ciphertext {
        if !self.cache.contains_key(&(source, image)) {
            let ct = self.compute(source, image);
            self.cache.insert((source, image), ct);
        }
        &self.cache[&(source, image)]
    }

    fn compute(&mut self, source: u32, image: u32) -> Ciphertext {
        let ctx = self.ctx;
        let q = ctx.q();
        let src = &self.sources[source as usize];
        let client_levels = if src.conjugates.is_empty() {
            0
        } else {
            self.gamma
        };
        if image < (1 << client_levels) {
            // Supplied by the client (or the source itself): only rescale,
            // by N^-1, or 2^γ·N^-1 for conjugate-bearing sources.
            let base = if image == 0 {
                src.ciphertext
            } else {
                &src.conjugates[image as usize - 1]
            };
            let mut ct = base.clone();
            let scale = q.mul(ctx.ntt_q.n_inv(), 1u64 << client_levels);
            ct.scalar_mul_assign(q, scale);
            return ct;
        }
        // Apply the highest level last: D_t = KS_g τ_g (D_{t without top}).
        let top = 31 - image.leading_zeros(); // bit index = level − 1
        let below = image & !(1 << top);
        let prev = self.get(source, below).clone();
        let key = self.keys.key_for_level(top + 1);
        let twisted = prev.automorphism(q, key.g);
        let mut out = Ciphertext::zero(ctx.n());
        ctx.key_switch_add(key, &twisted, &mut out, &mut self.scratch);
        out
    }
}
