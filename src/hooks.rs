//! Allocator hooks: what a kernel's page allocator, slab, kmalloc, stacks,
//! vmalloc and global registration tell the runtime.
//!
//! Call order a kernel follows (mirrors Linux's KASAN hooks):
//!
//! ```text
//!  buddy alloc ─► page_alloc ─► [slab_page_alloc | kmalloc_large | stack_alloc]
//!  slab:   cache_create ─► slab_page_alloc ─► slab_alloc ... slab_free ─► quarantine_pop ─► (slot reusable)
//!          slab page empty ─► slab_page_free ─► page_free ─► buddy free
//!  large:  kfree_large ─► page_free          stacks: stack_free ─► page_free
//!  vmalloc: vmalloc_alloc(area incl. guard) ... vmalloc_free
//! ```
//!
//! Hooks that can meet a bug of the caller (double free, invalid free)
//! report it and return `Err(bug)`; the kernel must then not free. Hooks
//! given input that breaks the allocator's own contract return a
//! [`HookError`] and leave the shadow unchanged.

use crate::cache::{read_meta, write_meta, CacheError, CacheId, CacheInfo, ObjMeta, ObjState};
use crate::config::Mode;
use crate::depot::{StackHandle, Trace, MAX_FRAMES};
use crate::error::{GlobalError, HookError};
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::{PageInfo, PageKind, PageState};
use crate::platform::Platform;
use crate::report::{Bug, BugType};
use crate::runtime::{Inner, Kasan};
use crate::shadow::{
    GLOBAL_REDZONE, GRANULE, PAGE_FREE, PAGE_REDZONE, SLAB_FREE, SLAB_REDZONE, VMALLOC_INVALID,
};
use crate::stats::Stats;

/// A slab object the quarantine hands back for the kernel to really free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// Its cache.
    pub cache: CacheId,
    /// Its address.
    pub ptr: usize,
}

/// What the kernel does with an object after a successful `slab_free`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Freed {
    /// The object is in quarantine: its slot stays taken until
    /// [`Kasan::quarantine_pop`] returns it.
    Quarantined,
    /// No quarantine (`off` mode): free the slot now.
    FreeNow,
}

/// The compiler's descriptor of one instrumented global (ASan ABI v8).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GlobalDesc {
    /// Address of the global.
    pub beg: usize,
    /// Its size.
    pub size: usize,
    /// Size including the redzone the compiler placed after it.
    pub size_with_redzone: usize,
    /// Name (C string).
    pub name: *const u8,
    /// Module name (C string).
    pub module_name: *const u8,
    /// Whether it has a dynamic initializer.
    pub has_dynamic_init: usize,
    /// Source location descriptor.
    pub location: *const u8,
    /// ODR indicator.
    pub odr_indicator: usize,
}

