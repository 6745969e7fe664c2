//! Suite `race`: the race stress test of issue 9 on every CPU at once
//! (the guest's version of tests/differential_smp.rs). Each online CPU
//! allocates and frees kmalloc objects, objects of a shared cache,
//! page-backed kmallocs, pages and vmalloc areas, all from the same
//! allocators and so in the same 32 KiB blocks (boot with
//! `pageblocks=off` to mix slab and plain pages in one block), while it
//! reads and writes its neighbours' live objects and its own through
//! instrumented accesses (real KASAN checks). Hybrid's shadow pages flip
//! meanwhile between the shared pages, CONSULT and private ones.
//!
//! A neighbour's object is only accessed while pinned in its owner's
//! registry: the owner withdraws an object (waiting for every pin to go)
//! before it frees it. So every access but the planted ones is valid.
//!
//! At random moments (one operation in `race_plant=` on average) a CPU
//! plants a bug on its own memory: a read just past a live object
//! (slab-out-of-bounds for slab objects and page-backed kmallocs,
//! vmalloc-out-of-bounds for vmalloc areas), or a read of memory it freed
//! and holds back from reuse (slab-use-after-free: `slab::kfree_held`, a
//! real kfree whose slot the slab does not hand out again until
//! `slab::unhold`; use-after-free: pages given to the runtime's page-free
//! hook and not to the buddy allocator; vmalloc-out-of-bounds: an area
//! given to the runtime's vmalloc-free hook, still mapped). Held memory
//! is read again later (more plants) and then given back.
//!
//! Reports are matched per CPU through guest-kasan's console tap (it
//! reads each report, whole, on the CPU that prints it: bug type and
//! address): a planted access must yield exactly one whole report of its
//! type at its address; every other report is unexpected. Then the
//! runtime's report counters must agree (none suppressed), and the buddy
//! and slab invariants must hold.
//!
//! Output, once per run:
//! `smp-race-info: cpus=<n> ops=<n> ... ms=<n>` (details) and
//! `smp-race: transitions=<n> shootdowns=<n> planted=<n> reported=<n> unexpected=<n>`
//! (transitions: the shadow mapper's one-page remaps during the run, each
//! a shadow page changing backing; shootdowns: IPI rounds of all kinds).
//! Passes with planted == reported, unexpected == 0, planted > 0.
//!
//! Command line: `race_ops=<n>` (operations per CPU, default 3000),
//! `race_plant=<n>` (one plant per n operations on average, default 40),
//! `race_progress=<n>` (counts every n operations of the boot CPU),
//! `seed=<n>`. Run with `kasan_multi_shot`.
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::{AcqRel, Acquire, Relaxed, Release}};

use crate::kasan_glue;
use crate::mm::{buddy, slab, vmalloc, PAGE_SIZE};
use crate::println;
use crate::workload::rng::{hash3, Rng};
use guest_boot::cpu::MAX_CPUS;
use kasan_glue::tap;
use hybrid_shadow::BugType;

/// Live objects a CPU may have at once (a slot each in its registry).
const CAP: usize = 24;
/// Freed memory a CPU holds back at most.
const HELD: usize = 4;
const CACHE_OBJ: usize = 192;

static OPS: AtomicUsize = AtomicUsize::new(3000);
static PLANT_EVERY: AtomicUsize = AtomicUsize::new(40);
static SEED: AtomicU64 = AtomicU64::new(0);
/// `race_progress=<n>`: the boot CPU prints the counts every n of its
/// operations (long runs; 0: never). The line may land inside a report
/// another CPU prints (the tap does not mind; a reader of the log might).
static PROGRESS: AtomicUsize = AtomicUsize::new(0);
/// Counters at the start: mapper remaps, shootdowns.
static REMAPS0: AtomicUsize = AtomicUsize::new(0);
static SHOOT0: AtomicU64 = AtomicU64::new(0);
/// The shared cache (set once by `run`, before the other CPUs start).
static CACHE: spin::Once<Option<slab::CacheRef>> = spin::Once::new();

