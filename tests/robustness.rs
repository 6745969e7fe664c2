//! Bad input, running out of shadow frames, leaks, report policy and the
//! report's body, on the host model kernel.

mod common;

use hybrid_shadow::{PageError, PoisonError, SlabError, VmallocError};
use hybrid_shadow::{Ip, Size};
use common::syzkaller;
use hybrid_shadow::hooks::GlobalDesc;
use hybrid_shadow::host::sim::{SimConfig, SimKernel, ZERO_SIZE_PTR};
use hybrid_shadow::layout::BLOCK_SIZE;
use hybrid_shadow::{Backing, BugType, CacheError, Config, FaultAction, GlobalError, HookError, Mode};

fn sim(mode: Mode) -> SimKernel {
    let k = SimKernel::new(SimConfig::small(mode)).unwrap();
    k.plat.enter("robustness");
    k
}

fn both(f: impl Fn(&mut SimKernel, Mode)) {
    for mode in [Mode::Full, Mode::Hybrid] {
        let mut k = sim(mode);
        f(&mut k, mode);
        k.check_invariants().unwrap();
    }
}

#[test]
fn leak_hybrid_returns_every_private_shadow_page() {
    let mut k = sim(Mode::Hybrid);
    let image_pages = k.private_pages();
    assert_eq!(k.kasan.stats().ondemand_live_pages, 0);
    let c = k.kmem_cache_create("leak", 300).unwrap();
    let mut objs = vec![];
    for i in 0..3000 {
        objs.push(k.kmalloc(1 + i % 3000).unwrap());
        objs.push(k.cache_alloc(c, 300).unwrap());
    }
    let stacks: Vec<usize> = (0..20).map(|_| k.stack_alloc().unwrap()).collect();
    let vms: Vec<usize> = (0..50).map(|i| k.vmalloc(1000 + i * 777).unwrap()).collect();
    let large: Vec<usize> = (0..10).map(|i| k.kmalloc(9000 + i * 5000).unwrap()).collect();
    let s = k.kasan.stats();
    assert!(s.ondemand_live_pages > 50, "tracked memory got byte shadow: {s:?}");
    assert_eq!(k.private_pages(), image_pages + s.ondemand_live_pages);
    for (i, p) in objs.into_iter().enumerate() {
        if i % 2 == 0 { k.kfree(p).unwrap() } else { k.cache_free(c, p).unwrap() }
    }
    for p in stacks {
        k.stack_free(p).unwrap();
    }
    for p in vms {
        k.vfree(p);
    }
    for p in large {
        k.kfree(p).unwrap();
    }
    k.drain_quarantine();
    k.kmem_cache_destroy(c).unwrap();
    let s = k.kasan.stats();
    assert_eq!(s.ondemand_live_pages, 0, "no private shadow left: {s:?}");
    assert_eq!(k.private_pages(), image_pages, "the backend holds only the image's shadow");
    assert!(s.ondemand_peak_pages > 50);
    assert_eq!(s.reports, 0, "{}", k.take_log());
    // every block of RAM is back on a shared page (all RAM free but the kmalloc caches' pages)
    let pages = k.kasan.pages();
    for pfn in (0..pages.len()).step_by(8) {
        assert_ne!(k.kasan.backing_of_pfn(pfn), Backing::Private, "block of pfn {pfn}");
    }
}

#[test]
fn full_maps_all_ram_at_init_hybrid_only_the_image() {
    let cfg = SimConfig::small(Mode::Full);
    let (full, hybrid) = (sim(Mode::Full), sim(Mode::Hybrid));
    let (f, h) = (full.kasan.stats(), hybrid.kasan.stats());
    let image_pages = cfg.image / BLOCK_SIZE;
    assert_eq!(f.init_shadow_pages, cfg.ram / BLOCK_SIZE + image_pages);
    assert_eq!(h.init_shadow_pages, image_pages);
    assert_eq!(f.per_page_bytes, cfg.ram / 4096);
    assert!(f.metadata_init_bytes() >= cfg.ram / 8);
    assert!(h.metadata_init_bytes() * 10 < f.metadata_init_bytes(), "{h:?} vs {f:?}");
}

#[test]
fn frees_of_pointers_never_allocated() {
    both(|k, _| {
        let free_page = k.kasan.layout().direct_map.end - 4096; // never handed out yet
        assert_eq!(k.kfree(free_page).unwrap_err().kind, BugType::DoubleFree);
        let p = k.kmalloc(100).unwrap();
        assert_eq!(k.kfree(p + 8).unwrap_err().kind, BugType::InvalidFree);
        let v = k.vmalloc(100).unwrap();
        assert_eq!(k.kfree(v).unwrap_err().kind, BugType::InvalidFree, "vmalloc address to kfree");
        assert_eq!(k.kfree(0x1000).unwrap_err().kind, BugType::InvalidFree, "user address");
        let pg = k.alloc_pages(0).unwrap();
        assert_eq!(k.kfree(pg).unwrap_err().kind, BugType::InvalidFree, "page allocator page to kfree");
        assert_eq!(k.free_pages(pg, 0), Ok(()));
        assert_eq!(k.free_pages(pg, 0).unwrap_err().kind, BugType::DoubleFree);
        // the runtime is still consistent: p is live and checked
        assert_eq!(k.read(p, 100), Ok(()));
        assert_eq!(k.read_bug(p + 100, 1), Some(BugType::SlabOutOfBounds));
        let titles = syzkaller::titles(&k.take_log());
        assert_eq!(titles.len(), 7);
    });
}

