//! KASAN's decisions: which page backs each shadow page of the direct map
//! and the vmalloc window, from the states of the pages under it (see the
//! table in [`crate::runtime`]); the remaps go through [`super::remap`].
//!
//! * A block goes private when its first page becomes tracked (or, under
//!   `kasan.mixed=private|adaptive`, when it mixes free and allocated pages
//!   and is hot), and back to a shared page when its last tracked page goes
//!   (dynamic shadow free). No frame: the tracked pages go `Unchecked`.
//! * vmalloc: one reference count per block; private while an area
//!   touches it, the shared 0xF8 page otherwise.

use core::sync::atomic::Ordering::Relaxed;

use crate::config::{MixedBlocks, Mode, PROMOTE_AFTER};
use crate::layout::{BLOCK_SIZE, PAGES_PER_BLOCK};
use crate::mapper::{ShadowMapper, SharedPage, PAGE_SIZE};
use crate::page_state::{PageInfo, PageState};
use crate::platform::Platform;
use crate::runtime::{Inner, Kasan, DENIED, HOT, PENDING, VM_UNCHECKED};
use super::{remap, unchecked, Backing};
use crate::shadow::PAGE_FREE;
use crate::stats::Stats;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Set the per-page state of `count` frames from `pfn` and bring the
    /// blocks' shadow in line. Frames that get no private shadow go
    /// `Unchecked`. Returns whether every tracked frame got byte shadow.
    pub(crate) fn set_pages(
        &self,
        inner: &mut Inner<M>,
        pfn: usize,
        count: usize,
        info: impl Fn(usize) -> PageInfo,
    ) -> bool {
        for i in 0..count {
            let old = self.pages.get(pfn + i);
            let new = info(i);
            if old.state == PageState::Unchecked {
                self.stats.unchecked_pages.fetch_sub(1, Relaxed);
            }
            self.pages.set(pfn + i, new);
        }
        let mut all_ok = true;
        if !inner.pending.is_empty() {
            self.promote_pending(inner);
        }
        let first = pfn / PAGES_PER_BLOCK;
        let last = (pfn + count - 1) / PAGES_PER_BLOCK;
        for b in first..=last {
            let lo = (b * PAGES_PER_BLOCK).max(pfn);
            let hi = ((b + 1) * PAGES_PER_BLOCK).min(pfn + count);
            all_ok &= self.sync_block(inner, b, lo, hi);
        }
        all_ok
    }

    /// Desired shared backing of block `b` ignoring tracked pages.
    fn shared_backing(&self, b: usize) -> Backing {
        let (mut free, mut used) = (false, false);
        for pfn in b * PAGES_PER_BLOCK..((b + 1) * PAGES_PER_BLOCK).min(self.pages.len()) {
            match self.pages.get(pfn).state {
                PageState::Free => free = true,
                _ => used = true,
            }
        }
        match (free, used) {
            (true, false) => Backing::Free,
            (false, _) => Backing::Zero,
            (true, true) => Backing::Consult,
        }
    }

    /// Write the shadow of frame `pfn` from its state, in a private block.
    /// Tracked frames are left to the caller's poisoning.
    fn write_page_shadow(&self, pfn: usize, fresh: bool) {
        let addr = self.pages.addr(pfn);
        match self.pages.get(pfn).state {
            PageState::Free => self.fill_shadow(addr, addr + PAGE_SIZE, PAGE_FREE),
            PageState::Valid | PageState::Unchecked => self.fill_shadow(addr, addr + PAGE_SIZE, 0),
            PageState::Tracked => {
                if fresh {
                    self.fill_shadow(addr, addr + PAGE_SIZE, 0);
                }
            }
        }
    }

    /// Bring block `b`'s backing in line after frames `[lo, hi)` changed.
    fn sync_block(&self, inner: &mut Inner<M>, b: usize, lo: usize, hi: usize) -> bool {
        let spage = self.layout.mem_to_shadow(self.pages.addr(b * PAGES_PER_BLOCK));
        let cur = Backing::from_u8(self.blocks[b].load(Relaxed));
        let range = b * PAGES_PER_BLOCK..((b + 1) * PAGES_PER_BLOCK).min(self.pages.len());
        let tracked = range.clone().any(|p| self.pages.get(p).state == PageState::Tracked);
        let mixed = self.shared_backing(b) == Backing::Consult;
        if !mixed {
            self.cool(b);
        }
        let mixed_private = mixed
            && match self.cfg.mixed {
                MixedBlocks::Private => true,
                MixedBlocks::Consult => false,
                MixedBlocks::Adaptive => self.hits[b].load(Relaxed) == HOT,
            };
        let mut ok = true;
        if self.cfg.mode == Mode::Full || tracked || mixed_private {
            if cur == Backing::Private {
                for pfn in lo..hi {
                    self.write_page_shadow(pfn, false);
                }
                return true;
            }
            // The private page first holds what the shared one did, so
            // that while each page's own byte is written below, another
            // CPU's check of a page that does not change keeps its verdict
            // (a CONSULT byte sends it to the per-page state).
            let fill = cur.page().map_or(0, SharedPage::fill);
            if remap(&mut inner.mapper, &self.stats, spage, cur, Backing::Private, fill).is_ok() {
                self.blocks[b].store(Backing::Private as u8, Relaxed);
                for pfn in range {
                    self.write_page_shadow(pfn, true);
                }
                return true;
            }
            // No frame: the tracked pages of this block go unchecked (per
            // page, so the block's shared page still reports its free
            // pages), rather than the whole block (`unchecked`).
            for pfn in range {
                let mut i = self.pages.get(pfn);
                if i.state == PageState::Tracked {
                    i.state = PageState::Unchecked;
                    self.pages.set(pfn, i);
                    self.stats.unchecked_pages.fetch_add(1, Relaxed);
                    Stats::bump(&self.stats.unchecked_events);
                }
            }
            ok = false;
        }
        let want = self.shared_backing(b);
        if want != cur {
            match remap(&mut inner.mapper, &self.stats, spage, cur, want, 0) {
                Ok(now) => self.blocks[b].store(now as u8, Relaxed),
                Err(_) => {
                    // Keep the old (still consistent for the pages that did
                    // not change) backing; a private page stays writable.
                    if cur == Backing::Private {
                        for pfn in lo..hi {
                            self.write_page_shadow(pfn, false);
                        }
                    }
                    return false;
                }
            }
        }
        ok
    }

    /// A check took the slow path on a CONSULT byte at `addr`: count it
    /// against its block and, under `MixedBlocks::Adaptive`, queue the block
    /// for a private page once it is hot. A check never maps anything
    /// itself: it may run inside the page allocator (whose frames the
    /// mapper takes), so the mapping waits for [`Kasan::promote_pending`]
    /// in a hook. Never waits for the lock either: if it is taken, a later
    /// check queues the block.
    pub(crate) fn note_consult(&self, addr: usize) {
        if self.cfg.mixed != MixedBlocks::Adaptive {
            return;
        }
        let Some(pfn) = self.pages.pfn(addr) else { return };
        let b = pfn / PAGES_PER_BLOCK;
        // Compare-and-swap: a count computed from a stale read must not
        // overwrite HOT, PENDING or DENIED set meanwhile by another CPU.
        let h = self.hits[b].load(Relaxed);
        if h < PROMOTE_AFTER {
            let _ = self.hits[b].compare_exchange(h, h + 1, Relaxed, Relaxed);
        } else if h == PROMOTE_AFTER {
            if let Some(mut inner) = self.inner.try_lock() {
                if self.hits[b].compare_exchange(h, PENDING, Relaxed, Relaxed).is_ok()
                    && inner.pending.try_push(b as u32).is_err()
                {
                    // Queue full: a later check tries again.
                    self.hits[b].store(h, Relaxed);
                }
            }
        }
    }

    /// Map private shadow under the queued hot mixed blocks that are still
    /// mixed. Called from the page hooks: the kernel's page allocator is
    /// consistent whenever a hook runs (it may hand out shadow frames).
    pub(crate) fn promote_pending(&self, inner: &mut Inner<M>) {
        while let Some(b) = inner.pending.pop() {
            let b = b as usize;
            if self.hits[b].load(Relaxed) != PENDING {
                continue;
            }
            if self.shared_backing(b) != Backing::Consult {
                self.hits[b].store(0, Relaxed);
                continue;
            }
            if self.stats.promoted_live.load(Relaxed) >= self.cfg.promote_budget(self.pages.len()) {
                self.hits[b].store(DENIED, Relaxed);
                Stats::bump(&self.stats.promotions_denied);
                continue;
            }
            self.hits[b].store(HOT, Relaxed);
            self.stats.promoted_live.fetch_add(1, Relaxed);
            let first = b * PAGES_PER_BLOCK;
            if self.sync_block(inner, b, first, first) && self.backing_of_pfn(first) == Backing::Private {
                Stats::bump(&self.stats.promotions);
            }
        }
    }

    /// Forget block `b`'s heat (it stopped being mixed, or shrink).
    fn cool(&self, b: usize) {
        match self.hits[b].load(Relaxed) {
            0 => {}
            HOT => {
                self.hits[b].store(0, Relaxed);
                self.stats.promoted_live.fetch_sub(1, Relaxed);
            }
            _ => self.hits[b].store(0, Relaxed),
        }
    }

    /// Shrinker: give back the private pages of promoted mixed blocks (they
    /// are a cache of the per-page shadow; the blocks fall back to CONSULT
    /// and may be promoted again when hot), then the page tables that map
    /// only one kind of shared page. Returns the pages released.
    pub fn shrink(&self) -> usize {
        if self.cfg.mode != Mode::Hybrid {
            return 0;
        }
        let mut inner = self.inner.lock();
        inner.pending.clear();
        let before = self.stats.ondemand_live.load(Relaxed);
        for b in 0..self.hits.len() {
            let hot = self.hits[b].load(Relaxed) == HOT;
            self.cool(b);
            if hot {
                let first = b * PAGES_PER_BLOCK;
                self.sync_block(&mut inner, b, first, first);
            }
        }
        let pages = before.saturating_sub(self.stats.ondemand_live.load(Relaxed));
        pages + inner.mapper.reshare()
    }

    /// Take one reference on each vmalloc block of `[start, end)`, mapping
    /// private shadow filled with `fill` where a block gets its first.
    pub(crate) fn vm_get(&self, inner: &mut Inner<M>, start: usize, end: usize, fill: u8) -> bool {
        let l = &self.layout;
        let mut ok = true;
        for b in (start - l.vmalloc.start) / BLOCK_SIZE..(end - l.vmalloc.start).div_ceil(BLOCK_SIZE) {
            let r = self.vm_refs[b].load(Relaxed);
            if r & !VM_UNCHECKED == 0 {
                let spage = l.mem_to_shadow(l.vmalloc.start + b * BLOCK_SIZE);
                if remap(&mut inner.mapper, &self.stats, spage, Backing::VmallocInvalid, Backing::Private, fill).is_ok() {
                    self.vm_refs[b].store(1, Relaxed);
                } else {
                    // The 0xF8 page would report every access: map zero.
                    unchecked(&mut inner.mapper, &self.stats, spage, Backing::VmallocInvalid);
                    self.vm_refs[b].store(1 | VM_UNCHECKED, Relaxed);
                    ok = false;
                }
            } else {
                if r & VM_UNCHECKED != 0 {
                    ok = false;
                }
                self.vm_refs[b].store(r + 1, Relaxed);
            }
        }
        ok
    }

    /// Drop one reference on each vmalloc block of `[start, end)`, returning
    /// the private shadow of blocks nobody uses any more.
    pub(crate) fn vm_put(&self, inner: &mut Inner<M>, start: usize, end: usize) {
        let l = &self.layout;
        for b in (start - l.vmalloc.start) / BLOCK_SIZE..(end - l.vmalloc.start).div_ceil(BLOCK_SIZE) {
            let r = self.vm_refs[b].load(Relaxed);
            let count = r & !VM_UNCHECKED;
            if count == 0 {
                continue;
            }
            if count > 1 {
                self.vm_refs[b].store(r - 1, Relaxed);
                continue;
            }
            let spage = l.mem_to_shadow(l.vmalloc.start + b * BLOCK_SIZE);
            let from = if r & VM_UNCHECKED != 0 { Backing::Unchecked } else { Backing::Private };
            if remap(&mut inner.mapper, &self.stats, spage, from, Backing::VmallocInvalid, 0).is_err()
                && from == Backing::Private
            {
                // The private page stays (already poisoned 0xF8 by the
                // caller) and stops counting: the next map over it
                // releases its frame.
                self.stats.ondemand_dec();
            }
            self.vm_refs[b].store(0, Relaxed);
        }
    }
}

