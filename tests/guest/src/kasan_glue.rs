//! The single place where the guest calls into the sanitizer runtime.
//!
//! Every `pub fn` here is a hook the runtime (hybrid-shadow, via
//! hybrid-shadow-x86_64) will get. For now the bodies do nothing (or return
//! the no-sanitizer answer); they will be wired to hybrid-shadow later.
//! Addresses are kernel virtual addresses (`usize`); `ip` is the caller's
//! return address for free paths (used in "Freed by" / report titles).
#![allow(unused_variables)]

use guest_boot::BootInfo;

/// Opaque cache id handed out by the runtime (`cache_create`).
pub type CacheId = u32;

/// What the allocator must do after `object_free`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FreeAction {
    /// Really free the object now.
    Now,
    /// The runtime keeps it (quarantine); it comes back through `quarantine_pop`.
    Deferred,
    /// The runtime reported a bug (double-free, invalid-free): do nothing.
    Bug,
}

// ---- boot ---------------------------------------------------------------

/// Before anything allocates: the runtime sets up its shadow mapper
/// (PML4 slots 472..=503, `guest_boot::paging::pml4_phys()`), reads
/// `info.config` (kasan.shadow / kasan.fault / kasan_multi_shot) and the memory map.
pub fn early_init(info: &'static BootInfo) {
    // TODO(hybrid-shadow): runtime init.
}

/// After the buddy allocator exists: the runtime may take pages for its
/// own tables from now on (`crate::mm::buddy::alloc_pages`).
pub fn page_allocator_ready() {}

/// After `.init_array` ran (globals registered) and before the suites.
pub fn late_init(info: &'static BootInfo) {}

/// Memory the guest uses outside every allocator (the buddy frame array):
/// valid, never freed.
pub fn mark_reserved(addr: usize, len: usize) {}

// ---- page allocator -----------------------------------------------------

/// 2^order pages at `addr` (direct map) were just allocated.
pub fn page_alloc(addr: usize, order: u32) {
    // TODO(hybrid-shadow): unpoison.
}

/// 2^order pages at `addr` are about to be freed. Return false if the
/// runtime reported a bug (the allocator then leaves the block alone).
pub fn page_free(addr: usize, order: u32, ip: usize) -> bool {
    // TODO(hybrid-shadow): poison as freed page / report.
    true
}

// ---- slab ---------------------------------------------------------------

/// A cache is being created (kmalloc-N at boot, or kmem_cache_create).
pub fn cache_create(name: &'static str, object_size: usize, align: usize) -> CacheId {
    0
}

/// A cache is being destroyed (after its slabs were freed).
pub fn cache_destroy(id: CacheId) {}

/// Bytes per slot for objects of `object_size` (the runtime adds redzones).
pub fn cache_slot_size(object_size: usize) -> usize {
    object_size
}

/// A new slab of 2^order pages at `base` belongs to cache `id` (after page_alloc).
pub fn slab_page_alloc(id: CacheId, base: usize, order: u32) {}

/// An empty slab goes back to the page allocator (before page_free).
pub fn slab_page_free(base: usize, order: u32) {}

/// Object `ptr` of cache `id` was allocated with `size` requested bytes.
pub fn object_alloc(id: CacheId, ptr: usize, size: usize) {}

/// Object `ptr` (slot start) of cache `id`, in the slab at `slab_base`, is freed.
pub fn object_free(id: CacheId, slab_base: usize, ptr: usize, ip: usize) -> FreeAction {
    FreeAction::Now
}

/// Whether `ptr` is a live object (krealloc checks before using it); the
/// runtime reports use-after-free / invalid-free itself when not.
pub fn object_check_live(id: CacheId, slab_base: usize, ptr: usize, ip: usize) -> bool {
    true
}

/// krealloc in place: object `ptr` now has `new_size` requested bytes.
pub fn object_resize(id: CacheId, ptr: usize, new_size: usize) {}

/// ksize(): the runtime unpoisons up to the usable size and returns it
/// (`object_size` = the cache's object size, the no-sanitizer answer).
pub fn ksize(id: CacheId, ptr: usize, object_size: usize, ip: usize) -> usize {
    object_size
}

/// Next object the runtime releases from quarantine (the allocator then
/// really frees it), or None.
pub fn quarantine_pop() -> Option<usize> {
    None
}

/// A page-backed kmalloc of `size` bytes at `addr` (2^order pages).
pub fn kmalloc_large(addr: usize, order: u32, size: usize) {}

/// kfree of a large kmalloc; `ptr` is what the caller passed. Return false
/// if the runtime reported a bug (then nothing is freed).
pub fn kfree_large(ptr: usize, order: u32, ip: usize) -> bool {
    true
}

/// A free the allocator itself found invalid (double free, pointer not at
/// an object start, unknown address, double kmem_cache_destroy). The runtime
/// will turn this into a KASAN report; for now print it.
pub fn bad_free(ptr: usize, ip: usize, what: &str) {
    crate::println!("guest: bad free of {:#x} from {}: {}", ptr, guest_boot::ksyms::Ret(ip as u64), what);
}

// ---- vmalloc ------------------------------------------------------------

/// vmalloc area at `addr`: `size` requested bytes, `area_len` bytes mapped
/// (page multiple, guard page not included).
pub fn vmalloc_alloc(addr: usize, size: usize, area_len: usize) {}

/// vmalloc area at `addr` of `area_len` mapped bytes is being freed (before unmapping).
pub fn vmalloc_free(addr: usize, area_len: usize) {}

// ---- tasks --------------------------------------------------------------

/// A kernel stack of 2^order pages at `addr` was allocated (after page_alloc).
pub fn stack_alloc(addr: usize, order: u32) {}

/// A dead task's stack is being freed (before page_free).
pub fn stack_free(addr: usize, order: u32) {}

/// The current task changed (reports say "by task <name>/<pid>").
pub fn task_switch(name: &'static str, pid: u32) {}
