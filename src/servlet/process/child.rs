//! The worker process side: configuration, init, and the serve loop.
//!
//! One thread does everything: it reads frames when it has nothing queued (or
//! when more are already waiting: frames already buffered at once, the socket
//! checked with a zero-timeout `poll` after a slow unit or every few fast
//! ones, see `look_due`), runs the
//! worker on the oldest queued unit, and writes results back, several per
//! write when they come quickly. Cancel frames name items to skip. End of
//! stream from the server means "finish what you have, clean up, exit"; if the
//! server dies, the socket closes (or `PDEATHSIG` fires) and the process exits.

use crate::sync::lock_std;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::boot;
use super::image::{Boot, Entry};
use super::results::Results;
use super::spawn::Target;
use super::worker_log;
use crate::affinity::CpuAffinity;
use crate::error::CodecDirection;
use crate::ipc::Codec;
use crate::ipc::frame::{self, FrameBuf, Payload, kind};
use crate::ipc::reader::FrameReader;
use crate::ipc::shm::{self, Region, ShmConfig, ShmError};
use crate::worker::{Worker, WorkerContext, WorkerError, WorkerKind, panic};

/// What the server tells a worker process about itself.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildConfig {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) cpus: CpuAffinity,
    pub(crate) max_frame: usize,
    pub(crate) codec: Codec,
    pub(crate) recycle_after_items: Option<u64>,
    pub(crate) recycle_above_rss: Option<u64>,
    pub(crate) worker: Vec<u8>,
    /// The shape of the shared-memory region whose descriptor came with
    /// this frame, if the servlet uses one.
    pub(crate) shm: Option<ShmConfig>,
}

enum Unit<In> {
    Single(u64, Result<In, String>),
    Batch(Vec<(u64, Result<In, String>)>),
}

impl Target {
    /// The worker process entry for worker type `W`.
    pub(crate) fn of<W>() -> Self
    where
        W: Worker + DeserializeOwned,
        W::Input: DeserializeOwned,
        W::Output: Serialize,
    {
        Target {
            entry: child_entry::<W> as Entry,
            type_name: std::any::type_name::<W>(),
        }
    }
}

/// The entry of a re-executed worker process running `W`; never returns.
fn child_entry<W>(boot: Boot)
where
    W: Worker + DeserializeOwned,
    W::Input: DeserializeOwned,
    W::Output: Serialize,
{
    boot::accept::<W>(&boot);
    let code = match serve::<W>(boot) {
        Ok(()) => 0,
        Err(e) => {
            // The server is gone or broke the protocol; nothing to report to.
            tracing::debug!(error = %e, "worker process exits");
            71
        }
    };
    std::process::exit(code);
}

fn send_frame(w: &mut impl Write, k: u8, body: &[u8]) -> std::io::Result<()> {
    let mut b = FrameBuf::new();
    b.frame(k, body);
    w.write_all(b.as_bytes())
}

fn init_failed(w: &mut impl Write, e: &WorkerError) -> std::io::Result<()> {
    let body = postcard::to_stdvec(e).unwrap_or_default();
    send_frame(w, kind::INIT_FAILED, &body)
}

/// Worker errors and panics are logged at warn (forwarded to the server's
/// subscriber when it enables warn; see `worker_log.rs`).
fn log_error(e: &WorkerError) {
    if e.is_panic() {
        tracing::warn!(error = %e, "worker panicked");
    } else {
        tracing::warn!(error = %e, "worker call failed");
    }
}

/// What the worker process is running, for a panic that aborts the process
/// (`panic = "abort"`): the hook fails exactly that work before the abort.
/// Kept only when panics abort.
enum Running {
    Nothing,
    Init,
    Items(Vec<u64>),
}

static RUNNING: Mutex<Running> = Mutex::new(Running::Nothing);

/// Records what runs now; `now` is built only when panics abort, so the
/// serve loop pays nothing per item otherwise.
fn running(now: impl FnOnce() -> Running) {
    if cfg!(panic = "abort") {
        *lock_std(&RUNNING) = now();
    }
}

