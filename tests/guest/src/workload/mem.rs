//! Allocation wrappers for the workload: count everything, and on failure
//! relieve memory pressure (drain the quarantine, reclaim page cache) and
//! retry, like the kernel's direct reclaim. If nothing can be freed the
//! workload is out of memory: it prints `wl-oom` and fails.
use super::pagecache;
use crate::mm::{self, buddy, slab, CacheRef, PAGE_SIZE};
use crate::mm::vmalloc as vm;
use crate::println;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// What the workload allocated and freed, bumped by every CPU (atomics:
/// no lock on the allocation path).
pub struct Counters {
    /// Slab allocations made by the workload (kmalloc <= 8 KiB + named caches).
    pub slab_allocs: AtomicU64,
    pub slab_frees: AtomicU64,
    pub krealloc_calls: AtomicU64,
    pub vmallocs: AtomicU64,
    pub vfrees: AtomicU64,
    pub vmalloc_live_bytes: AtomicUsize,
    /// Highest vmalloc address used (for page-table pages that stay).
    pub vmalloc_hi: AtomicUsize,
    /// Page-granular "anonymous" pages of the compilers.
    pub anon_live: AtomicUsize,
    pub anon_peak: AtomicUsize,
    pub anon_allocs: AtomicU64,
    /// Times an allocation failed and memory had to be relieved.
    pub direct_reclaims: AtomicU64,
    /// Kernel stacks of live job tasks.
    pub stacks_live: AtomicUsize,
}

pub static C: Counters = Counters {
    slab_allocs: AtomicU64::new(0),
    slab_frees: AtomicU64::new(0),
    krealloc_calls: AtomicU64::new(0),
    vmallocs: AtomicU64::new(0),
    vfrees: AtomicU64::new(0),
    vmalloc_live_bytes: AtomicUsize::new(0),
    vmalloc_hi: AtomicUsize::new(0),
    anon_live: AtomicUsize::new(0),
    anon_peak: AtomicUsize::new(0),
    anon_allocs: AtomicU64::new(0),
    direct_reclaims: AtomicU64::new(0),
    stacks_live: AtomicUsize::new(0),
};

/// The counters.
#[inline]
pub fn c() -> &'static Counters {
    &C
}

/// A copy of the counters and of the tracked peak, for the summary lines.
#[derive(Default, Clone, Copy)]
pub struct Snapshot {
    pub slab_allocs: u64,
    pub slab_frees: u64,
    pub krealloc_calls: u64,
    pub vmallocs: u64,
    pub vfrees: u64,
    pub vmalloc_live_bytes: usize,
    pub vmalloc_hi: usize,
    pub anon_live: usize,
    pub anon_peak: usize,
    pub anon_allocs: u64,
    pub direct_reclaims: u64,
    pub stacks_live: usize,
    /// Peak of slab + stacks + globals + vmalloc bytes (sampled).
    pub tracked_peak: usize,
    pub tracked_peak_slab: usize,
    pub tracked_peak_stacks: usize,
    pub tracked_peak_vmalloc: usize,
}

pub fn snapshot() -> Snapshot {
    let c = c();
    let p = PEAK.lock();
    Snapshot {
        slab_allocs: c.slab_allocs.load(Relaxed),
        slab_frees: c.slab_frees.load(Relaxed),
        krealloc_calls: c.krealloc_calls.load(Relaxed),
        vmallocs: c.vmallocs.load(Relaxed),
        vfrees: c.vfrees.load(Relaxed),
        vmalloc_live_bytes: c.vmalloc_live_bytes.load(Relaxed),
        vmalloc_hi: c.vmalloc_hi.load(Relaxed),
        anon_live: c.anon_live.load(Relaxed),
        anon_peak: c.anon_peak.load(Relaxed),
        anon_allocs: c.anon_allocs.load(Relaxed),
        direct_reclaims: c.direct_reclaims.load(Relaxed),
        stacks_live: c.stacks_live.load(Relaxed),
        tracked_peak: p.tracked,
        tracked_peak_slab: p.slab,
        tracked_peak_stacks: p.stacks,
        tracked_peak_vmalloc: p.vmalloc,
    }
}

/// A job's kernel stack is gone (its task exits).
pub fn stack_gone() {
    c().stacks_live.fetch_sub(crate::task::STACK_SIZE, Relaxed);
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
    (slab_pages * PAGE_SIZE, cc.stacks_live.load(Relaxed), cc.vmalloc_live_bytes.load(Relaxed))
}

