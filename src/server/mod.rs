//! The server: starts a flow and takes requests.
//!
//! [`Server::start`] (or [`Server::builder`]) starts every worker of a servlet
//! tree and waits until all are ready; if any worker's init fails, start fails
//! promptly with that error and leaves no process behind. Requests then come
//! in through [`Handle::call`] (blocking), [`Handle::async_call`],
//! [`Handle::stream`] (an iterator in, results out in input order) and
//! [`Handle::async_stream`]. All share one request path: a capacity permit,
//! a deadline registered with the server's timer, a ticket travelling the
//! flow, and a result slot.
//!
//! Dropping the `Server` shuts it down: intake stops, work in flight drains
//! within the grace period, then anything left is cancelled with
//! [`Error::Shutdown`] and worker processes are killed and reaped.

mod admission;
mod request;
#[cfg(feature = "tower")]
pub mod service;
mod stats;
mod stream;
mod timer;

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::affinity::CpuAffinity;
use crate::error::{Error, ServerBacklogFull, StartError, TimeoutError};
use crate::metrics::{ServletNode, ServletSnapshot};
use crate::servlet::Servlet;
use crate::servlet::plumbing::{Claim, Push, Pushed, SinkRef, StartContext, TicketRef};
use crate::servlet::process::ChildRegistry;

pub use request::Pending;
pub use stats::{ERROR_KINDS, RequestStats};
pub use stream::{AsyncPairStream, AsyncResultStream, PairStream, ResultStream, StreamOptions};

use admission::{Admission, Expirer, Missed, Permit, Refused, Waiter};
use request::{CompletionSink, Request};
use stats::ServerStats;
use timer::{Expire, Timer};

/// Default per-request time limit (the seed's 60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default capacity (requests in flight across all stages).
pub const DEFAULT_CAPACITY: usize = 256;

/// Options of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOptions {
    /// Time limit, counted from the call's start (default 60 s).
    pub timeout: Duration,
    /// When the server is full: `true` (default) fails at once with
    /// [`ServerBacklogFull`]; `false` waits for room up to the timeout.
    pub backpressure: bool,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: DEFAULT_TIMEOUT,
            backpressure: true,
        }
    }
}

impl CallOptions {
    /// Options with the given timeout.
    pub fn timeout(timeout: Duration) -> Self {
        CallOptions {
            timeout,
            ..Self::default()
        }
    }

    /// Sets whether a full server fails the call at once.
    pub fn backpressure(mut self, on: bool) -> Self {
        self.backpressure = on;
        self
    }
}

/// Life-cycle state of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Starting workers.
    Starting,
    /// Serving.
    Running,
    /// Shutting down: no new requests, in-flight ones draining.
    Draining,
    /// Stopped.
    Stopped,
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const DRAINING: u8 = 2;
const STOPPED: u8 = 3;

/// Start-up settings of a [`Server`].
pub struct Builder<S> {
    servlet: S,
    capacity: usize,
    timeout: Duration,
    main_cpu: CpuAffinity,
    start_timeout: Duration,
    shutdown_grace: Duration,
}

impl<S: Servlet> Builder<S> {
    /// Requests in flight across all stages (default 256). Every queue between
    /// stages is bounded by it.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Default per-request time limit (default 60 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Pins the server's own threads (dispatch, result readers, timer). The
    /// seed's `main_cpu`. Default: unpinned.
    pub fn main_cpu(mut self, cpus: impl Into<CpuAffinity>) -> Self {
        self.main_cpu = cpus.into();
        self
    }

    /// Longest wait for all workers to initialise (default 5 minutes).
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// How long shutdown lets in-flight work finish before cancelling it
    /// (default 30 s).
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.shutdown_grace = t;
        self
    }

    /// Starts the flow.
    pub fn start(self) -> Result<Server<S::Input, S::Output>, Error> {
        Server::start_with(self)
    }
}

