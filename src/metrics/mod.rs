//! Observability: per-servlet and per-worker counters, histograms, and the
//! servlet tree behind [`Handle::debug_info`](crate::Handle::debug_info).
//!
//! Everything here only observes: counters are relaxed atomics owned by the
//! servlet or worker that updates them, so recording costs a few nanoseconds
//! and never changes scheduling. Worker processes do not record anything
//! themselves; their parent-side threads count on their behalf.

use crate::sync::lock_std;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::affinity::CpuAffinity;

mod debug;
pub mod prometheus;
mod requests;

pub use debug::{DebugInfo, RequestInfo, ServerState};
pub(crate) use requests::ServerStats;
pub use requests::{ERROR_KINDS, RequestStats};

mod shard;
pub(crate) use shard::stage_ns;
pub use shard::{Counter, Histogram, StageClock};

/// A histogram's content: `counts[i]` values were `<= bounds[i]` and above
/// the previous bucket's bound. Only buckets that hold values are listed
/// (see [`Histogram`] for the bucket layout).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Inclusive upper bound of each bucket listed.
    pub bounds: Vec<u64>,
    /// Values per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of all values.
    pub sum: u64,
    /// Number of values.
    pub count: u64,
}

impl HistogramSnapshot {
    /// An upper estimate of the q-quantile (0..=1), from the bucket bounds
    /// (for latency histograms: within about 6% of the true value).
    pub fn quantile(&self, q: f64) -> u64 {
        let target = (self.count as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (c, b) in self.counts.iter().zip(&self.bounds) {
            seen += c;
            if seen >= target.max(1) {
                return *b;
            }
        }
        *self.bounds.last().unwrap_or(&0)
    }

    /// The mean value (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

/// Per-stage latency of one simple servlet, in nanoseconds (see
/// [`ServletStats::record_stages`]).
///
/// * `queue_ns`: from the item's entry into the servlet until a worker
///   takes it (thread servlets) or it is written to a worker process.
/// * `transfer_ns` (process servlets): from the write until its result is
///   read back, less the worker's own time: the socket both ways, the
///   codec, waiting in the worker process behind items sent before it, and
///   the coalescing of results.
/// * `compute_ns`: the worker's own time in `call` (or `call_batch`, for
///   each item of the batch), measured where the worker runs (in the worker
///   process, and carried back with the result).
/// * `total_ns`: from entry until the result leaves the servlet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLatency {
    /// Waiting for a worker.
    pub queue_ns: HistogramSnapshot,
    /// Crossing to a worker process and back (empty for thread servlets).
    pub transfer_ns: HistogramSnapshot,
    /// The worker's own time.
    pub compute_ns: HistogramSnapshot,
    /// The whole stage.
    pub total_ns: HistogramSnapshot,
}

/// Counters of one servlet, recorded by the servlet (read them through
/// [`ServletNode::snapshot`] or `Handle::servlets`). The counters are not
/// public fields: only the servlet that owns them records, through the
/// methods below, and everyone else sees snapshots.
///
/// ```compile_fail
/// // Counters cannot be written from outside: they are not public fields.
/// let node = mpserver::metrics::ServletNode::new("thread", "w");
/// node.stats().items_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
/// ```
///
/// ```
/// let node = mpserver::metrics::ServletNode::new("thread", "w");
/// node.stats().record_in(2);
/// assert_eq!(node.snapshot().items_in, 2);
/// ```
#[derive(Debug, Default)]
pub struct ServletStats {
    /// Items that entered the servlet.
    pub(crate) items_in: Counter,
    /// Items it produced a value for.
    pub(crate) items_ok: Counter,
    /// Items it failed.
    pub(crate) items_err: Counter,
    /// Items skipped because their request was cancelled.
    pub(crate) skipped: Counter,
    /// Items a caller handed straight to an idle worker process, without
    /// the queue (process servlets; see the servlet design notes).
    pub(crate) handoffs: Counter,
    /// Worker calls made in batch form.
    pub(crate) batches: Counter,
    /// Sizes of the batches handed to workers.
    pub(crate) batch_sizes: Histogram,
    /// Worker crashes.
    pub(crate) crashes: Counter,
    /// Worker restarts (after crashes and recycling).
    pub(crate) restarts: Counter,
    /// Per-stage latency, nanoseconds (see [`StageLatency`]).
    pub(crate) queue_ns: Histogram,
    pub(crate) transfer_ns: Histogram,
    pub(crate) compute_ns: Histogram,
    pub(crate) total_ns: Histogram,
}

impl ServletStats {
    /// Counts `n` items that entered the servlet.
    pub fn record_in(&self, n: u64) {
        self.items_in.fetch_add(n, Relaxed);
    }

