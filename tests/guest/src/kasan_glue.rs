//! The single place where the guest calls into the sanitizer runtime.
//!
//! The runtime itself (hybrid-shadow's `Kasan`, its platform and its frame
//! source) is instantiated in the uninstrumented crate `guest-kasan`
//! (tests/guest/kasan): compiled here, in this instrumented crate, its
//! generic code would be instrumented too. This module forwards every
//! allocator event to it and hands it the guest services it needs
//! ([`OPS`]: hook-free frames from the buddy allocator, the current task,
//! the slab lookup).
//!
//! Addresses are kernel virtual addresses (`usize`); `ip` is the caller's
//! return address for free paths (report titles and "Freed by" name it).

use guest_boot::{println, BootInfo};
use guest_kasan::GuestOps;
pub use guest_kasan::{FreeAction, PageState};
pub use hybrid_shadow::{Backing, Mode, StatsSnapshot};

/// Cache id handed out by the runtime (`cache_create`). [`UNTRACKED`] when
/// the runtime refused the cache: its objects are then not checked.
pub type CacheId = u32;
/// A cache the runtime does not know (its hooks are skipped).
pub const UNTRACKED: CacheId = u32::MAX;

static OPS: GuestOps = GuestOps {
    alloc_frames: frames_alloc,
    free_frame: frames_free,
    free_frames: frames_free_order,
    current_task: crate::task::current,
    slab_of: crate::mm::slab::slab_ref,
};

fn frames_alloc(order: usize, runtime_owned: bool) -> Option<u64> {
    let va = crate::mm::buddy::alloc_pages_raw(order, runtime_owned)?;
    guest_boot::paging::virt_to_phys(va as u64)
}

fn frames_free_order(pa: u64, order: usize) {
    crate::mm::buddy::free_pages_raw(guest_boot::paging::phys_to_virt(pa) as usize, order);
}

fn frames_free(pa: u64) {
    crate::mm::buddy::free_pages_raw(guest_boot::paging::phys_to_virt(pa) as usize, 0);
}

static INFO: spin::Once<&'static BootInfo> = spin::Once::new();

/// The sanitizer this kernel is built with (log prefixes).
pub const SANITIZER: &str = if cfg!(feature = "kmsan") { "kmsan" } else { "kasan" };

/// A value the uninstrumented runtime crate wrote into this crate's memory
/// (a struct returned through a hidden pointer): under KMSAN, tell the
/// runtime it is initialized, as Linux does at its uninstrumented edges.
pub fn from_runtime<T>(v: &mut T) {
    #[cfg(feature = "kmsan")]
    hybrid_shadow::kmsan::abi::kmsan_unpoison_memory(v as *mut T as usize, core::mem::size_of::<T>());
    let _ = v;
}

fn info() -> &'static BootInfo {
    INFO.get().expect("kasan_glue: early_init not called")
}

// ---- boot ---------------------------------------------------------------

/// Before anything allocates: remember the boot info.
pub fn early_init(info: &'static BootInfo) {
    INFO.call_once(|| info);
}

/// Physical address of `.text` (the linker script's `__text_start`).
fn text_start_phys() -> u64 {
    extern "C" {
        static __text_start: u8;
    }
    // Only the symbol's address is taken; nothing is read.
    (&raw const __text_start) as u64 - guest_boot::paging::KERNEL_VMA
}

/// After the buddy allocator exists: start the runtime (it takes its
/// metadata and shadow frames from the buddy allocator), mark every page
/// handed out so far as reserved, and route the compiler's checks to it.
pub fn page_allocator_ready() {
    let bi = info();
    let ram_end = bi.ram_end();
    let (vs, ve) = crate::mm::vmalloc::window();
    let params = guest_kasan::Params {
        cmdline: bi.cmdline(),
        ram_end,
        ram_bytes: bi.ram_bytes,
        // The image's shadow starts at .text: the boot trampoline (below the
        // higher half) and the symbol table are never accessed by
        // instrumented code.
        kernel_phys: (text_start_phys(), bi.kernel_phys.1),
        kernel_vma: guest_boot::paging::KERNEL_VMA as usize,
        vmalloc: (vs, ve),
        pml4: guest_boot::paging::pml4_phys(),
    };
    let mut r = guest_kasan::init(&params, &OPS);
    from_runtime(&mut r);
    if let Err(e) = r {
        println!("{}: init failed: {}", SANITIZER, e);
        guest_boot::exit(guest_boot::code::BAD_BOOT);
    }
    let mut runs = 0;
    crate::mm::buddy::for_each_reserved_run(ram_end, |addr, len| {
        guest_kasan::mark_reserved(addr, len);
        runs += 1;
    });
    guest_kasan::install();
    let s = stats().unwrap_or_default();
    println!(
        "{}: mode {} ready ({} reserved ranges, {} KiB metadata at init)",
        SANITIZER,
        mode().name(),
        runs,
        s.metadata_init_bytes() >> 10
    );
}

