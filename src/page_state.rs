//! The per-page shadow: one byte per RAM page frame, for all RAM.
//!
//! ```text
//!  bit   7 6 5 4 3 2 1 0
//!        . . h k k k s s      s = PageState, k = PageKind, h = head of an allocation
//! ```
//!
//! State transitions (driven by the allocator hooks):
//!
//! ```text
//!            page_alloc                 slab/stack/large alloc
//!   Free ───────────────► Valid ──────────────────────────────► Tracked
//!    ▲  ◄─────────────────  │ ◄──────────────────────────────── │  │
//!    │       page_free      │        slab/stack/large free       │  │ no frame for
//!    └──────────────────────┴─────────── page_free ──────────────┘  ▼ byte shadow
//!                                                             Unchecked (counted)
//! ```
//!
//! `Free` pages read as 0xFF (page free) in the byte shadow, `Valid` as 0x00,
//! `Tracked` pages have byte-precise private shadow, `Unchecked` pages wanted
//! it but none could be allocated: they read as valid and are counted.

use core::sync::atomic::{AtomicU8, Ordering};

/// What the byte shadow of a page holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// Free in the page allocator.
    Free = 0,
    /// Allocated, every byte accessible, no byte shadow needed.
    Valid = 1,
    /// Allocated with byte-precise shadow (slab, stack, large kmalloc).
    Tracked = 2,
    /// Wanted byte shadow but none was available: not checked.
    Unchecked = 3,
}

/// Who owns an allocated page (for reports and free checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    /// Not allocated, or a hole.
    None = 0,
    /// A page from the page allocator (page cache, anonymous, ...).
    Page = 1,
    /// A slab page.
    Slab = 2,
    /// A page-backed (large) kmalloc.
    LargeKmalloc = 3,
    /// A kernel stack.
    Stack = 4,
    /// Reserved at boot (image, firmware, boot data).
    Reserved = 5,
}

impl PageKind {
    #[inline]
    pub(crate) const fn from_bits(b: u8) -> PageKind {
        match b {
            1 => PageKind::Page,
            2 => PageKind::Slab,
            3 => PageKind::LargeKmalloc,
            4 => PageKind::Stack,
            5 => PageKind::Reserved,
            _ => PageKind::None,
        }
    }

    /// Whether pages of this kind need byte-precise shadow.
    #[must_use]
    pub const fn tracked(self) -> bool {
        matches!(self, PageKind::Slab | PageKind::LargeKmalloc | PageKind::Stack)
    }
}

/// One decoded per-page byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    /// Shadow state.
    pub state: PageState,
    /// Owner kind.
    pub kind: PageKind,
    /// First page of an allocation.
    pub head: bool,
}

impl PageInfo {
    /// A free page.
    pub const FREE: PageInfo = PageInfo { state: PageState::Free, kind: PageKind::None, head: false };

    const fn encode(self) -> u8 {
        (self.state as u8) | ((self.kind as u8) << 2) | ((self.head as u8) << 5)
    }

    const fn decode(b: u8) -> PageInfo {
        let state = match b & 3 {
            0 => PageState::Free,
            1 => PageState::Valid,
            2 => PageState::Tracked,
            _ => PageState::Unchecked,
        };
        PageInfo { state, kind: PageKind::from_bits((b >> 2) & 7), head: b & 0x20 != 0 }
    }
}

/// The per-page array over the direct map. Reads are lock-free (the slow
/// path consults it); writes happen under the runtime lock.
pub struct PageArray {
    bytes: &'static [AtomicU8],
    base: usize,
}

impl PageArray {
    /// Bytes needed for `pages` page frames.
    #[must_use]
    pub const fn bytes_for(pages: usize) -> usize {
        pages
    }

    /// An array over `bytes.len()` pages of the direct map starting at
    /// `base`, every page free. Only the runtime builds one (its own).
    #[must_use]
    pub(crate) fn new(bytes: &'static mut [u8], base: usize) -> Self {
        let bytes = crate::arena::atomics_u8(bytes, PageInfo::FREE.encode());
        PageArray { bytes, base }
    }

    /// The raw per-page bytes (see [`PageInfo`] for the encoding): the
    /// runtime's (the compiler ABI's consult view reads them).
    #[must_use]
    pub(crate) fn atomics(&self) -> &'static [AtomicU8] {
        self.bytes
    }

    /// Number of page frames.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when there is no page.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Frame number of a direct-map address, if it is RAM.
    #[inline]
    #[must_use]
    pub fn pfn(&self, addr: usize) -> Option<usize> {
        let pfn = addr.wrapping_sub(self.base) / crate::mapper::PAGE_SIZE;
        (addr >= self.base && pfn < self.bytes.len()).then_some(pfn)
    }

    /// Direct-map address of frame `pfn`.
    #[must_use]
    pub fn addr(&self, pfn: usize) -> usize {
        self.base + pfn * crate::mapper::PAGE_SIZE
    }

    /// Read frame `pfn`.
    #[inline]
    #[must_use]
    pub fn get(&self, pfn: usize) -> PageInfo {
        PageInfo::decode(self.bytes[pfn].load(Ordering::Relaxed))
    }

    /// Whether frame `pfn` is [`PageState::Tracked`]: one load and a mask,
    /// for hot paths where [`PageArray::get`]'s full decode is too much.
    #[inline(always)]
    #[must_use]
    pub fn is_tracked(&self, pfn: usize) -> bool {
        self.bytes[pfn].load(Ordering::Relaxed) & 3 == PageState::Tracked as u8
    }

    /// Write frame `pfn`. Only the runtime changes page states (through
    /// its hooks, which remap the block's shadow to match): a state
    /// written from outside would disagree with the shadow's backing.
    pub(crate) fn set(&self, pfn: usize, info: PageInfo) {
        self.bytes[pfn].store(info.encode(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn encode_decode_roundtrip() {
        for state in [PageState::Free, PageState::Valid, PageState::Tracked, PageState::Unchecked] {
            for kind in [
                PageKind::None,
                PageKind::Page,
                PageKind::Slab,
                PageKind::LargeKmalloc,
                PageKind::Stack,
                PageKind::Reserved,
            ] {
                for head in [false, true] {
                    let i = PageInfo { state, kind, head };
                    assert_eq!(PageInfo::decode(i.encode()), i);
                }
            }
        }
    }

    #[test]
    fn pfn_bounds() {
        let mem: &'static mut [u8] = std::boxed::Box::leak(std::vec![9u8; 4].into_boxed_slice());
        let a = PageArray::new(mem, 0x10000);
        assert_eq!(a.get(3), PageInfo::FREE);
        assert!(!a.is_tracked(3));
        for state in [PageState::Free, PageState::Valid, PageState::Tracked, PageState::Unchecked] {
            a.set(2, PageInfo { state, kind: PageKind::Stack, head: true });
            assert_eq!(a.is_tracked(2), state == PageState::Tracked);
        }
        assert_eq!(a.pfn(0x10000), Some(0));
        assert_eq!(a.pfn(0x13fff), Some(3));
        assert_eq!(a.pfn(0x14000), None);
        assert_eq!(a.pfn(0xffff), None);
    }
}
