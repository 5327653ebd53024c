//! Promise 1: a worker process that dies (killed from outside, aborted,
//! segfaulted, exited) fails exactly the items it held, with a typed error
//! naming the worker and how it died; queued items go to the restarted worker;
//! restarts back off, a crash loop marks the worker unhealthy, and the server
//! keeps serving.

mod reliability_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mpserver::error::WorkerCrashed;
use mpserver::{CallOptions, Error, ProcessServlet, RestartPolicy, Server, StreamOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reliability_support::*;

fn crashed(e: &Error) -> &WorkerCrashed {
    match e {
        Error::WorkerCrashed(c) => c,
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
}

fn queue_depth(server: &Server<Op, Out>) -> usize {
    server.servlets().queue_depth.unwrap_or(0)
}

/// Kills one of the server's workers (in turn) every `every` until stopped;
/// returns the pids it killed.
fn killer(
    server: &Server<Op, Out>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u32>> {
    let h = server.handle();
    std::thread::spawn(move || {
        let mut killed = Vec::new();
        for k in 0.. {
            std::thread::sleep(every);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let pids = h.worker_pids();
            if let Some(&pid) = pids.get(k % pids.len().max(1))
                && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
            {
                killed.push(pid);
            }
        }
        killed
    })
}

/// Stops the killer and waits until every process it killed has been reaped
/// and replaced. Returns how many it killed.
fn stop_killer(
    server: &Server<Op, Out>,
    killer: std::thread::JoinHandle<Vec<u32>>,
    stop: &AtomicBool,
) -> usize {
    stop.store(true, Ordering::Relaxed);
    let killed = killer.join().unwrap();
    let settled = wait_until(Duration::from_secs(5), || {
        let now = server.worker_pids();
        now.len() == 2 && killed.iter().all(|p| !now.contains(p))
    });
    assert!(settled, "killed workers were replaced");
    killed.len()
}

/// SIGKILL from outside while four items sit in the worker and six wait in the
/// queue: the four fail with `WorkerCrashed` naming the worker, its pid and the
/// signal; the six are served by the restarted process.
#[test]
fn sigkill_fails_exactly_the_inflight_items() {
    let gate = temp_path("gate");
    let servlet = ProcessServlet::new(Chaos::new())
        .name("victim")
        .max_inflight(4)
        .restart_policy(eager_restarts());
    let server = Server::builder(servlet).capacity(64).start().unwrap();
    let pid0 = server.worker_pids()[0];
    let opts = CallOptions::default().timeout(Duration::from_secs(30));
    let mut pending = vec![server.submit(Op::Gate(0, gate.clone()), opts).unwrap()];
    for i in 1..10 {
        pending.push(server.submit(Op::Echo(i), opts).unwrap());
    }
    // Four items went to the worker (its credit), six wait in the queue.
    assert!(wait_until(Duration::from_secs(5), || queue_depth(&server) == 6));
    kill(Pid::from_raw(pid0 as i32), Signal::SIGKILL).unwrap();
    let results: Vec<_> = pending.into_iter().map(|p| p.wait()).collect();
    for (i, r) in results.iter().enumerate() {
        if i < 4 {
            let c = crashed(r.as_ref().unwrap_err());
            assert_eq!(c.worker.name, "victim");
            assert_eq!(c.worker.index, 0);
            assert_eq!(c.worker.pid, Some(pid0));
            assert!(c.how.contains("SIGKILL"), "{}", c.how);
            let text = r.as_ref().unwrap_err().to_string();
            assert!(
                text.contains("victim#0") && text.contains("SIGKILL"),
                "{text}"
            );
        } else {
            let (y, pid) = *r.as_ref().unwrap();
            assert_eq!(y, 2 * i as i64);
            assert_ne!(pid, pid0, "queued item served by the restarted worker");
        }
    }
    let snap = server.servlets();
    assert_eq!(snap.crashes, 1);
    assert_eq!(snap.restarts, 1);
    assert!(server.is_ready());
    assert_eq!(server.call(Op::Echo(21)).unwrap().0, 42);
    let _ = std::fs::remove_file(&gate);
}

/// The worker kills itself in three ways; with one item in flight at a time,
/// only the item that did it fails, and the error says how the worker died.
#[test]
fn abort_segfault_and_exit_fail_only_the_guilty_item() {
    let servlet = ProcessServlet::new(Chaos::new())
        .name("selfharm")
        .max_inflight(1)
        .restart_policy(eager_restarts());
    let server = Server::builder(servlet).capacity(64).start().unwrap();
    let ops = [
        (Op::Abort, "SIGABRT"),
        (Op::Segv, "SIGSEGV"),
        (Op::Exit(3), "exited with code 3"),
    ];
    for (op, how) in ops {
        let opts = CallOptions::default().timeout(Duration::from_secs(30));
        let mut pending = Vec::new();
        for i in 0..5 {
            pending.push(server.submit(Op::Echo(i), opts).unwrap());
        }
        let bad = server.submit(op.clone(), opts).unwrap();
        for i in 5..10 {
            pending.push(server.submit(Op::Echo(i), opts).unwrap());
        }
        let e = bad.wait().unwrap_err();
        let c = crashed(&e);
        assert!(c.how.contains(how), "{op:?}: {}", c.how);
        assert_eq!(c.worker.name, "selfharm");
        assert!(c.worker.pid.is_some());
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(p.wait().unwrap().0, 2 * i as i64, "{op:?}: item {i}");
        }
    }
    assert_eq!(server.servlets().crashes, 3);
    assert!(server.is_ready());
}

/// A crash loop: after more than `max_restarts` crashes within `window` the
/// worker is marked unhealthy (readiness fails) and restarted only after
/// `max_backoff`, not in a tight loop; once it stays up for a whole window it
/// is healthy again.
#[test]
fn crash_loop_marks_worker_unhealthy_then_it_recovers() {
    let policy = RestartPolicy::default()
        .backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(800))
        .max_restarts(3)
        .window(Duration::from_millis(1500));
    let servlet = ProcessServlet::new(Chaos::new()).restart_policy(policy);
    let server = Server::start(servlet).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            server.call(Op::Abort),
            Err(Error::WorkerCrashed(_))
        ));
        assert!(server.is_ready(), "three crashes are within the policy");
    }
    assert!(matches!(
        server.call(Op::Abort),
        Err(Error::WorkerCrashed(_))
    ));
    assert!(
        !server.is_ready(),
        "the fourth crash in the window makes it unhealthy"
    );
    assert!(!server.debug_info().servlets.workers[0].healthy);
    // Not restarted in a tight loop: the next start waits for max_backoff.
    let restarts = server.servlets().restarts;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.servlets().restarts, restarts);
    assert!(server.worker_pids().is_empty());
    // It comes back and serves; after a quiet window it is ready again.
    let opts = CallOptions::default().timeout(Duration::from_secs(10));
    assert_eq!(server.call_with(Op::Echo(1), opts).unwrap().0, 2);
    assert!(wait_until(Duration::from_secs(5), || server.is_ready()));
}

