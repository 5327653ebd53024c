//! Connection hygiene: the accept loop of [`serve`](crate::serve), with a
//! cap on open connections and time limits on what a client may hold open.
//!
//! hyper serves each connection (HTTP/1.1). Around it:
//!
//! - **A cap on open connections** ([`HttpConfig::max_connections`]): a
//!   connection beyond it gets a canned `503` (JSON, `Retry-After`,
//!   `Connection: close`) at once and is closed, so health checks and calls
//!   on the connections already open go on.
//! - **Idle and header time limits**, enforced on the socket by [`ConnIo`]:
//!   a connection with no request in progress is closed after
//!   [`HttpConfig::idle_timeout`] without a byte; once the first byte of a
//!   request has arrived, its head must be complete within
//!   [`HttpConfig::header_read_timeout`]. A request is "in progress" from
//!   the moment hyper hands it to the router until its response body has
//!   been written (or dropped), so a long computation or a long stream is
//!   never cut as idle.
//! - **A write stall limit** ([`HttpConfig::write_timeout`]): a client that
//!   stops reading (its socket buffer full) for that long is cut; for a
//!   stream this drops the response, which cancels its pending items and
//!   returns their capacity.
//!
//! Body read limits are in the handlers (they know which request it is and
//! can answer 408 or 413). Each limit is logged at `warn` (idle closes at
//! `debug`: they are normal for keep-alive clients) and counted in
//! `mpserver_http_connections_closed_total{reason}`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower_service::Service;

use crate::config::HttpConfig;
use crate::error::ErrorBody;
use crate::observe::{CloseReason, HttpMetrics};

