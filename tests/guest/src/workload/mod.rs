//! Suite `workload`: a kernel-build-like stress workload (a model of
//! `make -jN` over M compilation units), deterministic from `seed=`, sized by
//! `units=` (default 240) and `jobs=` (4) on the command line; also `obj=`
//! (object-file size: sixteenths of a page per AST node, 20: the build
//! writes ~1.2 GiB, more than the largest guest, so the page cache fills RAM
//! and reclaim runs at every size), `anon=` KiB of compiler heap per source
//! page (128), `anon_base=` KiB per unit (512), `profile=build|light`
//! (build), `files=` files of the source tree (profile build), `samples=` target number of
//! `wl-sample` lines (300). With the defaults a run makes ~1.1M slab
//! allocations. The build's result (`checksum=`) depends only on the
//! parameters, not on the mode or the RAM size.
//!
//! `profile=build` (the default) is calibrated to what a kernel build keeps
//! in byte-tracked memory (at 1 GiB its peak is 12-25% of RAM, as a real
//! build's slab): a source tree of `files=` files (default
//! `FILES_PER_MIB` per MiB of RAM up to `KERNEL_TREE_FILES`, the ~77k
//! files of a kernel tree, reached at 1 GiB: a larger machine builds the
//! same tree, it only keeps more of it cached) looked up at the start
//! (make) and by every unit, each with an
//! inode of ~1 KiB and a dentry of 192 bytes; the page-cache index in
//! 576-byte radix_tree_node objects; a buffer_head per written page; every
//! unit as short-lived processes (gcc, cc1, as: task_struct, mm_struct,
//! vm areas, ... and a kernel stack each, `proc.rs`); and a shrinker that
//! frees dentries and inodes, least recently used first, in proportion to
//! page reclaim (`vfs.rs`). `profile=light` is the workload before that
//! calibration (a few hundred files, flat page arrays, four long-lived
//! jobs, no shrinker), kept for comparison.
//!
//! Memory pressure: free pages below the low watermark (Linux's
//! min_free_kbytes formula) wake a kswapd-like reclaim of the coldest page
//! cache pages up to the high watermark; a failed allocation drains the
//! KASAN quarantine and reclaims (direct reclaim); when nothing can be freed
//! the workload prints `wl-oom` and fails (the "does not complete" case).
//!
//! Output (machine-readable, one line each):
//!   wl-start mode=.. ram_mib=.. units=.. jobs=.. seed=.. ...
//!   wl-sample t_ns=.. ops=.. free=.. pagecache=.. dirty=.. anon=.. slab=.. vmalloc=.. ondemand=.. tracked=..
//!   wl-peak tracked=.. slab=.. stacks=.. vmalloc=.. globals=.. objects=.. <group>=.. <cache>=..
//!           (byte-tracked memory at its peak: by kind, live object bytes per
//!           group of caches and per cache; `slab` minus `objects` is the
//!           slabs' redzones, free slots and the kernel's own caches)
//!   wl-shrinker calls=.. scanned=.. dentries=.. inodes=.. referenced=.. busy=.. refaults=..
//!   wl-meta shadow_<kind>=.. origin_<kind>=..   (KMSAN: data pages with private
//!                                               shadow / origin pages, per page kind)
//!   wl-result mode=.. ram_mib=.. metadata_init_bytes=.. usable_bytes=.. ondemand_peak_bytes=..
//!             ondemand_end_bytes=.. ondemand_before_bytes=.. min_free_bytes=.. workload_ns=..
//!             build_ns=.. sample_ns=.. (workload_ns leaves out the sample_ns spent
//!             printing wl-sample/wl-meta lines; build_ns includes it)
//!             slowpath_checks=.. reports=.. slab_allocs=.. tracked_peak_bytes=.. invariants=ok|bad ...
//!             buddy_bad=.. slab_bad=.. cpus=.. jobs_on_cpus=.. shootdowns=.. shootdowns_shadow=..
//!             shootdown_ipis=.. shootdown_tsc=.. shootdown_serve_tsc=.. shootdown_spins=..
//!             (TLB shootdowns between the start and the end of the build: IPI
//!             rounds, those of the runtime's shadow remaps, IPIs served; TSC
//!             cycles from entering a shootdown to the last acknowledgement,
//!             summed over the shooting CPUs, and cycles the others spent
//!             serving; rounds of the shooters' wait loops)
//!   wl-oom / wl-error / wl-fail lines on failure (the suite then fails).
//! Bytes everywhere; times in ns from the TSC (see clock.rs).
//!
//! Several CPUs: with `smp_sched=on` the jobs (make, gcc, cc1, as, ld) run
//! as tasks on every CPU at once (`jobs_on_cpus=`); kmain stays on the boot
//! CPU. The page cache and the vfs share one lock (`fslock.rs`); counters
//! are atomics (`mem.rs`, `Shared` here); a unit's compiler state is its
//! own. The units' results are summed (wrapping), so `checksum=` does not
//! depend on the order in which the CPUs finish them. Under `-icount` the
//! CPUs run round-robin and the TSC counts the instructions of all of them:
//! `workload_ns` is then the build's total instruction count on every CPU.
pub mod cc;
pub mod clock;
pub mod fslock;
pub mod mem;
pub mod pagecache;
pub mod proc;
pub mod rng;
pub mod vfs;

