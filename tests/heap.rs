//! The KASAN heap (src/heap.rs) and tracked regions (src/region.rs) on the
//! host backend: a heap at its own virtual range (outside the direct map,
//! the vmalloc window and the image) gives every object redzones,
//! quarantine and alloc/free stacks; each bug gets Linux's type in `full`
//! and `hybrid`; page-backed objects wait in the quarantine too; any
//! power-of-two alignment is honoured (or null); empty slabs and
//! quarantined objects go back to the free pages when room runs out;
//! regions that do not fit the layout are refused.

use hybrid_shadow::{Ip, Size};
use hybrid_shadow::host::sim::{SimConfig, SimKernel};
use hybrid_shadow::layout::{Region, BLOCK_SIZE};
use hybrid_shadow::shadow::{STACK_LEFT, STACK_MID};
use hybrid_shadow::{BugType, HeapError, Mode, RegionError, RegionKind};

const HEAP: usize = 4 << 20;

fn kernel(mode: Mode) -> SimKernel {
    let mut cfg = SimConfig::small(mode);
    cfg.extra = HEAP + 4 * BLOCK_SIZE;
    let k = SimKernel::new(cfg).unwrap();
    let r = k.extra();
    // SAFETY: the extra range is mapped read-write by the host space and
    // used by nothing else.
    unsafe { k.kasan.heap_init(r.start, Size(HEAP)) }.unwrap();
    k
}

fn alloc(k: &SimKernel, size: usize, align: usize) -> usize {
    let p = k.kasan.heap_alloc(Size(size), align, Ip(0)) as usize;
    assert_ne!(p, 0, "heap_alloc({size}, {align}) failed");
    assert_eq!(p % align, 0);
    p
}

/// The title line of the last report in the log.
fn title(k: &SimKernel) -> String {
    let log = k.take_log();
    log.lines().rfind(|l| l.starts_with("BUG: KASAN:")).unwrap_or_default().to_string()
}

#[test]
fn heap_bugs_have_linux_types_in_full_and_hybrid() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let k = &mut kernel(mode);
        let range = k.kasan.heap_range().unwrap();
        // small object: OOB past its end, UAF, double free
        let p = alloc(k, 13, 8);
        assert!(range.contains(p));
        assert_eq!(k.read(p, 13), Ok(()));
        assert_eq!(k.read_bug(p + 13, 1), Some(BugType::SlabOutOfBounds), "{mode:?}");
        assert!(title(k).starts_with("BUG: KASAN: slab-out-of-bounds in "));
        assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        assert_eq!(k.read_bug(p, 1), Some(BugType::SlabUseAfterFree));
        let log = k.take_log();
        assert!(log.contains("Freed by task"), "{log}");
        assert!(log.contains("which belongs to the cache heap-16 of size 16"), "{log}");
        assert_eq!(k.kasan.heap_free(p, Ip(0)).map_err(|b| b.kind), Err(BugType::DoubleFree));
        assert!(title(k).starts_with("BUG: KASAN: double-free in "));
        // interior pointer
        let q = alloc(k, 100, 8);
        assert_eq!(k.kasan.heap_free(q + 8, Ip(0)).map_err(|b| b.kind), Err(BugType::InvalidFree));
        k.take_log();
        // page-backed: OOB, UAF, double free
        let big = alloc(k, 10_000, 8);
        assert_eq!(big % 4096, 0);
        assert_eq!(k.write(big + 9_999, 1), Ok(()));
        assert_eq!(k.read_bug(big + 10_000, 1), Some(BugType::SlabOutOfBounds));
        let log = k.take_log();
        assert!(log.contains("page-backed heap object"), "{log}");
        assert_eq!(k.kasan.heap_free(big, Ip(0)), Ok(()));
        assert_eq!(k.read_bug(big + 4096, 8), Some(BugType::UseAfterFree));
        let log = k.take_log();
        assert!(log.contains("freed 10000-byte region"), "{log}");
        assert_eq!(k.kasan.heap_free(big, Ip(0)).map_err(|b| b.kind), Err(BugType::DoubleFree));
        k.take_log();
        // page-aligned request
        let a = alloc(k, 64, 4096);
        assert_eq!(k.read_bug(a + 64, 1), Some(BugType::SlabOutOfBounds));
        k.take_log();
        // outside the heap
        assert_eq!(k.kasan.heap_free(range.end + 64, Ip(0)).map_err(|b| b.kind), Err(BugType::InvalidFree));
        k.take_log();
        assert_eq!(k.kasan.heap_free(q, Ip(0)), Ok(()));
        assert_eq!(k.kasan.heap_free(a, Ip(0)), Ok(()));
    }
}

