//! A worker process's results on their way back: RESULTS frames within the
//! frame limit, several results per write when they come quickly, with the
//! worker's timing (for its credit) and its forwarded log events.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::worker_log::Forwarder;
use crate::error::CodecDirection;
use crate::ipc::Codec;
use crate::ipc::frame::{self, FrameBuf, encode_into, kind};
use crate::ipc::shm::{Region, SlotRef, Spill};
use crate::worker::{WorkerError, panic};

const FLUSH_ITEMS: usize = 256;
const FLUSH_BYTES: usize = 1 << 20;
/// Longest time a finished result waits for others to share its write.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Results waiting to be written: one or more RESULTS frames, each within the
/// frame limit (a frame is closed and a new one opened when the next entry
/// would not fit).
pub(super) struct Results {
    buf: FrameBuf,
    /// Start and count position of the open frame, if one is open.
    open: Option<(usize, usize)>,
    /// Entries in the open frame.
    count: u32,
    /// Entries in all buffered frames.
    entries: usize,
    first_at: Option<Instant>,
    max_frame: usize,
    codec: Codec,
    /// Time spent in worker calls, and items handled, since the last flush
    /// (reported in a TIMING frame so the server can size this worker's credit).
    busy: Duration,
    busy_items: u32,
    /// Forwarded `tracing` events, written with the results.
    pub(super) logs: Option<Forwarder>,
    /// The connection's shared memory, and the slot each item that came in
    /// one holds: a large result goes back in its item's slot.
    pub(super) shm: Option<(Arc<Region>, usize)>,
    pub(super) lent: HashMap<u64, SlotRef>,
    /// The worker's time in the call whose results come next (sent with
    /// each of them, for the server's per-stage latency).
    pub(super) compute: Duration,
    /// A clock reading the caller took just before the results that come
    /// next (when the first of a write is ready: one reading fewer per
    /// item); `None`: the clock is read.
    pub(super) now: Option<Instant>,
}

impl Results {
    pub(super) fn new(max_frame: usize, codec: Codec) -> Self {
        Results {
            buf: FrameBuf::new(),
            open: None,
            count: 0,
            entries: 0,
            first_at: None,
            max_frame,
            codec,
            busy: Duration::ZERO,
            busy_items: 0,
            logs: None,
            shm: None,
            lent: HashMap::new(),
            compute: Duration::ZERO,
            now: None,
        }
    }

    /// Largest single entry: half a frame, so that any entry fits a frame.
    fn entry_limit(&self) -> usize {
        self.max_frame / 2
    }

    fn open_frame(&mut self) {
        if self.open.is_none() {
            let start = self.buf.begin(kind::RESULTS);
            let count_at = self.buf.reserve_u32();
            self.open = Some((start, count_at));
            self.count = 0;
        }
        if self.first_at.is_none() {
            self.first_at = Some(self.now.unwrap_or_else(Instant::now));
        }
    }

    fn seal_frame(&mut self) {
        if let Some((start, count_at)) = self.open.take() {
            if self.count == 0 {
                self.buf.truncate(start);
            } else {
                self.buf.patch_u32(count_at, self.count);
                self.buf.end(start);
            }
            self.count = 0;
        }
    }

    /// Starts an entry; returns its start for [`Results::end_entry`].
    fn begin_entry(&mut self, id: u64, status: u8) -> usize {
        // Answered: the item's slot, if it had one, is the server's again
        // (unless `ok` just wrote the result into it).
        if !self.lent.is_empty() {
            self.lent.remove(&id);
        }
        self.open_frame();
        let mark = self.buf.len();
        self.buf.put_u64(id);
        self.buf.put_u8(status);
        let compute = match status {
            frame::STATUS_OK | frame::STATUS_WORKER_ERROR => self.compute,
            _ => Duration::ZERO,
        };
        self.buf
            .put_u64(compute.as_nanos().min(u64::MAX as u128) as u64);
        mark
    }

    /// Completes the entry started at `mark`, moving it to a new frame if the
    /// open one would exceed the frame limit.
    fn end_entry(&mut self, mark: usize) {
        if let Some((start, _)) = self.open
            && self.count > 0
            && self.buf.len() - start - 4 > self.max_frame
        {
            let entry = self.buf.as_bytes()[mark..].to_vec();
            self.buf.truncate(mark);
            self.seal_frame();
            self.open_frame();
            self.buf.put_bytes(&entry);
        }
        self.count += 1;
        self.entries += 1;
    }

    pub(super) fn ok<T: Serialize>(&mut self, id: u64, value: &T) {
        let lent = if self.lent.is_empty() {
            None
        } else {
            self.lent.remove(&id)
        };
        let mark = self.begin_entry(id, frame::STATUS_OK);
        let codec = self.codec;
        let (threshold, spill) = match (&self.shm, lent) {
            // A large result goes into its item's slot, or (small input) a
            // slot the worker claims.
            (Some((region, threshold)), lent) => (*threshold, Spill::Lent(region, lent, id)),
            _ => (usize::MAX, Spill::None),
        };
        // A panicking `Serialize` fails its item, not the worker.
        let r = self
            .buf
            .put_value(threshold, spill, |v| {
                panic::catch(false, || codec.encode_into(v, value))
                    .unwrap_or_else(|p| Err(format!("panic while serializing: {}", p.message())))
            })
            .map(drop);
        let too_big = self.buf.len() - mark > self.entry_limit();
        match r {
            Ok(()) if !too_big => self.end_entry(mark),
            Ok(()) => {
                self.buf.truncate(mark);
                let msg = format!("output exceeds the frame limit of {} bytes", self.max_frame);
                self.codec(id, CodecDirection::EncodeOutput, &msg);
            }
            Err(e) => {
                self.buf.truncate(mark);
                self.codec(id, CodecDirection::EncodeOutput, &e);
            }
        }
    }

