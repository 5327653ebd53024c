//! Promise 11: concurrency correctness of the request path. Many threads and
//! tasks call at once, with deadlines racing completions and callers walking
//! away; afterwards the capacity accounting is back to zero and the counters
//! add up.

mod reliability_support;

use std::time::Duration;

use mpserver::{CallOptions, Error, ProcessServlet, Server, ThreadServlet, worker_fn};
use reliability_support::*;

fn errors_of(stats: &mpserver::server::RequestStats, kind: &str) -> u64 {
    stats
        .errors
        .iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, c)| *c)
        .sum()
}

/// Sixteen threads, 400 calls each, on a thread servlet whose items take
/// 0–300 µs, with timeouts of 50–400 µs and back-pressure on: results,
/// timeouts and rejections race. Every result is the caller's own; the
/// server's counters match what callers saw; the backlog returns to zero.
#[test]
fn racing_timeouts_and_rejections_keep_accounting_exact() {
    let w = worker_fn(|x: u64| {
        let us = x % 300;
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        x * 3
    });
    let server = Server::builder(ThreadServlet::new(w).workers(4))
        .capacity(24)
        .start()
        .unwrap();
    let callers: Vec<_> = (0..16u64)
        .map(|t| {
            let h = server.handle();
            std::thread::spawn(move || {
                let mut seen = [0u64; 3];
                for i in 0..400u64 {
                    let x = t * 100_000 + i * 7;
                    let timeout = Duration::from_micros(50 + (x * 31) % 350);
                    let opts = CallOptions::default()
                        .timeout(timeout)
                        .backpressure(i % 2 == 0);
                    match h.call_with(x, opts) {
                        Ok(y) => {
                            assert_eq!(y, 3 * x);
                            seen[0] += 1;
                        }
                        Err(Error::Timeout(_)) => seen[1] += 1,
                        Err(Error::BacklogFull(_)) => seen[2] += 1,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = [0u64; 3];
    for c in callers {
        let s = c.join().unwrap();
        for k in 0..3 {
            seen[k] += s[k];
        }
    }
    assert_eq!(seen.iter().sum::<u64>(), 16 * 400);
    assert!(seen[0] > 0 && seen[1] > 0, "ok/timeout/full = {seen:?}");
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    let stats = server.request_stats();
    assert_eq!(stats.ok, seen[0]);
    assert_eq!(errors_of(&stats, "timeout"), seen[1]);
    assert_eq!(errors_of(&stats, "backlog_full"), seen[2]);
    assert!(server.debug_info().oldest_requests.is_empty());
}

/// Async tasks on a multi-threaded runtime call a process servlet; a third of
/// them are abandoned mid-flight (their future dropped by a tokio timeout),
/// which cancels the request. Completed results are correct and the backlog
/// returns to zero.
#[test]
fn abandoned_async_calls_release_capacity() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let server = Server::builder(ProcessServlet::new(Chaos::new()).workers(2))
        .capacity(32)
        .start()
        .unwrap();
    let h = server.handle();
    let (ok, abandoned) = rt.block_on(async move {
        let tasks: Vec<_> = (0..64i64)
            .map(|t| {
                let h = h.clone();
                tokio::spawn(async move {
                    let (mut ok, mut abandoned) = (0u32, 0u32);
                    for i in 0..40i64 {
                        let x = t * 1000 + i;
                        let op = Op::Sleep(x, (x % 3) as u64);
                        let opts = CallOptions::default()
                            .timeout(Duration::from_secs(30))
                            .backpressure(false);
                        let call = h.async_call_with(op, opts);
                        if x % 3 == 0 {
                            let r = tokio::time::timeout(Duration::from_micros(500), call).await;
                            match r {
                                Ok(r) => assert_eq!(r.unwrap().0, 2 * x),
                                Err(_) => abandoned += 1,
                            }
                        } else {
                            assert_eq!(call.await.unwrap().0, 2 * x);
                            ok += 1;
                        }
                    }
                    (ok, abandoned)
                })
            })
            .collect();
        let (mut ok, mut abandoned) = (0, 0);
        for t in tasks {
            let (o, a) = t.await.unwrap();
            ok += o;
            abandoned += a;
        }
        (ok, abandoned)
    });
    assert!(ok > 0 && abandoned > 0, "ok {ok}, abandoned {abandoned}");
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    assert!(
        server.servlets().skipped > 0,
        "abandoned requests were skipped"
    );
}

/// Streams and single calls from many threads at once on one server: every
/// stream sees its own results in its own order.
#[test]
fn concurrent_streams_stay_separate_and_ordered() {
    let server = Server::builder(ProcessServlet::new(Chaos::new()).workers(2))
        .capacity(48)
        .start()
        .unwrap();
    let streams: Vec<_> = (0..6i64)
        .map(|t| {
            let h = server.handle();
            std::thread::spawn(move || {
                let base = t * 1_000_000;
                let out: Vec<i64> = h
                    .stream((0..2000).map(move |i| Op::Echo(base + i)))
                    .map(|r| r.unwrap().0)
                    .collect();
                let want: Vec<i64> = (0..2000).map(|i| 2 * (base + i)).collect();
                assert_eq!(out, want);
            })
        })
        .collect();
    let callers: Vec<_> = (0..4i64)
        .map(|t| {
            let h = server.handle();
            std::thread::spawn(move || {
                let opts = CallOptions::default()
                    .timeout(Duration::from_secs(30))
                    .backpressure(false);
                for i in 0..300 {
                    let x = -(t * 10_000 + i) - 1;
                    assert_eq!(h.call_with(Op::Echo(x), opts).unwrap().0, 2 * x);
                }
            })
        })
        .collect();
    for t in streams.into_iter().chain(callers) {
        t.join().unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    assert_eq!(server.request_stats().ok, 6 * 2000 + 4 * 300);
}
