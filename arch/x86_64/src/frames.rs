//! Where the mapper gets physical frames: page-table pages and private
//! shadow pages.
//!
//! ```text
//!   kernel buddy allocator --alloc_frame--> X86ShadowMapper --free_frame--> back
//!   (no sanitizer hooks on this path: the mapper runs inside the hooks)
//! ```

use x86_64::PhysAddr;

/// A source of 4 KiB physical frames for the shadow mapper.
///
/// The kernel implements it with its page allocator, *without* calling the
/// sanitizer's hooks (the mapper is called from inside those hooks).
///
/// # Safety
///
/// `alloc_frame` must return 4 KiB-aligned frames that nothing else uses
/// until they are given back with `free_frame`, each reachable through the
/// [`PhysMem`](crate::phys::PhysMem) the mapper was built with. `free_frame`
/// is only called with frames this source handed out and not yet taken back.
pub unsafe trait FrameSource {
    /// A free, 4 KiB-aligned frame, or `None` when memory is exhausted.
    /// Its contents are arbitrary; the mapper initialises it.
    fn alloc_frame(&mut self) -> Option<PhysAddr>;

    /// Take back a frame from [`FrameSource::alloc_frame`]. The mapper has
    /// already removed every mapping of it and flushed the TLB.
    fn free_frame(&mut self, frame: PhysAddr);
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: FrameSource + ?Sized> FrameSource for &mut T {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        (**self).alloc_frame()
    }

    fn free_frame(&mut self, frame: PhysAddr) {
        (**self).free_frame(frame);
    }
}

/// Fill `out` with frames from `src`, all or none: on exhaustion the frames
/// taken so far go back and `false` is returned.
pub(crate) fn alloc_all<F: FrameSource + ?Sized>(src: &mut F, out: &mut [PhysAddr]) -> bool {
    for i in 0..out.len() {
        match src.alloc_frame() {
            Some(f) => {
                assert!(f.is_aligned(4096u64), "FrameSource returned an unaligned frame");
                out[i] = f;
            }
            None => {
                for f in &out[..i] {
                    src.free_frame(*f);
                }
                return false;
            }
        }
    }
    true
}
