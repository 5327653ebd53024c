//! Large values cross to and from worker processes through shared memory
//! (issue 15 item 1): exact round trips around the threshold, in both
//! directions and in mixed batches; a worker killed while its items hold
//! slots fails just those items and leaks no slot; concurrent large calls
//! beyond the slot count do not deadlock.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mpserver::prelude::*;
use mpserver::servlet::process::ShmSettings;
use mpserver::{Bytes, Error};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Input: data to reverse, and how many bytes of output to make
/// (`None`: the reversed data). While `gate` exists, the call waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    data: Bytes,
    out_len: Option<usize>,
    gate: Option<PathBuf>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Reverse;

fn pattern(n: usize, seed: usize) -> Bytes {
    (0..n).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

fn reversed(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.reverse();
    v
}

impl Worker for Reverse {
    type Input = Job;
    type Output = Bytes;
    fn call(&mut self, x: Job) -> Result<Bytes, WorkerError> {
        if let Some(g) = &x.gate {
            while g.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(match x.out_len {
            None => reversed(&x.data).into(),
            Some(n) => pattern(n, x.data.len()),
        })
    }
}

fn job(n: usize, seed: usize) -> Job {
    Job {
        data: pattern(n, seed),
        out_len: None,
        gate: None,
    }
}

fn slots_in_use(server: &Server<Job, Bytes>) -> usize {
    server
        .servlets()
        .workers
        .iter()
        .map(|w| w.shm_slots_in_use)
        .sum()
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn temp_path(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("mpserver-shm-{tag}-{}-{n}", std::process::id()))
}

const T: usize = 64 << 10;

/// Sizes around the default threshold (64 KiB), up to past a slot (4 MiB).
fn sizes() -> Vec<usize> {
    vec![
        0,
        1,
        1000,
        T - 16,
        T - 1,
        T,
        T + 1,
        T + 17,
        300_000,
        1 << 20,
        (4 << 20) - 64,
        (4 << 20) + 1,
        5 << 20,
    ]
}

#[test]
fn large_values_round_trip_exactly_in_both_directions() {
    let server = Server::start(ProcessServlet::new(Reverse).max_inflight(4)).unwrap();
    for (i, n) in sizes().into_iter().enumerate() {
        let x = job(n, i);
        let want = reversed(&x.data);
        let got = server.call(x).unwrap();
        assert_eq!(got.len(), n);
        assert!(got[..] == want[..], "size {n}: result differs");
        // Small input, large output, and the other way round.
        let y = server
            .call(Job {
                data: pattern(7, i),
                out_len: Some(n),
                gate: None,
            })
            .unwrap();
        assert!(y[..] == pattern(n, 7)[..], "small in, {n} out");
        let z = server
            .call(Job {
                data: pattern(n, i),
                out_len: Some(3),
                gate: None,
            })
            .unwrap();
        assert!(z[..] == pattern(3, n)[..], "{n} in, small out");
    }
    assert!(
        wait_until(Duration::from_secs(5), || slots_in_use(&server) == 0),
        "slots still in use: {}",
        slots_in_use(&server)
    );
}

#[test]
fn results_are_the_same_with_and_without_shared_memory() {
    let with = Server::start(ProcessServlet::new(Reverse).shm_threshold(1000)).unwrap();
    let without = Server::start(ProcessServlet::new(Reverse).shared_memory(None)).unwrap();
    for (i, n) in [999usize, 1000, 1001, 50_000, 2 << 20]
        .into_iter()
        .enumerate()
    {
        let a = with.call(job(n, i)).unwrap();
        let b = without.call(job(n, i)).unwrap();
        assert_eq!(a, b, "size {n}");
    }
}

#[test]
fn batches_mix_small_and_large_items() {
    let servlet = ProcessServlet::new(Reverse)
        .batch_size(6)
        .batch_wait_time(Duration::from_millis(20));
    let server = Server::start(servlet).unwrap();
    let jobs: Vec<Job> = (0..40)
        .map(|i| job(if i % 3 == 0 { 200_000 + i } else { i * 10 }, i))
        .collect();
    let want: Vec<Vec<u8>> = jobs.iter().map(|j| reversed(&j.data)).collect();
    let got: Vec<Bytes> = server.stream(jobs).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g[..] == w[..], "item {i}");
    }
    assert!(server.servlets().batches > 0);
    assert!(wait_until(Duration::from_secs(5), || slots_in_use(&server) == 0));
}

