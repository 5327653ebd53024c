//! The server's slot pool: which slots of a region are free, each slot's
//! generation, which item holds which slot, taking slots for inputs,
//! adopting the slot a worker handed over for a result, and releasing them
//! (see the module docs of `shm` for a slot's life).

use super::*;

/// The server's side of a region: which slots are free, each slot's
/// generation, and which item holds which slot.
#[derive(Debug)]
pub struct SlotPool {
    region: Region,
    tag: u32,
    threshold: usize,
    state: Mutex<PoolState>,
    in_use: AtomicUsize,
    /// Results whose `Bytes` views keep their slot after the result was
    /// decoded (see [`SlotPool::admit_view`]).
    views: AtomicUsize,
    /// Also counted here (a worker's status), if given, until the pool
    /// is closed or dropped.
    also: Mutex<Option<Arc<AtomicUsize>>>,
}

#[derive(Debug)]
struct PoolState {
    free: Vec<u32>,
    /// Released by the server while the worker still viewed them: free
    /// once the worker's views are gone (checked when a slot is taken or
    /// released).
    deferred: Vec<u32>,
    /// Found claimed by the worker (for a result) when the server tried to
    /// take them: free again when the worker gives them up, adopted when
    /// it hands them over with a result.
    claimed: Vec<u32>,
    gens: Vec<u32>,
    /// Item -> the slot of its input.
    bound: HashMap<u64, u32>,
    /// Item -> the slot the worker handed its result over in.
    results: HashMap<u64, u32>,
}

/// A slot taken from a [`SlotPool`]; released when dropped unless bound to
/// an item ([`SlotPool::bind`]).
#[derive(Debug)]
pub struct Lease {
    pool: Arc<SlotPool>,
    pub(super) slot: u32,
    gen_: u32,
}

impl Lease {
    /// Slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// A descriptor of `len` bytes in this slot.
    pub fn slot_ref(&self, len: usize) -> SlotRef {
        SlotRef {
            slot: self.slot,
            tag: self.pool.tag,
            gen_: self.gen_,
            len: len as u32,
        }
    }

    /// The region the slot is in.
    pub fn region(&self) -> &Region {
        &self.pool.region
    }

    /// The first `len` bytes of the slot's data (the lease holder's own
    /// writes: the slot was not sent yet).
    pub fn data(&self, len: usize) -> &[u8] {
        self.pool
            .region
            .bytes(self.slot, SLOT_HEADER, len.min(self.pool.region.capacity()))
            .unwrap_or(&[])
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.free(self.slot);
    }
}

fn random_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32 | 1
}

impl SlotPool {
    /// A new region of `slots` slots of `slot_size` bytes; values above
    /// `threshold` bytes go into it.
    pub fn create(slots: u32, slot_size: usize, threshold: usize) -> io::Result<Arc<SlotPool>> {
        Self::counted(slots, slot_size, threshold, None)
    }

