//! Batching: sizes, waits, per-item errors in a batch.

mod support;

use std::time::{Duration, Instant};

use mpserver::prelude::*;
use support::*;

#[test]
fn batch_size_bounds_batches_and_errors_are_per_item() {
    for flow in [
        Box::new(ProcessServlet::new(SquareBatch).batch_size(8))
            as mpserver::BoxServlet<i64, (i64, usize)>,
        Box::new(ThreadServlet::new(SquareBatch).batch_size(8)),
    ] {
        let server = Server::start(flow).unwrap();
        let data: Vec<i64> = (0..200).map(|i| if i % 50 == 7 { -1 } else { i }).collect();
        check_square_batches(&server, &data, 8, "batch_size(8)");
        let snap = server.servlets();
        assert!(snap.batches > 0);
        assert!(snap.batch_sizes.count == snap.batches);
    }
}

#[test]
fn batch_wait_counts_from_the_first_item() {
    // A lone item waits for the batch to fill, at most batch_wait_time.
    let server = Server::start(
        ThreadServlet::new(SquareBatch)
            .batch_size(64)
            .batch_wait_time(Duration::from_millis(150)),
    )
    .unwrap();
    let t = Instant::now();
    assert_eq!(server.call(3).unwrap(), (9, 1));
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    // Items arriving within the wait join the batch.
    let a = server.submit(1, CallOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let b = server.submit(2, CallOptions::default()).unwrap();
    assert_eq!(a.wait().unwrap(), (1, 2));
    assert_eq!(b.wait().unwrap(), (4, 2));
}

#[test]
fn batch_size_one_and_zero_wait_do_not_wait() {
    let server = Server::start(ProcessServlet::new(SquareBatch).batch_size(1)).unwrap();
    let t = Instant::now();
    for i in 0..20 {
        assert_eq!(server.call(i).unwrap(), (i * i, 1));
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    let server = Server::start(
        ThreadServlet::new(SquareBatch)
            .batch_size(32)
            .batch_wait_time(Duration::ZERO),
    )
    .unwrap();
    let t = Instant::now();
    assert_eq!(server.call(5).unwrap(), (25, 1));
    assert!(t.elapsed() < Duration::from_millis(100));
}
