//! Errors of the runtime's entry points.

use crate::cache::CacheError;
use crate::layout::LayoutError;
use crate::mapper::MapError;

/// Why the runtime could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The layout breaks an invariant.
    Layout(LayoutError),
    /// The metadata arena is smaller than [`crate::Kasan::arena_bytes`].
    ArenaTooSmall,
    /// The backend could not map the initial shadow.
    Map(MapError),
}

/// Why an allocator hook refused its input. The shadow is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookError {
    /// The address is not in the direct map (not RAM).
    NotRam,
    /// The address is not aligned as the hook requires.
    Unaligned,
    /// The page order is above 20 or the range runs past RAM.
    BadOrder,
    /// `page_alloc` of a page that is not free.
    PageInUse,
    /// The pages are not in the state this hook needs (e.g. a slab page
    /// hook on free pages).
    WrongPageState,
    /// A size of zero where one is needed, larger than the object, or one
    /// that takes the range past the end of the address space or out of
    /// the memory the runtime covers.
    BadSize,
    /// A cache error.
    Cache(CacheError),
    /// The allocator handed out a slot that is still allocated.
    SlotInUse,
    /// The allocator handed out a slot that is still in quarantine (only a
    /// slot [`crate::Kasan::quarantine_pop`] returned may be reused).
    SlotQuarantined,
    /// The address is not the start of a slot of that cache (an interior
    /// pointer, another cache's slab, or a slot cut off by the slab's end).
    NotSlot,
    /// The address is outside the vmalloc window.
    NotVmalloc,
}

impl From<CacheError> for HookError {
    fn from(e: CacheError) -> Self {
        HookError::Cache(e)
    }
}

impl core::fmt::Display for HookError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HookError::NotRam => f.write_str("address is not RAM"),
            HookError::Unaligned => f.write_str("address is not aligned"),
            HookError::BadOrder => f.write_str("bad page order or range past RAM"),
            HookError::PageInUse => f.write_str("page allocated twice"),
            HookError::WrongPageState => f.write_str("pages are in the wrong state for this hook"),
            HookError::BadSize => f.write_str("bad size"),
            HookError::Cache(e) => write!(f, "cache: {e}"),
            HookError::SlotInUse => f.write_str("slot handed out while allocated"),
            HookError::SlotQuarantined => f.write_str("slot handed out while in quarantine"),
            HookError::NotSlot => f.write_str("address is not the start of a slot of this cache"),
            HookError::NotVmalloc => f.write_str("address is outside the vmalloc window"),
        }
    }
}

/// Why a global descriptor was rejected (nothing was poisoned for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalError {
    /// `beg` is not a multiple of [`GLOBAL_ALIGN`](crate::hooks::GLOBAL_ALIGN)
    /// (32): compilers align every instrumented global to it.
    Unaligned,
    /// `size > size_with_redzone`, or the range wraps.
    BadSize,
    /// `size_with_redzone` is not a multiple of
    /// [`GLOBAL_ALIGN`](crate::hooks::GLOBAL_ALIGN) (32): compilers round
    /// the redzone so that a global's span ends on one.
    UnalignedEnd,
    /// The global is not inside the kernel image.
    OutsideImage,
    /// Its span (body or redzone) overlaps the span of a global already
    /// registered.
    Overlap,
}
