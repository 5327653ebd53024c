//! Errors: every module's error types, gathered in one place.
//!
//! A request fails with exactly one [`Error`]. Match on it, or use
//! [`Error::kind`] for a stable short name (used by the HTTP front and in
//! metrics) and [`Error::worker`] to learn which worker was involved.

use crate::sync::lock_std;
use std::any::Any;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::worker::WorkerError;

/// Names one worker: its servlet's worker name, its index, and its process id
/// (for a process worker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerId {
    /// The worker name (by default the worker type's name).
    pub name: String,
    /// Index within its servlet.
    pub index: usize,
    /// OS process id, for process workers.
    pub pid: Option<u32>,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.index)?;
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        Ok(())
    }
}

/// The server had no room for the request: the seed's `ServerBacklogFull`.
///
/// Either the call asked not to wait (back-pressure on, `waited` is zero),
/// or it waited for room up to its time limit and never got any (`waited`
/// says how long). Either way the request never entered the flow: nothing
/// ran, and it is safe to retry. A request that was admitted and then ran
/// out of time is a [`TimeoutError`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "server backlog full: {capacity} requests in flight{}",
    if waited.is_zero() { String::new() } else { format!(" (waited {:.3} s for room)", waited.as_secs_f64()) }
)]
pub struct ServerBacklogFull {
    /// The server's capacity.
    pub capacity: usize,
    /// How long the call waited for room (zero when it asked not to wait).
    pub waited: Duration,
}

impl ServerBacklogFull {
    /// A rejection by a server of `capacity` after waiting `waited` for room
    /// (zero: at once).
    pub fn new(capacity: usize, waited: Duration) -> Self {
        ServerBacklogFull { capacity, waited }
    }
}

/// A request did not finish within its time limit. Counted from the call's
/// start; says how long was spent getting into the server and in total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "request timed out after {:.3} s (limit {:.3} s; {:.3} s spent enqueuing{})",
    total.as_secs_f64(), limit.as_secs_f64(), enqueue.as_secs_f64(),
    if *while_enqueuing { ", never admitted" } else { "" }
)]
pub struct TimeoutError {
    /// Time spent waiting for capacity and entering the first queue.
    pub enqueue: Duration,
    /// Time from the call's start to the timeout.
    pub total: Duration,
    /// The time limit of the call.
    pub limit: Duration,
    /// True when the request was admitted but its time ran out before it
    /// got into the first stage's queue. (A request that waited for room
    /// and never got any is [`Error::BacklogFull`], not a time-out.)
    pub while_enqueuing: bool,
}

/// A worker process died while it held the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("worker {worker} crashed: {how}")]
pub struct WorkerCrashed {
    /// The worker that died.
    pub worker: WorkerId,
    /// How it died, e.g. "killed by signal 9 (SIGKILL)".
    pub how: String,
}

/// An item was failed because its processing crashed workers repeatedly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("poison item: crashed workers {crashes} times (last: {last})")]
pub struct PoisonItem {
    /// How many worker crashes the item was involved in.
    pub crashes: u32,
    /// The last crash.
    pub last: WorkerCrashed,
}

/// Which way a value was crossing a process boundary when its codec failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodecDirection {
    /// Encoding the input in the server process.
    EncodeInput,
    /// Decoding the input in the worker process.
    DecodeInput,
    /// Encoding the output in the worker process.
    EncodeOutput,
    /// Decoding the output in the server process.
    DecodeOutput,
}

/// A value failed to serialize or deserialize at a process boundary. Only that
/// request fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("codec error ({direction:?}) at worker {worker}: {message}")]
pub struct CodecError {
    /// The worker whose boundary it was.
    pub worker: WorkerId,
    /// Where it failed.
    pub direction: CodecDirection,
    /// The codec's message.
    pub message: String,
}

/// An item failed in an [`EnsembleServlet`](crate::EnsembleServlet).
///
/// With `fail_fast` (the default) this is the first member error; otherwise
/// it is raised only when every member failed. The member errors sit in their
/// slots; successful members' values can be recovered with
/// [`EnsembleError::take_values`].
#[derive(thiserror::Error)]
pub struct EnsembleError {
    pub(crate) errors: Vec<Option<Error>>,
    pub(crate) values: std::sync::Mutex<Option<Box<dyn Any + Send>>>,
}