#[cfg(all(test, feature = "host"))]
mod tests {
    use super::*;
    use crate::host::sim::{SimConfig, SimKernel};
    use std::vec::Vec;

    /// Walk one block through every backing: free, consult, zero, private
    /// and back, checking the on-demand count at each step.
    #[test]
    fn block_backing_follows_page_states() {
        let k = &mut SimKernel::new(SimConfig::small(Mode::Hybrid)).unwrap();
        // skip the blocks the kmalloc caches' first pages may share
        let pad = k.alloc_pages(3).unwrap();
        let pages: Vec<usize> = (0..8).map(|_| k.alloc_pages(0).unwrap()).collect();
        let pfn = k.kasan.pages().pfn(pages[0]).unwrap();
        assert_eq!(pfn % 8, 0);
        let live = |k: &SimKernel| k.kasan.stats().ondemand_live_pages;
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Zero);
        k.free_pages(pages[7], 0).unwrap();
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Consult);
        let before = live(k);
        k.kasan.stack_alloc(pages[0], 0).unwrap();
        assert_eq!((k.kasan.backing_of_pfn(pfn), live(k)), (Backing::Private, before + 1));
        assert_eq!(k.kasan.effective_shadow(pages[7]), Some(crate::shadow::PAGE_FREE));
        assert_eq!(k.kasan.effective_shadow(pages[3]), Some(0));
        k.kasan.stack_free(pages[0], 0).unwrap();
        assert_eq!((k.kasan.backing_of_pfn(pfn), live(k)), (Backing::Consult, before));
        for &p in &pages[..7] {
            k.free_pages(p, 0).unwrap();
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Free);
        k.free_pages(pad, 3).unwrap();
    }

    #[test]
    fn adaptive_promotes_hot_mixed_blocks_at_the_next_hook() {
        let mut cfg = SimConfig::small(Mode::Hybrid);
        cfg.kasan.mixed = MixedBlocks::Adaptive;
        let k = &mut SimKernel::new(cfg).unwrap();
        let pad = k.alloc_pages(3).unwrap();
        let pages: Vec<usize> = (0..8).map(|_| k.alloc_pages(0).unwrap()).collect();
        let pfn = k.kasan.pages().pfn(pages[0]).unwrap();
        k.free_pages(pages[7], 0).unwrap();
        let slow = |k: &SimKernel| k.kasan.stats().slow_path_checks;
        for _ in 0..=PROMOTE_AFTER {
            k.read(pages[1], 8).unwrap();
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Consult, "a check never maps");
        let stack = k.stack_alloc().unwrap(); // any page hook promotes
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
        assert_eq!(k.kasan.stats().promotions, 1);
        let before = slow(k);
        k.read(pages[1], 8).unwrap();
        assert_eq!(slow(k), before, "the hot block is on the fast path now");
        assert_eq!(k.read_bug(pages[7], 1), Some(crate::report::BugType::UseAfterFree));
        k.take_log();
        let live = k.kasan.stats().ondemand_live_pages;
        assert_eq!(k.kasan.shrink(), 1, "the shrinker returns the promoted page");
        assert_eq!((k.kasan.backing_of_pfn(pfn), k.kasan.stats().ondemand_live_pages), (Backing::Consult, live - 1));
        assert_eq!(k.read_bug(pages[7], 1), Some(crate::report::BugType::UseAfterFree));
        k.take_log();
        for &p in &pages[..7] {
            k.free_pages(p, 0).unwrap();
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Free, "no longer mixed: shadow page returned");
        k.stack_free(stack).unwrap();
        k.free_pages(pad, 3).unwrap();
        assert_eq!(k.kasan.stats().ondemand_live_pages, 0);
    }

    #[test]
    fn full_mode_blocks_stay_private() {
        let k = &mut SimKernel::new(SimConfig::small(Mode::Full)).unwrap();
        let p = k.alloc_pages(0).unwrap();
        let pfn = k.kasan.pages().pfn(p).unwrap();
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
        k.free_pages(p, 0).unwrap();
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
        assert_eq!(k.kasan.effective_shadow(p), Some(crate::shadow::PAGE_FREE));
        assert_eq!(k.kasan.stats().ondemand_live_pages, 0);
    }
}
