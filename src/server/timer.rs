//! The server's deadline keeper: one thread, one min-heap of deadlines.
//!
//! Deadlines are enforced here rather than by callers, so blocking and async
//! callers get the same time-outs without any particular async runtime: when a
//! deadline passes, the request is completed with a timeout error (waking its
//! caller) and marked cancelled (so workers skip it).
//!
//! Entries hold weak links; finished requests are swept out when the heap grows
//! past twice its size after the last sweep, so memory stays proportional to
//! the requests in flight.

use crate::sync::lock_std;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Something with a deadline.
pub(crate) trait Expire: Send + Sync {
    /// Called once the deadline has passed.
    fn expire(&self);
    /// Start time and limit, if still pending (for `debug_info`).
    fn pending_since(&self) -> Option<(Instant, Duration)> {
        None
    }
    /// Called when the server stops with this still registered.
    fn abandon(&self) {}
}

struct Entry {
    at: Instant,
    seq: u64,
    target: Weak<dyn Expire>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct State {
    heap: BinaryHeap<Entry>,
    seq: u64,
    sweep_at: usize,
    stopped: bool,
}

/// The deadline keeper.
pub(crate) struct Timer {
    state: Mutex<State>,
    cv: Condvar,
}

const MIN_SWEEP: usize = 1024;

impl Timer {
    pub(crate) fn new() -> Self {
        Timer {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                seq: 0,
                sweep_at: MIN_SWEEP,
                stopped: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock_std(&self.state)
    }

    /// Registers `target` to expire at `at`.
    pub(crate) fn add(&self, at: Instant, target: Weak<dyn Expire>) {
        let mut s = self.lock();
        if s.stopped {
            // The server has stopped (a caller raced the shutdown): nothing
            // will ever expire this, so it is abandoned at once.
            drop(s);
            if let Some(t) = target.upgrade() {
                t.abandon();
            }
            return;
        }
        s.seq += 1;
        let seq = s.seq;
        let earliest = s.heap.peek().is_none_or(|e| at < e.at);
        s.heap.push(Entry { at, seq, target });
        if s.heap.len() >= s.sweep_at {
            s.heap.retain(|e| e.target.strong_count() > 0);
            s.sweep_at = (2 * s.heap.len()).max(MIN_SWEEP);
        }
        drop(s);
        if earliest {
            self.cv.notify_one();
        }
    }

    /// Runs until [`Timer::stop`].
    pub(crate) fn run(&self) {
        let mut s = self.lock();
        loop {
            if s.stopped {
                return;
            }
            let now = Instant::now();
            match s.heap.peek() {
                None => {
                    s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
                Some(e) if e.at <= now => {
                    let e = s.heap.pop();
                    drop(s);
                    if let Some(t) = e.and_then(|e| e.target.upgrade()) {
                        t.expire();
                    }
                    s = self.lock();
                }
                Some(e) => {
                    let wait = e.at - now;
                    s = self
                        .cv
                        .wait_timeout(s, wait)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }

    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.cv.notify_all();
    }

    /// Empties the heap, calling [`Expire::abandon`] on every live entry.
    /// Call after [`Timer::stop`]: entries added later are abandoned by
    /// [`Timer::add`] itself.
    pub(crate) fn abandon_all(&self) {
        let heap = std::mem::take(&mut self.lock().heap);
        for e in heap {
            if let Some(t) = e.target.upgrade() {
                t.abandon();
            }
        }
    }

    /// Start times and limits of the oldest pending entries.
    pub(crate) fn oldest(&self, n: usize) -> Vec<(Instant, Duration)> {
        let targets: Vec<_> = self.lock().heap.iter().map(|e| e.target.clone()).collect();
        let mut v: Vec<_> = targets
            .iter()
            .filter_map(|t| t.upgrade()?.pending_since())
            .collect();
        v.sort_by_key(|(s, _)| *s);
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    struct Flag(AtomicBool, crossbeam_channel::Sender<()>);
    impl Expire for Flag {
        fn expire(&self) {
            self.0.store(true, SeqCst);
            let _ = self.1.send(());
        }
    }

    #[test]
    fn fires_in_deadline_order_and_skips_dropped() {
        let timer = Arc::new(Timer::new());
        let t2 = timer.clone();
        let th = std::thread::spawn(move || t2.run());
        let (tx, rx) = crossbeam_channel::unbounded();
        let now = Instant::now();
        let late = Arc::new(Flag(AtomicBool::new(false), tx.clone()));
        let early = Arc::new(Flag(AtomicBool::new(false), tx.clone()));
        let gone = Arc::new(Flag(AtomicBool::new(false), tx));
        timer.add(
            now + Duration::from_millis(60),
            Arc::downgrade(&late) as Weak<dyn Expire>,
        );
        timer.add(
            now + Duration::from_millis(20),
            Arc::downgrade(&early) as Weak<dyn Expire>,
        );
        timer.add(
            now + Duration::from_millis(10),
            Arc::downgrade(&gone) as Weak<dyn Expire>,
        );
        drop(gone);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(early.0.load(SeqCst));
        assert!(!late.0.load(SeqCst));
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(late.0.load(SeqCst));
        assert!(now.elapsed() >= Duration::from_millis(60));
        timer.stop();
        th.join().unwrap();
    }
}
