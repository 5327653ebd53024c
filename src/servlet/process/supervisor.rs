//! Server-side management of one worker process: feed, read, restart, reap.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::child::ChildConfig;
use super::handoff::{Door, Port};
use super::reader::{ReadPort, ReadSide, Readers};
use super::{ChildRegistry, RestartPolicy, spawn};
use crate::affinity::CpuAffinity;
use crate::batch::{self, BatchPolicy};
use crate::error::{
    CodecDirection, CodecError, Error, PoisonItem, StartError, WorkerCrashed, WorkerId,
};
use crate::ipc::Codec;
use crate::ipc::frame::{FrameBuf, FrameReader, kind};
use crate::metrics::{ServletStats, WorkerStatus};
use crate::servlet::plumbing::{SinkRef, TicketRef};
use crate::worker::{Worker, WorkerError, panic};

/// Settings and counters shared by the supervisors of one servlet.
pub(crate) struct Shared<W> {
    pub(crate) name: String,
    pub(crate) worker_bytes: Vec<u8>,
    pub(crate) policy: BatchPolicy,
    pub(crate) restart: RestartPolicy,
    pub(crate) max_inflight: usize,
    pub(crate) max_frame: usize,
    pub(crate) codec: Codec,
    pub(crate) recycle_after_items: Option<u64>,
    pub(crate) recycle_above_rss: Option<u64>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) spawn: spawn::SpawnOptions,
    pub(crate) stats: Arc<ServletStats>,
    pub(crate) healthy_workers: AtomicUsize,
    pub(crate) registry: Arc<ChildRegistry>,
    pub(crate) _worker: PhantomData<fn() -> W>,
}

/// An item held by a worker process.
pub(super) struct InFlight {
    pub(super) ticket: TicketRef,
    pub(super) crashes: u32,
    /// The encoded input, kept only when crashed items are retried.
    pub(super) bytes: Option<Vec<u8>>,
}

pub(super) type InFlightMap = Arc<Mutex<HashMap<u64, InFlight>>>;

pub(super) fn lock(m: &InFlightMap) -> MutexGuard<'_, HashMap<u64, InFlight>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Items a worker process holds, shared by its supervisor (which adds) and
/// its reader (which subtracts). The reader wakes the supervisor only when
/// it asked to be woken (`waiting`): a result costs no extra thread wake-up
/// while the worker still has credit.
///
/// The reader also measures how long the worker takes per item
/// (`service_ns`, a moving average over intervals in which the worker stayed
/// busy), so the supervisor can size the worker's credit to about
/// [`QUEUED_WORK`] of work: fast items get deep pipelining, slow items are
/// handed out one or two at a time so that no worker hoards a backlog while
/// another one idles.
#[derive(Default)]
pub(super) struct Credit {
    pub(super) count: AtomicUsize,
    pub(super) waiting: AtomicBool,
    service_ns: AtomicU64,
}

/// How much work (in time) a worker process may hold beyond the item it is on.
const QUEUED_WORK: Duration = Duration::from_millis(2);
/// Credit before the first measurement of a worker's speed.
const INITIAL_CREDIT: usize = 4;

impl Credit {
    /// The credit for a worker: at most `max`, at least `min`.
    fn limit(&self, min: usize, max: usize) -> usize {
        let s = self.service_ns.load(Relaxed);
        let want = (QUEUED_WORK.as_nanos() as u64)
            .checked_div(s)
            .map_or(INITIAL_CREDIT, |n| n as usize + 1);
        want.clamp(min.min(max), max)
    }

    pub(super) fn observe(&self, per_item: Duration) {
        let sample = (per_item.as_nanos() as u64).max(1);
        let old = self.service_ns.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.service_ns.store(new, Relaxed);
    }
}

/// The sending side of one worker process's socket. Whoever sends items
/// holds its lock for the whole send (the supervisor, or a caller handing an
/// item straight to an idle worker, see `handoff.rs`), so item ids grow in
/// the order frames go out, the recycling quota is exact, and frames stay
/// whole. The reader sends cancellations through it too, but only when the
/// lock is free: it must never wait behind a long write, or a worker blocked
/// writing results to it could deadlock with a sender blocked writing items.
pub(super) struct SendSide {
    pub(super) sock: UnixStream,
    /// The id of the next item sent to this process.
    pub(super) next_id: u64,
    /// Items this process may be sent in all (`recycle_after`), else `u64::MAX`.
    pub(super) quota: u64,
    /// Whether callers may hand items straight to this process (off for
    /// batching servlets, while crashed items are retried, and once the
    /// process is retiring or stopping).
    pub(super) direct: bool,
    /// Frame buffer for direct hand-offs.
    pub(super) buf: FrameBuf,
}

