//! Counting without contention: sharded counters and log-linear histograms,
//! and the clock an item carries from stage to stage.
//!
//! A counter or histogram updated by many threads at once would bounce one
//! cache line between their cores on every update. Here each has one shard
//! per thread that updates it (`thread_local::ThreadLocal`), on cache lines
//! of its own; only its thread writes a shard, so an update is a plain load
//! and store, without a locked read-modify-write. Reading sums the shards:
//! reads are rare (a scrape, a snapshot), updates are on the hot path. A
//! thread's shards live as long as the counter or histogram.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

use super::HistogramSnapshot;

/// One cache-line-aligned atomic (128 bytes: adjacent-line prefetchers pull
/// pairs of 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter split into per-thread shards (see the module docs). Its
/// methods mirror an `AtomicU64`'s; the ordering argument is accepted for
/// that symmetry and every operation is relaxed, as counters need.
#[derive(Debug, Default)]
pub struct Counter {
    shards: ThreadLocal<Padded>,
}

impl Counter {
    /// This thread's shard: written by this thread only.
    fn mine(&self) -> &AtomicU64 {
        &self.shards.get_or(Padded::default).0
    }

    /// Adds `n`.
    pub fn fetch_add(&self, n: u64, _: Ordering) {
        add(self.mine(), n);
    }

    /// Subtracts `n` (an addition that is taken back; the total never goes
    /// below what was added).
    pub fn fetch_sub(&self, n: u64, _: Ordering) {
        add(self.mine(), n.wrapping_neg());
    }

    /// The total.
    pub fn load(&self, _: Ordering) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |t, s| t.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

/// Adds `n` to a shard that only this thread writes: a plain load and
/// store, no locked read-modify-write (readers on other threads see either
/// value, never a torn one).
fn add(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Sub-buckets per power of two, as a bit count (16 sub-buckets).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values from `2^MAX_EXP` up share the last bucket.
const MAX_EXP: u32 = 40;
/// Buckets of a [`Histogram`].
pub(crate) const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS) as usize * SUB;

/// The bucket of `v` (see [`Histogram`]).
fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    if e >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// The inclusive bounds of bucket `i` (the last one also takes every larger
/// value).
pub(crate) fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64);
    }
    let k = i - SUB;
    let shift = (k / SUB) as u32;
    let lo = ((SUB + k % SUB) as u64) << shift;
    (lo, lo + (1u64 << shift) - 1)
}

#[derive(Debug)]
#[repr(align(128))]
struct HistShard {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl Default for HistShard {
    fn default() -> Self {
        HistShard {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

/// A lock-free, sharded histogram with log-linear buckets, like an HDR
/// histogram with 4 significant bits: values below 16 each have a bucket of
/// their own, and every power of two above is cut into 16 equal buckets, so
/// a bucket's width is at most 1/16 of its lower bound (a relative error
/// under 6.25%) up to 2^40 (for nanoseconds: about 18 minutes; larger
/// values share the last bucket). An 18 µs latency recorded in nanoseconds
/// lands in `[17408, 18431]` ns.
///
/// ```
/// let h = mpserver::metrics::Histogram::default();
/// h.record(18_000);
/// let s = h.snapshot();
/// assert_eq!((s.count, s.sum), (1, 18_000));
/// assert_eq!(s.bounds, [18_431]);
/// ```
#[derive(Debug, Default)]
pub struct Histogram {
    shards: ThreadLocal<HistShard>,
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, v: u64) {
        self.local().record(v);
    }

    /// This thread's shard, looked up once to record many values (e.g.
    /// every item of a frame or a batch).
    pub(crate) fn local(&self) -> LocalHistogram<'_> {
        LocalHistogram {
            shard: self.shards.get_or(HistShard::default),
            _not_send: std::marker::PhantomData,
        }
    }

    /// A consistent-enough copy for reporting: the buckets that hold values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS];
        let mut sum = 0u64;
        for s in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(&s.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(s.sum.load(Ordering::Relaxed));
        }
        let mut snap = HistogramSnapshot {
            sum,
            ..HistogramSnapshot::default()
        };
        for (i, c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let hi = if i == BUCKETS - 1 {
                u64::MAX
            } else {
                bucket_bounds(i).1
            };
            snap.bounds.push(hi);
            snap.counts.push(*c);
            snap.count += c;
        }
        snap
    }
}

/// One thread's shard of a [`Histogram`] (see [`Histogram::local`]). Only
/// the thread that looked it up may write it, so it is neither `Send` nor
/// `Sync`.
pub(crate) struct LocalHistogram<'a> {
    shard: &'a HistShard,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl LocalHistogram<'_> {
    /// Records one value.
    pub(crate) fn record(&self, v: u64) {
        add(&self.shard.buckets[bucket_of(v)], 1);
        add(&self.shard.sum, v);
    }
}

/// When an item entered the servlet it is in now: the server's tickets
/// carry one (see [`Ticket::clock`](crate::servlet::plumbing::Ticket::clock)),
/// each simple servlet sets it as an item enters and reads it to time the
/// item's stages. Inside an ensemble the members share the item's clock, so
/// a member's queue time counts from the latest member's entry (members are
/// entered one after another, at once).
#[derive(Debug, Default)]
pub struct StageClock(AtomicU64);

/// The origin of [`StageClock`] readings.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` in the units of [`StageClock`] readings: nanoseconds from their
/// origin, plus one (0 means "never entered").
pub(crate) fn stage_ns(at: Instant) -> u64 {
    super::nanos(at.saturating_duration_since(epoch())) + 1
}

impl StageClock {
    /// The item enters a servlet now.
    pub fn enter(&self) {
        self.enter_at(Instant::now());
    }

