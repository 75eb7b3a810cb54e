//! The server's half of a round ([`RoundEvaluator`]): repack the upload,
//! evaluate the stage, shuffle, pack and sanitise, with the time each phase
//! took ([`RoundPhases`]).

use super::error::EngineError;
use super::stage::{CompiledModel, LinearStage, ReceivedUpload, Release, Shortcut};
use crate::extract::ValueRef;
use crate::pack::{PackSource, PackWork, Packer, Placement, SumPlacement};
use crate::protocol::client_steps::{output_stride, response_ciphertexts};
use crate::rlwe::{Ciphertext, Context, GaloisKeys, PublicKey};
use crate::rng::{Csprng, Seed128};
use crate::shuffle::{Permutation, SessionSeed};
use std::time::Instant;

/// Where the server's time in one round went, as
/// [`RoundEvaluator::evaluate`] measures it; kept out of every message.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundPhases {
    /// Repacking the upload into the stage's input layout, σ_(r−1)^(−1)
    /// folded in (and a projection shortcut's repack); 0 for a mat-vec
    /// stage that reads its upload as it arrived (ENG-10).
    pub repack_ms: f64,
    /// The stage's linear evaluation, its bias and any DP noise (and a
    /// projection shortcut's evaluation); for a stage that reads its
    /// upload directly, laying its weights out for σ_(r−1) too (ENG-10).
    pub linear_ms: f64,
    /// Shuffling the outputs with σ_r and packing them, residual operand
    /// included, into the response.
    pub pack_ms: f64,
    /// Re-randomising and flooding every response ciphertext (PRIV-1).
    pub sanitise_ms: f64,
    /// The repack's work (a projection shortcut's own repack included),
    /// counted: comparable across machines and runs, unlike its time.
    pub repack_work: PackWork,
    /// The output pack's work, counted.
    pub pack_work: PackWork,
}

impl RoundPhases {
    /// The four phases, summed.
    pub fn total_ms(&self) -> f64 {
        self.repack_ms + self.linear_ms + self.pack_ms + self.sanitise_ms
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &RoundPhases) {
        self.repack_ms += other.repack_ms;
        self.linear_ms += other.linear_ms;
        self.pack_ms += other.pack_ms;
        self.sanitise_ms += other.sanitise_ms;
        self.repack_work += other.repack_work;
        self.pack_work += other.pack_work;
    }
}

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The server's session material.
#[derive(Clone, Copy, Debug)]
pub struct ServerKeys<'a> {
    /// The client's packing Galois keys, for repacking and packing.
    pub galois: &'a GaloisKeys,
    /// The client's public key, for re-randomising responses (PRIV-1).
    pub public: &'a PublicKey,
}

/// Repacks an upload into `stage`'s input layout (the unshuffle), then
/// evaluates the stage and adds its bias; or, for a stage that reads its
/// upload directly (ENG-10), lays the weights out for the upload as it
/// arrived and evaluates them on it, with no repack.
/// The stage's outputs (bias added) and, when `keep_repack` (ENG-12), the
/// upload as the stage repacked it.
fn evaluate_stage(
    ctx: &Context,
    packer: &Packer<'_>,
    stage: &LinearStage,
    upload: &ReceivedUpload,
    phases: &mut RoundPhases,
    keep_repack: bool,
) -> Result<(Vec<Ciphertext>, Option<Vec<Ciphertext>>), EngineError> {
    let mut t = Instant::now();
    let mut kept = None;
    let mut outputs = match stage.encode_for_upload(ctx, upload) {
        // The per-round weight layout is part of the linear work.
        Some(encoded) => {
            let encoded = encoded?;
            encoded.evaluate(ctx, &upload.ciphertexts()[..encoded.input_ciphertexts()])
        }
        None => {
            let n = ctx.n();
            let sources: Vec<PackSource> =
                upload.ciphertexts().iter().map(PackSource::plain).collect();
            let placements: Vec<Placement> = stage
                .input_placements()
                .into_iter()
                .map(|(k, ct, coeff)| Placement {
                    value: upload.value(n, k),
                    output: ct,
                    position: coeff,
                })
                .collect();
            // PACK-9: a repack only this stage's product reads may keep,
            // off its multiples of s, the residues its interleave never
            // brings onto an output's (valuation ≥ ⌈log2 k⌉).
            let (mut repacked, work) = if keep_repack {
                packer.pack_with_work(&sources, &placements)?
            } else {
                let cleared = stage.interleave().next_power_of_two().trailing_zeros();
                packer
                    .clone()
                    .leaving_residues(stage.dilation(), cleared)
                    .pack_with_work(&sources, &placements)?
            };
            phases.repack_work += work;
            repacked.resize_with(stage.input_ciphertexts(), || ctx.zero_ciphertext());
            phases.repack_ms += elapsed_ms(t);
            t = Instant::now();
            let outputs = stage.encoded.evaluate(ctx, &repacked);
            kept = keep_repack.then_some(repacked);
            outputs
        }
    };
    for (ct, bias) in outputs.iter_mut().zip(&stage.bias) {
        ctx.add_plain(ct, bias);
    }
    phases.linear_ms += elapsed_ms(t);
    Ok((outputs, kept))
}

