//! The bug suite on the host model kernel: every case of the guest's case
//! table (tests/guest/src/kasan_cases.rs, `include!`d: the one table of
//! the suite's expectations) that the host can express, in `full` and in
//! `hybrid`, asserting the exact bug types, that the report title names the
//! case's function, and that every report parses under syzkaller's rules.
//! Each case lists its accesses and calls in order as `OK` (must pass) or
//! `BUG` (must report the next of the table's bug types for the case); the
//! verdicts are what the runtime returned, never written by the case.

mod common;

use hybrid_shadow::Size;
use common::syzkaller;
use hybrid_shadow::host::sim::{SimConfig, SimKernel, KMALLOC_MAX_CACHE};
use hybrid_shadow::page_state::PageState;
use hybrid_shadow::{Backing, BugType, CacheError, HookError, Ip, Mode, Platform};

use BugType::*;

/// The guest's case table.
#[allow(dead_code)]
mod table {
    include!("guest/src/kasan_cases.rs");
}

/// Outcome of one bad (or supposedly fine) operation.
type Verdict = Option<BugType>;

fn v<T>(r: Result<T, hybrid_shadow::Bug>) -> Verdict {
    r.err().map(|b| b.kind)
}

/// What one access or call of a table case must do.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Pass, no report.
    Ok,
    /// Report the next of the case's bug types in the table.
    Bug,
}
const OK: Slot = Slot::Ok;
const BUG: Slot = Slot::Bug;

/// The verdicts `slots` stand for in table case `name`: each `BUG` takes
/// the next of the row's bug types, and every type must be taken.
fn from_table(name: &str, slots: &[Slot]) -> Vec<Verdict> {
    let row = table::KASAN_CASES.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} is not in the case table"));
    let mut types = row.expect.iter();
    let out = slots
        .iter()
        .map(|s| match s {
            Slot::Ok => None,
            Slot::Bug => {
                let t = types.next().unwrap_or_else(|| panic!("{name}: more BUG slots than the table's {:?}", row.expect));
                Some(BugType::from_name(t).unwrap_or_else(|| panic!("{name}: unknown bug type {t}")))
            }
        })
        .collect();
    assert!(types.next().is_none(), "{name}: fewer BUG slots than the table's {:?}", row.expect);
    out
}

/// Run `body` as function `name` in `mode`; check its verdicts against
/// `expected`, and the reports' titles against the verdicts.
fn run(mode: Mode, name: &str, expected: &[Verdict], body: fn(&mut SimKernel, Mode) -> Vec<Verdict>) {
    let mut k = SimKernel::new(SimConfig::small(mode)).expect("model kernel");
    let got = k.call(name, |k| body(k, mode));
    let log = k.take_log();
    assert_eq!(got, expected, "{mode:?} {name}: verdicts differ\n{log}");
    let titles = syzkaller::titles(&log);
    let bugs: Vec<BugType> = got.iter().flatten().copied().collect();
    assert_eq!(titles.len(), bugs.len(), "{mode:?} {name}: one report per bug\n{log}");
    for (t, b) in titles.iter().zip(&bugs) {
        assert_eq!(t.bug, b.name(), "{mode:?} {name}\n{log}");
        assert_eq!(t.func, name, "{mode:?} {name}: title must name the case\n{log}");
    }
    k.check_invariants().unwrap();
}

/// A case of the table: `[OK, BUG, ...]` in the order of the body's verdicts.
macro_rules! case {
    ($name:ident, [$($slot:expr),* $(,)?], $body:expr) => {
        mod $name {
            use super::*;
            const SLOTS: &[Slot] = &[$($slot),*];
            #[test]
            fn full() {
                run(Mode::Full, stringify!($name), &from_table(stringify!($name), SLOTS), $body);
            }
            #[test]
            fn hybrid() {
                run(Mode::Hybrid, stringify!($name), &from_table(stringify!($name), SLOTS), $body);
            }
        }
    };
}

