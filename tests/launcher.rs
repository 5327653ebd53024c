//! Worker process start-up: the launcher seam (a program that calls
//! `serve_worker`), the command hook, and the handshake's refusals (another
//! worker type, a process that did not bootstrap, a program that never
//! answers or exits at once). No test may leave a process behind.
//!
//! The "program" here is this very test binary run with `--exact <helper>`:
//! the helper tests below act as the worker program when started by a
//! server, and check the plain-process behaviour otherwise.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpserver::servlet::process::{BootError, Launcher, serve_worker};
use mpserver::{Error, ProcessServlet, Server, Worker, WorkerContext, WorkerError};
use serde::{Deserialize, Serialize};
use support::{Double, all_children, wait_for};

/// A launcher that runs this test binary's helper test `name` as the worker
/// program (its test-harness chatter on stdout is dropped).
fn helper(name: &str) -> Launcher {
    Launcher::program(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .command_hook(|cmd, _| {
            cmd.stdout(Stdio::null());
        })
}

/// Tests that start servers run one at a time, so that each one sees only
/// its own children.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn started_by_a_server() -> bool {
    std::env::var_os("MPSERVER_WORKER").is_some()
}

/// Worker program helper: serves `Double`.
#[test]
fn helper_serve_double() {
    match serve_worker::<Double>() {
        Ok(()) => assert!(started_by_a_server()),
        // Refused by the server (the test expects it): exit quietly.
        Err(BootError::Handshake(_)) if started_by_a_server() => {}
        Err(e) => {
            // In a plain test run this process is no worker.
            assert!(!started_by_a_server(), "{e}");
            assert!(matches!(e, BootError::NotAWorker), "{e}");
        }
    }
}

/// Worker program helper: forgets to serve and starts a server instead.
#[test]
fn helper_start_a_server_instead() {
    let _serial = serial();
    let r = Server::start(ProcessServlet::new(Double));
    // Only a plain run gets here: a worker process exits inside `start`.
    assert!(!started_by_a_server());
    assert_eq!(r.unwrap().call(2).unwrap(), 4);
}

/// Returns `3 * x` (a type the `helper_serve_double` program does not serve).
#[derive(Clone, Serialize, Deserialize)]
struct Triple;

impl Worker for Triple {
    type Input = i64;
    type Output = i64;
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        Ok(3 * x)
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn a_program_launcher_serves_the_worker() {
    let _serial = serial();
    let server = Server::start(
        ProcessServlet::new(Double)
            .workers(2)
            .launcher(helper("helper_serve_double")),
    )
    .unwrap();
    for x in 0..50 {
        assert_eq!(server.call(x).unwrap(), 2 * x);
    }
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        let cmd = cmdline(*pid);
        assert!(cmd.contains("helper_serve_double"), "{cmd}");
    }
    drop(server);
    wait_for(|| all_children().is_empty());
}

fn start_error(servlet: ProcessServlet<Triple>) -> (String, Duration) {
    let t = Instant::now();
    let err = match Server::start(servlet) {
        Ok(_) => panic!("start should fail"),
        Err(e) => e,
    };
    let spent = t.elapsed();
    assert!(matches!(err, Error::Start(_)), "{err:?}");
    // Nothing is left: the server reaped what it spawned.
    assert!(all_children().is_empty(), "{:?}", all_children());
    (err.to_string(), spent)
}

#[test]
fn a_program_serving_another_worker_type_is_refused() {
    let _serial = serial();
    let (msg, spent) =
        start_error(ProcessServlet::new(Triple).launcher(helper("helper_serve_double")));
    assert!(msg.contains("Triple") && msg.contains("Double"), "{msg}");
    assert!(spent < Duration::from_secs(8), "{spent:?}");
}

