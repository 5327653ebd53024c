//! [`ThreadServlet`]: a worker in N threads of the server process.
//!
//! Use it for light steps, for steps that release the CPU (I/O, a native
//! library with its own threads), or for values that cannot be serialized. The
//! threads pull from one bounded queue; with batching, each thread forms its
//! own batches. A panic in `call` fails that item only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::batch::{self, BatchPolicy, Busy, Fill, ServiceModel};
use crate::error::{Error, StartError, WorkerId};
use crate::metrics::{ServletNode, ServletStats, StageRecorder, WorkerStatus};
use crate::servlet::plumbing::{QueueSink, SinkRef, StartContext, Started, TicketRef};
use crate::servlet::{Servlet, SimpleConfig, simple_builder_methods};
use crate::worker::{Worker, WorkerContext, WorkerError, WorkerKind, panic};

/// Runs a [`Worker`] in N threads of the server process (default one).
///
/// ```
/// use mpserver::{worker_fn, Server, ThreadServlet};
///
/// let upper = ThreadServlet::new(worker_fn(|s: String| s.to_uppercase())).workers(2);
/// let server = Server::start(upper).unwrap();
/// assert_eq!(server.call("hi".to_string()).unwrap(), "HI");
/// ```
pub struct ThreadServlet<W> {
    worker: W,
    config: SimpleConfig,
}

impl<W: Worker + Clone> ThreadServlet<W> {
    /// One thread running `worker` (each thread gets its own clone).
    pub fn new(worker: W) -> Self {
        let name = worker.default_name();
        ThreadServlet {
            worker,
            config: SimpleConfig::new(name),
        }
    }

    simple_builder_methods!("thread");
}

impl<W: Worker + Clone> Servlet for ThreadServlet<W> {
    type Input = W::Input;
    type Output = W::Output;

    fn start(
        self: Box<Self>,
        output: SinkRef<W::Output>,
        ctx: &mut StartContext,
    ) -> Result<Started<W::Input>, StartError> {
        let ThreadServlet { worker, config } = *self;
        config.validate()?;
        let (tx, rx) = ctx.queue();
        let depth_rx = rx.clone();
        let mut node = ServletNode::new("thread", config.name.clone())
            .with_queue_depth(move || depth_rx.len());
        let stats = node.stats().clone();
        let policy = config.batch();
        for (index, cpu) in config.placement.0.iter().enumerate() {
            let status = WorkerStatus::new(index, cpu.clone());
            node = node.with_worker(status.clone());
            let ready = ctx.expect_ready();
            let run = ThreadWorker {
                worker: worker.clone(),
                id: WorkerId {
                    name: config.name.clone(),
                    index,
                    pid: None,
                },
                context: WorkerContext {
                    index,
                    name: config.name.clone(),
                    kind: WorkerKind::Thread,
                    cpus: cpu.cpus().map(<[usize]>::to_vec),
                },
                rx: rx.clone(),
                out: output.clone(),
                policy,
                model: ServiceModel::default(),
                stats: stats.clone(),
                status,
                abort: ctx.abort_flag(),
                backtraces: config.backtraces,
            };
            ctx.spawn_pinned(format!("{}#{index}", config.name), cpu.clone(), move || {
                run.run(ready)
            })?;
        }
        Ok(Started {
            input: Arc::new(QueueSink {
                tx,
                fail_to: output,
            }),
            node,
        })
    }
}

struct ThreadWorker<W: Worker> {
    worker: W,
    id: WorkerId,
    context: WorkerContext,
    rx: Receiver<(TicketRef, W::Input)>,
    out: SinkRef<W::Output>,
    policy: BatchPolicy,
    /// This thread's measured batch service time (adaptive batching).
    model: ServiceModel,
    stats: Arc<ServletStats>,
    status: Arc<WorkerStatus>,
    abort: Arc<AtomicBool>,
    /// Capture backtraces of the worker's errors and panics.
    backtraces: bool,
}

impl<W: Worker> ThreadWorker<W> {
    fn run(mut self, ready: crossbeam_channel::Sender<Result<(), StartError>>) {
        let init =
            panic::catch(self.backtraces, || self.worker.init(&self.context)).and_then(|r| r);
        if let Err(error) = init {
            let _ = ready.send(Err(StartError::Init {
                worker: self.id.clone(),
                error,
            }));
            return;
        }
        self.status.alive.store(true, Relaxed);
        let _ = ready.send(Ok(()));
        tracing::debug!(worker = %self.id, "thread worker started");
        if self.policy.batched() {
            self.serve_batches();
        } else {
            self.serve_single();
        }
        let _ = panic::catch(self.backtraces, || self.worker.cleanup());
        self.status.alive.store(false, Relaxed);
        tracing::debug!(worker = %self.id, "thread worker stopped");
    }

    /// Counts an item taken from the queue; false if it is to be skipped.
    fn admit(&self, ticket: &TicketRef) -> bool {
        self.stats.items_in.fetch_add(1, Relaxed);
        if ticket.is_cancelled() || self.abort.load(Relaxed) {
            self.stats.skipped.fetch_add(1, Relaxed);
            false
        } else {
            true
        }
    }

    fn serve_single(&mut self) {
        // This thread's histogram shards, looked up once.
        let stats = self.stats.clone();
        let rec = stats.stage_recorder();
        while let Ok((ticket, x)) = self.rx.recv() {
            if !self.admit(&ticket) {
                continue;
            }
            let began = Instant::now();
            let r = panic::catch(self.backtraces, || self.worker.call(x)).and_then(|r| r);
            self.status.items.fetch_add(1, Relaxed);
            time_stages(&rec, &ticket, began, Instant::now());
            self.deliver(ticket, r);
        }
    }

