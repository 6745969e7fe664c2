//! The early shadow: a read-only zero shadow over the whole region, in
//! place before the first instrumented instruction runs (Linux's
//! `kasan_early_init`).
//!
//! ```text
//!   PML4[472..504] --> PDPT_e --512x--> PD_e --512x--> PT_e --512x--> ZERO_e (RO)
//!   4 frames, supplied by the kernel (e.g. a page-aligned static in its image)
//! ```
//!
//! With inline checks (no `-asan-instrumentation-with-call-threshold=0`)
//! the compiler reads `(addr >> 3) + OFFSET` itself, before any runtime is
//! called: from the first instrumented function on, every shadow address
//! of the kernel half must be mapped. The early shadow reads 0 ("valid")
//! everywhere, so every check passes until the runtime maps the real
//! shadow; in `off` mode it may stay for good.
//!
//! The runtime's mapper takes the region over with
//! [`X86ShadowMapper::new_over_early`](crate::X86ShadowMapper::new_over_early):
//! it points the region's PML4 entries at its own shared zero tables (same
//! translation: zero everywhere) and flushes. It never writes, reads or
//! frees the early frames, which the kernel may reuse after that flush.

use x86_64::PhysAddr;

use crate::entry::{Encoding, Level};
use crate::mapper::Config;
use crate::phys::{fill_frame, write_entry, PhysMem, ENTRIES};

/// Frames of the early shadow: the zero page, its PT, PD and PDPT.
pub const EARLY_FRAMES: usize = 4;

/// Four page-aligned pages to hold the early shadow, e.g. a `static mut`
/// in the kernel image (`.bss`: no space in the file).
#[repr(C, align(4096))]
pub struct EarlyShadowPages(pub [[u8; 4096]; EARLY_FRAMES]);

impl EarlyShadowPages {
    /// Zeroed pages.
    #[must_use]
    pub const fn new() -> Self {
        EarlyShadowPages([[0; 4096]; EARLY_FRAMES])
    }
}

impl Default for EarlyShadowPages {
    fn default() -> Self {
        Self::new()
    }
}

/// Map the whole shadow region `config.shadow_start..config.shadow_end` of
/// the PML4 at `pml4` read-only to one zero page, through shared tables
/// built in `frames` (`[page, PT, PD, PDPT]`). Entries are encoded as the
/// mapper's shared ones (present, accessed, no-execute if
/// `config.no_execute`, never writable). Does not flush: the region's PML4
/// entries must be empty before (nothing to flush).
///
/// # Safety
///
/// `pml4` and the four distinct `frames` are reachable through `mem`; the
/// frames are owned by the caller and stay untouched while the early
/// shadow is mapped (until the mapper took over and flushed); the region's
/// PML4 entries are not present and nobody else writes them; the region is
/// 512 GiB aligned; if `config.no_execute`, EFER.NXE is set.
pub unsafe fn map_early_shadow<M: PhysMem + ?Sized>(
    mem: &M,
    pml4: PhysAddr,
    frames: [PhysAddr; EARLY_FRAMES],
    config: &Config,
) {
    let enc = Encoding::new(config.no_execute);
    // SAFETY: the frames are the caller's, reachable through `mem`, not
    // yet reachable by the hardware (the region's PML4 entries are empty).
    unsafe {
        fill_frame(mem, frames[0], 0);
        for level in 1..EARLY_FRAMES {
            for i in 0..ENTRIES {
                write_entry(mem, frames[level], i, enc.shared(frames[level - 1]));
            }
        }
    }
    let top = enc.shared(frames[EARLY_FRAMES - 1]);
    let mut va = config.shadow_start;
    while va < config.shadow_end {
        // SAFETY: the PML4 is reachable through `mem`; its entries of the
        // region are the caller's to give (contract), the tables below are
        // complete (written above, before this store).
        unsafe { write_entry(mem, pml4, Level::Pml4.index(va), top) };
        va += Level::Pml4.span();
    }
}
