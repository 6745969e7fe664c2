//! Buddy page allocator, orders 0..=MAX_ORDER, over the RAM of the PVH memory
//! map minus the first MiB and the kernel image. Blocks are handed out as
//! direct-map addresses. A frame array (one `Page` per 4 KiB frame, carved
//! from RAM at init) holds the state; `check_invariants()` verifies it.
//! One lock (`LOCK`, a leaf: never held while a sanitizer hook runs, as
//! the runtime allocates its frames here from inside its own lock) guards
//! the free lists and the frame array of free blocks; allocated blocks'
//! frames belong to their owner.
//!
//! Grouping by pool (like Linux's migratetypes, at the sanitizer's block
//! size): RAM is cut into pageblocks of `PAGEBLOCK_PAGES` (8) pages, the
//! data pages behind one shadow page. Allocations smaller than a pageblock
//! come from pageblocks of their own pool, so that pages needing byte
//! shadow (slab, stacks, large kmalloc) share blocks with each other and
//! not with page-granular pages (page cache, anonymous, tables):
//!
//! ```text
//!  free order >= 3 ──► one list per order, no pool ("any")
//!  free order  < 3 ──► list of (pool of its pageblock, order)
//!  alloc order < 3, pool P: P's lists ─► split a free pageblock, mark it P
//!                           ─► else steal from the other pool (counted)
//! ```
//!
//! A pageblock's pool is stored in its first frame and only changes while
//! the whole pageblock is allocated or free.
use crate::kasan_glue;
use crate::println;
use guest_boot::paging::{phys_to_virt, virt_to_phys, DIRECT_MAP_BASE};

pub const PAGE_SIZE: usize = 4096;
pub const MAX_ORDER: usize = 10;
const NONE: u32 = u32::MAX;

pub const PG_FREE: u16 = 1 << 0; // head of a free block (order = block order)
pub const PG_HEAD: u16 = 1 << 1; // head of an allocated block
pub const PG_TAIL: u16 = 1 << 2; // non-head page of an allocated block (head = index of head)
pub const PG_SLAB: u16 = 1 << 3; // allocated block is a slab (private = SlabMeta *)
pub const PG_LARGE: u16 = 1 << 4; // allocated block is a large kmalloc (private = size)
pub const PG_STACK: u16 = 1 << 5; // kernel stack
pub const PG_RESERVED: u16 = 1 << 6; // not managed (holes, kernel image, frame array)
pub const PG_META: u16 = 1 << 7; // slab descriptors / page tables
pub const PG_KASAN: u16 = 1 << 8; // shadow page or shadow page table owned by the sanitizer runtime

/// Pages per pageblock: the data pages one shadow page covers.
pub const PAGEBLOCK_PAGES: usize = hybrid_shadow::layout::PAGES_PER_BLOCK;
const PAGEBLOCK_ORDER: usize = PAGEBLOCK_PAGES.trailing_zeros() as usize;
const NPOOLS: usize = 2;

/// Which pageblocks an allocation smaller than a pageblock comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Pool {
    /// Page-granular memory: page cache, anonymous pages, tables, metadata.
    Untracked = 0,
    /// Memory with byte-granular shadow: slab pages, stacks, large kmalloc.
    Tracked = 1,
}

