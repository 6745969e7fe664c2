//! Page-backed (large) kmalloc.

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// A page-backed kmalloc of `size` bytes in the allocated pages at
    /// `addr`: the tail after `size` is poisoned as page redzone. The pages
    /// are plain allocated ones, or this very kmalloc (krealloc in place).
    pub fn kmalloc_large(&self, addr: usize, order: u32, size: Size) -> Result<(), PageError> {
        let size = size.0;
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        if size == 0 || size > count * PAGE_SIZE {
            return Err(PageError::BadSize);
        }
        let mut inner = self.inner.lock();
        if !self.plain(pfn, count) && !self.block_of(pfn, count, PageKind::LargeKmalloc) {
            return Err(PageError::WrongPageState);
        }
        self.track_pages(&mut inner, pfn, count, PageKind::LargeKmalloc);
        self.unpoison(addr, size);
        self.fill_shadow(addr + round_up(size, GRANULE), addr + count * PAGE_SIZE, PAGE_REDZONE);
        Stats::bump(&self.stats.slab_allocs);
        Ok(())
    }

    /// kfree of a page-backed kmalloc at `ptr` of `2^order` pages. An
    /// interior pointer (or a wrong order) is an invalid free, a freed one
    /// a double free.
    pub fn kfree_large(&self, ptr: usize, order: u32, ip: Ip) -> Result<(), Bug> {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        match self.large_block(ptr, order) {
            Ok((pfn, count)) => {
                self.untrack_pages(&mut inner, pfn, count);
                Ok(())
            }
            Err(bug) => {
                drop(inner);
                Err(self.report_free(ptr, bug, ip))
            }
        }
    }

    /// The frames `(pfn, count)` of the page-backed kmalloc that a free of
    /// `ptr` (`2^order` pages) gives back; anything else is the bug to
    /// report: an interior pointer or a wrong order an invalid free, freed
    /// pages a double free. Called under the lock (the pages' states must
    /// not change before the caller acts on the answer), so the caller
    /// reports after dropping it.
    pub(super) fn large_block(&self, ptr: usize, order: u32) -> Result<(usize, usize), BugType> {
        let Ok((pfn, count)) = self.page_range(ptr, order) else {
            return Err(BugType::InvalidFree);
        };
        if self.pages.get(pfn).state == PageState::Free {
            return Err(BugType::DoubleFree);
        }
        if !self.block_of(pfn, count, PageKind::LargeKmalloc) {
            return Err(BugType::InvalidFree);
        }
        Ok((pfn, count))
    }

    /// `ksize()` of the page-backed kmalloc at `ptr` of `2^order` pages:
    /// all its pages made accessible and their size returned, as Linux's
    /// ksize hands out the whole allocation. Anything else gets 0 and no
    /// shadow change; its first byte is checked (reported if poisoned).
    pub fn ksize_large(&self, ptr: usize, order: u32, ip: Ip) -> usize {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return if order <= 20 { PAGE_SIZE << order } else { 0 };
        }
        let guard = self.inner.lock();
        match self.page_range(ptr, order) {
            Ok((pfn, count)) if self.block_of(pfn, count, PageKind::LargeKmalloc) => {
                self.unpoison(ptr, count * PAGE_SIZE);
                count * PAGE_SIZE
            }
            _ => {
                drop(guard);
                let _ = self.check(ptr, Size(1), false, Ip(ip));
                0
            }
        }
    }

    // ---- kernel stacks -----------------------------------------------------
}
