//! The supervisor of one worker slot: its event loop. It starts the
//! worker process, feeds it from the servlet's queue while it has credit,
//! scans for cancelled items it holds, and on its end (drained, aborted,
//! retired, crashed, or left with only abandoned work at shutdown) stops,
//! restarts or recycles it. What it sends and how is `dispatch.rs`; the
//! restart policy is `restart.rs`; the start-up exchange is `handshake.rs`;
//! results come back through `reader.rs`.

use std::net::Shutdown;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::connection::{lock_side, send_cancels};
use super::delivery::{Delivery, deliver};
use super::dispatch::{Dispatcher, Unsent, drain_queued};
use super::handoff::Door;
use super::handshake::{self, Proc};
use super::ledger::InFlight;
use super::reader::Event;
use super::restart::{Health, HealthChange, Lost, describe, lost};
use super::shared::{Item, Shared};
use crate::affinity::CpuAffinity;
use crate::error::{StartError, WorkerCrashed, WorkerId};
use crate::metrics::WorkerStatus;
use crate::servlet::plumbing::SinkRef;
use crate::worker::Worker;

/// How often the supervisor looks for cancelled items held by its worker
/// while the worker is busy (the reader also looks after every result).
const CANCEL_SCAN: Duration = Duration::from_millis(10);

/// Why feeding a process stopped.
enum End {
    /// The servlet's input ended and the worker holds nothing.
    Drained,
    /// The server's forced shutdown.
    Aborted,
    /// The worker asked to be recycled (or used its quota) and is done.
    Retired,
    /// The servlet's input ended and the worker holds only items whose
    /// requests ended: nobody waits for them.
    Abandoned,
    /// The worker died (or broke the protocol): `None` at a clean end of
    /// stream, else why.
    Crashed(Option<String>),
}

