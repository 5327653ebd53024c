//! Promise 8 (cancellation and deadlines) and the sibling half of promise 10.
//!
//! A timed-out request is never delivered late to another caller; cancelled
//! and expired items are skipped by workers (thread and process) that have not
//! started them; a stream dropped early leaves the backlog at zero shortly
//! after; with a fail-fast ensemble, one member's failure cancels the other
//! members' pending work for that item.

mod reliability_support;

use std::time::Duration;

use mpserver::{BoxServlet, CallOptions, Error, ProcessServlet, Server, ThreadServlet, ensemble};
use reliability_support::*;

fn process_or_thread(process: bool, w: Chaos) -> BoxServlet<Op, Out> {
    if process {
        Box::new(ProcessServlet::new(w).name("cancel"))
    } else {
        Box::new(ThreadServlet::new(w).name("cancel"))
    }
}

/// Many threads call with deadlines that race the results (timeouts between
/// 1 and 12 ms, items taking 0 to 8 ms). Every value a caller receives is
/// the one for its own input; every failure is a timeout; nothing leaks.
#[test]
fn timed_out_results_never_reach_another_caller() {
    for process in [true, false] {
        let servlet: BoxServlet<Op, Out> = if process {
            Box::new(ProcessServlet::new(Chaos::new()).workers(2).max_inflight(8))
        } else {
            Box::new(ThreadServlet::new(Chaos::new()).workers(2))
        };
        // An expired request keeps its capacity unit until its item is
        // dropped or done: on a loaded machine expired items pile up faster
        // than the workers skip them, and a server of capacity 64 could fill
        // (a caller waiting for room past its deadline then gets
        // `BacklogFull`). With a unit for every call the test makes, the
        // server cannot fill: every failure here must be a timeout.
        let server = Server::builder(servlet).capacity(8 * 150).start().unwrap();
        let callers: Vec<_> = (0..8i64)
            .map(|t| {
                let h = server.handle();
                std::thread::spawn(move || {
                    let (mut ok, mut late) = (0, 0);
                    for i in 0..150i64 {
                        let x = t * 10_000 + i;
                        let ms = ((x * 7919) % 9) as u64;
                        let timeout = Duration::from_millis(1 + ((x * 104_729) % 12) as u64);
                        let opts = CallOptions::default().timeout(timeout).backpressure(false);
                        match h.call_with(Op::Sleep(x, ms), opts) {
                            Ok((y, _)) => {
                                assert_eq!(y, 2 * x, "caller {t} got someone else's result");
                                ok += 1;
                            }
                            Err(Error::Timeout(_)) => late += 1,
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    (ok, late)
                })
            })
            .collect();
        let (mut ok, mut late) = (0, 0);
        for c in callers {
            let (o, l) = c.join().unwrap();
            ok += o;
            late += l;
        }
        assert!(ok > 0 && late > 0, "ok {ok}, timed out {late}");
        assert!(wait_until(Duration::from_secs(20), || server.backlog() == 0));
        // The server still answers correctly afterwards.
        for x in 0..20 {
            assert_eq!(server.call(Op::Echo(x)).unwrap().0, 2 * x);
        }
    }
}

/// One worker is busy with a long item; twenty more wait behind it (in the
/// queue, and for a process worker also inside the worker process) and time
/// out. When the long item ends, the worker skips all twenty: its call log
/// has the long item only.
#[test]
fn expired_items_are_skipped_by_workers_that_have_not_started_them() {
    for process in [true, false] {
        let log = temp_path("skip-log");
        let gate = temp_path("skip-gate");
        let server = Server::start(process_or_thread(process, Chaos::new().log(&log))).unwrap();
        let long = CallOptions::default().timeout(Duration::from_secs(30));
        let first = server.submit(Op::Gate(-1, gate.clone()), long).unwrap();
        assert!(wait_until(Duration::from_secs(5), || count_lines(&log) == 1));
        let short = CallOptions::default().timeout(Duration::from_millis(50));
        let pending: Vec<_> = (0..20)
            .map(|i| server.submit(Op::Echo(i), short).unwrap())
            .collect();
        for p in pending {
            assert!(matches!(p.wait(), Err(Error::Timeout(_))));
        }
        if process {
            // The process supervisor tells the worker to skip them (counted
            // as skipped as soon as the cancel message is sent).
            assert!(wait_until(Duration::from_secs(5), || server
                .servlets()
                .skipped
                == 20));
        }
        std::fs::write(&gate, b"open").unwrap();
        assert_eq!(first.wait().unwrap().0, -2);
        assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
        assert_eq!(server.call(Op::Echo(5)).unwrap().0, 10);
        assert_eq!(
            logged(&log),
            vec![-1, 5],
            "process {process}: skipped items did not run"
        );
        assert_eq!(server.servlets().skipped, 20);
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&gate);
    }
}

/// Dropping a `Pending` cancels it like a timeout does.
#[test]
fn dropped_pending_is_skipped() {
    let log = temp_path("drop-log");
    let gate = temp_path("drop-gate");
    let server = Server::start(ProcessServlet::new(Chaos::new().log(&log))).unwrap();
    let opts = CallOptions::default().timeout(Duration::from_secs(30));
    let first = server.submit(Op::Gate(-1, gate.clone()), opts).unwrap();
    assert!(wait_until(Duration::from_secs(5), || count_lines(&log) == 1));
    let dropped: Vec<_> = (0..10)
        .map(|i| server.submit(Op::Echo(i), opts).unwrap())
        .collect();
    drop(dropped);
    assert!(wait_until(Duration::from_secs(5), || server
        .servlets()
        .skipped
        == 10));
    std::fs::write(&gate, b"open").unwrap();
    assert_eq!(first.wait().unwrap().0, -2);
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    assert_eq!(count_lines(&log), 1);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&gate);
}

