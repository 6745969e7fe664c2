//! A minimal kernel adopting hybrid-shadow (see docs/adopting.md): its heap
//! is the KASAN heap at a virtual range of its own, and 8 deliberate bugs
//! are reported with their type and the case's function in the title.
//! Instrumented with `-Zsanitizer=kernel-address` (Cargo.toml).
//!
//! The glue (what the kernel writes to adopt the crate) is between the
//! `adoption glue` markers; the rest is the kernel's own code (frames,
//! heap mapping) and the bug cases.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::{boxed::Box, vec::Vec};
use core::hint::black_box;
use core::ptr::read_volatile;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use guest_boot::{code, exit, paging, println, BootInfo};

/// The kernel's heap: 8 MiB at a virtual range of its own.
const HEAP_VA: usize = 0xffff_a100_0000_0000;
const HEAP_LEN: usize = 8 << 20;
/// The bug cases' stack: 32 KiB at a virtual range of its own (not the
/// boot stack in the image), tracked through the region API.
const CASE_STACK_VA: usize = 0xffff_a200_0000_0000;
const CASE_STACK_LEN: usize = 32 << 10;

// ---- adoption glue: begin
use hybrid_shadow::{ksyms::Reserved, Symbol};
use hybrid_shadow_x86_64::kernel::{self, KernelFrames, KernelHeap, KernelMap, KernelServices};

#[global_allocator]
static HEAP: KernelHeap = KernelHeap;

/// Room for the symbol table, written after linking by `kasan-ksyms`.
#[used]
#[no_mangle]
#[link_section = ".ksyms"]
static KSYMS: Reserved<{ 1 << 20 }> = Reserved::new();

struct Services;

impl KernelServices for Services {
    fn write_str(&self, s: &str) {
        guest_boot::serial::write_bytes(s.as_bytes());
    }
    fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool {
        KSYMS.table().is_some_and(|t| t.symbolize(pc, f))
    }
    fn panic(&self, msg: &str) -> ! {
        println!("Kernel panic - not syncing: {}", msg);
        exit(code::KASAN_PANIC)
    }
}

fn start_kasan(info: &'static BootInfo) {
    let (kernel_start, kernel_end) = info.kernel_phys;
    let ram_end = info.regions().iter().map(|r| r.addr + r.size).max().unwrap_or(0);
    let image = paging::KERNEL_VMA as usize;
    let map = KernelMap {
        phys_offset: paging::DIRECT_MAP_BASE as usize,
        ram_end,
        image: (image + kernel_start as usize, image + kernel_end as usize),
        vmalloc: None,
        heap: (HEAP_VA, HEAP_VA + HEAP_LEN),
        pml4: paging::pml4_phys(),
        early_shadow: cfg!(feature = "inline-checks"), // guest-boot mapped it (docs/adopting.md)
    };
    let frames = KernelFrames { alloc: alloc_frame, free: |_| {} };
    // SAFETY: the map is this kernel's (direct map of all RAM, heap mapped by
    // map_heap for the runtime alone, live PML4 with free shadow slots or the
    // early shadow, in the image); alloc_frame hands out unused frames; one CPU.
    if let Err(e) = unsafe { kernel::start(&map, info.cmdline(), frames, &Services) } {
        println!("kasan: start failed: {:?}", e);
        exit(code::BAD_BOOT);
    }
    // SAFETY: once, after the shadow exists: registers the globals.
    unsafe { guest_boot::run_init_array() };
}
// ---- adoption glue: end

/// Next free physical frame (a bump allocator over RAM above the image).
static NEXT_FRAME: AtomicU64 = AtomicU64::new(0);
static FRAME_END: AtomicU64 = AtomicU64::new(0);

fn alloc_frame() -> Option<u64> {
    let f = NEXT_FRAME.fetch_add(4096, Relaxed);
    (f + 4096 <= FRAME_END.load(Relaxed)).then_some(f)
}

/// Map the heap range and the case stack with fresh frames.
fn map_heap(info: &BootInfo) {
    let mut ranges = [(0u64, 0u64); 8];
    let n = info.free_ram(&mut ranges);
    let (lo, hi) = ranges[..n].iter().copied().max_by_key(|r| r.1 - r.0).unwrap_or((0, 0));
    NEXT_FRAME.store(lo, Relaxed);
    FRAME_END.store(hi, Relaxed);
    let heap = (HEAP_VA..HEAP_VA + HEAP_LEN).step_by(4096);
    for va in heap.chain((CASE_STACK_VA..CASE_STACK_VA + CASE_STACK_LEN).step_by(4096)) {
        let pa = alloc_frame().unwrap_or_else(|| exit(code::BAD_BOOT));
        let flags = paging::PTE_W | paging::PTE_NX;
        // SAFETY: a fresh frame at an unused virtual address outside the shadow slots.
        if unsafe { paging::map_4k(va as u64, pa, flags, &mut alloc_frame) }.is_err() {
            exit(code::BAD_BOOT);
        }
    }
}

