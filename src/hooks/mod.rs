//! Allocator hooks: what a kernel's page allocator, slab, kmalloc, stacks,
//! vmalloc and global registration tell the runtime.
//!
//! Call order a kernel follows (mirrors Linux's KASAN hooks):
//!
//! ```text
//!  buddy alloc ─► page_alloc ─► [slab_page_alloc | kmalloc_large | stack_alloc]
//!  slab:   cache_create ─► slab_page_alloc ─► slab_alloc ... slab_free ─► quarantine_pop ─► (slot reusable)
//!          slab page empty ─► slab_page_free ─► page_free ─► buddy free
//!  large:  kfree_large ─► page_free          stacks: stack_free ─► page_free
//!  vmalloc: vmalloc_alloc(area incl. guard) ... vmalloc_free
//! ```
//!
//! Hooks that can meet a bug of the caller (double free, invalid free)
//! report it and return `Err(bug)`; the kernel must then not free. Hooks
//! given input that breaks the allocator's own contract return the error
//! of their kind ([`PageError`], [`SlabError`], [`VmallocError`],
//! [`PoisonError`]; each converts into [`HookError`](crate::HookError)) and leave the shadow
//! unchanged.

use crate::cache::{read_meta, write_meta, CacheError, CacheId, CacheInfo, ObjMeta, ObjState};
use crate::config::Mode;
use crate::depot::{StackHandle, Trace, MAX_FRAMES};
use crate::error::{GlobalError, PageError, PoisonError, SlabError, VmallocError};
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::{PageInfo, PageKind, PageState};
use crate::platform::Platform;
use crate::report::{Bug, BugType};
use crate::runtime::{Inner, Kasan};
use crate::shadow::{
    GLOBAL_REDZONE, GRANULE, PAGE_FREE, PAGE_REDZONE, SLAB_FREE, SLAB_REDZONE, VMALLOC_INVALID,
};
use crate::stats::Stats;

/// A slab object the quarantine hands back for the kernel to really free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// Its cache.
    pub cache: CacheId,
    /// Its address.
    pub ptr: usize,
}

/// What the kernel does with an object after a successful `slab_free`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Freed {
    /// The object is in quarantine: its slot stays taken until
    /// [`Kasan::quarantine_pop`] returns it.
    Quarantined,
    /// No quarantine (`off` mode): free the slot now.
    FreeNow,
}

/// Alignment of an instrumented global and of the end of its span (its
/// size with redzone). Compilers place every instrumented global at a
/// multiple of 32 and round its redzone so that the span ends on one:
/// LLVM's AddressSanitizer aligns the new global to
/// `getMinRedzoneSizeForGlobal()` (32 at shadow scale 3; globals aligned
/// more are not instrumented) and `getRedzoneSizeForGlobal` makes
/// `size + redzone` a multiple of it; GCC uses `ASAN_RED_ZONE_SIZE` (32)
/// the same way. The runtime claims the image in such slots (one bit each).
pub const GLOBAL_ALIGN: usize = 32;

/// The compiler's descriptor of one instrumented global (ASan ABI v8).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GlobalDesc {
    /// Address of the global.
    pub beg: usize,
    /// Its size.
    pub size: usize,
    /// Size including the redzone the compiler placed after it.
    pub size_with_redzone: usize,
    /// Name (C string).
    pub name: *const u8,
    /// Module name (C string).
    pub module_name: *const u8,
    /// Whether it has a dynamic initializer.
    pub has_dynamic_init: usize,
    /// Source location descriptor.
    pub location: *const u8,
    /// ODR indicator.
    pub odr_indicator: usize,
}

impl GlobalDesc {
    /// A descriptor of a global of `size` bytes at `beg` followed by its
    /// redzone up to `size_with_redzone`, with no name or location (a
    /// kernel's own globals, tests).
    #[must_use]
    pub const fn new(beg: usize, size: usize, size_with_redzone: usize) -> Self {
        GlobalDesc {
            beg,
            size,
            size_with_redzone,
            name: core::ptr::null(),
            module_name: core::ptr::null(),
            has_dynamic_init: 0,
            location: core::ptr::null(),
            odr_indicator: 0,
        }
    }
}

