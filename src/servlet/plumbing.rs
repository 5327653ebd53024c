//! Low-level pieces for writing new servlet kinds.
//!
//! Users of the library never need this module; implementors of a new
//! [`Servlet`](super::Servlet) do. The design in one paragraph:
//!
//! * An item travels as a ([`TicketRef`], value) pair. The ticket identifies
//!   the request (or, inside an ensemble, one member's share of it) and answers
//!   [`Ticket::is_cancelled`]; every stage checks it before doing work, so a
//!   cancelled or expired request is skipped wherever it sits.
//! * A [`Sink`] is where a stage delivers. Starting a servlet takes the sink
//!   for its output and returns the sink for its input, so a sequence wires
//!   itself back to front and compound servlets are thin.
//! * [`Sink::fail`] carries an error straight to the end of the enclosing flow
//!   (or to the enclosing ensemble), skipping later stages.
//! * Dropping a ticket that was never completed completes the request with
//!   [`Error::Shutdown`] (or nothing, if it had been
//!   cancelled): a request can never be lost silently.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::affinity::CpuAffinity;
use crate::error::{Error, StartError};
use crate::metrics::{ServletNode, StageClock};

/// One request's identity as seen by a pipeline stage.
pub trait Ticket: Send + Sync + 'static {
    /// True once the request was cancelled, timed out, or (inside a fail-fast
    /// ensemble) a sibling member failed it. Work for it should be skipped.
    fn is_cancelled(&self) -> bool;
    /// For downcasting at the sink that owns the ticket type.
    fn as_any(&self) -> &dyn Any;
    /// The item's stage clock, set as it enters each simple servlet, for
    /// per-stage latency (see [`StageClock`]). The default has none: the
    /// servlets then record only the stages they can time alone.
    fn clock(&self) -> Option<&StageClock> {
        None
    }
}

/// Sets `ticket`'s stage clock to now: the item enters a servlet.
pub(crate) fn enter_stage(ticket: &TicketRef) {
    if let Some(c) = ticket.clock() {
        c.enter();
    }
}

/// A shared ticket.
pub type TicketRef = Arc<dyn Ticket>;

/// Where a stage delivers its items.
pub trait Sink<T>: Send + Sync + 'static {
    /// Delivers an item. May block while the next stage is full (back-pressure).
    fn push(&self, ticket: TicketRef, value: T);
    /// Delivers an item, waiting for room at most until `deadline`. On time-out
    /// the item is dropped and `false` returned.
    fn push_until(&self, ticket: TicketRef, value: T, deadline: Instant) -> bool {
        let _ = deadline;
        self.push(ticket, value);
        true
    }
    /// Delivers an item entering the flow the way `kind` says, waiting for
    /// room at most until `deadline`.
    ///
    /// The server calls this for every item it admits; stages call
    /// [`push`](Sink::push) between themselves. A stage may serve a caller's
    /// single call ([`Push::Single`], [`Push::Waiting`]) with less latency at
    /// some cost in throughput (process servlets hand it straight to an idle
    /// worker), and for [`Push::Waiting`] may hand the caller a [`Claim`] to
    /// read the result itself. Compound servlets pass `kind` on to the
    /// member(s) that take the item, and at most one claim back. The default
    /// ignores `kind` and is [`push_until`](Sink::push_until). The item's
    /// stage clock ([`Ticket::clock`]) is set by the caller of `push_call`
    /// (the server does, from the reading that ends admission), so a sink
    /// need not set it here.
    fn push_call(&self, ticket: TicketRef, value: T, deadline: Instant, kind: Push) -> Pushed {
        let _ = kind;
        if self.push_until(ticket, value, deadline) {
            Pushed::Delivered
        } else {
            Pushed::TimedOut
        }
    }
    /// Delivers a failure: it skips the remaining stages of the flow.
    fn fail(&self, ticket: TicketRef, error: Error);
}

/// How an item enters a flow (see [`Sink::push_call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// A stream item, or an item passed between stages.
    Stream,
    /// A caller's single call (submitted or async): nobody waits on the
    /// caller's thread.
    Single,
    /// A caller's single blocking call: the caller waits for the result right
    /// after the push, and may read it itself (a [`Claim`]).
    Waiting,
}

impl Push {
    /// True for a caller's single call (either kind).
    pub fn is_single(self) -> bool {
        self != Push::Stream
    }
}

/// What [`Sink::push_call`] did with an item.
pub enum Pushed {
    /// The item is on its way.
    Delivered,
    /// The item is on its way, and the caller is to read its result where
    /// the stage's worker delivers it (then wait as usual).
    Claimed(Claim),
    /// No room before the deadline: the item was dropped.
    TimedOut,
}

impl std::fmt::Debug for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pushed::Delivered => "Delivered",
            Pushed::Claimed(_) => "Claimed",
            Pushed::TimedOut => "TimedOut",
        })
    }
}

/// Ends a caller's [`ReadClaim::read_until`] early, from any thread: called
/// when the caller's request completes by another route (a fail-fast
/// ensemble sibling, its deadline, a shutdown). Cheap when nobody is reading.
pub type Interrupt = Arc<dyn Fn() + Send + Sync>;

