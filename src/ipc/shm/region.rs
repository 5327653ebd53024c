//! The shared-memory region: a `memfd` of fixed-size slots, mapped shared,
//! and views of its slots.

use super::*;

/// A mapped shared-memory region of `slots` slots of `slot_size` bytes.
///
/// Every access is bounds-checked; which side may touch a slot at a given
/// time is the protocol's business (module docs).
pub struct Region {
    base: NonNull<u8>,
    len: NonZeroUsize,
    pub(super) slots: u32,
    pub(super) slot_size: usize,
    /// Distance between slots: `slot_size` rounded up to 64 bytes, so
    /// every header is aligned for its atomic words.
    stride: usize,
    fd: OwnedFd,
}

/// Words of a slot's header (each a `u32` used only atomically): the
/// region's tag, the slot's generation (both written by the server), the
/// worker's count of live views of the slot, where in the slot's data its
/// current value starts, who owns the slot ([`FREE`], [`SERVER`], [`WORKER`],
/// [`HANDED`]), and the item a handed slot holds the result of (two words).
const TAG: usize = 0;
const GEN: usize = 1;
const VIEWS: usize = 2;
const OFFSET: usize = 3;
const OWNER: usize = 4;
const ITEM_LO: usize = 5;
const ITEM_HI: usize = 6;

/// Owner word: nobody (either side may claim it, by compare-and-swap).
const FREE: u32 = 0;
/// Owner word: the server (an item's input, or a result it adopted).
const SERVER: u32 = 1;
/// Owner word: the worker, writing a result of a small input into it.
const WORKER: u32 = 2;
/// Owner word: the worker wrote the result of the item in `ITEM` into it;
/// the server adopts it when it reads that result.
const HANDED: u32 = 3;

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("slots", &self.slots)
            .field("slot_size", &self.slot_size)
            .finish()
    }
}

// SAFETY: `Region` owns its mapping (unmapped only in `Drop`); the raw
// pointer is never handed out except as bounds-checked slices whose use is
// governed by the slot protocol, so it may move and be shared across threads
// like a `Box<[u8]>` used through `&self` copies.
#[allow(unsafe_code)]
unsafe impl Send for Region {}
// SAFETY: as above; all writes go through `ptr::copy_nonoverlapping` into
// bounds-checked slot ranges that the caller owns by the protocol.
#[allow(unsafe_code)]
unsafe impl Sync for Region {}

pub(super) fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

