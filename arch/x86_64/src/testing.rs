//! Host test doubles: fake physical memory, a frame pool, a TLB recorder and
//! a software page walker independent of the mapper's own code.
//!
//! ```text
//!   "physical" FAKE_BASE + i*4096  <->  host buffer + i*4096   (4 KiB aligned)
//!   frame 0: the PML4;  frames 1..: the FakeFrames pool
//! ```

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::vec::Vec;

use x86_64::structures::paging::PageTableFlags as F;
use x86_64::PhysAddr;

use crate::frames::FrameSource;
use crate::mapper::{Config, X86ShadowMapper};
use crate::phys::PhysMem;
use crate::tlb::TlbFlush;

/// Physical address of the first fake frame (not 0, so a bug that uses a
/// zero entry as an address is caught).
pub const FAKE_BASE: u64 = 0x10_0000;

/// A host buffer pretending to be physical memory.
pub struct FakePhys {
    base: *mut u8,
    frames: usize,
}

impl FakePhys {
    pub fn new(frames: usize) -> Self {
        let layout = Layout::from_size_align(frames * 4096, 4096).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        FakePhys { base, frames }
    }

    pub fn pml4(&self) -> PhysAddr {
        PhysAddr::new(FAKE_BASE)
    }

    fn offset(&self, phys: u64) -> usize {
        assert!(phys >= FAKE_BASE, "phys {phys:#x} below fake memory");
        let off = (phys - FAKE_BASE) as usize;
        assert!(
            off < self.frames * 4096,
            "phys {phys:#x} beyond fake memory"
        );
        off
    }

    pub fn read_u64(&self, phys: u64) -> u64 {
        assert_eq!(phys % 8, 0);
        let off = self.offset(phys);
        // SAFETY: in bounds (checked) and aligned.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }

    pub fn write_u64(&self, phys: u64, v: u64) {
        assert_eq!(phys % 8, 0);
        let off = self.offset(phys);
        // SAFETY: in bounds (checked) and aligned.
        unsafe { self.base.add(off).cast::<u64>().write_volatile(v) }
    }

    pub fn read_u8(&self, phys: u64) -> u8 {
        let off = self.offset(phys);
        // SAFETY: in bounds (checked).
        unsafe { self.base.add(off).read_volatile() }
    }

    pub fn write_u8(&self, phys: u64, v: u8) {
        let off = self.offset(phys);
        // SAFETY: in bounds (checked).
        unsafe { self.base.add(off).write_volatile(v) }
    }
}

impl Drop for FakePhys {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.frames * 4096, 4096).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, layout) }
    }
}

// SAFETY: every frame inside the buffer maps to an aligned, in-bounds
// 4 KiB slice of it; out-of-range frames panic instead of returning a pointer.
unsafe impl PhysMem for FakePhys {
    fn frame_ptr(&self, frame: PhysAddr) -> *mut u8 {
        assert!(frame.is_aligned(4096u64));
        let off = self.offset(frame.as_u64());
        // SAFETY: in bounds (checked).
        unsafe { self.base.add(off) }
    }
}

/// What happened, in order: frees and flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Alloc(u64),
    Free(u64),
    FlushPage(usize),
    FlushAll,
}

pub type Log = Rc<RefCell<Vec<Event>>>;

/// A pool of fake frames with an optional allocation budget.
pub struct FakeFrames {
    free: Vec<u64>,
    live: BTreeSet<u64>,
    /// Allocations still allowed (`None`: unlimited).
    pub budget: Option<usize>,
    pub log: Log,
}

