//! Soak run: streams many items (default 10 million) through a two-stage
//! process flow and reports the memory of the server and of its worker
//! processes at the start, along the way, and at the end. Every result is
//! checked. Memory that stays flat shows that nothing accumulates per item
//! (queues are bounded, finished requests leave no trace).
//!
//! Not part of the test suite (it takes minutes). Run it in release mode:
//!
//! ```text
//! cargo run --release --example soak -- [--items N] [--capacity C] [--batch B]
//! ```

use std::time::Instant;

use mpserver::prelude::*;
use serde::{Deserialize, Serialize};

/// Stage 1: `x -> 2x + 1`.
#[derive(Serialize, Deserialize)]
struct Stage1;

impl Worker for Stage1 {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(2 * x + 1)
    }
}

/// Stage 2: `y -> y xor 0x5555`.
#[derive(Serialize, Deserialize)]
struct Stage2;

impl Worker for Stage2 {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, y: u64) -> Result<u64, WorkerError> {
        Ok(y ^ 0x5555)
    }
}

fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn report<In: Send + 'static, Out: Send + 'static>(
    label: &str,
    server: &Server<In, Out>,
    done: u64,
    t0: Instant,
) {
    let workers: Vec<String> = server
        .worker_pids()
        .iter()
        .map(|p| format!("{:.1}", mib(rss_of(&p.to_string()))))
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{label:>5}: items {done:>10}  server RSS {:>7.1} MiB  workers RSS [{}] MiB  backlog {:>4}  {:>9.0} items/s",
        mib(rss_of("self")),
        workers.join(", "),
        server.backlog(),
        if secs > 0.0 { done as f64 / secs } else { 0.0 },
    );
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), mpserver::Error> {
    let n = arg("--items", 10_000_000);
    let capacity = arg("--capacity", 1024) as usize;
    let batch = arg("--batch", 0) as usize;
    let flow = sequential![
        ProcessServlet::new(Stage1).batch_size(batch),
        ProcessServlet::new(Stage2).batch_size(batch),
    ];
    let server = Server::builder(flow).capacity(capacity).start()?;
    println!("soak: {n} items, two process stages, capacity {capacity}, batch size {batch}");
    let t0 = Instant::now();
    report("start", &server, 0, t0);
    let (mut done, mut bad) = (0u64, 0u64);
    let every = (n / 10).max(1);
    for (x, r) in (0..n).zip(server.stream(0..n)) {
        match r {
            Ok(y) if y == (2 * x + 1) ^ 0x5555 => {}
            _ => bad += 1,
        }
        done += 1;
        if done % every == 0 && done < n {
            report("", &server, done, t0);
        }
    }
    report("end", &server, done, t0);
    println!(
        "done: {done} items in {:.1} s, {bad} wrong or failed; restarts {}",
        t0.elapsed().as_secs_f64(),
        server
            .servlets()
            .members
            .iter()
            .map(|m| m.restarts)
            .sum::<u64>(),
    );
    server.shutdown();
    if bad > 0 || done != n {
        std::process::exit(1);
    }
    Ok(())
}
