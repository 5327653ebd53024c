//! The error a worker raises, carried across threads and processes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::panic::capture_backtrace;

/// An error raised by a worker's `init` or `call`, with the context needed to
/// understand it far from where it happened.
///
/// `WorkerError` is built from any [`std::error::Error`] with `?` or `.into()`:
/// it records the error's *type name* (as Python records the exception class),
/// its message, the chain of `source()` messages, and a backtrace when one was
/// captured: only on the thread of a worker whose servlet asked for backtraces
/// (`.backtraces(true)`), and only when `RUST_BACKTRACE=1` or
/// `RUST_LIB_BACKTRACE=1` enable them, so that ordinary errors stay cheap. Panics inside a
/// worker become a `WorkerError` too, with [`WorkerError::is_panic`] true.
///
/// Like `anyhow::Error`, it deliberately does not implement
/// [`std::error::Error`] itself, so that the blanket `From` conversion exists.
/// It is serialisable: that is how it crosses from a worker process to the
/// server.
///
/// ```
/// use mpserver::WorkerError;
///
/// fn parse(x: &str) -> Result<i64, WorkerError> {
///     Ok(x.parse::<i64>()?)
/// }
/// let err = parse("nope").unwrap_err();
/// assert_eq!(err.type_name(), "core::num::error::ParseIntError");
/// assert_eq!(err.message(), "invalid digit found in string");
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerError(Box<Inner>);

#[derive(Clone, Default, Serialize, Deserialize)]
struct Inner {
    type_name: String,
    message: String,
    sources: Vec<String>,
    backtrace: Option<String>,
    panic: bool,
    /// The worker said the input is at fault ([`WorkerError::invalid_input`]).
    #[serde(default)]
    invalid_input: bool,
    /// Opaque bytes attached by a foreign worker (e.g. a pickled Python
    /// exception); they cross process boundaries with the error.
    #[serde(default)]
    detail: Option<Vec<u8>>,
    /// An in-process attachment (e.g. the Python exception object of a thread
    /// worker); it does not cross process boundaries.
    #[serde(skip)]
    local: Option<Local>,
}

/// An in-process attachment of a [`WorkerError`].
type Local = std::sync::Arc<dyn std::any::Any + Send + Sync>;

impl PartialEq for Inner {
    fn eq(&self, other: &Self) -> bool {
        self.type_name == other.type_name
            && self.message == other.message
            && self.sources == other.sources
            && self.backtrace == other.backtrace
            && self.panic == other.panic
            && self.invalid_input == other.invalid_input
            && self.detail == other.detail
            && match (&self.local, &other.local) {
                (None, None) => true,
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for Inner {}

impl WorkerError {
    /// An error with a given type name and message (for errors that are not
    /// Rust error values, e.g. a message from a foreign library).
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        WorkerError(Box::new(Inner {
            type_name: type_name.into(),
            message: message.into(),
            backtrace: capture_backtrace(),
            ..Inner::default()
        }))
    }

    /// An error that blames the input (a wrong type, a value out of range):
    /// its [`Error::class`](crate::Error::class) is
    /// [`ErrorClass::InvalidInput`](crate::error::ErrorClass::InvalidInput),
    /// which the HTTP front answers with 422. The mark crosses process
    /// boundaries with the error.
    ///
    /// ```
    /// use mpserver::WorkerError;
    ///
    /// let e = WorkerError::invalid_input("TypeError", "'int' object is not subscriptable");
    /// assert!(e.is_invalid_input());
    /// let e: WorkerError = "x".parse::<i32>().map_err(WorkerError::from).unwrap_err();
    /// assert!(e.into_invalid_input().is_invalid_input());
    /// ```
    ///
    /// No backtrace is captured for it, even with `RUST_BACKTRACE` set: the
    /// input is at fault, not the code, and a client must not be able to make
    /// the server resolve backtraces (which loads the binary's debug
    /// information: tens of MiB) at will.
    pub fn invalid_input(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        WorkerError(Box::new(Inner {
            type_name: type_name.into(),
            message: message.into(),
            invalid_input: true,
            ..Inner::default()
        }))
    }

    /// This error, marked as caused by invalid input (see
    /// [`WorkerError::invalid_input`]).
    pub fn into_invalid_input(mut self) -> Self {
        self.0.invalid_input = true;
        self
    }

    /// Whether the worker marked this error as caused by invalid input.
    pub fn is_invalid_input(&self) -> bool {
        self.0.invalid_input
    }

    /// The same error (type name, marks) with another message and no
    /// sources or backtrace, e.g. shortened to fit a frame.
    pub(crate) fn with_message(&self, message: String) -> Self {
        WorkerError(Box::new(Inner {
            type_name: self.0.type_name.clone(),
            message,
            panic: self.0.panic,
            invalid_input: self.0.invalid_input,
            detail: self.0.detail.clone(),
            local: self.0.local.clone(),
            ..Inner::default()
        }))
    }

    /// An error from a plain message; its type name is `"WorkerError"`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new("WorkerError", message.to_string())
    }

    /// The error a caught panic becomes.
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = crate::worker::panic::payload_message(&*payload);
        let (location, backtrace) = crate::worker::panic::take_last_panic();
        Self::panicked(message, location, backtrace)
    }

