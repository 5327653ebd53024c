//! Settings and counters shared by the supervisors (and the input sink) of
//! one process servlet.

use crate::sync::lock_std;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicIsize, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::ledger::InFlight;
use super::restart::RestartPolicy;
use super::spawn;
use crate::batch::BatchPolicy;
use crate::ipc::Codec;
use crate::metrics::ServletStats;
use crate::servlet::plumbing::ChildRegistry;
use crate::servlet::plumbing::TicketRef;
use crate::worker::Worker;

/// An item on its way into a worker process.
pub(super) type Item<W> = (TicketRef, <W as Worker>::Input);

/// See the module docs.
pub(crate) struct Shared<W: Worker> {
    pub(crate) name: String,
    pub(crate) worker_bytes: Vec<u8>,
    pub(crate) policy: BatchPolicy,
    pub(crate) restart: RestartPolicy,
    /// A worker's credit: `min_inflight` until its speed is measured, then
    /// earned up to `max_inflight` (see `ledger.rs`).
    pub(crate) min_inflight: usize,
    pub(crate) max_inflight: usize,
    pub(crate) max_frame: usize,
    pub(crate) codec: Codec,
    /// Shared memory for large values (h1-shm), `None`: off.
    pub(crate) shm: Option<crate::ipc::shm::ShmSettings>,
    pub(crate) recycle_after_items: Option<u64>,
    pub(crate) recycle_above_rss: Option<u64>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) spawn: spawn::SpawnOptions,
    pub(crate) stats: Arc<ServletStats>,
    pub(crate) healthy_workers: AtomicUsize,
    pub(crate) registry: Arc<ChildRegistry>,
    /// Items a supervisor took from the queue but could not send to its own
    /// worker (its credit was taken meanwhile, or it is restarting): any
    /// supervisor with credit takes them before the queue, so they never
    /// wait behind a busy worker while another one idles.
    pub(super) spill_tx: Sender<Item<W>>,
    /// Longest an item waits while no worker process is alive.
    pub(crate) wait_for_worker: Duration,
    /// How many worker processes are alive, and since when none is.
    pub(crate) live: Mutex<Live>,
    pub(super) spill_rx: Receiver<Item<W>>,
    /// How many items wait in the queue and the spill queue together (the
    /// queue-depth gauge).
    pub(crate) queued: Arc<Queued>,
    /// Items of crashed workers to be sent again (`retry_crashed`).
    pub(super) retry: Retry,
    pub(crate) _worker: PhantomData<fn() -> W>,
}

/// How many items wait in a process servlet's queue and spill queue, as one
/// count: an item entering the queue adds one, an item taken from either
/// queue for a worker (or dropped, or failed) takes one off, and an item
/// moving from the queue to the spill queue leaves it as it is. Reading the
/// two queues' lengths one after the other could count an item twice or not
/// at all, or count items taken between the two reads beside new ones.
///
/// An item is counted once its send returned, and may be taken (and counted
/// off) just before that: the count may dip below zero for a moment, and is
/// read as zero then. It never counts an item that has left the servlet.
#[derive(Debug, Default)]
pub(crate) struct Queued(AtomicIsize);

impl Queued {
    /// One item entered the queue.
    pub(crate) fn entered(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// `n` items left the queues (taken for a worker, dropped or failed).
    pub(crate) fn left(&self, n: u64) {
        self.0.fetch_sub(n as isize, Relaxed);
    }

    /// The number of queued items.
    pub(crate) fn get(&self) -> usize {
        self.0.load(Relaxed).max(0) as usize
    }
}

/// Items that were in a worker process when it died, to be sent again
/// (with [`RestartPolicy::retry_crashed`]). Any supervisor of the servlet
/// whose process holds nothing takes them, one at a time and alone, before
/// anything else: a retried item goes to the first live worker that is
/// free, not only to the restarted one, and a poison item can take down
/// only itself. A supervisor whose process holds items stops taking new
/// ones while retries wait, so that one of them frees up soon.
pub(crate) struct Retry {
    tx: Sender<InFlight>,
    rx: Receiver<InFlight>,
}

impl Default for Retry {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Retry { tx, rx }
    }
}

impl Retry {
    /// Queues an item to be sent again.
    pub(super) fn push(&self, item: InFlight) {
        // Both ends live in `Shared`: the send cannot fail.
        let _ = self.tx.send(item);
    }

    /// The next item to send again, if any.
    pub(super) fn pop(&self) -> Option<InFlight> {
        self.rx.try_recv().ok()
    }

    /// True if items wait to be sent again.
    pub(super) fn pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Ready when an item is queued (for `select!`).
    pub(super) fn receiver(&self) -> &Receiver<InFlight> {
        &self.rx
    }
}

/// Worker processes alive in a servlet.
#[derive(Default)]
pub(crate) struct Live {
    alive: usize,
    none_since: Option<Instant>,
}

impl<W: Worker> Shared<W> {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        lock_std(&self.live)
    }

    /// A worker process is up.
    pub(super) fn worker_up(&self) {
        let mut l = self.live();
        l.alive += 1;
        l.none_since = None;
    }

    /// A worker process is gone.
    pub(super) fn worker_down(&self) {
        let mut l = self.live();
        l.alive = l.alive.saturating_sub(1);
        if l.alive == 0 {
            l.none_since = Some(Instant::now());
        }
    }

    /// True once no worker process has been alive for `wait_for_worker`.
    pub(super) fn none_alive_too_long(&self) -> bool {
        let l = self.live();
        l.alive == 0
            && l.none_since
                .is_some_and(|t| t.elapsed() >= self.wait_for_worker)
    }
}
