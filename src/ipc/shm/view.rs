//! Zero-copy views of a slot, for [`crate::Bytes`] values a worker decodes
//! from shared memory.
//!
//! # How a `Bytes` finds its slot
//!
//! serde gives a `Deserialize` impl the bytes of a value, never the buffer
//! that owns them, so `Bytes` cannot tell by itself that its bytes lie in a
//! slot that must be kept. The worker therefore decodes an input that came
//! in a slot inside [`decode_viewing`], which records, for the duration of
//! that one decode and on that thread only, the address range of the
//! slot's value and who owns it. `Bytes`'s visitor asks [`view_of`] whether
//! the bytes it is given lie inside that range; if they do, it returns a
//! reference-counted view of the same bytes in the slot instead of a copy.
//!
//! This context changes nothing else: any other type (`Vec<u8>`,
//! `serde_bytes::ByteBuf`, `String`, ...) decodes exactly as without it, a
//! `Bytes` decoded anywhere else (another thread, another buffer, outside
//! the decode) is a copy as always, and the view holds the same bytes the
//! copy would. The context is set and cleared around one decode (also when
//! the decode panics), and nested decodes of other buffers are unaffected
//! because the check is by address. The alternatives were worse: a private
//! newtype name recognised by the codec would need a wrapper around every
//! part of two codecs' deserializers (sequences, maps, enums), and a
//! borrowing `Deserialize<'de>` would force `'de` lifetimes on every
//! worker's input type.
//!
//! # A view keeps its slot
//!
//! Each view counts itself in the slot's header (a word only the worker
//! writes). While the count is not zero:
//!
//! * the worker writes a large result for the item *after* the input in the
//!   same slot, never over it (or by the socket if it does not fit);
//! * the server, when the item is answered, makes the slot's descriptors
//!   stale (new generation) but does not reuse the slot: it stays in use
//!   until the worker's last view of it drops, and is found free the next
//!   time the server takes or releases a slot.
//!
//! So a worker that keeps its inputs (in a cache, say) keeps their slots:
//! once every slot is kept, further large values go by the socket — slower,
//! never blocked, never wrong (the server never waits for a slot). A worker
//! that dies frees everything: its region goes with its connection, and the
//! restarted process gets a new one.
//!
//! Only byte blocks of at least [`VIEW_MIN`] bytes become views; smaller
//! ones are copied (cheaper than a view, and they do not pin a slot).

use std::cell::RefCell;

use super::*;

/// Smallest `Bytes` decoded as a view of its slot; smaller ones are copied.
pub const VIEW_MIN: usize = 4096;

/// The owner behind a zero-copy `Bytes`: a range of a slot, counted in the
/// slot's header while it lives.
struct SlotView {
    region: Arc<Region>,
    slot: u32,
    /// Start in the slot's data, and length.
    start: usize,
    len: usize,
}

impl SlotView {
    fn new(region: Arc<Region>, slot: u32, start: usize, len: usize) -> Self {
        region.hold(slot);
        SlotView {
            region,
            slot,
            start,
            len,
        }
    }
}

impl AsRef<[u8]> for SlotView {
    fn as_ref(&self) -> &[u8] {
        // Checked when made (the range lies in the slot's value); the slot
        // is not written while this view counts in its header.
        self.region
            .bytes(self.slot, SLOT_HEADER + self.start, self.len)
            .unwrap_or(&[])
    }
}

impl Drop for SlotView {
    fn drop(&mut self) {
        self.region.unhold(self.slot);
    }
}

/// The value being decoded on this thread from a slot (see the module docs).
struct Source {
    /// Address range of the value's bytes in this process.
    from: usize,
    to: usize,
    region: Arc<Region>,
    slot: u32,
    /// Where the value starts in the slot's data.
    start: usize,
}

thread_local! {
    static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
}

/// Restores the previous context when a decode ends (or unwinds).
struct Scope(Option<Source>);

impl Drop for Scope {
    fn drop(&mut self) {
        let prev = self.0.take();
        SOURCE.with(|s| *s.borrow_mut() = prev);
    }
}

