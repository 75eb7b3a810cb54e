//! PROTO-5, PROTO-8: the query ledger charges atomically, per identity;
//! the SQLite ledger (feature `sqlite`) survives restarts and is shared by
//! every endpoint that opens the same file, without double spending under
//! concurrency.

use safhire::protocol::{ClientId, Ledger, LedgerError, MemoryLedger};

fn id(name: &str) -> ClientId {
    ClientId(name.into())
}

/// Charges `ledger` until it refuses; returns how many charges it took.
fn drain(ledger: &mut dyn Ledger, who: &ClientId, budget: u64) -> u64 {
    let mut n = 0;
    while ledger.charge(who, budget).is_ok() {
        n += 1;
        assert!(n <= budget, "charged past the budget");
    }
    n
}

/// PROTO-8 with batches, on any ledger: a session of k images is charged
/// k queries at once, up to exactly the budget, and a charge that would
/// cross it, or of zero queries, charges nothing.
fn charges_batches_whole_or_not_at_all(ledger: &mut dyn Ledger) {
    // Two batches that reach exactly the budget, then not one more query.
    assert_eq!(ledger.charge_queries(&id("a"), 4, 10), Ok(4));
    assert_eq!(ledger.charge_queries(&id("a"), 6, 10), Ok(10));
    assert_eq!(
        ledger.charge_queries(&id("a"), 1, 10),
        Err(LedgerError::Exhausted {
            used: 10,
            budget: 10
        })
    );
    assert_eq!(
        ledger.charge(&id("a"), 10),
        Err(LedgerError::Exhausted {
            used: 10,
            budget: 10
        })
    );
    assert_eq!(ledger.used(&id("a")), Ok(10));

    // A batch that would cross the budget is refused whole: no partial
    // charge, and the queries that are left can still be spent.
    assert_eq!(ledger.charge_queries(&id("b"), 7, 10), Ok(7));
    assert_eq!(
        ledger.charge_queries(&id("b"), 4, 10),
        Err(LedgerError::Exhausted {
            used: 7,
            budget: 10
        })
    );
    assert_eq!(ledger.used(&id("b")), Ok(7));
    assert_eq!(ledger.charge(&id("b"), 10), Ok(8));
    assert_eq!(ledger.charge_queries(&id("b"), 2, 10), Ok(10));

    // A first batch larger than the whole budget creates no count.
    assert_eq!(
        ledger.charge_queries(&id("c"), 11, 10),
        Err(LedgerError::Exhausted {
            used: 0,
            budget: 10
        })
    );
    assert_eq!(ledger.used(&id("c")), Ok(0));
    assert_eq!(ledger.charge_queries(&id("c"), 10, 10), Ok(10));

    // Budget 0 refuses every batch, and reports the real count.
    assert_eq!(
        ledger.charge_queries(&id("d"), 1, 0),
        Err(LedgerError::Exhausted { used: 0, budget: 0 })
    );
    assert_eq!(
        ledger.charge_queries(&id("b"), 3, 0),
        Err(LedgerError::Exhausted {
            used: 10,
            budget: 0
        })
    );

    // Zero queries is the caller's mistake, whatever the budget and the
    // count, and charges nothing.
    for (who, budget) in [("e", 10), ("e", 0), ("e", u64::MAX), ("a", 10), ("b", 20)] {
        assert_eq!(
            ledger.charge_queries(&id(who), 0, budget),
            Err(LedgerError::ZeroQueries),
            "{who} {budget}"
        );
    }
    assert_eq!(ledger.used(&id("e")), Ok(0));
    assert_eq!(ledger.used(&id("a")), Ok(10));
    assert_eq!(ledger.used(&id("b")), Ok(10));

    // A larger budget (a new policy) lets a batch go on from the count.
    assert_eq!(ledger.charge_queries(&id("a"), 5, 15), Ok(15));
}

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
    charges_batches_whole_or_not_at_all(&mut MemoryLedger::default());
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

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use safhire::protocol::SqliteLedger;
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

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("safhire-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        Scratch { dir, path }
    }

    // PROTO-8: a restart (closing and reopening the file) keeps every count.
    #[test]
    fn charges_survive_a_restart() {
        let scratch = scratch("restart.db");
        let path = scratch.path.clone();
        {
            let mut ledger = SqliteLedger::open(&path).unwrap();
            for want in 1..=3 {
                assert_eq!(ledger.charge(&id("mallory"), 5), Ok(want));
            }
        }
        let mut reopened = SqliteLedger::open(&path).unwrap();
        assert_eq!(reopened.used(&id("mallory")), Ok(3));
        assert_eq!(drain(&mut reopened, &id("mallory"), 5), 2);
        assert!(matches!(
            reopened.charge(&id("mallory"), 5),
            Err(LedgerError::Exhausted { used: 5, budget: 5 })
        ));
        assert_eq!(reopened.charge(&id("mallory "), 5), Ok(1));
    }

    // PROTO-8: four threads, each with its own connection (as separate
    // endpoints or processes would have), race to charge one identity 50
    // times each against a budget of 120: exactly 120 charges succeed.
    #[test]
    fn concurrent_endpoints_never_spend_the_same_unit() {
        let scratch = scratch("race.db");
        let path = scratch.path.clone();
        SqliteLedger::open(&path).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut ledger = SqliteLedger::open(&path).unwrap();
                    (0..50)
                        .filter(|_| ledger.charge(&id("eve"), 120).is_ok())
                        .count()
                })
            })
            .collect();
        let charged: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(charged, 120);
        assert_eq!(SqliteLedger::open(&path).unwrap().used(&id("eve")), Ok(120));
    }

    // PROTO-8: batches on the SQLite ledger, also after a restart.
    #[test]
    fn charges_batches_whole_or_not_at_all() {
        let scratch = scratch("batches.db");
        super::charges_batches_whole_or_not_at_all(&mut SqliteLedger::open(&scratch.path).unwrap());
        let mut reopened = SqliteLedger::open(&scratch.path).unwrap();
        assert_eq!(reopened.used(&id("a")), Ok(15));
        assert_eq!(
            reopened.charge_queries(&id("b"), 2, 11),
            Err(LedgerError::Exhausted {
                used: 10,
                budget: 11
            })
        );
        assert_eq!(reopened.charge_queries(&id("b"), 1, 11), Ok(11));
    }

    // PROTO-8: counts are signed 64-bit in the file, so a budget above
    // i64::MAX acts as i64::MAX; a batch whose sum with the count would
    // pass it is refused with no charge (never wrapped, never a storage
    // error), however close the count is to the limit.
    #[test]
    fn budgets_near_u64_max_never_overflow() {
        let scratch = scratch("limits.db");
        let mut ledger = SqliteLedger::open(&scratch.path).unwrap();
        let (max, top) = (u64::MAX, i64::MAX as u64);
        for (queries, budget) in [(max, max), (top + 1, max), (top + 1, top + 1), (11, 10)] {
            assert_eq!(
                ledger.charge_queries(&id("x"), queries, budget),
                Err(LedgerError::Exhausted { used: 0, budget }),
                "{queries} of {budget}"
            );
        }
        assert_eq!(ledger.used(&id("x")), Ok(0));
        assert_eq!(ledger.charge_queries(&id("x"), top - 1, max), Ok(top - 1));
        // Near the limit: `used + queries` would overflow i64 for these.
        for queries in [2, top - 1, top, top + 1, max] {
            assert_eq!(
                ledger.charge_queries(&id("x"), queries, max),
                Err(LedgerError::Exhausted {
                    used: top - 1,
                    budget: max
                }),
                "{queries}"
            );
        }
        assert_eq!(ledger.used(&id("x")), Ok(top - 1));
        assert_eq!(ledger.charge(&id("x"), max), Ok(top));
        assert_eq!(
            ledger.charge(&id("x"), max),
            Err(LedgerError::Exhausted {
                used: top,
                budget: max
            })
        );
        assert_eq!(ledger.used(&id("x")), Ok(top));
        // The whole largest budget in one batch, exactly at the limit.
        assert_eq!(ledger.charge_queries(&id("y"), top, top), Ok(top));
        assert_eq!(ledger.charge_queries(&id("z"), top, max), Ok(top));
        assert_eq!(
            SqliteLedger::open(&scratch.path).unwrap().used(&id("z")),
            Ok(top)
        );
    }

    // PROTO-8 with batches: four threads, each with its own connection,
    // charge one identity batches of 1, 2, 3 and 7 queries until refused,
    // against a budget of 200. The count never passes the budget, every
    // refusal left too few queries for its batch, the queries of the
    // successful batches sum to the final count (no double spending, no
    // partial charge), and the thread of single queries drains it exactly.
    #[test]
    fn concurrent_batches_never_exceed_the_budget() {
        use std::sync::{Arc, Barrier};
        const BUDGET: u64 = 200;
        const BATCHES: [u64; 4] = [1, 2, 3, 7];
        let scratch = scratch("batch-race.db");
        let path = scratch.path.clone();
        SqliteLedger::open(&path).unwrap();
        let start = Arc::new(Barrier::new(BATCHES.len()));
        let threads: Vec<_> = BATCHES
            .into_iter()
            .map(|k| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut ledger = SqliteLedger::open(&path).unwrap();
                    start.wait();
                    let mut charged = 0;
                    loop {
                        match ledger.charge_queries(&id("eve"), k, BUDGET) {
                            Ok(after) => {
                                assert!((k..=BUDGET).contains(&after), "{k}: count {after}");
                                charged += k;
                                assert!(charged <= BUDGET, "charged past the budget");
                            }
                            Err(LedgerError::Exhausted { used, budget }) => {
                                assert_eq!(budget, BUDGET);
                                assert!(used <= BUDGET && used + k > BUDGET, "{k}: {used}");
                                return charged;
                            }
                            Err(e) => panic!("charge failed: {e}"),
                        }
                    }
                })
            })
            .collect();
        let charged: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(charged, BUDGET);
        assert_eq!(
            SqliteLedger::open(&path).unwrap().used(&id("eve")),
            Ok(BUDGET)
        );
    }

    // PROTO-8 through the protocol: an endpoint restarted on the same file
    // refuses an identity that spent its budget before the restart.
    #[test]
    fn an_endpoint_restarted_on_the_ledger_keeps_the_budget() {
        use safhire::engine;
        use safhire::model::Model;
        use safhire::params::ParameterSet;
        use safhire::protocol::{Client, Endpoint, ErrorKind, Fault, Policy};
        use safhire::rlwe::Context;
        use std::sync::Arc;
        let scratch = scratch("endpoint.db");
        let path = scratch.path.clone();
        let ctx = Arc::new(Context::new(ParameterSet::shipped("b16").unwrap()));
        let model = Model::from_json(include_str!("../models/digits-cnn.json")).unwrap();
        let compiled = Arc::new(engine::compile(&ctx, &model).unwrap());
        let start = || {
            Endpoint::new(
                ctx.clone(),
                compiled.clone(),
                Policy::shipped("default").unwrap(),
            )
            .unwrap()
            .with_ledger(Box::new(SqliteLedger::open(&path).unwrap()))
        };
        let budget = Policy::shipped("default").unwrap().query_budget();
        let who = id("alice");
        {
            let mut server = start();
            for _ in 0..budget {
                let (_, request) = Client::start(ctx.clone());
                server.accept(&who, request).unwrap();
            }
        }
        let mut restarted = start();
        assert_eq!(restarted.queries_used(&who).unwrap(), budget);
        let (_, request) = Client::start(ctx.clone());
        let err = restarted.accept(&who, request).unwrap_err();
        assert_eq!(err.fault, Fault::Peer);
        assert!(matches!(err.kind, ErrorKind::BudgetExhausted { .. }));
    }
}
