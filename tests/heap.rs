//! The KASAN heap (src/heap.rs) and tracked regions (src/region.rs) on the
//! host backend: a heap at its own virtual range (outside the direct map,
//! the vmalloc window and the image) gives every object redzones,
//! quarantine and alloc/free stacks; each bug gets Linux's type in `full`
//! and `hybrid`; regions that do not fit the layout are refused.

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