/// A host-only case (not in the guest's table): its verdicts written out.
macro_rules! host_case {
    ($name:ident, [$($exp:expr),* $(,)?], $body:expr) => {
        mod $name {
            use super::*;
            const EXPECTED: &[Verdict] = &[$($exp),*];
            #[test]
            fn full() {
                run(Mode::Full, stringify!($name), EXPECTED, $body);
            }
            #[test]
            fn hybrid() {
                run(Mode::Hybrid, stringify!($name), EXPECTED, $body);
            }
        }
    };
}

case!(kmalloc_oob_right, [BUG, BUG, BUG, OK], |k, _| {
    let size = 128 - 5;
    let p = k.kmalloc(size).unwrap();
    let r = vec![v(k.write(p + size, 1)), v(k.read(p + size + 5, 1)), v(k.read(p + 128 + 8, 1)), v(k.read(p, size))];
    k.kfree(p).unwrap();
    r
});

case!(kmalloc_oob_left, [BUG], |k, _| {
    let p = k.kmalloc(15).unwrap();
    vec![v(k.read(p - 1, 1))]
});

case!(kmalloc_node_oob_right, [BUG], |k, _| {
    let p = k.kmalloc(4096).unwrap();
    vec![v(k.read(p + 4096, 1))]
});

case!(kmalloc_big_oob_right, [BUG], |k, _| {
    let size = KMALLOC_MAX_CACHE - 256;
    let p = k.kmalloc(size).unwrap();
    vec![v(k.write(p + size, 1))]
});

case!(kmalloc_large_oob_right, [BUG, OK], |k, _| {
    let size = KMALLOC_MAX_CACHE + 10;
    let p = k.kmalloc(size).unwrap();
    vec![v(k.write(p + size, 1)), v(k.write(p + size - 1, 1))]
});

case!(kmalloc_large_uaf, [OK, BUG], |k, _| {
    let p = k.kmalloc(KMALLOC_MAX_CACHE + 10).unwrap();
    vec![v(k.kfree(p)), v(k.read(p, 1))]
});

case!(kmalloc_large_invalid_free, [BUG, OK], |k, _| {
    let p = k.kmalloc(KMALLOC_MAX_CACHE + 10).unwrap();
    vec![v(k.kfree(p + 1)), v(k.kfree(p))]
});

case!(page_alloc_uaf, [OK, BUG], |k, _| {
    let p = k.alloc_pages(4).unwrap();
    vec![v(k.free_pages(p, 4)), v(k.read(p, 1))]
});

case!(krealloc_more_oob, [OK, OK, BUG], |k, _| {
    let p = k.kmalloc(201).unwrap();
    let q = k.krealloc(p, 235).unwrap();
    assert_eq!(p, q, "kmalloc-256 grows in place");
    vec![v(k.read(q + 201, 34)), v(k.read(q, 235)), v(k.read(q + 235, 1))]
});

case!(krealloc_less_oob, [OK, BUG, BUG], |k, _| {
    let p = k.kmalloc(235).unwrap();
    let q = k.krealloc(p, 201).unwrap();
    vec![v(k.read(q, 201)), v(k.read(q + 201, 1)), v(k.read(q + 234, 1))]
});

case!(krealloc_large_more_oob, [OK, BUG], |k, _| {
    let base = KMALLOC_MAX_CACHE + 1000;
    let p = k.kmalloc(base + 201).unwrap();
    let q = k.krealloc(p, base + 235).unwrap();
    vec![v(k.read(q + base + 201, 34)), v(k.read(q + base + 235, 1))]
});

case!(krealloc_large_less_oob, [OK, BUG], |k, _| {
    let base = KMALLOC_MAX_CACHE + 1000;
    let p = k.kmalloc(base + 235).unwrap();
    let q = k.krealloc(p, base + 201).unwrap();
    vec![v(k.read(q, base + 201)), v(k.read(q + base + 201, 1))]
});

