//! The shared state of the HTTP front and its router.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use mpserver::Handle;
use mpserver::error::ErrorClass;
use mpserver::metrics::ServletSnapshot;
use mpserver::server::ServerState;
use tokio::sync::watch;

use crate::config::HttpConfig;
use crate::error::ErrorResponse;
use crate::observe::HttpMetrics;

/// The front's own life cycle, which covers the flow's start-up (before a
/// [`Handle`] exists) and the drain after a shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    Running = 1,
    Draining = 2,
    Stopped = 3,
    Failed = 4,
    /// A shutdown began: readiness is 503, work is still taken (for the
    /// drain delay, while load balancers notice).
    Leaving = 5,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Draining,
            3 => Phase::Stopped,
            5 => Phase::Leaving,
            _ => Phase::Failed,
        }
    }
}

/// State shared by the handlers.
pub(crate) struct AppState<In: Send + 'static, Out: Send + 'static> {
    phase: AtomicU8,
    handle: OnceLock<Handle<In, Out>>,
    failure: OnceLock<String>,
    /// Turns true once the flow has shut down: work still waiting then
    /// (e.g. held by a worker thread stuck in user code) is answered with
    /// 503 `shutdown` instead of holding its connection open.
    stopped: watch::Sender<bool>,
    pub(crate) config: HttpConfig,
    pub(crate) metrics: Arc<HttpMetrics>,
}

impl<In: Send + 'static, Out: Send + 'static> AppState<In, Out> {
    /// State of a front whose flow is still starting.
    pub(crate) fn starting(config: HttpConfig) -> Arc<Self> {
        Arc::new(AppState {
            phase: AtomicU8::new(Phase::Starting as u8),
            handle: OnceLock::new(),
            failure: OnceLock::new(),
            stopped: watch::channel(false).0,
            config,
            metrics: Arc::default(),
        })
    }

    /// State of a front over a running flow.
    pub(crate) fn running(handle: Handle<In, Out>, config: HttpConfig) -> Arc<Self> {
        let app = Self::starting(config);
        app.set_running(handle);
        app
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// The flow started: swap its handle in.
    pub(crate) fn set_running(&self, handle: Handle<In, Out>) {
        let _ = self.handle.set(handle);
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Running as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The flow could not start.
    pub(crate) fn set_failed(&self, why: String) {
        let _ = self.failure.set(why);
        self.phase.store(Phase::Failed as u8, Ordering::SeqCst);
    }

    /// A shutdown began: readiness fails, work is still taken.
    pub(crate) fn begin_leaving(&self) {
        let _ = self.phase.compare_exchange(
            Phase::Running as u8,
            Phase::Leaving as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The drain begins: readiness fails and new work is refused.
    pub(crate) fn begin_drain(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p != Phase::Stopped as u8 && p != Phase::Failed as u8)
                    .then_some(Phase::Draining as u8)
            });
    }

    /// The flow has shut down.
    pub(crate) fn set_stopped(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p != Phase::Failed as u8).then_some(Phase::Stopped as u8)
            });
        self.stopped.send_replace(true);
    }

    /// Completes once the flow has shut down (see `stopped`).
    pub(crate) fn flow_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopped.subscribe();
        async move {
            // An error means the state is gone: stopped as well.
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// The handle, once the flow has started.
    pub(crate) fn handle(&self) -> Option<&Handle<In, Out>> {
        self.handle.get()
    }

    /// A handle to do work with, or the answer for why not now.
    pub(crate) fn work_handle(&self) -> Result<Handle<In, Out>, ErrorResponse> {
        let retry = self.config.retry_after_secs();
        let unavailable = |kind: &'static str, msg: String| {
            ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, kind, msg)
                .class(ErrorClass::Shutdown)
        };
        match self.phase() {
            Phase::Running | Phase::Leaving => {}
            Phase::Starting => {
                return Err(
                    unavailable("starting", "the flow is starting".into()).retry_after(retry)
                );
            }
            Phase::Draining | Phase::Stopped => {
                return Err(
                    unavailable("shutdown", "the server is shutting down".into())
                        .retry_after(retry),
                );
            }
            Phase::Failed => {
                return Err(unavailable("start", self.failure_message()));
            }
        }
        match self.handle.get() {
            Some(h) => Ok(h.clone()),
            None => Err(unavailable("starting", "the flow is starting".into()).retry_after(retry)),
        }
    }

    pub(crate) fn failure_message(&self) -> String {
        self.failure
            .get()
            .cloned()
            .unwrap_or_else(|| "the flow could not start".into())
    }

    /// `Ok` when ready for traffic, or the reason why not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Running => {}
            Phase::Starting => return Err("starting".into()),
            Phase::Draining | Phase::Leaving => return Err("draining".into()),
            Phase::Stopped => return Err("stopped".into()),
            Phase::Failed => return Err(format!("failed: {}", self.failure_message())),
        }
        let Some(h) = self.handle.get() else {
            return Err("starting".into());
        };
        match h.state() {
            ServerState::Running => {}
            ServerState::Starting => return Err("starting".into()),
            ServerState::Draining => return Err("draining".into()),
            ServerState::Stopped => return Err("stopped".into()),
        }
        let min = self.config.min_live_workers;
        let mut down = Vec::new();
        understaffed(&h.servlets(), "/", min, &mut down);
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("stage down: {}", down.join("; ")))
        }
    }
}

/// Collects the stages (servlets with workers) under `node` that have fewer
/// live workers than `min` (or than all of their workers, if fewer), named
/// by their path in the tree as in the metrics (`/` the root, `/0/2` its
/// first member's third member).
fn understaffed(node: &ServletSnapshot, path: &str, min: usize, out: &mut Vec<String>) {
    if !node.workers.is_empty() {
        let live = node.workers.iter().filter(|w| w.alive).count();
        let need = min.min(node.workers.len());
        if live < need {
            out.push(format!(
                "{path} ({}): {live} of {} workers alive, {need} needed",
                node.name,
                node.workers.len()
            ));
        }
    }
    for (i, m) in node.members.iter().enumerate() {
        let p = if path == "/" {
            format!("/{i}")
        } else {
            format!("{path}/{i}")
        };
        understaffed(m, &p, min, out);
    }
}
