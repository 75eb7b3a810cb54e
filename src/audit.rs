//! The audit (spec/threat-model.md, AUDIT-1..AUDIT-9): chosen-input attacks
//! on the model, run as the client side of real sessions against a real
//! [`Endpoint`], over encoded messages, counting the sessions they use.
//!
//! The attacker knows the architecture (shapes, kernel sizes: the threat
//! model counts them as revealed to a probing client) and nothing of the
//! weights; the audit compares what it recovered with the model it was
//! given, up to the permutation the policy hides.
//!
//! Attacks in this version:
//! * **bias probe** (any granularity, one session for every stage at once):
//!   an all-zero upload at every round returns each stage's biases,
//!   shuffled; the client reads them as a multiset;
//! * **channel solve** (channel shuffling, a conv stage at round 0, one
//!   session): channel shuffling keeps each output channel's plane in
//!   spatial order, so one random input gives H_out·W_out exact linear
//!   equations per channel in its C_in·k_h·k_w + 1 unknowns, solved and
//!   checked exactly;
//! * **located slots** (channel shuffling, a later conv stage, one session):
//!   the attacker predicts each earlier round's planes from the stages it
//!   has recovered, matches the received planes to its own labels, and so
//!   places a chosen upload where it wants it; then as the channel solve;
//! * **d + 1 on the logits** (a mat-vec in the last round, whose outputs
//!   return unshuffled: the only stage, or behind recovered conv rounds
//!   under channel shuffling, through located slots): the base upload gives
//!   the bias, base + v·e_j gives column j, d + 1 sessions in all.
//!
//! * **blind d + 1** (AUDIT-6: a mat-vec in the last round behind rounds
//!   whose permutation the attacker does not know): an upload equal in
//!   every slot survives any unshuffle, so each session with one slot
//!   raised returns one column of unknown index; the multiset of columns
//!   takes about d·H_d sessions;
//! * **single-pixel probes** (AUDIT-7: element shuffling, a conv at round
//!   0): one pixel per input channel and offset class in three sessions
//!   with independent value triples, read as an exact cover, the kernels
//!   solved per bias; check images (one band per input channel, one pair
//!   region per input channel with channel 0, as many per session as the
//!   rows allow) tell apart and pair the kernels of
//!   channels that share a bias;
//! * **located pixel probes** (AUDIT-8: element shuffling, a conv at round
//!   r ≥ 1 whose earlier rounds were recovered): the server reads round
//!   r's upload in σ_(r−1)'s order, which each session learns by
//!   predicting: it uploads inputs of its choice at rounds 0..r − 1,
//!   predicts their outputs from the recovered stages and matches every
//!   received value to the position predicting it (round r − 1's input is
//!   chosen offline so that each probe pixel's position predicts a value of
//!   its own; tied positions get one common value). Round r is then probed
//!   as round 0, every session counted;
//! * **located d + 1** (AUDIT-9: element shuffling, a mat-vec in the last
//!   round behind rounds the audit recovered): each session locates one
//!   input slot of the logits' layer as the located probes do (round
//!   r − 1's input chosen so that the target position predicts a value of
//!   its own) and raises it alone, which gives one column at its position;
//!   the biases come from the bias probe, one position per folded pool
//!   window: d sessions for d columns. Behind a round recovered only in
//!   part, the open channels' columns are collected blind, each session
//!   raising a slot no recovered channel's prediction explains; the report
//!   says which columns came from which ([`ColumnSources`]). The audit runs
//!   it wherever it applies, the blind d + 1 elsewhere;
//!   with [`AuditOptions::batch`] = k it runs in sessions of k images
//!   (PROTO-11), one located column per image, each image one query;
//! * **malicious public key** (AUDIT-5, one session as a second identity):
//!   Δ/2 added to the key's body exposes the server's re-randomiser u in
//!   every coefficient of a response; the tool confirms the reading and
//!   stops there (no lattice reduction on the mask that remains).
//!
//! Under a policy with DP noise (DP-8) the bias probe, the channel solve
//! and d + 1 run and report their mean error instead of exact recovery.
//! The d + 1 attacks (AUDIT-6) then raise a slot by the widest step the
//! range allows, estimate each column as (reading − base)/v, keep every
//! estimate (two readings of one column differ, so none is merged) and
//! report the mean absolute error per weight against the nearest true
//! column with what σ alone predicts, 2σ/(v·√π) ([`NoisyColumns`]).
//! The pixel probes do not: their reading attributes each released value
//! to an output channel through exact coincidences (three values on one
//! line b + v·w through a bias, in three sessions shuffled apart), and
//! under noise those vanish, so the stage is reported as not attacked,
//! with the bias probe's error only. Nor do the located probes and the
//! located d + 1, whose slots are matched by exact value.
//!
//! Not yet here, and reported as such per stage: channel matching across
//! sessions for stages one session cannot solve, residual stages, a
//! reading of the pixel probes under DP noise, weight recovery after the
//! malicious-key attack.
//! (A noisy reading would need another way to attribute values to
//! channels: e.g. a probe value v small enough that each channel's
//! readings b_c + v·w stay nearer its own bias than any other's, then
//! each channel's weights at a probe's offsets estimated from repeated
//! sessions; that needs biases far apart next to v·|w| and the noise, which
//! the digits model's are not.)

use crate::engine::{CompiledModel, LinearStage};
use crate::layout::{conv2d_reference, Conv2dShape, MatVecShape};
use crate::model::Model;
use crate::protocol::client_steps;
use crate::protocol::{
    ClientId, Endpoint, ErrorKind, Policy, Response, ServerStep, SessionAccept, SessionRequest,
    Upload,
};
use crate::rlwe::{
    Ciphertext, Context, GaloisKeys, SecretKey, SeededCiphertext, SeededGaloisKey, SeededPublicKey,
};
use crate::rng::Csprng;
use crate::select::{self, Requirement};
use crate::shuffle::ShuffleUnit;
use std::sync::Arc;
use thiserror::Error;

/// Why the audit could not run at all.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuditError {
    /// No parameter set could be chosen for the model (none carries it, or
    /// the named set is unknown or too small): fix the model or the `set`.
    #[error(transparent)]
    Select(Box<select::SelectError>),
    /// A session failed for another reason than the budget (a refused
    /// message, an evaluation error, an undecodable response). The audit
    /// talks to an honest in-process endpoint, so this is a bug in the
    /// crate or the audit, not a finding about the model.
    #[error("the protocol failed during the audit: {0}")]
    Protocol(String),
    /// [`AuditOptions::batch`] asked for sessions of k images that the
    /// endpoint does not serve under this policy (k above the budget, the
    /// batch's noise or compile refused): choose a smaller k.
    #[error("sessions of {batch} images cannot be audited: {reason}")]
    BatchRefused {
        /// The images per session asked for.
        batch: usize,
        /// The endpoint's or the compiler's refusal.
        reason: String,
    },
}

impl From<select::SelectError> for AuditError {
    fn from(e: select::SelectError) -> Self {
        AuditError::Select(Box::new(e))
    }
}

/// Why a session of an attack ended early.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    Budget,
    Protocol(String),
}

/// The client side of real sessions against one endpoint, under one
/// identity (AUDIT-1).
struct Oracle<'e> {
    ctx: Arc<Context>,
    endpoint: &'e mut Endpoint,
    id: ClientId,
    sk: SecretKey,
    galois: Vec<SeededGaloisKey>,
    public: SeededPublicKey,
    rng: Csprng,
    sessions: u64,
    /// Images per session that [`open`](Self::open) asks for (PROTO-11).
    batch: u32,
    /// Queries charged: `batch` per session.
    queries: u64,
}

impl<'e> Oracle<'e> {
    fn new(ctx: Arc<Context>, endpoint: &'e mut Endpoint, id: ClientId) -> Self {
        let mut rng = Csprng::from_os();
        let sk = SecretKey::generate(&ctx, &mut rng);
        let galois = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
        let public = SeededPublicKey::generate(&ctx, &sk, &mut rng);
        Self {
            ctx,
            endpoint,
            id,
            sk,
            galois,
            public,
            rng,
            sessions: 0,
            batch: 1,
            queries: 0,
        }
    }

    /// Opens a session (charged to the identity's budget).
    fn open(&mut self) -> Result<Live, Stop> {
        let public = self.public.clone();
        self.open_with(public)
    }

    /// Opens a session that sends `public` as its public key: the honest
    /// one, or a malformed one (AUDIT-5).
    fn open_with(&mut self, public: SeededPublicKey) -> Result<Live, Stop> {
        let ctx = self.ctx.clone();
        let request = SessionRequest {
            batch: self.batch,
            galois: self.galois.clone(),
            public,
        };
        let request = SessionRequest::decode(&ctx, &request.encode(&ctx)).map_err(protocol)?;
        let (server, accept) = match self.endpoint.accept(&self.id, request) {
            Ok(pair) => pair,
            Err(e) if matches!(e.kind, ErrorKind::BudgetExhausted { .. }) => {
                return Err(Stop::Budget)
            }
            Err(e) => return Err(protocol(e)),
        };
        self.sessions += 1;
        self.queries += u64::from(self.batch);
        let accept = SessionAccept::decode(&ctx, &accept.encode(&ctx)).map_err(protocol)?;
        Ok(Live {
            server: Some(server),
            accept,
            round: 0,
        })
    }

    /// Uploads `values` (in the order the client holds them) for the
    /// session's next round and returns what the client decrypts. Every
    /// message goes through its wire encoding.
    fn step(&mut self, live: &mut Live, values: &[i64]) -> Result<Vec<i64>, Stop> {
        let r = live.round;
        let response = self.step_raw(live, values)?;
        let outputs = live.accept.rounds[r].outputs as usize;
        Ok(client_steps::client_values(
            &self.ctx, &self.sk, &response, outputs,
        ))
    }

    /// As [`Self::step`], returning the response's ciphertexts undecrypted.
    fn step_raw(&mut self, live: &mut Live, values: &[i64]) -> Result<Vec<Ciphertext>, Stop> {
        Ok(self.step_raw_with_upload(live, values)?.0)
    }

    /// As [`Self::step_raw`], with the upload's ciphertexts as sent (the
    /// client knows their masks: AUDIT-5's mask division).
    fn step_raw_with_upload(
        &mut self,
        live: &mut Live,
        values: &[i64],
    ) -> Result<(Vec<Ciphertext>, Vec<SeededCiphertext>), Stop> {
        let ctx = self.ctx.clone();
        let server = live
            .server
            .take()
            .ok_or_else(|| Stop::Protocol("the session is over".into()))?;
        let r = live.round;
        let upload = Upload {
            session: live.accept.session(),
            round: r as u32,
            ciphertexts: client_steps::client_encrypt(&ctx, &self.sk, values, &mut self.rng),
        };
        let upload = Upload::decode(&ctx, &upload.encode(&ctx)).map_err(protocol)?;
        // Kept seeded (seed and body); only AUDIT-5 expands the masks.
        let sent = upload.ciphertexts.clone();
        let (next, response) = match server.receive_upload(upload) {
            Ok(ServerStep::Continue(s, resp)) => (Some(s), resp),
            Ok(ServerStep::Closed(resp)) => (None, resp),
            Err(rejected) => return Err(protocol(rejected.error)),
        };
        live.server = next;
        live.round += 1;
        let response = Response::decode(&ctx, &response.encode(&ctx)).map_err(protocol)?;
        Ok((response.ciphertexts, sent))
    }

    /// One session with every upload fixed in advance.
    fn session(&mut self, uploads: &[Vec<i64>]) -> Result<Vec<Vec<i64>>, Stop> {
        let mut live = self.open()?;
        let mut seen = Vec::with_capacity(uploads.len());
        for values in uploads {
            seen.push(self.step(&mut live, values)?);
            if live.server.is_none() {
                break;
            }
        }
        Ok(seen)
    }
}

/// An open session: the server's state and the model's metadata.
struct Live {
    server: Option<crate::protocol::Server<crate::protocol::AwaitingUpload>>,
    accept: SessionAccept,
    round: usize,
}

fn protocol(e: crate::protocol::ProtocolError) -> Stop {
    Stop::Protocol(e.to_string())
}

/// How an attack on one stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything the attack targets was recovered exactly.
    Recovered,
    /// Some of it was recovered before the budget ran out.
    StoppedByBudget,
    /// The attack ran to the end, but noise (DP-8) kept its result from
    /// being exact: see the error figures.
    Approximate,
    /// Some of it was recovered, and the attack ended without a budget
    /// refusal: its own session cap, or readings that leave several
    /// solutions (see the note).
    Partial,
    /// The policy refused to serve the model at all (PROTO-6).
    RefusedByPolicy,
    /// This tool has no attack for this stage under this policy yet, or
    /// its attack could not start (AUDIT-4: such a stage is never
    /// reported as protected).
    NotAttacked,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Recovered => "recovered",
            Outcome::StoppedByBudget => "stopped by the budget",
            Outcome::Approximate => "approximate only (noise)",
            Outcome::Partial => "partly recovered",
            Outcome::RefusedByPolicy => "policy refuses to serve the model",
            Outcome::NotAttacked => "no attack in this tool yet",
        }
    }
}

/// What the audit found for one stage (AUDIT-2).
#[derive(Clone, Debug, PartialEq)]
pub struct StageReport {
    /// The stage's round (0-based).
    pub round: usize,
    /// The model layer the stage evaluates.
    pub layer: usize,
    /// What the stage computes: `"conv2d"`, `"linear"` or
    /// `"pool (public 0/1 weights)"`.
    pub kind: &'static str,
    /// The attack on the weights, and how it ended.
    pub attack: &'static str,
    /// How the weight attack ended.
    pub outcome: Outcome,
    /// Sessions the weight attack used.
    pub sessions: u64,
    /// Images per session of the weight attack (PROTO-11): 1, or the k of
    /// [`AuditOptions::batch`] for the located d + 1 run in sessions of k
    /// images; each image is one query of the budget.
    pub images_per_session: usize,
    /// (recovered exactly, total), up to the permutation the policy hides.
    pub weights: (usize, usize),
    /// (recovered exactly, total) biases of the layer, as a multiset: the
    /// bias probe returns each one, shuffled. Under DP noise, the
    /// estimates that round to their true bias.
    pub biases: (usize, usize),
    /// Under a noisy policy (DP-8), the mean absolute error per bias of
    /// the client's bias estimate from the bias probe: the received values
    /// sorted, and for a conv stage each run of H_out·W_out of them (one
    /// channel's copies, if the noise keeps the channels apart) averaged,
    /// against the true biases sorted; 0 when exact. [`biases`](Self::biases)
    /// then counts the estimates that round to their true bias.
    pub bias_error: Option<f64>,
    /// The weight attack's mean absolute error per weight, when it ran but
    /// noise kept it from exact recovery.
    pub weight_error: Option<f64>,
    /// For the d + 1 attacks on the logits behind element-shuffled rounds
    /// (AUDIT-6, AUDIT-9): which of the layer's columns came from where.
    pub columns: Option<ColumnSources>,
    /// For the d + 1 attacks on a mat-vec in the last round under a noisy
    /// policy (DP-8, AUDIT-6): the column estimates and their error.
    /// [`weight_error`](Self::weight_error) then holds the same mean error.
    pub noisy_columns: Option<NoisyColumns>,
    /// For a conv stage under a noisy policy (DP-8): the pixel probes of
    /// round 0 (AUDIT-10) or the blind probe of a later round (AUDIT-11),
    /// their weight estimates and error.
    /// [`weight_error`](Self::weight_error) then holds the same mean error.
    pub noisy_probes: Option<NoisyProbes>,
    /// Why the stage ended as it did (why no attack ran, why one stopped,
    /// the policy's refusal), in words; empty when there is nothing to add.
    pub note: String,
}

impl StageReport {
    /// Records AUDIT-6's column estimates under noise, their mean error
    /// standing as the stage's weight error.
    fn record_noisy(&mut self, noisy: NoisyColumns) {
        self.weight_error = Some(noisy.mean_abs_error);
        self.noisy_columns = Some(noisy);
    }
}

/// Where the exact columns of the logits' layer came from (AUDIT-9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColumnSources {
    /// The layer's columns (its input length).
    pub total: usize,
    /// Columns recovered exactly, each at its position, through a slot
    /// located by its predicted value (AUDIT-9).
    pub located: usize,
    /// Columns recovered exactly up to their order (AUDIT-6): a raised slot
    /// of unknown position; behind partly recovered rounds, the slots
    /// that could not be located.
    pub blind: usize,
    /// Sessions spent on the located columns (misses included: a session
    /// whose target value turned up in a slot an unrecovered channel also
    /// holds).
    pub located_sessions: u64,
    /// Sessions spent on the blind columns (a base session included).
    pub blind_sessions: u64,
}

/// AUDIT-6 under DP noise: what the d + 1 attacks' column readings are
/// worth. Each column session raises one slot by v and reads v·column plus
/// the difference of two independent noise draws (this session's and the
/// base session's), so the client's estimate of the column is
/// (reading − base)/v, real-valued, with an error per weight of variance
/// ≈ 2σ²/v² (DP-8's discrete Gaussian has variance at most σ²).
#[derive(Clone, Debug, PartialEq)]
pub struct NoisyColumns {
    /// σ of the policy's noise, in accumulator units (the logits' units).
    pub sigma: u32,
    /// The step v of the raised slot: the largest the declared input range
    /// allows (base its minimum, v its width).
    pub step: i64,
    /// Column estimates made: one per column session, none merged. Under
    /// noise two readings of one column differ, and the blind d + 1 does
    /// not de-duplicate them (nor stop at d distinct ones, which it can no
    /// longer tell): it runs to the budget or its session cap.
    pub estimates: usize,
    /// The distinct true columns that at least one estimate was matched
    /// to, of [`columns_total`](Self::columns_total).
    pub columns_covered: usize,
    /// The distinct columns of the layer (the blind d + 1's targets; the
    /// positions, for the d + 1 at known positions).
    pub columns_total: usize,
    /// Mean absolute error per weight of the estimates against the true
    /// column each is matched to.
    pub mean_abs_error: f64,
    /// What σ alone predicts for [`mean_abs_error`](Self::mean_abs_error):
    /// E|N₁ − N₀|/v = 2σ/(v·√π) ≈ 1.13·σ/v for the difference of two
    /// independent N(0, σ²) (the discrete Gaussian's is within a hair of
    /// it for σ ≥ 1).
    pub expected_error: f64,
    /// The mean |w| of the layer's distinct columns: the error of guessing
    /// 0 for every weight, for scale.
    pub zero_guess_error: f64,
    /// Whether each estimate was matched to the true column nearest to it
    /// (L1), i.e. through the audited model: the blind d + 1 does not know
    /// which column a session raised, so this is the auditor's
    /// measurement, not the attacker's knowledge, and a lower bound on the
    /// error against the column actually raised. `false` when the
    /// session's position is known (d + 1 on an unshuffled input).
    pub matched_by_model: bool,
}

/// AUDIT-10, AUDIT-11: a conv stage's weights read under DP noise. At round
/// 0 one session per input channel uploads v at one pixel and zeros
/// elsewhere (AUDIT-10); at a later round one session raises one slot of
/// the upload by v, which the server's unshuffle puts at a true position
/// the attacker does not know (AUDIT-11). The attacker knows from the shape
/// how many outputs T a pixel reaches at most, takes the T received values
/// farthest from b̄ (the mean of the bias probe's values at that round) and
/// estimates each weight as (value − b̄)/v. Element shuffling hides which
/// output each value came from, so the estimates are an unordered multiset,
/// compared with the weights the pixel reaches (zeros for outputs it does
/// not reach) in sorted order: for multisets of numbers the matching with
/// the least total error, the auditor's measurement, through the model.
#[derive(Clone, Debug, PartialEq)]
pub struct NoisyProbes {
    /// σ of the policy's noise, in accumulator units.
    pub sigma: u32,
    /// The probe value v: the value of largest magnitude the declared
    /// input range allows.
    pub step: i64,
    /// The probed pixel (row, column): at round 0 the first whose window
    /// reaches the most outputs; at a later round the auditor's match (see
    /// [`matched_by_model`](Self::matched_by_model)).
    pub pixel: (usize, usize),
    /// Input channels read, of [`channels_total`](Self::channels_total):
    /// at round 0 one session each, at a later round the channel the
    /// auditor matched the session's estimates to.
    pub channels_read: usize,
    /// The stage's input channels.
    pub channels_total: usize,
    /// Weight estimates made: T per session.
    pub estimates: usize,
    /// Estimates that round to the weight they are matched to.
    pub rounding_exact: usize,
    /// Mean absolute error per weight, estimates and reached weights
    /// matched in sorted order.
    pub mean_abs_error: f64,
    /// What σ alone predicts for a value read against a well-estimated
    /// bias: E|N(0, σ²)|/|v| = σ·√(2/π)/|v|.
    pub expected_error: f64,
    /// What reading against b̄ instead of each channel's own bias costs
    /// without noise: the mean over the reached outputs of |b_o − b̄|/|v|,
    /// b̄ the biases' mean (the auditor's figure, from the model).
    pub bias_offset_error: f64,
    /// The mean |w| of the reached weights: the error of guessing 0.
    pub zero_guess_error: f64,
    /// Whether the raised pixel was unknown to the attacker (AUDIT-11, a
    /// later round: the server's unshuffle placed it) and the auditor
    /// matched the estimates to the input pixel whose reached weights they
    /// are nearest to, through the model: a lower bound on the error
    /// against the pixel actually raised. [`pixel`](Self::pixel) is then
    /// that match.
    pub matched_by_model: bool,
}

