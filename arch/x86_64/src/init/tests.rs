//! Host tests of the boot-time helpers.

use hybrid_shadow::mapper::{MapError, ShadowMapper, SharedPage};

use super::*;
use crate::layout::{mem_to_shadow, KERNEL_BASE, SHADOW_END, SHADOW_START};
use crate::mapper::Config;
use crate::testing::{load, mapper, walk, FakePhys};

const MIB: u64 = 1 << 20;

#[test]
fn memory_info_counts_whole_frames() {
    let ram = [
        RamRange {
            start: 0,
            end: 0x9fc00,
        },
        RamRange {
            start: MIB,
            end: 128 * MIB,
        },
        RamRange {
            start: 4096 * MIB,
            end: 5120 * MIB,
        },
        RamRange {
            start: 0x2001,
            end: 0x2fff,
        }, // no whole frame
    ];
    let info = memory_info(&ram);
    assert_eq!(info.frames, 0x9f + (0x8000 - 0x100) + 0x40000);
    assert_eq!(info.max_pfn, 0x140000);
    assert_eq!(info.per_page_bytes, 0x140000);
    assert_eq!(info.full_shadow_bytes, info.frames * 512);
    let odd = memory_info(&[RamRange {
        start: 4096,
        end: 4096 * 4097,
    }]);
    assert_eq!(
        (odd.frames, odd.max_pfn, odd.per_page_bytes),
        (4096, 4097, 8192)
    );
    assert_eq!(memory_info(&[]), MemoryInfo::default());
}

#[test]
fn init_shadow_maps_zero_and_prepares_ram() {
    let mem = FakePhys::new(256);
    let (mut m, _) = mapper(&mem, Config::linux());
    let ram = [
        RamRange {
            start: 0,
            end: 0x9fc00,
        },
        RamRange {
            start: MIB,
            end: 64 * MIB,
        },
    ];
    let kernel = (KERNEL_BASE, KERNEL_BASE + (16 << 20));
    let report = init_shadow(&mut m, &ram, &[kernel]).unwrap();
    // Direct map: 8 MiB of shadow = 4 PTs + PD + PDPT. Kernel image:
    // 2 MiB of shadow = 1 PT + PD + PDPT (another PML4 slot).
    assert_eq!(report.private_tables, 9);
    assert_eq!(report.table_bytes, (12 + 9) * 4096);
    assert_eq!(m.pinned_ranges().len(), 2);
    for va in [
        SHADOW_START,
        SHADOW_END - 1,
        mem_to_shadow(DIRECT_MAP_BASE),
        mem_to_shadow(KERNEL_BASE),
    ] {
        assert_eq!(load(&mem, m.pml4(), va), Some(0));
        assert!(!walk(&mem, m.pml4(), va).unwrap().writable);
    }
    // Every single-page remap under RAM now needs exactly its data frame.
    let live = m.frames().live();
    let (s, e) = shadow_range_of(DIRECT_MAP_BASE, DIRECT_MAP_BASE + 64 * MIB as usize);
    m.frames_mut().budget = Some(0);
    for page in [s, s + 4096, e - 4096, (s + (e - s) / 2) & !4095] {
        assert_eq!(m.map_private(page, 1).err(), Some(MapError::OutOfFrames));
        m.frames_mut().budget = Some(1);
        m.map_private(page, 0xfb).unwrap().flush(&mut m);
        assert_eq!(load(&mem, m.pml4(), page + 17), Some(0xfb));
        m.frames_mut().budget = Some(0);
        m.map_shared(page, SharedPage::PageFree)
            .unwrap()
            .flush(&mut m);
        assert_eq!(m.frames().live(), live);
    }
    let ks = mem_to_shadow(KERNEL_BASE + (8 << 20));
    m.frames_mut().budget = Some(1);
    m.map_private(ks, 0xf9).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), live + 1);
}

#[test]
fn unshare_ignores_shadow_outside_region() {
    let mem = FakePhys::new(64);
    let (mut m, _) = mapper(&mem, Config::linux());
    map_shadow_region(&mut m).unwrap();
    // User addresses shadow to the non-canonical hole below the region.
    unshare_shadow_of(&mut m, 0, 0x10_0000).unwrap();
    unshare_shadow_of(&mut m, DIRECT_MAP_BASE, DIRECT_MAP_BASE).unwrap();
    assert_eq!(m.stats().private_tables, 0);
    assert!(m.pinned_ranges().is_empty());
}

#[test]
fn populate_gives_full_shadow() {
    let mem = FakePhys::new(128);
    let (mut m, _) = mapper(&mem, Config::linux());
    map_shadow_region(&mut m).unwrap();
    let (lo, hi) = direct_map_of(RamRange {
        start: MIB,
        end: 2 * MIB,
    });
    populate_shadow_of(&mut m, lo, hi, 0).unwrap();
    // 1 MiB of RAM = 128 KiB of shadow = 32 private pages.
    assert_eq!(m.stats().private_pages, 32);
    let (s, e) = shadow_range_of(lo, hi);
    assert!(walk(&mem, m.pml4(), s).unwrap().writable);
    assert!(walk(&mem, m.pml4(), e - 1).unwrap().writable);
    assert!(!walk(&mem, m.pml4(), e).unwrap().writable);
    assert!(!walk(&mem, m.pml4(), s - 1).unwrap().writable);
}
