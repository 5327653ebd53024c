//! `POST /stream`: NDJSON lines in, one NDJSON line out per input line, in
//! input order, written as results arrive.
//!
//! The request body is split into lines by [`LineInput`], which parses each
//! line and feeds the good ones to [`Handle::async_stream`] (which admits
//! them as capacity allows and yields results in order). A line that is not
//! JSON, or not an input, never enters the flow; its error must still come
//! out in its place. So `LineInput` also appends a [`Marker`] per line to a
//! queue shared with [`NdjsonOut`]: `Item` for a line sent into the flow,
//! `Bad` (with its error) for one that was not. `NdjsonOut` walks the queue:
//! a `Bad` is written at once; an `Item` is written when the flow's next
//! result is in. Both ends are polled by the same task (the response body),
//! so the queue's lock is never contended.
//!
//! The line reader itself is shared too: if the flow shuts down while a
//! result is still pending, `NdjsonOut` stops waiting for the flow and
//! answers the remaining lines itself (`shutdown` for each good line, the
//! parse error for each bad one), so every input line still gets exactly one
//! answer line.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use futures_core::Stream;
use mpserver::server::AsyncResultStream;
use mpserver::{Error, Handle, StreamOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Sleep;

use crate::error::ErrorBody;
use crate::json::parse_json;

/// What became of one input line.
enum Marker {
    /// Sent into the flow; its result comes from the result stream.
    Item,
    /// Refused; this error line takes its place.
    Bad(ErrorBody),
}

#[derive(Clone, Default)]
struct Markers(Arc<Mutex<VecDeque<Marker>>>);

impl Markers {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Marker>> {
        match self.0.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        }
    }

    fn push(&self, m: Marker) {
        self.lock().push_back(m);
    }
}

/// The NDJSON response stream for `body`.
pub(crate) fn respond<In, Out>(
    handle: Handle<In, Out>,
    body: Body,
    opts: StreamOptions,
    max_line: usize,
    body_idle: Duration,
    stopped: StopSignal,
) -> NdjsonOut<In, Out>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    let markers = Markers::default();
    let reader = Arc::new(Mutex::new(LineReader {
        body: body.into_data_stream(),
        buf: Vec::new(),
        start: 0,
        scanned: 0,
        line_no: 0,
        eof: false,
        max_line,
        body_idle,
        idle_timer: None,
    }));
    let input = LineInput {
        reader: reader.clone(),
        markers: markers.clone(),
        _in: PhantomData,
    };
    NdjsonOut {
        results: handle.async_stream(input, opts),
        reader,
        markers,
        held: None,
        results_done: false,
        stop: Some(stopped),
    }
}

/// Completes when the flow has shut down.
pub(crate) type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Splits the request body into lines and parses them.
struct LineReader {
    body: BodyDataStream,
    buf: Vec<u8>,
    /// First byte of `buf` not yet consumed.
    start: usize,
    /// Bytes after `start` known to hold no newline.
    scanned: usize,
    line_no: u64,
    eof: bool,
    max_line: usize,
    /// Longest wait for the next chunk of the body.
    body_idle: Duration,
    /// Armed while waiting for the body.
    idle_timer: Option<Pin<Box<Sleep>>>,
}

type SharedReader = Arc<Mutex<LineReader>>;

fn lock(r: &SharedReader) -> MutexGuard<'_, LineReader> {
    match r.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Parses one line: `None` for a blank line (skipped, no output).
fn parse_line<In: DeserializeOwned>(line: &[u8], line_no: u64) -> Option<Result<In, ErrorBody>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(parse_json::<In>(line).map_err(|e| e.into_body(&format!("line {line_no}"))))
}

impl LineReader {
    /// Ends the input with an error in place of the rest.
    fn fail(&mut self, kind: &'static str, message: String) -> ErrorBody {
        self.eof = true;
        self.buf = Vec::new();
        self.start = 0;
        self.scanned = 0;
        ErrorBody::new(kind, message)
    }