/// The audit of one model under one policy (AUDIT-2).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditReport {
    /// The model's name.
    pub model: String,
    /// The policy's name.
    pub policy: String,
    /// The policy's shuffle granularity, which decides the attacks that
    /// apply.
    pub granularity: ShuffleUnit,
    /// The parameter set the model was served on.
    pub set: String,
    /// The policy's query budget per identity (PROTO-5): the attacks stop
    /// when it refuses a session.
    pub budget: u64,
    /// PROTO-6's cheapest stage: (queries, round).
    pub threshold: Option<(u64, usize)>,
    /// σ of the policy's DP noise (DP-8), `None` for a policy without.
    pub dp_sigma: Option<u32>,
    /// Sessions used by all attacks together, under one identity.
    pub sessions: u64,
    /// Queries (images) those sessions were charged: the sessions, plus
    /// k − 1 for each session of k images (PROTO-5, PROTO-11).
    pub queries: u64,
    /// Images per session asked for by [`AuditOptions::batch`] (1: none).
    pub batch: usize,
    /// One report per stage, in round order.
    pub stages: Vec<StageReport>,
    /// AUDIT-5: the malicious-public-key attack, run as a second identity;
    /// `None` when the policy refused to serve the model.
    pub malicious_key: Option<KeyAttack>,
}

/// AUDIT-5: what a client that sends a malformed public key learns (the key
/// is the one of its honest sessions with Δ/2 added to coefficient 0 of
/// the body, so the server's re-randomiser u adds u_i·Δ/2 to coefficient i
/// of every response).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyAttack {
    /// Sessions it used: one, under its own identity.
    pub sessions: u64,
    /// Whether the server accepted the malformed key (it does not check
    /// keys: spec/threat-model.md).
    pub accepted: bool,
    /// Coefficients of u read (all of every response ciphertext of round 0),
    /// and how many of them were 1.
    pub rerandomiser_bits: usize,
    /// How many of the coefficients read were 1; u is uniform binary, so
    /// about half of [`rerandomiser_bits`](Self::rerandomiser_bits).
    pub rerandomiser_ones: usize,
    /// Coefficients whose reading had at least Δ/8 of margin on each side.
    pub clear_readings: usize,
    /// Whether round 0's values, once u_i·Δ/2 is removed, equal what an
    /// honest session returns (as a multiset, since they are shuffled): the
    /// reading of u is then right. `None` under DP noise, which the values
    /// carry either way.
    pub values_confirmed: Option<bool>,
    /// The mask division (the attack that breaks an unsanitised single
    /// product: mask(response) = mask(upload)·w, so the quotient is the
    /// weights' polynomial): with u·a_pk taken out of each response's mask,
    /// the quotient by each upload ciphertext's mask, coefficients examined
    /// (N per pair of response and upload ciphertexts; 0 on multi-limb sets,
    /// where the tool does not divide). What is left of the mask still
    /// carries the re-randomiser's error e_a, which alone stops the
    /// division even for a single product.
    pub mask_quotient_coefficients: usize,
    /// Of those, the coefficients below 2^32 in magnitude: all N for a
    /// response linear in the upload's mask, about N·2^-31 for one that is
    /// not.
    pub mask_quotient_small: usize,
    /// What stopped the attack or what it leaves undone, in words.
    pub note: String,
}

/// Choices of [`audit_with`]; the default runs the cheapest attack that
/// applies to each stage, as [`audit`] does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditOptions {
    /// Attack the logits behind element-shuffled rounds with the blind
    /// d + 1 (AUDIT-6) even where the located d + 1 (AUDIT-9) applies:
    /// for measuring one against the other on the same model.
    pub blind_logits: bool,
    /// Run the pixel probes (AUDIT-7, AUDIT-8) without their check images:
    /// channels that share a bias then stay open. For measuring what the
    /// probes alone give, and what the next round's attack does behind
    /// open channels.
    pub skip_check_images: bool,
    /// Run the located d + 1 (AUDIT-9) in sessions of this many images
    /// (PROTO-11; 0 and 1: single images): each session locates and
    /// raises one column per image, so the layer takes k times fewer
    /// sessions for the same queries (`proofs/batching.md`). The endpoint
    /// then serves the model's batch of k beside it; every other attack
    /// opens single sessions.
    pub batch: usize,
}

impl AuditOptions {
    /// The default options with [`blind_logits`](Self::blind_logits) set.
    pub fn blind_logits() -> Self {
        AuditOptions {
            blind_logits: true,
            ..Self::default()
        }
    }

    /// The default options with
    /// [`skip_check_images`](Self::skip_check_images) set.
    pub fn without_check_images() -> Self {
        AuditOptions {
            skip_check_images: true,
            ..Self::default()
        }
    }

    /// The default options with [`batch`](Self::batch) = `k`.
    pub fn batched(k: usize) -> Self {
        AuditOptions {
            batch: k,
            ..Self::default()
        }
    }
}

/// AUDIT-1: runs every attack of this module against `model` served under
/// `policy` on the set `select` picks (or `set`), as one client identity.
pub fn audit(model: &Model, policy: Policy, set: Option<&str>) -> Result<AuditReport, AuditError> {
    audit_with(model, policy, set, AuditOptions::default())
}

/// [`audit`], with a choice of attacks.
pub fn audit_with(
    model: &Model,
    policy: Policy,
    set: Option<&str>,
    options: AuditOptions,
) -> Result<AuditReport, AuditError> {
    let requirement = Requirement::of(&policy);
    let selection = select::select(model, requirement, set)?;
    let ctx = Arc::new(selection.context);
    let compiled = Arc::new(selection.model);
    let unit = policy.unit();
    let policy_noise = policy.noise().is_some();
    let mut report = AuditReport {
        model: model.name().to_owned(),
        policy: policy.name().to_owned(),
        granularity: unit,
        set: ctx.params().name().to_owned(),
        budget: policy.query_budget(),
        threshold: policy.attack_threshold(&compiled),
        dp_sigma: policy.dp_sigma(),
        sessions: 0,
        queries: 0,
        batch: options.batch.max(1),
        malicious_key: None,
        stages: compiled
            .stages()
            .iter()
            .enumerate()
            .map(|(r, s)| StageReport {
                round: r,
                layer: compiled.stage_layers()[r],
                kind: if s.has_public_weights() {
                    "pool (public 0/1 weights)"
                } else if s.conv_shape().is_some() {
                    "conv2d"
                } else {
                    "linear"
                },
                attack: "none",
                outcome: Outcome::NotAttacked,
                sessions: 0,
                images_per_session: 1,
                weights: (0, layer_counts(model, compiled.stage_layers()[r], s).0),
                biases: (0, layer_counts(model, compiled.stage_layers()[r], s).1),
                bias_error: None,
                weight_error: None,
                columns: None,
                noisy_columns: None,
                noisy_probes: None,
                note: String::new(),
            })
            .collect(),
    };
    let mut endpoint = match Endpoint::new(ctx.clone(), compiled.clone(), policy) {
        Ok(e) => e,
        Err(e) => {
            for s in &mut report.stages {
                s.outcome = Outcome::RefusedByPolicy;
                s.note = e.to_string();
            }
            return Ok(report);
        }
    };
    let batched = match options.batch {
        0 | 1 => None,
        k => {
            let refused = |reason: String| AuditError::BatchRefused { batch: k, reason };
            let batch =
                crate::engine::compile_batch(&ctx, model, k).map_err(|e| refused(e.to_string()))?;
            let batch = Arc::new(batch);
            endpoint = endpoint
                .with_batch(batch.clone())
                .map_err(|e| refused(e.to_string()))?;
            Some(batch)
        }
    };
    let mut oracle = Oracle::new(ctx.clone(), &mut endpoint, ClientId("auditor".into()));
    let base = bias_probe(&mut oracle, &compiled, &mut report)?;
    let mut known: Vec<Option<Known>> = vec![None; compiled.rounds()];
    let mut partial: Vec<Option<Known>> = vec![None; compiled.rounds()];
    for r in 0..compiled.rounds() {
        let base_r = base.as_ref().and_then(|b| b.get(r)).map(Vec::as_slice);
        weight_attack(
            &mut oracle,
            (&compiled, batched.as_deref()),
            model,
            r,
            base_r,
            &mut known,
            &mut partial,
            options,
            &mut report,
        )?;
    }
    report.sessions = oracle.sessions;
    report.queries = oracle.queries;
    let noisy = policy_noise;
    let mut second = Oracle::new(ctx.clone(), &mut endpoint, ClientId("auditor-key".into()));
    report.malicious_key = Some(malicious_key(&mut second, &compiled, noisy)?);
    Ok(report)
}

/// (weights, biases) of the model layer a stage evaluates: the model's own
/// counts, not the folded stage's; none for a public-weight stage.
fn layer_counts(model: &Model, layer: usize, stage: &LinearStage) -> (usize, usize) {
    if stage.has_public_weights() {
        return (0, 0);
    }
    let l = &model.layers()[layer];
    let weights = l.weight_count();
    (weights, l.parameter_count() - weights)
}

/// AUDIT-3 (bias probe): zeros at every round, one session; each stage's
/// outputs are then its biases (plus a projection shortcut's), shuffled.
fn bias_probe(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    report: &mut AuditReport,
) -> Result<Option<Vec<Vec<i64>>>, AuditError> {
    let uploads: Vec<Vec<i64>> = model
        .stages()
        .iter()
        .map(|s| vec![0; s.input_len()])
        .collect();
    let seen = match oracle.session(&uploads) {
        Ok(seen) => seen,
        Err(Stop::Budget) => return Ok(None),
        Err(Stop::Protocol(e)) => return Err(AuditError::Protocol(e)),
    };
    for (r, values) in seen.iter().enumerate() {
        if model.stages()[r].has_public_weights() {
            continue;
        }
        let mut got = values.clone();
        let mut want = model
            .stage_reference(r, &uploads)
            .map_err(|e| AuditError::Protocol(e.to_string()))?;
        got.sort_unstable();
        want.sort_unstable();
        // A conv stage releases each channel's bias once per output
        // position: the client's estimate of the sorted biases is the mean
        // of each run of that many sorted values (under DP noise, each
        // copy carries its own noise); a mat-vec releases each bias once.
        let copies = model.stages()[r]
            .conv_shape()
            .map_or(1, |s| plane(&s))
            .max(1);
        let (mut exact, mut error, mut runs) = (0usize, 0f64, 0usize);
        for (g, w) in got.chunks(copies).zip(want.chunks(copies)) {
            let estimate = g.iter().sum::<i64>() as f64 / g.len() as f64;
            let truth = w.iter().sum::<i64>() as f64 / w.len() as f64;
            error += (estimate - truth).abs();
            exact += usize::from(w.iter().all(|&v| v == w[0]) && estimate.round() as i64 == w[0]);
            runs += 1;
        }
        let stage = &mut report.stages[r];
        stage.biases.0 = if got == want {
            stage.biases.1
        } else {
            exact.min(stage.biases.1)
        };
        stage.bias_error = Some(error / runs.max(1) as f64);
    }
    Ok(Some(seen))
}

/// AUDIT-5 (malicious public key): one session with Δ/2 added to the
/// public key's body, an all-zero upload at round 0, and the response read
/// at twice the plaintext resolution: phase = Δ·y_i + u_i·Δ/2 + noise, so
/// round(phase/(Δ/2)) = 2y_i + u_i while the noise (flooding included) stays
/// below Δ/4. With u known the client strips u·a_pk from the mask, leaving
/// the unsanitised mask plus the re-randomiser's small error: this tool
/// stops there. That mask is not an RLWE sample in the weights: the pack
/// tree adds, at every node, a key switch whose gadget digits are not
/// linear in its input, so the weights' linear part sits under terms that
/// look uniform mod q (spec/threat-model.md).
fn malicious_key(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    noisy: bool,
) -> Result<KeyAttack, AuditError> {
    let ctx = oracle.ctx.clone();
    let q = ctx.q();
    let t = 1u128 << ctx.params().plaintext_bits();
    let half_delta = q.value() / (2 * t);
    let n = ctx.n();
    let mut public = oracle.public.clone();
    let b0 = q.add(q.coefficient(&public.b, n, 0), half_delta);
    q.set_coefficient(&mut public.b, n, 0, b0);
    let mut attack = KeyAttack {
        sessions: 0,
        accepted: false,
        rerandomiser_bits: 0,
        rerandomiser_ones: 0,
        clear_readings: 0,
        values_confirmed: None,
        mask_quotient_coefficients: 0,
        mask_quotient_small: 0,
        note: String::new(),
    };
    let pk = public.expand(&ctx);
    let mut live = match oracle.open_with(public) {
        Ok(live) => live,
        Err(Stop::Budget) => {
            attack.note = "the budget refused the session".into();
            return Ok(attack);
        }
        Err(Stop::Protocol(e)) => {
            attack.note = format!("the server refused the key: {e}");
            return Ok(attack);
        }
    };
    attack.sessions = oracle.sessions;
    attack.accepted = true;
    let upload = vec![0; model.stages()[0].input_len()];
    let (response, sent) = oracle
        .step_raw_with_upload(&mut live, &upload)
        .map_err(|e| AuditError::Protocol(format!("{e:?}")))?;
    let sent: Vec<Ciphertext> = sent.iter().map(|c| c.expand(ctx.q())).collect();
    let d = half_delta as i128;
    let mut corrected = Vec::with_capacity(response.len());
    for ct in &response {
        let (a, b) = ct.parts();
        let mut b = b.to_vec();
        let mut u = vec![0u64; n];
        for (i, &x) in ctx.phase_centered(&oracle.sk, ct).iter().enumerate() {
            let v = (2 * x + d).div_euclid(2 * d);
            attack.rerandomiser_bits += 1;
            if (x - v * d).abs() < d / 4 {
                attack.clear_readings += 1;
            }
            if v.rem_euclid(2) == 1 {
                attack.rerandomiser_ones += 1;
                u[i] = 1;
                let bi = q.sub(q.coefficient(&b, n, i), half_delta);
                q.set_coefficient(&mut b, n, i, bi);
            }
        }
        if let Some(stripped) = strip_rerandomiser(&ctx, a, &u, &pk) {
            for up in &sent {
                attack.mask_quotient_coefficients += n;
                attack.mask_quotient_small +=
                    mask_quotient_small(&ctx, &stripped, up.parts().0).unwrap_or(0);
            }
        }
        corrected.push(
            Ciphertext::from_parts(a.to_vec(), b, ctx.n(), q).ok_or_else(|| {
                AuditError::Protocol("a response coefficient is out of range".into())
            })?,
        );
    }
    if !noisy {
        let outputs = live.accept.rounds[0].outputs as usize;
        let mut got = client_steps::client_values(&ctx, &oracle.sk, &corrected, outputs);
        let mut want = model
            .stage_reference(0, &[upload])
            .map_err(|e| AuditError::Protocol(e.to_string()))?;
        got.sort_unstable();
        want.sort_unstable();
        attack.values_confirmed = Some(got == want);
    }
    attack.note = format!(
        "weights not recovered by this tool: with u known the mask is the unsanitised mask plus the re-randomiser's error e_a (|e_a| ≤ 16); divided by the upload's mask it gives {} small coefficients of {} (an unsanitised single product gives all of them): e_a alone makes even a single product's mask an RLWE sample in the weights, and after the pack tree's key switches the mask is not linear in them; no other attack on it is known to this tool, and no protection against malicious keys is claimed (spec/threat-model.md)",
        attack.mask_quotient_small, attack.mask_quotient_coefficients
    );
    Ok(attack)
}

/// AUDIT-5: a response's mask `a` without the re-randomiser's u·a_pk (u
/// read off the response, a_pk the client's own public mask), computed as
/// `Context::rerandomize` adds it. `None` on multi-limb sets.
fn strip_rerandomiser(
    ctx: &Context,
    a: &[u64],
    u: &[u64],
    pk: &crate::rlwe::PublicKey,
) -> Option<Vec<u64>> {
    let q = ctx.q().single_limb()?;
    let mut u_ntt = u.to_vec();
    ctx.ntt_q.forward(&mut u_ntt);
    let prod = ctx.times_public_key_part(&u_ntt, &pk.a_ntt);
    Some(a.iter().zip(&prod).map(|(&x, &p)| q.sub(x, p)).collect())
}

/// AUDIT-5's mask division: the coefficients of `response_mask` /
/// `upload_mask` in the ring (one-limb sets) whose centred value is below
/// 2^32 in magnitude. `None` when the upload's mask is not invertible or
/// the set has several limbs.
fn mask_quotient_small(ctx: &Context, response_mask: &[u64], upload_mask: &[u64]) -> Option<usize> {
    let q = ctx.q().single_limb()?;
    let (mut r, mut a) = (response_mask.to_vec(), upload_mask.to_vec());
    ctx.ntt_q.forward(&mut r);
    ctx.ntt_q.forward(&mut a);
    for (ri, &ai) in r.iter_mut().zip(&a) {
        *ri = q.mul(*ri, q.inv(ai)?);
    }
    ctx.ntt_q.backward(&mut r);
    Some(
        r.iter()
            .filter(|&&x| q.centered(x).unsigned_abs() < 1 << 32)
            .count(),
    )
}

/// The weight attack that applies to stage `r`, if any. `models`: the
/// compiled model, and its batch when the audit asks for sessions of
/// several images.
#[allow(clippy::too_many_arguments)]
fn weight_attack(
    oracle: &mut Oracle<'_>,
    (model, batched): (&CompiledModel, Option<&CompiledModel>),
    source: &Model,
    r: usize,
    base: Option<&[i64]>,
    known: &mut [Option<Known>],
    partial: &mut [Option<Known>],
    options: AuditOptions,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let stage = &model.stages()[r];
    let unit = report.granularity;
    let sigma = report.dp_sigma;
    let entry = &mut report.stages[r];
    if stage.has_public_weights() {
        entry.note = "fixed 0/1 weights: nothing to recover".into();
        let previous: Vec<usize> = match r {
            0 => (0..stage.conv_shape().map_or(0, |s| s.in_channels)).collect(),
            _ => known[r - 1]
                .as_ref()
                .map(|k| k.truth.clone())
                .unwrap_or_default(),
        };
        if r == 0 || known[r - 1].is_some() {
            known[r] = known_public(stage, &previous);
        }
        return Ok(());
    }
    if stage.shortcut().is_some() {
        entry.note = "residual stage: not attacked by this tool yet".into();
        return Ok(());
    }
    let spec = *source.input();
    match (stage.conv_shape(), unit) {
        (Some(_), ShuffleUnit::Channel) => channel_chain(oracle, model, spec, r, known, entry),
        (None, _) if r + 1 == model.rounds() && (r == 0 || unit == ShuffleUnit::Channel) => {
            d_plus_one(oracle, model, spec, r, known, sigma, entry)
        }
        (Some(_), ShuffleUnit::Element) => match (base, sigma) {
            (Some(base), Some(sigma)) => noisy_probes(oracle, model, spec, r, base, sigma, entry),
            (Some(base), _) => pixel_probes(
                oracle,
                model,
                spec,
                r,
                base,
                (known, partial),
                !options.skip_check_images,
                entry,
            ),
            (None, _) => {
                entry.note =
                    "the bias probe did not run (budget): nothing to align the probes with".into();
                Ok(())
            }
        },
        (None, _) if r + 1 == model.rounds() => {
            // AUDIT-9 when round r − 1's slots can be located, at least for
            // the channels recovered (every earlier round recovered whole):
            // cheaper than the blind d + 1, whose columns arrive at random.
            let behind = r
                .checked_sub(1)
                .filter(|&p| !options.blind_logits && (0..p).all(|k| known[k].is_some()))
                .and_then(|p| match (&known[p], &partial[p]) {
                    (Some(k), _) => Some((k, true)),
                    (None, Some(k)) => Some((k, false)),
                    (None, None) => None,
                });
            match behind {
                Some((last, complete)) => {
                    let located = Located {
                        last,
                        complete,
                        base,
                    };
                    match batched {
                        Some(batched) if complete && sigma.is_none() && base.is_some() => {
                            let models = (model, batched);
                            located_columns_batched(oracle, models, spec, r, known, located, entry)
                        }
                        _ => located_columns(oracle, model, spec, r, known, located, sigma, entry),
                    }
                }
                None => blind_columns(oracle, model, spec, r, base, sigma, entry),
            }
        }
        (None, _) if r > 0 => {
            entry.note = "shuffled mat-vec behind element-shuffled rounds: needs the alignment attack, not in this tool yet".into();
            Ok(())
        }
        (None, _) => {
            entry.note =
                "shuffled mat-vec: needs the alignment attack, not in this tool yet".into();
            Ok(())
        }
    }
}

