//! Streams: order, pairing, errors in place or stopping, early exit, async.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use mpserver::Error;
use mpserver::prelude::*;
use support::*;

#[test]
fn order_is_kept_with_several_processes_and_batching() {
    let flow = sequential![
        ProcessServlet::new(Double).workers(3),
        ProcessServlet::new(SquareBatch).workers(2).batch_size(16),
    ];
    let server = Server::start(flow).unwrap();
    let n = 5000i64;
    let out: Vec<(i64, usize)> = server.stream(0..n).map(Result::unwrap).collect();
    assert_eq!(out.len(), n as usize);
    for (i, (y, b)) in out.iter().enumerate() {
        let x = 2 * i as i64;
        assert_eq!(*y, x * x);
        assert!((1..=16).contains(b));
    }
    // Under a stream, batches fill up.
    let mean = out.iter().map(|(_, b)| *b as f64).sum::<f64>() / out.len() as f64;
    assert!(mean > 2.0, "mean batch size {mean}");
}

#[test]
fn pairs_come_with_their_inputs() {
    let server = Server::start(ProcessServlet::new(Double).workers(2)).unwrap();
    let pairs: Vec<(i64, i64)> = server
        .stream_pairs(vec![5, 1, 9], StreamOptions::default())
        .map(|(x, r)| (x, r.unwrap()))
        .collect();
    assert_eq!(pairs, vec![(5, 10), (1, 2), (9, 18)]);
}

#[test]
fn bad_item_in_place_or_stop() {
    let server = Server::start(ProcessServlet::new(FailOn { bad: 3 }).workers(2)).unwrap();
    // Errors in place.
    let out: Vec<Result<i64, Error>> = server
        .stream_with(0..6, StreamOptions::default().return_exceptions(true))
        .collect();
    assert_eq!(out.len(), 6);
    for (i, r) in out.iter().enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(Error::Worker { .. })), "{r:?}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as i64 + 1);
        }
    }
    // Stop at the first error (the default).
    let out: Vec<Result<i64, Error>> = server.stream(0..100).collect();
    assert_eq!(out.len(), 4);
    assert!(out[3].is_err());
    wait_for(|| server.backlog() == 0);
}

#[test]
fn dropping_a_stream_early_cancels_and_does_not_hang() {
    let log = temp_path("early");
    let server = Server::builder(ProcessServlet::new(Slow {
        ms: 20,
        log: Some(log.clone()),
    }))
    .capacity(16)
    .start()
    .unwrap();
    let t = Instant::now();
    {
        let mut s = server.stream(0..1_000_000);
        assert_eq!(s.next().unwrap().unwrap(), 0);
        assert_eq!(s.next().unwrap().unwrap(), 1);
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    wait_for(|| server.backlog() == 0);
    let calls = count_lines(&log);
    assert!(calls < 40, "{calls} calls after dropping the stream");
    // The server is still fine.
    assert_eq!(server.call(5).unwrap(), 5);
    let _ = std::fs::remove_file(log);
}

#[test]
fn infinite_input_is_bounded_by_capacity() {
    let server = Server::builder(ProcessServlet::new(Double))
        .capacity(8)
        .start()
        .unwrap();
    let mut s = server.stream(0i64..);
    for i in 0..1000 {
        assert_eq!(s.next().unwrap().unwrap(), 2 * i);
        assert!(server.backlog() <= 8);
    }
}

#[test]
fn async_stream_in_order_with_tokio() {
    let server = Server::start(ProcessServlet::new(Double).workers(2)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out: Vec<i64> = rt.block_on(async {
        server
            .async_stream(futures::stream::iter(0..2000i64), StreamOptions::default())
            .map(Result::unwrap)
            .collect()
            .await
    });
    assert_eq!(out, (0..2000).map(|x| 2 * x).collect::<Vec<_>>());
}

#[test]
fn async_stream_errors_in_place_and_early_drop() {
    let server = Server::builder(ProcessServlet::new(FailOn { bad: 2 }))
        .capacity(4)
        .start()
        .unwrap();
    let out: Vec<Result<i64, Error>> = futures::executor::block_on(
        server
            .async_stream(
                futures::stream::iter(0..5i64),
                StreamOptions::default().return_exceptions(true),
            )
            .collect(),
    );
    assert_eq!(out.len(), 5);
    assert!(out[2].is_err());
    assert_eq!(*out[4].as_ref().unwrap(), 5);
    let firsts: Vec<Result<i64, Error>> = futures::executor::block_on(
        server
            .async_stream(
                futures::stream::iter(10..1_000_000i64),
                StreamOptions::default(),
            )
            .take(3)
            .collect(),
    );
    assert_eq!(firsts.len(), 3);
    wait_for(|| server.backlog() == 0);
}

#[test]
fn a_stream_can_leave_room_for_other_callers() {
    let server = Server::builder(ThreadServlet::new(Slow { ms: 2, log: None }).workers(2))
        .capacity(64)
        .start()
        .unwrap();
    let s = server.stream_with(0..200, StreamOptions::default().max_inflight(3));
    let mut n = 0;
    for r in s {
        assert_eq!(r.unwrap(), n);
        assert!(server.backlog() <= 3, "backlog {}", server.backlog());
        // Another caller still gets in while the stream runs.
        if n == 100 {
            assert_eq!(server.call(-1).unwrap(), -1);
        }
        n += 1;
    }
    assert_eq!(n, 200);
}

/// A stream of pairs on a server that has shut down says so, as a plain
/// stream and the async pairs do: its first input comes back with
/// `Error::Shutdown` instead of the stream ending as if the input were empty.
#[test]
fn pairs_on_a_shut_down_server_report_the_shutdown() {
    let server = Server::start(ThreadServlet::new(worker_fn(|x: i64| 2 * x))).unwrap();
    let handle = server.handle();
    server.shutdown();
    let plain: Vec<Result<i64, Error>> = handle.stream(vec![5, 1]).collect();
    assert!(
        matches!(plain.as_slice(), [Err(Error::Shutdown)]),
        "{plain:?}"
    );
    let pairs: Vec<(i64, Result<i64, Error>)> = handle
        .stream_pairs(vec![5, 1], StreamOptions::default())
        .collect();
    assert!(
        matches!(pairs.as_slice(), [(5, Err(Error::Shutdown))]),
        "{pairs:?}"
    );
}

/// A stream that stops at its first error admits nothing behind an item
/// that already failed: that work would only be cancelled.
#[test]
fn a_stream_admits_nothing_behind_a_failed_item_it_will_stop_at() {
    let never = NeverRoom::default();
    let pushes = never.pushes.clone();
    let server = Server::builder(never).capacity(8).start().unwrap();
    let opts = StreamOptions::default().timeout(Duration::from_millis(20));
    let out: Vec<_> = server.stream_with(0..10u32, opts).collect();
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Err(Error::Timeout(_))), "{out:?}");
    assert_eq!(pushes.load(std::sync::atomic::Ordering::SeqCst), 1);

    pushes.store(0, std::sync::atomic::Ordering::SeqCst);
    let out: Vec<_> = futures::executor::block_on(
        server
            .async_stream(futures::stream::iter(0..10u32), opts)
            .collect(),
    );
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Err(Error::Timeout(_))), "{out:?}");
    assert_eq!(pushes.load(std::sync::atomic::Ordering::SeqCst), 1);
}
