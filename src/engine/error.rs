//! The engine's errors: [`EngineError`], and the typed reasons a model is
//! refused by [`super::compile`] ([`CompileError`], [`CompileProblem`],
//! [`LayerNoise`]).

use crate::layout::LayoutError;
use crate::linear::LinearError;
use crate::pack::PackError;
use crate::params::{ParamError, ParameterSet};
use crate::protocol::Fault;
use crate::shuffle::ShuffleError;
use thiserror::Error;

/// Why a model could not be compiled, or a round or inference could not be
/// run. Compilation errors are the model's (or the chosen set's) fault and
/// name the layer where they can (ENG-5); run-time errors are the caller's
/// (wrong context, input, round), except an upload or keys that do not fit
/// the stage, which are the peer's: [`EngineError::fault`] says which.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A conv or mat-vec geometry, or a call, that the Cheetah layout
    /// refuses (see [`LayoutError`]).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Encoding or evaluating a linear layer failed (LIN-3's noise budget,
    /// before it is named by layer as [`EngineError::NoiseBudget`]).
    #[error(transparent)]
    Linear(#[from] LinearError),
    /// Packing the outputs or repacking an upload failed: the ciphertexts
    /// or keys given do not fit the stage (the peer's fault).
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Deriving a round's permutation failed (SHUF-2), e.g. a channel
    /// shuffle of a ragged length.
    #[error(transparent)]
    Shuffle(#[from] ShuffleError),
    /// A parameter-set check refused a quantity (see [`ParamError`]).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A stage's bias is neither empty nor one value per output: a bug in
    /// whatever built the stage.
    #[error("stage {stage}: bias has {got} entries, expected {expected}")]
    BiasLength {
        /// The stage (0-based round).
        stage: usize,
        /// The stage's output length.
        expected: usize,
        /// Bias values given.
        got: usize,
    },
    /// Consecutive stages do not chain: a stage's input length differs from
    /// the previous stage's output length (or, for stage 0, from the model
    /// input's length).
    #[error("stage {stage} takes {expected} inputs but the previous stage produces {got}")]
    ShapeMismatch {
        /// The stage whose input does not match (0-based round).
        stage: usize,
        /// Values the stage takes.
        expected: usize,
        /// Values the previous stage (or the model input) provides.
        got: usize,
    },
    /// An input (or a round's activations in the reference) of the wrong
    /// length (ENG-5): the caller's fault.
    #[error("input has {got} values, the first stage takes {expected}")]
    InputLength {
        /// Values expected: the model's input length, or the stage's.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The model cannot be compiled (ENG-3, ENG-5): it uses something the
    /// engine does not compile, exceeds the protocol's limits, has a layer
    /// whose geometry does not fit the ring, or would overflow the set's
    /// plaintext range once the policy's DP noise is added. The error names
    /// the layer where there is one and says which problem; the model is
    /// refused rather than approximated.
    #[error("the model is refused: {0}")]
    Compile(Box<CompileError>),
    /// The model fails its accumulator check for the set (MODEL-5, PARAM-6).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A layer's weights exceed the set's noise budget (LIN-3, ENG-5).
    #[error(transparent)]
    NoiseBudget(Box<LayerNoise>),
    /// The compiled model belongs to another parameter set than the context (ENG-5).
    #[error("the compiled model was built for parameter set {compiled:?}, not for {given:?}: compile it for this context")]
    ParameterMismatch {
        /// Name of the set the model was compiled for.
        compiled: String,
        /// Name of the context's set.
        given: String,
    },
    /// An input value outside the model's declared range (MODEL-4, ENG-5);
    /// the value itself is the client's secret and is not shown.
    #[error("input value {index} lies outside the model's declared input range [{min}, {max}]")]
    InputOutOfRange {
        /// Position of the first offending value in the input.
        index: usize,
        /// Lower end of the declared input range.
        min: i64,
        /// Upper end of the declared input range.
        max: i64,
    },
    /// A round the model does not have was asked for: the driver's fault.
    #[error("round {round}: the model has {rounds} rounds")]
    NoSuchRound {
        /// The round asked for (0-based).
        round: usize,
        /// The model's number of rounds.
        rounds: usize,
    },
    /// A round was evaluated without every upload so far (round r needs
    /// r + 1): the driver's fault.
    #[error("round {round} needs the {expected} uploads so far, got {got}")]
    HistoryLength {
        /// The round being evaluated (0-based).
        round: usize,
        /// Uploads the round needs (`round + 1`).
        expected: usize,
        /// Uploads given.
        got: usize,
    },
    /// A round adds the repack of an earlier round that was not kept
    /// (ENG-12): the rounds were not evaluated in order on this history,
    /// the driver's fault.
    #[error("round {round} adds round {operand}'s repacked upload, which was not kept: evaluate the rounds in order")]
    RepackNotKept {
        /// The round being evaluated (0-based).
        round: usize,
        /// The round whose repack it adds.
        operand: usize,
    },
    /// The in-process harness ([`super::run`]) could not decode a message
    /// it had just encoded: a bug, not either party's input.
    #[error("internal encoding error: {0}")]
    Encoding(crate::wire::WireError),
}

impl From<CompileError> for EngineError {
    fn from(e: CompileError) -> Self {
        EngineError::Compile(Box::new(e))
    }
}

impl EngineError {
    /// Whose fault the error is, seen from the side that evaluates: a
    /// problem of the model or of the chosen set and policy (every
    /// compilation error, DP-8's noise check), and a wrong call (another
    /// set's context, an input of the wrong length or range, a round or
    /// history the model does not have) are this side's
    /// ([`Fault::Local`]). Only a repack or pack that fails on what the
    /// peer sent (its upload's ciphertexts, its Galois keys), after the
    /// protocol's own checks let it through, is the peer's
    /// ([`Fault::Peer`]): the stage came out of [`super::compile`], so
    /// it fits its own layout.
    pub fn fault(&self) -> Fault {
        match self {
            EngineError::Pack(_) => Fault::Peer,
            // The model's, the set's or the policy's.
            EngineError::Compile(_)
            | EngineError::Model(_)
            | EngineError::NoiseBudget(_)
            | EngineError::Layout(_)
            | EngineError::Linear(_)
            | EngineError::Shuffle(_)
            | EngineError::Param(_)
            | EngineError::BiasLength { .. }
            | EngineError::ShapeMismatch { .. } => Fault::Local,
            // The caller's.
            EngineError::ParameterMismatch { .. }
            | EngineError::InputLength { .. }
            | EngineError::InputOutOfRange { .. }
            | EngineError::NoSuchRound { .. }
            | EngineError::HistoryLength { .. }
            | EngineError::RepackNotKept { .. }
            | EngineError::Encoding(_) => Fault::Local,
        }
    }
}

/// A stage whose weights exceed the noise budget, named by its model layer.
#[derive(Debug, Error, Clone, PartialEq)]
#[error(
    "layer {layer} ({op}): output ciphertext {output} of its encrypted stage sums ‖ŵ‖₁ = {l1} (2^{l1_log2:.2}){detail}, \
     more than the {allowed_log2}-bit noise budget of set {set:?}; {hint}"
)]
pub struct LayerNoise {
    /// The model layer (0-based index).
    pub layer: usize,
    /// The layer's op.
    pub op: &'static str,
    /// The output ciphertext of the stage whose weight sum is too large.
    pub output: usize,
    /// ‖ŵ‖₁ summed over the weight polynomials that feed that ciphertext
    /// (LIN-3).
    pub l1: u128,
    /// log2 of [`l1`](Self::l1), for the message.
    pub l1_log2: f64,
    /// The set's budget: `l1` may be at most `2^allowed_log2`
    /// (`max_weight_l1_log2`).
    pub allowed_log2: u32,
    /// Name of the parameter set.
    pub set: String,
    /// What the figure includes beyond the layer's own weights.
    pub detail: String,
    /// Which shipped sets would carry it, or what to change.
    pub hint: String,
}

