//! The KMSAN bug suite (suite `kmsan`, KMSAN kernel): one instrumented
//! function per row of the case table (`kmsan_cases.rs`, shared with the
//! host test), named as the row, so that a report's title
//! (`BUG: KMSAN: <type> in <case>+0x..`) names the case. Values are read
//! with volatile loads (the compiler cannot fold them) and "used" the way
//! KMSAN checks: a branch on the value, passing it to a function (eager
//! parameter checks), or `kmsan_check_memory` (the guest's copy-to-user
//! stand-in).
//!
//! Before each case the guest prints
//!     kmsan-case: <name> expect <n>
//! and after it
//!     kmsan-case-end: <name> reports=<n>
//! and at the end
//!     kmsan-suite: done mode=<m> cases=<n> failed_checks=<k>
//! Run with `kmsan_multi_shot` so every report is printed. A failed check
//! inside a case prints `kmsan-check-failed: <case>: <what>`.
#![allow(clippy::missing_safety_doc)]

use core::hint::black_box;
use core::mem::MaybeUninit;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use crate::kasan_glue::{self, Mode};
use crate::kmsan_cases::{Case, KMSAN_CASES};
use crate::mm::{self, buddy, slab, PAGE_SIZE};
use crate::println;

use hybrid_shadow::kmsan::abi::{kmsan_check_memory, kmsan_unpoison_memory};

static FAILED: AtomicUsize = AtomicUsize::new(0);
static USES: AtomicUsize = AtomicUsize::new(0);
/// The case running now (set by `run_case`).
static CURRENT: spin::Mutex<&str> = spin::Mutex::new("");

fn fail(what: &str) {
    let name = *CURRENT.lock();
    println!("kmsan-check-failed: {}: {}", name, what);
    FAILED.fetch_add(1, SeqCst);
}

/// A use KMSAN checks: a branch on the value, in the calling function.
macro_rules! use_value {
    ($v:expr) => {
        if $v != 0 {
            USES.fetch_add(1, SeqCst);
        }
    };
}

fn check(addr: *const u8, len: usize) {
    kmsan_check_memory(addr as usize, len);
}

fn reports() -> usize {
    kasan_glue::stats().map_or(0, |s| s.reports)
}

#[inline(never)]
pub fn test_uninit_kmalloc() {
    let p = mm::kmalloc(4) as *mut i32;
    // SAFETY: `p` is a live 4-byte kmalloc object.
    let v = unsafe { read_volatile(p) };
    use_value!(v);
    mm::kfree(p as *const u8);
}

#[inline(never)]
pub fn test_init_kmalloc() {
    let p = mm::kmalloc(4) as *mut i32;
    // SAFETY: `p` is a live 4-byte kmalloc object.
    unsafe { write_volatile(p, 7) };
    // SAFETY: `p` is a live 4-byte kmalloc object.
    let v = unsafe { read_volatile(p) };
    use_value!(v);
    mm::kfree(p as *const u8);
}

#[inline(never)]
pub fn test_init_kzalloc() {
    let p = mm::kzalloc(4) as *mut i32;
    // SAFETY: `p` is a live 4-byte kzalloc object.
    let v = unsafe { read_volatile(p) };
    use_value!(v);
    mm::kfree(p as *const u8);
}

#[inline(never)]
pub fn test_uninit_stack_var() {
    let cond = MaybeUninit::<i32>::uninit();
    // SAFETY: a read of the local's own storage (uninitialized on purpose: KMSAN must see it, the value is only branched on).
    let v = unsafe { read_volatile(cond.as_ptr()) };
    use_value!(v);
}

#[inline(never)]
pub fn test_init_stack_var() {
    let mut cond = MaybeUninit::<i32>::uninit();
    // SAFETY: the local's own storage.
    unsafe { write_volatile(cond.as_mut_ptr(), black_box(1)) };
    // SAFETY: the local's own storage.
    let v = unsafe { read_volatile(cond.as_ptr()) };
    use_value!(v);
}

#[inline(never)]
fn params_inner(a: i32) {
    use_value!(a);
}

