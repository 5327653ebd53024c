//! The server: calls, timeouts, back-pressure, concurrency, cancellation,
//! start-up failures, CPU pinning, debug info, shutdown.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mpserver::Error;
use mpserver::error::StartError;
use mpserver::prelude::*;
use support::*;

#[test]
fn timeout_of_a_slow_process_worker_states_enqueue_and_total() {
    let server = Server::start(ProcessServlet::new(Slow { ms: 400, log: None })).unwrap();
    let t = Instant::now();
    let err = server
        .call_with(
            1,
            CallOptions::default().timeout(Duration::from_millis(100)),
        )
        .unwrap_err();
    let waited = t.elapsed();
    let Error::Timeout(te) = &err else {
        panic!("expected timeout, got {err:?}")
    };
    assert!(te.total >= Duration::from_millis(100));
    assert!(te.enqueue <= te.total);
    assert!(!te.while_enqueuing);
    assert!(
        waited < Duration::from_millis(390),
        "the caller was released at the deadline"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("timed out after") && msg.contains("enqueuing"),
        "{msg}"
    );
    // The server still answers.
    assert_eq!(server.call(2).unwrap(), 2);
}

#[test]
fn timeout_of_an_ensemble() {
    let flow = ensemble![
        ProcessServlet::new(Double),
        ProcessServlet::new(Slow { ms: 500, log: None }),
    ];
    let server = Server::start(flow).unwrap();
    let err = server
        .call_with(3, CallOptions::default().timeout(Duration::from_millis(80)))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(
        server
            .call_with(4, CallOptions::default().timeout(Duration::from_secs(5)))
            .unwrap(),
        vec![8, 4]
    );
}

#[test]
fn backpressure_with_small_capacity() {
    let server = Server::builder(ThreadServlet::new(Slow { ms: 200, log: None }))
        .capacity(2)
        .start()
        .unwrap();
    let a = server.submit(1, CallOptions::default()).unwrap();
    let b = server.submit(2, CallOptions::default()).unwrap();
    assert_eq!(server.backlog(), 2);
    // Back-pressure on: fails at once.
    let t = Instant::now();
    let err = server.call(3).unwrap_err();
    assert!(
        matches!(err, Error::BacklogFull(ref f) if f.capacity == 2),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(100));
    // Back-pressure off: waits for room, within the timeout.
    let v = server
        .call_with(
            4,
            CallOptions::default()
                .timeout(Duration::from_secs(10))
                .backpressure(false),
        )
        .unwrap();
    assert_eq!(v, 4);
    // ...and is refused with `BacklogFull`, saying how long it waited, when
    // room does not come in time (issue 16: not a time-out, since it was
    // never admitted).
    let c = server.submit(5, CallOptions::default()).unwrap();
    let d = server.submit(6, CallOptions::default());
    let blocked = server.call_with(
        7,
        CallOptions::default()
            .timeout(Duration::from_millis(50))
            .backpressure(false),
    );
    if let Ok(d) = d {
        assert!(
            matches!(blocked, Err(Error::BacklogFull(ref f))
                if f.capacity == 2 && f.waited >= Duration::from_millis(50)),
            "{blocked:?}"
        );
        assert_eq!(d.wait().unwrap(), 6);
    }
    assert_eq!(
        (a.wait().unwrap(), b.wait().unwrap(), c.wait().unwrap()),
        (1, 2, 5)
    );
    wait_for(|| server.backlog() == 0);
}

#[test]
fn concurrent_calls_from_ten_threads() {
    let server = Server::start(ProcessServlet::new(Double).workers(2)).unwrap();
    std::thread::scope(|s| {
        for t in 0..10i64 {
            let server = &server;
            s.spawn(move || {
                for i in 0..100 {
                    let x = t * 1000 + i;
                    assert_eq!(server.call(x).unwrap(), 2 * x);
                }
            });
        }
    });
    assert_eq!(server.request_stats().ok, 1000);
}

