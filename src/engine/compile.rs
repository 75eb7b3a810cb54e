//! Model compilation ([`compile`]): a validated model's layers become
//! encrypted stages and the client's steps between them, pools folded in
//! where that is exact and fits the noise budget, every refusal a typed
//! [`CompileError`] or noise/accumulator error naming the layer.

use super::error::{noise_hint, CompileError, CompileProblem, EngineError, LayerNoise};
use super::stage::{ClientOp, CompiledModel, LinearStage, Shortcut};
use crate::layout::{Conv2dShape, MatVecShape};
use crate::linear::LinearError;
use crate::rlwe::Context;

/// Compiles a validated model into encrypted stages (ENG-3, ENG-5).
///
/// First the model's accumulator bounds are checked against the context's
/// set (MODEL-5): a model whose worst-case accumulator does not fit `b` is
/// refused here, whatever path it takes afterwards. Every `conv2d`/`linear`
/// starts a stage; sum pools right before it (and a `flatten`) are folded
/// into its weights exactly — a k×k sum pool of stride k followed by a conv
/// with kernel K, stride s, padding p is the conv with kernel kK, stride ks,
/// padding kp and each weight repeated over a k×k block — so the server
/// never needs a separate repack for them. Folding multiplies the stage's
/// ‖ŵ‖₁ by k²; when that breaks the noise budget (or the layout), the pool
/// becomes a round of its own with fixed 0/1 weights instead, and the layer
/// runs unfolded on the pooled values (ENG-6): exact, one round more.
/// `requantize`/`relu` become client steps; a global pool right before a
/// client step is a 0/1 mat-vec stage; residual adds become shortcuts
/// (ENG-4). Max-pooling is refused ([`CompileProblem::MaxPool`]) for now.
/// Every refusal is an [`EngineError::Compile`] (or a noise-budget or
/// accumulator error) that names the layer, its op, the quantity and the
/// limit.
pub fn compile(ctx: &Context, model: &crate::model::Model) -> Result<CompiledModel, EngineError> {
    let mut compiled = compile_layers(ctx, model, 1)?;
    compiled.model_digest = model_digest(model);
    Ok(compiled)
}

/// Compiles `model` for sessions of `batch` images (ENG-15, PROTO-11): the
/// block-diagonal model of [`crate::model::Model::batched`], whose input
/// is the images' inputs one after another and whose logits are theirs in
/// the same order. It is the same model for the endpoint
/// ([`CompiledModel::batch`] and its digest name the model it batches), so
/// an `Endpoint` serves it beside `model` and charges each of its sessions
/// `batch` queries. Its last stage stacks its rows (ENG-14) only when
/// `batch` is a power of two. Refused like [`compile`], and also when the
/// batched model is too large.
pub fn compile_batch(
    ctx: &Context,
    model: &crate::model::Model,
    batch: usize,
) -> Result<CompiledModel, EngineError> {
    let batched = model.batched(batch)?;
    let mut compiled = compile_layers(ctx, &batched, batch)?;
    compiled.model_digest = model_digest(model);
    Ok(compiled)
}

/// Names a model for [`CompiledModel::batches_the_same_model`]: a guard
/// against serving a batch of another model by mistake (the operator
/// configures both), not a cryptographic commitment.
fn model_digest(model: &crate::model::Model) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (model.name(), model.input(), model.layers()).hash(&mut h);
    h.finish()
}

