//! Direct hand-off: a caller gives an item straight to an idle worker process.
//!
//! The usual path of an item into a process servlet is its queue, from which
//! a worker's supervisor thread takes it and writes it to the worker's
//! socket. When the queue is empty and a worker process holds nothing, that
//! path only costs time for a single call: the supervisor has to be woken to
//! do what the caller could do itself. So for a caller's single call (not for
//! stream items, nor items passed between stages by server threads, which
//! gain from the supervisor coalescing queued items into one frame), the
//! servlet's input sink first looks for such a worker and, if it finds one
//! whose send lock is free, encodes the item and writes it to the worker's
//! socket on the caller's own thread: one thread wake-up less per call.
//!
//! Everything else stays the supervisor's: the item is registered as held by
//! the worker exactly as if the supervisor had sent it (same ids, credit,
//! recycling quota, crash handling), and whenever the direct path is not
//! plainly right (items already queued, a busy worker, batching, a worker
//! credit of one item, crashed items being retried, a retiring worker, a
//! cancelled request, an encoding failure, a worker found dead before
//! anything was written) the item simply takes the queue.

use crate::sync::lock_std;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use crossbeam_channel::Sender;
use serde::Serialize;

use super::connection::{Port, Writer, lock_side, send_all};
use super::ledger::InFlight;
use super::shared::Shared;
use crate::error::Error;
use crate::ipc::frame::ItemFrames;
use crate::servlet::plumbing::{Claim, Push, Pushed, QueueSink, Sink, TicketRef};
use crate::worker::Worker;
use crate::worker::panic;

/// A worker slot's current process, if it takes direct hand-offs.
#[derive(Default)]
pub(super) struct Door {
    port: Mutex<Option<Arc<Port>>>,
    /// The frame buffer of the last hand-off through this door, emptied,
    /// for the next one to reuse (a new one per call cost its allocations
    /// and their growth); `None` while a hand-off uses it, or after a large
    /// item. Boxed: taking and keeping it moves a pointer, not the frames.
    spare: Mutex<Option<Box<ItemFrames>>>,
}

/// Frame buffers of at most this many bytes are kept for the next hand-off
/// (a rare large item does not leave its buffer held by the door).
const KEEP_FRAMES_UP_TO: usize = 64 * 1024;

impl Door {
    /// Publishes a newly started process.
    pub(super) fn open(&self, port: Arc<Port>) {
        *lock_std(&self.port) = Some(port);
    }

    /// Withdraws the process. Once this returns, no hand-off to it is under
    /// way and none can start.
    pub(super) fn close(&self, writer: &Writer) {
        lock_std(&self.port).take();
        lock_side(writer).direct = false;
    }

    fn current(&self) -> Option<Arc<Port>> {
        self.port.lock().ok()?.clone()
    }

    /// Empty frames for a hand-off: the spare ones if free, else new.
    fn frames(&self) -> Box<ItemFrames> {
        let spare = self.spare.try_lock().ok().and_then(|mut s| s.take());
        spare.unwrap_or_else(|| Box::new(ItemFrames::new(false, usize::MAX)))
    }

    /// Keeps `frames` for the next hand-off, emptied (slots they still lease
    /// go back, the link to the shared memory goes), unless they grew large.
    fn keep(&self, mut frames: Box<ItemFrames>) {
        if frames.bytes().len() > KEEP_FRAMES_UP_TO {
            return;
        }
        frames.reset(false, usize::MAX);
        if let Ok(mut s) = self.spare.try_lock() {
            *s = Some(frames);
        }
    }
}

/// The input of a process servlet: direct hand-off when a worker is idle,
/// else the servlet's queue.
pub(crate) struct ProcessSink<W: Worker> {
    /// The servlet's queue (and where failures go).
    pub(super) queue: QueueSink<W::Input, W::Output>,
    /// The worker slots' doors (empty when items are batched: batches are
    /// formed from the queue).
    pub(super) doors: Vec<Arc<Door>>,
    /// The servlet's settings and counters, as its supervisors see them.
    pub(super) shared: Arc<Shared<W>>,
    /// Where the next look for an idle worker starts (spreads hand-offs).
    pub(super) next: AtomicUsize,
    /// Never sends: dropped with this sink, it tells the supervisors that
    /// the input ended even while they do not pull from the queue.
    pub(super) _closing: Sender<()>,
}