#[inline(never)]
fn params_outer(a: i32) {
    params_inner(a);
}

#[inline(never)]
pub fn test_params() {
    let value = MaybeUninit::<i32>::uninit();
    // SAFETY: a read of the local's own storage (uninitialized on purpose).
    let v = unsafe { read_volatile(value.as_ptr()) };
    params_outer(v);
}

#[inline(never)]
fn sum3(a: i32, b: i32, c: i32) -> i32 {
    a.wrapping_add(b).wrapping_add(c)
}

#[inline(never)]
pub fn test_uninit_multiple_params() {
    let c = MaybeUninit::<i32>::uninit();
    let (a, b) = (black_box(1), black_box(2));
    // SAFETY: a read of the local's own storage (uninitialized on purpose).
    let cv = unsafe { read_volatile(c.as_ptr()) };
    let s = sum3(a, b, cv);
    use_value!(s);
}

/// Overwrite `a[start..stop]` with an uninitialized local.
#[inline(never)]
fn do_uninit_local_array(a: *mut u8, start: usize, stop: usize) {
    let uninit = MaybeUninit::<u8>::uninit();
    for i in start..stop {
        // SAFETY: `a` points to at least `stop` bytes (the caller's array); the local is read on purpose uninitialized.
        unsafe { write_volatile(a.add(i), read_volatile(uninit.as_ptr())) };
    }
}

#[inline(never)]
pub fn test_uninit_kmsan_check_memory() {
    let mut array = [0u8; 8];
    do_uninit_local_array(array.as_mut_ptr(), 5, 8);
    check(array.as_ptr(), 8);
}

#[inline(never)]
pub fn test_init_kmsan_vmap_vunmap() {
    let (Some(p0), Some(p1)) = (buddy::alloc_pages(0), buddy::alloc_pages(0)) else { return fail("no pages") };
    let v = mm::vmalloc::vmap(&[p0, p1]);
    if v.is_null() {
        return fail("vmap failed");
    }
    // SAFETY: `v` maps the two pages just allocated.
    unsafe { core::ptr::write_bytes(v, 0, 2 * PAGE_SIZE) };
    check(p0 as *const u8, PAGE_SIZE);
    check(p1 as *const u8, PAGE_SIZE);
    mm::vmalloc::vunmap(v);
    buddy::free_pages(p0, 0);
    buddy::free_pages(p1, 0);
}

#[inline(never)]
pub fn test_init_vmalloc() {
    let n = 8;
    let v = mm::vmalloc(n * PAGE_SIZE);
    if v.is_null() {
        return fail("vmalloc failed");
    }
    // SAFETY: `v` is a live vmalloc area of `n` pages.
    unsafe { core::ptr::write_bytes(v, 0xfe, n * PAGE_SIZE) };
    for i in 0..n {
        // SAFETY: `v` is a live vmalloc area of `n` pages.
        check(unsafe { v.add(i * PAGE_SIZE) }, PAGE_SIZE);
    }
    mm::vfree(v);
}

#[inline(never)]
pub fn test_uninit_page() {
    let Some(p) = buddy::alloc_pages(0) else { return fail("no page") };
    // SAFETY: `p` is a page just allocated.
    let v = unsafe { read_volatile(p as *const i32) };
    use_value!(v);
    buddy::free_pages(p, 0);
}

#[inline(never)]
pub fn test_uaf() {
    let p = mm::kmalloc(80) as *mut i32;
    // SAFETY: `p` was an 80-byte object: freed memory stays mapped, and reading it is the bug this case plants.
    unsafe { write_volatile(p.add(10), 3) };
    mm::kfree(p as *const u8);
    // SAFETY: `p` was an 80-byte object: freed memory stays mapped, and reading it is the bug this case plants.
    let v = unsafe { read_volatile(p.add(10)) };
    use_value!(v);
}

