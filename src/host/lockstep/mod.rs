//! Two model kernels, `full` and `hybrid`, driven in lockstep by one
//! sequence of operations on the public API (allocators, frees of any
//! pointer, ksize/krealloc, caches, pages, stacks, vmalloc, globals,
//! alloca poisoning, raw slab hooks, hooks given bad input, the runtime's
//! own heap, accesses of any range), each checked against an [`oracle::Oracle`] of what must
//! pass and what must be reported:
//!
//! ```text
//!   Op ──► full kernel ──► verdict ─┐
//!      └─► hybrid kernel ─► verdict ─┼─► same? same place? as the oracle says?
//!      └─► oracle (byte states, live objects, claimed globals, raw slots)
//!   finish: free everything ──► no page, shadow page, cache or quarantine left
//! ```
//!
//! The differential property test and the fuzz target ([`crate::host::fuzz`])
//! both drive this one driver. An operation whose outcome the model cannot
//! tell (a hook the runtime would accept on memory the model kernel owns) is
//! skipped, never guessed.

mod compiler;
mod heap;
mod kheap;
pub mod kmsan;
mod misuse;
pub mod oracle;
mod raw;

use crate::hooks::Size;
use crate::cache::CacheId;
use crate::config::{MixedBlocks, Mode};
use crate::host::sim::{SimConfig, SimKernel, ZERO_SIZE_PTR};
use crate::mapper::PAGE_SIZE;
use crate::report::{Bug, BugType};
use oracle::{Byte, Oracle};
use std::fmt::Debug;
use std::vec::Vec;

/// Sizes and runtime settings of the two kernels.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// RAM bytes (a multiple of 4 MiB).
    pub ram: usize,
    /// vmalloc window bytes.
    pub vmalloc: usize,
    /// Image bytes.
    pub image: usize,
    /// Backing of mixed blocks in `hybrid`.
    pub mixed: MixedBlocks,
    /// Quarantine bytes (`None`: the runtime's default, 1/32 of RAM). At
    /// least the RAM size keeps every freed object until a drain, so the
    /// oracle knows freed objects' report types and raw slots' states.
    pub quarantine: Option<usize>,
    /// Object size and alignment of the raw cache.
    pub raw: (usize, usize),
    /// Bytes after the image for the runtime's heap (a multiple of 32
    /// KiB): `Op::HeapInit` hands all or part of it over.
    pub heap: usize,
}

impl Setup {
    /// 16 MiB of RAM and vmalloc, 256 KiB of image, default quarantine.
    #[must_use]
    pub fn small(mixed: MixedBlocks) -> Self {
        Setup { ram: 16 << 20, vmalloc: 16 << 20, image: 256 << 10, mixed, quarantine: None, raw: (64, 8), heap: 2 << 20 }
    }

    /// 4 MiB of RAM and vmalloc, 64 KiB of image: quick to start (fuzzing).
    #[must_use]
    pub fn tiny(mixed: MixedBlocks) -> Self {
        Setup { ram: 4 << 20, vmalloc: 4 << 20, image: 64 << 10, ..Self::small(mixed) }
    }

    fn config(&self, mode: Mode) -> SimConfig {
        let mut cfg = SimConfig::small(mode);
        (cfg.ram, cfg.vmalloc, cfg.image) = (self.ram, self.vmalloc, self.image);
        cfg.kasan.mixed = self.mixed;
        cfg.kasan.quarantine_bytes = self.quarantine;
        cfg.extra = self.heap;
        cfg
    }
}

/// What a live (or freed) object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A kmalloc from a kmalloc cache.
    Kmalloc,
    /// A page-backed kmalloc of `2^order` pages.
    Large(u32),
    /// An object of named cache number `n` (in creation order).
    Cache(usize),
    /// An object of the raw cache (slab hooks called directly).
    Raw,
    /// `2^order` pages from the page allocator.
    Pages(u32),
    /// A kernel stack.
    Stack,
    /// A vmalloc area.
    Vmalloc,
    /// An object of one of the runtime heap's size classes.
    Heap,
    /// A page-backed object of the runtime's heap.
    HeapPages,
}

impl Kind {
    fn slab(self) -> bool {
        matches!(self, Kind::Kmalloc | Kind::Cache(_) | Kind::Raw)
    }
}