#[test]
fn zero_and_huge_sizes() {
    both(|k, _| {
        let p = k.kmalloc(0).unwrap();
        assert_eq!(p, ZERO_SIZE_PTR);
        assert_eq!(k.read_bug(p, 1), Some(BugType::NullPtrDeref), "ZERO_SIZE_PTR has no byte");
        k.kfree(p).unwrap();
        assert_eq!(k.kmalloc(usize::MAX), None);
        assert_eq!(k.kmalloc(1 << 40), None);
        assert_eq!(k.vmalloc(1 << 40), None);
        let r = &k.kasan;
        assert_eq!(r.cache_create("z", 0, 8), Err(SlabError::Cache(CacheError::BadSize)));
        assert_eq!(r.cache_create("z", usize::MAX, 8), Err(SlabError::Cache(CacheError::BadSize)));
        let pg = k.alloc_pages(0).unwrap();
        assert_eq!(k.kasan.kmalloc_large(pg, 0, Size(4097)), Err(PageError::BadSize));
        assert_eq!(k.kasan.kmalloc_large(pg, 0, Size(0)), Err(PageError::BadSize));
        let vm = k.kasan.layout().vmalloc.start;
        assert_eq!(k.kasan.vmalloc_alloc(vm, Size(8192), Size(4096)), Err(VmallocError::BadSize));
        assert_eq!(k.kasan.vmalloc_alloc(vm, Size(usize::MAX), Size(usize::MAX)), Err(VmallocError::NotVmalloc));
        assert_eq!(k.read(pg, 4096), Ok(()), "rejected hooks changed no shadow");
    });
}

#[test]
fn hooks_reject_bad_pages() {
    both(|k, _| {
        let dm = k.kasan.layout().direct_map;
        let pg = k.alloc_pages(1).unwrap();
        assert_eq!(k.kasan.page_alloc(pg, 0), Err(PageError::PageInUse));
        assert_eq!(k.kasan.page_alloc(pg + 1, 0), Err(PageError::Unaligned));
        assert_eq!(k.kasan.page_alloc(dm.end, 0), Err(PageError::NotRam));
        assert_eq!(k.kasan.page_alloc(dm.end - 4096, 3), Err(PageError::BadOrder));
        assert_eq!(k.kasan.page_alloc(dm.start, 40), Err(PageError::BadOrder));
        let free = dm.end - 8192;
        let c = k.kmem_cache_create("bad", 64).unwrap();
        assert_eq!(k.kasan.slab_page_alloc(c, free, 0), Err(PageError::WrongPageState));
        assert_eq!(k.kasan.slab_page_free(pg, 0), Err(PageError::WrongPageState));
        assert_eq!(k.kasan.stack_free(pg, 0), Err(PageError::WrongPageState));
        let p = k.cache_alloc(c, 64).unwrap();
        assert_eq!(k.kasan.slab_alloc(c, p, Size(64)), Err(SlabError::SlotInUse));
        assert_eq!(k.kasan.slab_alloc(c, p + 200, Size(65)), Err(SlabError::BadSize));
        assert_eq!(k.kasan.vmalloc_free(dm.start, Size(4096)), Err(VmallocError::NotVmalloc));
        k.kmem_cache_destroy(c).unwrap_err();
        assert_eq!(k.read(p, 64), Ok(()));
        assert_eq!(k.read(pg, 8192), Ok(()));
        assert_eq!(k.kasan.stats().reports, 0);
    });
}

fn desc(beg: usize, size: usize, with_rz: usize) -> GlobalDesc {
    GlobalDesc::new(beg, size, with_rz)
}

