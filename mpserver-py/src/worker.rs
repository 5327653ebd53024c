//! Python workers as engine workers.
//!
//! The user's `Worker` subclass is instantiated inside its own thread
//! ([`PyThreadWorker`]) or worker process ([`PyProcessWorker`]), with
//! `worker_index` and the servlet's keyword arguments, exactly as
//! `mpservice` does. Its `call` then runs on the engine's worker thread (or
//! the worker process's serve loop) holding the GIL only for the call.
//!
//! Batching: the engine forms batches from the servlet's `batch_size` and
//! `batch_wait_time` (given as servlet keywords, which the worker's
//! `__init__` also receives). The worker's own `self.batch_size` after
//! `__init__` says which form its `call` takes; the adapter bridges any
//! difference (single items to `call([x])[0]`, or a batch item by item).

use std::sync::Arc;

use mpserver::{Worker, WorkerContext, WorkerError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySequence};
use serde::{Deserialize, Serialize};

use crate::errors::{self, Carry};
use crate::tstate::KeptThreadState;
use crate::value::{Pickle, PyValue};

/// What a thread worker's results become: its next stage decides (see
/// `flow::output_for`). A process worker's results are always pickled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The object (for Python code next: a thread worker, the caller).
    #[default]
    Object,
    /// The object and its pickle (next, process and thread stages both).
    ObjectAndPickle,
    /// The pickle alone (next, process stages only).
    Pickle,
}

/// A live worker instance.
struct Instance {
    /// The bound method `instance.call`.
    call: Py<PyAny>,
    /// The instance itself (kept for `cleanup`).
    obj: Py<PyAny>,
    /// The instance's `batch_size`: > 0 means `call` takes a list.
    batch_form: bool,
    carry: Carry,
    out: Output,
}

impl Instance {
    fn new(obj: Bound<'_, PyAny>, carry: Carry, out: Output) -> PyResult<Self> {
        let call = obj.getattr("call")?.unbind();
        let batch_size: usize = match obj.getattr("batch_size") {
            Ok(b) if !b.is_none() => b.extract()?,
            _ => 0,
        };
        Ok(Instance {
            call,
            obj: obj.unbind(),
            batch_form: batch_size > 0,
            carry,
            out,
        })
    }

    /// The result a worker returned, as a value of the flow (pickled at once
    /// in a worker process, where it is about to cross the socket).
    fn output(&self, y: Bound<'_, PyAny>) -> PyResult<PyValue> {
        match (self.carry, self.out) {
            (Carry::Pickle, _) => Ok(PyValue::Pickled(Arc::new(Pickle::dumps(&y)?))),
            (Carry::Object, Output::Object) => Ok(PyValue::from_obj(y)),
            (Carry::Object, Output::ObjectAndPickle) => Ok(PyValue::from_obj_pickled(y)),
            (Carry::Object, Output::Pickle) => Ok(PyValue::pickled_only(y)),
        }
    }

    fn call_one(&self, x: PyValue) -> Result<PyValue, WorkerError> {
        Python::attach(|py| {
            let r = (|| {
                let x = x.to_py(py)?;
                let call = self.call.bind(py);
                if self.batch_form {
                    let ys = call.call1((PyList::new(py, [x])?,))?;
                    let y = ys.get_item(0)?;
                    self.output(y)
                } else {
                    self.output(call.call1((x,))?)
                }
            })();
            r.map_err(|e| errors::worker_error(py, e, self.carry))
        })
    }

    fn call_many(&self, batch: Vec<PyValue>) -> Vec<Result<PyValue, WorkerError>> {
        if !self.batch_form {
            return batch.into_iter().map(|x| self.call_one(x)).collect();
        }
        let n = batch.len();
        Python::attach(|py| {
            let r = (|| -> PyResult<Vec<Result<PyValue, WorkerError>>> {
                let xs = PyList::empty(py);
                for x in &batch {
                    xs.append(x.to_py(py)?)?;
                }
                let ys = self.call.bind(py).call1((xs,))?;
                let ys = ys.cast::<PySequence>()?;
                let len = ys.len()?;
                if len != n {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "call() returned {len} results for a batch of {n} items"
                    )));
                }
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(
                        ys.get_item(i)
                            .and_then(|y| self.output(y))
                            .map_err(|e| errors::worker_error(py, e, self.carry)),
                    );
                }
                Ok(out)
            })();
            match r {
                Ok(v) => v,
                Err(e) => {
                    let e = errors::worker_error(py, e, self.carry);
                    (0..n).map(|_| Err(e.clone())).collect()
                }
            }
        })
    }

    fn cleanup(&self) {
        Python::attach(|py| {
            let obj = self.obj.bind(py);
            if let Ok(f) = obj.getattr("cleanup")
                && let Err(e) = f.call0()
            {
                e.print(py);
            }
        });
    }
}

/// A worker's instance once made in its thread or process (empty before
/// `init` and after `cleanup`): the part of [`PyThreadWorker`] and
/// [`PyProcessWorker`] that is the same.
#[derive(Clone, Default)]
struct Slot(Option<Arc<Instance>>);

