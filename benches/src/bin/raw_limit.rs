//! The machine's raw inter-process limit, as a yardstick for `mpserver` and
//! Python `mpservice`.
//!
//! A minimal two-process program: the parent creates a Unix socket pair and
//! forks while it is still single-threaded; the child is a plain echo loop.
//! Messages are framed as a little-endian `u32` length followed by the payload
//! (any real transport needs some framing, so this is the cheapest honest one).
//! The child reads through a buffer and flushes its output only when it has no
//! more input already buffered, which is the fastest correct echo for both
//! one-at-a-time round trips and pipelined streams.
//!
//! Scenarios (JSON lines on stdout, progress on stderr):
//!
//! * `R1_roundtrip`: 2000 sequential round trips of an 8-byte message after a
//!   warm-up; `calls_per_s`, `p50_us`, `p99_us`.
//! * `R2_stream`: 50,000 8-byte messages written by a writer thread while a
//!   reader thread collects the echoes (pipelined); `items_per_s`.
//! * `R3_echo_1mb`: 200 sequential round trips of a 1 MiB payload; `mb_per_s`
//!   = bytes sent one way / total time (MB = 10^6 bytes).
//! * `R3b_echo_1mb_4mib_buffers`: R3 over a second socket pair whose buffers
//!   are 4 MiB (capped by `net.core.wmem_max`/`rmem_max`), as mpserver asks
//!   for its worker sockets: the minimal program plus that one option.
//! * `R4_cpu_scaling` (unpinned only): S6's ~2 ms units of CPU work, 400 of
//!   them on one bare thread, then shared by two; `speedup` is what this
//!   machine's two vCPUs give with nothing else running (the ceiling for S6).
//!
//! Flags: `--placement pinned1|unpinned|split` (pinned1 puts parent and
//! child on CPU 0; unpinned leaves the affinity alone; split puts the parent
//! on CPU 0 and the child on CPU 1), `--runs N` (default 3),
//! `--scenarios R1,R2,R3,R4`, `--quick` (smaller counts).

use std::io::{self, BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mpserver_benches::{
    CommonArgs, Figure, Placement, current_cpus, lcg_work, loops_for_2ms, pin_to_cpu, pin_to_cpu0,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// Contender name written into every figure.
const CONTENDER: &str = "raw";
/// Size of the tiny message used by R1 and R2.
const SMALL: usize = 8;
/// Size of the large payload used by R3.
const MIB: usize = 1 << 20;
/// Buffer size of the child's reader and writer and of the parent's stream ends.
const BUF: usize = 64 * 1024;

/// Message counts of one invocation (full or `--quick`).
struct Sizes {
    /// Untimed round trips before R1's measured ones.
    r1_warmup: usize,
    /// Measured round trips in R1.
    r1_calls: usize,
    /// Messages streamed in R2.
    r2_items: usize,
    /// Untimed round trips before R3's measured ones.
    r3_warmup: usize,
    /// Measured 1 MiB round trips in R3.
    r3_calls: usize,
}

impl Sizes {
    /// The counts for a full or a quick (`--quick`) invocation.
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                r1_warmup: 100,
                r1_calls: 500,
                r2_items: 5_000,
                r3_warmup: 2,
                r3_calls: 20,
            }
        } else {
            Sizes {
                r1_warmup: 500,
                r1_calls: 2_000,
                r2_items: 50_000,
                r3_warmup: 5,
                r3_calls: 200,
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match CommonArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("raw_limit: {e}");
            eprintln!(
                "usage: raw_limit [--placement pinned1|unpinned] [--runs N] [--scenarios R1,R2,R3] [--quick]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_limit: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the placement, forks the echo child and runs the selected scenarios.
fn run(args: &CommonArgs) -> io::Result<()> {
    // pinned1: parent and child on CPU 0; split: the parent on CPU 0, the
    // child on CPU 1 (set in the child after the fork).
    if args.placement != Placement::Unpinned {
        pin_to_cpu0().map_err(io::Error::from)?;
    }
    eprintln!(
        "raw_limit: placement={} cpus={:?} runs={} quick={}",
        args.placement,
        current_cpus().unwrap_or_default(),
        args.runs,
        args.quick
    );

    let (parent_end, child_end) = UnixStream::pair()?;
    // A second pair with the 4 MiB socket buffers mpserver asks for (capped
    // by the kernel's limits), for R3's tuned variant.
    let (parent_big, child_big) = UnixStream::pair()?;
    for end in [&parent_big, &child_big] {
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(end, sockopt::SndBuf, &(4usize << 20)).map_err(io::Error::from)?;
        setsockopt(end, sockopt::RcvBuf, &(4usize << 20)).map_err(io::Error::from)?;
    }
    // Fork is only sound while this process has a single thread (nothing has
    // spawned one yet: no runtime, no logger). Check rather than assume.
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork with {threads} threads"
        )));
    }
    // Nothing has been written to stdout yet, so no buffered output is duplicated.
    // SAFETY: the process is single-threaded (checked above), so the child
    // starts with consistent allocator and stdio state.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            drop(parent_end);
            drop(parent_big);
            if args.placement == Placement::Split
                && let Err(e) = pin_to_cpu(1)
            {
                eprintln!("raw_limit child: cannot pin to CPU 1: {e}");
                std::process::exit(1);
            }
            let code = match echo_loop(&child_end).and_then(|()| echo_loop(&child_big)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("raw_limit child: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            drop(child_big);
            let result = run_scenarios(args, &parent_end);
            // Closing our end makes the child see end-of-file and move on
            // to the second pair.
            drop(parent_end);
            let result = result.and_then(|()| run_tuned(args, &parent_big));
            drop(parent_big);
            match waitpid(child, None).map_err(io::Error::from)? {
                WaitStatus::Exited(_, 0) => {}
                other => eprintln!("raw_limit: echo child ended with {other:?}"),
            }
            result
        }
    }
}

