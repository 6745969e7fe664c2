//! The compiler ABI on the host: the `__asan_*` entry points the
//! instrumented kernel calls, routed to a hybrid runtime on the host model
//! kernel. One process, one installed runtime (the ABI is global).

mod common;

use common::syzkaller;
use hybrid_shadow::abi::*;
use hybrid_shadow::hooks::GlobalDesc;
use hybrid_shadow::host::sim::{SimConfig, SimKernel};
use hybrid_shadow::Mode;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

fn kernel() -> &'static mut SimKernel {
    static K: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let p = *K.get_or_init(|| {
        let k: *mut SimKernel = Box::leak(Box::new(SimKernel::new(SimConfig::small(Mode::Hybrid)).unwrap()));
        // SAFETY: just leaked, valid forever; the shared borrow for install
        // ends before anyone takes the mutable one (under LOCK).
        let shared: &'static SimKernel = unsafe { &*k };
        shared.plat.enter("abi_test");
        install(&shared.kasan);
        k as usize
    });
    // SAFETY: the kernel is leaked (lives forever) and every test holds LOCK
    // while using it, so there is one user at a time.
    unsafe { &mut *(p as *mut SimKernel) }
}

fn reports(k: &SimKernel) -> Vec<String> {
    syzkaller::titles(&k.take_log()).into_iter().map(|t| t.bug).collect()
}

#[test]
fn loads_and_stores_report_through_the_runtime() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let k = kernel();
    let p = k.kmalloc(13).unwrap();
    __asan_load8_noabort(p);
    __asan_load4(p + 8);
    __asan_store1_noabort(p + 12);
    __asan_loadN_noabort(p, 13);
    assert!(reports(k).is_empty(), "valid accesses pass");
    __asan_load1_noabort(p + 13);
    __asan_store16_noabort(p);
    __asan_storeN(p + 4, 10);
    __asan_report_load8_noabort(p + 16);
    assert_eq!(reports(k), ["slab-out-of-bounds"; 4]);
    // an inline check that failed on a CONSULT byte is a false alarm the
    // runtime must clear (valid page in a mixed block)
    let pages: Vec<usize> = (0..16).map(|_| k.alloc_pages(0).unwrap()).collect();
    k.free_pages(pages[1], 0).unwrap();
    __asan_report_load8_noabort(pages[0]);
    __asan_load8_noabort(pages[2]);
    assert!(reports(k).is_empty());
    __asan_load8_noabort(pages[1]);
    assert_eq!(reports(k), ["use-after-free"]);
}

#[test]
fn mem_intrinsics_check_and_skip_bad_ranges() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let k = kernel();
    let p = k.kmalloc(32).unwrap();
    let q = k.kmalloc(64).unwrap();
    // SAFETY: p has 32 valid bytes, q 64 (model-kernel RAM is mapped).
    unsafe {
        __asan_memset(p as *mut u8, 0xAB, 32);
        __asan_memcpy(q as *mut u8, p as *const u8, 32);
    }
    // SAFETY: as above.
    let copied = unsafe { core::slice::from_raw_parts(q as *const u8, 32) };
    assert!(copied.iter().all(|&b| b == 0xAB));
    assert!(reports(k).is_empty());
    // SAFETY: the checked range fails, so nothing is written.
    unsafe { __asan_memset(p as *mut u8, 0xCD, 33) };
    assert_eq!(reports(k), ["slab-out-of-bounds"]);
    // SAFETY: as above; nothing is copied.
    unsafe { __asan_memmove(p as *mut u8, (p + 4) as *const u8, usize::MAX - 1) };
    assert_eq!(reports(k), ["out-of-bounds"]);
    // SAFETY: reading the first bytes of a live object.
    assert_eq!(unsafe { *(p as *const u8) }, 0xAB, "failed memset wrote nothing");
}

#[test]
fn globals_register_through_compiler_descriptors() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let k = kernel();
    let img = k.kasan.layout().image;
    let beg = img.end - 4096;
    let descs = [
        GlobalDesc { beg, size: 10, size_with_redzone: 64, name: c"g".as_ptr().cast(), module_name: c"m".as_ptr().cast(), has_dynamic_init: 0, location: core::ptr::null(), odr_indicator: 0 },
        GlobalDesc { beg: beg + 3, size: 1, size_with_redzone: 64, name: core::ptr::null(), module_name: core::ptr::null(), has_dynamic_init: 0, location: core::ptr::null(), odr_indicator: 0 },
    ];
    // SAFETY: two well-formed descriptors (the second one bogus by value only).
    unsafe { __asan_register_globals(descs.as_ptr(), descs.len()) };
    let log = k.take_log();
    assert!(log.contains("rejected: Unaligned"), "{log}");
    __asan_load1(beg + 9);
    assert!(reports(k).is_empty());
    __asan_load1(beg + 13);
    assert_eq!(reports(k), ["global-out-of-bounds"]);
    // SAFETY: as above.
    unsafe { __asan_unregister_globals(descs.as_ptr(), 1) };
    __asan_load1(beg + 13);
    assert!(reports(k).is_empty());
}

#[test]
fn stack_shadow_setters_and_allocas() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let k = kernel();
    let stack = k.stack_alloc().unwrap();
    let off = k.kasan.layout().offset;
    let frame = stack + 8192;
    let sh = |a: usize| (a >> 3) + off;
    // left redzone 32 bytes, 12-byte variable, right redzone
    __asan_set_shadow_f1(sh(frame), 4);
    __asan_set_shadow_00(sh(frame + 32), 1);
    __asan_set_shadow_04(sh(frame + 40), 1);
    __asan_set_shadow_f3(sh(frame + 48), 4);
    __asan_load8(frame + 32);
    __asan_load4(frame + 40);
    let log = k.take_log();
    assert!(log.is_empty(), "{log}");
    __asan_load1(frame + 44);
    __asan_load1(frame + 31);
    assert_eq!(reports(k), ["stack-out-of-bounds"; 2]);
    __asan_set_shadow_00(sh(frame), 12);
    let buf = stack + 4096;
    __asan_alloca_poison(buf, 20);
    __asan_load4(buf + 16);
    assert!(reports(k).is_empty());
    __asan_load1(buf + 20);
    __asan_load1(buf - 1);
    assert_eq!(reports(k), ["alloca-out-of-bounds"; 2]);
    __asan_allocas_unpoison(buf - 32, buf + 96);
    __asan_load1(buf + 20);
    assert!(reports(k).is_empty());
    k.stack_free(stack).unwrap();
    __asan_load8(frame);
    assert_eq!(reports(k), ["use-after-free"]);
}