pub(super) type Writer = Arc<Mutex<SendSide>>;

pub(super) fn lock_side(w: &Writer) -> MutexGuard<'_, SendSide> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// A failed write, with how many bytes got out before it failed.
pub(super) struct WriteError {
    pub(super) written: usize,
    pub(super) error: io::Error,
}

impl WriteError {
    /// Why the worker counts as crashed.
    pub(super) fn reason(&self) -> String {
        format!("write to worker failed: {}", self.error)
    }
}

/// Writes all of `bytes` with `send(MSG_NOSIGNAL)`: a worker that died makes
/// the write fail with `EPIPE` instead of raising `SIGPIPE`, which would kill
/// a server whose binary does not ignore that signal.
pub(super) fn send_all(sock: &UnixStream, bytes: &[u8]) -> Result<(), WriteError> {
    use nix::sys::socket::{MsgFlags, send};
    let mut written = 0;
    while written < bytes.len() {
        match send(sock.as_raw_fd(), &bytes[written..], MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => {
                let error = io::ErrorKind::WriteZero.into();
                return Err(WriteError { written, error });
            }
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                let error = io::Error::from(e);
                return Err(WriteError { written, error });
            }
        }
    }
    Ok(())
}

/// Items that never reached a worker: the write failed before a single byte
/// went out, because the worker had already died. They go, as they are, to
/// the next process, and count neither as crashed nor as attempts.
struct Unsent {
    frames: Vec<u8>,
    entries: Vec<(u64, InFlight)>,
}

/// How often the supervisor looks for cancelled items held by its worker
/// while the worker is busy (the reader also looks after every result).
const CANCEL_SCAN: Duration = Duration::from_millis(10);

/// Crash history of one worker slot: back-off and health.
struct Health {
    crash_times: VecDeque<Instant>,
    backoff: Duration,
    unhealthy: bool,
}

pub(super) enum Event {
    /// The reader gave credit back (sent only while the supervisor waits).
    Credit,
    /// The worker asked to be recycled.
    Retiring,
    /// The connection ended: `None` at a clean end of stream, else why.
    Dead(Option<String>),
}

struct Proc {
    child: Child,
    pid: u32,
    sock: UnixStream,
    writer: Writer,
    credit: Arc<Credit>,
    events: Receiver<Event>,
    inflight: InFlightMap,
    /// Who reads its results (see `reader.rs`).
    read: Arc<dyn Readers>,
    reader: Option<JoinHandle<()>>,
}

impl Proc {
    fn port(&self) -> Arc<Port> {
        Arc::new(Port {
            writer: self.writer.clone(),
            inflight: self.inflight.clone(),
            credit: self.credit.clone(),
            read: self.read.clone(),
        })
    }
}

enum End {
    Drained,
    Aborted,
    Retired,
    Crashed(Option<String>),
}

/// One worker slot of a process servlet.
pub(crate) struct Supervisor<W: Worker> {
    pub(crate) shared: Arc<Shared<W>>,
    pub(crate) index: usize,
    pub(crate) cpus: CpuAffinity,
    pub(crate) rx: Receiver<(TicketRef, W::Input)>,
    pub(crate) out: SinkRef<W::Output>,
    pub(crate) status: Arc<WorkerStatus>,
    pub(crate) abort_rx: Receiver<()>,
    /// Where callers find this slot's process for direct hand-off.
    pub(crate) door: Arc<Door>,
}

fn describe(status: Option<ExitStatus>, reason: Option<&str>) -> String {
    let how = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                format!("killed by signal {sig} ({name})")
            }
            _ => "ended".to_string(),
        },
        None => "status unknown".to_string(),
    };
    match reason {
        Some(r) => format!("{r}; {how}"),
        None => how,
    }
}

