//! Calling a server from async code: many concurrent tokio tasks.
//!
//! The flow is one "model" in two worker processes, served in batches of up
//! to 16; each forward pass costs a fixed 2 ms, whatever the batch size (as on
//! a GPU). Thousands of tasks call it at once through cloned `Handle`s:
//!
//! 1. back-pressure off: every call waits for room (up to its timeout), so all
//!    succeed; concurrent callers fill the batches;
//! 2. back-pressure on (the default): calls beyond the capacity fail at once
//!    with `ServerBacklogFull`, the signal an HTTP front turns into a 503;
//! 3. deadlines: a call with a 1 ms limit fails with `Error::Timeout`, and a
//!    future dropped by `tokio::time::timeout` cancels its request;
//! 4. `async_stream`: a `futures::Stream` in, results out in input order.
//!
//! The server needs no particular runtime (its deadlines run on its own
//! timer); dropping it blocks while it drains, so it is shut down on a
//! blocking thread.
//!
//! ```sh
//! cargo run --release --example async_tokio
//! cargo run --release --example async_tokio -- --tasks 10000
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use mpserver::prelude::*;
use mpserver::{Error, Handle};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// A batched "model": `y = x² + 1`, at a fixed 2 ms per forward pass.
#[derive(Serialize, Deserialize)]
struct Model {
    pass: Duration,
}

impl Worker for Model {
    type Input = u64;
    type Output = u64;

    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        self.call_batch(vec![x]).remove(0)
    }

    fn call_batch(&mut self, xs: Vec<u64>) -> Vec<Result<u64, WorkerError>> {
        std::thread::sleep(self.pass);
        xs.into_iter().map(|x| Ok(x * x + 1)).collect()
    }
}

fn expected(x: u64) -> u64 {
    x * x + 1
}

const CAPACITY: usize = 64;

/// Spawns one task per input; counts successes and each kind of error.
async fn fan_out(
    handle: &Handle<u64, u64>,
    tasks: u64,
    opts: CallOptions,
) -> (u64, Vec<(&'static str, u64)>) {
    let mut set = JoinSet::new();
    for x in 0..tasks {
        let h = handle.clone();
        set.spawn(async move { (x, h.async_call_with(x, opts).await) });
    }
    let mut ok = 0;
    let mut errors: Vec<(&'static str, u64)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (x, r) = joined.expect("task panicked");
        match r {
            Ok(y) => {
                assert_eq!(y, expected(x));
                ok += 1;
            }
            Err(e) => match errors.iter_mut().find(|(k, _)| *k == e.kind()) {
                Some((_, n)) => *n += 1,
                None => errors.push((e.kind(), 1)),
            },
        }
    }
    (ok, errors)
}

fn tasks_arg() -> u64 {
    let mut it = std::env::args().skip(1);
    let mut tasks = 1000;
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next().and_then(|v| v.parse().ok())) {
            ("--tasks", Some(n)) => tasks = n,
            _ => panic!("usage: async_tokio [--tasks N]"),
        }
    }
    tasks
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tasks = tasks_arg();
    let model = Model {
        pass: Duration::from_millis(2),
    };
    let server = Server::builder(ProcessServlet::new(model).workers(2).batch_size(16))
        .capacity(CAPACITY)
        .start()?;
    let handle = server.handle();
    println!("{tasks} tasks, capacity {CAPACITY}, 2 worker processes, batches of up to 16");

    // 1. Back-pressure off: wait for room, up to the timeout.
    let patient = CallOptions::default()
        .timeout(Duration::from_secs(30))
        .backpressure(false);
    let t = Instant::now();
    let (ok, errors) = fan_out(&handle, tasks, patient).await;
    let secs = t.elapsed().as_secs_f64();
    let sizes = server.servlets().batch_sizes;
    println!(
        "1. back-pressure off: {ok}/{tasks} ok, errors {errors:?}; {:.0} calls/s, mean batch {:.1}",
        ok as f64 / secs,
        sizes.sum as f64 / sizes.count.max(1) as f64
    );

    // 2. Back-pressure on: a full server refuses at once.
    let eager = CallOptions::default().timeout(Duration::from_secs(30));
    let (ok, errors) = fan_out(&handle, tasks, eager).await;
    let refused: u64 = errors
        .iter()
        .filter(|(k, _)| *k == "backlog_full")
        .map(|(_, n)| n)
        .sum();
    println!(
        "2. back-pressure on: {} of {tasks} answered (ok or refused with ServerBacklogFull)",
        ok + refused
    );

    // 3. Deadlines. The server enforces its own: no runtime timer needed.
    match handle
        .async_call_with(7, CallOptions::default().timeout(Duration::from_millis(1)))
        .await
    {
        Err(Error::Timeout(t)) => println!("3. 1 ms limit: timeout ({t})"),
        other => println!("3. 1 ms limit: unexpected {other:?}"),
    }
    // A caller that gives up drops the future, which cancels the request:
    // workers that have not started it skip it.
    let gave_up = tokio::time::timeout(Duration::from_micros(100), handle.async_call(8)).await;
    println!(
        "   caller gave up after 100 µs: {}",
        if gave_up.is_err() {
            "request cancelled"
        } else {
            "answered first"
        }
    );

    // 4. An async stream in, results out in input order.
    let inputs = futures::stream::iter(0..tasks);
    let results: Vec<u64> = handle
        .async_stream(inputs, StreamOptions::default())
        .map(|r| r.expect("stream item"))
        .collect()
        .await;
    let in_order = results
        .iter()
        .enumerate()
        .all(|(i, y)| *y == expected(i as u64));
    println!(
        "4. async_stream: {} results, in input order: {}",
        results.len(),
        if in_order { "yes" } else { "NO" }
    );

    // Dropping the server drains it and stops the workers: a blocking wait,
    // so do it off the async worker threads.
    drop(handle);
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .expect("shutdown");
    Ok(())
}
