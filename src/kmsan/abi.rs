//! KMSAN's compiler ABI (LLVM MemorySanitizer, kernel mode) and kernel API,
//! with the `kmsan-abi` feature.
//!
//! ```text
//!  instrumented function entry ─► __msan_get_context_state()   the task's ContextState
//!  load  *p  ─► __msan_metadata_ptr_for_load_N(p)   ─► {shadow*, origin*} (rax:rdx)
//!  store *p  ─► __msan_metadata_ptr_for_store_N(p)  ─► {shadow*, origin*}, code writes them
//!  branch on uninit ─► __msan_warning(origin)           report, title = caller
//!  store of uninit  ─► __msan_chain_origin(origin)      origin + "stored to memory at"
//!  locals           ─► __msan_poison_alloca(p, n, name)
//!  memcpy/memmove/memset ─► __msan_memcpy/... (data and metadata)
//! ```
//!
//! A kernel installs its runtime with [`install`] and tells the ABI which
//! task context is current with [`set_current`] at every switch (the
//! compiler keeps parameter and return-value shadow there; the runtime
//! keeps the task's deferred store there), and brackets interrupt
//! handlers with [`interrupt_enter`] / [`interrupt_exit`] (a context per
//! nesting level, up to [`IRQ_LEVELS`]). Until install, and while the
//! runtime itself runs code that may be instrumented (a nesting count per
//! CPU), metadata calls get a dummy page: reads are initialized, writes
//! go nowhere, nothing is reported.
//!
//! ## Several CPUs
//!
//! All of that state is per CPU ([`CpuContexts`]): which context is
//! current, the nesting count, the interrupt levels, and the context of
//! code that runs outside any task (boot, idle loops). CPU 0 has one built
//! in; every other CPU gets one from the kernel with [`register_cpu`]
//! before it runs instrumented code, and the ABI finds it through the
//! installed runtime's [`Platform::cpu`]. A CPU without one runs
//! untracked (the dummy page), never with another CPU's context.
//!
//! ```text
//!  __msan_*(…) ─► Platform::cpu() = n ─► CPUS[n]: current ─► TaskContext (task's, or idle / irq level)
//!                                                 depth    (runtime entered on this CPU?)
//! ```
//!
//! A store the runtime defers (the sink, see [`crate::kmsan::meta`]) lives
//! in the storing task's context and lands at that CPU's next runtime
//! entry. Another CPU can only read the stored bytes after the storing
//! CPU published them (a release store, an unlock, an atomic), and that
//! publishing access enters the runtime first, so the metadata has landed
//! before the data is visible; [`set_current`] settles the outgoing
//! task's store before it can move to another CPU.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::{AcqRel, Acquire, Relaxed}};

use crate::caller::{caller_ip, caller_ip2};
use crate::kmsan::meta::{Context, MetaPtrs};
use crate::kmsan::origin::Origin;
use crate::kmsan::runtime::Kmsan;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::platform::Platform;

/// The compiler's per-task state (layout fixed by LLVM's kernel mode:
/// 4016 bytes).
#[repr(C)]
pub struct ContextState {
    /// Shadow of the parameters passed through memory-like slots.
    pub param_tls: [u64; 100],
    /// Shadow of the return value.
    pub retval_tls: [u64; 100],
    /// Shadow of variadic arguments.
    pub va_arg_tls: [u64; 100],
    /// Origins of variadic arguments.
    pub va_arg_origin_tls: [u64; 100],
    /// Bytes of variadic arguments past the register area.
    pub va_arg_overflow_size_tls: u64,
    /// Origins of the parameters.
    pub param_origin_tls: [u32; 200],
    /// Origin of the return value.
    pub retval_origin_tls: u32,
    _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ContextState>() == 4016);

/// Everything KMSAN keeps per task (or interrupt level): the compiler's
/// state first (its address is what [`__msan_get_context_state`] returns),
/// then the runtime's.
#[repr(C)]
pub struct TaskContext {
    /// The compiler's part.
    pub state: ContextState,
    /// The runtime's part (the deferred store).
    pub rt: Context,
}

