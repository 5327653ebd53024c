//! Direct hand-off: a caller's single call goes straight to an idle worker
//! process; stream items, batches and busy workers take the queue; the
//! hand-off keeps the recycling quota and loses nothing to a dead worker.

mod reliability_support;

use std::time::Duration;

use mpserver::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reliability_support::*;

#[test]
fn single_calls_go_straight_to_idle_workers_of_both_processes() {
    let server = Server::start(ProcessServlet::new(Chaos::new()).workers(2)).unwrap();
    // `Server::start` returns once both processes are up; each supervisor
    // publishes its process for hand-offs a moment later, and on a loaded
    // machine the second may do so only after many calls (all then handed
    // to the first). So first call until both processes have answered: one
    // that answered was handed its item through its published door, or was
    // sent it by its supervisor, which publishes it before sending anything.
    let mut warm_up = std::collections::HashSet::new();
    let mut x = 1_000;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (y, pid) = server.call(Op::Echo(x)).unwrap();
            assert_eq!(y, 2 * x);
            x += 1;
            warm_up.insert(pid);
            warm_up.len() == 2
        }),
        "both worker processes answered within 20 s"
    );
    let before = server.servlets();
    let mut pids = std::collections::HashSet::new();
    for i in 0..60 {
        let (y, pid) = server.call(Op::Echo(i)).unwrap();
        assert_eq!(y, 2 * i);
        pids.insert(pid);
    }
    let snap = server.servlets();
    assert_eq!(snap.items_ok - before.items_ok, 60);
    // Both processes are published and idle at every call: each call finds
    // one (allowing for the supervisor holding a send lock at a caller's
    // `try_lock` now and then).
    let handoffs = snap.handoffs - before.handoffs;
    assert!(handoffs >= 58, "handoffs: {handoffs} of 60");
    assert_eq!(pids.len(), 2, "hand-offs are spread over the workers");
    assert_eq!(snap.queue_depth, Some(0));
}

#[test]
fn stream_items_and_batches_take_the_queue() {
    let server = Server::start(ProcessServlet::new(Chaos::new()).workers(2)).unwrap();
    for (i, r) in (0..300).zip(server.stream((0..300).map(Op::Echo))) {
        assert_eq!(r.unwrap().0, 2 * i);
    }
    assert_eq!(server.servlets().handoffs, 0);

    let batched = Server::start(ProcessServlet::new(Chaos::new()).batch_size(4)).unwrap();
    for i in 0..20 {
        assert_eq!(batched.call(Op::Echo(i)).unwrap().0, 2 * i);
    }
    let snap = batched.servlets();
    assert_eq!(snap.handoffs, 0);
    assert_eq!(snap.batches, 20);
}

#[test]
fn queued_async_calls_take_the_queue_and_plain_ones_are_handed_over() {
    let server = Server::start(ProcessServlet::new(Chaos::new()).workers(2)).unwrap();
    let h = server.handle();
    for i in 0..40 {
        let y = futures::executor::block_on(
            h.async_call_queued_with(Op::Echo(i), CallOptions::default()),
        );
        assert_eq!(y.unwrap().0, 2 * i);
    }
    assert_eq!(server.servlets().handoffs, 0);
    for i in 0..40 {
        let y = futures::executor::block_on(h.async_call_with(Op::Echo(i), CallOptions::default()));
        assert_eq!(y.unwrap().0, 2 * i);
    }
    assert!(
        server.servlets().handoffs >= 38,
        "handoffs: {}",
        server.servlets().handoffs
    );
}

#[test]
fn a_worker_credit_of_one_item_takes_the_queue() {
    let server = Server::start(ProcessServlet::new(Chaos::new()).max_inflight(1)).unwrap();
    for i in 0..10 {
        assert_eq!(server.call(Op::Echo(i)).unwrap().0, 2 * i);
    }
    assert_eq!(server.servlets().handoffs, 0);
}

