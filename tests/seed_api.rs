//! The seed's API, complete (issue 16): async streams with their inputs,
//! async streams over any `Stream`, and overload that says so (a call that
//! waited for room in vain is `BacklogFull` with the time it waited, not a
//! time-out).

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use mpserver::prelude::*;
use mpserver::{Error, ServerBacklogFull};
use support::*;

/// The async counterpart of `stream_pairs`: inputs with their results, in
/// input order, errors in place with `return_exceptions`.
#[test]
fn async_stream_pairs_keep_order_and_errors_in_place() {
    let server = Server::builder(ProcessServlet::new(FailOn { bad: 3 }).workers(2))
        .capacity(8)
        .start()
        .unwrap();
    let opts = StreamOptions::default().return_exceptions(true);
    let pairs: Vec<(i64, Result<i64, Error>)> = futures::executor::block_on(
        server
            .async_stream_pairs(futures::stream::iter(0..200i64), opts)
            .collect(),
    );
    assert_eq!(pairs.len(), 200);
    for (i, (x, r)) in pairs.iter().enumerate() {
        assert_eq!(*x, i as i64);
        match r {
            Ok(y) => assert_eq!(*y, x + 1),
            Err(e) => {
                assert_eq!(*x, 3, "{e}");
                assert!(e.to_string().contains("value 3 is not allowed"), "{e}");
            }
        }
    }
    // Without return_exceptions: the first error ends the stream, paired
    // with its input.
    let pairs: Vec<(i64, Result<i64, Error>)> = futures::executor::block_on(
        server
            .async_stream_pairs(futures::stream::iter(0..200i64), StreamOptions::default())
            .collect(),
    );
    assert_eq!(pairs.len(), 4);
    assert_eq!(pairs[3].0, 3);
    assert!(pairs[3].1.is_err());
    wait_for(|| server.backlog() == 0);
}

/// Dropping an async pair stream early cancels what it had in flight: the
/// backlog drains and the server keeps serving.
#[test]
fn dropping_an_async_pair_stream_cancels_its_work() {
    let server = Server::builder(ThreadServlet::new(Slow { ms: 20, log: None }).workers(2))
        .capacity(8)
        .start()
        .unwrap();
    let firsts: Vec<(i64, Result<i64, Error>)> = futures::executor::block_on(
        server
            .async_stream_pairs(
                futures::stream::iter(0..1_000_000i64),
                StreamOptions::default(),
            )
            .take(3)
            .collect(),
    );
    assert_eq!(
        firsts.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    wait_for(|| server.backlog() == 0);
    // At most the window (half of 8) was in flight beyond the three taken.
    let stats = server.request_stats();
    assert!(stats.submitted <= 3 + 4 + 4, "{stats:?}");
    assert_eq!(server.call(7).unwrap(), 7);
}

/// Any `Stream` is accepted, pinned inside: an `unfold` stream and an
/// `async` block turned into a stream are not `Unpin`.
#[test]
fn async_stream_takes_a_stream_that_is_not_unpin() {
    let server = Server::start(ThreadServlet::new(worker_fn(|x: u64| x * 3))).unwrap();
    let unfold = futures::stream::unfold(0u64, |n| async move {
        std::future::ready(()).await;
        (n < 5).then_some((n, n + 1))
    });
    let out: Vec<u64> = futures::executor::block_on(
        server
            .async_stream(unfold, StreamOptions::default())
            .map(Result::unwrap)
            .collect(),
    );
    assert_eq!(out, vec![0, 3, 6, 9, 12]);
    let once = futures::stream::once(async { 7u64 });
    let pairs: Vec<(u64, u64)> = futures::executor::block_on(
        server
            .async_stream_pairs(once, StreamOptions::default())
            .map(|(x, r)| (x, r.unwrap()))
            .collect(),
    );
    assert_eq!(pairs, vec![(7, 21)]);
}

/// A call that waits for room and never gets it is `BacklogFull`, carrying
/// the time it waited and the capacity, counted as `backlog_full`; the
/// immediate rejection is the same kind with `waited` zero; `Timeout` is
/// for admitted requests only.
#[test]
fn waiting_for_room_in_vain_is_backlog_full_with_the_time_waited() {
    // The busy item holds the only unit through the four waits of 100 ms
    // below, with room for a loaded machine.
    let server = Server::builder(ThreadServlet::new(Slow {
        ms: 2_000,
        log: None,
    }))
    .capacity(1)
    .start()
    .unwrap();
    let busy = server.submit(1, CallOptions::default()).unwrap();

    // At once, back-pressure on.
    let e = server.call(2).unwrap_err();
    let Error::BacklogFull(ServerBacklogFull { capacity, waited }) = e else {
        panic!("{e:?}")
    };
    assert_eq!((capacity, waited), (1, Duration::ZERO));

    // Blocking, back-pressure off: waits up to its limit, then BacklogFull.
    let t = Instant::now();
    let patient = CallOptions::default()
        .timeout(Duration::from_millis(100))
        .backpressure(false);
    let e = server.call_with(3, patient).unwrap_err();
    let Error::BacklogFull(full) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(full.capacity, 1);
    assert!(full.waited >= Duration::from_millis(100), "{full:?}");
    assert!(full.waited <= t.elapsed());
    assert_eq!(e.kind(), "backlog_full");
    assert!(e.to_string().contains("waited"), "{e}");

    // Async, back-pressure off: the same.
    let e = futures::executor::block_on(server.async_call_with(4, patient)).unwrap_err();
    assert!(
        matches!(&e, Error::BacklogFull(f) if f.capacity == 1 && f.waited >= Duration::from_millis(100)),
        "{e:?}"
    );

    // A stream item that waits for room in vain fails the same way.
    let opts = StreamOptions::default().timeout(Duration::from_millis(100));
    let first = server.stream_with(5..6, opts).next().unwrap();
    assert!(matches!(first, Err(Error::BacklogFull(_))), "{first:?}");
    let first = futures::executor::block_on(
        server
            .async_stream(futures::stream::iter(5..6), opts)
            .next(),
    )
    .unwrap();
    assert!(matches!(first, Err(Error::BacklogFull(_))), "{first:?}");

    assert_eq!(busy.wait().unwrap(), 1);
    // An admitted request that runs out of time is a time-out.
    let e = server
        .call_with(6, CallOptions::default().timeout(Duration::from_millis(50)))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Timeout(t) if !t.while_enqueuing),
        "{e:?}"
    );
    let stats = server.request_stats();
    let count = |k: &str| {
        stats
            .errors
            .iter()
            .find(|(n, _)| n == k)
            .map_or(0, |(_, c)| *c)
    };
    assert_eq!(count("backlog_full"), 5, "{stats:?}");
    assert_eq!(count("timeout"), 1, "{stats:?}");
}
