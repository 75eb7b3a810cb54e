//! PROTO-9: the PostgreSQL query ledger (feature `postgres`) charges
//! atomically before any work, never past the budget under concurrency,
//! keeps its counts across restarts of the servers and of the database, is
//! shared by every server that connects to it, and fails with a typed
//! error that does not repeat the password.
//!
//! Each test that needs a database starts a throwaway PostgreSQL cluster of
//! its own (`initdb` and `pg_ctl` from `$SAFHIRE_PG_BIN`, the `PATH` or
//! Debian's /usr/lib/postgresql/N/bin), listening only on a Unix socket in
//! a temporary directory, and stops and removes it when the test ends,
//! panics included. As root the cluster runs as the `postgres` user
//! (PostgreSQL refuses root). Where no server can be started the test
//! prints why and returns, except under `CI=true`, where it fails.
//!
//! The checks every SQL ledger keeps are in tests/common/ledger_contract.rs,
//! shared with the SQLite ledger (tests/ledger.rs); the tests here run them
//! on PostgreSQL, and add what only a database server has.
#![cfg(feature = "postgres")]

#[path = "common/ledger_contract.rs"]
mod contract;

use contract::{drain, id, ChargeRace};
use safhire::protocol::{Ledger, LedgerError, PostgresLedger};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A PostgreSQL cluster in a temporary directory, stopped and removed on
/// drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Run the server's tools as this user (`runuser -u`), when root.
    user: Option<String>,
}

/// Why no cluster could be started.
enum Unavailable {
    /// Not installed here: skipped, except in CI.
    Missing(String),
    /// Installed but failed: always a failure.
    Broken(String),
}

