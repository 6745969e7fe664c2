//! The arch boundary: how the runtime asks a backend to map shadow pages.
//!
//! The shadow region is virtual memory at `(addr >> 3) + offset`. A backend
//! (the x86_64 page-table mapper in `arch/x86_64`, or the host mmap backend in
//! [`crate::host`]) backs each 4 KiB *shadow page* with either
//!
//! * one of a few **shared read-only pages** ([`SharedPage`]), the same
//!   physical page mapped many times (on x86_64 with shared page tables), or
//! * a **private page**, writable, owned by that one shadow page.
//!
//! ```text
//!   shadow page:   S0      S1      S2      S3      S4 ...
//!   backing:      [ZERO]  [ZERO]  [priv]  [0xFF]  [CONSULT]
//!                   \______/ one physical zero page, read-only
//! ```
//!
//! The core decides *which* backing each shadow page gets (see
//! [`crate::runtime`]); the backend only carries it out. Every remap returns a
//! [`Flush`] that must be consumed: a stale TLB entry for the old backing
//! would let a check read the wrong shadow and hide or invent a report.

/// Size of one shadow page (and of one data page).
pub const PAGE_SIZE: usize = 4096;

/// The shared, read-only pages a backend keeps, each filled with one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SharedPage {
    /// All zero: every granule under it is fully accessible.
    Zero = 0,
    /// All [`crate::shadow::PAGE_FREE`]: every page under it is free.
    PageFree = 1,
    /// All [`crate::shadow::CONSULT_PER_PAGE`]: a mixed block; the slow
    /// path decides from the per-page shadow.
    Consult = 2,
    /// All [`crate::shadow::VMALLOC_INVALID`]: vmalloc space with no area.
    VmallocInvalid = 3,
}

impl SharedPage {
    /// Every shared page kind, in `repr` order.
    pub const ALL: [SharedPage; 4] = [
        SharedPage::Zero,
        SharedPage::PageFree,
        SharedPage::Consult,
        SharedPage::VmallocInvalid,
    ];

    /// The byte every position of this page holds.
    #[must_use]
    pub const fn fill(self) -> u8 {
        match self {
            SharedPage::Zero => 0,
            SharedPage::PageFree => crate::shadow::PAGE_FREE,
            SharedPage::Consult => crate::shadow::CONSULT_PER_PAGE,
            SharedPage::VmallocInvalid => crate::shadow::VMALLOC_INVALID,
        }
    }
}

/// Why a backend could not carry out a mapping request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No frame (or page-table page) is left for a private shadow page.
    OutOfFrames,
    /// The address is not page aligned or lies outside the shadow region.
    BadAddress,
    /// The backend failed for a reason of its own (an `mmap` error on the host).
    Backend,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MapError::OutOfFrames => "no frame left for shadow",
            MapError::BadAddress => "address outside the shadow region or unaligned",
            MapError::Backend => "backend mapping failed",
        })
    }
}

/// A pending TLB flush for one shadow page. Dropping it without calling
/// [`Flush::flush`] or [`Flush::ignore`] is a bug the compiler warns about.
#[must_use = "the TLB may still hold the old shadow mapping; call flush()"]
#[derive(Debug)]
pub struct Flush {
    page: usize,
}

impl Flush {
    /// A flush of the shadow page at `page`, for a backend that has just
    /// remapped it.
    ///
    /// # Safety
    ///
    /// Only a [`ShadowMapper`] implementation calls this, for a page whose
    /// mapping it changed in the call that returns the flush: the token
    /// stands for a TLB entry that may be stale, and the runtime trusts that
    /// flushing it is all the remap needs. (Outside code has no remap to
    /// stand for; a token it made up would only make a stale entry look
    /// handled.)
    #[must_use = "the TLB may still hold the old shadow mapping; return the flush to the caller"]
    pub const unsafe fn new(page: usize) -> Self {
        Flush { page }
    }

    /// The shadow page this flush covers.
    #[must_use]
    pub const fn page(&self) -> usize {
        self.page
    }

    /// Flush the page on this CPU through `mapper`.
    pub fn flush<M: ShadowMapper + ?Sized>(self, mapper: &mut M) {
        mapper.flush_page(self.page);
    }

    /// Drop the flush: only correct when a full flush follows before any check.
    pub fn ignore(self) {}
}

/// A backend that maps shadow pages.
///
/// # Safety
///
/// Implementors guarantee that, once a returned [`Flush`] has been flushed,
/// a load from any address in a mapped shadow page returns the backing's
/// contents (the shared page's fill, or what was last written to the private
/// page); that a new private page holds its fill before any CPU can reach
/// it through the new mapping (a check racing with the remap reads either
/// the old backing or the filled page, never a half-filled one); that
/// shared pages are never writable; that a private frame being replaced is
/// flushed from the TLB (of every CPU) before the frame is reused; and that
/// nothing else maps or writes the shadow region.
pub unsafe trait ShadowMapper {
    /// Map shared page `kind` read-only over every shadow page in
    /// `[start, end)` (page aligned), replacing what was there. Used at init
    /// and for large ranges; a page-table backend shares whole tables here.
    ///
    /// Unlike the one-page calls it returns no [`Flush`]: a range remap
    /// replaces whole tables, so the backend flushes everything it changed
    /// (on every CPU) before it returns, and frees replaced frames only
    /// after that. There is nothing left for the caller to forget.
    fn map_shared_range(&mut self, start: usize, end: usize, kind: SharedPage)
        -> Result<(), MapError>;

    /// Map shared page `kind` at the shadow page `page`. If a private page
    /// was there, its frame goes back to the backend's source (after the
    /// TLB entry for `page` is flushed).
    fn map_shared(&mut self, page: usize, kind: SharedPage) -> Result<Flush, MapError>;

    /// Map a fresh writable private page at `page`, every byte set to `fill`.
    /// Fails with [`MapError::OutOfFrames`] when no frame is left; the old
    /// mapping then stays.
    fn map_private(&mut self, page: usize, fill: u8) -> Result<Flush, MapError>;

    /// Flush the TLB entry of one shadow page (on every CPU that may hold it).
    fn flush_page(&mut self, page: usize);

    /// Bytes of page-table pages the backend holds for the shadow region.
    fn table_bytes(&self) -> usize;

    /// Most bytes of page-table pages the backend ever held at once.
    fn table_peak_bytes(&self) -> usize {
        self.table_bytes()
    }

    /// Shrinker: give back page-table pages that map nothing but one kind
    /// of shared page (the backend may keep them while kinds flip). Returns
    /// the pages given back.
    fn reshare(&mut self) -> usize {
        0
    }
}
