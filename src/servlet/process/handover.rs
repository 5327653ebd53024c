//! Who reads a worker process's socket: the state machine of the reader
//! hand-over (drawn in this folder's README).
//!
//! ```text
//!            park_if(idle)                 claim()
//!   Thread ───────────────▶ Parked ─────────────────▶ Caller
//!     ▲   ◀─────────────────  │  ◀──────────────────── │
//!     │    ensure_reader()    │   release(idle)        │
//!     │    wake(hang-up)      │                        │
//!     └────────────────────────────────────────────────┘
//!                      release(not idle, or ended)
//! ```
//!
//! The rule that makes it safe: the reader thread parks, and a caller
//! leaves the reading to nobody, only after seeing the worker hold no items
//! *under the holder's lock*; senders count their items (see `ledger.rs`)
//! before looking at the holder under the same lock. So whenever the worker
//! holds an item, someone reads or is about to. The socket and the eventfds
//! live in `reader.rs`; this file is the pure state, checked by the loom
//! model below.

use crate::sync::{AtomicBool, Mutex, Ordering, lock};

/// Who reads the worker's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    /// The reader thread reads (or is about to).
    Thread,
    /// Nobody: the worker holds nothing; the thread watches for the end of
    /// the connection and for a wake-up.
    Parked,
    /// A caller reads for its own item.
    Caller,
}

/// What the parked reader thread does after a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woken {
    /// Read again.
    Read,
    /// Stay parked (watching the connection's end as before).
    Stay,
    /// Stay parked while a caller reads, no longer watching the connection's
    /// end (already seen; the caller gives the reading back to the thread).
    StayDeaf,
}

/// See the module docs.
pub(super) struct Handover {
    holder: Mutex<Holder>,
    /// The thread saw the connection end while a caller read: the caller
    /// must give the reading back to the thread (changed under `holder`).
    hung_up: AtomicBool,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            holder: Mutex::new(Holder::Thread),
            hung_up: AtomicBool::new(false),
        }
    }
}

impl Handover {
    /// The reader thread, having found the worker idle: parks if `idle()` is
    /// still true under the lock. Returns whether it parked.
    pub(super) fn park_if(&self, idle: impl FnOnce() -> bool) -> bool {
        let mut h = lock(&self.holder);
        if idle() {
            *h = Holder::Parked;
            true
        } else {
            false
        }
    }

    /// A sender, after counting its items: makes sure someone reads.
    /// Returns true if the parked thread must be woken.
    pub(super) fn ensure_reader(&self) -> bool {
        let mut h = lock(&self.holder);
        if *h == Holder::Parked {
            *h = Holder::Thread;
            true
        } else {
            false
        }
    }

    /// A caller claims the reading, if nobody reads.
    pub(super) fn claim(&self) -> bool {
        let mut h = lock(&self.holder);
        if *h == Holder::Parked {
            *h = Holder::Caller;
            true
        } else {
            false
        }
    }

    /// A caller gives the reading back: to nobody if `idle()` (checked under
    /// the lock) and the thread did not see the connection end, else to the
    /// thread. Returns true if the thread must be woken.
    pub(super) fn release(&self, idle: impl FnOnce() -> bool) -> bool {
        let mut h = lock(&self.holder);
        if !self.hung_up.load(Ordering::Relaxed) && idle() {
            *h = Holder::Parked;
            false
        } else {
            *h = Holder::Thread;
            true
        }
    }

    /// The parked thread was woken (`hangup`: it saw the connection end).
    pub(super) fn woken(&self, hangup: bool) -> Woken {
        let mut h = lock(&self.holder);
        match *h {
            Holder::Thread => Woken::Read,
            Holder::Parked if hangup => {
                *h = Holder::Thread;
                Woken::Read
            }
            Holder::Parked => Woken::Stay,
            Holder::Caller if hangup => {
                self.hung_up.store(true, Ordering::Relaxed);
                Woken::StayDeaf
            }
            Holder::Caller => Woken::Stay,
        }
    }

    /// The thread cannot wait: it reads instead.
    pub(super) fn force_thread(&self) {
        *lock(&self.holder) = Holder::Thread;
    }

    #[cfg(all(test, mpserver_loom))]
    fn holder(&self) -> Holder {
        *lock(&self.holder)
    }
}

/// Loom model: `RUSTFLAGS="--cfg mpserver_loom" cargo test --lib loom_`.
#[cfg(all(test, mpserver_loom))]
mod loom_models {
    use super::*;
    use crate::servlet::process::ledger::{InFlight, Ledger};
    use crate::sync::Arc;

    struct Live;
    impl crate::servlet::plumbing::Ticket for Live {
        fn is_cancelled(&self) -> bool {
            false
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// The reader thread parks, a sender sends an item, and a caller claims
    /// and gives back the reading, in any order: at the end, if the worker
    /// holds an item, the reading is not left to nobody.
    #[test]
    fn loom_someone_reads_whenever_items_are_held() {
        loom::model(|| {
            let hand = Arc::new(Handover::default());
            let ledger = Arc::new(Ledger::default());
            let sender = {
                let (hand, ledger) = (hand.clone(), ledger.clone());
                loom::thread::spawn(move || {
                    ledger.reserve(1);
                    ledger.add([(1, InFlight::new(std::sync::Arc::new(Live), None))]);
                    hand.ensure_reader();
                })
            };
            let caller = {
                let (hand, ledger) = (hand.clone(), ledger.clone());
                loom::thread::spawn(move || {
                    if hand.claim() {
                        hand.release(|| ledger.held() == 0);
                    }
                })
            };
            // The reader thread finds the worker idle and parks.
            if ledger.held() == 0 {
                hand.park_if(|| ledger.held() == 0);
            }
            sender.join().unwrap();
            caller.join().unwrap();
            assert_eq!(ledger.held(), 1);
            assert_ne!(
                hand.holder(),
                Holder::Parked,
                "an item held and nobody reads"
            );
        });
    }
}
