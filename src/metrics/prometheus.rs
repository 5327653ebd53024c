//! Prometheus text exposition of a server's [`DebugInfo`].
//!
//! [`render`] turns one snapshot into the [text format] (version 0.0.4) that
//! Prometheus scrapes; the HTTP front serves it on `GET /metrics`. Nothing is
//! registered globally and nothing is recorded here: the counters live in the
//! server (relaxed atomics), and rendering only reads a snapshot, so a scrape
//! never changes scheduling.
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
//! Latency histograms come from power-of-two microsecond buckets: bucket `b`
//! holds integer values up to `2^b - 1` µs, so its `le` is `(2^b - 1) / 1e6`
//! seconds, exactly. Counts are made cumulative, as Prometheus requires.
//!
//! The helpers [`header`], [`sample`] and [`histogram`] let an embedding
//! program (such as the HTTP front) append its own families in the same
//! format.
//!
//! ```
//! use mpserver::{worker_fn, Server, ThreadServlet};
//!
//! let server = Server::start(ThreadServlet::new(worker_fn(|x: u8| x))).unwrap();
//! server.call(1).unwrap();
//! let text = mpserver::metrics::prometheus::render(&server.debug_info());
//! assert!(text.contains("mpserver_requests_total{outcome=\"ok\"} 1\n"));
//! assert!(text.contains("# TYPE mpserver_request_duration_seconds histogram\n"));
//! ```
//!
//! [text format]: https://prometheus.io/docs/instrumenting/exposition_formats/

use std::fmt::Write;

use crate::metrics::{DebugInfo, ERROR_KINDS, ServerState};
use crate::metrics::{HistogramSnapshot, ServletSnapshot};

/// Microseconds per second.
const MICROS: f64 = 1e6;
/// Finite buckets kept for batch sizes (up to 65535 items).
const BATCH_BUCKETS: usize = 17;

/// Renders `info` as Prometheus text (format version 0.0.4).
pub fn render(info: &DebugInfo) -> String {
    let mut out = String::with_capacity(8 * 1024);
    render_into(&mut out, info);
    out
}

/// Appends the rendering of `info` to `out` (see [`render`]).
pub fn render_into(out: &mut String, info: &DebugInfo) {
    header(
        out,
        "mpserver_server_state",
        "gauge",
        "Life-cycle state of the server (1 for the current one).",
    );
    for (state, name) in [
        (ServerState::Starting, "starting"),
        (ServerState::Running, "running"),
        (ServerState::Draining, "draining"),
        (ServerState::Stopped, "stopped"),
    ] {
        let v = if info.state == state { 1.0 } else { 0.0 };
        sample(out, "mpserver_server_state", &[("state", name)], v);
    }
    gauge(
        out,
        "mpserver_server_ready",
        "1 when the server runs and no worker was given up on.",
        bool_value(info.ready),
    );
    gauge(
        out,
        "mpserver_server_capacity",
        "Requests allowed in flight across all stages.",
        info.capacity as f64,
    );
    gauge(
        out,
        "mpserver_server_backlog",
        "Requests in flight now.",
        info.backlog as f64,
    );
    let oldest = info
        .oldest_requests
        .iter()
        .map(|r| r.age_ms)
        .fold(0.0_f64, f64::max);
    gauge(
        out,
        "mpserver_oldest_request_age_seconds",
        "Age of the oldest pending request (0 if none).",
        oldest / 1e3,
    );

    let req = &info.requests;
    header(
        out,
        "mpserver_requests_submitted_total",
        "counter",
        "Requests admitted into the flow.",
    );
    sample(
        out,
        "mpserver_requests_submitted_total",
        &[],
        req.submitted as f64,
    );
    header(
        out,
        "mpserver_requests_total",
        "counter",
        "Requests that finished or were refused, by outcome (ok or error kind).",
    );
    sample(
        out,
        "mpserver_requests_total",
        &[("outcome", "ok")],
        req.ok as f64,
    );
    for kind in ERROR_KINDS {
        let n = req
            .errors
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, n)| *n)
            .sum::<u64>();
        sample(
            out,
            "mpserver_requests_total",
            &[("outcome", kind)],
            n as f64,
        );
    }
    // Kinds this build does not know about (from a newer core) still show.
    for (k, n) in &req.errors {
        if !ERROR_KINDS.contains(&k.as_str()) {
            sample(out, "mpserver_requests_total", &[("outcome", k)], *n as f64);
        }
    }
    header(
        out,
        "mpserver_request_errors_total",
        "counter",
        "Requests that failed, by error class.",
    );
    for class in crate::error::ErrorClass::ALL {
        let n = req
            .error_classes
            .iter()
            .filter(|(c, _)| *c == class)
            .map(|(_, n)| *n)
            .sum::<u64>();
        sample(
            out,
            "mpserver_request_errors_total",
            &[("class", class.as_str())],
            n as f64,
        );
    }
    header(
        out,
        "mpserver_request_duration_seconds",
        "histogram",
        "End-to-end latency of finished requests.",
    );
    histogram(
        out,
        "mpserver_request_duration_seconds",
        &[],
        &req.latency_us,
        MICROS,
        usize::MAX,
    );

    let mut nodes = Vec::new();
    flatten(&info.servlets, "/".to_string(), &mut nodes);
    render_servlets(out, &nodes);
    render_workers(out, &nodes);
}

