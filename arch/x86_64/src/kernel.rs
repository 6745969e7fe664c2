//! A ready-made KASAN runtime for an x86_64 kernel that did not grow up
//! with this crate: one static runtime instance and a `GlobalAlloc`,
//! compiled here (this crate is never instrumented), so the kernel calls
//! only non-generic functions and needs no uninstrumented crate of its own.
//!
//! ```text
//!  kernel (instrumented)                      this module (not instrumented)
//!  #[global_allocator] KernelHeap ──────────► KASAN.heap_alloc / heap_free
//!  start(&KernelMap, cmdline, frames, &SVC) ─► layout from the kernel's map, checked
//!                                              shadow mapper over its PML4
//!                                              runtime (arena: first pages of the heap)
//!                                              all RAM valid, heap region, abi::install
//!  KernelServices (console, symbols, task) ◄── reports; stack traces walk rbp here
//! ```
//!
//! The kernel keeps its own address map: RAM mapped at `phys_offset`
//! (any offset in the upper half), its image, an optional vmalloc window
//! and a heap range at any free virtual address. What does not fit (a
//! direct map in the lower half, a region under the shadow, an unaligned
//! heap) is refused with a [`StartError`]. The shadow offset is the
//! compiler's (`-asan-mapping-offset=0xdffffc0000000000`, [`SHADOW_OFFSET`]).
//! Outlined checks (`__asan_load8_noabort`, ...) need nothing mapped before
//! [`start`]; inline checks read the shadow themselves, so such a kernel
//! maps the early zero shadow ([`crate::early`]) before its first
//! instrumented instruction and says so in [`KernelMap::early_shadow`].
//! Single CPU: the mapper flushes with a local `invlpg`.

use core::alloc::{GlobalAlloc, Layout as AllocLayout};

use hybrid_shadow::layout::BLOCK_SIZE;
use hybrid_shadow::{
    Config, HeapError, Ip, Kasan, Layout, LayoutError, Mode, PageError, Platform, Region, RegionError, RegionKind, Size, SlabRef,
    Symbol,
};

use crate::frames::FrameSource;
use crate::init::unshare_shadow_of;
use crate::layout::{KERNEL_HALF_START, PAGE_SIZE, SHADOW_OFFSET};
use crate::mapper::{Config as MapperConfig, InitError as MapperInitError, PrepareError, X86ShadowMapper};
use crate::phys::OffsetPhysMem;
use crate::tlb::LocalInvlpg;
use crate::PhysAddr;

/// What the runtime needs from the kernel besides frames.
pub trait KernelServices: Sync {
    /// Write report text to the console.
    fn write_str(&self, s: &str);
    /// Resolve a code address (`name` already `[A-Za-z0-9_]+`); false when
    /// the kernel has no symbols for it (reports then print the address).
    fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool {
        let _ = (pc, f);
        false
    }
    /// Name and id of the running task.
    fn current_task(&self) -> (&str, u32) {
        ("kernel", 0)
    }
    /// Stop after a report under `kasan.fault=panic`.
    fn panic(&self, msg: &str) -> !;
}

/// The kernel's frame allocator, without sanitizer hooks: frames for the
/// shadow and its page tables (physical addresses, reached at
/// `phys_offset`).
#[derive(Clone, Copy, Debug)]
pub struct KernelFrames {
    /// A zeroed or dirty 4 KiB frame, or `None`.
    pub alloc: fn() -> Option<u64>,
    /// Give back a frame from `alloc`.
    pub free: fn(u64),
}

// SAFETY: `start`'s contract makes `alloc` hand out distinct, unused RAM
// frames reachable at `phys_offset` until they come back through `free`.
unsafe impl FrameSource for KernelFrames {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        (self.alloc)().map(PhysAddr::new)
    }
    fn free_frame(&mut self, frame: PhysAddr) {
        (self.free)(frame.as_u64());
    }
}

