//! The query ledger (PROTO-5, PROTO-8, PROTO-9): how many queries each
//! client identity has been charged, charged atomically before the server
//! does any work for a session. The unit is the query, one inference on one
//! image: a plain session is charged 1, a session of k images k, in one
//! step.
//!
//! [`MemoryLedger`] lives in one `Endpoint` and forgets everything on a
//! restart. [`SqliteLedger`] (feature `sqlite`) keeps the counts in a SQLite
//! file: they survive restarts, and every endpoint or process on the host
//! that opens the same file shares them. [`PostgresLedger`] (feature
//! `postgres`) keeps them in a PostgreSQL table, shared by servers on
//! several hosts. Budgets still mean only what the identities mean
//! (spec/threat-model.md §3).

use super::server::ClientId;
use std::collections::HashMap;
use thiserror::Error;

/// Why a charge was refused. Nothing was charged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerError {
    /// The identity's budget has too few queries left for the charge (none,
    /// or fewer than a batch asked for): the peer's fault.
    #[error(
        "query budget exhausted: {used} of {budget} queries used, too few left for this session"
    )]
    Exhausted {
        /// Queries the identity has been charged (no charge was made).
        used: u64,
        /// The budget the charge was checked against.
        budget: u64,
    },
    /// A charge of zero queries: this side's fault (the caller's; a session
    /// is charged at least one query).
    #[error("query ledger: a charge of zero queries (a session is charged at least one)")]
    ZeroQueries,
    /// The ledger's storage failed: this side's fault. The message names
    /// the operation, never an identity.
    #[error("query ledger: {0}")]
    Storage(String),
}

/// Counts queries per identity. [`charge_queries`](Ledger::charge_queries)
/// MUST check and add in one atomic step, so that concurrent sessions
/// cannot spend the same query, and MUST charge all of a session's queries
/// or none.
pub trait Ledger: Send + std::fmt::Debug {
    /// Charges `queries` to `client` (a session of k images is k queries)
    /// if its count plus `queries` is at most `budget`; returns the count
    /// after the charge. Otherwise charges nothing and fails with
    /// [`LedgerError::Exhausted`], also where the sum would overflow.
    /// `queries = 0` charges nothing and fails with
    /// [`LedgerError::ZeroQueries`].
    fn charge_queries(
        &mut self,
        client: &ClientId,
        queries: u64,
        budget: u64,
    ) -> Result<u64, LedgerError>;

    /// Charges one query (a plain session of one image) to `client`:
    /// [`charge_queries`](Ledger::charge_queries) with `queries = 1`.
    fn charge(&mut self, client: &ClientId, budget: u64) -> Result<u64, LedgerError> {
        self.charge_queries(client, 1, budget)
    }

    /// Queries `client` has been charged so far.
    fn used(&self, client: &ClientId) -> Result<u64, LedgerError>;
}

/// The in-memory ledger of one endpoint: gone on restart, not shared.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    used: HashMap<ClientId, u64>,
}

impl Ledger for MemoryLedger {
    fn charge_queries(
        &mut self,
        client: &ClientId,
        queries: u64,
        budget: u64,
    ) -> Result<u64, LedgerError> {
        if queries == 0 {
            return Err(LedgerError::ZeroQueries);
        }
        let used = self.used.get(client).copied().unwrap_or(0);
        match used.checked_add(queries) {
            Some(after) if after <= budget => {
                self.used.insert(client.clone(), after);
                Ok(after)
            }
            // Over the budget, or past u64::MAX (hence over any budget).
            _ => Err(LedgerError::Exhausted { used, budget }),
        }
    }

    fn used(&self, client: &ClientId) -> Result<u64, LedgerError> {
        Ok(self.used.get(client).copied().unwrap_or(0))
    }
}

