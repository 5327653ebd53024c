//! [`tower_service::Service`] for [`Handle`] (feature `tower`).
//!
//! A [`Handle`] is a `Service<In>` answering `Out`, so a flow mounts wherever
//! the tower ecosystem takes a service (timeouts, retries, rate limits,
//! `ServiceExt::oneshot`, an HTTP front).
//!
//! # Readiness and back-pressure
//!
//! The server's capacity is shared by every clone of every handle, so a
//! `poll_ready` that reserved room for one caller would either hold capacity
//! hostage or lie. Instead:
//!
//! * `poll_ready` is `Ready(Ok(()))` while the server runs, and
//!   `Ready(Err(Error::Shutdown))` once it is draining or stopped (a
//!   permanent condition, as tower expects of a `poll_ready` error);
//! * `call` admits the request at once. With back-pressure on (the handle's
//!   own `Service` impl), a full server makes the returned future resolve to
//!   [`Error::BacklogFull`] immediately: load shedding, with no waiting. To
//!   wait for room up to the timeout instead, use
//!   [`Handle::service_with`] with
//!   [`CallOptions::backpressure(false)`](CallOptions::backpressure).
//!
//! The request is submitted when `call` is made, not when the future is first
//! polled; dropping the future cancels it, as with [`Handle::async_call`].
//!
//! # Reserving readiness
//!
//! For tower's own back-pressure ([`LoadShed`], [`ConcurrencyLimit`],
//! balancers, `Buffer`) to see a full server, use
//! [`Handle::reserving_service`]: its `poll_ready` reserves one unit of the
//! server's capacity, and is `Pending` (in the server's first-come line, the
//! same as waiting callers) while the server is full, so `LoadShed` sheds at
//! `poll_ready` and `ConcurrencyLimit` or a balancer waits or routes
//! elsewhere. `call` then uses the reserved unit, and the request's time
//! limit counts from `call`. A service that got ready and is never called
//! holds its unit until it is dropped, as with any tower service that
//! reserves capacity in `poll_ready`; a clone starts without a reservation.
//!
//! [`LoadShed`]: https://docs.rs/tower/latest/tower/load_shed/struct.LoadShed.html
//! [`ConcurrencyLimit`]: https://docs.rs/tower/latest/tower/limit/struct.ConcurrencyLimit.html
//!
//! [`Handle`] also has an inherent, blocking [`Handle::call`], which method
//! syntax picks first: call the trait's as `Service::call(&mut svc, x)`, or
//! let a tower combinator (`ServiceExt::oneshot`, a layer) do it.
//!
//! ```
//! use std::time::Duration;
//! use mpserver::{worker_fn, CallOptions, Server, ThreadServlet};
//! use tower_service::Service;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = Server::start(ThreadServlet::new(worker_fn(|x: u32| x * 10))).unwrap();
//! let mut svc = server.handle();
//! assert_eq!(Service::call(&mut svc, 4).await.unwrap(), 40);
//!
//! // With a per-call time limit and waiting for room when full:
//! let mut svc = server.service_with(CallOptions::timeout(Duration::from_secs(1)).backpressure(false));
//! assert_eq!(Service::call(&mut svc, 5).await.unwrap(), 50);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Instant;

use super::admission::{Missed, Permit, Refused};
use super::async_call::WaitForRoom;
use super::{CallOptions, Handle, Pending, ServerState};
use crate::error::Error;

type BoxedCall<Out> = Pin<Box<dyn Future<Output = Result<Out, Error>> + Send + 'static>>;

/// The future of a call made through [`tower_service::Service`]: resolves to
/// the flow's output or the request's [`Error`]. Dropping it cancels the
/// request.
#[must_use = "futures do nothing unless polled; dropping this one cancels the request"]
pub struct CallFuture<Out: Send + 'static> {
    state: State<Out>,
}

