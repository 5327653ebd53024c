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

// One concern per file:
// - `start`: the builder, starting the flow, and shutting it down;
// - `call`: blocking calls and `submit`, and `enqueue`, the one place where
//   an admitted request enters the flow (the push into its first sink);
// - `async_call`: async calls and waiting for room without blocking;
// - `stream`: streams (options and window in `stream/mod.rs`, the blocking
//   ones in `stream/blocking.rs`, the async ones in `stream/async_stream.rs`);
// - `observe`: read-only state (capacity, backlog, readiness, debug info);
// - `admission`: capacity, the first-come line, waiting for room;
// - `request`: one request's life (permit, result slot, deadline);
// - `timer`: the deadline keeper.
mod admission;
mod async_call;
mod call;
mod observe;
mod request;
#[cfg(feature = "tower")]
pub mod service;
mod start;
mod stream;
mod timer;

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;
use crate::metrics::{ServerStats, ServletNode};
use crate::servlet::plumbing::SinkRef;
use crate::servlet::process::ChildRegistry;

// Re-exported here, where users of the server look for them; they live in
// `metrics`, which observes the server without depending on it.
pub use crate::metrics::{DebugInfo, ERROR_KINDS, RequestInfo, RequestStats, ServerState};
pub use request::Pending;
pub use start::Builder;
pub use stream::{AsyncPairStream, AsyncResultStream, PairStream, ResultStream, StreamOptions};

use admission::Admission;
use timer::Timer;

/// Default per-request time limit (the seed's 60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default capacity (requests in flight across all stages).
pub const DEFAULT_CAPACITY: usize = 256;

/// Options of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Time limit, counted from the call's start (default 60 s).
    pub timeout: Duration,
    /// When the server is full: `true` (default) fails at once with
    /// [`ServerBacklogFull`](crate::ServerBacklogFull); `false` waits for room up to the timeout.
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
    /// Sets the time limit, counted from the call's start.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = mpserver::CallOptions::default().timeout(Duration::from_secs(2)).backpressure(false);
    /// assert_eq!((o.timeout, o.backpressure), (Duration::from_secs(2), false));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets whether a full server fails the call at once.
    pub fn backpressure(mut self, on: bool) -> Self {
        self.backpressure = on;
        self
    }
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const DRAINING: u8 = 2;
const STOPPED: u8 = 3;
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
impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    fn entry(&self) -> Result<SinkRef<In>, Error> {
        let e = match self.core.entry.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        };
        e.ok_or(Error::Shutdown)
    }
}

impl<In: Send + 'static, Out: Send + 'static> std::fmt::Debug for Handle<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("capacity", &self.core.admission.max())
            .field("backlog", &self.core.admission.used())
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static, Out: Send + 'static> std::fmt::Debug for Server<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("handle", &self.handle)
            .finish()
    }
}
