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
