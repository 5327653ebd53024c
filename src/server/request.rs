//! One request's life: capacity permit, result slot, cancellation, deadline.

use crate::sync::{get_mut_std, lock_std};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::admission::Permit;
use super::timer::Expire;
use crate::error::{Error, TimeoutError};
use crate::metrics::{ServerStats, StageClock};
use crate::servlet::plumbing::{Interrupt, Sink, Ticket, TicketRef};

const PENDING: u8 = 0;
const DONE: u8 = 1;
const CANCELLED: u8 = 2;

/// A request inside the server. The pipeline holds it (as a ticket); the
/// caller holds only a weak link and the receiving end of its result.
pub(crate) struct Request<Out> {
    state: AtomicU8,
    slot: Mutex<Slot<Out>>,
    pub(crate) started: Instant,
    enqueue_nanos: AtomicU64,
    /// When the item entered the servlet it is in (stage latency).
    clock: StageClock,
    pub(crate) timeout: Duration,
    stats: Arc<ServerStats>,
}

/// The result channel and the capacity unit of a request.
///
/// The permit is returned when the flow delivers the request's outcome (the
/// item has left the flow), *before* the caller is woken, so a caller that
/// calls again at once finds the room it just freed. A request that timed out
/// or was cancelled keeps its permit until the flow drops it: capacity keeps
/// counting work that is still running.
struct Slot<Out> {
    tx: Option<oneshot::Sender<Result<Out, Error>>>,
    permit: Option<Permit>,
    /// Called once the request completes (its caller may be reading a
    /// worker's socket for it: see `Pending::on_complete`).
    on_complete: Option<Interrupt>,
}

impl<Out: Send + 'static> Request<Out> {
    pub(crate) fn new(
        started: Instant,
        timeout: Duration,
        permit: Permit,
        stats: Arc<ServerStats>,
    ) -> (Arc<Self>, oneshot::Receiver<Result<Out, Error>>) {
        let (tx, rx) = oneshot::channel();
        let r = Arc::new(Request {
            state: AtomicU8::new(PENDING),
            slot: Mutex::new(Slot {
                tx: Some(tx),
                permit: Some(permit),
                on_complete: None,
            }),
            started,
            enqueue_nanos: AtomicU64::new(0),
            clock: StageClock::default(),
            timeout,
            stats,
        });
        (r, rx)
    }

    /// The request enters the flow at `at`: the end of its admission (its
    /// enqueue time) and its entry into the flow's first servlet(s) (its
    /// stage clock), from one clock reading; the sinks it is pushed into
    /// through [`Sink::push_call`] do not read the clock again.
    pub(crate) fn set_enqueued(&self, at: Instant) {
        let d = at.saturating_duration_since(self.started);
        self.enqueue_nanos
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.clock.enter_at(at);
    }

    /// Sends the outcome `r`, `total` after the request started; `release`
    /// gives its capacity unit back first.
    fn send(&self, r: Result<Out, Error>, total: Duration, release: bool) {
        let (tx, permit, wake) = {
            let mut slot = lock_std(&self.slot);
            let permit = if release { slot.permit.take() } else { None };
            (slot.tx.take(), permit, slot.on_complete.take())
        };
        drop(permit);
        if let Some(tx) = tx {
            self.stats.record(&r, total);
            let _ = tx.send(r);
        }
        if let Some(wake) = wake {
            wake();
        }
    }

    /// Calls `f` once the request completed (at once if it has).
    pub(crate) fn on_complete(&self, f: Interrupt) {
        {
            let mut slot = lock_std(&self.slot);
            if self.is_pending() {
                slot.on_complete = Some(f);
                return;
            }
        }
        f();
    }

    /// Completes the request unless it already ended. Returns whether it did.
    pub(crate) fn complete(&self, r: Result<Out, Error>) -> bool {
        if self
            .state
            .compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // An outcome that came after the deadline, before the timer
            // thread got to it (a loaded machine), is a timeout all the same:
            // a call never returns later than its limit with a value. The
            // work has left the flow, so the unit comes back.
            let total = self.started.elapsed();
            let r = if total > self.timeout {
                Err(self.timeout_error(total))
            } else {
                r
            };
            self.send(r, total, true);
            true
        } else {
            false
        }
    }

    /// Ends the request whose push into the flow timed out (its caller gets
    /// the error directly), unless something ended it first: its deadline
    /// (the timer sent and counted a timeout) or a shutdown. True if this
    /// call ended it, so that the caller counts the outcome exactly once.
    pub(crate) fn end_unpushed(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the request cancelled (the caller went away); workers skip it.
    pub(crate) fn cancel(&self) {
        let _ =
            self.state
                .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The error of a request whose deadline passed, `total` after it
    /// started, while it was in the flow.
    fn timeout_error(&self, total: Duration) -> Error {
        Error::Timeout(TimeoutError {
            enqueue: Duration::from_nanos(self.enqueue_nanos.load(Ordering::Relaxed)),
            total,
            limit: self.timeout,
            while_enqueuing: false,
        })
    }

    fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING
    }
}

