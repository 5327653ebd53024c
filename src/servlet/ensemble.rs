//! [`EnsembleServlet`]: every member gets the same input; results come back
//! in member order.
//!
//! Each item gets a slot that collects the members' results. With fail-fast
//! (the default) the first member error completes the item as an
//! [`EnsembleError`] at once and marks the slot failed, so the other members
//! skip the item if they have not started it. With
//! [`collect_errors`](EnsembleServlet::collect_errors) (the seed's
//! `fail_fast=False`), errors sit in their slots and only an item on which
//! every member failed is an error.

use crate::sync::lock_std;
use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{EnsembleError, Error, StartError};
use crate::metrics::ServletNode;
use crate::servlet::plumbing::{
    Push, Pushed, Sink, SinkRef, StartContext, Started, Ticket, TicketRef, enter_stage,
};
use crate::servlet::{BoxServlet, Servlet};

/// Runs every member on the same input; the output is the members' results in
/// member order. The input must be `Clone` (each member gets a copy).
///
/// ```
/// use mpserver::{ensemble, worker_fn, Server, ThreadServlet};
///
/// let flow = ensemble![
///     ThreadServlet::new(worker_fn(|x: i32| x + 1)),
///     ThreadServlet::new(worker_fn(|x: i32| x * 2)),
/// ];
/// let server = Server::start(flow).unwrap();
/// assert_eq!(server.call(10).unwrap(), vec![11, 20]);
/// ```
pub struct EnsembleServlet<In, Out> {
    members: Vec<BoxServlet<In, Out>>,
}

/// The seed's short alias.
pub type Ensemble<In, Out> = EnsembleServlet<In, Out>;

/// An ensemble that keeps member errors in their slots (the seed's
/// `fail_fast=False`); see [`EnsembleServlet::collect_errors`].
pub struct LenientEnsembleServlet<In, Out> {
    members: Vec<BoxServlet<In, Out>>,
}

impl<In: Clone + Send + 'static, Out: Send + 'static> EnsembleServlet<In, Out> {
    /// An ensemble without members yet.
    pub fn new() -> Self {
        EnsembleServlet {
            members: Vec::new(),
        }
    }

    /// Adds a member.
    pub fn member(mut self, s: impl Servlet<Input = In, Output = Out>) -> Self {
        self.members.push(Box::new(s));
        self
    }

    /// Turns fail-fast off: the output becomes `Vec<Result<Out, Error>>` with
    /// member errors in their slots; an item fails (with an
    /// [`EnsembleError`]) only when every member failed.
    ///
    /// ```
    /// use mpserver::{ensemble, try_worker_fn, worker_fn, Server, ThreadServlet, WorkerError};
    ///
    /// let flow = ensemble![
    ///     ThreadServlet::new(worker_fn(|x: i32| x)),
    ///     ThreadServlet::new(try_worker_fn(|_: i32| Err::<i32, _>(WorkerError::msg("no")))),
    /// ]
    /// .collect_errors();
    /// let server = Server::start(flow).unwrap();
    /// let out = server.call(1).unwrap();
    /// assert_eq!(*out[0].as_ref().unwrap(), 1);
    /// assert!(out[1].is_err());
    /// ```
    pub fn collect_errors(self) -> LenientEnsembleServlet<In, Out> {
        LenientEnsembleServlet {
            members: self.members,
        }
    }
}

impl<In: Clone + Send + 'static, Out: Send + 'static> Default for EnsembleServlet<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds an [`EnsembleServlet`]: `ensemble![a, b, c]`.
#[macro_export]
macro_rules! ensemble {
    ($($member:expr),+ $(,)?) => {
        $crate::EnsembleServlet::new() $( .member($member) )+
    };
}

/// How an ensemble turns its members' results into its output.
trait Mode<Out>: Send + Sync + 'static {
    type Output: Send + 'static;
    const FAIL_FAST: bool;
    /// The output from the slot's results, taken out of it (a missing one
    /// counts as [`Error::Cancelled`]).
    fn finish(results: &mut [Option<Result<Out, Error>>]) -> Result<Self::Output, EnsembleError>;
}

/// A slot's result, taken out of it.
fn take<Out>(x: &mut Option<Result<Out, Error>>) -> Result<Out, Error> {
    x.take().unwrap_or(Err(Error::Cancelled))
}

struct FailFast;
struct Lenient;