/// Two workers, one of them SIGKILLed every 40 ms while thousands of items
/// stream through: every input gets exactly one outcome, in order; successes
/// are correct; failures are crash errors; the server keeps serving.
#[test]
fn killing_workers_under_a_stream_loses_nothing() {
    const N: i64 = 3000;
    let servlet = ProcessServlet::new(Chaos::new().sleep_us(300))
        .workers(2)
        .name("stream")
        .restart_policy(eager_restarts());
    let server = Server::builder(servlet).capacity(128).start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = killer(&server, Duration::from_millis(40), stop.clone());
    let inputs: Vec<Op> = (0..N).map(Op::Echo).collect();
    let opts = StreamOptions::default().return_exceptions(true);
    let mut n = 0i64;
    let (mut ok, mut crashed_n) = (0u64, 0u64);
    let mut pids = HashSet::new();
    for (x, r) in server.stream_pairs(inputs, opts) {
        assert_eq!(x, Op::Echo(n), "results come in input order, once each");
        match r {
            Ok((y, pid)) => {
                assert_eq!(y, 2 * n);
                pids.insert(pid);
                ok += 1;
            }
            Err(Error::WorkerCrashed(c)) => {
                assert!(c.how.contains("SIGKILL"), "{}", c.how);
                crashed_n += 1;
            }
            Err(e) => panic!("item {n}: unexpected error {e:?}"),
        }
        n += 1;
    }
    let killed = stop_killer(&server, killer, &stop);
    assert_eq!(n, N, "every input has an outcome");
    assert!(killed >= 3, "the test did kill workers");
    assert!(
        crashed_n > 0 && ok > crashed_n,
        "ok {ok}, crashed {crashed_n}"
    );
    assert!(pids.len() > 2, "restarted workers served items");
    let stats = server.request_stats();
    assert_eq!(stats.submitted, N as u64);
    assert_eq!(stats.ok, ok);
    let crash_count: u64 = stats
        .errors
        .iter()
        .filter(|(k, _)| k == "worker_crashed")
        .map(|(_, c)| *c)
        .sum();
    assert_eq!(crash_count, crashed_n, "no request completed twice");
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    assert!(server.is_ready());
    assert_eq!(server.call(Op::Echo(5)).unwrap().0, 10);
}

/// The same storm with `retry_crashed`: items lost in a crash are retried, so
/// (almost) every item succeeds; one killed twice is failed as poison.
#[test]
fn killing_workers_with_retry_succeeds_every_item() {
    const N: i64 = 1500;
    let policy = eager_restarts().retry_crashed(true);
    let servlet = ProcessServlet::new(Chaos::new().sleep_us(300))
        .workers(2)
        .restart_policy(policy);
    let server = Server::builder(servlet).capacity(128).start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = killer(&server, Duration::from_millis(60), stop.clone());
    let inputs: Vec<Op> = (0..N).map(Op::Echo).collect();
    let opts = StreamOptions::default().return_exceptions(true);
    let (mut n, mut poisoned) = (0i64, 0);
    for r in server.stream_with(inputs, opts) {
        match r {
            Ok((y, _)) => assert_eq!(y, 2 * n),
            Err(Error::PoisonItem(p)) => {
                assert!(p.crashes >= 2);
                poisoned += 1;
            }
            Err(e) => panic!("item {n}: unexpected error {e:?}"),
        }
        n += 1;
    }
    stop_killer(&server, killer, &stop);
    assert_eq!(n, N);
    assert!(server.servlets().crashes > 0);
    assert!(poisoned <= 5, "{poisoned} items poisoned");
}
