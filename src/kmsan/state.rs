//! KMSAN's per-page byte: how a page's metadata is backed and who owns it.
//!
//! ```text
//!  bit   7 6 5 4 3 2 1 0
//!        . . k k k o b b     b = Backing (KMSAN uses its first four values), o = origin page private, k = PageKind
//! ```
//!
//! In `hybrid`, a page that is not byte-tracked is described by this byte
//! plus a per-page origin; its metadata pages map shared pages:
//!
//! ```text
//!  backing      shadow page           origin page          meaning
//!  UNINIT   ──► shared 0xFF           shared zero          every byte uninitialized, origin = per-page origin
//!  INIT     ──► shared zero           shared zero          every byte initialized
//!  Private  ──► private               private, or zero     byte precise (tracked kinds, or partly initialized data);
//!                                     (page-wide origin)   origin page only once two origins must coexist
//!  Unchecked──► shared zero           shared zero          wanted private, no frame: reads initialized (counted)
//! ```
//!
//! A free page is `Uninit` with a use-after-free origin (`kind == None`).
//! In `full` every page is `Private` with both pages private from init.

use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use crate::backing::Backing;
use crate::page_state::PageKind;

/// One decoded per-page byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaPage {
    /// Backing of the shadow page: [`Backing::INIT`], [`Backing::UNINIT`],
    /// `Private` or `Unchecked`.
    pub backing: Backing,
    /// The origin page is private (else it maps the shared zero page).
    pub origin_private: bool,
    /// Owner (`None`: free, or no vmalloc area).
    pub kind: PageKind,
}

impl MetaPage {
    /// A free page in `hybrid` (or a vmalloc page without an area).
    pub const FREE: MetaPage = MetaPage { backing: Backing::UNINIT, origin_private: false, kind: PageKind::None };

    /// Encode.
    #[must_use]
    #[inline]
    pub const fn encode(self) -> u8 {
        debug_assert!((self.backing as u8) < 4, "KASAN's backings never describe a KMSAN page");
        (self.backing as u8 & 3) | ((self.origin_private as u8) << 2) | ((self.kind as u8) << 3)
    }

    /// Decode.
    #[must_use]
    #[inline]
    pub const fn decode(b: u8) -> MetaPage {
        MetaPage { backing: Backing::from_u8(b & 3), origin_private: b & 4 != 0, kind: PageKind::from_bits((b >> 3) & 7) }
    }

    /// Whether stores can go straight to this page's metadata.
    #[inline(always)]
    #[must_use]
    pub const fn writable(self) -> bool {
        matches!(self.backing, Backing::Private)
    }
}

/// The per-page bytes of one region (lock-free reads; writes under the
/// runtime lock).
pub struct MetaPages {
    bytes: &'static [AtomicU8],
}

impl MetaPages {
    /// Pages over `mem`, each set to `init`.
    #[must_use]
    pub fn new(mem: &'static mut [u8], init: MetaPage) -> Self {
        MetaPages { bytes: crate::arena::atomics_u8(mem, init.encode()) }
    }

    /// Number of pages.
    #[must_use]
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when there is no page.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Page `i`.
    #[inline(always)]
    #[must_use]
    pub fn get(&self, i: usize) -> MetaPage {
        MetaPage::decode(self.bytes[i].load(Relaxed))
    }

    /// Set page `i`.
    #[inline]
    pub fn set(&self, i: usize, p: MetaPage) {
        self.bytes[i].store(p.encode(), Relaxed);
    }
}

/// Private metadata pages of RAM at one moment, by the kind of the data
/// page (index: `PageKind as usize`): what on-demand metadata is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaCensus {
    /// Data pages with a private shadow page.
    pub shadow: [usize; 6],
    /// Data pages with a private origin page.
    pub origin: [usize; 6],
}

impl MetaCensus {
    /// Count the private metadata pages described by `pages`.
    #[must_use]
    pub fn of(pages: &MetaPages) -> MetaCensus {
        let mut c = MetaCensus::default();
        for i in 0..pages.len() {
            let p = pages.get(i);
            if p.backing == Backing::Private {
                c.shadow[p.kind as usize] += 1;
            }
            if p.origin_private {
                c.origin[p.kind as usize] += 1;
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for backing in [Backing::UNINIT, Backing::INIT, Backing::Private, Backing::Unchecked] {
            for origin_private in [false, true] {
                for kind in [PageKind::None, PageKind::Page, PageKind::Slab, PageKind::Stack, PageKind::Reserved] {
                    let p = MetaPage { backing, origin_private, kind };
                    assert_eq!(MetaPage::decode(p.encode()), p);
                }
            }
        }
        assert!(!MetaPage::FREE.writable());
    }
}
