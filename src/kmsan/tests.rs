//! Host tests of the KMSAN runtime: states, transitions and reports, each
//! in `full` and `hybrid`.

use crate::kmsan::AllocInit;
use crate::config::Mode;
use crate::error::{PageError, SlabError};
use crate::hooks::Size;
use crate::host::kmsan::KmsanHost;
use crate::kmsan::origin::{self, NO_ORIGIN};
use crate::backing::Backing;
use crate::mapper::PAGE_SIZE;
use crate::report::BugType;

fn host(mode: Mode) -> KmsanHost {
    KmsanHost::new(mode, 4 << 20, 4 << 20, 256 << 10).expect("host kmsan")
}

const MODES: [Mode; 2] = [Mode::Full, Mode::Hybrid];

/// A slab page with one object at its start.
fn slab_object(h: &mut KmsanHost, pfn: usize, size: usize, init: AllocInit) -> usize {
    let page = h.ram() + pfn * PAGE_SIZE;
    h.kmsan.page_alloc(page, 0, AllocInit::Uninit).unwrap();
    h.kmsan.slab_page_alloc(page, 0).unwrap();
    h.call("kmalloc_caller", |h| h.kmsan.slab_alloc(page, Size(size), init)).unwrap();
    page
}

#[test]
fn uninit_slab_object_has_its_allocation_as_origin() {
    for mode in MODES {
        let h = &mut host(mode);
        let p = slab_object(h, 3, 64, AllocInit::Uninit);
        let (sh, o) = h.load(p, 4);
        assert_eq!(sh, [0xFF; 4], "{mode:?}");
        assert_ne!(o, NO_ORIGIN);
        assert!(!origin::is_uaf(o));
        h.store(p, &[0; 4], NO_ORIGIN);
        assert_eq!(h.load(p, 4).0, [0; 4], "{mode:?}: a store initializes");
        assert_eq!(h.load(p + 4, 4).0, [0xFF; 4]);
        let z = slab_object(h, 5, 16, AllocInit::Zeroed);
        assert_eq!(h.load(z, 8).0, [0; 8], "{mode:?}: kzalloc");
        assert_eq!(h.kmsan.page_meta(p).unwrap().backing, Backing::Private);
    }
}

#[test]
fn hybrid_pages_stay_shared_until_partly_written() {
    let h = &mut host(Mode::Hybrid);
    let page = h.ram() + 7 * PAGE_SIZE;
    let live = |h: &KmsanHost| h.kmsan.stats().ondemand_live_pages;
    let before = live(h);
    h.call("alloc_pages_caller", |h| h.kmsan.page_alloc(page, 0, AllocInit::Uninit)).unwrap();
    assert_eq!(h.kmsan.page_meta(page).unwrap().backing, Backing::UNINIT);
    let (sh, o) = h.load(page + 100, 8);
    assert_eq!((sh, live(h)), (std::vec![0xFF; 8], before));
    assert_ne!(o, NO_ORIGIN, "the per-page origin is the allocation");
    // A partial write makes the page private, keeping the rest uninit.
    h.store(page + 8, &[0; 8], NO_ORIGIN);
    h.settle();
    assert_eq!(h.kmsan.page_meta(page).unwrap().backing, Backing::Private);
    assert_eq!(h.load(page + 8, 8).0, [0; 8]);
    assert_eq!(h.load(page + 16, 8), (std::vec![0xFF; 8], o));
    assert_eq!(live(h), before + 1, "a shadow page; the origin stays page-wide");
    assert!(!h.kmsan.page_meta(page).unwrap().origin_private);
    // Initializing the whole page returns it to the shared zero page.
    h.kmsan.unpoison_memory(page, PAGE_SIZE);
    assert_eq!(h.kmsan.page_meta(page).unwrap().backing, Backing::INIT);
    assert_eq!(live(h), before);
    // Initialized data stored into an initialized page costs nothing...
    h.store(page + 24, &[0; 8], NO_ORIGIN);
    h.settle();
    assert_eq!((h.kmsan.page_meta(page).unwrap().backing, live(h)), (Backing::INIT, before));
    // ...uninitialized data makes it private with the value's origin.
    let vo = origin::make(77, 0, false);
    h.store(page + 32, &[0, 0xFF, 0, 0], vo);
    assert_eq!(h.load(page + 32, 4), (std::vec![0, 0xFF, 0, 0], vo), "the load settles first");
    assert_eq!(h.kmsan.page_meta(page).unwrap().backing, Backing::Private);
    h.call("free_pages_caller", |h| h.kmsan.page_free(page, 0)).unwrap();
    assert_eq!(live(h), before, "freeing returns the private pages");
    let (sh, o) = h.load(page, 4);
    assert_eq!(sh, [0xFF; 4]);
    assert!(origin::is_uaf(o));
}

