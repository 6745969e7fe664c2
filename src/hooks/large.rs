//! Page-backed (large) kmalloc.

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// A page-backed kmalloc of `size` bytes in the allocated pages at
    /// `addr`: the tail after `size` is poisoned as page redzone.
    pub fn kmalloc_large(&self, addr: usize, order: u32, size: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        if size == 0 || size > count * PAGE_SIZE {
            return Err(HookError::BadSize);
        }
        if !self.allocated(pfn, count) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        self.track_pages(&mut inner, pfn, count, PageKind::LargeKmalloc);
        self.unpoison(addr, size);
        self.fill_shadow(addr + round_up(size, GRANULE), addr + count * PAGE_SIZE, PAGE_REDZONE);
        Stats::bump(&self.stats.slab_allocs);
        Ok(())
    }

    /// kfree of a page-backed kmalloc at `ptr` of `2^order` pages. An
    /// interior pointer is an invalid free, a freed one a double free.
    pub fn kfree_large(&self, ptr: usize, order: u32, ip: usize) -> Result<(), Bug> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let Ok((pfn, count)) = self.page_range(ptr, order) else {
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        };
        let head = self.pages.get(pfn);
        if head.state == PageState::Free {
            return Err(self.report_free(ptr, BugType::DoubleFree, ip));
        }
        if head.kind != PageKind::LargeKmalloc || !head.head {
            return Err(self.report_free(ptr, BugType::InvalidFree, ip));
        }
        let mut inner = self.inner.lock();
        self.untrack_pages(&mut inner, pfn, count);
        Ok(())
    }

    // ---- kernel stacks -----------------------------------------------------
}
