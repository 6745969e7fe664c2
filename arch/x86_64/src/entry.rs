//! Page-table entry encoding for the shadow region, and the four levels.
//!
//! ```text
//!   63  62..52  51.............12  11..9  8  7  6  5  4  3  2  1  0
//!   NX  avail   physical address    avail  G  PS D  A  .  .  U  W  P
//!
//!   shared  (-> shared table/page):  P       A      NX  bit9   (read-only)
//!   private table (-> private table): P W    A      NX
//!   private leaf  (-> private page):  P W    A D    NX
//! ```
//!
//! Accessed (and Dirty on private leaves) are preset so the CPU never writes
//! them back, in particular not into the shared tables every CPU walks.
//! Global is never set, so a CR3 reload flushes shadow translations.

use x86_64::structures::paging::PageTableFlags as F;
use x86_64::PhysAddr;

/// Mask of the physical address bits of an entry.
pub(crate) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Software-available bit marking an entry that points at a shared table or page.
pub(crate) const SHARED_MARK: u64 = F::BIT_9.bits();
/// Bits the hardware may set; ignored when comparing entries.
const HW_BITS: u64 = F::ACCESSED.bits() | F::DIRTY.bits();

/// A paging level, named by the table it indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Page table: entries map 4 KiB pages.
    Pt = 1,
    /// Page directory: entries point at PTs (2 MiB each).
    Pd = 2,
    /// Page-directory-pointer table: entries point at PDs (1 GiB each).
    Pdpt = 3,
    /// Top level: entries point at PDPTs (512 GiB each).
    Pml4 = 4,
}

impl Level {
    /// Bit position of this level's index in a virtual address.
    #[inline]
    pub(crate) const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }

    /// Bytes of virtual memory one entry of this level maps.
    #[inline]
    pub(crate) const fn span(self) -> usize {
        1usize << self.shift()
    }

    /// Index of `va`'s entry in a table of this level.
    #[inline]
    pub(crate) const fn index(self, va: usize) -> usize {
        (va >> self.shift()) & 511
    }

    /// The level of the tables an entry of this level points at (`None` for
    /// PT entries, which point at pages).
    #[inline]
    pub(crate) const fn below(self) -> Option<Level> {
        match self {
            Level::Pt => None,
            Level::Pd => Some(Level::Pt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pml4 => Some(Level::Pdpt),
        }
    }

    /// The level of the table holding the entries that point at tables of this level.
    #[inline]
    pub(crate) const fn above(self) -> Option<Level> {
        match self {
            Level::Pt => Some(Level::Pd),
            Level::Pd => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pml4),
            Level::Pml4 => None,
        }
    }
}

/// The entry values the mapper writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Encoding {
    /// `NO_EXECUTE` if EFER.NXE is in use, else 0.
    nx: u64,
}

impl Encoding {
    pub(crate) const fn new(no_execute: bool) -> Self {
        Encoding {
            nx: if no_execute { F::NO_EXECUTE.bits() } else { 0 },
        }
    }

    /// An entry pointing at a shared table or shared page: read-only.
    #[inline]
    pub(crate) const fn shared(self, target: PhysAddr) -> u64 {
        target.as_u64() | F::PRESENT.bits() | F::ACCESSED.bits() | SHARED_MARK | self.nx
    }

    /// An entry pointing at a private table.
    #[inline]
    pub(crate) const fn private_table(self, table: PhysAddr) -> u64 {
        table.as_u64() | F::PRESENT.bits() | F::WRITABLE.bits() | F::ACCESSED.bits() | self.nx
    }

    /// A PT entry mapping a private shadow page, writable.
    #[inline]
    pub(crate) const fn private_leaf(self, page: PhysAddr) -> u64 {
        page.as_u64()
            | F::PRESENT.bits()
            | F::WRITABLE.bits()
            | F::ACCESSED.bits()
            | F::DIRTY.bits()
            | self.nx
    }
}

/// Whether the entry is present.
#[inline]
pub(crate) const fn is_present(raw: u64) -> bool {
    raw & F::PRESENT.bits() != 0
}

/// The physical address an entry points at.
#[inline]
pub(crate) const fn target(raw: u64) -> PhysAddr {
    PhysAddr::new_truncate(raw & ADDR_MASK)
}

/// Whether two entries are equal up to the bits the hardware may set.
#[inline]
pub(crate) const fn same(a: u64, b: u64) -> bool {
    a & !HW_BITS == b & !HW_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(Level::Pt.span(), 4096);
        assert_eq!(Level::Pd.span(), 2 << 20);
        assert_eq!(Level::Pdpt.span(), 1 << 30);
        assert_eq!(Level::Pml4.span(), 1 << 39);
        assert_eq!(Level::Pml4.index(crate::SHADOW_START), 472);
        assert_eq!(Level::Pt.below(), None);
        assert_eq!(Level::Pd.below(), Some(Level::Pt));
        assert_eq!(Level::Pt.above(), Some(Level::Pd));
        assert_eq!(Level::Pml4.above(), None);
    }

    #[test]
    fn encodings() {
        let e = Encoding::new(true);
        let a = PhysAddr::new(0x1234_5000);
        let s = e.shared(a);
        assert!(is_present(s));
        assert_eq!(target(s), a);
        assert_eq!(s & F::WRITABLE.bits(), 0);
        assert_ne!(s & F::NO_EXECUTE.bits(), 0);
        assert_ne!(s & SHARED_MARK, 0);
        assert_ne!(e.private_leaf(a) & F::WRITABLE.bits(), 0);
        assert_eq!(e.private_table(a) & SHARED_MARK, 0);
        assert!(same(s, s | F::ACCESSED.bits()));
        assert!(!same(s, e.private_table(a)));
        assert_eq!(Encoding::new(false).shared(a) & F::NO_EXECUTE.bits(), 0);
    }
}
