//! KMSAN's `full` and `hybrid` runtimes driven in lockstep by one sequence
//! of calls on the public API, the way a buggy kernel makes them, each
//! checked against a per-byte oracle of shadow values:
//!
//! ```text
//!   KOp ──► full  (KmsanHost) ──► result, shadow, origin, report text ─┐
//!       └─► hybrid (KmsanHost) ─► result, shadow, origin, report text ─┼─► equal? as the oracle says?
//!       └─► oracle: shadow byte per RAM and image byte, page kinds,
//!                   vmalloc pages -> frames (kept from the operations alone)
//!   finish: every area, slab, stack and page freed ──► hybrid holds no private metadata page
//! ```
//!
//! The KMSAN differential test (`tests/kmsan_differential.rs`) and the
//! fuzz target ([`crate::host::fuzz`]) both drive this one driver. Hooks
//! given bad input must return the error the oracle expects (never
//! panic); origins are compared between the modes (the oracle tells only
//! initialized from not).
//!
//! What the oracle models of the runtime's documented limits: a single
//! load or store larger than the sink ([`SINK_BYTES`]) that crosses a
//! vmalloc page or the end of RAM or the image, or one whose first byte
//! has no metadata, is not tracked (loads read initialized, stores are
//! dropped): the compiler emits no such access (it copies large values
//! with `memcpy`), and the data access itself would fault.

use crate::config::Mode;
use crate::error::{PageError, SlabError};
use crate::hooks::Size;
use crate::host::kmsan::KmsanHost;
use crate::kmsan::AllocInit;
use crate::kmsan::meta::{DROP_BYTES, SINK_BYTES};
use crate::mapper::PAGE_SIZE;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;
use core::fmt::Debug;

/// Sizes of the two runtimes (multiples of 32 KiB).
#[derive(Clone, Copy, Debug)]
pub struct KSetup {
    /// RAM bytes.
    pub ram: usize,
    /// vmalloc window bytes.
    pub vmalloc: usize,
    /// Image bytes.
    pub image: usize,
}

impl KSetup {
    /// 256 KiB of RAM and vmalloc, 64 KiB of image: quick to start and to
    /// free (fuzzing).
    #[must_use]
    pub fn tiny() -> Self {
        KSetup { ram: 256 << 10, vmalloc: 256 << 10, image: 64 << 10 }
    }
}

/// Where an operation points, resolved in each runtime.
#[derive(Clone, Copy, Debug)]
pub enum KAt {
    /// RAM's start plus an offset.
    Ram(usize),
    /// The vmalloc window's start plus an offset.
    Vmalloc(usize),
    /// The image's start plus an offset.
    Image(usize),
    /// The same address in both runtimes (user space, the top of the
    /// address space).
    Abs(usize),
    /// A live (or once live) allocation's start plus `off`.
    Live {
        /// Which one (modulo the number kept).
        pick: u16,
        /// Offset from its start.
        off: isize,
    },
}

/// How a range's metadata is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KSet {
    /// `kmsan_unpoison_memory`.
    Unpoison,
    /// `kmsan_poison_memory`.
    Poison,
    /// The metadata side of `memset`.
    Memset,
    /// `__msan_poison_alloca`.
    PoisonAlloca,
    /// `__msan_unpoison_alloca`.
    UnpoisonAlloca,
    /// `__msan_instrument_asm_store` (sizes above 512 taken as 8).
    AsmStore,
}

