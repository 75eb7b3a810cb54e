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
//!
//! The work runs on the caller's rayon pool (ENG-8, [`crate::par`]): the
//! outputs, the two subtrees below every tree node, and the images of the
//! shared levels in parallel, each with the arithmetic of the sequential
//! tree, so the packed ciphertexts are the same on any number of threads.

use crate::extract::ValueRef;
use crate::math::poly;
use crate::par;
use crate::rlwe::{Ciphertext, Context, GaloisKeys, KeySwitchScratch};
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
    /// The source ciphertext, under the packer's context.
    pub ciphertext: &'a Ciphertext,
    /// Empty, or exactly 2^γ − 1 conjugates (PACK-4).
    pub conjugates: &'a [Ciphertext],
}

impl<'a> PackSource<'a> {
    /// A source without conjugates: all its levels are key-switched.
    pub fn plain(ciphertext: &'a Ciphertext) -> Self {
        Self {
            ciphertext,
            conjugates: &[],
        }
    }

    /// The levels whose images the client supplied: γ with conjugates,
    /// else none (images t < 2^this are rescaled, not key-switched).
    fn client_levels(&self, gamma: u32) -> u32 {
        if self.conjugates.is_empty() {
            0
        } else {
            gamma
        }
    }
}

/// Where one value goes: output ciphertext `output`, coefficient `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The value to place.
    pub value: ValueRef,
    /// Index of the output ciphertext; the packer returns `max(output) + 1`
    /// ciphertexts.
    pub output: usize,
    /// Coefficient of that output, in `0..N`; each at most once per output.
    pub position: usize,
}

/// Where the *sum* of several values goes (a residual connection adds a
/// layer's output to an earlier activation inside the packing tree: leaves
/// are sums of monomial shifts, so the sum costs no key switch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SumPlacement {
    /// The terms of the sum, from any sources; must not be empty.
    pub values: Vec<ValueRef>,
    /// Index of the output ciphertext.
    pub output: usize,
    /// Coefficient of that output, in `0..N`; each at most once per output.
    pub position: usize,
}

/// A packing request the caller got wrong. Never a peer's fault: requests
/// are built by the server from validated layouts.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackError {
    /// A value names a source index ≥ the number of sources given (PACK-3).
    #[error("value {value:?} names source {} but only {sources} sources were given", value.source)]
    NoSuchSource {
        /// The offending value.
        value: ValueRef,
        /// Number of sources given.
        sources: usize,
    },
    /// A value names a coefficient ≥ N (PACK-3).
    #[error("value {value:?} names a coefficient ≥ N = {n}")]
    NoSuchCoefficient {
        /// The offending value.
        value: ValueRef,
        /// N, the ring degree.
        n: usize,
    },
    /// A placement's position is ≥ N (PACK-3).
    #[error("position {position} of output {output} is outside 0..{n}")]
    PositionOutOfRange {
        /// The output ciphertext of the placement.
        output: usize,
        /// The position asked for.
        position: usize,
        /// N, the ring degree.
        n: usize,
    },
    /// Two placements name the same position of the same output (PACK-3).
    #[error("position {position} of output {output} is assigned twice")]
    PositionTaken {
        /// The output ciphertext.
        output: usize,
        /// The position assigned twice.
        position: usize,
    },
    /// A source carries conjugates, but not the 2^γ − 1 the set's γ needs
    /// (PACK-4).
    #[error("source {source_index} has {got} conjugates; γ = {gamma} needs 0 or {needed}")]
    ConjugateCount {
        /// Index of the source.
        source_index: usize,
        /// Conjugates it carries.
        got: usize,
        /// γ, the set's `client_conjugate_levels`.
        gamma: u32,
        /// 2^γ − 1.
        needed: usize,
    },
    /// Sources carry conjugates but the packer shares fewer than γ levels (set
    /// by [`Packer::with_shared_levels`]): the conjugates replace shared levels.
    #[error("sources carry conjugates for γ = {gamma} levels but only {shared} levels are shared")]
    ConjugatesNeedSharedLevels {
        /// γ, the set's `client_conjugate_levels`.
        gamma: u32,
        /// The packer's shared levels, fewer than γ.
        shared: u32,
    },
    /// A [`SumPlacement`] has no values (PACK-5).
    #[error("position {position} of output {output} is given an empty sum")]
    EmptySum {
        /// The output ciphertext.
        output: usize,
        /// The position given the empty sum.
        position: usize,
    },
    /// [`Packer::with_shared_levels`] asked for more shared levels than the
    /// set's ℓ*, which the noise budget (PARAM-4) is computed for.
    #[error(
        "requested {requested} shared levels; the parameter set's noise budget covers {allowed}"
    )]
    SharedLevelsOverBudget {
        /// The shared levels asked for.
        requested: u32,
        /// The set's `shared_pack_levels`.
        allowed: u32,
    },
    /// [`Packer::trace`] or [`Packer::trace_groups`] was given a stride
    /// that is not a power of two ≤ N.
    #[error("trace stride {stride} is not a power of two at most N = {n}")]
    TraceStride {
        /// The stride asked for.
        stride: usize,
        /// N, the ring degree.
        n: usize,
    },
    /// [`Packer::trace_groups`] was given no group, more groups than
    /// S_g/S, or a group stride below the stride.
    #[error(
        "{groups} groups at stride {group_stride} do not trace to stride {stride} \
         (1 to S_g/S groups, S ≤ S_g)"
    )]
    TraceGroups {
        /// The groups given.
        groups: usize,
        /// S_g, the stride of each group's values.
        group_stride: usize,
        /// S, the result's stride.
        stride: usize,
    },
}

/// The work one pack did, counted from its plan (proofs/packing.md, Lemma
/// 4): what a time depends on, without a clock's noise. Sums over calls
/// with `+=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackWork {
    /// Key switches of tree nodes above the shared levels: one per
    /// non-empty node.
    pub node_key_switches: u64,
    /// Key switches that made the shared levels' images (client-supplied
    /// conjugates excluded).
    pub image_key_switches: u64,
    /// Monomial rotate-adds of the materialised leaves: 2^ℓ* per term.
    pub rotate_adds: u64,
}

impl std::ops::AddAssign for PackWork {
    fn add_assign(&mut self, other: Self) {
        self.node_key_switches += other.node_key_switches;
        self.image_key_switches += other.image_key_switches;
        self.rotate_adds += other.rotate_adds;
    }
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
#[derive(Clone, Debug)]
pub struct Packer<'a> {
    ctx: &'a Context,
    keys: &'a GaloisKeys,
    shared_levels: u32,
    /// Choose ℓ* ≤ `shared_levels` per output by cost, or use it as given.
    adaptive: bool,
    bodies: Bodies,
    grouping: LeafGroups,
    /// PACK-9: the tree levels lo..hi at which a node with an empty
    /// sibling is doubled instead of joined (lo = hi: none).
    doubled: (u32, u32),
}

/// How much of a materialised leaf node's body is computed.
#[derive(Clone, Copy, Debug)]
enum Bodies {
    /// Only the node's slots (PACK-6): no other coefficient of a body can
    /// reach the output (proofs/packing.md, Lemma 7).
    AtSlots,
    /// Every coefficient, as the tree is written in Lemma 2: the reference
    /// the slot-only bodies are checked against.
    #[cfg_attr(not(test), allow(dead_code))]
    Full,
}

/// Whether an output's leaves are materialised in groups, image chunk by
/// image chunk (`Packer::leaf_group`). A leaf sums ≈ 2^ℓ* terms per value
/// from the images of every source the output draws on; read leaf by leaf,
/// those images stream from memory once they outgrow L2 (b16, one leaf's
/// mask sum, per rotate-add: 0.51 µs from 1 MiB of images, 0.80 µs from
/// 4 MiB, 1.17 µs from 16 MiB on a 2 MiB-L2 Xeon). In groups of 32 leaves
/// and chunks of 1 MiB of images, the leaves of a group read a chunk from
/// L2 (0.64 µs from 4 MiB, 0.91 µs from 16 MiB). Below 1 MiB of images
/// the leaves stay one by one: no faster in groups, and a group's leaves
/// are one task, which lengthened the small packs' critical path on two
/// threads (benches/README.md, "Leaves in groups, image chunk by image
/// chunk").
#[derive(Clone, Copy, Debug)]
enum LeafGroups {
    /// On the one-limb sets (measured there), for outputs whose images
    /// pass [`Self::SPILL_BYTES`]; leaf by leaf elsewhere.
    OneLimb,
    /// Leaf by leaf: the order the tests hold the groups' words to.
    #[cfg_attr(not(test), allow(dead_code))]
    Never,
    /// In groups on every set and output.
    #[cfg_attr(not(test), allow(dead_code))]
    Always,
}

