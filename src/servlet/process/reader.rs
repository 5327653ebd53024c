//! Reading a worker process's results: its reader thread, or a caller that
//! reads its own result.
//!
//! Results come back on the worker's socket. Whoever reads a frame settles
//! its entries in the ledger (credit goes back) and acts on the worker's
//! other frames, with the same code for every reader ([`ReadSide::step`]).
//! The results are then decoded and delivered (to the next stage or the
//! waiting callers) *outside* the read lock, each under its own panic
//! guard: the user's `Deserialize`, the next stage's sink, a switch's
//! picker, a user `Clone` or `Drop` never run under an internal lock, and a
//! panic there fails only its item.
//!
//! Normally the worker's reader thread reads. But a caller that handed its
//! single call straight to an idle worker (see `handoff.rs`) and is about to
//! wait for the result can read the result itself: the reply then wakes the
//! caller directly instead of waking the reader thread, which would then wake
//! the caller. A sequential caller thus crosses two threads per call (its own
//! and the worker process's), as a bare socket round trip does. Who reads is
//! the state machine of `handover.rs`. A caller reading delivers only its
//! own result; others it meets go to the reader thread (`outbox`), so a full
//! downstream queue never holds a caller past its deadline. It stops at its
//! result, its deadline, the connection's end, or when its request completes
//! by another route (its claim's interrupter, called by the request).

use crate::sync::lock_std;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde::de::DeserializeOwned;

use super::connection::{Readers, Writer, send_cancels};
use super::delivery::{Delivery, Encoded, Held, Settled, deliver};
use super::handover::{Handover, Woken};
use super::ledger::{InFlight, Ledger};
use crate::error::{CodecDirection, CodecError, Error, WorkerId};
use crate::ipc::Codec;
use crate::ipc::frame::{self, Payload, kind};
use crate::ipc::reader::FrameReader;
use crate::ipc::shm::{ResultHold, ShmError, SlotPool};
use crate::metrics::stage_ns;
use crate::metrics::{ServletStats, StageRecorder, WorkerStatus};
use crate::servlet::plumbing::{Claim, Interrupt, ReadClaim, SinkRef};

/// What a worker's reader reports to its supervisor.
pub(super) enum Event {
    /// Credit came back (sent only while the supervisor waits for it).
    Credit,
    /// The worker asked to be recycled.
    Retiring,
    /// The connection ended: `None` at a clean end of stream, else why.
    Dead(Option<String>),
}

/// How a reader's connection ended: `None` at a clean end of stream, else why.
type Ended = Option<String>;

/// One settled item with its id, or a worker's log events (no id: they go
/// to the reader thread, never to a caller reading its own result).
type Read<Out> = (Option<u64>, Settled<Out>);

/// What one [`ReadSide::step`] read: the settled items, and the frame their
/// results are in ([`Held::InFrame`] ranges: no reference count per result).
struct Batch<Out> {
    items: Vec<Read<Out>>,
    frame: Bytes,
}

impl<Out> Batch<Out> {
    fn new() -> Self {
        Batch {
            items: Vec::new(),
            frame: Bytes::new(),
        }
    }

    /// The items, each result holding its own part of the frame (to keep
    /// beyond the next step), and the frame let go.
    fn take_owned(&mut self) -> impl Iterator<Item = Read<Out>> + '_ {
        let frame = std::mem::take(&mut self.frame);
        self.items
            .drain(..)
            .map(move |(id, s)| (id, s.owned(&frame)))
    }
}

/// Everything needed to read and act on a worker's frames.
pub(super) struct ReadSide {
    pub(super) reader: FrameReader<UnixStream>,
    pub(super) ledger: Arc<Ledger>,
    pub(super) writer: Writer,
    pub(super) stats: Arc<ServletStats>,
    pub(super) status: Arc<WorkerStatus>,
    pub(super) id: WorkerId,
    pub(super) codec: Codec,
    pub(super) events: Sender<Event>,
    /// The connection's shared memory (large values), if it has some.
    pub(super) shm: Option<Arc<SlotPool>>,
    /// The entries a frame's results settle, emptied after each frame (its
    /// allocation reused: one less per frame).
    pub(super) taken: Vec<Option<InFlight>>,
}