/// What the attacker holds of a conv stage it has recovered (or whose
/// weights are public), in its own channel labels: output label o' is the
/// order in which the plane arrived when it was recovered, input labels are
/// the previous stage's output labels.
#[derive(Clone, Debug)]
struct Known {
    shape: Conv2dShape,
    /// OIHW over labels.
    weights: Vec<i64>,
    /// Per output label.
    bias: Vec<i64>,
    /// Output label → the true output channel (the audit's bookkeeping,
    /// not the attacker's knowledge).
    truth: Vec<usize>,
}

impl Known {
    /// The same stage for sessions of `k` images (ENG-15): k·C_in → k·C_out
    /// channels with these weights in the k diagonal blocks, biases and
    /// labels repeated per image (image i's label o is i·C_out + o), so
    /// that it predicts the batched model's stage on the images' inputs
    /// laid one after another.
    fn batched(&self, k: usize) -> Known {
        let s = self.shape;
        let (o, c) = (s.out_channels, s.in_channels);
        let kernel = s.kernel_height * s.kernel_width;
        let mut weights = vec![0i64; k * o * k * c * kernel];
        for image in 0..k {
            for out in 0..o {
                for input in 0..c {
                    let from = (out * c + input) * kernel;
                    let to = ((image * o + out) * k * c + image * c + input) * kernel;
                    weights[to..to + kernel].copy_from_slice(&self.weights[from..from + kernel]);
                }
            }
        }
        Known {
            shape: Conv2dShape {
                in_channels: k * c,
                out_channels: k * o,
                ..s
            },
            weights,
            bias: self.bias.repeat(k),
            truth: (0..k)
                .flat_map(|image| self.truth.iter().map(move |t| image * o + t))
                .collect(),
        }
    }

    /// The recovered stage's outputs (bias added, label order) for input
    /// `x`; `None` if `x` does not fit its shape.
    fn predict(&self, x: &[i64]) -> Option<Vec<i64>> {
        let mut y = conv2d_reference(&self.shape, x, &self.weights).ok()?;
        for (o, block) in y.chunks_mut(plane(&self.shape)).enumerate() {
            block.iter_mut().for_each(|v| *v += self.bias[o]);
        }
        Some(y)
    }
}

/// The weights of a public (0/1 pool) stage: channel c to channel c, so
/// labels carry over from input to output.
fn known_public(stage: &LinearStage, previous: &[usize]) -> Option<Known> {
    let shape = stage.conv_shape()?;
    Some(Known {
        shape,
        weights: stage.weights_and_bias().0.to_vec(),
        bias: vec![0; shape.out_channels],
        truth: previous.to_vec(),
    })
}

/// Output positions per channel of a conv stage (its shape was validated
/// when the stage was compiled).
fn plane(shape: &Conv2dShape) -> usize {
    shape.output_height().unwrap_or(0) * shape.output_width().unwrap_or(0)
}

/// AUDIT-3 (channel solve, and later stages through located slots): under
/// channel shuffling each output channel's plane arrives whole. In one
/// session the attacker uploads random values at every round; at each
/// round before `r` it predicts the output planes from the stages it has
/// recovered and matches the received planes to its labels, which locates
/// the slots of the next upload; at round `r` it solves one exact linear
/// system per received plane in that channel's kernel and bias.
fn channel_chain(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    known: &mut [Option<Known>],
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    entry.attack = if r == 0 {
        "channel solve"
    } else {
        "located slots"
    };
    let stages = model.stages();
    let Some(shape) = stages[r].conv_shape() else {
        entry.note = "not a conv stage".into();
        return Ok(());
    };
    if let Some(k) = (0..r).find(|&k| known[k].is_none()) {
        entry.note =
            format!("round {k} was not recovered, so the slots of round {r} cannot be located");
        return Ok(());
    }
    let out_plane = plane(&shape);
    let taps = shape.in_channels * shape.kernel_height * shape.kernel_width;
    if out_plane < taps + 1 {
        entry.note = format!(
            "one query gives {out_plane} equations per channel for {} unknowns: needs channel matching across sessions, not in this tool yet",
            taps + 1
        );
        return Ok(());
    }
    let (mut live, slots, range) = match advance(oracle, model, spec, r, known)? {
        Advanced::Ready { live, slots, range } => (live, slots, range),
        Advanced::Budget => {
            entry.outcome = Outcome::StoppedByBudget;
            return Ok(());
        }
        Advanced::Lost(why) => {
            entry.note = why;
            return Ok(());
        }
    };
    entry.sessions = 1;
    let in_plane = shape.in_height * shape.in_width;
    let chosen = random_values(shape.in_channels * in_plane, range);
    let seen = step(
        oracle,
        &mut live,
        &arrange(&chosen, slots.as_deref(), in_plane),
    )?;
    // The design matrix of round r: one row per output position.
    let (h, w) = (shape.in_height, shape.in_width);
    let at = |c: usize, y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y as usize >= h || x as usize >= w {
            0.0
        } else {
            chosen[(c * h + y as usize) * w + x as usize] as f64
        }
    };
    let out_w = shape.output_width().unwrap_or(1).max(1);
    let rows: Vec<Vec<f64>> = (0..out_plane)
        .map(|p| {
            let (i, j) = (p / out_w, p % out_w);
            let mut row = Vec::with_capacity(taps + 1);
            for c in 0..shape.in_channels {
                for k in 0..shape.kernel_height {
                    for l in 0..shape.kernel_width {
                        let y = (i * shape.stride + k) as isize - shape.padding as isize;
                        let x = (j * shape.stride + l) as isize - shape.padding as isize;
                        row.push(at(c, y, x));
                    }
                }
            }
            row.push(1.0);
            row
        })
        .collect();
    // Input label → true input channel.
    let previous: Vec<usize> = match r {
        0 => (0..shape.in_channels).collect(),
        _ => known[r - 1].as_ref().expect("checked above").truth.clone(),
    };
    let (true_w, true_b) = stages[r].weights_and_bias();
    let kk = shape.kernel_height * shape.kernel_width;
    let mut recovered = Known {
        shape,
        weights: Vec::with_capacity(shape.out_channels * taps),
        bias: Vec::with_capacity(shape.out_channels),
        truth: Vec::with_capacity(shape.out_channels),
    };
    let (mut exact_channels, mut abs_error) = (0usize, 0f64);
    for block in seen.chunks(out_plane) {
        let Some((theta, exact)) = least_squares_integer(&rows, block) else {
            entry.note = "a channel's system was singular".into();
            return Ok(());
        };
        // The audit's check: the true channel closest to the solution, its
        // input channels taken through the labels.
        let distance = |o: usize| -> u64 {
            let mut d = true_b[o * out_plane].abs_diff(theta[taps]);
            for (label, &c) in previous.iter().enumerate() {
                for t in 0..kk {
                    d += true_w[(o * shape.in_channels + c) * kk + t]
                        .abs_diff(theta[label * kk + t]);
                }
            }
            d
        };
        let best = (0..shape.out_channels)
            .min_by_key(|&o| distance(o))
            .unwrap_or(0);
        let d = distance(best);
        exact_channels += usize::from(exact && d == 0);
        abs_error += d as f64;
        recovered.weights.extend_from_slice(&theta[..taps]);
        recovered.bias.push(theta[taps]);
        recovered.truth.push(best);
    }
    if abs_error > 0.0 {
        entry.weight_error = Some(abs_error / ((taps + 1) * shape.out_channels) as f64);
    }
    entry.weights.0 = exact_channels * taps;
    entry.outcome = if exact_channels == shape.out_channels {
        Outcome::Recovered
    } else {
        Outcome::Approximate
    };
    entry.note = format!(
        "{exact_channels} of {} channels' kernels and biases exact from one session{}",
        shape.out_channels,
        if r > 0 {
            " (slots located through the recovered rounds)"
        } else {
            ""
        }
    );
    known[r] = Some(recovered);
    Ok(())
}

/// A session brought to round `r` with the slots of its upload located.
enum Advanced {
    Ready {
        live: Box<Live>,
        /// Slot block → label for round r's upload (`None` at round 0).
        slots: Option<Vec<usize>>,
        /// The range the round-r upload is drawn from.
        range: (i64, i64),
    },
    Budget,
    Lost(String),
}

/// Opens a session and plays rounds 0..r with random uploads, locating
/// each round's output planes through the recovered stages (`known`).
fn advance(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    known: &[Option<Known>],
) -> Result<Advanced, AuditError> {
    let mut live = match oracle.open() {
        Ok(live) => live,
        Err(Stop::Budget) => return Ok(Advanced::Budget),
        Err(Stop::Protocol(e)) => return Err(AuditError::Protocol(e)),
    };
    let ranges = upload_ranges(model, spec, r);
    let mut slots: Option<Vec<usize>> = None;
    for (k, kn) in known.iter().enumerate().take(r) {
        let Some(kn) = kn.as_ref() else {
            return Ok(Advanced::Lost(format!(
                "round {k} was not recovered, so later slots cannot be located"
            )));
        };
        let in_plane = kn.shape.in_height * kn.shape.in_width;
        let chosen = random_values(kn.shape.in_channels * in_plane, ranges[k]);
        let seen = step(
            oracle,
            &mut live,
            &arrange(&chosen, slots.as_deref(), in_plane),
        )?;
        let Some(m) = locate(&seen, kn, &chosen) else {
            return Ok(Advanced::Lost(format!(
                "round {k}'s planes could not be matched to the recovered stage (equal or unexpected planes)"
            )));
        };
        slots = Some(m);
    }
    Ok(Advanced::Ready {
        live: Box::new(live),
        slots,
        range: ranges[r],
    })
}

/// The range each round's upload is drawn from, rounds 0..=r: the model
/// input, then the clamp of the latest requantisation among the client
/// steps after the previous round (unchanged when there is none).
fn upload_ranges(
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
) -> Vec<(i64, i64)> {
    let mut ranges = vec![(spec.min, spec.max)];
    for ops in &model.client_ops()[..r] {
        let last = ranges[ranges.len() - 1];
        ranges.push(
            match ops
                .iter()
                .rev()
                .find(|op| matches!(op, crate::engine::ClientOp::Requantize { .. }))
            {
                Some(crate::engine::ClientOp::Requantize { min, max, .. }) => (*min, *max),
                _ => last,
            },
        );
    }
    ranges
}

/// The base value and step of a d + 1 probe in `range`: base 0 when the
/// range holds it, else its minimum; the step is the largest the range
/// allows (0 when the range holds one value).
fn probe_step((lo, hi): (i64, i64)) -> (i64, i64) {
    if lo <= 0 && 0 <= hi {
        (0, if hi != 0 { hi } else { lo })
    } else {
        (lo, hi - lo)
    }
}

/// The base and step of a d + 1 probe under DP noise (AUDIT-6): the
/// reading is v·column plus noise whose size does not depend on v, so the
/// base is the range's minimum and v its whole width, the largest step the
/// declared range allows (the same as [`probe_step`] when the range starts
/// at 0, as a requantisation clamp's does).
fn noisy_probe_step((lo, hi): (i64, i64)) -> (i64, i64) {
    (lo, hi - lo)
}

/// The d + 1 attacks' base and step: [`noisy_probe_step`] under DP noise
/// of σ = `sigma`, else [`probe_step`].
fn column_probe_step(range: (i64, i64), sigma: Option<u32>) -> (i64, i64) {
    match sigma {
        Some(_) => noisy_probe_step(range),
        None => probe_step(range),
    }
}

/// The columns of a mat-vec's row-major weights `w`, in column order.
fn matvec_columns(w: &[i64], shape: &MatVecShape) -> Vec<Vec<i64>> {
    (0..shape.cols)
        .map(|j| (0..shape.rows).map(|i| w[i * shape.cols + j]).collect())
        .collect()
}

/// AUDIT-6 under DP noise: the column estimates' error. Each estimate is
/// (reading − base)/v, with the index of its true column among `truth`
/// when the session's position is known, or `None` when it is not (the
/// blind d + 1): it is then matched to the column of `truth` nearest to it
/// in L1, through the audited model.
fn noisy_columns(
    estimates: &[(Option<usize>, Vec<f64>)],
    truth: &[Vec<i64>],
    sigma: u32,
    step: i64,
) -> NoisyColumns {
    let distance = |k: usize, e: &[f64]| -> f64 {
        truth[k]
            .iter()
            .zip(e)
            .map(|(&w, &x)| (x - w as f64).abs())
            .sum()
    };
    let mut covered = vec![false; truth.len()];
    let (mut error, mut weights) = (0f64, 0usize);
    for (at, e) in estimates {
        let nearest =
            || (0..truth.len()).min_by(|&a, &b| distance(a, e).total_cmp(&distance(b, e)));
        if let Some(k) = at.or_else(nearest) {
            covered[k] = true;
            error += distance(k, e);
            weights += e.len();
        }
    }
    NoisyColumns {
        sigma,
        step,
        estimates: estimates.len(),
        columns_covered: covered.iter().filter(|&&c| c).count(),
        columns_total: truth.len(),
        mean_abs_error: error / weights.max(1) as f64,
        expected_error: 2.0 * f64::from(sigma) / (step as f64 * std::f64::consts::PI.sqrt()),
        zero_guess_error: truth
            .iter()
            .flatten()
            .map(|w| w.unsigned_abs() as f64)
            .sum::<f64>()
            / truth.iter().map(Vec::len).sum::<usize>().max(1) as f64,
        matched_by_model: estimates.iter().any(|(at, _)| at.is_none()),
    }
}

/// (reading − base)/v, the client's estimate of one column under noise.
fn column_estimate(y: &[i64], y0: &[i64], v: i64) -> Vec<f64> {
    y.iter()
        .zip(y0)
        .map(|(a, b)| (a - b) as f64 / v as f64)
        .collect()
}

/// Whether the base session's outputs `y0` (upload `base` in every slot)
/// minus W·base are exactly the stage's biases.
fn bias_matches(y0: &[i64], shape: &MatVecShape, w: &[i64], b: &[i64], base: i64) -> bool {
    (0..shape.rows).all(|i| {
        let wx: i64 = (0..shape.cols).map(|j| w[i * shape.cols + j] * base).sum();
        y0[i] - wx == b[i]
    })
}

fn random_values(len: usize, (min, max): (i64, i64)) -> Vec<i64> {
    let mut rng = Csprng::from_os();
    let span = max.abs_diff(min).saturating_add(1);
    (0..len)
        .map(|_| min.wrapping_add(rng.uniform_below(span) as i64))
        .collect()
}

/// The upload that puts label ℓ's block where the server expects it:
/// slot block s gets label `slots[s]`'s block (identity at round 0).
fn arrange(chosen: &[i64], slots: Option<&[usize]>, block: usize) -> Vec<i64> {
    let mut upload = vec![0i64; chosen.len()];
    for (s, dst) in upload.chunks_mut(block).enumerate() {
        let label = slots.map_or(s, |m| m[s]);
        dst.copy_from_slice(&chosen[label * block..(label + 1) * block]);
    }
    upload
}

/// A session opened and brought to round `r`: each earlier round's upload
/// is its range's base value (`probe_step`), as the bias probe's zeros
/// where the range holds 0. `None` when the budget refuses the session.
fn open_at_round(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    ranges: &[(i64, i64)],
    r: usize,
) -> Result<Option<Live>, AuditError> {
    let mut live = match oracle.open() {
        Ok(live) => live,
        Err(Stop::Budget) => return Ok(None),
        Err(Stop::Protocol(e)) => return Err(AuditError::Protocol(e)),
    };
    for (k, &range) in ranges.iter().enumerate().take(r) {
        let filler = probe_step(range).0;
        step(
            oracle,
            &mut live,
            &vec![filler; model.stages()[k].input_len()],
        )?;
    }
    Ok(Some(live))
}

/// One round of an open session.
fn step(oracle: &mut Oracle<'_>, live: &mut Live, upload: &[i64]) -> Result<Vec<i64>, AuditError> {
    oracle.step(live, upload).map_err(|e| match e {
        Stop::Budget => AuditError::Protocol("an open session was refused as over budget".into()),
        Stop::Protocol(e) => AuditError::Protocol(e),
    })
}

/// Slot block → label: matches each received plane to the plane the
/// recovered stage predicts for one label, one to one; `None` if a plane
/// matches no label or two planes match the same one.
fn locate(seen: &[i64], known: &Known, chosen: &[i64]) -> Option<Vec<usize>> {
    let out_plane = plane(&known.shape);
    let expected = known.predict(chosen)?;
    let mut taken = vec![false; known.shape.out_channels];
    let mut map = Vec::with_capacity(known.shape.out_channels);
    for block in seen.chunks(out_plane) {
        let label = (0..known.shape.out_channels)
            .find(|&o| !taken[o] && expected[o * out_plane..(o + 1) * out_plane] == *block)?;
        taken[label] = true;
        map.push(label);
    }
    Some(map)
}

/// Least squares by Householder QR in f64, rounded to integers, and whether
/// the rounded solution reproduces every equation exactly (it does when the
/// values are exact; under DP noise it is the client's best estimate).
// Column operations on a row-major matrix: indices read better than iterators.
#[allow(clippy::needless_range_loop)]
fn least_squares_integer(rows: &[Vec<f64>], y: &[i64]) -> Option<(Vec<i64>, bool)> {
    let m = rows.len();
    let n = rows.first()?.len();
    let mut a: Vec<Vec<f64>> = rows.to_vec();
    let mut b: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    for k in 0..n {
        let norm = (k..m).map(|i| a[i][k] * a[i][k]).sum::<f64>().sqrt();
        if norm == 0.0 {
            return None;
        }
        let alpha = if a[k][k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (k..m).map(|i| a[i][k]).collect();
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|t| t * t).sum();
        if vv == 0.0 {
            continue;
        }
        for j in k..n {
            let dot: f64 = (k..m).map(|i| v[i - k] * a[i][j]).sum();
            let f = 2.0 * dot / vv;
            for i in k..m {
                a[i][j] -= f * v[i - k];
            }
        }
        let dot: f64 = (k..m).map(|i| v[i - k] * b[i]).sum();
        let f = 2.0 * dot / vv;
        for i in k..m {
            b[i] -= f * v[i - k];
        }
    }
    let mut theta = vec![0f64; n];
    for k in (0..n).rev() {
        let s: f64 = (k + 1..n).map(|j| a[k][j] * theta[j]).sum();
        if a[k][k].abs() < 1e-9 {
            return None;
        }
        theta[k] = (b[k] - s) / a[k][k];
    }
    let theta: Vec<i64> = theta.iter().map(|t| t.round() as i64).collect();
    let exact = rows.iter().zip(y).all(|(row, &want)| {
        let got: i128 = row
            .iter()
            .zip(&theta)
            .map(|(&r, &t)| r as i128 * t as i128)
            .sum();
        got == want as i128
    });
    Some((theta, exact))
}

/// AUDIT-3 (d + 1): the last round returns its outputs unshuffled, so a
/// mat-vec there falls to d + 1 sessions: the base upload gives W·base + b,
/// base + v·e_j gives column j. Behind shuffled rounds, each session first
/// locates the slots of the stage's input through the recovered stages.
fn d_plus_one(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    known: &[Option<Known>],
    sigma: Option<u32>,
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    entry.attack = if r == 0 { "d + 1" } else { "d + 1, located" };
    let stage = &model.stages()[r];
    let Some(shape) = stage.matvec_shape() else {
        return Ok(());
    };
    // The input's block structure: the previous conv's planes, by label.
    let (block, previous) = match r {
        0 => (shape.cols, vec![0]),
        _ => match known[r - 1].as_ref() {
            Some(k) => (plane(&k.shape), k.truth.clone()),
            None => {
                entry.note = format!(
                    "round {} was not recovered, so the slots of round {r} cannot be located",
                    r - 1
                );
                return Ok(());
            }
        },
    };
    let (true_w, true_b) = stage.weights_and_bias();
    let mut at_base: Option<Vec<i64>> = None;
    let (mut columns, mut probe) = (0usize, (0i64, 0i64));
    // Under noise (AUDIT-6): (true column, estimate) per column session.
    let mut estimates: Vec<(Option<usize>, Vec<f64>)> = Vec::new();
    let mut budget_hit = false;
    for q in 0..=shape.cols {
        let (mut live, slots, range) = match advance(oracle, model, spec, r, known)? {
            Advanced::Ready { live, slots, range } => (live, slots, range),
            Advanced::Budget => {
                budget_hit = true;
                break;
            }
            Advanced::Lost(why) => {
                entry.note = why;
                return Ok(());
            }
        };
        entry.sessions += 1;
        probe = column_probe_step(range, sigma);
        let (base, v) = probe;
        if v == 0 {
            entry.note = "the input range holds one value: nothing to probe".into();
            return Ok(());
        }
        let mut x = vec![base; shape.cols];
        if q > 0 {
            x[q - 1] = base + v;
        }
        let y = step(oracle, &mut live, &arrange(&x, slots.as_deref(), block))?;
        let Some(y0) = &at_base else {
            at_base = Some(y);
            continue;
        };
        // Label position j is true input (truth[ℓ], offset).
        let j = q - 1;
        let true_j = previous[j / block] * block + j % block;
        let exact = (0..shape.rows).all(|i| (y[i] - y0[i]) == v * true_w[i * shape.cols + true_j]);
        columns += usize::from(exact);
        if sigma.is_some() {
            estimates.push((Some(true_j), column_estimate(&y, y0, v)));
        }
    }
    let bias_exact = columns == shape.cols
        && at_base
            .as_ref()
            .is_some_and(|y0| bias_matches(y0, &shape, true_w, true_b, probe.0));
    entry.weights.0 = columns * shape.rows;
    entry.outcome = if columns == shape.cols && bias_exact {
        Outcome::Recovered
    } else if budget_hit || sigma.is_none() {
        Outcome::StoppedByBudget
    } else {
        Outcome::Approximate
    };
    entry.note = format!(
        "{columns} of {} columns exact in {} sessions{}",
        shape.cols,
        entry.sessions,
        if budget_hit {
            " before the budget ran out"
        } else {
            ""
        }
    );
    if let Some(sigma) = sigma {
        let truth = matvec_columns(true_w, &shape);
        entry.record_noisy(noisy_columns(&estimates, &truth, sigma, probe.1));
    }
    Ok(())
}

