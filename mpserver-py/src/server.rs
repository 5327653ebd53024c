//! The running server, as seen from Python (`mpserver.Server` wraps it).
//!
//! Every wait releases the GIL: the start (workers initialise in their own
//! threads and processes), a call waiting for room or for its result, a
//! stream waiting for its next result, and the shutdown. Async calls are
//! `asyncio` awaitables completed from the engine (no thread blocks for them,
//! and cancelling the awaitable cancels the request).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpserver::server::{PairStream, ResultStream};
use mpserver::{CallOptions, Error, Handle, Server, StreamOptions};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyTuple};

use crate::convert;
use crate::flow::{self, FlowInfo};
use crate::value::PyValue;

impl Core {
    /// A call's item entering the flow: into process stages only, the pickle
    /// alone (the engine then holds no Python object to release without the
    /// GIL); else pickled now if it goes to a process first.
    fn input(&self, x: Bound<'_, PyAny>) -> PyValue {
        entering(x, self.info.entry_process_only, self.info.entry_pickles)
    }
}

/// An item entering the flow: the pickle alone (`only_pickle`), the object
/// and its pickle made now (`pickle`), or the object.
fn entering(x: Bound<'_, PyAny>, only_pickle: bool, pickle: bool) -> PyValue {
    if only_pickle {
        PyValue::pickled_only(x)
    } else if pickle {
        PyValue::from_obj_pickled(x)
    } else {
        PyValue::from_obj(x)
    }
}

type PyHandle = Handle<PyValue, PyValue>;

fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|e| PyValueError::new_err(format!("invalid timeout {seconds}: {e}")))
}

/// A started flow.
#[pyclass(module = "mpserver._mpserver", frozen)]
pub struct Core {
    handle: PyHandle,
    server: Mutex<Option<Server<PyValue, PyValue>>>,
    info: FlowInfo,
}

impl Drop for Core {
    fn drop(&mut self) {
        let server = self.server.get_mut().ok().and_then(Option::take);
        if let Some(s) = server {
            // Shutting down waits for thread workers, which need the GIL to
            // finish their calls: never wait holding it.
            if Python::try_attach(|py| py.detach(|| drop(s))).is_none() {
                // Not attached and cannot attach (interpreter finalizing):
                // the server's drop does not need Python.
            }
        }
    }
}

#[pymethods]
impl Core {
    /// Starts the flow described by `spec`.
    #[staticmethod]
    #[pyo3(signature = (spec, capacity, main_cpu, shutdown_grace))]
    fn start(
        py: Python<'_>,
        spec: &Bound<'_, PyAny>,
        capacity: usize,
        main_cpu: &Bound<'_, PyAny>,
        shutdown_grace: f64,
    ) -> PyResult<Core> {
        if capacity == 0 {
            return Err(PyValueError::new_err("capacity must be positive"));
        }
        let (servlet, info) = flow::build_flow(spec)?;
        let main = crate::spec::affinity(main_cpu)?;
        let grace = duration(shutdown_grace)?;
        let r = py.detach(|| {
            Server::builder(servlet)
                .capacity(capacity)
                .main_cpu(main)
                .shutdown_grace(grace)
                .start()
        });
        match r {
            Ok(server) => Ok(Core {
                handle: server.handle(),
                server: Mutex::new(Some(server)),
                info,
            }),
            Err(e) => Err(convert::to_pyerr(py, &e)),
        }
    }

    /// Calls the flow, waiting (without the GIL) for room if
    /// `backpressure` is off, then for the result.
    #[pyo3(signature = (x, timeout, backpressure))]
    fn call(
        &self,
        py: Python<'_>,
        x: Bound<'_, PyAny>,
        timeout: f64,
        backpressure: bool,
    ) -> PyResult<Py<PyAny>> {
        let opts = CallOptions::default()
            .timeout(duration(timeout)?)
            .backpressure(backpressure);
        let v = self.input(x);
        let handle = &self.handle;
        let r = py.detach(|| handle.call_with(v, opts));
        finish(py, r)
    }

