//! The test guest's instance of the hybrid-shadow runtime. NOT instrumented.
//!
//! `Kasan<M, P>` is generic, and with `-Zshare-generics=n` a generic is
//! compiled in the crate that instantiates it. Instantiated in the guest
//! crate (instrumented with `-Zsanitizer=kernel-address`), the runtime's own
//! shadow writes and slot-metadata reads would be checked against the
//! shadow they maintain. So the instantiation lives here: this crate owns
//! the static runtime, the [`Platform`] and the [`FrameSource`], and exposes
//! non-generic wrappers that the guest's `kasan_glue.rs` calls. What needs
//! the guest's own data structures (buddy allocator, tasks, slab lookup)
//! comes in as plain function pointers ([`GuestOps`]).
//!
//! ```text
//!  hybrid-guest (instrumented)            guest-kasan (this crate)          hybrid-shadow
//!  buddy/slab/vmalloc/tasks ──hooks──► kasan_glue.rs ──► wrappers ──► KASAN: Kasan<X86ShadowMapper<BuddyFrames>, GuestPlatform>
//!        ▲                                                  │              │
//!        └──────────── GuestOps (frames, current task, slab_of) ◄──────────┘
//! ```
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use guest_boot::{ksyms, println};
use hybrid_shadow::{CacheId, Platform, SlabRef, Symbol};
use hybrid_shadow_x86_64::{FrameSource, PhysAddr};

#[cfg(not(feature = "kmsan"))]
mod kasan;
#[cfg(not(feature = "kmsan"))]
pub use kasan::*;
#[cfg(feature = "kmsan")]
mod kmsan;
#[cfg(feature = "kmsan")]
pub use kmsan::*;
pub mod tap;

/// What the runtime needs from the guest kernel, as plain functions.
pub struct GuestOps {
    /// A frame of 2^order pages that bypasses the sanitizer hooks (physical address).
    pub alloc_frames: fn(order: usize, runtime_owned: bool) -> Option<u64>,
    /// Give back a frame from `alloc_frames(0, true)` (no hooks).
    pub free_frame: fn(phys: u64),
    /// Give back a block of 2^order pages from `alloc_frames(order, false)` (no hooks).
    pub free_frames: fn(phys: u64, order: usize),
    /// Name and pid of the running task.
    pub current_task: fn() -> (&'static str, u32),
    /// The slab holding `addr`: (runtime cache id, first slot).
    pub slab_of: fn(addr: usize) -> Option<(u16, usize)>,
}

/// Where the guest's address space is (see [`init`]).
pub struct Params<'a> {
    /// The kernel command line (`kasan.*` words).
    pub cmdline: &'a str,
    /// End of the highest RAM range (physical).
    pub ram_end: u64,
    /// Bytes of RAM in the memory map (below `ram_end` there may be holes:
    /// at 4 GiB QEMU leaves 1 GiB for PCI below 4 GiB).
    pub ram_bytes: u64,
    /// Physical range of the kernel image.
    pub kernel_phys: (u64, u64),
    /// Virtual base of the kernel image (phys + base).
    pub kernel_vma: usize,
    /// The vmalloc window (block aligned).
    pub vmalloc: (usize, usize),
    /// Physical address of the PML4.
    pub pml4: u64,
}

/// Frames for the shadow mapper, from the buddy allocator without hooks.
pub struct BuddyFrames;

pub(crate) static FRAMES_HELD: AtomicUsize = AtomicUsize::new(0);
pub(crate) static OPS: spin::Once<&'static GuestOps> = spin::Once::new();

pub(crate) fn ops() -> &'static GuestOps {
    OPS.get().expect("guest-kasan: ops not set")
}

// SAFETY: `alloc_frames(0, true)` returns a 4 KiB-aligned order-0 block that
// the buddy allocator keeps allocated (flagged as runtime-owned) until
// `free_frame`; every frame is RAM, mapped at DIRECT_MAP_BASE + phys.
unsafe impl FrameSource for BuddyFrames {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        let pa = (ops().alloc_frames)(0, true)?;
        FRAMES_HELD.fetch_add(1, Relaxed);
        Some(PhysAddr::new(pa))
    }

    fn free_frame(&mut self, frame: PhysAddr) {
        FRAMES_HELD.fetch_sub(1, Relaxed);
        (ops().free_frame)(frame.as_u64());
    }
}

