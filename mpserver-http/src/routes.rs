//! The handlers.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use mpserver::error::ErrorClass;
use mpserver::metrics::prometheus;
use mpserver::{CallOptions, StreamOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_service::Service;

use crate::app::{AppState, Phase};
use crate::config::HttpConfig;
use crate::error::ErrorResponse;
use crate::json::parse_json;
use crate::ndjson;
use crate::observe::observe;

/// The header that sets a request's time limit, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-timeout-ms";
/// The query parameter that sets a request's time limit, in milliseconds.
pub const TIMEOUT_PARAM: &str = "timeout_ms";

type App<In, Out> = State<Arc<AppState<In, Out>>>;

/// `POST /call`: one JSON value in, one JSON value out.
pub(crate) async fn call<In, Out>(
    State(app): App<In, Out>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    match call_inner(&app, &headers, query.as_deref(), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn call_inner<In, Out>(
    app: &AppState<In, Out>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Body,
) -> Result<Response, ErrorResponse>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    let handle = app.work_handle()?;
    let timeout = requested_timeout(headers, query, &app.config)?;
    let body = read_body(body, headers, &app.config).await?;
    let x: In = parse_json(&body).map_err(|e| e.into_api_error("the body"))?;
    let retry = app.config.retry_after_secs();
    // Through the flow's `tower::Service`: ready unless shutting down.
    let limit = timeout.unwrap_or_else(|| handle.default_timeout());
    let mut svc = handle.service_with(CallOptions::timeout(limit));
    let call = async {
        poll_fn(|cx| svc.poll_ready(cx)).await?;
        Service::call(&mut svc, x).await
    };
    let result = tokio::select! {
        // Biased: a result that is already there wins over the stop signal.
        biased;
        r = call => r,
        // The flow shut down and this request is still not answered.
        () = app.flow_stopped() => Err(mpserver::Error::Shutdown),
    };
    match result {
        Ok(y) => {
            let body = serde_json::to_vec(&y).map_err(|e| {
                ErrorResponse::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "serialize",
                    format!("cannot encode the result as JSON: {e}"),
                )
            })?;
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Err(e) => {
            tracing::debug!(kind = e.kind(), error = %e, "call failed");
            Err(ErrorResponse::from_error_secs(&e, retry))
        }
    }
}

/// `POST /stream`: NDJSON in, NDJSON out in input order, as results arrive.
pub(crate) async fn stream<In, Out>(
    State(app): App<In, Out>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    let prepared = app
        .work_handle()
        .and_then(|h| requested_timeout(&headers, query.as_deref(), &app.config).map(|t| (h, t)));
    let (handle, timeout) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut opts = StreamOptions::default().return_exceptions(true);
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    let stopped = Box::pin(app.flow_stopped());
    let lines = ndjson::respond(
        handle,
        body,
        opts,
        app.config.max_line_bytes,
        app.config.body_read_timeout,
        stopped,
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 only when the flow runs with every worker healthy.
pub(crate) async fn readyz<In, Out>(State(app): App<In, Out>) -> Response
where
    In: Send + 'static,
    Out: Send + 'static,
{
    match app.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics<In, Out>(State(app): App<In, Out>) -> Response
where
    In: Send + 'static,
    Out: Send + 'static,
{
    let mut out = String::with_capacity(16 * 1024);
    match app.handle() {
        Some(h) => prometheus::render_into(&mut out, &h.debug_info()),
        None => {
            let current = match app.phase() {
                Phase::Failed => "stopped",
                Phase::Starting | Phase::Running => "starting",
                Phase::Draining | Phase::Leaving => "draining",
                Phase::Stopped => "stopped",
            };
            prometheus::header(
                &mut out,
                "mpserver_server_state",
                "gauge",
                "Life-cycle state of the server (1 for the current one).",
            );
            for state in ["starting", "running", "draining", "stopped"] {
                let v = if state == current { 1.0 } else { 0.0 };
                prometheus::sample(&mut out, "mpserver_server_state", &[("state", state)], v);
            }
            prometheus::header(
                &mut out,
                "mpserver_server_ready",
                "gauge",
                "1 when the server runs and no worker was given up on.",
            );
            prometheus::sample(&mut out, "mpserver_server_ready", &[], 0.0);
        }
    }
    app.metrics.render_into(&mut out);
    prometheus::header(
        &mut out,
        "mpserver_http_ready",
        "gauge",
        "1 when /readyz answers 200 (every stage has its minimum of live workers).",
    );
    let ready = if app.readiness().is_ok() { 1.0 } else { 0.0 };
    prometheus::sample(&mut out, "mpserver_http_ready", &[], ready);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

/// `GET /debug`: the server's `DebugInfo` as JSON.
pub(crate) async fn debug<In, Out>(State(app): App<In, Out>) -> Response
where
    In: Send + 'static,
    Out: Send + 'static,
{
    let (status, body) = match app.handle() {
        Some(h) => (StatusCode::OK, serde_json::to_vec_pretty(&h.debug_info())),
        None => {
            let v = match app.phase() {
                Phase::Failed => serde_json::json!({
                    "state": "failed",
                    "error": app.failure_message(),
                }),
                _ => serde_json::json!({ "state": "starting" }),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::to_vec_pretty(&v),
            )
        }
    };
    match body {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ErrorResponse::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serialize",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    ErrorResponse::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

/// A route that exists, with another method.
pub(crate) async fn method_not_allowed() -> Response {
    ErrorResponse::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method (POST /call, POST /stream; GET the others)",
    )
    .into_response()
}

/// Reads a `/call` body: at most [`HttpConfig::max_body_bytes`], within
/// [`HttpConfig::body_read_timeout`].
///
/// A body over the limit is answered 413, but only after it has been read
/// (and dropped, up to [`HttpConfig::max_discard_bytes`]): a client that
/// sends its whole body before reading the answer then gets the 413 instead
/// of a reset connection. A client that announced a too-large body and waits
/// for `100 Continue` gets the 413 at once, without sending it. A body too
/// slow, or too large to discard, gets its answer with `Connection: close`.
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    config: &HttpConfig,
) -> Result<Bytes, ErrorResponse> {
    let limit = config.max_body_bytes;
    let too_large = |n: u64| {
        ErrorResponse::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body has {n} bytes or more; the limit is {limit} bytes"),
        )
        .class(ErrorClass::InvalidInput)
    };
    let announced: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if let Some(n) = announced
        && n > limit as u64
        && (expects_continue || n > config.max_discard_bytes as u64)
    {
        tracing::warn!(bytes = n, limit, "request body over the limit");
        return Err(too_large(n).close());
    }
    let deadline = tokio::time::Instant::now() + config.body_read_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(announced.unwrap_or(0).min(limit as u64) as usize);
    let mut seen: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                tracing::warn!(
                    limit_ms = config.body_read_timeout.as_millis() as u64,
                    received = seen,
                    "request body too slow: answering 408 and closing"
                );
                return Err(ErrorResponse::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the body did not arrive within {} ms",
                        config.body_read_timeout.as_millis()
                    ),
                )
                .close());
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ErrorResponse::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("cannot read the body: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit as u64 {
            if seen > config.max_discard_bytes as u64 {
                tracing::warn!(bytes = seen, limit, "request body over the limit");
                return Err(too_large(seen).close());
            }
            // Over the limit: keep reading, keep nothing.
            buf = Vec::new();
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > limit as u64 {
        tracing::warn!(bytes = seen, limit, "request body over the limit");
        return Err(too_large(seen));
    }
    Ok(Bytes::from(buf))
}

/// The time limit a request asks for (header first, then query), cut to the
/// configured maximum; the configured default when it asks for none.
fn requested_timeout(
    headers: &HeaderMap,
    query: Option<&str>,
    config: &HttpConfig,
) -> Result<Option<Duration>, ErrorResponse> {
    let raw: Option<String> = match headers.get(TIMEOUT_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| invalid_timeout("the x-timeout-ms header is not text"))?
                .to_string(),
        ),
        None => query.and_then(|q| {
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == TIMEOUT_PARAM).then(|| v.to_string())
            })
        }),
    };
    let asked = match raw {
        Some(s) => {
            let ms: u64 = s.trim().parse().map_err(|_| {
                invalid_timeout(&format!(
                    "timeout must be a whole number of milliseconds, got {s:?}"
                ))
            })?;
            if ms == 0 {
                return Err(invalid_timeout("timeout must be at least 1 ms"));
            }
            Some(Duration::from_millis(ms))
        }
        None => config.default_timeout,
    };
    Ok(asked.map(|t| t.min(config.max_timeout)))
}

fn invalid_timeout(msg: &str) -> ErrorResponse {
    ErrorResponse::new(StatusCode::BAD_REQUEST, "invalid_timeout", msg)
}

/// Builds the router over `app`.
pub(crate) fn build<In, Out>(app: Arc<AppState<In, Out>>) -> Router
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    let http_metrics = app.metrics.clone();
    Router::new()
        .route("/call", post(call::<In, Out>))
        .route("/stream", post(stream::<In, Out>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<In, Out>))
        .route("/metrics", get(metrics::<In, Out>))
        .route("/debug", get(debug::<In, Out>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
        .layer(middleware::from_fn_with_state(http_metrics, observe))
}