impl<Out: Send + 'static> Mode<Out> for FailFast {
    type Output = Vec<Out>;
    const FAIL_FAST: bool = true;
    fn finish(results: &mut [Option<Result<Out, Error>>]) -> Result<Vec<Out>, EnsembleError> {
        // Fail-fast reports the first error as soon as it arrives, so here all
        // results are values; keep the general path for safety. The values
        // go straight into the output (one allocation per item).
        results
            .iter_mut()
            .map(take)
            .collect::<Result<Vec<Out>, Error>>()
            .map_err(|e| EnsembleError {
                errors: vec![Some(e)],
                values: Default::default(),
            })
    }
}

impl<Out: Send + 'static> Mode<Out> for Lenient {
    type Output = Vec<Result<Out, Error>>;
    const FAIL_FAST: bool = false;
    fn finish(results: &mut [Option<Result<Out, Error>>]) -> Result<Self::Output, EnsembleError> {
        let results: Vec<Result<Out, Error>> = results.iter_mut().map(take).collect();
        if results.iter().all(Result::is_err) {
            Err(EnsembleError {
                errors: results.into_iter().map(Result::err).collect(),
                values: Default::default(),
            })
        } else {
            Ok(results)
        }
    }
}

/// One item's collection of member results.
struct Slot<Out> {
    parent: TicketRef,
    failed: AtomicBool,
    state: Mutex<SlotState<Out>>,
}

struct SlotState<Out> {
    results: Vec<Option<Result<Out, Error>>>,
    remaining: usize,
    done: bool,
}

impl<Out: Send + 'static> Ticket for Slot<Out> {
    fn is_cancelled(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.parent.is_cancelled()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn clock(&self) -> Option<&crate::metrics::StageClock> {
        self.parent.clock()
    }
}

struct EntrySink<In, Out, M: Mode<Out>> {
    members: Vec<SinkRef<In>>,
    out: SinkRef<M::Output>,
}

impl<In: Clone + Send + 'static, Out: Send + 'static, M: Mode<Out>> EntrySink<In, Out, M> {
    fn slot(&self, ticket: TicketRef) -> Arc<Slot<Out>> {
        let n = self.members.len();
        Arc::new(Slot {
            parent: ticket,
            failed: AtomicBool::new(false),
            state: Mutex::new(SlotState {
                results: (0..n).map(|_| None).collect(),
                remaining: n,
                done: false,
            }),
        })
    }
}

impl<In: Clone + Send + 'static, Out: Send + 'static, M: Mode<Out>> Sink<In>
    for EntrySink<In, Out, M>
{
    fn push(&self, ticket: TicketRef, value: In) {
        let slot = self.slot(ticket);
        // `start` refuses an ensemble without members.
        let Some((last, rest)) = self.members.split_last() else {
            return;
        };
        for m in rest {
            m.push(slot.clone(), value.clone());
        }
        last.push(slot, value);
    }

    /// A stream's push: [`push_call`](Sink::push_call) as a stream item.
    fn push_until(&self, ticket: TicketRef, value: In, deadline: Instant) -> bool {
        // The item enters this stage here (`push_call`'s caller sets the
        // clock, and members entered by `push_call` do not read it again).
        enter_stage(&ticket);
        !matches!(
            self.push_call(ticket, value, deadline, Push::Stream),
            Pushed::TimedOut
        )
    }

    /// Every member gets the call's kind; at most one claim goes back (the
    /// first member's to offer one), the others then push as single calls.
    fn push_call(&self, ticket: TicketRef, value: In, deadline: Instant, kind: Push) -> Pushed {
        let slot = self.slot(ticket);
        let Some((last, rest)) = self.members.split_last() else {
            return Pushed::Delivered;
        };
        let mut claim = None;
        let mut push = |m: &SinkRef<In>, v: In| {
            let k = if claim.is_some() && kind == Push::Waiting {
                Push::Single
            } else {
                kind
            };
            match m.push_call(slot.clone(), v, deadline, k) {
                Pushed::Delivered => true,
                Pushed::Claimed(c) => {
                    claim = Some(c);
                    true
                }
                Pushed::TimedOut => {
                    slot.failed.store(true, Ordering::Relaxed);
                    false
                }
            }
        };
        for m in rest {
            if !push(m, value.clone()) {
                return Pushed::TimedOut;
            }
        }
        if !push(last, value) {
            return Pushed::TimedOut;
        }
        claim.map_or(Pushed::Delivered, Pushed::Claimed)
    }

    fn fail(&self, ticket: TicketRef, error: Error) {
        self.out.fail(ticket, error);
    }
}

struct MemberSink<Out, M: Mode<Out>> {
    index: usize,
    out: SinkRef<M::Output>,
    _mode: PhantomData<fn() -> M>,
}