#[test]
fn bogus_and_overlapping_globals_are_rejected_and_counted() {
    both(|k, _| {
        let g = k.define_global(10).unwrap();
        let img = k.kasan.layout().image;
        let r = &k.kasan;
        assert_eq!(r.register_global(&desc(g + 3, 4, 64)), Err(GlobalError::Unaligned));
        assert_eq!(r.register_global(&desc(g, 64, 32)), Err(GlobalError::BadSize));
        assert_eq!(r.register_global(&desc(usize::MAX - 31, 4, 64)), Err(GlobalError::BadSize));
        assert_eq!(r.register_global(&desc(img.end - 32, 4, 64)), Err(GlobalError::OutsideImage));
        assert_eq!(r.register_global(&desc(0x1000, 4, 64)), Err(GlobalError::OutsideImage));
        // a global whose body lies in g's redzone
        assert_eq!(r.register_global(&desc(g + 32, 8, 32)), Err(GlobalError::Overlap));
        assert_eq!(r.stats().bad_globals, 6);
        assert_eq!(k.read(g, 10), Ok(()));
        assert_eq!(k.read_bug(g + 10, 1), Some(BugType::GlobalOutOfBounds), "g's redzone intact");
        r.unregister_global(&desc(g, 10, 64));
        assert_eq!(k.read(g + 10, 1), Ok(()));
    });
}

/// LLVM's right redzone for a global of `size` bytes (`getRedzoneSizeForGlobal`
/// at shadow scale 3): the global and its redzone end on 32 bytes.
fn llvm_redzone(size: usize) -> usize {
    const MIN_RZ: usize = 32;
    if size <= MIN_RZ / 2 {
        return MIN_RZ - size;
    }
    let rz = (size / MIN_RZ / 4 * MIN_RZ).clamp(MIN_RZ, 1 << 18);
    rz + if size.is_multiple_of(MIN_RZ) { 0 } else { MIN_RZ - size % MIN_RZ }
}

#[test]
fn globals_laid_out_as_compilers_do_are_accepted_back_to_back() {
    both(|k, _| {
        let img = k.kasan.layout().image.start;
        let r = &k.kasan;
        let mut at = img;
        let mut globals = vec![];
        for size in [0, 1, 7, 8, 16, 17, 31, 32, 33, 100, 128, 1000, 4096] {
            let with_rz = size + llvm_redzone(size);
            assert!(with_rz.is_multiple_of(32));
            r.register_global(&desc(at, size, with_rz)).unwrap();
            globals.push((at, size, with_rz));
            at += with_rz;
        }
        assert_eq!(r.stats().bad_globals, 0);
        for &(beg, size, with_rz) in &globals {
            assert_eq!(k.read(beg, size), Ok(()), "{:#x}+{size}", beg - img);
            assert_eq!(k.read_bug(beg + size, 1), Some(BugType::GlobalOutOfBounds), "{:#x}+{size}", beg - img);
            assert_eq!(k.read_bug(beg + with_rz - 1, 1), Some(BugType::GlobalOutOfBounds), "{:#x}+{size}", beg - img);
        }
        for &(beg, size, with_rz) in &globals {
            r.unregister_global(&desc(beg, size, with_rz));
            assert_eq!(k.read(beg, with_rz), Ok(()));
        }
        assert_eq!(r.stats().bad_globals, 0);
    });
}

#[test]
fn globals_not_aligned_as_compilers_lay_them_out_are_rejected() {
    both(|k, _| {
        let img = k.kasan.layout().image.start;
        let r = &k.kasan;
        // 8-byte aligned, but inside a 32-byte slot
        for off in [8, 16, 24, 0x48] {
            assert_eq!(r.register_global(&desc(img + off, 4, 0x20)), Err(GlobalError::Unaligned), "{off:#x}");
        }
        // a span that ends inside a 32-byte slot
        for (size, with_rz) in [(2, 2), (0, 0x35), (10, 40), (0x80, 0x98)] {
            assert_eq!(r.register_global(&desc(img + 0x40, size, with_rz)), Err(GlobalError::UnalignedEnd), "{size}/{with_rz:#x}");
        }
        assert_eq!(r.stats().bad_globals, 8);
        // nothing was poisoned for them
        assert_eq!(k.read(img, 0x100), Ok(()));
        // a slot next to a registered global is free for another one
        r.register_global(&desc(img + 0x40, 10, 0x20)).unwrap();
        r.register_global(&desc(img + 0x60, 10, 0x20)).unwrap();
        assert_eq!(k.read(img + 0x60, 10), Ok(()));
        assert_eq!(k.read_bug(img + 0x4a, 1), Some(BugType::GlobalOutOfBounds));
    });
}

#[test]
fn globals_map_takes_one_bit_per_32_bytes_of_the_image() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let k = sim(mode);
        let s = k.kasan.stats();
        let image = k.kasan.layout().image.len();
        assert_eq!(s.globals_map_bytes, image / 32 / 8, "{mode:?}");
        assert!(s.metadata_init_bytes() >= s.globals_map_bytes);
    }
    let off = SimKernel::new(SimConfig::small(Mode::Off)).unwrap();
    assert_eq!(off.kasan.stats().globals_map_bytes, 0);
}

