//! Large values cross to and from worker processes through shared memory
//! (issue 15 item 1): exact round trips around the threshold, in both
//! directions and in mixed batches; a worker killed while its items hold
//! slots fails just those items and leaks no slot; concurrent large calls
//! beyond the slot count do not deadlock. A large `Bytes` input is a view
//! of its slot in the worker, not a copy; a viewed slot is never reused
//! while the view lives, and a killed worker's views free their slots.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mpserver::prelude::*;
use mpserver::servlet::process::ShmSettings;
use mpserver::{Bytes, Codec, Error};
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
    // Results kept as views of their slots keep them until dropped.
    drop(got);
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
    // A result the restarted worker made may be a view of its slot: it
    // keeps that slot until dropped, and is no leak.
    drop(outcomes);
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

// ---- Zero-copy `Bytes` in the worker (issue 15 item 1, byte payloads) ----

/// Whether `p` lies in this process's mapping of its shared-memory region.
fn in_region(p: *const u8) -> bool {
    let p = p as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("mpserver-shm"))
        .filter_map(|l| {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .any(|(a, b)| a <= p && p < b)
}

/// Says where its input's bytes are: in the shared-memory region (a view)
/// or not (a copy); and their sum, to check the content.
#[derive(Clone, Serialize, Deserialize)]
struct WhereIs;

impl Worker for WhereIs {
    type Input = Bytes;
    type Output = (bool, u64);
    fn call(&mut self, x: Bytes) -> Result<(bool, u64), WorkerError> {
        Ok((in_region(x.as_ptr()), x.iter().map(|b| *b as u64).sum()))
    }
}

/// The same with `serde_bytes::ByteBuf`, which is always copied.
#[derive(Clone, Serialize, Deserialize)]
struct WhereIsBuf;

impl Worker for WhereIsBuf {
    type Input = serde_bytes::ByteBuf;
    type Output = (bool, u64);
    fn call(&mut self, x: serde_bytes::ByteBuf) -> Result<(bool, u64), WorkerError> {
        Ok((in_region(x.as_ptr()), x.iter().map(|b| *b as u64).sum()))
    }
}

fn sum(b: &[u8]) -> u64 {
    b.iter().map(|b| *b as u64).sum()
}

#[test]
fn a_large_bytes_input_is_a_view_of_its_slot_not_a_copy() {
    for codec in [Codec::Postcard, Codec::MessagePack] {
        let server = Server::start(ProcessServlet::new(WhereIs).codec(codec)).unwrap();
        for n in [T + 1, 300_000, 1 << 20] {
            let x = pattern(n, 3);
            let want = sum(&x);
            assert_eq!(
                server.call(x).unwrap(),
                (true, want),
                "{codec:?}, {n} bytes: a view of the slot"
            );
        }
        // Below the threshold it crosses in the frame, and is copied.
        let x = pattern(1000, 3);
        let want = sum(&x);
        assert_eq!(server.call(x).unwrap(), (false, want), "{codec:?}: small");
        // Other byte types decode as before: copied out of the slot.
        let buf = Server::start(ProcessServlet::new(WhereIsBuf).codec(codec)).unwrap();
        let x = serde_bytes::ByteBuf::from(pattern(300_000, 4).to_vec());
        let want = sum(&x);
        assert_eq!(buf.call(x).unwrap(), (false, want), "{codec:?}: ByteBuf");
    }
}

/// Keeps the large inputs it is given (views of their slots), checks on
/// every call that all it keeps still reads as it was, drops them when told.
#[derive(Clone, Serialize, Deserialize, Default)]
struct Keeper {
    #[serde(skip)]
    kept: Vec<(Bytes, Vec<u8>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum KeepCmd {
    /// Keep this (and echo it back if `echo`).
    Keep { data: Bytes, echo: bool },
    /// Drop everything kept.
    Clear,
}

/// Has the [`Keeper`] keep `pattern(len, seed)` without echoing it; its
/// answer (intact, kept, view, echo).
fn keep(
    server: &Server<KeepCmd, (bool, usize, bool, Bytes)>,
    len: usize,
    seed: usize,
) -> (bool, usize, bool, Bytes) {
    server
        .call(KeepCmd::Keep {
            data: pattern(len, seed),
            echo: false,
        })
        .unwrap()
}

impl Worker for Keeper {
    type Input = KeepCmd;
    /// Whether everything kept reads as it was, how many are kept, whether
    /// the last one kept is a view of a slot, and the echo.
    type Output = (bool, usize, bool, Bytes);
    fn call(&mut self, x: KeepCmd) -> Result<Self::Output, WorkerError> {
        let mut echo = Bytes::new();
        match x {
            KeepCmd::Keep { data, echo: e } => {
                if e {
                    echo = data.clone();
                }
                let copy = data.to_vec();
                self.kept.push((data, copy));
            }
            KeepCmd::Clear => self.kept.clear(),
        }
        let intact = self.kept.iter().all(|(b, v)| b[..] == v[..]);
        let view = self.kept.last().is_some_and(|(b, _)| in_region(b.as_ptr()));
        Ok((intact, self.kept.len(), view, echo))
    }
}

#[test]
fn a_slot_stays_taken_while_the_worker_views_it_and_is_never_reused() {
    let settings = ShmSettings {
        threshold: 10_000,
        slots: 3,
        slot_size: 1 << 20,
    };
    let server =
        Server::start(ProcessServlet::new(Keeper::default()).shared_memory(Some(settings)))
            .unwrap();
    // Five large inputs kept: the first three are views of the three slots,
    // which stay taken; the others find no slot free and go by the socket.
    for i in 0..5 {
        let data = pattern(200_000 + i, i);
        let (intact, n, view, echo) = server
            .call(KeepCmd::Keep {
                data: data.clone(),
                echo: true,
            })
            .unwrap();
        assert!(intact, "call {i}: a kept view changed");
        assert_eq!(n, i + 1);
        assert_eq!(
            view,
            i < 3,
            "call {i}: view of a slot only while one is free"
        );
        assert!(echo[..] == data[..], "call {i}: echo of a viewed input");
        assert_eq!(slots_in_use_of(&server), (i + 1).min(3), "call {i}");
    }
    // More large traffic while every slot is kept: by the socket, and the
    // kept views still read as they were.
    for i in 0..4 {
        let (intact, _, view, _) = keep(&server, 300_000, 40 + i);
        assert!(intact, "kept views intact");
        assert!(!view, "no slot free");
    }
    assert_eq!(slots_in_use_of(&server), 3);
    // The views dropped: the slots are free again, and used again.
    let (intact, n, _, _) = server.call(KeepCmd::Clear).unwrap();
    assert!(intact);
    assert_eq!(n, 0);
    assert!(
        wait_until(Duration::from_secs(5), || slots_in_use_of(&server) == 0),
        "slots still kept: {}",
        slots_in_use_of(&server)
    );
    let (_, _, view, _) = keep(&server, 100_000, 9);
    assert!(view, "slots used again once free");
}

#[test]
fn a_worker_killed_while_holding_views_frees_their_slots() {
    let server = Server::start(ProcessServlet::new(Keeper::default())).unwrap();
    let pid = server.worker_pids()[0];
    for i in 0..3 {
        let (_, _, view, _) = keep(&server, 500_000, i);
        assert!(view);
    }
    assert_eq!(slots_in_use_of(&server), 3, "three kept views, three slots");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            server.worker_pids().first().is_some_and(|p| *p != pid)
        }),
        "worker restarted"
    );
    assert!(
        wait_until(Duration::from_secs(5), || slots_in_use_of(&server) == 0),
        "slots leaked: {}",
        slots_in_use_of(&server)
    );
    let (intact, n, view, _) = keep(&server, 500_000, 7);
    assert!(intact && view);
    assert_eq!(n, 1, "a fresh worker");
}

