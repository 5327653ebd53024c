//! Zero-copy views of a slot, for [`crate::Bytes`] values a worker decodes
//! from shared memory (its inputs), and the server too (results, on the
//! thread that delivers them: see "Results" below).
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
//!
//! # Results
//!
//! The server decodes a result that came in a slot the same way
//! ([`ResultHold::decode`]): a large `Bytes` in it is a view of the slot,
//! handed to the caller without a copy. The views of one result share its
//! [`ResultHold`], the item's claim on the slot, and the slot is released
//! (new generation, then free) only when the hold and the last view are
//! gone: until then it stays bound to the item, owned by the server, so
//! neither side writes it (the server takes only free slots; the worker
//! writes only into the slot lent with an item, or one it claims from
//! free ones). So a result never reads bytes of a reused slot.
//!
//! A result a caller keeps keeps its slot, so views are limited: at most
//! half the region's slots are kept by results ([`SlotPool::admit_view`]);
//! past that, a result's `Bytes` are copies (as with every other byte
//! type), so the inputs always have slots to go in however many results a
//! caller keeps. A view outlives its worker and the server: it holds the
//! pool, whose mapping lives as long as the pool; a dead worker's region
//! counts no more (a restarted worker gets a new one), and the slot is
//! simply unmapped with the last view.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;

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
    /// Where the value starts in the slot's data.
    start: usize,
    owner: Owner,
}

/// Who keeps the slot while views of it live.
enum Owner {
    /// The worker decoding an input: each view counts itself in the slot's
    /// header.
    Worker { region: Arc<Region>, slot: u32 },
    /// The server decoding a result: the views share the item's hold of
    /// its slot, released when the last of them drops.
    Server(Arc<Hold>),
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

fn with_source<R>(source: Source, decode: impl FnOnce() -> R) -> R {
    let prev = SOURCE.with(|s| s.borrow_mut().replace(source));
    let _scope = Scope(prev);
    decode()
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
        start: region.value_offset(d.slot),
        owner: Owner::Worker {
            region: region.clone(),
            slot: d.slot,
        },
    };
    Ok(with_source(source, || decode(bytes)))
}

/// The server's hold of an item's slot while the item's result, which
/// lies in it, is decoded (and, if the result has `Bytes` views of it, for
/// as long as they live): the slot is released (its descriptors made
/// stale, then free for reuse) when the hold and every view made from it
/// are gone.
pub struct ResultHold(Arc<Hold>);

struct Hold {
    pool: Arc<SlotPool>,
    id: u64,
    d: SlotRef,
    /// Counted in the pool's result views (see [`SlotPool::admit_view`]).
    viewed: AtomicBool,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if *self.viewed.get_mut() {
            self.pool.end_view();
        }
        self.pool.release(self.id);
    }
}

impl std::fmt::Debug for ResultHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultHold")
            .field("id", &self.0.id)
            .field("d", &self.0.d)
            .finish()
    }
}

impl ResultHold {
    /// Holds item `id`'s slot, whose result `d` describes (checked by
    /// [`SlotPool::result_view`] first); released when dropped.
    pub fn new(pool: Arc<SlotPool>, id: u64, d: SlotRef) -> Self {
        ResultHold(Arc::new(Hold {
            pool,
            id,
            d,
            viewed: AtomicBool::new(false),
        }))
    }

    /// The result's bytes (empty if the descriptor no longer matches,
    /// which cannot happen while the item holds the slot).
    pub fn bytes(&self) -> &[u8] {
        self.0.pool.region().view(self.0.d).unwrap_or(&[])
    }

    /// Runs `decode` on the result's bytes, letting `Bytes` values of at
    /// least [`VIEW_MIN`] bytes decoded by it be views of the slot instead
    /// of copies (module docs: "Results").
    pub fn decode<R>(self, decode: impl FnOnce(&[u8]) -> R) -> R {
        let bytes = self.bytes();
        let from = bytes.as_ptr() as usize;
        let source = Source {
            from,
            to: from + bytes.len(),
            start: self.0.pool.region().value_offset(self.0.d.slot),
            owner: Owner::Server(self.0.clone()),
        };
        with_source(source, || decode(bytes))
    }
}

