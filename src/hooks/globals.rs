//! Global variables (the compiler's descriptors, registered at init).
//!
//! Each registered global claims the image granules of its span (body and
//! redzone) in a bitmap, so a descriptor that overlaps one already there is
//! refused before it can poison that global's body, and only claimed spans
//! are unregistered.

#[allow(unused_imports)]
use super::*;
use core::sync::atomic::Ordering::Relaxed;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Register one global: its bytes accessible, its redzone poisoned.
    /// Refused (and counted) unless aligned, inside the image and clear of
    /// every registered global's span.
    pub fn register_global(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let _guard = self.inner.lock();
        let r = self.check_global(g);
        if r.is_err() {
            Stats::bump(&self.stats.bad_globals);
            return r;
        }
        self.claim_span(g, true);
        self.unpoison(g.beg, g.size);
        self.fill_shadow(g.beg + round_up(g.size, GRANULE), g.beg + g.size_with_redzone, GLOBAL_REDZONE);
        Ok(())
    }

    fn check_global(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if !g.beg.is_multiple_of(GRANULE) {
            return Err(GlobalError::Unaligned);
        }
        if g.size > g.size_with_redzone || g.beg.checked_add(g.size_with_redzone).is_none() {
            return Err(GlobalError::BadSize);
        }
        // The image ends on a granule, so the span's last partial granule is in it too.
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        if self.span_granules(g).any(|i| self.claimed(i)) {
            return Err(GlobalError::Overlap);
        }
        Ok(())
    }

    /// Unregister one global: its whole span becomes accessible again. A
    /// descriptor whose span is not wholly claimed by registered globals is
    /// ignored (it would unpoison another global's redzone).
    pub fn unregister_global(&self, g: &GlobalDesc) {
        if self.cfg.mode == Mode::Off || !g.beg.is_multiple_of(GRANULE) {
            return;
        }
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return;
        }
        let _guard = self.inner.lock();
        if !self.span_granules(g).all(|i| self.claimed(i)) {
            Stats::bump(&self.stats.bad_globals);
            return;
        }
        self.claim_span(g, false);
        self.fill_shadow(g.beg, g.beg + g.size_with_redzone, 0);
    }

    /// Indices (in the image) of the granules of a global's span; the
    /// caller checked that the span is inside the image.
    fn span_granules(&self, g: &GlobalDesc) -> core::ops::Range<usize> {
        let first = (g.beg - self.layout.image.start) / GRANULE;
        first..first + g.size_with_redzone.div_ceil(GRANULE)
    }

    fn claimed(&self, granule: usize) -> bool {
        self.globals[granule / 8].load(Relaxed) & (1 << (granule % 8)) != 0
    }

    /// Set (`claim`) or clear the span's bits (under the lock).
    fn claim_span(&self, g: &GlobalDesc, claim: bool) {
        for i in self.span_granules(g) {
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
