//! Host tests of the mapper over fake physical memory, checked by a
//! software page walker (`testing::walk`) that shares no code with it.

use std::collections::BTreeMap;
use std::vec::Vec;

use hybrid_shadow::mapper::{MapError, ShadowMapper, SharedPage};
use x86_64::PhysAddr;

use super::{Backing, Config, InitError, X86ShadowMapper};
use crate::layout::{mem_to_shadow, DIRECT_MAP_BASE, PAGE_SIZE, SHADOW_END, SHADOW_START};
use crate::testing::{
    load, mapper, walk, Event, FakeFrames, FakePhys, Log, RecordingTlb, TestMapper, FAKE_BASE,
};

const S: usize = SHADOW_START;
const MIB2: usize = 2 << 20;
const GIB: usize = 1 << 30;
const GIB512: usize = 1 << 39;
const BASE_FRAMES: usize = 16;

fn setup(mem: &FakePhys, config: Config) -> (TestMapper<'_>, Log) {
    let (mut m, log) = mapper(mem, config);
    m.map_shared_range(SHADOW_START, SHADOW_END, SharedPage::Zero)
        .unwrap();
    (m, log)
}

fn byte(m: &TestMapper<'_>, mem: &FakePhys, va: usize) -> Option<u8> {
    load(mem, m.pml4(), va)
}

fn pml4_entry(mem: &FakePhys, va: usize) -> u64 {
    mem.read_u64(FAKE_BASE + ((va >> 39) & 511) as u64 * 8)
}

/// Every free in `events` is preceded by a flush in `events`.
fn assert_flush_before_free(events: &[Event]) {
    if let Some(first_free) = events.iter().position(|e| matches!(e, Event::Free(_))) {
        assert!(
            events[..first_free]
                .iter()
                .any(|e| matches!(e, Event::FlushPage(_) | Event::FlushAll)),
            "frame freed before any flush: {events:?}"
        );
    }
}

fn kind_of(fill: u8) -> SharedPage {
    SharedPage::ALL
        .into_iter()
        .find(|k| k.fill() == fill)
        .unwrap()
}

#[test]
fn new_builds_shared_structures() {
    let mem = FakePhys::new(64);
    let (m, _) = mapper(&mem, Config::linux());
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(m.table_bytes(), 12 * PAGE_SIZE);
    assert_eq!(m.stats().shared_frames, 16);
    for kind in SharedPage::ALL {
        let p = m.shared_page(kind).as_u64();
        assert!((0..4096).all(|i| mem.read_u8(p + i) == kind.fill()));
    }
    // Nothing mapped yet.
    assert_eq!(walk(&mem, m.pml4(), S), None);
    assert_eq!(m.translate(S), None);
}

#[test]
fn new_rejects_bad_setups() {
    let mem = FakePhys::new(64);
    let log: Log = Default::default();
    let mk = |config: Config, budget: Option<usize>| {
        let mut frames = FakeFrames::new(&mem, log.clone());
        frames.budget = budget;
        let tlb = RecordingTlb { log: log.clone() };
        // SAFETY: fake memory holds the PML4 and the pool.
        unsafe { X86ShadowMapper::new(mem.pml4(), &mem, frames, tlb, config) }
            .map(|m| m.frames().live())
    };
    let mut c = Config::linux();
    c.shadow_start += PAGE_SIZE;
    assert_eq!(mk(c, None).err(), Some(InitError::BadRegion));
    c = Config::linux();
    c.shadow_end = c.shadow_start;
    assert_eq!(mk(c, None).err(), Some(InitError::BadRegion));
    assert_eq!(
        mk(Config::linux(), Some(5)).err(),
        Some(InitError::OutOfFrames)
    );
    // All 5 frames went back (the source panics on bad frees; count the log).
    let allocs = log
        .borrow()
        .iter()
        .filter(|e| matches!(e, Event::Alloc(_)))
        .count();
    let frees = log
        .borrow()
        .iter()
        .filter(|e| matches!(e, Event::Free(_)))
        .count();
    assert_eq!((allocs, frees), (5, 5));
    // A PML4 entry in the region is already used.
    mem.write_u64(FAKE_BASE + 480 * 8, 0x5000 | 3);
    assert_eq!(
        mk(Config::linux(), None).err(),
        Some(InitError::RegionInUse)
    );
    mem.write_u64(FAKE_BASE + 480 * 8, 0);
    assert_eq!(mk(Config::linux(), None).ok(), Some(BASE_FRAMES));
}

