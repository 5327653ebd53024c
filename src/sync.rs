//! The synchronisation primitives of the crate's own protocols, in one place
//! so that a model checker can replace them.
//!
//! Code whose correctness rests on an interleaving (the reading of a worker's
//! socket handed between its reader thread and a caller, a worker's credit
//! and the supervisor's wait for it, admission to the server's capacity)
//! takes its `Mutex`, `Condvar`, atomics and `Arc` from here. Normally they
//! are `std`'s; built with `RUSTFLAGS="--cfg mpserver_loom"` they are
//! [`loom`](https://docs.rs/loom)'s, and the models under `#[cfg(mpserver_loom)]`
//! explore every interleaving of those protocols (`.ci/run` runs them).
//!
//! Why a cfg of our own and not `--cfg loom` as tokio uses: other crates in
//! the dependency tree (event-listener) switch to loom under `cfg(loom)` and
//! do not build that way with the versions we use.

#[cfg(not(mpserver_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::{
    Arc, Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

#[cfg(mpserver_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::{
    Arc, Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

/// Locks `m`, taking the data of a poisoned lock as it is: the crate's locks
/// guard plain bookkeeping that a panic cannot leave half-written in a way
/// that matters more than stopping would.
#[allow(dead_code)]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`lock`] for a `std::sync::Mutex` that stays `std`'s under the model
/// checker (bookkeeping outside the checked protocols): takes the data of a
/// poisoned lock as it is, for the same reason.
pub(crate) fn lock_std<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `m.get_mut()` for a `std::sync::Mutex`, poisoned or not.
pub(crate) fn get_mut_std<T: ?Sized>(m: &mut std::sync::Mutex<T>) -> &mut T {
    m.get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
