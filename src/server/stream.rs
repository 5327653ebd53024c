//! Streaming: an iterator (or async stream) of inputs in, results out in input
//! order.
//!
//! The stream admits items as capacity allows and keeps their [`Pending`]
//! results in a FIFO; order comes from that FIFO, so no reorder buffer is
//! needed. The blocking stream pulls its input on the consumer's thread (no
//! feeder thread: any iterator works, borrowed or not `Send`), refilling the
//! window as results are taken, a quarter of the window at a time (see
//! `refill_due`). Dropping a stream early drops the
//! pending results, which cancels their requests: nothing hangs and the
//! backlog drains.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::admission::Refused;
use super::async_call::WaitForRoom;
use super::{Handle, Pending};
use crate::error::Error;
use crate::servlet::plumbing::{Push, SinkRef};

/// Options of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Time limit per item, from its admission attempt (default: the server's).
    pub timeout: Option<Duration>,
    /// `true`: yield errors in place and go on. `false` (default, as in the
    /// seed): yield the first error, then end the stream, cancelling the rest.
    pub return_exceptions: bool,
    /// Most items of this stream in flight at once. Default: the server's
    /// capacity less an eighth of it (at least one unit), so that calls and
    /// other streams are served beside it (224 of the default 256). Up to
    /// the whole capacity may be given to one stream.
    pub max_inflight: Option<usize>,
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

    /// Most items of this stream in flight at once (see
    /// [`max_inflight`](StreamOptions::max_inflight); capped at the server's
    /// capacity).
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = Some(n.max(1));
        self
    }
}

impl StreamOptions {
    /// The stream's window on a server of `capacity`.
    fn window(&self, capacity: usize) -> usize {
        self.max_inflight
            .unwrap_or_else(|| default_window(capacity))
            .clamp(1, capacity.max(1))
    }
}

/// A stream's default window on a server of `capacity`: all of it but an
/// eighth, and at least one unit kept for others (a server of capacity 1
/// still streams, one item at a time).
///
/// Why not less: the stages of a flow take whatever is queued for them each
/// time they wake, so the depth of the pipeline sets how many items share
/// each wake-up, frame and system call. Half of the capacity (128 of 256,
/// the default from 9ddc419 to 288d149) made the seed pipeline (S4) do about
/// a quarter more context switches and CPU time per item than the whole
/// capacity did at 300b698 (S4 unpinned, main's code with only the window
/// changed, 8 alternating invocations: 128 items 1,069 ms task-clock, 76k
/// switches; 192: 984 ms, 68k; 224: 847 ms, 65k; 256: 875 ms, 61k; 300b698
/// 905 ms, 62k). An eighth (32 units by default) still serves calls beside
/// a stream.
fn default_window(capacity: usize) -> usize {
    capacity.saturating_sub((capacity / 8).max(1)).max(1)
}

/// True when a stream with `inflight` of its `window` in flight is to admit
/// more now: when nothing is in flight, or once a quarter of the window (at
/// least one item) is free. Refilling in chunks rather than one item per
/// result taken hands the flow's first stage a run of items at once, so its
/// worker threads wake once per run instead of once per item: on the seed
/// pipeline (S4, one CPU) this took context switches from about 1.5 to 1.1
/// per item and CPU time per item down by about a fifth. A stream still
/// never has more than its window in flight.
fn refill_due(inflight: usize, window: usize) -> bool {
    inflight == 0 || inflight + (window / 4).max(1) <= window
}

/// An admitted item: its input (if kept) and its pending result.
type Admitted<In, Out> = (Option<In>, Result<Pending<Out>, Error>);
/// A finished item: its input (if kept) and its result.
type Finished<In, Out> = (Option<In>, Result<Out, Error>);

/// The ordered window shared by the blocking streams: admitted requests in
/// input order, refilled from the input when the consumer asks for the
/// next result and a chunk of the window is free.
struct Ordered<I: Iterator, Out: Send + 'static>
where
    I::Item: Send + 'static,
{
    handle: Handle<I::Item, Out>,
    input: Option<I>,
    inflight: VecDeque<Admitted<I::Item, Out>>,
    keep: fn(&I::Item) -> Option<I::Item>,
    timeout: Duration,
    return_exceptions: bool,
    window: usize,
    done: bool,
}

