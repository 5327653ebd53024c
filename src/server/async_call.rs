//! Async calls, and waiting for room without blocking the executor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::admission::{Expirer, Missed, Permit, Refused, Waiter};
use super::timer::Expire;
use super::{CallOptions, Handle};
use crate::error::Error;
use crate::servlet::plumbing::Push;

/// Expires an async caller's place in line at its deadline (see
/// [`admission`]: room handed to a waiter that is never polled again comes
/// back then).
struct WaitAlarm(Expirer);

impl Expire for WaitAlarm {
    fn expire(&self) {
        self.0.expire();
    }
}

/// An async caller waiting for room until its deadline.
pub(super) struct WaitForRoom {
    waiter: Waiter,
    _alarm: Arc<WaitAlarm>,
}

impl Future for WaitForRoom {
    type Output = Result<Permit, Missed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.waiter.poll(cx)
    }
}
impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    /// As [`admit`](Self::admit), waiting without blocking the executor.
    async fn admit_async(&self, started: Instant, opts: CallOptions) -> Result<Permit, Error> {
        match self.core.admission.try_acquire() {
            Ok(p) => Ok(p),
            Err(Refused::Full) if !opts.backpressure => self
                .wait_for_room(started + opts.timeout)
                .await
                .map_err(|m| self.missed(m, started)),
            Err(r) => Err(self.refused(r)),
        }
    }
    /// Joins the line for room; the server's timer expires the place at
    /// `deadline` whether or not the caller polls.
    pub(super) fn wait_for_room(&self, deadline: Instant) -> WaitForRoom {
        let waiter = self.core.admission.join();
        let alarm = Arc::new(WaitAlarm(waiter.expirer()));
        self.core.timer.add(
            deadline,
            Arc::downgrade(&alarm) as std::sync::Weak<dyn Expire>,
        );
        WaitForRoom {
            waiter,
            _alarm: alarm,
        }
    }
    /// Calls the flow from async code, with the server's default timeout and
    /// back-pressure on. Needs no particular runtime: deadlines are kept by the
    /// server. Dropping the future cancels the request.
    pub async fn async_call(&self, x: In) -> Result<Out, Error> {
        self.async_call_with(x, CallOptions::default().timeout(self.core.timeout))
            .await
    }

    /// Async call with explicit options. Without back-pressure, waiting for
    /// room does not block the executor.
    pub async fn async_call_with(&self, x: In, opts: CallOptions) -> Result<Out, Error> {
        self.async_push(x, opts, Push::Single).await
    }

    /// As [`async_call_with`](Self::async_call_with), but the item always
    /// takes the first stage's queue: the calling thread never hands it
    /// straight to an idle worker process. For a burst of concurrent calls
    /// from one thread (an event loop): handed over one by one, each call
    /// wakes the worker process, which answers before the next is sent, so
    /// the caller, the worker and its reader take turns item by item (about
    /// three context switches per item on one CPU, measured with mpserver-py's
    /// S7); through the queue, the stage's supervisor sends runs of items.
    ///
    /// ```
    /// use mpserver::{CallOptions, Server, ThreadServlet, Worker, WorkerError};
    /// # #[derive(Clone)] struct Double;
    /// # impl Worker for Double {
    /// #     type Input = u64; type Output = u64;
    /// #     fn call(&mut self, x: u64) -> Result<u64, WorkerError> { Ok(2 * x) }
    /// # }
    /// let server = Server::builder(ThreadServlet::new(Double)).start()?;
    /// let h = server.handle();
    /// let y = futures::executor::block_on(h.async_call_queued_with(21, CallOptions::default()))?;
    /// assert_eq!(y, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn async_call_queued_with(&self, x: In, opts: CallOptions) -> Result<Out, Error> {
        self.async_push(x, opts, Push::Stream).await
    }

    /// An async call whose item enters the flow as `push` says (a single
    /// call that may be handed to an idle worker, or a queued one).
    async fn async_push(&self, x: In, opts: CallOptions, push: Push) -> Result<Out, Error> {
        let started = Instant::now();
        let permit = self.admit_async(started, opts).await?;
        // The flow's input is taken once admitted (see `admit_blocking`).
        let entry = self.entry()?;
        self.enqueue(&entry, x, permit, started, opts.timeout, push)?
            .0
            .await
    }
}
