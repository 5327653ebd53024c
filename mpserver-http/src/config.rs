//! Settings of the HTTP front.

use std::time::Duration;

/// Settings of the HTTP front: time limits, body limits, and shutdown.
///
/// ```
/// use std::time::Duration;
/// use mpserver_http::HttpConfig;
///
/// let config = HttpConfig::default()
///     .max_timeout(Duration::from_secs(10))
///     .shutdown_grace(Duration::from_secs(20));
/// assert_eq!(config.get_max_timeout(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub(crate) max_timeout: Duration,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_line_bytes: usize,
    pub(crate) retry_after: Duration,
    pub(crate) handle_signals: bool,
    pub(crate) min_live_workers: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_timeout: Duration::from_secs(60),
            default_timeout: None,
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            close_timeout: Duration::from_secs(5),
            max_body_bytes: 2 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
            retry_after: Duration::from_secs(1),
            handle_signals: true,
            min_live_workers: 1,
        }
    }
}

impl HttpConfig {
    /// The longest per-request time limit a client may ask for with the
    /// `x-timeout-ms` header or the `timeout_ms` query parameter; longer
    /// requests are cut to it (default 60 s).
    pub fn max_timeout(mut self, t: Duration) -> Self {
        self.max_timeout = t;
        self
    }

    /// The time limit of a request that does not ask for one. `None` (the
    /// default) uses the [`Server`](mpserver::Server)'s own timeout.
    pub fn default_timeout(mut self, t: Option<Duration>) -> Self {
        self.default_timeout = t;
        self
    }

    /// How long shutdown lets in-flight work finish before failing it
    /// (passed to [`Server::shutdown_timeout`](mpserver::Server::shutdown_timeout);
    /// default 30 s).
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.shutdown_grace = t;
        self
    }

    /// After a shutdown signal, how long to keep answering (readiness 503,
    /// new work 503, in-flight work going on) before intake stops, so a load
    /// balancer can notice (default 0).
    pub fn drain_delay(mut self, t: Duration) -> Self {
        self.drain_delay = t;
        self
    }

    /// After the flow has shut down, how long open connections (e.g. a
    /// client still reading a stream) may take to finish before they are
    /// closed (default 5 s).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    /// Largest body accepted by `POST /call` (default 2 MiB; larger: 413).
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Longest line accepted by `POST /stream` (default 1 MiB). A longer
    /// line yields an error line and ends the input.
    pub fn max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n.max(1);
        self
    }

    /// The `Retry-After` advice sent with 503 answers (default 1 s, rounded
    /// up to whole seconds).
    pub fn retry_after(mut self, t: Duration) -> Self {
        self.retry_after = t;
        self
    }

    /// Whether [`serve`](crate::serve) shuts down on SIGTERM and SIGINT
    /// (default `true`).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Readiness: `/readyz` answers 503 while any stage (a process or
    /// thread servlet) has fewer live workers than this (default 1; a stage
    /// with fewer workers needs all of them). A worker is live while it
    /// runs: not while it is dead, starting, or waiting out a restart
    /// back-off.
    pub fn min_live_workers(mut self, n: usize) -> Self {
        self.min_live_workers = n;
        self
    }

    /// See [`max_timeout`](HttpConfig::max_timeout).
    pub fn get_max_timeout(&self) -> Duration {
        self.max_timeout
    }

    /// See [`shutdown_grace`](HttpConfig::shutdown_grace).
    pub fn get_shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    pub(crate) fn retry_after_secs(&self) -> u64 {
        let s = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 {
            s + 1
        } else {
            s
        }
    }
}