#[test]
fn an_origin_page_is_mapped_only_for_a_second_origin() {
    let h = &mut host(Mode::Hybrid);
    // A fresh slab page whose free part is uninitialized has the page
    // allocation's origin there: a first object already needs a second.
    let fresh = slab_object(h, 6, 64, AllocInit::Uninit);
    assert!(h.kmsan.page_meta(fresh).unwrap().origin_private);
    assert_ne!(h.load(fresh, 4).1, h.load(fresh + 64, 4).1);
    // On a zeroed slab page the object's allocation is the only origin.
    let page = h.ram() + 4 * PAGE_SIZE;
    h.kmsan.page_alloc(page, 0, AllocInit::Zeroed).unwrap();
    h.kmsan.slab_page_alloc(page, 0).unwrap();
    h.call("kmalloc_caller", |h| h.kmsan.slab_alloc(page, Size(64), AllocInit::Uninit)).unwrap();
    let live = |h: &KmsanHost| h.kmsan.stats().ondemand_live_pages;
    let a = h.load(page, 4).1;
    let p = |h: &KmsanHost| h.kmsan.page_meta(page).unwrap();
    assert!(!p(h).origin_private, "one uninitialized object: its allocation is the page's origin");
    let before = live(h);
    // A second object, allocated elsewhere, while the first is uninit.
    h.call("other_caller", |h| h.kmsan.slab_alloc(page + 64, Size(64), AllocInit::Uninit)).unwrap();
    let b = h.load(page + 64, 4).1;
    assert_ne!(a, b);
    assert!(p(h).origin_private, "two origins need the origin page");
    assert_eq!(live(h), before + 1);
    assert_eq!((h.load(page, 8).1, h.load(page + 120, 8).1), (a, b));
    // Once no uninitialized byte is left, a new origin is page-wide again.
    let q = h.ram() + 5 * PAGE_SIZE;
    h.kmsan.page_alloc(q, 0, AllocInit::Zeroed).unwrap();
    h.kmsan.slab_page_alloc(q, 0).unwrap();
    h.call("kmalloc_caller", |h| h.kmsan.slab_alloc(q, Size(64), AllocInit::Uninit)).unwrap();
    h.store(q, &[0; 16], NO_ORIGIN);
    h.store(q + 16, &[0; 16], NO_ORIGIN);
    h.store(q + 32, &[0; 16], NO_ORIGIN);
    h.store(q + 48, &[0; 16], NO_ORIGIN);
    h.call("third_caller", |h| h.kmsan.slab_alloc(q + 64, Size(32), AllocInit::Uninit)).unwrap();
    let c = h.load(q + 64, 4).1;
    assert!(!h.kmsan.page_meta(q).unwrap().origin_private, "the first object is initialized");
    assert_ne!(c, NO_ORIGIN);
    // An unaligned store that touches one slot more paints it too.
    let vo = origin::make(99, 0, false);
    h.store(q + 2, &[0xFF; 4], vo);
    assert_eq!(h.load(q + 4, 1), (std::vec![0xFF], vo), "the slot past ceil(4 / 4) slots has the value's origin");
    assert!(h.kmsan.page_meta(q).unwrap().origin_private, "q + 64 still has its own origin");
    assert_eq!(h.load(q + 64, 4).1, c);
    // The origin of a partly initialized value is its first uninit byte's.
    assert_eq!(h.load(q + 8, 8).0, [0; 8]);
    assert_eq!(h.load(q + 8, 8).1, NO_ORIGIN, "an initialized value has no origin");
    assert_eq!(h.load(q + 60, 8), (std::vec![0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], c));
}

