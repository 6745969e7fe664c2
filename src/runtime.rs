//! The runtime object: init, and the machinery that keeps each shadow page
//! backed by the right page.
//!
//! Direct map, one shadow page per 32 KiB block of 8 data pages:
//!
//! ```text
//!   per-page states of the block      backing of its shadow page
//!   all Free                      ──► shared 0xFF page      (one load, reports UAF)
//!   all Valid/Unchecked           ──► shared zero page      (one load, passes)
//!   Free and Valid mixed          ──► shared CONSULT page   (slow path: per-page)
//!     ... and hot (adaptive)      ──► private page          (after PROMOTE_AFTER slow checks)
//!                                     (`kasan.mixed=private`: always private;
//!                                      `kasan.mixed=consult`: never)
//!   any Tracked                   ──► private page          (one load, byte precise)
//!   full mode                     ──► private page always   (mapped at init)
//! ```
//!
//! A block goes private when its first page becomes tracked and back to a
//! shared page when its last tracked page goes (dynamic shadow free). If no
//! frame is left for a private page, its tracked pages become `Unchecked`:
//! they read as valid, nothing is falsely reported, and the event is counted.
//!
//! vmalloc window: one reference count per block; a block's shadow page is
//! private while an area touches it and the shared 0xF8 page otherwise.
//! Kernel image: private from init (globals, boot stack).

use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::cache::Caches;
use crate::config::{Config, MixedBlocks, Mode, PROMOTE_AFTER};
use crate::depot::StackDepot;
use crate::error::InitError;
use crate::layout::{Layout, Region, BLOCK_SIZE, PAGES_PER_BLOCK};
use crate::mapper::{ShadowMapper, SharedPage, PAGE_SIZE};
use crate::page_state::{PageArray, PageInfo, PageState};
use crate::platform::Platform;
use crate::quarantine::Quarantine;
use crate::shadow::{GRANULE, PAGE_FREE};
use crate::stats::{Stats, StatsSnapshot};

/// How a direct-map block's shadow page is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Backing {
    /// The shared zero page.
    Zero = 0,
    /// The shared 0xFF page.
    Free = 1,
    /// The shared CONSULT page.
    Consult = 2,
    /// A private page.
    Private = 3,
}

impl Backing {
    fn from_u8(v: u8) -> Backing {
        match v {
            0 => Backing::Zero,
            1 => Backing::Free,
            2 => Backing::Consult,
            _ => Backing::Private,
        }
    }
    fn shared(self) -> Option<SharedPage> {
        match self {
            Backing::Zero => Some(SharedPage::Zero),
            Backing::Free => Some(SharedPage::PageFree),
            Backing::Consult => Some(SharedPage::Consult),
            Backing::Private => None,
        }
    }
}

/// What the compiler ABI's fast path needs to decide a CONSULT byte
/// without leaving it: the per-page array, the adaptive hit counters and
/// the slow-path counters. See [`Kasan::consult_view`].
pub struct ConsultView {
    pages: &'static [AtomicU8],
    hits: &'static [AtomicU8],
    dm_base: usize,
    adaptive: bool,
    slow: &'static AtomicUsize,
    clean: &'static AtomicUsize,
}

impl ConsultView {
    /// The granule at `addr` read CONSULT: `Some(true)` when its page is
    /// allocated (counted as a clean slow-path check), `None` when the full
    /// slow path must decide (free page, or a block due for promotion).
    #[inline(always)]
    pub fn valid(&self, addr: usize) -> Option<bool> {
        let pfn = addr.wrapping_sub(self.dm_base) >> 12;
        let page = self.pages.get(pfn)?.load(Relaxed);
        if page & 3 == PageState::Free as u8 {
            return None;
        }
        if self.adaptive {
            let h = &self.hits[pfn / PAGES_PER_BLOCK];
            let v = h.load(Relaxed);
            if v < PROMOTE_AFTER {
                h.store(v + 1, Relaxed);
            } else if v == PROMOTE_AFTER {
                return None;
            }
        }
        // Plain load/store, not an atomic add: this is the hot path of mixed
        // blocks; on SMP a racing increment may be lost (statistics only).
        self.slow.store(self.slow.load(Relaxed) + 1, Relaxed);
        self.clean.store(self.clean.load(Relaxed) + 1, Relaxed);
        Some(true)
    }
}