    /// The next non-blank line, parsed: an input, or the error that takes
    /// its place. A body that cannot be read or a line that is too long
    /// gives one last error, then the end.
    ///
    /// With `idle_limit`, waiting longer than `body_idle` for the body ends
    /// the input with a `body_timeout` error (the caller allows it only
    /// when no line is waiting for its answer: a client may wait for its
    /// answers before it sends more).
    fn poll_item<In: DeserializeOwned>(
        &mut self,
        cx: &mut Context<'_>,
        idle_limit: bool,
    ) -> Poll<Option<Result<In, ErrorBody>>> {
        loop {
            let from = self.start + self.scanned;
            if let Some(pos) = self.buf[from..].iter().position(|b| *b == b'\n') {
                let end = from + pos;
                let line_start = self.start;
                self.start = end + 1;
                self.scanned = 0;
                self.line_no += 1;
                if let Some(r) = parse_line(&self.buf[line_start..end], self.line_no) {
                    return Poll::Ready(Some(r));
                }
                continue;
            }
            self.scanned = self.buf.len() - self.start;
            if self.scanned > self.max_line {
                let msg = format!(
                    "line {} is longer than {} bytes; the rest of the input is ignored",
                    self.line_no + 1,
                    self.max_line
                );
                return Poll::Ready(Some(Err(self.fail("line_too_long", msg))));
            }
            if self.eof {
                if self.start < self.buf.len() {
                    // A last line without a newline.
                    let line = std::mem::take(&mut self.buf);
                    let line_start = std::mem::replace(&mut self.start, 0);
                    self.scanned = 0;
                    self.line_no += 1;
                    if let Some(r) = parse_line(&line[line_start..], self.line_no) {
                        return Poll::Ready(Some(r));
                    }
                }
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.idle_timer = None;
                    if self.start > 0 {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = format!("cannot read the request body: {e}");
                    return Poll::Ready(Some(Err(self.fail("bad_request", msg))));
                }
                Poll::Ready(None) => self.eof = true,
                Poll::Pending => {
                    if !idle_limit {
                        self.idle_timer = None;
                        return Poll::Pending;
                    }
                    let idle = self.body_idle;
                    let timer = self
                        .idle_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        tracing::warn!(
                            limit_ms = idle.as_millis() as u64,
                            "stream input idle too long: ending its input"
                        );
                        let msg = format!(
                            "no input for {} ms; the rest of the input is ignored",
                            idle.as_millis()
                        );
                        return Poll::Ready(Some(Err(self.fail("body_timeout", msg))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The flow's input: the good lines, each marked `Item`; bad lines are
/// marked `Bad` and skipped (see the module docs).
pub(crate) struct LineInput<In> {
    reader: SharedReader,
    markers: Markers,
    _in: PhantomData<fn() -> In>,
}

impl<In: DeserializeOwned> Stream for LineInput<In> {
    type Item = In;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<In>> {
        let this = self.get_mut();
        let idle_limit = this.markers.lock().is_empty();
        let mut reader = lock(&this.reader);
        loop {
            match reader.poll_item::<In>(cx, idle_limit) {
                Poll::Ready(Some(Ok(x))) => {
                    this.markers.push(Marker::Item);
                    return Poll::Ready(Some(x));
                }
                Poll::Ready(Some(Err(bad))) => this.markers.push(Marker::Bad(bad)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The response body: one line per input line, in input order.
pub(crate) struct NdjsonOut<In: Send + 'static, Out: Send + 'static> {
    results: AsyncResultStream<LineInput<In>, In, Out>,
    reader: SharedReader,
    markers: Markers,
    /// The flow's next result, waiting for the error lines before it.
    held: Option<Result<Out, Error>>,
    /// The flow gives no more results: it ended, or it was shut down.
    results_done: bool,
    /// `None` once the flow has shut down while a result was still pending
    /// (e.g. held by a worker thread stuck in user code). Then every line
    /// still without a result, and every line not read yet, gets a
    /// `shutdown` error line (bad lines keep their own errors), so each input
    /// line still gets exactly one answer.
    stop: Option<StopSignal>,
}

// Nothing in the stream is pinned structurally: results are only moved.
impl<In: Send + 'static, Out: Send + 'static> Unpin for NdjsonOut<In, Out> {}

fn encode<Out: Serialize>(r: Result<Out, Error>) -> Bytes {
    match r {
        Ok(v) => match serde_json::to_vec(&v) {
            Ok(mut line) => {
                line.push(b'\n');
                Bytes::from(line)
            }
            Err(e) => Bytes::from(
                ErrorBody::new(
                    "serialize",
                    format!("cannot encode the result as JSON: {e}"),
                )
                .to_line(),
            ),
        },
        Err(e) => Bytes::from(ErrorBody::from_error(&e).to_line()),
    }
}

fn shutdown_line() -> Bytes {
    Bytes::from(ErrorBody::from_error(&Error::Shutdown).to_line())
}

impl<In, Out> Stream for NdjsonOut<In, Out>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            {
                let mut q = this.markers.lock();
                match q.front() {
                    Some(Marker::Bad(_)) => {
                        if let Some(Marker::Bad(b)) = q.pop_front() {
                            return Poll::Ready(Some(Ok(Bytes::from(b.to_line()))));
                        }
                    }
                    Some(Marker::Item) => {
                        if let Some(r) = this.held.take() {
                            q.pop_front();
                            return Poll::Ready(Some(Ok(encode(r))));
                        }
                    }
                    None => {
                        // Not expected: every result has its marker. Write it anyway.
                        if let Some(r) = this.held.take() {
                            return Poll::Ready(Some(Ok(encode(r))));
                        }
                    }
                }
                // A line without a result once the flow gives no more: the
                // flow was shut down.
                if this.results_done
                    && let Some(m) = q.pop_front()
                {
                    return Poll::Ready(Some(Ok(match m {
                        Marker::Bad(b) => Bytes::from(b.to_line()),
                        Marker::Item => shutdown_line(),
                    })));
                }
            }
            if this.results_done {
                // Lines the flow did not take (it ended its input early when
                // shut down, or we stopped waiting): answer them here. After
                // a normal end the input is exhausted and this ends at once.
                return match lock(&this.reader).poll_item::<In>(cx, false) {
                    Poll::Ready(Some(Ok(_))) => Poll::Ready(Some(Ok(shutdown_line()))),
                    Poll::Ready(Some(Err(bad))) => {
                        Poll::Ready(Some(Ok(Bytes::from(bad.to_line()))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                };
            }
            // `held` is empty here: take the flow's next result. Polling it
            // pulls input lines, which may queue more markers.
            match Pin::new(&mut this.results).poll_next(cx) {
                Poll::Ready(Some(r)) => this.held = Some(r),
                Poll::Ready(None) => this.results_done = true,
                Poll::Pending => {
                    // Results first: once the flow has stopped, results that
                    // can still come mostly are ready, and new lines fail
                    // with `shutdown` as they are admitted. A result still
                    // pending when the stop is seen is answered `shutdown`.
                    if let Some(stop) = this.stop.as_mut()
                        && stop.as_mut().poll(cx).is_ready()
                    {
                        this.stop = None;
                        this.results_done = true;
                        continue;
                    }
                    if !matches!(this.markers.lock().front(), Some(Marker::Bad(_))) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}