impl Pool {
    /// The pool of an allocation with owner flags `owner`.
    pub fn of_owner(owner: u16) -> Pool {
        if owner & (PG_SLAB | PG_LARGE | PG_STACK) != 0 {
            Pool::Tracked
        } else {
            Pool::Untracked
        }
    }
    fn other(self) -> Pool {
        match self {
            Pool::Untracked => Pool::Tracked,
            Pool::Tracked => Pool::Untracked,
        }
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Page {
    pub flags: u16,
    pub order: u8,
    /// On the first frame of a pageblock: its `Pool` (as u8).
    pool: u8,
    /// Free-list links (frame indices), valid while PG_FREE.
    next: u32,
    prev: u32,
    /// Index of the head frame (tails of an allocated block; heads: own index).
    pub head: u32,
    /// Owner data: SlabMeta pointer (PG_SLAB), requested size (PG_LARGE),
    /// slots in use on the head of a chunk of slab descriptors (PG_META).
    pub private: usize,
}

struct Buddy {
    pages: *mut Page,
    base_pfn: u64,
    npages: usize,
    /// Free lists by [pool][order]; orders >= PAGEBLOCK_ORDER use pool 0 only.
    free_head: [[u32; MAX_ORDER + 1]; NPOOLS],
    nfree: [[usize; MAX_ORDER + 1]; NPOOLS],
    free_pages: usize,
    managed_pages: usize,
    /// Allocations below a pageblock served from the other pool's pageblocks.
    steals: usize,
    /// Grouping by pool on (`pageblocks=on`, the default); off, every
    /// pageblock is `Untracked` and all share one set of lists.
    grouping: bool,
}

static mut B: Buddy = Buddy {
    pages: core::ptr::null_mut(),
    base_pfn: 0,
    npages: 0,
    free_head: [[NONE; MAX_ORDER + 1]; NPOOLS],
    nfree: [[0; MAX_ORDER + 1]; NPOOLS],
    free_pages: 0,
    managed_pages: 0,
    steals: 0,
    grouping: true,
};

/// Guards `B` on several CPUs (see the header).
static LOCK: guest_boot::smp::RecLock = guest_boot::smp::RecLock::new();

fn b() -> &'static mut Buddy {
    // SAFETY: callers that change the lists or free frames hold LOCK (or
    // run at boot, on one CPU); no allocation from interrupt context; the
    // fields read without it (pages, base_pfn, npages, grouping) are set at
    // init only. None keeps the reference across a call that takes it again.
    unsafe { &mut *core::ptr::addr_of_mut!(B) }
}

impl Buddy {
    fn page(&self, idx: u32) -> &'static mut Page {
        debug_assert!((idx as usize) < self.npages);
        // SAFETY: `pages` is the frame array `init` carved from RAM for
        // `npages` entries and initialized; idx < npages (callers derive it
        // from a pfn in range). One `Page` is borrowed at a time, as in `b`.
        unsafe { &mut *self.pages.add(idx as usize) }
    }
    fn idx_of_phys(&self, pa: u64) -> Option<u32> {
        let pfn = pa / PAGE_SIZE as u64;
        if pfn < self.base_pfn || pfn >= self.base_pfn + self.npages as u64 {
            return None;
        }
        Some((pfn - self.base_pfn) as u32)
    }
    fn virt_of(&self, idx: u32) -> usize {
        phys_to_virt((self.base_pfn + idx as u64) * PAGE_SIZE as u64) as usize
    }
    /// First frame of the pageblock holding `idx` (base_pfn is pageblock aligned).
    fn pageblock(idx: u32) -> u32 {
        idx & !(PAGEBLOCK_PAGES as u32 - 1)
    }
    fn pool_of(&self, idx: u32) -> Pool {
        if self.page(Self::pageblock(idx)).pool == Pool::Tracked as u8 {
            Pool::Tracked
        } else {
            Pool::Untracked
        }
    }
    /// Mark every pageblock of a block of at least a pageblock.
    fn set_pool(&mut self, idx: u32, order: usize, pool: Pool) {
        let mut i = idx;
        while i < idx + (1u32 << order) {
            self.page(i).pool = pool as u8;
            i += PAGEBLOCK_PAGES as u32;
        }
    }
    /// The free list (pool index) a free block of `order` at `idx` lives on.
    fn list_of(&self, idx: u32, order: usize) -> usize {
        if order >= PAGEBLOCK_ORDER {
            0
        } else {
            self.pool_of(idx) as usize
        }
    }
    fn list_add(&mut self, idx: u32, order: usize) {
        let l = self.list_of(idx, order);
        let h = self.free_head[l][order];
        let p = self.page(idx);
        p.flags = PG_FREE;
        p.order = order as u8;
        p.prev = NONE;
        p.next = h;
        p.head = idx;
        if h != NONE {
            self.page(h).prev = idx;
        }
        self.free_head[l][order] = idx;
        self.nfree[l][order] += 1;
        self.free_pages += 1 << order;
    }
    fn list_del(&mut self, idx: u32, order: usize) {
        let l = self.list_of(idx, order);
        let (n, pv) = {
            let p = self.page(idx);
            (p.next, p.prev)
        };
        if pv != NONE {
            self.page(pv).next = n;
        } else {
            self.free_head[l][order] = n;
        }
        if n != NONE {
            self.page(n).prev = pv;
        }
        let p = self.page(idx);
        p.flags = 0;
        p.next = NONE;
        p.prev = NONE;
        self.nfree[l][order] -= 1;
        self.free_pages -= 1 << order;
    }
    /// Absolute-pfn alignment decides buddies.
    fn buddy_of(&self, idx: u32, order: usize) -> Option<u32> {
        let pfn = self.base_pfn + idx as u64;
        let bpfn = pfn ^ (1u64 << order);
        if bpfn < self.base_pfn || bpfn >= self.base_pfn + self.npages as u64 {
            return None;
        }
        Some((bpfn - self.base_pfn) as u32)
    }
    fn free_block(&mut self, mut idx: u32, mut order: usize) {
        while order < MAX_ORDER {
            let Some(bd) = self.buddy_of(idx, order) else { break };
            let bp = self.page(bd);
            if bp.flags != PG_FREE || bp.order as usize != order {
                break;
            }
            self.list_del(bd, order);
            idx = idx.min(bd);
            order += 1;
        }
        self.list_add(idx, order);
    }
    /// Smallest free block of order `order..=max` on list `l`.
    fn find(&self, l: usize, order: usize, max: usize) -> Option<(u32, usize)> {
        (order..=max).find(|&o| self.free_head[l][o] != NONE).map(|o| (self.free_head[l][o], o))
    }
    fn alloc_block(&mut self, order: usize, pool: Pool) -> Option<u32> {
        let small = PAGEBLOCK_ORDER - 1;
        let (idx, mut o) = if order >= PAGEBLOCK_ORDER {
            self.find(0, order, MAX_ORDER)?
        } else if let Some(f) = self.find(pool as usize, order, small) {
            f
        } else if let Some(f) = self.find(0, PAGEBLOCK_ORDER, MAX_ORDER) {
            f
        } else {
            let f = self.find(pool.other() as usize, order, small)?;
            self.steals += 1;
            f
        };
        self.list_del(idx, o);
        if o >= PAGEBLOCK_ORDER {
            // Whole pageblocks change hands: they take the caller's pool
            // before the remainders below a pageblock go on its lists.
            self.set_pool(idx, o, pool);
        }
        while o > order {
            o -= 1;
            self.list_add(idx + (1 << o), o);
        }
        for i in 0..(1u32 << order) {
            let p = self.page(idx + i);
            p.flags = if i == 0 { PG_HEAD } else { PG_TAIL };
            p.order = order as u8;
            p.head = idx;
            p.private = 0;
        }
        Some(idx)
    }
}

