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
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_discard_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_timeout: Duration::from_secs(60),
            default_timeout: None,
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            max_body_bytes: 2 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
            retry_after: Duration::from_secs(1),
            handle_signals: true,
            min_live_workers: 1,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_discard_bytes: 128 * 1024 * 1024,
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

    /// After a shutdown signal, how long readiness answers 503 while work is
    /// still taken, before intake stops: time for load balancers (and
    /// Kubernetes endpoints) to stop sending traffic here (default 5 s).
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

    /// How much of a body over [`max_body_bytes`](HttpConfig::max_body_bytes)
    /// is read and dropped so that the client gets its 413 answer rather
    /// than a reset connection (default 128 MiB). A larger body (announced
    /// or sent) is answered 413 with `Connection: close` at once.
    pub fn max_discard_bytes(mut self, n: usize) -> Self {
        self.max_discard_bytes = n;
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

    /// Once the first byte of a request has arrived, how long its head
    /// (request line and headers) may take to arrive in full before the
    /// connection is closed (default 10 s; [`serve`](crate::serve) only).
    pub fn header_read_timeout(mut self, t: Duration) -> Self {
        self.header_read_timeout = t;
        self
    }

    /// How long a request body may take to arrive: in full for `POST /call`
    /// (then 408 and the connection is closed), between two chunks for
    /// `POST /stream` (then an error line ends the input) (default 30 s).
    pub fn body_read_timeout(mut self, t: Duration) -> Self {
        self.body_read_timeout = t;
        self
    }

    /// How long a connection with no request in progress stays open without
    /// receiving a byte (default 60 s; [`serve`](crate::serve) only).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// How long a client may leave written data unread (its receive buffer
    /// full) before the connection is cut (default 30 s;
    /// [`serve`](crate::serve) only). A stream cut so is dropped: its items
    /// still pending are cancelled and their capacity returns.
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }

    /// The most connections open at once (default 1024;
    /// [`serve`](crate::serve) only). One more gets a `503` JSON answer with
    /// `Retry-After` at once and is closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// See [`max_timeout`](HttpConfig::max_timeout).
    pub fn get_max_timeout(&self) -> Duration {
        self.max_timeout
    }

    /// See [`drain_delay`](HttpConfig::drain_delay).
    pub fn get_drain_delay(&self) -> Duration {
        self.drain_delay
    }

    /// See [`shutdown_grace`](HttpConfig::shutdown_grace).
    pub fn get_shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// [`retry_after`](HttpConfig::retry_after) in whole seconds, rounded up
    /// (the header's unit).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        crate::error::whole_secs(self.retry_after)
    }
}

/// A setting from the environment that could not be read
/// ([`HttpConfig::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {expected}")]
pub struct ConfigError {
    /// The variable.
    pub var: String,
    /// Its value.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

/// How a variable's value is read, and the setting it sets.
#[derive(Clone, Copy)]
enum Set {
    /// Whole milliseconds.
    Ms(fn(&mut HttpConfig, Duration)),
    /// A whole number (bytes, a count).
    Size(fn(&mut HttpConfig, usize)),
    /// `true`/`1` or `false`/`0`.
    Flag(fn(&mut HttpConfig, bool)),
}

/// Every variable: its name, the setting's name, how it sets it. Both
/// [`ENV_VARS`] and [`HttpConfig::with_vars`] are this table.
const VARS: [(&str, &str, Set); 16] = [
    (
        "MPSERVER_HTTP_MAX_TIMEOUT_MS",
        "max_timeout",
        Set::Ms(|c, t| c.max_timeout = t),
    ),
    (
        "MPSERVER_HTTP_DEFAULT_TIMEOUT_MS",
        "default_timeout",
        Set::Ms(|c, t| c.default_timeout = Some(t)),
    ),
    (
        "MPSERVER_HTTP_GRACE_MS",
        "shutdown_grace",
        Set::Ms(|c, t| c.shutdown_grace = t),
    ),
    (
        "MPSERVER_HTTP_DRAIN_DELAY_MS",
        "drain_delay",
        Set::Ms(|c, t| c.drain_delay = t),
    ),
    (
        "MPSERVER_HTTP_CLOSE_TIMEOUT_MS",
        "close_timeout",
        Set::Ms(|c, t| c.close_timeout = t),
    ),
    (
        "MPSERVER_HTTP_MAX_BODY_BYTES",
        "max_body_bytes",
        Set::Size(|c, n| c.max_body_bytes = n),
    ),
    (
        "MPSERVER_HTTP_MAX_DISCARD_BYTES",
        "max_discard_bytes",
        Set::Size(|c, n| c.max_discard_bytes = n),
    ),
    (
        "MPSERVER_HTTP_MAX_LINE_BYTES",
        "max_line_bytes",
        Set::Size(|c, n| c.max_line_bytes = n.max(1)),
    ),
    (
        "MPSERVER_HTTP_RETRY_AFTER_MS",
        "retry_after",
        Set::Ms(|c, t| c.retry_after = t),
    ),
    (
        "MPSERVER_HTTP_MIN_LIVE_WORKERS",
        "min_live_workers",
        Set::Size(|c, n| c.min_live_workers = n),
    ),
    (
        "MPSERVER_HTTP_HEADER_READ_TIMEOUT_MS",
        "header_read_timeout",
        Set::Ms(|c, t| c.header_read_timeout = t),
    ),
    (
        "MPSERVER_HTTP_BODY_READ_TIMEOUT_MS",
        "body_read_timeout",
        Set::Ms(|c, t| c.body_read_timeout = t),
    ),
    (
        "MPSERVER_HTTP_IDLE_TIMEOUT_MS",
        "idle_timeout",
        Set::Ms(|c, t| c.idle_timeout = t),
    ),
    (
        "MPSERVER_HTTP_WRITE_TIMEOUT_MS",
        "write_timeout",
        Set::Ms(|c, t| c.write_timeout = t),
    ),
    (
        "MPSERVER_HTTP_MAX_CONNECTIONS",
        "max_connections",
        Set::Size(|c, n| c.max_connections = n),
    ),
    (
        "MPSERVER_HTTP_HANDLE_SIGNALS",
        "handle_signals",
        Set::Flag(|c, on| c.handle_signals = on),
    ),
];

/// The environment variables [`HttpConfig::from_env`] reads, each with the
/// setting it sets. Durations are whole milliseconds, sizes whole bytes.
pub const ENV_VARS: [(&str, &str); 16] = {
    let mut out = [("", ""); 16];
    let mut i = 0;
    while i < VARS.len() {
        out[i] = (VARS[i].0, VARS[i].1);
        i += 1;
    }
    out
};

impl HttpConfig {
    /// The defaults, overridden by the `MPSERVER_HTTP_*` environment
    /// variables that are set (see [`ENV_VARS`]): durations in whole
    /// milliseconds (`MPSERVER_HTTP_DRAIN_DELAY_MS=10000`), sizes in bytes,
    /// `MPSERVER_HTTP_HANDLE_SIGNALS` `true` or `false`. A value that cannot
    /// be read is an error naming the variable, not a silent default.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::default().with_vars(|k| std::env::var(k).ok())
    }

