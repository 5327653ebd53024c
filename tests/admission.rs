//! Admission: capacity, first-come fairness and waiting for room, for every
//! calling style (blocking, submitted, async, streams), and what waiting
//! callers do to a shutdown.
//!
//! Issue 10 item 7 (a waiter that is never polled must not block admission;
//! one stream must not take all of the capacity) and item 9 (an async call
//! waiting for room must not turn a graceful drain into a forced abort).

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::Stream;
use mpserver::prelude::*;
use mpserver::{Error, Pending};
use support::*;

/// Polls `f` once with a waker that does nothing, as a future that a task
/// polled once and then parked (or forgot) would be.
fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Retries `call` until it returns `Ok` or `limit` passes; the last result.
fn retry_until_ok(
    limit: Duration,
    mut call: impl FnMut() -> Result<i64, Error>,
) -> Result<i64, Error> {
    let deadline = Instant::now() + limit;
    loop {
        let r = call();
        if r.is_ok() || Instant::now() >= deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A thread servlet whose items at or above 0 wait for `gate` to open.
fn gated(
    gate: &'static AtomicBool,
    workers: usize,
) -> ThreadServlet<impl Worker<Input = i64, Output = i64> + Clone> {
    ThreadServlet::new(worker_fn(move |x: i64| {
        if x >= 0 {
            while !gate.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        x
    }))
    .workers(workers)
}

/// A server of capacity 4 on [`gated`] workers, and a thread that streams
/// 40 items through it with `opts` and counts the results.
fn gated_stream(
    gate: &'static AtomicBool,
    opts: StreamOptions,
) -> (Server<i64, i64>, std::thread::JoinHandle<usize>) {
    let server = Server::builder(gated(gate, 4)).capacity(4).start().unwrap();
    let h = server.handle();
    let consumer =
        std::thread::spawn(move || h.stream_with(0..40i64, opts).map(Result::unwrap).count());
    (server, consumer)
}

/// A server of capacity 2 on two thread workers taking 200 ms an item,
/// filled by two submitted calls (on 1 and 2).
fn full_of_slow_calls() -> (Server<i64, i64>, Pending<i64>, Pending<i64>) {
    let server = Server::builder(ThreadServlet::new(Slow { ms: 200, log: None }).workers(2))
        .capacity(2)
        .start()
        .unwrap();
    let a = server.submit(1, CallOptions::default()).unwrap();
    let b = server.submit(2, CallOptions::default()).unwrap();
    (server, a, b)
}

/// An async call waiting for room that its task polled once and then never
/// again holds at most the one unit it was handed, not the whole admission:
/// back-pressure calls keep being admitted into the room that is free. At
/// its deadline the unit it was handed comes back.
#[test]
fn a_parked_async_waiter_does_not_block_admission() {
    let (server, a, b) = full_of_slow_calls();
    let opts = CallOptions::default()
        .timeout(Duration::from_millis(600))
        .backpressure(false);
    let mut parked = Box::pin(server.async_call_with(3, opts));
    assert!(poll_once(parked.as_mut()).is_pending());
    assert_eq!((a.wait().unwrap(), b.wait().unwrap()), (1, 2));
    // Both units are back; at most one went to the parked waiter.
    let r = retry_until_ok(Duration::from_secs(3), || server.call(4));
    assert_eq!(
        r.unwrap(),
        4,
        "a back-pressure call was refused while room was free"
    );
    // The parked waiter's deadline passes: the room it was handed returns,
    // and it learns that it never got in.
    wait_for(|| server.backlog() == 0);
    let Poll::Ready(r) = poll_once(parked.as_mut()) else {
        panic!("the waiter is still pending after its deadline")
    };
    assert!(matches!(r, Err(Error::BacklogFull(_))), "{r:?}");
    assert_eq!(server.call(5).unwrap(), 5);
}

/// The same for an async stream waiting for room whose consumer stopped
/// pulling.
#[test]
fn a_parked_async_stream_does_not_block_admission() {
    let (server, a, b) = full_of_slow_calls();
    let opts = StreamOptions::default().timeout(Duration::from_secs(30));
    let mut parked = Box::pin(server.async_stream(futures::stream::iter(10..20i64), opts));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(parked.as_mut().poll_next(&mut cx).is_pending());
    assert_eq!((a.wait().unwrap(), b.wait().unwrap()), (1, 2));
    let r = retry_until_ok(Duration::from_secs(3), || server.call(4));
    assert_eq!(
        r.unwrap(),
        4,
        "a back-pressure call was refused while room was free"
    );
    drop(parked);
    wait_for(|| server.backlog() == 0);
}

/// By default one stream takes at most a share of the capacity, so calls
/// are served beside it: here the stream's items all wait on a gate, and a
/// call still gets in.
#[test]
fn a_stream_leaves_room_for_calls_by_default() {
    static GATE: AtomicBool = AtomicBool::new(false);
    let (server, consumer) = gated_stream(&GATE, StreamOptions::default());
    wait_for(|| server.backlog() >= 1);
    let r = retry_until_ok(Duration::from_secs(3), || server.call(-1));
    GATE.store(true, Ordering::Release);
    assert_eq!(r.unwrap(), -1, "a call was refused beside a stream");
    assert_eq!(consumer.join().unwrap(), 40);
}

/// The share is configurable: a stream may still be given all of it.
#[test]
fn a_stream_may_be_given_all_of_the_capacity() {
    static GATE: AtomicBool = AtomicBool::new(false);
    let (server, consumer) = gated_stream(&GATE, StreamOptions::default().max_inflight(4));
    wait_for(|| server.backlog() == 4);
    assert!(matches!(server.call(-1), Err(Error::BacklogFull(_))));
    GATE.store(true, Ordering::Release);
    assert_eq!(consumer.join().unwrap(), 40);
}

/// An async call waiting for room when shutdown begins is not admitted (the
/// server takes no new requests once it drains): it gets `Error::Shutdown`
/// at once, and the drain completes the work in flight.
#[test]
fn an_async_call_waiting_for_room_does_not_hold_the_drain_open() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let server = Server::builder(ThreadServlet::new(Slow { ms: 300, log: None }))
        .capacity(1)
        .start()
        .unwrap();
    let a = server.submit(1, CallOptions::default()).unwrap();
    let h = server.handle();
    let waiter = rt.spawn(async move {
        let opts = CallOptions::default()
            .timeout(Duration::from_secs(20))
            .backpressure(false);
        h.async_call_with(2, opts).await
    });
    wait_for(|| server.backlog() == 1);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    server.shutdown_timeout(Duration::from_secs(8));
    let took = t.elapsed();
    assert_eq!(a.wait().unwrap(), 1, "the work in flight was not drained");
    let w = rt.block_on(waiter).unwrap();
    assert!(matches!(w, Err(Error::Shutdown)), "{w:?}");
    assert!(took < Duration::from_secs(4), "drain took {took:?}");
}

/// The same with a waiter that was polled once and then parked: it cannot
/// turn the drain into an abort (which would cancel the work in flight).
#[test]
fn a_parked_async_call_does_not_turn_the_drain_into_an_abort() {
    let server = Server::builder(ThreadServlet::new(Slow { ms: 300, log: None }))
        .capacity(1)
        .start()
        .unwrap();
    let a = server.submit(1, CallOptions::default()).unwrap();
    let opts = CallOptions::default()
        .timeout(Duration::from_secs(20))
        .backpressure(false);
    let h = server.handle();
    let mut parked = Box::pin(h.async_call_with(2, opts));
    assert!(poll_once(parked.as_mut()).is_pending());
    let t = Instant::now();
    server.shutdown_timeout(Duration::from_secs(8));
    let took = t.elapsed();
    assert_eq!(a.wait().unwrap(), 1, "the work in flight was not drained");
    assert!(took < Duration::from_secs(4), "drain took {took:?}");
    let Poll::Ready(r) = poll_once(parked.as_mut()) else {
        panic!("the parked waiter is still pending after shutdown")
    };
    assert!(matches!(r, Err(Error::Shutdown)), "{r:?}");
}
