//! The shared read-only pages and the shared tables above them.
//!
//! ```text
//!   kind k:   PDPT_k[0..512] -> PD_k[0..512] -> PT_k[0..512] -> PAGE_k (fill(k))
//!   4 kinds x (1 page + 3 tables) = 16 frames, built once, never written again
//! ```
//!
//! `target(k, level)` is what an entry of a table at `level` points at when
//! it is "shared of kind k": `PAGE_k` for PT entries, `PT_k` for PD entries,
//! `PD_k` for PDPT entries and `PDPT_k` for PML4 entries.

use hybrid_shadow::mapper::SharedPage;
use x86_64::PhysAddr;

use crate::entry::{Encoding, Level};
use crate::frames::FrameSource;
use crate::phys::{fill_frame, write_entry, PhysMem, ENTRIES};

/// Number of shared kinds.
const KINDS: usize = SharedPage::ALL.len();
/// Frames per kind: the data page and the PT, PD and PDPT.
const PER_KIND: usize = 4;
/// Total frames held for the shared structures.
pub(crate) const SHARED_FRAMES: usize = KINDS * PER_KIND;
/// Of those, page-table pages.
pub(crate) const SHARED_TABLES: usize = KINDS * (PER_KIND - 1);

/// The shared pages and tables of every kind.
#[derive(Debug)]
pub(crate) struct SharedTables {
    /// `frames[kind][level - 1]` = `target(kind, level)`:
    /// `[page, PT, PD, PDPT]`.
    frames: [[PhysAddr; PER_KIND]; KINDS],
}

impl SharedTables {
    /// Allocate and fill the shared structures. On failure every frame
    /// taken so far is given back and `None` is returned.
    ///
    /// # Safety
    ///
    /// `frames` and `mem` fulfil their contracts for each other.
    pub(crate) unsafe fn build<F: FrameSource, M: PhysMem>(
        frames: &mut F,
        mem: &M,
        enc: Encoding,
    ) -> Option<Self> {
        let mut got = [PhysAddr::zero(); SHARED_FRAMES];
        if !crate::frames::alloc_all(frames, &mut got) {
            return None;
        }
        let mut out = SharedTables {
            frames: [[PhysAddr::zero(); PER_KIND]; KINDS],
        };
        for kind in SharedPage::ALL {
            let k = kind as usize;
            let f = &mut out.frames[k];
            f.copy_from_slice(&got[k * PER_KIND..(k + 1) * PER_KIND]);
            // SAFETY: the frames are fresh from the source, owned by us and
            // reachable through `mem` (caller).
            unsafe {
                fill_frame(mem, f[0], kind.fill());
                for level in 1..PER_KIND {
                    for i in 0..ENTRIES {
                        write_entry(mem, f[level], i, enc.shared(f[level - 1]));
                    }
                }
            }
        }
        Some(out)
    }

    /// What a shared entry of kind `kind` in a table at `level` points at.
    #[inline]
    pub(crate) fn target(&self, kind: SharedPage, level: Level) -> PhysAddr {
        self.frames[kind as usize][level as usize - 1]
    }

    /// The shared kind whose entries at `level` point at `addr`, if any.
    #[inline]
    pub(crate) fn kind_at(&self, level: Level, addr: PhysAddr) -> Option<SharedPage> {
        SharedPage::ALL
            .into_iter()
            .find(|k| self.frames[*k as usize][level as usize - 1] == addr)
    }

    /// Every frame held, for tear-down.
    #[cfg(test)]
    pub(crate) fn all_frames(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        self.frames.iter().flatten().copied()
    }
}
