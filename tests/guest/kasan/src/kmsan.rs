//! The KMSAN instance: `Kmsan<X86ShadowMapper<PoolFrames>, GuestPlatform>`,
//! the per-task compiler contexts, and the non-generic hook wrappers
//! `kasan_glue.rs` calls (same names as the KASAN build's; KASAN-only
//! services such as the quarantine answer as a kernel without it would).
//!
//! ```text
//!  metadata (inside the region KASAN's shadow uses; a kernel has one sanitizer)
//!  0xffffec0000000000  shadow of RAM        (1 TiB slot)
//!  0xffffed0000000000  origins of RAM
//!  0xffffee0000000000  shadow of the image's writable part (.data, .bss)
//!  0xffffef0000000000  origins of the image's writable part
//!  vmalloc addresses use the metadata of the frames mapped there (page walk)
//! ```
//!
//! Metadata pages may be mapped inside any instrumented code (a deferred
//! store settles at the next access), including the page allocator's own.
//! So the mapper never calls the page allocator: it takes frames from a
//! small pool that every hook tops up (the allocator is consistent when a
//! hook runs) and gives frames back to it. An empty pool makes the page
//! `Unchecked` (counted), never a false report.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};

use guest_boot::cpu::MAX_CPUS;

use guest_boot::println;
use hybrid_shadow::kmsan::abi::{self, TaskContext};
use hybrid_shadow::kmsan::{AllocInit, Kmsan, KmsanLayout, MetaRegion};
use hybrid_shadow::{Backing, Config, Mode, Region, Size, StatsSnapshot};
use hybrid_shadow_x86_64::{FrameSource, OffsetPhysMem, PhysAddr, X86ShadowMapper};

pub use hybrid_shadow::page_state::PageState;

use crate::{build_ranges, ops, refused, FreeAction, GuestOps, GuestPlatform, Params, FRAMES_HELD, OPS};

/// Frames the pool keeps ready for the mapper.
const POOL_LOW: usize = 32;
/// Frames the pool holds at most (more go back at the next hook).
const POOL_MAX: usize = 64;

struct Pool {
    frames: [u64; POOL_MAX],
    n: usize,
    /// Frames given back while the pool was full: returned at the next hook.
    spill: [u64; POOL_MAX],
    nspill: usize,
}

/// The pool. Lock order: the runtime's lock, then this one (the mapper
/// takes frames under the runtime's lock); the page allocator is never
/// entered with it held.
static POOL: spin::Mutex<Pool> = spin::Mutex::new(Pool { frames: [0; POOL_MAX], n: 0, spill: [0; POOL_MAX], nspill: 0 });
/// Per CPU: inside a hook, or at init (the page allocator is consistent
/// then), the mapper takes frames from, and gives them back to, the page
/// allocator directly; elsewhere it uses the pool. Only while one CPU is
/// online: with several, another CPU inside the page allocator (its lock
/// held) may be waiting for the runtime's lock to settle a store, so the
/// runtime's lock is never held into the page allocator.
static DIRECT: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Until init ends: the boot CPU alone, direct.
static BOOTING: AtomicBool = AtomicBool::new(true);

fn direct() -> bool {
    BOOTING.load(Relaxed) || DIRECT.get(guest_boot::cpu::cpu_id()).is_some_and(|d| d.load(Relaxed))
}

/// Private metadata pages of RAM now, by page kind.
pub fn census() -> Option<hybrid_shadow::kmsan::MetaCensus> {
    rt().map(|k| k.census())
}

/// Frames the mapper wanted while the pool was empty.
static POOL_MISSES: AtomicUsize = AtomicUsize::new(0);

fn buddy_frame() -> Option<u64> {
    let pa = (ops().alloc_frames)(0, true)?;
    FRAMES_HELD.fetch_add(1, Relaxed);
    Some(pa)
}

fn buddy_free(pa: u64) {
    FRAMES_HELD.fetch_sub(1, Relaxed);
    (ops().free_frame)(pa);
}

