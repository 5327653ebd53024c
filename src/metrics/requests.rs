//! Server-level counters: requests by outcome and end-to-end latency.
//!
//! The server records into [`ServerStats`]; users read [`RequestStats`]
//! snapshots (`Handle::request_stats`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Counter, Histogram, HistogramSnapshot};
use crate::error::{Error, ErrorClass};

/// Error kinds counted separately (see [`Error::kind`]).
pub const ERROR_KINDS: [&str; 11] = Error::KINDS;

#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    pub(crate) submitted: Counter,
    pub(crate) ok: Counter,
    pub(crate) errors: [Counter; ERROR_KINDS.len()],
    pub(crate) classes: [Counter; ErrorClass::ALL.len()],
    pub(crate) latency_ns: Histogram,
}

impl ServerStats {
    pub(crate) fn record<T>(&self, r: &Result<T, Error>, latency: Duration) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Relaxed);
            }
            Err(e) => self.error(e),
        }
        self.latency_ns.record(super::nanos(latency));
    }

    pub(crate) fn error(&self, e: &Error) {
        self.errors[e.kind_index()].fetch_add(1, Relaxed);
        self.classes[e.class().index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RequestStats {
        RequestStats {
            submitted: self.submitted.load(Relaxed),
            ok: self.ok.load(Relaxed),
            errors: ERROR_KINDS
                .iter()
                .zip(&self.errors)
                .map(|(k, c)| (k.to_string(), c.load(Relaxed)))
                .filter(|(_, c)| *c > 0)
                .collect(),
            error_classes: ErrorClass::ALL
                .iter()
                .zip(&self.classes)
                .map(|(k, c)| (*k, c.load(Relaxed)))
                .filter(|(_, c)| *c > 0)
                .collect(),
            latency_ns: self.latency_ns.snapshot(),
        }
    }
}

/// Counters of the server's requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestStats {
    /// Requests admitted.
    pub submitted: u64,
    /// Requests that returned a value.
    pub ok: u64,
    /// Failed requests by error kind (only kinds seen).
    pub errors: Vec<(String, u64)>,
    /// Failed requests by [`ErrorClass`] (only classes seen): a crash inside
    /// an ensemble counts as `crashed` here, though its kind is `ensemble`.
    #[serde(default)]
    pub error_classes: Vec<(ErrorClass, u64)>,
    /// End-to-end latency of finished requests, nanoseconds (log-linear
    /// buckets: see [`Histogram`](super::Histogram)).
    pub latency_ns: HistogramSnapshot,
}