case!(krealloc_uaf, [BUG], |k, _| {
    let p = k.kmalloc(201).unwrap();
    k.kfree(p).unwrap();
    // krealloc checks the first byte, reports, and returns null
    vec![v(k.try_krealloc(p, 235))]
});

case!(kmalloc_oob_16, [BUG], |k, _| {
    let p = k.kmalloc(13).unwrap();
    let q = k.kmalloc(16).unwrap();
    let r = vec![v(k.read(p, 16))];
    k.kfree(q).unwrap();
    r
});

case!(kmalloc_uaf_16, [BUG], |k, _| {
    let p = k.kmalloc(16).unwrap();
    k.kfree(p).unwrap();
    vec![v(k.read(p, 16))]
});

case!(kmalloc_oob_in_memset, [BUG], |k, _| {
    let size = 128 - 5;
    let p = k.kmalloc(size).unwrap();
    vec![v(k.write(p, size + 1))]
});

case!(kmalloc_oob_memset_2, [BUG], |k, _| memset_straddle(k, 2));
case!(kmalloc_oob_memset_4, [BUG], |k, _| memset_straddle(k, 4));
case!(kmalloc_oob_memset_8, [BUG], |k, _| memset_straddle(k, 8));
case!(kmalloc_oob_memset_16, [BUG], |k, _| memset_straddle(k, 16));

fn memset_straddle(k: &mut SimKernel, n: usize) -> Vec<Verdict> {
    let size = 128 - 5;
    let p = k.kmalloc(size).unwrap();
    vec![v(k.write(p + size - 1, n))]
}

case!(kmalloc_memmove_negative_size, [BUG], |k, _| {
    let p = k.kmalloc(64).unwrap();
    vec![v(k.read(p + 4, (-2isize) as usize))]
});

case!(kmalloc_memmove_invalid_size, [BUG], |k, _| {
    let p = k.kmalloc(64).unwrap();
    vec![v(k.read(p + 4, 64))]
});

case!(kmalloc_uaf, [BUG], |k, _| {
    let p = k.kmalloc(10).unwrap();
    k.kfree(p).unwrap();
    vec![v(k.read(p + 8, 1))]
});

case!(kmalloc_uaf_memset, [BUG], |k, _| {
    let p = k.kmalloc(33).unwrap();
    k.kfree(p).unwrap();
    vec![v(k.write(p, 33))]
});

case!(kmalloc_uaf2, [BUG, OK], |k, _| {
    let p1 = k.kmalloc(43).unwrap();
    k.kfree(p1).unwrap();
    let p2 = k.kmalloc(43).unwrap();
    assert_ne!(p1, p2, "quarantine keeps the freed slot");
    vec![v(k.read(p1 + 40, 1)), v(k.read(p2 + 40, 1))]
});

case!(kmalloc_double_kzfree, [OK, BUG], |k, _| {
    let p = k.kmalloc(16).unwrap();
    vec![v(k.kfree_sensitive(p)), v(k.kfree_sensitive(p))]
});

case!(ksize_unpoisons_memory, [OK, BUG], |k, _| {
    let p = k.kmalloc(123).unwrap();
    let real = k.ksize(p);
    assert_eq!(real, 128);
    vec![v(k.read(p + 123, 5)), v(k.read(p + real, 1))]
});

case!(ksize_uaf, [BUG, BUG, BUG], |k, _| {
    let p = k.kmalloc(128 - 5).unwrap();
    k.kfree(p).unwrap();
    // ksize checks the first byte, reports, and gives 0 (here the bug)
    vec![v(k.try_ksize(p)), v(k.read(p, 1)), v(k.read(p + 120, 1))]
});

case!(kmem_cache_oob, [BUG], |k, _| {
    let c = k.kmem_cache_create("test_cache", 200).unwrap();
    let p = k.cache_alloc(c, 200).unwrap();
    vec![v(k.read(p + 200, 1))]
});

