//! `ShadowMapper` for a host process: shared pages are memfd pages mapped
//! read-only (`MAP_SHARED`) at many addresses, private pages are anonymous
//! mappings; replacing a mapping is one `mmap(MAP_FIXED)`.

use crate::layout::Region;
use crate::mapper::{Flush, MapError, ShadowMapper, SharedPage, PAGE_SIZE};
use std::collections::HashSet;
use std::sync::OnceLock;

/// Pages per memfd: a run of shared pages is mapped this many at a time.
const CHUNK_PAGES: usize = 64;

/// One memfd per shared page kind, each `CHUNK_PAGES` pages of its fill.
fn shared_fds() -> &'static [i32; 4] {
    static FDS: OnceLock<[i32; 4]> = OnceLock::new();
    FDS.get_or_init(|| {
        SharedPage::ALL.map(|kind| {
            let len = CHUNK_PAGES * PAGE_SIZE;
            // SAFETY: plain syscalls on a new memfd owned by this process;
            // the temporary mapping is unmapped before returning.
            unsafe {
                let fd = libc::memfd_create(c"hybrid-shadow-shared".as_ptr(), libc::MFD_CLOEXEC);
                assert!(fd >= 0, "memfd_create failed");
                assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0, "ftruncate failed");
                let p = libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED, "mmap of memfd failed");
                core::ptr::write_bytes(p.cast::<u8>(), kind.fill(), len);
                libc::munmap(p, len);
                fd
            }
        })
    })
}

/// The host mapper.
pub struct HostMapper {
    shadow: Region,
    private: HashSet<usize>,
    frame_limit: Option<usize>,
    mmaps: usize,
    remaps: usize,
}

impl HostMapper {
    /// A mapper over the reserved shadow range `shadow` (see
    /// [`crate::host::space::HostSpace::shadow`]).
    #[must_use]
    pub fn new(shadow: Region) -> Self {
        HostMapper { shadow, private: HashSet::new(), frame_limit: None, mmaps: 0, remaps: 0 }
    }

    /// Allow at most `n` private pages at once (to test running out).
    pub fn set_frame_limit(&mut self, n: Option<usize>) {
        self.frame_limit = n;
    }

    /// Private pages mapped now.
    #[must_use]
    pub fn private_pages(&self) -> usize {
        self.private.len()
    }

    /// Shadow pages remapped one at a time (shared to private, private to
    /// shared, one shared page for another): the transitions of the
    /// runtime's blocks after init.
    #[must_use]
    pub fn remaps(&self) -> usize {
        self.remaps
    }

    /// `mmap` calls made (a cost figure for benchmarks).
    #[must_use]
    pub fn mmap_calls(&self) -> usize {
        self.mmaps
    }

    fn in_range(&self, start: usize, end: usize) -> Result<(), MapError> {
        if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) || start < self.shadow.start || end > self.shadow.end {
            return Err(MapError::BadAddress);
        }
        Ok(())
    }

    fn map_shared_run(&mut self, at: usize, pages: usize, kind: SharedPage) -> Result<(), MapError> {
        let fd = shared_fds()[kind as usize];
        // SAFETY: `at..at + pages * 4096` lies in the shadow range this
        // mapper owns (checked by callers); MAP_FIXED replaces what was there.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                pages * PAGE_SIZE,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                0,
            )
        };
        self.mmaps += 1;
        if p == libc::MAP_FAILED {
            return Err(MapError::Backend);
        }
        for k in 0..pages {
            self.private.remove(&(at + k * PAGE_SIZE));
        }
        Ok(())
    }
}

// SAFETY: shared pages are memfd pages mapped PROT_READ only; private pages
// are fresh anonymous mappings; `mmap(MAP_FIXED)` replaces a mapping
// atomically and the host kernel shoots down stale TLB entries before the
// old page can be reused; only this mapper maps the reserved shadow range.
unsafe impl ShadowMapper for HostMapper {
    fn map_shared_range(&mut self, start: usize, end: usize, kind: SharedPage) -> Result<(), MapError> {
        self.in_range(start, end)?;
        let mut at = start;
        while at < end {
            let pages = ((end - at) / PAGE_SIZE).min(CHUNK_PAGES);
            self.map_shared_run(at, pages, kind)?;
            at += pages * PAGE_SIZE;
        }
        Ok(())
    }

    fn map_shared(&mut self, page: usize, kind: SharedPage) -> Result<Flush, MapError> {
        self.in_range(page, page + PAGE_SIZE)?;
        self.map_shared_run(page, 1, kind)?;
        self.remaps += 1;
        // SAFETY: this backend, for the page it has just remapped.
        Ok(unsafe { Flush::new(page) })
    }

