//! The `seed_http` binary as a child process: it serves the seed flow, and on
//! SIGTERM / SIGINT it drains requests in flight and exits 0.

mod seed_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use seed_support::Seed;
use serde_json::Value;
use support::poll_until;

const HELLO: &str = "Hello, wdwdwdwdwd!";

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
    let mut seed = Seed::spawn(&["--drain-delay-ms", "0"]);
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
    let mut seed = Seed::spawn(&[
        "--grace-ms",
        "100",
        "--capacity",
        "8",
        "--drain-delay-ms",
        "0",
    ]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sequence_is_ready_503_then_drain_then_exit() {
    let mut seed = Seed::spawn(&["--drain-delay-ms", "1500"]);
    seed.wait_ready().await;
    seed.signal(Signal::SIGTERM);
    let t = std::time::Instant::now();
    // Readiness 503 at once, liveness 200, work still answered.
    let not_ready = poll_until(Duration::from_secs(1), || async {
        match seed.client.get(seed.url("/readyz")).send().await {
            Ok(r) => r.status() == 503 && r.text().await.unwrap() == "draining\n",
            Err(_) => false,
        }
    })
    .await;
    assert!(not_ready, "/readyz did not turn 503 at SIGTERM");
    let health = seed.client.get(seed.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let r = seed.post("/call", r#""world""#).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<String>().await.unwrap(), HELLO);
    // Then the process drains and exits 0, not before the delay.
    let status = seed.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
}
