//! Admission: the server's capacity, who gets room first, and waiting for it.
//!
//! Every request (a blocking call, a submitted or async call, an item of
//! either kind of stream) holds one unit of capacity from admission until
//! its item has left the flow. This module is the only place that counts
//! them, decides who gets room, and lets callers wait for it.
//!
//! # The rules
//!
//! * **First come, first served.** Callers that wait for room stand in one
//!   line. A unit that comes back goes to the first caller in line, handed
//!   to it directly ([`Admission::release`]); it never returns to the free
//!   pool while someone waits. So a newcomer that does not wait
//!   ([`Admission::try_acquire`], the back-pressure path and a stream
//!   refilling its window) finds free room only when nobody is in line: it
//!   cannot overtake a waiter, and it is refused only when every unit is
//!   really held (by requests, or handed to waiters).
//! * **A waiter that is not polled holds at most the unit it was handed.**
//!   Handing room to the first in line does not depend on that waiter
//!   running: a task that was polled once and then parked (or forgotten)
//!   gets one unit assigned and everyone behind it is served with the next
//!   units. That unit comes back at the waiter's deadline
//!   ([`Waiter::expire`], which the server's timer calls for async waiters),
//!   when the waiter gives up, or when it is dropped: room handed to a
//!   waiter that never wakes is lost for at most that waiter's time limit.
//! * **Closing** ([`Admission::close`], at the start of a shutdown) turns
//!   every waiter away at once and refuses newcomers: a drain waits only for
//!   work that was admitted.
//!
//! # Structure
//!
//! A unit is in exactly one place: free (`free`), handed to a seat in line
//! that has not taken it yet (`Granted`), or held by a [`Permit`]. `free`
//! only goes up under the line's lock and only while the line is empty;
//! taking a free unit without waiting is a lock-free decrement. A waiter
//! joins the line under the lock after a last look at `free`, so a unit
//! released in between is never missed. Releasing a unit takes the line's
//! lock even when nobody waits: a lock-free fast path for an empty line
//! (a waiter count checked before and after returning the unit) saved
//! 11 ns per acquire-and-release on one thread and 20–28 ns with two to four
//! threads contending (a standalone micro-benchmark, release build, this
//! machine: 53 → 42, 66 → 46, 90 → 62 ns), against tens of microseconds per
//! request; not worth a second path through the protocol, and a unit
//! briefly free while someone waits, which a newcomer could take ahead of
//! the line. The primitives come from
//! [`crate::sync`], and the loom models at the end of this file explore the
//! interleavings of releasing, joining, expiring, leaving and closing.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::{Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, lock};

/// Counts the units of the server's capacity and serves waiters in turn.
/// A cheap handle: clones share the same units.
#[derive(Clone)]
pub(crate) struct Admission(Arc<Units>);

/// The shared state behind an [`Admission`].
pub(crate) struct Units {
    max: usize,
    /// Units nobody holds and nobody was handed.
    free: AtomicUsize,
    /// Set by [`Admission::close`]: nobody is admitted any more.
    closed: AtomicBool,
    line: Mutex<Line>,
}

/// The callers waiting for room, first come first.
struct Line {
    next_id: u64,
    seats: VecDeque<(u64, Arc<Seat>)>,
}

/// One caller's place in line.
struct Seat {
    state: Mutex<SeatState>,
    cv: Condvar,
}

struct SeatState {
    id: u64,
    status: Status,
    waker: Option<Waker>,
}

/// Where a seat is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// In line.
    Waiting,
    /// Handed a unit that it has not taken yet.
    Granted,
    /// Took its unit (as a [`Permit`]).
    Taken,
    /// Its deadline passed before it took a unit.
    Expired,
    /// The admission closed before it took a unit.
    Closed,
    /// Dropped before it took a unit.
    Left,
}

/// Why a caller was not admitted without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every unit is held (or handed to a waiter).
    Full,
    /// The server no longer admits anyone.
    Closed,
}

/// Why a waiter got no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    /// Its deadline passed.
    Expired,
    /// The server no longer admits anyone.
    Closed,
}

impl Admission {
    /// An admission with `max` units, all free.
    pub(crate) fn new(max: usize) -> Self {
        Admission(Arc::new(Units {
            max,
            free: AtomicUsize::new(max),
            closed: AtomicBool::new(false),
            line: Mutex::new(Line {
                next_id: 0,
                seats: VecDeque::new(),
            }),
        }))
    }

