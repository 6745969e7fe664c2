//! Writing and moving metadata: poison, unpoison, the metadata side of
//! `memcpy`/`memmove`/`memset`, and checking a range (the kernel API
//! `kmsan_poison_memory`, `kmsan_unpoison_memory`, `kmsan_check_memory`).
//!
//! The rules (Linux's, so origins survive the way its users expect):
//!
//! * poisoning a range writes its shadow, then the new origin to every
//!   4-byte slot it touches (zero when the origin is unknown); unpoisoning
//!   clears the origin of each slot that is now wholly initialized;
//! * copying moves shadow byte by byte; an uninitialized byte carries its
//!   slot's origin, chained with the copier's stack; an initialized byte
//!   clears its destination slot's origin only when the whole slot is
//!   initialized afterwards (so a slot's other uninitialized bytes keep
//!   theirs).
//!
//! In `hybrid`, a set that covers a whole page-granular RAM page backs it
//! by a shared page again (`Init`, or `Uninit` with a per-page origin);
//! anything finer makes the page private first.

use crate::kmsan::origin::{Origin, NO_ORIGIN};
use crate::kmsan::runtime::{KInner, Kmsan, Place};
use crate::backing::Backing;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;
use crate::report::Bug;

/// The page-size chunks of `[addr, addr + size)`.
pub(crate) fn chunks(addr: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let end = addr.saturating_add(size);
    let mut a = addr;
    core::iter::from_fn(move || {
        if a >= end {
            return None;
        }
        let e = end.min((a & !(PAGE_SIZE - 1)).saturating_add(PAGE_SIZE));
        let c = (a, e);
        a = e;
        Some(c)
    })
}

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// The page chunks of `[addr, addr + size)` that can have metadata (the
    /// parts inside RAM, the image and the vmalloc window), in address
    /// order: work on a range is bounded by those regions, whatever size a
    /// buggy caller passes.
    pub(crate) fn meta_chunks(&self, addr: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
        let end = addr.saturating_add(size);
        let l = &self.layout;
        let mut regions = [l.direct_map.data, l.image.data, l.vmalloc];
        regions.sort_unstable_by_key(|r| r.start);
        regions.into_iter().flat_map(move |r| {
            let (s, e) = (addr.max(r.start), end.min(r.end));
            chunks(s, e.saturating_sub(s))
        })
    }

    /// Make the metadata of the page holding (canonical) `c` writable;
    /// false when it has none to write (outside, no frame).
    pub(crate) fn writable_chunk(&self, inner: &mut KInner<M>, c: usize) -> bool {
        let place = self.place(c);
        let Some((_, p)) = self.page_of(place) else { return false };
        match p.backing {
            Backing::Private => true,
            Backing::Unchecked => false,
            _ => self.materialize(inner, place),
        }
    }

    /// Set the shadow of `[addr, addr + size)` to `poison ? 0xFF : 0` and
    /// the origins by the slot rule above.
    pub(crate) fn set_range(&self, inner: &mut KInner<M>, addr: usize, size: usize, poison: bool, o: Origin) {
        if !self.on() || size == 0 {
            return;
        }
        let fill = if poison { 0xFF } else { 0 };
        for (a0, e0) in self.meta_chunks(addr, size) {
            let Some(a) = self.canon(a0) else { continue };
            let e = a + (e0 - a0);
            let place = self.place(a);
            let Some((r, p)) = self.page_of(place) else { continue };
            if let Place::Ram(i) = place {
                let whole = e - a == PAGE_SIZE;
                let page_granular = matches!(p.kind, PageKind::None | PageKind::Page | PageKind::Reserved);
                if whole && page_granular {
                    self.share(inner, place, poison.then_some(o), p.kind);
                    continue;
                }
                // Already in that state: nothing to write.
                let same = match p.backing {
                    Backing::INIT => !poison,
                    Backing::UNINIT => poison && self.ram_origin[i].load(core::sync::atomic::Ordering::Relaxed) == o,
                    _ => false,
                };
                if same {
                    continue;
                }
            }
            if !self.writable_chunk(inner, a) {
                continue;
            }
            // SAFETY: the chunk's shadow page is private and writable.
            unsafe { core::ptr::write_bytes(r.shadow_of(a) as *mut u8, fill, e - a) };
            if poison {
                // Every slot touched takes the origin, even an unknown one
                // (so no slot keeps a stale one).
                self.write_origins(inner, a, e, o);
                continue;
            }
            if !self.page_of(place).is_some_and(|(_, p)| p.origin_private) {
                // Page-wide origin: initialized slots keep none.
                continue;
            }
            let mut slot = a & !3;
            while slot < e {
                // SAFETY: the slot's 4 shadow bytes lie in the same private
                // page (pages are 4-aligned).
                let word = unsafe { core::ptr::read_volatile(r.shadow_of(slot) as *const u32) };
                if word == 0 {
                    self.write_origin(inner, slot, NO_ORIGIN);
                }
                slot += 4;
            }
        }
    }

    /// Whether every byte of `[addr, addr + size)` is initialized.
    pub(crate) fn all_init(&self, addr: usize, size: usize) -> bool {
        for (a0, e0) in self.meta_chunks(addr, size) {
            let Some(a) = self.canon(a0) else { continue };
            let e = a + (e0 - a0);
            let Some((r, p)) = self.page_of(self.place(a)) else { continue };
            match p.backing {
                // (KASAN's kinds never back KMSAN metadata.)
                Backing::INIT | Backing::Unchecked | Backing::Consult | Backing::VmallocInvalid => continue,
                Backing::UNINIT => return false,
                Backing::Private => {
                    // SAFETY: private shadow pages are mapped and readable.
                    let sh = unsafe { core::slice::from_raw_parts(r.shadow_of(a) as *const u8, e - a) };
                    if sh.iter().any(|&b| b != 0) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Mark `[addr, addr + size)` initialized (`kmsan_unpoison_memory`).
    pub fn unpoison_memory(&self, addr: usize, size: usize) {
        if !self.on() {
            return;
        }
        let mut inner = self.inner.lock();
        self.set_range(&mut inner, addr, size, false, NO_ORIGIN);
    }

    /// Mark `[addr, addr + size)` uninitialized, created here
    /// (`kmsan_poison_memory`).
    pub fn poison_memory(&self, addr: usize, size: usize) {
        if !self.on() {
            return;
        }
        let mut inner = self.inner.lock();
        let o = self.new_origin(&mut inner, false);
        self.set_range(&mut inner, addr, size, true, o);
    }

    /// The metadata side of `memset(dst, _, n)`: the bytes are initialized.
    pub fn memset_meta(&self, dst: usize, n: usize) {
        self.unpoison_memory(dst, n);
    }

    /// The metadata side of `memcpy`/`memmove(dst, src, n)` (overlap allowed).
    pub fn copy_meta(&self, dst: usize, src: usize, n: usize) {
        if !self.on() || n == 0 || dst == src {
            return;
        }
        // No copy is larger than RAM (a larger size is a caller's bug).
        let n = n.min(self.layout.direct_map.data.len());
        let mut inner = self.inner.lock();
        if self.all_init(src, n) {
            self.set_range(&mut inner, dst, n, false, NO_ORIGIN);
            return;
        }
        // Make every destination page writable first, then copy byte by
        // byte (backwards when the destination is above the source).
        for (a, _) in self.meta_chunks(dst, n) {
            if let Some(c) = self.canon(a) {
                self.writable_chunk(&mut inner, c);
            }
        }
        let mut cache: (Origin, Origin) = (NO_ORIGIN, NO_ORIGIN);
        let step = |i: usize, inner: &mut KInner<M>, cache: &mut (Origin, Origin)| {
            let s = src.wrapping_add(i);
            let sh = self.shadow_at(s);
            let Some(d) = self.canon(dst.wrapping_add(i)) else { return };
            let Some((r, p)) = self.page_of(self.place(d)) else { return };
            if p.backing != Backing::Private {
                return;
            }
            // SAFETY: the destination page is private (checked above).
            unsafe { core::ptr::write_volatile(r.shadow_of(d) as *mut u8, sh) };
            let slot = d & !3;
            if sh != 0 {
                let so = self.origin_at(s);
                let o = if so == cache.0 && so != NO_ORIGIN {
                    cache.1
                } else {
                    let c = self.chain(inner, so);
                    let c = if c == NO_ORIGIN { so } else { c };
                    *cache = (so, c);
                    c
                };
                self.write_origin(inner, slot, o);
            } else {
                // SAFETY: the slot's shadow lies in the same private page.
                let word = unsafe { core::ptr::read_volatile(r.shadow_of(slot) as *const u32) };
                if word == 0 {
                    self.write_origin(inner, slot, NO_ORIGIN);
                }
            }
        };
        if dst > src {
            for i in (0..n).rev() {
                step(i, &mut inner, &mut cache);
            }
        } else {
            for i in 0..n {
                step(i, &mut inner, &mut cache);
            }
        }
    }

    /// Check that `[addr, addr + size)` is initialized; report each run of
    /// uninitialized bytes that share an origin (`kmsan_check_memory`).
    /// `ip` is the caller (the report's title). Returns the first bug.
    pub fn check_memory(&self, addr: usize, size: usize, ip: usize) -> Result<(), Bug> {
        if !self.on() || size == 0 {
            return Ok(());
        }
        let mut first = None;
        // A run of uninitialized bytes with one origin: (start, origin).
        let mut run: Option<(usize, Origin)> = None;
        let mut next = addr;
        // End the run (if any) before index `stop` (exclusive).
        let end_run = |run: &mut Option<(usize, Origin)>, stop: usize, first: &mut Option<Bug>| {
            if let Some((start, ro)) = run.take() {
                let b = self.report_uninit(ro, ip, Some((addr, size, start, stop - 1)));
                first.get_or_insert(b);
            }
        };
        for (a, e) in self.meta_chunks(addr, size) {
            if a != next {
                // Memory without metadata in between: initialized.
                end_run(&mut run, next - addr, &mut first);
            }
            next = e;
            // Wholly initialized shared pages (or no metadata) at once.
            let page = self.canon(a).and_then(|c| self.page_of(self.place(c)));
            if page.is_none_or(|(_, p)| matches!(p.backing, Backing::INIT | Backing::Unchecked)) {
                end_run(&mut run, a - addr, &mut first);
                continue;
            }
            // Initialized bytes at the chunk's start, eight shadow bytes a
            // load: a page-sized check of initialized private metadata
            // (`full`, or a private page in `hybrid`) costs 512 loads, not
            // 4096 shadow lookups.
            let start = a + self.initialized_prefix(a, e);
            if start != a {
                end_run(&mut run, a - addr, &mut first);
            }
            for x in start..e {
                let i = x - addr;
                let sh = self.shadow_at(x);
                let o = if sh != 0 { self.origin_at(x) } else { NO_ORIGIN };
                match run {
                    Some((_, ro)) if sh == 0 || o != ro => {
                        end_run(&mut run, i, &mut first);
                        if sh != 0 {
                            run = Some((i, o));
                        }
                    }
                    None if sh != 0 => run = Some((i, o)),
                    _ => {}
                }
            }
        }
        end_run(&mut run, next - addr, &mut first);
        match first {
            Some(b) => Err(b),
            None => Ok(()),
        }
    }

    /// How many bytes from `a` on, inside the page chunk `[a, e)`, have
    /// zero shadow, counted in whole 8-byte words of shadow (a word with a
    /// set byte, or the unaligned ends, stop the count: the caller looks
    /// at those byte by byte).
    fn initialized_prefix(&self, a: usize, e: usize) -> usize {
        let Some(c) = self.canon(a) else { return 0 };
        let Some(r) = self.layout.region_of(c) else { return 0 };
        let sh = r.shadow_of(c);
        let mut n = 0;
        // The chunk lies in one page, so its shadow is `e - a` bytes from `sh`.
        while sh.wrapping_add(n) % 8 == 0 && n + 8 <= e - a {
            // SAFETY: every shadow page of a region is mapped from init on
            // (shared or private); [sh + n, sh + n + 8) lies in the shadow
            // of this chunk's page, and is 8-aligned.
            if unsafe { core::ptr::read_volatile((sh + n) as *const u64) } != 0 {
                break;
            }
            n += 8;
        }
        n
    }

    /// The compiler found a use of an uninitialized value whose origin is
    /// `o` in the code at `ip` (`__msan_warning`).
    pub fn warning(&self, o: Origin, ip: usize) -> Bug {
        self.report_uninit(o, ip, None)
    }

    /// `__msan_chain_origin`: the origin of a value being stored, with the
    /// storing stack linked in front.
    pub fn chain_origin(&self, o: Origin) -> Origin {
        if !self.on() || o == NO_ORIGIN {
            return o;
        }
        let mut inner = self.inner.lock();
        self.chain(&mut inner, o)
    }

    /// `__msan_poison_alloca`: local variable `name` at `[addr, addr + size)`
    /// starts uninitialized; `pc` is the function creating it, `pc2` its
    /// caller (0 when unknown).
    pub fn poison_alloca(&self, addr: usize, size: usize, name: &'static [u8], pc: usize, pc2: usize) {
        if !self.on() {
            return;
        }
        let mut inner = self.inner.lock();
        let o = self.alloca_origin(&mut inner, name, pc, pc2);
        self.set_range(&mut inner, addr, size, true, o);
    }

    /// `__msan_unpoison_alloca`.
    pub fn unpoison_alloca(&self, addr: usize, size: usize) {
        self.unpoison_memory(addr, size);
    }

    /// `__msan_instrument_asm_store`: inline assembly may have written
    /// `[addr, addr + size)`; treat it as initialized (sizes above 512 are
    /// taken as 8, as Linux does for bogus sizes).
    pub fn asm_store(&self, addr: usize, size: usize) {
        let size = if size > 512 { 8 } else { size };
        self.unpoison_memory(addr, size);
    }
}
