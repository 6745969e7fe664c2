//! KMSAN differential test: the same random sequence of page, slab and
//! vmalloc allocations, frees, instrumented stores and loads, copies,
//! memsets, poisonings and checks is driven through a `full` and a
//! `hybrid` runtime. Every loaded shadow and origin, every check's verdict
//! and every report's text must match, and an oracle of initialized bytes
//! must agree with both.
//!
//! 20 cases x 5000 operations = 100k operations per run (more with
//! `PROPTEST_CASES`).

use hybrid_shadow::host::kmsan::KmsanHost;
use hybrid_shadow::kmsan::origin::{self, Origin, NO_ORIGIN};
use hybrid_shadow::Mode;
use proptest::prelude::*;
use std::collections::BTreeMap;

const OPS_PER_CASE: usize = 5000;
const RAM: usize = 4 << 20;
const VMALLOC: usize = 4 << 20;
const PAGE: usize = 4096;
const OBJ: usize = 96;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

/// What a live range is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Pages(u32),
    Object,
    Vmalloc(usize),
}

#[derive(Clone, Copy, Debug)]
struct Range {
    /// Offset from the RAM (or vmalloc) base.
    rel: usize,
    len: usize,
    kind: Kind,
}

struct Pair {
    full: KmsanHost,
    hybrid: KmsanHost,
    /// Per byte of RAM and vmalloc: initialized?
    init: Vec<bool>,
    free_pfns: Vec<usize>,
    live: Vec<Range>,
    /// Slab pages: pfn -> free object slots.
    slabs: BTreeMap<usize, Vec<usize>>,
    vm_next: usize,
    /// vmalloc page offset -> RAM offset of the frame mapped there.
    alias: BTreeMap<usize, usize>,
    stats: [usize; 4],
}

impl Pair {
    fn new() -> Self {
        let mk = |m| KmsanHost::new(m, RAM, VMALLOC, 64 << 10).unwrap();
        let (full, hybrid) = (mk(Mode::Full), mk(Mode::Hybrid));
        Pair {
            full,
            hybrid,
            init: vec![false; RAM + VMALLOC],
            free_pfns: (0..RAM / PAGE).rev().collect(),
            live: vec![],
            slabs: BTreeMap::new(),
            vm_next: 0,
            alias: BTreeMap::new(),
            stats: [0; 4],
        }
    }

    fn abs(h: &KmsanHost, rel: usize) -> usize {
        if rel >= RAM {
            h.vmalloc() + rel - RAM
        } else {
            h.ram() + rel
        }
    }

    /// Run `f` on both runtimes inside function `name`; results must match.
    fn both<R: PartialEq + std::fmt::Debug>(&mut self, name: &str, mut f: impl FnMut(&mut KmsanHost, usize) -> R, rel: usize) -> R {
        let a = self.full.call(name, |h| {
            let at = Self::abs(h, rel);
            f(h, at)
        });
        let b = self.hybrid.call(name, |h| {
            let at = Self::abs(h, rel);
            f(h, at)
        });
        assert_eq!(a, b, "full and hybrid differ in {name} at +{rel:#x}");
        a
    }

    fn set_init(&mut self, rel: usize, len: usize, v: bool) {
        for k in rel..rel + len {
            self.set_byte(k, v);
        }
    }

    fn alloc_pages(&mut self, r: &mut Rng) {
        let order = r.below(3) as u32;
        let n = 1usize << order;
        // Take an aligned run of free frames if the top of the list has one.
        let Some(&top) = self.free_pfns.last() else { return };
        let start = top & !(n - 1);
        if !(start..start + n).all(|p| self.free_pfns.contains(&p)) {
            return;
        }
        self.free_pfns.retain(|p| !(start..start + n).contains(p));
        let zeroed = r.chance(40);
        let rel = start * PAGE;
        self.both("alloc_pages_site", |h, at| h.kmsan.page_alloc(at, order, zeroed), rel).unwrap();
        self.set_init(rel, n * PAGE, zeroed);
        if order == 0 && r.chance(50) {
            self.both("new_slab", |h, at| h.kmsan.slab_page_alloc(at, 0), rel).unwrap();
            self.slabs.insert(start, (0..PAGE / OBJ).collect());
        } else {
            self.live.push(Range { rel, len: n * PAGE, kind: Kind::Pages(order) });
        }
    }

