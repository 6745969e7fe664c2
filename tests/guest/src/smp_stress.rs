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
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::mm::{buddy, slab, vmalloc, PAGE_SIZE};
use crate::println;
use crate::workload::rng::{hash3, Rng};

const SLOTS: usize = 24;
static ROUNDS: AtomicUsize = AtomicUsize::new(2000);
static SEED: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicUsize = AtomicUsize::new(0);
static CORRUPT: AtomicUsize = AtomicUsize::new(0);
/// The shared cache (set before the other CPUs start).
static mut CACHE: Option<slab::CacheRef> = None;
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
    // SAFETY: written once by `run` before any CPU runs `stress` (published
    // by run_on_aps's sequentially consistent stores), read-only after.
    unsafe { *core::ptr::addr_of!(CACHE) }
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

pub fn run() -> bool {
    let info = guest_boot::boot_info();
    for w in info.cmdline().split_ascii_whitespace() {
        if let Some(n) = w.strip_prefix("smp_rounds=").and_then(|v| v.parse().ok()) {
            ROUNDS.store(n, Relaxed);
        }
    }
    SEED.store(info.config.seed, Relaxed);
    let free0 = avail();
    let c = slab::kmem_cache_create("smp_stress", CACHE_OBJ, 8);
    // SAFETY: no other CPU runs `stress` yet (see `cache`).
    unsafe { *core::ptr::addr_of_mut!(CACHE) = c };
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
    c.is_some() && corrupt == 0 && buddy_bad == 0 && slab_bad == 0
}
