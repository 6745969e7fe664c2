//! vmalloc: page-granular areas in 0xffffc90000000000.., each followed by an
//! unmapped guard page, backed by order-0 pages from the buddy allocator.
use super::buddy::{self, PAGE_SIZE, PG_META};
use crate::kasan_glue;
use guest_boot::paging::{self, phys_to_virt, PTE_G, PTE_NX, PTE_W, VMALLOC_START};

const MAX_AREAS: usize = 512;
/// The guest's vmalloc window: the first GiB of the vmalloc area (the
/// runtime keeps a reference count per 32 KiB of it).
pub const WINDOW: usize = 1 << 30;

/// The vmalloc window `[start, end)` (block aligned).
pub fn window() -> (usize, usize) {
    (VMALLOC_START as usize, VMALLOC_START as usize + WINDOW)
}

#[derive(Clone, Copy)]
struct Area {
    addr: usize,
    pages: usize, // mapped pages (guard not included)
    size: usize,  // requested bytes
    /// Made by `vmap`: the pages belong to someone else (not freed here).
    mapped: bool,
}

static mut AREAS: [Option<Area>; MAX_AREAS] = [None; MAX_AREAS];
/// Guards the areas and the vmalloc window's page tables on several CPUs
/// (order: vmalloc, slab, runtime, buddy); the same CPU may nest.
static LOCK: guest_boot::smp::RecLock = guest_boot::smp::RecLock::new();

fn areas() -> &'static mut [Option<Area>; MAX_AREAS] {
    // SAFETY: callers hold LOCK (every public function takes it); no
    // vmalloc from interrupt context; none holds the reference across
    // another call.
    unsafe { &mut *core::ptr::addr_of_mut!(AREAS) }
}

fn table_page() -> Option<u64> {
    let p = buddy::alloc_pages_flags(0, PG_META)?;
    paging::virt_to_phys(p as u64)
}

/// Find `span` bytes of free virtual space (first fit).
fn find_space(span: usize) -> Option<usize> {
    let mut cand = VMALLOC_START as usize;
    'outer: loop {
        if cand + span > window().1 {
            return None;
        }
        for a in areas().iter().flatten() {
            let end = a.addr + (a.pages + 1) * PAGE_SIZE;
            if cand < end && a.addr < cand + span {
                cand = end;
                continue 'outer;
            }
        }
        return Some(cand);
    }
}

/// Allocate `size` bytes of virtually contiguous memory (page granular,
/// followed by a guard page).
#[inline(never)]
pub fn vmalloc(size: usize) -> *mut u8 {
    let _g = LOCK.lock();
    if size == 0 {
        return core::ptr::null_mut();
    }
    let pages = size.div_ceil(PAGE_SIZE);
    let Some(slot) = areas().iter().position(|a| a.is_none()) else { return core::ptr::null_mut() };
    let Some(addr) = find_space((pages + 1) * PAGE_SIZE) else { return core::ptr::null_mut() };
    for i in 0..pages {
        let ok = buddy::alloc_pages(0).and_then(|pg| {
            let pa = paging::virt_to_phys(pg as u64)?;
            let mut alloc = || table_page();
            // SAFETY: `addr + i pages` lies in the free range find_space
            // reserved for this area (nothing maps it); `pa` is the fresh
            // page just allocated; table_page hands out zeroed meta pages.
            unsafe { paging::map_4k((addr + i * PAGE_SIZE) as u64, pa, PTE_W | PTE_G | PTE_NX, &mut alloc).ok() }
        });
        if ok.is_none() {
            unmap_range(addr, i);
            return core::ptr::null_mut();
        }
    }
    areas()[slot] = Some(Area { addr, pages, size, mapped: false });
    kasan_glue::vmalloc_alloc(addr, size, pages * PAGE_SIZE);
    addr as *mut u8
}