/// After `.init_array` ran (globals registered) and before the suites:
/// print the metadata spent at init and the boot time.
pub fn late_init(_info: &'static BootInfo) {
    let now = guest_boot::time::rdtsc();
    let s = stats().unwrap_or_default();
    println!(
        "kasan-meta: mode={} metadata_init_bytes={} per_page={} block_tables={} depot={} init_shadow_pages={} shadow_tables={} runtime_frames={}",
        mode().name(),
        s.metadata_init_bytes(),
        s.per_page_bytes,
        s.block_table_bytes,
        s.depot_bytes,
        s.init_shadow_pages,
        s.shadow_table_bytes,
        frames_held()
    );
    let cycles = now.wrapping_sub(guest_boot::time::boot_tsc());
    match guest_boot::time::tsc_khz() {
        Some(khz) if khz > 0 => println!(
            "kasan-boot: mode={} boot_ms={} boot_cycles={} tsc_khz={}",
            mode().name(),
            cycles / khz,
            cycles,
            khz
        ),
        _ => println!("kasan-boot: mode={} boot_ms=unknown boot_cycles={}", mode().name(), cycles),
    }
}

/// Memory the guest uses outside every allocator: valid, never freed.
/// (Before the runtime exists this is a no-op; `page_allocator_ready`
/// marks everything allocated by then.)
pub fn mark_reserved(addr: usize, len: usize) {
    guest_kasan::mark_reserved(addr, len);
}

/// The mode in force.
pub fn mode() -> Mode {
    guest_kasan::mode()
}

/// Whether KASAN checks (full or hybrid): the KASAN-only services
/// (quarantine liveness, ksize unpoisoning) apply. False in a KMSAN kernel.
pub fn checking() -> bool {
    cfg!(not(feature = "kmsan")) && mode() != Mode::Off
}

/// Whether KMSAN tracks (a KMSAN kernel in full or hybrid mode).
pub fn kmsan_on() -> bool {
    cfg!(feature = "kmsan") && mode() != Mode::Off
}

/// Data arriving from outside the kernel's instrumented code, `write`
/// filling `[addr, addr + len)`: a device's DMA (a disk read), a copy from
/// user space, user space writing its own pages. `write` stores with
/// [`user_write`], which the compiler does not instrument (user code and
/// devices are not built with a sanitizer); the kernel checks the range
/// once, as Linux's `instrument_copy_from_user` does: KASAN checks it
/// before the writes (`kasan_check_write`), and, as Linux does at DMA
/// completion and in `copy_from_user`, KMSAN marks it initialized after.
pub fn outside_write(addr: usize, len: usize, write: impl FnOnce()) {
    #[cfg(feature = "kmsan")]
    {
        hybrid_shadow::kmsan::abi::without_tracking(write);
        hybrid_shadow::kmsan::abi::kmsan_unpoison_memory(addr, len);
    }
    #[cfg(not(feature = "kmsan"))]
    {
        check_access(addr, len, true, crate::mm::caller_ip());
        write();
    }
}

/// `[addr, addr + len)` is about to be read from outside the kernel's
/// instrumented code, with [`user_read`]: copied to user space, read by a
/// device, or read by user space from its own pages. The kernel checks
/// the range once, as Linux's `instrument_copy_to_user` does: KASAN for a
/// bad access (`kasan_check_read`), KMSAN for uninitialized bytes
/// (`kmsan_copy_to_user`).
#[inline(never)]
pub fn outside_read(addr: usize, len: usize) {
    check_initialized(addr, len);
    #[cfg(not(feature = "kmsan"))]
    check_access(addr, len, false, crate::mm::caller_ip());
}