#[test]
fn wild_accesses_are_classified_not_crashing() {
    both(|k, _| {
        let cov = k.kasan.layout().covered;
        assert_eq!(k.read_bug(0, 8), Some(BugType::NullPtrDeref));
        assert_eq!(k.read_bug(16, 1), Some(BugType::NullPtrDeref));
        assert_eq!(k.read_bug(0x10000, 8), Some(BugType::UserMemoryAccess));
        assert_eq!(k.read_bug(cov.end + 4096, 8), Some(BugType::WildMemoryAccess));
        assert_eq!(k.read_bug(usize::MAX - 3, 8), Some(BugType::OutOfBounds), "wraps around");
        assert_eq!(k.read_bug(cov.start, usize::MAX), Some(BugType::OutOfBounds));
        assert_eq!(k.read_bug(cov.end - 4, 8), Some(BugType::WildMemoryAccess), "runs off the end");
        assert_eq!(k.read(usize::MAX, 0), Ok(()), "zero-size access");
        assert_eq!(syzkaller::titles(&k.take_log()).len(), 7);
    });
}

#[test]
fn out_of_shadow_frames_goes_unchecked_without_false_reports() {
    let mut cfg = SimConfig::small(Mode::Hybrid);
    cfg.frame_limit = Some(3);
    let mut k = SimKernel::new(cfg).unwrap();
    k.plat.enter("oom");
    // one object allocated while frames are left keeps byte shadow
    let kept = k.kmalloc(200).unwrap();
    assert!(k.kasan.shadow_writable(kept), "the first slab page got private shadow");
    // spread tracked pages over many blocks: each block needs its own shadow page
    let mut stacks = vec![];
    let mut spacers = vec![];
    for _ in 0..12 {
        stacks.push(k.stack_alloc().unwrap());
        spacers.push(k.alloc_pages(3).unwrap());
    }
    let objs: Vec<usize> = (0..400).map(|_| k.kmalloc(200).unwrap()).collect();
    let s = k.kasan.stats();
    assert!(s.unchecked_events > 0 && s.unchecked_pages > 0, "{s:?}");
    assert!(s.ondemand_live_pages <= 3);
    for &p in &objs {
        assert_eq!(k.read(p, 200), Ok(()), "valid bytes never reported");
    }
    for &st in &stacks {
        assert_eq!(k.read(st, 16384), Ok(()));
    }
    let v = k.vmalloc(50_000).unwrap();
    assert_eq!(k.read(v, 50_000), Ok(()), "vmalloc without shadow frames still passes");
    // checked memory still reports
    assert_eq!(k.read(kept, 200), Ok(()));
    assert_eq!(k.read_bug(kept + 200, 1), Some(BugType::SlabOutOfBounds));
    k.kfree(kept).unwrap();
    for p in objs {
        k.kfree(p).unwrap();
    }
    for st in stacks {
        k.stack_free(st).unwrap();
    }
    for sp in spacers {
        k.free_pages(sp, 3).unwrap();
    }
    k.vfree(v);
    k.drain_quarantine();
    let s = k.kasan.stats();
    assert_eq!(s.unchecked_pages, 0, "{s:?}");
    assert_eq!(s.ondemand_live_pages, 0);
    assert_eq!(s.reports, 1, "{}", k.take_log());
    k.check_invariants().unwrap();
}

#[test]
fn one_shot_reports_only_the_first_bug() {
    let mut cfg = SimConfig::small(Mode::Hybrid);
    cfg.kasan = Config { mode: Mode::Hybrid, multi_shot: false, ..Config::default() };
    let mut k = SimKernel::new(cfg).unwrap();
    k.plat.enter("one_shot");
    let p = k.kmalloc(10).unwrap();
    let a = k.read(p + 10, 1).unwrap_err();
    let b = k.read(p + 11, 1).unwrap_err();
    assert!(a.printed && !b.printed);
    assert_eq!(b.kind, BugType::SlabOutOfBounds, "the verdict stands even when not printed");
    let s = k.kasan.stats();
    assert_eq!((s.reports, s.reports_suppressed), (1, 1));
    assert_eq!(syzkaller::titles(&k.take_log()).len(), 1);
}

#[test]
fn fault_panic_panics_after_the_report() {
    let mut cfg = SimConfig::small(Mode::Full);
    cfg.kasan.fault = FaultAction::Panic;
    let mut k = SimKernel::new(cfg).unwrap();
    k.plat.enter("panicky");
    let p = k.kmalloc(10).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| k.read(p + 10, 1)));
    let msg = r.unwrap_err();
    assert!(msg.downcast_ref::<String>().is_some_and(|m| m.contains("kasan.fault=panic")));
    assert_eq!(syzkaller::titles(&k.take_log())[0].bug, "slab-out-of-bounds");
}

