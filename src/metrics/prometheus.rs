//! Prometheus exposition of a server's [`DebugInfo`], through `prometheus-client`.
//!
//! A [`ServerCollector`] exports a server's metrics into a registry; [`render`]
//! turns one snapshot into text; the HTTP front serves them on `GET /metrics`.
//! Nothing is registered globally and nothing is recorded here: the counters
//! live in the server (sharded atomics), and encoding only reads a snapshot,
//! so a scrape never changes scheduling.
//!
//! # Metrics
//!
//! Server (no labels unless said):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `mpserver_server_state{state}` | gauge | 1 for the current life-cycle state, 0 for the others |
//! | `mpserver_server_ready` | gauge | 1 when running with every worker healthy |
//! | `mpserver_server_capacity` | gauge | requests allowed in flight |
//! | `mpserver_server_backlog` | gauge | requests in flight now |
//! | `mpserver_oldest_request_age_seconds` | gauge | age of the oldest pending request (0 if none) |
//! | `mpserver_requests_submitted_total` | counter | requests admitted |
//! | `mpserver_requests_total{outcome}` | counter | finished or refused requests: `outcome="ok"` or an [`Error::kind`](crate::Error::kind); `backlog_full` counts every request that never got room (refused at once, or after waiting in vain), `timeout` only admitted requests that ran out of time |
//! | `mpserver_request_errors_total{class}` | counter | failed requests by [`ErrorClass`](crate::error::ErrorClass) (`invalid_input`, `worker`, `crashed`, `overload`, `timeout`, `shutdown`) |
//! | `mpserver_request_duration_seconds` | histogram | end-to-end latency of finished requests |
//!
//! Servlets, labelled `servlet` (the node's path in the tree: `/` is the
//! root, `/0/2` its first member's third member), `kind` and `name`:
//! `mpserver_servlet_items_in_total`, `_items_ok_total`, `_items_err_total`,
//! `_skipped_total` (cancelled items skipped), `_handoffs_total` (items
//! handed straight to an idle worker process), `_batches_total`,
//! `_crashes_total`, `_restarts_total`, the gauge
//! `mpserver_servlet_queue_depth` (servlets with an input queue) and the
//! histogram `mpserver_servlet_batch_size` (process and thread servlets).
//!
//! Workers, labelled `servlet`, `name` and `index`: gauges
//! `mpserver_worker_alive` and `mpserver_worker_healthy`, counters
//! `mpserver_worker_restarts_total` and `mpserver_worker_items_total`.
//!
//! Per-stage latency of simple servlets: the histogram
//! `mpserver_servlet_stage_duration_seconds`, labelled `servlet`, `kind`,
//! `name` and `stage` (`queue`, `transfer`, `compute`, `total`: see
//! [`StageLatency`](crate::metrics::StageLatency)).
//!
//! Latency histograms are exported with 8 buckets per power of two from
//! about 1 µs to 34 s (bounds that are bucket bounds of the server's own
//! [`Histogram`](crate::metrics::Histogram), so nothing is approximated on
//! the way: a bucket is at most 12.5% wide); batch sizes with one bucket per
//! size below 32, then 8 per power of two.
//!
//! # Through `prometheus-client`
//!
//! The families are encoded by the [`prometheus_client`] crate: a
//! [`ServerCollector`] registered in an application's own
//! [`Registry`](prometheus_client::registry::Registry) exports them beside
//! the application's metrics; it reads the server's counters when the
//! registry is encoded (nothing is recorded into the registry, so a scrape
//! costs the hot path nothing). The output is the OpenMetrics text format,
//! which Prometheus scrapes natively (counters are declared without their
//! `_total` suffix in `# TYPE`; samples keep the names above).
//!
//! ```
//! use mpserver::{worker_fn, Server, ThreadServlet};
//! use prometheus_client::registry::Registry;
//!
//! let server = Server::start(ThreadServlet::new(worker_fn(|x: u8| x))).unwrap();
//! server.call(1).unwrap();
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(
//!     mpserver::metrics::prometheus::ServerCollector::new(server.handle().clone()),
//! ));
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("mpserver_requests_total{outcome=\"ok\"} 1\n"));
//! assert!(text.contains("# TYPE mpserver_request_duration_seconds histogram\n"));
//! ```
//!
//! [text format]: https://prometheus.io/docs/instrumenting/exposition_formats/