/// One call (or the few a kernel makes together) on both runtimes.
#[derive(Clone, Copy, Debug)]
pub enum KOp {
    /// `page_alloc` of `2^order` pages at any address.
    PageAlloc {
        /// Where.
        at: KAt,
        /// Order.
        order: u32,
        /// `__GFP_ZERO`.
        zeroed: bool,
    },
    /// `page_free` of `2^order` pages at any address (double and
    /// wrong-order frees included).
    PageFree {
        /// Where.
        at: KAt,
        /// Order.
        order: u32,
    },
    /// Page-backed kmalloc of `2^order` pages.
    KmallocLarge {
        /// Where.
        at: KAt,
        /// Order.
        order: u32,
        /// kzalloc.
        zeroed: bool,
    },
    /// Pages become (or stop being) a slab or a stack.
    Track {
        /// Where.
        at: KAt,
        /// Order.
        order: u32,
        /// A stack (else a slab).
        stack: bool,
        /// Stop tracking (else start).
        free: bool,
    },
    /// `slab_alloc` of `size` bytes at any pointer.
    SlabAlloc {
        /// Where.
        at: KAt,
        /// Bytes.
        size: usize,
        /// kzalloc.
        zeroed: bool,
    },
    /// `slab_free` of `size` bytes at any pointer (interior, never
    /// allocated, double).
    SlabFree {
        /// Where.
        at: KAt,
        /// Bytes.
        size: usize,
    },
    /// vmalloc: free frames allocated and mapped together in the window.
    Vmalloc {
        /// Pages (1 or more).
        pages: usize,
        /// Zeroed frames.
        zeroed: bool,
    },
    /// vfree of a vmalloc area: unmapped, its frames freed.
    Vfree {
        /// Which area (modulo the number mapped).
        pick: u16,
    },
    /// An instrumented store of `size` bytes whose value's shadow follows
    /// `pattern` (0 initialized, 1 all 0xFF, else mixed bytes from it) and
    /// whose origin is that of a 1-byte load at `from`, chained.
    Store {
        /// Where.
        at: KAt,
        /// Bytes (at most [`DROP_BYTES`], what the compiler emits).
        size: usize,
        /// Shadow pattern.
        pattern: u8,
        /// Where the value was loaded from.
        from: KAt,
    },
    /// An instrumented load of `size` bytes.
    Load {
        /// Where.
        at: KAt,
        /// Bytes (at most [`DROP_BYTES`]).
        size: usize,
    },
    /// The metadata side of `memcpy`/`memmove`.
    Copy {
        /// Destination.
        dst: KAt,
        /// Source.
        src: KAt,
        /// Bytes.
        size: usize,
    },
    /// Set a range's metadata.
    Set {
        /// Where.
        at: KAt,
        /// Bytes.
        size: usize,
        /// How.
        how: KSet,
    },
    /// `kmsan_check_memory`.
    Check {
        /// Where.
        at: KAt,
        /// Bytes.
        size: usize,
    },
    /// `__msan_warning` with the origin of a 4-byte load at `at`.
    Warning {
        /// Where the value was loaded from.
        at: KAt,
    },
}

/// Number of [`KOp`] kinds (the index [`KLockstep::counts`] uses).
pub const KOP_KINDS: usize = 14;

impl KOp {
    /// This operation's kind, `0..KOP_KINDS`.
    #[must_use]
    pub fn kind(&self) -> usize {
        match self {
            KOp::PageAlloc { .. } => 0,
            KOp::PageFree { .. } => 1,
            KOp::KmallocLarge { .. } => 2,
            KOp::Track { .. } => 3,
            KOp::SlabAlloc { .. } => 4,
            KOp::SlabFree { .. } => 5,
            KOp::Vmalloc { .. } => 6,
            KOp::Vfree { .. } => 7,
            KOp::Store { .. } => 8,
            KOp::Load { .. } => 9,
            KOp::Copy { .. } => 10,
            KOp::Set { .. } => 11,
            KOp::Check { .. } => 12,
            KOp::Warning { .. } => 13,
        }
    }
}

/// Page owner as the oracle keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PKind {
    Free,
    Page,
    Slab,
    Stack,
}

/// What the oracle knows: a shadow byte per RAM and image byte, RAM pages'
/// owners, and which frame each vmalloc page maps.
struct KOracle {
    ram: core::ops::Range<usize>,
    image: core::ops::Range<usize>,
    vm: core::ops::Range<usize>,
    /// RAM bytes, then image bytes.
    shadow: Vec<u8>,
    kinds: Vec<PKind>,
    /// Per vmalloc page: the RAM frame mapped there.
    alias: Vec<Option<usize>>,
}

impl KOracle {
    /// Index into `shadow` of the byte whose metadata `a` (a `full`
    /// address) uses.
    fn canon(&self, a: usize) -> Option<usize> {
        if self.ram.contains(&a) {
            Some(a - self.ram.start)
        } else if self.image.contains(&a) {
            Some(self.ram.len() + a - self.image.start)
        } else if self.vm.contains(&a) {
            let r = a - self.vm.start;
            self.alias[r / PAGE_SIZE].map(|pfn| pfn * PAGE_SIZE + r % PAGE_SIZE)
        } else {
            None
        }
    }

