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
//! flags win): the front's own settings through
//! [`HttpConfig::with_vars`](mpserver_http::HttpConfig::with_vars) (the
//! variables of `HttpConfig::from_env`), the flow's through clap. The
//! process workers' restart policy is `--restart-*`; `--retry-crashed`
//! (on: the seed's workers are pure, so running an item twice is harmless)
//! sends an item whose worker died once more to a free worker. Logs go through
//! `tracing-subscriber`, set up here only: the library never installs a
//! subscriber. `--flow echo` serves a trivial thread flow instead, to
//! measure the HTTP front's own cost. The bound address is printed on stdout
//! (`listening on ADDR`), useful with port 0. Logs go to stderr (`RUST_LOG`,
//! default `info`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command, value_parser};
use mpserver::prelude::*;
use mpserver::{Codec, RestartPolicy};
use mpserver_http::{Flow, HttpConfig, serve};
use serde_json::Value;

// The seed's workers, defined once with the seed example.
// Not every item is used by every includer.
#[allow(dead_code)]
#[path = "../../../examples/shared/seed_workers.rs"]
mod seed_workers;
use seed_workers::{GetHead, GetLen, GetTail, Solute, combine_bounded};

/// The front's settings as flags: (flag, environment variable). A flag
/// given wins over its variable, read by [`HttpConfig::with_vars`].
const HTTP_FLAGS: [(&str, &str, &str); 15] = [
    (
        "max-timeout-ms",
        "MPSERVER_HTTP_MAX_TIMEOUT_MS",
        "Longest time limit a request may ask for (x-timeout-ms) [default 60000].",
    ),
    (
        "default-timeout-ms",
        "MPSERVER_HTTP_DEFAULT_TIMEOUT_MS",
        "Time limit of a request that asks for none [default: --timeout-ms].",
    ),
    (
        "grace-ms",
        "MPSERVER_HTTP_GRACE_MS",
        "On shutdown, how long work in flight may take to finish [default 30000].",
    ),
    (
        "drain-delay-ms",
        "MPSERVER_HTTP_DRAIN_DELAY_MS",
        "On shutdown, how long /readyz answers 503 (work still taken) before intake stops [default 5000].",
    ),
    (
        "close-timeout-ms",
        "MPSERVER_HTTP_CLOSE_TIMEOUT_MS",
        "After the flow stopped, how long open connections may take to finish [default 5000].",
    ),
    (
        "max-body-bytes",
        "MPSERVER_HTTP_MAX_BODY_BYTES",
        "Largest /call body (larger: 413) [default 2097152].",
    ),
    (
        "max-discard-bytes",
        "MPSERVER_HTTP_MAX_DISCARD_BYTES",
        "How much of a too-large body is read and dropped before the 413 [default 134217728].",
    ),
    (
        "max-line-bytes",
        "MPSERVER_HTTP_MAX_LINE_BYTES",
        "Longest /stream line [default 1048576].",
    ),
    (
        "retry-after-ms",
        "MPSERVER_HTTP_RETRY_AFTER_MS",
        "Retry-After advice of 503 answers [default 1000].",
    ),
    (
        "min-live-workers",
        "MPSERVER_HTTP_MIN_LIVE_WORKERS",
        "Readiness: live workers each stage needs [default 1].",
    ),
    (
        "header-read-timeout-ms",
        "MPSERVER_HTTP_HEADER_READ_TIMEOUT_MS",
        "Longest time to receive a request head [default 10000].",
    ),
    (
        "body-read-timeout-ms",
        "MPSERVER_HTTP_BODY_READ_TIMEOUT_MS",
        "Longest time to receive a /call body, or between /stream chunks [default 30000].",
    ),
    (
        "idle-timeout-ms",
        "MPSERVER_HTTP_IDLE_TIMEOUT_MS",
        "Idle keep-alive connections are closed after this [default 60000].",
    ),
    (
        "write-timeout-ms",
        "MPSERVER_HTTP_WRITE_TIMEOUT_MS",
        "A client that reads nothing for this long is cut [default 30000].",
    ),
    (
        "max-connections",
        "MPSERVER_HTTP_MAX_CONNECTIONS",
        "Open connections at most; one more gets a fast 503 [default 1024].",
    ),
];

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
    let mut cmd = Command::new("seed_http")
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
            "The server's time limit of a request.",
        ))
        .arg(num(
            "max-output-bytes",
            "MPSERVER_HTTP_MAX_OUTPUT_BYTES",
            "16777216",
            "Largest result the combine step makes (larger: 422).",
        ))
        .arg(num(
            "restart-backoff-ms",
            "MPSERVER_HTTP_RESTART_BACKOFF_MS",
            "10",
            "Process workers: first back-off before restarting a crashed worker.",
        ))
        .arg(num(
            "restart-max-backoff-ms",
            "MPSERVER_HTTP_RESTART_MAX_BACKOFF_MS",
            "5000",
            "Process workers: longest back-off (it doubles from the first).",
        ))
        .arg(num(
            "restart-max-restarts",
            "MPSERVER_HTTP_RESTART_MAX_RESTARTS",
            "20",
            "Process workers: crashes within the window before a worker is unhealthy.",
        ))
        .arg(num(
            "restart-window-ms",
            "MPSERVER_HTTP_RESTART_WINDOW_MS",
            "60000",
            "Process workers: the window of --restart-max-restarts.",
        ))
        .arg(
            Arg::new("restart-served-at-once")
                .long("restart-served-at-once")
                .env("MPSERVER_HTTP_RESTART_SERVED_AT_ONCE")
                .default_value("true")
                .value_parser(value_parser!(bool))
                .help("Process workers: restart a worker that had served at once (back-off only for start-up deaths)."),
        )
        .arg(num(
            "restart-stable-after-ms",
            "MPSERVER_HTTP_RESTART_STABLE_AFTER_MS",
            "1000",
            "Process workers: a process up this long counts as having served (restarted at once, not counted as a crash loop).",
        ))
        .arg(
            Arg::new("retry-crashed")
                .long("retry-crashed")
                .env("MPSERVER_HTTP_RETRY_CRASHED")
                .default_value("true")
                .value_parser(value_parser!(bool))
                .help("Process workers: send an item whose worker died again, once, to a free worker (at-least-once: the seed's workers are pure, so on by default)."),
        )
        .arg(num(
            "poison-threshold",
            "MPSERVER_HTTP_POISON_THRESHOLD",
            "2",
            "Process workers, with --retry-crashed: crashes an item may be in before it fails as poison (2: retried once).",
        ))
        .arg(num(
            "wait-for-worker-ms",
            "MPSERVER_HTTP_WAIT_FOR_WORKER_MS",
            "1000",
            "Process workers: longest an item waits for a stage with no live worker (then a retryable 503).",
        ));
    for (flag, env, help) in HTTP_FLAGS {
        cmd = cmd.arg(
            Arg::new(flag)
                .long(flag)
                .value_parser(value_parser!(u64))
                .help(format!("{help} [env: {env}=]")),
        );
    }
    cmd
}

