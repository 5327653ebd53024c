//! Reading a worker process's results: its reader thread, or a caller that
//! reads its own result.
//!
//! Results come back on the worker's socket. Whoever reads them delivers
//! every result it finds (to the next stage, or to the waiting callers),
//! gives the worker's credit back and acts on the worker's other frames; the
//! code is the same for every reader ([`ReadSide::step`]).
//!
//! Normally the worker's reader thread reads. But a caller that handed its
//! single call straight to an idle worker (see `handoff.rs`) and is about to
//! wait for the result can read the result itself: the reply then wakes the
//! caller directly instead of waking the reader thread, which would then wake
//! the caller. A sequential caller thus crosses two threads per call (its own
//! and the worker process's), as a bare socket round trip does.
//!
//! Who reads is decided by one small state ([`Holder`]): the reader thread
//! *parks* whenever the worker holds no items and nothing is left to read,
//! watching only for the connection's end (so a worker that dies while idle
//! is still noticed at once) and for a wake-up. A caller may then *claim*
//! the reading for its own item. Anyone who sends items while nobody reads
//! (the supervisor, or a caller that will not read) wakes the thread. A
//! caller gives the reading back when its result is in, at its deadline, or
//! at the end of the connection: to nobody (parked) if the worker is idle
//! again, else to the thread.
//!
//! The rule that makes this safe: the thread parks, and a caller leaves the
//! reading to nobody, only after seeing the worker hold no items, under the
//! holder's lock; senders add their items to the count before looking at the
//! holder under the same lock. So whenever the worker holds an item, someone
//! reads or is about to.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde::de::DeserializeOwned;

use super::supervisor::{Credit, Event, InFlight, InFlightMap, Writer, cancel_held, lock};
use crate::error::{CodecDirection, CodecError, Error, WorkerId};
use crate::ipc::Codec;
use crate::ipc::frame::{self, FrameReader, kind};
use crate::metrics::{ServletStats, WorkerStatus};
use crate::servlet::plumbing::{Claim, Interrupt, ReadClaim, SinkRef, TicketRef};
use crate::worker::{WorkerError, panic};

/// Everything needed to read and act on a worker's frames.
pub(super) struct ReadSide<Out> {
    pub(super) reader: FrameReader<UnixStream>,
    pub(super) inflight: InFlightMap,
    pub(super) credit: Arc<Credit>,
    pub(super) writer: Writer,
    pub(super) out: SinkRef<Out>,
    pub(super) stats: Arc<ServletStats>,
    pub(super) status: Arc<WorkerStatus>,
    pub(super) id: WorkerId,
    pub(super) codec: Codec,
    pub(super) events: Sender<Event>,
}

/// How a reader's connection ended: `None` at a clean end of stream, else why.
type Ended = Option<String>;