impl Default for TaskContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskContext {
    /// A clean context.
    #[must_use]
    pub const fn new() -> Self {
        TaskContext {
            state: ContextState {
                param_tls: [0; 100],
                retval_tls: [0; 100],
                va_arg_tls: [0; 100],
                va_arg_origin_tls: [0; 100],
                va_arg_overflow_size_tls: 0,
                param_origin_tls: [0; 200],
                retval_origin_tls: 0,
                _pad: 0,
            },
            rt: Context::new(),
        }
    }
}

/// What the ABI needs from a runtime, object safe.
pub trait AbiKmsan: Sync {
    /// Metadata pointers for a load.
    fn meta_load(&self, ctx: &mut Context, addr: usize, size: usize) -> MetaPtrs;
    /// Metadata pointers for a store.
    fn meta_store(&self, ctx: &mut Context, addr: usize, size: usize) -> MetaPtrs;
    /// Apply the context's deferred store.
    fn settle(&self, ctx: &mut Context);
    /// Report a use of an uninitialized value.
    fn warning(&self, o: Origin, ip: usize);
    /// Link the current stack into an origin.
    fn chain_origin(&self, o: Origin) -> Origin;
    /// A local variable starts uninitialized.
    fn poison_alloca(&self, addr: usize, size: usize, name: &'static [u8], pc: usize, pc2: usize);
    /// Mark initialized.
    fn unpoison(&self, addr: usize, size: usize);
    /// Mark uninitialized, created here.
    fn poison(&self, addr: usize, size: usize);
    /// Metadata of a copy.
    fn copy(&self, dst: usize, src: usize, n: usize);
    /// Check a range; false when something was reported.
    fn check(&self, addr: usize, size: usize, ip: usize) -> bool;
    /// The calling CPU's number ([`Platform::cpu`]).
    fn cpu(&self) -> usize;
}

impl<M: ShadowMapper + Send, P: Platform + Sync> AbiKmsan for Kmsan<M, P> {
    fn meta_load(&self, ctx: &mut Context, addr: usize, size: usize) -> MetaPtrs {
        Kmsan::meta_load(self, ctx, addr, size)
    }
    fn meta_store(&self, ctx: &mut Context, addr: usize, size: usize) -> MetaPtrs {
        Kmsan::meta_store(self, ctx, addr, size)
    }
    fn settle(&self, ctx: &mut Context) {
        Kmsan::settle(self, ctx);
    }
    fn warning(&self, o: Origin, ip: usize) {
        Kmsan::warning(self, o, ip);
    }
    fn chain_origin(&self, o: Origin) -> Origin {
        Kmsan::chain_origin(self, o)
    }
    fn poison_alloca(&self, addr: usize, size: usize, name: &'static [u8], pc: usize, pc2: usize) {
        Kmsan::poison_alloca(self, addr, size, name, pc, pc2);
    }
    fn unpoison(&self, addr: usize, size: usize) {
        self.unpoison_memory(addr, size);
    }
    fn poison(&self, addr: usize, size: usize) {
        self.poison_memory(addr, size);
    }
    fn copy(&self, dst: usize, src: usize, n: usize) {
        self.copy_meta(dst, src, n);
    }
    fn check(&self, addr: usize, size: usize, ip: usize) -> bool {
        self.check_memory(addr, size, ip).is_ok()
    }
    #[inline]
    fn cpu(&self) -> usize {
        self.platform().cpu()
    }
}

/// Bytes of the dummy metadata handed out when the runtime cannot answer.
const DUMMY_BYTES: usize = 2 * PAGE_SIZE;

#[repr(C, align(4096))]
struct Dummy(UnsafeCell<[u8; DUMMY_BYTES]>);
// SAFETY: the dummy is scratch memory the compiler's code writes and reads
// without synchronisation by design: its content never matters.
unsafe impl Sync for Dummy {}
static ZERO: Dummy = Dummy(UnsafeCell::new([0; DUMMY_BYTES]));
static SCRATCH: Dummy = Dummy(UnsafeCell::new([0; DUMMY_BYTES]));

/// Most CPUs the ABI serves (numbered from 0, as [`Platform::cpu`] does).
pub const MAX_CPUS: usize = 64;

/// One CPU's KMSAN state: the context current on it, whether it is inside
/// the runtime, its interrupt levels, and the context of code that runs
/// there outside any task (boot, idle loop). About 25 KiB: a kernel
/// allocates one per CPU beyond the first ([`register_cpu`]), outside
/// memory the runtime tracks byte by byte.
pub struct CpuContexts {
    /// The context the compiler's code on this CPU uses (null: `idle`).
    current: AtomicPtr<TaskContext>,
    /// Runtime entries in progress on this CPU (0 or 1, more while
    /// [`without_tracking`] or too-deep interrupts nest). While non-zero,
    /// metadata calls get the dummy page and nothing is reported.
    depth: AtomicUsize,
    /// Interrupt nesting on this CPU.
    irq_depth: AtomicUsize,
    /// The context each interrupt level interrupted.
    irq_saved: [AtomicPtr<TaskContext>; IRQ_LEVELS],
    /// Code outside any task.
    idle: UnsafeCell<TaskContext>,
    /// One context per interrupt nesting level.
    irq: UnsafeCell<[TaskContext; IRQ_LEVELS]>,
}

// SAFETY: every field but the two cells is atomic. `idle` and `irq` are
// used only by the CPU that owns this block (the one `Platform::cpu`
// names): `idle` while no task context is current, level `d` of `irq`
// between the `interrupt_enter` that opened it and the matching exit,
// strictly nested.
unsafe impl Sync for CpuContexts {}

impl Default for CpuContexts {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuContexts {
    /// A CPU with nothing current, outside the runtime, no interrupt.
    #[must_use]
    pub const fn new() -> Self {
        Self::with_depth(0)
    }

