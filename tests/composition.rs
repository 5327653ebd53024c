//! Servlet composition: the seed documentation's flows, nesting, switch,
//! ensembles with and without fail-fast, pass-through.

mod support;

use mpserver::prelude::*;
use mpserver::{Error, LenientEnsembleServlet};
use serde::{Deserialize, Serialize};
use support::*;

/// i64 -> i64 arithmetic, usable in processes.
#[derive(Clone, Serialize, Deserialize)]
enum Op {
    Add(i64),
    Mul(i64),
    Neg,
}

impl Worker for Op {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(match self {
            Op::Add(a) => x + *a,
            Op::Mul(m) => x * *m,
            Op::Neg => -x,
        })
    }
}

/// Vec<i64> -> i64.
#[derive(Clone, Serialize, Deserialize)]
enum Reduce {
    Sum,
    Product,
}

impl Worker for Reduce {
    type Input = Vec<i64>;
    type Output = i64;
    fn call(&mut self, x: Vec<i64>) -> Result<i64, WorkerError> {
        Ok(match self {
            Reduce::Sum => x.iter().sum(),
            Reduce::Product => x.iter().product(),
        })
    }
}

#[test]
fn seed_documentation_nested_flow() {
    // s = Sequential(P(W1), Ensemble(T(W2), Seq(P(W3), T(W4))),
    //                Ensemble(Seq(P(W5), P(W6)), Seq(P(W7), T(W8), P(W9))))
    let flow = sequential![
        ProcessServlet::new(Op::Add(1)),
        ensemble![
            ThreadServlet::new(Op::Mul(10)),
            sequential![ProcessServlet::new(Op::Add(5)), ThreadServlet::new(Op::Neg)],
        ],
        ensemble![
            sequential![
                ProcessServlet::new(Reduce::Sum),
                ProcessServlet::new(Op::Mul(2))
            ],
            sequential![
                ProcessServlet::new(Reduce::Product),
                ThreadServlet::new(Op::Add(1)),
                ProcessServlet::new(Op::Neg),
            ],
        ],
    ];
    let server = Server::start(flow).unwrap();
    for x in [0i64, 3, -7] {
        let w1 = x + 1;
        let e1 = [w1 * 10, -(w1 + 5)];
        let expect = vec![(e1[0] + e1[1]) * 2, -(e1[0] * e1[1] + 1)];
        assert_eq!(server.call(x).unwrap(), expect, "input {x}");
    }
    // The servlet tree mirrors the flow.
    let tree = server.servlets();
    assert_eq!(tree.kind, "sequential");
    assert_eq!(tree.members.len(), 3);
    assert_eq!(tree.members[1].kind, "ensemble");
    assert_eq!(tree.members[2].members[1].members.len(), 3);
}

#[test]
fn ensemble_returns_member_order_regardless_of_speed() {
    // The first member is the slowest; results still come in member order.
    let flow = ensemble![
        ProcessServlet::new(Slow { ms: 30, log: None }),
        ProcessServlet::new(Op::Add(100)),
        ThreadServlet::new(Op::Mul(-1)),
    ];
    let server = Server::start(flow).unwrap();
    assert_eq!(server.call(5).unwrap(), vec![5, 105, -5]);
    let got: Vec<Vec<i64>> = server.stream(0..20).map(Result::unwrap).collect();
    for (i, v) in got.iter().enumerate() {
        let i = i as i64;
        assert_eq!(v, &vec![i, i + 100, -i]);
    }
}

#[test]
fn ensemble_fail_fast_reports_first_error_with_member_index() {
    let flow = ensemble![
        ThreadServlet::new(Op::Add(1)),
        ProcessServlet::new(FailOn { bad: 3 }),
    ];
    let server = Server::start(flow).unwrap();
    assert_eq!(server.call(1).unwrap(), vec![2, 2]);
    let err = server.call(3).unwrap_err();
    let Error::Ensemble(e) = &err else {
        panic!("expected an ensemble error, got {err:?}")
    };
    let (i, member) = e.first().unwrap();
    assert_eq!(i, 1);
    let we = member.worker_error().unwrap();
    assert!(we.type_name().ends_with("NotAllowed"), "{}", we.type_name());
    assert_eq!(we.message(), "value 3 is not allowed");
    assert_eq!(err.worker().unwrap().name, "FailOn");
    // The server keeps serving.
    assert_eq!(server.call(4).unwrap(), vec![5, 5]);
}

