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
    /// The worker: the slot lent with the item, if any.
    Lent(&'a Region, Option<SlotRef>),
}

/// Where a payload ended up.
#[derive(Debug)]
pub enum Placed {
    /// In the frame.
    Inline,
    /// In a slot the server leased.
    Leased(Lease, usize),
    /// In the slot lent with the item (worker side).
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
            (Some((Target::Lent(_), _)), Spill::Lent(r, _)) => Some(r),
            _ => None,
        }
    }

    fn slot_index(&self) -> Option<u32> {
        match &self.slot {
            Some((Target::Leased(l), _)) => Some(l.slot),
            Some((Target::Lent(r), _)) => Some(r.slot),
            None => None,
        }
    }

    fn put(&mut self, b: &[u8]) {
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
            self.slot = None;
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
        let Spill::Lent(region, Some(r)) = &self.spill else {
            return false;
        };
        let (region, r) = (*region, *r);
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
        self.spill = Spill::Lent(region, None);
        self.vec.truncate(self.start);
        self.in_place = Some((r, start, k + b.len()));
        true
    }

    /// More is written after a value found in place: it is copied after the
    /// input (which is viewed) and continues there, or into the frame if it
    /// does not fit.
    fn materialize(&mut self, (r, start, len): (SlotRef, usize, usize)) {
        let Spill::Lent(region, _) = &self.spill else {
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
            Spill::Lent(_, lent) => lent.take().map(Target::Lent),
        };
        let Some(target) = target else { return };
        let n = self.vec.len() - self.start;
        let ok = match &target {
            Target::Leased(l) => l.region().write(l.slot, 0, &self.vec[self.start..]),
            Target::Lent(r) => match &self.spill {
                Spill::Lent(region, _) => {
                    // The worker still reads the input through views: the
                    // result goes after it, never over it.
                    if region.viewed(r.slot) {
                        self.base = (r.len as usize).saturating_add(63) & !63;
                    }
                    region.write(r.slot, self.base, &self.vec[self.start..])
                }
                _ => false,
            },
        };
        if ok {
            self.vec.truncate(self.start);
            self.slot = Some((target, n));
        }
    }

    /// Where the value ended up.
    pub fn finish(self) -> Placed {
        if let (Some((mut r, start, len)), Spill::Lent(region, _)) = (self.in_place, &self.spill) {
            region.set_value_offset(r.slot, start);
            r.len = len as u32;
            return Placed::Lent(r);
        }
        match self.slot {
            None => Placed::Inline,
            Some((Target::Leased(l), n)) => Placed::Leased(l, n),
            Some((Target::Lent(mut r), n)) => {
                if let Spill::Lent(region, _) = &self.spill {
                    region.set_value_offset(r.slot, self.base);
                }
                r.len = n as u32;
                Placed::Lent(r)
            }
        }
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