    /// The item entered a servlet at `at`.
    pub fn enter_at(&self, at: Instant) {
        self.0.store(stage_ns(at), Ordering::Relaxed);
    }

    /// When the item entered its current servlet, if it did, as
    /// [`stage_ns`] gives it: stage durations are then integer
    /// differences (per-item timing on hot paths).
    pub(crate) fn entered_ns(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }

    /// When the item entered its current servlet, if it did.
    pub fn entered(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + Duration::from_nanos(ns - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_with_bounded_relative_width() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(lo, next, "bucket {i} starts where {} ended", i.max(1) - 1);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            if lo >= SUB as u64 {
                assert!((hi + 1 - lo) * 16 <= lo, "bucket {i}: [{lo}, {hi}]");
            }
            next = hi + 1;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn an_18_microsecond_latency_lands_within_ten_percent() {
        // Before: power-of-two buckets put 18 µs under "<= 31 µs" (+72%).
        for v in [18_000u64, 18, 18_000_000] {
            let (lo, hi) = bucket_bounds(bucket_of(v));
            assert!(lo <= v && v <= hi);
            let err = |b: u64| (b as f64 - v as f64).abs() / v as f64;
            assert!(err(lo) <= 0.10 && err(hi) <= 0.10, "{v}: [{lo}, {hi}]");
        }
        let h = Histogram::default();
        for _ in 0..3 {
            h.record(18_000);
        }
        h.record(900_000);
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        let p50 = s.quantile(0.5);
        assert!((18_000..=19_800).contains(&p50), "p50 {p50}");
    }

    #[test]
    fn shards_add_up_across_threads() {
        let c = std::sync::Arc::new(Counter::default());
        let h = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, h) = (c.clone(), h.clone());
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        c.fetch_add(2, Ordering::Relaxed);
                        h.record(i);
                    }
                    c.fetch_sub(1, Ordering::Relaxed);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.load(Ordering::Relaxed), 8 * 2000 - 8);
        let s = h.snapshot();
        assert_eq!(s.count, 8000);
        assert_eq!(s.sum, 8 * (0..1000u64).sum::<u64>());
    }

    #[test]
    fn the_clock_reads_back_what_was_set() {
        let c = StageClock::default();
        assert!(c.entered().is_none());
        epoch();
        let t = Instant::now();
        c.enter_at(t);
        let back = c.entered().unwrap();
        assert!(back <= t && t - back < Duration::from_micros(1));
    }
}
