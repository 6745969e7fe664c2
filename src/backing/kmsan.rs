//! KMSAN's decisions: which page backs each RAM page's shadow and origin
//! pages, from the page's state and the stores into it; the remaps go
//! through [`super::remap`] and [`super::unchecked`], as KASAN's do.
//!
//! ```text
//!   event (hybrid, direct-map page)              backing afterwards
//!   page_alloc zeroed / whole-page unpoison  ──► Init     (shared zero shadow)
//!   page_alloc / page_free / whole-page poison ─► Uninit  (shared 0xFF shadow, per-page origin)
//!   slab page, stack                         ──► Private  (byte-precise, until the page is freed)
//!   partial write / uninit bytes stored      ──► Private  (materialized from the shared state)
//!   no frame for a private page              ──► Unchecked (reads initialized; counted)
//! ```
//!
//! In `full`, as in Linux's KMSAN, the kernel hands the runtime metadata
//! for its free pages at boot ([`Kmsan::full_back_page`]: one shadow and one
//! origin page per data page, so a third of the free RAM stays usable);
//! those pages keep private metadata for good.
//!
//! Only the origins of uninitialized bytes are ever read. A private page
//! keeps one page-wide origin (its per-page origin word) for all of them
//! until its uninitialized bytes need a second one: only then is its
//! origin page mapped ([`Kmsan::write_origins`]). Until then the origin
//! page is the shared zero page and loads get the page-wide origin.

use core::sync::atomic::Ordering::Relaxed;

use crate::config::Mode;
use crate::kmsan::origin::{Origin, NO_ORIGIN};
use crate::kmsan::runtime::{KInner, Kmsan, Place};
use crate::kmsan::state::MetaPage;
use crate::mapper::{ShadowMapper, SharedPage, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;
use crate::stats::Stats;

use super::{remap, unchecked, Backing};

/// What writing an origin to some slots of a page takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OriginPlan {
    /// Nothing: no private shadow, the slots are initialized, or the
    /// page-wide origin is already that one.
    Nothing,
    /// The slots hold the page's only uninitialized bytes: the page-wide
    /// origin of RAM page `.0` becomes the new one.
    PageWide(usize),
    /// A second origin on a page without an origin page: map it.
    MapPage,
    /// Write the slots of the private origin page.
    Write,
}

/// Whether any shadow word is non-zero (some byte uninitialized).
#[inline]
fn any_set(words: &[u32]) -> bool {
    let mut chunks = words.chunks_exact(32);
    let hit = chunks.by_ref().any(|c| c.iter().fold(0, |x, &w| x | w) != 0);
    hit || chunks.remainder().iter().any(|&w| w != 0)
}

