//! The restart policy under repeated kills: a worker that served before it
//! was killed is replaced at once, however often it happens; back-off and the
//! unhealthy mark are for workers that die in start-up or straight away.

mod reliability_support;

use std::time::Duration;

use mpserver::{CallOptions, ProcessServlet, RestartPolicy, Server};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reliability_support::*;

/// Under the default policy (20 crashes within 60 s before a worker is
/// unhealthy and restarted only every 5 s), a worker killed from outside 25
/// times, each time after serving, is restarted at once every time, stays
/// healthy and keeps serving.
#[test]
fn a_worker_killed_after_serving_restarts_at_once_every_time() {
    let server = Server::start(ProcessServlet::new(Chaos::new())).unwrap();
    let opts = CallOptions::timeout(Duration::from_secs(10));
    for i in 0..25 {
        let (y, pid) = server.call_with(Op::Echo(i), opts).unwrap();
        assert_eq!(y, 2 * i);
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        // "At once": the default back-off of an unhealthy worker is 5 s.
        let back = wait_until(Duration::from_secs(2), || {
            server.worker_pids().first().is_some_and(|p| *p != pid)
        });
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
        let policy = RestartPolicy {
            backoff: Duration::from_secs(30),
            stable_after,
            ..RestartPolicy::default()
        };
        let server =
            Server::start(ProcessServlet::new(Chaos::new()).restart_policy(policy)).unwrap();
        let pid = server.worker_pids()[0];
        std::thread::sleep(Duration::from_millis(300));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let back = wait_until(Duration::from_secs(3), || {
            server.worker_pids().first().is_some_and(|p| *p != pid)
        });
        assert_eq!(back, at_once, "stable_after {stable_after:?}");
    }
}

/// A worker that dies in start-up (its init aborts on every restart) still
/// backs off, doubling, and is marked unhealthy after more than
/// `max_restarts` failed starts; once start-up works again it recovers.
#[test]
fn a_worker_dying_in_start_up_still_backs_off_and_turns_unhealthy() {
    let marker = temp_path("init-abort");
    let policy = RestartPolicy {
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(800),
        max_restarts: 3,
        window: Duration::from_secs(60),
        ..RestartPolicy::default()
    };
    let worker = Chaos {
        init_abort_if: Some(marker.clone()),
        ..Chaos::new()
    };
    let server = Server::start(ProcessServlet::new(worker).restart_policy(policy)).unwrap();
    let (_, pid) = server.call(Op::Echo(1)).unwrap();
    std::fs::write(&marker, "").unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
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
    let opts = CallOptions::timeout(Duration::from_secs(10));
    assert_eq!(server.call_with(Op::Echo(2), opts).unwrap().0, 4);
}