impl LeafGroups {
    /// A group is the 2^LEVELS leaves below one node (64: ResNet-18 0.95–0.99
    /// of 32's time in 8 alternated pairs, ResNet-20 the same as 32, 16 no
    /// faster; benches/README.md).
    const LEVELS: u32 = 6;
    /// A chunk's image masks, in bytes (half L2 on the project's hosts; 512
    /// KiB and 2 MiB were no faster).
    const CHUNK_BYTES: usize = 1 << 20;
    /// An output's image masks past which its leaves are grouped.
    const SPILL_BYTES: usize = 1 << 20;

    /// The group's levels above ℓ* = `shared` for an output drawing on
    /// `sources` sources: `None` leaf by leaf (and at ℓ* = log2 N, where
    /// the leaf is the root).
    fn levels(self, ctx: &Context, shared: u32, sources: usize) -> Option<u32> {
        let above = ctx.params().log_ring_degree() - shared;
        let spill = (sources << shared) * mask_bytes(ctx) > Self::SPILL_BYTES;
        let group = self.on(ctx) && (spill || matches!(self, Self::Always));
        (group && above > 0).then(|| Self::LEVELS.min(above))
    }

    /// Whether this set's outputs may have grouped leaves.
    fn on(self, ctx: &Context) -> bool {
        match self {
            Self::OneLimb => ctx.limbs() == 1,
            Self::Never => false,
            Self::Always => true,
        }
    }

    /// Sources whose images make up one chunk at ℓ* = `shared` (at least
    /// one).
    fn sources_per_chunk(ctx: &Context, shared: u32) -> u32 {
        (Self::CHUNK_BYTES / (mask_bytes(ctx) << shared)).max(1) as u32
    }
}

/// The residues of N^-1·`m` mod each limb of q: the pre-scale of a source
/// whose tree (or trace) multiplies it back by N/`m`.
fn n_inv_times(ctx: &Context, m: u64) -> [u64; crate::math::MAX_LIMBS] {
    let mut scale = [0u64; crate::math::MAX_LIMBS];
    for (l, plan) in ctx.ntt_q.limbs().iter().enumerate() {
        scale[l] = plan.modulus().mul(plan.n_inv(), m);
    }
    scale
}

/// The bytes of one image's mask on `ctx`'s set.
fn mask_bytes(ctx: &Context) -> usize {
    ctx.n() * ctx.limbs() * std::mem::size_of::<u64>()
}

impl<'a> Packer<'a> {
    /// A packer with the Galois keys `keys` of `ctx`'s set, choosing ℓ* per
    /// output by cost, up to the set's `shared_pack_levels` (PACK-2).
    pub fn new(ctx: &'a Context, keys: &'a GaloisKeys) -> Self {
        Self {
            ctx,
            keys,
            shared_levels: ctx.params().shared_pack_levels(),
            adaptive: true,
            bodies: Bodies::AtSlots,
            grouping: LeafGroups::OneLimb,
            doubled: (0, 0),
        }
    }

    /// PACK-9: for a repack whose outputs hold values only at multiples of
    /// `dilation` (s = 2^b), read by a product that never brings a
    /// coefficient at a residue mod s of 2-adic valuation ≥ c = `cleared`
    /// onto a coefficient it releases: at the top levels L − b + 1 ..= L − c
    /// of the tree, where each node's sibling is empty and the join would
    /// only clear the residues of valuation L − level, the node is doubled
    /// instead of key-switched (proofs/packing.md, Lemma 10). The values
    /// and the residues of valuation < c are the full tree's; the others
    /// keep what the lower levels left there.
    pub(crate) fn leaving_residues(mut self, dilation: usize, cleared: u32) -> Self {
        let log_n = self.ctx.params().log_ring_degree();
        let b = dilation.trailing_zeros().min(log_n);
        if dilation.is_power_of_two() && cleared < b {
            self.doubled = (log_n - b + 1, log_n - cleared + 1);
        }
        self
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
        Ok(self.pack_with_work(sources, placements)?.0)
    }