/// `batch`: the images `model` lays side by side (ENG-15), 1 if none.
fn compile_layers(
    ctx: &Context,
    model: &crate::model::Model,
    batch: usize,
) -> Result<CompiledModel, EngineError> {
    use crate::model::Layer;
    model.check_against(ctx.params())?;
    let mut b = Stages::default();
    // Pools waiting for the next conv/linear: total sum-pool factor per axis,
    // and the index of the last of them.
    let mut pool = 1usize;
    let mut pool_layer = 0usize;
    let mut flattened = false;
    // A side branch being built.
    let mut branch_round: Option<usize> = None;
    let mut branch_conv: Option<LinearStage> = None;
    // Main layer of a residual stage → its projection shortcut's conv layer.
    let mut branch_layers: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut branch_layer: Option<usize> = None;
    let layers = model.layers();
    for (i, layer) in layers.iter().enumerate() {
        let op = layer.op_name();
        let refuse = |problem| EngineError::from(CompileError::at(i, op, problem));
        let input = model
            .input_shape(i)
            .ok_or_else(|| refuse(CompileProblem::Internal("a layer without an input shape")))?;
        let next_is_client = matches!(
            layers.get(i + 1),
            Some(Layer::Requantize { .. } | Layer::Relu)
        );
        match layer {
            Layer::Branch { from } => {
                let round = round_of(&b.held, *from)
                    .filter(|_| b.main_layer.is_some() && branch_round.is_none())
                    .ok_or_else(|| refuse(CompileProblem::BranchSource))?;
                branch_round = Some(round);
            }
            Layer::Conv2d { weights, bias, .. } if branch_round.is_some() => {
                // The branch's conv (e.g. a 1×1 projection shortcut).
                let from = b.held[branch_round.unwrap_or(0)];
                let src = from.map_or(model.input().shape, |l| model.shapes()[l]);
                let shape = crate::model::ir::conv_shape(&src, layer).ok_or_else(|| {
                    refuse(CompileProblem::Internal(
                        "a branch conv without a conv shape",
                    ))
                })?;
                if branch_conv.is_some() {
                    return Err(refuse(CompileProblem::BranchOfSeveralConvs));
                }
                branch_conv = Some(
                    LinearStage::conv(ctx, shape, weights, bias, b.stages.len())
                        .map_err(at_layer(ctx, i, op, ""))?,
                );
                branch_layer = Some(i);
            }
            Layer::ResidualAdd { from } => {
                let stage = b
                    .stages
                    .last_mut()
                    .filter(|s| s.shortcut.is_none() && b.ops.last().is_some_and(Vec::is_empty))
                    .ok_or_else(|| refuse(CompileProblem::ResidualNotAfterLinear))?;
                let shortcut = match (branch_round.take(), branch_conv.take()) {
                    (Some(round), Some(conv)) if Some(*from) == b.main_layer => {
                        if let (Some(main), Some(branch)) = (b.main_layer, branch_layer.take()) {
                            branch_layers.insert(main, branch);
                        }
                        Shortcut::Conv {
                            round,
                            stage: Box::new(conv),
                        }
                    }
                    (None, None) => Shortcut::Identity {
                        round: round_of(&b.held, *from).ok_or_else(|| {
                            refuse(CompileProblem::ResidualNotUploaded { from: *from })
                        })?,
                    },
                    _ => return Err(refuse(CompileProblem::ResidualWiring)),
                };
                stage.shortcut = Some(shortcut);
                let l1 = stage.noise_l1();
                let allowed_log2 = ctx.params().max_weight_l1_log2();
                if l1 > 1u128 << allowed_log2 {
                    let err = EngineError::Linear(LinearError::NoiseBudget {
                        output: 0,
                        l1,
                        allowed_log2,
                    });
                    return Err(at_layer(
                        ctx,
                        i,
                        op,
                        " (the linear layer's weights plus the residual operand)",
                    )(err));
                }
            }
            Layer::AvgPool { kernel, stride } => {
                if kernel != stride {
                    return Err(refuse(CompileProblem::OverlappingPool {
                        kernel: *kernel,
                        stride: *stride,
                    }));
                }
                if flattened {
                    return Err(refuse(CompileProblem::PoolAfterFlatten));
                }
                if input.height % kernel != 0 || input.width % kernel != 0 {
                    return Err(refuse(CompileProblem::PoolDoesNotDivide {
                        kernel: *kernel,
                        height: input.height,
                        width: input.width,
                    }));
                }
                pool *= kernel;
                pool_layer = i;
                if next_is_client {
                    b.push_pool(ctx, model, i, pool)?;
                    pool = 1;
                }
            }
            Layer::GlobalAvgPool => {
                if flattened {
                    return Err(refuse(CompileProblem::PoolAfterFlatten));
                }
                if input.height != input.width {
                    return Err(refuse(CompileProblem::GlobalPoolNotSquare {
                        height: input.height,
                        width: input.width,
                    }));
                }
                pool *= input.height;
                pool_layer = i;
                if next_is_client {
                    b.push_pool(ctx, model, i, pool)?;
                    pool = 1;
                }
            }
            Layer::Flatten => flattened = true,
            Layer::Conv2d { .. } | Layer::Linear { .. } => {
                if flattened && matches!(layer, Layer::Conv2d { .. }) {
                    return Err(refuse(CompileProblem::ConvAfterFlatten));
                }
                start_stage(&b.stages, &b.ops, i, layers[i].op_name())?;
                let (c, h, w) = held_shape(model, i)?;
                let folded = linear_stage(ctx, layer, (c, h, w), pool, b.stages.len());
                match folded {
                    Ok(stage) => {
                        b.stages.push(stage);
                        b.stage_layers.push(i);
                        b.held.push(held_layer(model, i));
                    }
                    Err(folded_err) if pool > 1 => {
                        // ENG-6: the pool as a round of its own, then the
                        // layer on the pooled values.
                        let pooled = pool_stage(ctx, (c, h, w), pool, b.stages.len())
                            .map_err(at_layer(ctx, pool_layer, layers[pool_layer].op_name(), ""))?;
                        b.stages.push(pooled);
                        b.stage_layers.push(pool_layer);
                        b.held.push(held_layer(model, i));
                        b.ops.push(Vec::new());
                        let detail = match folded_err {
                            EngineError::Linear(LinearError::NoiseBudget { l1, .. }) => format!(
                                " (unfolded from its {pool}×{pool} sum pool, which folded in gives {l1})"
                            ),
                            other => format!(
                                " (unfolded from its {pool}×{pool} sum pool, which could not be folded in: {other})"
                            ),
                        };
                        let stage =
                            linear_stage(ctx, layer, (c, h / pool, w / pool), 1, b.stages.len())
                                .map_err(at_layer(ctx, i, op, &detail))?;
                        b.stages.push(stage);
                        b.stage_layers.push(i);
                        b.held.push(Some(i - 1));
                    }
                    Err(e) => return Err(at_layer(ctx, i, op, "")(e)),
                }
                b.main_layer = Some(i);
                b.ops.push(Vec::new());
                pool = 1;
                flattened = false;
            }
            Layer::Requantize {
                multiplier,
                shift,
                min,
                max,
            } => client_step(
                &mut b.ops,
                i,
                ClientOp::Requantize {
                    multiplier: *multiplier,
                    shift: *shift,
                    min: *min,
                    max: *max,
                },
            )?,
            Layer::Relu => client_step(&mut b.ops, i, ClientOp::Relu)?,
            Layer::MaxPool { .. } => return Err(refuse(CompileProblem::MaxPool)),
        }
    }
    if pool != 1 {
        // The model ends with a pool: its sums are the logits.
        b.push_pool(ctx, model, pool_layer, pool)?;
    }
    reuse_repacks(ctx, &mut b.stages)?;
    // ENG-14: the last round releases in true order. In a batch (ENG-15)
    // only for k a power of two: stacked rows answer an upload written past
    // its values with N/S equations, the least power of two ≥ k·rows,
    // which is k times one image's exactly when k is a power of two (k = 3,
    // rows = 16: 64 > 48), and PROTO-6 counts per image.
    if let Some(last) = b.stages.last_mut().filter(|_| batch.is_power_of_two()) {
        last.stack_rows_at_response(ctx);
    }
    let mut compiled = CompiledModel::assemble(ctx, model, b.stages, b.ops, b.stage_layers)?;
    compiled.batch = batch;
    compiled.self_check(model)?;
    let bounds = model.bounds();
    compiled.worst_accumulator = bounds
        .iter()
        .filter_map(|b| b.accumulator)
        .max()
        .unwrap_or(0);
    for (stage, &layer) in compiled.stages.iter_mut().zip(&compiled.stage_layers) {
        if stage.public_weights {
            continue;
        }
        stage.sensitivity = layer_sensitivity(model, &bounds, layer);
        if let Some(branch) = branch_layers.get(&layer) {
            stage.sensitivity = stage
                .sensitivity
                .max(layer_sensitivity(model, &bounds, *branch));
        }
    }
    Ok(compiled)
}

