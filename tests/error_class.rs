//! Errors keep their class (`Error::class`) through process boundaries,
//! sequences, ensembles (fail-fast or not) and switches, and the server
//! counts failed requests by class.

use mpserver::error::ErrorClass;
use mpserver::{
    Error, ProcessServlet, Server, SwitchServlet, ThreadServlet, Worker, WorkerError, ensemble,
    sequential, try_worker_fn, worker_fn,
};
use serde::{Deserialize, Serialize};

/// A process worker: negative input is invalid input, 0 aborts the process,
/// 1 is a plain worker error, anything else is doubled.
#[derive(Clone, Serialize, Deserialize)]
struct Judge;

impl Worker for Judge {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        match x {
            x if x < 0 => Err(WorkerError::invalid_input(
                "ValueError",
                format!("{x} is negative"),
            )),
            0 => std::process::abort(),
            1 => Err(WorkerError::msg("one is unlucky")),
            x => Ok(x * 2),
        }
    }
}

fn classes(server: &Server<i64, impl Send + 'static>) -> Vec<(ErrorClass, u64)> {
    server.handle().request_stats().error_classes
}

#[test]
fn invalid_input_mark_crosses_the_process_boundary_and_a_sequence() {
    let flow = sequential![
        ThreadServlet::new(worker_fn(|x: i64| x)),
        ProcessServlet::new(Judge),
        ThreadServlet::new(worker_fn(|x: i64| x + 1)),
    ];
    let server = Server::start(flow).unwrap();
    let e = server.call(-3).unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidInput, "{e:?}");
    assert!(e.worker_error().unwrap().is_invalid_input());
    let e = server.call(1).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Worker, "{e:?}");
    let e = server.call(0).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Crashed, "{e:?}");
    assert!(e.class().is_retryable());
    assert_eq!(server.call(5).unwrap(), 11);
    let c = classes(&server);
    for class in [
        ErrorClass::InvalidInput,
        ErrorClass::Worker,
        ErrorClass::Crashed,
    ] {
        assert!(
            c.contains(&(class, 1)),
            "{class:?} not counted once in {c:?}"
        );
    }
}

#[test]
fn a_crash_inside_an_ensemble_is_a_crash() {
    // Fail-fast (the default): the ensemble error has the class of the
    // member error that failed the item.
    let flow = ensemble![
        ProcessServlet::new(Judge),
        ThreadServlet::new(worker_fn(|x: i64| x)),
    ];
    let server = Server::start(flow).unwrap();
    let e = server.call(0).unwrap_err();
    assert!(matches!(e, Error::Ensemble(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Crashed, "{e:?}");
    let e = server.call(-1).unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidInput, "{e:?}");
    let e = server.call(1).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Worker, "{e:?}");
    assert_eq!(server.call(4).unwrap(), vec![8, 4]);
    let c = classes(&server);
    assert!(c.contains(&(ErrorClass::Crashed, 1)), "{c:?}");
    // The kind stays `ensemble`; the class tells what happened.
    let stats = server.handle().request_stats();
    assert!(
        stats.errors.contains(&("ensemble".to_string(), 3)),
        "{stats:?}"
    );
}

#[test]
fn an_all_failed_lenient_ensemble_takes_the_least_retryable_class() {
    // Two process members, both judging; a third member fails by input.
    let flow = ensemble![
        ProcessServlet::new(Judge),
        ProcessServlet::new(Judge),
        ThreadServlet::new(try_worker_fn(|x: i64| {
            if x == 0 {
                Err(WorkerError::invalid_input("TypeError", "zero"))
            } else {
                Err(WorkerError::msg("always fails"))
            }
        })),
    ]
    .collect_errors();
    let server = Server::start(flow).unwrap();
    // Crash, crash, invalid input: the input is at fault.
    let e = server.call(0).unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidInput, "{e:?}");
    // Worker, worker, worker.
    let e = server.call(1).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Worker, "{e:?}");
    // Not all failed: the item succeeds with errors in their slots.
    let out = server.call(3).unwrap();
    assert_eq!(*out[0].as_ref().unwrap(), 6);
    assert_eq!(out[2].as_ref().unwrap_err().class(), ErrorClass::Worker);

    // Every member crashed: a crash, retryable.
    let flow = ensemble![ProcessServlet::new(Judge), ProcessServlet::new(Judge)].collect_errors();
    let server = Server::start(flow).unwrap();
    let e = server.call(0).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Crashed, "{e:?}");
}

#[test]
fn a_switch_keeps_its_members_classes() {
    let flow = SwitchServlet::new(|x: &i64| if *x >= 100 { 5 } else { 0 })
        .member(ProcessServlet::new(Judge));
    let server = Server::start(flow).unwrap();
    assert_eq!(
        server.call(-2).unwrap_err().class(),
        ErrorClass::InvalidInput
    );
    assert_eq!(server.call(0).unwrap_err().class(), ErrorClass::Crashed);
    // A pick outside the members is a flow bug, not the caller's fault.
    assert_eq!(server.call(100).unwrap_err().class(), ErrorClass::Worker);
}