    /// [`pack`](Self::pack), with the work it did.
    pub fn pack_with_work(
        &self,
        sources: &[PackSource<'_>],
        placements: &[Placement],
    ) -> Result<(Vec<Ciphertext>, PackWork), PackError> {
        let sums: Vec<SumPlacement> = placements
            .iter()
            .map(|p| SumPlacement {
                values: vec![p.value],
                output: p.output,
                position: p.position,
            })
            .collect();
        self.pack_sums_with_work(sources, &sums)
    }

    /// Like [`pack`](Self::pack), each position receiving the sum of its
    /// values (PACK-5). The noise of a sum is at most the sum of its terms'
    /// noises (Minkowski).
    pub fn pack_sums(
        &self,
        sources: &[PackSource<'_>],
        placements: &[SumPlacement],
    ) -> Result<Vec<Ciphertext>, PackError> {
        Ok(self.pack_sums_with_work(sources, placements)?.0)
    }

    /// [`pack_sums`](Self::pack_sums), with the work it did.
    pub fn pack_sums_with_work(
        &self,
        sources: &[PackSource<'_>],
        placements: &[SumPlacement],
    ) -> Result<(Vec<Ciphertext>, PackWork), PackError> {
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
        // Conjugate-bearing sources need their γ levels shared.
        let min_shared = if sources.iter().any(|s| !s.conjugates.is_empty()) {
            gamma
        } else {
            0
        };
        let hi = self.shared_levels.min(self.ctx.params().log_ring_degree());
        // ℓ* of each output, and the sources it draws on (PACK-2).
        let drawn: Vec<Vec<u32>> = par::map(&slots, |s| distinct_sources(s));
        let mut uses = vec![0u32; sources.len()];
        for &s in drawn.iter().flatten() {
            uses[s as usize] += 1;
        }
        let price = LevelPrice::new(self.ctx, self.grouping, &uses);
        let levels: Vec<u32> = par::map_range(slots.len(), |k| {
            if self.adaptive {
                choose_shared_levels(&slots[k], &drawn[k], min_shared.min(hi), hi, &price)
            } else {
                hi
            }
        });
        let plans: Vec<(u32, Vec<u32>)> = levels.into_iter().zip(drawn).collect();
        let (images, image_key_switches) =
            Images::compute(self.ctx, self.keys, sources, gamma, &plans);
        let mut work = PackWork {
            image_key_switches,
            ..PackWork::default()
        };
        for (s, &(shared, _)) in slots.iter().zip(&plans) {
            let occupied: Vec<usize> = (0..n).filter(|&p| !s[p].is_empty()).collect();
            let terms: u64 = s.iter().map(|v| v.len() as u64).sum();
            let nodes = nodes_per_level(n, &occupied);
            work.node_key_switches += nodes[(shared + 1) as usize..].iter().sum::<u64>();
            // PACK-9: a doubled node (an empty sibling) costs no key switch.
            for l in (self.doubled.0..self.doubled.1).filter(|&l| l > shared) {
                let (here, below) = (nodes[l as usize], nodes[l as usize - 1]);
                work.node_key_switches -= 2 * here - below;
            }
            work.rotate_adds += terms << shared;
        }
        // Outputs in parallel, and inside each the two subtrees below every
        // tree node (src/par.rs, ENG-8): every node is computed with the
        // same arithmetic as the sequential tree, so the result does not
        // depend on the schedule.
        let packed = par::map_range(slots.len(), |k| {
            self.pack_one(&slots[k], &images, (plans[k].0, plans[k].1.len()))
        });
        Ok((packed, work))
    }

    /// ENG-14: the trace of `source` to the multiples of `stride` (S, a
    /// power of two ≤ N), scaled back: coefficient S·j of the result holds
    /// coefficient S·j of `source`, every other coefficient zero, each with
    /// the noise of log2 S key switches more (proofs/packing.md, Lemma 9).
    /// It is the pack of the values at those coefficients to the same
    /// positions when `source` holds nothing else at them: the top log2 S
    /// levels of the tree, each joining a node to an empty sibling, on
    /// `source` pre-scaled by S^-1 (q is odd). The one-group case of
    /// [`trace_groups`](Self::trace_groups).
    pub fn trace(
        &self,
        source: &Ciphertext,
        stride: usize,
    ) -> Result<(Ciphertext, PackWork), PackError> {
        self.trace_groups(std::slice::from_ref(source), stride, stride)
    }

    /// ENG-14: the pack of groups of values held at the multiples of
    /// S_g = `group_stride` into one ciphertext at the multiples of
    /// S = `stride` (powers of two, S ≤ S_g ≤ N): coefficient S_g·j of
    /// `groups[g]` goes to S·(g + j·G), G = S_g/S, and every coefficient of
    /// the result that is not a multiple of S is zero (proofs/packing.md,
    /// Lemma 9). Group g, pre-scaled by S_g^-1, stands for the tree's node
    /// (L − log2 S_g, g·S); the nodes above it are joined up to the one
    /// that holds the multiples of S, then traced: one key switch per
    /// non-empty node, G − 1 at most below S and log2 S above it. At most G
    /// groups, at least one.
    pub fn trace_groups(
        &self,
        groups: &[Ciphertext],
        group_stride: usize,
        stride: usize,
    ) -> Result<(Ciphertext, PackWork), PackError> {
        let ctx = self.ctx;
        let n = ctx.n();
        for s in [stride, group_stride] {
            if !s.is_power_of_two() || s > n {
                return Err(PackError::TraceStride { stride: s, n });
            }
        }
        // G = S_g/S, 0 when S > S_g.
        let slots = group_stride / stride;
        if groups.is_empty() || groups.len() > slots {
            return Err(PackError::TraceGroups {
                groups: groups.len(),
                group_stride,
                stride,
            });
        }
        let log_n = ctx.params().log_ring_degree();
        let top = log_n - stride.trailing_zeros();
        // S_g^-1 = N^-1·(N/S_g) mod q.
        let scale = n_inv_times(ctx, (n / group_stride) as u64);
        let mut leaves: Vec<Option<Ciphertext>> = groups
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.scalar_mul_assign(ctx.q(), &scale);
                Some(c)
            })
            .collect();
        leaves.resize_with(slots, || None);
        let mut ct = self
            .join_group(leaves, top)
            .expect("a node above a group is never empty");
        for level in top + 1..=log_n {
            ct = self
                .join(level, Some(ct), None)
                .expect("a node with a child is never empty");
        }
        // Below S, node r of the j-th level up holds groups r, r + G/2^j,
        // …: it is non-empty when r < the number of groups.
        let joins: usize = (1..=slots.trailing_zeros())
            .map(|j| groups.len().min(slots >> j))
            .sum();
        let work = PackWork {
            node_key_switches: (joins + stride.trailing_zeros() as usize) as u64,
            ..PackWork::default()
        };
        Ok((ct, work))
    }

    fn pack_one(
        &self,
        slots: &[Vec<ValueRef>],
        images: &Images,
        (shared, sources): (u32, usize),
    ) -> Ciphertext {
        let ctx = self.ctx;
        let n = ctx.n();
        let log_n = ctx.params().log_ring_degree();
        let two_n = 2 * n as u32;

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

        // The plain levels, depth first: node (ℓ, r) joins the subtrees
        // (ℓ−1, r) and (ℓ−1, r + N/2^ℓ), independent and run in parallel
        // down to the materialised nodes of level ℓ*. A thread holds only
        // the nodes on its path, so memory stays small and a freed buffer
        // is reused at once (a level at a time held N/2^ℓ* ciphertexts,
        // whose release made the allocator return and re-fault memory:
        // benches/README.md).
        // On multi-limb sets, a node's terms image by image: the rotate-adds
        // that read one image then follow each other while it is in cache
        // (an s16 image is 256 KiB; ResNet-20 on s16 took 9 % less CPU).
        // Exact modular sums, so the order changes no result. Grouped
        // leaves need the order too (`leaf_group`); otherwise the one-limb
        // sets keep their order: no gain measured there.
        let group = match self.bodies {
            Bodies::AtSlots => self.grouping.levels(ctx, shared, sources),
            Bodies::Full => None,
        };
        if ctx.limbs() > 1 || group.is_some() {
            for terms in &mut nodes {
                terms.sort_by_key(|t| (t.source, t.image));
            }
        }
        self.subtree(&nodes, images, shared, group, log_n, 0)
            .unwrap_or_else(|| ctx.zero_ciphertext())
    }

    /// Node `r` of tree level `level` of one output: materialised from its
    /// symbolic terms at level `shared`, else the combination of its two
    /// subtrees with the level's key switch. `None` for an empty subtree.
    /// With `group` levels, the leaves below a node at level
    /// `shared + group` are materialised together, image chunk by image
    /// chunk ([`leaf_group`](Self::leaf_group)), then joined as
    /// [`join_group`](Self::join_group) does.
    fn subtree(
        &self,
        nodes: &[Vec<Term>],
        images: &Images,
        shared: u32,
        group: Option<u32>,
        level: u32,
        r: usize,
    ) -> Option<Ciphertext> {
        if level == shared {
            return self.leaf(&nodes[r], images, level);
        }
        if group.is_some_and(|g| level == shared + g) {
            let leaves = self.leaf_group(nodes, images, shared, level, r);
            return self.join_group(leaves, level);
        }
        let half = self.ctx.n() >> level;
        let (even, odd) = par::join(
            || self.subtree(nodes, images, shared, group, level - 1, r),
            || self.subtree(nodes, images, shared, group, level - 1, r + half),
        );
        self.join(level, even, odd)
    }

    /// A leaf (a node at level ℓ* = `level`) from its symbolic terms; `None`
    /// without terms.
    fn leaf(&self, terms: &[Term], images: &Images, level: u32) -> Option<Ciphertext> {
        let ctx = self.ctx;
        let (q, n) = (ctx.q(), ctx.n());
        if terms.is_empty() {
            return None;
        }
        // All terms at once, block by block of the output: the 64 KiB
        // accumulator does not fit L1 beside an image, so term by term
        // it went to L2 and back for every term (0.84× the time in
        // benches/leaves.rs; benches/README.md).
        Some(match self.bodies {
            // PACK-6: the body only at the node's slots, read from the
            // images' residue-major rows, in a buffer a finished node
            // left (its stale body words off these slots never reach
            // the root: Lemma 7), so nothing is zeroed.
            Bodies::AtSlots => {
                let mut ct = spare_ciphertext(ctx);
                ct.set_monomial_sum_at_slots(q, &images.with_rows(level, terms), n >> level);
                ct
            }
            Bodies::Full => {
                let mut ct = ctx.zero_ciphertext();
                ct.monomial_sum_add(q, &images.masks(terms));
                ct
            }
        })
    }

    /// The leaves below node `r` of level `level` (> `shared`), in the
    /// order the combination pairs them: leaf k is node
    /// r + k·N/2^`level` of level `shared`. Their masks are summed image
    /// chunk by image chunk ([`LeafGroups`]: each leaf's terms sorted by
    /// source, every leaf takes the terms of the chunk's sources before
    /// the next chunk), so a chunk's images are read from L2 by every
    /// leaf instead of from memory by each; their bodies at the slots
    /// (PACK-6) in one pass each, as [`leaf`](Self::leaf) does. Exact
    /// modular sums in another order: the same words as the leaves made
    /// one by one (PACK-8).
    fn leaf_group(
        &self,
        nodes: &[Vec<Term>],
        images: &Images,
        shared: u32,
        level: u32,
        r: usize,
    ) -> Vec<Option<Ciphertext>> {
        let ctx = self.ctx;
        let (q, n) = (ctx.q(), ctx.n());
        let step = n >> level;
        let leaves: Vec<&[Term]> = (0..1usize << (level - shared))
            .map(|k| &nodes[r + k * step][..])
            .collect();
        let mut out: Vec<Option<Ciphertext>> = leaves
            .iter()
            .map(|terms| {
                if terms.is_empty() {
                    return None;
                }
                let mut ct = spare_ciphertext(ctx);
                ct.set_body_sum_at_slots(q, &images.with_rows(shared, terms), n >> shared);
                Some(ct)
            })
            .collect();
        let per_chunk = LeafGroups::sources_per_chunk(ctx, shared);
        let mut next = vec![0usize; leaves.len()];
        // The chunks in order, skipping those no leaf draws on.
        while let Some(chunk) = leaves
            .iter()
            .zip(&next)
            .filter_map(|(terms, &i)| terms.get(i).map(|t| t.source / per_chunk))
            .min()
        {
            let end = (chunk + 1) * per_chunk;
            for ((terms, i), ct) in leaves.iter().zip(&mut next).zip(&mut out) {
                let stop = *i + terms[*i..].partition_point(|t| t.source < end);
                if stop == *i {
                    continue;
                }
                let ct = ct.as_mut().expect("a leaf with terms has a buffer");
                ct.mask_sum(q, &images.masks(&terms[*i..stop]), *i == 0);
                *i = stop;
            }
        }
        out
    }

    /// The node of `level` above `leaves`, in [`leaf_group`](Self::leaf_group)'s
    /// order (leaf k is node r + k·N/2^`level` of level ℓ*): the
    /// even-indexed leaves lie below its even child (r), the odd-indexed
    /// below its odd child (r + N/2^`level`). The two children run in
    /// parallel, as in [`subtree`](Self::subtree).
    fn join_group(&self, leaves: Vec<Option<Ciphertext>>, level: u32) -> Option<Ciphertext> {
        if leaves.len() == 1 {
            return leaves.into_iter().next().flatten();
        }
        let (mut even, mut odd) = (Vec::new(), Vec::new());
        for (k, leaf) in leaves.into_iter().enumerate() {
            if k % 2 == 0 {
                even.push(leaf)
            } else {
                odd.push(leaf)
            }
        }
        let (even, odd) = par::join(
            || self.join_group(even, level - 1),
            || self.join_group(odd, level - 1),
        );
        self.join(level, even, odd)
    }

    /// Node (`level`, r) from its two children (`None` for an empty one):
    /// E + X^h·O + KS_g(τ_g(E − X^h·O)), h = N/2^level, g = 2^level + 1.
    fn join(
        &self,
        level: u32,
        even: Option<Ciphertext>,
        odd: Option<Ciphertext>,
    ) -> Option<Ciphertext> {
        let ctx = self.ctx;
        let (q, n) = (ctx.q(), ctx.n());
        if even.is_none() && odd.is_none() {
            return None;
        }
        // PACK-9: what this level would clear may stay (Lemma 10).
        if odd.is_none() && (self.doubled.0..self.doubled.1).contains(&level) {
            let mut node = even?;
            node.scalar_mul_assign(q, &[2; crate::math::MAX_LIMBS]);
            return Some(node);
        }
        let half = n >> level;
        let key = self.keys.key_for_level(level);
        Some(with_workspace(ctx, |ws| {
            // PACK-6: this node's body matters only at its 2^level slots.
            let body_slots = match self.bodies {
                Bodies::AtSlots => Some(1 << level),
                Bodies::Full => None,
            };
            // sum = E + X^half O (in E's buffer), twisted = τ_g(E − X^half O).
            let mut sum = even.unwrap_or_else(|| ctx.zero_ciphertext());
            match &odd {
                Some(o) => sum.pack_node_step(
                    q,
                    o,
                    (half, key.g),
                    &mut ws.diff,
                    &mut ws.twisted,
                    body_slots.is_some(),
                ),
                None => sum.automorphism_into(q, key.g, &mut ws.twisted),
            }
            ctx.key_switch_add_at_slots(key, &ws.twisted, &mut sum, &mut ws.scratch, body_slots);
            if let Some(o) = odd {
                ws.recycle(o);
            }
            sum
        }))
    }
}

/// The sources an output's values come from, sorted.
fn distinct_sources(slots: &[Vec<ValueRef>]) -> Vec<u32> {
    let mut sources: Vec<u32> = slots.iter().flatten().map(|v| v.source).collect();
    sources.sort_unstable();
    sources.dedup();
    sources
}

/// Cost of one key switch (with its node's bookkeeping) in monomial
/// rotate-adds of a ciphertext on the one-limb sets; only the choice of ℓ*
/// depends on it, never a result. First fitted to fixed-ℓ* packs of 4096
/// values (384, against a 0.32 ms key switch); refitted on ResNet-20 after
/// the one-limb key switch was vectorised (0.44× its time): 192 took
/// 0.92× the server time of 384, 128 the same as 192; refitted again after
/// the fused key switch (0.90× its time): 96 took 0.97× the CPU time of
/// 192 (geometric mean of 9 pairs, 8 below 1), 128 and 64 no better than
/// 96; doubled to 192 when the leaves' bodies went to their slots (PACK-6),
/// which halved a rotate-add: ResNet-20 0.88× the server time of 96, digits
/// 0.97×, 144 as 96 and 256 as 192 (benches/README.md).
const KEY_SWITCH_IN_ROTATIONS: u64 = 192;

/// The same on a multi-limb set (PARAM-8): s16's vectorised key switch
/// (≈0.44 ms) against its rotate-add of 2 limbs × 8192 coefficients
/// (≈7 µs inside a dense pack, where the images no longer fit in cache).
/// Fitted on ResNet-20 with s16 (benches/README.md): 64 took 27 % less
/// CPU time than 384.
const KEY_SWITCH_IN_ROTATIONS_MULTI_LIMB: u64 = 64;

/// The key-switch cost in rotate-adds that the ℓ* choice uses for `ctx`.
fn key_switch_in_rotations(ctx: &Context) -> u64 {
    if ctx.limbs() == 1 {
        KEY_SWITCH_IN_ROTATIONS
    } else {
        KEY_SWITCH_IN_ROTATIONS_MULTI_LIMB
    }
}

/// What PACK-2's cost model prices, in rotate-adds of a leaf whose images
/// are in cache.
struct LevelPrice<'u> {
    /// A key switch (with its node's bookkeeping).
    key_switch: u64,
    /// On the sets whose leaves may be grouped (`LeafGroups`): the bytes
    /// of one image's mask, and for each source the number of the pack's
    /// outputs that draw on it. A rotate-add is then priced by the images
    /// its output reads ([`rotate_add_price`]: 1 below 2 MiB, where no
    /// group is needed or a group keeps them in L2), and an image at its
    /// share of the outputs that read it (a source's images are computed
    /// once per pack). Elsewhere a rotate-add costs 1 and every output pays
    /// for all its sources' images.
    grouped: Option<(usize, &'u [u32])>,
}

impl<'u> LevelPrice<'u> {
    fn new(ctx: &Context, grouping: LeafGroups, uses: &'u [u32]) -> Self {
        Self {
            key_switch: key_switch_in_rotations(ctx),
            grouped: grouping.on(ctx).then(|| (mask_bytes(ctx), uses)),
        }
    }
}

/// The price of a rotate-add whose leaf group reads `bytes` of images,
/// against one that reads them from L2: 1 up to 2 MiB, then 0.35 more per
/// doubling. Grouped leaves on b16 (a 2 MiB-L2 Xeon) took 0.64 µs per
/// rotate-add from 4 MiB of images and 0.91 µs from 16 MiB, against
/// 0.51 µs from 1 MiB (≈ 0.25 per doubling); end to end 0.35 was fastest
/// on ResNet-18 (119.4 and 119.7 s against 120.8 s at 0.25, 123–124 s at
/// 0.5 and 0.7) and ResNet-20 the same at all four (benches/README.md,
/// "Leaves in groups").
fn rotate_add_price(bytes: usize) -> f64 {
    const IN_CACHE: f64 = (2 << 20) as f64;
    const PER_DOUBLING: f64 = 0.35;
    1.0 + PER_DOUBLING * (bytes as f64 / IN_CACHE).log2().max(0.0)
}

/// Picks ℓ* in `lo..=hi` for one output drawing on `sources` by a cost
/// model (PACK-2): sharing level ℓ costs 2^ℓ rotate-adds per value and
/// 2^ℓ − 1 key switches per source, and saves the key switches of every
/// non-empty node at levels ≤ ℓ (`price` says what they cost). A full
/// dense output (one value per slot) lands on ℓ* = 3, sparser ones higher.
fn choose_shared_levels(
    slots: &[Vec<ValueRef>],
    sources: &[u32],
    lo: u32,
    hi: u32,
    price: &LevelPrice,
) -> u32 {
    let n = slots.len();
    let occupied: Vec<usize> = (0..n).filter(|&p| !slots[p].is_empty()).collect();
    let terms: u64 = slots.iter().map(|v| v.len() as u64).sum();
    let nodes = nodes_per_level(n, &occupied);
    let key_switch = price.key_switch as f64;
    let cost = |shared: u32| -> f64 {
        let Some((mask_bytes, uses)) = price.grouped else {
            let flat = shared_level_cost(
                &nodes,
                terms,
                sources.len() as u64,
                shared,
                price.key_switch,
            );
            return flat as f64;
        };
        let per_source = (1u64 << shared) as f64;
        let images = (mask_bytes * sources.len()) << shared;
        let rotations = terms as f64 * per_source * rotate_add_price(images);
        let share: f64 = sources
            .iter()
            .map(|&s| 1.0 / uses[s as usize].max(1) as f64)
            .sum();
        let upper: u64 = nodes[(shared + 1) as usize..].iter().sum();
        rotations + (share * (per_source - 1.0) + upper as f64) * key_switch
    };
    (lo..=hi)
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        .unwrap_or(lo)
}

/// Non-empty tree nodes at each level ℓ = 0..=log2 N of one output whose
/// values sit at `occupied` (positions below N): the distinct residues of
/// the positions mod N/2^ℓ. Residue r mod N/2^(ℓ+1) is occupied when r or
/// r + N/2^(ℓ+1) is mod N/2^ℓ, so one occupancy map is folded in half per
/// level: 2N steps in all. (A division per position and level took 1.9 % of
/// a ResNet-20 bench process on a Zen 3, mostly in the compile step's
/// layout pricing: benches/README.md.)
fn nodes_per_level(n: usize, occupied: &[usize]) -> Vec<u64> {
    debug_assert!(n.is_power_of_two());
    let mut seen = vec![false; n];
    for &p in occupied {
        seen[p] = true;
    }
    let count = |s: &[bool]| s.iter().filter(|&&b| b).count() as u64;
    let mut nodes = vec![count(&seen)];
    let mut len = n;
    while len > 1 {
        len /= 2;
        let (low, high) = seen.split_at_mut(len);
        for (l, &h) in low.iter_mut().zip(&high[..len]) {
            *l |= h;
        }
        nodes.push(count(&seen[..len]));
    }
    nodes
}

/// PACK-2's cost model, in rotate-adds: sharing `shared` levels costs 2^ℓ
/// rotate-adds per term and 2^ℓ − 1 key switches per source; every
/// non-empty node above them costs a key switch.
fn shared_level_cost(nodes: &[u64], terms: u64, sources: u64, shared: u32, key_switch: u64) -> u64 {
    let rotations = terms * (1u64 << shared);
    let images = sources * ((1u64 << shared) - 1);
    let upper: u64 = nodes[(shared + 1) as usize..].iter().sum();
    rotations + (images + upper) * key_switch
}

/// ENG-10: the price, in rotate-adds, of a pack whose outputs hold values
/// at the coefficients `outputs[o]` (one term each), drawn from
/// `sources` source ciphertexts, by PACK-2's cost model at the cheapest ℓ*
/// common to all outputs (a source's images are computed once for every
/// output that uses them). For plans that compare a pack with work that
/// would replace it: an estimate, never a result.
pub(crate) fn pack_price(ctx: &Context, outputs: &[Vec<usize>], sources: u64) -> u64 {
    let n = ctx.n();
    let nodes: Vec<(Vec<u64>, u64)> = outputs
        .iter()
        .map(|pos| {
            let occupied: Vec<usize> = pos.iter().map(|&p| p % n).collect();
            (nodes_per_level(n, &occupied), pos.len() as u64)
        })
        .collect();
    let hi = ctx
        .params()
        .shared_pack_levels()
        .min(ctx.params().log_ring_degree());
    let key_switch = key_switch_in_rotations(ctx);
    (0..=hi)
        .map(|l| {
            let images = sources * ((1u64 << l) - 1) * key_switch;
            let per_output: u64 = nodes
                .iter()
                .map(|(nodes, terms)| shared_level_cost(nodes, *terms, 0, l, key_switch))
                .sum();
            images + per_output
        })
        .min()
        .unwrap_or(0)
}

/// The images `D_t(N^-1 · c_s)` the outputs' shared levels use: for every
/// source of an output with ℓ* shared levels, every t < 2^ℓ* (the symbolic
/// levels reach each subset of {1..ℓ*}, so none is computed in vain).
struct Images {
    /// 2^(largest ℓ*): the table's row length.
    width: usize,
    /// `table[s · width + t]`.
    table: Vec<Option<Ciphertext>>,
    /// `rows[ℓ*]`: the bodies of the images outputs with ℓ* shared levels
    /// read, residue-major for their leaves' stride N/2^ℓ* (PACK-6), laid
    /// out as `table`. Empty for ℓ* = 0, whose stride N leaves a body
    /// its own rows.
    rows: Vec<Vec<Option<Vec<u64>>>>,
}

impl Images {
    /// Computes them in parallel: an image is the level-(top+1) key switch
    /// of the image without its top bit, and the children of one image
    /// share its gadget decomposition (PACK-7). Also returns how many key
    /// switches that took.
    fn compute(
        ctx: &Context,
        keys: &GaloisKeys,
        sources: &[PackSource<'_>],
        gamma: u32,
        plans: &[(u32, Vec<u32>)],
    ) -> (Self, u64) {
        let width = 1usize << plans.iter().map(|p| p.0).max().unwrap_or(0);
        let mut needed = vec![false; sources.len() * width];
        for (shared, used) in plans {
            for &s in used {
                let row = s as usize * width;
                needed[row..row + (1 << shared)].fill(true);
            }
        }
        let mut images = Self {
            width,
            table: vec![None; sources.len() * width],
            rows: Vec::new(),
        };
        let q = ctx.q();
        // The images the client supplied (t < 2^γ of a conjugate-bearing
        // source; t = 0 of every source): only rescaled, by N^-1, or
        // 2^γ·N^-1 for conjugate-bearing sources.
        let supplied: Vec<usize> = (0..needed.len())
            .filter(|&i| needed[i] && i % width < 1 << sources[i / width].client_levels(gamma))
            .collect();
        let rescaled = par::map(&supplied, |&i| {
            let (s, t) = (i / width, i % width);
            let src = &sources[s];
            let client_levels = src.client_levels(gamma);
            let base = if t == 0 {
                src.ciphertext
            } else {
                &src.conjugates[t - 1]
            };
            let mut ct = base.clone();
            ct.scalar_mul_assign(q, &n_inv_times(ctx, 1u64 << client_levels));
            ct
        });
        for (i, ct) in supplied.into_iter().zip(rescaled) {
            images.table[i] = Some(ct);
        }
        // The rest by key switches: D_t = KS_g τ_g (D_{t without its top
        // bit}), g of the top bit's level. An image's children (its index
        // plus a bit above its top one) are switched from one gadget
        // decomposition of it (PACK-7); parents with k bits set are
        // computed before those with k + 1.
        let log_width = width.trailing_zeros();
        let mut key_switches = 0u64;
        for bits in 0..log_width {
            let jobs: Vec<(usize, Vec<u32>)> = (0..needed.len())
                .filter(|&i| images.table[i].is_some() && (i % width).count_ones() == bits)
                .filter_map(|i| {
                    let (s, t) = (i / width, i % width);
                    let first = if t == 0 { 0 } else { t.ilog2() + 1 };
                    let client = 1usize << sources[s].client_levels(gamma);
                    let children: Vec<u32> = (first..log_width)
                        .filter(|&b| {
                            let child = t | 1 << b;
                            needed[s * width + child] && child >= client
                        })
                        .collect();
                    (!children.is_empty()).then_some((i, children))
                })
                .collect();
            key_switches += jobs.iter().map(|(_, c)| c.len() as u64).sum::<u64>();
            let table = &images.table;
            let parent = |i: usize| table[i].as_ref().expect("parents come first");
            let done: Vec<Vec<Ciphertext>> = if jobs.len() < par::threads() {
                // Fewer parents than threads (a pack's first generations;
                // PACK-7, ENG-8): each parent's digits are formed once,
                // then every child's key switch is a task of its own, so
                // the other threads need not wait for one parent's
                // children in turn.
                let digits = par::map(&jobs, |(i, children)| {
                    ctx.hoist_digits(keys.hoisted_for_level(children[0] + 1), parent(*i))
                });
                let pairs: Vec<(usize, u32)> = jobs
                    .iter()
                    .enumerate()
                    .flat_map(|(j, (_, children))| children.iter().map(move |&b| (j, b)))
                    .collect();
                let mut cts = par::map(&pairs, |&(j, b)| {
                    with_workspace(ctx, |ws| {
                        let key = keys.hoisted_for_level(b + 1);
                        let (ct, digits) = (parent(jobs[j].0), digits[j].as_ref());
                        ctx.key_switch_image(digits, key, ct, &mut ws.twisted, &mut ws.scratch)
                    })
                })
                .into_iter();
                jobs.iter()
                    .map(|(_, children)| cts.by_ref().take(children.len()).collect())
                    .collect()
            } else {
                par::map(&jobs, |(i, children)| {
                    let hoisted: Vec<_> = children
                        .iter()
                        .map(|&b| keys.hoisted_for_level(b + 1))
                        .collect();
                    with_workspace(ctx, |ws| {
                        ctx.key_switch_images(
                            &hoisted,
                            parent(*i),
                            &mut ws.twisted,
                            &mut ws.scratch,
                        )
                    })
                })
            };
            for ((i, children), cts) in jobs.into_iter().zip(done) {
                for (b, ct) in children.into_iter().zip(cts) {
                    images.table[i | 1 << b] = Some(ct);
                }
            }
        }
        images.add_rows(ctx, plans);
        (images, key_switches)
    }

    /// The residue-major bodies of [`rows`](Self::rows), in parallel: N
    /// words per image and ℓ* ≥ 1 that uses it, where a leaf's strided
    /// reads of the body missed the cache once per slot and term.
    fn add_rows(&mut self, ctx: &Context, plans: &[(u32, Vec<u32>)]) {
        let n = ctx.n();
        let top = plans.iter().map(|p| p.0).max().unwrap_or(0);
        self.rows = vec![Vec::new(); top as usize + 1];
        for level in 1..=top {
            let mut needed = vec![false; self.table.len()];
            for (_, used) in plans.iter().filter(|p| p.0 == level) {
                for &s in used {
                    let row = s as usize * self.width;
                    needed[row..row + (1 << level)].fill(true);
                }
            }
            let todo: Vec<usize> = (0..needed.len()).filter(|&i| needed[i]).collect();
            if todo.is_empty() {
                continue;
            }
            let table = &self.table;
            let built = par::map(&todo, |&i| {
                let body = &table[i].as_ref().expect("every used image is computed").b;
                let mut rows = vec![0; body.len()];
                for (limb, out) in body.chunks_exact(n).zip(rows.chunks_exact_mut(n)) {
                    poly::residue_major(limb, n >> level, out);
                }
                rows
            });
            let mut by_index = vec![None; self.table.len()];
            for (i, rows) in todo.into_iter().zip(built) {
                by_index[i] = Some(rows);
            }
            self.rows[level as usize] = by_index;
        }
    }

    /// Image (`source`, `image`)'s body residue-major for the stride
    /// N/2^`level` of the leaves at that level.
    fn rows(&self, level: u32, source: u32, image: u32) -> &[u64] {
        if level == 0 {
            return &self.get(source, image).b;
        }
        self.rows[level as usize][source as usize * self.width + image as usize]
            .as_ref()
            .expect("every image a leaf reads has its rows")
    }

    /// Each term's image, rotation and sign, as the mask sums take them.
    fn masks(&self, terms: &[Term]) -> Vec<(&Ciphertext, usize, bool)> {
        terms
            .iter()
            .map(|t| (self.get(t.source, t.image), t.exp as usize, t.negate))
            .collect()
    }

    /// [`masks`](Self::masks) with each image's body rows for the leaves
    /// of `level` (PACK-6).
    fn with_rows(&self, level: u32, terms: &[Term]) -> Vec<(&Ciphertext, &[u64], usize, bool)> {
        terms
            .iter()
            .map(|t| {
                let rows = self.rows(level, t.source, t.image);
                (self.get(t.source, t.image), rows, t.exp as usize, t.negate)
            })
            .collect()
    }

    fn get(&self, source: u32, image: u32) -> &Ciphertext {
        self.table[source as usize * self.width + image as usize]
            .as_ref()
            .expect("every image a shared level uses was computed")
    }
}

/// Per-thread buffers of the key switches: allocating them per task made
/// the allocator hand memory back to the system and fault it in again,
/// several percent of the time on two threads (benches/README.md).
struct Workspace {
    scratch: KeySwitchScratch,
    diff: Ciphertext,
    twisted: Ciphertext,
    /// Buffers of combined nodes, for the next leaves: a leaf overwrites
    /// its mask and the body at its slots, so a spare is never zeroed
    /// (zeroing each leaf's 64 KiB was ≈ 3 % of ResNet-20's time).
    spare: Vec<Ciphertext>,
}

impl Workspace {
    /// Depth first, a thread finishes a node (or a group of leaves,
    /// `LeafGroups`) before it builds the next leaves, so a group's worth
    /// of spares serves it.
    const SPARES: usize = 1 << LeafGroups::LEVELS;

