//! Starting worker processes: the parent's side of the bootstrap handshake
//! (the [`Launcher`] that says what to run is in `launcher.rs`).
//!
//! # The handshake
//!
//! The server spawns the launcher's program with the worker's end of a Unix
//! socket pair as stdin and an environment variable
//! `MPSERVER_WORKER=<parent pid>:<token>`, and writes a HELLO frame:
//!
//! ```text
//! HELLO     := magic:u64 protocol:u32 postcard(Hello)
//! HELLO_ACK := postcard(Ack)            (child → parent, at once)
//! CONFIG    := postcard(ChildConfig)    (parent → child)
//! READY | INIT_FAILED                   (child → parent, after the worker's init)
//! ```
//!
//! `Hello` carries the token, the worker type's name, the CPUs the server
//! process may use (an unpinned worker gets all of them, not the pin of the
//! server thread that spawned it), and how the child finds its worker loop:
//!
//! * **Re-exec** (the default [`Launcher`]): the child is the running binary
//!   re-executed. [`crate::init`] (run before `main` by the default
//!   `auto-init` feature, or called as the first line of `main`) sees the
//!   variable, checks that its parent is the server that set it, and reads
//!   the HELLO, which names the worker's entry (the monomorphised
//!   `child_entry::<W>`) by its offset from a fixed anchor function. The
//!   child checks that it runs the same executable image as the parent and
//!   that both functions live in it (`image.rs`), then jumps there. No
//!   registry, no per-worker boilerplate.
//! * **Program** ([`Launcher::program`]): any program that calls
//!   [`serve_worker::<W>()`](super::serve_worker), e.g. a Python interpreter
//!   whose extension module serves a worker type it defines. The child checks
//!   that `W` is the type the server expects (by name) and that it speaks the
//!   same protocol.
//!
//! The child answers the HELLO at once with a HELLO_ACK (accepted, or refused
//! with the reason), before the worker's possibly long `init`; the parent
//! waits for it at most [`Launcher::handshake_timeout`]. A process that was
//! started as a worker but did not bootstrap (no `auto-init`, no
//! `mpserver::init()` in `main`) therefore cannot hang the server's start; and
//! if it tries to start a server of its own, it exits at once instead (see
//! `refuse_if_unbooted_worker`), so forgetting `init()` can never start a
//! chain of processes.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::image::{self, Entry, ImageId};
use super::launcher::{ENV, StartRequest, WorkerProcess, WorkerVar};
pub(crate) use super::launcher::{Launcher, SpawnOptions, WorkerSpawn};
use crate::sync::lock_std;

/// A worker process as the supervisor holds it.
pub(crate) type ProcHandle = Box<dyn WorkerProcess>;
use crate::ipc::frame::{FrameBuf, kind};
use crate::servlet::plumbing::ChildRegistry;

pub(crate) const MAGIC: u64 = 0x6d70_7365_7276_6572; // "mpserver"
/// Version of the handshake and of the frames that follow it.
pub(crate) const PROTOCOL: u32 = 2;
/// Exit code of a process that was started as a worker but did not
/// bootstrap (`EX_CONFIG`).
pub(crate) const EXIT_NOT_BOOTSTRAPPED: i32 = 78;
/// Exit code of a worker process whose handshake failed.
pub(crate) const EXIT_HANDSHAKE_FAILED: i32 = 70;
/// Largest HELLO or HELLO_ACK body accepted.
pub(crate) const MAX_HELLO: usize = 1 << 20;

/// How the child finds its worker loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Find {
    /// Re-exec: the entry (and start hook) as offsets from the anchor, valid
    /// in the image `image`.
    Offset {
        entry: u64,
        start_hook: Option<u64>,
        image: ImageId,
    },
    /// A program calling `serve_worker::<W>()`; `image`, if set, must be the
    /// file that holds the child's mpserver code.
    Named { image: Option<ImageId> },
}

/// The HELLO frame's body (after magic and protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) token: u64,
    pub(crate) type_name: String,
    pub(crate) crate_version: String,
    /// The CPUs the server process may use (empty: unknown, leave as is).
    pub(crate) cpus: Vec<usize>,
    /// Capture backtraces of worker errors and panics.
    pub(crate) backtraces: bool,
    /// Forward `tracing` events up to this level (0: none; see `worker_log`).
    pub(crate) log_level: u8,
    pub(crate) find: Find,
}

/// The HELLO_ACK frame's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ack {
    pub(crate) pid: u32,
    /// Why the child refuses to serve, if it does.
    pub(crate) refused: Option<String>,
}

