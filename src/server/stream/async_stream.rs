//! The async streams: the input polled from a `futures_core::Stream`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{Admitted, Finished, StreamOptions, refill_due};
use crate::error::Error;
use crate::server::Handle;
use crate::server::admission::Refused;
use crate::server::async_call::WaitForRoom;
use crate::servlet::plumbing::Push;

/// The ordered window shared by the async streams: admitted requests in
/// input order, refilled from the source when the consumer polls and a
/// chunk of the window is free.
pub(super) struct AsyncOrdered<S, In: Send + 'static, Out: Send + 'static> {
    handle: Handle<In, Out>,
    input: Option<Pin<Box<S>>>,
    /// An input taken from the source, waiting for room.
    next: Option<In>,
    /// In line for room since the instant given.
    room: Option<(WaitForRoom, Instant)>,
    inflight: VecDeque<Admitted<In, Out>>,
    keep: fn(&In) -> Option<In>,
    timeout: Duration,
    return_exceptions: bool,
    window: usize,
    done: bool,
}

/// Results of [`Handle::async_stream`], in input order.
pub struct AsyncResultStream<S, In: Send + 'static, Out: Send + 'static>(
    pub(super) AsyncOrdered<S, In, Out>,
);

/// `(input, result)` pairs of [`Handle::async_stream_pairs`], in input order.
pub struct AsyncPairStream<S, In: Send + 'static, Out: Send + 'static>(
    pub(super) AsyncOrdered<S, In, Out>,
);

// Nothing of the streams is pinned in place: the source is boxed, the rest
// is moved freely.
impl<S, In: Send + 'static, Out: Send + 'static> Unpin for AsyncOrdered<S, In, Out> {}

impl<S, In, Out> AsyncOrdered<S, In, Out>
where
    S: futures_core::Stream<Item = In>,
    In: Send + 'static,
    Out: Send + 'static,
{
    pub(super) fn new(
        handle: &Handle<In, Out>,
        data: S,
        opts: StreamOptions,
        keep: fn(&In) -> Option<In>,
    ) -> Self {
        AsyncOrdered {
            handle: handle.clone(),
            input: Some(Box::pin(data)),
            next: None,
            room: None,
            inflight: VecDeque::new(),
            keep,
            timeout: opts.timeout.unwrap_or(handle.core.timeout),
            return_exceptions: opts.return_exceptions,
            window: opts.window(handle.core.admission.max()),
            done: false,
        }
    }

    /// Admits inputs while there is room; returns when it must wait (for
    /// the source, for room, or for its oldest result). Waits in line for
    /// room only when nothing of this stream is in flight.
    fn admit(&mut self, cx: &mut Context<'_>) {
        let adm = self.handle.core.admission.clone();
        // An item already taken from the source (or a place in line) is
        // pursued whatever the chunk; otherwise refill in chunks as the
        // blocking stream does.
        if self.next.is_none()
            && self.room.is_none()
            && !refill_due(self.inflight.len(), self.window)
        {
            return;
        }
        while self.inflight.len() < self.window {
            let x = match self.next.take() {
                Some(x) => x,
                None => {
                    let Some(input) = self.input.as_mut() else {
                        return;
                    };
                    match input.as_mut().poll_next(cx) {
                        Poll::Ready(Some(x)) => x,
                        Poll::Ready(None) => {
                            self.input = None;
                            return;
                        }
                        Poll::Pending => return,
                    }
                }
            };
            let (permit, started) = match self.room.as_mut() {
                Some((wait, since)) => match Pin::new(wait).poll(cx) {
                    Poll::Ready(r) => {
                        let since = *since;
                        self.room = None;
                        (r.map_err(|m| self.handle.missed(m, since)), since)
                    }
                    Poll::Pending => {
                        self.next = Some(x);
                        return;
                    }
                },
                None => {
                    let started = Instant::now();
                    match adm.try_acquire() {
                        Ok(p) => (Ok(p), started),
                        Err(Refused::Full) => {
                            self.next = Some(x);
                            if self.inflight.is_empty() {
                                // Nothing of ours will free room: wait in line.
                                let wait = self.handle.wait_for_room(started + self.timeout);
                                self.room = Some((wait, started));
                                continue;
                            }
                            return;
                        }
                        Err(r) => (Err(self.handle.refused(r)), started),
                    }
                }
            };
            let kept = (self.keep)(&x);
            let r = permit.and_then(|permit| {
                let e = self.handle.entry()?;
                self.handle
                    .enqueue(&e, x, permit, started, self.timeout, Push::Stream)
                    .map(|(p, _)| p)
            });
            // As the blocking stream: a shut-down server ends the input, and
            // so does a failed item in a stream that stops at its first error
            // (anything admitted behind it would only be cancelled).
            let shut = match &r {
                Err(Error::Shutdown) => true,
                Err(_) => !self.return_exceptions,
                Ok(_) => false,
            };
            self.inflight.push_back((kept, r));
            if shut {
                self.input = None;
                return;
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Finished<In, Out>>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.admit(cx);
        let r = match self.inflight.front_mut() {
            None => {
                if self.input.is_none() && self.next.is_none() {
                    self.done = true;
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
            Some((_, Err(_))) => match self.inflight.pop_front() {
                Some((x, Err(e))) => (x, Err(e)),
                _ => return Poll::Pending,
            },
            Some((_, Ok(p))) => match Pin::new(p).poll(cx) {
                Poll::Ready(r) => match self.inflight.pop_front() {
                    Some((x, _)) => (x, r),
                    None => return Poll::Pending,
                },
                Poll::Pending => return Poll::Pending,
            },
        };
        if r.1.is_err() && !self.return_exceptions {
            // Stop: drop the source and cancel what is in flight.
            self.done = true;
            self.input = None;
            self.next = None;
            self.inflight.clear();
            self.room = None;
        } else {
            // A slot freed up: admit more before the caller polls again.
            self.admit(cx);
        }
        Poll::Ready(Some(r))
    }
}

impl<S, In, Out> futures_core::Stream for AsyncResultStream<S, In, Out>
where
    S: futures_core::Stream<Item = In>,
    In: Send + 'static,
    Out: Send + 'static,
{
    type Item = Result<Out, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_next(cx).map(|o| o.map(|(_, r)| r))
    }
}

impl<S, In, Out> futures_core::Stream for AsyncPairStream<S, In, Out>
where
    S: futures_core::Stream<Item = In>,
    In: Send + 'static,
    Out: Send + 'static,
{
    type Item = (In, Result<Out, Error>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every item is kept (`keep_clone`), so each result has its input.
        self.get_mut()
            .0
            .poll_next(cx)
            .map(|o| o.and_then(|(x, r)| Some((x?, r))))
    }
}

impl<S, In: Send + 'static, Out: Send + 'static> std::fmt::Debug for AsyncResultStream<S, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("AsyncResultStream", f)
    }
}

impl<S, In: Send + 'static, Out: Send + 'static> std::fmt::Debug for AsyncPairStream<S, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("AsyncPairStream", f)
    }
}

impl<S, In: Send + 'static, Out: Send + 'static> AsyncOrdered<S, In, Out> {
    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("in_flight", &self.inflight.len())
            .field("window", &self.window)
            .field("waiting_for_room", &self.room.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
