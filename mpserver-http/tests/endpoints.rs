//! Every endpoint and status code of the HTTP front, over a real socket, with
//! small thread and process flows.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::Duration;

use futures::StreamExt;
use mpserver::{
    ProcessServlet, RestartPolicy, Server, ThreadServlet, Worker, WorkerContext, WorkerError,
    try_worker_fn, worker_fn,
};
use mpserver_http::ServeError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::{error_body, poll_until, start};

fn upper() -> ThreadServlet<impl Worker<Input = String, Output = String> + Clone> {
    ThreadServlet::new(worker_fn(|s: String| s.to_uppercase()))
}

/// A thread worker that sleeps `ms` on every item.
fn slow(ms: u64) -> ThreadServlet<impl Worker<Input = u64, Output = u64> + Clone> {
    ThreadServlet::new(worker_fn(move |x: u64| {
        sleep(Duration::from_millis(ms));
        x
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_health_ready_debug_metrics() {
    let app = start(Server::builder(upper()), support::config()).await;
    app.wait_ready().await;

    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\n");

    // No content type needed (curl -d sends a form type).
    let r = app.post("/call", r#""abc""#).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<String>().await.unwrap(), "ABC");

    let r = app.get("/debug").await;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["state"], "running");
    assert_eq!(d["ready"], true);
    assert_eq!(d["requests"]["ok"], 1);
    assert_eq!(d["servlets"]["kind"], "thread");

    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let text = r.text().await.unwrap();
    for needle in [
        "mpserver_server_state{state=\"running\"} 1\n",
        "mpserver_server_ready 1\n",
        "mpserver_requests_total{outcome=\"ok\"} 1\n",
        "mpserver_request_duration_seconds_count 1\n",
        "mpserver_servlet_items_in_total{servlet=\"/\",kind=\"thread\",name=\"upper\"} 1\n",
        "mpserver_worker_alive{servlet=\"/\",name=\"upper\",index=\"0\"} 1\n",
        "mpserver_http_requests_total{route=\"/call\",code=\"200\"} 1\n",
        "# TYPE mpserver_http_request_duration_seconds histogram\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let r = app.get("/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_body(r).await["error"], "not_found");

    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_or_422() {
    let app = start(Server::builder(upper()), support::config()).await;
    app.wait_ready().await;

    for body in ["{bad", "", "\"abc\" trailing", "[1,"] {
        let r = app.post("/call", body).await;
        assert_eq!(r.status(), 400, "body {body:?}");
        let e = error_body(r).await;
        assert_eq!(e["error"], "invalid_json");
        assert!(e["message"].as_str().unwrap().contains("not valid JSON"));
    }

    let r = app.post("/call", "5").await;
    assert_eq!(r.status(), 422);
    let e = error_body(r).await;
    assert_eq!(e["error"], "invalid_input");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("invalid type: integer `5`, expected a string"),
        "{e}"
    );
    assert_eq!(e["worker"], Value::Null);

    for t in ["abc", "0", "-5"] {
        let r = app
            .client
            .post(app.url("/call"))
            .header("x-timeout-ms", t)
            .body("\"x\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "timeout {t:?}");
        assert_eq!(error_body(r).await["error"], "invalid_timeout");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let app = start(
        Server::builder(upper()),
        support::config().max_body_bytes(64),
    )
    .await;
    app.wait_ready().await;
    let big = format!("\"{}\"", "a".repeat(100));
    let r = app.post("/call", big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_body(r).await["error"], "payload_too_large");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_gets_its_413_not_a_broken_pipe() {
    let app = start(Server::builder(upper()), support::config()).await;
    app.wait_ready().await;
    // Sent in full before the answer is read, as simple clients do.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let n = 100 * 1024 * 1024;
    s.write_all(
        format!("POST /call HTTP/1.1\r\nhost: x\r\ncontent-length: {n}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'a'; 1024 * 1024];
    for _ in 0..100 {
        s.write_all(&chunk)
            .await
            .expect("the server broke the connection while the body was sent");
    }
    let mut answer = vec![0u8; 4096];
    let got = s.read(&mut answer).await.expect("no answer");
    let text = String::from_utf8_lossy(&answer[..got]).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\":\"payload_too_large\""), "{text}");
    // The connection is still good for more.
    let r = app.post("/call", r#""abc""#).await;
    assert_eq!(r.status(), 200);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_error_is_500_with_context() {
    let flow = ThreadServlet::new(try_worker_fn(|s: String| {
        if s == "boom" {
            Err(WorkerError::new("ValueError", "boom is not allowed"))
        } else {
            Ok(s.len())
        }
    }))
    .name("Checker");
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;

    let r = app.post("/call", r#""boom""#).await;
    assert_eq!(r.status(), 500);
    let e = error_body(r).await;
    assert_eq!(e["error"], "worker");
    assert_eq!(e["type"], "ValueError");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("boom is not allowed"),
        "{e}"
    );
    assert_eq!(e["worker"]["name"], "Checker");
    assert_eq!(e["worker"]["index"], 0);

    // The worker goes on serving.
    let r = app.post("/call", r#""four""#).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<usize>().await.unwrap(), 4);
    app.stop().await.unwrap();
}

#[derive(Serialize, Deserialize)]
struct Crasher;

impl Worker for Crasher {
    type Input = String;
    type Output = String;
    fn call(&mut self, x: String) -> Result<String, WorkerError> {
        if x == "crash" {
            std::process::abort();
        }
        Ok(x)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_crash_is_503_with_retry_after() {
    // Short back-offs keep shutdown quick (it waits out a back-off).
    let policy = RestartPolicy::default()
        .max_restarts(0)
        .max_backoff(Duration::from_millis(300));
    let flow = ProcessServlet::new(Crasher).restart_policy(policy);
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;
    let r = app.post("/call", r#""fine""#).await;
    assert_eq!(r.status(), 200);

    let r = app.post("/call", r#""crash""#).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let e = error_body(r).await;
    assert_eq!(e["error"], "worker_crashed");
    assert_eq!(e["class"], "crashed");
    assert_eq!(e["worker"]["name"], "Crasher");
    assert!(e["worker"]["pid"].as_u64().is_some(), "{e}");

    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("mpserver_requests_total{outcome=\"worker_crashed\"} 1\n"),
        "{text}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_full_is_503_with_retry_after() {
    let app = start(Server::builder(slow(1500)).capacity(1), support::config()).await;
    app.wait_ready().await;

    let first = app.call_in_flight("7").await;

    let r = app.post("/call", "8").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let e = error_body(r).await;
    assert_eq!(e["error"], "backlog_full");
    // Full is not unready.
    assert_eq!(app.get("/readyz").await.status(), 200);

    let r = first.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<u64>().await.unwrap(), 7);
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("mpserver_http_requests_total{route=\"/call\",code=\"503\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("mpserver_requests_total{outcome=\"backlog_full\"} 1\n"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_504_from_header_query_or_cap() {
    let config = support::config().max_timeout(Duration::from_millis(300));
    let app = start(Server::builder(slow(1000).workers(3)), config).await;
    app.wait_ready().await;

    let by_header = app
        .client
        .post(app.url("/call"))
        .header("x-timeout-ms", "100")
        .body("1")
        .send();
    let by_query = app
        .client
        .post(app.url("/call?timeout_ms=100"))
        .body("2")
        .send();
    // Asks for a minute; the front's maximum (300 ms) applies.
    let capped = app
        .client
        .post(app.url("/call"))
        .header("x-timeout-ms", "60000")
        .body("3")
        .send();
    let (a, b, c) = tokio::join!(by_header, by_query, capped);
    for r in [a, b, c] {
        let r = r.unwrap();
        assert_eq!(r.status(), 504);
        let e = error_body(r).await;
        assert_eq!(e["error"], "timeout");
        assert!(e["message"].as_str().unwrap().contains("timed out"), "{e}");
    }
    app.stop().await.unwrap();
}

/// Later items finish first (below 100); 13 fails.
fn scrambled() -> ThreadServlet<impl Worker<Input = u64, Output = u64> + Clone> {
    ThreadServlet::new(try_worker_fn(|x: u64| {
        if x < 100 {
            sleep(Duration::from_millis(60u64.saturating_sub(x * 8)));
        }
        if x == 13 {
            Err(WorkerError::new("ValueError", "13 is unlucky"))
        } else {
            Ok(x * 10)
        }
    }))
    .workers(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keeps_input_order_with_errors_in_place() {
    let app = start(Server::builder(scrambled()), support::config()).await;
    app.wait_ready().await;

    let body = "1\n2\noops\n\"str\"\n13\n\n5\r\n6";
    let r = app.post("/stream", body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert_eq!(lines[0], json!(10));
    assert_eq!(lines[1], json!(20));
    assert_eq!(lines[2]["error"], "invalid_json");
    assert!(lines[2]["message"].as_str().unwrap().starts_with("line 3 "));
    assert_eq!(lines[3]["error"], "invalid_input");
    assert!(lines[3]["message"].as_str().unwrap().starts_with("line 4 "));
    assert_eq!(lines[4]["error"], "worker");
    assert_eq!(lines[4]["type"], "ValueError");
    assert_eq!(lines[4]["worker"]["name"], "scrambled");
    assert_eq!(lines[5], json!(50));
    assert_eq!(lines[6], json!(60));

    // Many items, more than fit in one read, in order.
    let body: String = (0..3000).map(|i| format!("{}\n", 100 + i % 7)).collect();
    let text = app.post("/stream", body).await.text().await.unwrap();
    let got: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    let want: Vec<u64> = (0..3000).map(|i| (100 + i % 7) * 10).collect();
    assert_eq!(got, want);

    // A per-item time limit applies to every line.
    let r = app
        .client
        .post(app.url("/stream"))
        .header("x-timeout-ms", "5")
        .body("0\n0\n")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["error"], "timeout", "{text}");
    }
    app.stop().await.unwrap();
}

static SLOW_DONE: AtomicBool = AtomicBool::new(false);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_writes_results_as_they_arrive() {
    let flow = ThreadServlet::new(worker_fn(|x: u64| {
        if x == 99 {
            sleep(Duration::from_millis(1500));
            SLOW_DONE.store(true, Ordering::SeqCst);
        }
        x
    }))
    .workers(2);
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;

    let r = app.post("/stream", "1\n2\n99\n").await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    while !seen.contains(&b'\n') {
        seen.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    // The first line is out while the last item is still being worked on.
    assert!(
        !SLOW_DONE.load(Ordering::SeqCst),
        "the first line waited for the slow item"
    );
    assert!(seen.starts_with(b"1\n"));
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(seen, b"1\n2\n99\n");
    assert!(SLOW_DONE.load(Ordering::SeqCst));
    app.stop().await.unwrap();
}

/// A thread worker whose init takes a while.
#[derive(Clone)]
struct SlowInit;

impl Worker for SlowInit {
    type Input = u64;
    type Output = u64;
    fn init(&mut self, _ctx: &WorkerContext) -> Result<(), WorkerError> {
        sleep(Duration::from_millis(1000));
        Ok(())
    }
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(x + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_while_the_flow_starts() {
    let app = start(
        Server::builder(ThreadServlet::new(SlowInit)),
        support::config(),
    )
    .await;

    // Bound and answering before the flow is up.
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "starting\n");
    let r = app.post("/call", "1").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_body(r).await["error"], "starting");
    let r = app.post("/stream", "1\n").await;
    assert_eq!(r.status(), 503);
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("mpserver_server_state{state=\"starting\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("mpserver_server_ready 0\n"), "{text}");
    let r = app.get("/debug").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "starting");

    app.wait_ready().await;
    let r = app.post("/call", "1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<u64>().await.unwrap(), 2);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_starting_stops_cleanly() {
    let mut app = start(
        Server::builder(ThreadServlet::new(SlowInit)),
        support::config(),
    )
    .await;
    assert_eq!(app.get("/readyz").await.status(), 503);
    app.trigger_stop();
    let r = app.client.post(app.url("/call")).body("1").send().await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 503);
    }
    app.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_on_shutdown_with_readiness_503() {
    let config = support::config().drain_delay(Duration::from_millis(300));
    let mut app = start(Server::builder(slow(1200)), config).await;
    app.wait_ready().await;

    let in_flight = app.call_in_flight("5").await;

    app.trigger_stop();
    let draining = poll_until(Duration::from_secs(5), || async {
        match app.client.get(app.url("/readyz")).send().await {
            Ok(r) => r.status() == 503 && r.text().await.unwrap() == "draining\n",
            Err(_) => false,
        }
    })
    .await;
    assert!(draining, "/readyz did not turn 503 while draining");
    // (What happens to new work during and after the delay:
    // truths::shutdown_turns_readiness_503_then_stops_intake_then_exits.)

    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<u64>().await.unwrap(), 5);
    app.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_over_fails_in_flight_work_with_503() {
    let config = support::config().shutdown_grace(Duration::from_millis(200));
    let mut app = start(Server::builder(slow(3000)), config).await;
    app.wait_ready().await;
    let in_flight = app.call_in_flight("5").await;
    // A stream whose lines queue behind the stuck item, with a bad line.
    let stream = app.post("/stream", "6\n7\nnope\n8\n").await;
    assert_eq!(stream.status(), 200);
    app.trigger_stop();
    match in_flight.await.unwrap() {
        Ok(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(error_body(r).await["error"], "shutdown");
        }
        // A clean close is acceptable too.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    // The worker thread is still busy, yet every line has its answer.
    let text = stream.text().await.unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["error"].to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "\"shutdown\"",
            "\"shutdown\"",
            "\"invalid_json\"",
            "\"shutdown\""
        ],
        "{text}"
    );
    app.join().await.unwrap();
}

#[derive(Clone)]
struct BadInit;

impl Worker for BadInit {
    type Input = u64;
    type Output = u64;
    fn init(&mut self, _ctx: &WorkerContext) -> Result<(), WorkerError> {
        Err(WorkerError::new("IOError", "model file missing"))
    }
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(x)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_ends_serve_with_the_error() {
    let app = start(
        Server::builder(ThreadServlet::new(BadInit)),
        support::config(),
    )
    .await;
    match app.join().await {
        Err(ServeError::Start(e)) => {
            assert!(e.to_string().contains("model file missing"), "{e}")
        }
        other => panic!("expected a start error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_over_a_running_server() {
    let server = Server::builder(upper()).start().unwrap();
    let router = mpserver_http::router(server.handle());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");

    let r = client
        .post(url("/call"))
        .body("\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<String>().await.unwrap(), "X");
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        200
    );

    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .unwrap();
    let r = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "stopped\n");
    let r = client
        .post(url("/call"))
        .body("\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_body(r).await["error"], "shutdown");
    http.abort();
}