#[test]
fn full_maps_two_pages_per_ram_page_at_init_hybrid_almost_nothing() {
    let f = host(Mode::Full);
    let hy = host(Mode::Hybrid);
    let ram_pages = (4 << 20) / PAGE_SIZE;
    let image_pages = (256 << 10) / PAGE_SIZE;
    assert_eq!(f.kmsan.stats().init_shadow_pages, 2 * (ram_pages + image_pages));
    assert_eq!(hy.kmsan.stats().init_shadow_pages, 2 * image_pages);
    assert_eq!(hy.kmsan.stats().ondemand_live_pages, 0);
}

#[test]
fn uninit_copied_from_slab_into_a_page_is_reported_in_both_modes() {
    let mut logs = std::vec::Vec::new();
    for mode in MODES {
        let h = &mut host(mode);
        let obj = slab_object(h, 1, 32, AllocInit::Uninit);
        h.store(obj, &[0; 16], NO_ORIGIN); // first half initialized
        let page = h.ram() + 9 * PAGE_SIZE;
        h.kmsan.page_alloc(page, 0, AllocInit::Zeroed).unwrap();
        h.call("copy_to_page_cache", |h| h.kmsan.copy_meta(page + 64, obj, 32));
        h.settle();
        assert!(h.kmsan.check_memory(page + 64, 16, h.plat.func("reader")).is_ok(), "{mode:?}");
        let bug = h.kmsan.check_memory(page + 64, 32, h.plat.func("reader")).unwrap_err();
        assert_eq!(bug.kind, BugType::UninitValue);
        let log = h.take_log();
        assert!(log.contains("BUG: KMSAN: uninit-value in reader+0x2a/0x100"), "{log}");
        assert!(log.contains("Uninit was stored to memory at:\n copy_to_page_cache+0x2a/0x100"), "{log}");
        assert!(log.contains("Uninit was created at:\n kmalloc_caller+0x2a/0x100"), "{log}");
        assert!(log.contains("Bytes 16-31 of 32 are uninitialized"), "{log}");
        logs.push(log.replace(&std::format!("{:016x}", page + 64), "ADDR"));
    }
    assert_eq!(logs[0], logs[1], "full and hybrid print the same report");
}

#[test]
fn freed_object_use_is_use_after_free() {
    for mode in MODES {
        let h = &mut host(mode);
        let obj = slab_object(h, 2, 80, AllocInit::Uninit);
        h.store(obj, &[0; 8], NO_ORIGIN);
        h.call("kfree_caller", |h| h.kmsan.slab_free(obj, Size(80))).unwrap();
        let (sh, o) = h.load(obj, 8);
        assert_eq!(sh, [0xFF; 8]);
        let bug = h.kmsan.warning(o, h.plat.func("test_uaf"));
        assert_eq!(bug.kind, BugType::UseAfterFree, "{mode:?}");
        let log = h.take_log();
        assert!(log.contains("BUG: KMSAN: use-after-free in test_uaf+0x"), "{log}");
        assert!(log.contains("Uninit was created at:\n kfree_caller+"), "{log}");
    }
}

#[test]
fn origin_chain_is_cut_at_the_maximum_depth() {
    for mode in MODES {
        let h = &mut host(mode);
        let obj = slab_object(h, 4, 64, AllocInit::Uninit);
        let mut o = h.load(obj, 4).1;
        for d in 0..2 * origin::MAX_DEPTH {
            o = h.call(&std::format!("store_level_{d}"), |h| h.kmsan.chain_origin(o));
        }
        assert_eq!(origin::depth(o), origin::MAX_DEPTH);
        assert!(origin::is_cut(o));
        h.kmsan.warning(o, h.plat.func("test_long_origin_chain"));
        let log = h.take_log();
        assert!(log.contains("<Zero or more stacks not recorded to save memory>"), "{log}");
        assert_eq!(log.matches("Uninit was stored to memory at:").count(), origin::MAX_DEPTH as usize, "{log}");
        assert!(log.contains("Uninit was created at:\n kmalloc_caller"), "{log}");
    }
}

