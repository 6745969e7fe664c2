//! TLB invalidation, behind a trait so host tests never run `invlpg`.
//!
//! ```text
//!   X86ShadowMapper --flush_page(va)--> LocalInvlpg  (kernel, one CPU: invlpg)
//!                                   \-> kernel type  (several CPUs: IPI shootdown)
//!                                   \-> recorder     (host tests)
//! ```

/// Invalidates stale translations of the shadow region.
///
/// # Safety
///
/// When `flush_page(va)` returns, no CPU that may use the shadow region holds
/// a TLB entry for the 4 KiB page at `va` or any paging-structure-cache
/// entry (`invlpg` drops all of them on the CPU executing it). When
/// `flush_all` returns, no such CPU holds any non-global TLB or
/// paging-structure-cache entry for the shadow region. The mapper relies on
/// this before it hands frames back to its source.
pub unsafe trait TlbFlush {
    /// Invalidate the page at `va` (and the paging-structure caches).
    fn flush_page(&mut self, va: usize);
    /// Invalidate every non-global translation (and the paging-structure caches).
    fn flush_all(&mut self);
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: TlbFlush + ?Sized> TlbFlush for &mut T {
    fn flush_page(&mut self, va: usize) {
        (**self).flush_page(va);
    }

    fn flush_all(&mut self) {
        (**self).flush_all();
    }
}

/// `invlpg` / CR3 reload on the current CPU: correct for a single CPU (or
/// before secondary CPUs run). With several CPUs, the kernel supplies its
/// own [`TlbFlush`] that also shoots down the other CPUs.
#[derive(Debug)]
pub struct LocalInvlpg {
    _private: (),
}

impl LocalInvlpg {
    /// The local-CPU flusher.
    ///
    /// # Safety
    ///
    /// The code runs at CPL 0 (`invlpg` and CR3 writes fault elsewhere),
    /// and no other CPU uses the shadow region.
    #[must_use]
    pub const unsafe fn new() -> Self {
        LocalInvlpg { _private: () }
    }
}

// SAFETY: `invlpg` drops the page's TLB entries and all paging-structure
// caches of the current CPU; a CR3 reload drops all non-global entries.
// `new` requires that this is the only CPU using the shadow region, and the
// mapper never sets the global bit.
unsafe impl TlbFlush for LocalInvlpg {
    fn flush_page(&mut self, va: usize) {
        #[cfg(target_arch = "x86_64")]
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(va as u64));
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("invlpg of {va:#x} on a non-x86_64 target");
    }

    fn flush_all(&mut self) {
        #[cfg(target_arch = "x86_64")]
        x86_64::instructions::tlb::flush_all();
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("TLB flush on a non-x86_64 target");
    }
}
