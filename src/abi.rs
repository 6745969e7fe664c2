//! The compiler ABI (`-Zsanitizer=kernel-address`): the `__asan_*`
//! functions instrumented code calls. Enabled by the `abi` feature.
//!
//! ```text
//!  __asan_load8_noabort(addr)
//!    ├─ covered and shadow byte(s) 0 ──► return            (fast path, no call)
//!    ├─ CONSULT byte, page allocated ──► return            (one more load: per-page byte)
//!    └─ else ──► RUNTIME.check(addr, 8, read, caller ip)    (slow path: dyn call)
//! ```
//!
//! A kernel installs its runtime once with [`install`]; before that every
//! check passes (the shadow does not exist yet). The fast path reads three
//! statics set at install (shadow offset, covered range) and the shadow.

use crate::hooks::{Ip, Size};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use crate::hooks::GlobalDesc;
use crate::mapper::ShadowMapper;
use crate::platform::Platform;
use crate::runtime::Kasan;

/// What the ABI needs from a runtime, object safe.
pub trait AbiRuntime: Sync {
    /// Full check (slow path); reports on a bug and returns false.
    fn check(&self, addr: usize, size: usize, write: bool, ip: usize) -> bool;
    /// Set the shadow of a granule-aligned range.
    fn poison(&self, addr: usize, size: usize, value: u8);
    /// Make a range accessible.
    fn unpoison(&self, addr: usize, size: usize);
    /// `__asan_alloca_poison`; a refused buffer is printed.
    fn alloca_poison(&self, addr: usize, size: usize);
    /// `__asan_allocas_unpoison`.
    fn allocas_unpoison(&self, top: usize, bottom: usize);
    /// Register a global; errors are counted and printed.
    fn register_global(&self, g: &GlobalDesc);
    /// Unregister a global.
    fn unregister_global(&self, g: &GlobalDesc);
}

impl<M: ShadowMapper + Send, P: Platform + Sync> AbiRuntime for Kasan<M, P> {
    fn check(&self, addr: usize, size: usize, write: bool, ip: usize) -> bool {
        Kasan::check(self, addr, Size(size), write, Ip(ip)).is_ok()
    }
    fn poison(&self, addr: usize, size: usize, value: u8) {
        self.poison_range(addr, Size(size), value);
    }
    fn unpoison(&self, addr: usize, size: usize) {
        self.unpoison_range(addr, Size(size));
    }
    fn alloca_poison(&self, addr: usize, size: usize) {
        if let Err(e) = Kasan::alloca_poison(self, addr, Size(size)) {
            print_refusal(self.platform(), format_args!("kasan: alloca at {addr:#x} (size {size}) rejected: {e}\n"));
        }
    }
    fn allocas_unpoison(&self, top: usize, bottom: usize) {
        Kasan::allocas_unpoison(self, top, bottom);
    }
    fn register_global(&self, g: &GlobalDesc) {
        if let Err(e) = Kasan::register_global(self, g) {
            print_refusal(
                self.platform(),
                format_args!("kasan: global at {:#x} (size {}) rejected: {:?}\n", g.beg, g.size, e),
            );
        }
    }
    fn unregister_global(&self, g: &GlobalDesc) {
        Kasan::unregister_global(self, g);
    }
}

/// Print on the console why the runtime refused what instrumented code
/// asked of it (the compiler's calls have no way to return an error).
fn print_refusal<P: Platform>(p: &P, args: core::fmt::Arguments<'_>) {
    let _ = core::fmt::Write::write_fmt(&mut crate::report::ConsoleWriter::new(p), args);
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static OFFSET: AtomicUsize = AtomicUsize::new(0);
static COVER_START: AtomicUsize = AtomicUsize::new(0);
static COVER_END: AtomicUsize = AtomicUsize::new(0);
static RUNTIME: spin::Once<&'static dyn AbiRuntime> = spin::Once::new();
static CONSULT: spin::Once<crate::runtime::ConsultView<'static>> = spin::Once::new();

/// Route the compiler's calls to `rt`. Only the first call has effect.
pub fn install<M: ShadowMapper + Send, P: Platform + Sync>(rt: &'static Kasan<M, P>) {
    if rt.config().mode == crate::config::Mode::Off {
        return;
    }
    RUNTIME.call_once(|| {
        let l = rt.layout();
        OFFSET.store(l.offset, Relaxed);
        COVER_START.store(l.covered.start, Relaxed);
        COVER_END.store(l.covered.end, Relaxed);
        rt as &'static dyn AbiRuntime
    });
    CONSULT.call_once(|| rt.consult_view());
    ENABLED.store(true, Relaxed);
}

/// Stop checking (e.g. while the kernel tears down). Checks pass afterwards.
pub fn disable() {
    ENABLED.store(false, Relaxed);
}

#[inline(always)]
fn rt() -> Option<&'static dyn AbiRuntime> {
    if ENABLED.load(Relaxed) {
        RUNTIME.get().copied()
    } else {
        None
    }
}