/// Run `f` on the case stack (its frames, locals and redzones there).
fn on_case_stack(f: fn()) {
    let top = CASE_STACK_VA + CASE_STACK_LEN;
    // SAFETY: the case stack is mapped (map_heap), 16-byte aligned at its
    // top and used by nothing else; the old rsp waits in r12 (callee-saved:
    // the call preserves it) and comes back after the call, which follows
    // the C ABI (caller-saved registers clobbered). rbp is left alone, so
    // the frame-pointer chain of a report's stack trace runs from the case
    // stack back into this one.
    unsafe {
        core::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) f,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

#[no_mangle]
pub fn guest_main(info: &'static BootInfo) -> ! {
    map_heap(info);
    start_kasan(info);
    let stack = hybrid_shadow::Region::new(CASE_STACK_VA, CASE_STACK_LEN);
    if let Err(e) = kernel::add_region(hybrid_shadow::RegionKind::Stack, stack) {
        println!("example: case stack refused: {:?}", e);
        exit(code::BAD_BOOT);
    }
    println!("example: case stack {:#x}-{:#x}", stack.start, stack.end);
    let v: Vec<u32> = (0..100).collect();
    println!("example: heap works: sum {}", v.iter().sum::<u32>());
    for (name, expect, case) in CASES {
        println!("example-case: {} expect {}", name, expect);
        // The stack case runs on a stack of its own, tracked as a region.
        if name == "stack_oob_right" {
            on_case_stack(case);
        } else {
            case();
        }
        println!("example-case-end: {}", name);
    }
    println!("example: done");
    exit(code::SUCCESS)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("example: PANIC: {}", info);
    exit(code::PANIC)
}

// ---- the bug cases ---------------------------------------------------------

type Case = (&'static str, &'static str, fn());

/// Each case, the bug type it must report, in order.
const CASES: [Case; 8] = [
    ("box_oob_right", "slab-out-of-bounds", box_oob_right),
    ("vec_oob_right", "slab-out-of-bounds", vec_oob_right),
    ("box_use_after_free", "slab-use-after-free", box_use_after_free),
    ("global_oob_right", "global-out-of-bounds", global_oob_right),
    ("stack_oob_right", "stack-out-of-bounds", stack_oob_right),
    ("page_heap_oob_right", "slab-out-of-bounds", page_heap_oob_right),
    ("page_heap_use_after_free", "use-after-free", page_heap_use_after_free),
    ("heap_double_free", "double-free", heap_double_free),
];

fn rd8(a: usize) -> u8 {
    // SAFETY: the cases read mapped memory (out of bounds or freed, which
    // is the point): heap, image or stack.
    unsafe { read_volatile(black_box(a) as *const u8) }
}

#[inline(never)]
fn box_oob_right() {
    let b = Box::new([7u8; 13]);
    let p = b.as_ptr() as usize;
    black_box(rd8(p + black_box(13)));
    drop(b);
}

#[inline(never)]
fn vec_oob_right() {
    let v: Vec<u32> = Vec::with_capacity(10);
    black_box(rd8(v.as_ptr() as usize + black_box(40)));
    drop(v);
}

#[inline(never)]
fn box_use_after_free() {
    let b = Box::new(0x5au64);
    let p = &*b as *const u64 as usize;
    drop(b);
    black_box(rd8(p));
}

static GLOBAL: [u8; 10] = [3; 10];

#[inline(never)]
fn global_oob_right() {
    black_box(rd8(core::ptr::addr_of!(GLOBAL) as usize + black_box(13)));
}

#[inline(never)]
fn stack_oob_right() {
    let local = [0u8; 10];
    let p = black_box(local.as_ptr()) as usize;
    black_box(rd8(p + black_box(10)));
    black_box(&local);
}

#[inline(never)]
fn page_heap_oob_right() {
    let v: Vec<u8> = Vec::with_capacity(10_000);
    black_box(rd8(v.as_ptr() as usize + black_box(10_000)));
    drop(v);
}

#[inline(never)]
fn page_heap_use_after_free() {
    let v: Vec<u8> = alloc::vec![1; 10_000];
    let p = v.as_ptr() as usize;
    drop(v);
    black_box(rd8(p + 4096));
}

#[inline(never)]
fn heap_double_free() {
    let layout = core::alloc::Layout::from_size_align(24, 8).unwrap_or(core::alloc::Layout::new::<u8>());
    // SAFETY: deliberately wrong: the block is freed twice (the runtime
    // reports the second free and leaves the memory alone).
    unsafe {
        let p = alloc::alloc::alloc(layout);
        alloc::alloc::dealloc(p, layout);
        alloc::alloc::dealloc(black_box(p), layout);
    }
    // Not a tail call: this frame stays on the stack for the report.
    black_box(layout);
}