/// The front's settings: defaults, then the environment, then flags.
fn http_config(m: &ArgMatches) -> Result<HttpConfig, mpserver_http::ConfigError> {
    HttpConfig::default().with_vars(|var| {
        let flag = HTTP_FLAGS.iter().find(|(_, env, _)| *env == var);
        match flag.and_then(|(f, _, _)| m.get_one::<u64>(f)) {
            Some(v) => Some(v.to_string()),
            None => std::env::var(var).ok(),
        }
    })
}

/// The restart policy of the process workers, from the flags.
fn restart_policy(m: &ArgMatches) -> RestartPolicy {
    RestartPolicy {
        backoff: ms(m, "restart-backoff-ms"),
        max_backoff: ms(m, "restart-max-backoff-ms"),
        max_restarts: count(m, "restart-max-restarts"),
        window: ms(m, "restart-window-ms"),
        restart_served_at_once: m
            .get_one::<bool>("restart-served-at-once")
            .copied()
            .unwrap_or(true),
        stable_after: ms(m, "restart-stable-after-ms"),
        retry_crashed: m.get_one::<bool>("retry-crashed").copied().unwrap_or(true),
        poison_threshold: u32::try_from(count(m, "poison-threshold")).unwrap_or(u32::MAX),
    }
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
    let policy = restart_policy(m);
    let wait = ms(m, "wait-for-worker-ms");
    let servlet = sequential![
        ensemble![
            ProcessServlet::new(GetHead)
                .cpus([0])
                .codec(Codec::MessagePack)
                .restart_policy(policy.clone())
                .wait_for_worker(wait),
            ProcessServlet::new(GetTail)
                .cpus([0, 1])
                .codec(Codec::MessagePack)
                .restart_policy(policy.clone())
                .wait_for_worker(wait),
            ProcessServlet::new(GetLen)
                .cpus([1])
                .codec(Codec::MessagePack)
                .restart_policy(policy.clone())
                .wait_for_worker(wait),
        ],
        ThreadServlet::new(try_worker_fn(move |x: Vec<Value>| combine_bounded(
            x, max_output
        ))),
        ProcessServlet::new(Solute)
            .codec(Codec::MessagePack)
            .restart_policy(policy)
            .wait_for_worker(wait),
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
    let config = match http_config(&m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seed_http: {e}");
            return ExitCode::from(2);
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable of the front's configuration (but the signal switch,
    /// which a binary that handles its signals has no use for) has its flag,
    /// named after it: the flag list cannot drift from the library's table.
    #[test]
    fn every_front_variable_has_its_flag() {
        let want: Vec<(String, &str)> = mpserver_http::ENV_VARS
            .iter()
            .filter(|(var, _)| *var != "MPSERVER_HTTP_HANDLE_SIGNALS")
            .map(|(var, _)| {
                let flag = var["MPSERVER_HTTP_".len()..]
                    .to_lowercase()
                    .replace('_', "-");
                (flag, *var)
            })
            .collect();
        let have: Vec<(String, &str)> = HTTP_FLAGS
            .iter()
            .map(|(flag, var, _)| (flag.to_string(), *var))
            .collect();
        assert_eq!(have, want);
    }
}