    /// Counts `n` items the servlet produced a value for.
    pub fn record_ok(&self, n: u64) {
        self.items_ok.fetch_add(n, Relaxed);
    }

    /// Counts `n` items the servlet failed.
    pub fn record_err(&self, n: u64) {
        self.items_err.fetch_add(n, Relaxed);
    }

    /// Counts `n` items skipped because their request was cancelled.
    pub fn record_skipped(&self, n: u64) {
        self.skipped.fetch_add(n, Relaxed);
    }

    /// Records one item's latency through the servlet's stages (see
    /// [`StageLatency`]); `None` leaves a stage out.
    pub fn record_stages(
        &self,
        queue: Option<Duration>,
        transfer: Option<Duration>,
        compute: Option<Duration>,
        total: Option<Duration>,
    ) {
        self.stage_recorder()
            .record(queue, transfer, compute, total);
    }

    /// Records the stage latency of many items (a frame of results, a
    /// batch) on this thread: the histograms' shards are looked up once,
    /// not once per item. Same figures as [`record_stages`] per item.
    ///
    /// [`record_stages`]: ServletStats::record_stages
    ///
    /// ```
    /// use std::time::Duration;
    /// let node = mpserver::metrics::ServletNode::new("thread", "w");
    /// let rec = node.stats().stage_recorder();
    /// for us in [10, 20] {
    ///     rec.record(None, None, Some(Duration::from_micros(us)), None);
    /// }
    /// assert_eq!(node.stats().stage_latency().compute_ns.count, 2);
    /// ```
    pub fn stage_recorder(&self) -> StageRecorder<'_> {
        StageRecorder {
            queue: self.queue_ns.local(),
            transfer: self.transfer_ns.local(),
            compute: self.compute_ns.local(),
            total: self.total_ns.local(),
        }
    }

    /// A copy of the per-stage latency histograms.
    pub fn stage_latency(&self) -> StageLatency {
        StageLatency {
            queue_ns: self.queue_ns.snapshot(),
            transfer_ns: self.transfer_ns.snapshot(),
            compute_ns: self.compute_ns.snapshot(),
            total_ns: self.total_ns.snapshot(),
        }
    }
}

/// Records items' stage latency on one thread (see
/// [`ServletStats::stage_recorder`]). It writes that thread's shards, so it
/// stays on the thread that made it (it is neither `Send` nor `Sync`).
pub struct StageRecorder<'a> {
    queue: shard::LocalHistogram<'a>,
    transfer: shard::LocalHistogram<'a>,
    compute: shard::LocalHistogram<'a>,
    total: shard::LocalHistogram<'a>,
}

impl StageRecorder<'_> {
    /// Records one item's latency through the servlet's stages, as
    /// [`ServletStats::record_stages`] does; `None` leaves a stage out.
    pub fn record(
        &self,
        queue: Option<Duration>,
        transfer: Option<Duration>,
        compute: Option<Duration>,
        total: Option<Duration>,
    ) {
        for (h, d) in [
            (&self.queue, queue),
            (&self.transfer, transfer),
            (&self.compute, compute),
            (&self.total, total),
        ] {
            if let Some(d) = d {
                h.record(nanos(d));
            }
        }
    }
}

impl StageRecorder<'_> {
    /// [`StageRecorder::record`] in nanoseconds (the hot paths compute
    /// stage times as integer differences: no `Duration` per stage).
    #[inline]
    pub(crate) fn record_ns(
        &self,
        queue: Option<u64>,
        transfer: u64,
        compute: u64,
        total: Option<u64>,
    ) {
        if let Some(v) = queue {
            self.queue.record(v);
        }
        self.transfer.record(transfer);
        self.compute.record(compute);
        if let Some(v) = total {
            self.total.record(v);
        }
    }
}

