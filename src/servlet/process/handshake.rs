//! The server's side of a worker process's start-up, after the bootstrap
//! (`spawn.rs`, HELLO and its answer): send CONFIG, wait for READY or
//! INIT_FAILED. The worker's side of the same exchange is at the top of
//! `child.rs` (`serve`).

use std::os::unix::net::UnixStream;
use std::process::Child;

use super::child::ChildConfig;
use super::connection::send_all;
use super::registry::ChildRegistry;
use super::restart::describe;
use crate::error::{StartError, WorkerId};
use crate::ipc::frame::{FrameBuf, FrameReader, kind};
use crate::worker::WorkerError;

/// Sends the worker its configuration and waits until it is ready. On
/// failure the process is killed and reaped (and leaves the registry).
pub(super) fn configure(
    child: &mut Child,
    sock: &UnixStream,
    config: &ChildConfig,
    registry: &ChildRegistry,
    max_frame: usize,
    who: impl Fn(Option<u32>) -> WorkerId,
) -> Result<FrameReader<UnixStream>, StartError> {
    let pid = child.id();
    let spawn_err = |message: String| StartError::Spawn {
        worker: who(None),
        message,
    };
    let fail = |child: &mut Child, e: StartError| {
        registry.remove(pid);
        let _ = child.kill();
        let _ = child.wait();
        e
    };
    let body = match postcard::to_stdvec(config) {
        Ok(b) => b,
        Err(e) => return Err(fail(child, spawn_err(e.to_string()))),
    };
    let mut frame_bytes = FrameBuf::new();
    frame_bytes.frame(kind::CONFIG, &body);
    if let Err(e) = send_all(sock, frame_bytes.as_bytes()) {
        return Err(fail(child, spawn_err(format!("handshake: {}", e.error))));
    }
    let read_half = match sock.try_clone() {
        Ok(r) => r,
        Err(e) => return Err(fail(child, spawn_err(e.to_string()))),
    };
    let mut reader = FrameReader::socket(read_half, max_frame);
    let first = match reader.read_frame() {
        Ok(Some((k, body))) => Ok((k, body.to_vec())),
        Ok(None) => Err(None),
        Err(e) => Err(Some(e.to_string())),
    };
    match first {
        Ok((kind::READY, _)) => Ok(reader),
        Ok((kind::INIT_FAILED, body)) => {
            let error = postcard::from_bytes::<WorkerError>(&body).unwrap_or_else(|e| {
                WorkerError::new("CodecError", format!("undecodable init error: {e}"))
            });
            Err(fail(
                child,
                StartError::Init {
                    worker: who(Some(pid)),
                    error,
                },
            ))
        }
        Ok((k, _)) => Err(fail(child, spawn_err(format!("unexpected frame kind {k}")))),
        Err(reason) => {
            registry.remove(pid);
            let status = child.wait().ok();
            Err(spawn_err(format!(
                "exited during start-up ({})",
                describe(status, reason.as_deref())
            )))
        }
    }
}
