//! `/readyz` tells the truth: 503 while a stage has fewer live workers than
//! its minimum, 200 again soon after the workers are back. Workers are
//! killed from outside (SIGKILL).

mod support;

use std::time::{Duration, Instant};

use mpserver::{
    ProcessServlet, RestartPolicy, Server, ThreadServlet, Worker, WorkerError, sequential,
    worker_fn,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use support::{App, poll_until, start};

#[derive(Serialize, Deserialize)]
struct Echo;

impl Worker for Echo {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(x)
    }
}

/// A restart policy whose every back-off is `b`: a killed worker stays
/// down that long.
fn slow_restarts(b: Duration) -> RestartPolicy {
    RestartPolicy::default().backoff(b).max_backoff(b)
}

/// Pids of the process workers of the stage at `stage` (a path of member
/// indexes from the root).
async fn pids(app: &App, stage: &[usize]) -> Vec<i32> {
    let v: Value = app.get("/debug").await.json().await.unwrap();
    let mut node = &v["servlets"];
    for i in stage {
        node = &node["members"][*i];
    }
    node["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

async fn ready(app: &App) -> (u16, String) {
    let r = app.get("/readyz").await;
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_a_stage_has_no_live_worker() {
    let b = Duration::from_millis(1500);
    let flow = sequential![
        ThreadServlet::new(worker_fn(|x: u64| x)),
        ProcessServlet::new(Echo).restart_policy(slow_restarts(b)),
    ];
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;
    let victims = pids(&app, &[1]).await;
    assert_eq!(victims.len(), 1);
    kill(Pid::from_raw(victims[0]), Signal::SIGKILL).unwrap();
    // Down: 503 naming the stage.
    let down = poll_until(Duration::from_secs(5), || async {
        ready(&app).await.0 == 503
    })
    .await;
    assert!(
        down,
        "/readyz stayed 200 with the only worker of a stage dead"
    );
    let (_, why) = ready(&app).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("mpserver_http_ready 0\n"), "{text}");
    assert!(why.contains("/1 (Echo): 0 of 1 workers alive"), "{why}");
    // Back: 200 within a second of the worker running again.
    let up = poll_until(Duration::from_secs(20), || async {
        let v: Value = app.get("/debug").await.json().await.unwrap();
        v["servlets"]["members"][1]["workers"][0]["alive"] == true
    })
    .await;
    assert!(up, "the worker did not come back");
    let back = Instant::now();
    let ok = poll_until(Duration::from_secs(1), || async {
        ready(&app).await.0 == 200
    })
    .await;
    assert!(
        ok,
        "/readyz not 200 within 1 s of recovery ({:?})",
        back.elapsed()
    );
    assert_eq!(app.post("/call", "7").await.status(), 200);
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("mpserver_http_ready 1\n"), "{text}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_counts_live_workers_against_the_minimum() {
    let b = Duration::from_millis(3000);
    let flow = ProcessServlet::new(Echo)
        .workers(2)
        .restart_policy(slow_restarts(b));
    // Default minimum 1: one of two dead is still ready.
    let app = start(Server::builder(flow), support::config()).await;
    app.wait_ready().await;
    let victims = pids(&app, &[]).await;
    assert_eq!(victims.len(), 2);
    kill(Pid::from_raw(victims[0]), Signal::SIGKILL).unwrap();
    let one_down = poll_until(Duration::from_secs(5), || async {
        let v: Value = app.get("/debug").await.json().await.unwrap();
        v["servlets"]["workers"][0]["alive"] == false
    })
    .await;
    assert!(one_down);
    assert_eq!(ready(&app).await.0, 200);
    app.stop().await.unwrap();

    // Minimum 2: one dead is not ready.
    let flow = ProcessServlet::new(Echo)
        .workers(2)
        .restart_policy(slow_restarts(b));
    let app = start(Server::builder(flow), support::config().min_live_workers(2)).await;
    app.wait_ready().await;
    let victims = pids(&app, &[]).await;
    kill(Pid::from_raw(victims[1]), Signal::SIGKILL).unwrap();
    let down = poll_until(Duration::from_secs(5), || async {
        ready(&app).await.0 == 503
    })
    .await;
    assert!(
        down,
        "/readyz stayed 200 with 1 of 2 workers alive and a minimum of 2"
    );
    assert!(
        ready(&app)
            .await
            .1
            .contains("1 of 2 workers alive, 2 needed")
    );
    app.stop().await.unwrap();
}
