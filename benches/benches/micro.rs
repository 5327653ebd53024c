//! Criterion micro-benchmarks of `mpserver`'s hot paths (GitHub issue 3),
//! using only the public API:
//!
//! * `codec`: `Codec::{Postcard, MessagePack}` `encode_into` + `decode` round
//!   trip, swept over the payload (small struct, 4 KiB and 1 MiB byte buffers).
//! * `frame`: building an ITEMS frame of 64 small payloads, reading it back
//!   through `FrameReader` + `parse_items`, and a RESULTS build + `parse_results`.
//! * `server_overhead`: a `PassThrough` server (no worker: the request is
//!   completed inside the push), so `call` measures admission, request
//!   allocation, deadline registration and completion; plus 64 `submit`s then
//!   waiting for all of them.
//! * `dispatch`: `call` latency through a `ThreadServlet` (one thread hop each
//!   way), swept over the worker count.
//! * `batch`: streaming 10,000 items through a batched `ThreadServlet`
//!   (`batch_wait_time(0)`), swept over the batch size.
//! * `stream`: ordered `server.stream(0..10_000)` (reorder window) over a
//!   `ThreadServlet`, swept over the worker count.
//! * `metrics`: a shared `AtomicU64` against the sharded `metrics::Counter`
//!   under two threads, `Histogram::record`, `ServletStats::record_stages`.
//!
//! Run: `cargo bench -p mpserver-benches --bench micro` (add `-- <filter>` to
//! pick groups, `-- --quick` for a fast pass). Sample size and measurement
//! time are kept small because the bench machine has 2 shared cores.

use std::hint::black_box;
use std::io::{self, Read};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use mpserver::ipc::frame::{
    DEFAULT_MAX_FRAME, FrameBuf, STATUS_OK, kind, parse_items, parse_results,
};
use mpserver::ipc::reader::FrameReader;
use mpserver::{CallOptions, Codec, PassThrough, Pending, Server, ThreadServlet, worker_fn};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Items per streaming iteration (`batch` and `stream` groups).
const STREAM_ITEMS: u64 = 10_000;
/// Items per frame / per `submit` burst.
const FRAME_ITEMS: usize = 64;

/// A typical small request: an id, a short name, a feature vector, an
/// optional tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Small {
    id: u64,
    name: String,
    features: Vec<f32>,
    tag: Option<u32>,
}

impl Small {
    fn new(id: u64) -> Self {
        let name = format!("sensor-{:07}", id % 10_000_000);
        debug_assert_eq!(name.len(), 14);
        Small {
            id,
            name,
            features: (0..16).map(|i| i as f32 * 0.25 + id as f32).collect(),
            tag: Some(id as u32 ^ 0x5a5a),
        }
    }
}

fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::Postcard => "postcard",
        Codec::MessagePack => "messagepack",
    }
}

