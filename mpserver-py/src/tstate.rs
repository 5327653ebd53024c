//! A Python thread state kept on an engine thread for the thread's life.
//!
//! A thread that CPython did not create has no thread state of its own:
//! each `Python::attach` on it makes one (`PyGILState_Ensure`: a
//! `PyThreadState` and the first chunk of its frame stack, an `mmap`) and
//! each release deletes it again (`munmap`). On a thread worker that is
//! twice per item: on the seed pipeline (S4) that thread spent about a
//! third of its samples making and deleting thread states (perf:
//! `PyThreadState_New`, `tstate_delete_common`,
//! `_PyThreadState_BumpFramePointerSlow`, `mmap`/`munmap`, page faults).
//! [`KeptThreadState`] makes the state once (with the GIL released again
//! at once), so every later attach on the thread only takes the GIL.

use std::thread::{self, ThreadId};

use pyo3::ffi;

/// The calling thread's Python thread state, made by [`KeptThreadState::keep`]
/// and deleted when this is dropped on the same thread (dropped on another
/// thread, the state is left as it is: deleting another thread's state is
/// not allowed).
pub struct KeptThreadState {
    gstate: ffi::PyGILState_STATE,
    tstate: *mut ffi::PyThreadState,
    thread: ThreadId,
}

// SAFETY: the raw thread state is only ever used on the thread that made
// it: `Drop` checks the thread and does nothing elsewhere. Moving the
// holder between threads (the engine's worker value is `Send`) is harmless.
unsafe impl Send for KeptThreadState {}

impl KeptThreadState {
    /// Makes this thread's Python thread state and releases the GIL again,
    /// keeping the state. `None` if the interpreter is not running or the
    /// thread has a thread state already (a Python thread, or one inside an
    /// attach: it keeps what it has).
    ///
    /// Call it outside any `Python::attach` (the engine's `Worker::init` is).
    pub fn keep() -> Option<Self> {
        // SAFETY: both calls are valid from any thread at any time.
        if unsafe { ffi::Py_IsInitialized() } == 0
            || !unsafe { ffi::PyGILState_GetThisThreadState() }.is_null()
        {
            return None;
        }
        // SAFETY: the interpreter is initialised and this thread has no
        // thread state, so it holds no GIL and no PyO3 guard is live on it:
        // `PyGILState_Ensure` makes its thread state and takes the GIL;
        // `PyEval_SaveThread` releases the GIL, keeping the state, and
        // returns it for `PyEval_RestoreThread`. PyO3's bookkeeping (its
        // attach count) is untouched, as no guard is made or dropped.
        let (gstate, tstate) = unsafe {
            let g = ffi::PyGILState_Ensure();
            (g, ffi::PyEval_SaveThread())
        };
        Some(KeptThreadState {
            gstate,
            tstate,
            thread: thread::current().id(),
        })
    }
}

/// Dropped outside any `Python::attach` (the engine's `Worker::cleanup`, or
/// the end of the worker's thread).
impl Drop for KeptThreadState {
    fn drop(&mut self) {
        // SAFETY: valid from any thread at any time.
        if thread::current().id() != self.thread || unsafe { ffi::Py_IsInitialized() } == 0 {
            return;
        }
        // SAFETY: on the thread that made the state, outside any attach, so
        // the thread does not hold the GIL: retake it with the state `keep`
        // saved, then undo `keep`'s `PyGILState_Ensure`, which deletes the
        // state and releases the GIL.
        unsafe {
            ffi::PyEval_RestoreThread(self.tstate);
            ffi::PyGILState_Release(self.gstate);
        }
    }
}