/// AUDIT-7's plan for a conv at round 0: one probe per (input channel,
/// offset class), where a pixel's offset class is the set of kernel offsets
/// (dy, dx) through which it reaches an output; packed first-fit into
/// groups whose output footprints are disjoint (any pixel of a class will
/// do, so the first group where one of them fits takes it). Each entry:
/// (input channel, pixel, offsets, output positions).
pub fn probe_plan(shape: &Conv2dShape) -> Vec<Vec<PlannedProbe>> {
    let (h_out, w_out) = (
        shape.output_height().unwrap_or(0),
        shape.output_width().unwrap_or(0),
    );
    let (kh, kw) = (shape.kernel_height, shape.kernel_width);
    // (a pixel, the outputs it reaches), grouped by the offsets it reaches.
    type Pixel = ((usize, usize), Vec<(usize, usize)>);
    type Class = (Vec<(usize, usize)>, Vec<Pixel>);
    let mut classes: Vec<Class> = Vec::new();
    for y in 0..shape.in_height {
        for x in 0..shape.in_width {
            let (mut offsets, mut outputs) = (Vec::new(), Vec::new());
            for dy in 0..kh {
                for dx in 0..kw {
                    let (py, px) = (y + shape.padding, x + shape.padding);
                    if py < dy
                        || px < dx
                        || (py - dy) % shape.stride != 0
                        || (px - dx) % shape.stride != 0
                    {
                        continue;
                    }
                    let (i, j) = ((py - dy) / shape.stride, (px - dx) / shape.stride);
                    if i < h_out && j < w_out {
                        offsets.push((dy, dx));
                        outputs.push((i, j));
                    }
                }
            }
            if offsets.is_empty() {
                continue;
            }
            match classes.iter_mut().find(|c| c.0 == offsets) {
                Some(c) => c.1.push(((y, x), outputs)),
                None => classes.push((offsets, vec![((y, x), outputs)])),
            }
        }
    }
    let mut groups: Vec<Vec<PlannedProbe>> = Vec::new();
    for channel in 0..shape.in_channels {
        for (offsets, pixels) in &classes {
            let placed = groups.iter().enumerate().find_map(|(gi, g)| {
                pixels
                    .iter()
                    .find(|(_, outputs)| g.iter().all(|p| p.3.iter().all(|o| !outputs.contains(o))))
                    .map(|px| (gi, px))
            });
            let (gi, (pixel, outputs)) = match placed {
                Some(found) => found,
                None => {
                    groups.push(Vec::new());
                    (groups.len() - 1, &pixels[0])
                }
            };
            groups[gi].push((channel, *pixel, offsets.clone(), outputs.clone()));
        }
    }
    groups
}

/// AUDIT-7's probe values: `count` triples from `choices`, every two of
/// them linearly independent together with (1, 1, 1) (det ≠ 0), and none
/// with v0 = v1. Greedy: each next triple takes, in each session, a value
/// the other probes use least there (so that two probes' readings of the
/// same weight differ in every session, and the attribution has little to
/// choose between), then the largest magnitudes. `None` if the choices
/// run out.
fn probe_values(choices: &[i64], count: usize) -> Option<Vec<[i64; 3]>> {
    let mut sorted = choices.to_vec();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.unsigned_abs()));
    let det = |a: &[i64; 3], b: &[i64; 3]| {
        a[0] * (b[1] - b[2]) - a[1] * (b[0] - b[2]) + a[2] * (b[0] - b[1])
    };
    // Triples examined per pick once none is fresh in all three sessions.
    const SCAN: usize = 200_000;
    let mut uses: [std::collections::BTreeMap<i64, usize>; 3] = Default::default();
    let mut out: Vec<[i64; 3]> = Vec::with_capacity(count);
    while out.len() < count {
        let mut best: Option<([i64; 3], usize)> = None;
        let mut seen = 0usize;
        'scan: for &x in &sorted {
            for &y in &sorted {
                if x == y {
                    continue;
                }
                for &z in &sorted {
                    let t = [x, y, z];
                    seen += 1;
                    let score: usize = (0..3)
                        .map(|i| uses[i].get(&t[i]).copied().unwrap_or(0))
                        .sum();
                    if best.is_none_or(|(_, s)| score < s) && out.iter().all(|u| det(u, &t) != 0) {
                        best = Some((t, score));
                        if score == 0 {
                            break 'scan;
                        }
                    }
                    if seen >= SCAN && best.is_some() {
                        break 'scan;
                    }
                }
            }
        }
        let (t, _) = best?;
        for i in 0..3 {
            *uses[i].entry(t[i]).or_default() += 1;
        }
        out.push(t);
    }
    Some(out)
}

/// AUDIT-7, PROTO-6: sessions the single-pixel probes of a round-0 conv
/// need: three per group of [`probe_plan`], plus the bias probe.
pub fn pixel_probe_sessions(shape: &Conv2dShape) -> u64 {
    1 + 3 * probe_plan(shape).len() as u64
}

/// A multiset of integers.
type Counts = std::collections::BTreeMap<i64, usize>;

/// AUDIT-7: one probe's kernel offsets and the weights read at them.
type Item<'a> = (&'a [(usize, usize)], &'a [i64]);

/// AUDIT-7: the kernels (row-major) of the channels sharing one bias.
type Kernels = Vec<Vec<i64>>;

/// AUDIT-7's plan entry: (input channel, pixel, kernel offsets, outputs).
pub type PlannedProbe = (
    usize,
    (usize, usize),
    Vec<(usize, usize)>,
    Vec<(usize, usize)>,
);

fn counts(values: &[i64]) -> Counts {
    let mut c = Counts::new();
    for &v in values {
        *c.entry(v).or_default() += 1;
    }
    c
}

/// `a − b` as multisets; `None` when `b` is not contained in `a`.
fn difference(a: &Counts, b: &Counts) -> Option<Counts> {
    let mut d = a.clone();
    for (v, &n) in b.iter().filter(|(_, &n)| n > 0) {
        let have = d.get_mut(v)?;
        *have = have.checked_sub(n)?;
        if *have == 0 {
            d.remove(v);
        }
    }
    Some(d)
}

/// One probe of AUDIT-7: an input pixel whose kernel offsets (the set of
/// (dy, dx) through which it reaches an output) differ from every other
/// probe's of the same input channel.
struct Probe {
    channel: usize,
    pixel: (usize, usize),
    /// The kernel offsets (dy, dx) it reaches, and the output positions.
    offsets: Vec<(usize, usize)>,
    outputs: Vec<(usize, usize)>,
    /// Its value in each of the three probe sessions.
    values: [i64; 3],
}

/// A reading of AUDIT-7's exact cover: a value triple b + v·w of the three
/// sessions, attributed to bias `bias`, probe `probe`, weight `w`.
#[derive(Clone, Copy)]
struct Reading {
    bias: i64,
    probe: usize,
    w: i64,
}

/// What one AUDIT-7 probe session at round r returned.
enum Probed {
    /// The round-r outputs, and the image the server actually read (in the
    /// attacker's labels): the wanted one, except that values the attacker
    /// could not place apart (tied slots) were set to 0.
    Seen {
        outputs: Vec<i64>,
        realized: Vec<i64>,
    },
    Budget,
    Lost(String),
}

/// Random inputs tried offline, per session, for a round r − 1 input
/// whose outputs put every probe pixel of round r in a slot of its own.
const PLACEMENT_TRIES: usize = 2000;

/// How a walk picks round r − 1's input among random candidates: `score`
/// rejects a candidate's predicted outputs (`None`) or rates them (higher
/// is better); the walk keeps the best of the first `enough` accepted,
/// out of at most [`PLACEMENT_TRIES`].
struct LastInput<'a> {
    score: &'a dyn Fn(&[i64]) -> Option<u64>,
    enough: usize,
    /// What an accepted candidate achieves, for the "not found" message.
    wanted: &'a str,
}

/// Where [`walk_to_round`] left a session.
enum Walk {
    /// Rounds 0..r − 1 played; the session waits for round r's upload.
    At {
        live: Box<Live>,
        /// Slot → label position of round r's upload: `None` at round 0
        /// (true order) or when round r − 1 was only partly recovered.
        slots: Option<Vec<usize>>,
        /// Round r − 1's predicted outputs that tie, as groups.
        ties: Vec<Vec<usize>>,
        /// Round r − 1's received values, and their prediction.
        seen: Vec<i64>,
        predicted: Vec<i64>,
    },
    Budget,
    Lost(String),
}

/// The walk shared by AUDIT-8 and AUDIT-9: opens a session and plays
/// rounds 0..r − 1 with uploads of the attacker's choice. The server reads
/// round k's upload in σ_(k−1)'s order, which the attacker learns by
/// predicting: it predicts each round's outputs from the recovered stage
/// (`stage(k)`), and matches each received value to the label position
/// predicting it. Positions whose predicted values tie cannot be told
/// apart, so they all get one value (see [`realize`]). Earlier rounds take
/// any random input; round r − 1's is chosen offline by `last`. With
/// `last_complete` false, round r − 1's stage covers only some channels,
/// and its values are checked as a sub-multiset, not located.
#[allow(clippy::too_many_arguments)]
fn walk_to_round<'k>(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    stage: &dyn Fn(usize) -> Option<&'k Known>,
    last: LastInput<'_>,
    last_complete: bool,
) -> Result<Walk, AuditError> {
    let mut live = match oracle.open() {
        Ok(live) => live,
        Err(Stop::Budget) => return Ok(Walk::Budget),
        Err(Stop::Protocol(e)) => return Err(AuditError::Protocol(e)),
    };
    let ranges = upload_ranges(model, spec, r);
    let mut slots: Option<Vec<usize>> = None;
    let mut ties: Vec<Vec<usize>> = Vec::new();
    let (mut seen, mut predicted) = (Vec::new(), Vec::new());
    for (k, &range) in ranges.iter().enumerate().take(r) {
        let Some(kn) = stage(k) else {
            return Ok(Walk::Lost(format!(
                "round {k} was not recovered, so the slots of round {r} cannot be located"
            )));
        };
        let is_last = k + 1 == r;
        let len = kn.shape.input_len().unwrap_or(0);
        let (mut chosen, mut best, mut accepted) = (None, 0u64, 0usize);
        for _ in 0..if is_last { PLACEMENT_TRIES } else { 1 } {
            let x = realize(&random_values(len, range), &ties);
            let Some(y) = kn.predict(&x) else {
                return Ok(Walk::Lost(format!(
                    "round {k}'s recovered stage could not be evaluated"
                )));
            };
            let score = if is_last { (last.score)(&y) } else { Some(0) };
            let Some(score) = score else { continue };
            if chosen.is_none() || score > best {
                (chosen, best) = (Some((x, y)), score);
            }
            accepted += 1;
            if !is_last || accepted == last.enough {
                break;
            }
        }
        let Some((x, y)) = chosen else {
            return Ok(Walk::Lost(format!(
                "no input of round {k} found in {PLACEMENT_TRIES} tries that {}",
                last.wanted
            )));
        };
        seen = step(oracle, &mut live, &arrange_elements(&x, slots.as_deref()))?;
        predicted = y;
        let located = if !is_last || last_complete {
            locate_elements(&seen, &predicted).map(Some)
        } else {
            difference(&counts(&seen), &counts(&predicted)).map(|_| None)
        };
        let Some(located) = located else {
            return Ok(Walk::Lost(format!(
                "round {k}'s values differ from the recovered stage's prediction"
            )));
        };
        slots = located;
        ties = tie_groups(&predicted);
    }
    Ok(Walk::At {
        live: Box::new(live),
        slots,
        ties,
        seen,
        predicted,
    })
}

/// AUDIT-8: one session whose round-r upload is `image` (in the
/// attacker's labels: round 0's true order, later the output labels of
/// the stages it recovered), reached through [`walk_to_round`]. Tied
/// positions all get one value: the wanted one when the image agrees on
/// them, else 0. With `separate`, round r − 1's input is searched offline
/// so that every position where `image` is not 0 predicts a value of its
/// own, so that probe pixels reach the server as wanted.
fn probe_session(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    known: &[Option<Known>],
    image: &[i64],
    separate: bool,
) -> Result<Probed, AuditError> {
    let needed: Vec<usize> = (0..image.len())
        .filter(|&i| separate && image[i] != 0)
        .collect();
    let separated = |y: &[i64]| {
        let groups = tie_groups(y);
        let alone = needed
            .iter()
            .all(|i| groups.iter().all(|g| g.len() == 1 || !g.contains(i)));
        alone.then_some(0)
    };
    let last = LastInput {
        score: &separated,
        enough: 1,
        wanted: "gives every probe pixel a slot of its own",
    };
    let stage = |k: usize| known[k].as_ref();
    let (mut live, slots, ties) = match walk_to_round(oracle, model, spec, r, &stage, last, true)? {
        Walk::At {
            live, slots, ties, ..
        } => (live, slots, ties),
        Walk::Budget => return Ok(Probed::Budget),
        Walk::Lost(why) => return Ok(Probed::Lost(why)),
    };
    let realized = realize(image, &ties);
    let outputs = step(
        oracle,
        &mut live,
        &arrange_elements(&realized, slots.as_deref()),
    )?;
    Ok(Probed::Seen { outputs, realized })
}

/// The groups of positions whose values are equal, each sorted.
fn tie_groups(values: &[i64]) -> Vec<Vec<usize>> {
    let mut by_value: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &v) in values.iter().enumerate() {
        by_value.entry(v).or_default().push(i);
    }
    by_value.into_values().collect()
}

/// `wanted`, with every tie group set to one value: its common value
/// when all its positions want the same, else 0.
fn realize(wanted: &[i64], ties: &[Vec<usize>]) -> Vec<i64> {
    let mut out = wanted.to_vec();
    for group in ties.iter().filter(|g| g.len() > 1) {
        let first = wanted[group[0]];
        if group.iter().any(|&i| wanted[i] != first) {
            group.iter().for_each(|&i| out[i] = 0);
        }
    }
    out
}

/// The upload that puts label position `slots[s]`'s value in slot s
/// (true order when `slots` is `None`).
fn arrange_elements(values: &[i64], slots: Option<&[usize]>) -> Vec<i64> {
    match slots {
        None => values.to_vec(),
        Some(m) => m.iter().map(|&j| values[j]).collect(),
    }
}

/// Slot → label position: each received value matched to a position that
/// predicts it, one to one (tied positions in order); `None` if the
/// received multiset is not the predicted one.
fn locate_elements(seen: &[i64], predicted: &[i64]) -> Option<Vec<usize>> {
    if seen.len() != predicted.len() {
        return None;
    }
    let mut free: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (j, &v) in predicted.iter().enumerate().rev() {
        free.entry(v).or_default().push(j);
    }
    seen.iter()
        .map(|v| free.get_mut(v).and_then(Vec::pop))
        .collect()
}

/// AUDIT-10 and AUDIT-11: a conv stage's weights read under DP noise
/// ([`NoisyProbes`]), against the mean of the bias probe's round-r values
/// `base`. Round 0 (AUDIT-10): one session per input channel, v at the
/// pixel whose window reaches the most outputs. A later round (AUDIT-11):
/// one session raising one slot of round r's upload by v, which the
/// server's unshuffle puts at a true position the attacker does not know;
/// the auditor matches the estimates to the input pixel whose reached
/// weights they are nearest to, through the model.
fn noisy_probes(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    base: &[i64],
    sigma: u32,
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    let blind = r > 0;
    entry.attack = if blind { "blind probe" } else { "pixel probes" };
    let stage = &model.stages()[r];
    let Some(shape) = stage.conv_shape() else {
        return Ok(());
    };
    let ranges = upload_ranges(model, spec, r);
    let (lo, hi) = ranges[r];
    let v = if hi >= -lo { hi } else { lo };
    if !(lo <= 0 && 0 <= hi) || v == 0 {
        entry.note = "the input range does not hold 0 and a probe value".into();
        return Ok(());
    }
    let (true_w, true_b) = stage.weights_and_bias();
    let widest = widest_reach_pixel(&shape);
    let reach = reached_weights(&shape, widest).len();
    let kk = shape.kernel_height * shape.kernel_width;
    // The weights input pixel (c, i, j) reaches, sorted, padded with zeros
    // to `reach` (a value the attacker takes beyond them is an output no
    // weight moved), and the outputs' channels.
    let truth_at = |c: usize, pixel: (usize, usize)| {
        let reached = reached_weights(&shape, pixel);
        let mut w: Vec<i64> = reached
            .iter()
            .map(|&(o, t)| true_w[(o * shape.in_channels + c) * kk + t])
            .collect();
        w.resize(reach, 0);
        w.sort_unstable();
        (w, reached)
    };
    let sorted_error = |read: &[f64], w: &[i64]| -> f64 {
        read.iter().zip(w).map(|(e, &x)| (e - x as f64).abs()).sum()
    };
    let b_mean = base.iter().sum::<i64>() as f64 / base.len().max(1) as f64;
    let true_b_mean = true_b.iter().sum::<i64>() as f64 / true_b.len().max(1) as f64;
    let (mut estimates, mut exact, mut error, mut truth_abs, mut offset) =
        (0usize, 0usize, 0f64, 0f64, 0f64);
    let mut channels = vec![false; shape.in_channels];
    let mut pixel = widest;
    let mut budget_hit = false;
    let sessions = if blind { 1 } else { shape.in_channels };
    for c in 0..sessions {
        let Some(mut live) = open_at_round(oracle, model, &ranges, r)? else {
            budget_hit = true;
            break;
        };
        entry.sessions += 1;
        let mut image = vec![0i64; stage.input_len()];
        if blind {
            image[0] = v;
        } else {
            image[(c * shape.in_height + widest.0) * shape.in_width + widest.1] = v;
        }
        let y = step(oracle, &mut live, &image)?;
        let read = noisy_probe_reading(&y, b_mean, reach, v);
        let (c, at) = if blind {
            // The auditor's match: the input pixel of least error.
            let candidates = (0..shape.in_channels).flat_map(|c| {
                (0..shape.in_height)
                    .flat_map(move |i| (0..shape.in_width).map(move |j| (c, (i, j))))
            });
            candidates
                .map(|(c, at)| (sorted_error(&read, &truth_at(c, at).0), (c, at)))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map_or((0, widest), |(_, best)| best)
        } else {
            (c, widest)
        };
        let (truth, reached) = truth_at(c, at);
        error += sorted_error(&read, &truth);
        for (e, &w) in read.iter().zip(&truth) {
            exact += usize::from(e.round() as i64 == w);
            truth_abs += w.unsigned_abs() as f64;
        }
        offset += reached
            .iter()
            .map(|&(o, _)| (true_b[o] as f64 - true_b_mean).abs())
            .sum::<f64>();
        estimates += read.len();
        channels[c] = true;
        pixel = at;
    }
    let per = |x: f64| x / estimates.max(1) as f64;
    let channels_read = channels.iter().filter(|&&c| c).count();
    let noisy = NoisyProbes {
        sigma,
        step: v,
        pixel,
        channels_read,
        channels_total: shape.in_channels,
        estimates,
        rounding_exact: exact,
        mean_abs_error: per(error),
        expected_error: f64::from(sigma) * (2.0 / std::f64::consts::PI).sqrt()
            / v.unsigned_abs() as f64,
        bias_offset_error: per(offset) / v.unsigned_abs() as f64,
        zero_guess_error: per(truth_abs),
        matched_by_model: blind,
    };
    entry.outcome = if budget_hit {
        Outcome::StoppedByBudget
    } else {
        Outcome::Approximate
    };
    entry.note = if blind {
        format!(
            "noisy blind probe (AUDIT-11): {} session raised one slot of round {r}'s upload, whose true position the unshuffle hides; its estimates matched through the model to input channel {} at pixel {pixel:?}{}; no weight counts as exact under noise",
            entry.sessions,
            channels.iter().position(|&c| c).map_or("none".into(), |c| c.to_string()),
            if budget_hit { ", before the budget ran out" } else { "" }
        )
    } else {
        format!(
            "noisy reading (AUDIT-10): {channels_read} of {} input channels probed at pixel {pixel:?}, one session each{}; no weight counts as exact under noise",
            shape.in_channels,
            if budget_hit { " before the budget ran out" } else { "" }
        )
    };
    entry.weight_error = (estimates > 0).then_some(noisy.mean_abs_error);
    entry.noisy_probes = Some(noisy);
    Ok(())
}