#[inline(never)]
pub fn test_uaf_pages() {
    let Some(p) = buddy::alloc_pages(0) else { return fail("no page") };
    // SAFETY: the page stays mapped in the direct map after the free; reading it is the bug this case plants.
    unsafe { core::ptr::write_bytes(p as *mut u8, 0, PAGE_SIZE) };
    buddy::free_pages(p, 0);
    // SAFETY: the page stays mapped in the direct map after the free; reading it is the bug this case plants.
    let v = unsafe { read_volatile((p + 8) as *const u8) };
    use_value!(v);
}

#[inline(never)]
pub fn test_uaf_high_order_pages() {
    let Some(p) = buddy::alloc_pages(1) else { return fail("no pages") };
    // SAFETY: the block stays mapped in the direct map after the free; reading it is the bug this case plants.
    unsafe { core::ptr::write_bytes(p as *mut u8, 0, 2 * PAGE_SIZE) };
    buddy::free_pages(p, 1);
    // SAFETY: the block stays mapped in the direct map after the free; reading it is the bug this case plants.
    let v = unsafe { read_volatile((p + PAGE_SIZE + 16) as *const u8) };
    use_value!(v);
}

/// The guest's per-CPU area (one CPU).
static mut PERCPU_VAR: i32 = 0;

#[inline(never)]
pub fn test_percpu_propagate() {
    let uninit = MaybeUninit::<i32>::uninit();
    // SAFETY: one CPU, nothing else uses the variable; the local is read on purpose uninitialized.
    unsafe {
        write_volatile(core::ptr::addr_of_mut!(PERCPU_VAR), read_volatile(uninit.as_ptr()));
        let v = read_volatile(core::ptr::addr_of!(PERCPU_VAR));
        use_value!(v);
        // Leave the variable initialized for later readers.
        write_volatile(core::ptr::addr_of_mut!(PERCPU_VAR), 0);
    }
}

/// The guest's console formatter for an integer (instrumented).
#[inline(never)]
fn printk_int(v: i32) {
    println!("kmsan-printk: {}", v);
}

#[inline(never)]
pub fn test_printk() {
    let uninit = MaybeUninit::<i32>::uninit();
    // SAFETY: a read of the local's own storage (uninitialized on purpose).
    let v = unsafe { read_volatile(uninit.as_ptr()) };
    printk_int(v);
}

/// memcpy that the compiler can neither see through (it would drop a copy
/// from a never-written local) nor turn into a load/store pair.
#[inline(never)]
fn memcpy_noinline(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the callers pass ranges valid for `n` bytes that do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(black_box(src), black_box(dst), black_box(n)) };
}

#[inline(never)]
pub fn test_init_memcpy() {
    let src: u64 = black_box(0x1234_5678);
    let mut dst = MaybeUninit::<u64>::uninit();
    memcpy_noinline(dst.as_mut_ptr() as *mut u8, &src as *const u64 as *const u8, 8);
    check(dst.as_ptr() as *const u8, 8);
}

#[inline(never)]
pub fn test_memcpy_aligned_to_aligned() {
    let uninit_src = MaybeUninit::<u32>::uninit();
    let mut dst: u32 = black_box(0);
    memcpy_noinline(&mut dst as *mut u32 as *mut u8, uninit_src.as_ptr() as *const u8, 4);
    check(&dst as *const u32 as *const u8, 4);
}

#[inline(never)]
pub fn test_memcpy_aligned_to_unaligned() {
    let uninit_src = MaybeUninit::<u32>::uninit();
    let mut dst: [u8; 8] = black_box([0; 8]);
    // SAFETY: offsets inside the 8-byte array.
    memcpy_noinline(unsafe { dst.as_mut_ptr().add(1) }, uninit_src.as_ptr() as *const u8, 4);
    check(dst.as_ptr(), 4);
    // SAFETY: offsets inside the 8-byte array.
    check(unsafe { dst.as_ptr().add(4) }, 4);
}

