//! One metadata page backed on demand: the mapping step both sanitizers
//! share.
//!
//! KASAN's shadow page under a 32 KiB block and KMSAN's shadow or origin
//! page under one data page are each backed either by a shared page (zero,
//! 0xFF, the vmalloc-invalid page) or by a private frame while the data
//! under them needs byte precision. Each runtime decides *when* (its block
//! or page states); these two steps do the remap, the TLB flush and the
//! on-demand accounting, the same way for every layout.
//!
//! ```text
//!  shared  ──private(page, fill)──────────► private, counted on demand
//!  private ──shared(page, kind, was_private)► shared, no longer counted
//!  no frame: private() fails and changes nothing; the caller picks the
//!            fallback (its pages go unchecked)
//! ```

use crate::mapper::{MapError, ShadowMapper, SharedPage};
use crate::stats::Stats;

/// Back metadata page `page` by a private frame filled with `fill`, and
/// count it as on-demand metadata.
pub(crate) fn private<M: ShadowMapper>(m: &mut M, stats: &Stats, page: usize, fill: u8) -> Result<(), MapError> {
    m.map_private(page, fill)?.flush(m);
    stats.ondemand_inc();
    Ok(())
}

/// Back metadata page `page` by shared page `kind`; a page that was
/// private (`was_private`) stops counting. On error the old backing stays.
pub(crate) fn shared<M: ShadowMapper>(m: &mut M, stats: &Stats, page: usize, kind: SharedPage, was_private: bool) -> Result<(), MapError> {
    m.map_shared(page, kind)?.flush(m);
    if was_private {
        stats.ondemand_dec();
    }
    Ok(())
}