/// Per-connection state shared by the socket wrapper and the service.
struct ConnState {
    /// Requests handed to the router whose response is not finished.
    busy: AtomicUsize,
    /// When the connection last became idle (opened, or a response ended).
    idle_since: Mutex<Instant>,
    /// The connection's task, if it waits to read while a request is in
    /// progress: woken when the connection turns idle, to arm the idle limit.
    read_waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held by a request from the router call to the end of its response body.
struct Busy(Arc<ConnState>);

impl Busy {
    fn enter(st: &Arc<ConnState>) -> Self {
        st.busy.fetch_add(1, Ordering::SeqCst);
        Busy(st.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            let waker = self
                .0
                .read_waker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A response body that keeps its connection busy until it is done.
struct TrackedBody {
    inner: Body,
    busy: Option<Busy>,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if r.is_none() {
            self.busy = None;
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket of one connection, with the idle, header and write-stall
/// limits (see the module docs).
struct ConnIo {
    inner: TcpStream,
    st: Arc<ConnState>,
    peer: SocketAddr,
    metrics: Arc<HttpMetrics>,
    idle: Duration,
    header: Duration,
    write: Duration,
    /// When the first byte of the current request head arrived.
    head_started: Option<Instant>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl ConnIo {
    /// Arms `timer` for `deadline` and polls it: `true` once it has passed.
    fn expired(
        timer: &mut Option<Pin<Box<Sleep>>>,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        let t = match timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        t.as_mut().poll(cx).is_ready()
    }

    fn trip(&self, reason: CloseReason, limit: Duration) -> io::Error {
        self.metrics.connection_closed(reason);
        let ms = limit.as_millis() as u64;
        match reason {
            CloseReason::Idle => {
                tracing::debug!(peer = %self.peer, limit_ms = ms, "closing an idle connection")
            }
            _ => tracing::warn!(
                peer = %self.peer,
                limit_ms = ms,
                reason = reason.as_str(),
                "closing a connection: time limit passed"
            ),
        }
        io::Error::new(io::ErrorKind::TimedOut, reason.as_str())
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let busy = this.st.busy.load(Ordering::SeqCst) > 0;
                if busy {
                    this.head_started = None;
                } else if buf.filled().len() > before && this.head_started.is_none() {
                    this.head_started = Some(Instant::now());
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.st.busy.load(Ordering::SeqCst) > 0 {
                    // A request is in progress: its body has its own limit.
                    // Be woken when it ends, to arm the idle limit.
                    this.head_started = None;
                    this.read_timer = None;
                    *this.st.read_waker.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(cx.waker().clone());
                    if this.st.busy.load(Ordering::SeqCst) > 0 {
                        return Poll::Pending;
                    }
                }
                let (deadline, reason, limit) = match this.head_started {
                    Some(t) => (t + this.header, CloseReason::HeaderTimeout, this.header),
                    None => {
                        let since = this.st.idle_since();
                        (since + this.idle, CloseReason::Idle, this.idle)
                    }
                };
                if Self::expired(&mut this.read_timer, deadline, cx) {
                    this.read_timer = None;
                    return Poll::Ready(Err(this.trip(reason, limit)));
                }
                Poll::Pending
            }
        }
    }
}

impl ConnIo {
    fn on_write<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = match &self.write_timer {
                    Some(t) => t.deadline().into_std(),
                    None => Instant::now() + self.write,
                };
                if Self::expired(&mut self.write_timer, deadline, cx) {
                    self.write_timer = None;
                    return Poll::Ready(Err(self.trip(CloseReason::WriteStall, self.write)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The canned answer to a connection over the cap.
fn over_capacity_answer(retry_after: u64) -> Vec<u8> {
    let body = ErrorBody::new("overloaded", "too many open connections; try again later")
        .with_class(mpserver::error::ErrorClass::Overload)
        .to_line();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {retry_after}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len() - 1
    )
    .into_bytes();
    out.extend_from_slice(&body[..body.len() - 1]);
    out
}

/// Answers a connection over the cap with a 503 and closes it: the answer
/// is written at once, then what the client sent is read and dropped for a
/// moment so that closing does not reset the connection before the client
/// has read the answer.
async fn refuse(mut stream: TcpStream, answer: Arc<Vec<u8>>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await?;
            total += n;
            if n == 0 || total > 64 * 1024 {
                return Ok::<(), io::Error>(());
            }
        }
    })
    .await;
}

/// Logs a tripped limit at most once a second, with how many times it
/// tripped since the last log.
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    since: AtomicU64,
}

impl RateLimitedLog {
    fn new() -> Self {
        RateLimitedLog {
            last: Mutex::new(None),
            since: AtomicU64::new(0),
        }
    }

    fn hit(&self, f: impl FnOnce(u64)) {
        self.since.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            f(self.since.swap(0, Ordering::Relaxed));
        }
    }
}

/// Accepts and serves connections until `close` turns true, then lets the
/// open ones finish their requests (graceful shutdown; the caller bounds the
/// wait by dropping this future, which drops every connection).
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    metrics: Arc<HttpMetrics>,
    mut close: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let answer = Arc::new(over_capacity_answer(config.retry_after_secs()));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let refused_log = RateLimitedLog::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The header limit is ours (see `ConnIo`): hyper's would also count
        // the idle time before a request.
        .header_read_timeout(None)
        .keep_alive(true);
    loop {
        // Reap finished connection tasks.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = close.wait_for(|c| *c) => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: say so, and do not spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_closed(CloseReason::OverCapacity);
            refused_log.hit(|n| {
                tracing::warn!(
                    max_connections = config.max_connections,
                    refused = n,
                    "connection cap reached: answering 503 and closing"
                )
            });
            tasks.spawn(refuse(stream, answer.clone()));
            continue;
        };
        let st = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            read_waker: Mutex::new(None),
        });
        let io = ConnIo {
            inner: stream,
            st: st.clone(),
            peer,
            metrics: metrics.clone(),
            idle: config.idle_timeout,
            header: config.header_read_timeout,
            write: config.write_timeout,
            head_started: None,
            read_timer: None,
            write_timer: None,
        };
        let router = router.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::enter(&st);
            let mut router = router.clone();
            async move {
                let resp = match router.call(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                    inner,
                    busy: Some(busy),
                }))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let conn = graceful.watch(conn);
        let open = metrics.connection_opened();
        tasks.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
            drop(slot);
        });
    }
    drop(listener);
    // Let open connections finish what they are doing; idle ones close now.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {}
    }
    Ok(())
}
