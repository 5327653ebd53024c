//! Workers and /proc helpers shared by the `reliability_*` tests.
//!
//! Each test binary re-executes itself as the worker process (the crate's
//! ctor takes over before the test harness starts), so these types exist in
//! every binary. The workers misbehave on purpose, on marked inputs.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mpserver::{Worker, WorkerContext, WorkerError};
use serde::{Deserialize, Serialize};

/// What [`Chaos`] does with one item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Returns `2 * x` (after the worker's `sleep_us`).
    Echo(i64),
    /// Sleeps `ms`, then returns `2 * x`.
    Sleep(i64, u64),
    /// `std::process::abort()`.
    Abort,
    /// Dies of SIGSEGV (default action restored first: the Rust runtime
    /// handles SIGSEGV for stack-overflow detection).
    Segv,
    /// `std::process::exit(code)`.
    Exit(i32),
    /// Panics with this message.
    Panic(String),
    /// Writes these raw bytes to the server (its socket is fd 0), then
    /// returns `2 * x`.
    Raw(Vec<u8>, i64),
    /// Writes raw bytes to the server, then exits (a truncated frame).
    RawThenExit(Vec<u8>),
    /// Keeps `mib` more MiB (touched) for the rest of the process's life,
    /// then returns `2 * x`.
    Leak(i64, usize),
    /// Waits until the file exists (polling), then returns `2 * x`.
    Gate(i64, PathBuf),
}

/// What [`Chaos`] returns: the value and the pid of the process that made it.
pub type Out = (i64, u32);

/// A process (or thread) worker that misbehaves on purpose.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Chaos {
    /// Sleep before each call, in microseconds.
    pub sleep_us: u64,
    /// Append one line per call (`"<x>"`) to this file.
    pub log: Option<PathBuf>,
    /// Panic in `init` with this message.
    pub init_panic: Option<String>,
    /// Fail every item at once (with a worker error), before logging it;
    /// except `Gate` items, which succeed at once (without waiting).
    pub fail: bool,
    /// While this file exists, `init` appends a line `init` to it and
    /// aborts the process (a worker that dies in start-up).
    #[serde(default)]
    pub init_abort_if: Option<PathBuf>,
    #[serde(skip)]
    pub leaked: Vec<Vec<u8>>,
}

impl Chaos {
    pub fn new() -> Self {
        Chaos::default()
    }
    pub fn sleep_us(mut self, us: u64) -> Self {
        self.sleep_us = us;
        self
    }
    pub fn log(mut self, p: &Path) -> Self {
        self.log = Some(p.to_path_buf());
        self
    }
}

fn value_of(op: &Op) -> i64 {
    match op {
        Op::Echo(x) | Op::Sleep(x, _) | Op::Raw(_, x) | Op::Leak(x, _) | Op::Gate(x, _) => *x,
        _ => -1,
    }
}

/// Writes raw bytes on the worker's socket to the server (fd 0).
pub fn write_to_server(bytes: &[u8]) {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("worker has its socket on stdin");
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes).expect("write to server");
}

impl Worker for Chaos {
    type Input = Op;
    type Output = Out;

    fn init(&mut self, _: &WorkerContext) -> Result<(), WorkerError> {
        if let Some(m) = &self.init_panic {
            panic!("{m}");
        }
        if let Some(p) = &self.init_abort_if
            && let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(p)
        {
            let _ = writeln!(f, "init");
            std::process::abort();
        }
        Ok(())
    }

    fn call(&mut self, op: Op) -> Result<Out, WorkerError> {
        if self.fail {
            if let Op::Gate(x, _) = op {
                return Ok((2 * x, std::process::id()));
            }
            return Err(WorkerError::msg("refused"));
        }
        if let Some(p) = &self.log {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(f, "{}", value_of(&op))?;
        }
        if self.sleep_us > 0 {
            std::thread::sleep(Duration::from_micros(self.sleep_us));
        }
        let me = std::process::id();
        match op {
            Op::Echo(x) => Ok((2 * x, me)),
            Op::Sleep(x, ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok((2 * x, me))
            }
            Op::Abort => std::process::abort(),
            Op::Segv => {
                use nix::sys::signal::{SigHandler, Signal, raise, signal};
                // SAFETY: restoring the default disposition of SIGSEGV in a
                // test worker that is about to die of it.
                unsafe {
                    let _ = signal(Signal::SIGSEGV, SigHandler::SigDfl);
                }
                let _ = raise(Signal::SIGSEGV);
                unreachable!("SIGSEGV did not kill the worker")
            }
            Op::Exit(code) => std::process::exit(code),
            Op::Panic(m) => panic!("{m}"),
            Op::Raw(bytes, x) => {
                write_to_server(&bytes);
                // Give the server time to read the garbage and react.
                std::thread::sleep(Duration::from_millis(200));
                Ok((2 * x, me))
            }
            Op::RawThenExit(bytes) => {
                write_to_server(&bytes);
                std::process::exit(0)
            }
            Op::Leak(x, mib) => {
                for _ in 0..mib {
                    self.leaked.push(vec![1u8; 1 << 20]);
                }
                Ok((2 * x, me))
            }
            Op::Gate(x, path) => {
                let until = Instant::now() + Duration::from_secs(30);
                while !path.exists() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok((2 * x, me))
            }
        }
    }
}

