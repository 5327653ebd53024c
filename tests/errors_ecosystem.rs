//! Errors that fit the ecosystem (issue 14 item 3): `?` on `anyhow` inside a
//! worker, `mpserver::Error` into `anyhow::Error` and `Box<dyn Error>`,
//! errors built in tests and passed on with serde, a start time-out naming
//! the workers that did not answer, and a refused call handing its input
//! back.

mod support;

use std::time::Duration;

use anyhow::Context;
use mpserver::prelude::*;
use mpserver::{
    EnsembleError, Error, Rejected, ServerBacklogFull, StartError, TimeoutError, WorkerError,
};
use serde::{Deserialize, Serialize};
use support::*;

/// Parses its input with a helper that returns `anyhow::Result`: `?` works
/// in `call`, keeping the context chain.
#[derive(Clone, Serialize, Deserialize)]
struct ParseWithAnyhow;

fn parse(s: &str) -> anyhow::Result<i64> {
    s.trim()
        .parse::<i64>()
        .with_context(|| format!("parsing {s:?}"))
}

impl Worker for ParseWithAnyhow {
    type Input = String;
    type Output = i64;
    fn call(&mut self, s: String) -> Result<i64, WorkerError> {
        let v = parse(&s)?;
        if v < 0 {
            return Err(anyhow::anyhow!("negative: {v}").into());
        }
        Ok(v)
    }
}

#[test]
fn question_mark_on_anyhow_in_a_process_worker() {
    let server = Server::start(ProcessServlet::new(ParseWithAnyhow)).unwrap();
    assert_eq!(server.call(" 42 ".into()).unwrap(), 42);
    let e = server.call("x1".into()).unwrap_err();
    let we = e.worker_error().expect("a worker error");
    assert_eq!(we.message(), "parsing \"x1\"");
    assert!(
        we.sources().iter().any(|s| s.contains("invalid digit")),
        "{we:?}"
    );
    let e = server.call("-3".into()).unwrap_err();
    assert!(e.to_string().contains("negative: -3"), "{e}");
}

#[test]
fn mpserver_errors_convert_into_anyhow_and_box_dyn_error() {
    fn with_anyhow(server: &Server<i64, i64>) -> anyhow::Result<i64> {
        Ok(server.call(5)?)
    }
    fn with_box(
        server: &Server<i64, i64>,
    ) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(server.call(5)?)
    }
    let server = Server::start(ThreadServlet::new(FailOn { bad: 5 })).unwrap();
    let a = with_anyhow(&server).unwrap_err();
    assert!(a.downcast_ref::<Error>().is_some());
    assert!(a.to_string().contains("value 5 is not allowed"), "{a}");
    let b = with_box(&server).unwrap_err();
    assert!(matches!(
        b.downcast_ref::<Error>(),
        Some(Error::Worker { .. })
    ));
}

/// Errors are built in tests and round-trip through serde with their kind,
/// their message and their fields.
#[test]
fn errors_are_constructible_and_serialisable() {
    let worker = mpserver::error::WorkerId {
        name: "Model".into(),
        index: 1,
        pid: Some(42),
    };
    let errors = vec![
        Error::BacklogFull(ServerBacklogFull::new(4, Duration::from_millis(250))),
        Error::Timeout(TimeoutError {
            enqueue: Duration::from_millis(1),
            total: Duration::from_millis(100),
            limit: Duration::from_millis(100),
            while_enqueuing: false,
        }),
        Error::Worker {
            worker: worker.clone(),
            error: WorkerError::new("ValueError", "bad input"),
        },
        Error::Ensemble(EnsembleError::new(vec![
            None,
            Some(Error::Worker {
                worker,
                error: WorkerError::msg("member failed"),
            }),
        ])),
        Error::Start(StartError::Timeout {
            waited: Duration::from_secs(5),
            workers: vec!["Model#1".into()],
        }),
        Error::Shutdown,
    ];
    for e in errors {
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], e.kind(), "{json}");
        let back: Error = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.kind(), e.kind());
        assert_eq!(back.to_string(), e.to_string(), "{json}");
        assert_eq!(back.class(), e.class());
    }
}

/// Workers whose init never finishes: the start fails with its own kind,
/// naming them, and leaves no process behind.
#[derive(Clone, Serialize, Deserialize)]
struct Hang;