    fn free_pages(&mut self, i: usize) {
        let l = self.live.swap_remove(i);
        let Kind::Pages(order) = l.kind else { unreachable!() };
        self.both("free_pages_site", |h, at| h.kmsan.page_free(at, order), l.rel).unwrap();
        self.set_init(l.rel, l.len, false);
        self.free_pfns.extend(l.rel / PAGE..l.rel / PAGE + (1 << order));
    }

    fn slab_alloc(&mut self, r: &mut Rng) {
        let pfns: Vec<usize> = self.slabs.iter().filter(|(_, f)| !f.is_empty()).map(|(&p, _)| p).collect();
        if pfns.is_empty() {
            return;
        }
        let pfn = pfns[r.below(pfns.len())];
        let free = self.slabs.get_mut(&pfn).unwrap();
        let slot = free.swap_remove(r.below(free.len()));
        let size = 1 + r.below(OBJ);
        let zeroed = r.chance(30);
        let rel = pfn * PAGE + slot * OBJ;
        self.both("kmalloc_site", |h, at| h.kmsan.slab_alloc(at, size, zeroed), rel).unwrap();
        self.set_init(rel, size, zeroed);
        self.live.push(Range { rel, len: size, kind: Kind::Object });
    }

    fn slab_free(&mut self, i: usize, r: &mut Rng) {
        let l = self.live.swap_remove(i);
        self.both("kfree_site", |h, at| h.kmsan.slab_free(at, l.len), l.rel).unwrap();
        self.set_init(l.rel, l.len, false);
        let pfn = l.rel / PAGE;
        let free = self.slabs.get_mut(&pfn).unwrap();
        free.push((l.rel % PAGE) / OBJ);
        if free.len() == PAGE / OBJ && r.chance(50) {
            self.slabs.remove(&pfn);
            let rel = pfn * PAGE;
            self.both("discard_slab", |h, at| h.kmsan.slab_page_free(at, 0), rel).unwrap();
            self.both("free_pages_site", |h, at| h.kmsan.page_free(at, 0), rel).unwrap();
            self.set_init(rel, PAGE, false);
            self.free_pfns.push(pfn);
        }
    }

    /// vmalloc: single frames from the page allocator mapped together.
    fn vmalloc(&mut self, r: &mut Rng) {
        let pages = 1 + r.below(4);
        if self.vm_next + (pages + 1) * PAGE > VMALLOC || self.free_pfns.len() < pages {
            return;
        }
        let size = pages * PAGE - r.below(PAGE);
        let rel = RAM + self.vm_next;
        self.vm_next += (pages + 1) * PAGE;
        let mut pfns = vec![];
        for _ in 0..pages {
            let pfn = self.free_pfns.swap_remove(r.below(self.free_pfns.len()));
            self.both("vmalloc_site", |h, at| h.kmsan.page_alloc(at, 0, false), pfn * PAGE).unwrap();
            pfns.push(pfn);
        }
        self.both("vmalloc_site", |h, at| h.vmap(at, &pfns), rel);
        for (k, &pfn) in pfns.iter().enumerate() {
            self.alias.insert(rel + k * PAGE, pfn * PAGE);
            self.set_init(pfn * PAGE, PAGE, false);
        }
        self.live.push(Range { rel, len: size, kind: Kind::Vmalloc(pages) });
    }

    fn vfree(&mut self, i: usize) {
        let l = self.live.swap_remove(i);
        let Kind::Vmalloc(pages) = l.kind else { unreachable!() };
        self.both("vfree_site", |h, at| h.vunmap(at, pages), l.rel);
        for k in 0..pages {
            let pfn_rel = self.alias.remove(&(l.rel + k * PAGE)).unwrap();
            self.both("vfree_site", |h, at| h.kmsan.page_free(at, 0), pfn_rel).unwrap();
            self.set_init(pfn_rel, PAGE, false);
            self.free_pfns.push(pfn_rel / PAGE);
        }
    }

    /// The RAM offset whose metadata byte `rel` uses (vmalloc: the frame
    /// mapped there), or None where there is no metadata.
    fn canon(&self, rel: usize) -> Option<usize> {
        if rel < RAM {
            return Some(rel);
        }
        self.alias.get(&(rel & !(PAGE - 1))).map(|p| p + rel % PAGE)
    }

    fn is_init(&self, rel: usize) -> bool {
        self.canon(rel).is_none_or(|c| self.init[c])
    }

