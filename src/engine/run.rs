//! The in-process harness: one encrypted inference with both parties in
//! this process ([`run`], [`run_release`]), every message through its wire
//! encoding, each party's time measured ([`Inference`], [`RoundStats`]).
//! The oracle and benchmark the typed protocol is checked against.

use super::error::EngineError;
use super::round::{RoundEvaluator, ServerKeys};
use super::stage::{CompiledModel, ReceivedUpload, Release};
use crate::protocol::client_steps::{apply_client_ops, client_encrypt, client_values};
use crate::rlwe::{Ciphertext, Context, SecretKey};
use crate::rng::Csprng;
use crate::shuffle::{Permutation, SessionSeed, ShuffleUnit};
use crate::wire;
use std::time::Instant;

/// Per-round measurements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundStats {
    /// Client time in ms: encrypting and encoding the upload, then decoding,
    /// decrypting and applying the client steps to the response.
    pub client_ms: f64,
    /// Server time in ms: decoding the upload, the round
    /// ([`RoundEvaluator::evaluate`]) and encoding the response.
    pub server_ms: f64,
    /// Bytes of the encoded upload (seeded ciphertexts).
    pub up_bytes: usize,
    /// Bytes of the encoded response.
    pub down_bytes: usize,
}

/// The result of one encrypted inference.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference {
    /// The last stage's outputs after its client steps, in true order; equal
    /// to the plaintext reference bit for bit (ENG-1).
    pub logits: Vec<i64>,
    /// Measurements of each round, in order.
    pub rounds: Vec<RoundStats>,
    /// The values the client decrypted each round, as it saw them.
    pub client_views: Vec<Vec<i64>>,
}

/// Runs one encrypted inference (ENG-1); both parties' work, timed
/// separately, every message through the wire encoding. The client's
/// decrypted values are recorded as it saw them, shuffled by σ_r (ENG-2).
pub fn run(
    ctx: &Context,
    sk: &SecretKey,
    keys: ServerKeys<'_>,
    model: &CompiledModel,
    input: &[i64],
    unit: ShuffleUnit,
    seed: &SessionSeed,
) -> Result<Inference, EngineError> {
    run_release(ctx, sk, keys, model, input, unit.into(), seed)
}

/// [`run`] with the outputs released as `release` says (DP-8: with noise,
/// the logits are no longer the reference's).
pub fn run_release(
    ctx: &Context,
    sk: &SecretKey,
    keys: ServerKeys<'_>,
    model: &CompiledModel,
    input: &[i64],
    release: Release<'_>,
    seed: &SessionSeed,
) -> Result<Inference, EngineError> {
    model.check_context(ctx)?;
    model.check_input(input)?;
    let evaluator = RoundEvaluator::new(ctx, keys, model, seed, release)?;
    let mut client_rng = Csprng::from_os();
    let mut server_rng = Csprng::from_os();
    let mut rounds = Vec::new();
    let mut views = Vec::new();
    // What the client holds, in the order it holds it.
    let mut activations = input.to_vec();
    let mut previous: Option<Permutation> = None;
    let mut history: Vec<ReceivedUpload> = Vec::new();
    for r in 0..model.stages.len() {
        let mut stats = RoundStats::default();
        let t = Instant::now();
        let uploads: Vec<Vec<u8>> = client_encrypt(ctx, sk, &activations, &mut client_rng)
            .iter()
            .map(|c| wire::encode_seeded_ciphertext(ctx, c))
            .collect();
        stats.client_ms += t.elapsed().as_secs_f64() * 1e3;
        stats.up_bytes = uploads.iter().map(Vec::len).sum();

        let t = Instant::now();
        let received: Vec<Ciphertext> = crate::par::map(&uploads, |b| {
            wire::decode_seeded_ciphertext(ctx, b).map(|s| s.expand(ctx.q()))
        })
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(EngineError::Encoding)?;
        history.push(ReceivedUpload::new(received, previous.take()));
        let round = evaluator.evaluate(r, &mut history, &mut server_rng)?;
        let downloads: Vec<Vec<u8>> =
            crate::par::map(&round.ciphertexts, |c| wire::encode_ciphertext(ctx, c));
        stats.server_ms += t.elapsed().as_secs_f64() * 1e3;
        stats.down_bytes = downloads.iter().map(Vec::len).sum();

        let t = Instant::now();
        let responses: Vec<Ciphertext> = downloads
            .iter()
            .map(|b| wire::decode_ciphertext(ctx, b))
            .collect::<Result<_, _>>()
            .map_err(EngineError::Encoding)?;
        let mut values = client_values(ctx, sk, &responses, model.stages[r].output_len());
        views.push(values.clone());
        apply_client_ops(&model.client_ops[r], &mut values);
        stats.client_ms += t.elapsed().as_secs_f64() * 1e3;
        rounds.push(stats);
        activations = values;
        previous = round.shuffle;
    }
    Ok(Inference {
        logits: activations,
        rounds,
        client_views: views,
    })
}