impl EnsembleError {
    /// An ensemble error with these member errors (`None` for a member that
    /// succeeded or had not answered), e.g. to build one in a test.
    pub fn new(errors: Vec<Option<Error>>) -> Self {
        EnsembleError {
            errors,
            values: std::sync::Mutex::new(None),
        }
    }

    /// Per member: `Some(error)` if that member failed (or was not waited for,
    /// with fail-fast), `None` if it succeeded or had not answered.
    pub fn errors(&self) -> &[Option<Error>] {
        &self.errors
    }

    /// The first member error, with its member index.
    pub fn first(&self) -> Option<(usize, &Error)> {
        self.errors
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    }

    /// Takes the successful members' values (`Some(value)` in their slots),
    /// if the member output type is `T` (fail-fast ensembles keep them).
    pub fn take_values<T: 'static>(&self) -> Option<Vec<Option<T>>> {
        let mut guard = lock_std(&self.values);
        let b = guard.take()?;
        match b.downcast::<Vec<Option<T>>>() {
            Ok(v) => Some(*v),
            Err(b) => {
                *guard = Some(b);
                None
            }
        }
    }
}

/// Serialised as its member errors (`{"errors": [...]}`); the successful
/// members' values stay behind.
impl Serialize for EnsembleError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("EnsembleError", 1)?;
        st.serialize_field("errors", &self.errors)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for EnsembleError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Members {
            errors: Vec<Option<Error>>,
        }
        Members::deserialize(d).map(|m| EnsembleError::new(m.errors))
    }
}

impl fmt::Display for EnsembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.errors.iter().filter(|e| e.is_some()).count();
        write!(
            f,
            "ensemble error ({failed} of {} members failed)",
            self.errors.len()
        )?;
        if let Some((i, e)) = self.first() {
            write!(f, "; member {i}: {e}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EnsembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnsembleError")
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

/// Why the server (or a worker within it) could not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartError {
    /// A worker's `init` failed (or panicked).
    #[error("worker {worker} failed to initialise: {error}")]
    Init {
        /// The worker.
        worker: WorkerId,
        /// Its error.
        error: WorkerError,
    },
    /// A worker process could not be spawned or did not complete the handshake.
    #[error("worker {worker} could not be started: {message}")]
    Spawn {
        /// The worker.
        worker: WorkerId,
        /// What went wrong.
        message: String,
    },
    /// Requested CPUs do not exist or are not allowed for this process.
    #[error("invalid CPU affinity: {0}")]
    Affinity(String),
    /// The flow is not valid (e.g. an ensemble without members).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Some workers did not finish starting (their `init`, or a process's
    /// start-up) within the builder's `start_timeout`.
    #[error(
        "workers did not start within {:.3} s: {}",
        waited.as_secs_f64(),
        if workers.is_empty() { "(unknown)".to_string() } else { workers.join(", ") }
    )]
    Timeout {
        /// How long the start waited.
        waited: Duration,
        /// The workers that had not answered, as `name#index`.
        workers: Vec<String>,
    },
}

