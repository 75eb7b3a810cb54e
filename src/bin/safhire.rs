//! `safhire` command-line tool. `safhire help` lists the commands;
//! `safhire COMMAND --help` describes one.

use safhire::engine::{CompiledModel, RoundPhases};
use safhire::extract::ValueRef;
use safhire::layout::{conv2d_reference, Conv2dLayout, Conv2dShape};
use safhire::linear::EncodedLayer;
use safhire::model::{Model, TestSet};
use safhire::pack::{PackSource, Packer, Placement};
use safhire::params::ParameterSet;
use safhire::protocol::{ClientId, Policy};
use safhire::rlwe::{Context, GaloisKeys, SecretKey, SeededGaloisKey, SeededPublicKey};
use safhire::rng::Csprng;
use safhire::select::{self, Requirement, Selection};
use safhire::service::{ExchangeStats, Inference, Link};
use safhire::shuffle::ShuffleUnit;
use safhire::wire;
use safhire::ModelServer;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
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
the model under the policy; the default); s16 (N = 8192, 40-bit statistical
circuit privacy, several times b16's server time: benches/README.md) only
when named
policies: default channel benchmark dp (spec/shuffling.toml; dp adds noise, DP-8)";

/// The commands of feature `net`, listed in the usage text when built with it.
#[cfg(feature = "net")]
const NET_COMMANDS: &str = "\
  serve        serve a model over TLS to authenticated clients (feature net)
  query        encrypted inference against a `safhire serve` server: predictions,
               accuracy, per-round client/server/network time and traffic
  dev-cert     a throwaway CA and server certificate for trying serve/query
  new-token    a client's bearer token and its line for the server's token file
";
#[cfg(not(feature = "net"))]
const NET_COMMANDS: &str = "";

/// The usage text, with the `net` commands when built with them.
fn usage() -> String {
    USAGE.replacen(
        "  help         this text",
        &format!("{NET_COMMANDS}  help         this text"),
        1,
    )
}

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
  --dp-sigma S          σ of the discrete Gaussian noise, an integer >= 1 in
                        accumulator units, instead of the policy's dp_sigma
                        (only for a policy with noise: dp); the printed ε is
                        for this σ (spec/dp.md)
  --batch K             K images per session (PROTO-11: the model's
                        block-diagonal batch), the remainder one by one
                        (default 1)
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
  --policy NAME         policy the set must satisfy (default: default)
  --threads N           run the server on a local pool of N threads
                        (default: rayon's global pool, one thread per core
                        or RAYON_NUM_THREADS)
  --threads-sweep       server time at 1 and 2 threads and all available,
                        with the speed-ups, and the scaling past them
                        projected from the 1-thread run's per-task work
  --repeat K            with --threads-sweep: K runs per thread count,
                        interleaved; medians reported (default 1)
  --batch K             K random images in one session (PROTO-11), charged
                        K queries: the policy's budget must hold K
  --json                machine-readable report on stdout
  -h, --help            this text";

const PARAMS_HELP: &str = "\
usage: safhire params [--json]

The shipped parameter sets (spec/parameters.toml) with their security and
noise budgets, computed by the code that enforces them.";

const AUDIT_HELP: &str = "\
usage: safhire audit [--model FILE] [--policy NAME] [--dp-sigma S] [--set NAME|auto] [--batch K] [--json]

Runs the attacks of `safhire::audit` as the client side of real sessions
against a real endpoint serving the model (default: the shipped digits CNN)
under the policy (default: default), one client identity, and reports per
stage the sessions used, what was recovered exactly (up to the permutation
the policy hides) and whether the policy stopped it. spec/threat-model.md
lists the attacks this tool does not run yet.

  --model FILE          model file (JSON, or .onnx with --features onnx)
  --policy NAME         default, channel, benchmark or dp (spec/shuffling.toml)
  --dp-sigma S          σ of the discrete Gaussian noise, an integer >= 1 in
                        accumulator units, instead of the policy's dp_sigma
                        (only for a policy with noise: dp)
  --set NAME|auto       parameter set (default auto)
  --batch K             run the located d + 1 on the logits in sessions of K
                        images (1 to 64, at most the budget; PROTO-11): K
                        columns per session, one query per image
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("help");
    // A server, and a client of one, keep SIGPIPE ignored: a peer that
    // hangs up must be an error the command reports, not a signal that
    // ends it (a query whose server died mid-write was killed silently).
    #[cfg(unix)]
    if command != "serve" && command != "query" {
        default_sigpipe();
    }
    let rest = args.get(1..).unwrap_or_default();
    let help = match command {
        "infer" => INFER_HELP,
        "bench" => BENCH_HELP,
        "params" => PARAMS_HELP,
        "layer" => LAYER_HELP,
        "audit" => AUDIT_HELP,
        "state-graph" => STATE_GRAPH_HELP,
        #[cfg(feature = "net")]
        "serve" => net_commands::SERVE_HELP,
        #[cfg(feature = "net")]
        "query" => net_commands::QUERY_HELP,
        #[cfg(feature = "net")]
        "dev-cert" => net_commands::DEV_CERT_HELP,
        #[cfg(feature = "net")]
        "new-token" => net_commands::NEW_TOKEN_HELP,
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("error: unknown command {other:?}\n\n{}", usage());
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
                "dp-sigma",
                "batch",
            ],
            &["json"],
        )
        .and_then(infer),
        "bench" => parse(
            rest,
            &["model", "set", "policy", "threads", "repeat", "batch"],
            &["json", "threads-sweep"],
        )
        .and_then(bench),
        "params" => parse(rest, &[], &["json"]).and_then(|a| params(a.has("json"))),
        "layer" => parse(rest, &["set"], &[]).and_then(|a| layer(a.get("set").unwrap_or("b16"))),
        "audit" => parse(
            rest,
            &["model", "policy", "set", "dp-sigma", "batch"],
            &["json"],
        )
        .and_then(audit),
        #[cfg(feature = "net")]
        "serve" | "query" | "dev-cert" | "new-token" => net_commands::run(command, rest),
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
                    "log2_pq": s.log2_pq(),
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
            s.log2_pq(),
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
    println!("Flooding: discrete Gaussian with σ = 2^(F−3), bound 2^F. ρ/ciphertext: zCDP of a returned ciphertext's noise channel, SD/ciphertext: the statistical distance it implies, against clients with honest keys and uploads, at the set's worst-case noise. A model's own figure over its query budget is printed by infer and bench (proofs/noise-budget.md, \"Circuit privacy\").");
    let statistical: Vec<String> = ParameterSet::shipped_all()?
        .into_iter()
        .filter(|p| p.circuit_privacy_log2() <= -40.0)
        .map(|p| p.name().to_owned())
        .collect();
    println!(
        "40-bit statistical circuit privacy (SD ≤ 2^-40 per returned ciphertext): {}.",
        if statistical.is_empty() {
            "no set".to_owned()
        } else {
            format!("{} (used only when named: --set)", statistical.join(", "))
        }
    );
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
    let per_ciphertext = params.circuit_privacy_statement();
    (
        format!(
            "{per_ciphertext}\n  this model's noise channel {}",
            safhire::dp::describe_noise_channel(&g, budget)
        ),
        serde_json::json!({"per_ciphertext": per_ciphertext,
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
                "discrete Gaussian noise σ = {sigma} on every released value; over one identity's budget of {budget} queries (one per image, PROTO-11), \
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

/// `--batch K`: images per session, 1 (the default) to MAX_BATCH.
fn batch_arg(text: Option<&str>) -> Result<usize, Usage> {
    let Some(k) = text else { return Ok(1) };
    k.parse::<usize>()
        .ok()
        .filter(|k| (1..=safhire::protocol::MAX_BATCH).contains(k))
        .ok_or_else(|| {
            Usage(format!(
                "--batch: {k:?} is not a number of images from 1 to {}",
                safhire::protocol::MAX_BATCH
            ))
        })
}

/// The sessions `infer --batch` and `query --batch` run (PROTO-11): `batch`
/// inputs each, the remainder one by one.
fn sessions_of<'a>(inputs: &'a [&'a [i64]], batch: usize) -> impl Iterator<Item = &'a [&'a [i64]]> {
    let full = inputs.len() - inputs.len() % batch;
    inputs[..full].chunks(batch).chain(inputs[full..].chunks(1))
}

fn argmax(v: &[i64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// The named policy with the shuffle granularity `unit` and, when `allow`,
/// without PROTO-6's refusal of a budget within reach of the known
/// attacks; every other field is the named policy's.
fn derived_policy(
    policy: &Policy,
    unit: ShuffleUnit,
    allow: bool,
) -> Result<Policy, Box<dyn std::error::Error>> {
    rebuilt_policy(policy, unit, allow, policy.dp_sigma())
}

/// The named shipped policy, with `--dp-sigma` (if given) in place of its
/// `dp_sigma`. Only a policy that already adds noise takes the flag: the
/// others' budgets and verdicts were chosen for exact accumulators.
fn policy_from_args(a: &Args) -> Result<Policy, Box<dyn std::error::Error>> {
    let policy = Policy::shipped(a.get("policy").unwrap_or("default"))?;
    let Some(text) = a.get("dp-sigma") else {
        return Ok(policy);
    };
    let sigma = text
        .parse::<u32>()
        .ok()
        .filter(|&s| s >= 1)
        .ok_or_else(|| {
            Usage(format!(
                "--dp-sigma: {text:?} is not an integer from 1 to {}",
                u32::MAX
            ))
        })?;
    if policy.dp_sigma().is_none() {
        return Err(Usage(format!(
            "--dp-sigma: policy {:?} adds no noise; use it with --policy dp",
            policy.name()
        ))
        .into());
    }
    // Through `Policy::load`, the same validation as a policy file's
    // `dp_sigma` (DP-1's range of σ included).
    rebuilt_policy(
        &policy,
        policy.unit(),
        policy.allows_budget_above_attack_threshold(),
        Some(sigma),
    )
    .map_err(|e| format!("--dp-sigma {sigma}: {e}").into())
}

/// `policy` written back as TOML with the granularity `unit`, the opt-in
/// `allow` and the noise `dp_sigma`, and loaded (validated) again.
fn rebuilt_policy(
    policy: &Policy,
    unit: ShuffleUnit,
    allow: bool,
    dp_sigma: Option<u32>,
) -> Result<Policy, Box<dyn std::error::Error>> {
    let mut toml = format!(
        "[[policy]]\nname = {}\ngranularity = \"{}\"\nquery_budget = {}\nallow_budget_above_attack_threshold = {allow}\n",
        serde_json::to_string(policy.name())?,
        format!("{unit:?}").to_lowercase(),
        policy.query_budget()
    );
    if let Some(bits) = policy.min_flooding_headroom_bits() {
        toml.push_str(&format!("min_flooding_headroom_bits = {bits}\n"));
    }
    if let Some(sigma) = dp_sigma {
        toml.push_str(&format!("dp_sigma = {sigma}\n"));
    }
    Ok(Policy::load(&toml, policy.name())?)
}

/// Whether the named policy, with the granularity `unit`, would serve
/// `compiled` to untrusted clients (PROTO-6), in words.
fn policy_verdict(
    policy: &Policy,
    unit: ShuffleUnit,
    compiled: &CompiledModel,
) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let policy = &derived_policy(policy, unit, policy.allows_budget_above_attack_threshold())?;
    Ok(match policy.check_model(compiled) {
        Err(e) => (false, format!("no: {}", e.kind)),
        Ok(()) => match policy.attack_threshold(compiled) {
            None => (true, "yes (no stage holds secret weights)".into()),
            Some((queries, _)) if policy.query_budget().saturating_add(1) >= queries => (
                true,
                format!(
                    "yes, by opting in: its budget of {} is within reach of a {queries}-session attack",
                    policy.query_budget()
                ),
            ),
            Some((queries, _)) => (
                true,
                format!(
                    "yes: its budget of {} stays below the cheapest known attack's {queries} sessions",
                    policy.query_budget()
                ),
            ),
        },
    })
}

/// The model served in this process through the facade, as `infer` and
/// `bench` run it: every inference is a session of the typed protocol
/// (PROTO-1), over the in-process transport, under the named policy with
/// the granularity `unit` and without PROTO-6's refusal, since the model's
/// owner is its own client here (`policy_verdict` says whether the policy
/// would serve the model to untrusted clients).
fn owner_server(
    context: Context,
    compiled: CompiledModel,
    policy: &Policy,
    unit: ShuffleUnit,
    batched: Option<CompiledModel>,
) -> Result<ModelServer, Box<dyn std::error::Error>> {
    let mut builder = ModelServer::builder_compiled(Arc::new(context), Arc::new(compiled))
        .policy(derived_policy(policy, unit, true)?);
    if let Some(b) = batched {
        builder = builder.compiled_batch(Arc::new(b));
    }
    Ok(builder.build()?)
}

/// Per-round sums over inferences: the client's and the server's time,
/// where the server's went, and the traffic.
#[derive(Default)]
struct RoundTotals {
    client_ms: f64,
    server_ms: f64,
    phases: RoundPhases,
    up: usize,
    down: usize,
}

impl RoundTotals {
    fn add(&mut self, r: &ExchangeStats) {
        self.client_ms += r.client_ms;
        self.server_ms += r.server_ms.unwrap_or(0.0);
        if let Some(p) = &r.phases {
            self.phases.add(p);
        }
        self.up += r.up_bytes;
        self.down += r.down_bytes;
    }

    /// Server time outside the four phases: decoding the upload, encoding
    /// the response, the session's bookkeeping.
    fn other_ms(&self) -> f64 {
        (self.server_ms - self.phases.total_ms()).max(0.0)
    }

    fn json(&self, c: f64) -> serde_json::Value {
        serde_json::json!({
            "client_ms": self.client_ms / c,
            "server_ms": self.server_ms / c,
            "up_bytes": self.up as f64 / c,
            "down_bytes": self.down as f64 / c,
            "server_phases_ms": {
                "repack": self.phases.repack_ms / c,
                "linear": self.phases.linear_ms / c,
                "pack": self.phases.pack_ms / c,
                "sanitise": self.phases.sanitise_ms / c,
                "decode_encode": self.other_ms() / c,
            },
            "pack_work": {
                "repack": work_json(&self.phases.repack_work, c),
                "pack": work_json(&self.phases.pack_work, c),
            },
        })
    }
}

/// A pack's counted work (mean over `c` sessions) as JSON.
fn work_json(w: &safhire::pack::PackWork, c: f64) -> serde_json::Value {
    serde_json::json!({
        "node_key_switches": w.node_key_switches as f64 / c,
        "image_key_switches": w.image_key_switches as f64 / c,
        "rotate_adds": w.rotate_adds as f64 / c,
    })
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
    let policy = policy_from_args(&a)?;
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
    let noise = policy.noise().is_some();
    let (dp_text, dp_json) = dp_statement(compiled, &policy);
    let (circuit_text, circuit_json) = circuit_statement(compiled, ctx.params(), &policy);
    let (serves, serves_text) = policy_verdict(&policy, unit, compiled)?;
    let selection_report = selection_json(&selection, &policy);
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
        println!(
            "would policy {:?} ({} shuffling) serve this model to untrusted clients? {serves_text}",
            policy.name(),
            format!("{unit:?}").to_lowercase()
        );
    }

    // Client and server in this process, through the typed protocol: one
    // session per input (or per --batch inputs), each with fresh keys,
    // every message encoded and decoded (src/service.rs). Each session is
    // its own identity's single session: the owner's queries of its own
    // model spend no budget of anyone's.
    let batch = batch_arg(a.get("batch"))?;
    let batched = (batch > 1)
        .then(|| safhire::engine::compile_batch(&selection.context, &model, batch))
        .transpose()?;
    let server = owner_server(selection.context, selection.model, &policy, unit, batched)?;
    let compiled = server.model().clone();
    let rounds = compiled.rounds();
    let mut totals: Vec<RoundTotals> = (0..rounds).map(|_| RoundTotals::default()).collect();
    let mut setup = RoundTotals::default();
    let (mut correct, mut plain_correct, mut agree) = (0usize, 0usize, 0usize);
    let mut exporter_disagrees = 0usize;
    let mut plain_ms = 0f64;
    let bar = progress_bar(count, "inputs");
    // Sessions of `batch` inputs, the remainder one by one (PROTO-11).
    let inputs: Vec<&[i64]> = set.inputs[..count].iter().map(Vec::as_slice).collect();
    let mut sessions = 0usize;
    let mut first = 0usize;
    for chunk in sessions_of(&inputs, batch) {
        let out = server
            .client(ClientId(format!("infer-{first}")))
            .infer_batch(chunk)?;
        for (i, (x, logits)) in chunk.iter().zip(out.image_logits()).enumerate() {
            let k = first + i;
            let t = Instant::now();
            let reference = model.evaluate(x)?;
            plain_ms += ms(t);
            agree += usize::from(logits == reference.as_slice());
            if let Some(expected) = &set.expected_logits {
                exporter_disagrees += usize::from(expected[k] != reference);
            }
            if let Some(labels) = &set.labels {
                correct += usize::from(argmax(logits) == labels[k]);
                plain_correct += usize::from(argmax(&reference) == labels[k]);
            }
            bar.inc(1);
        }
        setup.add(&out.setup);
        for (total, r) in totals.iter_mut().zip(&out.rounds) {
            total.add(r);
        }
        sessions += 1;
        first += chunk.len();
    }
    bar.finish_and_clear();
    let c = count.max(1) as f64;
    let tc: f64 = totals.iter().map(|r| r.client_ms).sum();
    let ts: f64 = totals.iter().map(|r| r.server_ms).sum();
    let up: usize = totals.iter().map(|r| r.up).sum();
    let down: usize = totals.iter().map(|r| r.down).sum();
    let key_bytes = setup.up / sessions.max(1);
    let per_session = sessions.max(1) as f64;
    if json {
        let report = serde_json::json!({
            "command": "infer",
            "model": model_json(&model, &compiled),
            "parameter_set": selection_report,
            "granularity": format!("{unit:?}").to_lowercase(),
            "transport": "typed protocol, in process (one session per input, or per --batch inputs)",
            "batch": batch,
            "sessions": sessions,
            "machine": machine_json(),
            "policy_serves_untrusted_clients": serves,
            "policy_verdict": serves_text,
            "inputs": count,
            "key_bytes": key_bytes,
            "keygen_ms": setup.client_ms / per_session,
            "key_expansion_ms": setup.server_ms / per_session,
            "rounds": totals.iter().map(|r| r.json(c)).collect::<Vec<_>>(),
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
        println!("{}", machine_line());
        println!(
            "keys: generated in {:.0} ms by the client, expanded in {:.0} ms by the server (mean per session); evaluation keys {:.2} MiB (sent once per session)",
            setup.client_ms / per_session,
            setup.server_ms / per_session,
            key_bytes as f64 / 1048576.0
        );
        println!(
            "\nper inference (mean of {count} images in {sessions} session(s) of the typed protocol, in process):"
        );
        println!("  round   client ms   server ms =  repack  linear    pack sanitise   other");
        let row = |label: &str, r: &RoundTotals| {
            println!(
                "  {label:>5} {:>11.1} {:>11.1}   {:>7.1} {:>7.1} {:>7.1} {:>8.1} {:>7.1}",
                r.client_ms / c,
                r.server_ms / c,
                r.phases.repack_ms / c,
                r.phases.linear_ms / c,
                r.phases.pack_ms / c,
                r.phases.sanitise_ms / c,
                r.other_ms() / c
            )
        };
        let mut all = RoundTotals::default();
        for (r, total) in totals.iter().enumerate() {
            row(&(r + 1).to_string(), total);
            all.client_ms += total.client_ms;
            all.server_ms += total.server_ms;
            all.phases.add(&total.phases);
        }
        row("total", &all);
        println!("  (server: repack = unshuffle into the stage's layout, linear = the stage and its bias, pack = shuffle and output pack, sanitise = re-randomise and flood, other = decode and encode)");
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
            if noise {
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
    if agree == count || noise {
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
    let policy = policy_from_args(&a)?;
    let set = a.get("set").filter(|s| *s != "auto");
    let options = safhire::audit::AuditOptions::batched(batch_arg(a.get("batch"))?);
    let report = safhire::audit::audit_with(&model, policy, set, options)?;
    if a.has("json") {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn bench(a: Args) -> CliResult {
    let json = a.has("json");
    // Threads (src/par.rs): the server's loops run on rayon's global pool
    // (RAYON_NUM_THREADS, else one thread per core) unless a local pool of
    // --threads N is installed; --threads-sweep runs 1, 2 and all threads.
    let positive = |name: &str| -> Result<Option<usize>, Usage> {
        a.get(name)
            .map(|v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Usage(format!("--{name} needs a positive integer, not {v:?}")))
            })
            .transpose()
    };
    let threads = positive("threads")?;
    let repeat = positive("repeat")?;
    let batch = batch_arg(a.get("batch"))?;
    let sweep = a.has("threads-sweep");
    if sweep && threads.is_some() {
        return Err(Usage("--threads and --threads-sweep exclude each other".into()).into());
    }
    if repeat.is_some() && !sweep {
        return Err(Usage("--repeat goes with --threads-sweep".into()).into());
    }
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
    let spec = model.input();
    let mut rng = Csprng::from_os();
    let span = spec.max.abs_diff(spec.min).saturating_add(1);
    let inputs: Vec<Vec<i64>> = (0..batch)
        .map(|_| {
            (0..spec.shape.len().unwrap_or(0))
                .map(|_| spec.min.wrapping_add(rng.uniform_below(span) as i64))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let reference = inputs
        .iter()
        .map(|x| model.evaluate(x))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let plain_ms = ms(t);
    // PROTO-11: a session of several images runs the block-diagonal model
    // compiled for them.
    let t = Instant::now();
    let batched = (batch > 1)
        .then(|| safhire::engine::compile_batch(&selection.context, &model, batch))
        .transpose()?;
    let batch_compile_ms = ms(t);
    // One inference = one session of the typed protocol over the
    // in-process transport (src/service.rs), fresh keys included; each run
    // is its own identity's single session.
    let selection_report = selection_json(&selection, &policy);
    let server = owner_server(
        selection.context,
        selection.model,
        &policy,
        policy.unit(),
        batched,
    )?;
    let compiled = server.model().clone();
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let input_refs: Vec<&[i64]> = inputs.iter().map(Vec::as_slice).collect();
    let infer = || {
        let k = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        server
            .client(ClientId(format!("bench-{k}")))
            .infer_batch(&input_refs)
    };
    let pool = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build();
    let server_of = |o: &Inference| o.server_ms();
    let mut exact = true;
    let mut scaling = None;
    let (out, pool_threads) = if sweep {
        // 1 and 2 threads, and all the machine has if more; runs
        // interleaved (1, 2, …, 1, 2, …) so that load from elsewhere hits
        // every count alike. The first 1-thread run is also profiled: the
        // per-task work and span of its parallel loops give the model of
        // the scaling past the cores measured.
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut counts = vec![1, 2];
        if all > 2 {
            counts.push(all);
        }
        let pools = counts
            .iter()
            .map(|&n| pool(n))
            .collect::<Result<Vec<_>, _>>()?;
        let (first, profile) = safhire::par::profile_on_one_thread(infer)?;
        let first = first?;
        exact &= first.logits == reference;
        let mut times: Vec<Vec<f64>> = vec![vec![server_of(&first)]];
        times.resize(counts.len(), Vec::new());
        for rep in 0..repeat.unwrap_or(1) {
            for (i, p) in pools.iter().enumerate() {
                if rep == 0 && i == 0 {
                    continue;
                }
                let o = p.install(infer)?;
                exact &= o.logits == reference;
                times[i].push(server_of(&o));
            }
        }
        scaling = Some((counts, times, profile, server_of(&first), all));
        (first, 1)
    } else if let Some(n) = threads {
        (pool(n)?.install(infer)?, n)
    } else {
        (infer()?, rayon::current_num_threads())
    };
    let client = out.client_ms();
    let server = out.server_ms();
    let up: usize = out.rounds.iter().map(|r| r.up_bytes).sum();
    let down: usize = out.rounds.iter().map(|r| r.down_bytes).sum();
    let key_bytes = out.setup.up_bytes;
    exact &= out.logits == reference;
    // The paper's links (issue 9): bandwidth only, every exchange in turn.
    let latencies: Vec<(f64, f64, f64)> = LINK_MB_PER_S
        .iter()
        .map(|&mb| {
            let link = Link::bandwidth_only(mb);
            (
                mb,
                out.modelled_latency_ms(link, true),
                out.modelled_latency_ms(link, false),
            )
        })
        .collect();
    let round_totals: Vec<RoundTotals> = out
        .rounds
        .iter()
        .map(|r| {
            let mut t = RoundTotals::default();
            t.add(r);
            t
        })
        .collect();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    // Measured medians per thread count, then the model's projection:
    // serial time (server time outside parallel loops) plus, per loop,
    // max(W/P, S) (ideal) to W/P + S (Brent's bound for a greedy schedule).
    let projected = [2usize, 4, 8, 16, 32];
    let sweep_json = scaling.as_ref().map(|(counts, times, profile, t1, all)| {
        let base = median(&times[0]);
        let serial = (t1 - profile.work_ms()).max(0.0);
        serde_json::json!({
            "available_threads": all,
            "runs_per_count": times[0].len(),
            "measured": counts.iter().zip(times).map(|(n, t)| serde_json::json!({
                "threads": n,
                "server_ms": t,
                "median_server_ms": median(t),
                "speedup": base / median(t),
            })).collect::<Vec<_>>(),
            "model": {
                "profiled_server_ms": t1,
                "parallel_work_ms": profile.work_ms(),
                "parallel_span_ms": profile.span_ms(),
                "serial_ms": serial,
                "parallel_regions": profile.regions.len(),
                "tasks": profile.tasks,
                "projection": projected.iter().map(|&p| serde_json::json!({
                    "threads": p,
                    "ideal_ms": serial + profile.ideal_ms(p),
                    "greedy_bound_ms": serial + profile.greedy_bound_ms(p),
                    "speedup_ideal": t1 / (serial + profile.ideal_ms(p)),
                    "speedup_greedy_bound": t1 / (serial + profile.greedy_bound_ms(p)),
                })).collect::<Vec<_>>(),
            },
        })
    });
    if json {
        let report = serde_json::json!({
            "command": "bench",
            "model": model_json(&model, &compiled),
            "parameter_set": selection_report,
            "compile_ms": compile_ms,
            "transport": "typed protocol, in process",
            "machine": machine_json(),
            "batch": batch,
            "batch_compile_ms": batch_compile_ms,
            "server_ms_per_image": server / batch as f64,
            "keygen_ms": out.setup.client_ms,
            "key_expansion_ms": out.setup.server_ms,
            "server_ms": server,
            "client_ms": client,
            "plaintext_ms": plain_ms,
            "ratio_to_plaintext": (server + client) / plain_ms.max(1e-9),
            "rounds": round_totals.iter().map(|r| {
                let mut j = r.json(1.0);
                j["up_bytes"] = r.up.into();
                j["down_bytes"] = r.down.into();
                j
            }).collect::<Vec<_>>(),
            "key_bytes": key_bytes,
            "up_bytes": up,
            "down_bytes": down,
            "peak_rss_mib": peak_rss_mib(),
            "bit_exact": exact,
            "modelled_latency": latencies.iter().map(|&(mb, with_keys, without)| serde_json::json!({
                "mb_per_s": mb,
                "round_trip_ms": 0.0,
                "with_key_upload_ms": with_keys,
                "keys_already_sent_ms": without,
            })).collect::<Vec<_>>(),
            "exchanges": out.rounds.len() + 1,
            "circuit_privacy": circuit_json,
            "threads": pool_threads,
            "threads_sweep": sweep_json,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let slowest = round_totals
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.server_ms.total_cmp(&b.1.server_ms))
            .map(|(r, s)| format!("round {} ({:.0} ms)", r + 1, s.server_ms))
            .unwrap_or_default();
        println!(
            "server {:.2} s on {pool_threads} thread(s), client {:.1} ms (slowest: {slowest}); one session of the typed protocol, in process",
            server / 1e3,
            client
        );
        if batch > 1 {
            println!(
                "  {batch} images in the session (the block-diagonal model, compiled in {batch_compile_ms:.0} ms): server {:.2} ms per image",
                server / batch as f64
            );
        }
        println!("  {}", machine_line());
        println!(
            "  session setup: keys generated in {:.0} ms by the client, expanded in {:.0} ms by the server (not in the times above)",
            out.setup.client_ms,
            out.setup.server_ms.unwrap_or(0.0)
        );
        let mut work = safhire::pack::PackWork::default();
        for (r, t) in round_totals.iter().enumerate() {
            println!(
                "  round {}: server {:.1} ms = repack (unshuffle) {:.1} + linear {:.1} + output pack {:.1} + sanitise {:.1} + decode/encode {:.1}; client {:.1} ms",
                r + 1,
                t.server_ms,
                t.phases.repack_ms,
                t.phases.linear_ms,
                t.phases.pack_ms,
                t.phases.sanitise_ms,
                t.other_ms(),
                t.client_ms
            );
            work += t.phases.repack_work;
            work += t.phases.pack_work;
        }
        println!(
            "  packing work, counted (repacks and output packs): {} node and {} image key switches, {} rotate-adds",
            work.node_key_switches, work.image_key_switches, work.rotate_adds
        );
        if let Some((counts, times, profile, t1, all)) = &scaling {
            let base = median(&times[0]);
            println!(
                "server time by threads (median of {} run(s) each, interleaved; {all} available):",
                times[0].len()
            );
            for (n, t) in counts.iter().zip(times) {
                println!(
                    "  {n:>3} thread(s): {:8.2} s   speed-up {:.2}x",
                    median(t) / 1e3,
                    base / median(t)
                );
            }
            let serial = (t1 - profile.work_ms()).max(0.0);
            println!(
                "scaling model from the profiled 1-thread run ({:.2} s): {} parallel loops ({} tasks), work {:.2} s, span {:.3} s, serial rest {:.3} s ({:.2} %); per loop max(W/P, S) to W/P + S, no memory-bandwidth or clock limits modelled:",
                t1 / 1e3,
                profile.regions.len(),
                profile.tasks,
                profile.work_ms() / 1e3,
                profile.span_ms() / 1e3,
                serial / 1e3,
                100.0 * serial / t1.max(1e-9)
            );
            for p in projected {
                let (ideal, bound) = (
                    serial + profile.ideal_ms(p),
                    serial + profile.greedy_bound_ms(p),
                );
                println!(
                    "  {p:>3} threads: {:.2}–{:.2} s, speed-up {:.2}x–{:.2}x",
                    ideal / 1e3,
                    bound / 1e3,
                    t1 / bound,
                    t1 / ideal
                );
            }
        }
        println!(
            "plaintext integer inference in the same run: {plain_ms:.1} ms; encrypted is {:.0}x that",
            (server + client) / plain_ms.max(1e-9)
        );
        println!(
            "traffic: evaluation keys {:.2} MiB, up {:.2} MiB, down {:.2} MiB",
            key_bytes as f64 / 1048576.0,
            up as f64 / 1048576.0,
            down as f64 / 1048576.0
        );
        println!(
            "modelled end to end (this run's computation, its bytes at the link's bandwidth, {} exchanges in turn, no propagation delay: add {} round trips):",
            out.rounds.len() + 1,
            out.rounds.len() + 1
        );
        for (mb, with_keys, without) in &latencies {
            println!(
                "  {mb:>6} MB/s: {:8.2} s with the key upload, {:8.2} s with the keys already at the server",
                with_keys / 1e3,
                without / 1e3
            );
        }
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

/// The links `bench` models the end-to-end latency at, in MB/s (10^6
/// bytes): the Safhire paper's 1.25 MB/s and ten and a hundred times it.
const LINK_MB_PER_S: [f64; 3] = [1.25, 12.5, 125.0];

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The CPU's model name (Linux's /proc/cpuinfo), for reports.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Where a time was measured: the same run takes about four times as long
/// on AVX2 as on AVX-512, so every reported figure carries it.
fn machine_json() -> serde_json::Value {
    serde_json::json!({
        "cpu": cpu_model(),
        "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "kernels": safhire::math::kernels().name(),
    })
}

/// [`machine_json`] as one line of text.
fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {}, {cpus} logical CPU(s); kernels: {}",
        cpu_model().unwrap_or_else(|| "CPU model unknown".into()),
        safhire::math::kernels()
    )
}

/// `serve`, `query`, `dev-cert` and `new-token` (feature `net`,
/// spec/transport.md).
#[cfg(feature = "net")]
mod net_commands {
    use super::{
        argmax, choose, load_model, parse, Args, CliResult, Usage, DIGITS_MODEL, DIGITS_TEST,
    };
    use safhire::model::{Model, TestSet};
    use safhire::net::{
        self, ConnectConfig, Connection, Exchange, NetError, Refusal, ServeConfig, Service,
        Timeouts, TokenTable,
    };
    use safhire::params::ParameterSet;
    use safhire::protocol::{Endpoint, Policy};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// `serve`'s ledger when `--ledger` is not given (PROTO-8).
    const DEFAULT_LEDGER: &str = "safhire-ledger.sqlite";

    pub const SERVE_HELP: &str = "\
usage: safhire serve --listen ADDR --cert PEM --key PEM --tokens FILE [OPTIONS]

Serves a model over TLS 1.3 to clients with a bearer token
(spec/transport.md). Each session is charged to the client identity of the
token file's matching entry, before any work; the policy's budget applies
per identity. The first line on standard output is `listening on ADDR`;
one line per connection goes to standard error. SIGINT or SIGTERM stops
accepting, lets sessions in flight finish (up to --grace-secs), and exits.

  --model FILE|NAME     a model file (JSON, or .onnx with --features onnx), or
                        `digits`, the shipped CNN (the default)
  --policy NAME         default, channel, benchmark or dp (spec/shuffling.toml;
                        default: default)
  --set NAME|auto       parameter set (default auto)
  --listen ADDR         HOST:PORT to listen on (port 0: any free port)
  --cert PEM            the server's certificate chain (PEM)
  --key PEM             its private key (PEM: PKCS#8, PKCS#1 or SEC1)
  --tokens FILE         `CLIENT-ID SHA256-HEX` lines (safhire new-token makes them)
  --batches LIST        also serve sessions of these numbers of images
                        (comma-separated, 2 to 64; PROTO-11), each image one
                        query of the budget (default: single images only)
  --ledger FILE|URL|memory
                        count queries in this SQLite file or PostgreSQL
                        database (postgres://…, --features postgres), so budgets
                        survive restarts; `memory`: counts a restart resets
                        (default: the SQLite file safhire-ledger.sqlite in the
                        working directory)
  --max-sessions N      connections served at once; more are refused as busy
                        (default 16)
  --max-handshakes N    connections in the TLS handshake at once; more are
                        closed before any TLS work (default 64)
  --timeout-secs N      how long a client may idle between frames or take over
                        one (default 60)
  --grace-secs N        how long sessions in flight may run after a shutdown
                        signal (default 30)
  --json                the listening address and the final summary as JSON
  -h, --help            this text";

    pub const QUERY_HELP: &str = "\
usage: safhire query --server ADDR --server-name NAME --ca PEM --token-file FILE
                     [--inputs FILE [--labels FILE]] [OPTIONS]

Encrypted inference against a `safhire serve` server: one session per
input, each charged to the token's identity. The server's certificate must
chain to the CA and carry the server name; its parameter set must be a
shipped one with the fingerprint it announces. Prints each prediction,
accuracy against the labels, and per round the client's, the server's and
the network's time and the bytes sent and received. A refusal (budget
exhausted, unauthenticated, busy, shutting down, protocol violation) is
reported as such after the results of the inputs already done; exit code 1.

  --server ADDR         HOST:PORT of the server
  --server-name NAME    the DNS name or IP address its certificate carries
  --ca PEM              the CA certificate(s) to trust
  --token-file FILE     the bearer token, alone on the first line
  --inputs FILE         inputs: JSON or integer .npy, as for `infer` (default:
                        the shipped digits test images, with labels)
  --labels FILE         labels: JSON array or 1-D integer .npy (optional)
  --images K|all        how many inputs to run (default: all of --inputs, 5 of
                        the shipped images)
  --set NAME            insist on this parameter set (default: the one the
                        server names, if this build ships it)
  --timeout-secs N      connecting and each wait for the server (default 120)
  --batch K             K images per session (the server must serve K:
                        serve --batches; PROTO-11), the remainder one by one;
                        each image is one query of the budget (default 1)
  --json                machine-readable report with the logits on stdout
  -h, --help            this text";

    pub const DEV_CERT_HELP: &str = "\
usage: safhire dev-cert --out DIR [--names NAME,NAME,...]

Writes a throwaway certificate authority (DIR/ca.pem, for query --ca) and a
server certificate it signed (DIR/server.pem and DIR/server.key, for serve
--cert and --key), valid for the names (default localhost,127.0.0.1,::1).
For trials and tests only: the CA's key is not kept. Refuses to overwrite.

  --out DIR             the directory (created if missing)
  --names LIST          DNS names or IP addresses, comma-separated
  -h, --help            this text";

    pub const NEW_TOKEN_HELP: &str = "\
usage: safhire new-token --id CLIENT-ID --out FILE

Writes a fresh random bearer token to FILE (mode 0600; for query
--token-file) and prints the line to add to the server's token file:
`CLIENT-ID SHA256-HEX`. The server keeps only the digest. Refuses to
overwrite FILE.

  --id CLIENT-ID        1 to 64 characters of A-Z a-z 0-9 . _ @ -
  --out FILE            where the token goes
  -h, --help            this text";

    pub fn run(command: &str, rest: &[String]) -> CliResult {
        match command {
            "serve" => parse(
                rest,
                &[
                    "model",
                    "policy",
                    "set",
                    "listen",
                    "cert",
                    "key",
                    "tokens",
                    "ledger",
                    "max-sessions",
                    "max-handshakes",
                    "timeout-secs",
                    "grace-secs",
                    "batches",
                ],
                &["json"],
            )
            .and_then(serve),
            "query" => parse(
                rest,
                &[
                    "server",
                    "server-name",
                    "ca",
                    "token-file",
                    "inputs",
                    "labels",
                    "images",
                    "set",
                    "timeout-secs",
                    "batch",
                ],
                &["json"],
            )
            .and_then(query),
            "dev-cert" => parse(rest, &["out", "names"], &[]).and_then(dev_cert),
            _ => parse(rest, &["id", "out"], &[]).and_then(new_token),
        }
    }

    /// `--batches 2,4`: numbers of images per session, each 2 to MAX_BATCH.
    fn batch_list(arg: Option<&str>) -> Result<Vec<usize>, Usage> {
        let Some(text) = arg else {
            return Ok(Vec::new());
        };
        text.split(',')
            .map(|k| {
                k.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|k| (2..=safhire::protocol::MAX_BATCH).contains(k))
                    .ok_or_else(|| {
                        Usage(format!(
                            "--batches: {k:?} is not a number of images from 2 to {}",
                            safhire::protocol::MAX_BATCH
                        ))
                    })
            })
            .collect()
    }

    fn no_positional(a: &Args) -> CliResult {
        match a.positional.first() {
            Some(extra) => Err(Usage(format!("unexpected argument {extra:?}")).into()),
            None => Ok(()),
        }
    }

    fn required<'a>(a: &'a Args, name: &str) -> Result<&'a str, Usage> {
        a.get(name)
            .ok_or_else(|| Usage(format!("--{name} is required")))
    }

    fn positive(a: &Args, name: &str, default: u64) -> Result<u64, Usage> {
        match a.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0 && n <= 1 << 32)
                .ok_or_else(|| Usage(format!("--{name}: {v:?} is not a positive number"))),
        }
    }

    fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error>> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}").into())
    }

    /// `--model FILE|NAME`: a file if one exists at that path, else a
    /// shipped model by name.
    fn resolve_model(spec: Option<&str>) -> Result<Model, Box<dyn std::error::Error>> {
        match spec {
            None => Ok(Model::from_json(DIGITS_MODEL)?),
            Some(path) if Path::new(path).exists() => load_model(Path::new(path)),
            Some("digits") => Ok(Model::from_json(DIGITS_MODEL)?),
            Some(other) => Err(format!(
                "--model {other:?}: no such file, and not a shipped model (digits)"
            )
            .into()),
        }
    }

    fn serve(a: Args) -> CliResult {
        no_positional(&a)?;
        let json = a.has("json");
        let listen = required(&a, "listen")?;
        let (cert, key, tokens_path) = (
            required(&a, "cert")?,
            required(&a, "key")?,
            required(&a, "tokens")?,
        );
        let max_sessions = positive(&a, "max-sessions", 16)? as usize;
        let max_handshakes = positive(&a, "max-handshakes", 64)? as usize;
        let timeout = Duration::from_secs(positive(&a, "timeout-secs", 60)?);
        let grace = Duration::from_secs(positive(&a, "grace-secs", 30)?);
        // --ledger: a postgres:// URL (feature postgres, PROTO-9), `memory`,
        // or a SQLite file (PROTO-8; `net` brings `sqlite`), by default one in
        // the working directory, so budgets survive a restart unless the
        // operator says otherwise. A build without PostgreSQL refuses a URL
        // here, before any work.
        let ledger_arg = a.get("ledger").unwrap_or(DEFAULT_LEDGER);
        let ledger_url = Some(ledger_arg)
            .filter(|l| l.starts_with("postgres://") || l.starts_with("postgresql://"));
        if ledger_url.is_some() && !cfg!(feature = "postgres") {
            return Err(
                "--ledger postgres://… needs a build with the PostgreSQL ledger: \
                 --features net,postgres"
                    .into(),
            );
        }

        let tls = net::tls::server_config(Path::new(cert), Path::new(key))?;
        let tokens = TokenTable::load(Path::new(tokens_path))?;
        let identities = tokens.len();
        let model = resolve_model(a.get("model"))?;
        let policy = Policy::shipped(a.get("policy").unwrap_or("default"))?;
        let selection = choose(&model, a.get("set"), &policy)?;
        let rounds = selection.model.rounds();
        let ctx = Arc::new(selection.context);
        let set = ctx.params().name().to_owned();
        let budget = policy.query_budget();
        let policy_name = policy.name().to_owned();
        let mut endpoint = Endpoint::new(ctx.clone(), Arc::new(selection.model), policy)?;
        // PROTO-11: the batches to serve besides single images.
        for k in batch_list(a.get("batches"))? {
            let batched = safhire::engine::compile_batch(&ctx, &model, k)
                .map_err(|e| format!("--batches {k}: {e}"))?;
            endpoint = endpoint
                .with_batch(Arc::new(batched))
                .map_err(|e| format!("--batches {k}: {e}"))?;
        }
        let batches: Vec<usize> = endpoint.batches().collect();
        let (endpoint, ledger) = match (ledger_arg, ledger_url) {
            ("memory", _) => (endpoint, "memory (a restart resets every count)".to_owned()),
            // The URL may hold a password: only `target()` is ever shown.
            #[cfg(feature = "postgres")]
            (_, Some(url)) => {
                let ledger = safhire::protocol::PostgresLedger::connect(url)
                    .map_err(|e| format!("--ledger: {e}"))?;
                let shown = format!("PostgreSQL {}", ledger.target());
                (endpoint.with_ledger(Box::new(ledger)), shown)
            }
            (path, None) => {
                let ledger = safhire::protocol::SqliteLedger::open(Path::new(path))
                    .map_err(|e| format!("--ledger {path}: {e}"))?;
                (
                    endpoint.with_ledger(Box::new(ledger)),
                    format!("SQLite {path}"),
                )
            }
            #[allow(unreachable_patterns)]
            _ => return Err("--ledger: not supported by this build".into()),
        };

        let mut config = ServeConfig::new(tls, tokens);
        config.max_sessions = max_sessions;
        config.max_handshakes = max_handshakes;
        config.timeouts = Timeouts {
            idle: timeout,
            read: timeout,
        };
        config.grace = grace;
        config.log = true;
        let rt = runtime()?;
        let summary = rt.block_on(async {
            let service = Service::bind(listen, endpoint, config).await?;
            let addr = service.local_addr()?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"listening": addr.to_string(), "model": model.name(),
                        "rounds": rounds, "parameter_set": set, "policy": policy_name,
                        "budget": budget, "identities": identities, "ledger": ledger,
                        "max_sessions": max_sessions, "batches": batches})
                );
            } else {
                println!("listening on {addr}");
                println!(
                    "serving {} ({rounds} encrypted rounds) with parameter set {set} under policy {policy_name:?}: \
                     {budget} queries (images) per client identity ({identities} in {tokens_path}); \
                     sessions of {batches:?} image(s); at most {max_sessions} connections at once; ledger: {ledger}",
                    model.name()
                );
            }
            let handle = service.shutdown_handle();
            tokio::spawn(async move {
                wait_for_signal().await;
                eprintln!("shutdown requested: no new connections");
                handle.shutdown();
            });
            Ok::<_, NetError>(service.run().await)
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        let summary = summary?;
        if json {
            println!(
                "{}",
                serde_json::json!({"stopped": true, "connections": summary.connections,
                    "sessions": summary.sessions, "cut_at_deadline": summary.cut_at_deadline})
            );
        } else {
            println!(
                "stopped: {} connections, {} sessions; {} cut at the grace deadline",
                summary.connections, summary.sessions, summary.cut_at_deadline
            );
        }
        Ok(())
    }

    /// SIGINT or SIGTERM (NET-9).
    async fn wait_for_signal() {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    }

    fn exchange_json(e: &Exchange) -> serde_json::Value {
        serde_json::json!({"client_ms": e.client_ms, "server_ms": e.server_ms,
            "network_ms": e.network_ms, "up_bytes": e.up_bytes, "down_bytes": e.down_bytes})
    }

    fn scaled(e: &Exchange, c: f64) -> Exchange {
        Exchange {
            client_ms: e.client_ms / c,
            server_ms: e.server_ms / c,
            network_ms: e.network_ms / c,
            up_bytes: (e.up_bytes as f64 / c).round() as usize,
            down_bytes: (e.down_bytes as f64 / c).round() as usize,
        }
    }

    /// A snake_case name of a refusal, for `--json`.
    fn refusal_name(r: &Refusal) -> &'static str {
        match r {
            Refusal::BudgetExhausted { .. } => "budget_exhausted",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Busy => "busy",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::ProtocolViolation(_) => "protocol_violation",
            Refusal::Timeout => "timeout",
            Refusal::ServerError => "server_error",
            _ => "other",
        }
    }

    fn error_json(e: &NetError) -> serde_json::Value {
        serde_json::json!({"fault": e.fault.to_string(), "message": e.to_string(),
            "refusal": e.refusal().map(refusal_name)})
    }

    fn query(a: Args) -> CliResult {
        no_positional(&a)?;
        let json = a.has("json");
        let server = required(&a, "server")?;
        let server_name = required(&a, "server-name")?;
        let ca = required(&a, "ca")?;
        let token_file = required(&a, "token-file")?;
        let timeout = Duration::from_secs(positive(&a, "timeout-secs", 120)?);
        let batch = super::batch_arg(a.get("batch"))?;
        let (set, default_count) = match (a.get("inputs"), a.get("labels")) {
            (None, Some(_)) => return Err(Usage("--labels needs --inputs".into()).into()),
            (None, None) => (
                TestSet::from_json("models/digits-test.json", DIGITS_TEST)?,
                5,
            ),
            (Some(i), labels) => (
                TestSet::load(Path::new(i), labels.map(Path::new))?,
                usize::MAX,
            ),
        };
        let inputs_name = a.get("inputs").unwrap_or("the shipped digits test images");
        let count = match a.get("images") {
            None => default_count,
            Some("all") => usize::MAX,
            Some(k) => k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                Usage(format!("--images: {k:?} is not a positive number or `all`"))
            })?,
        }
        .min(set.inputs.len());
        let parameters = match a.get("set") {
            None => None,
            Some(name) => Some(ParameterSet::shipped(name)?),
        };
        let config = ConnectConfig {
            addr: server.to_owned(),
            server_name: server_name.to_owned(),
            tls: net::tls::client_config(Path::new(ca))?,
            token: net::read_token_file(Path::new(token_file))?,
            timeout,
            parameters,
        };

        let rt = runtime()?;
        let started = Instant::now();
        let mut conn = match rt.block_on(Connection::connect(&config)) {
            Ok(c) => c,
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "command": "query", "server": server, "error": error_json(&e)}))?
                    );
                }
                return Err(e.into());
            }
        };
        let info = conn.info().clone();
        let connect_ms = conn.connect_ms();
        // Every input checked against the announced model before a session
        // (a unit of budget) is spent.
        for (k, x) in set.inputs.iter().take(count).enumerate() {
            conn.check_input(x)
                .map_err(|e| format!("{inputs_name}, input {k}: {}", e.kind))?;
        }
        let left = info.budget.saturating_sub(info.used);
        if !json {
            println!(
                "connected to {server} as {:?} in {:.0} ms: parameter set {} (fingerprint {:#018x}); {} of {} queries used",
                info.client_id,
                connect_ms,
                info.set,
                info.fingerprint,
                info.used,
                info.budget
            );
            if count as u64 > left {
                println!(
                    "note: {count} inputs but {left} queries left: the server will refuse the rest"
                );
            }
        }

        let mut images = Vec::new();
        let mut rounds: Vec<Exchange> = Vec::new();
        let mut setup = Exchange::default();
        let mut total = Exchange::default();
        let mut correct = 0usize;
        let mut failure = None;
        // PROTO-11: sessions of --batch images; the remainder one by one.
        let inputs: Vec<&[i64]> = set.inputs[..count].iter().map(Vec::as_slice).collect();
        let sessions = super::sessions_of(&inputs, batch);
        let mut first = 0usize;
        let mut session_reports = Vec::new();
        for chunk in sessions {
            let out = match rt.block_on(conn.infer_batch(chunk)) {
                Ok(out) => out,
                Err(e) => {
                    failure = Some((first, e));
                    break;
                }
            };
            let session_first = first;
            for (i, logits) in out.image_logits().enumerate() {
                let k = session_first + i;
                let prediction = argmax(logits);
                let label = set.labels.as_ref().map(|l| l[k]);
                correct += usize::from(label == Some(prediction));
                if !json {
                    match label {
                        Some(l) => println!("image {k}: predicted {prediction} (label {l})"),
                        None => println!("image {k}: predicted {prediction}"),
                    }
                }
                images.push(serde_json::json!({"index": k, "prediction": prediction,
                    "label": label, "logits": logits, "session_first_image": session_first}));
            }
            first += chunk.len();
            setup.add(&out.setup);
            if rounds.len() < out.rounds.len() {
                rounds.resize(out.rounds.len(), Exchange::default());
            }
            for (r, e) in out.rounds.iter().enumerate() {
                rounds[r].add(e);
            }
            total.add(&out.total());
            session_reports.push(serde_json::json!({"first_image": session_first,
                "images": chunk.len(), "setup": exchange_json(&out.setup),
                "rounds": out.rounds.iter().map(exchange_json).collect::<Vec<_>>()}));
        }
        rt.block_on(conn.close());
        rt.shutdown_timeout(Duration::from_secs(1));
        let done = images.len();
        let c = done.max(1) as f64;
        let used_after = info.used + done as u64;
        if json {
            let report = serde_json::json!({
                "command": "query",
                "server": server,
                "parameter_set": {"name": info.set, "fingerprint": format!("{:#018x}", info.fingerprint)},
                "client_id": info.client_id,
                "connect_ms": connect_ms,
                "budget": {"limit": info.budget, "used_before": info.used,
                    "used_after": failure.is_none().then_some(used_after)},
                "inputs": count,
                "completed": done,
                "batch": batch,
                "images": images,
                "sessions": session_reports,
                "mean": {"setup": exchange_json(&scaled(&setup, c)),
                    "rounds": rounds.iter().map(|r| exchange_json(&scaled(r, c))).collect::<Vec<_>>(),
                    "total": exchange_json(&scaled(&total, c))},
                "total": exchange_json(&total),
                "wall_ms": started.elapsed().as_secs_f64() * 1e3,
                "accuracy": set.labels.as_ref().filter(|_| done > 0).map(|_| correct as f64 / c),
                "error": failure.as_ref().map(|(k, e)| {
                    let mut j = error_json(e);
                    j["input"] = serde_json::json!(k);
                    j
                }),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if done > 0 {
            println!("\nper inference (mean of {done}):");
            println!("  round   client ms   server ms  network ms     up KiB   down KiB");
            let line = |name: &str, e: &Exchange| {
                let e = scaled(e, c);
                println!(
                    "  {name:>5} {:>11.1} {:>11.1} {:>11.1} {:>10.1} {:>10.1}",
                    e.client_ms,
                    e.server_ms,
                    e.network_ms,
                    e.up_bytes as f64 / 1024.0,
                    e.down_bytes as f64 / 1024.0
                )
            };
            line("keys", &setup);
            for (r, e) in rounds.iter().enumerate() {
                line(&(r + 1).to_string(), e);
            }
            line("total", &total);
            println!(
                "whole run: {done} inferences in {:.2} s; client {:.0} ms, server {:.0} ms, network {:.0} ms; sent {:.2} MiB, received {:.2} MiB",
                started.elapsed().as_secs_f64(),
                total.client_ms,
                total.server_ms,
                total.network_ms,
                total.up_bytes as f64 / 1048576.0,
                total.down_bytes as f64 / 1048576.0
            );
            if set.labels.is_some() {
                println!(
                    "accuracy: {correct}/{done} = {:.2}%",
                    100.0 * correct as f64 / c
                );
            }
            if failure.is_none() {
                println!(
                    "budget: {used_after} of {} sessions used by {:?}",
                    info.budget, info.client_id
                );
            }
        }
        match failure {
            None => Ok(()),
            Some((k, e)) => Err(format!("input {k}: {e}").into()),
        }
    }

    /// Creates `path` for writing, refusing to overwrite; owner-only on Unix.
    fn create_new(path: &Path, private: bool) -> Result<std::fs::File, Box<dyn std::error::Error>> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        options.open(path).map_err(|e| {
            format!(
                "{}: cannot be created ({}){}",
                path.display(),
                e.kind(),
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "; refusing to overwrite"
                } else {
                    ""
                }
            )
            .into()
        })
    }

    fn write_new(path: &Path, text: &str, private: bool) -> CliResult {
        use std::io::Write;
        let mut f = create_new(path, private)?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: cannot be written: {}", path.display(), e.kind()))?;
        Ok(())
    }

    fn dev_cert(a: Args) -> CliResult {
        no_positional(&a)?;
        let out = Path::new(required(&a, "out")?);
        let names: Vec<String> = a
            .get("names")
            .unwrap_or("localhost,127.0.0.1,::1")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(Usage("--names: give at least one name".into()).into());
        }
        let files = [
            out.join("ca.pem"),
            out.join("server.pem"),
            out.join("server.key"),
        ];
        if let Some(f) = files.iter().find(|f| f.exists()) {
            return Err(format!("{}: exists; refusing to overwrite", f.display()).into());
        }
        let made = net::tls::dev_cert(&names)?;
        std::fs::create_dir_all(out)
            .map_err(|e| format!("{}: cannot be created: {}", out.display(), e.kind()))?;
        write_new(&files[0], &made.ca_pem, false)?;
        write_new(&files[1], &made.cert_pem, false)?;
        write_new(&files[2], &made.key_pem, true)?;
        println!(
            "wrote {} (the CA: query --ca), {} and {} (serve --cert, --key), valid for {}",
            files[0].display(),
            files[1].display(),
            files[2].display(),
            names.join(", ")
        );
        println!("these are for trials only: anyone with server.key can impersonate the server");
        Ok(())
    }

    fn new_token(a: Args) -> CliResult {
        no_positional(&a)?;
        let id = required(&a, "id")?;
        let out = Path::new(required(&a, "out")?);
        if !net::frame::valid_name(id) {
            return Err(Usage(format!(
                "--id {id:?}: 1 to 64 characters of A-Z a-z 0-9 . _ @ -"
            ))
            .into());
        }
        let token = net::auth::generate_token();
        write_new(out, &format!("{token}\n"), true)?;
        println!("{id} {}", net::auth::token_digest_hex(token.as_bytes()));
        eprintln!(
            "token written to {}; add the line above to the server's token file",
            out.display()
        );
        Ok(())
    }
}