/// The child's side: echo every frame until the parent closes its end.
fn echo_loop(stream: &UnixStream) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(BUF, stream);
    let mut writer = BufWriter::with_capacity(BUF, stream);
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 4];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        payload.resize(u32::from_le_bytes(header) as usize, 0);
        reader.read_exact(&mut payload)?;
        writer.write_all(&header)?;
        writer.write_all(&payload)?;
        // Flush only when no further input is already buffered: the peer has
        // sent whole frames, so blocking on the next read cannot deadlock.
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
    writer.flush()
}

/// Builds one frame (length header + payload) holding `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload fits a u32 length");
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends `request` (a whole frame) and reads the echoed frame into `reply`
/// (which must have the same length).
fn round_trip(stream: &UnixStream, request: &[u8], reply: &mut [u8]) -> io::Result<()> {
    let mut s = stream;
    s.write_all(request)?;
    s.read_exact(reply)
}

/// Runs the scenarios selected by `args` against the echo child on `stream`,
/// printing each figure as soon as its runs are complete.
fn run_scenarios(args: &CommonArgs, stream: &UnixStream) -> io::Result<()> {
    let sizes = Sizes::new(args.quick);
    let emit = |scenario: &str, metric: &str, unit: &str, runs: Vec<f64>| {
        let f = Figure::new(CONTENDER, scenario, args.placement, metric, unit, runs);
        eprintln!(
            "  {scenario} {metric}: median {:.3} {unit} (min {:.3}, max {:.3})",
            f.median, f.min, f.max
        );
        let mut out = io::stdout().lock();
        writeln!(out, "{}", f.to_json_line())?;
        out.flush()
    };

    if args.wants("R1_roundtrip") {
        eprintln!(
            "R1_roundtrip: {} x {SMALL}-byte round trips",
            sizes.r1_calls
        );
        let (mut rate, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs {
            let (r, a, b) = r1_roundtrip(stream, &sizes)?;
            eprintln!("  run {run}: {r:.0} calls/s, p50 {a:.2} us, p99 {b:.2} us");
            rate.push(r);
            p50.push(a);
            p99.push(b);
        }
        emit("R1_roundtrip", "calls_per_s", "1/s", rate)?;
        emit("R1_roundtrip", "p50_us", "us", p50)?;
        emit("R1_roundtrip", "p99_us", "us", p99)?;
    }

    if args.wants("R2_stream") {
        eprintln!(
            "R2_stream: {} x {SMALL}-byte messages, pipelined",
            sizes.r2_items
        );
        let mut rate = Vec::new();
        // Untimed warm-up pass with a tenth of the items.
        r2_stream(stream, sizes.r2_items / 10)?;
        for run in 0..args.runs {
            let r = r2_stream(stream, sizes.r2_items)?;
            eprintln!("  run {run}: {r:.0} items/s");
            rate.push(r);
        }
        emit("R2_stream", "items_per_s", "1/s", rate)?;
    }

    if args.wants("R3_echo_1mb") {
        eprintln!("R3_echo_1mb: {} x 1 MiB round trips", sizes.r3_calls);
        let mut rate = Vec::new();
        for run in 0..args.runs {
            let r = r3_echo(stream, &sizes)?;
            eprintln!("  run {run}: {r:.1} MB/s one way");
            rate.push(r);
        }
        emit("R3_echo_1mb", "mb_per_s", "MB/s", rate)?;
    }

    // CPU scaling needs two CPUs: only unpinned, as S6.
    if args.wants("R4_cpu_scaling") && args.placement == Placement::Unpinned {
        let items = if args.quick { 100 } else { 400 };
        eprintln!("R4_cpu_scaling: {items} x ~2 ms of CPU work, 1 vs 2 bare threads");
        let loops = loops_for_2ms();
        let (mut one, mut two, mut speedup) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs.max(mpserver_benches::S6_MIN_RUNS) {
            let a = cpu_rate(loops, items, 1);
            let b = cpu_rate(loops, items, 2);
            eprintln!(
                "  run {run}: {a:.0} items/s on 1, {b:.0} on 2, x{:.3}",
                b / a
            );
            one.push(a);
            two.push(b);
            speedup.push(b / a);
        }
        emit("R4_cpu_scaling", "items_per_s_1thread", "1/s", one)?;
        emit("R4_cpu_scaling", "items_per_s_2threads", "1/s", two)?;
        emit("R4_cpu_scaling", "speedup", "x", speedup)?;
    }
    Ok(())
}

/// Items per second when `threads` bare threads share `items` units of
/// [`lcg_work`] (S6's work, with nothing around it).
fn cpu_rate(loops: u64, items: u64, threads: u64) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            s.spawn(move || {
                for i in (k..items).step_by(threads as usize) {
                    std::hint::black_box(lcg_work(loops, i));
                }
            });
        }
    });
    items as f64 / t.elapsed().as_secs_f64()
}