case!(kmem_cache_double_free, [OK, BUG], |k, _| {
    let c = k.kmem_cache_create("test_cache", 200).unwrap();
    let p = k.cache_alloc(c, 200).unwrap();
    vec![v(k.cache_free(c, p)), v(k.cache_free(c, p))]
});

case!(kmem_cache_invalid_free, [BUG, OK], |k, _| {
    let c = k.kmem_cache_create("test_cache", 200).unwrap();
    let p = k.cache_alloc(c, 200).unwrap();
    vec![v(k.cache_free(c, p + 1)), v(k.cache_free(c, p))]
});

case!(kmem_cache_double_destroy, [], |k, _| {
    let c = k.kmem_cache_create("test_cache", 200).unwrap();
    assert_eq!(k.kmem_cache_destroy(c), Ok(()));
    assert_eq!(k.kmem_cache_destroy(c), Err(HookError::Cache(CacheError::AlreadyDestroyed)));
    vec![]
});

case!(kmem_cache_bulk, [], |k, _| {
    let c = k.kmem_cache_create("test_cache", 200).unwrap();
    let objs = k.cache_alloc_bulk(c, 200, 10).unwrap();
    for &p in &objs {
        k.write(p, 200).unwrap();
    }
    for p in objs {
        k.cache_free(c, p).unwrap();
    }
    k.kmem_cache_destroy(c).unwrap();
    vec![]
});

case!(kfree_via_page, [], |k, _| {
    let p = k.kmalloc(8).unwrap();
    let page = p & !4095;
    let off = p & 4095;
    k.kfree(page + off).unwrap();
    vec![]
});

case!(kfree_via_phys, [], |k, _| {
    let p = k.kmalloc(8).unwrap();
    let base = k.kasan.layout().direct_map.start;
    let phys = p - base;
    k.kfree(base + phys).unwrap();
    vec![]
});

case!(kasan_global_oob_right, [BUG, OK], |k, _| {
    let _pad = k.define_global(64).unwrap();
    let g = k.define_global(10).unwrap();
    vec![v(k.read(g + 13, 1)), v(k.read(g + 9, 1))]
});

case!(kasan_global_oob_left, [BUG], |k, _| {
    let _pad = k.define_global(64).unwrap();
    let g = k.define_global(10).unwrap();
    vec![v(k.read(g - 1, 1))]
});

/// A frame the way the compiler lays it out: 32-byte left redzone, a
/// 10-byte array, right redzone; poisoned through the same entry points
/// `__asan_set_shadow_*` use.
fn stack_frame(k: &mut SimKernel) -> usize {
    let stack = k.stack_alloc().unwrap();
    let frame = stack + 16384 - 128;
    k.kasan.poison_range(frame, Size(32), 0xF1);
    k.kasan.unpoison_range(frame + 32, Size(10));
    k.kasan.poison_range(frame + 48, Size(32), 0xF3);
    frame + 32
}

case!(kasan_stack_oob, [OK, BUG], |k, _| {
    let a = stack_frame(k);
    vec![v(k.read(a + 9, 1)), v(k.read(a + 10, 1))]
});

case!(kasan_alloca_oob_left, [BUG], |k, _| {
    let stack = k.stack_alloc().unwrap();
    let buf = stack + 8192;
    k.kasan.alloca_poison(buf, Size(10)).unwrap();
    vec![v(k.read(buf - 1, 1))]
});

case!(kasan_alloca_oob_right, [OK, BUG], |k, _| {
    let stack = k.stack_alloc().unwrap();
    let buf = stack + 8192;
    k.kasan.alloca_poison(buf, Size(10)).unwrap();
    let r = vec![v(k.read(buf, 10)), v(k.read(buf + 10, 1))];
    k.kasan.allocas_unpoison(buf - 32, buf + 64);
    assert_eq!(k.read(buf + 10, 1), Ok(()));
    r
});

