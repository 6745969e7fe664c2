//! A model kernel for host tests and benchmarks: a buddy page allocator,
//! a slab allocator with kmalloc caches and named caches, page-backed large
//! kmalloc, kernel stacks, vmalloc with guard pages and globals, all calling
//! the runtime's hooks in the order a real kernel does. Data accesses are
//! checked, not performed.
//!
//! Bad input gets what a kernel's allocator gives, never a panic: `None`
//! for an allocation it cannot make (size 0 or too large for vmalloc, a
//! destroyed cache), a report for a bad free (through the runtime when it
//! can tell, else as an invalid free), and Linux's `ZERO_SIZE_PTR` for
//! `kmalloc(0)`.

use crate::hooks::{Ip, Size};
use crate::cache::CacheId;
use crate::config::Config;
use crate::error::{GlobalError, HookError, InitError};
use crate::hooks::{GlobalDesc, Released};
use crate::host::mapper::HostMapper;
use crate::host::platform::HostPlatform;
use crate::host::space::{HostSpace, SpaceError};
use crate::mapper::PAGE_SIZE;
use crate::platform::SlabRef;
use crate::report::{Bug, BugType};
use crate::runtime::Kasan;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::vec::Vec;

/// Highest buddy order.
pub const MAX_ORDER: u32 = 10;
/// kmalloc size classes; larger requests are page-backed.
pub const KMALLOC_SIZES: [usize; 13] = [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192];
/// Largest kmalloc cache.
pub const KMALLOC_MAX_CACHE: usize = 8192;
/// Order of a kernel stack (16 KiB).
pub const STACK_ORDER: u32 = 2;
/// What `kmalloc(0)` returns, as Linux: not null, but no byte of it may be
/// used; kfree and ksize take it (and anything below it) as nothing.
pub const ZERO_SIZE_PTR: usize = 16;
/// Names of the kmalloc caches, one per [`KMALLOC_SIZES`] entry.
const KMALLOC_NAMES: [&str; 13] = [
    "kmalloc-8",
    "kmalloc-16",
    "kmalloc-32",
    "kmalloc-64",
    "kmalloc-96",
    "kmalloc-128",
    "kmalloc-192",
    "kmalloc-256",
    "kmalloc-512",
    "kmalloc-1024",
    "kmalloc-2048",
    "kmalloc-4096",
    "kmalloc-8192",
];

/// Why the model kernel could not start.
#[derive(Debug)]
pub enum SimError {
    /// Address space reservation failed.
    Space(SpaceError),
    /// The runtime refused to start.
    Init(InitError),
    /// A hook refused during setup.
    Hook(HookError),
}

/// Sizes of a model kernel.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// RAM bytes (multiple of 4 MiB).
    pub ram: usize,
    /// vmalloc window bytes.
    pub vmalloc: usize,
    /// Image bytes (globals).
    pub image: usize,
    /// Runtime configuration.
    pub kasan: Config,
    /// Cap on private shadow pages (to exercise running out).
    pub frame_limit: Option<usize>,
    /// Covered bytes after the image outside every layout region, for a
    /// heap or stack region ([`SimKernel::extra`]).
    pub extra: usize,
}

impl SimConfig {
    /// 16 MiB RAM, 16 MiB vmalloc, 256 KiB image, multi-shot reports.
    #[must_use]
    pub fn small(mode: crate::config::Mode) -> Self {
        SimConfig {
            ram: 16 << 20,
            vmalloc: 16 << 20,
            image: 256 << 10,
            kasan: Config { mode, multi_shot: true, ..Config::default() },
            frame_limit: None,
            extra: 0,
        }
    }
}

struct Slab {
    base: usize,
    order: u32,
    free: Vec<usize>,
    inuse: usize,
}

struct SimCache {
    object_size: usize,
    slot: usize,
    offset: usize,
    order: u32,
    slabs: BTreeMap<usize, Slab>,
}

/// The runtime's metadata arena, owned by the model kernel and freed after
/// the runtime (a field after `kasan`), so kernels can come and go without
/// leaking (a fuzzer makes millions).
pub(crate) struct Arena(*mut [u8]);

impl Arena {
    pub(crate) fn new(bytes: usize) -> Self {
        Arena(std::boxed::Box::into_raw(std::vec![0u8; bytes].into_boxed_slice()))
    }

