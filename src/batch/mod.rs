//! Batch formation, shared by thread and process servlets.
//!
//! Two policies decide when a batch is complete ([`Batching`]):
//!
//! * **Fixed** (the seed's): a batch starts with the first item the worker
//!   takes and closes when it holds `batch_size` items or when
//!   `batch_wait_time` has passed since that first item, whichever comes
//!   first. A wait of zero takes only what is already queued.
//! * **Adaptive** (the default when no `batch_wait_time` is given): a worker
//!   that is idle takes what is queued at once and starts; it never waits for
//!   company. Under load, items queue up while the worker is busy, so the
//!   next batch is larger: batches grow toward `batch_size` with the load. A
//!   process worker is sent its next batch while it still works on the
//!   current one; that batch is held open (filling from the queue) until the
//!   worker is predicted to be free, from a model of its measured service
//!   time ([`ServiceModel`]: an EWMA fit of a per-batch overhead plus a
//!   per-item cost). An optional latency target bounds both the batch size
//!   (its predicted service time) and any hold.
//!
//! Every wait is a channel deadline (`recv_deadline`, or a `Select` over two
//! queues with a deadline), never a sleep or a poll.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, TryRecvError};

/// Default `batch_wait_time` when `batch_size > 1` (the seed's 10 ms): the
/// fixed policy's window, and the adaptive policy's longest hold while a
/// worker's service time is not yet measured.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(10);

/// A batch sent ahead to a busy process worker leaves this long before the
/// worker is predicted to be free, so that it is there when the worker is
/// (the crossing takes tens of microseconds).
const SEND_AHEAD: Duration = Duration::from_micros(200);

/// How a batched servlet (`batch_size > 1`) decides that a batch is complete.
///
/// Set with `batching` on [`ProcessServlet`](crate::ProcessServlet) or
/// [`ThreadServlet`](crate::ThreadServlet). Without it, a servlet given a
/// `batch_wait_time` uses [`Batching::Fixed`] (what it asked for, the seed's
/// semantics) and one without uses [`Batching::Adaptive`].
///
/// ```
/// use std::time::Duration;
/// use mpserver::{worker_fn, Batching, Server, ThreadServlet};
///
/// // A lone request is served at once; under load batches grow to 32.
/// let adaptive = ThreadServlet::new(worker_fn(|x: u32| x + 1))
///     .batch_size(32)
///     .batching(Batching::Adaptive)
///     .batch_latency_target(Duration::from_millis(50));
/// let server = Server::start(adaptive).unwrap();
/// assert_eq!(server.call(1).unwrap(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// The seed's policy: a batch closes when it holds `batch_size` items or
    /// `batch_wait_time` after its first item (default 10 ms), even if the
    /// worker is idle meanwhile.
    Fixed,
    /// An idle worker takes what is queued at once; under load batches grow
    /// with the queue toward `batch_size`; a process worker's next batch is
    /// held open until the worker is predicted to be free (at most
    /// `batch_wait_time` if one is given). An optional latency target
    /// (`batch_latency_target`) bounds the batch size by its predicted
    /// service time, and any hold.
    Adaptive,
}

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchPolicy {
    /// 0: no batching (single calls); n > 0: batch form with up to n items.
    pub(crate) size: usize,
    /// Fixed: the window, from the first item. Adaptive: the longest hold
    /// of a batch for a busy worker whose service time is unknown, and a cap
    /// on any hold if it was given explicitly.
    pub(crate) wait: Duration,
    pub(crate) mode: Batching,
    /// Adaptive: the latency a batch aims to stay within (hold + service).
    pub(crate) target: Option<Duration>,
}

/// Whether the worker a batch is for is working (process workers only: a
/// thread forms its batch when it is idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// The worker holds nothing.
    Idle,
    /// The worker holds items; it is predicted to be free at this instant
    /// (`None`: its service time is not measured yet).
    Until(Option<Instant>),
}

