//! Scenarios S1–S10 on mpserver, with the same definitions, CLI and output
//! as `python/mpservice_bench.py` (see `benches/README.md`), and the
//! mpserver-only scenarios S11 (batching policies under Poisson load), S13
//! (byte payload types) and S14 (a real CPU workload: deflate, against a
//! plain loop and rayon).

use std::time::{Duration, Instant};

use mpserver::prelude::*;
use mpserver::{Batching, Codec, CpuAffinity};
use mpserver_benches::{
    CommonArgs, Figure, Placement, current_cpus, lcg_work, loops_for_2ms, pin_all_threads_to,
    pin_to_cpu0, set_cpus,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const CONTENDER: &str = "mpserver";

/// Every scenario this program defines.
const KNOWN_SCENARIOS: &[&str] = &[
    "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11", "S12", "S13", "S14",
];

// ---------------------------------------------------------------- workers

#[derive(Clone, Serialize, Deserialize)]
struct Double;
impl Worker for Double {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(2 * x)
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct SquareBatch;
impl Worker for SquareBatch {
    type Input = i64;
    type Output = (i64, u32);
    fn call(&mut self, x: i64) -> Result<(i64, u32), WorkerError> {
        Ok((x * x, 1))
    }
    fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<(i64, u32), WorkerError>> {
        let n = xs.len() as u32;
        xs.into_iter().map(|x| Ok((x * x, n))).collect()
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Burn {
    loops: u64,
}
impl Worker for Burn {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(lcg_work(self.loops, x))
    }
}

// S8 and S13: the same echo worker with three byte types.
macro_rules! byte_echo {
    ($name:ident, $ty:ty) => {
        #[derive(Clone, Serialize, Deserialize)]
        struct $name;
        impl Worker for $name {
            type Input = $ty;
            type Output = $ty;
            fn call(&mut self, x: $ty) -> Result<$ty, WorkerError> {
                Ok(x)
            }
        }
    };
}
byte_echo!(EchoVec, Vec<u8>);
byte_echo!(EchoByteBuf, serde_bytes::ByteBuf);
byte_echo!(EchoBytes, mpserver::Bytes);

/// S14: deflate (flate2, `Compression::fast()`, level 1) of one chunk; returns the compressed bytes.
#[derive(Clone, Serialize, Deserialize)]
struct Deflate;
impl Worker for Deflate {
    type Input = mpserver::Bytes;
    type Output = mpserver::Bytes;
    fn call(&mut self, x: mpserver::Bytes) -> Result<mpserver::Bytes, WorkerError> {
        Ok(deflate(&x).into())
    }
    fn call_batch(
        &mut self,
        xs: Vec<mpserver::Bytes>,
    ) -> Vec<Result<mpserver::Bytes, WorkerError>> {
        xs.into_iter().map(|x| self.call(x)).collect()
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("deflate into memory");
    enc.finish().expect("deflate into memory")
}

/// `n` chunks of `size` bytes of English-like ASCII text (words drawn by an
/// LCG from a small vocabulary, lines of about 70 characters): compresses
/// like text (about 3:1 with deflate), the same on every run.
fn text_chunks(n: usize, size: usize) -> Vec<Vec<u8>> {
    const WORDS: [&str; 32] = [
        "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
        "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
        "had", "they", "you", "were", "their",
    ];
    let mut x: u64 = 12_345;
    let mut next = || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let mut c = Vec::with_capacity(size + 16);
            let mut line = 0;
            while c.len() < size {
                let w = WORDS[next() % WORDS.len()];
                c.extend_from_slice(w.as_bytes());
                line += w.len() + 1;
                if line > 70 {
                    c.push(b'\n');
                    line = 0;
                } else {
                    c.push(b' ');
                }
                if next() % 13 == 0 {
                    c.extend_from_slice(format!("{} ", next() % 10_000).as_bytes());
                }
            }
            c.truncate(size);
            c
        })
        .collect()
}

// The seed flow without its sleeps: the seed's own value functions (defined
// once, with the seed example), called by one worker type. Its sleeping
// workers are not used here.
#[allow(dead_code)]
#[path = "../../../examples/shared/seed_workers.rs"]
mod seed_workers;
use seed_workers::combine;

#[derive(Clone, Serialize, Deserialize)]
enum Seed {
    Head,
    Tail,
    Len,
    Solute,
}
impl Worker for Seed {
    type Input = Value;
    type Output = Value;
    fn call(&mut self, x: Value) -> Result<Value, WorkerError> {
        match self {
            Seed::Head => seed_workers::head(&x),
            Seed::Tail => seed_workers::tail(&x),
            Seed::Len => seed_workers::len(&x),
            Seed::Solute => seed_workers::Solute.call(x),
        }
    }
}

fn seed_server(p: Placement) -> Server<Value, Value> {
    let pins = |c: Vec<usize>| -> Vec<CpuAffinity> {
        match p {
            Placement::Pinned1 => vec![CpuAffinity::cpu(0); c.len().max(1)],
            Placement::Unpinned => c.into_iter().map(CpuAffinity::cpu).collect(),
            Placement::Split => vec![CpuAffinity::cpu(1); c.len().max(1)],
        }
    };
    let solute = match p {
        Placement::Pinned1 => vec![CpuAffinity::cpu(0)],
        Placement::Unpinned => vec![CpuAffinity::any()],
        Placement::Split => vec![CpuAffinity::cpu(1)],
    };
    let mp = Codec::MessagePack;
    let flow = sequential![
        ensemble![
            ProcessServlet::new(Seed::Head)
                .name("GetHead")
                .cpus(pins(vec![0]))
                .codec(mp),
            ProcessServlet::new(Seed::Tail)
                .name("GetTail")
                .cpus(pins(vec![0, 1]))
                .codec(mp),
            ProcessServlet::new(Seed::Len)
                .name("GetLen")
                .cpus(pins(vec![1]))
                .codec(mp),
        ],
        ThreadServlet::new(try_worker_fn(combine)),
        ProcessServlet::new(Seed::Solute)
            .name("Solute")
            .cpus(solute)
            .codec(mp),
    ];
    Server::start(flow).expect("seed flow starts")
}

fn worker_cpus(p: Placement, n: usize) -> Vec<CpuAffinity> {
    match p {
        Placement::Pinned1 => vec![CpuAffinity::cpu(0); n],
        Placement::Unpinned => vec![CpuAffinity::any(); n],
        Placement::Split => vec![CpuAffinity::cpu(1); n],
    }
}

// ---------------------------------------------------------------- helpers

/// Per-run p50 and p99 of latencies, in microseconds.
#[derive(Default)]
struct Latencies {
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Latencies {
    /// Adds one run's latencies.
    fn add(&mut self, mut lat: Vec<f64>) {
        lat.sort_by(f64::total_cmp);
        self.p50.push(percentile(&lat, 0.5));
        self.p99.push(percentile(&lat, 0.99));
    }

    fn emit(self, out: &Out, scenario: &str) {
        out.emit(scenario, "p50_us", "us", self.p50);
        out.emit(scenario, "p99_us", "us", self.p99);
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Out {
    placement: Placement,
    /// The CPUs this process could use at start.
    cpus: Vec<usize>,
}

impl Out {
    fn emit(&self, scenario: &str, metric: &str, unit: &str, runs: Vec<f64>) {
        let f = Figure::new(CONTENDER, scenario, self.placement, metric, unit, runs);
        self.print(f);
    }

    /// A figure measured at a non-default `setting` (see the protocol in
    /// benches/README.md).
    fn emit_with(&self, scenario: &str, metric: &str, unit: &str, runs: Vec<f64>, setting: &str) {
        let mut f = Figure::new(CONTENDER, scenario, self.placement, metric, unit, runs);
        f.setting = Some(setting.to_owned());
        self.print(f);
    }

    fn print(&self, f: Figure) {
        let (scenario, metric, unit) = (&f.scenario, &f.metric, &f.unit);
        println!("{}", f.to_json_line());
        eprintln!(
            "  {scenario} {metric} = {:.2} {unit} [{:.2}–{:.2}]",
            f.median, f.min, f.max
        );
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Nap {
    ms: u64,
}
impl Worker for Nap {
    type Input = u64;
    type Output = u32;
    fn call(&mut self, _: u64) -> Result<u32, WorkerError> {
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok(std::process::id())
    }
}

// ---------------------------------------------------------------- scenarios

/// Under `split`: starts `servlet` with this thread on every CPU it had at
/// program start (so that its workers may be pinned to CPU 1), then moves
/// every thread of this process (the caller and the server's own threads)
/// to CPU 0. Other placements: `Server::start`.
fn split_start<S>(out: &Out, servlet: S) -> Server<S::Input, S::Output>
where
    S: mpserver::Servlet,
{
    if out.placement != Placement::Split {
        return Server::start(servlet).unwrap();
    }
    set_cpus(&out.cpus).expect("restore the CPUs of the program's start");
    let server = Server::start(servlet).unwrap();
    pin_all_threads_to(0).expect("pin this process's threads to CPU 0");
    server
}

fn s1(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 300 } else { 2000 };
    let (mut cps, mut lats) = (vec![], Latencies::default());
    for _ in 0..args.runs {
        let server = split_start(
            out,
            ProcessServlet::new(Double).cpus(worker_cpus(out.placement, 1)),
        );
        for i in 0..200 {
            assert_eq!(server.call(i).unwrap(), 2 * i);
        }
        let mut lat = Vec::with_capacity(n);
        let t = Instant::now();
        for i in 0..n as i64 {
            let s = Instant::now();
            assert_eq!(server.call(i).unwrap(), 2 * i);
            lat.push(s.elapsed().as_secs_f64() * 1e6);
        }
        cps.push(n as f64 / t.elapsed().as_secs_f64());
        lats.add(lat);
    }
    out.emit("S1_seq_call", "calls_per_s", "1/s", cps);
    lats.emit(out, "S1_seq_call");
}

fn stream_doubles(server: &Server<i64, i64>, n: i64) -> f64 {
    let t = Instant::now();
    let mut i = 0;
    for r in server.stream(0..n) {
        assert_eq!(r.unwrap(), 2 * i);
        i += 1;
    }
    assert_eq!(i, n);
    n as f64 / t.elapsed().as_secs_f64()
}

fn s2_s3(args: &CommonArgs, out: &Out, procs: usize, scenario: &str) {
    let n = if args.quick { 5000 } else { 50_000 };
    let mut runs = vec![];
    for _ in 0..args.runs {
        let server =
            Server::start(ProcessServlet::new(Double).cpus(worker_cpus(out.placement, procs)))
                .unwrap();
        stream_doubles(&server, 2000);
        runs.push(stream_doubles(&server, n));
    }
    out.emit(scenario, "items_per_s", "1/s", runs);
}

fn s4(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 2000 } else { 20_000 };
    let mut runs = vec![];
    for _ in 0..args.runs {
        let server = seed_server(out.placement);
        assert_eq!(
            server.call(json!("world")).unwrap(),
            json!("Hello, wdwdwdwdwd!")
        );
        let t = Instant::now();
        let mut k = 0;
        for r in server.stream((0..n).map(|i| json!(format!("w{i}")))) {
            r.unwrap();
            k += 1;
        }
        assert_eq!(k, n);
        runs.push(n as f64 / t.elapsed().as_secs_f64());
    }
    out.emit("S4_seed_pipeline", "items_per_s", "1/s", runs);
}

fn s5(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 10_000 } else { 100_000 };
    // At the defaults, and with the stream given the server's whole
    // capacity (256) as its window, the default at 300b698 (since issue 10
    // item 7 a stream's window is half the capacity): with batches of 64,
    // half the capacity is two batches in flight, which leaves the worker
    // waiting for the stream's refills and the stream for the worker (the
    // batching policy is not what differs: see benches/README.md).
    let full = StreamOptions::default().max_inflight(mpserver::server::DEFAULT_CAPACITY);
    let mut figs: [[Vec<f64>; 2]; 2] = Default::default();
    for _ in 0..args.runs {
        for (k, opts) in [StreamOptions::default(), full].into_iter().enumerate() {
            let server = Server::start(
                ProcessServlet::new(SquareBatch)
                    .batch_size(64)
                    .cpus(worker_cpus(out.placement, 1)),
            )
            .unwrap();
            let t = Instant::now();
            let mut calls = 0.0;
            for (i, r) in (0i64..).zip(server.stream_with(0..n, opts)) {
                let (y, b) = r.unwrap();
                assert_eq!(y, i * i);
                calls += 1.0 / b as f64;
            }
            figs[k][0].push(n as f64 / t.elapsed().as_secs_f64());
            figs[k][1].push(n as f64 / calls);
        }
    }
    let [[ips, mean], [ips_full, mean_full]] = figs;
    out.emit("S5_batched", "items_per_s", "1/s", ips);
    out.emit("S5_batched", "mean_batch_size", "items", mean);
    let setting = "StreamOptions::max_inflight(256)";
    out.emit_with(
        "S5_batched",
        "items_per_s_full_window",
        "1/s",
        ips_full,
        setting,
    );
    out.emit_with(
        "S5_batched",
        "mean_batch_size_full_window",
        "items",
        mean_full,
        setting,
    );
}

/// A speedup is a ratio of two noisy rates: S6 (and its raw counterpart,
/// R4) take more runs than the other scenarios.
const S6_MIN_RUNS: usize = mpserver_benches::S6_MIN_RUNS;

fn s6(args: &CommonArgs, out: &Out) {
    let loops = loops_for_2ms();
    let n: u64 = if args.quick { 100 } else { 400 };
    let (mut one, mut two, mut speed) = (vec![], vec![], vec![]);
    for _ in 0..args.runs.max(S6_MIN_RUNS) {
        let mut rate = [0.0; 2];
        for (k, procs) in [1usize, 2].into_iter().enumerate() {
            let server = Server::start(ProcessServlet::new(Burn { loops }).workers(procs)).unwrap();
            // Check one result here; checking all in this process would
            // compete with the workers for the CPUs.
            assert_eq!(server.call(1).unwrap(), lcg_work(loops, 1));
            let t = Instant::now();
            let mut got = 0u64;
            for r in server.stream(0..n) {
                r.unwrap();
                got += 1;
            }
            assert_eq!(got, n);
            rate[k] = n as f64 / t.elapsed().as_secs_f64();
        }
        one.push(rate[0]);
        two.push(rate[1]);
        speed.push(rate[1] / rate[0]);
    }
    out.emit("S6_cpu_scaling", "items_per_s_1proc", "1/s", one);
    out.emit("S6_cpu_scaling", "items_per_s_2proc", "1/s", two);
    out.emit("S6_cpu_scaling", "speedup", "x", speed);
    out.emit(
        "S6_cpu_scaling",
        "loop_count",
        "iterations",
        vec![loops as f64],
    );
}

/// S7: bursts of concurrent async calls per run, all on the same warm
/// server. One burst of 2,000 calls takes a few milliseconds on mpserver, so
/// one burst per run measured mostly where the scheduler happened to put the
/// threads (unpinned runs of one binary swung 37k–441k items/s); the median
/// of several bursts is a figure. Odd, so that the median is one burst; the
/// same number for every contender (`python/mpservice_bench.py`).
const S7_BURSTS: usize = 9;

/// S7's warm-up: sequential async calls, then one untimed burst (the first
/// burst on a fresh server pays for growing its buffers and tables to 2,000
/// calls in flight: 2–10× slower than the next ones).
const S7_WARMUP: i64 = 50;

/// One S7 burst: `n` concurrent async calls; (items/s, sorted latencies in µs).
async fn s7_burst(handle: &mpserver::Handle<i64, i64>, n: usize) -> (f64, Vec<f64>) {
    let t = Instant::now();
    let tasks: Vec<_> = (0..n as i64)
        .map(|i| {
            let h = handle.clone();
            tokio::spawn(async move {
                let s = Instant::now();
                assert_eq!(h.async_call(i).await.unwrap(), 2 * i);
                s.elapsed().as_secs_f64() * 1e6
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    (rate, lat)
}

/// CPU time (s) used so far by this process's threads and every live
/// descendant process (the worker), from `/proc/*/task/*/schedstat` (ns
/// resolution), as `python/mpservice_bench.py`'s `tree_cpu_s`.
fn tree_cpu_s() -> f64 {
    let read = |p: String| std::fs::read_to_string(p).ok();
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // The field after the parenthesised command name: state, then ppid.
        if let Some(stat) = read(format!("/proc/{pid}/stat"))
            && let Some(rest) = stat.rfind(')').map(|k| &stat[k + 1..])
            && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok())
        {
            parent.insert(pid, ppid);
        }
    }
    let me = std::process::id();
    let mut ns = 0u64;
    for &pid in parent.keys() {
        let (mut p, mut hops) = (pid, 0);
        while p != me && p != 0 && hops < 64 {
            p = parent.get(&p).copied().unwrap_or(0);
            hops += 1;
        }
        if p != me {
            continue;
        }
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = t.path().join("schedstat");
            ns += read(path.display().to_string())
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// S7: per run, a fresh server (capacity 4096, so every call of a burst is
/// admitted at once), [`S7_WARMUP`] sequential async calls and one untimed
/// burst, then [`S7_BURSTS`] bursts of `n` concurrent async calls, one after
/// the other.
/// The run's `items_per_s`, `p50_us` and `p99_us` are those of its median
/// burst (by items/s): one burst's own figures, untouched by a burst the
/// machine disturbed. `cpu_us_per_item`: CPU time of this process and its
/// worker over all the run's bursts, per call.
fn s7(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 500 } else { 2000 };
    let bursts = if args.quick { 3 } else { S7_BURSTS };
    let (mut ips, mut lats, mut cpu) = (vec![], Latencies::default(), vec![]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for _ in 0..args.runs {
        let server =
            Server::builder(ProcessServlet::new(Double).cpus(worker_cpus(out.placement, 1)))
                .capacity(4096)
                .start()
                .unwrap();
        let handle = server.handle();
        let (mut runs, secs) = rt.block_on(async move {
            for i in 0..S7_WARMUP {
                assert_eq!(handle.async_call(i).await.unwrap(), 2 * i);
            }
            s7_burst(&handle, n).await;
            let c0 = tree_cpu_s();
            let mut runs = Vec::with_capacity(bursts);
            for _ in 0..bursts {
                runs.push(s7_burst(&handle, n).await);
            }
            (runs, tree_cpu_s() - c0)
        });
        eprintln!(
            "  S7 run: bursts (in order) {} items/s",
            runs.iter()
                .map(|r| format!("{:.0}", r.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, lat) = runs.swap_remove(bursts / 2);
        ips.push(rate);
        lats.add(lat);
        cpu.push(secs / (bursts * n) as f64 * 1e6);
    }
    out.emit("S7_concurrent_async", "items_per_s", "1/s", ips);
    lats.emit(out, "S7_concurrent_async");
    out.emit("S7_concurrent_async", "cpu_us_per_item", "us", cpu);
}

/// S8: 200 sequential echo calls of 1 MiB, with the type the guide shows
/// first (`mpserver::Bytes`: decoded in the worker as a view of its
/// shared-memory slot and echoed in place, and decoded by the caller as a
/// view of the same slot: one copy per call, the caller's input into a slot)
/// as `mb_per_s`, and with `serde_bytes::ByteBuf` (copied out of the slot)
/// as `mb_per_s_bytebuf`; `mb_per_s_bound`: 1 MiB over the time of one
/// 1 MiB copy plus a small call's round trip, what the `Bytes` echo could
/// reach.
fn s8(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 40 } else { 200 };
    let (mut runs, mut runs_buf, mut runs_bound) = (vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let (mb_per_s, round_trip) = echo_1mb(
            EchoBytes,
            out,
            n,
            mpserver::Bytes::from(vec![7u8; 1 << 20]),
            Some(mpserver::Bytes::from_static(b"small")),
        );
        runs.push(mb_per_s);
        runs_buf.push(
            echo_1mb(
                EchoByteBuf,
                out,
                n,
                serde_bytes::ByteBuf::from(vec![7u8; 1 << 20]),
                None,
            )
            .0,
        );
        // The bound of this run: one 1 MiB copy per call (the caller's
        // input into a slot, which S8's `Bytes` echo cannot avoid) plus the
        // round trip of a small call on the same server.
        let copy = copy_1mb(n);
        runs_bound.push((1 << 20) as f64 / 1e6 / (copy + round_trip.unwrap_or(0.0)));
    }
    out.emit("S8_payload_1mb", "mb_per_s", "MB/s", runs);
    out.emit("S8_payload_1mb", "mb_per_s_bytebuf", "MB/s", runs_buf);
    out.emit("S8_payload_1mb", "mb_per_s_bound", "MB/s", runs_bound);
}

/// Seconds per copy of 1 MiB into a reused buffer (warm), over `n` copies.
fn copy_1mb(n: usize) -> f64 {
    let src = vec![7u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    dst.copy_from_slice(&src);
    let t = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// `n` sequential echo calls of `payload` through one worker process of
/// `w`; MB/s one way, and with `small`, the seconds per call of `n` calls
/// echoing it (the round trip without the payload).
fn echo_1mb<W>(
    w: W,
    out: &Out,
    n: usize,
    payload: W::Input,
    small: Option<W::Input>,
) -> (f64, Option<f64>)
where
    W: Worker + Serialize + serde::de::DeserializeOwned,
    W::Input: Serialize + serde::de::DeserializeOwned + Clone + PartialEq,
    W::Output: Serialize + serde::de::DeserializeOwned + Into<W::Input>,
{
    let server = Server::start(ProcessServlet::new(w).cpus(worker_cpus(out.placement, 1))).unwrap();
    // The echoed buffer is sent again (as Python passes the same bytes
    // object): no copy is made here, only the transfer is measured.
    let mut buf = payload.clone();
    for _ in 0..5 {
        buf = server.call(buf).unwrap().into();
    }
    let t = Instant::now();
    for _ in 0..n {
        buf = server.call(buf).unwrap().into();
    }
    let elapsed = t.elapsed();
    assert!(buf == payload, "S8: echo mismatch");
    let round_trip = small.map(|x| {
        let t = Instant::now();
        for _ in 0..n {
            assert!(
                server.call(x.clone()).unwrap().into() == x,
                "S8: small echo"
            );
        }
        t.elapsed().as_secs_f64() / n as f64
    });
    (
        (n as f64 * (1 << 20) as f64 / 1e6) / elapsed.as_secs_f64(),
        round_trip,
    )
}

fn s9(args: &CommonArgs, out: &Out) {
    let (mut up, mut down) = (vec![], vec![]);
    for _ in 0..args.runs {
        let t = Instant::now();
        let server = seed_server(out.placement);
        assert_eq!(
            server.call(json!("world")).unwrap(),
            json!("Hello, wdwdwdwdwd!")
        );
        up.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        drop(server);
        down.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.emit("S9_startup", "startup_ms", "ms", up);
    out.emit("S9_startup", "shutdown_ms", "ms", down);
}

fn s10(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 5000 } else { 50_000 };
    let me = std::process::id();
    let mut figs: [Vec<f64>; 6] = Default::default();
    for _ in 0..args.runs {
        let server =
            Server::start(ProcessServlet::new(Double).cpus(worker_cpus(out.placement, 1))).unwrap();
        server.call(1).unwrap();
        let w = server.worker_pids()[0];
        let (s_idle, w_idle) = (rss_mib(me), rss_mib(w));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (s_max, w_max) = std::thread::scope(|sc| {
            let sampler = sc.spawn(|| {
                let (mut a, mut b) = (0.0f64, 0.0f64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    a = a.max(rss_mib(me));
                    b = b.max(rss_mib(w));
                    std::thread::sleep(Duration::from_millis(5));
                }
                (a, b)
            });
            stream_doubles(&server, n);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sampler.join().unwrap()
        });
        for (k, v) in [s_idle, w_idle, s_idle + w_idle, s_max, w_max, s_max + w_max]
            .into_iter()
            .enumerate()
        {
            figs[k].push(v);
        }
    }
    let names = [
        "rss_server_idle_mib",
        "rss_worker0_idle_mib",
        "rss_total_idle_mib",
        "rss_server_streaming_mib",
        "rss_worker0_streaming_mib",
        "rss_total_streaming_mib",
    ];
    for (name, runs) in names.into_iter().zip(figs) {
        out.emit("S10_memory", name, "MiB", runs);
    }
}

/// Streams `items` through a 1-process echo server of worker `w`; returns items/s.
fn stream_echo<W>(w: W, codec: Codec, out: &Out, items: Vec<W::Input>) -> f64
where
    W: Worker + Serialize + serde::de::DeserializeOwned,
    W::Input: Serialize + serde::de::DeserializeOwned + AsRef<[u8]> + Clone,
    W::Output: Serialize + serde::de::DeserializeOwned + AsRef<[u8]>,
{
    let server = Server::start(
        ProcessServlet::new(w)
            .codec(codec)
            .cpus(worker_cpus(out.placement, 1)),
    )
    .unwrap();
    let warm: Vec<W::Input> = items.iter().take(20).cloned().collect();
    for r in server.stream(warm) {
        r.unwrap();
    }
    let n = items.len();
    let (first, last) = (items[0].as_ref().to_vec(), items[n - 1].as_ref().to_vec());
    let t = Instant::now();
    let mut k = 0;
    for r in server.stream(items) {
        let y = r.unwrap();
        let y = y.as_ref();
        if k == 0 {
            assert_eq!(y, &first[..]);
        } else if k == n - 1 {
            assert_eq!(y, &last[..]);
        } else {
            assert_eq!(y.len(), first.len());
        }
        k += 1;
    }
    assert_eq!(k, n);
    n as f64 / t.elapsed().as_secs_f64()
}

/// S13: 400 64-KiB text chunks echoed through one worker process, the worker
/// typed with `Vec<u8>`, `serde_bytes::ByteBuf` and `mpserver::Bytes`
/// (postcard), and `mpserver::Bytes` with MessagePack. Contenders alternate
/// their order from run to run.
fn s13(args: &CommonArgs, out: &Out) {
    let n = if args.quick { 100 } else { 400 };
    let chunks = text_chunks(n, 64 << 10);
    const NAMES: [&str; 4] = ["vec", "bytebuf", "bytes", "bytes_msgpack"];
    let mut rates: [Vec<f64>; 4] = Default::default();
    let (mut ratio, mut slow) = (vec![], vec![]);
    for run in 0..args.runs {
        let mut order = [0usize, 1, 2, 3];
        order.rotate_left(run % 4);
        if run % 2 == 1 {
            order.reverse();
        }
        let mut r = [0.0f64; 4];
        for k in order {
            let c = chunks.clone();
            r[k] = match k {
                0 => stream_echo(EchoVec, Codec::Postcard, out, c),
                1 => stream_echo(
                    EchoByteBuf,
                    Codec::Postcard,
                    out,
                    c.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                ),
                2 => stream_echo(
                    EchoBytes,
                    Codec::Postcard,
                    out,
                    c.into_iter().map(mpserver::Bytes::from).collect(),
                ),
                _ => stream_echo(
                    EchoBytes,
                    Codec::MessagePack,
                    out,
                    c.into_iter().map(mpserver::Bytes::from).collect(),
                ),
            };
        }
        for k in 0..4 {
            rates[k].push(r[k]);
        }
        let best = r.iter().copied().fold(0.0, f64::max);
        ratio.push(r[2] / best);
        slow.push(r[1].max(r[2]) / r[0]);
    }
    for (name, runs) in NAMES.into_iter().zip(rates) {
        out.emit("S13_bytes_64k", &format!("items_per_s_{name}"), "1/s", runs);
    }
    out.emit("S13_bytes_64k", "bytes_over_best", "x", ratio);
    out.emit("S13_bytes_64k", "block_over_vec", "x", slow);
}

/// Streams `chunks` through `procs` deflating worker processes (batched or
/// not); returns items/s and the total compressed size.
fn deflate_procs(
    out: &Out,
    chunks: &[mpserver::Bytes],
    procs: usize,
    batch: usize,
) -> (f64, usize) {
    let mut servlet = ProcessServlet::new(Deflate).cpus(worker_cpus(out.placement, procs));
    if batch > 1 {
        servlet = servlet.batch_size(batch);
    }
    let server = Server::start(servlet).unwrap();
    for r in server.stream(chunks.iter().take(2 * procs).cloned()) {
        r.unwrap();
    }
    let t = Instant::now();
    let mut total = 0;
    for r in server.stream(chunks.iter().cloned()) {
        total += r.unwrap().len();
    }
    (chunks.len() as f64 / t.elapsed().as_secs_f64(), total)
}

/// S14: deflate (flate2, level 1: about 1–3 ms per chunk here) of 400 64-KiB text chunks: a plain
/// loop on one core, rayon on 2 threads, and 1 and 2 worker processes, plain
/// and batched (batch size 4), all in one sitting; every contender must
/// produce the same total compressed size.
fn s14(args: &CommonArgs, out: &Out) {
    use rayon::prelude::*;
    let n = if args.quick { 100 } else { 400 };
    let chunks: Vec<mpserver::Bytes> = text_chunks(n, 64 << 10)
        .into_iter()
        .map(mpserver::Bytes::from)
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    const NAMES: [&str; 6] = [
        "loop",
        "rayon2",
        "1proc",
        "2proc",
        "1proc_batched",
        "2proc_batched",
    ];
    let mut rates: [Vec<f64>; 6] = Default::default();
    let (mut ms, mut ratio, mut ratio_b, mut comp) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let mut order = [0usize, 1, 2, 3, 4, 5];
        if run % 2 == 1 {
            order.reverse();
        }
        let mut r = [0.0f64; 6];
        let mut sizes = [0usize; 6];
        for k in order {
            (r[k], sizes[k]) = match k {
                0 => {
                    let t = Instant::now();
                    let total: usize = chunks.iter().map(|c| deflate(c).len()).sum();
                    (n as f64 / t.elapsed().as_secs_f64(), total)
                }
                1 => {
                    let t = Instant::now();
                    let total: usize =
                        pool.install(|| chunks.par_iter().map(|c| deflate(c).len()).sum());
                    (n as f64 / t.elapsed().as_secs_f64(), total)
                }
                2 => deflate_procs(out, &chunks, 1, 1),
                3 => deflate_procs(out, &chunks, 2, 1),
                4 => deflate_procs(out, &chunks, 1, 4),
                _ => deflate_procs(out, &chunks, 2, 4),
            };
        }
        assert!(
            sizes.iter().all(|&s| s == sizes[0]),
            "S14: compressed sizes differ: {sizes:?}"
        );
        for k in 0..6 {
            rates[k].push(r[k]);
        }
        ms.push(1e3 / r[0]);
        ratio.push(r[3] / r[1]);
        ratio_b.push(r[5] / r[1]);
        comp.push((n << 16) as f64 / sizes[0] as f64);
    }
    for (name, runs) in NAMES.into_iter().zip(rates) {
        out.emit(
            "S14_deflate_64k",
            &format!("items_per_s_{name}"),
            "1/s",
            runs,
        );
    }
    out.emit("S14_deflate_64k", "ms_per_item_loop", "ms", ms);
    out.emit("S14_deflate_64k", "2proc_over_rayon2", "x", ratio);
    out.emit("S14_deflate_64k", "2proc_batched_over_rayon2", "x", ratio_b);
    out.emit("S14_deflate_64k", "compression_ratio", "x", comp);
}

/// S12: slow items on several idle workers. `n` items of `t` each on `k`
/// worker processes should take ceil(n/k)·t: the figure is the makespan over
/// that ideal (1.0 is perfect), for a stream, concurrent blocking calls and
/// batches, on fresh workers (credit unmeasured) and warm ones (measured).
/// Not in the default set: `--scenarios S12`.
fn s12(args: &CommonArgs, out: &Out) {
    const K: usize = 4;
    let t_ms = if args.quick { 100 } else { 300 };
    let ideal = |n: usize| (n.div_ceil(K) as f64) * t_ms as f64 / 1000.0;
    let (mut stream_f, mut stream_w, mut calls_f, mut calls_w, mut batch_f, mut batch_w) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let stream = |server: &Server<u64, u32>, n: usize| {
        let t = Instant::now();
        assert_eq!(server.stream(0..n as u64).filter(|r| r.is_ok()).count(), n);
        t.elapsed().as_secs_f64() / ideal(n)
    };
    let calls = |server: &Server<u64, u32>, n: usize| {
        let t = Instant::now();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let hs: Vec<_> = (0..n as u64)
            .map(|i| {
                let h = server.handle();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    h.call(i).unwrap()
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        t.elapsed().as_secs_f64() / ideal(n)
    };
    for _ in 0..args.runs {
        let procs = || {
            ProcessServlet::new(Nap { ms: t_ms })
                .workers(K)
                .cpus(worker_cpus(out.placement, K))
        };
        let server = Server::start(procs()).unwrap();
        stream_f.push(stream(&server, 2 * K));
        stream_w.push(stream(&server, 2 * K));
        drop(server);
        let server = Server::start(procs()).unwrap();
        calls_f.push(calls(&server, 2 * K));
        calls_w.push(calls(&server, 2 * K));
        drop(server);
        let server = Server::start(
            procs()
                .batch_size(3)
                .batch_wait_time(Duration::from_millis(20)),
        )
        .unwrap();
        batch_f.push(stream(&server, 3 * K));
        batch_w.push(stream(&server, 3 * K));
    }
    out.emit("S12_slow_items", "stream_fresh_ratio", "x", stream_f);
    out.emit("S12_slow_items", "stream_warm_ratio", "x", stream_w);
    out.emit("S12_slow_items", "calls_fresh_ratio", "x", calls_f);
    out.emit("S12_slow_items", "calls_warm_ratio", "x", calls_w);
    out.emit("S12_slow_items", "batch3_fresh_ratio", "x", batch_f);
    out.emit("S12_slow_items", "batch3_warm_ratio", "x", batch_w);
}

fn main() {
    let args = match CommonArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mpserver_scenarios: {e}");
            std::process::exit(2);
        }
    };
    if args.list {
        for id in KNOWN_SCENARIOS {
            println!("{id}");
        }
        return;
    }
    // pinned1: everything on CPU 0. split: the workers on CPU 1
    // (`worker_cpus`), then this process's threads on CPU 0 (`split_start`).
    if args.placement == Placement::Pinned1
        && let Err(e) = pin_to_cpu0()
    {
        eprintln!("cannot pin to CPU 0: {e}");
        std::process::exit(1);
    }
    let out = Out {
        placement: args.placement,
        cpus: current_cpus().unwrap_or_default(),
    };
    // Pinned runs cover the latency scenarios (and start-up), as for the other contenders.
    let default_set: &[&str] = match args.placement {
        Placement::Pinned1 => &["S1", "S7", "S9"],
        // What `split` shows (the ends of a call on different CPUs) is what
        // makes S1 bimodal under `unpinned`.
        Placement::Split => &["S1"],
        Placement::Unpinned => &[
            "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11", "S13", "S14",
        ],
    };
    let want = |id: &str| {
        if args.placement == Placement::Split && id != "S1" {
            if args.scenarios.is_some() && args.wants(id) {
                eprintln!("mpserver_scenarios: {id}: not measured under split (S1 only)");
            }
            return false;
        }
        if args.scenarios.is_some() {
            args.wants(id)
        } else {
            default_set.contains(&id)
        }
    };
    eprintln!("mpserver scenarios, placement {}", args.placement);
    if want("S1") {
        s1(&args, &out);
    }
    if want("S2") {
        s2_s3(&args, &out, 1, "S2_stream_1proc");
    }
    if want("S3") {
        s2_s3(&args, &out, 2, "S3_stream_2proc");
    }
    if want("S4") {
        s4(&args, &out);
    }
    if want("S5") {
        s5(&args, &out);
    }
    if want("S6") && args.placement == Placement::Unpinned {
        s6(&args, &out);
    }
    if want("S7") {
        s7(&args, &out);
    }
    if want("S8") {
        s8(&args, &out);
    }
    if want("S9") {
        s9(&args, &out);
    }
    if want("S10") {
        s10(&args, &out);
    }
    if want("S11") {
        s11(&args, &out);
    }
    if want("S13") {
        s13(&args, &out);
    }
    if want("S14") {
        s14(&args, &out);
    }
    // Asked-for scenarios this program does not define (e.g. S11 before it
    // exists) are skipped with a note, so that one list serves every contender.
    for id in args.scenarios.iter().flatten() {
        let short = id.split('_').next().unwrap_or(id).to_ascii_uppercase();
        if !KNOWN_SCENARIOS.contains(&short.as_str()) {
            eprintln!("mpserver_scenarios: {id}: not defined here, skipped");
        }
    }
    // S12 (slow items, about a minute) runs only when asked for by name.
    if args.scenarios.is_some() && want("S12") {
        s12(&args, &out);
    }
}

// ------------------------------------------------------------------ S11

/// S11's worker: a batch costs a fixed overhead plus a per-item cost, spent
/// asleep (an accelerator's batch: the host waits), so that the service
/// time is the same whatever else the shared machine runs; returns each
/// item with its batch's size.
#[derive(Clone, Serialize, Deserialize)]
struct Affine {
    fixed_us: u64,
    per_item_us: u64,
}
impl Worker for Affine {
    type Input = u64;
    type Output = (u64, u32);
    fn call(&mut self, x: u64) -> Result<(u64, u32), WorkerError> {
        std::thread::sleep(Duration::from_micros(self.fixed_us + self.per_item_us));
        Ok((x, 1))
    }
    fn call_batch(&mut self, xs: Vec<u64>) -> Vec<Result<(u64, u32), WorkerError>> {
        let n = xs.len() as u64;
        std::thread::sleep(Duration::from_micros(self.fixed_us + self.per_item_us * n));
        xs.into_iter().map(|x| Ok((x, n as u32))).collect()
    }
}

/// S11 contenders: batching off, fixed windows, adaptive.
#[derive(Clone, Copy)]
enum S11Policy {
    Unbatched,
    Fixed(u64),
    Adaptive,
}

impl S11Policy {
    fn name(self) -> String {
        match self {
            S11Policy::Unbatched => "unbatched".into(),
            S11Policy::Fixed(ms) => format!("fixed{ms}ms"),
            S11Policy::Adaptive => "adaptive".into(),
        }
    }
}

/// One open-loop run: Poisson arrivals at `rate` per second for `secs`.
/// Returns the p50 and p99 latency (ms, from each request's scheduled
/// arrival, so a late submit counts against the server), the throughput
/// (successful items per second, from the first arrival to the last
/// completion) and the mean batch size. A request not done within 2 s
/// counts as 2 s and fails (its item is then skipped if not begun).
fn s11_run(
    out: &Out,
    policy: S11Policy,
    cost: Affine,
    rate: f64,
    secs: f64,
    seed: u64,
) -> [f64; 4] {
    const BATCH: usize = 32;
    const LIMIT: Duration = Duration::from_secs(2);
    let mut servlet = ProcessServlet::new(cost).cpus(worker_cpus(out.placement, 1));
    servlet = match policy {
        S11Policy::Unbatched => servlet,
        S11Policy::Fixed(ms) => servlet
            .batch_size(BATCH)
            .batching(Batching::Fixed)
            .batch_wait_time(Duration::from_millis(ms)),
        S11Policy::Adaptive => servlet.batch_size(BATCH).batching(Batching::Adaptive),
    };
    let server = Server::builder(servlet).capacity(1 << 16).start().unwrap();
    // Warm up: a burst (the worker's service time gets measured) and a few
    // lone calls.
    let warm: Vec<_> = (0..2 * BATCH as u64)
        .map(|i| server.submit(i, CallOptions::default()).unwrap())
        .collect();
    for p in warm {
        p.wait().unwrap();
    }
    for i in 0..5 {
        server.call(i).unwrap();
    }
    let before = server.servlets().batch_sizes;
    // The arrival schedule: exponential gaps from an LCG.
    let mut x = seed | 1;
    let mut uniform = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let n = (rate * secs).ceil() as usize;
    let mut at = Vec::with_capacity(n);
    let mut t = 0.0;
    for _ in 0..n {
        t += -uniform().ln() / rate;
        at.push(Duration::from_secs_f64(t));
    }
    // One worker serves in order, so a collector waiting on each request in
    // turn sees each completion as it happens.
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, mpserver::Pending<(u64, u32)>)>();
    let collector = std::thread::spawn(move || {
        let mut lat = Vec::new();
        let (mut ok, mut last) = (0usize, None);
        for (due, p) in rx {
            let r = p.wait();
            let now = Instant::now();
            lat.push(if r.is_ok() {
                now.duration_since(due).as_secs_f64() * 1e3
            } else {
                LIMIT.as_secs_f64() * 1e3
            });
            if r.is_ok() {
                ok += 1;
                last = Some(now);
            }
        }
        (lat, ok, last)
    });
    let start = Instant::now();
    for (i, offset) in at.into_iter().enumerate() {
        let due = start + offset;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let p = server
            .submit(i as u64, CallOptions::default().timeout(LIMIT))
            .unwrap();
        if tx.send((due, p)).is_err() {
            break;
        }
    }
    drop(tx);
    let (mut lat, ok, last) = collector.join().unwrap();
    lat.sort_by(f64::total_cmp);
    let span = last.map_or(f64::NAN, |l| l.duration_since(start).as_secs_f64());
    let after = server.servlets().batch_sizes;
    let batches = after.count.saturating_sub(before.count);
    let mean_batch = if batches == 0 {
        1.0
    } else {
        after.sum.saturating_sub(before.sum) as f64 / batches as f64
    };
    [
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        ok as f64 / span,
        mean_batch,
    ]
}

/// S11: batching policies under open-loop Poisson load. One worker process
/// whose batch costs 2 ms + 0.2 ms per item (asleep), batch size 32: its
/// batched capacity is 32 / 8.4 ms = 3,810 items/s (unbatched: 455/s).
/// Arrivals at 10%, 50% and 90% of that capacity, and at 1% (38/s, 8% of
/// the unbatched capacity: the light load at which an unbatched servlet
/// does not queue; at 10% it runs at 84% of its own capacity), for each of:
/// no batching, fixed windows of 1, 5 and 10 ms, and the adaptive policy.
/// Per load level and contender: p50 and p99 latency (ms), throughput
/// (items/s) and mean batch size; and the goals: at 1% and 10%, adaptive
/// p50 over unbatched p50; at 90%, adaptive p99 over the best fixed
/// window's, and the best fixed window's throughput over adaptive's (each
/// goal is met at ≤ 1.2, ≤ 1, ≤ 1).
fn s11(args: &CommonArgs, out: &Out) {
    let cost = Affine {
        fixed_us: 2000,
        per_item_us: 200,
    };
    let capacity = 32.0 / (cost.fixed_us + 32 * cost.per_item_us) as f64 * 1e6;
    let secs: f64 = if args.quick { 0.8 } else { 3.0 };
    let policies = [
        S11Policy::Unbatched,
        S11Policy::Fixed(1),
        S11Policy::Fixed(5),
        S11Policy::Fixed(10),
        S11Policy::Adaptive,
    ];
    const SC: &str = "S11_batching_poisson";
    for load in [1u32, 10, 50, 90] {
        let rate = capacity * f64::from(load) / 100.0;
        // At least 300 requests (100 quick) per run, for a p99.
        let secs = secs.max(if args.quick { 100.0 } else { 300.0 } / rate);
        // [policy][p50, p99, rate, batch][run]
        let mut figs: Vec<[Vec<f64>; 4]> = vec![Default::default(); policies.len()];
        let (mut p50_goal, mut p99_goal, mut rate_goal) = (vec![], vec![], vec![]);
        for run in 0..args.runs {
            let mut order: Vec<usize> = (0..policies.len()).collect();
            order.rotate_left(run % policies.len());
            let mut r = vec![[0.0; 4]; policies.len()];
            for k in order {
                let seed = 0x5111 + 1000 * u64::from(load) + run as u64;
                r[k] = s11_run(out, policies[k], cost.clone(), rate, secs, seed);
            }
            for (k, v) in r.iter().enumerate() {
                for m in 0..4 {
                    figs[k][m].push(v[m]);
                }
            }
            let adaptive = r[4];
            let fixed = &r[1..4];
            let best_p99 = fixed.iter().map(|v| v[1]).fold(f64::INFINITY, f64::min);
            let best_rate = fixed.iter().map(|v| v[2]).fold(0.0, f64::max);
            p50_goal.push(adaptive[0] / r[0][0]);
            p99_goal.push(adaptive[1] / best_p99);
            rate_goal.push(best_rate / adaptive[2]);
        }
        for (p, f) in policies.iter().zip(figs) {
            let name = p.name();
            let [p50, p99, items, batch] = f;
            out.emit(SC, &format!("load{load}_p50_ms_{name}"), "ms", p50);
            out.emit(SC, &format!("load{load}_p99_ms_{name}"), "ms", p99);
            out.emit(SC, &format!("load{load}_items_per_s_{name}"), "1/s", items);
            out.emit(SC, &format!("load{load}_mean_batch_{name}"), "items", batch);
        }
        match load {
            1 | 10 => out.emit(
                SC,
                &format!("load{load}_p50_adaptive_over_unbatched"),
                "x",
                p50_goal,
            ),
            90 => {
                out.emit(SC, "load90_p99_adaptive_over_best_fixed", "x", p99_goal);
                out.emit(SC, "load90_best_fixed_rate_over_adaptive", "x", rate_goal);
            }
            _ => {}
        }
    }
}