    /// The arena for the runtime.
    ///
    /// # Safety
    ///
    /// Call once; the runtime given the slice must be gone before `self`.
    pub(crate) unsafe fn hand_over(&self) -> &'static mut [u8] {
        // SAFETY: the box stays alive until `self` drops, which the caller
        // guarantees happens after the runtime's last use; one handover, so
        // the mutable borrow is unique.
        unsafe { &mut *self.0 }
    }
}

// SAFETY: the pointer is the arena's owner only: nothing reads or writes
// through it after the handover but `drop`, so the arena may move to and
// be shared with other threads like the runtime that uses it.
unsafe impl Send for Arena {}
// SAFETY: as above; `&Arena` gives no access to the memory.
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw in `new`, and the
        // runtime holding it was dropped before (field order of SimKernel).
        drop(unsafe { std::boxed::Box::from_raw(self.0) });
    }
}

/// The model kernel.
pub struct SimKernel {
    /// The runtime (dropped before the address space it maps).
    pub kasan: Kasan<HostMapper, HostPlatform>,
    /// The platform (shares state with the runtime's copy).
    pub plat: HostPlatform,
    free_lists: Vec<BTreeSet<usize>>,
    caches: HashMap<CacheId, SimCache>,
    kmalloc: Vec<(usize, CacheId)>,
    /// Large kmallocs: base -> order.
    large: BTreeMap<usize, u32>,
    /// Slab objects handed out and not yet freed.
    objects: BTreeSet<usize>,
    /// Blocks the page allocator handed out: first pfn -> order.
    blocks: BTreeMap<usize, u32>,
    /// Kernel stacks.
    stacks: BTreeSet<usize>,
    /// vmalloc areas: addr -> (size, area_len, backing pages).
    vm_areas: BTreeMap<usize, (usize, usize, Vec<usize>)>,
    vm_free: BTreeMap<usize, usize>,
    globals_next: usize,
    /// Pages the page allocator has handed out.
    pub pages_used: usize,
    /// Dropped after `kasan`, which uses it.
    _arena: Arena,
    _space: HostSpace,
}

