//! Carving the runtimes' metadata arena (one block the kernel hands over
//! at init) into aligned pieces and atomic tables.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU8};

/// Carve `n` bytes aligned to `align` (a power of two) off the front of
/// `rest`; `None` when it is too small.
pub(crate) fn take(rest: &mut &'static mut [u8], n: usize, align: usize) -> Option<&'static mut [u8]> {
    let pad = (rest.as_ptr() as usize).wrapping_neg() & (align - 1);
    if rest.len() < pad + n {
        return None;
    }
    let all = core::mem::take(rest);
    let (_, all) = all.split_at_mut(pad);
    let (head, tail) = all.split_at_mut(n);
    *rest = tail;
    Some(head)
}

/// `mem` as bytes all set to `init`, shared from now on.
pub(crate) fn atomics_u8(mem: &'static mut [u8], init: u8) -> &'static [AtomicU8] {
    mem.fill(init);
    // SAFETY: AtomicU8 has u8's layout; the exclusive borrow is given up.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().cast::<AtomicU8>(), mem.len()) }
}

/// `mem` (from [`take`] with alignment 2) as zeroed `u16`s.
pub(crate) fn atomics_u16(mem: &'static mut [u8]) -> &'static [AtomicU16] {
    assert!((mem.as_ptr() as usize).is_multiple_of(2), "arena piece not aligned to 2");
    mem.fill(0);
    // SAFETY: aligned to 2 (checked); AtomicU16 has u16's layout and
    // all-zero bytes are a valid value; the exclusive borrow is given up.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().cast::<AtomicU16>(), mem.len() / 2) }
}

/// `mem` (from [`take`] with alignment 4) as zeroed `u32`s.
pub(crate) fn atomics_u32(mem: &'static mut [u8]) -> &'static [AtomicU32] {
    assert!((mem.as_ptr() as usize).is_multiple_of(4), "arena piece not aligned to 4");
    mem.fill(0);
    // SAFETY: aligned to 4 (checked); AtomicU32 has u32's layout and
    // all-zero bytes are a valid value; the exclusive borrow is given up.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().cast::<AtomicU32>(), mem.len() / 4) }
}