    fn set_byte(&mut self, rel: usize, v: bool) {
        if let Some(c) = self.canon(rel) {
            self.init[c] = v;
        }
    }

    /// A random sub-range of a live range.
    fn pick(&self, r: &mut Rng, max: usize) -> Option<(usize, usize)> {
        if self.live.is_empty() {
            return None;
        }
        let l = self.live[r.below(self.live.len())];
        let len = 1 + r.below(l.len.min(max));
        let off = r.below(l.len - len + 1);
        Some((l.rel + off, len))
    }

    fn store(&mut self, r: &mut Rng) {
        let Some((rel, _)) = self.pick(r, 16) else { return };
        let n = [1usize, 2, 4, 8, 16][r.below(5)];
        let n = n.min(self.init.len() - rel);
        // Stay inside the live range's pages.
        if (rel + n - 1) / PAGE != rel / PAGE && r.chance(50) {
            return;
        }
        let shadow: Vec<u8> = match r.below(4) {
            0 | 1 => vec![0; n],
            2 => vec![0xFF; n],
            _ => (0..n).map(|_| if r.chance(50) { 0xFF } else { 0 }).collect(),
        };
        let src_rel = self.pick(r, 4).map(|(s, _)| s);
        let site = format!("store_site_{}", r.below(3));
        // The value's origin: that of a load from elsewhere, chained by the store.
        let mut origins = [NO_ORIGIN; 2];
        for (k, h) in [&mut self.full, &mut self.hybrid].into_iter().enumerate() {
            h.plat.enter(&site);
            let o = match src_rel {
                Some(s) => {
                    let at = Self::abs(h, s);
                    h.load(at, 1).1
                }
                None => NO_ORIGIN,
            };
            let o = h.kmsan.chain_origin(o);
            let at = Self::abs(h, rel);
            h.store(at, &shadow, o);
            h.settle();
            h.plat.leave();
            origins[k] = o;
        }
        assert_eq!(origins[0], origins[1], "chained origins differ");
        for (k, &s) in shadow.iter().enumerate() {
            self.set_byte(rel + k, s == 0);
        }
    }

    fn load(&mut self, r: &mut Rng) {
        let Some((rel, _)) = self.pick(r, 16) else { return };
        let n = [1usize, 2, 4, 8][r.below(4)].min(self.init.len() - rel);
        let (sh, o) = self.both("load_site", |h, at| h.load(at, n), rel);
        for (k, &s) in sh.iter().enumerate() {
            let want = if self.is_init(rel + k) { 0 } else { 0xFF };
            assert_eq!(s, want, "shadow of +{:#x} disagrees with the oracle", rel + k);
        }
        if sh.iter().any(|&s| s != 0) {
            self.stats[0] += 1;
            let _ = o;
        }
    }

    fn copy(&mut self, r: &mut Rng) {
        let (Some((d, dn)), Some((s, sn))) = (self.pick(r, 600), self.pick(r, 600)) else { return };
        let n = dn.min(sn);
        self.both("memcpy_site", |h, at| h.kmsan.copy_meta(at, at.wrapping_sub(d).wrapping_add(s), n), d);
        let src: Vec<bool> = (s..s + n).map(|k| self.is_init(k)).collect();
        for (k, v) in src.into_iter().enumerate() {
            self.set_byte(d + k, v);
        }
    }

    fn set(&mut self, r: &mut Rng) {
        let Some((rel, n)) = self.pick(r, 5000) else { return };
        if r.chance(50) {
            self.both("memset_site", |h, at| h.kmsan.memset_meta(at, n), rel);
            self.set_init(rel, n, true);
        } else {
            self.both("poison_site", |h, at| h.kmsan.poison_memory(at, n), rel);
            self.set_init(rel, n, false);
        }
    }

    fn check(&mut self, r: &mut Rng) {
        let Some((rel, n)) = self.pick(r, 300) else { return };
        let ip_f = self.full.plat.func("checker");
        let ip_h = self.hybrid.plat.func("checker");
        assert_eq!(ip_f, ip_h);
        let v = self.both("check_site", |h, at| h.kmsan.check_memory(at, n, ip_f).map_err(|b| b.kind), rel);
        let want_bug = (rel..rel + n).any(|k| !self.is_init(k));
        assert_eq!(v.is_err(), want_bug, "check of +{rel:#x}/{n} disagrees with the oracle");
        let (lf, lh) = (self.full.take_log(), self.hybrid.take_log());
        let norm = |s: String, h: &KmsanHost| s.replace(&format!("{:016x}", Self::abs(h, rel)), "ADDR");
        assert_eq!(norm(lf, &self.full), norm(lh, &self.hybrid), "reports differ");
        self.stats[1] += 1;
        if want_bug {
            self.stats[2] += 1;
        }
    }

