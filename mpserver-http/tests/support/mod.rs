//! Helpers shared by the HTTP tests: serve a flow on 127.0.0.1:0 in-process,
//! and poll with bounded retries.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use mpserver_http::{Flow, HttpConfig, ServeError, serve_with_shutdown};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A front serving in this process.
pub struct App {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

/// Serves `flow` on a fresh port (signals not handled: tests stop it).
pub async fn start<In, Out>(flow: impl Into<Flow<In, Out>>, config: HttpConfig) -> App
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let flow: Flow<In, Out> = flow.into();
    let task = tokio::spawn(serve_with_shutdown(
        listener,
        flow,
        config.handle_signals(false),
        async move {
            let _ = rx.await;
        },
    ));
    App {
        addr,
        client: reqwest::Client::new(),
        stop: Some(tx),
        task,
    }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `POST path` with a raw body.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let ok = poll_until(Duration::from_secs(20), || async {
            matches!(self.client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ok, "the front did not become ready");
    }

    /// The server's backlog, from `/debug`.
    pub async fn backlog(&self) -> u64 {
        let v: serde_json::Value = self.get("/debug").await.json().await.unwrap();
        v["backlog"].as_u64().unwrap_or(0)
    }

    /// Sends `POST /call` with `body` in the background and returns once the
    /// flow holds it (backlog 1).
    pub async fn call_in_flight(
        &self,
        body: &'static str,
    ) -> JoinHandle<reqwest::Result<reqwest::Response>> {
        let client = self.client.clone();
        let url = self.url("/call");
        let call = tokio::spawn(async move { client.post(url).body(body).send().await });
        assert!(
            poll_until(Duration::from_secs(10), || async {
                self.backlog().await == 1
            })
            .await,
            "the call never got in"
        );
        call
    }

    /// Asks the front to shut down (as a signal would).
    pub fn trigger_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and returns what `serve` returned (bounded wait).
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.trigger_stop();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("serve did not return")
            .expect("serve panicked")
    }

    /// Waits for `serve` to return by itself (bounded).
    pub async fn join(self) -> Result<(), ServeError> {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("serve did not return")
            .expect("serve panicked")
    }
}

/// Retries `check` every 20 ms until it is true or `limit` passes.
pub async fn poll_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON error body's fields.
pub async fn error_body(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    r.json().await.unwrap()
}

/// The settings tests use: the defaults without the drain delay, so that
/// stopping is quick (tests of the delay set it themselves).
pub fn config() -> HttpConfig {
    HttpConfig::default().drain_delay(Duration::ZERO)
}
