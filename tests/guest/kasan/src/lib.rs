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
#![deny(unsafe_op_in_unsafe_fn)]

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use guest_boot::{ksyms, println};
use hybrid_shadow::{
    Backing, CacheId, Config, FaultAction, Freed, Kasan, Layout, Mode, Platform, Region, SlabRef,
    StatsSnapshot, Symbol,
};
use hybrid_shadow_x86_64::{init as xinit, FrameSource, PhysAddr, X86ShadowMapper};

pub use hybrid_shadow::page_state::PageState;

/// What the runtime needs from the guest kernel, as plain functions.
pub struct GuestOps {
    /// A frame of 2^order pages that bypasses the sanitizer hooks (physical address).
    pub alloc_frames: fn(order: usize, runtime_owned: bool) -> Option<u64>,
    /// Give back a frame from `alloc_frames(0, true)` (no hooks).
    pub free_frame: fn(phys: u64),
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

static FRAMES_HELD: AtomicUsize = AtomicUsize::new(0);
static OPS: spin::Once<&'static GuestOps> = spin::Once::new();

fn ops() -> &'static GuestOps {
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
        || starts(b"guest_kasan")
        || starts(b"<guest_kasan")
        || starts(b"spin::")
        || starts(b"<spin::")
        || contains(b"kasan_glue::")
}

fn build_ranges() {
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
        guest_boot::serial::write_bytes(s.as_bytes());
    }

    fn current_pid(&self) -> u32 {
        (ops().current_task)().1
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

    fn panic(&self, msg: &str) -> ! {
        println!("Kernel panic - not syncing: {}", msg);
        guest_boot::exit(guest_boot::code::KASAN_PANIC)
    }
}

/// The mapper type of the guest.
pub type Mapper = X86ShadowMapper<BuddyFrames>;
/// The runtime type of the guest.
pub type Rt = Kasan<Mapper, GuestPlatform>;

static KASAN: spin::Once<Rt> = spin::Once::new();

/// The runtime, once [`init`] ran.
pub fn rt() -> Option<&'static Rt> {
    KASAN.get()
}

const BLOCK: usize = hybrid_shadow::layout::BLOCK_SIZE;
const fn up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Start the runtime: shadow mapper over the guest's PML4, direct-map
/// shadow tables pre-unshared (so remaps never allocate tables), metadata
/// arena from the buddy allocator, initial shadow. The caller then marks
/// reserved RAM ([`mark_reserved`]) and calls [`install`].
pub fn init(p: &Params, guest: &'static GuestOps) -> Result<(), &'static str> {
    OPS.call_once(|| guest);
    build_ranges();
    let mut cfg = Config::default();
    cfg.parse_cmdline(p.cmdline, |e| println!("{}", e));
    let dm_start = hybrid_shadow_x86_64::DIRECT_MAP_BASE;
    let layout = Layout {
        offset: hybrid_shadow_x86_64::SHADOW_OFFSET,
        direct_map: Region { start: dm_start, end: dm_start + up(p.ram_end as usize, BLOCK) },
        vmalloc: Region { start: p.vmalloc.0, end: p.vmalloc.1 },
        image: Region {
            start: p.kernel_vma + (p.kernel_phys.0 as usize & !(BLOCK - 1)),
            end: p.kernel_vma + up(p.kernel_phys.1 as usize, BLOCK),
        },
        covered: Region { start: 0xffff_8000_0000_0000, end: 0xffff_ffff_ffff_f000 },
        user_end: 0x0000_8000_0000_0000,
    };
    layout.validate().map_err(|_| "bad layout")?;
    // SAFETY: the PML4 is the live one; its shadow slots (472..=503) are
    // left to the mapper by the guest's paging code; all RAM is mapped at
    // DIRECT_MAP_BASE; one CPU at CPL 0; EFER.NXE was set at boot.
    let mut mapper = unsafe { Mapper::kernel(PhysAddr::new(p.pml4), BuddyFrames) }
        .map_err(|_| "shadow mapper init failed")?;
    if cfg.mode != Mode::Off {
        xinit::unshare_shadow_of(&mut mapper, layout.direct_map.start, layout.direct_map.end)
            .map_err(|_| "no memory for the direct map's shadow page tables")?;
    }
    let bytes = Rt::arena_bytes(&layout, &cfg);
    let arena: &'static mut [u8] = if bytes == 0 {
        &mut []
    } else {
        let pages = bytes.div_ceil(4096);
        let order = pages.next_power_of_two().trailing_zeros() as usize;
        let pa = (guest.alloc_frames)(order, false).ok_or("no memory for the runtime's metadata")?;
        let va = dm_start + pa as usize;
        // SAFETY: 2^order pages just taken from the buddy allocator, never
        // freed, mapped in the direct map; nothing else references them.
        unsafe {
            core::ptr::write_bytes(va as *mut u8, 0, 4096 << order);
            core::slice::from_raw_parts_mut(va as *mut u8, bytes)
        }
    };
    let k = Rt::new(cfg, layout, mapper, GuestPlatform, arena).map_err(|_| "runtime init failed")?;
    KASAN.call_once(|| k);
    Ok(())
}

