//! Processing a large file as an ordered stream, with a progress bar.
//!
//! Every line of a tab-separated file (`key<TAB>text`) goes through a pool of
//! worker processes; `Handle::stream_pairs` feeds the lines in as fast as the
//! server has room and yields the results **in input order**, so the consumer
//! can write them out, or aggregate them, as if the work were sequential.
//! Bad lines fail one by one and are counted instead of stopping the run
//! (`return_exceptions(true)`). Memory stays flat whatever the file size: the
//! reader runs only a bounded number of lines (of the order of the server's
//! capacity) ahead of the consumer.
//!
//! Without a path, the example writes a file of synthetic lines (one in 997
//! malformed on purpose) to a temporary folder and removes it afterwards.
//!
//! ```sh
//! cargo run --release --example large_file                      # 300 000 generated lines
//! cargo run --release --example large_file -- --lines 2000000
//! cargo run --release --example large_file -- --workers 2 path/to/file.tsv
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use mpserver::prelude::*;
use serde::{Deserialize, Serialize};

/// One input line with its line number (so the consumer can check the order).
type Line = (u64, String);

/// What the worker computes for one line.
#[derive(Debug, Serialize, Deserialize)]
struct LineStats {
    line: u64,
    bytes: u64,
    words: u64,
    /// FNV-1a hash of the lower-cased words: a stand-in for real feature work.
    hash: u64,
}

/// Parses and analyses one line. Runs in the worker processes.
#[derive(Serialize, Deserialize)]
struct Analyse;

impl Worker for Analyse {
    type Input = Line;
    type Output = LineStats;

    fn call(&mut self, (line, text): Line) -> Result<LineStats, WorkerError> {
        let Some((key, body)) = text.split_once('\t') else {
            return Err(WorkerError::new(
                "FormatError",
                format!("line {line}: no tab between key and text"),
            ));
        };
        if key.is_empty() {
            return Err(WorkerError::new(
                "FormatError",
                format!("line {line}: empty key"),
            ));
        }
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut words = 0;
        for w in body.split_whitespace() {
            words += 1;
            for b in w.bytes().map(|b| b.to_ascii_lowercase()) {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Ok(LineStats {
            line,
            bytes: text.len() as u64 + 1,
            words,
            hash,
        })
    }
}

struct Args {
    path: Option<PathBuf>,
    lines: u64,
    workers: usize,
}

fn args() -> Args {
    let mut a = Args {
        path: None,
        lines: 300_000,
        workers: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--lines" => a.lines = number(),
            "--workers" => a.workers = number().max(1) as usize,
            flag if flag.starts_with("--") => {
                panic!("unknown flag {flag}; usage: large_file [--lines N] [--workers W] [PATH]")
            }
            _ => a.path = Some(PathBuf::from(arg)),
        }
    }
    a
}

const WORDS: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "server",
    "servlet",
    "worker",
    "batch",
    "stream",
    "Queue",
    "process",
    "thread",
    "CPU",
    "cache",
    "latency",
    "throughput",
];

/// Writes `n` synthetic lines; line numbers 997, 1994, ... (1-based) lack the tab.
fn generate(path: &Path, n: u64) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 1..=n {
        let sep = if i % 997 == 0 { ' ' } else { '\t' };
        write!(out, "k{i}{sep}")?;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let count = 4 + (state % 12) as usize;
        for j in 0..count {
            let w = WORDS[((state >> (j * 4)) % WORDS.len() as u64) as usize];
            if j > 0 {
                out.write_all(b" ")?;
            }
            out.write_all(w.as_bytes())?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    let (path, temp_dir) = match a.path {
        Some(p) => (p, None),
        None => {
            let dir =
                std::env::temp_dir().join(format!("mpserver-large-file-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let p = dir.join("input.tsv");
            generate(&p, a.lines)?;
            (p, Some(dir))
        }
    };
    let size = std::fs::metadata(&path)?.len();

    let server = Server::start(ProcessServlet::new(Analyse).workers(a.workers))?;

    // The input: numbered lines, read lazily on this thread as the stream
    // takes results (a stream has no feeder thread).
    // Invalid UTF-8 is replaced rather than fatal; a read error ends the input
    // and is reported at the end.
    let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let slot = read_error.clone();
    let lines = BufReader::with_capacity(1 << 20, File::open(&path)?)
        .split(b'\n')
        .map_while(move |r| match r {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        })
        .zip(1u64..)
        .map(|(text, n)| (n, text));

    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )?,
    );

    let started = Instant::now();
    let (mut count, mut bytes, mut words, mut digest) = (0u64, 0u64, 0u64, 0u64);
    let mut errors = 0u64;
    let mut first_error = None;
    let mut in_order = true;
    let opts = StreamOptions::default().return_exceptions(true);
    // `stream_pairs` hands back each input beside its result (the seed's
    // `return_x=True`): here, for the progress bar and the error report.
    for ((n, text), result) in server.stream_pairs(lines, opts) {
        count += 1;
        bar.inc(text.len() as u64 + 1);
        match result {
            Ok(s) => {
                in_order &= s.line == n && n == count;
                bytes += s.bytes;
                words += s.words;
                digest = digest.rotate_left(1) ^ s.hash;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("line {n} {text:?}: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);

    println!(
        "file: {} ({}{} bytes)",
        path.display(),
        if temp_dir.is_some() {
            "generated, "
        } else {
            ""
        },
        size
    );
    println!("workers: {} processes", a.workers);
    println!("lines: {count}");
    println!("words: {words}");
    println!("digest: {digest:016x}");
    println!("errors: {errors}");
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    println!(
        "order: {}",
        if in_order {
            "all results in input order"
        } else {
            "OUT OF ORDER"
        }
    );
    println!(
        "time: {secs:.2} s, {:.0} lines/s, {:.1} MB/s",
        count as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    if let Some(e) = read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        println!("read error after line {count}: {e}");
    }

    server.shutdown();
    if let Some(dir) = temp_dir {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