    fn map_private(&mut self, page: usize, fill: u8) -> Result<Flush, MapError> {
        self.in_range(page, page + PAGE_SIZE)?;
        let fresh = !self.private.contains(&page);
        if fresh && self.frame_limit.is_some_and(|n| self.private.len() >= n) {
            return Err(MapError::OutOfFrames);
        }
        // The new page is filled where no check can see it, then moved over
        // `page` in one step (as a page-table backend fills the frame before
        // it writes the entry): mapped first and filled after, it would
        // read 0 meanwhile, and another thread's check of what it covers
        // would pass (a missed report under the shared 0xF8 page of
        // vmalloc space, say).
        // SAFETY: a fresh anonymous page wherever the kernel puts it.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        self.mmaps += 1;
        if p == libc::MAP_FAILED {
            return Err(MapError::Backend);
        }
        if fill != 0 {
            // SAFETY: the page was just mapped read-write, and is ours alone.
            unsafe { core::ptr::write_bytes(p.cast::<u8>(), fill, PAGE_SIZE) };
        }
        // SAFETY: `p` is the page mapped above; `page` is in the owned
        // shadow range, and MREMAP_FIXED replaces whatever was mapped there
        // at once (the host kernel shoots down the old translation).
        let q = unsafe {
            libc::mremap(p, PAGE_SIZE, PAGE_SIZE, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, page as *mut libc::c_void)
        };
        if q == libc::MAP_FAILED {
            // SAFETY: `p` is still the page mapped above, used by nothing.
            unsafe { libc::munmap(p, PAGE_SIZE) };
            return Err(MapError::Backend);
        }
        self.remaps += 1;
        self.private.insert(page);
        // SAFETY: this backend, for the page it has just remapped.
        Ok(unsafe { Flush::new(page) })
    }

    fn flush_page(&mut self, _page: usize) {
        // mmap(MAP_FIXED) already made the new mapping visible on every CPU.
    }

    fn table_bytes(&self) -> usize {
        // The host kernel's page tables are not the runtime's to count.
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::space::HostSpace;

    fn read(a: usize) -> u8 {
        // SAFETY: the test only reads shadow pages it mapped.
        unsafe { core::ptr::read_volatile(a as *const u8) }
    }

    #[test]
    fn shared_and_private_pages_read_back() {
        let space = HostSpace::new(1 << 20, 1 << 20, 1 << 20).unwrap();
        let sh = space.shadow();
        let mut m = HostMapper::new(sh);
        m.map_shared_range(sh.start, sh.end, SharedPage::PageFree).unwrap();
        assert_eq!(read(sh.start), 0xFF);
        assert_eq!(read(sh.end - 1), 0xFF);
        let page = sh.start + 4 * PAGE_SIZE;
        m.map_private(page, 0x12).unwrap().flush(&mut m);
        assert_eq!((read(page), read(page + 4095), m.private_pages()), (0x12, 0x12, 1));
        // SAFETY: the page is private and writable.
        unsafe { core::ptr::write_volatile(page as *mut u8, 7) };
        assert_eq!(read(page), 7);
        m.map_shared(page, SharedPage::Consult).unwrap().flush(&mut m);
        assert_eq!((read(page), m.private_pages()), (crate::shadow::CONSULT_PER_PAGE, 0));
        assert_eq!(read(page - 1), 0xFF, "neighbours untouched");
        m.map_shared(page, SharedPage::Zero).unwrap().ignore();
        assert_eq!(read(page), 0);
    }

    #[test]
    fn frame_limit_and_bad_addresses() {
        let space = HostSpace::new(1 << 20, 1 << 20, 1 << 20).unwrap();
        let sh = space.shadow();
        let mut m = HostMapper::new(sh);
        m.set_frame_limit(Some(1));
        m.map_private(sh.start, 0).unwrap().ignore();
        m.map_private(sh.start, 3).unwrap().ignore(); // remapping its own page needs no new frame
        assert_eq!(m.map_private(sh.start + PAGE_SIZE, 0).unwrap_err(), MapError::OutOfFrames);
        assert_eq!(m.map_shared(sh.start + 1, SharedPage::Zero).unwrap_err(), MapError::BadAddress);
        assert_eq!(m.map_shared(sh.end, SharedPage::Zero).unwrap_err(), MapError::BadAddress);
        assert_eq!(m.map_shared_range(sh.start - PAGE_SIZE, sh.end, SharedPage::Zero), Err(MapError::BadAddress));
    }
}
