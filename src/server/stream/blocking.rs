//! The blocking streams: the input pulled on the consumer's thread.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Admitted, Finished, StreamOptions, refill_due};
use crate::error::Error;
use crate::server::admission::Refused;
use crate::server::{Handle, Pending};
use crate::servlet::plumbing::{Push, SinkRef};

/// The ordered window shared by the blocking streams: admitted requests in
/// input order, refilled from the input when the consumer asks for the
/// next result and a chunk of the window is free.
pub(super) struct Ordered<I: Iterator, Out: Send + 'static>
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
    pub(super) fn new(
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

    /// True when [`next`](Self::next) would not wait for the flow: the
    /// stream has ended, or its oldest item's result is there (`next` may
    /// still pull input to refill the window, but waits for room only when
    /// nothing is in flight, which is not the case then).
    fn next_is_ready(&self) -> bool {
        self.done
            || match self.inflight.front() {
                None => false,
                Some((_, Err(_))) => true,
                Some((_, Ok(p))) => p.is_ready(),
            }
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
pub struct ResultStream<I: Iterator, Out: Send + 'static>(pub(super) Ordered<I, Out>)
where
    I::Item: Send + 'static;

/// `(input, result)` pairs of [`Handle::stream_pairs`], in input order.
pub struct PairStream<I: Iterator, Out: Send + 'static>(pub(super) Ordered<I, Out>)
where
    I::Item: Send + 'static;

impl<I: Iterator, Out: Send + 'static> ResultStream<I, Out>
where
    I::Item: Send + 'static,
{
    /// True when the next call of `next` returns without waiting for the
    /// flow (the oldest result is there, or the stream has ended). It may
    /// still pull input. For a caller that gives up a lock (e.g. Python's
    /// GIL) only around a wait.
    pub fn next_is_ready(&self) -> bool {
        self.0.next_is_ready()
    }
}

impl<I: Iterator, Out: Send + 'static> PairStream<I, Out>
where
    I::Item: Send + 'static,
{
    /// As [`ResultStream::next_is_ready`].
    pub fn next_is_ready(&self) -> bool {
        self.0.next_is_ready()
    }
}

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
