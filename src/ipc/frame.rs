//! The frame format between the server and a worker process.
//!
//! Every message is a frame: a little-endian `u32` length (of what follows),
//! one kind byte, and a body. Bodies that carry items hold many of them, each
//! with its request-local id and its own length-prefixed payload, so one
//! `write` moves a whole batch or a queue's worth of small items, and a value
//! that fails to encode or decode fails only its own item.
//!
//! ```text
//! frame   := len:u32 kind:u8 body
//! ITEMS   := batched:u8 count:u32 { id:u64 payload }*
//! RESULTS := count:u32 { id:u64 status:u8 compute_ns:u64 payload }*
//!            status: 0 ok, 1 worker error, 2 codec error, 3 skipped;
//!            compute_ns: the worker's time in its call for the item (0 if none)
//! CANCEL  := count:u32 { id:u64 }*
//! payload := len:u32 bytes                      (len < u32::MAX)
//!          | 0xFFFF_FFFF slot:u32 tag:u32 gen:u32 len:u32   (the value is in shared memory)
//! ```
//!
//! A payload in shared memory ([`super::shm`]) is a [`SlotRef`]: the value
//! sits in a slot of the connection's region. The sentinel cannot be a real
//! length (a frame's own length is a `u32` that counts more than the payload).
//!
//! Decoding never panics and never trusts a length: a truncated, oversized or
//! malformed frame is an [`FrameError`], after which the server treats the
//! worker as crashed.

use std::io;
use std::sync::Arc;

use super::shm::{Lease, PayloadWriter, Placed, SlotPool, SlotRef, Spill};

/// Frame kinds.
pub mod kind {
    /// Parent → child: bootstrap handshake (magic, protocol, then the
    /// token, the worker type and how to find it; see the process servlet's
    /// `spawn.rs`).
    pub const HELLO: u8 = 1;
    /// Parent → child: the worker's configuration.
    pub const CONFIG: u8 = 2;
    /// Parent → child: items to process.
    pub const ITEMS: u8 = 3;
    /// Parent → child: ids of items to skip.
    pub const CANCEL: u8 = 4;
    /// Child → parent: init succeeded.
    pub const READY: u8 = 10;
    /// Child → parent: init failed (body: a postcard `WorkerError`).
    pub const INIT_FAILED: u8 = 11;
    /// Child → parent: results.
    pub const RESULTS: u8 = 12;
    /// Child → parent: the worker asks to be recycled (body: reason text).
    pub const RETIRING: u8 = 13;
    /// Child → parent: time spent in worker calls since the last TIMING
    /// frame (`busy_ns:u64 items:u32`), to size the worker's credit.
    pub const TIMING: u8 = 14;
    /// Child → parent: the answer to HELLO, sent at once (the child's pid,
    /// and why it refuses to serve, if it does).
    pub const HELLO_ACK: u8 = 15;
    /// Child → parent: `tracing` events of the worker process (see the
    /// process servlet's `worker_log.rs`).
    pub const LOG: u8 = 16;
}

/// Result status byte: the payload is the output value.
pub const STATUS_OK: u8 = 0;
/// Result status byte: the payload is a postcard `WorkerError`.
pub const STATUS_WORKER_ERROR: u8 = 1;
/// Result status byte: the payload is a UTF-8 codec error message; the
/// direction is given by the following byte in the payload.
pub const STATUS_CODEC_ERROR: u8 = 2;

/// Result status byte: the worker skipped the item (cancelled before it
/// began); empty payload.
pub const STATUS_SKIPPED: u8 = 3;

/// Payload length announcing a shared-memory descriptor instead of bytes.
pub const IN_SHARED_MEMORY: u32 = u32::MAX;

/// Default largest frame accepted (256 MiB).
pub const DEFAULT_MAX_FRAME: usize = 256 << 20;