#[test]
fn heap_recycles_through_quarantine_without_false_reports() {
    for mode in [Mode::Off, Mode::Full, Mode::Hybrid] {
        let k = &mut kernel(mode);
        let mut live: Vec<(usize, usize)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..40_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if live.len() < 200 && (!seed.is_multiple_of(3) || live.is_empty()) {
                let size = match seed % 10 {
                    0 => 3000 + (seed >> 8) as usize % 9000,
                    _ => 1 + (seed >> 8) as usize % 600,
                };
                let p = k.kasan.heap_alloc(Size(size), 8, Ip(0)) as usize;
                assert_ne!(p, 0, "{mode:?}: heap exhausted at step {i}");
                assert_eq!(k.write(p, size), Ok(()), "{mode:?}: fresh object");
                live.push((p, size));
            } else {
                let (p, size) = live.swap_remove((seed >> 4) as usize % live.len());
                assert_eq!(k.read(p, size), Ok(()));
                assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()), "{mode:?}");
            }
        }
        assert!(!k.take_log().contains("BUG: KASAN"), "{mode:?}: false report");
        for (p, _) in live {
            assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        }
    }
}

/// Bytes the quarantine holds.
fn quarantined(k: &SimKernel) -> usize {
    k.kasan.stats().quarantine_bytes
}

#[test]
fn page_backed_objects_wait_in_quarantine() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let k = &mut kernel(mode);
        let big = alloc(k, 10_000, 8);
        let before = quarantined(k);
        assert_eq!(k.kasan.heap_free(big, Ip(0)), Ok(()));
        // object, redzone and metadata: 3 pages, as Linux counts the pages
        // of a kmalloc_large object
        assert_eq!(quarantined(k) - before, 3 * 4096, "{mode:?}");
        assert_eq!(k.read_bug(big + 4096, 8), Some(BugType::UseAfterFree));
        assert!(k.take_log().contains("freed 10000-byte region"));
        assert_eq!(k.kasan.heap_free(big, Ip(0)).map_err(|b| b.kind), Err(BugType::DoubleFree), "{mode:?}: in quarantine");
        k.take_log();
        // its pages are not handed out while it waits
        let others: Vec<usize> = (0..200).map(|_| alloc(k, 10_000, 8)).collect();
        assert!(others.iter().all(|&o| o + 3 * 4096 <= big || o >= big + 3 * 4096), "{mode:?}: quarantined pages reused");
        for o in others {
            assert_eq!(k.kasan.heap_free(o, Ip(0)), Ok(()));
        }
        assert_eq!(k.kasan.quarantine_drain(), None, "heap objects are the heap's, not the kernel's");
        assert_eq!(quarantined(k), 0);
        // out of quarantine: free pages, still described, still a double free
        assert_eq!(k.read_bug(big, 8), Some(BugType::UseAfterFree));
        k.take_log();
        assert_eq!(k.kasan.heap_free(big, Ip(0)).map_err(|b| b.kind), Err(BugType::DoubleFree), "{mode:?}: released");
        assert!(!k.take_log().is_empty());
        assert_eq!(alloc(k, HEAP / 2, 8) % 4096, 0, "{mode:?}: the released pages are free");
    }
}