use crate::kasan_glue::stats as stats_snapshot;
use hybrid_shadow::StatsSnapshot;
use crate::mm::{buddy, slab, PAGE_SIZE};
use mem::Kc;
use crate::{println, task};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

#[derive(Clone, Copy)]
pub struct Params {
    pub seed: u64,
    pub units: u32,
    pub jobs: u32,
    pub anon_per_page: usize,
    pub anon_base: usize,
    pub obj_per_node: usize,
    pub samples: u64,
    /// Page-cache folio order (`folio=`): default a pageblock, 0 = single pages.
    pub folio_order: usize,
    /// Sampling profiler period in µs of guest time (`prof=`), 0 = off.
    pub prof_us: u64,
    /// `profile=build` (true, the default) or `profile=light`.
    pub build: bool,
    /// Files of the source tree (`files=`; profile build, 0 in light).
    pub files: u32,
}

/// Profile build: files of the source tree per MiB of guest RAM (a kernel
/// tree's ~77k files at 1 GiB; smaller guests get a smaller tree).
pub const FILES_PER_MIB: u64 = 75;

/// Profile build: the most files the default tree has, a kernel source
/// tree's (~77k, `FILES_PER_MIB` x 1024). A kernel build looks up the same
/// tree whatever the machine's RAM: above 1 GiB the tree stays this size,
/// and the extra RAM shows as less shrinking (more of it stays cached),
/// not as more files.
pub const KERNEL_TREE_FILES: u64 = FILES_PER_MIB * 1024;

/// Set once by `run` before any job starts, read-only afterwards.
pub struct Setup {
    pub params: Params,
    pub seed: u64,
    pub nheaders: u32,
    pub node_cache: Kc,
    pub sample_every: u64,
}

/// What the jobs update, on every CPU (atomics).
pub struct Shared {
    pub next_unit: AtomicU32,
    pub units_done: AtomicU32,
    pub nodes: AtomicU64,
    pub folded: AtomicU64,
    /// Sums of the units' results (wrapping, so the order does not matter).
    pub unit_sum: AtomicU64,
    pub anon_sum: AtomicU64,
    pub errors: AtomicU64,
    pub ops: AtomicU64,
    pub next_sample: AtomicU64,
    pub t0: AtomicU64,
    pub min_free: AtomicUsize,
    pub samples: AtomicU64,
    /// TSC cycles spent in `sample()` (the benchmark's own bookkeeping,
    /// left out of `workload_ns`).
    pub sample_tsc: AtomicU64,
    pub jobs_live: AtomicU32,
}