#[test]
fn off_mode_checks_nothing_and_costs_nothing() {
    let mut k = sim(Mode::Off);
    let p = k.kmalloc(10).unwrap();
    assert_eq!(k.read(p + 10, 1), Ok(()));
    k.kfree(p).unwrap();
    assert_eq!(k.read(p, 1), Ok(()));
    let s = k.kasan.stats();
    assert_eq!(s.metadata_init_bytes(), 0);
    assert_eq!(s.reports, 0);
    assert_eq!(k.kasan.cache_info(hybrid_shadow::CacheId(0)).unwrap().slot_size, 8, "no redzones");
}

#[test]
fn report_body_follows_linux_and_matches_between_modes() {
    let mut bodies = vec![];
    for mode in [Mode::Full, Mode::Hybrid] {
        let mut k = sim(mode);
        let p = k.call("alloc_site", |k| k.kmalloc(123).unwrap());
        let q = k.call("alloc_site", |k| k.kmalloc(123).unwrap());
        k.call("free_site", |k| k.kfree(q).unwrap());
        k.take_log();
        k.call("bad_reader", |k| {
            k.read(p + 123, 1).unwrap_err();
            k.write(q + 8, 4).unwrap_err();
        });
        let log = k.take_log();
        let reports = syzkaller::reports(&log);
        assert_eq!(reports.len(), 2, "{log}");
        let oob = &reports[0];
        for want in [
            "BUG: KASAN: slab-out-of-bounds in bad_reader+0x2a/0x100",
            &format!("Read of size 1 at addr {:016x} by task kunit/1", p + 123),
            "Call Trace:\n bad_reader+0x2a/0x100\n robustness+0x2a/0x100",
            "Allocated by task 1:\n alloc_site+0x2a/0x100",
            &format!("The buggy address belongs to the object at {p:016x}"),
            " which belongs to the cache kmalloc-128 of size 128",
            "The buggy address is located 0 bytes to the right of\n allocated 123-byte region",
            "Memory state around the buggy address:",
        ] {
            assert!(oob.contains(want), "{mode:?}: missing {want:?} in\n{oob}");
        }
        assert!(!oob.contains("Freed by task"));
        let uaf = &reports[1];
        for want in [
            "BUG: KASAN: slab-use-after-free in bad_reader",
            "Write of size 4 at addr",
            "Freed by task 1:\n free_site+0x2a/0x100",
            "The buggy address is located 8 bytes inside of\n freed 123-byte region",
        ] {
            assert!(uaf.contains(want), "{mode:?}: missing {want:?} in\n{uaf}");
        }
        // the marked row and caret
        let lines: Vec<&str> = oob.lines().collect();
        let row = lines.iter().position(|l| l.starts_with('>')).unwrap();
        assert!(lines[row + 1].trim_end().ends_with('^'));
        let col = lines[row + 1].find('^').unwrap();
        assert_eq!(&lines[row][col..col + 2], "03", "caret under the partial granule: {oob}");
        let shadow_rows: Vec<String> = lines[row - 2..=row + 3].iter().map(|l| l.split_once(':').map(|x| x.1).unwrap_or(l).to_string()).collect();
        bodies.push(shadow_rows);
    }
    assert_eq!(bodies[0], bodies[1], "full and hybrid print the same memory state");
}

// ---- issue 12: seven defects a fuzzer found in the public API --------------

/// Reports printed so far.
fn reports(k: &SimKernel) -> usize {
    k.kasan.stats().reports
}

#[test]
fn kmalloc_zero_is_linux_zero_size_ptr_and_no_false_report() {
    both(|k, _| {
        let p = k.kmalloc(0).unwrap();
        assert_eq!(p, ZERO_SIZE_PTR);
        assert_eq!(k.ksize(p), 0);
        assert_eq!(k.kfree_sensitive(p), Ok(()));
        assert_eq!(k.kfree(p), Ok(()));
        let q = k.krealloc(p, 16).unwrap();
        assert_ne!(q, ZERO_SIZE_PTR, "krealloc of ZERO_SIZE_PTR allocates");
        assert_eq!(reports(k), 0, "nothing reported: {}", k.take_log());
        assert_eq!(k.write(q, 16), Ok(()));
        assert_eq!(k.read_bug(q + 16, 1), Some(BugType::SlabOutOfBounds));
        assert_eq!(k.krealloc(q, 0), Some(ZERO_SIZE_PTR), "krealloc to 0 bytes frees");
        assert_eq!(k.read_bug(q, 1), Some(BugType::SlabUseAfterFree));
        // A kernel whose allocator hands out real 0-byte objects: ksize
        // knows the object is live from its metadata, not its first byte.
        let c = k.kmem_cache_create("zero", 16).unwrap();
        let z = k.cache_alloc(c, 0).unwrap();
        assert_eq!(k.read_bug(z, 1), Some(BugType::SlabOutOfBounds), "a 0-byte object has no byte");
        let before = reports(k);
        assert_eq!(k.ksize(z), 16);
        assert_eq!(k.read(z, 16), Ok(()), "ksize made the whole object usable");
        assert_eq!(k.read_bug(z + 16, 1), Some(BugType::SlabOutOfBounds));
        assert_eq!(k.kfree_sensitive(z), Ok(()));
        assert_eq!(reports(k), before + 1, "only the read past the object: {}", k.take_log());
        assert_eq!(k.read_bug(z, 1), Some(BugType::SlabUseAfterFree));
        k.drain_quarantine();
        k.kmem_cache_destroy(c).unwrap();
    });
}