use std::fmt::Error as FmtError;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::metrics::shard::{BUCKETS, bucket_bounds};
use crate::metrics::{DebugInfo, ERROR_KINDS, ServerState};
use crate::metrics::{HistogramSnapshot, ServletSnapshot};

/// Nanoseconds per second.
const NANOS: f64 = 1e9;

/// Labels of one series.
type Labels<'a> = [(&'a str, &'a str)];

/// Exports a running server's metrics into a `prometheus-client` registry
/// (see the [module docs](self)).
pub struct ServerCollector {
    info: Box<dyn Fn() -> Option<DebugInfo> + Send + Sync>,
}

impl ServerCollector {
    /// A collector reading `handle`'s state at each encoding.
    pub fn new<In: Send + 'static, Out: Send + 'static>(handle: crate::Handle<In, Out>) -> Self {
        ServerCollector {
            info: Box::new(move || Some(handle.debug_info())),
        }
    }

    /// A collector reading the state `f` returns at each encoding (`None`:
    /// nothing to export now, e.g. a server not started yet).
    pub fn from_fn(f: impl Fn() -> Option<DebugInfo> + Send + Sync + 'static) -> Self {
        ServerCollector { info: Box::new(f) }
    }
}

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCollector").finish_non_exhaustive()
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), FmtError> {
        match (self.info)() {
            Some(info) => encode_info(&mut encoder, &info),
            None => Ok(()),
        }
    }
}

/// Renders `info` alone as OpenMetrics text (with its `# EOF` line).
pub fn render(info: &DebugInfo) -> String {
    let snapshot = info.clone();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(ServerCollector::from_fn(move || {
        Some(snapshot.clone())
    })));
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Encodes the families of `info` (see the [module docs](self)).
pub fn encode_info(e: &mut DescriptorEncoder, info: &DebugInfo) -> Result<(), FmtError> {
    let states = [
        (ServerState::Starting, "starting"),
        (ServerState::Running, "running"),
        (ServerState::Draining, "draining"),
        (ServerState::Stopped, "stopped"),
    ];
    let current = states
        .iter()
        .find(|(s, _)| *s == info.state)
        .map(|(_, n)| *n);
    encode_state(e, current.unwrap_or("stopped"), info.ready)?;
    gauge(
        e,
        "mpserver_server_capacity",
        "Requests allowed in flight across all stages.",
        info.capacity as i64,
    )?;
    gauge(
        e,
        "mpserver_server_backlog",
        "Requests in flight now.",
        info.backlog as i64,
    )?;
    let oldest = info
        .oldest_requests
        .iter()
        .map(|r| r.age_ms)
        .fold(0.0_f64, f64::max);
    gauge(
        e,
        "mpserver_oldest_request_age_seconds",
        "Age of the oldest pending request (0 if none).",
        oldest / 1e3,
    )?;

    let req = &info.requests;
    let mut m = e.encode_descriptor(
        "mpserver_requests_submitted",
        "Requests admitted into the flow.",
        None,
        MetricType::Counter,
    )?;
    counter(&mut m, &[], req.submitted)?;
    let mut m = e.encode_descriptor(
        "mpserver_requests",
        "Requests that finished or were refused, by outcome (ok or error kind).",
        None,
        MetricType::Counter,
    )?;
    counter(&mut m, &[("outcome", "ok")], req.ok)?;
    for kind in ERROR_KINDS {
        let n = req
            .errors
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, n)| *n)
            .sum::<u64>();
        counter(&mut m, &[("outcome", kind)], n)?;
    }
    // Kinds this build does not know about (from a newer core) still show.
    for (k, n) in &req.errors {
        if !ERROR_KINDS.contains(&k.as_str()) {
            counter(&mut m, &[("outcome", k)], *n)?;
        }
    }
    let mut m = e.encode_descriptor(
        "mpserver_request_errors",
        "Requests that failed, by error class.",
        None,
        MetricType::Counter,
    )?;
    for class in crate::error::ErrorClass::ALL {
        let n = req
            .error_classes
            .iter()
            .filter(|(c, _)| *c == class)
            .map(|(_, n)| *n)
            .sum::<u64>();
        counter(&mut m, &[("class", class.as_str())], n)?;
    }
    let mut m = e.encode_descriptor(
        "mpserver_request_duration_seconds",
        "End-to-end latency of finished requests.",
        None,
        MetricType::Histogram,
    )?;
    latency_histogram(&mut m, &[], &req.latency_ns)?;

    let mut nodes = Vec::new();
    flatten(&info.servlets, "/".to_string(), &mut nodes);
    encode_servlets(e, &nodes)?;
    encode_workers(e, &nodes)
}

