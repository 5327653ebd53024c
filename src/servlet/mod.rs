//! Servlets: *where and how* workers run, and how they compose.
//!
//! * Simple servlets run one [`Worker`](crate::Worker) in N processes
//!   ([`ProcessServlet`]) or N threads ([`ThreadServlet`]). Each item goes to
//!   exactly one worker; idle workers pull from a shared bounded queue, so an
//!   item goes to a worker that has room.
//! * Compound servlets arrange other servlets: [`SequentialServlet`] (each
//!   output feeds the next), [`EnsembleServlet`] (every member gets the same
//!   input; results come back in member order), [`SwitchServlet`] (a function
//!   picks one member per item). Any servlet nests in any other, and stage
//!   types must line up at compile time.
//!
//! See `src/servlet/README.md` for the design of back-pressure, failure
//! spreading and shutdown order, and [`plumbing`] for writing a new kind.

pub mod ensemble;
pub mod passthrough;
pub mod plumbing;
pub mod process;
pub mod sequential;
pub mod switch;
pub mod thread;

use std::time::Duration;

use crate::affinity::{CpuAffinity, Placement};
use crate::batch::{BatchPolicy, Batching};
use crate::error::StartError;
use plumbing::{SinkRef, StartContext, Started};

/// A runnable description of part of a flow. Servlets are only a spec; the
/// [`Server`](crate::Server) starts them.
///
/// Implementors: `start` receives the sink for the servlet's output and
/// returns the sink for its input (see [`plumbing`]).
pub trait Servlet: Send + 'static {
    /// What the servlet takes.
    type Input: Send + 'static;
    /// What it produces.
    type Output: Send + 'static;

    /// Starts the servlet's workers, delivering results to `output`.
    fn start(
        self: Box<Self>,
        output: SinkRef<Self::Output>,
        ctx: &mut StartContext,
    ) -> Result<Started<Self::Input>, StartError>;
}

/// A boxed servlet, for heterogeneous members of ensembles and switches.
pub type BoxServlet<In, Out> = Box<dyn Servlet<Input = In, Output = Out>>;

impl<In: Send + 'static, Out: Send + 'static> Servlet for BoxServlet<In, Out> {
    type Input = In;
    type Output = Out;
    fn start(
        self: Box<Self>,
        output: SinkRef<Out>,
        ctx: &mut StartContext,
    ) -> Result<Started<In>, StartError> {
        (*self).start(output, ctx)
    }
}

/// Settings shared by the simple servlets.
#[derive(Debug, Clone)]
pub(crate) struct SimpleConfig {
    pub(crate) name: String,
    pub(crate) placement: Placement,
    pub(crate) batch_size: usize,
    pub(crate) batch_wait_time: Option<Duration>,
    /// The batching policy, if chosen (see [`Batching`]).
    pub(crate) batching: Option<Batching>,
    /// The adaptive policy's latency target.
    pub(crate) batch_latency_target: Option<Duration>,
    /// Capture backtraces of worker errors and panics (see `backtraces`).
    pub(crate) backtraces: bool,
}

impl SimpleConfig {
    /// The `Debug` form of a simple servlet of kind `kind` with this config.
    pub(crate) fn debug(&self, kind: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(kind)
            .field("name", &self.name)
            .field("workers", &self.placement.0.len())
            .finish_non_exhaustive()
    }

    pub(crate) fn new(name: String) -> Self {
        SimpleConfig {
            name,
            placement: Placement::default(),
            batch_size: 0,
            batch_wait_time: None,
            batching: None,
            batch_latency_target: None,
            backtraces: false,
        }
    }

    pub(crate) fn batch(&self) -> BatchPolicy {
        BatchPolicy::new(
            self.batch_size,
            self.batch_wait_time,
            self.batching,
            self.batch_latency_target,
        )
    }

    /// `n` unpinned workers (zero is refused at start, by `validate`).
    pub(crate) fn set_count(&mut self, n: usize) {
        self.placement = Placement(vec![CpuAffinity::any(); n]);
    }

    /// One worker per entry (an empty list is refused at start).
    pub(crate) fn set_cpus<C: Into<CpuAffinity>>(&mut self, cpus: impl IntoIterator<Item = C>) {
        self.placement = Placement(cpus.into_iter().map(Into::into).collect());
    }