/// The error of a request (or of a server operation).
///
/// Errors are values that can be built in tests, converted into
/// `anyhow::Error` or `Box<dyn std::error::Error + Send + Sync>`, and
/// serialised with serde (to pass on between services): the form is
/// `{"kind": <Error::kind>, "detail": ...}`.
///
/// ```
/// use std::time::Duration;
/// use mpserver::{Error, ServerBacklogFull};
///
/// let e = Error::BacklogFull(ServerBacklogFull::new(8, Duration::from_millis(5)));
/// let json = serde_json::to_string(&e).unwrap();
/// assert!(json.starts_with(r#"{"kind":"backlog_full""#), "{json}");
/// let back: Error = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.to_string(), e.to_string());
/// let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
/// assert!(boxed.to_string().contains("backlog full"));
/// ```
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Error {
    /// The server had no room: full and the call asked not to wait, or the
    /// call waited for room up to its time limit and got none.
    #[error(transparent)]
    BacklogFull(#[from] ServerBacklogFull),
    /// The time limit of an admitted request passed.
    #[error(transparent)]
    Timeout(#[from] TimeoutError),
    /// The worker returned an error (or panicked) for this item.
    #[error("worker {worker} failed: {error}")]
    Worker {
        /// Which worker.
        worker: WorkerId,
        /// What it raised.
        error: WorkerError,
    },
    /// The worker process died while holding this item.
    #[error(transparent)]
    WorkerCrashed(#[from] WorkerCrashed),
    /// The item crashed workers repeatedly.
    #[error(transparent)]
    PoisonItem(#[from] PoisonItem),
    /// An ensemble member failed.
    #[error(transparent)]
    Ensemble(#[from] EnsembleError),
    /// A value failed to cross a process boundary.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A switch's picker chose a member that does not exist.
    #[error("switch picked member {picked} of {members}")]
    Route {
        /// The index returned by the picker.
        picked: usize,
        /// Number of members.
        members: usize,
    },
    /// The request was cancelled.
    #[error("request cancelled")]
    Cancelled,
    /// The server is shutting down or has shut down.
    #[error("server is shut down")]
    Shutdown,
    /// The server could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

impl Error {
    /// A stable short name for the kind of error (`"timeout"`, `"worker"`, ...).
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// Every value [`Error::kind`] can return, in a fixed order.
    pub const KINDS: [&'static str; 11] = [
        "backlog_full",
        "timeout",
        "worker",
        "worker_crashed",
        "poison_item",
        "ensemble",
        "codec",
        "route",
        "cancelled",
        "shutdown",
        "start",
    ];

    /// Position of this error's kind in [`Error::KINDS`].
    pub(crate) fn kind_index(&self) -> usize {
        match self {
            Error::BacklogFull(_) => 0,
            Error::Timeout(_) => 1,
            Error::Worker { .. } => 2,
            Error::WorkerCrashed(_) => 3,
            Error::PoisonItem(_) => 4,
            Error::Ensemble(_) => 5,
            Error::Codec(_) => 6,
            Error::Route { .. } => 7,
            Error::Cancelled => 8,
            Error::Shutdown => 9,
            Error::Start(_) => 10,
        }
    }

    /// The worker involved, if any (for an ensemble, the first failed member's).
    pub fn worker(&self) -> Option<&WorkerId> {
        match self {
            Error::Worker { worker, .. } => Some(worker),
            Error::WorkerCrashed(c) => Some(&c.worker),
            Error::PoisonItem(p) => Some(&p.last.worker),
            Error::Codec(c) => Some(&c.worker),
            Error::Ensemble(e) => e.first().and_then(|(_, e)| e.worker()),
            Error::Start(StartError::Init { worker, .. } | StartError::Spawn { worker, .. }) => {
                Some(worker)
            }
            _ => None,
        }
    }

    /// The worker's own error, if this is (or, for an ensemble, wraps) one.
    pub fn worker_error(&self) -> Option<&WorkerError> {
        match self {
            Error::Worker { error, .. } => Some(error),
            Error::Start(StartError::Init { error, .. }) => Some(error),
            Error::Ensemble(e) => e.first().and_then(|(_, e)| e.worker_error()),
            _ => None,
        }
    }
}

/// What kind of failure an [`Error`] is, as a caller decides what to do
/// about it: fix the input, report a bug, retry, back off, or go elsewhere.
///
/// The class survives composition: a sequence passes a stage's error on
/// unchanged; a switch's routing error is [`Worker`](ErrorClass::Worker)
/// unless its picker marked the error as invalid input; an ensemble error
/// takes the class of its members' errors (see [`EnsembleError::class`]).
/// A worker marks an error as the client's fault with
/// [`WorkerError::invalid_input`], also across a process boundary.
///
/// The HTTP front maps classes to status codes (422, 500, 503 with
/// `Retry-After`, 503, 504, 503) and the server counts failed requests by
/// class ([`RequestStats::error_classes`](crate::server::RequestStats::error_classes)).
///
/// ```
/// use mpserver::error::{Error, ErrorClass};
/// use mpserver::WorkerError;
///
/// let e = Error::Worker {
///     worker: mpserver::error::WorkerId { name: "Parse".into(), index: 0, pid: None },
///     error: WorkerError::invalid_input("TypeError", "expected a list"),
/// };
/// assert_eq!(e.class(), ErrorClass::InvalidInput);
/// assert!(!e.class().is_retryable());
/// assert!(ErrorClass::Crashed.is_retryable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorClass {
    /// The input is at fault (a worker said so with
    /// [`WorkerError::invalid_input`]): retrying the same input fails again.
    InvalidInput,
    /// A worker failed (error, panic, codec or routing failure, poison
    /// item): a bug or an unusable value; retrying is not expected to help.
    Worker,
    /// A worker process died while holding the item: retrying may succeed.
    Crashed,
    /// Too many requests (the server's capacity was full).
    Overload,
    /// The request's time limit passed.
    Timeout,
    /// The server is shutting down, was shut down, did not start, or dropped
    /// the request.
    Shutdown,
}

impl ErrorClass {
    /// Every class, in a fixed order (the order of [`ErrorClass::as_str`]
    /// in metrics).
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::InvalidInput,
        ErrorClass::Worker,
        ErrorClass::Crashed,
        ErrorClass::Overload,
        ErrorClass::Timeout,
        ErrorClass::Shutdown,
    ];

    /// A stable short name: `"invalid_input"`, `"worker"`, `"crashed"`,
    /// `"overload"`, `"timeout"`, `"shutdown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidInput => "invalid_input",
            ErrorClass::Worker => "worker",
            ErrorClass::Crashed => "crashed",
            ErrorClass::Overload => "overload",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Shutdown => "shutdown",
        }
    }

    /// Whether the same request may succeed if sent again later (crash,
    /// overload, shutdown). A timed-out request is not marked retryable: it
    /// may be too slow every time.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Crashed | ErrorClass::Overload | ErrorClass::Shutdown
        )
    }

    /// Position in [`ErrorClass::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EnsembleError {
    /// The class of this ensemble error, from its members' errors.
    ///
    /// With `fail_fast` only the error that failed the item is present, so
    /// the ensemble error has that error's class (a crash stays a crash).
    /// Without `fail_fast` every member failed; the class is the *least
    /// retryable* of their classes, in the order of [`ErrorClass`]
    /// (invalid input, then worker, crashed, overload, timeout, shutdown):
    /// if one member found the input invalid, sending it again cannot
    /// succeed; the item is retryable only when every member's failure is.
    pub fn class(&self) -> ErrorClass {
        self.errors
            .iter()
            .flatten()
            .map(Error::class)
            .min()
            .unwrap_or(ErrorClass::Worker)
    }
}