/// Shipped sets whose noise budget covers `l1`, or advice when none does.
pub(super) fn noise_hint(l1: u128) -> String {
    let fitting: Vec<String> = ParameterSet::shipped_all()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| l1 <= 1u128 << p.max_weight_l1_log2())
        .map(|p| format!("{} (2^{})", p.name(), p.max_weight_l1_log2()))
        .collect();
    if fitting.is_empty() {
        "no shipped set covers it: use smaller weights or fewer output channels".into()
    } else {
        format!(
            "shipped sets whose budget covers it: {} (if their accumulator bits suffice)",
            fitting.join(", ")
        )
    }
}

/// Why [`super::compile`] refused a model, or why DP-8's noise does not fit
/// it: the layer (with its op) where there is one, and the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    layer: Option<(usize, &'static str)>,
    problem: CompileProblem,
}

impl CompileError {
    /// A problem of layer `layer` (0-based), whose op is `op`.
    pub(super) fn at(layer: usize, op: &'static str, problem: CompileProblem) -> Self {
        Self {
            layer: Some((layer, op)),
            problem,
        }
    }

    /// A problem of the model as a whole.
    pub(super) fn model(problem: CompileProblem) -> Self {
        Self {
            layer: None,
            problem,
        }
    }

    /// The model layer (0-based) the problem is at; `None` for a problem of
    /// the whole model (its number of rounds, DP noise, ...).
    pub fn layer(&self) -> Option<usize> {
        self.layer.map(|(i, _)| i)
    }

    /// The op of [`layer`](Self::layer), e.g. `"conv2d"`.
    pub fn op(&self) -> Option<&'static str> {
        self.layer.map(|(_, op)| op)
    }

    /// What is wrong.
    pub fn problem(&self) -> &CompileProblem {
        &self.problem
    }
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((layer, op)) = self.layer {
            write!(f, "layer {layer} ({op}): ")?;
        }
        self.problem.fmt(f)
    }
}

impl std::error::Error for CompileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            CompileProblem::Geometry(e) => Some(e),
            _ => None,
        }
    }
}