#[test]
fn ksize_of_a_page_backed_kmalloc_makes_its_pages_accessible() {
    both(|k, _| {
        let p = k.kmalloc(9000).unwrap();
        assert_eq!(k.read_bug(p + 9000, 1), Some(BugType::SlabOutOfBounds));
        assert_eq!(k.ksize(p), 16384);
        assert_eq!(k.write(p + 9000, 16384 - 9000), Ok(()), "every byte ksize handed out is usable");
        assert_eq!(k.ksize(p + 4096), 0, "an interior pointer gets nothing");
        assert_eq!(reports(k), 1, "{}", k.take_log());
        k.kfree(p).unwrap();
        assert_eq!(k.ksize(p), 0);
        assert_eq!(reports(k), 2, "ksize of a freed kmalloc is reported");
        assert_eq!(k.read_bug(p + 9000, 1), Some(BugType::UseAfterFree));
    });
}

#[test]
fn globals_overlapping_a_registered_span_are_rejected() {
    both(|k, _| {
        let img = k.kasan.layout().image.start;
        let r = &k.kasan;
        r.register_global(&desc(img + 0x20, 0x80, 0xa0)).unwrap();
        let overlapping = [
            (img + 0x20, 0, 0x40),  // a redzone over the body
            (img + 0x20, 2, 0x20),  // a body over the body
            (img, 8, 0x40),         // a redzone over the body's start
            (img + 0xa0, 8, 0x20),  // a body over the redzone
            (img + 0x80, 8, 0x60),  // from the body's end past the redzone
        ];
        for (beg, size, with_rz) in overlapping {
            let d = desc(beg, size, with_rz);
            assert_eq!(r.register_global(&d), Err(GlobalError::Overlap), "{:#x}+{size}/{with_rz:#x}", beg - img);
        }
        assert_eq!(r.stats().bad_globals, 5);
        assert_eq!(k.read(img + 0x20, 0x80), Ok(()), "the first global's body is intact");
        assert_eq!(k.read_bug(img + 0xa0, 1), Some(BugType::GlobalOutOfBounds));
        assert_eq!(k.read_bug(img + 0xbf, 1), Some(BugType::GlobalOutOfBounds));
        // neighbours that only touch its span are fine
        r.register_global(&desc(img, 8, 0x20)).unwrap();
        r.register_global(&desc(img + 0xc0, 8, 0x20)).unwrap();
        assert_eq!(k.read_bug(img + 8, 1), Some(BugType::GlobalOutOfBounds));
        // a span that is not wholly registered is not unregistered
        r.unregister_global(&desc(img + 0x20, 0x80, 0x1000));
        assert_eq!(r.stats().bad_globals, 6);
        assert_eq!(k.read_bug(img + 0xa0, 1), Some(BugType::GlobalOutOfBounds));
        // nor a descriptor that is not well formed (the fuzzer's find), nor
        // one that is not aligned as compilers lay globals out
        r.unregister_global(&desc(img + 0x20, 0x80, 1));
        r.unregister_global(&desc(img + 0x20, 0x80, 0x98));
        r.unregister_global(&desc(img + 0x28, 0x78, 0x98));
        assert_eq!(r.stats().bad_globals, 9);
        assert_eq!(k.read_bug(img + 0xa0, 1), Some(BugType::GlobalOutOfBounds));
        assert_eq!(r.register_global(&desc(img + 0x20, 2, 0x20)), Err(GlobalError::Overlap), "still claimed");
        // once unregistered, its span takes a new global
        r.unregister_global(&desc(img + 0x20, 0x80, 0xa0));
        assert_eq!(k.read(img + 0xa0, 0x20), Ok(()));
        r.register_global(&desc(img + 0x20, 2, 0x20)).unwrap();
        assert_eq!(k.read_bug(img + 0x22, 1), Some(BugType::GlobalOutOfBounds));
    });
}

