//! The KASAN bug suite (suite `kasan`): one instrumented function per case
//! of ../shared/kasan-cases.md, named as listed, so that a report's
//! title (`BUG: KASAN: <type> in <case>+0x..`) names the case. The bad
//! accesses happen in the case function itself, through volatile accesses
//! with `black_box`ed offsets (the compiler instruments them and cannot
//! fold them), or through the checked mem intrinsics (`__asan_memset`,
//! `__asan_memmove`) the compiler emits for `write_bytes` / `copy`.
//!
//! Before each case the guest prints
//!     kasan-case: <name> expect <type>[,<type>...]|none
//! and after it
//!     kasan-case-end: <name> bugs=<n>
//! and at the end
//!     kasan-suite: done mode=<m> cases=<n> failed_checks=<k>
//! Run with `kasan_multi_shot` so every report is printed. A failed check
//! inside a case prints `kasan-check-failed: <case>: <what>`.
//!
//! In `off` mode the cases run without checking: the bad accesses really
//! happen, so the suite avoids those that would crash (a memmove of
//! usize::MAX - 1 bytes, reads of unmapped guard pages: those only go
//! through the check the compiler would emit before them).
#![allow(clippy::missing_safety_doc)]

use core::hint::black_box;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use crate::kasan_glue::{self, Backing, Mode, PageState};
use crate::mm::mempool::{Mempool, Source};
use crate::mm::{self, buddy, slab, uaccess, PAGE_SIZE};
use crate::println;
use crate::task;

extern "C" {
    fn __asan_load1_noabort(addr: usize);
    fn __asan_alloca_poison(addr: usize, size: usize);
    fn __asan_allocas_unpoison(top: usize, bottom: usize);
}

use crate::kasan_cases::{Case, KASAN_CASES};

static FAILED: AtomicUsize = AtomicUsize::new(0);
/// The case running now (set by `run` between cases).
static CURRENT: spin::Mutex<&str> = spin::Mutex::new("");

fn current() -> &'static str {
    *CURRENT.lock()
}

fn fail(what: &str) {
    println!("kasan-check-failed: {}: {}", current(), what);
    FAILED.fetch_add(1, SeqCst);
}

macro_rules! expect {
    ($cond:expr) => {
        if !$cond {
            fail(stringify!($cond));
        }
    };
}

fn checking() -> bool {
    kasan_glue::checking()
}

fn hybrid() -> bool {
    kasan_glue::mode() == Mode::Hybrid
}

fn bugs_so_far() -> usize {
    kasan_glue::stats().map_or(0, |s| s.reports + s.reports_suppressed)
}

fn slow_checks() -> usize {
    kasan_glue::stats().map_or(0, |s| s.slow_path_checks)
}

// Volatile accessors: the access is instrumented in the (inlined) caller,
// i.e. in the case function. `#[inline(always)]` keeps them out of the
// symbol table and out of report titles.
#[inline(always)]
fn rd8(a: usize) -> u8 {
    // SAFETY: the suite reads memory that is mapped (possibly freed or
    // out of bounds, which is the point); see each case.
    unsafe { read_volatile(black_box(a) as *const u8) }
}
#[inline(always)]
fn rd32(a: usize) -> u32 {
    // SAFETY: as rd8; 4-aligned by the callers.
    unsafe { read_volatile(black_box(a) as *const u32) }
}
#[inline(always)]
fn rd64(a: usize) -> u64 {
    // SAFETY: as rd8; 8-aligned by the callers.
    unsafe { read_volatile(black_box(a) as *const u64) }
}
#[inline(always)]
fn wr8(a: usize, v: u8) {
    // SAFETY: as rd8; the written byte lies inside the slot (no runtime
    // metadata there) or in memory the case owns.
    unsafe { write_volatile(black_box(a) as *mut u8, v) }
}

/// 16 bytes read or written as one access (`load i128`, align 8), like
/// Linux's `struct { u64 words[2]; }`. Aligned to the 8-byte granule, the
/// access is one check with inline checks too (a 2-byte shadow load); with
/// align 1, LLVM checks its first and last byte separately, and a
/// use-after-free, bad at both ends, reports twice in recover mode.
#[repr(C, packed(8))]
#[derive(Clone, Copy)]
struct U128(u128);

fn kmalloc(n: usize) -> usize {
    mm::kmalloc(n) as usize
}
fn kfree(p: usize) {
    mm::kfree(p as *const u8)
}

// ---- slab out of bounds ---------------------------------------------------

#[inline(never)]
fn kmalloc_oob_right() {
    let size = black_box(128 - 5);
    let p = kmalloc(size);
    wr8(p + size, b'x'); // the partial granule after the object
    rd8(p + size + 5); // the next granule
    rd8(p + 128 + 8); // past the whole object
    for i in 0..size {
        rd8(p + i);
    }
    kfree(p);
}

#[inline(never)]
fn kmalloc_oob_left() {
    let p = kmalloc(black_box(15));
    rd8(p.wrapping_sub(black_box(1)));
    kfree(p);
}

#[inline(never)]
fn kmalloc_node_oob_right() {
    let p = kmalloc(black_box(4096));
    rd8(p + black_box(4096));
    kfree(p);
}

#[inline(never)]
fn kmalloc_big_oob_right() {
    let size = black_box(slab::KMALLOC_MAX_CACHE_SIZE - 256);
    let p = kmalloc(size);
    wr8(p + size, 0);
    kfree(p);
}