#[inline(never)]
pub fn test_memcpy_initialized_gap() {
    let mut uninit_src = MaybeUninit::<[u8; 12]>::uninit();
    let s = uninit_src.as_mut_ptr() as *mut u8;
    for i in [0usize, 1, 4, 5, 6, 7, 10, 11] {
        // SAFETY: offsets inside the 12-byte source and the 8-byte destination.
        unsafe { write_volatile(s.add(i), i as u8) };
    }
    let mut dst: [u8; 8] = black_box([0; 8]);
    // SAFETY: offsets inside the 12-byte source and the 8-byte destination.
    memcpy_noinline(dst.as_mut_ptr(), unsafe { s.add(2) }, 8);
    check(dst.as_ptr(), 4);
    // SAFETY: offsets inside the 12-byte source and the 8-byte destination.
    check(unsafe { dst.as_ptr().add(2) }, 4);
    // SAFETY: offsets inside the 12-byte source and the 8-byte destination.
    check(unsafe { dst.as_ptr().add(4) }, 4);
}

macro_rules! memset_case {
    ($name:ident, $t:ty, $v:expr) => {
        #[inline(never)]
        pub fn $name() {
            let mut x = MaybeUninit::<$t>::uninit();
            let p = x.as_mut_ptr();
            for i in 0..black_box(1) {
                // SAFETY: offsets inside the 12-byte source and the 8-byte destination.
                unsafe { write_volatile(p.add(i), $v) };
            }
            check(p as *const u8, core::mem::size_of::<$t>());
        }
    };
}
memset_case!(test_memset16, u16, 0x1234);
memset_case!(test_memset32, u32, 0x1234_5678);
memset_case!(test_memset64, u64, 0x1234_5678_9abc_def0);

#[inline(never)]
pub fn test_memset_on_guarded_buffer() {
    let buf = mm::vmalloc(PAGE_SIZE);
    if buf.is_null() {
        return fail("vmalloc failed");
    }
    for n in 0..=128usize {
        // SAFETY: `buf` is a live one-page vmalloc area and `n <= 128`.
        unsafe {
            core::ptr::write_bytes(buf, 0, black_box(n));
            core::ptr::write_bytes(buf.add(PAGE_SIZE - n), 0, black_box(n));
        }
    }
    mm::vfree(buf);
}

/// Depth of the chain the long-origin-chain case builds: twice the
/// runtime's maximum, so the chain must be cut.
const CHAIN: usize = 2 * hybrid_shadow::kmsan::origin::MAX_DEPTH as usize;

/// `a[i + 1] = a[i]`, recursively up to `n`: each store of the
/// uninitialized value adds a link to its origin.
#[inline(never)]
fn chain_store(a: *mut u32, i: usize, n: usize) {
    if i == n {
        return;
    }
    // SAFETY: `a` holds `n + 1` words.
    unsafe { write_volatile(a.add(i + 1), read_volatile(a.add(i))) };
    chain_store(a, i + 1, n);
}

#[inline(never)]
pub fn test_long_origin_chain() {
    let a = mm::kmalloc(4 * (CHAIN + 1)) as *mut u32;
    chain_store(a, 0, CHAIN);
    // SAFETY: `a` holds CHAIN + 1 words.
    check(unsafe { a.add(CHAIN) } as *const u8, 4);
    mm::kfree(a as *const u8);
}

#[inline(never)]
pub fn test_stackdepot_roundtrip() {
    if !kasan_glue::kmsan_on() {
        return; // `off`: no depot
    }
    let h = kasan_glue::stackdepot_save();
    if h == 0 {
        return fail("the depot stored nothing");
    }
    let mut frames = [0usize; 16];
    let n = kasan_glue::stackdepot_fetch(h, &mut frames);
    if n == 0 {
        return fail("the depot returned no frame");
    }
    check(frames.as_ptr() as *const u8, n * 8);
    let me = test_stackdepot_roundtrip as fn() as usize;
    if !frames[..n].iter().any(|&pc| pc > me && pc < me + 4096) {
        fail("the fetched stack does not hold the saving function");
    }
}

#[inline(never)]
pub fn test_unpoison_memory() {
    let mut a = MaybeUninit::<[u8; 4]>::uninit();
    let b = MaybeUninit::<[u8; 4]>::uninit();
    let (pa, pb) = (a.as_mut_ptr() as *mut u8, b.as_ptr() as *const u8);
    // SAFETY: offsets inside the 4-byte locals.
    unsafe { write_volatile(pa, 0) };
    kmsan_unpoison_memory(pb as usize, 1);
    // SAFETY: offsets inside the 4-byte locals.
    check(unsafe { pa.add(1) }, 3);
    // SAFETY: offsets inside the 4-byte locals.
    check(unsafe { pb.add(1) }, 3);
}

