//! The contract every SQL query ledger keeps (PROTO-5, PROTO-8, PROTO-9):
//! one function a check, run by a thin `#[test]` in each backend's test
//! file (`tests/ledger.rs` for SQLite, `tests/ledger_postgres.rs` for
//! PostgreSQL) with that backend's [`Open`]. A check added here runs on
//! every SQL ledger. Included with `#[path]` by those files only.
//!
//! Each call of the opener is a new connection to the same ledger (the
//! same file, the same database): another server, or the same server
//! after a restart. Counts are signed 64-bit in both, so a budget above
//! `i64::MAX` acts as `i64::MAX`.

#![allow(dead_code)]

use safhire::protocol::{ClientId, Ledger, LedgerError};
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// Opens a new connection to the ledger under test; callable from many
/// threads at once.
pub type Open<'a> = &'a (dyn Fn() -> Box<dyn Ledger> + Sync);

pub fn id(name: &str) -> ClientId {
    ClientId(name.into())
}

/// Charges `ledger` until it refuses; returns how many charges it took.
pub fn drain(ledger: &mut dyn Ledger, who: &ClientId, budget: u64) -> u64 {
    let mut n = 0;
    while ledger.charge(who, budget).is_ok() {
        n += 1;
        assert!(n <= budget, "charged past the budget");
    }
    n
}

/// PROTO-8, PROTO-9: up to the budget, then a refusal that is the
/// client's; budget 0 refuses the first session.
pub fn charges_up_to_the_budget_then_refuses(open: Open) {
    let mut ledger = open();
    assert_eq!(ledger.used(&id("alice")), Ok(0));
    for want in 1..=3 {
        assert_eq!(ledger.charge(&id("alice"), 3), Ok(want));
    }
    assert_eq!(
        ledger.charge(&id("alice"), 3),
        Err(LedgerError::Exhausted { used: 3, budget: 3 })
    );
    // A refusal charges nothing.
    assert_eq!(ledger.used(&id("alice")), Ok(3));
    // A larger budget (a new policy) lets the same identity go on.
    assert_eq!(ledger.charge(&id("alice"), 4), Ok(4));
    assert_eq!(
        ledger.charge(&id("bob"), 0),
        Err(LedgerError::Exhausted { used: 0, budget: 0 })
    );
    assert_eq!(ledger.used(&id("bob")), Ok(0));
    assert_eq!(ledger.charge(&id("bob"), u64::MAX), Ok(1));
}

/// PROTO-8 with batches, on any ledger (the memory ledger too): a session
/// of k images is charged k queries at once, up to exactly the budget, and
/// a charge that would cross it, or of zero queries, charges nothing.
/// Leaves "a" at 10, "b" at 10, "c" at 10 and "e" uncharged.
pub fn charges_batches_on_one_ledger(ledger: &mut dyn Ledger) {
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
}

