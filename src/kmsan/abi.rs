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
//! runtime itself runs code that may be instrumented (one CPU: a nesting
//! count), metadata calls get a dummy page: reads are initialized, writes
//! go nowhere, nothing is reported.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};

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

struct BootContext(UnsafeCell<TaskContext>);
// SAFETY: used by one CPU before the kernel sets a context of its own.
unsafe impl Sync for BootContext {}
static BOOT: BootContext = BootContext(UnsafeCell::new(TaskContext::new()));

static RUNTIME: spin::Once<&'static dyn AbiKmsan> = spin::Once::new();
static ENABLED: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicPtr<TaskContext> = AtomicPtr::new(core::ptr::null_mut());
/// Runtime calls in progress (one CPU). While non-zero, metadata calls get
/// the dummy page and nothing is reported.
static DEPTH: AtomicUsize = AtomicUsize::new(0);

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

/// Make `ctx` the current task's context.
///
/// # Safety
///
/// `ctx` must stay valid and be used by no other running task until the
/// next `set_current`; null selects the boot context.
pub unsafe fn set_current(ctx: *mut TaskContext) {
    // The outgoing task's deferred store lands before anyone else runs.
    if let Some((rt, old)) = enter() {
        rt.settle(old);
        leave();
    }
    CURRENT.store(ctx, Relaxed);
}

fn current_ptr() -> *mut TaskContext {
    let p = CURRENT.load(Relaxed);
    if p.is_null() {
        BOOT.0.get()
    } else {
        p
    }
}

fn current_ctx() -> &'static mut Context {
    // SAFETY: the current context belongs to the running task (the
    // contract of `set_current`); the runtime part is only touched here,
    // inside runtime calls, which do not nest (DEPTH).
    unsafe { &mut (*current_ptr()).rt }
}

/// Enter the runtime: the runtime and the current context, or `None`
/// when disabled or already inside.
#[inline(always)]
fn enter() -> Option<(&'static dyn AbiKmsan, &'static mut Context)> {
    if !ENABLED.load(Relaxed) || DEPTH.load(Relaxed) != 0 {
        return None;
    }
    let rt = *RUNTIME.get()?;
    DEPTH.store(1, Relaxed);
    Some((rt, current_ctx()))
}

#[inline(always)]
fn leave() {
    DEPTH.store(0, Relaxed);
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
        Some((rt, ctx)) => {
            let p = rt.meta_load(ctx, addr, size);
            leave();
            p
        }
        None => dummy_load(),
    }
}

fn store(addr: usize, size: usize) -> MetaPtrs {
    match enter() {
        Some((rt, ctx)) => {
            let p = rt.meta_store(ctx, addr, size);
            leave();
            p
        }
        None => dummy_store(),
    }
}

/// The current task's compiler state.
#[no_mangle]
pub extern "C" fn __msan_get_context_state() -> *mut ContextState {
    current_ptr().cast()
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
    if let Some((rt, _)) = enter() {
        rt.warning(origin, ip);
        leave();
    }
}

