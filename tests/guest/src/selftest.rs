//! Self-tests of the guest's own machinery (no KASAN bugs): suite `mm`, ...
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use crate::mm::{self, buddy, slab};
use crate::println;

/// Free pages plus the frames the sanitizer runtime holds (its shadow
/// pages come from the buddy allocator and go back to it), with the
/// quarantine emptied first: invariant across balanced alloc/free.
fn avail() -> usize {
    slab::drain_all();
    buddy::free_page_count() + crate::kasan_glue::frames_held()
}

macro_rules! check {
    ($ok:ident, $cond:expr) => {
        if !$cond {
            println!("selftest: FAILED {} at {}:{}", stringify!($cond), file!(), line!());
            $ok = false;
        }
    };
}

pub fn mm() -> bool {
    let mut ok = true;
    check!(ok, buddy::check_invariants() == 0);
    let free0 = avail();
    // Buddy: every order, then free in reverse; counts return.
    let mut blocks = [0usize; 11];
    for (o, b) in blocks.iter_mut().enumerate() {
        *b = buddy::alloc_pages(o).unwrap_or(0);
        check!(ok, *b != 0 && b.is_multiple_of(4096 << o));
    }
    check!(ok, buddy::check_invariants() == 0);
    for o in (0..=10).rev() {
        buddy::free_pages(blocks[o], o);
    }
    check!(ok, avail() == free0);
    check!(ok, buddy::check_invariants() == 0);
    // split_page: free one page of an 8-page block, then the rest.
    let b = buddy::alloc_pages(3).unwrap();
    buddy::split_page(b, 3);
    buddy::free_pages(b + 2 * 4096, 0);
    check!(ok, buddy::check_invariants() == 0);
    for i in [0, 1, 3, 4, 5, 6, 7] {
        buddy::free_pages(b + i * 4096, 0);
    }
    check!(ok, avail() == free0);
    // Pools: a slab page and a page-granular page never share a pageblock
    // (while both pools have free pageblocks).
    if guest_boot::boot_info().config.pageblocks {
        let pb = |a: usize| a / (buddy::PAGEBLOCK_PAGES * 4096);
        let t1 = buddy::alloc_pages_flags(0, buddy::PG_SLAB).unwrap_or(0);
        let u1 = buddy::alloc_pages(0).unwrap_or(0);
        let t2 = buddy::alloc_pages_flags(0, buddy::PG_SLAB).unwrap_or(0);
        let u2 = buddy::alloc_pages(0).unwrap_or(0);
        check!(ok, t1 != 0 && u1 != 0 && t2 != 0 && u2 != 0);
        check!(ok, pb(t1) != pb(u1) && pb(t2) != pb(u2) && pb(t1) != pb(u2) && pb(t2) != pb(u1));
        check!(ok, buddy::check_invariants() == 0);
        for a in [t1, u1, t2, u2] {
            buddy::free_pages(a, 0);
        }
        check!(ok, avail() == free0);
        check!(ok, buddy::check_invariants() == 0);
    }
    // kmalloc: every size class, write all bytes, free.
    let mut ptrs = [core::ptr::null_mut::<u8>(); 64];
    for (i, &s) in slab::KMALLOC_SIZES.iter().enumerate() {
        for (j, sz) in [s, s - 1, s / 2 + 1].into_iter().enumerate() {
            let p = mm::kmalloc(sz);
            check!(ok, !p.is_null() && (p as usize).is_multiple_of(8));
            if !p.is_null() {
                // SAFETY: kmalloc returned `p` (non-null) for `sz` bytes.
                unsafe { core::ptr::write_bytes(p, 0xa5, sz) };
            }
            ptrs[i * 3 + j] = p;
        }
    }
    check!(ok, slab::check_invariants() == 0);
    for p in ptrs.iter().take(39) {
        mm::kfree(*p);
    }
    check!(ok, slab::check_invariants() == 0);
    // Many small objects: several slabs, freed in another order.
    let mut many = [core::ptr::null_mut::<u8>(); 4000];
    for (i, p) in many.iter_mut().enumerate() {
        *p = mm::kmalloc(24 + i % 40);
        check!(ok, !p.is_null());
    }
    for i in (0..4000).step_by(2).chain((1..4000).step_by(2)) {
        mm::kfree(many[i]);
    }
    check!(ok, slab::check_invariants() == 0);
    // Large kmalloc, kfree through the physical address's alias.
    let l = mm::kmalloc(3 * 4096 + 10);
    check!(ok, !l.is_null() && mm::ksize(l) == 4 * 4096);
    let pa = guest_boot::paging::virt_to_phys(l as u64).unwrap();
    mm::kfree(guest_boot::paging::phys_to_virt(pa) as *const u8);
    // krealloc grows (copy) and shrinks (in place).
    let p = mm::kmalloc(201);
    // SAFETY: a fresh 201-byte kmalloc object.
    unsafe { core::ptr::write_bytes(p, 7, 201) };
    let q = mm::krealloc(p, 235);
    // SAFETY: krealloc to 235 bytes kept the first 201: byte 200 is in bounds.
    check!(ok, unsafe { *q.add(200) } == 7);
    check!(ok, mm::ksize(q) == 256);
    let r = mm::krealloc(q, 3000);
    // SAFETY: r holds 3000 bytes, the first 235 copied from q.
    check!(ok, unsafe { *r.add(200) } == 7 && mm::ksize(r) == 4096);
    let r2 = mm::krealloc(r, 20000);
    // SAFETY: r2 holds 20000 bytes, the first 3000 copied from r.
    check!(ok, unsafe { *r2.add(200) } == 7 && mm::ksize(r2) == 32768);
    let r3 = mm::krealloc(r2, 100);
    // SAFETY: r3 holds 100 bytes: byte 99 is its last.
    check!(ok, unsafe { *r3.add(99) } == 7);
    mm::kfree(r3);
    // Named caches, bulk, double destroy.
    let c = mm::kmem_cache_create("test_cache", 200, 0).unwrap();
    let mut objs = [core::ptr::null_mut::<u8>(); 100];
    check!(ok, mm::kmem_cache_alloc_bulk(c, &mut objs) == 100);
    check!(ok, slab::cache_name_of(objs[5] as usize).map(|x| x.0) == Some("test_cache"));
    mm::kmem_cache_free_bulk(c, &mut objs);
    check!(ok, mm::kmem_cache_destroy(c).is_ok());
    check!(ok, mm::kmem_cache_destroy(c).is_err());
    check!(ok, slab::check_invariants() == 0);
    check!(ok, buddy::check_invariants() == 0);
    check!(ok, avail() == free0);
    println!("selftest mm: free pages {} (start {})", avail(), free0);
    ok
}