#[test]
fn local_variable_origin_names_the_variable() {
    for mode in MODES {
        let h = &mut host(mode);
        let stack = h.ram() + 16 * PAGE_SIZE;
        h.kmsan.page_alloc(stack, 2, AllocInit::Uninit).unwrap();
        h.kmsan.stack_alloc(stack, 2).unwrap();
        let pc = h.plat.func("do_uninit_local");
        h.kmsan.poison_alloca(stack + 100, 4, b"----uninit.sroa.0@do_uninit_local", pc, h.plat.func("its_caller"));
        let (sh, o) = h.load(stack + 100, 4);
        assert_eq!(sh, [0xFF; 4]);
        h.kmsan.warning(o, h.plat.func("test_uninit_stack_var"));
        let log = h.take_log();
        assert!(log.contains("Local variable uninit created at:\n do_uninit_local+0x2a/0x100\n its_caller+0x2a/0x100\n"), "{log}");
        h.kmsan.unpoison_alloca(stack + 100, 4);
        assert_eq!(h.load(stack + 100, 4).0, [0; 4]);
    }
}

#[test]
fn memcpy_keeps_origins_across_initialized_gaps() {
    // test_memcpy_initialized_gap: src bytes 2,3,8,9 uninit; copy src[2..10] to dst.
    for mode in MODES {
        let h = &mut host(mode);
        let src = slab_object(h, 6, 16, AllocInit::Zeroed);
        let a = origin::make(11, 0, false);
        let b = origin::make(12, 0, false);
        h.store(src, &[0, 0, 0xFF, 0xFF], a);
        h.store(src + 8, &[0xFF, 0xFF, 0, 0], b);
        let dst = src + 64;
        h.kmsan.slab_alloc(dst, Size(16), AllocInit::Zeroed).unwrap();
        h.kmsan.copy_meta(dst, src + 2, 8);
        let read = |h: &mut KmsanHost, at| h.load(at, 4);
        let (s0, o0) = read(h, dst);
        assert_eq!(s0, [0xFF, 0xFF, 0, 0], "{mode:?}");
        assert_eq!(origin::handle(h.kmsan.meta_of(dst).1), origin::handle(o0));
        assert!(origin::depth(o0) == 1, "copy chains the origin");
        assert!(h.kmsan.check_memory(dst + 2, 4, 0).is_ok());
        let (s4, o4) = read(h, dst + 4);
        assert_eq!(s4, [0, 0, 0xFF, 0xFF]);
        assert_ne!(o4, NO_ORIGIN, "{mode:?}: origin not lost to the zero slot");
        assert_ne!(o0, o4);
    }
}

#[test]
fn vmalloc_uses_the_metadata_of_the_frames_mapped_there() {
    for mode in MODES {
        let h = &mut host(mode);
        let live0 = h.kmsan.stats().ondemand_live_pages;
        // Two non-adjacent frames, allocated uninitialized, mapped together.
        let (a, b) = (h.ram() + 20 * PAGE_SIZE, h.ram() + 40 * PAGE_SIZE);
        h.call("alloc_pages_caller", |h| {
            h.kmsan.page_alloc(a, 0, AllocInit::Uninit).unwrap();
            h.kmsan.page_alloc(b, 0, AllocInit::Uninit).unwrap();
        });
        let v = h.vmalloc() + 2 * PAGE_SIZE;
        h.vmap(v, &[20, 40]);
        assert_eq!(h.load(v + 5000, 8).0, [0xFF; 8]);
        // A store across the two pages lands in both frames' metadata.
        h.store(v + PAGE_SIZE - 4, &[0; 8], NO_ORIGIN);
        assert_eq!(h.load(v + PAGE_SIZE - 4, 8).0, [0; 8], "{mode:?}");
        assert_eq!(h.load(a + PAGE_SIZE - 4, 4).0, [0; 4]);
        assert_eq!(h.load(b, 4).0, [0; 4]);
        assert_eq!(h.load(b + 4, 4).0, [0xFF; 4]);
        // test_init_kmsan_vmap_vunmap: memset through the mapping, check
        // through the direct map.
        h.kmsan.memset_meta(v, 2 * PAGE_SIZE);
        assert!(h.kmsan.check_memory(a, PAGE_SIZE, 0).is_ok(), "{mode:?}");
        assert!(h.kmsan.check_memory(b, PAGE_SIZE, 0).is_ok(), "{mode:?}");
        h.vunmap(v, 2);
        assert_eq!(h.load(v, 8).0, [0; 8], "unmapped: no metadata, reads initialized");
        h.kmsan.page_free(a, 0).unwrap();
        h.kmsan.page_free(b, 0).unwrap();
        // A slab page returned to the page allocator and reused.
        let page = slab_object(h, 12, 128, AllocInit::Uninit);
        h.kmsan.slab_free(page, Size(128)).unwrap();
        h.kmsan.slab_page_free(page, 0).unwrap();
        h.kmsan.page_free(page, 0).unwrap();
        h.kmsan.page_alloc(page, 0, AllocInit::Zeroed).unwrap();
        assert!(h.kmsan.check_memory(page, PAGE_SIZE, 0).is_ok(), "{mode:?}");
        assert_eq!(h.kmsan.stats().ondemand_live_pages, live0, "{mode:?}");
    }
}

