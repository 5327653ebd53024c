//! The seed documentation's flow (`mpservice.mpserver`), served over HTTP.
//!
//! GetHead, GetTail and GetLen run in an ensemble of process servlets pinned
//! as in the seed; a closure combines their results in a thread; Solute runs
//! in a process. Values are dynamic JSON.
//!
//! ```text
//! seed_http [--addr 127.0.0.1:8080] [--capacity 256] [--timeout-ms 60000]
//!           [--max-timeout-ms 60000] [--grace-ms 30000] [--drain-delay-ms 0]
//!           [--flow seed|echo]
//! curl -s -X POST localhost:8080/call -d '"world"'    # "Hello, wdwdwdwdwd!"
//! ```
//!
//! Every flag also reads from the environment: `MPSERVER_HTTP_ADDR`,
//! `MPSERVER_HTTP_CAPACITY`, `MPSERVER_HTTP_TIMEOUT_MS`,
//! `MPSERVER_HTTP_MAX_TIMEOUT_MS`, `MPSERVER_HTTP_GRACE_MS`,
//! `MPSERVER_HTTP_DRAIN_DELAY_MS`, `MPSERVER_HTTP_FLOW` (flags win). `--flow
//! echo` serves a trivial thread flow instead, to measure the HTTP front's
//! own cost. The bound address is printed on stdout (`listening on ADDR`),
//! useful with port 0. Logs go to stderr (`RUST_LOG`, default `info`).

use std::process::ExitCode;
use std::time::Duration;

use mpserver::Codec;
use mpserver::prelude::*;
use mpserver_http::{Flow, HttpConfig, serve};
use serde_json::Value;

// The seed's workers, defined once with the seed example.
#[path = "../seed_workers.rs"]
mod seed_workers;
use seed_workers::{GetHead, GetLen, GetTail, Solute, combine};

struct Options {
    addr: String,
    capacity: usize,
    timeout: Duration,
    max_timeout: Duration,
    grace: Duration,
    drain_delay: Duration,
    flow: String,
}

const USAGE: &str = "usage: seed_http [--addr HOST:PORT] [--capacity N] [--timeout-ms MS] \
[--max-timeout-ms MS] [--grace-ms MS] [--drain-delay-ms MS] [--flow seed|echo]";

fn parse_args() -> Result<Options, String> {
    let env = |k: &str| std::env::var(k).ok();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            return Err(String::new());
        }
        let Some(flag) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let (k, v) = match flag.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                let v = args
                    .next()
                    .ok_or_else(|| format!("--{flag} needs a value"))?;
                (flag.to_string(), v)
            }
        };
        pairs.push((k, v));
    }
    let get = |name: &str, var: &str| -> Option<String> {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| env(var))
    };
    for (k, _) in &pairs {
        let known = [
            "addr",
            "capacity",
            "timeout-ms",
            "max-timeout-ms",
            "grace-ms",
            "drain-delay-ms",
            "flow",
        ];
        if !known.contains(&k.as_str()) {
            return Err(format!("unknown flag --{k}"));
        }
    }
    let num = |name: &str, var: &str, default: u64| -> Result<u64, String> {
        match get(name, var) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} must be a whole number, got {v:?}")),
            None => Ok(default),
        }
    };
    let ms =
        |name: &str, var: &str, default: u64| num(name, var, default).map(Duration::from_millis);
    let flow = get("flow", "MPSERVER_HTTP_FLOW").unwrap_or_else(|| "seed".into());
    if flow != "seed" && flow != "echo" {
        return Err(format!("--flow must be seed or echo, got {flow:?}"));
    }
    Ok(Options {
        addr: get("addr", "MPSERVER_HTTP_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
        capacity: num("capacity", "MPSERVER_HTTP_CAPACITY", 256)? as usize,
        timeout: ms("timeout-ms", "MPSERVER_HTTP_TIMEOUT_MS", 60_000)?,
        max_timeout: ms("max-timeout-ms", "MPSERVER_HTTP_MAX_TIMEOUT_MS", 60_000)?,
        grace: ms("grace-ms", "MPSERVER_HTTP_GRACE_MS", 30_000)?,
        drain_delay: ms("drain-delay-ms", "MPSERVER_HTTP_DRAIN_DELAY_MS", 0)?,
        flow,
    })
}

/// The seed's flow, or a trivial echo for measuring the front itself.
fn flow(o: &Options) -> Flow<Value, Value> {
    if o.flow == "echo" {
        let echo = ThreadServlet::new(worker_fn(|x: Value| x)).workers(2);
        return Server::builder(echo)
            .capacity(o.capacity)
            .timeout(o.timeout)
            .into();
    }
    let servlet = sequential![
        ensemble![
            ProcessServlet::new(GetHead)
                .cpus([0])
                .codec(Codec::MessagePack),
            ProcessServlet::new(GetTail)
                .cpus([0, 1])
                .codec(Codec::MessagePack),
            ProcessServlet::new(GetLen)
                .cpus([1])
                .codec(Codec::MessagePack),
        ],
        ThreadServlet::new(try_worker_fn(combine)),
        ProcessServlet::new(Solute).codec(Codec::MessagePack),
    ];
    Server::builder(servlet)
        .capacity(o.capacity)
        .timeout(o.timeout)
        .into()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("seed_http: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seed_http: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = HttpConfig::default()
        .max_timeout(opts.max_timeout)
        .shutdown_grace(opts.grace)
        .drain_delay(opts.drain_delay);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&opts.addr).await?;
        let addr = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
        serve(listener, flow(&opts), config).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed_http: {e}");
            ExitCode::FAILURE
        }
    }
}
