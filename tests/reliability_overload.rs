//! Promise 6 (overload) and 10 (bounded queues).
//!
//! With capacity C and a flood of concurrent callers, calls beyond C fail at
//! once with `Error::BacklogFull` and the backlog never exceeds C. A fast
//! stage feeding a slow one keeps every queue and the memory bounded.
//! (The ≥10-million-item soak run is `examples/soak.rs`.)

mod reliability_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mpserver::metrics::ServletSnapshot;
use mpserver::{
    BoxServlet, CallOptions, Error, Handle, ProcessServlet, Server, ServerBacklogFull,
    ThreadServlet, sequential, worker_fn,
};
use reliability_support::*;

/// Samples the backlog (and the deepest queue) until stopped; returns the
/// largest values seen.
fn watch<In: Send + 'static, O: Send + 'static>(
    h: Handle<In, O>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let (mut backlog, mut depth) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            backlog = backlog.max(h.backlog());
            depth = depth.max(max_depth(&h.servlets()));
            std::thread::sleep(Duration::from_micros(200));
        }
        (backlog, depth)
    })
}

fn max_depth(s: &ServletSnapshot) -> usize {
    s.members
        .iter()
        .map(max_depth)
        .fold(s.queue_depth.unwrap_or(0), usize::max)
}

/// The server is filled with C requests that cannot finish (their worker
/// waits for a gate); a flood of callers from many threads then gets
/// `BacklogFull` for every call, while the gate is still closed (so none of
/// them waited for room); the backlog stays at C.
#[test]
fn flood_beyond_capacity_gets_backlog_full_at_once() {
    const C: usize = 8;
    let gate = temp_path("flood-gate");
    for process in [false, true] {
        let servlet: BoxServlet<Op, Out> = if process {
            Box::new(ProcessServlet::new(Chaos::new()).workers(2))
        } else {
            Box::new(ThreadServlet::new(Chaos::new()).workers(2))
        };
        let server = Server::builder(servlet).capacity(C).start().unwrap();
        let opts = CallOptions::default().timeout(Duration::from_secs(30));
        let held: Vec<_> = (0..C as i64)
            .map(|i| server.submit(Op::Gate(i, gate.clone()), opts).unwrap())
            .collect();
        assert_eq!(server.backlog(), C);
        let full = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..16)
            .map(|t| {
                let (h, full) = (server.handle(), full.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        match h.call(Op::Echo(t * 100 + i)) {
                            Err(Error::BacklogFull(ServerBacklogFull { capacity, .. })) => {
                                assert_eq!(capacity, C);
                                full.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("expected BacklogFull, got {other:?}"),
                        }
                        assert!(h.backlog() <= C);
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(full.load(Ordering::Relaxed), 16 * 50);
        assert!(
            !gate.exists(),
            "every rejection came while the server was full"
        );
        assert_eq!(server.backlog(), C);
        std::fs::write(&gate, b"open").unwrap();
        for (i, p) in held.into_iter().enumerate() {
            assert_eq!(p.wait().unwrap().0, 2 * i as i64);
        }
        assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
        assert_eq!(server.call(Op::Echo(1)).unwrap().0, 2);
        let _ = std::fs::remove_file(&gate);
    }
}

/// A flood of callers against a working server: each call either succeeds
/// or is rejected with `BacklogFull`; the backlog never exceeds C, and
/// returns to zero.
#[test]
fn flood_against_a_working_server_never_exceeds_capacity() {
    const C: usize = 16;
    let server = Server::builder(ProcessServlet::new(Chaos::new().sleep_us(500)).workers(2))
        .capacity(C)
        .start()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(server.handle(), stop.clone());
    let (ok, full) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..24)
        .map(|t| {
            let (h, ok, full) = (server.handle(), ok.clone(), full.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    let x = t * 1000 + i;
                    match h.call(Op::Echo(x)) {
                        Ok((y, _)) => {
                            assert_eq!(y, 2 * x);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::BacklogFull(_)) => {
                            full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (max_backlog, max_queue) = watcher.join().unwrap();
    let (ok, full) = (ok.load(Ordering::Relaxed), full.load(Ordering::Relaxed));
    assert_eq!(ok + full, 24 * 40);
    assert!(ok > 0 && full > 0, "ok {ok}, full {full}");
    assert!(max_backlog <= C, "backlog reached {max_backlog}");
    assert!(max_queue <= C, "queue reached {max_queue}");
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
    let stats = server.request_stats();
    assert_eq!(stats.ok, ok as u64);
}

/// Promise 10: a fast process stage feeding a slow one. Back-pressure reaches
/// the stream: the backlog stays within capacity, every queue between stages
/// stays within its bound, and the server's memory does not grow with the
/// number of items.
#[test]
fn fast_stage_feeding_slow_stage_stays_bounded() {
    const C: usize = 32;
    let flow = sequential![
        ProcessServlet::new(Chaos::new()).name("fast"),
        ThreadServlet::new(worker_fn(|(x, _): Out| Op::Sleep(x, 1))),
        ProcessServlet::new(Chaos::new()).name("slow"),
    ];
    let server = Server::builder(flow).capacity(C).start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(server.handle(), stop.clone());
    let rss0 = rss_bytes();
    let mut n = 0i64;
    for r in server.stream((0..1500).map(Op::Echo)) {
        assert_eq!(r.unwrap().0, 4 * n);
        n += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (max_backlog, max_queue) = watcher.join().unwrap();
    assert_eq!(n, 1500);
    assert!(max_backlog <= C, "backlog reached {max_backlog}");
    assert!(max_queue <= C, "a queue reached {max_queue}");
    assert!(
        max_backlog >= C / 2,
        "the stream kept the server full ({max_backlog})"
    );
    let grew = rss_bytes().saturating_sub(rss0);
    assert!(grew < 64 << 20, "server memory grew by {grew} bytes");
    assert!(wait_until(Duration::from_secs(5), || server.backlog() == 0));
}

/// The queue-depth gauge of a process servlet counts every queued item once,
/// also while supervisors move items from the queue to the spill queue and
/// take them from there: it never reads above the capacity. Four workers that
/// each hold at most one item keep items spilling (a supervisor whose worker
/// has no credit gives the item back to the spill queue); the gauge is read
/// without pause while a flood of callers keeps the server full.
#[test]
fn queue_depth_counts_spilled_items_once() {
    const C: usize = 8;
    let server = Server::builder(
        ProcessServlet::new(Chaos::new().sleep_us(200))
            .workers(4)
            .max_inflight(1),
    )
    .capacity(C)
    .start()
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (h, stop) = (server.handle(), stop.clone());
        std::thread::spawn(move || {
            let mut depth = 0;
            while !stop.load(Ordering::Relaxed) {
                depth = depth.max(h.servlets().queue_depth.unwrap_or(0));
            }
            depth
        })
    };
    let callers: Vec<_> = (0..16)
        .map(|t| {
            let h = server.handle();
            std::thread::spawn(move || {
                let opts = CallOptions::default().timeout(Duration::from_secs(30));
                for i in 0..150 {
                    let x = t * 1000 + i;
                    match h.call_with(Op::Echo(x), opts) {
                        Ok((y, _)) => assert_eq!(y, 2 * x),
                        Err(Error::BacklogFull(_)) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let max_queue = watcher.join().unwrap();
    assert!(
        max_queue <= C,
        "queue depth read {max_queue} (capacity {C})"
    );
    assert!(wait_until(Duration::from_secs(5), || server
        .servlets()
        .queue_depth
        == Some(0)));
}