#[test]
fn a_worker_that_did_not_bootstrap_refuses_to_start_a_server() {
    let _serial = serial();
    // The program runs the user's code (here: starts a server) instead of
    // serving: it must exit at once, and the start must say what to do.
    let (msg, spent) =
        start_error(ProcessServlet::new(Triple).launcher(helper("helper_start_a_server_instead")));
    assert!(msg.contains("serve_worker"), "{msg}");
    assert!(msg.contains("did not bootstrap"), "{msg}");
    assert!(spent < Duration::from_secs(8), "{spent:?}");
}

#[test]
fn a_program_that_never_answers_is_killed_after_the_handshake_timeout() {
    let _serial = serial();
    let launcher = Launcher::program("sleep")
        .arg("60")
        .handshake_timeout(Duration::from_millis(300));
    let (msg, spent) = start_error(ProcessServlet::new(Triple).launcher(launcher));
    assert!(msg.contains("did not answer the handshake"), "{msg}");
    assert!(spent < Duration::from_secs(8), "{spent:?}");
}

#[test]
fn a_program_that_exits_at_once_fails_the_start() {
    let _serial = serial();
    let (msg, _) = start_error(ProcessServlet::new(Triple).launcher(Launcher::program("true")));
    assert!(msg.contains("exited with code 0 during start-up"), "{msg}");
    let (msg, _) = start_error(
        ProcessServlet::new(Triple).launcher(Launcher::program("/nonexistent/mpserver-worker")),
    );
    assert!(msg.contains("cannot run"), "{msg}");
}

/// Returns the worker's index (from its context) and the value of `var` in
/// its environment.
#[derive(Clone, Serialize, Deserialize)]
struct EnvProbe {
    var: String,
    #[serde(skip)]
    index: usize,
}

impl Worker for EnvProbe {
    type Input = ();
    type Output = (usize, Option<String>);
    fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
        self.index = ctx.worker_index();
        Ok(())
    }
    fn call(&mut self, _: ()) -> Result<Self::Output, WorkerError> {
        Ok((self.index, std::env::var(&self.var).ok()))
    }
}

/// Calls `server` (of `workers` [`EnvProbe`] workers) from twice as many
/// threads at once until every worker answered (concurrent calls reach every
/// worker sooner or later; fails after 20 s), checking that each found
/// `{prefix}{its index}` in its variable.
fn probe_every_worker(server: &Server<(), (usize, Option<String>)>, workers: usize, prefix: &str) {
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < workers {
        assert!(Instant::now() < deadline, "saw only workers {seen:?}");
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2 * workers)
                .map(|_| s.spawn(|| server.call(())))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            let (index, value) = r.unwrap();
            assert_eq!(value, Some(format!("{prefix}{index}")));
            seen.insert(index);
        }
    }
}

#[test]
fn the_command_hook_sets_the_environment_per_worker() {
    let _serial = serial();
    let var = "MPSERVER_TEST_DEVICE";
    let launcher = Launcher::default()
        .env("MPSERVER_TEST_COMMON", "1")
        .command_hook(move |cmd, w| {
            cmd.env(var, format!("gpu{}", w.index));
        });
    let server = Server::start(
        ProcessServlet::new(EnvProbe {
            var: var.into(),
            index: 0,
        })
        .workers(3)
        .launcher(launcher),
    )
    .unwrap();
    probe_every_worker(&server, 3, "gpu");
}

#[test]
fn require_same_image_refuses_a_copy_of_the_program() {
    let _serial = serial();
    // A copy of this test binary: the same code, another file.
    let copy = support::temp_path("worker-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let program = |same: bool| {
        Launcher::program(&copy)
            .args(["--exact", "helper_serve_double", "--nocapture"])
            .require_same_image(same)
            .command_hook(|cmd, _| {
                cmd.stdout(Stdio::null());
            })
    };
    // Without the requirement the copy serves.
    let server = Server::start(ProcessServlet::new(Double).launcher(program(false))).unwrap();
    assert_eq!(server.call(4).unwrap(), 8);
    drop(server);
    wait_for(|| all_children().is_empty());
    // With it, the start fails and says why.
    let err = Server::start(ProcessServlet::new(Double).launcher(program(true)))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("another file than the server's"), "{msg}");
    assert!(all_children().is_empty(), "{:?}", all_children());
    let _ = std::fs::remove_file(&copy);
}

