//! The child's side of the bootstrap handshake (the parent's is in
//! `spawn.rs`, which describes the protocol).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use super::image::{self, Boot, Entry, StartHook};
use super::launcher::WorkerVar;
use super::spawn::{self, EXIT_HANDSHAKE_FAILED, Find, Hello, MAGIC, PROTOCOL};
use crate::ipc::frame::{self, kind};
use crate::ipc::reader::FrameReader;

/// Why [`serve_worker`](super::serve_worker) could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// This process was not started as a worker process by a server (its
    /// parent), or not by a [`Launcher::program`](super::Launcher::program)
    /// launcher.
    #[error("this process was not started by an mpserver server as a worker process")]
    NotAWorker,
    /// This process already serves a worker.
    #[error("this process already serves a worker")]
    AlreadyServing,
    /// The handshake failed: another protocol, another worker type, another
    /// image, or a broken connection. The server's start fails with the same
    /// reason.
    #[error("worker handshake failed: {0}")]
    Handshake(String),
    /// The connection to the server broke or carried something unexpected
    /// while serving.
    #[error("worker connection failed: {0}")]
    Connection(String),
}

/// Dies with the server even if stuck in user code, then re-checks the
/// parent in case it died before the request took effect.
fn tie_to_parent(var: &WorkerVar) -> bool {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    nix::unistd::getppid().as_raw() == var.ppid
}

/// Reads and checks the HELLO on stdin; returns it with the connection.
fn read_hello(var: &WorkerVar) -> Result<(Hello, UnixStream), String> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("no socket on stdin: {e}"))?;
    let sock = UnixStream::from(fd);
    let body = spawn::read_small_frame(&sock, kind::HELLO)
        .map_err(|e| format!("reading the server's HELLO: {e}"))?
        .ok_or("the server closed the connection before the handshake")?;
    let mut c = frame::Cursor::new(&body);
    let magic = c.u64().map_err(|e| e.to_string())?;
    let protocol = c.u32().map_err(|e| e.to_string())?;
    if magic != MAGIC {
        return Err("the server's HELLO has a wrong magic number".into());
    }
    if protocol != PROTOCOL {
        return Err(format!(
            "the server speaks worker protocol {protocol}, this worker process {PROTOCOL} \
             (mpserver {}): server and worker must use the same mpserver",
            env!("CARGO_PKG_VERSION")
        ));
    }
    let hello: Hello = postcard::from_bytes(&body[12..])
        .map_err(|e| format!("undecodable HELLO from the server: {e}"))?;
    if hello.token != var.token {
        return Err("the server's HELLO does not carry this process's token".into());
    }
    Ok((hello, sock))
}

/// Sends a refusal (best effort), says why on stderr, and exits.
fn refuse(sock: Option<&UnixStream>, why: String) -> ! {
    eprintln!("mpserver worker bootstrap failed: {why}");
    if let Some(sock) = sock {
        let _ = spawn::send_ack(sock, Some(why));
    }
    std::process::exit(EXIT_HANDSHAKE_FAILED);
}

/// Called by [`crate::init`] in every process at start-up: if this process
/// was re-executed as a worker process, runs the worker and exits; otherwise
/// returns at once.
pub(crate) fn bootstrap_if_worker() {
    let Some(var) = spawn::started_as_worker() else {
        return;
    };
    if !var.re_exec || !spawn::mark_booted() {
        // A launcher program serves through `serve_worker`; and a second
        // call (auto-init, then `init()` in `main`) does nothing.
        return;
    }
    if !tie_to_parent(&var) {
        std::process::exit(EXIT_HANDSHAKE_FAILED);
    }
    let (hello, sock) = match read_hello(&var) {
        Ok(h) => h,
        Err(why) => refuse(None, why),
    };
    let Find::Offset {
        entry,
        start_hook,
        image,
    } = hello.find
    else {
        refuse(
            Some(&sock),
            "the server sent a HELLO for a launcher program to a re-executed process".into(),
        );
    };
    let entry: Entry = match image::resolve(entry, &image) {
        Ok(e) => e,
        Err(why) => refuse(Some(&sock), why),
    };
    let start_hook: Option<StartHook> = match start_hook.map(|h| image::resolve(h, &image)) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(why)) => refuse(Some(&sock), why),
    };
    set_cpus(&hello.cpus);
    let boot = match make_boot(sock, &hello, start_hook) {
        Ok(b) => b,
        Err(why) => refuse(None, why),
    };
    // The entry checks the worker type and answers the HELLO.
    entry(boot);
    std::process::exit(0);
}