/// The owner behind a zero-copy `Bytes` of a result: a range of its
/// item's slot, kept (not released) while any such view lives.
struct ResultView {
    hold: Arc<Hold>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for ResultView {
    fn as_ref(&self) -> &[u8] {
        // Checked when made (the range lies in the result); the slot stays
        // bound to the item, unwritten, while the hold lives.
        self.hold
            .pool
            .region()
            .bytes(self.hold.d.slot, SLOT_HEADER + self.start, self.len)
            .unwrap_or(&[])
    }
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
        match &src.owner {
            Owner::Worker { region, slot } => Some(::bytes::Bytes::from_owner(SlotView::new(
                region.clone(),
                *slot,
                start,
                bytes.len(),
            ))),
            Owner::Server(hold) => {
                // Counted once per result, whatever number of views it has.
                if !hold.viewed.load(Ordering::Relaxed) {
                    if !hold.pool.admit_view() {
                        return None;
                    }
                    hold.viewed.store(true, Ordering::Relaxed);
                }
                Some(::bytes::Bytes::from_owner(ResultView {
                    hold: hold.clone(),
                    start,
                    len: bytes.len(),
                }))
            }
        }
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

    #[test]
    fn a_result_view_keeps_its_slot_and_half_the_pool_at_most() {
        let pool = SlotPool::create(4, 1 << 16, 64).unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        // Items 1..=3, each with a result in its own slot.
        let mut holds = Vec::new();
        for id in 1..=3u64 {
            let lease = pool.try_take().unwrap();
            assert!(pool.region().write(lease.slot(), 0, &data));
            let d = lease.slot_ref(data.len());
            pool.bind(id, lease);
            assert_eq!(pool.result_view(id, d).unwrap(), &data[..]);
            holds.push((ResultHold::new(pool.clone(), id, d), d));
        }
        assert_eq!(pool.in_use(), 3);
        let mut views = Vec::new();
        for (i, (hold, d)) in holds.into_iter().enumerate() {
            let (view, copy) = hold.decode(|b| (view_of(&b[10..]), view_of(&data)));
            assert!(copy.is_none(), "bytes of another buffer");
            // Two results (half of four slots) may keep theirs.
            assert_eq!(view.is_some(), i < 2, "result {i}");
            match view {
                Some(v) => {
                    assert_eq!(&v[..], &data[10..]);
                    assert_eq!(
                        pool.region().view(d).unwrap().as_ptr(),
                        v.as_ptr().wrapping_sub(10)
                    );
                    views.push((v, d));
                }
                // Not viewed: released with the hold.
                None => assert!(matches!(pool.region().view(d), Err(ShmError::Stale { .. }))),
            }
        }
        assert_eq!((pool.in_use(), pool.kept_by_views()), (2, 2));
        // Outside a decode: no view.
        assert!(view_of(&views[0].0).is_none());
        // A kept slot is neither reused nor stale; the others are taken.
        let a = pool.try_take().unwrap();
        let b = pool.try_take().unwrap();
        assert!(pool.try_take().is_none());
        let kept: Vec<u32> = views.iter().map(|(_, d)| d.slot).collect();
        assert!(!kept.contains(&a.slot()) && !kept.contains(&b.slot()));
        drop((a, b));
        let (v, d) = views.remove(0);
        let again = v.clone();
        drop(v);
        assert_eq!(pool.in_use(), 2, "a clone keeps it");
        assert_eq!(&again[..], &data[10..]);
        drop(again);
        assert!(matches!(pool.region().view(d), Err(ShmError::Stale { .. })));
        assert_eq!((pool.in_use(), pool.kept_by_views()), (1, 1));
        drop(views);
        assert_eq!((pool.in_use(), pool.kept_by_views()), (0, 0));
    }
}