/// The guest's [`TlbFlush`](hybrid_shadow_x86_64::TlbFlush): `invlpg` (or
/// a full flush) here, and, once other CPUs are up, an IPI to each of them
/// and a wait until each has flushed (guest_boot::smp).
pub struct SmpTlb;

/// Shootdowns (of other CPUs) the shadow mapper asked for.
static SHADOW_SHOOTDOWNS: AtomicUsize = AtomicUsize::new(0);

/// Shootdowns of other CPUs the runtime's shadow remaps caused.
pub fn shadow_shootdowns() -> usize {
    SHADOW_SHOOTDOWNS.load(Relaxed)
}

// SAFETY: `guest_boot::smp::flush_page` / `flush_all` flush the current CPU
// and return only after every other online CPU flushed the same (the page
// with `invlpg`, which also drops the paging-structure caches; everything
// with a CR4.PGE toggle); a CPU not yet online reloads CR3 when it joins.
// The kernel runs at CPL 0 on every CPU.
unsafe impl hybrid_shadow_x86_64::TlbFlush for SmpTlb {
    fn flush_page(&mut self, va: usize) {
        if guest_boot::smp::flush_page(va as u64) {
            SHADOW_SHOOTDOWNS.fetch_add(1, Relaxed);
        }
    }

    fn flush_all(&mut self) {
        if guest_boot::smp::flush_all() {
            SHADOW_SHOOTDOWNS.fetch_add(1, Relaxed);
        }
    }
}

/// Merged address ranges of the runtime's own code (skipped at the top of
/// stack traces), built once from the symbol table.
const MAX_RANGES: usize = 256;
static mut RANGES: [(u64, u64); MAX_RANGES] = [(0, 0); MAX_RANGES];
static NRANGES: AtomicUsize = AtomicUsize::new(0);

/// Demangled names of the runtime's frames: the core crate, the ABI, this
/// crate, the guest glue, and the lock the runtime takes.
fn is_runtime_name(n: &[u8]) -> bool {
    let starts = |p: &[u8]| n.starts_with(p);
    let contains = |p: &[u8]| n.windows(p.len()).any(|w| w == p);
    starts(b"hybrid_shadow")
        || starts(b"<hybrid_shadow")
        || starts(b"__asan")
        || starts(b"__msan")
        || starts(b"kmsan_")
        || starts(b"guest_kasan")
        || starts(b"<guest_kasan")
        || starts(b"spin::")
        || starts(b"<spin::")
        || contains(b"kasan_glue::")
}

pub(crate) fn build_ranges() {
    let mut n = 0;
    let mut open = false;
    // SAFETY: single CPU, called once from `init` before anything reads RANGES.
    let ranges = unsafe { &mut *core::ptr::addr_of_mut!(RANGES) };
    let mut overflow = false;
    ksyms::for_each(|s| {
        if is_runtime_name(s.name) {
            if open {
                ranges[n - 1].1 = ranges[n - 1].1.max(s.addr + s.size.max(1));
            } else if n < MAX_RANGES {
                ranges[n] = (s.addr, s.addr + s.size.max(1));
                n += 1;
                open = true;
            } else {
                overflow = true;
            }
        } else {
            if open && s.addr < ranges[n - 1].1 {
                // an alias inside a runtime function: keep the range open
                return;
            }
            open = false;
        }
    });
    if overflow {
        println!("guest-kasan: more than {} runtime code ranges; stack traces may show runtime frames", MAX_RANGES);
    }
    NRANGES.store(n, Relaxed);
}

fn is_runtime_pc(pc: u64) -> bool {
    let n = NRANGES.load(Relaxed);
    // SAFETY: RANGES[..n] was written before NRANGES was published and is never written again.
    let ranges = unsafe { &(&*core::ptr::addr_of!(RANGES))[..n] };
    let i = ranges.partition_point(|r| r.0 <= pc);
    i > 0 && pc < ranges[i - 1].1
}

/// The guest as the runtime sees it.
pub struct GuestPlatform;

impl Platform for GuestPlatform {
    fn write_str(&self, s: &str) {
        tap::feed(s);
        guest_boot::serial::write_bytes(s.as_bytes());
    }

    fn current_pid(&self) -> u32 {
        (ops().current_task)().1
    }

    /// This CPU's number (GS base): the runtime serializes reports per CPU.
    fn cpu(&self) -> usize {
        guest_boot::cpu::cpu_id()
    }