/// PROTO-8, PROTO-9 with batches: [`charges_batches_on_one_ledger`], then
/// another connection sees the batches and a larger budget (a new policy)
/// lets one go on from the count, seen by the first; a connection opened
/// after both are closed (a restart) keeps every count.
pub fn charges_batches_whole_or_not_at_all(open: Open) {
    let mut ledger = open();
    charges_batches_on_one_ledger(&mut *ledger);
    let mut other = open();
    assert_eq!(other.used(&id("b")), Ok(10));
    assert_eq!(other.charge_queries(&id("a"), 5, 15), Ok(15));
    assert_eq!(ledger.used(&id("a")), Ok(15));
    drop((ledger, other));

    let mut reopened = open();
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

/// PROTO-8, PROTO-9: counts are signed 64-bit (SQLite's INTEGER,
/// PostgreSQL's `bigint`), so a budget above i64::MAX acts as i64::MAX; a
/// batch whose sum with the count would pass it is refused with no charge
/// (never wrapped, never a storage error such as `bigint out of range`),
/// however close the count is to the limit.
pub fn budgets_near_u64_max_never_overflow(open: Open) {
    let mut ledger = open();
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
    assert_eq!(open().used(&id("z")), Ok(top));
}

/// PROTO-5, PROTO-8, PROTO-9: identities are compared byte for byte, each
/// with its own count.
pub fn distinct_identities_are_independent(open: Open) {
    let mut ledger = open();
    // Case, trailing space, Unicode normalisation and NUL all distinguish.
    let names = ["a", "A", "a ", "é", "e\u{301}", "a\0b", "a\0c", ""];
    for (i, name) in names.iter().enumerate() {
        let budget = i as u64 + 1;
        assert_eq!(drain(&mut *ledger, &id(name), budget), budget, "{name:?}");
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(ledger.used(&id(name)), Ok(i as u64 + 1), "{name:?}");
    }
    assert_eq!(ledger.used(&id("nobody")), Ok(0));
}

/// PROTO-8, PROTO-9: a restart (closing the ledger and opening it again)
/// keeps every count.
pub fn charges_survive_a_restart(open: Open) {
    {
        let mut ledger = open();
        for want in 1..=3 {
            assert_eq!(ledger.charge(&id("mallory"), 5), Ok(want));
        }
    }
    let mut reopened = open();
    assert_eq!(reopened.used(&id("mallory")), Ok(3));
    assert_eq!(drain(&mut *reopened, &id("mallory"), 5), 2);
    assert!(matches!(
        reopened.charge(&id("mallory"), 5),
        Err(LedgerError::Exhausted { used: 5, budget: 5 })
    ));
    assert_eq!(reopened.charge(&id("mallory "), 5), Ok(1));
}

/// PROTO-8, PROTO-9: two ledgers on two connections (two servers) share
/// one count per identity.
pub fn two_ledgers_share_the_counts(open: Open) {
    let (mut first, mut second) = (open(), open());
    assert_eq!(first.charge(&id("carol"), 4), Ok(1));
    assert_eq!(second.charge(&id("carol"), 4), Ok(2));
    assert_eq!(first.charge(&id("carol"), 4), Ok(3));
    assert_eq!(second.used(&id("carol")), Ok(3));
    assert_eq!(second.charge(&id("carol"), 4), Ok(4));
    assert_eq!(
        first.charge(&id("carol"), 4),
        Err(LedgerError::Exhausted { used: 4, budget: 4 })
    );
    assert_eq!(first.used(&id("dave")), Ok(0));
    assert_eq!(second.charge(&id("dave"), 4), Ok(1));
    assert_eq!(first.used(&id("dave")), Ok(1));
}

/// The shape of a race of [`concurrent_charges_never_exceed_the_budget`].
pub struct ChargeRace {
    pub threads: usize,
    /// Connections of each thread's own (each a server), used in turn.
    pub connections: usize,
    /// Charges of each identity by each thread.
    pub tries: usize,
    pub budget: u64,
    /// Whether the threads connect at once to a ledger never opened before
    /// (so they also race to make its table), or to one opened first.
    pub fresh: bool,
}

/// PROTO-8, PROTO-9: threads, each with connections of its own (as
/// separate servers or processes would have), start together and race to
/// charge the same new identity against `budget`: exactly `budget` charges
/// succeed, every refusal is `Exhausted` at the budget, and the stored
/// count is the budget. A second identity charged in the same race (with
/// a budget it cannot reach) is unaffected.
pub fn concurrent_charges_never_exceed_the_budget(open: Open, race: ChargeRace) {
    let ChargeRace {
        threads,
        connections,
        tries,
        budget: limit,
        fresh,
    } = race;
    if !fresh {
        drop(open());
    }
    const BYSTANDER_BUDGET: u64 = 1_000;
    assert!(((threads * tries) as u64) < BYSTANDER_BUDGET);
    let start = Arc::new(Barrier::new(threads));
    let t = Instant::now();
    let (charged, others) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let start = start.clone();
                s.spawn(move || {
                    start.wait();
                    let mut ledgers: Vec<_> = (0..connections).map(|_| open()).collect();
                    start.wait();
                    let (mut charged, mut others) = (0u64, 0u64);
                    for k in 0..tries {
                        let ledger = &mut ledgers[(i + k) % connections];
                        match ledger.charge(&id("eve"), limit) {
                            Ok(used) => {
                                assert!((1..=limit).contains(&used), "count {used}");
                                charged += 1;
                            }
                            Err(LedgerError::Exhausted { used, budget }) => {
                                assert_eq!((used, budget), (limit, limit));
                            }
                            Err(e) => panic!("charge failed: {e}"),
                        }
                        if ledger.charge(&id("frank"), BYSTANDER_BUDGET).is_ok() {
                            others += 1;
                        }
                    }
                    (charged, others)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(c, o), (dc, d_o)| (c + dc, o + d_o))
    });
    eprintln!(
        "{} charges of two identities from {threads} threads x {connections} connections in {:.2?}",
        2 * threads * tries,
        t.elapsed()
    );
    assert_eq!(charged, limit, "successful charges");
    assert_eq!(others, (threads * tries) as u64);
    let ledger = open();
    assert_eq!(ledger.used(&id("eve")), Ok(limit));
    assert_eq!(ledger.used(&id("frank")), Ok((threads * tries) as u64));
}

