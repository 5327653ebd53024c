//! Promise 7: bad input and bad peers.
//!
//! A value that fails to serialize or deserialize at a process boundary (in
//! either direction, on either side, by error or by panic) fails that request
//! with `Error::Codec` and nothing else: the worker keeps running. A worker
//! that breaks the protocol (garbage, a truncated frame, an oversized frame)
//! is detected, treated as crashed and restarted; no request hangs.

mod reliability_support;

use std::time::Duration;

use mpserver::error::CodecDirection;
use mpserver::ipc::frame::kind;
use mpserver::{CallOptions, Codec, Error, ProcessServlet, Server};
use reliability_support::*;

fn codec_direction(e: &Error) -> CodecDirection {
    match e {
        Error::Codec(c) => c.direction,
        other => panic!("expected a codec error, got {other:?}"),
    }
}

/// Every way a value can fail to cross, with both codecs. (postcard keeps no
/// message for a custom `Deserialize` error; the server says so.)
#[test]
fn codec_failures_fail_only_their_request() {
    for codec in [Codec::Postcard, Codec::MessagePack] {
        let postcard = codec == Codec::Postcard;
        let rejected = if postcard {
            "rejected the value"
        } else {
            "refuses to deserialize"
        };
        let servlet = ProcessServlet::new(TouchyWorker)
            .name("touchy")
            .codec(codec);
        let server = Server::builder(servlet).capacity(64).start().unwrap();
        let (_, pid) = server.call(Touchy(1)).unwrap();
        let cases = [
            (
                SER_FAIL,
                CodecDirection::EncodeInput,
                "refuses to serialize",
            ),
            (
                SER_PANIC,
                CodecDirection::EncodeInput,
                "panics while serializing",
            ),
            (DE_FAIL, CodecDirection::DecodeInput, rejected),
            (
                DE_PANIC,
                CodecDirection::DecodeInput,
                "panics while deserializing",
            ),
            (100, CodecDirection::EncodeOutput, "refuses to serialize"),
            (
                300,
                CodecDirection::EncodeOutput,
                "panics while serializing",
            ),
            (200, CodecDirection::DecodeOutput, rejected),
            (
                400,
                CodecDirection::DecodeOutput,
                "panics while deserializing",
            ),
        ];
        let opts = CallOptions::default().timeout(Duration::from_secs(10));
        for (x, dir, msg) in cases {
            // The bad value travels between good ones, in the same frames.
            let before: Vec<_> = (10..15)
                .map(|i| server.submit(Touchy(i), opts).unwrap())
                .collect();
            let bad = server.submit(Touchy(x), opts).unwrap();
            let after: Vec<_> = (20..25)
                .map(|i| server.submit(Touchy(i), opts).unwrap())
                .collect();
            let e = bad.wait().unwrap_err();
            assert_eq!(codec_direction(&e), dir, "{codec:?} {x}: {e}");
            assert!(e.to_string().contains(msg), "{codec:?} {x}: {e}");
            assert_eq!(e.worker().unwrap().name, "touchy");
            for (p, i) in before
                .into_iter()
                .zip(10..)
                .chain(after.into_iter().zip(20..))
            {
                let got = p.wait().unwrap();
                assert_eq!(got, (Touchy(2 * i), pid), "{codec:?} {x}: neighbour {i}");
            }
        }
        assert_eq!(server.servlets().crashes, 0, "no codec failure is a crash");
        assert_eq!(server.worker_pids(), vec![pid]);
    }
}

/// A result larger than `max_frame` allows fails with a codec error; many
/// results that fit one by one but not together still arrive (the worker
/// splits its frames); nothing crashes.
#[test]
fn oversized_results_fail_alone_and_small_frames_still_work() {
    // Without shared memory: there, a large result of a small input goes in
    // a slot, and only its descriptor counts against the frame limit.
    let servlet = ProcessServlet::new(Blob)
        .max_frame(4096)
        .shared_memory(None);
    let server = Server::builder(servlet).capacity(256).start().unwrap();
    let (_, pid) = server.call(10).unwrap();
    let e = server.call(100_000).unwrap_err();
    assert_eq!(codec_direction(&e), CodecDirection::EncodeOutput);
    assert!(e.to_string().contains("frame limit"), "{e}");
    // 1500-byte results: two fit in a 4 KiB frame, 200 do not.
    let out: Vec<_> = server.stream(std::iter::repeat_n(1500, 200)).collect();
    for r in out {
        let (v, p) = r.unwrap();
        assert_eq!((v.len(), p), (1500, pid));
    }
    // An input too large for the frame limit fails before it is sent.
    let server2 = Server::builder(ProcessServlet::new(TouchyWorker).max_frame(1024))
        .start()
        .unwrap();
    assert_eq!(server2.call(Touchy(1)).unwrap().0, Touchy(2));
    assert_eq!(server.servlets().crashes, 0);
}

