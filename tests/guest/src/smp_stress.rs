//! Suite `smp`: the allocators on every CPU at once. Each online CPU (the
//! boot CPU too) replaces random slots of its own table, `rounds` times,
//! with kmalloc objects, page blocks, vmalloc areas and objects of a shared
//! cache, each filled with a byte of its own and checked before it is
//! freed: two CPUs handed the same memory would see each other's bytes.
//! Then the buddy and slab invariants are checked.
//!
//! `smp-stress: cpus=<n> rounds=<n> ops=<n> corrupt=<n> buddy_bad=<n>
//! slab_bad=<n> leaked_pages=<n>`; passes with no corruption and no
//! invariant broken (the host test also requires no sanitizer report).
//! Command line: `smp_rounds=<n>` (default 2000 per CPU).
//!
//! First, a check that shootdowns reach the other CPUs' TLBs: every AP
//! reads a vmap'd page (its TLB now holds the translation), the boot CPU
//! points the page-table entry at another frame and shoots the page down,
//! and every AP must then read the new frame. `smp-tlb: cpus=<n>
//! checked=<n> stale=<n> control=<0|1>`; with `smp_tlb_control=on` the
//! boot CPU flushes only its own TLB (the bug the 2017 review found), and
//! the APs are expected to read the old frame through their stale entries
//! (a negative control: it shows that the check can fail).
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::{Relaxed, SeqCst}};

use crate::mm::{buddy, slab, vmalloc, PAGE_SIZE};
use crate::println;
use crate::workload::rng::{hash3, Rng};

const SLOTS: usize = 24;
static ROUNDS: AtomicUsize = AtomicUsize::new(2000);
static SEED: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicUsize = AtomicUsize::new(0);
static CORRUPT: AtomicUsize = AtomicUsize::new(0);
/// The shared cache (set once by `run`, before the other CPUs start).
static CACHE: spin::Once<Option<slab::CacheRef>> = spin::Once::new();
const CACHE_OBJ: usize = 192;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Kmalloc,
    Pages(usize),
    Vmalloc,
    Cache,
}

#[derive(Clone, Copy)]
struct Obj {
    kind: Kind,
    ptr: usize,
    len: usize,
    tag: u8,
}

const EMPTY: Obj = Obj { kind: Kind::None, ptr: 0, len: 0, tag: 0 };

fn cache() -> Option<slab::CacheRef> {
    CACHE.get().copied().flatten()
}

fn alloc(rng: &mut Rng, tag: u8) -> Obj {
    let (kind, ptr, len) = match rng.below(4) {
        0 => {
            let len = rng.skewed(2048) as usize + 8;
            (Kind::Kmalloc, slab::kmalloc(len) as usize, len)
        }
        1 => {
            let order = rng.skewed(3) as usize;
            (Kind::Pages(order), buddy::alloc_pages(order).unwrap_or(0), PAGE_SIZE << order)
        }
        2 => {
            let len = rng.range(1, 4 * PAGE_SIZE as u64) as usize;
            (Kind::Vmalloc, vmalloc::vmalloc(len) as usize, len)
        }
        _ => match cache() {
            Some(c) => (Kind::Cache, slab::kmem_cache_alloc(c) as usize, CACHE_OBJ),
            None => (Kind::None, 0, 0),
        },
    };
    if ptr == 0 {
        return EMPTY;
    }
    // SAFETY: `len` bytes just allocated for this CPU alone.
    unsafe { core::ptr::write_bytes(ptr as *mut u8, tag, len) };
    OPS.fetch_add(1, Relaxed);
    Obj { kind, ptr, len, tag }
}

/// Check the object's bytes (every 64th and the last), then free it.
fn release(o: &mut Obj, cpu: usize) {
    if o.kind == Kind::None {
        return;
    }
    let bad = (0..o.len).step_by(64).chain(core::iter::once(o.len - 1)).find(|&i| {
        // SAFETY: `i < len`: inside the object, still allocated.
        unsafe { ((o.ptr + i) as *const u8).read_volatile() != o.tag }
    });
    if let Some(i) = bad {
        CORRUPT.fetch_add(1, Relaxed);
        println!("smp-stress: cpu {} object {:#x}+{} lost its byte {:#x}", cpu, o.ptr, i, o.tag);
    }
    match o.kind {
        Kind::Kmalloc => slab::kfree(o.ptr as *const u8),
        Kind::Pages(order) => buddy::free_pages(o.ptr, order),
        Kind::Vmalloc => vmalloc::vfree(o.ptr as *const u8),
        Kind::Cache => {
            if let Some(c) = cache() {
                slab::kmem_cache_free(c, o.ptr as *mut u8);
            }
        }
        Kind::None => {}
    }
    *o = EMPTY;
}

fn stress(cpu: usize) {
    let mut rng = Rng::new(hash3(SEED.load(Relaxed), cpu as u64, 0x5a17));
    let mut objs = [EMPTY; SLOTS];
    for round in 0..ROUNDS.load(Relaxed) {
        let i = rng.below(SLOTS as u64) as usize;
        release(&mut objs[i], cpu);
        let tag = (hash3(cpu as u64, round as u64, 1) as u8) | 1;
        objs[i] = alloc(&mut rng, tag);
    }
    for o in objs.iter_mut() {
        release(o, cpu);
    }
}

/// Free pages plus the runtime's frames, quarantine emptied (as selftest).
fn avail() -> usize {
    slab::drain_all();
    buddy::free_page_count() + crate::kasan_glue::frames_held()
}