    /// Like [`SlotPool::create`], also counting the slots in use in `also`
    /// (until the pool is dropped).
    pub fn counted(
        slots: u32,
        slot_size: usize,
        threshold: usize,
        also: Option<Arc<AtomicUsize>>,
    ) -> io::Result<Arc<SlotPool>> {
        let region = Region::create(slots, slot_size)?;
        let tag = random_tag();
        // Generations start away from zero, so a zeroed slot header never
        // matches a descriptor.
        let gens = vec![1u32; slots as usize];
        for s in 0..slots {
            region.set_header(s, tag, 1);
        }
        Ok(Arc::new(SlotPool {
            region,
            tag,
            threshold,
            state: Mutex::new(PoolState {
                free: (0..slots).rev().collect(),
                deferred: Vec::new(),
                claimed: Vec::new(),
                gens,
                bound: HashMap::new(),
                results: HashMap::new(),
            }),
            in_use: AtomicUsize::new(0),
            views: AtomicUsize::new(0),
            also: Mutex::new(also),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Values larger than this (encoded) go into a slot.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The shape to send to the worker.
    pub fn config(&self) -> ShmConfig {
        ShmConfig {
            slots: self.region.slots,
            slot_size: self.region.slot_size,
            threshold: self.threshold,
            tag: self.tag,
        }
    }

    /// Slots taken now (leased, bound to an item, or released while the
    /// worker still viewed them and not yet found free again).
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Whether one more result may keep its slot through zero-copy `Bytes`
    /// views (counted until [`SlotPool::end_view`]): at most half the
    /// slots, so that results a caller keeps never leave the worker's
    /// inputs without slots (a result past that is copied out instead).
    pub fn admit_view(&self) -> bool {
        let most = self.region.slots as usize / 2;
        self.views
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v < most).then_some(v + 1)
            })
            .is_ok()
    }

    /// A result admitted by [`SlotPool::admit_view`] gave its slot up.
    pub fn end_view(&self) {
        self.views.fetch_sub(1, Ordering::Relaxed);
    }

    /// Results whose views keep their slot now.
    pub fn kept_by_views(&self) -> usize {
        self.views.load(Ordering::Relaxed)
    }

    /// Takes a free slot, or `None` when all are in use (the value then
    /// goes by the socket: the pool never makes a sender wait).
    pub fn try_take(self: &Arc<Self>) -> Option<Lease> {
        let (slot, gen_) = {
            let mut st = self.lock();
            let slot = loop {
                if st.free.is_empty() {
                    self.reclaim(&mut st);
                }
                let slot = st.free.pop()?;
                // The worker may have claimed it for a result meanwhile.
                if self.region.own(slot) {
                    break slot;
                }
                st.claimed.push(slot);
            };
            // Counted under the state lock (see `close`).
            self.count(1);
            (slot, st.gens[slot as usize])
        };
        Some(Lease {
            pool: self.clone(),
            slot,
            gen_,
        })
    }

    /// The slot goes with item `id` until [`SlotPool::release`].
    pub fn bind(&self, id: u64, lease: Lease) {
        let slot = lease.slot;
        std::mem::forget(lease);
        if let Some(old) = self.lock().bound.insert(id, slot) {
            // An id is bound once; should it not be, its old slot is freed.
            self.free(old);
        }
    }

    /// The slot bound to item `id` (its input's), as a descriptor's tag and generation
    /// (what a descriptor in the item's result must match).
    pub fn bound(&self, id: u64) -> Option<SlotRef> {
        let st = self.lock();
        let slot = *st.bound.get(&id)?;
        Some(SlotRef {
            slot,
            tag: self.tag,
            gen_: st.gens[slot as usize],
            len: 0,
        })
    }

    /// Item `id` is answered: frees its slot, if it had one.
    pub fn release(&self, id: u64) {
        // Most items never had a slot: no lock for them while none is taken.
        if self.in_use.load(Ordering::Acquire) == 0 {
            return;
        }
        let (slot, result) = {
            let mut st = self.lock();
            if !st.deferred.is_empty() {
                self.reclaim(&mut st);
            }
            (st.bound.remove(&id), st.results.remove(&id))
        };
        for slot in [slot, result].into_iter().flatten() {
            self.free(slot);
        }
    }

    /// The bytes of item `id`'s result, which the worker put in shared
    /// memory as `d`: in the slot of the item's input, or in a slot the
    /// worker claimed and handed over for it, which the item then holds
    /// until [`SlotPool::release`]. Anything else is stale.
    pub fn result_view(&self, id: u64, d: SlotRef) -> Result<&[u8], ShmError> {
        let ok = {
            let mut st = self.lock();
            let current = |slot: u32, st: &PoolState| {
                (slot, self.tag, st.gens.get(slot as usize).copied())
                    == (d.slot, d.tag, Some(d.gen_))
            };
            if [st.bound.get(&id), st.results.get(&id)]
                .into_iter()
                .flatten()
                .any(|&slot| current(slot, &st))
            {
                true
            } else if d.tag == self.tag
                && current(d.slot, &st)
                && !st.results.contains_key(&id)
                && self.region.adopt(d.slot, id)
            {
                st.free.retain(|s| *s != d.slot);
                st.claimed.retain(|s| *s != d.slot);
                st.results.insert(id, d.slot);
                self.count(1);
                true
            } else {
                false
            }
        };
        if ok {
            return self.region.view(d);
        }
        let held = self.bound(id);
        Err(ShmError::Stale {
            slot: d.slot,
            tag: d.tag,
            gen_: d.gen_,
            held_tag: held.map_or(0, |h| h.tag),
            held_gen: held.map_or(0, |h| h.gen_),
        })
    }

    fn free(&self, slot: u32) {
        let mut st = self.lock();
        let g = &mut st.gens[slot as usize];
        *g = g.wrapping_add(1).max(1);
        let gen_ = *g;
        // Under the lock, so the header and the pool agree before the slot
        // can be taken again. The new generation makes every descriptor of
        // the slot stale at once, viewed or not.
        self.region.set_header(slot, self.tag, gen_);
        if self.region.viewed(slot) {
            // The worker still reads it through views (`Bytes` decoded
            // without a copy): taken again only once they are all gone.
            st.deferred.push(slot);
        } else {
            self.region.disown(slot);
            st.free.push(slot);
            self.count(-1);
        }
    }

    /// Moves the deferred slots the worker no longer views, and the claimed
    /// ones it gave up, to the free list (under the state lock).
    fn reclaim(&self, st: &mut PoolState) {
        let mut i = 0;
        while i < st.deferred.len() {
            let slot = st.deferred[i];
            if self.region.viewed(slot) {
                i += 1;
            } else {
                st.deferred.swap_remove(i);
                self.region.disown(slot);
                st.free.push(slot);
                self.count(-1);
            }
        }
        let mut i = 0;
        while i < st.claimed.len() {
            let slot = st.claimed[i];
            if self.region.is_free(slot) {
                st.claimed.swap_remove(i);
                st.free.push(slot);
            } else {
                i += 1;
            }
        }
    }

    /// Counts a slot taken (+1) or freed (-1); called under the state lock.
    fn count(&self, d: isize) {
        if d > 0 {
            // Release: pairs with the check in `release` (the reader learns
            // of the item only after this, through the socket).
            self.in_use.fetch_add(1, Ordering::Release);
        } else {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(a) = &*self.also() {
            if d > 0 {
                a.fetch_add(1, Ordering::Relaxed);
            } else {
                a.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn also(&self) -> MutexGuard<'_, Option<Arc<AtomicUsize>>> {
        self.also.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's connection ended: no slot of this region is used again
    /// (the next process gets a new region), so none counts as in use any
    /// more, whoever still holds a descriptor. The mapping goes when the
    /// last holder of the pool drops it.
    pub fn close(&self) {
        // Under the state lock, so no `free` or `try_take` runs between the
        // read of `in_use` and the counter leaving.
        let st = self.lock();
        if let Some(a) = self.also().take() {
            a.fetch_sub(self.in_use.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        drop(st);
    }
}

impl Drop for SlotPool {
    fn drop(&mut self) {
        self.close();
    }
}
