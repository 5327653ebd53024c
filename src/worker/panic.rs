//! Turning a panic inside a worker call into a [`WorkerError`](super::WorkerError).
//!
//! A process-wide panic hook is installed once (chaining to the previous hook).
//! While a worker call runs, the hook records the panic's location (and a
//! backtrace if enabled) in a thread-local instead of printing it: the panic is
//! reported to the caller as an error, not to the terminal. Outside worker calls
//! the previous hook runs unchanged.
//!
//! Backtraces (of panics, and of [`WorkerError`]s created on a worker's
//! thread) are captured only on the threads of workers whose servlet asked
//! for them (`.backtraces(true)`): the setting belongs to the thread that
//! runs the worker (a worker thread, or a worker process's serving thread),
//! which serves that one worker for its whole life.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use super::WorkerError;

thread_local! {
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
    static LAST: RefCell<(Option<String>, Option<String>)> = const { RefCell::new((None, None)) };
    static BACKTRACES: Cell<bool> = const { Cell::new(false) };
}

/// Whether worker errors and panics on this thread capture backtraces (set
/// once by the thread that runs a worker, from its servlet's option).
pub(crate) fn set_backtraces(on: bool) {
    BACKTRACES.with(|b| b.set(on));
}

/// A backtrace of the caller, if this thread's worker asked for them and the
/// environment enables them.
pub(crate) fn capture_backtrace() -> Option<String> {
    if !BACKTRACES.with(Cell::get) {
        return None;
    }
    let bt = std::backtrace::Backtrace::capture();
    match bt.status() {
        std::backtrace::BacktraceStatus::Captured => Some(bt.to_string()),
        _ => None,
    }
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_WORKER.with(Cell::get) {
                let location = info.location().map(|l| l.to_string());
                let bt = capture_backtrace();
                LAST.with(|last| *last.borrow_mut() = (location, bt));
            } else {
                previous(info);
            }
        }));
    });
}

/// Location and backtrace of the last panic caught on this thread.
pub(crate) fn take_last_panic() -> (Option<String>, Option<String>) {
    LAST.with(|last| std::mem::take(&mut *last.borrow_mut()))
}

/// Runs `f`, turning a panic into a `WorkerError`.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, WorkerError> {
    install_hook();
    IN_WORKER.with(|w| w.set(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    IN_WORKER.with(|w| w.set(false));
    r.map_err(WorkerError::from_panic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_error_with_location() {
        let r: Result<(), _> = catch(|| panic!("bad {}", 7));
        let e = r.unwrap_err();
        assert!(e.is_panic());
        assert!(e.message().starts_with("bad 7 (at "), "{}", e.message());
        assert!(e.message().contains("panic.rs"));
    }
}