/// The origin of an uninitialized value being stored, with this store linked in.
#[no_mangle]
pub extern "C" fn __msan_chain_origin(origin: u32) -> u32 {
    match enter() {
        Some((rt, _)) => {
            let o = rt.chain_origin(origin);
            leave();
            o
        }
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
    if let Some((rt, _)) = enter() {
        rt.poison_alloca(addr, size as usize, name, pc, pc2);
        leave();
    }
}

/// A local variable at `[addr, addr + size)` is initialized.
#[no_mangle]
pub extern "C" fn __msan_unpoison_alloca(addr: usize, size: u64) {
    if let Some((rt, _)) = enter() {
        rt.unpoison(addr, size as usize);
        leave();
    }
}

/// Inline assembly may have written `[addr, addr + size)`.
#[no_mangle]
pub extern "C" fn __msan_instrument_asm_store(addr: usize, size: u64) {
    let size = if size > 512 { 8 } else { size as usize };
    if let Some((rt, _)) = enter() {
        rt.unpoison(addr, size);
        leave();
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
    if let Some((rt, _)) = enter() {
        rt.copy(dst as usize, src as usize, n as usize);
        leave();
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
    if let Some((rt, _)) = enter() {
        rt.copy(dst as usize, src as usize, n as usize);
        leave();
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
    if let Some((rt, _)) = enter() {
        rt.unpoison(dst as usize, n as usize);
        leave();
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
        Some((rt, _)) => {
            let ok = rt.check(addr, size, ip);
            leave();
            ok
        }
        None => true,
    }
}

/// Linux's `kmsan_unpoison_memory`: the range is initialized (written by a
/// device, by assembly, by uninstrumented code).
#[no_mangle]
pub extern "C" fn kmsan_unpoison_memory(addr: usize, size: usize) {
    if let Some((rt, _)) = enter() {
        rt.unpoison(addr, size);
        leave();
    }
}

/// Linux's `kmsan_poison_memory`: the range is uninitialized, created here.
#[no_mangle]
pub extern "C" fn kmsan_poison_memory(addr: usize, size: usize) {
    if let Some((rt, _)) = enter() {
        rt.poison(addr, size);
        leave();
    }
}

/// Run `f` with metadata calls answered by the dummy page (the runtime's
/// callers use it around uninstrumented work that must not be tracked).
pub fn without_tracking<R>(f: impl FnOnce() -> R) -> R {
    let d = DEPTH.load(Relaxed);
    DEPTH.store(d + 1, Relaxed);
    let r = f();
    DEPTH.store(d, Relaxed);
    r
}

/// Interrupt nesting levels with a context of their own; deeper levels
/// run untracked (their metadata calls get the dummy page).
pub const IRQ_LEVELS: usize = 4;

struct IrqContexts(UnsafeCell<[TaskContext; IRQ_LEVELS]>);
// SAFETY: level `d` is used only between the `interrupt_enter` that opened
// it and the matching `interrupt_exit`, on one CPU, strictly nested.
unsafe impl Sync for IrqContexts {}
static IRQ: IrqContexts = IrqContexts(UnsafeCell::new([const { TaskContext::new() }; IRQ_LEVELS]));
static IRQ_DEPTH: AtomicUsize = AtomicUsize::new(0);
static IRQ_SAVED: [AtomicPtr<TaskContext>; IRQ_LEVELS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; IRQ_LEVELS];

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
    let d = IRQ_DEPTH.load(Relaxed);
    IRQ_DEPTH.store(d + 1, Relaxed);
    if d >= IRQ_LEVELS {
        // Too deep: untracked until the matching exit.
        DEPTH.fetch_add(1, Relaxed);
        return;
    }
    IRQ_SAVED[d].store(CURRENT.load(Relaxed), Relaxed);
    // SAFETY: level `d` is free (every deeper level exited) and only this
    // CPU uses it (see `IrqContexts`).
    let ctx = unsafe { &mut (*IRQ.0.get())[d] };
    // Fresh parameter and return-value shadow, nothing pending.
    *ctx = TaskContext::new();
    CURRENT.store(ctx, Relaxed);
}

/// The handler opened by the last [`interrupt_enter`] returns: its last
/// store lands, and the interrupted context is current again.
pub fn interrupt_exit() {
    let Some(d) = IRQ_DEPTH.load(Relaxed).checked_sub(1) else { return };
    IRQ_DEPTH.store(d, Relaxed);
    if d >= IRQ_LEVELS {
        DEPTH.fetch_sub(1, Relaxed);
        return;
    }
    settle_current();
    CURRENT.store(IRQ_SAVED[d].load(Relaxed), Relaxed);
}

/// Settle the current context's deferred store (before an allocator hook
/// that may change the pages it touched).
pub fn settle_current() {
    if let Some((rt, ctx)) = enter() {
        rt.settle(ctx);
        leave();
    }
}