/// AUDIT-10: the first pixel, in row-major order, whose window reaches the
/// most outputs of `shape` (the centre, away from the padding).
fn widest_reach_pixel(shape: &Conv2dShape) -> (usize, usize) {
    let mut best = ((0, 0), 0);
    for i in 0..shape.in_height {
        for j in 0..shape.in_width {
            let n = reached_weights(shape, (i, j)).len();
            if n > best.1 {
                best = ((i, j), n);
            }
        }
    }
    best.0
}

/// AUDIT-10: the (output channel, kernel offset dy·k_w + dx) of every output
/// that input pixel `(i, j)` of one input channel reaches.
fn reached_weights(shape: &Conv2dShape, (i, j): (usize, usize)) -> Vec<(usize, usize)> {
    let (h_out, w_out) = (
        shape.output_height().unwrap_or(0),
        shape.output_width().unwrap_or(0),
    );
    let offset = |x: usize, out: usize, k: usize| {
        (x + shape.padding)
            .checked_sub(out * shape.stride)
            .filter(|&d| d < k)
    };
    let mut reached = Vec::new();
    for o in 0..shape.out_channels {
        for oh in 0..h_out {
            for ow in 0..w_out {
                if let (Some(dy), Some(dx)) = (
                    offset(i, oh, shape.kernel_height),
                    offset(j, ow, shape.kernel_width),
                ) {
                    reached.push((o, dy * shape.kernel_width + dx));
                }
            }
        }
    }
    reached
}

/// AUDIT-10's reading of one probe session's released values `y`: the
/// `reached` values farthest from `b_mean`, as (value − b_mean)/v, sorted.
fn noisy_probe_reading(y: &[i64], b_mean: f64, reached: usize, v: i64) -> Vec<f64> {
    let mut by_distance: Vec<f64> = y.iter().map(|&x| x as f64 - b_mean).collect();
    by_distance.sort_by(|a, b| b.abs().total_cmp(&a.abs()));
    let mut read: Vec<f64> = by_distance
        .into_iter()
        .take(reached)
        .map(|d| d / v as f64)
        .collect();
    read.sort_by(f64::total_cmp);
    read
}

/// AUDIT-7 (single-pixel probes, element shuffling, a conv at round 0): the
/// client writes its input in true order, so it can place single pixels;
/// only the outputs come back shuffled. A pixel of value v reaches one
/// output per kernel offset it touches, each b_c + v·w[c][offset]; a
/// corner, an edge and an interior pixel touch different offset sets. The
/// attack puts one pixel of every offset class, with disjoint output
/// footprints, in each of three sessions, each probe with its own value
/// triple; subtracts the outputs no probe reaches (known from the bias
/// probe's multiset); reads each remaining value triple as b + v·w on one
/// line (an exact cover of the three multisets); and then solves, per bias
/// and input channel, for the kernels whose values at each probe's offsets
/// are the multisets read. Channels sharing a bias are solved together.
/// Exact only when that solution is unique. At round r ≥ 1 (AUDIT-8) the
/// same, through [`probe_session`], in the attacker's channel labels of
/// round r − 1; the stage's kernels then go to `known[r]` for later rounds.
#[allow(clippy::too_many_arguments)]
fn pixel_probes(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    base: &[i64],
    (known, partial): (&mut [Option<Known>], &mut [Option<Known>]),
    check_images: bool,
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    entry.attack = if r == 0 {
        "pixel probes"
    } else {
        "located probes"
    };
    let stage = &model.stages()[r];
    let Some(shape) = stage.conv_shape() else {
        return Ok(());
    };
    if let Some(k) = (0..r).find(|&k| known[k].is_none()) {
        entry.note =
            format!("round {k} was not recovered, so the slots of round {r} cannot be located");
        return Ok(());
    }
    // Input label → true input channel (the audit's bookkeeping).
    let previous: Vec<usize> = match r.checked_sub(1).and_then(|k| known[k].as_ref()) {
        Some(k) => k.truth.clone(),
        None => (0..shape.in_channels).collect(),
    };
    let (kh, kw) = (shape.kernel_height, shape.kernel_width);
    // A folded f × f sum pool repeats each layer weight over an f × f
    // square of the stage's kernel: f² = stage weights / layer weights.
    let stage_weights = shape.out_channels * shape.in_channels * kh * kw;
    let block = (2..=kh.min(kw))
        .find(|&f| f * f * entry.weights.1 == stage_weights && kh % f == 0 && kw % f == 0)
        .unwrap_or(1);
    let positions = plane(&shape);
    let (lo, hi) = upload_ranges(model, spec, r)[r];
    if !(lo <= 0 && 0 <= hi) || (lo == 0 && hi == 0) {
        entry.note = "the input range does not hold 0 and a probe value".into();
        return Ok(());
    }
    let choices: Vec<i64> = (lo..=hi).filter(|&v| v != 0).collect();
    if choices.len() < 2 {
        entry.note = "the input range holds fewer than two probe values".into();
        return Ok(());
    }
    // Probe values: one triple per probe of a group, such that no two
    // probes' triples and (1, 1, 1) are linearly dependent. Then
    // b + v·w = b′ + v′·w′ in all three sessions forces w = w′ = 0 and
    // b = b′: a nonzero reading has one explanation per bias and probe.
    let plan = probe_plan(&shape);
    let most = plan.iter().map(Vec::len).max().unwrap_or(0);
    let Some(triples) = probe_values(&choices, most) else {
        entry.note = "the input range is too narrow for independent probe values".into();
        return Ok(());
    };
    let groups: Vec<Vec<Probe>> = probe_plan(&shape)
        .into_iter()
        .map(|g| {
            g.into_iter()
                .enumerate()
                .map(|(t, (channel, pixel, offsets, outputs))| Probe {
                    channel,
                    pixel,
                    offsets,
                    outputs,
                    values: triples[t],
                })
                .collect()
        })
        .collect();
    let base = counts(base);
    let (true_w, true_b) = stage.weights_and_bias();
    // Bias classes: bias value → channels holding it (the attacker sees
    // each bias `positions` times per channel in the base multiset).
    let mut bias_classes: Vec<(i64, usize)> = Vec::new();
    for (&b, &n) in &base {
        if n % positions != 0 {
            entry.note = "the bias probe's values are not whole planes of equal biases: the probes' exact reading does not apply, so the weights are not attacked (this is a gap in the tool, not a protection)".into();
            return Ok(());
        }
        bias_classes.push((b, n / positions));
    }
    // Read, per group and per attribution of its readings: for each
    // (bias, probe), the multiset of weights at the probe's offsets.
    #[allow(clippy::type_complexity)]
    let mut read: Vec<Vec<Vec<(i64, &Probe, Vec<i64>)>>> = Vec::new();
    for group in &groups {
        let mut seen = Vec::with_capacity(3);
        for i in 0..3 {
            let mut image = vec![0i64; shape.input_len().unwrap_or(0)];
            for p in group {
                image[(p.channel * shape.in_height + p.pixel.0) * shape.in_width + p.pixel.1] =
                    p.values[i];
            }
            match probe_session(oracle, model, spec, r, known, &image, true)? {
                Probed::Seen { outputs, realized } if realized == image => {
                    entry.sessions += 1;
                    seen.push(counts(&outputs));
                }
                Probed::Seen { .. } => {
                    entry.sessions += 1;
                    entry.note = "a probe pixel could not be placed in a slot of its own".into();
                    return Ok(());
                }
                Probed::Budget => {
                    entry.outcome = Outcome::StoppedByBudget;
                    entry.note = format!(
                        "the budget stopped the probes after {} session(s) ({} needed)",
                        entry.sessions,
                        3 * groups.len()
                    );
                    return Ok(());
                }
                Probed::Lost(why) => {
                    entry.sessions += 1;
                    entry.note = why;
                    return Ok(());
                }
            }
        }
        // Outputs no probe reaches: each channel's bias at the positions
        // outside the group's footprints.
        let reached: usize = group.iter().map(|p| p.outputs.len()).sum();
        let untouched: Counts = bias_classes
            .iter()
            .map(|&(b, g)| (b, g * (positions - reached)))
            .collect();
        let mut rest = Vec::with_capacity(3);
        for s in &seen {
            match difference(s, &untouched) {
                Some(d) => rest.push(d),
                None => {
                    entry.note =
                        "a probe session's multiset does not contain the untouched biases".into();
                    return Ok(());
                }
            }
        }
        let covers = exact_covers(&rest, group, &bias_classes);
        if covers.is_empty() {
            entry.note = "the probe readings admit no consistent attribution".into();
            return Ok(());
        }
        // Per cover: for each (bias, probe), the weights read.
        read.push(
            covers
                .iter()
                .map(|readings| {
                    let mut per: Vec<(i64, &Probe, Vec<i64>)> = Vec::new();
                    for (t, p) in group.iter().enumerate() {
                        for &(b, _) in &bias_classes {
                            let ws = readings
                                .iter()
                                .filter(|r| r.probe == t && r.bias == b)
                                .map(|r| r.w)
                                .collect();
                            per.push((b, p, ws));
                        }
                    }
                    per
                })
                .collect(),
        );
    }
    // Solve the kernels per (bias class, input channel), under every
    // combination of the groups' attributions (at most MAX_COVERS in all),
    // keeping each distinct solution once.
    let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
    for group in &read {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                (0..group.len()).map(move |i| {
                    let mut c = c.clone();
                    c.push(i);
                    c
                })
            })
            .take(MAX_COVERS)
            .collect();
    }
    let mut solved: Vec<(i64, usize, Vec<Kernels>)> = Vec::new();
    // The readings behind each entry of `solved`, one item list per
    // attribution, for the check image below.
    let mut readings: Vec<Vec<Vec<Item>>> = Vec::new();
    // Whether each entry of `solved` lists every solution (no cap hit).
    let mut complete_lists: Vec<bool> = Vec::new();
    for &(b, g) in &bias_classes {
        for c in 0..shape.in_channels {
            let mut all: Vec<Kernels> = Vec::new();
            let mut complete = true;
            let mut per_combo = Vec::with_capacity(combos.len());
            for combo in &combos {
                let items: Vec<Item> = combo
                    .iter()
                    .enumerate()
                    .flat_map(|(gi, &ci)| read[gi][ci].iter())
                    .filter(|(rb, p, _)| *rb == b && p.channel == c)
                    .map(|(_, p, ws)| (p.offsets.as_slice(), ws.as_slice()))
                    .collect();
                let (solutions, whole) = solve_kernels(&items, g, kh, kw, block);
                complete &= whole;
                for sol in solutions {
                    if !all.contains(&sol) {
                        all.push(sol);
                    }
                }
                per_combo.push(items);
            }
            complete_lists.push(complete && !all.is_empty());
            solved.push((b, c, all));
            readings.push(per_combo);
        }
    }
    // What the probes leave open: channels sharing a bias have several
    // slice solutions, and with several input channels the slices of one
    // input channel are not yet paired with another's. One more session
    // decides both: a random image with one band of rows per input
    // channel, and below them a region where every channel is random,
    // separated by k_h − 1 zero rows so that no output sees two of them.
    // A band's outputs depend on one input channel's slices only, the joint
    // region's on whole kernels. The outputs of everything already solved
    // are predicted and removed from its multiset; a candidate stays if its
    // own predicted outputs are contained in what is left.
    let cin = shape.in_channels;
    let class_of = |b: i64| bias_classes.iter().position(|x| x.0 == b).unwrap_or(0);
    let pairing_open = cin > 1 && bias_classes.iter().any(|&(_, g)| g > 1);
    let need_check =
        check_images && (pairing_open || solved.iter().any(|(_, _, sol)| sol.len() != 1));
    let mut checked = false;
    let mut full: Vec<Vec<Kernels>>;
    let layout = check_layout(&shape);
    let plane_len = shape.in_height * shape.in_width;
    let mut check_lost = String::new();
    // The check sessions' outputs and the images the server read.
    let mut check: Option<Vec<(Vec<i64>, Vec<i64>)>> = None;
    if let (true, Some(sessions)) = (need_check, layout.as_ref()) {
        let mut got = Vec::with_capacity(sessions.len());
        for regions in sessions {
            let mut image = vec![0i64; shape.input_len().unwrap_or(0)];
            for region in regions {
                let channels = match region.set {
                    Set::Band(c) => vec![c],
                    Set::Pair(c) => vec![0, c],
                };
                for c in channels {
                    let start = c * plane_len + region.rows.start * shape.in_width;
                    let len = region.rows.len() * shape.in_width;
                    image[start..start + len].copy_from_slice(&random_values(len, (lo, hi)));
                }
            }
            // Tied slots get 0 at round r ≥ 1: still a random image with
            // zero gaps, and the attacker knows it.
            match probe_session(oracle, model, spec, r, known, &image, false)? {
                Probed::Seen { outputs, realized } => got.push((outputs, realized)),
                Probed::Budget => break,
                Probed::Lost(why) => {
                    entry.sessions += 1;
                    check_lost = format!("; a check image's session was lost: {why}");
                    break;
                }
            }
        }
        if got.len() == sessions.len() {
            check = Some(got);
        } else {
            entry.sessions += got.len() as u64;
        }
    }
    if let (Some(check), Some(sessions)) = (check, layout.as_ref()) {
        entry.sessions += check.len() as u64;
        checked = true;
        let w_out = shape.output_width().unwrap_or(0);
        let rows_seeing = |rows: &std::ops::Range<usize>| -> Vec<usize> {
            (0..shape.output_height().unwrap_or(0))
                .filter(|&i| window_rows(&shape, i).any(|y| rows.contains(&y)))
                .collect()
        };
        // Where each band and each pair region are: (session, output rows).
        let mut band_at = vec![(0usize, Vec::new()); shape.in_channels];
        let mut pair_at = vec![(0usize, Vec::new()); shape.in_channels];
        for (s, regions) in sessions.iter().enumerate() {
            for region in regions {
                let at = (s, rows_seeing(&region.rows));
                match region.set {
                    Set::Band(c) => band_at[c] = at,
                    Set::Pair(c) => pair_at[c] = at,
                }
            }
        }
        let pick = |y: Vec<i64>, rows: &[usize], b: i64| -> Vec<i64> {
            rows.iter()
                .flat_map(|&i| y[i * w_out..(i + 1) * w_out].iter().map(move |v| v + b))
                .collect()
        };
        // A slice of input channel c: its outputs where band c is seen.
        let slice_shape = Conv2dShape {
            in_channels: 1,
            out_channels: 1,
            ..shape
        };
        let band_outputs = |c: usize, slice: &[i64], b: i64| -> Vec<i64> {
            let (s, rows) = &band_at[c];
            let plane = &check[*s].1[c * plane_len..(c + 1) * plane_len];
            let y = conv2d_reference(&slice_shape, plane, slice).unwrap_or_default();
            pick(y, rows, b)
        };
        // A whole kernel's outputs in pair region c, where only input
        // channels 0 and c are set: its slices 0 and c.
        let kk = kh * kw;
        let pair_outputs = |c: usize, kernel: &[i64], b: i64| -> Vec<i64> {
            let (s, rows) = &pair_at[c];
            let image = &check[*s].1;
            let slice_conv = |ch: usize| {
                let plane = &image[ch * plane_len..(ch + 1) * plane_len];
                conv2d_reference(&slice_shape, plane, &kernel[ch * kk..(ch + 1) * kk])
                    .unwrap_or_default()
            };
            let y: Vec<i64> = slice_conv(0)
                .iter()
                .zip(slice_conv(c))
                .map(|(u, v)| u + v)
                .collect();
            pick(y, rows, b)
        };
        // Per session, what is left to explain: the outputs that see no
        // region hold the bias, and the solved slices' are predicted.
        let mut left: Vec<Counts> = Vec::with_capacity(check.len());
        for (s, (outputs, _)) in check.iter().enumerate() {
            let mut l = counts(outputs);
            let seen: usize = band_at
                .iter()
                .chain(pair_at.iter().skip(1))
                .filter(|(at, _)| *at == s)
                .map(|(_, rows)| rows.len())
                .sum();
            let dead = (shape.output_height().unwrap_or(0) - seen) * w_out;
            for &(b, g) in &bias_classes {
                l = difference(&l, &Counts::from([(b, g * dead)])).unwrap_or_default();
            }
            left.push(l);
        }
        for (b, c, sol) in &solved {
            if let [slices] = sol.as_slice() {
                let l = &mut left[band_at[*c].0];
                for slice in slices {
                    *l = difference(l, &counts(&band_outputs(*c, slice, *b))).unwrap_or_default();
                }
            }
        }
        // Open slices: the single slices whose outputs fit, then the sets of
        // g of them that reproduce the probe readings and fit together.
        for (k, (b, c, sol)) in solved.iter_mut().enumerate() {
            if sol.len() == 1 {
                continue;
            }
            let g = bias_classes[class_of(*b)].1;
            let left = &left[band_at[*c].0];
            let set_fits = |set: &Kernels| {
                let predicted: Vec<i64> =
                    set.iter().flat_map(|s| band_outputs(*c, s, *b)).collect();
                difference(left, &counts(&predicted)).is_some()
            };
            // A complete list of the readings' solutions: keep those that
            // fit. Otherwise search again, the check pruning each kernel.
            if complete_lists[k] {
                sol.retain(set_fits);
                continue;
            }
            let mut found: Vec<Kernels> = Vec::new();
            for items in &readings[k] {
                let fits = |slice: &[i64]| {
                    difference(left, &counts(&band_outputs(*c, slice, *b))).is_some()
                };
                let single = kernels_fitting(items, kh, kw, fits);
                for set in kernel_sets(&single, g, items, kw) {
                    if set_fits(&set) && !found.contains(&set) {
                        found.push(set);
                    }
                }
            }
            *sol = found;
        }
        // Whole kernels: classes with one candidate are removed from every
        // pair region first; then each other class's slices of channel
        // c ≥ 1 are paired with its slices of channel 0 by pair region c,
        // one input channel at a time.
        full = bias_classes
            .iter()
            .enumerate()
            .map(|(bi, &(_, g))| whole_kernels(&solved[bi * cin..(bi + 1) * cin], g))
            .collect();
        for (bi, sets) in full.iter().enumerate() {
            if let [set] = sets.as_slice() {
                for c in 1..cin {
                    let l = &mut left[pair_at[c].0];
                    for kernel in set {
                        let y = pair_outputs(c, kernel, bias_classes[bi].0);
                        *l = difference(l, &counts(&y)).unwrap_or_default();
                    }
                }
            }
        }
        for (bi, sets) in full.iter_mut().enumerate() {
            if sets.len() > 1 {
                let (b, g) = bias_classes[bi];
                let per_channel = &solved[bi * cin..(bi + 1) * cin];
                *sets = paired_kernels(per_channel, g, |c, set| {
                    let y: Vec<i64> = set.iter().flat_map(|k| pair_outputs(c, k, b)).collect();
                    difference(&left[pair_at[c].0], &counts(&y)).is_some()
                });
            }
        }
    } else {
        full = bias_classes
            .iter()
            .enumerate()
            .map(|(bi, &(_, g))| whole_kernels(&solved[bi * cin..(bi + 1) * cin], g))
            .collect();
    }
    // Compare with the truth as a multiset of whole kernels per bias:
    // channels sharing a bias are interchangeable, and the channel order is
    // what the policy hides.
    let mut exact = 0usize;
    // (channels, solutions) of each bias class left open.
    let mut open: Vec<(usize, usize)> = Vec::new();
    let whole = cin * kh * kw;
    let kk = kh * kw;
    // True output channel o's kernel, its input channels in label order.
    let true_kernel = |o: usize| -> Vec<i64> {
        previous
            .iter()
            .flat_map(|&c| {
                true_w[(o * cin + c) * kk..(o * cin + c + 1) * kk]
                    .iter()
                    .copied()
            })
            .collect()
    };
    // What the attacker holds for the next round, when every class is
    // solved: its kernels under labels, class after class.
    // When some class is left open, the solved classes alone (`partial`):
    // the slots of their outputs can still be located (AUDIT-9).
    let mut recovered = Known {
        shape,
        weights: Vec::with_capacity(shape.out_channels * whole),
        bias: Vec::with_capacity(shape.out_channels),
        truth: Vec::with_capacity(shape.out_channels),
    };
    let mut complete = true;
    let mut taken = vec![false; shape.out_channels];
    // Channels of the classes no candidate set fits.
    let mut unsolved = 0usize;
    for (&(b, g), sets) in bias_classes.iter().zip(&full) {
        let mut truth: Kernels = (0..shape.out_channels)
            .filter(|&o| true_b[o * positions] == b)
            .map(true_kernel)
            .collect();
        truth.sort();
        match sets.as_slice() {
            [one] if *one == truth => exact += g * whole,
            [_] => {}
            [] => unsolved += g,
            many => open.push((g, many.len())),
        }
        match sets.as_slice() {
            [one] => {
                let k = &mut recovered;
                for kernel in one {
                    // The audit's bookkeeping: the true channel it is.
                    let o = (0..shape.out_channels)
                        .find(|&o| {
                            !taken[o] && true_b[o * positions] == b && true_kernel(o) == *kernel
                        })
                        .or_else(|| (0..shape.out_channels).find(|&o| !taken[o]))
                        .unwrap_or(0);
                    taken[o] = true;
                    k.weights.extend_from_slice(kernel);
                    k.bias.push(b);
                    k.truth.push(o);
                }
            }
            _ => complete = false,
        }
    }
    // A folded sum pool repeats each of the layer's weights in the stage's
    // kernel: count the layer's share of the stage's exact weights.
    let stage_total = shape.out_channels * whole;
    entry.weights.0 = exact * entry.weights.1 / stage_total.max(1);
    entry.outcome = if exact == stage_total {
        Outcome::Recovered
    } else {
        Outcome::Partial
    };
    if r + 1 < model.rounds() {
        if complete {
            known[r] = Some(recovered);
        } else if !recovered.bias.is_empty() {
            recovered.shape.out_channels = recovered.bias.len();
            partial[r] = Some(recovered);
        }
    }
    entry.note = format!(
        "{} probes in {} group(s) of 3 sessions{}{}; {} of {} weights exact{}{}{check_lost}",
        groups.iter().map(Vec::len).sum::<usize>(),
        groups.len(),
        if checked {
            format!(
                ", and {} random image(s) to tell apart and pair the kernels of channels sharing a bias",
                layout.as_ref().map_or(0, Vec::len)
            )
        } else {
            String::new()
        },
        if r > 0 {
            " (each session locates its slots through the recovered rounds)"
        } else {
            ""
        },
        entry.weights.0,
        entry.weights.1,
        open.iter()
            .map(|&(g, n)| format!(
                "; {g} channel(s) sharing a bias: {}{n} solutions fit the readings",
                if n >= MAX_KERNEL_SOLUTIONS {
                    "≥ "
                } else {
                    ""
                }
            ))
            .collect::<String>(),
        match (unsolved, checked || layout.is_none()) {
            (0, _) => String::new(),
            (n, true) => format!("; {n} channel(s) sharing a bias: no candidate fits{}", if layout.is_none() {
                " (no check image fits the input: no rows are seen through every kernel row)"
            } else {
                ""
            }),
            (n, false) => format!("; {n} channel(s) sharing a bias: no candidate fits (the check images did not run: skipped, or the budget ran out)"),
        }
    );
    Ok(())
}

