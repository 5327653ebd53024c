//! Serving a flow: bind first, start the flow in the background, shut down
//! gracefully on a signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use mpserver::server::Builder;
use mpserver::servlet::Servlet;
use mpserver::{Handle, Server};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::app::{self, AppState};
use crate::config::HttpConfig;
use crate::conn;
use crate::error::ServeError;

type StartFn<In, Out> = Box<dyn FnOnce() -> Result<Server<In, Out>, mpserver::Error> + Send>;

/// The flow to serve: a [`Builder`] not yet started (the front answers
/// `/healthz` and a 503 `/readyz` while it starts), or a running [`Server`].
pub struct Flow<In: Send + 'static, Out: Send + 'static>(FlowInner<In, Out>);

enum FlowInner<In: Send + 'static, Out: Send + 'static> {
    Start(StartFn<In, Out>),
    Running(Server<In, Out>),
}

impl<S: Servlet> From<Builder<S>> for Flow<S::Input, S::Output> {
    fn from(b: Builder<S>) -> Self {
        Flow(FlowInner::Start(Box::new(move || b.start())))
    }
}

impl<In: Send + 'static, Out: Send + 'static> From<Server<In, Out>> for Flow<In, Out> {
    fn from(s: Server<In, Out>) -> Self {
        Flow(FlowInner::Running(s))
    }
}

impl<In: Send + 'static, Out: Send + 'static> Flow<In, Out> {
    /// A flow started by `f` (called on a thread of its own).
    pub fn from_fn<F>(f: F) -> Self
    where
        F: FnOnce() -> Result<Server<In, Out>, mpserver::Error> + Send + 'static,
    {
        Flow(FlowInner::Start(Box::new(f)))
    }
}

/// The routes over a running flow, for embedding in a larger axum app (no
/// signal handling, no shutdown: the caller owns the [`Server`]).
///
/// `POST /call`, `POST /stream`, `GET /healthz`, `GET /readyz`,
/// `GET /metrics`, `GET /debug`; see the [crate docs](crate).
pub fn router<In, Out>(handle: Handle<In, Out>) -> Router
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    router_with(handle, HttpConfig::default())
}

/// [`router`] with settings (time and body limits; the shutdown settings
/// are not used).
pub fn router_with<In, Out>(handle: Handle<In, Out>, config: HttpConfig) -> Router
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    crate::routes::build(AppState::running(handle, config))
}

/// Serves `flow` on `listener` until SIGTERM or SIGINT (unless
/// [`HttpConfig::handle_signals`] is off), then shuts down gracefully and
/// returns `Ok(())`.
///
/// The listener answers at once: while a [`Builder`] flow starts (on a
/// thread of its own), `/healthz` is 200, `/readyz` and work requests are 503
/// `starting`. If the flow cannot start, this returns
/// [`ServeError::Start`].
///
/// Shutdown: readiness turns 503 at once while work is still taken for
/// [`HttpConfig::drain_delay`] (so that load balancers stop sending traffic
/// before it is refused); then new work is refused with 503 and the server
/// drains in-flight work within
/// [`HttpConfig::shutdown_grace`] (work still running then fails with a 503
/// `shutdown` answer or error line); then the listener closes and open
/// connections get [`HttpConfig::close_timeout`] to finish.
///
/// ```no_run
/// use mpserver::{worker_fn, Server, ThreadServlet};
/// use mpserver_http::{serve, HttpConfig};
///
/// # async fn run() -> Result<(), mpserver_http::ServeError> {
/// let flow = Server::builder(ThreadServlet::new(worker_fn(|s: String| s.len())));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// serve(listener, flow, HttpConfig::default()).await
/// # }
/// ```
pub async fn serve<In, Out>(
    listener: TcpListener,
    flow: impl Into<Flow<In, Out>>,
    config: HttpConfig,
) -> Result<(), ServeError>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    serve_with_shutdown(listener, flow, config, std::future::pending()).await
}

/// [`serve`], also shutting down when `shutdown` completes.
pub async fn serve_with_shutdown<In, Out, F>(
    listener: TcpListener,
    flow: impl Into<Flow<In, Out>>,
    config: HttpConfig,
    shutdown: F,
) -> Result<(), ServeError>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    // Signals first: from here on SIGTERM means "drain", not "die".
    let signals = Signals::install(config.handle_signals)?;
    let stop = async move {
        tokio::select! {
            _ = signals.recv() => {}
            _ = shutdown => {}
        }
    };
    let app = AppState::starting(config.clone());
    let router = crate::routes::build(app.clone());
    let (close_tx, close_rx) = watch::channel(false);
    let addr = listener.local_addr()?;
    let http = conn::run(
        listener,
        router,
        config.clone(),
        app.metrics.clone(),
        close_rx,
    );
    tracing::info!(%addr, "listening");
    run(app, http, close_tx, flow.into(), config, stop).await
}