/// Initialise from the boot memory map.
pub fn init(info: &guest_boot::BootInfo) {
    let bb = b();
    bb.grouping = info.config.pageblocks;
    let mut ranges = [(0u64, 0u64); 64];
    let n = info.free_ram(&mut ranges);
    let ranges = &mut ranges[..n];
    let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let lo = lo & !(PAGEBLOCK_PAGES as u64 * PAGE_SIZE as u64 - 1);
    let npages = ((hi - lo) / PAGE_SIZE as u64) as usize;
    let array_bytes = (npages * core::mem::size_of::<Page>() + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    // Carve the frame array from the first range big enough.
    let r = ranges.iter_mut().find(|r| r.1 - r.0 >= array_bytes as u64).expect("no room for the frame array");
    let array_pa = r.0;
    r.0 += array_bytes as u64;
    bb.pages = phys_to_virt(array_pa) as *mut Page;
    kasan_glue::mark_reserved(phys_to_virt(array_pa) as usize, array_bytes);
    bb.base_pfn = lo / PAGE_SIZE as u64;
    bb.npages = npages;
    // All reserved first, then free the usable ranges in aligned blocks.
    for i in 0..npages {
        // SAFETY: i < npages: inside the frame array just carved out of a
        // free RAM range (mapped by the direct map, used by nothing else).
        unsafe {
            bb.pages.add(i).write(Page { flags: PG_RESERVED, order: 0, pool: 0, next: NONE, prev: NONE, head: i as u32, private: 0 })
        };
    }
    for &(s, e) in ranges.iter() {
        let mut pfn = s / PAGE_SIZE as u64;
        let end = e / PAGE_SIZE as u64;
        while pfn < end {
            let mut order = MAX_ORDER;
            while order > 0 && (pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > end) {
                order -= 1;
            }
            let idx = (pfn - bb.base_pfn) as u32;
            for i in 0..(1u32 << order) {
                bb.page(idx + i).flags = 0;
            }
            bb.managed_pages += 1 << order;
            bb.free_block(idx, order);
            pfn += 1 << order;
        }
    }
    println!(
        "buddy: {} pages managed ({} MiB), frame array {} KiB at {:#x}, pageblocks of {} pages grouped by pool: {}",
        bb.managed_pages,
        bb.managed_pages >> 8,
        array_bytes >> 10,
        phys_to_virt(array_pa),
        PAGEBLOCK_PAGES,
        if bb.grouping { "on" } else { "off" }
    );
}

/// Allocate 2^order pages; returns the direct-map address.
pub fn alloc_pages(order: usize) -> Option<usize> {
    alloc_pages_flags(order, 0)
}

/// Allocate with an owner flag (PG_SLAB, PG_LARGE, PG_STACK, PG_META or 0).
pub fn alloc_pages_flags(order: usize, owner: u16) -> Option<usize> {
    if order > MAX_ORDER {
        return None;
    }
    let va = {
        let _g = LOCK.lock();
        let bb = b();
        let pool = if bb.grouping { Pool::of_owner(owner) } else { Pool::Untracked };
        let idx = bb.alloc_block(order, pool)?;
        if owner != 0 {
            for i in 0..(1u32 << order) {
                bb.page(idx + i).flags |= owner;
            }
        }
        bb.virt_of(idx)
    };
    kasan_glue::page_alloc(va, order as u32);
    Some(va)
}

/// Allocate without the sanitizer hooks, for the runtime itself (its
/// shadow frames, `runtime_owned`, and its metadata arena). The buddy is
/// consistent whenever a hook runs, so this may be called from inside one.
pub fn alloc_pages_raw(order: usize, runtime_owned: bool) -> Option<usize> {
    if order > MAX_ORDER {
        return None;
    }
    let _g = LOCK.lock();
    let bb = b();
    let idx = bb.alloc_block(order, Pool::Untracked)?;
    let flag = if runtime_owned { PG_KASAN } else { PG_META };
    for i in 0..(1u32 << order) {
        bb.page(idx + i).flags |= flag;
    }
    Some(bb.virt_of(idx))
}

/// Reset the frame entries of a block and put it on the free lists.
fn release_block(bb: &mut Buddy, idx: u32, order: usize) {
    for i in 0..(1u32 << order) {
        let q = bb.page(idx + i);
        q.flags = 0;
        q.private = 0;
        q.head = idx + i;
    }
    bb.free_block(idx, order);
}

/// Give back a block from `alloc_pages_raw` (no hooks).
pub fn free_pages_raw(addr: usize, order: usize) {
    let _g = LOCK.lock();
    let bb = b();
    let Some(idx) = virt_to_phys(addr as u64).and_then(|pa| bb.idx_of_phys(pa)) else { return };
    release_block(bb, idx, order);
}

/// Call `f(addr, len)` for every run of frames below `ram_end` (physical)
/// that is not free in the buddy allocator and not owned by the sanitizer
/// runtime: the first MiB, the kernel image, the frame array, holes, and
/// everything handed out before the runtime started.
pub fn for_each_reserved_run(ram_end: u64, mut f: impl FnMut(usize, usize)) {
    let bb = b();
    let end = ram_end / PAGE_SIZE as u64;
    let mut start: Option<u64> = None;
    for pfn in 0..=end {
        let reserved = pfn < end
            && if pfn < bb.base_pfn || pfn >= bb.base_pfn + bb.npages as u64 {
                true
            } else {
                let fl = bb.page((pfn - bb.base_pfn) as u32).flags;
                fl != 0 && fl & (PG_FREE | PG_KASAN) == 0
            };
        match (reserved, start) {
            (true, None) => start = Some(pfn),
            (false, Some(s)) => {
                f(phys_to_virt(s * PAGE_SIZE as u64) as usize, ((pfn - s) as usize) * PAGE_SIZE);
                start = None;
            }
            _ => {}
        }
    }
}

pub fn alloc_page_zeroed() -> Option<usize> {
    let p = alloc_pages(0)?;
    // SAFETY: a page the allocator just handed out: mapped, ours, 4 KiB.
    unsafe { core::ptr::write_bytes(p as *mut u8, 0, PAGE_SIZE) };
    Some(p)
}

/// Frame of a kernel address (direct map or any alias with a physical address).
pub fn page_of(addr: usize) -> Option<&'static mut Page> {
    let pa = virt_to_phys(addr as u64)?;
    let bb = b();
    let idx = bb.idx_of_phys(pa)?;
    Some(bb.page(idx))
}

