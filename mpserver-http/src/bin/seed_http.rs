//! The seed documentation's flow (`mpservice.mpserver`), served over HTTP.
//!
//! GetHead, GetTail and GetLen run in an ensemble of process servlets pinned
//! as in the seed; a closure combines their results in a thread; Solute runs
//! in a process. Values are dynamic JSON.
//!
//! ```text
//! seed_http --help
//! curl -s -X POST localhost:8080/call -d '"world"'    # "Hello, wdwdwdwdwd!"
//! ```
//!
//! Every flag also reads from an environment variable (shown by `--help`;
//! flags win). `--flow echo` serves a trivial thread flow instead, to
//! measure the HTTP front's own cost. The bound address is printed on stdout
//! (`listening on ADDR`), useful with port 0. Logs go to stderr (`RUST_LOG`,
//! default `info`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command, value_parser};
use mpserver::Codec;
use mpserver::prelude::*;
use mpserver_http::{Flow, HttpConfig, serve};
use serde_json::Value;

// The seed's workers, defined once with the seed example.
// Not every item is used by every includer.
#[allow(dead_code)]
#[path = "../seed_workers.rs"]
mod seed_workers;
use seed_workers::{GetHead, GetLen, GetTail, Solute, combine_bounded};

/// The command line: every flag with its environment variable.
fn command() -> Command {
    let num = |name: &'static str, env: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .env(env)
            .default_value(default)
            .value_parser(value_parser!(u64))
            .help(help)
    };
    Command::new("seed_http")
        .about("Serves the seed documentation's flow over HTTP (mpserver-http).")
        .arg(
            Arg::new("addr")
                .long("addr")
                .env("MPSERVER_HTTP_ADDR")
                .default_value("127.0.0.1:8080")
                .help("Address to listen on (port 0: any free port)."),
        )
        .arg(
            Arg::new("flow")
                .long("flow")
                .env("MPSERVER_HTTP_FLOW")
                .default_value("seed")
                .value_parser(["seed", "echo"])
                .help("The flow: the seed's, or a trivial echo (the front's own cost)."),
        )
        .arg(num(
            "capacity",
            "MPSERVER_HTTP_CAPACITY",
            "256",
            "Requests in flight across all stages.",
        ))
        .arg(num(
            "timeout-ms",
            "MPSERVER_HTTP_TIMEOUT_MS",
            "60000",
            "Time limit of a request that asks for none.",
        ))
        .arg(num(
            "max-timeout-ms",
            "MPSERVER_HTTP_MAX_TIMEOUT_MS",
            "60000",
            "Longest time limit a request may ask for (x-timeout-ms).",
        ))
        .arg(num(
            "grace-ms",
            "MPSERVER_HTTP_GRACE_MS",
            "30000",
            "On shutdown, how long work in flight may take to finish.",
        ))
        .arg(num(
            "drain-delay-ms",
            "MPSERVER_HTTP_DRAIN_DELAY_MS",
            "5000",
            "On shutdown, how long /readyz answers 503 (work still taken) before intake stops.",
        ))
        .arg(num(
            "max-body-bytes",
            "MPSERVER_HTTP_MAX_BODY_BYTES",
            "2097152",
            "Largest /call body (larger: 413).",
        ))
        .arg(num(
            "max-output-bytes",
            "MPSERVER_HTTP_MAX_OUTPUT_BYTES",
            "16777216",
            "Largest result the combine step makes (larger: 422).",
        ))
}

fn ms(m: &ArgMatches, name: &str) -> Duration {
    Duration::from_millis(m.get_one::<u64>(name).copied().unwrap_or_default())
}

fn count(m: &ArgMatches, name: &str) -> usize {
    usize::try_from(m.get_one::<u64>(name).copied().unwrap_or_default()).unwrap_or(usize::MAX)
}

/// The seed's flow, or a trivial echo for measuring the front itself.
fn flow(m: &ArgMatches) -> Flow<Value, Value> {
    let capacity = count(m, "capacity");
    let timeout = ms(m, "timeout-ms");
    if m.get_one::<String>("flow").map(String::as_str) == Some("echo") {
        let echo = ThreadServlet::new(worker_fn(|x: Value| x)).workers(2);
        return Server::builder(echo)
            .capacity(capacity)
            .timeout(timeout)
            .into();
    }
    let max_output = count(m, "max-output-bytes");
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
        ThreadServlet::new(try_worker_fn(move |x: Vec<Value>| combine_bounded(
            x, max_output
        ))),
        ProcessServlet::new(Solute).codec(Codec::MessagePack),
    ];
    Server::builder(servlet)
        .capacity(capacity)
        .timeout(timeout)
        .into()
}

fn main() -> ExitCode {
    let m = command().get_matches();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
        .max_timeout(ms(&m, "max-timeout-ms"))
        .shutdown_grace(ms(&m, "grace-ms"))
        .drain_delay(ms(&m, "drain-delay-ms"))
        .max_body_bytes(count(&m, "max-body-bytes"));
    let addr = m
        .get_one::<String>("addr")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        let addr = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
        serve(listener, flow(&m), config).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed_http: {e}");
            ExitCode::FAILURE
        }
    }
}
