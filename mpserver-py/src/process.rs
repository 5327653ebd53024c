//! Process servlets: Python workers in worker processes started by the
//! engine's supervisor.

use pyo3::exceptions::PyNotImplementedError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::flow::PyServlet;

/// Builds a process servlet from its spec.
pub fn build(_t: &Bound<'_, PyTuple>) -> PyResult<PyServlet> {
    Err(PyNotImplementedError::new_err(
        "process servlets are not available yet",
    ))
}