#[test]
fn alignment_above_a_page_is_honoured_or_null() {
    for mode in [Mode::Off, Mode::Full, Mode::Hybrid] {
        let k = &mut kernel(mode);
        let mut taken = vec![];
        for (size, align) in [(100, 8192), (5000, 65536), (64, 1 << 20), (70_000, 32768), (1, 1 << 20)] {
            let p = alloc(k, size, align);
            assert!(taken.iter().all(|&(q, n)| p + size <= q || p >= q + n), "{mode:?}: overlap");
            assert_eq!(k.write(p, size), Ok(()), "{mode:?}");
            if mode != Mode::Off {
                assert_eq!(k.read_bug(p + size, 1), Some(BugType::SlabOutOfBounds), "{mode:?}: {size} at {align}");
                k.take_log();
            }
            taken.push((p, size));
        }
        let null = |size: usize, align: usize| k.kasan.heap_alloc(Size(size), align, Ip(0)).is_null();
        assert!(null(64, 3 << 12), "not a power of two");
        assert!(null(64, HEAP * 2), "above the heap's length");
        // until the aligned runs run out: null, never a misaligned block
        let mut n = 0;
        while let p @ 1.. = k.kasan.heap_alloc(Size(64), 1 << 20, Ip(0)) as usize {
            assert_eq!(p % (1 << 20), 0);
            n += 1;
            assert!(n < 8, "{mode:?}: more 1 MiB-aligned blocks than a 4 MiB heap holds");
        }
        for (p, _) in taken {
            assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        }
    }
}

#[test]
fn empty_slabs_go_back_to_the_free_pages() {
    for mode in [Mode::Off, Mode::Full, Mode::Hybrid] {
        let k = &mut kernel(mode);
        // fill the heap with small objects, then free them all
        let mut objs = vec![];
        loop {
            let p = k.kasan.heap_alloc(Size(64), 8, Ip(0)) as usize;
            if p == 0 {
                break;
            }
            objs.push(p);
        }
        assert!(objs.len() > 10_000, "{mode:?}: {}", objs.len());
        assert!(k.kasan.heap_alloc(Size(HEAP / 2), 8, Ip(0)).is_null(), "{mode:?}: full");
        for &p in &objs {
            assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        }
        if mode != Mode::Off {
            // The quarantine lets them go; their slabs, once empty, go back
            // (all but one: the class keeps a slab's worth of free slots).
            assert_eq!(k.kasan.quarantine_drain(), None);
            let mid = objs[objs.len() / 2];
            assert_eq!(k.read_bug(mid, 1), Some(BugType::UseAfterFree), "{mode:?}: a slab that went back reads as free pages");
            assert!(k.take_log().contains("belongs to a free heap page"), "{mode:?}");
        }
        // Half the heap in one object: the pages of the empty slabs.
        let big = alloc(k, HEAP / 2, 8);
        assert_eq!(k.write(big, HEAP / 2), Ok(()), "{mode:?}");
        assert_eq!(k.kasan.heap_free(big, Ip(0)), Ok(()));
        assert!(!k.take_log().contains("BUG: KASAN"), "{mode:?}: false report");
    }
}

#[test]
fn a_full_heap_reclaims_its_quarantine_before_returning_null() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let mut cfg = SimConfig::small(mode);
        cfg.extra = HEAP + 4 * BLOCK_SIZE;
        cfg.kasan.quarantine_bytes = Some(HEAP); // larger than the heap
        let k = &mut SimKernel::new(cfg).unwrap();
        let r = k.extra();
        // SAFETY: the extra range is mapped read-write by the host space and
        // used by nothing else.
        unsafe { k.kasan.heap_init(r.start, Size(HEAP)) }.unwrap();
        // Objects of a quarter of the heap, freed at once: the quarantine
        // holds them all, and the next allocation takes them back.
        for i in 0..20 {
            let p = alloc(k, HEAP / 4, 8);
            assert_eq!(k.write(p, HEAP / 4), Ok(()), "{mode:?}: round {i}");
            assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        }
        let small: Vec<usize> = (0..20_000).map(|_| alloc(k, 100, 8)).collect();
        for p in small {
            assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        }
        alloc(k, HEAP / 2, 8);
        assert!(!k.take_log().contains("BUG: KASAN"), "{mode:?}: false report");
    }
}