/// AUDIT-7's check, one kernel at a time: every kernel whose value at
/// each position is one the readings allow there (the values of every
/// item that covers the position) and whose predicted outputs `fits`
/// accepts. At most [`MAX_KERNEL_CANDIDATES`] kernels are tried.
fn kernels_fitting(
    items: &[Item],
    kh: usize,
    kw: usize,
    fits: impl Fn(&[i64]) -> bool,
) -> Vec<Vec<i64>> {
    let domain: Vec<Vec<i64>> = match position_multisets(items, kh, kw) {
        Some(per) => per.iter().map(|m| m.keys().copied().collect()).collect(),
        None => allowed_values(items, kh, kw),
    };
    let total = domain
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(d.len()));
    if total.is_none_or(|t| t == 0 || t > MAX_KERNEL_CANDIDATES) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut digits = vec![0usize; kh * kw];
    loop {
        let kernel: Vec<i64> = digits.iter().zip(&domain).map(|(&i, d)| d[i]).collect();
        if fits(&kernel) {
            out.push(kernel);
        }
        // Next index in mixed radix.
        let mut p = 0;
        loop {
            if p == digits.len() {
                return out;
            }
            digits[p] += 1;
            if digits[p] < domain[p].len() {
                break;
            }
            digits[p] = 0;
            p += 1;
        }
    }
}

/// The multiset of values at each kernel position (over the channels
/// that share a bias), when the readings determine it: for each value v,
/// the counts n_p(v) solve Σ_(p ∈ offsets) n_p(v) = (copies of v in the
/// item) over the items, a square or tall system that the offset classes
/// of a padded stride-1 conv make uniquely solvable. `None` when it is not
/// (singular, or a solution that is not whole and non-negative).
fn position_multisets(items: &[Item], kh: usize, kw: usize) -> Option<Vec<Counts>> {
    let n = kh * kw;
    let rows: Vec<Vec<f64>> = items
        .iter()
        .map(|(offsets, _)| {
            (0..n)
                .map(|p| f64::from(u8::from(offsets.contains(&(p / kw, p % kw)))))
                .collect()
        })
        .collect();
    let mut values: Vec<i64> = items
        .iter()
        .flat_map(|(_, ws)| ws.iter().copied())
        .collect();
    values.sort_unstable();
    values.dedup();
    let mut out = vec![Counts::new(); n];
    for v in values {
        let y: Vec<i64> = items
            .iter()
            .map(|(_, ws)| ws.iter().filter(|&&w| w == v).count() as i64)
            .collect();
        let (x, exact) = least_squares_integer(&rows, &y)?;
        if !exact || x.iter().any(|&c| c < 0) {
            return None;
        }
        for (p, &c) in x.iter().enumerate() {
            if c > 0 {
                out[p].insert(v, c as usize);
            }
        }
    }
    Some(out)
}

/// AUDIT-7's check: the multisets of `g` kernels from `single` whose values
/// at each item's offsets are exactly the item's readings (sorted, each
/// set once; at most [`MAX_KERNEL_SOLUTIONS`]).
fn kernel_sets(single: &[Vec<i64>], g: usize, items: &[Item], kw: usize) -> Vec<Kernels> {
    let mut out: Vec<Kernels> = Vec::new();
    let mut pick: Vec<usize> = Vec::with_capacity(g);
    fn go(
        from: usize,
        g: usize,
        single: &[Vec<i64>],
        items: &[Item],
        kw: usize,
        pick: &mut Vec<usize>,
        out: &mut Vec<Kernels>,
    ) {
        if out.len() >= MAX_KERNEL_SOLUTIONS {
            return;
        }
        if pick.len() == g {
            let ok = items.iter().all(|(offsets, ws)| {
                let values: Vec<i64> = pick
                    .iter()
                    .flat_map(|&k| offsets.iter().map(move |&(dy, dx)| single[k][dy * kw + dx]))
                    .collect();
                counts(&values) == counts(ws)
            });
            if ok {
                let mut set: Kernels = pick.iter().map(|&k| single[k].clone()).collect();
                set.sort();
                if !out.contains(&set) {
                    out.push(set);
                }
            }
            return;
        }
        for k in from..single.len() {
            pick.push(k);
            go(k, g, single, items, kw, pick, out);
            pick.pop();
        }
    }
    go(0, g, single, items, kw, &mut pick, &mut out);
    out
}

/// The most kernels AUDIT-7's check image tries per input channel and
/// bias (the product of the values the readings allow per position).
const MAX_KERNEL_CANDIDATES: usize = 1 << 20;

/// A region of an AUDIT-7 check image: rows of the input, set at random in
/// the input channels `set` names.
struct Region {
    rows: std::ops::Range<usize>,
    set: Set,
}

/// The input channels a check region sets.
#[derive(Clone, Copy)]
enum Set {
    /// One channel: its outputs depend on that channel's slices only.
    Band(usize),
    /// Channels 0 and c ≥ 1: their outputs pair the slices of c with
    /// those of 0.
    Pair(usize),
}

/// AUDIT-7's check images: one band of rows per input channel and one pair
/// region per input channel c ≥ 1, where channels 0 and c are set (pairing
/// slices channel by channel takes g!·C_in candidates where one joint
/// region of every channel would take g!^(C_in − 1)); each separated from the next by
/// k_h − 1 zero rows so that no output window spans two of them, and each
/// seen through every kernel row (a region in the padding's reach only,
/// e.g. a single edge row, leaves some kernel rows untested). As many
/// regions go in one session as fit that way, in as few sessions as that
/// takes (one, when all fit); `None` when not even one region fits.
fn check_layout(shape: &Conv2dShape) -> Option<Vec<Vec<Region>>> {
    let cin = shape.in_channels;
    let regions = 2 * cin - 1;
    let gap = shape.kernel_height.saturating_sub(1);
    let out_h = shape.output_height().ok()?;
    let seen_by_every_kernel_row = |rows: &std::ops::Range<usize>| {
        (0..shape.kernel_height).all(|k| {
            (0..out_h).any(|i| {
                (i * shape.stride + k)
                    .checked_sub(shape.padding)
                    .is_some_and(|y| rows.contains(&y))
            })
        })
    };
    // The rows of one session's regions: as many as fit.
    let most = ((shape.in_height + gap) / (1 + gap)).min(regions);
    let slots = (1..=most).rev().find_map(|m| {
        let height = (shape.in_height - gap * (m - 1)) / m;
        let rows: Vec<_> = (0..m)
            .map(|k| k * (height + gap)..k * (height + gap) + height)
            .collect();
        rows.iter().all(seen_by_every_kernel_row).then_some(rows)
    })?;
    let sets: Vec<Set> = (0..regions)
        .map(|i| {
            if i < cin {
                Set::Band(i)
            } else {
                Set::Pair(i - cin + 1)
            }
        })
        .collect();
    let sessions = sets
        .chunks(slots.len())
        .map(|chunk| {
            chunk
                .iter()
                .zip(&slots)
                .map(|(&set, rows)| Region {
                    rows: rows.clone(),
                    set,
                })
                .collect()
        })
        .collect();
    Some(sessions)
}

/// AUDIT-7: the candidate sets of `g` whole kernels (input channel after
/// input channel, the model's layout) of one bias class, from its slice
/// solutions per input channel: every choice of a solution per channel and
/// every pairing of the g slices of channel c > 0 with those of channel 0
/// (sorted, each set once; at most [`MAX_KERNEL_SOLUTIONS`]).
fn whole_kernels(per_channel: &[(i64, usize, Vec<Kernels>)], g: usize) -> Vec<Kernels> {
    let mut sets: Vec<Kernels> = vec![vec![Vec::new(); g]];
    for (i, (_, _, solutions)) in per_channel.iter().enumerate() {
        let orders = if i == 0 {
            vec![(0..g).collect()]
        } else {
            permutations(g, MAX_KERNEL_SOLUTIONS)
        };
        sets = extend_sets(&sets, || {
            solutions
                .iter()
                .filter(|s| s.len() == g)
                .flat_map(|slices| orders.iter().map(|order| order_slices(slices, order)))
        });
    }
    let distinct: std::collections::BTreeSet<Kernels> = sets
        .into_iter()
        .map(|mut set| {
            set.sort();
            set
        })
        .collect();
    distinct.into_iter().collect()
}

/// AUDIT-7: the candidate sets of `g` whole kernels of one bias class,
/// paired by the check's pair regions: for each slice set of channel 0,
/// each channel c ≥ 1's slice sets and orders that `fits(c, kernels)`
/// accepts (the kernels holding only slices 0 and c), then every
/// combination of those over c (sorted, each set once; at most
/// [`MAX_KERNEL_SOLUTIONS`]).
fn paired_kernels(
    per_channel: &[(i64, usize, Vec<Kernels>)],
    g: usize,
    fits: impl Fn(usize, &Kernels) -> bool,
) -> Vec<Kernels> {
    let Some(((_, _, first), rest)) = per_channel.split_first() else {
        return Vec::new();
    };
    let kk = first.first().and_then(|s| s.first()).map_or(0, Vec::len);
    let orders = permutations(g, MAX_KERNEL_SOLUTIONS);
    let mut out: std::collections::BTreeSet<Kernels> = Default::default();
    for zero in first.iter().filter(|s| s.len() == g) {
        // Per channel c ≥ 1: the slices (in channel 0's order) that fit.
        let mut choices: Vec<Vec<Kernels>> = Vec::with_capacity(rest.len());
        for (i, (_, _, solutions)) in rest.iter().enumerate() {
            let c = i + 1;
            let mut fitting = Vec::new();
            for slices in solutions.iter().filter(|s| s.len() == g) {
                for order in &orders {
                    let paired = order_slices(slices, order);
                    // Kernels with zero slices but at 0 and c.
                    let kernels: Kernels = (0..g)
                        .map(|j| {
                            let mut k = vec![0; (c + 1) * kk];
                            k[..kk].copy_from_slice(&zero[j]);
                            k[c * kk..].copy_from_slice(&paired[j]);
                            k
                        })
                        .collect();
                    if fits(c, &kernels) && !fitting.contains(&paired) {
                        fitting.push(paired);
                    }
                }
            }
            choices.push(fitting);
        }
        let mut sets: Vec<Kernels> = vec![zero.clone()];
        for fitting in &choices {
            sets = extend_sets(&sets, || fitting.iter().cloned());
        }
        for mut set in sets {
            set.sort();
            out.insert(set);
            if out.len() >= MAX_KERNEL_SOLUTIONS {
                return out.into_iter().collect();
            }
        }
    }
    out.into_iter().collect()
}

/// `slices` in `order`: slice `order[j]` for kernel j.
fn order_slices(slices: &[Vec<i64>], order: &[usize]) -> Kernels {
    order.iter().map(|&o| slices[o].clone()).collect()
}

/// One input channel's step in building whole kernels: every partial set
/// of `sets` extended by every choice of `choices` (g slices, slice j
/// appended to kernel j), at most [`MAX_KERNEL_SOLUTIONS`] in all.
fn extend_sets<I: Iterator<Item = Kernels>>(
    sets: &[Kernels],
    choices: impl Fn() -> I,
) -> Vec<Kernels> {
    let mut next = Vec::new();
    for partial in sets {
        for choice in choices() {
            if next.len() >= MAX_KERNEL_SOLUTIONS {
                return next;
            }
            let mut grown = partial.clone();
            for (kernel, slice) in grown.iter_mut().zip(&choice) {
                kernel.extend_from_slice(slice);
            }
            next.push(grown);
        }
    }
    next
}

/// Up to `cap` permutations of 0..n, in lexicographic order.
fn permutations(n: usize, cap: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut p: Vec<usize> = (0..n).collect();
    loop {
        out.push(p.clone());
        if out.len() >= cap {
            return out;
        }
        // Next permutation.
        let Some(i) = (1..n).rev().find(|&i| p[i - 1] < p[i]) else {
            return out;
        };
        let j = (i..n).rev().find(|&j| p[j] > p[i - 1]).unwrap_or(i);
        p.swap(i - 1, j);
        p[i..].reverse();
    }
}

/// The input rows output row `i` reads (inside the input).
fn window_rows(shape: &Conv2dShape, i: usize) -> impl Iterator<Item = usize> {
    let top = (i * shape.stride) as i64 - shape.padding as i64;
    let height = shape.in_height as i64;
    (top..top + shape.kernel_height as i64)
        .filter(move |&y| (0..height).contains(&y))
        .map(|y| y as usize)
}

/// AUDIT-7's attribution: a multiset of readings that uses every value of
/// the three sessions' remaining multisets once, each reading on a line
/// b + v·w through its probe's value triple, with exactly g_b·|offsets|
/// readings per (bias, probe). An exact cover with multiplicities: each
/// candidate reading covers one unit of four needs (its value in each
/// session and its (bias, probe) quota).
///
/// Zero weights are not searched: a reading b + v·0 is the bias b in all
/// three sessions whichever probe it belongs to, so the search places the
/// nonzero readings only, and the copies of b left in each session must
/// then equal the quotas b has left, which the zero readings fill. Two
/// bounds keep the search on that course: a session cannot hold more
/// copies of b than the zeros left can explain (the excess needs nonzero
/// readings), and b's quotas cannot exceed its fewest copies left (the
/// surplus needs nonzero readings of bias b). Without them a stem of many
/// zero weights, like the zoo's, sends the search through every way of
/// sharing the zeros out.
///
/// The search branches on the tightest requirement (fewest options); a
/// requirement its options cannot reach, each at most as often as its
/// smallest need allows, cuts the subtree; a candidate tried and left is
/// not used again by its siblings' subtrees, so each multiset of readings
/// is reached once. Returns up to [`MAX_COVERS`] distinct covers (none
/// when there is none, or past a million nodes).
fn exact_covers(rest: &[Counts], group: &[Probe], biases: &[(i64, usize)]) -> Vec<Vec<Reading>> {
    use std::collections::BTreeMap;
    let mut need: Vec<usize> = Vec::new();
    let mut index: BTreeMap<(usize, i64), usize> = BTreeMap::new();
    for (i, r) in rest.iter().enumerate() {
        for (&v, &n) in r {
            index.insert((i, v), need.len());
            need.push(n);
        }
    }
    let mut quota_index: BTreeMap<(i64, usize), usize> = BTreeMap::new();
    for &(b, g) in biases {
        for (t, p) in group.iter().enumerate() {
            quota_index.insert((b, t), need.len());
            need.push(g * p.offsets.len());
        }
    }
    let mut candidates: Vec<(Reading, [usize; 4])> = Vec::new();
    for &a in rest[0].keys() {
        for &(b, _) in biases {
            for (t, p) in group.iter().enumerate() {
                let [v0, v1, v2] = p.values;
                if (a - b) % v0 != 0 || a == b {
                    continue;
                }
                let w = (a - b) / v0;
                let seen = [a, b + v1 * w, b + v2 * w];
                if let (Some(&n0), Some(&n1), Some(&n2)) = (
                    index.get(&(0, seen[0])),
                    index.get(&(1, seen[1])),
                    index.get(&(2, seen[2])),
                ) {
                    let reading = Reading {
                        bias: b,
                        probe: t,
                        w,
                    };
                    candidates.push((reading, [n0, n1, n2, quota_index[&(b, t)]]));
                }
            }
        }
    }
    let mut touching: Vec<Vec<usize>> = vec![Vec::new(); need.len()];
    for (k, (_, cs)) in candidates.iter().enumerate() {
        for &c in cs {
            touching[c].push(k);
        }
    }
    // Per bias: its quota needs, its value need in each session (if the
    // value occurs there), and the candidates of that bias.
    struct Bias {
        quotas: Vec<usize>,
        copies: [Option<usize>; 3],
        readings: Vec<usize>,
    }
    let bias_needs: Vec<Bias> = biases
        .iter()
        .map(|&(b, _)| Bias {
            quotas: (0..group.len()).map(|t| quota_index[&(b, t)]).collect(),
            copies: [0, 1, 2].map(|i| index.get(&(i, b)).copied()),
            readings: (0..candidates.len())
                .filter(|&k| candidates[k].0.bias == b)
                .collect(),
        })
        .collect();
    // Value needs the zero readings can never fill.
    let hard: Vec<usize> = index
        .iter()
        .filter(|((_, v), _)| !biases.iter().any(|&(b, _)| b == *v))
        .map(|(_, &c)| c)
        .collect();
    struct Search<'a> {
        candidates: &'a [(Reading, [usize; 4])],
        touching: &'a [Vec<usize>],
        hard: &'a [usize],
        biases: &'a [Bias],
        need: Vec<usize>,
        banned: Vec<bool>,
        chosen: Vec<usize>,
        found: Vec<Vec<usize>>,
        nodes: usize,
    }
    impl Search<'_> {
        /// How often candidate k can still be taken (0: not at all).
        fn room(&self, k: usize) -> usize {
            if self.banned[k] {
                return 0;
            }
            self.candidates[k]
                .1
                .iter()
                .map(|&c| self.need[c])
                .min()
                .unwrap_or(0)
        }
        /// The requirements still open, each as (options, units needed);
        /// `None` when one of them cannot be met.
        fn requirements(&self) -> Option<Vec<(Vec<usize>, usize)>> {
            let mut open = Vec::new();
            let mut require = |options: &[usize], units: usize| -> bool {
                if units == 0 {
                    return true;
                }
                let viable: Vec<usize> = options
                    .iter()
                    .copied()
                    .filter(|&k| self.room(k) > 0)
                    .collect();
                let reach: usize = viable.iter().map(|&k| self.room(k)).sum();
                open.push((viable, units));
                reach >= units
            };
            for &c in self.hard {
                if !require(&self.touching[c], self.need[c]) {
                    return None;
                }
            }
            for b in self.biases {
                let zeros: usize = b.quotas.iter().map(|&c| self.need[c]).sum();
                let copies = b.copies.map(|c| c.map_or(0, |c| self.need[c]));
                for (i, &have) in copies.iter().enumerate() {
                    if let Some(c) = b.copies[i] {
                        if !require(&self.touching[c], have.saturating_sub(zeros)) {
                            return None;
                        }
                    }
                }
                let fewest = copies.iter().copied().min().unwrap_or(0);
                if !require(&b.readings, zeros.saturating_sub(fewest)) {
                    return None;
                }
            }
            Some(open)
        }
        /// Collects covers until [`MAX_COVERS`] are found; true to stop.
        fn run(&mut self) -> bool {
            self.nodes += 1;
            if self.nodes > 1_000_000 {
                return true;
            }
            let Some(open) = self.requirements() else {
                return false;
            };
            let Some((options, _)) = open.into_iter().min_by_key(|(o, _)| o.len()) else {
                let mut cover = self.chosen.clone();
                cover.sort_unstable();
                if !self.found.contains(&cover) {
                    self.found.push(cover);
                }
                return self.found.len() >= MAX_COVERS;
            };
            let mut stop = false;
            for &k in &options {
                let cs = self.candidates[k].1;
                for c in cs {
                    self.need[c] -= 1;
                }
                self.chosen.push(k);
                stop = self.run();
                self.chosen.pop();
                for c in cs {
                    self.need[c] += 1;
                }
                if stop {
                    break;
                }
                self.banned[k] = true;
            }
            for &k in &options {
                self.banned[k] = false;
            }
            stop
        }
    }
    let mut search = Search {
        candidates: &candidates,
        touching: &touching,
        hard: &hard,
        biases: &bias_needs,
        need,
        banned: vec![false; candidates.len()],
        chosen: Vec::new(),
        found: Vec::new(),
        nodes: 0,
    };
    search.run();
    // Each cover's zero readings fill what its quotas have left.
    search
        .found
        .iter()
        .map(|cover| {
            let mut readings: Vec<Reading> = cover.iter().map(|&k| candidates[k].0).collect();
            for &(b, g) in biases {
                for (t, p) in group.iter().enumerate() {
                    let placed = readings
                        .iter()
                        .filter(|r| r.bias == b && r.probe == t)
                        .count();
                    readings.extend((placed..g * p.offsets.len()).map(|_| Reading {
                        bias: b,
                        probe: t,
                        w: 0,
                    }));
                }
            }
            readings
        })
        .collect()
}