    fn shadow_of(&self, a: usize) -> u8 {
        self.canon(a).map_or(0, |i| self.shadow[i])
    }

    /// Parts of `[a, a + n)` (end saturating) inside the three regions.
    fn parts(&self, a: usize, n: usize) -> Vec<core::ops::Range<usize>> {
        let end = a.saturating_add(n);
        [&self.ram, &self.image, &self.vm]
            .into_iter()
            .filter_map(|r| {
                let (s, e) = (a.max(r.start), end.min(r.end));
                (s < e).then_some(s..e)
            })
            .collect()
    }

    /// Set every byte of `[a, a + n)` that has metadata to `v`.
    fn set(&mut self, a: usize, n: usize, v: u8) {
        for r in self.parts(a, n) {
            let mut x = r.start;
            while x < r.end {
                let e = r.end.min((x & !(PAGE_SIZE - 1)) + PAGE_SIZE);
                if let Some(i) = self.canon(x) {
                    self.shadow[i..i + (e - x)].fill(v);
                }
                x = e;
            }
        }
    }

    fn any_uninit(&self, a: usize, n: usize) -> bool {
        self.parts(a, n).into_iter().any(|r| r.into_iter().any(|x| self.shadow_of(x) != 0))
    }

    /// Whether an instrumented access of `n` bytes at `a` is tracked byte
    /// by byte (else a load reads initialized, a store is dropped): one
    /// that crosses a vmalloc page or runs past the end of RAM or the
    /// image when it fits the sink; any other when its first byte has
    /// metadata.
    fn tracked_access(&self, a: usize, n: usize) -> bool {
        let crosses = a % PAGE_SIZE + n > PAGE_SIZE
            && (self.vm.contains(&a) || [&self.ram, &self.image].iter().any(|r| r.contains(&a) && a.saturating_add(n) > r.end));
        if crosses {
            return n <= SINK_BYTES;
        }
        self.canon(a).is_some()
    }

    /// The frames of `2^order` pages at `a`, as the page hooks check them.
    fn ram_pages(&self, a: usize, order: u32) -> Result<core::ops::Range<usize>, PageError> {
        if order > 20 {
            return Err(PageError::BadOrder);
        }
        if !a.is_multiple_of(PAGE_SIZE) {
            return Err(PageError::Unaligned);
        }
        if !self.ram.contains(&a) {
            return Err(PageError::NotRam);
        }
        let pfn = (a - self.ram.start) / PAGE_SIZE;
        if pfn + (1 << order) > self.kinds.len() {
            return Err(PageError::BadOrder);
        }
        Ok(pfn..pfn + (1 << order))
    }

    /// Whether `[a, a + n)` lies in pages of `kind`, as the slab hooks check it.
    fn tracked(&self, a: usize, n: usize, kind: PKind) -> Result<(), SlabError> {
        let end = a.checked_add(n).ok_or(SlabError::BadSize)?;
        let mut x = a;
        while x < end {
            if !self.ram.contains(&x) {
                return Err(SlabError::NotRam);
            }
            if self.kinds[(x - self.ram.start) / PAGE_SIZE] != kind {
                return Err(SlabError::WrongPageState);
            }
            x = (x & !(PAGE_SIZE - 1)) + PAGE_SIZE;
        }
        Ok(())
    }
}

/// An allocation (or once one) operations can point at.
#[derive(Clone, Copy, Debug)]
struct Alloc {
    at: KAt,
}

/// A mapped vmalloc area.
#[derive(Clone, Debug)]
struct Area {
    /// Offset in the window.
    off: usize,
    frames: Vec<usize>,
}

/// Allocations kept for targets (oldest dropped past this).
const KEPT: usize = 256;

/// The two runtimes, the oracle and what the driver allocated.
pub struct KLockstep {
    full: KmsanHost,
    hybrid: KmsanHost,
    o: KOracle,
    allocs: Vec<Alloc>,
    areas: Vec<Area>,
    /// Window pages in use (areas and their guard page).
    vm_used: Vec<bool>,
    live0: usize,
    counts: [usize; KOP_KINDS],
    bugs: usize,
}