/// The SQL ledgers' arguments for a charge of `queries` against `budget`:
/// `(queries, budget)` as the signed 64-bit integers the tables store, or
/// `None` where `queries` alone exceeds the budget (nothing to ask the
/// database: the charge is refused). Counts are stored as signed 64-bit
/// integers, so a budget above `i64::MAX` acts as `i64::MAX`.
///
/// With `1 <= queries <= budget <= i64::MAX`, the charge's condition
/// `used <= budget - queries` (the same as `used + queries <= budget`) and
/// the new count `used + queries` never overflow in SQL, whatever the
/// stored count: the subtraction is at least 0, and the addition runs only
/// where the condition held, so it is at most `budget`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn sql_arguments(queries: u64, budget: u64) -> Result<Option<(i64, i64)>, LedgerError> {
    if queries == 0 {
        return Err(LedgerError::ZeroQueries);
    }
    let budget = i64::try_from(budget).unwrap_or(i64::MAX);
    Ok(i64::try_from(queries)
        .ok()
        .filter(|&queries| queries <= budget)
        .map(|queries| (queries, budget)))
}

/// A ledger in a SQLite file (PROTO-8): one row per identity, charged by a
/// single conditional upsert, so the check and the addition of a session's
/// queries are one atomic statement even across processes. Counts are
/// signed 64-bit integers: a budget above `i64::MAX` acts as `i64::MAX`.
#[cfg(feature = "sqlite")]
pub struct SqliteLedger {
    conn: rusqlite::Connection,
}

#[cfg(feature = "sqlite")]
impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteLedger")
    }
}

#[cfg(feature = "sqlite")]
impl SqliteLedger {
    /// Opens (or creates) the ledger at `path`. Waits up to 5 s for another
    /// process's write to finish before a charge fails.
    pub fn open(path: &std::path::Path) -> Result<Self, LedgerError> {
        let storage = |what: &str| {
            let what = what.to_owned();
            move |e: rusqlite::Error| LedgerError::Storage(format!("{what}: {e}"))
        };
        let conn = rusqlite::Connection::open(path).map_err(storage("opening the file"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage("setting the busy timeout"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS sessions (
                 client BLOB PRIMARY KEY NOT NULL,
                 used INTEGER NOT NULL CHECK (used >= 0)
             );",
        )
        .map_err(storage("creating the table"))?;
        Ok(Self { conn })
    }
}

#[cfg(feature = "sqlite")]
impl Ledger for SqliteLedger {
    fn charge_queries(
        &mut self,
        client: &ClientId,
        queries: u64,
        budget: u64,
    ) -> Result<u64, LedgerError> {
        let charged: Option<i64> = match sql_arguments(queries, budget)? {
            None => None,
            // One statement: insert at `queries` (at most the budget, checked
            // above), or add `queries` only if the sum stays within the
            // budget (`used <= budget - queries`, which cannot overflow; see
            // `sql_arguments`). No row back means too few queries were left.
            Some((queries_sql, budget_sql)) => self
                .conn
                .query_row(
                    "INSERT INTO sessions (client, used) VALUES (?1, ?3)
                     ON CONFLICT (client) DO UPDATE SET used = used + ?3
                     WHERE used <= ?2 - ?3
                     RETURNING used",
                    rusqlite::params![client.0.as_bytes(), budget_sql, queries_sql],
                    |row| row.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(LedgerError::Storage(format!("charging a session: {e}"))),
                })?,
        };
        match charged {
            Some(used) => Ok(used as u64),
            None => Err(LedgerError::Exhausted {
                used: self.used(client)?,
                budget,
            }),
        }
    }

    fn used(&self, client: &ClientId) -> Result<u64, LedgerError> {
        let used: Option<i64> = self
            .conn
            .query_row(
                "SELECT used FROM sessions WHERE client = ?1",
                [client.0.as_bytes()],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(LedgerError::Storage(format!("reading a count: {e}"))),
            })?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }
}

#[cfg(feature = "postgres")]
pub use pg::PostgresLedger;