/// What can go wrong reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// A frame announced more bytes than allowed.
    #[error("oversized frame: {0} bytes")]
    Oversized(usize),
    /// A frame's content does not follow the format.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// An outgoing buffer holding any number of frames.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// True when no frame is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Number of buffered bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Forgets the buffered frames, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Starts a frame of `kind`; returns its start for [`FrameBuf::end`].
    #[inline]
    pub fn begin(&mut self, kind: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(kind);
        start
    }

    /// Finishes the frame started at `start` (writes its length).
    #[inline]
    pub fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Appends a whole frame with a raw body.
    pub fn frame(&mut self, kind: u8, body: &[u8]) {
        let s = self.begin(kind);
        self.buf.extend_from_slice(body);
        self.end(s);
    }

    /// Appends a byte.
    #[inline]
    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends raw bytes.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Appends a little-endian u32.
    #[inline]
    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a little-endian u64.
    #[inline]
    pub fn put_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Reserves a u32 to patch later with [`FrameBuf::patch_u32`].
    #[inline]
    pub fn reserve_u32(&mut self) -> usize {
        let at = self.buf.len();
        self.put_u32(0);
        at
    }

    /// Writes `v` at a position returned by [`FrameBuf::reserve_u32`].
    #[inline]
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Appends a length-prefixed payload produced by `write` (which appends
    /// to the given vector). If `write` fails, the buffer is restored.
    pub fn put_payload<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = self.reserve_u32();
        match write(&mut self.buf) {
            Ok(()) => {
                let len = (self.buf.len() - at - 4) as u32;
                self.patch_u32(at, len);
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(at);
                Err(e)
            }
        }
    }

    /// Appends a payload produced by `write`: in the frame, or, once it
    /// passes `threshold` bytes and `spill` has a slot, in shared memory
    /// (the frame then holds its descriptor, which is returned). If `write`
    /// fails, the buffer is restored.
    pub fn put_value<E>(
        &mut self,
        threshold: usize,
        spill: Spill<'_>,
        write: impl FnOnce(&mut PayloadWriter<'_>) -> Result<(), E>,
    ) -> Result<Option<SlotRef>, E> {
        let at = self.reserve_u32();
        let placed = {
            let mut w = PayloadWriter::new(&mut self.buf, threshold, spill);
            // Not `map(|()| w.finish())`: the closure and `finish` would
            // take the writer (152 bytes) by a copy each, a `memcpy` each.
            match write(&mut w) {
                Ok(()) => Ok(w.placed()),
                Err(e) => Err(e),
            }
        };
        match placed {
            Ok(Placed::Inline) => {
                let len = (self.buf.len() - at - 4) as u32;
                self.patch_u32(at, len);
                Ok(None)
            }
            Ok(Placed::Lent(d)) => {
                self.patch_u32(at, IN_SHARED_MEMORY);
                self.put_bytes(&d.to_bytes());
                Ok(Some(d))
            }
            Ok(Placed::Leased(lease, n)) => {
                // A pool's slot is bound to an item by `ItemFrames`, not
                // here: the value goes back into the frame.
                let bytes = lease.data(n).to_vec();
                self.put_bytes(&bytes);
                let len = (self.buf.len() - at - 4) as u32;
                self.patch_u32(at, len);
                Ok(None)
            }
            Err(e) => {
                self.buf.truncate(at);
                Err(e)
            }
        }
    }

    /// Rolls the buffer back to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }
}

/// ITEMS frames under construction: the one place they are written, beside
/// [`parse_items`].
///
/// Values are encoded first and their ids given afterwards
/// ([`ItemFrames::assign_ids`]): the server encodes (user code) without any
/// lock and takes ids under the worker's send lock only for the write. Items
/// that are not one batch are split over several frames once a frame grows
/// past `split_above` bytes, so no frame exceeds the worker's limit.
#[derive(Debug, Default)]
pub struct ItemFrames {
    buf: FrameBuf,
    batched: bool,
    split_above: usize,
    /// Start and count position of the open frame.
    open: Option<(usize, usize)>,
    count: u32,
    /// Where each item's id, and its payload, sit in `buf`.
    entries: Vec<(usize, usize, usize)>,
    /// Shared memory for large payloads, if the connection has it.
    shm: Option<Arc<SlotPool>>,
    /// For each entry in a slot: the slot (until bound to the item's id)
    /// and the descriptor.
    slots: Vec<Option<(Option<Lease>, SlotRef)>>,
}

impl ItemFrames {
    /// Empty frames; `batched`: all items are one batch (one frame).
    pub fn new(batched: bool, split_above: usize) -> Self {
        ItemFrames {
            batched,
            split_above,
            ..ItemFrames::default()
        }
    }

    /// Starts over (keeping the allocation).
    pub fn reset(&mut self, batched: bool, split_above: usize) {
        self.buf.clear();
        self.batched = batched;
        self.split_above = split_above;
        self.open = None;
        self.count = 0;
        self.entries.clear();
        self.slots.clear();
        self.shm = None;
    }