/// Encodes `mpserver_server_state` (1 for `current`) and
/// `mpserver_server_ready`: for a front that has no server yet.
pub fn encode_state(e: &mut DescriptorEncoder, current: &str, ready: bool) -> Result<(), FmtError> {
    let mut m = e.encode_descriptor(
        "mpserver_server_state",
        "Life-cycle state of the server (1 for the current one).",
        None,
        MetricType::Gauge,
    )?;
    for state in ["starting", "running", "draining", "stopped"] {
        let v: i64 = if state == current { 1 } else { 0 };
        m.encode_family(&[("state", state)])?.encode_gauge(&v)?;
    }
    gauge(
        e,
        "mpserver_server_ready",
        "1 when the server runs and no worker was given up on.",
        bool_value(ready),
    )
}

fn encode_servlets(
    e: &mut DescriptorEncoder,
    nodes: &[(String, &ServletSnapshot)],
) -> Result<(), FmtError> {
    type Field = fn(&ServletSnapshot) -> u64;
    let counters: [(&str, &str, Field); 8] = [
        (
            "mpserver_servlet_items_in",
            "Items that entered the servlet.",
            |s| s.items_in,
        ),
        (
            "mpserver_servlet_items_ok",
            "Items the servlet produced a value for.",
            |s| s.items_ok,
        ),
        (
            "mpserver_servlet_items_err",
            "Items that failed in the servlet.",
            |s| s.items_err,
        ),
        (
            "mpserver_servlet_skipped",
            "Items skipped because their request was cancelled or expired.",
            |s| s.skipped,
        ),
        (
            "mpserver_servlet_handoffs",
            "Items a caller handed straight to an idle worker process (no queue).",
            |s| s.handoffs,
        ),
        (
            "mpserver_servlet_batches",
            "Worker calls made in batch form.",
            |s| s.batches,
        ),
        ("mpserver_servlet_crashes", "Worker process crashes.", |s| {
            s.crashes
        }),
        (
            "mpserver_servlet_restarts",
            "Worker restarts (after crashes and recycling).",
            |s| s.restarts,
        ),
    ];
    for (name, help, field) in counters {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (path, s) in nodes {
            counter(&mut m, &servlet_labels(path, s), field(s))?;
        }
    }
    let mut m = e.encode_descriptor(
        "mpserver_servlet_queue_depth",
        "Items waiting in the servlet's input queue.",
        None,
        MetricType::Gauge,
    )?;
    for (path, s) in nodes {
        if let Some(d) = s.queue_depth {
            m.encode_family(&servlet_labels(path, s))?
                .encode_gauge(&(d as i64))?;
        }
    }
    let mut m = e.encode_descriptor(
        "mpserver_servlet_batch_size",
        "Sizes of the batches handed to workers.",
        None,
        MetricType::Histogram,
    )?;
    for (path, s) in nodes {
        if !s.workers.is_empty() {
            let buckets = export_buckets(&s.batch_sizes, &BATCH_BOUNDS, 1.0);
            m.encode_family(&servlet_labels(path, s))?
                .encode_histogram::<NoLabelSet>(
                    s.batch_sizes.sum as f64,
                    s.batch_sizes.count,
                    &buckets,
                    None,
                )?;
        }
    }
    let mut m = e.encode_descriptor(
        "mpserver_servlet_stage_duration_seconds",
        "Latency of items in a simple servlet, by stage: queue (waiting for a worker), transfer (to a worker process and back, less its own time), compute (the worker's own time), total.",
        None,
        MetricType::Histogram,
    )?;
    for (path, s) in nodes {
        if s.workers.is_empty() {
            continue;
        }
        let l = &s.latency;
        for (stage, h) in [
            ("queue", &l.queue_ns),
            ("transfer", &l.transfer_ns),
            ("compute", &l.compute_ns),
            ("total", &l.total_ns),
        ] {
            if stage == "transfer" && s.kind != "process" {
                continue;
            }
            let [a, b, c] = servlet_labels(path, s);
            latency_histogram(&mut m, &[a, b, c, ("stage", stage)], h)?;
        }
    }
    Ok(())
}