case!(kasan_memchr, [BUG], |k, _| {
    let p = k.kmalloc(24).unwrap();
    vec![v(k.read(p, 25))]
});

case!(kasan_memcmp, [BUG], |k, _| {
    let p = k.kmalloc(24).unwrap();
    let q = k.kmalloc(24).unwrap();
    vec![v(k.read(q, 24).and(k.read(p, 25)))]
});

case!(kasan_strings, [BUG, BUG, BUG, BUG], |k, _| {
    let p = k.kmalloc(16).unwrap();
    k.kfree(p).unwrap();
    // strchr, strrchr, strcmp, strlen: each reads the first byte
    (0..4).map(|_| v(k.read(p, 1))).collect()
});

case!(kasan_bitops_generic, [OK, BUG, BUG], |k, _| {
    let p = k.kmalloc(8).unwrap();
    vec![v(k.write(p, 8)), v(k.write(p + 8, 8)), v(k.read(p + 8, 8))]
});

case!(kasan_atomics, [BUG, BUG], |k, _| {
    let p = k.kmalloc(48).unwrap();
    vec![v(k.read(p + 48, 4)), v(k.write(p + 48, 8))]
});

case!(vmalloc_oob, [OK, BUG, BUG], |k, _| {
    let size = 3618;
    let p = k.vmalloc(size).unwrap();
    let r = vec![v(k.read(p, size)), v(k.read(p + size, 1)), v(k.read(p + 5000, 1))];
    k.vfree(p);
    r
});

case!(rcu_uaf, [BUG], |k, _| deferred_uaf(k));
case!(workqueue_uaf, [BUG], |k, _| deferred_uaf(k));

/// A callback queued now runs after the object was freed.
fn deferred_uaf(k: &mut SimKernel) -> Vec<Verdict> {
    let p = k.kmalloc(32).unwrap();
    type Callback = Box<dyn FnOnce(&SimKernel) -> Verdict>;
    let queue: Vec<Callback> = vec![Box::new(move |k| v(k.read(p + 8, 8)))];
    k.kfree(p).unwrap();
    queue.into_iter().map(|cb| cb(k)).collect()
}

case!(stack_uaf_after_task_exit, [BUG], |k, _| {
    let stack = k.stack_alloc().unwrap();
    let saved = stack + 16384 - 64;
    k.stack_free(stack).unwrap();
    vec![v(k.read(saved, 8))]
});

case!(page_uaf_in_mixed_block, [BUG, OK, OK], |k, mode| {
    // Eight order-0 pages of one block; free one, the others stay in use.
    let pages: Vec<usize> = (0..8).map(|_| k.alloc_pages(0).unwrap()).collect();
    assert!(pages.windows(2).all(|w| w[1] == w[0] + 4096) && pages[0].is_multiple_of(32 << 10));
    k.free_pages(pages[3], 0).unwrap();
    let pfn = k.kasan.pages().pfn(pages[3]).unwrap();
    assert_eq!(k.kasan.pages().get(pfn).state, PageState::Free);
    let slow_before = k.kasan.stats().slow_path_checks;
    let r = vec![v(k.read(pages[3] + 100, 4)), v(k.read(pages[2], 8)), v(k.read(pages[4] + 4088, 8))];
    if mode == Mode::Hybrid {
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Consult);
        assert_eq!(k.kasan.stats().slow_path_checks - slow_before, 3, "mixed block takes the slow path");
        // the whole block free again: back to the shared 0xFF page
        for (i, &p) in pages.iter().enumerate() {
            if i != 3 {
                k.free_pages(p, 0).unwrap();
            }
        }
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Free);
    }
    r
});