    /// Checks the settings when the server starts: at least one worker, and
    /// CPUs that exist and are allowed; errors name the servlet.
    pub(crate) fn validate(&self) -> Result<(), StartError> {
        if self.placement.0.is_empty() {
            return Err(StartError::Config(format!(
                "servlet {}: no workers (workers(0) or an empty cpus list); at least one is needed",
                self.name
            )));
        }
        for (i, c) in self.placement.0.iter().enumerate() {
            c.validate().map_err(|e| match e {
                StartError::Affinity(m) => {
                    StartError::Affinity(format!("servlet {}, worker {i}: {m}", self.name))
                }
                other => other,
            })?;
        }
        Ok(())
    }
}

/// Builder methods common to [`ProcessServlet`] and [`ThreadServlet`].
macro_rules! simple_builder_methods {
    ($unit:literal) => {
        #[doc = concat!("Runs `n` unpinned worker ", $unit, "s (the seed's `cpus=n`).")]
        pub fn workers(mut self, n: usize) -> Self {
            self.config.set_count(n);
            self
        }

        #[doc = concat!("One worker ", $unit, " per entry, each pinned as given: a CPU (`0`), a set of CPUs")]
        /// (`vec![0, 1]`), or [`CpuAffinity::any`](crate::CpuAffinity::any). The seed's `cpus=[...]`.
        pub fn cpus<C: Into<$crate::CpuAffinity>>(mut self, cpus: impl IntoIterator<Item = C>) -> Self {
            self.config.set_cpus(cpus);
            self
        }

        /// The worker name used in errors, logs and metrics (default: the worker type's name).
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.config.name = name.into();
            self
        }

        /// Capture a backtrace where a worker error is created or a worker panics, when
        /// `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` enable backtraces (default: off). A
        /// backtrace costs a stack walk and, once it crosses to the server, symbol resolution
        /// (the first one in a process loads the binary's debug information: tens of
        /// milliseconds and MiB); without this option an error costs about what a result
        /// does. Panic messages always carry their location.
        pub fn backtraces(mut self, yes: bool) -> Self {
            self.config.backtraces = yes;
            self
        }

        /// Batch form: the worker's `call_batch` gets up to `n` items (0, the default, means single calls).
        pub fn batch_size(mut self, n: usize) -> Self {
            self.config.batch_size = n;
            self
        }

        /// Longest wait for a batch to fill, counted from its first item (default 10 ms when
        /// `batch_size > 1`, else 0). Zero takes only what is already queued. Giving it selects
        /// [`Batching::Fixed`](crate::Batching::Fixed) (the seed's window) unless
        /// [`batching`](Self::batching) says otherwise; under
        /// [`Batching::Adaptive`](crate::Batching::Adaptive) it caps how long a batch is held.
        pub fn batch_wait_time(mut self, wait: std::time::Duration) -> Self {
            self.config.batch_wait_time = Some(wait);
            self
        }

        /// How a batch is closed when `batch_size > 1`: [`Batching::Adaptive`](crate::Batching::Adaptive)
        /// (the default without a `batch_wait_time`: an idle worker never waits for company) or
        /// [`Batching::Fixed`](crate::Batching::Fixed) (the seed's window, the default with one).
        pub fn batching(mut self, policy: $crate::Batching) -> Self {
            self.config.batching = Some(policy);
            self
        }

        /// Adaptive batching: the latency a batch aims to stay within. A batch takes at most
        /// the items whose predicted service time (measured per batch overhead plus per item
        /// cost) fits the target, and is held open for a busy worker only while it still fits.
        /// No item fails or is dropped because of it. Ignored by [`Batching::Fixed`](crate::Batching::Fixed).
        pub fn batch_latency_target(mut self, target: std::time::Duration) -> Self {
            self.config.batch_latency_target = Some(target);
            self
        }
    };
}
pub(crate) use simple_builder_methods;

pub use ensemble::{Ensemble, EnsembleServlet, LenientEnsembleServlet};
pub use passthrough::PassThrough;
pub use process::{ProcessServlet, RestartPolicy};
pub use sequential::{Sequential, SequentialServlet};
pub use switch::SwitchServlet;
pub use thread::ThreadServlet;