/// What the server starts for one worker: the entry of its worker type.
pub(crate) struct Target {
    pub(crate) entry: Entry,
    pub(crate) type_name: &'static str,
}

fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// Socket buffer size asked for (the kernel caps it at `net.core.wmem_max` /
/// `rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for large socket buffers, so a large item or result crosses in one
/// go instead of a few hundred kilobytes per wake-up of the other side. Best
/// effort: with the system's default limits the call changes little, and a
/// failure changes nothing.
fn widen_buffers(sock: &UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER);
    let _ = setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER);
}

/// Set once this process has become a worker process (it serves a worker).
static BOOTED: AtomicBool = AtomicBool::new(false);

/// Held while a worker process is spawned (see `start`).
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Marks this process as a worker process; false if it already was one.
pub(crate) fn mark_booted() -> bool {
    !BOOTED.swap(true, Ordering::SeqCst)
}

/// What `MPSERVER_WORKER` says, if this process was started as a worker
/// process by its parent (a process that merely inherited the variable, e.g.
/// spawned by a worker, has another parent: it is not one).
pub(crate) fn started_as_worker() -> Option<WorkerVar> {
    let var = WorkerVar::parse(&std::env::var(ENV).ok()?)?;
    (nix::unistd::getppid().as_raw() == var.ppid).then_some(var)
}

/// In a process that a server started as a worker process but that did not
/// bootstrap (its `main` runs: the `auto-init` feature is off and `main` does
/// not call [`crate::init`] first), starting a server would re-execute the
/// binary again and again. Such a process says why on stderr, tells its
/// parent if it can, and exits at once.
pub(crate) fn refuse_if_unbooted_worker() {
    if BOOTED.load(Ordering::SeqCst) {
        return;
    }
    let Some(WorkerVar { ppid, re_exec, .. }) = started_as_worker() else {
        return;
    };
    let what = if re_exec {
        "with the `auto-init` feature off, call `mpserver::init()` as the first line of `main`"
    } else {
        "a launcher program must call `mpserver::servlet::process::serve_worker` before \
         anything else"
    };
    let msg = format!(
        "this process was started as a worker process by the mpserver server (pid {ppid}) \
         but did not bootstrap: {what}"
    );
    eprintln!("mpserver: {msg}; exiting instead of starting another server");
    // Tell the parent, if stdin is still its socket (the parent checks the
    // frame; anything else on stdin is left alone).
    if let Ok(fd) = std::os::fd::AsFd::as_fd(&io::stdin()).try_clone_to_owned()
        && nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
            .is_ok_and(|t| t == nix::sys::socket::SockType::Stream)
        && nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
        )
        .is_ok_and(|a| a.as_unix_addr().is_some())
    {
        let sock = UnixStream::from(fd);
        let _ = send_ack(&sock, Some(msg));
    }
    std::process::exit(EXIT_NOT_BOOTSTRAPPED);
}

/// Called when a server starts: refuses to run in an unbooted worker
/// process, and notes the CPUs this process may use before any server thread
/// is pinned.
pub(crate) fn on_server_start() {
    refuse_if_unbooted_worker();
    crate::affinity::process_cpus();
}

pub(crate) fn send_ack(sock: &UnixStream, refused: Option<String>) -> io::Result<()> {
    let ack = Ack {
        pid: std::process::id(),
        refused,
    };
    let body = postcard::to_stdvec(&ack).map_err(io::Error::other)?;
    let mut b = FrameBuf::new();
    b.frame(kind::HELLO_ACK, &body);
    super::connection::send_all(sock, b.as_bytes()).map_err(|e| e.error)
}

/// Reads one frame of kind `want` with exact reads (nothing beyond it is
/// consumed), at most [`MAX_HELLO`] bytes.
pub(crate) fn read_small_frame(mut sock: &UnixStream, want: u8) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match sock.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_HELLO {
        return Err(io::Error::other(format!(
            "bad handshake frame length {len}"
        )));
    }
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body)?;
    if body[0] != want {
        return Err(io::Error::other(format!(
            "expected handshake frame kind {want}, got {}",
            body[0]
        )));
    }
    body.remove(0);
    Ok(Some(body))
}

/// Kills and reaps `child`, removing it from `registry` first.
pub(super) fn discard(
    child: &mut dyn WorkerProcess,
    registry: &ChildRegistry,
) -> Option<std::process::ExitStatus> {
    registry.remove(child.id());
    let _ = child.kill();
    child.wait().ok()
}