#[test]
fn handed_items_count_against_the_recycling_quota() {
    let server = Server::start(ProcessServlet::new(Chaos::new()).recycle_after(3)).unwrap();
    let mut pids = Vec::new();
    for i in 0..20 {
        let (y, pid) = server.call(Op::Echo(i)).unwrap();
        assert_eq!(y, 2 * i);
        pids.push(pid);
    }
    // Each process served at most three items, in one run.
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for p in pids {
        match runs.last_mut() {
            Some((q, n)) if *q == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    assert!(runs.iter().all(|(_, n)| *n <= 3), "{runs:?}");
    let distinct: std::collections::HashSet<u32> = runs.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        distinct.len(),
        runs.len(),
        "a retired process never returns"
    );
    assert!(server.servlets().handoffs > 0);
}

/// An idle worker is killed and a call follows as soon as it is dead, many
/// times over. The call may find the dead process still published (its write then fails
/// before a byte goes out and the item takes the queue) or already withdrawn:
/// either way it is served by the restarted process, never failed.
#[test]
fn a_call_racing_the_death_of_an_idle_worker_is_not_lost() {
    let server = Server::start(
        ProcessServlet::new(Chaos::new())
            .name("racer")
            .restart_policy(eager_restarts()),
    )
    .unwrap();
    for round in 0..20 {
        let before = server.worker_pids();
        assert_eq!(before.len(), 1, "round {round}: {before:?}");
        kill(Pid::from_raw(before[0] as i32), Signal::SIGKILL).unwrap();
        // Dead (a zombie or reaped), so its socket is closed: what the call
        // writes cannot reach it. (A call sent while it is still dying would
        // be one of its in-flight items, failed as crashed.)
        // (A single-threaded process shows `Z` only once its files are
        // closed.) The bounds are far above what this takes (milliseconds,
        // also on a loaded machine): a failure names its round and state.
        assert!(
            wait_until(Duration::from_secs(20), || !matches!(
                proc_state(before[0]),
                Some((s, _)) if s != 'Z'
            )),
            "round {round}: worker {} not dead 20 s after SIGKILL: {:?}",
            before[0],
            proc_state(before[0])
        );
        let (y, pid) = server
            .call_with(
                Op::Echo(round),
                CallOptions::default().timeout(Duration::from_secs(30)),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "round {round}: the call after worker {} died failed: {e:?}; {:?}",
                    before[0],
                    server.servlets()
                )
            });
        assert_eq!(y, 2 * round);
        assert_ne!(pid, before[0], "served by the restarted process");
    }
    let snap = server.servlets();
    assert_eq!(snap.crashes, 20);
    assert_eq!(snap.items_err, 0);
}

/// A call read by its own caller (the worker idle, nobody else reading) whose
/// worker dies under it: that call fails as crashed, naming the worker, and
/// the restarted worker serves the next calls, read by their callers again.
#[test]
fn a_crash_under_a_call_read_by_its_caller_fails_only_that_call() {
    let server = Server::start(
        ProcessServlet::new(Chaos::new())
            .name("reader")
            .restart_policy(eager_restarts()),
    )
    .unwrap();
    for i in 0..5 {
        assert_eq!(server.call(Op::Echo(i)).unwrap().0, 2 * i);
    }
    let pid = server.worker_pids()[0];
    let mut crashes = 0;
    for op in [Op::Abort, Op::Exit(3)] {
        // A call is read by its caller only when it finds the process idle
        // and its send side free; on a loaded machine the supervisor may
        // hold it for a moment. Repeat until the crashing call was one.
        let mut read_by_caller = false;
        for _ in 0..10 {
            let before = server.servlets().handoffs;
            let err = server
                .call_with(
                    op.clone(),
                    CallOptions::default().timeout(Duration::from_secs(10)),
                )
                .unwrap_err();
            crashes += 1;
            let handed_off = server.servlets().handoffs > before;
            let mpserver::Error::WorkerCrashed(c) = &err else {
                panic!("expected a crash, got {err:?}")
            };
            assert_eq!(c.worker.name, "reader");
            for i in 0..5 {
                assert_eq!(server.call(Op::Echo(i)).unwrap().0, 2 * i);
            }
            if handed_off {
                read_by_caller = true;
                break;
            }
        }
        assert!(
            read_by_caller,
            "{op:?}: no crashing call was read by its caller"
        );
    }
    assert_ne!(server.worker_pids()[0], pid);
    let snap = server.servlets();
    assert_eq!(snap.crashes, crashes);
    assert_eq!(snap.items_err, crashes);
}