    /// Starts an async call whose result completes the asyncio future
    /// `pyfut` through `bridge` (see `aio`).
    #[pyo3(signature = (bridge, pyfut, x, timeout, backpressure))]
    fn submit_async(
        &self,
        py: Python<'_>,
        bridge: &crate::aio::Bridge,
        pyfut: Bound<'_, PyAny>,
        x: Bound<'_, PyAny>,
        timeout: f64,
        backpressure: bool,
    ) -> PyResult<crate::aio::Call> {
        let opts = CallOptions::default()
            .timeout(duration(timeout)?)
            .backpressure(backpressure);
        let v = self.input(x);
        let handle = self.handle.clone();
        let queued = bridge.busy();
        let guard = bridge.enter();
        let fut = Box::pin(async move {
            let _counted = guard;
            if queued {
                handle.async_call_queued_with(v, opts).await
            } else {
                handle.async_call_with(v, opts).await
            }
        });
        crate::aio::spawn(py, bridge, pyfut, fut)
    }

    /// An ordered stream of results for the items of `data`.
    #[pyo3(signature = (data, timeout, return_x, return_exceptions))]
    fn stream(
        &self,
        data: &Bound<'_, PyAny>,
        timeout: f64,
        return_x: bool,
        return_exceptions: bool,
    ) -> PyResult<Stream> {
        let input_error = Arc::new(Mutex::new(None));
        let input = PyInput {
            iter: Some(data.try_iter()?.unbind()),
            error: input_error.clone(),
            pickle: self.info.entry_pickles,
            // With `return_x` the caller gets each item back: keep it.
            only_pickle: self.info.entry_process_only && !return_x,
            taken: VecDeque::new(),
            chunk: input_chunk(self.handle.capacity()),
        };
        let opts = StreamOptions::default()
            .timeout(duration(timeout)?)
            .return_exceptions(return_exceptions);
        let inner = if return_x {
            Inner::Pairs(self.handle.stream_pairs(input, opts))
        } else {
            Inner::Plain(self.handle.stream_with(input, opts))
        };
        Ok(Stream {
            inner: Mutex::new(Some(inner)),
            input_error,
            return_exceptions,
        })
    }

    /// The server's capacity.
    #[getter]
    fn capacity(&self) -> usize {
        self.handle.capacity()
    }

    /// Requests in flight.
    #[getter]
    fn backlog(&self) -> usize {
        self.handle.backlog()
    }

    /// Pids of the worker processes running now.
    fn worker_pids(&self) -> Vec<u32> {
        self.handle.worker_pids()
    }

    /// The server's state, as JSON.
    fn debug_info_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.handle.debug_info())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Stops the flow (waiting without the GIL). Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        let server = match self.server.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(s) = server {
            py.detach(|| drop(s));
        }
    }
}

/// A call's outcome as a Python value or exception.
fn finish(py: Python<'_>, r: Result<PyValue, Error>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(v) => v.to_py(py).map(Bound::unbind),
        Err(e) => Err(convert::to_pyerr(py, &e)),
    }
}

/// How many items a stream's input takes from its Python iterator at a
/// time: the fewest a stream admits whenever it refills its window (a
/// quarter of the default window, see `mpserver::StreamOptions`), at most
/// 64. So the iterator is never read further ahead than one refill would
/// read it anyway.
fn input_chunk(capacity: usize) -> usize {
    let window = capacity.saturating_sub((capacity / 8).max(1)).max(1);
    (window / 4).clamp(1, 64)
}