impl<Out: Send + 'static> Ticket for Request<Out> {
    fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Relaxed) == CANCELLED
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn clock(&self) -> Option<&StageClock> {
        Some(&self.clock)
    }
}

impl<Out: Send + 'static> Expire for Request<Out> {
    fn expire(&self) {
        if self
            .state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let total = self.started.elapsed();
            self.send(Err(self.timeout_error(total)), total, false);
        }
    }
    fn pending_since(&self) -> Option<(Instant, Duration)> {
        self.is_pending().then_some((self.started, self.timeout))
    }
    /// The server stopped while this request was still somewhere in the flow
    /// (e.g. queued behind a thread worker stuck in user code): the caller
    /// gets `Error::Shutdown` now, and the work is skipped if ever reached.
    /// The permit goes back too (a stopped server counts no work).
    fn abandon(&self) {
        if self
            .state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.send(Err(Error::Shutdown), self.started.elapsed(), true);
        } else {
            // Timed out or cancelled earlier: its permit is still held.
            let permit = {
                let mut slot = lock_std(&self.slot);
                slot.permit.take()
            };
            drop(permit);
        }
    }
}

impl<Out> Drop for Request<Out> {
    fn drop(&mut self) {
        // Dropped by the pipeline without an outcome: only a stopping server
        // does that. The caller learns it instead of waiting forever.
        if self.state.load(Ordering::Acquire) == PENDING {
            let slot = get_mut_std(&mut self.slot);
            drop(slot.permit.take());
            let tx = slot.tx.take();
            let wake = slot.on_complete.take();
            if let Some(tx) = tx {
                let _ = tx.send(Err(Error::Shutdown));
            }
            if let Some(wake) = wake {
                wake();
            }
        }
    }
}

/// The end of the flow: completes requests.
pub(crate) struct CompletionSink<Out>(pub(crate) std::marker::PhantomData<fn(Out)>);

impl<Out: Send + 'static> CompletionSink<Out> {
    fn request<'a>(&self, ticket: &'a TicketRef) -> Option<&'a Request<Out>> {
        let r = ticket.as_any().downcast_ref::<Request<Out>>();
        if r.is_none() {
            tracing::error!("an item reached the end of a flow it does not belong to");
        }
        r
    }
}

impl<Out: Send + 'static> Sink<Out> for CompletionSink<Out> {
    fn push(&self, ticket: TicketRef, value: Out) {
        if let Some(r) = self.request(&ticket) {
            r.complete(Ok(value));
        }
    }
    fn fail(&self, ticket: TicketRef, error: Error) {
        if let Some(r) = self.request(&ticket) {
            r.complete(Err(error));
        }
    }
}

/// A submitted request's result, to wait for (blocking) or `.await`.
///
/// Dropping it before the result arrives cancels the request: workers that
/// have not started it skip it.
pub struct Pending<Out: Send + 'static> {
    rx: Option<Rx<Out>>,
    req: Weak<Request<Out>>,
}

enum Rx<Out> {
    Blocking(oneshot::Receiver<Result<Out, Error>>),
    Async(oneshot::AsyncReceiver<Result<Out, Error>>),
}