#[inline(never)]
fn kmalloc_large_oob_right() {
    let size = black_box(slab::KMALLOC_MAX_CACHE_SIZE + 10);
    let p = kmalloc(size);
    wr8(p + size, 0);
    wr8(p + size - 1, 0);
    kfree(p);
}

#[inline(never)]
fn kmalloc_large_uaf() {
    let p = kmalloc(black_box(slab::KMALLOC_MAX_CACHE_SIZE + 10));
    kfree(p);
    rd8(p + black_box(0));
}

#[inline(never)]
fn kmalloc_large_invalid_free() {
    let p = kmalloc(black_box(slab::KMALLOC_MAX_CACHE_SIZE + 10));
    kfree(p + black_box(1));
    kfree(p);
}

#[inline(never)]
fn page_alloc_uaf() {
    let p = buddy::alloc_pages(4).unwrap_or(0);
    buddy::free_pages(p, 4);
    rd8(p + black_box(4));
}

#[inline(never)]
fn krealloc_more_oob() {
    let p = kmalloc(black_box(201));
    let q = mm::krealloc(p as *mut u8, black_box(235)) as usize;
    expect!(q == p);
    for i in 201..235 {
        rd8(q + i);
    }
    rd8(q + black_box(0));
    rd8(q + black_box(235));
    kfree(q);
}

#[inline(never)]
fn krealloc_less_oob() {
    let p = kmalloc(black_box(235));
    let q = mm::krealloc(p as *mut u8, black_box(201)) as usize;
    for i in 0..201 {
        rd8(q + i);
    }
    rd8(q + black_box(201));
    rd8(q + black_box(234));
    kfree(q);
}

#[inline(never)]
fn krealloc_large_more_oob() {
    let base = slab::KMALLOC_MAX_CACHE_SIZE + 1000;
    let p = kmalloc(black_box(base + 201));
    let q = mm::krealloc(p as *mut u8, black_box(base + 235)) as usize;
    for i in base + 201..base + 235 {
        rd8(q + i);
    }
    rd8(q + black_box(base + 235));
    kfree(q);
}

#[inline(never)]
fn krealloc_large_less_oob() {
    let base = slab::KMALLOC_MAX_CACHE_SIZE + 1000;
    let p = kmalloc(black_box(base + 235));
    let q = mm::krealloc(p as *mut u8, black_box(base + 201)) as usize;
    rd8(q);
    rd8(q + base + 200);
    rd8(q + black_box(base + 201));
    kfree(q);
}

#[inline(never)]
fn krealloc_uaf() {
    let p = kmalloc(black_box(201));
    kfree(p);
    let r = mm::krealloc(p as *mut u8, black_box(235));
    expect!(r.is_null());
}

#[inline(never)]
fn kmalloc_oob_16() {
    let p = kmalloc(black_box(13));
    let q = kmalloc(black_box(16));
    // SAFETY: 16 bytes of a 13-byte object (the bug), into a 16-byte one.
    unsafe {
        let v = read_volatile(black_box(p) as *const U128);
        write_volatile(black_box(q) as *mut U128, v);
    }
    kfree(q);
    kfree(p);
}

#[inline(never)]
fn kmalloc_uaf_16() {
    let p = kmalloc(black_box(16));
    let q = kmalloc(black_box(16));
    kfree(p);
    // SAFETY: a freed object is still mapped (the bug).
    unsafe {
        let v = read_volatile(black_box(p) as *const U128);
        write_volatile(black_box(q) as *mut U128, v);
    }
    kfree(q);
}

#[inline(never)]
fn kmalloc_oob_in_memset() {
    let size = black_box(128 - 5);
    let p = kmalloc(size);
    // SAFETY: runs one byte past the object (the bug; with checking the
    // checked memset reports and does not write).
    unsafe { core::ptr::write_bytes(black_box(p) as *mut u8, 0, black_box(size + 1)) };
    kfree(p);
}

macro_rules! memset_case {
    ($name:ident, $n:expr) => {
        #[inline(never)]
        fn $name() {
            let size = black_box(128 - 5);
            let p = kmalloc(size);
            // SAFETY: straddles the object's end (the bug).
            unsafe { core::ptr::write_bytes(black_box(p + size - 1) as *mut u8, 0, black_box($n)) };
            kfree(p);
        }
    };
}
memset_case!(kmalloc_oob_memset_2, 2);
memset_case!(kmalloc_oob_memset_4, 4);
memset_case!(kmalloc_oob_memset_8, 8);
memset_case!(kmalloc_oob_memset_16, 16);

#[inline(never)]
fn kmalloc_memmove_negative_size() {
    let p = kmalloc(black_box(64));
    // SAFETY: initialises the object.
    unsafe { core::ptr::write_bytes(p as *mut u8, 1, 64) };
    if checking() {
        // SAFETY: none; the checked memmove reports the wrapping range and
        // moves nothing. Without checking it would wipe the kernel.
        unsafe { core::ptr::copy(black_box(p + 4) as *const u8, black_box(p) as *mut u8, black_box((-2isize) as usize)) };
    }
    kfree(p);
}