fn encode_workers(
    e: &mut DescriptorEncoder,
    nodes: &[(String, &ServletSnapshot)],
) -> Result<(), FmtError> {
    type Field = fn(&crate::metrics::WorkerSnapshot) -> i64;
    let families: [(&str, MetricType, &str, Field); 4] = [
        (
            "mpserver_worker_alive",
            MetricType::Gauge,
            "1 while the worker runs.",
            |w| bool_value(w.alive),
        ),
        (
            "mpserver_worker_healthy",
            MetricType::Gauge,
            "0 once the worker crashed more often than its restart policy allows.",
            |w| bool_value(w.healthy),
        ),
        (
            "mpserver_worker_restarts",
            MetricType::Counter,
            "Times the worker was restarted.",
            |w| w.restarts as i64,
        ),
        (
            "mpserver_worker_items",
            MetricType::Counter,
            "Items the worker handled.",
            |w| w.items as i64,
        ),
    ];
    for (name, kind, help, field) in families {
        let counter_kind = matches!(kind, MetricType::Counter);
        let mut m = e.encode_descriptor(name, help, None, kind)?;
        for (path, s) in nodes {
            for w in &s.workers {
                let index = w.index.to_string();
                let labels = [
                    ("servlet", path.as_str()),
                    ("name", s.name.as_str()),
                    ("index", index.as_str()),
                ];
                let mut f = m.encode_family(&labels)?;
                if counter_kind {
                    f.encode_counter::<NoLabelSet, _, u64>(&(field(w) as u64), None)?;
                } else {
                    f.encode_gauge(&field(w))?;
                }
            }
        }
    }
    Ok(())
}

fn servlet_labels<'a>(path: &'a str, s: &'a ServletSnapshot) -> [(&'a str, &'a str); 3] {
    [
        ("servlet", path),
        ("kind", s.kind.as_str()),
        ("name", s.name.as_str()),
    ]
}

/// Depth-first list of the tree's nodes with their paths.
fn flatten<'a>(s: &'a ServletSnapshot, path: String, out: &mut Vec<(String, &'a ServletSnapshot)>) {
    for (i, m) in s.members.iter().enumerate() {
        let child = if path == "/" {
            format!("/{i}")
        } else {
            format!("{path}/{i}")
        };
        // Push the parent first, so rows read top-down.
        if i == 0 {
            out.push((path.clone(), s));
        }
        flatten(m, child, out);
    }
    if s.members.is_empty() {
        out.push((path, s));
    }
}