/// ENG-12: shortcuts that read a repack the server already made.
///
/// An identity shortcut whose operand's round repacked it into this
/// stage's own input layout (the same placements: in ResNets the block's
/// first conv has the shape of its second) is added inside the linear
/// layer, as the identity conv in this stage's layout evaluated on that
/// repack, instead of as a second term of every output-pack leaf: half the
/// pack's rotate-adds for those outputs, and no upload sources in the pack.
/// A projection shortcut whose branch conv fits in the kernel frame of the
/// conv that repacked its operand (a 1×1 stride-2 branch beside a 3×3
/// stride-2 conv on the same block input) is laid out in that conv's layout
/// and reads its repack instead of repacking the upload again; its outputs
/// still join in the pack. Taken only where the layouts allow it and the
/// stage's noise factor stays within LIN-3's budget (the operand's noise is
/// then a repacked input's, which LIN-3 charges with the shortcut's ‖ŵ‖₁ as
/// it charges the stage's own weights); otherwise the shortcut stays as
/// ENG-4 has it.
fn reuse_repacks(ctx: &Context, stages: &mut [LinearStage]) -> Result<(), EngineError> {
    let budget = 1u128 << ctx.params().max_weight_l1_log2();
    type Wrap = fn(usize, Box<LinearStage>) -> Shortcut;
    for r in 0..stages.len() {
        let (round, candidate, wrap): (usize, _, Wrap) = match &stages[r].shortcut {
            Some(Shortcut::Identity { round }) => {
                (*round, stages[r].identity_in_layout(ctx), |round, stage| {
                    Shortcut::RepackedIdentity { round, stage }
                })
            }
            Some(Shortcut::Conv { round, stage }) => (
                *round,
                stage.branch_in_layout_of(ctx, &stages[*round]),
                |round, stage| Shortcut::RepackedConv { round, stage },
            ),
            _ => continue,
        };
        let Some(conv) = candidate.transpose()? else {
            continue;
        };
        if !reads_the_repack_of(&conv, &stages[round]) {
            continue;
        }
        let previous = stages[r].shortcut.replace(wrap(round, Box::new(conv)));
        if stages[r].noise_l1() > budget {
            stages[r].shortcut = previous;
        }
    }
    Ok(())
}

