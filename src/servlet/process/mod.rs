//! [`ProcessServlet`]: a worker in N processes.
//!
//! Each worker process is the running binary re-executed (see `spawn.rs`),
//! connected to the server by a Unix socket pair. On the server side, each
//! worker has a *supervisor* thread that feeds it (pulling from the servlet's
//! shared queue only while the worker has credit, forming batches here so a
//! batch crosses as one frame), and a *reader* thread that delivers results.
//! The supervisor also restarts the worker after a crash (with back-off and a
//! ceiling), recycles it on request, and reaps it: no zombies. A caller's
//! single call that finds a worker idle skips both threads: the caller
//! writes the item itself (`handoff.rs`) and, for a blocking call, reads its
//! own result while the reader thread is parked (`reader.rs`).
//!
//! A process servlet requires the worker, its input and its output to be
//! `Serialize + DeserializeOwned`; the worker value is its configuration, and
//! heavy state belongs in [`Worker::init`].

mod boot;
pub(crate) mod child;
mod handoff;
mod image;
mod reader;
pub(crate) mod spawn;
mod supervisor;
mod worker_log;

pub(crate) use boot::bootstrap_if_worker;
pub use boot::{BootError, serve_worker};
pub use spawn::{Launcher, WorkerSpawn};

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StartError;
use crate::ipc::Codec;
use crate::ipc::frame::DEFAULT_MAX_FRAME;
use crate::metrics::{ServletNode, WorkerStatus};
use crate::servlet::plumbing::{SinkRef, StartContext, Started};
use crate::servlet::{Servlet, SimpleConfig, simple_builder_methods};
use crate::worker::{self, Worker};

/// What happens when a worker process dies.
///
/// The items it held fail with [`WorkerCrashed`](crate::error::WorkerCrashed)
/// (or, with [`retry_crashed`](RestartPolicy::retry_crashed), are retried one
/// at a time and failed as [`PoisonItem`](crate::error::PoisonItem) once they
/// were part of `poison_threshold` crashes). The worker is restarted after a
/// back-off that doubles from `backoff` up to `max_backoff`; after more than
/// `max_restarts` crashes within `window` it is marked unhealthy (readiness
/// fails) and restarted only every `max_backoff`; once it has run for a whole
/// `window` without crashing it is healthy again. A process killed by the
/// server's own forced shutdown is not a crash: what it held ends with
/// [`Error::Shutdown`](crate::Error::Shutdown). Items written to a process
/// that had already died (nothing of the write got out) never reached it:
/// they go to the next process and count neither as crashed nor as attempts.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// First back-off after a crash.
    pub backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Crashes tolerated within `window` before the worker is unhealthy.
    pub max_restarts: usize,
    /// The window for `max_restarts`.
    pub window: Duration,
    /// Retry items that were in flight in a crashed worker (off by default:
    /// work may have side effects).
    pub retry_crashed: bool,
    /// Crashes an item may be part of before it is failed as poison.
    pub poison_threshold: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            max_restarts: 20,
            window: Duration::from_secs(60),
            retry_crashed: false,
            poison_threshold: 2,
        }
    }
}

/// Processes spawned by one server, so a forced shutdown can kill them all.
#[derive(Debug, Default)]
pub(crate) struct ChildRegistry {
    pids: Mutex<HashSet<u32>>,
}