impl SimKernel {
    /// Start a model kernel.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        let space = HostSpace::with_extra(cfg.ram, cfg.vmalloc, cfg.image, cfg.extra).map_err(SimError::Space)?;
        let layout = space.layout();
        let mut mapper = HostMapper::new(space.shadow());
        mapper.set_frame_limit(None);
        let plat = HostPlatform::new();
        let arena = Arena::new(Kasan::<HostMapper, HostPlatform>::arena_bytes(&layout, &cfg.kasan));
        // SAFETY: the one handover; the runtime is a field of the kernel
        // before `_arena`, so it is dropped first (or never built).
        let kasan =
            Kasan::new(cfg.kasan, layout, mapper, plat.clone(), unsafe { arena.hand_over() }).map_err(SimError::Init)?;
        if let Some(n) = cfg.frame_limit {
            let private_now = kasan.inner.lock().mapper.private_pages();
            kasan.inner.lock().mapper.set_frame_limit(Some(private_now + n));
        }
        let mut free_lists = std::vec![BTreeSet::new(); MAX_ORDER as usize + 1];
        let pages = cfg.ram / PAGE_SIZE;
        for pfn in (0..pages).step_by(1 << MAX_ORDER) {
            free_lists[MAX_ORDER as usize].insert(pfn);
        }
        let mut k = SimKernel {
            kasan,
            plat,
            free_lists,
            caches: HashMap::new(),
            kmalloc: Vec::new(),
            large: BTreeMap::new(),
            objects: BTreeSet::new(),
            blocks: BTreeMap::new(),
            stacks: BTreeSet::new(),
            vm_areas: BTreeMap::new(),
            vm_free: BTreeMap::new(),
            globals_next: layout.image.start,
            pages_used: 0,
            _arena: arena,
            _space: space,
        };
        for (&size, name) in KMALLOC_SIZES.iter().zip(KMALLOC_NAMES) {
            let id = k.kmem_cache_create(name, size).map_err(SimError::Hook)?;
            k.kmalloc.push((size, id));
        }
        Ok(k)
    }

    /// The covered range after the image that no layout region holds
    /// ([`SimConfig::extra`] bytes).
    #[must_use]
    pub fn extra(&self) -> crate::layout::Region {
        self._space.extra()
    }

    fn base(&self) -> usize {
        self.kasan.layout().direct_map.start
    }

    /// The current call site (innermost entered function).
    #[must_use]
    pub fn ip(&self) -> usize {
        self.plat.current_ip()
    }

    /// Run `f` as function `name` (its frame is on the fake stack).
    pub fn call<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.plat.enter(name);
        let r = f(self);
        self.plat.leave();
        r
    }

    // ---- pages ---------------------------------------------------------------

    /// Allocate `2^order` pages.
    pub fn alloc_pages(&mut self, order: u32) -> Option<usize> {
        let o = (order..=MAX_ORDER).find(|&o| !self.free_lists[o as usize].is_empty())?;
        let pfn = self.free_lists[o as usize].pop_first()?;
        for split in (order..o).rev() {
            self.free_lists[split as usize].insert(pfn + (1 << split));
        }
        let addr = self.base() + pfn * PAGE_SIZE;
        self.kasan.page_alloc(addr, order).expect("page_alloc hook");
        self.pages_used += 1 << order;
        self.blocks.insert(pfn, order);
        Some(addr)
    }

    /// The page frame number of `addr` if it is a page of RAM.
    fn pfn_of(&self, addr: usize) -> Option<usize> {
        let pfn = addr.checked_sub(self.base())? / PAGE_SIZE;
        (addr.is_multiple_of(PAGE_SIZE) && pfn < self.kasan.layout().ram_pages()).then_some(pfn)
    }

    /// Whether the page allocator holds page `pfn` as free.
    fn pfn_free(&self, pfn: usize) -> bool {
        (0..=MAX_ORDER).any(|o| self.free_lists[o as usize].contains(&(pfn & !((1 << o) - 1))))
    }

    /// Whether `2^order` pages at `addr` are all free in the page allocator.
    #[must_use]
    pub fn pages_free(&self, addr: usize, order: u32) -> bool {
        match self.pfn_of(addr) {
            Some(pfn) if order <= MAX_ORDER && pfn + (1 << order) <= self.kasan.layout().ram_pages() => {
                (pfn..pfn + (1 << order)).all(|p| self.pfn_free(p))
            }
            _ => false,
        }
    }

    /// Free `2^order` pages at `addr`. Anything but a block the page
    /// allocator handed out, with its order, is reported and not done: a
    /// free block as the runtime's double free, the rest (interior or
    /// misaligned pages, a wrong order, not RAM) as an invalid free.
    pub fn free_pages(&mut self, addr: usize, order: u32) -> Result<(), Bug> {
        let Some(pfn) = self.pfn_of(addr).filter(|p| self.blocks.get(p) == Some(&order)) else {
            return Err(self.bad_page_free(addr, order));
        };
        self.kasan.page_free(addr, order, Ip(self.ip()))?;
        self.blocks.remove(&pfn);
        self.pages_used -= 1 << order;
        let mut pfn = pfn;
        let mut o = order;
        while o < MAX_ORDER {
            let buddy = pfn ^ (1 << o);
            if !self.free_lists[o as usize].remove(&buddy) {
                break;
            }
            pfn = pfn.min(buddy);
            o += 1;
        }
        self.free_lists[o as usize].insert(pfn);
        Ok(())
    }

    /// The report of a free of pages that are not an allocated block.
    fn bad_page_free(&self, addr: usize, order: u32) -> Bug {
        if self.pages_free(addr, order) {
            // The runtime sees the same free pages: its double-free report.
            if let Err(bug) = self.kasan.page_free(addr, order, Ip(self.ip())) {
                return bug;
            }
        }
        self.kasan.report_invalid_free(addr, self.ip())
    }

    // ---- slab ----------------------------------------------------------------

    /// Create a named cache of `size`-byte objects. A size no slab of the
    /// largest order holds is [`HookError::BadSize`].
    pub fn kmem_cache_create(&mut self, name: &'static str, size: usize) -> Result<CacheId, HookError> {
        let id = self.kasan.cache_create(name, size, 8)?;
        let info = self.kasan.cache_info(id)?;
        let (slot, offset) = (info.slot_size, info.slab_offset);
        let per_slab = |o: u32| ((PAGE_SIZE << o) - offset) / slot;
        let Some(order) = (0..=3u32).find(|&o| per_slab(o) >= 8).or_else(|| (0..=MAX_ORDER).find(|&o| per_slab(o) >= 1))
        else {
            self.kasan.cache_destroy(id)?;
            return Err(HookError::BadSize);
        };
        self.caches.insert(id, SimCache { object_size: size, slot, offset, order, slabs: BTreeMap::new() });
        Ok(id)
    }

    /// Destroy a cache (its quarantined objects are released first); it
    /// allocates nothing afterwards.
    pub fn kmem_cache_destroy(&mut self, id: CacheId) -> Result<(), HookError> {
        self.kasan.quarantine_release_cache(id);
        self.pump_quarantine();
        self.kasan.cache_destroy(id)?;
        if let Some(c) = self.caches.remove(&id) {
            for s in c.slabs.into_values() {
                self.release_slab_page(s.base, s.order);
            }
        }
        Ok(())
    }

    /// Allocate an object of `size` bytes from cache `id`: `None` if the
    /// cache is gone, `size` is larger than its objects, or memory ran out.
    pub fn cache_alloc(&mut self, id: CacheId, size: usize) -> Option<usize> {
        let c = self.caches.get_mut(&id)?;
        if size > c.object_size {
            return None;
        }
        let slab_page = c.slabs.values().find(|s| !s.free.is_empty()).map(|s| s.base);
        let page = match slab_page {
            Some(b) => b,
            None => {
                let (order, slot, offset) = (c.order, c.slot, c.offset);
                let page = self.alloc_pages(order)?;
                if self.kasan.slab_page_alloc(id, page, order).is_err() {
                    self.free_pages(page, order).expect("free of a page just allocated");
                    return None;
                }
                let first = page + offset;
                let n = ((PAGE_SIZE << order) - offset) / slot;
                let free = (0..n).rev().map(|i| first + i * slot).collect();
                self.plat.add_slab(page, PAGE_SIZE << order, SlabRef { cache: id, base: first });
                let c = self.caches.get_mut(&id)?;
                c.slabs.insert(page, Slab { base: page, order, free, inuse: 0 });
                page
            }
        };
        let base = page;
        let c = self.caches.get_mut(&id)?;
        let slab = c.slabs.get_mut(&base)?;
        let ptr = slab.free.pop()?;
        if self.kasan.slab_alloc(id, ptr, Size(size)).is_err() {
            slab.free.push(ptr);
            return None;
        }
        slab.inuse += 1;
        self.objects.insert(ptr);
        Some(ptr)
    }

    /// Free `ptr` to cache `id` (bugs are reported, not done).
    pub fn cache_free(&mut self, id: CacheId, ptr: usize) -> Result<(), Bug> {
        if self.plat_slab(ptr).is_none_or(|r| r.cache != id) {
            return Err(self.kasan.report_invalid_free(ptr, self.ip()));
        }
        let freed = self.kasan.slab_free(id, ptr, Ip(self.ip()))?;
        self.objects.remove(&ptr);
        match freed {
            crate::hooks::Freed::Quarantined => self.pump_quarantine(),
            crate::hooks::Freed::FreeNow => self.release_object(Released { cache: id, ptr }),
        }
        Ok(())
    }

    fn plat_slab(&self, ptr: usize) -> Option<SlabRef> {
        use crate::platform::Platform;
        self.plat.slab_of(ptr)
    }

    /// Really free what the quarantine releases.
    pub fn pump_quarantine(&mut self) {
        while let Some(r) = self.kasan.quarantine_pop() {
            self.release_object(r);
        }
    }

    /// Empty the quarantine completely.
    pub fn drain_quarantine(&mut self) {
        while let Some(r) = self.kasan.quarantine_drain() {
            self.release_object(r);
        }
    }

    fn release_object(&mut self, r: Released) {
        let Some(slab) = self.plat_slab(r.ptr) else { return };
        let Some(c) = self.caches.get_mut(&r.cache) else { return };
        let Some(s) = c.slabs.get_mut(&(slab.base & !(PAGE_SIZE - 1))) else { return };
        s.free.push(r.ptr);
        s.inuse -= 1;
        if s.inuse == 0 {
            let (base, order) = (s.base, s.order);
            c.slabs.remove(&base);
            self.release_slab_page(base, order);
        }
    }

    fn release_slab_page(&mut self, base: usize, order: u32) {
        self.plat.remove_slab(base, PAGE_SIZE << order);
        self.kasan.slab_page_free(base, order).expect("slab_page_free hook");
        self.free_pages(base, order).expect("free of a slab page");
    }

    /// Bulk allocation: `n` objects or none.
    pub fn cache_alloc_bulk(&mut self, id: CacheId, size: usize, n: usize) -> Option<Vec<usize>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            match self.cache_alloc(id, size) {
                Some(p) => v.push(p),
                None => {
                    for p in v {
                        let _ = self.cache_free(id, p);
                    }
                    return None;
                }
            }
        }
        Some(v)
    }

    /// The kmalloc cache a `size`-byte kmalloc comes from (none above
    /// [`KMALLOC_MAX_CACHE`]: page-backed).
    #[must_use]
    pub fn kmalloc_cache(&self, size: usize) -> Option<CacheId> {
        self.kmalloc.iter().find(|(s, _)| *s >= size).map(|(_, id)| *id)
    }

    /// kmalloc: a slab object, or page-backed above the largest cache;
    /// [`ZERO_SIZE_PTR`] for 0 bytes.
    pub fn kmalloc(&mut self, size: usize) -> Option<usize> {
        if size == 0 {
            return Some(ZERO_SIZE_PTR);
        }
        if size > KMALLOC_MAX_CACHE {
            let order = (0..=MAX_ORDER).find(|&o| PAGE_SIZE << o >= size)?;
            let addr = self.alloc_pages(order)?;
            if self.kasan.kmalloc_large(addr, order, Size(size)).is_err() {
                self.free_pages(addr, order).expect("free of a page just allocated");
                return None;
            }
            self.large.insert(addr, order);
            return Some(addr);
        }
        let id = self.kmalloc_cache(size)?;
        self.cache_alloc(id, size)
    }

    /// kfree: slab, page-backed, or reported as an invalid/double free.
    /// Null and [`ZERO_SIZE_PTR`] (any pointer up to it) are nothing to free.
    pub fn kfree(&mut self, ptr: usize) -> Result<(), Bug> {
        if ptr <= ZERO_SIZE_PTR {
            return Ok(());
        }
        if let Some(r) = self.plat_slab(ptr) {
            return self.cache_free(r.cache, ptr);
        }
        let order = self.large.get(&ptr).copied().unwrap_or(0);
        self.kasan.kfree_large(ptr, order, Ip(self.ip()))?;
        self.large.remove(&ptr);
        self.free_pages(ptr, order)
    }

    /// ksize: the usable size, made accessible (the runtime decides: 0
    /// for anything but a live allocation's start, and a report if its
    /// first byte is poisoned). 0 for [`ZERO_SIZE_PTR`] and null.
    pub fn ksize(&mut self, ptr: usize) -> usize {
        self.try_ksize(ptr).unwrap_or(0)
    }

    /// [`SimKernel::ksize`], with the bug the runtime reported: anything
    /// but a live allocation's start has its first byte checked (as
    /// Linux's ksize does with kasan_check_byte), and gives 0 (here `Err`)
    /// when that reports.
    pub fn try_ksize(&mut self, ptr: usize) -> Result<usize, Bug> {
        if ptr <= ZERO_SIZE_PTR {
            return Ok(0);
        }
        // A live object of a cache this model does not allocate from (a raw
        // cache whose slots the caller hands out) is the runtime's to size,
        // even with no accessible byte (a zero-size object).
        let live_slab = self.plat_slab(ptr).is_some_and(|r| self.kasan.slab_object_live(r.cache, ptr));
        if !self.allocated(ptr) && !live_slab {
            // What the runtime's ksize does for it: check the first byte.
            self.read(ptr, 1)?;
            return Ok(0);
        }
        Ok(match (self.plat_slab(ptr), self.large.get(&ptr)) {
            (Some(r), _) => self.kasan.ksize(r.cache, ptr, Ip(self.ip())),
            (None, Some(&o)) => self.kasan.ksize_large(ptr, o, Ip(self.ip())),
            (None, None) => 0,
        })
    }

    /// Whether `ptr` is the start of a live allocation (slab or page-backed).
    fn allocated(&self, ptr: usize) -> bool {
        self.objects.contains(&ptr) || self.large.contains_key(&ptr)
    }

    /// krealloc as Linux's: null or [`ZERO_SIZE_PTR`] allocate afresh, size
    /// 0 frees and gives [`ZERO_SIZE_PTR`], in place when the slot (or the
    /// pages) fit, else allocate, then free the old one (kept if the
    /// allocation fails). A poisoned first byte is reported and null
    /// returned; a pointer that is no live allocation's start is reported
    /// as an invalid free and null returned.
    pub fn krealloc(&mut self, ptr: usize, new_size: usize) -> Option<usize> {
        self.try_krealloc(ptr, new_size).ok().flatten()
    }

    /// [`SimKernel::krealloc`], with the bug the runtime reported (`Err`:
    /// the pointer's first byte was poisoned, or it is no live
    /// allocation's start; krealloc returned null). `Ok(None)`: no memory.
    pub fn try_krealloc(&mut self, ptr: usize, new_size: usize) -> Result<Option<usize>, Bug> {
        if ptr <= ZERO_SIZE_PTR {
            return Ok(self.kmalloc(new_size));
        }
        if new_size == 0 {
            let _ = self.kfree(ptr);
            return Ok(Some(ZERO_SIZE_PTR));
        }
        self.read(ptr, 1)?;
        if !self.allocated(ptr) {
            return Err(self.kasan.report_invalid_free(ptr, self.ip()));
        }
        if let Some(r) = self.plat_slab(ptr) {
            let fits = self.caches.get(&r.cache).is_some_and(|c| new_size <= c.object_size);
            if fits {
                return Ok(self.kasan.slab_resize(r.cache, ptr, Size(new_size)).ok().map(|_| ptr));
            }
        } else if let Some(&o) = self.large.get(&ptr) {
            if new_size <= PAGE_SIZE << o && new_size > KMALLOC_MAX_CACHE {
                return Ok(self.kasan.kmalloc_large(ptr, o, Size(new_size)).ok().map(|_| ptr));
            }
        }
        let Some(new) = self.kmalloc(new_size) else { return Ok(None) };
        let _ = self.kfree(ptr);
        Ok(Some(new))
    }

    /// kfree_sensitive: zero a live allocation (all of its usable size),
    /// then free it; anything else goes to kfree to be reported.
    pub fn kfree_sensitive(&mut self, ptr: usize) -> Result<(), Bug> {
        if self.allocated(ptr) {
            let n = self.ksize(ptr);
            self.write(ptr, n).ok();
        }
        self.kfree(ptr)
    }

    // ---- stacks, vmalloc, globals -----------------------------------------------

    /// A 16 KiB kernel stack.
    pub fn stack_alloc(&mut self) -> Option<usize> {
        let a = self.alloc_pages(STACK_ORDER)?;
        self.kasan.stack_alloc(a, STACK_ORDER).expect("stack_alloc hook");
        self.stacks.insert(a);
        Some(a)
    }

    /// Free a kernel stack; anything else is reported as a bad page free.
    pub fn stack_free(&mut self, addr: usize) -> Result<(), Bug> {
        if !self.stacks.remove(&addr) {
            return Err(self.bad_page_free(addr, STACK_ORDER));
        }
        self.kasan.stack_free(addr, STACK_ORDER).expect("stack_free hook");
        self.free_pages(addr, STACK_ORDER)
    }

    /// vmalloc `size` bytes (page-backed, one guard page after); `None` for
    /// 0 bytes or more than the vmalloc window holds, as Linux's.
    pub fn vmalloc(&mut self, size: usize) -> Option<usize> {
        let vm = self.kasan.layout().vmalloc;
        let pages = size.div_ceil(PAGE_SIZE);
        let area_len = pages.checked_add(1)?.checked_mul(PAGE_SIZE)?;
        if size == 0 || area_len > vm.len() {
            return None;
        }
        let addr = match self.vm_free.iter().find(|(_, &len)| len >= area_len).map(|(&a, &l)| (a, l)) {
            Some((a, l)) => {
                self.vm_free.remove(&a);
                if l > area_len {
                    self.vm_free.insert(a + area_len, l - area_len);
                }
                a
            }
            None => {
                let next = self.vm_areas.iter().next_back().map(|(a, (_, l, _))| a + l).unwrap_or(vm.start);
                let next = next.max(self.vm_free.iter().next_back().map(|(a, l)| a + l).unwrap_or(vm.start));
                if next.checked_add(area_len).is_none_or(|end| end > vm.end) {
                    return None;
                }
                next
            }
        };
        let mut backing = Vec::with_capacity(pages);
        for _ in 0..pages {
            match self.alloc_pages(0) {
                Some(p) => backing.push(p),
                None => {
                    for p in backing {
                        let _ = self.free_pages(p, 0);
                    }
                    self.vm_free.insert(addr, area_len);
                    return None;
                }
            }
        }
        if self.kasan.vmalloc_alloc(addr, Size(size), Size(area_len)).is_err() {
            for p in backing {
                self.free_pages(p, 0).expect("free of a page just allocated");
            }
            self.vm_free.insert(addr, area_len);
            return None;
        }
        self.vm_areas.insert(addr, (size, area_len, backing));
        Some(addr)
    }

    /// The direct-map pages backing the vmalloc area at `addr`.
    #[must_use]
    pub fn vmalloc_pages(&self, addr: usize) -> Option<&[usize]> {
        self.vm_areas.get(&addr).map(|(_, _, pages)| pages.as_slice())
    }

    /// vfree.
    pub fn vfree(&mut self, addr: usize) {
        if let Some((_, len, backing)) = self.vm_areas.remove(&addr) {
            self.kasan.vmalloc_free(addr, Size(len)).expect("vfree hook");
            for p in backing {
                let _ = self.free_pages(p, 0);
            }
            self.vm_free.insert(addr, len);
        }
    }

    /// Lay out a global of `size` bytes in the image with the compiler's
    /// redzone (at least 32 bytes, size rounded to 32) and register it
    /// (refused if it does not fit or overlaps a global registered directly).
    pub fn define_global(&mut self, size: usize) -> Result<usize, GlobalError> {
        let beg = self.globals_next;
        let rz = (size.div_ceil(32) * 32 - size) + 32;
        let desc = GlobalDesc::new(beg, size, size + rz);
        self.kasan.register_global(&desc)?;
        self.globals_next = (beg + size + rz).div_ceil(32) * 32;
        Ok(beg)
    }

    // ---- accesses ----------------------------------------------------------------

    /// Check a read at the current call site.
    pub fn read(&self, addr: usize, size: usize) -> Result<(), Bug> {
        self.kasan.check(addr, Size(size), false, Ip(self.ip()))
    }

    /// Check a write at the current call site.
    pub fn write(&self, addr: usize, size: usize) -> Result<(), Bug> {
        self.kasan.check(addr, Size(size), true, Ip(self.ip()))
    }

    /// The bug type of a read, if any.
    #[must_use]
    pub fn read_bug(&self, addr: usize, size: usize) -> Option<BugType> {
        self.read(addr, size).err().map(|b| b.kind)
    }

    /// Take the reports printed so far.
    pub fn take_log(&self) -> std::string::String {
        self.plat.take_log()
    }

    /// Private shadow pages mapped now (host view).
    #[must_use]
    pub fn private_pages(&self) -> usize {
        self.kasan.inner.lock().mapper.private_pages()
    }

    /// Check the model's own invariants against the runtime's per-page state.
    pub fn check_invariants(&self) -> Result<(), std::string::String> {
        use crate::page_state::PageState;
        let pages = self.kasan.pages();
        let mut free = 0;
        for (o, list) in self.free_lists.iter().enumerate() {
            for &pfn in list {
                for p in pfn..pfn + (1 << o) {
                    if self.kasan.config().mode != crate::config::Mode::Off && pages.get(p).state != PageState::Free {
                        return Err(std::format!("pfn {p} on free list order {o} but {:?}", pages.get(p)));
                    }
                    free += 1;
                }
            }
        }
        let total = self.kasan.layout().ram_pages();
        if free + self.pages_used != total {
            return Err(std::format!("page accounting: {free} free + {} used != {total}", self.pages_used));
        }
        let blocks: usize = self.blocks.values().map(|&o| 1 << o).sum();
        if blocks != self.pages_used {
            return Err(std::format!("{blocks} pages in allocated blocks but {} used", self.pages_used));
        }
        Ok(())
    }
}
