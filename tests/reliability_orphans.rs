//! Promise 3: when the server's process dies (SIGKILL: no destructor, no
//! shutdown), every worker process exits on its own within a second.
//!
//! The test re-executes this test binary as the "server": the ignored test
//! `orphan_helper_server`, selected with `--exact --ignored` and enabled by an
//! environment variable, starts a server with process workers (one of them
//! busy in user code, one idle, one in a nested sequential flow), prints their
//! pids and waits to be killed. On this machine PID 1 does not reap orphans, so
//! an exited worker may linger as a zombie: "exited" means gone or state `Z`.

mod reliability_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpserver::{CallOptions, ProcessServlet, Server, sequential};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reliability_support::*;

const HELPER_ENV: &str = "MPSERVER_RELIABILITY_ORPHAN_HELPER";
const HELPER: &str = "orphan_helper_server";

/// Runs only as the child of `workers_exit_when_the_server_is_killed`.
#[test]
#[ignore = "helper: run by workers_exit_when_the_server_is_killed"]
fn orphan_helper_server() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let log = temp_path("orphan-busy");
    let flow = sequential![
        ProcessServlet::new(Chaos::new().log(&log)).workers(2),
        mpserver::ThreadServlet::new(mpserver::worker_fn(|(x, _): Out| Op::Echo(x))),
        ProcessServlet::new(Chaos::new()),
    ];
    let server = Server::start(flow).unwrap();
    // Keep one worker busy in user code (a 60 s sleep), so that only the
    // death signal, not the end of its socket, can stop it promptly.
    let _busy = server
        .submit(
            Op::Sleep(1, 60_000),
            CallOptions::default().timeout(Duration::from_secs(120)),
        )
        .unwrap();
    let busy = wait_until(Duration::from_secs(5), || count_lines(&log) == 1);
    let _ = std::fs::remove_file(&log);
    assert!(busy);
    let three = wait_until(Duration::from_secs(5), || server.worker_pids().len() == 3);
    assert!(three);
    let pids: Vec<String> = server.worker_pids().iter().map(u32::to_string).collect();
    println!("WORKER-PIDS {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
    // Never reached in the test: killed first.
    std::process::exit(1);
}

#[test]
fn workers_exit_when_the_server_is_killed() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            HELPER,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut pids: Vec<u32> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The harness may have printed the test's name on the same line.
        if let Some((_, rest)) = line.split_once("WORKER-PIDS ") {
            pids = rest
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
            break;
        }
    }
    assert_eq!(pids.len(), 3, "the helper reported its workers");
    for &p in &pids {
        assert!(running(p), "worker {p} runs before the server dies");
        assert_eq!(
            proc_state(p).unwrap().1,
            child.id(),
            "worker {p} is the server's child"
        );
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    child.wait().unwrap();
    let all_gone = wait_until(Duration::from_secs(1), || pids.iter().all(|&p| !running(p)));
    let elapsed = killed_at.elapsed();
    let left: Vec<_> = pids.iter().filter(|&&p| running(p)).collect();
    // Clean up before asserting, so a failure leaves nothing behind.
    for &p in &left {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
    }
    assert!(
        all_gone,
        "workers {left:?} still running {elapsed:?} after the server died"
    );
}
