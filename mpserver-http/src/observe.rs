//! HTTP-level observability: request logs (`tracing`, debug level) and
//! counters exported next to the flow's own metrics on `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use mpserver::metrics::Histogram;

use mpserver::metrics::prometheus::{header, histogram, sample};

/// The routes, as metric labels. Anything else is `other`.
pub(crate) const ROUTES: [&str; 7] = [
    "/call", "/stream", "/healthz", "/readyz", "/metrics", "/debug", "other",
];

fn route_index(path: &str) -> usize {
    ROUTES
        .iter()
        .position(|r| *r == path)
        .unwrap_or(ROUTES.len() - 1)
}

/// Counters of the HTTP front.
#[derive(Default)]
pub(crate) struct HttpMetrics {
    /// Answers by (route, status code).
    answers: Mutex<BTreeMap<(usize, u16), u64>>,
    /// Requests being handled now (for streams: until the headers are sent).
    in_flight: AtomicI64,
    /// Time to the response headers, per route, microseconds.
    latency_us: [Histogram; ROUTES.len()],
    /// Connections open now.
    connections_open: AtomicI64,
    /// Connections the front closed or refused, by reason.
    connections_closed: [AtomicU64; CloseReason::ALL.len()],
}

/// Counts an open connection until dropped.
pub(crate) struct OpenConnection(Arc<HttpMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpMetrics {
    /// A connection was accepted; it counts as open until the guard drops.
    pub(crate) fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// The front closed (or refused) a connection because a limit tripped.
    pub(crate) fn connection_closed(&self, why: CloseReason) {
        self.connections_closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, route: usize, status: u16, started: Instant) {
        self.latency_us[route].record(started.elapsed().as_micros() as u64);
        let mut answers = match self.answers.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        *answers.entry((route, status)).or_insert(0) += 1;
    }

    /// Appends the HTTP families in Prometheus text.
    pub(crate) fn render_into(&self, out: &mut String) {
        header(
            out,
            "mpserver_http_requests_total",
            "counter",
            "HTTP answers by route and status code.",
        );
        {
            let answers = match self.answers.lock() {
                Ok(a) => a,
                Err(p) => p.into_inner(),
            };
            for ((route, code), n) in answers.iter() {
                let code = code.to_string();
                sample(
                    out,
                    "mpserver_http_requests_total",
                    &[("route", ROUTES[*route]), ("code", &code)],
                    *n as f64,
                );
            }
        }
        header(
            out,
            "mpserver_http_requests_in_flight",
            "gauge",
            "HTTP requests being handled (streams count until their headers are sent).",
        );
        sample(
            out,
            "mpserver_http_requests_in_flight",
            &[],
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        header(
            out,
            "mpserver_http_connections_open",
            "gauge",
            "HTTP connections open now (served by `serve`).",
        );
        sample(
            out,
            "mpserver_http_connections_open",
            &[],
            self.connections_open.load(Ordering::Relaxed) as f64,
        );
        header(
            out,
            "mpserver_http_connections_closed_total",
            "counter",
            "Connections the front closed or refused because a limit tripped, by reason.",
        );
        for why in CloseReason::ALL {
            sample(
                out,
                "mpserver_http_connections_closed_total",
                &[("reason", why.as_str())],
                self.connections_closed[why as usize].load(Ordering::Relaxed) as f64,
            );
        }
        header(
            out,
            "mpserver_http_request_duration_seconds",
            "histogram",
            "Time from an HTTP request's arrival to its response headers, by route.",
        );
        for (i, route) in ROUTES.iter().enumerate() {
            histogram(
                out,
                "mpserver_http_request_duration_seconds",
                &[("route", route)],
                &self.latency_us[i].snapshot(),
                1e6,
                usize::MAX,
            );
        }
    }
}

/// Counts a request in flight until dropped (also when the client goes away
/// and the handler is dropped).
struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicI64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: counts and logs every request.
pub(crate) async fn observe(
    State(metrics): State<Arc<HttpMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = route_index(req.uri().path());
    let method = req.method().clone();
    let guard = InFlight::enter(&metrics.in_flight);
    let resp = next.run(req).await;
    drop(guard);
    let status = resp.status().as_u16();
    metrics.record(route, status, started);
    tracing::debug!(
        %method,
        route = ROUTES[route],
        status,
        micros = started.elapsed().as_micros() as u64,
        "http request"
    );
    resp
}

/// Why the front closed a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// No request within the idle time.
    Idle = 0,
    /// A request head took too long.
    HeaderTimeout = 1,
    /// The client did not read what was written for too long.
    WriteStall = 2,
    /// Over the connection cap: answered 503 and closed.
    OverCapacity = 3,
    /// A request body took too long (answered 408).
    BodyTimeout = 4,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 5] = [
        CloseReason::Idle,
        CloseReason::HeaderTimeout,
        CloseReason::WriteStall,
        CloseReason::OverCapacity,
        CloseReason::BodyTimeout,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::WriteStall => "write_timeout",
            CloseReason::OverCapacity => "over_capacity",
            CloseReason::BodyTimeout => "body_timeout",
        }
    }
}
