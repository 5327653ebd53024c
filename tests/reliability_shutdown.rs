//! Promise 5: shutdown under load. An explicit shutdown or a drop while
//! calls, submitted requests and streams are in flight finishes within the
//! grace period plus a bounded margin; every pending request gets its result
//! or `Error::Shutdown` (never a crash error, never a hang).

mod reliability_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpserver::{
    CallOptions, Error, Handle, ProcessServlet, Server, StreamOptions, ThreadServlet, sequential,
    worker_fn,
};
use reliability_support::*;

/// Outcomes seen by one load thread: (ok, shutdown errors).
type Tally = (u64, u64);

fn expect_ok_or_shutdown<T>(r: Result<T, Error>, tally: &mut Tally) {
    match r {
        Ok(_) => tally.0 += 1,
        Err(Error::Shutdown) => tally.1 += 1,
        Err(e) => panic!("expected a result or Error::Shutdown, got {e:?}"),
    }
}

/// Callers that keep calling until the server is gone, plus two streams.
fn load(h: &Handle<Op, Out>, op: fn(i64) -> Op) -> Vec<JoinHandle<Tally>> {
    let mut threads = Vec::new();
    for t in 0..6 {
        let h = h.clone();
        threads.push(std::thread::spawn(move || {
            let mut tally = (0, 0);
            let opts = CallOptions::default()
                .timeout(Duration::from_secs(60))
                .backpressure(false);
            for i in 0.. {
                let r = h.call_with(op(t * 1_000_000 + i), opts);
                let stop = matches!(r, Err(Error::Shutdown));
                expect_ok_or_shutdown(r, &mut tally);
                if stop {
                    break;
                }
            }
            tally
        }));
    }
    for _ in 0..2 {
        let h = h.clone();
        threads.push(std::thread::spawn(move || {
            let mut tally = (0, 0);
            let opts = StreamOptions::default().return_exceptions(true);
            for r in h.stream_with((0..i64::MAX).map(op), opts) {
                expect_ok_or_shutdown(r, &mut tally);
            }
            tally
        }));
    }
    threads
}

fn join_all(threads: Vec<JoinHandle<Tally>>, limit: Duration) -> Tally {
    let until = Instant::now() + limit;
    let mut total = (0, 0);
    for t in threads {
        while !t.is_finished() {
            assert!(
                Instant::now() < until,
                "a caller is still waiting after shutdown"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ok, sd) = t.join().unwrap();
        total = (total.0 + ok, total.1 + sd);
    }
    total
}

/// Explicit shutdown with fast items in flight: the flow drains within the
/// grace period, so everything admitted gets its result, and everything after
/// gets `Error::Shutdown`.
#[test]
fn explicit_shutdown_under_load_drains() {
    let flow = sequential![
        ProcessServlet::new(Chaos::new().sleep_us(200)).workers(2),
        ThreadServlet::new(worker_fn(|(x, _): Out| Op::Echo(x))),
        ProcessServlet::new(Chaos::new()),
    ];
    let server = Server::builder(flow)
        .capacity(64)
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .unwrap();
    // Twenty slower items first (admitted at once, still in flight when the
    // shutdown starts), then the load.
    let opts = CallOptions::default().timeout(Duration::from_secs(60));
    let submitted: Vec<_> = (0..20)
        .map(|i| server.submit(Op::Sleep(i, 40), opts).unwrap())
        .collect();
    let threads = load(&server.handle(), Op::Echo);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    server.shutdown();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let (ok, sd) = join_all(threads, Duration::from_secs(5));
    assert!(ok > 0 && sd >= 8, "ok {ok}, shutdown {sd}");
    for p in submitted {
        // Admitted before the shutdown, and drained: each has its value.
        assert!(p.wait().is_ok());
    }
}

/// Drop with slow items in flight: the grace period (200 ms) runs out, the
/// rest is cancelled; every caller returns promptly with a result or
/// `Error::Shutdown` (in particular, not with `WorkerCrashed` for the worker
/// processes the shutdown killed).
#[test]
fn drop_under_load_cancels_after_grace() {
    let flow = ProcessServlet::new(Chaos::new()).workers(2);
    let server = Server::builder(flow)
        .capacity(32)
        .shutdown_grace(Duration::from_millis(200))
        .start()
        .unwrap();
    // The slow items first (admitted at once), then the load.
    let opts = CallOptions::default().timeout(Duration::from_secs(60));
    let slow: Vec<_> = (0..4)
        .map(|i| server.submit(Op::Sleep(i, 30_000), opts).unwrap())
        .collect();
    let threads = load(&server.handle(), |x| Op::Sleep(x, 20));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    drop(server);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "drop took {took:?}");
    let (_, sd) = join_all(threads, Duration::from_secs(5));
    assert!(sd >= 8);
    for p in slow {
        let r = p.wait();
        assert!(
            matches!(r, Err(Error::Shutdown)),
            "{r:?} after {:?}",
            t.elapsed()
        );
    }
}