fn find_bin() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("SAFHIRE_PG_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| has_tools(d));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_tools(d)) {
        // /usr/local/bin/initdb may be a link into the real bin directory,
        // which also holds `postgres`, which pg_ctl looks for beside itself.
        let real = dir
            .join("pg_ctl")
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        return Some(real.filter(|d| has_tools(d)).unwrap_or(dir));
    }
    // Debian's packages keep the binaries off the PATH.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Cluster {
    fn start() -> Result<Self, Unavailable> {
        let bin = find_bin().ok_or_else(|| {
            Unavailable::Missing(
                "no PostgreSQL server binaries (initdb, pg_ctl) on the PATH, in \
                 $SAFHIRE_PG_BIN or in /usr/lib/postgresql/*/bin; \
                 `apt-get install postgresql` provides them"
                    .into(),
            )
        })?;
        let root = std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0);
        let user = if root {
            let id_of = |flag: &str| -> Option<u32> {
                let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            };
            let (Some(uid), Some(gid)) = (id_of("-u"), id_of("-g")) else {
                return Err(Unavailable::Missing(
                    "running as root, and PostgreSQL refuses root, but there is no \
                     `postgres` user to run it as"
                        .into(),
                ));
            };
            if Command::new("runuser").arg("--help").output().is_err() {
                return Err(Unavailable::Missing(
                    "running as root, but `runuser` is missing".into(),
                ));
            }
            Some((uid, gid))
        } else {
            None
        };

        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "safhire-pg-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Unavailable::Broken(format!("creating {}: {e}", dir.display())))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| Unavailable::Broken(format!("chown {}: {e}", dir.display())))?;
        }
        // Only a Unix socket, but its name carries the port: take one no
        // one listens on here.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(54329);
        // From here on the guard removes the directory whatever happens.
        let cluster = Cluster {
            dir,
            port,
            bin,
            user: user.map(|_| "postgres".to_owned()),
        };
        let data = cluster.dir.join("data");
        cluster
            .tool("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .output()
            .map_err(|e| Unavailable::Broken(format!("running initdb: {e}")))
            .and_then(|out| {
                if out.status.success() {
                    Ok(())
                } else {
                    Err(Unavailable::Broken(format!(
                        "initdb failed: {}",
                        output_text(&out)
                    )))
                }
            })?;
        cluster.pg_ctl("start").map_err(Unavailable::Broken)?;
        Ok(cluster)
    }

    /// `name` from the server's bin directory, run as the cluster's user.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The postgres user may not be allowed into the test's directory.
        cmd.current_dir(&self.dir);
        cmd
    }

    /// `pg_ctl start`, `stop` or `restart`, waiting for it to finish.
    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories={} -p {} -c fsync=off",
            self.dir.display(),
            self.port
        );
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "-m"])
            .arg(if action == "stop" {
                "immediate"
            } else {
                "fast"
            })
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(options)
            .arg(action);
        let out = cmd
            .output()
            .map_err(|e| format!("running pg_ctl {action}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            Err(format!(
                "pg_ctl {action} failed: {}\nserver log:\n{log}",
                output_text(&out)
            ))
        }
    }

    /// A connection string for the cluster's `postgres` database.
    fn url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    fn ledger(&self) -> PostgresLedger {
        PostgresLedger::connect(&self.url()).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            if let Err(e) = self.pg_ctl("stop") {
                eprintln!("{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running cluster, or `None` after printing why the test is skipped.
/// Under `CI=true` a missing server fails the test instead: CI must not
/// pass by skipping.
fn cluster() -> Option<Cluster> {
    match Cluster::start() {
        Ok(cluster) => Some(cluster),
        Err(Unavailable::Missing(why)) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL is required under CI=true: {why}");
            }
            eprintln!("skipped (no PostgreSQL server to test against): {why}");
            None
        }
        Err(Unavailable::Broken(why)) => panic!("could not start PostgreSQL: {why}"),
    }
}

/// Runs `check` on a new cluster, each open a new connection to it; skips
/// (or fails, under `CI=true`) as [`cluster`] says.
fn on_cluster(check: impl FnOnce(contract::Open)) {
    let Some(pg) = cluster() else { return };
    let open = || -> Box<dyn Ledger> { Box::new(pg.ledger()) };
    check(&open);
}

// PROTO-9: up to the budget, then a refusal that is the client's; budget 0
// refuses the first session.
#[test]
fn charges_up_to_the_budget_then_refuses() {
    on_cluster(contract::charges_up_to_the_budget_then_refuses);
}

// PROTO-8, PROTO-9 with batches: a session of k images is charged k
// queries at once, up to exactly the budget; a batch that would cross it,
// or of zero queries, charges nothing; another server sees the batches.
#[test]
fn charges_batches_whole_or_not_at_all() {
    on_cluster(contract::charges_batches_whole_or_not_at_all);
}

// PROTO-9: counts are `bigint`, so a budget above i64::MAX acts as
// i64::MAX, and no batch near it is a storage error (`bigint out of
// range`).
#[test]
fn budgets_near_u64_max_never_overflow() {
    on_cluster(contract::budgets_near_u64_max_never_overflow);
}

// PROTO-5, PROTO-9: identities are compared byte for byte, each with its
// own count.
#[test]
fn distinct_identities_are_independent() {
    on_cluster(contract::distinct_identities_are_independent);
}

// PROTO-9: dropping the ledger and connecting again (a server restart)
// keeps every count.
#[test]
fn charges_survive_a_restart() {
    on_cluster(contract::charges_survive_a_restart);
}

// PROTO-9: dropping the ledger and connecting again (a server restart), and
// restarting the database itself, keep every count; a ledger that stays up
// while the database restarts reconnects by itself.
#[test]
fn counts_survive_restarts_of_the_server_and_the_database() {
    let Some(pg) = cluster() else { return };
    {
        let mut ledger = pg.ledger();
        for want in 1..=3 {
            assert_eq!(ledger.charge(&id("mallory"), 5), Ok(want));
        }
    }
    let mut reopened = pg.ledger();
    assert_eq!(reopened.used(&id("mallory")), Ok(3));
    assert_eq!(reopened.charge(&id("mallory"), 5), Ok(4));

    let mut idle = pg.ledger();
    pg.pg_ctl("restart").unwrap();
    // Both connections died with the database; each ledger reconnects.
    assert_eq!(reopened.used(&id("mallory")), Ok(4));
    assert_eq!(drain(&mut reopened, &id("mallory"), 5), 1);
    // A ledger idle through the restart sees its connection closed before
    // it sends the charge, and charges on a new one.
    assert_eq!(idle.charge(&id("oscar"), 5), Ok(1));
    let mut fresh = pg.ledger();
    assert!(matches!(
        fresh.charge(&id("mallory"), 5),
        Err(LedgerError::Exhausted { used: 5, budget: 5 })
    ));
}

// PROTO-9: two ledgers on two connections (two server processes) share
// one count per identity.
#[test]
fn two_ledgers_share_the_counts() {
    on_cluster(contract::two_ledgers_share_the_counts);
}

// PROTO-9: 8 threads, each with 2 connections of its own (16 servers),
// connect at once to a database without the table and then race to charge
// the same new identity 25 times each against a budget of 150: exactly 150
// charges succeed, every refusal is `Exhausted`, and the stored count is
// 150. A second identity charged in the same race is unaffected.
#[test]
fn concurrent_charges_never_exceed_the_budget() {
    on_cluster(|open| {
        contract::concurrent_charges_never_exceed_the_budget(
            open,
            ChargeRace {
                threads: 8,
                connections: 2,
                tries: 25,
                budget: 150,
                fresh: true,
            },
        )
    });
}

// PROTO-9 with batches: 8 threads, each with 2 connections of its own (16
// servers), race to charge one identity batches of 1, 2, 3, 5, 7, 11, 13
// and 64 queries (one size per thread) until refused, against a budget of
// 500.
#[test]
fn concurrent_batches_never_exceed_the_budget() {
    on_cluster(|open| {
        contract::concurrent_batches_never_exceed_the_budget(
            open,
            &[1, 2, 3, 5, 7, 11, 13, 64],
            2,
            500,
        )
    });
}

// PROTO-9 through the protocol: an endpoint restarted on the same database
// refuses, as the peer's fault, an identity that spent its budget before.
#[test]
fn an_endpoint_restarted_on_the_database_keeps_the_budget() {
    on_cluster(contract::an_endpoint_restarted_on_the_ledger_keeps_the_budget);
}

// PROTO-9 as the `net` server uses it: charged on a blocking thread of a
// tokio runtime, then dropped inside the runtime (where closing a
// rust-postgres connection in place would panic).
#[test]
fn a_ledger_can_be_used_and_dropped_in_an_async_context() {
    let Some(pg) = cluster() else { return };
    let ledger = pg.ledger();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let ledger = tokio::task::spawn_blocking(move || {
            let mut ledger = ledger;
            assert_eq!(ledger.charge(&id("grace"), 2), Ok(1));
            ledger
        })
        .await
        .unwrap();
        drop(ledger);
    });
    assert_eq!(pg.ledger().used(&id("grace")), Ok(1));
}

