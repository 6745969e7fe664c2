//! Access checks.
//!
//! ```text
//!  check(addr, size)
//!   ├─ fast path: load shadow at (addr >> 3) + offset (one byte per granule
//!   │   touched, at most 3 for size <= 16); all 0, or a partial last granule
//!   │   covering the access ──► pass
//!   └─ slow path (counted): wrap-around, address without shadow, CONSULT
//!       marker (per-page shadow decides), or poison ──► pass or report
//! ```
//!
//! In `hybrid`, a block of only valid pages is the shared zero page and a
//! block of only free pages the shared 0xFF page, so those accesses stay
//! on the fast path; only blocks mixing free and valid pages without any
//! tracked page read the CONSULT marker. A long range (512 bytes or more)
//! passes a shared-zero block with one load of its backing byte instead of
//! a scan of the block's shadow ([`Kasan::blocks_ok`]).

use crate::backing::Backing;
use crate::config::Mode;
use crate::layout::PAGES_PER_BLOCK;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::platform::Platform;
use crate::report::{Bug, BugType};
use crate::hooks::{Ip, Size};
use crate::runtime::Kasan;
use crate::shadow::{self, GRANULE};
use crate::stats::Stats;

/// Ranges from this many bytes on are checked block by block in `hybrid`
/// ([`Kasan::blocks_ok`]); below, the shadow scan (at most 8 loads) costs
/// no more than looking up a block's backing.
const ZERO_BLOCKS_FROM: usize = 512;

