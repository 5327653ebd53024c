//! What the servlet builders share: the servlet type of a Python flow, and
//! the spec fields given in seconds or as CPUs. (A module of its own so that
//! [`crate::flow`] and [`crate::process`] do not import each other.)

use std::time::Duration;

use mpserver::{BoxServlet, CpuAffinity};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::value::PyValue;

/// A servlet of the Python flow.
pub type PyServlet = BoxServlet<PyValue, PyValue>;

/// Seconds (a Python float) as a duration.
pub fn seconds(v: &Bound<'_, PyAny>) -> PyResult<Option<Duration>> {
    if v.is_none() {
        return Ok(None);
    }
    let s: f64 = v.extract()?;
    Duration::try_from_secs_f64(s)
        .map(Some)
        .map_err(|e| PyValueError::new_err(format!("invalid duration {s}: {e}")))
}

/// A CPU spec (`None`, an int, or a list of ints) as an affinity.
pub fn affinity(v: &Bound<'_, PyAny>) -> PyResult<CpuAffinity> {
    if v.is_none() {
        return Ok(CpuAffinity::any());
    }
    if let Ok(c) = v.extract::<usize>() {
        return Ok(CpuAffinity::cpu(c));
    }
    let cpus: Vec<usize> = v.extract()?;
    Ok(if cpus.is_empty() {
        CpuAffinity::any()
    } else {
        CpuAffinity::set(cpus)
    })
}
