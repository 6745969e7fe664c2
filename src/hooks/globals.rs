//! Global variables (the compiler's descriptors, registered at init).
//!
//! Each registered global claims the 32-byte slots ([`GLOBAL_ALIGN`]) of
//! its span (body and redzone) in a bitmap, one bit per slot of the image,
//! so a descriptor that overlaps one already there is refused before it can
//! poison that global's body, and only claimed spans are unregistered.
//! Compilers align instrumented globals and their spans' ends to 32, so two
//! well-formed globals never share a slot; a descriptor that is not so
//! aligned is refused.

#[allow(unused_imports)]
use super::*;
use core::sync::atomic::Ordering::Relaxed;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Register one global: its bytes accessible, its redzone poisoned.
    /// Refused (and counted) unless well formed (see [`GlobalError`]) and
    /// clear of every registered global's span.
    pub fn register_global(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let _guard = self.inner.lock();
        let span = self.span_of(g).and_then(|s| match s.clone().any(|i| self.claimed(i)) {
            true => Err(GlobalError::Overlap),
            false => Ok(s),
        });
        let span = match span {
            Ok(s) => s,
            Err(e) => {
                Stats::bump(&self.stats.bad_globals);
                return Err(e);
            }
        };
        self.claim_span(span, true);
        self.unpoison(g.beg, g.size);
        self.fill_shadow(g.beg + round_up(g.size, GRANULE), g.beg + g.size_with_redzone, GLOBAL_REDZONE);
        Ok(())
    }

    /// Indices (in the image) of the 32-byte slots of a well-formed
    /// global's span: it starts and ends on a slot, its size is within its
    /// size with redzone, it is inside the image.
    fn span_of(&self, g: &GlobalDesc) -> Result<core::ops::Range<usize>, GlobalError> {
        if !g.beg.is_multiple_of(GLOBAL_ALIGN) {
            return Err(GlobalError::Unaligned);
        }
        if g.size > g.size_with_redzone || g.beg.checked_add(g.size_with_redzone).is_none() {
            return Err(GlobalError::BadSize);
        }
        if !g.size_with_redzone.is_multiple_of(GLOBAL_ALIGN) {
            return Err(GlobalError::UnalignedEnd);
        }
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        // The image starts on a block, so its slots are aligned too.
        let first = (g.beg - self.layout.image.start) / GLOBAL_ALIGN;
        Ok(first..first + g.size_with_redzone / GLOBAL_ALIGN)
    }

    /// Unregister one global: its whole span becomes accessible again. A
    /// descriptor that is not well formed, or whose span is not wholly
    /// claimed by registered globals, is ignored and counted (it would
    /// unpoison another global's redzone).
    pub fn unregister_global(&self, g: &GlobalDesc) {
        if self.cfg.mode == Mode::Off {
            return;
        }
        let _guard = self.inner.lock();
        match self.span_of(g) {
            Ok(span) if span.clone().all(|i| self.claimed(i)) => {
                self.claim_span(span, false);
                self.fill_shadow(g.beg, g.beg + g.size_with_redzone, 0);
            }
            _ => Stats::bump(&self.stats.bad_globals),
        }
    }

    fn claimed(&self, slot: usize) -> bool {
        self.globals[slot / 8].load(Relaxed) & (1 << (slot % 8)) != 0
    }

    /// Set (`claim`) or clear the bits of the slots `span` (under the lock).
    fn claim_span(&self, span: core::ops::Range<usize>, claim: bool) {
        for i in span {
            let (byte, bit) = (&self.globals[i / 8], 1u8 << (i % 8));
            if claim {
                byte.fetch_or(bit, Relaxed);
            } else {
                byte.fetch_and(!bit, Relaxed);
            }
        }
    }

    // ---- compiler stack and alloca poisoning ---------------------------------
}
