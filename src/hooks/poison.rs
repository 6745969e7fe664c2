//! Explicit poisoning (the kernel API and the compiler's alloca calls)
//! and the effective shadow of an address (reports, tests).

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Set the shadow of `[addr, addr + size)` (granule aligned) to `value`,
    /// as `__asan_set_shadow_*` and the poison of stack frames do. Shadow
    /// that is not private (unchecked) is left alone.
    pub fn poison_range(&self, addr: usize, size: Size, value: u8) {
        let size = size.0;
        if self.cfg.mode == Mode::Off || !addr.is_multiple_of(GRANULE) {
            return;
        }
        let Some(end) = addr.checked_add(size) else { return };
        if !self.layout.covered.contains_range(addr, size) {
            return;
        }
        if self.shadow_stays_private(addr, end) {
            self.write_shadow(addr, end, value);
            return;
        }
        let _guard = self.lock_if_remappable(addr, end);
        self.fill_shadow(addr, end, value);
    }

    /// Whether the shadow of `[start, end)` (not empty) is private and
    /// stays so while the caller owns that memory, decided with one load:
    /// the range lies in one data page and that page is in the image
    /// (private from init), or in the direct map in `full` mode (all of it
    /// private from init), or in `hybrid` is tracked (its block stays
    /// private while one of its pages is; a page that got no frame is
    /// `Unchecked`, not tracked). This is the case of the compiler's frame
    /// poisoning on a kernel stack, the most frequent shadow write;
    /// anything else goes through [`Kasan::fill_shadow`]'s per-block test
    /// (and in `hybrid` the lock, [`Kasan::lock_if_remappable`]).
    #[inline(always)]
    fn shadow_stays_private(&self, start: usize, end: usize) -> bool {
        if end <= start || (start ^ (end - 1)) >> 12 != 0 {
            return false;
        }
        if let Some(pfn) = self.pages.pfn(start) {
            return match self.cfg.mode {
                Mode::Full => true,
                Mode::Hybrid => self.pages.is_tracked(pfn),
                Mode::Off => false,
            };
        }
        self.layout.image.contains(start) && self.layout.image.contains(end - 1)
    }

    /// The runtime lock when the shadow of `[start, end)` may be remapped
    /// by another CPU's hook while the caller writes it: in `hybrid`, a
    /// direct-map page that is not tracked (its block's shadow page goes
    /// shared, private or back as pages around it come and go, so a write
    /// found writable could land on a page just replaced, or fault on a
    /// read-only shared one). `None` (no lock) for everything the caller
    /// owns and whose shadow stays put while it does: tracked pages (a
    /// block stays private while one is tracked), the image, regions,
    /// live vmalloc areas, and all of `full` mode. The compiler's frame
    /// poisoning of stacks thus stays lock-free.
    fn lock_if_remappable(&self, start: usize, end: usize) -> Option<spin::MutexGuard<'_, Inner<M>>> {
        if self.cfg.mode != Mode::Hybrid || end <= start {
            return None;
        }
        let dm = self.layout.direct_map;
        let (lo, hi) = (start.max(dm.start), end.min(dm.end));
        if lo >= hi {
            return None;
        }
        let (first, last) = (self.pages.pfn(lo)?, self.pages.pfn(hi - 1)?);
        (first..=last).any(|p| self.pages.get(p).state != PageState::Tracked).then(|| self.inner.lock())
    }

    /// Make `[addr, addr + size)` accessible (`addr` granule aligned).
    pub fn unpoison_range(&self, addr: usize, size: Size) {
        let size = size.0;
        if self.cfg.mode == Mode::Off || !addr.is_multiple_of(GRANULE) || !self.layout.covered.contains_range(addr, size) {
            return;
        }
        let _guard = self.lock_if_remappable(addr, addr + size);
        self.unpoison(addr, size);
    }

    /// `__asan_alloca_poison`: a dynamically sized stack buffer of `size`
    /// bytes at `addr` (32-byte aligned), with a 32-byte redzone before it
    /// and one from its end to 32 bytes past its size rounded up to 32.
    /// The size comes from instrumented code: one whose poisoned span would
    /// wrap around or leave the covered memory is refused, as is a
    /// misaligned `addr`, and nothing changes.
    pub fn alloca_poison(&self, addr: usize, size: Size) -> Result<(), PoisonError> {
        let size = size.0;
        const RZ: usize = 32;
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        if !addr.is_multiple_of(RZ) {
            return Err(PoisonError::Unaligned);
        }
        let padded = size.checked_add(RZ - 1).ok_or(PoisonError::BadSize)? & !(RZ - 1);
        let span = padded.checked_add(2 * RZ).ok_or(PoisonError::BadSize)?;
        if addr < RZ || !self.layout.covered.contains_range(addr - RZ, span) {
            return Err(PoisonError::BadSize);
        }
        let rounded = round_up(size, GRANULE);
        let _guard = self.lock_if_remappable(addr - RZ, addr + padded + RZ);
        self.unpoison(addr, size);
        self.fill_shadow(addr - RZ, addr, crate::shadow::ALLOCA_LEFT);
        self.fill_shadow(addr + rounded, addr + padded + RZ, crate::shadow::ALLOCA_RIGHT);
        Ok(())
    }

    /// `__asan_allocas_unpoison`: the stack from `top` to `bottom` is live again.
    pub fn allocas_unpoison(&self, top: usize, bottom: usize) {
        if top == 0 || top > bottom {
            return;
        }
        self.unpoison_range(top & !(GRANULE - 1), Size(bottom - (top & !(GRANULE - 1))));
    }

    /// The shadow byte an access would see at `addr`, with the per-page
    /// state resolved for CONSULT blocks: what `full` mode holds there.
    #[must_use]
    pub fn effective_shadow(&self, addr: usize) -> Option<u8> {
        if self.cfg.mode == Mode::Off || !self.layout.covered.contains(addr) {
            return None;
        }
        let v = self.shadow_byte(addr);
        if v != crate::shadow::CONSULT_PER_PAGE {
            return Some(v);
        }
        Some(match self.pages.pfn(addr).map(|p| self.pages.get(p).state) {
            Some(PageState::Free) => PAGE_FREE,
            _ => 0,
        })
    }
}