    /// Every `stride`-th uninitialized byte of RAM (by the oracle; the
    /// sample moves with `step`) has the same shadow and origin in both
    /// runtimes, whatever layout holds them (`KMSAN_DIFF_DEEP=1`: every
    /// byte after every step).
    fn compare_all(&self, step: usize, stride: usize) {
        // vmalloc addresses alias RAM frames: RAM covers them.
        for rel in (step % stride..RAM).step_by(stride) {
            if self.is_init(rel) {
                continue;
            }
            let f = self.full.kmsan.meta_of(Self::abs(&self.full, rel));
            let h = self.hybrid.kmsan.meta_of(Self::abs(&self.hybrid, rel));
            assert_eq!(f, h, "after step {step}: shadow and origin of +{rel:#x} differ (full, hybrid)");
        }
    }

    fn step(&mut self, r: &mut Rng) {
        match r.below(100) {
            0..=9 => self.alloc_pages(r),
            10..=19 => self.slab_alloc(r),
            20..=22 => self.vmalloc(r),
            23..=34 => {
                if !self.live.is_empty() {
                    let i = r.below(self.live.len());
                    match self.live[i].kind {
                        Kind::Pages(_) => self.free_pages(i),
                        Kind::Object => self.slab_free(i, r),
                        Kind::Vmalloc(_) => self.vfree(i),
                    }
                }
            }
            35..=59 => self.store(r),
            60..=79 => self.load(r),
            80..=86 => self.copy(r),
            87..=91 => self.set(r),
            _ => self.check(r),
        }
        self.stats[3] += 1;
    }
}