/// The bytes of a result: in the frame, or in the slot its item holds
/// (checked: the descriptor must name that slot, at its generation, or
/// one the worker handed over for this item: see `SlotPool::result_view`).
fn result_bytes<'a>(
    shm: Option<&'a SlotPool>,
    id: u64,
    payload: Payload<'a>,
) -> Result<&'a [u8], ShmError> {
    match payload {
        Payload::Inline(b) => Ok(b),
        Payload::Shared(d) => shm.ok_or(ShmError::NoRegion)?.result_view(id, d),
    }
}

impl ReadSide {
    /// Reads one frame (blocking) and acts on it; results settled go to
    /// `out` with their ids. Returns how the connection ended, if it did.
    fn step<Out>(&mut self, batch: &mut Batch<Out>) -> Option<Ended> {
        // The last frame's results were delivered or made owned: its buffer
        // can be reused.
        batch.frame = Bytes::new();
        let out = &mut batch.items;
        match self.reader.read_frame_shared() {
            Ok(None) => Some(None),
            // The worker died with bytes unread on its side: that is an end
            // of the connection too, not a protocol error.
            Err(frame::FrameError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                Some(None)
            }
            Err(e) => Some(Some(format!("bad frame from worker: {e}"))),
            Ok(Some((kind::RESULTS, frame_body))) => {
                let body = &frame_body[..];
                let parsed = match frame::parse_results(body) {
                    Ok(p) => p,
                    Err(e) => return Some(Some(format!("bad frame from worker: {e}"))),
                };
                // Credit goes back before the results are delivered: a caller
                // woken by its result and calling again at once finds the
                // worker idle (and may hand it the next item).
                let mut taken = std::mem::take(&mut self.taken);
                let wake = self
                    .ledger
                    .settle_into(parsed.iter().map(|(id, ..)| *id), &mut taken);
                if wake {
                    let _ = self.events.send(Event::Credit);
                }
                let now_ns = stage_ns(Instant::now());
                // The histograms' shards of this thread, looked up once per
                // frame rather than once per result.
                let rec = self.stats.stage_recorder();
                let mut done = 0u64;
                let shm = self.shm.as_deref();
                for (entry, (id, st, compute_ns, payload)) in taken.drain(..).zip(parsed) {
                    let Some(entry) = entry else {
                        if let Some(pool) = shm {
                            // A slot handed over with the result is the
                            // item's too: released with it.
                            let _ = result_bytes(shm, id, payload);
                            pool.release(id);
                        }
                        continue;
                    };
                    let d = if st == frame::STATUS_SKIPPED {
                        self.stats.skipped.fetch_add(1, Relaxed);
                        Settled::Ready(Delivery::Release(entry.ticket))
                    } else {
                        done += 1;
                        time_stages(&rec, &entry, now_ns, compute_ns);
                        // Decoded where it is delivered, outside the read
                        // lock (user `Deserialize`): bytes in the frame stay
                        // in the frame's buffer (shared, not copied); a value
                        // in shared memory stays in its slot, which the item
                        // keeps until then.
                        let held = match payload {
                            Payload::Inline(b) => {
                                let at = b.as_ptr() as usize - body.as_ptr() as usize;
                                Ok(Held::InFrame(at..at + b.len()))
                            }
                            Payload::Shared(d) => match (result_bytes(shm, id, payload), &self.shm)
                            {
                                (Ok(_), Some(pool)) => {
                                    Ok(Held::Slot(ResultHold::new(pool.clone(), id, d)))
                                }
                                (Err(e), _) => Err(e),
                                (Ok(_), None) => Err(ShmError::NoRegion),
                            },
                        };
                        match held {
                            Ok(bytes) => {
                                Settled::Result(entry.ticket, Encoded { status: st, bytes })
                            }
                            Err(e) => {
                                self.stats.items_err.fetch_add(1, Relaxed);
                                Settled::Ready(Delivery::Failure(
                                    entry.ticket,
                                    Error::Codec(CodecError {
                                        worker: self.id.clone(),
                                        direction: CodecDirection::DecodeOutput,
                                        message: e.to_string(),
                                    }),
                                ))
                            }
                        }
                    };
                    // The item's slot is free for another, unless its
                    // result is still in it (then it goes when decoded).
                    if let Some(pool) = shm
                        && !matches!(&d, Settled::Result(_, e) if matches!(e.bytes, Held::Slot(_)))
                    {
                        pool.release(id);
                    }
                    out.push((Some(id), d));
                }
                self.taken = taken;
                batch.frame = frame_body;
                self.status.items.fetch_add(done, Relaxed);
                match send_cancels(&self.ledger, &self.writer, false) {
                    Ok(_) => None,
                    Err(e) => Some(Some(e.reason())),
                }
            }
            Ok(Some((kind::TIMING, body))) => {
                let mut c = frame::Cursor::new(&body);
                match (c.u64(), c.u32()) {
                    (Ok(busy), Ok(items)) if items > 0 && c.is_empty() => {
                        self.ledger.record_work(Duration::from_nanos(busy), items);
                        None
                    }
                    _ => Some(Some("bad frame from worker: malformed TIMING".into())),
                }
            }
            Ok(Some((kind::RETIRING, _))) => {
                let _ = self.events.send(Event::Retiring);
                None
            }
            // The worker process's `tracing` events (`worker_log.rs`).
            Ok(Some((kind::LOG, body))) => {
                batch
                    .items
                    .push((None, Settled::Ready(Delivery::Log(body.to_vec()))));
                None
            }
            Ok(Some((k, _))) => Some(Some(format!("unexpected frame kind {k} from worker"))),
        }
    }
}