/// A caller reading its own result times out: it gets the timeout at its
/// deadline, the reader thread takes over, and the late result is dropped
/// without disturbing the next calls.
#[test]
fn a_caller_reading_its_result_times_out_at_its_deadline() {
    let server = Server::start(ProcessServlet::new(Chaos::new())).unwrap();
    assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
    let t = std::time::Instant::now();
    let err = server
        .call_with(
            Op::Sleep(5, 400),
            CallOptions::default().timeout(Duration::from_millis(100)),
        )
        .unwrap_err();
    assert!(matches!(err, mpserver::Error::Timeout(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_millis(350));
    // The worker is still busy with the late item: this call queues behind
    // it, and is read by the reader thread.
    assert_eq!(server.call(Op::Echo(2)).unwrap().0, 4);
    for i in 0..10 {
        assert_eq!(server.call(Op::Echo(i)).unwrap().0, 2 * i);
    }
}

/// Shutting down while a caller reads its own result: the worker finishes
/// the item (the caller gets it) and the shutdown completes promptly.
#[test]
fn shutdown_while_a_caller_reads_its_result() {
    let server = Server::start(ProcessServlet::new(Chaos::new())).unwrap();
    assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
    let handle = server.handle();
    let caller = std::thread::spawn(move || handle.call(Op::Sleep(7, 300)));
    // Let the call reach the worker, then stop the server.
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 1));
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::Instant::now();
    server.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(caller.join().unwrap().unwrap().0, 14);
}

/// Blocking callers (who may read their own results), submitters, async
/// callers and a stream, all at once on two worker processes, with some
/// items slow enough to overlap: whoever reads a worker's socket delivers
/// every result to its own caller, and no result is left unread (each
/// thread would hang past its timeout otherwise).
#[test]
fn every_kind_of_caller_at_once_gets_its_own_results() {
    use std::sync::Arc;
    let server = Arc::new(
        Server::builder(ProcessServlet::new(Chaos::new()).workers(2))
            .capacity(256)
            .start()
            .unwrap(),
    );
    // Without back-pressure: callers wait for room the stream leaves.
    let opts = CallOptions::default()
        .timeout(Duration::from_secs(20))
        .backpressure(false);
    let mut threads = Vec::new();
    for t in 0..4i64 {
        let s = server.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..300 {
                let x = t * 1_000_000 + i;
                let op = if i % 50 == 7 {
                    Op::Sleep(x, 2)
                } else {
                    Op::Echo(x)
                };
                assert_eq!(s.call_with(op, opts).unwrap().0, 2 * x);
            }
        }));
    }
    for t in 4..6i64 {
        let s = server.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..100 {
                let xs: Vec<i64> = (0..3).map(|k| t * 1_000_000 + i * 3 + k).collect();
                let pending: Vec<_> = xs
                    .iter()
                    .map(|&x| s.submit(Op::Echo(x), opts).unwrap())
                    .collect();
                for (x, p) in xs.into_iter().zip(pending) {
                    assert_eq!(p.wait().unwrap().0, 2 * x);
                }
            }
        }));
    }
    {
        let s = server.clone();
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                for i in 0..300i64 {
                    let x = 6_000_000 + i;
                    let y = s.async_call_with(Op::Echo(x), opts).await.unwrap();
                    assert_eq!(y.0, 2 * x);
                }
            });
        }));
    }
    {
        let s = server.clone();
        threads.push(std::thread::spawn(move || {
            let xs = (0..2000i64).map(|i| 7_000_000 + i);
            for (x, r) in xs.clone().zip(s.stream(xs.map(Op::Echo))) {
                assert_eq!(r.unwrap().0, 2 * x);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let snap = server.servlets();
    assert_eq!(snap.items_ok, 4 * 300 + 2 * 300 + 300 + 2000);
    assert_eq!(snap.items_err, 0);
    eprintln!("hand-offs: {} of {}", snap.handoffs, snap.items_in);
    assert!(snap.handoffs > 0, "the direct path was taken too");
    assert_eq!(server.backlog(), 0);
}