/// R3 again over socket buffers of 4 MiB (as mpserver asks for): the same
/// program with one socket option, to show what the tuning is worth here.
fn run_tuned(args: &CommonArgs, stream: &UnixStream) -> io::Result<()> {
    if !args.wants("R3b_echo_1mb_4mib_buffers") {
        return Ok(());
    }
    let sizes = Sizes::new(args.quick);
    eprintln!(
        "R3b_echo_1mb_4mib_buffers: {} x 1 MiB round trips",
        sizes.r3_calls
    );
    let mut rate = Vec::new();
    for run in 0..args.runs {
        let r = r3_echo(stream, &sizes)?;
        eprintln!("  run {run}: {r:.1} MB/s one way");
        rate.push(r);
    }
    let f = Figure::new(
        CONTENDER,
        "R3b_echo_1mb_4mib_buffers",
        args.placement,
        "mb_per_s",
        "MB/s",
        rate,
    );
    let mut out = io::stdout().lock();
    writeln!(out, "{}", f.to_json_line())?;
    out.flush()
}

/// One run of R1; returns `(calls_per_s, p50_us, p99_us)`.
fn r1_roundtrip(stream: &UnixStream, sizes: &Sizes) -> io::Result<(f64, f64, f64)> {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    let mut reply = vec![0u8; 4 + SMALL];
    for i in 0..sizes.r1_warmup {
        round_trip(stream, &frame(&(i as u64).to_le_bytes()), &mut reply)?;
    }
    let start = Instant::now();
    for i in 0..sizes.r1_calls {
        let request = frame(&(i as u64).to_le_bytes());
        let t0 = Instant::now();
        round_trip(stream, &request, &mut reply)?;
        let dt = t0.elapsed();
        if reply != request {
            return Err(io::Error::other("R1: echo mismatch"));
        }
        hist.saturating_record(nanos(dt).max(1));
    }
    let total = start.elapsed().as_secs_f64();
    Ok((
        sizes.r1_calls as f64 / total,
        hist.value_at_quantile(0.50) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
    ))
}

/// One run of R2 with `items` messages; returns items per second.
fn r2_stream(stream: &UnixStream, items: usize) -> io::Result<f64> {
    let write_half = stream.try_clone()?;
    let read_half = stream.try_clone()?;
    let start = Instant::now();
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> io::Result<()> {
            let mut w = BufWriter::with_capacity(BUF, &write_half);
            for i in 0..items {
                w.write_all(&frame(&(i as u64).to_le_bytes()))?;
            }
            w.flush()
        });
        let reader = s.spawn(move || -> io::Result<()> {
            let mut r = BufReader::with_capacity(BUF, &read_half);
            let mut reply = [0u8; 4 + SMALL];
            for i in 0..items {
                r.read_exact(&mut reply)?;
                if reply[4..] != (i as u64).to_le_bytes() {
                    return Err(io::Error::other("R2: echo out of order"));
                }
            }
            Ok(())
        });
        let w = writer.join().expect("R2 writer thread panicked");
        let r = reader.join().expect("R2 reader thread panicked");
        w.and(r)
    })?;
    Ok(items as f64 / start.elapsed().as_secs_f64())
}

/// One run of R3; returns MB/s one way (bytes sent / total time, MB = 10^6 B).
fn r3_echo(stream: &UnixStream, sizes: &Sizes) -> io::Result<f64> {
    let payload: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let request = frame(&payload);
    let mut reply = vec![0u8; request.len()];
    for _ in 0..sizes.r3_warmup {
        round_trip(stream, &request, &mut reply)?;
    }
    let start = Instant::now();
    for _ in 0..sizes.r3_calls {
        round_trip(stream, &request, &mut reply)?;
    }
    let total = start.elapsed().as_secs_f64();
    if reply != request {
        return Err(io::Error::other("R3: echo mismatch"));
    }
    Ok((sizes.r3_calls * MIB) as f64 / 1e6 / total)
}

/// A duration in whole nanoseconds, saturating at `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