/// Bring the pool to `POOL_LOW` frames and return spilled ones (at a hook:
/// the page allocator is consistent), so that between hooks the pool's
/// size does not depend on what the mapper did. The pool's lock is not
/// held across the page allocator's calls.
fn refill() {
    loop {
        let give = {
            let mut p = POOL.lock();
            if p.nspill > 0 {
                p.nspill -= 1;
                Some(p.spill[p.nspill])
            } else if p.n > POOL_LOW {
                p.n -= 1;
                Some(p.frames[p.n])
            } else {
                None
            }
        };
        match give {
            Some(pa) => buddy_free(pa),
            None => break,
        }
    }
    while POOL.lock().n < POOL_LOW {
        let Some(pa) = buddy_frame() else { break };
        let mut p = POOL.lock();
        if p.n < POOL_MAX {
            let n = p.n;
            p.frames[n] = pa;
            p.n += 1;
        } else {
            drop(p);
            buddy_free(pa);
            break;
        }
    }
}

/// Frames for the metadata mapper: the pool (see the module docs).
pub struct PoolFrames;

// SAFETY: every frame comes from `alloc_frames(0, true)` (4 KiB aligned,
// RAM mapped in the direct map, kept allocated until given back) and goes
// back through the pool or `free_frame` exactly once.
unsafe impl FrameSource for PoolFrames {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        {
            let mut p = POOL.lock();
            if p.n > 0 {
                p.n -= 1;
                return Some(PhysAddr::new(p.frames[p.n]));
            }
        }
        if direct() {
            return buddy_frame().map(PhysAddr::new);
        }
        POOL_MISSES.fetch_add(1, Relaxed);
        None
    }

    fn free_frame(&mut self, frame: PhysAddr) {
        if direct() {
            buddy_free(frame.as_u64());
            return;
        }
        let mut p = POOL.lock();
        if p.n < POOL_MAX {
            let n = p.n;
            p.frames[n] = frame.as_u64();
            p.n += 1;
        } else if p.nspill < POOL_MAX {
            let n = p.nspill;
            p.spill[n] = frame.as_u64();
            p.nspill += 1;
        } else {
            // Both full: keep the frame out of use (counted as held) rather
            // than enter the page allocator from inside it.
            POOL_MISSES.fetch_add(1, Relaxed);
        }
    }
}

/// The mapper type of the guest.
pub type Mapper = X86ShadowMapper<PoolFrames, OffsetPhysMem, crate::SmpTlb>;
/// The runtime type of the guest.
pub type Rt = Kmsan<Mapper, GuestPlatform>;

static KMSAN: spin::Once<Rt> = spin::Once::new();

/// The runtime, once [`init`] ran.
pub fn rt() -> Option<&'static Rt> {
    KMSAN.get()
}

/// Tasks the guest runs at once (its scheduler's slots).
pub const MAX_CONTEXTS: usize = 64;

/// The per-task contexts, taken from the page allocator at init (metadata:
/// outside the image, whose writable part would otherwise need metadata
/// for them too). Null before init.
static CONTEXTS: AtomicPtr<TaskContext> = AtomicPtr::new(core::ptr::null_mut());

fn context(slot: usize) -> Option<*mut TaskContext> {
    let base = CONTEXTS.load(Relaxed);
    // SAFETY: `base` points to MAX_CONTEXTS contexts (set once by `init`).
    (slot < MAX_CONTEXTS && !base.is_null()).then(|| unsafe { base.add(slot) })
}

/// The task in scheduler slot `slot` runs next: its compiler context
/// becomes current (call just before switching stacks).
pub fn task_context_switch(slot: usize) {
    if let Some(c) = context(slot) {
        // SAFETY: slot `slot` belongs to the task about to run; the context
        // stays valid (never freed) until the next switch.
        unsafe { abi::set_current(c) };
    }
}