    /// The capacity.
    pub(crate) fn max(&self) -> usize {
        self.0.max
    }

    /// Units held by requests or handed to waiters.
    pub(crate) fn used(&self) -> usize {
        self.0
            .max
            .saturating_sub(self.0.free.load(Ordering::Acquire))
    }

    /// Takes a free unit if there is one. Free room exists only while
    /// nobody is in line, so this never overtakes a waiter.
    pub(crate) fn try_acquire(&self) -> Result<Permit, Refused> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        if self.take_free() {
            Ok(Permit(self.clone()))
        } else {
            Err(Refused::Full)
        }
    }

    fn take_free(&self) -> bool {
        self.0
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1))
            .is_ok()
    }

    /// Joins the line (or, if room is free and nobody waits, gets it at
    /// once). Wait on the returned [`Waiter`] with [`Waiter::wait`] or
    /// [`Waiter::poll`]; dropping it leaves the line and passes on room it
    /// was handed.
    pub(crate) fn join(&self) -> Waiter {
        let mut line = lock(&self.0.line);
        let id = line.next_id;
        line.next_id += 1;
        let status = if self.0.closed.load(Ordering::Acquire) {
            Status::Closed
        } else if line.seats.is_empty() && self.take_free() {
            Status::Granted
        } else {
            Status::Waiting
        };
        let seat = Arc::new(Seat {
            state: Mutex::new(SeatState {
                id,
                status,
                waker: None,
            }),
            cv: Condvar::new(),
        });
        if status == Status::Waiting {
            line.seats.push_back((id, seat.clone()));
        }
        drop(line);
        Waiter {
            admission: self.clone(),
            seat,
        }
    }

    /// Returns a unit: to the first caller in line, else to the free pool.
    fn release(&self) {
        let mut line = lock(&self.0.line);
        let waker = self.hand_on(&mut line);
        drop(line);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Gives one unit to the first seat in line (returning its waker, to
    /// wake once the locks are released), or to the free pool if the line
    /// is empty.
    fn hand_on(&self, line: &mut Line) -> Option<Waker> {
        while let Some((_, seat)) = line.seats.pop_front() {
            let mut st = lock(&seat.state);
            // Seats leave the line under its lock when they stop waiting,
            // so every seat found here waits; the check is for safety.
            if st.status == Status::Waiting {
                st.status = Status::Granted;
                let waker = st.waker.take();
                drop(st);
                seat.cv.notify_one();
                return waker;
            }
        }
        self.0.free.fetch_add(1, Ordering::AcqRel);
        None
    }

    /// Takes `seat` out of line with the final status `to` (unless it
    /// already got an outcome); room it was handed and did not take is
    /// passed on. Returns the wakers to wake.
    fn leave(&self, seat: &Seat, to: Status) -> [Option<Waker>; 2] {
        let mut line = lock(&self.0.line);
        let mut st = lock(&seat.state);
        match st.status {
            Status::Waiting => {
                let id = st.id;
                line.seats.retain(|(i, _)| *i != id);
                st.status = to;
                let own = st.waker.take();
                drop(st);
                seat.cv.notify_one();
                [own, None]
            }
            Status::Granted => {
                st.status = to;
                let own = st.waker.take();
                drop(st);
                seat.cv.notify_one();
                [own, self.hand_on(&mut line)]
            }
            Status::Taken | Status::Expired | Status::Closed | Status::Left => [None, None],
        }
    }

    /// [`leave`](Self::leave), then wakes whom it says (the locks released).
    fn leave_and_wake(&self, seat: &Seat, to: Status) {
        for w in self.leave(seat, to).into_iter().flatten() {
            w.wake();
        }
    }

    /// Stops admitting: every caller in line is turned away now, and
    /// [`try_acquire`](Self::try_acquire) and [`join`](Self::join) refuse
    /// from now on. Units already held or handed out are unaffected.
    pub(crate) fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        let seats: Vec<_> = {
            let mut line = lock(&self.0.line);
            let mut st_wakers = Vec::new();
            for (_, seat) in line.seats.drain(..) {
                let mut st = lock(&seat.state);
                st.status = Status::Closed;
                let w = st.waker.take();
                drop(st);
                seat.cv.notify_one();
                st_wakers.push(w);
            }
            st_wakers
        };
        for w in seats.into_iter().flatten() {
            w.wake();
        }
    }
}