static SETUP: spin::Once<Setup> = spin::Once::new();
static SHARED: Shared = Shared {
    next_unit: AtomicU32::new(0),
    units_done: AtomicU32::new(0),
    nodes: AtomicU64::new(0),
    folded: AtomicU64::new(0),
    unit_sum: AtomicU64::new(0),
    anon_sum: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    ops: AtomicU64::new(0),
    next_sample: AtomicU64::new(0),
    t0: AtomicU64::new(0),
    min_free: AtomicUsize::new(0),
    samples: AtomicU64::new(0),
    sample_tsc: AtomicU64::new(0),
    jobs_live: AtomicU32::new(0),
};
/// The parameters, set by `run` before anything reads them.
static PARAMS: spin::Once<Params> = spin::Once::new();

pub fn params() -> &'static Params {
    PARAMS.get().expect("workload parameters")
}

/// The workload's set-once state (after `run` set it up).
pub fn setup() -> &'static Setup {
    SETUP.get().expect("workload state")
}

/// The workload's counters.
pub fn shared() -> &'static Shared {
    &SHARED
}

/// Operations so far (0 before the workload starts).
pub fn state_ops() -> u64 {
    SHARED.ops.load(Relaxed)
}

fn parse_params(cmdline: &str, seed: u64, ram_mib: u64) -> Params {
    let mut p = Params { seed, units: 240, jobs: 4, anon_per_page: 32, anon_base: 128, obj_per_node: 20, samples: 300, folio_order: buddy::PAGEBLOCK_PAGES.trailing_zeros() as usize, prof_us: 0, build: true, files: 0 };
    let mut files = None;
    for w in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = w.split_once('=') else { continue };
        if k == "profile" {
            match v {
                "build" => p.build = true,
                "light" => p.build = false,
                _ => println!("wl-error unknown profile={v} (build, light); using build"),
            }
            continue;
        }
        let Ok(n) = v.parse::<u64>() else { continue };
        match k {
            "units" => p.units = (n as u32).max(1),
            "jobs" => p.jobs = (n as u32).clamp(1, 32),
            "anon" => p.anon_per_page = n as usize / 4,
            "anon_base" => p.anon_base = n as usize / 4,
            "samples" => p.samples = n.max(1),
            "obj" => p.obj_per_node = n as usize,
            "folio" => p.folio_order = (n as usize).min(buddy::MAX_ORDER),
            "prof" => p.prof_us = n,
            "files" => files = Some(n.min(4_000_000) as u32),
            _ => {}
        }
    }
    p.files = if p.build { files.unwrap_or((ram_mib * FILES_PER_MIB).min(KERNEL_TREE_FILES) as u32) } else { 0 };
    p
}

/// A broken invariant of the workload's own structures (`what` and the
/// number it is about). Out of line and cold on purpose: a formatted panic
/// inside a hot function gives it stack locals for the format arguments,
/// and KASAN poisons and unpoisons such a frame at every call (with such
/// asserts in `pagecache::desc`, `get`, `write_begin` and `vfs::inode`, KASAN
/// `full` took 61.6 s at 64 MiB; without them 55.7 s).
#[cold]
#[inline(never)]
pub fn broken(what: &'static str, n: usize) -> ! {
    panic!("{what} {n}")
}

pub fn fail(msg: &str) -> ! {
    println!("wl-fail {}", msg);
    guest_boot::exit(guest_boot::code::FAILURE)
}

/// Called on every counted operation (allocations, page-cache misses).
#[inline(never)]
pub fn tick() {
    // Not counted before the workload starts (its own setup allocates).
    if !SETUP.is_completed() {
        return;
    }
    let st = shared();
    st.ops.fetch_add(1, Relaxed);
    let free = buddy::free_page_count();
    if free < st.min_free.load(Relaxed) {
        st.min_free.fetch_min(free, Relaxed);
    }
    // kswapd: keep free memory above the low watermark between the
    // page-cache allocations too (slab growth, anon pages, vmalloc).
    if free < pagecache::low_watermark() {
        pagecache::balance();
    }
    if st.ops.load(Relaxed) & 63 == 0 {
        mem::note_tracked();
    }
}

