//! Error classes map to HTTP status codes: a worker crash (also inside an
//! ensemble) is a 503 with `Retry-After`, invalid input marked by a worker is
//! a 422, a worker error a 500; metrics count failures by class.

mod support;

use std::time::Duration;

use mpserver::{
    ProcessServlet, RestartPolicy, Server, ThreadServlet, Worker, WorkerError, ensemble,
    sequential, worker_fn,
};
use serde::{Deserialize, Serialize};
use support::{error_body, start};

#[derive(Serialize, Deserialize)]
struct Judge;

impl Worker for Judge {
    type Input = String;
    type Output = String;
    fn call(&mut self, x: String) -> Result<String, WorkerError> {
        match x.as_str() {
            "crash" => std::process::abort(),
            "bad" => Err(WorkerError::invalid_input(
                "TypeError",
                "bad is not allowed",
            )),
            "fail" => Err(WorkerError::msg("failed")),
            _ => Ok(x),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_an_ensemble_is_503_with_retry_after_and_counted_as_crashed() {
    let policy = RestartPolicy::default().max_backoff(Duration::from_millis(300));
    let flow = sequential![
        ensemble![
            ProcessServlet::new(Judge).restart_policy(policy),
            ThreadServlet::new(worker_fn(|s: String| s)),
        ],
        ThreadServlet::new(worker_fn(|v: Vec<String>| v.join("+"))),
    ];
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;
    let r = app.post("/call", r#""ok""#).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<String>().await.unwrap(), "ok+ok");

    let r = app.post("/call", r#""crash""#).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let e = error_body(r).await;
    assert_eq!(e["error"], "ensemble");
    assert_eq!(e["class"], "crashed");
    assert_eq!(e["worker"]["name"], "Judge");

    let r = app.post("/call", r#""bad""#).await;
    assert_eq!(r.status(), 422);
    assert!(r.headers().get("retry-after").is_none());
    let e = error_body(r).await;
    assert_eq!(e["class"], "invalid_input");
    assert_eq!(e["type"], "TypeError");

    let r = app.post("/call", r#""fail""#).await;
    assert_eq!(r.status(), 500);
    assert_eq!(error_body(r).await["class"], "worker");

    let text = app.get("/metrics").await.text().await.unwrap();
    for needle in [
        "mpserver_request_errors_total{class=\"crashed\"} 1\n",
        "mpserver_request_errors_total{class=\"invalid_input\"} 1\n",
        "mpserver_request_errors_total{class=\"worker\"} 1\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_error_lines_carry_their_class() {
    let flow = ProcessServlet::new(Judge);
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;
    let r = app.post("/stream", "\"a\"\n\"bad\"\n5\n\"b\"\n").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "a");
    assert_eq!(lines[1]["class"], "invalid_input");
    assert_eq!(lines[2]["class"], "invalid_input");
    assert_eq!(lines[2]["error"], "invalid_input");
    assert_eq!(lines[3], "b");
    app.stop().await.unwrap();
}

/// The mapping is public for users' own handlers.
#[test]
fn the_mapping_is_public() {
    use axum::http::StatusCode;
    use mpserver::error::ErrorClass;
    use mpserver_http::{ErrorResponse, status_of};
    let expected = [
        (ErrorClass::InvalidInput, 422, false),
        (ErrorClass::Worker, 500, false),
        (ErrorClass::Crashed, 503, true),
        (ErrorClass::Overload, 503, true),
        (ErrorClass::Timeout, 504, false),
        (ErrorClass::Shutdown, 503, true),
    ];
    for (class, code, retry) in expected {
        assert_eq!(
            status_of(class),
            (StatusCode::from_u16(code).unwrap(), retry),
            "{class}"
        );
    }
    let r = ErrorResponse::from_error(&mpserver::Error::Cancelled, Duration::from_millis(1500));
    assert_eq!(r.status(), 503);
    assert_eq!(r.body().class, Some(ErrorClass::Shutdown));
}