case!(slab_page_returned_uaf, [BUG, BUG], |k, mode| {
    let c = k.kmem_cache_create("returned", 200).unwrap();
    let first = k.cache_alloc(c, 200).unwrap();
    let slab = first & !4095;
    let mut objs = vec![first];
    while let Some(p) = k.cache_alloc(c, 200) {
        if p & !4095 != slab {
            k.cache_free(c, p).unwrap();
            break;
        }
        objs.push(p);
    }
    let pfn = k.kasan.pages().pfn(slab).unwrap();
    if mode == Mode::Hybrid {
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private);
    }
    for &p in &objs {
        k.cache_free(c, p).unwrap();
    }
    k.drain_quarantine();
    assert_eq!(k.kasan.pages().get(pfn).state, PageState::Free, "slab page went back");
    if mode == Mode::Hybrid {
        assert_ne!(k.kasan.backing_of_pfn(pfn), Backing::Private, "its shadow page was returned");
    }
    vec![v(k.read(first, 8)), v(k.read(*objs.last().unwrap() + 16, 1))]
});

// ---- Linux's remaining generic cases the model kernel can express ----------

case!(kmalloc_track_caller_oob_right, [BUG, BUG], |k, _| {
    // The model kernel's kmalloc is its kmalloc_track_caller (the
    // allocation stack is the whole call chain either way).
    let size = 128 - 8;
    let mut r = vec![];
    for _ in 0..2 {
        let p = k.kmalloc(size).unwrap();
        r.push(v(k.write(p + size, 1)));
        k.kfree(p).unwrap();
    }
    r
});

/// A mempool's reserve as the runtime sees it: poison a kmalloc element
/// into the reserve (slab object or page-backed, as its size makes it).
fn pool_poison(k: &mut SimKernel, e: usize, order: u32) -> Verdict {
    let ip = Ip(k.ip());
    match k.plat.slab_of(e) {
        Some(s) => v(k.kasan.mempool_poison_object(s.cache, s.base, e, ip)),
        None => v(k.kasan.mempool_poison_large(e, order, ip)),
    }
}

/// Take a kmalloc element of `size` bytes out of the reserve again.
fn pool_unpoison(k: &mut SimKernel, e: usize, size: usize, order: u32) {
    match k.plat.slab_of(e) {
        Some(s) => k.kasan.mempool_unpoison_object(s.cache, e, Size(size)).unwrap(),
        None => k.kasan.kmalloc_large(e, order, Size(size)).unwrap(),
    }
}

/// Order of a page-backed kmalloc of `size` bytes in the model kernel.
fn large_order(size: usize) -> u32 {
    (0..).find(|&o| 4096usize << o >= size).unwrap()
}

case!(mempool_kmalloc_oob_right, [OK, OK, BUG], |k, _| {
    let size = 128 - 8 - 5;
    let e = k.kmalloc(size).unwrap();
    let r = vec![pool_poison(k, e, 0), { pool_unpoison(k, e, size, 0); v(k.read(e, size)) }, v(k.read(e + size, 1))];
    k.kfree(e).unwrap();
    r
});

case!(mempool_kmalloc_large_oob_right, [OK, OK, BUG], |k, _| {
    let size = KMALLOC_MAX_CACHE + 1;
    let o = large_order(size);
    let e = k.kmalloc(size).unwrap();
    let r = vec![pool_poison(k, e, o), { pool_unpoison(k, e, size, o); v(k.read(e, size)) }, v(k.read(e + size, 1))];
    k.kfree(e).unwrap();
    r
});

case!(mempool_kmalloc_uaf, [OK, BUG, OK], |k, _| {
    let e = k.kmalloc(128).unwrap();
    let r = vec![pool_poison(k, e, 0), v(k.read(e, 1)), {
        pool_unpoison(k, e, 128, 0);
        v(k.read(e, 128))
    }];
    k.kfree(e).unwrap();
    r
});