/// A thread worker stuck in user code cannot be killed: shutdown gives up on
/// it after a bounded wait, and every request still queued behind it, and a
/// caller still waiting for room, is answered with `Error::Shutdown` at once
/// instead of waiting for its time limit.
#[test]
fn shutdown_with_a_stuck_thread_worker_answers_everyone() {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let stuck = ThreadServlet::new(worker_fn(move |x: i64| {
        while !r.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        x
    }));
    let server = Server::builder(stuck)
        .capacity(9)
        .shutdown_grace(Duration::from_millis(100))
        .start()
        .unwrap();
    let opts = CallOptions::default().timeout(Duration::from_secs(600));
    let pending: Vec<_> = (0..8).map(|i| server.submit(i, opts).unwrap()).collect();
    let h = server.handle();
    let caller = std::thread::spawn(move || h.call_with(100, opts));
    // The server is now full: this one waits for room (for up to 30 s).
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 9));
    let h = server.handle();
    let wait_opts = CallOptions::default()
        .timeout(Duration::from_secs(30))
        .backpressure(false);
    let waiter = std::thread::spawn(move || h.call_with(101, wait_opts));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    server.shutdown();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    for p in pending {
        assert!(matches!(p.wait(), Err(Error::Shutdown)));
    }
    assert!(matches!(caller.join().unwrap(), Err(Error::Shutdown)));
    assert!(matches!(waiter.join().unwrap(), Err(Error::Shutdown)));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "callers answered promptly"
    );
    release.store(true, Ordering::Relaxed);
}

/// Async callers and an async stream during shutdown get results or
/// `Error::Shutdown`.
#[test]
fn async_callers_during_shutdown_get_an_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let server = Server::builder(ProcessServlet::new(Chaos::new().sleep_us(500)).workers(2))
        .capacity(32)
        .shutdown_grace(Duration::from_millis(300))
        .start()
        .unwrap();
    let h = server.handle();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let h = h.clone();
            rt.spawn(async move {
                let mut tally = (0u64, 0u64);
                let opts = CallOptions::default()
                    .timeout(Duration::from_secs(60))
                    .backpressure(false);
                for i in 0.. {
                    let r = h.async_call_with(Op::Sleep(t * 1000 + i, 5), opts).await;
                    let stop = matches!(r, Err(Error::Shutdown));
                    expect_ok_or_shutdown(r, &mut tally);
                    if stop {
                        break;
                    }
                }
                tally
            })
        })
        .collect();
    let stream_task = {
        let h = h.clone();
        rt.spawn(async move {
            use futures::StreamExt;
            let input = futures::stream::iter((0..i64::MAX).map(Op::Echo));
            let opts = StreamOptions::default().return_exceptions(true);
            let mut s = h.async_stream(input, opts);
            let mut tally = (0u64, 0u64);
            // The input is endless: the stream must end by itself once the
            // server is shut down.
            while let Some(r) = s.next().await {
                expect_ok_or_shutdown(r, &mut tally);
            }
            tally
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    server.shutdown();
    rt.block_on(async {
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
            stream_task.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("async callers answered after shutdown");
    });
}