impl<Out: Send + 'static> Pending<Out> {
    pub(crate) fn new(rx: oneshot::Receiver<Result<Out, Error>>, req: Weak<Request<Out>>) -> Self {
        Pending {
            rx: Some(Rx::Blocking(rx)),
            req,
        }
    }

    /// Calls `f` when the request completes, however it does (at once if it
    /// has already).
    pub(crate) fn on_complete(&self, f: Interrupt) {
        match self.req.upgrade() {
            Some(r) => r.on_complete(f),
            None => f(),
        }
    }

    /// True once the request has its outcome (or was dropped by the flow).
    pub(crate) fn is_done(&self) -> bool {
        self.req.upgrade().is_none_or(|r| !r.is_pending())
    }

    /// True when [`wait`](Self::wait) would return at once: the result (or
    /// the sender's end) is there.
    pub(crate) fn is_ready(&self) -> bool {
        match &self.rx {
            Some(Rx::Blocking(rx)) => rx.has_message() || rx.is_closed(),
            Some(Rx::Async(rx)) => rx.has_message() || rx.is_closed(),
            None => true,
        }
    }

    /// A result that is already there (a request that failed as it entered
    /// the flow).
    pub(crate) fn failed(e: Error) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(e));
        Pending::new(rx, Weak::new())
    }

    /// Blocks until the result (or the request's timeout error) arrives.
    pub fn wait(mut self) -> Result<Out, Error> {
        match self.rx.take() {
            Some(Rx::Blocking(rx)) => rx.recv().unwrap_or(Err(Error::Shutdown)),
            Some(Rx::Async(rx)) => futures_lite_block_on(rx),
            None => Err(Error::Cancelled),
        }
    }
}

impl<Out: Send + 'static> Future for Pending<Out> {
    type Output = Result<Out, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rx = match self.rx.take() {
            Some(Rx::Blocking(rx)) => std::future::IntoFuture::into_future(rx),
            Some(Rx::Async(rx)) => rx,
            None => return Poll::Ready(Err(Error::Cancelled)),
        };
        let rx = &mut *self.rx.insert(Rx::Async(rx));
        let Rx::Async(rx) = rx else {
            return Poll::Ready(Err(Error::Cancelled));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(r) => {
                self.rx = None;
                Poll::Ready(r.unwrap_or(Err(Error::Shutdown)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Out: Send + 'static> Drop for Pending<Out> {
    fn drop(&mut self) {
        if self.rx.is_some()
            && let Some(r) = self.req.upgrade()
        {
            r.cancel();
        }
    }
}

impl<Out: Send + 'static> std::fmt::Debug for Pending<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// Blocks the current thread on a future (used only when a `Pending` that was
/// polled once is then waited on synchronously).
fn futures_lite_block_on<Out>(
    mut rx: oneshot::AsyncReceiver<Result<Out, Error>>,
) -> Result<Out, Error> {
    use std::task::{Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match Pin::new(&mut rx).poll(&mut cx) {
            Poll::Ready(r) => return r.unwrap_or(Err(Error::Shutdown)),
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admission::Admission;

    /// An outcome that reaches the end of the flow after the request's
    /// deadline, before the timer thread got to it (a loaded machine), is a
    /// timeout all the same: a call never returns a value later than its
    /// limit. The work has left the flow, so its unit comes back.
    #[test]
    fn an_outcome_after_the_deadline_is_a_timeout_and_frees_the_unit() {
        let admission = Admission::new(1);
        let permit = admission.try_acquire().unwrap();
        let limit = Duration::from_millis(1);
        let started = Instant::now();
        let stats = Arc::new(ServerStats::default());
        let (req, rx) = Request::<u32>::new(started, limit, permit, stats);
        // No timer runs here: the outcome arrives after the deadline.
        std::thread::sleep(limit * 2);
        assert!(req.complete(Ok(7)));
        match rx.recv().unwrap() {
            Err(Error::Timeout(t)) => {
                assert_eq!(t.limit, limit);
                assert!(t.total > limit, "{t:?}");
                assert!(!t.while_enqueuing);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(admission.used(), 0, "the unit of finished work comes back");
        // Before its deadline, the value itself.
        let (req, rx) = Request::<u32>::new(
            Instant::now(),
            Duration::from_secs(60),
            admission.try_acquire().unwrap(),
            Arc::new(ServerStats::default()),
        );
        assert!(req.complete(Ok(8)));
        assert_eq!(rx.recv().unwrap().unwrap(), 8);
    }
}
