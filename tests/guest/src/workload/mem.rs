//! Allocation wrappers for the workload: count everything, and on failure
//! relieve memory pressure (drain the quarantine, reclaim page cache) and
//! retry, like the kernel's direct reclaim. If nothing can be freed the
//! workload is out of memory: it prints `wl-oom` and fails.
use super::pagecache;
use crate::mm::{self, buddy, slab, CacheRef, PAGE_SIZE};
use crate::mm::vmalloc as vm;
use crate::println;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Default, Clone, Copy)]
pub struct Counters {
    /// Slab allocations made by the workload (kmalloc <= 8 KiB + named caches).
    pub slab_allocs: u64,
    pub slab_frees: u64,
    pub krealloc_calls: u64,
    pub vmallocs: u64,
    pub vfrees: u64,
    pub vmalloc_live_bytes: usize,
    /// Highest vmalloc address used (for page-table pages that stay).
    pub vmalloc_hi: usize,
    /// Page-granular "anonymous" pages of the compilers.
    pub anon_live: usize,
    pub anon_peak: usize,
    pub anon_allocs: u64,
    /// Times an allocation failed and memory had to be relieved.
    pub direct_reclaims: u64,
    /// Kernel stacks of live job tasks.
    pub stacks_live: usize,
    /// Peak of slab + stacks + globals + vmalloc bytes (sampled).
    pub tracked_peak: usize,
    pub tracked_peak_slab: usize,
    pub tracked_peak_stacks: usize,
    pub tracked_peak_vmalloc: usize,
}

pub static mut C: Counters = Counters {
    slab_allocs: 0,
    slab_frees: 0,
    krealloc_calls: 0,
    vmallocs: 0,
    vfrees: 0,
    vmalloc_live_bytes: 0,
    vmalloc_hi: 0,
    anon_live: 0,
    anon_peak: 0,
    anon_allocs: 0,
    direct_reclaims: 0,
    stacks_live: 0,
    tracked_peak: 0,
    tracked_peak_slab: 0,
    tracked_peak_stacks: 0,
    tracked_peak_vmalloc: 0,
};

pub fn c() -> &'static mut Counters {
    // SAFETY: one CPU, cooperative tasks, no counter update from interrupt
    // context; callers bump a field and drop the reference (none is held
    // across a call that takes it again).
    unsafe { &mut *core::ptr::addr_of_mut!(C) }
}

extern "C" {
    static __bss_start: u8;
    static __bss_end: u8;
    static __init_array_end: u8;
}

/// Bytes of the image's .data and .bss (the globals; .data runs from the
/// page after .init_array up to .bss).
pub fn globals_bytes() -> usize {
    {
        let bss = core::ptr::addr_of!(__bss_end) as usize - core::ptr::addr_of!(__bss_start) as usize;
        let data_start = (core::ptr::addr_of!(__init_array_end) as usize + 0xfff) & !0xfff;
        let data = (core::ptr::addr_of!(__bss_start) as usize).saturating_sub(data_start);
        bss + data
    }
}

static GLOBALS: AtomicUsize = AtomicUsize::new(0);

/// Bytes that need byte-precise shadow now: (slab pages, stacks, vmalloc).
pub fn tracked_now() -> (usize, usize, usize) {
    let (slab_pages, _, _) = slab::usage();
    let cc = c();
    (slab_pages * PAGE_SIZE, cc.stacks_live, cc.vmalloc_live_bytes)
}

/// Sample the tracked bytes and keep the peak.
pub fn note_tracked() {
    let (s, st, v) = tracked_now();
    let g = GLOBALS.load(Relaxed);
    let cc = c();
    let t = s + st + v + g;
    if t > cc.tracked_peak {
        cc.tracked_peak = t;
        cc.tracked_peak_slab = s;
        cc.tracked_peak_stacks = st;
        cc.tracked_peak_vmalloc = v;
    }
}

pub fn init() {
    GLOBALS.store(globals_bytes(), Relaxed);
    *c() = Counters::default();
    c().stacks_live = 0;
    note_tracked();
}

pub fn globals() -> usize {
    GLOBALS.load(Relaxed)
}

