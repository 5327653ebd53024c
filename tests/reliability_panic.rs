//! Promise 2: a panic inside `call` (thread or process worker, single or
//! batch) is an error for that item carrying the panic message; the worker
//! keeps serving. A panic in `init` makes start fail with that message.

mod reliability_support;

use mpserver::error::StartError;
use mpserver::{Error, ProcessServlet, Server, ThreadServlet, Worker, WorkerError, try_worker_fn};
use reliability_support::*;
use serde::{Deserialize, Serialize};

fn assert_panic_error(e: &Error, msg: &str) {
    match e {
        Error::Worker { error, .. } => {
            assert!(error.is_panic(), "{error:?}");
            assert!(error.message().contains(msg), "{}", error.message());
        }
        other => panic!("expected a worker error, got {other:?}"),
    }
}

#[test]
fn panic_in_process_call_fails_that_item_only() {
    let server = Server::start(ProcessServlet::new(Chaos::new()).name("panicky")).unwrap();
    let (_, pid) = server.call(Op::Echo(1)).unwrap();
    let e = server.call(Op::Panic("boom 42".into())).unwrap_err();
    assert_panic_error(&e, "boom 42");
    assert_eq!(e.worker().unwrap().name, "panicky");
    assert!(e.to_string().contains("boom 42"), "{e}");
    // Same process, still serving.
    assert_eq!(server.call(Op::Echo(2)).unwrap(), (4, pid));
    assert_eq!(server.servlets().crashes, 0);
}

#[test]
fn panic_in_thread_call_fails_that_item_only() {
    let w = try_worker_fn(|x: i64| {
        if x == 7 {
            panic!("thread boom {x}");
        }
        Ok::<_, WorkerError>(x + 1)
    });
    let server = Server::start(ThreadServlet::new(w).workers(2)).unwrap();
    for round in 0..3 {
        assert_panic_error(&server.call(7).unwrap_err(), "thread boom 7");
        assert_eq!(server.call(round).unwrap(), round + 1);
    }
    let snap = server.servlets();
    assert!(snap.workers.iter().all(|w| w.alive));
}

/// A batch worker that panics on a marked batch.
#[derive(Clone, Serialize, Deserialize)]
struct BatchPanic;

impl Worker for BatchPanic {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(x)
    }
    fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<i64, WorkerError>> {
        if xs.contains(&-1) {
            panic!("batch boom");
        }
        xs.into_iter().map(Ok).collect()
    }
}

#[test]
fn panic_in_batch_call_fails_that_batch_only() {
    for process in [true, false] {
        let server = if process {
            Server::start(ProcessServlet::new(BatchPanic).batch_size(4))
        } else {
            Server::start(ThreadServlet::new(BatchPanic).batch_size(4))
        }
        .unwrap();
        assert_panic_error(&server.call(-1).unwrap_err(), "batch boom");
        let out: Vec<i64> = server.stream(0..20).map(Result::unwrap).collect();
        assert_eq!(out, (0..20).collect::<Vec<_>>());
    }
}

#[test]
fn panic_in_init_fails_start_with_the_message() {
    let mut w = Chaos::new();
    w.init_panic = Some("init exploded: no GPU".into());
    let e = Server::start(ProcessServlet::new(w.clone()).workers(2).name("initpanic"))
        .err()
        .unwrap();
    match &e {
        Error::Start(StartError::Init { error, .. }) => {
            assert!(error.is_panic());
            assert!(
                error.message().contains("init exploded: no GPU"),
                "{}",
                error.message()
            );
        }
        other => panic!("expected an init error, got {other:?}"),
    }
    assert!(e.to_string().contains("init exploded: no GPU"), "{e}");
    // No worker process left running (that none is left as a zombie either
    // is checked in reliability_leaks, where no other test runs alongside).
    assert_eq!(children_named("initpanic#"), vec![]);

    let e = Server::start(ThreadServlet::new(w)).err().unwrap();
    match &e {
        Error::Start(StartError::Init { error, .. }) => {
            assert!(
                error.message().contains("init exploded: no GPU"),
                "{}",
                error.message()
            );
        }
        other => panic!("expected an init error, got {other:?}"),
    }
}
