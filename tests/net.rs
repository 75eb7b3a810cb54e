#![cfg(feature = "net")]
//! NET-3..NET-9 end to end: real `safhire serve` processes on localhost
//! (ephemeral ports, certificates made with rcgen into a scratch directory),
//! driven by `safhire query` and by hand-made frames.

use safhire::model::{Model, TestSet};
use safhire::net::frame::{self, Control, Refusal, Timeouts, MAX_FRAME};
use safhire::net::tls::ClientStream;
use safhire::net::{self, ConnectConfig, Connection, NetErrorKind};
use safhire::params::ParameterSet;
use safhire::protocol::{Client, MAX_BODY};
use safhire::rlwe::Context;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_safhire");
const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");
const WAIT: Timeouts = Timeouts {
    idle: Duration::from_secs(30),
    read: Duration::from_secs(30),
};

fn test_set() -> &'static TestSet {
    static S: OnceLock<TestSet> = OnceLock::new();
    S.get_or_init(|| TestSet::from_json("digits-test", TEST_SET).unwrap())
}

/// The plaintext reference logits of test image `k`.
fn reference(k: usize) -> Vec<i64> {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::from_json(MODEL).unwrap())
        .evaluate(&test_set().inputs[k])
        .unwrap()
}

fn b16() -> Arc<Context> {
    static C: OnceLock<Arc<Context>> = OnceLock::new();
    C.get_or_init(|| Arc::new(Context::new(ParameterSet::shipped("b16").unwrap())))
        .clone()
}

