//! Small truths: every error answer is JSON (405 included), invalid UTF-8 is
//! a 400, the drain delay is real and observable (readiness 503 while work is
//! still taken, then intake stops), `/debug` shows each worker's back-off and
//! last exit, and stream items count in the oldest-request age.

mod support;

use std::thread::sleep;
use std::time::Duration;

use mpserver::{
    ProcessServlet, RestartPolicy, Server, ThreadServlet, Worker, WorkerError, worker_fn,
};
use mpserver_http::HttpConfig;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use support::{error_body, poll_until, start};

fn slow(ms: u64) -> ThreadServlet<impl Worker<Input = u64, Output = u64> + Clone> {
    ThreadServlet::new(worker_fn(move |x: u64| {
        sleep(Duration::from_millis(ms));
        x
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_json_and_bad_utf8_is_400() {
    let flow = ThreadServlet::new(worker_fn(|s: String| s));
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;

    let r = app.get("/call").await;
    assert_eq!(r.status(), 405);
    assert_eq!(error_body(r).await["error"], "method_not_allowed");
    let r = app.client.put(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_body(r).await["error"], "method_not_allowed");

    // Valid JSON syntax, invalid UTF-8 inside a string.
    let r = app.post("/call", b"\"ab\xff\xfecd\"".to_vec()).await;
    assert_eq!(r.status(), 400);
    let e = error_body(r).await;
    assert_eq!(e["error"], "invalid_json");
    assert!(e["message"].as_str().unwrap().contains("UTF-8"), "{e}");
    // The same in a stream line: an error line in its place.
    let r = app
        .post("/stream", b"\"a\"\n\"\xff\"\n\"b\"\n".to_vec())
        .await;
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[1]["error"], "invalid_json");
    app.stop().await.unwrap();
}

#[test]
fn drain_delay_is_on_by_default() {
    assert_eq!(
        HttpConfig::default().get_drain_delay(),
        Duration::from_secs(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_readiness_503_then_stops_intake_then_exits() {
    let config = support::config().drain_delay(Duration::from_millis(1500));
    let mut app = start(Server::builder(slow(2500)), config).await;
    app.wait_ready().await;
    let in_flight = app.call_in_flight("5").await;

    app.trigger_stop();
    // 1. Readiness 503 at once; liveness still 200.
    let not_ready = poll_until(Duration::from_secs(1), || async {
        let r = app.get("/readyz").await;
        r.status() == 503 && r.text().await.unwrap() == "draining\n"
    })
    .await;
    assert!(not_ready, "/readyz did not turn 503 at the signal");
    assert_eq!(app.get("/healthz").await.status(), 200);
    // 2. During the drain delay, work is still taken (load balancers may not
    //    have noticed yet).
    let during = {
        let (client, url) = (app.client.clone(), app.url("/call"));
        tokio::spawn(async move { client.post(url).body("6").send().await })
    };
    // 3. After it, intake stops: 503 shutdown with Retry-After, while the
    //    flow drains. (Probes ask for 100 ms: taken during the delay, they
    //    time out with 504.)
    let refused = poll_until(Duration::from_secs(5), || async {
        let probe = app
            .client
            .post(app.url("/call"))
            .header("x-timeout-ms", "100");
        match probe.body("7").send().await {
            Ok(r) if r.status() == 503 => {
                r.headers().contains_key("retry-after")
                    && error_body(r).await["error"] == "shutdown"
            }
            _ => false,
        }
    })
    .await;
    assert!(refused, "intake did not stop after the drain delay");
    // 4. What was in flight finishes; serve returns.
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let r = during.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "work refused during the drain delay");
    assert_eq!(r.json::<u64>().await.unwrap(), 6);
    app.join().await.unwrap();
}

#[derive(Serialize, Deserialize)]
struct Echo;

impl Worker for Echo {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(x)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_shows_back_off_and_last_exit() {
    let policy = RestartPolicy::default()
        .backoff(Duration::from_millis(2000))
        .max_backoff(Duration::from_millis(2000));
    let flow = ProcessServlet::new(Echo).restart_policy(policy);
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;
    let v: Value = app.get("/debug").await.json().await.unwrap();
    let w = &v["servlets"]["workers"][0];
    assert_eq!(w["backoff_until_unix_ms"], Value::Null, "{w}");
    assert_eq!(w["last_exit"], Value::Null, "{w}");
    let pid = w["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let in_backoff = poll_until(Duration::from_secs(5), || async {
        let v: Value = app.get("/debug").await.json().await.unwrap();
        v["servlets"]["workers"][0]["backoff_until_unix_ms"].is_u64()
    })
    .await;
    assert!(in_backoff, "/debug never showed the back-off");
    let v: Value = app.get("/debug").await.json().await.unwrap();
    let seen = &v["servlets"]["workers"][0];
    assert_eq!(seen["alive"], false, "{seen}");
    assert!(
        seen["last_exit"].as_str().unwrap_or("").contains("SIGKILL"),
        "{seen}"
    );
    // Back: alive, no back-off, the last exit kept, one restart.
    let back = poll_until(Duration::from_secs(10), || async {
        let v: Value = app.get("/debug").await.json().await.unwrap();
        let w = &v["servlets"]["workers"][0];
        w["alive"] == true && w["backoff_until_unix_ms"].is_null() && w["restarts"] == 1
    })
    .await;
    assert!(back, "the worker did not come back");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_count_in_the_oldest_request_age() {
    let app = start(Server::builder(slow(1500)), support::config()).await;
    app.wait_ready().await;
    let client = app.client.clone();
    let url = app.url("/stream");
    let stream = tokio::spawn(async move { client.post(url).body("1\n").send().await });
    let old = poll_until(Duration::from_secs(5), || async {
        let v: Value = app.get("/debug").await.json().await.unwrap();
        v["oldest_requests"][0]["age_ms"].as_f64().unwrap_or(0.0) > 200.0
    })
    .await;
    assert!(old, "a stream item in flight is not in oldest_requests");
    let text = app.get("/metrics").await.text().await.unwrap();
    let age: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("mpserver_oldest_request_age_seconds ")?
                .parse()
                .ok()
        })
        .unwrap();
    assert!(age > 0.2, "{age}\n{text}");
    let r = stream.await.unwrap().unwrap();
    assert_eq!(r.text().await.unwrap(), "1\n");
    app.stop().await.unwrap();
}
