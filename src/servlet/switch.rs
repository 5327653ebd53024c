//! [`SwitchServlet`]: route each item to the one member a function picks.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, StartError};
use crate::metrics::ServletNode;
use crate::servlet::plumbing::{
    Push, Pushed, Sink, SinkRef, StartContext, Started, TicketRef, enter_stage,
};
use crate::servlet::{BoxServlet, Servlet};

type Picker<In> = Arc<dyn Fn(&In) -> Result<usize, Error> + Send + Sync>;

/// Sends each item to exactly one member, chosen by a function of the item.
/// Every member has the same input and output types. A pick outside the
/// members fails that item with [`Error::Route`].
///
/// ```
/// use mpserver::{worker_fn, Server, SwitchServlet, ThreadServlet};
///
/// let flow = SwitchServlet::new(|x: &i32| if *x < 0 { 0 } else { 1 })
///     .member(ThreadServlet::new(worker_fn(|x: i32| format!("negative {x}"))))
///     .member(ThreadServlet::new(worker_fn(|x: i32| format!("positive {x}"))));
/// let server = Server::start(flow).unwrap();
/// assert_eq!(server.call(-2).unwrap(), "negative -2");
/// assert_eq!(server.call(5).unwrap(), "positive 5");
/// ```
pub struct SwitchServlet<In, Out> {
    members: Vec<BoxServlet<In, Out>>,
    picker: Picker<In>,
    name: String,
}

impl<In: Send + 'static, Out: Send + 'static> SwitchServlet<In, Out> {
    /// A switch that routes by `picker` (an index into the members, in the
    /// order they are added).
    pub fn new(picker: impl Fn(&In) -> usize + Send + Sync + 'static) -> Self {
        Self::try_new(move |x| Ok(picker(x)))
    }

    /// A switch whose picker may fail an item: its error is the item's
    /// error (e.g. a picker written in another language raising).
    pub fn try_new(picker: impl Fn(&In) -> Result<usize, Error> + Send + Sync + 'static) -> Self {
        SwitchServlet {
            members: Vec::new(),
            picker: Arc::new(picker),
            name: "switch".into(),
        }
    }

    /// Names the switch in `debug_info` (default `"switch"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a member.
    pub fn member(mut self, s: impl Servlet<Input = In, Output = Out>) -> Self {
        self.members.push(Box::new(s));
        self
    }
}

struct SwitchSink<In, Out> {
    members: Vec<SinkRef<In>>,
    picker: Picker<In>,
    out: SinkRef<Out>,
}

impl<In: Send + 'static, Out: Send + 'static> SwitchSink<In, Out> {
    fn pick(&self, value: &In) -> Result<usize, Error> {
        let n = self.members.len();
        match crate::worker::panic::catch(false, || (self.picker)(value)) {
            Ok(Ok(i)) if i < n => Ok(i),
            Ok(Err(e)) => Err(e),
            Ok(Ok(i)) => Err(Error::Route {
                picked: i,
                members: n,
            }),
            Err(error) => Err(Error::Worker {
                worker: crate::error::WorkerId {
                    name: "SwitchServlet picker".into(),
                    index: 0,
                    pid: None,
                },
                error,
            }),
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Sink<In> for SwitchSink<In, Out> {
    fn push(&self, ticket: TicketRef, value: In) {
        match self.pick(&value) {
            Ok(i) => self.members[i].push(ticket, value),
            Err(e) => self.out.fail(ticket, e),
        }
    }
    fn push_until(&self, ticket: TicketRef, value: In, deadline: Instant) -> bool {
        // The item enters this stage here (`push_call`'s caller sets the
        // clock, and members entered by `push_call` do not read it again).
        enter_stage(&ticket);
        !matches!(
            self.push_call(ticket, value, deadline, Push::Stream),
            Pushed::TimedOut
        )
    }
    fn push_call(&self, ticket: TicketRef, value: In, deadline: Instant, kind: Push) -> Pushed {
        match self.pick(&value) {
            Ok(i) => self.members[i].push_call(ticket, value, deadline, kind),
            Err(e) => {
                self.out.fail(ticket, e);
                Pushed::Delivered
            }
        }
    }
    fn fail(&self, ticket: TicketRef, error: Error) {
        self.out.fail(ticket, error);
    }
}

impl<In: Send + 'static, Out: Send + 'static> Servlet for SwitchServlet<In, Out> {
    type Input = In;
    type Output = Out;
    fn start(
        self: Box<Self>,
        output: SinkRef<Out>,
        ctx: &mut StartContext,
    ) -> Result<Started<In>, StartError> {
        if self.members.is_empty() {
            return Err(StartError::Config("SwitchServlet has no members".into()));
        }
        let mut node = ServletNode::new("switch", self.name);
        let mut members = Vec::new();
        for m in self.members {
            let s = m.start(output.clone(), ctx)?;
            members.push(s.input);
            node = node.with_member(s.node);
        }
        Ok(Started {
            input: Arc::new(SwitchSink {
                members,
                picker: self.picker,
                out: output,
            }),
            node,
        })
    }
}

impl<In, Out> std::fmt::Debug for SwitchServlet<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchServlet")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}