/// The life of a served flow once its HTTP server (`http`, ended by
/// `close_tx`) exists: start the flow, serve until `stop` or until the HTTP
/// server ends by itself, then shut down.
async fn run<In, Out>(
    app: Arc<AppState<In, Out>>,
    http: impl Future<Output = std::io::Result<()>> + Send + 'static,
    close_tx: watch::Sender<bool>,
    flow: Flow<In, Out>,
    config: HttpConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    tokio::pin!(stop);
    let mut http = Some(tokio::spawn(http));
    let mut http_failure = None;
    let mut started = start(flow)?;
    let first = tokio::select! {
        r = &mut started => Some(r),
        _ = &mut stop => None,
    };
    let server = match first {
        Some(r) => {
            let server = match r {
                Ok(Ok(server)) => server,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the flow could not start");
                    app.set_failed(e.to_string());
                    close(&close_tx, http, config.close_timeout).await;
                    return Err(ServeError::Start(e));
                }
                Err(_) => {
                    let why = "the thread starting the flow panicked".to_string();
                    tracing::error!("{why}");
                    app.set_failed(why.clone());
                    close(&close_tx, http, config.close_timeout).await;
                    return Err(ServeError::StartThread(why));
                }
            };
            app.set_running(server.handle());
            tracing::info!("flow started; ready");
            if let Some(task) = http.as_mut() {
                tokio::select! {
                    _ = &mut stop => tracing::info!("shutdown requested"),
                    r = task => {
                        // The HTTP server ended by itself: nothing left to
                        // serve. Shut the flow down and report why.
                        tracing::error!(result = ?r, "the HTTP server stopped unexpectedly");
                        http = None;
                        http_failure = Some(match r {
                            Ok(Err(e)) => e,
                            Ok(Ok(())) => std::io::Error::other("the HTTP server stopped"),
                            Err(e) => std::io::Error::other(format!("the HTTP server task failed: {e}")),
                        });
                    }
                }
            }
            Some(server)
        }
        None => {
            tracing::info!("shutdown requested while the flow was starting");
            app.begin_drain();
            // Let the start finish (bounded), so its workers stop cleanly.
            match tokio::time::timeout(config.shutdown_grace, started).await {
                Ok(Ok(Ok(server))) => Some(server),
                Ok(_) => None,
                Err(_) => {
                    tracing::warn!("the flow did not finish starting within the grace period");
                    None
                }
            }
        }
    };

    // Readiness 503 first, still taking work while load balancers notice;
    // then intake stops and the flow drains. Without an HTTP server nobody
    // can reach us: no delay.
    app.begin_leaving();
    if http_failure.is_none() && !config.drain_delay.is_zero() && app.phase() == app::Phase::Leaving
    {
        tracing::info!(
            delay_ms = config.drain_delay.as_millis() as u64,
            "readiness 503; still taking work for the drain delay"
        );
        tokio::time::sleep(config.drain_delay).await;
    }
    app.begin_drain();
    if let Some(server) = server {
        let grace = config.shutdown_grace;
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining the flow");
        if let Err(e) = tokio::task::spawn_blocking(move || server.shutdown_timeout(grace)).await {
            tracing::error!(error = %e, "shutting the flow down failed");
        }
    }
    app.set_stopped();
    close(&close_tx, http, config.close_timeout).await;
    tracing::info!("stopped");
    match http_failure {
        Some(e) => Err(ServeError::Io(e)),
        None => Ok(()),
    }
}

type Started<In, Out> = oneshot::Receiver<Result<Server<In, Out>, mpserver::Error>>;

/// Starts the flow on a thread of its own; the receiver gets the outcome.
fn start<In: Send + 'static, Out: Send + 'static>(
    flow: Flow<In, Out>,
) -> Result<Started<In, Out>, ServeError> {
    let (tx, rx) = oneshot::channel();
    match flow.0 {
        FlowInner::Running(server) => {
            let _ = tx.send(Ok(server));
        }
        FlowInner::Start(f) => {
            std::thread::Builder::new()
                .name("mpserver-http-start".into())
                .spawn(move || {
                    // If nobody waits any more, the server is dropped here,
                    // which shuts it down.
                    let _ = tx.send(f());
                })
                .map_err(|e| ServeError::StartThread(e.to_string()))?;
        }
    }
    Ok(rx)
}

/// Stops accepting, lets open connections finish within `limit`, then
/// drops them.
async fn close(
    close_tx: &watch::Sender<bool>,
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    limit: Duration,
) {
    let _ = close_tx.send(true);
    let Some(mut http) = http else { return };
    match tokio::time::timeout(limit, &mut http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "the HTTP server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server task failed"),
        Err(_) => {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "connections still open after the close timeout; dropping them"
            );
            http.abort();
        }
    }
}

/// SIGTERM and SIGINT, when asked for.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install(on: bool) -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        if !on {
            return Ok(Signals(None));
        }
        Ok(Signals(Some((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))))
    }

    async fn recv(mut self) {
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpserver::{ThreadServlet, worker_fn};

    /// When the HTTP server ends by itself (a listener error), `serve`
    /// returns its error promptly: the drain delay is for load balancers,
    /// and none can reach a server without a listener.
    #[tokio::test]
    async fn a_failed_http_server_ends_serving_without_the_drain_delay() {
        let config = HttpConfig::default()
            .drain_delay(Duration::from_secs(30))
            .handle_signals(false);
        let app = AppState::starting(config.clone());
        let (close_tx, _close_rx) = watch::channel(false);
        let http = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(std::io::Error::other("the listener failed"))
        };
        let flow = Server::builder(ThreadServlet::new(worker_fn(|x: u32| x + 1)));
        let served = run(
            app,
            http,
            close_tx,
            flow.into(),
            config,
            std::future::pending(),
        );
        let r = tokio::time::timeout(Duration::from_secs(10), served).await;
        match r {
            Ok(Err(ServeError::Io(e))) => assert!(e.to_string().contains("listener"), "{e}"),
            Ok(other) => panic!("expected the HTTP server's error, got {other:?}"),
            Err(_) => panic!("serve did not end within 10 s (drain delay 30 s)"),
        }
    }
}