/// Encodes into a reused buffer, decodes, and checks the round trip.
fn round_trip<T>(g: &mut BenchmarkGroup<'_, WallTime>, payload: &str, value: &T)
where
    T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    for codec in [Codec::Postcard, Codec::MessagePack] {
        let mut buf = Vec::new();
        codec.encode_into(&mut buf, value).unwrap();
        let back: T = codec.decode(&buf).unwrap();
        assert_eq!(&back, value);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_with_input(
            BenchmarkId::new(codec_name(codec), payload),
            value,
            |b, value| {
                b.iter(|| {
                    buf.clear();
                    codec.encode_into(&mut buf, black_box(value)).unwrap();
                    let back: T = codec.decode(black_box(&buf)).unwrap();
                    back
                })
            },
        );
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    round_trip(&mut g, "small_struct", &Small::new(42));
    let bytes = |n: usize| ByteBuf::from((0..n).map(|i| (i * 31) as u8).collect::<Vec<u8>>());
    round_trip(&mut g, "bytes_4KiB", &bytes(4 << 10));
    round_trip(&mut g, "bytes_1MiB", &bytes(1 << 20));
    g.finish();
}

/// An endless byte stream repeating one buffer, standing in for the socket
/// so that `FrameReader` keeps its 64 KiB buffer across iterations.
struct Repeat {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Repeat {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.data.len();
        Ok(n)
    }
}

/// The postcard encodings of 64 `Small` values (about 90 bytes each).
fn small_payloads() -> Vec<Vec<u8>> {
    (0..FRAME_ITEMS as u64)
        .map(|i| {
            let mut v = Vec::new();
            Codec::Postcard
                .encode_into(&mut v, &Small::new(1000 + i))
                .unwrap();
            v
        })
        .collect()
}

fn build_items(buf: &mut FrameBuf, payloads: &[Vec<u8>]) {
    buf.clear();
    let start = buf.begin(kind::ITEMS);
    buf.put_u8(0);
    buf.put_u32(payloads.len() as u32);
    for (id, p) in payloads.iter().enumerate() {
        buf.put_u64(id as u64);
        buf.put_payload(|v| {
            v.extend_from_slice(p);
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    buf.end(start);
}

fn frame(c: &mut Criterion) {
    let payloads = small_payloads();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(FRAME_ITEMS as u64));

    let mut buf = FrameBuf::new();
    g.bench_function(BenchmarkId::new("items_build", FRAME_ITEMS), |b| {
        b.iter(|| {
            build_items(&mut buf, black_box(&payloads));
            buf.len()
        })
    });

    build_items(&mut buf, &payloads);
    let mut reader = FrameReader::new(
        Repeat {
            data: buf.as_bytes().to_vec(),
            pos: 0,
        },
        DEFAULT_MAX_FRAME,
    );
    g.bench_function(BenchmarkId::new("items_read_parse", FRAME_ITEMS), |b| {
        b.iter(|| {
            let (k, body) = reader.read_frame().unwrap().unwrap();
            assert_eq!(k, kind::ITEMS);
            let (batched, items) = parse_items(body).unwrap();
            assert!(!batched && items.len() == FRAME_ITEMS);
            black_box(items);
        })
    });

    g.bench_function(BenchmarkId::new("results_build_parse", FRAME_ITEMS), |b| {
        b.iter(|| {
            buf.clear();
            let start = buf.begin(kind::RESULTS);
            buf.put_u32(payloads.len() as u32);
            for (id, p) in black_box(&payloads).iter().enumerate() {
                buf.put_u64(id as u64);
                buf.put_u8(STATUS_OK);
                buf.put_u64(0);
                buf.put_payload(|v| {
                    v.extend_from_slice(p);
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            buf.end(start);
            // Skip the length and kind (5 bytes): parse the body.
            let results = parse_results(&buf.as_bytes()[5..]).unwrap();
            assert_eq!(results.len(), FRAME_ITEMS);
            black_box(results);
        })
    });
    g.finish();
}

fn server_overhead(c: &mut Criterion) {
    let server = Server::start(PassThrough::<u64>::new()).unwrap();
    let mut g = c.benchmark_group("server_overhead");

    g.throughput(Throughput::Elements(1));
    let mut x = 0u64;
    g.bench_function("passthrough_call", |b| {
        b.iter(|| {
            x = x.wrapping_add(1);
            server.call(black_box(x)).unwrap()
        })
    });

    g.throughput(Throughput::Elements(FRAME_ITEMS as u64));
    let mut pending: Vec<Pending<u64>> = Vec::with_capacity(FRAME_ITEMS);
    g.bench_function(
        BenchmarkId::new("passthrough_submit_wait", FRAME_ITEMS),
        |b| {
            b.iter(|| {
                for i in 0..FRAME_ITEMS as u64 {
                    pending.push(server.submit(black_box(i), CallOptions::default()).unwrap());
                }
                for p in pending.drain(..) {
                    black_box(p.wait().unwrap());
                }
            })
        },
    );
    g.finish();
    server.shutdown();
}

fn dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(1));
    for workers in [1usize, 2] {
        let server =
            Server::start(ThreadServlet::new(worker_fn(|x: u64| x)).workers(workers)).unwrap();
        let mut x = 0u64;
        g.bench_with_input(
            BenchmarkId::new("thread_call", workers),
            &workers,
            |b, _| {
                b.iter(|| {
                    x = x.wrapping_add(1);
                    server.call(black_box(x)).unwrap()
                })
            },
        );
        server.shutdown();
    }
    g.finish();
}

/// Streams `0..STREAM_ITEMS` and checks that results come back in order.
fn stream_all(server: &Server<u64, u64>) {
    let mut expect = 0u64;
    for r in server.stream(0..STREAM_ITEMS) {
        assert_eq!(r.unwrap(), expect);
        expect += 1;
    }
    assert_eq!(expect, STREAM_ITEMS);
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(STREAM_ITEMS));
    for batch_size in [8usize, 64] {
        let server = Server::start(
            ThreadServlet::new(worker_fn(|x: u64| x))
                .batch_size(batch_size)
                .batch_wait_time(Duration::ZERO),
        )
        .unwrap();
        g.bench_with_input(
            BenchmarkId::new("thread_stream_10k", batch_size),
            &batch_size,
            |b, _| b.iter(|| stream_all(&server)),
        );
        server.shutdown();
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(STREAM_ITEMS));
    for workers in [1usize, 2] {
        let server =
            Server::start(ThreadServlet::new(worker_fn(|x: u64| x)).workers(workers)).unwrap();
        g.bench_with_input(
            BenchmarkId::new("ordered_10k", workers),
            &workers,
            |b, _| b.iter(|| stream_all(&server)),
        );
        server.shutdown();
    }
    g.finish();
}

/// Counting on the hot path (issue 14 item 6): two threads adding to one
/// shared `AtomicU64` (one cache line bouncing between cores) against the
/// sharded `metrics::Counter`, and the per-item cost of recording a
/// histogram value and a simple servlet's four stage latencies.
fn metrics(c: &mut Criterion) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::time::Instant;

    const ADDS: u64 = 100_000;
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(2 * ADDS));
    fn two_threads(add: Arc<dyn Fn() + Send + Sync>, iters: u64) -> Duration {
        let start = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let add = add.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters * ADDS {
                        add();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        start.elapsed()
    }
    let shared = Arc::new(AtomicU64::new(0));
    g.bench_function("shared_atomic_2_threads", |b| {
        let a = shared.clone();
        b.iter_custom(|iters| {
            let a = a.clone();
            two_threads(
                Arc::new(move || {
                    a.fetch_add(1, Relaxed);
                }),
                iters,
            )
        })
    });
    let sharded = Arc::new(mpserver::metrics::Counter::default());
    g.bench_function("sharded_counter_2_threads", |b| {
        let a = sharded.clone();
        b.iter_custom(|iters| {
            let a = a.clone();
            two_threads(Arc::new(move || a.fetch_add(1, Relaxed)), iters)
        })
    });
    g.throughput(Throughput::Elements(1));
    let h = mpserver::metrics::Histogram::default();
    let mut v = 1u64;
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            v = v.wrapping_mul(6364136223846793005).wrapping_add(1);
            h.record(black_box(v >> 40));
        })
    });
    let stats = mpserver::metrics::ServletStats::default();
    let d = Duration::from_micros(18);
    g.bench_function("record_stages", |b| {
        b.iter(|| stats.record_stages(Some(d), Some(d), Some(d), Some(black_box(d))))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(2500))
}

criterion_group! {
    name = micro;
    config = config();
    targets = codec, frame, server_overhead, dispatch, batch, stream, metrics
}
criterion_main!(micro);
