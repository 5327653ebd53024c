//! `mpserver._mpserver`: the engine of the Python package `mpserver`.
//!
//! The Python package (`python/mpserver/`) has the seed's API (`Worker`,
//! `ProcessServlet`, `ThreadServlet`, `SequentialServlet`, `EnsembleServlet`,
//! `SwitchServlet`, `Server`, ...); this module runs it on the Rust engine:
//! [`value`] is the value that flows (a Python object or its pickle, with
//! out-of-band buffers), [`convert`] turns values and engine errors into
//! Python objects,
//! [`worker`] runs Python worker classes as engine workers, [`flow`] builds
//! the servlet tree from the Python servlet specs, [`server`] is the server
//! with the GIL released on every wait, [`aio`] drives async calls on the
//! asyncio event loop, [`errors`] turns workers' exceptions into engine errors,
//! [`process`] runs Python workers in worker processes, which
//! [`forkserver`] forks from a prepared interpreter.

pub mod aio;
pub mod convert;
pub mod errors;
pub mod flow;
pub mod forkserver;
pub mod process;
pub mod server;
pub mod spec;
pub mod tstate;
pub mod value;
pub mod worker;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _mpserver(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<server::Core>()?;
    m.add_class::<server::Stream>()?;
    m.add_class::<aio::Bridge>()?;
    m.add_class::<aio::Call>()?;
    m.add_function(wrap_pyfunction!(process::_worker_main, m)?)?;
    m.add_function(wrap_pyfunction!(forkserver::_forkserver_pid, m)?)?;
    m.add_function(wrap_pyfunction!(forkserver::_start_forkserver, m)?)?;
    m.add_function(wrap_pyfunction!(forkserver::_die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(value::_pickle_layout, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