impl FakeFrames {
    /// Frames 1..n of `mem` (frame 0 is the PML4).
    pub fn new(mem: &FakePhys, log: Log) -> Self {
        let free = (1..mem.frames as u64)
            .rev()
            .map(|i| FAKE_BASE + i * 4096)
            .collect();
        FakeFrames {
            free,
            live: BTreeSet::new(),
            budget: None,
            log,
        }
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    pub fn is_live(&self, f: PhysAddr) -> bool {
        self.live.contains(&f.as_u64())
    }
}

// SAFETY: hands out distinct frames of the fake memory, each at most once
// until returned; panics on a double or foreign free.
unsafe impl FrameSource for FakeFrames {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        if let Some(b) = &mut self.budget {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        let f = self.free.pop()?;
        // (Pool frames hold junk, see `mapper`: the mapper must initialise them.)
        assert!(self.live.insert(f));
        self.log.borrow_mut().push(Event::Alloc(f));
        Some(PhysAddr::new(f))
    }

    fn free_frame(&mut self, frame: PhysAddr) {
        let f = frame.as_u64();
        assert!(
            self.live.remove(&f),
            "free of a frame not handed out: {f:#x}"
        );
        self.log.borrow_mut().push(Event::Free(f));
        self.free.push(f);
    }
}

/// Records flushes instead of running `invlpg`.
pub struct RecordingTlb {
    pub log: Log,
}

// SAFETY: test double; there is no real TLB behind the fake memory.
unsafe impl TlbFlush for RecordingTlb {
    fn flush_page(&mut self, va: usize) {
        self.log.borrow_mut().push(Event::FlushPage(va));
    }

    fn flush_all(&mut self) {
        self.log.borrow_mut().push(Event::FlushAll);
    }
}

/// The mapper type under test.
pub type TestMapper<'a> = X86ShadowMapper<FakeFrames, &'a FakePhys, RecordingTlb>;

/// A mapper over `mem` with garbage in the frames (to catch missing
/// initialisation), plus the shared log.
pub fn mapper(mem: &FakePhys, config: Config) -> (TestMapper<'_>, Log) {
    // Fill every pool frame with junk.
    for i in 1..mem.frames as u64 {
        for j in 0..512u64 {
            mem.write_u64(
                FAKE_BASE + i * 4096 + j * 8,
                0xdead_beef_0000_0007 ^ (i << 12),
            );
        }
    }
    let log: Log = Rc::new(RefCell::new(Vec::new()));
    let frames = FakeFrames::new(mem, log.clone());
    let tlb = RecordingTlb { log: log.clone() };
    // SAFETY: the PML4 and all pool frames are in `mem`; nothing else
    // writes them.
    let m = unsafe { X86ShadowMapper::new(mem.pml4(), mem, frames, tlb, config) }.expect("new");
    (m, log)
}

/// A translation found by [`walk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked {
    /// Physical address of the byte.
    pub phys: u64,
    /// Writable at every level.
    pub writable: bool,
    /// NX at some level.
    pub no_execute: bool,
    /// Physical addresses of the PDPT, PD, PT used.
    pub tables: [u64; 3],
}

/// Walk the fake page tables like the MMU does (4 KiB pages only).
pub fn walk(mem: &FakePhys, pml4: PhysAddr, va: usize) -> Option<Walked> {
    let mut table = pml4.as_u64();
    let mut writable = true;
    let mut nx = false;
    let mut tables = [0; 3];
    for (i, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let idx = ((va >> shift) & 511) as u64;
        let e = mem.read_u64(table + idx * 8);
        if e & F::PRESENT.bits() == 0 {
            return None;
        }
        assert_eq!(e & F::HUGE_PAGE.bits(), 0, "huge page in the shadow");
        writable &= e & F::WRITABLE.bits() != 0;
        nx |= e & F::NO_EXECUTE.bits() != 0;
        table = e & 0x000f_ffff_ffff_f000;
        if i < 3 {
            tables[i] = table;
        }
    }
    Some(Walked {
        phys: table + (va & 4095) as u64,
        writable,
        no_execute: nx,
        tables,
    })
}

/// The byte the shadow address `va` reads, as the MMU would resolve it.
pub fn load(mem: &FakePhys, pml4: PhysAddr, va: usize) -> Option<u8> {
    walk(mem, pml4, va).map(|w| mem.read_u8(w.phys))
}