    pub(super) fn err(&mut self, id: u64, error: &WorkerError) {
        let mark = self.begin_entry(id, frame::STATUS_WORKER_ERROR);
        let r = self.buf.put_payload(|v| encode_into(v, error));
        let too_big = self.buf.len() - mark > self.entry_limit();
        match r {
            Ok(()) if !too_big => self.end_entry(mark),
            Ok(()) => {
                // Keep the error, shortened to fit (UTF-8 safe).
                self.buf.truncate(mark);
                let keep = self.entry_limit() / 4;
                let mut message: String = error.message().to_string();
                let mut cut = keep.min(message.len());
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push_str(" [truncated to fit the frame limit]");
                let short = error.with_message(message);
                let mark = self.begin_entry(id, frame::STATUS_WORKER_ERROR);
                match self.buf.put_payload(|v| encode_into(v, &short)) {
                    Ok(()) if self.buf.len() - mark <= self.entry_limit() => self.end_entry(mark),
                    _ => {
                        self.buf.truncate(mark);
                        let msg = "worker error exceeds the frame limit";
                        self.codec(id, CodecDirection::EncodeOutput, msg);
                    }
                }
            }
            Err(e) => {
                self.buf.truncate(mark);
                self.codec(id, CodecDirection::EncodeOutput, &e.to_string());
            }
        }
    }

    /// The item was cancelled before it began: the server's ledger keeps
    /// it until this reply (see `ledger.rs`).
    pub(super) fn skipped(&mut self, id: u64) {
        let mark = self.begin_entry(id, frame::STATUS_SKIPPED);
        self.buf.put_u32(0);
        self.end_entry(mark);
    }

    pub(super) fn codec(&mut self, id: u64, dir: CodecDirection, msg: &str) {
        let mark = self.begin_entry(id, frame::STATUS_CODEC_ERROR);
        let mut cut = msg.len().min(self.entry_limit() / 2);
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        let _ = self.buf.put_payload(|v| {
            v.push(dir as u8);
            v.extend_from_slice(&msg.as_bytes()[..cut]);
            Ok::<_, ()>(())
        });
        self.end_entry(mark);
    }

    /// Whether to write now: when the worker has nothing else queued, when a
    /// lot is buffered, or when holding the results through one more call
    /// (assumed to take as long as the last one) would delay them by more
    /// than [`FLUSH_AFTER`]. Coalescing thus helps small, fast items and
    /// never holds a result behind a slow call.
    ///
    /// `now`: a clock reading the caller has anyway (one fewer per item).
    pub(super) fn due_at(&self, now: Instant, queue_empty: bool, last_call: Duration) -> bool {
        self.entries > 0
            && (queue_empty
                || self.entries >= FLUSH_ITEMS
                || self.buf.len() >= FLUSH_BYTES
                || self
                    .first_at
                    .is_some_and(|t| now.saturating_duration_since(t) + last_call >= FLUSH_AFTER))
    }

    pub(super) fn note_work(&mut self, spent: Duration, items: u64) {
        if items > 0 {
            self.busy += spent;
            self.busy_items = self.busy_items.saturating_add(items as u32);
        }
    }

    pub(super) fn flush(&mut self, w: &mut impl Write) -> std::io::Result<()> {
        self.flush_with(w, None)
    }

    /// Writes the results held (with their timing) and then the frame
    /// `extra`, in one write: whoever reads the results finds `extra` with
    /// them, even if it then stops reading because the worker is idle.
    pub(super) fn flush_with(
        &mut self,
        w: &mut impl Write,
        extra: Option<(u8, &[u8])>,
    ) -> std::io::Result<()> {
        self.seal_frame();
        if self.entries > 0 && self.busy_items > 0 {
            let t = self.buf.begin(kind::TIMING);
            self.buf
                .put_u64(self.busy.as_nanos().min(u64::MAX as u128) as u64);
            self.buf.put_u32(self.busy_items);
            self.buf.end(t);
            self.busy = Duration::ZERO;
            self.busy_items = 0;
        }
        // Log events go with results, which the server is reading for.
        let logged = self.entries > 0
            && self
                .logs
                .as_ref()
                .is_some_and(|l| l.drain_into(&mut self.buf));
        if let Some((k, body)) = extra {
            self.buf.frame(k, body);
        }
        if self.entries > 0 || extra.is_some() || logged {
            w.write_all(self.buf.as_bytes())?;
        }
        self.buf.clear();
        self.entries = 0;
        self.first_at = None;
        Ok(())
    }
}
