//! Slab allocator: kmalloc caches (8 .. 8192 bytes), named caches, bulk
//! alloc/free, page-backed large kmalloc, krealloc, ksize, kfree from any
//! direct-map alias. Slot size and the offset of the first slot in a slab
//! (a left redzone) come from the runtime (`kasan_glue::cache_create`).
//! Freed objects may be quarantined by the runtime: their slots stay
//! taken until `kasan_glue::quarantine_pop` lets them go. All allocator metadata lives OUTSIDE the
//! objects (a side `SlabMeta` block per slab, found through the frame
//! array), so this instrumented code never touches poisoned object memory.
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::buddy::{self, alloc_pages_flags, free_pages, head_of, PAGE_SIZE, PG_LARGE, PG_META, PG_SLAB};
use crate::kasan_glue::{self, CacheId, FreeAction};
use crate::println;

/// Guards the caches and slabs on several CPUs. Held while the slab calls
/// the runtime's hooks (order: slab, runtime, buddy); never taken by what
/// the runtime calls back (`slab_ref` reads without it). The same CPU may
/// take it again (a hook's report may free, the Rust heap is kmalloc).
static LOCK: guest_boot::smp::RecLock = guest_boot::smp::RecLock::new();

pub const KMALLOC_SIZES: [usize; 13] = [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192];
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;
const KMALLOC_NAMES: [&str; 13] = [
    "kmalloc-8", "kmalloc-16", "kmalloc-32", "kmalloc-64", "kmalloc-96", "kmalloc-128", "kmalloc-192",
    "kmalloc-256", "kmalloc-512", "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-8k",
];
const MAX_CACHES: usize = 64;
const MAX_OBJS: usize = 1024;
const META_ORDER: usize = 1;
/// Slab descriptors come in chunks of one pageblock (8 pages, the data one
/// shadow page covers): see [`meta_alloc`].
const CHUNK_ORDER: usize = buddy::PAGEBLOCK_PAGES.trailing_zeros() as usize;
const SLOTS_PER_CHUNK: usize = 1 << (CHUNK_ORDER - META_ORDER);
/// Bytes of one descriptor slot.
const SLOT_BYTES: usize = PAGE_SIZE << META_ORDER;
const _: () = assert!(core::mem::size_of::<SlabMeta>() <= PAGE_SIZE << META_ORDER);

/// Per-slab metadata, in its own pages (order META_ORDER).
struct SlabMeta {
    cache: usize,
    base: usize,
    order: u8,
    nobj: u16,
    inuse: u16,
    nfree: u16,
    next: *mut SlabMeta,
    prev: *mut SlabMeta,
    on_partial: bool,
    allocated: [u64; MAX_OBJS / 64],
    free_stack: [u16; MAX_OBJS],
    /// Requested size of each live object.
    sizes: [u16; MAX_OBJS],
}

pub struct Cache {
    pub name: &'static str,
    pub object_size: usize,
    pub slot_size: usize,
    /// Offset of the first slot in a slab (the runtime's left redzone).
    pub slab_offset: usize,
    pub align: usize,
    pub order: usize,
    pub nobj: usize,
    pub id: CacheId,
    gen: u32,
    live: bool,
    partial: *mut SlabMeta,
    full: *mut SlabMeta,
    pub nslabs: usize,
    pub inuse: usize,
    /// `SLAB_TYPESAFE_BY_RCU`, `SLAB_ACCOUNT` (kmem_cache_create_flags).
    pub flags: u32,
}

/// A cache whose freed objects stay valid until an RCU grace period has
/// passed (Linux's `SLAB_TYPESAFE_BY_RCU` with `CONFIG_SLUB_RCU_DEBUG`):
/// kmem_cache_free queues the real free (and the runtime's poisoning)
/// with call_rcu.
pub const SLAB_TYPESAFE_BY_RCU: u32 = 1 << 0;
/// A cache whose objects are charged to the memory cgroup
/// (Linux's `SLAB_ACCOUNT`): see [`memcg_charged`].
pub const SLAB_ACCOUNT: u32 = 1 << 1;

const EMPTY: Cache = Cache {
    name: "",
    object_size: 0,
    slot_size: 0,
    slab_offset: 0,
    align: 0,
    order: 0,
    nobj: 0,
    id: 0,
    gen: 0,
    live: false,
    partial: core::ptr::null_mut(),
    full: core::ptr::null_mut(),
    nslabs: 0,
    inuse: 0,
    flags: 0,
};
static mut CACHES: [Cache; MAX_CACHES] = [EMPTY; MAX_CACHES];

/// Handle to a named cache (index + generation, so a stale handle is detected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheRef {
    idx: u32,
    gen: u32,
}

fn caches() -> &'static mut [Cache; MAX_CACHES] {
    // SAFETY: the slab's functions hold LOCK (every public one takes it),
    // so they run one CPU at a time; no slab use from interrupt context;
    // `slab_ref` (the runtime's callback) only reads cache fields that
    // change at create and destroy.
    unsafe { &mut *core::ptr::addr_of_mut!(CACHES) }
}

