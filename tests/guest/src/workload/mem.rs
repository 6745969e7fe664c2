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
        let a = acct();
        for i in 0..a.n {
            a.peak[i] = a.slots[i].bytes;
        }
        a.peak_ops = super::state_ops();
    }
}

// Per-cache accounting: live object bytes of every kmalloc class and named
// cache the workload uses, and their values at the tracked peak (the
// composition `wl-peak` prints).

/// Groups of caches (what the objects are for).
pub const G_KMALLOC: u8 = 0;
pub const G_VFS: u8 = 1;
pub const G_PAGECACHE: u8 = 2;
pub const G_PROCESS: u8 = 3;
pub const G_COMPILER: u8 = 4;
pub const GROUP_NAMES: [&str; 5] = ["kmalloc", "vfs", "pagecache", "process", "compiler"];

const KMALLOC_NAMES: [&str; 13] = [
    "kmalloc-8", "kmalloc-16", "kmalloc-32", "kmalloc-64", "kmalloc-96", "kmalloc-128", "kmalloc-192",
    "kmalloc-256", "kmalloc-512", "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-8k",
];
/// Accounting slot of kmalloc above the largest class (page-backed).
const LARGE: usize = 13;
const MAX_SLOTS: usize = 40;

#[derive(Clone, Copy)]
pub struct Slot {
    pub name: &'static str,
    pub group: u8,
    /// Object size (kmalloc: the class size).
    pub size: usize,
    /// Bytes of live objects.
    pub bytes: usize,
}

pub struct Acct {
    pub slots: [Slot; MAX_SLOTS],
    pub n: usize,
    /// `bytes` of each slot when the tracked peak was last raised.
    pub peak: [usize; MAX_SLOTS],
    /// Workload operation count at the tracked peak.
    pub peak_ops: u64,
}

const SLOT_ZERO: Slot = Slot { name: "", group: 0, size: 0, bytes: 0 };
const ACCT_ZERO: Acct = Acct { slots: [SLOT_ZERO; MAX_SLOTS], n: 0, peak: [0; MAX_SLOTS], peak_ops: 0 };
static mut ACCT: Acct = ACCT_ZERO;

pub fn acct() -> &'static mut Acct {
    // SAFETY: as `c()`: one CPU, cooperative tasks, never from interrupt
    // context, no reference held across a call that takes it again.
    unsafe { &mut *core::ptr::addr_of_mut!(ACCT) }
}

/// A named cache of the workload with its accounting slot.
#[derive(Clone, Copy)]
pub struct Kc {
    pub r: CacheRef,
    slot: u8,
}

/// Accounting slot and charged bytes of a kmalloc of `size`.
#[inline]
fn kmalloc_slot(size: usize) -> (usize, usize) {
    for (i, &sz) in slab::KMALLOC_SIZES.iter().enumerate() {
        if size <= sz {
            return (i, sz);
        }
    }
    (LARGE, (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1))
}

pub fn init() {
    GLOBALS.store(globals_bytes(), Relaxed);
    *c() = Counters::default();
    c().stacks_live = 0;
    let a = acct();
    *a = ACCT_ZERO;
    for (i, &sz) in slab::KMALLOC_SIZES.iter().enumerate() {
        a.slots[i] = Slot { name: KMALLOC_NAMES[i], group: G_KMALLOC, size: sz, bytes: 0 };
    }
    a.slots[LARGE] = Slot { name: "kmalloc-large", group: G_KMALLOC, size: PAGE_SIZE, bytes: 0 };
    a.n = LARGE + 1;
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
            let (i, b) = kmalloc_slot(size);
            acct().slots[i].bytes += b;
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

/// kfree of an object kmalloc'd with `size` (the size is for the accounting).
#[inline(never)]
pub fn kfree(p: *mut u8, size: usize) {
    c().slab_frees += 1;
    let (i, b) = kmalloc_slot(size);
    acct().slots[i].bytes -= b;
    mm::kfree(p);
}

/// krealloc of an object kmalloc'd with `old` bytes (for the accounting)
/// to `size`.
#[inline(never)]
pub fn krealloc(p: *mut u8, old: usize, size: usize) -> *mut u8 {
    loop {
        let q = mm::krealloc(p, size);
        if !q.is_null() {
            let cc = c();
            cc.krealloc_calls += 1;
            if q != p {
                // A new object was allocated and the old one freed.
                cc.slab_allocs += 1;
                cc.slab_frees += 1;
                let (i, b) = kmalloc_slot(old);
                let (j, nb) = kmalloc_slot(size);
                let a = acct();
                a.slots[i].bytes -= b;
                a.slots[j].bytes += nb;
            }
            return q;
        }
        if !relieve() {
            oom("krealloc", size);
        }
    }
}

#[inline(never)]
pub fn cache_alloc(k: Kc) -> *mut u8 {
    loop {
        let p = mm::kmem_cache_alloc(k.r);
        if !p.is_null() {
            c().slab_allocs += 1;
            let sl = &mut acct().slots[k.slot as usize];
            sl.bytes += sl.size;
            super::tick();
            return p;
        }
        if !relieve() {
            oom("kmem_cache_alloc", 0);
        }
    }
}

pub fn cache_free(k: Kc, p: *mut u8) {
    c().slab_frees += 1;
    let sl = &mut acct().slots[k.slot as usize];
    sl.bytes -= sl.size;
    mm::kmem_cache_free(k.r, p);
}

/// A named cache of `size`-byte objects, accounted under `group`.
pub fn create_cache(name: &'static str, size: usize, group: u8) -> Kc {
    let r = match mm::kmem_cache_create(name, size, 8) {
        Some(r) => r,
        None => super::fail("kmem_cache_create failed"),
    };
    let a = acct();
    // A cache created again (by name) keeps its slot.
    let slot = match (0..a.n).find(|&i| a.slots[i].name == name) {
        Some(i) => i,
        None => {
            if a.n == MAX_SLOTS {
                super::fail("too many workload caches");
            }
            a.n += 1;
            a.n - 1
        }
    };
    a.slots[slot] = Slot { name, group, size, bytes: a.slots[slot].bytes };
    Kc { r, slot: slot as u8 }
}

/// Destroy a named cache of the workload (false if objects are left).
pub fn destroy_cache(k: Kc) -> bool {
    crate::mm::kmem_cache_destroy(k.r).is_ok()
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
