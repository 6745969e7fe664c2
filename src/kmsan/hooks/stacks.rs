//! Kernel stack hooks: a stack's pages are byte-tracked while it is in
//! use; the compiler poisons each frame's locals.

use crate::error::PageError;
use crate::kmsan::runtime::Kmsan;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Allocated pages at `addr` become a kernel stack (initialized;
    /// the compiler poisons each frame's locals).
    pub fn stack_alloc(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        self.track(addr, order, PageKind::Stack)?;
        let mut inner = self.inner.lock();
        self.set_range(&mut inner, addr, PAGE_SIZE << order, false, crate::kmsan::origin::NO_ORIGIN);
        Ok(())
    }

    /// A kernel stack is given up (its pages stay allocated until freed,
    /// initialized). Refused pages keep their metadata.
    pub fn stack_free(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        self.untrack(addr, order, PageKind::Stack)?;
        let mut inner = self.inner.lock();
        self.set_range(&mut inner, addr, PAGE_SIZE << order, false, crate::kmsan::origin::NO_ORIGIN);
        Ok(())
    }
}