/// A unit of capacity, returned when dropped.
pub(crate) struct Permit(Admission);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// A caller's place in line (see [`Admission::join`]).
pub(crate) struct Waiter {
    admission: Admission,
    seat: Arc<Seat>,
}

impl Waiter {
    /// Takes the granted unit, or says why there is none, or `None` while
    /// still waiting.
    fn outcome(&self, st: &mut SeatState) -> Option<Result<Permit, Missed>> {
        match st.status {
            Status::Waiting => None,
            Status::Granted => {
                st.status = Status::Taken;
                Some(Ok(Permit(self.admission.clone())))
            }
            Status::Closed => Some(Err(Missed::Closed)),
            // Taken (asked again after taking: nothing more to take) or
            // Left (impossible while the waiter lives).
            Status::Expired | Status::Taken | Status::Left => Some(Err(Missed::Expired)),
        }
    }

    /// Polls for room (async callers). The waker is called when room is
    /// handed to this waiter, when it expires, or when admission closes.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Permit, Missed>> {
        let mut st = lock(&self.seat.state);
        if let Some(r) = self.outcome(&mut st) {
            return Poll::Ready(r);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for room (blocking) until `deadline`, then gives up.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Result<Permit, Missed> {
        let mut st = lock(&self.seat.state);
        loop {
            if let Some(r) = self.outcome(&mut st) {
                return r;
            }
            match deadline {
                None => st = self.seat.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        drop(st);
                        self.expire();
                        st = lock(&self.seat.state);
                        continue;
                    }
                    st = match self.seat.cv.wait_timeout(st, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        }
    }

    /// The waiter's deadline passed: it leaves the line, and room it was
    /// handed but did not take goes to the next in line. Called by the
    /// server's timer for async waiters, so that one that is never polled
    /// again gives its room back too.
    pub(crate) fn expire(&self) {
        Self::expire_seat(&self.admission, &self.seat);
    }

    /// A handle that expires this waiter from elsewhere (the timer).
    pub(crate) fn expirer(&self) -> Expirer {
        Expirer {
            admission: self.admission.clone(),
            seat: self.seat.clone(),
        }
    }

    fn expire_seat(admission: &Admission, seat: &Seat) {
        admission.leave_and_wake(seat, Status::Expired);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.admission.leave_and_wake(&self.seat, Status::Left);
    }
}

/// Expires a [`Waiter`] from another thread (see [`Waiter::expirer`]).
pub(crate) struct Expirer {
    admission: Admission,
    seat: Arc<Seat>,
}

impl Expirer {
    /// As [`Waiter::expire`].
    pub(crate) fn expire(&self) {
        Waiter::expire_seat(&self.admission, &self.seat);
    }
}

#[cfg(all(test, not(mpserver_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn room_goes_to_the_line_in_order_and_newcomers_wait_their_turn() {
        let a = Admission::new(1);
        let p = a.try_acquire().unwrap();
        assert_eq!(a.try_acquire().unwrap_err(), Refused::Full);
        let w1 = a.join();
        let w2 = a.join();
        drop(p);
        // The unit went to w1: a newcomer finds no room.
        assert_eq!(a.try_acquire().unwrap_err(), Refused::Full);
        let noop = &mut Context::from_waker(Waker::noop());
        assert!(w2.poll(noop).is_pending());
        let p1 = match w1.poll(noop) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("{other:?}"),
        };
        drop(p1);
        assert!(matches!(w2.poll(noop), Poll::Ready(Ok(_))));
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn room_handed_to_a_waiter_that_never_takes_it_comes_back_at_its_deadline() {
        let a = Admission::new(2);
        let p1 = a.try_acquire().unwrap();
        let p2 = a.try_acquire().unwrap();
        let parked = a.join();
        drop(p1);
        // Handed to the parked waiter, which does not take it.
        assert_eq!(a.used(), 2);
        drop(p2);
        // The next unit is free for newcomers.
        let p3 = a.try_acquire().unwrap();
        parked.expire();
        assert_eq!(a.used(), 1);
        let noop = &mut Context::from_waker(Waker::noop());
        assert!(matches!(
            parked.poll(noop),
            Poll::Ready(Err(Missed::Expired))
        ));
        drop(p3);
        drop(parked);
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn a_blocking_waiter_gives_up_at_its_deadline_and_close_turns_waiters_away() {
        let a = Admission::new(1);
        let p = a.try_acquire().unwrap();
        let t = Instant::now();
        let r = a.join().wait(Some(t + Duration::from_millis(30)));
        assert_eq!(r.unwrap_err(), Missed::Expired);
        assert!(t.elapsed() >= Duration::from_millis(30));
        let a2 = a.clone();
        let th = std::thread::spawn(move || a2.join().wait(None).map(drop));
        while lock(&a.0.line).seats.is_empty() {
            std::thread::yield_now();
        }
        a.close();
        assert_eq!(th.join().unwrap().unwrap_err(), Missed::Closed);
        assert_eq!(a.try_acquire().unwrap_err(), Refused::Closed);
        drop(p);
        assert_eq!(a.used(), 0);
    }
}

/// Loom models of admission: run with
/// `RUSTFLAGS="--cfg mpserver_loom" cargo test --lib --release server::admission`.
#[cfg(all(test, mpserver_loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    /// A unit released while a caller joins the line reaches that caller:
    /// no wake-up is lost, whatever the interleaving (a lost one would leave
    /// the waiter blocked for ever, which loom reports as a deadlock).
    #[test]
    fn release_racing_a_joining_waiter_is_never_lost() {
        loom::model(|| {
            let a = Admission::new(1);
            let p = a.try_acquire().unwrap();
            let a2 = a.clone();
            let waiter = thread::spawn(move || {
                let got = a2.join().wait(None);
                assert!(got.is_ok());
            });
            drop(p);
            waiter.join().unwrap();
            assert_eq!(a.used(), 0);
        });
    }

