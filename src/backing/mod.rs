//! Which page backs each metadata page, for both sanitizers: one state
//! type, one transition, one fallback.
//!
//! A metadata page is KASAN's shadow page under a 32 KiB block of the
//! direct map or the vmalloc window (1:8), or KMSAN's shadow page (1:1) or
//! origin page (1:1, 4-byte slots) under one data page. Each is backed by
//! a shared page, whose bytes say the same thing about every data byte
//! under it, or by a private frame while the data needs byte precision:
//!
//! ```text
//!   Backing        page mapped         KASAN reads          KMSAN reads
//!   Zero        ── shared zero     ──  accessible           initialized   (Backing::INIT)
//!   Free        ── shared 0xFF     ──  page free (UAF)      uninitialized (Backing::UNINIT)
//!   Consult     ── shared CONSULT  ──  ask the per-page     -
//!                                      state (mixed block)
//!   VmallocInvalid  shared 0xF8    ──  no vmalloc area      -
//!   Private     ── private frame   ──  byte precise         byte precise
//!   Unchecked   ── shared zero     ──  accessible           initialized   (wanted private,
//!                                                                          no frame: counted)
//!
//!            remap(to = Private)                       remap(to = shared kind)
//!   shared ───────────────────────► Private ────────────────────────────► shared
//!      │       counted on demand              no longer counted
//!      │ no frame: Err, nothing changed; the caller either keeps a shared
//!      │ page that is right for its data (KASAN: the block's pages go
//!      └ `Unchecked` in the per-page state) or calls unchecked() ──► Unchecked
//! ```
//!
//! What the runtimes decide is *when*: KASAN from the per-page states of
//! the 8 pages of a block ([`kasan`]), KMSAN from one page's state and the
//! stores into it ([`kmsan`]). Both go through [`remap`] and [`unchecked`],
//! so the remap, its TLB flush and the on-demand accounting happen in one
//! place.

pub mod kasan;
pub mod kmsan;

use crate::mapper::{MapError, ShadowMapper, SharedPage};
use crate::stats::Stats;

/// How one metadata page is backed (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Backing {
    /// The shared 0xFF page (KASAN: page free; KMSAN: uninitialized).
    Free = 0,
    /// The shared zero page (KASAN: accessible; KMSAN: initialized).
    Zero = 1,
    /// A private frame.
    Private = 2,
    /// Wanted a private frame, none was left: the shared zero page, so
    /// nothing is reported from it (counted in the statistics).
    Unchecked = 3,
    /// The shared CONSULT page (KASAN's mixed blocks).
    Consult = 4,
    /// The shared 0xF8 page (KASAN's vmalloc space without an area).
    VmallocInvalid = 5,
}

// The order keeps KMSAN's hot tests to a mask and one compare on its four
// values ("reads initialized without a private page" is `Zero | Unchecked`,
// the values with bit 0 set below 4).

impl Backing {
    /// KMSAN's name for [`Backing::Zero`]: every byte initialized.
    pub const INIT: Backing = Backing::Zero;
    /// KMSAN's name for [`Backing::Free`]: every byte uninitialized, one
    /// origin for the page.
    pub const UNINIT: Backing = Backing::Free;
    /// Every backing, in `repr` order.
    pub const ALL: [Backing; 6] =
        [Backing::Free, Backing::Zero, Backing::Private, Backing::Unchecked, Backing::Consult, Backing::VmallocInvalid];

    /// Decode a value of `self as u8` (out-of-range values read as
    /// `Unchecked`, which never reports).
    #[must_use]
    #[inline]
    pub const fn from_u8(v: u8) -> Backing {
        match v {
            0 => Backing::Free,
            1 => Backing::Zero,
            2 => Backing::Private,
            3 => Backing::Unchecked,
            4 => Backing::Consult,
            5 => Backing::VmallocInvalid,
            _ => Backing::Unchecked,
        }
    }

    /// The backing of shared page `kind`.
    #[must_use]
    #[inline]
    pub const fn shared(kind: SharedPage) -> Backing {
        match kind {
            SharedPage::Zero => Backing::Zero,
            SharedPage::PageFree => Backing::Free,
            SharedPage::Consult => Backing::Consult,
            SharedPage::VmallocInvalid => Backing::VmallocInvalid,
        }
    }

    /// The shared page mapped for this backing (`None` for a private one).
    #[must_use]
    #[inline]
    pub const fn page(self) -> Option<SharedPage> {
        match self {
            Backing::Zero | Backing::Unchecked => Some(SharedPage::Zero),
            Backing::Free => Some(SharedPage::PageFree),
            Backing::Consult => Some(SharedPage::Consult),
            Backing::VmallocInvalid => Some(SharedPage::VmallocInvalid),
            Backing::Private => None,
        }
    }
}

/// Move metadata page `page` from backing `from` to `to` (a private page
/// is filled with `fill`), flush its translation and keep the on-demand
/// count: +1 when it goes private, -1 when it stops being private.
///
/// Nothing is mapped when `to` is already what is mapped (`Private` to
/// `Private` leaves the contents to the caller). `to` = `Unchecked` maps
/// the zero page; use [`unchecked`] for the no-frame fallback, which also
/// counts the event.
///
/// # Errors
/// No frame for a private page, or no page-table page for a shared one:
/// nothing changed and `from` still describes the page.
pub(crate) fn remap<M: ShadowMapper>(
    m: &mut M,
    stats: &Stats,
    page: usize,
    from: Backing,
    to: Backing,
    fill: u8,
) -> Result<Backing, MapError> {
    match (from.page(), to.page()) {
        (None, None) => return Ok(to),
        (Some(a), Some(b)) if a == b => return Ok(to),
        (_, None) => {
            m.map_private(page, fill)?.flush(m);
            stats.ondemand_inc();
        }
        (was, Some(kind)) => {
            m.map_shared(page, kind)?.flush(m);
            if was.is_none() {
                stats.ondemand_dec();
            }
        }
    }
    Ok(to)
}

/// The fallback when no frame was left for a private page: back `page` by
/// the shared zero page, whose bytes never report (KASAN: accessible,
/// KMSAN: initialized), and count the event. Returns
/// [`Backing::Unchecked`]. The caller counts the data pages that went
/// unchecked.
///
/// If even the zero page cannot be mapped (no page-table page), the old
/// backing stays: a private page keeps its contents, a shared one what it
/// says.
pub(crate) fn unchecked<M: ShadowMapper>(m: &mut M, stats: &Stats, page: usize, from: Backing) -> Backing {
    Stats::bump(&stats.unchecked_events);
    match remap(m, stats, page, from, Backing::Unchecked, 0) {
        Ok(b) => b,
        Err(_) => from,
    }
}

#[cfg(all(test, feature = "host"))]
mod tests {
    use super::*;

    #[test]
    fn encoding_roundtrips_and_pages_match() {
        for b in Backing::ALL {
            assert_eq!(Backing::from_u8(b as u8), b);
            if let Some(k) = b.page() {
                if b != Backing::Unchecked {
                    assert_eq!(Backing::shared(k), b);
                }
            }
        }
        assert_eq!(Backing::page(Backing::Private), None);
        assert_eq!(Backing::INIT.page(), Some(SharedPage::Zero));
        assert_eq!(Backing::UNINIT.page(), Some(SharedPage::PageFree));
    }
}