/// Map the pages at direct-map addresses `pages` together into the
/// vmalloc window (Linux's `vmap`); null when there is no room.
pub fn vmap(pages: &[usize]) -> *mut u8 {
    let _g = LOCK.lock();
    let n = pages.len();
    if n == 0 {
        return core::ptr::null_mut();
    }
    let Some(slot) = areas().iter().position(|a| a.is_none()) else { return core::ptr::null_mut() };
    let Some(addr) = find_space((n + 1) * PAGE_SIZE) else { return core::ptr::null_mut() };
    for (i, &pg) in pages.iter().enumerate() {
        let ok = paging::virt_to_phys(pg as u64).and_then(|pa| {
            let mut alloc = || table_page();
            // SAFETY: `addr` is free vmalloc space found by `find_space`;
            // `pa` is a frame the caller owns.
            unsafe { paging::map_4k((addr + i * PAGE_SIZE) as u64, pa, PTE_W | PTE_G | PTE_NX, &mut alloc).ok() }
        });
        if ok.is_none() {
            for k in 0..i {
                // SAFETY: mapped just above; the frames stay their owner's.
                unsafe { paging::unmap_4k((addr + k * PAGE_SIZE) as u64) };
            }
            return core::ptr::null_mut();
        }
    }
    areas()[slot] = Some(Area { addr, pages: n, size: n * PAGE_SIZE, mapped: true });
    kasan_glue::vmalloc_alloc(addr, n * PAGE_SIZE, n * PAGE_SIZE);
    addr as *mut u8
}

/// Undo [`vmap`]: the pages stay allocated to their owner.
pub fn vunmap(ptr: *const u8) {
    let _g = LOCK.lock();
    let p = ptr as usize;
    let Some(slot) = areas().iter().position(|a| a.is_some_and(|a| a.addr == p && a.mapped)) else {
        kasan_glue::bad_free(p, crate::mm::caller_ip(), "vunmap: not a vmap area");
        return;
    };
    let a = areas()[slot].take().unwrap();
    kasan_glue::vmalloc_free(a.addr, a.pages * PAGE_SIZE);
    for i in 0..a.pages {
        // SAFETY: `vmap` mapped these pages; nothing uses the area after
        // vunmap (the frames stay their owner's).
        unsafe { paging::unmap_4k((a.addr + i * PAGE_SIZE) as u64) };
    }
}

pub fn vzalloc(size: usize) -> *mut u8 {
    let _g = LOCK.lock();
    let p = vmalloc(size);
    if !p.is_null() {
        // SAFETY: vmalloc mapped `size` bytes (rounded up to pages) at `p`.
        unsafe { core::ptr::write_bytes(p, 0, size) };
    }
    p
}

/// Unmap an area's pages and free their frames: in chunks, each unmapped
/// here, shot down on the other CPUs in one round, then freed (no frame is
/// reused while a CPU may still reach it).
fn unmap_range(addr: usize, pages: usize) {
    const CHUNK: usize = 32;
    let mut frames = [0u64; CHUNK];
    for start in (0..pages).step_by(CHUNK) {
        let n = CHUNK.min(pages - start);
        for (i, f) in frames[..n].iter_mut().enumerate() {
            // SAFETY: the area's own pages (being freed, or never handed
            // out after a failed vmalloc): nobody uses them any more; the
            // frames are freed after the shootdown below.
            *f = unsafe { paging::unmap_4k_local((addr + (start + i) * PAGE_SIZE) as u64) }.unwrap_or(0);
        }
        guest_boot::smp::flush_range((addr + start * PAGE_SIZE) as u64, n as u64);
        for &pa in frames[..n].iter().filter(|&&pa| pa != 0) {
            buddy::free_pages(phys_to_virt(pa) as usize, 0);
        }
    }
}

/// Free a vmalloc area (must be the address vmalloc returned).
#[inline(never)]
pub fn vfree(ptr: *const u8) {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    let p = ptr as usize;
    if p == 0 {
        return;
    }
    let Some(slot) = areas().iter().position(|a| a.is_some_and(|a| a.addr == p && !a.mapped)) else {
        kasan_glue::bad_free(p, ip, "vfree: not the start of a vmalloc area");
        return;
    };
    let a = areas()[slot].take().unwrap();
    kasan_glue::vmalloc_free(a.addr, a.pages * PAGE_SIZE);
    unmap_range(a.addr, a.pages);
}

/// Requested size of the vmalloc area containing `addr` (guard page included).
pub fn area_of(addr: usize) -> Option<(usize, usize, usize)> {
    let _g = LOCK.lock();
    areas().iter().flatten().find(|a| addr >= a.addr && addr < a.addr + (a.pages + 1) * PAGE_SIZE).map(|a| (a.addr, a.size, a.pages * PAGE_SIZE))
}

pub fn is_vmalloc_addr(addr: usize) -> bool {
    (window().0..window().1).contains(&addr)
}