#[test]
fn whole_region_costs_no_extra_frame() {
    let mem = FakePhys::new(64);
    let (m, _) = setup(&mem, Config::linux());
    assert_eq!(m.frames().live(), BASE_FRAMES);
    let first = pml4_entry(&mem, S);
    let mut va = S;
    while va < SHADOW_END {
        assert_eq!(pml4_entry(&mem, va), first, "PML4 slot of {va:#x}");
        va += GIB512;
    }
    assert_eq!(pml4_entry(&mem, SHADOW_END), 0);
    assert_eq!(pml4_entry(&mem, S - 1), 0);
    for va in [
        S,
        S + 12345,
        SHADOW_END - 1,
        mem_to_shadow(DIRECT_MAP_BASE + 0xabcdef),
    ] {
        let w = walk(&mem, m.pml4(), va).unwrap();
        assert_eq!(mem.read_u8(w.phys), 0);
        assert!(!w.writable && w.no_execute);
        assert_eq!(m.translate(va), Some(Backing::Shared(SharedPage::Zero)));
    }
    // Every address resolves to the same physical zero page.
    let p1 = walk(&mem, m.pml4(), S).unwrap().phys;
    let p2 = walk(&mem, m.pml4(), SHADOW_END - 4096).unwrap().phys;
    assert_eq!(p1, p2);
    assert_eq!(p1, m.shared_page(SharedPage::Zero).as_u64());
    assert_eq!(m.translate(SHADOW_END), None);
}

#[test]
fn map_private_unshares_and_copies() {
    let mem = FakePhys::new(64);
    let (mut m, log) = setup(&mem, Config::linux());
    let va = mem_to_shadow(DIRECT_MAP_BASE + 0x1234_5000) & !(PAGE_SIZE - 1);
    let shared = walk(&mem, m.pml4(), va).unwrap();
    let f = m.map_private(va, 0x5a).unwrap();
    assert_eq!(f.page(), va);
    f.flush(&mut m);
    assert_eq!(log.borrow().last(), Some(&Event::FlushPage(va)));
    assert_eq!(m.frames().live(), BASE_FRAMES + 4);
    assert_eq!(m.stats().private_tables, 3);
    assert_eq!(m.stats().private_pages, 1);
    assert_eq!(m.table_bytes(), 15 * PAGE_SIZE);
    let w = walk(&mem, m.pml4(), va).unwrap();
    assert!(w.writable && w.no_execute);
    assert!((0..4096).all(|i| byte(&m, &mem, va + i) == Some(0x5a)));
    let Some(Backing::Private(frame)) = m.translate(va) else {
        panic!()
    };
    assert_eq!(frame.as_u64(), w.phys);
    // Writes land in the frame and are read back through the tables.
    mem.write_u8(w.phys + 7, 0x03);
    assert_eq!(byte(&m, &mem, va + 7), Some(0x03));
    // Neighbours still read zero, read-only.
    for n in [va - 4096, va + 4096, va + MIB2, va - GIB, va + GIB512] {
        let wn = walk(&mem, m.pml4(), n).unwrap();
        assert_eq!(mem.read_u8(wn.phys), 0, "{n:#x}");
        assert!(!wn.writable);
    }
    // The private tables are copies of the shared ones except on the path.
    for (level, (ours, theirs)) in w.tables.iter().zip(shared.tables.iter()).enumerate() {
        assert_ne!(ours, theirs);
        let shift = [30, 21, 12][level];
        let idx = (va >> shift) & 511;
        for i in 0..512u64 {
            let a = mem.read_u64(ours + i * 8);
            let b = mem.read_u64(theirs + i * 8);
            if i as usize == idx {
                assert_ne!(a, b);
            } else {
                assert_eq!(a, b, "level {level} entry {i}");
            }
        }
    }
    // A second page under the same PT needs only its own frame.
    m.map_private(va + 4096, 0x11).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), BASE_FRAMES + 5);
    // Remapping a private page privately refills it in place.
    m.map_private(va, 0x22).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), BASE_FRAMES + 5);
    assert_eq!(byte(&m, &mem, va + 7), Some(0x22));
}