impl Slot {
    /// Makes the instance with `make` (under the GIL).
    fn init(
        &mut self,
        carry: Carry,
        out: Output,
        make: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>>,
    ) -> Result<(), WorkerError> {
        Python::attach(
            |py| match make(py).and_then(|obj| Instance::new(obj, carry, out)) {
                Ok(inst) => {
                    self.0 = Some(Arc::new(inst));
                    Ok(())
                }
                Err(e) => Err(errors::worker_error(py, e, carry)),
            },
        )
    }

    fn call(&self, x: PyValue) -> Result<PyValue, WorkerError> {
        match &self.0 {
            Some(inst) => inst.call_one(x),
            None => Err(WorkerError::msg("worker not initialised")),
        }
    }

    fn call_batch(&self, batch: Vec<PyValue>) -> Vec<Result<PyValue, WorkerError>> {
        match &self.0 {
            Some(inst) => inst.call_many(batch),
            None => batch
                .iter()
                .map(|_| Err(WorkerError::msg("worker not initialised")))
                .collect(),
        }
    }

    fn cleanup(&mut self) {
        if let Some(inst) = self.0.take() {
            inst.cleanup();
        }
    }
}

/// A Python worker class run in threads of the server process.
pub struct PyThreadWorker {
    cls: Arc<Py<PyAny>>,
    kwargs: Arc<Py<PyDict>>,
    inst: Slot,
    out: Output,
    /// The worker thread's Python thread state, made once in `init` (see
    /// [`KeptThreadState`]).
    kept: Option<KeptThreadState>,
}

impl Clone for PyThreadWorker {
    /// A copy for another thread: the instance is shared, the thread state
    /// is not (each thread makes its own in `init`).
    fn clone(&self) -> Self {
        PyThreadWorker {
            cls: self.cls.clone(),
            kwargs: self.kwargs.clone(),
            inst: self.inst.clone(),
            out: self.out,
            kept: None,
        }
    }
}

impl PyThreadWorker {
    /// A worker of class `cls`, instantiated in its thread with `kwargs`,
    /// its results made into `out`.
    pub fn new(cls: Bound<'_, PyAny>, kwargs: Bound<'_, PyDict>, out: Output) -> Self {
        PyThreadWorker {
            cls: Arc::new(cls.unbind()),
            kwargs: Arc::new(kwargs.unbind()),
            inst: Slot::default(),
            out,
            kept: None,
        }
    }
}

impl Worker for PyThreadWorker {
    type Input = PyValue;
    type Output = PyValue;

    fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
        // Before any attach on this thread (none is live here).
        self.kept = KeptThreadState::keep();
        let (cls, kwargs) = (&self.cls, &self.kwargs);
        self.inst.init(Carry::Object, self.out, |py| {
            errors::helpers(py)?.call_method1(
                "_make_worker",
                (cls.bind(py), kwargs.bind(py), ctx.worker_index()),
            )
        })
    }

    fn call(&mut self, x: PyValue) -> Result<PyValue, WorkerError> {
        self.inst.call(x)
    }

    fn call_batch(&mut self, batch: Vec<PyValue>) -> Vec<Result<PyValue, WorkerError>> {
        self.inst.call_batch(batch)
    }

    fn cleanup(&mut self) {
        self.inst.cleanup();
        self.kept = None;
    }
}

/// A Python worker class run in worker processes: the class and its keyword
/// arguments pickled, with the parent's `multiprocessing` preparation data
/// (so that classes defined in the main script are found, as with the
/// `spawn` start method).
#[derive(Serialize, Deserialize)]
pub struct PyProcessWorker {
    /// `pickle.dumps(multiprocessing.spawn.get_preparation_data(name))`.
    prep: Vec<u8>,
    /// `pickle.dumps((worker_cls, init_kwargs))`.
    payload: Vec<u8>,
    #[serde(skip)]
    inst: Slot,
}

impl PyProcessWorker {
    /// A worker from the parent's pickles.
    pub fn new(prep: Vec<u8>, payload: Vec<u8>) -> Self {
        PyProcessWorker {
            prep,
            payload,
            inst: Slot::default(),
        }
    }
}

impl Worker for PyProcessWorker {
    type Input = PyValue;
    type Output = PyValue;

    fn init(&mut self, ctx: &WorkerContext) -> Result<(), WorkerError> {
        let (prep, payload) = (&self.prep, &self.payload);
        self.inst.init(Carry::Pickle, Output::Pickle, |py| {
            errors::helpers(py)?.call_method1(
                "_load_worker",
                (
                    PyBytes::new(py, prep),
                    PyBytes::new(py, payload),
                    ctx.worker_index(),
                ),
            )
        })
    }

    fn call(&mut self, x: PyValue) -> Result<PyValue, WorkerError> {
        self.inst.call(x)
    }

    fn call_batch(&mut self, batch: Vec<PyValue>) -> Vec<Result<PyValue, WorkerError>> {
        self.inst.call_batch(batch)
    }

    fn cleanup(&mut self) {
        self.inst.cleanup();
    }
}
