//! The command line a user meets: help on every command, usage errors with
//! exit code 2, a user's model run bit-exact or refused naming the layer
//! (ENG-5, PARAM-7, MODEL-11).

use safhire::model::{InputSpec, Layer, Model, Shape};
use safhire::params::ParameterSet;
use std::path::PathBuf;
use std::process::{Command, Output};

fn safhire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safhire"))
        .args(args)
        .output()
        .expect("the safhire binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory for one test, removed when the test ends (pass or
/// fail).
struct Scratch(PathBuf);

impl Scratch {
    fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("safhire-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

#[test]
fn usage_lists_every_command_and_every_shipped_set() {
    let out = safhire(&["help"]);
    assert!(out.status.success());
    let (usage, _) = text(&out);
    for command in ["infer", "bench", "params", "state-graph", "layer", "audit"] {
        assert!(usage.contains(command), "usage omits {command}:\n{usage}");
    }
    // Sets used only when pinned (`auto_select = false`, PARAM-7: s16) are
    // listed too, with what they are for.
    for set in ParameterSet::shipped_all().unwrap() {
        assert!(
            usage.contains(set.name()),
            "usage omits set {}:\n{usage}",
            set.name()
        );
    }
    assert_eq!(safhire(&[]).status.code(), Some(0));
    assert_eq!(safhire(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn help_on_every_command() {
    for command in ["infer", "bench", "params", "state-graph", "layer", "audit"] {
        for flag in ["--help", "-h"] {
            let out = safhire(&[command, flag]);
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{command} {flag}: {stderr}");
            assert!(
                stdout.starts_with("usage: safhire"),
                "{command} {flag}: {stdout}"
            );
        }
    }
    let (stdout, _) = text(&safhire(&["infer", "--help"]));
    for option in [
        "--model",
        "--inputs",
        "--labels",
        "--set",
        "--json",
        "--policy",
        "--dp-sigma",
    ] {
        assert!(stdout.contains(option), "infer --help omits {option}");
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    for (args, says) in [
        (&["infer", "--model"][..], "--model needs a value"),
        (&["infer", "--bogus", "1"][..], "unknown option"),
        (&["infer", "--model", "m.json"][..], "--inputs"),
        (&["infer", "--images", "zero"][..], "--images"),
        (&["bench"][..], "workload"),
    ] {
        let out = safhire(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A small model whose conv accumulator needs 21 bits on 8-bit inputs.
fn wide_model() -> Model {
    let weights: Vec<i64> = (0..4 * 2 * 9).map(|i| [127, -90, 45, 60][i % 4]).collect();
    Model::new(
        "wide-acc",
        InputSpec {
            shape: Shape::new(2, 4, 4),
            min: 0,
            max: 255,
        },
        vec![
            Layer::Conv2d {
                out_channels: 4,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
                padding: 1,
                groups: 1,
                weights,
                bias: vec![0, 10, 20, 30],
            },
            Layer::Relu,
            Layer::Requantize {
                multiplier: 1,
                shift: 10,
                min: 0,
                max: 255,
            },
            Layer::Flatten,
            Layer::Linear {
                out_features: 3,
                weights: (0..3 * 64).map(|i| (i % 5) as i64 - 2).collect(),
                bias: vec![1, 2, 3],
            },
        ],
    )
    .unwrap()
}

// ENG-5, PARAM-7, MODEL-11
#[test]
fn a_users_model_is_refused_on_a_small_set_and_runs_exactly_on_the_chosen_one() {
    let dir = scratch("wide");
    let model = wide_model();
    let model_path = dir.join("model.json");
    std::fs::write(&model_path, model.to_json()).unwrap();
    let inputs = "{\"inputs\": [[".to_owned()
        + &(0..32)
            .map(|i| ((i * 37) % 256).to_string())
            .collect::<Vec<_>>()
            .join(",")
        + "], ["
        + &(0..32)
            .map(|i| ((i * 11 + 200) % 256).to_string())
            .collect::<Vec<_>>()
            .join(",")
        + "]], \"labels\": [0, 2]}";
    let inputs_path = dir.join("inputs.json");
    std::fs::write(&inputs_path, inputs).unwrap();
    let (m, i) = (model_path.to_str().unwrap(), inputs_path.to_str().unwrap());

    // Pinned to b16: refused before any encryption, naming the layer and what fits.
    let out = safhire(&["infer", "--model", m, "--inputs", i, "--set", "b16"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("layer 0 (conv2d)") && stderr.contains("b24"),
        "{stderr}"
    );

    // Chosen automatically: runs, bit-exact, and says why.
    let out = safhire(&["infer", "--model", m, "--inputs", i, "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["bit_exact_all"], true, "{stdout}");
    assert_eq!(report["inputs"], 2);
    let set = report["parameter_set"]["name"].as_str().unwrap();
    assert!(["b20", "b24"].contains(&set), "chose {set}");
    let candidates = report["parameter_set"]["candidates"].as_array().unwrap();
    assert!(
        candidates.len() > 1 && candidates[0]["refused"].is_string(),
        "{stdout}"
    );
}

// MODEL-6, MODEL-11
#[test]
fn broken_files_are_blamed_on_the_file() {
    let dir = scratch("broken");
    let bad_model = dir.join("bad.json");
    std::fs::write(
        &bad_model,
        "{\"format\": \"safhire-model\", \"version\": 1, \"secret-ish\": ",
    )
    .unwrap();
    let good_inputs = dir.join("in.json");
    std::fs::write(&good_inputs, "[[1]]").unwrap();
    let out = safhire(&[
        "infer",
        "--model",
        bad_model.to_str().unwrap(),
        "--inputs",
        good_inputs.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bad.json") && stderr.contains("model file"),
        "{stderr}"
    );

    let model_path = dir.join("model.json");
    std::fs::write(&model_path, wide_model().to_json()).unwrap();
    let out = safhire(&[
        "infer",
        "--model",
        model_path.to_str().unwrap(),
        "--inputs",
        good_inputs.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("in.json") && stderr.contains("the model takes 32"),
        "{stderr}"
    );

    let missing = dir.join("missing.json");
    let out = safhire(&[
        "infer",
        "--model",
        missing.to_str().unwrap(),
        "--inputs",
        good_inputs.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("missing.json"), "{stderr}");
}

// AUDIT-2: `safhire audit --json` reports every stage of the shipped model.
#[test]
fn audit_reports_every_stage_as_json() {
    let out = safhire(&["audit", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["policy"], "default");
    // The bias probe and the pixel probes use the whole budget of 2.
    assert_eq!(report["sessions"], 2);
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert_eq!(stages[0]["attack"], "pixel probes");
    assert_eq!(stages[0]["outcome"], "stopped by the budget");
    assert_eq!(report["malicious_key"]["accepted"], true);
    assert!(stages
        .iter()
        .all(|s| s["biases_exact"] == s["biases_total"]));
    assert_eq!(report["queries"], 2);
    assert_eq!(report["batch"], 1);

    // PROTO-11: `--batch K` asks for sessions of K images, refused when the
    // policy's budget of 2 cannot pay for one (a local fault, exit 1), and
    // outside 1..=64 as a usage error (exit 2).
    let out = safhire(&["audit", "--batch", "4"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sessions of 4 images cannot be audited"),
        "{stderr}"
    );
    let out = safhire(&["audit", "--batch", "0"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--batch"), "{stderr}");
}

// `infer` and `bench` run every inference as a session of the typed
// protocol over the in-process transport (src/service.rs), and report per
// round where the server's time went.
#[test]
fn infer_and_bench_run_through_the_protocol_and_break_the_rounds_down() {
    let out = safhire(&["infer", "--images", "2", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["bit_exact_all"], true, "{stdout}");
    assert_eq!(report["inputs"], 2);
    assert!(report["transport"]
        .as_str()
        .unwrap()
        .contains("typed protocol"));
    assert_eq!(report["policy_serves_untrusted_clients"], true);
    // A time is comparable only with the instruction set it ran on (SIMD-1).
    assert_eq!(
        report["machine"]["kernels"],
        safhire::math::kernels().name(),
        "{stdout}"
    );
    assert!(report["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
    assert!(report["key_bytes"].as_u64().unwrap() > 1 << 20, "{stdout}");
    assert!(report["key_expansion_ms"].as_f64().unwrap() > 0.0);
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for (i, r) in rounds.iter().enumerate() {
        let phases = &r["server_phases_ms"];
        let sum: f64 = ["repack", "linear", "pack", "sanitise", "decode_encode"]
            .iter()
            .map(|k| phases[k].as_f64().unwrap())
            .sum();
        let server = r["server_ms"].as_f64().unwrap();
        assert!(
            server > 0.0 && (sum - server).abs() <= 0.01 * server + 0.01,
            "{r}"
        );
        // The two convs repack; the classifier, a mat-vec, reads its
        // upload as it arrived (ENG-10).
        let repack = phases["repack"].as_f64().unwrap();
        assert_eq!(repack > 0.0, i < 2, "{r}");
        // The counted work says the same, and every round output-packs:
        // the convs' outputs by the tree, the classifier's rows, already at
        // the response's coefficients, by the trace (ENG-14): key switches
        // and no rotate-adds.
        let work = &r["pack_work"];
        let switches = |part: &str| work[part]["node_key_switches"].as_f64().unwrap();
        assert_eq!(switches("repack") > 0.0, i < 2, "{r}");
        assert!(switches("pack") > 0.0, "{r}");
        let rotate_adds = work["pack"]["rotate_adds"].as_f64().unwrap();
        assert_eq!(rotate_adds > 0.0, i < 2, "{r}");
    }

    let out = safhire(&["infer", "--images", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for line in [
        "repack  linear    pack sanitise",
        "agreement with the plaintext reference: 1/1",
        "would policy \"default\" (element shuffling) serve this model to untrusted clients? yes",
        "expanded in",
        "; kernels: ",
    ] {
        assert!(stdout.contains(line), "infer omits {line:?}:\n{stdout}");
    }

    let out = safhire(&["bench", "digits"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for line in [
        "round 1: server",
        "repack (unshuffle)",
        "output pack",
        "sanitise",
        "session setup: keys generated",
        "logits equal the plaintext reference: yes",
        "; kernels: ",
        "packing work, counted",
    ] {
        assert!(stdout.contains(line), "bench omits {line:?}:\n{stdout}");
    }
}

// PROTO-11 from the command line: `infer --batch K` runs sessions of K
// images (the remainder one by one), bit-exact, and refuses a K the
// policy's budget cannot pay for; `bench --batch K` reports the time per
// image.
#[test]
fn infer_and_bench_run_sessions_of_several_images() {
    let out = safhire(&["infer", "--images", "5", "--batch", "2", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["bit_exact_all"], true, "{stdout}");
    assert_eq!(report["inputs"], 5);
    assert_eq!(report["batch"], 2);
    assert_eq!(report["sessions"], 3, "2 + 2 + 1");
    assert!(report["key_bytes"].as_u64().unwrap() > 1 << 20, "{stdout}");

    // The default policy's budget is 2 queries: a session of 3 is refused.
    let out = safhire(&["infer", "--images", "3", "--batch", "3"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("a session of 3 images costs 3 queries"),
        "{stderr}"
    );

    let out = safhire(&["bench", "digits", "--batch", "2", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["bit_exact"], true, "{stdout}");
    assert_eq!(report["batch"], 2);
    let (server, per_image) = (
        report["server_ms"].as_f64().unwrap(),
        report["server_ms_per_image"].as_f64().unwrap(),
    );
    assert!((server / 2.0 - per_image).abs() < 1e-9, "{stdout}");
}

// The same `infer` under a policy that would not serve the model to
// untrusted clients: it still runs (the owner is its own client) and says so.
#[test]
fn infer_says_when_the_policy_would_refuse_untrusted_clients() {
    let out = safhire(&["infer", "--images", "1", "--granularity", "channel"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("(channel shuffling) serve this model to untrusted clients? no: ")
            && stdout.contains("within reach")
            && stdout.contains("agreement with the plaintext reference: 1/1"),
        "{stdout}"
    );
}

// PRIV-3: `params` names the sets whose flooding is 40-bit statistical, as
// computed by the set (s16), and only those.
#[test]
fn params_names_the_statistical_sets() {
    let out = safhire(&["params"]);
    assert!(out.status.success());
    let (text, _) = text(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("40-bit statistical circuit privacy"))
        .unwrap_or_else(|| panic!("no statistical-privacy line:\n{text}"));
    for set in ParameterSet::shipped_all().unwrap() {
        let listed = line.contains(&format!(" {}", set.name()));
        assert_eq!(
            listed,
            set.circuit_privacy_log2() <= -40.0,
            "{}: {line}",
            set.name()
        );
    }
    assert!(line.contains("s16"), "{line}");
}

// DP-8: `--dp-sigma` replaces the `dp` policy's σ in `infer` and `audit`,
// through the policy's own validation: the printed ε follows σ (larger σ,
// smaller ε), and a value the flag cannot take is refused naming the flag.
#[test]
fn dp_sigma_flag_sets_the_noise_and_the_printed_epsilon() {
    let epsilon = |sigma: &str| {
        let out = safhire(&[
            "infer",
            "--policy",
            "dp",
            "--dp-sigma",
            sigma,
            "--images",
            "1",
            "--json",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "--dp-sigma {sigma}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let dp = &report["differential_privacy"];
        assert_eq!(dp["sigma"].as_u64().unwrap().to_string(), sigma, "{dp}");
        dp["epsilon"].as_f64().unwrap()
    };
    let (small, large) = (epsilon("100"), epsilon("1000"));
    assert!(
        large < small && large > 0.0,
        "ε {small} at σ 100, {large} at σ 1000"
    );

    for (args, says) in [
        (
            &["infer", "--policy", "dp", "--dp-sigma", "0"][..],
            "--dp-sigma",
        ),
        (
            &["infer", "--policy", "dp", "--dp-sigma", "-5"][..],
            "--dp-sigma",
        ),
        (
            &["audit", "--policy", "dp", "--dp-sigma", "ten"][..],
            "--dp-sigma",
        ),
        (&["infer", "--dp-sigma", "100"][..], "adds no noise"),
    ] {
        let out = safhire(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Beyond DP-1's exact sampler: refused by the policy's validation.
    let out = safhire(&["infer", "--policy", "dp", "--dp-sigma", "4294967295"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--dp-sigma 4294967295"), "{stderr}");
}

// AUDIT-6, AUDIT-10, DP-8: `safhire audit --policy dp --dp-sigma S`
// reports the logits' column estimates under that σ, in JSON and in the
// table: the step v = 15 (the clamp's width), five estimates (budget 8:
// the bias probe, whose round-2 reading is the base, round 0's pixel probe
// and round 1's blind probe take three),
// and the error σ alone predicts, 2σ/(v√π); round 0's conv is read by the
// noisy pixel probe: 72 weight estimates from one session at pixel (1, 1),
// with σ·√(2/π)/v as the noise's share of the error.
#[test]
fn audit_reports_the_noisy_column_error_at_the_flags_sigma() {
    let out = safhire(&["audit", "--policy", "dp", "--dp-sigma", "400", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["dp_sigma"], 400);
    let stages = report["stages"].as_array().unwrap();
    let noisy = &stages[2]["noisy_columns"];
    assert_eq!(stages[2]["attack"], "blind d + 1");
    assert_eq!(noisy["sigma"], 400, "{noisy}");
    assert_eq!(noisy["step"], 15, "{noisy}");
    assert_eq!(noisy["estimates"], 5, "{noisy}");
    assert_eq!(stages[1]["attack"], "blind probe");
    assert_eq!(stages[1]["noisy_probes"]["matched_by_model"], true);
    assert_eq!(noisy["columns_total"], 64, "{noisy}");
    assert_eq!(noisy["matched_by_model"], true, "{noisy}");
    let predicted = 2.0 * 400.0 / (15.0 * std::f64::consts::PI.sqrt());
    let expected = noisy["expected_error"].as_f64().unwrap();
    assert!((expected - predicted).abs() < 1e-9, "{noisy}");
    let measured = noisy["mean_abs_error"].as_f64().unwrap();
    assert!(measured > 0.0 && measured.is_finite(), "{noisy}");
    assert_eq!(stages[2]["weight_error"].as_f64(), Some(measured));
    assert!(stages[0]["noisy_columns"].is_null());
    let probes = &stages[0]["noisy_probes"];
    assert_eq!(stages[0]["attack"], "pixel probes");
    assert_eq!(stages[0]["sessions"], 1, "{}", stages[0]);
    assert_eq!(probes["estimates"], 72, "{probes}");
    assert_eq!(probes["pixel"], serde_json::json!([1, 1]), "{probes}");
    let predicted = 400.0 * (2.0 / std::f64::consts::PI).sqrt() / 15.0;
    let expected = probes["expected_error"].as_f64().unwrap();
    assert!((expected - predicted).abs() < 1e-9, "{probes}");
    let measured = probes["mean_abs_error"].as_f64().unwrap();
    assert!(measured > 0.0 && measured.is_finite(), "{probes}");
    assert_eq!(stages[0]["weight_error"].as_f64(), Some(measured));

    let out = safhire(&["audit", "--policy", "dp"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("σ = 100"), "{stdout}");
    assert!(stdout.contains("σ alone predicts"), "{stdout}");
}