    /// The error a panic with `message` at `location` becomes.
    pub(crate) fn panicked(
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    ) -> Self {
        let message = match location {
            Some(loc) => format!("{message} (at {loc})"),
            None => message,
        };
        WorkerError(Box::new(Inner {
            type_name: "panic".to_string(),
            message,
            backtrace,
            panic: true,
            ..Inner::default()
        }))
    }

    /// The Rust type name of the original error (e.g.
    /// `core::num::error::ParseIntError`), or `"panic"` for a panic.
    pub fn type_name(&self) -> &str {
        &self.0.type_name
    }

    /// The error's message (its `Display`).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Messages of the error's `source()` chain, outermost first.
    pub fn sources(&self) -> &[String] {
        &self.0.sources
    }

    /// The backtrace captured where the error was created, if capturing was on.
    pub fn backtrace(&self) -> Option<&str> {
        self.0.backtrace.as_deref()
    }

    /// Whether this error came from a panic in the worker.
    pub fn is_panic(&self) -> bool {
        self.0.panic
    }

    /// Attaches opaque bytes that travel with the error, also from a worker
    /// process to the server (the Python package puts the pickled exception
    /// here, so the caller can re-raise the worker's own exception).
    ///
    /// ```
    /// use mpserver::WorkerError;
    ///
    /// let e = WorkerError::new("ValueError", "bad").with_detail(vec![1, 2, 3]);
    /// assert_eq!(e.detail(), Some(&[1u8, 2, 3][..]));
    /// ```
    pub fn with_detail(mut self, bytes: Vec<u8>) -> Self {
        self.0.detail = Some(bytes);
        self
    }

    /// The bytes attached with [`with_detail`](WorkerError::with_detail).
    pub fn detail(&self) -> Option<&[u8]> {
        self.0.detail.as_deref()
    }

    /// Attaches an in-process value (e.g. a thread worker's original exception
    /// object). Unlike [`with_detail`](WorkerError::with_detail) it is not
    /// serialized: it is dropped when the error crosses a process boundary.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mpserver::WorkerError;
    ///
    /// let e = WorkerError::msg("bad").with_local(Arc::new(42u32));
    /// assert_eq!(e.local().and_then(|a| a.downcast_ref::<u32>()), Some(&42));
    /// ```
    pub fn with_local(mut self, value: std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.0.local = Some(value);
        self
    }

    /// The value attached with [`with_local`](WorkerError::with_local).
    pub fn local(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        self.0.local.as_deref()
    }
}

/// Any error converts, so `?` works in a worker: every `std::error::Error`,
/// `anyhow::Error` (and other error types that convert into
/// `Box<dyn Error + Send + Sync>`), and plain `String`/`&str` messages. The
/// type name is the type converted from; the source chain is kept.
impl<E> From<E> for WorkerError
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn from(err: E) -> Self {
        let type_name = std::any::type_name::<E>();
        let err: Box<dyn std::error::Error + Send + Sync + 'static> = err.into();
        let mut sources = Vec::new();
        let mut cur = err.source();
        while let Some(s) = cur {
            sources.push(s.to_string());
            cur = s.source();
        }
        WorkerError(Box::new(Inner {
            type_name: type_name.to_string(),
            message: err.to_string(),
            sources,
            backtrace: capture_backtrace(),
            ..Inner::default()
        }))
    }
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.type_name, self.0.message)?;
        for s in &self.0.sources {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        if let Some(bt) = &self.0.backtrace {
            write!(f, "\n\nworker backtrace:\n{bt}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn records_type_and_chain() {
        let e: WorkerError = Outer(std::io::Error::other("inner")).into();
        assert!(e.type_name().ends_with("Outer"));
        assert_eq!(e.message(), "outer");
        assert_eq!(e.sources(), ["inner".to_string()]);
        assert!(!e.is_panic());
        assert!(e.to_string().contains("outer: inner"));
    }

    #[test]
    fn detail_crosses_serialization_and_local_stays_behind() {
        let e = WorkerError::msg("boom")
            .with_detail(vec![7, 8])
            .with_local(std::sync::Arc::new(5u8));
        let bytes = postcard::to_stdvec(&e).unwrap();
        let back: WorkerError = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.detail(), Some(&[7u8, 8][..]));
        assert!(back.local().is_none());
        assert_eq!(e.local().and_then(|a| a.downcast_ref::<u8>()), Some(&5));
    }

    #[test]
    fn round_trips_through_postcard() {
        let e = WorkerError::msg("boom");
        let bytes = postcard::to_stdvec(&e).unwrap();
        let back: WorkerError = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn invalid_input_mark_round_trips() {
        let e = WorkerError::invalid_input("TypeError", "bad");
        let back: WorkerError = postcard::from_bytes(&postcard::to_stdvec(&e).unwrap()).unwrap();
        assert!(back.is_invalid_input());
        let back: WorkerError = rmp_serde::from_slice(&rmp_serde::to_vec(&e).unwrap()).unwrap();
        assert!(back.is_invalid_input());
        assert!(!WorkerError::msg("x").is_invalid_input());
        assert!(e.with_message("short".into()).is_invalid_input());
    }
}
