//! Consistent, checked configuration (issue 14 item 5): option builders all
//! work the same way, zero values are start errors naming the servlet and
//! the setting, and closure workers get a useful default name.

mod support;

use std::time::Duration;

use mpserver::prelude::*;
use mpserver::{CallOptions, Error, RestartPolicy, StartError, StreamOptions};
use support::*;

fn start_err<S: mpserver::servlet::Servlet<Input = i64, Output = i64>>(
    b: mpserver::server::Builder<S>,
) -> StartError {
    match b.start() {
        Err(Error::Start(e)) => e,
        Err(e) => panic!("expected a start error, got {e:?}"),
        Ok(_) => panic!("expected a start error, the server started"),
    }
}

fn config_message(e: StartError) -> String {
    match e {
        StartError::Config(m) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// Before: these were clamped silently (to 1 item, 1 item, 1 KiB) or, for
/// the time limits, made every call fail at once.
#[test]
fn zero_values_are_start_errors_naming_servlet_and_setting() {
    let p = || ProcessServlet::new(Double).name("P");
    for (servlet, needle) in [
        (p().max_inflight(0), "servlet P: max_inflight(0)"),
        (p().recycle_after(0), "servlet P: recycle_after(0)"),
        (p().max_frame(10), "servlet P: max_frame(10)"),
    ] {
        let m = config_message(start_err(Server::builder(servlet)));
        assert!(m.contains(needle), "{m}");
    }
    let t = || ThreadServlet::new(Double);
    let m = config_message(start_err(Server::builder(t()).timeout(Duration::ZERO)));
    assert!(m.contains("timeout(0)"), "{m}");
    let m = config_message(start_err(
        Server::builder(t()).start_timeout(Duration::ZERO),
    ));
    assert!(m.contains("start_timeout(0)"), "{m}");
    // The smallest accepted values start.
    let ok = Server::builder(p().max_inflight(1).recycle_after(1).max_frame(1024))
        .timeout(Duration::from_millis(1))
        .timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    assert_eq!(ok.call(2).unwrap(), 4);
}

/// Every options struct is built the same way: `default()`, then setters
/// by value that return the struct.
#[test]
fn option_builders_work_the_same_way() {
    let c = CallOptions::default()
        .timeout(Duration::from_secs(3))
        .backpressure(false);
    assert_eq!((c.timeout, c.backpressure), (Duration::from_secs(3), false));
    let s = StreamOptions::default()
        .timeout(Duration::from_secs(3))
        .return_exceptions(true)
        .max_inflight(4);
    assert_eq!(
        (s.timeout, s.return_exceptions, s.max_inflight),
        (Some(Duration::from_secs(3)), true, Some(4))
    );
    let r = RestartPolicy::default()
        .backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(2))
        .max_restarts(3)
        .window(Duration::from_secs(4))
        .retry_crashed(true)
        .poison_threshold(5)
        .restart_served_at_once(false);
    assert_eq!(
        (r.backoff, r.max_backoff, r.max_restarts, r.window),
        (
            Duration::from_millis(1),
            Duration::from_millis(2),
            3,
            Duration::from_secs(4)
        )
    );
    assert!(r.retry_crashed && !r.restart_served_at_once && r.poison_threshold == 5);
}

fn tripler() -> impl Worker<Input = i64, Output = i64> + Clone {
    worker_fn(|x: i64| x * 3)
}

fn add_one(x: i64) -> i64 {
    x + 1
}

/// Before: every closure worker was called "FnWorker" in errors, logs and
/// metrics.
#[test]
fn closure_workers_are_named_after_their_function() {
    let server = Server::start(sequential![
        ThreadServlet::new(tripler()),
        ThreadServlet::new(worker_fn(add_one)),
        ThreadServlet::new(try_worker_fn(|x: i64| {
            if x < 0 {
                Err(WorkerError::new("Negative", "below zero"))
            } else {
                Ok(x)
            }
        })),
    ])
    .unwrap();
    assert_eq!(server.call(2).unwrap(), 7);
    let names: Vec<String> = server
        .servlets()
        .members
        .iter()
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "tripler",
            "add_one",
            "closure_workers_are_named_after_their_function"
        ]
    );
    let Err(Error::Worker { worker, .. }) = server.call(-5) else {
        panic!("expected a worker error")
    };
    assert_eq!(
        worker.name,
        "closure_workers_are_named_after_their_function"
    );
    // A name given to the servlet wins.
    let named = Server::start(ThreadServlet::new(tripler()).name("x3")).unwrap();
    assert_eq!(named.servlets().name, "x3");
}