#[test]
fn map_shared_returns_frame_after_flush_and_reshares() {
    let mem = FakePhys::new(64);
    let (mut m, log) = setup(&mem, Config::linux());
    let top = pml4_entry(&mem, S);
    let va = S + 3 * GIB + 5 * MIB2 + 9 * PAGE_SIZE;
    m.map_private(va, 0xfc).unwrap().flush(&mut m);
    let Some(Backing::Private(frame)) = m.translate(va) else {
        panic!()
    };
    let mark = log.borrow().len();
    let f = m.map_shared(va, SharedPage::Zero).unwrap();
    assert_eq!(f.page(), va);
    f.flush(&mut m);
    let events: Vec<Event> = log.borrow()[mark..].to_vec();
    let flush = events
        .iter()
        .position(|e| *e == Event::FlushPage(va))
        .unwrap();
    let free = events
        .iter()
        .position(|e| *e == Event::Free(frame.as_u64()))
        .unwrap();
    assert!(flush < free, "{events:?}");
    assert!(!m.frames().is_live(frame));
    // The three copied tables were uniform again and went back too.
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(m.stats().private_tables, 0);
    assert_eq!(m.stats().reshares, 3);
    assert_eq!(pml4_entry(&mem, S), top);
    assert_eq!(byte(&m, &mem, va), Some(0));
    assert_eq!(m.table_bytes(), 12 * PAGE_SIZE);
}

#[test]
fn without_reshare_tables_stay() {
    let mem = FakePhys::new(64);
    let (mut m, log) = setup(
        &mem,
        Config {
            reshare: false,
            ..Config::linux()
        },
    );
    let va = S + 4096;
    m.map_private(va, 1).unwrap().flush(&mut m);
    let mark = log.borrow().len();
    m.map_shared(va, SharedPage::Zero).unwrap().flush(&mut m);
    assert_flush_before_free(&log.borrow()[mark..]);
    assert_eq!(m.frames().live(), BASE_FRAMES + 3);
    assert_eq!(m.stats().private_pages, 0);
    assert_eq!(byte(&m, &mem, va), Some(0));
    // Remapping privately now needs only the page.
    m.frames_mut().budget = Some(1);
    m.map_private(va, 2).unwrap().flush(&mut m);
    assert_eq!(byte(&m, &mem, va + 100), Some(2));
}

#[test]
fn map_shared_other_kind_unshares_and_tables_stay_until_a_private_page_goes() {
    let mem = FakePhys::new(64);
    let (mut m, _) = setup(&mem, Config::linux());
    let va = S + 77 * PAGE_SIZE;
    // Same kind: nothing to do.
    m.map_shared(va, SharedPage::Zero).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), BASE_FRAMES);
    m.map_shared(va, SharedPage::PageFree)
        .unwrap()
        .flush(&mut m);
    assert_eq!(m.frames().live(), BASE_FRAMES + 3);
    assert_eq!(byte(&m, &mem, va), Some(0xff));
    assert!(!walk(&mem, m.pml4(), va).unwrap().writable);
    assert_eq!(m.translate(va), Some(Backing::Shared(SharedPage::PageFree)));
    assert_eq!(byte(&m, &mem, va + 4096), Some(0));
    assert_eq!(byte(&m, &mem, va - 1), Some(0));
    // Flipping back between shared kinds keeps the copied tables (the next
    // flip needs none)...
    m.map_shared(va, SharedPage::Zero).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), BASE_FRAMES + 3);
    assert_eq!(m.stats().reshares, 0);
    assert_eq!(byte(&m, &mem, va), Some(0));
    // ...until a private page under them goes: then all three collapse.
    m.map_private(va + PAGE_SIZE, 7).unwrap().flush(&mut m);
    m.map_shared(va + PAGE_SIZE, SharedPage::Zero).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(m.stats().reshares, 3);
}

#[test]
fn reshare_uniform_gives_back_tables_left_by_kind_flips() {
    let mem = FakePhys::new(64);
    let (mut m, _) = setup(&mem, Config::linux());
    let a = S + 77 * PAGE_SIZE;
    let b = S + 3 * GIB + 9 * PAGE_SIZE;
    // Two flips there and back: each leaves its copied PDPT/PD/PT chain.
    for va in [a, b] {
        m.map_shared(va, SharedPage::PageFree).unwrap().flush(&mut m);
        m.map_shared(va, SharedPage::Zero).unwrap().flush(&mut m);
    }
    // A third page stays of another kind: its PT (and the PD, PDPT above)
    // must stay.
    let c = S + 5 * MIB2;
    m.map_shared(c, SharedPage::Consult).unwrap().flush(&mut m);
    assert_eq!(m.stats().private_tables, 6, "PDPT, 2 PDs, 3 PTs");
    // a's PT and b's PT and PD go; c's PT, its PD and the PDPT stay.
    assert_eq!(m.reshare_uniform(), 3);
    assert_eq!(m.stats().private_tables, 3);
    assert_eq!(byte(&m, &mem, a), Some(0));
    assert_eq!(byte(&m, &mem, b), Some(0));
    assert_eq!(byte(&m, &mem, c), Some(SharedPage::Consult.fill()));
    assert_eq!(m.translate(c), Some(Backing::Shared(SharedPage::Consult)));
    // Once c flips back too, the rest goes, and nothing is left to do.
    m.map_shared(c, SharedPage::Zero).unwrap().flush(&mut m);
    assert_eq!(m.reshare_uniform(), 3);
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(m.reshare_uniform(), 0);
}