/// The tracked peak: its bytes by kind and the accounting slots' bytes
/// then (the composition `wl-peak` prints). A leaf lock: nothing is called
/// with it held.
pub struct Peak {
    pub tracked: usize,
    pub slab: usize,
    pub stacks: usize,
    pub vmalloc: usize,
    /// `bytes` of each slot when the tracked peak was last raised.
    pub bytes: [usize; MAX_SLOTS],
    /// Workload operation count at the tracked peak.
    pub ops: u64,
}

const PEAK_ZERO: Peak = Peak { tracked: 0, slab: 0, stacks: 0, vmalloc: 0, bytes: [0; MAX_SLOTS], ops: 0 };
static PEAK: spin::Mutex<Peak> = spin::Mutex::new(PEAK_ZERO);
/// `PEAK.tracked`, readable without the lock (the common "not higher" case).
static PEAK_TRACKED: AtomicUsize = AtomicUsize::new(0);

/// Sample the tracked bytes and keep the peak.
pub fn note_tracked() {
    let (s, st, v) = tracked_now();
    let t = s + st + v + GLOBALS.load(Relaxed);
    if t <= PEAK_TRACKED.load(Relaxed) {
        return;
    }
    let mut p = PEAK.lock();
    if t <= p.tracked {
        return;
    }
    PEAK_TRACKED.store(t, Relaxed);
    p.tracked = t;
    p.slab = s;
    p.stacks = st;
    p.vmalloc = v;
    let n = SLOTS.lock().n;
    for (pk, b) in p.bytes.iter_mut().zip(BYTES.iter()).take(n) {
        *pk = b.load(Relaxed);
    }
    p.ops = super::state_ops();
}

/// A copy of the peak (slots' bytes, operation count).
pub fn peak() -> ([usize; MAX_SLOTS], u64) {
    let p = PEAK.lock();
    (p.bytes, p.ops)
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
pub const MAX_SLOTS: usize = 40;

/// What an accounting slot counts (its live bytes are in `BYTES`).
#[derive(Clone, Copy)]
pub struct Slot {
    pub name: &'static str,
    pub group: u8,
    /// Object size (kmalloc: the class size).
    pub size: usize,
}

/// The slots in use (set as caches are created, before the jobs start).
#[derive(Clone, Copy)]
pub struct Slots {
    pub slots: [Slot; MAX_SLOTS],
    pub n: usize,
}

const SLOT_ZERO: Slot = Slot { name: "", group: 0, size: 0 };
static SLOTS: spin::Mutex<Slots> = spin::Mutex::new(Slots { slots: [SLOT_ZERO; MAX_SLOTS], n: 0 });
/// Bytes of live objects per slot.
static BYTES: [AtomicUsize; MAX_SLOTS] = [const { AtomicUsize::new(0) }; MAX_SLOTS];

/// A copy of the slot table.
pub fn slots() -> Slots {
    *SLOTS.lock()
}

/// A named cache of the workload with its accounting slot.
#[derive(Clone, Copy)]
pub struct Kc {
    pub r: CacheRef,
    slot: u8,
    /// Object size (what each object adds to its slot's bytes).
    size: u32,
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

/// Before the workload's first allocation (one CPU, no job yet).
pub fn init() {
    GLOBALS.store(globals_bytes(), Relaxed);
    let c = c();
    for a in [&c.slab_allocs, &c.slab_frees, &c.krealloc_calls, &c.vmallocs, &c.vfrees, &c.anon_allocs, &c.direct_reclaims] {
        a.store(0, Relaxed);
    }
    for a in [&c.vmalloc_live_bytes, &c.vmalloc_hi, &c.anon_live, &c.anon_peak, &c.stacks_live] {
        a.store(0, Relaxed);
    }
    *PEAK.lock() = PEAK_ZERO;
    PEAK_TRACKED.store(0, Relaxed);
    let mut t = SLOTS.lock();
    *t = Slots { slots: [SLOT_ZERO; MAX_SLOTS], n: 0 };
    for b in BYTES.iter() {
        b.store(0, Relaxed);
    }
    for (i, &sz) in slab::KMALLOC_SIZES.iter().enumerate() {
        t.slots[i] = Slot { name: KMALLOC_NAMES[i], group: G_KMALLOC, size: sz };
    }
    t.slots[LARGE] = Slot { name: "kmalloc-large", group: G_KMALLOC, size: PAGE_SIZE };
    t.n = LARGE + 1;
    drop(t);
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
        c().anon_live.load(Relaxed) * PAGE_SIZE
    );
    super::fail("out of memory");
}

/// Free something so that a failed allocation can be retried. False if
/// nothing could be freed.
fn relieve() -> bool {
    c().direct_reclaims.fetch_add(1, Relaxed);
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
            c().slab_allocs.fetch_add(1, Relaxed);
            let (i, b) = kmalloc_slot(size);
            BYTES[i].fetch_add(b, Relaxed);
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
    c().slab_frees.fetch_add(1, Relaxed);
    let (i, b) = kmalloc_slot(size);
    BYTES[i].fetch_sub(b, Relaxed);
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
            cc.krealloc_calls.fetch_add(1, Relaxed);
            if q != p {
                // A new object was allocated and the old one freed.
                cc.slab_allocs.fetch_add(1, Relaxed);
                cc.slab_frees.fetch_add(1, Relaxed);
                let (i, b) = kmalloc_slot(old);
                let (j, nb) = kmalloc_slot(size);
                BYTES[i].fetch_sub(b, Relaxed);
                BYTES[j].fetch_add(nb, Relaxed);
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
            c().slab_allocs.fetch_add(1, Relaxed);
            BYTES[k.slot as usize].fetch_add(k.size as usize, Relaxed);
            super::tick();
            return p;
        }
        if !relieve() {
            oom("kmem_cache_alloc", 0);
        }
    }
}