impl<I: Iterator, Out: Send + 'static> Ordered<I, Out>
where
    I::Item: Send + 'static,
{
    fn new(
        handle: &Handle<I::Item, Out>,
        input: I,
        opts: StreamOptions,
        keep: fn(&I::Item) -> Option<I::Item>,
    ) -> Self {
        Ordered {
            handle: handle.clone(),
            input: Some(input),
            inflight: VecDeque::new(),
            keep,
            timeout: opts.timeout.unwrap_or(handle.core.timeout),
            return_exceptions: opts.return_exceptions,
            window: opts.window(handle.core.admission.max()),
            done: false,
        }
    }

    /// Admits inputs while the server has room. Waits for room (in line,
    /// up to the item's time limit) only when nothing of this stream is in
    /// flight; otherwise the oldest result is what to wait for.
    fn fill(&mut self) {
        let adm = self.handle.core.admission.clone();
        if !refill_due(self.inflight.len(), self.window) {
            return;
        }
        // The flow's input, taken once per refill rather than once per item
        // (a lock and a reference count each time), and let go before any
        // wait for room.
        let mut entry: Option<SinkRef<I::Item>> = None;
        while self.inflight.len() < self.window {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            let started = Instant::now();
            let permit = match adm.try_acquire() {
                Ok(p) => Ok(p),
                Err(Refused::Full) if !self.inflight.is_empty() => return,
                Err(Refused::Full) => {
                    entry = None;
                    self.handle.wait_in_line(started, self.timeout)
                }
                Err(r) => Err(self.handle.refused(r)),
            };
            // Room first, then the flow's input: a stream waiting for room
            // must not hold the input open while the server drains.
            let admitted = permit.and_then(|p| {
                let e = match entry.take() {
                    Some(e) => e,
                    None => self.handle.entry()?,
                };
                Ok((p, e))
            });
            let (permit, entry_now) = match admitted {
                Ok(a) => a,
                Err(Error::Shutdown) => {
                    // The next input (if any) ends the stream with the
                    // shutdown, paired with it where inputs are kept.
                    if let Some(x) = input.next() {
                        self.inflight
                            .push_back(((self.keep)(&x), Err(Error::Shutdown)));
                    }
                    self.input = None;
                    return;
                }
                Err(e) => {
                    // No room in time: this item fails with it.
                    let Some(x) = input.next() else {
                        self.input = None;
                        return;
                    };
                    self.inflight.push_back(((self.keep)(&x), Err(e)));
                    if self.stops_at_failure() {
                        return;
                    }
                    continue;
                }
            };
            let Some(x) = input.next() else {
                self.input = None;
                return;
            };
            let kept = (self.keep)(&x);
            let r = self
                .handle
                .enqueue(&entry_now, x, permit, started, self.timeout, Push::Stream)
                .map(|(p, _)| p);
            entry = Some(entry_now);
            let failed = r.is_err();
            self.inflight.push_back((kept, r));
            if failed && self.stops_at_failure() {
                return;
            }
        }
    }

    /// After an item that failed as it was admitted: a stream that stops at
    /// its first error ends there, so nothing more is admitted (it would only
    /// be cancelled). True if so.
    fn stops_at_failure(&mut self) -> bool {
        if !self.return_exceptions {
            self.input = None;
        }
        !self.return_exceptions
    }

    fn next(&mut self) -> Option<Finished<I::Item, Out>> {
        if self.done {
            return None;
        }
        self.fill();
        let Some((x, r)) = self.inflight.pop_front() else {
            self.done = true;
            return None;
        };
        let r = r.and_then(Pending::wait);
        if r.is_err() && !self.return_exceptions {
            self.done = true;
            self.input = None;
            // Dropping the rest cancels them.
            self.inflight.clear();
        }
        Some((x, r))
    }
}

/// Results of [`Handle::stream`], in input order.
///
/// The stream pulls its input on the caller's thread as results are taken,
/// keeping up to the server's capacity in flight; dropping it cancels what
/// it has in flight.
pub struct ResultStream<I: Iterator, Out: Send + 'static>(Ordered<I, Out>)
where
    I::Item: Send + 'static;

/// `(input, result)` pairs of [`Handle::stream_pairs`], in input order.
pub struct PairStream<I: Iterator, Out: Send + 'static>(Ordered<I, Out>)
where
    I::Item: Send + 'static;

impl<I: Iterator, Out: Send + 'static> Iterator for ResultStream<I, Out>
where
    I::Item: Send + 'static,
{
    type Item = Result<Out, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(_, r)| r)
    }
}