#[test]
fn regions_that_do_not_fit_the_layout_are_refused() {
    let mut cfg = SimConfig::small(Mode::Hybrid);
    cfg.extra = 8 * BLOCK_SIZE;
    let k = SimKernel::new(cfg).unwrap();
    let l = *k.kasan.layout();
    let x = k.extra();
    let add = |r: Region| k.kasan.add_region(RegionKind::Stack, r);
    assert_eq!(add(Region::new(x.start + 4096, BLOCK_SIZE)), Err(RegionError::Unaligned));
    assert_eq!(add(Region::new(x.start, 0)), Err(RegionError::Empty));
    assert_eq!(add(Region::new(l.direct_map.start, BLOCK_SIZE)), Err(RegionError::Overlap));
    assert_eq!(add(Region::new(l.image.end - BLOCK_SIZE, 2 * BLOCK_SIZE)), Err(RegionError::Overlap));
    assert_eq!(add(Region::new(x.end, BLOCK_SIZE)), Err(RegionError::OutsideCovered));
    assert_eq!(add(Region::new(x.start, BLOCK_SIZE)), Ok(()));
    assert_eq!(add(Region::new(x.start, BLOCK_SIZE)), Err(RegionError::Overlap));
    // SAFETY: refused before anything is touched (it overlaps the stack region).
    assert_eq!(unsafe { k.kasan.heap_init(x.start, Size(4 * BLOCK_SIZE)) }, Err(HeapError::Region(RegionError::Overlap)));
    // SAFETY: as above (unaligned).
    assert_eq!(unsafe { k.kasan.heap_init(x.start + 8, Size(4 * BLOCK_SIZE)) }, Err(HeapError::Unaligned));
}

#[test]
fn a_stack_region_reports_stack_out_of_bounds() {
    for mode in [Mode::Full, Mode::Hybrid] {
        let mut cfg = SimConfig::small(mode);
        cfg.extra = 2 * BLOCK_SIZE;
        let k = SimKernel::new(cfg).unwrap();
        let x = k.extra();
        k.kasan.add_region(RegionKind::Stack, x).unwrap();
        assert_eq!(k.kasan.region_of(x.start + 100), Some((RegionKind::Stack, x)));
        let frame = x.start + 0x1000;
        assert_eq!(k.write(frame, 64), Ok(()), "a stack region starts accessible");
        // a frame: [32 left redzone][16 local][16 mid redzone]
        k.kasan.poison_range(frame, Size(32), STACK_LEFT);
        k.kasan.poison_range(frame + 48, Size(16), STACK_MID);
        assert_eq!(k.read(frame + 32, 16), Ok(()));
        assert_eq!(k.read_bug(frame + 48, 1), Some(BugType::StackOutOfBounds), "{mode:?}");
        let log = k.take_log();
        assert!(log.contains("BUG: KASAN: stack-out-of-bounds in "), "{log}");
        assert!(log.contains("belongs to the stack ["), "{log}");
        assert_eq!(k.read_bug(frame + 8, 1), Some(BugType::StackOutOfBounds));
    }
}

#[test]
fn sizes_near_usize_max_are_null_not_an_overflow() {
    for mode in [Mode::Off, Mode::Full, Mode::Hybrid] {
        let k = &mut kernel(mode);
        for size in [usize::MAX, usize::MAX - 7, usize::MAX - 4095, usize::MAX / 2 + 1, HEAP * 2] {
            for align in [1, 8, 32, 4096] {
                assert!(k.kasan.heap_alloc(Size(size), align, Ip(0)).is_null(), "{mode:?}: {size:#x} at {align}");
            }
        }
        // the heap still works and reports nothing
        let p = alloc(k, 100, 8);
        assert_eq!(k.write(p, 100), Ok(()));
        assert_eq!(k.kasan.heap_free(p, Ip(0)), Ok(()));
        assert!(!k.take_log().contains("BUG: KASAN"), "{mode:?}: false report");
    }
}
