//! The server's state for diagnostics: [`DebugInfo`] (the seed's
//! `debug_info`), and the life-cycle [`ServerState`].

use serde::{Deserialize, Serialize};

use super::{RequestStats, ServletSnapshot};

/// Life-cycle state of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Starting workers.
    Starting,
    /// Serving.
    Running,
    /// Shutting down: no new requests, in-flight ones draining.
    Draining,
    /// Stopped.
    Stopped,
}

/// The server's state for diagnostics; serialisable (e.g. to JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DebugInfo {
    /// Life-cycle state.
    pub state: ServerState,
    /// Capacity.
    pub capacity: usize,
    /// Requests in flight.
    pub backlog: usize,
    /// Readiness (see [`Handle::is_ready`](crate::Handle::is_ready)).
    pub ready: bool,
    /// Request counters.
    pub requests: RequestStats,
    /// The servlet tree.
    pub servlets: ServletSnapshot,
    /// The oldest requests still pending.
    pub oldest_requests: Vec<RequestInfo>,
}

/// One pending request in [`DebugInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInfo {
    /// Time since the call started.
    pub age_ms: f64,
    /// Its time limit.
    pub timeout_ms: f64,
}