impl<W> Supervisor<W>
where
    W: Worker + DeserializeOwned,
    W::Input: Serialize + DeserializeOwned,
    W::Output: Serialize + DeserializeOwned,
{
    fn worker_id(&self, pid: Option<u32>) -> WorkerId {
        WorkerId {
            name: self.shared.name.clone(),
            index: self.index,
            pid,
        }
    }

    pub(crate) fn run(self, ready: Sender<Result<(), StartError>>) {
        let mut ready = Some(ready);
        let mut retry: VecDeque<InFlight> = VecDeque::new();
        let mut health = Health {
            crash_times: VecDeque::new(),
            backoff: self.shared.restart.backoff,
            unhealthy: false,
        };
        let mut pending: Option<(TicketRef, W::Input)> = None;
        let mut unsent: Option<Unsent> = None;
        loop {
            let mut p = match self.launch() {
                Ok(p) => p,
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::warn!(worker = %self.worker_id(None), error = %e, "worker restart failed");
                    self.status.set_last_exit(format!("restart failed: {e}"));
                    let wait = self.note_crash(&mut health);
                    if !self.back_off(wait) {
                        return;
                    }
                    continue;
                }
            };
            if let Some(r) = ready.take() {
                let _ = r.send(Ok(()));
            }
            self.status.pid.store(p.pid, Relaxed);
            self.status.alive.store(true, Relaxed);
            tracing::info!(worker = %self.worker_id(Some(p.pid)), "worker process started");
            let end = self.feed(&mut p, &mut retry, &mut pending, &mut unsent, &mut health);
            self.door.close(&p.writer);
            self.status.alive.store(false, Relaxed);
            match end {
                End::Drained => {
                    self.close(p);
                    return;
                }
                End::Aborted => {
                    self.kill(p);
                    return;
                }
                End::Retired => {
                    tracing::info!(worker = %self.worker_id(Some(p.pid)), "recycling worker process");
                    self.close(p);
                    self.status.restarts.fetch_add(1, Relaxed);
                    self.shared.stats.restarts.fetch_add(1, Relaxed);
                }
                End::Crashed(reason) => {
                    let pid = p.pid;
                    let (status, lost) = self.reap_crashed(p, reason.is_some());
                    if self.aborted() {
                        // The server's forced shutdown killed it: what it
                        // held ends with a shutdown error (dropping it does
                        // that), not as a crash.
                        return;
                    }
                    let how = describe(status, reason.as_deref());
                    self.status.set_last_exit(how.clone());
                    tracing::warn!(worker = %self.worker_id(Some(pid)), %how, lost = lost.len(), "worker process crashed");
                    self.shared.stats.crashes.fetch_add(1, Relaxed);
                    // Health first, so that whoever hears of the crash sees
                    // its effect on readiness.
                    let wait = self.note_crash(&mut health);
                    let crash = WorkerCrashed {
                        worker: self.worker_id(Some(pid)),
                        how,
                    };
                    self.settle_lost(lost, crash, &mut retry);
                    if !self.back_off(wait) {
                        return;
                    }
                    self.status.restarts.fetch_add(1, Relaxed);
                    self.shared.stats.restarts.fetch_add(1, Relaxed);
                }
            }
            // Before restarting: if the servlet is shutting down and nothing is
            // left, stop here instead of starting a process only to stop it.
            if retry.is_empty() && pending.is_none() && unsent.is_none() {
                match self.rx.try_recv() {
                    Ok(item) => pending = Some(item),
                    Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => {}
                }
            }
        }
    }

    /// True once the server has started a forced shutdown.
    fn aborted(&self) -> bool {
        matches!(self.abort_rx.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Records a crash (or a failed restart): updates the worker's health and
    /// returns how long to wait before the next start. Back-off doubles from
    /// `backoff` up to `max_backoff`; more than `max_restarts` crashes within
    /// `window` mark the worker unhealthy and restart it only every
    /// `max_backoff`.
    fn note_crash(&self, h: &mut Health) -> Duration {
        let policy = &self.shared.restart;
        let now = Instant::now();
        h.crash_times.push_back(now);
        while h
            .crash_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            h.crash_times.pop_front();
        }
        if h.crash_times.len() == 1 {
            h.backoff = policy.backoff;
        }
        if h.crash_times.len() > policy.max_restarts {
            if !h.unhealthy {
                h.unhealthy = true;
                self.status.healthy.store(false, Relaxed);
                self.shared.healthy_workers.fetch_sub(1, Relaxed);
                tracing::error!(worker = %self.worker_id(None), "worker crashes too often; marked unhealthy");
            }
            h.backoff = policy.max_backoff;
        } else {
            self.recovered(h);
        }
        let wait = h.backoff;
        h.backoff = (h.backoff * 2).min(policy.max_backoff);
        wait
    }

    /// Marks an unhealthy worker healthy again.
    fn recovered(&self, h: &mut Health) {
        if h.unhealthy {
            h.unhealthy = false;
            self.status.healthy.store(true, Relaxed);
            self.shared.healthy_workers.fetch_add(1, Relaxed);
            tracing::info!(worker = %self.worker_id(None), "worker healthy again");
        }
    }

    /// Waits out a back-off; false if the server aborted meanwhile.
    fn back_off(&self, wait: Duration) -> bool {
        self.status.set_backoff(Some(wait));
        if wait > Duration::from_secs(1) {
            tracing::warn!(
                worker = %self.worker_id(None),
                backoff_ms = wait.as_millis() as u64,
                last_exit = self.status.last_exit().as_deref().unwrap_or("unknown"),
                "worker in restart back-off"
            );
        }
        let go_on = !matches!(
            self.abort_rx.recv_timeout(wait),
            Ok(()) | Err(RecvTimeoutError::Disconnected)
        );
        self.status.set_backoff(None);
        go_on
    }

    fn launch(&self) -> Result<Proc, StartError> {
        let spawn_err = |message: String| StartError::Spawn {
            worker: self.worker_id(None),
            message,
        };
        let who = spawn::WorkerSpawn {
            index: self.index,
            name: self.shared.name.clone(),
            cpus: self.cpus.clone(),
        };
        let target = spawn::Target::of::<W>();
        let (mut child, sock) =
            spawn::spawn(&self.shared.spawn, &target, &who, &self.shared.registry)
                .map_err(|e| spawn_err(e.to_string()))?;
        let pid = child.id();
        let fail = |child: &mut Child, e: StartError| {
            self.shared.registry.remove(pid);
            let _ = child.kill();
            let _ = child.wait();
            e
        };
        let config = ChildConfig {
            index: self.index,
            name: self.shared.name.clone(),
            cpus: self.cpus.clone(),
            max_frame: self.shared.max_frame,
            codec: self.shared.codec,
            recycle_after_items: self.shared.recycle_after_items,
            recycle_above_rss: self.shared.recycle_above_rss,
            worker: self.shared.worker_bytes.clone(),
        };
        let body = match postcard::to_stdvec(&config) {
            Ok(b) => b,
            Err(e) => return Err(fail(&mut child, spawn_err(e.to_string()))),
        };
        let mut frame_bytes = FrameBuf::new();
        frame_bytes.frame(kind::CONFIG, &body);
        if let Err(e) = send_all(&sock, frame_bytes.as_bytes()) {
            return Err(fail(
                &mut child,
                spawn_err(format!("handshake: {}", e.error)),
            ));
        }
        let read_half = match sock.try_clone() {
            Ok(r) => r,
            Err(e) => return Err(fail(&mut child, spawn_err(e.to_string()))),
        };
        let mut reader = FrameReader::socket(read_half, self.shared.max_frame);
        let first = match reader.read_frame() {
            Ok(Some((k, body))) => Ok((k, body.to_vec())),
            Ok(None) => Err(None),
            Err(e) => Err(Some(e.to_string())),
        };
        match first {
            Ok((kind::READY, _)) => {}
            Ok((kind::INIT_FAILED, body)) => {
                let error = postcard::from_bytes::<WorkerError>(&body).unwrap_or_else(|e| {
                    WorkerError::new("CodecError", format!("undecodable init error: {e}"))
                });
                return Err(fail(
                    &mut child,
                    StartError::Init {
                        worker: self.worker_id(Some(pid)),
                        error,
                    },
                ));
            }
            Ok((k, _)) => {
                return Err(fail(
                    &mut child,
                    spawn_err(format!("unexpected frame kind {k}")),
                ));
            }
            Err(reason) => {
                self.shared.registry.remove(pid);
                let status = child.wait().ok();
                return Err(spawn_err(format!(
                    "exited during start-up ({})",
                    describe(status, reason.as_deref())
                )));
            }
        }
        let inflight: InFlightMap = Arc::default();
        let credit: Arc<Credit> = Arc::default();
        let writer: Writer = match sock.try_clone() {
            Ok(sock) => Arc::new(Mutex::new(SendSide {
                sock,
                next_id: 0,
                quota: self.shared.recycle_after_items.unwrap_or(u64::MAX),
                direct: false,
                buf: FrameBuf::new(),
            })),
            Err(e) => return Err(fail(&mut child, spawn_err(e.to_string()))),
        };
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let side = ReadSide::<W::Output> {
            reader,
            inflight: inflight.clone(),
            credit: credit.clone(),
            writer: writer.clone(),
            out: self.out.clone(),
            stats: self.shared.stats.clone(),
            status: self.status.clone(),
            id: self.worker_id(Some(pid)),
            codec: self.shared.codec,
            events: ev_tx.clone(),
        };
        let read = match ReadPort::new(side) {
            Ok(r) => r,
            Err(e) => return Err(fail(&mut child, spawn_err(e.to_string()))),
        };
        let thread_read = read.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{}#{}-reader", self.shared.name, self.index))
            .spawn(move || {
                let end = thread_read.run_thread();
                let _ = ev_tx.send(Event::Dead(end));
            });
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return Err(fail(&mut child, spawn_err(e.to_string()))),
        };
        Ok(Proc {
            child,
            pid,
            sock,
            writer,
            credit,
            events: ev_rx,
            inflight,
            read: Arc::new(read),
            reader: Some(handle),
        })
    }

    fn feed(
        &self,
        p: &mut Proc,
        retry: &mut VecDeque<InFlight>,
        pending: &mut Option<(TicketRef, W::Input)>,
        unsent: &mut Option<Unsent>,
        health: &mut Health,
    ) -> End {
        let never = crossbeam_channel::never();
        let mut buf = FrameBuf::new();
        let mut draining = false;
        let mut retiring = false;
        let min_credit = if self.shared.policy.batched() {
            self.shared.policy.size.max(2)
        } else {
            2
        };
        // With `recycle_after(n)`, a process is sent at most n items (ids
        // count every item sent), then retired once it has answered them.
        let quota = self.shared.recycle_after_items.unwrap_or(u64::MAX);
        // Items that never reached the previous process go first, as they are.
        if let Some(u) = unsent.take() {
            lock_side(&p.writer).next_id =
                u.entries.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
            if let Err(end) = self.send_unsent(p, u, unsent) {
                return end;
            }
        }
        // Callers may hand items straight to this process (see `handoff.rs`).
        self.door.open(p.port());
        let handoff = !self.shared.policy.batched();
        let mut direct = false;
        // An unhealthy worker that stays up for a whole window is healthy again.
        let mut recovery = match health.crash_times.back() {
            Some(t) if health.unhealthy => crossbeam_channel::at(*t + self.shared.restart.window),
            _ => crossbeam_channel::never(),
        };
        let scan_tick = crossbeam_channel::tick(CANCEL_SCAN);
        let no_scan = crossbeam_channel::never();
        loop {
            // Events first: a worker that died must not be sent more items.
            match p.events.try_recv() {
                Ok(ev) => {
                    if let Some(end) = self.on_event(Ok(ev), &mut retiring) {
                        return end;
                    }
                    continue;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    return End::Crashed(Some("reader stopped".into()));
                }
            }
            let max = p.credit.limit(min_credit, self.shared.max_inflight);
            {
                let mut side = lock_side(&p.writer);
                if side.next_id >= quota {
                    retiring = true;
                }
                // Direct hand-off only while this worker takes new items one
                // by one as they come: not while crashed items are retried
                // (one at a time, alone), nor once it retires or drains.
                let want = handoff && !retiring && !draining && retry.is_empty();
                if want != direct {
                    side.direct = want;
                    direct = want;
                }
            }
            let held = p.credit.count.load(SeqCst);
            if retiring && held == 0 {
                return End::Retired;
            }
            if draining && held == 0 && retry.is_empty() && pending.is_none() {
                return End::Drained;
            }
            // Crashed items go one at a time, so a poison item can only take
            // itself down.
            if !retiring
                && held == 0
                && let Some(item) = retry.pop_front()
            {
                if let Err(end) = self.send_retry(p, item, &mut buf, retry) {
                    return end;
                }
                continue;
            }
            let can_pull = retry.is_empty() && !draining && !retiring && held < max;
            // An item taken earlier that found no room (or that waited for a
            // restart) goes first.
            if can_pull && let Some(first) = pending.take() {
                match self.dispatch(p, first, &mut buf, max, unsent) {
                    Ok(back) => *pending = back,
                    Err(end) => return end,
                }
                if pending.is_none() {
                    continue;
                }
            }
            let can_pull = can_pull && pending.is_none();
            // Not pulling means waiting for the worker to give items back:
            // ask the reader to wake us, then re-check (no lost wake-up).
            let wait_credit = !can_pull;
            if wait_credit {
                p.credit.waiting.store(true, SeqCst);
                if p.credit.count.load(SeqCst) != held {
                    p.credit.waiting.store(false, SeqCst);
                    continue;
                }
            }
            let input = if can_pull { &self.rx } else { &never };
            // While the worker holds items, look for cancelled ones now and
            // then: the worker may be busy with a long item, and the reader
            // looks only when results come.
            let scan = if held > 0 { &scan_tick } else { &no_scan };
            let end = select! {
                recv(input) -> msg => match msg {
                    Ok(first) => match self.dispatch(p, first, &mut buf, max, unsent) {
                        Ok(back) => {
                            *pending = back;
                            None
                        }
                        Err(end) => Some(end),
                    },
                    Err(_) => {
                        draining = true;
                        None
                    }
                },
                recv(p.events) -> ev => self.on_event(ev.map_err(drop), &mut retiring),
                recv(scan) -> _ => {
                    match cancel_held(&p.inflight, &self.shared.stats, &p.writer, true) {
                        Ok(c) => {
                            p.credit.count.fetch_sub(c, SeqCst);
                            None
                        }
                        Err(e) => Some(End::Crashed(Some(e.reason()))),
                    }
                },
                recv(recovery) -> _ => {
                    self.recovered(health);
                    recovery = crossbeam_channel::never();
                    None
                },
                recv(self.abort_rx) -> _ => Some(End::Aborted),
            };
            if wait_credit {
                p.credit.waiting.store(false, SeqCst);
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    fn on_event(&self, ev: Result<Event, ()>, retiring: &mut bool) -> Option<End> {
        match ev {
            Ok(Event::Credit) => None,
            Ok(Event::Retiring) => {
                *retiring = true;
                None
            }
            Ok(Event::Dead(reason)) => Some(End::Crashed(reason)),
            Err(()) => Some(End::Crashed(Some("reader stopped".into()))),
        }
    }

    /// Sends items that never reached the previous process.
    fn send_unsent(&self, p: &mut Proc, u: Unsent, unsent: &mut Option<Unsent>) -> Result<(), End> {
        let ids: Vec<u64> = u.entries.iter().map(|(id, _)| *id).collect();
        let n = u.entries.len();
        let side = lock_side(&p.writer);
        lock(&p.inflight).extend(u.entries);
        p.credit.count.fetch_add(n, SeqCst);
        let written = send_all(&side.sock, &u.frames);
        drop(side);
        p.read.ensure_reader();
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(p, e, u.frames, &ids, unsent)),
        }
    }

    /// A write to the worker failed. If nothing went out, the items of the
    /// write never reached it: they are taken back and kept for the next
    /// process. Either way the worker counts as crashed.
    fn write_failed(
        &self,
        p: &mut Proc,
        e: WriteError,
        frames: Vec<u8>,
        ids: &[u64],
        unsent: &mut Option<Unsent>,
    ) -> End {
        if e.written == 0 {
            let entries: Vec<(u64, InFlight)> = {
                let mut map = lock(&p.inflight);
                ids.iter()
                    .filter_map(|id| map.remove(id).map(|x| (*id, x)))
                    .collect()
            };
            p.credit.count.fetch_sub(entries.len(), SeqCst);
            // Entries taken meanwhile were cancelled: the next worker may
            // compute them, and their results are ignored.
            if !entries.is_empty() {
                *unsent = Some(Unsent { frames, entries });
            }
        }
        End::Crashed(Some(e.reason()))
    }

    fn live(&self, ticket: &TicketRef) -> bool {
        if ticket.is_cancelled() {
            self.shared.stats.skipped.fetch_add(1, Relaxed);
            false
        } else {
            true
        }
    }

    /// Sends `first` and whatever else is ready (a batch, or up to `credit`
    /// queued items in one frame). Returns how many items went out.
    fn dispatch(
        &self,
        p: &mut Proc,
        first: (TicketRef, W::Input),
        buf: &mut FrameBuf,
        max: usize,
        unsent: &mut Option<Unsent>,
    ) -> Result<Option<(TicketRef, W::Input)>, End> {
        let stats = &self.shared.stats;
        let policy = &self.shared.policy;
        let start = Instant::now();
        // Ids are taken, and the frame written, under the send lock; the
        // credit is counted under it too, since callers may have handed the
        // worker an item since the supervisor last looked.
        let mut side = lock_side(&p.writer);
        let credit = max.saturating_sub(p.credit.count.load(SeqCst)).min(
            side.quota
                .saturating_sub(side.next_id)
                .min(usize::MAX as u64) as usize,
        );
        if credit == 0 {
            return Ok(Some(first));
        }
        let mut items = Vec::with_capacity(if policy.batched() { policy.size } else { 8 });
        stats.items_in.fetch_add(1, Relaxed);
        if self.live(&first.0) {
            items.push(first);
        }
        let keep = |(t, _): &(TicketRef, W::Input)| {
            stats.items_in.fetch_add(1, Relaxed);
            self.live(t)
        };
        if policy.batched() {
            let max = policy.size.min(credit.max(1));
            batch::fill(
                &self.rx,
                &mut items,
                max,
                batch::deadline(policy, start),
                keep,
            );
        } else {
            batch::fill(&self.rx, &mut items, credit.max(1), None, keep);
        }
        if items.is_empty() {
            return Ok(None);
        }
        let retry = self.shared.restart.retry_crashed;
        let half = self.shared.max_frame / 2;
        let mut next_id = side.next_id;
        buf.clear();
        let mut entries = Vec::with_capacity(items.len());
        let mut frame_start = buf.begin(kind::ITEMS);
        buf.put_u8(policy.batched() as u8);
        let mut count_at = buf.reserve_u32();
        let mut count = 0u32;
        let mut failed: Vec<(TicketRef, String)> = Vec::new();
        for (ticket, x) in items {
            if !policy.batched() && count > 0 && buf.len() - frame_start > half {
                buf.patch_u32(count_at, count);
                buf.end(frame_start);
                frame_start = buf.begin(kind::ITEMS);
                buf.put_u8(0);
                count_at = buf.reserve_u32();
                count = 0;
            }
            let id = next_id;
            next_id += 1;
            let mark = buf.len();
            buf.put_u64(id);
            let codec = self.shared.codec;
            // A panicking `Serialize` fails its item, not this thread.
            let encoded = buf.put_payload(|v| {
                panic::catch(|| codec.encode_into(v, &x))
                    .unwrap_or_else(|p| Err(format!("panic while serializing: {}", p.message())))
            });
            match encoded {
                Ok(()) if buf.len() - mark > half => {
                    buf.truncate(mark);
                    failed.push((
                        ticket,
                        format!(
                            "input exceeds the frame limit of {} bytes",
                            self.shared.max_frame
                        ),
                    ));
                }
                Ok(()) => {
                    let bytes = retry.then(|| buf.as_bytes()[mark + 12..].to_vec());
                    entries.push((
                        id,
                        InFlight {
                            ticket,
                            crashes: 0,
                            bytes,
                        },
                    ));
                    count += 1;
                }
                Err(e) => {
                    buf.truncate(mark);
                    failed.push((ticket, e.to_string()));
                }
            }
        }
        if policy.batched() && buf.len() - frame_start > self.shared.max_frame {
            for (_, e) in entries.drain(..) {
                failed.push((e.ticket, "batch exceeds the frame limit".into()));
            }
            count = 0;
        }
        side.next_id = next_id;
        if count == 0 && entries.is_empty() {
            buf.truncate(frame_start);
        } else {
            buf.patch_u32(count_at, count);
            buf.end(frame_start);
        }
        let n = entries.len();
        let mut outcome = Ok(None);
        if n > 0 {
            if policy.batched() {
                stats.batches.fetch_add(1, Relaxed);
                stats.batch_sizes.record(n as u64);
            }
            let ids: Vec<u64> = entries.iter().map(|(id, _)| *id).collect();
            lock(&p.inflight).extend(entries);
            p.credit.count.fetch_add(n, SeqCst);
            let written = send_all(&side.sock, buf.as_bytes());
            drop(side);
            p.read.ensure_reader();
            if let Err(e) = written {
                outcome = Err(self.write_failed(p, e, buf.as_bytes().to_vec(), &ids, unsent));
            }
        } else {
            drop(side);
        }
        // Failures are reported after the write, outside the send lock (the
        // next stage's sink runs here).
        for (ticket, message) in failed {
            stats.items_err.fetch_add(1, Relaxed);
            self.out.fail(
                ticket,
                Error::Codec(CodecError {
                    worker: self.worker_id(Some(p.pid)),
                    direction: CodecDirection::EncodeInput,
                    message,
                }),
            );
        }
        outcome
    }

    fn send_retry(
        &self,
        p: &mut Proc,
        item: InFlight,
        buf: &mut FrameBuf,
        retry: &mut VecDeque<InFlight>,
    ) -> Result<usize, End> {
        if !self.live(&item.ticket) {
            return Ok(0);
        }
        let Some(bytes) = item.bytes.as_deref() else {
            return Ok(0);
        };
        let mut side = lock_side(&p.writer);
        let id = side.next_id;
        side.next_id += 1;
        buf.clear();
        let s = buf.begin(kind::ITEMS);
        buf.put_u8(self.shared.policy.batched() as u8);
        buf.put_u32(1);
        buf.put_u64(id);
        let _ = buf.put_payload(|v| {
            v.extend_from_slice(bytes);
            Ok::<_, ()>(())
        });
        buf.end(s);
        lock(&p.inflight).insert(id, item);
        p.credit.count.fetch_add(1, SeqCst);
        let written = send_all(&side.sock, buf.as_bytes());
        drop(side);
        p.read.ensure_reader();
        if let Err(e) = written {
            if e.written == 0 {
                // It never reached the worker: not an attempt.
                if let Some(item) = lock(&p.inflight).remove(&id) {
                    p.credit.count.fetch_sub(1, SeqCst);
                    retry.push_front(item);
                }
            }
            return Err(End::Crashed(Some(e.reason())));
        }
        Ok(1)
    }

    /// Kills and reaps a crashed worker; returns its status and the items it
    /// held that got no result.
    fn reap_crashed(&self, mut p: Proc, kill: bool) -> (Option<ExitStatus>, Vec<InFlight>) {
        self.shared.registry.remove(p.pid);
        if kill || matches!(p.child.try_wait(), Ok(None)) {
            let _ = p.child.kill();
        }
        let status = p.child.wait().ok();
        let _ = p.sock.shutdown(Shutdown::Both);
        if let Some(h) = p.reader.take() {
            let _ = h.join();
        }
        let lost = lock(&p.inflight).drain().map(|(_, e)| e).collect();
        (status, lost)
    }

    fn settle_lost(
        &self,
        lost: Vec<InFlight>,
        crash: WorkerCrashed,
        retry: &mut VecDeque<InFlight>,
    ) {
        let policy = &self.shared.restart;
        for mut item in lost {
            item.crashes += 1;
            if item.ticket.is_cancelled() {
                continue;
            }
            let error = if policy.retry_crashed && item.crashes < policy.poison_threshold {
                retry.push_back(item);
                continue;
            } else if policy.retry_crashed {
                Error::PoisonItem(PoisonItem {
                    crashes: item.crashes,
                    last: crash.clone(),
                })
            } else {
                Error::WorkerCrashed(crash.clone())
            };
            self.shared.stats.items_err.fetch_add(1, Relaxed);
            self.out.fail(item.ticket, error);
        }
    }

    /// Graceful stop: end of stream to the worker, which finishes, cleans up
    /// and exits; killed if it takes longer than the grace period.
    fn close(&self, mut p: Proc) {
        let _ = p.sock.shutdown(Shutdown::Write);
        let deadline = Instant::now() + self.shared.shutdown_grace;
        loop {
            match p.events.recv_deadline(deadline) {
                Ok(Event::Dead(_)) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(worker = %self.worker_id(Some(p.pid)), "worker did not exit in time; killing it");
                    let _ = p.child.kill();
                    break;
                }
            }
        }
        self.shared.registry.remove(p.pid);
        let _ = p.child.wait();
        if let Some(h) = p.reader.take() {
            let _ = h.join();
        }
        tracing::info!(worker = %self.worker_id(Some(p.pid)), "worker process stopped");
    }

    fn kill(&self, mut p: Proc) {
        self.shared.registry.remove(p.pid);
        let _ = p.child.kill();
        let _ = p.child.wait();
        let _ = p.sock.shutdown(Shutdown::Both);
        if let Some(h) = p.reader.take() {
            let _ = h.join();
        }
        // Dropping the held items completes their requests with a shutdown error.
        lock(&p.inflight).clear();
    }
}