/// Echoes its `Bytes` input: whole, or without its first `skip` bytes.
#[derive(Clone, Serialize, Deserialize)]
struct EchoTail {
    skip: usize,
}

impl Worker for EchoTail {
    type Input = Bytes;
    type Output = Bytes;
    fn call(&mut self, x: Bytes) -> Result<Bytes, WorkerError> {
        Ok(x.slice(self.skip.min(x.len())..))
    }
}

/// Echoes its `Bytes` input with its length after it.
#[derive(Clone, Serialize, Deserialize)]
struct EchoPair;

impl Worker for EchoPair {
    type Input = Bytes;
    type Output = (Bytes, u64);
    fn call(&mut self, x: Bytes) -> Result<(Bytes, u64), WorkerError> {
        let n = x.len() as u64;
        Ok((x, n))
    }
}

#[test]
fn results_made_of_a_viewed_input_come_back_exactly() {
    // A whole echo is described where the input lies (no copy); a tail, or
    // a value that goes on after the bytes, is written after the input;
    // one that does not fit there goes by the socket.
    for codec in [Codec::Postcard, Codec::MessagePack] {
        let whole = Server::start(ProcessServlet::new(EchoTail { skip: 0 }).codec(codec)).unwrap();
        let tail = Server::start(ProcessServlet::new(EchoTail { skip: 5 }).codec(codec)).unwrap();
        let pair = Server::start(ProcessServlet::new(EchoPair).codec(codec)).unwrap();
        for (i, n) in [T - 1, T + 1, 200_000, 1 << 20, 3 << 20, (4 << 20) - 64]
            .into_iter()
            .enumerate()
        {
            let x = pattern(n, i);
            assert!(whole.call(x.clone()).unwrap() == x, "{codec:?} {n}: whole");
            assert!(
                tail.call(x.clone()).unwrap()[..] == x[5..],
                "{codec:?} {n}: tail"
            );
            let (b, len) = pair.call(x.clone()).unwrap();
            assert!(b == x && len == n as u64, "{codec:?} {n}: pair");
        }
        for s in [&whole, &tail] {
            assert!(wait_until(Duration::from_secs(5), || slots_in_use_of(s) == 0));
        }
        assert!(wait_until(Duration::from_secs(5), || slots_in_use_of(
            &pair
        ) == 0));
    }
}