/// Print a `wl-sample` line when due (on one CPU: the first to see it due).
pub fn maybe_sample() {
    let st = shared();
    let ops = st.ops.load(Relaxed);
    let next = st.next_sample.load(Relaxed);
    if ops >= next && st.next_sample.compare_exchange(next, ops + setup().sample_every, Relaxed, Relaxed).is_ok() {
        sample();
    }
}

fn sample() {
    let s0 = clock::rdtsc();
    sample_now();
    shared().sample_tsc.fetch_add(clock::rdtsc().wrapping_sub(s0), Relaxed);
}

fn sample_now() {
    let st = shared();
    st.samples.fetch_add(1, Relaxed);
    let t = clock::ns_between(st.t0.load(Relaxed), clock::rdtsc());
    let (slab_b, _, vm) = mem::tracked_now();
    let od = stats_snapshot().map(|s| s.ondemand_live_bytes()).unwrap_or(0);
    let pcs = pagecache::stats();
    let (inodes, dentries) = vfs::live();
    let cnt = mem::c();
    println!(
        "wl-sample t_ns={} ops={} free={} pagecache={} dirty={} anon={} slab={} vmalloc={} ondemand={} tracked={} units_done={} inodes={} dentries={}",
        t,
        st.ops.load(Relaxed),
        buddy::free_page_count() * PAGE_SIZE,
        pcs.nr * PAGE_SIZE,
        pcs.dirty * PAGE_SIZE,
        cnt.anon_live.load(Relaxed) * PAGE_SIZE,
        slab_b,
        vm,
        od,
        slab_b + cnt.stacks_live.load(Relaxed) + vm + mem::globals(),
        st.units_done.load(Relaxed),
        inodes,
        dentries
    );
    if let Some(c) = crate::kasan_glue::kmsan_census() {
        println!(
            "wl-meta shadow_page={} shadow_slab={} shadow_large={} shadow_stack={} shadow_free={} origin_page={} origin_slab={} origin_large={} origin_stack={} origin_free={}",
            c.shadow[1], c.shadow[2], c.shadow[3], c.shadow[4], c.shadow[0], c.origin[1], c.origin[2], c.origin[3], c.origin[4], c.origin[0]
        );
    }
}

fn job(_: usize) {
    loop {
        let u = shared().next_unit.fetch_add(1, Relaxed);
        if u >= params().units {
            break;
        }
        if params().build {
            build_unit(u);
        } else {
            cc::compile(u);
        }
        maybe_sample();
        pagecache::balance();
        task::yield_now();
    }
    mem::stack_gone();
    shared().jobs_live.fetch_sub(1, Relaxed);
}

/// Profile build: unit `u` as processes: the gcc driver (forked by make,
/// this job), which runs cc1 and then as, each a task of its own.
fn build_unit(u: u32) {
    let gcc = proc::spawn_objects(u as u64, 24);
    let cc1 = mem::spawn("cc1", cc1_task, u as usize);
    task::join(cc1);
    let as_ = mem::spawn("as", as_task, u as usize);
    task::join(as_);
    proc::exit_objects(gcc);
}

fn cc1_task(u: usize) {
    let (_, _, anon) = cc::unit_shape(params().seed, u as u32);
    // cc1 maps its libraries, then its heap grows in mappings of ~256 KiB.
    let p = proc::spawn_objects(u as u64, 36 + anon / 64);
    cc::compile(u as u32);
    proc::exit_objects(p);
    mem::stack_gone();
}

fn as_task(u: usize) {
    let p = proc::spawn_objects(u as u64, 20);
    task::yield_now();
    proc::exit_objects(p);
    mem::stack_gone();
}

/// Profile build: make reads the tree (every file looked up once).
fn populate_tree() {
    let p = params();
    for id in 0..p.files {
        vfs::stat(p.seed, vfs::KIND_TREE, id, cc::tree_file(p.seed, id));
        if id % 256 == 255 {
            maybe_sample();
        }
    }
    mem::note_tracked();
}