/// A new task takes scheduler slot `slot`: its context starts clean.
pub fn task_context_reset(slot: usize) {
    if let Some(c) = context(slot) {
        // SAFETY: the slot is not running (it is being set up for a new task).
        unsafe { c.write(TaskContext::new()) };
    }
}

/// This CPU leaves its task for its idle loop: its own context becomes
/// current (the task may run on another CPU next).
pub fn idle_context_switch() {
    // SAFETY: null selects this CPU's own context.
    unsafe { abi::set_current(core::ptr::null_mut()) };
}

/// Why [`cpu_prepare`] left a CPU untracked.
#[derive(Clone, Copy, Debug)]
pub enum CpuPrepareError {
    /// No frames for its contexts.
    NoMemory,
    /// The ABI refused the CPU.
    Abi(abi::CpuError),
}

/// CPU `cpu` is about to start (called on the CPU that starts it): it gets
/// KMSAN contexts of its own from the page allocator (outside the image,
/// which would need metadata for them otherwise), counted as metadata.
pub fn cpu_prepare(cpu: usize) -> Result<(), CpuPrepareError> {
    let Some(k) = rt() else { return Ok(()) };
    if k.config().mode == Mode::Off {
        return Ok(());
    }
    let bytes = core::mem::size_of::<abi::CpuContexts>();
    let order = (bytes.div_ceil(4096)).next_power_of_two().trailing_zeros() as usize;
    let pa = (ops().alloc_frames)(order, false).ok_or(CpuPrepareError::NoMemory)?;
    let p = (hybrid_shadow_x86_64::DIRECT_MAP_BASE + pa as usize) as *mut abi::CpuContexts;
    // SAFETY: 2^order fresh frames in the direct map hold a CpuContexts
    // (page aligned); never freed, so the reference lives forever.
    let c = unsafe {
        p.write(abi::CpuContexts::new());
        &*p
    };
    abi::register_cpu(cpu, c).map_err(CpuPrepareError::Abi)?;
    k.add_context_bytes(4096 << order);
    Ok(())
}