    /// Payloads larger than the pool's threshold go into its slots (from
    /// the next [`ItemFrames::push`] until the next reset); `None`: all in
    /// the frame.
    pub fn use_shm(&mut self, pool: Option<&Arc<SlotPool>>) {
        self.shm = pool.cloned();
    }

    fn seal(&mut self) {
        if let Some((start, count_at)) = self.open.take() {
            self.buf.patch_u32(count_at, self.count);
            self.buf.end(start);
            self.count = 0;
        }
    }

    /// Appends an item whose payload `write` writes; returns the size of
    /// its entry in the frame. A failed `write` leaves the frames as they
    /// were. With shared memory ([`ItemFrames::use_shm`]), a payload that
    /// passes the threshold is written into a slot, and the entry is a
    /// descriptor.
    pub fn push<E>(
        &mut self,
        write: impl FnOnce(&mut PayloadWriter<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        if !self.batched
            && self.count > 0
            && let Some((start, _)) = self.open
            && self.buf.len() - start > self.split_above
        {
            self.seal();
        }
        let opened = self.open.is_none();
        if opened {
            let start = self.buf.begin(kind::ITEMS);
            self.buf.put_u8(self.batched as u8);
            let count_at = self.buf.reserve_u32();
            self.open = Some((start, count_at));
        }
        let mark = self.buf.len();
        self.buf.put_u64(0);
        let at = self.buf.reserve_u32();
        let placed = {
            let (threshold, spill) = match &self.shm {
                Some(pool) => (pool.threshold(), Spill::Pool(pool)),
                None => (usize::MAX, Spill::None),
            };
            let mut w = PayloadWriter::new(&mut self.buf.buf, threshold, spill);
            write(&mut w).map(|()| w.finish())
        };
        match placed {
            Ok(placed) => {
                let slot = match placed {
                    Placed::Inline => {
                        let len = (self.buf.len() - at - 4) as u32;
                        self.buf.patch_u32(at, len);
                        None
                    }
                    Placed::Leased(lease, n) => {
                        let d = lease.slot_ref(n);
                        self.buf.patch_u32(at, IN_SHARED_MEMORY);
                        self.buf.put_bytes(&d.to_bytes());
                        Some((Some(lease), d))
                    }
                    Placed::Lent(d) => {
                        self.buf.patch_u32(at, IN_SHARED_MEMORY);
                        self.buf.put_bytes(&d.to_bytes());
                        Some((None, d))
                    }
                };
                self.entries.push((mark, mark + 12, self.buf.len()));
                self.slots.push(slot);
                self.count += 1;
                Ok(self.buf.len() - mark)
            }
            Err(e) => {
                let back = if opened {
                    self.open.take().map_or(mark, |o| o.0)
                } else {
                    mark
                };
                self.buf.truncate(back);
                Err(e)
            }
        }
    }

    /// Restores the frames to what they were before a
    /// [`ItemFrames::push`] whose `write` panicked (unwound out of `push`):
    /// its partial entry, and a frame it opened, are dropped.
    pub fn discard_partial(&mut self) {
        match self.open {
            Some((start, _)) if self.count == 0 => {
                self.open = None;
                self.buf.truncate(start);
            }
            Some(_) => {
                if let Some(&(_, _, end)) = self.entries.last() {
                    self.buf.truncate(end);
                }
            }
            None => {}
        }
    }

    /// Size of item `i`'s value (in the frame or in shared memory).
    pub fn value_len(&self, i: usize) -> usize {
        match self.slots.get(i) {
            Some(Some((_, d))) => d.len as usize,
            _ => self.payload(i).len(),
        }
    }

    /// Appends an item whose payload is already encoded.
    pub fn push_raw(&mut self, payload: &[u8]) -> usize {
        self.push(|v| {
            v.extend_from_slice(payload);
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap_or_else(|e| match e {})
    }

    /// Removes the item appended last (say, one found too large).
    pub fn pop(&mut self) {
        if let Some((mark, _, _)) = self.entries.pop() {
            self.slots.pop();
            self.buf.truncate(mark);
            self.count -= 1;
            if self.count == 0
                && let Some((start, _)) = self.open
                && start + 10 == mark
            {
                self.open = None;
                self.buf.truncate(start);
            }
        }
    }

    /// Items appended.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no item was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the frame being filled (for a batch: the whole batch).
    pub fn open_frame_len(&self) -> usize {
        self.open.map_or(0, |(start, _)| self.buf.len() - start)
    }

    /// The encoded value of item `i` (kept to resend it elsewhere): its
    /// bytes also when it is in shared memory (read from its slot, which
    /// the worker does not touch before the frame is sent).
    pub fn payload(&self, i: usize) -> &[u8] {
        let (_, from, to) = self.entries[i];
        if let (Some(Some((_, d))), Some(pool)) = (self.slots.get(i), &self.shm)
            && let Ok(b) = pool.region().view(*d)
        {
            return b;
        }
        &self.buf.as_bytes()[from..to]
    }

    /// Gives item `i` the id `id`; a slot it has goes with the id (freed
    /// when the server reads the item's answer, `SlotPool::release`).
    pub fn set_id(&mut self, i: usize, id: u64) {
        let at = self.entries[i].0;
        self.buf.buf[at..at + 8].copy_from_slice(&id.to_le_bytes());
        if let Some(Some((lease, _))) = self.slots.get_mut(i)
            && let Some(lease) = lease.take()
            && let Some(pool) = &self.shm
        {
            pool.bind(id, lease);
        }
    }

    /// The finished frames with every value in the frame (values in shared
    /// memory copied back in): to send to another process.
    pub fn inline_bytes(&mut self) -> Vec<u8> {
        self.seal();
        if self.slots.iter().all(Option::is_none) {
            return self.buf.as_bytes().to_vec();
        }
        let mut out = ItemFrames::new(self.batched, self.split_above);
        for i in 0..self.entries.len() {
            let (mark, _, _) = self.entries[i];
            let id = &self.buf.as_bytes()[mark..mark + 8];
            let id = u64::from_le_bytes(id.try_into().unwrap_or([0; 8]));
            out.push_raw(self.payload(i));
            out.set_id(i, id);
        }
        out.bytes().to_vec()
    }

    /// Gives the items the ids `first`, `first + 1`, ... in order.
    pub fn assign_ids(&mut self, first: u64) {
        for i in 0..self.entries.len() {
            self.set_id(i, first + i as u64);
        }
    }

    /// The finished frames, ready to write.
    pub fn bytes(&mut self) -> &[u8] {
        self.seal();
        self.buf.as_bytes()
    }
}

/// Serializes `value` with postcard, appending to `out`.
pub fn encode_into<T: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), postcard::Error> {
    postcard::to_io(value, out).map(drop)
}

/// A cursor over a frame body that never reads out of bounds.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Cursor { rest: body }
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Malformed(
                "field runs past the end of the frame",
            ));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a u32-length-prefixed payload.
    pub fn payload(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    /// True when everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails unless everything was consumed.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("trailing bytes"))
        }
    }

    /// Reads an item count, checking it against the bytes left (each entry
    /// takes at least `min_entry` bytes), so a lying count cannot make a
    /// reader allocate.
    pub fn count(&mut self, min_entry: usize) -> Result<usize, FrameError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_entry) > self.rest.len() {
            return Err(FrameError::Malformed("count larger than the frame"));
        }
        Ok(n)
    }
}

