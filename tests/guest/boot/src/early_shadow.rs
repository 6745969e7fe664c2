//! The KASAN kernel's early shadow (Linux's `kasan_early_init`): before
//! `guest_main`, the first instrumented function, runs, the whole shadow
//! region (PML4 slots 472..=503: the shadow of the kernel half, direct map,
//! vmalloc window and image included) maps one read-only zero page through
//! shared tables, four pages of this image in all. With inline checks the
//! compiler reads the shadow itself from the first instrumented
//! instruction on; zero passes every check until the runtime's mapper takes
//! the region over (`X86ShadowMapper::new_over_early`, guest-kasan's
//! `init`). The KMSAN kernel asks its runtime for metadata pointers
//! instead, and does not map this.

use hybrid_shadow_x86_64::early::{map_early_shadow, EarlyShadowPages, EARLY_FRAMES};
use hybrid_shadow_x86_64::{Config, OffsetPhysMem, PhysAddr};

use crate::paging::{pml4_phys, KERNEL_VMA};

/// The zero page and its PT, PD and PDPT (in `.bss`, zeroed by the entry code).
static mut PAGES: EarlyShadowPages = EarlyShadowPages::new();

/// Map the early shadow into the kernel's PML4.
///
/// # Safety
///
/// Once, on the boot CPU, right after `paging::init` (the kernel's PML4 is
/// live, its shadow slots are empty, all RAM, the image included, is in
/// the direct map); nothing else writes the shadow slots until the
/// runtime's mapper takes them over.
pub(crate) unsafe fn init() {
    // Only the address is taken: the pages are reached through the direct
    // map from here on, never through a Rust reference.
    let base = core::ptr::addr_of_mut!(PAGES) as u64 - KERNEL_VMA;
    let frames: [PhysAddr; EARLY_FRAMES] = core::array::from_fn(|i| PhysAddr::new(base + 4096 * i as u64));
    // SAFETY: (caller) the PML4 is live and its shadow slots are empty;
    // the image, and so PAGES, is RAM in the direct map; PAGES is used by
    // nothing else; EFER.NXE was set by the entry code; Linux's region is
    // 512 GiB aligned.
    unsafe { map_early_shadow(&OffsetPhysMem::direct_map(), PhysAddr::new(pml4_phys()), frames, &Config::linux()) };
}