/// The reading of one worker process's results, shared by its reader thread
/// and the callers that claim it.
pub(super) struct ReadPort<Out> {
    side: Mutex<ReadSide>,
    /// Set by a caller that met the end of the connection; the thread reports it.
    ended: Mutex<Option<Ended>>,
    hand: Handover,
    /// Results a caller read for others, for the thread to deliver.
    outbox: Mutex<Vec<Settled<Out>>>,
    /// The list a reading caller collects its step's items in, empty, kept
    /// for the next caller (one allocation less per call).
    caller_items: Mutex<Vec<Read<Out>>>,
    out: SinkRef<Out>,
    who: WorkerId,
    codec: Codec,
    stats: Arc<ServletStats>,
    /// Wakes the parked thread.
    wake: EventFd,
    /// Wakes a caller reading for its item when its request completed by
    /// another route.
    caller: Arc<CallerWake>,
    /// Calls `caller`'s interrupt: built once, handed to each claim's
    /// request (an allocation less per call).
    interrupt: Interrupt,
    /// The socket, for waiting on it without the read lock.
    sock: UnixStream,
    ledger: Arc<Ledger>,
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
    pub(super) fn new(side: ReadSide, out: SinkRef<Out>) -> io::Result<Arc<Self>> {
        let sock = side.reader.get_ref().try_clone()?;
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let caller = Arc::new(CallerWake {
            fd: EventFd::from_flags(flags)?,
            polling: AtomicBool::new(false),
        });
        let wake = caller.clone();
        let interrupt: Interrupt = Arc::new(move || wake.interrupt());
        Ok(Arc::new(ReadPort {
            ledger: side.ledger.clone(),
            who: side.id.clone(),
            codec: side.codec,
            stats: side.stats.clone(),
            side: Mutex::new(side),
            ended: Mutex::new(None),
            hand: Handover::default(),
            outbox: Mutex::new(Vec::new()),
            caller_items: Mutex::new(Vec::new()),
            out,
            wake: EventFd::from_flags(flags)?,
            caller,
            interrupt,
            sock,
        }))
    }