impl std::fmt::Debug for StageRecorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRecorder").finish_non_exhaustive()
    }
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Live state of one worker, kept by its servlet; read it through
/// snapshots ([`WorkerSnapshot`]) or the methods below.
#[derive(Debug)]
pub struct WorkerStatus {
    /// Index within its servlet.
    pub(crate) index: usize,
    /// The CPUs it is pinned to.
    pub(crate) cpus: CpuAffinity,
    /// OS process id (0 for thread workers or while not running).
    pub(crate) pid: AtomicU32,
    /// Whether it is running.
    pub(crate) alive: AtomicBool,
    /// False once it crashed more often than its restart policy allows.
    pub(crate) healthy: AtomicBool,
    /// Times it was restarted.
    pub(crate) restarts: AtomicU64,
    /// Items it handled.
    pub(crate) items: AtomicU64,
    /// While it waits out a restart back-off: until when, in milliseconds
    /// since the Unix epoch (0: not in back-off).
    pub(crate) backoff_until_unix_ms: AtomicU64,
    /// How its last process ended (e.g. "killed by signal 9 (SIGKILL)").
    pub(crate) last_exit: std::sync::Mutex<Option<String>>,
    /// Shared-memory slots its process's items hold now (process workers).
    pub(crate) shm_slots_in_use: Arc<std::sync::atomic::AtomicUsize>,
}

impl WorkerStatus {
    /// Records that the worker waits `wait` before its next start (`None`:
    /// no longer waiting).
    pub(crate) fn set_backoff(&self, wait: Option<std::time::Duration>) {
        let until = wait
            .and_then(|w| std::time::SystemTime::now().checked_add(w))
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        self.backoff_until_unix_ms.store(until, Relaxed);
    }

    /// Records how the worker's last process ended.
    pub(crate) fn set_last_exit(&self, how: impl Into<String>) {
        *lock_std(&self.last_exit) = Some(how.into());
    }

    /// How the worker's last process ended, if one did.
    pub fn last_exit(&self) -> Option<String> {
        lock_std(&self.last_exit).clone()
    }

    /// A status for worker `index` pinned to `cpus`, not yet alive.
    pub fn new(index: usize, cpus: CpuAffinity) -> Arc<Self> {
        Arc::new(WorkerStatus {
            index,
            cpus,
            pid: AtomicU32::new(0),
            alive: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
            items: AtomicU64::new(0),
            backoff_until_unix_ms: AtomicU64::new(0),
            last_exit: std::sync::Mutex::new(None),
            shm_slots_in_use: Arc::default(),
        })
    }

    /// Index within its servlet.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Marks the worker running (with its process id, 0 for a thread) or
    /// stopped: for servlets written outside the crate.
    pub fn set_running(&self, running: bool, pid: u32) {
        self.pid.store(if running { pid } else { 0 }, Relaxed);
        self.alive.store(running, Relaxed);
    }

    /// Counts `n` items handled by the worker.
    pub fn record_items(&self, n: u64) {
        self.items.fetch_add(n, Relaxed);
    }

    /// A copy of the worker's state.
    pub fn snapshot(&self) -> WorkerSnapshot {
        let pid = self.pid.load(Relaxed);
        WorkerSnapshot {
            index: self.index,
            pid: (pid != 0).then_some(pid),
            cpus: self.cpus.cpus().map(<[usize]>::to_vec),
            alive: self.alive.load(Relaxed),
            healthy: self.healthy.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            items: self.items.load(Relaxed),
            backoff_until_unix_ms: match self.backoff_until_unix_ms.load(Relaxed) {
                0 => None,
                t => Some(t),
            },
            last_exit: self.last_exit(),
            shm_slots_in_use: self.shm_slots_in_use.load(Relaxed),
        }
    }
}

type DepthFn = Box<dyn Fn() -> usize + Send + Sync>;

/// A servlet's node in the running servlet tree.
pub struct ServletNode {
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) stats: Arc<ServletStats>,
    pub(crate) workers: Vec<Arc<WorkerStatus>>,
    pub(crate) members: Vec<ServletNode>,
    pub(crate) queue_depth: Option<DepthFn>,
}