const TIB: usize = 1 << 40;
const META_BASE: usize = hybrid_shadow_x86_64::SHADOW_START;
const fn up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Start the runtime: metadata mapper over the guest's PML4, arena from
/// the page allocator, initial metadata. The caller then marks reserved
/// RAM ([`mark_reserved`]) and calls [`install`].
pub fn init(p: &Params, guest: &'static GuestOps) -> Result<(), &'static str> {
    OPS.call_once(|| guest);
    build_ranges();
    let mut cfg = Config::default();
    cfg.parse_kmsan_cmdline(p.cmdline, |e| println!("{}", e));
    let dm_start = hybrid_shadow_x86_64::DIRECT_MAP_BASE;
    let ram = up(p.ram_end as usize, 4096);
    extern "C" {
        static __data_start: u8;
    }
    // Only the image's writable part (.data, .bss with the boot stack) has
    // metadata: code and constants are never written, and loads from
    // memory without metadata read as initialized.
    let img_start = (&raw const __data_start) as usize;
    let img_end = p.kernel_vma + up(p.kernel_phys.1 as usize, 4096);
    if ram > TIB || img_end - img_start > TIB {
        return Err("RAM or image larger than a metadata slot (1 TiB)");
    }
    let layout = KmsanLayout {
        direct_map: MetaRegion { data: Region { start: dm_start, end: dm_start + ram }, shadow: META_BASE, origin: META_BASE + TIB },
        vmalloc: Region { start: p.vmalloc.0, end: p.vmalloc.1 },
        image: MetaRegion {
            data: Region { start: img_start, end: img_end },
            shadow: META_BASE + 2 * TIB,
            origin: META_BASE + 3 * TIB,
        },
    };
    layout.validate().map_err(|_| "bad KMSAN layout")?;
    // SAFETY: the PML4 is the live one; its slots over KASAN's shadow
    // region (unused in a KMSAN kernel) are left to the mapper; all RAM is
    // mapped at DIRECT_MAP_BASE (OffsetPhysMem::direct_map); SmpTlb flushes
    // every CPU that uses the PML4 (CPL 0); EFER.NXE was set at boot (every
    // CPU).
    let mapper = unsafe {
        Mapper::new(PhysAddr::new(p.pml4), OffsetPhysMem::direct_map(), PoolFrames, crate::SmpTlb, hybrid_shadow_x86_64::Config::linux())
    }
    .map_err(|_| "metadata mapper init failed")?;
    let arena = crate::alloc_arena(Rt::arena_bytes(&layout, &cfg), guest)?;
    let k = Rt::new(cfg, layout, mapper, GuestPlatform, arena).map_err(|_| "runtime init failed")?;
    let ctx = crate::alloc_arena(MAX_CONTEXTS * core::mem::size_of::<TaskContext>(), guest)?;
    let ctx = ctx.as_mut_ptr().cast::<TaskContext>();
    for i in 0..MAX_CONTEXTS {
        // SAFETY: the arena holds MAX_CONTEXTS contexts, page aligned.
        unsafe { ctx.add(i).write(TaskContext::new()) };
    }
    CONTEXTS.store(ctx, Relaxed);
    k.add_context_bytes(MAX_CONTEXTS * core::mem::size_of::<TaskContext>());
    let k = KMSAN.call_once(|| k);
    if k.config().mode == Mode::Full {
        let n = full_back_free_pages(k, guest);
        println!("kmsan: full: metadata for {} free pages at boot ({} MiB of data left)", n, n >> 8);
    }
    BOOTING.store(false, Relaxed);
    refill();
    Ok(())
}

/// `full` at boot, as Linux: every free page gets its shadow and origin
/// page, taken from the same free memory, until none is left; a third of
/// it stays usable. Data is taken in blocks of the highest order first and
/// its metadata frames one by one, so that the data left for the kernel
/// stays in large blocks (Linux keeps metadata of the same order as its
/// data). The blocks are held (linked through their first words) while it
/// runs, so the page allocator hands out each one once.
fn full_back_free_pages(k: &Rt, guest: &GuestOps) -> usize {
    let dm = hybrid_shadow_x86_64::DIRECT_MAP_BASE;
    let mut head = 0u64;
    let mut n = 0;
    'orders: for order in (0..=9usize).rev() {
        while let Some(pa) = (guest.alloc_frames)(order, false) {
            let va = dm + pa as usize;
            let mut backed = 0;
            while backed < 1 << order && k.full_back_page(va + backed * 4096) {
                backed += 1;
            }
            n += backed;
            // SAFETY: the block was just taken from the page allocator and
            // is mapped in the direct map; its first two words hold the
            // list link until it is freed below.
            unsafe {
                (va as *mut u64).write(head);
                (va as *mut u64).add(1).write(order as u64);
            }
            head = pa;
            if backed < 1 << order {
                break 'orders;
            }
        }
    }
    while head != 0 {
        let va = dm + head as usize;
        // SAFETY: written above; the block is still held.
        let (next, order) = unsafe { ((va as *const u64).read(), (va as *const u64).add(1).read()) };
        (guest.free_frames)(head, order as usize);
        head = next;
    }
    n
}

/// Route the compiler's `__msan_*` calls to the runtime (no-op in `off`).
pub fn install() {
    if let Some(k) = rt() {
        abi::install(k);
    }
}

/// Run a hook: the current task's deferred store lands first, the pool is
/// topped up, and the runtime's own calls into instrumented code (the
/// current task's name) are not tracked.
fn hook<R>(f: impl FnOnce(&'static Rt) -> R) -> Option<R> {
    let k = rt()?;
    abi::settle_current();
    refill();
    let direct = &DIRECT[guest_boot::cpu::cpu_id().min(MAX_CPUS - 1)];
    let alone = guest_boot::smp::cpus_online() <= 1;
    direct.store(alone, Relaxed);
    let r = abi::without_tracking(|| f(k));
    direct.store(false, Relaxed);
    Some(r)
}

/// The runtime's configuration (None before init).
pub(crate) fn config() -> Option<&'static Config> {
    rt().map(|k| k.config())
}

