//! Error answers (status code + JSON body) and the error of [`serve`](crate::serve).

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mpserver::Error;
use mpserver::error::{ErrorClass, WorkerId};
use serde::Serialize;

/// Why [`serve`](crate::serve) returned an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The flow could not start (a worker's init failed, bad CPU pins, ...).
    #[error("the flow could not start: {0}")]
    Start(#[source] Error),
    /// The thread starting the flow panicked or could not be spawned.
    #[error("the flow could not start: {0}")]
    StartThread(String),
    /// Installing the signal handlers or serving the socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The JSON body of every error answer, and of every error line of a stream:
/// `{"error": kind, "class": class, "message": ..., "worker": {...} | null}`,
/// plus `"type"` (the worker error's type name) when a worker raised it.
///
/// `error` is [`Error::kind`] for a flow error, or the front's own kind
/// (`invalid_json`, `invalid_input`, `payload_too_large`, `not_found`,
/// `method_not_allowed`, `starting`, `shutdown`, `overloaded`, ...);
/// `class` is the [`ErrorClass`] (absent for errors that have none, e.g.
/// `not_found`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// The error's kind.
    pub error: Cow<'static, str>,
    /// The error's class, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<ErrorClass>,
    /// What happened, for people.
    pub message: String,
    /// The worker involved, if any.
    pub worker: Option<WorkerId>,
    /// The worker error's type name, when a worker raised it.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
}

impl ErrorBody {
    /// A body of the front's own (not from the flow).
    pub fn new(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: kind.into(),
            class: None,
            message: message.into(),
            worker: None,
            type_name: None,
        }
    }

    /// Sets the class.
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.class = Some(class);
        self
    }

    /// The body for a flow error.
    pub fn from_error(e: &Error) -> Self {
        ErrorBody {
            error: Cow::Borrowed(e.kind()),
            class: Some(e.class()),
            message: e.to_string(),
            worker: e.worker().cloned(),
            type_name: e.worker_error().map(|w| w.type_name().to_string()),
        }
    }

    /// The body as one NDJSON line (with its newline).
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"error":"internal","message":"cannot encode error","worker":null}"#.to_vec()
        });
        v.push(b'\n');
        v
    }
}

/// The status code of an error class:
///
/// | class | status |
/// |---|---|
/// | `invalid_input` | 422 Unprocessable Content |
/// | `worker` | 500 Internal Server Error |
/// | `crashed` | 503 Service Unavailable, with `Retry-After` |
/// | `overload` | 503, with `Retry-After` |
/// | `timeout` | 504 Gateway Timeout |
/// | `shutdown` | 503, with `Retry-After` |
///
/// and whether to advise a retry (`Retry-After`): exactly for the
/// [retryable](ErrorClass::is_retryable) classes.
///
/// ```
/// use axum::http::StatusCode;
/// use mpserver::error::ErrorClass;
/// use mpserver_http::status_of;
///
/// assert_eq!(status_of(ErrorClass::InvalidInput), (StatusCode::UNPROCESSABLE_ENTITY, false));
/// assert_eq!(status_of(ErrorClass::Crashed), (StatusCode::SERVICE_UNAVAILABLE, true));
/// ```
pub fn status_of(class: ErrorClass) -> (StatusCode, bool) {
    let status = match class {
        ErrorClass::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorClass::Worker => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorClass::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorClass::Crashed | ErrorClass::Overload | ErrorClass::Shutdown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        // A class added later: a server-side failure until mapped.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, class.is_retryable())
}

/// An error answer: status, optional `Retry-After`, JSON body
/// ([`ErrorBody`]). Build one from a flow error with
/// [`ErrorResponse::from_error`] to answer the way the front does in your
/// own handlers.
///
/// ```
/// use std::time::Duration;
/// use axum::response::IntoResponse;
/// use mpserver_http::ErrorResponse;
///
/// let e = mpserver::Error::Shutdown;
/// let answer = ErrorResponse::from_error(&e, Duration::from_secs(2));
/// assert_eq!(answer.status(), 503);
/// let resp = answer.into_response();
/// assert_eq!(resp.headers()["retry-after"], "2");
/// assert_eq!(resp.headers()["content-type"], "application/json");
/// ```
#[derive(Debug)]
pub struct ErrorResponse {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<u64>,
    /// Boxed: keeps `Result<_, ErrorResponse>` small on the happy path.
    pub(crate) body: Box<ErrorBody>,
    pub(crate) close: bool,
}

impl ErrorResponse {
    /// An answer of the front's own.
    pub fn new(
        status: StatusCode,
        kind: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ErrorResponse {
            status,
            retry_after: None,
            body: Box::new(ErrorBody::new(kind, message)),
            close: false,
        }
    }

    /// Advises the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Sets the body's class.
    pub fn class(mut self, class: ErrorClass) -> Self {
        self.body.class = Some(class);
        self
    }

    /// Asks the client to close the connection (`Connection: close`).
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// The answer for a request that failed in the flow: the status of its
    /// class ([`status_of`]), `Retry-After` (`retry_after`, rounded up to
    /// whole seconds) when the class is retryable.
    pub fn from_error(e: &Error, retry_after: Duration) -> Self {
        Self::from_error_secs(e, whole_secs(retry_after))
    }

    pub(crate) fn from_error_secs(e: &Error, retry_after_secs: u64) -> Self {
        let (status, retry) = status_of(e.class());
        ErrorResponse {
            status,
            retry_after: retry.then_some(retry_after_secs),
            body: Box::new(ErrorBody::from_error(e)),
            close: false,
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

/// `d` in whole seconds, rounded up.
pub(crate) fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let mut body = self.body.to_line();
        body.pop();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