    fn lock_side(&self) -> MutexGuard<'_, ReadSide> {
        lock_std(&self.side)
    }

    fn has_ended(&self) -> bool {
        self.ended.lock().map_or(true, |e| e.is_some())
    }

    fn idle(&self, side: &ReadSide) -> bool {
        self.ledger.held() == 0 && side.reader.buffered() == 0 && !input_pending(&self.sock)
    }

    /// Delivers one settled item, decoding a result first (`frame`: the
    /// frame of a result held [`Held::InFrame`]).
    fn deliver(&self, s: Settled<Out>, frame: &[u8]) {
        let d = match s {
            Settled::Result(ticket, e) => match e.decode(&self.who, self.codec, &self.stats, frame)
            {
                Ok(v) => Delivery::Value(ticket, v),
                Err(e) => Delivery::Failure(ticket, e),
            },
            Settled::Ready(d) => d,
        };
        deliver(&self.out, &self.who, d);
    }

    fn deliver_all(&self, batch: &mut Batch<Out>) {
        for (_, s) in batch.items.drain(..) {
            self.deliver(s, &batch.frame);
        }
        batch.frame = Bytes::new();
    }

    /// Delivers what callers read for others.
    fn deliver_outbox(&self) {
        let handed: Vec<Settled<Out>> = std::mem::take(&mut *lock_std(&self.outbox));
        for s in handed {
            self.deliver(s, &[]);
        }
    }

    /// The reader thread's life: read while someone's items are out, park
    /// while the worker is idle. Returns how the connection ended.
    pub(super) fn run_thread(&self) -> Ended {
        enum Next {
            Read,
            Park,
            End(Ended),
        }
        let mut batch = Batch::new();
        loop {
            self.deliver_outbox();
            let next = {
                let mut side = self.lock_side();
                // Only a caller holding the read lock sets `ended`: it can
                // have changed only while this thread was parked.
                if let Some(end) = lock_std(&self.ended).take() {
                    Next::End(end)
                } else if self.idle(&side) && self.hand.park_if(|| self.ledger.held() == 0) {
                    Next::Park
                } else {
                    side.step(&mut batch).map_or(Next::Read, Next::End)
                }
            };
            self.deliver_all(&mut batch);
            match next {
                Next::Read => {}
                Next::Park => self.park(),
                Next::End(end) => {
                    self.deliver_outbox();
                    return end;
                }
            }
        }
    }

    /// Waits, without reading, until the thread is to read again: woken by a
    /// sender, given the reading back by a caller, or at the end of the
    /// connection while nobody reads. Delivers what callers hand it meanwhile.
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
                    self.hand.force_thread();
                    return;
                }
            }
            let _ = self.wake.read();
            self.deliver_outbox();
            // Anything reported on the socket is its end (`POLLRDHUP`, which
            // nix does not name, `POLLHUP`, `POLLERR`).
            let hangup = watch_end && fds[1].revents() != Some(PollFlags::empty());
            match self.hand.woken(hangup) {
                Woken::Read => return,
                Woken::Stay => {}
                Woken::StayDeaf => watch_end = false,
            }
        }
    }

    /// Called by a sender after adding its items to the count: makes sure
    /// someone reads.
    fn ensure_reader_now(&self) {
        if self.hand.ensure_reader() {
            let _ = self.wake.write(1);
        }
    }

    /// Gives the reading back (see `handover.rs`). Frames the worker sends
    /// unasked (recycling) come in the same write as results, so they were
    /// read with them (or are in the socket, which a later reader finds).
    fn release(&self) {
        let side = self.lock_side();
        let ended = self.has_ended();
        let wake = self
            .hand
            .release(|| !ended && side.reader.buffered() == 0 && self.ledger.held() == 0);
        drop(side);
        if wake {
            let _ = self.wake.write(1);
        }
    }

    /// Sorts what a caller read: its own result to `mine`, the others to
    /// the thread.
    fn sort(&self, batch: &mut Batch<Out>, own: u64, mine: &mut Option<Settled<Out>>) {
        if batch.items.is_empty() {
            return;
        }
        let mut others = Vec::new();
        for (id, d) in batch.take_owned() {
            if id == Some(own) {
                *mine = Some(d);
            } else {
                others.push(d);
            }
        }
        if !others.is_empty() {
            lock_std(&self.outbox).extend(others);
            let _ = self.wake.write(1);
        }
    }
}

impl<Out: DeserializeOwned + Send + 'static> Readers for Arc<ReadPort<Out>> {
    fn ensure_reader(&self) {
        self.ensure_reader_now();
    }

    fn claim(&self, id: u64) -> Option<Claim> {
        self.hand.claim().then(|| {
            Box::new(CallerRead {
                port: self.clone(),
                id,
                released: AtomicBool::new(false),
            }) as Claim
        })
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
    /// The reading was given back (once the caller's reading ended, before
    /// it delivers its own result; else when the claim is dropped).
    released: AtomicBool,
}

impl<Out: DeserializeOwned + Send + 'static> CallerRead<Out> {
    fn release_once(&self) {
        if !self.released.swap(true, SeqCst) {
            self.port.release();
        }
    }
}

