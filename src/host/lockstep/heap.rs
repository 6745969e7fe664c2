//! Allocations and frees through the model kernels' allocators: kmalloc,
//! krealloc, ksize, named caches, pages, stacks, vmalloc, and frees of
//! any pointer.

use super::{zero_or_null, Kind, Lockstep, Named, Object, Op, Target};
use crate::error::HookError;
use crate::cache::CacheError;
use crate::host::sim::{KMALLOC_MAX_CACHE, MAX_ORDER, STACK_ORDER, ZERO_SIZE_PTR};
use crate::mapper::PAGE_SIZE;
use crate::report::BugType;
use std::vec::Vec;

/// Named caches a sequence may create.
const MAX_NAMED: usize = 12;

impl Lockstep {
    /// The object a kmalloc of `size` bytes made at `f`/`h`.
    fn kmalloc_object(&self, f: usize, h: usize, size: usize) -> Object {
        if size > KMALLOC_MAX_CACHE {
            let order = (0..=MAX_ORDER).find(|&o| PAGE_SIZE << o >= size).expect("a page-backed kmalloc's order");
            return Object { f, h, size, kind: Kind::Large(order), object_size: size, span: PAGE_SIZE << order };
        }
        let id = self.full.kmalloc_cache(size).expect("a kmalloc cache");
        let info = self.full.kasan.cache_info(id).expect("kmalloc cache info");
        Object { f, h, size, kind: Kind::Kmalloc, object_size: info.object_size, span: info.slot_size }
    }

    pub(super) fn kmalloc(&mut self, size: usize, op: &Op) {
        let (f, h) = (self.full.kmalloc(size), self.hybrid.kmalloc(size));
        self.kmalloced(size, f, h, op);
    }

    /// What a kmalloc of `size` bytes gave (also krealloc of nothing).
    fn kmalloced(&mut self, size: usize, f: Option<usize>, h: Option<usize>, op: &Op) {
        self.same_place(op, f, h);
        if size == 0 {
            assert_eq!(f, Some(ZERO_SIZE_PTR), "{op:?}");
        } else if size > PAGE_SIZE << MAX_ORDER {
            assert_eq!(f, None, "{op:?}");
        }
        if let (Some(f), Some(h), true) = (f, h, size != 0) {
            let o = self.kmalloc_object(f, h, size);
            self.add(o);
        }
    }

    pub(super) fn cache_create(&mut self, size: usize, op: &Op) {
        if self.caches.len() == MAX_NAMED {
            return;
        }
        let (f, h) = (self.full.kmem_cache_create("fuzz", size), self.hybrid.kmem_cache_create("fuzz", size));
        assert_eq!(f.is_ok(), h.is_ok(), "{op:?}: {f:?} vs {h:?}");
        match (f, h) {
            (Ok(fid), Ok(hid)) => {
                let info = self.full.kasan.cache_info(fid).expect("cache info");
                let slot = info.slot_size;
                self.caches.push(Named { ids: (fid, hid), object_size: size, slot, alive: true });
            }
            (Err(e), _) => {
                assert!(size == 0 || size > 1 << 20, "{op:?}: refused ({e:?})");
                assert!(matches!(e, HookError::BadSize | HookError::Cache(CacheError::BadSize)), "{op:?}: {e:?}");
            }
            _ => unreachable!(),
        }
    }

    /// Named cache number `c`, if any was created.
    fn named(&self, c: u8) -> Option<(usize, Named)> {
        let n = self.caches.len();
        (n != 0).then(|| (c as usize % n, self.caches[c as usize % n]))
    }

    pub(super) fn cache_alloc(&mut self, cache: u8, size: usize, op: &Op) {
        let Some((i, c)) = self.named(cache) else { return };
        let (f, h) = (self.full.cache_alloc(c.ids.0, size), self.hybrid.cache_alloc(c.ids.1, size));
        self.same_place(op, f, h);
        if !c.alive || size > c.object_size {
            assert_eq!(f, None, "{op:?}: a destroyed cache or too large a size");
        }
        if let (Some(f), Some(h)) = (f, h) {
            self.add(Object { f, h, size, kind: Kind::Cache(i), object_size: c.object_size, span: c.slot });
        }
    }

    pub(super) fn cache_destroy(&mut self, cache: u8, op: &Op) {
        let Some((i, c)) = self.named(cache) else { return };
        let (f, h) = (self.full.kmem_cache_destroy(c.ids.0), self.hybrid.kmem_cache_destroy(c.ids.1));
        // Its quarantined objects were released (even if it stays busy).
        self.quarantine_released();
        let want = if !c.alive {
            Err(HookError::Cache(CacheError::AlreadyDestroyed))
        } else if self.live.iter().any(|o| o.kind == Kind::Cache(i)) {
            Err(HookError::Cache(CacheError::Busy))
        } else {
            Ok(())
        };
        assert_eq!((f, h), (want, want), "{op:?}");
        if want.is_ok() {
            self.caches[i].alive = false;
        }
    }

