//! Counters a benchmark or a kernel can read at any time.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Live counters (atomics, updated without the runtime lock).
#[derive(Default)]
pub struct Stats {
    pub(crate) per_page_bytes: AtomicUsize,
    pub(crate) block_table_bytes: AtomicUsize,
    pub(crate) depot_bytes: AtomicUsize,
    pub(crate) globals_map_bytes: AtomicUsize,
    pub(crate) context_bytes: AtomicUsize,
    pub(crate) init_shadow_pages: AtomicUsize,
    pub(crate) ondemand_live: AtomicUsize,
    pub(crate) ondemand_peak: AtomicUsize,
    pub(crate) slow_path_checks: AtomicUsize,
    pub(crate) checks_slow_clean: AtomicUsize,
    pub(crate) reports: AtomicUsize,
    pub(crate) reports_suppressed: AtomicUsize,
    pub(crate) unchecked_pages: AtomicUsize,
    pub(crate) unchecked_events: AtomicUsize,
    pub(crate) slab_allocs: AtomicUsize,
    pub(crate) quarantine_bytes: AtomicUsize,
    pub(crate) depot_dropped: AtomicUsize,
    pub(crate) bad_globals: AtomicUsize,
    pub(crate) promotions: AtomicUsize,
    pub(crate) promoted_live: AtomicUsize,
    pub(crate) promotions_denied: AtomicUsize,
}

impl Stats {
    #[inline]
    pub(crate) fn ondemand_inc(&self) {
        let live = self.ondemand_live.fetch_add(1, Relaxed) + 1;
        self.ondemand_peak.fetch_max(live, Relaxed);
    }
    #[inline]
    pub(crate) fn ondemand_dec(&self) {
        self.ondemand_live.fetch_sub(1, Relaxed);
    }
    #[inline]
    pub(crate) fn bump(c: &AtomicUsize) {
        c.fetch_add(1, Relaxed);
    }
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Bytes of the per-page array.
    pub per_page_bytes: usize,
    /// Bytes of the per-block backing and vmalloc reference tables.
    pub block_table_bytes: usize,
    /// Bytes reserved for the stack depot.
    pub depot_bytes: usize,
    /// Bytes of the map of image slots registered globals claim (one bit
    /// per 32 bytes of the image).
    pub globals_map_bytes: usize,
    /// Bytes of per-task sanitizer contexts the kernel set aside (KMSAN).
    pub context_bytes: usize,
    /// Private shadow pages mapped at init (all RAM in `full`, the image in both).
    pub init_shadow_pages: usize,
    /// Page-table bytes the mapper holds for the shadow.
    pub shadow_table_bytes: usize,
    /// Most page-table bytes the mapper ever held for the shadow.
    pub shadow_table_peak_bytes: usize,
    /// On-demand private shadow pages mapped now.
    pub ondemand_live_pages: usize,
    /// Most on-demand private shadow pages ever mapped at once.
    pub ondemand_peak_pages: usize,
    /// Checks that left the one-load fast path.
    pub slow_path_checks: usize,
    /// Slow-path checks that found nothing wrong (cost of mixed blocks).
    pub slow_path_clean: usize,
    /// Reports printed.
    pub reports: usize,
    /// Bugs found but not printed (one-shot mode after the first).
    pub reports_suppressed: usize,
    /// Pages that wanted byte shadow and got none (now).
    pub unchecked_pages: usize,
    /// Times a page had to go unchecked.
    pub unchecked_events: usize,
    /// Slab objects allocated.
    pub slab_allocs: usize,
    /// Bytes in quarantine now.
    pub quarantine_bytes: usize,
    /// Stacks the depot could not store.
    pub depot_dropped: usize,
    /// Global descriptors rejected.
    pub bad_globals: usize,
    /// Mixed blocks promoted to a private page (adaptive).
    pub promotions: usize,
    /// Mixed blocks holding a promoted private page now.
    pub promoted_live: usize,
    /// Hot mixed blocks left on CONSULT because the budget was spent.
    pub promotions_denied: usize,
}

impl StatsSnapshot {
    /// Metadata bytes allocated at init: per-page array, tables, depot,
    /// globals map, shadow pages mapped at init and shadow page tables.
    #[must_use]
    pub fn metadata_init_bytes(&self) -> usize {
        self.per_page_bytes
            + self.block_table_bytes
            + self.depot_bytes
            + self.globals_map_bytes
            + self.context_bytes
            + self.init_shadow_pages * crate::mapper::PAGE_SIZE
            + self.shadow_table_bytes
    }
    /// On-demand shadow bytes mapped now.
    #[must_use]
    pub fn ondemand_live_bytes(&self) -> usize {
        self.ondemand_live_pages * crate::mapper::PAGE_SIZE
    }
    /// Peak on-demand shadow bytes.
    #[must_use]
    pub fn ondemand_peak_bytes(&self) -> usize {
        self.ondemand_peak_pages * crate::mapper::PAGE_SIZE
    }
}

impl Stats {
    pub(crate) fn snapshot(&self, shadow_table_bytes: usize, shadow_table_peak_bytes: usize) -> StatsSnapshot {
        StatsSnapshot {
            per_page_bytes: self.per_page_bytes.load(Relaxed),
            block_table_bytes: self.block_table_bytes.load(Relaxed),
            depot_bytes: self.depot_bytes.load(Relaxed),
            globals_map_bytes: self.globals_map_bytes.load(Relaxed),
            context_bytes: self.context_bytes.load(Relaxed),
            init_shadow_pages: self.init_shadow_pages.load(Relaxed),
            shadow_table_bytes,
            shadow_table_peak_bytes,
            ondemand_live_pages: self.ondemand_live.load(Relaxed),
            ondemand_peak_pages: self.ondemand_peak.load(Relaxed),
            slow_path_checks: self.slow_path_checks.load(Relaxed),
            slow_path_clean: self.checks_slow_clean.load(Relaxed),
            reports: self.reports.load(Relaxed),
            reports_suppressed: self.reports_suppressed.load(Relaxed),
            unchecked_pages: self.unchecked_pages.load(Relaxed),
            unchecked_events: self.unchecked_events.load(Relaxed),
            slab_allocs: self.slab_allocs.load(Relaxed),
            quarantine_bytes: self.quarantine_bytes.load(Relaxed),
            depot_dropped: self.depot_dropped.load(Relaxed),
            bad_globals: self.bad_globals.load(Relaxed),
            promotions: self.promotions.load(Relaxed),
            promoted_live: self.promoted_live.load(Relaxed),
            promotions_denied: self.promotions_denied.load(Relaxed),
        }
    }
}