/// Spawns a worker process for `target` with `launcher` and completes the
/// first step of the handshake (HELLO, answered by HELLO_ACK); returns the
/// child, already listed in `registry`, and the server's end of its socket.
/// On failure no process is left behind.
pub(crate) fn spawn(
    opts: &SpawnOptions,
    target: &Target,
    who: &WorkerSpawn,
    registry: &ChildRegistry,
) -> io::Result<(ProcHandle, UnixStream)> {
    refuse_if_unbooted_worker();
    let launcher = &opts.launcher;
    let find = if launcher.is_re_exec() {
        let mut fns = vec![("the worker entry", target.entry as usize)];
        if let Some(h) = opts.start_hook {
            fns.push(("the worker start hook", h as usize));
        }
        let image = image::check_in_main_executable(&fns).map_err(io::Error::other)?;
        Find::Offset {
            entry: image::offset_of(target.entry),
            start_hook: opts.start_hook.map(image::offset_of),
            image,
        }
    } else {
        if opts.start_hook.is_some() {
            return Err(io::Error::other(
                "a worker start hook (a function found by its address) needs the re-exec \
                 launcher; with `Launcher::program`, run such set-up in the program itself",
            ));
        }
        let image = if launcher.same_image {
            Some(image::code_image().map_err(io::Error::other)?)
        } else {
            None
        };
        Find::Named { image }
    };
    start(opts, find, target.type_name, who, registry)
}

/// Spawns the process (or has the launcher's starter start it) and completes
/// the HELLO / HELLO_ACK exchange.
fn start(
    opts: &SpawnOptions,
    find: Find,
    type_name: &str,
    who: &WorkerSpawn,
    registry: &ChildRegistry,
) -> io::Result<(ProcHandle, UnixStream)> {
    let launcher = &opts.launcher;
    // A worker spawned here holds its end of the socket only once its
    // parent's copy is closed (below); a process spawned meanwhile by another
    // thread would hold a copy until it runs its program, and this worker's
    // death would not read as the end of its connection while it does (a
    // call handed to the dead worker would be written into the socket and
    // lost with it). Worker spawns take turns, each from its socket's
    // creation to its child's start (`spawn` returns once the child runs its
    // program, its copies of our sockets closed). Not held across a
    // launcher's own starter (user code).
    let spawning = launcher.starter.is_none().then(|| lock_std(&SPAWNING));
    let (ours, theirs) = UnixStream::pair()?;
    widen_buffers(&ours);
    widen_buffers(&theirs);
    let token = random_token();
    let started = match &launcher.starter {
        Some(starter) => starter.start(&StartRequest {
            who,
            socket: theirs.as_fd(),
            token,
            re_exec: launcher.is_re_exec(),
            launcher_env: &launcher.env,
        })?,
        None => None,
    };
    let mut child: ProcHandle = match started {
        // The starter passed the socket on: close ours, so that the child's
        // exit reads as the end of the connection.
        Some(p) => {
            drop(theirs);
            p
        }
        None => {
            let display = format!("{}#{} [mpserver worker]", who.name, who.index);
            let mut cmd = launcher.command(&display, who);
            let var = WorkerVar {
                ppid: std::process::id() as i32,
                token,
                re_exec: launcher.is_re_exec(),
            };
            cmd.env(ENV, var.render())
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                // Keep terminal signals (Ctrl-C) for the server to coordinate.
                .process_group(0);
            let child = cmd.spawn().map_err(|e| {
                let program = launcher
                    .program
                    .as_deref()
                    .unwrap_or(OsStr::new("/proc/self/exe"));
                io::Error::new(e.kind(), format!("cannot run {program:?}: {e}"))
            })?;
            // The command holds the child's end of the socket: close ours, so
            // that the child's exit reads as the end of the connection.
            drop(cmd);
            Box::new(child)
        }
    };
    drop(spawning);
    registry.add(child.id());
    let hello = Hello {
        token,
        type_name: type_name.to_string(),
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        cpus: crate::affinity::process_cpus().to_vec(),
        backtraces: opts.backtraces,
        log_level: super::worker_log::server_level(),
        find,
    };
    let mut frame = FrameBuf::new();
    let s = frame.begin(kind::HELLO);
    frame.put_u64(MAGIC);
    frame.put_u32(PROTOCOL);
    let body = postcard::to_stdvec(&hello).map_err(io::Error::other)?;
    frame.put_bytes(&body);
    frame.end(s);
    // A child that exits before reading gets the bytes in its socket buffer;
    // a write error (the child is gone) shows in the answer below.
    let _ = super::connection::send_all(&ours, frame.as_bytes());
    match await_ack(&ours, launcher.handshake_timeout) {
        Ok(Ack { refused: None, .. }) => Ok((child, ours)),
        Ok(Ack {
            refused: Some(why), ..
        }) => {
            discard(child.as_mut(), registry);
            Err(io::Error::other(why))
        }
        Err(AckError::Timeout) => {
            discard(child.as_mut(), registry);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the worker process did not answer the handshake within {:?}; {}",
                    launcher.handshake_timeout,
                    if launcher.is_re_exec() {
                        "with the `auto-init` feature off, `mpserver::init()` must be the \
                         first line of `main`"
                    } else {
                        "the launcher's program must call `serve_worker` first"
                    }
                ),
            ))
        }
        Err(AckError::Closed(detail)) => {
            let status = discard(child.as_mut(), registry);
            Err(io::Error::other(describe_early_exit(
                status, &detail, launcher,
            )))
        }
    }
}

