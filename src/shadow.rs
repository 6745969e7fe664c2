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

/// Whether the shadow bytes of granules `first..=last` (read through
/// `byte`, one load each) let an access ending at `end` pass: every byte 0,
/// or the last one partial and covering the access's end. A CONSULT byte
/// passes when `consult` says its page is allocated. The one decision both
/// the runtime's checks and the compiler ABI's fast path make.
#[inline(always)]
pub(crate) fn granules_pass(
    first: usize,
    last: usize,
    end: usize,
    byte: impl Fn(usize) -> u8,
    consult: impl Fn(usize) -> bool,
) -> bool {
    let mut g = first;
    while g <= last {
        let v = byte(g);
        let partial_ok = g == last && (v as i8) > 0 && ((end - 1) & 7) < v as usize;
        if v != 0 && !partial_ok && !(v == CONSULT_PER_PAGE && consult(g << GRANULE_SHIFT)) {
            return false;
        }
        g += 1;
    }
    true
}