/// Runs `decode` on the bytes `d` names in `region`, letting `Bytes`
/// values of at least [`VIEW_MIN`] bytes decoded by it be views of the slot
/// instead of copies (module docs).
pub fn decode_viewing<R>(
    region: &Arc<Region>,
    d: SlotRef,
    decode: impl FnOnce(&[u8]) -> R,
) -> Result<R, ShmError> {
    let bytes = region.view(d)?;
    let from = bytes.as_ptr() as usize;
    let source = Source {
        from,
        to: from + bytes.len(),
        region: region.clone(),
        slot: d.slot,
        start: region.value_offset(d.slot),
    };
    let prev = SOURCE.with(|s| s.borrow_mut().replace(source));
    let _scope = Scope(prev);
    Ok(decode(bytes))
}

/// A view of `bytes` in the slot being decoded on this thread, if they lie
/// inside its value (module docs); `None` otherwise (the caller copies).
pub fn view_of(bytes: &[u8]) -> Option<::bytes::Bytes> {
    if bytes.len() < VIEW_MIN {
        return None;
    }
    let at = bytes.as_ptr() as usize;
    SOURCE.with(|s| {
        let s = s.borrow();
        let src = s.as_ref()?;
        if at < src.from || at.checked_add(bytes.len())? > src.to {
            return None;
        }
        let start = src.start + (at - src.from);
        let view = SlotView::new(src.region.clone(), src.slot, start, bytes.len());
        Some(::bytes::Bytes::from_owner(view))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_holds_its_slot_and_reads_the_same_bytes() {
        let pool = SlotPool::create(1, 1 << 16, 64).unwrap();
        let region = Arc::new(
            Region::open(pool.region().fd().try_clone_to_owned().unwrap(), 1, 1 << 16).unwrap(),
        );
        let lease = pool.try_take().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert!(pool.region().write(lease.slot(), 0, &data));
        let d = lease.slot_ref(data.len());
        pool.bind(1, lease);

        // Outside a decode: no view.
        assert!(view_of(&data).is_none());
        let (view, small, outside) = decode_viewing(&region, d, |b| {
            (view_of(&b[100..9000]), view_of(&b[..100]), view_of(&data))
        })
        .unwrap();
        let view = view.expect("a view of the slot");
        assert!(small.is_none(), "below VIEW_MIN: copied");
        assert!(outside.is_none(), "bytes of another buffer: copied");
        assert_eq!(&view[..], &data[100..9000]);
        let base = region.view(d).unwrap().as_ptr() as usize;
        assert_eq!(view.as_ptr() as usize, base + 100, "no copy");
        // After the decode: no view again.
        assert!(view_of(region.view(d).unwrap()).is_none());
        assert!(region.viewed(d.slot));

        // Released while viewed: stale at once, but not reusable.
        pool.release(1);
        assert!(matches!(region.view(d), Err(ShmError::Stale { .. })));
        assert!(pool.try_take().is_none(), "viewed slot not reused");
        assert_eq!(pool.in_use(), 1);
        let clone = view.clone();
        drop(view);
        assert!(pool.try_take().is_none(), "a clone still views it");
        assert_eq!(&clone[..10], &data[100..110]);
        drop(clone);
        assert!(!region.viewed(d.slot));
        let again = pool.try_take().expect("free once the views are gone");
        assert_eq!(again.slot(), d.slot);
        drop(again);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn the_context_ends_with_the_decode_even_on_panic() {
        let pool = SlotPool::create(1, 1 << 16, 64).unwrap();
        let region = Arc::new(
            Region::open(pool.region().fd().try_clone_to_owned().unwrap(), 1, 1 << 16).unwrap(),
        );
        let lease = pool.try_take().unwrap();
        assert!(pool.region().write(lease.slot(), 0, &[5u8; 8192]));
        let d = lease.slot_ref(8192);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode_viewing(&region, d, |_| panic!("decode failed"))
        }));
        assert!(r.is_err());
        let bytes = region.view(d).unwrap();
        assert!(view_of(bytes).is_none(), "context cleared by the unwind");
        assert!(!region.viewed(d.slot));
    }
}
