//! Early boot of the test guest (NOT instrumented by KASAN).
//!
//! PVH entry -> long mode -> `boot_entry64` (serial, GDT/IDT, memory map,
//! command line, direct map) -> `guest_main(&BootInfo)` in the guest crate.
#![no_std]
#![allow(static_mut_refs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

/// Assembly an interrupt entry stub runs before its first instrumented
/// function: in the KMSAN kernel, switch to this CPU's interrupt context
/// (caller-saved registers already saved; the stack 16-byte aligned).
#[cfg(feature = "kmsan")]
macro_rules! irq_enter {
    () => {
        "call kmsan_interrupt_enter"
    };
}
#[cfg(not(feature = "kmsan"))]
macro_rules! irq_enter {
    () => {
        ""
    };
}
/// Assembly an interrupt entry stub runs after its handler returned: back
/// to the interrupted context (KMSAN kernel).
#[cfg(feature = "kmsan")]
macro_rules! irq_exit {
    () => {
        "call kmsan_interrupt_exit"
    };
}
#[cfg(not(feature = "kmsan"))]
macro_rules! irq_exit {
    () => {
        ""
    };
}

pub mod serial;
pub mod config;
pub mod cpu;
#[cfg(all(feature = "early-shadow", not(feature = "kmsan")))]
mod early_shadow;
mod entry;
pub mod ksyms;
pub mod paging;
pub mod profile;
pub mod smp;
pub mod stack;
pub mod time;

pub use config::Config;
pub use serial::{code, exit};

pub const MAX_REGIONS: usize = 128;
pub const E820_RAM: u32 = 1;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    /// Memory map as given by the firmware (PVH memmap).
    pub regions: [MemRegion; MAX_REGIONS],
    pub nregions: usize,
    /// Command line (as given; empty if none).
    pub cmdline: [u8; 1024],
    pub cmdline_len: usize,
    pub config: Config,
    /// Physical range of the kernel image (boot tables, stack, .bss included).
    pub kernel_phys: (u64, u64),
    /// Physical address of the PVH start info (in low memory).
    pub start_info_phys: u64,
    /// Total RAM in bytes.
    pub ram_bytes: u64,
}

impl BootInfo {
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions[..self.nregions]
    }
    /// End of the highest RAM range (physical): above 3 GiB QEMU puts RAM
    /// past the PCI hole at 4 GiB, so frames go beyond `ram_bytes / 4096`.
    pub fn ram_end(&self) -> u64 {
        self.regions().iter().filter(|r| r.kind == E820_RAM).map(|r| r.addr + r.size).max().unwrap_or(0)
    }
    /// RAM ranges (start, end) with the first MiB and the kernel image removed,
    /// page aligned: what the page allocator may use.
    pub fn free_ram(&self, out: &mut [(u64, u64)]) -> usize {
        let (ks, ke) = self.kernel_phys;
        let mut n = 0;
        for r in self.regions() {
            if r.kind != E820_RAM {
                continue;
            }
            let s = r.addr.max(0x10_0000);
            let e = r.addr + r.size;
            let s = (s + 0xfff) & !0xfff;
            let e = e & !0xfff;
            for (a, b) in [(s, e.min(ks)), (s.max(ke), e)] {
                if a < b && n < out.len() {
                    out[n] = (a, b);
                    n += 1;
                }
            }
        }
        n
    }
}

static mut BOOT_INFO: BootInfo = BootInfo {
    regions: [MemRegion { addr: 0, size: 0, kind: 0 }; MAX_REGIONS],
    nregions: 0,
    cmdline: [0; 1024],
    cmdline_len: 0,
    config: Config::default(),
    kernel_phys: (0, 0),
    start_info_phys: 0,
    ram_bytes: 0,
};

pub fn boot_info() -> &'static BootInfo {
    // SAFETY: `boot_entry64` fills BOOT_INFO before it calls `guest_main`,
    // and nothing writes it afterwards: shared borrows from then on are sound.
    unsafe { &*core::ptr::addr_of!(BOOT_INFO) }
}