#[test]
fn alloca_poison_refuses_a_size_that_overflows() {
    both(|k, _| {
        let st = k.stack_alloc().unwrap();
        let buf = st + 8192;
        for size in [usize::MAX, usize::MAX - 31, usize::MAX - 64, usize::MAX / 2, 1 << 40] {
            assert_eq!(k.kasan.alloca_poison(buf, Size(size)), Err(PoisonError::BadSize), "size {size:#x}");
        }
        assert_eq!(k.kasan.alloca_poison(buf + 8, Size(10)), Err(PoisonError::Unaligned));
        assert_eq!(k.kasan.alloca_poison(0, Size(10)), Err(PoisonError::BadSize), "its left redzone would wrap");
        assert_eq!(k.read(st, 16384), Ok(()), "refused calls poisoned nothing");
        assert_eq!(k.kasan.alloca_poison(buf, Size(10)), Ok(()));
        assert_eq!(k.read(buf, 10), Ok(()));
        assert_eq!(k.read_bug(buf + 10, 1), Some(BugType::AllocaOutOfBounds));
        assert_eq!(k.read_bug(buf + 63, 1), Some(BugType::AllocaOutOfBounds));
        assert_eq!(k.read(buf + 64, 1), Ok(()));
        assert_eq!(k.read_bug(buf - 32, 1), Some(BugType::AllocaOutOfBounds));
        assert_eq!(k.read(buf - 33, 1), Ok(()));
        k.kasan.allocas_unpoison(buf - 32, buf + 64);
        k.stack_free(st).unwrap();
    });
}

#[test]
fn model_kernel_returns_errors_on_bad_input_without_leaking() {
    both(|k, _| {
        let used = k.pages_used;
        assert_eq!(k.vmalloc(0), None);
        assert_eq!(k.vmalloc(usize::MAX), None);
        assert_eq!(k.vmalloc(usize::MAX - 8192), None);
        let c = k.kmem_cache_create("gone", 64).unwrap();
        assert_eq!(k.cache_alloc(c, 65), None, "larger than the cache's objects");
        let p = k.cache_alloc(c, 64).unwrap();
        k.cache_free(c, p).unwrap();
        k.kmem_cache_destroy(c).unwrap();
        assert_eq!(k.cache_alloc(c, 64), None, "a destroyed cache allocates nothing");
        assert_eq!(k.cache_alloc_bulk(c, 64, 3), None);
        assert_eq!(k.kmem_cache_create("huge", hybrid_shadow::cache::MAX_OBJECT), Err(HookError::BadSize));
        assert_eq!(k.pages_used, used, "no page was kept");
        // frees of pages the page allocator did not hand out that way
        let pg = k.alloc_pages(1).unwrap();
        assert_eq!(k.free_pages(pg, 0).unwrap_err().kind, BugType::InvalidFree, "wrong order");
        assert_eq!(k.free_pages(pg + 4096, 0).unwrap_err().kind, BugType::InvalidFree, "interior page");
        assert_eq!(k.free_pages(pg, 14).unwrap_err().kind, BugType::InvalidFree, "order above the buddy's");
        assert_eq!(k.stack_free(pg).unwrap_err().kind, BugType::InvalidFree, "not a stack");
        k.free_pages(pg, 1).unwrap();
        assert_eq!(k.free_pages(pg, 1).unwrap_err().kind, BugType::DoubleFree);
        let st = k.stack_alloc().unwrap();
        assert_eq!(k.free_pages(st, 2).unwrap_err().kind, BugType::InvalidFree, "a stack's pages are the stack's");
        assert_eq!(k.read(st, 16384), Ok(()));
        k.stack_free(st).unwrap();
        assert_eq!(k.stack_free(st).unwrap_err().kind, BugType::DoubleFree);
        assert_eq!(k.pages_used, used);
        assert_eq!(reports(k), 7, "{}", k.take_log());
    });
}

#[test]
fn ksize_of_an_interior_pointer_is_refused() {
    both(|k, _| {
        let p = k.kmalloc(100).unwrap();
        let q = k.kmalloc(100).unwrap();
        k.kfree(q).unwrap();
        assert_eq!(k.ksize(p + 96), 0);
        assert_eq!(reports(k), 0, "its first byte is valid: nothing to report");
        assert_eq!(k.read_bug(p + 100, 1), Some(BugType::SlabOutOfBounds), "the redzone is still poisoned");
        assert_eq!(k.read_bug(q, 1), Some(BugType::SlabUseAfterFree), "the freed neighbour too");
        let cache = hybrid_shadow::Platform::slab_of(&k.plat, p).unwrap().cache;
        assert_eq!(k.kasan.ksize(cache, p + 8, Ip(0)), 0);
        assert_eq!(k.kasan.ksize(cache, q, Ip(0)), 0, "a freed object");
        assert_eq!(k.ksize(p), 128);
        assert_eq!(reports(k), 3, "{}", k.take_log());
    });
}