/// An allocation made in both kernels at the same place.
#[derive(Clone, Copy, Debug)]
pub struct Object {
    /// Its start in `full`.
    pub f: usize,
    /// Its start in `hybrid`.
    pub h: usize,
    /// Valid bytes from the start.
    pub size: usize,
    /// What it is.
    pub kind: Kind,
    /// Slab objects: the cache's object size (what ksize hands out).
    object_size: usize,
    /// Its slot, pages, stack or vmalloc area (with guard), in bytes.
    span: usize,
}

/// Where an operation points, resolved in each kernel.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// A live object's start plus `off`.
    Live {
        /// Which one (modulo the number live).
        pick: u16,
        /// Offset from its start.
        off: isize,
    },
    /// Somewhere in or just around a live object: `at % (size + 48) - 16`
    /// bytes from its start (its redzones included).
    Near {
        /// Which one (modulo the number live).
        pick: u16,
        /// Position, scaled to the object.
        at: u16,
    },
    /// A freed object's start plus `off`.
    Freed {
        /// Which one (modulo the number kept).
        pick: u16,
        /// Offset from its start.
        off: isize,
    },
    /// The start of a region plus `off`: 0 direct map, 1 vmalloc, 2 image,
    /// 3 the end of the covered range (wild addresses).
    Region {
        /// Which region.
        which: u8,
        /// Offset from its start.
        off: usize,
    },
    /// The same address in both kernels: the null page, user space, the
    /// top of the address space.
    Abs(usize),
    /// The start of the range after the image (the heap's) plus `off`.
    Heap {
        /// Offset from its start.
        off: usize,
    },
}

/// One call (or a few, as a kernel makes them) on both kernels.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// kmalloc (0 gives ZERO_SIZE_PTR; above the caches page-backed).
    Kmalloc {
        /// Bytes.
        size: usize,
    },
    /// Create a named cache.
    CacheCreate {
        /// Object size.
        size: usize,
    },
    /// Allocate from named cache number `cache` (destroyed ones too).
    CacheAlloc {
        /// Which cache (modulo the number created).
        cache: u8,
        /// Requested bytes.
        size: usize,
    },
    /// Destroy named cache number `cache`.
    CacheDestroy {
        /// Which cache (modulo the number created).
        cache: u8,
    },
    /// Pages from the page allocator.
    AllocPages {
        /// Order (above the buddy's largest: refused).
        order: u32,
    },
    /// A kernel stack.
    StackAlloc,
    /// vmalloc.
    Vmalloc {
        /// Bytes.
        size: usize,
    },
    /// Free a live object the way its kind is freed.
    Free {
        /// Which one (modulo the number live).
        pick: u16,
    },
    /// kfree of any pointer.
    Kfree {
        /// The pointer.
        at: Target,
    },
    /// kfree_sensitive of any pointer.
    KfreeSensitive {
        /// The pointer.
        at: Target,
    },
    /// krealloc of any pointer.
    Krealloc {
        /// The pointer.
        at: Target,
        /// New size.
        size: usize,
    },
    /// ksize of any pointer.
    Ksize {
        /// The pointer.
        at: Target,
    },
    /// free_pages of any pointer and order.
    FreePages {
        /// The pointer.
        at: Target,
        /// Order.
        order: u32,
    },
    /// Free a kernel stack at any pointer.
    StackFree {
        /// The pointer.
        at: Target,
    },
    /// vfree of any pointer.
    Vfree {
        /// The pointer.
        at: Target,
    },
    /// kmem_cache_free of any pointer to named cache number `cache`.
    CacheFree {
        /// Which cache (modulo the number created).
        cache: u8,
        /// The pointer.
        at: Target,
    },
    /// A checked access of any range.
    Access {
        /// Its first byte.
        at: Target,
        /// Bytes.
        size: usize,
        /// A write (else a read).
        write: bool,
    },
    /// Register a global descriptor at `off` bytes into the image.
    RegisterGlobal {
        /// Offset of `beg` from the image's start.
        off: usize,
        /// `size`.
        size: usize,
        /// `size_with_redzone`.
        with_rz: usize,
    },
    /// Unregister a global descriptor at `off` bytes into the image.
    UnregisterGlobal {
        /// Offset of `beg` from the image's start.
        off: usize,
        /// `size`.
        size: usize,
        /// `size_with_redzone`.
        with_rz: usize,
    },
    /// `__asan_alloca_poison` in a live stack.
    AllocaPoison {
        /// Which stack (modulo the number live).
        stack: u16,
        /// Offset of the buffer in the stack.
        off: usize,
        /// Bytes.
        size: usize,
    },
    /// `__asan_allocas_unpoison` in a live stack.
    AllocasUnpoison {
        /// Which stack (modulo the number live).
        stack: u16,
        /// Offset of `top` in the stack.
        top: usize,
        /// Offset of `bottom` in the stack.
        bottom: usize,
    },
    /// `slab_alloc` on the raw cache's slab: slot `slot` plus `delta`.
    RawAlloc {
        /// Slot index (one past the last is the slot cut off by the end).
        slot: u16,
        /// Bytes past the slot's start.
        delta: usize,
        /// Requested bytes.
        size: usize,
    },
    /// `slab_free` on the raw cache's slab: slot `slot` plus `delta`.
    RawFree {
        /// Slot index.
        slot: u16,
        /// Bytes past the slot's start.
        delta: usize,
    },
    /// Empty the quarantine.
    Drain,
    /// `heap_init`: hand the runtime a heap (see `kheap`).
    HeapInit {
        /// Where: the range after the image (mostly), a page into it, the image.
        at: u8,
        /// Bytes.
        len: usize,
    },
    /// `heap_alloc` of any size and alignment.
    HeapAlloc {
        /// Bytes.
        size: usize,
        /// Alignment (not always a power of two).
        align: usize,
    },
    /// `heap_free` of any pointer.
    HeapFree {
        /// The pointer.
        at: Target,
    },
    /// A checked access whose report texts both kernels must print alike.
    HeapAccess {
        /// Its first byte.
        at: Target,
        /// Bytes.
        size: usize,
        /// A write (else a read).
        write: bool,
    },
    /// A hook given input it must refuse (see `misuse`).
    Misuse {
        /// Which hook.
        hook: u8,
        /// The address.
        at: Target,
        /// Order, size or length, as the hook takes.
        arg: usize,
    },
}

