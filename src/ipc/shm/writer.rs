//! Encoding a value into a frame, spilling it into a slot once it passes
//! the threshold.

use super::*;

/// The spill target of a [`PayloadWriter`].
#[derive(Debug)]
pub enum Spill<'a> {
    /// No shared memory: everything stays in the frame.
    None,
    /// The server: take a slot from the pool.
    Pool(&'a Arc<SlotPool>),
    /// The worker: the slot lent with item `.2`, if any; else a free slot
    /// it claims (handed to the server with the result).
    Lent(&'a Region, Option<SlotRef>, u64),
}

/// Where a payload ended up.
#[derive(Debug)]
pub enum Placed {
    /// In the frame.
    Inline,
    /// In a slot the server leased.
    Leased(Lease, usize),
    /// In the slot lent with the item, or one the worker claimed and
    /// handed over for it (worker side).
    Lent(SlotRef),
}

/// The `io::Write` a value is encoded into: the frame's buffer while the
/// value is small, a slot once it passes the threshold (the bytes written so
/// far move once; the rest is encoded straight into the slot). A value too
/// large for a slot, or with no slot free, stays in the frame.
#[derive(Debug)]
pub struct PayloadWriter<'a> {
    vec: &'a mut Vec<u8>,
    start: usize,
    threshold: usize,
    spill: Spill<'a>,
    slot: Option<(Target, usize)>,
    /// Where in the slot's data the value starts: after the item's input
    /// when the worker still views it, else 0.
    base: usize,
    /// The value so far is already in the lent slot, untouched: a byte
    /// block the worker got as a view of its input, preceded there by the
    /// same bytes the value wrote before it (slot, start in the slot's
    /// data, length). See [`PayloadWriter::in_place`].
    in_place: Option<(SlotRef, usize, usize)>,
    tried: bool,
}

#[derive(Debug)]
enum Target {
    Leased(Lease),
    Lent(SlotRef),
    /// Claimed by the worker; given up unless handed over by `finish`.
    Claimed(SlotRef),
}

impl<'a> PayloadWriter<'a> {
    /// Writes appended to `vec`, spilling to `spill` above `threshold`.
    pub fn new(vec: &'a mut Vec<u8>, threshold: usize, spill: Spill<'a>) -> Self {
        let start = vec.len();
        PayloadWriter {
            vec,
            start,
            threshold,
            spill,
            slot: None,
            base: 0,
            in_place: None,
            tried: false,
        }
    }

    /// A writer that only appends to `vec`.
    pub fn plain(vec: &'a mut Vec<u8>) -> Self {
        Self::new(vec, usize::MAX, Spill::None)
    }

    /// Appends bytes (infallible).
    pub fn extend_from_slice(&mut self, b: &[u8]) {
        self.put(b);
    }

    fn region(&self) -> Option<&Region> {
        match (&self.slot, &self.spill) {
            (Some((Target::Leased(l), _)), _) => Some(l.region()),
            (Some((Target::Lent(_) | Target::Claimed(_), _)), Spill::Lent(r, ..)) => Some(r),
            _ => None,
        }
    }

    fn slot_index(&self) -> Option<u32> {
        match &self.slot {
            Some((Target::Leased(l), _)) => Some(l.slot),
            Some((Target::Lent(r) | Target::Claimed(r), _)) => Some(r.slot),
            None => None,
        }
    }

    /// The common case inline (a small value going into the frame: no
    /// slot, nothing in place, under the threshold or past trying); the
    /// rest in [`PayloadWriter::put_slow`]. Encoders write a value in many
    /// small pieces, so this runs several times per item.
    #[inline]
    fn put(&mut self, b: &[u8]) {
        if self.slot.is_none()
            && self.in_place.is_none()
            && (self.tried || self.vec.len() - self.start + b.len() <= self.threshold)
        {
            self.vec.extend_from_slice(b);
            return;
        }
        self.put_slow(b);
    }

    fn put_slow(&mut self, b: &[u8]) {
        if let Some(c) = self.in_place.take() {
            self.materialize(c);
        }
        // Spill before a write that passes the threshold, so that a large
        // block (a byte payload) is copied once, into the slot.
        if !self.tried && self.vec.len() - self.start + b.len() > self.threshold {
            self.tried = true;
            if self.in_place(b) {
                return;
            }
            self.spill_now();
        }
        if let Some(pos) = self.slot.as_ref().map(|s| s.1) {
            let (Some(region), Some(slot)) = (self.region(), self.slot_index()) else {
                return;
            };
            if region.write(slot, self.base + pos, b) {
                if let Some(s) = self.slot.as_mut() {
                    s.1 += b.len();
                }
                return;
            }
            // Too large for a slot: back into the frame.
            let back = region
                .bytes(slot, SLOT_HEADER + self.base, pos)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            self.vec.extend_from_slice(&back);
            self.give_up();
        }
        self.vec.extend_from_slice(b);
    }

