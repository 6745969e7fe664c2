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

/// Why an allocator hook refused its input: every kind at once. KASAN's
/// hooks return the enum of their kind ([`PageError`], [`SlabError`],
/// [`VmallocError`], [`PoisonError`]), each of which converts into this
/// one; KMSAN's hooks return it directly. The shadow is left unchanged.
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

/// Why a page-level hook refused its input ([`crate::Kasan::page_alloc`],
/// `stack_alloc` / `stack_free`, `slab_page_alloc` / `slab_page_free`,
/// `kmalloc_large`, `mark_reserved`). The shadow is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageError {
    /// The address is not in the direct map (not RAM).
    NotRam,
    /// The address is not page aligned (or not aligned to its order).
    Unaligned,
    /// The page order is above 20 or the range runs past RAM.
    BadOrder,
    /// `page_alloc` of a page that is not free.
    PageInUse,
    /// The pages are not in the state this hook needs (e.g. a slab page
    /// hook on free pages, a release of a wrong order or an interior page).
    WrongPageState,
    /// `kmalloc_large` of zero bytes or of more than its pages hold.
    BadSize,
    /// `slab_page_alloc` for a cache that is not live.
    Cache(CacheError),
}

/// Why a slab object hook refused its input (`cache_create`,
/// `cache_destroy`, `slab_alloc`, `slab_resize`). The shadow is left
/// unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlabError {
    /// A cache error (bad geometry, unknown, busy or destroyed cache).
    Cache(CacheError),
    /// The object address is not granule aligned.
    Unaligned,
    /// The address is not in the direct map (not RAM).
    NotRam,
    /// The address is not on a slab page, or (`slab_resize`) the object
    /// there is not allocated.
    WrongPageState,
    /// A size larger than the cache's objects (or, for `slab_resize`, a
    /// misaligned object).
    BadSize,
    /// The address is not the start of a slot of that cache (an interior
    /// pointer, another cache's slab, or a slot cut off by the slab's end).
    NotSlot,
    /// The allocator handed out a slot that is still allocated.
    SlotInUse,
    /// The allocator handed out a slot that is still in quarantine (only a
    /// slot [`crate::Kasan::quarantine_pop`] returned may be reused).
    SlotQuarantined,
}

/// Why a vmalloc hook refused its input (`vmalloc_alloc`, `vmalloc_free`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmallocError {
    /// The area address is not page aligned.
    Unaligned,
    /// The size is zero or larger than the area.
    BadSize,
    /// The area is outside the vmalloc window (or there is none).
    NotVmalloc,
}

/// Why [`crate::Kasan::alloca_poison`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoisonError {
    /// The address is not aligned to the alloca redzone (32 bytes).
    Unaligned,
    /// The poisoned span would wrap around or leave the covered memory.
    BadSize,
}

impl From<CacheError> for PageError {
    fn from(e: CacheError) -> Self {
        PageError::Cache(e)
    }
}

impl From<CacheError> for SlabError {
    fn from(e: CacheError) -> Self {
        SlabError::Cache(e)
    }
}

impl From<PageError> for HookError {
    fn from(e: PageError) -> Self {
        match e {
            PageError::NotRam => HookError::NotRam,
            PageError::Unaligned => HookError::Unaligned,
            PageError::BadOrder => HookError::BadOrder,
            PageError::PageInUse => HookError::PageInUse,
            PageError::WrongPageState => HookError::WrongPageState,
            PageError::BadSize => HookError::BadSize,
            PageError::Cache(c) => HookError::Cache(c),
        }
    }
}

impl From<SlabError> for HookError {
    fn from(e: SlabError) -> Self {
        match e {
            SlabError::Cache(c) => HookError::Cache(c),
            SlabError::Unaligned => HookError::Unaligned,
            SlabError::NotRam => HookError::NotRam,
            SlabError::WrongPageState => HookError::WrongPageState,
            SlabError::BadSize => HookError::BadSize,
            SlabError::NotSlot => HookError::NotSlot,
            SlabError::SlotInUse => HookError::SlotInUse,
            SlabError::SlotQuarantined => HookError::SlotQuarantined,
        }
    }
}

impl From<VmallocError> for HookError {
    fn from(e: VmallocError) -> Self {
        match e {
            VmallocError::Unaligned => HookError::Unaligned,
            VmallocError::BadSize => HookError::BadSize,
            VmallocError::NotVmalloc => HookError::NotVmalloc,
        }
    }
}

impl From<PoisonError> for HookError {
    fn from(e: PoisonError) -> Self {
        match e {
            PoisonError::Unaligned => HookError::Unaligned,
            PoisonError::BadSize => HookError::BadSize,
        }
    }
}

macro_rules! display_via_hook_error {
    ($($t:ty),*) => {$(
        impl core::fmt::Display for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Display::fmt(&HookError::from(*self), f)
            }
        }
    )*};
}
display_via_hook_error!(PageError, SlabError, VmallocError, PoisonError);

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
