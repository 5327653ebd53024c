//! CPU pinning: which CPUs a worker (or the server's own threads) may run on.
//!
//! A servlet's `cpus` follow the seed: none means one unpinned worker; a
//! count means that many unpinned workers; a list means one worker per entry,
//! each entry being [`CpuAffinity::any`], one CPU, or a set of CPUs. Pinning is
//! applied with `sched_setaffinity` inside the worker process before it starts
//! any thread (so all its threads inherit it), or inside the worker thread.
//! Requested CPUs are checked against the CPUs this process may use, so a bad
//! pin fails server start with a clear error instead of being ignored.

use std::fmt;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::StartError;

/// The CPUs one worker may run on: any (unpinned), or a fixed set.
///
/// ```
/// use mpserver::CpuAffinity;
///
/// assert_eq!(CpuAffinity::from(0).cpus(), Some(&[0][..]));
/// assert_eq!(CpuAffinity::from(vec![0, 1]).cpus(), Some(&[0, 1][..]));
/// assert_eq!(CpuAffinity::any().cpus(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuAffinity(Option<Vec<usize>>);

impl CpuAffinity {
    /// Unpinned: the OS places the worker.
    pub fn any() -> Self {
        CpuAffinity(None)
    }

    /// Pinned to one CPU.
    pub fn cpu(cpu: usize) -> Self {
        CpuAffinity(Some(vec![cpu]))
    }

    /// Pinned to a set of CPUs (the worker may run on any of them).
    pub fn set(cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut v: Vec<usize> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        CpuAffinity(Some(v))
    }

    /// The pinned CPUs, or `None` when unpinned.
    pub fn cpus(&self) -> Option<&[usize]> {
        self.0.as_deref()
    }

    /// Checks that every requested CPU is one this process may use.
    pub fn validate(&self) -> Result<(), StartError> {
        let Some(cpus) = &self.0 else { return Ok(()) };
        if cpus.is_empty() {
            return Err(StartError::Affinity("empty CPU set".into()));
        }
        let allowed = allowed_cpus();
        for c in cpus {
            if !allowed.contains(c) {
                return Err(StartError::Affinity(format!(
                    "CPU {c} is not available to this process (allowed: {allowed:?})"
                )));
            }
        }
        Ok(())
    }

    /// Pins the calling thread (threads it creates later inherit the pin).
    /// Does nothing when unpinned.
    pub fn apply_to_current_thread(&self) -> Result<(), StartError> {
        let Some(cpus) = &self.0 else { return Ok(()) };
        let mut set = CpuSet::new();
        for &c in cpus {
            set.set(c)
                .map_err(|e| StartError::Affinity(format!("CPU {c}: {e}")))?;
        }
        sched_setaffinity(Pid::from_raw(0), &set)
            .map_err(|e| StartError::Affinity(format!("sched_setaffinity({cpus:?}): {e}")))
    }
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("any"),
            Some(c) => write!(f, "{c:?}"),
        }
    }
}

impl From<usize> for CpuAffinity {
    fn from(cpu: usize) -> Self {
        CpuAffinity::cpu(cpu)
    }
}

impl From<Option<usize>> for CpuAffinity {
    fn from(cpu: Option<usize>) -> Self {
        cpu.map_or_else(CpuAffinity::any, CpuAffinity::cpu)
    }
}

impl From<Vec<usize>> for CpuAffinity {
    fn from(cpus: Vec<usize>) -> Self {
        CpuAffinity::set(cpus)
    }
}

impl<const N: usize> From<[usize; N]> for CpuAffinity {
    fn from(cpus: [usize; N]) -> Self {
        CpuAffinity::set(cpus)
    }
}

impl From<&[usize]> for CpuAffinity {
    fn from(cpus: &[usize]) -> Self {
        CpuAffinity::set(cpus.iter().copied())
    }
}

/// The CPUs the calling thread may run on.
pub fn current_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPUs this process may use, as noted the first time it was asked: by
/// [`crate::init`] (before `main` with the default `auto-init` feature) or
/// when the first server starts, before any server thread is pinned to
/// `main_cpu`. Worker processes that are not pinned get this whole set,
/// whichever thread spawned them. Empty if unknown.
pub(crate) fn process_cpus() -> &'static [usize] {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(current_cpus)
}

fn allowed_cpus() -> Vec<usize> {
    let cur = current_cpus();
    if cur.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cur
    }
}

/// How many workers a simple servlet runs and where: the seed's `cpus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement(pub(crate) Vec<CpuAffinity>);

impl Default for Placement {
    fn default() -> Self {
        Placement(vec![CpuAffinity::any()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cpu_is_rejected() {
        let e = CpuAffinity::cpu(100_000).validate().unwrap_err();
        assert!(e.to_string().contains("100000"));
    }

    #[test]
    fn pin_is_visible() {
        std::thread::spawn(|| {
            let first = current_cpus()[0];
            CpuAffinity::cpu(first).apply_to_current_thread().unwrap();
            assert_eq!(current_cpus(), vec![first]);
        })
        .join()
        .unwrap();
    }
}
