//! The restart policy under repeated kills: a worker that served before it
//! was killed is replaced at once, however often it happens; back-off and the
//! unhealthy mark are for workers that die in start-up or straight away;
//! while a stage has no live worker, an item waits for it at most
//! `wait_for_worker`; crashed items are retried on any free worker (opt-in).

mod reliability_support;
mod support;

use std::time::{Duration, Instant};

use mpserver::{CallOptions, Error, ProcessServlet, RestartPolicy, Server};
use reliability_support::*;
use support::restart::{
    backing_off, no_worker_within, replaced_within, sigkill, submit_poison_among_bystanders,
};

/// Under the default policy (20 crashes within 60 s before a worker is
/// unhealthy and restarted only every 5 s), a worker killed from outside 25
/// times, each time after serving, is restarted at once every time, stays
/// healthy and keeps serving.
#[test]
fn a_worker_killed_after_serving_restarts_at_once_every_time() {
    let server = Server::start(ProcessServlet::new(Chaos::new())).unwrap();
    let opts = CallOptions::default().timeout(Duration::from_secs(10));
    for i in 0..25 {
        let (y, pid) = server.call_with(Op::Echo(i), opts).unwrap();
        assert_eq!(y, 2 * i);
        sigkill(pid);
        // "At once": the default back-off of an unhealthy worker is 5 s.
        let back = replaced_within(&server, pid, Duration::from_secs(2));
        assert!(
            back,
            "kill {}: not restarted within 2 s: {:?}",
            i + 1,
            server.debug_info().servlets.workers
        );
        assert!(server.is_ready(), "kill {}: healthy", i + 1);
    }
    assert_eq!(server.call_with(Op::Echo(7), opts).unwrap().0, 14);
    let w = &server.debug_info().servlets.workers[0];
    assert!(w.healthy, "{w:?}");
    assert_eq!(server.servlets().crashes, 25);
}

/// An idle worker that has been up a while (`RestartPolicy::stable_after`)
/// counts as served: killed without ever answering an item, it is replaced at
/// once; with `stable_after` out of reach it backs off.
#[test]
fn an_idle_worker_up_long_enough_restarts_at_once() {
    for (stable_after, at_once) in [
        (Duration::from_millis(100), true),
        (Duration::from_secs(3600), false),
    ] {
        let policy = RestartPolicy::default()
            .backoff(Duration::from_secs(30))
            .stable_after(stable_after);
        let server =
            Server::start(ProcessServlet::new(Chaos::new()).restart_policy(policy)).unwrap();
        let pid = server.worker_pids()[0];
        std::thread::sleep(Duration::from_millis(300));
        sigkill(pid);
        let back = replaced_within(&server, pid, Duration::from_secs(3));
        assert_eq!(back, at_once, "stable_after {stable_after:?}");
    }
}

/// A worker that dies in start-up (its init aborts on every restart) still
/// backs off, doubling, and is marked unhealthy after more than
/// `max_restarts` failed starts; once start-up works again it recovers.
#[test]
fn a_worker_dying_in_start_up_still_backs_off_and_turns_unhealthy() {
    let marker = temp_path("init-abort");
    let policy = RestartPolicy::default()
        .backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(800))
        .max_restarts(3)
        .window(Duration::from_secs(60));
    let worker = Chaos {
        init_abort_if: Some(marker.clone()),
        ..Chaos::new()
    };
    let server = Server::start(ProcessServlet::new(worker).restart_policy(policy)).unwrap();
    let (_, pid) = server.call(Op::Echo(1)).unwrap();
    std::fs::write(&marker, "").unwrap();
    sigkill(pid);
    // Killed after serving: restarted at once, and that start dies in init.
    assert!(wait_until(Duration::from_secs(5), || count_lines(&marker) >= 1));
    std::thread::sleep(Duration::from_millis(1500));
    // Back-off 50, 100, 200, 400, 800 ms: a handful of attempts in 1.5 s,
    // not a tight loop.
    let attempts = count_lines(&marker);
    assert!((2..=8).contains(&attempts), "{attempts} start attempts");
    assert!(!server.is_ready(), "more than 3 failed starts: unhealthy");
    let w = &server.debug_info().servlets.workers[0];
    assert!(!w.healthy && !w.alive, "{w:?}");
    std::fs::remove_file(&marker).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !server
        .worker_pids()
        .is_empty()));
    let opts = CallOptions::default().timeout(Duration::from_secs(10));
    assert_eq!(server.call_with(Op::Echo(2), opts).unwrap().0, 4);
}

/// With `retry_crashed`, the item a killed worker held is sent again to the
/// first worker of the servlet that is free, here the other one (the killed
/// slot backs off for 30 s): it returns its right answer, made by the
/// surviving process, well before the killed slot could restart.
#[test]
fn a_killed_workers_item_is_retried_on_another_worker() {
    let policy = backing_off(Duration::from_secs(30)).retry_crashed(true);
    let servlet = ProcessServlet::new(Chaos::new())
        .workers(2)
        .max_inflight(1)
        .restart_policy(policy);
    let server = Server::builder(servlet).capacity(8).start().unwrap();
    let opts = CallOptions::default().timeout(Duration::from_secs(20));
    let a = server.submit(Op::Sleep(1, 600), opts).unwrap();
    let b = server.submit(Op::Sleep(2, 600), opts).unwrap();
    // Each process holds one of them; kill one.
    std::thread::sleep(Duration::from_millis(200));
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 2);
    sigkill(pids[0]);
    let t = Instant::now();
    let (ya, pa) = a.wait().unwrap();
    let (yb, pb) = b.wait().unwrap();
    assert_eq!((ya, yb), (2, 4));
    assert_eq!((pa, pb), (pids[1], pids[1]), "both made by the survivor");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(server.servlets().crashes, 1);
}

