//! Differential property test: the same random sequence of allocations,
//! frees and accesses is driven through a `full` and a `hybrid` model
//! kernel. Every verdict and bug type must match, and an oracle of valid
//! byte ranges must agree with both: an access passes exactly when every
//! byte of it lies in a live allocation's valid bytes.
//!
//! Each case picks the hybrid scheme for mixed blocks (CONSULT page, a
//! private page, or adaptive promotion) at random.
//!
//! 20 cases x 5000 operations = 100k operations per run (more with
//! `PROPTEST_CASES`).

use hybrid_shadow::host::sim::{SimConfig, SimKernel, KMALLOC_MAX_CACHE};
use hybrid_shadow::{BugType, CacheId, MixedBlocks, Mode};
use proptest::prelude::*;
use std::collections::BTreeMap;

const OPS_PER_CASE: usize = 5000;

/// What a live handle is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Kmalloc,
    Cache,
    Pages(u32),
    Stack,
    Vmalloc,
}

#[derive(Clone, Copy, Debug)]
struct Live {
    /// Offset of the start from the direct-map (or vmalloc) base.
    rel: usize,
    /// Valid bytes.
    size: usize,
    kind: Kind,
    vm: bool,
}

/// Both kernels plus the oracle.
struct Pair {
    full: SimKernel,
    hybrid: SimKernel,
    cache: (CacheId, CacheId),
    live: Vec<Live>,
    freed: Vec<Live>,
    /// Valid byte ranges (absolute in `full`'s space): start -> end.
    valid: BTreeMap<usize, usize>,
    checks: usize,
    bugs: usize,
}

impl Pair {
    fn new(mixed: MixedBlocks) -> Self {
        let mut full = SimKernel::new(SimConfig::small(Mode::Full)).unwrap();
        let mut hcfg = SimConfig::small(Mode::Hybrid);
        hcfg.kasan.mixed = mixed;
        let mut hybrid = SimKernel::new(hcfg).unwrap();
        for k in [&mut full, &mut hybrid] {
            k.plat.enter("differential");
        }
        let cf = full.kmem_cache_create("dentry", 192).unwrap();
        let ch = hybrid.kmem_cache_create("dentry", 192).unwrap();
        Pair { full, hybrid, cache: (cf, ch), live: vec![], freed: vec![], valid: BTreeMap::new(), checks: 0, bugs: 0 }
    }

    fn base(k: &SimKernel, vm: bool) -> usize {
        if vm {
            k.kasan.layout().vmalloc.start
        } else {
            k.kasan.layout().direct_map.start
        }
    }

    /// Record a new allocation made in both kernels at `a` (full) and `b` (hybrid).
    fn added(&mut self, a: Option<usize>, b: Option<usize>, size: usize, kind: Kind, vm: bool) {
        let (fb, hb) = (Self::base(&self.full, vm), Self::base(&self.hybrid, vm));
        assert_eq!(a.map(|a| a - fb), b.map(|b| b - hb), "both kernels allocate alike");
        if let Some(a) = a {
            let l = Live { rel: a - fb, size, kind, vm };
            self.valid.insert(a, a + size);
            self.freed.retain(|f| f.vm != vm || f.rel + f.size <= l.rel || l.rel + size <= f.rel);
            if vm {
                for &p in self.full.vmalloc_pages(a).unwrap() {
                    self.valid.insert(p, p + 4096);
                }
            }
            self.live.push(l);
        }
    }

    fn abs_full(&self, l: &Live) -> usize {
        Self::base(&self.full, l.vm) + l.rel
    }

    fn abs_hybrid(&self, l: &Live) -> usize {
        Self::base(&self.hybrid, l.vm) + l.rel
    }

    fn expect_ok(&self, addr: usize, size: usize) -> bool {
        // every byte in some valid range (ranges never overlap)
        let mut at = addr;
        let end = match addr.checked_add(size) {
            Some(e) => e,
            None => return false,
        };
        while at < end {
            match self.valid.range(..=at).next_back() {
                Some((_, &e)) if e > at => at = e,
                _ => return false,
            }
        }
        true
    }