/// Whether `stage` reads exactly what round `operand`'s repack produces:
/// the same input ciphertexts and placements, neither reading its upload
/// directly (ENG-10).
fn reads_the_repack_of(stage: &LinearStage, operand: &LinearStage) -> bool {
    !operand.reads_upload_directly()
        && !stage.reads_upload_directly()
        && operand.input_ciphertexts() == stage.input_ciphertexts()
        && operand.input_placements() == stage.input_placements()
}

/// The stages `compile` has built so far, with the client's steps after
/// each and what the client holds at each round.
#[derive(Default)]
struct Stages {
    stages: Vec<LinearStage>,
    ops: Vec<Vec<ClientOp>>,
    /// The model layer each stage evaluates.
    stage_layers: Vec<usize>,
    /// The layer whose output the client uploads at each round (None: input).
    held: Vec<Option<usize>>,
    /// The open stage's main conv/linear layer.
    main_layer: Option<usize>,
}

impl Stages {
    /// A `pool × pool` sum pool ending at layer `i` as a stage of its own
    /// with 0/1 weights: a pool with a client step right after it (its
    /// requantisation, say), or one at the end of the model, cannot be
    /// folded into a next linear layer.
    fn push_pool(
        &mut self,
        ctx: &Context,
        model: &crate::model::Model,
        i: usize,
        pool: usize,
    ) -> Result<(), EngineError> {
        let op = model.layers()[i].op_name();
        start_stage(&self.stages, &self.ops, i, op)?;
        let (c, h, w) = held_shape(model, i)?;
        let stage = pool_stage(ctx, (c, h, w), pool, self.stages.len())
            .map_err(at_layer(ctx, i, op, ""))?;
        self.stages.push(stage);
        self.stage_layers.push(i);
        self.held.push(held_layer(model, i));
        self.ops.push(Vec::new());
        self.main_layer = Some(i);
        Ok(())
    }
}

/// DP-6: the L2 sensitivity (τ = 1) of a conv2d or linear layer's outputs
/// to one of its weights or biases, for inputs within the propagated
/// bounds of MODEL-5.
fn layer_sensitivity(
    model: &crate::model::Model,
    bounds: &[crate::model::LayerBound],
    layer: usize,
) -> f64 {
    use crate::dp::StageShape;
    use crate::model::Layer;
    let x = bounds.get(layer).map_or(0, |b| b.input.max_abs()) as f64;
    let shape = match (&model.layers()[layer], model.input_shape(layer)) {
        (
            Layer::Conv2d {
                kernel_h,
                kernel_w,
                stride,
                padding,
                ..
            },
            Some(input),
        ) => StageShape::Conv2d {
            in_h: input.height,
            in_w: input.width,
            kernel_h: *kernel_h,
            kernel_w: *kernel_w,
            stride_h: *stride,
            stride_w: *stride,
            pad_h: *padding,
            pad_w: *padding,
        },
        _ => StageShape::Linear,
    };
    crate::dp::l2_sensitivity(&shape, x, 1.0)
}

