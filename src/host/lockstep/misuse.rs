//! Allocator hooks called with input they must refuse, as a buggy kernel
//! would: pages that are not RAM, misaligned, of too high an order, or in
//! the wrong state for the hook. Each must give its error in both kernels
//! and change nothing (later accesses check the bytes). A call the runtime
//! would accept (on memory the model kernel owns) is not made.

use crate::hooks::{Ip, Size};
use super::{Kind, Lockstep, Op, Target};
use crate::error::HookError;
use crate::mapper::PAGE_SIZE;
use crate::platform::Platform;
use crate::report::BugType;

impl Lockstep {
    /// The error of a hook's page range check (Linux's page order limit
    /// of the runtime, alignment, RAM), if it fails.
    fn range_refusal(&self, fa: usize, order: u32) -> Option<HookError> {
        let dm = self.full.kasan.layout().direct_map;
        if order > 20 {
            Some(HookError::BadOrder)
        } else if !fa.is_multiple_of(PAGE_SIZE) {
            Some(HookError::Unaligned)
        } else if !dm.contains(fa) {
            Some(HookError::NotRam)
        } else if (fa - dm.start) / PAGE_SIZE + (1 << order) > dm.len() / PAGE_SIZE {
            Some(HookError::BadOrder)
        } else {
            None
        }
    }

    /// Pages of `[fa, fa + 2^order pages)` (a range in RAM).
    fn pages_of(fa: usize, order: u32) -> impl Iterator<Item = usize> {
        (0..1usize << order).map(move |i| fa + i * PAGE_SIZE)
    }

    /// Whether page `p` is allocated and owned by no hook: a live pages
    /// object's, or one backing a live vmalloc area.
    fn plain_page(&self, p: usize) -> bool {
        self.live.iter().any(|o| match o.kind {
            Kind::Pages(_) => (o.f..o.f + o.span).contains(&p),
            Kind::Vmalloc => self.full.vmalloc_pages(o.f).is_some_and(|v| v.contains(&p)),
            _ => false,
        })
    }

    pub(super) fn misuse(&mut self, hook: u8, at: Target, arg: usize, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let order = (arg % 24) as u32;
        let refusal = self.range_refusal(fa, order);
        let all = |f: &dyn Fn(usize) -> bool| Self::pages_of(fa, order).all(f);
        let (f, h, want) = match hook % 8 {
            0 => {
                let want = match refusal {
                    Some(e) => e,
                    None if all(&|p| self.full.pages_free(p, 0)) => return,
                    None => HookError::PageInUse,
                };
                (he(self.full.kasan.page_alloc(fa, order)), he(self.hybrid.kasan.page_alloc(ha, order)), want)
            }
            1 => {
                let want = refusal.unwrap_or(HookError::BadSize);
                (he(self.full.kasan.kmalloc_large(fa, order, Size(0))), he(self.hybrid.kasan.kmalloc_large(ha, order, Size(0))), want)
            }
            2 | 3 => {
                let want = match refusal {
                    Some(e) => e,
                    None if all(&|p| self.plain_page(p)) => return,
                    None => HookError::WrongPageState,
                };
                if hook % 8 == 2 {
                    (he(self.full.kasan.stack_alloc(fa, order)), he(self.hybrid.kasan.stack_alloc(ha, order)), want)
                } else {
                    let ids = self.raw_ids();
                    (he(self.full.kasan.slab_page_alloc(ids.0, fa, order)), he(self.hybrid.kasan.slab_page_alloc(ids.1, ha, order)), want)
                }
            }
            4 => {
                let want = match refusal {
                    Some(e) => e,
                    None if self.full.plat.slab_of(fa).is_some() => return,
                    None => HookError::WrongPageState,
                };
                (he(self.full.kasan.slab_page_free(fa, order)), he(self.hybrid.kasan.slab_page_free(ha, order)), want)
            }
            5 => {
                let whole = self.live_at(fa).is_some_and(|i| self.live[i].kind == Kind::Stack);
                let want = match refusal {
                    Some(e) => e,
                    None if whole && order == crate::host::sim::STACK_ORDER => return,
                    None => HookError::WrongPageState,
                };
                (he(self.full.kasan.stack_free(fa, order)), he(self.hybrid.kasan.stack_free(ha, order)), want)
            }
            6 => {
                let (size, len) = (arg & 0xffff_ffff, arg >> 32);
                let vm = self.full.kasan.layout().vmalloc;
                let want = if !fa.is_multiple_of(PAGE_SIZE) {
                    HookError::Unaligned
                } else if size == 0 || size > len {
                    HookError::BadSize
                } else if !vm.contains_range(fa, len) {
                    HookError::NotVmalloc
                } else {
                    return;
                };
                let (f, h) = (self.full.kasan.vmalloc_alloc(fa, Size(size), Size(len)), self.hybrid.kasan.vmalloc_alloc(ha, Size(size), Size(len)));
                (he(f.map(drop)), he(h.map(drop)), want)
            }
            _ => return self.kfree_large_misuse(fa, ha, order % 12, op),
        };
        assert_eq!((f, h), (Err(want), Err(want)), "{op:?}");
    }

    /// `kfree_large` of anything but a live page-backed kmalloc with its
    /// order: a double free of a free head page, else an invalid free.
    fn kfree_large_misuse(&mut self, fa: usize, ha: usize, order: u32, op: &Op) {
        if self.live_at(fa).is_some_and(|i| self.live[i].kind == Kind::Large(order)) {
            return;
        }
        let kind = if self.range_refusal(fa, order).is_none() && self.full.pages_free(fa, 0) {
            BugType::DoubleFree
        } else {
            BugType::InvalidFree
        };
        let ip = (self.full.ip(), self.hybrid.ip());
        let (f, h) = (self.full.kasan.kfree_large(fa, order, Ip(ip.0)), self.hybrid.kasan.kfree_large(ha, order, Ip(ip.1)));
        self.bad_free(op, f, h, Some(kind));
    }
}

/// A hook's result with its error as the union [`HookError`] (the misuse
/// table compares hooks of several kinds).
fn he<T, E: Into<HookError>>(r: Result<T, E>) -> Result<T, HookError> {
    r.map_err(Into::into)
}
