//! Error answers (status code + JSON body) and the error of [`serve`](crate::serve).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mpserver::Error;
use mpserver::error::WorkerId;
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
/// `{"error": kind, "message": ..., "worker": {...} | null}`, plus `"type"`
/// (the worker error's type name) when a worker raised it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: Cow<'static, str>,
    pub(crate) message: String,
    pub(crate) worker: Option<WorkerId>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) type_name: Option<String>,
}

impl ErrorBody {
    pub(crate) fn new(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: kind.into(),
            message: message.into(),
            worker: None,
            type_name: None,
        }
    }

    pub(crate) fn from_error(e: &Error) -> Self {
        ErrorBody {
            error: Cow::Borrowed(e.kind()),
            message: e.to_string(),
            worker: e.worker().cloned(),
            type_name: e.worker_error().map(|w| w.type_name().to_string()),
        }
    }

    /// The body as one NDJSON line (with its newline).
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"error":"internal","message":"cannot encode error","worker":null}"#.to_vec()
        });
        v.push(b'\n');
        v
    }
}

/// An error answer: status, optional `Retry-After`, JSON body.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<u64>,
    /// Boxed: keeps `Result<_, ApiError>` small on the happy path.
    pub(crate) body: Box<ErrorBody>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            retry_after: None,
            body: Box::new(ErrorBody::new(kind, message)),
        }
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The answer for a request that failed in the flow.
    pub(crate) fn from_error(e: &Error, retry_after_secs: u64) -> Self {
        let (status, retry) = status_of(e);
        ApiError {
            status,
            retry_after: retry.then_some(retry_after_secs),
            body: Box::new(ErrorBody::from_error(e)),
        }
    }
}

/// The status code of a flow error, and whether to advise a retry.
pub(crate) fn status_of(e: &Error) -> (StatusCode, bool) {
    match e {
        Error::BacklogFull(_) | Error::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, true),
        Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, false),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, false),
    }
}

impl IntoResponse for ApiError {
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
        resp
    }
}
