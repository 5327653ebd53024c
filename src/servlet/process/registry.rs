//! The worker processes of one server, so a forced shutdown can kill them all.

use std::collections::HashSet;
use std::sync::Mutex;

/// Processes spawned by one server, so a forced shutdown can kill them all.
#[derive(Debug, Default)]
pub(crate) struct ChildRegistry {
    pids: Mutex<HashSet<u32>>,
}

impl ChildRegistry {
    pub(crate) fn add(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.insert(pid);
        }
    }

    /// Must be called before the child is reaped (so its pid cannot be reused
    /// while still listed).
    pub(crate) fn remove(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.remove(&pid);
        }
    }

    pub(crate) fn kill_all(&self) {
        if let Ok(p) = self.pids.lock() {
            for &pid in p.iter() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Pids of the worker processes currently running.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }
}
