//! Tracked regions: any virtual range a kernel registers for byte-precise
//! shadow, outside the direct map, the vmalloc window and the image (a heap
//! at its own virtual range, a boot stack).
//!
//! ```text
//!  add_region(kind, [start, end))   checked against the layout:
//!    block aligned, inside `covered`, no overlap with the direct map,
//!    the vmalloc window, the image, the shadow of the covered range or
//!    another region ──► private shadow for the whole range, filled
//!    Heap:  0xFF (not handed out: use-after-free)   Stack: 0x00
//! ```
//!
//! A region's shadow is private in every mode (it is byte-tracked memory,
//! as slab pages are), so `full` and `hybrid` give the same verdicts. Its
//! kind names its bugs: the shadow codes say what was hit (a heap object's
//! redzone is slab-out-of-bounds, a freed object slab-use-after-free, a
//! frame's redzone or a dead scope stack-out-of-bounds), and reports
//! describe the heap object or the stack. Regions stay for the kernel's
//! lifetime.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::backing::{remap, Backing};
use crate::config::Mode;
use crate::layout::{Region, BLOCK_SIZE};
use crate::mapper::{MapError, ShadowMapper, PAGE_SIZE};
use crate::platform::Platform;
use crate::runtime::Kasan;
use crate::shadow::PAGE_FREE;

/// Regions the runtime can track at once.
pub const MAX_REGIONS: usize = 8;

/// What a tracked region holds (it decides the initial shadow and the
/// description in reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegionKind {
    /// A heap ([`crate::heap`]): shadow starts as free (0xFF).
    Heap = 1,
    /// A kernel stack: shadow starts accessible; the compiler poisons frames.
    Stack = 2,
}

impl RegionKind {
    const fn from_u8(v: u8) -> Option<RegionKind> {
        match v {
            1 => Some(RegionKind::Heap),
            2 => Some(RegionKind::Stack),
            _ => None,
        }
    }
}

/// Why a region was refused (nothing was mapped for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// Start or end is not aligned to [`BLOCK_SIZE`] (32 KiB).
    Unaligned,
    /// The region is empty or wraps around.
    Empty,
    /// Part of it lies outside the layout's `covered` range (no shadow there).
    OutsideCovered,
    /// It overlaps the direct map, the vmalloc window, the image, the
    /// shadow itself or a region already registered.
    Overlap,
    /// [`MAX_REGIONS`] regions are registered already.
    TooMany,
    /// No frame for its shadow (what was mapped is given back).
    Map(MapError),
}

impl core::fmt::Display for RegionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegionError::Unaligned => f.write_str("region not aligned to 32 KiB"),
            RegionError::Empty => f.write_str("region empty or wrapping"),
            RegionError::OutsideCovered => f.write_str("region outside the covered range"),
            RegionError::Overlap => f.write_str("region overlaps a known region or the shadow"),
            RegionError::TooMany => f.write_str("too many regions"),
            RegionError::Map(e) => write!(f, "mapping its shadow: {e}"),
        }
    }
}

/// The table of regions: appended under the runtime lock, read lock-free.
pub(crate) struct Regions {
    start: [AtomicUsize; MAX_REGIONS],
    end: [AtomicUsize; MAX_REGIONS],
    kind: [AtomicU8; MAX_REGIONS],
    len: AtomicUsize,
}

impl Regions {
    pub(crate) const fn new() -> Self {
        Regions {
            start: [const { AtomicUsize::new(0) }; MAX_REGIONS],
            end: [const { AtomicUsize::new(0) }; MAX_REGIONS],
            kind: [const { AtomicU8::new(0) }; MAX_REGIONS],
            len: AtomicUsize::new(0),
        }
    }

    /// The region holding `addr`.
    #[inline]
    pub(crate) fn find(&self, addr: usize) -> Option<(RegionKind, Region)> {
        // Acquire: pairs with push's Release, so the entries below `n` are
        // the ones written before it was published (another CPU's add).
        let n = self.len.load(core::sync::atomic::Ordering::Acquire);
        (0..n).find_map(|i| {
            let r = Region { start: self.start[i].load(Relaxed), end: self.end[i].load(Relaxed) };
            if r.contains(addr) {
                RegionKind::from_u8(self.kind[i].load(Relaxed)).map(|k| (k, r))
            } else {
                None
            }
        })
    }

    fn overlaps(&self, r: Region) -> bool {
        let n = self.len.load(core::sync::atomic::Ordering::Acquire);
        (0..n).any(|i| self.start[i].load(Relaxed) < r.end && r.start < self.end[i].load(Relaxed))
    }

    /// Append (the caller holds the runtime lock and checked the room).
    fn push(&self, kind: RegionKind, r: Region) {
        let i = self.len.load(Relaxed);
        self.start[i].store(r.start, Relaxed);
        self.end[i].store(r.end, Relaxed);
        self.kind[i].store(kind as u8, Relaxed);
        self.len.store(i + 1, core::sync::atomic::Ordering::Release);
    }
}

const fn overlap(a: Region, b: Region) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Whether `r` may become a tracked region of this layout.
    pub(crate) fn check_region(&self, r: Region) -> Result<(), RegionError> {
        if r.end <= r.start {
            return Err(RegionError::Empty);
        }
        if !r.start.is_multiple_of(BLOCK_SIZE) || !r.end.is_multiple_of(BLOCK_SIZE) {
            return Err(RegionError::Unaligned);
        }
        let l = &self.layout;
        if r.start < l.covered.start || r.end > l.covered.end {
            return Err(RegionError::OutsideCovered);
        }
        let shadow = l.shadow_of(l.covered);
        if [l.direct_map, l.vmalloc, l.image, shadow].into_iter().any(|o| overlap(o, r)) || self.regions.overlaps(r) {
            return Err(RegionError::Overlap);
        }
        if self.regions.len.load(Relaxed) == MAX_REGIONS {
            return Err(RegionError::TooMany);
        }
        Ok(())
    }

    /// Track `r` byte-precisely as a region of `kind`: its shadow becomes
    /// private (see the module). In `off` mode the region is checked and
    /// nothing is mapped.
    pub fn add_region(&self, kind: RegionKind, r: Region) -> Result<(), RegionError> {
        let mut inner = self.inner.lock();
        self.check_region(r)?;
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let fill = match kind {
            RegionKind::Heap => PAGE_FREE,
            RegionKind::Stack => 0,
        };
        let s = self.layout.shadow_of(r);
        let mut page = s.start;
        while page < s.end {
            if let Err(e) = remap(&mut inner.mapper, &self.stats, page, Backing::Zero, Backing::Private, fill) {
                // Give back what was mapped: the covered gap reads as valid.
                let mut back = s.start;
                while back < page {
                    let _ = remap(&mut inner.mapper, &self.stats, back, Backing::Private, Backing::Zero, 0);
                    back += PAGE_SIZE;
                }
                return Err(RegionError::Map(e));
            }
            page += PAGE_SIZE;
        }
        self.regions.push(kind, r);
        Ok(())
    }

    /// The tracked region holding `addr`, with its kind.
    #[must_use]
    pub fn region_of(&self, addr: usize) -> Option<(RegionKind, Region)> {
        self.regions.find(addr)
    }
}