/// A caller's claim to read its own result where a stage's worker will
/// deliver it (process servlets: see `servlet/process/reader.rs`). Dropping
/// the claim gives the reading back.
pub trait ReadClaim: Send {
    /// What ends a [`read_until`](ReadClaim::read_until) under way early; the
    /// caller arranges for it to be called when its request completes.
    fn interrupter(&self) -> Interrupt;
    /// Reads (and delivers) the worker's results until the claimed item's
    /// result is in, until `deadline`, or until `done()` is true (looked at
    /// whenever the [`interrupter`](ReadClaim::interrupter) was called).
    fn read_until(&self, deadline: Instant, done: &dyn Fn() -> bool);
}

/// A claim, type-erased.
pub type Claim = Box<dyn ReadClaim>;

/// A shared sink.
pub type SinkRef<T> = Arc<dyn Sink<T>>;

/// A bounded queue in front of a simple servlet. Failures bypass the queue.
pub(crate) struct QueueSink<In, Out> {
    pub(crate) tx: Sender<(TicketRef, In)>,
    pub(crate) fail_to: SinkRef<Out>,
}

impl<In: Send + 'static, Out: Send + 'static> Sink<In> for QueueSink<In, Out> {
    fn push(&self, ticket: TicketRef, value: In) {
        enter_stage(&ticket);
        // A send error means the stage has stopped; dropping the item completes
        // its request with a shutdown error.
        let _ = self.tx.send((ticket, value));
    }
    fn push_until(&self, ticket: TicketRef, value: In, deadline: Instant) -> bool {
        enter_stage(&ticket);
        match self.tx.send_deadline((ticket, value), deadline) {
            Ok(()) => true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => false,
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => true,
        }
    }
    /// An item entering the flow: the server set its stage clock as it
    /// admitted it, so unlike [`push_until`](Sink::push_until) this does not
    /// read the clock again.
    fn push_call(&self, ticket: TicketRef, value: In, deadline: Instant, _: Push) -> Pushed {
        match self.tx.send_deadline((ticket, value), deadline) {
            Ok(()) | Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => Pushed::Delivered,
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => Pushed::TimedOut,
        }
    }
    fn fail(&self, ticket: TicketRef, error: Error) {
        self.fail_to.fail(ticket, error);
    }
}

/// What a started servlet hands back: the sink for its input and its node in
/// the debug/metrics tree.
pub struct Started<In> {
    /// Where the servlet takes its input.
    pub input: SinkRef<In>,
    /// Its node in the servlet tree (for `debug_info` and metrics).
    pub node: ServletNode,
}

/// Server-wide facilities handed to servlets while they start.
///
/// It spawns the server's internal threads (pinned to `main_cpu` if set), and
/// collects the workers' readiness reports so the server can wait for all of
/// them at once (processes start in parallel) and fail promptly.
pub struct StartContext {
    pub(crate) main_cpu: CpuAffinity,
    pub(crate) ready_tx: Sender<Result<(), StartError>>,
    pub(crate) ready_expected: usize,
    pub(crate) alive_tx: Sender<()>,
    pub(crate) abort_rx: Receiver<()>,
    pub(crate) abort_flag: Arc<AtomicBool>,
    pub(crate) queue_capacity: usize,
    pub(crate) shared: Arc<ChildRegistry>,
}

impl StartContext {
    /// Capacity of each queue between stages (the server's capacity, so that a
    /// stage never blocks the caller before capacity does).
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// A new bounded queue for a stage.
    pub fn queue<T>(&self) -> (Sender<T>, Receiver<T>) {
        crossbeam_channel::bounded(self.queue_capacity)
    }

    /// Registers one more worker that will report readiness through the returned
    /// sender (exactly once).
    pub fn expect_ready(&mut self) -> Sender<Result<(), StartError>> {
        self.ready_expected += 1;
        self.ready_tx.clone()
    }

    /// A receiver that becomes disconnected when the server aborts (forced
    /// shutdown); use it in `select!` next to a stage's input.
    pub fn abort_signal(&self) -> Receiver<()> {
        self.abort_rx.clone()
    }

    /// True once the server has started a forced shutdown.
    pub fn abort_flag(&self) -> Arc<AtomicBool> {
        self.abort_flag.clone()
    }

    /// Spawns an internal thread of the server, pinned to `main_cpu` if set.
    /// The server's shutdown waits for every such thread.
    pub fn spawn<F>(&self, name: String, f: F) -> Result<(), StartError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.spawn_pinned(name, self.main_cpu.clone(), f)
    }

    /// Spawns an internal thread pinned to `cpu` (e.g. a thread worker).
    /// The server's shutdown waits for every such thread.
    pub fn spawn_pinned<F>(&self, name: String, cpu: CpuAffinity, f: F) -> Result<(), StartError>
    where
        F: FnOnce() + Send + 'static,
    {
        let alive = self.alive_tx.clone();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _alive = alive;
                if let Err(e) = cpu.apply_to_current_thread() {
                    tracing::warn!(thread = %name, error = %e, "could not pin server thread");
                }
                f();
            })
            .map(drop)
            .map_err(|e| StartError::Config(format!("cannot spawn thread: {e}")))
    }

    /// The affinity of the server's own threads.
    pub fn main_cpu(&self) -> &CpuAffinity {
        &self.main_cpu
    }
}

/// Processes spawned by one server's servlets, so a forced shutdown can
/// kill them all (see [`StartContext`]).
#[derive(Debug, Default)]
pub(crate) struct ChildRegistry {
    pids: std::sync::Mutex<std::collections::HashSet<u32>>,
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
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl<In> std::fmt::Debug for Started<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StartContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartContext")
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}