/// Fill a private origin page with one origin.
fn fill_origin_page(page: usize, o: Origin) {
    // SAFETY: `page` was just mapped private and writable by the mapper.
    unsafe { core::slice::from_raw_parts_mut(page as *mut u32, PAGE_SIZE / 4).fill(o) };
}

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Give the page at `place` private shadow holding what its shared
    /// state meant; its origin stays page-wide (see [`Self::write_origins`]).
    /// Returns false when no frame was left: the page is then `Unchecked`.
    pub(crate) fn materialize(&self, inner: &mut KInner<M>, place: Place) -> bool {
        let Some((_, p)) = self.page_of(place) else { return false };
        match p.backing {
            Backing::Private => return true,
            // (KASAN's kinds never back KMSAN metadata.)
            Backing::Unchecked | Backing::Consult | Backing::VmallocInvalid => return false,
            Backing::INIT | Backing::UNINIT => {}
        }
        let Some((spage, _)) = self.meta_pages(place) else { return false };
        let fill = if p.backing == Backing::UNINIT { 0xFF } else { 0 };
        if remap(&mut inner.mapper, &self.stats, spage, p.backing, Backing::Private, fill).is_err() {
            let now = unchecked(&mut inner.mapper, &self.stats, spage, p.backing);
            self.set_page(place, MetaPage { backing: now, origin_private: false, ..p });
            if now == Backing::Unchecked {
                self.stats.unchecked_pages.fetch_add(1, Relaxed);
            }
            return false;
        }
        if p.backing == Backing::INIT {
            self.ram_origin_set(place, NO_ORIGIN);
        }
        self.set_page(place, MetaPage { backing: Backing::Private, origin_private: false, ..p });
        true
    }

    fn ram_origin_set(&self, place: Place, o: Origin) {
        if let Place::Ram(i) = place {
            self.ram_origin[i].store(o, Relaxed);
        }
    }

    fn map_origin_page(&self, inner: &mut KInner<M>, opage: usize) -> bool {
        let ok = remap(&mut inner.mapper, &self.stats, opage, Backing::Zero, Backing::Private, 0).is_ok();
        if !ok {
            Stats::bump(&self.stats.unchecked_events);
        }
        ok
    }

    /// Give the private page holding `addr` a private origin page, every
    /// slot holding the page-wide origin, if it has none. False when no
    /// frame was left.
    pub(crate) fn private_origin_page(&self, inner: &mut KInner<M>, addr: usize) -> bool {
        let place = self.place(addr);
        let Some((_, p)) = self.page_of(place) else { return false };
        if p.origin_private {
            return true;
        }
        if p.backing != Backing::Private {
            return false;
        }
        let Some((_, opage)) = self.meta_pages(place) else { return false };
        if !self.map_origin_page(inner, opage) {
            return false;
        }
        fill_origin_page(opage, self.page_origin(place));
        self.set_page(place, MetaPage { origin_private: true, ..p });
        true
    }

    /// Write origin `o` to the slot at `slot` (4-aligned) of a private page.
    pub(crate) fn write_origin(&self, inner: &mut KInner<M>, slot: usize, o: Origin) {
        self.write_origins(inner, slot, slot + 4, o);
    }

    /// Write origin `o` to the slots covering `[a, e)` (canonical, one
    /// page) of a private page, after their shadow was written.
    ///
    /// Only the origins of uninitialized slots are ever read, so a private
    /// page without an origin page keeps one page-wide origin for all of
    /// them (the per-page origin word). The origin page is mapped, filled
    /// with that origin, only when the page's uninitialized slots need a
    /// second one:
    ///
    /// ```text
    ///  slots written are initialized           ──► nothing to keep
    ///  o == page-wide origin                   ──► nothing to do
    ///  no other uninitialized slot on the page ──► page-wide origin = o
    ///  otherwise                               ──► map the origin page, write o
    /// ```
    pub(crate) fn write_origins(&self, inner: &mut KInner<M>, a: usize, e: usize, o: Origin) {
        let (lo, hi) = (a & !3, (e + 3) & !3);
        match self.origin_plan(a, e, o) {
            OriginPlan::Nothing => return,
            OriginPlan::PageWide(i) => return self.ram_origin[i].store(o, Relaxed),
            OriginPlan::MapPage => {
                if !self.private_origin_page(inner, a) {
                    return;
                }
            }
            OriginPlan::Write => {}
        }
        let Some(r) = self.layout.region_of(a) else { return };
        for slot in (lo..hi).step_by(4) {
            // SAFETY: the origin page of a private page with `origin_private`
            // is a private writable page; `slot` is 4-aligned inside it.
            unsafe { core::ptr::write_volatile(r.origin_of(slot) as *mut u32, o) };
        }
    }

    /// What [`Self::write_origins`] has to do (decided without the lock).
    #[inline]
    pub(crate) fn origin_plan(&self, a: usize, e: usize, o: Origin) -> OriginPlan {
        let place = self.place(a);
        let Some((r, p)) = self.page_of(place) else { return OriginPlan::Nothing };
        if p.backing != Backing::Private || e <= a {
            return OriginPlan::Nothing;
        }
        if p.origin_private {
            return OriginPlan::Write;
        }
        let Place::Ram(i) = place else { return OriginPlan::Nothing };
        let (lo, hi) = (a & !3, (e + 3) & !3);
        let page = lo & !(PAGE_SIZE - 1);
        // SAFETY: a private shadow page is mapped and readable.
        let words = unsafe { core::slice::from_raw_parts(r.shadow_of(page) as *const u32, PAGE_SIZE / 4) };
        let (first, last) = ((lo - page) / 4, (hi - page) / 4);
        if !any_set(&words[first..last]) || self.ram_origin[i].load(Relaxed) == o {
            OriginPlan::Nothing
        } else if !any_set(&words[..first]) && !any_set(&words[last..]) {
            OriginPlan::PageWide(i)
        } else {
            OriginPlan::MapPage
        }
    }

    /// Back the page at `place` by a shared page again: `Init` when
    /// `origin` is `None`, else `Uninit` with that per-page origin.
    pub(crate) fn share(&self, inner: &mut KInner<M>, place: Place, origin: Option<Origin>, kind: PageKind) {
        let Place::Ram(i) = place else { return };
        let p = self.ram.get(i);
        let Some((spage, opage)) = self.meta_pages(place) else { return };
        if self.cfg.mode == Mode::Full && p.backing == Backing::Private && p.origin_private {
            // Full keeps the metadata it was given at boot: write the state in.
            let fill = if origin.is_some() { 0xFF } else { 0 };
            // SAFETY: both metadata pages of the page are private.
            unsafe { core::ptr::write_bytes(spage as *mut u8, fill, PAGE_SIZE) };
            fill_origin_page(opage, origin.unwrap_or(NO_ORIGIN));
            self.ram.set(i, MetaPage { kind, ..p });
            return;
        }
        let want = if origin.is_some() { Backing::UNINIT } else { Backing::INIT };
        if p.backing != want {
            // A shared-to-shared flip that fails (no page-table page to
            // split a shared table) leaves the old page mapped; the state
            // changes anyway, as the allocator's has.
            if remap(&mut inner.mapper, &self.stats, spage, p.backing, want, 0).is_err() && p.backing == Backing::Private {
                // Keep the private page and write the state into it.
                let fill = if origin.is_some() { 0xFF } else { 0 };
                // SAFETY: the page is private and writable.
                unsafe { core::ptr::write_bytes(spage as *mut u8, fill, PAGE_SIZE) };
                if p.origin_private {
                    fill_origin_page(opage, origin.unwrap_or(NO_ORIGIN));
                }
                self.ram.set(i, MetaPage { kind, ..p });
                return;
            }
            if p.backing == Backing::Unchecked {
                self.stats.unchecked_pages.fetch_sub(1, Relaxed);
            }
        }
        if p.origin_private {
            let _ = remap(&mut inner.mapper, &self.stats, opage, Backing::Private, Backing::Zero, 0);
        }
        self.ram_origin[i].store(origin.unwrap_or(NO_ORIGIN), Relaxed);
        self.ram.set(i, MetaPage { backing: want, origin_private: false, kind });
    }

    /// Shrinker: give back the page tables that map only one kind of
    /// shared metadata page (pages flipping between initialized and
    /// uninitialized leave them private; see the mapper's re-sharing).
    /// Returns the pages given back.
    pub fn shrink(&self) -> usize {
        if self.cfg.mode != Mode::Hybrid {
            return 0;
        }
        self.inner.lock().mapper.reshare()
    }

    /// `full` mode at boot: give the free RAM page at `addr` private shadow
    /// (uninitialized) and origin pages for good, as Linux's KMSAN gives
    /// every page its metadata. The kernel calls this for each free page
    /// until frames run out (the frames come from the same free RAM).
    /// Returns false when no frame was left (nothing changed) or the page
    /// cannot take metadata (not `full`, not RAM, not free, already backed).
    pub fn full_back_page(&self, addr: usize) -> bool {
        if self.cfg.mode != Mode::Full || !addr.is_multiple_of(PAGE_SIZE) {
            return false;
        }
        let place = self.place(addr);
        let Place::Ram(i) = place else { return false };
        let p = self.ram.get(i);
        if p.kind != PageKind::None || p.backing != Backing::UNINIT {
            return false;
        }
        let Some((spage, opage)) = self.meta_pages(place) else { return false };
        let mut inner = self.inner.lock();
        let m = &mut inner.mapper;
        match m.map_private(spage, 0xFF) {
            Ok(f) => f.flush(m),
            Err(_) => return false,
        }
        match m.map_private(opage, 0) {
            Ok(f) => f.flush(m),
            Err(_) => {
                if let Ok(f) = m.map_shared(spage, SharedPage::PageFree) {
                    f.flush(m);
                }
                return false;
            }
        }
        fill_origin_page(opage, self.ram_origin[i].load(Relaxed));
        self.ram.set(i, MetaPage { backing: Backing::Private, origin_private: true, kind: PageKind::None });
        self.stats.init_shadow_pages.fetch_add(2, Relaxed);
        true
    }
}