    fn same<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        f: Result<T, hybrid_shadow::Bug>,
        h: Result<T, hybrid_shadow::Bug>,
    ) -> Option<BugType> {
        let (fk, hk) = (f.as_ref().err().map(|b| b.kind), h.as_ref().err().map(|b| b.kind));
        assert_eq!(fk, hk, "{what}: full and hybrid disagree");
        if fk.is_some() {
            self.bugs += 1;
        }
        fk
    }

    fn access(&mut self, target: Option<Live>, off: isize, size: usize, write: bool) {
        let Some(t) = target else { return };
        let fa = self.abs_full(&t).wrapping_add_signed(off);
        let ha = self.abs_hybrid(&t).wrapping_add_signed(off);
        let (f, h) = if write {
            (self.full.write(fa, size), self.hybrid.write(ha, size))
        } else {
            (self.full.read(fa, size), self.hybrid.read(ha, size))
        };
        self.checks += 1;
        let want_ok = self.expect_ok(fa, size);
        let got = self.same(&format!("access {t:?} off {off} size {size}"), f, h);
        if got.is_none() != want_ok {
            let sh: Vec<String> = (-4..8).map(|g: isize| {
                let a = (fa & !7).wrapping_add_signed(g * 8);
                format!("{:02x}", self.full.kasan.effective_shadow(a).unwrap_or(0xee))
            }).collect();
            let near: Vec<(usize, usize)> = self.valid.range(fa.saturating_sub(8192)..fa + 8192).map(|(a, b)| (a - fa, b - fa)).collect();
            panic!("oracle: access {t:?} off {off} size {size} got {got:?}; shadow {sh:?}; valid ranges near (rel to access) {near:?}");
        }
    }

    fn free_live(&mut self, i: usize) {
        if self.live.is_empty() {
            return;
        }
        let l = self.live.swap_remove(i % self.live.len());
        let (fa, ha) = (self.abs_full(&l), self.abs_hybrid(&l));
        self.valid.remove(&fa);
        if l.vm {
            for &p in self.full.vmalloc_pages(fa).unwrap() {
                self.valid.remove(&p);
            }
        }
        let (f, h) = match l.kind {
            Kind::Kmalloc => (self.full.kfree(fa), self.hybrid.kfree(ha)),
            Kind::Cache => (self.full.cache_free(self.cache.0, fa), self.hybrid.cache_free(self.cache.1, ha)),
            Kind::Pages(o) => (self.full.free_pages(fa, o), self.hybrid.free_pages(ha, o)),
            Kind::Stack => (self.full.stack_free(fa), self.hybrid.stack_free(ha)),
            Kind::Vmalloc => {
                self.full.vfree(fa);
                self.hybrid.vfree(ha);
                (Ok(()), Ok(()))
            }
        };
        assert_eq!(self.same("free of a live allocation", f, h), None);
        if matches!(l.kind, Kind::Kmalloc | Kind::Cache) {
            self.freed.push(l);
        }
    }

    fn bad_free(&mut self, i: usize, interior: bool) {
        let pool = if interior { &self.live } else { &self.freed };
        if pool.is_empty() {
            return;
        }
        let l = pool[i % pool.len()];
        if !matches!(l.kind, Kind::Kmalloc) {
            return;
        }
        let d = if interior { 1 + (i % 7) } else { 0 };
        let (fa, ha) = (self.abs_full(&l) + d, self.abs_hybrid(&l) + d);
        if !interior && self.live.iter().any(|x| x.vm == l.vm && x.rel == l.rel) {
            return;
        }
        let got = {
            let (f, h) = (self.full.kfree(fa), self.hybrid.kfree(ha));
            self.same("bad free", f, h)
        };
        assert!(
            matches!(got, Some(BugType::DoubleFree | BugType::InvalidFree)),
            "kfree of {} {l:?}: {got:?}",
            if interior { "an interior pointer" } else { "a freed object" }
        );
    }

    fn step(&mut self, op: u8, a: u16, b: u16, c: u8) {
        let pick = |v: &Vec<Live>, i: u16| (!v.is_empty()).then(|| v[i as usize % v.len()]);
        match op % 16 {
            0..=2 => {
                // skewed small sizes, sometimes large
                let size = match c % 8 {
                    0 => KMALLOC_MAX_CACHE + 1 + a as usize % 20000,
                    1..=3 => 1 + a as usize % 64,
                    4..=5 => 1 + a as usize % 512,
                    _ => 1 + a as usize % 4096,
                };
                let (f, h) = (self.full.kmalloc(size), self.hybrid.kmalloc(size));
                self.added(f, h, size, Kind::Kmalloc, false);
            }
            3 => {
                let (f, h) = (self.full.cache_alloc(self.cache.0, 192), self.hybrid.cache_alloc(self.cache.1, 192));
                self.added(f, h, 192, Kind::Cache, false);
            }
            4 => {
                let o = (a % 4) as u32;
                let (f, h) = (self.full.alloc_pages(o), self.hybrid.alloc_pages(o));
                self.added(f, h, 4096 << o, Kind::Pages(o), false);
            }
            5 if c.is_multiple_of(4) => {
                let (f, h) = (self.full.stack_alloc(), self.hybrid.stack_alloc());
                self.added(f, h, 16384, Kind::Stack, false);
            }
            5 => {
                let size = 1 + a as usize % 20000;
                let (f, h) = (self.full.vmalloc(size), self.hybrid.vmalloc(size));
                self.added(f, h, size, Kind::Vmalloc, true);
            }
            6..=8 => self.free_live(a as usize),
            9..=12 => {
                let t = pick(&self.live, a);
                let size = [1, 2, 4, 8, 16, 3, 24, 64][c as usize % 8];
                let span = t.map(|t| t.size as isize).unwrap_or(0);
                let off = (b as isize % (span + 48)) - 16;
                self.access(t, off, size, c & 0x80 != 0);
            }
            13 => {
                let t = pick(&self.freed, a);
                self.access(t, (b % 64) as isize, 1 + (c % 8) as usize, false);
            }
            14 => self.bad_free(a as usize, c.is_multiple_of(2)),
            _ => {
                if c.is_multiple_of(16) {
                    self.full.drain_quarantine();
                    self.hybrid.drain_quarantine();
                } else if let Some(t) = pick(&self.live, a) {
                    if t.kind == Kind::Kmalloc && t.size <= KMALLOC_MAX_CACHE {
                        let (fa, ha) = (self.abs_full(&t), self.abs_hybrid(&t));
                        let (nf, nh) = (self.full.ksize(fa), self.hybrid.ksize(ha));
                        assert_eq!(nf, nh);
                        self.valid.insert(fa, fa + nf);
                        for l in self.live.iter_mut() {
                            if l.rel == t.rel && !l.vm {
                                l.size = nf;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every live slab object sits in a slab page and its first bytes pass.
    fn live_objects_stay_valid(&self, step: usize) {
        for l in &self.live {
            let fa = self.abs_full(l);
            if !l.vm {
                let pages = self.full.kasan.pages();
                let pg = pages.get(pages.pfn(fa).unwrap());
                let slabby = l.kind == Kind::Cache || (l.kind == Kind::Kmalloc && l.size <= KMALLOC_MAX_CACHE);
                assert!(!slabby || pg.kind == hybrid_shadow::page_state::PageKind::Slab, "step {step}: {l:?} {pg:?}");
            }
            assert!(l.size == 0 || self.full.kasan.fast_ok(fa, l.size.min(8)), "step {step}: {l:?} poisoned");
        }
    }

    fn finish(mut self) {
        assert!(self.checks > 500 && self.bugs > 100, "the sequence exercised checks and bugs");
        let s = (self.full.kasan.stats(), self.hybrid.kasan.stats());
        assert_eq!(s.0.reports, s.1.reports, "same number of reports");
        // hybrid's extra slow-path checks are exactly its clean CONSULT resolutions
        assert_eq!(s.1.slow_path_checks - s.0.slow_path_checks, s.1.slow_path_clean - s.0.slow_path_clean);
        if self.hybrid.kasan.config().mixed == MixedBlocks::Private {
            assert_eq!(s.1.slow_path_checks, s.0.slow_path_checks, "private mixed blocks: no slow path beyond full's");
        }
        while !self.live.is_empty() {
            self.free_live(self.live.len() - 1);
        }
        self.full.drain_quarantine();
        self.hybrid.drain_quarantine();
        self.full.check_invariants().unwrap();
        self.hybrid.check_invariants().unwrap();
        assert_eq!(self.hybrid.kasan.stats().ondemand_live_pages, 0, "hybrid gave all shadow back");
        assert!(self.checks > 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn differential_full_vs_hybrid(
        scheme in 0u8..3,
        ops in proptest::collection::vec(any::<(u8, u16, u16, u8)>(), OPS_PER_CASE),
    ) {
        let mut p = Pair::new([MixedBlocks::Consult, MixedBlocks::Private, MixedBlocks::Adaptive][scheme as usize]);
        for (i, (op, a, b, c)) in ops.into_iter().enumerate() {
            p.step(op, a, b, c);
            if i % 100 == 0 {
                p.live_objects_stay_valid(i);
            }
        }
        p.finish();
    }
}