/// Start hook: names the worker's device after its index.
fn set_device(ctx: &WorkerContext) -> Result<(), WorkerError> {
    // SAFETY: the worker process has one thread when the hook runs.
    unsafe {
        std::env::set_var(
            "MPSERVER_TEST_HOOK_DEVICE",
            format!("dev{}", ctx.worker_index()),
        )
    };
    Ok(())
}

/// Start hook that refuses.
fn no_device(ctx: &WorkerContext) -> Result<(), WorkerError> {
    Err(WorkerError::new(
        "NoDevice",
        format!("no device for worker {}", ctx.worker_index()),
    ))
}

#[test]
fn the_start_hook_runs_in_every_worker_process_before_init() {
    let _serial = serial();
    let var = "MPSERVER_TEST_HOOK_DEVICE";
    let server = Server::start(
        ProcessServlet::new(EnvProbe {
            var: var.into(),
            index: 0,
        })
        .workers(2)
        .on_worker_start(set_device),
    )
    .unwrap();
    probe_every_worker(&server, 2, "dev");
    // The server's own environment is untouched.
    assert!(std::env::var_os(var).is_none());
    drop(server);
    // A hook's error fails the start as init's would, leaving nothing.
    let err = Server::start(ProcessServlet::new(Double).on_worker_start(no_device))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("NoDevice") && msg.contains("no device for worker 0"),
        "{msg}"
    );
    wait_for(|| all_children().is_empty());
    // A function found by its address needs the re-exec launcher.
    let err = Server::start(
        ProcessServlet::new(Double)
            .on_worker_start(set_device)
            .launcher(helper("helper_serve_double")),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("re-exec launcher"), "{err}");
    assert!(all_children().is_empty(), "{:?}", all_children());
}

/// Helper: a server program whose executable is replaced on disk while it
/// runs (an upgrade). Starts a server, says `ready`, waits for `go`, then
/// starts another server (its workers re-execute `/proc/self/exe`).
#[test]
fn helper_upgrade_server() {
    if std::env::var_os("MPSERVER_TEST_UPGRADE").is_none() {
        return;
    }
    let first = Server::start(ProcessServlet::new(Double)).unwrap();
    assert_eq!(first.call(1).unwrap(), 2);
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    match Server::start(ProcessServlet::new(Double)).and_then(|s| s.call(42)) {
        Ok(y) => println!("second server: ok {y}"),
        Err(e) => println!("second server: error {e}"),
    }
    // A worker of the first server, restarted after the upgrade.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.worker_pids()[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match first.call(5) {
            Ok(y) => {
                println!("restarted worker: ok {y}");
                break;
            }
            Err(e) if Instant::now() > deadline => {
                println!("restarted worker: error {e}");
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn workers_run_the_servers_image_after_the_executable_is_replaced() {
    use std::io::{BufRead, BufReader, Write};
    let _serial = serial();
    let program = support::temp_path("upgrade");
    std::fs::copy(std::env::current_exe().unwrap(), &program).unwrap();
    let mut child = Command::new(&program)
        .args(["--exact", "helper_upgrade_server", "--nocapture"])
        .env("MPSERVER_TEST_UPGRADE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        lines.push(std::mem::take(&mut line));
        if lines.last().unwrap().trim() == "ready" {
            break;
        }
    }
    // The upgrade: the file is deleted and another program takes its name.
    std::fs::remove_file(&program).unwrap();
    std::fs::copy("/bin/true", &program).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&program);
    assert!(rest.contains("second server: ok 84"), "{lines:?}\n{rest}");
    assert!(
        rest.contains("restarted worker: ok 10"),
        "{lines:?}\n{rest}"
    );
    assert!(status.success(), "{status:?}\n{rest}");
}