    /// A worker's result that is its input's bytes where they already lie:
    /// `b` is inside the item's lent slot (a `Bytes` view of the input), and
    /// the bytes the value wrote before it (its length prefix) are the ones
    /// just before it in the slot. Then nothing is copied: the result is
    /// described where it lies (the slot's value offset), provided nothing
    /// more is written (else [`PayloadWriter::materialize`]). An echo of a
    /// `Bytes` input, or of its tail with the same prefix, is the case.
    /// The bytes are only read again, never written, so views of them stay
    /// valid.
    fn in_place(&mut self, b: &[u8]) -> bool {
        let Spill::Lent(region, Some(r), id) = &self.spill else {
            return false;
        };
        let (region, r, id) = (*region, *r, *id);
        let Ok(input) = region.view(r) else {
            return false;
        };
        let (from, at) = (input.as_ptr() as usize, b.as_ptr() as usize);
        let k = self.vec.len() - self.start;
        if at < from || at - from < k || at - from + b.len() > input.len() {
            return false;
        }
        let at = at - from;
        if input[at - k..at] != self.vec[self.start..] {
            return false;
        }
        let start = region.value_offset(r.slot) + at - k;
        self.spill = Spill::Lent(region, None, id);
        self.vec.truncate(self.start);
        self.in_place = Some((r, start, k + b.len()));
        true
    }

    /// More is written after a value found in place: it is copied after the
    /// input (which is viewed) and continues there, or into the frame if it
    /// does not fit.
    fn materialize(&mut self, (r, start, len): (SlotRef, usize, usize)) {
        let Spill::Lent(region, ..) = &self.spill else {
            return;
        };
        let region = *region;
        let Some(src) = region.bytes(r.slot, SLOT_HEADER + start, len) else {
            return;
        };
        self.base = (r.len as usize).saturating_add(63) & !63;
        if region.write(r.slot, self.base, src) {
            self.slot = Some((Target::Lent(r), len));
        } else {
            self.vec.extend_from_slice(src);
        }
    }

    fn spill_now(&mut self) {
        let target = match &mut self.spill {
            Spill::None => None,
            Spill::Pool(pool) => pool.try_take().map(Target::Leased),
            Spill::Lent(region, lent, _) => match lent.take() {
                Some(r) => Some(Target::Lent(r)),
                // A large result of a small input: a free slot, if any.
                None => region.claim().map(Target::Claimed),
            },
        };
        let Some(target) = target else { return };
        let n = self.vec.len() - self.start;
        let ok = match (&target, &self.spill) {
            (Target::Leased(l), _) => l.region().write(l.slot, 0, &self.vec[self.start..]),
            (Target::Lent(r), Spill::Lent(region, ..)) => {
                // The worker still reads the input through views: the
                // result goes after it, never over it.
                if region.viewed(r.slot) {
                    self.base = (r.len as usize).saturating_add(63) & !63;
                }
                region.write(r.slot, self.base, &self.vec[self.start..])
            }
            (Target::Claimed(r), Spill::Lent(region, ..)) => {
                region.write(r.slot, 0, &self.vec[self.start..])
            }
            _ => false,
        };
        self.slot = Some((target, n));
        if ok {
            self.vec.truncate(self.start);
        } else {
            self.give_up();
        }
    }

    /// The value goes back to the frame: a slot the worker claimed is free
    /// again.
    fn give_up(&mut self) {
        if let (Some((Target::Claimed(r), _)), Spill::Lent(region, ..)) =
            (self.slot.take(), &self.spill)
        {
            region.disown(r.slot);
        }
    }

    /// Where the value ended up.
    #[inline]
    pub fn finish(mut self) -> Placed {
        self.placed()
    }

    /// [`PayloadWriter::finish`] without moving the writer (152 bytes, a
    /// `memcpy` per value): the writer is done with, and only dropped after.
    #[inline]
    pub(crate) fn placed(&mut self) -> Placed {
        if self.slot.is_none() && self.in_place.is_none() {
            // In the frame (nothing to give up on drop either).
            return Placed::Inline;
        }
        self.finish_slow()
    }

    fn finish_slow(&mut self) -> Placed {
        if let (Some((mut r, start, len)), Spill::Lent(region, ..)) =
            (self.in_place.take(), &self.spill)
        {
            region.set_value_offset(r.slot, start);
            r.len = len as u32;
            return Placed::Lent(r);
        }
        match (self.slot.take(), &self.spill) {
            (None, _) => Placed::Inline,
            (Some((Target::Leased(l), n)), _) => Placed::Leased(l, n),
            (Some((Target::Lent(mut r), n)), Spill::Lent(region, ..)) => {
                region.set_value_offset(r.slot, self.base);
                r.len = n as u32;
                Placed::Lent(r)
            }
            (Some((Target::Claimed(mut r), n)), Spill::Lent(region, _, id)) => {
                region.set_value_offset(r.slot, 0);
                region.hand(r.slot, *id);
                r.len = n as u32;
                Placed::Lent(r)
            }
            (Some((Target::Lent(mut r) | Target::Claimed(mut r), n)), _) => {
                r.len = n as u32;
                Placed::Lent(r)
            }
        }
    }
}

impl Drop for PayloadWriter<'_> {
    /// Not finished (the value failed to encode): a claimed slot is free
    /// again.
    fn drop(&mut self) {
        self.give_up();
    }
}

impl io::Write for PayloadWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.put(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