#[test]
fn concurrent_async_calls_from_fifty_tasks() {
    let server = Server::start(ProcessServlet::new(Double).workers(2)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let handle = server.handle();
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for t in 0..50i64 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let x = t * 100 + i;
                    assert_eq!(h.async_call(x).await.unwrap(), 2 * x);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn async_timeout_without_a_runtime_timer() {
    // futures' simple executor has no timer: the server enforces the deadline.
    let server = Server::start(ProcessServlet::new(Slow { ms: 300, log: None })).unwrap();
    let t = Instant::now();
    let r = futures::executor::block_on(
        server.async_call_with(1, CallOptions::default().timeout(Duration::from_millis(50))),
    );
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(290));
}

#[test]
fn cancelled_items_are_not_executed() {
    let log = temp_path("cancel");
    // One slow worker; 20 requests with a deadline that lets only the first
    // couple start: the rest are skipped, not run.
    let server = Server::start(ProcessServlet::new(Slow {
        ms: 100,
        log: Some(log.clone()),
    }))
    .unwrap();
    let pending: Vec<_> = (0..20)
        .map(|i| {
            server
                .submit(
                    i,
                    CallOptions::default().timeout(Duration::from_millis(150)),
                )
                .unwrap()
        })
        .collect();
    let results: Vec<_> = pending.into_iter().map(|p| p.wait()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let timeouts = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Timeout(_))))
        .count();
    assert_eq!(ok + timeouts, 20);
    assert!(ok <= 2, "{ok} finished");
    wait_for(|| server.backlog() == 0);
    let calls = count_lines(&log);
    assert!(
        calls <= 4,
        "{calls} calls were made for 20 requests of which {ok} finished"
    );
    // Thread workers skip cancelled items too; dropping a Pending cancels it.
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    let server = Server::start(ThreadServlet::new(worker_fn(move |x: i64| {
        c.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        x
    })))
    .unwrap();
    let keep = server.submit(0, CallOptions::default()).unwrap();
    let dropped: Vec<_> = (1..10)
        .map(|i| server.submit(i, CallOptions::default()).unwrap())
        .collect();
    drop(dropped);
    assert_eq!(keep.wait().unwrap(), 0);
    wait_for(|| server.backlog() == 0);
    assert!(
        counter.load(Ordering::SeqCst) <= 2,
        "{}",
        counter.load(Ordering::SeqCst)
    );
    let _ = std::fs::remove_file(log);
}

#[test]
fn worker_init_failure_fails_start_promptly_without_leftovers() {
    let before = all_children();
    let t = Instant::now();
    let flow = ensemble![
        ProcessServlet::new(Double).workers(2),
        ProcessServlet::new(BadInit { panic: false }),
    ];
    let err = Server::start(flow).expect_err("start must fail");
    assert!(t.elapsed() < Duration::from_secs(5));
    let Error::Start(StartError::Init { worker, error }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(worker.name, "BadInit");
    assert_eq!(error.type_name(), "ModelNotFound");
    assert_eq!(error.message(), "no model at /nowhere");
    let after = all_children();
    assert!(
        after.iter().all(|p| before.contains(p)),
        "left behind: {after:?}"
    );

    let err = Server::start(ProcessServlet::new(BadInit { panic: true }))
        .err()
        .unwrap();
    assert!(err.to_string().contains("init exploded"), "{err}");
    let err = Server::start(ThreadServlet::new(BadInit { panic: true }))
        .err()
        .unwrap();
    assert!(err.to_string().contains("init exploded"), "{err}");
}

#[test]
fn cpu_pins_are_visible_inside_workers() {
    let cpus = mpserver::affinity::current_cpus();
    let first = cpus[0];
    let last = *cpus.last().unwrap();
    let flow = ProcessServlet::new(serde_json::from_str::<WhereAmI>("{}").unwrap()).cpus([
        mpserver::CpuAffinity::cpu(first),
        mpserver::CpuAffinity::set([first, last]),
    ]);
    let server = Server::start(flow).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let ps: Vec<_> = (0..4)
            .map(|_| server.submit((), CallOptions::default()).unwrap())
            .collect();
        for p in ps {
            let (cpus, index, _) = p.wait().unwrap();
            seen.insert(index, cpus);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen[&0], vec![first]);
    let mut want = vec![first, last];
    want.dedup();
    assert_eq!(seen[&1], want);
    // An unavailable CPU is a start error.
    let err = Server::start(ProcessServlet::new(Double).cpus([100_000]))
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Start(StartError::Affinity(_))),
        "{err:?}"
    );
    // main_cpu pins the server's own threads.
    let server = Server::builder(ThreadServlet::new(Double))
        .main_cpu(first)
        .start()
        .unwrap();
    assert_eq!(server.call(1).unwrap(), 2);
}

#[test]
fn debug_info_is_serialisable_and_shows_workers() {
    let flow = sequential![
        ProcessServlet::new(Double).workers(2),
        ThreadServlet::new(Slow { ms: 300, log: None }),
    ];
    let server = Server::start(flow).unwrap();
    let p = server.submit(1, CallOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let info = server.debug_info();
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["capacity"], 256);
    assert_eq!(json["backlog"], 1);
    assert_eq!(json["state"], "running");
    let procs = &json["servlets"]["members"][0];
    assert_eq!(procs["kind"], "process");
    assert_eq!(procs["workers"].as_array().unwrap().len(), 2);
    assert!(procs["workers"][0]["alive"].as_bool().unwrap());
    assert!(procs["workers"][0]["pid"].as_u64().is_some());
    assert_eq!(json["oldest_requests"].as_array().unwrap().len(), 1);
    assert_eq!(p.wait().unwrap(), 2);
}

