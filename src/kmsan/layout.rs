//! Where KMSAN's metadata lives: for each data region the kernel declares,
//! a shadow region (1 byte per data byte) and an origin region (4 bytes per
//! 4 data bytes), both at fixed offsets from the data address.
//!
//! ```text
//!  data region          shadow (1:1)                    origin (1:1, per 4-byte slot)
//!  [start, end)    ──►  [shadow, shadow + len)          [origin, origin + len)
//!  addr            ──►  shadow + (addr - start)         origin + ((addr & !3) - start)
//! ```
//!
//! The kernel chooses the bases per region (there is no single offset that
//! maps Linux's direct map and image into free space twice over);
//! [`KmsanLayout::validate`] refuses overlaps and misalignment.
//!
//! The vmalloc window has no metadata of its own: a vmalloc (or vmap)
//! address uses the metadata of the RAM page mapped there, as in Linux,
//! so data written through one mapping is initialized through the other.

use crate::layout::Region;
use crate::mapper::PAGE_SIZE;

/// One data region and where its metadata lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaRegion {
    /// The data addresses.
    pub data: Region,
    /// Address of the shadow byte of `data.start`.
    pub shadow: usize,
    /// Address of the origin slot of `data.start`.
    pub origin: usize,
}

impl MetaRegion {
    /// The shadow addresses.
    #[must_use]
    pub const fn shadow_range(&self) -> Region {
        Region::new(self.shadow, self.data.len())
    }

    /// The origin addresses.
    #[must_use]
    pub const fn origin_range(&self) -> Region {
        Region::new(self.origin, self.data.len())
    }

    /// Shadow address of `addr` (inside `data`).
    #[inline(always)]
    #[must_use]
    pub const fn shadow_of(&self, addr: usize) -> usize {
        self.shadow + (addr - self.data.start)
    }

    /// Origin slot address of `addr` (inside `data`): 4-byte aligned.
    #[inline(always)]
    #[must_use]
    pub const fn origin_of(&self, addr: usize) -> usize {
        self.origin + ((addr & !3) - self.data.start)
    }
}

/// The data regions KMSAN covers, with their metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KmsanLayout {
    /// All RAM: page frame `n` at `direct_map.data.start + n * 4096`.
    pub direct_map: MetaRegion,
    /// The vmalloc window: its pages alias RAM pages (see
    /// [`crate::Platform::vmalloc_to_ram`]).
    pub vmalloc: Region,
    /// The kernel image (globals; metadata mapped at init).
    pub image: MetaRegion,
}

/// Why a [`KmsanLayout`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmsanLayoutError {
    /// A data or metadata region is not page aligned, or a region is empty.
    Unaligned,
    /// A region wraps around the address space.
    Wraps,
    /// Two of the seven ranges (three data, two shadow, two origin) overlap.
    Overlap,
}

impl KmsanLayout {
    /// The regions with metadata.
    #[must_use]
    pub const fn regions(&self) -> [MetaRegion; 2] {
        [self.direct_map, self.image]
    }

    /// Check alignment, wrap-around and that no two ranges overlap.
    pub fn validate(&self) -> Result<(), KmsanLayoutError> {
        if !self.vmalloc.start.is_multiple_of(PAGE_SIZE) || !self.vmalloc.end.is_multiple_of(PAGE_SIZE) || self.vmalloc.end < self.vmalloc.start {
            return Err(KmsanLayoutError::Unaligned);
        }
        let mut all = [self.vmalloc; 7];
        for (i, r) in self.regions().iter().enumerate() {
            let len = r.data.len();
            if r.data.end < r.data.start || len == 0 {
                return Err(KmsanLayoutError::Unaligned);
            }
            for start in [r.data.start, r.shadow, r.origin] {
                if !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
                    return Err(KmsanLayoutError::Unaligned);
                }
                if start.checked_add(len).is_none() {
                    return Err(KmsanLayoutError::Wraps);
                }
            }
            all[3 * i + 1] = r.data;
            all[3 * i + 2] = r.shadow_range();
            all[3 * i + 3] = r.origin_range();
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.start < b.end && b.start < a.end {
                    return Err(KmsanLayoutError::Overlap);
                }
            }
        }
        Ok(())
    }

    /// The smallest range holding every shadow and origin address (what a
    /// mapper must accept).
    #[must_use]
    pub fn meta_span(&self) -> Region {
        let mut lo = usize::MAX;
        let mut hi = 0;
        for r in self.regions() {
            for m in [r.shadow_range(), r.origin_range()] {
                lo = lo.min(m.start);
                hi = hi.max(m.end);
            }
        }
        Region { start: lo, end: hi }
    }

    /// Page frames of RAM.
    #[must_use]
    pub const fn ram_pages(&self) -> usize {
        self.direct_map.data.len() / PAGE_SIZE
    }

    /// The region holding `addr`, if any.
    #[inline]
    #[must_use]
    pub fn region_of(&self, addr: usize) -> Option<&MetaRegion> {
        [&self.direct_map, &self.image].into_iter().find(|r| r.data.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's choice: Linux's data addresses, metadata in the region
    /// KASAN's shadow uses (a kernel is built with one sanitizer).
    fn guest() -> KmsanLayout {
        KmsanLayout {
            direct_map: MetaRegion {
                data: Region::new(0xffff_8880_0000_0000, 1 << 30),
                shadow: 0xffff_ec00_0000_0000,
                origin: 0xffff_ed00_0000_0000,
            },
            vmalloc: Region::new(0xffff_c900_0000_0000, 1 << 30),
            image: MetaRegion {
                data: Region::new(0xffff_ffff_8000_0000, 16 << 20),
                shadow: 0xffff_ee00_0000_0000,
                origin: 0xffff_ef00_0000_0000,
            },
        }
    }

    #[test]
    fn guest_layout_is_valid_and_maps_by_offset() {
        let l = guest();
        assert_eq!(l.validate(), Ok(()));
        let dm = l.direct_map;
        assert_eq!(dm.shadow_of(0xffff_8880_0000_1235), 0xffff_ec00_0000_1235);
        assert_eq!(dm.origin_of(0xffff_8880_0000_1235), 0xffff_ed00_0000_1234);
        assert_eq!(l.meta_span(), Region { start: 0xffff_ec00_0000_0000, end: 0xffff_ef00_0100_0000 });
        assert_eq!(l.region_of(0xffff_ffff_8000_0008), Some(&l.image));
        assert_eq!(l.region_of(0xffff_c900_0000_0008), None, "vmalloc has no metadata of its own");
        assert_eq!(l.region_of(0x1000), None);
        assert_eq!(l.ram_pages(), 1 << 18);
    }

    #[test]
    fn validate_refuses_overlap_and_misalignment() {
        let mut l = guest();
        l.image.origin = l.direct_map.shadow;
        assert_eq!(l.validate(), Err(KmsanLayoutError::Overlap));
        let mut l = guest();
        l.image.shadow += 8;
        assert_eq!(l.validate(), Err(KmsanLayoutError::Unaligned));
        let mut l = guest();
        l.image.shadow = usize::MAX & !0xfff;
        assert_eq!(l.validate(), Err(KmsanLayoutError::Wraps));
        let mut l = guest();
        l.image.data = Region::new(l.direct_map.data.start + 4096, 4096);
        assert_eq!(l.validate(), Err(KmsanLayoutError::Overlap));
    }
}