const fn round_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// A length in bytes, where a hook or check also takes an address:
/// `kasan.slab_alloc(id, ptr, Size(64))`. A bare `usize` would compile in
/// the address's place (or the address in its place); a `Size` does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Size(pub usize);

impl Size {
    /// The number of bytes.
    #[must_use]
    #[inline(always)]
    pub const fn bytes(self) -> usize {
        self.0
    }
}

/// A return address: the code a report's title and stack start from (the
/// caller of the kernel's free or check entry point, 0 if unknown):
/// `kasan.page_free(addr, order, Ip(ret))`. A bare `usize` would compile in
/// an address's place; an `Ip` does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Ip(pub usize);

/// The RAM frames `[pfn, pfn + count)` of a hook's `count` pages at
/// `addr`, checked as every page hook (KASAN's and KMSAN's) checks them:
/// `addr` page aligned ([`PageError::Unaligned`]), `pfn_of(addr)` its frame
/// ([`PageError::NotRam`] when `None`), at least one page and all of them
/// among the `frames` frames of RAM ([`PageError::BadOrder`]).
pub(crate) fn frame_span(
    addr: usize,
    count: usize,
    pfn_of: impl FnOnce(usize) -> Option<usize>,
    frames: usize,
) -> Result<core::ops::Range<usize>, PageError> {
    if !addr.is_multiple_of(PAGE_SIZE) {
        return Err(PageError::Unaligned);
    }
    let pfn = pfn_of(addr).ok_or(PageError::NotRam)?;
    if count == 0 || count > frames.saturating_sub(pfn) {
        return Err(PageError::BadOrder);
    }
    Ok(pfn..pfn + count)
}

/// [`frame_span`] of `2^order` pages (order at most 20).
pub(crate) fn frame_order(
    addr: usize,
    order: u32,
    pfn_of: impl FnOnce(usize) -> Option<usize>,
    frames: usize,
) -> Result<core::ops::Range<usize>, PageError> {
    if order > 20 {
        return Err(PageError::BadOrder);
    }
    frame_span(addr, 1 << order, pfn_of, frames)
}

mod globals;
mod large;
mod mempool;
mod pages;
mod poison;
mod slab;
mod stacks;
mod vmalloc;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Whether the runtime checks at all; in `off` mode hooks accept and do nothing.
    pub(crate) fn on(&self) -> bool {
        self.cfg.mode != Mode::Off
    }

    /// Frames of `[pfn, pfn + 2^order)` after checking they are RAM.
    fn page_range(&self, addr: usize, order: u32) -> Result<(usize, usize), PageError> {
        let r = frame_order(addr, order, |a| self.pages.pfn(a), self.pages.len())?;
        Ok((r.start, r.len()))
    }

    /// Save the current stack in the depot, starting at the frame whose
    /// return address is `from` when it is on the stack (the frames above
    /// it are the runtime's own), else as the platform gives it.
    pub(crate) fn save_stack_from(&self, inner: &mut Inner<M>, from: usize) -> StackHandle {
        let mut buf = [0usize; MAX_FRAMES];
        let n = self.platform.stack_trace(&mut buf).min(MAX_FRAMES);
        let first = crate::report::first_frame(&buf[..n], from);
        let (buf, n) = (&buf[first..n], n - first);
        let h = inner.depot.save(&buf[..n]);
        if h == crate::depot::NO_STACK && n != 0 {
            Stats::bump(&self.stats.depot_dropped);
        }
        h
    }

    /// The frames of a stored stack.
    #[must_use]
    pub fn fetch_stack(&self, h: StackHandle) -> Trace {
        self.inner.lock().depot.fetch(h)
    }

    /// Mark RAM that the page allocator never hands out (image, boot data,
    /// firmware) as valid.
    pub fn mark_reserved(&self, addr: usize, len: Size) -> Result<(), PageError> {
        let len = len.0;
        if !self.on() {
            return Ok(());
        }
        let frames = frame_span(addr, len.div_ceil(PAGE_SIZE), |a| self.pages.pfn(a), self.pages.len())?;
        let mut inner = self.inner.lock();
        let info = PageInfo { state: PageState::Valid, kind: PageKind::Reserved, head: false };
        self.set_states(&mut inner, frames.start, frames.len(), |_| info);
        Ok(())
    }
}