/// The address `at` resolves to in `h`.
fn abs(h: &KmsanHost, allocs: &[Alloc], at: KAt) -> usize {
    match at {
        KAt::Ram(o) => h.ram().wrapping_add(o),
        KAt::Vmalloc(o) => h.vmalloc().wrapping_add(o),
        KAt::Image(o) => h.image().wrapping_add(o),
        KAt::Abs(a) => a,
        KAt::Live { pick, off } => match allocs.get(pick as usize % allocs.len().max(1)) {
            Some(a) => abs(h, &[], a.at).wrapping_add_signed(off),
            None => h.ram().wrapping_add_signed(off),
        },
    }
}

/// `text` with every 16-digit hex address within 1 GiB of one of `h`'s
/// regions written as region and offset (the two runtimes sit at
/// different places), and the byte indices of a check's report (from
/// `start`) written as such addresses first.
fn normalize(h: &KmsanHost, text: &str, start: usize) -> String {
    let text: String = text
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("Bytes ").or_else(|| line.strip_prefix("Byte "));
            match rest.and_then(|r| r.split_once(" of ")) {
                Some((idx, tail)) => {
                    let idx: Vec<String> = idx.split('-').map(|i| format!("{:016x}", start.wrapping_add(i.parse().unwrap_or(0)))).collect();
                    format!("Bytes {} of {tail}\n", idx.join("-"))
                }
                None => format!("{line}\n"),
            }
        })
        .collect();
    let text = text.as_str();
    let l = h.kmsan.layout();
    let regions = [("ram", l.direct_map.data.start), ("vm", l.vmalloc.start), ("image", l.image.data.start)];
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let run = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if run == 16 && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let v = usize::from_str_radix(&text[i..i + 16], 16).unwrap_or(0);
            match regions.iter().min_by_key(|r| v.abs_diff(r.1)).filter(|r| v.abs_diff(r.1) < 1 << 30) {
                Some(r) => out.push_str(&format!("<{}{:+}>", r.0, v.wrapping_sub(r.1) as isize)),
                None => out.push_str(&text[i..i + 16]),
            }
            i += 16;
        } else {
            let n = run.max(1);
            out.push_str(&text[i..i + n]);
            i += n;
        }
    }
    out
}

impl KLockstep {
    /// Two fresh runtimes of `setup`'s sizes; all RAM free.
    ///
    /// # Panics
    /// When a runtime cannot start.
    #[must_use]
    pub fn new(setup: KSetup) -> Self {
        let mk = |m| KmsanHost::new(m, setup.ram, setup.vmalloc, setup.image).expect("KMSAN host runtime");
        let (full, hybrid) = (mk(Mode::Full), mk(Mode::Hybrid));
        let l = full.kmsan.layout();
        let (ram, image, vm) = (l.direct_map.data.start..l.direct_map.data.end, l.image.data.start..l.image.data.end, l.vmalloc.start..l.vmalloc.end);
        let (pages, vm_pages) = (ram.len() / PAGE_SIZE, vm.len() / PAGE_SIZE);
        // RAM starts free (uninitialized), the image initialized.
        let mut shadow = vec![0xFF; ram.len()];
        shadow.resize(ram.len() + image.len(), 0);
        let o = KOracle { ram, image, vm, shadow, kinds: vec![PKind::Free; pages], alias: vec![None; vm_pages] };
        let live0 = hybrid.kmsan.stats().ondemand_live_pages;
        KLockstep { full, hybrid, o, allocs: Vec::new(), areas: Vec::new(), vm_used: vec![false; vm_pages], live0, counts: [0; KOP_KINDS], bugs: 0 }
    }

    /// Operations applied so far, by [`KOp::kind`].
    #[must_use]
    pub fn counts(&self) -> [usize; KOP_KINDS] {
        self.counts
    }

    /// Reports the oracle expected so far (checks of uninitialized bytes,
    /// warnings).
    #[must_use]
    pub fn bugs(&self) -> usize {
        self.bugs
    }

    /// Peak private metadata pages of `hybrid` and the metadata pages
    /// `full` maps at init.
    #[must_use]
    pub fn pages(&self) -> (usize, usize) {
        (self.hybrid.kmsan.stats().ondemand_peak_pages, self.full.kmsan.stats().init_shadow_pages)
    }

    /// `at` in `full` (the oracle's addresses).
    fn at(&self, at: KAt) -> usize {
        abs(&self.full, &self.allocs, at)
    }