/// A value in a frame: its bytes, or where it is in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The encoded value.
    Inline(&'a [u8]),
    /// The value is in a slot of the connection's shared-memory region.
    Shared(SlotRef),
}

impl<'a> Payload<'a> {
    /// The value's length.
    pub fn len(&self) -> usize {
        match self {
            Payload::Inline(b) => b.len(),
            Payload::Shared(d) => d.len as usize,
        }
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when in the frame.
    pub fn inline(&self) -> Option<&'a [u8]> {
        match self {
            Payload::Inline(b) => Some(b),
            Payload::Shared(_) => None,
        }
    }
}

impl<'a> Cursor<'a> {
    /// Reads a payload: length-prefixed bytes or a shared-memory descriptor.
    pub fn value(&mut self) -> Result<Payload<'a>, FrameError> {
        let n = self.u32()?;
        if n == IN_SHARED_MEMORY {
            let b = self.bytes(SlotRef::WIRE)?;
            let mut d = [0u8; 16];
            d.copy_from_slice(b);
            Ok(Payload::Shared(SlotRef::from_bytes(&d)))
        } else {
            Ok(Payload::Inline(self.bytes(n as usize)?))
        }
    }
}

/// `(id, payload)` entries of an ITEMS frame.
pub type Items<'a> = Vec<(u64, Payload<'a>)>;
/// `(id, status, compute_ns, payload)` entries of a RESULTS frame.
pub type ResultEntries<'a> = Vec<(u64, u8, u64, Payload<'a>)>;