use crate::caller::caller_ip;

/// One-load fast path for sizes up to 16: true when the shadow proves it.
#[inline(always)]
fn fast(addr: usize, size: usize) -> bool {
    let end = addr.wrapping_add(size);
    if addr < COVER_START.load(Relaxed) || end > COVER_END.load(Relaxed) || end < addr {
        return false;
    }
    let off = OFFSET.load(Relaxed);
    let first = addr >> 3;
    let last = (end - 1) >> 3;
    let mut g = first;
    while g <= last {
        // SAFETY: covered addresses have mapped shadow (install's contract).
        let v = unsafe { core::ptr::read_volatile((g.wrapping_add(off)) as *const u8) };
        if v != 0 && !(g == last && crate::shadow::last_granule_ok(v, end)) {
            // A CONSULT byte (hybrid, mixed block) is settled here from the
            // per-page shadow when the page is allocated: one more load.
            if v != crate::shadow::CONSULT_PER_PAGE || consult_valid(g << 3) != Some(true) {
                return false;
            }
        }
        g += 1;
    }
    true
}

#[inline(always)]
fn consult_valid(addr: usize) -> Option<bool> {
    CONSULT.get()?.valid(addr)
}

/// An inline check failed (the compiler found the shadow byte not zero, or
/// too small): settle what [`fast`] settles (a CONSULT byte over an
/// allocated page, hybrid's mixed blocks) before the runtime looks, as the
/// outlined path does, so hybrid's CONSULT bytes cost inline code no more
/// than outlined code.
#[inline(always)]
fn inline_failed(addr: usize, size: usize, write: bool, ip: usize) {
    if let Some(r) = rt() {
        if !(size <= 16 && fast(addr, size)) {
            r.check(addr, size, write, ip);
        }
    }
}

/// Check an access; false when a bug was found (and reported).
#[inline(always)]
fn access(addr: usize, size: usize, write: bool, ip: usize) -> bool {
    match rt() {
        Some(r) => (size <= 16 && fast(addr, size)) || r.check(addr, size, write, ip),
        None => true,
    }
}

macro_rules! sized {
    ($($load:ident $load_na:ident $store:ident $store_na:ident
       $rload:ident $rload_na:ident $rstore:ident $rstore_na:ident = $n:expr;)*) => {$(
        #[doc = concat!("Check a ", stringify!($n), "-byte load.")]
        #[no_mangle]
        pub extern "C" fn $load(addr: usize) { access(addr, $n, false, caller_ip()); }
        #[doc = concat!("Check a ", stringify!($n), "-byte load (recover).")]
        #[no_mangle]
        pub extern "C" fn $load_na(addr: usize) { access(addr, $n, false, caller_ip()); }
        #[doc = concat!("Check a ", stringify!($n), "-byte store.")]
        #[no_mangle]
        pub extern "C" fn $store(addr: usize) { access(addr, $n, true, caller_ip()); }
        #[doc = concat!("Check a ", stringify!($n), "-byte store (recover).")]
        #[no_mangle]
        pub extern "C" fn $store_na(addr: usize) { access(addr, $n, true, caller_ip()); }
        #[doc = concat!("Inline check failed on a ", stringify!($n), "-byte load.")]
        #[no_mangle]
        pub extern "C" fn $rload(addr: usize) { inline_failed(addr, $n, false, caller_ip()); }
        #[doc = concat!("Inline check failed on a ", stringify!($n), "-byte load (recover).")]
        #[no_mangle]
        pub extern "C" fn $rload_na(addr: usize) { inline_failed(addr, $n, false, caller_ip()); }
        #[doc = concat!("Inline check failed on a ", stringify!($n), "-byte store.")]
        #[no_mangle]
        pub extern "C" fn $rstore(addr: usize) { inline_failed(addr, $n, true, caller_ip()); }
        #[doc = concat!("Inline check failed on a ", stringify!($n), "-byte store (recover).")]
        #[no_mangle]
        pub extern "C" fn $rstore_na(addr: usize) { inline_failed(addr, $n, true, caller_ip()); }
    )*};
}

