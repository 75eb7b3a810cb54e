//! The query ledger (PROTO-5, PROTO-8): how many sessions each client
//! identity has started, charged atomically before the server does any
//! work for a session.
//!
//! [`MemoryLedger`] lives in one `Endpoint` and forgets everything on a
//! restart. [`SqliteLedger`] (feature `sqlite`) keeps the counts in a SQLite
//! file: they survive restarts, and every endpoint or process on the host
//! that opens the same file shares them. Budgets still mean only what the
//! identities mean (spec/threat-model.md §3).

use super::server::ClientId;
use std::collections::HashMap;
use thiserror::Error;

/// Why a charge was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerError {
    /// The identity has used its whole budget: the peer's fault.
    #[error("query budget exhausted: {used} of {budget} inferences used")]
    Exhausted {
        /// Sessions the identity has been charged (no charge was made).
        used: u64,
        /// The budget the charge was checked against.
        budget: u64,
    },
    /// The ledger's storage failed: this side's fault. The message names
    /// the operation, never an identity.
    #[error("query ledger: {0}")]
    Storage(String),
}

/// Counts sessions per identity. `charge` MUST check and increment in one
/// atomic step, so that concurrent sessions cannot spend the same unit.
pub trait Ledger: Send + std::fmt::Debug {
    /// Charges one session to `client` if it has used fewer than `budget`;
    /// returns the count after the charge.
    fn charge(&mut self, client: &ClientId, budget: u64) -> Result<u64, LedgerError>;
    /// Sessions `client` has been charged so far.
    fn used(&self, client: &ClientId) -> Result<u64, LedgerError>;
}

/// The in-memory ledger of one endpoint: gone on restart, not shared.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    used: HashMap<ClientId, u64>,
}

impl Ledger for MemoryLedger {
    fn charge(&mut self, client: &ClientId, budget: u64) -> Result<u64, LedgerError> {
        let used = self.used.get(client).copied().unwrap_or(0);
        if used >= budget {
            return Err(LedgerError::Exhausted { used, budget });
        }
        self.used.insert(client.clone(), used + 1);
        Ok(used + 1)
    }

    fn used(&self, client: &ClientId) -> Result<u64, LedgerError> {
        Ok(self.used.get(client).copied().unwrap_or(0))
    }
}

/// A ledger in a SQLite file (PROTO-8): one row per identity, charged by a
/// single conditional upsert, so the check and the increment are one
/// atomic statement even across processes.
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
    fn charge(&mut self, client: &ClientId, budget: u64) -> Result<u64, LedgerError> {
        let budget_sql = i64::try_from(budget).unwrap_or(i64::MAX);
        if budget_sql == 0 {
            return Err(LedgerError::Exhausted { used: 0, budget });
        }
        // One statement: insert at 1, or increment only while under budget.
        // No row back means the budget was already spent.
        let charged: Option<i64> = self
            .conn
            .query_row(
                "INSERT INTO sessions (client, used) VALUES (?1, 1)
                 ON CONFLICT (client) DO UPDATE SET used = used + 1 WHERE used < ?2
                 RETURNING used",
                rusqlite::params![client.0.as_bytes(), budget_sql],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(LedgerError::Storage(format!("charging a session: {e}"))),
            })?;
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