#[test]
fn large_kmalloc_is_uninitialized_and_created_by_kmalloc() {
    for mode in MODES {
        let h = &mut host(mode);
        let p = h.ram() + 32 * PAGE_SIZE;
        h.kmsan.page_alloc(p, 2, AllocInit::Zeroed).unwrap();
        h.call("kmalloc_large_caller", |h| h.kmsan.kmalloc_large(p, 2, AllocInit::Uninit)).unwrap();
        assert_eq!(h.kmsan.stats().slab_allocs, 1);
        let (sh, o) = h.load(p + 9000, 4);
        assert_eq!(sh, [0xFF; 4], "{mode:?}");
        h.kmsan.warning(o, 0);
        assert!(h.take_log().contains("Uninit was created at:\n kmalloc_large_caller+"));
        if mode == Mode::Hybrid {
            assert_eq!(h.kmsan.page_meta(p + 8192).unwrap().backing, Backing::UNINIT, "stays page-granular");
        }
        assert_eq!(h.kmsan.kmalloc_large(h.ram() + 100 * PAGE_SIZE, 0, AllocInit::Uninit), Err(PageError::WrongPageState));
    }
}

#[test]
fn hooks_refuse_bad_input() {
    let h = &mut host(Mode::Hybrid);
    let p = h.ram() + PAGE_SIZE;
    assert_eq!(h.kmsan.page_alloc(p + 1, 0, AllocInit::Uninit), Err(PageError::Unaligned));
    assert_eq!(h.kmsan.page_alloc(h.vmalloc(), 0, AllocInit::Uninit), Err(PageError::NotRam));
    assert_eq!(h.kmsan.page_alloc(p, 21, AllocInit::Uninit), Err(PageError::BadOrder));
    assert_eq!(h.kmsan.page_free(p, 0), Err(PageError::WrongPageState));
    assert_eq!(h.kmsan.mark_reserved(p, Size(0)), Err(PageError::BadOrder), "an empty range");
    h.kmsan.page_alloc(p, 0, AllocInit::Uninit).unwrap();
    assert_eq!(h.kmsan.page_alloc(p, 0, AllocInit::Uninit), Err(PageError::PageInUse));
    assert_eq!(h.kmsan.slab_alloc(p, Size(8), AllocInit::Uninit), Err(SlabError::WrongPageState));
    assert_eq!(h.kmsan.slab_free(p, Size(8)), Err(SlabError::WrongPageState));
    assert_eq!(h.kmsan.slab_alloc(h.vmalloc(), Size(8), AllocInit::Uninit), Err(SlabError::NotRam));
    assert_eq!(h.kmsan.slab_alloc(p, Size(usize::MAX), AllocInit::Uninit), Err(SlabError::BadSize), "wraps around");
    assert_eq!(h.kmsan.stack_alloc(h.vmalloc(), 0), Err(PageError::NotRam));
}

