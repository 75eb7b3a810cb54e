//! `safhire` command-line tool.
//!
//! * `safhire infer [--images K|all] [--set b16|wide] [--granularity element|channel]`
//!   — encrypted inference of the shipped digits CNN (models/) over its test
//!   images: accuracy, agreement with the plaintext reference, per-round
//!   client and server time, traffic.
//! * `safhire bench resnet20|resnet18|digits` — end-to-end benchmark: one
//!   encrypted inference (random weights for the ResNets), per-round and
//!   total client/server time against the plaintext inference of the same
//!   run, traffic, key size, peak memory.
//! * `safhire state-graph` — both parties' protocol state machines
//!   (Graphviz), the source of `spec/state-machines.dot`.
//! * `safhire params` — the shipped parameter sets with their security and
//!   noise budgets.
//! * `safhire layer [--set b8|b12|b16|wide]` — one encrypted round of a
//!   ResNet-20 first-stage convolution (16×32×32, 3×3, padding 1) with
//!   random 8-bit weights: client encryption, server unshuffle repack,
//!   homomorphic convolution, shuffle + pack, sanitisation, client
//!   decryption, checked bit for bit against the plaintext reference.

use safhire::engine::{self, ServerKeys};
use safhire::extract::ValueRef;
use safhire::layout::{conv2d_reference, Conv2dLayout, Conv2dShape};
use safhire::linear::EncodedLayer;
use safhire::model::Model;
use safhire::pack::{PackSource, Packer, Placement};
use safhire::params::ParameterSet;
use safhire::rlwe::{Context, GaloisKeys, SecretKey, SeededGaloisKey, SeededPublicKey};
use safhire::rng::Csprng;
use safhire::shuffle::{SessionSeed, ShuffleUnit};
use safhire::wire;
use std::process::ExitCode;
use std::time::Instant;

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

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("params") => params(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some(name @ ("resnet20" | "resnet18" | "digits")) => bench(name),
            _ => {
                eprintln!("usage: safhire bench resnet20|resnet18|digits");
                return ExitCode::from(2);
            }
        },
        Some("state-graph") => {
            print!("{}", safhire::protocol::state_graph());
            Ok(())
        }
        Some("infer") => match InferArgs::parse(&args[1..]) {
            Ok(a) => infer(a),
            Err(e) => {
                eprintln!("error: {e}\nusage: safhire infer [--images K|all] [--set b16|wide] [--granularity element|channel]");
                return ExitCode::from(2);
            }
        },
        Some("layer") => {
            let set = match args.get(1).map(String::as_str) {
                Some("--set") => args.get(2).cloned().unwrap_or_default(),
                None => "b16".into(),
                Some(other) => {
                    eprintln!("error: unexpected argument {other:?}");
                    return ExitCode::from(2);
                }
            };
            layer(&set)
        }
        _ => {
            eprintln!("usage: safhire infer [--images K|all] [--set b16|wide] [--granularity element|channel]\n       safhire params\n       safhire layer [--set b12|b16|wide]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn params() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:<6} {:>5} {:>8} {:>6} {:>10} {:>12} {:>12} {:>10}",
        "set", "N", "log2 Pq", "t", "‖w‖₁ max", "noise (std)", "flooding", "headroom"
    );
    for p in ParameterSet::load_all(safhire::params::SHIPPED_TOML)? {
        let s = p.spec();
        let b = p.budget();
        println!(
            "{:<6} {:>5} {:>8.1} {:>6} {:>10} {:>12} {:>12} {:>9.1}b",
            p.name(),
            s.ring_degree,
            (s.ciphertext_modulus as f64).log2() + (s.special_modulus as f64).log2(),
            format!("2^{}", s.plaintext_bits),
            format!("2^{}", s.max_weight_l1_log2),
            format!("2^{:.1}", b.before_flooding.sqrt().log2()),
            format!("2^{}", s.flooding_bound_log2),
            b.flooding_headroom_bits(),
        );
    }
    println!("\nDecryption failure ≤ 2^-40 per coefficient; security ≥ 128 bits (HE standard and tfhe-rs fit on P·q).");
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

fn layer(set: &str) -> Result<(), Box<dyn std::error::Error>> {
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

struct InferArgs {
    images: Option<usize>,
    set: String,
    unit: ShuffleUnit,
}

impl InferArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut out = InferArgs {
            images: Some(40),
            set: "b16".into(),
            unit: ShuffleUnit::Element,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--images" if value == "all" => out.images = None,
                "--images" => {
                    out.images = Some(
                        value
                            .parse()
                            .map_err(|_| format!("--images: {value:?} is not a number"))?,
                    )
                }
                "--set" => out.set = value.clone(),
                "--granularity" => {
                    out.unit = match value.as_str() {
                        "element" => ShuffleUnit::Element,
                        "channel" => ShuffleUnit::Channel,
                        _ => {
                            return Err(format!(
                                "--granularity: {value:?} is not element or channel"
                            ))
                        }
                    }
                }
                _ => return Err(format!("unknown option {flag:?}")),
            }
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
struct TestSet {
    inputs: Vec<Vec<i64>>,
    labels: Vec<usize>,
}

fn argmax(v: &[i64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn infer(args: InferArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new(ParameterSet::shipped(&args.set)?);
    let model = Model::from_json(DIGITS_MODEL)?;
    model.check_against(ctx.params())?;
    let compiled = engine::compile(&ctx, &model)?;
    let set: TestSet = serde_json::from_str(DIGITS_TEST)?;
    let count = args
        .images
        .unwrap_or(set.inputs.len())
        .min(set.inputs.len());
    println!(
        "model {}: {} layers, {} weights, {} encrypted rounds; parameter set {} (N = {}, t = 2^{})",
        model.name(),
        model.layers().len(),
        model.weight_count(),
        compiled.stages.len(),
        args.set,
        ctx.n(),
        ctx.params().plaintext_bits()
    );

    let ClientKeys {
        sk,
        seeded_galois,
        seeded_pk,
        keygen_ms,
        key_bytes,
    } = ClientKeys::generate(&ctx, &mut Csprng::from_os());
    let galois =
        GaloisKeys::from_seeded(&ctx, &seeded_galois).ok_or("incomplete Galois key set")?;
    let pk = seeded_pk.expand(&ctx);
    let keys = ServerKeys {
        galois: &galois,
        public: &pk,
    };
    println!(
        "keys: generated in {keygen_ms:.0} ms; evaluation keys {:.2} MiB (sent once per session)",
        key_bytes as f64 / 1048576.0
    );

    let rounds = compiled.stages.len();
    let mut client_ms = vec![0f64; rounds];
    let mut server_ms = vec![0f64; rounds];
    let (mut up, mut down) = (0usize, 0usize);
    let (mut correct, mut agree) = (0usize, 0usize);
    let mut plain_ms = 0f64;
    let started = Instant::now();
    for (k, (x, &label)) in set.inputs.iter().zip(&set.labels).take(count).enumerate() {
        let session = SessionSeed::generate();
        let out = engine::run(&ctx, &sk, keys, &compiled, x, args.unit, &session)?;
        let t = Instant::now();
        let reference = model.evaluate(x)?;
        plain_ms += ms(t);
        agree += usize::from(out.logits == reference);
        correct += usize::from(argmax(&out.logits) == label);
        for (r, s) in out.rounds.iter().enumerate() {
            client_ms[r] += s.client_ms;
            server_ms[r] += s.server_ms;
            up += s.up_bytes;
            down += s.down_bytes;
        }
        progress(k + 1, count, started.elapsed().as_secs_f64());
    }
    eprintln!();
    let c = count.max(1) as f64;
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
    let (tc, ts): (f64, f64) = (client_ms.iter().sum(), server_ms.iter().sum());
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
    println!(
        "\naccuracy: {correct}/{count} = {:.2}% (plaintext integer model on the full test set: 98.61%)",
        100.0 * correct as f64 / c
    );
    println!(
        "agreement with the plaintext reference: {agree}/{count} = {:.1}% (bit-for-bit logits)",
        100.0 * agree as f64 / c
    );
    if agree == count {
        Ok(())
    } else {
        Err("encrypted logits differ from the plaintext reference".into())
    }
}

/// A one-line progress bar on stderr.
fn progress(done: usize, total: usize, secs: f64) {
    let width = 30;
    let filled = done * width / total.max(1);
    let eta = secs / done as f64 * (total - done) as f64;
    eprint!(
        "\r[{}{}] {done}/{total} images, {secs:.0} s elapsed, ~{eta:.0} s left ",
        "#".repeat(filled),
        "-".repeat(width - filled)
    );
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bench(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new(ParameterSet::shipped("b16")?);
    let model = match name {
        "resnet20" => safhire::model::zoo::resnet20(1),
        "resnet18" => safhire::model::zoo::resnet18(1),
        _ => Model::from_json(DIGITS_MODEL)?,
    };
    model.check_against(ctx.params())?;
    let t = Instant::now();
    let compiled = engine::compile(&ctx, &model)?;
    let compile_ms = ms(t);
    println!(
        "{}: {} layers, {} weights, {} encrypted rounds; set b16 (N = {}); weights encoded in {compile_ms:.0} ms (once per model)",
        model.name(),
        model.layers().len(),
        model.weight_count(),
        compiled.stages.len(),
        ctx.n()
    );
    let keys = ClientKeys::generate(&ctx, &mut Csprng::from_os());
    let galois =
        GaloisKeys::from_seeded(&ctx, &keys.seeded_galois).ok_or("incomplete Galois key set")?;
    let pk = keys.seeded_pk.expand(&ctx);
    let spec = model.input();
    let mut rng = Csprng::from_os();
    let input: Vec<i64> = (0..spec.shape.len().unwrap_or(0))
        .map(|_| spec.min + rng.uniform_below((spec.max - spec.min + 1) as u64) as i64)
        .collect();
    let t = Instant::now();
    let reference = model.evaluate(&input)?;
    let plain_ms = ms(t);
    let out = engine::run(
        &ctx,
        &keys.sk,
        ServerKeys {
            galois: &galois,
            public: &pk,
        },
        &compiled,
        &input,
        ShuffleUnit::Element,
        &SessionSeed::generate(),
    )?;
    let client: f64 = out.rounds.iter().map(|r| r.client_ms).sum();
    let server: f64 = out.rounds.iter().map(|r| r.server_ms).sum();
    let up: usize = out.rounds.iter().map(|r| r.up_bytes).sum();
    let down: usize = out.rounds.iter().map(|r| r.down_bytes).sum();
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
    let exact = out.logits == reference;
    println!(
        "logits equal the plaintext reference: {}",
        if exact { "yes (bit for bit)" } else { "NO" }
    );
    if exact {
        Ok(())
    } else {
        Err("encrypted logits differ from the plaintext reference".into())
    }
}