impl<Out: DeserializeOwned + Send + 'static> ReadSide<Out> {
    /// Reads one frame (blocking) and acts on it. Returns how the connection
    /// ended, if it did.
    fn step(&mut self) -> Option<Ended> {
        match self.reader.read_frame() {
            Ok(None) => Some(None),
            // The worker died with bytes unread on its side: that is an end
            // of the connection too, not a protocol error.
            Err(frame::FrameError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                Some(None)
            }
            Err(e) => Some(Some(format!("bad frame from worker: {e}"))),
            Ok(Some((kind::RESULTS, body))) => {
                let parsed = match frame::parse_results(body) {
                    Ok(p) => p,
                    Err(e) => return Some(Some(format!("bad frame from worker: {e}"))),
                };
                let taken: Vec<(Option<InFlight>, u8, &[u8])> = {
                    let mut map = lock(&self.inflight);
                    parsed
                        .into_iter()
                        .map(|(id, st, payload)| (map.remove(&id), st, payload))
                        .collect()
                };
                // Credit goes back before the results are delivered: a caller
                // woken by its result and calling again at once finds the
                // worker idle (and may hand it the next item).
                let n = taken.iter().filter(|(e, _, _)| e.is_some()).count();
                self.credit.count.fetch_sub(n, SeqCst);
                if self.credit.waiting.load(SeqCst) {
                    let _ = self.events.send(Event::Credit);
                }
                for (entry, st, payload) in taken {
                    let Some(entry) = entry else { continue };
                    deliver(
                        &self.out,
                        &self.stats,
                        &self.id,
                        self.codec,
                        entry.ticket,
                        st,
                        payload,
                    );
                }
                self.status.items.fetch_add(n as u64, Relaxed);
                let cancelled = match cancel_held(&self.inflight, &self.stats, &self.writer, false)
                {
                    Ok(c) => c,
                    Err(e) => return Some(Some(e.reason())),
                };
                if cancelled > 0 {
                    self.credit.count.fetch_sub(cancelled, SeqCst);
                    if self.credit.waiting.load(SeqCst) {
                        let _ = self.events.send(Event::Credit);
                    }
                }
                None
            }
            Ok(Some((kind::TIMING, body))) => {
                let mut c = frame::Cursor::new(body);
                match (c.u64(), c.u32()) {
                    (Ok(busy), Ok(items)) if items > 0 && c.is_empty() => {
                        self.credit
                            .observe(Duration::from_nanos(busy / u64::from(items)));
                        None
                    }
                    _ => Some(Some("bad frame from worker: malformed TIMING".into())),
                }
            }
            Ok(Some((kind::RETIRING, _))) => {
                let _ = self.events.send(Event::Retiring);
                None
            }
            // The worker process's `tracing` events (h2-life: worker_log.rs).
            Ok(Some((kind::LOG, body))) => {
                super::worker_log::emit(&self.id, body);
                None
            }
            Ok(Some((k, _))) => Some(Some(format!("unexpected frame kind {k} from worker"))),
        }
    }
}

/// Who reads the worker's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// The reader thread reads (or is about to).
    Thread,
    /// Nobody: the worker holds nothing; the thread watches for the end of
    /// the connection and for a wake-up.
    Parked,
    /// A caller reads for its own item.
    Caller,
}

/// The reading of one worker process's results, shared by its reader thread
/// and the callers that claim it.
pub(super) struct ReadPort<Out> {
    side: Mutex<ReadSide<Out>>,
    /// Set by a caller that met the end of the connection; the thread reports it.
    ended: Mutex<Option<Ended>>,
    holder: Mutex<Holder>,
    /// The thread saw the connection end while a caller read: the caller
    /// must give the reading back to the thread (changed under `holder`).
    hung_up: AtomicBool,
    /// Wakes the parked thread.
    wake: EventFd,
    /// Wakes a caller reading for its item when its request completed by
    /// another route.
    caller: Arc<CallerWake>,
    /// The socket, for waiting on it without the read lock.
    sock: UnixStream,
    credit: Arc<Credit>,
    inflight: InFlightMap,
}

/// `POLLRDHUP`: the peer closed its end (or we shut ours). Asking for it
/// alone, a parked reader is woken by the end of the connection but not by
/// data (poll wakes a waiter only for the events it asked for).
fn rdhup() -> PollFlags {
    PollFlags::from_bits_retain(nix::libc::POLLRDHUP)
}