fn oom(what: &str, size: usize) -> ! {
    println!(
        "wl-oom what={} size={} free={} pagecache={} anon={}",
        what,
        size,
        buddy::free_page_count() * PAGE_SIZE,
        pagecache::pages() * PAGE_SIZE,
        c().anon_live * PAGE_SIZE
    );
    super::fail("out of memory");
}

/// Free something so that a failed allocation can be retried. False if
/// nothing could be freed.
fn relieve() -> bool {
    c().direct_reclaims += 1;
    let before = buddy::free_page_count();
    slab::drain_all();
    let n = pagecache::reclaim(128);
    n > 0 || buddy::free_page_count() > before
}

#[inline(never)]
pub fn kmalloc(size: usize) -> *mut u8 {
    loop {
        let p = mm::kmalloc(size);
        if !p.is_null() {
            c().slab_allocs += 1;
            super::tick();
            return p;
        }
        if !relieve() {
            oom("kmalloc", size);
        }
    }
}

pub fn kzalloc(size: usize) -> *mut u8 {
    let p = kmalloc(size);
    // SAFETY: the workload's kmalloc returns `size` bytes or stops the
    // guest (oom), never null.
    unsafe { core::ptr::write_bytes(p, 0, size) };
    p
}

#[inline(never)]
pub fn kfree(p: *mut u8) {
    c().slab_frees += 1;
    mm::kfree(p);
}

#[inline(never)]
pub fn krealloc(p: *mut u8, size: usize) -> *mut u8 {
    loop {
        let q = mm::krealloc(p, size);
        if !q.is_null() {
            let cc = c();
            cc.krealloc_calls += 1;
            if q != p {
                // A new object was allocated and the old one freed.
                cc.slab_allocs += 1;
                cc.slab_frees += 1;
            }
            return q;
        }
        if !relieve() {
            oom("krealloc", size);
        }
    }
}

#[inline(never)]
pub fn cache_alloc(r: CacheRef) -> *mut u8 {
    loop {
        let p = mm::kmem_cache_alloc(r);
        if !p.is_null() {
            c().slab_allocs += 1;
            super::tick();
            return p;
        }
        if !relieve() {
            oom("kmem_cache_alloc", 0);
        }
    }
}

pub fn cache_free(r: CacheRef, p: *mut u8) {
    c().slab_frees += 1;
    mm::kmem_cache_free(r, p);
}

pub fn create_cache(name: &'static str, size: usize) -> CacheRef {
    match mm::kmem_cache_create(name, size, 8) {
        Some(r) => r,
        None => super::fail("kmem_cache_create failed"),
    }
}

#[inline(never)]
pub fn vmalloc(size: usize) -> *mut u8 {
    loop {
        let p = vm::vmalloc(size);
        if !p.is_null() {
            let cc = c();
            cc.vmallocs += 1;
            let bytes = (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
            cc.vmalloc_live_bytes += bytes;
            cc.vmalloc_hi = cc.vmalloc_hi.max(p as usize + bytes + PAGE_SIZE);
            note_tracked();
            super::tick();
            return p;
        }
        if !relieve() {
            oom("vmalloc", size);
        }
    }
}

pub fn vfree(p: *mut u8, size: usize) {
    let cc = c();
    cc.vfrees += 1;
    cc.vmalloc_live_bytes -= (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    vm::vfree(p);
}

/// One page of compiler "anonymous" memory (whole page, no byte shadow needed).
#[inline(never)]
pub fn anon_page() -> usize {
    loop {
        if let Some(p) = buddy::alloc_pages(0) {
            super::tick();
            let cc = c();
            cc.anon_allocs += 1;
            cc.anon_live += 1;
            cc.anon_peak = cc.anon_peak.max(cc.anon_live);
            return p;
        }
        if !relieve() {
            oom("anon page", PAGE_SIZE);
        }
    }
}

pub fn anon_free(p: usize) {
    c().anon_live -= 1;
    buddy::free_pages(p, 0);
}

/// A job's kernel stack: spawn, reclaiming memory if the 16 KiB block is not there.
pub fn spawn(name: &'static str, f: fn(usize), arg: usize) -> u32 {
    loop {
        let pid = crate::task::spawn(name, f, arg);
        if pid != 0 {
            c().stacks_live += crate::task::STACK_SIZE;
            note_tracked();
            return pid;
        }
        if !relieve() {
            oom("kernel stack", crate::task::STACK_SIZE);
        }
    }
}
