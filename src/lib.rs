#![doc = include_str!("../docs/crate.md")]
// `unsafe` is allowed in one place only: turning a checked function offset
// into a function pointer in a re-executed worker
// (`servlet/process/image.rs`, `resolve`). Registering `init` to run before
// `main` (`auto_init` below) is the `ctor` crate's unsafe, declared there.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

// Linux only, for now: worker processes are spawned from `/proc/self/exe`,
// die with their server through `PR_SET_PDEATHSIG`, are pinned with
// `sched_setaffinity` and measured through `/proc/<pid>/statm`, and the
// reader threads wake on an `eventfd`. Say so in one line instead of a page
// of unresolved imports.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "mpserver supports Linux only for now (it relies on /proc/self/exe, PR_SET_PDEATHSIG, \
     sched_setaffinity and eventfd); build for a Linux target, e.g. in a container"
);

pub mod affinity;
mod batch;
mod bytes;
// The guide and the migration table, as pages of the API documentation; their
// code is compiled and run as doc-tests, so it cannot drift from the API.
pub mod docs;
pub mod error;
// The wire format between the server and its worker processes: not API
// (the benchmarks and the frame fuzzer of this workspace use it).
#[doc(hidden)]
pub mod ipc;
pub mod metrics;
pub mod prelude;
pub mod server;
pub mod servlet;
mod sync;
pub mod worker;

pub use crate::batch::Batching;
pub use crate::bytes::Bytes;
pub use affinity::CpuAffinity;
pub use error::{
    EnsembleError, Error, Rejected, ServerBacklogFull, StartError, TimeoutError, WorkerError,
};
pub use ipc::Codec;
pub use server::{CallOptions, DebugInfo, Handle, Pending, Server, StreamOptions};
pub use servlet::{
    BoxServlet, Ensemble, EnsembleServlet, LenientEnsembleServlet, PassThrough, ProcessServlet,
    RestartPolicy, Sequential, SequentialServlet, Servlet, SwitchServlet, ThreadServlet,
};
pub use worker::{ClosureInProcess, Worker, WorkerContext, WorkerKind, try_worker_fn, worker_fn};

/// Turns this process into a worker process if the server started it as one;
/// otherwise returns at once.
///
/// With the default `auto-init` feature this runs automatically before `main`
/// (so tests and binaries need nothing). Without that feature, call it as the
/// first line of `main` of any binary that starts process servlets (a worker
/// process whose `main` gets further without it refuses to start a server,
/// and the server's start fails naming this function):
///
/// ```no_run
/// # #[allow(clippy::needless_doctest_main)]
/// fn main() {
///     mpserver::init();
///     // ... build and start the server ...
/// }
/// ```
pub fn init() {
    servlet::process::bootstrap_if_worker();
    affinity::process_cpus();
}

// SAFETY: runs before `main`. It only reads the environment and, in a worker
// process started by a server, takes over the process (std works before main
// on Linux: the loader passes argc/argv/envp to .init_array functions). In any
// other process it returns at once without side effects.
#[cfg(feature = "auto-init")]
#[ctor::ctor(unsafe)]
fn auto_init() {
    init();
}
