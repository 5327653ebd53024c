//! The names a user of the library needs in scope: `use mpserver::prelude::*;`.

pub use crate::error::{Error, WorkerError};
pub use crate::server::{CallOptions, Server, StreamOptions};
pub use crate::servlet::{
    EnsembleServlet, PassThrough, ProcessServlet, SequentialServlet, Servlet, SwitchServlet,
    ThreadServlet,
};
pub use crate::worker::{Worker, WorkerContext, try_worker_fn, worker_fn};
pub use crate::{Batching, Bytes, CpuAffinity, ensemble, sequential};
