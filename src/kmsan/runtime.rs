//! The KMSAN runtime object: init and where an address's metadata lives.
//! Making origins (stack depot handles, chains) is [`crate::kmsan::origin`].
//!
//! A vmalloc address has the metadata of the RAM page mapped there (asked
//! of the kernel, [`crate::Platform::vmalloc_to_ram`], as Linux's
//! `vmalloc_to_page`); the image is private from init. Which page backs
//! each metadata page, and when that changes, is [`crate::backing::kmsan`].

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use crate::arena::{atomics_u32, take};
use crate::config::{Config, Mode};
use crate::depot::StackDepot;
use crate::kmsan::layout::{KmsanLayout, MetaRegion};
use crate::kmsan::origin::{Origin, NO_ORIGIN};
use crate::backing::Backing;
use crate::kmsan::state::{MetaPage, MetaPages};
use crate::mapper::{MapError, ShadowMapper, SharedPage, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;
use crate::stats::{Stats, StatsSnapshot};

/// Why the KMSAN runtime could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmsanInitError {
    /// The layout breaks an invariant.
    Layout(crate::kmsan::layout::KmsanLayoutError),
    /// The arena is smaller than [`Kmsan::arena_bytes`].
    ArenaTooSmall,
    /// The backend could not map the initial metadata.
    Map(MapError),
}

/// Where an address lives, for metadata purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Direct-map page frame `pfn`.
    Ram(usize),
    /// The kernel image (metadata always private).
    Image,
    /// No metadata: reads as initialized, stores are dropped.
    Outside,
}

/// State changed only under the lock.
pub(crate) struct KInner<M> {
    pub(crate) mapper: M,
    pub(crate) depot: StackDepot,
}

