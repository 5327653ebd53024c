//! Shared memory for large values: a region of fixed-size slots shared by
//! the server and one worker process.
//!
//! The server creates one region per worker connection (a `memfd`, mapped
//! shared) and passes its descriptor to the worker with the CONFIG frame
//! (`SCM_RIGHTS`). A value whose encoding passes a threshold is encoded
//! into a free slot instead of the frame, and the frame carries only a
//! [`SlotRef`] (slot, region tag, generation, length).
//!
//! The allocation state lives in the server's memory ([`SlotPool`]: free
//! list, generations, item -> slots), except for words of each slot's header
//! (all atomics): the worker's count of views of the slot, where the slot's
//! value starts, and an owner word through which either side claims a free
//! slot by compare-and-swap. The server takes slots for inputs; the worker
//! claims one only for a large result of a small input, and hands it over
//! for that item ([`SlotPool::result_view`] adopts it when the result is
//! read). A slot's life:
//!
//! ```text
//!   free ──take (server, encoding an item)──▶ leased ──bind(id) (send lock)──▶ sent
//!    ▲                                          │ item not sent: lease dropped     │
//!    │◀─────────────────────────────────────────┘                                  │
//!    │        worker decodes the input from the slot (a `Bytes` in it may be a     │
//!    │        view: see `view.rs`), and may write its result back into the same    │
//!    │        slot (same tag and generation; after the input while it is viewed)   ▼
//!    └──── release(id): result or skip read (server reader), after decoding ◀── answered
//!          (generation + 1, written to the slot header), or when the last
//!          `Bytes` view of the decoded result drops
//! ```
//!
//! A slot released while the worker still views it (zero-copy `Bytes`,
//! see [`decode_viewing`]) is not taken again until the views are gone; a
//! slot the worker claimed is freed with the item whose result it held. A
//! result decoded on the server side may be viewed too ([`ResultHold`]):
//! its slot is released only once the result's last view drops.
//!
//! A worker that dies takes nothing with it: its region is dropped with its
//! connection, and the restarted worker gets a new one. Every release bumps
//! the slot's generation, in the pool and in the slot's header, so a
//! descriptor kept past its slot's release no longer matches: reading it is
//! a typed [`ShmError::Stale`], never someone else's bytes.

use std::collections::HashMap;
use std::io;
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Bytes at the start of each slot: its header (the region tag, the
/// generation, the worker's views, where the value starts, who owns the
/// slot, and for which item the worker handed it over).
pub const SLOT_HEADER: usize = 32;

/// Default size of a value above which it travels in shared memory (64 KiB).
pub const DEFAULT_THRESHOLD: usize = 64 << 10;
/// Default number of slots per worker connection.
pub const DEFAULT_SLOTS: u32 = 8;
/// Default size of a slot, header included (4 MiB): larger values go by
/// the socket.
pub const DEFAULT_SLOT_SIZE: usize = 4 << 20;

/// How a process servlet uses shared memory (see
/// `ProcessServlet::shared_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmSettings {
    /// Values whose encoding is larger than this many bytes travel in a slot.
    pub threshold: usize,
    /// Slots per worker process (large values in flight at once; more wait
    /// for nothing: they go by the socket).
    pub slots: u32,
    /// Bytes per slot, header included: larger values go by the socket.
    pub slot_size: usize,
}

impl Default for ShmSettings {
    fn default() -> Self {
        ShmSettings {
            threshold: DEFAULT_THRESHOLD,
            slots: DEFAULT_SLOTS,
            slot_size: DEFAULT_SLOT_SIZE,
        }
    }
}

/// Where a value sits in a region: what a frame carries instead of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef {
    /// Slot index.
    pub slot: u32,
    /// The region's tag (random per region).
    pub tag: u32,
    /// The slot's generation when the value was written.
    pub gen_: u32,
    /// Length of the value in bytes.
    pub len: u32,
}

impl SlotRef {
    /// Size of a descriptor on the wire.
    pub const WIRE: usize = 16;

    /// The wire form: four little-endian u32.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.slot.to_le_bytes());
        b[4..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..12].copy_from_slice(&self.gen_.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Reads the wire form.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        SlotRef {
            slot: u(0),
            tag: u(4),
            gen_: u(8),
            len: u(12),
        }
    }
}

/// The shape of a region, sent to the worker in its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmConfig {
    /// Number of slots.
    pub slots: u32,
    /// Size of each slot, header included.
    pub slot_size: usize,
    /// Values whose encoding is larger than this go into a slot.
    pub threshold: usize,
    /// The region's tag.
    pub tag: u32,
}

/// What can go wrong with a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// The descriptor names a slot or a length outside the region.
    #[error("shared-memory descriptor out of range: slot {slot}, {len} bytes")]
    OutOfRange {
        /// Slot named.
        slot: u32,
        /// Length named.
        len: u32,
    },
    /// The slot was released (and maybe reused) since the descriptor was
    /// made, or the descriptor is of another region.
    #[error(
        "stale shared-memory descriptor: slot {slot} generation {gen_} (tag {tag:#x}), \
         the slot holds generation {held_gen} (tag {held_tag:#x})"
    )]
    Stale {
        /// Slot named.
        slot: u32,
        /// Tag in the descriptor.
        tag: u32,
        /// Generation in the descriptor.
        gen_: u32,
        /// Tag in the slot.
        held_tag: u32,
        /// Generation in the slot.
        held_gen: u32,
    },
    /// A frame carried a descriptor but the connection has no region.
    #[error("shared-memory descriptor on a connection without shared memory")]
    NoRegion,
}

