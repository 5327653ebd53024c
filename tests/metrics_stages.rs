//! Per-stage latency (issue 14 item 6): a process stage then a thread stage;
//! each stage's histograms count every item, the worker's compute time is
//! measured where it runs (in the worker process for the first stage), and
//! the Prometheus export carries them per servlet and stage.

mod support;

use mpserver::metrics::HistogramSnapshot;
use mpserver::prelude::*;
use support::*;

const N: u64 = 12;

/// The upper bound of the lowest bucket holding a value: at least the
/// smallest value recorded.
fn at_least(h: &HistogramSnapshot) -> f64 {
    h.bounds.first().map_or(0.0, |b| *b as f64)
}

#[test]
fn every_stage_of_a_process_then_thread_flow_is_timed() {
    let flow = sequential![
        ProcessServlet::new(Slow { ms: 4, log: None }).name("first"),
        ThreadServlet::new(Slow { ms: 2, log: None }).name("second"),
    ];
    let server = Server::start(flow).unwrap();
    // Single calls (handed straight to the idle worker process) and a
    // stream (through the queue).
    for x in 0..4 {
        assert_eq!(server.call(x).unwrap(), x);
    }
    let out: Vec<i64> = server
        .stream(4..N as i64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(out, (4..N as i64).collect::<Vec<_>>());

    let tree = server.servlets();
    let [first, second] = &tree.members[..] else {
        panic!("two stages: {tree:?}")
    };
    assert_eq!(
        (first.kind.as_str(), second.kind.as_str()),
        ("process", "thread")
    );
    let (p, t) = (&first.latency, &second.latency);
    for (stage, h) in [
        ("process queue", &p.queue_ns),
        ("process transfer", &p.transfer_ns),
        ("process compute", &p.compute_ns),
        ("process total", &p.total_ns),
        ("thread queue", &t.queue_ns),
        ("thread compute", &t.compute_ns),
        ("thread total", &t.total_ns),
    ] {
        assert_eq!(h.count, N, "{stage}: {h:?}");
    }
    assert_eq!(t.transfer_ns.count, 0, "a thread stage has no transfer");
    // Compute is the worker's own time: at least its sleep, measured in the
    // worker process for the first stage (carried back in RESULTS frames).
    assert!(at_least(&p.compute_ns) >= 4e6, "{:?}", p.compute_ns);
    assert!(at_least(&t.compute_ns) >= 2e6, "{:?}", t.compute_ns);
    // A stage's total covers its compute; the request's covers both stages.
    assert!(p.total_ns.sum >= p.compute_ns.sum);
    assert!(t.total_ns.sum >= t.compute_ns.sum);
    let req = server.request_stats().latency_ns;
    assert_eq!(req.count, N);
    assert!(req.sum >= p.compute_ns.sum + t.compute_ns.sum);

    let text = mpserver::metrics::prometheus::render(&server.debug_info());
    for (servlet, kind, name, stage) in [
        ("/0", "process", "first", "queue"),
        ("/0", "process", "first", "transfer"),
        ("/0", "process", "first", "compute"),
        ("/0", "process", "first", "total"),
        ("/1", "thread", "second", "compute"),
    ] {
        let line = format!(
            "mpserver_servlet_stage_duration_seconds_count{{servlet=\"{servlet}\",kind=\"{kind}\",name=\"{name}\",stage=\"{stage}\"}} {N}\n"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains("kind=\"thread\",name=\"second\",stage=\"transfer\""),
        "{text}"
    );
}

/// An ensemble after another stage: its members' stage clock starts when the
/// item enters the ensemble, not when it entered the flow (the members are
/// entered through `push_call`, which leaves the clock to its caller).
#[test]
fn an_ensemble_after_a_slow_stage_times_its_members_from_its_own_entry() {
    // Long enough that a member's own queue time on a loaded machine (a
    // process worker woken for each item) stays far below it.
    const SLOW_MS: u64 = 500;
    let flow = sequential![
        ThreadServlet::new(Slow {
            ms: SLOW_MS,
            log: None
        })
        .name("slow"),
        ensemble![
            ProcessServlet::new(Slow { ms: 0, log: None }).name("a"),
            ProcessServlet::new(Slow { ms: 0, log: None }).name("b"),
        ],
    ];
    let server = Server::start(flow).unwrap();
    let n = 6;
    assert_eq!(server.call(7).unwrap(), vec![7, 7]);
    let out: Vec<Vec<i64>> = server
        .stream(1..n as i64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(out.len(), n - 1);

    let tree = server.servlets();
    let members = &tree.members[1].members;
    assert_eq!(members.len(), 2, "{tree:?}");
    for m in members {
        let q = &m.latency.queue_ns;
        assert_eq!(q.count, n as u64, "{}: {q:?}", m.name);
        // Each item reaches an idle member at once; counted from the flow's
        // entry it would have waited out the slow stage (>= SLOW_MS) first.
        let mean_ms = q.sum as f64 / q.count as f64 / 1e6;
        assert!(
            mean_ms < SLOW_MS as f64 / 2.0,
            "{}: mean queue {mean_ms:.1} ms includes the earlier stage",
            m.name
        );
    }
}