/// The PostgreSQL ledger (PROTO-9).
#[cfg(feature = "postgres")]
mod pg {
    use super::{ClientId, Ledger, LedgerError};
    use postgres::config::{Host, SslMode};
    use postgres::error::SqlState;
    use postgres::{Client, Config, NoTls, Statement};
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    /// The charge of `$3` queries against the budget `$2`: one statement,
    /// one implicit transaction (autocommit). The caller has checked
    /// `1 <= $3 <= $2` (`sql_arguments`), so the new row's count is within
    /// the budget, and `s.used <= $2 - $3` (the same as
    /// `s.used + $3 <= $2`) cannot overflow `bigint`, nor can the sum it
    /// guards.
    ///
    /// Why one conditional upsert and not a SERIALIZABLE transaction with
    /// retries: under READ COMMITTED (forced per connection below),
    /// `INSERT … ON CONFLICT DO UPDATE` either inserts the row or locks the
    /// existing one and evaluates `WHERE s.used <= $2 - $3` on its latest
    /// committed version; a concurrent charge of the same identity waits
    /// for that lock and then sees the new count. Two first charges of a
    /// new identity race on the primary key's speculative insertion: one
    /// inserts, the other waits for it and takes the update path. So the
    /// check and the addition of all `$3` queries are one atomic step
    /// across connections, processes and hosts, with one round trip and no
    /// retry loop. No row back means too few queries were left, and nothing
    /// was charged. When the statement returns, the charge is committed
    /// (durable under PostgreSQL's default `synchronous_commit = on`).
    const CHARGE: &str = "INSERT INTO safhire_sessions AS s (client, used) \
         VALUES ($1::BYTEA, $3::BIGINT) \
         ON CONFLICT (client) DO UPDATE SET used = s.used + $3::BIGINT \
         WHERE s.used <= $2::BIGINT - $3::BIGINT \
         RETURNING s.used";
    const USED: &str = "SELECT used FROM safhire_sessions WHERE client = $1";
    /// Identities are compared byte for byte (PROTO-5): `bytea`, not `text`,
    /// so no collation can merge two of them and any byte is allowed.
    const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS safhire_sessions (
             client BYTEA PRIMARY KEY NOT NULL,
             used BIGINT NOT NULL CHECK (used >= 0)
         )";
    /// Key of the transaction-level advisory lock taken around the schema
    /// check: two processes starting at once would otherwise race inside
    /// `CREATE TABLE IF NOT EXISTS` (a unique violation in the catalogue).
    const SCHEMA_LOCK: i64 = 0x5AF5_1AE0_1ED6_E700;
    /// A serialization failure or deadlock aborts the statement without
    /// charging anything, so it is safe to run again. Under READ COMMITTED
    /// neither happens; they can where a connection pooler drops the
    /// session's isolation setting and the database defaults to
    /// SERIALIZABLE.
    const RETRIES: u32 = 8;
    /// How long the check of the connection before a charge may take.
    const VALIDATION_TIMEOUT: Duration = Duration::from_secs(5);

    /// A ledger in a PostgreSQL table (PROTO-9), `safhire_sessions` in the
    /// connection's search path, created if missing: one row per identity,
    /// charged by a single conditional upsert (a session's queries all at
    /// once, or none), so servers on several hosts share the counts without
    /// double spending, and the counts survive restarts of the servers and
    /// of the database. Counts are `bigint`: a budget above `i64::MAX` acts
    /// as `i64::MAX`.
    ///
    /// No TLS to the database: connect over a Unix socket or a trusted
    /// network (`sslmode=require` is refused). The connection is
    /// synchronous (rust-postgres drives its own small tokio runtime), so
    /// call the ledger outside async tasks, as the `net` server does
    /// (`spawn_blocking`). A connection that breaks is reopened at the next
    /// call (a count is read again on the new one at once); a charge whose
    /// outcome is unknown (the connection broke while it ran) fails with
    /// [`LedgerError::Storage`] and is not retried.
    pub struct PostgresLedger {
        target: Target,
        session: Mutex<Option<Session>>,
    }

    /// The parsed connection settings and a description of them without
    /// the password, for messages.
    struct Target {
        config: Config,
        name: String,
    }

    struct Session {
        client: Client,
        charge: Statement,
        used: Statement,
    }