/// ENG-12: shortcut stage `sc` of round `round` evaluated, its bias added,
/// on round `operand`'s kept repack; refused when that was not kept (the
/// rounds did not run in order). Linear work.
fn evaluate_on_kept_repack(
    ctx: &Context,
    sc: &LinearStage,
    history: &[ReceivedUpload],
    round: usize,
    operand: usize,
    phases: &mut RoundPhases,
) -> Result<Vec<Ciphertext>, EngineError> {
    let repacked = history[operand]
        .repacked()
        .ok_or(EngineError::RepackNotKept { round, operand })?;
    let t = Instant::now();
    let mut out = sc.encoded.evaluate(ctx, repacked);
    for (ct, bias) in out.iter_mut().zip(&sc.bias) {
        ctx.add_plain(ct, bias);
    }
    phases.linear_ms += elapsed_ms(t);
    Ok(out)
}

/// The server's half of every round of one session: the context, the
/// client's keys, the compiled model, the session's seed (σ_r) and how
/// outputs are released, checked once when the evaluator is built (ENG-5,
/// DP-8).
pub struct RoundEvaluator<'a> {
    ctx: &'a Context,
    keys: ServerKeys<'a>,
    model: &'a CompiledModel,
    seed: &'a SessionSeed,
    release: Release<'a>,
}

impl std::fmt::Debug for RoundEvaluator<'_> {
    // The seed is a secret: name the model's rounds and the release only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RoundEvaluator({} rounds, {:?})",
            self.model.rounds(),
            self.release.unit
        )
    }
}

/// What one round returns to the server's driver.
#[derive(Debug)]
pub struct RoundOutput {
    /// The response: the packed, sanitised ciphertexts (PRIV-1), as many
    /// as [`response_ciphertexts`] says for the stage's outputs.
    pub ciphertexts: Vec<Ciphertext>,
    /// σ_r, the permutation the response's values are arranged by and the
    /// next upload will be; `None` after the last stage. A secret of the
    /// server's.
    pub shuffle: Option<Permutation>,
    /// Where the round's time went; measured around the computation, never
    /// part of the response.
    pub phases: RoundPhases,
}

impl<'a> RoundEvaluator<'a> {
    /// The evaluator of one session. Refuses a context of another set than
    /// the model's (ENG-5) and noise that could overflow the set's range
    /// (DP-8, [`CompiledModel::check_noise`]).
    pub fn new(
        ctx: &'a Context,
        keys: ServerKeys<'a>,
        model: &'a CompiledModel,
        seed: &'a SessionSeed,
        release: Release<'a>,
    ) -> Result<Self, EngineError> {
        model.check_context(ctx)?;
        model.check_noise(ctx, release.noise)?;
        Ok(Self {
            ctx,
            keys,
            model,
            seed,
            release,
        })
    }