#[test]
fn shutdown_leaves_no_worker_process() {
    let before = all_children();
    let server = Server::start(ensemble![
        ProcessServlet::new(Double).workers(3),
        ProcessServlet::new(Slow { ms: 1, log: None }),
    ])
    .unwrap();
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 4);
    assert_eq!(server.call(1).unwrap(), vec![2, 1]);
    server.shutdown();
    // Only this server's processes: other tests of this binary start and
    // stop servers of their own at the same time.
    let after = all_children();
    assert!(
        after
            .iter()
            .all(|p| before.contains(p) || !pids.contains(p)),
        "left: {after:?}"
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} remains"
        );
    }
}

#[test]
fn calls_after_shutdown_fail_with_shutdown() {
    let server = Server::start(ThreadServlet::new(Double)).unwrap();
    let handle = server.handle();
    assert_eq!(handle.call(1).unwrap(), 2);
    drop(server);
    assert!(matches!(handle.call(1), Err(Error::Shutdown)));
}

#[test]
fn worker_errors_carry_type_message_and_worker() {
    let server = Server::start(ProcessServlet::new(FailOn { bad: 9 }).name("Checker")).unwrap();
    let err = server.call(9).unwrap_err();
    let Error::Worker { worker, error } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(worker.name, "Checker");
    assert_eq!(worker.index, 0);
    assert!(worker.pid.is_some());
    assert!(
        error.type_name().ends_with("support::NotAllowed"),
        "{}",
        error.type_name()
    );
    assert_eq!(err.kind(), "worker");
    assert!(err.to_string().contains("Checker#0"), "{err}");
    assert_eq!(server.call(1).unwrap(), 2);
}

/// Streams keep the server full and refill their windows the moment room
/// frees; callers waiting for room (back-pressure off) still get it in turn,
/// long before the streams end, blocking and async alike.
#[test]
fn waiting_callers_get_room_ahead_of_refilling_streams() {
    use std::sync::atomic::AtomicBool;
    let server = Server::builder(
        ThreadServlet::new(worker_fn(|x: u64| {
            std::thread::sleep(Duration::from_micros(300));
            x
        }))
        .workers(2),
    )
    .capacity(4)
    .start()
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let streamed = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let h = server.handle();
            let (done, streamed) = (done.clone(), streamed.clone());
            std::thread::spawn(move || {
                for r in h.stream(0..3000u64) {
                    r.unwrap();
                    streamed.fetch_add(1, Ordering::Relaxed);
                }
                done.store(true, Ordering::SeqCst);
            })
        })
        .collect();
    wait_for(|| streamed.load(Ordering::Relaxed) > 100);
    let opts = CallOptions::default()
        .timeout(Duration::from_secs(60))
        .backpressure(false);
    for i in 0..5u64 {
        assert_eq!(server.call_with(1000 + i, opts).unwrap(), 1000 + i);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..5u64 {
        let y = rt.block_on(server.async_call_with(2000 + i, opts)).unwrap();
        assert_eq!(y, 2000 + i);
    }
    assert!(
        !done.load(Ordering::SeqCst),
        "the calls were served while the streams still ran ({} of 9000 streamed)",
        streamed.load(Ordering::Relaxed)
    );
    for s in streams {
        s.join().unwrap();
    }
}

#[test]
fn a_push_that_times_out_counts_one_timeout() {
    // Each push overruns its deadline, so the request's deadline passes
    // while it is still being pushed.
    let never = NeverRoom {
        overrun: Duration::from_millis(100),
        ..NeverRoom::default()
    };
    let server = Server::start(never).unwrap();
    let n = 3;
    for _ in 0..n {
        let err = server
            .call_with(1, CallOptions::default().timeout(Duration::from_millis(50)))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout(t) if t.while_enqueuing),
            "{err:?}"
        );
    }
    let stats = server.request_stats();
    let timeouts: u64 = stats
        .errors
        .iter()
        .filter(|(k, _)| k == "timeout")
        .map(|(_, c)| c)
        .sum();
    assert_eq!(stats.submitted, n);
    assert_eq!(timeouts, n, "each timed-out call counted once: {stats:?}");
}