/// PROTO-8, PROTO-9 with batches: one thread a size in `batches`, each
/// with `connections` of its own (used in turn), opened before the race
/// on a ledger whose table exists, race to charge one identity batches of
/// their size until refused, against `budget`. The count never passes the
/// budget, every refusal left too few queries for its batch, the queries
/// of the successful batches sum to the stored count (no double spending,
/// no partial charge), and the thread of single queries (a size of 1
/// among `batches`) drains it exactly.
pub fn concurrent_batches_never_exceed_the_budget(
    open: Open,
    batches: &[u64],
    connections: usize,
    budget: u64,
) {
    assert!(batches.contains(&1), "no thread of single queries");
    let limit = budget;
    // Made before the race: this check is about the charges, not the schema.
    drop(open());
    let start = Arc::new(Barrier::new(batches.len()));
    let t = Instant::now();
    let (charged, calls) = std::thread::scope(|s| {
        let handles: Vec<_> = batches
            .iter()
            .copied()
            .enumerate()
            .map(|(i, k)| {
                let start = start.clone();
                s.spawn(move || {
                    let mut ledgers: Vec<_> = (0..connections).map(|_| open()).collect();
                    start.wait();
                    let (mut charged, mut calls) = (0u64, 0usize);
                    loop {
                        let ledger = &mut ledgers[(i + calls) % connections];
                        calls += 1;
                        match ledger.charge_queries(&id("eve"), k, limit) {
                            Ok(after) => {
                                assert!((k..=limit).contains(&after), "{k}: count {after}");
                                charged += k;
                                assert!(charged <= limit, "charged past the budget");
                            }
                            Err(LedgerError::Exhausted { used, budget }) => {
                                assert_eq!(budget, limit);
                                assert!(used <= limit && used + k > limit, "{k}: {used}");
                                return (charged, calls);
                            }
                            Err(e) => panic!("charge failed: {e}"),
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(c, n), (dc, dn)| (c + dc, n + dn))
    });
    eprintln!(
        "{calls} batch charges from {} threads x {connections} connections in {:.2?}",
        batches.len(),
        t.elapsed()
    );
    assert_eq!(charged, limit, "queries of the successful batches");
    assert_eq!(open().used(&id("eve")), Ok(limit));
}

/// PROTO-8, PROTO-9 through the protocol: an endpoint restarted on the same
/// ledger refuses, as the peer's fault, an identity that spent its budget
/// before the restart.
pub fn an_endpoint_restarted_on_the_ledger_keeps_the_budget(open: Open) {
    use safhire::engine;
    use safhire::model::Model;
    use safhire::params::ParameterSet;
    use safhire::protocol::{Client, Endpoint, ErrorKind, Fault, Policy};
    use safhire::rlwe::Context;
    let ctx = Arc::new(Context::new(ParameterSet::shipped("b16").unwrap()));
    let model = Model::from_json(include_str!("../../models/digits-cnn.json")).unwrap();
    let compiled = Arc::new(engine::compile(&ctx, &model).unwrap());
    let start = || {
        Endpoint::new(
            ctx.clone(),
            compiled.clone(),
            Policy::shipped("default").unwrap(),
        )
        .unwrap()
        .with_ledger(open())
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
