//! Parallelism on the server (ENG-8, issue 9): the loops over independent
//! ciphertexts and packing-tree nodes run on a rayon pool, and a work/span
//! profile of those loops can be taken to project the scaling past the
//! cores a machine has.
//!
//! **Which pool.** Every parallel loop of the crate runs on the rayon pool
//! of the calling thread: rayon's *global* pool (one thread per core, or
//! `RAYON_NUM_THREADS`), unless the caller runs it inside a local pool's
//! `install` (as `safhire bench --threads N` does). Concurrent sessions of
//! one process therefore share one pool: a session's thread that calls
//! [`RoundEvaluator::evaluate`](crate::engine::RoundEvaluator::evaluate) hands its loops to
//! the pool and sleeps until they are done, so N sessions keep at most
//! `pool size` threads busy, never N × cores (no oversubscription). A
//! caller on an async runtime should call the engine from a blocking task
//! (its thread only waits).
//!
//! **Determinism.** Results never depend on the number of threads or on the
//! schedule: each task computes a value of its own (an output ciphertext, a
//! tree node, an image of a source) with the same arithmetic in the same
//! order as a sequential loop, and results are collected in index order. A
//! task that needs secret randomness gets its own
//! [`Csprng`](crate::rng::Csprng) seeded from the parent generator, the
//! seeds drawn sequentially before the loop; no generator is shared between
//! tasks.
//!
//! **Profile.** [`profile_on_one_thread`] runs a computation on a fresh
//! one-thread pool and records, for each outermost parallel loop (a
//! *region*), its work W (the time it took on that one thread) and its span
//! S (the longest chain of tasks that must run one after the other: a
//! task's own time plus the spans of the loops nested in it). With P
//! threads a region takes at least max(W/P, S) and, greedily scheduled, at
//! most W/P + S (Brent); time outside regions does not shrink at all.

use rayon::prelude::*;
use std::cell::RefCell;
use std::time::Instant;

/// One outermost parallel loop as measured on one thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegionCost {
    /// Tasks the loop ran.
    pub tasks: usize,
    /// Its time on one thread: the sum of its tasks.
    pub work_ms: f64,
    /// Its critical path: the longest task, counting the loops nested in a
    /// task by their own spans.
    pub span_ms: f64,
}

/// The parallel regions of a computation run on one thread.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkProfile {
    /// Each outermost parallel loop, in the order it ran (nested loops are
    /// folded into their region's span, not listed).
    pub regions: Vec<RegionCost>,
    /// Tasks run, those of nested loops included.
    pub tasks: usize,
}

impl WorkProfile {
    /// Time spent in parallel regions (on one thread).
    pub fn work_ms(&self) -> f64 {
        self.regions.iter().map(|r| r.work_ms).sum()
    }

    /// The regions' critical paths, summed (regions run one after another).
    pub fn span_ms(&self) -> f64 {
        self.regions.iter().map(|r| r.span_ms).sum()
    }

    /// The regions' time on `threads` threads with perfect load balance and
    /// no contention: Σ max(W/P, S), a lower bound.
    pub fn ideal_ms(&self, threads: usize) -> f64 {
        let p = threads.max(1) as f64;
        self.regions
            .iter()
            .map(|r| (r.work_ms / p).max(r.span_ms))
            .sum()
    }

    /// Brent's bound for a greedy schedule on `threads` threads: Σ (W/P + S).
    pub fn greedy_bound_ms(&self, threads: usize) -> f64 {
        let p = threads.max(1) as f64;
        self.regions.iter().map(|r| r.work_ms / p + r.span_ms).sum()
    }
}

enum Frame {
    Region {
        start: Instant,
        tasks: usize,
        max_span: f64,
    },
    Task {
        start: Instant,
        nested_wall: f64,
        nested_span: f64,
    },
}

#[derive(Default)]
struct Profiler {
    stack: Vec<Frame>,
    done: Vec<RegionCost>,
    tasks: usize,
}

thread_local! {
    static PROFILER: RefCell<Option<Profiler>> = const { RefCell::new(None) };
}

fn profiling() -> bool {
    PROFILER.with(|p| p.borrow().is_some())
}

fn push(frame: Frame) {
    PROFILER.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.stack.push(frame);
        }
    });
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A parallel loop: records its work and span when profiling.
fn region<R>(f: impl FnOnce() -> R) -> R {
    if !profiling() {
        return f();
    }
    push(Frame::Region {
        start: Instant::now(),
        tasks: 0,
        max_span: 0.0,
    });
    let out = f();
    PROFILER.with(|p| {
        let mut guard = p.borrow_mut();
        let Some(p) = guard.as_mut() else { return };
        let Some(Frame::Region {
            start,
            tasks,
            max_span,
        }) = p.stack.pop()
        else {
            return;
        };
        let wall = ms_since(start);
        match p.stack.last_mut() {
            Some(Frame::Task {
                nested_wall,
                nested_span,
                ..
            }) => {
                *nested_wall += wall;
                *nested_span += max_span;
            }
            // A loop inside a loop's own code (not inside one of its
            // tasks) lengthens that loop's critical path like a task.
            Some(Frame::Region {
                max_span: outer, ..
            }) => *outer = outer.max(max_span),
            None => p.done.push(RegionCost {
                tasks,
                work_ms: wall,
                span_ms: max_span,
            }),
        }
    });
    out
}