#[test]
fn ensemble_without_fail_fast_keeps_errors_in_slots() {
    let flow: LenientEnsembleServlet<i64, i64> = ensemble![
        ProcessServlet::new(FailOn { bad: 1 }),
        ThreadServlet::new(FailOn { bad: 2 }),
    ]
    .collect_errors();
    let server = Server::start(flow).unwrap();
    let out = server.call(1).unwrap();
    assert!(matches!(out[0], Err(Error::Worker { .. })));
    assert_eq!(*out[1].as_ref().unwrap(), 2);
    let out = server.call(2).unwrap();
    assert_eq!(*out[0].as_ref().unwrap(), 3);
    assert!(out[1].is_err());
    // Only an item on which every member failed is an error.
    let both = ensemble![
        ThreadServlet::new(FailOn { bad: 7 }),
        ThreadServlet::new(FailOn { bad: 7 }),
    ]
    .collect_errors();
    let server = Server::start(both).unwrap();
    let err = server.call(7).unwrap_err();
    let Error::Ensemble(e) = err else {
        panic!("expected ensemble error")
    };
    assert_eq!(e.errors().iter().filter(|x| x.is_some()).count(), 2);
}

#[test]
fn errors_skip_later_stages() {
    let log = temp_path("skip");
    let flow = sequential![
        ProcessServlet::new(FailOn { bad: 0 }),
        ProcessServlet::new(Slow {
            ms: 0,
            log: Some(log.clone()),
        }),
    ];
    let server = Server::start(flow).unwrap();
    let err = server.call(0).unwrap_err();
    assert!(matches!(err, Error::Worker { .. }), "{err:?}");
    assert_eq!(server.call(1).unwrap(), 2);
    // Only the good item reached the second stage.
    assert_eq!(count_lines(&log), 1);
    let _ = std::fs::remove_file(log);
}

#[test]
fn switch_takes_each_branch() {
    let flow = SwitchServlet::new(|x: &i64| (*x).rem_euclid(3) as usize)
        .member(ProcessServlet::new(Op::Add(1000)))
        .member(ThreadServlet::new(Op::Mul(10)))
        .member(sequential![
            ProcessServlet::new(Op::Neg),
            ThreadServlet::new(Op::Add(1))
        ]);
    let server = Server::start(flow).unwrap();
    assert_eq!(server.call(3).unwrap(), 1003);
    assert_eq!(server.call(4).unwrap(), 40);
    assert_eq!(server.call(5).unwrap(), -4);
    let tree = server.servlets();
    let counts: Vec<u64> = tree
        .members
        .iter()
        .map(|m| m.items_ok.max(m.members.first().map_or(0, |x| x.items_ok)))
        .collect();
    assert_eq!(counts, vec![1, 1, 1]);
}

#[test]
fn switch_out_of_range_is_a_route_error() {
    let flow = SwitchServlet::new(|x: &i64| *x as usize).member(ThreadServlet::new(Op::Neg));
    let server = Server::start(flow).unwrap();
    assert_eq!(server.call(0).unwrap(), 0);
    assert!(matches!(
        server.call(5).unwrap_err(),
        Error::Route {
            picked: 5,
            members: 1
        }
    ));
}

#[test]
fn passthrough_in_ensemble_and_closure_worker() {
    let flow = sequential![
        ensemble![PassThrough::<i64>::new(), ProcessServlet::new(Double)],
        ThreadServlet::new(worker_fn(|v: Vec<i64>| v[0] + v[1])),
    ];
    let server = Server::start(flow).unwrap();
    assert_eq!(server.call(7).unwrap(), 21);
}

#[test]
fn worker_index_and_names_are_known_to_workers() {
    let server =
        Server::start(ProcessServlet::new(WhereAmI::default_for_test()).workers(3)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    // Calls are spread over idle workers; ask until all three have answered.
    for _ in 0..200 {
        let pending: Vec<_> = (0..6)
            .map(|_| server.submit((), CallOptions::default()).unwrap())
            .collect();
        for p in pending {
            seen.insert(p.wait().unwrap().1);
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
}

trait DefaultForTest {
    fn default_for_test() -> Self;
}

impl DefaultForTest for WhereAmI {
    fn default_for_test() -> Self {
        serde_json::from_str("{}").unwrap()
    }
}