    /// Run `f` on both runtimes inside function `name` with `at` resolved
    /// in each; results and console text must match.
    fn both<R: PartialEq + Debug>(&mut self, name: &str, at: KAt, f: impl Fn(&mut KmsanHost, usize) -> R) -> R {
        let allocs = &self.allocs;
        let a = self.full.call(name, |h| {
            let x = abs(h, allocs, at);
            f(h, x)
        });
        let b = self.hybrid.call(name, |h| {
            let x = abs(h, allocs, at);
            f(h, x)
        });
        assert_eq!(a, b, "full and hybrid differ in {name} at {at:?}");
        let (lf, lh) = (self.full.take_log(), self.hybrid.take_log());
        let (sf, sh) = (abs(&self.full, &self.allocs, at), abs(&self.hybrid, &self.allocs, at));
        assert_eq!(normalize(&self.full, &lf, sf), normalize(&self.hybrid, &lh, sh), "reports differ in {name} at {at:?}");
        a
    }

    fn keep(&mut self, at: KAt) {
        if self.allocs.len() == KEPT {
            self.allocs.remove(0);
        }
        // Kept by region and offset: a `Live` target would move.
        let a = self.at(at);
        let at = match (self.o.ram.contains(&a), self.o.vm.contains(&a)) {
            (true, _) => KAt::Ram(a - self.o.ram.start),
            (_, true) => KAt::Vmalloc(a - self.o.vm.start),
            _ => KAt::Abs(a),
        };
        self.allocs.push(Alloc { at });
    }

