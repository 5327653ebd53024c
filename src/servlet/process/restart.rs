//! Restart, back-off and poison policy: what a worker slot does when its
//! process dies, and what happens to the items it held.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::ledger::InFlight;
use crate::error::{Error, PoisonItem, WorkerCrashed};

/// What happens when a worker process dies.
///
/// The items it held fail with [`WorkerCrashed`](crate::error::WorkerCrashed)
/// (or, with [`retry_crashed`](RestartPolicy::retry_crashed), are retried one
/// at a time and failed as [`PoisonItem`](crate::error::PoisonItem) once they
/// were part of `poison_threshold` crashes). The worker is restarted after a
/// back-off that doubles from `backoff` up to `max_backoff`; after more than
/// `max_restarts` crashes within `window` it is marked unhealthy (readiness
/// fails) and restarted only every `max_backoff`; once it has run for a whole
/// `window` without crashing it is healthy again. A process killed by the
/// server's own forced shutdown is not a crash: what it held ends with
/// [`Error::Shutdown`](crate::Error::Shutdown). Items written to a process
/// that had already died (nothing of the write got out) never reached it:
/// they go to the next process and count neither as crashed nor as attempts.
///
/// Back-off is for workers that cannot get going: with
/// [`restart_served_at_once`](RestartPolicy::restart_served_at_once) (the
/// default), a process that *served* before it died — it answered at least
/// one item, or stayed up for [`stable_after`](RestartPolicy::stable_after)
/// — is replaced at once, and its death counts neither toward the back-off
/// nor toward `max_restarts`: a worker killed from outside again and again
/// (an operator, the OOM killer, a chaos test) is never marked unhealthy for
/// it. Deaths in start-up (init fails or the process dies before READY) or
/// before the first answer after a (re)start back off and count.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// First back-off after a crash.
    pub backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Crashes tolerated within `window` before the worker is unhealthy.
    pub max_restarts: usize,
    /// The window for `max_restarts`.
    pub window: Duration,
    /// Retry items that were in flight in a crashed worker: each is sent
    /// again, alone, to the first worker process of the servlet that holds
    /// nothing (another live one, or the restarted one), unless its request
    /// ended meanwhile (deadline passed, cancelled). A retried item may run
    /// twice — the crash may have come after the worker did its side effects
    /// — so this is at-least-once delivery, right only for idempotent work.
    /// Off by default: the library cannot know that a worker is idempotent,
    /// and failing an item with a retryable `WorkerCrashed` (the caller
    /// decides) is safe for every worker, while running a payment twice is
    /// not.
    pub retry_crashed: bool,
    /// Crashes an item may be part of before it is failed as poison (the
    /// default 2: retried once).
    pub poison_threshold: u32,
    /// Restart at once a process that served before it died (see above);
    /// `false`: every death backs off and counts toward `max_restarts`.
    pub restart_served_at_once: bool,
    /// A process that stayed up this long counts as having served even if
    /// it answered no item (an idle worker killed from outside is replaced
    /// at once).
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            max_restarts: 20,
            window: Duration::from_secs(60),
            retry_crashed: false,
            poison_threshold: 2,
            restart_served_at_once: true,
            stable_after: Duration::from_secs(1),
        }
    }
}

/// Crash history of one worker slot: back-off and health.
pub(super) struct Health {
    crash_times: VecDeque<Instant>,
    backoff: Duration,
    unhealthy: bool,
}

/// How a worker slot's health changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HealthChange {
    Same,
    Unhealthy,
    Healthy,
}

impl Health {
    pub(super) fn new(policy: &RestartPolicy) -> Self {
        Health {
            crash_times: VecDeque::new(),
            backoff: policy.backoff,
            unhealthy: false,
        }
    }

