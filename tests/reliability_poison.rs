//! Promise 9: poison items and recycling. An item that crashes workers again
//! and again is failed as poison (with `retry_crashed`) instead of cycling, or
//! fails with `WorkerCrashed` (without); workers are recycled after N items or
//! above a memory ceiling without failing any request.

mod reliability_support;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use mpserver::{Error, ProcessServlet, RestartPolicy, Server};
use reliability_support::*;
use support::restart::submit_poison_among_bystanders;

fn retrying() -> RestartPolicy {
    eager_restarts().retry_crashed(true)
}

/// With retries on, the poison item crashes its worker twice (the default
/// threshold) and fails as `PoisonItem`; the innocent items that were in the
/// same worker when it crashed are retried one at a time and succeed.
#[test]
fn poison_item_is_failed_as_poison_and_bystanders_survive() {
    let servlet = ProcessServlet::new(Chaos::new().sleep_us(2000))
        .name("poisoned")
        .restart_policy(retrying());
    let server = Server::builder(servlet).capacity(64).start().unwrap();
    let (pending, poison) = submit_poison_among_bystanders(&server, Op::Echo, Op::Abort);
    match poison.wait() {
        Err(Error::PoisonItem(p)) => {
            assert_eq!(p.crashes, 2);
            assert!(p.last.how.contains("SIGABRT"), "{}", p.last.how);
            assert_eq!(p.last.worker.name, "poisoned");
        }
        other => panic!("expected PoisonItem, got {other:?}"),
    }
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap().0, 2 * i as i64, "item {i}");
    }
    assert_eq!(
        server.servlets().crashes,
        2,
        "the poison item crashed exactly twice"
    );
    assert!(server.is_ready());
}

/// A higher threshold allows more attempts.
#[test]
fn poison_threshold_is_honoured() {
    let policy = retrying().poison_threshold(3);
    let server = Server::start(ProcessServlet::new(Chaos::new()).restart_policy(policy)).unwrap();
    match server.call(Op::Segv) {
        Err(Error::PoisonItem(p)) => assert_eq!(p.crashes, 3),
        other => panic!("expected PoisonItem, got {other:?}"),
    }
    assert_eq!(server.servlets().crashes, 3);
    assert_eq!(server.call(Op::Echo(4)).unwrap().0, 8);
}

/// Without retries (the default), the item that crashed the worker fails with
/// `WorkerCrashed` and is not tried again.
#[test]
fn without_retry_a_crashing_item_fails_once_as_crashed() {
    let log = temp_path("noretry");
    let server =
        Server::start(ProcessServlet::new(Chaos::new().log(&log)).restart_policy(eager_restarts()))
            .unwrap();
    match server.call(Op::Abort) {
        Err(Error::WorkerCrashed(c)) => assert!(c.how.contains("SIGABRT"), "{}", c.how),
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
    assert_eq!(count_lines(&log), 2, "the crashing item ran once");
    assert_eq!(server.servlets().crashes, 1);
    let _ = std::fs::remove_file(&log);
}

/// `recycle_after(5)`: each process is replaced after five items; no request
/// fails and no crash is counted.
#[test]
fn recycling_after_n_items_fails_nothing() {
    let servlet = ProcessServlet::new(Chaos::new().sleep_us(200))
        .workers(2)
        .recycle_after(5);
    let server = Server::builder(servlet).capacity(64).start().unwrap();
    let first: HashSet<u32> = server.worker_pids().into_iter().collect();
    let mut pids = HashSet::new();
    let out: Vec<_> = server.stream((0..60).map(Op::Echo)).collect();
    for (i, r) in out.into_iter().enumerate() {
        let (y, pid) = r.unwrap_or_else(|e| panic!("item {i}: {e}"));
        assert_eq!(y, 2 * i as i64);
        pids.insert(pid);
    }
    // 60 items, at most 5 per process: at least 12 processes served.
    assert!(pids.len() >= 12, "{} processes served", pids.len());
    let snap = server.servlets();
    assert_eq!(snap.crashes, 0);
    assert!(snap.restarts >= 10, "{} restarts", snap.restarts);
    assert!(wait_until(Duration::from_secs(5), || {
        let now: HashSet<u32> = server.worker_pids().into_iter().collect();
        now.len() == 2 && now.is_disjoint(&first)
    }));
    assert_eq!(server.request_stats().ok, 60);
}

/// `recycle_above_memory`: a worker that leaks 4 MiB per item is replaced
/// once its resident memory passes the ceiling; no request fails.
#[test]
fn recycling_above_memory_ceiling_fails_nothing() {
    let servlet = ProcessServlet::new(Chaos::new())
        .max_inflight(2)
        .recycle_above_memory(48 << 20);
    let server = Server::start(servlet).unwrap();
    let mut pids = HashSet::new();
    for i in 0..40 {
        let (y, pid) = server.call(Op::Leak(i, 4)).unwrap();
        assert_eq!(y, 2 * i);
        pids.insert(pid);
    }
    // 160 MiB leaked in total with a 48 MiB ceiling.
    assert!(pids.len() >= 3, "{} processes served", pids.len());
    let snap = server.servlets();
    assert_eq!(snap.crashes, 0);
    assert!(snap.restarts >= 2);
}
