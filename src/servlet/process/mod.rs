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
//! own result while the reader thread is parked (`reader.rs`). The design
//! note `README.md` in this folder draws the protocols (accounting and
//! credit, the reader hand-over, a worker's life) and maps the files.
//!
//! A process servlet requires the worker, its input and its output to be
//! `Serialize + DeserializeOwned`; the worker value is its configuration, and
//! heavy state belongs in [`Worker::init`].

// The server side's files in dependency order (a file uses only those
// before it): ledger, handover, connection, restart, shared,
// reader, handoff, dispatch, handshake, supervisor. Launching and the worker
// process's side: spawn, image, boot, child. See README.md in this folder.
mod boot;
pub(crate) mod child;
mod connection;
mod delivery;
mod dispatch;
mod handoff;
mod handover;
mod handshake;
mod image;
mod launcher;
mod ledger;
mod reader;
mod restart;
mod results;
mod shared;
pub(crate) mod spawn;
mod supervisor;
mod worker_log;

pub use crate::ipc::shm::ShmSettings;
pub(crate) use crate::servlet::plumbing::ChildRegistry;
pub use boot::BootError;
pub(crate) use boot::bootstrap_if_worker;
pub use child::serve_worker;
pub use launcher::{Launcher, ProcessStarter, StartRequest, WorkerProcess, WorkerSpawn};
pub use restart::RestartPolicy;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StartError;
use crate::ipc::Codec;
use crate::ipc::frame::DEFAULT_MAX_FRAME;
use crate::metrics::{ServletNode, WorkerStatus};
use crate::servlet::plumbing::{QueueSink, SinkRef, StartContext, Started};
use crate::servlet::{Servlet, SimpleConfig, simple_builder_methods};
use crate::worker::Worker;

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
    shm: Option<ShmSettings>,
    recycle_after_items: Option<u64>,
    recycle_above_rss: Option<u64>,
    shutdown_grace: Duration,
    wait_for_worker: Duration,
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
        let name = worker.default_name();
        ProcessServlet {
            worker,
            config: SimpleConfig::new(name),
            restart: RestartPolicy::default(),
            max_inflight: None,
            max_frame: DEFAULT_MAX_FRAME,
            codec: Codec::Postcard,
            shm: Some(ShmSettings::default()),
            recycle_after_items: None,
            recycle_above_rss: None,
            shutdown_grace: Duration::from_secs(10),
            wait_for_worker: Duration::from_secs(1),
            spawn: spawn::SpawnOptions::default(),
        }
    }

    simple_builder_methods!("process");

    /// How crashes are handled.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Items a worker process may hold at once (its credit), fixed at `n`.
    ///
    /// By default the credit is earned: a worker starts at one item (one
    /// batch when batching), so slow items go to idle workers first, and once
    /// its speed is measured it may hold about 2 ms of queued work, at most 64
    /// items (twice the batch size when batching). Set it to pipeline a
    /// fixed number of items regardless of speed.
    /// Zero is refused when the server starts.
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = Some(n);
        self
    }

    /// Largest frame accepted from or sent to a worker (default 256 MiB);
    /// less than 1 KiB is refused when the server starts.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// The value codec at the process boundary (default postcard; use
    /// [`Codec::MessagePack`] for self-describing types such as
    /// `serde_json::Value`).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Values (inputs and outputs) whose encoding passes `bytes` cross
    /// to and from the worker process through shared memory instead of its
    /// socket (default 64 KiB).
    ///
    /// Each worker process gets a region of slots (default 8 slots of
    /// 4 MiB, see [`ProcessServlet::shared_memory`]); a large input is
    /// encoded straight into a free slot, the worker decodes it from there
    /// and writes a large result back into the same slot (a large result
    /// of a small input into a free slot it takes). A large
    /// [`Bytes`](crate::Bytes) in an input is a view of its slot in the
    /// worker, not a copy; the slot stays taken while the view lives. So is
    /// a large `Bytes` in a result, for the caller (while results kept so
    /// hold at most half the slots; past that, a copy). Values
    /// larger than a slot, and values sent while every slot is taken, go by
    /// the socket as before, so the slots never make anyone wait.
    pub fn shm_threshold(mut self, bytes: usize) -> Self {
        self.shm.get_or_insert_with(ShmSettings::default).threshold = bytes;
        self
    }

    /// Shared memory for large values with these settings, or off
    /// (`None`: every value goes by the socket). See
    /// [`ProcessServlet::shm_threshold`].
    pub fn shared_memory(mut self, settings: Option<ShmSettings>) -> Self {
        self.shm = settings;
        self
    }

    /// Restarts a worker process after it handled `n` items, without failing
    /// any request: each process is sent at most `n` items, and is replaced
    /// once it has answered them.
    /// Zero is refused when the server starts.
    pub fn recycle_after(mut self, n: u64) -> Self {
        self.recycle_after_items = Some(n);
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

    /// Longest an item waits for a live worker while none is (all of this
    /// servlet's processes died and wait out their restart back-off): then
    /// it fails with [`WorkerCrashed`](crate::error::WorkerCrashed), an
    /// error a client may retry. Default 1 s.
    pub fn wait_for_worker(mut self, d: Duration) -> Self {
        self.wait_for_worker = d;
        self
    }
}