/// Load a word as user space or a device does: an assembly load, which
/// no sanitizer instruments. The range is checked once by [`outside_read`].
///
/// # Safety
///
/// `p` is mapped, readable and 8-byte aligned.
#[inline(always)]
pub unsafe fn user_read(p: *const u64) -> u64 {
    let v: u64;
    // SAFETY: the caller's contract: `p` is a mapped, readable word.
    unsafe { core::arch::asm!("mov {}, [{}]", out(reg) v, in(reg) p, options(nostack, readonly, preserves_flags)) };
    v
}

/// Store a word as user space or a device does: an assembly store, which
/// no sanitizer instruments, inside [`outside_write`].
///
/// # Safety
///
/// `p` is mapped, writable, 8-byte aligned, and no Rust reference to it
/// is live.
#[inline(always)]
pub unsafe fn user_write(p: *mut u64, v: u64) {
    // SAFETY: the caller's contract: `p` is a mapped, writable word nothing
    // else refers to.
    unsafe { core::arch::asm!("mov [{}], {}", in(reg) p, in(reg) v, options(nostack, preserves_flags)) };
}

/// KMSAN: report uninitialized bytes of `[addr, addr + len)` (titled with
/// the caller, as Linux's `kmsan_check_memory`). No-op under KASAN.
#[inline(always)]
pub fn check_initialized(addr: usize, len: usize) {
    #[cfg(feature = "kmsan")]
    hybrid_shadow::kmsan::abi::kmsan_check_memory(addr, len);
    let _ = (addr, len);
}

/// KMSAN: save the current stack in the runtime's depot (0: not stored).
#[cfg(feature = "kmsan")]
pub fn stackdepot_save() -> u32 {
    guest_kasan::stackdepot_save()
}

/// KMSAN: the frames of a saved stack, copied into `out`; returns how many.
#[cfg(feature = "kmsan")]
pub fn stackdepot_fetch(h: u32, out: &mut [usize]) -> usize {
    let n = guest_kasan::stackdepot_fetch(h, out);
    hybrid_shadow::kmsan::abi::kmsan_unpoison_memory(out.as_ptr() as usize, core::mem::size_of_val(out));
    n
}

/// KMSAN: how the metadata of the RAM page at `addr` is backed.
#[cfg(feature = "kmsan")]
pub fn kmsan_page_backing(addr: usize) -> Option<hybrid_shadow::Backing> {
    guest_kasan::page_backing(addr)
}

/// The task in scheduler slot `slot` runs next (KMSAN: its compiler
/// context becomes current; call before switching stacks).
pub fn context_switch(slot: usize) {
    #[cfg(feature = "kmsan")]
    guest_kasan::task_context_switch(slot);
    let _ = slot;
}

/// This CPU goes back to its idle loop (KMSAN: the CPU's own context; the
/// task it ran may go on elsewhere).
pub fn context_idle() {
    #[cfg(feature = "kmsan")]
    guest_kasan::idle_context_switch();
}

/// The boot CPU is about to start AP `cpu` (guest_boot::smp's prepare
/// hook). KMSAN: the CPU's own contexts; without them it runs untracked,
/// which is said.
pub fn cpu_prepare(cpu: usize) {
    #[cfg(feature = "kmsan")]
    if let Err(e) = guest_kasan::cpu_prepare(cpu) {
        println!("kmsan: cpu {} runs untracked: {:?}", cpu, e);
    }
    let _ = cpu;
}

/// A new task takes scheduler slot `slot` (KMSAN: a clean context).
pub fn context_reset(slot: usize) {
    #[cfg(feature = "kmsan")]
    guest_kasan::task_context_reset(slot);
    let _ = slot;
}

/// The runtime's counters (None before init).
pub fn stats() -> Option<StatsSnapshot> {
    let mut s = guest_kasan::stats();
    from_runtime(&mut s);
    s
}

/// KMSAN: private metadata pages of RAM now, by page kind (None under KASAN).
pub fn kmsan_census() -> Option<hybrid_shadow::kmsan::MetaCensus> {
    #[cfg(feature = "kmsan")]
    {
        let mut c = guest_kasan::census();
        from_runtime(&mut c);
        c
    }
    #[cfg(not(feature = "kmsan"))]
    None
}

/// Run the runtime's shrinker (promoted mixed-block shadow is a cache):
/// what a kernel does under memory pressure. Returns pages released.
pub fn shrink() -> usize {
    guest_kasan::shrink()
}

/// Frames the runtime's shadow mapper holds (taken from the buddy allocator).
pub fn frames_held() -> usize {
    guest_kasan::frames_held()
}