    fn recycle(&mut self, ct: Ciphertext) {
        if self.spare.len() < Self::SPARES && ct.a.len() == self.diff.a.len() {
            self.spare.push(ct);
        }
    }
}

thread_local! {
    static WORKSPACE: std::cell::RefCell<Option<Workspace>> = const { std::cell::RefCell::new(None) };
}

/// A buffer for a leaf: a spare of this thread's workspace (its words are
/// overwritten where a leaf needs them: Lemma 7), else a new one.
fn spare_ciphertext(ctx: &Context) -> Ciphertext {
    with_workspace(ctx, |ws| ws.spare.pop()).unwrap_or_else(|| ctx.zero_ciphertext())
}

/// Runs `f` with this thread's workspace for `ctx` (made on first use).
/// The workspace holds no secret: only the server's intermediate
/// ciphertexts, overwritten by the next task (a spare's body words off a
/// leaf's slots are not overwritten, and never reach an output: Lemma 7).
fn with_workspace<R>(ctx: &Context, f: impl FnOnce(&mut Workspace) -> R) -> R {
    let (n, levels, limbs) = (ctx.n(), ctx.params().gadget_levels(), ctx.limbs());
    let mut ws = WORKSPACE
        .with(|w| w.borrow_mut().take())
        .filter(|w| w.scratch.fits(n, levels, limbs) && w.diff.a.len() == n * limbs)
        .unwrap_or_else(|| Workspace {
            scratch: KeySwitchScratch::new(n, levels, limbs),
            diff: ctx.zero_ciphertext(),
            twisted: ctx.zero_ciphertext(),
            spare: Vec::new(),
        });
    let out = f(&mut ws);
    WORKSPACE.with(|w| *w.borrow_mut() = Some(ws));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterSet;
    use crate::rlwe::SecretKey;
    use crate::rng::Csprng;

    // The counted work is Lemma 4's (proofs/packing.md, its tables): a
    // full output from one source at ℓ* = 4 takes 255 node and 15 image
    // key switches and 4096·16 rotate-adds; a second output from the same
    // source reuses the images; 512 values at 0..511 at ℓ* = 5 take
    // 127 + 31 key switches and 512·32 rotate-adds.
    #[test]
    fn counted_work_is_lemma_4s() {
        let ctx = Context::new(ParameterSet::shipped("b8").unwrap());
        let n = ctx.n();
        let mut rng = Csprng::from_seed([8; 16]);
        let sk = SecretKey::generate(&ctx, &mut rng);
        let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
        let keys = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
        let ct = ctx.encrypt(&sk, &vec![1; n], &mut rng);
        let sources = [PackSource::plain(&ct)];
        let place = |count: usize, outputs: usize| -> Vec<Placement> {
            (0..count * outputs)
                .map(|k| Placement {
                    value: ValueRef::new(0, (k * 5) % n),
                    output: k / count,
                    position: k % count,
                })
                .collect()
        };
        let at = |l| Packer::new(&ctx, &keys).with_shared_levels(l).unwrap();
        let work = |l, count, outputs| {
            at(l)
                .pack_with_work(&sources, &place(count, outputs))
                .unwrap()
                .1
        };
        let expect = |node, image, rot| PackWork {
            node_key_switches: node,
            image_key_switches: image,
            rotate_adds: rot,
        };
        assert_eq!(work(4, n, 1), expect(255, 15, 4096 * 16));
        assert_eq!(work(4, n, 2), expect(510, 15, 2 * 4096 * 16));
        assert_eq!(work(5, 512, 1), expect(127, 31, 512 * 32));
    }

    /// A secret key, its Galois keys, N random values in −100..=100 and
    /// their encryption, from `seed`.
    fn encrypted_values(ctx: &Context, seed: u8) -> (SecretKey, GaloisKeys, Vec<i64>, Ciphertext) {
        let (sk, keys, mut encrypted) = encrypted_vectors(ctx, seed, 1);
        let (v, ct) = encrypted.remove(0);
        (sk, keys, v, ct)
    }

    /// As [`encrypted_values`], `count` vectors under one key.
    fn encrypted_vectors(
        ctx: &Context,
        seed: u8,
        count: usize,
    ) -> (SecretKey, GaloisKeys, Vec<(Vec<i64>, Ciphertext)>) {
        let mut rng = Csprng::from_seed([seed; 16]);
        let sk = SecretKey::generate(ctx, &mut rng);
        let seeded = GaloisKeys::generate_seeded(ctx, &sk, &mut rng);
        let keys = GaloisKeys::from_seeded(ctx, &seeded).unwrap();
        let encrypted = (0..count)
            .map(|_| {
                let v: Vec<i64> = (0..ctx.n())
                    .map(|_| rng.uniform_below(201) as i64 - 100)
                    .collect();
                let ct = ctx.encrypt(&sk, &v, &mut rng);
                (v, ct)
            })
            .collect();
        (sk, keys, encrypted)
    }

    // ENG-14 (proofs/packing.md, Lemma 9): the trace keeps a ciphertext's
    // coefficients at the multiples of S, exactly, and zeroes every other
    // one, on a one-limb and a multi-limb set; it costs log2 S key
    // switches; a stride that is not a power of two ≤ N is refused. (A
    // level left out keeps the odd multiples of S/2; a wrong scale moves
    // every kept value.)
    #[test]
    fn the_trace_keeps_the_multiples_of_its_stride() {
        for set in ["b16", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let n = ctx.n();
            let (sk, keys, v, ct) = encrypted_values(&ctx, 12);
            let packer = Packer::new(&ctx, &keys);
            for stride in [1, 2, 16, 256, n] {
                let (traced, work) = packer.trace(&ct, stride).unwrap();
                let want: Vec<i64> = (0..n)
                    .map(|i| if i % stride == 0 { v[i] } else { 0 })
                    .collect();
                assert_eq!(ctx.decrypt(&sk, &traced), want, "{set}, S = {stride}");
                assert_eq!(
                    work,
                    PackWork {
                        node_key_switches: u64::from(stride.trailing_zeros()),
                        ..PackWork::default()
                    }
                );
            }
            for stride in [0, 3, 2 * n] {
                assert_eq!(
                    packer.trace(&ct, stride).unwrap_err(),
                    PackError::TraceStride { stride, n }
                );
            }
        }
    }

    // ENG-14 (proofs/packing.md, Lemma 9): groups at the multiples of S_g
    // traced into one ciphertext at the multiples of S: coefficient S_g·j
    // of group g lands at S·(g + j·S_g/S), every other coefficient is zero
    // (the groups' values off their multiples of S_g are random here, so
    // a join that let one through, or a group at the wrong node, fails);
    // one key switch per non-empty node; bad strides and counts refused.
    #[test]
    fn traced_groups_interleave_at_the_multiples_of_the_stride() {
        for set in ["b16", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let n = ctx.n();
            let (sk, keys, encrypted) = encrypted_vectors(&ctx, 13, 5);
            let packer = Packer::new(&ctx, &keys);
            let (values, cts): (Vec<Vec<i64>>, Vec<Ciphertext>) = encrypted.into_iter().unzip();
            // (groups, S_g, S, key switches): 3 of 4 groups join in 2 + 1
            // nodes below S = 128, then 7 levels; 5 of 8 in 4 + 2 + 1.
            for (count, group_stride, stride, switches) in [
                (3, 512, 128, 3 + 7),
                (5, 1024, 128, 7 + 7),
                (2, 2, 1, 1),
                (1, 256, 256, 8),
            ] {
                let (traced, work) = packer
                    .trace_groups(&cts[..count], group_stride, stride)
                    .unwrap();
                let groups = group_stride / stride;
                let mut want = vec![0i64; n];
                for (g, v) in values[..count].iter().enumerate() {
                    for j in 0..n / group_stride {
                        want[stride * (g + j * groups)] = v[group_stride * j];
                    }
                }
                assert_eq!(
                    ctx.decrypt(&sk, &traced),
                    want,
                    "{set}: {count} groups, S_g = {group_stride}, S = {stride}"
                );
                assert_eq!(work.node_key_switches, switches);
            }
            for (count, group_stride, stride) in [(0, 512, 128), (5, 512, 128), (1, 128, 256)] {
                assert_eq!(
                    packer
                        .trace_groups(&cts[..count], group_stride, stride)
                        .unwrap_err(),
                    PackError::TraceGroups {
                        groups: count,
                        group_stride,
                        stride
                    }
                );
            }
            assert_eq!(
                packer.trace_groups(&cts[..1], 3 * 128, 128).unwrap_err(),
                PackError::TraceStride { stride: 384, n }
            );
        }
    }

    // PACK-9 (proofs/packing.md, Lemma 10): values at multiples of s = 16,
    // packed with the top levels doubled down to valuation c: the values
    // and every residue mod s of valuation < c are as the full tree has
    // them (zero off the values), and each output saves 4 − c key
    // switches. (Doubling one level more leaves residues of valuation
    // c − 1 uncleared, which fails it.)
    #[test]
    fn doubled_top_levels_keep_the_values_and_the_low_residues() {
        let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
        let n = ctx.n();
        let s = 16;
        let (sk, keys, _, ct) = encrypted_values(&ctx, 13);
        let sources = [PackSource::plain(&ct)];
        // Two outputs: 100 values in a block of multiples of s, and 7
        // scattered ones.
        let mut placements: Vec<Placement> = (0..100)
            .map(|k| Placement {
                value: ValueRef::new(0, (k * 37 + 5) % n),
                output: 0,
                position: s * (k + 40),
            })
            .collect();
        placements.extend((0..7).map(|k| Placement {
            value: ValueRef::new(0, k * 3),
            output: 1,
            position: s * ((k * 29) % (n / s)),
        }));
        let (full, full_work) = Packer::new(&ctx, &keys)
            .pack_with_work(&sources, &placements)
            .unwrap();
        for cleared in [0u32, 1, 3] {
            let (left, work) = Packer::new(&ctx, &keys)
                .leaving_residues(s, cleared)
                .pack_with_work(&sources, &placements)
                .unwrap();
            assert_eq!(
                work.node_key_switches,
                full_work.node_key_switches - 2 * u64::from(4 - cleared),
                "c = {cleared}"
            );
            for (o, (f, l)) in full.iter().zip(&left).enumerate() {
                let (f, l) = (ctx.decrypt(&sk, f), ctx.decrypt(&sk, l));
                for j in 0..n {
                    let residue = j % s;
                    if residue == 0 || residue.trailing_zeros() < cleared {
                        assert_eq!(l[j], f[j], "output {o}, coefficient {j}, c = {cleared}");
                    }
                }
            }
        }
    }

    /// Galois keys, `count` encryptions of random values in −100..100 and a
    /// random order of the N positions, for the packing tests.
    fn random_sources(
        ctx: &Context,
        count: usize,
        rng: &mut Csprng,
    ) -> (GaloisKeys, Vec<Ciphertext>, Vec<usize>) {
        let n = ctx.n();
        let sk = SecretKey::generate(ctx, rng);
        let seeded = GaloisKeys::generate_seeded(ctx, &sk, rng);
        let keys = GaloisKeys::from_seeded(ctx, &seeded).unwrap();
        let cts: Vec<Ciphertext> = (0..count)
            .map(|_| {
                let v: Vec<i64> = (0..n)
                    .map(|_| rng.uniform_below(200) as i64 - 100)
                    .collect();
                ctx.encrypt(&sk, &v, rng)
            })
            .collect();
        let mut positions: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            positions.swap(i, rng.uniform_below(i as u64 + 1) as usize);
        }
        (keys, cts, positions)
    }