enum State<Out: Send + 'static> {
    /// Admission failed (full, shut down): the error, until taken.
    Failed(Option<Error>),
    /// Admitted; waiting for the result.
    Admitted(Pending<Out>),
    /// Waiting for room (back-pressure off), then for the result.
    Waiting(BoxedCall<Out>),
}

impl<Out: Send + 'static> CallFuture<Out> {
    fn admitted(r: Result<Pending<Out>, Error>) -> Self {
        CallFuture {
            state: match r {
                Ok(p) => State::Admitted(p),
                Err(e) => State::Failed(Some(e)),
            },
        }
    }
}

impl<Out: Send + 'static> Future for CallFuture<Out> {
    type Output = Result<Out, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every variant is `Unpin` (the boxed future is pinned on the heap).
        match &mut self.get_mut().state {
            State::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Cancelled))),
            State::Admitted(p) => Pin::new(p).poll(cx),
            State::Waiting(f) => f.as_mut().poll(cx),
        }
    }
}

impl<Out: Send + 'static> fmt::Debug for CallFuture<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed(_) => "failed",
            State::Admitted(_) => "admitted",
            State::Waiting(_) => "waiting",
        };
        f.debug_struct("CallFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

fn poll_running<In: Send + 'static, Out: Send + 'static>(
    handle: &Handle<In, Out>,
) -> Poll<Result<(), Error>> {
    match handle.state() {
        ServerState::Draining | ServerState::Stopped => Poll::Ready(Err(Error::Shutdown)),
        ServerState::Starting | ServerState::Running => Poll::Ready(Ok(())),
    }
}

impl<In: Send + 'static, Out: Send + 'static> tower_service::Service<In> for Handle<In, Out> {
    type Response = Out;
    type Error = Error;
    type Future = CallFuture<Out>;

    /// Ready while the server runs; `Err(Error::Shutdown)` once it drains.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        poll_running(self)
    }

    /// Submits `x` with the server's default timeout and back-pressure on
    /// (a full server fails the call at once with [`Error::BacklogFull`]).
    fn call(&mut self, x: In) -> CallFuture<Out> {
        CallFuture::admitted(self.submit(x, CallOptions::timeout(self.core.timeout)))
    }
}

/// A [`Handle`] with fixed [`CallOptions`], as a
/// [`tower_service::Service`]; made by [`Handle::service_with`].
pub struct CallService<In: Send + 'static, Out: Send + 'static> {
    handle: Handle<In, Out>,
    opts: CallOptions,
}

