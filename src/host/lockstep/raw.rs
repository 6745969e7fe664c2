//! The raw cache: one slab page whose slots the driver hands out itself
//! through the slab hooks, as a kernel with its own slab allocator does,
//! so slot misuse (interior pointers, the slot cut off by the page's end,
//! slots still allocated or in quarantine) reaches the runtime directly.

use crate::error::SlabError;
use crate::hooks::{Ip, Size};
use super::{Kind, Lockstep, Object, Op};
use crate::cache::CacheId;
use crate::hooks::Freed;
use crate::host::sim::{SimKernel, MAX_ORDER};
use crate::mapper::PAGE_SIZE;
use crate::platform::SlabRef;
use std::vec::Vec;

/// A raw slot as the driver knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Available,
    Allocated,
    /// Freed and certainly still in quarantine.
    Quarantined,
    /// Freed; in quarantine or already released (the default quarantine
    /// may release it at any free).
    Freed,
}

/// The raw cache in both kernels.
pub(super) struct Raw {
    ids: (CacheId, CacheId),
    /// The slab page in each kernel.
    pages: (usize, usize),
    order: u32,
    /// The first slot in each kernel.
    base: (usize, usize),
    slot: usize,
    object_size: usize,
    slots: Vec<Slot>,
}

impl Raw {
    /// Create the cache and lay out its slab in both kernels.
    pub(super) fn new(full: &mut SimKernel, hybrid: &mut SimKernel, (size, align): (usize, usize)) -> Self {
        let [f, h] = [full, hybrid].map(|k| {
            let id = k.kasan.cache_create("raw", size, align).expect("raw cache");
            let info = k.kasan.cache_info(id).expect("raw cache info");
            let fits = |o: u32| ((PAGE_SIZE << o) - info.slab_offset) / info.slot_size;
            let order = (0..=MAX_ORDER).find(|&o| fits(o) >= 2).expect("a raw slab order");
            let page = k.alloc_pages(order).expect("raw slab page");
            k.kasan.slab_page_alloc(id, page, order).expect("raw slab page hook");
            let base = page + info.slab_offset;
            k.plat.add_slab(page, PAGE_SIZE << order, SlabRef { cache: id, base });
            (id, page, order, base, info.slot_size, fits(order))
        });
        Raw {
            ids: (f.0, h.0),
            pages: (f.1, h.1),
            order: f.2,
            base: (f.3, h.3),
            slot: f.4,
            object_size: size,
            slots: std::vec![Slot::Available; f.5],
        }
    }

    /// Slot `i` (one past the last: the slot cut off by the page's end)
    /// plus `delta` bytes, in each kernel.
    fn at(&self, i: usize, delta: usize) -> (usize, usize) {
        let off = i * self.slot + delta;
        (self.base.0 + off, self.base.1 + off)
    }

    /// The raw object at `fa` was freed.
    pub(super) fn freed(&mut self, fa: usize, certain: bool) {
        let i = (fa - self.base.0) / self.slot;
        self.slots[i] = if certain { Slot::Quarantined } else { Slot::Freed };
    }

    /// The quarantine was emptied.
    pub(super) fn drained(&mut self) {
        for s in &mut self.slots {
            if *s != Slot::Allocated {
                *s = Slot::Available;
            }
        }
    }

    /// The quarantine may have let some objects go (a heap reclaim): a
    /// slot certainly in quarantine may be available again.
    pub(super) fn uncertain(&mut self) {
        for s in &mut self.slots {
            if *s == Slot::Quarantined {
                *s = Slot::Freed;
            }
        }
    }

    /// Give the slab page back and destroy the cache (every slot freed and drained).
    pub(super) fn teardown(&self, full: &mut SimKernel, hybrid: &mut SimKernel) {
        assert!(self.slots.iter().all(|&s| s == Slot::Available), "raw slots left: {:?}", self.slots);
        for (k, id, page) in [(full, self.ids.0, self.pages.0), (hybrid, self.ids.1, self.pages.1)] {
            k.plat.remove_slab(page, PAGE_SIZE << self.order);
            assert_eq!(k.kasan.cache_destroy(id), Ok(()), "raw cache destroy");
            assert_eq!(k.kasan.slab_page_free(page, self.order), Ok(()), "raw slab page free");
            assert_eq!(k.free_pages(page, self.order), Ok(()), "raw slab page to the page allocator");
        }
    }
}

impl Lockstep {
    /// The raw cache's id in each kernel.
    pub(super) fn raw_ids(&self) -> (CacheId, CacheId) {
        self.raw.ids
    }

    pub(super) fn raw_alloc(&mut self, slot: u16, delta: usize, size: usize, op: &Op) {
        let r = &self.raw;
        let i = slot as usize % (r.slots.len() + 1);
        let delta = delta % r.slot;
        let (fa, ha) = r.at(i, delta);
        let page_end = r.pages.0 + (PAGE_SIZE << r.order);
        let want = if !fa.is_multiple_of(crate::shadow::GRANULE) {
            Some(Err(SlabError::Unaligned))
        } else if fa >= page_end {
            None // on the next page, whatever it is: refused somehow
        } else if size > r.object_size {
            Some(Err(SlabError::BadSize))
        } else if delta != 0 || i == r.slots.len() {
            Some(Err(SlabError::NotSlot))
        } else {
            match r.slots[i] {
                Slot::Available => Some(Ok(())),
                Slot::Allocated => Some(Err(SlabError::SlotInUse)),
                Slot::Quarantined => Some(Err(SlabError::SlotQuarantined)),
                Slot::Freed => None,
            }
        };
        let (f, h) = (self.full.kasan.slab_alloc(r.ids.0, fa, Size(size)), self.hybrid.kasan.slab_alloc(r.ids.1, ha, Size(size)));
        assert_eq!(f, h, "{op:?}: full and hybrid disagree");
        match want {
            Some(w) => assert_eq!(f, w, "{op:?}"),
            // a released slot may be reused, one in quarantine not
            None if r.slots.get(i) == Some(&Slot::Freed) => {
                assert!(matches!(f, Ok(()) | Err(SlabError::SlotQuarantined)), "{op:?}: {f:?}")
            }
            None => assert!(f.is_err(), "{op:?}: a slot past the slab was accepted"),
        }
        if f.is_ok() {
            let span = self.raw.slot;
            self.raw.slots[i] = Slot::Allocated;
            let object_size = self.raw.object_size;
            self.add(Object { f: fa, h: ha, size, kind: Kind::Raw, object_size, span });
        }
    }

    pub(super) fn raw_free(&mut self, slot: u16, delta: usize, op: &Op) {
        let r = &self.raw;
        let i = slot as usize % (r.slots.len() + 1);
        let (fa, ha) = r.at(i, delta % r.slot);
        let ids = r.ids;
        let target = self.live_at(fa).filter(|&j| self.live[j].kind == Kind::Raw);
        let f = self.full.kasan.slab_free(ids.0, fa, Ip(self.full.ip()));
        let h = self.hybrid.kasan.slab_free(ids.1, ha, Ip(self.hybrid.ip()));
        if f == Ok(Freed::Quarantined) {
            // what the kernel does after a free into the quarantine
            self.full.pump_quarantine();
            self.hybrid.pump_quarantine();
        }
        assert!(f.is_err() || f == Ok(Freed::Quarantined), "{op:?}: {f:?}");
        self.free_outcome(op, target, None, f.map(drop), h.map(drop));
    }
}
