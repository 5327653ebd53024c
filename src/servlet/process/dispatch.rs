//! Dispatch and batching: what a supervisor sends its worker, and how.
//!
//! Dispatch is pull-shaped. A worker's credit (items it may hold, see
//! `ledger.rs`) starts at one item (one batch when batching) and grows only
//! with its measured speed, so slow items go out one at a time and an idle
//! worker gets the next item before a busy worker its second. The credit
//! and the item ids are reserved under the worker's send lock; the items are
//! then pulled from the queue (a batch waits for its items here) and
//! encoded (user `Serialize`) without it, and written under it again. An
//! item taken that cannot be sent after all (or swept from the queue by a
//! supervisor whose worker has no credit) goes to the servlet's spill
//! queue, which every supervisor with credit takes from first; a batch
//! being filled waits on both queues at once.
//!
//! Batches follow the servlet's [`Batching`] policy (`crate::batch`). Under
//! the adaptive one, a worker that holds nothing gets what is queued at once;
//! a busy worker's next batch may take a whole batch of credit beyond what
//! the worker holds and is held open, filling, until the worker is predicted
//! to be free (from its measured batch service time), so that it arrives
//! just as the worker needs it, as large as the queue allows. While a whole
//! batch already waits in the worker behind the one it works on, its
//! supervisor starts no batch ([`Dispatcher::saturated`]) until the worker
//! gives items back. A batch is encoded under one panic guard: a panicking
//! `Serialize` fails its item alone and encoding goes on under a new guard.

use std::sync::MutexGuard;
use std::time::Instant;

use crossbeam_channel::Receiver;
use serde::Serialize;

use super::connection::{Port, SendSide, WriteError, lock_side, send_all};
use super::delivery::{Delivery, deliver};
use super::ledger::InFlight;
use super::shared::{Item, Shared};
use crate::batch::{self, Batching, Busy};
use crate::error::{CodecDirection, CodecError, Error, WorkerId};
use crate::ipc::frame::ItemFrames;
use crate::metrics::stage_ns;
use crate::servlet::plumbing::{SinkRef, TicketRef};
use crate::worker::{Worker, panic};
use std::sync::atomic::Ordering::Relaxed;

/// Items that never reached a worker: the write failed before a single byte
/// went out, because the worker had already died. They go, as they are, to
/// the next process, and count neither as crashed nor as attempts.
pub(super) struct Unsent {
    pub(super) frames: Vec<u8>,
    pub(super) entries: Vec<(u64, InFlight)>,
}

/// A write failed: why the worker counts as crashed.
pub(super) type Failed = String;

/// What one supervisor sends its worker.
pub(super) struct Dispatcher<'a, W: Worker> {
    pub(super) shared: &'a Shared<W>,
    pub(super) rx: &'a Receiver<Item<W>>,
    pub(super) out: &'a SinkRef<W::Output>,
    frames: ItemFrames,
    /// When the worker is predicted to be done with what it holds
    /// (adaptive batching; `None`: unknown).
    busy_until: Option<Instant>,
    /// Items of the last batch sent.
    last_sent: usize,
}

impl<'a, W: Worker> Dispatcher<'a, W> {
    pub(super) fn new(
        shared: &'a Shared<W>,
        rx: &'a Receiver<Item<W>>,
        out: &'a SinkRef<W::Output>,
    ) -> Self {
        Dispatcher {
            shared,
            rx,
            out,
            frames: ItemFrames::default(),
            busy_until: None,
            last_sent: 0,
        }
    }
}

/// Takes what is queued now in the spill queue and then in `rx` (at most
/// what each held when it began, so items put back are not seen twice):
/// items of ended requests are dropped and counted as skipped (they never
/// ran); the others go to `live` (which counts them off `shared.queued` if
/// they leave the queues).
pub(super) fn drain_queued<W: Worker>(
    shared: &Shared<W>,
    rx: &Receiver<Item<W>>,
    mut live: impl FnMut(Item<W>),
) {
    for rx in [&shared.spill_rx, rx] {
        for _ in 0..rx.len() {
            let Ok(item) = rx.try_recv() else { break };
            if item.0.is_cancelled() {
                shared.queued.left(1);
                shared.stats.items_in.fetch_add(1, Relaxed);
                shared.stats.skipped.fetch_add(1, Relaxed);
                // The value's `Drop` is user code.
                let _ = panic::catch(false, move || drop(item));
            } else {
                live(item);
            }
        }
    }
}

