//! The sending side of one worker process's connection, and cancellation.
//!
//! Whoever writes to the worker holds its send lock for the write (the
//! supervisor, a caller handing an item straight to an idle worker, or the
//! reader sending cancellations), so frames stay whole, item ids grow in the
//! order frames go out and the recycling quota is exact. Nothing else runs
//! under it: values are encoded before it is taken (`dispatch.rs`,
//! `handoff.rs`), and results are delivered elsewhere.
//!
//! A write may wait on the worker reading, and the worker may wait on its
//! results being read. So (1) whoever writes items first makes sure someone
//! reads (`Readers::ensure_reader` in `reader.rs`), and (2) the reader never
//! waits for the send lock: it sends cancellations only when the lock is
//! free ([`send_cancels`] with `wait = false`), leaving them to the
//! supervisor's next scan otherwise. Callers only ever try the lock.

use crate::sync::lock_std;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use super::ledger::Ledger;
use crate::ipc::frame::{FrameBuf, kind};
use std::sync::{Arc, Mutex, MutexGuard};

/// The sending side of one worker process's socket.
pub(super) struct SendSide {
    pub(super) sock: UnixStream,
    /// The id of the next item sent to this process.
    pub(super) next_id: u64,
    /// Items this process may be sent in all (`recycle_after`), else `u64::MAX`.
    pub(super) quota: u64,
    /// Whether callers may hand items straight to this process (off for
    /// batching servlets, while crashed items are retried, and once the
    /// process is retiring or stopping).
    pub(super) direct: bool,
}

/// The send lock.
pub(super) type Writer = Arc<Mutex<SendSide>>;

pub(super) fn lock_side(w: &Writer) -> MutexGuard<'_, SendSide> {
    lock_std(w)
}

/// A failed write, with how many bytes got out before it failed.
pub(super) struct WriteError {
    pub(super) written: usize,
    pub(super) error: io::Error,
}

impl WriteError {
    /// Why the worker counts as crashed.
    pub(super) fn reason(&self) -> String {
        format!("write to worker failed: {}", self.error)
    }
}

/// Writes all of `bytes` with `send(MSG_NOSIGNAL)`: a worker that died makes
/// the write fail with `EPIPE` instead of raising `SIGPIPE`, which would kill
/// a server whose binary does not ignore that signal.
pub(super) fn send_all(sock: &UnixStream, bytes: &[u8]) -> Result<(), WriteError> {
    use nix::sys::socket::{MsgFlags, send};
    let mut written = 0;
    while written < bytes.len() {
        match send(sock.as_raw_fd(), &bytes[written..], MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => {
                let error = io::ErrorKind::WriteZero.into();
                return Err(WriteError { written, error });
            }
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                let error = io::Error::from(e);
                return Err(WriteError { written, error });
            }
        }
    }
    Ok(())
}

/// Tells the worker to skip held items whose requests were cancelled. The
/// items stay in the ledger: the worker answers for each, with its result if
/// it had begun it, else with a "skipped" reply (see `ledger.rs`). Returns
/// how many cancellations were sent.
///
/// With `wait = false` (the reader) nothing is sent if the send lock is
/// taken (see the module docs).
pub(super) fn send_cancels(
    ledger: &Ledger,
    writer: &Writer,
    wait: bool,
) -> Result<usize, WriteError> {
    // Looked for first without the send lock: after most results there is
    // nothing to cancel, and the supervisor's writes need not wait on this.
    if ledger.held() == 0 || !ledger.has_cancels() {
        return Ok(0);
    }
    let side = if wait {
        lock_side(writer)
    } else {
        match writer.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(0),
        }
    };
    let ids = ledger.mark_cancels();
    if ids.is_empty() {
        return Ok(0);
    }
    let mut buf = FrameBuf::new();
    let s = buf.begin(kind::CANCEL);
    buf.put_u32(ids.len() as u32);
    for id in &ids {
        buf.put_u64(*id);
    }
    buf.end(s);
    send_all(&side.sock, buf.as_bytes())?;
    Ok(ids.len())
}

/// Whoever reads the worker's results (see `reader.rs`), as senders see it.
pub(super) trait Readers: Send + Sync {
    /// Called by a sender after counting its items: makes sure someone reads.
    fn ensure_reader(&self);
    /// Claims the reading for the item `id` just sent, if nobody reads.
    fn claim(&self, id: u64) -> Option<crate::servlet::plumbing::Claim>;
}

/// One running worker process, as its senders see it.
pub(super) struct Port {
    pub(super) writer: Writer,
    pub(super) ledger: Arc<Ledger>,
    pub(super) read: Arc<dyn Readers>,
    /// Shared memory for large values, if the process has it.
    pub(super) shm: Option<Arc<crate::ipc::shm::SlotPool>>,
}