/// Counters.
pub fn stats() -> Option<StatsSnapshot> {
    rt().map(|k| k.stats())
}

/// Frames the mapper wanted while its pool was empty (pages went
/// unchecked) or gave back while the pool and its spill were full (kept
/// out of use): a diagnostic for a kernel that sizes the pool.
pub fn pool_misses() -> usize {
    POOL_MISSES.load(Relaxed)
}

/// The runtime's shrinker: give back page tables left over by pages
/// flipping between initialized and uninitialized.
pub fn shrink() -> usize {
    rt().map_or(0, |k| k.shrink())
}

/// KASAN's block backing: not used by KMSAN.
pub fn backing_of(_addr: usize) -> Option<Backing> {
    None
}

/// KASAN's per-page state: not used by KMSAN.
pub fn page_state(_addr: usize) -> Option<PageState> {
    None
}

/// RAM outside every allocator: initialized.
pub fn mark_reserved(addr: usize, len: usize) {
    if let Some(Err(e)) = hook(|k| k.mark_reserved(addr, Size(len))) {
        refused("mark_reserved", addr, e);
    }
}

/// 2^order pages were allocated (uninitialized, created here).
pub fn page_alloc(addr: usize, order: u32) {
    if let Some(Err(e)) = hook(|k| k.page_alloc(addr, order, AllocInit::Uninit)) {
        refused("page_alloc", addr, e);
    }
}

/// 2^order pages are freed; always true (KMSAN finds no bad frees).
pub fn page_free(addr: usize, order: u32, _ip: usize) -> bool {
    if let Some(Err(e)) = hook(|k| k.page_free(addr, order)) {
        refused("page_free", addr, e);
    }
    true
}

const MAX_CACHES: usize = 1024;
/// Object size per cache id (the slab poisons whole objects, as Linux).
static CACHE_SIZE: [AtomicUsize; MAX_CACHES] = [const { AtomicUsize::new(0) }; MAX_CACHES];
static NEXT_CACHE: AtomicUsize = AtomicUsize::new(0);

/// A cache: its id, slot size (no redzones under KMSAN) and first-slot offset.
pub fn cache_create(_name: &'static str, size: usize, align: usize) -> Option<(u16, usize, usize)> {
    rt()?;
    let id = NEXT_CACHE.fetch_add(1, Relaxed);
    if id >= MAX_CACHES {
        println!("kmsan-glue: more than {} caches; cache of size {} unchecked", MAX_CACHES, size);
        return None;
    }
    CACHE_SIZE[id].store(size, Relaxed);
    Some((id as u16, up(size.max(1), align.max(1)), 0))
}

fn object_size(id: u16) -> usize {
    CACHE_SIZE.get(id as usize).map_or(0, |s| s.load(Relaxed))
}

/// A cache is destroyed (its id is not reused).
pub fn cache_destroy(_id: u16) {}

pub fn slab_page_alloc(_id: u16, base: usize, order: u32) {
    if let Some(Err(e)) = hook(|k| k.slab_page_alloc(base, order)) {
        refused("slab_page_alloc", base, e);
    }
}

pub fn slab_page_free(base: usize, order: u32) {
    if let Some(Err(e)) = hook(|k| k.slab_page_free(base, order)) {
        refused("slab_page_free", base, e);
    }
}

/// An object was allocated: uninitialized, created here (`kzalloc`'s
/// memset initializes it right after).
pub fn slab_alloc(id: u16, ptr: usize, _size: usize) {
    let n = object_size(id);
    if let Some(Err(e)) = hook(|k| k.slab_alloc(ptr, Size(n), AllocInit::Uninit)) {
        refused("slab_alloc", ptr, e);
    }
}