/// The TLB check's shared state: the page address, the phase (0: readers
/// warm their TLBs, 1: remapped), readers ready, readers done, stale reads.
static TLB_VA: AtomicUsize = AtomicUsize::new(0);
static TLB_PHASE: AtomicUsize = AtomicUsize::new(0);
static TLB_READY: AtomicUsize = AtomicUsize::new(0);
static TLB_DONE: AtomicUsize = AtomicUsize::new(0);
static TLB_STALE: AtomicUsize = AtomicUsize::new(0);
const OLD: u64 = 0xaaaa_aaaa_aaaa_aaaa;
const NEW: u64 = 0xbbbb_bbbb_bbbb_bbbb;

/// Read a word through the page tables, unchecked (the sanitizer's view of
/// the vmap area does not matter here: the translation does).
fn read_raw(va: usize) -> u64 {
    let v: u64;
    // SAFETY: `va` is the vmap'd page of `tlb_check`, mapped (to one frame
    // or the other) while the readers run.
    unsafe { core::arch::asm!("mov {}, [{}]", out(reg) v, in(reg) va, options(nostack, readonly, preserves_flags)) };
    v
}

fn tlb_reader(_cpu: usize) {
    let va = TLB_VA.load(SeqCst);
    // Warm this CPU's TLB.
    let first = read_raw(va);
    if first != OLD {
        TLB_STALE.fetch_add(1 << 16, SeqCst); // counted apart: not the old page
    }
    TLB_READY.fetch_add(1, SeqCst);
    while TLB_PHASE.load(SeqCst) == 0 {
        guest_boot::smp::relax();
    }
    if read_raw(va) != NEW {
        TLB_STALE.fetch_add(1, SeqCst);
    }
    TLB_DONE.fetch_add(1, SeqCst);
}

/// The shootdown check (see the header); true when it went as expected.
fn tlb_check(control: bool) -> bool {
    let others = guest_boot::smp::cpus_online() - 1;
    if others == 0 {
        return true;
    }
    let (Some(a), Some(b)) = (buddy::alloc_pages(0), buddy::alloc_pages(0)) else { return false };
    // SAFETY: two pages just allocated for this check alone.
    unsafe {
        core::ptr::write_bytes(a as *mut u8, 0xaa, PAGE_SIZE);
        core::ptr::write_bytes(b as *mut u8, 0xbb, PAGE_SIZE);
    }
    let va = vmalloc::vmap(&[a]) as usize;
    if va == 0 {
        return false;
    }
    TLB_VA.store(va, SeqCst);
    guest_boot::smp::run_on_aps(tlb_reader);
    while TLB_READY.load(SeqCst) < others {
        guest_boot::smp::relax();
    }
    let pa = guest_boot::paging::virt_to_phys(b as u64).expect("direct map");
    let mut no_tables = || None;
    // SAFETY: `va` is our vmap'd page (its tables exist: no allocation);
    // the new frame is ours; map_4k flushes this CPU's entry.
    let ok = unsafe {
        guest_boot::paging::map_4k(
            va as u64,
            pa,
            guest_boot::paging::PTE_W | guest_boot::paging::PTE_G | guest_boot::paging::PTE_NX,
            &mut no_tables,
        )
    }
    .is_ok();
    if !control {
        guest_boot::smp::flush_page(va as u64);
    }
    TLB_PHASE.store(1, SeqCst);
    guest_boot::smp::wait_aps();
    let stale = TLB_STALE.load(SeqCst);
    println!(
        "smp-tlb: cpus={} checked={} stale={} control={}",
        others + 1,
        TLB_DONE.load(SeqCst),
        stale,
        u8::from(control)
    );
    // The readers are done: drop every CPU's entry before the frames go.
    guest_boot::smp::flush_page(va as u64);
    vmalloc::vunmap(va as *const u8);
    buddy::free_pages(a, 0);
    buddy::free_pages(b, 0);
    ok && TLB_DONE.load(SeqCst) == others && if control { stale > 0 } else { stale == 0 }
}

pub fn run() -> bool {
    let info = guest_boot::boot_info();
    let control = info.cmdline().split_ascii_whitespace().any(|w| w == "smp_tlb_control=on");
    let tlb_ok = tlb_check(control);
    for w in info.cmdline().split_ascii_whitespace() {
        if let Some(n) = w.strip_prefix("smp_rounds=").and_then(|v| v.parse().ok()) {
            ROUNDS.store(n, Relaxed);
        }
    }
    SEED.store(info.config.seed, Relaxed);
    let free0 = avail();
    let c = slab::kmem_cache_create("smp_stress", CACHE_OBJ, 8);
    let c = *CACHE.call_once(|| c);
    let cpus = guest_boot::smp::cpus_online();
    guest_boot::smp::run_on_aps(stress);
    // Interrupts on while every CPU allocates: a CPU waiting for a lock must
    // take the shootdowns its holder sends.
    guest_boot::smp::irq_enable();
    stress(0);
    guest_boot::smp::wait_aps();
    guest_boot::smp::irq_disable();
    if let Some(c) = c {
        if let Err(e) = slab::kmem_cache_destroy(c) {
            println!("smp-stress: kmem_cache_destroy: {}", e);
        }
    }
    let leaked = free0.saturating_sub(avail());
    let (buddy_bad, slab_bad) = (buddy::check_invariants(), slab::check_invariants());
    let corrupt = CORRUPT.load(Relaxed);
    println!(
        "smp-stress: cpus={} rounds={} ops={} corrupt={} buddy_bad={} slab_bad={} leaked_pages={}",
        cpus,
        ROUNDS.load(Relaxed),
        OPS.load(Relaxed),
        corrupt,
        buddy_bad,
        slab_bad,
        leaked
    );
    tlb_ok && c.is_some() && corrupt == 0 && buddy_bad == 0 && slab_bad == 0
}
