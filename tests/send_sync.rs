//! The public types that cross threads are `Send`/`Sync` as intended.

use mpserver::error::{EnsembleError, WorkerId};
use mpserver::server::{DebugInfo, Pending, ResultStream};
use mpserver::{Error, Handle, Server, WorkerError};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_types_cross_threads() {
    send_sync::<Server<i32, String>>();
    send_sync::<Handle<i32, String>>();
    send_sync::<Error>();
    send_sync::<EnsembleError>();
    send_sync::<WorkerError>();
    send_sync::<WorkerId>();
    send_sync::<DebugInfo>();
    send::<Pending<String>>();
    send::<ResultStream<std::vec::IntoIter<i32>, String>>();
    // Errors compose with the usual error plumbing.
    fn boxed(e: Error) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(e)
    }
    assert_eq!(boxed(Error::Shutdown).to_string(), "server is shut down");
}