// Results.
static DONE_OPS: AtomicUsize = AtomicUsize::new(0);
static PLANTED: AtomicUsize = AtomicUsize::new(0);
static REPORTED: AtomicUsize = AtomicUsize::new(0);
static UNEXPECTED: AtomicUsize = AtomicUsize::new(0);
static MISSED: AtomicUsize = AtomicUsize::new(0);
static NEIGHBOUR: AtomicUsize = AtomicUsize::new(0);
static OWN: AtomicUsize = AtomicUsize::new(0);
static ALLOC_FAILED: AtomicUsize = AtomicUsize::new(0);
static NOTES: AtomicUsize = AtomicUsize::new(0);
/// Planted bugs by kind (index of [`Plant`]).
static BY_KIND: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
const KIND_NAMES: [&str; 6] = ["slab_oob", "large_oob", "vmalloc_oob", "slab_uaf", "page_uaf", "vmalloc_uaf"];

#[derive(Clone, Copy)]
enum Plant {
    SlabOob = 0,
    LargeOob = 1,
    VmallocOob = 2,
    SlabUaf = 3,
    PageUaf = 4,
    VmallocUaf = 5,
}

fn cache() -> Option<slab::CacheRef> {
    CACHE.get().copied().flatten()
}

/// A registry slot: `state` is generation << 32 | pins << 1 | live.
struct Slot {
    state: AtomicU64,
    addr: AtomicUsize,
    len: AtomicUsize,
}

static REG: [[Slot; CAP]; MAX_CPUS] =
    [const { [const { Slot { state: AtomicU64::new(0), addr: AtomicUsize::new(0), len: AtomicUsize::new(0) } }; CAP] }; MAX_CPUS];

impl Slot {
    /// The owner publishes a live object of `len` bytes at `addr`.
    fn publish(&self, addr: usize, len: usize) {
        self.addr.store(addr, Relaxed);
        self.len.store(len, Relaxed);
        let s = self.state.load(Relaxed);
        self.state.store((s >> 32 << 32) | 1, Release);
    }

    /// The owner withdraws it, waiting for every neighbour's access to it.
    fn withdraw(&self) {
        loop {
            let s = self.state.load(Acquire);
            if s & 0xffff_fffe == 0 && self.state.compare_exchange(s, ((s >> 32) + 1) << 32, AcqRel, Relaxed).is_ok() {
                return;
            }
            guest_boot::smp::relax();
        }
    }

    /// A neighbour pins a live object: its (addr, len) until `unpin`.
    fn pin(&self) -> Option<(usize, usize)> {
        let s = self.state.load(Acquire);
        if s & 1 == 0 || self.state.compare_exchange(s, s + 2, Acquire, Relaxed).is_err() {
            return None;
        }
        Some((self.addr.load(Relaxed), self.len.load(Relaxed)))
    }