const fn round_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Whether the runtime checks at all; in `off` mode hooks accept and do nothing.
    fn on(&self) -> bool {
        self.cfg.mode != Mode::Off
    }

    /// Frames of `[pfn, pfn + 2^order)` after checking they are RAM.
    fn page_range(&self, addr: usize, order: u32) -> Result<(usize, usize), HookError> {
        if order > 20 {
            return Err(HookError::BadOrder);
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(HookError::Unaligned);
        }
        let pfn = self.pages.pfn(addr).ok_or(HookError::NotRam)?;
        let count = 1usize << order;
        if pfn + count > self.pages.len() {
            return Err(HookError::BadOrder);
        }
        Ok((pfn, count))
    }

    pub(crate) fn save_stack(&self, inner: &mut Inner<M>) -> StackHandle {
        let mut buf = [0usize; MAX_FRAMES];
        let n = self.platform.stack_trace(&mut buf);
        let h = inner.depot.save(&buf[..n.min(MAX_FRAMES)]);
        if h == crate::depot::NO_STACK && n != 0 {
            Stats::bump(&self.stats.depot_dropped);
        }
        h
    }

    /// The frames of a stored stack.
    #[must_use]
    pub fn fetch_stack(&self, h: StackHandle) -> Trace {
        self.inner.lock().depot.fetch(h)
    }

    /// Mark RAM that the page allocator never hands out (image, boot data,
    /// firmware) as valid.
    pub fn mark_reserved(&self, addr: usize, len: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(HookError::Unaligned);
        }
        let pfn = self.pages.pfn(addr).ok_or(HookError::NotRam)?;
        let count = len.div_ceil(PAGE_SIZE);
        if count == 0 || pfn + count > self.pages.len() {
            return Err(HookError::BadOrder);
        }
        let mut inner = self.inner.lock();
        let info = PageInfo { state: PageState::Valid, kind: PageKind::Reserved, head: false };
        self.set_pages(&mut inner, pfn, count, |_| info);
        Ok(())
    }

    /// The page allocator handed out `2^order` pages at `addr`.
    pub fn page_alloc(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        if (pfn..pfn + count).any(|p| self.pages.get(p).state != PageState::Free) {
            return Err(HookError::PageInUse);
        }
        let mut inner = self.inner.lock();
        self.set_pages(&mut inner, pfn, count, |i| PageInfo {
            state: PageState::Valid,
            kind: PageKind::Page,
            head: i == 0,
        });
        Ok(())
    }

    /// The page allocator takes back `2^order` pages at `addr`. Freeing a
    /// page that is already free is reported as a double free.
    pub fn page_free(&self, addr: usize, order: u32, ip: usize) -> Result<(), Bug> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let (pfn, count) = match self.page_range(addr, order) {
            Ok(r) => r,
            Err(_) => return Err(self.report_free(addr, BugType::InvalidFree, ip)),
        };
        if self.pages.get(pfn).state == PageState::Free {
            return Err(self.report_free(addr, BugType::DoubleFree, ip));
        }
        let mut inner = self.inner.lock();
        self.set_pages(&mut inner, pfn, count, |_| PageInfo::FREE);
        Ok(())
    }

    /// Turn allocated pages into tracked pages of `kind` (byte shadow).
    fn track_pages(&self, inner: &mut Inner<M>, pfn: usize, count: usize, kind: PageKind) -> bool {
        self.set_pages(inner, pfn, count, |i| PageInfo { state: PageState::Tracked, kind, head: i == 0 })
    }

    /// Back to plain allocated pages (before `page_free`).
    fn untrack_pages(&self, inner: &mut Inner<M>, pfn: usize, count: usize) {
        self.set_pages(inner, pfn, count, |i| PageInfo {
            state: PageState::Valid,
            kind: PageKind::Page,
            head: i == 0,
        });
    }

    fn allocated(&self, pfn: usize, count: usize) -> bool {
        (pfn..pfn + count).all(|p| self.pages.get(p).state != PageState::Free)
    }

    // ---- slab -------------------------------------------------------------

    /// Register a cache; the slab must lay out slots of
    /// [`Kasan::cache_info`]`.slot_size` bytes.
    pub fn cache_create(&self, name: &'static str, object_size: usize, align: usize) -> Result<CacheId, HookError> {
        Ok(self.inner.lock().caches.create(name, object_size, align, self.on())?)
    }

    /// A cache's layout and counters.
    pub fn cache_info(&self, id: CacheId) -> Result<CacheInfo, CacheError> {
        self.inner.lock().caches.get(id).copied()
    }

    /// Destroy a cache: every object must have been freed and released from
    /// quarantine (see [`Kasan::quarantine_release_cache`]). A second
    /// destroy is [`CacheError::AlreadyDestroyed`] and changes nothing.
    pub fn cache_destroy(&self, id: CacheId) -> Result<(), HookError> {
        Ok(self.inner.lock().caches.destroy(id)?)
    }

    /// A new slab page (`2^order` pages at `base`) of cache `id`: its shadow
    /// is poisoned as redzone until objects are allocated.
    pub fn slab_page_alloc(&self, id: CacheId, base: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(base, order)?;
        if !self.allocated(pfn, count) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
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
    /// and released from quarantine).
    pub fn slab_page_free(&self, base: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(base, order)?;
        if self.pages.get(pfn).kind != PageKind::Slab {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        self.untrack_pages(&mut inner, pfn, count);
        Ok(())
    }

    /// The slab handed out the slot at `ptr` for a `size`-byte request.
    pub fn slab_alloc(&self, id: CacheId, ptr: usize, size: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        if !ptr.is_multiple_of(GRANULE) {
            return Err(HookError::Unaligned);
        }
        let pfn = self.pages.pfn(ptr).ok_or(HookError::NotRam)?;
        if self.pages.get(pfn).kind != PageKind::Slab {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        let cache = *inner.caches.live(id)?;
        if size > cache.object_size {
            return Err(HookError::BadSize);
        }
        // SAFETY: `ptr` is a slot of a live slab page of this cache (the
        // kernel's contract for this hook, page kind checked above).
        let meta = unsafe { read_meta(&cache, ptr) };
        if meta.state() == ObjState::Allocated {
            return Err(HookError::SlotInUse);
        }
        self.unpoison(ptr, size);
        self.fill_shadow(ptr + round_up(size, GRANULE), ptr + cache.slot_size, SLAB_REDZONE);
        let stack = self.save_stack(&mut inner);
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
        unsafe { write_meta(&cache, ptr, new) };
        if let Ok(c) = inner.caches.get_mut(id) {
            c.live += 1;
        }
        Stats::bump(&self.stats.slab_allocs);
        Ok(())
    }

    /// Whether the object at `ptr` of a slab at `base` is allocated now.
    pub fn slab_object_live(&self, id: CacheId, base: usize, ptr: usize) -> bool {
        let inner = self.inner.lock();
        let Ok(cache) = inner.caches.live(id) else { return false };
        if ptr < base || !(ptr - base).is_multiple_of(cache.slot_size) {
            return false;
        }
        // SAFETY: `ptr` is a slot start of the slab at `base` (checked).
        unsafe { read_meta(cache, ptr) }.state() == ObjState::Allocated
    }

    /// The kernel frees `ptr` to cache `id` whose slab starts at `base`.
    /// `Ok` says whether the object went into quarantine (see [`Freed`]). `Err`
    /// means a double or invalid free was reported: the kernel must do
    /// nothing.
    pub fn slab_free(&self, id: CacheId, base: usize, ptr: usize, ip: usize) -> Result<Freed, Bug> {
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
        if ptr < base || !(ptr - base).is_multiple_of(cache.slot_size) {
            drop(inner);
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        }
        // SAFETY: `ptr` is a slot start of the kernel's live slab at `base`.
        let mut meta = unsafe { read_meta(&cache, ptr) };
        match meta.state() {
            ObjState::Allocated => {}
            ObjState::Quarantined => {
                drop(inner);
                return Err(self.report_free(ptr, BugType::DoubleFree, ip));
            }
            ObjState::Available => {
                drop(inner);
                let bug = if self.shadow_byte(ptr) == SLAB_FREE { BugType::DoubleFree } else { BugType::InvalidFree };
                return Err(self.report_free(ptr, bug, ip));
            }
        }
        self.fill_shadow(ptr, ptr + cache.object_span(), SLAB_FREE);
        meta.free_stack = self.save_stack(&mut inner);
        meta.free_pid = self.platform.current_pid();
        meta.state = ObjState::Quarantined as u16;
        // SAFETY: as above.
        unsafe { write_meta(&cache, ptr, meta) };
        // SAFETY: the object stays in its slab page until released by
        // quarantine_pop (the kernel's contract).
        unsafe { inner.quarantine.push(ptr + cache.meta_offset(), cache.slot_size) };
        if let Ok(c) = inner.caches.get_mut(id) {
            c.live -= 1;
            c.quarantined += 1;
        }
        self.stats.quarantine_bytes.store(inner.quarantine.bytes(), core::sync::atomic::Ordering::Relaxed);
        Ok(Freed::Quarantined)
    }

    fn release(&self, inner: &mut Inner<M>, all: bool) -> Option<Released> {
        let Inner { quarantine, caches, .. } = inner;
        let slot_size = |meta: usize| {
            // SAFETY: `meta` is on the quarantine's lists, hence valid.
            let id = unsafe { crate::cache::read_meta_at(meta) }.cache;
            caches.get(CacheId(id)).map(|c| c.slot_size).unwrap_or(0)
        };
        // SAFETY: every object on the lists is in a live slab page.
        let meta_addr = unsafe { quarantine.pop(all, slot_size) }?;
        // SAFETY: as above.
        let mut meta = unsafe { crate::cache::read_meta_at(meta_addr) };
        let id = CacheId(meta.cache);
        let c = caches.get_mut(id).ok()?;
        c.quarantined -= 1;
        let ptr = meta_addr - c.meta_offset();
        meta.state = ObjState::Available as u16;
        // SAFETY: as above.
        unsafe { crate::cache::write_meta_at(meta_addr, meta) };
        self.stats.quarantine_bytes.store(quarantine.bytes(), core::sync::atomic::Ordering::Relaxed);
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

    /// `ksize()`: the usable size of the object at `ptr`, made accessible
    /// in full. A freed or invalid `ptr` is reported and 0 returned.
    pub fn ksize(&self, id: CacheId, ptr: usize, ip: usize) -> usize {
        if self.cfg.mode == Mode::Off {
            return self.inner.lock().caches.get(id).map(|c| c.object_size).unwrap_or(0);
        }
        if self.check(ptr, 1, false, ip).is_err() {
            return 0;
        }
        let Ok(cache) = self.cache_info(id) else { return 0 };
        self.unpoison(ptr, cache.object_size);
        cache.object_size
    }

    /// `krealloc()` within the same slot: the object now has `new_size`
    /// bytes (at most the cache's object size).
    pub fn slab_resize(&self, id: CacheId, ptr: usize, new_size: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let inner = self.inner.lock();
        let cache = *inner.caches.live(id)?;
        if new_size > cache.object_size || !ptr.is_multiple_of(GRANULE) {
            return Err(HookError::BadSize);
        }
        // SAFETY: `ptr` is an object of this cache (kernel's contract).
        let mut meta = unsafe { read_meta(&cache, ptr) };
        if meta.state() != ObjState::Allocated {
            return Err(HookError::WrongPageState);
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
    pub fn check_byte(&self, ptr: usize, ip: usize) -> bool {
        self.check(ptr, 1, false, ip).is_ok()
    }

    // ---- large kmalloc -----------------------------------------------------

    /// A page-backed kmalloc of `size` bytes in the allocated pages at
    /// `addr`: the tail after `size` is poisoned as page redzone.
    pub fn kmalloc_large(&self, addr: usize, order: u32, size: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        if size == 0 || size > count * PAGE_SIZE {
            return Err(HookError::BadSize);
        }
        if !self.allocated(pfn, count) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        self.track_pages(&mut inner, pfn, count, PageKind::LargeKmalloc);
        self.unpoison(addr, size);
        self.fill_shadow(addr + round_up(size, GRANULE), addr + count * PAGE_SIZE, PAGE_REDZONE);
        Stats::bump(&self.stats.slab_allocs);
        Ok(())
    }

    /// kfree of a page-backed kmalloc at `ptr` of `2^order` pages. An
    /// interior pointer is an invalid free, a freed one a double free.
    pub fn kfree_large(&self, ptr: usize, order: u32, ip: usize) -> Result<(), Bug> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let Ok((pfn, count)) = self.page_range(ptr, order) else {
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        };
        let head = self.pages.get(pfn);
        if head.state == PageState::Free {
            return Err(self.report_free(ptr, BugType::DoubleFree, ip));
        }
        if head.kind != PageKind::LargeKmalloc || !head.head {
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        }
        let mut inner = self.inner.lock();
        self.untrack_pages(&mut inner, pfn, count);
        Ok(())
    }

    // ---- kernel stacks -----------------------------------------------------

    /// A kernel stack of `2^order` allocated pages at `addr`: byte tracked,
    /// all accessible (the compiler poisons frames as they are entered).
    pub fn stack_alloc(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        if !self.allocated(pfn, count) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        self.track_pages(&mut inner, pfn, count, PageKind::Stack);
        self.fill_shadow(addr, addr + count * PAGE_SIZE, 0);
        Ok(())
    }

    /// A kernel stack is done (before `page_free`): leftover frame poison
    /// is dropped.
    pub fn stack_free(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        if self.pages.get(pfn).kind != PageKind::Stack {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        self.untrack_pages(&mut inner, pfn, count);
        Ok(())
    }

    // ---- vmalloc -----------------------------------------------------------

    /// A vmalloc area at `addr` (page aligned) spanning `area_len` bytes
    /// including its guard, of which the first `size` are the allocation.
    /// Returns `Ok(false)` when some of its shadow could not be mapped (that
    /// part goes unchecked).
    pub fn vmalloc_alloc(&self, addr: usize, size: usize, area_len: usize) -> Result<bool, HookError> {
        if !self.on() {
            return Ok(true);
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(HookError::Unaligned);
        }
        if size == 0 || size > area_len {
            return Err(HookError::BadSize);
        }
        if !self.layout.vmalloc.contains_range(addr, area_len) {
            return Err(HookError::NotVmalloc);
        }
        let mut inner = self.inner.lock();
        self.promote_pending(&mut inner);
        let ok = self.vm_get(&mut inner, addr, addr + area_len, VMALLOC_INVALID);
        self.unpoison(addr, size);
        self.fill_shadow(addr + round_up(size, GRANULE), addr + area_len, VMALLOC_INVALID);
        Ok(ok)
    }

    /// The vmalloc area at `addr` of `area_len` bytes is freed.
    pub fn vmalloc_free(&self, addr: usize, area_len: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(HookError::Unaligned);
        }
        if !self.layout.vmalloc.contains_range(addr, area_len) {
            return Err(HookError::NotVmalloc);
        }
        let mut inner = self.inner.lock();
        self.fill_shadow(addr, addr + area_len, VMALLOC_INVALID);
        self.vm_put(&mut inner, addr, addr + area_len);
        Ok(())
    }

    // ---- globals -----------------------------------------------------------

    /// Register one global: its bytes accessible, its redzone poisoned.
    pub fn register_global(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let r = self.check_global(g);
        if r.is_err() {
            Stats::bump(&self.stats.bad_globals);
            return r;
        }
        let _guard = self.inner.lock();
        self.unpoison(g.beg, g.size);
        self.fill_shadow(g.beg + round_up(g.size, GRANULE), g.beg + g.size_with_redzone, GLOBAL_REDZONE);
        Ok(())
    }

    fn check_global(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if !g.beg.is_multiple_of(GRANULE) {
            return Err(GlobalError::Unaligned);
        }
        if g.size > g.size_with_redzone || g.beg.checked_add(g.size_with_redzone).is_none() {
            return Err(GlobalError::BadSize);
        }
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        // Its body must not be another global's redzone, nor its redzone
        // another global's body start (the shadow there is already set).
        let body_end = g.beg + round_up(g.size, GRANULE);
        let mut a = g.beg;
        while a < body_end {
            if self.shadow_byte(a) == GLOBAL_REDZONE {
                return Err(GlobalError::Overlap);
            }
            a += GRANULE;
        }
        Ok(())
    }

    /// Unregister one global: its whole span becomes accessible again.
    pub fn unregister_global(&self, g: &GlobalDesc) {
        if self.cfg.mode == Mode::Off || self.check_global_span(g).is_err() {
            return;
        }
        let _guard = self.inner.lock();
        self.fill_shadow(g.beg, g.beg + g.size_with_redzone, 0);
    }

    fn check_global_span(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if !g.beg.is_multiple_of(GRANULE) {
            return Err(GlobalError::Unaligned);
        }
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        Ok(())
    }

    // ---- compiler stack and alloca poisoning ---------------------------------

    /// Set the shadow of `[addr, addr + size)` (granule aligned) to `value`,
    /// as `__asan_set_shadow_*` and the poison of stack frames do. Shadow
    /// that is not private (unchecked) is left alone.
    pub fn poison_range(&self, addr: usize, size: usize, value: u8) {
        if self.cfg.mode == Mode::Off || !addr.is_multiple_of(GRANULE) {
            return;
        }
        let Some(end) = addr.checked_add(size) else { return };
        if !self.layout.covered.contains_range(addr, size) {
            return;
        }
        self.fill_shadow(addr, end, value);
    }

    /// Make `[addr, addr + size)` accessible (`addr` granule aligned).
    pub fn unpoison_range(&self, addr: usize, size: usize) {
        if self.cfg.mode == Mode::Off || !addr.is_multiple_of(GRANULE) || !self.layout.covered.contains_range(addr, size) {
            return;
        }
        self.unpoison(addr, size);
    }

    /// `__asan_alloca_poison`: a dynamically sized stack buffer of `size`
    /// bytes at `addr` (32-byte aligned) with 32-byte redzones around it.
    pub fn alloca_poison(&self, addr: usize, size: usize) {
        const RZ: usize = 32;
        if !addr.is_multiple_of(RZ) || addr < RZ {
            return;
        }
        let rounded = round_up(size, GRANULE);
        let padded = round_up(size, RZ);
        self.unpoison_range(addr, size);
        self.poison_range(addr - RZ, RZ, crate::shadow::ALLOCA_LEFT);
        self.poison_range(addr + rounded, padded - rounded + RZ, crate::shadow::ALLOCA_RIGHT);
    }

    /// `__asan_allocas_unpoison`: the stack from `top` to `bottom` is live again.
    pub fn allocas_unpoison(&self, top: usize, bottom: usize) {
        if top == 0 || top > bottom {
            return;
        }
        self.unpoison_range(top & !(GRANULE - 1), bottom - (top & !(GRANULE - 1)));
    }

    /// The shadow byte an access would see at `addr`, with the per-page
    /// state resolved for CONSULT blocks: what `full` mode holds there.
    #[must_use]
    pub fn effective_shadow(&self, addr: usize) -> Option<u8> {
        if self.cfg.mode == Mode::Off || !self.layout.covered.contains(addr) {
            return None;
        }
        let v = self.shadow_byte(addr);
        if v != crate::shadow::CONSULT_PER_PAGE {
            return Some(v);
        }
        Some(match self.pages.pfn(addr).map(|p| self.pages.get(p).state) {
            Some(PageState::Free) => PAGE_FREE,
            _ => 0,
        })
    }
}
