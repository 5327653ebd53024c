//! What a worker error costs: with `RUST_BACKTRACE=1` (common in
//! production), ordinary worker errors and panics capture no backtrace
//! unless the servlet asks for it (`.backtraces(true)`); panic messages
//! always carry their location.

mod support;

use std::process::Command;

use mpserver::servlet::process::Launcher;
use mpserver::{ProcessServlet, Server, ThreadServlet, Worker, WorkerError};
use serde::{Deserialize, Serialize};
use support::FailOn;

/// Fails on 1 (an error converted with `?`), panics on 2, else returns `x`.
#[derive(Clone, Serialize, Deserialize)]
struct Faulty;

impl Worker for Faulty {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        match x {
            1 => Ok("not a number".parse::<i64>()?),
            2 => panic!("faulty worker panics on {x}"),
            _ => Ok(x),
        }
    }
}

fn worker_error(server: &Server<i64, i64>, x: i64) -> WorkerError {
    server
        .call(x)
        .unwrap_err()
        .worker_error()
        .cloned()
        .expect("a worker error")
}

/// Checks errors and panics of `server` against `backtraces`.
fn check(server: &Server<i64, i64>, backtraces: bool) {
    assert_eq!(server.call(5).unwrap(), 5);
    let e = worker_error(server, 1);
    assert!(e.type_name().contains("ParseIntError"), "{e}");
    assert_eq!(e.backtrace().is_some(), backtraces, "{e:?}");
    let p = worker_error(server, 2);
    assert!(p.is_panic());
    assert!(p.message().contains("faulty worker panics on 2"), "{p}");
    assert!(p.message().contains("worker_errors.rs"), "location: {p}");
    assert_eq!(p.backtrace().is_some(), backtraces, "{p:?}");
    if backtraces {
        let bt = e.backtrace().unwrap();
        assert!(bt.contains("worker_errors"), "{bt}");
    }
}

fn with_rust_backtrace() -> Launcher {
    Launcher::default().env("RUST_BACKTRACE", "1")
}

#[test]
fn process_worker_errors_capture_no_backtrace_unless_asked() {
    let server =
        Server::start(ProcessServlet::new(Faulty).launcher(with_rust_backtrace())).unwrap();
    check(&server, false);
    let server = Server::start(
        ProcessServlet::new(Faulty)
            .launcher(with_rust_backtrace())
            .backtraces(true),
    )
    .unwrap();
    check(&server, true);
    // Without RUST_BACKTRACE the option captures nothing either.
    let server = Server::start(
        ProcessServlet::new(FailOn { bad: 3 })
            .launcher(
                Launcher::default()
                    .env_remove("RUST_BACKTRACE")
                    .env_remove("RUST_LIB_BACKTRACE"),
            )
            .backtraces(true),
    )
    .unwrap();
    let e = server.call(3).unwrap_err();
    assert!(e.worker_error().unwrap().backtrace().is_none(), "{e:?}");
}

/// Helper: the thread-worker check, run in a child process whose
/// environment has `RUST_BACKTRACE=1` (a test cannot set its own).
#[test]
fn helper_thread_backtraces() {
    if std::env::var_os("MPSERVER_TEST_BACKTRACE_CHILD").is_none() {
        return;
    }
    let server = Server::start(ThreadServlet::new(Faulty)).unwrap();
    check(&server, false);
    let server = Server::start(ThreadServlet::new(Faulty).backtraces(true)).unwrap();
    check(&server, true);
}

#[test]
fn thread_worker_errors_capture_no_backtrace_unless_asked() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_thread_backtraces", "--nocapture"])
        .env("RUST_BACKTRACE", "1")
        .env("MPSERVER_TEST_BACKTRACE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