/// Parses an ITEMS body: whether it is one batch, and its `(id, payload)` entries.
pub fn parse_items(body: &[u8]) -> Result<(bool, Items<'_>), FrameError> {
    let (batched, items) = items_in(body)?;
    Ok((batched, items.collect()))
}

/// Checks an ITEMS body whole, like [`parse_items`], and returns whether it
/// is one batch and its `(id, payload)` entries, parsed again as they are
/// taken: no vector (an allocation and a free per frame, on the
/// single-call path one per item).
pub fn items_in(body: &[u8]) -> Result<(bool, ItemsIter<'_>), FrameError> {
    let mut c = Cursor::new(body);
    let batched = match c.u8()? {
        0 => false,
        1 => true,
        _ => return Err(FrameError::Malformed("bad batched flag")),
    };
    let n = c.count(12)?;
    let items = ItemsIter { c, left: n };
    let mut check = items.clone();
    for _ in 0..n {
        check.c.u64()?;
        check.c.value()?;
    }
    check.c.finish()?;
    Ok((batched, items))
}

/// The `(id, payload)` entries of an ITEMS body checked by [`items_in`].
#[derive(Debug, Clone)]
pub struct ItemsIter<'a> {
    c: Cursor<'a>,
    left: usize,
}

impl<'a> Iterator for ItemsIter<'a> {
    type Item = (u64, Payload<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked by `items_in`: neither read fails.
        let id = self.c.u64().ok()?;
        let p = self.c.value().ok()?;
        Some((id, p))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ItemsIter<'_> {}

/// Parses a RESULTS body into `(id, status, compute_ns, payload)` entries.
pub fn parse_results(body: &[u8]) -> Result<ResultEntries<'_>, FrameError> {
    let mut c = Cursor::new(body);
    let n = c.count(21)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = c.u64()?;
        let status = c.u8()?;
        if status > STATUS_SKIPPED {
            return Err(FrameError::Malformed("bad result status"));
        }
        let compute_ns = c.u64()?;
        let p = c.value()?;
        out.push((id, status, compute_ns, p));
    }
    c.finish()?;
    Ok(out)
}

/// Parses a CANCEL body.
pub fn parse_cancel(body: &[u8]) -> Result<Vec<u64>, FrameError> {
    let mut c = Cursor::new(body);
    let n = c.count(8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.u64()?);
    }
    c.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lying_count_is_malformed() {
        let mut body = vec![0u8];
        body.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(parse_items(&body), Err(FrameError::Malformed(_))));
        let mut body = 5u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 20]);
        assert!(parse_results(&body).is_err());
    }

    #[test]
    fn a_panicking_write_is_discarded() {
        for batched in [true, false] {
            let write = |f: &mut ItemFrames, b: &[u8]| {
                f.push(|v| {
                    v.extend_from_slice(b);
                    Ok::<_, ()>(())
                })
                .unwrap();
            };
            let panicking = |f: &mut ItemFrames| {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = f.push(|v| -> Result<(), ()> {
                        v.extend_from_slice(b"partial");
                        panic!("in write")
                    });
                }));
                assert!(r.is_err());
                f.discard_partial();
            };
            // First, and after others (split into frames when unbatched).
            let mut want = ItemFrames::new(batched, 4);
            write(&mut want, b"ab");
            write(&mut want, b"cdefgh");
            let mut got = ItemFrames::new(batched, 4);
            panicking(&mut got);
            write(&mut got, b"ab");
            panicking(&mut got);
            write(&mut got, b"cdefgh");
            panicking(&mut got);
            assert_eq!(got.len(), 2);
            assert_eq!(got.bytes(), want.bytes(), "batched: {batched}");
        }
    }

    #[test]
    fn failed_payload_rolls_back() {
        let mut b = FrameBuf::new();
        let s = b.begin(kind::CANCEL);
        let before = b.len();
        let r = b.put_payload(|v| {
            v.extend_from_slice(b"partial");
            Err("nope")
        });
        assert!(r.is_err());
        assert_eq!(b.len(), before);
        b.end(s);
    }
}
