//! What a kernel's allocators tell KMSAN (Linux's `kmsan_alloc_page`,
//! `kmsan_free_page`, `kmsan_slab_alloc`, `kmsan_slab_free`, vmalloc and
//! stack hooks).
//!
//! ```text
//!  buddy alloc ─► page_alloc(zeroed?) ─► [slab_page_alloc | stack_alloc]
//!  slab:   slab_alloc(zeroed?) ... slab_free ─► (slab page empty) slab_page_free ─► page_free
//!  stacks: stack_alloc ... stack_free ─► page_free
//!  vmalloc: page_alloc per page, mapped in the window (no hook: a vmalloc
//!           address uses the metadata of the frame the page tables map there)
//! ```
//!
//! Pages allocated without zeroing are uninitialized with the allocation as
//! their origin; freed memory is uninitialized with the free as origin,
//! flagged so a later use is reported as use-after-free. Slab pages and
//! stacks are byte-tracked (private metadata while they are in use).

use crate::error::HookError;
use crate::kmsan::propagate::chunks;
use crate::kmsan::runtime::{Kmsan, Place};
use crate::backing::Backing;
use crate::kmsan::state::MetaPage;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;
use crate::stats::Stats;

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Page frames of `[addr, addr + 2^order pages)` after checking they are RAM.
    fn ram_pages(&self, addr: usize, order: u32) -> Result<core::ops::Range<usize>, HookError> {
        if order > 20 {
            return Err(HookError::BadOrder);
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(HookError::Unaligned);
        }
        let Place::Ram(pfn) = self.place(addr) else { return Err(HookError::NotRam) };
        let count = 1usize << order;
        if pfn + count > self.ram.len() {
            return Err(HookError::BadOrder);
        }
        Ok(pfn..pfn + count)
    }

    /// RAM the page allocator never hands out (image, boot data):
    /// initialized.
    pub fn mark_reserved(&self, addr: usize, len: usize) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(HookError::Unaligned);
        }
        let Place::Ram(pfn) = self.place(addr) else { return Err(HookError::NotRam) };
        let count = len.div_ceil(PAGE_SIZE);
        if count == 0 || pfn + count > self.ram.len() {
            return Err(HookError::BadOrder);
        }
        let mut inner = self.inner.lock();
        for i in pfn..pfn + count {
            self.share(&mut inner, Place::Ram(i), None, PageKind::Reserved);
        }
        Ok(())
    }

    /// The page allocator handed out `2^order` pages at `addr`; `zeroed`
    /// when it cleared them (`__GFP_ZERO`).
    pub fn page_alloc(&self, addr: usize, order: u32, zeroed: bool) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind != PageKind::None) {
            return Err(HookError::PageInUse);
        }
        let mut inner = self.inner.lock();
        let o = if zeroed { None } else { Some(self.new_origin(&mut inner, false)) };
        for i in pages {
            self.share(&mut inner, Place::Ram(i), o, PageKind::Page);
        }
        Ok(())
    }

    /// `2^order` pages at `addr` go back to the page allocator.
    pub fn page_free(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind == PageKind::None) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        let o = self.new_origin(&mut inner, true);
        for i in pages {
            self.share(&mut inner, Place::Ram(i), Some(o), PageKind::None);
        }
        Ok(())
    }

    /// Allocated pages become byte-tracked (`kind`: slab or stack).
    fn track(&self, addr: usize, order: u32, kind: PageKind) -> Result<(), HookError> {
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind != PageKind::Page) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        for i in pages {
            self.materialize(&mut inner, Place::Ram(i));
            let p = self.ram.get(i);
            self.ram.set(i, MetaPage { kind, ..p });
        }
        Ok(())
    }

    /// Byte-tracked pages become page-granular again; pages whose bytes
    /// are all initialized go back to the shared zero page.
    fn untrack(&self, addr: usize, order: u32, kind: PageKind) -> Result<(), HookError> {
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind != kind) {
            return Err(HookError::WrongPageState);
        }
        let mut inner = self.inner.lock();
        for i in pages {
            let p = self.ram.get(i);
            self.ram.set(i, MetaPage { kind: PageKind::Page, ..p });
            let a = self.layout.direct_map.data.start + i * PAGE_SIZE;
            if p.backing == Backing::Private && self.all_init(a, PAGE_SIZE) {
                self.share(&mut inner, Place::Ram(i), None, PageKind::Page);
            }
        }
        Ok(())
    }

    /// Allocated pages at `addr` become a slab.
    pub fn slab_page_alloc(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        self.track(addr, order, PageKind::Slab)
    }

    /// A slab's pages stop being a slab (they are still allocated; the
    /// kernel calls [`Kmsan::page_free`] next, or reuses them).
    pub fn slab_page_free(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        self.untrack(addr, order, PageKind::Slab)
    }

    /// A slab object of `size` bytes at `ptr` was handed out; `zeroed`
    /// when the allocator cleared it (`kzalloc`, `__GFP_ZERO`).
    pub fn slab_alloc(&self, ptr: usize, size: usize, zeroed: bool) -> Result<(), HookError> {
        if !self.on() || size == 0 {
            return Ok(());
        }
        self.check_tracked(ptr, size, PageKind::Slab)?;
        Stats::bump(&self.stats.slab_allocs);
        let mut inner = self.inner.lock();
        if zeroed {
            self.set_range(&mut inner, ptr, size, false, crate::kmsan::origin::NO_ORIGIN);
        } else {
            let o = self.new_origin(&mut inner, false);
            self.set_range(&mut inner, ptr, size, true, o);
        }
        Ok(())
    }

    /// A slab object of `size` bytes at `ptr` was freed: its bytes are
    /// uninitialized and a later use is a use-after-free.
    pub fn slab_free(&self, ptr: usize, size: usize) -> Result<(), HookError> {
        if !self.on() || size == 0 {
            return Ok(());
        }
        self.check_tracked(ptr, size, PageKind::Slab)?;
        let mut inner = self.inner.lock();
        let o = self.new_origin(&mut inner, true);
        self.set_range(&mut inner, ptr, size, true, o);
        Ok(())
    }

    fn check_tracked(&self, ptr: usize, size: usize, kind: PageKind) -> Result<(), HookError> {
        let end = ptr.checked_add(size).ok_or(HookError::BadSize)?;
        for (a, _) in chunks(ptr, end - ptr) {
            match self.place(a) {
                Place::Ram(i) if self.ram.get(i).kind == kind => {}
                Place::Ram(_) => return Err(HookError::WrongPageState),
                _ => return Err(HookError::NotRam),
            }
        }
        Ok(())
    }

    /// A page-backed (large) kmalloc of `2^order` pages at `addr` (after
    /// `page_alloc`): uninitialized, created here (`zeroed` for `kzalloc`).
    /// The whole block is set, so its pages stay page-granular (the bytes
    /// past the requested size are as uninitialized as Linux leaves them).
    pub fn kmalloc_large(&self, addr: usize, order: u32, zeroed: bool) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind == PageKind::None) {
            return Err(HookError::WrongPageState);
        }
        Stats::bump(&self.stats.slab_allocs);
        let mut inner = self.inner.lock();
        if zeroed {
            self.set_range(&mut inner, addr, PAGE_SIZE << order, false, crate::kmsan::origin::NO_ORIGIN);
        } else {
            let o = self.new_origin(&mut inner, false);
            self.set_range(&mut inner, addr, PAGE_SIZE << order, true, o);
        }
        Ok(())
    }

    /// Allocated pages at `addr` become a kernel stack (initialized;
    /// the compiler poisons each frame's locals).
    pub fn stack_alloc(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        self.track(addr, order, PageKind::Stack)?;
        let mut inner = self.inner.lock();
        self.set_range(&mut inner, addr, PAGE_SIZE << order, false, crate::kmsan::origin::NO_ORIGIN);
        Ok(())
    }

    /// A kernel stack is given up (its pages stay allocated until freed).
    pub fn stack_free(&self, addr: usize, order: u32) -> Result<(), HookError> {
        if !self.on() {
            return Ok(());
        }
        {
            let mut inner = self.inner.lock();
            self.set_range(&mut inner, addr, PAGE_SIZE << order, false, crate::kmsan::origin::NO_ORIGIN);
        }
        self.untrack(addr, order, PageKind::Stack)
    }

    /// The metadata state of `addr`'s page (tests and statistics).
    #[must_use]
    pub fn page_meta(&self, addr: usize) -> Option<MetaPage> {
        self.page_of(self.place(addr)).map(|(_, p)| p)
    }

    /// Private metadata pages of RAM now, by page kind (statistics).
    #[must_use]
    pub fn census(&self) -> crate::kmsan::state::MetaCensus {
        crate::kmsan::state::MetaCensus::of(&self.ram)
    }

    /// The shadow byte and origin of `addr` as a check would see them.
    #[must_use]
    pub fn meta_of(&self, addr: usize) -> (u8, crate::kmsan::origin::Origin) {
        (self.shadow_at(addr), self.origin_at(addr))
    }
}