#[inline(never)]
fn kmalloc_memmove_invalid_size() {
    let p = kmalloc(black_box(64));
    // SAFETY: initialises the object.
    unsafe { core::ptr::write_bytes(p as *mut u8, 1, 64) };
    // SAFETY: reads 4 bytes past the object (the bug).
    unsafe { core::ptr::copy(black_box(p + 4) as *const u8, black_box(p) as *mut u8, black_box(64)) };
    kfree(p);
}

#[inline(never)]
fn kmalloc_uaf() {
    let p = kmalloc(black_box(10));
    kfree(p);
    rd8(p + black_box(8));
}

#[inline(never)]
fn kmalloc_uaf_memset() {
    let p = kmalloc(black_box(33));
    kfree(p);
    // SAFETY: a freed object (the bug; checked memset does not write).
    unsafe { core::ptr::write_bytes(black_box(p) as *mut u8, 0, black_box(33)) };
}

#[inline(never)]
fn kmalloc_uaf2() {
    let p1 = kmalloc(black_box(43));
    kfree(p1);
    let p2 = kmalloc(black_box(43));
    if checking() {
        expect!(p1 != p2); // the quarantine keeps the freed slot
    }
    rd8(p1 + black_box(40));
    rd8(p2 + black_box(40));
    kfree(p2);
}

#[inline(never)]
fn kmalloc_double_kzfree() {
    let p = kmalloc(black_box(16));
    mm::kfree_sensitive(p as *const u8);
    mm::kfree_sensitive(p as *const u8);
}

#[inline(never)]
fn ksize_unpoisons_memory() {
    let p = kmalloc(black_box(123));
    let real = mm::ksize(p as *const u8);
    expect!(real == 128);
    for i in 123..128 {
        rd8(p + i);
    }
    rd8(p + black_box(real));
    kfree(p);
}

#[inline(never)]
fn ksize_uaf() {
    let p = kmalloc(black_box(128 - 5));
    kfree(p);
    let n = mm::ksize(p as *const u8);
    if checking() {
        expect!(n == 0);
    }
    rd8(p + black_box(0));
    rd8(p + black_box(120));
}

