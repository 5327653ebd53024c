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
        let opts = CallOptions {
            timeout: self.core.timeout,
            backpressure: true,
        };
        CallFuture::admitted(self.submit(x, opts))
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

    /// Submits `x` with this service's options. With back-pressure off, the
    /// future waits for room (without blocking the executor) up to the
    /// timeout.
    fn call(&mut self, x: In) -> CallFuture<Out> {
        if self.opts.backpressure {
            return CallFuture::admitted(self.handle.submit(x, self.opts));
        }
        let handle = self.handle.clone();
        let opts = self.opts;
        CallFuture {
            state: State::Waiting(Box::pin(
                async move { handle.async_call_with(x, opts).await },
            )),
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
