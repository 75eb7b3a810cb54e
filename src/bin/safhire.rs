//! `safhire` command-line tool. `safhire help` lists the commands;
//! `safhire COMMAND --help` describes one.

use safhire::engine::{self, CompiledModel, ServerKeys};
use safhire::extract::ValueRef;
use safhire::layout::{conv2d_reference, Conv2dLayout, Conv2dShape};
use safhire::linear::EncodedLayer;
use safhire::model::{Model, TestSet};
use safhire::pack::{PackSource, Packer, Placement};
use safhire::params::ParameterSet;
use safhire::protocol::Policy;
use safhire::rlwe::{Context, GaloisKeys, SecretKey, SeededGaloisKey, SeededPublicKey};
use safhire::rng::Csprng;
use safhire::select::{self, Requirement, Selection};
use safhire::shuffle::{SessionSeed, ShuffleUnit};
use safhire::wire;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

type CliResult = Result<(), Box<dyn std::error::Error>>;

const USAGE: &str = "\
safhire: private neural-network inference with RLWE encryption

usage: safhire COMMAND [OPTIONS]     (safhire COMMAND --help for its options)

commands:
  infer        encrypted inference of a model over a set of inputs: accuracy,
               agreement with the plaintext reference, time and traffic
  bench        end-to-end benchmark of one encrypted inference
               (resnet20, resnet18, digits, or --model FILE)
  params       the shipped parameter sets with their security and noise budgets
  state-graph  both protocol parties' state machines (Graphviz)
  layer        one encrypted round of a ResNet-20 convolution (demo)
  audit        chosen-input attacks on a model through the real protocol
  help         this text

parameter sets: b8 b12 b16 b20 b24 wide, or auto (the cheapest that carries
the model under the policy; the default)
policies: default channel benchmark (spec/shuffling.toml)";

const INFER_HELP: &str = "\
usage: safhire infer [--model FILE --inputs FILE [--labels FILE]] [OPTIONS]

