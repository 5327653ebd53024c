//! asyncio awaitables driven on the event loop's own thread.
//!
//! An async call is the engine's future (`Handle::async_call_with`), polled
//! by the event loop: each loop has a [`Bridge`], a pipe registered with
//! `loop.add_reader`. When the engine completes a request (on whatever
//! thread), the task's waker queues the task and writes one byte to the pipe
//! unless one is there already (no GIL needed); the loop wakes, and its
//! reader callback (`Bridge.on_readable`, in Rust: no Python frame, no
//! `BlockingIOError` per wake-up) empties the pipe and polls every queued
//! task, setting the results of their `asyncio.Future`s: one wake-up of the
//! loop for a whole run of completions. No thread waits for the GIL to hand
//! over a result, and nothing blocks the loop: polling never waits (room is
//! awaited, not blocked for).

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use mpserver::Error;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::convert;
use crate::value::PyValue;

type CallFuture = Pin<Box<dyn Future<Output = Result<PyValue, Error>> + Send>>;

struct Shared {
    ready: Mutex<VecDeque<Arc<Task>>>,
    /// Write end of the loop's pipe (non-blocking).
    wake: File,
    /// A byte is in the pipe and the loop has not drained since.
    signalled: AtomicBool,
    /// Calls of this loop whose engine future is alive (not finished, not
    /// cancelled): see [`Bridge::busy`].
    inflight: AtomicUsize,
}

/// Counts a call as in flight on its loop while it lives (it lives in the
/// call's engine future: dropped when the future finishes or is dropped).
pub struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    fn schedule(&self, task: Arc<Task>) {
        match self.ready.lock() {
            Ok(mut q) => q.push_back(task),
            Err(p) => p.into_inner().push_back(task),
        }
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A full pipe (EAGAIN) already holds a wake-up for the loop.
            let _ = (&self.wake).write(&[1u8]);
        }
    }
}

/// One async call: the engine's future and the asyncio future it completes.
struct Task {
    fut: Mutex<Option<CallFuture>>,
    pyfut: Py<PyAny>,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let shared = self.shared.clone();
            shared.schedule(self);
        }
    }
}

impl Task {
    /// Polls the engine future once (on the loop's thread, with the GIL).
    fn poll(self: &Arc<Self>, py: Python<'_>) -> PyResult<()> {
        self.queued.store(false, Ordering::Release);
        let pyfut = self.pyfut.bind(py);
        let mut guard = match self.fut.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if pyfut.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled by the caller: dropping the engine future cancels
            // the request.
            *guard = None;
            return Ok(());
        }
        let Some(fut) = guard.as_mut() else {
            return Ok(());
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            *guard = None;
            drop(guard);
            match r {
                Ok(v) => {
                    pyfut.call_method1(intern!(py, "set_result"), (v.to_py(py)?,))?;
                }
                Err(e) => {
                    pyfut.call_method1(
                        intern!(py, "set_exception"),
                        (convert::exception_value(py, &e)?,),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The bridge between the engine and one asyncio event loop (see the module
/// docs). `mpserver._api` makes one per loop.
#[pyclass(module = "mpserver._mpserver", frozen)]
pub struct Bridge {
    shared: Arc<Shared>,
    /// Read end of the loop's pipe (non-blocking; a duplicate of the one
    /// registered with `loop.add_reader`).
    read: File,
}

#[pymethods]
impl Bridge {
    /// A bridge that signals the loop by writing to `wake_fd` (the write end
    /// of a non-blocking pipe) and empties the pipe from `read_fd` (its read
    /// end, non-blocking); the bridge takes duplicates of both.
    #[new]
    fn new(wake_fd: i32, read_fd: i32) -> PyResult<Self> {
        let dup = |fd: i32| {
            unsafe_borrow(fd)?
                .try_clone_to_owned()
                .map(File::from)
                .map_err(|e| PyValueError::new_err(format!("bad fd {fd}: {e}")))
        };
        Ok(Bridge {
            shared: Arc::new(Shared {
                ready: Mutex::new(VecDeque::new()),
                wake: dup(wake_fd)?,
                signalled: AtomicBool::new(false),
                inflight: AtomicUsize::new(0),
            }),
            read: dup(read_fd)?,
        })
    }

    /// Calls of this loop in flight (for tests).
    #[getter]
    fn inflight(&self) -> usize {
        self.shared.inflight.load(Ordering::Acquire)
    }

    /// The loop's reader callback: empties the pipe, then [`Bridge::drain`]s.
    fn on_readable(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.read).read(&mut buf) {
                // A full read may leave more bytes: read again.
                Ok(n) if n == buf.len() => continue,
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Empty (WouldBlock), or a broken pipe: nothing to read.
                Err(_) => break,
            }
        }
        self.drain(py)
    }

    /// Polls every task woken since the last drain. Called by the loop's
    /// reader callback after it emptied the pipe.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        self.shared.signalled.store(false, Ordering::Release);
        let tasks: Vec<Arc<Task>> = match self.shared.ready.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        let mut first_err = None;
        for t in tasks {
            if let Err(e) = t.poll(py) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Bridge {
    /// Whether other calls of this loop are in flight: then a new call
    /// joins the first stage's queue (`Handle::async_call_queued_with`)
    /// instead of being handed to an idle worker process by the loop's
    /// thread, so a burst of calls goes to the workers in runs rather than
    /// one hand-off (and one round of context switches) per call.
    pub fn busy(&self) -> bool {
        self.shared.inflight.load(Ordering::Acquire) > 0
    }

    /// Counts a new call in flight until the guard is dropped.
    pub fn enter(&self) -> InflightGuard {
        self.shared.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.shared.clone())
    }
}

/// Borrows a raw fd given by Python for the duration of a `dup`.
fn unsafe_borrow(fd: i32) -> PyResult<std::os::fd::BorrowedFd<'static>> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!("bad fd {fd}")));
    }
    // SAFETY: `fd` is an open descriptor owned by the Python caller, which
    // keeps it open across this call; the borrow is used only to `dup` it
    // at once and is not kept.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Handle to an async call, to cancel it when its asyncio future is
/// cancelled.
#[pyclass(module = "mpserver._mpserver", frozen)]
pub struct Call {
    task: Arc<Task>,
}

#[pymethods]
impl Call {
    /// Drops the engine future now (cancelling the request), e.g. from the
    /// asyncio future's done-callback.
    fn cancel(&self, py: Python<'_>) {
        let fut = match self.task.fut.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        py.detach(|| drop(fut));
    }
}

/// Starts `fut` for the asyncio future `pyfut` on `bridge`'s loop: polls it
/// once now (admission happens here), then whenever the engine wakes it.
pub fn spawn(
    py: Python<'_>,
    bridge: &Bridge,
    pyfut: Bound<'_, PyAny>,
    fut: CallFuture,
) -> PyResult<Call> {
    let task = Arc::new(Task {
        fut: Mutex::new(Some(fut)),
        pyfut: pyfut.unbind(),
        queued: AtomicBool::new(true),
        shared: bridge.shared.clone(),
    });
    task.poll(py)?;
    Ok(Call { task })
}