/// TLB shootdowns of other CPUs the runtime's shadow remaps caused.
pub fn shadow_shootdowns() -> usize {
    guest_kasan::shadow_shootdowns()
}

/// The shadow mapper's one-page remaps so far (shadow pages changing
/// backing: shared, CONSULT, private).
#[cfg(not(feature = "kmsan"))]
pub fn shadow_remaps() -> usize {
    guest_kasan::shadow_remaps()
}

/// The console tap: each report's type and address, per CPU (suite `race`).
pub use guest_kasan::tap;

/// How the shadow page of a direct-map address is backed.
pub fn backing_of(addr: usize) -> Option<Backing> {
    guest_kasan::backing_of(addr)
}

/// The runtime's per-page state of a direct-map address.
pub fn page_state(addr: usize) -> Option<PageState> {
    guest_kasan::page_state(addr)
}

// ---- page allocator -----------------------------------------------------

/// 2^order pages at `addr` (direct map) were just allocated.
pub fn page_alloc(addr: usize, order: u32) {
    guest_kasan::page_alloc(addr, order);
}

/// 2^order pages at `addr` are about to be freed. Return false if the
/// runtime reported a bug (the allocator then leaves the block alone).
pub fn page_free(addr: usize, order: u32, ip: usize) -> bool {
    guest_kasan::page_free(addr, order, ip)
}

// ---- slab ---------------------------------------------------------------

/// A cache is being created: (id, slot size, offset of the first slot in
/// a slab page). The runtime chooses the slot (object + redzone + metadata).
pub fn cache_create(name: &'static str, object_size: usize, align: usize) -> (CacheId, usize, usize) {
    let mut r = guest_kasan::cache_create(name, object_size, align);
    from_runtime(&mut r);
    match r {
        Some((id, slot, off)) => (id as CacheId, slot, off),
        None => (UNTRACKED, (object_size + align - 1) & !(align - 1), 0),
    }
}

/// A cache is being destroyed (after its slabs were freed).
pub fn cache_destroy(id: CacheId) {
    if id != UNTRACKED {
        guest_kasan::cache_destroy(id as u16);
    }
}

/// A new slab of 2^order pages at `base` belongs to cache `id` (after page_alloc).
pub fn slab_page_alloc(id: CacheId, base: usize, order: u32) {
    if id != UNTRACKED {
        guest_kasan::slab_page_alloc(id as u16, base, order);
    }
}

/// An empty slab goes back to the page allocator (before page_free).
pub fn slab_page_free(id: CacheId, base: usize, order: u32) {
    if id != UNTRACKED {
        guest_kasan::slab_page_free(base, order);
    }
}

/// Object `ptr` of cache `id` was allocated with `size` requested bytes.
pub fn object_alloc(id: CacheId, ptr: usize, size: usize) {
    if id != UNTRACKED {
        guest_kasan::slab_alloc(id as u16, ptr, size);
    }
}

/// Object `ptr` of cache `id` is freed (the runtime finds its slab through
/// the platform's `slab_of`).
pub fn object_free(id: CacheId, ptr: usize, ip: usize) -> FreeAction {
    if id == UNTRACKED {
        return FreeAction::Now;
    }
    guest_kasan::slab_free(id as u16, ptr, ip)
}

/// Whether the object at `ptr` is live: the runtime's view when it
/// checks (quarantined objects are still allocated for the slab), else
/// the slab's own (`slab_says`).
pub fn object_live(id: CacheId, ptr: usize, slab_says: bool) -> bool {
    if id == UNTRACKED || !checking() {
        return slab_says;
    }
    guest_kasan::slab_object_live(id as u16, ptr)
}

/// krealloc / kfree_sensitive: the first byte of `ptr` must be accessible;
/// the runtime reports use-after-free / invalid access itself when not.
pub fn check_byte(ptr: usize, ip: usize) -> bool {
    guest_kasan::check_byte(ptr, ip)
}

/// krealloc in place: object `ptr` now has `new_size` requested bytes.
pub fn object_resize(id: CacheId, ptr: usize, new_size: usize) {
    if id != UNTRACKED {
        guest_kasan::slab_resize(id as u16, ptr, new_size);
    }
}

/// ksize(): the runtime unpoisons up to the usable size and returns it
/// (`object_size` = the cache's object size, the no-sanitizer answer).
pub fn ksize(id: CacheId, ptr: usize, object_size: usize, ip: usize) -> usize {
    if id == UNTRACKED || !checking() {
        return object_size;
    }
    guest_kasan::ksize(id as u16, ptr, ip)
}

