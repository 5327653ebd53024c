//! The fork server: a pre-started, single-threaded Python interpreter,
//! prepared the spawn way (the main script imported as `__mp_main__`, the
//! package and `multiprocessing` imported once), that forks each worker
//! process on request, as `multiprocessing`'s `forkserver` start method does.
//! It plugs into the engine through the launcher seam
//! ([`ProcessStarter`]): the engine asks it for a process, then speaks the
//! usual handshake over the worker's socket and supervises it through a
//! [`WorkerProcess`] handle; whenever the fork server cannot fork (it died,
//! or it has more than one thread), the engine spawns a fresh interpreter
//! instead.
//!
//! # Protocol
//!
//! The fork server is `sys.executable` running `mpserver._forkserver.main()`
//! with one end of a `SOCK_SEQPACKET` socket pair (the control socket) as its
//! stdin, in its own process group. Messages to it, one packet each:
//!
//! * `P` + pickled preparation data (first, once): prepare `__main__` and
//!   import the package;
//! * `F` + the environment (`KEY=VALUE` entries, `\0`-separated), with four
//!   descriptors (`SCM_RIGHTS`): the worker's socket (its stdin), a reply
//!   socket, and the server's stdout and stderr. The fork server answers on
//!   the reply socket `P<pid>\n`, or `R<reason>\n` if it will not fork.
//!   Later, `W` on the reply socket asks it to reap that child (the server
//!   sends it once the child has exited, seen through a pidfd): it answers
//!   `S<wait status>\n`. Until then the child stays unreaped, so its pid
//!   cannot be reused while the server may still signal it.
//!
//! The fork server exits when the control socket ends (the server's process
//! died or dropped it), killing its children first; a child dies with the
//! fork server (`PR_SET_PDEATHSIG`, set by the worker loop).

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpserver::servlet::process::{ProcessStarter, StartRequest, WorkerProcess};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

/// How long a fork request may wait for the fork server's answer (its first
/// answer waits for the main script's and the package's imports).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A running (or dead) fork server.
pub struct ForkServer {
    /// The fork server's pid (the parent of its workers).
    pid: u32,
    /// The control socket (sending is atomic per packet: no lock needed).
    ctl: OwnedFd,
    /// The fork server process, to reap it when it is found dead.
    child: Mutex<Option<Child>>,
    /// Set once a request found it dead or unwilling: later requests spawn.
    dead: std::sync::atomic::AtomicBool,
}

/// The process's fork server, started by the first process servlet that asks
/// for one and kept for the life of the process (or until it dies).
static CURRENT: Mutex<Option<Arc<ForkServer>>> = Mutex::new(None);

impl ForkServer {
    /// The running fork server, or a new one started with `executable`,
    /// prepared with `prep` (the pickled `multiprocessing` preparation data)
    /// and importing the package from `pkg_root`. It prepares itself while
    /// the caller goes on; the first fork request waits for it.
    pub fn get_or_start(executable: &str, prep: &[u8], pkg_root: &str) -> io::Result<Arc<Self>> {
        let mut cur = CURRENT
            .lock()
            .map_err(|_| io::Error::other("fork server state poisoned"))?;
        if let Some(fs) = cur.as_ref()
            && !fs.is_dead()
        {
            return Ok(fs.clone());
        }
        if let Some(old) = cur.take() {
            old.reap();
        }
        let fs = Arc::new(Self::start(executable, prep, pkg_root)?);
        *cur = Some(fs.clone());
        Ok(fs)
    }

    fn start(executable: &str, prep: &[u8], pkg_root: &str) -> io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let code = format!(
            "import sys; sys.path.insert(0, {pkg_root:?}); \
             import mpserver._forkserver as f; f.main()"
        );
        let child = Command::new(executable)
            .args(["-c", code.as_str()])
            .stdin(Stdio::from(theirs))
            .env_remove("MPSERVER_WORKER")
            // Terminal signals (Ctrl-C) are the server's to coordinate.
            .process_group(0)
            .spawn()?;
        let fs = ForkServer {
            pid: child.id(),
            ctl: ours,
            child: Mutex::new(Some(child)),
            dead: false.into(),
        };
        let mut msg = Vec::with_capacity(prep.len() + 1);
        msg.push(b'P');
        msg.extend_from_slice(prep);
        fs.send(&msg, &[])?;
        Ok(fs)
    }

    fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn mark_dead(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Reaps the fork server process if it exited (a dead one is replaced by
    /// the next server start).
    fn reap(&self) {
        if let Ok(mut c) = self.child.lock()
            && let Some(child) = c.as_mut()
            && let Ok(Some(_)) = child.try_wait()
        {
            *c = None;
        }
    }

    /// Kills the fork server process (its children die with it).
    fn kill(&self) {
        if let Ok(mut c) = self.child.lock()
            && let Some(child) = c.as_mut()
        {
            let _ = child.kill();
        }
    }

    fn send(&self, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [io::IoSlice::new(msg)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            self.ctl.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Asks for one forked worker; `Ok(None)` if the fork server is gone or
    /// refuses (then it is not asked again).
    fn fork(&self, req: &StartRequest<'_>) -> io::Result<Option<Box<dyn WorkerProcess>>> {
        if self.is_dead() {
            return Ok(None);
        }
        let mut msg = vec![b'F'];
        let env = current_env(req.env(self.pid));
        for (i, (k, v)) in env.iter().enumerate() {
            if i > 0 {
                msg.push(0);
            }
            msg.extend_from_slice(k.as_bytes());
            msg.push(b'=');
            msg.extend_from_slice(v.as_bytes());
        }
        let (reply, theirs) = UnixStream::pair()?;
        let stdout = io::stdout();
        let stderr = io::stderr();
        let fds = [
            req.socket.as_raw_fd(),
            theirs.as_raw_fd(),
            stdout.as_fd().as_raw_fd(),
            stderr.as_fd().as_raw_fd(),
        ];
        if self.send(&msg, &fds).is_err() {
            self.mark_dead();
            return Ok(None);
        }
        drop(theirs);
        reply.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut reader = BufReader::new(reply);
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                // The fork server exited (e.g. the main script failed to
                // import): spawning shows the error the usual way.
                self.mark_dead();
                return Ok(None);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // It still holds this request (and the worker's socket):
                // it must never serve it late.
                self.mark_dead();
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the fork server did not answer within {ANSWER_TIMEOUT:?}"),
                ));
            }
            Err(_) => {
                // As above: the spawned process gets this socket instead.
                self.mark_dead();
                self.kill();
                return Ok(None);
            }
        }
        let line = line.trim_end();
        if let Some(why) = line.strip_prefix('R') {
            eprintln!(
                "mpserver: the fork server will not fork ({why}); worker processes are \
                 spawned from now on"
            );
            self.mark_dead();
            return Ok(None);
        }
        let pid: u32 = line
            .strip_prefix('P')
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad fork server answer {line:?}")))?;
        let reply = reader.into_inner();
        reply.set_read_timeout(None)?;
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                // No pidfd (a kernel before 5.3): the child cannot be
                // supervised safely; have it killed and reaped, and spawn.
                let mut p = Forked {
                    pid,
                    pidfd: None,
                    reply,
                    status: None,
                };
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = p.reap();
                eprintln!("mpserver: no pidfd ({e}); worker processes are spawned");
                self.mark_dead();
                return Ok(None);
            }
        };
        Ok(Some(Box::new(Forked {
            pid,
            pidfd: Some(pidfd),
            reply,
            status: None,
        })))
    }
}

