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
