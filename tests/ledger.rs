//! PROTO-5, PROTO-8: the query ledger charges atomically, per identity;
//! the SQLite ledger (feature `sqlite`) survives restarts and is shared by
//! every endpoint that opens the same file, without double spending under
//! concurrency.

#[path = "common/ledger_contract.rs"]
mod contract;

use contract::{drain, id};
use safhire::protocol::{Ledger, LedgerError, MemoryLedger};

// PROTO-8
#[test]
fn the_memory_ledger_charges_up_to_the_budget_per_identity() {
    let mut ledger = MemoryLedger::default();
    assert_eq!(ledger.charge(&id("a"), 3), Ok(1));
    assert_eq!(drain(&mut ledger, &id("a"), 3), 2);
    assert_eq!(
        ledger.charge(&id("a"), 3),
        Err(LedgerError::Exhausted { used: 3, budget: 3 })
    );
    // Another identity, byte for byte, has its own count.
    assert_eq!(ledger.charge(&id("a "), 3), Ok(1));
    assert_eq!(ledger.used(&id("a")), Ok(3));
    assert_eq!(ledger.used(&id("nobody")), Ok(0));
}

// PROTO-8: batches on the memory ledger.
#[test]
fn the_memory_ledger_charges_batches_whole_or_not_at_all() {
    let mut ledger = MemoryLedger::default();
    contract::charges_batches_on_one_ledger(&mut ledger);
    // A larger budget (a new policy) lets a batch go on from the count.
    assert_eq!(ledger.charge_queries(&id("a"), 5, 15), Ok(15));
}

// PROTO-8: the memory ledger counts up to u64::MAX; a count plus a batch
// that would pass it is refused (checked, never wrapped), with no charge.
#[test]
fn the_memory_ledger_never_wraps_near_u64_max() {
    let mut ledger = MemoryLedger::default();
    let max = u64::MAX;
    assert_eq!(ledger.charge_queries(&id("x"), max - 1, max), Ok(max - 1));
    for queries in [2, 3, max - 1, max] {
        assert_eq!(
            ledger.charge_queries(&id("x"), queries, max),
            Err(LedgerError::Exhausted {
                used: max - 1,
                budget: max
            }),
            "{queries}"
        );
    }
    assert_eq!(ledger.used(&id("x")), Ok(max - 1));
    assert_eq!(ledger.charge(&id("x"), max), Ok(max));
    assert_eq!(
        ledger.charge(&id("x"), max),
        Err(LedgerError::Exhausted {
            used: max,
            budget: max
        })
    );
    assert_eq!(ledger.used(&id("x")), Ok(max));
    // The whole budget in one batch.
    assert_eq!(ledger.charge_queries(&id("y"), max, max), Ok(max));
    // A batch of u64::MAX against a smaller budget.
    assert_eq!(
        ledger.charge_queries(&id("z"), max, 10),
        Err(LedgerError::Exhausted {
            used: 0,
            budget: 10
        })
    );
    assert_eq!(ledger.used(&id("z")), Ok(0));
}

// The contract of every SQL ledger (tests/common/ledger_contract.rs), on
// SQLite: one file a test, opened again by each call of the opener.
#[cfg(feature = "sqlite")]
mod sqlite {
    use super::contract::{self, ChargeRace};
    use safhire::protocol::{Ledger, SqliteLedger};
    use std::path::PathBuf;

    /// A ledger file in a directory of its own, removed when dropped (so
    /// a test run leaves nothing in the temporary directory).
    struct Scratch {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Runs `check` on a new ledger file `name`, each open a new
    /// connection to it.
    fn on_file(name: &str, check: impl FnOnce(contract::Open)) {
        let dir =
            std::env::temp_dir().join(format!("safhire-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let scratch = Scratch { dir, path };
        let open = || -> Box<dyn Ledger> { Box::new(SqliteLedger::open(&scratch.path).unwrap()) };
        check(&open);
    }

    // PROTO-8
    #[test]
    fn charges_up_to_the_budget_then_refuses() {
        on_file("budget.db", contract::charges_up_to_the_budget_then_refuses);
    }

    // PROTO-8: batches on the SQLite ledger, also after a restart.
    #[test]
    fn charges_batches_whole_or_not_at_all() {
        on_file("batches.db", contract::charges_batches_whole_or_not_at_all);
    }

    // PROTO-8: counts are signed 64-bit in the file.
    #[test]
    fn budgets_near_u64_max_never_overflow() {
        on_file("limits.db", contract::budgets_near_u64_max_never_overflow);
    }

    // PROTO-5, PROTO-8
    #[test]
    fn distinct_identities_are_independent() {
        on_file(
            "identities.db",
            contract::distinct_identities_are_independent,
        );
    }

    // PROTO-8: a restart (closing and reopening the file) keeps every count.
    #[test]
    fn charges_survive_a_restart() {
        on_file("restart.db", contract::charges_survive_a_restart);
    }

    // PROTO-8: two connections to one file share the counts.
    #[test]
    fn two_ledgers_share_the_counts() {
        on_file("shared.db", contract::two_ledgers_share_the_counts);
    }

    // PROTO-8: four threads, each with its own connection (as separate
    // endpoints or processes would have), race to charge one identity 50
    // times each against a budget of 120: exactly 120 charges succeed.
    #[test]
    fn concurrent_endpoints_never_spend_the_same_unit() {
        on_file("race.db", |open| {
            contract::concurrent_charges_never_exceed_the_budget(
                open,
                ChargeRace {
                    threads: 4,
                    connections: 1,
                    tries: 50,
                    budget: 120,
                    fresh: false,
                },
            )
        });
    }

    // PROTO-8 with batches: four threads, each with its own connection,
    // charge one identity batches of 1, 2, 3 and 7 queries until refused,
    // against a budget of 200.
    #[test]
    fn concurrent_batches_never_exceed_the_budget() {
        on_file("batch-race.db", |open| {
            contract::concurrent_batches_never_exceed_the_budget(open, &[1, 2, 3, 7], 1, 200)
        });
    }

    // PROTO-8 through the protocol: an endpoint restarted on the same file
    // refuses an identity that spent its budget before the restart.
    #[test]
    fn an_endpoint_restarted_on_the_ledger_keeps_the_budget() {
        on_file(
            "endpoint.db",
            contract::an_endpoint_restarted_on_the_ledger_keeps_the_budget,
        );
    }
}