#[inline(never)]
pub fn test_copy_from_kernel_nofault() {
    let src = MaybeUninit::<u32>::uninit();
    let mut dst: u32 = black_box(0);
    // SAFETY: both are 4-byte locals of this frame.
    if !unsafe { mm::copy_from_kernel_nofault(&mut dst as *mut u32 as *mut u8, src.as_ptr() as *const u8, 4) } {
        fail("copy_from_kernel_nofault refused a mapped source");
    }
}

fn backing_is(addr: usize, want: hybrid_shadow::Backing, what: &str) {
    if kasan_glue::mode() == Mode::Hybrid && kasan_glue::kmsan_page_backing(addr) != Some(want) {
        fail(what);
    }
}

#[inline(never)]
pub fn test_uninit_slab_to_pagecache() {
    use hybrid_shadow::Backing;
    let obj = mm::kmalloc(64);
    // SAFETY: `obj` is a live 64-byte object, `page` a page just allocated.
    unsafe { core::ptr::write_bytes(obj, 0, 32) };
    let Some(page) = buddy::alloc_pages(0) else { return fail("no page") };
    // SAFETY: `obj` is a live 64-byte object, `page` a page just allocated.
    unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE_SIZE) };
    backing_is(page, Backing::INIT, "a zeroed page is backed by the shared zero page");
    memcpy_noinline((page + 128) as *mut u8, obj, 64);
    backing_is(page, Backing::Private, "uninit bytes copied in make the page private");
    mm::kfree(obj);
    check((page + 128) as *const u8, 64);
    buddy::free_pages(page, 0);
}

#[inline(never)]
pub fn test_uninit_page_partial_write() {
    use hybrid_shadow::Backing;
    let Some(page) = buddy::alloc_pages(0) else { return fail("no page") };
    backing_is(page, Backing::UNINIT, "a fresh page is backed by the shared 0xFF page");
    for i in 100..200 {
        // SAFETY: `page` is a page just allocated.
        unsafe { write_volatile((page + i) as *mut u8, i as u8) };
    }
    check((page + 100) as *const u8, 100);
    backing_is(page, Backing::Private, "a partly written page is private");
    check((page + 96) as *const u8, 8);
    buddy::free_pages(page, 0);
}

#[inline(never)]
pub fn test_init_page_dma() {
    use hybrid_shadow::Backing;
    let Some(page) = buddy::alloc_pages(0) else { return fail("no page") };
    // SAFETY: `page` is a page just allocated.
    unsafe { write_volatile((page + 8) as *mut u64, 1) };
    // The device fills the page and the driver reports the DMA done.
    kmsan_unpoison_memory(page, PAGE_SIZE);
    backing_is(page, Backing::INIT, "a page initialized by DMA is shared again");
    check(page as *const u8, PAGE_SIZE);
    buddy::free_pages(page, 0);
}

#[inline(never)]
pub fn test_slab_page_reuse() {
    let Some(cache) = mm::kmem_cache_create("kmsan_reuse", 512, 8) else { return fail("no cache") };
    let obj = mm::kmem_cache_alloc(cache);
    // SAFETY: `obj` is a live 512-byte object, `p` a page just allocated.
    unsafe { core::ptr::write_bytes(obj, 0, 512) };
    mm::kmem_cache_free(cache, obj);
    if mm::kmem_cache_destroy(cache).is_err() {
        return fail("cache not empty");
    }
    let Some(p) = buddy::alloc_pages(0) else { return fail("no page") };
    // SAFETY: `obj` is a live 512-byte object, `p` a page just allocated.
    let v = unsafe { read_volatile((p + 64) as *const u32) };
    use_value!(v);
    buddy::free_pages(p, 0);
}

