//! Streaming: an iterator (or async stream) of inputs in, results out in input
//! order.
//!
//! A feeder admits items as capacity allows (waiting, never failing, for room)
//! and hands their [`Pending`] results, in order, to the consumer; order comes
//! from that FIFO, so no reorder buffer is needed. Dropping the stream early
//! drops the pending results, which cancels their requests, and the feeder
//! stops at its next item: nothing hangs and the backlog drains.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{CallOptions, Handle, Pending};
use crate::error::Error;

/// Options of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Time limit per item, from its admission attempt (default: the server's).
    pub timeout: Option<Duration>,
    /// `true`: yield errors in place and go on. `false` (default, as in the
    /// seed): yield the first error, then end the stream, cancelling the rest.
    pub return_exceptions: bool,
}

impl StreamOptions {
    /// Yield errors in place instead of stopping.
    pub fn return_exceptions(mut self, on: bool) -> Self {
        self.return_exceptions = on;
        self
    }

    /// Per-item time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

type Slot<In, Out> = (Option<In>, Result<Pending<Out>, Error>);

struct Ordered<In: Send + 'static, Out: Send + 'static> {
    rx: Receiver<Slot<In, Out>>,
    return_exceptions: bool,
    done: bool,
}

impl<In: Send + 'static, Out: Send + 'static> Ordered<In, Out> {
    fn start<I>(
        handle: &Handle<In, Out>,
        iter: I,
        opts: StreamOptions,
        keep: fn(&In) -> Option<In>,
    ) -> Self
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(handle.capacity());
        let h = handle.clone();
        let timeout = opts.timeout.unwrap_or(h.core.timeout);
        let iter = iter.into_iter();
        let spawned = std::thread::Builder::new()
            .name("mpserver-stream".into())
            .spawn(move || {
                for x in iter {
                    let kept = keep(&x);
                    let r = h.admit_blocking(
                        x,
                        Instant::now(),
                        CallOptions {
                            timeout,
                            backpressure: false,
                        },
                    );
                    let stop = matches!(r, Err(Error::Shutdown));
                    if tx.send((kept, r)).is_err() || stop {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn stream feeder");
        }
        Ordered {
            rx,
            return_exceptions: opts.return_exceptions,
            done: false,
        }
    }

    fn next(&mut self) -> Option<(Option<In>, Result<Out, Error>)> {
        if self.done {
            return None;
        }
        let (x, r) = self.rx.recv().ok()?;
        let r = r.and_then(Pending::wait);
        if r.is_err() && !self.return_exceptions {
            self.done = true;
        }
        Some((x, r))
    }
}

/// Results of [`Handle::stream`], in input order.
pub struct ResultStream<In: Send + 'static, Out: Send + 'static>(Ordered<In, Out>);

/// `(input, result)` pairs of [`Handle::stream_pairs`], in input order.
pub struct PairStream<In: Send + 'static, Out: Send + 'static>(Ordered<In, Out>);

impl<In: Send + 'static, Out: Send + 'static> Iterator for ResultStream<In, Out> {
    type Item = Result<Out, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(_, r)| r)
    }
}

impl<In: Send + 'static, Out: Send + 'static> Iterator for PairStream<In, Out> {
    type Item = (In, Result<Out, Error>);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (x, r) = self.0.next()?;
            if let Some(x) = x {
                return Some((x, r));
            }
        }
    }
}

fn no_keep<In>(_: &In) -> Option<In> {
    None
}

fn keep_clone<In: Clone>(x: &In) -> Option<In> {
    Some(x.clone())
}

impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    /// Streams `data` through the flow; results come in input order. Stops
    /// after the first error (see [`StreamOptions::return_exceptions`]).
    ///
    /// ```
    /// use mpserver::{worker_fn, Server, ThreadServlet};
    ///
    /// let server = Server::start(ThreadServlet::new(worker_fn(|x: i32| x * x)).workers(3)).unwrap();
    /// let squares: Vec<i32> = server.stream(1..=4).map(Result::unwrap).collect();
    /// assert_eq!(squares, vec![1, 4, 9, 16]);
    /// ```
    pub fn stream<I>(&self, data: I) -> ResultStream<In, Out>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        self.stream_with(data, StreamOptions::default())
    }

    /// [`stream`](Handle::stream) with options.
    pub fn stream_with<I>(&self, data: I, opts: StreamOptions) -> ResultStream<In, Out>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        ResultStream(Ordered::start(self, data, opts, no_keep))
    }

    /// Streams `data`, yielding each input with its result (the seed's
    /// `return_x=True`).
    pub fn stream_pairs<I>(&self, data: I, opts: StreamOptions) -> PairStream<In, Out>
    where
        In: Clone,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        PairStream(Ordered::start(self, data, opts, keep_clone::<In>))
    }

    /// Streams an async stream of inputs; the result is a
    /// [`futures_core::Stream`] of results in input order. Needs no particular
    /// runtime; waiting for capacity never blocks the executor.
    pub fn async_stream<S>(&self, data: S, opts: StreamOptions) -> AsyncResultStream<S, In, Out>
    where
        S: futures_core::Stream<Item = In> + Unpin,
    {
        AsyncResultStream {
            handle: self.clone(),
            input: Some(data),
            waiting: None,
            listener: None,
            inflight: VecDeque::new(),
            timeout: opts.timeout.unwrap_or(self.core.timeout),
            return_exceptions: opts.return_exceptions,
            done: false,
        }
    }
}

/// Results of [`Handle::async_stream`], in input order.
pub struct AsyncResultStream<S, In: Send + 'static, Out: Send + 'static> {
    handle: Handle<In, Out>,
    input: Option<S>,
    waiting: Option<In>,
    listener: Option<event_listener::EventListener>,
    inflight: VecDeque<Result<Pending<Out>, Error>>,
    timeout: Duration,
    return_exceptions: bool,
    done: bool,
}

// The stream never pins its inputs or outputs; only `S` is polled, and it is
// required to be `Unpin`.
impl<S: Unpin, In: Send + 'static, Out: Send + 'static> Unpin for AsyncResultStream<S, In, Out> {}

impl<S, In, Out> AsyncResultStream<S, In, Out>
where
    S: futures_core::Stream<Item = In> + Unpin,
    In: Send + 'static,
    Out: Send + 'static,
{
    /// Admits inputs while there is room; returns when it must wait.
    fn admit(&mut self, cx: &mut Context<'_>) {
        let cap = self.handle.core.capacity.clone();
        while self.inflight.len() < cap.max() {
            let x = match self.waiting.take() {
                Some(x) => x,
                None => {
                    let Some(input) = self.input.as_mut() else {
                        return;
                    };
                    match Pin::new(input).poll_next(cx) {
                        Poll::Ready(Some(x)) => x,
                        Poll::Ready(None) => {
                            self.input = None;
                            return;
                        }
                        Poll::Pending => return,
                    }
                }
            };
            let permit = match cap.try_acquire() {
                Some(p) => p,
                None => {
                    let listener = self.listener.get_or_insert_with(|| cap.event.listen());
                    match cap.try_acquire() {
                        Some(p) => {
                            self.listener = None;
                            p
                        }
                        None => {
                            self.waiting = Some(x);
                            if Pin::new(listener).poll(cx).is_ready() {
                                self.listener = None;
                                continue;
                            }
                            return;
                        }
                    }
                }
            };
            self.listener = None;
            let started = Instant::now();
            let r = self
                .handle
                .entry()
                .and_then(|e| self.handle.enqueue(&e, x, permit, started, self.timeout));
            self.inflight.push_back(r);
        }
    }
}

impl<S, In, Out> futures_core::Stream for AsyncResultStream<S, In, Out>
where
    S: futures_core::Stream<Item = In> + Unpin,
    In: Send + 'static,
    Out: Send + 'static,
{
    type Item = Result<Out, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        this.admit(cx);
        let r = match this.inflight.front_mut() {
            None => {
                if this.input.is_none() && this.waiting.is_none() {
                    this.done = true;
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
            Some(Err(_)) => match this.inflight.pop_front() {
                Some(Err(e)) => Err(e),
                _ => return Poll::Pending,
            },
            Some(Ok(p)) => match Pin::new(p).poll(cx) {
                Poll::Ready(r) => {
                    this.inflight.pop_front();
                    r
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        if r.is_err() && !this.return_exceptions {
            this.done = true;
            this.inflight.clear();
        }
        // A slot freed up: try to admit more before the caller polls again.
        this.admit(cx);
        Poll::Ready(Some(r))
    }
}
