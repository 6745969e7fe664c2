//! Page allocator hooks: pages handed out (zeroed or not) and freed,
//! reserved RAM, and page-backed (large) kmalloc.

use super::AllocInit;
use crate::error::PageError;
use crate::hooks::Size;
use crate::kmsan::runtime::{Kmsan, Place};
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;
use crate::stats::Stats;

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// RAM the page allocator never hands out (image, boot data):
    /// initialized.
    pub fn mark_reserved(&self, addr: usize, len: Size) -> Result<(), PageError> {
        let len = len.bytes();
        if !self.on() {
            return Ok(());
        }
        let frames = crate::hooks::frame_span(addr, len.div_ceil(PAGE_SIZE), |a| self.ram_pfn(a), self.ram.len())?;
        let mut inner = self.inner.lock();
        for i in frames {
            self.share(&mut inner, Place::Ram(i), None, PageKind::Reserved);
        }
        Ok(())
    }

    /// The page allocator handed out `2^order` pages at `addr`, cleared
    /// or not as `init` says.
    pub fn page_alloc(&self, addr: usize, order: u32, init: AllocInit) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind != PageKind::None) {
            return Err(PageError::PageInUse);
        }
        let mut inner = self.inner.lock();
        let o = match init {
            AllocInit::Zeroed => None,
            AllocInit::Uninit => Some(self.new_origin(&mut inner, false)),
        };
        for i in pages {
            self.share(&mut inner, Place::Ram(i), o, PageKind::Page);
        }
        Ok(())
    }

    /// `2^order` pages at `addr` go back to the page allocator.
    pub fn page_free(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind == PageKind::None) {
            return Err(PageError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        let o = self.new_origin(&mut inner, true);
        for i in pages {
            self.share(&mut inner, Place::Ram(i), Some(o), PageKind::None);
        }
        Ok(())
    }

    /// A page-backed (large) kmalloc of `2^order` pages at `addr` (after
    /// `page_alloc`): created here, uninitialized or cleared (`kzalloc`) as
    /// `init` says.
    /// The whole block is set, so its pages stay page-granular (the bytes
    /// past the requested size are as uninitialized as Linux leaves them).
    pub fn kmalloc_large(&self, addr: usize, order: u32, init: AllocInit) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind == PageKind::None) {
            return Err(PageError::WrongPageState);
        }
        Stats::bump(&self.stats.slab_allocs);
        let mut inner = self.inner.lock();
        if init == AllocInit::Zeroed {
            self.set_range(&mut inner, addr, PAGE_SIZE << order, false, crate::kmsan::origin::NO_ORIGIN);
        } else {
            let o = self.new_origin(&mut inner, false);
            self.set_range(&mut inner, addr, PAGE_SIZE << order, true, o);
        }
        Ok(())
    }
}
