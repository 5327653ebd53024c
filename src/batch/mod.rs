//! Batch formation, shared by thread and process servlets.
//!
//! A batch starts with the first item that arrives and closes when it holds
//! `batch_size` items or when `batch_wait_time` has passed since that first
//! item, whichever comes first. A wait of zero takes only what is already
//! queued. The wait is a channel deadline (`recv_deadline`), never a sleep.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// Default `batch_wait_time` when `batch_size > 1` (the seed's 10 ms).
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(10);

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchPolicy {
    /// 0: no batching (single calls); n > 0: batch form with up to n items.
    pub(crate) size: usize,
    /// Longest wait for the batch to fill, from the first item.
    pub(crate) wait: Duration,
}

impl BatchPolicy {
    pub(crate) fn new(size: usize, wait: Option<Duration>) -> Self {
        let wait = match wait {
            Some(w) => w,
            None if size > 1 => DEFAULT_BATCH_WAIT,
            None => Duration::ZERO,
        };
        BatchPolicy { size, wait }
    }

    pub(crate) fn batched(&self) -> bool {
        self.size > 0
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
                crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
                crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
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

/// The deadline of a batch whose first item arrived at `start`.
pub(crate) fn deadline(policy: &BatchPolicy, start: Instant) -> Option<Instant> {
    (!policy.wait.is_zero()).then(|| start + policy.wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seed() {
        assert_eq!(BatchPolicy::new(0, None).wait, Duration::ZERO);
        assert_eq!(BatchPolicy::new(1, None).wait, Duration::ZERO);
        assert_eq!(BatchPolicy::new(8, None).wait, DEFAULT_BATCH_WAIT);
        assert!(!BatchPolicy::new(0, None).batched());
        assert!(BatchPolicy::new(1, None).batched());
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
        let t = std::thread::spawn(move || {
            tx.send(1).unwrap();
            // keep the sender alive past the deadline
            std::thread::park_timeout(Duration::from_millis(200));
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
        t.thread().unpark();
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
}