/// True if the socket has bytes to read (or has ended) right now.
fn input_pending(sock: &UnixStream) -> bool {
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

impl<Out: DeserializeOwned + Send + 'static> ReadPort<Out> {
    pub(super) fn new(side: ReadSide<Out>) -> io::Result<Arc<Self>> {
        let sock = side.reader.get_ref().try_clone()?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Arc::new(ReadPort {
            credit: side.credit.clone(),
            inflight: side.inflight.clone(),
            side: Mutex::new(side),
            ended: Mutex::new(None),
            holder: Mutex::new(Holder::Thread),
            hung_up: AtomicBool::new(false),
            wake,
            caller: Arc::new(CallerWake {
                fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
                polling: AtomicBool::new(false),
            }),
            sock,
        }))
    }

    fn lock_side(&self) -> MutexGuard<'_, ReadSide<Out>> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_holder(&self) -> MutexGuard<'_, Holder> {
        self.holder.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle(&self, side: &ReadSide<Out>) -> bool {
        self.credit.count.load(SeqCst) == 0
            && side.reader.buffered() == 0
            && !input_pending(&self.sock)
    }

    /// The reader thread's life: read while someone's items are out, park
    /// while the worker is idle. Returns how the connection ended.
    pub(super) fn run_thread(&self) -> Ended {
        loop {
            {
                let mut side = self.lock_side();
                // Only a caller holding the read lock sets `ended`: it can
                // have changed only while this thread was parked.
                if let Some(end) = self.ended.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return end;
                }
                loop {
                    if self.idle(&side) {
                        let mut h = self.lock_holder();
                        if self.credit.count.load(SeqCst) == 0 {
                            *h = Holder::Parked;
                            break;
                        }
                    }
                    if let Some(end) = side.step() {
                        return end;
                    }
                }
            }
            self.park();
        }
    }

    /// Waits, without reading, until the thread is to read again: woken by a
    /// sender, given the reading back by a caller, or at the end of the
    /// connection while nobody reads.
    fn park(&self) {
        let mut watch_end = true;
        loop {
            let mut fds = [
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sock.as_fd(), rdhup()),
            ];
            let n = if watch_end { 2 } else { 1 };
            match poll(&mut fds[..n], PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // Cannot wait: read instead (a blocking read notices
                    // the end of the connection too).
                    tracing::error!(error = %e, "reader cannot poll; reading instead");
                    *self.lock_holder() = Holder::Thread;
                    return;
                }
            }
            let _ = self.wake.read();
            // Anything reported on the socket is its end (`POLLRDHUP`, which
            // nix does not name, `POLLHUP`, `POLLERR`).
            let hangup = watch_end && fds[1].revents() != Some(PollFlags::empty());
            let mut h = self.lock_holder();
            match *h {
                Holder::Thread => return,
                Holder::Parked if hangup => {
                    *h = Holder::Thread;
                    return;
                }
                Holder::Parked => {}
                // The caller reading gives the reading back when it is done,
                // to the thread since the connection ended (it may have read
                // its result before the end, and find the worker idle).
                Holder::Caller if hangup => {
                    self.hung_up.store(true, Relaxed);
                    watch_end = false;
                }
                Holder::Caller => {}
            }
        }
    }

    /// Called by a sender after adding its items to the count: makes sure
    /// someone reads.
    pub(super) fn ensure_reader(&self) {
        let mut h = self.lock_holder();
        if *h == Holder::Parked {
            *h = Holder::Thread;
            let _ = self.wake.write(1);
        }
    }

    /// Claims the reading for the item `id` just sent, if nobody reads (the
    /// caller then calls [`ensure_reader`](Self::ensure_reader) itself).
    pub(super) fn claim(self: &Arc<Self>, id: u64) -> Option<Claim> {
        let mut h = self.lock_holder();
        match *h {
            Holder::Parked => {
                *h = Holder::Caller;
                Some(Box::new(CallerRead {
                    port: self.clone(),
                    id,
                }))
            }
            Holder::Thread | Holder::Caller => None,
        }
    }

    /// Gives the reading back (see the module docs). Frames the worker sends
    /// unasked (recycling) come in the same write as results, so they were
    /// read with them (or are in the socket, which a later reader finds).
    fn release(&self) {
        let side = self.lock_side();
        let ended = self.ended.lock().map(|e| e.is_some()).unwrap_or(true);
        let mut h = self.lock_holder();
        if !ended
            && !self.hung_up.load(Relaxed)
            && side.reader.buffered() == 0
            && self.credit.count.load(SeqCst) == 0
        {
            *h = Holder::Parked;
        } else {
            *h = Holder::Thread;
            let _ = self.wake.write(1);
        }
    }
}

/// How a caller reading for its own item is woken when its request
/// completes by another route: an eventfd, written only while the caller
/// waits in `poll` (so a call whose own result completes it costs no system
/// call). The caller sets `polling` before its last look at its request, the
/// completer sees its request complete before it looks at `polling`, each
/// with a full fence in between: one of them sees the other.
struct CallerWake {
    fd: EventFd,
    polling: AtomicBool,
}

impl CallerWake {
    fn interrupt(&self) {
        fence(SeqCst);
        if self.polling.load(SeqCst) {
            let _ = self.fd.write(1);
        }
    }
}

/// A caller's claim on the reading of one worker (see the module docs).
struct CallerRead<Out: DeserializeOwned + Send + 'static> {
    port: Arc<ReadPort<Out>>,
    id: u64,
}

