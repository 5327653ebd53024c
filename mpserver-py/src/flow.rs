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
use std::time::{Duration, Instant};

use mpserver::error::{StartError, WorkerId};
use mpserver::metrics::ServletNode;
use mpserver::servlet::plumbing::{Sink, SinkRef, StartContext, Started, TicketRef};
use mpserver::{
    BoxServlet, CpuAffinity, EnsembleServlet, Error, SequentialServlet, Servlet, ThreadServlet,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors::{self, Carry};
use crate::value::{Failed, PyValue};
use crate::worker::PyThreadWorker;

/// A servlet of the Python flow.
pub type PyServlet = BoxServlet<PyValue, PyValue>;

/// What the server needs to know about the flow besides the servlet tree.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowInfo {
    /// Items entering the flow go (also) to a process stage first, so their
    /// pickle is made on the caller's thread (which holds the GIL anyway).
    pub entry_pickles: bool,
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
    };
    let servlet = build(spec)?;
    Ok((servlet, info))
}

/// Builds the servlet tree of a spec.
pub fn build(spec: &Bound<'_, PyAny>) -> PyResult<PyServlet> {
    let t = spec.cast::<PyTuple>()?;
    let kind: String = t.get_item(0)?.extract()?;
    match kind.as_str() {
        "thread" => thread(t),
        "process" => crate::process::build(t),
        "sequential" => {
            let members = members(&t.get_item(1)?)?;
            let mut it = members.into_iter();
            let first = it
                .next()
                .ok_or_else(|| PyValueError::new_err("SequentialServlet needs a member"))?;
            Ok(it.fold(first, |acc, s| {
                Box::new(SequentialServlet::new(acc, s)) as PyServlet
            }))
        }
        "ensemble" => {
            let members = members(&t.get_item(1)?)?;
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
            let obj = t.get_item(1)?.unbind();
            let name = t
                .get_item(1)?
                .get_type()
                .qualname()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "SwitchServlet".into());
            let members = members(&t.get_item(2)?)?;
            Ok(Box::new(PySwitch {
                obj: Arc::new(obj),
                name,
                members,
            }))
        }
        other => Err(PyValueError::new_err(format!(
            "unknown servlet kind {other:?}"
        ))),
    }
}

fn members(list: &Bound<'_, PyAny>) -> PyResult<Vec<PyServlet>> {
    let list = list.cast::<PyList>()?;
    list.iter().map(|s| build(&s)).collect()
}

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

fn thread(t: &Bound<'_, PyTuple>) -> PyResult<PyServlet> {
    let cls = t.get_item(1)?;
    let kwargs = t.get_item(2)?.cast_into::<PyDict>()?;
    let n: usize = t.get_item(3)?.extract()?;
    let name: String = t.get_item(4)?.extract()?;
    let batch_size: usize = t.get_item(5)?.extract()?;
    let wait = seconds(&t.get_item(6)?)?;
    let mut s = ThreadServlet::new(PyThreadWorker::new(cls, kwargs))
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

/// The seed's `SwitchServlet`: `switch(x)` of the Python object picks the
/// member for each item. An exception in `switch` fails that item with that
/// exception.
struct PySwitch {
    obj: Arc<Py<PyAny>>,
    name: String,
    members: Vec<PyServlet>,
}

struct SwitchSink {
    obj: Arc<Py<PyAny>>,
    name: String,
    members: Vec<SinkRef<PyValue>>,
    out: SinkRef<PyValue>,
}

impl SwitchSink {
    fn pick(&self, x: &PyValue) -> Result<usize, Error> {
        let n = self.members.len();
        let picked = Python::attach(|py| {
            let r = (|| -> PyResult<isize> {
                let x = x.to_py(py)?;
                self.obj.bind(py).call_method1("switch", (x,))?.extract()
            })();
            r.map_err(|e| Error::Worker {
                worker: WorkerId {
                    name: format!("{}.switch", self.name),
                    index: 0,
                    pid: None,
                },
                error: errors::worker_error(py, e, Carry::Object),
            })
        })?;
        match usize::try_from(picked) {
            Ok(i) if i < n => Ok(i),
            _ => Err(Error::Route {
                picked: picked.max(0) as usize,
                members: n,
            }),
        }
    }
}

impl Sink<PyValue> for SwitchSink {
    fn push(&self, ticket: TicketRef, value: PyValue) {
        match self.pick(&value) {
            Ok(i) => self.members[i].push(ticket, value),
            Err(e) => self.out.fail(ticket, e),
        }
    }
    fn push_until(&self, ticket: TicketRef, value: PyValue, deadline: Instant) -> bool {
        match self.pick(&value) {
            Ok(i) => self.members[i].push_until(ticket, value, deadline),
            Err(e) => {
                self.out.fail(ticket, e);
                true
            }
        }
    }
    fn fail(&self, ticket: TicketRef, error: Error) {
        self.out.fail(ticket, error);
    }
}

impl Servlet for PySwitch {
    type Input = PyValue;
    type Output = PyValue;
    fn start(
        self: Box<Self>,
        output: SinkRef<PyValue>,
        ctx: &mut StartContext,
    ) -> Result<Started<PyValue>, StartError> {
        let PySwitch { obj, name, members } = *self;
        if members.is_empty() {
            return Err(StartError::Config("SwitchServlet has no members".into()));
        }
        let mut node = ServletNode::new("switch", name.clone());
        let mut inputs = Vec::new();
        for m in members {
            let s = m.start(output.clone(), ctx)?;
            inputs.push(s.input);
            node = node.with_member(s.node);
        }
        Ok(Started {
            input: Arc::new(SwitchSink {
                obj,
                name,
                members: inputs,
                out: output,
            }),
            node,
        })
    }
}