/// Route the compiler's `__asan_*` calls to the runtime (no-op in `off`).
pub fn install() {
    if let Some(k) = rt() {
        hybrid_shadow::abi::install(k);
    }
}

fn refused(what: &str, addr: usize, e: impl core::fmt::Display) {
    println!("kasan-glue: {} at {:#x} refused: {}", what, addr, e);
}

/// The mode in force (`off` before init).
pub fn mode() -> Mode {
    rt().map_or(Mode::Off, |k| k.config().mode)
}

/// Whether reports panic.
pub fn fault_panics() -> bool {
    rt().is_some_and(|k| k.config().fault == FaultAction::Panic)
}

/// Counters.
pub fn stats() -> Option<StatsSnapshot> {
    rt().map(|k| k.stats())
}

/// The runtime's shrinker: give back promoted mixed-block shadow pages.
pub fn shrink() -> usize {
    rt().map_or(0, |k| k.shrink())
}

/// Frames the shadow mapper holds now.
pub fn frames_held() -> usize {
    FRAMES_HELD.load(Relaxed)
}

/// Backing of the shadow page of a direct-map address.
pub fn backing_of(addr: usize) -> Option<Backing> {
    let k = rt()?;
    let pfn = k.pages().pfn(addr)?;
    Some(k.backing_of_pfn(pfn))
}

/// Per-page state of a direct-map address.
pub fn page_state(addr: usize) -> Option<PageState> {
    let k = rt()?;
    let pfn = k.pages().pfn(addr)?;
    Some(k.pages().get(pfn).state)
}

/// RAM outside every allocator: valid.
pub fn mark_reserved(addr: usize, len: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.mark_reserved(addr, len) {
            refused("mark_reserved", addr, e);
        }
    }
}

pub fn page_alloc(addr: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.page_alloc(addr, order) {
            refused("page_alloc", addr, e);
        }
    }
}

/// False when the runtime reported a bad free.
pub fn page_free(addr: usize, order: u32, ip: usize) -> bool {
    rt().is_none_or(|k| k.page_free(addr, order, ip).is_ok())
}

/// Register a cache: (id, slot size, offset of the first slot in a slab).
pub fn cache_create(name: &'static str, size: usize, align: usize) -> Option<(u16, usize, usize)> {
    let k = rt()?;
    match k.cache_create(name, size, align) {
        Ok(id) => {
            let info = k.cache_info(id).ok()?;
            Some((id.0, info.slot_size, info.slab_offset))
        }
        Err(e) => {
            refused("cache_create", size, e);
            None
        }
    }
}

pub fn cache_destroy(id: u16) {
    if let Some(k) = rt() {
        if let Err(e) = k.cache_destroy(CacheId(id)) {
            refused("cache_destroy", id as usize, e);
        }
    }
}

pub fn slab_page_alloc(id: u16, base: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_page_alloc(CacheId(id), base, order) {
            refused("slab_page_alloc", base, e);
        }
    }
}