struct Control {
    abort_tx: Option<Sender<()>>,
    alive_rx: Receiver<()>,
    timer_thread: Option<std::thread::JoinHandle<()>>,
}

pub(crate) struct Core<In, Out> {
    entry: RwLock<Option<SinkRef<In>>>,
    admission: Admission,
    timer: Arc<Timer>,
    stats: Arc<ServerStats>,
    tree: ServletNode,
    state: AtomicU8,
    timeout: Duration,
    shutdown_grace: Duration,
    abort_flag: Arc<AtomicBool>,
    registry: Arc<ChildRegistry>,
    control: Mutex<Control>,
    _out: PhantomData<fn() -> Out>,
}

/// A running flow. Dereferences to [`Handle`], which has the request methods;
/// clone a `Handle` (via [`Server::handle`]) to call from other threads or
/// tasks. Dropping the `Server` shuts the flow down.
///
/// ```
/// use mpserver::{worker_fn, Server, ThreadServlet};
///
/// let server = Server::builder(ThreadServlet::new(worker_fn(|x: u32| x + 1)))
///     .capacity(32)
///     .start()
///     .unwrap();
/// assert_eq!(server.call(1).unwrap(), 2);
/// let all: Vec<u32> = server.stream(0..5).map(Result::unwrap).collect();
/// assert_eq!(all, vec![1, 2, 3, 4, 5]);
/// server.shutdown();
/// ```
pub struct Server<In: Send + 'static, Out: Send + 'static> {
    handle: Handle<In, Out>,
}

/// A cloneable handle to a running server, for calling from many threads and
/// tasks. Calls made after the server shut down fail with [`Error::Shutdown`].
pub struct Handle<In: Send + 'static, Out: Send + 'static> {
    core: Arc<Core<In, Out>>,
}