/// The distinct reasons a model is refused by [`super::compile`] (ENG-3,
/// ENG-5), or its DP noise by [`super::CompiledModel::check_noise`] (DP-8).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CompileProblem {
    /// The model has no conv2d or linear layer: nothing to encrypt.
    #[error("a model needs at least one linear layer (conv2d or linear)")]
    NoLinearLayer,
    /// More encrypted rounds than a session may have (PROTO-4).
    #[error("the model needs {rounds} encrypted rounds, more than the protocol's {limit}")]
    TooManyRounds {
        /// Rounds the model needs.
        rounds: usize,
        /// [`crate::protocol::MAX_ROUNDS`].
        limit: usize,
    },
    /// More client steps after one linear layer than a session may
    /// describe (PROTO-4); the layer is the linear one.
    #[error("{steps} client steps after one linear layer, more than the protocol's {limit}")]
    TooManyClientSteps {
        /// Client steps after the layer.
        steps: usize,
        /// [`crate::protocol::MAX_OPS`].
        limit: usize,
    },
    /// A max-pool: not element-wise, so not a client step that commutes
    /// with the shuffle, and not linear.
    #[error("max-pooling is not supported by the engine yet (use an average pool)")]
    MaxPool,
    /// A pool whose windows overlap (kernel ≠ stride): only
    /// non-overlapping sum pools fold exactly.
    #[error("only non-overlapping sum pools (kernel = stride) are supported, not kernel {kernel} with stride {stride}")]
    OverlappingPool {
        /// The pool's kernel.
        kernel: usize,
        /// The pool's stride.
        stride: usize,
    },
    /// A pool after a flatten: there is no spatial layout left to pool.
    #[error("a pool after a flatten")]
    PoolAfterFlatten,
    /// A pool whose kernel does not divide the input's height and width.
    #[error("pool {kernel} does not divide the {height}×{width} input")]
    PoolDoesNotDivide {
        /// The pool's kernel (= stride).
        kernel: usize,
        /// The input's height.
        height: usize,
        /// The input's width.
        width: usize,
    },
    /// A global pool over a non-square input.
    #[error("global pool over a non-square {height}×{width} input")]
    GlobalPoolNotSquare {
        /// The input's height.
        height: usize,
        /// The input's width.
        width: usize,
    },
    /// A conv2d after a flatten.
    #[error("conv2d after flatten")]
    ConvAfterFlatten,
    /// Two linear layers in a row: one round is one linear layer followed
    /// by the client's steps.
    #[error("two linear layers without a client step between them (fold them into one, or requantise between them)")]
    NoClientStepBetween,
    /// A relu or requantize before any linear layer: the client holds
    /// nothing to apply it to before the first response.
    #[error("a client step before the first linear layer")]
    ClientStepFirst,
    /// A branch that does not start from an earlier activation the client
    /// uploaded, inside a stage.
    #[error("a branch must start from an earlier client-held activation inside a stage")]
    BranchSource,
    /// A branch of more than one conv.
    #[error("a branch of more than one conv")]
    BranchOfSeveralConvs,
    /// A residual add that does not directly follow a linear layer.
    #[error("a residual add must follow a linear layer directly")]
    ResidualNotAfterLinear,
    /// A residual add from a layer whose output the client never uploaded.
    #[error("residual from layer {from}, which the client never uploaded")]
    ResidualNotUploaded {
        /// The layer the residual add reads.
        from: usize,
    },
    /// Another residual wiring than an identity or a one-conv projection
    /// shortcut (ENG-4).
    #[error("unsupported residual wiring")]
    ResidualWiring,
    /// The layer's geometry does not fit the ring (or the layout refuses
    /// it otherwise).
    #[error("{0}")]
    Geometry(LayoutError),
    /// DP-8: the noise's 2^-40 tail on top of the worst-case accumulator
    /// leaves the set's plaintext range.
    #[error(
        "DP noise with σ = {sigma:.0} (2^-40 tail {tail}) on top of the worst-case accumulator {worst_accumulator} \
         exceeds the {plaintext_bits}-bit range of set {set:?}: use a wider set or less noise"
    )]
    NoiseOverflow {
        /// The noise's standard deviation.
        sigma: f64,
        /// The bound the noise exceeds with probability ≤ 2^-40.
        tail: f64,
        /// The model's largest worst-case |accumulator| (MODEL-5).
        worst_accumulator: u128,
        /// The set's plaintext bits b.
        plaintext_bits: u32,
        /// The set's name.
        set: String,
    },
    /// ENG-3: the compiled stages disagree with the model's reference
    /// evaluator, so the model is refused rather than run wrong.
    #[error("internal: the compiled stages disagree with the model's reference evaluator; this is a bug in safhire's compiler, please report it with the model")]
    ReferenceMismatch,
    /// An invariant of the compiler that a validated model always meets
    /// did not hold: a bug in safhire.
    #[error("internal: {0}; this is a bug in safhire's compiler, please report it with the model")]
    Internal(&'static str),
}