impl<Out: DeserializeOwned + Send + 'static> ReadClaim for CallerRead<Out> {
    fn interrupter(&self) -> Interrupt {
        let wake = self.port.caller.clone();
        Arc::new(move || wake.interrupt())
    }

    fn read_until(&self, deadline: Instant, done: &dyn Fn() -> bool) {
        let port = &*self.port;
        let mut side = port.lock_side();
        // Only a holder of the read lock sets `ended`: looked at once here,
        // then set by this loop itself (which then returns).
        if port.ended.lock().map_or(true, |e| e.is_some()) {
            return;
        }
        loop {
            if side.reader.buffered() == 0 {
                // Done once the item's result is in and what was read with
                // it (the worker's timing, say) is dealt with.
                if !lock(&port.inflight).contains_key(&self.id) || done() {
                    return;
                }
                // The result may be in already (the worker ran while this
                // thread was writing): look without waiting first.
                if matches!(side.reader.fill_nowait(), Ok(n) if n > 0) {
                    continue;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                // Whole milliseconds, rounded up, so the wait ends at or
                // after the deadline (the caller's timeout comes from the
                // server's timer either way).
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                let wake = &port.caller;
                wake.polling.store(true, SeqCst);
                fence(SeqCst);
                if done() {
                    wake.polling.store(false, SeqCst);
                    return;
                }
                let mut fds = [
                    PollFd::new(port.sock.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake.fd.as_fd(), PollFlags::POLLIN),
                ];
                let polled = poll(
                    &mut fds,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                );
                wake.polling.store(false, SeqCst);
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    // Interrupted (perhaps for an earlier caller's request,
                    // which is harmless): look at the request again.
                    let _ = wake.fd.read();
                    continue;
                }
                match polled {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
            }
            if let Some(end) = side.step() {
                *port.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
                return;
            }
        }
    }
}

impl<Out: DeserializeOwned + Send + 'static> Drop for CallerRead<Out> {
    fn drop(&mut self) {
        self.port.release();
    }
}

/// Type-erased access to a worker's reading, for the hand-off path.
pub(super) trait Readers: Send + Sync {
    fn ensure_reader(&self);
    fn claim(&self, id: u64) -> Option<Claim>;
}

impl<Out: DeserializeOwned + Send + 'static> Readers for Arc<ReadPort<Out>> {
    fn ensure_reader(&self) {
        ReadPort::ensure_reader(self);
    }
    fn claim(&self, id: u64) -> Option<Claim> {
        ReadPort::claim(self, id)
    }
}

fn deliver<Out: DeserializeOwned + Send + 'static>(
    out: &SinkRef<Out>,
    stats: &ServletStats,
    id: &WorkerId,
    value_codec: Codec,
    ticket: TicketRef,
    status: u8,
    payload: &[u8],
) {
    let codec = |direction, message: String| {
        Error::Codec(CodecError {
            worker: id.clone(),
            direction,
            message,
        })
    };
    let result = match status {
        // A panicking `Deserialize` fails its item, not this thread.
        frame::STATUS_OK => panic::catch(|| value_codec.decode::<Out>(payload))
            .unwrap_or_else(|p| Err(format!("panic while deserializing: {}", p.message())))
            .map_err(|e| codec(CodecDirection::DecodeOutput, e)),
        frame::STATUS_WORKER_ERROR => Err(match postcard::from_bytes::<WorkerError>(payload) {
            Ok(error) => Error::Worker {
                worker: id.clone(),
                error,
            },
            Err(e) => codec(
                CodecDirection::DecodeOutput,
                format!("undecodable worker error: {e}"),
            ),
        }),
        _ => {
            let (dir, msg) = payload.split_first().map_or((3, &[][..]), |(d, m)| (*d, m));
            let direction = match dir {
                0 => CodecDirection::EncodeInput,
                1 => CodecDirection::DecodeInput,
                2 => CodecDirection::EncodeOutput,
                _ => CodecDirection::DecodeOutput,
            };
            Err(codec(direction, String::from_utf8_lossy(msg).into_owned()))
        }
    };
    match result {
        Ok(y) => {
            stats.items_ok.fetch_add(1, Relaxed);
            out.push(ticket, y);
        }
        Err(e) => {
            stats.items_err.fetch_add(1, Relaxed);
            out.fail(ticket, e);
        }
    }
}