    pub(super) fn alloc_pages(&mut self, order: u32, op: &Op) {
        let (f, h) = (self.full.alloc_pages(order), self.hybrid.alloc_pages(order));
        self.same_place(op, f, h);
        if order > MAX_ORDER {
            assert_eq!(f, None, "{op:?}");
        }
        if let (Some(f), Some(h)) = (f, h) {
            self.add(Object { f, h, size: PAGE_SIZE << order, kind: Kind::Pages(order), object_size: 0, span: PAGE_SIZE << order });
        }
    }

    pub(super) fn stack_alloc(&mut self, op: &Op) {
        let (f, h) = (self.full.stack_alloc(), self.hybrid.stack_alloc());
        self.same_place(op, f, h);
        if let (Some(f), Some(h)) = (f, h) {
            let span = PAGE_SIZE << STACK_ORDER;
            self.add(Object { f, h, size: span, kind: Kind::Stack, object_size: 0, span });
        }
    }

    pub(super) fn vmalloc(&mut self, size: usize, op: &Op) {
        let (f, h) = (self.full.vmalloc(size), self.hybrid.vmalloc(size));
        self.same_place(op, f, h);
        let window = self.full.kasan.layout().vmalloc.len();
        if size == 0 || size > window {
            assert_eq!(f, None, "{op:?}");
        }
        if let (Some(f), Some(h)) = (f, h) {
            let span = (size.div_ceil(PAGE_SIZE) + 1) * PAGE_SIZE;
            self.add(Object { f, h, size, kind: Kind::Vmalloc, object_size: 0, span });
        }
    }

    /// Free live object `i` the way its kind is freed: no report allowed.
    fn free_object(&mut self, i: usize, op: &Op) {
        let o = self.live[i];
        let mut backing = Vec::new();
        let (f, h) = match o.kind {
            Kind::Kmalloc | Kind::Large(_) | Kind::Raw => (self.full.kfree(o.f), self.hybrid.kfree(o.h)),
            Kind::Cache(c) => {
                let ids = self.caches[c].ids;
                (self.full.cache_free(ids.0, o.f), self.hybrid.cache_free(ids.1, o.h))
            }
            Kind::Pages(order) => (self.full.free_pages(o.f, order), self.hybrid.free_pages(o.h, order)),
            Kind::Stack => (self.full.stack_free(o.f), self.hybrid.stack_free(o.h)),
            Kind::Heap | Kind::HeapPages => self.heap_free_both(o.f, o.h),
            Kind::Vmalloc => {
                backing = self.full.vmalloc_pages(o.f).unwrap_or_default().to_vec();
                self.full.vfree(o.f);
                self.hybrid.vfree(o.h);
                (Ok(()), Ok(()))
            }
        };
        assert_eq!(self.verdict(op, &f, &h), None, "{op:?}: free of live {o:?} was reported");
        self.retire(i, &backing);
    }

    pub(super) fn free(&mut self, pick: u16, op: &Op) {
        if !self.live.is_empty() {
            self.free_object(pick as usize % self.live.len(), op);
        }
    }

    /// The live object kfree may free at `fa` (any slab object or large kmalloc).
    fn kfreeable(&self, fa: usize) -> Option<usize> {
        self.live_at(fa).filter(|&i| self.live[i].kind.slab() || matches!(self.live[i].kind, Kind::Large(_)))
    }

    pub(super) fn kfree(&mut self, at: Target, sensitive: bool, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let target = self.kfreeable(fa);
        let (f, h) = if sensitive {
            (self.full.kfree_sensitive(fa), self.hybrid.kfree_sensitive(ha))
        } else {
            (self.full.kfree(fa), self.hybrid.kfree(ha))
        };
        if zero_or_null(fa) {
            assert_eq!(self.verdict(op, &f, &h), None, "{op:?}");
        } else {
            self.free_outcome(op, target, None, f, h);
        }
    }

