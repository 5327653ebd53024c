//! What a worker error costs next to a success, with `RUST_BACKTRACE=1` set
//! (as in many production deployments), for process and thread workers,
//! with and without the servlet's `backtraces(true)` option; and the worker
//! process's resident memory after the errors (resolving a backtrace loads
//! the binary's debug information).
//!
//! `cargo run --release -p mpserver-benches --bin error_cost [-- calls]`
//!
//! Goal (issue 10 item 11): without the option, an error costs at most twice
//! a success.

use std::time::{Duration, Instant};

use mpserver::servlet::process::Launcher;
use mpserver::{ProcessServlet, Server, ThreadServlet, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Odd inputs fail (an error converted with `?`), even ones succeed.
#[derive(Clone, Serialize, Deserialize)]
struct OddFails;

impl Worker for OddFails {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        if x % 2 == 1 {
            let n: u64 = "not a number".parse()?;
            return Ok(n);
        }
        Ok(x)
    }
}

fn per_call(server: &Server<u64, u64>, calls: u64, odd: u64) -> Duration {
    let t = Instant::now();
    for i in 0..calls {
        let _ = server.call(2 * i + odd);
    }
    t.elapsed() / calls as u32
}

fn rss_mib(pid: u32) -> Option<f64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1 << 20) as f64)
}

fn run(label: &str, server: Server<u64, u64>, calls: u64) {
    // Warm up the success path, then time the first error on its own.
    per_call(&server, 100, 0);
    let t = Instant::now();
    let first = server.call(1);
    let first_error = t.elapsed();
    assert!(first.is_err());
    let ok = per_call(&server, calls, 0);
    let err = per_call(&server, calls, 1);
    let ratio = err.as_secs_f64() / ok.as_secs_f64();
    let rss = server
        .worker_pids()
        .first()
        .and_then(|p| rss_mib(*p))
        .map_or_else(
            || "-".to_string(),
            |m| format!("{m:.1} MiB after {} errors", calls + 1),
        );
    println!(
        "{label:<36} success {:>8.1} µs  error {:>8.1} µs  ratio {ratio:>5.2}x  first error {:>8.2} ms  worker RSS {rss}",
        ok.as_secs_f64() * 1e6,
        err.as_secs_f64() * 1e6,
        first_error.as_secs_f64() * 1e3,
    );
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    // SAFETY: first statement of `main`, before this program starts any
    // thread, so nothing reads the environment concurrently.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    println!("RUST_BACKTRACE=1, {calls} calls each, one caller");
    let bt = || Launcher::default().env("RUST_BACKTRACE", "1");
    for (label, backtraces) in [("", false), (" backtraces(true)", true)] {
        let server = Server::start(
            ProcessServlet::new(OddFails)
                .launcher(bt())
                .backtraces(backtraces),
        )
        .expect("start");
        run(&format!("process{label}"), server, calls);
        let server =
            Server::start(ThreadServlet::new(OddFails).backtraces(backtraces)).expect("start");
        run(&format!("thread{label}"), server, calls);
    }
}