impl<W> Dispatcher<'_, W>
where
    W: Worker,
    W::Input: Serialize,
{
    /// False (counted as skipped) if the item's request ended already.
    fn live(&self, ticket: &TicketRef) -> bool {
        if ticket.is_cancelled() {
            self.shared.stats.skipped.fetch_add(1, Relaxed);
            false
        } else {
            true
        }
    }

    /// Adaptive batching: whether the worker holds more than the last batch
    /// sent, i.e. a whole batch waits in it behind the one it works on. Its
    /// supervisor then starts no batch until the worker gives items back:
    /// a batch started now could only be held open for the policy's longest
    /// hold, its supervisor woken once per arriving item, while the items
    /// can as well queue and be taken at once when the worker needs them.
    pub(super) fn saturated(&self, held: usize) -> bool {
        let policy = &self.shared.policy;
        policy.size > 1
            && policy.mode == Batching::Adaptive
            && self.last_sent > 0
            && held > self.last_sent
    }

    /// While its worker has no credit, a supervisor drops the items of
    /// ended requests from the queue (counted as skipped: they never ran)
    /// and moves the others to the spill queue, in order, where any
    /// supervisor with credit takes them first. Without this, a cancelled
    /// item would sit in the queue until some worker had credit for it.
    pub(super) fn sweep(&self) {
        let spill = &self.shared.spill_tx;
        drain_queued(self.shared, self.rx, |item| {
            let _ = spill.send(item);
        });
    }

    /// Sends `first` and whatever else is ready (a batch, or up to the free
    /// credit of queued items, in as few frames as the frame limit allows).
    /// Gives `first` back if the worker has no credit after all.
    pub(super) fn dispatch(
        &mut self,
        port: &Port,
        who: &WorkerId,
        first: Item<W>,
        max: usize,
        unsent: &mut Option<Unsent>,
    ) -> Result<Option<Item<W>>, Failed> {
        let shared = self.shared;
        let stats = &shared.stats;
        let policy = &shared.policy;
        let start = Instant::now();
        let adaptive = policy.size > 1 && policy.mode == Batching::Adaptive;
        // A busy worker's next batch waits (below) until the worker is
        // about to be free: it may take a whole batch beyond what the worker
        // holds, within `max_inflight`.
        let max = if adaptive {
            max.max(shared.max_inflight)
        } else {
            max
        };
        // Credit and ids are reserved under the send lock: callers may have
        // handed the worker an item since the supervisor last looked, and
        // none can while the reservation stands (the worker looks busy).
        let (credit, base, held) = {
            let side = lock_side(&port.writer);
            let held = port.ledger.held();
            let left = side.quota.saturating_sub(side.next_id);
            let credit = max
                .saturating_sub(held)
                .min(left.min(usize::MAX as u64) as usize);
            if credit == 0 {
                return Ok(Some(first));
            }
            port.ledger.reserve(credit);
            (credit, side.next_id, held)
        };
        let model = port.ledger.model();
        let mut items = Vec::with_capacity(if policy.batched() { policy.size } else { 8 });
        // Items taken and skipped, counted in once per fill (below) rather
        // than per item.
        let (mut taken, mut skipped) = (1u64, 0u64);
        if first.0.is_cancelled() {
            skipped = 1;
        } else {
            items.push(first);
        }
        let max = if policy.batched() {
            policy.limit(&model).min(credit)
        } else {
            credit
        };
        let busy = if held == 0 {
            Busy::Idle
        } else if held > self.last_sent {
            // More than the last batch is held: the worker is behind its
            // prediction (a batch already waits in it). The prediction is
            // not trusted: the batch fills for the policy's longest hold,
            // rather than going out small behind another.
            Busy::Until(None)
        } else {
            Busy::Until(self.busy_until)
        };
        let wait = policy.deadline(start, busy, &model);
        // Spilled items first (they are older), then the queue; with a
        // deadline, waiting on both (a supervisor whose worker has no credit
        // moves queued items to the spill queue: a batch that waited on the
        // queue alone closed short).
        batch::fill_two(
            &shared.spill_rx,
            self.rx,
            &mut items,
            max,
            wait,
            |(t, _)| {
                taken += 1;
                let live = !t.is_cancelled();
                if !live {
                    skipped += 1;
                }
                live
            },
        );
        // `first` and the items the fill took have left the queues.
        shared.queued.left(taken);
        stats.items_in.fetch_add(taken, Relaxed);
        if skipped > 0 {
            stats.skipped.fetch_add(skipped, Relaxed);
        }
        let half = shared.max_frame / 2;
        self.frames.reset(policy.batched(), half);
        self.frames.use_shm(port.shm.as_ref());
        let mut tickets = Vec::with_capacity(items.len());
        let mut failed: Vec<(TicketRef, String)> = Vec::new();
        let codec = shared.codec;
        // One panic guard for the whole batch rather than one per item: a
        // panicking `Serialize` (or `Drop`) unwinds to it, fails its item
        // alone (its partial entry is discarded), and encoding goes on with
        // the next item under a new guard.
        let mut items = items.into_iter();
        loop {
            let mut current: Option<TicketRef> = None;
            let frames = &mut self.frames;
            let (ok, bad, current_ref, rest) =
                (&mut tickets, &mut failed, &mut current, &mut items);
            let done = panic::catch(false, move || {
                for (ticket, x) in rest {
                    *current_ref = Some(ticket);
                    let encoded = frames.push(|v| {
                        let r = codec.encode_into(v, &x);
                        drop(x);
                        r
                    });
                    let Some(ticket) = current_ref.take() else {
                        continue;
                    };
                    match encoded {
                        Ok(size) if size > half => {
                            frames.pop();
                            let message = format!(
                                "input exceeds the frame limit of {} bytes",
                                shared.max_frame
                            );
                            bad.push((ticket, message));
                        }
                        Ok(_) => ok.push(ticket),
                        Err(e) => bad.push((ticket, e)),
                    }
                }
            });
            match done {
                Ok(()) => break,
                Err(p) => {
                    self.frames.discard_partial();
                    if let Some(ticket) = current.take() {
                        let message = format!("panic while serializing: {}", p.message());
                        failed.push((ticket, message));
                    }
                }
            }
        }
        if policy.batched() && self.frames.open_frame_len() > shared.max_frame {
            for t in tickets.drain(..) {
                failed.push((t, "batch exceeds the frame limit".into()));
            }
        }
        let n = tickets.len();
        let mut outcome = Ok(None);
        if n > 0 {
            if policy.batched() {
                stats.batches.fetch_add(1, Relaxed);
                stats.batch_sizes.record(n as u64);
            }
            self.frames.assign_ids(base);
            let retry = shared.restart.retry_crashed;
            // One clock reading for the whole write.
            let sent = Instant::now();
            let sent_ns = stage_ns(sent);
            let entries: Vec<(u64, InFlight)> = tickets
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    let bytes = retry.then(|| self.frames.payload(i).to_vec());
                    (base + i as u64, InFlight::sent_at(t, bytes, sent_ns))
                })
                .collect();
            let side = lock_side(&port.writer);
            port.ledger.unreserve(credit - n);
            let written =
                hold_and_write(port, side, base + n as u64, entries, 0, self.frames.bytes());
            self.predict(held, sent, n, &model);
            if let Err(e) = written {
                // For another process: values in this one's shared memory
                // go back into the frames.
                let frames = self.frames.inline_bytes();
                let ids: Vec<u64> = (base..base + n as u64).collect();
                outcome = Err(write_failed(port, e, frames, &ids, unsent));
            }
        } else {
            port.ledger.unreserve(credit);
        }
        // Failures are reported outside the send lock (the next stage's sink
        // runs here).
        for (ticket, message) in failed {
            stats.items_err.fetch_add(1, Relaxed);
            let e = Error::Codec(CodecError {
                worker: who.clone(),
                direction: CodecDirection::EncodeInput,
                message,
            });
            deliver(self.out, who, Delivery::Failure(ticket, e));
        }
        outcome
    }

    /// Updates when the worker is predicted to be free, after `n` items
    /// were sent at `sent` to a worker that held `held` items.
    fn predict(&mut self, held: usize, sent: Instant, n: usize, model: &batch::ServiceModel) {
        let from = match self.busy_until {
            _ if held == 0 => Some(sent),
            Some(t) => Some(t.max(sent)),
            None => None,
        };
        self.busy_until = from.zip(model.cost(n)).map(|(t, c)| t + c);
        self.last_sent = n;
    }

    /// Sends one item of a crashed worker again, alone, as it was encoded.
    /// Returns it if it never reached the worker.
    pub(super) fn send_retry(
        &mut self,
        port: &Port,
        item: InFlight,
    ) -> Result<(), (Failed, Option<InFlight>)> {
        if !self.live(&item.ticket) {
            return Ok(());
        }
        let Some(bytes) = item.bytes.as_deref() else {
            return Ok(());
        };
        self.frames.reset(self.shared.policy.batched(), usize::MAX);
        self.frames.use_shm(port.shm.as_ref());
        self.frames.push_raw(bytes);
        let side = lock_side(&port.writer);
        let id = side.next_id;
        self.frames.set_id(0, id);
        self.busy_until = None;
        self.last_sent = 1;
        hold_and_write(port, side, id + 1, vec![(id, item)], 1, self.frames.bytes()).map_err(|e| {
            // Nothing got out: not an attempt.
            let back = (e.written == 0)
                .then(|| port.ledger.take_back(&[id]).pop().map(|(_, it)| it))
                .flatten();
            (e.reason(), back)
        })
    }

    /// Sends items that never reached the previous process, as they were.
    pub(super) fn send_unsent(
        &mut self,
        port: &Port,
        u: Unsent,
        unsent: &mut Option<Unsent>,
    ) -> Result<(), Failed> {
        let ids: Vec<u64> = u.entries.iter().map(|(id, _)| *id).collect();
        let side = lock_side(&port.writer);
        let next = ids.iter().map(|id| id + 1).max().unwrap_or(side.next_id);
        self.busy_until = None;
        let n = u.entries.len();
        self.last_sent = n;
        hold_and_write(port, side, next, u.entries, n, &u.frames)
            .map_err(|e| write_failed(port, e, u.frames, &ids, unsent))
    }
}