/// Head frame and its direct-map address for any address inside an allocated block.
pub fn head_of(addr: usize) -> Option<(&'static mut Page, usize)> {
    let pa = virt_to_phys(addr as u64)?;
    let bb = b();
    let idx = bb.idx_of_phys(pa)?;
    let h = bb.page(idx).head;
    Some((bb.page(h), bb.virt_of(h)))
}

/// Free 2^order pages at `addr` (direct-map address, or any alias of it).
/// Misuse (not a block head, wrong order, already free) is reported and ignored.
#[inline(never)]
pub fn free_pages(addr: usize, order: usize) {
    let ip = crate::mm::caller_ip();
    let bb = b();
    let Some(pa) = virt_to_phys(addr as u64) else {
        kasan_glue::bad_free(addr, ip, "free_pages: not a kernel address");
        return;
    };
    let Some(idx) = bb.idx_of_phys(pa).filter(|_| pa % PAGE_SIZE as u64 == 0) else {
        kasan_glue::bad_free(addr, ip, "free_pages: not a managed page");
        return;
    };
    let va = bb.virt_of(idx);
    if !kasan_glue::page_free(va, order as u32, ip) {
        return; // the runtime reported a bug; leave the block alone
    }
    let bad = {
        let _g = LOCK.lock();
        let p = bb.page(idx);
        if p.flags & PG_HEAD == 0 || p.order as usize != order {
            Some(if p.flags & PG_FREE != 0 || p.flags & (PG_HEAD | PG_TAIL) == 0 {
                "free_pages: double free"
            } else {
                "free_pages: not the head of an allocation of this order"
            })
        } else {
            release_block(bb, idx, order);
            None
        }
    };
    // Reported outside the lock: the report path may allocate frames.
    if let Some(why) = bad {
        kasan_glue::bad_free(va, ip, why);
    }
}