/// An object is freed: uninitialized, a later use is a use-after-free.
pub fn slab_free(id: u16, ptr: usize, _ip: usize) -> FreeAction {
    let n = object_size(id);
    if let Some(Err(e)) = hook(|k| k.slab_free(ptr, Size(n))) {
        refused("slab_free", ptr, e);
    }
    FreeAction::Now
}

/// No quarantine under KMSAN.
pub fn quarantine_pop() -> Option<usize> {
    None
}

/// No quarantine under KMSAN.
pub fn quarantine_drain() -> Option<usize> {
    None
}

/// No quarantine under KMSAN.
pub fn quarantine_release_cache(_id: u16) -> usize {
    0
}

/// The usable size: the cache's object size.
pub fn ksize(id: u16, _ptr: usize, _ip: usize) -> usize {
    object_size(id)
}

/// In-place krealloc: the object's bytes keep their state.
pub fn slab_resize(_id: u16, _ptr: usize, _new_size: usize) {}

/// KASAN's accessibility check: everything is accessible under KMSAN.
pub fn check_byte(_ptr: usize, _ip: usize) -> bool {
    true
}

/// KASAN's view of liveness: not kept by KMSAN (the slab's own view rules).
pub fn slab_object_live(_id: u16, _ptr: usize) -> bool {
    true
}

/// Page-backed kmalloc: uninitialized, created here.
pub fn kmalloc_large(addr: usize, order: u32, _size: usize) {
    if let Some(Err(e)) = hook(|k| k.kmalloc_large(addr, order, AllocInit::Uninit)) {
        refused("kmalloc_large", addr, e);
    }
}

/// Always frees (KMSAN finds no bad frees); `page_free` poisons.
pub fn kfree_large(_ptr: usize, _order: u32, _ip: usize) -> bool {
    true
}

/// A bad free the guest's allocator found: printed (no KMSAN report type).
pub fn report_invalid_free(ptr: usize, ip: usize) {
    println!("kmsan-glue: invalid free of {:#x} from {:#x}", ptr, ip);
}

pub fn stack_alloc(addr: usize, order: u32) {
    if let Some(Err(e)) = hook(|k| k.stack_alloc(addr, order)) {
        refused("stack_alloc", addr, e);
    }
}

pub fn stack_free(addr: usize, order: u32) {
    if let Some(Err(e)) = hook(|k| k.stack_free(addr, order)) {
        refused("stack_free", addr, e);
    }
}

/// A vmalloc area: nothing to do, its addresses use the metadata of the
/// frames the page tables map there (`GuestPlatform::vmalloc_to_ram`).
pub fn vmalloc_alloc(_addr: usize, _size: usize, _area_len: usize) {}

/// A vmalloc area goes away: nothing to do (see `vmalloc_alloc`).
pub fn vmalloc_free(_addr: usize, _area_len: usize) {}

/// Save the current stack in the runtime's depot (0: not stored).
pub fn stackdepot_save() -> u32 {
    hook(|k| k.save_stack()).unwrap_or(0)
}

/// Copy the frames of a saved stack into `out`; returns how many.
pub fn stackdepot_fetch(h: u32, out: &mut [usize]) -> usize {
    let Some(t) = hook(|k| k.fetch_stack(h)) else { return 0 };
    let n = t.len().min(out.len());
    out[..n].copy_from_slice(&t[..n]);
    n
}

/// How the metadata of the RAM page holding `addr` is backed (None: no
/// metadata there).
pub fn page_backing(addr: usize) -> Option<hybrid_shadow::Backing> {
    rt()?.page_meta(addr).map(|p| p.backing)
}

/// KASAN's explicit access check: nothing to check under KMSAN.
pub fn check_access(_addr: usize, _size: usize, _write: bool, _ip: usize) -> bool {
    true
}