fn render_servlets(out: &mut String, nodes: &[(String, &ServletSnapshot)]) {
    type Field = fn(&ServletSnapshot) -> u64;
    let counters: [(&str, &str, Field); 8] = [
        (
            "mpserver_servlet_items_in_total",
            "Items that entered the servlet.",
            |s| s.items_in,
        ),
        (
            "mpserver_servlet_items_ok_total",
            "Items the servlet produced a value for.",
            |s| s.items_ok,
        ),
        (
            "mpserver_servlet_items_err_total",
            "Items that failed in the servlet.",
            |s| s.items_err,
        ),
        (
            "mpserver_servlet_skipped_total",
            "Items skipped because their request was cancelled or expired.",
            |s| s.skipped,
        ),
        (
            "mpserver_servlet_handoffs_total",
            "Items a caller handed straight to an idle worker process (no queue).",
            |s| s.handoffs,
        ),
        (
            "mpserver_servlet_batches_total",
            "Worker calls made in batch form.",
            |s| s.batches,
        ),
        (
            "mpserver_servlet_crashes_total",
            "Worker process crashes.",
            |s| s.crashes,
        ),
        (
            "mpserver_servlet_restarts_total",
            "Worker restarts (after crashes and recycling).",
            |s| s.restarts,
        ),
    ];
    for (name, help, field) in counters {
        header(out, name, "counter", help);
        for (path, s) in nodes {
            sample(out, name, &servlet_labels(path, s), field(s) as f64);
        }
    }
    header(
        out,
        "mpserver_servlet_queue_depth",
        "gauge",
        "Items waiting in the servlet's input queue.",
    );
    for (path, s) in nodes {
        if let Some(d) = s.queue_depth {
            sample(
                out,
                "mpserver_servlet_queue_depth",
                &servlet_labels(path, s),
                d as f64,
            );
        }
    }
    header(
        out,
        "mpserver_servlet_batch_size",
        "histogram",
        "Sizes of the batches handed to workers.",
    );
    for (path, s) in nodes {
        if !s.workers.is_empty() {
            histogram(
                out,
                "mpserver_servlet_batch_size",
                &servlet_labels(path, s),
                &s.batch_sizes,
                1.0,
                BATCH_BUCKETS,
            );
        }
    }
}