/// A vmalloc block's reference count has this bit when its shadow could
/// not be made private (unchecked, mapped to the zero page).
pub(crate) const VM_UNCHECKED: u16 = 0x8000;

/// `hits` value of a mixed block promoted to a private shadow page.
pub(crate) const HOT: u8 = 0xFF;
/// `hits` value of a hot mixed block queued for promotion.
pub(crate) const PENDING: u8 = 0xFE;
/// `hits` value of a hot mixed block refused for want of budget.
pub(crate) const DENIED: u8 = 0xFD;

/// State changed only under the lock.
pub(crate) struct Inner<M> {
    pub(crate) mapper: M,
    pub(crate) caches: Caches,
    pub(crate) quarantine: Quarantine,
    pub(crate) depot: StackDepot,
    /// Hot mixed blocks waiting for a private page (adaptive): promoted at
    /// the next hook that may allocate frames, never inside a check.
    pub(crate) pending: arrayvec::ArrayVec<u32, 64>,
}

/// The sanitizer runtime.
pub struct Kasan<M: ShadowMapper, P: Platform> {
    pub(crate) cfg: Config,
    pub(crate) layout: Layout,
    pub(crate) pages: PageArray,
    /// [`Backing`] per direct-map block (read lock-free by shadow writers).
    pub(crate) blocks: &'static [AtomicU8],
    /// Reference count per vmalloc block.
    pub(crate) vm_refs: &'static [AtomicU16],
    /// Per direct-map block: slow-path checks taken while CONSULT (up to
    /// `PROMOTE_AFTER`), or `HOT` once promoted to a private page.
    pub(crate) hits: &'static [AtomicU8],
    pub(crate) inner: spin::Mutex<Inner<M>>,
    pub(crate) platform: P,
    pub(crate) stats: Stats,
    pub(crate) reported: AtomicBool,
    /// Non-zero while the runtime itself runs code that may be checked
    /// (printing a report through the platform): checks then pass.
    pub(crate) busy: AtomicUsize,
}