#[test]
fn whole_pt_of_one_kind_collapses_to_shared_pt() {
    let mem = FakePhys::new(64);
    let (mut m, _) = setup(&mem, Config::linux());
    let base = S + 7 * MIB2;
    for i in 0..511 {
        m.map_shared(base + i * PAGE_SIZE, SharedPage::Consult)
            .unwrap()
            .flush(&mut m);
    }
    // Flips between shared kinds leave the PT private.
    assert_eq!(m.stats().private_tables, 3);
    // The last page passes through private memory.
    let last = base + 511 * PAGE_SIZE;
    m.map_private(last, 1).unwrap().flush(&mut m);
    m.map_shared(last, SharedPage::Consult).unwrap().flush(&mut m);
    // PT collapsed into PT_Consult; PD and PDPT stay (mixed kinds).
    assert_eq!(m.stats().private_tables, 2);
    let w = walk(&mem, m.pml4(), base + 100 * PAGE_SIZE).unwrap();
    assert_eq!(mem.read_u8(w.phys), SharedPage::Consult.fill());
    let w2 = walk(&mem, m.pml4(), S + 8 * MIB2 + 3 * MIB2).unwrap();
    assert_eq!(mem.read_u8(w2.phys), 0);
}

#[test]
fn out_of_frames_leaves_mapping_intact() {
    let mem = FakePhys::new(64);
    let (mut m, log) = setup(&mem, Config::linux());
    let va = S + GIB + 3 * PAGE_SIZE;
    for budget in 0..4 {
        m.frames_mut().budget = Some(budget);
        assert_eq!(m.map_private(va, 9).err(), Some(MapError::OutOfFrames));
        assert_eq!(m.frames().live(), BASE_FRAMES, "budget {budget}");
        assert_eq!(byte(&m, &mem, va), Some(0));
        assert_eq!(
            pml4_entry(&mem, va) & 0x000f_ffff_ffff_f000,
            walk(&mem, m.pml4(), S).unwrap().tables[0]
        );
    }
    m.frames_mut().budget = Some(2);
    assert_eq!(
        m.map_shared(va, SharedPage::PageFree).err(),
        Some(MapError::OutOfFrames)
    );
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(byte(&m, &mem, va), Some(0));
    // With the path private, only the data frame is needed.
    m.frames_mut().budget = None;
    m.map_private(va + PAGE_SIZE, 1).unwrap().flush(&mut m);
    m.frames_mut().budget = Some(0);
    assert_eq!(m.map_private(va, 9).err(), Some(MapError::OutOfFrames));
    assert_eq!(byte(&m, &mem, va), Some(0));
    assert_eq!(byte(&m, &mem, va + PAGE_SIZE), Some(1));
    // map_shared under a private PT needs no frame at all.
    m.map_shared(va, SharedPage::Consult).unwrap().flush(&mut m);
    assert_eq!(byte(&m, &mem, va), Some(SharedPage::Consult.fill()));
    // Refilling a private page needs none either.
    m.map_private(va + PAGE_SIZE, 4).unwrap().flush(&mut m);
    assert_eq!(byte(&m, &mem, va + PAGE_SIZE), Some(4));
    let allocs = log
        .borrow()
        .iter()
        .filter(|e| matches!(e, Event::Alloc(_)))
        .count();
    let frees = log
        .borrow()
        .iter()
        .filter(|e| matches!(e, Event::Free(_)))
        .count();
    assert_eq!(allocs - frees, m.frames().live());
}