    const fn with_depth(depth: usize) -> Self {
        CpuContexts {
            current: AtomicPtr::new(core::ptr::null_mut()),
            depth: AtomicUsize::new(depth),
            irq_depth: AtomicUsize::new(0),
            irq_saved: [const { AtomicPtr::new(core::ptr::null_mut()) }; IRQ_LEVELS],
            idle: UnsafeCell::new(TaskContext::new()),
            irq: UnsafeCell::new([const { TaskContext::new() }; IRQ_LEVELS]),
        }
    }

    fn current_ptr(&self) -> *mut TaskContext {
        let p = self.current.load(Relaxed);
        if p.is_null() {
            self.idle.get()
        } else {
            p
        }
    }
}

/// Why [`register_cpu`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuError {
    /// CPU 0 has its contexts built in.
    BootCpu,
    /// The CPU number is [`MAX_CPUS`] or more.
    TooMany,
    /// The CPU already has contexts.
    Registered,
}

impl core::fmt::Display for CpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CpuError::BootCpu => "cpu 0 has its KMSAN contexts built in",
            CpuError::TooMany => "cpu number beyond kmsan::abi::MAX_CPUS",
            CpuError::Registered => "cpu already has KMSAN contexts",
        })
    }
}

/// CPU 0's state (in the image: it runs before any allocator does).
static CPU0: CpuContexts = CpuContexts::new();
/// Where CPUs that have no state of their own run: permanently inside
/// the runtime (so untracked); the compiler's state they write there is
/// never read by the runtime, and racing writes to it are harmless.
static UNTRACKED: CpuContexts = CpuContexts::with_depth(1);
/// The other CPUs' state, from [`register_cpu`] (null: none yet).
static CPUS: [AtomicPtr<CpuContexts>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
/// Whether any CPU beyond 0 has registered: until then every call is
/// CPU 0's without asking the platform.
static SEVERAL: AtomicBool = AtomicBool::new(false);

static RUNTIME: spin::Once<&'static dyn AbiKmsan> = spin::Once::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Route the compiler's calls to `rt`. Only the first call has effect; in
/// `off` mode nothing is routed.
pub fn install<M: ShadowMapper + Send, P: Platform + Sync>(rt: &'static Kmsan<M, P>) {
    if rt.config().mode == crate::config::Mode::Off {
        return;
    }
    RUNTIME.call_once(|| rt as &'static dyn AbiKmsan);
    ENABLED.store(true, Relaxed);
}

/// Stop tracking: metadata calls get the dummy page afterwards.
pub fn disable() {
    ENABLED.store(false, Relaxed);
}

/// Give CPU `cpu` (as the installed runtime's [`Platform::cpu`] numbers
/// it) its KMSAN state. Call it before that CPU runs instrumented code
/// (from the CPU that starts it); until then, and on a CPU that never
/// registers, the CPU runs untracked. CPU 0's state is built in.
///
/// # Errors
///
/// [`CpuError`]: CPU 0, a number past [`MAX_CPUS`], or a CPU that already
/// has its state.
pub fn register_cpu(cpu: usize, state: &'static CpuContexts) -> Result<(), CpuError> {
    if cpu == 0 {
        return Err(CpuError::BootCpu);
    }
    let slot = CPUS.get(cpu).ok_or(CpuError::TooMany)?;
    slot.compare_exchange(core::ptr::null_mut(), core::ptr::from_ref(state).cast_mut(), AcqRel, Acquire)
        .map_err(|_| CpuError::Registered)?;
    SEVERAL.store(true, Relaxed);
    Ok(())
}

/// The calling CPU's state.
#[inline(always)]
fn this_cpu() -> &'static CpuContexts {
    if !SEVERAL.load(Relaxed) {
        return &CPU0;
    }
    let Some(rt) = RUNTIME.get() else { return &CPU0 };
    match rt.cpu() {
        0 => &CPU0,
        n => match CPUS.get(n).map(|p| p.load(Acquire)) {
            // SAFETY: `register_cpu` stored a `&'static CpuContexts`.
            Some(p) if !p.is_null() => unsafe { &*p },
            _ => &UNTRACKED,
        },
    }
}

/// Make `ctx` the current task's context on this CPU.
///
/// # Safety
///
/// `ctx` must stay valid and be used by no other running task (on any
/// CPU) until this CPU's next `set_current`; null selects this CPU's own
/// context (idle code).
pub unsafe fn set_current(ctx: *mut TaskContext) {
    let cpu = this_cpu();
    if core::ptr::eq(cpu, &UNTRACKED) {
        return;
    }
    // The outgoing task's deferred store lands before anyone else runs it
    // (here or on another CPU).
    if let Some(e) = enter() {
        e.rt.settle(e.ctx);
    }
    cpu.current.store(ctx, Relaxed);
}

/// Inside the runtime on this CPU: metadata calls made meanwhile (by code
/// the runtime calls) get the dummy page. Leaves on drop.
struct Entered {
    rt: &'static dyn AbiKmsan,
    cpu: &'static CpuContexts,
    ctx: &'static mut Context,
}

impl Drop for Entered {
    #[inline(always)]
    fn drop(&mut self) {
        self.cpu.depth.store(0, Relaxed);
    }
}

/// Enter the runtime: the runtime and this CPU's current context, or
/// `None` when disabled or already inside on this CPU.
#[inline(always)]
fn enter() -> Option<Entered> {
    if !ENABLED.load(Relaxed) {
        return None;
    }
    let rt = *RUNTIME.get()?;
    let cpu = this_cpu();
    if cpu.depth.load(Relaxed) != 0 {
        return None;
    }
    cpu.depth.store(1, Relaxed);
    // SAFETY: the current context belongs to the task running on this CPU
    // (the contract of `set_current`); its runtime part is only touched
    // here, inside runtime calls, which do not nest on one CPU (`depth`).
    let ctx = unsafe { &mut (*cpu.current_ptr()).rt };
    Some(Entered { rt, cpu, ctx })
}

fn dummy_load() -> MetaPtrs {
    let z = ZERO.0.get().cast::<u8>();
    MetaPtrs { shadow: z, origin: z.cast() }
}

fn dummy_store() -> MetaPtrs {
    let s = SCRATCH.0.get().cast::<u8>();
    MetaPtrs { shadow: s, origin: s.cast() }
}

fn load(addr: usize, size: usize) -> MetaPtrs {
    match enter() {
        Some(e) => e.rt.meta_load(e.ctx, addr, size),
        None => dummy_load(),
    }
}

fn store(addr: usize, size: usize) -> MetaPtrs {
    match enter() {
        Some(e) => e.rt.meta_store(e.ctx, addr, size),
        None => dummy_store(),
    }
}

/// The current task's compiler state.
#[no_mangle]
pub extern "C" fn __msan_get_context_state() -> *mut ContextState {
    this_cpu().current_ptr().cast()
}

macro_rules! sized {
    ($($load:ident $store:ident = $n:expr;)*) => {$(
        #[doc = concat!("Metadata of a ", stringify!($n), "-byte load.")]
        #[no_mangle]
        pub extern "C" fn $load(addr: usize) -> MetaPtrs { load(addr, $n) }
        #[doc = concat!("Metadata of a ", stringify!($n), "-byte store.")]
        #[no_mangle]
        pub extern "C" fn $store(addr: usize) -> MetaPtrs { store(addr, $n) }
    )*};
}

sized! {
    __msan_metadata_ptr_for_load_1 __msan_metadata_ptr_for_store_1 = 1;
    __msan_metadata_ptr_for_load_2 __msan_metadata_ptr_for_store_2 = 2;
    __msan_metadata_ptr_for_load_4 __msan_metadata_ptr_for_store_4 = 4;
    __msan_metadata_ptr_for_load_8 __msan_metadata_ptr_for_store_8 = 8;
}

/// Metadata of a load of `size` bytes.
#[no_mangle]
pub extern "C" fn __msan_metadata_ptr_for_load_n(addr: usize, size: u64) -> MetaPtrs {
    load(addr, size as usize)
}

/// Metadata of a store of `size` bytes.
#[no_mangle]
pub extern "C" fn __msan_metadata_ptr_for_store_n(addr: usize, size: u64) -> MetaPtrs {
    store(addr, size as usize)
}

/// The instrumented caller used an uninitialized value with origin `origin`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn __msan_warning(origin: u32) {
    let ip = caller_ip();
    if let Some(e) = enter() {
        e.rt.warning(origin, ip);
    }
}