/// The kernel as the runtime sees it: its services plus a frame-pointer
/// stack walk done here (uninstrumented).
#[derive(Clone, Copy)]
pub struct KernelPlatform(&'static dyn KernelServices);

impl Platform for KernelPlatform {
    fn write_str(&self, s: &str) {
        self.0.write_str(s);
    }
    fn current_pid(&self) -> u32 {
        self.0.current_task().1
    }
    fn write_task_name(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        out.write_str(self.0.current_task().0)
    }
    #[inline(never)]
    fn stack_trace(&self, out: &mut [usize]) -> usize {
        // Frame records live on kernel stacks, in the upper half; the chain
        // ends at a zero rbp (set at entry) or a record that is not above
        // the last one. The runtime drops its own frames (those before its
        // entry point's return address).
        let kernel = |addr: usize, _len: usize| addr >= KERNEL_HALF_START;
        // SAFETY: frame-pointer chains of kernel code built with
        // -Cforce-frame-pointers only link mapped stack records.
        unsafe { crate::stack::walk_frames(crate::stack::frame_pointer(), out, 64, kernel) }
    }
    fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool {
        // A return address may be just past its function's last byte.
        self.0.symbolize(pc.wrapping_sub(1), &mut |s| f(Symbol { offset: s.offset + 1, ..s }))
    }
    fn slab_of(&self, _addr: usize) -> Option<SlabRef> {
        None
    }
    fn panic(&self, msg: &str) -> ! {
        self.0.panic(msg)
    }
}

/// The runtime type this module instantiates.
pub type KernelKasan = Kasan<X86ShadowMapper<KernelFrames>, KernelPlatform>;

static KASAN: spin::Once<KernelKasan> = spin::Once::new();

/// The kernel's own address map, as the kernel set it up.
#[derive(Clone, Copy, Debug)]
pub struct KernelMap {
    /// All RAM is mapped at `virt = phys + phys_offset` (the direct map).
    pub phys_offset: usize,
    /// End of the highest RAM range (physical).
    pub ram_end: u64,
    /// Virtual range of the kernel image (globals, boot stack).
    pub image: (usize, usize),
    /// The vmalloc window, if the kernel has one (its areas get per-area shadow).
    pub vmalloc: Option<(usize, usize)>,
    /// Mapped, writable virtual range handed to the runtime: its first
    /// pages hold the runtime's metadata, the rest is the KASAN heap.
    pub heap: (usize, usize),
    /// Physical address of the live PML4.
    pub pml4: u64,
    /// Whether the shadow's PML4 slots (472..504) map the early read-only
    /// zero shadow ([`crate::early::map_early_shadow`]), as a kernel built
    /// with inline checks must from its first instrumented instruction on:
    /// [`start`] then takes the region over without a moment unmapped
    /// ([`X86ShadowMapper::new_over_early`]). `false`: the slots must be
    /// empty ([`StartError::Mapper`] with `RegionInUse` otherwise).
    pub early_shadow: bool,
}

/// Why [`start`] refused (nothing is checked afterwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// [`start`] ran before.
    AlreadyStarted,
    /// The direct map, the image or the heap lies outside the upper half
    /// (no shadow can describe it).
    NotKernelHalf,
    /// The heap range is not 32 KiB aligned or too small for the metadata
    /// and a heap.
    HeapRange,
    /// The layout derived from the map breaks an invariant (overlap,
    /// alignment, a region under the shadow).
    Layout(LayoutError),
    /// The shadow mapper could not start (its PML4 slots in use, no frames).
    Mapper(MapperInitError),
    /// No frames for the direct map's shadow page tables.
    Prepare(PrepareError),
    /// The runtime could not start.
    Runtime(hybrid_shadow::InitError),
    /// Marking RAM valid was refused.
    Ram(PageError),
    /// The heap could not be set up.
    Heap(HeapError),
}

const fn down(x: usize) -> usize {
    x & !(BLOCK_SIZE - 1)
}
const fn up(x: usize) -> usize {
    (x + BLOCK_SIZE - 1) & !(BLOCK_SIZE - 1)
}

/// The layout the runtime uses for `map`: Linux's shadow offset, RAM at
/// the kernel's `phys_offset`, the image rounded out to blocks, the whole
/// upper half covered.
pub fn layout_of(map: &KernelMap) -> Result<Layout, StartError> {
    let in_upper = |a: usize| a >= KERNEL_HALF_START;
    if !in_upper(map.phys_offset) || !in_upper(map.image.0) || !in_upper(map.heap.0) {
        return Err(StartError::NotKernelHalf);
    }
    let dm_end = map.phys_offset.checked_add(up(map.ram_end as usize)).ok_or(StartError::NotKernelHalf)?;
    let layout = Layout {
        offset: SHADOW_OFFSET,
        direct_map: Region { start: map.phys_offset, end: dm_end },
        vmalloc: map.vmalloc.map_or(Region { start: 0, end: 0 }, |(s, e)| Region { start: s, end: e }),
        image: Region { start: down(map.image.0), end: up(map.image.1) },
        covered: Region { start: KERNEL_HALF_START, end: 0xffff_ffff_ffff_f000 },
        user_end: 0x0000_8000_0000_0000,
    };
    layout.validate().map_err(StartError::Layout)?;
    Ok(layout)
}