fn setup(idx: usize, name: &'static str, size: usize, align: usize) {
    let c = &mut caches()[idx];
    let align = align.max(8).next_power_of_two();
    let (id, slot, slab_offset) = kasan_glue::cache_create(name, size, align);
    let slot = (slot.max(size) + align - 1) & !(align - 1);
    // Smallest order with >= 4 slots (and >= 8 KiB), at most MAX_OBJS slots.
    let mut order = 1;
    while (PAGE_SIZE << order) < 4 * slot + slab_offset && order < buddy::MAX_ORDER {
        order += 1;
    }
    let nobj = (((PAGE_SIZE << order) - slab_offset) / slot).min(MAX_OBJS);
    *c = Cache {
        name,
        object_size: size,
        slot_size: slot,
        slab_offset,
        align,
        order,
        nobj,
        id,
        gen: c.gen + 1,
        live: true,
        partial: core::ptr::null_mut(),
        full: core::ptr::null_mut(),
        nslabs: 0,
        inuse: 0,
        flags: 0,
    };
}

pub fn init() {
    let _g = LOCK.lock();
    for (i, &s) in KMALLOC_SIZES.iter().enumerate() {
        setup(i, KMALLOC_NAMES[i], s, 8);
    }
    println!("slab: {} kmalloc caches", KMALLOC_SIZES.len());
}

fn list_push(head: &mut *mut SlabMeta, m: *mut SlabMeta) {
    // SAFETY: `m` and every descriptor on the list are a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab); `m` is on no list.
    unsafe {
        (*m).prev = core::ptr::null_mut();
        (*m).next = *head;
        if !(*head).is_null() {
            (**head).prev = m;
        }
        *head = m;
    }
}

fn list_del(head: &mut *mut SlabMeta, m: *mut SlabMeta) {
    // SAFETY: `m` is on this list, and it and its neighbours are a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    unsafe {
        if !(*m).prev.is_null() {
            (*(*m).prev).next = (*m).next;
        } else {
            *head = (*m).next;
        }
        if !(*m).next.is_null() {
            (*(*m).next).prev = (*m).prev;
        }
        (*m).next = core::ptr::null_mut();
        (*m).prev = core::ptr::null_mut();
    }
}

fn new_slab(ci: usize) -> Option<*mut SlabMeta> {
    let c = &mut caches()[ci];
    let meta = meta_alloc()?;
    let Some(base) = alloc_pages_flags(c.order, PG_SLAB) else {
        meta_free(meta);
        return None;
    };
    // SAFETY: `meta` is the block just allocated and zeroed (all-zero is a
    // valid SlabMeta), used by nothing else yet.
    let m = unsafe { &mut *meta };
    m.cache = ci;
    m.base = base;
    m.order = c.order as u8;
    m.nobj = c.nobj as u16;
    m.inuse = 0;
    m.nfree = c.nobj as u16;
    m.on_partial = true;
    m.allocated = [0; MAX_OBJS / 64];
    for i in 0..c.nobj {
        m.free_stack[i] = (c.nobj - 1 - i) as u16; // pop lowest index first
    }
    for i in 0..(1usize << c.order) {
        if let Some(p) = buddy::page_of(base + i * PAGE_SIZE) {
            p.private = meta as usize;
        }
    }
    kasan_glue::slab_page_alloc(c.id, base, c.order as u32);
    list_push(&mut c.partial, meta);
    c.nslabs += 1;
    Some(meta)
}

/// A free descriptor slot of a chunk, on the doubly linked free list.
struct FreeSlot {
    next: *mut FreeSlot,
    prev: *mut FreeSlot,
}

/// The descriptor chunks: their free slots and how many chunks are held.
struct MetaPool {
    free: *mut FreeSlot,
    chunks: usize,
}

static mut META: MetaPool = MetaPool { free: core::ptr::null_mut(), chunks: 0 };

fn meta_pool() -> &'static mut MetaPool {
    // SAFETY: only `meta_alloc`, `meta_free` and `usage` use it, from
    // `new_slab`, `release_slab` and `usage`, which run with LOCK held: one
    // CPU at a time.
    unsafe { &mut *core::ptr::addr_of_mut!(META) }
}

fn slot_push(pool: &mut MetaPool, f: *mut FreeSlot) {
    // SAFETY: `f` is a free slot of a held chunk (ours, 8 KiB, not on the
    // list); the list's head is one too.
    unsafe {
        (*f).prev = core::ptr::null_mut();
        (*f).next = pool.free;
        if !pool.free.is_null() {
            (*pool.free).prev = f;
        }
    }
    pool.free = f;
}

fn slot_unlink(pool: &mut MetaPool, f: *mut FreeSlot) {
    // SAFETY: `f` is on the free list; it and its neighbours are free slots
    // of held chunks.
    unsafe {
        if (*f).prev.is_null() {
            pool.free = (*f).next;
        } else {
            (*(*f).prev).next = (*f).next;
        }
        if !(*f).next.is_null() {
            (*(*f).next).prev = (*f).prev;
        }
    }
}