/// The composition of byte-tracked memory at its peak.
fn print_peak() {
    let c = mem::snapshot();
    let (peak, peak_ops) = mem::peak();
    let a = mem::slots();
    let objects: usize = peak[..a.n].iter().sum();
    let mut groups = [0usize; 5];
    for (slot, &bytes) in a.slots.iter().zip(peak.iter()).take(a.n) {
        groups[slot.group as usize] += bytes;
    }
    crate::print!(
        "wl-peak tracked={} slab={} stacks={} vmalloc={} globals={} objects={} at_ops={}",
        c.tracked_peak,
        c.tracked_peak_slab,
        c.tracked_peak_stacks,
        c.tracked_peak_vmalloc,
        mem::globals(),
        objects,
        peak_ops
    );
    for (g, name) in mem::GROUP_NAMES.iter().enumerate() {
        crate::print!(" {}={}", name, groups[g]);
    }
    for (slot, &bytes) in a.slots.iter().zip(peak.iter()).take(a.n) {
        if bytes > 0 {
            crate::print!(" {}={}", slot.name, bytes);
        }
    }
    println!();
}

fn link_task(arg: usize) {
    let sum = cc::link(params().units);
    // SAFETY: `arg` is the address of `run`'s `image_sum`, which outlives
    // this task (`run` joins it before reading the value).
    unsafe { *(arg as *mut u64) = sum };
    mem::stack_gone();
}


/// Start the sampling profiler (`prof=<µs>`) with a zeroed histogram from
/// the page allocator; `None` when it has no room.
fn profile_start() -> Option<(usize, usize)> {
    let bytes = guest_boot::profile::buffer_bytes();
    let order = bytes.div_ceil(PAGE_SIZE).next_power_of_two().trailing_zeros() as usize;
    let buf = buddy::alloc_pages(order)?;
    // SAFETY: a fresh block of `1 << order` pages, ours alone; the instrumented
    // fill marks it initialized for the sanitizer that reads it at the end.
    unsafe { core::ptr::write_bytes(buf as *mut u8, 0, PAGE_SIZE << order) };
    let mut tables = || buddy::alloc_page_zeroed().map(|p| guest_boot::paging::virt_to_phys(p as u64).expect("direct map"));
    // SAFETY: the buffer stays ours until `profile_report`; boot CPU, IDT loaded.
    if unsafe { guest_boot::profile::start(buf as *mut u32, PAGE_SIZE << order, params().prof_us, &mut tables) }.is_err() {
        println!("wl-error profiler: cannot map the local APIC");
        buddy::free_pages(buf, order);
        return None;
    }
    Some((buf, order))
}

fn profile_report((buf, order): (usize, usize)) {
    guest_boot::profile::stop();
    // SAFETY: the buffer given to `start`, sampling stopped.
    unsafe { guest_boot::profile::report(buf as *const u32) };
    // Kept: it was taken before the free-page baseline the invariants check.
    let _ = order;
}

