//! A model kernel for host tests and benchmarks: a buddy page allocator,
//! a slab allocator with kmalloc caches and named caches, page-backed large
//! kmalloc, kernel stacks, vmalloc with guard pages and globals, all calling
//! the runtime's hooks in the order a real kernel does. Data accesses are
//! checked, not performed.

use crate::cache::CacheId;
use crate::config::Config;
use crate::error::{HookError, InitError};
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
    slot: usize,
    offset: usize,
    order: u32,
    slabs: BTreeMap<usize, Slab>,
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
    /// vmalloc areas: addr -> (size, area_len, backing pages).
    vm_areas: BTreeMap<usize, (usize, usize, Vec<usize>)>,
    vm_free: BTreeMap<usize, usize>,
    globals_next: usize,
    /// Pages the page allocator has handed out.
    pub pages_used: usize,
    _space: HostSpace,
}

impl SimKernel {
    /// Start a model kernel.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        let space = HostSpace::new(cfg.ram, cfg.vmalloc, cfg.image).map_err(SimError::Space)?;
        let layout = space.layout();
        let mut mapper = HostMapper::new(space.shadow());
        mapper.set_frame_limit(None);
        let plat = HostPlatform::new();
        let arena = std::vec![0u8; Kasan::<HostMapper, HostPlatform>::arena_bytes(&layout, &cfg.kasan)];
        let arena: &'static mut [u8] = std::boxed::Box::leak(arena.into_boxed_slice());
        let kasan = Kasan::new(cfg.kasan, layout, mapper, plat.clone(), arena).map_err(SimError::Init)?;
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
            vm_areas: BTreeMap::new(),
            vm_free: BTreeMap::new(),
            globals_next: layout.image.start,
            pages_used: 0,
            _space: space,
        };
        for &size in &KMALLOC_SIZES {
            let name: &'static str = std::boxed::Box::leak(std::format!("kmalloc-{size}").into_boxed_str());
            let id = k.kmem_cache_create(name, size).map_err(SimError::Hook)?;
            k.kmalloc.push((size, id));
        }
        Ok(k)
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
        Some(addr)
    }

    /// Free `2^order` pages at `addr` (a double free is reported, not done).
    pub fn free_pages(&mut self, addr: usize, order: u32) -> Result<(), Bug> {
        self.kasan.page_free(addr, order, self.ip())?;
        self.pages_used -= 1 << order;
        let mut pfn = (addr - self.base()) / PAGE_SIZE;
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

    // ---- slab ----------------------------------------------------------------

    /// Create a named cache of `size`-byte objects.
    pub fn kmem_cache_create(&mut self, name: &'static str, size: usize) -> Result<CacheId, HookError> {
        let id = self.kasan.cache_create(name, size, 8)?;
        let info = self.kasan.cache_info(id)?;
        let (slot, offset) = (info.slot_size, info.slab_offset);
        let order = (0..=3u32).find(|&o| ((PAGE_SIZE << o) - offset) / slot >= 8).unwrap_or_else(|| {
            (0..=MAX_ORDER).find(|&o| (PAGE_SIZE << o) >= slot + offset).unwrap_or(MAX_ORDER)
        });
        self.caches.insert(id, SimCache { slot, offset, order, slabs: BTreeMap::new() });
        Ok(id)
    }

    /// Destroy a cache (its quarantined objects are released first).
    pub fn kmem_cache_destroy(&mut self, id: CacheId) -> Result<(), HookError> {
        self.kasan.quarantine_release_cache(id);
        self.pump_quarantine();
        self.kasan.cache_destroy(id)?;
        if let Some(c) = self.caches.get_mut(&id) {
            let slabs: Vec<(usize, u32)> = c.slabs.values().map(|s| (s.base, s.order)).collect();
            c.slabs.clear();
            for (base, order) in slabs {
                self.release_slab_page(base, order);
            }
        }
        Ok(())
    }

    /// Allocate an object of `size` bytes from cache `id`.
    pub fn cache_alloc(&mut self, id: CacheId, size: usize) -> Option<usize> {
        let c = self.caches.get_mut(&id)?;
        let slab_page = c.slabs.values().find(|s| !s.free.is_empty()).map(|s| s.base);
        let page = match slab_page {
            Some(b) => b,
            None => {
                let (order, slot, offset) = (c.order, c.slot, c.offset);
                let page = self.alloc_pages(order)?;
                self.kasan.slab_page_alloc(id, page, order).expect("slab_page_alloc hook");
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
        slab.inuse += 1;
        self.kasan.slab_alloc(id, ptr, size).expect("slab_alloc hook");
        Some(ptr)
    }

    /// Free `ptr` to cache `id` (bugs are reported, not done).
    pub fn cache_free(&mut self, id: CacheId, ptr: usize) -> Result<(), Bug> {
        let base = match self.plat_slab(ptr) {
            Some(r) if r.cache == id => r.base,
            _ => return Err(self.kasan.report_invalid_free(ptr, self.ip())),
        };
        match self.kasan.slab_free(id, base, ptr, self.ip())? {
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

    fn kmalloc_cache(&self, size: usize) -> Option<CacheId> {
        self.kmalloc.iter().find(|(s, _)| *s >= size).map(|(_, id)| *id)
    }

    /// kmalloc: a slab object, or page-backed above the largest cache.
    pub fn kmalloc(&mut self, size: usize) -> Option<usize> {
        if size > KMALLOC_MAX_CACHE {
            let order = (0..=MAX_ORDER).find(|&o| PAGE_SIZE << o >= size)?;
            let addr = self.alloc_pages(order)?;
            self.kasan.kmalloc_large(addr, order, size).expect("kmalloc_large hook");
            self.large.insert(addr, order);
            return Some(addr);
        }
        let id = self.kmalloc_cache(size.max(1))?;
        self.cache_alloc(id, size)
    }

    /// kfree: slab, page-backed, or reported as an invalid/double free.
    pub fn kfree(&mut self, ptr: usize) -> Result<(), Bug> {
        if ptr == 0 {
            return Ok(());
        }
        if let Some(r) = self.plat_slab(ptr) {
            return self.cache_free(r.cache, ptr);
        }
        let order = self.large.get(&ptr).copied().unwrap_or(0);
        self.kasan.kfree_large(ptr, order, self.ip())?;
        self.large.remove(&ptr);
        self.free_pages(ptr, order)
    }

    /// ksize: the usable size, made accessible (0 and a report if freed).
    pub fn ksize(&mut self, ptr: usize) -> usize {
        match self.plat_slab(ptr) {
            Some(r) => self.kasan.ksize(r.cache, ptr, self.ip()),
            None => match self.large.get(&ptr) {
                Some(&o) if self.kasan.check_byte(ptr, self.ip()) => PAGE_SIZE << o,
                _ => {
                    self.kasan.check_byte(ptr, self.ip());
                    0
                }
            },
        }
    }

    /// krealloc: in place when the slot's object fits, else move. A freed
    /// `ptr` is reported and null returned.
    pub fn krealloc(&mut self, ptr: usize, new_size: usize) -> Option<usize> {
        if ptr == 0 {
            return self.kmalloc(new_size);
        }
        if !self.kasan.check_byte(ptr, self.ip()) {
            return None;
        }
        if let Some(r) = self.plat_slab(ptr) {
            let info = self.kasan.cache_info(r.cache).ok()?;
            if new_size <= info.object_size {
                self.kasan.slab_resize(r.cache, ptr, new_size).ok()?;
                return Some(ptr);
            }
        } else if let Some(&o) = self.large.get(&ptr) {
            if new_size <= PAGE_SIZE << o && new_size > KMALLOC_MAX_CACHE {
                self.kasan.kmalloc_large(ptr, o, new_size).ok()?;
                return Some(ptr);
            }
        }
        let new = self.kmalloc(new_size)?;
        let _ = self.kfree(ptr);
        Some(new)
    }

    /// kfree_sensitive: zero the object (if live), then free it.
    pub fn kfree_sensitive(&mut self, ptr: usize) -> Result<(), Bug> {
        if let Some(r) = self.plat_slab(ptr) {
            if self.kasan.slab_object_live(r.cache, r.base, ptr) {
                let n = self.kasan.ksize(r.cache, ptr, self.ip());
                self.write(ptr, n).ok();
            }
        }
        self.kfree(ptr)
    }

    // ---- stacks, vmalloc, globals -----------------------------------------------

    /// A 16 KiB kernel stack.
    pub fn stack_alloc(&mut self) -> Option<usize> {
        let a = self.alloc_pages(STACK_ORDER)?;
        self.kasan.stack_alloc(a, STACK_ORDER).expect("stack_alloc hook");
        Some(a)
    }

    /// Free a kernel stack.
    pub fn stack_free(&mut self, addr: usize) -> Result<(), Bug> {
        self.kasan.stack_free(addr, STACK_ORDER).expect("stack_free hook");
        self.free_pages(addr, STACK_ORDER)
    }

    /// vmalloc `size` bytes (page-backed, one guard page after).
    pub fn vmalloc(&mut self, size: usize) -> Option<usize> {
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let area_len = (pages + 1) * PAGE_SIZE;
        let vm = self.kasan.layout().vmalloc;
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
                if next + area_len > vm.end {
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
        self.kasan.vmalloc_alloc(addr, size, area_len).expect("vmalloc hook");
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
            self.kasan.vmalloc_free(addr, len).expect("vfree hook");
            for p in backing {
                let _ = self.free_pages(p, 0);
            }
            self.vm_free.insert(addr, len);
        }
    }

    /// Lay out a global of `size` bytes in the image with the compiler's
    /// redzone (at least 32 bytes, size rounded to 32) and register it.
    pub fn define_global(&mut self, size: usize) -> usize {
        let beg = self.globals_next;
        let rz = (size.div_ceil(32) * 32 - size) + 32;
        let desc = GlobalDesc {
            beg,
            size,
            size_with_redzone: size + rz,
            name: core::ptr::null(),
            module_name: core::ptr::null(),
            has_dynamic_init: 0,
            location: core::ptr::null(),
            odr_indicator: 0,
        };
        self.kasan.register_global(&desc).expect("register_global");
        self.globals_next = (beg + size + rz).div_ceil(32) * 32;
        beg
    }

    // ---- accesses ----------------------------------------------------------------

    /// Check a read at the current call site.
    pub fn read(&self, addr: usize, size: usize) -> Result<(), Bug> {
        self.kasan.check(addr, size, false, self.ip())
    }

    /// Check a write at the current call site.
    pub fn write(&self, addr: usize, size: usize) -> Result<(), Bug> {
        self.kasan.check(addr, size, true, self.ip())
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
        Ok(())
    }
}
