//! Python exceptions raised by worker code, as engine errors.
//!
//! A Python exception raised by a worker becomes a [`WorkerError`] carrying
//! the exception itself: the object (thread workers) or its pickle together
//! with the formatted traceback (process workers, as `mpservice`'s
//! `RemoteException` does). The other way, engine errors as Python
//! exceptions, is [`crate::convert`].

use std::sync::Arc;

use mpserver::WorkerError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

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