/// A zeroed slab descriptor. Descriptors are carved from whole pageblocks
/// (4 per 32 KiB chunk), not allocated one order-1 block at a time: a
/// kernel keeps them in its frame array (Linux's `struct slab` is the
/// slab's `struct page`s), memory that is allocated at boot and whole.
/// Order-1 blocks among the page-granular pool's other pages would leave
/// the pageblocks around them mixing free and allocated pages, where
/// hybrid reads the per-page shadow for every descriptor access (28M of
/// 34M such reads in the 1 GiB build workload). The chunk's head frame
/// counts its slots in use (`private`); a chunk goes back to the buddy
/// allocator when its last slot is freed.
fn meta_alloc() -> Option<*mut SlabMeta> {
    let pool = meta_pool();
    if pool.free.is_null() {
        let chunk = alloc_pages_flags(CHUNK_ORDER, PG_META)?;
        // Zeroed whole, as Linux's frame array is: under KMSAN the chunk's
        // pages are then initialized throughout (no private metadata for
        // descriptors written in part).
        // SAFETY: a block of 2^CHUNK_ORDER pages just allocated, ours.
        unsafe { core::ptr::write_bytes(chunk as *mut u8, 0, PAGE_SIZE << CHUNK_ORDER) };
        pool.chunks += 1;
        for i in (0..SLOTS_PER_CHUNK).rev() {
            slot_push(pool, (chunk + i * SLOT_BYTES) as *mut FreeSlot);
        }
    }
    let f = pool.free;
    let (head, _) = head_of(f as usize)?;
    slot_unlink(pool, f);
    head.private += 1;
    // SAFETY: `f` is a slot of SLOT_BYTES of a held chunk, taken off the
    // free list: ours.
    unsafe { core::ptr::write_bytes(f as *mut u8, 0, SLOT_BYTES) };
    Some(f as *mut SlabMeta)
}

/// Give back a descriptor from [`meta_alloc`]; its chunk goes back to the
/// buddy allocator once none of its slots is in use.
fn meta_free(m: *mut SlabMeta) {
    let pool = meta_pool();
    let Some((head, chunk)) = head_of(m as usize) else { return };
    head.private -= 1;
    if head.private == 0 {
        for i in 0..SLOTS_PER_CHUNK {
            let f = chunk + i * SLOT_BYTES;
            if f != m as usize {
                slot_unlink(pool, f as *mut FreeSlot);
            }
        }
        pool.chunks -= 1;
        free_pages(chunk, CHUNK_ORDER);
    } else {
        slot_push(pool, m as *mut FreeSlot);
    }
}

fn release_slab(m: *mut SlabMeta) {
    // SAFETY: `m` is a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab) (its last object just went).
    let mr = unsafe { &mut *m };
    let c = &mut caches()[mr.cache];
    if mr.on_partial {
        list_del(&mut c.partial, m);
    } else {
        list_del(&mut c.full, m);
    }
    c.nslabs -= 1;
    kasan_glue::slab_page_free(c.id, mr.base, mr.order as u32);
    free_pages(mr.base, mr.order as usize);
    meta_free(m);
}

fn cache_alloc(ci: usize, size: usize) -> *mut u8 {
    drain_quarantine(8);
    let c = &mut caches()[ci];
    let m = if c.partial.is_null() {
        match new_slab(ci) {
            Some(m) => m,
            None => return core::ptr::null_mut(),
        }
    } else {
        c.partial
    };
    let c = &mut caches()[ci];
    // SAFETY: `m` is the cache's partial slab or a new one: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    let mr = unsafe { &mut *m };
    mr.nfree -= 1;
    let i = mr.free_stack[mr.nfree as usize] as usize;
    mr.allocated[i / 64] |= 1 << (i % 64);
    mr.sizes[i] = size as u16;
    mr.inuse += 1;
    c.inuse += 1;
    if mr.nfree == 0 {
        list_del(&mut c.partial, m);
        list_push(&mut c.full, m);
        mr.on_partial = false;
    }
    let ptr = mr.base + c.slab_offset + i * c.slot_size;
    kasan_glue::object_alloc(c.id, ptr, size);
    ptr as *mut u8
}

/// The direct-map address of any kernel address with a physical address.
fn direct(ptr: usize) -> usize {
    match guest_boot::paging::virt_to_phys(ptr as u64) {
        Some(pa) => guest_boot::paging::phys_to_virt(pa) as usize,
        None => ptr,
    }
}

/// For the runtime's reports: the slab holding `addr` as (runtime cache
/// id, address of its first slot).
pub fn slab_ref(addr: usize) -> Option<(u16, usize)> {
    let p = buddy::page_of(addr)?;
    if p.flags & PG_SLAB == 0 || p.private == 0 {
        return None;
    }
    // SAFETY: PG_SLAB pages point at their live SlabMeta.
    let mr = unsafe { &*(p.private as *const SlabMeta) };
    let c = &caches()[mr.cache];
    if c.id == kasan_glue::UNTRACKED {
        return None;
    }
    Some((c.id as u16, mr.base + c.slab_offset))
}

