//! vmalloc areas (shadow populated per area, guard pages poisoned).

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// A vmalloc area at `addr` (page aligned) spanning `area_len` bytes
    /// including its guard, of which the first `size` are the allocation.
    /// Returns `Ok(false)` when some of its shadow could not be mapped (that
    /// part goes unchecked).
    pub fn vmalloc_alloc(&self, addr: usize, size: Size, area_len: Size) -> Result<bool, VmallocError> {
        let size = size.0;
        let area_len = area_len.0;
        if !self.on() {
            return Ok(true);
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(VmallocError::Unaligned);
        }
        if size == 0 || size > area_len {
            return Err(VmallocError::BadSize);
        }
        if !self.layout.vmalloc.contains_range(addr, area_len) {
            return Err(VmallocError::NotVmalloc);
        }
        let mut inner = self.inner.lock();
        self.promote_pending(&mut inner);
        let ok = self.vm_get(&mut inner, addr, addr + area_len, VMALLOC_INVALID);
        self.unpoison(addr, size);
        self.fill_shadow(addr + round_up(size, GRANULE), addr + area_len, VMALLOC_INVALID);
        Ok(ok)
    }

    /// The vmalloc area at `addr` of `area_len` bytes is freed.
    pub fn vmalloc_free(&self, addr: usize, area_len: Size) -> Result<(), VmallocError> {
        let area_len = area_len.0;
        if !self.on() {
            return Ok(());
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(VmallocError::Unaligned);
        }
        if !self.layout.vmalloc.contains_range(addr, area_len) {
            return Err(VmallocError::NotVmalloc);
        }
        let mut inner = self.inner.lock();
        self.fill_shadow(addr, addr + area_len, VMALLOC_INVALID);
        self.vm_put(&mut inner, addr, addr + area_len);
        Ok(())
    }

    // ---- globals -----------------------------------------------------------
}
