//! `mpserver::Bytes` through worker processes, with both codecs.

use mpserver::prelude::*;
use mpserver::{Bytes, Codec};
use serde::{Deserialize, Serialize};

/// Reverses the bytes and reports the input length.
#[derive(Clone, Serialize, Deserialize)]
struct Reverse;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Reversed {
    len: u64,
    data: Bytes,
}

impl Worker for Reverse {
    type Input = Bytes;
    type Output = Reversed;
    fn call(&mut self, x: Bytes) -> Result<Reversed, WorkerError> {
        let mut v = x.to_vec();
        v.reverse();
        Ok(Reversed {
            len: x.len() as u64,
            data: v.into(),
        })
    }
    fn call_batch(&mut self, xs: Vec<Bytes>) -> Vec<Result<Reversed, WorkerError>> {
        xs.into_iter().map(|x| self.call(x)).collect()
    }
}

/// Payloads of several sizes, all 256 byte values, empty included.
fn payloads() -> Vec<Bytes> {
    [0usize, 1, 255, 4096, 65_536, 1 << 20]
        .into_iter()
        .map(|n| (0..n).map(|i| (i * 7 % 256) as u8).collect())
        .collect()
}

fn check(server: &Server<Bytes, Reversed>) {
    for p in payloads() {
        let out = server.call(p.clone()).unwrap();
        assert_eq!(out.len, p.len() as u64);
        let mut expected = p.to_vec();
        expected.reverse();
        assert_eq!(out.data, expected);
    }
    // A stream keeps order and values.
    let items: Vec<Bytes> = (0..200u32)
        .map(|i| Bytes::from(i.to_le_bytes().repeat(100)))
        .collect();
    for (i, r) in server.stream(items.clone()).enumerate() {
        let r = r.unwrap();
        let mut expected = items[i].to_vec();
        expected.reverse();
        assert_eq!(r.data, expected, "item {i}");
    }
}

#[test]
fn bytes_round_trip_through_a_process_worker_with_postcard() {
    let server = Server::start(ProcessServlet::new(Reverse)).unwrap();
    check(&server);
}

#[test]
fn bytes_round_trip_through_a_process_worker_with_messagepack() {
    let server = Server::start(ProcessServlet::new(Reverse).codec(Codec::MessagePack)).unwrap();
    check(&server);
}

#[test]
fn bytes_round_trip_through_batched_process_workers() {
    let server = Server::start(ProcessServlet::new(Reverse).workers(2).batch_size(8)).unwrap();
    check(&server);
}

/// A worker written the slow way: `Vec<u8>` in its input type.
#[derive(Clone, Serialize, Deserialize)]
struct LenOfVec;

impl Worker for LenOfVec {
    type Input = Option<Vec<u8>>;
    type Output = usize;
    fn call(&mut self, x: Option<Vec<u8>>) -> Result<usize, WorkerError> {
        Ok(x.map_or(0, |v| v.len()))
    }
}

/// Counts the warnings that mention `Vec<u8>`.
struct CountSlowBytes(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountSlowBytes {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Find(bool);
        impl tracing::field::Visit for Find {
            fn record_debug(&mut self, _: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0 |= format!("{v:?}").contains("Vec<u8>");
            }
        }
        let mut f = Find(false);
        event.record(&mut f);
        if *event.metadata().level() == tracing::Level::WARN && f.0 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[test]
fn a_vec_u8_process_worker_warns_once_in_debug_builds_and_still_works() {
    use tracing_subscriber::layer::SubscriberExt;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(CountSlowBytes(count.clone()));
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..2 {
            let server = Server::start(ProcessServlet::new(LenOfVec)).unwrap();
            assert_eq!(server.call(Some(vec![1u8; 1000])).unwrap(), 1000);
        }
        // A Bytes worker does not warn.
        let server = Server::start(ProcessServlet::new(Reverse)).unwrap();
        assert_eq!(server.call(Bytes::from("ab")).unwrap().len, 2);
    });
    let expected = if cfg!(debug_assertions) { 1 } else { 0 };
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), expected);
}
