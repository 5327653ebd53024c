//! The value that flows through a Python flow.
//!
//! A [`PyValue`] is a Python object, or its pickle (protocol 5) where it came
//! out of a worker process: bytes read from a worker's socket stay bytes until
//! Python code needs the object (a thread worker, a switch, the caller), so a
//! value passing from one process stage to the next is never unpickled in the
//! server process and never needs the GIL there. Ensemble outputs are lists of
//! values, made into a Python `list` only when Python needs them.
//!
//! Crossing a process boundary uses serde: serializing pickles the object
//! under the GIL (or writes the pickle it already is); deserializing keeps the
//! bytes.

use std::fmt;
use std::sync::{Arc, OnceLock};

use mpserver::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{self, Serializer};

/// A value in a Python flow.
#[derive(Clone)]
pub enum PyValue {
    /// A live Python object (with its pickle once made, so that ensemble
    /// members in processes share one pickling).
    Obj(Arc<Live>),
    /// A pickle (from a worker process), unpickled when Python needs it.
    Pickled(Arc<Vec<u8>>),
    /// The output of an ensemble: one value per member.
    List(Vec<PyValue>),
    /// A member's error in the output of an ensemble with `fail_fast=False`.
    Failed(Arc<Failed>),
}

/// An ensemble member's error standing in the ensemble's output, with its
/// Python exception once made: every conversion of the value gives that one
/// exception (an [`mpserver::error::EnsembleError`]'s partial values can be
/// taken only once).
pub struct Failed {
    /// The member's error.
    pub error: Error,
    exception: PyOnceLock<Py<PyAny>>,
}

impl Failed {
    /// A member's error.
    pub fn new(error: Error) -> Self {
        Failed {
            error,
            exception: PyOnceLock::new(),
        }
    }
}

impl fmt::Debug for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyValue::Obj(_) => f.write_str("PyValue::Obj"),
            PyValue::Pickled(b) => write!(f, "PyValue::Pickled({} bytes)", b.len()),
            PyValue::List(v) => f.debug_tuple("PyValue::List").field(v).finish(),
            PyValue::Failed(e) => write!(f, "PyValue::Failed({})", e.error),
        }
    }
}

/// A Python object and, once made, its pickle.
pub struct Live {
    obj: Py<PyAny>,
    pickle: OnceLock<Arc<Vec<u8>>>,
}

static PICKLE_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PICKLE_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `pickle.dumps(obj, protocol=5)`.
pub fn pickle_dumps(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let py = obj.py();
    let dumps = PICKLE_DUMPS.import(py, "pickle", "dumps")?;
    let b = dumps.call1((obj, 5))?;
    Ok(b.cast::<PyBytes>()?.as_bytes().to_vec())
}

/// `pickle.loads(bytes)`.
pub fn pickle_loads<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let loads = PICKLE_LOADS.import(py, "pickle", "loads")?;
    loads.call1((PyBytes::new(py, bytes),))
}

impl PyValue {
    /// Wraps a Python object.
    pub fn from_obj(obj: Bound<'_, PyAny>) -> Self {
        PyValue::Obj(Arc::new(Live {
            obj: obj.unbind(),
            pickle: OnceLock::new(),
        }))
    }

    /// Wraps a Python object about to enter a process stage: its pickle is
    /// made now, while the caller holds the GIL, so the engine's threads need
    /// not take it. An object that does not pickle is kept as is (its stage
    /// then fails it as a codec error).
    pub fn from_obj_pickled(obj: Bound<'_, PyAny>) -> Self {
        let pickle = OnceLock::new();
        if let Ok(b) = pickle_dumps(&obj) {
            let _ = pickle.set(Arc::new(b));
        }
        PyValue::Obj(Arc::new(Live {
            obj: obj.unbind(),
            pickle,
        }))
    }

    /// The Python object this value stands for (unpickling if needed).
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            PyValue::Obj(o) => Ok(o.obj.bind(py).clone()),
            PyValue::Pickled(b) => pickle_loads(py, b),
            PyValue::List(items) => {
                let list = PyList::empty(py);
                for v in items {
                    list.append(v.to_py(py)?)?;
                }
                Ok(list.into_any())
            }
            PyValue::Failed(e) => e
                .exception
                .get_or_try_init(py, || {
                    crate::errors::exception_value(py, &e.error).map(Bound::unbind)
                })
                .map(|x| x.bind(py).clone()),
        }
    }

    /// The pickle of this value.
    fn pickled(&self) -> PyResult<Arc<Vec<u8>>> {
        match self {
            PyValue::Pickled(b) => Ok(b.clone()),
            PyValue::Obj(o) => {
                if let Some(b) = o.pickle.get() {
                    return Ok(b.clone());
                }
                let b = Python::attach(|py| pickle_dumps(o.obj.bind(py)).map(Arc::new))?;
                Ok(o.pickle.get_or_init(|| b).clone())
            }
            other => Python::attach(|py| Ok(Arc::new(pickle_dumps(&other.to_py(py)?)?))),
        }
    }
}

impl serde::Serialize for PyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self
            .pickled()
            .map_err(|e| ser::Error::custom(format!("cannot pickle: {e}")))?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> serde::Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pickle")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bytes)
            .map(|b| PyValue::Pickled(Arc::new(b)))
    }
}