/// Slab metadata and object index for an address inside a slab (an
/// address in the left redzone gets index `nobj` and a non-zero remainder).
fn locate(ptr: usize) -> Option<(*mut SlabMeta, usize, usize)> {
    let p = buddy::page_of(ptr)?;
    if p.flags & PG_SLAB == 0 || p.private == 0 {
        return None;
    }
    let m = p.private as *mut SlabMeta;
    // SAFETY: a PG_SLAB page's non-zero `private` is its slab's descriptor,
    // a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    let mr = unsafe { &*m };
    let c = &caches()[mr.cache];
    // Translate an alias to the slab's direct-map address.
    let pa = guest_boot::paging::virt_to_phys(ptr as u64)?;
    let off = (pa - guest_boot::paging::virt_to_phys(mr.base as u64)?) as usize;
    if off < c.slab_offset {
        return Some((m, mr.nobj as usize, off + 1));
    }
    let off = off - c.slab_offset;
    Some((m, off / c.slot_size, off % c.slot_size))
}

/// Objects freed with [`kfree_held`]: (object, the slab let it go
/// meanwhile). Their slots are not reused until [`unhold`].
const HOLD_MAX: usize = 64;
static mut HELD: [(usize, bool); HOLD_MAX] = [(0, false); HOLD_MAX];
static NHELD: AtomicUsize = AtomicUsize::new(0);

fn held() -> &'static mut [(usize, bool); HOLD_MAX] {
    // SAFETY: callers hold LOCK (as `caches`): one user at a time.
    unsafe { &mut *core::ptr::addr_of_mut!(HELD) }
}

/// kfree of slab object `ptr` (direct map) whose slot stays taken, not
/// reused, until [`unhold`]: the runtime sees a real free (quarantine,
/// poisoning), so every access to it is a use-after-free that no
/// reallocation can hide. False (nothing freed) when `ptr` is no slab
/// object's start or the hold table is full.
#[inline(never)]
pub fn kfree_held(ptr: *const u8) -> bool {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    let p = ptr as usize;
    if !matches!(locate(p), Some((_, _, 0))) {
        return false;
    }
    let Some(e) = held().iter_mut().find(|e| e.0 == 0) else { return false };
    *e = (p, false);
    NHELD.fetch_add(1, Relaxed);
    kfree_ip(ptr, ip);
    true
}

/// Let the slot of an object freed with [`kfree_held`] be reused (freed
/// now if the slab let it go meanwhile, else when the quarantine does).
pub fn unhold(ptr: *const u8) {
    let _g = LOCK.lock();
    let p = ptr as usize;
    let Some(e) = held().iter_mut().find(|e| e.0 == p) else { return };
    let released = e.1;
    *e = (0, false);
    NHELD.fetch_sub(1, Relaxed);
    if released {
        if let Some((m, i, 0)) = locate(p) {
            release_object(m, i);
        }
    }
}

/// The actual free of a slab object (after the runtime said "now").
fn release_object(m: *mut SlabMeta, i: usize) {
    // SAFETY: `m` comes from `locate` (or the quarantine, which holds
    // objects of live slabs): a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    let mr = unsafe { &mut *m };
    let c = &mut caches()[mr.cache];
    if NHELD.load(Relaxed) != 0 {
        let ptr = mr.base + c.slab_offset + i * c.slot_size;
        if let Some(e) = held().iter_mut().find(|e| e.0 == ptr && !e.1) {
            e.1 = true; // released by [`unhold`]
            return;
        }
    }
    mr.allocated[i / 64] &= !(1 << (i % 64));
    mr.free_stack[mr.nfree as usize] = i as u16;
    mr.nfree += 1;
    mr.inuse -= 1;
    c.inuse -= 1;
    if !mr.on_partial {
        list_del(&mut c.full, m);
        list_push(&mut c.partial, m);
        mr.on_partial = true;
    }
    if mr.inuse == 0 {
        release_slab(m);
    }
}

/// Empty the runtime's quarantine completely (tests, memory accounting).
pub fn drain_all() {
    let _g = LOCK.lock();
    while let Some(ptr) = kasan_glue::quarantine_drain() {
        release_quarantined(ptr);
    }
}

/// Objects the runtime lets go from quarantine are really freed here.
pub fn drain_quarantine(max: usize) {
    let _g = LOCK.lock();
    for _ in 0..max {
        let Some(ptr) = kasan_glue::quarantine_pop() else { break };
        release_quarantined(ptr);
    }
}

fn release_quarantined(ptr: usize) {
    {
        if let Some((m, i, 0)) = locate(ptr) {
            release_object(m, i);
        } else if let Some((h, base)) = head_of(ptr) {
            if h.flags & PG_LARGE != 0 {
                let order = h.order as usize;
                h.flags &= !PG_LARGE;
                free_pages(base, order);
            }
        }
    }
}

