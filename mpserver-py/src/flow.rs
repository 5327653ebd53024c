//! Building the engine's servlet tree from the Python servlet specs.
//!
//! Each Python servlet object describes itself with `_spec()`, a tuple:
//!
//! * `("thread", worker_cls, init_kwargs, num_threads, name, batch_size, batch_wait_time)`
//! * `("process", prep, payload, cpus, name, batch_size, batch_wait_time, options)`
//! * `("sequential", [spec, ...])`
//! * `("ensemble", [spec, ...], fail_fast)`
//! * `("switch", switch_obj, [spec, ...])`
//!
//! Every servlet takes and gives [`PyValue`]s. Ensembles are the engine's
//! (their output, a list per item, becomes a [`PyValue::List`] without the
//! GIL); the switch calls the Python object's `switch(x)` method.

use std::sync::Arc;
use std::time::Instant;

use mpserver::error::{StartError, WorkerId};
use mpserver::servlet::plumbing::{Sink, SinkRef, StartContext, Started, TicketRef};
use mpserver::{EnsembleServlet, Error, SequentialServlet, Servlet, SwitchServlet, ThreadServlet};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors::{self, Carry};
use crate::spec::{PyServlet, seconds};
use crate::value::{Failed, PyValue};
use crate::worker::{Output, PyThreadWorker};

/// What the server needs to know about the flow besides the servlet tree.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowInfo {
    /// Items entering the flow go (also) to a process stage first, so their
    /// pickle is made on the caller's thread (which holds the GIL anyway).
    pub entry_pickles: bool,
    /// Items entering the flow go to process stages only: a blocking call
    /// keeps only the pickle of its input (no Python object to release
    /// later, when the engine is done with the item and the GIL is not held).
    pub entry_process_only: bool,
}

/// Whether a spec's entry stage pickles its input.
fn entry_pickles(spec: &Bound<'_, PyAny>) -> PyResult<bool> {
    let t = spec.cast::<PyTuple>()?;
    let kind: String = t.get_item(0)?.extract()?;
    Ok(match kind.as_str() {
        "process" => true,
        "sequential" => match t.get_item(1)?.cast::<PyList>()?.iter().next() {
            Some(first) => entry_pickles(&first)?,
            None => false,
        },
        "ensemble" => any_entry_pickles(&t.get_item(1)?)?,
        "switch" => any_entry_pickles(&t.get_item(2)?)?,
        _ => false,
    })
}