fn make_boot(
    sock: UnixStream,
    hello: &Hello,
    start_hook: Option<StartHook>,
) -> Result<Boot, String> {
    let reader_half = sock.try_clone().map_err(|e| e.to_string())?;
    Ok(Boot {
        reader: FrameReader::new(reader_half, frame::DEFAULT_MAX_FRAME),
        writer: sock,
        type_name: hello.type_name.clone(),
        start_hook,
        backtraces: hello.backtraces,
        log_level: hello.log_level,
    })
}

/// An unpinned worker may use every CPU the server process may use (it was
/// spawned by a server thread that may be pinned to `main_cpu`); a pinned
/// one is narrowed later, from its configuration.
fn set_cpus(cpus: &[usize]) {
    if !cpus.is_empty()
        && let Err(e) =
            crate::affinity::CpuAffinity::set(cpus.iter().copied()).apply_to_current_thread()
    {
        eprintln!("mpserver worker: could not widen CPU affinity to {cpus:?}: {e}");
    }
}

/// In the worker process: checks that it serves the worker type the server
/// expects and answers the HELLO; on a mismatch, refuses and exits.
pub(crate) fn accept<W: 'static>(boot: &Boot) {
    let ours = std::any::type_name::<W>();
    if boot.type_name != ours {
        refuse(
            Some(&boot.writer),
            format!(
                "the server expects a worker of type `{}`, this process serves `{ours}`",
                boot.type_name
            ),
        );
    }
    if let Err(e) = spawn::send_ack(&boot.writer, None) {
        eprintln!("mpserver worker: cannot answer the server: {e}");
        std::process::exit(EXIT_HANDSHAKE_FAILED);
    }
}

/// The handshake of a process started by a
/// [`Launcher::program`](super::Launcher::program) launcher, up to the
/// accepted HELLO: the connection to serve worker type `W` on (see
/// [`serve_worker`](super::serve_worker)).
pub(crate) fn accept_program<W: 'static>() -> Result<Boot, BootError> {
    let var = match spawn::started_as_worker() {
        Some(v) if !v.re_exec => v,
        _ => return Err(BootError::NotAWorker),
    };
    if !spawn::mark_booted() {
        return Err(BootError::AlreadyServing);
    }
    if !tie_to_parent(&var) {
        return Err(BootError::Handshake("the server is gone".into()));
    }
    let (hello, sock) = read_hello(&var).map_err(BootError::Handshake)?;
    let fail = |why: String| {
        let _ = spawn::send_ack(&sock, Some(why.clone()));
        BootError::Handshake(why)
    };
    let Find::Named { image } = hello.find else {
        return Err(fail(
            "the server sent a re-exec HELLO to a launcher program".into(),
        ));
    };
    if let Some(want) = image {
        let ours = image::code_image().map_err(&fail)?;
        if ours != want {
            return Err(fail(format!(
                "this worker's mpserver code is loaded from another file than the server's \
                 (server: {want}; worker: {ours})"
            )));
        }
    }
    let ours = std::any::type_name::<W>();
    if hello.type_name != ours {
        return Err(fail(format!(
            "the server expects a worker of type `{}`, this program serves `{ours}`",
            hello.type_name
        )));
    }
    set_cpus(&hello.cpus);
    let boot = make_boot(sock, &hello, None).map_err(BootError::Handshake)?;
    spawn::send_ack(&boot.writer, None)
        .map_err(|e| BootError::Handshake(format!("cannot answer the server: {e}")))?;
    Ok(boot)
}
