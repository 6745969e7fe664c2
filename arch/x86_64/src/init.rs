//! Boot-time helpers: sizes from the memory map, and the initial shadow
//! mapping.
//!
//! ```text
//!   memory map:   [RAM 0..640K)  hole  [RAM 1M..128M)  hole  [RAM 4G..5G)
//!   per-page:     1 byte per pfn in 0..max_pfn at VMEMMAP_BASE
//!
//!   shadow:  SHADOW_START ......................................... SHADOW_END
//!            |<----------- SharedPage::Zero via shared PDPTs ------------>|
//!                   [PT' PT' PT'] private, pinned: shadow of the direct map
//!                   of each RAM range, and of extra ranges (kernel image)
//! ```
//!
//! After [`init_shadow`], every single-page `map_private` / `map_shared` in
//! the prepared ranges needs at most the data frame itself.

use hybrid_shadow::mapper::{MapError, ShadowMapper, SharedPage};

use crate::frames::FrameSource;
use crate::layout::{shadow_range_of, DIRECT_MAP_BASE, PAGE_SIZE};
use crate::mapper::{PrepareError, X86ShadowMapper};
use crate::phys::PhysMem;
use crate::tlb::TlbFlush;

/// One usable RAM range of the memory map, physical `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// First byte.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
}

/// Sizes derived from the memory map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Whole 4 KiB frames inside the RAM ranges.
    pub frames: usize,
    /// One past the highest frame number (the per-page array is indexed by pfn).
    pub max_pfn: usize,
    /// Bytes of the per-page array (one byte per pfn below `max_pfn`),
    /// rounded up to whole pages.
    pub per_page_bytes: usize,
    /// Bytes classic KASAN would spend on shadow for these frames (1/8).
    pub full_shadow_bytes: usize,
}

/// Frame counts and per-page array size for the RAM ranges `ram`.
/// Partial pages at range ends are not counted; ranges may be unsorted
/// but must not overlap.
#[must_use]
pub fn memory_info(ram: &[RamRange]) -> MemoryInfo {
    let page = PAGE_SIZE as u64;
    let mut frames = 0usize;
    let mut max_pfn = 0usize;
    for r in ram {
        let first = r.start.div_ceil(page);
        let end = r.end / page;
        if end > first {
            frames += (end - first) as usize;
            max_pfn = max_pfn.max(end as usize);
        }
    }
    MemoryInfo {
        frames,
        max_pfn,
        per_page_bytes: max_pfn.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        full_shadow_bytes: frames * (PAGE_SIZE >> 3),
    }
}

/// Map the whole shadow region of `mapper` to [`SharedPage::Zero`] with
/// shared tables (one PML4 entry per 512 GiB; no frame is allocated when
/// the region is empty or already shared).
pub fn map_shadow_region<F: FrameSource, M: PhysMem, T: TlbFlush>(
    mapper: &mut X86ShadowMapper<F, M, T>,
) -> Result<(), MapError> {
    let c = *mapper.config();
    mapper.map_shared_range(c.shadow_start, c.shadow_end, SharedPage::Zero)
}

/// Pre-allocate (and pin) private page tables for the shadow of the
/// virtual range `[lo, hi)` (`hi == 0` means the top of the address
/// space). The part of the shadow outside the mapper's region is ignored.
pub fn unshare_shadow_of<F: FrameSource, M: PhysMem, T: TlbFlush>(
    mapper: &mut X86ShadowMapper<F, M, T>,
    lo: usize,
    hi: usize,
) -> Result<(), PrepareError> {
    let (s, e) = shadow_range_of(lo, hi);
    let c = mapper.config();
    let (s, e) = (s.max(c.shadow_start), e.min(c.shadow_end));
    if s >= e {
        return Ok(());
    }
    mapper.unshare_range(s, e)
}

/// Map private shadow pages, every byte `fill`, for the shadow of the
/// virtual range `[lo, hi)` (classic KASAN's `full` mode at boot).
pub fn populate_shadow_of<F: FrameSource, M: PhysMem, T: TlbFlush>(
    mapper: &mut X86ShadowMapper<F, M, T>,
    lo: usize,
    hi: usize,
    fill: u8,
) -> Result<(), MapError> {
    let (s, e) = shadow_range_of(lo, hi);
    let c = mapper.config();
    let (s, e) = (s.max(c.shadow_start), e.min(c.shadow_end));
    let mut page = s;
    while page < e {
        mapper.map_private(page, fill)?.flush(mapper);
        page += PAGE_SIZE;
    }
    Ok(())
}

/// The direct-map virtual range of a RAM range.
#[must_use]
pub const fn direct_map_of(r: RamRange) -> (usize, usize) {
    (
        DIRECT_MAP_BASE + r.start as usize,
        DIRECT_MAP_BASE + r.end as usize,
    )
}

/// What [`init_shadow`] spent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Page-table bytes held by the mapper afterwards (shared + private).
    pub table_bytes: usize,
    /// Private page-table pages allocated by the preparation.
    pub private_tables: usize,
}

/// Boot-time shadow setup for the `hybrid` mode: the whole region becomes
/// [`SharedPage::Zero`], then the shadow of the direct map of every RAM
/// range and of every `extra` virtual range (kernel image, stacks, ...)
/// gets private, pinned PTs.
pub fn init_shadow<F: FrameSource, M: PhysMem, T: TlbFlush>(
    mapper: &mut X86ShadowMapper<F, M, T>,
    ram: &[RamRange],
    extra: &[(usize, usize)],
) -> Result<InitReport, PrepareError> {
    map_shadow_region(mapper)?;
    for r in ram {
        if r.end > r.start {
            let (lo, hi) = direct_map_of(*r);
            unshare_shadow_of(mapper, lo, hi)?;
        }
    }
    for &(lo, hi) in extra {
        unshare_shadow_of(mapper, lo, hi)?;
    }
    Ok(InitReport {
        table_bytes: mapper.table_bytes(),
        private_tables: mapper.stats().private_tables,
    })
}

#[cfg(test)]
mod tests;