#[inline(never)]
pub fn test_uninit_page_origin() {
    let Some(p) = buddy::alloc_pages(1) else { return fail("no pages") };
    // SAFETY: `p` is an order-1 block just allocated.
    let v = unsafe { read_volatile((p + 5000) as *const u32) };
    use_value!(v);
    buddy::free_pages(p, 1);
}

fn case_fn(name: &str) -> Option<fn()> {
    Some(match name {
        "test_uninit_kmalloc" => test_uninit_kmalloc,
        "test_init_kmalloc" => test_init_kmalloc,
        "test_init_kzalloc" => test_init_kzalloc,
        "test_uninit_stack_var" => test_uninit_stack_var,
        "test_init_stack_var" => test_init_stack_var,
        "test_params" => test_params,
        "test_uninit_multiple_params" => test_uninit_multiple_params,
        "test_uninit_kmsan_check_memory" => test_uninit_kmsan_check_memory,
        "test_init_kmsan_vmap_vunmap" => test_init_kmsan_vmap_vunmap,
        "test_init_vmalloc" => test_init_vmalloc,
        "test_uninit_page" => test_uninit_page,
        "test_uaf" => test_uaf,
        "test_uaf_pages" => test_uaf_pages,
        "test_uaf_high_order_pages" => test_uaf_high_order_pages,
        "test_percpu_propagate" => test_percpu_propagate,
        "test_printk" => test_printk,
        "test_init_memcpy" => test_init_memcpy,
        "test_memcpy_aligned_to_aligned" => test_memcpy_aligned_to_aligned,
        "test_memcpy_aligned_to_unaligned" => test_memcpy_aligned_to_unaligned,
        "test_memcpy_initialized_gap" => test_memcpy_initialized_gap,
        "test_memset16" => test_memset16,
        "test_memset32" => test_memset32,
        "test_memset64" => test_memset64,
        "test_memset_on_guarded_buffer" => test_memset_on_guarded_buffer,
        "test_long_origin_chain" => test_long_origin_chain,
        "test_stackdepot_roundtrip" => test_stackdepot_roundtrip,
        "test_unpoison_memory" => test_unpoison_memory,
        "test_copy_from_kernel_nofault" => test_copy_from_kernel_nofault,
        "test_uninit_slab_to_pagecache" => test_uninit_slab_to_pagecache,
        "test_uninit_page_partial_write" => test_uninit_page_partial_write,
        "test_init_page_dma" => test_init_page_dma,
        "test_slab_page_reuse" => test_slab_page_reuse,
        "test_uninit_page_origin" => test_uninit_page_origin,
        _ => return None,
    })
}

/// Run every case of the table; true when no check failed.
pub fn run() -> bool {
    let mode = kasan_glue::mode();
    // kmsan_multi_shot[=1|0], as the runtime reads it (hybrid_shadow::config).
    let multi = guest_boot::boot_info().config.multi_shot;
    println!("kmsan-suite: start mode={} cases={} multi_shot={}", mode.name(), KMSAN_CASES.len(), multi);
    for c in KMSAN_CASES {
        run_case(c);
    }
    slab::drain_all();
    let bad = slab::check_invariants() + buddy::check_invariants();
    if bad != 0 {
        println!("kmsan-check-failed: allocator invariants: {} violations", bad);
        FAILED.fetch_add(1, SeqCst);
    }
    let failed = FAILED.load(SeqCst);
    println!("kmsan-suite: done mode={} cases={} failed_checks={}", mode.name(), KMSAN_CASES.len(), failed);
    failed == 0
}

fn run_case(c: &Case) {
    *CURRENT.lock() = c.name;
    println!("kmsan-case: {} expect {}", c.name, c.expect.len());
    let Some(f) = case_fn(c.name) else {
        fail("no function for this case");
        return;
    };
    let before = reports();
    f();
    let found = reports() - before;
    println!("kmsan-case-end: {} reports={}", c.name, found);
    if kasan_glue::kmsan_on() && found != c.expect.len() {
        println!("kmsan-check-failed: {}: found {} reports, expected {}", c.name, found, c.expect.len());
        FAILED.fetch_add(1, SeqCst);
    }
}