#[test]
fn bad_addresses() {
    let mem = FakePhys::new(64);
    let (mut m, _) = setup(&mem, Config::linux());
    let bad = Some(MapError::BadAddress);
    assert_eq!(m.map_private(S + 1, 0).err(), bad);
    assert_eq!(m.map_private(S - PAGE_SIZE, 0).err(), bad);
    assert_eq!(m.map_private(SHADOW_END, 0).err(), bad);
    assert_eq!(m.map_shared(S + 8, SharedPage::Zero).err(), bad);
    assert_eq!(m.map_shared(0, SharedPage::Zero).err(), bad);
    assert_eq!(m.map_shared_range(S, S + 5, SharedPage::Zero).err(), bad);
    assert_eq!(
        m.map_shared_range(S + PAGE_SIZE, S, SharedPage::Zero).err(),
        bad
    );
    assert_eq!(
        m.map_shared_range(S, SHADOW_END + PAGE_SIZE, SharedPage::Zero)
            .err(),
        bad
    );
    assert_eq!(
        m.map_shared_range(S - PAGE_SIZE, S, SharedPage::Zero).err(),
        bad
    );
    assert_eq!(m.map_shared_range(S, S, SharedPage::PageFree), Ok(()));
    assert_eq!(m.frames().live(), BASE_FRAMES);
}

#[test]
fn range_with_partial_blocks() {
    let mem = FakePhys::new(64);
    let (mut m, log) = setup(&mem, Config::linux());
    let a = S + GIB - 2 * PAGE_SIZE;
    let b = S + GIB + MIB2 + 3 * PAGE_SIZE;
    m.map_shared_range(a, b, SharedPage::PageFree).unwrap();
    for (va, want) in [
        (a - 1, 0),
        (a, 0xff),
        (S + GIB, 0xff),
        (S + GIB + MIB2 - 1, 0xff),
        (b - 1, 0xff),
        (b, 0),
    ] {
        assert_eq!(byte(&m, &mem, va), Some(want), "{va:#x}");
    }
    // PDPT, PD + PT for the tail of GiB 0, PD + PT for GiB 1 (its first
    // 2 MiB is the shared PT_Free).
    assert_eq!(m.stats().private_tables, 5);
    let w = walk(&mem, m.pml4(), S + GIB + 4096).unwrap();
    let w2 = walk(&mem, m.pml4(), S + 5 * GIB + 7 * MIB2).unwrap();
    assert_ne!(w.tables[2], w2.tables[2]);
    assert!(log.borrow().iter().any(|e| matches!(e, Event::FlushAll)));
    // Back to zero: everything collapses.
    m.map_shared_range(a, b, SharedPage::Zero).unwrap();
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(byte(&m, &mem, a), Some(0));
}

#[test]
fn range_replaces_private_pages_after_flush() {
    let mem = FakePhys::new(64);
    let (mut m, log) = setup(&mem, Config::linux());
    let pages = [
        S + PAGE_SIZE,
        S + 3 * GIB + 17 * PAGE_SIZE,
        S + 5 * GIB512 + 2 * MIB2,
    ];
    for p in pages {
        m.map_private(p, 0x42).unwrap().flush(&mut m);
    }
    assert_eq!(m.stats().private_pages, 3);
    let mark = log.borrow().len();
    m.map_shared_range(S, SHADOW_END, SharedPage::Zero).unwrap();
    assert_flush_before_free(&log.borrow()[mark..]);
    assert_eq!(m.frames().live(), BASE_FRAMES);
    assert_eq!(m.stats().private_pages, 0);
    assert_eq!(m.stats().private_tables, 0);
    for p in pages {
        assert_eq!(byte(&m, &mem, p), Some(0));
    }
    // Many private pages in one PT, replaced by a sub-range: page flushes.
    for i in 0..40 {
        m.map_private(S + i * PAGE_SIZE, 1).unwrap().flush(&mut m);
    }
    let mark = log.borrow().len();
    m.map_shared_range(S, S + 40 * PAGE_SIZE, SharedPage::PageFree)
        .unwrap();
    assert_flush_before_free(&log.borrow()[mark..]);
    assert_eq!(m.stats().private_pages, 0);
    assert_eq!(byte(&m, &mem, S + 39 * PAGE_SIZE), Some(0xff));
    assert_eq!(byte(&m, &mem, S + 40 * PAGE_SIZE), Some(0));
}