    fn lock_wait(&self) -> fn() {
        // A CPU waiting for the runtime's lock, maybe with interrupts off,
        // serves the holder's shootdowns.
        guest_boot::smp::relax
    }

    fn write_task_name(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        out.write_str((ops().current_task)().0)
    }

    #[inline(never)]
    fn stack_trace(&self, out: &mut [usize]) -> usize {
        let mut buf = [0u64; 64];
        let n = guest_boot::stack::walk_from(guest_boot::stack::current_rbp(), 0, &mut buf);
        let first = buf[..n].iter().position(|&pc| !is_runtime_pc(pc.wrapping_sub(1))).unwrap_or(n);
        let mut k = 0;
        for &pc in &buf[first..n] {
            if k == out.len() {
                break;
            }
            out[k] = pc as usize;
            k += 1;
        }
        k
    }

    fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool {
        // Return addresses: the call may be the function's last instruction.
        let Some(s) = ksyms::lookup((pc as u64).wrapping_sub(1)) else { return false };
        let seg = ksyms::fold(s.name);
        let mut buf = [0u8; 160];
        let len = seg.len().min(buf.len());
        for (d, &c) in buf.iter_mut().zip(&seg[..len]) {
            *d = if c.is_ascii_alphanumeric() || c == b'_' { c } else { b'_' };
        }
        let name = core::str::from_utf8(&buf[..len]).unwrap_or("unknown");
        f(Symbol { name, offset: pc - s.addr as usize, size: s.size as usize });
        true
    }

    fn slab_of(&self, addr: usize) -> Option<SlabRef> {
        (ops().slab_of)(addr).map(|(c, base)| SlabRef { cache: CacheId(c), base })
    }

    fn vmalloc_to_ram(&self, addr: usize) -> Option<usize> {
        let pa = guest_boot::paging::virt_to_phys(addr as u64)?;
        Some(hybrid_shadow_x86_64::DIRECT_MAP_BASE + pa as usize)
    }

    fn panic(&self, msg: &str) -> ! {
        println!("Kernel panic - not syncing: {}", msg);
        guest_boot::exit(guest_boot::code::KASAN_PANIC)
    }
}

/// What the slab must do after a free.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FreeAction {
    /// Free the slot now.
    Now,
    /// Quarantined: the slot comes back through [`quarantine_pop`].
    Deferred,
    /// A bad free was reported: do nothing.
    Bug,
}

pub(crate) fn refused(what: &str, addr: usize, e: impl core::fmt::Display) {
    println!("kasan-glue: {} at {:#x} refused: {}", what, addr, e);
}

/// The mode in force (`off` before init).
pub fn mode() -> hybrid_shadow::Mode {
    config().map_or(hybrid_shadow::Mode::Off, |c| c.mode)
}

/// Whether reports panic.
pub fn fault_panics() -> bool {
    config().is_some_and(|c| c.fault == hybrid_shadow::FaultAction::Panic)
}

/// A zeroed metadata arena of `bytes` bytes from the buddy allocator
/// (kept for the whole run), empty for 0.
pub(crate) fn alloc_arena(bytes: usize, guest: &GuestOps) -> Result<&'static mut [u8], &'static str> {
    if bytes == 0 {
        return Ok(&mut []);
    }
    let pages = bytes.div_ceil(4096);
    let order = pages.next_power_of_two().trailing_zeros() as usize;
    let pa = (guest.alloc_frames)(order, false).ok_or("no memory for the runtime's metadata")?;
    let va = hybrid_shadow_x86_64::DIRECT_MAP_BASE + pa as usize;
    // SAFETY: 2^order pages just taken from the buddy allocator, never
    // freed, mapped in the direct map; nothing else references them.
    unsafe {
        core::ptr::write_bytes(va as *mut u8, 0, 4096 << order);
        Ok(core::slice::from_raw_parts_mut(va as *mut u8, bytes))
    }
}

/// Frames the shadow mapper holds now.
pub fn frames_held() -> usize {
    FRAMES_HELD.load(Relaxed)
}

// The global allocator (hashbrown, in the runtime's stack depot, links the
// `alloc` crate, which wants one) is the guest kernel's Rust heap,
// kmalloc-backed (tests/guest/src/mm/mod.rs). The runtime allocates from
// its own arena only.