    fn unpin(&self) {
        self.state.fetch_sub(2, Release);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Kmalloc,
    Cache,
    Large,
    Pages(usize),
    Vmalloc,
}

#[derive(Clone, Copy)]
struct Item {
    kind: Kind,
    addr: usize,
    len: usize,
}

const NONE: Item = Item { kind: Kind::None, addr: 0, len: 0 };

/// Memory this CPU freed and holds back: every access to it is a bug.
#[derive(Clone, Copy)]
struct Freed {
    item: Item,
    bug: BugType,
    plant: Plant,
    /// For vmalloc: the area's mapped length.
    area_len: usize,
}

// ---- accesses (instrumented: the compiler checks each one) ----------------

#[inline(never)]
fn race_read(addr: usize, size: usize) {
    // SAFETY: `addr` is mapped (a live object, or memory this CPU holds back
    // after a free, or a redzone inside a mapped page: see the callers) and
    // aligned to `size`; reads have no effect on it.
    unsafe {
        match size {
            1 => _ = read_volatile(addr as *const u8),
            2 => _ = read_volatile(addr as *const u16),
            4 => _ = read_volatile(addr as *const u32),
            _ => _ = read_volatile(addr as *const u64),
        }
    }
}

#[inline(never)]
fn race_write(addr: usize, size: usize) {
    // SAFETY: `addr .. addr + size` lies inside a live object (its owner's
    // or a pinned neighbour's), aligned to `size`; nobody checks its bytes.
    unsafe {
        match size {
            1 => write_volatile(addr as *mut u8, 0x5a),
            2 => write_volatile(addr as *mut u16, 0x5a5a),
            4 => write_volatile(addr as *mut u32, 0x5a5a_5a5a),
            _ => write_volatile(addr as *mut u64, 0x5a5a_5a5a_5a5a_5a5a),
        }
    }
}

/// A random aligned access inside `[a, a + len)`: (address, size).
fn pick(rng: &mut Rng, a: usize, len: usize) -> (usize, usize) {
    let size = 1usize << rng.below(4);
    let off = rng.below(len as u64) as usize;
    let at = (a + off) & !(size - 1);
    if at >= a && at + size <= a + len {
        (at, size)
    } else {
        (a + off, 1)
    }
}

// ---- report matching -------------------------------------------------------

fn note(cpu: usize, what: core::fmt::Arguments<'_>) {
    if NOTES.fetch_add(1, Relaxed) < 12 {
        println!("smp-race: cpu {}: {}", cpu, what);
    }
}

/// Match the reports this CPU printed since the last call: one of type
/// `expect.0` at `expect.1` if a bug was planted, none otherwise.
fn settle(cpu: usize, seen: &mut usize, expect: Option<(BugType, usize)>) {
    let n = tap::count(cpu);
    let mut matched = false;
    for i in *seen..n {
        match tap::record(cpu, i) {
            Some(r) if !matched && r.whole && expect.is_some_and(|(k, a)| r.kind == Some(k) && r.addr == a) => {
                matched = true;
            }
            r => {
                UNEXPECTED.fetch_add(1, Relaxed);
                note(cpu, format_args!("unexpected report {:?} (planted {:?})", r, expect));
            }
        }
    }
    *seen = n;
    if let Some((k, a)) = expect {
        if matched {
            REPORTED.fetch_add(1, Relaxed);
        } else {
            MISSED.fetch_add(1, Relaxed);
            note(cpu, format_args!("planted {} at {:#x}: no report", k, a));
        }
    }
}

/// Plant: read `size` bytes at `at`, which must be reported as `bug`.
fn plant(cpu: usize, seen: &mut usize, at: usize, size: usize, bug: BugType, kind: Plant) {
    settle(cpu, seen, None);
    PLANTED.fetch_add(1, Relaxed);
    BY_KIND[kind as usize].fetch_add(1, Relaxed);
    race_read(at, size);
    settle(cpu, seen, Some((bug, at)));
}

// ---- allocation --------------------------------------------------------------

fn alloc(rng: &mut Rng) -> Item {
    let (kind, addr, len) = match rng.below(16) {
        0..=4 => {
            let len = rng.skewed(2048) as usize + 1;
            (Kind::Kmalloc, slab::kmalloc(len) as usize, len)
        }
        5..=6 => match cache() {
            Some(c) => (Kind::Cache, slab::kmem_cache_alloc(c) as usize, CACHE_OBJ),
            None => (Kind::None, 0, 0),
        },
        7 => {
            // never a multiple of 8: a redzone byte right after it
            let len = (slab::KMALLOC_MAX_CACHE_SIZE + 1 + rng.below(8000) as usize) | 1;
            (Kind::Large, slab::kmalloc(len) as usize, len)
        }
        8..=12 => {
            // up to a whole pageblock (order 3: the 8 pages of one shadow
            // page, which flips between the shared zero and 0xFF pages)
            let order = rng.below(4) as usize;
            (Kind::Pages(order), buddy::alloc_pages(order).unwrap_or(0), PAGE_SIZE << order)
        }
        _ => {
            let mut len = rng.range(1, 3 * PAGE_SIZE as u64) as usize;
            if len.is_multiple_of(PAGE_SIZE) {
                len -= 1; // the byte after it is in a mapped page
            }
            (Kind::Vmalloc, vmalloc::vmalloc(len) as usize, len)
        }
    };
    if addr == 0 {
        if kind != Kind::None {
            ALLOC_FAILED.fetch_add(1, Relaxed);
        }
        return NONE;
    }
    Item { kind, addr, len }
}

fn free(it: Item) {
    match it.kind {
        Kind::Kmalloc | Kind::Large => slab::kfree(it.addr as *const u8),
        Kind::Cache => {
            if let Some(c) = cache() {
                slab::kmem_cache_free(c, it.addr as *mut u8);
            }
        }
        Kind::Pages(order) => buddy::free_pages(it.addr, order),
        Kind::Vmalloc => vmalloc::vfree(it.addr as *const u8),
        Kind::None => {}
    }
}

/// Free `it` and hold it back from reuse: Some if it can be (slab
/// objects, pages, vmalloc areas), else it is freed normally.
fn free_held(it: Item) -> Option<Freed> {
    let ip = crate::mm::caller_ip();
    match it.kind {
        Kind::Kmalloc | Kind::Cache => {
            if slab::kfree_held(it.addr as *const u8) {
                return Some(Freed { item: it, bug: BugType::SlabUseAfterFree, plant: Plant::SlabUaf, area_len: 0 });
            }
        }
        Kind::Pages(order) => {
            if kasan_glue::page_free(it.addr, order as u32, ip) {
                return Some(Freed { item: it, bug: BugType::UseAfterFree, plant: Plant::PageUaf, area_len: 0 });
            }
            return None; // reported (the next settle counts it)
        }
        Kind::Vmalloc => {
            if let Some((a, _, area_len)) = vmalloc::area_of(it.addr) {
                kasan_glue::vmalloc_free(a, area_len);
                return Some(Freed { item: it, bug: BugType::VmallocOutOfBounds, plant: Plant::VmallocUaf, area_len });
            }
        }
        _ => {}
    }
    free(it);
    None
}

/// Give held memory back for good.
fn give_back(f: Freed) {
    let it = f.item;
    match it.kind {
        Kind::Kmalloc | Kind::Cache => slab::unhold(it.addr as *const u8),
        Kind::Pages(order) => {
            kasan_glue::page_alloc(it.addr, order as u32);
            buddy::free_pages(it.addr, order);
        }
        Kind::Vmalloc => {
            kasan_glue::vmalloc_alloc(it.addr, it.len, f.area_len);
            vmalloc::vfree(it.addr as *const u8);
        }
        _ => {}
    }
}

/// Plant a read of freed `f`.
fn plant_in(cpu: usize, seen: &mut usize, f: &Freed, rng: &mut Rng) {
    let (at, size) = pick(rng, f.item.addr, f.item.len);
    plant(cpu, seen, at, size, f.bug, f.plant);
}

// ---- the worker ----------------------------------------------------------------

fn worker(me: usize) {
    let cpus = guest_boot::smp::cpus_online();
    let mut rng = Rng::new(hash3(SEED.load(Relaxed), me as u64, 0x7ace));
    let reg = &REG[me];
    let mut items = [NONE; CAP];
    let mut held: [Option<Freed>; HELD] = [None; HELD];
    let mut seen = tap::count(me);
    let plant_every = PLANT_EVERY.load(Relaxed).max(1) as u64;
    let progress = if me == 0 { PROGRESS.load(Relaxed) } else { 0 };
    for n in 0..OPS.load(Relaxed) {
        if progress != 0 && n % progress == 0 && n != 0 {
            let sd = guest_boot::smp::stats();
            println!(
                "smp-race-progress: ops={} transitions={} shootdowns={} planted={} reported={} unexpected={} missed={}",
                DONE_OPS.load(Relaxed),
                kasan_glue::shadow_remaps() - REMAPS0.load(Relaxed),
                sd.page + sd.full - SHOOT0.load(Relaxed),
                PLANTED.load(Relaxed),
                REPORTED.load(Relaxed),
                UNEXPECTED.load(Relaxed),
                MISSED.load(Relaxed)
            );
        }
        let slot = rng.below(CAP as u64) as usize;
        if rng.below(plant_every) == 0 {
            // plant a bug on this CPU's own memory
            match rng.below(3) {
                0 if items[slot].kind != Kind::None => {
                    let it = items[slot];
                    let (bug, kind) = match it.kind {
                        Kind::Kmalloc | Kind::Cache => (BugType::SlabOutOfBounds, Plant::SlabOob),
                        Kind::Large => (BugType::SlabOutOfBounds, Plant::LargeOob),
                        Kind::Vmalloc => (BugType::VmallocOutOfBounds, Plant::VmallocOob),
                        _ => (BugType::UseAfterFree, Plant::PageUaf), // pages: no redzone
                    };
                    if !matches!(it.kind, Kind::Pages(_)) {
                        plant(me, &mut seen, it.addr + it.len, 1, bug, kind);
                    }
                }
                1 if items[slot].kind != Kind::None && held.iter().any(|h| h.is_none()) => {
                    reg[slot].withdraw();
                    let it = core::mem::replace(&mut items[slot], NONE);
                    if let Some(f) = free_held(it) {
                        plant_in(me, &mut seen, &f, &mut rng);
                        if let Some(h) = held.iter_mut().find(|h| h.is_none()) {
                            *h = Some(f);
                        }
                    }
                }
                _ => {
                    let i = rng.below(HELD as u64) as usize;
                    if let Some(f) = held[i] {
                        plant_in(me, &mut seen, &f, &mut rng);
                    }
                }
            }
            DONE_OPS.fetch_add(1, Relaxed);
            continue;
        }
        match rng.below(100) {
            // allocate into a free slot, or free what is there
            0..=39 => {
                if items[slot].kind == Kind::None {
                    let it = alloc(&mut rng);
                    if it.kind != Kind::None {
                        reg[slot].publish(it.addr, it.len);
                    }
                    items[slot] = it;
                } else {
                    reg[slot].withdraw();
                    free(core::mem::replace(&mut items[slot], NONE));
                }
            }
            // give a held freed object back
            40..=44 => {
                let i = rng.below(HELD as u64) as usize;
                if let Some(f) = held[i].take() {
                    give_back(f);
                }
            }
            // access a neighbour's live object
            45..=79 if cpus > 1 => {
                let other = (me + 1 + rng.below(cpus as u64 - 1) as usize) % cpus;
                let s = &REG[other][slot];
                if let Some((a, l)) = s.pin() {
                    let (at, size) = pick(&mut rng, a, l);
                    if rng.below(2) == 0 {
                        race_read(at, size);
                    } else {
                        race_write(at, size);
                    }
                    s.unpin();
                    NEIGHBOUR.fetch_add(1, Relaxed);
                }
            }
            // access its own
            _ => {
                let it = items[slot];
                if it.kind != Kind::None {
                    let (at, size) = pick(&mut rng, it.addr, it.len);
                    race_write(at, size);
                    race_read(at, size);
                    OWN.fetch_add(1, Relaxed);
                }
            }
        }
        settle(me, &mut seen, None);
        DONE_OPS.fetch_add(1, Relaxed);
    }
    for f in held.iter_mut().filter_map(|h| h.take()) {
        give_back(f);
    }
    for (slot, it) in items.iter_mut().enumerate() {
        if it.kind != Kind::None {
            reg[slot].withdraw();
            free(core::mem::replace(it, NONE));
        }
    }
    settle(me, &mut seen, None);
}

pub fn run() -> bool {
    let info = guest_boot::boot_info();
    for w in info.cmdline().split_ascii_whitespace() {
        if let Some(n) = w.strip_prefix("race_ops=").and_then(|v| v.parse().ok()) {
            OPS.store(n, Relaxed);
        }
        if let Some(n) = w.strip_prefix("race_plant=").and_then(|v| v.parse().ok()) {
            PLANT_EVERY.store(n, Relaxed);
        }
        if let Some(n) = w.strip_prefix("race_progress=").and_then(|v| v.parse().ok()) {
            PROGRESS.store(n, Relaxed);
        }
    }
    SEED.store(info.config.seed, Relaxed);
    if !kasan_glue::checking() {
        println!("smp-race: needs kasan.shadow=full or hybrid");
        return false;
    }
    let c = slab::kmem_cache_create("smp_race", CACHE_OBJ, 8);
    let c = *CACHE.call_once(|| c);
    let cpus = guest_boot::smp::cpus_online();
    let s0 = kasan_glue::stats().unwrap_or_default();
    let (remaps0, shadow_sd0) = (kasan_glue::shadow_remaps(), kasan_glue::shadow_shootdowns());
    let sd = guest_boot::smp::stats();
    let sd0 = sd.page + sd.full;
    REMAPS0.store(remaps0, Relaxed);
    SHOOT0.store(sd0, Relaxed);
    let tap0: usize = (0..cpus).map(tap::count).sum();
    tap::enable(true);
    let t0 = guest_boot::time::rdtsc();
    guest_boot::smp::run_on_aps(worker);
    // Interrupts on while every CPU works: a CPU waiting for a lock must
    // take the shootdowns its holder sends.
    guest_boot::smp::irq_enable();
    worker(0);
    guest_boot::smp::wait_aps();
    guest_boot::smp::irq_disable();
    let t1 = guest_boot::time::rdtsc();
    tap::enable(false);
    let transitions = kasan_glue::shadow_remaps() - remaps0;
    let shadow_sd = kasan_glue::shadow_shootdowns() - shadow_sd0;
    let sd = guest_boot::smp::stats();
    let shootdowns = sd.page + sd.full - sd0;
    let s1 = kasan_glue::stats().unwrap_or_default();
    let tapped = (0..cpus).map(tap::count).sum::<usize>() - tap0;
    let printed = s1.reports - s0.reports;
    let suppressed = s1.reports_suppressed - s0.reports_suppressed;
    let (planted, reported) = (PLANTED.load(Relaxed), REPORTED.load(Relaxed));
    // Reports the tap did not see, or bugs found and not printed: unexpected.
    let mut unexpected = UNEXPECTED.load(Relaxed) + suppressed + printed.saturating_sub(tapped);
    if tapped != printed || suppressed != 0 {
        println!("smp-race: the runtime printed {} reports (suppressed {}), the tap read {}", printed, suppressed, tapped);
    }
    if let Some(c) = c {
        slab::drain_all();
        if let Err(e) = slab::kmem_cache_destroy(c) {
            println!("smp-race: kmem_cache_destroy: {}", e);
            unexpected += 1;
        }
    }
    let (buddy_bad, slab_bad) = (buddy::check_invariants(), slab::check_invariants());
    let ms = guest_boot::time::tsc_khz().filter(|&k| k > 0).map_or(0, |k| t1.wrapping_sub(t0) / k);
    let mut kinds = [0usize; 6];
    for (k, c) in kinds.iter_mut().zip(BY_KIND.iter()) {
        *k = c.load(Relaxed);
    }
    crate::print!(
        "smp-race-info: cpus={} ops={} plant_every={} seed={} neighbour_accesses={} own_accesses={} alloc_failed={} missed={} shadow_shootdowns={} reports={} buddy_bad={} slab_bad={} ms={}",
        cpus,
        DONE_OPS.load(Relaxed),
        PLANT_EVERY.load(Relaxed),
        SEED.load(Relaxed),
        NEIGHBOUR.load(Relaxed),
        OWN.load(Relaxed),
        ALLOC_FAILED.load(Relaxed),
        MISSED.load(Relaxed),
        shadow_sd,
        printed,
        buddy_bad,
        slab_bad,
        ms
    );
    for (name, n) in KIND_NAMES.iter().zip(kinds) {
        crate::print!(" {}={}", name, n);
    }
    println!();
    println!(
        "smp-race: transitions={} shootdowns={} planted={} reported={} unexpected={}",
        transitions, shootdowns, planted, reported, unexpected
    );
    c.is_some() && planted > 0 && planted == reported && unexpected == 0 && buddy_bad == 0 && slab_bad == 0
}