/// Under the send lock `side`: the worker holds `entries` from now on
/// (`reserve`: credit to take for them, unless it was reserved before), the
/// next id is `next_id`, and `frames` are written. Someone reads before the
/// write starts: a write larger than the socket's buffers needs the worker to
/// go on reading, which it does only while its results are read.
fn hold_and_write(
    port: &Port,
    mut side: MutexGuard<'_, SendSide>,
    next_id: u64,
    entries: Vec<(u64, InFlight)>,
    reserve: usize,
    frames: &[u8],
) -> Result<(), WriteError> {
    side.next_id = next_id;
    port.ledger.reserve(reserve);
    port.ledger.add(entries);
    port.read.ensure_reader();
    let written = send_all(&side.sock, frames);
    drop(side);
    written
}

/// A write to the worker failed. If nothing went out, the items of the write
/// never reached it: they are taken back and kept for the next process.
/// Either way the worker counts as crashed.
fn write_failed(
    port: &Port,
    e: WriteError,
    frames: Vec<u8>,
    ids: &[u64],
    unsent: &mut Option<Unsent>,
) -> Failed {
    if e.written == 0 {
        // Entries settled meanwhile are gone: the next worker may compute
        // them, and their results are ignored.
        let entries = port.ledger.take_back(ids);
        if !entries.is_empty() {
            *unsent = Some(Unsent { frames, entries });
        }
    }
    e.reason()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A batch being filled for one worker while a sibling supervisor, whose
    /// worker has no credit, sweeps the queue into the spill queue (the
    /// sweep took the items before the filling supervisor saw them): the
    /// batch takes them from the spill queue and closes full at once,
    /// instead of closing short at its deadline (issue 10 item 3: 5 batches
    /// instead of 4 in `slow_batches_spread_over_idle_workers`).
    #[test]
    fn a_batch_being_filled_takes_items_a_sibling_spilled() {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let (spill_tx, spill_rx) = crossbeam_channel::unbounded::<u32>();
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(0);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        let filler = std::thread::spawn(move || {
            let mut items = vec![0];
            started_tx.send(()).unwrap();
            batch::fill_two(&spill_rx, &rx, &mut items, 3, Some(deadline), |_| true);
            (items, Instant::now())
        });
        started_rx.recv().unwrap();
        // The sibling's sweep: items 1 and 2 went to the queue and were
        // moved to the spill queue before the filler took them.
        for i in 1..3 {
            spill_tx.send(i).unwrap();
        }
        let (items, done) = filler.join().unwrap();
        drop(tx);
        assert_eq!(items, vec![0, 1, 2], "the batch closed short");
        assert!(
            done < deadline,
            "the batch waited out its window for items already spilled"
        );
    }

    /// Spilled items and queued items arriving while a batch fills: all go
    /// into the batch (the filter's rejects aside), spilled ones (older)
    /// first when both are there.
    #[test]
    fn a_batch_takes_from_both_queues_while_it_waits() {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let (spill_tx, spill_rx) = crossbeam_channel::unbounded::<u32>();
        spill_tx.send(1).unwrap();
        tx.send(2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let filler = std::thread::spawn(move || {
            let mut items = vec![0];
            batch::fill_two(&spill_rx, &rx, &mut items, 5, Some(deadline), |x| *x != 4);
            items
        });
        for (i, to) in [(3, &spill_tx), (4, &tx), (5, &tx), (6, &spill_tx)] {
            to.send(i).unwrap();
        }
        let items = filler.join().unwrap();
        assert_eq!(items.len(), 5, "{items:?}");
        let at = |x| items.iter().position(|&y| y == x);
        assert!(at(1).is_some() && at(1) < at(2), "spilled first: {items:?}");
        assert!(!items.contains(&4), "{items:?}");
        drop((tx, spill_tx));
    }
}
