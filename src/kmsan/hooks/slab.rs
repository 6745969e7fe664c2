//! Slab hooks: slab pages become byte-tracked, objects are created
//! uninitialized (or zeroed) and die uninitialized with a use-after-free
//! origin.

use super::AllocInit;
use crate::error::{PageError, SlabError};
use crate::hooks::Size;
use crate::kmsan::runtime::Kmsan;
use crate::mapper::ShadowMapper;
use crate::page_state::PageKind;
use crate::platform::Platform;
use crate::stats::Stats;

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Allocated pages at `addr` become a slab.
    pub fn slab_page_alloc(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        self.track(addr, order, PageKind::Slab)
    }

    /// A slab's pages stop being a slab (they are still allocated; the
    /// kernel calls [`Kmsan::page_free`] next, or reuses them).
    pub fn slab_page_free(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        self.untrack(addr, order, PageKind::Slab)
    }

    /// A slab object of `size` bytes at `ptr` was handed out, cleared or
    /// not as `init` says.
    pub fn slab_alloc(&self, ptr: usize, size: Size, init: AllocInit) -> Result<(), SlabError> {
        let size = size.bytes();
        if !self.on() || size == 0 {
            return Ok(());
        }
        self.check_tracked(ptr, size, PageKind::Slab)?;
        Stats::bump(&self.stats.slab_allocs);
        let mut inner = self.inner.lock();
        if init == AllocInit::Zeroed {
            self.set_range(&mut inner, ptr, size, false, crate::kmsan::origin::NO_ORIGIN);
        } else {
            let o = self.new_origin(&mut inner, false);
            self.set_range(&mut inner, ptr, size, true, o);
        }
        Ok(())
    }

    /// A slab object of `size` bytes at `ptr` was freed: its bytes are
    /// uninitialized and a later use is a use-after-free.
    pub fn slab_free(&self, ptr: usize, size: Size) -> Result<(), SlabError> {
        let size = size.bytes();
        if !self.on() || size == 0 {
            return Ok(());
        }
        self.check_tracked(ptr, size, PageKind::Slab)?;
        let mut inner = self.inner.lock();
        let o = self.new_origin(&mut inner, true);
        self.set_range(&mut inner, ptr, size, true, o);
        Ok(())
    }
}