/// Bug type of a poisoned shadow value at data address `addr`.
pub(crate) fn bug_type_of(code: u8, addr: usize, in_vmalloc: bool) -> BugType {
    let _ = addr;
    match code {
        0..=7 => BugType::OutOfBounds,
        shadow::PAGE_REDZONE | shadow::SLAB_REDZONE => BugType::SlabOutOfBounds,
        shadow::PAGE_FREE => BugType::UseAfterFree,
        shadow::SLAB_FREE | shadow::SLAB_FREE_META => BugType::SlabUseAfterFree,
        shadow::GLOBAL_REDZONE => BugType::GlobalOutOfBounds,
        shadow::VMALLOC_INVALID if in_vmalloc => BugType::VmallocOutOfBounds,
        shadow::STACK_LEFT
        | shadow::STACK_MID
        | shadow::STACK_RIGHT
        | shadow::STACK_AFTER_RETURN
        | shadow::STACK_USE_AFTER_SCOPE => BugType::StackOutOfBounds,
        shadow::ALLOCA_LEFT | shadow::ALLOCA_RIGHT => BugType::AllocaOutOfBounds,
        _ => BugType::UnknownCrash,
    }
}

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Check an access of `size` bytes at `addr` by the code at `ip`.
    /// `Err` carries the bug that was found (and reported, unless one-shot
    /// mode already reported).
    #[inline(always)]
    pub fn check(&self, addr: usize, size: Size, write: bool, ip: Ip) -> Result<(), Bug> {
        let ip = ip.0;
        let size = size.0;
        if size == 0 || self.cfg.mode == Mode::Off || self.fast_ok(addr, Size(size)) {
            return Ok(());
        }
        self.check_slow(addr, size, write, ip)
    }

    /// The fast path: true when the shadow alone proves the access valid.
    #[inline(always)]
    pub fn fast_ok(&self, addr: usize, size: Size) -> bool {
        let size = size.0;
        let end = addr.wrapping_add(size);
        let c = &self.layout.covered;
        if end < addr || addr < c.start || end > c.end {
            return false;
        }
        let first = addr >> 3;
        let last = (end - 1) >> 3;
        if last - first > 2 {
            return self.range_ok(addr, end);
        }
        let mut g = first;
        while g <= last {
            let v = self.shadow_byte(g << 3);
            if v != 0 && !(g == last && shadow::last_granule_ok(v, end)) {
                return false;
            }
            g += 1;
        }
        true
    }

    /// A long range: in `hybrid`, from 512 bytes on, block by block
    /// ([`Kasan::blocks_ok`]); otherwise the shadow scan.
    #[inline(always)]
    fn range_ok(&self, addr: usize, end: usize) -> bool {
        if self.cfg.mode == Mode::Hybrid && end - addr >= ZERO_BLOCKS_FROM {
            return self.blocks_ok(addr, end);
        }
        self.scan_ok(addr, end)
    }

    /// `hybrid`: a direct-map block whose shadow page is the shared zero
    /// page ([`Backing::Zero`], or [`Backing::Unchecked`]: every shadow
    /// byte under it reads 0) is passed whole with one load of its backing
    /// byte instead of a scan of its 4 KiB of shadow; the other blocks, and
    /// what lies outside the direct map, are scanned. The verdict is the
    /// scan's: a shared zero page has nothing else to say. This is the
    /// page-sized range of a copy to or from user space, or of a device's
    /// DMA, into page-cache or anonymous pages.
    fn blocks_ok(&self, addr: usize, end: usize) -> bool {
        let mut a = addr;
        while a < end {
            let Some(pfn) = self.pages.pfn(a) else { return self.scan_ok(a, end) };
            let e = end.min(self.pages.addr((pfn / PAGES_PER_BLOCK + 1) * PAGES_PER_BLOCK));
            if !matches!(self.backing_of_pfn(pfn), Backing::Zero | Backing::Unchecked) && !self.scan_ok(a, e) {
                return false;
            }
            a = e;
        }
        true
    }

    /// Fast scan of a long range, eight shadow bytes at a time.
    fn scan_ok(&self, addr: usize, end: usize) -> bool {
        let first = addr >> 3;
        let last = (end - 1) >> 3;
        let mut g = first;
        // whole granules before the last one
        while g < last {
            if g.is_multiple_of(8) && g + 8 <= last {
                let s = self.layout.mem_to_shadow(g << 3);
                // SAFETY: covered addresses have mapped shadow, and `s` is
                // 8-aligned because `g` is a multiple of 8 and the offset is
                // page aligned.
                if unsafe { core::ptr::read_volatile(s as *const u64) } != 0 {
                    return false;
                }
                g += 8;
                continue;
            }
            if self.shadow_byte(g << 3) != 0 {
                return false;
            }
            g += 1;
        }
        shadow::last_granule_ok(self.shadow_byte(last << 3), end)
    }

    #[cold]
    #[inline(never)]
    fn check_slow(&self, addr: usize, size: usize, write: bool, ip: usize) -> Result<(), Bug> {
        if self.report_lock.held_by(self.platform.cpu()) {
            // This CPU is printing a report: its own code is checked.
            return Ok(());
        }
        if self.consult_range_ok(addr, size) {
            return Ok(());
        }
        Stats::bump(&self.stats.slow_path_checks);
        let end = addr.wrapping_add(size);
        if self.layout.direct_map.contains(addr) && self.shadow_byte(addr) == shadow::CONSULT_PER_PAGE {
            self.note_consult(addr);
        }
        let found = if end < addr {
            Some((BugType::OutOfBounds, addr))
        } else if !self.layout.covered.contains_range(addr, size) {
            Some((self.wild_type(addr), addr))
        } else {
            self.first_bad(addr, end)
        };
        match found {
            None => {
                Stats::bump(&self.stats.checks_slow_clean);
                Ok(())
            }
            Some((kind, bad)) => Err(self.report_access(addr, size, write, ip, kind, bad)),
        }
    }

    /// Whether `[addr, addr + size)` is accessible once its CONSULT bytes
    /// (hybrid, blocks mixing free and allocated pages) are settled from
    /// the per-page state, once per data page: an allocated page's
    /// granules all read accessible (its block's shadow is the shared
    /// CONSULT page, one byte value for all of them; `first_bad` would find
    /// 0 for each), so the scan goes on at the next page. The fast path's
    /// scan ([`Kasan::scan_ok`]) stops at the first CONSULT byte; this
    /// keeps such a range (a page copy in a mixed block) off the
    /// granule-by-granule slow path. False sends the access there.
    fn consult_range_ok(&self, addr: usize, size: usize) -> bool {
        /// Granules per data page.
        const PAGE_GRANULES: usize = PAGE_SIZE / GRANULE;
        if self.cfg.mode != Mode::Hybrid || size == 0 || !self.layout.direct_map.contains_range(addr, size) {
            return false;
        }
        let end = addr + size;
        let last = (end - 1) >> 3;
        let mut g = addr >> 3;
        while g <= last {
            let v = self.shadow_byte(g << 3);
            if v == 0 || (g == last && shadow::last_granule_ok(v, end)) {
                g += 1;
                continue;
            }
            if v != shadow::CONSULT_PER_PAGE || !self.consult_ok(g << 3) {
                return false;
            }
            g = (g | (PAGE_GRANULES - 1)) + 1;
        }
        true
    }

    /// Bug type of an address that has no shadow (Linux's rules).
    pub(crate) fn wild_type(&self, addr: usize) -> BugType {
        if addr < PAGE_SIZE {
            BugType::NullPtrDeref
        } else if addr < self.layout.user_end {
            BugType::UserMemoryAccess
        } else {
            BugType::WildMemoryAccess
        }
    }

    /// The first inaccessible byte of `[addr, end)` and its bug type.
    fn first_bad(&self, addr: usize, end: usize) -> Option<(BugType, usize)> {
        let mut g = addr & !(GRANULE - 1);
        while g < end {
            let v = self.effective_shadow(g).unwrap_or(0);
            if v != 0 {
                let in_vm = self.layout.vmalloc.contains(g);
                if (v as i8) > 0 && (v as usize) < GRANULE {
                    let hi = end.min(g + GRANULE);
                    if hi - g <= v as usize {
                        g += GRANULE;
                        continue;
                    }
                    let bad = addr.max(g + v as usize);
                    let next = g + GRANULE;
                    let code = if self.layout.covered.contains(next) {
                        self.effective_shadow(next).unwrap_or(v)
                    } else {
                        v
                    };
                    return Some((bug_type_of(code, bad, in_vm), bad));
                }
                return Some((bug_type_of(v, g, in_vm), addr.max(g)));
            }
            g += GRANULE;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_linux_bug_types() {
        assert_eq!(bug_type_of(0xFC, 0, false), BugType::SlabOutOfBounds);
        assert_eq!(bug_type_of(0xFE, 0, false), BugType::SlabOutOfBounds);
        assert_eq!(bug_type_of(0xFF, 0, false), BugType::UseAfterFree);
        assert_eq!(bug_type_of(0xFB, 0, false), BugType::SlabUseAfterFree);
        assert_eq!(bug_type_of(0xF9, 0, false), BugType::GlobalOutOfBounds);
        assert_eq!(bug_type_of(0xF8, 0, true), BugType::VmallocOutOfBounds);
        assert_eq!(bug_type_of(0xF2, 0, false), BugType::StackOutOfBounds);
        assert_eq!(bug_type_of(0xCA, 0, false), BugType::AllocaOutOfBounds);
        assert_eq!(bug_type_of(0x03, 0, false), BugType::OutOfBounds);
        assert_eq!(bug_type_of(0x90, 0, false), BugType::UnknownCrash);
    }
}

#[cfg(all(test, feature = "host"))]
mod range_tests {
    use crate::config::Mode;
    use crate::host::sim::{SimConfig, SimKernel};
    use crate::report::BugType;
    use std::vec::Vec;

    /// A block of 8 pages with its last one freed (hybrid: CONSULT), and
    /// what each range access over it gives.
    fn verdicts(mode: Mode) -> (Vec<Option<BugType>>, usize) {
        let k = &mut SimKernel::new(SimConfig::small(mode)).unwrap();
        // skip the blocks the kmalloc caches' first pages may share
        let pad = k.alloc_pages(3).unwrap();
        let pages: Vec<usize> = (0..8).map(|_| k.alloc_pages(0).unwrap()).collect();
        assert_eq!(k.kasan.pages().pfn(pages[0]).unwrap() % 8, 0);
        k.free_pages(pages[7], 0).unwrap();
        let slow0 = k.kasan.stats().slow_path_checks;
        let ranges = [
            (pages[1], 4096),
            (pages[1] + 8, 4096),
            (pages[2], 3 * 4096),
            (pages[0] + 24, 17),
            (pages[6], 4096 + 1),
            (pages[6] + 4000, 200),
            (pages[5], 3 * 4096),
            (pages[7], 64),
            (pages[7] - 64, 65),
        ];
        let v = ranges.iter().map(|&(a, n)| k.read_bug(a, n)).collect();
        let slow = k.kasan.stats().slow_path_checks - slow0;
        k.take_log();
        for &p in &pages[..7] {
            k.free_pages(p, 0).unwrap();
        }
        k.free_pages(pad, 3).unwrap();
        (v, slow)
    }

    /// Long ranges over blocks of allocated pages (hybrid: shared zero
    /// shadow, passed block by block), running into a free block, a slab
    /// object's redzone or a freed page: what each range check gives.
    fn zero_block_verdicts(mode: Mode) -> Vec<Option<BugType>> {
        let k = &mut SimKernel::new(SimConfig::small(mode)).unwrap();
        // 4 blocks, split by the buddy allocator: a (2 blocks), b, c
        let big = k.alloc_pages(5).unwrap();
        k.free_pages(big, 5).unwrap();
        let a = k.alloc_pages(4).unwrap();
        let b = k.alloc_pages(3).unwrap();
        let c = k.alloc_pages(3).unwrap();
        assert_eq!((b - a, c - b), (16 * 4096, 8 * 4096), "the layout this test reads");
        let obj = k.kmalloc(1000).unwrap(); // a tracked block
        let pfn = |p: usize| k.kasan.pages().pfn(p).unwrap();
        assert_eq!(pfn(a) % 8, 0);
        if mode == Mode::Hybrid {
            assert_eq!(k.kasan.backing_of_pfn(pfn(a)), crate::backing::Backing::Zero);
            assert_eq!(k.kasan.backing_of_pfn(pfn(obj)), crate::backing::Backing::Private);
        }
        k.free_pages(b, 3).unwrap();
        let ranges = [
            (a, 16 * 4096),             // two zero blocks
            (a + 5, 16 * 4096 - 5),     // unaligned start
            (a + 4096, 15 * 4096 + 1),  // one byte into b's freed block
            (obj, 1000),                // tracked, the whole object
            (obj, 1001),                // one byte of redzone
            (obj + 8, 1000),            // ends in the redzone
            (c, 8 * 4096),              // a zero block after a free one
            (c - 1, 4096),              // starts in b's freed block
        ];
        let v = ranges.iter().map(|&(p, n)| k.read_bug(p, n)).collect();
        k.take_log();
        k.kfree(obj).unwrap();
        k.free_pages(a, 4).unwrap();
        k.free_pages(c, 3).unwrap();
        v
    }

    /// `hybrid` passes shared-zero blocks of a long range without scanning
    /// their shadow and gives `full`'s verdict for every range: clean over
    /// allocated pages, use-after-free one byte into a freed block, slab
    /// out-of-bounds in a redzone.
    #[test]
    fn long_ranges_over_zero_blocks_agree_with_full() {
        let full = zero_block_verdicts(Mode::Full);
        let hybrid = zero_block_verdicts(Mode::Hybrid);
        assert_eq!(hybrid, full);
        let (uaf, oob) = (Some(BugType::UseAfterFree), Some(BugType::SlabOutOfBounds));
        assert_eq!(full, [None, None, uaf, None, oob, oob, None, uaf]);
    }

    /// Range checks settle a CONSULT block page by page: the same verdicts
    /// as `full`, and one slow-path check per allocated page consulted
    /// (a range into the free page still takes the slow path and reports).
    #[test]
    fn ranges_over_a_consult_block_agree_with_full() {
        let (full, _) = verdicts(Mode::Full);
        let (hybrid, slow) = verdicts(Mode::Hybrid);
        assert_eq!(hybrid, full);
        let uaf = Some(BugType::UseAfterFree);
        assert_eq!(full, [None, None, None, None, uaf, uaf, uaf, uaf, uaf]);
        // clean ranges: 1 + 2 + 3 + 1 pages consulted; the bad ones
        // consult their allocated pages, then take the slow path once
        assert!(slow >= 7, "slow-path checks {slow}");
    }
}