impl ProcessStarter for ForkServer {
    fn start(&self, req: &StartRequest<'_>) -> io::Result<Option<Box<dyn WorkerProcess>>> {
        let r = self.fork(req);
        if self.is_dead() {
            self.reap();
        }
        r
    }
}

/// The environment a spawned worker would get: this process's current one
/// with the request's changes.
fn current_env(changes: Vec<(OsString, Option<OsString>)>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in changes {
        env.retain(|(k2, _)| *k2 != k);
        if let Some(v) = v {
            env.push((k, v));
        }
    }
    env
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
    // descriptor or -1; no memory is passed.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as nix::libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor just returned to us and owned by no one
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A worker process forked by the fork server: signalled through its pidfd,
/// reaped by the fork server when asked.
struct Forked {
    pid: u32,
    pidfd: Option<OwnedFd>,
    reply: UnixStream,
    status: Option<ExitStatus>,
}

impl Forked {
    /// Whether the process has exited, waiting at most `timeout`.
    fn exited(&self, timeout: PollTimeout) -> io::Result<bool> {
        let Some(fd) = &self.pidfd else {
            return Ok(true);
        };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, timeout) {
                Ok(n) => return Ok(n > 0),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Has the fork server reap the (exited) process; its wait status.
    fn reap(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.reply.write_all(b"W")?;
        let mut line = String::new();
        BufReader::new(&self.reply).read_line(&mut line)?;
        let raw: i32 = line
            .trim_end()
            .strip_prefix('S')
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::other("the fork server is gone: the worker's exit status is unknown")
            })?;
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        Ok(status)
    }
}

impl WorkerProcess for Forked {
    fn id(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let Some(fd) = &self.pidfd else {
            return Ok(());
        };
        // SAFETY: pidfd_send_signal(2) with a pidfd we own, a signal number,
        // no siginfo (null) and no flags.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                nix::libc::SIGKILL,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // ESRCH: it has already exited.
            if e.raw_os_error() != Some(nix::libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        if self.exited(PollTimeout::ZERO)? {
            self.reap().map(Some)
        } else {
            Ok(None)
        }
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.exited(PollTimeout::NONE)?;
        self.reap()
    }
}

/// The pid of this process's fork server, if one is running (for tests and
/// diagnostics).
#[pyo3::pyfunction]
pub fn _forkserver_pid() -> Option<u32> {
    let cur = CURRENT.lock().ok()?;
    let fs = cur.as_ref()?;
    fs.reap();
    let alive = fs.child.lock().ok()?.is_some();
    alive.then_some(fs.pid)
}

/// Starts the process's fork server now if none runs (it prepares itself
/// while the caller goes on): `prep` is the pickled `multiprocessing`
/// preparation data, `pkg_root` the folder holding the package.
#[pyo3::pyfunction]
pub fn _start_forkserver(py: pyo3::Python<'_>, prep: &[u8], pkg_root: &str) -> pyo3::PyResult<u32> {
    use pyo3::prelude::*;
    let executable: String = py.import("sys")?.getattr("executable")?.extract()?;
    let fs = ForkServer::get_or_start(&executable, prep, pkg_root).map_err(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the fork server: {e}"))
    })?;
    Ok(fs.pid)
}

/// In the fork server: dies with its parent (`SIGKILL`) while `on`, so that
/// a main script whose import hangs cannot outlive the server's process;
/// off once prepared (it then exits when its control socket ends: the
/// parent-death signal follows the thread that spawned the process, which
/// may end before the program does). Returns false if the parent is
/// already gone.
#[pyo3::pyfunction]
pub fn _die_with_parent(on: bool, parent: u32) -> pyo3::PyResult<bool> {
    let sig = on.then_some(nix::sys::signal::Signal::SIGKILL);
    nix::sys::prctl::set_pdeathsig(sig)
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
    Ok(nix::unistd::getppid().as_raw() as u32 == parent)
}