fn free_object(ptr: usize, expect_cache: Option<usize>, ip: usize, what: &'static str) {
    let Some((m, i, rem)) = locate(ptr) else {
        kasan_glue::bad_free(ptr, ip, what);
        return;
    };
    // SAFETY: `m` comes from `locate`: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    let mr = unsafe { &*m };
    let c = &caches()[mr.cache];
    if let Some(ec) = expect_cache {
        if ec != mr.cache {
            kasan_glue::bad_free(ptr, ip, "kmem_cache_free: object belongs to another cache");
            return;
        }
    }
    let action = kasan_glue::object_free(c.id, direct(ptr), ip);
    if action == FreeAction::Bug {
        return;
    }
    if rem != 0 || i >= mr.nobj as usize {
        kasan_glue::bad_free(ptr, ip, "invalid free: not the start of an object");
        return;
    }
    if mr.allocated[i / 64] & (1 << (i % 64)) == 0 {
        kasan_glue::bad_free(ptr, ip, "double free");
        return;
    }
    match action {
        FreeAction::Now => release_object(m, i),
        _ => drain_quarantine(usize::MAX),
    }
}

fn kmalloc_index(size: usize) -> Option<usize> {
    KMALLOC_SIZES.iter().position(|&s| s >= size)
}

fn order_for(size: usize) -> usize {
    let pages = size.div_ceil(PAGE_SIZE);
    pages.next_power_of_two().trailing_zeros() as usize
}

/// kmalloc: slab caches up to 8192 bytes, page-backed above.
#[inline(never)]
pub fn kmalloc(size: usize) -> *mut u8 {
    let _g = LOCK.lock();
    if size == 0 {
        return 16 as *mut u8; // ZERO_SIZE_PTR
    }
    match kmalloc_index(size) {
        Some(ci) => cache_alloc(ci, size),
        None => {
            let order = order_for(size);
            let Some(p) = alloc_pages_flags(order, PG_LARGE) else { return core::ptr::null_mut() };
            if let Some(pg) = buddy::page_of(p) {
                pg.private = size;
            }
            kasan_glue::kmalloc_large(p, order as u32, size);
            p as *mut u8
        }
    }
}

pub fn kzalloc(size: usize) -> *mut u8 {
    let _g = LOCK.lock();
    let p = kmalloc(size);
    if !p.is_null() && size > 0 {
        // SAFETY: kmalloc just returned `p` for `size` bytes.
        unsafe { core::ptr::write_bytes(p, 0, size) };
    }
    p
}

/// kfree: finds the slab or large allocation from the page of `ptr` (any alias).
#[inline(never)]
pub fn kfree(ptr: *const u8) {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    kfree_ip(ptr, ip)
}

pub fn kfree_ip(ptr: *const u8, ip: usize) {
    let _g = LOCK.lock();
    let p = ptr as usize;
    if p <= 16 {
        return;
    }
    let Some(pg) = buddy::page_of(p) else {
        kasan_glue::bad_free(p, ip, "kfree: not a kernel heap address");
        return;
    };
    if pg.flags & PG_SLAB != 0 {
        return free_object(p, None, ip, "kfree");
    }
    if let Some((h, base)) = head_of(p) {
        if h.flags & PG_LARGE != 0 {
            let order = h.order as usize;
            if !kasan_glue::kfree_large(direct(p), order as u32, ip) {
                return;
            }
            let base_pa = guest_boot::paging::virt_to_phys(base as u64);
            if guest_boot::paging::virt_to_phys(p as u64) != base_pa {
                kasan_glue::bad_free(p, ip, "kfree: invalid free inside a large kmalloc");
                return;
            }
            h.flags &= !PG_LARGE;
            h.private = 0;
            free_pages(base, order);
            return;
        }
    }
    kasan_glue::bad_free(p, ip, "kfree: not a kmalloc object (double free of a large kmalloc?)");
}

/// kfree_sensitive (kzfree): zero a live object up to its usable size,
/// then free it. A freed object is not touched; the free reports it.
#[inline(never)]
pub fn kfree_sensitive(ptr: *const u8) {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    let p = ptr as usize;
    if p <= 16 {
        return;
    }
    if let Some((m, i, 0)) = locate(p) {
        // SAFETY: `locate` returns the live SlabMeta of a slab page.
        let mr = unsafe { &*m };
        let c = &caches()[mr.cache];
        let slab_says = i < mr.nobj as usize && mr.allocated[i / 64] & (1 << (i % 64)) != 0;
        if kasan_glue::object_live(c.id, direct(p), slab_says) {
            let n = kasan_glue::ksize(c.id, direct(p), c.object_size, ip);
            // SAFETY: a live object of at least `n` usable bytes (ksize).
            unsafe { core::ptr::write_bytes(ptr as *mut u8, 0, n) };
        }
    } else if let Some((size, _, None)) = object_info(p) {
        // SAFETY: a live page-backed kmalloc of `size` bytes.
        unsafe { core::ptr::write_bytes(ptr as *mut u8, 0, size) };
    }
    kfree_ip(ptr, ip)
}