fn slots_in_use_of<I: Send + 'static, O: Send + 'static>(server: &Server<I, O>) -> usize {
    server
        .servlets()
        .workers
        .iter()
        .map(|w| w.shm_slots_in_use)
        .sum()
}

#[test]
fn a_large_result_of_a_small_input_crosses_in_a_slot() {
    // A 64 KiB frame limit: a 1 MiB result fits no frame, so it arrives
    // only if it crosses in a slot the worker claims. (Before, it went by
    // the socket and failed with "output exceeds the frame limit".)
    let server = Server::start(ProcessServlet::new(Reverse).max_frame(64 << 10)).unwrap();
    for (i, n) in [300_000usize, 1 << 20, 3 << 20].into_iter().enumerate() {
        let y = server
            .call(Job {
                data: pattern(7, i),
                out_len: Some(n),
                gate: None,
            })
            .unwrap();
        assert!(y[..] == pattern(n, 7)[..], "small in, {n} out");
    }
    // Many at once, more than the slots: those that find none free fail
    // with the frame limit, the others arrive whole; no slot is leaked.
    let results: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    server.call(Job {
                        data: pattern(7, i),
                        out_len: Some(200_000 + i),
                        gate: None,
                    })
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(y) => assert!(y[..] == pattern(200_000 + i, 7)[..], "item {i}"),
            Err(Error::Codec(e)) => assert!(e.message.contains("frame limit"), "{e}"),
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || slots_in_use(&server) == 0),
        "slots leaked: {}",
        slots_in_use(&server)
    );
    // Large in, large out, both ways still work next to it.
    let x = job(1 << 20, 3);
    let want = reversed(&x.data);
    assert!(server.call(x).unwrap()[..] == want[..]);
}

// ---- Zero-copy `Bytes` results in the caller (issue 15 item 1) ----