/// A stream dropped after a few results: its in-flight requests are cancelled
/// and the backlog drains to zero soon after; most items never run.
#[test]
fn dropped_stream_leaves_backlog_at_zero() {
    for process in [true, false] {
        let log = temp_path("stream-log");
        let w = Chaos::new().sleep_us(2000).log(&log);
        let server = Server::builder(process_or_thread(process, w))
            .capacity(32)
            .start()
            .unwrap();
        let mut s = server.stream((0..100_000).map(Op::Echo));
        for i in 0..5 {
            assert_eq!(s.next().unwrap().unwrap().0, 2 * i);
        }
        assert!(server.backlog() > 0);
        drop(s);
        assert!(
            wait_until(Duration::from_secs(5), || server.backlog() == 0),
            "backlog stuck at {}",
            server.backlog()
        );
        let calls = count_lines(&log);
        assert!(calls < 100, "{calls} items ran after a 5-item read");
        assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
        let _ = std::fs::remove_file(&log);
    }
}

/// Fail-fast ensemble: member 0 fails every item at once; member 1 is busy
/// with an earlier item (waiting for a gate) while the rest queue behind it.
/// Every item fails as an ensemble error at once, and member 1 then skips
/// every item it had not started: its log has the first item only.
#[test]
fn fail_fast_ensemble_cancels_sibling_work() {
    for process in [true, false] {
        let log = temp_path("ens-log");
        let gate = temp_path("ens-gate");
        let failing = Chaos {
            fail: true,
            ..Chaos::new()
        };
        let flow = ensemble![
            process_or_thread(process, failing),
            process_or_thread(process, Chaos::new().log(&log)),
        ];
        let server = Server::builder(flow).capacity(32).start().unwrap();
        let opts = CallOptions::default().timeout(Duration::from_secs(30));
        // Member 0 passes the gate item at once; member 1 starts it and waits.
        let first = server.submit(Op::Gate(-1, gate.clone()), opts).unwrap();
        assert!(wait_until(Duration::from_secs(5), || count_lines(&log) == 1));
        let pending: Vec<_> = (0..20)
            .map(|i| server.submit(Op::Echo(i), opts).unwrap())
            .collect();
        for p in pending {
            match p.wait() {
                Err(Error::Ensemble(e)) => {
                    let (member, err) = e.first().unwrap();
                    assert_eq!(member, 0);
                    assert_eq!(err.worker_error().unwrap().message(), "refused");
                }
                other => panic!("expected an ensemble error, got {other:?}"),
            }
        }
        let member1 = |s: &mpserver::metrics::ServletSnapshot| s.members[1].skipped;
        if process {
            // The supervisor tells the busy worker process to skip them.
            let told = wait_until(Duration::from_secs(5), || member1(&server.servlets()) == 20);
            assert!(told);
        }
        std::fs::write(&gate, b"open").unwrap();
        let both: Vec<i64> = first.wait().unwrap().into_iter().map(|(y, _)| y).collect();
        assert_eq!(both, vec![-2, -2]);
        // (The failed requests' capacity was returned when they failed; the
        // sibling's copies are counted as skipped when it reaches them.)
        let skipped = wait_until(Duration::from_secs(5), || member1(&server.servlets()) == 20);
        assert!(skipped, "skipped {}", member1(&server.servlets()));
        assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
        // Member 1 still serves: the next item is the only other one it runs.
        let next: Vec<i64> = server
            .call(Op::Gate(3, gate.clone()))
            .unwrap()
            .into_iter()
            .map(|(y, _)| y)
            .collect();
        assert_eq!(next, vec![6, 6]);
        assert_eq!(
            logged(&log),
            vec![-1, 3],
            "process {process}: sibling work was cancelled"
        );
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&gate);
    }
}