/// A live allocation's requested size, usable capacity, and (for a slab
/// object) its slab's runtime cache id and first slot.
type ObjectInfo = (usize, usize, Option<(usize, usize)>);

/// Requested size and usable capacity of a live allocation.
fn object_info(p: usize) -> Option<ObjectInfo> {
    if let Some((m, i, 0)) = locate(p) {
        // SAFETY: `m` comes from `locate`: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
        let mr = unsafe { &*m };
        if mr.allocated[i / 64] & (1 << (i % 64)) == 0 {
            return None;
        }
        return Some((mr.sizes[i] as usize, caches()[mr.cache].object_size, Some((mr.cache, mr.base))));
    }
    let (h, base) = head_of(p)?;
    if h.flags & PG_LARGE != 0 && guest_boot::paging::virt_to_phys(base as u64) == guest_boot::paging::virt_to_phys(p as u64) {
        return Some((h.private, PAGE_SIZE << h.order, None));
    }
    None
}

/// krealloc: grows/shrinks in place when the object's cache allows, else
/// allocates, copies and frees. A freed or invalid pointer is reported and
/// null returned.
#[inline(never)]
pub fn krealloc(ptr: *mut u8, new_size: usize) -> *mut u8 {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    let p = ptr as usize;
    if p <= 16 {
        return kmalloc(new_size);
    }
    if new_size == 0 {
        kfree_ip(ptr, ip);
        return 16 as *mut u8;
    }
    // As Linux's krealloc: the old object must be accessible (a freed one
    // is reported by the runtime and null returned).
    if !kasan_glue::check_byte(p, ip) {
        return core::ptr::null_mut();
    }
    let Some((old, cap, slab)) = object_info(p) else {
        kasan_glue::bad_free(p, ip, "krealloc: not a live allocation");
        return core::ptr::null_mut();
    };
    if let Some((ci, _)) = slab {
        if new_size <= cap {
            if let Some((m, i, 0)) = locate(p) {
                // SAFETY: `m` comes from `locate`: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab); i < nobj.
                unsafe { (*m).sizes[i] = new_size as u16 };
            }
            kasan_glue::object_resize(caches()[ci].id, direct(p), new_size);
            return ptr;
        }
    } else if new_size <= cap && new_size > KMALLOC_MAX_CACHE_SIZE {
        // Page-backed and still fits: resize in place.
        if let Some((h, base)) = head_of(p) {
            h.private = new_size;
            kasan_glue::kmalloc_large(base, h.order as u32, new_size);
            return ptr;
        }
    }
    let n = kmalloc(new_size);
    if n.is_null() {
        return n;
    }
    // SAFETY: the old object is live with `old` bytes (object_info), the new
    // one was just allocated with `new_size`: distinct, both big enough.
    unsafe { core::ptr::copy_nonoverlapping(ptr as *const u8, n, old.min(new_size)) };
    kfree_ip(ptr, ip);
    n
}

/// ksize: usable size of a live allocation (the runtime unpoisons up to it).
#[inline(never)]
pub fn ksize(ptr: *const u8) -> usize {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    let p = ptr as usize;
    if let Some((m, _, _)) = locate(p) {
        // SAFETY: `m` comes from `locate`: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
        let mr = unsafe { &*m };
        let c = &caches()[mr.cache];
        return kasan_glue::ksize(c.id, direct(p), c.object_size, ip);
    }
    match object_info(p) {
        Some((_, cap, _)) => cap,
        None => 0,
    }
}

/// Create a named cache. `align` 0 means 8.
pub fn kmem_cache_create(name: &'static str, size: usize, align: usize) -> Option<CacheRef> {
    let _g = LOCK.lock();
    kmem_cache_create_flags(name, size, align, 0)
}

/// Create a named cache with `flags` ([`SLAB_TYPESAFE_BY_RCU`],
/// [`SLAB_ACCOUNT`]).
pub fn kmem_cache_create_flags(name: &'static str, size: usize, align: usize, flags: u32) -> Option<CacheRef> {
    let _g = LOCK.lock();
    if size == 0 || size > KMALLOC_MAX_CACHE_SIZE * 4 {
        return None;
    }
    let idx = (KMALLOC_SIZES.len()..MAX_CACHES).find(|&i| !caches()[i].live)?;
    setup(idx, name, size, align);
    caches()[idx].flags = flags;
    Some(CacheRef { idx: idx as u32, gen: caches()[idx].gen })
}

/// Bytes of accounted caches' objects charged to the (one) memory cgroup.
static MEMCG_CHARGED: AtomicUsize = AtomicUsize::new(0);

/// What the memory cgroup is charged for now: the object sizes of the
/// live objects of [`SLAB_ACCOUNT`] caches.
pub fn memcg_charged() -> usize {
    let _g = LOCK.lock();
    MEMCG_CHARGED.load(Relaxed)
}