/// The KMSAN runtime.
pub struct Kmsan<M: ShadowMapper, P: Platform> {
    pub(crate) cfg: Config,
    pub(crate) layout: KmsanLayout,
    /// Per direct-map page.
    pub(crate) ram: MetaPages,
    /// Per direct-map page: the origin of every uninitialized byte while
    /// the page is `Uninit`, or `Private` without an origin page.
    pub(crate) ram_origin: &'static [AtomicU32],
    pub(crate) inner: crate::lock::RuntimeLock<KInner<M>>,
    pub(crate) platform: P,
    pub(crate) stats: Stats,
    pub(crate) reported: AtomicBool,
    /// The console, one report at a time; reports found by the CPU printing
    /// one are dropped (instrumented formatting code must not report into
    /// a report).
    pub(crate) report_lock: crate::report::ReportLock,
}

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Depot capacity (distinct stacks): origins need more than KASAN's
    /// alloc/free stacks, so one per 32 RAM pages, 1024..16384.
    fn depot_stacks(cfg: &Config, layout: &KmsanLayout) -> usize {
        if cfg.depot_stacks != 0 {
            cfg.depot_stacks
        } else {
            (layout.ram_pages() / 32).clamp(1024, 16384)
        }
    }

    /// Bytes of metadata arena [`Kmsan::new`] needs.
    #[must_use]
    pub fn arena_bytes(layout: &KmsanLayout, cfg: &Config) -> usize {
        if cfg.mode == Mode::Off {
            return StackDepot::bytes_for(1) + 16;
        }
        let pages = layout.ram_pages();
        pages + 4 * pages + StackDepot::bytes_for(Self::depot_stacks(cfg, layout)) + 32
    }

    /// Start the runtime. Every RAM page starts free (uninitialized, no
    /// origin), the image initialized, nothing mapped in the vmalloc window.
    pub fn new(
        cfg: Config,
        layout: KmsanLayout,
        mapper: M,
        platform: P,
        arena: &'static mut [u8],
    ) -> Result<Self, KmsanInitError> {
        layout.validate().map_err(KmsanInitError::Layout)?;
        let off = cfg.mode == Mode::Off;
        let pages = if off { 0 } else { layout.ram_pages() };
        let stacks = if off { 1 } else { Self::depot_stacks(&cfg, &layout) };
        let mut rest = arena;
        let ram_mem = take(&mut rest, pages, 1).ok_or(KmsanInitError::ArenaTooSmall)?;
        let origin_mem = take(&mut rest, 4 * pages, 4).ok_or(KmsanInitError::ArenaTooSmall)?;
        let depot_len = StackDepot::bytes_for(stacks);
        let depot_mem = take(&mut rest, depot_len, 8).ok_or(KmsanInitError::ArenaTooSmall)?;
        let depot = StackDepot::new(depot_mem, stacks).ok_or(KmsanInitError::ArenaTooSmall)?;
        let ram_origin = atomics_u32(origin_mem);
        let ram_init = MetaPage::FREE;
        let k = Kmsan {
            cfg,
            layout,
            ram: MetaPages::new(ram_mem, ram_init),
            ram_origin,
            inner: crate::lock::RuntimeLock::new(KInner { mapper, depot }, platform.lock_wait()),
            platform,
            stats: Stats::default(),
            reported: AtomicBool::new(false),
            report_lock: crate::report::ReportLock::default(),
        };
        k.stats.per_page_bytes.store(pages * 5, Relaxed);
        k.stats.depot_bytes.store(if off { 0 } else { depot_len }, Relaxed);
        if !off {
            k.map_initial()?;
        }
        Ok(k)
    }

    fn map_initial(&self) -> Result<(), KmsanInitError> {
        let l = self.layout;
        let mut inner = self.inner.lock();
        let m = &mut inner.mapper;
        let err = KmsanInitError::Map;
        let mut private = 0;
        let dm = l.direct_map;
        let s = dm.shadow_range();
        m.map_shared_range(s.start, s.end, SharedPage::PageFree).map_err(err)?;
        let o = dm.origin_range();
        m.map_shared_range(o.start, o.end, SharedPage::Zero).map_err(err)?;
        let img = l.image;
        for off in (0..img.data.len()).step_by(PAGE_SIZE) {
            m.map_private(img.shadow + off, 0).map_err(err)?.flush(m);
            m.map_private(img.origin + off, 0).map_err(err)?.flush(m);
            private += 2;
        }
        self.stats.init_shadow_pages.store(private, Relaxed);
        Ok(())
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> &KmsanLayout {
        &self.layout
    }

    /// The platform.
    #[must_use]
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Whether the runtime tracks anything (`off`: every call is a no-op).
    #[inline(always)]
    pub(crate) fn on(&self) -> bool {
        self.cfg.mode != Mode::Off
    }

    /// A copy of the statistics (metadata pages count as "shadow").
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        let (tables, peak) = {
            let inner = self.inner.lock();
            (inner.mapper.table_bytes(), inner.mapper.table_peak_bytes())
        };
        self.stats.snapshot(tables, peak)
    }

    /// The address whose metadata `addr` uses: itself in RAM and the
    /// image, the RAM address mapped there for a vmalloc address, `None`
    /// where there is no metadata.
    #[inline(always)]
    pub(crate) fn canon(&self, addr: usize) -> Option<usize> {
        let l = &self.layout;
        if l.direct_map.data.contains(addr) || l.image.data.contains(addr) {
            return Some(addr);
        }
        if l.vmalloc.contains(addr) {
            let ram = self.platform.vmalloc_to_ram(addr)?;
            return l.direct_map.data.contains(ram).then_some(ram);
        }
        None
    }

    /// Where the (canonical, see [`Self::canon`]) address `addr` lives.
    #[inline(always)]
    pub(crate) fn place(&self, addr: usize) -> Place {
        let l = &self.layout;
        if l.direct_map.data.contains(addr) {
            Place::Ram((addr - l.direct_map.data.start) / PAGE_SIZE)
        } else if l.image.data.contains(addr) {
            Place::Image
        } else {
            Place::Outside
        }
    }

    /// The region and per-page byte of a place (image: always private).
    #[inline(always)]
    pub(crate) fn page_of(&self, place: Place) -> Option<(&MetaRegion, MetaPage)> {
        match place {
            Place::Ram(i) => Some((&self.layout.direct_map, self.ram.get(i))),
            Place::Image => Some((
                &self.layout.image,
                MetaPage { backing: Backing::Private, origin_private: true, kind: PageKind::Reserved },
            )),
            Place::Outside => None,
        }
    }

    pub(crate) fn set_page(&self, place: Place, p: MetaPage) {
        match place {
            Place::Ram(i) => self.ram.set(i, p),
            Place::Image | Place::Outside => {}
        }
    }

    /// Shadow and origin page addresses of the page at `place`.
    pub(crate) fn meta_pages(&self, place: Place) -> Option<(usize, usize)> {
        let Place::Ram(i) = place else { return None };
        let r = &self.layout.direct_map;
        Some((r.shadow + i * PAGE_SIZE, r.origin + i * PAGE_SIZE))
    }

    /// The shadow byte of `addr` (0 where there is no metadata).
    #[inline]
    pub(crate) fn shadow_at(&self, addr: usize) -> u8 {
        if !self.on() {
            return 0;
        }
        let Some(addr) = self.canon(addr) else { return 0 };
        match self.layout.region_of(addr) {
            // SAFETY: every shadow page of a region is mapped from init on
            // (shared or private), so the load hits mapped memory.
            Some(r) => unsafe { core::ptr::read_volatile(r.shadow_of(addr) as *const u8) },
            None => 0,
        }
    }

    /// The origin of the 4-byte slot holding `addr`.
    #[inline]
    pub(crate) fn origin_at(&self, addr: usize) -> Origin {
        if !self.on() {
            return NO_ORIGIN;
        }
        let Some(addr) = self.canon(addr) else { return NO_ORIGIN };
        let place = self.place(addr);
        let Some((r, p)) = self.page_of(place) else { return NO_ORIGIN };
        if let Some(u) = self.page_wide_origin(place, p) {
            return u;
        }
        // SAFETY: origin pages are mapped for the whole region from init.
        unsafe { core::ptr::read_volatile(r.origin_of(addr) as *const u32) }
    }

    /// The per-page origin of an `Uninit` RAM page.
    pub(crate) fn page_origin(&self, place: Place) -> Origin {
        match place {
            Place::Ram(i) => self.ram_origin[i].load(Relaxed),
            _ => NO_ORIGIN,
        }
    }

    /// The one origin every uninitialized slot of the page at `place`
    /// has, when its origin page is not private (`Uninit`, or `Private`
    /// without an origin page): `None` when the origin page must be read.
    #[inline(always)]
    pub(crate) fn page_wide_origin(&self, place: Place, p: MetaPage) -> Option<Origin> {
        match (place, p.backing) {
            (Place::Ram(i), Backing::UNINIT) => Some(self.ram_origin[i].load(Relaxed)),
            (Place::Ram(i), Backing::Private) if !p.origin_private => Some(self.ram_origin[i].load(Relaxed)),
            _ => None,
        }
    }

    /// The kernel set aside `bytes` for per-task contexts
    /// ([`crate::kmsan::abi::TaskContext`]): counted as metadata at init.
    pub fn add_context_bytes(&self, bytes: usize) {
        self.stats.context_bytes.fetch_add(bytes, Relaxed);
    }
}