enum AckError {
    Timeout,
    Closed(String),
}

fn await_ack(sock: &UnixStream, timeout: Duration) -> Result<Ack, AckError> {
    // A zero timeout means "none" to the socket; keep at least a millisecond.
    let _ = sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
    let r = read_small_frame(sock, kind::HELLO_ACK);
    let _ = sock.set_read_timeout(None);
    match r {
        Ok(Some(body)) => postcard::from_bytes::<Ack>(&body)
            .map_err(|e| AckError::Closed(format!("undecodable handshake answer: {e}"))),
        Ok(None) => Err(AckError::Closed("closed its connection".into())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(AckError::Timeout)
        }
        Err(e) => Err(AckError::Closed(e.to_string())),
    }
}

fn describe_early_exit(
    status: Option<std::process::ExitStatus>,
    detail: &str,
    launcher: &Launcher,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.and_then(|s| s.code()) {
        Some(EXIT_NOT_BOOTSTRAPPED) => format!(
            "the worker process was started but did not bootstrap: with the `auto-init` \
             feature off, `mpserver::init()` must be the first line of `main`{}",
            if launcher.is_re_exec() {
                ""
            } else {
                " (or, with a launcher program, it must call `serve_worker` first)"
            }
        ),
        Some(EXIT_HANDSHAKE_FAILED) => {
            format!("the worker process refused the handshake ({detail}; see its stderr)")
        }
        Some(code) => format!("the worker process exited with code {code} during start-up"),
        None => match status.and_then(|s| s.signal()) {
            Some(sig) => format!("the worker process was killed by signal {sig} during start-up"),
            None => format!("the worker process {detail} during start-up"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::CpuAffinity;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Echo;

    impl crate::Worker for Echo {
        type Input = u8;
        type Output = u8;
        fn call(&mut self, x: u8) -> Result<u8, crate::WorkerError> {
            Ok(x)
        }
    }

    fn who() -> WorkerSpawn {
        WorkerSpawn {
            index: 0,
            name: "echo".into(),
            cpus: CpuAffinity::any(),
        }
    }

    /// A re-executed child given the offset of its entry in another image
    /// refuses to jump, and says why.
    #[test]
    fn a_child_refuses_an_offset_for_another_image() {
        let target = Target::of::<Echo>();
        let opts = SpawnOptions::default();
        let mut image = image::check_in_main_executable(&[]).unwrap();
        image.mtime_ns -= 1_000_000_000;
        let find = Find::Offset {
            entry: image::offset_of(target.entry),
            start_hook: None,
            image,
        };
        let registry = ChildRegistry::default();
        let err = start(&opts, find, target.type_name, &who(), &registry).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("another executable image"), "{msg}");
        assert!(registry.pids().is_empty());
    }

    /// An offset that points outside the executable is refused too.
    #[test]
    fn a_child_refuses_an_offset_outside_its_executable() {
        let target = Target::of::<Echo>();
        let image = image::check_in_main_executable(&[]).unwrap();
        let find = Find::Offset {
            entry: 1 << 60,
            start_hook: None,
            image,
        };
        let registry = ChildRegistry::default();
        let err = start(
            &SpawnOptions::default(),
            find,
            target.type_name,
            &who(),
            &registry,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not in an executable mapping"),
            "{err}"
        );
    }

    /// The untampered HELLO is accepted (the child then waits for CONFIG).
    #[test]
    fn a_child_accepts_its_own_image() {
        let target = Target::of::<Echo>();
        let registry = ChildRegistry::default();
        let (mut child, sock) =
            spawn(&SpawnOptions::default(), &target, &who(), &registry).unwrap();
        assert_eq!(registry.pids(), vec![child.id()]);
        drop(sock);
        // End of connection before CONFIG: the child exits on its own.
        let status = child.wait().unwrap();
        assert!(status.code().is_some(), "{status:?}");
    }
}