sized! {
    __asan_load1 __asan_load1_noabort __asan_store1 __asan_store1_noabort
    __asan_report_load1 __asan_report_load1_noabort __asan_report_store1 __asan_report_store1_noabort = 1;
    __asan_load2 __asan_load2_noabort __asan_store2 __asan_store2_noabort
    __asan_report_load2 __asan_report_load2_noabort __asan_report_store2 __asan_report_store2_noabort = 2;
    __asan_load4 __asan_load4_noabort __asan_store4 __asan_store4_noabort
    __asan_report_load4 __asan_report_load4_noabort __asan_report_store4 __asan_report_store4_noabort = 4;
    __asan_load8 __asan_load8_noabort __asan_store8 __asan_store8_noabort
    __asan_report_load8 __asan_report_load8_noabort __asan_report_store8 __asan_report_store8_noabort = 8;
    __asan_load16 __asan_load16_noabort __asan_store16 __asan_store16_noabort
    __asan_report_load16 __asan_report_load16_noabort __asan_report_store16 __asan_report_store16_noabort = 16;
}

/// Check an N-byte load.
#[no_mangle]
pub extern "C" fn __asan_loadN(addr: usize, size: usize) {
    access(addr, size, false, caller_ip());
}
/// Check an N-byte load (recover).
#[no_mangle]
pub extern "C" fn __asan_loadN_noabort(addr: usize, size: usize) {
    access(addr, size, false, caller_ip());
}
/// Check an N-byte store.
#[no_mangle]
pub extern "C" fn __asan_storeN(addr: usize, size: usize) {
    access(addr, size, true, caller_ip());
}
/// Check an N-byte store (recover).
#[no_mangle]
pub extern "C" fn __asan_storeN_noabort(addr: usize, size: usize) {
    access(addr, size, true, caller_ip());
}
/// Inline check failed on an N-byte load.
#[no_mangle]
pub extern "C" fn __asan_report_load_n(addr: usize, size: usize) {
    inline_failed(addr, size, false, caller_ip());
}
/// Inline check failed on an N-byte load (recover).
#[no_mangle]
pub extern "C" fn __asan_report_load_n_noabort(addr: usize, size: usize) {
    inline_failed(addr, size, false, caller_ip());
}
/// Inline check failed on an N-byte store.
#[no_mangle]
pub extern "C" fn __asan_report_store_n(addr: usize, size: usize) {
    inline_failed(addr, size, true, caller_ip());
}
/// Inline check failed on an N-byte store (recover).
#[no_mangle]
pub extern "C" fn __asan_report_store_n_noabort(addr: usize, size: usize) {
    inline_failed(addr, size, true, caller_ip());
}

/// Register `n` globals described at `globals`.
///
/// # Safety
///
/// `globals` points to `n` descriptors emitted by the compiler.
#[no_mangle]
pub unsafe extern "C" fn __asan_register_globals(globals: *const GlobalDesc, n: usize) {
    let Some(r) = rt() else { return };
    if globals.is_null() {
        return;
    }
    // SAFETY: the compiler's descriptors (function contract).
    let gs = unsafe { core::slice::from_raw_parts(globals, n) };
    for g in gs {
        r.register_global(g);
    }
}

