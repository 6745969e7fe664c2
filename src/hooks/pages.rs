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
    /// for a page that did not change (a block going private is mapped
    /// holding its shared page's fill first: `sync_block`).
    pub(super) fn set_states(&self, inner: &mut Inner<M>, pfn: usize, count: usize, info: impl Fn(usize) -> PageInfo) -> bool {
        self.set_pages(inner, pfn, count, info)
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