    // PACK-6: leaves whose bodies are summed only at their slots give the
    // same output ciphertexts, word for word, as the full leaves of
    // Lemma 2, at every ℓ* and chosen per output, for values from several
    // sources at random positions (one full output and one sparse one).
    #[test]
    fn slot_only_bodies_give_the_same_ciphertexts() {
        for set in ["b8", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let n = ctx.n();
            let mut rng = Csprng::from_seed([7; 16]);
            let (keys, cts, positions) = random_sources(&ctx, 3, &mut rng);
            let sources: Vec<PackSource> = cts.iter().map(PackSource::plain).collect();
            let placements: Vec<Placement> = (0..n + n / 5)
                .map(|k| Placement {
                    value: ValueRef::new(k % 3, (k * 7) % n),
                    output: k / n,
                    position: if k < n {
                        positions[k]
                    } else {
                        positions[k - n]
                    },
                })
                .collect();
            let fixed: &[u32] = if set == "b8" { &[0, 3, 5] } else { &[2] };
            let packers = fixed
                .iter()
                .map(|&l| Packer::new(&ctx, &keys).with_shared_levels(l).unwrap())
                .chain([Packer::new(&ctx, &keys)]);
            for packer in packers {
                let full = Packer {
                    bodies: Bodies::Full,
                    ..packer
                };
                let want = full.pack(&sources, &placements).unwrap();
                let got = packer.pack(&sources, &placements).unwrap();
                assert_eq!(got.len(), 2);
                assert!(
                    got == want,
                    "{set}, ℓ* ≤ {}: the slot-only leaves changed the output",
                    packer.shared_levels
                );
            }
        }
    }

