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

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use crossbeam_channel::Sender;
use serde::Serialize;

use super::reader::Readers;
use super::supervisor::{Credit, InFlight, InFlightMap, Shared, Writer, lock, lock_side, send_all};
use crate::error::Error;
use crate::ipc::frame::kind;
use crate::servlet::plumbing::{Claim, Push, Pushed, Sink, SinkRef, TicketRef};
use crate::worker::Worker;
use crate::worker::panic;

/// One running worker process, as seen by callers.
pub(super) struct Port {
    pub(super) writer: Writer,
    pub(super) inflight: InFlightMap,
    pub(super) credit: Arc<Credit>,
    pub(super) read: Arc<dyn Readers>,
}

/// A worker slot's current process, if it takes direct hand-offs.
#[derive(Default)]
pub(super) struct Door {
    port: Mutex<Option<Arc<Port>>>,
}

impl Door {
    /// Publishes a newly started process.
    pub(super) fn open(&self, port: Arc<Port>) {
        *self.port.lock().unwrap_or_else(|p| p.into_inner()) = Some(port);
    }

    /// Withdraws the process. Once this returns, no hand-off to it is under
    /// way and none can start.
    pub(super) fn close(&self, writer: &Writer) {
        self.port.lock().unwrap_or_else(|p| p.into_inner()).take();
        lock_side(writer).direct = false;
    }

    fn current(&self) -> Option<Arc<Port>> {
        self.port.lock().ok()?.clone()
    }
}

/// The input of a process servlet: direct hand-off when a worker is idle,
/// else the servlet's queue.
pub(crate) struct ProcessSink<W: Worker> {
    pub(super) tx: Sender<(TicketRef, W::Input)>,
    pub(super) fail_to: SinkRef<W::Output>,
    /// The worker slots' doors (empty when items are batched: batches are
    /// formed from the queue).
    pub(super) doors: Vec<Arc<Door>>,
    /// The servlet's settings and counters, as its supervisors see them.
    pub(super) shared: Arc<Shared<W>>,
    /// Where the next look for an idle worker starts (spreads hand-offs).
    pub(super) next: AtomicUsize,
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
            || !self.tx.is_empty()
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
        for k in 0..n {
            let Some(port) = self.doors[(first + k) % n].current() else {
                continue;
            };
            if port.credit.count.load(SeqCst) != 0 {
                continue;
            }
            return self.send(&port, ticket, x, kind);
        }
        Err((ticket, x))
    }

    /// Sends one item to `port`'s process if it is still idle and its send
    /// lock is free; else gives the item back.
    fn send(
        &self,
        port: &Port,
        ticket: TicketRef,
        x: W::Input,
        kind: Push,
    ) -> Result<Option<Claim>, (TicketRef, W::Input)> {
        let mut guard = match port.writer.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Err((ticket, x)),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        // Checked again under the lock: the supervisor may have sent items.
        if !guard.direct || guard.next_id >= guard.quota || port.credit.count.load(SeqCst) != 0 {
            return Err((ticket, x));
        }
        let id = guard.next_id;
        let side = &mut *guard;
        let buf = &mut side.buf;
        buf.clear();
        let start = buf.begin(kind::ITEMS);
        buf.put_u8(0);
        buf.put_u32(1);
        let mark = buf.len();
        buf.put_u64(id);
        let codec = self.shared.codec;
        // A failure here (including a panicking `Serialize`) is the
        // supervisor's to report, with its usual error: give the item back.
        let encoded = buf.put_payload(|v| {
            panic::catch(|| codec.encode_into(v, &x)).unwrap_or_else(|_| Err(String::new()))
        });
        if encoded.is_err() || buf.len() - mark > self.shared.max_frame / 2 {
            return Err((ticket, x));
        }
        buf.end(start);
        side.next_id += 1;
        let bytes = self
            .shared
            .restart
            .retry_crashed
            .then(|| buf.as_bytes()[mark + 12..].to_vec());
        self.shared.stats.items_in.fetch_add(1, Relaxed);
        lock(&port.inflight).insert(
            id,
            InFlight {
                ticket: ticket.clone(),
                crashes: 0,
                bytes,
            },
        );
        port.credit.count.fetch_add(1, SeqCst);
        match send_all(&side.sock, buf.as_bytes()) {
            Ok(()) => {
                drop(guard);
                self.shared.stats.handoffs.fetch_add(1, Relaxed);
                // A caller about to wait reads its result itself if nobody
                // reads now; else someone must.
                if kind == Push::Waiting
                    && let Some(claim) = port.read.claim(id)
                {
                    return Ok(Some(claim));
                }
                port.read.ensure_reader();
                Ok(None)
            }
            Err(e) => {
                // The worker is dead or dying; its supervisor will hear of it
                // from the reader. Meanwhile, no more hand-offs to it.
                side.direct = false;
                if e.written == 0 && lock(&port.inflight).remove(&id).is_some() {
                    // Nothing reached it: the item takes the queue instead.
                    port.credit.count.fetch_sub(1, SeqCst);
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
        // A send error means the stage has stopped; dropping the item
        // completes its request with a shutdown error.
        let _ = self.tx.send((ticket, value));
    }

    fn push_until(&self, ticket: TicketRef, value: W::Input, deadline: Instant) -> bool {
        match self.tx.send_deadline((ticket, value), deadline) {
            Ok(()) => true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => false,
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => true,
        }
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
                if self.push_until(ticket, value, deadline) {
                    Pushed::Delivered
                } else {
                    Pushed::TimedOut
                }
            }
        }
    }

    fn fail(&self, ticket: TicketRef, error: Error) {
        self.fail_to.fail(ticket, error);
    }
}
