//! The in-flight ledger of one worker process: the items it holds, its
//! credit, and the handshake by which its supervisor waits for credit.
//!
//! Accounting follows the work. An item enters the ledger when it is written
//! to the worker and leaves it only when the worker answers for it: with its
//! result, or with an explicit "skipped" reply to a cancellation for an item
//! it had not begun (or when the worker dies). Its ticket lives in the ledger
//! until then, so the request's capacity unit and the worker's credit stay
//! taken while the worker may be running it, however the request ended
//! meanwhile. A cancellation only *marks* entries ([`Ledger::mark_cancels`]):
//! it never removes one.
//!
//! The count (`held`) is the worker's credit in use: entries in the ledger
//! plus credit a sender reserved for items it is about to write (see
//! `dispatch.rs`). Whoever gives credit back wakes the supervisor only if it
//! asked to be woken ([`Ledger::wait_for_credit`]). The request to be woken
//! is a bit of the count's own word: the supervisor sets it with the
//! read-modify-write that also tells it the count, the giver learns of it
//! from the read-modify-write that changes the count. Operations on one
//! word are totally ordered, so either the supervisor sees the credit come
//! back or the giver sees the request: no wake-up is lost.
//!
//! Pure bookkeeping on the primitives of [`crate::sync`], so the loom models
//! at the end of this file check it under every interleaving.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::batch::ServiceModel;
use crate::metrics::stage_ns;
use crate::servlet::plumbing::TicketRef;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering, lock};

/// An item held by a worker process.
pub(super) struct InFlight {
    pub(super) ticket: TicketRef,
    /// Crashes of workers this item was in.
    pub(super) crashes: u32,
    /// The encoded input, kept only when crashed items are retried.
    pub(super) bytes: Option<Vec<u8>>,
    /// A cancellation was sent for it; the worker's answer is awaited.
    pub(super) cancel_sent: bool,
    /// When it was handed to the worker (for its transfer time), as
    /// `metrics::shard::stage_ns` gives it.
    pub(super) sent_ns: u64,
}

impl InFlight {
    pub(super) fn new(ticket: TicketRef, bytes: Option<Vec<u8>>) -> Self {
        Self::sent_at(ticket, bytes, stage_ns(Instant::now()))
    }

    /// An item handed to the worker at `sent_ns` (`stage_ns`; one clock
    /// reading for all the items of a write).
    pub(super) fn sent_at(ticket: TicketRef, bytes: Option<Vec<u8>>, sent_ns: u64) -> Self {
        InFlight {
            ticket,
            crashes: 0,
            bytes,
            cancel_sent: false,
            sent_ns,
        }
    }
}

/// The supervisor asks to be woken when credit comes back.
const WAITING: usize = 1 << (usize::BITS - 1);

/// How much work (in time) a worker process may hold beyond the item it is on.
const QUEUED_WORK: Duration = Duration::from_millis(2);

/// Items held, by id.
///
/// Keyed with `rustc_hash`'s multiplicative hasher rather than SipHash: the
/// ids are numbered by the server itself (never taken from input), and
/// SipHash cost more than the rest of an insert and a remove per item.
type IdMap = HashMap<u64, InFlight, rustc_hash::FxBuildHasher>;

/// See the module docs.
#[derive(Default)]
pub(super) struct Ledger {
    map: Mutex<IdMap>,
    /// Credit in use, and [`WAITING`].
    count: AtomicUsize,
    /// Moving average of the worker's time per item, in ns (0: unmeasured).
    service_ns: AtomicU64,
    /// The worker's batch service time (adaptive batching, `crate::batch`).
    model: Mutex<ServiceModel>,
    /// Items go in batches: only then is `model` read, so only then is it
    /// kept up to date (a lock and its arithmetic less per TIMING frame).
    batched: bool,
}

impl Ledger {
    /// An empty ledger; `batched`: the worker's items go in batches (see
    /// [`Ledger::model`]).
    pub(super) fn new(batched: bool) -> Self {
        Ledger {
            batched,
            ..Ledger::default()
        }
    }