fn garbage_cases() -> Vec<(&'static str, Op)> {
    let mut huge = Vec::new();
    huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    huge.push(kind::RESULTS);
    let mut bad_kind = Vec::new();
    bad_kind.extend_from_slice(&1u32.to_le_bytes());
    bad_kind.push(99);
    let mut lying = Vec::new();
    lying.extend_from_slice(&5u32.to_le_bytes());
    lying.push(kind::RESULTS);
    lying.extend_from_slice(&1000u32.to_le_bytes());
    let mut truncated = Vec::new();
    truncated.extend_from_slice(&100u32.to_le_bytes());
    truncated.push(kind::RESULTS);
    truncated.extend_from_slice(&[1, 2, 3]);
    vec![
        ("oversized", Op::Raw(huge, 0)),
        ("unknown kind", Op::Raw(bad_kind, 0)),
        ("malformed", Op::Raw(lying, 0)),
        ("zero length", Op::Raw(vec![0, 0, 0, 0], 0)),
        ("truncated", Op::RawThenExit(truncated)),
    ]
}

/// A worker writes garbage to its socket: the server detects the broken
/// frame, kills and reaps the worker, fails the items it held with a crash
/// error that says what was wrong, and restarts it. Nothing hangs.
#[test]
fn garbage_from_a_worker_is_a_crash_and_it_restarts() {
    let server = Server::builder(
        ProcessServlet::new(Chaos::new())
            .name("liar")
            .restart_policy(eager_restarts()),
    )
    .capacity(64)
    .start()
    .unwrap();
    let opts = CallOptions::default().timeout(Duration::from_secs(20));
    for (i, (what, op)) in garbage_cases().into_iter().enumerate() {
        let pid = server.call(Op::Echo(1)).unwrap().1;
        let e = server.call_with(op, opts).unwrap_err();
        match &e {
            Error::WorkerCrashed(c) => {
                assert_eq!(c.worker.pid, Some(pid));
                let expect = if what == "truncated" {
                    "truncated frame"
                } else {
                    "frame"
                };
                assert!(c.how.contains(expect), "{what}: {}", c.how);
            }
            other => panic!("{what}: expected WorkerCrashed, got {other:?}"),
        }
        let (y, new_pid) = server.call_with(Op::Echo(7), opts).unwrap();
        assert_eq!(y, 14);
        assert_ne!(new_pid, pid, "{what}: restarted");
        assert_eq!(server.servlets().crashes, i as u64 + 1);
    }
    assert!(server.is_ready());
}

/// Echoes its bytes (one block on the wire).
#[derive(serde::Serialize, serde::Deserialize)]
struct EchoBytes;

impl mpserver::Worker for EchoBytes {
    type Input = mpserver::Bytes;
    type Output = usize;
    fn call(&mut self, x: mpserver::Bytes) -> Result<usize, mpserver::WorkerError> {
        Ok(x.len())
    }
}

/// `max_frame` above the default (256 MiB) holds on both sides of the
/// boundary: the worker process reads frames up to the servlet's limit, not
/// its own default.
#[test]
fn an_item_over_the_default_frame_limit_crosses_when_max_frame_allows() {
    let big = 300usize << 20;
    let server = Server::start(ProcessServlet::new(EchoBytes).max_frame(1 << 30)).unwrap();
    let item = mpserver::Bytes::from(vec![7u8; big]);
    let r = server.call_with(
        item,
        CallOptions::default().timeout(Duration::from_secs(60)),
    );
    assert_eq!(r.ok(), Some(big), "a 300 MiB item under a 1 GiB max_frame");
    // The worker still serves.
    let small = mpserver::Bytes::from(vec![1u8; 10]);
    assert_eq!(server.call(small).unwrap(), 10);
}