    pub(super) fn krealloc(&mut self, at: Target, size: usize, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let target = self.kfreeable(fa);
        let (f, h) = (self.full.krealloc(fa, size), self.hybrid.krealloc(ha, size));
        if zero_or_null(fa) {
            return self.kmalloced(size, f, h, op);
        }
        self.same_place(op, f, h);
        if size == 0 {
            // kfree, then ZERO_SIZE_PTR whatever kfree said
            assert_eq!(f, Some(ZERO_SIZE_PTR), "{op:?}");
            match target {
                Some(i) => self.retire(i, &[]),
                None => self.expect_reports(1),
            }
            return;
        }
        // The sim's own allocations (raw objects come from the hooks directly).
        let target = target.filter(|&i| self.live[i].kind != Kind::Raw);
        match target {
            _ if self.poisoned(fa) => {
                assert_eq!(f, None, "{op:?}: a poisoned pointer");
                self.expect_reports(1);
            }
            None => {
                assert_eq!(f, None, "{op:?}: not a live allocation");
                self.expect_reports(1);
            }
            Some(i) => {
                let o = self.live[i];
                let in_place = match o.kind {
                    Kind::Large(_) => size > KMALLOC_MAX_CACHE && size <= o.span,
                    _ => size <= o.object_size,
                };
                if in_place {
                    assert_eq!(f, Some(fa), "{op:?}: resized in place");
                    self.live[i].size = size;
                    let kind = BugType::SlabOutOfBounds;
                    self.oracle.object(o.f, size, o.f + o.span, kind);
                } else if let (Some(nf), Some(nh)) = (f, h) {
                    self.retire(i, &[]);
                    let n = self.kmalloc_object(nf, nh, size);
                    self.add(n);
                }
            }
        }
    }

    pub(super) fn ksize(&mut self, at: Target, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let (f, h) = (self.full.ksize(fa), self.hybrid.ksize(ha));
        assert_eq!(f, h, "{op:?}: full and hybrid disagree");
        let target = self.kfreeable(fa).filter(|_| !zero_or_null(fa));
        match target {
            Some(i) => {
                let o = self.live[i];
                let usable = if o.kind.slab() { o.object_size } else { o.span };
                assert_eq!(f, usable, "{op:?}: ksize of {o:?}");
                self.live[i].size = usable;
                self.oracle.object(o.f, usable, o.f + o.span, BugType::SlabOutOfBounds);
            }
            None => {
                assert_eq!(f, 0, "{op:?}: not a live allocation");
                if !zero_or_null(fa) && self.poisoned(fa) {
                    self.expect_reports(1);
                }
            }
        }
    }

    /// Whether `fa` is a page backing a live vmalloc area (the model
    /// kernel's own plain page: freeing it is not modelled).
    fn vmalloc_backing(&self, fa: usize) -> bool {
        self.live
            .iter()
            .filter(|o| o.kind == Kind::Vmalloc)
            .any(|o| self.full.vmalloc_pages(o.f).is_some_and(|p| p.contains(&fa)))
    }

    pub(super) fn free_pages(&mut self, at: Target, order: u32, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let target = self.live_at(fa).filter(|&i| self.live[i].kind == Kind::Pages(order));
        if target.is_none() && order == 0 && self.vmalloc_backing(fa) {
            return;
        }
        let kind = Self::page_free_bug(self.full.pages_free(fa, order));
        let (f, h) = (self.full.free_pages(fa, order), self.hybrid.free_pages(ha, order));
        self.free_outcome(op, target, Some(kind), f, h);
    }

    /// What a free of pages that are no live object of its kind reports.
    fn page_free_bug(already_free: bool) -> BugType {
        if already_free {
            BugType::DoubleFree
        } else {
            BugType::InvalidFree
        }
    }

    pub(super) fn stack_free(&mut self, at: Target, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let target = self.live_at(fa).filter(|&i| self.live[i].kind == Kind::Stack);
        let kind = Self::page_free_bug(self.full.pages_free(fa, STACK_ORDER));
        let (f, h) = (self.full.stack_free(fa), self.hybrid.stack_free(ha));
        self.free_outcome(op, target, Some(kind), f, h);
    }

    pub(super) fn vfree(&mut self, at: Target, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        match self.live_at(fa).filter(|&i| self.live[i].kind == Kind::Vmalloc) {
            Some(i) => self.free_object(i, op),
            // an unknown area: the model kernel ignores it, as Linux warns and returns
            None => {
                self.full.vfree(fa);
                self.hybrid.vfree(ha);
            }
        }
    }

    pub(super) fn cache_free(&mut self, cache: u8, at: Target, op: &Op) {
        let Some((c, named)) = self.named(cache) else { return };
        let Some((fa, ha)) = self.resolve(at) else { return };
        let target = self.live_at(fa).filter(|&i| self.live[i].kind == Kind::Cache(c));
        let (f, h) = (self.full.cache_free(named.ids.0, fa), self.hybrid.cache_free(named.ids.1, ha));
        self.free_outcome(op, target, None, f, h);
    }
}
