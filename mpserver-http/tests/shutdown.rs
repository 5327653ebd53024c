//! The `seed_http` binary as a child process: it serves the seed flow, and on
//! SIGTERM / SIGINT it drains requests in flight and exits 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::poll_until;

const HELLO: &str = "Hello, wdwdwdwdwd!";

/// A running `seed_http`; killed if a test fails before it exits.
struct Seed {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Seed {
    fn spawn(args: &[&str]) -> Seed {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seed_http"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start seed_http");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("no address line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Seed {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn wait_ready(&self) {
        let ok = poll_until(Duration::from_secs(30), || async {
            matches!(self.client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ok, "seed_http did not become ready");
    }

    async fn backlog(&self) -> u64 {
        match self.client.get(self.url("/debug")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["backlog"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "seed_http did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Classifies one NDJSON line of the seed's answers.
fn is_hello(line: &str) -> bool {
    serde_json::from_str::<Value>(line).ok() == Some(Value::from(HELLO))
}

fn is_shutdown_error(line: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .map(|v| v["error"] == "shutdown")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_exits_0() {
    let mut seed = Seed::spawn(&[]);
    seed.wait_ready().await;

    let r = seed
        .client
        .post(seed.url("/call"))
        .body(r#""world""#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<String>().await.unwrap(), HELLO);

    let mut calls = Vec::new();
    for _ in 0..12 {
        let client = seed.client.clone();
        let url = seed.url("/call");
        calls.push(tokio::spawn(async move {
            let r = client.post(url).body(r#""world""#).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.text().await?))
        }));
    }
    let stream = {
        let client = seed.client.clone();
        let url = seed.url("/stream");
        let body = "\"world\"\n".repeat(40);
        tokio::spawn(async move {
            let r = client.post(url).body(body).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.text().await?))
        })
    };
    assert!(
        poll_until(Duration::from_secs(10), || async {
            seed.backlog().await > 0
        })
        .await,
        "no request got in flight"
    );
    seed.signal(Signal::SIGTERM);

    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok((200, body)) => {
                assert_eq!(body, format!("\"{HELLO}\""));
                ok += 1;
            }
            Ok((503, body)) => assert!(body.contains("\"shutdown\""), "{body}"),
            Ok((status, body)) => panic!("unexpected {status}: {body}"),
            // Sent after the listener closed: refused or closed cleanly.
            Err(e) => assert!(!e.is_timeout(), "{e}"),
        }
    }
    match stream.await.unwrap() {
        Ok((200, text)) => {
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 40, "{text}");
            assert!(
                lines.iter().all(|l| is_hello(l) || is_shutdown_error(l)),
                "{text}"
            );
            ok += lines.iter().filter(|l| is_hello(l)).count();
        }
        Ok((503, body)) => assert!(body.contains("\"shutdown\""), "{body}"),
        Ok((status, body)) => panic!("unexpected {status}: {body}"),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    // Work in flight at the signal finished within the grace period.
    assert!(ok > 0, "nothing in flight was answered");
    let status = seed.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_after_a_short_grace_fails_the_rest_and_exits_0() {
    let mut seed = Seed::spawn(&["--grace-ms", "100", "--capacity", "8"]);
    seed.wait_ready().await;

    let n = 200;
    let r = seed
        .client
        .post(seed.url("/stream"))
        .body("\"world\"\n".repeat(n))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    while !seen.contains(&b'\n') {
        seen.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    seed.signal(Signal::SIGINT);
    let mut clean_end = true;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => seen.extend_from_slice(&c),
            Err(_) => {
                clean_end = false;
                break;
            }
        }
    }
    let text = String::from_utf8(seen).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let hello = lines.iter().filter(|l| is_hello(l)).count();
    let shut = lines.iter().filter(|l| is_shutdown_error(l)).count();
    assert_eq!(hello + shut, lines.len(), "{text}");
    assert!(hello >= 1 && hello < n, "{hello} of {n} answered");
    if clean_end {
        // Every line got its answer: a result or a shutdown error in place.
        assert_eq!(lines.len(), n, "{text}");
        assert!(shut > 0);
    }
    let status = seed.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
}