impl BatchPolicy {
    pub(crate) fn new(
        size: usize,
        wait: Option<Duration>,
        mode: Option<Batching>,
        target: Option<Duration>,
    ) -> Self {
        let mode = mode.unwrap_or(if wait.is_some() {
            Batching::Fixed
        } else {
            Batching::Adaptive
        });
        let wait = match wait {
            Some(w) => w,
            None if size > 1 => DEFAULT_BATCH_WAIT,
            None => Duration::ZERO,
        };
        BatchPolicy {
            size,
            wait,
            mode,
            target,
        }
    }

    /// The seed's policy with the given window (tests).
    #[cfg(test)]
    pub(crate) fn fixed(size: usize, wait: Duration) -> Self {
        Self::new(size, Some(wait), Some(Batching::Fixed), None)
    }

    pub(crate) fn batched(&self) -> bool {
        self.size > 0
    }

    fn adaptive(&self) -> bool {
        self.mode == Batching::Adaptive && self.size > 1
    }

    /// The most items the next batch may hold: `size`, and with a latency
    /// target under the adaptive policy, the most whose predicted service
    /// time stays within it (at least one).
    pub(crate) fn limit(&self, model: &ServiceModel) -> usize {
        match self.target {
            Some(t) if self.adaptive() => model.items_within(t).clamp(1, self.size.max(1)),
            _ => self.size,
        }
    }

    /// When filling the batch whose first item was taken at `start` stops
    /// waiting (`None`: take only what is already queued). `busy` says
    /// whether the worker is working; `model` predicts service times.
    pub(crate) fn deadline(
        &self,
        start: Instant,
        busy: Busy,
        model: &ServiceModel,
    ) -> Option<Instant> {
        if !self.batched() || self.size <= 1 {
            return None;
        }
        if !self.adaptive() {
            return (!self.wait.is_zero()).then(|| start + self.wait);
        }
        let free_at = match busy {
            // An idle worker never waits for company.
            Busy::Idle => return None,
            Busy::Until(Some(t)) => t.checked_sub(SEND_AHEAD).unwrap_or(t),
            Busy::Until(None) => start + self.wait,
        };
        let mut end = free_at.min(start + self.wait);
        if let Some(target) = self.target {
            // Hold only as long as the batch can still be served within the
            // target once the worker is free.
            let service = model.cost(self.limit(model)).unwrap_or(Duration::ZERO);
            end = end.min(start + target.saturating_sub(service));
        }
        (end > start).then_some(end)
    }
}

/// A worker's measured service time, as a per-batch overhead plus a per-item
/// cost: `cost(n) = fixed + n * per_item`.
///
/// Fitted by least squares over exponentially weighted moments of the
/// samples (each new sample weighs 1/8), so it follows a worker whose speed
/// drifts. While the batch sizes seen are all alike, the two terms cannot be
/// told apart (and a fit is distrusted if it makes either term negative):
/// the last split stands, scaled to the measured time, or before any, the
/// whole time is taken as per-item cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ServiceModel {
    samples: u64,
    /// Weighted means of n, t (seconds), n², n·t.
    n: f64,
    t: f64,
    nn: f64,
    nt: f64,
    fixed: f64,
    per_item: f64,
}

/// Weight of a new sample.
const ALPHA: f64 = 1.0 / 8.0;