/// A named cache in both kernels.
#[derive(Clone, Copy, Debug)]
struct Named {
    ids: (CacheId, CacheId),
    object_size: usize,
    slot: usize,
    alive: bool,
}

/// Freed objects kept as targets (for double frees and use-after-free).
const FREED_KEPT: usize = 64;
/// Live objects [`Lockstep::check_live`] probes at each call.
const PROBED: usize = 8;

/// Both kernels and the oracle.
pub struct Lockstep {
    /// The `full` kernel.
    pub full: SimKernel,
    /// The `hybrid` kernel.
    pub hybrid: SimKernel,
    oracle: Oracle,
    live: Vec<Object>,
    freed: Vec<Object>,
    caches: Vec<Named>,
    raw: raw::Raw,
    kheap: kheap::KHeap,
    /// Image slots (32 bytes each) claimed by registered globals.
    claimed: Vec<bool>,
    /// The quarantine keeps every freed object until a drain.
    certain: bool,
    /// Freed slab objects (start, slot bytes) whose report types the
    /// oracle holds while they are certainly in quarantine.
    quarantined: Vec<(usize, usize)>,
    /// Reports both kernels must have printed so far.
    reports: usize,
    /// The next live object [`Lockstep::check_live`] probes.
    probe_next: usize,
    /// Checked accesses.
    pub checks: usize,
    /// Bugs found (each reported).
    pub bugs: usize,
}

impl Lockstep {
    /// Two fresh kernels.
    #[must_use]
    pub fn new(setup: Setup) -> Self {
        let mut full = SimKernel::new(setup.config(Mode::Full)).expect("model kernel (full)");
        let mut hybrid = SimKernel::new(setup.config(Mode::Hybrid)).expect("model kernel (hybrid)");
        for k in [&full, &hybrid] {
            k.plat.enter("lockstep");
        }
        let raw = raw::Raw::new(&mut full, &mut hybrid, setup.raw);
        let layout = *full.kasan.layout();
        let mut oracle = Oracle::new(layout);
        // Covered bytes no region holds (yet): never reported.
        oracle.set(full.extra().start, full.extra().end, Byte::Valid);
        Lockstep {
            oracle,
            claimed: std::vec![false; layout.image.len() / crate::hooks::GLOBAL_ALIGN],
            certain: setup.quarantine.is_some_and(|q| q >= setup.ram),
            full,
            hybrid,
            live: Vec::new(),
            freed: Vec::new(),
            caches: Vec::new(),
            raw,
            kheap: kheap::KHeap::default(),
            quarantined: Vec::new(),
            reports: 0,
            probe_next: 0,
            checks: 0,
            bugs: 0,
        }
    }

    /// Objects live now.
    #[must_use]
    pub fn live(&self) -> &[Object] {
        &self.live
    }