impl<Out: Send + 'static, M: Mode<Out>> MemberSink<Out, M> {
    fn record(&self, ticket: TicketRef, r: Result<Out, Error>) {
        let Some(slot) = ticket.as_any().downcast_ref::<Slot<Out>>() else {
            tracing::error!("ensemble member delivered an item of another flow; dropped");
            return;
        };
        let mut st = lock_std(&slot.state);
        if st.done {
            return;
        }
        if M::FAIL_FAST && r.is_err() {
            st.done = true;
            slot.failed.store(true, Ordering::Relaxed);
            let mut values: Vec<Option<Out>> = Vec::with_capacity(st.results.len());
            let mut errors: Vec<Option<Error>> = Vec::with_capacity(st.results.len());
            for x in st.results.iter_mut() {
                match x.take() {
                    Some(Ok(v)) => {
                        values.push(Some(v));
                        errors.push(None);
                    }
                    Some(Err(e)) => {
                        values.push(None);
                        errors.push(Some(e));
                    }
                    None => {
                        values.push(None);
                        errors.push(None);
                    }
                }
            }
            if let Err(e) = r {
                errors[self.index] = Some(e);
            }
            let parent = slot.parent.clone();
            drop(st);
            self.out.fail(
                parent,
                Error::Ensemble(EnsembleError {
                    errors,
                    values: std::sync::Mutex::new(Some(Box::new(values) as Box<dyn Any + Send>)),
                }),
            );
            return;
        }
        st.results[self.index] = Some(r);
        st.remaining -= 1;
        if st.remaining > 0 {
            return;
        }
        st.done = true;
        let mut results = std::mem::take(&mut st.results);
        let parent = slot.parent.clone();
        drop(st);
        match M::finish(&mut results) {
            Ok(v) => self.out.push(parent, v),
            Err(e) => self.out.fail(parent, Error::Ensemble(e)),
        }
    }
}

impl<Out: Send + 'static, M: Mode<Out>> Sink<Out> for MemberSink<Out, M> {
    fn push(&self, ticket: TicketRef, value: Out) {
        self.record(ticket, Ok(value));
    }
    fn fail(&self, ticket: TicketRef, error: Error) {
        self.record(ticket, Err(error));
    }
}

fn start_ensemble<In, Out, M>(
    members: Vec<BoxServlet<In, Out>>,
    output: SinkRef<M::Output>,
    ctx: &mut StartContext,
) -> Result<Started<In>, StartError>
where
    In: Clone + Send + 'static,
    Out: Send + 'static,
    M: Mode<Out>,
{
    if members.is_empty() {
        return Err(StartError::Config("EnsembleServlet has no members".into()));
    }
    let mut node = ServletNode::new(
        "ensemble",
        if M::FAIL_FAST {
            "ensemble"
        } else {
            "ensemble(collect_errors)"
        },
    );
    let mut inputs = Vec::new();
    for (index, m) in members.into_iter().enumerate() {
        let sink: SinkRef<Out> = Arc::new(MemberSink::<Out, M> {
            index,
            out: output.clone(),
            _mode: PhantomData,
        });
        let s = m.start(sink, ctx)?;
        inputs.push(s.input);
        node = node.with_member(s.node);
    }
    Ok(Started {
        input: Arc::new(EntrySink::<In, Out, M> {
            members: inputs,
            out: output,
        }),
        node,
    })
}

impl<In: Clone + Send + 'static, Out: Send + 'static> Servlet for EnsembleServlet<In, Out> {
    type Input = In;
    type Output = Vec<Out>;
    fn start(
        self: Box<Self>,
        output: SinkRef<Vec<Out>>,
        ctx: &mut StartContext,
    ) -> Result<Started<In>, StartError> {
        start_ensemble::<In, Out, FailFast>(self.members, output, ctx)
    }
}

impl<In: Clone + Send + 'static, Out: Send + 'static> Servlet for LenientEnsembleServlet<In, Out> {
    type Input = In;
    type Output = Vec<Result<Out, Error>>;
    fn start(
        self: Box<Self>,
        output: SinkRef<Vec<Result<Out, Error>>>,
        ctx: &mut StartContext,
    ) -> Result<Started<In>, StartError> {
        start_ensemble::<In, Out, Lenient>(self.members, output, ctx)
    }
}

impl<In, Out> std::fmt::Debug for EnsembleServlet<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnsembleServlet")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl<In, Out> std::fmt::Debug for LenientEnsembleServlet<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LenientEnsembleServlet")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}
