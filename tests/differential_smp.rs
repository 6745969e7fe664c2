//! The differential test on several CPUs: threads of one model kernel
//! (`hybrid_shadow::host::smp`) allocate and free slab objects, pages,
//! page-backed kmallocs, stacks and vmalloc areas at random places, so
//! their shadow shares 32 KiB blocks and hybrid's shadow pages flip
//! between shared, CONSULT and private, while the same threads check
//! accesses to each other's live objects (the owner cannot free one while
//! a neighbour checks it: a pin). At random moments a thread plants a bug
//! on its own memory: an access just past a live object, or into what it
//! has just freed (held back from reuse while it checks). Every planted
//! bug must be reported with its bug type, by the runtime's return value
//! and as one whole report on the console (reports of several threads
//! must not interleave), and nothing else may be reported.
//!
//! Each run prints
//! `smp-race: transitions=<n> planted=<n> reported=<n> unexpected=<n>`
//! (transitions: the host mapper's shadow remaps, each a block going from
//! one backing to another), in `full`, `hybrid` and hybrid with private
//! mixed blocks.
//!
//! A second test, the flip hammer (see [`hammer`]), aims the race: one
//! block flipping as fast as it can while other threads probe its free
//! and allocated pages; the random test alone rarely lands an access in
//! the microsecond a remap leaves open.
//!
//! Knobs: `SMP_RACE_OPS` (operations per thread, default 6000),
//! `SMP_HAMMER_CYCLES` (flips per flipper thread, default 2/3 of the
//! operations), `SMP_RACE_THREADS` (2..=8, default 4), `SMP_RACE_SEED`
//! (default: from the clock; printed on failure). The default run takes
//! about 10 s here (debug, two cores); a longer one, in release mode:
//! `SMP_RACE_OPS=1000000 SMP_HAMMER_CYCLES=200000 cargo test --release --test differential_smp -- --nocapture`.

use hybrid_shadow::host::smp::{Object, SmpConfig, SmpKernel, CACHE_SIZES};
use hybrid_shadow::{BugType, Config, MixedBlocks, Mode, Size};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use std::time::Duration;

/// splitmix64: seeded, the same sequence per thread for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Live objects a thread may have at once (a slot each in its registry).
const CAP: usize = 24;

/// A registry slot: `state` is generation << 32 | pins << 1 | live.
#[derive(Default)]
struct Slot {
    state: AtomicU64,
    addr: AtomicUsize,
    len: AtomicUsize,
}

impl Slot {
    /// The owner publishes a live object of `len` bytes at `addr`.
    fn publish(&self, addr: usize, len: usize) {
        self.addr.store(addr, Relaxed);
        self.len.store(len, Relaxed);
        let s = self.state.load(Relaxed);
        self.state.store((s >> 32 << 32) | 1, Release);
    }