    /// Apply one operation to both runtimes and the oracle, checking every
    /// result.
    ///
    /// # Panics
    /// On any disagreement between the runtimes or with the oracle.
    pub fn apply(&mut self, op: KOp) {
        self.counts[op.kind()] += 1;
        let op = self.clip(op);
        match op {
            KOp::PageAlloc { at, order, zeroed } => {
                let a = self.at(at);
                let want = self.o.ram_pages(a, order).and_then(|p| {
                    if p.clone().any(|i| self.o.kinds[i] != PKind::Free) {
                        return Err(PageError::PageInUse);
                    }
                    Ok(p)
                });
                let got = self.both("alloc_pages_site", at, |h, x| h.kmsan.page_alloc(x, order, init(zeroed)));
                assert_eq!(got, want.clone().map(|_| ()), "page_alloc({at:?}, {order})");
                if let Ok(p) = want {
                    self.o.kinds[p.clone()].fill(PKind::Page);
                    self.o.set(a, p.len() * PAGE_SIZE, if zeroed { 0 } else { 0xFF });
                    self.keep(at);
                }
            }
            KOp::PageFree { at, order } => {
                let a = self.at(at);
                let want = self.o.ram_pages(a, order).and_then(|p| {
                    if p.clone().any(|i| self.o.kinds[i] == PKind::Free) {
                        return Err(PageError::WrongPageState);
                    }
                    Ok(p)
                });
                let got = self.both("free_pages_site", at, |h, x| h.kmsan.page_free(x, order));
                assert_eq!(got, want.clone().map(|_| ()), "page_free({at:?}, {order})");
                if let Ok(p) = want {
                    self.o.kinds[p.clone()].fill(PKind::Free);
                    self.o.set(a, p.len() * PAGE_SIZE, 0xFF);
                }
            }
            KOp::KmallocLarge { at, order, zeroed } => {
                let a = self.at(at);
                let want = self.o.ram_pages(a, order).and_then(|p| {
                    if p.clone().any(|i| self.o.kinds[i] == PKind::Free) {
                        return Err(PageError::WrongPageState);
                    }
                    Ok(p)
                });
                let got = self.both("kmalloc_large_site", at, |h, x| h.kmsan.kmalloc_large(x, order, init(zeroed)));
                assert_eq!(got, want.clone().map(|_| ()), "kmalloc_large({at:?}, {order})");
                if let Ok(p) = want {
                    self.o.set(a, p.len() * PAGE_SIZE, if zeroed { 0 } else { 0xFF });
                }
            }
            KOp::Track { at, order, stack, free } => {
                let a = self.at(at);
                let kind = if stack { PKind::Stack } else { PKind::Slab };
                let (from, to) = if free { (kind, PKind::Page) } else { (PKind::Page, kind) };
                let want = self.o.ram_pages(a, order).and_then(|p| {
                    if p.clone().any(|i| self.o.kinds[i] != from) {
                        return Err(PageError::WrongPageState);
                    }
                    Ok(p)
                });
                let got = self.both("track_site", at, |h, x| match (stack, free) {
                    (false, false) => h.kmsan.slab_page_alloc(x, order),
                    (false, true) => h.kmsan.slab_page_free(x, order),
                    (true, false) => h.kmsan.stack_alloc(x, order),
                    (true, true) => h.kmsan.stack_free(x, order),
                });
                assert_eq!(got, want.clone().map(|_| ()), "track({at:?}, {order}, stack {stack}, free {free})");
                if let Ok(p) = want {
                    if stack {
                        // A stack starts, and is given up, initialized.
                        self.o.set(a, p.len() * PAGE_SIZE, 0);
                    }
                    self.o.kinds[p].fill(to);
                }
            }
            KOp::SlabAlloc { at, size, zeroed } => {
                let a = self.at(at);
                let want = if size == 0 { Ok(()) } else { self.o.tracked(a, size, PKind::Slab) };
                let got = self.both("kmalloc_site", at, |h, x| h.kmsan.slab_alloc(x, Size(size), init(zeroed)));
                assert_eq!(got, want, "slab_alloc({at:?}, {size})");
                if want.is_ok() && size > 0 {
                    self.o.set(a, size, if zeroed { 0 } else { 0xFF });
                    self.keep(at);
                }
            }
            KOp::SlabFree { at, size } => {
                let a = self.at(at);
                let want = if size == 0 { Ok(()) } else { self.o.tracked(a, size, PKind::Slab) };
                let got = self.both("kfree_site", at, |h, x| h.kmsan.slab_free(x, Size(size)));
                assert_eq!(got, want, "slab_free({at:?}, {size})");
                if want.is_ok() {
                    self.o.set(a, size, 0xFF);
                }
            }
            KOp::Vmalloc { pages, zeroed } => self.vmalloc(pages, zeroed),
            KOp::Vfree { pick } => {
                if !self.areas.is_empty() {
                    let area = self.areas.swap_remove(pick as usize % self.areas.len());
                    self.vfree(area);
                }
            }
            KOp::Store { at, size, pattern, from } => self.store(at, size, pattern, from),
            KOp::Load { at, size } => {
                let size = size.clamp(1, DROP_BYTES);
                let a = self.at(at);
                let (sh, _) = self.both("load_site", at, |h, x| h.load(x, size));
                let tracked = self.o.tracked_access(a, size);
                for (k, &s) in sh.iter().enumerate() {
                    let want = if tracked { self.o.shadow_of(a.wrapping_add(k)) } else { 0 };
                    assert_eq!(s, want, "shadow of byte {k} of a {size}-byte load at {at:?} disagrees with the oracle");
                }
            }
            KOp::Copy { dst, src, size } => {
                let (d, s) = (self.at(dst), self.at(src));
                let allocs = self.allocs.clone();
                self.both("memcpy_site", dst, |h, x| h.kmsan.copy_meta(x, abs(h, &allocs, src), size));
                if size != 0 && d != s {
                    let n = size.min(self.o.ram.len());
                    let step = |o: &mut KOracle, i: usize| {
                        let v = o.shadow_of(s.wrapping_add(i));
                        if let Some(j) = o.canon(d.wrapping_add(i)) {
                            o.shadow[j] = v;
                        }
                    };
                    if d > s {
                        (0..n).rev().for_each(|i| step(&mut self.o, i));
                    } else {
                        (0..n).for_each(|i| step(&mut self.o, i));
                    }
                }
            }
            KOp::Set { at, size, how } => {
                let a = self.at(at);
                self.both("set_site", at, |h, x| match how {
                    KSet::Unpoison => h.kmsan.unpoison_memory(x, size),
                    KSet::Poison => h.kmsan.poison_memory(x, size),
                    KSet::Memset => h.kmsan.memset_meta(x, size),
                    KSet::PoisonAlloca => {
                        let pc = h.plat.func("alloca_fn");
                        h.kmsan.poison_alloca(x, size, b"----local@alloca_fn", pc, 0);
                    }
                    KSet::UnpoisonAlloca => h.kmsan.unpoison_alloca(x, size),
                    KSet::AsmStore => h.kmsan.asm_store(x, size),
                });
                let (size, v) = match how {
                    KSet::Poison | KSet::PoisonAlloca => (size, 0xFF),
                    KSet::AsmStore if size > 512 => (8, 0),
                    _ => (size, 0),
                };
                self.o.set(a, size, v);
            }
            KOp::Check { at, size } => {
                let a = self.at(at);
                let got = self.both("check_site", at, |h, x| {
                    let ip = h.plat.func("checker");
                    h.kmsan.check_memory(x, size, ip).map_err(|b| b.kind)
                });
                let want = self.o.any_uninit(a, size);
                assert_eq!(got.is_err(), want, "check_memory({at:?}, {size}) disagrees with the oracle");
                self.bugs += usize::from(want);
            }
            KOp::Warning { at } => {
                self.both("warning_site", at, |h, x| {
                    let ip = h.plat.func("warner");
                    let o = h.load(x, 4).1;
                    h.kmsan.warning(o, ip).kind
                });
                self.bugs += 1;
            }
        }
    }