case!(mempool_kmalloc_large_uaf, [OK, BUG, OK], |k, _| {
    let size = KMALLOC_MAX_CACHE + 1;
    let o = large_order(size);
    let e = k.kmalloc(size).unwrap();
    let r = vec![pool_poison(k, e, o), v(k.read(e, 1)), {
        pool_unpoison(k, e, size, o);
        v(k.read(e, size))
    }];
    k.kfree(e).unwrap();
    r
});

case!(mempool_page_alloc_uaf, [OK, BUG, OK], |k, _| {
    // A page pool's reserve: its pages are free for the runtime.
    let e = k.alloc_pages(2).unwrap();
    let ip = Ip(k.ip());
    let r = vec![v(k.kasan.page_free(e, 2, ip)), v(k.read(e, 1)), {
        k.kasan.page_alloc(e, 2).unwrap();
        v(k.read(e, 4 * 4096))
    }];
    k.free_pages(e, 2).unwrap();
    r
});

case!(mempool_kmalloc_double_free, [OK, BUG], |k, _| {
    let e = k.kmalloc(128).unwrap();
    let r = vec![pool_poison(k, e, 0), pool_poison(k, e, 0)];
    pool_unpoison(k, e, 128, 0);
    k.kfree(e).unwrap();
    r
});

case!(mempool_kmalloc_large_double_free, [OK, BUG], |k, _| {
    let size = KMALLOC_MAX_CACHE + 1;
    let o = large_order(size);
    let e = k.kmalloc(size).unwrap();
    let r = vec![pool_poison(k, e, o), pool_poison(k, e, o)];
    pool_unpoison(k, e, size, o);
    k.kfree(e).unwrap();
    r
});

case!(mempool_page_alloc_double_free, [OK, BUG], |k, _| {
    let e = k.alloc_pages(2).unwrap();
    let ip = Ip(k.ip());
    let r = vec![v(k.kasan.page_free(e, 2, ip)), v(k.kasan.page_free(e, 2, ip))];
    k.kasan.page_alloc(e, 2).unwrap();
    k.free_pages(e, 2).unwrap();
    r
});

case!(mempool_kmalloc_invalid_free, [BUG, OK, OK], |k, _| {
    let e = k.kmalloc(128).unwrap();
    let r = vec![pool_poison(k, e + 1, 0), v(k.read(e, 128)), pool_poison(k, e, 0)];
    pool_unpoison(k, e, 128, 0);
    k.kfree(e).unwrap();
    r
});

case!(mempool_kmalloc_large_invalid_free, [BUG, OK, OK], |k, _| {
    let size = KMALLOC_MAX_CACHE + 1;
    let o = large_order(size);
    let e = k.kmalloc(size).unwrap();
    let r = vec![pool_poison(k, e + 1, o), v(k.read(e, size)), pool_poison(k, e, o)];
    pool_unpoison(k, e, size, o);
    k.kfree(e).unwrap();
    r
});

host_case!(slab_page_in_mixed_block_uaf, [Some(SlabUseAfterFree), Some(UseAfterFree), None], |k, mode| {
    // A plain page, a free page and a slab page share a block: while the
    // block is private the free page must stay use-after-free.
    let plain: Vec<usize> = (0..2).map(|_| k.alloc_pages(0).unwrap()).collect();
    let c = k.kmem_cache_create("mixed", 64).unwrap();
    let p = k.cache_alloc(c, 64).unwrap();
    assert_eq!(p >> 15, plain[0] >> 15, "same 32 KiB block");
    k.free_pages(plain[1], 0).unwrap();
    let pfn = k.kasan.pages().pfn(plain[0]).unwrap();
    if mode == Mode::Hybrid {
        assert_eq!(k.kasan.backing_of_pfn(pfn), Backing::Private, "block went private");
    }
    k.cache_free(c, p).unwrap();
    vec![v(k.read(p, 1)), v(k.read(plain[1], 1)), v(k.read(plain[0], 8))]
});
