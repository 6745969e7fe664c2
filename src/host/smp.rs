//! A model kernel for several CPUs (host threads): the runtime's hooks
//! and checks run at once on every thread, as in an SMP kernel.
//!
//! ```text
//!  thread 0 ─┐  alloc/free: the model's own state under short locks      ┌─ checks: no lock,
//!  thread 1 ─┼─► page pool │ slab caches │ vmalloc window ──► hooks ──► │  any thread, any time
//!  thread n ─┘  (the hook runs outside the model's lock, as a kernel's    └─ (the point of SMP)
//!               free runs kasan_free_pages before taking the zone lock)
//! ```
//!
//! [`crate::host::sim::SimKernel`] stays the one-CPU model (its API takes
//! `&mut self`); this one takes `&self` everywhere and is `Sync`. Pages
//! are handed out at random places of RAM, so the pages of different
//! threads share 32 KiB blocks and hybrid's shadow pages flip between
//! shared, CONSULT and private under other threads' checks.
//!
//! A thread that wants an access after a free to stay a bug while it
//! checks it *holds* what it freed: a held page, vmalloc range or slab
//! slot is not handed out again (it waits on the model's free list, as on
//! a per-CPU list of a kernel) until the thread lets it go.

use crate::cache::CacheId;
use crate::config::Config;
use crate::error::{HookError, InitError};
use crate::hooks::{Ip, Released, Size};
use crate::host::mapper::HostMapper;
use crate::host::platform::HostPlatform;
use crate::host::sim::Arena;
use crate::host::space::{HostSpace, SpaceError};
use crate::mapper::PAGE_SIZE;
use crate::platform::{Platform, SlabRef};
use crate::report::Bug;
use crate::runtime::Kasan;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

/// Why the SMP model kernel could not start.
#[derive(Debug)]
pub enum SmpError {
    /// The address space could not be reserved.
    Space(SpaceError),
    /// The runtime refused to start.
    Init(InitError),
    /// A hook refused while the caches were set up.
    Hook(HookError),
}

/// Sizes of an SMP model kernel.
#[derive(Clone, Copy, Debug)]
pub struct SmpConfig {
    /// RAM bytes (multiple of 4 MiB).
    pub ram: usize,
    /// vmalloc window bytes.
    pub vmalloc: usize,
    /// Runtime configuration.
    pub kasan: Config,
}

/// Object sizes of the model's slab caches (one-page slabs).
pub const CACHE_SIZES: [usize; 4] = [24, 96, 200, 500];

/// One slab page of a cache.
struct SlabPage {
    free: Vec<usize>,
    inuse: usize,
}

/// A slab cache: its runtime id, layout, and slab pages by base address.
struct SmpCache {
    id: CacheId,
    object_size: usize,
    slot: usize,
    offset: usize,
    slabs: Mutex<BTreeMap<usize, SlabPage>>,
}

/// What a thread holds back from reuse (see the module doc).
#[derive(Default)]
struct Held {
    /// Slab objects whose release from quarantine must wait.
    slots: HashSet<usize>,
    /// Held slab objects the quarantine already released.
    released: Vec<Released>,
}

/// A slab object the model handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    /// Its cache ([`CACHE_SIZES`] index).
    pub cache: usize,
    /// Its address.
    pub ptr: usize,
    /// Its requested size.
    pub size: usize,
}