    /// Records a crash (or a failed restart): returns how long to wait
    /// before the next start, and the change of health. `served`: the
    /// process served before it died (see [`RestartPolicy`]); by the
    /// policy's default such a death restarts at once and is not counted.
    /// Other deaths count: back-off doubles from `backoff` up to
    /// `max_backoff`, and more than `max_restarts` of them within `window`
    /// make the worker unhealthy, restarted only every `max_backoff`.
    pub(super) fn note_crash(
        &mut self,
        policy: &RestartPolicy,
        served: bool,
    ) -> (Duration, HealthChange) {
        if served && policy.restart_served_at_once {
            // It ran: whatever killed it, it is not a start-up loop.
            self.backoff = policy.backoff;
            return (Duration::ZERO, HealthChange::Same);
        }
        let now = Instant::now();
        self.crash_times.push_back(now);
        while self
            .crash_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.crash_times.pop_front();
        }
        if self.crash_times.len() == 1 {
            self.backoff = policy.backoff;
        }
        let change = if self.crash_times.len() > policy.max_restarts {
            self.backoff = policy.max_backoff;
            if self.unhealthy {
                HealthChange::Same
            } else {
                self.unhealthy = true;
                HealthChange::Unhealthy
            }
        } else {
            self.recovered()
        };
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(policy.max_backoff);
        (wait, change)
    }

    /// An unhealthy worker is healthy again.
    pub(super) fn recovered(&mut self) -> HealthChange {
        if self.unhealthy {
            self.unhealthy = false;
            HealthChange::Healthy
        } else {
            HealthChange::Same
        }
    }

    /// When an unhealthy worker that stays up is healthy again.
    pub(super) fn recovery_at(&self, policy: &RestartPolicy) -> Option<Instant> {
        match self.crash_times.back() {
            Some(t) if self.unhealthy => Some(*t + policy.window),
            _ => None,
        }
    }
}

/// What becomes of an item a crashed worker held.
pub(super) enum Lost {
    /// Its request ended already: nothing to do.
    Gone,
    /// Retried on the next process.
    Retry(InFlight),
    /// Failed with this error.
    Fail(InFlight, Error),
}

/// Applies the policy to one item a crashed worker held.
pub(super) fn lost(policy: &RestartPolicy, mut item: InFlight, crash: &WorkerCrashed) -> Lost {
    item.crashes += 1;
    if item.ticket.is_cancelled() {
        return Lost::Gone;
    }
    if policy.retry_crashed && item.crashes < policy.poison_threshold {
        return Lost::Retry(item);
    }
    let error = if policy.retry_crashed {
        Error::PoisonItem(PoisonItem {
            crashes: item.crashes,
            last: crash.clone(),
        })
    } else {
        Error::WorkerCrashed(crash.clone())
    };
    Lost::Fail(item, error)
}

/// How a worker process ended, in words.
pub(super) fn describe(status: Option<ExitStatus>, reason: Option<&str>) -> String {
    let how = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                format!("killed by signal {sig} ({name})")
            }
            _ => "ended".to_string(),
        },
        None => "status unknown".to_string(),
    };
    match reason {
        Some(r) => format!("{r}; {how}"),
        None => how,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_served_restarts_at_once_others_back_off() {
        let policy = RestartPolicy {
            backoff: Duration::from_secs(1),
            max_restarts: 3,
            ..RestartPolicy::default()
        };
        let mut h = Health::new(&policy);
        assert_eq!(h.note_crash(&policy, true).0, Duration::ZERO);
        assert_eq!(h.note_crash(&policy, false).0, Duration::from_secs(1));
        assert_eq!(h.note_crash(&policy, false).0, Duration::from_secs(2));
        // Served deaths do not count toward max_restarts, however many.
        for _ in 0..100 {
            assert_eq!(
                h.note_crash(&policy, true),
                (Duration::ZERO, HealthChange::Same)
            );
        }
        // A served death reset the back-off.
        assert_eq!(h.note_crash(&policy, false).0, Duration::from_secs(1));
        // The fourth unserved death in the window: unhealthy.
        let (wait, change) = h.note_crash(&policy, false);
        assert_eq!(change, HealthChange::Unhealthy);
        assert_eq!(wait, policy.max_backoff);
        let never = RestartPolicy {
            restart_served_at_once: false,
            ..policy.clone()
        };
        assert_eq!(
            Health::new(&never).note_crash(&never, true).0,
            Duration::from_secs(1)
        );
    }
}
