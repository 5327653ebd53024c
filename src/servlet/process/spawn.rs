//! Starting worker processes by re-executing the running binary.
//!
//! The server spawns `/proc/self/exe` (the very image it runs, even if the file
//! on disk was replaced) with the worker's end of a Unix socket pair as stdin
//! and an environment variable `MPSERVER_WORKER=<parent pid>:<token>`. In the
//! child, [`crate::init`] (run automatically before `main` by the default
//! `auto-init` feature, or called as the first line of `main`) recognises the
//! variable, checks that its parent is the server that set it, reads a HELLO
//! frame carrying the same token and the *offset* of the worker's entry
//! function from a fixed anchor function, and jumps there. The entry is the
//! monomorphised `child_entry::<W>`, so the child knows the worker type
//! without any registry.
//!
//! Why an offset: both processes run the same executable image; with address
//! space randomisation the image loads at different bases, but the distance
//! between two functions of one image is fixed. This is the only `unsafe` in
//! the crate; it is covered by every test that starts a process worker.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::ipc::frame::{self, FrameBuf, FrameReader, kind};

/// Environment variable that marks a worker process.
pub(crate) const ENV: &str = "MPSERVER_WORKER";
const MAGIC: u64 = 0x6d70_7365_7276_6572; // "mpserver"

/// The transport handed to a worker entry.
pub(crate) struct Boot {
    pub(crate) reader: FrameReader<UnixStream>,
    pub(crate) writer: UnixStream,
}

/// The type of a worker entry function.
pub(crate) type Entry = fn(Boot);

#[inline(never)]
fn anchor(_: Boot) {}

/// Offset of `entry` from the anchor, valid in any process running this image.
pub(crate) fn entry_offset(entry: Entry) -> u64 {
    (entry as usize).wrapping_sub(anchor as Entry as usize) as u64
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

/// Spawns a worker process whose entry is `entry`; returns the child and the
/// server's end of its socket, with the HELLO frame already written.
pub(crate) fn spawn(entry: Entry, display_name: &str) -> std::io::Result<(Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    widen_buffers(&ours);
    widen_buffers(&theirs);
    let token = random_token();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(display_name)
        .env(ENV, format!("{}:{token}", std::process::id()))
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        // Keep terminal signals (Ctrl-C) for the server to coordinate.
        .process_group(0);
    let mut child = cmd.spawn()?;
    let mut hello = FrameBuf::new();
    let s = hello.begin(kind::HELLO);
    hello.put_u64(MAGIC);
    hello.put_u64(token);
    hello.put_u64(entry_offset(entry));
    hello.end(s);
    if let Err(e) = super::supervisor::send_all(&ours, hello.as_bytes()) {
        // Never leave a process (or a zombie) behind.
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.error);
    }
    Ok((child, ours))
}

/// Called in every process at start-up: if this process is a worker process,
/// runs the worker and exits; otherwise returns at once.
pub(crate) fn bootstrap_if_worker() {
    let Ok(var) = std::env::var(ENV) else { return };
    let Some((ppid, token)) = var.split_once(':') else {
        return;
    };
    let (Ok(ppid), Ok(token)) = (ppid.parse::<i32>(), token.parse::<u64>()) else {
        return;
    };
    // A process that merely inherited the variable (e.g. spawned by a worker)
    // has another parent: it is not a worker.
    if nix::unistd::getppid().as_raw() != ppid {
        return;
    }
    // Die with the server even if stuck in user code; then re-check the parent
    // in case it died before the request took effect.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() != ppid {
        std::process::exit(70);
    }
    let code = match handshake(token) {
        Ok((entry, boot)) => {
            entry(boot);
            0
        }
        Err(msg) => {
            eprintln!("mpserver worker bootstrap failed: {msg}");
            70
        }
    };
    std::process::exit(code);
}

fn handshake(token: u64) -> Result<(Entry, Boot), String> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("no socket on stdin: {e}"))?;
    let writer = UnixStream::from(fd);
    let reader_half = writer.try_clone().map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(reader_half, frame::DEFAULT_MAX_FRAME);
    let (k, body) = reader
        .read_frame()
        .map_err(|e| e.to_string())?
        .ok_or("server closed the socket before the handshake")?;
    if k != kind::HELLO {
        return Err(format!("expected HELLO, got frame kind {k}"));
    }
    let mut c = frame::Cursor::new(body);
    let (magic, their_token, offset) = (
        c.u64().map_err(|e| e.to_string())?,
        c.u64().map_err(|e| e.to_string())?,
        c.u64().map_err(|e| e.to_string())?,
    );
    if magic != MAGIC || their_token != token {
        return Err("handshake does not match this process's token".into());
    }
    let addr = (anchor as Entry as usize).wrapping_add(offset as usize);
    // SAFETY: this process is an exec of `/proc/self/exe` of the server that
    // wrote the HELLO frame (checked: our parent pid is the one named in the
    // environment, and the frame carries the random token that this parent put
    // in our environment). Both processes therefore run the same executable
    // image, in which `anchor` and the monomorphised entry function sit at a
    // fixed distance; adding the parent's offset to our `anchor` yields the
    // address of that same function, which has type `Entry`.
    let entry = unsafe { std::mem::transmute::<usize, Entry>(addr) };
    Ok((entry, Boot { reader, writer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_entry(_: Boot) {}

    #[test]
    fn offset_round_trips_within_one_image() {
        let off = entry_offset(some_entry);
        let addr = (anchor as Entry as usize).wrapping_add(off as usize);
        assert_eq!(addr, some_entry as Entry as usize);
    }
}