/// The most attributions AUDIT-7 enumerates per probe group.
const MAX_COVERS: usize = 256;

/// The most kernel solutions AUDIT-7 enumerates per bias class.
const MAX_KERNEL_SOLUTIONS: usize = 4096;

/// AUDIT-7: the values each kernel position (row-major) may take: those
/// read by every item that covers it (empty if none does).
fn allowed_values(items: &[Item], kh: usize, kw: usize) -> Vec<Vec<i64>> {
    (0..kh * kw)
        .map(|pos| {
            let at = (pos / kw, pos % kw);
            let mut values: Option<Vec<i64>> = None;
            for (_, ws) in items.iter().filter(|(o, _)| o.contains(&at)) {
                let mut v = ws.to_vec();
                v.sort_unstable();
                v.dedup();
                values = Some(match values {
                    None => v,
                    Some(old) => old.into_iter().filter(|x| v.contains(x)).collect(),
                });
            }
            values.unwrap_or_default()
        })
        .collect()
}

/// AUDIT-7's kernel solve: every set of `g` kernels (kh × kw, row-major,
/// sorted, so channels sharing a bias are not counted twice) whose values at
/// each item's offsets, over all g kernels, are the item's multiset. A
/// folded sum pool of side `block` (1: none) repeats each layer weight over
/// a block × block square of the stage's kernel, which the attacker knows
/// from the architecture: the solve assigns one value per square. At most
/// [`MAX_KERNEL_SOLUTIONS`] are returned, and whether the list is complete
/// (no cap was hit).
fn solve_kernels(
    items: &[Item],
    g: usize,
    kh: usize,
    kw: usize,
    block: usize,
) -> (Vec<Kernels>, bool) {
    let (bh, bw) = (kh / block, kw / block);
    let squares = bh * bw;
    // Candidate values per square: those every covering item allows at
    // every position of the square.
    let per_position = allowed_values(items, kh, kw);
    let members = |sq: usize| {
        let (y, x) = (sq / bw, sq % bw);
        (0..block).flat_map(move |a| (0..block).map(move |b| (y * block + a, x * block + b)))
    };
    let domain: Vec<Vec<i64>> = (0..squares)
        .map(|sq| {
            let mut values: Option<Vec<i64>> = None;
            for (y, x) in members(sq) {
                let here = &per_position[y * kw + x];
                values = Some(match values {
                    None => here.clone(),
                    Some(old) => old.into_iter().filter(|v| here.contains(v)).collect(),
                });
            }
            values.unwrap_or_default()
        })
        .collect();
    // Per square: the items that cover it, and at how many of its positions.
    let touched: Vec<Vec<(usize, usize)>> = (0..squares)
        .map(|sq| {
            (0..items.len())
                .filter_map(|i| {
                    let n = members(sq).filter(|at| items[i].0.contains(at)).count();
                    (n > 0).then_some((i, n))
                })
                .collect()
        })
        .collect();
    let mut assign = vec![0i64; g * squares];
    let mut out: Vec<Kernels> = Vec::new();
    let mut nodes = 0usize;
    // Remaining multiset per item, decremented as squares are assigned.
    let mut remaining: Vec<Counts> = items.iter().map(|(_, ws)| counts(ws)).collect();
    struct Search<'a> {
        g: usize,
        squares: usize,
        domain: &'a [Vec<i64>],
        touched: &'a [Vec<(usize, usize)>],
        expand: &'a dyn Fn(&[i64]) -> Vec<i64>,
    }
    fn go(
        k: usize,
        s: &Search<'_>,
        assign: &mut Vec<i64>,
        remaining: &mut [Counts],
        out: &mut Vec<Kernels>,
        nodes: &mut usize,
    ) {
        *nodes += 1;
        if out.len() >= MAX_KERNEL_SOLUTIONS || *nodes > 2_000_000 {
            return;
        }
        if k == s.g * s.squares {
            if remaining.iter().all(|r| r.values().all(|&n| n == 0)) {
                let mut kernels: Vec<Vec<i64>> =
                    assign.chunks(s.squares).map(|c| (s.expand)(c)).collect();
                kernels.sort();
                if !out.contains(&kernels) {
                    out.push(kernels);
                }
            }
            return;
        }
        let (copy, sq) = (k / s.squares, k % s.squares);
        for &v in &s.domain[sq] {
            // Kernels in non-decreasing order: a later copy never sorts
            // before an earlier one once its prefix is equal (the squares'
            // row-major order is the expanded kernels' order).
            if copy > 0 && sq == s.squares - 1 {
                let prev = &assign[(copy - 1) * s.squares..copy * s.squares];
                let mut this = assign[copy * s.squares..k].to_vec();
                this.push(v);
                if this.as_slice() < prev {
                    continue;
                }
            }
            let fits = s.touched[sq]
                .iter()
                .all(|&(i, n)| remaining[i].get(&v).is_some_and(|&m| m >= n));
            if !fits {
                continue;
            }
            for &(i, n) in &s.touched[sq] {
                *remaining[i].get_mut(&v).expect("checked") -= n;
            }
            assign[k] = v;
            go(k + 1, s, assign, remaining, out, nodes);
            for &(i, n) in &s.touched[sq] {
                *remaining[i].get_mut(&v).expect("checked") += n;
            }
        }
    }
    if domain.iter().any(Vec::is_empty) {
        return (out, true);
    }
    let expand = |squares_of_one: &[i64]| -> Vec<i64> {
        (0..kh * kw)
            .map(|pos| squares_of_one[(pos / kw / block) * bw + (pos % kw) / block])
            .collect()
    };
    let search = Search {
        g,
        squares,
        domain: &domain,
        touched: &touched,
        expand: &expand,
    };
    go(
        0,
        &search,
        &mut assign,
        &mut remaining,
        &mut out,
        &mut nodes,
    );
    let complete = out.len() < MAX_KERNEL_SOLUTIONS && nodes <= 2_000_000;
    (out, complete)
}

/// AUDIT-6 (blind d + 1): a mat-vec in the last round (outputs unshuffled)
/// whose input the server unshuffles with a permutation the attacker does
/// not know. An upload equal in every slot is the same after any
/// permutation, so a base session gives W·base + b; base + v at one fixed
/// slot gives v times one column of W, the column the session's secret
/// permutation sends that slot to. Each session thus returns one column, of
/// unknown index: all d columns, as a multiset, take about d·H_d sessions
/// (coupon collector). Earlier rounds get constant uploads in their range.
/// The attack stops at d distinct columns, the budget, or d·(ln d + 10)
/// column sessions (all d are then seen with probability ≥ 1 − e^-10).
fn blind_columns(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    bias_reading: Option<&[i64]>,
    sigma: Option<u32>,
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    entry.attack = "blind d + 1";
    let stage = &model.stages()[r];
    let Some(shape) = stage.matvec_shape() else {
        return Ok(());
    };
    let (true_w, true_b) = stage.weights_and_bias();
    // The stage's distinct columns: a folded sum pool repeats each of the
    // layer's columns once per pooled position, and the attacker, who knows
    // the architecture, collects the distinct ones.
    let mut distinct: Vec<Vec<i64>> = Vec::new();
    for column in matvec_columns(true_w, &shape) {
        if !distinct.contains(&column) {
            distinct.push(column);
        }
    }
    let ranges = upload_ranges(model, spec, r);
    let (base, v) = column_probe_step(ranges[r], sigma);
    if v == 0 {
        entry.note = "the input range holds one value: nothing to probe".into();
        return Ok(());
    }
    let m = distinct.len() as f64;
    let cap = (m * (m.ln() + 10.0)).ceil() as usize + 1;
    // The bias probe's round-r reading is W·0 + b in true order: the base
    // session's reading when the base is 0, which saves that session.
    let mut at_base: Option<Vec<i64>> = bias_reading.filter(|_| base == 0).map(<[i64]>::to_vec);
    // Columns seen (as v·column differences), and the true columns matched.
    let mut seen: Vec<Vec<i64>> = Vec::new();
    let mut matched = vec![false; distinct.len()];
    // Under noise (AUDIT-6): every session's estimate, none merged.
    let mut estimates: Vec<(Option<usize>, Vec<f64>)> = Vec::new();
    let mut budget_hit = false;
    for _ in 0..cap {
        let Some(mut live) = open_at_round(oracle, model, &ranges, r)? else {
            budget_hit = true;
            break;
        };
        entry.sessions += 1;
        let mut x = vec![base; shape.cols];
        if at_base.is_some() {
            x[0] = base + v;
        }
        let y = step(oracle, &mut live, &x)?;
        let Some(y0) = &at_base else {
            at_base = Some(y);
            continue;
        };
        let diff: Vec<i64> = y.iter().zip(y0).map(|(a, b)| a - b).collect();
        if sigma.is_some() {
            estimates.push((None, column_estimate(&y, y0, v)));
        }
        if !seen.contains(&diff) {
            // Exact when it is v times a true column not matched yet.
            if let Some(k) = (0..distinct.len())
                .find(|&k| !matched[k] && distinct[k].iter().zip(&diff).all(|(w, dv)| v * w == *dv))
            {
                matched[k] = true;
            }
            seen.push(diff);
        }
        // Under noise equal differences no longer mean one column, nor
        // different ones two: the count of distinct differences says
        // nothing, and the collection runs to the budget or the cap.
        if sigma.is_none() && seen.len() == distinct.len() {
            break;
        }
    }
    let columns = matched.iter().filter(|&&m| m).count();
    let all = columns == distinct.len();
    let bias_exact = all
        && at_base
            .as_ref()
            .is_some_and(|y0| bias_matches(y0, &shape, true_w, true_b, base));
    entry.weights.0 = (columns * shape.rows).min(entry.weights.1);
    entry.outcome = if all && bias_exact {
        Outcome::Recovered
    } else if budget_hit {
        Outcome::StoppedByBudget
    } else if sigma.is_some() {
        Outcome::Approximate
    } else {
        Outcome::Partial
    };
    entry.note = format!(
        "{columns} of {} distinct columns exact, up to their order, in {} sessions (one column per session; all of them take ≈ m·H_m = {:.0} in expectation){}",
        distinct.len(),
        entry.sessions,
        m * (1..=distinct.len()).map(|k| 1.0 / k as f64).sum::<f64>(),
        match entry.outcome {
            Outcome::StoppedByBudget => " before the budget ran out",
            Outcome::Partial | Outcome::Approximate => " before the tool's session cap",
            _ => "",
        }
    );
    if let Some(sigma) = sigma {
        entry.record_noisy(noisy_columns(&estimates, &distinct, sigma, v));
    }
    Ok(())
}

/// What AUDIT-9 locates the logits' input through: round r − 1's
/// recovered stage (`complete`: every output channel; otherwise only the
/// channels solved, under labels 0..), and the bias probe's round-r
/// values, which are the logits' biases in true order.
struct Located<'a> {
    last: &'a Known,
    complete: bool,
    base: Option<&'a [i64]>,
}

/// What one AUDIT-9 session raises at round r; every other slot is 0.
#[derive(Clone, Copy)]
enum Raise {
    /// Nothing: the base session, W·0 + b.
    Nothing,
    /// The slot holding label position j of round r's input.
    Position(usize),
    /// A slot whose value no recovered channel predicts: a position of a
    /// channel left open, of unknown index.
    Unlocated,
}

/// What one AUDIT-9 session returned.
enum Column {
    /// The logits, in true order.
    Seen(Vec<i64>),
    /// The raised slot could not be told apart (its value also came from
    /// an open channel, or no slot was unexplained); the session counts.
    Missed,
    Budget,
    Lost(String),
}

/// Inputs AUDIT-9 compares offline for the one that puts the target's
/// value farthest from the others.
const CANDIDATE_INPUTS: usize = 64;

/// Sessions AUDIT-9 spends on one located column before giving it up: a
/// miss needs an open channel to return the target's value, rare once the
/// target's value is chosen far out (AUDIT-9), so eight misses in a row
/// are rarer still.
const LOCATE_ATTEMPTS: usize = 8;

/// AUDIT-9: one session that raises one slot of round r's input by `v`.
/// Rounds 0..r − 1 are played by [`walk_to_round`]. Round r − 1's input is
/// searched offline so that the target position predicts a value of its
/// own, the farthest from the middle of the predicted values of the first
/// [`CANDIDATE_INPUTS`] that do (an open channel is then less likely to
/// return it too); the slot that returns that value (the only one, or the
/// session is a miss) is the target's slot.
#[allow(clippy::too_many_arguments)]
fn column_session(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    known: &[Option<Known>],
    located: &Located<'_>,
    raise: Raise,
    v: i64,
) -> Result<Column, AuditError> {
    let target = match raise {
        Raise::Position(j) => Some(j),
        Raise::Nothing | Raise::Unlocated => None,
    };
    let apart = |y: &[i64]| {
        let Some(j) = target else { return Some(0) };
        let &t = y.get(j)?;
        if y.iter().filter(|&&u| u == t).count() != 1 {
            return None;
        }
        let mut sorted = y.to_vec();
        sorted.sort_unstable();
        Some(t.abs_diff(sorted[sorted.len() / 2]))
    };
    let last = LastInput {
        score: &apart,
        enough: if target.is_some() {
            CANDIDATE_INPUTS
        } else {
            1
        },
        wanted: "gives the raised position a value of its own",
    };
    let stage = |k: usize| {
        if k + 1 == r {
            Some(located.last)
        } else {
            known[k].as_ref()
        }
    };
    let (mut live, seen, predicted) =
        match walk_to_round(oracle, model, spec, r, &stage, last, located.complete)? {
            Walk::At {
                live,
                seen,
                predicted,
                ..
            } => (live, seen, predicted),
            Walk::Budget => return Ok(Column::Budget),
            Walk::Lost(why) => return Ok(Column::Lost(why)),
        };
    let raised = match raise {
        Raise::Nothing => None,
        Raise::Position(j) => {
            let mut at = (0..seen.len()).filter(|&s| seen[s] == predicted[j]);
            match (at.next(), at.next()) {
                (Some(s), None) => Some(s),
                _ => return Ok(Column::Missed),
            }
        }
        Raise::Unlocated => {
            let explained = counts(&predicted);
            let free: Vec<usize> = (0..seen.len())
                .filter(|&s| !explained.contains_key(&seen[s]))
                .collect();
            if free.is_empty() {
                return Ok(Column::Missed);
            }
            let pick = Csprng::from_os().uniform_below(free.len() as u64) as usize;
            Some(free[pick])
        }
    };
    let mut upload = vec![0i64; model.stages()[r].input_len()];
    if let Some(s) = raised {
        upload[s] = v;
    }
    Ok(Column::Seen(step(oracle, &mut live, &upload)?))
}

/// The folded pool's window side p over the planes of `last`'s outputs
/// (1: none), from the architecture: the layer's `layer_cols` columns are
/// the stage's `cols` inputs pooled p × p; and the label offset within a
/// plane of each window's first position, the one AUDIT-9 raises.
fn pool_windows(last: &Known, cols: usize, layer_cols: usize) -> (usize, Vec<usize>) {
    let (h, w) = (
        last.shape.output_height().unwrap_or(0),
        last.shape.output_width().unwrap_or(0),
    );
    let p = (1..=h.max(1))
        .find(|&p| h % p == 0 && w % p == 0 && p * p * layer_cols == cols)
        .unwrap_or(1);
    let windows = (0..h / p)
        .flat_map(|y| (0..w / p).map(move |x| y * p * w + x * p))
        .collect();
    (p, windows)
}

/// AUDIT-9 in sessions of k images (PROTO-11, [`AuditOptions::batch`]):
/// the located d + 1 with one column per image. The walk is
/// [`walk_to_round`]'s on the batched model, whose recovered stages are
/// the single ones block-diagonal ([`Known::batched`]): one σ per round
/// over the k images' values, located as one image's are. Round r − 1's
/// input is searched offline so that every image's target position
/// predicts a value of its own among all k images' values, and each image
/// raises its own; a target whose slot could not be told apart is tried
/// again in a later session. Each session is charged k queries, so the
/// columns cost the queries single sessions cost (`proofs/batching.md`),
/// in about k times fewer sessions. Run only behind a round recovered
/// whole, without noise, with the bias probe's logits as the base.
#[allow(clippy::too_many_arguments)]
fn located_columns_batched(
    oracle: &mut Oracle<'_>,
    (model, batched): (&CompiledModel, &CompiledModel),
    spec: crate::model::InputSpec,
    r: usize,
    known: &[Option<Known>],
    located: Located<'_>,
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    let stage = &model.stages()[r];
    let (Some(shape), Some(y0)) = (stage.matvec_shape(), located.base) else {
        return Ok(());
    };
    let k = batched.batch();
    let (zero, v) = probe_step(upload_ranges(model, spec, r)[r]);
    let last = located.last;
    let hw = plane(&last.shape);
    if zero != 0 || v == 0 || hw == 0 || shape.cols % hw != 0 {
        return located_columns(oracle, model, spec, r, known, located, None, entry);
    }
    entry.attack = "located d + 1";
    entry.images_per_session = k;
    let layer_cols = entry.weights.1 / shape.rows.max(1);
    let (p, windows) = pool_windows(last, shape.cols, layer_cols);
    let (true_w, true_b) = stage.weights_and_bias();
    let column = |j: usize| -> Vec<i64> {
        (0..shape.rows)
            .map(|i| v * true_w[i * shape.cols + j])
            .collect()
    };
    // The recovered rounds, for k images.
    let lifted: Vec<Option<Known>> = known[..r]
        .iter()
        .map(|kn| kn.as_ref().map(|kn| kn.batched(k)))
        .collect();
    let last_lifted = last.batched(k);
    let stages = |i: usize| {
        if i + 1 == r {
            Some(&last_lifted)
        } else {
            lifted[i].as_ref()
        }
    };
    // (label position in one image, attempts so far), in column order.
    let mut pending: std::collections::VecDeque<(usize, usize)> = (0..last.shape.out_channels)
        .flat_map(|c| windows.iter().map(move |&offset| (c * hw + offset, 0)))
        .collect();
    let wanted = pending.len();
    let (mut exact, mut misses, mut sessions) = (0usize, 0usize, 0u64);
    let (mut budget_hit, mut lost) = (false, String::new());
    oracle.batch = k as u32;
    while !pending.is_empty() && !budget_hit && lost.is_empty() {
        let targets: Vec<(usize, usize)> = (0..k.min(pending.len()))
            .filter_map(|_| pending.pop_front())
            .collect();
        // Image i's target, in the batched labels of round r's input.
        let labels: Vec<usize> = targets
            .iter()
            .enumerate()
            .map(|(i, &(j, _))| i * shape.cols + j)
            .collect();
        let apart = |y: &[i64]| {
            let mut sorted = y.to_vec();
            sorted.sort_unstable();
            let middle = sorted[sorted.len() / 2];
            labels
                .iter()
                .map(|&l| {
                    let &t = y.get(l)?;
                    let alone = sorted.partition_point(|&u| u < t) + 1
                        == sorted.partition_point(|&u| u <= t);
                    alone.then(|| t.abs_diff(middle))
                })
                .min()
                .flatten()
        };
        let choice = LastInput {
            score: &apart,
            enough: CANDIDATE_INPUTS,
            wanted: "gives every image's raised position a value of its own",
        };
        let walked = walk_to_round(oracle, batched, spec, r, &stages, choice, true);
        let (mut live, seen, predicted) = match walked {
            Ok(Walk::At {
                live,
                seen,
                predicted,
                ..
            }) => (live, seen, predicted),
            Ok(Walk::Budget) => {
                budget_hit = true;
                break;
            }
            Ok(Walk::Lost(why)) => {
                sessions += 1;
                lost = why;
                break;
            }
            Err(e) => {
                oracle.batch = 1;
                return Err(e);
            }
        };
        sessions += 1;
        let mut upload = vec![0i64; batched.stages()[r].input_len()];
        let mut raised = vec![false; targets.len()];
        for (i, &l) in labels.iter().enumerate() {
            let mut at = (0..seen.len()).filter(|&s| seen[s] == predicted[l]);
            if let (Some(s), None) = (at.next(), at.next()) {
                upload[s] = v;
                raised[i] = true;
            }
        }
        let y = match step(oracle, &mut live, &upload) {
            Ok(y) => y,
            Err(e) => {
                oracle.batch = 1;
                return Err(e);
            }
        };
        for (i, (&(j, attempts), logits)) in targets.iter().zip(y.chunks(shape.rows)).enumerate() {
            if !raised[i] {
                misses += 1;
                if attempts + 1 < LOCATE_ATTEMPTS {
                    pending.push_back((j, attempts + 1));
                }
                continue;
            }
            let diff: Vec<i64> = logits.iter().zip(y0).map(|(a, b)| a - b).collect();
            let truth = last.truth.get(j / hw).map(|&t| t * hw + j % hw);
            exact += usize::from(truth.map(&column) == Some(diff));
        }
    }
    oracle.batch = 1;
    entry.sessions = sessions;
    entry.columns = Some(ColumnSources {
        total: layer_cols,
        located: exact,
        located_sessions: sessions,
        ..ColumnSources::default()
    });
    settle_columns(
        entry,
        exact == wanted,
        y0 == true_b,
        budget_hit,
        exact * shape.rows,
    );
    let pool = folded_pool_phrase(p);
    let mut note = format!(
        "{exact} of {wanted} columns located and exact in {sessions} sessions of {k} images ({} queries, {misses} missed{pool}), biases from the bias probe's session",
        sessions * k as u64
    );
    if budget_hit {
        note.push_str(&format!(
            "; the budget stopped it after {sessions} session(s), during the located columns"
        ));
    } else if !lost.is_empty() {
        note.push_str(&format!("; stopped: {lost}"));
    }
    entry.note = note;
    Ok(())
}