extern "C" {
    static __init_array_start: extern "C" fn();
    static __init_array_end: extern "C" fn();
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

/// Boot stack bounds (virtual).
pub fn boot_stack() -> (u64, u64) {
    (core::ptr::addr_of!(boot_stack_bottom) as u64, core::ptr::addr_of!(boot_stack_top) as u64)
}

/// Run the `.init_array` constructors (ASan global registration). Call once,
/// after the shadow exists.
///
/// # Safety
///
/// Once, after the sanitizer's runtime is up: the constructors register
/// (and poison around) the instrumented globals, and the linker script
/// brackets `.init_array` with `__init_array_start` / `__init_array_end`.
pub unsafe fn run_init_array() -> usize {
    let mut p = core::ptr::addr_of!(__init_array_start);
    let end = core::ptr::addr_of!(__init_array_end);
    let mut n = 0;
    while p < end {
        let f = core::ptr::read(p);
        f();
        n += 1;
        p = p.add(1);
    }
    n
}

extern "Rust" {
    /// Defined by the guest crate.
    fn guest_main(info: &'static BootInfo) -> !;
}

const PVH_MAGIC: u32 = 0x336e_c578;

#[no_mangle]
unsafe extern "C" fn boot_entry64(start_info: u32) -> ! {
    time::mark_boot();
    serial::init();
    println!();
    println!("hybrid-guest: booting (PVH start info at {:#x})", start_info);
    cpu::init();
    let bi = &mut *core::ptr::addr_of_mut!(BOOT_INFO);
    bi.start_info_phys = start_info as u64;
    bi.kernel_phys = paging::kernel_phys_range();
    // Still on the boot identity map (0..1 GiB): read the start info directly.
    let si = start_info as u64 as *const u8;
    let rd32 = |off: usize| core::ptr::read_unaligned(si.add(off) as *const u32);
    let rd64 = |off: usize| core::ptr::read_unaligned(si.add(off) as *const u64);
    if start_info == 0 || rd32(0) != PVH_MAGIC {
        println!("boot: no PVH start info (magic {:#x})", if start_info == 0 { 0 } else { rd32(0) });
        exit(code::BAD_BOOT);
    }
    let version = rd32(4);
    let cmdline_pa = rd64(24);
    if cmdline_pa != 0 && cmdline_pa < 0x4000_0000 {
        let p = cmdline_pa as *const u8;
        let mut n = 0;
        while n < bi.cmdline.len() && *p.add(n) != 0 {
            bi.cmdline[n] = *p.add(n);
            n += 1;
        }
        bi.cmdline_len = n;
    }
    if version >= 1 {
        let mm = rd64(40);
        let cnt = rd32(48) as usize;
        for i in 0..cnt.min(MAX_REGIONS) {
            let e = (mm as *const u8).add(i * 24);
            bi.regions[i] = MemRegion {
                addr: core::ptr::read_unaligned(e as *const u64),
                size: core::ptr::read_unaligned(e.add(8) as *const u64),
                kind: core::ptr::read_unaligned(e.add(16) as *const u32),
            };
        }
        bi.nregions = cnt.min(MAX_REGIONS);
    }
    if bi.nregions == 0 {
        println!("boot: PVH start info version {} has no memory map", version);
        exit(code::BAD_BOOT);
    }
    println!("boot: cmdline \"{}\"", bi.cmdline());
    // The processors, from the ACPI tables, while the identity map lasts.
    smp::discover(rd64(32));
    let mut ram = [(0u64, 0u64); MAX_REGIONS];
    let mut nram = 0;
    let mut total = 0;
    for r in bi.regions() {
        println!("boot: mem {:#014x}-{:#014x} type {}", r.addr, r.addr + r.size, r.kind);
        if r.kind == E820_RAM {
            ram[nram] = (r.addr, r.addr + r.size);
            nram += 1;
            total += r.size;
        }
    }
    bi.ram_bytes = total;
    println!(
        "boot: {} MiB RAM, kernel image phys {:#x}-{:#x}",
        bi.ram_bytes >> 20,
        bi.kernel_phys.0,
        bi.kernel_phys.1
    );
    paging::init(&ram[..nram]);
    println!("boot: direct map up to {:#x} at {:#x}", paging::direct_map_end(), paging::DIRECT_MAP_BASE);
    // Before the first instrumented instruction (guest_main): inline
    // checks read the shadow themselves.
    #[cfg(all(feature = "early-shadow", not(feature = "kmsan")))]
    early_shadow::init();
    bi.config = Config::parse(bi.cmdline());
    let c = &bi.config;
    // The KMSAN kernel's runtime reads its own kmsan.* words; these are KASAN's.
    if cfg!(feature = "kmsan") {
        println!("boot: suite={} seed={} symbols={}", c.suite(), c.seed, if ksyms::available() { "yes" } else { "no" });
    } else {
        println!(
            "boot: kasan.shadow={} kasan.fault={:?} kasan_multi_shot={} suite={} seed={} symbols={}",
            c.sanitizer.mode.name(),
            c.sanitizer.fault,
            c.multi_shot,
            c.suite(),
            c.seed,
            if ksyms::available() { "yes" } else { "no" }
        );
    }
    guest_main(boot_info())
}