impl<I: Iterator, Out: Send + 'static> Iterator for PairStream<I, Out>
where
    I::Item: Send + 'static,
{
    type Item = (I::Item, Result<Out, Error>);
    fn next(&mut self) -> Option<Self::Item> {
        // Every entry of a pairs stream keeps its input.
        let (x, r) = self.0.next()?;
        Some((x?, r))
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
    pub fn stream<I>(&self, data: I) -> ResultStream<I::IntoIter, Out>
    where
        I: IntoIterator<Item = In>,
    {
        self.stream_with(data, StreamOptions::default())
    }

    /// [`stream`](Handle::stream) with options.
    pub fn stream_with<I>(&self, data: I, opts: StreamOptions) -> ResultStream<I::IntoIter, Out>
    where
        I: IntoIterator<Item = In>,
    {
        ResultStream(Ordered::new(self, data.into_iter(), opts, no_keep))
    }

    /// Streams `data`, yielding each input with its result (the seed's
    /// `return_x=True`).
    pub fn stream_pairs<I>(&self, data: I, opts: StreamOptions) -> PairStream<I::IntoIter, Out>
    where
        In: Clone,
        I: IntoIterator<Item = In>,
    {
        PairStream(Ordered::new(self, data.into_iter(), opts, keep_clone::<In>))
    }

    /// Streams an async stream of inputs; the result is a
    /// [`futures_core::Stream`] of results in input order. Any stream will
    /// do (it is pinned inside, so `futures::stream::unfold` or an
    /// `async_stream!` block need no boxing). Needs no particular runtime;
    /// waiting for capacity never blocks the executor. Dropping the result
    /// stream cancels what it has in flight.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use mpserver::{worker_fn, Server, StreamOptions, ThreadServlet};
    ///
    /// let server = Server::start(ThreadServlet::new(worker_fn(|x: u64| x + 1))).unwrap();
    /// // An `unfold` stream is not `Unpin`; it needs no boxing.
    /// let input = futures::stream::unfold(0u64, |n| async move { (n < 3).then_some((n, n + 1)) });
    /// let out: Vec<u64> = futures::executor::block_on(
    ///     server.async_stream(input, StreamOptions::default()).map(Result::unwrap).collect(),
    /// );
    /// assert_eq!(out, vec![1, 2, 3]);
    /// ```
    pub fn async_stream<S>(&self, data: S, opts: StreamOptions) -> AsyncResultStream<S, In, Out>
    where
        S: futures_core::Stream<Item = In>,
    {
        AsyncResultStream(AsyncOrdered::new(self, data, opts, no_keep))
    }

    /// Streams an async stream of inputs, yielding each input with its
    /// result, in input order: the async counterpart of
    /// [`stream_pairs`](Handle::stream_pairs) (the seed's `async_stream(...,
    /// return_x=True)`), with the same options. Dropping the result stream
    /// cancels what it has in flight.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use mpserver::{worker_fn, Server, StreamOptions, ThreadServlet};
    ///
    /// let server = Server::start(ThreadServlet::new(worker_fn(|s: String| s.len()))).unwrap();
    /// let words = futures::stream::iter(["a", "bb", "ccc"].map(String::from));
    /// let pairs: Vec<(String, usize)> = futures::executor::block_on(
    ///     server
    ///         .async_stream_pairs(words, StreamOptions::default())
    ///         .map(|(x, r)| (x, r.unwrap()))
    ///         .collect(),
    /// );
    /// assert_eq!(pairs, vec![("a".into(), 1), ("bb".into(), 2), ("ccc".into(), 3)]);
    /// ```
    pub fn async_stream_pairs<S>(&self, data: S, opts: StreamOptions) -> AsyncPairStream<S, In, Out>
    where
        In: Clone,
        S: futures_core::Stream<Item = In>,
    {
        AsyncPairStream(AsyncOrdered::new(self, data, opts, keep_clone::<In>))
    }
}

/// The ordered window shared by the async streams: admitted requests in
/// input order, refilled from the source when the consumer polls and a
/// chunk of the window is free.
struct AsyncOrdered<S, In: Send + 'static, Out: Send + 'static> {
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
pub struct AsyncResultStream<S, In: Send + 'static, Out: Send + 'static>(AsyncOrdered<S, In, Out>);

/// `(input, result)` pairs of [`Handle::async_stream_pairs`], in input order.
pub struct AsyncPairStream<S, In: Send + 'static, Out: Send + 'static>(AsyncOrdered<S, In, Out>);

// Nothing of the streams is pinned in place: the source is boxed, the rest
// is moved freely.
impl<S, In: Send + 'static, Out: Send + 'static> Unpin for AsyncOrdered<S, In, Out> {}

impl<S, In, Out> AsyncOrdered<S, In, Out>
where
    S: futures_core::Stream<Item = In>,
    In: Send + 'static,
    Out: Send + 'static,
{
    fn new(
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

impl<I: Iterator, Out: Send + 'static> Ordered<I, Out>
where
    I::Item: Send + 'static,
{
    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("in_flight", &self.inflight.len())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<I: Iterator, Out: Send + 'static> std::fmt::Debug for ResultStream<I, Out>
where
    I::Item: Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("ResultStream", f)
    }
}

impl<I: Iterator, Out: Send + 'static> std::fmt::Debug for PairStream<I, Out>
where
    I::Item: Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("PairStream", f)
    }
}

#[cfg(test)]
mod tests {
    use super::{default_window, refill_due};

    #[test]
    fn the_default_window_leaves_an_eighth_and_at_least_one_unit() {
        assert_eq!(default_window(256), 224);
        assert_eq!(default_window(16), 14);
        assert_eq!(default_window(4), 3);
        assert_eq!(default_window(2), 1);
        assert_eq!(default_window(1), 1);
    }

    #[test]
    fn a_window_refills_a_quarter_at_a_time_and_never_overfills() {
        // Window 128: nothing until 32 are free, then it is due.
        assert!(refill_due(0, 128));
        assert!(!refill_due(127, 128));
        assert!(!refill_due(97, 128));
        assert!(refill_due(96, 128));
        // Small windows refill item by item, and an empty stream always.
        assert!(refill_due(3, 4));
        assert!(!refill_due(4, 4));
        assert!(refill_due(0, 1));
        assert!(!refill_due(1, 1));
    }
}
