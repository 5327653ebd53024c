//! A thread worker's failed batch is logged once, with the batch size, not
//! once per item (as a worker process already does). Per-item errors that
//! `call_batch` returns are each logged. (Its own test binary: it installs a
//! global subscriber.)

mod support;

use std::collections::HashMap;
use std::time::Duration;

use mpserver::{Batching, CallOptions, Server, ThreadServlet, Worker, WorkerError};
use support::capture::{events, field};
use tracing::level_filters::LevelFilter;

/// How `call_batch` fails.
#[derive(Clone, Copy)]
enum Fail {
    Panic,
    Mismatch,
    EachItem,
}

#[derive(Clone)]
struct Failing(Fail);

impl Worker for Failing {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(x)
    }
    fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<i64, WorkerError>> {
        match self.0 {
            Fail::Panic => panic!("batch of {} blew up", xs.len()),
            Fail::Mismatch => vec![],
            Fail::EachItem => xs
                .iter()
                .map(|x| Err(WorkerError::msg(format!("item {x} failed"))))
                .collect(),
        }
    }
}

/// Warnings logged while a batch of 4 fails in the given way: the batch is
/// full at once (4 items queued while the window is long).
fn warnings_for_a_failed_batch(fail: Fail, name: &str) -> Vec<HashMap<String, String>> {
    let servlet = ThreadServlet::new(Failing(fail))
        .name(name)
        .batch_size(4)
        .batching(Batching::Fixed)
        .batch_wait_time(Duration::from_secs(5));
    let server = Server::start(servlet).unwrap();
    let pending: Vec<_> = (0..4)
        .map(|i| server.submit(i, CallOptions::default()).unwrap())
        .collect();
    for p in pending {
        assert!(p.wait().is_err());
    }
    assert_eq!(server.servlets().batches, 1);
    drop(server);
    events()
        .iter()
        .filter(|e| e.0 == tracing::Level::WARN && field(e, "worker").starts_with(name))
        .map(|e| e.1.clone())
        .collect()
}

#[test]
fn a_failed_batch_is_logged_once_with_its_size_and_item_errors_each() {
    // Warnings of thread workers.
    support::capture::install("mpserver::servlet::thread", LevelFilter::WARN);

    for (fail, name) in [(Fail::Panic, "panicky"), (Fail::Mismatch, "mismatched")] {
        let w = warnings_for_a_failed_batch(fail, name);
        assert_eq!(w.len(), 1, "{name}: {w:?}");
        assert_eq!(
            w[0].get("batch").map(String::as_str),
            Some("4"),
            "{name}: {w:?}"
        );
    }
    // Errors `call_batch` returns per item are each the item's own.
    let w = warnings_for_a_failed_batch(Fail::EachItem, "itemwise");
    assert_eq!(w.len(), 4, "{w:?}");
}