/// Items a process worker already holds behind a slow item, whose requests
/// expire while that item runs, are skipped: after an item that ran a while
/// the worker looks at its socket, and finds their CANCEL, before it runs
/// the next one (it does not look before every item: round 7, S4).
#[test]
fn items_a_worker_holds_behind_a_slow_item_are_skipped_when_they_expire() {
    let log = temp_path("held-log");
    let (gate1, gate2) = (temp_path("held-gate1"), temp_path("held-gate2"));
    // A fixed credit: every item goes to the worker as soon as it is queued.
    let server =
        Server::start(ProcessServlet::new(Chaos::new().log(&log)).max_inflight(32)).unwrap();
    let long = CallOptions::default().timeout(Duration::from_secs(60));
    let first = server.submit(Op::Gate(-1, gate1.clone()), long).unwrap();
    assert!(wait_until(Duration::from_secs(5), || count_lines(&log) == 1));
    let slow = server.submit(Op::Gate(-3, gate2.clone()), long).unwrap();
    let short = CallOptions::default().timeout(Duration::from_millis(1000));
    let pending: Vec<_> = (0..20)
        .map(|i| server.submit(Op::Echo(i), short).unwrap())
        .collect();
    // All of them are written to the worker while it is held at the first
    // gate; it reads them all once that item is done, and starts the slow one.
    assert!(wait_until(Duration::from_secs(5), || server
        .servlets()
        .items_in
        == 22));
    std::fs::write(&gate1, b"open").unwrap();
    assert_eq!(first.wait().unwrap().0, -2);
    assert!(wait_until(Duration::from_secs(5), || count_lines(&log) == 2));
    // They expire while the slow item runs; the supervisor's cancel scan
    // (every 10 ms while its worker holds items) writes their CANCEL, which
    // nothing here can observe before the worker answers: two seconds for it.
    for p in pending {
        assert!(matches!(p.wait(), Err(Error::Timeout(_))));
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&gate2, b"open").unwrap();
    assert_eq!(slow.wait().unwrap().0, -6);
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    assert_eq!(
        logged(&log),
        vec![-1, -3],
        "expired items held by the worker ran"
    );
    assert_eq!(server.servlets().skipped, 20);
    for p in [&log, &gate1, &gate2] {
        let _ = std::fs::remove_file(p);
    }
}