    impl std::fmt::Debug for PostgresLedger {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "PostgresLedger({})", self.target.name)
        }
    }

    impl PostgresLedger {
        /// Connects to the database at `url` (`postgres://user@host:port/db`,
        /// or libpq's `key=value` form; `host=/dir` for a Unix socket),
        /// creates the table if missing and prepares the statements.
        /// Unless the URL says otherwise, connecting times out after 10 s.
        ///
        /// Errors are [`LedgerError::Storage`] (this side's fault) and never
        /// repeat the URL's password.
        pub fn connect(url: &str) -> Result<Self, LedgerError> {
            let mut config: Config = url.parse().map_err(|e: postgres::Error| {
                // The parser's messages may quote a character of the string,
                // which may be the password's: only option names pass.
                let cause = std::error::Error::source(&e)
                    .map(|c| c.to_string())
                    .filter(|c| c.starts_with("invalid value for option `"))
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                LedgerError::Storage(format!(
                    "PostgreSQL: the URL is not a valid connection string{cause} \
                     (it is not repeated here: it may hold a password)"
                ))
            })?;
            let name = describe(&config);
            if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
                return Err(LedgerError::Storage(format!(
                    "PostgreSQL at {name}: TLS to the database is not supported; \
                     use a Unix socket or a trusted network (sslmode=disable)"
                )));
            }
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(Duration::from_secs(10));
            }
            if config.get_application_name().is_none() {
                config.application_name("safhire-ledger");
            }
            let target = Target { config, name };
            let session = target.open()?;
            Ok(Self {
                target,
                session: Mutex::new(Some(session)),
            })
        }

        /// The database, as `user@host:port/dbname`, without the password.
        pub fn target(&self) -> &str {
            &self.target.name
        }
    }

    /// `user@host:port/dbname` (several hosts comma-separated), never the
    /// password.
    fn describe(config: &Config) -> String {
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(dir) => dir.display().to_string(),
                };
                let ports = config.get_ports();
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        format!(
            "{}@{}/{}",
            config.get_user().unwrap_or("?"),
            if hosts.is_empty() {
                "?".to_owned()
            } else {
                hosts.join(",")
            },
            config.get_dbname().unwrap_or("")
        )
    }

    impl Target {
        /// A typed error for `what` that failed with `e`: the error and its
        /// causes on one line, a server error as its message and SQLSTATE
        /// only (its detail may quote a row, hence an identity), and the
        /// password blanked out wherever it might appear.
        fn error(&self, what: &str, e: &postgres::Error) -> LedgerError {
            let mut text = format!("PostgreSQL at {}: {what}: {e}", self.name);
            if let Some(db) = e.as_db_error() {
                text.push_str(&format!(
                    ": {} (SQLSTATE {})",
                    db.message(),
                    db.code().code()
                ));
            } else {
                let mut cause = std::error::Error::source(e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
            }
            let text = text.replace('\n', " ");
            let text = match self.config.get_password() {
                Some(p) if !p.is_empty() => text.replace(&*String::from_utf8_lossy(p), "***"),
                _ => text,
            };
            LedgerError::Storage(text)
        }

        /// Connects, forces READ COMMITTED (see `CHARGE`), creates the table
        /// if missing and prepares the two statements.
        fn open(&self) -> Result<Session, LedgerError> {
            let mut client = self
                .config
                .connect(NoTls)
                .map_err(|e| self.error("connecting", &e))?;
            client
                .batch_execute("SET default_transaction_isolation = 'read committed'")
                .map_err(|e| self.error("setting the isolation level", &e))?;
            let schema = |client: &mut Client| -> Result<(), postgres::Error> {
                let mut tx = client.transaction()?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
                // Checked first so that a role without CREATE on the schema
                // can use a table its administrator made.
                let exists: bool = tx
                    .query_one("SELECT to_regclass('safhire_sessions') IS NOT NULL", &[])?
                    .try_get(0)?;
                if !exists {
                    tx.batch_execute(SCHEMA)?;
                }
                tx.commit()
            };
            schema(&mut client).map_err(|e| self.error("creating the table", &e))?;
            let charge = client
                .prepare(CHARGE)
                .map_err(|e| self.error("preparing the charge", &e))?;
            let used = client
                .prepare(USED)
                .map_err(|e| self.error("preparing the count", &e))?;
            Ok(Session {
                client,
                charge,
                used,
            })
        }

        /// Runs `op` on the session, reopening it first if it is gone or
        /// broken. Runs it again after an error that guarantees nothing was
        /// written (serialization failure, deadlock), and, if `read_only`,
        /// once more on a fresh connection after the connection broke
        /// (e.g. the database restarted). A charge is never run again after
        /// a broken connection: it may have been committed.
        fn run<T>(
            &self,
            slot: &mut Option<Session>,
            what: &str,
            read_only: bool,
            mut op: impl FnMut(&mut Session) -> Result<T, postgres::Error>,
        ) -> Result<T, LedgerError> {
            let mut attempt = 0;
            let mut reconnected = false;
            loop {
                // Before a charge, one round trip checks the connection: one
                // the database has closed since the last call (a restart)
                // is replaced before the charge is sent on it, since a
                // charge that fails on it is not run again.
                if !read_only
                    && attempt == 0
                    && slot
                        .as_mut()
                        .is_some_and(|s| s.client.is_valid(VALIDATION_TIMEOUT).is_err())
                {
                    *slot = None;
                }
                if slot.as_ref().is_some_and(|s| s.client.is_closed()) {
                    *slot = None;
                }
                let session = match slot {
                    Some(session) => session,
                    None => slot.insert(self.open()?),
                };
                match op(session) {
                    Ok(value) => return Ok(value),
                    Err(e)
                        if attempt < RETRIES
                            && matches!(
                                e.code(),
                                Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                                    | Some(&SqlState::T_R_DEADLOCK_DETECTED)
                            ) =>
                    {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(u64::from(attempt) * 2));
                    }
                    Err(_) if read_only && !reconnected && session.client.is_closed() => {
                        reconnected = true;
                    }
                    Err(e) => {
                        if session.client.is_closed() {
                            *slot = None;
                        }
                        return Err(self.error(what, &e));
                    }
                }
            }
        }
    }

    impl Target {
        fn count(&self, slot: &mut Option<Session>, client: &ClientId) -> Result<u64, LedgerError> {
            let used = self.run(slot, "reading a count", true, |s| {
                s.client
                    .query_opt(&s.used, &[&client.0.as_bytes()])?
                    .map(|row| row.try_get::<_, i64>(0))
                    .transpose()
            })?;
            Ok(used.unwrap_or(0).max(0) as u64)
        }
    }

    impl Ledger for PostgresLedger {
        fn charge_queries(
            &mut self,
            client: &ClientId,
            queries: u64,
            budget: u64,
        ) -> Result<u64, LedgerError> {
            // A panic mid-call may have left the connection mid-protocol:
            // start from a fresh one.
            let slot = match self.session.get_mut() {
                Ok(slot) => slot,
                Err(poisoned) => {
                    let slot = poisoned.into_inner();
                    *slot = None;
                    slot
                }
            };
            let charged = match super::sql_arguments(queries, budget)? {
                None => None,
                Some((queries_sql, budget_sql)) => {
                    self.target.run(slot, "charging a session", false, |s| {
                        s.client
                            .query_opt(
                                &s.charge,
                                &[&client.0.as_bytes(), &budget_sql, &queries_sql],
                            )?
                            .map(|row| row.try_get::<_, i64>(0))
                            .transpose()
                    })?
                }
            };
            match charged {
                Some(used) => Ok(used.max(0) as u64),
                None => Err(LedgerError::Exhausted {
                    used: self.target.count(slot, client)?,
                    budget,
                }),
            }
        }

        fn used(&self, client: &ClientId) -> Result<u64, LedgerError> {
            let mut slot = self.session.lock().unwrap_or_else(|poisoned| {
                let mut slot = poisoned.into_inner();
                *slot = None;
                slot
            });
            self.target.count(&mut slot, client)
        }
    }

    impl Drop for PostgresLedger {
        /// rust-postgres closes a connection by blocking on its runtime,
        /// which panics inside an async context (where the `net` server may
        /// drop its endpoint): close it on a thread of its own.
        fn drop(&mut self) {
            let session = self
                .session
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(session) = session {
                let _ = std::thread::Builder::new()
                    .name("safhire-ledger-close".into())
                    .spawn(move || drop(session));
            }
        }
    }
}