impl<In: Send + 'static, Out: Send + 'static> Clone for Handle<In, Out> {
    fn clone(&self) -> Self {
        Handle {
            core: self.core.clone(),
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Deref for Server<In, Out> {
    type Target = Handle<In, Out>;
    fn deref(&self) -> &Handle<In, Out> {
        &self.handle
    }
}

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
struct WaitForRoom {
    waiter: Waiter,
    _alarm: Arc<WaitAlarm>,
}

impl std::future::Future for WaitForRoom {
    type Output = Result<Permit, Missed>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.waiter.poll(cx)
    }
}

impl<In: Send + 'static, Out: Send + 'static> Server<In, Out> {
    /// Starts `servlet` with default settings.
    pub fn start<S>(servlet: S) -> Result<Self, Error>
    where
        S: Servlet<Input = In, Output = Out>,
    {
        Self::builder(servlet).start()
    }

    /// Settings before starting.
    pub fn builder<S>(servlet: S) -> Builder<S>
    where
        S: Servlet<Input = In, Output = Out>,
    {
        Builder {
            servlet,
            capacity: DEFAULT_CAPACITY,
            timeout: DEFAULT_TIMEOUT,
            main_cpu: CpuAffinity::any(),
            start_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    fn start_with<S>(b: Builder<S>) -> Result<Self, Error>
    where
        S: Servlet<Input = In, Output = Out>,
    {
        crate::servlet::process::spawn::on_server_start();
        b.main_cpu.validate()?;
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let (alive_tx, alive_rx) = crossbeam_channel::bounded::<()>(0);
        let (abort_tx, abort_rx) = crossbeam_channel::bounded::<()>(0);
        let abort_flag = Arc::new(AtomicBool::new(false));
        let registry = Arc::new(ChildRegistry::default());
        let mut ctx = StartContext {
            main_cpu: b.main_cpu.clone(),
            ready_tx,
            ready_expected: 0,
            alive_tx,
            abort_rx,
            abort_flag: abort_flag.clone(),
            queue_capacity: b.capacity,
            shared: registry.clone(),
        };
        let completion: SinkRef<Out> = Arc::new(CompletionSink(PhantomData));
        let abort = |abort_tx: Sender<()>, alive_rx: &Receiver<()>| {
            abort_flag.store(true, Ordering::SeqCst);
            drop(abort_tx);
            registry.kill_all();
            let _ = alive_rx.recv_timeout(Duration::from_secs(10));
        };
        let started = match Box::new(b.servlet).start(completion, &mut ctx) {
            Ok(s) => s,
            Err(e) => {
                drop(ctx);
                abort(abort_tx, &alive_rx);
                return Err(e.into());
            }
        };
        let expected = ctx.ready_expected;
        drop(ctx);
        let deadline = Instant::now() + b.start_timeout;
        let mut failure: Option<StartError> = None;
        for _ in 0..expected {
            match ready_rx.recv_deadline(deadline) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    failure = Some(StartError::Config(format!(
                        "workers did not start within {:?}",
                        b.start_timeout
                    )));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            drop(started);
            abort(abort_tx, &alive_rx);
            tracing::warn!(error = %e, "server start failed");
            return Err(e.into());
        }
        let timer = Arc::new(Timer::new());
        let t = timer.clone();
        let cpu = b.main_cpu.clone();
        let timer_thread = std::thread::Builder::new()
            .name("mpserver-timer".into())
            .spawn(move || {
                let _ = cpu.apply_to_current_thread();
                t.run()
            })
            .map_err(|e| StartError::Config(format!("cannot spawn timer thread: {e}")))?;
        let core = Arc::new(Core {
            entry: RwLock::new(Some(started.input)),
            admission: Admission::new(b.capacity),
            timer,
            stats: Arc::default(),
            tree: started.node,
            state: AtomicU8::new(RUNNING),
            timeout: b.timeout,
            shutdown_grace: b.shutdown_grace,
            abort_flag,
            registry,
            control: Mutex::new(Control {
                abort_tx: Some(abort_tx),
                alive_rx,
                timer_thread: Some(timer_thread),
            }),
            _out: PhantomData,
        });
        tracing::info!(workers = expected, "server started");
        Ok(Server {
            handle: Handle { core },
        })
    }

    /// A cloneable handle for other threads and tasks.
    pub fn handle(&self) -> Handle<In, Out> {
        self.handle.clone()
    }

    /// Stops the server: drains in-flight work within the grace period, then
    /// cancels what is left and stops every worker. Returns when all worker
    /// processes are reaped (or, for a worker thread stuck in user code, after
    /// a bounded wait).
    pub fn shutdown(self) {
        // Drop does the work.
    }

    /// Like [`shutdown`](Server::shutdown) with a specific grace period.
    pub fn shutdown_timeout(self, grace: Duration) {
        self.handle.core.shutdown(grace);
    }
}

impl<In: Send + 'static, Out: Send + 'static> Drop for Server<In, Out> {
    fn drop(&mut self) {
        let grace = self.handle.core.shutdown_grace;
        self.handle.core.shutdown(grace);
    }
}

impl<In: Send + 'static, Out: Send + 'static> Core<In, Out> {
    fn shutdown(&self, grace: Duration) {
        let prev = self.state.swap(DRAINING, Ordering::SeqCst);
        if prev == STOPPED || prev == DRAINING {
            self.state.store(prev, Ordering::SeqCst);
            return;
        }
        tracing::info!("server draining");
        // Callers waiting for room are turned away now (they were never
        // admitted); the drain waits only for admitted work.
        self.admission.close();
        // Stop intake: once the last in-progress push finishes, the first
        // stage's queue disconnects and the end of input ripples through.
        let entry = match self.entry.write() {
            Ok(mut e) => e.take(),
            Err(p) => p.into_inner().take(),
        };
        drop(entry);
        let mut control = match self.control.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let deadline = Instant::now() + grace;
        let drained = matches!(
            control.alive_rx.recv_deadline(deadline),
            Err(RecvTimeoutError::Disconnected)
        );
        if !drained {
            tracing::warn!("grace period over; cancelling remaining work");
            self.abort_flag.store(true, Ordering::SeqCst);
            control.abort_tx.take();
            self.registry.kill_all();
            let _ = control
                .alive_rx
                .recv_timeout(Duration::from_secs(5).min(grace.max(Duration::from_millis(500))));
        }
        control.abort_tx.take();
        self.timer.stop();
        if let Some(t) = control.timer_thread.take() {
            let _ = t.join();
        }
        // Whatever is still pending (held by a thread that did not stop in
        // time) is answered now: no caller waits past shutdown.
        self.timer.abandon_all();
        self.state.store(STOPPED, Ordering::SeqCst);
        tracing::info!("server stopped");
    }
}

impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    fn entry(&self) -> Result<SinkRef<In>, Error> {
        let e = match self.core.entry.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        };
        e.ok_or(Error::Shutdown)
    }

    fn enqueue(
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
        req.set_enqueued(started.elapsed());
        let pending = Pending::new(rx, weak);
        match entry.push_call(req as TicketRef, x, deadline, push) {
            Pushed::Delivered => Ok((pending, None)),
            Pushed::Claimed(claim) => Ok((pending, Some(claim))),
            Pushed::TimedOut => Err(self.enqueue_timeout(started, timeout)),
        }
    }

    /// Admits one request: room at once, or (back-pressure off) room
    /// within the request's time limit, waiting in line (blocking).
    fn admit(&self, started: Instant, opts: CallOptions) -> Result<Permit, Error> {
        let adm = &self.core.admission;
        match adm.try_acquire() {
            Ok(p) => Ok(p),
            Err(Refused::Full) if !opts.backpressure => adm
                .join()
                .wait(Some(started + opts.timeout))
                .map_err(|m| self.missed(m, started)),
            Err(r) => Err(self.refused(r)),
        }
    }

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
    fn wait_for_room(&self, deadline: Instant) -> WaitForRoom {
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

    fn admit_blocking(
        &self,
        x: In,
        started: Instant,
        opts: CallOptions,
        push: Push,
    ) -> Result<(Pending<Out>, Option<Claim>), Error> {
        self.entry()?;
        let permit = self.admit(started, opts)?;
        // Taken after waiting for room, not before: holding it while waiting
        // would keep the flow's input open during a shutdown's drain.
        let entry = self.entry()?;
        self.enqueue(&entry, x, permit, started, opts.timeout, push)
    }

    /// The error of a caller refused without waiting.
    fn refused(&self, r: Refused) -> Error {
        match r {
            Refused::Full => self.backlog_full(Duration::ZERO),
            Refused::Closed => Error::Shutdown,
        }
    }

    /// The error of a caller that waited for room in vain.
    fn missed(&self, m: Missed, started: Instant) -> Error {
        match m {
            Missed::Expired => self.backlog_full(started.elapsed()),
            Missed::Closed => Error::Shutdown,
        }
    }

    fn backlog_full(&self, waited: Duration) -> Error {
        let e = Error::BacklogFull(ServerBacklogFull {
            capacity: self.core.admission.max(),
            waited,
        });
        self.core.stats.error(&e);
        e
    }

    fn enqueue_timeout(&self, started: Instant, limit: Duration) -> Error {
        let e = Error::Timeout(TimeoutError {
            enqueue: started.elapsed(),
            total: started.elapsed(),
            limit,
            while_enqueuing: true,
        });
        self.core.stats.error(&e);
        e
    }

    /// Calls the flow on `x` with the server's default timeout, failing at
    /// once with [`Error::BacklogFull`] if the server is full.
    pub fn call(&self, x: In) -> Result<Out, Error> {
        self.call_with(
            x,
            CallOptions {
                timeout: self.core.timeout,
                backpressure: true,
            },
        )
    }

    /// Calls the flow on `x` with explicit options.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mpserver::{worker_fn, CallOptions, Server, ThreadServlet};
    ///
    /// let server = Server::start(ThreadServlet::new(worker_fn(|x: u8| x))).unwrap();
    /// let opts = CallOptions::timeout(Duration::from_secs(1)).backpressure(false);
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

    /// Calls the flow from async code, with the server's default timeout and
    /// back-pressure on. Needs no particular runtime: deadlines are kept by the
    /// server. Dropping the future cancels the request.
    pub async fn async_call(&self, x: In) -> Result<Out, Error> {
        self.async_call_with(
            x,
            CallOptions {
                timeout: self.core.timeout,
                backpressure: true,
            },
        )
        .await
    }

    /// Async call with explicit options. Without back-pressure, waiting for
    /// room does not block the executor.
    pub async fn async_call_with(&self, x: In, opts: CallOptions) -> Result<Out, Error> {
        let started = Instant::now();
        self.entry()?;
        let permit = self.admit_async(started, opts).await?;
        // The flow's input is taken once admitted (see `admit_blocking`).
        let entry = self.entry()?;
        self.enqueue(&entry, x, permit, started, opts.timeout, Push::Single)?
            .0
            .await
    }

    /// The server's default per-request time limit.
    pub fn default_timeout(&self) -> Duration {
        self.core.timeout
    }

    /// The server's capacity.
    pub fn capacity(&self) -> usize {
        self.core.admission.max()
    }

    /// Requests in flight now (admitted and not yet fully out of the flow).
    pub fn backlog(&self) -> usize {
        self.core.admission.used()
    }

    /// True when the backlog has reached the capacity (the seed's `full()`).
    pub fn is_full(&self) -> bool {
        self.backlog() >= self.capacity()
    }

    /// Life-cycle state.
    pub fn state(&self) -> ServerState {
        match self.core.state.load(Ordering::SeqCst) {
            STARTING => ServerState::Starting,
            RUNNING => ServerState::Running,
            DRAINING => ServerState::Draining,
            _ => ServerState::Stopped,
        }
    }

    /// True when running and no worker has been given up on.
    pub fn is_ready(&self) -> bool {
        if self.state() != ServerState::Running {
            return false;
        }
        let mut healthy = true;
        self.core
            .tree
            .for_each_worker(&mut |w| healthy &= w.healthy.load(Ordering::Relaxed));
        healthy
    }

    /// Pids of the worker processes running now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.core.registry.pids()
    }

    /// Counters of the server's requests.
    pub fn request_stats(&self) -> RequestStats {
        self.core.stats.snapshot()
    }

    /// A snapshot of the servlet tree with per-servlet and per-worker counters.
    pub fn servlets(&self) -> ServletSnapshot {
        self.core.tree.snapshot()
    }

    /// A serialisable snapshot of the server's state (the seed's `debug_info`).
    pub fn debug_info(&self) -> DebugInfo {
        let now = Instant::now();
        DebugInfo {
            state: self.state(),
            capacity: self.capacity(),
            backlog: self.backlog(),
            ready: self.is_ready(),
            requests: self.request_stats(),
            servlets: self.servlets(),
            oldest_requests: self
                .core
                .timer
                .oldest(10)
                .into_iter()
                .map(|(s, limit)| RequestInfo {
                    age_ms: now.duration_since(s).as_secs_f64() * 1e3,
                    timeout_ms: limit.as_secs_f64() * 1e3,
                })
                .collect(),
        }
    }
}

/// The server's state for diagnostics; serialisable (e.g. to JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DebugInfo {
    /// Life-cycle state.
    pub state: ServerState,
    /// Capacity.
    pub capacity: usize,
    /// Requests in flight.
    pub backlog: usize,
    /// Readiness (see [`Handle::is_ready`]).
    pub ready: bool,
    /// Request counters.
    pub requests: RequestStats,
    /// The servlet tree.
    pub servlets: ServletSnapshot,
    /// The oldest requests still pending.
    pub oldest_requests: Vec<RequestInfo>,
}

/// One pending request in [`DebugInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInfo {
    /// Time since the call started.
    pub age_ms: f64,
    /// Its time limit.
    pub timeout_ms: f64,
}