    /// First come, first served: while a caller is in line, a newcomer that
    /// does not wait never gets the unit released meanwhile; it goes to the
    /// caller in line.
    #[test]
    fn a_newcomer_never_overtakes_the_line() {
        loom::model(|| {
            let a = Admission::new(1);
            let p = a.try_acquire().unwrap();
            let w = a.join();
            let a2 = a.clone();
            let newcomer = thread::spawn(move || a2.try_acquire().is_ok());
            drop(p);
            assert!(!newcomer.join().unwrap());
            assert!(w.wait(None).is_ok());
            assert_eq!(a.used(), 0);
        });
    }

    /// A waiter's deadline passing while the unit is being handed to it:
    /// either it took the unit before, or the unit goes back. Never lost,
    /// never counted twice.
    #[test]
    fn expiring_a_waiter_while_room_is_handed_to_it_keeps_the_count() {
        loom::model(|| {
            let a = Admission::new(1);
            let p = a.try_acquire().unwrap();
            let w = a.join();
            let expirer = w.expirer();
            let t = thread::spawn(move || expirer.expire());
            drop(p);
            t.join().unwrap();
            // Expired before or after the hand-off: the unit is free again.
            assert!(w.wait(None).is_err());
            assert_eq!(a.used(), 0);
            drop(w);
            assert!(a.try_acquire().is_ok());
        });
    }

    /// Two waiters, one leaving (dropped) while units come back: the other
    /// gets one, and every unit ends up free.
    #[test]
    fn a_waiter_leaving_passes_on_its_room() {
        loom::model(|| {
            let a = Admission::new(1);
            let p = a.try_acquire().unwrap();
            let w1 = a.join();
            let w2 = a.join();
            let t = thread::spawn(move || drop(w1));
            drop(p);
            assert!(w2.wait(None).is_ok());
            t.join().unwrap();
            assert_eq!(a.used(), 0);
        });
    }

    /// Closing while a waiter blocks and a unit comes back: the waiter is
    /// answered (room or closed), never left waiting.
    #[test]
    fn close_answers_every_waiter() {
        loom::model(|| {
            let a = Admission::new(1);
            let p = a.try_acquire().unwrap();
            let a2 = a.clone();
            let waiter = thread::spawn(move || a2.join().wait(None).map(drop));
            a.close();
            drop(p);
            let _ = waiter.join().unwrap();
            assert_eq!(a.used(), 0);
            assert_eq!(a.try_acquire().unwrap_err(), Refused::Closed);
        });
    }
}
