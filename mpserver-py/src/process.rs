//! Process servlets: Python workers in worker processes started by the
//! engine's supervisor.
//!
//! A worker process is the server's own Python interpreter
//! (`sys.executable`) running `mpserver._mpserver._worker_main()`, which
//! hands the process to the engine's worker loop
//! ([`serve_worker`](mpserver::servlet::process::serve_worker)) for
//! [`PyProcessWorker`]: the same framed socket protocol, crash recovery,
//! restarts, cancellation and recycling as Rust workers, and the same
//! extension module file on both sides (checked at the handshake). The
//! worker class and its arguments cross pickled, with the parent's
//! `multiprocessing` preparation data, so classes defined in the main script
//! are found as with the `spawn` start method.

use std::time::Duration;

use mpserver::ProcessServlet;
use mpserver::servlet::process::{Launcher, RestartPolicy};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::forkserver::ForkServer;
use crate::spec::{PyServlet, affinity, seconds};
use crate::worker::PyProcessWorker;

/// How long a new worker interpreter may take to start and import the
/// extension module before its handshake (not its worker's `__init__`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds a process servlet from its spec
/// `("process", prep, payload, cpus, name, batch_size, batch_wait_time, options)`.
pub fn build(t: &Bound<'_, PyTuple>) -> PyResult<PyServlet> {
    let py = t.py();
    let prep = t.get_item(1)?.cast::<PyBytes>()?.as_bytes().to_vec();
    let payload = t.get_item(2)?.cast::<PyBytes>()?.as_bytes().to_vec();
    let cpus = t
        .get_item(3)?
        .cast::<PyList>()?
        .iter()
        .map(|c| affinity(&c))
        .collect::<PyResult<Vec<_>>>()?;
    let name: String = t.get_item(4)?.extract()?;
    let batch_size: usize = t.get_item(5)?.extract()?;
    let wait = seconds(&t.get_item(6)?)?;
    let options = t.get_item(7)?.cast_into::<PyDict>()?;

    let executable: String = py.import("sys")?.getattr("executable")?.extract()?;
    if executable.is_empty() {
        return Err(PyRuntimeError::new_err(
            "sys.executable is empty: cannot start worker processes",
        ));
    }
    let pkg_root: String = match options.get_item("pkg_root")? {
        Some(p) => p.extract()?,
        None => String::new(),
    };
    // The package's own location first, so the child imports the very
    // extension module the server runs (checked at the handshake).
    let code = format!(
        "import sys; sys.path.insert(0, {pkg_root:?}); \
         import mpserver._mpserver as m; m._worker_main()"
    );
    let mut launcher = Launcher::program(&executable)
        .args(["-c", code.as_str()])
        .require_same_image(true)
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    let start_method: String = match options.get_item("start_method")? {
        Some(m) => m.extract()?,
        None => "forkserver".to_string(),
    };
    match start_method.as_str() {
        // Workers forked by the process's fork server (spawned if it cannot).
        "forkserver" => {
            let fs = ForkServer::get_or_start(&executable, &prep, &pkg_root).map_err(|e| {
                PyRuntimeError::new_err(format!("cannot start the fork server: {e}"))
            })?;
            launcher = launcher.starter(fs);
        }
        "spawn" => {}
        other => {
            return Err(PyValueError::new_err(format!(
                "start_method must be 'forkserver' or 'spawn', got {other:?}"
            )));
        }
    }

    let mut s = ProcessServlet::new(PyProcessWorker::new(prep, payload))
        .cpus(cpus)
        .name(name)
        .batch_size(batch_size)
        .launcher(launcher);
    if let Some(w) = wait {
        s = s.batch_wait_time(w);
    }
    let mut restart = RestartPolicy::default();
    if let Some(v) = options.get_item("retry_crashed")? {
        restart.retry_crashed = v.extract()?;
    }
    if let Some(v) = options.get_item("poison_threshold")? {
        restart.poison_threshold = v.extract()?;
    }
    if let Some(v) = options.get_item("stable_after")?
        && let Some(d) = seconds(&v)?
    {
        restart.stable_after = d;
    }
    s = s.restart_policy(restart);
    if let Some(v) = options.get_item("recycle_after")?
        && !v.is_none()
    {
        s = s.recycle_after(v.extract()?);
    }
    if let Some(v) = options.get_item("recycle_above_memory")?
        && !v.is_none()
    {
        s = s.recycle_above_memory(v.extract()?);
    }
    if let Some(v) = options.get_item("max_inflight")?
        && !v.is_none()
    {
        s = s.max_inflight(v.extract()?);
    }
    Ok(Box::new(s))
}

/// The body of a worker process: serves the worker the server sends, then
/// returns (the interpreter then exits). Called by the worker interpreter's
/// `-c` code; raises if this process was not started by a server.
#[pyfunction]
pub fn _worker_main(py: Python<'_>) -> PyResult<()> {
    // The serve loop takes the GIL for each call only.
    py.detach(mpserver::servlet::process::serve_worker::<PyProcessWorker>)
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))
}