/// Next object the quarantine releases (the allocator then really frees
/// it), or None. Call in a loop after frees.
pub fn quarantine_pop() -> Option<usize> {
    guest_kasan::quarantine_pop()
}

/// Next object of an emptying quarantine (drain everything).
pub fn quarantine_drain() -> Option<usize> {
    guest_kasan::quarantine_drain()
}

/// Before destroying cache `id`: its quarantined objects come out next.
pub fn quarantine_release_cache(id: CacheId) {
    if id != UNTRACKED {
        guest_kasan::quarantine_release_cache(id as u16);
    }
}

/// A page-backed kmalloc of `size` bytes at `addr` (2^order pages).
pub fn kmalloc_large(addr: usize, order: u32, size: usize) {
    guest_kasan::kmalloc_large(addr, order, size);
}

/// kfree of a large kmalloc; `ptr` is what the caller passed. Return false
/// if the runtime reported a bug (then nothing is freed).
pub fn kfree_large(ptr: usize, order: u32, ip: usize) -> bool {
    guest_kasan::kfree_large(ptr, order, ip)
}

#[cfg(not(feature = "kmsan"))]
/// A mempool takes slab object `ptr` of cache `id` (slab's first slot at
/// `first`) into its reserve: the runtime poisons it as freed. False if
/// it reported a double or invalid free (the pool must not take it).
pub fn mempool_poison_object(id: CacheId, first: usize, ptr: usize, ip: usize) -> bool {
    id == UNTRACKED || guest_kasan::mempool_poison_object(id as u16, first, ptr, ip)
}

#[cfg(not(feature = "kmsan"))]
/// A mempool hands slab object `ptr` of cache `id` out again for `size` bytes.
pub fn mempool_unpoison_object(id: CacheId, ptr: usize, size: usize) {
    if id != UNTRACKED {
        guest_kasan::mempool_unpoison_object(id as u16, ptr, size);
    }
}

#[cfg(not(feature = "kmsan"))]
/// A mempool takes the large kmalloc at `ptr` (2^order pages) into its
/// reserve (poisoned as free pages). False if a bad free was reported.
pub fn mempool_poison_large(ptr: usize, order: u32, ip: usize) -> bool {
    guest_kasan::mempool_poison_large(ptr, order, ip)
}

/// Check an access the compiler cannot see (a copy done in assembly: the
/// user-copy routines, copy_to_kernel_nofault) as made by the code at
/// `ip`. False if it was reported.
pub fn check_access(addr: usize, size: usize, write: bool, ip: usize) -> bool {
    guest_kasan::check_access(addr, size, write, ip)
}

/// A free the allocator itself found invalid (pointer not at an object
/// start, unknown address, double free the runtime could not see). With
/// a checking runtime it becomes a KASAN invalid-free report; in `off`
/// mode it is only printed.
pub fn bad_free(ptr: usize, ip: usize, what: &str) {
    if checking() {
        guest_kasan::report_invalid_free(ptr, ip);
    } else {
        println!("guest: bad free of {:#x} from {}: {}", ptr, guest_boot::ksyms::Ret(ip as u64), what);
    }
}

// ---- vmalloc ------------------------------------------------------------

/// vmalloc area at `addr`: `size` requested bytes, `area_len` bytes mapped
/// (page multiple); the guard page after it is part of the area for the runtime.
pub fn vmalloc_alloc(addr: usize, size: usize, area_len: usize) {
    guest_kasan::vmalloc_alloc(addr, size, area_len + crate::mm::PAGE_SIZE);
}

/// vmalloc area at `addr` of `area_len` mapped bytes is being freed (before unmapping).
pub fn vmalloc_free(addr: usize, area_len: usize) {
    guest_kasan::vmalloc_free(addr, area_len + crate::mm::PAGE_SIZE);
}

// ---- tasks --------------------------------------------------------------

/// A kernel stack of 2^order pages at `addr` was allocated (after page_alloc).
pub fn stack_alloc(addr: usize, order: u32) {
    guest_kasan::stack_alloc(addr, order);
}

/// A dead task's stack is being freed (before page_free).
pub fn stack_free(addr: usize, order: u32) {
    guest_kasan::stack_free(addr, order);
}

/// The current task changed (the runtime asks `task::current` itself).
pub fn task_switch(_name: &'static str, _pid: u32) {}