    fn serve_batches(&mut self) {
        let mut batch: Vec<(TicketRef, W::Input)> = Vec::with_capacity(self.policy.size);
        loop {
            let Ok(first) = self.rx.recv() else { return };
            let start = Instant::now();
            if self.admit(&first.0) {
                batch.push(first);
            }
            // A thread forms its batch when it is idle: under the adaptive
            // policy it takes what is queued and starts.
            let deadline = self.policy.deadline(start, Busy::Idle, &self.model);
            let limit = self.policy.limit(&self.model);
            let fill = batch::fill(&self.rx, &mut batch, limit, deadline, |(t, _)| {
                self.admit(t)
            });
            if !batch.is_empty() {
                self.run_batch(&mut batch);
            }
            if fill == Fill::Disconnected {
                return;
            }
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<(TicketRef, W::Input)>) {
        let n = batch.len();
        let (tickets, values): (Vec<TicketRef>, Vec<W::Input>) = batch.drain(..).unzip();
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.batch_sizes.record(n as u64);
        self.status.items.fetch_add(n as u64, Relaxed);
        let began = Instant::now();
        let results = panic::catch(self.backtraces, || self.worker.call_batch(values));
        let done = Instant::now();
        self.model.observe(1, n as u64, done - began);
        let rec = self.stats.stage_recorder();
        for t in &tickets {
            time_stages(&rec, t, began, done);
        }
        match results {
            Ok(results) if results.len() == n => {
                for (t, r) in tickets.into_iter().zip(results) {
                    self.deliver(t, r);
                }
            }
            Ok(results) => {
                let e = WorkerError::new(
                    "BatchSizeMismatch",
                    format!(
                        "call_batch returned {} results for {n} items",
                        results.len()
                    ),
                );
                self.fail_batch(tickets, e);
            }
            Err(e) => self.fail_batch(tickets, e),
        }
    }

    /// A whole batch failed (a panic, or a wrong number of results): one
    /// error for each item, logged once for the batch.
    fn fail_batch(&self, tickets: Vec<TicketRef>, error: WorkerError) {
        self.log(&error, tickets.len());
        for t in tickets {
            self.fail(t, error.clone());
        }
    }

    /// Worker errors are logged at warn, once per call (`batch`: the items
    /// it failed), as a worker process does.
    fn log(&self, error: &WorkerError, batch: usize) {
        if error.is_panic() {
            tracing::warn!(worker = %self.id, error = %error, batch, "worker panicked");
        } else {
            tracing::warn!(worker = %self.id, error = %error, batch, "worker call failed");
        }
    }

    fn deliver(&self, ticket: TicketRef, r: Result<W::Output, WorkerError>) {
        match r {
            Ok(y) => {
                self.stats.items_ok.fetch_add(1, Relaxed);
                self.out.push(ticket, y);
            }
            Err(error) => {
                self.log(&error, 1);
                self.fail(ticket, error);
            }
        }
    }

    fn fail(&self, ticket: TicketRef, error: WorkerError) {
        self.stats.items_err.fetch_add(1, Relaxed);
        self.out.fail(
            ticket,
            Error::Worker {
                worker: self.id.clone(),
                error,
            },
        );
    }
}

impl<W> std::fmt::Debug for ThreadServlet<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.debug("ThreadServlet", f)
    }
}

/// Records an item's stage latency: its call ran from `began` to `done`
/// (before it is delivered: the next stage resets the clock).
fn time_stages(rec: &StageRecorder<'_>, ticket: &TicketRef, began: Instant, done: Instant) {
    let entered = ticket.clock().and_then(|c| c.entered());
    rec.record(
        entered.map(|e| began.saturating_duration_since(e)),
        None,
        Some(done - began),
        entered.map(|e| done.saturating_duration_since(e)),
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Server, ThreadServlet, ensemble, worker_fn};

    /// A thread servlet that the server enters directly (alone, or as an
    /// ensemble member) times every item's queue and total from the
    /// server's admission: the server sets the stage clock as it pushes the
    /// item in, and the servlet's queue does not read the clock again.
    #[test]
    fn a_thread_stage_entered_by_the_server_times_every_item() {
        let slow = |x: u32| {
            std::thread::sleep(Duration::from_millis(2));
            x
        };
        let server = Server::start(ensemble![
            ThreadServlet::new(worker_fn(slow)),
            ThreadServlet::new(worker_fn(slow)).workers(2),
        ])
        .unwrap();
        for x in 0..3 {
            assert_eq!(server.call(x).unwrap(), vec![x, x]);
        }
        let out: Vec<Vec<u32>> = server.stream(3..20).map(Result::unwrap).collect();
        assert_eq!(out.len(), 17);
        let tree = server.servlets();
        assert_eq!(tree.members.len(), 2, "{tree:?}");
        for m in &tree.members {
            let l = &m.latency;
            assert_eq!((l.queue_ns.count, l.total_ns.count), (20, 20), "{l:?}");
            // Each item's total covers its 2 ms call.
            assert!(l.total_ns.sum >= 20 * 2_000_000, "{l:?}");
            assert!(l.total_ns.sum >= l.compute_ns.sum, "{l:?}");
        }
    }
}