Encrypted inference, client and server in one process. Without --model it
runs the shipped digits CNN on its test images (models/).

  --model FILE          integer model: JSON (spec/model-format.md), or .onnx
                        when built with --features onnx
  --inputs FILE         inputs: JSON {\"inputs\": [[..]], \"labels\": [..]} or
                        [[..]], or an integer .npy array [n, ...]
  --labels FILE         labels: JSON array or 1-D integer .npy (optional)
  --images K|all        how many inputs to run (default 40)
  --set NAME|auto       parameter set (default auto)
  --policy NAME         policy whose requirements the set must meet and
                        whose shuffle granularity is used (default: default)
  --granularity G       element or channel (default: the policy's)
  --json                machine-readable report on stdout
  -h, --help            this text";

const BENCH_HELP: &str = "\
usage: safhire bench resnet20|resnet18|digits [OPTIONS]
       safhire bench --model FILE [OPTIONS]

One encrypted inference on a random input in the declared range (random
weights for the ResNets), against the plaintext inference of the same run:
per-round client and server time, traffic, key size, peak memory.

  --model FILE          benchmark this model instead
  --set NAME|auto       parameter set (default auto)
  --policy NAME         policy the set must satisfy (default: benchmark)
  --json                machine-readable report on stdout
  -h, --help            this text";

const PARAMS_HELP: &str = "\
usage: safhire params [--json]

The shipped parameter sets (spec/parameters.toml) with their security and
noise budgets, computed by the code that enforces them.";

const AUDIT_HELP: &str = "\
usage: safhire audit [--model FILE] [--policy NAME] [--set NAME|auto] [--json]

Runs the attacks of `safhire::audit` as the client side of real sessions
against a real endpoint serving the model (default: the shipped digits CNN)
under the policy (default: default), one client identity, and reports per
stage the sessions used, what was recovered exactly (up to the permutation
the policy hides) and whether the policy stopped it. spec/threat-model.md
lists the attacks this tool does not run yet.

  --model FILE          model file (JSON, or .onnx with --features onnx)
  --policy NAME         default, channel or benchmark (spec/shuffling.toml)
  --set NAME|auto       parameter set (default auto)
  --json                machine-readable report on stdout
  -h, --help            this text";

const LAYER_HELP: &str = "\
usage: safhire layer [--set NAME]

One encrypted round of a ResNet-20 first-stage convolution (16x32x32, 3x3,
padding 1) with random weights, checked bit for bit (default set b16).";

const STATE_GRAPH_HELP: &str = "\
usage: safhire state-graph

Both protocol parties' state machines, in Graphviz dot (spec/state-machines.dot).";

/// A usage error: the caller's command line is at fault (exit code 2).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Parsed `--flag value` options and `--switch`es of one command.
struct Args {
    values: BTreeMap<String, String>,
    switches: Vec<String>,
    positional: Vec<String>,
}

impl Args {
    /// `takes_value` and `switches` list the command's options (without
    /// dashes); anything else is a usage error. `--help` is handled by the caller.
    fn parse(args: &[String], takes_value: &[&str], switches: &[&str]) -> Result<Self, Usage> {
        let mut out = Args {
            values: BTreeMap::new(),
            switches: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                out.positional.push(arg.clone());
                continue;
            };
            if switches.contains(&name) {
                out.switches.push(name.to_owned());
            } else if takes_value.contains(&name) {
                let value = it
                    .next()
                    .ok_or_else(|| Usage(format!("--{name} needs a value")))?;
                if out.values.insert(name.to_owned(), value.clone()).is_some() {
                    return Err(Usage(format!("--{name} given twice")));
                }
            } else {
                return Err(Usage(format!("unknown option {arg:?}")));
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn parse(
    args: &[String],
    takes_value: &[&str],
    switches: &[&str],
) -> Result<Args, Box<dyn std::error::Error>> {
    Ok(Args::parse(args, takes_value, switches)?)
}

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or_default();
    let help = match command {
        "infer" => INFER_HELP,
        "bench" => BENCH_HELP,
        "params" => PARAMS_HELP,
        "layer" => LAYER_HELP,
        "audit" => AUDIT_HELP,
        "state-graph" => STATE_GRAPH_HELP,
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("error: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        println!("{help}");
        return ExitCode::SUCCESS;
    }
    let result: CliResult = match command {
        "infer" => parse(
            rest,
            &[
                "model",
                "inputs",
                "labels",
                "images",
                "set",
                "policy",
                "granularity",
            ],
            &["json"],
        )
        .and_then(infer),
        "bench" => parse(rest, &["model", "set", "policy"], &["json"]).and_then(bench),
        "params" => parse(rest, &[], &["json"]).and_then(|a| params(a.has("json"))),
        "layer" => parse(rest, &["set"], &[]).and_then(|a| layer(a.get("set").unwrap_or("b16"))),
        "audit" => parse(rest, &["model", "policy", "set"], &["json"]).and_then(audit),
        _ => parse(rest, &[], &[]).map(|_| print!("{}", safhire::protocol::state_graph())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Usage>() => {
            eprintln!("error: {e}\n\n{help}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Piping the output into `head` must end the program quietly, as any Unix
/// tool does, not panic in `println!`: restore the default SIGPIPE action
/// that the Rust runtime replaces.
#[cfg(unix)]
fn default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: signal(2) with SIG_DFL installs no handler code; called once,
    // before any thread is spawned.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn params(json: bool) -> CliResult {
    if json {
        let sets: Vec<serde_json::Value> = ParameterSet::shipped_all()?
            .iter()
            .map(|p| {
                let s = p.spec();
                serde_json::json!({
                    "name": p.name(),
                    "ring_degree": s.ring_degree,
                    "log2_pq": (s.ciphertext_modulus as f64).log2() + (s.special_modulus as f64).log2(),
                    "plaintext_bits": s.plaintext_bits,
                    "max_weight_l1_log2": s.max_weight_l1_log2,
                    "noise_std_log2": p.budget().before_flooding.sqrt().log2(),
                    "flooding_bound_log2": s.flooding_bound_log2,
                    "flooding_headroom_bits": p.budget().flooding_headroom_bits(),
                    "circuit_privacy_log2_per_ciphertext": p.circuit_privacy_log2(),
                    "flooding_sigma_log2": p.flooding_sigma_log2(),
                    "flooding_rho_log2_per_ciphertext": p.flooding_rho_per_ciphertext().log2(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&sets)?);
        return Ok(());
    }
    println!(
        "{:<6} {:>5} {:>8} {:>6} {:>10} {:>12} {:>12} {:>10} {:>14} {:>13}",
        "set",
        "N",
        "log2 Pq",
        "t",
        "‖w‖₁ max",
        "noise (std)",
        "flooding",
        "headroom",
        "SD/ciphertext",
        "ρ/ciphertext"
    );
    for p in ParameterSet::shipped_all()? {
        let s = p.spec();
        let b = p.budget();
        println!(
            "{:<6} {:>5} {:>8.1} {:>6} {:>10} {:>12} {:>12} {:>9.1}b {:>14} {:>13}",
            p.name(),
            s.ring_degree,
            (s.ciphertext_modulus as f64).log2() + (s.special_modulus as f64).log2(),
            format!("2^{}", s.plaintext_bits),
            format!("2^{}", s.max_weight_l1_log2),
            format!("2^{:.1}", b.before_flooding.sqrt().log2()),
            format!("2^{}", s.flooding_bound_log2),
            b.flooding_headroom_bits(),
            if p.has_statistical_circuit_privacy() {
                format!("≤ 2^{:.1}", p.circuit_privacy_log2())
            } else {
                "none".to_owned()
            },
            format!("2^{:.1}", p.flooding_rho_per_ciphertext().log2()),
        );
    }
    println!("\nDecryption failure ≤ 2^-40 per coefficient; security ≥ 128 bits (HE standard and tfhe-rs fit on P·q).");
    println!("Flooding: discrete Gaussian with σ = 2^(F−3), bound 2^F. ρ/ciphertext: zCDP of a returned ciphertext's noise channel, SD/ciphertext: the statistical distance it implies, against clients with honest keys and uploads, at the set's worst-case noise; none is 40-bit. A model's own figure over its query budget is printed by infer and bench (proofs/noise-budget.md, \"Circuit privacy\").");
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A client's session keys, with their generation time and wire size.
struct ClientKeys {
    sk: SecretKey,
    seeded_galois: Vec<SeededGaloisKey>,
    seeded_pk: SeededPublicKey,
    keygen_ms: f64,
    key_bytes: usize,
}

impl ClientKeys {
    fn generate(ctx: &Context, rng: &mut Csprng) -> Self {
        let t = Instant::now();
        let sk = SecretKey::generate(ctx, rng);
        let seeded_galois = GaloisKeys::generate_seeded(ctx, &sk, rng);
        let seeded_pk = SeededPublicKey::generate(ctx, &sk, rng);
        let keygen_ms = ms(t);
        let key_bytes = seeded_galois
            .iter()
            .map(|k| wire::encode_galois_key(ctx, k).len())
            .sum::<usize>()
            + wire::encode_public_key(ctx, &seeded_pk).len();
        Self {
            sk,
            seeded_galois,
            seeded_pk,
            keygen_ms,
            key_bytes,
        }
    }
}

fn layer(set: &str) -> CliResult {
    let params = ParameterSet::shipped(set)?;
    let ctx = Context::new(params);
    let n = ctx.n();
    let shape = Conv2dShape {
        in_channels: 16,
        in_height: 32,
        in_width: 32,
        out_channels: 16,
        kernel_height: 3,
        kernel_width: 3,
        stride: 1,
        padding: 1,
    };
    let layout = Conv2dLayout::new(shape, n)?;
    println!(
        "parameter set {set}: N = {n}, t = 2^{}",
        ctx.params().plaintext_bits()
    );
    println!(
        "layer: conv 16×32×32 → 16×32×32, 3×3, padding 1 ({} input / {} output ciphertexts)",
        layout.input_ciphertexts(),
        layout.output_ciphertexts()
    );

    // 3-bit activations and weights small enough for the set's accumulator:
    // fan-in · max|w| · max|x| < 2^(b−1).
    let mut server_rng = Csprng::from_os();
    let fan_in = 16 * 9;
    let x_max: i64 = 7;
    let w_max = (((1i64 << (ctx.params().plaintext_bits() - 1)) - 1) / (fan_in * x_max)).min(127);
    if w_max == 0 {
        return Err(format!(
            "a fan-in of {fan_in} with 3-bit activations does not fit the {}-bit accumulator of set {set}; use b12, b16 or wide",
            ctx.params().plaintext_bits()
        )
        .into());
    }
    let weights: Vec<i64> = (0..shape.weight_len()?)
        .map(|_| server_rng.uniform_below(2 * w_max as u64 + 1) as i64 - w_max)
        .collect();

    // Client: keys and input.
    let mut client_rng = Csprng::from_os();
    let ClientKeys {
        sk,
        seeded_galois,
        seeded_pk,
        keygen_ms,
        key_bytes,
    } = ClientKeys::generate(&ctx, &mut client_rng);
    let input: Vec<i64> = (0..shape.input_len()?)
        .map(|_| client_rng.uniform_below(x_max as u64 + 1) as i64)
        .collect();
    let t = Instant::now();
    let uploads: Vec<Vec<u8>> = input
        .chunks(n)
        .map(|chunk| {
            wire::encode_seeded_ciphertext(&ctx, &ctx.encrypt_seeded(&sk, chunk, &mut client_rng))
        })
        .collect();
    let encrypt_ms = ms(t);
    let up_bytes: usize = uploads.iter().map(Vec::len).sum();

    // Server: expand keys, decode, unshuffle repack into the conv layout.
    let t = Instant::now();
    let galois = GaloisKeys::from_seeded(&ctx, &seeded_galois)
        .ok_or("client sent an incomplete Galois key set")?;
    let pk = seeded_pk.expand(&ctx);
    let key_expand_ms = ms(t);
    let t_server = Instant::now();
    let received = uploads
        .iter()
        .map(|b| wire::decode_seeded_ciphertext(&ctx, b).map(|s| s.expand(ctx.q())))
        .collect::<Result<Vec<_>, _>>()?;
    let sources: Vec<PackSource> = received.iter().map(PackSource::plain).collect();
    let packer = Packer::new(&ctx, &galois);
    let (h, w) = (shape.in_height, shape.in_width);
    let placements: Vec<Placement> = layout
        .input_placements()
        .iter()
        .map(|pl| {
            let flat = (pl.channel * h + pl.row) * w + pl.col;
            Placement {
                value: ValueRef::new(flat / n, flat % n),
                output: pl.ciphertext,
                position: pl.coefficient,
            }
        })
        .collect();
    let t = Instant::now();
    let repacked = packer.pack(&sources, &placements)?;
    let repack_ms = ms(t);

    let t = Instant::now();
    let encoded = EncodedLayer::new(&ctx, &layout, &weights)?;
    let encode_w_ms = ms(t);
    let t = Instant::now();
    let outputs = encoded.evaluate(&ctx, &repacked);
    let conv_ms = ms(t);

    // Shuffle: a secret random permutation of all outputs, packed densely.
    let positions = layout.output_positions();
    let mut perm: Vec<usize> = (0..positions.len()).collect();
    for i in (1..perm.len()).rev() {
        let j = server_rng.uniform_below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let order: Vec<ValueRef> = perm
        .iter()
        .map(|&k| ValueRef::new(positions[k].0, positions[k].1))
        .collect();
    let out_sources: Vec<PackSource> = outputs.iter().map(PackSource::plain).collect();
    let t = Instant::now();
    let mut packed = packer.pack_dense(&out_sources, &order)?;
    let pack_ms = ms(t);
    let t = Instant::now();
    for ct in packed.iter_mut() {
        ctx.rerandomize(ct, &pk, &mut server_rng);
        ctx.flood(ct, &mut server_rng);
    }
    let sanitise_ms = ms(t);
    let downloads: Vec<Vec<u8>> = packed
        .iter()
        .map(|c| wire::encode_ciphertext(&ctx, c))
        .collect();
    let server_ms = ms(t_server);
    let down_bytes: usize = downloads.iter().map(Vec::len).sum();

    // Client: decrypt; the values arrive shuffled.
    let t = Instant::now();
    let mut shuffled = Vec::with_capacity(order.len());
    for b in &downloads {
        let ct = wire::decode_ciphertext(&ctx, b)?;
        shuffled.extend(ctx.decrypt(&sk, &ct));
    }
    shuffled.truncate(order.len());
    let decrypt_ms = ms(t);

    // Check (possible here because this demo knows the permutation).
    let reference = conv2d_reference(&shape, &input, &weights)?;
    let mut unshuffled = vec![0i64; order.len()];
    for (slot, &k) in perm.iter().enumerate() {
        unshuffled[k] = shuffled[slot];
    }
    let equal = unshuffled == reference;
    let in_true_order = shuffled == reference;

    println!("\nclient: key generation {keygen_ms:.1} ms, encryption {encrypt_ms:.1} ms, decryption {decrypt_ms:.1} ms");
    println!(
        "server: {server_ms:.1} ms = repack (unshuffle) {repack_ms:.1} + conv {conv_ms:.1} + shuffle-pack {pack_ms:.1} + sanitise {sanitise_ms:.1} (+ weight encoding {encode_w_ms:.1}, key expansion {key_expand_ms:.1}, once per model/session)"
    );
    println!(
        "traffic: evaluation keys {:.2} MiB (once per session), up {:.1} KiB, down {:.1} KiB",
        key_bytes as f64 / 1048576.0,
        up_bytes as f64 / 1024.0,
        down_bytes as f64 / 1024.0
    );
    println!(
        "result: {} outputs, equal to the plaintext reference: {}, client saw them in true order: {}",
        reference.len(),
        if equal { "yes (bit for bit)" } else { "NO" },
        if in_true_order { "yes" } else { "no (shuffled)" }
    );
    if equal {
        Ok(())
    } else {
        Err("encrypted result differs from the plaintext reference".into())
    }
}

const DIGITS_MODEL: &str = include_str!("../../models/digits-cnn.json");
const DIGITS_TEST: &str = include_str!("../../models/digits-test.json");

/// Reads a model file: JSON (MODEL-6), or ONNX with the `onnx` feature.
/// Errors name the file.
fn load_model(path: &Path) -> Result<Model, Box<dyn std::error::Error>> {
    let name = path.display();
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        #[cfg(feature = "onnx")]
        return Ok(safhire::model::onnx::import_onnx_file(path)?);
        #[cfg(not(feature = "onnx"))]
        return Err(format!(
            "{name}: reading ONNX needs a build with `--features onnx` (cargo run --release --features onnx -- ...)"
        )
        .into());
    }
    let limit = safhire::model::Limits::DEFAULT.max_bytes;
    let bytes = std::fs::metadata(path)
        .map_err(|e| format!("{name}: cannot be read: {}", e.kind()))?
        .len();
    if bytes > limit as u64 {
        return Err(
            format!("{name}: model file is {bytes} bytes, more than the limit of {limit}").into(),
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{name}: cannot be read as UTF-8 text: {}", e.kind()))?;
    Ok(Model::from_json(&text).map_err(|e| format!("{name}: {e}"))?)
}

/// The parameter set for `model`: pinned by `--set`, or chosen (PARAM-7).
fn choose(
    model: &Model,
    set: Option<&str>,
    policy: &Policy,
) -> Result<Selection, Box<dyn std::error::Error>> {
    let requirement = Requirement::of(policy);
    let pinned = set.filter(|s| *s != "auto");
    select::select(model, requirement, pinned).map_err(|e| match e {
        select::SelectError::Requirement { .. } => format!(
            "{e} (policy {:?}; `--policy benchmark` has no such requirement)",
            policy.name()
        )
        .into(),
        other => other.into(),
    })
}

/// δ of every printed (ε, δ).
const DP_DELTA: f64 = 1e-6;

/// The circuit privacy of the set per returned ciphertext, and of the
/// compiled model's noise channel over the policy's budget (PRIV-3), in
/// words and as JSON.
fn circuit_statement(
    compiled: &CompiledModel,
    params: &safhire::params::ParameterSet,
    policy: &Policy,
) -> (String, serde_json::Value) {
    let budget = policy.query_budget();
    let g = compiled.circuit_privacy(params, budget);
    (
        format!(
            "{}\n  this model's noise channel {}",
            params.circuit_privacy_statement(),
            safhire::dp::describe_noise_channel(&g, budget)
        ),
        serde_json::json!({"per_ciphertext": params.circuit_privacy_statement(),
            "per_ciphertext_rho": params.flooding_rho_per_ciphertext(),
            "flooding_sigma_log2": params.flooding_sigma_log2(),
            "budget": budget, "rho": g.rho, "epsilon": g.epsilon, "delta": g.delta,
            "verdict": format!("{:?}", g.verdict)}),
    )
}

/// What the policy's DP noise gives, in words and as JSON (DP-8): every
/// figure from `dp`'s accountant over the compiled model's stages.
fn dp_statement(compiled: &CompiledModel, policy: &Policy) -> (String, serde_json::Value) {
    let Some(sigma) = policy.dp_sigma() else {
        return (
            "none: no noise, the client gets exact accumulators".into(),
            serde_json::Value::Null,
        );
    };
    let budget = policy.query_budget();
    match compiled.dp_guarantee(f64::from(sigma), budget, DP_DELTA, 1.0) {
        None => (
            format!("σ = {sigma}, but no stage holds weights of the model owner's"),
            serde_json::Value::Null,
        ),
        Some(g) => (
            format!(
                "discrete Gaussian noise σ = {sigma} on every released value; over one identity's budget of {budget} sessions, \
                 ρ = {:.4}-zCDP, {} — for one weight or bias changed by 1, uploads in the declared ranges (a client that \
                 uploads out-of-range values gets more; spec/dp.md), ρ summed over stages; the ciphertexts' own leakage \
                 (circuit privacy above) is not included",
                g.rho,
                safhire::dp::describe(g.epsilon, g.delta)
            ),
            serde_json::json!({"sigma": sigma, "budget": budget, "rho": g.rho, "epsilon": g.epsilon,
                "delta": g.delta, "verdict": format!("{:?}", g.verdict), "tau": 1, "composition": "sum over stages"}),
        ),
    }
}

fn argmax(v: &[i64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// The server's view of a client's keys, expanded.
fn server_keys(
    ctx: &Context,
    keys: &ClientKeys,
) -> Result<(GaloisKeys, safhire::rlwe::PublicKey), Box<dyn std::error::Error>> {
    let galois =
        GaloisKeys::from_seeded(ctx, &keys.seeded_galois).ok_or("incomplete Galois key set")?;
    Ok((galois, keys.seeded_pk.expand(ctx)))
}

fn progress_bar(len: usize, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "[{{bar:30}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, ~{{eta}} left"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("#>-");
    bar.set_style(style);
    bar
}

fn model_json(model: &Model, compiled: &CompiledModel) -> serde_json::Value {
    serde_json::json!({
        "name": model.name(),
        "layers": model.layers().len(),
        "weights": model.weight_count(),
        "input_shape": [model.input().shape.channels, model.input().shape.height, model.input().shape.width],
        "input_range": [model.input().min, model.input().max],
        "rounds": compiled.rounds(),
    })
}

fn selection_json(s: &Selection, policy: &Policy) -> serde_json::Value {
    let p = s.context.params();
    serde_json::json!({
        "name": p.name(),
        "chosen_by": if s.pinned { "user" } else { "auto" },
        "policy": policy.name(),
        "plaintext_bits": p.plaintext_bits(),
        "max_weight_l1_log2": p.max_weight_l1_log2(),
        "flooding_headroom_bits": p.budget().flooding_headroom_bits(),
        "circuit_privacy_log2_per_ciphertext": p.circuit_privacy_log2(),
        "circuit_privacy": p.circuit_privacy_statement(),
        "candidates": s.candidates.iter().map(|c| serde_json::json!({"set": c.set, "refused": c.refused})).collect::<Vec<_>>(),
    })
}

fn infer(a: Args) -> CliResult {
    if let Some(extra) = a.positional.first() {
        return Err(Usage(format!("unexpected argument {extra:?}")).into());
    }
    let json = a.has("json");
    let (model, set, inputs_name) = match (a.get("model"), a.get("inputs")) {
        (None, None) => {
            if a.get("labels").is_some() {
                return Err(Usage("--labels needs --model and --inputs".into()).into());
            }
            let name = "models/digits-test.json";
            (
                Model::from_json(DIGITS_MODEL)?,
                TestSet::from_json(name, DIGITS_TEST)?,
                name.to_owned(),
            )
        }
        (Some(m), Some(i)) => (
            load_model(Path::new(m))?,
            TestSet::load(Path::new(i), a.get("labels").map(Path::new))?,
            i.to_owned(),
        ),
        (Some(_), None) => return Err(Usage("--model needs --inputs FILE".into()).into()),
        (None, Some(_)) => {
            return Err(Usage(
                "--inputs needs --model FILE (the shipped model's inputs are built in)".into(),
            )
            .into())
        }
    };
    set.check_against(&inputs_name, &model)?;
    let count =
        match a.get("images") {
            None => 40,
            Some("all") => usize::MAX,
            Some(k) => k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                Usage(format!("--images: {k:?} is not a positive number or `all`"))
            })?,
        }
        .min(set.inputs.len());
    let policy = Policy::shipped(a.get("policy").unwrap_or("default"))?;
    let unit = match a.get("granularity") {
        None => policy.unit(),
        Some("element") => ShuffleUnit::Element,
        Some("channel") => ShuffleUnit::Channel,
        Some(g) => {
            return Err(Usage(format!("--granularity: {g:?} is not element or channel")).into())
        }
    };
    let selection = choose(&model, a.get("set"), &policy)?;
    let (ctx, compiled) = (&selection.context, &selection.model);
    let release = safhire::engine::Release {
        unit,
        noise: policy.noise(),
    };
    let (dp_text, dp_json) = dp_statement(compiled, &policy);
    let (circuit_text, circuit_json) = circuit_statement(compiled, ctx.params(), &policy);
    if !json {
        let spec = model.input();
        println!(
            "model {}: {} layers, {} weights, input {} in [{}, {}]; {} encrypted rounds",
            model.name(),
            model.layers().len(),
            model.weight_count(),
            spec.shape,
            spec.min,
            spec.max,
            compiled.rounds(),
        );
        println!(
            "parameter set {} (N = {}, t = 2^{}), policy {:?}, {} shuffling:",
            ctx.params().name(),
            ctx.n(),
            ctx.params().plaintext_bits(),
            policy.name(),
            format!("{unit:?}").to_lowercase()
        );
        print!("{}", selection.explain());
        println!("circuit privacy: {circuit_text}");
        println!("differential privacy: {dp_text}");
    }

    let keys = ClientKeys::generate(ctx, &mut Csprng::from_os());
    let (galois, pk) = server_keys(ctx, &keys)?;
    let server = ServerKeys {
        galois: &galois,
        public: &pk,
    };
    if !json {
        println!(
            "keys: generated in {:.0} ms; evaluation keys {:.2} MiB (sent once per session)",
            keys.keygen_ms,
            keys.key_bytes as f64 / 1048576.0
        );
    }

    let rounds = compiled.rounds();
    let mut client_ms = vec![0f64; rounds];
    let mut server_ms = vec![0f64; rounds];
    let (mut up, mut down) = (0usize, 0usize);
    let (mut correct, mut plain_correct, mut agree) = (0usize, 0usize, 0usize);
    let mut exporter_disagrees = 0usize;
    let mut plain_ms = 0f64;
    let bar = progress_bar(count, "inputs");
    for (k, x) in set.inputs.iter().take(count).enumerate() {
        let session = SessionSeed::generate();
        let out = engine::run_release(ctx, &keys.sk, server, compiled, x, release, &session)?;
        let t = Instant::now();
        let reference = model.evaluate(x)?;
        plain_ms += ms(t);
        agree += usize::from(out.logits == reference);
        if let Some(expected) = &set.expected_logits {
            exporter_disagrees += usize::from(expected[k] != reference);
        }
        if let Some(labels) = &set.labels {
            correct += usize::from(argmax(&out.logits) == labels[k]);
            plain_correct += usize::from(argmax(&reference) == labels[k]);
        }
        for (r, s) in out.rounds.iter().enumerate() {
            client_ms[r] += s.client_ms;
            server_ms[r] += s.server_ms;
            up += s.up_bytes;
            down += s.down_bytes;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let c = count.max(1) as f64;
    let (tc, ts): (f64, f64) = (client_ms.iter().sum(), server_ms.iter().sum());
    if json {
        let report = serde_json::json!({
            "command": "infer",
            "model": model_json(&model, compiled),
            "parameter_set": selection_json(&selection, &policy),
            "granularity": format!("{unit:?}").to_lowercase(),
            "inputs": count,
            "key_bytes": keys.key_bytes,
            "keygen_ms": keys.keygen_ms,
            "rounds": (0..rounds).map(|r| serde_json::json!({"client_ms": client_ms[r] / c, "server_ms": server_ms[r] / c})).collect::<Vec<_>>(),
            "client_ms": tc / c,
            "server_ms": ts / c,
            "plaintext_ms": plain_ms / c,
            "up_bytes": up as f64 / c,
            "down_bytes": down as f64 / c,
            "accuracy": set.labels.as_ref().map(|_| serde_json::json!({"encrypted": correct as f64 / c, "plaintext": plain_correct as f64 / c})),
            "bit_exact": agree,
            "bit_exact_all": agree == count,
            "exporter_logits_disagree": set.expected_logits.as_ref().map(|_| exporter_disagrees),
            "differential_privacy": dp_json,
            "circuit_privacy": circuit_json,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("\nper inference (mean of {count}):");
        println!("  round   client ms   server ms");
        for r in 0..rounds {
            println!(
                "  {:>5} {:>11.1} {:>11.1}",
                r + 1,
                client_ms[r] / c,
                server_ms[r] / c
            );
        }
        println!("  total {:>11.1} {:>11.1}", tc / c, ts / c);
        println!(
            "  plaintext integer inference (same run): {:.3} ms; encrypted is {:.0}x that (client + server)",
            plain_ms / c,
            (tc + ts) / plain_ms.max(1e-9)
        );
        println!(
            "  traffic: up {:.1} KiB, down {:.1} KiB",
            up as f64 / c / 1024.0,
            down as f64 / c / 1024.0
        );
        if set.labels.is_some() {
            println!(
                "\naccuracy: {correct}/{count} = {:.2}% encrypted; the plaintext integer model on the same inputs: {:.2}%",
                100.0 * correct as f64 / c,
                100.0 * plain_correct as f64 / c
            );
        } else {
            println!("\n(no labels: accuracy not computed)");
        }
        println!(
            "agreement with the plaintext reference: {agree}/{count} = {:.1}% (bit-for-bit logits{})",
            100.0 * agree as f64 / c,
            if release.noise.is_some() {
                "; DP noise is on, so they differ by design"
            } else {
                ""
            }
        );
    }
    if exporter_disagrees > 0 {
        return Err(format!(
            "{inputs_name}: its `integer_logits` differ from this crate's reference evaluator on {exporter_disagrees} of {count} inputs: the exporter's integer semantics are not MODEL-3's"
        )
        .into());
    }
    if agree == count || release.noise.is_some() {
        Ok(())
    } else {
        Err("encrypted logits differ from the plaintext reference".into())
    }
}

fn audit(a: Args) -> CliResult {
    if let Some(extra) = a.positional.first() {
        return Err(Usage(format!("unexpected argument {extra:?}")).into());
    }
    let model = match a.get("model") {
        Some(path) => load_model(Path::new(path))?,
        None => Model::from_json(DIGITS_MODEL)?,
    };
    let policy = Policy::shipped(a.get("policy").unwrap_or("default"))?;
    let set = a.get("set").filter(|s| *s != "auto");
    let report = safhire::audit::audit(&model, policy, set)?;
    if a.has("json") {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn bench(a: Args) -> CliResult {
    let json = a.has("json");
    let model = match (a.positional.as_slice(), a.get("model")) {
        ([w], None) if w == "resnet20" => safhire::model::zoo::resnet20(1),
        ([w], None) if w == "resnet18" => safhire::model::zoo::resnet18(1),
        ([w], None) if w == "digits" => Model::from_json(DIGITS_MODEL)?,
        ([], Some(path)) => load_model(Path::new(path))?,
        _ => {
            return Err(Usage(
                "name one workload (resnet20, resnet18, digits) or --model FILE".into(),
            )
            .into())
        }
    };
    let policy = Policy::shipped(a.get("policy").unwrap_or("default"))?;
    let t = Instant::now();
    let selection = choose(&model, a.get("set"), &policy)?;
    let compile_ms = ms(t);
    let (ctx, compiled) = (&selection.context, &selection.model);
    let (circuit_text, circuit_json) = circuit_statement(compiled, ctx.params(), &policy);
    if !json {
        println!(
            "{}: {} layers, {} weights, {} encrypted rounds; set {} (N = {}); chosen and weights encoded in {compile_ms:.0} ms (once per model)",
            model.name(),
            model.layers().len(),
            model.weight_count(),
            compiled.rounds(),
            ctx.params().name(),
            ctx.n()
        );
        print!("{}", selection.explain());
        println!("circuit privacy: {circuit_text}");
    }
    let keys = ClientKeys::generate(ctx, &mut Csprng::from_os());
    let (galois, pk) = server_keys(ctx, &keys)?;
    let spec = model.input();
    let mut rng = Csprng::from_os();
    let span = spec.max.abs_diff(spec.min).saturating_add(1);
    let input: Vec<i64> = (0..spec.shape.len().unwrap_or(0))
        .map(|_| spec.min.wrapping_add(rng.uniform_below(span) as i64))
        .collect();
    let t = Instant::now();
    let reference = model.evaluate(&input)?;
    let plain_ms = ms(t);
    let out = engine::run(
        ctx,
        &keys.sk,
        ServerKeys {
            galois: &galois,
            public: &pk,
        },
        compiled,
        &input,
        policy.unit(),
        &SessionSeed::generate(),
    )?;
    let client: f64 = out.rounds.iter().map(|r| r.client_ms).sum();
    let server: f64 = out.rounds.iter().map(|r| r.server_ms).sum();
    let up: usize = out.rounds.iter().map(|r| r.up_bytes).sum();
    let down: usize = out.rounds.iter().map(|r| r.down_bytes).sum();
    let exact = out.logits == reference;
    if json {
        let report = serde_json::json!({
            "command": "bench",
            "model": model_json(&model, compiled),
            "parameter_set": selection_json(&selection, &policy),
            "compile_ms": compile_ms,
            "server_ms": server,
            "client_ms": client,
            "plaintext_ms": plain_ms,
            "ratio_to_plaintext": (server + client) / plain_ms.max(1e-9),
            "rounds": out.rounds.iter().map(|r| serde_json::json!({"client_ms": r.client_ms, "server_ms": r.server_ms, "up_bytes": r.up_bytes, "down_bytes": r.down_bytes})).collect::<Vec<_>>(),
            "key_bytes": keys.key_bytes,
            "up_bytes": up,
            "down_bytes": down,
            "peak_rss_mib": peak_rss_mib(),
            "bit_exact": exact,
            "circuit_privacy": circuit_json,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let slowest = out
            .rounds
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.server_ms.total_cmp(&b.1.server_ms))
            .map(|(r, s)| format!("round {} ({:.0} ms)", r + 1, s.server_ms))
            .unwrap_or_default();
        println!(
            "server {:.2} s, client {:.1} ms (slowest: {slowest})",
            server / 1e3,
            client
        );
        println!(
            "plaintext integer inference in the same run: {plain_ms:.1} ms; encrypted is {:.0}x that",
            (server + client) / plain_ms.max(1e-9)
        );
        println!(
            "traffic: evaluation keys {:.2} MiB, up {:.2} MiB, down {:.2} MiB",
            keys.key_bytes as f64 / 1048576.0,
            up as f64 / 1048576.0,
            down as f64 / 1048576.0
        );
        if let Some(rss) = peak_rss_mib() {
            println!("peak memory: {rss:.0} MiB");
        }
        println!(
            "logits equal the plaintext reference: {}",
            if exact { "yes (bit for bit)" } else { "NO" }
        );
    }
    if exact {
        Ok(())
    } else {
        Err("encrypted logits differ from the plaintext reference".into())
    }
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