#[test]
fn large_accesses_without_metadata_stay_in_bounds() {
    for mode in MODES {
        let h = &mut host(mode);
        // User space: no metadata; a large store goes nowhere, loads read initialized.
        h.store(0x10_0000, &[0xFF; 2000], origin::make(3, 0, false));
        assert_eq!(h.load(0x10_0000, 2000).0, std::vec![0; 2000]);
        // A large store across two vmalloc pages mapped to non-adjacent frames.
        let (a, b) = (h.ram() + 50 * PAGE_SIZE, h.ram() + 70 * PAGE_SIZE);
        h.kmsan.page_alloc(a, 0, AllocInit::Zeroed).unwrap();
        h.kmsan.page_alloc(b, 0, AllocInit::Zeroed).unwrap();
        let v = h.vmalloc() + 8 * PAGE_SIZE;
        h.vmap(v, &[50, 70]);
        h.store(v + PAGE_SIZE - 1000, &[0xFF; 2000], origin::make(3, 0, false));
        let _ = h.load(v + PAGE_SIZE - 1000, 2000);
        assert!(h.kmsan.stats().unchecked_events >= 2, "{mode:?}: counted as unchecked");
        // A small split store is exact.
        h.store(v + PAGE_SIZE - 2, &[0xFF; 4], origin::make(3, 0, false));
        assert_eq!(h.load(a + PAGE_SIZE - 2, 2).0, [0xFF; 2]);
        assert_eq!(h.load(b, 2).0, [0xFF; 2]);
    }
}

/// No frame left for a page's private shadow: the shared fallback of
/// [`crate::backing::unchecked`] (reads initialized, never reports,
/// counted), and the page's way back once it is freed.
#[test]
fn hybrid_page_without_a_frame_goes_unchecked_and_comes_back() {
    let h = &mut host(Mode::Hybrid);
    let page = h.ram() + 9 * PAGE_SIZE;
    {
        let mut inner = h.kmsan.inner.lock();
        let n = inner.mapper.private_pages();
        inner.mapper.set_frame_limit(Some(n));
    }
    let live = h.kmsan.stats().ondemand_live_pages;
    h.kmsan.page_alloc(page, 0, AllocInit::Uninit).unwrap();
    h.kmsan.slab_page_alloc(page, 0).unwrap();
    let s = h.kmsan.stats();
    assert_eq!(h.kmsan.page_meta(page).unwrap().backing, Backing::Unchecked);
    assert_eq!((s.unchecked_pages, s.unchecked_events, s.ondemand_live_pages), (1, 1, live));
    h.kmsan.slab_alloc(page, Size(64), AllocInit::Uninit).unwrap();
    assert_eq!(h.load(page, 8).0, [0; 8], "an unchecked page reads initialized");
    assert!(h.kmsan.check_memory(page, 64, 0).is_ok(), "and never reports");
    h.kmsan.slab_free(page, Size(64)).unwrap();
    h.kmsan.slab_page_free(page, 0).unwrap();
    h.kmsan.page_free(page, 0).unwrap();
    let s = h.kmsan.stats();
    assert_eq!((h.kmsan.page_meta(page).unwrap().backing, s.unchecked_pages), (Backing::UNINIT, 0));
    h.kmsan.inner.lock().mapper.set_frame_limit(None);
    h.kmsan.page_alloc(page, 0, AllocInit::Uninit).unwrap();
    h.kmsan.slab_page_alloc(page, 0).unwrap();
    assert_eq!(h.kmsan.page_meta(page).unwrap().backing, Backing::Private, "frames again: private");
    assert_eq!(h.kmsan.stats().ondemand_live_pages, live + 1);
    assert!(h.take_log().is_empty());
}

/// Found by the KMSAN fuzz target: a refused `stack_free` (pages that are
/// not a stack) used to unpoison them first, hiding a later use of freed
/// memory; now it changes nothing.
#[test]
fn refused_stack_free_keeps_the_metadata() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let h = &mut host(mode);
        let page = h.ram() + 3 * PAGE_SIZE;
        h.kmsan.page_alloc(page, 0, AllocInit::Uninit).unwrap();
        h.kmsan.page_free(page, 0).unwrap();
        assert_eq!(h.kmsan.stack_free(page, 0), Err(PageError::WrongPageState), "{mode:?}");
        assert_eq!(h.load(page, 4).0, [0xFF; 4], "{mode:?}: freed memory stays uninitialized");
        assert!(h.kmsan.check_memory(page, 4, 0).is_err(), "{mode:?}");
    }
}

