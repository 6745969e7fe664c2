//! Kernel stacks.

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// A kernel stack of `2^order` allocated pages at `addr`: byte tracked,
    /// all accessible (the compiler poisons frames as they are entered).
    pub fn stack_alloc(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        let mut inner = self.inner.lock();
        if !self.plain(pfn, count) {
            return Err(PageError::WrongPageState);
        }
        self.track_pages(&mut inner, pfn, count, PageKind::Stack);
        self.fill_shadow(addr, addr + count * PAGE_SIZE, 0);
        Ok(())
    }

    /// A kernel stack is done (before `page_free`): leftover frame poison
    /// is dropped. `addr` and `order` must be the whole stack's.
    pub fn stack_free(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        let mut inner = self.inner.lock();
        if !self.block_of(pfn, count, PageKind::Stack) {
            return Err(PageError::WrongPageState);
        }
        self.untrack_pages(&mut inner, pfn, count);
        Ok(())
    }

    // ---- vmalloc -----------------------------------------------------------
}
