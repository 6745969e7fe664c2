//! Guest memory management: buddy page allocator, slab/kmalloc, vmalloc.
pub mod buddy;
pub mod slab;
pub mod vmalloc;

pub use buddy::{alloc_pages, free_pages, split_page, PAGE_SIZE};
pub use slab::{
    kfree, kmalloc, kmem_cache_alloc, kmem_cache_alloc_bulk, kmem_cache_create, kmem_cache_destroy,
    kmem_cache_free, kmem_cache_free_bulk, kfree_sensitive, krealloc, ksize, kzalloc, CacheRef,
};
pub use vmalloc::{vfree, vmalloc};

/// Return address of the caller of the function this is called in (for
/// free-path hooks: `ip`). Approximate: reads the saved return address of
/// the current frame.
#[inline(always)]
pub fn caller_ip() -> usize {
    let rbp = guest_boot::stack::current_rbp();
    unsafe { *((rbp + 8) as *const usize) }
}
