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
//!
//! Object sizes are [`Size`](crate::Size)s, so neither compiles in the
//! address's place. Input that breaks the allocator's contract is refused
//! with the error of the hook's kind, as KASAN's hooks do: [`PageError`]
//! for pages, stacks and slab pages, [`SlabError`] for objects (both
//! convert into [`HookError`](crate::HookError)); nothing changes then.

//!
//! One file per allocator kind ([`pages`], [`slab`], [`stacks`]); this one
//! holds the checks they share and the switch between page-granular and
//! byte-tracked pages.

mod pages;
mod slab;
mod stacks;

use crate::error::{PageError, SlabError};

/// What an allocation holds when the allocator hands it out
/// ([`Kmsan::page_alloc`], [`Kmsan::kmalloc_large`], [`Kmsan::slab_alloc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocInit {
    /// The allocator cleared it (`__GFP_ZERO`, `kzalloc`): initialized.
    Zeroed,
    /// Whatever the memory held before: uninitialized, with a new origin
    /// at the allocation.
    Uninit,
}
use crate::kmsan::propagate::chunks;
use crate::kmsan::runtime::{Kmsan, Place};
use crate::backing::Backing;
use crate::kmsan::state::MetaPage;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::page_state::PageKind;
use crate::platform::Platform;

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Page frames of `[addr, addr + 2^order pages)` after checking they are RAM.
    pub(super) fn ram_pages(&self, addr: usize, order: u32) -> Result<core::ops::Range<usize>, PageError> {
        crate::hooks::frame_order(addr, order, |a| self.ram_pfn(a), self.ram.len())
    }

    /// The RAM frame of `addr`, if it is in RAM.
    pub(super) fn ram_pfn(&self, addr: usize) -> Option<usize> {
        match self.place(addr) {
            Place::Ram(pfn) => Some(pfn),
            _ => None,
        }
    }

    /// Allocated pages become byte-tracked (`kind`: slab or stack).
    pub(super) fn track(&self, addr: usize, order: u32, kind: PageKind) -> Result<(), PageError> {
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind != PageKind::Page) {
            return Err(PageError::WrongPageState);
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
    pub(super) fn untrack(&self, addr: usize, order: u32, kind: PageKind) -> Result<(), PageError> {
        let pages = self.ram_pages(addr, order)?;
        if pages.clone().any(|i| self.ram.get(i).kind != kind) {
            return Err(PageError::WrongPageState);
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

    /// `[ptr, ptr + size)` lies in RAM pages of `kind` (byte-tracked).
    pub(super) fn check_tracked(&self, ptr: usize, size: usize, kind: PageKind) -> Result<(), SlabError> {
        let end = ptr.checked_add(size).ok_or(SlabError::BadSize)?;
        for (a, _) in chunks(ptr, end - ptr) {
            match self.place(a) {
                Place::Ram(i) if self.ram.get(i).kind == kind => {}
                Place::Ram(_) => return Err(SlabError::WrongPageState),
                _ => return Err(SlabError::NotRam),
            }
        }
        Ok(())
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