/// Names the layer in a noise-budget refusal (LIN-3), with the figure's
/// `detail` and the shipped sets that would carry it.
fn at_layer<'a>(
    ctx: &'a Context,
    layer: usize,
    op: &'static str,
    detail: &'a str,
) -> impl Fn(EngineError) -> EngineError + 'a {
    move |e| match e {
        EngineError::Linear(LinearError::NoiseBudget {
            output,
            l1,
            allowed_log2,
        }) => EngineError::NoiseBudget(Box::new(LayerNoise {
            layer,
            op,
            output,
            l1,
            l1_log2: (l1 as f64).log2(),
            allowed_log2,
            set: ctx.params().name().to_owned(),
            detail: detail.to_owned(),
            hint: noise_hint(l1),
        })),
        EngineError::Layout(e) => CompileError::at(layer, op, CompileProblem::Geometry(e)).into(),
        other => other,
    }
}

/// The stage of a conv2d or linear layer on the held `[C, H, W]` tensor,
/// with a preceding `pool × pool` sum pool folded into its weights.
fn linear_stage(
    ctx: &Context,
    layer: &crate::model::Layer,
    (c, h, w): (usize, usize, usize),
    pool: usize,
    index: usize,
) -> Result<LinearStage, EngineError> {
    use crate::model::Layer;
    match layer {
        Layer::Conv2d {
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            weights,
            bias,
            ..
        } => {
            let shape = Conv2dShape {
                in_channels: c,
                in_height: h,
                in_width: w,
                out_channels: *out_channels,
                kernel_height: kernel_h * pool,
                kernel_width: kernel_w * pool,
                stride: stride * pool,
                padding: padding * pool,
            };
            let folded = fold_conv_weights(weights, *out_channels, c, *kernel_h, *kernel_w, pool);
            let mut stage = fewer_stacked(*out_channels, |cap| {
                LinearStage::conv_stacking(ctx, shape, &folded, bias, index, cap)
            })?;
            stage.independent_inputs = c * (h / pool) * (w / pool);
            // On the pooled values the folded kernel is the model's own.
            stage.fan_in = c * kernel_h * kernel_w;
            Ok(stage)
        }
        Layer::Linear {
            out_features,
            weights,
            bias,
        } => {
            // Columns of the pooled input spread over each pooled window.
            let (hp, wp) = (h / pool, w / pool);
            let cols = c * h * w;
            let in_pooled = c * hp * wp;
            let mut folded = vec![0i64; out_features * cols];
            for o in 0..*out_features {
                for ch in 0..c {
                    for y in 0..hp * pool {
                        for x in 0..wp * pool {
                            let src = (ch * hp + y / pool) * wp + x / pool;
                            folded[o * cols + (ch * h + y) * w + x] = weights[o * in_pooled + src];
                        }
                    }
                }
            }
            let shape = MatVecShape {
                rows: *out_features,
                cols,
            };
            let mut stage = fewer_stacked(*out_features, |cap| {
                LinearStage::matvec_stacking(ctx, shape, &folded, bias, index, cap)
            })?;
            stage.independent_inputs = in_pooled;
            stage.fan_in = in_pooled;
            Ok(stage)
        }
        _ => Err(CompileError::model(CompileProblem::Internal(
            "a stage from a layer that is neither conv2d nor linear",
        ))
        .into()),
    }
}

/// ENG-7: the stage as the layout stacks it, or, when that breaks the noise
/// budget, with at most `outputs`/2, /4, … 1 outputs per output
/// ciphertext: ‖ŵ‖₁ per output ciphertext sums every stacked output's
/// weights, so fewer stacked outputs is an exact rewrite that trades more
/// output ciphertexts for less noise. Returns the last refusal if even one
/// output per ciphertext is too much.
fn fewer_stacked(
    outputs: usize,
    build: impl Fn(usize) -> Result<LinearStage, EngineError>,
) -> Result<LinearStage, EngineError> {
    let mut cap = usize::MAX;
    loop {
        match build(cap) {
            Err(EngineError::Linear(LinearError::NoiseBudget { .. })) if cap > 1 => {
                cap = if cap == usize::MAX {
                    outputs / 2
                } else {
                    cap / 2
                }
                .max(1);
            }
            other => return other,
        }
    }
}