pub fn cache_free(k: Kc, p: *mut u8) {
    c().slab_frees.fetch_add(1, Relaxed);
    BYTES[k.slot as usize].fetch_sub(k.size as usize, Relaxed);
    mm::kmem_cache_free(k.r, p);
}

/// A named cache of `size`-byte objects, accounted under `group`.
pub fn create_cache(name: &'static str, size: usize, group: u8) -> Kc {
    let r = match mm::kmem_cache_create(name, size, 8) {
        Some(r) => r,
        None => super::fail("kmem_cache_create failed"),
    };
    let mut a = SLOTS.lock();
    // A cache created again (by name) keeps its slot.
    let slot = match (0..a.n).find(|&i| a.slots[i].name == name) {
        Some(i) => i,
        None => {
            if a.n == MAX_SLOTS {
                drop(a);
                super::fail("too many workload caches");
            }
            a.n += 1;
            a.n - 1
        }
    };
    a.slots[slot] = Slot { name, group, size };
    Kc { r, slot: slot as u8, size: size as u32 }
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
            cc.vmallocs.fetch_add(1, Relaxed);
            let bytes = (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
            cc.vmalloc_live_bytes.fetch_add(bytes, Relaxed);
            cc.vmalloc_hi.fetch_max(p as usize + bytes + PAGE_SIZE, Relaxed);
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
    cc.vfrees.fetch_add(1, Relaxed);
    cc.vmalloc_live_bytes.fetch_sub((size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1), Relaxed);
    vm::vfree(p);
}

/// One page of compiler "anonymous" memory (whole page, no byte shadow needed).
#[inline(never)]
pub fn anon_page() -> usize {
    loop {
        if let Some(p) = buddy::alloc_pages(0) {
            super::tick();
            let cc = c();
            cc.anon_allocs.fetch_add(1, Relaxed);
            let live = cc.anon_live.fetch_add(1, Relaxed) + 1;
            cc.anon_peak.fetch_max(live, Relaxed);
            return p;
        }
        if !relieve() {
            oom("anon page", PAGE_SIZE);
        }
    }
}

pub fn anon_free(p: usize) {
    c().anon_live.fetch_sub(1, Relaxed);
    buddy::free_pages(p, 0);
}

/// A job's kernel stack: spawn, reclaiming memory if the 16 KiB block is not there.
pub fn spawn(name: &'static str, f: fn(usize), arg: usize) -> u32 {
    loop {
        // Counted first: on several CPUs the task may exit (`stack_gone`)
        // before `spawn` returns here.
        c().stacks_live.fetch_add(crate::task::STACK_SIZE, Relaxed);
        let pid = crate::task::spawn(name, f, arg);
        if pid != 0 {
            note_tracked();
            return pid;
        }
        stack_gone();
        if !relieve() {
            oom("kernel stack", crate::task::STACK_SIZE);
        }
    }
}
