//! Mempools: elements a pool keeps in reserve are poisoned as freed while
//! they wait, as Linux's `kasan_mempool_poison_object` /
//! `kasan_mempool_unpoison_object` do. The element stays allocated for
//! the allocator underneath (a slab object keeps its slot, a page-backed
//! kmalloc its pages); only its shadow says "freed", so a use of a
//! reserved element is a use-after-free, and returning one twice (or a
//! pointer that is no element's start) is a double (invalid) free.
//! Page pools use [`Kasan::page_free`] / [`Kasan::page_alloc`] for the
//! same (Linux's `kasan_mempool_poison_pages` poisons them as free pages).

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// A mempool takes slab object `ptr` of cache `id` (whose slab's first
    /// slot is at `base`) into its reserve: its object is poisoned as freed
    /// (slab-use-after-free on access) and the free stack recorded; the
    /// slot stays allocated. A pointer that is no slot's start is an
    /// invalid free, an object whose first byte is not accessible (already
    /// in the reserve, or freed) a double free: reported, `Err`, and the
    /// pool must not take it.
    pub fn mempool_poison_object(&self, id: CacheId, base: usize, ptr: usize, ip: Ip) -> Result<(), Bug> {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        let Ok(cache) = inner.caches.live(id).copied() else {
            drop(inner);
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        };
        if ptr < base || !(ptr - base).is_multiple_of(cache.slot_size) || !self.is_slot(id, &cache, ptr) {
            drop(inner);
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        }
        // SAFETY: `ptr` starts a slot of a live slab page of this cache
        // (is_slot), so its metadata is mapped slab memory.
        let mut meta = unsafe { read_meta(&cache, ptr) };
        if meta.state() != ObjState::Allocated || self.shadow_byte(ptr) >= 0x80 {
            drop(inner);
            return Err(self.report_free(ptr, BugType::DoubleFree, ip));
        }
        self.fill_shadow(ptr, ptr + cache.object_span(), SLAB_FREE);
        meta.free_stack = self.save_stack_from(&mut inner, 0);
        meta.free_pid = self.platform.current_pid();
        // SAFETY: as above.
        unsafe { write_meta(&cache, ptr, meta) };
        Ok(())
    }

    /// The mempool hands slab object `ptr` of cache `id` out again for a
    /// `size`-byte request: unpoisoned, the rest of its slot redzone.
    pub fn mempool_unpoison_object(&self, id: CacheId, ptr: usize, size: Size) -> Result<(), SlabError> {
        let size = size.0;
        if !self.on() {
            return Ok(());
        }
        let inner = self.inner.lock();
        let cache = *inner.caches.live(id)?;
        if size > cache.object_size {
            return Err(SlabError::BadSize);
        }
        if !self.is_slot(id, &cache, ptr) {
            return Err(SlabError::NotSlot);
        }
        self.unpoison(ptr, size);
        self.fill_shadow(ptr + round_up(size, GRANULE), ptr + cache.slot_size, SLAB_REDZONE);
        Ok(())
    }

    /// A mempool takes the page-backed kmalloc at `ptr` (`2^order` pages)
    /// into its reserve: all its pages poisoned as free (use-after-free on
    /// access); they stay the kmalloc's. An interior pointer is an invalid
    /// free, one whose first byte is not accessible a double free:
    /// reported, `Err`, and the pool must not take it. The pool hands it
    /// out again with [`Kasan::kmalloc_large`].
    pub fn mempool_poison_large(&self, ptr: usize, order: u32, ip: Ip) -> Result<(), Bug> {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        // Under the lock: another CPU's free of the same pages must not
        // land between the checks and the poisoning.
        let guard = self.inner.lock();
        let bug = match self.large_block(ptr, order) {
            Ok(_) if self.shadow_byte(ptr) >= 0x80 => BugType::DoubleFree,
            Ok((_, count)) => {
                self.fill_shadow(ptr, ptr + count * PAGE_SIZE, PAGE_FREE);
                return Ok(());
            }
            Err(bug) => bug,
        };
        drop(guard);
        Err(self.report_free(ptr, bug, ip))
    }
}
