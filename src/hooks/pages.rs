//! Page allocator hooks: pages handed out and freed, reserved RAM, and
//! the page-level tracking the other hooks build on.

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// The page allocator handed out `2^order` pages at `addr`.
    pub fn page_alloc(&self, addr: usize, order: u32) -> Result<(), PageError> {
        if !self.on() {
            return Ok(());
        }
        let (pfn, count) = self.page_range(addr, order)?;
        // Page states change only under the lock: checked under it, so no
        // other CPU's hook changes them between the check and the change.
        let mut inner = self.inner.lock();
        if (pfn..pfn + count).any(|p| self.pages.get(p).state != PageState::Free) {
            return Err(PageError::PageInUse);
        }
        self.set_states(&mut inner, pfn, count, |i| PageInfo {
            state: PageState::Valid,
            kind: PageKind::Page,
            head: i == 0,
        });
        Ok(())
    }

    /// The page allocator takes back `2^order` pages at `addr`. Freeing a
    /// range with a page that is already free is reported as a double
    /// free; one with a page still owned by the slab, a large kmalloc or a
    /// stack (its hook has not released it) or reserved at boot as an
    /// invalid free. Either way nothing changes.
    pub fn page_free(&self, addr: usize, order: u32, ip: Ip) -> Result<(), Bug> {
        let ip = ip.0;
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let (pfn, count) = match self.page_range(addr, order) {
            Ok(r) => r,
            Err(_) => return Err(self.report_free(addr, BugType::InvalidFree, ip)),
        };
        // Checked under the lock: two CPUs freeing the same pages at once
        // must not both pass the double-free check.
        let mut inner = self.inner.lock();
        let bug = if (pfn..pfn + count).any(|p| self.pages.get(p).state == PageState::Free) {
            BugType::DoubleFree
        } else if !self.plain(pfn, count) {
            BugType::InvalidFree
        } else {
            self.set_states(&mut inner, pfn, count, |_| PageInfo::FREE);
            return Ok(());
        };
        drop(inner);
        Err(self.report_free(addr, bug, ip))
    }

    /// Turn allocated pages into tracked pages of `kind` (byte shadow).
    pub(super) fn track_pages(&self, inner: &mut Inner<M>, pfn: usize, count: usize, kind: PageKind) -> bool {
        self.set_states(inner, pfn, count, |i| PageInfo { state: PageState::Tracked, kind, head: i == 0 })
    }

    /// Back to plain allocated pages (before `page_free`).
    pub(super) fn untrack_pages(&self, inner: &mut Inner<M>, pfn: usize, count: usize) {
        self.set_states(inner, pfn, count, |i| PageInfo {
            state: PageState::Valid,
            kind: PageKind::Page,
            head: i == 0,
        });
    }

    /// [`Kasan::set_pages`] for the hooks: the per-page states of `count`
    /// frames from `pfn` become `info(i)` and the blocks' shadow follows,
    /// with no moment at which another CPU's check reads a wrong verdict
    /// for a page that did not change (see [`Kasan::premap_private`]).
    pub(super) fn set_states(&self, inner: &mut Inner<M>, pfn: usize, count: usize, info: impl Fn(usize) -> PageInfo) -> bool {
        self.premap_private(inner, pfn, count, &info);
        self.set_pages(inner, pfn, count, info)
    }

    /// Before frames `[pfn, pfn + count)` take the states `info(i)`: back
    /// each of their blocks that has a shared shadow page now and will
    /// need a private one (a tracked page arrives, or `kasan.mixed=private`
    /// and it becomes mixed) by a private page that first holds exactly
    /// what the shared one did, then each page's own byte from its
    /// present state (a CONSULT mark resolved: 0xFF free, 0 allocated).
    ///
    /// [`Kasan::set_pages`] would map the private page filled with zeros
    /// and write the free pages' 0xFF after it: in between, another CPU's
    /// check of a free page of the block read 0 and passed (a missed
    /// use-after-free, found by `tests/differential_smp.rs`). Here every
    /// read of a page that does not change sees its right verdict
    /// throughout; `set_pages` then finds the block private and only
    /// writes the changed pages.
    fn premap_private(&self, inner: &mut Inner<M>, pfn: usize, count: usize, info: &impl Fn(usize) -> PageInfo) {
        if self.cfg.mode != Mode::Hybrid {
            return;
        }
        let first = pfn / PAGES_PER_BLOCK;
        let last = (pfn + count - 1) / PAGES_PER_BLOCK;
        for b in first..=last {
            let Some(shared) = Backing::from_u8(self.blocks[b].load(Relaxed)).shared() else { continue };
            let frames = b * PAGES_PER_BLOCK..((b + 1) * PAGES_PER_BLOCK).min(self.pages.len());
            let state = |p: usize| if (pfn..pfn + count).contains(&p) { info(p - pfn).state } else { self.pages.get(p).state };
            let tracked = frames.clone().any(|p| state(p) == PageState::Tracked);
            let free = frames.clone().any(|p| state(p) == PageState::Free);
            let used = frames.clone().any(|p| state(p) != PageState::Free);
            if !(tracked || (free && used && self.cfg.mixed == MixedBlocks::Private)) {
                continue;
            }
            let spage = self.layout.mem_to_shadow(self.pages.addr(b * PAGES_PER_BLOCK));
            if ondemand::private(&mut inner.mapper, &self.stats, spage, shared.fill()).is_err() {
                // No frame: set_pages meets the same and makes the
                // tracked pages unchecked.
                continue;
            }
            self.blocks[b].store(Backing::Private as u8, Relaxed);
            if shared == SharedPage::Consult {
                for p in frames {
                    let value = if self.pages.get(p).state == PageState::Free { PAGE_FREE } else { 0 };
                    let addr = self.pages.addr(p);
                    self.fill_shadow(addr, addr + PAGE_SIZE, value);
                }
            }
        }
    }

    /// Whether `[pfn, pfn + count)` is exactly one live allocation of
    /// `kind`: its head first, then its other pages, and none after it (a
    /// hook acting on a wrong order would release a part of it, or more).
    pub(super) fn block_of(&self, pfn: usize, count: usize, kind: PageKind) -> bool {
        let part = |p: usize, head: bool| {
            let page = self.pages.get(p);
            page.state != PageState::Free && page.kind == kind && page.head == head
        };
        (pfn..pfn + count).all(|p| part(p, p == pfn)) && (pfn + count >= self.pages.len() || !part(pfn + count, false))
    }

    /// Whether every page is allocated from the page allocator and owned by
    /// no other hook (not slab, large kmalloc, stack or reserved).
    pub(super) fn plain(&self, pfn: usize, count: usize) -> bool {
        (pfn..pfn + count).all(|p| {
            let page = self.pages.get(p);
            page.state != PageState::Free && page.kind == PageKind::Page
        })
    }

    // ---- slab -------------------------------------------------------------
}