impl ServiceModel {
    /// Records that `items` items (in `batches` calls) took `spent` in all.
    pub(crate) fn observe(&mut self, batches: u64, items: u64, spent: Duration) {
        if batches == 0 || items == 0 {
            return;
        }
        let n = items as f64 / batches as f64;
        let t = spent.as_secs_f64() / batches as f64;
        if self.samples == 0 {
            (self.n, self.t, self.nn, self.nt) = (n, t, n * n, n * t);
        } else {
            self.n += ALPHA * (n - self.n);
            self.t += ALPHA * (t - self.t);
            self.nn += ALPHA * (n * n - self.nn);
            self.nt += ALPHA * (n * t - self.nt);
        }
        self.samples += 1;
        let var = self.nn - self.n * self.n;
        let slope = (self.nt - self.n * self.t) / var;
        if var > 0.25 && (0.0..=self.t / self.n).contains(&slope) {
            self.per_item = slope;
            self.fixed = self.t - slope * self.n;
        } else if self.fixed + self.per_item * self.n > 0.0 {
            // Alike sizes, or a fit thrown off by a change of speed: keep
            // the split, rescaled to the current mean.
            let k = self.t / (self.fixed + self.per_item * self.n);
            self.fixed *= k;
            self.per_item *= k;
        } else {
            self.per_item = self.t / self.n;
            self.fixed = 0.0;
        }
    }

    /// Predicted time of a batch of `n` items (`None` before any sample).
    pub(crate) fn cost(&self, n: usize) -> Option<Duration> {
        (self.samples > 0).then(|| {
            Duration::from_secs_f64((self.fixed + self.per_item * n as f64).clamp(0.0, 3600.0))
        })
    }

    /// The most items whose predicted batch time is within `target`: one if
    /// the overhead alone exceeds it; unbounded before any sample or with no
    /// per-item cost.
    pub(crate) fn items_within(&self, target: Duration) -> usize {
        if self.samples == 0 {
            return usize::MAX;
        }
        let room = target.as_secs_f64() - self.fixed;
        if room <= 0.0 {
            return 1;
        }
        if self.per_item <= 0.0 {
            return usize::MAX;
        }
        (room / self.per_item).floor().min(usize::MAX as f64 / 2.0) as usize
    }
}

/// Outcome of [`fill`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// The batch is complete (full or its wait is over).
    Done,
    /// The channel is disconnected; the batch holds what was left.
    Disconnected,
}

/// Adds items from `rx` to `out` until it holds `max` items or `deadline`
/// passes (`None`: take only what is already queued). `keep` filters items as
/// they arrive (e.g. dropping cancelled ones) without counting them.
pub(crate) fn fill<T>(
    rx: &Receiver<T>,
    out: &mut Vec<T>,
    max: usize,
    deadline: Option<Instant>,
    mut keep: impl FnMut(&T) -> bool,
) -> Fill {
    while out.len() < max {
        let next = match deadline {
            Some(d) => rx.recv_deadline(d),
            None => rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
        };
        match next {
            Ok(item) => {
                if keep(&item) {
                    out.push(item);
                }
            }
            Err(RecvTimeoutError::Timeout) => return Fill::Done,
            Err(RecvTimeoutError::Disconnected) => return Fill::Disconnected,
        }
    }
    Fill::Done
}