/// The origin of an uninitialized value being stored, with this store linked in.
#[no_mangle]
pub extern "C" fn __msan_chain_origin(origin: u32) -> u32 {
    match enter() {
        Some(e) => e.rt.chain_origin(origin),
        None => origin,
    }
}

/// A local variable (NUL-terminated name `descr`) at `[addr, addr + size)`
/// starts uninitialized.
///
/// # Safety
///
/// `descr` is null or a NUL-terminated string that lives for the whole
/// run (the compiler passes a constant).
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn __msan_poison_alloca(addr: usize, size: u64, descr: *const u8) {
    let (pc, pc2) = (caller_ip(), caller_ip2());
    let name: &'static [u8] = if descr.is_null() {
        &[]
    } else {
        let mut n = 0;
        // SAFETY: the caller passes a NUL-terminated constant; at most 128
        // bytes are read.
        while n < 128 && unsafe { *descr.add(n) } != 0 {
            n += 1;
        }
        // SAFETY: `n` bytes were just read; the string is a constant.
        unsafe { core::slice::from_raw_parts(descr, n) }
    };
    if let Some(e) = enter() {
        e.rt.poison_alloca(addr, size as usize, name, pc, pc2);
    }
}

/// A local variable at `[addr, addr + size)` is initialized.
#[no_mangle]
pub extern "C" fn __msan_unpoison_alloca(addr: usize, size: u64) {
    if let Some(e) = enter() {
        e.rt.unpoison(addr, size as usize);
    }
}