    fn map(&self) -> MutexGuard<'_, IdMap> {
        lock(&self.map)
    }

    /// Credit in use: items held plus credit reserved.
    pub(super) fn held(&self) -> usize {
        self.count.load(Ordering::SeqCst) & !WAITING
    }

    /// Gives back `n` credit; true if the supervisor asked to be woken.
    fn give_back(&self, n: usize) -> bool {
        n > 0 && self.count.fetch_sub(n, Ordering::SeqCst) & WAITING != 0
    }

    /// Reserves `n` credit for items about to be added (under the worker's
    /// send lock, so callers see the worker busy meanwhile).
    pub(super) fn reserve(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    /// Gives back `n` reserved credit that no item used.
    pub(super) fn unreserve(&self, n: usize) -> bool {
        self.give_back(n)
    }

    /// Adds items whose credit was reserved.
    pub(super) fn add(&self, entries: impl IntoIterator<Item = (u64, InFlight)>) {
        self.map().extend(entries);
    }

    /// The worker answered for `ids` (results or skipped replies): their
    /// entries leave (appended to `taken` in order, `None` for ids not held,
    /// e.g. answered twice by a misbehaving worker) and their credit goes
    /// back. Returns whether the supervisor asked to be woken. `taken` is
    /// the caller's, so a reader reuses one allocation for every frame.
    pub(super) fn settle_into(
        &self,
        ids: impl IntoIterator<Item = u64>,
        taken: &mut Vec<Option<InFlight>>,
    ) -> bool {
        let n = {
            let mut map = self.map();
            let mut n = 0;
            for id in ids {
                let entry = map.remove(&id);
                n += usize::from(entry.is_some());
                taken.push(entry);
            }
            n
        };
        self.give_back(n)
    }

    /// [`Ledger::settle_into`] a new `Vec`: the entries and whether the
    /// supervisor asked to be woken.
    #[cfg(test)]
    pub(super) fn settle(
        &self,
        ids: impl IntoIterator<Item = u64>,
    ) -> (Vec<Option<InFlight>>, bool) {
        let mut taken = Vec::new();
        let wake = self.settle_into(ids, &mut taken);
        (taken, wake)
    }

    /// Takes back items a write never delivered (nothing of it got out).
    pub(super) fn take_back(&self, ids: &[u64]) -> Vec<(u64, InFlight)> {
        let back: Vec<(u64, InFlight)> = {
            let mut map = self.map();
            ids.iter()
                .filter_map(|id| map.remove(id).map(|e| (*id, e)))
                .collect()
        };
        self.give_back(back.len());
        back
    }

    /// Everything held (the worker is gone).
    pub(super) fn drain(&self) -> Vec<InFlight> {
        let all: Vec<InFlight> = self.map().drain().map(|(_, e)| e).collect();
        self.count.store(0, Ordering::SeqCst);
        all
    }

    /// Ids of held items whose requests were cancelled and for which no
    /// cancellation was sent yet; marks them sent. The entries stay (see the
    /// module docs).
    pub(super) fn mark_cancels(&self) -> Vec<u64> {
        let mut map = self.map();
        let mut ids = Vec::new();
        for (id, e) in map.iter_mut() {
            if !e.cancel_sent && e.ticket.is_cancelled() {
                e.cancel_sent = true;
                ids.push(*id);
            }
        }
        ids
    }

    /// True if a held item's request was cancelled and no cancellation was
    /// sent for it yet (what [`Ledger::mark_cancels`] would mark), without
    /// marking anything.
    pub(super) fn has_cancels(&self) -> bool {
        self.map()
            .values()
            .any(|e| !e.cancel_sent && e.ticket.is_cancelled())
    }

    /// True if the worker holds items and every one of them was cancelled:
    /// nobody waits for what it is doing.
    pub(super) fn abandoned(&self) -> bool {
        let map = self.map();
        !map.is_empty() && map.values().all(|e| e.ticket.is_cancelled())
    }

    /// True if item `id` is held.
    pub(super) fn holds(&self, id: u64) -> bool {
        self.map().contains_key(&id)
    }

    /// Asks to be woken when credit comes back, unless the count moved from
    /// `seen` already. Returns whether to wait ([`Ledger::stop_waiting`] after).
    pub(super) fn wait_for_credit(&self, seen: usize) -> bool {
        let before = self.count.fetch_or(WAITING, Ordering::SeqCst);
        if before & !WAITING != seen {
            self.stop_waiting();
            return false;
        }
        true
    }

    /// No longer to be woken.
    pub(super) fn stop_waiting(&self) {
        self.count.fetch_and(!WAITING, Ordering::SeqCst);
    }

    /// The credit for the worker: at most `max`, at least `min`. An
    /// unmeasured worker gets `min` (one item, or one batch): credit beyond
    /// that is earned by measured speed, about [`QUEUED_WORK`] of queued
    /// work, so slow items are handed out one at a time and an idle worker
    /// gets the next one before a busy worker its second.
    pub(super) fn limit(&self, min: usize, max: usize) -> usize {
        let s = self.service_ns.load(Ordering::Relaxed);
        let want = (QUEUED_WORK.as_nanos() as u64)
            .checked_div(s)
            .map_or(min, |n| n as usize + 1);
        want.clamp(min.min(max), max)
    }

    /// Records a TIMING frame: the worker spent `spent` on `items` items
    /// since the last one. With batching, a worker reports after each batch
    /// that takes a millisecond or more, so a frame is taken as one batch.
    pub(super) fn record_work(&self, spent: Duration, items: u32) {
        if items == 0 {
            return;
        }
        self.observe(spent / items);
        if self.batched {
            lock(&self.model).observe(1, u64::from(items), spent);
        }
    }

    /// The worker's measured batch service time (kept only for a ledger
    /// made `batched`: the default when unmeasured otherwise).
    pub(super) fn model(&self) -> ServiceModel {
        *lock(&self.model)
    }

    /// Records the worker's measured time per item (from its TIMING frames).
    pub(super) fn observe(&self, per_item: Duration) {
        let sample = (per_item.as_nanos() as u64).max(1);
        let old = self.service_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.service_ns.store(new, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(mpserver_loom)))]
