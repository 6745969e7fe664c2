//! How the mapper reaches physical frames (page tables and shadow pages).
//!
//! ```text
//!   kernel:  phys --(+ DIRECT_MAP_BASE)--> virtual pointer   (OffsetPhysMem)
//!   tests:   phys --(- FAKE_BASE + buffer)--> host buffer     (testing::FakePhys)
//! ```
//!
//! The helpers below do all page-table memory accesses of the crate; entries
//! are read and written with single 8-byte volatile accesses so that the
//! hardware walker (and other CPUs) never sees a torn entry.

use core::sync::atomic::{compiler_fence, Ordering};
use x86_64::PhysAddr;

use crate::layout::{DIRECT_MAP_BASE, PAGE_SIZE};

/// Translation from a physical frame to a pointer the mapper can use.
///
/// # Safety
///
/// For every frame the mapper touches (the PML4 it was given and every frame
/// from its [`FrameSource`](crate::frames::FrameSource)), `frame_ptr` must
/// return a 4096-aligned pointer valid for reads and writes of 4096 bytes,
/// and no Rust reference to that memory may be alive while the mapper runs.
pub unsafe trait PhysMem {
    /// Pointer to the first byte of the 4 KiB frame at `frame`.
    fn frame_ptr(&self, frame: PhysAddr) -> *mut u8;
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: PhysMem + ?Sized> PhysMem for &T {
    #[inline]
    fn frame_ptr(&self, frame: PhysAddr) -> *mut u8 {
        (**self).frame_ptr(frame)
    }
}

/// Physical memory mapped linearly at a fixed virtual offset (the kernel's
/// direct map).
#[derive(Clone, Copy, Debug)]
pub struct OffsetPhysMem {
    offset: usize,
}

impl OffsetPhysMem {
    /// Physical memory reached at `virt = phys + offset`.
    ///
    /// # Safety
    ///
    /// Every frame the mapper will be given must be mapped readable and
    /// writable at `phys + offset`.
    #[must_use]
    pub const unsafe fn new(offset: usize) -> Self {
        OffsetPhysMem { offset }
    }

    /// The kernel's direct map at [`DIRECT_MAP_BASE`].
    ///
    /// # Safety
    ///
    /// All RAM must be mapped readable and writable at `DIRECT_MAP_BASE`.
    #[must_use]
    pub const unsafe fn direct_map() -> Self {
        OffsetPhysMem {
            offset: DIRECT_MAP_BASE,
        }
    }

    /// The offset added to a physical address.
    #[must_use]
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

// SAFETY: the constructors' contracts make `phys + offset` a valid mapping
// of every frame the mapper is given.
unsafe impl PhysMem for OffsetPhysMem {
    #[inline]
    fn frame_ptr(&self, frame: PhysAddr) -> *mut u8 {
        (frame.as_u64() as usize).wrapping_add(self.offset) as *mut u8
    }
}

/// Number of entries in one page table.
pub(crate) const ENTRIES: usize = 512;

/// Read entry `idx` of the table at `table`.
///
/// # Safety
///
/// `table` is a frame covered by `mem`'s contract and `idx < 512`.
#[inline]
pub(crate) unsafe fn read_entry<M: PhysMem + ?Sized>(mem: &M, table: PhysAddr, idx: usize) -> u64 {
    debug_assert!(idx < ENTRIES);
    let p = mem.frame_ptr(table).cast::<u64>();
    // SAFETY: the frame is valid and aligned for 4096 bytes (caller and
    // `PhysMem` contract); idx < 512 keeps the access inside it.
    unsafe { p.add(idx).read_volatile() }
}

/// Write entry `idx` of the table at `table` with one 8-byte store.
///
/// # Safety
///
/// As [`read_entry`]; in addition the table must be owned by the mapper
/// (a private table, or a shared one being built).
#[inline]
pub(crate) unsafe fn write_entry<M: PhysMem + ?Sized>(
    mem: &M,
    table: PhysAddr,
    idx: usize,
    value: u64,
) {
    debug_assert!(idx < ENTRIES);
    let p = mem.frame_ptr(table).cast::<u64>();
    // Everything written before (a table being published, a page being
    // filled) must reach memory before the entry that makes it reachable.
    compiler_fence(Ordering::Release);
    // SAFETY: see `read_entry`; the caller owns the table.
    unsafe { p.add(idx).write_volatile(value) }
}

/// Fill the frame `frame` with `byte`.
///
/// # Safety
///
/// `frame` is covered by `mem`'s contract and owned by the mapper.
pub(crate) unsafe fn fill_frame<M: PhysMem + ?Sized>(mem: &M, frame: PhysAddr, byte: u8) {
    // SAFETY: the frame is valid for 4096 bytes of writes (caller).
    unsafe { core::ptr::write_bytes(mem.frame_ptr(frame), byte, PAGE_SIZE) }
}

/// Copy the 512 entries of table `src` into table `dst`.
///
/// # Safety
///
/// Both frames are covered by `mem`'s contract, distinct, and `dst` is owned
/// by the mapper and not yet reachable by the hardware.
pub(crate) unsafe fn copy_table<M: PhysMem + ?Sized>(mem: &M, dst: PhysAddr, src: PhysAddr) {
    debug_assert_ne!(dst, src);
    // SAFETY: both frames are valid for 4096 bytes and distinct (caller).
    unsafe {
        core::ptr::copy_nonoverlapping(mem.frame_ptr(src), mem.frame_ptr(dst), PAGE_SIZE);
    }
}