fn render_workers(out: &mut String, nodes: &[(String, &ServletSnapshot)]) {
    type Field = fn(&crate::metrics::WorkerSnapshot) -> f64;
    let families: [(&str, &str, &str, Field); 4] = [
        (
            "mpserver_worker_alive",
            "gauge",
            "1 while the worker runs.",
            |w| bool_value(w.alive),
        ),
        (
            "mpserver_worker_healthy",
            "gauge",
            "0 once the worker crashed more often than its restart policy allows.",
            |w| bool_value(w.healthy),
        ),
        (
            "mpserver_worker_restarts_total",
            "counter",
            "Times the worker was restarted.",
            |w| w.restarts as f64,
        ),
        (
            "mpserver_worker_items_total",
            "counter",
            "Items the worker handled.",
            |w| w.items as f64,
        ),
    ];
    for (name, kind, help, field) in families {
        header(out, name, kind, help);
        for (path, s) in nodes {
            for w in &s.workers {
                let index = w.index.to_string();
                let labels = [
                    ("servlet", path.as_str()),
                    ("name", s.name.as_str()),
                    ("index", index.as_str()),
                ];
                sample(out, name, &labels, field(w));
            }
        }
    }
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

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, "gauge", help);
    sample(out, name, &[], v);
}

/// Writes a family's `# HELP` and `# TYPE` lines. `kind` is `"counter"`,
/// `"gauge"` or `"histogram"`. Write the header once, then all the family's
/// samples.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line, `name{labels} value`; label values are escaped.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    write_labels(out, labels, None);
    let _ = writeln!(out, " {}", format_value(value));
}

/// Writes the samples of one histogram series: cumulative `_bucket` lines
/// (with `le` = bucket bound ÷ `divisor`, at most `max_buckets` finite ones,
/// then `+Inf`), `_sum` (÷ `divisor`) and `_count`. Use `divisor` 1e6 for a
/// microsecond histogram reported in seconds, 1 for plain counts.
///
/// A [`HistogramSnapshot`]'s last bucket also takes every value above its
/// bound, so it is reported under `+Inf` only.
pub fn histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    h: &HistogramSnapshot,
    divisor: f64,
    max_buckets: usize,
) {
    let finite = h.bounds.len().saturating_sub(1).min(max_buckets);
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for i in 0..finite {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        let le = format_value(h.bounds[i] as f64 / divisor);
        out.push_str(&bucket);
        write_labels(out, labels, Some(&le));
        let _ = writeln!(out, " {cumulative}");
    }
    // +Inf and _count agree with the buckets even if the snapshot's counters
    // were read a moment apart.
    let total: u64 = h.counts.iter().sum();
    out.push_str(&bucket);
    write_labels(out, labels, Some("+Inf"));
    let _ = writeln!(out, " {total}");
    sample(out, &format!("{name}_sum"), labels, h.sum as f64 / divisor);
    sample(out, &format!("{name}_count"), labels, total as f64);
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (k, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // Shortest round-trip form, never in exponent notation.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[u64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: (0..counts.len()).map(|b| (1u64 << b) - 1).collect(),
            counts: counts.to_vec(),
            sum: 42,
            count: counts.iter().sum(),
        }
    }

    #[test]
    fn histogram_is_cumulative_with_inf_bucket() {
        let mut out = String::new();
        histogram(
            &mut out,
            "x",
            &[("a", "b\"c")],
            &hist(&[1, 2, 0, 3]),
            1.0,
            usize::MAX,
        );
        assert_eq!(
            out,
            "x_bucket{a=\"b\\\"c\",le=\"0\"} 1\n\
             x_bucket{a=\"b\\\"c\",le=\"1\"} 3\n\
             x_bucket{a=\"b\\\"c\",le=\"3\"} 3\n\
             x_bucket{a=\"b\\\"c\",le=\"+Inf\"} 6\n\
             x_sum{a=\"b\\\"c\"} 42\n\
             x_count{a=\"b\\\"c\"} 6\n"
        );
    }

    #[test]
    fn seconds_bounds_are_exact() {
        let mut out = String::new();
        histogram(&mut out, "t", &[], &hist(&[0, 0, 5, 0]), MICROS, 3);
        assert!(out.contains("t_bucket{le=\"0.000003\"} 5\n"), "{out}");
        assert!(out.contains("t_sum 0.000042\n"), "{out}");
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
            batch_sizes: hist(&[0; 4]),
            crashes: 0,
            restarts: 0,
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
