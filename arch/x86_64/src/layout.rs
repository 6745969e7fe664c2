//! The x86_64 kernel address layout (Linux's) and the shadow translation.
//!
//! ```text
//!   data address a                         shadow byte
//!   0xffff800000000000 (start of the upper half)  -> 0xffffec0000000000 SHADOW_START
//!   0xffff888000000000 DIRECT_MAP_BASE            -> 0xffffed1000000000
//!   0xffffc90000000000 VMALLOC_BASE               -> 0xfffff52000000000
//!   0xffffea0000000000 VMEMMAP_BASE               -> 0xfffff94000000000
//!   0xffffffff80000000 KERNEL_BASE                -> 0xfffffbfff0000000
//!   0xffffffffffffffff                            -> 0xfffffbffffffffff (< SHADOW_END)
//!   0x0000000000000000 (user, NULL)               -> 0xdffffc0000000000 non-canonical:
//!                                                    a wild or NULL access faults
//! ```

/// Base of the direct map of all physical memory (`virt = phys + base`).
pub const DIRECT_MAP_BASE: usize = 0xffff_8880_0000_0000;
/// Base of the vmalloc area.
pub const VMALLOC_BASE: usize = 0xffff_c900_0000_0000;
/// Base of the vmemmap area, where the per-page shadow array lives.
pub const VMEMMAP_BASE: usize = 0xffff_ea00_0000_0000;
/// First byte of the byte-shadow region.
pub const SHADOW_START: usize = 0xffff_ec00_0000_0000;
/// End (exclusive) of the byte-shadow region.
pub const SHADOW_END: usize = 0xffff_fc00_0000_0000;
/// The compiler's shadow offset: `shadow = (addr >> 3) + SHADOW_OFFSET`.
pub const SHADOW_OFFSET: usize = 0xdfff_fc00_0000_0000;
/// Base of the kernel image mapping.
pub const KERNEL_BASE: usize = 0xffff_ffff_8000_0000;
/// First address of the kernel half whose shadow is [`SHADOW_START`].
pub const KERNEL_HALF_START: usize = 0xffff_8000_0000_0000;

/// Size of a page (data or shadow).
pub const PAGE_SIZE: usize = hybrid_shadow::mapper::PAGE_SIZE;
/// Data bytes described by one shadow page (8 data pages).
pub const SHADOW_PAGE_COVERS: usize = PAGE_SIZE << 3;

/// The shadow byte of `addr`: `(addr >> 3) + SHADOW_OFFSET` (wrapping, as
/// the compiler computes it).
#[inline(always)]
#[must_use]
pub const fn mem_to_shadow(addr: usize) -> usize {
    (addr >> 3).wrapping_add(SHADOW_OFFSET)
}

/// The first data address described by the shadow byte `shadow`
/// (the inverse of [`mem_to_shadow`] for kernel-half addresses).
#[inline]
#[must_use]
pub const fn shadow_to_mem(shadow: usize) -> usize {
    (shadow.wrapping_sub(SHADOW_OFFSET)) << 3
}

/// The page-aligned shadow range `[start, end)` covering data `[lo, hi)`:
/// the shadow of `lo` rounded down, the shadow of `hi` rounded up.
/// `hi == 0` stands for the top of the address space; an empty data range
/// gives an empty shadow range.
#[must_use]
pub const fn shadow_range_of(lo: usize, hi: usize) -> (usize, usize) {
    let s = mem_to_shadow(lo) & !(PAGE_SIZE - 1);
    if hi != 0 && hi <= lo {
        return (s, s);
    }
    // The shadow of the last byte, +1, rounded up. `hi` may be 0 (= 2^64).
    let last = mem_to_shadow(hi.wrapping_sub(1));
    let e = (last | (PAGE_SIZE - 1)).wrapping_add(1);
    (s, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_constants_agree() {
        assert_eq!(mem_to_shadow(KERNEL_HALF_START), SHADOW_START);
        assert_eq!(mem_to_shadow(usize::MAX) + 1, SHADOW_END);
        assert_eq!(mem_to_shadow(DIRECT_MAP_BASE), 0xffff_ed10_0000_0000);
        assert_eq!(mem_to_shadow(KERNEL_BASE), 0xffff_fbff_f000_0000);
        assert_eq!(mem_to_shadow(0), SHADOW_OFFSET);
        assert_eq!(shadow_to_mem(SHADOW_START), KERNEL_HALF_START);
        assert_eq!(shadow_to_mem(mem_to_shadow(VMALLOC_BASE)), VMALLOC_BASE);
        // 512 GiB aligned: the region is whole PML4 slots.
        assert_eq!(SHADOW_START % (1 << 39), 0);
        assert_eq!(SHADOW_END % (1 << 39), 0);
        assert_eq!((SHADOW_END - SHADOW_START) >> 39, 32);
    }

    #[test]
    fn shadow_range_rounds_out() {
        let (s, e) = shadow_range_of(DIRECT_MAP_BASE, DIRECT_MAP_BASE + 1);
        assert_eq!((s, e), (0xffff_ed10_0000_0000, 0xffff_ed10_0000_1000));
        let (s, e) = shadow_range_of(DIRECT_MAP_BASE, DIRECT_MAP_BASE + (64 << 20));
        assert_eq!(e - s, 8 << 20);
        let (s, e) = shadow_range_of(KERNEL_BASE, 0);
        assert_eq!((s, e), (mem_to_shadow(KERNEL_BASE), SHADOW_END));
        let (s, e) = shadow_range_of(KERNEL_BASE, KERNEL_BASE);
        assert_eq!(s, e);
    }
}
