//! [`PassThrough`]: a servlet that returns its input, at no cost.

use std::marker::PhantomData;

use crate::error::StartError;
use crate::metrics::ServletNode;
use crate::servlet::Servlet;
use crate::servlet::plumbing::{SinkRef, StartContext, Started};

/// Returns its input unchanged. Useful in an ensemble to keep the original
/// input beside the members' results. It runs no worker: its input sink is its
/// output sink.
///
/// ```
/// use mpserver::{ensemble, worker_fn, PassThrough, Server, ThreadServlet};
///
/// let flow = ensemble![
///     PassThrough::<i32>::new(),
///     ThreadServlet::new(worker_fn(|x: i32| x * x)),
/// ];
/// let server = Server::start(flow).unwrap();
/// assert_eq!(server.call(3).unwrap(), vec![3, 9]);
/// ```
pub struct PassThrough<T>(PhantomData<fn(T) -> T>);

impl<T> PassThrough<T> {
    /// A pass-through for values of type `T`.
    pub fn new() -> Self {
        PassThrough(PhantomData)
    }
}

impl<T> Default for PassThrough<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> Servlet for PassThrough<T> {
    type Input = T;
    type Output = T;
    fn start(
        self: Box<Self>,
        output: SinkRef<T>,
        _ctx: &mut StartContext,
    ) -> Result<Started<T>, StartError> {
        Ok(Started {
            input: output,
            node: ServletNode::new("passthrough", "PassThrough"),
        })
    }
}

impl<T> std::fmt::Debug for PassThrough<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassThrough")
    }
}