    /// Round `r`: unshuffle (σ_(r−1)^(−1), folded into the repack, or into
    /// a mat-vec's weights: ENG-10),
    /// evaluate stage r, add its bias, any DP noise and any residual
    /// operand, shuffle with σ_r (none after the last stage), pack,
    /// sanitise. `history[j]` is upload j (`history.len() == r + 1`); the
    /// round keeps its repack in `history[r]` while a round from r on reads
    /// it for a shortcut (ENG-12), and drops the repacks of
    /// earlier rounds that no round from r on needs. Rounds run in order:
    /// a round whose shortcut's repack was never kept is refused
    /// ([`EngineError::RepackNotKept`]).
    ///
    /// The work runs on the caller's rayon pool, by default the global one
    /// shared by every session of the process (ENG-8, `src/par.rs`); the
    /// response depends only on the evaluator, the arguments and `rng`'s
    /// state, never on the number of threads.
    pub fn evaluate(
        &self,
        r: usize,
        history: &mut [ReceivedUpload],
        rng: &mut Csprng,
    ) -> Result<RoundOutput, EngineError> {
        let (ctx, keys, model, release, seed) =
            (self.ctx, self.keys, self.model, self.release, self.seed);
        let mut phases = RoundPhases::default();
        let n = ctx.n();
        let stage = model.stages.get(r).ok_or(EngineError::NoSuchRound {
            round: r,
            rounds: model.rounds(),
        })?;
        if history.len() != r + 1 {
            return Err(EngineError::HistoryLength {
                round: r,
                expected: r + 1,
                got: history.len(),
            });
        }
        // ENG-12: repacks that no round from this one on adds are dropped
        // (each was kept by an earlier round that succeeded).
        for (j, upload) in history[..r].iter_mut().enumerate() {
            if upload.repacked().is_some() && !model.repack_needed(j, r) {
                upload.keep_repacked(None);
            }
        }
        let packer = Packer::new(ctx, keys.galois);
        let keep = model.repack_needed(r, r);
        let (mut outputs, kept) =
            evaluate_stage(ctx, &packer, stage, &history[r], &mut phases, keep)?;
        history[r].keep_repacked(kept);
        if let Some(Shortcut::RepackedIdentity { round, stage: sc }) = &stage.shortcut {
            // The operand joins inside the linear layer (ENG-12): its
            // identity conv lands on this stage's output positions.
            let operand = evaluate_on_kept_repack(ctx, sc, history, r, *round, &mut phases)?;
            for (ct, x) in outputs.iter_mut().zip(&operand) {
                ct.add_assign(ctx.q(), x);
            }
        }
        let positions = stage.output_positions();
        let t = Instant::now();
        if let Some(noise) = release.noise {
            // DP-8: one independent sample per released value, before the
            // shuffle. A residual operand joins the same value in the pack, so
            // the noise covers the sum the client sees.
            let mut polys = vec![vec![0i64; n]; outputs.len()];
            for &(ct, c) in &positions {
                polys[ct][c] = noise.sample(rng);
            }
            for (ct, poly) in outputs.iter_mut().zip(&polys) {
                ctx.add_plain(ct, poly);
            }
        }
        phases.linear_ms += elapsed_ms(t);
        // The residual operand joins inside the output pack: its values are
        // extra terms of the same leaves (PACK-5).
        // `extra_refs[k]` is output k's residual operand (empty: no shortcut).
        let offset = outputs.len();
        let (extra, extra_refs): (Vec<Ciphertext>, Vec<ValueRef>) = match &stage.shortcut {
            None | Some(Shortcut::RepackedIdentity { .. }) => (Vec::new(), Vec::new()),
            Some(Shortcut::Identity { round }) => {
                let up = &history[*round];
                let refs = (0..positions.len())
                    .map(|k| {
                        let v = up.value(n, k);
                        ValueRef::new(offset + v.source as usize, v.coeff as usize)
                    })
                    .collect();
                (up.ciphertexts().to_vec(), refs)
            }
            Some(
                Shortcut::Conv { round, stage: sc } | Shortcut::RepackedConv { round, stage: sc },
            ) => {
                let out = if matches!(stage.shortcut, Some(Shortcut::RepackedConv { .. })) {
                    evaluate_on_kept_repack(ctx, sc, history, r, *round, &mut phases)?
                } else {
                    evaluate_stage(ctx, &packer, sc, &history[*round], &mut phases, false)?.0
                };
                let refs = sc
                    .output_positions()
                    .into_iter()
                    .map(|(ct, c)| ValueRef::new(offset + ct, c))
                    .collect();
                (out, refs)
            }
        };
        let t = Instant::now();
        let shuffle = if r + 1 == model.stages.len() {
            None
        } else {
            Some(seed.permutation(r as u64, positions.len(), stage.granularity(release.unit))?)
        };
        // Slot s receives true output σ^(−1)(s).
        let inverse = shuffle.as_ref().map(Permutation::inverse);
        let stride = output_stride(n, positions.len());
        let placements: Vec<SumPlacement> = (0..positions.len())
            .map(|slot| {
                let k = inverse.as_ref().map_or(slot, |p| p.image(slot));
                let (ct, c) = positions[k];
                let mut values = vec![ValueRef::new(ct, c)];
                if let Some(&residual) = extra_refs.get(k) {
                    values.push(residual);
                }
                SumPlacement {
                    values,
                    output: slot / n,
                    // Fewer values than a ciphertext holds go to every
                    // stride-th coefficient: empty upper tree nodes cost nothing.
                    position: (slot % n) * stride,
                }
            })
            .collect();
        let out_sources: Vec<PackSource> = outputs
            .iter()
            .chain(&extra)
            .map(PackSource::plain)
            .collect();
        let (mut packed, work) = match stage.stacked_rows() {
            // ENG-14: the final stage's rows already sit in their groups at
            // the response's coefficients, in true order, alone among the
            // multiples of S_g.
            Some(s) if s.stride() == stride && shuffle.is_none() && extra.is_empty() => {
                let (ct, work) = packer.trace_groups(&outputs, s.group_stride(), s.stride())?;
                (vec![ct], work)
            }
            _ => packer.pack_sums_with_work(&out_sources, &placements)?,
        };
        phases.pack_work = work;
        packed.resize_with(response_ciphertexts(n, positions.len()), || {
            ctx.zero_ciphertext()
        });
        phases.pack_ms += elapsed_ms(t);
        let t = Instant::now();
        // Sanitise each response ciphertext in parallel, each with a generator
        // of its own seeded from `rng` in order (ENG-8, src/par.rs): the result
        // does not depend on the number of threads.
        let seeds: zeroize::Zeroizing<Vec<Seed128>> =
            zeroize::Zeroizing::new(packed.iter().map(|_| rng.seed()).collect());
        crate::par::update(&mut packed, |i, ct| {
            let mut rng = Csprng::from_seed(seeds[i]);
            ctx.rerandomize(ct, keys.public, &mut rng);
            ctx.flood(ct, &mut rng);
        });
        phases.sanitise_ms += elapsed_ms(t);
        Ok(RoundOutput {
            ciphertexts: packed,
            shuffle,
            phases,
        })
    }
}