/// Found by the KMSAN fuzz target: a load or store running past the end
/// of RAM got metadata pointers whose tail lay past RAM's metadata
/// (unmapped on the host: a crash); it is now gathered byte by byte.
#[test]
fn access_past_the_end_of_ram_is_gathered() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let h = &mut host(mode);
        let last = h.ram() + h.kmsan.layout().direct_map.data.len() - PAGE_SIZE;
        h.kmsan.page_alloc(last, 0, AllocInit::Uninit).unwrap();
        let (sh, _) = h.load(last + PAGE_SIZE - 4, 16);
        assert_eq!(sh, [[0xFF; 4].as_slice(), &[0; 12]].concat(), "{mode:?}");
        h.store(last + PAGE_SIZE - 2, &[0; 16], 0);
        h.settle();
        assert_eq!(h.load(last + PAGE_SIZE - 4, 4).0, [0xFF, 0xFF, 0, 0], "{mode:?}");
    }
}

/// A store larger than the sink goes to the real metadata, and the
/// compiler paints `ceil(size / 4)` origin slots from the first: started
/// unaligned it touches one slot more, which takes the value's origin too,
/// in both modes alike (found by the fuzz target: `hybrid` kept the slot's
/// page-wide fill, `full` its zero).
#[test]
fn an_unaligned_store_larger_than_the_sink_paints_its_last_slot() {
    for mode in MODES {
        let h = &mut host(mode);
        let page = h.ram() + 7 * PAGE_SIZE;
        h.kmsan.page_alloc(page, 0, AllocInit::Zeroed).unwrap();
        // A first origin on the page, so hybrid's origin page is filled
        // with something else than the store's.
        h.store(page + 3000, &[0xFF; 4], origin::make(5, 0, false));
        let o = origin::make(77, 0, false);
        let (at, n) = (page + 0x7ff, 2048);
        h.store(at, &std::vec![0xFF; n], o);
        h.settle();
        assert_eq!(h.load(at + n - 1, 1), (std::vec![0xFF], o), "{mode:?}: the store's last byte");
        assert_eq!(h.load(at, 1), (std::vec![0xFF], o), "{mode:?}: the store's first byte");
    }
}

#[test]
fn page_sized_checks_find_the_uninitialized_run_in_both_modes() {
    let mut logs = std::vec::Vec::new();
    for mode in MODES {
        let h = &mut host(mode);
        let page = h.ram() + 16 * PAGE_SIZE;
        h.kmsan.page_alloc(page, 1, AllocInit::Zeroed).unwrap();
        // 40 uninitialized bytes across the two pages, unaligned at both ends
        h.call("dma_done", |h| h.kmsan.poison_memory(page + PAGE_SIZE - 5, 40));
        h.settle();
        assert!(h.kmsan.check_memory(page, PAGE_SIZE - 5, 0).is_ok(), "{mode:?}");
        assert!(h.kmsan.check_memory(page + PAGE_SIZE + 35, PAGE_SIZE - 35, 0).is_ok(), "{mode:?}");
        let bug = h.kmsan.check_memory(page, 2 * PAGE_SIZE, h.plat.func("reader")).unwrap_err();
        assert_eq!(bug.kind, BugType::UninitValue);
        let log = h.take_log();
        assert!(log.contains("Bytes 4091-4130 of 8192 are uninitialized"), "{mode:?}: {log}");
        assert_eq!(log.matches("BUG: KMSAN").count(), 1, "one run, one report: {log}");
        // a check starting inside the run reports from its first byte
        h.kmsan.check_memory(page + PAGE_SIZE, 64, 0).unwrap_err();
        let log2 = h.take_log();
        assert!(log2.contains("Bytes 0-34 of 64 are uninitialized"), "{mode:?}: {log2}");
        logs.push(log.replace(&std::format!("{:016x}", page), "ADDR"));
    }
    assert_eq!(logs[0], logs[1], "full and hybrid print the same report");
}
