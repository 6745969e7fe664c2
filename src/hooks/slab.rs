//! Slab hooks: caches, slab pages, objects (alloc, free, quarantine,
//! ksize, resize).

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Register a cache; the slab must lay out slots of
    /// [`Kasan::cache_info`]`.slot_size` bytes.
    pub fn cache_create(&self, name: &'static str, object_size: usize, align: usize) -> Result<CacheId, SlabError> {
        Ok(self.inner.lock().caches.create(name, object_size, align, self.on())?)
    }

    /// A cache's layout and counters.
    pub fn cache_info(&self, id: CacheId) -> Result<CacheInfo, CacheError> {
        self.inner.lock().caches.get(id).copied()
    }

    /// Destroy a cache: every object must have been freed and released from
    /// quarantine (see [`Kasan::quarantine_release_cache`]). A second
    /// destroy is [`CacheError::AlreadyDestroyed`] and changes nothing.
    pub fn cache_destroy(&self, id: CacheId) -> Result<(), SlabError> {
        Ok(self.inner.lock().caches.destroy(id)?)
    }

    /// A new slab page (`2^order` pages at `base`) of cache `id`: its shadow
    /// is poisoned as redzone until objects are allocated.
    pub fn slab_page_alloc(&self, id: CacheId, base: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(base, order)?;
        let mut inner = self.inner.lock();
        if !self.plain(pfn, count) {
            return Err(PageError::WrongPageState);
        }
        let cache = *inner.caches.live(id)?;
        self.track_pages(&mut inner, pfn, count, PageKind::Slab);
        let end = base + (count << 12);
        self.fill_shadow(base, end, SLAB_REDZONE);
        let mut slot = base + cache.slab_offset;
        while slot + cache.slot_size <= end {
            // SAFETY: the slot lies inside the slab page the kernel just
            // handed over; nothing else uses its metadata bytes yet.
            unsafe { write_meta(&cache, slot, ObjMeta { cache: id.0, ..ObjMeta::EMPTY }) };
            slot += cache.slot_size;
        }
        Ok(())
    }

    /// A slab page goes back to the page allocator (all its objects free
    /// and released from quarantine). `base` and `order` must be the whole
    /// slab's.
    pub fn slab_page_free(&self, base: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(base, order)?;
        let mut inner = self.inner.lock();
        if !self.block_of(pfn, count, PageKind::Slab) {
            return Err(PageError::WrongPageState);
        }
        self.untrack_pages(&mut inner, pfn, count);
        Ok(())
    }

    /// The slab handed out the slot at `ptr` for a `size`-byte request.
    pub fn slab_alloc(&self, id: CacheId, ptr: usize, size: Size) -> Result<(), SlabError> {
        let size = size.0;
        if !self.on() {
            return Ok(());
        }
        if !ptr.is_multiple_of(GRANULE) {
            return Err(SlabError::Unaligned);
        }
        let pfn = self.pages.pfn(ptr).ok_or(SlabError::NotRam)?;
        let mut inner = self.inner.lock();
        if self.pages.get(pfn).kind != PageKind::Slab {
            return Err(SlabError::WrongPageState);
        }
        let cache = *inner.caches.live(id)?;
        if size > cache.object_size {
            return Err(SlabError::BadSize);
        }
        if !self.is_slot(id, &cache, ptr) {
            return Err(SlabError::NotSlot);
        }
        self.obj_alloc(&mut inner, id, &cache, ptr, size, 0)
    }

    /// Hand out the slot at `ptr` (a slot of `cache`, checked by the
    /// caller) for a `size`-byte object: unpoison it, poison the rest of the
    /// slot as redzone, record the allocation stack (trimmed to start at
    /// `from` when it is on the stack, see [`Kasan::save_stack_from`]).
    pub(crate) fn obj_alloc(
        &self,
        inner: &mut Inner<M>,
        id: CacheId,
        cache: &CacheInfo,
        ptr: usize,
        size: usize,
        from: usize,
    ) -> Result<(), SlabError> {
        // SAFETY: `ptr` starts a slot of a live slab page of this cache
        // (the caller checked), so its metadata is mapped slab memory.
        let meta = unsafe { read_meta(cache, ptr) };
        match meta.state() {
            ObjState::Available => {}
            ObjState::Allocated => return Err(SlabError::SlotInUse),
            // Its metadata links the quarantine: reusing it would cut the list.
            ObjState::Quarantined => return Err(SlabError::SlotQuarantined),
        }
        self.unpoison(ptr, size);
        self.fill_shadow(ptr + round_up(size, GRANULE), ptr + cache.slot_size, SLAB_REDZONE);
        let stack = self.save_stack_from(inner, from);
        let new = ObjMeta {
            alloc_stack: stack,
            free_stack: crate::depot::NO_STACK,
            alloc_pid: self.platform.current_pid(),
            free_pid: 0,
            size: size as u32,
            cache: id.0,
            state: ObjState::Allocated as u16,
            qnext: 0,
        };
        // SAFETY: as above.
        unsafe { write_meta(cache, ptr, new) };
        if let Ok(c) = inner.caches.get_mut(id) {
            c.live += 1;
        }
        Stats::bump(&self.stats.slab_allocs);
        Ok(())
    }

    /// Whether `ptr` starts a slot of cache `id` (layout `cache`): on a page
    /// the kernel's slab lookup gives to that cache, a whole number of
    /// slots from that slab's first slot, and the whole slot on pages of
    /// that one slab (a slot cut off by the slab's end is none).
    pub(super) fn is_slot(&self, id: CacheId, cache: &CacheInfo, ptr: usize) -> bool {
        let Some(slab) = self.platform.slab_of(ptr) else { return false };
        if slab.cache != id || ptr < slab.base || !(ptr - slab.base).is_multiple_of(cache.slot_size) {
            return false;
        }
        let Some(last) = ptr.checked_add(cache.slot_size - 1) else { return false };
        let (Some(first), Some(last)) = (self.pages.pfn(ptr), self.pages.pfn(last)) else { return false };
        (first..=last).all(|p| {
            let page = self.pages.get(p);
            page.kind == PageKind::Slab && (p == first || !page.head)
        })
    }

    /// The cache layout when `ptr` is an allocated object of cache `id`.
    fn live_object(&self, inner: &Inner<M>, id: CacheId, ptr: usize) -> Option<CacheInfo> {
        let cache = *inner.caches.live(id).ok()?;
        // SAFETY: `ptr` starts a slot of a live slab page of this cache
        // (is_slot), so its metadata is mapped slab memory.
        let live = self.is_slot(id, &cache, ptr) && unsafe { read_meta(&cache, ptr) }.state() == ObjState::Allocated;
        live.then_some(cache)
    }

    /// Whether `ptr` is an allocated object of cache `id` now (its slab is
    /// the one [`Platform::slab_of`] gives for `ptr`).
    pub fn slab_object_live(&self, id: CacheId, ptr: usize) -> bool {
        self.live_object(&self.inner.lock(), id, ptr).is_some()
    }

    /// The kernel frees `ptr` to cache `id`. The slab is the one
    /// [`Platform::slab_of`] gives for `ptr` (the only address the hook
    /// takes, so no slab start can be passed in its place); `ptr` must
    /// start one of its slots. `Ok` says whether the object went into
    /// quarantine (see [`Freed`]). `Err` means a double or invalid free was
    /// reported: the kernel must do nothing.
    pub fn slab_free(&self, id: CacheId, ptr: usize, ip: Ip) -> Result<Freed, Bug> {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return Ok(Freed::FreeNow);
        }
        let mut inner = self.inner.lock();
        let cache = match inner.caches.live(id) {
            Ok(c) => *c,
            Err(_) => {
                drop(inner);
                return Err(self.report_free(ptr, BugType::InvalidFree, ip));
            }
        };
        if !self.is_slot(id, &cache, ptr) {
            drop(inner);
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        }
        match self.obj_free(&mut inner, id, &cache, ptr, 0) {
            Ok(()) => Ok(Freed::Quarantined),
            Err(bug) => {
                drop(inner);
                Err(self.report_free(ptr, bug, ip))
            }
        }
    }

    /// Free the object at `ptr` (a slot of `cache`, checked by the
    /// caller) into quarantine: poison it, record the free stack (trimmed
    /// to start at `from`). A slot that is not allocated is the bug type
    /// to report (the caller reports it after dropping the lock).
    pub(crate) fn obj_free(
        &self,
        inner: &mut Inner<M>,
        id: CacheId,
        cache: &CacheInfo,
        ptr: usize,
        from: usize,
    ) -> Result<(), BugType> {
        // SAFETY: `ptr` starts a slot of a live slab page of this cache (the caller checked).
        let mut meta = unsafe { read_meta(cache, ptr) };
        match meta.state() {
            ObjState::Allocated => {}
            ObjState::Quarantined => return Err(BugType::DoubleFree),
            ObjState::Available => {
                let bug = if self.shadow_byte(ptr) == SLAB_FREE { BugType::DoubleFree } else { BugType::InvalidFree };
                return Err(bug);
            }
        }
        self.fill_shadow(ptr, ptr + cache.object_span(), SLAB_FREE);
        meta.free_stack = self.save_stack_from(inner, from);
        meta.free_pid = self.platform.current_pid();
        meta.state = ObjState::Quarantined as u16;
        // SAFETY: as above.
        unsafe { write_meta(cache, ptr, meta) };
        // SAFETY: the object stays in its slab page until released by
        // quarantine_pop (the kernel's contract) or by the heap.
        unsafe { inner.quarantine.push(ptr + cache.meta_offset(), cache.slot_size) };
        if let Ok(c) = inner.caches.get_mut(id) {
            c.live -= 1;
            c.quarantined += 1;
        }
        self.stats.quarantine_bytes.store(inner.quarantine.bytes(), core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The next object the kernel must really free. Objects of the
    /// runtime's own heap ([`crate::heap`]) that leave the quarantine go
    /// back to the heap's free lists on the way.
    fn release(&self, inner: &mut Inner<M>, all: bool) -> Option<Released> {
        loop {
            let meta_addr = self.pop_quarantined(inner, all)?;
            if let Some(r) = self.finish_release(inner, meta_addr) {
                return Some(r);
            }
        }
    }

    /// Take the next object off the quarantine (its release list first,
    /// then the oldest one when over the limit or `all`); its metadata
    /// address.
    pub(crate) fn pop_quarantined(&self, inner: &mut Inner<M>, all: bool) -> Option<usize> {
        let Inner { quarantine, caches, .. } = inner;
        let slot_size = |meta: usize| {
            // SAFETY: `meta` is on the quarantine's lists, hence valid.
            let m = unsafe { crate::cache::read_meta_at(meta) };
            if m.cache == crate::heap::LARGE_CACHE {
                return crate::heap::large_span(m.size as usize);
            }
            caches.get(CacheId(m.cache)).map(|c| c.slot_size).unwrap_or(0)
        };
        // SAFETY: every object on the lists is in a live slab page.
        let m = unsafe { quarantine.pop(all, slot_size) };
        self.stats.quarantine_bytes.store(quarantine.bytes(), core::sync::atomic::Ordering::Relaxed);
        m
    }

    /// The object whose metadata is at `meta_addr` left the quarantine:
    /// its slot is available again. A heap object goes back to the heap
    /// (`None`; a page-backed one frees its pages); a kernel slab object
    /// is returned for the kernel to free.
    pub(crate) fn finish_release(&self, inner: &mut Inner<M>, meta_addr: usize) -> Option<Released> {
        // SAFETY: it was on the quarantine's lists, hence in a live slab page.
        let mut meta = unsafe { crate::cache::read_meta_at(meta_addr) };
        if meta.cache == crate::heap::LARGE_CACHE {
            self.heap_release_large(meta_addr);
            return None;
        }
        let id = CacheId(meta.cache);
        let c = inner.caches.get_mut(id).ok()?;
        c.quarantined -= 1;
        let ptr = meta_addr - c.meta_offset();
        meta.state = ObjState::Available as u16;
        // SAFETY: as above.
        unsafe { crate::cache::write_meta_at(meta_addr, meta) };
        if self.heap_take_back(inner, id, ptr) {
            return None;
        }
        Some(Released { cache: id, ptr })
    }

    /// The next quarantined object the kernel must now really free, if the
    /// quarantine is over its limit (or a cache is being shut down). Call
    /// in a loop after every free.
    pub fn quarantine_pop(&self) -> Option<Released> {
        if self.cfg.mode == Mode::Off {
            return None;
        }
        self.release(&mut self.inner.lock(), false)
    }

    /// Empty the quarantine one object at a time (memory pressure, tests).
    pub fn quarantine_drain(&self) -> Option<Released> {
        if self.cfg.mode == Mode::Off {
            return None;
        }
        self.release(&mut self.inner.lock(), true)
    }

    /// Move every quarantined object of cache `id` to the release list, so
    /// the next [`Kasan::quarantine_pop`] calls return them (before
    /// destroying the cache). Returns how many.
    pub fn quarantine_release_cache(&self, id: CacheId) -> usize {
        let mut inner = self.inner.lock();
        let slot = inner.caches.get(id).map(|c| c.slot_size).unwrap_or(0);
        // SAFETY: every object on the lists is in a live slab page.
        let n = unsafe {
            inner.quarantine.evict_where(|m| crate::cache::read_meta_at(m).cache == id.0, |_| slot)
        };
        self.stats.quarantine_bytes.store(inner.quarantine.bytes(), core::sync::atomic::Ordering::Relaxed);
        n
    }

    /// `ksize()`: the usable size of the allocated object of cache `id`
    /// at `ptr`, made accessible in full (even a 0-byte object, whose first
    /// byte is poisoned). Anything else (a freed object, an interior or
    /// foreign pointer) gets 0 and no shadow change; its first byte is
    /// checked as Linux's `kasan_check_byte` does, so a poisoned one is
    /// reported.
    pub fn ksize(&self, id: CacheId, ptr: usize, ip: Ip) -> usize {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return self.inner.lock().caches.get(id).map(|c| c.object_size).unwrap_or(0);
        }
        let inner = self.inner.lock();
        if let Some(cache) = self.live_object(&inner, id, ptr) {
            self.unpoison(ptr, cache.object_size);
            return cache.object_size;
        }
        drop(inner);
        let _ = self.check(ptr, Size(1), false, Ip(ip));
        0
    }

    /// `krealloc()` within the same slot: the object now has `new_size`
    /// bytes (at most the cache's object size).
    pub fn slab_resize(&self, id: CacheId, ptr: usize, new_size: Size) -> Result<(), SlabError> {
        let new_size = new_size.0;
        if !self.on() {
            return Ok(());
        }
        let inner = self.inner.lock();
        let cache = *inner.caches.live(id)?;
        if new_size > cache.object_size || !ptr.is_multiple_of(GRANULE) {
            return Err(SlabError::BadSize);
        }
        if !self.is_slot(id, &cache, ptr) {
            return Err(SlabError::NotSlot);
        }
        // SAFETY: `ptr` starts a slot of a live slab page of this cache (is_slot).
        let mut meta = unsafe { read_meta(&cache, ptr) };
        if meta.state() != ObjState::Allocated {
            return Err(SlabError::WrongPageState);
        }
        self.unpoison(ptr, new_size);
        self.fill_shadow(ptr + round_up(new_size, GRANULE), ptr + cache.slot_size, SLAB_REDZONE);
        meta.size = new_size as u32;
        // SAFETY: as above.
        unsafe { write_meta(&cache, ptr, meta) };
        drop(inner);
        Ok(())
    }

    /// Check that the first byte at `ptr` is accessible (as Linux's
    /// `kasan_check_byte`, used by krealloc and kfree_sensitive); reports
    /// and returns `false` if not.
    pub fn check_byte(&self, ptr: usize, ip: Ip) -> bool {
        let ip = ip.0;
        self.check(ptr, Size(1), false, Ip(ip)).is_ok()
    }

    // ---- large kmalloc -----------------------------------------------------
}