impl<W> ProcessSink<W>
where
    W: Worker,
    W::Input: Serialize,
{
    /// Hands the item to an idle worker (with a claim to read its result
    /// for a waiting caller, if nobody reads), or gives it back.
    fn try_direct(
        &self,
        ticket: TicketRef,
        x: W::Input,
        kind: Push,
    ) -> Result<Option<Claim>, (TicketRef, W::Input)> {
        if self.doors.is_empty()
            || !kind.is_single()
            || !self.queue.tx.is_empty()
            || ticket.is_cancelled()
        {
            return Err((ticket, x));
        }
        let n = self.doors.len();
        let first = if n > 1 {
            self.next.fetch_add(1, Relaxed) % n
        } else {
            0
        };
        let mut item = (ticket, x);
        for k in 0..n {
            let door = &self.doors[(first + k) % n];
            let Some(port) = door.current() else {
                continue;
            };
            if port.ledger.held() != 0 {
                continue;
            }
            // A worker whose send side is busy for a moment (its supervisor
            // looks at it) gives the item back: the next idle one may take it.
            let mut frames = door.frames();
            let sent = self.send(&port, &mut frames, item.0, item.1, kind);
            door.keep(frames);
            match sent {
                Err(back) => item = back,
                sent => return sent,
            }
        }
        Err(item)
    }

    /// Sends one item to `port`'s process if it is still idle and its send
    /// lock is free; else gives the item back. The value is encoded first
    /// (into `frames`, empty), without the lock (user code).
    fn send(
        &self,
        port: &Port,
        frames: &mut ItemFrames,
        ticket: TicketRef,
        x: W::Input,
        kind: Push,
    ) -> Result<Option<Claim>, (TicketRef, W::Input)> {
        let codec = self.shared.codec;
        frames.use_shm(port.shm.as_ref());
        // A failure here (including a panicking `Serialize`) is the
        // supervisor's to report, with its usual error: give the item back.
        let encoded = frames.push(|v| {
            panic::catch(false, || codec.encode_into(v, &x)).unwrap_or_else(|_| Err(String::new()))
        });
        if !matches!(encoded, Ok(size) if size <= self.shared.max_frame / 2) {
            return Err((ticket, x));
        }
        let bytes = self
            .shared
            .restart
            .retry_crashed
            .then(|| frames.payload(0).to_vec());
        let mut side = match port.writer.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Err((ticket, x)),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        // Checked again under the lock: the supervisor may have sent items.
        if !side.direct || side.next_id >= side.quota || port.ledger.held() != 0 {
            return Err((ticket, x));
        }
        let id = side.next_id;
        side.next_id += 1;
        frames.set_id(0, id);
        self.shared.stats.items_in.fetch_add(1, Relaxed);
        port.ledger.reserve(1);
        // Sent as it entered the servlet: a hand-off waits in no queue (its
        // encoding counts as transfer time), and a clock reading is saved.
        let entry = match ticket.clock().and_then(|c| c.entered_ns()) {
            Some(ns) => InFlight::sent_at(ticket.clone(), bytes, ns),
            None => InFlight::new(ticket.clone(), bytes),
        };
        port.ledger.add([(id, entry)]);
        // Someone reads before the write goes out: a caller about to wait
        // reads its result itself if nobody reads now; else the thread must.
        let claim = if kind == Push::Waiting {
            port.read.claim(id)
        } else {
            None
        };
        if claim.is_none() {
            port.read.ensure_reader();
        }
        match send_all(&side.sock, frames.bytes()) {
            Ok(()) => {
                drop(side);
                self.shared.stats.handoffs.fetch_add(1, Relaxed);
                Ok(claim)
            }
            Err(e) => {
                // The worker is dead or dying; its supervisor will hear of it
                // from the reader. Meanwhile, no more hand-offs to it.
                side.direct = false;
                if e.written == 0 && !port.ledger.take_back(&[id]).is_empty() {
                    side.next_id -= 1;
                    drop(side);
                    drop(claim);
                    // Nothing reached it: the item takes the queue instead.
                    self.shared.stats.items_in.fetch_sub(1, Relaxed);
                    return Err((ticket, x));
                }
                // Partly written: the worker may have started it; it is
                // settled as one of the crashed worker's items.
                Ok(None)
            }
        }
    }
}

impl<W> Sink<W::Input> for ProcessSink<W>
where
    W: Worker,
    W::Input: Serialize,
{
    fn push(&self, ticket: TicketRef, value: W::Input) {
        self.queue.push(ticket, value);
        self.shared.queued.entered();
    }

    fn push_until(&self, ticket: TicketRef, value: W::Input, deadline: Instant) -> bool {
        let pushed = self.queue.push_until(ticket, value, deadline);
        if pushed {
            self.shared.queued.entered();
        }
        pushed
    }

    /// A caller's single call goes straight to an idle worker if there is one
    /// (see the module docs); everything else takes the queue.
    fn push_call(
        &self,
        ticket: TicketRef,
        value: W::Input,
        deadline: Instant,
        kind: Push,
    ) -> Pushed {
        match self.try_direct(ticket, value, kind) {
            Ok(Some(claim)) => Pushed::Claimed(claim),
            Ok(None) => Pushed::Delivered,
            Err((ticket, value)) => {
                let pushed = self.queue.push_call(ticket, value, deadline, kind);
                if matches!(pushed, Pushed::Delivered) {
                    self.shared.queued.entered();
                }
                pushed
            }
        }
    }

    fn fail(&self, ticket: TicketRef, error: Error) {
        self.queue.fail(ticket, error);
    }
}