impl ChildRegistry {
    pub(crate) fn add(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.insert(pid);
        }
    }

    /// Must be called before the child is reaped (so its pid cannot be reused
    /// while still listed).
    pub(crate) fn remove(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.remove(&pid);
        }
    }

    pub(crate) fn kill_all(&self) {
        if let Ok(p) = self.pids.lock() {
            for &pid in p.iter() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Pids of the worker processes currently running.
    pub fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Runs a [`Worker`] in N processes (default one, unpinned).
///
/// ```
/// use mpserver::{ProcessServlet, Server, Worker, WorkerError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Double;
///
/// impl Worker for Double {
///     type Input = u64;
///     type Output = u64;
///     fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
///         Ok(2 * x)
///     }
/// }
///
/// # fn main() {
/// let server = Server::start(ProcessServlet::new(Double).workers(2)).unwrap();
/// assert_eq!(server.call(21).unwrap(), 42);
/// # }
/// ```
pub struct ProcessServlet<W> {
    worker: W,
    config: SimpleConfig,
    restart: RestartPolicy,
    max_inflight: Option<usize>,
    max_frame: usize,
    codec: Codec,
    recycle_after_items: Option<u64>,
    recycle_above_rss: Option<u64>,
    shutdown_grace: Duration,
    spawn: spawn::SpawnOptions,
}

impl<W> ProcessServlet<W>
where
    W: Worker + Serialize + DeserializeOwned,
    W::Input: Serialize + DeserializeOwned,
    W::Output: Serialize + DeserializeOwned,
{
    /// One unpinned process running `worker`.
    pub fn new(worker: W) -> Self {
        ProcessServlet {
            worker,
            config: SimpleConfig::new(worker::default_name::<W>()),
            restart: RestartPolicy::default(),
            max_inflight: None,
            max_frame: DEFAULT_MAX_FRAME,
            codec: Codec::Postcard,
            recycle_after_items: None,
            recycle_above_rss: None,
            shutdown_grace: Duration::from_secs(10),
            spawn: spawn::SpawnOptions::default(),
        }
    }

    simple_builder_methods!("process");

    /// How crashes are handled.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Items a worker process may hold at once (its credit). Default: 64, or
    /// twice the batch size when batching.
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = Some(n.max(1));
        self
    }

    /// Largest frame accepted from or sent to a worker (default 256 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(1024);
        self
    }

    /// The value codec at the process boundary (default postcard; use
    /// [`Codec::MessagePack`] for self-describing types such as
    /// `serde_json::Value`).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Restarts a worker process after it handled `n` items, without failing
    /// any request: each process is sent at most `n` items, and is replaced
    /// once it has answered them.
    pub fn recycle_after(mut self, n: u64) -> Self {
        self.recycle_after_items = Some(n.max(1));
        self
    }

    /// Restarts a worker process once its resident memory exceeds `bytes`,
    /// without failing any request. The worker checks its memory every 16
    /// items or 10 ms, whichever comes first; items it already holds are
    /// finished before it is replaced.
    pub fn recycle_above_memory(mut self, bytes: u64) -> Self {
        self.recycle_above_rss = Some(bytes);
        self
    }
}

impl<W> Servlet for ProcessServlet<W>
where
    W: Worker + Serialize + DeserializeOwned,
    W::Input: Serialize + DeserializeOwned,
    W::Output: Serialize + DeserializeOwned,
{
    type Input = W::Input;
    type Output = W::Output;

    fn start(
        self: Box<Self>,
        output: SinkRef<W::Output>,
        ctx: &mut StartContext,
    ) -> Result<Started<W::Input>, StartError> {
        let this = *self;
        this.config.validate()?;
        let mut worker_bytes = Vec::new();
        this.codec
            .encode_into(&mut worker_bytes, &this.worker)
            .map_err(|e| {
                StartError::Config(format!("cannot serialize worker {}: {e}", this.config.name))
            })?;
        let policy = this.config.batch();
        let max_inflight = this.max_inflight.unwrap_or(if policy.batched() {
            (2 * policy.size).max(2)
        } else {
            64
        });
        let (tx, rx) = ctx.queue();
        let depth_rx = rx.clone();
        let mut node = ServletNode::new("process", this.config.name.clone())
            .with_queue_depth(move || depth_rx.len());
        let shared = Arc::new(supervisor::Shared::<W> {
            name: this.config.name.clone(),
            worker_bytes,
            policy,
            restart: this.restart,
            max_inflight,
            max_frame: this.max_frame,
            codec: this.codec,
            recycle_after_items: this.recycle_after_items,
            recycle_above_rss: this.recycle_above_rss,
            shutdown_grace: this.shutdown_grace,
            spawn: spawn::SpawnOptions {
                backtraces: this.config.backtraces,
                ..this.spawn
            },
            stats: node.stats().clone(),
            healthy_workers: AtomicUsize::new(this.config.placement.0.len()),
            registry: ctx.shared.clone(),
            _worker: std::marker::PhantomData,
        });
        let mut doors = Vec::new();
        for (index, cpu) in this.config.placement.0.iter().enumerate() {
            let door = Arc::new(handoff::Door::default());
            // Direct hand-off needs room for the supervisor beside the
            // handed item: a supervisor that took an item from the queue just
            // as a caller handed its worker one would otherwise hold it back
            // while another worker could run it.
            if !policy.batched() && max_inflight >= 2 {
                doors.push(door.clone());
            }
            let status = WorkerStatus::new(index, cpu.clone());
            node = node.with_worker(status.clone());
            let ready = ctx.expect_ready();
            let sup = supervisor::Supervisor {
                shared: shared.clone(),
                index,
                cpus: cpu.clone(),
                rx: rx.clone(),
                out: output.clone(),
                status,
                abort_rx: ctx.abort_signal(),
                door,
            };
            ctx.spawn(
                format!("{}#{index}-supervisor", this.config.name),
                move || sup.run(ready),
            )?;
        }
        Ok(Started {
            input: Arc::new(handoff::ProcessSink {
                tx,
                fail_to: output,
                doors,
                shared,
                next: AtomicUsize::new(0),
            }),
            node,
        })
    }
}