impl ServletNode {
    /// A node of the given kind (`"process"`, `"thread"`, `"sequential"`, ...).
    pub fn new(kind: &'static str, name: impl Into<String>) -> Self {
        ServletNode {
            kind,
            name: name.into(),
            stats: Arc::default(),
            workers: Vec::new(),
            members: Vec::new(),
            queue_depth: None,
        }
    }

    /// Adds a member servlet's node.
    pub fn with_member(mut self, member: ServletNode) -> Self {
        self.members.push(member);
        self
    }

    /// Adds a worker.
    pub fn with_worker(mut self, worker: Arc<WorkerStatus>) -> Self {
        self.workers.push(worker);
        self
    }

    /// Reports the depth of the servlet's input queue.
    pub fn with_queue_depth(mut self, f: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.queue_depth = Some(Box::new(f));
        self
    }

    /// The servlet's counters.
    pub fn stats(&self) -> &Arc<ServletStats> {
        &self.stats
    }

    /// A serialisable copy of this node and its members.
    pub fn snapshot(&self) -> ServletSnapshot {
        let s = &self.stats;
        ServletSnapshot {
            kind: self.kind.to_string(),
            name: self.name.clone(),
            items_in: s.items_in.load(Relaxed),
            items_ok: s.items_ok.load(Relaxed),
            items_err: s.items_err.load(Relaxed),
            skipped: s.skipped.load(Relaxed),
            handoffs: s.handoffs.load(Relaxed),
            batches: s.batches.load(Relaxed),
            batch_sizes: s.batch_sizes.snapshot(),
            crashes: s.crashes.load(Relaxed),
            restarts: s.restarts.load(Relaxed),
            latency: s.stage_latency(),
            queue_depth: self.queue_depth.as_ref().map(|f| f()),
            workers: self.workers.iter().map(|w| w.snapshot()).collect(),
            members: self.members.iter().map(ServletNode::snapshot).collect(),
        }
    }

    /// Visits every worker status in the tree with its servlet's name.
    pub(crate) fn for_each_named_worker(&self, f: &mut dyn FnMut(&str, &WorkerStatus)) {
        for w in &self.workers {
            f(&self.name, w);
        }
        for m in &self.members {
            m.for_each_named_worker(f);
        }
    }
}

/// A copy of one servlet's state and counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServletSnapshot {
    /// `"process"`, `"thread"`, `"sequential"`, `"ensemble"`, `"switch"`, `"passthrough"`.
    pub kind: String,
    /// Worker name (simple servlets) or a descriptive name.
    pub name: String,
    /// Items that entered.
    pub items_in: u64,
    /// Items that produced a value.
    pub items_ok: u64,
    /// Items that failed here.
    pub items_err: u64,
    /// Items skipped as cancelled.
    pub skipped: u64,
    /// Items handed straight to an idle worker process.
    pub handoffs: u64,
    /// Batch calls.
    pub batches: u64,
    /// Batch sizes.
    pub batch_sizes: HistogramSnapshot,
    /// Worker crashes.
    pub crashes: u64,
    /// Worker restarts.
    pub restarts: u64,
    /// Per-stage latency (simple servlets; empty for compound ones).
    #[serde(default)]
    pub latency: StageLatency,
    /// Items waiting in the input queue.
    pub queue_depth: Option<usize>,
    /// The workers.
    pub workers: Vec<WorkerSnapshot>,
    /// Member servlets (compound servlets).
    pub members: Vec<ServletSnapshot>,
}

/// A copy of one worker's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// Index within its servlet.
    pub index: usize,
    /// Process id, for running process workers.
    pub pid: Option<u32>,
    /// Pinned CPUs, if pinned.
    pub cpus: Option<Vec<usize>>,
    /// Running now.
    pub alive: bool,
    /// Not given up on.
    pub healthy: bool,
    /// Restarts so far.
    pub restarts: u64,
    /// Items handled.
    pub items: u64,
    /// While waiting out a restart back-off: until when (milliseconds since
    /// the Unix epoch).
    #[serde(default)]
    pub backoff_until_unix_ms: Option<u64>,
    /// How its last process ended, if one did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Shared-memory slots (large values) its process's items hold now;
    /// 0 for thread workers.
    #[serde(default)]
    pub shm_slots_in_use: usize,
}

impl std::fmt::Debug for ServletNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServletNode")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("workers", &self.workers.len())
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}