#[test]
fn a_worker_killed_while_holding_slots_frees_them() {
    let gate = temp_path("gate");
    std::fs::write(&gate, b"").unwrap();
    let server = Server::start(ProcessServlet::new(Reverse).max_inflight(4)).unwrap();
    let pid = server.worker_pids()[0];
    let outcomes = std::thread::scope(|s| {
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let server = &server;
                let gate = gate.clone();
                s.spawn(move || {
                    server.call(Job {
                        data: pattern(500_000, i),
                        out_len: None,
                        gate: Some(gate),
                    })
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || slots_in_use(&server) == 3),
            "three large items should hold three slots, saw {}",
            slots_in_use(&server)
        );
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        // An item whose write had not begun when the worker died goes to
        // the restarted worker (it never reached this one): let it pass.
        let _ = std::fs::remove_file(&gate);
        calls
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut crashed = 0;
    for (i, r) in outcomes.iter().enumerate() {
        match r {
            Err(Error::WorkerCrashed(_)) => crashed += 1,
            Ok(y) => assert!(y[..] == reversed(&pattern(500_000, i))[..], "item {i}"),
            other => panic!("expected WorkerCrashed, got {other:?}"),
        }
    }
    assert!(crashed >= 1, "the item the worker ran failed as crashed");
    // The restarted worker serves large values, and no slot stays taken.
    assert!(wait_until(Duration::from_secs(10), || {
        server.worker_pids().first().is_some_and(|p| *p != pid)
    }));
    for i in 0..5 {
        let x = job(700_000, i);
        let want = reversed(&x.data);
        assert!(server.call(x).unwrap()[..] == want[..]);
    }
    assert!(
        wait_until(Duration::from_secs(5), || slots_in_use(&server) == 0),
        "slots leaked: {}",
        slots_in_use(&server)
    );
}

#[test]
fn concurrent_large_calls_beyond_the_slots_do_not_deadlock() {
    let settings = ShmSettings {
        threshold: 10_000,
        slots: 2,
        slot_size: 1 << 20,
    };
    let servlet = ProcessServlet::new(Reverse)
        .workers(2)
        .max_inflight(8)
        .shared_memory(Some(settings));
    let server = Server::start(servlet).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let done = std::thread::scope(|s| {
        for t in 0..12 {
            let server = &server;
            let tx = tx.clone();
            s.spawn(move || {
                for k in 0..8 {
                    let x = job(100_000 + t * 1000 + k, t * 100 + k);
                    let want = reversed(&x.data);
                    let got = server.call(x).unwrap();
                    assert!(got[..] == want[..]);
                }
                let _ = tx.send(());
            });
        }
        drop(tx);
        let until = Instant::now() + Duration::from_secs(120);
        let mut n = 0;
        while n < 12 {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        n
    });
    assert_eq!(done, 12, "calls stuck");
    assert!(wait_until(Duration::from_secs(5), || slots_in_use(&server) == 0));
}

#[test]
fn each_worker_maps_its_own_region() {
    let server = Server::start(ProcessServlet::new(Reverse).workers(2)).unwrap();
    for pid in server.worker_pids() {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert_eq!(
            maps.matches("mpserver-shm").count(),
            1,
            "worker {pid} maps one region"
        );
    }
    let off = Server::start(ProcessServlet::new(Reverse).shared_memory(None)).unwrap();
    for pid in off.worker_pids() {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(!maps.contains("mpserver-shm"), "no region when off");
    }
}