pub fn vmalloc() -> bool {
    let mut ok = true;
    let free0 = avail();
    let a = mm::vmalloc(3618);
    let b = mm::vmalloc(5 * 4096 + 1);
    check!(ok, !a.is_null() && !b.is_null() && a as usize >= 0xffff_c900_0000_0000);
    check!(ok, b as usize >= a as usize + 2 * 4096); // guard page between
    // SAFETY: vmalloc mapped 3618 bytes at `a` and 5 * 4096 + 1 at `b`
    // (both checked non-null above); the writes and reads stay inside.
    unsafe {
        core::ptr::write_bytes(a, 1, 3618);
        core::ptr::write_bytes(b, 2, 5 * 4096 + 1);
        check!(ok, *a.add(3617) == 1 && *b.add(5 * 4096) == 2);
    }
    check!(ok, guest_boot::paging::translate(a as u64 + 4096).is_none());
    mm::vfree(a);
    mm::vfree(b);
    check!(ok, guest_boot::paging::translate(b as u64).is_none());
    let c = mm::vmalloc(100);
    check!(ok, c == a); // space reused
    mm::vfree(c);
    // Page-table pages stay allocated; everything else comes back.
    check!(ok, avail() + 4 >= free0);
    check!(ok, buddy::check_invariants() == 0);
    ok
}

static LOG: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];
static NLOG: AtomicUsize = AtomicUsize::new(0);

fn log(v: u32) {
    // Tasks may log from several CPUs at once (smp_sched=on).
    let n = NLOG.fetch_add(1, Relaxed);
    if n < LOG.len() {
        LOG[n].store(v, Relaxed);
    }
}

/// What `log` recorded since the last reset, in order.
fn logged() -> ([u32; 32], usize) {
    let mut out = [0u32; 32];
    let n = NLOG.load(Relaxed).min(LOG.len());
    for (o, l) in out.iter_mut().zip(&LOG[..n]) {
        *o = l.load(Relaxed);
    }
    (out, n)
}

fn worker_fn(arg: usize) {
    for i in 0..3 {
        log(arg as u32 * 10 + i);
        crate::task::yield_now();
    }
}

fn show_trace(_: usize) {
    let (name, pid) = crate::task::current();
    println!("selftest: in task {}/{}, Call Trace:", name, pid);
    guest_boot::stack::print_trace();
}

fn rcu_cb(arg: usize) {
    log(100 + arg as u32);
}

fn work_cb(arg: usize) {
    let (name, _) = crate::task::current();
    if name.starts_with("kworker") {
        log(200 + arg as u32);
    }
}

pub fn tasks() -> bool {
    use crate::task;
    let mut ok = true;
    let free0 = avail();
    let a = task::spawn("worker-a", worker_fn, 1);
    let b = task::spawn("worker-b", worker_fn, 2);
    check!(ok, a != 0 && b != 0 && a != b);
    task::join(a);
    task::join(b);
    let (mut got, n) = logged();
    if task::spread() {
        // On several CPUs the two interleave in any order; each in its own.
        got[..n].sort_unstable();
        check!(ok, got[..n] == [10, 11, 12, 20, 21, 22]);
    } else {
        check!(ok, got[..n] == [10, 20, 11, 21, 12, 22]);
    }
    let t = task::spawn("tracer", show_trace, 0);
    task::join(t);
    NLOG.store(0, Relaxed);
    task::call_rcu(rcu_cb, 1);
    task::call_rcu(rcu_cb, 2);
    check!(ok, NLOG.load(Relaxed) == 0);
    task::rcu_barrier();
    let (got, n) = logged();
    check!(ok, got[..n] == [101, 102]);
    NLOG.store(0, Relaxed);
    task::queue_work(work_cb, 7);
    task::flush_workqueue();
    let (got, n) = logged();
    check!(ok, got[..n] == [207]);
    check!(ok, task::current() == ("kmain", 1));
    // 20 short tasks: stacks come back (kworker keeps one).
    for i in 0..20 {
        let p = task::spawn("short", |_| {}, i);
        task::join(p);
    }
    check!(ok, avail() + 8 >= free0);
    check!(ok, buddy::check_invariants() == 0);
    ok
}