/// The input of a stream: a Python iterator, advanced (with the GIL) on the
/// consumer's thread as the stream takes items, a chunk of items per taking
/// of the GIL: the stream then admits the chunk's items back to back, so the
/// flow's first stage wakes once for a run of them (and the GIL is taken
/// once per chunk, not per item). An exception raised by the iterator ends
/// the input; the stream raises it after the results of the items taken
/// before it.
struct PyInput {
    /// `None` once the iterator is exhausted or raised.
    iter: Option<Py<PyIterator>>,
    error: Arc<Mutex<Option<PyErr>>>,
    pickle: bool,
    /// Keep the pickle alone (the flow starts with process stages only):
    /// the engine then holds no Python object to release.
    only_pickle: bool,
    /// Items taken from the iterator and not yet given to the stream.
    taken: VecDeque<PyValue>,
    /// Most items taken per taking of the GIL.
    chunk: usize,
}

impl PyInput {
    /// Takes up to `chunk` items from the iterator (with the GIL).
    fn take_chunk(&mut self) {
        let Some(iter) = &self.iter else {
            return;
        };
        let mut ended = false;
        Python::attach(|py| {
            let it = iter.bind(py);
            while self.taken.len() < self.chunk {
                match it.clone().next() {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(Ok(x)) => self
                        .taken
                        .push_back(entering(x, self.only_pickle, self.pickle)),
                    Some(Err(e)) => {
                        if let Ok(mut g) = self.error.lock() {
                            *g = Some(e);
                        }
                        ended = true;
                        break;
                    }
                }
            }
        });
        if ended {
            self.iter = None;
        }
    }
}

impl Iterator for PyInput {
    type Item = PyValue;
    fn next(&mut self) -> Option<PyValue> {
        if self.taken.is_empty() {
            self.take_chunk();
        }
        self.taken.pop_front()
    }
}

enum Inner {
    Plain(ResultStream<PyInput, PyValue>),
    Pairs(PairStream<PyInput, PyValue>),
}

impl Inner {
    fn next_is_ready(&self) -> bool {
        match self {
            Inner::Plain(s) => s.next_is_ready(),
            Inner::Pairs(s) => s.next_is_ready(),
        }
    }

    fn next(&mut self) -> Option<(Option<PyValue>, Result<PyValue, Error>)> {
        match self {
            Inner::Plain(s) => s.next().map(|r| (None, r)),
            Inner::Pairs(s) => s.next().map(|(x, r)| (Some(x), r)),
        }
    }
}

/// The iterator behind `Server.stream`.
#[pyclass(module = "mpserver._mpserver", frozen)]
pub struct Stream {
    inner: Mutex<Option<Inner>>,
    input_error: Arc<Mutex<Option<PyErr>>>,
    return_exceptions: bool,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(PyValueError::new_err("stream already executing"));
            }
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let Some(inner) = guard.as_mut() else {
            return Ok(None);
        };
        // The GIL is given up only to wait: a result that is there already
        // is taken holding it (no hand-over of the GIL per item to a thread
        // worker waiting for it, which on two CPUs means a wake-up each).
        let next = if inner.next_is_ready() {
            inner.next()
        } else {
            py.detach(|| inner.next())
        };
        let Some((x, r)) = next else {
            *guard = None;
            drop(guard);
            let err = self.input_error.lock().ok().and_then(|mut g| g.take());
            return match err {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        let y = match r {
            Ok(v) => v.to_py(py)?,
            Err(e) if self.return_exceptions => convert::exception_value(py, &e)?,
            Err(e) => {
                *guard = None;
                return Err(convert::to_pyerr(py, &e));
            }
        };
        match x {
            None => Ok(Some(y.unbind())),
            Some(x) => Ok(Some(
                PyTuple::new(py, [x.to_py(py)?, y])?.into_any().unbind(),
            )),
        }
    }

    /// Ends the stream now: what it has in flight is cancelled.
    fn close(&self, py: Python<'_>) {
        // A stream being advanced by another thread is left to it (waiting
        // for the lock here, holding the GIL, could deadlock with it).
        let inner = match self.inner.try_lock() {
            Ok(mut g) => g.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(inner) = inner {
            py.detach(|| drop(inner));
        }
    }
}
