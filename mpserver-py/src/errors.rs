//! Errors between Python and the engine.
//!
//! * A Python exception raised by a worker becomes a [`WorkerError`] carrying
//!   the exception itself: the object (thread workers) or its pickle together
//!   with the formatted traceback (process workers, as `mpservice`'s
//!   `RemoteException` does).
//! * An engine [`Error`] reaching a caller becomes a Python exception: the
//!   worker's own exception where there is one (a process worker's with its
//!   traceback as `__cause__`, a `RemoteTraceback`), otherwise one of the
//!   package's classes (`TimeoutError`, `ServerBacklogFull`, `EnsembleError`,
//!   `WorkerCrashed`, ...), built by `mpserver._errors._from_core`.

use std::sync::Arc;

use mpserver::error::{StartError, WorkerId};
use mpserver::{Error, WorkerError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::value::PyValue;

static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The package's pure-Python helpers (`mpserver._errors`).
pub fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = HELPERS.get_or_try_init(py, || {
        PyModule::import(py, "mpserver._errors").map(Bound::unbind)
    })?;
    Ok(m.bind(py))
}

/// Whether a worker's exception travels as the object (thread workers) or
/// pickled (process workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// Keep the exception object (same process).
    Object,
    /// Pickle it with its formatted traceback.
    Pickle,
}

/// Turns a Python exception raised by worker code into a [`WorkerError`].
pub fn worker_error(py: Python<'_>, err: PyErr, carry: Carry) -> WorkerError {
    let exc = err.value(py);
    // Keep the worker-side traceback on the exception itself (Python 3.11
    // keeps it beside a raised exception, not always on it).
    if let Some(tb) = err.traceback(py) {
        let _ = exc.setattr("__traceback__", tb);
    }
    let ty = exc.get_type();
    let module = ty
        .module()
        .map(|m| m.to_string())
        .unwrap_or_else(|_| "builtins".into());
    let name = ty
        .qualname()
        .map(|m| m.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let type_name = if module == "builtins" {
        name
    } else {
        format!("{module}.{name}")
    };
    let message = exc
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "<exception str() failed>".into());
    let we = WorkerError::new(type_name, message);
    match carry {
        Carry::Object => we.with_local(Arc::new(exc.clone().into_any().unbind())),
        Carry::Pickle => {
            match helpers(py).and_then(|h| h.call_method1("_dump_exception", (exc,))) {
                Ok(b) => match b.cast::<PyBytes>() {
                    Ok(b) => we.with_detail(b.as_bytes().to_vec()),
                    Err(_) => we,
                },
                Err(_) => we,
            }
        }
    }
}

/// The exception of a worker's error, if the worker was Python code.
fn python_exception<'py>(py: Python<'py>, e: &WorkerError) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Some(obj) = e.local().and_then(|a| a.downcast_ref::<Py<PyAny>>()) {
        return Ok(Some(obj.bind(py).clone()));
    }
    if let Some(d) = e.detail() {
        let exc = helpers(py)?.call_method1("_load_exception", (PyBytes::new(py, d),))?;
        return Ok(Some(exc));
    }
    Ok(None)
}

fn from_core<'py>(
    py: Python<'py>,
    kind: &str,
    message: String,
    extra: Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    helpers(py)?.call_method1("_from_core", (kind, message, extra))
}

fn worker_extra<'py>(py: Python<'py>, worker: Option<&WorkerId>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    if let Some(w) = worker {
        d.set_item("worker", w.to_string())?;
        d.set_item("worker_name", &w.name)?;
        d.set_item("worker_index", w.index)?;
        d.set_item("pid", w.pid)?;
    }
    Ok(d)
}

fn worker_failure<'py>(
    py: Python<'py>,
    kind: &str,
    message: String,
    worker: &WorkerId,
    error: &WorkerError,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(exc) = python_exception(py, error)? {
        return Ok(exc);
    }
    let extra = worker_extra(py, Some(worker))?;
    extra.set_item("type_name", error.type_name())?;
    extra.set_item("panic", error.is_panic())?;
    extra.set_item("backtrace", error.backtrace())?;
    from_core(py, kind, message, extra)
}

/// The Python exception object for an engine error.
pub fn exception_value<'py>(py: Python<'py>, e: &Error) -> PyResult<Bound<'py, PyAny>> {
    let message = e.to_string();
    match e {
        Error::Worker { worker, error } => worker_failure(py, "worker", message, worker, error),
        Error::Start(StartError::Init { worker, error }) => {
            worker_failure(py, "start", message, worker, error)
        }
        Error::Ensemble(ens) => {
            let values = ens.take_values::<PyValue>();
            let y = PyList::empty(py);
            let mut n = 0usize;
            for (i, err) in ens.errors().iter().enumerate() {
                let value = values.as_ref().and_then(|v| v.get(i).cloned().flatten());
                match (err, value) {
                    (Some(err), _) => {
                        n += 1;
                        y.append(exception_value(py, err)?)?;
                    }
                    (None, Some(v)) => {
                        n += 1;
                        y.append(v.to_py(py)?)?;
                    }
                    (None, None) => y.append(py.None())?,
                }
            }
            let extra = PyDict::new(py);
            extra.set_item("y", y)?;
            extra.set_item("n", n)?;
            from_core(py, "ensemble", message, extra)
        }
        other => {
            let extra = worker_extra(py, other.worker())?;
            if let Error::Timeout(t) = other {
                extra.set_item("enqueue", t.enqueue.as_secs_f64())?;
                extra.set_item("total", t.total.as_secs_f64())?;
                extra.set_item("while_enqueuing", t.while_enqueuing)?;
            }
            from_core(py, other.kind(), message, extra)
        }
    }
}

/// The Python exception for an engine error, ready to raise.
pub fn to_pyerr(py: Python<'_>, e: &Error) -> PyErr {
    match exception_value(py, e) {
        Ok(v) => PyErr::from_value(v),
        Err(err) => err,
    }
}
