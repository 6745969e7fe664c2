//! What instrumented code asks of the runtime directly: global
//! descriptors and dynamically sized stack buffers (alloca).

use crate::hooks::Size;
use super::oracle::Byte;
use super::{Kind, Lockstep, Op};
use crate::error::{GlobalError, PoisonError};
use crate::hooks::{GlobalDesc, GLOBAL_ALIGN};
use crate::report::BugType;
use crate::shadow::GRANULE;
use core::ops::Range;

/// Redzone on each side of an alloca buffer.
const ALLOCA_RZ: usize = 32;

impl Lockstep {
    /// A global at `off` bytes into each kernel's image.
    fn globals(&self, off: usize, size: usize, with_rz: usize) -> (GlobalDesc, GlobalDesc) {
        let at = |k: &crate::host::sim::SimKernel| k.kasan.layout().image.start.wrapping_add(off);
        (GlobalDesc::new(at(&self.full), size, with_rz), GlobalDesc::new(at(&self.hybrid), size, with_rz))
    }

    /// The image's 32-byte slots of a global's span, if it starts and ends
    /// on a slot (as compilers lay globals out) and is inside.
    fn span(&self, g: &GlobalDesc) -> Result<Range<usize>, GlobalError> {
        if !g.beg.is_multiple_of(GLOBAL_ALIGN) {
            return Err(GlobalError::Unaligned);
        }
        if g.size > g.size_with_redzone || g.beg.checked_add(g.size_with_redzone).is_none() {
            return Err(GlobalError::BadSize);
        }
        if !g.size_with_redzone.is_multiple_of(GLOBAL_ALIGN) {
            return Err(GlobalError::UnalignedEnd);
        }
        let image = self.full.kasan.layout().image;
        if !image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        let first = (g.beg - image.start) / GLOBAL_ALIGN;
        Ok(first..first + g.size_with_redzone / GLOBAL_ALIGN)
    }

    pub(super) fn register_global(&mut self, off: usize, size: usize, with_rz: usize, op: &Op) {
        let (gf, gh) = self.globals(off, size, with_rz);
        let (f, h) = (self.full.kasan.register_global(&gf), self.hybrid.kasan.register_global(&gh));
        let want = self.span(&gf).and_then(|s| match self.claimed[s.clone()].iter().any(|&c| c) {
            true => Err(GlobalError::Overlap),
            false => Ok(s),
        });
        assert_eq!((f, h), (want.clone().map(drop), want.clone().map(drop)), "{op:?}");
        if let Ok(s) = want {
            self.claimed[s].fill(true);
            let end = gf.beg + size.max(with_rz).next_multiple_of(GRANULE);
            self.oracle.object(gf.beg, size, end, BugType::GlobalOutOfBounds);
        }
    }

    pub(super) fn unregister_global(&mut self, off: usize, size: usize, with_rz: usize) {
        let (gf, gh) = self.globals(off, size, with_rz);
        self.full.kasan.unregister_global(&gf);
        self.hybrid.kasan.unregister_global(&gh);
        // Only a span registered globals claim in full is unregistered.
        let Ok(s) = self.span(&gf) else { return };
        if self.claimed[s.clone()].iter().all(|&c| c) {
            self.claimed[s].fill(false);
            let end = gf.beg + with_rz.next_multiple_of(GRANULE);
            self.oracle.set(gf.beg, end, Byte::Valid);
        }
    }

    /// Live stack number `stack`, if any.
    fn stack(&self, stack: u16) -> Option<super::Object> {
        let stacks: std::vec::Vec<_> = self.live.iter().filter(|o| o.kind == Kind::Stack).collect();
        (!stacks.is_empty()).then(|| *stacks[stack as usize % stacks.len()])
    }

    pub(super) fn alloca_poison(&mut self, stack: u16, off: usize, size: usize, op: &Op) {
        let Some(s) = self.stack(stack) else { return };
        let (af, ah) = (s.f.wrapping_add(off), s.h.wrapping_add(off));
        let padded = size.checked_add(ALLOCA_RZ - 1).map(|n| n & !(ALLOCA_RZ - 1));
        let span = padded.and_then(|p| p.checked_add(2 * ALLOCA_RZ));
        let covered = self.full.kasan.layout().covered;
        let want = match span {
            _ if !af.is_multiple_of(ALLOCA_RZ) => Err(PoisonError::Unaligned),
            Some(n) if af >= ALLOCA_RZ && covered.contains_range(af - ALLOCA_RZ, n) => Ok(()),
            _ => Err(PoisonError::BadSize),
        };
        // Accepted outside its stack, full and hybrid may rightly differ
        // (hybrid keeps no byte shadow there): not modelled.
        let inside = span.is_some_and(|n| af >= s.f + ALLOCA_RZ && (af - ALLOCA_RZ).checked_add(n).is_some_and(|e| e <= s.f + s.span));
        if want.is_ok() && !inside {
            return;
        }
        let (f, h) = (self.full.kasan.alloca_poison(af, Size(size)), self.hybrid.kasan.alloca_poison(ah, Size(size)));
        assert_eq!((f, h), (want, want), "{op:?}");
        if let (Ok(()), Some(padded)) = (want, padded) {
            self.oracle.set(af - ALLOCA_RZ, af, Byte::Bad(Some(BugType::AllocaOutOfBounds)));
            self.oracle.object(af, size, af + padded + ALLOCA_RZ, BugType::AllocaOutOfBounds);
        }
    }

    pub(super) fn allocas_unpoison(&mut self, stack: u16, top: usize, bottom: usize) {
        let Some(s) = self.stack(stack) else { return };
        let (top, bottom) = (top % (s.span + 1), bottom % (s.span + 1));
        self.full.kasan.allocas_unpoison(s.f + top, s.f + bottom);
        self.hybrid.kasan.allocas_unpoison(s.h + top, s.h + bottom);
        if top <= bottom {
            // From top's granule to bottom; a partial last granule keeps
            // the bytes after bottom poisoned.
            let (from, to) = ((s.f + top) & !(GRANULE - 1), s.f + bottom);
            self.oracle.set(from, to, Byte::Valid);
            self.oracle.set(to, to.next_multiple_of(GRANULE), Byte::Bad(None));
        }
    }
}