mod fd;
mod pool;
mod region;
mod view;
mod writer;

pub use fd::{FrameWithFd, recv_frame_with_fd, send_with_fd};
pub use pool::{Lease, SlotPool};
pub use region::Region;
pub use view::{ResultHold, VIEW_MIN, decode_viewing, view_of};
pub use writer::{PayloadWriter, Placed, Spill};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_crosses_a_socket() {
        let pool = SlotPool::create(2, 4096, 64).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut frame = vec![4, 0, 0, 0, 2, b'a', b'b', b'c'];
        frame.extend_from_slice(&[5, 0, 0, 0, 3, 1, 2, 3, 4]);
        send_with_fd(&a, &frame, pool.region().fd()).unwrap();
        let (k, body, fd) = recv_frame_with_fd(&b, 100).unwrap().unwrap();
        assert_eq!((k, &body[..]), (2, &b"abc"[..]));
        let region = Region::open(fd.expect("an fd"), 2, 4096).unwrap();
        let lease = pool.try_take().unwrap();
        assert!(region.write(lease.slot(), 0, b"from the other side"));
        assert_eq!(lease.data(19), b"from the other side");
        let (k, body, fd) = recv_frame_with_fd(&b, 100).unwrap().unwrap();
        assert_eq!((k, &body[..], fd.is_none()), (3, &[1u8, 2, 3, 4][..], true));
    }

    #[test]
    fn a_stale_descriptor_is_rejected() {
        let pool = SlotPool::create(2, 4096, 64).unwrap();
        let lease = pool.try_take().unwrap();
        assert!(pool.region().write(lease.slot(), 0, b"hello"));
        let d = lease.slot_ref(5);
        assert_eq!(pool.region().view(d).unwrap(), b"hello");
        pool.bind(7, lease);
        assert_eq!(pool.in_use(), 1);
        pool.release(7);
        assert_eq!(pool.in_use(), 0);
        // Released: the old descriptor no longer reads, even before reuse.
        assert!(matches!(pool.region().view(d), Err(ShmError::Stale { .. })));
        // Reused: still stale.
        let again = pool.try_take().unwrap();
        let again2 = pool.try_take().unwrap();
        assert!(again.slot() == d.slot || again2.slot() == d.slot);
        assert!(matches!(pool.region().view(d), Err(ShmError::Stale { .. })));
        // Out of range.
        let bad = SlotRef { slot: 9, ..d };
        assert!(matches!(
            pool.region().view(bad),
            Err(ShmError::OutOfRange { .. })
        ));
        let long = SlotRef { len: 5000, ..d };
        assert!(matches!(
            pool.region().view(long),
            Err(ShmError::OutOfRange { .. })
        ));
        assert!(pool.try_take().is_none(), "two slots, both leased");
        drop((again, again2));
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_region_opened_from_its_fd_sees_the_same_bytes() {
        let pool = SlotPool::create(1, 1024, 8).unwrap();
        let fd = pool.region().fd().try_clone_to_owned().unwrap();
        let other = Region::open(fd, 1, 1024).unwrap();
        let lease = pool.try_take().unwrap();
        pool.region().write(0, 0, b"shared");
        assert_eq!(other.view(lease.slot_ref(6)).unwrap(), b"shared");
        assert!(Region::open(pool.region().fd().try_clone_to_owned().unwrap(), 2, 1024).is_err());
    }

    #[test]
    fn the_writer_spills_past_the_threshold_and_falls_back_when_full() {
        let pool = SlotPool::create(1, 256, 16).unwrap();
        let mut v = b"head".to_vec();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Pool(&pool));
        w.write_all(&[1; 10]).unwrap();
        w.write_all(&[2; 10]).unwrap();
        w.write_all(&[3; 30]).unwrap();
        let Placed::Leased(lease, n) = w.finish() else {
            panic!("expected a slot")
        };
        assert_eq!(v, b"head");
        assert_eq!(n, 50);
        let mut want = vec![1; 10];
        want.extend([2; 10]);
        want.extend([3; 30]);
        assert_eq!(lease.data(n), &want[..]);
        // No slot free: the frame keeps the value.
        let mut v2 = Vec::new();
        let mut w = PayloadWriter::new(&mut v2, 16, Spill::Pool(&pool));
        w.write_all(&[9; 40]).unwrap();
        assert!(matches!(w.finish(), Placed::Inline));
        assert_eq!(v2, vec![9; 40]);
        drop(lease);
        // Larger than a slot: back into the frame, slot freed.
        let mut v3 = Vec::new();
        let mut w = PayloadWriter::new(&mut v3, 16, Spill::Pool(&pool));
        for i in 0..30u8 {
            w.write_all(&[i; 10]).unwrap();
        }
        assert!(matches!(w.finish(), Placed::Inline));
        assert_eq!(v3.len(), 300);
        assert_eq!(&v3[290..], &[29; 10]);
        assert_eq!(&v3[..10], &[0; 10]);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_result_made_of_the_viewed_input_is_described_in_place() {
        let pool = SlotPool::create(1, 4096, 16).unwrap();
        let region = pool.region();
        let lease = pool.try_take().unwrap();
        // The input: a 2-byte prefix and 1000 bytes.
        let mut input = vec![0xAB, 0xCD];
        input.extend((0..1000u32).map(|i| (i % 251) as u8));
        assert!(region.write(lease.slot(), 0, &input));
        let d = lease.slot_ref(input.len());
        let after = (input.len() + 63) & !63;
        let block = &region.view(d).unwrap()[2..];

        // Same prefix, then the block: nothing is copied.
        let mut v = Vec::new();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Lent(region, Some(d), 1));
        w.write_all(&[0xAB, 0xCD]).unwrap();
        w.write_all(block).unwrap();
        let Placed::Lent(r) = w.finish() else {
            panic!("expected the lent slot")
        };
        assert!(v.is_empty());
        assert_eq!(region.value_offset(d.slot), 0);
        assert_eq!(region.view(r).unwrap(), &input[..]);
        assert_eq!(
            region.bytes(d.slot, SLOT_HEADER + after, 8).unwrap(),
            &[0; 8]
        );

        // Another prefix: copied (over the input, which is not viewed).
        let mut v = Vec::new();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Lent(region, Some(d), 1));
        w.write_all(&[0xAB, 0xCE]).unwrap();
        w.write_all(&block[..500]).unwrap();
        assert!(matches!(w.finish(), Placed::Lent(r) if r.len == 502));

        // The block then more bytes: continued after the input, which stays.
        assert!(region.write(lease.slot(), 0, &input));
        region.set_value_offset(d.slot, 0);
        let block = &region.view(d).unwrap()[2..];
        let mut v = Vec::new();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Lent(region, Some(d), 1));
        w.write_all(&[0xAB, 0xCD]).unwrap();
        w.write_all(block).unwrap();
        w.write_all(&[1, 2, 3]).unwrap();
        let Placed::Lent(r) = w.finish() else {
            panic!("expected the lent slot")
        };
        assert_eq!(region.value_offset(d.slot), after);
        let mut want = input.clone();
        want.extend([1, 2, 3]);
        assert_eq!(region.view(r).unwrap(), &want[..]);
        assert_eq!(
            region.bytes(d.slot, SLOT_HEADER, input.len()).unwrap(),
            &input[..]
        );
        drop(lease);
    }

    #[test]
    fn the_worker_claims_a_free_slot_for_a_result_and_hands_it_over() {
        let pool = SlotPool::create(2, 4096, 16).unwrap();
        let worker =
            Region::open(pool.region().fd().try_clone_to_owned().unwrap(), 2, 4096).unwrap();
        // The worker claims one slot (a large result of small item 5).
        let mut v = Vec::new();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Lent(&worker, None, 5));
        w.write_all(&[7; 100]).unwrap();
        let Placed::Lent(d) = w.finish() else {
            panic!("expected a claimed slot")
        };
        assert_eq!(d.len, 100);
        // The server cannot take it meanwhile: it gets the other one only.
        let other = pool.try_take().expect("one slot left");
        assert_ne!(other.slot(), d.slot);
        assert!(pool.try_take().is_none());
        // Not for another item, nor stale.
        assert!(matches!(
            pool.result_view(6, d),
            Err(ShmError::Stale { .. })
        ));
        let old = SlotRef {
            gen_: d.gen_ + 1,
            ..d
        };
        assert!(matches!(
            pool.result_view(5, old),
            Err(ShmError::Stale { .. })
        ));
        // Adopted with item 5's result, freed with it.
        assert_eq!(pool.result_view(5, d).unwrap(), &[7; 100][..]);
        assert_eq!(pool.result_view(5, d).unwrap(), &[7; 100][..], "again");
        assert_eq!(pool.in_use(), 2);
        pool.release(5);
        assert_eq!(pool.in_use(), 1);
        assert!(matches!(worker.view(d), Err(ShmError::Stale { .. })));
        let again = pool.try_take().expect("free after release");
        assert_eq!(again.slot(), d.slot);
        drop((other, again));

        // A claim given up (the value did not fit) is free again.
        let mut v = Vec::new();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Lent(&worker, None, 8));
        w.write_all(&[1; 5000]).unwrap();
        assert!(matches!(w.finish(), Placed::Inline));
        assert_eq!(v.len(), 5000);
        // So is one whose encoding failed (writer dropped unfinished).
        let mut v = Vec::new();
        let mut w = PayloadWriter::new(&mut v, 16, Spill::Lent(&worker, None, 9));
        w.write_all(&[1; 50]).unwrap();
        drop(w);
        let a = pool.try_take().unwrap();
        let b = pool.try_take().unwrap();
        drop((a, b));
        assert_eq!(pool.in_use(), 0);
    }
}