#[test]
fn unshare_range_prepares_and_pins() {
    let mem = FakePhys::new(64);
    let (mut m, _) = setup(&mem, Config::linux());
    let (a, b) = (S + GIB, S + GIB + 2 * MIB2);
    m.unshare_range(a + PAGE_SIZE, b - PAGE_SIZE).unwrap();
    assert_eq!(m.pinned_ranges(), &[(a, b)]);
    assert_eq!(m.stats().private_tables, 4); // PDPT, PD, 2 PTs
    assert_eq!(byte(&m, &mem, a), Some(0));
    let live = m.frames().live();
    // Single-page remaps need just the data frame and never free a table.
    m.frames_mut().budget = Some(1);
    m.map_private(a + MIB2 + 5 * PAGE_SIZE, 7)
        .unwrap()
        .flush(&mut m);
    assert_eq!(m.frames().live(), live + 1);
    m.map_shared(a + MIB2 + 5 * PAGE_SIZE, SharedPage::Zero)
        .unwrap()
        .flush(&mut m);
    assert_eq!(m.frames().live(), live);
    m.frames_mut().budget = Some(0);
    m.map_shared(a + 9 * PAGE_SIZE, SharedPage::PageFree)
        .unwrap()
        .flush(&mut m);
    // Ranges over pinned blocks go entry by entry.
    m.map_shared_range(a, b, SharedPage::PageFree).unwrap();
    assert_eq!(byte(&m, &mem, a + 123 * PAGE_SIZE), Some(0xff));
    m.map_shared_range(S, SHADOW_END, SharedPage::Zero).unwrap();
    assert_eq!(m.frames().live(), live);
    assert_eq!(byte(&m, &mem, a + 123 * PAGE_SIZE), Some(0));
    assert_eq!(byte(&m, &mem, b), Some(0));
    // Budget is 0: a page inside the pinned range still only lacks its frame.
    assert_eq!(
        m.map_private(b - PAGE_SIZE, 3).err(),
        Some(MapError::OutOfFrames)
    );
    // Outside the pinned range, tables come and go.
    m.frames_mut().budget = None;
    m.map_private(b + PAGE_SIZE, 3).unwrap().flush(&mut m);
    assert_eq!(m.frames().live(), live + 2);
    m.map_shared(b + PAGE_SIZE, SharedPage::Zero)
        .unwrap()
        .flush(&mut m);
    assert_eq!(m.frames().live(), live);
    assert_eq!(
        m.unshare_range(a + 1, b).err(),
        Some(super::PrepareError::BadAddress)
    );
}

#[test]
fn pin_top_level_fixes_pml4_entries() {
    let mem = FakePhys::new(128);
    let (mut m, _) = setup(&mem, Config::linux());
    m.pin_top_level().unwrap();
    assert!(m.top_level_pinned());
    assert_eq!(m.stats().private_tables, 32);
    let snapshot: Vec<u64> = (472..504)
        .map(|i| mem.read_u64(FAKE_BASE + i * 8))
        .collect();
    let va = S + 9 * GIB512 + 3 * PAGE_SIZE;
    m.map_private(va, 5).unwrap().flush(&mut m);
    m.map_shared(va, SharedPage::Zero).unwrap().flush(&mut m);
    m.map_shared_range(S, SHADOW_END, SharedPage::PageFree)
        .unwrap();
    m.map_shared_range(S, SHADOW_END, SharedPage::Zero).unwrap();
    let after: Vec<u64> = (472..504)
        .map(|i| mem.read_u64(FAKE_BASE + i * 8))
        .collect();
    assert_eq!(snapshot, after);
    assert_eq!(m.stats().private_tables, 32);
    assert_eq!(byte(&m, &mem, va), Some(0));
}

/// Small deterministic PRNG.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    Shared(SharedPage),
    Private(u8),
}

#[test]
fn randomized_against_model() {
    for (seed, reshare, pin) in [
        (1u64, true, false),
        (2, false, false),
        (3, true, true),
        (0x9e37_79b9_7f4a_7c15, true, false),
    ] {
        run_model(seed, reshare, pin);
    }
}

