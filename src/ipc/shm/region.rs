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
    fd: OwnedFd,
}

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
        (slots as usize)
            .checked_mul(slot_size)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| invalid("shared-memory region too large"))
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
        let at = slot as usize * self.slot_size + offset;
        // In bounds: at + len <= slots * slot_size = self.len.
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

    /// Writes the slot's header (tag, generation).
    pub(super) fn set_header(&self, slot: u32, tag: u32, gen_: u32) {
        let mut h = [0u8; SLOT_HEADER];
        h[0..4].copy_from_slice(&tag.to_le_bytes());
        h[4..8].copy_from_slice(&gen_.to_le_bytes());
        let _ = self.write_raw(slot, 0, &h);
    }

    #[allow(unsafe_code)]
    fn write_raw(&self, slot: u32, offset: usize, data: &[u8]) -> bool {
        let Some(dst) = self.at(slot, offset, data.len()) else {
            return false;
        };
        // SAFETY: as in `write`: in bounds, and the caller owns the slot.
        unsafe { std::ptr::copy(data.as_ptr(), dst, data.len()) };
        true
    }

    /// The slot's header: (tag, generation).
    pub fn header(&self, slot: u32) -> Option<(u32, u32)> {
        let h = self.bytes(slot, 0, 8)?;
        Some((
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        ))
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
        self.bytes(d.slot, SLOT_HEADER, len)
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