/// The suite. True when the workload completed with every check passing.
pub fn run() -> bool {
    let info = guest_boot::boot_info();
    let p = parse_params(info.cmdline(), info.config.seed, (info.ram_bytes + (1 << 20) - 1) >> 20);
    let p = *PARAMS.call_once(|| p);
    // Before the free-page baseline: the APIC's page tables stay.
    let prof = (p.prof_us > 0).then(profile_start).flatten();
    // The runtime's mode (kasan.shadow= or kmsan.shadow=, as the kernel's sanitizer reads it).
    let mode = crate::kasan_glue::mode().name();
    let ram_mib = (info.ram_bytes + (1 << 20) - 1) >> 20;
    let (tsc_hz, tsc_src) = clock::init();

    // Before the workload.
    slab::drain_all();
    let s0: Option<StatsSnapshot> = stats_snapshot();
    let st0 = s0.unwrap_or_default();
    let free0 = buddy::free_page_count();
    let held0 = crate::kasan_glue::frames_held();
    let (_, _, objs0) = slab::usage();
    let managed = buddy::managed_pages();

    mem::init();
    pagecache::init(managed, info.ram_end(), params().folio_order, p.build);
    let nheaders = 64 + p.units / 4;
    // Profile build: the tree's files and directories (~24 x 160) besides.
    let max_inodes = 2 * p.units as usize + nheaders as usize + 1024 + if p.build { p.units as usize + p.files as usize + 8192 } else { 0 };
    vfs::init(max_inodes, p.build, p.files as usize, p.units as usize);
    if p.build {
        proc::init();
    }
    let node_cache = mem::create_cache("ast_node", 64, mem::G_COMPILER);
    let est_ops = p.units as u64 * 6000;
    let sh = shared();
    for a in [&sh.nodes, &sh.folded, &sh.unit_sum, &sh.anon_sum, &sh.errors, &sh.ops, &sh.next_sample, &sh.t0, &sh.samples, &sh.sample_tsc] {
        a.store(0, Relaxed);
    }
    for a in [&sh.next_unit, &sh.units_done, &sh.jobs_live] {
        a.store(0, Relaxed);
    }
    sh.min_free.store(free0, Relaxed);
    // From here on `tick` counts operations.
    SETUP.call_once(|| Setup { params: p, seed: p.seed, nheaders, node_cache, sample_every: (est_ops / p.samples).max(256) });
    let cpus = guest_boot::smp::cpus_online();
    println!(
        "wl-start sanitizer={} profile={} files={} mode={} ram_mib={} units={} jobs={} seed={} headers={} usable_bytes={} managed_bytes={} globals_bytes={} tsc_hz={} tsc_source={} watermark_low={} watermark_high={} runtime={} cpus={} jobs_on_cpus={}",
        crate::kasan_glue::SANITIZER,
        if p.build { "build" } else { "light" },
        p.files,
        mode,
        ram_mib,
        p.units,
        p.jobs,
        p.seed,
        nheaders,
        free0 * PAGE_SIZE,
        managed * PAGE_SIZE,
        mem::globals(),
        tsc_hz,
        tsc_src,
        pagecache::stats().low * PAGE_SIZE,
        pagecache::stats().high * PAGE_SIZE,
        if s0.is_some() { "real" } else { "stub" },
        cpus,
        if task::spread() { cpus } else { 1 }
    );

    // make -jN
    let (smp0, shadow0) = (guest_boot::smp::stats(), crate::kasan_glue::shadow_shootdowns() as u64);
    let t0 = clock::rdtsc();
    shared().t0.store(t0, Relaxed);
    sample();
    if p.build {
        populate_tree();
    }
    let mut pids = [0u32; 32];
    for pid in pids.iter_mut().take(p.jobs as usize) {
        shared().jobs_live.fetch_add(1, Relaxed);
        *pid = mem::spawn(if p.build { "make" } else { "cc1" }, job, 0);
    }
    for &pid in pids.iter().take(p.jobs as usize) {
        task::join(pid);
    }
    let t_build = clock::rdtsc();
    // Link.
    let mut image_sum = 0u64;
    let ld = mem::spawn("ld", link_task, core::ptr::addr_of_mut!(image_sum) as usize);
    task::join(ld);
    let t1 = clock::rdtsc();
    let (smp1, shadow1) = (guest_boot::smp::stats(), crate::kasan_glue::shadow_shootdowns() as u64);
    let sample_ns = clock::ns_between(0, shared().sample_tsc.load(Relaxed));
    sample();
    let workload_ns = clock::ns_between(t0, t1) - sample_ns;
    if let Some(buf) = prof {
        profile_report(buf);
    }
    let peak_before_teardown = stats_snapshot().unwrap_or_default();
    print_peak();
    let shr = vfs::shrink_stats();
    println!(
        "wl-shrinker calls={} scanned={} dentries={} inodes={} referenced={} busy={} refaults={}",
        shr.calls, shr.scanned, shr.dentries, shr.inodes, shr.referenced, shr.busy, shr.refaults
    );
    let buffer_heads = pagecache::stats().buffer_heads;

    // Exit: tear everything down.
    let pcs = pagecache::stats();
    let (pc_peak, pc_hits, pc_misses, pc_recl, pc_wb, pc_corrupt) = (pcs.peak, pcs.hits, pcs.misses, pcs.reclaimed, pcs.writebacks, pcs.corrupt);
    let (pc_folios, pc_fallbacks) = (pcs.large_folios, pcs.folio_fallbacks);
    let (ndent, lookups, dhits, extnames, ninodes) = vfs::stats();
    vfs::teardown();
    pagecache::shutdown();
    let st = shared();
    if !mem::destroy_cache(setup().node_cache) {
        println!("wl-error ast_node cache not empty");
        st.errors.fetch_add(1, Relaxed);
    }
    if !proc::destroy() {
        println!("wl-error a process cache not empty");
        st.errors.fetch_add(1, Relaxed);
    }
    slab::drain_all();
    // The workload is over: like a kernel's shrinker under pressure, hand
    // back the shadow pages promoted for hot mixed blocks (a cache).
    let shrunk = crate::kasan_glue::shrink();
    crate::println!("wl-shrink pages={shrunk}");
    let s1 = stats_snapshot().unwrap_or_default();
    let free1 = buddy::free_page_count();
    let (slab_pages1, _, objs1) = slab::usage();
    let bad_buddy = buddy::check_invariants();
    let bad_slab = slab::check_invariants();
    let cnt = mem::snapshot();
    let vm_pt_allow = if cnt.vmalloc_hi > 0 {
        (cnt.vmalloc_hi - guest_boot::paging::VMALLOC_START as usize).div_ceil(2 << 20) + 2
    } else {
        0
    };
    // Frames the runtime still holds for shadow (tables, on-demand pages
    // in blocks that changed state, KMSAN's frame pool) are not the
    // workload's: the host judges `ondemand_end_bytes` against
    // `ondemand_before_bytes` separately.
    let held_delta = crate::kasan_glue::frames_held() as i64 - held0 as i64;
    let leaked = free0 as i64 - free1 as i64 - held_delta;
    let mut problems = 0u64;
    let mut problem = |cond: bool, what: &str| {
        if !cond {
            println!("wl-error invariant: {}", what);
            problems += 1;
        }
    };
    problem(bad_buddy == 0, "buddy invariants");
    problem(bad_slab == 0, "slab invariants");
    problem(cnt.slab_allocs == cnt.slab_frees, "every workload slab object freed");
    problem(objs1 == objs0, "slab objects in use back to the level before the workload");
    problem(cnt.vmallocs == cnt.vfrees && cnt.vmalloc_live_bytes == 0, "every vmalloc area freed");
    problem(cnt.anon_live == 0, "every anonymous page freed");
    problem(cnt.stacks_live == 0, "every job stack freed");
    problem(pagecache::pages() == 0 && pagecache::stats().dirty == 0, "page cache empty");
    problem(pc_corrupt == 0, "page cache content intact");
    problem(leaked >= 0 && leaked as usize <= vm_pt_allow, "free pages back to the level before the workload (vmalloc page tables aside)");
    problem(st.units_done.load(Relaxed) == p.units, "every unit compiled");
    problem(ndent >= 1 && ninodes >= 1, "vfs populated");
    let invariants_ok = problems == 0 && st.errors.load(Relaxed) == 0;
    let runtime_real = s0.is_some();
    // The runtime counts every slab allocation (workload and kernel) when it
    // checks; in `off` (or without a runtime) the workload's own count.
    let rt_allocs = s1.slab_allocs.saturating_sub(st0.slab_allocs) as u64;
    let slab_allocs = if runtime_real && rt_allocs > 0 { rt_allocs } else { cnt.slab_allocs };

    println!(
        "wl-result sanitizer={} profile={} files={} shrunk_dentries={} shrunk_inodes={} buffer_heads={} mode={} ram_mib={} runtime={} units={} jobs={} seed={} metadata_init_bytes={} usable_bytes={} \
ondemand_peak_bytes={} ondemand_end_bytes={} ondemand_before_bytes={} min_free_bytes={} workload_ns={} build_ns={} sample_ns={} \
slowpath_checks={} slowpath_clean={} reports={} slab_allocs={} wl_slab_allocs={} tracked_peak_bytes={} \
tracked_peak_slab={} tracked_peak_stacks={} tracked_peak_vmalloc={} globals_bytes={} anon_peak_bytes={} \
pagecache_peak_bytes={} pagecache_hits={} pagecache_misses={} reclaimed_pages={} writebacks={} direct_reclaims={} \
dentries={} lookups={} dcache_hits={} external_names={} nodes={} folded={} krealloc={} vmallocs={} \
unchecked_events={} quarantine_end_bytes={} shadow_table_bytes={} shadow_table_peak_bytes={} managed_bytes={} leaked_pages={} vm_pt_allow={} \
slab_pages_end={} folio_order={} large_folios={} folio_fallbacks={} pool_steals={} checksum={:016x} invariants={} buddy_bad={} slab_bad={} samples={} tsc_hz={} tsc_source={} \
cpus={} jobs_on_cpus={} shootdowns={} shootdowns_shadow={} shootdown_ipis={} shootdown_tsc={} shootdown_serve_tsc={} shootdown_spins={}",
        crate::kasan_glue::SANITIZER,
        if p.build { "build" } else { "light" },
        p.files,
        shr.dentries,
        shr.inodes,
        buffer_heads,
        mode,
        ram_mib,
        if runtime_real { "real" } else { "stub" },
        p.units,
        p.jobs,
        p.seed,
        st0.metadata_init_bytes(),
        free0 * PAGE_SIZE,
        peak_before_teardown.ondemand_peak_bytes().max(s1.ondemand_peak_bytes()),
        s1.ondemand_live_bytes(),
        st0.ondemand_live_bytes(),
        st.min_free.load(Relaxed) * PAGE_SIZE,
        workload_ns,
        clock::ns_between(t0, t_build),
        sample_ns,
        s1.slow_path_checks.saturating_sub(st0.slow_path_checks),
        s1.slow_path_clean.saturating_sub(st0.slow_path_clean),
        s1.reports,
        slab_allocs,
        cnt.slab_allocs,
        cnt.tracked_peak,
        cnt.tracked_peak_slab,
        cnt.tracked_peak_stacks,
        cnt.tracked_peak_vmalloc,
        mem::globals(),
        cnt.anon_peak * PAGE_SIZE,
        pc_peak * PAGE_SIZE,
        pc_hits,
        pc_misses,
        pc_recl,
        pc_wb,
        cnt.direct_reclaims,
        ndent,
        lookups,
        dhits,
        extnames,
        st.nodes.load(Relaxed),
        st.folded.load(Relaxed),
        cnt.krealloc_calls,
        cnt.vmallocs,
        s1.unchecked_events,
        s1.quarantine_bytes,
        s1.shadow_table_bytes,
        s1.shadow_table_peak_bytes,
        managed * PAGE_SIZE,
        leaked,
        vm_pt_allow,
        slab_pages1,
        p.folio_order,
        pc_folios,
        pc_fallbacks,
        buddy::pool_steals(),
        hash3_sum(image_sum, st.unit_sum.load(Relaxed), st.anon_sum.load(Relaxed)),
        if invariants_ok { "ok" } else { "bad" },
        bad_buddy,
        bad_slab,
        st.samples.load(Relaxed),
        tsc_hz,
        tsc_src,
        cpus,
        if task::spread() { cpus } else { 1 },
        (smp1.page + smp1.full) - (smp0.page + smp0.full),
        shadow1 - shadow0,
        smp1.served - smp0.served,
        smp1.shoot_tsc - smp0.shoot_tsc,
        smp1.serve_tsc - smp0.serve_tsc,
        smp1.shoot_spins - smp0.shoot_spins
    );
    invariants_ok && s1.reports == 0
}

fn hash3_sum(a: u64, b: u64, c: u64) -> u64 {
    rng::hash3(a, b, c)
}