impl<In: Send + 'static, Out: Send + 'static> Clone for CallService<In, Out> {
    fn clone(&self) -> Self {
        CallService {
            handle: self.handle.clone(),
            opts: self.opts,
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> fmt::Debug for CallService<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallService")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static, Out: Send + 'static> CallService<In, Out> {
    /// The options every call of this service uses.
    pub fn options(&self) -> CallOptions {
        self.opts
    }

    /// The underlying handle.
    pub fn handle(&self) -> &Handle<In, Out> {
        &self.handle
    }
}

impl<In: Send + 'static, Out: Send + 'static> tower_service::Service<In> for CallService<In, Out> {
    type Response = Out;
    type Error = Error;
    type Future = CallFuture<Out>;

    /// Ready while the server runs; `Err(Error::Shutdown)` once it drains.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        poll_running(&self.handle)
    }

    /// Submits `x` with this service's options. With back-pressure off and
    /// the server full, the call takes its place in line now and the future
    /// waits for room (without blocking the executor) up to the timeout,
    /// counted from this call.
    fn call(&mut self, x: In) -> CallFuture<Out> {
        if self.opts.backpressure {
            return CallFuture::admitted(self.handle.submit(x, self.opts));
        }
        let started = Instant::now();
        let opts = self.opts;
        let handle = &self.handle;
        match handle.core.admission.try_acquire() {
            Ok(permit) => CallFuture::admitted(handle.submit_reserved_at(x, permit, opts, started)),
            Err(Refused::Full) => {
                let room = handle.wait_for_room(started + opts.timeout);
                let handle = handle.clone();
                CallFuture {
                    state: State::Waiting(Box::pin(async move {
                        let permit = room.await.map_err(|m| handle.missed(m, started))?;
                        handle.submit_reserved_at(x, permit, opts, started)?.await
                    })),
                }
            }
            Err(r) => CallFuture::admitted(Err(handle.refused(r))),
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    /// This handle as a [`tower_service::Service`] whose calls all use `opts`
    /// (e.g. a per-route timeout, or waiting for room instead of failing
    /// when full). The handle itself is a `Service` with the server's
    /// defaults.
    pub fn service_with(&self, opts: CallOptions) -> CallService<In, Out> {
        CallService {
            handle: self.clone(),
            opts,
        }
    }
}

/// A [`Handle`] as a [`tower_service::Service`] whose `poll_ready` reserves
/// a unit of the server's capacity (see [the module docs](self)); made by
/// [`Handle::reserving_service`].
pub struct ReservingService<In: Send + 'static, Out: Send + 'static> {
    handle: Handle<In, Out>,
    opts: CallOptions,
    reserved: Option<Permit>,
    waiting: Option<WaitForRoom>,
}

impl<In: Send + 'static, Out: Send + 'static> Clone for ReservingService<In, Out> {
    /// A clone shares the server, not the reservation.
    fn clone(&self) -> Self {
        ReservingService {
            handle: self.handle.clone(),
            opts: self.opts,
            reserved: None,
            waiting: None,
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> fmt::Debug for ReservingService<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReservingService")
            .field("opts", &self.opts)
            .field("reserved", &self.reserved.is_some())
            .field("waiting", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static, Out: Send + 'static> ReservingService<In, Out> {
    /// True while this service holds a unit of capacity (ready, not yet
    /// called).
    pub fn is_reserved(&self) -> bool {
        self.reserved.is_some()
    }
}

impl<In: Send + 'static, Out: Send + 'static> tower_service::Service<In>
    for ReservingService<In, Out>
{
    type Response = Out;
    type Error = Error;
    type Future = CallFuture<Out>;

    /// Ready once a unit of capacity is reserved for the next `call`;
    /// `Pending` while the server is full (waiting in line for room);
    /// `Err(Error::Shutdown)` once the server drains.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.reserved.is_some() {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(w) = self.waiting.as_mut() {
                match Pin::new(w).poll(cx) {
                    Poll::Ready(Ok(p)) => {
                        self.waiting = None;
                        self.reserved = Some(p);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(Missed::Closed)) => {
                        self.waiting = None;
                        return Poll::Ready(Err(Error::Shutdown));
                    }
                    // The place in line lapsed (room handed to it comes
                    // back then): stand in line again.
                    Poll::Ready(Err(Missed::Expired)) => self.waiting = None,
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.handle.core.admission.try_acquire() {
                Ok(p) => {
                    self.reserved = Some(p);
                    return Poll::Ready(Ok(()));
                }
                Err(Refused::Closed) => return Poll::Ready(Err(Error::Shutdown)),
                Err(Refused::Full) => {
                    let deadline = Instant::now() + self.opts.timeout;
                    self.waiting = Some(self.handle.wait_for_room(deadline));
                }
            }
        }
    }

    /// Submits `x` into the reserved unit, with this service's options. If
    /// `poll_ready` was not called first, a full server fails the call with
    /// [`Error::BacklogFull`].
    fn call(&mut self, x: In) -> CallFuture<Out> {
        match self.reserved.take() {
            Some(p) => CallFuture::admitted(self.handle.submit_reserved(x, p, self.opts)),
            None => {
                let opts = self.opts.backpressure(true);
                CallFuture::admitted(self.handle.submit(x, opts))
            }
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    /// This handle as a [`tower_service::Service`] whose `poll_ready`
    /// reserves a unit of capacity, so tower's `LoadShed`,
    /// `ConcurrencyLimit` and balancers see a full server (see [the
    /// module docs](self)). Calls use `opts`' time limit.
    ///
    /// ```
    /// use mpserver::{worker_fn, CallOptions, Server, ThreadServlet};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = Server::start(ThreadServlet::new(worker_fn(|x: u32| x + 1))).unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .load_shed()
    ///     .concurrency_limit(64)
    ///     .service(server.reserving_service(CallOptions::default()));
    /// assert_eq!(svc.oneshot(1).await.unwrap(), 2);
    /// # }
    /// ```
    pub fn reserving_service(&self, opts: CallOptions) -> ReservingService<In, Out> {
        ReservingService {
            handle: self.clone(),
            opts,
            reserved: None,
            waiting: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tower_service::Service;

    use crate::{CallOptions, Error, Server, ThreadServlet, worker_fn};

    fn slow_echo() -> ThreadServlet<impl crate::Worker<Input = u32, Output = u32> + Clone> {
        ThreadServlet::new(worker_fn(|x: u32| {
            if x >= 100 {
                std::thread::sleep(Duration::from_millis(300));
            }
            x
        }))
    }

    #[tokio::test]
    async fn handle_is_a_service_that_sheds_load_when_full() {
        let server = Server::builder(slow_echo()).capacity(1).start().unwrap();
        let mut svc = server.handle();
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        assert_eq!(Service::call(&mut svc, 1).await.unwrap(), 1);

        // The request is submitted by `call`, before the future is polled.
        let first = Service::call(&mut svc, 100);
        assert_eq!(server.backlog(), 1);
        let second = Service::call(&mut svc, 2);
        assert!(matches!(second.await, Err(Error::BacklogFull(_))));
        assert_eq!(first.await.unwrap(), 100);
    }

    #[tokio::test]
    async fn service_with_waits_for_room_and_keeps_its_timeout() {
        let server = Server::builder(slow_echo()).capacity(1).start().unwrap();
        let mut waiting =
            server.service_with(CallOptions::timeout(Duration::from_secs(5)).backpressure(false));
        assert!(!waiting.options().backpressure);
        let first = Service::call(&mut waiting, 100);
        let second = Service::call(&mut waiting, 3);
        let (a, b) = futures::join!(first, second);
        assert_eq!((a.unwrap(), b.unwrap()), (100, 3));

        let mut short = server.service_with(CallOptions::timeout(Duration::from_millis(50)));
        assert!(matches!(
            Service::call(&mut short, 200).await,
            Err(Error::Timeout(_))
        ));
    }

    /// Without back-pressure, as with it, the request is admitted (or takes
    /// its place in line) when `call` is made, and its time limit counts
    /// from then, not from the future's first poll.
    #[tokio::test]
    async fn service_with_waiting_admits_at_call_time() {
        let server = Server::builder(slow_echo()).capacity(1).start().unwrap();
        let waiting = |ms| {
            server.service_with(CallOptions::timeout(Duration::from_millis(ms)).backpressure(false))
        };
        // Room free: the call is in the flow before its future is polled.
        let first = Service::call(&mut waiting(5_000), 100);
        assert_eq!(server.backlog(), 1, "admitted by `call`");
        // Full: this one stands in line from `call`, for 200 ms. It is polled
        // only after that (the 300 ms item has finished by then): its place
        // lapsed while the server was full, so it fails.
        let second = Service::call(&mut waiting(200), 2);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(first.await.unwrap(), 100);
        let r = second.await;
        assert!(matches!(r, Err(Error::BacklogFull(_))), "{r:?}");
        assert_eq!(server.backlog(), 0);
    }

    #[tokio::test]
    async fn dropping_the_future_cancels_the_request() {
        let server = Server::builder(slow_echo()).capacity(2).start().unwrap();
        let mut svc = server.handle();
        let busy = Service::call(&mut svc, 100);
        let dropped = Service::call(&mut svc, 101);
        drop(dropped);
        assert_eq!(busy.await.unwrap(), 100);
        // The cancelled item was skipped or finished; either way its capacity returns.
        let mut room = false;
        for _ in 0..100 {
            if server.backlog() == 0 {
                room = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(room, "capacity was not returned");
    }

    /// With the reserving service, a full server is not ready, so tower's
    /// `LoadShed` sheds at `poll_ready` (its own `Overloaded` error)
    /// instead of the call failing with `BacklogFull` later.
    #[tokio::test]
    async fn load_shed_sees_a_full_server_through_poll_ready() {
        use tower::{ServiceBuilder, ServiceExt};
        let server = Server::builder(slow_echo()).capacity(1).start().unwrap();
        let opts = CallOptions::timeout(Duration::from_secs(5));
        let mut bare = server.reserving_service(opts);
        poll_fn(|cx| bare.poll_ready(cx)).await.unwrap();
        assert!(bare.is_reserved());
        assert_eq!(server.backlog(), 1, "poll_ready reserves a unit");
        let busy = Service::call(&mut bare, 100);
        assert!(!bare.is_reserved());

        // Full: not ready (and in line for room).
        let mut probe = bare.clone();
        let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
        assert!(probe.poll_ready(noop).is_pending());
        drop(probe);

        let shed = ServiceBuilder::new()
            .load_shed()
            .service(server.reserving_service(opts));
        let err = shed.clone().oneshot(1).await.unwrap_err();
        assert!(
            err.is::<tower::load_shed::error::Overloaded>(),
            "expected Overloaded, got {err}"
        );
        assert_eq!(busy.await.unwrap(), 100);
        assert_eq!(shed.oneshot(2).await.unwrap(), 2);
        assert_eq!(server.backlog(), 0);
    }

    /// `ConcurrencyLimit` above the server's capacity: callers wait in
    /// `poll_ready` for room, none is refused, and the backlog never
    /// exceeds the capacity. The handle's plain service refuses some of the
    /// same calls with `BacklogFull`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_limit_waits_for_room_through_poll_ready() {
        use tower::{ServiceBuilder, ServiceExt};
        let server = Server::builder(slow_echo()).capacity(2).start().unwrap();
        let opts = CallOptions::timeout(Duration::from_secs(10));
        let limited = ServiceBuilder::new()
            .concurrency_limit(8)
            .service(server.reserving_service(opts));
        let calls: Vec<_> = (0..6)
            .map(|i| tokio::spawn(limited.clone().oneshot(100 + i)))
            .collect();
        let mut most = 0;
        while !calls.iter().all(|c| c.is_finished()) {
            most = most.max(server.backlog());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), 100 + i as u32);
        }
        assert!(most <= 2, "backlog reached {most}");

        let plain = ServiceBuilder::new()
            .concurrency_limit(8)
            .service(server.handle());
        let calls: Vec<_> = (0..6)
            .map(|i| tokio::spawn(plain.clone().oneshot(100 + i)))
            .collect();
        let mut refused = 0;
        for c in calls {
            if let Err(Error::BacklogFull(_)) = c.await.unwrap() {
                refused += 1;
            }
        }
        assert!(refused > 0, "the plain service admitted all six");
    }

    #[tokio::test]
    async fn poll_ready_fails_once_shut_down() {
        let server = Server::start(slow_echo()).unwrap();
        let mut svc = server.handle();
        let mut with = server.service_with(CallOptions::default());
        tokio::task::spawn_blocking(move || server.shutdown())
            .await
            .unwrap();
        assert!(matches!(
            poll_fn(|cx| svc.poll_ready(cx)).await,
            Err(Error::Shutdown)
        ));
        assert!(matches!(
            poll_fn(|cx| with.poll_ready(cx)).await,
            Err(Error::Shutdown)
        ));
        assert!(matches!(
            Service::call(&mut svc, 1).await,
            Err(Error::Shutdown)
        ));
        assert!(format!("{:?}", Service::call(&mut svc, 1)).contains("failed"));
    }
}
