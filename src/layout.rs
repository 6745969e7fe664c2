//! The address space the runtime covers and the shadow mapping.
//!
//! ```text
//!  data address space (x86_64 kernel, Linux's layout)      shadow = (addr >> 3) + offset
//!  0x0000_0000_0000_0000 .. user_end        user (no shadow: reports only)
//!  0xffff_8880_0000_0000   direct map  ──►  0xffff_ed10_0000_0000  per-block backing
//!  0xffff_c900_0000_0000   vmalloc     ──►  0xffff_f520_0000_0000  per-area private
//!  0xffff_ffff_8000_0000   image       ──►  0xffff_fbff_f000_0000  private (globals)
//!  covered = the whole kernel half: its shadow is mapped (shared zero by default)
//! ```
//!
//! The host backend uses the same picture with user-space addresses.

use crate::mapper::PAGE_SIZE;
use crate::shadow::GRANULE_SHIFT;

/// Data pages covered by one shadow page (4096 granules of 8 bytes = 32 KiB).
///
/// Kernel allocators that keep such blocks uniform help hybrid mode: a
/// block whose pages are all page-granular and all allocated (or all free)
/// is backed by a shared page and checked in one load, and byte-tracked
/// pages packed into blocks of their own share private shadow pages. The
/// test guest groups its buddy allocator's small allocations by pool in
/// pageblocks of this size and allocates page cache in folios of it.
pub const PAGES_PER_BLOCK: usize = 8;
/// Bytes of data covered by one shadow page.
pub const BLOCK_SIZE: usize = PAGE_SIZE * PAGES_PER_BLOCK;

/// A half-open address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
}

impl Region {
    /// `[start, start + len)`.
    #[must_use]
    pub const fn new(start: usize, len: usize) -> Self {
        Region { start, end: start + len }
    }
    /// Bytes in the region.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.end - self.start
    }
    /// True when the region holds no byte.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// Whether `addr` lies inside.
    #[must_use]
    #[inline]
    pub const fn contains(&self, addr: usize) -> bool {
        addr >= self.start && addr < self.end
    }
    /// Whether `[addr, addr + len)` lies inside (no wrap).
    #[must_use]
    #[inline]
    pub const fn contains_range(&self, addr: usize, len: usize) -> bool {
        match addr.checked_add(len) {
            Some(e) => addr >= self.start && e <= self.end,
            None => false,
        }
    }
}

/// The regions of the address space the runtime knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The compiler's shadow offset: `shadow = (addr >> 3) + offset`.
    pub offset: usize,
    /// All RAM, page frame `n` at `direct_map.start + n * 4096`. Block (32 KiB) aligned.
    pub direct_map: Region,
    /// The vmalloc window whose shadow is populated per area. Block aligned.
    pub vmalloc: Region,
    /// The kernel image (globals, boot stack). Block aligned.
    pub image: Region,
    /// Addresses whose shadow is mapped. Accesses outside are reported
    /// (null-ptr-deref, user-memory-access or wild-memory-access).
    pub covered: Region,
    /// Below this address is user space (for the bug type of wild accesses).
    pub user_end: usize,
}

/// Why a [`Layout`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A region is not aligned to [`BLOCK_SIZE`].
    Unaligned,
    /// A region is empty or lies outside `covered`.
    OutsideCovered,
    /// Two regions overlap.
    Overlap,
    /// The shadow of the covered range overlaps the direct map, the
    /// vmalloc window or the image (the offset does not fit this map).
    ShadowOverlap,
}

impl Layout {
    /// Check the invariants the runtime relies on. The vmalloc window may
    /// be empty (`Region { start: 0, end: 0 }`: a kernel without one).
    pub fn validate(&self) -> Result<(), LayoutError> {
        let regions = [self.direct_map, self.vmalloc, self.image];
        for r in regions {
            if r == self.vmalloc && r.start == 0 && r.end == 0 {
                continue;
            }
            if r.start % BLOCK_SIZE != 0 || r.end % BLOCK_SIZE != 0 {
                return Err(LayoutError::Unaligned);
            }
            if r.is_empty() || r.start < self.covered.start || r.end > self.covered.end {
                return Err(LayoutError::OutsideCovered);
            }
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                if !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end {
                    return Err(LayoutError::Overlap);
                }
            }
        }
        let shadow = self.shadow_of(self.covered);
        if regions.iter().any(|r| !r.is_empty() && shadow.start < r.end && r.start < shadow.end) {
            return Err(LayoutError::ShadowOverlap);
        }
        Ok(())
    }

    /// The shadow byte address of `addr`.
    #[inline(always)]
    #[must_use]
    pub const fn mem_to_shadow(&self, addr: usize) -> usize {
        (addr >> GRANULE_SHIFT).wrapping_add(self.offset)
    }

    /// The first data address a shadow address describes.
    #[inline]
    #[must_use]
    pub const fn shadow_to_mem(&self, shadow: usize) -> usize {
        shadow.wrapping_sub(self.offset) << GRANULE_SHIFT
    }

    /// Page frames of RAM.
    #[must_use]
    pub const fn ram_pages(&self) -> usize {
        self.direct_map.len() / PAGE_SIZE
    }

    /// Shadow range (page aligned) of a block-aligned data region.
    #[must_use]
    pub const fn shadow_of(&self, r: Region) -> Region {
        Region { start: self.mem_to_shadow(r.start), end: self.mem_to_shadow(r.end) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux() -> Layout {
        Layout {
            offset: 0xdffffc0000000000,
            direct_map: Region::new(0xffff888000000000, 64 << 20),
            vmalloc: Region::new(0xffffc90000000000, 1 << 30),
            image: Region::new(0xffffffff80000000, 4 << 20),
            covered: Region { start: 0xffff800000000000, end: 0xffff_ffff_ffff_f000 },
            user_end: 0x0000_8000_0000_0000,
        }
    }

    #[test]
    fn linux_layout_maps_into_linux_shadow_region() {
        let l = linux();
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.mem_to_shadow(0xffff800000000000), 0xffffec0000000000);
        assert_eq!(l.mem_to_shadow(0xffff888000000000), 0xffffed1000000000);
        assert!(l.mem_to_shadow(0xffff_ffff_ffff_ffff) < 0xfffffc0000000000);
        assert_eq!(l.shadow_to_mem(l.mem_to_shadow(0xffff888000001238)), 0xffff888000001238);
        assert_eq!(l.ram_pages(), 16384);
        let s = l.shadow_of(l.direct_map);
        assert_eq!(s.len(), (64 << 20) / 8);
    }

    #[test]
    fn validate_rejects_broken_layouts() {
        let mut l = linux();
        l.image = Region::new(0xffffffff80001000, 4 << 20);
        assert_eq!(l.validate(), Err(LayoutError::Unaligned));
        let mut l = linux();
        l.vmalloc = Region::new(0xffff888000000000, BLOCK_SIZE);
        assert_eq!(l.validate(), Err(LayoutError::Overlap));
        let mut l = linux();
        l.covered.start = 0xffffc00000000000;
        assert_eq!(l.validate(), Err(LayoutError::OutsideCovered));
        assert!(!Region::new(10, 10).contains_range(15, usize::MAX));
        assert!(Region::new(10, 10).contains_range(15, 5));
        let mut l = linux();
        l.offset = 0xffff_8880_0000_0000 - (0xffff800000000000 >> 3);
        assert_eq!(l.validate(), Err(LayoutError::ShadowOverlap));
        let mut l = linux();
        l.vmalloc = Region { start: 0, end: 0 };
        assert_eq!(l.validate(), Ok(()), "a kernel without a vmalloc window");
    }
}