/// Carve `n` bytes aligned to `align` off the front of `rest`.
fn take(rest: &mut &'static mut [u8], n: usize, align: usize) -> Option<&'static mut [u8]> {
    let pad = (rest.as_ptr() as usize).wrapping_neg() & (align - 1);
    if rest.len() < pad + n {
        return None;
    }
    let all = core::mem::take(rest);
    let (_, all) = all.split_at_mut(pad);
    let (head, tail) = all.split_at_mut(n);
    *rest = tail;
    Some(head)
}

fn atomics_u8(mem: &'static mut [u8], init: u8) -> &'static [AtomicU8] {
    mem.fill(init);
    // SAFETY: AtomicU8 has u8's layout; the exclusive borrow is given up.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().cast::<AtomicU8>(), mem.len()) }
}

fn atomics_u16(mem: &'static mut [u8]) -> &'static [AtomicU16] {
    mem.fill(0);
    // SAFETY: `take` aligned `mem` to 2; AtomicU16 has u16's layout and
    // all-zero bytes are a valid value; the exclusive borrow is given up.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().cast::<AtomicU16>(), mem.len() / 2) }
}

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Bytes of metadata arena [`Kasan::new`] needs for this layout and config.
    #[must_use]
    pub fn arena_bytes(layout: &Layout, cfg: &Config) -> usize {
        let depot = StackDepot::bytes_for(cfg.depot_capacity(layout.ram_pages())) + 16;
        if cfg.mode == Mode::Off {
            return depot;
        }
        let pages = layout.ram_pages();
        PageArray::bytes_for(pages)
            + 2 * pages.div_ceil(PAGES_PER_BLOCK)
            + 2 * (layout.vmalloc.len() / BLOCK_SIZE)
            + depot
            + 16
    }

    /// Start the runtime: map the initial shadow and set every RAM page free.
    ///
    /// `arena` must hold [`Kasan::arena_bytes`] bytes; it becomes the
    /// per-page array, the block tables and the stack depot. In `off` mode
    /// nothing is mapped and every check passes.
    pub fn new(
        cfg: Config,
        layout: Layout,
        mapper: M,
        platform: P,
        arena: &'static mut [u8],
    ) -> Result<Self, InitError> {
        layout.validate().map_err(InitError::Layout)?;
        let mut rest = arena;
        let off = cfg.mode == Mode::Off;
        let pages_n = if off { 0 } else { layout.ram_pages() };
        let blocks_n = pages_n.div_ceil(PAGES_PER_BLOCK);
        let vm_n = if off { 0 } else { layout.vmalloc.len() / BLOCK_SIZE };
        let stacks = cfg.depot_capacity(layout.ram_pages());
        let page_mem = take(&mut rest, pages_n, 1).ok_or(InitError::ArenaTooSmall)?;
        let block_mem = take(&mut rest, blocks_n, 1).ok_or(InitError::ArenaTooSmall)?;
        let hits_mem = take(&mut rest, blocks_n, 1).ok_or(InitError::ArenaTooSmall)?;
        let vm_mem = take(&mut rest, vm_n * 2, 2).ok_or(InitError::ArenaTooSmall)?;
        let depot_len = StackDepot::bytes_for(stacks);
        let depot_mem = take(&mut rest, depot_len, 8).ok_or(InitError::ArenaTooSmall)?;
        let depot = StackDepot::new(depot_mem, stacks).ok_or(InitError::ArenaTooSmall)?;

        let ram = layout.direct_map.len();
        let quarantine = Quarantine::new(cfg.quarantine_bytes.unwrap_or(ram / 32));
        let initial = if cfg.mode == Mode::Full { Backing::Private } else { Backing::Free };
        let kasan = Kasan {
            cfg,
            layout,
            pages: PageArray::new(page_mem, layout.direct_map.start),
            blocks: atomics_u8(block_mem, initial as u8),
            vm_refs: atomics_u16(vm_mem),
            hits: atomics_u8(hits_mem, 0),
            inner: spin::Mutex::new(Inner { mapper, caches: Caches::new(), quarantine, depot, pending: arrayvec::ArrayVec::new() }),
            platform,
            stats: Stats::default(),
            reported: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        };
        kasan.stats.per_page_bytes.store(pages_n, Relaxed);
        kasan.stats.block_table_bytes.store(2 * blocks_n + vm_n * 2, Relaxed);
        kasan.stats.depot_bytes.store(if off { 0 } else { depot_len }, Relaxed);
        if !off {
            kasan.map_initial_shadow()?;
        }
        Ok(kasan)
    }

    fn map_initial_shadow(&self) -> Result<(), InitError> {
        let l = &self.layout;
        let mut inner = self.inner.lock();
        let m = &mut inner.mapper;
        let map = InitError::Map;
        // Zero under the gaps of `covered` between the three regions.
        let mut regions = [l.direct_map, l.vmalloc, l.image];
        regions.sort_unstable_by_key(|r| r.start);
        let mut cursor = l.covered.start;
        for r in regions.iter().chain(core::iter::once(&Region { start: l.covered.end, end: l.covered.end })) {
            if r.start > cursor {
                let gap = Region { start: cursor, end: r.start };
                m.map_shared_range(self.shadow_start(gap), self.shadow_end(gap), SharedPage::Zero)
                    .map_err(map)?;
            }
            cursor = cursor.max(r.end);
        }
        let vm = l.shadow_of(l.vmalloc);
        m.map_shared_range(vm.start, vm.end, SharedPage::VmallocInvalid).map_err(map)?;
        let dm = l.shadow_of(l.direct_map);
        let mut private = 0;
        if self.cfg.mode == Mode::Full {
            for page in (dm.start..dm.end).step_by(PAGE_SIZE) {
                m.map_private(page, PAGE_FREE).map_err(map)?.flush(m);
                private += 1;
            }
        } else {
            m.map_shared_range(dm.start, dm.end, SharedPage::PageFree).map_err(map)?;
        }
        let img = l.shadow_of(l.image);
        for page in (img.start..img.end).step_by(PAGE_SIZE) {
            m.map_private(page, 0).map_err(map)?.flush(m);
            private += 1;
        }
        self.stats.init_shadow_pages.store(private, Relaxed);
        Ok(())
    }

    fn shadow_start(&self, r: Region) -> usize {
        self.layout.mem_to_shadow(r.start) & !(PAGE_SIZE - 1)
    }

    fn shadow_end(&self, r: Region) -> usize {
        (self.layout.mem_to_shadow(r.end - 1) | (PAGE_SIZE - 1)) + 1
    }

    /// The view the ABI's fast path uses to settle CONSULT bytes inline.
    #[must_use]
    pub fn consult_view(&'static self) -> ConsultView {
        ConsultView {
            pages: self.pages.atomics(),
            hits: self.hits,
            dm_base: self.layout.direct_map.start,
            adaptive: self.cfg.mixed == MixedBlocks::Adaptive,
            slow: &self.stats.slow_path_checks,
            clean: &self.stats.checks_slow_clean,
        }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The address-space layout.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The platform the runtime reports through.
    #[must_use]
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The per-page shadow.
    #[must_use]
    pub fn pages(&self) -> &PageArray {
        &self.pages
    }

    /// A copy of the statistics.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        let tables = self.inner.lock().mapper.table_bytes();
        self.stats.snapshot(tables)
    }

    /// Backing of the direct-map block holding frame `pfn`.
    #[must_use]
    pub fn backing_of_pfn(&self, pfn: usize) -> Backing {
        Backing::from_u8(self.blocks[pfn / PAGES_PER_BLOCK].load(Relaxed))
    }

    /// Whether the shadow byte of `addr` lives in a private (writable) page.
    #[must_use]
    pub fn shadow_writable(&self, addr: usize) -> bool {
        let l = &self.layout;
        if let Some(pfn) = self.pages.pfn(addr) {
            return self.backing_of_pfn(pfn) == Backing::Private;
        }
        if l.vmalloc.contains(addr) {
            let r = self.vm_refs[(addr - l.vmalloc.start) / BLOCK_SIZE].load(Relaxed);
            return r != 0 && r & VM_UNCHECKED == 0;
        }
        l.image.contains(addr)
    }

    /// Read the raw shadow byte of `addr` (must be covered).
    #[inline(always)]
    pub(crate) fn shadow_byte(&self, addr: usize) -> u8 {
        let s = self.layout.mem_to_shadow(addr);
        // SAFETY: the caller checked that `addr` is covered, and every
        // covered address has a mapped shadow page (init mapped them all).
        unsafe { core::ptr::read_volatile(s as *const u8) }
    }

    /// Write `value` to the shadow of the granules in `[start, end)`
    /// (`start` granule aligned), skipping shadow pages that are not
    /// private (unchecked memory keeps reading as valid).
    pub(crate) fn fill_shadow(&self, start: usize, end: usize, value: u8) {
        let mut a = start;
        while a < end {
            // stop at the next block (one shadow page) boundary
            let chunk_end = ((a / BLOCK_SIZE) + 1) * BLOCK_SIZE;
            let e = end.min(chunk_end);
            if self.shadow_writable(a) {
                let s = self.layout.mem_to_shadow(a);
                let n = (e - a).div_ceil(GRANULE);
                // SAFETY: the shadow page of [a, e) is private and mapped
                // (shadow_writable), and [s, s + n) stays inside it.
                unsafe { core::ptr::write_bytes(s as *mut u8, value, n) };
            }
            a = e;
        }
    }

    /// Make `[addr, addr + size)` accessible (`addr` granule aligned): full
    /// granules 0, a partial last granule its byte count.
    pub(crate) fn unpoison(&self, addr: usize, size: usize) {
        let full = size & !(GRANULE - 1);
        self.fill_shadow(addr, addr + full, 0);
        if size & (GRANULE - 1) != 0 {
            self.fill_shadow(addr + full, addr + full + 1, (size & (GRANULE - 1)) as u8);
        }
    }

    /// Set the per-page state of `count` frames from `pfn` and bring the
    /// blocks' shadow in line. Frames that get no private shadow go
    /// `Unchecked`. Returns whether every tracked frame got byte shadow.
    pub(crate) fn set_pages(
        &self,
        inner: &mut Inner<M>,
        pfn: usize,
        count: usize,
        info: impl Fn(usize) -> PageInfo,
    ) -> bool {
        for i in 0..count {
            let old = self.pages.get(pfn + i);
            let new = info(i);
            if old.state == PageState::Unchecked {
                self.stats.unchecked_pages.fetch_sub(1, Relaxed);
            }
            self.pages.set(pfn + i, new);
        }
        let mut all_ok = true;
        if !inner.pending.is_empty() {
            self.promote_pending(inner);
        }
        let first = pfn / PAGES_PER_BLOCK;
        let last = (pfn + count - 1) / PAGES_PER_BLOCK;
        for b in first..=last {
            let lo = (b * PAGES_PER_BLOCK).max(pfn);
            let hi = ((b + 1) * PAGES_PER_BLOCK).min(pfn + count);
            all_ok &= self.sync_block(inner, b, lo, hi);
        }
        all_ok
    }

    /// Desired shared backing of block `b` ignoring tracked pages.
    fn shared_backing(&self, b: usize) -> Backing {
        let (mut free, mut used) = (false, false);
        for pfn in b * PAGES_PER_BLOCK..((b + 1) * PAGES_PER_BLOCK).min(self.pages.len()) {
            match self.pages.get(pfn).state {
                PageState::Free => free = true,
                _ => used = true,
            }
        }
        match (free, used) {
            (true, false) => Backing::Free,
            (false, _) => Backing::Zero,
            (true, true) => Backing::Consult,
        }
    }

    /// Write the shadow of frame `pfn` from its state, in a private block.
    /// Tracked frames are left to the caller's poisoning.
    fn write_page_shadow(&self, pfn: usize, fresh: bool) {
        let addr = self.pages.addr(pfn);
        match self.pages.get(pfn).state {
            PageState::Free => self.fill_shadow(addr, addr + PAGE_SIZE, PAGE_FREE),
            PageState::Valid | PageState::Unchecked => self.fill_shadow(addr, addr + PAGE_SIZE, 0),
            PageState::Tracked => {
                if fresh {
                    self.fill_shadow(addr, addr + PAGE_SIZE, 0);
                }
            }
        }
    }

    /// Bring block `b`'s backing in line after frames `[lo, hi)` changed.
    fn sync_block(&self, inner: &mut Inner<M>, b: usize, lo: usize, hi: usize) -> bool {
        let spage = self.layout.mem_to_shadow(self.pages.addr(b * PAGES_PER_BLOCK));
        let cur = Backing::from_u8(self.blocks[b].load(Relaxed));
        let range = b * PAGES_PER_BLOCK..((b + 1) * PAGES_PER_BLOCK).min(self.pages.len());
        let tracked = range.clone().any(|p| self.pages.get(p).state == PageState::Tracked);
        let mixed = self.shared_backing(b) == Backing::Consult;
        if !mixed {
            self.cool(b);
        }
        let mixed_private = mixed
            && match self.cfg.mixed {
                MixedBlocks::Private => true,
                MixedBlocks::Consult => false,
                MixedBlocks::Adaptive => self.hits[b].load(Relaxed) == HOT,
            };
        let mut ok = true;
        if self.cfg.mode == Mode::Full || tracked || mixed_private {
            if cur == Backing::Private {
                for pfn in lo..hi {
                    self.write_page_shadow(pfn, false);
                }
                return true;
            }
            match inner.mapper.map_private(spage, 0) {
                Ok(f) => {
                    f.flush(&mut inner.mapper);
                    self.stats.ondemand_inc();
                    self.blocks[b].store(Backing::Private as u8, Relaxed);
                    for pfn in range {
                        self.write_page_shadow(pfn, true);
                    }
                    return true;
                }
                Err(_) => {
                    // No frame: the tracked pages of this block go unchecked.
                    for pfn in range {
                        let mut i = self.pages.get(pfn);
                        if i.state == PageState::Tracked {
                            i.state = PageState::Unchecked;
                            self.pages.set(pfn, i);
                            self.stats.unchecked_pages.fetch_add(1, Relaxed);
                            Stats::bump(&self.stats.unchecked_events);
                        }
                    }
                    ok = false;
                }
            }
        }
        let want = self.shared_backing(b);
        if want != cur {
            let kind = want.shared().expect("shared backing");
            match inner.mapper.map_shared(spage, kind) {
                Ok(f) => {
                    f.flush(&mut inner.mapper);
                    if cur == Backing::Private {
                        self.stats.ondemand_dec();
                    }
                    self.blocks[b].store(want as u8, Relaxed);
                }
                Err(_) => {
                    // Keep the old (still consistent for the pages that did
                    // not change) backing; a private page stays writable.
                    if cur == Backing::Private {
                        for pfn in lo..hi {
                            self.write_page_shadow(pfn, false);
                        }
                    }
                    return false;
                }
            }
        }
        ok
    }

    /// A check took the slow path on a CONSULT byte at `addr`: count it
    /// against its block and, under `MixedBlocks::Adaptive`, queue the block
    /// for a private page once it is hot. A check never maps anything
    /// itself: it may run inside the page allocator (whose frames the
    /// mapper takes), so the mapping waits for [`Kasan::promote_pending`]
    /// in a hook. Never waits for the lock either: if it is taken, a later
    /// check queues the block.
    pub(crate) fn note_consult(&self, addr: usize) {
        if self.cfg.mixed != MixedBlocks::Adaptive {
            return;
        }
        let Some(pfn) = self.pages.pfn(addr) else { return };
        let b = pfn / PAGES_PER_BLOCK;
        let h = self.hits[b].load(Relaxed);
        if h < PROMOTE_AFTER {
            self.hits[b].store(h + 1, Relaxed);
        } else if h == PROMOTE_AFTER {
            if let Some(mut inner) = self.inner.try_lock() {
                if inner.pending.try_push(b as u32).is_ok() {
                    self.hits[b].store(PENDING, Relaxed);
                }
            }
        }
    }

    /// Map private shadow under the queued hot mixed blocks that are still
    /// mixed. Called from the page hooks: the kernel's page allocator is
    /// consistent whenever a hook runs (it may hand out shadow frames).
    pub(crate) fn promote_pending(&self, inner: &mut Inner<M>) {
        while let Some(b) = inner.pending.pop() {
            let b = b as usize;
            if self.hits[b].load(Relaxed) != PENDING {
                continue;
            }
            if self.shared_backing(b) != Backing::Consult {
                self.hits[b].store(0, Relaxed);
                continue;
            }
            if self.stats.promoted_live.load(Relaxed) >= self.cfg.promote_budget(self.pages.len()) {
                self.hits[b].store(DENIED, Relaxed);
                Stats::bump(&self.stats.promotions_denied);
                continue;
            }
            self.hits[b].store(HOT, Relaxed);
            self.stats.promoted_live.fetch_add(1, Relaxed);
            let first = b * PAGES_PER_BLOCK;
            if self.sync_block(inner, b, first, first) && self.backing_of_pfn(first) == Backing::Private {
                Stats::bump(&self.stats.promotions);
            }
        }
    }

    /// Forget block `b`'s heat (it stopped being mixed, or shrink).
    fn cool(&self, b: usize) {
        match self.hits[b].load(Relaxed) {
            0 => {}
            HOT => {
                self.hits[b].store(0, Relaxed);
                self.stats.promoted_live.fetch_sub(1, Relaxed);
            }
            _ => self.hits[b].store(0, Relaxed),
        }
    }

    /// Shrinker: give back the private pages of promoted mixed blocks (they
    /// are a cache of the per-page shadow; the blocks fall back to CONSULT
    /// and may be promoted again when hot). Returns the pages released.
    pub fn shrink(&self) -> usize {
        if self.cfg.mode != Mode::Hybrid {
            return 0;
        }
        let mut inner = self.inner.lock();
        inner.pending.clear();
        let before = self.stats.ondemand_live.load(Relaxed);
        for b in 0..self.hits.len() {
            let hot = self.hits[b].load(Relaxed) == HOT;
            self.cool(b);
            if hot {
                let first = b * PAGES_PER_BLOCK;
                self.sync_block(&mut inner, b, first, first);
            }
        }
        before.saturating_sub(self.stats.ondemand_live.load(Relaxed))
    }

    /// Take one reference on each vmalloc block of `[start, end)`, mapping
    /// private shadow filled with `fill` where a block gets its first.
    pub(crate) fn vm_get(&self, inner: &mut Inner<M>, start: usize, end: usize, fill: u8) -> bool {
        let l = &self.layout;
        let mut ok = true;
        for b in (start - l.vmalloc.start) / BLOCK_SIZE..(end - l.vmalloc.start).div_ceil(BLOCK_SIZE) {
            let r = self.vm_refs[b].load(Relaxed);
            if r & !VM_UNCHECKED == 0 {
                let spage = l.mem_to_shadow(l.vmalloc.start + b * BLOCK_SIZE);
                match inner.mapper.map_private(spage, fill) {
                    Ok(f) => {
                        f.flush(&mut inner.mapper);
                        self.stats.ondemand_inc();
                        self.vm_refs[b].store(1, Relaxed);
                    }
                    Err(_) => {
                        // The 0xF8 page would report every access: map zero.
                        if let Ok(f) = inner.mapper.map_shared(spage, SharedPage::Zero) {
                            f.flush(&mut inner.mapper);
                        }
                        self.vm_refs[b].store(1 | VM_UNCHECKED, Relaxed);
                        Stats::bump(&self.stats.unchecked_events);
                        ok = false;
                    }
                }
            } else {
                if r & VM_UNCHECKED != 0 {
                    ok = false;
                }
                self.vm_refs[b].store(r + 1, Relaxed);
            }
        }
        ok
    }

    /// Drop one reference on each vmalloc block of `[start, end)`, returning
    /// the private shadow of blocks nobody uses any more.
    pub(crate) fn vm_put(&self, inner: &mut Inner<M>, start: usize, end: usize) {
        let l = &self.layout;
        for b in (start - l.vmalloc.start) / BLOCK_SIZE..(end - l.vmalloc.start).div_ceil(BLOCK_SIZE) {
            let r = self.vm_refs[b].load(Relaxed);
            let count = r & !VM_UNCHECKED;
            if count == 0 {
                continue;
            }
            if count > 1 {
                self.vm_refs[b].store(r - 1, Relaxed);
                continue;
            }
            let spage = l.mem_to_shadow(l.vmalloc.start + b * BLOCK_SIZE);
            // If remapping fails the private page stays (already poisoned
            // 0xF8 by the caller); a later map over it releases its frame.
            if let Ok(f) = inner.mapper.map_shared(spage, SharedPage::VmallocInvalid) {
                f.flush(&mut inner.mapper);
            }
            if r & VM_UNCHECKED == 0 {
                self.stats.ondemand_dec();
            }
            self.vm_refs[b].store(0, Relaxed);
        }
    }
}

#[cfg(all(test, feature = "host"))]
mod tests {
    use super::*;
    use crate::host::sim::{SimConfig, SimKernel};
    use std::vec::Vec;

    /// Walk one block through every backing: free, consult, zero, private
    /// and back, checking the on-demand count at each step.
    #[test]
    fn block_backing_follows_page_states() {
        let k = &mut SimKernel::new(SimConfig::small(Mode::Hybrid)).unwrap();
        // skip the blocks the kmalloc caches' first pages may share
        let pad = k.alloc_pages(3).unwrap();
        let pages: Vec<usize> = (0..8).map(|_| k.alloc_pages(0).unwrap()).collect();
        let pfn = k.kasan.pages().pfn(pages[0]).unwrap();
        assert_eq!(pfn % 8, 0);
        let live = |k: &SimKernel| k.kasan.stats().ondemand_live_pages;
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Zero);
        k.free_pages(pages[7], 0).unwrap();
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Consult);
        let before = live(k);
        k.kasan.stack_alloc(pages[0], 0).unwrap();
        assert_eq!((k.kasan.backing_of_pfn(pfn), live(k)), (Backing::Private, before + 1));
        assert_eq!(k.kasan.effective_shadow(pages[7]), Some(crate::shadow::PAGE_FREE));
        assert_eq!(k.kasan.effective_shadow(pages[3]), Some(0));
        k.kasan.stack_free(pages[0], 0).unwrap();
        assert_eq!((k.kasan.backing_of_pfn(pfn), live(k)), (Backing::Consult, before));
        for &p in &pages[..7] {
            k.free_pages(p, 0).unwrap();
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Free);
        k.free_pages(pad, 3).unwrap();
    }

    #[test]
    fn adaptive_promotes_hot_mixed_blocks_at_the_next_hook() {
        let mut cfg = SimConfig::small(Mode::Hybrid);
        cfg.kasan.mixed = MixedBlocks::Adaptive;
        let k = &mut SimKernel::new(cfg).unwrap();
        let pad = k.alloc_pages(3).unwrap();
        let pages: Vec<usize> = (0..8).map(|_| k.alloc_pages(0).unwrap()).collect();
        let pfn = k.kasan.pages().pfn(pages[0]).unwrap();
        k.free_pages(pages[7], 0).unwrap();
        let slow = |k: &SimKernel| k.kasan.stats().slow_path_checks;
        for _ in 0..=PROMOTE_AFTER {
            k.read(pages[1], 8).unwrap();
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Consult, "a check never maps");
        let stack = k.stack_alloc().unwrap(); // any page hook promotes
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
        assert_eq!(k.kasan.stats().promotions, 1);
        let before = slow(k);
        k.read(pages[1], 8).unwrap();
        assert_eq!(slow(k), before, "the hot block is on the fast path now");
        assert_eq!(k.read_bug(pages[7], 1), Some(crate::report::BugType::UseAfterFree));
        k.take_log();
        let live = k.kasan.stats().ondemand_live_pages;
        assert_eq!(k.kasan.shrink(), 1, "the shrinker returns the promoted page");
        assert_eq!((k.kasan.backing_of_pfn(pfn), k.kasan.stats().ondemand_live_pages), (Backing::Consult, live - 1));
        assert_eq!(k.read_bug(pages[7], 1), Some(crate::report::BugType::UseAfterFree));
        k.take_log();
        for &p in &pages[..7] {
            k.free_pages(p, 0).unwrap();
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Free, "no longer mixed: shadow page returned");
        k.stack_free(stack).unwrap();
        k.free_pages(pad, 3).unwrap();
        assert_eq!(k.kasan.stats().ondemand_live_pages, 0);
    }

    #[test]
    fn full_mode_blocks_stay_private() {
        let k = &mut SimKernel::new(SimConfig::small(Mode::Full)).unwrap();
        let p = k.alloc_pages(0).unwrap();
        let pfn = k.kasan.pages().pfn(p).unwrap();
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
        k.free_pages(p, 0).unwrap();
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
        assert_eq!(k.kasan.effective_shadow(p), Some(crate::shadow::PAGE_FREE));
        assert_eq!(k.kasan.stats().ondemand_live_pages, 0);
    }
}
