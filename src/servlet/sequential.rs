//! [`SequentialServlet`]: stages in order, each output feeding the next.

use crate::error::StartError;
use crate::metrics::ServletNode;
use crate::servlet::Servlet;
use crate::servlet::plumbing::{SinkRef, StartContext, Started};

/// Two servlets in sequence; chain more with [`then`](SequentialServlet::then)
/// or build any length with the [`sequential!`](crate::sequential) macro.
///
/// A stage whose input type differs from the previous stage's output does not
/// compile. An item that fails in one stage skips the later stages.
///
/// ```
/// use mpserver::{sequential, worker_fn, Server, ThreadServlet};
///
/// let flow = sequential![
///     ThreadServlet::new(worker_fn(|x: i32| x + 1)),
///     ThreadServlet::new(worker_fn(|x: i32| x * 10)),
///     ThreadServlet::new(worker_fn(|x: i32| format!("<{x}>"))),
/// ];
/// let server = Server::start(flow).unwrap();
/// assert_eq!(server.call(4).unwrap(), "<50>");
/// ```
///
/// Stages that do not line up are a compile error:
///
/// ```compile_fail
/// use mpserver::{sequential, worker_fn, ThreadServlet};
///
/// let flow = sequential![
///     ThreadServlet::new(worker_fn(|x: i32| x + 1)),
///     ThreadServlet::new(worker_fn(|s: String| s.len())), // takes String, gets i32
/// ];
/// ```
pub struct SequentialServlet<A, B> {
    first: A,
    second: B,
}

/// The seed's short alias.
pub type Sequential<A, B> = SequentialServlet<A, B>;

impl<A, B> SequentialServlet<A, B>
where
    A: Servlet,
    B: Servlet<Input = A::Output>,
{
    /// `first`, then `second`.
    pub fn new(first: A, second: B) -> Self {
        SequentialServlet { first, second }
    }

    /// Appends a stage.
    pub fn then<C: Servlet<Input = B::Output>>(self, next: C) -> SequentialServlet<Self, C> {
        SequentialServlet::new(self, next)
    }
}

impl<A, B> Servlet for SequentialServlet<A, B>
where
    A: Servlet,
    B: Servlet<Input = A::Output>,
{
    type Input = A::Input;
    type Output = B::Output;

    fn start(
        self: Box<Self>,
        output: SinkRef<B::Output>,
        ctx: &mut StartContext,
    ) -> Result<Started<A::Input>, StartError> {
        let SequentialServlet { first, second } = *self;
        // Wire back to front: the second stage's input is the first's output.
        let b = Box::new(second).start(output, ctx)?;
        let a = Box::new(first).start(b.input, ctx)?;
        let mut node = ServletNode::new("sequential", "sequential");
        for part in [a.node, b.node] {
            if part.kind == "sequential" {
                node.members.extend(part.members);
            } else {
                node = node.with_member(part);
            }
        }
        Ok(Started {
            input: a.input,
            node,
        })
    }
}

/// Builds a [`SequentialServlet`] of any length: `sequential![a, b, c]`.
#[macro_export]
macro_rules! sequential {
    ($first:expr, $second:expr $(, $rest:expr)* $(,)?) => {{
        let s = $crate::SequentialServlet::new($first, $second);
        $( let s = s.then($rest); )*
        s
    }};
}

impl<A: std::fmt::Debug, B: std::fmt::Debug> std::fmt::Debug for SequentialServlet<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequentialServlet")
            .field("first", &self.first)
            .field("second", &self.second)
            .finish()
    }
}