    // PACK-8: leaves in groups (`LeafGroups`), their masks summed image
    // chunk by image chunk, give the same words as leaves made one by one,
    // on b16 (ℓ* = 0, 3, 5 and chosen per output) and s16 (ℓ* = 2 and
    // chosen): values from enough sources for several chunks, sums of two
    // values at some positions (PACK-5), a dense output and a sparse one
    // (leaves without terms).
    #[test]
    fn grouped_leaves_give_the_same_ciphertexts() {
        for (set, count, levels) in [("b16", 10, &[0, 3, 5][..]), ("s16", 4, &[2][..])] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let n = ctx.n();
            let mut rng = Csprng::from_seed([11; 16]);
            let (keys, cts, positions) = random_sources(&ctx, count, &mut rng);
            let sources: Vec<PackSource> = cts.iter().map(PackSource::plain).collect();
            let mut value = || {
                ValueRef::new(
                    rng.uniform_below(count as u64) as usize,
                    rng.uniform_below(n as u64) as usize,
                )
            };
            let placements: Vec<SumPlacement> = (0..n + n / 5)
                .map(|k| SumPlacement {
                    values: if k % 7 == 0 {
                        vec![value(), value()]
                    } else {
                        vec![value()]
                    },
                    output: k / n,
                    position: positions[k % n],
                })
                .collect();
            let packers = levels
                .iter()
                .map(|&l| Packer::new(&ctx, &keys).with_shared_levels(l).unwrap())
                .chain([Packer::new(&ctx, &keys)]);
            for packer in packers {
                let one_by_one = Packer {
                    grouping: LeafGroups::Never,
                    ..packer
                };
                let grouped = Packer {
                    grouping: LeafGroups::Always,
                    ..packer
                };
                let want = one_by_one.pack_sums(&sources, &placements).unwrap();
                let got = grouped.pack_sums(&sources, &placements).unwrap();
                assert_eq!(got.len(), 2);
                assert!(
                    got == want,
                    "{set}, ℓ* ≤ {}: grouped leaves changed the output",
                    packer.shared_levels
                );
            }
        }
    }

