//! Byte shadow encoding (KASAN generic mode) and range writes.
//!
//! One shadow byte describes one 8-byte granule at `(addr >> 3) + offset`:
//!
//! ```text
//!   0x00        all 8 bytes accessible
//!   0x01..0x07  only the first N bytes accessible
//!   0x80..0xFF  none accessible; the value says why (Linux's codes below)
//! ```

/// Bytes per shadow granule.
pub const GRANULE: usize = 8;
/// log2 of [`GRANULE`].
pub const GRANULE_SHIFT: u32 = 3;

/// Page is free in the page allocator.
pub const PAGE_FREE: u8 = 0xFF;
/// Tail of a page-backed (large) kmalloc beyond its requested size.
pub const PAGE_REDZONE: u8 = 0xFE;
/// Slab redzone (around an object, or its unused tail).
pub const SLAB_REDZONE: u8 = 0xFC;
/// Freed slab object.
pub const SLAB_FREE: u8 = 0xFB;
/// Slab slot not handed out yet (fresh slab page).
pub const SLAB_FREE_META: u8 = 0xFA;
/// Global variable redzone.
pub const GLOBAL_REDZONE: u8 = 0xF9;
/// vmalloc space not covered by a live area (or its tail/guard).
pub const VMALLOC_INVALID: u8 = 0xF8;
/// Stack left redzone.
pub const STACK_LEFT: u8 = 0xF1;
/// Stack redzone between variables.
pub const STACK_MID: u8 = 0xF2;
/// Stack right redzone.
pub const STACK_RIGHT: u8 = 0xF3;
/// Stack variable used after its scope or return.
pub const STACK_AFTER_RETURN: u8 = 0xF5;
/// Stack use after scope (compiler's code).
pub const STACK_USE_AFTER_SCOPE: u8 = 0xF8;
/// Left redzone of a dynamically sized stack buffer.
pub const ALLOCA_LEFT: u8 = 0xCA;
/// Right redzone of a dynamically sized stack buffer.
pub const ALLOCA_RIGHT: u8 = 0xCB;
/// hybrid-shadow's own marker: the block mixes page states, so the slow
/// path consults the per-page shadow. Never a Linux code.
pub const CONSULT_PER_PAGE: u8 = 0xE0;

/// Whether a range ending at `end` may touch the granule (its last) whose
/// shadow byte is `v`: the whole granule is accessible, or its first `v`
/// bytes are and the range stops inside them. One rule for the fast paths
/// (`crate::abi`, `Kasan::scan_ok`) and the CONSULT range settling.
#[inline(always)]
#[must_use]
pub(crate) fn last_granule_ok(v: u8, end: usize) -> bool {
    v == 0 || ((v as i8) > 0 && ((end - 1) & (GRANULE - 1)) < v as usize)
}