/// The located d + 1's verdict: every weight when every column is exact
/// (otherwise `exact_weights`, capped at the layer's), and recovered only
/// with the biases exact too.
fn settle_columns(
    entry: &mut StageReport,
    all_columns: bool,
    bias_exact: bool,
    budget_hit: bool,
    exact_weights: usize,
) {
    entry.weights.0 = if all_columns {
        entry.weights.1
    } else {
        exact_weights.min(entry.weights.1)
    };
    entry.outcome = if all_columns && bias_exact {
        Outcome::Recovered
    } else if budget_hit {
        Outcome::StoppedByBudget
    } else {
        Outcome::Partial
    };
}

/// The note's phrase for a folded sum pool of window side `p` (1: none).
fn folded_pool_phrase(p: usize) -> String {
    if p > 1 {
        format!(", one position per {p}×{p} window of the folded pool")
    } else {
        String::new()
    }
}

/// AUDIT-9 (located d + 1: a mat-vec in the last round behind element-
/// shuffled rounds the audit recovered): the logits return in true order,
/// so with each slot of the input located a one-hot of v at label position
/// j gives v times column j, one session per column, the biases coming from
/// the bias probe's session (zero uploads: W·0 + b). A folded sum pool
/// repeats each layer column over its window, which the attacker knows
/// from the architecture: one position per window is raised. Behind a
/// round recovered only in part, the open channels' positions cannot be
/// located: their columns are collected blind (AUDIT-6), each session
/// raising a slot no recovered channel's prediction explains.
#[allow(clippy::too_many_arguments)]
fn located_columns(
    oracle: &mut Oracle<'_>,
    model: &CompiledModel,
    spec: crate::model::InputSpec,
    r: usize,
    known: &[Option<Known>],
    located: Located<'_>,
    sigma: Option<u32>,
    entry: &mut StageReport,
) -> Result<(), AuditError> {
    let stage = &model.stages()[r];
    let Some(shape) = stage.matvec_shape() else {
        return Ok(());
    };
    let (zero, v) = probe_step(upload_ranges(model, spec, r)[r]);
    let last = located.last;
    let hw = plane(&last.shape);
    if zero != 0 || v == 0 || hw == 0 || shape.cols % hw != 0 {
        // The one-hot needs 0 around its raised slot, and whole planes.
        return blind_columns(oracle, model, spec, r, located.base, sigma, entry);
    }
    entry.attack = if located.complete {
        "located d + 1"
    } else {
        "located + blind"
    };
    let channels = shape.cols / hw;
    let layer_cols = entry.weights.1 / shape.rows.max(1);
    let (p, windows) = pool_windows(last, shape.cols, layer_cols);
    let (true_w, true_b) = stage.weights_and_bias();
    let column = |j: usize| -> Vec<i64> {
        (0..shape.rows)
            .map(|i| v * true_w[i * shape.cols + j])
            .collect()
    };
    let mut sources = ColumnSources {
        total: layer_cols,
        ..ColumnSources::default()
    };
    let mut budget_hit = false;
    let mut lost = String::new();
    let mut misses = 0usize;
    // The biases: the bias probe's logits, or one base session.
    let mut y0 = located.base.map(<[i64]>::to_vec);
    if y0.is_none() {
        match column_session(oracle, model, spec, r, known, &located, Raise::Nothing, v)? {
            Column::Seen(y) => y0 = Some(y),
            Column::Budget => budget_hit = true,
            Column::Missed => {}
            Column::Lost(why) => lost = why,
        }
        sources.located_sessions += u64::from(!budget_hit);
    }
    let solved = last.shape.out_channels;
    'columns: for c in 0..solved {
        for &offset in &windows {
            if budget_hit || !lost.is_empty() || y0.is_none() {
                break 'columns;
            }
            let j = c * hw + offset;
            for _ in 0..LOCATE_ATTEMPTS {
                let raise = Raise::Position(j);
                match column_session(oracle, model, spec, r, known, &located, raise, v)? {
                    Column::Budget => {
                        budget_hit = true;
                        break;
                    }
                    Column::Lost(why) => {
                        sources.located_sessions += 1;
                        lost = why;
                        break;
                    }
                    Column::Missed => {
                        sources.located_sessions += 1;
                        misses += 1;
                    }
                    Column::Seen(y) => {
                        sources.located_sessions += 1;
                        let base = y0.as_deref().unwrap_or_default();
                        let diff: Vec<i64> = y.iter().zip(base).map(|(a, b)| a - b).collect();
                        let truth = last.truth.get(c).map(|&t| t * hw + offset);
                        sources.located += usize::from(truth.map(&column) == Some(diff));
                        break;
                    }
                }
            }
        }
    }
    let located_wanted = solved * windows.len();
    // The open channels' columns, blind: distinct ones, as AUDIT-6 counts.
    let open: Vec<usize> = (0..channels)
        .filter(|t| !last.truth[..solved].contains(t))
        .collect();
    let mut distinct: Vec<Vec<i64>> = Vec::new();
    for &t in &open {
        for &offset in &windows {
            let col = column(t * hw + offset);
            if !distinct.contains(&col) {
                distinct.push(col);
            }
        }
    }
    let mut seen: Vec<Vec<i64>> = Vec::new();
    let mut matched = vec![false; distinct.len()];
    let m = distinct.len() as f64;
    let cap = if distinct.is_empty() {
        0
    } else {
        (m * (m.ln() + 10.0)).ceil() as usize
    };
    for _ in 0..cap {
        if budget_hit || !lost.is_empty() || y0.is_none() || seen.len() == distinct.len() {
            break;
        }
        match column_session(oracle, model, spec, r, known, &located, Raise::Unlocated, v)? {
            Column::Budget => budget_hit = true,
            Column::Lost(why) => {
                sources.blind_sessions += 1;
                lost = why;
            }
            Column::Missed => sources.blind_sessions += 1,
            Column::Seen(y) => {
                sources.blind_sessions += 1;
                let base = y0.as_deref().unwrap_or_default();
                let diff: Vec<i64> = y.iter().zip(base).map(|(a, b)| a - b).collect();
                if !seen.contains(&diff) {
                    if let Some(k) =
                        (0..distinct.len()).find(|&k| !matched[k] && distinct[k] == diff)
                    {
                        matched[k] = true;
                    }
                    seen.push(diff);
                }
            }
        }
    }
    sources.blind = matched.iter().filter(|&&x| x).count();
    entry.sessions = sources.located_sessions + sources.blind_sessions;
    entry.columns = Some(sources);
    settle_columns(
        entry,
        sources.located == located_wanted && sources.blind == distinct.len(),
        y0.as_deref() == Some(true_b),
        budget_hit,
        (sources.located + sources.blind) * shape.rows,
    );
    let pool = folded_pool_phrase(p);
    let mut note = format!(
        "{} of {located_wanted} columns located and exact in {} sessions ({misses} missed{pool}), biases {}",
        sources.located,
        sources.located_sessions,
        if located.base.is_some() {
            "from the bias probe's session"
        } else {
            "from a base session"
        }
    );
    if !located.complete {
        note.push_str(&format!(
            "; round {}'s {} open channel(s) cannot be located: {} of their {} distinct columns exact, up to their order, in {} blind sessions",
            r - 1,
            open.len(),
            sources.blind,
            distinct.len(),
            sources.blind_sessions
        ));
    }
    if budget_hit {
        let during = if sources.located < located_wanted {
            "the located columns"
        } else {
            "the blind columns"
        };
        note.push_str(&format!(
            "; the budget stopped it after {} session(s), during {during}",
            entry.sessions
        ));
    } else if !lost.is_empty() {
        note.push_str(&format!("; stopped: {lost}"));
    }
    entry.note = note;
    Ok(())
}

impl AuditReport {
    /// A table for people.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "audit of {} under policy {:?} ({} shuffling, budget {} per identity) on set {}\n",
            self.model,
            self.policy,
            format!("{:?}", self.granularity).to_lowercase(),
            self.budget,
            self.set
        );
        if let Some(sigma) = self.dp_sigma {
            out.push_str(&format!(
                "DP-8: discrete Gaussian noise of σ = {sigma} on every released value\n"
            ));
        }
        if let Some((q, r)) = self.threshold {
            out.push_str(&format!(
                "PROTO-6: the cheapest stage (round {r}) falls to {q} chosen queries under the known attacks\n"
            ));
        }
        out.push_str(&format!(
            "sessions used, all attacks, one identity: {}",
            self.sessions
        ));
        if self.batch > 1 {
            out.push_str(&if self.stages.iter().any(|s| s.images_per_session > 1) {
                format!(
                    " ({} queries: the located d + 1 in sessions of {} images, one query each)",
                    self.queries, self.batch
                )
            } else {
                format!(
                    " (sessions of {} images asked for: the located d + 1, which uses them, did not run)",
                    self.batch
                )
            });
        }
        out.push_str("\n\n");
        out.push_str("round  layer  kind                       attack           sessions  weights exact   biases exact  outcome\n");
        for s in &self.stages {
            out.push_str(&format!(
                "{:>5}  {:>5}  {:<25}  {:<15}  {:>8}  {:>13}  {:>13}  {}\n",
                s.round,
                s.layer,
                s.kind,
                s.attack,
                s.sessions,
                format!("{}/{}", s.weights.0, s.weights.1),
                format!("{}/{}", s.biases.0, s.biases.1),
                s.outcome.name()
            ));
            if !s.note.is_empty() {
                out.push_str(&format!("{:>14}{}\n", "", s.note));
            }
            if let Some(e) = s.bias_error.filter(|&e| e > 0.0) {
                out.push_str(&format!(
                    "{:>14}noise: the bias estimate is off by {e:.1} per bias on average\n",
                    ""
                ));
            }
            if let Some(n) = &s.noisy_columns {
                out.push_str(&format!(
                    "{:>14}noise (σ = {}, step v = {}): {} column estimates (reading − base)/v, not merged, matched to {} of {} distinct columns{}; off by {:.2} per weight on average, where σ alone predicts 2σ/(v·√π) = {:.2} (guessing 0: {:.2})\n",
                    "",
                    n.sigma,
                    n.step,
                    n.estimates,
                    n.columns_covered,
                    n.columns_total,
                    if n.matched_by_model {
                        " (each to its nearest true column: the auditor's measurement, through the model, not the attacker's knowledge)"
                    } else {
                        " (at their known positions)"
                    },
                    n.mean_abs_error,
                    n.expected_error,
                    n.zero_guess_error
                ));
            } else if let Some(n) = &s.noisy_probes {
                out.push_str(&format!(
                    "{:>14}noise (σ = {}, probe v = {}): {} weight estimates (value − mean bias)/v from {} of {} input channels, matched to the reached weights in sorted order{} (the auditor's measurement, through the model); off by {:.2} per weight on average ({} round to their weight), where σ alone predicts σ·√(2/π)/|v| = {:.2} and reading against the mean bias costs {:.2} without noise (guessing 0: {:.2})\n",
                    "",
                    n.sigma,
                    n.step,
                    n.estimates,
                    n.channels_read,
                    n.channels_total,
                    if n.matched_by_model {
                        " of the input pixel they fit best"
                    } else {
                        ""
                    },
                    n.mean_abs_error,
                    n.rounding_exact,
                    n.expected_error,
                    n.bias_offset_error,
                    n.zero_guess_error
                ));
            } else if let Some(e) = s.weight_error {
                out.push_str(&format!(
                    "{:>14}noise: the weight attack is off by {e:.2} per parameter on average\n",
                    ""
                ));
            }
        }
        if let Some(k) = &self.malicious_key {
            out.push_str(&format!(
                "\nmalicious public key (Δ/2 added to its body, AUDIT-5), {} session as a second identity: ",
                k.sessions
            ));
            if k.accepted {
                out.push_str(&format!(
                    "the server accepted the key; its re-randomiser u read in {}/{} coefficients with margin ({} ones)",
                    k.clear_readings, k.rerandomiser_bits, k.rerandomiser_ones
                ));
                match k.values_confirmed {
                    Some(true) => out.push_str(", confirmed: round 0's values with u·Δ/2 removed are an honest session's\n"),
                    Some(false) => out.push_str(", NOT confirmed: round 0's values with u·Δ/2 removed differ from an honest session's\n"),
                    None => out.push_str(" (values not compared: DP noise)\n"),
                }
            } else {
                out.push('\n');
            }
            out.push_str(&format!("{:>14}{}\n", "", k.note));
        }
        out
    }

    /// The same, for machines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "policy": self.policy,
            "granularity": format!("{:?}", self.granularity).to_lowercase(),
            "set": self.set,
            "budget": self.budget,
            "threshold": self.threshold.map(|(q, r)| serde_json::json!({"queries": q, "round": r})),
            "dp_sigma": self.dp_sigma,
            "sessions": self.sessions,
            "queries": self.queries,
            "batch": self.batch,
            "stages": self.stages.iter().map(|s| serde_json::json!({
                "round": s.round,
                "layer": s.layer,
                "kind": s.kind,
                "attack": s.attack,
                "outcome": s.outcome.name(),
                "sessions": s.sessions,
                "images_per_session": s.images_per_session,
                "weights_exact": s.weights.0,
                "weights_total": s.weights.1,
                "biases_exact": s.biases.0,
                "biases_total": s.biases.1,
                "bias_error": s.bias_error,
                "weight_error": s.weight_error,
                "noisy_columns": s.noisy_columns.as_ref().map(|n| serde_json::json!({
                    "sigma": n.sigma,
                    "step": n.step,
                    "estimates": n.estimates,
                    "columns_covered": n.columns_covered,
                    "columns_total": n.columns_total,
                    "mean_abs_error": n.mean_abs_error,
                    "expected_error": n.expected_error,
                    "zero_guess_error": n.zero_guess_error,
                    "matched_by_model": n.matched_by_model,
                })),
                "noisy_probes": s.noisy_probes.as_ref().map(|n| serde_json::json!({
                    "sigma": n.sigma,
                    "step": n.step,
                    "pixel": [n.pixel.0, n.pixel.1],
                    "channels_read": n.channels_read,
                    "channels_total": n.channels_total,
                    "estimates": n.estimates,
                    "rounding_exact": n.rounding_exact,
                    "mean_abs_error": n.mean_abs_error,
                    "expected_error": n.expected_error,
                    "bias_offset_error": n.bias_offset_error,
                    "zero_guess_error": n.zero_guess_error,
                    "matched_by_model": n.matched_by_model,
                })),
                "columns": s.columns.map(|c| serde_json::json!({
                    "total": c.total,
                    "located": c.located,
                    "blind": c.blind,
                    "located_sessions": c.located_sessions,
                    "blind_sessions": c.blind_sessions,
                })),
                "note": s.note,
            })).collect::<Vec<_>>(),
            "malicious_key": self.malicious_key.as_ref().map(|k| serde_json::json!({
                "sessions": k.sessions,
                "accepted": k.accepted,
                "rerandomiser_bits": k.rerandomiser_bits,
                "rerandomiser_ones": k.rerandomiser_ones,
                "clear_readings": k.clear_readings,
                "values_confirmed": k.values_confirmed,
                "mask_quotient_coefficients": k.mask_quotient_coefficients,
                "mask_quotient_small": k.mask_quotient_small,
                "note": k.note,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // AUDIT-5: the mask division reads a raw single product's weights (all
    // N quotient coefficients small), and nothing from the same product
    // re-randomised with u·a_pk taken out again (u replayed from the
    // server's seed): the stripped mask differs from the raw one by the
    // re-randomiser's error e_a alone (|e_a| ≤ 2^4, checked), and that makes
    // it an RLWE sample in the weights. A quotient coefficient below 2^32
    // by chance has probability 2^-31 if uniform: none of 4096 but with
    // probability ≤ 2^-19.
    #[test]
    fn mask_division_reads_a_raw_product_and_not_a_stripped_rerandomised_one() {
        use crate::params::ParameterSet;
        use crate::rlwe::{SecretKey, SeededPublicKey};
        let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
        let (n, q) = (ctx.n(), ctx.q().single_limb().unwrap());
        let mut rng = crate::rng::Csprng::from_seed([5; 16]);
        let sk = SecretKey::generate(&ctx, &mut rng);
        let pk = SeededPublicKey::generate(&ctx, &sk, &mut rng).expand(&ctx);
        let upload = ctx.encrypt(&sk, &vec![3; n], &mut rng);
        let w: Vec<i64> = (0..n)
            .map(|i| if i < 9 { i as i64 % 5 - 2 } else { 0 })
            .collect();
        let mut acc = ctx.ntt_zero();
        ctx.mul_plain_accumulate(&mut acc, &ctx.to_ntt(&upload), &ctx.plaintext_ntt(&w));
        let raw = ctx.from_ntt(acc);
        let a_up = upload.parts().0;
        assert_eq!(mask_quotient_small(&ctx, raw.parts().0, a_up), Some(n));

        let seed = [6; 16];
        let mut sanitised = raw.clone();
        ctx.rerandomize(
            &mut sanitised,
            &pk,
            &mut crate::rng::Csprng::from_seed(seed),
        );
        let mut replay = crate::rng::Csprng::from_seed(seed);
        let u: Vec<u64> = (0..n).map(|_| replay.bit()).collect();
        let stripped = strip_rerandomiser(&ctx, sanitised.parts().0, &u, &pk).unwrap();
        let bound = 1i64 << ctx.params().noise_bound_log2();
        assert!(stripped
            .iter()
            .zip(raw.parts().0)
            .all(|(&s, &a)| q.centered(q.sub(s, a)).abs() <= bound));
        assert_ne!(stripped, raw.parts().0);
        assert_eq!(mask_quotient_small(&ctx, &stripped, a_up), Some(0));
    }

    proptest! {
        // AUDIT-7: every (input channel, offset class) is probed once, and
        // the probes of a group never reach the same output.
        #[test]
        fn probe_plan_covers_every_class_with_disjoint_footprints(
            c_in in 1usize..4, h in 1usize..12, w in 1usize..12,
            k in 1usize..5, stride in 1usize..3, pad in 0usize..3,
        ) {
            let shape = Conv2dShape {
                in_channels: c_in, in_height: h, in_width: w, out_channels: 2,
                kernel_height: k, kernel_width: k, stride, padding: pad,
            };
            prop_assume!(shape.output_height().is_ok() && shape.output_width().is_ok());
            let plan = probe_plan(&shape);
            let probes: Vec<&PlannedProbe> = plan.iter().flatten().collect();
            for group in &plan {
                for (i, a) in group.iter().enumerate() {
                    for b in &group[i + 1..] {
                        prop_assert!(a.3.iter().all(|o| !b.3.contains(o)));
                    }
                }
            }
            for c in 0..c_in {
                let classes: Vec<&Vec<(usize, usize)>> =
                    probes.iter().filter(|p| p.0 == c).map(|p| &p.2).collect();
                let mut distinct = classes.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), classes.len());
            }
            prop_assert_eq!(pixel_probe_sessions(&shape), 1 + 3 * plan.len() as u64);
        }
    }

    // AUDIT-7: the probe triples are pairwise independent together with
    // (1, 1, 1), so a nonzero reading has one explanation.
    #[test]
    fn probe_values_are_pairwise_independent_of_the_constant_direction() {
        let choices: Vec<i64> = (1..=15).collect();
        let triples = probe_values(&choices, 30).unwrap();
        for (i, a) in triples.iter().enumerate() {
            assert_ne!(a[0], a[1]);
            for b in &triples[i + 1..] {
                let det = a[0] * (b[1] - b[2]) - a[1] * (b[0] - b[2]) + a[2] * (b[0] - b[1]);
                assert_ne!(det, 0, "{a:?} {b:?}");
            }
        }
        assert!(probe_values(&[1, 2], 50).is_none());
    }
}