/// A scratch directory with a CA, a server certificate for localhost and
/// two clients' tokens.
struct Scratch {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tokens: PathBuf,
    alice: PathBuf,
    bob: PathBuf,
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("safhire-net-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let made = net::tls::dev_cert(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ta, tb) = (net::auth::generate_token(), net::auth::generate_token());
    let tokens = format!(
        "# test clients\nalice {}\nbob {}\n",
        net::auth::token_digest_hex(ta.as_bytes()),
        net::auth::token_digest_hex(tb.as_bytes())
    );
    Scratch {
        ca: write("ca.pem", &made.ca_pem),
        cert: write("server.pem", &made.cert_pem),
        key: write("server.key", &made.key_pem),
        tokens: write("tokens.txt", &tokens),
        alice: write("alice.token", &format!("{ta}\n")),
        bob: write("bob.token", &format!("{tb}\n")),
        dir,
    }
}

/// The directory holds a private key and tokens: removed when the test
/// ends, passed or failed.
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `safhire serve`; killed when dropped.
struct Served {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

/// `safhire serve` on an ephemeral port. Without a `--policy` in `extra`
/// it serves under `benchmark` (element shuffling, a budget no test
/// reaches): the default policy allows 2 sessions per identity (PROTO-6),
/// and the tests that count on it say so.
fn serve(s: &Scratch, extra: &[&str]) -> Served {
    let policy: &[&str] = if extra.contains(&"--policy") {
        &[]
    } else {
        &["--policy", "benchmark"]
    };
    // The scratch directory is the server's working directory, so its
    // default ledger (a SQLite file there) is this test's own.
    let mut child = Command::new(BIN)
        .current_dir(&s.dir)
        .arg("serve")
        .args(policy)
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(&s.cert)
        .arg("--key")
        .arg(&s.key)
        .arg("--tokens")
        .arg(&s.tokens)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("safhire serve starts");
    let stderr = drain(child.stderr.take().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let Some(addr) = first.strip_prefix("listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve did not start: {first:?}\n{}", stderr.lock().unwrap());
    };
    let addr = addr.to_owned();
    let stdout = Arc::new(Mutex::new(String::new()));
    let sink = stdout.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Served {
        child,
        addr,
        stdout,
        stderr,
    }
}

impl Served {
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until the server's log contains `needle` `times` times.
    fn wait_for_log(&self, needle: &str, times: usize) {
        let start = Instant::now();
        while self.stderr.lock().unwrap().matches(needle).count() < times {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the server never logged {needle:?}:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < within, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `safhire query ... --json`: exit code, the report, stderr.
fn query(
    server: &Served,
    s: &Scratch,
    token: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let out = query_command(server, s, token, extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "query printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), report, stderr)
}

fn query_command(server: &Served, s: &Scratch, token: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "query",
        "--server",
        &server.addr,
        "--server-name",
        "localhost",
    ])
    .arg("--ca")
    .arg(&s.ca)
    .arg("--token-file")
    .arg(token)
    .arg("--json")
    .args(extra)
    .stdin(Stdio::null());
    c
}

fn logits(report: &serde_json::Value) -> Vec<Vec<i64>> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::from_value(i["logits"].clone()).unwrap())
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn raw_connect(server: &Served, s: &Scratch) -> ClientStream {
    let config = net::tls::client_config(&s.ca).unwrap();
    net::tls::connect(&server.addr, "localhost", config, Duration::from_secs(20))
        .await
        .unwrap()
}

/// The next control message; `None` at the end of the stream.
async fn next_control(stream: &mut ClientStream) -> Option<Control> {
    match frame::read_frame(stream, MAX_FRAME, WAIT).await {
        Ok(Some(f)) => Some(Control::decode(&f).expect("a control message")),
        _ => None,
    }
}

/// A refusal, then the end of the stream (NET-7).
async fn refusal(stream: &mut ClientStream) -> Refusal {
    let r = match next_control(stream).await {
        Some(Control::Refusal(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(next_control(stream).await, None, "still open after {r}");
    r
}

async fn send(stream: &mut ClientStream, payload: &[u8]) {
    frame::write_frame(stream, payload, Duration::from_secs(20))
        .await
        .unwrap();
}

async fn send_raw(stream: &mut ClientStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

/// Connected, Hello checked, authenticated with `token`'s file.
async fn authenticated(server: &Served, s: &Scratch, token: &Path) -> ClientStream {
    let mut stream = raw_connect(server, s).await;
    assert!(matches!(
        next_control(&mut stream).await,
        Some(Control::Hello { .. })
    ));
    let token = net::read_token_file(token).unwrap();
    send(&mut stream, &Control::Auth { token }.encode()).await;
    assert!(matches!(
        next_control(&mut stream).await,
        Some(Control::Welcome { .. })
    ));
    stream
}

/// A session request with fresh keys, encoded.
fn session_request() -> Vec<u8> {
    let ctx = b16();
    Client::start(ctx.clone()).1.encode(&ctx)
}

/// Starts a session by hand: SessionRequest, SessionAccept, ServerTime.
async fn start_session(stream: &mut ClientStream) {
    send(stream, &session_request()).await;
    let accept = frame::read_frame(stream, MAX_FRAME, WAIT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&accept[..4], b"SFHP", "{:?}", Control::decode(&accept));
    assert!(matches!(
        next_control(stream).await,
        Some(Control::ServerTime { .. })
    ));
}

fn connect_config(server: &Served, s: &Scratch) -> ConnectConfig {
    ConnectConfig {
        addr: server.addr.clone(),
        server_name: "localhost".into(),
        tls: net::tls::client_config(&s.ca).unwrap(),
        token: net::read_token_file(&s.alice).unwrap(),
        timeout: Duration::from_secs(60),
        parameters: None,
    }
}

#[test]
fn usage_and_help_list_the_net_commands() {
    let out = Command::new(BIN).arg("help").output().unwrap();
    let usage = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "query", "dev-cert", "new-token"] {
        assert!(usage.contains(command), "usage omits {command}:\n{usage}");
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: safhire"));
    }
    let out = Command::new(BIN)
        .args(["serve", "--listen"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["query", "--server", "x:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server-name is required"));
}

// NET-5: configuration errors name the file, and never echo a token.
#[test]
fn configuration_errors_name_the_file() {
    let s = scratch("config");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let serve_with = |tokens: &Path, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = ["serve", "--listen", "127.0.0.1:0", "--cert"]
            .iter()
            .map(|a| a.as_ref())
            .collect();
        args.extend([
            s.cert.as_os_str(),
            "--key".as_ref(),
            s.key.as_os_str(),
            "--tokens".as_ref(),
            tokens.as_os_str(),
        ]);
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        run(&args)
    };
    let missing = s.dir.join("missing.txt");
    assert!(serve_with(&missing, &[]).contains("missing.txt"));
    let bad = s.dir.join("bad-tokens.txt");
    std::fs::write(&bad, "alice not-hex\n").unwrap();
    let err = serve_with(&bad, &[]);
    assert!(err.contains("bad-tokens.txt, line 1"), "{err}");
    if cfg!(not(feature = "postgres")) {
        let err = serve_with(&s.tokens, &["--ledger", "postgres://x@localhost/db"]);
        assert!(err.contains("--features net,postgres"), "{err}");
    }
    // A client token file that is too short to be a token.
    let short = s.dir.join("short.token");
    std::fs::write(&short, "secret\n").unwrap();
    let err = run(&[
        "query".as_ref(),
        "--server".as_ref(),
        "127.0.0.1:9".as_ref(),
        "--server-name".as_ref(),
        "localhost".as_ref(),
        "--ca".as_ref(),
        s.ca.as_os_str(),
        "--token-file".as_ref(),
        short.as_os_str(),
    ]);
    assert!(
        err.contains("short.token") && !err.contains("secret"),
        "{err}"
    );
}

// NET-3, NET-4, NET-6: the documented workflow (dev-cert, new-token, serve,
// query) gives logits bit-exact against the plaintext reference, with time
// and traffic per round.
#[test]
fn query_results_are_bit_exact_against_the_plaintext_reference() {
    let s = scratch("exact");
    let certs = s.dir.join("certs");
    let out = Command::new(BIN)
        .args(["dev-cert", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Never overwrites.
    let again = Command::new(BIN)
        .args(["dev-cert", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let carol = s.dir.join("carol.token");
    let out = Command::new(BIN)
        .args(["new-token", "--id", "carol", "--out"])
        .arg(&carol)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let token = std::fs::read_to_string(&carol).unwrap();
    assert!(
        !line.contains(token.trim()),
        "the token itself is not printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&carol).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the token file is owner-only");
        let mode = std::fs::metadata(certs.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key file is owner-only");
    }
    std::fs::write(&s.tokens, line).unwrap();
    let mut s = s;
    s.ca = certs.join("ca.pem");
    s.cert = certs.join("server.pem");
    s.key = certs.join("server.key");
    s.alice = carol;
    let server = serve(&s, &["--model", "digits", "--batches", "2"]);

    // The shipped test images 0..3.
    let (code, report, stderr) = query(&server, &s, &s.alice, &["--images", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["client_id"], "carol");
    assert_eq!(report["parameter_set"]["name"], "b16");
    assert_eq!(report["budget"]["used_before"], 0);
    assert_eq!(report["budget"]["used_after"], 3);
    let got = logits(&report);
    assert_eq!(got, (0..3).map(reference).collect::<Vec<_>>());
    assert_eq!(report["accuracy"], 1.0);
    assert_eq!(report["sessions"].as_array().unwrap().len(), 3);
    for session in report["sessions"].as_array().unwrap() {
        assert_eq!(session["images"], 1);
        let rounds = session["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 3);
        for r in rounds {
            assert!(r["server_ms"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["network_ms"].as_f64().unwrap() >= 0.0, "{r}");
            assert!(r["up_bytes"].as_u64().unwrap() > 4096, "{r}");
            assert!(r["down_bytes"].as_u64().unwrap() > 4096, "{r}");
        }
        assert!(session["setup"]["up_bytes"].as_u64().unwrap() > 1 << 20);
    }

    // Inputs from a file, with labels, in the text report.
    let picks = [100usize, 250];
    let inputs = s.dir.join("inputs.json");
    let chosen: Vec<&Vec<i64>> = picks.iter().map(|&k| &test_set().inputs[k]).collect();
    std::fs::write(&inputs, serde_json::to_string(&chosen).unwrap()).unwrap();
    let labels = s.dir.join("labels.json");
    let chosen_labels: Vec<usize> = picks
        .iter()
        .map(|&k| test_set().labels.as_ref().unwrap()[k])
        .collect();
    std::fs::write(&labels, serde_json::to_string(&chosen_labels).unwrap()).unwrap();
    let (code, report, stderr) = query(
        &server,
        &s,
        &s.alice,
        &[
            "--inputs",
            inputs.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        logits(&report),
        picks.iter().map(|&k| reference(k)).collect::<Vec<_>>()
    );
    assert_eq!(report["budget"]["used_before"], 3);

    // An input outside the announced range is refused locally, before a
    // session is spent.
    let bad = s.dir.join("bad.json");
    std::fs::write(&bad, "[[99]]").unwrap();
    let out = query_command(&server, &s, &s.alice, &["--inputs", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("input 0"));
    let (_, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(report["budget"]["used_before"], 5);

    // PROTO-11: sessions of two images (the server serves --batches 2),
    // the fifth image alone; one query per image.
    let (code, report, stderr) = query(&server, &s, &s.alice, &["--images", "5", "--batch", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(logits(&report), (0..5).map(reference).collect::<Vec<_>>());
    let sizes: Vec<u64> = report["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["images"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(report["budget"]["used_before"], 6);
    assert_eq!(report["budget"]["used_after"], 11);
    // A batch the server does not serve is refused before the charge.
    let (code, report, _) = query(&server, &s, &s.alice, &["--images", "3", "--batch", "3"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["completed"], 0);
    assert!(
        report["error"].to_string().contains("sessions of 3 images"),
        "{report}"
    );
    let (_, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(report["budget"]["used_before"], 11);
}

// NET-3, NET-4, NET-5, NET-7: without a valid token nothing is charged; the
// refusal is typed; the Hello names the set; a wrong set, name or CA is
// refused by the client.
#[test]
fn unauthenticated_clients_are_refused_and_nothing_is_charged() {
    let s = scratch("auth");
    let ledger = s.dir.join("ledger.db");
    let extra: Vec<&str> = if cfg!(feature = "sqlite") {
        vec!["--ledger", ledger.to_str().unwrap()]
    } else {
        vec![]
    };
    let server = serve(&s, &extra);

    // A wrong token, through the command.
    let wrong = s.dir.join("wrong.token");
    std::fs::write(&wrong, "not-a-token-of-anyone-here\n").unwrap();
    let (code, report, stderr) = query(&server, &s, &wrong, &["--images", "1"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["error"]["refusal"], "unauthenticated", "{report}");
    assert_eq!(report["error"]["fault"], "local");
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    assert!(!stderr.contains("not-a-token"), "{stderr}");

    let rt = rt();
    rt.block_on(async {
        // The Hello names the set and its fingerprint (NET-4).
        let mut stream = raw_connect(&server, &s).await;
        let b16 = ParameterSet::shipped("b16").unwrap();
        assert_eq!(
            next_control(&mut stream).await,
            Some(Control::Hello {
                protocol_version: safhire::protocol::VERSION,
                fingerprint: b16.fingerprint(),
                set: "b16".into()
            })
        );
        // No credentials at all: a session request where Auth belongs.
        // The pre-authentication frame limit refuses its size unread.
        send(&mut stream, &session_request()).await;
        assert_eq!(refusal(&mut stream).await, Refusal::Unauthenticated);

        // A small non-Auth frame, and an empty token.
        let mut stream = raw_connect(&server, &s).await;
        next_control(&mut stream).await;
        send(&mut stream, &Control::ServerTime { micros: 1 }.encode()).await;
        assert_eq!(refusal(&mut stream).await, Refusal::Unauthenticated);
        let mut stream = raw_connect(&server, &s).await;
        next_control(&mut stream).await;
        send(&mut stream, &Control::Auth { token: vec![b'x'] }.encode()).await;
        assert_eq!(refusal(&mut stream).await, Refusal::Unauthenticated);

        // The client refuses a server on another set than it insists on.
        let mut config = connect_config(&server, &s);
        config.parameters = Some(ParameterSet::shipped("b12").unwrap());
        let e = Connection::connect(&config).await.unwrap_err();
        assert!(matches!(e.kind, NetErrorKind::Handshake(_)), "{e}");
        // ... a certificate for another name, or from another CA.
        let mut config = connect_config(&server, &s);
        config.server_name = "example.com".into();
        let e = Connection::connect(&config).await.unwrap_err();
        assert!(matches!(e.kind, NetErrorKind::Tls(_)), "{e}");
        let other = net::tls::dev_cert(&["localhost".into()]).unwrap();
        let other_ca = s.dir.join("other-ca.pem");
        std::fs::write(&other_ca, other.ca_pem).unwrap();
        let mut config = connect_config(&server, &s);
        config.tls = net::tls::client_config(&other_ca).unwrap();
        assert!(Connection::connect(&config).await.is_err());
    });

    #[cfg(feature = "sqlite")]
    {
        let db = rusqlite::Connection::open(&ledger).unwrap();
        let rows: i64 = db
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "a refused client was charged");
    }
    // And the real clients' counts are untouched.
    for token in [&s.alice, &s.bob] {
        let (code, report, stderr) = query(&server, &s, token, &["--images", "1"]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(report["budget"]["used_before"], 0);
        assert_eq!(logits(&report), vec![reference(0)]);
    }
}

// NET-6, NET-7, PROTO-5: past the policy's budget the server refuses with
// the typed budget error; other identities are not affected.
#[test]
fn a_client_over_budget_is_refused_with_the_budget_error() {
    let s = scratch("budget");
    // The default policy: 2 sessions per identity.
    let server = serve(&s, &["--policy", "default"]);
    let rt = rt();
    // One session charged by hand (accepted, then abandoned).
    rt.block_on(async {
        let mut stream = authenticated(&server, &s, &s.alice).await;
        start_session(&mut stream).await;
    });
    let (code, report, stderr) = query(&server, &s, &s.alice, &["--images", "3"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(report["budget"]["used_before"], 1);
    assert_eq!(report["budget"]["limit"], 2);
    assert_eq!(report["completed"], 1);
    assert_eq!(logits(&report), vec![reference(0)]);
    assert_eq!(report["error"]["refusal"], "budget_exhausted", "{report}");
    assert_eq!(report["error"]["input"], 1);
    assert!(
        stderr.contains("query budget exhausted: 2 of 2"),
        "{stderr}"
    );
    // Still refused on a new connection; bob has his own budget.
    let (code, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["error"]["refusal"], "budget_exhausted");
    assert_eq!(report["completed"], 0);
    let (code, report, _) = query(&server, &s, &s.bob, &["--images", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(report["budget"]["used_before"], 0);
}

// NET-8: clients that vanish mid-session, mid-frame or mid-handshake end
// only their own connection.
#[test]
fn a_client_that_disconnects_mid_session_leaves_the_server_serving_others() {
    let s = scratch("disconnect");
    let mut server = serve(&s, &[]);
    let rt = rt();
    rt.block_on(async {
        // A connection that stays up throughout, authenticated, idle.
        let mut survivor = Connection::connect(&connect_config(&server, &s))
            .await
            .unwrap();
        // Gone after the SessionAccept.
        let mut stream = authenticated(&server, &s, &s.bob).await;
        start_session(&mut stream).await;
        drop(stream);
        // Gone in the middle of an upload frame.
        let mut stream = authenticated(&server, &s, &s.bob).await;
        start_session(&mut stream).await;
        send_raw(&mut stream, &(40_000u32).to_be_bytes()).await;
        send_raw(&mut stream, b"SFHP\x01\x00\x12\x00").await;
        drop(stream);
        // Gone in the middle of a session request, and before Auth.
        let mut stream = authenticated(&server, &s, &s.bob).await;
        let request = session_request();
        send_raw(&mut stream, &frame::encode_frame(&request).unwrap()[..1000]).await;
        drop(stream);
        let mut stream = raw_connect(&server, &s).await;
        next_control(&mut stream).await;
        drop(stream);
        // A TCP connection that never starts TLS.
        drop(tokio::net::TcpStream::connect(&server.addr).await.unwrap());

        let out = survivor.infer(&test_set().inputs[7]).await.unwrap();
        assert_eq!(out.logits, reference(7));
        assert_eq!(out.rounds.len(), 3);
        survivor.close().await;
    });
    server.wait_for_log("in the middle of a session", 1);
    assert!(server.alive());
    let (code, report, stderr) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(logits(&report), vec![reference(0)]);
    // Bob's two abandoned sessions were charged when they were accepted;
    // the request that never arrived whole was not.
    let (_, report, _) = query(&server, &s, &s.bob, &["--images", "1"]);
    assert_eq!(report["budget"]["used_before"], 2);
}

// NET-1, NET-2, NET-7: a bad length or a garbage payload is refused as a
// protocol violation and closes that connection only.
#[test]
fn malformed_frames_close_that_connection_only() {
    let s = scratch("malformed");
    let mut server = serve(&s, &[]);
    let rt = rt();
    rt.block_on(async {
        let mut survivor = Connection::connect(&connect_config(&server, &s))
            .await
            .unwrap();
        let violation = |r: Refusal, says: &str| match r {
            Refusal::ProtocolViolation(d) => assert!(d.contains(says), "{d}"),
            other => panic!("expected a protocol violation ({says}), got {other}"),
        };

        // Before authentication: a huge length, refused unread (NET-1):
        // no Auth is that long.
        let mut stream = raw_connect(&server, &s).await;
        next_control(&mut stream).await;
        send_raw(&mut stream, &u32::MAX.to_be_bytes()).await;
        assert_eq!(refusal(&mut stream).await, Refusal::Unauthenticated);
        // A zero length.
        let mut stream = raw_connect(&server, &s).await;
        next_control(&mut stream).await;
        send_raw(&mut stream, &[0, 0, 0, 0]).await;
        violation(refusal(&mut stream).await, "empty frame");

        // After authentication: over the protocol's limit.
        let mut stream = authenticated(&server, &s, &s.bob).await;
        send_raw(&mut stream, &((MAX_BODY + 21) as u32).to_be_bytes()).await;
        violation(refusal(&mut stream).await, "limit");
        // A payload that is no message at all (NET-2).
        let mut stream = authenticated(&server, &s, &s.bob).await;
        send(&mut stream, b"GET / HTTP/1.1\r\n\r\n").await;
        violation(refusal(&mut stream).await, "neither a protocol message");
        // A protocol envelope with a garbage body.
        let mut stream = authenticated(&server, &s, &s.bob).await;
        let mut garbage = session_request();
        garbage.truncate(64);
        send(&mut stream, &garbage).await;
        violation(refusal(&mut stream).await, "");
        // A control message where a SessionRequest belongs.
        let mut stream = authenticated(&server, &s, &s.bob).await;
        send(&mut stream, &Control::ServerTime { micros: 5 }.encode()).await;
        violation(refusal(&mut stream).await, "expected a SessionRequest");
        // An upload for the wrong round, mid-session (PROTO-4).
        let mut stream = authenticated(&server, &s, &s.bob).await;
        start_session(&mut stream).await;
        // Message fields are private, so the upload is made as a peer
        // would: bytes, an upload of another session (PROTO-10: its
        // identifier is checked first) for round 2 with no ciphertexts.
        let ctx = b16();
        let mut upload = safhire::protocol::MAGIC.to_vec();
        upload.extend_from_slice(&safhire::protocol::VERSION.to_le_bytes());
        upload.extend_from_slice(&[safhire::protocol::MessageKind::Upload as u8, 0]);
        upload.extend_from_slice(&ctx.params().fingerprint().to_le_bytes());
        upload.extend_from_slice(&24u32.to_le_bytes());
        upload.extend_from_slice(&[0xa5; 16]);
        upload.extend_from_slice(&2u32.to_le_bytes());
        upload.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            safhire::protocol::Upload::decode(&ctx, &upload)
                .unwrap()
                .round(),
            2
        );
        send(&mut stream, &upload).await;
        violation(refusal(&mut stream).await, "another session");

        let out = survivor.infer(&test_set().inputs[3]).await.unwrap();
        assert_eq!(out.logits, reference(3));
        survivor.close().await;
    });
    assert!(server.alive());
    let (code, _, stderr) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
}

// NET-8: connections in the TLS handshake are capped. A TCP connection
// that never sends its ClientHello holds the only handshake slot, so the
// next one is closed before any TLS work and its query fails; once the
// first goes away its slot is back and a query runs bit-exact.
#[test]
fn handshake_cap_closes_connections_past_it() {
    let s = scratch("handshakes");
    let server = serve(&s, &["--max-handshakes", "1", "--timeout-secs", "30"]);
    let holder = std::net::TcpStream::connect(&server.addr).unwrap();
    // The server has taken it (and its slot) once a second one is refused.
    std::thread::sleep(Duration::from_millis(300));
    let (code, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_ne!(code, Some(0), "{report}");
    server.wait_for_log("too many TLS handshakes in progress", 1);
    drop(holder);
    // Its handshake fails at end of stream and gives the slot back.
    server.wait_for_log("TLS handshake failed", 1);
    let (code, report, stderr) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(logits(&report), vec![reference(0)]);
}

// NET-8, NET-9: the session cap (busy), the idle timeout, and a graceful
// shutdown that finishes the session in flight and refuses the next.
#[test]
fn limits_and_graceful_shutdown() {
    let s = scratch("limits");
    let mut server = serve(
        &s,
        &[
            "--max-sessions",
            "1",
            "--timeout-secs",
            "2",
            "--grace-secs",
            "20",
        ],
    );
    let rt = rt();
    rt.block_on(async {
        // One authenticated connection takes the only slot.
        let mut holder = authenticated(&server, &s, &s.bob).await;
        let mut other = raw_connect(&server, &s).await;
        assert_eq!(refusal(&mut other).await, Refusal::Busy);
        // It idles past the timeout and is told so; the slot is free again.
        let t = Instant::now();
        assert_eq!(refusal(&mut holder).await, Refusal::Timeout);
        assert!(t.elapsed() < Duration::from_secs(10));
    });
    let (code, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(logits(&report), vec![reference(0)]);
    // The busy refusal through the command, typed.
    let report = rt.block_on(async {
        let _holder = authenticated(&server, &s, &s.bob).await;
        let (code, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
        assert_eq!(code, Some(1));
        report
    });
    assert_eq!(report["error"]["refusal"], "busy", "{report}");
    assert_eq!(report["error"]["fault"], "peer");

    // A query of three images; shut down during its first session.
    // Five connections so far, all closed: the slot is free.
    server.wait_for_log("closed", 5);
    let child = query_command(&server, &s, &s.alice, &["--images", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    server.wait_for_log("session 1 accepted", 2);
    server.signal("-INT");
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["completed"], 1, "{report}");
    assert_eq!(logits(&report), vec![reference(0)]);
    assert_eq!(report["error"]["refusal"], "shutting_down", "{report}");
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let stdout = server.stdout.lock().unwrap().clone();
    assert!(stdout.contains("stopped:"), "{stdout}");
    assert!(stdout.contains("0 cut at the grace deadline"), "{stdout}");
}

// PROTO-8, NET-6: with the default ledger (a SQLite file in the working
// directory), killing the server mid-run and restarting it keeps every
// charge: the client's used count, and so its remaining budget, is what it
// was.
#[test]
fn a_restarted_server_keeps_the_counts_of_its_ledger() {
    use safhire::protocol::{ClientId, Ledger, SqliteLedger};
    let s = scratch("restart");
    let ledger = s.dir.join("safhire-ledger.sqlite");
    let args: [&str; 0] = [];
    let mut server = serve(&s, &args);
    let (code, report, _) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(report["budget"]["used_after"], 1);

    // A run of four; the server is killed once its third session is in.
    let used = || {
        SqliteLedger::open(&ledger)
            .unwrap()
            .used(&ClientId("alice".into()))
            .unwrap()
    };
    let client = query_command(&server, &s, &s.alice, &["--images", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while used() < 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.child.kill().unwrap();
    server.wait_exit(Duration::from_secs(10));
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["fault"], "peer", "{report}");
    let before = used();
    assert!((3..=5).contains(&before), "{before}");

    let server = serve(&s, &args);
    let (code, report, stderr) = query(&server, &s, &s.alice, &["--images", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["budget"]["used_before"], before);
    assert_eq!(report["budget"]["used_after"], before + 1);
    assert_eq!(used(), before + 1);
    assert_eq!(logits(&report), vec![reference(0)]);
}
