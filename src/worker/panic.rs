//! Turning a panic inside a worker call into a [`WorkerError`](super::WorkerError).
//!
//! A process-wide panic hook is installed once (chaining to the previous hook).
//! While a call made through [`catch`] runs, the hook records the panic's
//! location (and a backtrace if asked) instead of printing it: the panic is
//! reported to the caller as an error, not to the terminal. Outside such calls
//! the previous hook runs unchanged.
//!
//! Whether to capture backtraces (of panics, and of [`WorkerError`]s created
//! during the call) is an argument of [`catch`]: the worker runners pass
//! their servlet's `.backtraces(..)` option, the server's own threads `false`.
//! The one thread-local below only carries that call's state to the
//! process-wide panic hook and to `WorkerError`'s constructors, which std and
//! the user's code give no other way to reach; it is set and restored by
//! [`catch`] around the call, never left behind.
//!
//! With `panic = "abort"` nothing can be caught: the process aborts right
//! after the hook. The hook then logs the panic (`tracing` at error level,
//! and the previous hook's message on stderr) and, in a worker process, hands
//! it to the reporter the serve loop registered ([`on_abort`]), which sends
//! it to the server as the error of the items being run before the abort.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use super::WorkerError;

/// The call under way through [`catch`] on one thread.
#[derive(Debug, Clone, Copy)]
struct Call {
    /// Capture backtraces of its panics and errors.
    backtraces: bool,
}

thread_local! {
    /// The call under way on this thread, if any (see the module docs).
    static CALL: Cell<Option<Call>> = const { Cell::new(None) };
    /// Location and backtrace of the last panic caught on this thread, from
    /// the hook to [`WorkerError::from_panic`](super::WorkerError).
    static LAST: RefCell<(Option<String>, Option<String>)> = const { RefCell::new((None, None)) };
}

/// A backtrace of the caller, if the call under way asked for them and the
/// environment enables them.
pub(crate) fn capture_backtrace() -> Option<String> {
    if !CALL.with(Cell::get).is_some_and(|c| c.backtraces) {
        return None;
    }
    let bt = std::backtrace::Backtrace::capture();
    match bt.status() {
        std::backtrace::BacktraceStatus::Captured => Some(bt.to_string()),
        _ => None,
    }
}

static HOOK: Once = Once::new();

type AbortReporter = Box<dyn Fn(&WorkerError) + Send + Sync>;

/// What a worker process does with a panic it cannot survive.
static ABORT_REPORTER: OnceLock<AbortReporter> = OnceLock::new();

/// Registers, once per process, what to do with a worker panic when panics
/// abort (`panic = "abort"`): called on the panicking worker's thread,
/// just before the process aborts.
pub(crate) fn on_abort(report: impl Fn(&WorkerError) + Send + Sync + 'static) {
    let _ = ABORT_REPORTER.set(Box::new(report));
}

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CALL.with(Cell::get).is_some() {
                let location = info.location().map(|l| l.to_string());
                let bt = capture_backtrace();
                if cfg!(panic = "abort") {
                    // Nothing will catch it: tell everyone before the abort.
                    let message = payload_message(info.payload());
                    let error = WorkerError::panicked(message, location, bt);
                    if let Some(report) = ABORT_REPORTER.get() {
                        report(&error);
                    }
                    tracing::error!(error = %error, "worker panicked; the process aborts (panic = \"abort\")");
                    previous(info);
                    return;
                }
                LAST.with(|last| *last.borrow_mut() = (location, bt));
            } else {
                previous(info);
            }
        }));
    });
}

/// The message a panic's payload carries (a `&str` or a `String`, as from
/// `panic!`).
pub(crate) fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Location and backtrace of the last panic caught on this thread.
pub(crate) fn take_last_panic() -> (Option<String>, Option<String>) {
    LAST.with(|last| std::mem::take(&mut *last.borrow_mut()))
}

/// Runs `f`, turning a panic into a `WorkerError`; panics and errors during
/// the call capture backtraces if `backtraces` (and the environment enables
/// them).
pub(crate) fn catch<R>(backtraces: bool, f: impl FnOnce() -> R) -> Result<R, WorkerError> {
    install_hook();
    let outer = CALL.with(|c| c.replace(Some(Call { backtraces })));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    CALL.with(|c| c.set(outer));
    r.map_err(WorkerError::from_panic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_error_with_location() {
        let r: Result<(), _> = catch(false, || panic!("bad {}", 7));
        let e = r.unwrap_err();
        assert!(e.is_panic());
        assert!(e.message().starts_with("bad 7 (at "), "{}", e.message());
        assert!(e.message().contains("panic.rs"));
    }
}