fn bool_value(b: bool) -> i64 {
    i64::from(b)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), FmtError> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn counter(
    m: &mut prometheus_client::encoding::MetricEncoder,
    labels: &Labels,
    v: u64,
) -> Result<(), FmtError> {
    m.encode_family(&labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// Encodes one latency series (a nanosecond histogram) in seconds, with the
/// buckets described in the [module docs](self): for an embedding program's
/// own latency families.
pub fn encode_latency(
    m: &mut prometheus_client::encoding::MetricEncoder,
    labels: &Labels,
    h: &HistogramSnapshot,
) -> Result<(), FmtError> {
    latency_histogram(m, labels, h)
}

fn latency_histogram(
    m: &mut prometheus_client::encoding::MetricEncoder,
    labels: &Labels,
    h: &HistogramSnapshot,
) -> Result<(), FmtError> {
    let buckets = export_buckets(h, &LATENCY_BOUNDS, NANOS);
    m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
        h.sum as f64 / NANOS,
        h.count,
        &buckets,
        None,
    )
}

/// Inclusive upper bounds (in the histogram's unit) of the exported buckets:
/// 8 per power of two, from `2^lo_exp` to `2^hi_exp`, with every value below
/// `2^lo_exp` in the first, and (when `lo_exp` is 4) every value below 32 in
/// a bucket of its own. Each is a bucket bound of [`Histogram`](crate::metrics::Histogram).
fn export_bounds(lo_exp: u32, hi_exp: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..BUCKETS {
        let (lo, hi) = bucket_bounds(i);
        if hi + 1 > 1u64 << hi_exp {
            break;
        }
        if lo < 16 {
            if lo_exp <= 4 {
                out.push(hi);
            }
            continue;
        }
        let e = 63 - lo.leading_zeros();
        let sub = (lo >> (e - 4)) & 15;
        if e >= lo_exp && (sub % 2 == 1 || e == 4) {
            out.push(hi);
        }
    }
    if lo_exp > 4 {
        out.insert(0, (1u64 << lo_exp) - 1);
    }
    out
}

/// Latency buckets, nanoseconds: about 1 µs to 34 s.
static LATENCY_BOUNDS: std::sync::LazyLock<Vec<u64>> =
    std::sync::LazyLock::new(|| export_bounds(10, 35));
/// Batch-size buckets: one per size below 32, then 8 per power of two up to 65536.
static BATCH_BOUNDS: std::sync::LazyLock<Vec<u64>> =
    std::sync::LazyLock::new(|| export_bounds(4, 16));

/// The exported buckets' bounds, for a scale `divisor` (1e9: nanoseconds to
/// seconds), in the `(upper bound, count)` form of `prometheus-client`
/// (counts per bucket, the encoder makes them cumulative), ending with +Inf.
fn export_buckets(h: &HistogramSnapshot, bounds: &[u64], divisor: f64) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = bounds.iter().map(|b| (*b as f64 / divisor, 0)).collect();
    out.push((f64::INFINITY, 0));
    for (hi, c) in h.bounds.iter().zip(&h.counts) {
        let i = bounds.partition_point(|b| b < hi);
        out[i].1 += c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn exported_buckets_are_histogram_bounds_and_count_exactly() {
        let b = &*LATENCY_BOUNDS;
        assert_eq!(b[0], 1023);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        // 8 per power of two: each at most 12.5% wider than the last bound.
        assert!(b.windows(2).skip(1).all(|w| (w[1] - w[0]) * 8 <= w[0] + 1));
        assert_eq!(*b.last().unwrap(), (1 << 35) - 1);
        let h = Histogram::default();
        for v in [10, 18_000, 18_000, 40_000_000_000_000] {
            h.record(v);
        }
        let out = export_buckets(&h.snapshot(), b, NANOS);
        assert_eq!(out.iter().map(|(_, c)| c).sum::<u64>(), 4);
        assert_eq!(out[0], (1023.0 / NANOS, 1));
        let (le, c) = out.iter().find(|(_, c)| *c == 2).unwrap();
        assert!(
            *le >= 18_000.0 / NANOS && *le <= 18_000.0 * 1.125 / NANOS,
            "{le} {c}"
        );
        assert_eq!(*out.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(&BATCH_BOUNDS[..32], &(0..32).collect::<Vec<u64>>()[..]);
        assert_eq!(BATCH_BOUNDS[32], 35);
    }

    #[test]
    fn paths_name_tree_positions() {
        let leaf = |name: &str| ServletSnapshot {
            kind: "thread".into(),
            name: name.into(),
            items_in: 0,
            items_ok: 0,
            items_err: 0,
            skipped: 0,
            handoffs: 0,
            batches: 0,
            batch_sizes: HistogramSnapshot::default(),
            crashes: 0,
            restarts: 0,
            latency: Default::default(),
            queue_depth: Some(0),
            workers: Vec::new(),
            members: Vec::new(),
        };
        let mut ens = leaf("ens");
        ens.members = vec![leaf("a"), leaf("b")];
        let mut root = leaf("seq");
        root.members = vec![ens, leaf("c")];
        let mut nodes = Vec::new();
        flatten(&root, "/".into(), &mut nodes);
        let got: Vec<(&str, &str)> = nodes
            .iter()
            .map(|(p, s)| (p.as_str(), s.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/", "seq"),
                ("/0", "ens"),
                ("/0/0", "a"),
                ("/0/1", "b"),
                ("/1", "c")
            ]
        );
    }
}
