//! Batching policies (issue 15, item 3): the adaptive policy never makes a
//! lone request wait for company, and batches still form under load; the
//! fixed policy keeps the seed's window. Thread and process servlets alike.

mod support;

use std::time::{Duration, Instant};

use mpserver::prelude::*;
use mpserver::{Batching, BoxServlet, Worker, WorkerError};
use serde::{Deserialize, Serialize};
use support::{SquareBatch, check_square_batches};

/// Batched: each batch takes `ms` milliseconds whatever its size (a stand-in
/// for a model's per-batch overhead); returns `(x, batch length)`.
#[derive(Clone, Serialize, Deserialize)]
struct SlowBatch {
    ms: u64,
}

impl Worker for SlowBatch {
    type Input = i64;
    type Output = (i64, usize);
    fn call(&mut self, x: i64) -> Result<(i64, usize), WorkerError> {
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok((x, 1))
    }
    fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<(i64, usize), WorkerError>> {
        std::thread::sleep(Duration::from_millis(self.ms));
        let n = xs.len();
        xs.into_iter().map(|x| Ok((x, n))).collect()
    }
}

type Flow = BoxServlet<i64, (i64, usize)>;

/// The same batched worker as a thread servlet and as a process servlet.
fn both<W>(
    w: W,
    f: impl Fn(ThreadServlet<W>) -> ThreadServlet<W>,
    g: impl Fn(ProcessServlet<W>) -> ProcessServlet<W>,
) -> Vec<(&'static str, Flow)>
where
    W: Worker<Input = i64, Output = (i64, usize)> + Clone + Serialize + serde::de::DeserializeOwned,
{
    vec![
        ("thread", Box::new(f(ThreadServlet::new(w.clone())))),
        ("process", Box::new(g(ProcessServlet::new(w)))),
    ]
}

/// Submits `n` items at once and returns each one's `(x, batch length)`.
fn burst(server: &Server<i64, (i64, usize)>, n: i64) -> Vec<(i64, usize)> {
    let pending: Vec<_> = (0..n)
        .map(|i| server.submit(i, CallOptions::default()).unwrap())
        .collect();
    pending.into_iter().map(|p| p.wait().unwrap()).collect()
}

/// Number of batches larger than one, from the batch length each item saw.
fn batches_over_one(out: &[(i64, usize)]) -> usize {
    let mut by_size = std::collections::BTreeMap::<usize, usize>::new();
    for (_, n) in out {
        *by_size.entry(*n).or_default() += 1;
    }
    by_size
        .iter()
        .filter(|(n, _)| **n > 1)
        .map(|(n, items)| items.div_ceil(*n))
        .sum()
}

#[test]
fn a_lone_request_on_an_idle_adaptive_servlet_does_not_wait_the_window() {
    let window = Duration::from_secs(2);
    for (kind, flow) in both(
        SquareBatch,
        |s| {
            s.batch_size(64)
                .batching(Batching::Adaptive)
                .batch_wait_time(window)
        },
        |s| {
            s.batch_size(64)
                .batching(Batching::Adaptive)
                .batch_wait_time(window)
        },
    ) {
        let server = Server::start(flow).unwrap();
        for i in 0..3 {
            let t = Instant::now();
            assert_eq!(server.call(i).unwrap(), (i * i, 1), "{kind}");
            let took = t.elapsed();
            assert!(took < window / 2, "{kind}: a lone item took {took:?}");
        }
    }
}

#[test]
fn adaptive_is_the_default_without_a_wait_and_an_idle_worker_after_a_burst_does_not_wait() {
    for (kind, flow) in both(
        SlowBatch { ms: 20 },
        |s| s.batch_size(16),
        |s| s.batch_size(16),
    ) {
        let server = Server::start(flow).unwrap();
        let out = burst(&server, 60);
        assert_eq!(
            out.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
            (0..60).collect::<Vec<_>>()
        );
        // Under a burst, batches do form (the worker is busy while items queue).
        let largest = out.iter().map(|(_, n)| *n).max().unwrap();
        assert!(largest > 1, "{kind}: batch sizes {out:?}");
        assert!(
            out.iter().all(|(_, n)| (1..=16).contains(n)),
            "{kind}: {out:?}"
        );
        let snap = server.servlets();
        assert!(
            snap.batches < 60,
            "{kind}: {} batches for 60 items",
            snap.batches
        );
        // The worker is idle again: a lone item goes at once, alone. The
        // default window (10 ms) is too short to tell from a loaded
        // machine's noise; a batch of one shows that nothing was waited for
        // (another item follows 200 ms later, so a window would have
        // caught it only if it waited that long).
        let a = server.submit(100, CallOptions::default()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let b = server.submit(101, CallOptions::default()).unwrap();
        assert_eq!(a.wait().unwrap(), (100, 1), "{kind}");
        assert_eq!(b.wait().unwrap(), (101, 1), "{kind}");
    }
}

#[test]
fn the_fixed_policy_waits_its_window_as_the_seed_says() {
    let window = Duration::from_millis(300);
    for (kind, flow) in both(
        SquareBatch,
        |s| s.batch_size(64).batch_wait_time(window),
        |s| s.batch_size(64).batch_wait_time(window),
    ) {
        let server = Server::start(flow).unwrap();
        let t = Instant::now();
        assert_eq!(server.call(3).unwrap(), (9, 1), "{kind}");
        let waited = t.elapsed();
        assert!(waited >= window, "{kind}: {waited:?}");
        // Items arriving within the window join the batch.
        let a = server.submit(1, CallOptions::default()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let b = server.submit(2, CallOptions::default()).unwrap();
        assert_eq!(a.wait().unwrap(), (1, 2), "{kind}");
        assert_eq!(b.wait().unwrap(), (4, 2), "{kind}");
    }
    // Chosen explicitly, without a wait: the seed's default 10 ms window.
    for (kind, flow) in both(
        SquareBatch,
        |s| s.batch_size(64).batching(Batching::Fixed),
        |s| s.batch_size(64).batching(Batching::Fixed),
    ) {
        let server = Server::start(flow).unwrap();
        let t = Instant::now();
        assert_eq!(server.call(3).unwrap(), (9, 1), "{kind}");
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(10), "{kind}: {waited:?}");
    }
}

#[test]
fn a_latency_target_below_the_batch_overhead_keeps_batches_to_one_item() {
    // Each batch takes 20 ms; a 1 ms target leaves room for one item once
    // the worker's service time is measured (its first batch or two).
    for (kind, flow) in both(
        SlowBatch { ms: 20 },
        |s| {
            s.batch_size(16)
                .batch_latency_target(Duration::from_millis(1))
        },
        |s| {
            s.batch_size(16)
                .batch_latency_target(Duration::from_millis(1))
        },
    ) {
        let server = Server::start(flow).unwrap();
        let out = burst(&server, 30);
        assert!(batches_over_one(&out) <= 2, "{kind}: {out:?}");
    }
    // Without the target the same burst is served in larger batches.
    let server = Server::start(ThreadServlet::new(SlowBatch { ms: 20 }).batch_size(16)).unwrap();
    let out = burst(&server, 30);
    assert!(batches_over_one(&out) >= 1, "{out:?}");
}

#[test]
fn errors_stay_per_item_under_the_adaptive_policy() {
    for (kind, flow) in both(SquareBatch, |s| s.batch_size(8), |s| s.batch_size(8)) {
        let server = Server::start(flow).unwrap();
        let data: Vec<i64> = (0..100).map(|i| if i % 30 == 7 { -1 } else { i }).collect();
        check_square_batches(&server, &data, 8, kind);
    }
}