/// The SMP model kernel.
pub struct SmpKernel {
    /// The runtime (dropped before the arena and address space it uses).
    pub kasan: Kasan<HostMapper, HostPlatform>,
    /// The platform (shares state with the runtime's copy).
    pub plat: HostPlatform,
    /// Page frames: true when free in the model's page allocator.
    pages: Mutex<Vec<bool>>,
    /// vmalloc window pages: true when free.
    vm: Mutex<Vec<bool>>,
    caches: Vec<SmpCache>,
    held: Mutex<Held>,
    _arena: Arena,
    _space: HostSpace,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SmpKernel {
    /// Start a model kernel with the caches of [`CACHE_SIZES`].
    pub fn new(cfg: SmpConfig) -> Result<Self, SmpError> {
        let space = HostSpace::new(cfg.ram, cfg.vmalloc, 64 << 10).map_err(SmpError::Space)?;
        let layout = space.layout();
        let plat = HostPlatform::new();
        let arena = Arena::new(Kasan::<HostMapper, HostPlatform>::arena_bytes(&layout, &cfg.kasan));
        // SAFETY: the one handover; the runtime is a field before `_arena`,
        // so it is dropped first (or never built).
        let kasan = Kasan::new(cfg.kasan, layout, HostMapper::new(space.shadow()), plat.clone(), unsafe {
            arena.hand_over()
        })
        .map_err(SmpError::Init)?;
        let mut caches = Vec::new();
        for (i, &size) in CACHE_SIZES.iter().enumerate() {
            const NAMES: [&str; 4] = ["smp-24", "smp-96", "smp-200", "smp-500"];
            let id = kasan.cache_create(NAMES[i], size, 8).map_err(|e| SmpError::Hook(e.into()))?;
            let info = kasan.cache_info(id).map_err(|e| SmpError::Hook(e.into()))?;
            caches.push(SmpCache {
                id,
                object_size: size,
                slot: info.slot_size,
                offset: info.slab_offset,
                slabs: Mutex::new(BTreeMap::new()),
            });
        }
        Ok(SmpKernel {
            pages: Mutex::new(std::vec![true; layout.ram_pages()]),
            vm: Mutex::new(std::vec![true; layout.vmalloc.len() / PAGE_SIZE]),
            kasan,
            plat,
            caches,
            held: Mutex::new(Held::default()),
            _arena: arena,
            _space: space,
        })
    }

    /// Shadow pages remapped one at a time since init (each a transition
    /// of a block between the shared pages and a private one).
    #[must_use]
    pub fn shadow_remaps(&self) -> usize {
        self.kasan.inner.lock().mapper.remaps()
    }

    /// The current call site of the calling thread.
    #[must_use]
    pub fn ip(&self) -> usize {
        self.plat.current_ip()
    }

    fn base(&self) -> usize {
        self.kasan.layout().direct_map.start
    }

    /// Take `n` aligned free entries of `map` at or after `hint` (wrapping
    /// around), mark them taken; the first index.
    fn take_run(map: &mut [bool], n: usize, hint: usize) -> Option<usize> {
        let slots = map.len() / n;
        (0..slots).map(|k| (hint / n + k) % slots * n).find(|&i| map[i..i + n].iter().all(|&f| f)).inspect(|&i| {
            map[i..i + n].iter_mut().for_each(|f| *f = false);
        })
    }

    // ---- pages ---------------------------------------------------------------

    /// Allocate `2^order` pages somewhere near frame `hint` (the caller's
    /// random pick, so threads' pages share blocks).
    pub fn alloc_pages(&self, order: u32, hint: usize) -> Option<usize> {
        let pfn = Self::take_run(&mut lock(&self.pages), 1 << order, hint)?;
        let addr = self.base() + pfn * PAGE_SIZE;
        self.kasan.page_alloc(addr, order).expect("page_alloc hook");
        Some(addr)
    }

    /// Free `2^order` pages at `addr` for the runtime, but keep them from
    /// the model's allocator until [`SmpKernel::release_pages`] (held).
    pub fn free_pages_held(&self, addr: usize, order: u32) -> Result<(), Bug> {
        self.kasan.page_free(addr, order, Ip(self.ip()))
    }

    /// Give held pages back to the model's allocator.
    pub fn release_pages(&self, addr: usize, order: u32) {
        let pfn = (addr - self.base()) / PAGE_SIZE;
        lock(&self.pages)[pfn..pfn + (1 << order)].iter_mut().for_each(|f| *f = true);
    }

    /// Free `2^order` pages at `addr`.
    pub fn free_pages(&self, addr: usize, order: u32) -> Result<(), Bug> {
        self.free_pages_held(addr, order)?;
        self.release_pages(addr, order);
        Ok(())
    }

    /// A page-backed kmalloc of `size` bytes (`2^order` pages).
    pub fn kmalloc_large(&self, size: usize, hint: usize) -> Option<(usize, u32)> {
        let order = (0..4u32).find(|&o| PAGE_SIZE << o >= size)?;
        let addr = self.alloc_pages(order, hint)?;
        self.kasan.kmalloc_large(addr, order, Size(size)).expect("kmalloc_large hook");
        Some((addr, order))
    }

    /// kfree of a page-backed kmalloc; its pages stay held when `hold`.
    pub fn kfree_large(&self, addr: usize, order: u32, hold: bool) -> Result<(), Bug> {
        self.kasan.kfree_large(addr, order, Ip(self.ip()))?;
        self.free_pages_held(addr, order)?;
        if !hold {
            self.release_pages(addr, order);
        }
        Ok(())
    }

    /// A kernel stack of `2^order` pages.
    pub fn stack_alloc(&self, order: u32, hint: usize) -> Option<usize> {
        let addr = self.alloc_pages(order, hint)?;
        self.kasan.stack_alloc(addr, order).expect("stack_alloc hook");
        Some(addr)
    }

    /// Free a kernel stack.
    pub fn stack_free(&self, addr: usize, order: u32) -> Result<(), Bug> {
        self.kasan.stack_free(addr, order).expect("stack_free hook");
        self.free_pages(addr, order)
    }

    // ---- slab ------------------------------------------------------------------

    /// Object size of cache `cache` ([`CACHE_SIZES`] index).
    #[must_use]
    pub fn cache_size(&self, cache: usize) -> usize {
        self.caches[cache].object_size
    }

    /// Allocate a `size`-byte object of cache `cache`; a new slab page
    /// comes from near frame `hint`.
    pub fn cache_alloc(&self, cache: usize, size: usize, hint: usize) -> Option<Object> {
        let c = &self.caches[cache];
        let ptr = {
            let mut slabs = lock(&c.slabs);
            slabs.values_mut().find(|s| !s.free.is_empty()).map(|s| {
                s.inuse += 1;
                s.free.pop().expect("a free slot")
            })
        };
        let ptr = match ptr {
            Some(p) => p,
            None => {
                let page = self.alloc_pages(0, hint)?;
                self.kasan.slab_page_alloc(c.id, page, 0).expect("slab_page_alloc hook");
                let first = page + c.offset;
                self.plat.add_slab(page, PAGE_SIZE, SlabRef { cache: c.id, base: first });
                let n = (PAGE_SIZE - c.offset) / c.slot;
                let mut free: Vec<usize> = (0..n).rev().map(|i| first + i * c.slot).collect();
                let ptr = free.pop().expect("a slot");
                lock(&c.slabs).insert(page, SlabPage { free, inuse: 1 });
                ptr
            }
        };
        self.kasan.slab_alloc(c.id, ptr, Size(size)).expect("slab_alloc hook");
        Some(Object { cache, ptr, size })
    }

    /// Free a slab object; with `hold`, its slot is not reused (nor its
    /// slab page freed) before [`SmpKernel::unhold`], even if the
    /// quarantine lets it go.
    pub fn cache_free(&self, o: Object, hold: bool) -> Result<(), Bug> {
        let c = &self.caches[o.cache];
        if hold {
            lock(&self.held).slots.insert(o.ptr);
        }
        if let Err(bug) = self.kasan.slab_free(c.id, o.ptr, Ip(self.ip())) {
            lock(&self.held).slots.remove(&o.ptr);
            return Err(bug);
        }
        self.pump_quarantine();
        Ok(())
    }

    /// Let a held slab object go (see [`SmpKernel::cache_free`]).
    pub fn unhold(&self, ptr: usize) {
        let released = {
            let mut h = lock(&self.held);
            h.slots.remove(&ptr);
            h.released.iter().position(|r| r.ptr == ptr).map(|i| h.released.swap_remove(i))
        };
        if let Some(r) = released {
            self.release_object(r);
        }
    }

    /// Really free what the quarantine releases.
    pub fn pump_quarantine(&self) {
        while let Some(r) = self.kasan.quarantine_pop() {
            {
                let mut h = lock(&self.held);
                if h.slots.contains(&r.ptr) {
                    h.released.push(r);
                    continue;
                }
            }
            self.release_object(r);
        }
    }

    fn release_object(&self, r: Released) {
        let c = self.caches.iter().find(|c| c.id == r.cache).expect("a model cache");
        let page = r.ptr & !(PAGE_SIZE - 1);
        let empty = {
            let mut slabs = lock(&c.slabs);
            let s = slabs.get_mut(&page).expect("the object's slab page");
            s.free.push(r.ptr);
            s.inuse -= 1;
            let empty = s.inuse == 0;
            if empty {
                slabs.remove(&page);
            }
            empty
        };
        if empty {
            self.plat.remove_slab(page, PAGE_SIZE);
            self.kasan.slab_page_free(page, 0).expect("slab_page_free hook");
            self.free_pages(page, 0).expect("free of a slab page");
        }
    }

    // ---- vmalloc ---------------------------------------------------------------

    /// vmalloc `size` bytes (one guard page after), placed near window page
    /// `hint`; its backing pages come from near frame `hint`. Returns the
    /// address and the backing pages.
    pub fn vmalloc(&self, size: usize, hint: usize) -> Option<(usize, Vec<usize>)> {
        let pages = size.div_ceil(PAGE_SIZE);
        let vm = self.kasan.layout().vmalloc;
        let first = {
            let mut w = lock(&self.vm);
            let len = w.len();
            let hint = hint % len;
            (0..len - pages).map(|k| (hint + k) % (len - pages)).find(|&i| w[i..=i + pages].iter().all(|&f| f)).inspect(
                |&i| w[i..=i + pages].iter_mut().for_each(|f| *f = false),
            )?
        };
        let addr = vm.start + first * PAGE_SIZE;
        let mut backing = Vec::with_capacity(pages);
        for k in 0..pages {
            match self.alloc_pages(0, hint + k) {
                Some(p) => backing.push(p),
                None => {
                    for p in backing {
                        self.free_pages(p, 0).expect("free of a page just allocated");
                    }
                    self.release_vm(addr, size);
                    return None;
                }
            }
        }
        self.kasan.vmalloc_alloc(addr, Size(size), Size((pages + 1) * PAGE_SIZE)).expect("vmalloc hook");
        Some((addr, backing))
    }

    /// vfree; with `hold` the range is not reused before
    /// [`SmpKernel::release_vm`].
    pub fn vfree(&self, addr: usize, size: usize, backing: Vec<usize>, hold: bool) {
        let pages = size.div_ceil(PAGE_SIZE);
        self.kasan.vmalloc_free(addr, Size((pages + 1) * PAGE_SIZE)).expect("vfree hook");
        for p in backing {
            self.free_pages(p, 0).expect("free of a vmalloc page");
        }
        if !hold {
            self.release_vm(addr, size);
        }
    }

    /// Give a held vmalloc range back to the window.
    pub fn release_vm(&self, addr: usize, size: usize) {
        let first = (addr - self.kasan.layout().vmalloc.start) / PAGE_SIZE;
        let pages = size.div_ceil(PAGE_SIZE);
        lock(&self.vm)[first..=first + pages].iter_mut().for_each(|f| *f = true);
    }

    // ---- accesses ----------------------------------------------------------------

    /// Check an access at the calling thread's call site.
    pub fn access(&self, addr: usize, size: usize, write: bool) -> Result<(), Bug> {
        self.kasan.check(addr, Size(size), write, Ip(self.ip()))
    }

    /// Whether the platform's slab lookup knows `addr` (for tests).
    #[must_use]
    pub fn is_slab(&self, addr: usize) -> bool {
        self.plat.slab_of(addr).is_some()
    }
}