const PASSWORD: &str = "Pa55-w0rd-hunter2";

/// The error of connecting to `url`, checked to be a storage error (this
/// side's fault) whose message contains no trace of the password.
fn refused(url: &str) -> String {
    let t = Instant::now();
    let err = PostgresLedger::connect(url).expect_err(url);
    assert!(t.elapsed().as_secs() < 30, "took {:.1?}", t.elapsed());
    let LedgerError::Storage(message) = &err else {
        panic!("not a storage error: {err:?}");
    };
    eprintln!("{err}");
    for shown in [message.clone(), err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(PASSWORD), "password in {shown:?}");
        assert!(
            !shown.contains("hunter"),
            "part of the password in {shown:?}"
        );
    }
    message.clone()
}

// PROTO-9: no server needed. Unreachable databases, a malformed URL and a
// request for TLS are typed errors without the password.
#[test]
fn unreachable_or_invalid_urls_are_typed_errors_without_the_password() {
    // Nothing listens on port 1 of the loopback address.
    let tcp = refused(&format!(
        "postgresql://alice:{PASSWORD}@127.0.0.1:1/ledger?connect_timeout=5"
    ));
    assert!(tcp.contains("connecting"), "{tcp}");
    assert!(tcp.contains("alice@127.0.0.1:1/ledger"), "{tcp}");
    let socket = refused(&format!(
        "host=/nonexistent/safhire port=5432 user=alice password={PASSWORD} dbname=ledger"
    ));
    assert!(socket.contains("connecting"), "{socket}");
    let bad_port = refused(&format!(
        "postgres://alice:{PASSWORD}@localhost:port/ledger"
    ));
    assert!(
        bad_port.contains("not a valid connection string"),
        "{bad_port}"
    );
    // A password with an unquoted space: its second half parses as an
    // unknown option, which the parser's message would name.
    let (first, second) = PASSWORD.split_at(10);
    let unquoted = refused(&format!("user=alice password={first} {second}=1"));
    assert!(
        unquoted.contains("not a valid connection string"),
        "{unquoted}"
    );
    let bad_syntax = refused(&format!("user=alice password='{PASSWORD}"));
    assert!(
        bad_syntax.contains("not a valid connection string"),
        "{bad_syntax}"
    );
    let tls = refused(&format!(
        "postgresql://alice:{PASSWORD}@127.0.0.1:1/ledger?sslmode=require"
    ));
    assert!(tls.contains("TLS"), "{tls}");
}

// PROTO-9: a server that refuses the login (here: no such role) is a typed
// error without the password the URL carried.
#[test]
fn a_refused_login_is_a_typed_error_without_the_password() {
    let Some(pg) = cluster() else { return };
    let message = refused(&format!(
        "host={} port={} user=nobody password={PASSWORD} dbname=postgres",
        pg.dir.display(),
        pg.port
    ));
    assert!(message.contains("nobody"), "{message}");
    assert!(message.contains("28000"), "{message}");
    // The URL form reaches the same socket.
    let dir = pg.dir.display().to_string().replace('/', "%2F");
    let mut ledger =
        PostgresLedger::connect(&format!("postgresql://postgres@{dir}:{}/postgres", pg.port))
            .unwrap();
    assert_eq!(ledger.charge(&id("url"), 1), Ok(1));
    assert!(
        ledger.target().starts_with("postgres@/"),
        "{}",
        ledger.target()
    );
}