fn run_model(seed: u64, reshare: bool, pin: bool) {
    let mem = FakePhys::new(2048);
    let (mut m, log) = setup(
        &mem,
        Config {
            reshare,
            ..Config::linux()
        },
    );
    let shared_snapshot: Vec<(PhysAddr, Vec<u64>)> = m
        .shared
        .all_frames()
        .map(|f| {
            (
                f,
                (0..512).map(|i| mem.read_u64(f.as_u64() + i * 8)).collect(),
            )
        })
        .collect();
    // Candidate pages: around PT, PD, PDPT and PML4 boundaries.
    let clusters = [
        S,
        S + MIB2 - 8 * PAGE_SIZE,
        S + GIB - 8 * PAGE_SIZE,
        S + GIB512 - 8 * PAGE_SIZE,
    ];
    let pages: Vec<usize> = clusters
        .iter()
        .flat_map(|&c| (0..24).map(move |i| c + i * PAGE_SIZE))
        .collect();
    let mut model: BTreeMap<usize, Model> = pages
        .iter()
        .map(|&p| (p, Model::Shared(SharedPage::Zero)))
        .collect();
    if pin {
        m.unshare_range(S + MIB2 - 8 * PAGE_SIZE, S + MIB2 + 16 * PAGE_SIZE)
            .unwrap();
    }
    let mut rng = XorShift(seed);
    let mut ooms = 0;
    for step in 0..3000 {
        let page = pages[rng.below(pages.len())];
        let kind = SharedPage::ALL[rng.below(4)];
        let mark = log.borrow().len();
        // Sometimes run out of frames: the mapping must stay as it was.
        let starve = rng.below(8) == 0;
        m.frames_mut().budget = if starve { Some(rng.below(3)) } else { None };
        match rng.below(10) {
            0..=3 => {
                let fill = rng.next() as u8;
                match m.map_private(page, fill) {
                    Ok(f) => {
                        f.flush(&mut m);
                        model.insert(page, Model::Private(fill));
                    }
                    Err(e) => {
                        assert!(starve && e == MapError::OutOfFrames);
                        ooms += 1;
                    }
                }
            }
            4..=7 => match m.map_shared(page, kind) {
                Ok(f) => {
                    f.flush(&mut m);
                    model.insert(page, Model::Shared(kind));
                }
                Err(e) => {
                    assert!(starve && e == MapError::OutOfFrames);
                    ooms += 1;
                }
            },
            _ => {
                m.frames_mut().budget = None;
                let len = 1 + rng.below(20);
                let end = page + len * PAGE_SIZE;
                m.map_shared_range(page, end, kind).unwrap();
                for (p, v) in model.range_mut(page..end) {
                    let _ = p;
                    *v = Model::Shared(kind);
                }
            }
        }
        assert_flush_before_free(&log.borrow()[mark..]);
        let privates = model
            .values()
            .filter(|v| matches!(v, Model::Private(_)))
            .count();
        assert_eq!(m.stats().private_pages, privates, "step {step}");
        assert_eq!(
            m.frames().live(),
            BASE_FRAMES + m.stats().private_tables + privates
        );
        if step % 50 == 0 || step == 2999 {
            for (&p, &v) in &model {
                let w = walk(&mem, m.pml4(), p).unwrap();
                let (want, writable) = match v {
                    Model::Shared(k) => (k.fill(), false),
                    Model::Private(f) => (f, true),
                };
                assert_eq!(mem.read_u8(w.phys), want, "step {step} page {p:#x}");
                assert_eq!(mem.read_u8(w.phys + 4095), want);
                assert_eq!(w.writable, writable);
                assert!(w.no_execute);
                let t = m.translate(p).unwrap();
                match (t, v) {
                    (Backing::Shared(k), Model::Shared(k2)) => assert_eq!(k, k2),
                    (Backing::Private(_), Model::Private(_)) => {}
                    other => panic!("{other:?}"),
                }
                if let Model::Shared(k) = v {
                    assert_eq!(kind_of(want), k);
                }
            }
        }
    }
    for (f, words) in &shared_snapshot {
        for (i, w) in words.iter().enumerate() {
            assert_eq!(
                mem.read_u64(f.as_u64() + i as u64 * 8),
                *w,
                "shared frame {f:?} changed"
            );
        }
    }
    assert!(ooms > 10, "only {ooms} out-of-frames cases");
    m.frames_mut().budget = None;
    m.map_shared_range(S, SHADOW_END, SharedPage::Zero).unwrap();
    assert_eq!(m.stats().private_pages, 0);
    if pin {
        // PDPT, PD, and the two PTs around the 2 MiB boundary stay.
        assert_eq!(m.stats().private_tables, 4);
    } else if reshare {
        assert_eq!(m.frames().live(), BASE_FRAMES);
        assert_eq!(m.stats().private_tables, 0);
    }
}