/// Start the runtime for the kernel described by `map`, with the
/// `kasan.*` words of `cmdline`; then every heap allocation through
/// [`KernelHeap`] is checked and the compiler's checks are live. Run the
/// `.init_array` constructors (global registration) after it.
///
/// # Safety
///
/// `map` is true: all RAM is mapped read-write at `phys_offset`, the heap
/// range is mapped read-write and used by nothing else from now on, `pml4`
/// is the live PML4 and its shadow slots (472..504) are unused, or, with
/// `early_shadow`, each present one maps the early zero shadow (read-only,
/// reads zero everywhere, its frames not handed out by `frames`); `frames`
/// hands out unused RAM frames; one CPU, CPL 0, EFER.NXE set.
pub unsafe fn start(
    map: &KernelMap,
    cmdline: &str,
    frames: KernelFrames,
    services: &'static dyn KernelServices,
) -> Result<&'static KernelKasan, StartError> {
    if KASAN.get().is_some() {
        return Err(StartError::AlreadyStarted);
    }
    let platform = KernelPlatform(services);
    let mut cfg = Config::default();
    cfg.parse_cmdline(cmdline, |e| {
        let _ = core::fmt::Write::write_fmt(&mut hybrid_shadow::report::ConsoleWriter::new(&platform), format_args!("{e}\n"));
    });
    let layout = layout_of(map)?;
    let arena_len = up(KernelKasan::arena_bytes(&layout, &cfg));
    let (heap_start, heap_end) = map.heap;
    if !heap_start.is_multiple_of(BLOCK_SIZE)
        || !heap_end.is_multiple_of(BLOCK_SIZE)
        || heap_end < heap_start + arena_len + 2 * BLOCK_SIZE
    {
        return Err(StartError::HeapRange);
    }
    // SAFETY: the caller's contract: RAM at phys_offset, live PML4 with
    // free shadow slots (or, with early_shadow, slots that map the early
    // zero shadow from frames of its own), frames fit the memory accessor,
    // one CPU, NXE.
    let mut mapper = unsafe {
        let (pml4, phys, tlb) = (PhysAddr::new(map.pml4), OffsetPhysMem::new(map.phys_offset), LocalInvlpg::new());
        if map.early_shadow {
            X86ShadowMapper::new_over_early(pml4, phys, frames, tlb, MapperConfig::linux())
        } else {
            X86ShadowMapper::new(pml4, phys, frames, tlb, MapperConfig::linux())
        }
    }
    .map_err(StartError::Mapper)?;
    if cfg.mode != Mode::Off {
        unshare_shadow_of(&mut mapper, layout.direct_map.start, layout.direct_map.end).map_err(StartError::Prepare)?;
    }
    // SAFETY: the heap range is mapped read-write and the runtime's alone
    // (caller); its first `arena_len` bytes become the metadata arena.
    let arena = unsafe {
        core::ptr::write_bytes(heap_start as *mut u8, 0, arena_len);
        core::slice::from_raw_parts_mut(heap_start as *mut u8, arena_len)
    };
    let k = KernelKasan::new(cfg, layout, mapper, platform, arena).map_err(StartError::Runtime)?;
    let k = KASAN.call_once(|| k);
    // The kernel does not report its page allocator: all RAM is valid.
    let ram = down(map.ram_end as usize).max(PAGE_SIZE);
    k.mark_reserved(layout.direct_map.start, Size(ram)).map_err(StartError::Ram)?;
    // SAFETY: the rest of the heap range is the heap's (caller's contract).
    unsafe { k.heap_init(heap_start + arena_len, Size(heap_end - heap_start - arena_len)) }.map_err(StartError::Heap)?;
    #[cfg(feature = "abi")]
    hybrid_shadow::abi::install(k);
    Ok(k)
}

/// The runtime, once [`start`] succeeded.
#[must_use]
pub fn runtime() -> Option<&'static KernelKasan> {
    KASAN.get()
}

/// Track `r` byte-precisely as a region of `kind` (a stack or a heap at a
/// virtual range of its own, outside the direct map and the image): what
/// [`Kasan::add_region`] does, instantiated here, in the uninstrumented
/// backend, so that an instrumented kernel calls no runtime generic of its
/// own. The range must be mapped before anything runs on it.
/// [`RegionError`] says what does not fit; `Ok(false)`: [`start`] has not
/// run (nothing is tracked).
#[inline(never)]
pub fn add_region(kind: RegionKind, r: Region) -> Result<bool, RegionError> {
    match runtime() {
        Some(k) => k.add_region(kind, r).map(|()| true),
        None => Ok(false),
    }
}

/// The KASAN heap as the kernel's global allocator:
/// `#[global_allocator] static HEAP: KernelHeap = KernelHeap;`
/// Null until [`start`] ran, and when [`Kasan::heap_alloc`] finds no room
/// in the fixed heap range even after reclaiming its quarantine and empty
/// slabs (any power-of-two alignment is honoured); Rust's `alloc` then
/// calls `handle_alloc_error`.
pub struct KernelHeap;

// SAFETY: blocks come from the runtime's heap, which hands out each byte
// to one live allocation at a time, aligned as asked (or null).
unsafe impl GlobalAlloc for KernelHeap {
    // The return address is read in the block that calls the runtime: with
    // shrink-wrapping the frame is set up only there, and [rbp + 8] is
    // this function's return address only once it is.
    #[inline(never)]
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        match KASAN.get() {
            Some(k) => k.heap_alloc(Size(layout.size()), layout.align(), Ip(crate::stack::return_address())),
            None => core::ptr::null_mut(),
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: AllocLayout) {
        if let Some(k) = KASAN.get() {
            // A bad free is reported and the memory left alone.
            let _ = k.heap_free(ptr as usize, Ip(crate::stack::return_address()));
        }
    }
}