/// Unregister `n` globals.
///
/// # Safety
///
/// As [`__asan_register_globals`].
#[no_mangle]
pub unsafe extern "C" fn __asan_unregister_globals(globals: *const GlobalDesc, n: usize) {
    let Some(r) = rt() else { return };
    if globals.is_null() {
        return;
    }
    // SAFETY: the compiler's descriptors (function contract).
    let gs = unsafe { core::slice::from_raw_parts(globals, n) };
    for g in gs {
        r.unregister_global(g);
    }
}

macro_rules! set_shadow {
    ($($name:ident = $v:expr;)*) => {$(
        #[doc = concat!("Set `size` shadow bytes from the one of `addr` to ", stringify!($v), " (stack frames).")]
        #[no_mangle]
        pub extern "C" fn $name(shadow: usize, size: usize) {
            set_shadow_bytes(shadow, size, $v);
        }
    )*};
}

/// `__asan_set_shadow_XX(shadow_addr, n)` takes a *shadow* address.
fn set_shadow_bytes(shadow: usize, size: usize, v: u8) {
    let Some(r) = rt() else { return };
    let addr = shadow.wrapping_sub(OFFSET.load(Relaxed)) << 3;
    r.poison(addr, size.saturating_mul(8), v);
}

set_shadow! {
    __asan_set_shadow_00 = 0x00;
    __asan_set_shadow_01 = 0x01;
    __asan_set_shadow_02 = 0x02;
    __asan_set_shadow_03 = 0x03;
    __asan_set_shadow_04 = 0x04;
    __asan_set_shadow_05 = 0x05;
    __asan_set_shadow_06 = 0x06;
    __asan_set_shadow_07 = 0x07;
    __asan_set_shadow_f1 = 0xf1;
    __asan_set_shadow_f2 = 0xf2;
    __asan_set_shadow_f3 = 0xf3;
    __asan_set_shadow_f5 = 0xf5;
    __asan_set_shadow_f8 = 0xf8;
}

/// Poison the redzones of a dynamically sized stack buffer.
#[no_mangle]
pub extern "C" fn __asan_alloca_poison(addr: usize, size: usize) {
    if let Some(r) = rt() {
        r.alloca_poison(addr, size);
    }
}

/// Unpoison the dynamically sized stack buffers between `top` and `bottom`.
#[no_mangle]
pub extern "C" fn __asan_allocas_unpoison(top: usize, bottom: usize) {
    if let Some(r) = rt() {
        r.allocas_unpoison(top, bottom);
    }
}

/// A noreturn call follows. Frames below are abandoned; their stale
/// redzones stay until the stack is reused or freed (the task's stack
/// shadow is reset by `stack_free`).
#[no_mangle]
pub extern "C" fn __asan_handle_no_return() {}

/// Dynamic initialisation of globals starts (kernels have none).
#[no_mangle]
pub extern "C" fn __asan_before_dynamic_init(_module: *const u8) {}

/// Dynamic initialisation of globals ends.
#[no_mangle]
pub extern "C" fn __asan_after_dynamic_init() {}

/// Checked `memset` (with `-asan-kernel-mem-intrinsic-prefix`). As in
/// Linux, a range that fails the check is reported and not written.
///
/// # Safety
///
/// As `memset`.
#[no_mangle]
pub unsafe extern "C" fn __asan_memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    if !access(dst as usize, n, true, caller_ip()) {
        return dst;
    }
    // SAFETY: the caller's memset contract.
    unsafe { core::ptr::write_bytes(dst, c as u8, n) };
    dst
}

/// Checked `memcpy`; a failing range is reported and not copied.
///
/// # Safety
///
/// As `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn __asan_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let ip = caller_ip();
    if !access(src as usize, n, false, ip) || !access(dst as usize, n, true, ip) {
        return dst;
    }
    // SAFETY: the caller's memcpy contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
    dst
}

/// Checked `memmove`; a failing range is reported and not moved.
///
/// # Safety
///
/// As `memmove`.
#[no_mangle]
pub unsafe extern "C" fn __asan_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let ip = caller_ip();
    if !access(src as usize, n, false, ip) || !access(dst as usize, n, true, ip) {
        return dst;
    }
    // SAFETY: the caller's memmove contract.
    unsafe { core::ptr::copy(src, dst, n) };
    dst
}