/// [`fill`] from two queues: `older` (items put back by another consumer,
/// which go first) and `rx`. Until `deadline` it waits on both at once, so
/// an item that reaches the batch through either queue is taken as soon as
/// it is there (`None`: take only what both hold now). Within each pass,
/// what `older` holds goes before what `rx` holds.
pub(crate) fn fill_two<T>(
    older: &Receiver<T>,
    rx: &Receiver<T>,
    out: &mut Vec<T>,
    max: usize,
    deadline: Option<Instant>,
    mut keep: impl FnMut(&T) -> bool,
) -> Fill {
    let mut select: Option<Select<'_>> = None;
    loop {
        for q in [older, rx] {
            while out.len() < max {
                match q.try_recv() {
                    Ok(item) => {
                        if keep(&item) {
                            out.push(item);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Fill::Disconnected,
                }
            }
        }
        if out.len() >= max {
            return Fill::Done;
        }
        let Some(d) = deadline else {
            return Fill::Done;
        };
        let sel = select.get_or_insert_with(|| {
            let mut s = Select::new();
            s.recv(older);
            s.recv(rx);
            s
        });
        // Ready means an item (or the end) is there, or was: another
        // consumer may take it first, and the loop then waits again.
        if sel.ready_deadline(d).is_err() {
            return Fill::Done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seed() {
        assert_eq!(BatchPolicy::new(0, None, None, None).wait, Duration::ZERO);
        assert_eq!(BatchPolicy::new(1, None, None, None).wait, Duration::ZERO);
        assert_eq!(
            BatchPolicy::new(8, None, None, None).wait,
            DEFAULT_BATCH_WAIT
        );
        assert!(!BatchPolicy::new(0, None, None, None).batched());
        assert!(BatchPolicy::new(1, None, None, None).batched());
        // A wait given explicitly asks for the seed's window.
        let w = Duration::from_millis(3);
        assert_eq!(
            BatchPolicy::new(8, Some(w), None, None),
            BatchPolicy::fixed(8, w)
        );
        assert_eq!(
            BatchPolicy::new(8, None, None, None).mode,
            Batching::Adaptive
        );
    }

    #[test]
    fn zero_wait_takes_only_queued_items() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        let mut out = vec![];
        assert_eq!(fill(&rx, &mut out, 10, None, |_| true), Fill::Done);
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn closes_when_full_without_waiting() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        let mut out = vec![];
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(fill(&rx, &mut out, 4, Some(far), |_| true), Fill::Done);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn waits_until_deadline_for_late_items() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let t = std::thread::spawn(move || {
            tx.send(1).unwrap();
            // Keep the sender alive past the deadline: until the fill below
            // returned (a timed park may end early, or before the fill
            // begins on a loaded machine, and the fill then sees the queue
            // disconnected).
            let _ = done_rx.recv();
        });
        let mut out = vec![];
        let start = Instant::now();
        let r = fill(
            &rx,
            &mut out,
            4,
            Some(start + Duration::from_millis(50)),
            |_| true,
        );
        assert_eq!(r, Fill::Done);
        assert_eq!(out, vec![1]);
        assert!(start.elapsed() >= Duration::from_millis(50));
        drop(done_tx);
        t.join().unwrap();
    }

    #[test]
    fn filter_drops_without_counting() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..6 {
            tx.send(i).unwrap();
        }
        drop(tx);
        let mut out = vec![];
        assert_eq!(
            fill(&rx, &mut out, 10, None, |x| x % 2 == 0),
            Fill::Disconnected
        );
        assert_eq!(out, vec![0, 2, 4]);
    }

    #[test]
    fn two_queues_older_first_and_the_end_of_either_ends_the_fill() {
        let (older_tx, older) = crossbeam_channel::unbounded();
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in [10, 11] {
            tx.send(i).unwrap();
        }
        for i in [0, 1] {
            older_tx.send(i).unwrap();
        }
        let mut out = vec![];
        assert_eq!(
            fill_two(&older, &rx, &mut out, 3, None, |_| true),
            Fill::Done
        );
        assert_eq!(out, vec![0, 1, 10]);
        drop(tx);
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            fill_two(&older, &rx, &mut out, 10, Some(far), |_| true),
            Fill::Disconnected
        );
        assert_eq!(out, vec![0, 1, 10, 11]);
    }

    #[test]
    fn fixed_waits_its_window_even_for_an_idle_worker() {
        let p = BatchPolicy::fixed(8, Duration::from_millis(7));
        let now = Instant::now();
        let m = ServiceModel::default();
        for busy in [Busy::Idle, Busy::Until(None)] {
            assert_eq!(
                p.deadline(now, busy, &m),
                Some(now + Duration::from_millis(7))
            );
        }
        assert_eq!(
            BatchPolicy::fixed(8, Duration::ZERO).deadline(now, Busy::Idle, &m),
            None
        );
    }

    #[test]
    fn adaptive_never_waits_for_an_idle_worker() {
        let p = BatchPolicy::new(8, None, None, Some(Duration::from_secs(1)));
        let now = Instant::now();
        let mut m = ServiceModel::default();
        assert_eq!(p.deadline(now, Busy::Idle, &m), None);
        m.observe(1, 4, Duration::from_millis(4));
        assert_eq!(p.deadline(now, Busy::Idle, &m), None);
    }

    #[test]
    fn adaptive_holds_a_busy_workers_batch_until_it_is_predicted_free() {
        let p = BatchPolicy::new(8, None, Some(Batching::Adaptive), None);
        let now = Instant::now();
        let m = ServiceModel::default();
        // Unmeasured: at most the default window.
        assert_eq!(
            p.deadline(now, Busy::Until(None), &m),
            Some(now + DEFAULT_BATCH_WAIT)
        );
        // Predicted free in 5 ms: sent a little before.
        let free = now + Duration::from_millis(5);
        assert_eq!(
            p.deadline(now, Busy::Until(Some(free)), &m),
            Some(free - SEND_AHEAD)
        );
        // Never beyond an explicit cap.
        let capped = BatchPolicy::new(
            8,
            Some(Duration::from_millis(1)),
            Some(Batching::Adaptive),
            None,
        );
        assert_eq!(
            capped.deadline(now, Busy::Until(Some(free)), &m),
            Some(now + Duration::from_millis(1))
        );
        // Free already: no hold.
        assert_eq!(p.deadline(now, Busy::Until(Some(now)), &m), None);
    }

    #[test]
    fn the_model_separates_overhead_from_per_item_cost() {
        let mut m = ServiceModel::default();
        assert_eq!(m.cost(3), None);
        // 2 ms + 0.2 ms per item, over varied batch sizes.
        for i in 0..200u64 {
            let n = 1 + (i * 7) % 32;
            let t = Duration::from_micros(2000 + 200 * n);
            m.observe(1, n, t);
        }
        let near = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() < 0.05 * us;
        assert!(near(m.cost(1).unwrap(), 2200.0), "{:?}", m.cost(1));
        assert!(near(m.cost(30).unwrap(), 8000.0), "{:?}", m.cost(30));
        // A 5 ms target allows (5 - 2) / 0.2 = 15 items.
        let n = m.items_within(Duration::from_millis(5));
        assert!((14..=15).contains(&n), "{n}");
        let p = BatchPolicy::new(32, None, None, Some(Duration::from_millis(5)));
        assert_eq!(p.limit(&m), n);
        // Without a target, the size.
        assert_eq!(BatchPolicy::new(32, None, None, None).limit(&m), 32);
        // Under the fixed policy the target does not apply.
        let f = BatchPolicy::new(
            32,
            None,
            Some(Batching::Fixed),
            Some(Duration::from_millis(5)),
        );
        assert_eq!(f.limit(&m), 32);
    }

    #[test]
    fn alike_batches_keep_the_split_and_follow_the_speed() {
        let mut m = ServiceModel::default();
        for i in 0..100u64 {
            let n = 1 + i % 9;
            m.observe(1, n, Duration::from_micros(1000 + 100 * n));
        }
        // Then only batches of 4, twice as slow.
        for _ in 0..200 {
            m.observe(1, 4, Duration::from_micros(2 * 1400));
        }
        let c4 = m.cost(4).unwrap().as_secs_f64() * 1e6;
        assert!((c4 - 2800.0).abs() < 100.0, "{c4}");
        let c1 = m.cost(1).unwrap().as_secs_f64() * 1e6;
        assert!(c1 > 1500.0 && c1 < c4, "{c1}");
    }

    #[test]
    fn a_sample_of_several_batches_counts_as_their_mean() {
        let mut m = ServiceModel::default();
        m.observe(2, 8, Duration::from_millis(10));
        assert_eq!(m.cost(4), Some(Duration::from_millis(5)));
    }
}
