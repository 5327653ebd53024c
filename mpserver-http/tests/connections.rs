//! Connection hygiene of `serve`: idle, header, body and write-stall time
//! limits and the cap on open connections, over raw sockets.

mod support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use mpserver::{Server, ThreadServlet, Worker, worker_fn};
use support::{App, poll_until, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn echo() -> ThreadServlet<impl Worker<Input = String, Output = String> + Clone> {
    ThreadServlet::new(worker_fn(|s: String| s))
}

/// Reads until the peer closes (or `limit` passes): what was read, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn metric(app: &App, needle: &str) -> bool {
    app.get("/metrics")
        .await
        .text()
        .await
        .unwrap()
        .contains(needle)
}

/// The value of the sample `series` (name and labels) in `/metrics`.
async fn value(app: &App, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed() {
    let config = support::config()
        .idle_timeout(Duration::from_millis(300))
        .header_read_timeout(Duration::from_millis(300));
    let app = start(Server::builder(echo()), config).await;
    app.wait_ready().await;

    // Silent from the start.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let t = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection was held open");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    // Half a request head, then nothing.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"POST /call HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a connection with a half-sent head was held open");

    // Idle after a request, on a keep-alive connection.
    let mut ka = TcpStream::connect(app.addr).await.unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut ka, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "an idle keep-alive connection was held open");

    // (The test client's own pooled connection may have idled out too.)
    let idle = "mpserver_http_connections_closed_total{reason=\"idle_timeout\"}";
    assert!(value(&app, idle).await >= 2.0);
    let header = "mpserver_http_connections_closed_total{reason=\"header_timeout\"}";
    assert_eq!(value(&app, header).await, 1.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_are_not_idle() {
    let slow = ThreadServlet::new(worker_fn(|ms: u64| {
        sleep(Duration::from_millis(ms));
        ms
    }));
    let config = support::config()
        .idle_timeout(Duration::from_millis(200))
        .header_read_timeout(Duration::from_millis(200));
    let app = start(Server::builder(slow), config).await;
    app.wait_ready().await;
    let r = app.post("/call", "800").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<u64>().await.unwrap(), 800);
    // A stream whose items take longer than the idle limit.
    let r = app.post("/stream", "500\n500\n").await;
    assert_eq!(r.text().await.unwrap(), "500\n500\n");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_408_and_closed() {
    let config = support::config().body_read_timeout(Duration::from_millis(300));
    let app = start(Server::builder(echo()), config).await;
    app.wait_ready().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /call HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n\"abc")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(closed);

    // A stream whose input stops: an error line, then the end.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /stream HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n6\r\n\"abc\"\n\r\n",
    )
    .await
    .unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(text.contains("\"abc\"\n"), "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
    app.stop().await.unwrap();
}

/// Sends `GET path` on `s` and reads one whole answer (keep-alive).
async fn get_on(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_fast_503() {
    let config = support::config().max_connections(3);
    let app = start(Server::builder(echo()), config).await;
    app.wait_ready().await;
    // The test client may keep a pooled connection or two: open connections
    // (each served, then held) until one is over the cap.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let t = Instant::now();
        let text = get_on(&mut s, "/readyz").await;
        if text.starts_with("HTTP/1.1 200") {
            held.push(s);
            continue;
        }
        refused = Some((s, text, t.elapsed()));
        break;
    }
    let (mut over, text, took) = refused.expect("no connection was refused");
    assert!(
        held.len() <= 3,
        "{} connections served over a cap of 3",
        held.len()
    );
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("\"error\":\"overloaded\""), "{text}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (_, closed) = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert!(closed);
    // The connections already open go on being served.
    let mut first = held.remove(0);
    assert!(
        get_on(&mut first, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        get_on(&mut first, "/metrics")
            .await
            .contains("mpserver_http_connections_closed_total{reason=\"over_capacity\"} 1\n")
    );
    // Room again once one closes.
    drop(first);
    let ok = poll_until(Duration::from_secs(5), || async {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        get_on(&mut s, "/healthz").await.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(ok);
    drop(held);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_stops_reading_is_cut_and_its_capacity_returns() {
    // Each item answers 256 KiB: a client that reads nothing fills its
    // socket buffers within a few items.
    let big = ThreadServlet::new(worker_fn(|n: usize| "x".repeat(n)));
    let config = support::config().write_timeout(Duration::from_millis(500));
    let app = start(Server::builder(big).capacity(8), config).await;
    app.wait_ready().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let lines = "262144\n".repeat(200);
    let head = format!(
        "POST /stream HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        lines.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(lines.as_bytes()).await.unwrap();
    // Read nothing. The front cuts the connection, the stream is dropped,
    // and its items leave the server.
    let cut = poll_until(Duration::from_secs(10), || {
        metric(
            &app,
            "mpserver_http_connections_closed_total{reason=\"write_timeout\"} 1\n",
        )
    })
    .await;
    assert!(cut, "the stalled client was not cut");
    let drained = poll_until(Duration::from_secs(5), || async {
        app.backlog().await == 0
    })
    .await;
    assert!(drained, "capacity did not return");
    drop(s);
    app.stop().await.unwrap();
}