mod tests {
    use super::*;
    use crate::servlet::plumbing::Ticket;
    use std::sync::atomic::AtomicBool as StdBool;

    struct T(StdBool);
    impl Ticket for T {
        fn is_cancelled(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    #[test]
    fn cancellation_marks_once_and_keeps_the_entry() {
        let l = Ledger::default();
        let t = std::sync::Arc::new(T(StdBool::new(true)));
        l.reserve(2);
        l.add([
            (1, InFlight::new(t.clone(), None)),
            (
                2,
                InFlight::new(std::sync::Arc::new(T(StdBool::new(false))), None),
            ),
        ]);
        assert!(l.has_cancels());
        assert_eq!(l.mark_cancels(), vec![1]);
        assert!(l.mark_cancels().is_empty(), "sent once");
        assert!(!l.has_cancels());
        assert_eq!(l.held(), 2);
        assert!(!l.abandoned());
        let (taken, _) = l.settle([2]);
        assert!(taken[0].is_some());
        assert!(l.abandoned());
        assert!(l.holds(1));
        let (taken, _) = l.settle([1, 1]);
        assert!(taken[0].is_some() && taken[1].is_none());
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn unmeasured_workers_start_at_the_minimum() {
        let l = Ledger::default();
        assert_eq!(l.limit(1, 64), 1);
        assert_eq!(l.limit(3, 6), 3);
        l.observe(Duration::from_secs(1));
        assert_eq!(l.limit(1, 64), 1);
        let fast = Ledger::default();
        fast.observe(Duration::from_micros(10));
        assert_eq!(fast.limit(1, 64), 64);
    }
}

/// Loom models: `RUSTFLAGS="--cfg mpserver_loom" cargo test --lib loom_`.
#[cfg(all(test, mpserver_loom))]
mod loom_models {
    use super::*;
    use crate::servlet::plumbing::Ticket;
    use crate::sync::{Arc, AtomicBool};

    struct Expired;
    impl Ticket for Expired {
        fn is_cancelled(&self) -> bool {
            true
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// Item 1 of the interleavings issue: a worker runs an item whose
    /// request expired while the cancel scan runs. Until the worker answers,
    /// the item's ticket (its capacity unit) and credit stay taken, whatever
    /// the order. A scan that removed the entry would fail this model.
    #[test]
    fn loom_accounting_follows_the_work() {
        loom::model(|| {
            let ledger = Arc::new(Ledger::default());
            let ticket: TicketRef = std::sync::Arc::new(Expired);
            let weak = std::sync::Arc::downgrade(&ticket);
            ledger.reserve(1);
            ledger.add([(7, InFlight::new(ticket, None))]);
            let answered = Arc::new(AtomicBool::new(false));

            let worker = {
                let (ledger, answered) = (ledger.clone(), answered.clone());
                loom::thread::spawn(move || {
                    answered.store(true, Ordering::SeqCst);
                    let (taken, _) = ledger.settle([7]);
                    drop(taken);
                })
            };
            let cancels = ledger.mark_cancels();
            let alive = weak.upgrade().is_some();
            let held = ledger.held();
            let done = answered.load(Ordering::SeqCst);
            assert!(
                alive || done,
                "capacity released before the worker answered"
            );
            assert!(
                held == 1 || done,
                "credit returned before the worker answered"
            );
            assert!(cancels.len() <= 1);
            worker.join().unwrap();
            assert_eq!(ledger.held(), 0);
            assert!(weak.upgrade().is_none());
        });
    }

    /// The credit/waiting handshake: a supervisor that finds no credit and
    /// waits is always woken by the result that gives credit back.
    #[test]
    fn loom_credit_wake_up_is_never_lost() {
        loom::model(|| {
            let ledger = Arc::new(Ledger::default());
            let ticket: TicketRef = std::sync::Arc::new(Expired);
            ledger.reserve(1);
            ledger.add([(1, InFlight::new(ticket, None))]);
            let woken = Arc::new(AtomicBool::new(false));
            let reader = {
                let (ledger, woken) = (ledger.clone(), woken.clone());
                loom::thread::spawn(move || {
                    let (_, wake) = ledger.settle([1]);
                    if wake {
                        woken.store(true, Ordering::SeqCst);
                    }
                })
            };
            // The supervisor: no credit (limit 1, one held): wait.
            let seen = ledger.held();
            if seen >= 1 && ledger.wait_for_credit(seen) {
                // It sleeps until woken: the reader must have woken it (or
                // will, before it ends).
                reader.join().unwrap();
                assert!(woken.load(Ordering::SeqCst), "lost wake-up");
                ledger.stop_waiting();
            } else {
                reader.join().unwrap();
            }
            assert_eq!(ledger.held(), 0);
        });
    }
}