/// Whether every entry stage of a spec is a process stage.
fn entry_process_only(spec: &Bound<'_, PyAny>) -> PyResult<bool> {
    let t = spec.cast::<PyTuple>()?;
    let kind: String = t.get_item(0)?.extract()?;
    let all = |list: Bound<'_, PyAny>| -> PyResult<bool> {
        let list = list.cast_into::<PyList>()?;
        if list.is_empty() {
            return Ok(false);
        }
        for s in list.iter() {
            if !entry_process_only(&s)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    Ok(match kind.as_str() {
        "process" => true,
        "sequential" => match t.get_item(1)?.cast::<PyList>()?.iter().next() {
            Some(first) => entry_process_only(&first)?,
            None => false,
        },
        "ensemble" => all(t.get_item(1)?)?,
        // The switch itself calls Python with the item.
        _ => false,
    })
}

fn any_entry_pickles(list: &Bound<'_, PyAny>) -> PyResult<bool> {
    for s in list.cast::<PyList>()?.iter() {
        if entry_pickles(&s)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Builds the servlet tree of the whole flow.
pub fn build_flow(spec: &Bound<'_, PyAny>) -> PyResult<(PyServlet, FlowInfo)> {
    let info = FlowInfo {
        entry_pickles: entry_pickles(spec)?,
        entry_process_only: entry_process_only(spec)?,
    };
    let servlet = build(spec, Output::Object)?;
    Ok((servlet, info))
}

/// What the results of a stage followed by `next` are to become: pickled
/// at once by a thread worker (which holds the GIL anyway) when `next`
/// pickles its input, so the engine's threads that send them to a worker
/// process need not take the GIL; only the pickle when `next` is process
/// stages only.
fn output_for(next: &Bound<'_, PyAny>) -> PyResult<Output> {
    Ok(if entry_process_only(next)? {
        Output::Pickle
    } else if entry_pickles(next)? {
        Output::ObjectAndPickle
    } else {
        Output::Object
    })
}

/// Builds the servlet tree of a spec whose results become `out` (see
/// `output_for`; [`Output::Object`] where they go to the caller).
pub fn build(spec: &Bound<'_, PyAny>, out: Output) -> PyResult<PyServlet> {
    let t = spec.cast::<PyTuple>()?;
    let kind: String = t.get_item(0)?.extract()?;
    match kind.as_str() {
        "thread" => thread(t, out),
        "process" => crate::process::build(t),
        "sequential" => {
            let specs = t.get_item(1)?.cast_into::<PyList>()?;
            let mut members = Vec::with_capacity(specs.len());
            for (i, m) in specs.iter().enumerate() {
                let next = match specs.get_item(i + 1) {
                    Ok(n) => output_for(&n)?,
                    Err(_) => out,
                };
                members.push(build(&m, next)?);
            }
            let mut it = members.into_iter();
            let first = it
                .next()
                .ok_or_else(|| PyValueError::new_err("SequentialServlet needs a member"))?;
            Ok(it.fold(first, |acc, s| {
                Box::new(SequentialServlet::new(acc, s)) as PyServlet
            }))
        }
        "ensemble" => {
            // Members' results are gathered into the ensemble's list.
            let members = members(&t.get_item(1)?, Output::Object)?;
            let fail_fast: bool = t.get_item(2)?.extract()?;
            let mut e = EnsembleServlet::new();
            for m in members {
                e = e.member(m);
            }
            if fail_fast {
                Ok(Box::new(MapOut::new(e, PyValue::List)))
            } else {
                Ok(Box::new(MapOut::new(
                    e.collect_errors(),
                    |rs: Vec<Result<PyValue, Error>>| {
                        PyValue::List(
                            rs.into_iter()
                                .map(|r| {
                                    r.unwrap_or_else(|e| PyValue::Failed(Arc::new(Failed::new(e))))
                                })
                                .collect(),
                        )
                    },
                )))
            }
        }
        "switch" => {
            let obj = t.get_item(1)?;
            let name = obj
                .get_type()
                .qualname()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "SwitchServlet".into());
            let obj = obj.unbind();
            let members = members(&t.get_item(2)?, out)?;
            let n = members.len();
            let picker_name = format!("{name}.switch");
            let mut s = SwitchServlet::try_new(move |x: &PyValue| pick(&obj, &picker_name, n, x))
                .name(name);
            for m in members {
                s = s.member(m);
            }
            Ok(Box::new(s))
        }
        other => Err(PyValueError::new_err(format!(
            "unknown servlet kind {other:?}"
        ))),
    }
}

fn members(list: &Bound<'_, PyAny>, out: Output) -> PyResult<Vec<PyServlet>> {
    let list = list.cast::<PyList>()?;
    list.iter().map(|s| build(&s, out)).collect()
}

fn thread(t: &Bound<'_, PyTuple>, out: Output) -> PyResult<PyServlet> {
    let cls = t.get_item(1)?;
    let kwargs = t.get_item(2)?.cast_into::<PyDict>()?;
    let n: usize = t.get_item(3)?.extract()?;
    let name: String = t.get_item(4)?.extract()?;
    let batch_size: usize = t.get_item(5)?.extract()?;
    let wait = seconds(&t.get_item(6)?)?;
    let mut s = ThreadServlet::new(PyThreadWorker::new(cls, kwargs, out))
        .workers(n.max(1))
        .name(name)
        .batch_size(batch_size);
    if let Some(w) = wait {
        s = s.batch_wait_time(w);
    }
    Ok(Box::new(s))
}

/// A servlet whose output goes through a function (no thread of its own).
pub struct MapOut<S: Servlet, F> {
    inner: S,
    f: Arc<F>,
}

impl<S: Servlet, F> MapOut<S, F>
where
    F: Fn(S::Output) -> PyValue + Send + Sync + 'static,
{
    fn new(inner: S, f: F) -> Self {
        MapOut {
            inner,
            f: Arc::new(f),
        }
    }
}

struct MapSink<T, F> {
    out: SinkRef<PyValue>,
    f: Arc<F>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static, F> Sink<T> for MapSink<T, F>
where
    F: Fn(T) -> PyValue + Send + Sync + 'static,
{
    fn push(&self, ticket: TicketRef, value: T) {
        self.out.push(ticket, (self.f)(value));
    }
    fn push_until(&self, ticket: TicketRef, value: T, deadline: Instant) -> bool {
        self.out.push_until(ticket, (self.f)(value), deadline)
    }
    fn fail(&self, ticket: TicketRef, error: Error) {
        self.out.fail(ticket, error);
    }
}

impl<S, F> Servlet for MapOut<S, F>
where
    S: Servlet,
    F: Fn(S::Output) -> PyValue + Send + Sync + 'static,
{
    type Input = S::Input;
    type Output = PyValue;
    fn start(
        self: Box<Self>,
        output: SinkRef<PyValue>,
        ctx: &mut StartContext,
    ) -> Result<Started<S::Input>, StartError> {
        let MapOut { inner, f } = *self;
        let sink: SinkRef<S::Output> = Arc::new(MapSink {
            out: output,
            f,
            _t: std::marker::PhantomData,
        });
        Box::new(inner).start(sink, ctx)
    }
}

/// The member the Python object's `switch(x)` picks for `x` (the seed's
/// `SwitchServlet`). An exception in `switch` fails that item with that
/// exception; an index with no member fails it as a route error.
fn pick(obj: &Py<PyAny>, name: &str, members: usize, x: &PyValue) -> Result<usize, Error> {
    let picked = Python::attach(|py| {
        let r = (|| -> PyResult<isize> {
            let x = x.to_py(py)?;
            obj.bind(py).call_method1("switch", (x,))?.extract()
        })();
        r.map_err(|e| Error::Worker {
            worker: WorkerId {
                name: name.to_string(),
                index: 0,
                pid: None,
            },
            error: errors::worker_error(py, e, Carry::Object),
        })
    })?;
    // A negative index is no member either.
    usize::try_from(picked).map_err(|_| Error::Route { picked: 0, members })
}