#[test]
fn big_leaf_ranges_use_one_full_flush() {
    let mem = FakePhys::new(256);
    let (mut m, log) = setup(&mem, Config::linux());
    m.unshare_range(S, S + 2 * MIB2).unwrap();
    let mark = log.borrow().len();
    m.map_shared_range(S, S + 2 * MIB2, SharedPage::PageFree)
        .unwrap();
    let events: Vec<Event> = log.borrow()[mark..].to_vec();
    assert_eq!(events, [Event::FlushAll]);
    assert_eq!(byte(&m, &mem, S + 2 * MIB2 - 1), Some(0xff));
    // A few leaves: one invlpg each.
    let mark = log.borrow().len();
    m.map_shared_range(S, S + 3 * PAGE_SIZE, SharedPage::Zero)
        .unwrap();
    let events: Vec<Event> = log.borrow()[mark..].to_vec();
    assert_eq!(
        events,
        [
            Event::FlushPage(S),
            Event::FlushPage(S + PAGE_SIZE),
            Event::FlushPage(S + 2 * PAGE_SIZE)
        ]
    );
    // Many private pages: frees only after the full flush.
    for i in 0..100 {
        m.map_private(S + i * PAGE_SIZE, 3).unwrap().flush(&mut m);
    }
    let mark = log.borrow().len();
    m.map_shared_range(S, S + 2 * MIB2, SharedPage::Zero)
        .unwrap();
    let events: Vec<Event> = log.borrow()[mark..].to_vec();
    assert_flush_before_free(&events);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Free(_)))
            .count(),
        100
    );
    assert_eq!(m.stats().private_pages, 0);
    assert_eq!(byte(&m, &mem, S), Some(0));
}

#[test]
fn takes_over_the_early_zero_shadow() {
    let mem = FakePhys::new(80);
    // The early shadow in the last four fake frames (outside the frame
    // source's reach only by convention: FakeFrames hands out from the
    // bottom, and 80 frames are far more than this test needs).
    let early: [PhysAddr; 4] =
        core::array::from_fn(|i| PhysAddr::new(FAKE_BASE + (76 + i as u64) * 4096));
    // SAFETY: fake memory holds the PML4 and the four frames; the region's
    // PML4 entries are empty.
    unsafe { crate::early::map_early_shadow(&mem, mem.pml4(), early, &Config::linux()) };
    let probes = [
        S,
        mem_to_shadow(DIRECT_MAP_BASE + 0x1234_5678),
        mem_to_shadow(crate::KERNEL_BASE + 0x8d230 * 8),
        SHADOW_END - 1,
    ];
    for va in probes {
        let w = walk(&mem, mem.pml4(), va).unwrap();
        assert_eq!(w.phys & !4095, early[0].as_u64(), "{va:#x}");
        assert!(!w.writable && w.no_execute);
        assert_eq!(load(&mem, mem.pml4(), va), Some(0));
    }
    assert_eq!(pml4_entry(&mem, SHADOW_END), 0);
    assert_eq!(pml4_entry(&mem, S - 1), 0);
    let snapshot: Vec<u64> = (0..4 * 512)
        .map(|i| mem.read_u64(early[0].as_u64() + i * 8))
        .collect();
    // `new` refuses the region, `new_over_early` takes it over.
    let log: Log = Default::default();
    let mk = |over: bool| {
        let frames = FakeFrames::new(&mem, log.clone());
        let tlb = RecordingTlb { log: log.clone() };
        // SAFETY: fake memory; the early entries map a zero page read-only.
        unsafe {
            if over {
                X86ShadowMapper::new_over_early(mem.pml4(), &mem, frames, tlb, Config::linux())
            } else {
                X86ShadowMapper::new(mem.pml4(), &mem, frames, tlb, Config::linux())
            }
        }
    };
    assert_eq!(mk(false).err(), Some(InitError::RegionInUse));
    log.borrow_mut().clear();
    let mut m = mk(true).expect("new_over_early");
    assert_eq!(*log.borrow().last().unwrap(), Event::FlushAll);
    assert_eq!(m.frames().live(), BASE_FRAMES);
    let zero = m.shared_page(SharedPage::Zero).as_u64();
    for va in probes {
        assert_eq!(walk(&mem, m.pml4(), va).unwrap().phys & !4095, zero);
        assert_eq!(m.translate(va), Some(Backing::Shared(SharedPage::Zero)));
    }
    // The mapper works as over an empty region, and never touched the
    // early frames.
    let page = mem_to_shadow(DIRECT_MAP_BASE) & !(PAGE_SIZE - 1);
    m.map_private(page, 0xfc).unwrap().flush(&mut m);
    assert_eq!(byte(&m, &mem, page), Some(0xfc));
    m.map_shared_range(SHADOW_START, SHADOW_END, SharedPage::PageFree)
        .unwrap();
    assert_eq!(byte(&m, &mem, S), Some(0xff));
    let after: Vec<u64> = (0..4 * 512)
        .map(|i| mem.read_u64(early[0].as_u64() + i * 8))
        .collect();
    assert_eq!(snapshot, after);
    for f in early {
        assert!(!m.frames().is_live(f));
    }
}
