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
//!
//! The blocking streams are in `blocking`, the async ones in `async_stream`;
//! this module holds their options, their window policy and the `Handle`
//! methods that start them.

use std::time::Duration;

use super::{Handle, Pending};
use crate::error::Error;

mod async_stream;
mod blocking;

use async_stream::AsyncOrdered;
pub use async_stream::{AsyncPairStream, AsyncResultStream};
use blocking::Ordered;
pub use blocking::{PairStream, ResultStream};

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

#[cfg(test)]
mod tests {
    use super::{default_window, refill_due};

    #[test]
    fn next_is_ready_only_once_the_oldest_result_is_there() {
        use crate::{Server, ThreadServlet, worker_fn};
        use std::sync::mpsc;
        use std::sync::{Arc, Mutex};
        use std::time::{Duration, Instant};

        // The worker answers only when the test lets it.
        let (go, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let w = worker_fn(move |x: u32| {
            let _ = gate.lock().unwrap().recv();
            x * 2
        });
        let server = Server::builder(ThreadServlet::new(w)).start().unwrap();
        let mut s = server.handle().stream(vec![1u32, 2]);
        // Nothing admitted yet: `next` would have to fill and wait.
        assert!(!s.next_is_ready());
        go.send(()).unwrap();
        assert_eq!(s.next().unwrap().unwrap(), 2);
        // Item 2 is in flight and its worker is held at the gate.
        assert!(!s.next_is_ready());
        go.send(()).unwrap();
        let t = Instant::now();
        while !s.next_is_ready() {
            assert!(t.elapsed() < Duration::from_secs(20), "never ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(s.next().unwrap().unwrap(), 4);
        assert!(s.next().is_none());
        assert!(s.next_is_ready(), "an ended stream returns at once");
    }

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
