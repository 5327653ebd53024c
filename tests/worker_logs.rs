//! `tracing` events of worker processes reach the server's subscriber, with
//! the worker's name, index and pid; worker errors are logged at warn; a
//! worker that logs more than its queue holds drops events and says how
//! many. (Its own test binary: it installs a global subscriber.)

mod support;

use mpserver::{ProcessServlet, Server, ThreadServlet, Worker, WorkerContext, WorkerError};
use serde::{Deserialize, Serialize};
use support::capture::{Seen, events, field, wait_for_events};
use tracing::level_filters::LevelFilter;

/// Captures the process and thread servlets' events at info and above.
fn install() {
    support::capture::install("mpserver::servlet", LevelFilter::INFO);
}

/// Logs around its work; fails on negative input; logs `burst` events in a
/// call on 1000.
#[derive(Clone, Serialize, Deserialize)]
struct Chatty {
    burst: usize,
}

impl Worker for Chatty {
    type Input = i64;
    type Output = i64;
    fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
        tracing::info!(index = ctx.worker_index(), "chatty worker ready");
        Ok(())
    }
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        let _span = tracing::info_span!("chatty_work", item = x).entered();
        tracing::info!(x, "handling item");
        tracing::debug!("not forwarded: the server enables info");
        if x < 0 {
            return Err(WorkerError::new("Negative", format!("{x} is negative")));
        }
        if x == 1000 {
            for i in 0..self.burst {
                tracing::info!(i, "burst");
            }
        }
        Ok(x)
    }
}

#[test]
fn worker_process_events_reach_the_server_subscriber() {
    install();
    let server = Server::start(ProcessServlet::new(Chatty { burst: 0 }).name("chatty")).unwrap();
    let pid = server.worker_pids()[0].to_string();
    assert_eq!(server.call(3).unwrap(), 3);
    // The events of every test's servers are captured together (the other
    // test's "bursty" server logs the same messages): this server's item
    // event is the one for its input 3.
    let ours = |e: &Seen| field(e, "message") == "handling item" && field(e, "fields") == "x=3";
    wait_for_events("the init and item events", |s| {
        s.iter()
            .any(|e| field(e, "message") == "chatty worker ready" && field(e, "worker") == "chatty")
            && s.iter().any(ours)
    });
    {
        let s = events();
        let e = s.iter().find(|e| ours(e)).unwrap();
        assert_eq!(e.0, tracing::Level::INFO);
        assert_eq!(field(e, "worker"), "chatty");
        assert_eq!(field(e, "index"), "0");
        assert_eq!(field(e, "pid"), pid);
        assert_eq!(field(e, "target"), "worker_logs");
        assert_eq!(field(e, "fields"), "x=3");
        assert_eq!(field(e, "spans"), "chatty_work");
        assert!(
            !s.iter()
                .any(|e| field(e, "message").starts_with("not forwarded")),
            "a debug event was forwarded"
        );
    }
    // A worker error is logged at warn.
    assert!(server.call(-2).is_err());
    wait_for_events("the worker error at warn", |s| {
        s.iter().any(|e| {
            e.0 == tracing::Level::WARN
                && field(e, "message") == "worker call failed"
                && field(e, "fields").contains("-2 is negative")
        })
    });
}

#[test]
fn a_burst_beyond_the_queue_is_dropped_and_counted() {
    install();
    let burst = 20_000;
    let server = Server::start(ProcessServlet::new(Chatty { burst }).name("bursty")).unwrap();
    assert_eq!(server.call(1000).unwrap(), 1000);
    wait_for_events("the dropped count", |s| {
        s.iter()
            .any(|e| field(e, "worker") == "bursty" && e.1.contains_key("dropped"))
    });
    drop(server);
    let s = events();
    let got = s
        .iter()
        .filter(|e| field(e, "worker") == "bursty" && field(e, "message") == "burst")
        .count();
    let dropped: usize = s
        .iter()
        .filter(|e| field(e, "worker") == "bursty")
        .filter_map(|e| e.1.get("dropped"))
        .map(|d| d.parse::<usize>().unwrap())
        .sum();
    assert!(got > 0 && dropped > 0, "got {got}, dropped {dropped}");
    assert_eq!(
        got + dropped,
        burst,
        "every event is either delivered or counted"
    );
}

#[test]
fn thread_worker_errors_are_logged_at_warn() {
    install();
    let server = Server::start(ThreadServlet::new(Chatty { burst: 0 }).name("threaded")).unwrap();
    assert!(server.call(-7).is_err());
    wait_for_events("the thread worker's error at warn", |s| {
        s.iter().any(|e| {
            e.0 == tracing::Level::WARN
                && field(e, "event_target") == "mpserver::servlet::thread"
                && field(e, "worker").starts_with("threaded#0")
                && field(e, "error").contains("-7 is negative")
        })
    });
}

/// Logs one event per item (a message of its own, so the other tests'
/// searches do not meet it).
#[derive(Clone, Serialize, Deserialize)]
struct Noting;

impl Worker for Noting {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        tracing::info!(x, "noted item");
        Ok(x)
    }
}

/// A caller that reads its own result (a single call handed to an idle
/// worker) does not re-emit the worker's log events: they are the reader
/// thread's to emit, outside the read lock and outside the caller's spans.
#[test]
fn worker_events_are_emitted_on_the_reader_thread_not_a_callers() {
    install();
    let server = Server::start(ProcessServlet::new(Noting).name("noting")).unwrap();
    let handle = server.handle();
    std::thread::Builder::new()
        .name("a-caller".into())
        .spawn(move || {
            for x in 500..520 {
                assert_eq!(handle.call(x).unwrap(), x);
            }
        })
        .unwrap()
        .join()
        .unwrap();
    let noted = |e: &&Seen| field(e, "worker") == "noting" && field(e, "message") == "noted item";
    wait_for_events("the 20 item events", |s| {
        s.iter().filter(noted).count() >= 20
    });
    let s = events();
    let on_caller: Vec<&Seen> = s
        .iter()
        .filter(noted)
        .filter(|e| field(e, "thread") == "a-caller")
        .collect();
    assert!(
        on_caller.is_empty(),
        "worker events emitted on the caller's thread: {on_caller:?}"
    );
}