impl Region {
    /// Creates a region (a new `memfd`, sized and mapped) of `slots` slots
    /// of `slot_size` bytes each (header included).
    pub fn create(slots: u32, slot_size: usize) -> io::Result<Region> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(c"mpserver-shm", MFdFlags::MFD_CLOEXEC).map_err(io::Error::from)?;
        let len = Self::check(slots, slot_size)?;
        let file = std::fs::File::from(fd);
        file.set_len(len.get() as u64)?;
        Self::map(OwnedFd::from(file), slots, slot_size)
    }

    /// Maps a region received from the server (`fd` of a region made by
    /// [`Region::create`] with the same shape).
    pub fn open(fd: OwnedFd, slots: u32, slot_size: usize) -> io::Result<Region> {
        let len = Self::check(slots, slot_size)?;
        let file = std::fs::File::from(fd);
        if file.metadata()?.len() < len.get() as u64 {
            return Err(invalid("shared-memory region smaller than announced"));
        }
        Self::map(OwnedFd::from(file), slots, slot_size)
    }

    fn check(slots: u32, slot_size: usize) -> io::Result<NonZeroUsize> {
        if slots == 0 || slot_size <= SLOT_HEADER {
            return Err(invalid("bad shared-memory region shape"));
        }
        Self::stride_of(slot_size)
            .and_then(|s| s.checked_mul(slots as usize))
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| invalid("shared-memory region too large"))
    }

    fn stride_of(slot_size: usize) -> Option<usize> {
        Some(slot_size.checked_add(63)? & !63)
    }

    #[allow(unsafe_code)]
    fn map(fd: OwnedFd, slots: u32, slot_size: usize) -> io::Result<Region> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let len = Self::check(slots, slot_size)?;
        // SAFETY: a fresh shared mapping of a file we hold, at an address the
        // kernel chooses: it aliases no Rust object. The file is at least
        // `len` bytes (set or checked by the callers), so no access within
        // `len` faults.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Region {
            base: ptr.cast(),
            len,
            slots,
            slot_size,
            stride: Self::stride_of(slot_size).unwrap_or(slot_size),
            fd,
        })
    }

    /// The region's file descriptor (to pass to the worker).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes a slot holds besides its header.
    pub fn capacity(&self) -> usize {
        self.slot_size - SLOT_HEADER
    }

    /// Start of slot `slot`'s bytes (after its header), `slot` checked.
    fn at(&self, slot: u32, offset: usize, len: usize) -> Option<*mut u8> {
        if slot >= self.slots || offset.checked_add(len)? > self.slot_size {
            return None;
        }
        let at = slot as usize * self.stride + offset;
        // In bounds: at + len <= (slots - 1) * stride + slot_size <= self.len.
        Some(self.base.as_ptr().wrapping_add(at))
    }

    /// Copies `data` into `slot` at `offset` (from the start of its data,
    /// after the header). False if it does not fit.
    #[allow(unsafe_code)]
    pub fn write(&self, slot: u32, offset: usize, data: &[u8]) -> bool {
        let Some(dst) = offset
            .checked_add(SLOT_HEADER)
            .and_then(|o| self.at(slot, o, data.len()))
        else {
            return false;
        };
        // SAFETY: `dst..dst + data.len()` lies inside the mapping (`at`
        // checked it); `data` is a Rust slice, so it cannot overlap the
        // mapping's bytes unless the caller passed a view of this very
        // region, which `copy` handles; writers of a slot own it by the
        // protocol, so no other thread of this process reads it meanwhile.
        unsafe { std::ptr::copy(data.as_ptr(), dst, data.len()) };
        true
    }

    /// Header word `word` of `slot` (see [`TAG`] and the others).
    #[allow(unsafe_code)]
    fn word(&self, slot: u32, word: usize) -> Option<&AtomicU32> {
        debug_assert!(word < SLOT_HEADER / 4);
        let p = self.at(slot, word * 4, 4)?;
        // SAFETY: in bounds of the mapping (`at`), which lives as long as
        // `&self`; aligned to 4, since the mapping is page-aligned and slots
        // start at multiples of 64; header bytes are only ever accessed
        // through atomics, by both processes (never through slices: data
        // starts after `SLOT_HEADER`).
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    /// Writes the slot's header (tag, generation) and puts its value at
    /// the start of its data again (server side, when the slot is freed).
    pub(super) fn set_header(&self, slot: u32, tag: u32, gen_: u32) {
        if let (Some(t), Some(g), Some(o)) = (
            self.word(slot, TAG),
            self.word(slot, GEN),
            self.word(slot, OFFSET),
        ) {
            t.store(tag, Ordering::Relaxed);
            o.store(0, Ordering::Relaxed);
            // Release: a reader that sees the generation sees the rest.
            g.store(gen_, Ordering::Release);
        }
    }

    /// The slot's header: (tag, generation).
    pub fn header(&self, slot: u32) -> Option<(u32, u32)> {
        let g = self.word(slot, GEN)?.load(Ordering::Acquire);
        Some((self.word(slot, TAG)?.load(Ordering::Relaxed), g))
    }

    /// Whether the worker holds views of the slot's bytes (zero-copy
    /// `Bytes`): then the slot may not be written, nor reused.
    pub fn viewed(&self, slot: u32) -> bool {
        // Acquire: pairs with the release of the last view, so the view's
        // reads happen before whatever the caller then writes.
        self.word(slot, VIEWS)
            .is_some_and(|v| v.load(Ordering::Acquire) != 0)
    }

    /// One more live view of the slot (worker side).
    pub(super) fn hold(&self, slot: u32) {
        if let Some(v) = self.word(slot, VIEWS) {
            v.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One view of the slot fewer (worker side).
    pub(super) fn unhold(&self, slot: u32) {
        if let Some(v) = self.word(slot, VIEWS) {
            v.fetch_sub(1, Ordering::Release);
        }
    }

    /// Claims a free slot for the server (false if the worker has it).
    pub(super) fn own(&self, slot: u32) -> bool {
        self.word(slot, OWNER).is_some_and(|o| {
            o.compare_exchange(FREE, SERVER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Whether nobody owns the slot.
    pub(super) fn is_free(&self, slot: u32) -> bool {
        self.word(slot, OWNER)
            .is_some_and(|o| o.load(Ordering::Acquire) == FREE)
    }

    /// Gives a slot up (either side, once done with it).
    pub(super) fn disown(&self, slot: u32) {
        if let Some(o) = self.word(slot, OWNER) {
            o.store(FREE, Ordering::Release);
        }
    }

    /// Worker side: claims a free slot for a result, as a descriptor of
    /// its tag and generation (length 0); `None` if none is free.
    pub fn claim(&self) -> Option<SlotRef> {
        (0..self.slots).rev().find_map(|slot| {
            let o = self.word(slot, OWNER)?;
            o.compare_exchange(FREE, WORKER, Ordering::Acquire, Ordering::Relaxed)
                .ok()?;
            let (tag, gen_) = self.header(slot)?;
            Some(SlotRef {
                slot,
                tag,
                gen_,
                len: 0,
            })
        })
    }

    /// Worker side: the claimed `slot` holds the result of item `id`; the
    /// server adopts it when it reads the result.
    pub(super) fn hand(&self, slot: u32, id: u64) {
        if let (Some(lo), Some(hi), Some(o)) = (
            self.word(slot, ITEM_LO),
            self.word(slot, ITEM_HI),
            self.word(slot, OWNER),
        ) {
            lo.store(id as u32, Ordering::Relaxed);
            hi.store((id >> 32) as u32, Ordering::Relaxed);
            // Release: the result and the item are written before.
            o.store(HANDED, Ordering::Release);
        }
    }

    /// Server side: takes over `slot` if the worker handed it over with
    /// the result of item `id`.
    pub(super) fn adopt(&self, slot: u32, id: u64) -> bool {
        let (Some(lo), Some(hi), Some(o)) = (
            self.word(slot, ITEM_LO),
            self.word(slot, ITEM_HI),
            self.word(slot, OWNER),
        ) else {
            return false;
        };
        if o.load(Ordering::Acquire) != HANDED {
            return false;
        }
        let item = lo.load(Ordering::Relaxed) as u64 | ((hi.load(Ordering::Relaxed) as u64) << 32);
        item == id
            && o.compare_exchange(HANDED, SERVER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Where the slot's current value starts in its data (0 unless the
    /// worker wrote its result after an input it still views).
    pub(super) fn value_offset(&self, slot: u32) -> usize {
        self.word(slot, OFFSET)
            .map_or(0, |o| o.load(Ordering::Relaxed) as usize)
    }

    /// Sets where the slot's value starts (worker side, before it sends
    /// the descriptor).
    pub(super) fn set_value_offset(&self, slot: u32, offset: usize) {
        if let Some(o) = self.word(slot, OFFSET) {
            o.store(offset as u32, Ordering::Relaxed);
        }
    }

    #[allow(unsafe_code)]
    pub(super) fn bytes(&self, slot: u32, offset: usize, len: usize) -> Option<&[u8]> {
        let p = self.at(slot, offset, len)?;
        // SAFETY: in bounds of the mapping, which lives as long as `&self`.
        // The bytes are not written by this process while the slice lives:
        // the slot belongs to the reading side by the protocol (the peer
        // wrote it before sending the descriptor, and writes to it again
        // only after the reader released it).
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// The value a descriptor names, after checking that it is in range
    /// and that the slot still holds the descriptor's tag and generation.
    pub fn view(&self, d: SlotRef) -> Result<&[u8], ShmError> {
        let len = d.len as usize;
        if d.slot >= self.slots || len > self.capacity() {
            return Err(ShmError::OutOfRange {
                slot: d.slot,
                len: d.len,
            });
        }
        let (held_tag, held_gen) = self.header(d.slot).ok_or(ShmError::OutOfRange {
            slot: d.slot,
            len: d.len,
        })?;
        if (held_tag, held_gen) != (d.tag, d.gen_) {
            return Err(ShmError::Stale {
                slot: d.slot,
                tag: d.tag,
                gen_: d.gen_,
                held_tag,
                held_gen,
            });
        }
        let start = self.value_offset(d.slot);
        if start.saturating_add(len) > self.capacity() {
            return Err(ShmError::OutOfRange {
                slot: d.slot,
                len: d.len,
            });
        }
        self.bytes(d.slot, SLOT_HEADER + start, len)
            .ok_or(ShmError::OutOfRange {
                slot: d.slot,
                len: d.len,
            })
    }
}

impl Drop for Region {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map` with this base and length and
        // is unmapped once; no slice of it outlives `&self` (all are
        // borrowed from the region).
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len.get()) };
    }
}