    /// A range from an absolute address stops short of the runtimes'
    /// regions: they sit at different places, so one that reached them
    /// would cover different parts of each.
    fn span(&self, at: KAt, size: usize) -> usize {
        let lo = [&self.full, &self.hybrid].iter().flat_map(|h| [h.ram(), h.vmalloc(), h.image()]).min().unwrap_or(0);
        match at {
            KAt::Abs(a) if a < lo => size.min(lo - a),
            _ => size,
        }
    }

    /// `op` with its ranges clipped by [`Self::span`].
    fn clip(&self, op: KOp) -> KOp {
        match op {
            KOp::SlabAlloc { at, size, zeroed } => KOp::SlabAlloc { at, size: self.span(at, size), zeroed },
            KOp::SlabFree { at, size } => KOp::SlabFree { at, size: self.span(at, size) },
            KOp::Copy { dst, src, size } => KOp::Copy { dst, src, size: self.span(src, self.span(dst, size)) },
            KOp::Set { at, size, how } => KOp::Set { at, size: self.span(at, size), how },
            KOp::Check { at, size } => KOp::Check { at, size: self.span(at, size) },
            KOp::Store { at, size, pattern, from } => KOp::Store { at, size: self.span(at, size), pattern, from },
            KOp::Load { at, size } => KOp::Load { at, size: self.span(at, size) },
            op => op,
        }
    }

