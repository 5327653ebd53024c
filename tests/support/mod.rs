//! Workers shared by the integration tests. Each test binary re-executes
//! itself as the worker process, so these types live in every binary.
#![allow(dead_code)]

pub mod capture;
pub mod never_room;
pub mod poll;
pub mod restart;

// Not every test binary uses them.
#[allow(unused_imports)]
pub use never_room::NeverRoom;
pub use poll::wait_until;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use mpserver::{Worker, WorkerContext, WorkerError};
use serde::{Deserialize, Serialize};

/// Returns `2 * x`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Double;

impl Worker for Double {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(2 * x)
    }
}

/// Sleeps `ms` then returns `x`; appends one line per call to `log` if set.
#[derive(Clone, Serialize, Deserialize)]
pub struct Slow {
    pub ms: u64,
    pub log: Option<PathBuf>,
}

impl Worker for Slow {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        if let Some(p) = &self.log {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(f, "{x}")?;
        }
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok(x)
    }
}

/// Lines in a call log (0 if it does not exist).
pub fn count_lines(p: &std::path::Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A unique temporary file path.
pub fn temp_path(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("mpserver-test-{tag}-{}-{n}", std::process::id()))
}

#[derive(Debug, thiserror::Error)]
#[error("value {0} is not allowed")]
pub struct NotAllowed(pub i64);

/// Fails on `bad`, else returns `x + 1`.
#[derive(Clone, Serialize, Deserialize)]
pub struct FailOn {
    pub bad: i64,
}

impl Worker for FailOn {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        if x == self.bad {
            return Err(NotAllowed(x).into());
        }
        Ok(x + 1)
    }
}

/// Returns the CPUs it may run on, its worker index and its pid.
#[derive(Clone, Serialize, Deserialize)]
pub struct WhereAmI {
    #[serde(skip)]
    index: usize,
}

impl Worker for WhereAmI {
    type Input = ();
    type Output = (Vec<usize>, usize, u32);
    fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
        self.index = ctx.worker_index();
        Ok(())
    }
    fn call(&mut self, _: ()) -> Result<Self::Output, WorkerError> {
        Ok((
            mpserver::affinity::current_cpus(),
            self.index,
            std::process::id(),
        ))
    }
}

/// Init fails (or panics) with a message.
#[derive(Clone, Serialize, Deserialize)]
pub struct BadInit {
    pub panic: bool,
}

impl Worker for BadInit {
    type Input = i64;
    type Output = i64;
    fn init(&mut self, _: &WorkerContext) -> Result<(), WorkerError> {
        if self.panic {
            panic!("init exploded");
        }
        Err(WorkerError::new("ModelNotFound", "no model at /nowhere"))
    }
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(x)
    }
}

/// Batched: returns, for each item, `(x * x, batch length)`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SquareBatch;

impl Worker for SquareBatch {
    type Input = i64;
    type Output = (i64, usize);
    fn call(&mut self, x: i64) -> Result<(i64, usize), WorkerError> {
        Ok((x * x, 1))
    }
    fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<(i64, usize), WorkerError>> {
        let n = xs.len();
        xs.into_iter()
            .map(|x| {
                if x < 0 {
                    Err(WorkerError::msg(format!("negative {x}")))
                } else {
                    Ok((x * x, n))
                }
            })
            .collect()
    }
}

/// Streams `data` through a [`SquareBatch`] flow, errors in place, and
/// checks every result: `x * x` from a batch of 1 to `max_batch` items, or
/// the "negative" error for a negative `x`. `ctx` names the case.
pub fn check_square_batches(
    server: &mpserver::Server<i64, (i64, usize)>,
    data: &[i64],
    max_batch: usize,
    ctx: &str,
) {
    let opts = mpserver::StreamOptions::default().return_exceptions(true);
    let out: Vec<_> = server.stream_with(data.to_vec(), opts).collect();
    assert_eq!(out.len(), data.len(), "{ctx}");
    for (x, r) in data.iter().zip(&out) {
        match r {
            Ok((y, n)) => {
                assert_eq!(*y, x * x, "{ctx}");
                assert!((1..=max_batch).contains(n), "{ctx}: batch of {n}");
            }
            Err(e) => assert!(*x < 0 && e.to_string().contains("negative"), "{ctx}: {e}"),
        }
    }
}

/// Any children at all (including zombies) of this process.
pub fn all_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            // fields after the ")" of the command name: state ppid ...
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .collect()
}

/// Polls `cond` until it holds; fails the test after 10 s.
pub fn wait_for(cond: impl Fn() -> bool) {
    assert!(
        wait_until(Duration::from_secs(10), cond),
        "condition not reached in 10 s"
    );
}