/// kmalloc_track_caller: kmalloc on behalf of the caller of the function
/// that calls it (Linux records that caller for slab debugging; the
/// runtime's allocation stack is the whole call chain either way).
#[inline(never)]
pub fn kmalloc_track_caller(size: usize) -> *mut u8 {
    let _g = LOCK.lock();
    kmalloc(size)
}

/// kmalloc_node_track_caller: as [`kmalloc_track_caller`] on node `node`
/// (one node here).
#[inline(never)]
pub fn kmalloc_node_track_caller(size: usize, node: usize) -> *mut u8 {
    let _g = LOCK.lock();
    let _ = node;
    kmalloc(size)
}

/// The slab object `ptr` points into: (runtime cache id, first slot of
/// its slab, the object's start, its cache's object size). For mempools.
pub fn slab_object_of(ptr: usize) -> Option<(CacheId, usize, usize, usize)> {
    let _g = LOCK.lock();
    let (m, i, _) = locate(ptr)?;
    // SAFETY: `m` comes from `locate`: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    let mr = unsafe { &*m };
    let c = &caches()[mr.cache];
    let first = mr.base + c.slab_offset;
    Some((c.id, first, first + i.min(mr.nobj as usize) * c.slot_size, c.object_size))
}

/// The page-backed kmalloc `ptr` points into: (its first page, order,
/// requested size). For mempools.
pub fn large_of(ptr: usize) -> Option<(usize, usize, usize)> {
    let _g = LOCK.lock();
    let (h, base) = head_of(ptr)?;
    (h.flags & PG_LARGE != 0).then_some((base, h.order as usize, h.private))
}

fn cache_of(r: CacheRef) -> Option<usize> {
    let c = caches().get(r.idx as usize)?;
    (c.live && c.gen == r.gen).then_some(r.idx as usize)
}

#[inline(never)]
pub fn kmem_cache_alloc(r: CacheRef) -> *mut u8 {
    let _g = LOCK.lock();
    match cache_of(r) {
        Some(ci) => {
            let c = &caches()[ci];
            let p = cache_alloc(ci, c.object_size);
            if !p.is_null() && c.flags & SLAB_ACCOUNT != 0 {
                MEMCG_CHARGED.fetch_add(c.object_size, Relaxed);
            }
            p
        }
        None => {
            println!("kmem_cache_alloc: cache handle {:?} is not live", r);
            core::ptr::null_mut()
        }
    }
}

#[inline(never)]
pub fn kmem_cache_free(r: CacheRef, ptr: *mut u8) {
    let _g = LOCK.lock();
    let ip = crate::mm::caller_ip();
    match cache_of(r) {
        Some(ci) if caches()[ci].flags & SLAB_TYPESAFE_BY_RCU != 0 => rcu_free(ci, ptr as usize, ip),
        Some(ci) => {
            if caches()[ci].flags & SLAB_ACCOUNT != 0 && object_info(ptr as usize).is_some() {
                MEMCG_CHARGED.fetch_sub(caches()[ci].object_size, Relaxed);
            }
            free_object(ptr as usize, Some(ci), ip, "kmem_cache_free")
        }
        None => kasan_glue::bad_free(ptr as usize, ip, "kmem_cache_free: cache is not live"),
    }
}

/// Frees of [`SLAB_TYPESAFE_BY_RCU`] objects waiting for a grace period:
/// (cache index, object, free ip); 0 = empty slot.
const RCU_FREES: usize = 64;
static mut RCU_PENDING: [(usize, usize, usize); RCU_FREES] = [(0, 0, 0); RCU_FREES];

fn rcu_pending() -> &'static mut [(usize, usize, usize); RCU_FREES] {
    // SAFETY: callers hold LOCK, no slab use from interrupt context (as
    // `caches`): one user at a time.
    unsafe { &mut *core::ptr::addr_of_mut!(RCU_PENDING) }
}

/// kmem_cache_free of an object of a [`SLAB_TYPESAFE_BY_RCU`] cache: it
/// stays allocated (readable) until the next grace period, when
/// [`rcu_free_cb`] frees it for real (the runtime poisons it then).
fn rcu_free(ci: usize, ptr: usize, ip: usize) {
    let Some(slot) = rcu_pending().iter().position(|e| e.1 == 0) else {
        // Full: a grace period (outside a read-side section only) runs the
        // queued frees. Not rcu_barrier: it would wait, with this lock held,
        // for callbacks another CPU runs, which take it.
        if !crate::task::rcu_reading() {
            crate::task::rcu_grace_point();
            if rcu_pending().iter().any(|e| e.1 == 0) {
                return rcu_free(ci, ptr, ip);
            }
        }
        return free_object(ptr, Some(ci), ip, "kmem_cache_free");
    };
    rcu_pending()[slot] = (ci, ptr, ip);
    crate::task::call_rcu(rcu_free_cb, slot);
}