impl<W> ProcessServlet<W> {
    /// Checks the process settings when the server starts: zero values are
    /// errors naming the servlet and the setting, not silent clamps.
    fn validate(&self) -> Result<(), StartError> {
        let name = &self.config.name;
        let refuse = |what: &str| Err(StartError::Config(format!("servlet {name}: {what}")));
        if self.max_inflight == Some(0) {
            return refuse("max_inflight(0): a worker process must be able to hold an item");
        }
        if self.recycle_after_items == Some(0) {
            return refuse("recycle_after(0): a worker process must be able to handle an item");
        }
        if self.max_frame < 1024 {
            return refuse(&format!(
                "max_frame({}): frames need at least 1024 bytes",
                self.max_frame
            ));
        }
        Ok(())
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
        this.validate()?;
        crate::bytes::warn_if_slow_bytes::<W::Input, W::Output>(&this.config.name);
        let mut worker_bytes = Vec::new();
        this.codec
            .encode_into(&mut worker_bytes, &this.worker)
            .map_err(|e| {
                StartError::Config(format!("cannot serialize worker {}: {e}", this.config.name))
            })?;
        let policy = this.config.batch();
        let min_inflight = this.max_inflight.unwrap_or(if policy.batched() {
            policy.size.max(1)
        } else {
            1
        });
        let max_inflight = this.max_inflight.unwrap_or(if policy.batched() {
            (2 * policy.size).max(2)
        } else {
            64
        });
        let (tx, rx) = ctx.queue();
        let (closing_tx, closing_rx) = crossbeam_channel::bounded::<()>(0);
        // Spilled items (see `shared.rs`) are queued items too.
        let (spill_tx, spill_rx) = crossbeam_channel::unbounded();
        // One count of both queues (see `shared::Queued`).
        let queued = Arc::new(shared::Queued::default());
        let depth = queued.clone();
        let mut node = ServletNode::new("process", this.config.name.clone())
            .with_queue_depth(move || depth.get());
        let shared = Arc::new(shared::Shared::<W> {
            name: this.config.name.clone(),
            worker_bytes,
            policy,
            restart: this.restart,
            min_inflight,
            max_inflight,
            max_frame: this.max_frame,
            codec: this.codec,
            shm: this.shm,
            recycle_after_items: this.recycle_after_items,
            recycle_above_rss: this.recycle_above_rss,
            shutdown_grace: this.shutdown_grace,
            wait_for_worker: this.wait_for_worker,
            live: std::sync::Mutex::new(shared::Live::default()),
            spawn: spawn::SpawnOptions {
                backtraces: this.config.backtraces,
                ..this.spawn
            },
            stats: node.stats().clone(),
            healthy_workers: AtomicUsize::new(this.config.placement.0.len()),
            registry: ctx.shared.clone(),
            spill_tx,
            spill_rx,
            queued,
            retry: shared::Retry::default(),
            _worker: std::marker::PhantomData,
        });
        let mut doors = Vec::new();
        for (index, cpu) in this.config.placement.0.iter().enumerate() {
            let door = Arc::new(handoff::Door::default());
            // Direct hand-off is for workers that may hold more than one
            // item: with a credit of one, every item takes the queue.
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
                closing: closing_rx.clone(),
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
                queue: QueueSink {
                    tx,
                    fail_to: output,
                },
                doors,
                shared,
                next: AtomicUsize::new(0),
                _closing: closing_tx,
            }),
            node,
        })
    }
}

impl<W> std::fmt::Debug for ProcessServlet<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.debug("ProcessServlet", f)
    }
}