    // A pool thread keeps its workspace (key-switch scratch, spares)
    // across calls on every shipped set: a check of the scratch's sizes
    // that disagreed with its constructor once rebuilt it for every key
    // switch and leaf.
    #[test]
    fn a_thread_keeps_its_workspace() {
        for params in ParameterSet::shipped_all().unwrap() {
            let ctx = Context::new(params);
            let first = with_workspace(&ctx, |ws| {
                ws.spare.clear();
                ws.recycle(ctx.zero_ciphertext());
                ws.diff.a.as_ptr() as usize
            });
            let (again, spares) =
                with_workspace(&ctx, |ws| (ws.diff.a.as_ptr() as usize, ws.spare.len()));
            assert_eq!((again, spares), (first, 1), "set {}", ctx.params().name());
        }
    }

    // PACK-6: leaves built in recycled buffers whose words are random
    // (stale bodies off the slots, a mask to be overwritten) give the same
    // outputs as full leaves built from zero, on b8 and s16: no stale word
    // reaches a packed output (proofs/packing.md, Lemma 7).
    #[test]
    fn stale_leaf_bodies_never_reach_the_output() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for set in ["b8", "s16"] {
            let ctx = Context::new(ParameterSet::shipped(set).unwrap());
            let n = ctx.n();
            let mut rng = Csprng::from_seed([9; 16]);
            let sk = SecretKey::generate(&ctx, &mut rng);
            let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
            let keys = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
            let v: Vec<i64> = (0..n).map(|i| (i % 201) as i64 - 100).collect();
            let ct = ctx.encrypt(&sk, &v, &mut rng);
            let sources = [PackSource::plain(&ct)];
            let placements: Vec<Placement> = (0..n / 3)
                .map(|k| Placement {
                    value: ValueRef::new(0, (k * 11) % n),
                    output: 0,
                    position: (k * 3) % n,
                })
                .collect();
            let random_part = |rng: &mut Csprng| -> Vec<u64> {
                (0..ctx.limbs() * n)
                    .map(|i| rng.uniform_below(ctx.q().limb(i / n).value()))
                    .collect()
            };
            for l in [0, 2, 4] {
                let packer = Packer::new(&ctx, &keys).with_shared_levels(l).unwrap();
                let full = Packer {
                    bodies: Bodies::Full,
                    ..packer
                };
                let want = full.pack(&sources, &placements).unwrap();
                let got = pool.install(|| {
                    with_workspace(&ctx, |ws| {
                        ws.spare.clear();
                        while ws.spare.len() < Workspace::SPARES {
                            ws.spare.push(Ciphertext {
                                a: random_part(&mut rng),
                                b: random_part(&mut rng),
                                n,
                            });
                        }
                    });
                    packer.pack(&sources, &placements).unwrap()
                });
                assert!(
                    got == want,
                    "{set}, ℓ* = {l}: a stale word reached the output"
                );
            }
        }
    }

    // PACK-2: the fold of the occupancy map counts, at every level, the
    // distinct residues of the positions mod N/2^ℓ (the definition).
    proptest::proptest! {
        #[test]
        fn nodes_per_level_counts_distinct_residues(
            log_n in 0u32..=8,
            picks in proptest::collection::vec(0usize..1 << 8, 0..300),
        ) {
            let n = 1usize << log_n;
            let occupied: Vec<usize> = picks.iter().map(|p| p % n).collect();
            let want: Vec<u64> = (0..=log_n)
                .map(|l| {
                    let modulus = n >> l;
                    let residues: std::collections::BTreeSet<usize> =
                        occupied.iter().map(|p| p % modulus).collect();
                    residues.len() as u64
                })
                .collect();
            proptest::prop_assert_eq!(nodes_per_level(n, &occupied), want);
        }
    }

    // PACK-2: where leaves are grouped (PACK-8), a dense output drawing on
    // 128 sources that 16 outputs share (ResNet-18's output packs) pays
    // its share of their images and a rotate-add priced by the 32 MiB of
    // images its leaves read: ℓ* = 3, the fastest measured
    // (benches/README.md, "Leaves in groups"); the flat model charges
    // every output all 128 sources' images and picks 2. The price is 1
    // while the images fit L2 and grows with their bytes.
    #[test]
    fn shared_images_are_priced_at_their_share() {
        let n = 4096;
        let slots: Vec<Vec<ValueRef>> = (0..n).map(|i| vec![ValueRef::new(i % 128, i)]).collect();
        let sources: Vec<u32> = (0..128).collect();
        let uses = vec![16; 128];
        let grouped = LevelPrice {
            key_switch: 192,
            grouped: Some((n * 8, &uses)),
        };
        let flat = LevelPrice {
            key_switch: 192,
            grouped: None,
        };
        assert_eq!(choose_shared_levels(&slots, &sources, 0, 5, &grouped), 3);
        assert_eq!(choose_shared_levels(&slots, &sources, 0, 5, &flat), 2);
        assert_eq!(rotate_add_price(1 << 20), 1.0);
        assert_eq!(rotate_add_price(2 << 20), 1.0);
        assert!((rotate_add_price(16 << 20) - 2.05).abs() < 1e-9);
    }

    // PACK-2: a full output of one source at N = 8192 with 2.5 values per
    // slot (T = 20480 terms) shares 3 levels at the one-limb cost (192) and
    // 2 at the multi-limb one, whose key switch costs fewer rotate-adds:
    // going from 2 to 3 levels adds 4T rotate-adds and saves 1020 key
    // switches, worth it above 80 rotate-adds per key switch (from 3 to 4,
    // above 325).
    #[test]
    fn multi_limb_sets_share_fewer_levels_when_dense() {
        let n = 8192;
        let slots: Vec<Vec<ValueRef>> = (0..n)
            .map(|i| {
                (0..2 + i % 2)
                    .map(|k| ValueRef::new(0, (3 * i + k) % n))
                    .collect()
            })
            .collect();
        let b16 = Context::new(ParameterSet::shipped("b16").unwrap());
        let s16 = Context::new(ParameterSet::shipped("s16").unwrap());
        let one = key_switch_in_rotations(&b16);
        let multi = key_switch_in_rotations(&s16);
        assert_eq!((one, multi), (192, 64));
        let flat = |key_switch| LevelPrice {
            key_switch,
            grouped: None,
        };
        assert_eq!(choose_shared_levels(&slots, &[0], 0, 5, &flat(one)), 3);
        assert_eq!(choose_shared_levels(&slots, &[0], 0, 5, &flat(multi)), 2);
    }
}
