//! Batching: one CPU-heavy worker served with `batch_size` 0, 8, 32 and 64.
//!
//! The worker is a small dense network (two matrix layers). At the default
//! size its first layer holds 16 MiB of weights, far more than a core's own
//! caches. Served one item at a time, every item streams the whole matrix from
//! the shared cache or main memory; served a batch at a time, each weight row
//! is read once and used for every item of the batch while it sits in the L1
//! cache (a matrix-matrix product instead of many matrix-vector products), and
//! the batch crosses the process boundary as one message. The example streams the same inputs
//! through each configuration, prints the throughput and the mean batch size
//! the worker actually received (from `Handle::servlets`), and checks that
//! every configuration computed exactly the same results.
//!
//! Run (use `--release`: the figures of a debug build mean little; on a busy
//! machine they vary from run to run):
//!
//! ```sh
//! cargo run --release --example batched
//! cargo run --release --example batched -- --items 3000 --dim 2048 --workers 2
//! ```

use std::time::Instant;

use mpserver::prelude::*;
use serde::{Deserialize, Serialize};

/// A two-layer dense network: `classes` scores from `dim` features.
///
/// The struct is the worker's *configuration*: it is serialised and sent to
/// each worker process. The weights are *state*, built in `init` inside the
/// worker process (`#[serde(skip)]` keeps them out of the message).
#[derive(Serialize, Deserialize)]
struct Mlp {
    dim: usize,
    hidden: usize,
    classes: usize,
    seed: u64,
    #[serde(skip)]
    w1: Vec<f32>,
    #[serde(skip)]
    w2: Vec<f32>,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, classes: usize) -> Self {
        Mlp {
            dim,
            hidden,
            classes,
            seed: 42,
            w1: Vec::new(),
            w2: Vec::new(),
        }
    }

    /// The forward pass for a batch. A batch of one is the single-item case,
    /// so both paths compute bit-identical results.
    fn forward(&self, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let hidden = layer(&self.w1, self.hidden, self.dim, xs);
        let hidden: Vec<Vec<f32>> = hidden
            .into_iter()
            .map(|h| h.into_iter().map(|v| v.max(0.0)).collect())
            .collect();
        layer(&self.w2, self.classes, self.hidden, &hidden)
    }
}

impl Worker for Mlp {
    type Input = Vec<f32>;
    type Output = Vec<f32>;

    fn init(&mut self, _ctx: &WorkerContext) -> Result<(), WorkerError> {
        let mut rng = XorShift(self.seed);
        let scale = 1.0 / (self.dim as f32).sqrt();
        self.w1 = (0..self.hidden * self.dim)
            .map(|_| rng.unit() * scale)
            .collect();
        self.w2 = (0..self.classes * self.hidden)
            .map(|_| rng.unit() * scale)
            .collect();
        Ok(())
    }

    fn call(&mut self, x: Vec<f32>) -> Result<Vec<f32>, WorkerError> {
        check_len(&x, self.dim)?;
        Ok(self.forward(std::slice::from_ref(&x)).swap_remove(0))
    }

    fn call_batch(&mut self, batch: Vec<Vec<f32>>) -> Vec<Result<Vec<f32>, WorkerError>> {
        if let Some(e) = batch.iter().find_map(|x| check_len(x, self.dim).err()) {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        self.forward(&batch).into_iter().map(Ok).collect()
    }
}

fn check_len(x: &[f32], dim: usize) -> Result<(), WorkerError> {
    if x.len() == dim {
        Ok(())
    } else {
        Err(WorkerError::new(
            "ShapeError",
            format!("expected {dim} features, got {}", x.len()),
        ))
    }
}

/// `out[i][r] = W[r] · xs[i]` for a `rows × cols` row-major `w`.
///
/// Each weight row is read from memory once and used for every item of the
/// batch while it sits in the L1 cache. One item at a time, the whole matrix
/// (16 MiB at the default size, far more than a core's own caches) streams
/// from the shared cache or main memory for every item; a batch of 32 shares
/// that cost 32 ways.
fn layer(w: &[f32], rows: usize, cols: usize, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut out = vec![vec![0.0f32; rows]; xs.len()];
    for (r, row) in w.chunks_exact(cols).take(rows).enumerate() {
        for (o, x) in out.iter_mut().zip(xs) {
            o[r] = dot(row, x);
        }
    }
    out
}

const LANES: usize = 8;

/// A dot product in eight lanes, which the compiler turns into SIMD code.
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (a, b) in w
        .as_chunks::<LANES>()
        .0
        .iter()
        .zip(x.as_chunks::<LANES>().0)
    {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    finish(acc, w, x)
}

fn finish(acc: [f32; LANES], w: &[f32], x: &[f32]) -> f32 {
    let n = w.len() / LANES * LANES;
    let tail: f32 = w[n..].iter().zip(&x[n..]).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// A tiny deterministic generator, so every run sees the same inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn input(i: usize, dim: usize) -> Vec<f32> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    (0..dim).map(|_| rng.unit()).collect()
}

struct Args {
    items: usize,
    dim: usize,
    workers: usize,
}

fn args() -> Args {
    let mut a = Args {
        items: 1000,
        dim: 2048,
        workers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--items" => a.items = value(),
            "--dim" => a.dim = value().max(1),
            "--workers" => a.workers = value().max(1),
            other => panic!("unknown flag {other}; flags: --items N --dim D --workers W"),
        }
    }
    a
}

struct Run {
    items_per_s: f64,
    mean_batch: f64,
    checksum: u64,
}

fn run(a: &Args, batch_size: usize) -> Result<Run, mpserver::Error> {
    let servlet = ProcessServlet::new(Mlp::new(a.dim, a.dim, 16))
        .workers(a.workers)
        .batch_size(batch_size);
    let server = Server::start(servlet)?;
    // Warm up: the first calls fault in the weights and the code.
    for i in 0..4 {
        server.call(input(i, a.dim))?;
    }
    let dim = a.dim;
    let start = Instant::now();
    let mut checksum = 0u64;
    for y in server.stream((0..a.items).map(move |i| input(i, dim))) {
        for v in y? {
            checksum = checksum.rotate_left(5) ^ u64::from(v.to_bits());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sizes = &server.servlets().batch_sizes;
    let mean_batch = if sizes.count == 0 {
        1.0
    } else {
        sizes.sum as f64 / sizes.count as f64
    };
    Ok(Run {
        items_per_s: a.items as f64 / elapsed.max(1e-9),
        mean_batch,
        checksum,
    })
}

fn main() -> Result<(), mpserver::Error> {
    let a = args();
    println!(
        "batched: {} items of {} features, hidden layer {}, {} worker process(es)",
        a.items, a.dim, a.dim, a.workers
    );
    println!("batch_size    policy    items/s  mean batch  speed-up");
    let mut base = None;
    let mut checksums = Vec::new();
    for batch_size in [0, 8, 32, 64] {
        let r = run(&a, batch_size)?;
        let base = *base.get_or_insert(r.items_per_s);
        // `batch_size(n)` alone selects adaptive batching: an idle worker
        // takes what is queued at once; under load batches grow toward n.
        let policy = if batch_size > 1 { "adaptive" } else { "-" };
        println!(
            "{batch_size:>10}  {policy:>8}  {:>9.0}  {:>10.1}  {:>7.2}x",
            r.items_per_s,
            r.mean_batch,
            r.items_per_s / base
        );
        checksums.push(r.checksum);
    }
    let same = checksums.windows(2).all(|w| w[0] == w[1]);
    println!(
        "results identical across batch sizes: {}",
        if same { "yes" } else { "NO" }
    );
    Ok(())
}