#[inline(never)]
fn kmem_cache_oob() {
    let Some(c) = mm::kmem_cache_create("test_cache", 200, 0) else { return fail("create") };
    let p = mm::kmem_cache_alloc(c) as usize;
    rd8(p + black_box(200));
    mm::kmem_cache_free(c, p as *mut u8);
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

#[inline(never)]
fn kmem_cache_double_free() {
    let Some(c) = mm::kmem_cache_create("test_cache", 200, 0) else { return fail("create") };
    let p = mm::kmem_cache_alloc(c);
    mm::kmem_cache_free(c, p);
    mm::kmem_cache_free(c, p);
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

#[inline(never)]
fn kmem_cache_invalid_free() {
    let Some(c) = mm::kmem_cache_create("test_cache", 200, 0) else { return fail("create") };
    let p = mm::kmem_cache_alloc(c) as usize;
    mm::kmem_cache_free(c, (p + black_box(1)) as *mut u8);
    mm::kmem_cache_free(c, p as *mut u8);
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

#[inline(never)]
fn kmem_cache_double_destroy() {
    let Some(c) = mm::kmem_cache_create("test_cache", 200, 0) else { return fail("create") };
    expect!(mm::kmem_cache_destroy(c).is_ok());
    // A clear error, nothing corrupted, no report.
    expect!(mm::kmem_cache_destroy(c) == Err("already destroyed"));
    expect!(slab::check_invariants() == 0);
}

#[inline(never)]
fn kmem_cache_bulk() {
    let Some(c) = mm::kmem_cache_create("test_cache", 200, 0) else { return fail("create") };
    let mut objs = [core::ptr::null_mut::<u8>(); 10];
    expect!(mm::kmem_cache_alloc_bulk(c, &mut objs) == 10);
    for &p in &objs {
        // SAFETY: a live 200-byte object.
        unsafe { core::ptr::write_bytes(p, 0x5a, 200) };
    }
    mm::kmem_cache_free_bulk(c, &mut objs);
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

#[inline(never)]
fn kfree_via_page() {
    let p = kmalloc(black_box(8));
    let page = p & !(PAGE_SIZE - 1);
    let off = p & (PAGE_SIZE - 1);
    kfree(black_box(page) + off);
}

#[inline(never)]
fn kfree_via_phys() {
    let p = kmalloc(black_box(8));
    let pa = guest_boot::paging::virt_to_phys(p as u64).unwrap_or(0);
    kfree(guest_boot::paging::phys_to_virt(black_box(pa)) as usize);
}

// ---- globals, stack, alloca --------------------------------------------------

// Two instrumented globals, defined together so that (in practice) one
// directly follows the other's redzone; the left case reads the byte
// before the higher one. (A custom `link_section` would keep the compiler
// from instrumenting them.)
static mut GLOBAL_PAD: [u8; 64] = [1; 64];
static mut GLOBAL_ARRAY: [u8; 10] = [2; 10];

#[inline(never)]
fn kasan_global_oob_right() {
    let g = core::ptr::addr_of!(GLOBAL_ARRAY) as usize;
    rd8(g + black_box(13));
    rd8(g + black_box(9));
}

#[inline(never)]
fn kasan_global_oob_left() {
    let a = core::ptr::addr_of!(GLOBAL_ARRAY) as usize;
    let b = core::ptr::addr_of!(GLOBAL_PAD) as usize;
    // The byte before the higher global is the lower one's redzone.
    rd8(a.max(b) - black_box(1));
}

#[inline(never)]
fn kasan_stack_oob() {
    let stack = [0u8; 10];
    let p = black_box(stack.as_ptr()) as usize;
    rd8(p + black_box(9));
    rd8(p + black_box(10));
    black_box(&stack);
}

/// Rust has no dynamically sized stack allocation (`alloca`). The compiler
/// would place a variable-sized buffer 32-byte aligned between 32-byte
/// redzones and call `__asan_alloca_poison` / `__asan_allocas_unpoison`;
/// the cases emulate that frame: a 32-byte aligned buffer inside a local
/// array, poisoned and unpoisoned through the same ABI entry points.
#[repr(C, align(32))]
struct AllocaFrame([u8; 128]);

#[inline(never)]
fn kasan_alloca_oob_left() {
    let mut frame = AllocaFrame([0; 128]);
    let base = black_box(frame.0.as_mut_ptr()) as usize;
    let buf = base + 32;
    // SAFETY: [buf - 32, buf + 64) lies inside `frame`.
    unsafe { __asan_alloca_poison(buf, black_box(10)) };
    rd8(buf - black_box(1));
    // SAFETY: the whole of `frame` is this function's live stack.
    unsafe { __asan_allocas_unpoison(base, base + 128) };
    black_box(&frame);
}

#[inline(never)]
fn kasan_alloca_oob_right() {
    let mut frame = AllocaFrame([0; 128]);
    let base = black_box(frame.0.as_mut_ptr()) as usize;
    let buf = base + 32;
    let size = black_box(10);
    // SAFETY: [buf - 32, buf + 64) lies inside `frame`.
    unsafe { __asan_alloca_poison(buf, size) };
    for i in 0..size {
        rd8(buf + i);
    }
    rd8(buf + black_box(size));
    // SAFETY: the whole of `frame` is this function's live stack.
    unsafe { __asan_allocas_unpoison(base, base + 128) };
    rd8(buf + black_box(size)); // live again: no report
    black_box(&frame);
}

// ---- string and memory helpers, bit operations, atomics ----------------------

#[inline(never)]
fn kasan_memchr() {
    let size = black_box(24);
    let p = kmalloc(size);
    // SAFETY: a live 24-byte object.
    unsafe { core::ptr::write_bytes(p as *mut u8, b'a', size) };
    // memchr(p, 'x', size + 1)
    for i in 0..size + 1 {
        if rd8(p + i) == b'x' {
            break;
        }
    }
    kfree(p);
}

#[inline(never)]
fn kasan_memcmp() {
    let size = black_box(24);
    let p = kmalloc(size);
    let arr = [b'a'; 32];
    // SAFETY: a live 24-byte object.
    unsafe { core::ptr::write_bytes(p as *mut u8, b'a', size) };
    let q = black_box(arr.as_ptr()) as usize;
    // memcmp(p, arr, size + 1)
    for i in 0..size + 1 {
        if rd8(p + i) != rd8(q + i) {
            break;
        }
    }
    black_box(&arr);
    kfree(p);
}

#[inline(never)]
fn kasan_strings() {
    let p = mm::kzalloc(black_box(16)) as usize;
    kfree(p);
    // strchr(p, '1')
    let mut i = 0;
    while rd8(p + i) != 0 && rd8(p + i) != b'1' {
        i += 1;
    }
    // strrchr(p, '1')
    let mut j = 0;
    while rd8(p + j) != 0 {
        j += 1;
    }
    // strcmp(p, "2")
    let _ = rd8(p) as i32 - b'2' as i32;
    // strlen(p)
    let mut n = 0;
    while rd8(p + n) != 0 {
        n += 1;
    }
    black_box((i, j, n));
}

#[inline(never)]
fn kasan_bitops_generic() {
    // One byte more than a long: kmalloc-16, so the second long is inside
    // the slot (nothing else corrupted) but past the object.
    let p = kmalloc(black_box(core::mem::size_of::<u64>() + 1));
    // Each operation gets its own (black_box'ed) address: the compiler
    // checks an address only once per basic block otherwise.
    // SAFETY: 8-aligned words of the slot.
    let word = |i: usize| unsafe { &*(black_box(p + 8 * i) as *const AtomicU64) };
    word(0).fetch_or(1 << 3, SeqCst); // set_bit(3)
    word(1).fetch_and(!(1 << 1), SeqCst); // clear_bit(BITS_PER_LONG + 1)
    black_box(word(1).load(SeqCst) & (1 << 2)); // test_bit(BITS_PER_LONG + 2)
    kfree(p);
}

#[inline(never)]
fn kasan_atomics() {
    let p = kmalloc(black_box(48));
    // SAFETY: 8-aligned, inside the 64-byte slot, past the 48-byte object.
    let (a, b) = unsafe { (&*((p + 48) as *const AtomicU32), &*((p + 48) as *const AtomicU64)) };
    black_box(a.load(SeqCst));
    black_box(b.swap(42, SeqCst));
    kfree(p);
}

// ---- vmalloc ---------------------------------------------------------------------

#[inline(never)]
fn vmalloc_oob() {
    let size = black_box(3618);
    let p = mm::vmalloc(size) as usize;
    rd8(p);
    rd8(p + size - 1);
    rd8(p + size);
    // Past the page: offset 5000 is in the unmapped guard page, where the
    // MMU would fault after the report; only the check the compiler emits
    // before the load runs.
    // SAFETY: the check reads shadow only.
    unsafe { __asan_load1_noabort(p + black_box(5000)) };
    mm::vfree(p as *const u8);
}

/// Two areas share one 32 KiB shadow block: after the first vfree the
/// block's shadow stays private; after the second it goes back to the
/// shared 0xF8 page. Both freed areas are unmapped, so only the checks run.
#[inline(never)]
fn vmalloc_uaf_shadow_returned() {
    let a = mm::vmalloc(black_box(100)) as usize;
    let b = mm::vmalloc(black_box(100)) as usize;
    if a >> 15 != b >> 15 {
        println!("kasan-suite: note: vmalloc areas {:#x} {:#x} in different shadow blocks", a, b);
    }
    rd8(a + 99);
    mm::vfree(a as *const u8);
    // SAFETY: the check reads shadow only.
    unsafe { __asan_load1_noabort(a + black_box(8)) };
    rd8(b + 99);
    mm::vfree(b as *const u8);
    // SAFETY: the check reads shadow only.
    unsafe { __asan_load1_noabort(b + black_box(16)) };
}

// ---- deferred callbacks, tasks ----------------------------------------------------

#[inline(never)]
fn rcu_uaf(p: usize) {
    black_box(rd64(p + 8));
}

fn run_rcu_uaf() {
    let p = kmalloc(black_box(32));
    task::call_rcu(rcu_uaf, p);
    kfree(p);
    task::rcu_barrier();
}

#[inline(never)]
fn workqueue_uaf(p: usize) {
    black_box(rd32(p + 16));
}

fn run_workqueue_uaf() {
    let p = kmalloc(black_box(40));
    task::queue_work(workqueue_uaf, p);
    kfree(p);
    task::flush_workqueue();
}

static SAVED: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn stack_victim(_: usize) {
    let local = [7u64; 4];
    SAVED.store(black_box(local.as_ptr()) as usize, SeqCst);
    black_box(&local);
}

#[inline(never)]
fn stack_uaf_after_task_exit() {
    let pid = task::spawn("stack-victim", stack_victim, 0);
    expect!(pid != 0);
    task::join(pid);
    black_box(rd64(SAVED.load(SeqCst)));
}

// ---- hybrid transitions -----------------------------------------------------------

/// One page of an 8-page (one shadow page) block is freed while the others
/// stay allocated: in hybrid the block's shadow is the CONSULT page.
#[inline(never)]
fn page_uaf_in_mixed_block() {
    let Some(b) = buddy::alloc_pages(3) else { return fail("alloc") };
    expect!(b % (32 << 10) == 0);
    buddy::split_page(b, 3);
    let pages = [b, b + 4096, b + 2 * 4096, b + 3 * 4096, b + 4 * 4096, b + 5 * 4096, b + 6 * 4096, b + 7 * 4096];
    buddy::free_pages(pages[3], 0);
    if checking() {
        expect!(kasan_glue::page_state(pages[3]) == Some(PageState::Free));
    }
    let slow0 = slow_checks();
    black_box(rd32(pages[3] + 100));
    black_box(rd64(pages[2]));
    black_box(rd64(pages[4] + 4088));
    let slow = slow_checks() - slow0;
    if hybrid() {
        expect!(kasan_glue::backing_of(pages[3]) == Some(Backing::Consult));
        expect!(slow == 3);
    }
    for (i, &p) in pages.iter().enumerate() {
        if i != 3 {
            buddy::free_pages(p, 0);
        }
    }
    if hybrid() {
        expect!(kasan_glue::backing_of(pages[3]) == Some(Backing::Free));
    }
}

/// Free every object of a slab page until the page goes back to the page
/// allocator (and, in hybrid, its private shadow page is returned). The
/// 4000-byte objects make the slab one whole 32 KiB block (order 3), so no
/// other tracked page keeps the block's shadow private.
#[inline(never)]
fn slab_page_returned_uaf() {
    let Some(c) = mm::kmem_cache_create("returned", 4000, 0) else { return fail("create") };
    let first = mm::kmem_cache_alloc(c) as usize;
    let Some((slab_base, order)) = slab::slab_page_of(first) else { return fail("slab_page_of") };
    let mut objs = [0usize; 64];
    let mut n = 0;
    objs[n] = first;
    n += 1;
    while n < objs.len() {
        let p = mm::kmem_cache_alloc(c) as usize;
        if p == 0 || slab::slab_page_of(p).map(|s| s.0) != Some(slab_base) {
            mm::kmem_cache_free(c, p as *mut u8);
            break;
        }
        objs[n] = p;
        n += 1;
    }
    if hybrid() {
        expect!(kasan_glue::backing_of(slab_base) == Some(Backing::Private));
    }
    for &p in &objs[..n] {
        mm::kmem_cache_free(c, p as *mut u8);
    }
    slab::drain_all();
    expect!(slab::slab_page_of(first).is_none());
    if checking() {
        expect!(kasan_glue::page_state(slab_base) == Some(PageState::Free));
    }
    if hybrid() && order >= 3 {
        expect!(kasan_glue::backing_of(slab_base) != Some(Backing::Private));
    }
    black_box(rd64(first));
    black_box(rd8(objs[n - 1] + 16));
    expect!(mm::kmem_cache_destroy(c).is_ok());
    black_box(order);
}

/// A slab page that went back to the page allocator is handed out again as
/// a plain page: its stale slab shadow (redzones, freed objects) must be
/// gone, every byte readable.
#[inline(never)]
fn slab_page_reused_as_page() {
    let Some(c) = mm::kmem_cache_create("reused", 4000, 0) else { return fail("create") };
    let p = mm::kmem_cache_alloc(c) as usize;
    let Some((slab_base, order)) = slab::slab_page_of(p) else { return fail("slab_page_of") };
    mm::kmem_cache_free(c, p as *mut u8);
    slab::drain_all();
    expect!(mm::kmem_cache_destroy(c).is_ok());
    let Some(q) = buddy::alloc_pages(order) else { return fail("alloc") };
    if q != slab_base {
        println!("kasan-suite: note: slab page {:#x} not reused (got {:#x})", slab_base, q);
    }
    let mut sum = 0u64;
    let mut a = q;
    while a < q + (PAGE_SIZE << order) {
        sum = sum.wrapping_add(rd64(a));
        a += 8;
    }
    black_box(sum);
    buddy::free_pages(q, order);
}

/// A page-backed kmalloc shares a shadow block with plain pages, one of
/// which is freed: the block is private (byte shadow for the kmalloc) and
/// the free page must still read as use-after-free; after the kfree the
/// block falls back to a shared page and the kmalloc reads as freed.
#[inline(never)]
fn large_kmalloc_in_mixed_block() {
    let Some(b) = buddy::alloc_pages(3) else { return fail("alloc") };
    buddy::split_page(b, 3);
    for i in 4..8 {
        buddy::free_pages(b + i * 4096, 0);
    }
    let size = black_box(slab::KMALLOC_MAX_CACHE_SIZE + 808);
    let p = kmalloc(size);
    if p != b + 4 * 4096 {
        println!("kasan-suite: note: large kmalloc at {:#x}, not in block {:#x}", p, b);
    }
    buddy::free_pages(b + 4096, 0);
    if hybrid() && p == b + 4 * 4096 {
        expect!(kasan_glue::backing_of(b) == Some(Backing::Private));
    }
    black_box(rd64(b + 4096 + 64)); // the free page
    rd8(p + size); // past the kmalloc
    black_box(rd64(b + 8)); // an allocated page: fine
    kfree(p);
    if hybrid() && p == b + 4 * 4096 {
        expect!(kasan_glue::backing_of(b) == Some(Backing::Consult));
    }
    black_box(rd64(p + 128)); // the freed kmalloc
    for i in [0usize, 2, 3] {
        buddy::free_pages(b + i * 4096, 0);
    }
}

// ---- Linux's remaining generic cases -------------------------------------------

#[inline(never)]
fn kmalloc_track_caller_oob_right() {
    let size = black_box(128 - 8);
    let p = slab::kmalloc_track_caller(size) as usize;
    wr8(p + size, b'y');
    kfree(p);
    let p = slab::kmalloc_node_track_caller(size, 0) as usize;
    wr8(p + size, b'y');
    kfree(p);
}

/// A `SLAB_TYPESAFE_BY_RCU` cache: a freed object stays readable while an
/// RCU reader that predates the free is inside its critical section; after
/// the grace period the runtime has it as freed.
#[inline(never)]
fn kmem_cache_rcu_uaf() {
    let Some(c) = mm::kmem_cache_create_flags("test_cache", 200, 0, slab::SLAB_TYPESAFE_BY_RCU) else {
        return fail("create");
    };
    let p = mm::kmem_cache_alloc(c) as usize;
    wr8(p, 1);
    task::rcu_read_lock();
    mm::kmem_cache_free(c, p as *mut u8);
    black_box(rd8(p)); // still valid: no grace period yet
    task::yield_now(); // a grace point: cannot end the grace period inside the reader
    black_box(rd8(p));
    task::rcu_read_unlock();
    task::rcu_barrier();
    black_box(rd8(p));
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

/// A `SLAB_ACCOUNT` cache: objects are charged to the memory cgroup while
/// allocated; no report.
#[inline(never)]
fn kmem_cache_accounted() {
    let Some(c) = mm::kmem_cache_create_flags("test_cache", 200, 0, slab::SLAB_ACCOUNT) else {
        return fail("create");
    };
    let before = slab::memcg_charged();
    for _ in 0..5 {
        let p = mm::kmem_cache_alloc(c);
        if p.is_null() {
            fail("alloc");
            break;
        }
        expect!(slab::memcg_charged() == before + 200);
        // SAFETY: a live 200-byte object.
        unsafe { core::ptr::write_bytes(p, 0x5a, 200) };
        mm::kmem_cache_free(c, p);
        expect!(slab::memcg_charged() == before);
        task::yield_now();
    }
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

/// A kmalloc pool of 4 with one element taken out, so that frees go back
/// into the reserve (as Linux's test prepares it).
fn mempool_kmalloc(size: usize) -> Option<(Mempool, usize)> {
    let mut pool = Mempool::new(Source::Kmalloc(size), 4)?;
    let extra = pool.alloc_preallocated();
    Some((pool, extra))
}

fn mempool_done(mut pool: Mempool, extra: usize) {
    pool.free(extra);
    pool.exit();
}

#[inline(never)]
fn mempool_kmalloc_oob_right() {
    let size = black_box(128 - 8 - 5);
    let Some((mut pool, extra)) = mempool_kmalloc(size) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    rd8(e + size);
    pool.free(e);
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_kmalloc_large_oob_right() {
    let size = black_box(slab::KMALLOC_MAX_CACHE_SIZE + 1);
    let Some((mut pool, extra)) = mempool_kmalloc(size) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    rd8(e + size);
    pool.free(e);
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_slab_oob_right() {
    let size = black_box(123);
    let Some(c) = mm::kmem_cache_create("test_cache", size, 0) else { return fail("create") };
    let Some(mut pool) = Mempool::new(Source::Slab(c), 4) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    rd8(e + size);
    pool.free(e);
    pool.exit();
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

#[inline(never)]
fn mempool_kmalloc_uaf() {
    let Some((mut pool, extra)) = mempool_kmalloc(black_box(128)) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    pool.free(e);
    rd8(e + black_box(0));
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_kmalloc_large_uaf() {
    let Some((mut pool, extra)) = mempool_kmalloc(black_box(slab::KMALLOC_MAX_CACHE_SIZE + 1)) else {
        return fail("mempool");
    };
    let e = pool.alloc_preallocated();
    pool.free(e);
    rd8(e + black_box(0));
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_slab_uaf() {
    let Some(c) = mm::kmem_cache_create("test_cache", 123, 0) else { return fail("create") };
    let Some(mut pool) = Mempool::new(Source::Slab(c), 4) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    pool.free(e);
    rd8(e + black_box(0));
    pool.exit();
    expect!(mm::kmem_cache_destroy(c).is_ok());
}

#[inline(never)]
fn mempool_page_alloc_uaf() {
    let Some(mut pool) = Mempool::new(Source::Pages(2), 4) else { return fail("mempool") };
    let extra = pool.alloc_preallocated();
    let e = pool.alloc_preallocated();
    pool.free(e);
    rd8(e + black_box(0));
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_kmalloc_double_free() {
    let Some((mut pool, extra)) = mempool_kmalloc(black_box(128)) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    pool.free(e);
    pool.free(e);
    expect!(pool.reserved() == 3);
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_kmalloc_large_double_free() {
    let Some((mut pool, extra)) = mempool_kmalloc(black_box(slab::KMALLOC_MAX_CACHE_SIZE + 1)) else {
        return fail("mempool");
    };
    let e = pool.alloc_preallocated();
    pool.free(e);
    pool.free(e);
    expect!(pool.reserved() == 3);
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_page_alloc_double_free() {
    let Some(mut pool) = Mempool::new(Source::Pages(2), 4) else { return fail("mempool") };
    let extra = pool.alloc_preallocated();
    let e = pool.alloc_preallocated();
    pool.free(e);
    pool.free(e);
    expect!(pool.reserved() == 3);
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_kmalloc_invalid_free() {
    let Some((mut pool, extra)) = mempool_kmalloc(black_box(128)) else { return fail("mempool") };
    let e = pool.alloc_preallocated();
    pool.free(e + black_box(1));
    expect!(pool.reserved() == 2);
    pool.free(e);
    mempool_done(pool, extra);
}

#[inline(never)]
fn mempool_kmalloc_large_invalid_free() {
    let Some((mut pool, extra)) = mempool_kmalloc(black_box(slab::KMALLOC_MAX_CACHE_SIZE + 1)) else {
        return fail("mempool");
    };
    let e = pool.alloc_preallocated();
    pool.free(e + black_box(1));
    expect!(pool.reserved() == 2);
    pool.free(e);
    mempool_done(pool, extra);
}

/// copy_to_kernel_nofault checks both ranges: a source running past a
/// kmalloc object, then a destination.
#[inline(never)]
fn copy_to_kernel_nofault_oob() {
    let mut buf = [0u8; 128];
    let size = black_box(buf.len());
    let p = kmalloc(size - 8);
    let b = black_box(buf.as_mut_ptr());
    expect!(uaccess::copy_to_kernel_nofault(b, p as *const u8, size).is_err() || !checking());
    expect!(uaccess::copy_to_kernel_nofault(p as *mut u8, b, size).is_err() || !checking());
    black_box(&buf);
    kfree(p);
}

/// The user-copy routines, each running one byte past a kmalloc object,
/// over a user page the guest maps.
#[inline(never)]
fn copy_user_test_oob() {
    let size = black_box(128 - 8);
    let k = kmalloc(size) as *mut u8;
    let Some(u) = uaccess::vm_mmap(1) else { return fail("vm_mmap") };
    expect!(u < uaccess::USER_END);
    black_box(uaccess::copy_from_user(k, u, size + 1));
    black_box(uaccess::copy_to_user(u, k, size + 1));
    black_box(uaccess::__copy_from_user(k, u, size + 1));
    black_box(uaccess::__copy_to_user(u, k, size + 1));
    black_box(uaccess::__copy_from_user_inatomic(k, u, size + 1));
    black_box(uaccess::__copy_to_user_inatomic(u, k, size + 1));
    // A long string in user memory, so that the copy does not stop early.
    // SAFETY: a live object of `size` bytes.
    unsafe { core::ptr::write_bytes(k, b'a', size) };
    expect!(uaccess::copy_to_user(u, k, size) == 0);
    black_box(uaccess::strncpy_from_user(k, u, size + 1));
    uaccess::vm_munmap(u, 1);
    kfree(k as usize);
}

/// Rust code with a use-after-free through a raw pointer: the `Box` is
/// dropped (kfree through the kernel's Rust heap), then read.
#[inline(never)]
fn rust_uaf() {
    let b = alloc::boxed::Box::new([7u8; 40]);
    let p = black_box(&*b as *const [u8; 40] as usize);
    drop(b);
    black_box(rd8(p + black_box(8)));
}

// ---- the driver -------------------------------------------------------------------

/// The function of case `name` (the table's rows, kasan_cases.rs, name
/// the cases; a case whose function runs through a helper says so).
fn case_fn(name: &str) -> Option<fn()> {
    macro_rules! fns {
        ($($name:ident $(=> $run:expr)?,)*) => {
            match name {
                $(stringify!($name) => Some(fns!(@run $name $($run)?)),)*
                _ => None,
            }
        };
        (@run $name:ident) => { $name };
        (@run $name:ident $run:expr) => { $run };
    }
    fns! {
        kmalloc_oob_right,
        kmalloc_oob_left,
        kmalloc_node_oob_right,
        kmalloc_big_oob_right,
        kmalloc_large_oob_right,
        kmalloc_large_uaf,
        kmalloc_large_invalid_free,
        page_alloc_uaf,
        krealloc_more_oob,
        krealloc_less_oob,
        krealloc_large_more_oob,
        krealloc_large_less_oob,
        krealloc_uaf,
        kmalloc_oob_16,
        kmalloc_uaf_16,
        kmalloc_oob_in_memset,
        kmalloc_oob_memset_2,
        kmalloc_oob_memset_4,
        kmalloc_oob_memset_8,
        kmalloc_oob_memset_16,
        kmalloc_memmove_negative_size,
        kmalloc_memmove_invalid_size,
        kmalloc_uaf,
        kmalloc_uaf_memset,
        kmalloc_uaf2,
        kmalloc_double_kzfree,
        ksize_unpoisons_memory,
        ksize_uaf,
        kmem_cache_oob,
        kmem_cache_double_free,
        kmem_cache_invalid_free,
        kmem_cache_double_destroy,
        kmem_cache_bulk,
        kfree_via_page,
        kfree_via_phys,
        kasan_global_oob_right,
        kasan_global_oob_left,
        kasan_stack_oob,
        kasan_alloca_oob_left,
        kasan_alloca_oob_right,
        kasan_memchr,
        kasan_memcmp,
        kasan_strings,
        kasan_bitops_generic,
        kasan_atomics,
        vmalloc_oob,
        rcu_uaf => run_rcu_uaf,
        workqueue_uaf => run_workqueue_uaf,
        stack_uaf_after_task_exit,
        page_uaf_in_mixed_block,
        slab_page_returned_uaf,
        slab_page_reused_as_page,
        large_kmalloc_in_mixed_block,
        vmalloc_uaf_shadow_returned,
        kmalloc_track_caller_oob_right,
        kmem_cache_rcu_uaf,
        kmem_cache_accounted,
        mempool_kmalloc_oob_right,
        mempool_kmalloc_large_oob_right,
        mempool_slab_oob_right,
        mempool_kmalloc_uaf,
        mempool_kmalloc_large_uaf,
        mempool_slab_uaf,
        mempool_page_alloc_uaf,
        mempool_kmalloc_double_free,
        mempool_kmalloc_large_double_free,
        mempool_page_alloc_double_free,
        mempool_kmalloc_invalid_free,
        mempool_kmalloc_large_invalid_free,
        copy_to_kernel_nofault_oob,
        copy_user_test_oob,
        rust_uaf,
    }
}

/// Run every case; true when no check inside a case failed and (with
/// checking) each case found exactly its expected number of bugs.
pub fn run() -> bool {
    let mode = kasan_glue::mode();
    let multi = guest_boot::boot_info().config.multi_shot;
    println!("kasan-suite: start mode={} cases={} multi_shot={}", mode.name(), KASAN_CASES.len(), multi);
    if checking() && !multi {
        println!("kasan-suite: note: without kasan_multi_shot only the first report is printed");
    }
    for c in KASAN_CASES {
        *CURRENT.lock() = c.name;
        print_marker(c);
        let Some(f) = case_fn(c.name) else {
            fail("no function for this case");
            continue;
        };
        let before = bugs_so_far();
        f();
        let found = bugs_so_far() - before;
        println!("kasan-case-end: {} bugs={}", c.name, found);
        if checking() && found != c.expect.len() {
            println!("kasan-check-failed: {}: found {} bugs, expected {}", c.name, found, c.expect.len());
            FAILED.fetch_add(1, SeqCst);
        }
    }
    slab::drain_all();
    let bad = slab::check_invariants() + buddy::check_invariants();
    if bad != 0 {
        println!("kasan-check-failed: allocator invariants: {} violations", bad);
        FAILED.fetch_add(1, SeqCst);
    }
    let failed = FAILED.load(SeqCst);
    println!("kasan-suite: done mode={} cases={} failed_checks={}", mode.name(), KASAN_CASES.len(), failed);
    failed == 0
}

fn print_marker(c: &Case) {
    guest_boot::print!("kasan-case: {} expect ", c.name);
    if c.expect.is_empty() {
        guest_boot::print!("none");
    }
    for (i, t) in c.expect.iter().enumerate() {
        guest_boot::print!("{}{}", if i == 0 { "" } else { "," }, t);
    }
    println!();
}