    /// The owner withdraws it, waiting for every neighbour's check of it.
    fn withdraw(&self) {
        loop {
            let s = self.state.load(Acquire);
            assert_eq!(s & 1, 1, "withdraw of an unpublished slot");
            if s & 0xffff_fffe == 0 && self.state.compare_exchange(s, ((s >> 32) + 1) << 32, AcqRel, Relaxed).is_ok() {
                return;
            }
            std::hint::spin_loop();
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

/// What a thread owns.
enum Item {
    Obj(Object),
    Pages { addr: usize, order: u32 },
    Large { addr: usize, order: u32, size: usize },
    Vm { addr: usize, size: usize, backing: Vec<usize> },
    Stack { addr: usize },
}

impl Item {
    /// Its accessible bytes.
    fn span(&self) -> (usize, usize) {
        match self {
            Item::Obj(o) => (o.ptr, o.size),
            Item::Pages { addr, order } => (*addr, 4096 << order),
            Item::Large { addr, size, .. } | Item::Vm { addr, size, .. } => (*addr, *size),
            Item::Stack { addr } => (*addr, 4096 << STACK_ORDER),
        }
    }
}

const STACK_ORDER: u32 = 2;

/// Freed objects a thread holds back at most (to plant uses after free).
const HELD: usize = 4;

/// Fast-path probes before each planted access to freed memory.
const PROBES: usize = 64;

/// Pages (from the start of RAM) where most allocations go: 32 blocks.
const HOT_PAGES: usize = 256;

/// How a held freed object goes back to the model.
enum Back {
    Slot(usize),
    Pages(usize, u32),
    Vm(usize, usize),
}

/// Something a thread freed and holds back from reuse: every access to
/// it is a bug of type `kind`.
struct Freed {
    addr: usize,
    len: usize,
    kind: BugType,
    what: &'static str,
    back: Back,
}

impl Freed {
    fn give_back(self, k: &SmpKernel) {
        match self.back {
            Back::Slot(p) => k.unhold(p),
            Back::Pages(a, o) => k.release_pages(a, o),
            Back::Vm(a, s) => k.release_vm(a, s),
        }
    }
}

/// Shared by the threads of one run.
struct Run {
    k: SmpKernel,
    regs: Vec<Vec<Slot>>,
    /// Planted bugs not yet matched with their report: (pid, addr) -> types.
    expected: Mutex<HashMap<(u32, usize), Vec<BugType>>>,
    planted: AtomicUsize,
    /// Failures seen by the threads (a wrong verdict, a missed bug).
    failures: Mutex<Vec<String>>,
    /// Fast-path probes of freed memory, and those that passed.
    probes: AtomicUsize,
    probe_misses: AtomicUsize,
}

impl Run {
    fn fail(&self, msg: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(msg);
        }
    }

    /// Plant a bug: an access of `size` bytes at `addr` that must be
    /// reported as `kind`.
    fn plant(&self, pid: u32, addr: usize, size: usize, kind: BugType, what: &str) {
        self.expected.lock().unwrap().entry((pid, addr)).or_default().push(kind);
        self.planted.fetch_add(1, Relaxed);
        match self.k.access(addr, size, false) {
            Err(b) if b.kind == kind && b.printed => {}
            r => {
                let mut e = self.expected.lock().unwrap();
                if let Some(v) = e.get_mut(&(pid, addr)) {
                    if let Some(i) = v.iter().position(|&t| t == kind) {
                        v.swap_remove(i);
                    }
                }
                self.fail(format!("planted {what} at {addr:#x} ({kind}): got {r:?}"));
            }
        }
    }

    /// Plant an access into freed `f`: first [`PROBES`] tries of the
    /// fast path alone (none may pass: that would be a missed report; no
    /// report is printed for them), then the access, which must report.
    fn plant_in(&self, pid: u32, f: &Freed, rng: &mut Rng) {
        let off = rng.below(f.len);
        let size = 1 + rng.below(8.min(f.len - off));
        let at = f.addr + off;
        for _ in 0..PROBES {
            if self.k.kasan.fast_ok(at, Size(size)) {
                self.fail(format!("{}: the fast path passed an access of {size} at {at:#x}", f.what));
                self.probe_misses.fetch_add(1, Relaxed);
            }
        }
        self.probes.fetch_add(PROBES, Relaxed);
        self.plant(pid, at, size, f.kind, f.what);
    }

    /// A check that must pass.
    fn clean(&self, addr: usize, size: usize, write: bool, what: &str) {
        if let Err(b) = self.k.access(addr, size, write) {
            self.fail(format!("false report on {what}: access of {size} at {addr:#x}: {b:?}"));
        }
    }
}

/// One thread: `ops` random operations.
fn worker(run: &Run, me: usize, seed: u64, ops: usize) {
    let k = &run.k;
    let pid = 100 + me as u32;
    k.plat.own_task(&format!("smp{me}"), pid);
    k.plat.enter(&format!("smp_worker_{me}"));
    let mut rng = Rng(seed ^ (me as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
    let ram_pages = k.kasan.layout().ram_pages();
    let vm_pages = k.kasan.layout().vmalloc.len() / 4096;
    let reg = &run.regs[me];
    let mut items: Vec<Option<Item>> = (0..CAP).map(|_| None).collect();
    let mut held: Vec<Freed> = Vec::new();
    for _ in 0..ops {
        let op = rng.below(100);
        let slot = rng.below(CAP);
        match op {
            // allocate into a free slot
            0..=24 if items[slot].is_none() => {
                // most pages from a few hot blocks: more of them mixed
                let hint = if rng.below(4) == 0 { rng.below(ram_pages) } else { rng.below(HOT_PAGES) };
                let item = match rng.below(10) {
                    0..=4 => {
                        let c = rng.below(CACHE_SIZES.len());
                        let size = 1 + rng.below(k.cache_size(c) - 1);
                        k.cache_alloc(c, size, hint).map(Item::Obj)
                    }
                    5 | 6 => {
                        let order = rng.below(2) as u32;
                        k.alloc_pages(order, hint).map(|addr| Item::Pages { addr, order })
                    }
                    7 => {
                        let size = (4097 + rng.below(8190)) | 1; // never a page multiple: a redzone after it
                        k.kmalloc_large(size, hint).map(|(addr, order)| Item::Large { addr, order, size })
                    }
                    8 => {
                        let size = 1 + rng.below(3 * 4096);
                        k.vmalloc(size, rng.below(vm_pages)).map(|(addr, backing)| Item::Vm { addr, size, backing })
                    }
                    _ => k.stack_alloc(STACK_ORDER, hint).map(|addr| Item::Stack { addr }),
                };
                if let Some(item) = item {
                    let (a, l) = item.span();
                    reg[slot].publish(a, l);
                    items[slot] = Some(item);
                }
            }
            // free it (sometimes holding it back, freed, to plant uses after the free)
            25..=44 if items[slot].is_some() => {
                reg[slot].withdraw();
                let item = items[slot].take().unwrap();
                let hold = rng.below(6) == 0;
                let (a, l) = item.span();
                let freed = match item {
                    Item::Obj(o) => {
                        k.cache_free(o, hold).expect("free of a live object");
                        Freed { addr: a, len: l, kind: BugType::SlabUseAfterFree, what: "slab use-after-free", back: Back::Slot(o.ptr) }
                    }
                    Item::Pages { addr, order } => {
                        k.free_pages_held(addr, order).expect("free of live pages");
                        Freed { addr: a, len: l, kind: BugType::UseAfterFree, what: "page use-after-free", back: Back::Pages(addr, order) }
                    }
                    Item::Large { addr, order, .. } => {
                        k.kfree_large(addr, order, true).expect("kfree of a live kmalloc");
                        Freed { addr: a, len: l, kind: BugType::UseAfterFree, what: "kmalloc_large use-after-free", back: Back::Pages(addr, order) }
                    }
                    Item::Vm { addr, size, backing } => {
                        k.vfree(addr, size, backing, true);
                        Freed { addr: a, len: l, kind: BugType::VmallocOutOfBounds, what: "vmalloc use-after-free", back: Back::Vm(addr, size) }
                    }
                    Item::Stack { addr } => {
                        k.stack_free(addr, STACK_ORDER).expect("free of a live stack");
                        continue;
                    }
                };
                if hold {
                    run.plant_in(pid, &freed, &mut rng);
                    held.push(freed);
                    if held.len() > HELD {
                        held.remove(0).give_back(k);
                    }
                } else {
                    freed.give_back(k);
                }
            }
            // another use of something it freed and holds back
            45..=54 if !held.is_empty() => {
                let i = rng.below(held.len());
                run.plant_in(pid, &held[i], &mut rng);
                if rng.below(8) == 0 {
                    held.swap_remove(i).give_back(k);
                }
            }
            // check a neighbour's live object
            55..=79 => {
                let other = (me + 1 + rng.below(run.regs.len() - 1)) % run.regs.len();
                let s = &run.regs[other][slot];
                if let Some((a, l)) = s.pin() {
                    let off = rng.below(l);
                    let size = 1 + rng.below(16.min(l - off));
                    run.clean(a + off, size, rng.below(2) == 0, "a neighbour's live object");
                    s.unpin();
                }
            }
            // check its own object, or plant an access just past it
            80..=99 => {
                let Some(item) = &items[slot] else { continue };
                let (a, l) = item.span();
                if op < 95 {
                    let off = rng.below(l);
                    run.clean(a + off, 1 + rng.below(16.min(l - off)), true, "its own live object");
                    continue;
                }
                let kind = match item {
                    Item::Obj(_) => BugType::SlabOutOfBounds,
                    // A kmalloc ending in the pages' last granule has no
                    // redzone granule: the next page's shadow names the bug.
                    Item::Large { order, .. } if l.div_ceil(8) * 8 == 4096 << order => continue,
                    Item::Large { .. } => BugType::SlabOutOfBounds,
                    Item::Vm { .. } => BugType::VmallocOutOfBounds,
                    Item::Pages { .. } | Item::Stack { .. } => continue,
                };
                run.plant(pid, a + l, 1, kind, "out-of-bounds");
            }
            _ => {}
        }
    }
    for f in held {
        f.give_back(k);
    }
    for (slot, item) in items.iter_mut().enumerate() {
        let Some(item) = item.take() else { continue };
        reg[slot].withdraw();
        match item {
            Item::Obj(o) => k.cache_free(o, false).expect("free"),
            Item::Pages { addr, order } => k.free_pages(addr, order).expect("free"),
            Item::Large { addr, order, .. } => k.kfree_large(addr, order, false).expect("free"),
            Item::Vm { addr, size, backing } => k.vfree(addr, size, backing, false),
            Item::Stack { addr } => k.stack_free(addr, STACK_ORDER).expect("free"),
        }
    }
    k.plat.leave();
}

const RULE: &str = "==================================================================";

/// Reads the console as it fills: whole reports, each matched with a
/// planted bug.
#[derive(Default)]
struct Console {
    pending: String,
    reported: usize,
    unexpected: usize,
    notes: Vec<String>,
}

impl Console {
    fn feed(&mut self, run: &Run, text: &str) {
        self.pending.push_str(text);
        let pending = std::mem::take(&mut self.pending);
        // complete reports: RULE \n body \n RULE \n, read with a cursor
        // (the text is cut once at the end: a big chunk stays linear)
        let mut at = 0;
        while let Some(start) = pending[at..].find(RULE).map(|s| at + s) {
            let body_at = start + RULE.len() + 1;
            let Some(end) = pending.get(body_at..).and_then(|s| s.find(RULE)).map(|e| body_at + e) else { break };
            if start != at {
                self.note(format!("text outside a report: {:?}", &pending[at..start]));
            }
            self.report(run, &pending[start..end + RULE.len()]);
            at = (end + RULE.len() + 1).min(pending.len());
        }
        self.pending = pending[at..].to_string();
    }

    fn note(&mut self, s: String) {
        self.unexpected += 1;
        if self.notes.len() < 10 {
            self.notes.push(s);
        }
    }

    fn report(&mut self, run: &Run, r: &str) {
        let titles: Vec<&str> = r.lines().filter(|l| l.starts_with("BUG: KASAN: ")).collect();
        let access: Vec<&str> = r.lines().filter(|l| l.contains(" at addr ") && l.contains(" by task ")).collect();
        if titles.len() != 1 || access.len() != 1 || r.matches(RULE).count() != 2 {
            return self.note(format!("malformed or interleaved report:\n{r}"));
        }
        let kind = titles[0]["BUG: KASAN: ".len()..].split(' ').next().and_then(BugType::from_name);
        let addr = access[0].split(" at addr ").nth(1).and_then(|s| s.split(' ').next()).and_then(|h| usize::from_str_radix(h, 16).ok());
        let pid = access[0].rsplit('/').next().and_then(|p| p.trim().parse::<u32>().ok());
        let (Some(kind), Some(addr), Some(pid)) = (kind, addr, pid) else {
            return self.note(format!("unparsed report:\n{r}"));
        };
        let mut e = run.expected.lock().unwrap();
        let hit = e.get_mut(&(pid, addr)).and_then(|v| v.iter().position(|&t| t == kind).map(|i| v.swap_remove(i)));
        drop(e);
        match hit {
            Some(_) => self.reported += 1,
            None => self.note(format!("report of no planted bug:\n{r}")),
        }
    }
}

fn race(name: &str, mode: Mode, mixed: MixedBlocks) {
    let seed = std::env::var("SMP_RACE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let threads = env_usize("SMP_RACE_THREADS", 4).clamp(2, 8);
    let ops = env_usize("SMP_RACE_OPS", 6000);
    let kasan = Config { mode, multi_shot: true, mixed, ..Config::default() };
    let k = SmpKernel::new(SmpConfig { ram: 4 << 20, vmalloc: 1 << 20, kasan }).expect("model kernel");
    let run = Run {
        k,
        regs: (0..threads).map(|_| (0..CAP).map(|_| Slot::default()).collect()).collect(),
        expected: Mutex::new(HashMap::new()),
        planted: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        probes: AtomicUsize::new(0),
        probe_misses: AtomicUsize::new(0),
    };
    let remaps0 = run.k.shadow_remaps();
    let mut console = Console::default();
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|i| {
            let run = &run;
            s.spawn(move || worker(run, i, seed, ops))
        }).collect();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            console.feed(&run, &run.k.plat.take_log());
        }
        for w in workers {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    console.feed(&run, &run.k.plat.take_log());
    let transitions = run.k.shadow_remaps() - remaps0;
    let planted = run.planted.load(Relaxed);
    let stats = run.k.kasan.stats();
    println!(
        "smp-race: transitions={transitions} planted={planted} reported={} unexpected={} \
         ({name}: threads={threads} ops/thread={ops} seed={seed} {:.1}s; slow-path checks {}, reports {}, \
         fast-path probes of freed memory {} of which passed {})",
        console.reported,
        console.unexpected,
        t0.elapsed().as_secs_f64(),
        stats.slow_path_checks,
        stats.reports,
        run.probes.load(Relaxed),
        run.probe_misses.load(Relaxed),
    );
    let failures = run.failures.lock().unwrap();
    let missing: Vec<_> = run.expected.lock().unwrap().iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k:x?}: {v:?}")).take(10).collect();
    assert!(
        failures.is_empty() && console.unexpected == 0 && console.reported == planted && missing.is_empty(),
        "{name} (SMP_RACE_SEED={seed}): {} failures {:#?}\nconsole: {} unexpected {:#?}\nplanted {planted}, reported {}; \
         planted bugs with no report: {missing:#?}",
        failures.len(),
        *failures,
        console.unexpected,
        console.notes,
        console.reported,
    );
    if mode == Mode::Hybrid {
        assert!(transitions > 100, "{name}: the blocks flipped ({transitions} transitions)");
    }
}

#[test]
fn smp_race_full() {
    race("full", Mode::Full, MixedBlocks::Consult);
}

#[test]
fn smp_race_hybrid() {
    race("hybrid", Mode::Hybrid, MixedBlocks::Consult);
}

#[test]
fn smp_race_hybrid_private_mixed() {
    race("hybrid kasan.mixed=private", Mode::Hybrid, MixedBlocks::Private);
}

/// The flip hammer: a targeted race. Each of `SMP_RACE_THREADS / 2`
/// flipper threads owns one 32 KiB block of three allocated pages, four
/// free ones and one it cycles through alloc, kernel stack or page-backed
/// kmalloc (tracked: the block's shadow goes private), their free (back
/// to CONSULT) and free, and one 32 KiB block of vmalloc space where a
/// one-page area comes and goes (private, then the shared 0xF8 page); as
/// many checker threads meanwhile probe every block: the fast path must
/// never pass an access to a free page or to vmalloc space with no area
/// (a missed report), an access
/// to an allocated page must pass (no false report), and every
/// `REPORT_EVERY`-th probe of a free page is a planted bug checked in full
/// (reported as use-after-free, one whole report).
fn hammer(name: &str, mode: Mode, mixed: MixedBlocks) {
    const REPORT_EVERY: usize = 2048;
    let threads = env_usize("SMP_RACE_THREADS", 4).clamp(2, 8);
    let flippers = threads / 2;
    let cycles = env_usize("SMP_HAMMER_CYCLES", env_usize("SMP_RACE_OPS", 6000) * 2 / 3);
    let kasan = Config { mode, multi_shot: true, mixed, ..Config::default() };
    let k = SmpKernel::new(SmpConfig { ram: 4 << 20, vmalloc: 1 << 20, kasan }).expect("model kernel");
    let run = Run {
        k,
        regs: Vec::new(),
        expected: Mutex::new(HashMap::new()),
        planted: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        probes: AtomicUsize::new(0),
        probe_misses: AtomicUsize::new(0),
    };
    let k = &run.k;
    // Block b (pages 8b+8 .. 8b+16, clear of the caches' pages): pages 1-3
    // allocated, 4-7 free, page 0 the flipper's.
    let block = |b: usize| k.kasan.layout().direct_map.start + (8 * b + 64) * 4096;
    let vm_block = |b: usize| k.kasan.layout().vmalloc.start + 8 * b * 4096;
    for b in 0..flippers {
        for p in 1..4 {
            assert_eq!(k.alloc_pages(0, (block(b) - block(0)) / 4096 + 64 + p), Some(block(b) + p * 4096));
        }
    }
    let remaps0 = k.shadow_remaps();
    let stop = AtomicBool::new(false);
    let mut console = Console::default();
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for f in 0..flippers {
            let (run, k) = (&run, k);
            workers.push(s.spawn(move || {
                k.plat.own_task(&format!("flip{f}"), 200 + f as u32);
                let page = block(f);
                let pfn = (page - block(0)) / 4096 + 64;
                for i in 0..cycles {
                    assert_eq!(k.alloc_pages(0, pfn), Some(page));
                    if i % 2 == 0 {
                        k.kasan.stack_alloc(page, 0).expect("stack_alloc");
                        k.kasan.stack_free(page, 0).expect("stack_free");
                    } else {
                        k.kasan.kmalloc_large(page, 0, Size(100)).expect("kmalloc_large");
                        k.kasan.kfree_large(page, 0, hybrid_shadow::Ip(0)).expect("kfree_large");
                    }
                    k.free_pages(page, 0).expect("free");
                    if mixed == MixedBlocks::Adaptive && f == 0 {
                        // the shrinker gives promoted blocks back: they heat
                        // up and are promoted again
                        k.kasan.shrink();
                    }
                    // and an area of vmalloc block f comes and goes
                    let (addr, backing) = k.vmalloc(4096, 8 * f).expect("vmalloc");
                    assert_eq!(addr, vm_block(f));
                    k.vfree(addr, 4096, backing, false);
                }
                let _ = run;
            }));
        }
        let stop = &stop;
        let checkers: Vec<_> = (0..threads - flippers)
            .map(|c| {
                let run = &run;
                s.spawn(move || {
                    let pid = 300 + c as u32;
                    k.plat.own_task(&format!("probe{c}"), pid);
                    k.plat.enter(&format!("smp_probe_{c}"));
                    let mut rng = Rng(c as u64 + 1);
                    let mut n = 0usize;
                    while !stop.load(Relaxed) {
                        let b = block(rng.below(flippers));
                        let free = b + (4 + rng.below(4)) * 4096 + rng.below(4096);
                        let used = b + (1 + rng.below(3)) * 4096 + rng.below(4096 - 8);
                        if k.kasan.fast_ok(free, Size(1)) {
                            run.probe_misses.fetch_add(1, Relaxed);
                            run.fail(format!("the fast path passed an access to free page {free:#x}"));
                        }
                        // vmalloc space of the block with no area (pages 2-7)
                        let nowhere = vm_block(rng.below(flippers)) + (2 + rng.below(6)) * 4096 + rng.below(4096);
                        if k.kasan.fast_ok(nowhere, Size(1)) {
                            run.probe_misses.fetch_add(1, Relaxed);
                            run.fail(format!("the fast path passed an access to vmalloc space with no area {nowhere:#x}"));
                        }
                        run.clean(used, 8, false, "an allocated page of a flipping block");
                        n += 1;
                        if n.is_multiple_of(REPORT_EVERY) {
                            run.plant(pid, free, 1, BugType::UseAfterFree, "use of a free page of a flipping block");
                        }
                    }
                    run.probes.fetch_add(n, Relaxed);
                    k.plat.leave();
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            console.feed(&run, &k.plat.take_log());
        }
        stop.store(true, Relaxed);
        for w in workers.into_iter().chain(checkers) {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    console.feed(&run, &k.plat.take_log());
    let transitions = k.shadow_remaps() - remaps0;
    let planted = run.planted.load(Relaxed);
    println!(
        "smp-race: transitions={transitions} planted={planted} reported={} unexpected={} \
         ({name}: flip hammer, {flippers} flippers x {cycles} cycles, {} checkers, {:.1}s; \
         fast-path probes of free pages {} of which passed {}; promotions {})",
        console.reported,
        console.unexpected,
        threads - flippers,
        t0.elapsed().as_secs_f64(),
        run.probes.load(Relaxed),
        run.probe_misses.load(Relaxed),
        k.kasan.stats().promotions,
    );
    let failures = run.failures.lock().unwrap();
    assert!(
        failures.is_empty() && console.unexpected == 0 && console.reported == planted,
        "{name} flip hammer: {} failures {:#?}\nconsole: {} unexpected {:#?}\nplanted {planted}, reported {}",
        failures.len(),
        *failures,
        console.unexpected,
        console.notes,
        console.reported,
    );
    if mode == Mode::Hybrid {
        assert!(transitions >= 2 * flippers * cycles, "{name}: every cycle flipped its block ({transitions} transitions)");
    }
}

#[test]
fn smp_flip_hammer_full() {
    hammer("full", Mode::Full, MixedBlocks::Consult);
}

#[test]
fn smp_flip_hammer_hybrid() {
    hammer("hybrid", Mode::Hybrid, MixedBlocks::Consult);
}

/// `kasan.mixed=adaptive`: the checkers' slow-path checks heat the mixed
/// blocks, the next hook promotes them to a private page, the shrinker
/// (called by a flipper every cycle) gives them back. A promotion
/// (`promote_pending` -> `sync_block` in src/backing/kasan.rs) used to map
/// the private page zero-filled and write the free pages' 0xFF after it
/// (29,413 of 7.9M probes passed, 15 planted use-after-free unreported
/// with `SMP_HAMMER_CYCLES=20000`); it now maps it holding the shared
/// page's fill first.
#[test]
fn smp_flip_hammer_hybrid_adaptive() {
    hammer("hybrid kasan.mixed=adaptive", Mode::Hybrid, MixedBlocks::Adaptive);
}

/// Two CPUs free the same pages at once (a double free racing with
/// itself): exactly one free may succeed, the other is reported as a
/// double free, in every round.
#[test]
fn smp_double_free_race() {
    let rounds = env_usize("SMP_RACE_OPS", 6000) / 3;
    for mode in [Mode::Full, Mode::Hybrid] {
        let kasan = Config { mode, multi_shot: true, ..Config::default() };
        let k = SmpKernel::new(SmpConfig { ram: 4 << 20, vmalloc: 1 << 20, kasan }).expect("model kernel");
        // A spinning start line (a futex wake would start the two frees
        // tens of microseconds apart): `arrived` counts the threads at it.
        let arrived = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let page = k.alloc_pages(0, 64).expect("a page");
        let (ok, double) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..2usize {
                let (k, arrived, ok, double, failed) = (&k, &arrived, &ok, &double, &failed);
                s.spawn(move || {
                    // a thread that fails releases the other from the start line
                    struct Fail<'a>(&'a AtomicBool);
                    impl Drop for Fail<'_> {
                        fn drop(&mut self) {
                            if std::thread::panicking() {
                                self.0.store(true, Relaxed);
                            }
                        }
                    }
                    let _fail = Fail(failed);
                    k.plat.own_task(&format!("free{t}"), 400 + t as u32);
                    let wait_for = |n: usize| {
                        arrived.fetch_add(1, AcqRel);
                        let mut spins = 0u32;
                        while arrived.load(Acquire) < n {
                            assert!(!failed.load(Relaxed), "the other thread failed");
                            // spin a while, then let the other thread run
                            // (two cores, maybe busy with other work)
                            spins += 1;
                            if spins.is_multiple_of(1024) {
                                std::thread::yield_now();
                            }
                            std::hint::spin_loop();
                        }
                    };
                    for r in 0..rounds {
                        wait_for(6 * r + 2);
                        match k.free_pages_held(page, 0) {
                            Ok(()) => ok.fetch_add(1, Relaxed),
                            Err(b) if b.kind == BugType::DoubleFree => double.fetch_add(1, Relaxed),
                            Err(b) => panic!("{mode:?}: {b:?}"),
                        };
                        wait_for(6 * r + 4);
                        if t == 0 {
                            k.kasan.page_alloc(page, 0).expect("the page again");
                        }
                        wait_for(6 * r + 6);
                    }
                });
            }
        });
        let log = k.plat.take_log();
        let (ok, double) = (ok.into_inner(), double.into_inner());
        assert_eq!((ok, double), (rounds, rounds), "{mode:?}: one free of two succeeds each round");
        assert_eq!(log.matches("BUG: KASAN: double-free").count(), rounds, "{mode:?}");
    }
}