#[test]
fn a_large_bytes_result_is_a_view_of_its_slot_kept_until_dropped() {
    for codec in [Codec::Postcard, Codec::MessagePack] {
        let server = Server::start(ProcessServlet::new(EchoTail { skip: 0 }).codec(codec)).unwrap();
        let x = pattern(1 << 20, 1);
        let y = server.call(x.clone()).unwrap();
        assert!(y == x, "{codec:?}: echo");
        assert!(in_region(y.as_ptr()), "{codec:?}: a view of the slot");
        assert_eq!(slots_in_use_of(&server), 1, "{codec:?}: kept by the view");
        let clone = y.clone();
        drop(y);
        assert_eq!(slots_in_use_of(&server), 1, "{codec:?}: kept by a clone");
        assert!(clone == x);
        drop(clone);
        assert_eq!(slots_in_use_of(&server), 0, "{codec:?}: freed with it");
        // A small result is in the frame, as before.
        let small = server.call(pattern(1000, 2)).unwrap();
        assert!(!in_region(small.as_ptr()) && small == pattern(1000, 2));
    }
}

#[test]
fn kept_results_never_see_their_slot_reused_and_never_starve_inputs() {
    // Eight slots (the default): results keep at most four; past that they
    // are copies, so inputs always find slots.
    let server = Server::start(ProcessServlet::new(EchoTail { skip: 0 })).unwrap();
    let mut kept = Vec::new();
    for i in 0..6 {
        let x = pattern(300_000 + i, i);
        let y = server.call(x.clone()).unwrap();
        assert!(y == x, "call {i}");
        assert_eq!(
            in_region(y.as_ptr()),
            i < 4,
            "call {i}: view only while half the slots are free"
        );
        kept.push((y, x));
    }
    assert_eq!(slots_in_use_of(&server), 4);
    // Much more large traffic, one at a time and concurrently: inputs take
    // the free slots (and would reuse a kept one if any could be); every
    // kept result still reads as it was.
    for i in 0..20 {
        let x = pattern(500_000 + i, 100 + i);
        assert!(server.call(x.clone()).unwrap() == x, "call {i}");
    }
    let got: Vec<bool> = server
        .stream((0..24).map(|i| pattern(200_000 + i, 200 + i)))
        .enumerate()
        .map(|(i, y)| y.unwrap() == pattern(200_000 + i, 200 + i))
        .collect();
    assert!(got.iter().all(|ok| *ok), "streamed echoes");
    for (i, (y, x)) in kept.iter().enumerate() {
        assert!(y == x, "kept result {i} changed");
    }
    assert_eq!(
        slots_in_use_of(&server),
        4,
        "only the kept views hold slots"
    );
    drop(kept);
    assert_eq!(slots_in_use_of(&server), 0);
    let y = server.call(pattern(300_000, 9)).unwrap();
    assert!(in_region(y.as_ptr()), "views again once the slots are free");
}

#[test]
fn a_result_view_outlives_its_worker_and_the_server() {
    let server = Server::start(ProcessServlet::new(EchoTail { skip: 3 })).unwrap();
    let pid = server.worker_pids()[0];
    let x = pattern(1 << 20, 5);
    let a = server.call(x.clone()).unwrap();
    assert!(in_region(a.as_ptr()) && a[..] == x[3..]);
    // The worker dies: its region goes to nobody else; the view still reads.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            server.worker_pids().first().is_some_and(|p| *p != pid)
        }),
        "worker restarted"
    );
    assert!(a[..] == x[3..], "view of a dead worker's region");
    assert!(
        wait_until(Duration::from_secs(5), || slots_in_use_of(&server) == 0),
        "the old region counts no more"
    );
    let b = server.call(x.clone()).unwrap();
    assert!(in_region(b.as_ptr()) && b[..] == x[3..], "the new worker");
    // The server stops: the views keep their mapping.
    drop(server);
    assert!(a[..] == x[3..] && b[..] == x[3..], "views after the server");
    let joined = [a, b].concat();
    assert_eq!(joined.len(), 2 * ((1 << 20) - 3));
}