    /// Run one operation on both kernels and check it.
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Kmalloc { size } => self.kmalloc(size, &op),
            Op::CacheCreate { size } => self.cache_create(size, &op),
            Op::CacheAlloc { cache, size } => self.cache_alloc(cache, size, &op),
            Op::CacheDestroy { cache } => self.cache_destroy(cache, &op),
            Op::AllocPages { order } => self.alloc_pages(order, &op),
            Op::StackAlloc => self.stack_alloc(&op),
            Op::Vmalloc { size } => self.vmalloc(size, &op),
            Op::Free { pick } => self.free(pick, &op),
            Op::Kfree { at } => self.kfree(at, false, &op),
            Op::KfreeSensitive { at } => self.kfree(at, true, &op),
            Op::Krealloc { at, size } => self.krealloc(at, size, &op),
            Op::Ksize { at } => self.ksize(at, &op),
            Op::FreePages { at, order } => self.free_pages(at, order, &op),
            Op::StackFree { at } => self.stack_free(at, &op),
            Op::Vfree { at } => self.vfree(at, &op),
            Op::CacheFree { cache, at } => self.cache_free(cache, at, &op),
            Op::Access { at, size, write } => self.access(at, size, write, &op),
            Op::RegisterGlobal { off, size, with_rz } => self.register_global(off, size, with_rz, &op),
            Op::UnregisterGlobal { off, size, with_rz } => self.unregister_global(off, size, with_rz),
            Op::AllocaPoison { stack, off, size } => self.alloca_poison(stack, off, size, &op),
            Op::AllocasUnpoison { stack, top, bottom } => self.allocas_unpoison(stack, top, bottom),
            Op::RawAlloc { slot, delta, size } => self.raw_alloc(slot, delta, size, &op),
            Op::RawFree { slot, delta } => self.raw_free(slot, delta, &op),
            Op::Drain => self.drain(),
            Op::Misuse { hook, at, arg } => self.misuse(hook, at, arg, &op),
            Op::HeapInit { at, len } => self.heap_init(at, len, &op),
            Op::HeapAlloc { size, align } => self.heap_alloc(size, align, &op),
            Op::HeapFree { at } => self.heap_free(at, &op),
            Op::HeapAccess { at, size, write } => self.heap_access(at, size, write, &op),
        }
        let got = (self.full.kasan.stats().reports, self.hybrid.kasan.stats().reports);
        assert_eq!(got, (self.reports, self.reports), "{op:?}: reports printed (full, hybrid) vs expected");
    }

    // ---- addresses ------------------------------------------------------------

    /// `full`'s address `a` in `hybrid` (the same offset in its slot).
    fn to_h(&self, a: usize) -> usize {
        let (f, h) = (self.full.kasan.layout().covered, self.hybrid.kasan.layout().covered);
        if f.contains(a) {
            a - f.start + h.start
        } else {
            a
        }
    }

    /// The address a target names in `full` and in `hybrid`.
    fn resolve(&self, t: Target) -> Option<(usize, usize)> {
        let pick = |v: &Vec<Object>, i: u16| (!v.is_empty()).then(|| v[i as usize % v.len()]);
        let shifted = |o: Object, off: isize| (o.f.wrapping_add_signed(off), o.h.wrapping_add_signed(off));
        match t {
            Target::Live { pick: i, off } => pick(&self.live, i).map(|o| shifted(o, off)),
            Target::Near { pick: i, at } => {
                pick(&self.live, i).map(|o| shifted(o, (at as usize % (o.size + 48)) as isize - 16))
            }
            Target::Freed { pick: i, off } => pick(&self.freed, i).map(|o| shifted(o, off)),
            Target::Region { which, off } => {
                let start = |k: &SimKernel| {
                    let l = k.kasan.layout();
                    [l.direct_map.start, l.vmalloc.start, l.image.start, l.covered.end][which as usize % 4]
                };
                Some((start(&self.full).wrapping_add(off), start(&self.hybrid).wrapping_add(off)))
            }
            Target::Abs(a) => Some((a, a)),
            Target::Heap { off } => {
                Some((self.full.extra().start.wrapping_add(off), self.hybrid.extra().start.wrapping_add(off)))
            }
        }
    }

    /// Both kernels allocated at the same place (or both failed).
    fn same_place(&self, what: &dyn Debug, f: Option<usize>, h: Option<usize>) {
        assert_eq!(f.map(|a| self.to_h(a)), h, "{what:?}: full and hybrid allocate alike");
    }

    /// The index of the live object starting at `full` address `fa`.
    fn live_at(&self, fa: usize) -> Option<usize> {
        self.live.iter().position(|o| o.f == fa)
    }

    // ---- verdicts ---------------------------------------------------------------

    /// Both kernels' verdicts on one call: the same bug type (or none),
    /// counted as a report.
    fn verdict<T>(&mut self, what: &dyn Debug, f: &Result<T, Bug>, h: &Result<T, Bug>) -> Option<BugType> {
        let (fk, hk) = (f.as_ref().err().map(|b| b.kind), h.as_ref().err().map(|b| b.kind));
        assert_eq!(fk, hk, "{what:?}: full and hybrid disagree");
        if fk.is_some() {
            self.bugs += 1;
            self.reports += 1;
        }
        fk
    }

    /// A call that must report a free bug (of `kind` when given).
    fn bad_free(&mut self, what: &dyn Debug, f: Result<(), Bug>, h: Result<(), Bug>, kind: Option<BugType>) {
        let got = self.verdict(what, &f, &h);
        let ok = match kind {
            Some(k) => got == Some(k),
            None => matches!(got, Some(BugType::DoubleFree | BugType::InvalidFree)),
        };
        assert!(ok, "{what:?}: want a bad free ({kind:?}), got {got:?}");
    }

    /// A free at a target: live object `target` freed with no report; with
    /// none, a bad free reported (as `kind` when given) and nothing freed.
    fn free_outcome(&mut self, op: &Op, target: Option<usize>, kind: Option<BugType>, f: Result<(), Bug>, h: Result<(), Bug>) {
        match target {
            Some(i) => {
                assert_eq!(self.verdict(op, &f, &h), None, "{op:?}: free of a live object was reported");
                self.retire(i, &[]);
            }
            None => self.bad_free(op, f, h, kind),
        }
    }

    /// A call that reports inside (ksize, krealloc): `n` reports expected.
    fn expect_reports(&mut self, n: usize) {
        self.reports += n;
        self.bugs += n;
    }

    /// Whether the first byte at `fa` is poisoned (what `kasan_check_byte` reports).
    fn poisoned(&self, fa: usize) -> bool {
        self.oracle.expect(fa, 1).is_err()
    }

    // ---- objects --------------------------------------------------------------

    /// A new object in both kernels: its bytes (and redzones) in the oracle.
    fn add(&mut self, o: Object) {
        let end = o.f + o.span;
        match o.kind {
            Kind::Pages(_) | Kind::Stack => self.oracle.set(o.f, end, Byte::Valid),
            Kind::Vmalloc => {
                self.oracle.object(o.f, o.size, end, BugType::VmallocOutOfBounds);
                for p in self.full.vmalloc_pages(o.f).unwrap_or_default().to_vec() {
                    self.oracle.set(p, p + PAGE_SIZE, Byte::Valid);
                }
            }
            _ => self.oracle.object(o.f, o.size, end, BugType::SlabOutOfBounds),
        }
        self.freed.retain(|x| x.f + x.span <= o.f || end <= x.f);
        self.live.push(o);
    }

    /// Object `i` was freed in both kernels (vmalloc: `backing` its pages).
    fn retire(&mut self, i: usize, backing: &[usize]) {
        let o = self.live.swap_remove(i);
        let end = o.f + o.span;
        if o.kind.slab() && self.certain {
            let body = o.object_size.next_multiple_of(crate::shadow::GRANULE);
            self.oracle.set(o.f, o.f + body, Byte::Bad(Some(BugType::SlabUseAfterFree)));
            self.oracle.set(o.f + body, end, Byte::Bad(Some(BugType::SlabOutOfBounds)));
            self.quarantined.push((o.f, o.span));
        } else if Self::is_heap(&o) && self.certain {
            self.heap_quarantined(&o);
        } else if o.kind == Kind::Vmalloc {
            self.oracle.set(o.f, end, Byte::Bad(Some(BugType::VmallocOutOfBounds)));
            for &p in backing {
                self.oracle.set(p, p + PAGE_SIZE, Byte::Bad(None));
            }
        } else {
            self.oracle.set(o.f, end, Byte::Bad(None));
        }
        if o.kind == Kind::Raw {
            self.raw.freed(o.f, self.certain);
        }
        if self.freed.len() == FREED_KEPT {
            self.freed.remove(0);
        }
        self.freed.push(o);
    }

    /// Freed slab objects may have left the quarantine (drain, cache
    /// destroy): their bytes stay poisoned, of a type no longer known.
    fn quarantine_released(&mut self) {
        for (f, span) in std::mem::take(&mut self.quarantined) {
            self.oracle.set(f, f + span, Byte::Bad(None));
        }
        self.kheap.released();
    }

    /// Empty both quarantines.
    fn drain(&mut self) {
        self.full.drain_quarantine();
        self.hybrid.drain_quarantine();
        self.quarantine_released();
        self.raw.drained();
    }

    /// A checked access of any range, against the oracle.
    fn access(&mut self, at: Target, size: usize, write: bool, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let (f, h) = if write {
            (self.full.write(fa, size), self.hybrid.write(ha, size))
        } else {
            (self.full.read(fa, size), self.hybrid.read(ha, size))
        };
        self.checks += 1;
        let got = self.verdict(op, &f, &h);
        let want = self.oracle.expect(fa, size);
        let agrees = match (want, got) {
            (Ok(()), None) => true,
            (Err(kind), Some(g)) => kind.is_none_or(|k| k == g),
            _ => false,
        };
        assert!(agrees, "oracle: {op:?} at {fa:#x}: want {want:?}, got {got:?}\n{}", self.context(fa));
    }

    /// The effective shadow and the oracle around `fa`, for a failure.
    fn context(&self, fa: usize) -> std::string::String {
        let mut s = std::string::String::from("granule: shadow oracle(first byte)\n");
        for g in -4isize..8 {
            let a = (fa & !7).wrapping_add_signed(g * 8);
            let sh = self.full.kasan.effective_shadow(a).map_or("--".into(), |v| std::format!("{v:02x}"));
            s += &std::format!("{:+4}: {sh} {:?}\n", g * 8, self.oracle.byte(a));
        }
        s
    }

    /// Every live object's first bytes pass on the fast path (but stacks',
    /// which alloca poisoning may cover) and slab objects sit on slab
    /// pages; for [`PROBED`] of them in turn, an access to the last byte
    /// and to the byte past it in both kernels gives what the oracle says
    /// (the byte past a slab object, a large kmalloc or a vmalloc area is
    /// reported).
    pub fn check_live(&mut self) {
        let n = self.live.len();
        let probed: Vec<usize> = (0..PROBED.min(n)).map(|k| (self.probe_next + k) % n).collect();
        self.probe_next = self.probe_next.wrapping_add(PROBED);
        for (i, o) in self.live.clone().into_iter().enumerate() {
            if o.kind.slab() {
                let pages = self.full.kasan.pages();
                let page = pages.get(pages.pfn(o.f).expect("a slab object is in RAM"));
                assert_eq!(page.kind, crate::page_state::PageKind::Slab, "{o:?}");
            }
            if o.kind != Kind::Stack {
                assert!(o.size == 0 || self.full.kasan.fast_ok(o.f, Size(o.size.min(8))), "{o:?} poisoned");
            }
            if !probed.contains(&i) {
                continue;
            }
            for off in [o.size.saturating_sub(1), o.size] {
                let at = Target::Live { pick: i as u16, off: off as isize };
                self.access(at, 1, false, &Op::Access { at, size: 1, write: false });
            }
        }
    }

    /// Free everything, then check that nothing leaked: no page held, no
    /// private shadow page in `hybrid`, no cache object or quarantined
    /// byte, the model kernels' books balanced, the reports all expected.
    pub fn finish(mut self) {
        while !self.live.is_empty() {
            self.apply(Op::Free { pick: (self.live.len() - 1) as u16 });
        }
        self.apply(Op::Drain);
        for c in 0..self.caches.len() {
            if self.caches[c].alive {
                self.apply(Op::CacheDestroy { cache: c as u8 });
            }
        }
        self.raw.teardown(&mut self.full, &mut self.hybrid);
        self.heap_teardown();
        for k in [&self.full, &self.hybrid] {
            let mode = k.kasan.config().mode;
            k.check_invariants().unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert_eq!(k.pages_used, 0, "{mode:?}: pages still allocated");
            let s = k.kasan.stats();
            assert_eq!(s.quarantine_bytes, 0, "{mode:?}: quarantine not empty");
            assert_eq!(s.reports, self.reports, "{mode:?}: reports");
        }
    }
}

/// Pointers up to [`ZERO_SIZE_PTR`] are nothing to free or size.
fn zero_or_null(fa: usize) -> bool {
    fa <= ZERO_SIZE_PTR
}