impl<Out: DeserializeOwned + Send + 'static> ReadClaim for CallerRead<Out> {
    fn interrupter(&self) -> Interrupt {
        self.port.interrupt.clone()
    }

    fn read_until(&self, deadline: Instant, done: &dyn Fn() -> bool) {
        let port = &*self.port;
        if self.released.load(SeqCst) {
            // Read once already: the reading is no longer this caller's.
            return;
        }
        let mut batch = Batch {
            items: std::mem::take(&mut *lock_std(&port.caller_items)),
            frame: Bytes::new(),
        };
        let mut mine = None;
        {
            let mut side = port.lock_side();
            // Only a holder of the read lock sets `ended`: looked at once
            // here, then set by this loop itself (which then stops).
            if port.has_ended() {
                return;
            }
            loop {
                if side.reader.buffered() == 0 {
                    // Done once the item's result is in and what was read
                    // with it (the worker's timing, say) is dealt with.
                    if mine.is_some() || !port.ledger.holds(self.id) || done() {
                        break;
                    }
                    // The result may be in already (the worker ran while
                    // this thread was writing): look without waiting first.
                    if matches!(side.reader.fill_nowait(), Ok(n) if n > 0) {
                        continue;
                    }
                    if !wait_readable(port, deadline, done) {
                        break;
                    }
                }
                let end = side.step(&mut batch);
                port.sort(&mut batch, self.id, &mut mine);
                if let Some(end) = end {
                    *lock_std(&port.ended) = Some(end);
                    break;
                }
            }
        }
        // Every item read was sorted out of the list: it is empty.
        if batch.items.is_empty() {
            *lock_std(&port.caller_items) = std::mem::take(&mut batch.items);
        }
        // Its own result, delivered (and decoded: user `Deserialize`)
        // outside the read lock, and after giving the reading back, so that
        // other callers' results are read meanwhile.
        self.release_once();
        if let Some(s) = mine {
            port.deliver(s, &[]);
        }
    }
}

/// Waits until the worker's socket is readable; false at the deadline or
/// once the caller's request is done.
fn wait_readable<Out>(port: &ReadPort<Out>, deadline: Instant, done: &dyn Fn() -> bool) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Whole milliseconds, rounded up, so the wait ends at or after the
        // deadline (the caller's timeout comes from the server's timer
        // either way).
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let wake = &port.caller;
        wake.polling.store(true, SeqCst);
        fence(SeqCst);
        if done() {
            wake.polling.store(false, SeqCst);
            return false;
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
            // Interrupted (perhaps for an earlier caller's request, which is
            // harmless): look at the request again.
            let _ = wake.fd.read();
            if done() {
                return false;
            }
        }
        match polled {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) if fds[0].revents().is_some_and(|r| !r.is_empty()) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

impl<Out: DeserializeOwned + Send + 'static> Drop for CallerRead<Out> {
    fn drop(&mut self) {
        self.release_once();
    }
}

/// Records a settled item's stage latency (before it is delivered: the next
/// stage resets the clock). `now_ns` as `stage_ns` gives it: integer
/// differences, no clock reading, per item.
fn time_stages(rec: &StageRecorder<'_>, entry: &InFlight, now_ns: u64, compute_ns: u64) {
    let entered = entry.ticket.clock().and_then(|c| c.entered_ns());
    rec.record_ns(
        entered.map(|e| entry.sent_ns.saturating_sub(e)),
        now_ns
            .saturating_sub(entry.sent_ns)
            .saturating_sub(compute_ns),
        compute_ns,
        entered.map(|e| now_ns.saturating_sub(e)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result's descriptor must name the slot its item holds, at its
    /// generation: another item's slot, a released slot or a connection
    /// without shared memory is a typed error, never someone else's bytes.
    #[test]
    fn a_result_descriptor_is_checked_against_its_items_slot() {
        let pool = SlotPool::create(2, 4096, 16).unwrap();
        let (a, b) = (pool.try_take().unwrap(), pool.try_take().unwrap());
        assert!(pool.region().write(a.slot(), 0, b"result of 1"));
        let (da, db) = (a.slot_ref(11), b.slot_ref(0));
        pool.bind(1, a);
        pool.bind(2, b);
        let p = Some(&*pool);
        assert_eq!(
            result_bytes(p, 1, Payload::Shared(da)).unwrap(),
            b"result of 1"
        );
        // Item 2's answer naming item 1's slot.
        assert!(matches!(
            result_bytes(p, 2, Payload::Shared(da)),
            Err(ShmError::Stale { .. })
        ));
        assert!(matches!(
            result_bytes(None, 1, Payload::Shared(da)),
            Err(ShmError::NoRegion)
        ));
        pool.release(1);
        assert!(matches!(
            result_bytes(p, 1, Payload::Shared(da)),
            Err(ShmError::Stale { .. })
        ));
        assert_eq!(result_bytes(p, 2, Payload::Inline(b"x")).unwrap(), b"x");
        assert_eq!(result_bytes(p, 2, Payload::Shared(db)).unwrap(), b"");
        pool.release(2);
        assert_eq!(pool.in_use(), 0);
    }
}