/// With `panic = "abort"`, registers what a panic does before the abort:
/// in init, an INIT_FAILED frame (the server's start fails with the panic);
/// while items run, their RESULTS (each item fails with the panic), written
/// on `link` (the serving thread is the one panicking, so no other write is
/// under way on it). Items the process held besides, and results finished
/// but not yet written, are lost with the process: they fail as crashed.
fn report_aborts(link: UnixStream, max_frame: usize, codec: Codec) {
    if !cfg!(panic = "abort") {
        return;
    }
    panic::on_abort(move |error| {
        // First stop taking input: the server's writes fail from now on, so
        // an item sent after the caller below got its error (e.g. its next
        // call, handed straight to this process) goes to the restarted
        // process instead of being lost with this one.
        let _ = link.shutdown(std::net::Shutdown::Read);
        let mut w = &link;
        let now = std::mem::replace(&mut *lock_std(&RUNNING), Running::Nothing);
        match now {
            Running::Nothing => {}
            Running::Init => {
                let _ = init_failed(&mut w, error);
            }
            Running::Items(ids) => {
                let mut results = Results::new(max_frame, codec);
                for id in ids {
                    results.err(id, error);
                }
                let _ = results.flush(&mut w);
            }
        }
    });
}

/// Whether more input is waiting. `fresh`: nothing was done since the last
/// read, so if that read got everything that was waiting, nothing is (a
/// frame that arrived in between is read after the item at hand).
fn readable(reader: &FrameReader<UnixStream>, fresh: bool) -> bool {
    if reader.buffered() > 0 {
        return true;
    }
    if fresh && reader.drained() {
        return false;
    }
    let fd = reader.get_ref().as_fd();
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Units run between two looks at the socket while items are queued.
const LOOK_EVERY: u32 = 8;
/// A unit that took this long is followed by a look at the socket.
const LOOK_AFTER: Duration = Duration::from_micros(50);

/// Whether to look for frames waiting on the socket (a `poll`) before the
/// next queued unit: after every unit that took [`LOOK_AFTER`] or more (so
/// a cancellation reaches slow items before they begin), else every
/// [`LOOK_EVERY`] units. Fast items thus cost no system call each, and a
/// cancellation that arrives while they run is seen within a few
/// microseconds of work.
fn look_due(unlooked: u32, last_spent: Duration) -> bool {
    unlooked >= LOOK_EVERY || last_spent >= LOOK_AFTER
}

/// True (and forgotten) if item `id` was cancelled. Cancellations are rare:
/// with none listed, no hashing per item.
fn is_cancelled(cancelled: &mut HashSet<u64>, id: u64) -> bool {
    !cancelled.is_empty() && cancelled.remove(&id)
}

/// Largest CONFIG frame accepted (the worker value travels in it).
fn config_limit() -> usize {
    frame::DEFAULT_MAX_FRAME
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The worker process's whole life after the handshake: configuration,
/// pinning, start hook, init, the serve loop, cleanup.
pub(crate) fn serve<W>(boot: Boot) -> Result<(), Box<dyn std::error::Error>>
where
    W: Worker + DeserializeOwned,
    W::Input: DeserializeOwned,
    W::Output: Serialize,
{
    let Boot {
        mut reader,
        mut writer,
        start_hook,
        backtraces,
        log_level,
        ..
    } = boot;
    // CONFIG comes with the shared-memory region's descriptor, if any: it
    // is read with `recvmsg`, straight from the socket (the server sends
    // nothing between HELLO and CONFIG, so nothing is buffered).
    let (config, shm_fd): (ChildConfig, _) = if reader.buffered() == 0 {
        match shm::recv_frame_with_fd(reader.get_ref(), config_limit())? {
            Some((kind::CONFIG, body, fd)) => (postcard::from_bytes(&body)?, fd),
            _ => return Err("expected a CONFIG frame".into()),
        }
    } else {
        match reader.read_frame()? {
            Some((kind::CONFIG, body)) => (postcard::from_bytes(body)?, None),
            _ => return Err("expected a CONFIG frame".into()),
        }
    };
    let region = match (config.shm, shm_fd) {
        (Some(c), Some(fd)) => Some(Arc::new(Region::open(fd, c.slots, c.slot_size)?)),
        (Some(_), None) => return Err("shared memory announced, no region received".into()),
        (None, _) => None,
    };
    // Items may be as large as the servlet allows, not the default.
    reader.set_max(config.max_frame);
    if let Err(e) = config.cpus.apply_to_current_thread() {
        init_failed(&mut writer, &WorkerError::from(e))?;
        return Ok(());
    }
    let mut worker: W = match config.codec.decode(&config.worker) {
        Ok(w) => w,
        Err(e) => {
            let e = WorkerError::new("CodecError", format!("cannot decode the worker value: {e}"));
            init_failed(&mut writer, &e)?;
            return Ok(());
        }
    };
    let ctx = WorkerContext {
        index: config.index,
        name: config.name.clone(),
        kind: WorkerKind::Process,
        cpus: config.cpus.cpus().map(<[usize]>::to_vec),
    };
    report_aborts(writer.try_clone()?, config.max_frame, config.codec);
    running(|| Running::Init);
    if let Some(hook) = start_hook
        && let Err(e) = panic::catch(backtraces, || hook(&ctx)).and_then(|r| r)
    {
        init_failed(&mut writer, &e)?;
        return Ok(());
    }
    // After the hook, which may install a subscriber of its own.
    let logs = worker_log::install(log_level);
    if let Err(e) = panic::catch(backtraces, || worker.init(&ctx)).and_then(|r| r) {
        init_failed(&mut writer, &e)?;
        return Ok(());
    }
    running(|| Running::Nothing);
    send_frame(&mut writer, kind::READY, &std::process::id().to_le_bytes())?;

    let mut queue: VecDeque<Unit<W::Input>> = VecDeque::new();
    let mut cancelled: HashSet<u64> = HashSet::new();
    // Ids grow in the order the server sends items: the largest seen so far
    // tells which cancellations are for items already done.
    let mut max_seen: Option<u64> = None;
    let mut results = Results::new(config.max_frame, config.codec);
    results.logs = logs;
    if let (Some(region), Some(c)) = (&region, config.shm) {
        results.shm = Some((region.clone(), c.threshold));
    }
    let mut eof = false;
    let mut done: u64 = 0;
    let mut retire = RetireCheck::default();
    let mut retiring = false;
    // A panicking `Deserialize` fails its item, not the worker.
    let decode = |b: &[u8]| {
        panic::catch(backtraces, || config.codec.decode::<W::Input>(b))
            .unwrap_or_else(|p| Err(format!("panic while deserializing: {}", p.message())))
    };
    // Units run since the socket was last looked at, and the last unit's
    // time: see `look_due`.
    let mut unlooked: u32 = 0;
    let mut last_spent = Duration::ZERO;
    loop {
        // Take in frames: block only when there is nothing to do. Frames
        // already read are taken at once; the socket is looked at (a
        // system call) only now and then while items are queued.
        let mut fresh = false;
        let look = look_due(unlooked, last_spent);
        if look {
            unlooked = 0;
        }
        while !eof
            && (queue.is_empty() || reader.buffered() > 0 || (look && readable(&reader, fresh)))
        {
            fresh = true;
            unlooked = 0;
            if queue.is_empty() {
                results.flush(&mut writer)?;
                // Every item received so far is done: ids still listed as
                // cancelled were finished before their cancel arrived (keep
                // only those for items yet to come).
                if !cancelled.is_empty() {
                    cancelled.retain(|id| max_seen.is_none_or(|m| *id > m));
                }
            }
            match reader.read_frame()? {
                None => eof = true,
                Some((kind::ITEMS, body)) => {
                    // Checked whole before any item is taken; the items are
                    // parsed as they are queued (no vector per frame).
                    let (batched, items) = frame::items_in(body)?;
                    // A value in shared memory is decoded from its slot,
                    // which the item keeps for its result; a `Bytes` in it
                    // is a view of the slot, not a copy (`shm::view`).
                    let lent = &mut results.lent;
                    let max_seen = &mut max_seen;
                    let decoded = items.map(|(id, p)| {
                        *max_seen = Some(max_seen.map_or(id, |m| m.max(id)));
                        let x = match p {
                            Payload::Inline(b) => decode(b),
                            Payload::Shared(d) => match &region {
                                Some(r) => match shm::decode_viewing(r, d, decode) {
                                    Ok(x) => {
                                        lent.insert(id, d);
                                        x
                                    }
                                    Err(e) => Err(e.to_string()),
                                },
                                None => Err(ShmError::NoRegion.to_string()),
                            },
                        };
                        (id, x)
                    });
                    if batched {
                        queue.push_back(Unit::Batch(decoded.collect()));
                    } else {
                        // Pushed one by one (usually one item a frame), not
                        // through `extend`'s reserving and a further adapter.
                        for (id, x) in decoded {
                            queue.push_back(Unit::Single(id, x));
                        }
                    }
                }
                Some((kind::CANCEL, body)) => cancelled.extend(frame::parse_cancel(body)?),
                Some((k, _)) => return Err(format!("unexpected frame kind {k}").into()),
            }
        }
        let Some(unit) = queue.pop_front() else {
            // End of stream and nothing left.
            results.flush(&mut writer)?;
            break;
        };
        let began = Instant::now();
        // Results of this unit not preceded by a call (skipped, undecodable)
        // are ready now.
        results.now = Some(began);
        // The clock reading after the worker's call, if it made one, and
        // the unit's time to it: it times the call and the unit, and stamps
        // the results (two readings per item, not four).
        let mut ended: Option<(Instant, Duration)> = None;
        let done_before = done;
        match unit {
            Unit::Single(id, x) => {
                if is_cancelled(&mut cancelled, id) {
                    results.skipped(id);
                    continue;
                }
                match x {
                    Err(msg) => results.codec(id, CodecDirection::DecodeInput, &msg),
                    Ok(x) => {
                        running(|| Running::Items(vec![id]));
                        let r = panic::catch(backtraces, || worker.call(x)).and_then(|r| r);
                        let now = Instant::now();
                        // The call's time is the unit's.
                        let spent = now.saturating_duration_since(began);
                        results.compute = spent;
                        results.now = Some(now);
                        ended = Some((now, spent));
                        match r {
                            Ok(y) => results.ok(id, &y),
                            Err(e) => {
                                log_error(&e);
                                results.err(id, &e);
                            }
                        }
                        running(|| Running::Nothing);
                    }
                }
                done += 1;
            }
            Unit::Batch(items) => {
                let mut ids = Vec::with_capacity(items.len());
                let mut values = Vec::with_capacity(items.len());
                for (id, x) in items {
                    if is_cancelled(&mut cancelled, id) {
                        results.skipped(id);
                        continue;
                    }
                    match x {
                        Ok(x) => {
                            ids.push(id);
                            values.push(x);
                        }
                        Err(msg) => results.codec(id, CodecDirection::DecodeInput, &msg),
                    }
                }
                if !values.is_empty() {
                    let n = values.len();
                    running(|| Running::Items(ids.clone()));
                    let called = Instant::now();
                    let r = panic::catch(backtraces, || worker.call_batch(values));
                    let now = Instant::now();
                    results.compute = now.saturating_duration_since(called);
                    results.now = Some(now);
                    ended = Some((now, now.saturating_duration_since(began)));
                    match r {
                        Ok(rs) if rs.len() == n => {
                            for (id, r) in ids.iter().zip(rs) {
                                match r {
                                    Ok(y) => results.ok(*id, &y),
                                    Err(e) => {
                                        log_error(&e);
                                        results.err(*id, &e);
                                    }
                                }
                            }
                        }
                        Ok(rs) => {
                            let e = WorkerError::new(
                                "BatchSizeMismatch",
                                format!("call_batch returned {} results for {n} items", rs.len()),
                            );
                            log_error(&e);
                            for id in &ids {
                                results.err(*id, &e);
                            }
                        }
                        Err(e) => {
                            log_error(&e);
                            for id in &ids {
                                results.err(*id, &e);
                            }
                        }
                    }
                    running(|| Running::Nothing);
                    done += n as u64;
                }
            }
        }
        // The reading after the call (or one now, if nothing was called)
        // serves the timing and the flush decision.
        let (now, spent) = ended.unwrap_or_else(|| {
            let now = Instant::now();
            (now, now.saturating_duration_since(began))
        });
        unlooked = unlooked.saturating_add(1);
        last_spent = spent;
        results.note_work(spent, done - done_before);
        if results.due_at(now, queue.is_empty(), spent) {
            results.flush(&mut writer)?;
        }
        if !retiring && retire.due(&config, done) {
            retiring = true;
            results.flush_with(&mut writer, Some((kind::RETIRING, b"recycle")))?;
        }
    }
    let _ = panic::catch(backtraces, || worker.cleanup());
    // Events logged since the last results (the server reads to the end).
    if let Some(logs) = &results.logs {
        let mut last = FrameBuf::new();
        if logs.drain_into(&mut last) {
            writer.write_all(last.as_bytes())?;
        }
    }
    Ok(())
}

/// When to ask for recycling.
#[derive(Default)]
struct RetireCheck {
    rss_checked_items: u64,
    rss_checked_at: Option<Instant>,
}

/// Reading /proc costs a few microseconds: memory is checked every 16 items,
/// or every 10 ms when items are slower than that.
const RSS_CHECK_ITEMS: u64 = 16;
const RSS_CHECK_EVERY: Duration = Duration::from_millis(10);

impl RetireCheck {
    fn due(&mut self, config: &ChildConfig, done: u64) -> bool {
        if config.recycle_after_items.is_some_and(|n| done >= n) {
            return true;
        }
        if let Some(limit) = config.recycle_above_rss {
            let items = done.saturating_sub(self.rss_checked_items) >= RSS_CHECK_ITEMS;
            let time = self
                .rss_checked_at
                .is_none_or(|t| t.elapsed() >= RSS_CHECK_EVERY);
            if items || time {
                self.rss_checked_items = done;
                self.rss_checked_at = Some(Instant::now());
                return resident_bytes().is_some_and(|rss| rss > limit);
            }
        }
        false
    }
}

/// Serves worker type `W` in a process started by a
/// [`Launcher::program`](super::Launcher::program) launcher, on the
/// connection the server gave it (stdin); returns when the server closes the
/// connection (shutdown, recycling), after the worker's cleanup.
///
/// This is the whole worker side: the handshake (the server checks that
/// this process serves the type it expects, `std::any::type_name::<W>()`, and
/// speaks the same protocol), the worker's configuration, CPU pinning,
/// `init`, the serve loop, cancellation, recycling and `cleanup`, exactly as
/// in a re-executed worker. The process dies with the server
/// (`PR_SET_PDEATHSIG`). Call it first thing in the program (before starting
/// threads), and exit when it returns; with the re-exec launcher (the
/// default) it is never needed.
///
/// ```no_run
/// use mpserver::servlet::process::serve_worker;
/// # use mpserver::{Worker, WorkerError};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct MyWorker;
/// # impl Worker for MyWorker {
/// #     type Input = u64;
/// #     type Output = u64;
/// #     fn call(&mut self, x: u64) -> Result<u64, WorkerError> { Ok(x) }
/// # }
///
/// // The `main` of a worker program started by
/// // `Launcher::program("my-worker")`:
/// fn main() {
///     if let Err(e) = serve_worker::<MyWorker>() {
///         eprintln!("{e}");
///         std::process::exit(1);
///     }
/// }
/// ```
pub fn serve_worker<W>() -> Result<(), boot::BootError>
where
    W: Worker + DeserializeOwned,
    W::Input: DeserializeOwned,
    W::Output: Serialize,
{
    let connection = boot::accept_program::<W>()?;
    serve::<W>(connection).map_err(|e| boot::BootError::Connection(e.to_string()))
}
