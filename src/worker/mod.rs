//! Workers: *what* runs. Plain synchronous code that handles one item or a batch.
//!
//! A [`Worker`] is the user's operation. Where and how it runs (in N processes,
//! in N threads, batched or not, pinned to CPUs) is the business of the
//! [servlet](crate::servlet) that wraps it, so one worker moves from a thread to
//! a process without changes.
//!
//! The trait is small: [`Worker::call`] is required; [`Worker::call_batch`],
//! [`Worker::init`] and [`Worker::cleanup`] have defaults. [`worker_fn`] and
//! [`try_worker_fn`] turn a closure into a worker (the seed's
//! `make_threadworker`).
//!
//! ```
//! use mpserver::{Worker, WorkerContext, WorkerError};
//! use serde::{Deserialize, Serialize};
//!
//! /// Configuration travels to the worker process; heavy state is built in `init`.
//! #[derive(Serialize, Deserialize)]
//! struct Scale {
//!     factor: f64,
//!     #[serde(skip)]
//!     table: Vec<f64>,
//! }
//!
//! impl Worker for Scale {
//!     type Input = usize;
//!     type Output = f64;
//!
//!     fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
//!         // e.g. pick a GPU by `ctx.worker_index()`; here, build a table.
//!         self.table = (0..100).map(|i| i as f64 * self.factor).collect();
//!         Ok(())
//!     }
//!
//!     fn call(&mut self, x: usize) -> Result<f64, WorkerError> {
//!         self.table.get(x).copied().ok_or_else(|| WorkerError::msg("out of range"))
//!     }
//! }
//! ```

mod error;
pub(crate) mod panic;

use std::fmt;
use std::marker::PhantomData;

pub use error::WorkerError;

/// The user's operation. Implementations are plain synchronous code.
///
/// * With the servlet's `batch_size` 0 (the default) the servlet calls
///   [`call`](Worker::call) with one item at a time.
/// * With `batch_size > 0` it calls [`call_batch`](Worker::call_batch) with up
///   to `batch_size` items, which must return exactly one result per item, in
///   order (a per-item error fails only that item).
///
/// [`init`](Worker::init) runs inside the worker's own process or thread before
/// the first item (a failure makes server start fail with that error);
/// [`cleanup`](Worker::cleanup) runs there at stop.
///
/// A worker used in a [`ProcessServlet`](crate::ProcessServlet) must also be
/// `Serialize + DeserializeOwned` (the value is its configuration, sent to the
/// worker process), and so must its input and output. A worker used in a
/// [`ThreadServlet`](crate::ThreadServlet) must be `Clone` (one copy per
/// thread).
pub trait Worker: Send + 'static {
    /// The item a call takes.
    type Input: Send + 'static;
    /// The result of a call.
    type Output: Send + 'static;

    /// Handles one item. An `Err` fails that item only; the worker keeps serving.
    fn call(&mut self, x: Self::Input) -> Result<Self::Output, WorkerError>;

    /// Handles a batch; must return one result per item, in input order.
    ///
    /// The default calls [`call`](Worker::call) on each item. Override it when
    /// the batch can be processed faster as a whole (vectorised maths, a model's
    /// batched forward pass).
    fn call_batch(&mut self, batch: Vec<Self::Input>) -> Vec<Result<Self::Output, WorkerError>> {
        batch.into_iter().map(|x| self.call(x)).collect()
    }

    /// Runs once in the worker's own process or thread before any item.
    fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
        let _ = ctx;
        Ok(())
    }

    /// Runs once in the worker's own process or thread when it stops.
    fn cleanup(&mut self) {}

    /// The worker's default name in errors, logs and metrics, used unless
    /// the servlet is given one (`.name(...)`). The default is the type's
    /// name without its path and generics; a closure worker
    /// ([`worker_fn`], [`try_worker_fn`]) is named after the function that
    /// wrote the closure (or the function it was given).
    ///
    /// ```
    /// use mpserver::{worker_fn, Worker};
    ///
    /// fn doubler() -> impl Worker<Input = i64, Output = i64> {
    ///     worker_fn(|x: i64| x * 2)
    /// }
    /// assert_eq!(doubler().default_name(), "doubler");
    /// ```
    fn default_name(&self) -> String {
        default_name::<Self>()
    }
}

/// Whether a worker runs in a process or a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerKind {
    /// A worker process started by a [`ProcessServlet`](crate::ProcessServlet).
    Process,
    /// A worker thread started by a [`ThreadServlet`](crate::ThreadServlet).
    Thread,
}

/// What a worker knows about itself, passed to [`Worker::init`].
#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) kind: WorkerKind,
    pub(crate) cpus: Option<Vec<usize>>,
}

impl WorkerContext {
    /// Index of this worker within its servlet, `0..n` (e.g. to pick a GPU).
    pub fn worker_index(&self) -> usize {
        self.index
    }

    /// The servlet's worker name (by default the worker type's name).
    pub fn worker_name(&self) -> &str {
        &self.name
    }

    /// Process or thread.
    pub fn kind(&self) -> WorkerKind {
        self.kind
    }

    /// The CPUs this worker was pinned to, if it was pinned.
    pub fn cpus(&self) -> Option<&[usize]> {
        self.cpus.as_deref()
    }
}