impl Error {
    /// The class of this error (see [`ErrorClass`]): how a caller should
    /// react, preserved through sequences, ensembles and switches.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::BacklogFull(_) => ErrorClass::Overload,
            Error::Timeout(_) => ErrorClass::Timeout,
            Error::Worker { error, .. } if error.is_invalid_input() => ErrorClass::InvalidInput,
            Error::Worker { .. } => ErrorClass::Worker,
            Error::WorkerCrashed(_) => ErrorClass::Crashed,
            Error::PoisonItem(_) | Error::Codec(_) | Error::Route { .. } => ErrorClass::Worker,
            Error::Ensemble(e) => e.class(),
            Error::Cancelled | Error::Shutdown | Error::Start(_) => ErrorClass::Shutdown,
        }
    }
}

/// A request refused before it entered the flow, with its input handed back
/// (as crossbeam's `TrySendError::Full(T)`), so the caller can retry it or
/// send it elsewhere: returned by
/// [`Handle::try_submit`](crate::Handle::try_submit). The error is
/// [`Error::BacklogFull`] or [`Error::Shutdown`].
pub struct Rejected<T> {
    /// The input, untouched.
    pub input: T,
    /// Why it was refused.
    pub error: Error,
}

impl<T> Rejected<T> {
    /// The input, to retry or send elsewhere.
    pub fn into_input(self) -> T {
        self.input
    }

    /// The input and the reason.
    pub fn into_parts(self) -> (T, Error) {
        (self.input, self.error)
    }
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused: {}", self.error)
    }
}

impl<T> std::error::Error for Rejected<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> From<Rejected<T>> for Error {
    /// Drops the input, keeping the reason.
    fn from(r: Rejected<T>) -> Self {
        r.error
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
