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
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

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
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    /// Answers by (route, status code).
    answers: Mutex<BTreeMap<(usize, u16), u64>>,
    /// Requests being handled now (for streams: until the headers are sent).
    in_flight: AtomicI64,
    /// Time to the response headers, per route, nanoseconds.
    latency_ns: [Histogram; ROUTES.len()],
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
        let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.latency_ns[route].record(ns);
        let mut answers = match self.answers.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        *answers.entry((route, status)).or_insert(0) += 1;
    }

    /// Encodes the HTTP families (`ready`: whether `/readyz` answers 200).
    fn encode(&self, e: &mut DescriptorEncoder, ready: bool) -> Result<(), std::fmt::Error> {
        {
            let mut m = e.encode_descriptor(
                "mpserver_http_requests",
                "HTTP answers by route and status code.",
                None,
                MetricType::Counter,
            )?;
            let answers: Vec<((usize, u16), u64)> = {
                let answers = match self.answers.lock() {
                    Ok(a) => a,
                    Err(p) => p.into_inner(),
                };
                answers.iter().map(|(k, n)| (*k, *n)).collect()
            };
            for ((route, code), n) in answers {
                let code = code.to_string();
                m.encode_family(&[("route", ROUTES[route]), ("code", code.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        gauge(
            e,
            "mpserver_http_requests_in_flight",
            "HTTP requests being handled (streams count until their headers are sent).",
            self.in_flight.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "mpserver_http_connections_open",
            "HTTP connections open now (served by `serve`).",
            self.connections_open.load(Ordering::Relaxed),
        )?;
        let mut m = e.encode_descriptor(
            "mpserver_http_connections_closed",
            "Connections the front closed or refused because a limit tripped, by reason.",
            None,
            MetricType::Counter,
        )?;
        for why in CloseReason::ALL {
            let n = self.connections_closed[why as usize].load(Ordering::Relaxed);
            m.encode_family(&[("reason", why.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let mut m = e.encode_descriptor(
            "mpserver_http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response headers, by route.",
            None,
            MetricType::Histogram,
        )?;
        for (i, route) in ROUTES.iter().enumerate() {
            mpserver::metrics::prometheus::encode_latency(
                &mut m,
                &[("route", route)],
                &self.latency_ns[i].snapshot(),
            )?;
        }
        gauge(
            e,
            "mpserver_http_ready",
            "1 when /readyz answers 200 (every stage has its minimum of live workers).",
            i64::from(ready),
        )
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// The HTTP front's families as a `prometheus-client` collector.
#[derive(Debug)]
pub(crate) struct HttpCollector {
    pub(crate) metrics: Arc<HttpMetrics>,
    pub(crate) ready: bool,
}

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.metrics.encode(&mut encoder, self.ready)
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