/// An item in flight in two crashes is poison: with two workers it is not
/// passed from one to the other forever. It fails as `PoisonItem`; the
/// other items succeed.
#[test]
fn a_poison_item_is_not_retried_forever_across_workers() {
    let policy = RestartPolicy::default()
        .retry_crashed(true)
        .backoff(Duration::from_millis(1));
    let servlet = ProcessServlet::new(Chaos::new().sleep_us(2000))
        .workers(2)
        .restart_policy(policy);
    let server = Server::builder(servlet).capacity(64).start().unwrap();
    let (pending, poison) = submit_poison_among_bystanders(&server, Op::Echo, Op::Abort);
    match poison.wait() {
        Err(Error::PoisonItem(p)) => assert_eq!(p.crashes, 2),
        other => panic!("expected PoisonItem, got {other:?}"),
    }
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap().0, 2 * i as i64, "item {i}");
    }
    assert_eq!(server.servlets().crashes, 2);
}

/// A retried item whose deadline passes while it waits (its worker backs
/// off) is not run again: the caller gets its timeout on time, and the
/// worker never starts it a second time.
#[test]
fn a_crashed_item_past_its_deadline_is_not_retried() {
    let log = temp_path("retry-deadline");
    let policy = backing_off(Duration::from_millis(1500)).retry_crashed(true);
    let servlet = ProcessServlet::new(Chaos::new().log(&log))
        .restart_policy(policy)
        .wait_for_worker(Duration::from_secs(10));
    let server = Server::start(servlet).unwrap();
    let pid = server.worker_pids()[0];
    let t = Instant::now();
    let pending = server
        .submit(
            Op::Sleep(1, 5000),
            CallOptions::default().timeout(Duration::from_millis(800)),
        )
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || count_lines(&log) == 1));
    sigkill(pid);
    let r = pending.wait();
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // The worker comes back after its back-off and serves, without the
    // expired item.
    let opts = CallOptions::default().timeout(Duration::from_secs(10));
    assert_eq!(server.call_with(Op::Echo(3), opts).unwrap().0, 6);
    assert_eq!(count_lines(&log), 2, "the expired item ran once");
    let _ = std::fs::remove_file(&log);
}

/// Shutting the server down while a worker waits out a long restart
/// back-off, with nothing queued, does not wait for the back-off.
#[test]
fn shutdown_does_not_wait_out_a_restart_back_off() {
    let policy = backing_off(Duration::from_secs(60));
    let server = Server::start(ProcessServlet::new(Chaos::new()).restart_policy(policy)).unwrap();
    sigkill(server.worker_pids()[0]);
    assert!(wait_until(Duration::from_secs(5), || server
        .debug_info()
        .servlets
        .workers[0]
        .backoff_until_unix_ms
        .is_some()));
    let t = Instant::now();
    drop(server);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A worker process that served normally and is then killed from outside is
/// replaced at once; one killed again before it answered anything backs off
/// (and says so in its status: last exit, back-off deadline).
#[test]
fn a_worker_that_served_restarts_at_once_one_that_did_not_backs_off() {
    let policy = RestartPolicy::default()
        .backoff(Duration::from_secs(3))
        .max_backoff(Duration::from_secs(5));
    let server = Server::start(
        ProcessServlet::new(Chaos::new())
            .name("victim")
            .restart_policy(policy),
    )
    .unwrap();
    assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
    let pid = server.worker_pids()[0];
    sigkill(pid);
    let t = Instant::now();
    let replaced = replaced_within(&server, pid, Duration::from_secs(2));
    assert!(replaced, "not replaced within 2 s (back-off is 3 s)");
    assert!(t.elapsed() < Duration::from_secs(2));
    let snap = server.servlets();
    let last = snap.workers[0].last_exit.clone().unwrap_or_default();
    assert!(last.contains("SIGKILL"), "{last}");
    // Killed again before answering anything: back-off this time.
    let pid2 = server.worker_pids()[0];
    sigkill(pid2);
    assert!(no_worker_within(&server, Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.worker_pids().is_empty(), "it backs off");
    let w = &server.servlets().workers[0];
    assert!(!w.alive);
    assert!(w.backoff_until_unix_ms.is_some(), "{w:?}");
}

/// While a servlet has no live worker (its only process died and backs off
/// for 3 s), an item waits at most `wait_for_worker` and then fails with a
/// retryable crash error; once the worker is back, calls succeed.
#[test]
fn an_item_waits_for_a_dead_stage_at_most_its_bound() {
    let policy = backing_off(Duration::from_secs(3)).max_backoff(Duration::from_secs(5));
    let server = Server::start(
        ProcessServlet::new(Chaos::new())
            .restart_policy(policy)
            .wait_for_worker(Duration::from_millis(300)),
    )
    .unwrap();
    assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
    let pid = server.worker_pids()[0];
    sigkill(pid);
    assert!(no_worker_within(&server, Duration::from_secs(2)));
    let t = Instant::now();
    let r = server.call_with(
        Op::Echo(2),
        CallOptions::default().timeout(Duration::from_secs(20)),
    );
    assert!(matches!(r, Err(Error::WorkerCrashed(_))), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    assert!(wait_until(Duration::from_secs(10), || server
        .worker_pids()
        .len()
        == 1));
    assert_eq!(server.call(Op::Echo(3)).unwrap().0, 6);
}
