//! Global variables (the compiler's descriptors, registered at init).

#[allow(unused_imports)]
use super::*;

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Register one global: its bytes accessible, its redzone poisoned.
    pub fn register_global(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if self.cfg.mode == Mode::Off {
            return Ok(());
        }
        let r = self.check_global(g);
        if r.is_err() {
            Stats::bump(&self.stats.bad_globals);
            return r;
        }
        let _guard = self.inner.lock();
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
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        // Its body must not be another global's redzone, nor its redzone
        // another global's body start (the shadow there is already set).
        let body_end = g.beg + round_up(g.size, GRANULE);
        let mut a = g.beg;
        while a < body_end {
            if self.shadow_byte(a) == GLOBAL_REDZONE {
                return Err(GlobalError::Overlap);
            }
            a += GRANULE;
        }
        Ok(())
    }

    /// Unregister one global: its whole span becomes accessible again.
    pub fn unregister_global(&self, g: &GlobalDesc) {
        if self.cfg.mode == Mode::Off || self.check_global_span(g).is_err() {
            return;
        }
        let _guard = self.inner.lock();
        self.fill_shadow(g.beg, g.beg + g.size_with_redzone, 0);
    }

    fn check_global_span(&self, g: &GlobalDesc) -> Result<(), GlobalError> {
        if !g.beg.is_multiple_of(GRANULE) {
            return Err(GlobalError::Unaligned);
        }
        if !self.layout.image.contains_range(g.beg, g.size_with_redzone) {
            return Err(GlobalError::OutsideImage);
        }
        Ok(())
    }

    // ---- compiler stack and alloca poisoning ---------------------------------
}
