//! Read-only state of a running server: capacity, backlog, readiness,
//! counters and the debug snapshot. Everything here returns copies.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{DRAINING, Handle, RUNNING, STARTING};
use crate::metrics::{DebugInfo, RequestInfo, RequestStats, ServerState, ServletSnapshot};

impl<In: Send + 'static, Out: Send + 'static> Handle<In, Out> {
    /// The server's default per-request time limit.
    pub fn default_timeout(&self) -> Duration {
        self.core.timeout
    }

    /// The server's capacity.
    pub fn capacity(&self) -> usize {
        self.core.admission.max()
    }

    /// Requests in flight now (admitted and not yet fully out of the flow).
    pub fn backlog(&self) -> usize {
        self.core.admission.used()
    }

    /// True when the backlog has reached the capacity (the seed's `full()`).
    pub fn is_full(&self) -> bool {
        self.backlog() >= self.capacity()
    }

    /// Life-cycle state.
    pub fn state(&self) -> ServerState {
        match self.core.state.load(Ordering::SeqCst) {
            STARTING => ServerState::Starting,
            RUNNING => ServerState::Running,
            DRAINING => ServerState::Draining,
            _ => ServerState::Stopped,
        }
    }

    /// True when running and no worker has been given up on.
    pub fn is_ready(&self) -> bool {
        if self.state() != ServerState::Running {
            return false;
        }
        let mut healthy = true;
        self.core
            .tree
            .for_each_named_worker(&mut |_, w| healthy &= w.healthy.load(Ordering::Relaxed));
        healthy
    }

    /// Pids of the worker processes running now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.core.registry.pids()
    }

    /// Counters of the server's requests.
    pub fn request_stats(&self) -> RequestStats {
        self.core.stats.snapshot()
    }

    /// A snapshot of the servlet tree with per-servlet and per-worker counters.
    pub fn servlets(&self) -> ServletSnapshot {
        self.core.tree.snapshot()
    }

    /// A serialisable snapshot of the server's state (the seed's `debug_info`).
    pub fn debug_info(&self) -> DebugInfo {
        let now = Instant::now();
        DebugInfo {
            state: self.state(),
            capacity: self.capacity(),
            backlog: self.backlog(),
            ready: self.is_ready(),
            requests: self.request_stats(),
            servlets: self.servlets(),
            oldest_requests: self
                .core
                .timer
                .oldest(10)
                .into_iter()
                .map(|(s, limit)| RequestInfo {
                    age_ms: now.duration_since(s).as_secs_f64() * 1e3,
                    timeout_ms: limit.as_secs_f64() * 1e3,
                })
                .collect(),
        }
    }
}