fn rcu_free_cb(slot: usize) {
    let _g = LOCK.lock();
    let (ci, ptr, ip) = rcu_pending()[slot];
    rcu_pending()[slot] = (0, 0, 0);
    if caches()[ci].flags & SLAB_ACCOUNT != 0 && object_info(ptr).is_some() {
        MEMCG_CHARGED.fetch_sub(caches()[ci].object_size, Relaxed);
    }
    free_object(ptr, Some(ci), ip, "kmem_cache_free");
}

/// Allocate `out.len()` objects; returns how many (all or, on failure, 0).
pub fn kmem_cache_alloc_bulk(r: CacheRef, out: &mut [*mut u8]) -> usize {
    let _g = LOCK.lock();
    for i in 0..out.len() {
        let p = kmem_cache_alloc(r);
        if p.is_null() {
            kmem_cache_free_bulk(r, &mut out[..i]);
            return 0;
        }
        out[i] = p;
    }
    out.len()
}

pub fn kmem_cache_free_bulk(r: CacheRef, objs: &mut [*mut u8]) {
    let _g = LOCK.lock();
    for p in objs.iter_mut() {
        kmem_cache_free(r, *p);
        *p = core::ptr::null_mut();
    }
}

/// Destroy a named cache. Destroying it twice (stale handle) or with live
/// objects is an error, printed and returned; nothing is corrupted.
pub fn kmem_cache_destroy(r: CacheRef) -> Result<(), &'static str> {
    let _g = LOCK.lock();
    let idx = r.idx as usize;
    if idx < KMALLOC_SIZES.len() {
        println!("kmem_cache_destroy: refusing to destroy a kmalloc cache");
        return Err("kmalloc cache");
    }
    let Some(ci) = cache_of(r) else {
        let name = caches().get(idx).map(|c| c.name).unwrap_or("?");
        println!("kmem_cache_destroy: cache {} already destroyed (double destroy)", name);
        return Err("already destroyed");
    };
    // Objects still in quarantine come back first.
    kasan_glue::quarantine_release_cache(caches()[ci].id);
    drain_quarantine(usize::MAX);
    let c = &caches()[ci];
    if c.inuse != 0 {
        println!("kmem_cache_destroy: cache {} still has {} objects in use", c.name, c.inuse);
        return Err("objects remain");
    }
    while !caches()[ci].partial.is_null() {
        release_slab(caches()[ci].partial);
    }
    let c = &mut caches()[ci];
    kasan_glue::cache_destroy(c.id);
    c.live = false;
    Ok(())
}

/// The slab page holding `ptr`: (first page, order).
pub fn slab_page_of(ptr: usize) -> Option<(usize, usize)> {
    let _g = LOCK.lock();
    let (m, _, _) = locate(ptr)?;
    // SAFETY: `locate` returns the live SlabMeta of a slab page.
    let mr = unsafe { &*m };
    Some((mr.base, mr.order as usize))
}

/// Name and object size of the cache owning `ptr` (for diagnostics).
pub fn cache_name_of(ptr: usize) -> Option<(&'static str, usize)> {
    let _g = LOCK.lock();
    let (m, _, _) = locate(ptr)?;
    // SAFETY: `m` comes from `locate`: a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
    let c = &caches()[unsafe { (*m).cache }];
    Some((c.name, c.object_size))
}

/// Consistency check of every live cache; returns the number of violations.
pub fn check_invariants() -> usize {
    let _g = LOCK.lock();
    let mut bad = 0;
    for c in caches().iter().filter(|c| c.live) {
        let mut inuse = 0;
        let mut slabs = 0;
        for (head, partial) in [(c.partial, true), (c.full, false)] {
            let mut m = head;
            while !m.is_null() {
                // SAFETY: every descriptor on a cache's lists is a live slab descriptor (new_slab allocates it and records it in its slab pages' `private`; it stays until release_slab frees the slab).
                let mr = unsafe { &*m };
                let bits: u32 = mr.allocated.iter().map(|w| w.count_ones()).sum();
                if bits != mr.inuse as u32 || mr.inuse + mr.nfree != mr.nobj || mr.on_partial != partial
                    || (partial && mr.nfree == 0) || (!partial && mr.nfree != 0)
                {
                    println!("slab: cache {} slab {:#x} inconsistent", c.name, mr.base);
                    bad += 1;
                }
                inuse += mr.inuse as usize;
                slabs += 1;
                m = mr.next;
            }
        }
        if inuse != c.inuse || slabs != c.nslabs {
            println!("slab: cache {} counts {} / {} vs {} / {}", c.name, inuse, slabs, c.inuse, c.nslabs);
            bad += 1;
        }
    }
    bad
}

/// Statistics for the workload: (pages held by slabs, pages of slab
/// metadata, objects in use), over every live cache.
pub fn usage() -> (usize, usize, usize) {
    let _g = LOCK.lock();
    let (mut pages, mut objs) = (0, 0);
    for c in caches().iter().filter(|c| c.live) {
        pages += c.nslabs << c.order;
        objs += c.inuse;
    }
    let meta = meta_pool().chunks << CHUNK_ORDER;
    (pages, meta, objs)
}
