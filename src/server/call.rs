//! Blocking calls and `submit`; admission of a single request; and
//! [`Handle::enqueue`], the one place where an admitted request enters the
//! flow.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::admission::{Missed, Permit, Refused};
use super::request::Request;
use super::timer::Expire;
use super::{CallOptions, Handle, Pending};
use crate::error::{Error, Rejected, ServerBacklogFull, TimeoutError};
use crate::servlet::plumbing::{Claim, Push, Pushed, SinkRef, TicketRef};

impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    /// Puts an admitted request (holding `permit`) into the flow: its
    /// result slot, its deadline with the timer, and the push into the
    /// flow's first sink, marked as the kind of call it is (`push`).
    pub(super) fn enqueue(
        &self,
        entry: &SinkRef<In>,
        x: In,
        permit: Permit,
        started: Instant,
        timeout: Duration,
        push: Push,
    ) -> Result<(Pending<Out>, Option<Claim>), Error> {
        let core = &self.core;
        let (req, rx) = Request::<Out>::new(started, timeout, permit, core.stats.clone());
        core.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let deadline = started + timeout;
        let weak = Arc::downgrade(&req);
        core.timer
            .add(deadline, weak.clone() as std::sync::Weak<dyn Expire>);
        req.set_enqueued(Instant::now());
        let pending = Pending::new(rx, weak);
        // Kept to settle a push that times out: the timer may end the
        // request at its deadline while the push is still waiting for room.
        let kept = Arc::clone(&req);
        match entry.push_call(req as TicketRef, x, deadline, push) {
            Pushed::Delivered => Ok((pending, None)),
            Pushed::Claimed(claim) => Ok((pending, Some(claim))),
            Pushed::TimedOut => {
                // Counted once: here, unless the timer ended it first (and
                // counted its timeout then).
                let count = kept.end_unpushed();
                Err(self.enqueue_timeout(started, timeout, count))
            }
        }
    }
    /// Admits one request: room at once, or (back-pressure off) room
    /// within the request's time limit, waiting in line (blocking).
    fn admit(&self, started: Instant, opts: CallOptions) -> Result<Permit, Error> {
        let adm = &self.core.admission;
        match adm.try_acquire() {
            Ok(p) => Ok(p),
            Err(Refused::Full) if !opts.backpressure => self.wait_in_line(started, opts.timeout),
            Err(r) => Err(self.refused(r)),
        }
    }

    /// Waits in line for room (blocking), up to `timeout` from `started`.
    pub(super) fn wait_in_line(
        &self,
        started: Instant,
        timeout: Duration,
    ) -> Result<Permit, Error> {
        self.core
            .admission
            .join()
            .wait(Some(started + timeout))
            .map_err(|m| self.missed(m, started))
    }
    fn admit_blocking(
        &self,
        x: In,
        started: Instant,
        opts: CallOptions,
        push: Push,
    ) -> Result<(Pending<Out>, Option<Claim>), Error> {
        // A shut-down server refuses in `admit` (admission closes before the
        // flow's input goes).
        let permit = self.admit(started, opts)?;
        // Taken after waiting for room, not before: holding it while waiting
        // would keep the flow's input open during a shutdown's drain.
        let entry = self.entry()?;
        self.enqueue(&entry, x, permit, started, opts.timeout, push)
    }

    /// The error of a caller refused without waiting.
    pub(super) fn refused(&self, r: Refused) -> Error {
        match r {
            Refused::Full => self.backlog_full(Duration::ZERO),
            Refused::Closed => Error::Shutdown,
        }
    }

    /// The error of a caller that waited for room in vain.
    pub(super) fn missed(&self, m: Missed, started: Instant) -> Error {
        match m {
            Missed::Expired => self.backlog_full(started.elapsed()),
            Missed::Closed => Error::Shutdown,
        }
    }

    fn backlog_full(&self, waited: Duration) -> Error {
        let e = Error::BacklogFull(ServerBacklogFull::new(self.core.admission.max(), waited));
        self.core.stats.error(&e);
        e
    }

    fn enqueue_timeout(&self, started: Instant, limit: Duration, count: bool) -> Error {
        let e = Error::Timeout(TimeoutError {
            enqueue: started.elapsed(),
            total: started.elapsed(),
            limit,
            while_enqueuing: true,
        });
        if count {
            self.core.stats.error(&e);
        }
        e
    }
    /// Calls the flow on `x` with the server's default timeout, failing at
    /// once with [`Error::BacklogFull`] if the server is full.
    pub fn call(&self, x: In) -> Result<Out, Error> {
        self.call_with(x, CallOptions::default().timeout(self.core.timeout))
    }

    /// Calls the flow on `x` with explicit options.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mpserver::{worker_fn, CallOptions, Server, ThreadServlet};
    ///
    /// let server = Server::start(ThreadServlet::new(worker_fn(|x: u8| x))).unwrap();
    /// let opts = CallOptions::default().timeout(Duration::from_secs(1)).backpressure(false);
    /// assert_eq!(server.call_with(7, opts).unwrap(), 7);
    /// ```
    pub fn call_with(&self, x: In, opts: CallOptions) -> Result<Out, Error> {
        let started = Instant::now();
        let (pending, claim) = self.admit_blocking(x, started, opts, Push::Waiting)?;
        // Handed straight to an idle worker process that nobody reads: read
        // the result here rather than be woken by the reader thread (see
        // `servlet/process/reader.rs`). Dropping the claim gives it back.
        // The claim's reading ends early when the request completes by
        // another route (a fail-fast ensemble sibling, its deadline, a
        // shutdown): the request calls the claim's interrupter then.
        if let Some(claim) = claim {
            pending.on_complete(claim.interrupter());
            claim.read_until(started + opts.timeout, &|| pending.is_done());
        }
        pending.wait()
    }

    /// Submits `x` and returns at once with a [`Pending`] result, to
    /// [`wait`](Pending::wait) for or `.await`. Dropping the `Pending` cancels
    /// the request.
    pub fn submit(&self, x: In, opts: CallOptions) -> Result<Pending<Out>, Error> {
        self.admit_blocking(x, Instant::now(), opts, Push::Single)
            .map(|(pending, _)| pending)
    }

    /// Like [`submit`](Handle::submit), but a request refused before it
    /// entered the flow (the server full, or shut down) hands its input
    /// back, so it can be retried or sent elsewhere without a clone.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mpserver::{worker_fn, CallOptions, Error, Server, ThreadServlet};
    ///
    /// let slow = worker_fn(|s: String| { std::thread::sleep(Duration::from_millis(100)); s.len() });
    /// let server = Server::builder(ThreadServlet::new(slow)).capacity(1).start().unwrap();
    /// let first = server.try_submit("abc".to_string(), CallOptions::default()).unwrap();
    /// let refused = server.try_submit("hello".to_string(), CallOptions::default()).unwrap_err();
    /// assert!(matches!(refused.error, Error::BacklogFull(_)));
    /// let input: String = refused.into_input(); // handed back, not cloned
    /// assert_eq!(first.wait().unwrap(), 3);
    /// assert_eq!(server.call(input).unwrap(), 5);
    /// ```
    pub fn try_submit(&self, x: In, opts: CallOptions) -> Result<Pending<Out>, Rejected<In>> {
        let started = Instant::now();
        let admitted = self
            .admit(started, opts)
            .and_then(|permit| Ok((permit, self.entry()?)));
        let (permit, entry) = match admitted {
            Ok(a) => a,
            Err(error) => return Err(Rejected { input: x, error }),
        };
        // Admitted: the input is in the flow from here, and a failure is the
        // request's outcome.
        Ok(
            match self.enqueue(&entry, x, permit, started, opts.timeout, Push::Single) {
                Ok((pending, _)) => pending,
                Err(e) => Pending::failed(e),
            },
        )
    }

    /// Submits `x` into room reserved earlier (`permit`), e.g. by a tower
    /// service's `poll_ready`. Its time limit counts from now.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(super) fn submit_reserved(
        &self,
        x: In,
        permit: Permit,
        opts: CallOptions,
    ) -> Result<Pending<Out>, Error> {
        self.submit_reserved_at(x, permit, opts, Instant::now())
    }

    /// [`submit_reserved`](Self::submit_reserved) of a request whose time
    /// limit counts from `started`.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(super) fn submit_reserved_at(
        &self,
        x: In,
        permit: Permit,
        opts: CallOptions,
        started: Instant,
    ) -> Result<Pending<Out>, Error> {
        let entry = self.entry()?;
        self.enqueue(&entry, x, permit, started, opts.timeout, Push::Single)
            .map(|(pending, _)| pending)
    }
}
