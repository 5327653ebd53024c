//! Set-ups of the tests that kill worker processes and watch the restart
//! policy at work.

use std::time::Duration;

use super::poll::wait_until;

use mpserver::{CallOptions, Handle, Pending, RestartPolicy};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Kills a worker process from outside (`SIGKILL`).
pub fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// A policy under which every restart, also of a worker that served, waits
/// `backoff` first (so a test sees the worker gone for that long).
pub fn backing_off(backoff: Duration) -> RestartPolicy {
    RestartPolicy::default()
        .restart_served_at_once(false)
        .backoff(backoff)
}

/// True once the server's first worker is a process other than `pid` (its
/// replacement is up), false if that takes longer than `limit`.
pub fn replaced_within<In, Out>(server: &Handle<In, Out>, pid: u32, limit: Duration) -> bool
where
    In: Send + 'static,
    Out: Send + 'static,
{
    wait_until(limit, || {
        server.worker_pids().first().is_some_and(|p| *p != pid)
    })
}

/// True once the server has no live worker process, false if that takes
/// longer than `limit`.
pub fn no_worker_within<In, Out>(server: &Handle<In, Out>, limit: Duration) -> bool
where
    In: Send + 'static,
    Out: Send + 'static,
{
    wait_until(limit, || server.worker_pids().is_empty())
}

/// Submits ten bystanders (`bystander(0..10)`), then `poison`, then ten more
/// (`bystander(10..20)`), each with a 30 s limit: the bystanders' pending
/// results in input order, and the poison's.
pub fn submit_poison_among_bystanders<In, Out>(
    server: &Handle<In, Out>,
    bystander: impl Fn(i64) -> In,
    poison: In,
) -> (Vec<Pending<Out>>, Pending<Out>)
where
    In: Send + 'static,
    Out: Send + 'static,
{
    let opts = CallOptions::default().timeout(Duration::from_secs(30));
    let mut pending = Vec::new();
    for i in 0..10 {
        pending.push(server.submit(bystander(i), opts).unwrap());
    }
    let poison = server.submit(poison, opts).unwrap();
    for i in 10..20 {
        pending.push(server.submit(bystander(i), opts).unwrap());
    }
    (pending, poison)
}