impl Worker for Hang {
    type Input = i64;
    type Output = i64;
    fn init(&mut self, ctx: &mpserver::WorkerContext) -> Result<(), WorkerError> {
        if ctx.worker_index() == 1 {
            std::thread::sleep(Duration::from_secs(30));
        }
        Ok(())
    }
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(x)
    }
}

#[test]
fn a_start_time_out_names_the_workers_that_did_not_answer() {
    let before = all_children();
    let err = Server::builder(ProcessServlet::new(Hang).workers(2))
        .start_timeout(Duration::from_millis(1500))
        .start()
        .expect_err("the start must time out");
    let Error::Start(StartError::Timeout { waited, workers }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*waited, Duration::from_millis(1500));
    assert_eq!(workers, &vec!["Hang#1".to_string()], "{err}");
    assert!(err.to_string().contains("Hang#1"), "{err}");
    wait_for(|| all_children().iter().all(|p| before.contains(p)));
}

/// A refused request hands its input back (no clone needed to retry).
#[test]
fn a_refused_request_hands_its_input_back() {
    #[derive(Debug, PartialEq)]
    struct NotClone(u64);
    let server = Server::builder(ThreadServlet::new(worker_fn(|x: NotClone| {
        std::thread::sleep(Duration::from_millis(200));
        x.0
    })))
    .capacity(1)
    .start()
    .unwrap();
    let first = server
        .try_submit(NotClone(1), CallOptions::default())
        .unwrap();
    let Rejected { input, error } = server
        .try_submit(NotClone(2), CallOptions::default())
        .unwrap_err();
    assert_eq!(input, NotClone(2));
    assert!(matches!(error, Error::BacklogFull(_)), "{error:?}");
    assert_eq!(first.wait().unwrap(), 1);
    // Retried with the same value.
    assert_eq!(
        server
            .try_submit(input, CallOptions::default())
            .unwrap()
            .wait()
            .unwrap(),
        2
    );
    // After shutdown: refused with Shutdown, input back.
    let h = server.handle();
    server.shutdown();
    let r = h
        .try_submit(NotClone(3), CallOptions::default())
        .unwrap_err();
    assert!(matches!(r.error, Error::Shutdown));
    assert_eq!(r.into_input(), NotClone(3));
}

/// Zero or empty settings are start errors naming what is wrong, not silent
/// clamps; a CPU-pin error names its servlet.
#[test]
fn zero_and_empty_settings_are_start_errors() {
    let start_err = |r: Result<Server<i64, i64>, Error>| match r {
        Err(Error::Start(e)) => e,
        Err(e) => panic!("expected a start error, got {e:?}"),
        Ok(_) => panic!("expected a start error, the server started"),
    };
    let e = start_err(
        Server::builder(ThreadServlet::new(Double))
            .capacity(0)
            .start(),
    );
    assert!(
        matches!(&e, StartError::Config(m) if m.contains("capacity(0)")),
        "{e}"
    );
    let e = start_err(Server::start(ThreadServlet::new(Double).workers(0)));
    assert!(
        matches!(&e, StartError::Config(m) if m.contains("no workers")),
        "{e}"
    );
    let e = start_err(Server::start(
        ProcessServlet::new(Double).cpus(Vec::<usize>::new()),
    ));
    assert!(
        matches!(&e, StartError::Config(m) if m.contains("no workers")),
        "{e}"
    );
    let e = start_err(Server::start(
        ThreadServlet::new(Double).name("Pinned").cpus([100_000]),
    ));
    assert!(
        matches!(&e, StartError::Affinity(m) if m.contains("servlet Pinned, worker 0")),
        "{e}"
    );
}

/// Every public type of the server has a `Debug` form.
#[test]
fn server_types_are_debug() {
    let builder = Server::builder(ThreadServlet::new(Double).workers(2)).capacity(3);
    assert!(format!("{builder:?}").contains("capacity: 3"));
    let server = builder.start().unwrap();
    assert!(format!("{server:?}").contains("capacity: 3"));
    let s = server.stream(0..3);
    assert!(format!("{s:?}").starts_with("ResultStream"));
    let p = server.stream_pairs(0..3, StreamOptions::default());
    assert!(format!("{p:?}").starts_with("PairStream"));
    let flow = sequential![ThreadServlet::new(Double), ThreadServlet::new(Double)];
    assert!(format!("{flow:?}").contains("ThreadServlet"));
}
