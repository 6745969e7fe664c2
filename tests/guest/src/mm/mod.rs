//! Guest memory management: buddy page allocator, slab/kmalloc, vmalloc.
pub mod buddy;
#[cfg(not(feature = "kmsan"))]
pub mod mempool;
pub mod slab;
#[cfg(not(feature = "kmsan"))]
pub mod uaccess;
pub mod vmalloc;

pub use buddy::{alloc_pages, free_pages, split_page, PAGE_SIZE};
pub use slab::{
    kfree, kmalloc, kmem_cache_alloc, kmem_cache_alloc_bulk, kmem_cache_create, kmem_cache_destroy,
    kmem_cache_create_flags, kmem_cache_free, kmem_cache_free_bulk, kfree_sensitive, krealloc, ksize, kzalloc, CacheRef,
};
pub use vmalloc::{vfree, vmalloc};

/// The kernel's Rust heap (`Box`, `Vec`): kmalloc and kfree, as
/// Rust-for-Linux's kernel allocator is built on them. Alignments above
/// 8 are refused (null): kmalloc guarantees 8.
struct KernelHeap;

// SAFETY: kmalloc returns null or a block of at least `size` bytes,
// 8-aligned, not handed out again until kfree; larger alignments are
// refused.
unsafe impl core::alloc::GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        if layout.align() > 8 || layout.size() == 0 {
            return core::ptr::null_mut();
        }
        kmalloc(layout.size())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: core::alloc::Layout) {
        kfree(ptr)
    }
}

#[global_allocator]
static KERNEL_HEAP: KernelHeap = KernelHeap;

/// Copy `n` bytes from kernel address `src` to `dst` unless `src` is not
/// mapped (Linux's `copy_from_kernel_nofault`, for debuggers and tracers).
/// Under KMSAN the source must be initialized: this is where data leaves
/// the kernel's checked flow, so uninitialized bytes are reported here.
///
/// # Safety
///
/// `dst` is valid for `n` bytes of writes; `src..src + n` does not span an
/// unmapped hole (only its first and last byte are probed, as a range
/// inside one object or one mapping never does).
#[inline(never)]
pub unsafe fn copy_from_kernel_nofault(dst: *mut u8, src: *const u8, n: usize) -> bool {
    let (first, last) = (src as u64, src as u64 + n.max(1) as u64 - 1);
    if guest_boot::paging::virt_to_phys(first).is_none() || guest_boot::paging::virt_to_phys(last).is_none() {
        return false;
    }
    crate::kasan_glue::check_initialized(src as usize, n);
    // SAFETY: both ends of the source are mapped (checked above) and it
    // spans no hole; the destination is valid for `n` bytes (the caller's
    // contract).
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
    true
}

/// Return address of the caller of the function this is called in (for
/// free-path hooks: `ip`). Approximate: reads the saved return address of
/// the current frame.
///
/// Read with inline assembly: the `call` instruction wrote the slot, which
/// KMSAN cannot see, and an assembly output counts as initialized.
#[inline(always)]
pub fn caller_ip() -> usize {
    let ip: usize;
    // SAFETY: frame pointers are forced in the guest, so [rbp + 8] is the
    // current function's return address.
    unsafe { core::arch::asm!("mov {}, [rbp + 8]", out(reg) ip, options(nostack, readonly, preserves_flags)) };
    ip
}