pub fn slab_page_free(base: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_page_free(base, order) {
            refused("slab_page_free", base, e);
        }
    }
}

pub fn slab_alloc(id: u16, ptr: usize, size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_alloc(CacheId(id), ptr, size) {
            refused("slab_alloc", ptr, e);
        }
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

pub fn slab_free(id: u16, base: usize, ptr: usize, ip: usize) -> FreeAction {
    match rt().map(|k| k.slab_free(CacheId(id), base, ptr, ip)) {
        None | Some(Ok(Freed::FreeNow)) => FreeAction::Now,
        Some(Ok(Freed::Quarantined)) => FreeAction::Deferred,
        Some(Err(_)) => FreeAction::Bug,
    }
}

/// Next object the quarantine lets go (over its limit).
pub fn quarantine_pop() -> Option<usize> {
    rt()?.quarantine_pop().map(|r| r.ptr)
}

/// Next object of an emptying quarantine.
pub fn quarantine_drain() -> Option<usize> {
    rt()?.quarantine_drain().map(|r| r.ptr)
}

/// Queue a cache's quarantined objects for release (before destroy).
pub fn quarantine_release_cache(id: u16) -> usize {
    rt().map_or(0, |k| k.quarantine_release_cache(CacheId(id)))
}

pub fn ksize(id: u16, ptr: usize, ip: usize) -> usize {
    rt().map_or(0, |k| k.ksize(CacheId(id), ptr, ip))
}

pub fn slab_resize(id: u16, ptr: usize, new_size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_resize(CacheId(id), ptr, new_size) {
            refused("slab_resize", ptr, e);
        }
    }
}

/// First byte of `ptr` accessible? (reports if not)
pub fn check_byte(ptr: usize, ip: usize) -> bool {
    rt().is_none_or(|k| k.check_byte(ptr, ip))
}

/// Whether the runtime sees the object at `ptr` (slab at `base`) as allocated.
pub fn slab_object_live(id: u16, base: usize, ptr: usize) -> bool {
    rt().is_some_and(|k| k.slab_object_live(CacheId(id), base, ptr))
}

pub fn kmalloc_large(addr: usize, order: u32, size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.kmalloc_large(addr, order, size) {
            refused("kmalloc_large", addr, e);
        }
    }
}

pub fn kfree_large(ptr: usize, order: u32, ip: usize) -> bool {
    rt().is_none_or(|k| k.kfree_large(ptr, order, ip).is_ok())
}

/// A bad free the guest's allocator found itself.
pub fn report_invalid_free(ptr: usize, ip: usize) {
    if let Some(k) = rt() {
        k.report_invalid_free(ptr, ip);
    }
}

pub fn stack_alloc(addr: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.stack_alloc(addr, order) {
            refused("stack_alloc", addr, e);
        }
    }
}

pub fn stack_free(addr: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.stack_free(addr, order) {
            refused("stack_free", addr, e);
        }
    }
}

pub fn vmalloc_alloc(addr: usize, size: usize, area_len: usize) {
    if let Some(k) = rt() {
        match k.vmalloc_alloc(addr, size, area_len) {
            Ok(_) => {}
            Err(e) => refused("vmalloc_alloc", addr, e),
        }
    }
}

pub fn vmalloc_free(addr: usize, area_len: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.vmalloc_free(addr, area_len) {
            refused("vmalloc_free", addr, e);
        }
    }
}

/// A checked access the suite cannot perform (it would fault): the check
/// the compiler emits before it, attributed to `ip`.
pub fn check_access(addr: usize, size: usize, write: bool, ip: usize) -> bool {
    rt().is_none_or(|k| k.check(addr, size, write, ip).is_ok())
}

/// hashbrown (the runtime's stack depot) links the `alloc` crate, which
/// wants a global allocator. The runtime allocates from its own arena only;
/// this one refuses every request.
struct NoHeap;

// SAFETY: never hands out memory (null = allocation failure).
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}

#[global_allocator]
static NO_HEAP: NoHeap = NoHeap;