/// Inline assembly may have written `[addr, addr + size)`.
#[no_mangle]
pub extern "C" fn __msan_instrument_asm_store(addr: usize, size: u64) {
    let size = if size > 512 { 8 } else { size as usize };
    if let Some(e) = enter() {
        e.rt.unpoison(addr, size);
    }
}

/// `memcpy` with metadata.
///
/// # Safety
///
/// As `memcpy`: both ranges valid for `n` bytes and not overlapping.
#[no_mangle]
pub unsafe extern "C" fn __msan_memcpy(dst: *mut u8, src: *const u8, n: u64) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n as usize) };
    if let Some(e) = enter() {
        e.rt.copy(dst as usize, src as usize, n as usize);
    }
    dst
}

/// `memmove` with metadata.
///
/// # Safety
///
/// As `memmove`: both ranges valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn __msan_memmove(dst: *mut u8, src: *const u8, n: u64) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy(src, dst, n as usize) };
    if let Some(e) = enter() {
        e.rt.copy(dst as usize, src as usize, n as usize);
    }
    dst
}

/// `memset` with metadata: the bytes are initialized.
///
/// # Safety
///
/// As `memset`: `dst` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn __msan_memset(dst: *mut u8, c: i32, n: u64) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_bytes(dst, c as u8, n as usize) };
    if let Some(e) = enter() {
        e.rt.unpoison(dst as usize, n as usize);
    }
    dst
}

