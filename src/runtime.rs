//! The runtime object: its state, init (the initial shadow mapping) and
//! shadow writes. Which page backs each shadow page, and when it changes,
//! is [`crate::backing`]'s concern (KASAN's decisions: [`crate::backing::kasan`]):
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

use crate::arena::{atomics_u16, atomics_u8, take};
use crate::backing::Backing;
use crate::cache::Caches;
use crate::config::{Config, MixedBlocks, Mode, PROMOTE_AFTER};
use crate::depot::StackDepot;
use crate::error::InitError;
use crate::hooks::GLOBAL_ALIGN;
use crate::layout::{Layout, Region, BLOCK_SIZE, PAGES_PER_BLOCK};
use crate::mapper::{ShadowMapper, SharedPage, PAGE_SIZE};
use crate::page_state::{PageArray, PageState};
use crate::platform::Platform;
use crate::quarantine::Quarantine;
use crate::shadow::{GRANULE, PAGE_FREE};
use crate::stats::{Stats, StatsSnapshot};

/// What the compiler ABI's fast path needs to decide a CONSULT byte
/// without leaving it: the per-page array, the adaptive hit counters and
/// the slow-path counters. See [`Kasan::consult_view`]; the runtime's own
/// range check borrows one for the same rule ([`Kasan::consult_ok`]).
pub struct ConsultView<'a> {
    pages: &'a [AtomicU8],
    hits: &'a [AtomicU8],
    dm_base: usize,
    adaptive: bool,
    slow: &'a AtomicUsize,
    clean: &'a AtomicUsize,
}

impl ConsultView<'_> {
    /// The granule at `addr` read CONSULT: `Some(true)` when its page is
    /// allocated (counted as a clean slow-path check), so every granule of
    /// that page is accessible (the block's shadow page is the shared
    /// CONSULT page, one value for all of them); `None` when the full slow
    /// path must decide (free page, an address outside the array, or a
    /// block due for promotion).
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
                // Not a plain store: between the load and it, another CPU's
                // hook may mark the block HOT (promoted) or cool it to 0,
                // and a stale count written over HOT loses the promotion
                // (promoted_live never comes down, the shrinker skips the
                // page). A lost race only loses this one count.
                let _ = h.compare_exchange(v, v + 1, Relaxed, Relaxed);
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
    /// The heap's free lists ([`crate::heap`]).
    pub(crate) heap: crate::heap::HeapState,
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
    /// One bit per 32-byte slot ([`GLOBAL_ALIGN`]) of the image: set while a
    /// registered global's span (body and redzone) covers it (written under
    /// the lock).
    pub(crate) globals: &'static [AtomicU8],
    pub(crate) inner: crate::lock::RuntimeLock<Inner<M>>,
    pub(crate) platform: P,
    pub(crate) stats: Stats,
    pub(crate) reported: AtomicBool,
    /// The console, one report at a time; the checks of the CPU printing
    /// one pass (the printing code may be instrumented).
    pub(crate) report_lock: crate::report::ReportLock,
    /// Tracked regions ([`crate::region`]).
    pub(crate) regions: crate::region::Regions,
    /// The heap, once the kernel handed its range over ([`crate::heap`]).
    pub(crate) heap: spin::Once<crate::heap::HeapView>,
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
            + Self::globals_map_bytes(layout)
            + depot
            + 16
    }

    /// Bytes of the map of image slots ([`GLOBAL_ALIGN`] bytes each)
    /// claimed by registered globals: one bit per 32 bytes of the image.
    fn globals_map_bytes(layout: &Layout) -> usize {
        (layout.image.len() / GLOBAL_ALIGN).div_ceil(8)
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
        let globals_n = if off { 0 } else { Self::globals_map_bytes(&layout) };
        let globals_mem = take(&mut rest, globals_n, 1).ok_or(InitError::ArenaTooSmall)?;
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
            globals: atomics_u8(globals_mem, 0),
            inner: crate::lock::RuntimeLock::new(
                Inner { mapper, caches: Caches::new(), quarantine, depot, pending: arrayvec::ArrayVec::new(), heap: crate::heap::HeapState::new() },
                platform.lock_wait(),
            ),
            platform,
            stats: Stats::default(),
            reported: AtomicBool::new(false),
            report_lock: crate::report::ReportLock::default(),
            regions: crate::region::Regions::new(),
            heap: spin::Once::new(),
        };
        kasan.stats.per_page_bytes.store(pages_n, Relaxed);
        kasan.stats.block_table_bytes.store(2 * blocks_n + vm_n * 2, Relaxed);
        kasan.stats.depot_bytes.store(if off { 0 } else { depot_len }, Relaxed);
        kasan.stats.globals_map_bytes.store(globals_n, Relaxed);
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
        if !l.vmalloc.is_empty() {
            let vm = l.shadow_of(l.vmalloc);
            m.map_shared_range(vm.start, vm.end, SharedPage::VmallocInvalid).map_err(map)?;
        }
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

    /// [`ConsultView::valid`] with this runtime's tables: a CONSULT byte
    /// at `addr` reads as accessible (its page is allocated).
    #[inline(always)]
    pub(crate) fn consult_ok(&self, addr: usize) -> bool {
        self.view().valid(addr) == Some(true)
    }

    /// The view the ABI's fast path uses to settle CONSULT bytes inline.
    #[must_use]
    pub fn consult_view(&'static self) -> ConsultView<'static> {
        self.view()
    }

    /// This runtime's tables as a [`ConsultView`], for as long as it is
    /// borrowed.
    #[inline(always)]
    fn view(&self) -> ConsultView<'_> {
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
        let (tables, peak) = {
            let inner = self.inner.lock();
            (inner.mapper.table_bytes(), inner.mapper.table_peak_bytes())
        };
        self.stats.snapshot(tables, peak)
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
        l.image.contains(addr) || self.regions.find(addr).is_some()
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

    /// Write `value` to the shadow of the granules in `[start, end)`
    /// (`start` granule aligned, `end > start`), whose shadow the caller
    /// knows to be private (see `shadow_stays_private` in the poison hooks).
    #[inline(always)]
    pub(crate) fn write_shadow(&self, start: usize, end: usize, value: u8) {
        let s = self.layout.mem_to_shadow(start);
        let n = (end - start).div_ceil(GRANULE);
        // SAFETY: the caller checked that the shadow of [start, end) lies in
        // one private, mapped shadow page; [s, s + n) is that shadow.
        unsafe { core::ptr::write_bytes(s as *mut u8, value, n) };
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
}