/// One task of a parallel loop: records its span when profiling.
fn task<R>(f: impl FnOnce() -> R) -> R {
    if !profiling() {
        return f();
    }
    push(Frame::Task {
        start: Instant::now(),
        nested_wall: 0.0,
        nested_span: 0.0,
    });
    let out = f();
    PROFILER.with(|p| {
        let mut guard = p.borrow_mut();
        let Some(p) = guard.as_mut() else { return };
        let Some(Frame::Task {
            start,
            nested_wall,
            nested_span,
        }) = p.stack.pop()
        else {
            return;
        };
        let span = (ms_since(start) - nested_wall).max(0.0) + nested_span;
        p.tasks += 1;
        if let Some(Frame::Region {
            tasks, max_span, ..
        }) = p.stack.last_mut()
        {
            *tasks += 1;
            *max_span = max_span.max(span);
        }
    });
    out
}

/// The threads of the pool the caller's loops run on.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// `f` on every item, in parallel; results in item order.
pub(crate) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    region(|| items.par_iter().map(|x| task(|| f(x))).collect())
}

/// `f(i)` for `i` in `0..len`, in parallel; results in index order.
pub(crate) fn map_range<R: Send>(len: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    region(|| (0..len).into_par_iter().map(|i| task(|| f(i))).collect())
}

/// `a` and `b` in parallel (two subtrees).
pub(crate) fn join<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    region(|| rayon::join(|| task(a), || task(b)))
}

/// `f(i, item)` on every item, in parallel, in place.
pub(crate) fn update<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync + Send) {
    region(|| {
        items
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, x)| task(|| f(i, x)))
    })
}

/// Runs `f` on a fresh one-thread rayon pool and profiles its parallel
/// regions (see the module documentation). Only meaningful on one thread:
/// that is why it builds its own pool.
pub fn profile_on_one_thread<R: Send>(
    f: impl FnOnce() -> R + Send,
) -> Result<(R, WorkProfile), rayon::ThreadPoolBuildError> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    Ok(pool.install(|| {
        PROFILER.with(|p| *p.borrow_mut() = Some(Profiler::default()));
        let out = f();
        let profile = PROFILER
            .with(|p| p.borrow_mut().take())
            .map(|p| WorkProfile {
                regions: p.done,
                tasks: p.tasks,
            })
            .unwrap_or_default();
        (out, profile)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(ms: u64) {
        let t = Instant::now();
        while t.elapsed().as_millis() < ms as u128 {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn results_keep_item_order_on_any_pool() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (a, b) = pool.install(|| {
                let a = map(&(0..100u64).collect::<Vec<_>>(), |x| x * x);
                let b = map_range(50, |i| 7 + i as u64);
                (a, b)
            });
            assert_eq!(a, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
            assert_eq!(b, (0..50u64).map(|i| 7 + i).collect::<Vec<_>>());
            let mut v = vec![0usize; 40];
            pool.install(|| update(&mut v, |i, x| *x = 2 * i));
            assert_eq!(v, (0..40).map(|i| 2 * i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn profile_separates_work_from_span() {
        // Two regions: 8 tasks of 5 ms; then 2 tasks, one of which runs a
        // nested loop of 8 tasks of 4 ms. (Loose bounds: the machine may
        // be shared.)
        let ((), p) = profile_on_one_thread(|| {
            map(&[0; 8], |_| spin(5));
            map(&[0, 1], |&k| {
                if k == 1 {
                    map(&[0; 8], |_| spin(4));
                }
            });
        })
        .unwrap();
        assert_eq!(p.regions.len(), 2, "nested loops are not regions");
        let (r0, r1) = (p.regions[0], p.regions[1]);
        assert_eq!((r0.tasks, r1.tasks, p.tasks), (8, 2, 18));
        assert!(r0.work_ms >= 40.0 && r0.span_ms >= 5.0 && r0.span_ms < r0.work_ms / 2.0);
        // The nested loop counts by its span (one of its tasks), not its work.
        assert!(r1.work_ms >= 32.0 && r1.span_ms >= 4.0 && r1.span_ms < r1.work_ms / 2.0);
        assert!(p.ideal_ms(1) >= 72.0);
        assert!(p.ideal_ms(64) < p.work_ms() / 2.0);
        assert!(p.greedy_bound_ms(2) >= p.ideal_ms(2));
        // Outside a profile nothing is recorded.
        assert!(!profiling());
    }
}