    fn store(&mut self, at: KAt, size: usize, pattern: u8, from: KAt) {
        let size = size.clamp(1, DROP_BYTES);
        let a = self.at(at);
        let mut seed = u64::from(pattern) | 0x9E37_79B9_0000_0000;
        let shadow: Vec<u8> = match pattern {
            0 => vec![0; size],
            1 => vec![0xFF; size],
            _ => (0..size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    [0, 0xFF, 0x01, 0x80][(seed % 4) as usize]
                })
                .collect(),
        };
        // The value's origin: that of a load from elsewhere, chained by the store.
        let allocs = self.allocs.clone();
        let origin = self.both("store_site", at, |h, x| {
            let o = h.load(abs(h, &allocs, from), 1).1;
            let o = h.kmsan.chain_origin(o);
            h.store(x, &shadow, o);
            h.settle();
            o
        });
        let _ = origin;
        let kept = self.o.tracked_access(a, size);
        if kept {
            for (k, &s) in shadow.iter().enumerate() {
                if let Some(j) = self.o.canon(a.wrapping_add(k)) {
                    self.o.shadow[j] = s;
                }
            }
        }
    }

    fn vmalloc(&mut self, pages: usize, zeroed: bool) {
        let pages = pages.clamp(1, 16);
        // First fit, with a guard page after the area.
        let Some(first) = (0..self.vm_used.len().saturating_sub(pages)).find(|&p| !self.vm_used[p..=p + pages].iter().any(|&u| u)) else { return };
        let frames: Vec<usize> = (0..self.o.kinds.len()).filter(|&i| self.o.kinds[i] == PKind::Free).take(pages).collect();
        if frames.len() < pages {
            return;
        }
        for &f in &frames {
            self.apply(KOp::PageAlloc { at: KAt::Ram(f * PAGE_SIZE), order: 0, zeroed });
            self.counts[0] -= 1;
        }
        let off = first * PAGE_SIZE;
        self.both("vmalloc_site", KAt::Vmalloc(off), |h, x| h.vmap(x, &frames));
        for (k, &f) in frames.iter().enumerate() {
            self.o.alias[first + k] = Some(f);
        }
        self.vm_used[first..=first + pages].fill(true);
        // A page allocation is kept per frame: keep the area instead.
        self.allocs.truncate(self.allocs.len().saturating_sub(pages));
        self.allocs.push(Alloc { at: KAt::Vmalloc(off) });
        self.areas.push(Area { off, frames });
    }

    fn vfree(&mut self, area: Area) {
        let pages = area.frames.len();
        self.both("vfree_site", KAt::Vmalloc(area.off), |h, x| h.vunmap(x, pages));
        let first = area.off / PAGE_SIZE;
        self.o.alias[first..first + pages].fill(None);
        self.vm_used[first..=first + pages].fill(false);
        for &f in &area.frames {
            // A frame the kernel freed already (a bug it made) stays free.
            if self.o.kinds[f] != PKind::Free {
                self.untrack(f);
                self.apply(KOp::PageFree { at: KAt::Ram(f * PAGE_SIZE), order: 0 });
                self.counts[1] -= 1;
            }
        }
    }

    /// Frame `f` stops being a slab or stack.
    fn untrack(&mut self, f: usize) {
        let (stack, n) = match self.o.kinds[f] {
            PKind::Slab => (false, 3),
            PKind::Stack => (true, 3),
            _ => return,
        };
        self.apply(KOp::Track { at: KAt::Ram(f * PAGE_SIZE), order: 0, stack, free: true });
        self.counts[n] -= 1;
    }

    /// Every byte of RAM and the image (every `stride`-th, from an offset
    /// that moves with `step`) has the oracle's shadow in both runtimes,
    /// and the same origin where it is uninitialized.
    ///
    /// # Panics
    /// On a disagreement.
    pub fn compare(&self, step: usize, stride: usize) {
        let (fl, hl) = (self.full.kmsan.layout(), self.hybrid.kmsan.layout());
        let regions = [(fl.direct_map.data.start, hl.direct_map.data.start, 0, self.o.ram.len()), (fl.image.data.start, hl.image.data.start, self.o.ram.len(), self.o.image.len())];
        for (fb, hb, base, len) in regions {
            for rel in (step % stride.max(1)..len).step_by(stride.max(1)) {
                let f = self.full.kmsan.meta_of(fb + rel);
                let h = self.hybrid.kmsan.meta_of(hb + rel);
                assert_eq!(f.0, self.o.shadow[base + rel], "after step {step}: full's shadow of byte {:#x} disagrees with the oracle", base + rel);
                assert_eq!(h.0, f.0, "after step {step}: shadow of byte {:#x} differs (full, hybrid)", base + rel);
                if f.0 != 0 {
                    assert_eq!(h.1, f.1, "after step {step}: origin of byte {:#x} differs (full, hybrid)", base + rel);
                }
            }
        }
    }

    /// Free every area, slab, stack and page; `hybrid` must then hold no
    /// private metadata page beyond what it mapped at init. A free page a
    /// buggy kernel wrote to (or copied, poisoned into) keeps private
    /// metadata until it is handed out again, so every page is handed out
    /// and freed once first.
    ///
    /// # Panics
    /// On a disagreement or a leak.
    pub fn finish(mut self) {
        while let Some(a) = self.areas.pop() {
            self.vfree(a);
        }
        for f in 0..self.o.kinds.len() {
            self.untrack(f);
            if self.o.kinds[f] == PKind::Free {
                self.apply(KOp::PageAlloc { at: KAt::Ram(f * PAGE_SIZE), order: 0, zeroed: false });
            }
            self.apply(KOp::PageFree { at: KAt::Ram(f * PAGE_SIZE), order: 0 });
        }
        self.compare(0, 61);
        let (f, h) = (self.full.kmsan.stats(), self.hybrid.kmsan.stats());
        assert_eq!(f.reports, h.reports, "report counts differ");
        let census = self.hybrid.kmsan.census();
        assert_eq!(census, crate::kmsan::state::MetaCensus::default(), "hybrid holds private metadata pages with all RAM free");
        assert_eq!(h.ondemand_live_pages, self.live0, "hybrid's on-demand metadata pages leak");
    }
}

/// The allocation hooks' [`AllocInit`] for a decoded `zeroed` flag.
fn init(zeroed: bool) -> AllocInit {
    if zeroed {
        AllocInit::Zeroed
    } else {
        AllocInit::Uninit
    }
}