/// One worker slot of a process servlet.
pub(crate) struct Supervisor<W: Worker> {
    pub(crate) shared: Arc<Shared<W>>,
    pub(crate) index: usize,
    pub(crate) cpus: CpuAffinity,
    pub(crate) rx: Receiver<Item<W>>,
    /// Disconnected when the servlet's input ends (see `ProcessSink`).
    pub(crate) closing: Receiver<()>,
    pub(crate) out: SinkRef<W::Output>,
    pub(crate) status: Arc<WorkerStatus>,
    pub(crate) abort_rx: Receiver<()>,
    /// Where callers find this slot's process for direct hand-off.
    pub(crate) door: Arc<Door>,
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
        let mut health = Health::new(&self.shared.restart);
        let mut unsent: Option<Unsent> = None;
        let mut disp = Dispatcher::new(&self.shared, &self.rx, &self.out);
        loop {
            let mut p = match self.launch() {
                Ok(p) => p,
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::warn!(worker = %self.worker_id(None), error = %e, "worker restart failed");
                    let how = format!("restart failed: {e}");
                    let wait = self.note_crash(&mut health, false, &how);
                    if !self.back_off(wait, &how, unsent.is_some()) {
                        self.drop_retries();
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
            let answered_before = self.status.items.load(Relaxed);
            let started = std::time::Instant::now();
            self.shared.worker_up();
            tracing::info!(worker = %self.worker_id(Some(p.pid)), "worker process started");
            let end = self.feed(&mut p, &mut disp, &mut unsent, &mut health);
            self.door.close(&p.port.writer);
            self.status.alive.store(false, Relaxed);
            self.shared.worker_down();
            match end {
                End::Drained => {
                    self.close(p);
                    return;
                }
                End::Aborted => {
                    self.kill(p);
                    self.drop_retries();
                    return;
                }
                End::Abandoned => {
                    tracing::info!(worker = %self.worker_id(Some(p.pid)), "stopping a worker process that runs only abandoned items");
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
                    let (status, held) = self.reap_crashed(p, reason.is_some());
                    if self.aborted() {
                        // The server's forced shutdown killed it: what it
                        // held ends with a shutdown error (dropping it does
                        // that), not as a crash.
                        self.drop_retries();
                        return;
                    }
                    let how = describe(status, reason.as_deref());
                    tracing::warn!(worker = %self.worker_id(Some(pid)), %how, lost = held.len(), "worker process crashed");
                    self.shared.stats.crashes.fetch_add(1, Relaxed);
                    // Health first, so that whoever hears of the crash sees
                    // its effect on readiness.
                    // It served: answered an item, or stayed up a while.
                    let served = self.status.items.load(Relaxed) > answered_before
                        || started.elapsed() >= self.shared.restart.stable_after;
                    let wait = self.note_crash(&mut health, served, &how);
                    let crash = WorkerCrashed {
                        worker: self.worker_id(Some(pid)),
                        how,
                    };
                    self.settle_lost(held, &crash);
                    if !self.back_off(wait, &crash.how, unsent.is_some()) {
                        self.drop_retries();
                        return;
                    }
                    self.status.restarts.fetch_add(1, Relaxed);
                    self.shared.stats.restarts.fetch_add(1, Relaxed);
                }
            }
            // Before restarting: if the servlet is shutting down and nothing
            // is left, stop here instead of starting a process only to stop it.
            if !self.shared.retry.pending() && unsent.is_none() {
                match self.rx.try_recv() {
                    Ok(item) => {
                        let _ = self.shared.spill_tx.send(item);
                    }
                    Err(TryRecvError::Disconnected) if self.shared.spill_rx.is_empty() => return,
                    Err(_) => {}
                }
            }
        }
    }

    /// True once the server has started a forced shutdown.
    fn aborted(&self) -> bool {
        matches!(self.abort_rx.try_recv(), Err(TryRecvError::Disconnected))
    }

    fn apply(&self, change: HealthChange) {
        match change {
            HealthChange::Same => {}
            HealthChange::Unhealthy => {
                self.status.healthy.store(false, Relaxed);
                self.shared.healthy_workers.fetch_sub(1, Relaxed);
                tracing::error!(worker = %self.worker_id(None), "worker crashes too often; marked unhealthy");
            }
            HealthChange::Healthy => {
                self.status.healthy.store(true, Relaxed);
                self.shared.healthy_workers.fetch_add(1, Relaxed);
                tracing::info!(worker = %self.worker_id(None), "worker healthy again");
            }
        }
    }

    /// Records a crash (or a failed restart) and how the worker ended;
    /// returns the back-off (logged when long: the worker is away a while).
    fn note_crash(&self, h: &mut Health, served: bool, how: &str) -> Duration {
        let (wait, change) = h.note_crash(&self.shared.restart, served);
        self.apply(change);
        self.status.set_last_exit(how);
        wait
    }

    /// Waits out a back-off; false if the server aborted meanwhile, or if
    /// the servlet's input ended and nothing is left for a new process
    /// (`unsent`: items kept for it). While no worker process of the
    /// servlet is alive for longer than `wait_for_worker`, queued items fail
    /// at once with a retryable `WorkerCrashed` (looked at four times per
    /// `wait_for_worker`).
    fn back_off(&self, wait: Duration, last_exit: &str, unsent: bool) -> bool {
        if wait.is_zero() {
            return !self.aborted();
        }
        self.status.set_backoff(Some(wait));
        if wait > Duration::from_secs(1) {
            tracing::warn!(
                worker = %self.worker_id(None),
                backoff_ms = wait.as_millis() as u64,
                last_exit,
                "worker in restart back-off"
            );
        }
        let go_on = self.wait_out(wait, last_exit, unsent);
        self.status.set_backoff(None);
        go_on
    }

    fn wait_out(&self, wait: Duration, last_exit: &str, unsent: bool) -> bool {
        let shared = &*self.shared;
        let end = std::time::Instant::now() + wait;
        let every = (shared.wait_for_worker / 4).max(Duration::from_millis(10));
        let no_close = crossbeam_channel::never::<()>();
        let mut closed = false;
        loop {
            let now = std::time::Instant::now();
            if now >= end {
                return true;
            }
            let tick = crossbeam_channel::after((end - now).min(every));
            select! {
                recv(self.abort_rx) -> _ => return false,
                recv(if closed { &no_close } else { &self.closing }) -> _ => closed = true,
                recv(tick) -> _ => {}
            }
            // At shutdown, a back-off with nothing left to do is not waited
            // out.
            if closed
                && !unsent
                && self.rx.is_empty()
                && shared.spill_rx.is_empty()
                && !shared.retry.pending()
            {
                return false;
            }
            if shared.none_alive_too_long() {
                self.fail_queued(last_exit);
            }
        }
    }

    /// Fails what waits in the queue and the retries: no worker is alive
    /// to run it.
    fn fail_queued(&self, last_exit: &str) {
        let shared = &*self.shared;
        let crash = WorkerCrashed {
            worker: self.worker_id(None),
            how: format!(
                "no live worker for {:?} (last exit: {last_exit})",
                shared.wait_for_worker
            ),
        };
        drain_queued(shared, &self.rx, |(ticket, x)| {
            shared.queued.left(1);
            shared.stats.items_in.fetch_add(1, Relaxed);
            let _ = crate::worker::panic::catch(false, move || drop(x));
            shared.stats.items_err.fetch_add(1, Relaxed);
            let e = crate::error::Error::WorkerCrashed(crash.clone());
            deliver(&self.out, &crash.worker, Delivery::Failure(ticket, e));
        });
        while let Some(item) = shared.retry.pop() {
            if item.ticket.is_cancelled() {
                continue;
            }
            shared.stats.items_err.fetch_add(1, Relaxed);
            let e = crate::error::Error::WorkerCrashed(crash.clone());
            deliver(&self.out, &crash.worker, Delivery::Failure(item.ticket, e));
        }
    }

    /// At the server's forced shutdown: retries waiting for a process end
    /// with a shutdown error (dropping them does that).
    fn drop_retries(&self) {
        if self.aborted() {
            while self.shared.retry.pop().is_some() {}
        }
    }

    fn launch(&self) -> Result<Proc, StartError> {
        handshake::start(
            &self.shared,
            self.index,
            &self.cpus,
            &self.out,
            &self.status,
        )
    }

    /// The event loop while a process runs.
    fn feed(
        &self,
        p: &mut Proc,
        disp: &mut Dispatcher<'_, W>,
        unsent: &mut Option<Unsent>,
        health: &mut Health,
    ) -> End {
        let shared = &*self.shared;
        let never = crossbeam_channel::never();
        let mut draining = false;
        let mut retiring = false;
        let who = self.worker_id(Some(p.pid));
        let port = p.port.clone();
        let ledger = &port.ledger;
        // Items that never reached the previous process go first, as they are.
        if let Some(u) = unsent.take()
            && let Err(reason) = disp.send_unsent(&port, u, unsent)
        {
            return End::Crashed(Some(reason));
        }
        // Callers may hand items straight to this process (see `handoff.rs`).
        self.door.open(port.clone());
        let handoff = !shared.policy.batched();
        let mut direct = false;
        // An unhealthy worker that stays up for a whole window is healthy again.
        let mut recovery = match health.recovery_at(&shared.restart) {
            Some(t) => crossbeam_channel::at(t),
            None => crossbeam_channel::never(),
        };
        let scan_tick = crossbeam_channel::tick(CANCEL_SCAN);
        // The input's end is noticed also while not pulling (a busy worker
        // holding only abandoned items must be stopped at shutdown).
        let mut input_closed = false;
        let no_close = crossbeam_channel::never::<()>();
        let no_scan = crossbeam_channel::never();
        let no_retry = crossbeam_channel::never();
        // Sends a crashed item again, alone; one that never reached the
        // process goes back to the retries.
        let resend =
            |disp: &mut Dispatcher<'_, W>, item: InFlight| match disp.send_retry(&port, item) {
                Ok(()) => None,
                Err((reason, back)) => {
                    if let Some(item) = back {
                        shared.retry.push(item);
                    }
                    Some(End::Crashed(Some(reason)))
                }
            };
        // Sends `item` (and what else is ready); an item that finds no
        // credit after all goes to the spill queue, for any worker.
        let send = |disp: &mut Dispatcher<'_, W>, item: Item<W>, max, unsent: &mut _| match disp
            .dispatch(&port, &who, item, max, unsent)
        {
            Ok(Some(back)) => {
                let _ = shared.spill_tx.send(back);
                None
            }
            Ok(None) => None,
            Err(reason) => Some(End::Crashed(Some(reason))),
        };
        loop {
            // Events first: a worker that died must not be sent more items.
            match p.events.try_recv() {
                Ok(ev) => {
                    if let Some(end) = on_event(Ok(ev), &mut retiring) {
                        return end;
                    }
                    continue;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    return End::Crashed(Some("reader stopped".into()));
                }
            }
            let max = ledger.limit(shared.min_inflight, shared.max_inflight);
            let retry_pending = shared.retry.pending();
            {
                let mut side = lock_side(&port.writer);
                // With `recycle_after(n)`, a process is sent at most n items
                // (ids count every item sent: its `quota`), then retired once
                // it has answered them.
                if side.next_id >= side.quota {
                    retiring = true;
                }
                // Direct hand-off only while this worker takes new items one
                // by one as they come: not while crashed items wait to be
                // retried (one at a time, alone), nor once it retires or
                // drains.
                let want = handoff && !retiring && !draining && !retry_pending;
                if want != direct {
                    side.direct = want;
                    direct = want;
                }
            }
            if !draining && input_closed && self.rx.is_empty() {
                // No sender left and nothing queued: the input has ended.
                draining = true;
            }
            let held = ledger.held();
            if retiring && held == 0 {
                return End::Retired;
            }
            if draining && !retry_pending {
                if held == 0 && shared.spill_rx.is_empty() {
                    return End::Drained;
                }
                // At shutdown, work nobody waits for is not waited for.
                if held > 0 && ledger.abandoned() {
                    return End::Abandoned;
                }
            }
            // Crashed items (of any worker of the servlet) go one at a time,
            // alone, so a poison item can only take itself down.
            if !retiring
                && held == 0
                && let Some(item) = shared.retry.pop()
            {
                if let Some(end) = resend(disp, item) {
                    return end;
                }
                continue;
            }
            // While retries wait, a process that holds items takes no new
            // ones, so that it frees up for them.
            let can_pull =
                (held == 0 || !retry_pending) && !retiring && held < max && !disp.saturated(held);
            // Items spilled by any supervisor go before the queue.
            if can_pull && let Ok(item) = shared.spill_rx.try_recv() {
                if let Some(end) = send(disp, item, max, unsent) {
                    return end;
                }
                continue;
            }
            // Not pulling means waiting for the worker to give items back:
            // ask the reader to wake us, then re-check (no lost wake-up).
            let wait_credit = !can_pull;
            if wait_credit && !ledger.wait_for_credit(held) {
                continue;
            }
            let input = if can_pull && !draining {
                &self.rx
            } else {
                &never
            };
            let spilled = if can_pull { &shared.spill_rx } else { &never };
            // While the worker holds items, look for cancelled ones now and
            // then: the worker may be busy with a long item, and the reader
            // looks only when results come.
            let scan = if held > 0 { &scan_tick } else { &no_scan };
            let retries = if held == 0 && !retiring {
                shared.retry.receiver()
            } else {
                &no_retry
            };
            let end = select! {
                recv(input) -> msg => match msg {
                    Ok(first) => send(disp, first, max, unsent),
                    Err(_) => {
                        draining = true;
                        None
                    }
                },
                recv(spilled) -> msg => match msg {
                    Ok(item) => send(disp, item, max, unsent),
                    Err(_) => None,
                },
                recv(retries) -> msg => match msg {
                    Ok(item) => resend(disp, item),
                    Err(_) => None,
                },
                recv(if input_closed { &no_close } else { &self.closing }) -> _ => {
                    input_closed = true;
                    None
                },
                recv(p.events) -> ev => on_event(ev.map_err(drop), &mut retiring),
                recv(scan) -> _ => match send_cancels(ledger, &port.writer, true) {
                    Ok(_) => {
                        if !can_pull {
                            disp.sweep();
                        }
                        None
                    }
                    Err(e) => Some(End::Crashed(Some(e.reason()))),
                },
                recv(recovery) -> _ => {
                    let change = health.recovered();
                    self.apply(change);
                    recovery = crossbeam_channel::never();
                    None
                },
                recv(self.abort_rx) -> _ => Some(End::Aborted),
            };
            if wait_credit {
                ledger.stop_waiting();
            }
            if let Some(end) = end {
                return end;
            }
        }
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
        (status, p.port.ledger.drain())
    }

    /// Fails what a crashed worker held, or queues it to be retried by any
    /// worker of the servlet (`restart.rs`).
    fn settle_lost(&self, held: Vec<InFlight>, crash: &WorkerCrashed) {
        for item in held {
            match lost(&self.shared.restart, item, crash) {
                Lost::Gone => {}
                Lost::Retry(item) => self.shared.retry.push(item),
                Lost::Fail(item, error) => {
                    self.shared.stats.items_err.fetch_add(1, Relaxed);
                    deliver(
                        &self.out,
                        &crash.worker,
                        Delivery::Failure(item.ticket, error),
                    );
                }
            }
        }
    }

    /// Graceful stop: end of stream to the worker, which finishes, cleans up
    /// and exits; killed if it takes longer than the grace period.
    fn close(&self, mut p: Proc) {
        let _ = p.sock.shutdown(Shutdown::Write);
        let deadline = std::time::Instant::now() + self.shared.shutdown_grace;
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

    fn kill(&self, p: Proc) {
        // Dropping the held items completes their requests with a shutdown
        // error (or nothing, for requests that ended).
        drop(self.reap_crashed(p, true));
    }
}

fn on_event(ev: Result<Event, ()>, retiring: &mut bool) -> Option<End> {
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