fn run(seed: u64) {
    let mut p = Pair::new();
    let mut r = Rng(seed | 1);
    let deep = std::env::var_os("KMSAN_DIFF_DEEP").is_some();
    for k in 0..OPS_PER_CASE {
        p.step(&mut r);
        if deep {
            p.compare_all(k, 1);
        } else if k % 1000 == 999 {
            p.compare_all(k, 61);
        }
    }
    p.compare_all(OPS_PER_CASE, 7);
    let (f, h) = (p.full.kmsan.stats(), p.hybrid.kmsan.stats());
    assert_eq!(f.reports, h.reports);
    assert!(h.ondemand_peak_pages < f.init_shadow_pages, "hybrid maps less than full");
    eprintln!(
        "kmsan-differential seed={seed:#x} ops={} uninit_loads={} checks={} bad_checks={} reports={} hybrid_peak_pages={}",
        p.stats[3], p.stats[0], p.stats[1], p.stats[2], h.reports, h.ondemand_peak_pages
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn kmsan_differential_full_vs_hybrid(seed in any::<u64>()) {
        run(seed);
    }
}

#[test]
fn kmsan_differential_fixed_seeds() {
    for seed in [1u64, 0xdead_beef, 42] {
        run(seed);
    }
    let _: Origin = origin::make(1, 0, false);
}

/// A buggy kernel drives the public API with arbitrary addresses, sizes and
/// orders: every call returns (an error where the input is refused), none
/// panics, and afterwards the runtime still tracks correctly.
#[derive(Debug, Clone)]
enum Misuse {
    PageAlloc(usize, u32, bool),
    PageFree(usize, u32),
    SlabPage(usize, u32, bool),
    Slab(usize, usize, bool, bool),
    Stack(usize, u32, bool),
    Set(usize, usize, bool),
    Copy(usize, usize, usize),
    Check(usize, usize),
    Store(usize, usize),
    Load(usize, usize),
    Chain(u32),
    Warning(u32),
}

fn misuse_strategy() -> impl Strategy<Value = Misuse> {
    // Addresses: near RAM's start/end, the vmalloc window, user space, wrap-around.
    let addr = prop_oneof![
        (0usize..RAM + PAGE).prop_map(|o| o),
        Just(usize::MAX - 3),
        (0usize..1 << 20).prop_map(|o| o | (1 << 63)),
        any::<usize>(),
    ];
    let size = prop_oneof![0usize..64, 0usize..1 << 20, Just(usize::MAX), Just(usize::MAX / 2)];
    prop_oneof![
        (addr.clone(), 0u32..24, any::<bool>()).prop_map(|(a, o, z)| Misuse::PageAlloc(a, o, z)),
        (addr.clone(), 0u32..24).prop_map(|(a, o)| Misuse::PageFree(a, o)),
        (addr.clone(), 0u32..4, any::<bool>()).prop_map(|(a, o, f)| Misuse::SlabPage(a, o, f)),
        (addr.clone(), size.clone(), any::<bool>(), any::<bool>()).prop_map(|(a, s, z, f)| Misuse::Slab(a, s, z, f)),
        (addr.clone(), 0u32..4, any::<bool>()).prop_map(|(a, o, f)| Misuse::Stack(a, o, f)),
        (addr.clone(), size.clone(), any::<bool>()).prop_map(|(a, s, p)| Misuse::Set(a, s, p)),
        (addr.clone(), addr.clone(), size.clone()).prop_map(|(d, s, n)| Misuse::Copy(d, s, n)),
        (addr.clone(), size.clone()).prop_map(|(a, s)| Misuse::Check(a, s)),
        (addr.clone(), 1usize..20000).prop_map(|(a, s)| Misuse::Store(a, s)),
        (addr, 1usize..20000).prop_map(|(a, s)| Misuse::Load(a, s)),
        any::<u32>().prop_map(Misuse::Chain),
        any::<u32>().prop_map(Misuse::Warning),
    ]
}

fn apply_misuse(h: &mut KmsanHost, m: &Misuse) {
    let rel = |h: &KmsanHost, a: usize| if a < RAM + PAGE { h.ram() + a } else { a };
    match *m {
        Misuse::PageAlloc(a, o, z) => {
            let _ = h.kmsan.page_alloc(rel(h, a), o, z);
        }
        Misuse::PageFree(a, o) => {
            let _ = h.kmsan.page_free(rel(h, a), o);
        }
        Misuse::SlabPage(a, o, free) => {
            let a = rel(h, a);
            let _ = if free { h.kmsan.slab_page_free(a, o) } else { h.kmsan.slab_page_alloc(a, o) };
        }
        Misuse::Slab(a, s, z, free) => {
            let a = rel(h, a);
            let _ = if free { h.kmsan.slab_free(a, s) } else { h.kmsan.slab_alloc(a, s, z) };
        }
        Misuse::Stack(a, o, free) => {
            let a = rel(h, a);
            let _ = if free { h.kmsan.stack_free(a, o) } else { h.kmsan.stack_alloc(a, o) };
        }
        Misuse::Set(a, s, p) => {
            let a = rel(h, a);
            if p {
                h.kmsan.poison_memory(a, s)
            } else {
                h.kmsan.unpoison_memory(a, s)
            }
        }
        Misuse::Copy(d, s, n) => {
            let (d, s) = (rel(h, d), rel(h, s));
            h.kmsan.copy_meta(d, s, n)
        }
        Misuse::Check(a, s) => {
            let _ = h.kmsan.check_memory(rel(h, a), s, 0);
        }
        Misuse::Store(a, s) => {
            let a = rel(h, a);
            h.store(a, &vec![0xFF; s], origin::make(9, 0, false));
            h.settle();
        }
        Misuse::Load(a, s) => {
            let _ = h.load(rel(h, a), s);
        }
        Misuse::Chain(o) => {
            let _ = h.kmsan.chain_origin(o);
        }
        Misuse::Warning(o) => {
            let _ = h.kmsan.warning(o, 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn kmsan_misuse_is_refused_not_fatal(ops in proptest::collection::vec(misuse_strategy(), 1..40)) {
        for mode in [Mode::Full, Mode::Hybrid] {
            let mut h = KmsanHost::new(mode, RAM, VMALLOC, 64 << 10).unwrap();
            h.plat.enter("misuse");
            for m in &ops {
                apply_misuse(&mut h, m);
            }
            h.take_log();
            // Still tracking: a fresh page at the end of RAM behaves.
            let last = h.ram() + RAM - PAGE;
            if h.kmsan.page_alloc(last, 0, false).is_ok() {
                prop_assert_eq!(h.load(last, 4).0, vec![0xFF; 4]);
                h.store(last, &[0; 4], NO_ORIGIN);
                prop_assert_eq!(h.load(last, 4).0, vec![0; 4]);
            }
        }
    }
}
