//! Values and engine errors as Python objects, and values as pickles.
//!
//! * A [`PyValue`] becomes its Python object (unpickling a [`Pickle`], making
//!   an ensemble's list) with [`PyValue::to_py`], and its pickle (for a
//!   process stage) when serialized.
//! * An engine [`Error`] reaching a caller becomes a Python exception: the
//!   worker's own exception where there is one (a process worker's with its
//!   traceback as `__cause__`, a `RemoteTraceback`), otherwise one of the
//!   package's classes (`TimeoutError`, `ServerBacklogFull`, `EnsembleError`,
//!   `WorkerCrashed`, ...), built by `mpserver._errors._from_core`.
//!
//! The two are one module because they recurse into each other: an
//! ensemble's list may hold member errors, and an `EnsembleError` holds the
//! members' values.

use std::sync::Arc;

use mpserver::error::StartError;
use mpserver::{Error, WorkerError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use serde::ser::{self, Serializer};

use crate::errors::helpers;
use crate::value::{Pickle, PyValue};

impl PyValue {
    /// The Python object this value stands for (unpickling if needed).
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            PyValue::Obj(o) => Ok(o.obj.bind(py).clone()),
            PyValue::Pickled(p) => p.loads(py),
            PyValue::List(items) => {
                let list = PyList::empty(py);
                for v in items {
                    list.append(v.to_py(py)?)?;
                }
                Ok(list.into_any())
            }
            PyValue::Failed(e) => e
                .exception
                .get_or_try_init(py, || exception_value(py, &e.error).map(Bound::unbind))
                .map(|x| x.bind(py).clone()),
        }
    }

    /// The pickle of this value (made under the GIL if it is not made yet).
    fn pickled(&self) -> PyResult<Arc<Pickle>> {
        match self {
            PyValue::Pickled(p) => Ok(p.clone()),
            PyValue::Obj(o) => {
                if let Some(p) = o.pickle.get() {
                    return Ok(p.clone());
                }
                let p = Python::attach(|py| Pickle::dumps(o.obj.bind(py)).map(Arc::new))?;
                Ok(o.pickle.get_or_init(|| p).clone())
            }
            other => Python::attach(|py| Ok(Arc::new(Pickle::dumps(&other.to_py(py)?)?))),
        }
    }
}

impl serde::Serialize for PyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self
            .pickled()
            .map_err(|e| ser::Error::custom(format!("cannot pickle: {e}")))?;
        p.serialize_into(s)
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

/// `mpserver._errors._from_core(kind, message, extra)`.
fn from_core<'py>(
    py: Python<'py>,
    kind: &str,
    message: String,
    extra: Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    helpers(py)?.call_method1("_from_core", (kind, message, extra))
}

/// A worker's failure: its Python exception, or a `WorkerError` with the
/// worker's backtrace (a Rust worker's panic) as its cause.
fn worker_failure<'py>(
    py: Python<'py>,
    kind: &str,
    message: String,
    error: &WorkerError,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(exc) = python_exception(py, error)? {
        return Ok(exc);
    }
    let extra = PyDict::new(py);
    extra.set_item("backtrace", error.backtrace())?;
    from_core(py, kind, message, extra)
}

/// The Python exception object for an engine error.
pub fn exception_value<'py>(py: Python<'py>, e: &Error) -> PyResult<Bound<'py, PyAny>> {
    let message = e.to_string();
    match e {
        Error::Worker { error, .. } => worker_failure(py, "worker", message, error),
        Error::Start(StartError::Init { error, .. }) => worker_failure(py, "start", message, error),
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
            let extra = PyDict::new(py);
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
