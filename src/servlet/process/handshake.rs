//! Starting a worker process, the server's side: spawn it (`spawn.rs`:
//! bootstrap, HELLO and its answer), send CONFIG, wait for READY or
//! INIT_FAILED, then set up its connection (ledger, send side, reader
//! thread). The worker's side of the CONFIG exchange is at the top of
//! `child.rs` (`serve`).

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::child::ChildConfig;
use super::connection::{Port, SendSide, Writer, send_all};
use super::ledger::Ledger;
use super::reader::{Event, ReadPort, ReadSide};
use super::restart::describe;
use super::shared::Shared;
use super::spawn::{self, ProcHandle};
use crate::affinity::CpuAffinity;
use crate::error::{StartError, WorkerId};
use crate::ipc::frame::{FrameBuf, kind};
use crate::ipc::reader::FrameReader;
use crate::ipc::shm::{self, SlotPool};
use crate::metrics::WorkerStatus;
use crate::servlet::plumbing::ChildRegistry;
use crate::servlet::plumbing::SinkRef;
use crate::worker::{Worker, WorkerError};

/// A running worker process, as its supervisor holds it.
pub(super) struct Proc {
    pub(super) child: ProcHandle,
    pub(super) pid: u32,
    pub(super) sock: UnixStream,
    pub(super) port: Arc<Port>,
    pub(super) events: Receiver<Event>,
    pub(super) reader: Option<JoinHandle<()>>,
}

/// Starts worker process `index` of a servlet: spawned, configured, ready,
/// with its reader thread running.
pub(super) fn start<W>(
    shared: &Shared<W>,
    index: usize,
    cpus: &CpuAffinity,
    out: &SinkRef<W::Output>,
    status: &Arc<WorkerStatus>,
) -> Result<Proc, StartError>
where
    W: Worker + DeserializeOwned,
    W::Input: Serialize + DeserializeOwned,
    W::Output: Serialize + DeserializeOwned,
{
    let worker_id = |pid: Option<u32>| WorkerId {
        name: shared.name.clone(),
        index,
        pid,
    };
    let spawn_err = |message: String| StartError::Spawn {
        worker: worker_id(None),
        message,
    };
    let who = spawn::WorkerSpawn {
        index,
        name: shared.name.clone(),
        cpus: cpus.clone(),
    };
    let target = spawn::Target::of::<W>();
    let (mut child, sock) = spawn::spawn(&shared.spawn, &target, &who, &shared.registry)
        .map_err(|e| spawn_err(e.to_string()))?;
    let pid = child.id();
    // The process's shared memory, if the servlet uses it: a region made
    // for this process alone, dropped with its connection.
    let shm = match shared.shm {
        Some(s) => match SlotPool::counted(
            s.slots,
            s.slot_size,
            s.threshold,
            Some(status.shm_slots_in_use.clone()),
        ) {
            Ok(pool) => Some(pool),
            Err(e) => {
                spawn::discard(child.as_mut(), &shared.registry);
                return Err(spawn_err(format!("shared memory: {e}")));
            }
        },
        None => None,
    };
    let config = ChildConfig {
        shm: shm.as_ref().map(|p| p.config()),
        index,
        name: shared.name.clone(),
        cpus: cpus.clone(),
        max_frame: shared.max_frame,
        codec: shared.codec,
        recycle_after_items: shared.recycle_after_items,
        recycle_above_rss: shared.recycle_above_rss,
        worker: shared.worker_bytes.clone(),
    };
    let reader = configure(
        &mut child,
        &sock,
        &config,
        shm.as_ref().map(|p| p.region().fd()),
        &shared.registry,
        shared.max_frame,
        worker_id,
    )?;
    let fail = |child: &mut ProcHandle, message: String| {
        spawn::discard(child.as_mut(), &shared.registry);
        spawn_err(message)
    };
    let ledger = Arc::new(Ledger::new(shared.policy.batched()));
    let writer: Writer = match sock.try_clone() {
        Ok(sock) => Arc::new(Mutex::new(SendSide {
            sock,
            next_id: 0,
            quota: shared.recycle_after_items.unwrap_or(u64::MAX),
            direct: false,
        })),
        Err(e) => return Err(fail(&mut child, e.to_string())),
    };
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
    let side = ReadSide {
        reader,
        ledger: ledger.clone(),
        writer: writer.clone(),
        stats: shared.stats.clone(),
        status: status.clone(),
        id: worker_id(Some(pid)),
        codec: shared.codec,
        events: ev_tx.clone(),
        shm: shm.clone(),
        taken: Vec::new(),
    };
    let read = match ReadPort::<W::Output>::new(side, out.clone()) {
        Ok(r) => r,
        Err(e) => return Err(fail(&mut child, e.to_string())),
    };
    let thread_read = read.clone();
    let thread_shm = shm.clone();
    let handle = std::thread::Builder::new()
        .name(format!("{}#{}-reader", shared.name, index))
        .spawn(move || {
            let end = thread_read.run_thread();
            // The connection ended: its region is never used again (a
            // restarted process gets a new one), so its slots are free.
            if let Some(pool) = thread_shm {
                pool.close();
            }
            let _ = ev_tx.send(Event::Dead(end));
        });
    let handle = match handle {
        Ok(h) => h,
        Err(e) => return Err(fail(&mut child, e.to_string())),
    };
    Ok(Proc {
        child,
        pid,
        sock,
        port: Arc::new(Port {
            writer,
            ledger,
            read: Arc::new(read),
            shm,
        }),
        events: ev_rx,
        reader: Some(handle),
    })
}

/// Sends the worker its configuration and waits until it is ready. On
/// failure the process is killed and reaped (and leaves the registry).
pub(super) fn configure(
    child: &mut ProcHandle,
    sock: &UnixStream,
    config: &ChildConfig,
    shm_fd: Option<BorrowedFd<'_>>,
    registry: &ChildRegistry,
    max_frame: usize,
    who: impl Fn(Option<u32>) -> WorkerId,
) -> Result<FrameReader<UnixStream>, StartError> {
    let pid = child.id();
    let spawn_err = |message: String| StartError::Spawn {
        worker: who(None),
        message,
    };
    let fail = |child: &mut ProcHandle, e: StartError| {
        spawn::discard(child.as_mut(), registry);
        e
    };
    let body = match postcard::to_stdvec(config) {
        Ok(b) => b,
        Err(e) => return Err(fail(child, spawn_err(e.to_string()))),
    };
    let mut frame_bytes = FrameBuf::new();
    frame_bytes.frame(kind::CONFIG, &body);
    // The region's descriptor goes with the CONFIG frame (`SCM_RIGHTS`).
    let sent = match shm_fd {
        Some(fd) => shm::send_with_fd(sock, frame_bytes.as_bytes(), fd),
        None => send_all(sock, frame_bytes.as_bytes()).map_err(|e| e.error),
    };
    if let Err(e) = sent {
        return Err(fail(child, spawn_err(format!("handshake: {e}"))));
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