/// Linux's `kmsan_check_memory`: report uninitialized bytes of the range
/// (the title names the caller). Returns false when something was reported.
#[no_mangle]
#[inline(never)]
pub extern "C" fn kmsan_check_memory(addr: usize, size: usize) -> bool {
    let ip = caller_ip();
    match enter() {
        Some(e) => e.rt.check(addr, size, ip),
        None => true,
    }
}

/// Linux's `kmsan_unpoison_memory`: the range is initialized (written by a
/// device, by assembly, by uninstrumented code).
#[no_mangle]
pub extern "C" fn kmsan_unpoison_memory(addr: usize, size: usize) {
    if let Some(e) = enter() {
        e.rt.unpoison(addr, size);
    }
}

/// Linux's `kmsan_poison_memory`: the range is uninitialized, created here.
#[no_mangle]
pub extern "C" fn kmsan_poison_memory(addr: usize, size: usize) {
    if let Some(e) = enter() {
        e.rt.poison(addr, size);
    }
}

/// Run `f` with metadata calls answered by the dummy page on this CPU (the
/// runtime's callers use it around uninstrumented work that must not be
/// tracked).
pub fn without_tracking<R>(f: impl FnOnce() -> R) -> R {
    let cpu = this_cpu();
    cpu.depth.fetch_add(1, Relaxed);
    let r = f();
    cpu.depth.fetch_sub(1, Relaxed);
    r
}

/// Interrupt nesting levels with a context of their own; deeper levels
/// run untracked (their metadata calls get the dummy page).
pub const IRQ_LEVELS: usize = 4;

/// An interrupt (or exception) handler starts on this CPU: from here to
/// the matching [`interrupt_exit`] its instrumented code uses a context of
/// its own, one per nesting level, as Linux keeps one apart from the task's.
///
/// The interrupted code may be between a store's metadata call and its
/// write into the sink: the task's deferred store stays pending in the
/// task's context, untouched, until the task runs again.
///
/// Call it before any instrumented code of the handler runs, and do not
/// switch tasks ([`set_current`]) until the matching exit.
pub fn interrupt_enter() {
    let cpu = this_cpu();
    if core::ptr::eq(cpu, &UNTRACKED) {
        return;
    }
    let d = cpu.irq_depth.load(Relaxed);
    cpu.irq_depth.store(d + 1, Relaxed);
    if d >= IRQ_LEVELS {
        // Too deep: untracked until the matching exit.
        cpu.depth.fetch_add(1, Relaxed);
        return;
    }
    cpu.irq_saved[d].store(cpu.current.load(Relaxed), Relaxed);
    // SAFETY: level `d` is free (every deeper level exited) and only this
    // CPU uses it (see `CpuContexts`).
    let ctx = unsafe { &mut (*cpu.irq.get())[d] };
    // Fresh parameter and return-value shadow, nothing pending.
    *ctx = TaskContext::new();
    cpu.current.store(ctx, Relaxed);
}

/// The handler opened by the last [`interrupt_enter`] on this CPU
/// returns: its last store lands, and the interrupted context is current
/// again.
pub fn interrupt_exit() {
    let cpu = this_cpu();
    if core::ptr::eq(cpu, &UNTRACKED) {
        return;
    }
    let Some(d) = cpu.irq_depth.load(Relaxed).checked_sub(1) else { return };
    cpu.irq_depth.store(d, Relaxed);
    if d >= IRQ_LEVELS {
        cpu.depth.fetch_sub(1, Relaxed);
        return;
    }
    settle_current();
    cpu.current.store(cpu.irq_saved[d].load(Relaxed), Relaxed);
}

/// [`interrupt_enter`] for assembly interrupt entry stubs, which must
/// switch contexts before the first instrumented function of the handler
/// runs (that function takes its context on entry).
#[no_mangle]
pub extern "C" fn kmsan_interrupt_enter() {
    interrupt_enter();
}

/// [`interrupt_exit`] for assembly interrupt entry stubs.
#[no_mangle]
pub extern "C" fn kmsan_interrupt_exit() {
    interrupt_exit();
}

/// Settle the current context's deferred store (before an allocator hook
/// that may change the pages it touched).
pub fn settle_current() {
    if let Some(e) = enter() {
        e.rt.settle(e.ctx);
    }
}