/// Tells the worker to skip held items whose requests were cancelled (they
/// are dropped here, which is their outcome). Returns how many.
///
/// The reader passes `wait = false`: if an item is being sent (the send lock
/// is taken), it leaves the cancellations for later rather than wait behind a
/// write that may itself wait for the reader (see [`SendSide`]).
pub(super) fn cancel_held(
    inflight: &InFlightMap,
    stats: &ServletStats,
    writer: &Writer,
    wait: bool,
) -> Result<usize, WriteError> {
    if lock(inflight).is_empty() {
        return Ok(0);
    }
    let side = if wait {
        lock_side(writer)
    } else {
        match writer.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(0),
        }
    };
    let dropped: Vec<(u64, InFlight)> = {
        let mut map = lock(inflight);
        let ids: Vec<u64> = map
            .iter()
            .filter(|(_, e)| e.ticket.is_cancelled())
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| map.remove(&id).map(|e| (id, e)))
            .collect()
    };
    if dropped.is_empty() {
        return Ok(0);
    }
    stats.skipped.fetch_add(dropped.len() as u64, Relaxed);
    let mut buf = FrameBuf::new();
    let s = buf.begin(kind::CANCEL);
    buf.put_u32(dropped.len() as u32);
    for (id, _) in &dropped {
        buf.put_u64(*id);
    }
    buf.end(s);
    let n = dropped.len();
    send_all(&side.sock, buf.as_bytes())?;
    drop(side);
    // Dropping the tickets (outside the locks) is their outcome.
    drop(dropped);
    Ok(n)
}