/// Lines in a call log (0 if it does not exist).
pub fn count_lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The values logged in a call log.
pub fn logged(p: &Path) -> Vec<i64> {
    std::fs::read_to_string(p)
        .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
        .unwrap_or_default()
}

/// A unique temporary path (not created).
pub fn temp_path(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mpserver-rel-{tag}-{}-{n}", std::process::id()))
}

// The same file as `support::poll`, for the binaries that use only this
// module (a binary that uses both compiles it twice, harmlessly).
#[allow(clippy::duplicate_mod)]
#[path = "../support/poll.rs"]
mod poll;
#[allow(unused_imports)]
pub use poll::wait_until;

/// State and parent pid of a process from `/proc/<pid>/stat`, if it exists.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    matches!(proc_state(pid), Some((s, _)) if s != 'Z')
}

/// Every child (zombies included) of this process.
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((state, ppid)) = proc_state(pid)
            && ppid == me
        {
            out.push((pid, state));
        }
    }
    out
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Resident memory of this process, bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// A restart policy that restarts at once and never gives up (for tests that
/// kill workers many times).
pub fn eager_restarts() -> mpserver::RestartPolicy {
    mpserver::RestartPolicy::default()
        .backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(20))
        .max_restarts(100_000)
        .window(Duration::from_secs(60))
}

/// Marker values of [`Touchy`].
pub const SER_FAIL: i64 = -1;
pub const DE_FAIL: i64 = -2;
pub const SER_PANIC: i64 = -3;
pub const DE_PANIC: i64 = -4;

/// An integer whose serde impls fail (or panic) on marker values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Touchy(pub i64);

impl Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            SER_FAIL => Err(serde::ser::Error::custom("Touchy refuses to serialize")),
            SER_PANIC => panic!("Touchy panics while serializing"),
            v => s.serialize_i64(v),
        }
    }
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match i64::deserialize(d)? {
            DE_FAIL => Err(serde::de::Error::custom("Touchy refuses to deserialize")),
            DE_PANIC => panic!("Touchy panics while deserializing"),
            v => Ok(Touchy(v)),
        }
    }
}

/// Maps `Touchy(x)`: 100 → an output that fails to serialize (in the
/// worker), 200 → one that fails to deserialize (in the server), 300/400 →
/// ones that panic there; otherwise `Touchy(2 * x)`. Also returns its pid.
#[derive(Clone, Serialize, Deserialize)]
pub struct TouchyWorker;

impl Worker for TouchyWorker {
    type Input = Touchy;
    type Output = (Touchy, u32);
    fn call(&mut self, x: Touchy) -> Result<(Touchy, u32), WorkerError> {
        let y = match x.0 {
            100 => SER_FAIL,
            200 => DE_FAIL,
            300 => SER_PANIC,
            400 => DE_PANIC,
            v => 2 * v,
        };
        Ok((Touchy(y), std::process::id()))
    }
}

/// Returns `n` bytes (and its pid).
#[derive(Clone, Serialize, Deserialize)]
pub struct Blob;

impl Worker for Blob {
    type Input = usize;
    type Output = (Vec<u8>, u32);
    fn call(&mut self, n: usize) -> Result<(Vec<u8>, u32), WorkerError> {
        Ok((vec![7u8; n], std::process::id()))
    }
}

/// Running children of this process whose process title (the
/// worker's `argv[0]`, `"<name>#<index> [mpserver worker]"`) starts with
/// `prefix`.
pub fn children_named(prefix: &str) -> Vec<(u32, char)> {
    children()
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.starts_with(prefix.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}