/// Turn an allocated order-n block into 2^n independent order-0 allocations.
pub fn split_page(addr: usize, order: usize) {
    let _g = LOCK.lock();
    let bb = b();
    let Some(idx) = virt_to_phys(addr as u64).and_then(|pa| bb.idx_of_phys(pa)) else { return };
    let owner = bb.page(idx).flags & !(PG_HEAD | PG_TAIL);
    for i in 0..(1u32 << order) {
        let q = bb.page(idx + i);
        q.flags = PG_HEAD | owner;
        q.order = 0;
        q.head = idx + i;
    }
}

pub fn free_page_count() -> usize {
    b().free_pages
}

pub fn managed_pages() -> usize {
    b().managed_pages
}

/// Allocations below a pageblock that had to take the other pool's pages.
pub fn pool_steals() -> usize {
    b().steals
}

/// Whether `addr` is a direct-map address of managed RAM.
pub fn is_direct_map(addr: usize) -> bool {
    let a = addr as u64;
    a >= DIRECT_MAP_BASE && a < DIRECT_MAP_BASE + guest_boot::paging::direct_map_end()
}

/// Check the allocator's invariants; returns the number of violations (each printed).
pub fn check_invariants() -> usize {
    let _g = LOCK.lock();
    let bb = b();
    let mut bad = 0;
    let mut total = 0usize;
    for (l, o) in (0..NPOOLS).flat_map(|l| (0..=MAX_ORDER).map(move |o| (l, o))) {
        if l != 0 && o >= PAGEBLOCK_ORDER {
            if bb.free_head[l][o] != NONE || bb.nfree[l][o] != 0 {
                println!("buddy: pool list {} used at order {}", l, o);
                bad += 1;
            }
            continue;
        }
        let mut idx = bb.free_head[l][o];
        let mut prev = NONE;
        let mut n = 0;
        while idx != NONE {
            let p = bb.page(idx);
            if p.flags != PG_FREE || p.order as usize != o || p.prev != prev {
                println!("buddy: bad free block {} order {} flags {:#x} order {} prev {}", idx, o, p.flags, p.order, p.prev);
                bad += 1;
            }
            if bb.list_of(idx, o) != l {
                println!("buddy: free block {} order {} on pool list {}, its pageblock is {:?}", idx, o, l, bb.pool_of(idx));
                bad += 1;
            }
            if (bb.base_pfn + idx as u64) & ((1 << o) - 1) != 0 || idx as usize + (1 << o) > bb.npages {
                println!("buddy: misaligned free block {} order {}", idx, o);
                bad += 1;
            }
            for i in 1..(1u32 << o) {
                let t = bb.page(idx + i);
                if t.flags != 0 {
                    println!("buddy: page {} inside free block {} has flags {:#x}", idx + i, idx, t.flags);
                    bad += 1;
                    break;
                }
            }
            if o < MAX_ORDER {
                if let Some(bd) = bb.buddy_of(idx, o) {
                    let q = bb.page(bd);
                    if q.flags == PG_FREE && q.order as usize == o {
                        println!("buddy: unmerged buddies {} {} order {}", idx, bd, o);
                        bad += 1;
                    }
                }
            }
            n += 1;
            total += 1 << o;
            prev = idx;
            idx = p.next;
            if n > bb.npages {
                println!("buddy: free list {} loops", o);
                bad += 1;
                break;
            }
        }
        if n != bb.nfree[l][o] {
            println!("buddy: list {} order {} count {} != {}", l, o, n, bb.nfree[l][o]);
            bad += 1;
        }
    }
    if total != bb.free_pages {
        println!("buddy: free pages {} != counter {}", total, bb.free_pages);
        bad += 1;
    }
    // Allocated blocks: tails point to a head whose order covers them.
    let mut i = 0u32;
    while (i as usize) < bb.npages {
        let p = bb.page(i);
        if p.flags & PG_TAIL != 0 {
            let h = bb.page(p.head);
            if h.flags & PG_HEAD == 0 || i >= p.head + (1 << h.order) {
                println!("buddy: tail {} has bad head {}", i, p.head);
                bad += 1;
            }
        }
        i += 1;
    }
    bad
}