#[test]
fn slot_in_quarantine_cannot_be_allocated_again() {
    both(|k, _| {
        // A raw cache whose slab the test lays out itself.
        let c = k.kasan.cache_create("raw", 64, 8).unwrap();
        let info = k.kasan.cache_info(c).unwrap();
        let page = k.alloc_pages(0).unwrap();
        k.kasan.slab_page_alloc(c, page, 0).unwrap();
        let base = page + info.slab_offset;
        k.plat.add_slab(page, 4096, hybrid_shadow::SlabRef { cache: c, base });
        let (a, b) = (base, base + info.slot_size);
        k.kasan.slab_alloc(c, a, Size(64)).unwrap();
        k.kasan.slab_alloc(c, b, Size(64)).unwrap();
        // The slab is the platform's for the pointer: an address inside a
        // slot, or a slot freed to another cache, is an invalid free.
        let other = k.kasan.cache_create("other", 64, 8).unwrap();
        assert_eq!(k.kasan.slab_free(c, a + 8, Ip(0)).map_err(|b| b.kind), Err(BugType::InvalidFree));
        assert_eq!(k.kasan.slab_free(other, a, Ip(0)).map_err(|b| b.kind), Err(BugType::InvalidFree));
        assert_eq!(k.kasan.cache_info(c).unwrap().live, 2, "a refused free changes nothing");
        k.kasan.cache_destroy(other).unwrap();
        assert_eq!(k.kasan.slab_free(c, a, Ip(0)), Ok(hybrid_shadow::Freed::Quarantined));
        assert_eq!(k.kasan.slab_free(c, b, Ip(0)), Ok(hybrid_shadow::Freed::Quarantined));
        assert_eq!(k.kasan.slab_alloc(c, a, Size(64)), Err(SlabError::SlotQuarantined));
        assert_eq!(k.kasan.slab_alloc(c, a + 8, Size(8)), Err(SlabError::NotSlot), "not a slot start");
        let tail = base + (4096 - info.slab_offset) / info.slot_size * info.slot_size;
        assert_eq!(k.kasan.slab_alloc(c, tail, Size(8)), Err(SlabError::NotSlot), "a slot cut off by the page's end");
        assert_eq!(k.read_bug(a, 1), Some(BugType::SlabUseAfterFree), "still poisoned");
        assert_eq!(k.kasan.cache_info(c).unwrap().quarantined, 2);
        // both come back out of quarantine: nothing was dropped off its list
        let mut released = vec![];
        while let Some(r) = k.kasan.quarantine_drain() {
            if r.cache == c {
                released.push(r.ptr);
            }
        }
        assert_eq!(released, [a, b]);
        k.kasan.slab_alloc(c, a, Size(64)).unwrap();
        assert_eq!(k.kasan.slab_free(c, a, Ip(0)), Ok(hybrid_shadow::Freed::Quarantined));
        assert_eq!(k.kasan.quarantine_drain().map(|r| r.ptr), Some(a));
        let info = k.kasan.cache_info(c).unwrap();
        assert_eq!((info.live, info.quarantined), (0, 0));
        k.kasan.cache_destroy(c).unwrap();
        k.plat.remove_slab(page, 4096);
        k.kasan.slab_page_free(page, 0).unwrap();
        k.free_pages(page, 0).unwrap();
        // the two refused frees and the read of a quarantined object
        assert_eq!(reports(k), 3, "{}", k.take_log());
    });
}

#[test]
fn hooks_refuse_part_of_a_tracked_block() {
    both(|k, _| {
        let st = k.stack_alloc().unwrap();
        assert_eq!(k.kasan.stack_free(st, 1), Err(PageError::WrongPageState), "half a stack");
        assert_eq!(k.kasan.stack_free(st, 3), Err(PageError::WrongPageState), "a stack and what follows it");
        assert_eq!(k.kasan.stack_free(st + 4096, 0), Err(PageError::WrongPageState), "a page inside");
        let p = k.kmalloc(9000).unwrap();
        assert_eq!(k.kasan.kfree_large(p, 1, Ip(0)).unwrap_err().kind, BugType::InvalidFree, "a wrong order");
        assert_eq!(k.kasan.ksize_large(p, 1, Ip(0)), 0);
        assert_eq!(k.kasan.stack_alloc(p, 2), Err(PageError::WrongPageState), "a large kmalloc's pages");
        let c = k.kmem_cache_create("c", 64).unwrap();
        let o = k.cache_alloc(c, 64).unwrap();
        let slab = o & !4095;
        assert_eq!(k.kasan.slab_page_free(slab, 1), Err(PageError::WrongPageState));
        assert_eq!(k.kasan.slab_page_alloc(c, slab, 0), Err(PageError::WrongPageState), "a live slab again");
        // everything is still tracked and checked
        assert_eq!(k.read(st, 16384), Ok(()));
        assert_eq!(k.read_bug(p + 9000, 1), Some(BugType::SlabOutOfBounds));
        assert_eq!(k.read_bug(o + 64, 1), Some(BugType::SlabOutOfBounds));
        assert_eq!(reports(k), 3, "{}", k.take_log());
        k.stack_free(st).unwrap();
        k.kfree(p).unwrap();
        k.cache_free(c, o).unwrap();
        k.drain_quarantine();
        k.kmem_cache_destroy(c).unwrap();
    });
}