/// The default worker name for a type: its last path segment, without generics.
pub(crate) fn default_name<W: ?Sized>() -> String {
    let full = std::any::type_name::<W>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// The name of the function that a closure (or function item) of type `F`
/// was written in (or is): its type name less generics, module path and
/// `{{closure}}` segments; `"closure"` if nothing is left.
pub(crate) fn fn_name<F>() -> String {
    let full = std::any::type_name::<F>();
    // Drop generic arguments (which may hold paths of their own).
    let mut plain = String::with_capacity(full.len());
    let mut depth = 0usize;
    for c in full.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split("::")
        .filter(|s| !s.is_empty() && !s.starts_with("{{"))
        .last()
        .map_or_else(|| "closure".to_string(), str::to_string)
}

/// A worker made from a closure; see [`worker_fn`] and [`try_worker_fn`].
pub struct FnWorker<F, In, Out> {
    f: F,
    _types: PhantomData<fn(In) -> Out>,
}

impl<F: Clone, In, Out> Clone for FnWorker<F, In, Out> {
    fn clone(&self) -> Self {
        FnWorker {
            f: self.f.clone(),
            _types: PhantomData,
        }
    }
}

impl<F, In, Out> fmt::Debug for FnWorker<F, In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnWorker").finish_non_exhaustive()
    }
}

/// Makes a thread worker from an infallible closure (the seed's
/// `make_threadworker`).
///
/// ```
/// use mpserver::{worker_fn, Server, ThreadServlet};
///
/// let server = Server::start(ThreadServlet::new(worker_fn(|x: i64| x * 2))).unwrap();
/// assert_eq!(server.call(21).unwrap(), 42);
/// ```
pub fn worker_fn<F, In, Out>(f: F) -> FnWorker<Infallible<F>, In, Out>
where
    F: Fn(In) -> Out + Clone + Send + 'static,
    In: Send + 'static,
    Out: Send + 'static,
{
    FnWorker {
        f: Infallible(f),
        _types: PhantomData,
    }
}

/// Makes a thread worker from a closure that returns a `Result`.
///
/// ```
/// use mpserver::{try_worker_fn, Server, ThreadServlet, WorkerError};
///
/// let parse = try_worker_fn(|s: String| s.parse::<i64>().map_err(WorkerError::from));
/// let server = Server::start(ThreadServlet::new(parse)).unwrap();
/// assert_eq!(server.call("5".to_string()).unwrap(), 5);
/// assert!(server.call("x".to_string()).is_err());
/// ```
pub fn try_worker_fn<F, In, Out>(f: F) -> FnWorker<Fallible<F>, In, Out>
where
    F: Fn(In) -> Result<Out, WorkerError> + Clone + Send + 'static,
    In: Send + 'static,
    Out: Send + 'static,
{
    FnWorker {
        f: Fallible(f),
        _types: PhantomData,
    }
}

/// Marker wrapper for [`worker_fn`] closures.
#[derive(Clone)]
pub struct Infallible<F>(F);
/// Marker wrapper for [`try_worker_fn`] closures.
#[derive(Clone)]
pub struct Fallible<F>(F);

impl<F, In, Out> Worker for FnWorker<Infallible<F>, In, Out>
where
    F: Fn(In) -> Out + Send + 'static,
    In: Send + 'static,
    Out: Send + 'static,
{
    type Input = In;
    type Output = Out;
    fn call(&mut self, x: In) -> Result<Out, WorkerError> {
        Ok((self.f.0)(x))
    }
    fn default_name(&self) -> String {
        fn_name::<F>()
    }
}

impl<F, In, Out> Worker for FnWorker<Fallible<F>, In, Out>
where
    F: Fn(In) -> Result<Out, WorkerError> + Send + 'static,
    In: Send + 'static,
    Out: Send + 'static,
{
    type Input = In;
    type Output = Out;
    fn call(&mut self, x: In) -> Result<Out, WorkerError> {
        (self.f.0)(x)
    }
    fn default_name(&self) -> String {
        fn_name::<F>()
    }
}

impl<F> std::fmt::Debug for Infallible<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Infallible")
    }
}

impl<F> std::fmt::Debug for Fallible<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fallible")
    }
}

/// Marks a closure that could be sent to a worker process: no closure can,
/// so nothing implements this trait (it is sealed). It exists to turn the
/// compiler's answer to a closure worker in a
/// [`ProcessServlet`](crate::ProcessServlet) into one direct message:
///
/// ```compile_fail,E0277
/// use mpserver::{worker_fn, ProcessServlet};
///
/// // error[E0277]: a closure worker (`worker_fn`, `try_worker_fn`) cannot
/// //               run in a `ProcessServlet`
/// let servlet = ProcessServlet::new(worker_fn(|x: i64| x + 1));
/// ```
#[diagnostic::on_unimplemented(
    message = "a closure worker (`worker_fn`, `try_worker_fn`) cannot run in a `ProcessServlet`",
    label = "a closure cannot be sent to a worker process",
    note = "run it in a `ThreadServlet`, or write the worker as a type that implements `Worker` with `#[derive(Serialize, Deserialize)]`"
)]
pub trait ClosureInProcess: sealed::Sealed {}

mod sealed {
    /// Implemented by nothing.
    pub trait Sealed {}
}

/// Only to point the compiler at [`ClosureInProcess`]: a closure worker is
/// never serialized (the bound cannot be met).
impl<F: ClosureInProcess, In, Out> serde::Serialize for FnWorker<F, In, Out> {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "a closure worker cannot be serialized",
        ))
    }
}

/// Only to point the compiler at [`ClosureInProcess`] (see the `Serialize`
/// impl).
impl<'de, F: ClosureInProcess, In, Out> serde::Deserialize<'de> for FnWorker<F, In, Out> {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a closure worker cannot be deserialized",
        ))
    }
}