    /// This configuration overridden by the variables `lookup` finds (as
    /// [`from_env`](HttpConfig::from_env) does with the process
    /// environment).
    ///
    /// ```
    /// use std::time::Duration;
    /// use mpserver_http::HttpConfig;
    ///
    /// let vars = [("MPSERVER_HTTP_DRAIN_DELAY_MS", "250"), ("MPSERVER_HTTP_MAX_CONNECTIONS", "10")];
    /// let lookup = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    /// let config = HttpConfig::default().with_vars(lookup).unwrap();
    /// assert_eq!(config.get_drain_delay(), Duration::from_millis(250));
    ///
    /// let bad = |k: &str| (k == "MPSERVER_HTTP_GRACE_MS").then(|| "soon".to_string());
    /// let e = HttpConfig::default().with_vars(bad).unwrap_err();
    /// assert_eq!(e.var, "MPSERVER_HTTP_GRACE_MS");
    /// ```
    pub fn with_vars(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        for (var, _, set) in VARS {
            let Some(value) = lookup(var) else {
                continue;
            };
            let bad = |expected| ConfigError {
                var: var.to_string(),
                value: value.clone(),
                expected,
            };
            let whole = || -> Result<u64, ConfigError> {
                value.trim().parse().map_err(|_| bad("a whole number"))
            };
            match set {
                Set::Ms(f) => f(&mut self, Duration::from_millis(whole()?)),
                Set::Size(f) => f(&mut self, usize::try_from(whole()?).unwrap_or(usize::MAX)),
                Set::Flag(f) => match value.trim() {
                    "true" | "1" => f(&mut self, true),
                    "false" | "0" => f(&mut self, false),
                    _ => return Err(bad("true or false")),
                },
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variable of the table sets its own setting, and `ENV_VARS`
    /// lists exactly the table's variables.
    #[test]
    fn every_variable_sets_its_setting() {
        let c = HttpConfig::default()
            .with_vars(|k| {
                let v = if k == "MPSERVER_HTTP_HANDLE_SIGNALS" {
                    "false"
                } else {
                    "7"
                };
                Some(v.to_string())
            })
            .unwrap();
        let ms = Duration::from_millis(7);
        assert_eq!(
            [
                c.max_timeout,
                c.default_timeout.unwrap(),
                c.shutdown_grace,
                c.drain_delay,
                c.close_timeout,
                c.retry_after,
                c.header_read_timeout,
                c.body_read_timeout,
                c.idle_timeout,
                c.write_timeout,
            ],
            [ms; 10]
        );
        assert_eq!(
            [
                c.max_body_bytes,
                c.max_discard_bytes,
                c.max_line_bytes,
                c.min_live_workers,
                c.max_connections,
            ],
            [7; 5]
        );
        assert!(!c.handle_signals);
        let names: Vec<_> = VARS.iter().map(|(v, s, _)| (*v, *s)).collect();
        assert_eq!(names, ENV_VARS.to_vec());
        // A bad flag names its variable.
        let e = HttpConfig::default()
            .with_vars(|k| (k == "MPSERVER_HTTP_HANDLE_SIGNALS").then(|| "maybe".into()))
            .unwrap_err();
        assert_eq!(e.expected, "true or false");
    }
}