/// A sum pool over `pool × pool` windows of `[C, H, W]` as a stage of its
/// own with fixed 0/1 weights: a mat-vec when the window is the whole
/// plane (global pool), else a stride-`pool` conv that maps each channel to
/// itself.
fn pool_stage(
    ctx: &Context,
    (c, h, w): (usize, usize, usize),
    pool: usize,
    index: usize,
) -> Result<LinearStage, EngineError> {
    let mut stage = if pool == h && pool == w {
        let cols = c * h * w;
        let mut weights = vec![0i64; c * cols];
        for ch in 0..c {
            weights[ch * cols + ch * h * w..ch * cols + (ch + 1) * h * w].fill(1);
        }
        fewer_stacked(c, |cap| {
            LinearStage::matvec_stacking(
                ctx,
                MatVecShape { rows: c, cols },
                &weights,
                &[],
                index,
                cap,
            )
        })?
    } else {
        let shape = Conv2dShape {
            in_channels: c,
            in_height: h,
            in_width: w,
            out_channels: c,
            kernel_height: pool,
            kernel_width: pool,
            stride: pool,
            padding: 0,
        };
        let block = pool * pool;
        let mut weights = vec![0i64; c * c * block];
        for ch in 0..c {
            let start = (ch * c + ch) * block;
            weights[start..start + block].fill(1);
        }
        fewer_stacked(c, |cap| {
            LinearStage::conv_stacking(ctx, shape, &weights, &[], index, cap)
        })?
    };
    stage.public_weights = true;
    Ok(stage)
}

/// [C, H, W] of the tensor the client holds when layer `i` (a conv or
/// linear) starts a stage: the input of the pools and flatten before it.
/// The layer whose output is the tensor the client holds when layer `i`
/// starts a stage (None: the model input).
fn held_layer(model: &crate::model::Model, i: usize) -> Option<usize> {
    let layers = model.layers();
    let mut j = i;
    while j > 0
        && matches!(
            layers[j - 1],
            crate::model::Layer::AvgPool { .. }
                | crate::model::Layer::GlobalAvgPool
                | crate::model::Layer::Flatten
        )
    {
        j -= 1;
    }
    j.checked_sub(1)
}

/// The round at which the client uploaded the output of `layer`.
fn round_of(held: &[Option<usize>], layer: usize) -> Option<usize> {
    held.iter().position(|&h| h == Some(layer))
}

fn held_shape(model: &crate::model::Model, i: usize) -> Result<(usize, usize, usize), EngineError> {
    // The input of the first layer after the held one (or the model input).
    let j = held_layer(model, i).map_or(0, |h| h + 1);
    let s = model.input_shape(j).ok_or_else(|| {
        CompileError::at(
            j,
            model.layers()[j].op_name(),
            CompileProblem::Internal("a layer without an input shape"),
        )
    })?;
    Ok((s.channels, s.height, s.width))
}

fn start_stage(
    stages: &[LinearStage],
    ops: &[Vec<ClientOp>],
    i: usize,
    op: &'static str,
) -> Result<(), EngineError> {
    // A pool stage the engine added (ENG-6) needs no client step after it.
    if stages.last().is_some_and(|s| s.public_weights) {
        return Ok(());
    }
    if let Some(last) = ops.last() {
        if last.is_empty() && !stages.is_empty() {
            return Err(CompileError::at(i, op, CompileProblem::NoClientStepBetween).into());
        }
    }
    Ok(())
}

fn client_step(ops: &mut [Vec<ClientOp>], i: usize, op: ClientOp) -> Result<(), EngineError> {
    let name = match op {
        ClientOp::Relu => "relu",
        ClientOp::Requantize { .. } => "requantize",
    };
    ops.last_mut()
        .map(|o| o.push(op))
        .ok_or_else(|| CompileError::at(i, name, CompileProblem::ClientStepFirst).into())
}

/// Repeats each weight over a `pool × pool` block (the folded sum pool).
fn fold_conv_weights(
    w: &[i64],
    out: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    pool: usize,
) -> Vec<i64> {
    if pool == 1 {
        return w.to_vec();
    }
    let (fh, fw) = (kh * pool, kw * pool);
    let mut folded = vec![0i64; out * cin * fh * fw];
    for o in 0..out {
        for c in 0..cin {
            for y in 0..fh {
                for x in 0..fw {
                    folded[((o * cin + c) * fh + y) * fw + x] =
                        w[((o * cin + c) * kh + y / pool) * kw + x / pool];
                }
            }
        }
    }
    folded
}
