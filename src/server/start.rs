//! Starting a flow (the builder), and shutting it down.

use crate::sync::lock_std;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::admission::Admission;
use super::request::CompletionSink;
use super::timer::Timer;
use super::{
    Control, Core, DEFAULT_CAPACITY, DEFAULT_TIMEOUT, DRAINING, Handle, RUNNING, STOPPED, Server,
};
use crate::affinity::CpuAffinity;
use crate::error::{Error, StartError};
use crate::servlet::Servlet;
use crate::servlet::plumbing::{SinkRef, StartContext};
use crate::servlet::process::ChildRegistry;

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
    /// stages is bounded by it. Zero is refused when the server starts.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
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

    /// Starts the flow from async code: the start (spawning workers and
    /// waiting for their init, which may take long) runs on a thread of its
    /// own, so the executor is never blocked. Needs no particular runtime.
    ///
    /// ```
    /// use mpserver::{worker_fn, Server, ThreadServlet};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mpserver::Error> {
    /// let server = Server::builder(ThreadServlet::new(worker_fn(|x: u32| x * 2)))
    ///     .capacity(16)
    ///     .start_async()
    ///     .await?;
    /// assert_eq!(server.async_call(21).await?, 42);
    /// server.shutdown_async().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_async(self) -> Result<Server<S::Input, S::Output>, Error> {
        match off_thread("mpserver-start", move || Server::start_with(self)).await {
            Ok(r) => r,
            Err(()) => Err(StartError::Config("the server's start panicked".into()).into()),
        }
    }
}

/// Runs `f` on a thread of its own and waits for its result without
/// blocking the executor. `Err(())` if the thread could not be spawned or
/// `f` panicked.
async fn off_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ()> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| tracing::error!(error = %e, "cannot spawn {name} thread"))?;
    rx.await.map_err(drop)
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
        if b.capacity == 0 {
            return Err(StartError::Config(
                "capacity(0): a server needs room for at least one request".into(),
            )
            .into());
        }
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
        // The timer thread starts before any worker does, so that failing to
        // spawn it leaves nothing to clean up; from here on every failure
        // goes through `abort`, which stops the workers and the timer.
        let timer = Arc::new(Timer::new());
        let timer_thread = {
            let t = timer.clone();
            let cpu = b.main_cpu.clone();
            std::thread::Builder::new()
                .name("mpserver-timer".into())
                .spawn(move || {
                    let _ = cpu.apply_to_current_thread();
                    t.run()
                })
                .map_err(|e| StartError::Config(format!("cannot spawn timer thread: {e}")))?
        };
        let abort =
            |abort_tx: Sender<()>, alive_rx: &Receiver<()>, timer_thread: JoinHandle<()>| {
                abort_flag.store(true, Ordering::SeqCst);
                drop(abort_tx);
                registry.kill_all();
                let _ = alive_rx.recv_timeout(Duration::from_secs(10));
                timer.stop();
                let _ = timer_thread.join();
            };
        let started = match Box::new(b.servlet).start(completion, &mut ctx) {
            Ok(s) => s,
            Err(e) => {
                drop(ctx);
                abort(abort_tx, &alive_rx, timer_thread);
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
                    // Workers mark themselves alive once they report ready.
                    let mut workers = Vec::new();
                    started.node.for_each_named_worker(&mut |name, w| {
                        if !w.alive.load(Ordering::Relaxed) {
                            workers.push(format!("{name}#{}", w.index));
                        }
                    });
                    failure = Some(StartError::Timeout {
                        waited: b.start_timeout,
                        workers,
                    });
                    break;
                }
            }
        }
        if let Some(e) = failure {
            drop(started);
            abort(abort_tx, &alive_rx, timer_thread);
            tracing::warn!(error = %e, "server start failed");
            return Err(e.into());
        }
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

    /// [`shutdown`](Server::shutdown) from async code: the drain and the
    /// reaping of worker processes run on a thread of their own, so the
    /// executor is never blocked. (Dropping a `Server` inside an async task
    /// shuts it down too, but blocks that task's thread while it drains.)
    pub async fn shutdown_async(self) {
        let grace = self.handle.core.shutdown_grace;
        self.shutdown_timeout_async(grace).await;
    }

    /// [`shutdown_timeout`](Server::shutdown_timeout) from async code (see
    /// [`shutdown_async`](Server::shutdown_async)).
    pub async fn shutdown_timeout_async(self, grace: Duration) {
        let core = self.handle.core.clone();
        let r = off_thread("mpserver-shutdown", move || core.shutdown(grace)).await;
        if r.is_err() {
            // Could not run it elsewhere: do it here rather than not at all.
            self.handle.core.shutdown(grace);
        }
        // Dropping `self` now finds the server stopped and returns at once.
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
        let mut control = lock_std(&self.control);
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

impl<S> std::fmt::Debug for Builder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("capacity", &self.capacity)
            .field("timeout", &self.timeout)
            .field("main_cpu", &self.main_cpu)
            .field("start_timeout", &self.start_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}
