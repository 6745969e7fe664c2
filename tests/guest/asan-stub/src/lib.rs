//! No-op KASAN compiler ABI for the test guest.
//!
//! The guest crate is compiled with `-Zsanitizer=kernel-address`, so it calls
//! the functions below. This crate is compiled WITHOUT instrumentation. It is
//! a placeholder: with the guest feature `runtime` these symbols come from
//! `hybrid-shadow` (feature `abi`) instead and this crate is not linked.
#![no_std]

macro_rules! sized {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name(_addr: usize) {}
        )*
    };
}

macro_rules! sized_n {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name(_addr: usize, _size: usize) {}
        )*
    };
}

sized!(
    __asan_load1, __asan_load2, __asan_load4, __asan_load8, __asan_load16,
    __asan_store1, __asan_store2, __asan_store4, __asan_store8, __asan_store16,
    __asan_load1_noabort, __asan_load2_noabort, __asan_load4_noabort,
    __asan_load8_noabort, __asan_load16_noabort,
    __asan_store1_noabort, __asan_store2_noabort, __asan_store4_noabort,
    __asan_store8_noabort, __asan_store16_noabort,
    __asan_report_load1, __asan_report_load2, __asan_report_load4,
    __asan_report_load8, __asan_report_load16,
    __asan_report_store1, __asan_report_store2, __asan_report_store4,
    __asan_report_store8, __asan_report_store16,
    __asan_report_load1_noabort, __asan_report_load2_noabort,
    __asan_report_load4_noabort, __asan_report_load8_noabort,
    __asan_report_load16_noabort,
    __asan_report_store1_noabort, __asan_report_store2_noabort,
    __asan_report_store4_noabort, __asan_report_store8_noabort,
    __asan_report_store16_noabort,
);

sized_n!(
    __asan_loadN, __asan_storeN, __asan_loadN_noabort, __asan_storeN_noabort,
    __asan_report_load_n, __asan_report_store_n,
    __asan_report_load_n_noabort, __asan_report_store_n_noabort,
    __asan_register_globals, __asan_unregister_globals,
    __asan_set_shadow_00, __asan_set_shadow_01, __asan_set_shadow_02,
    __asan_set_shadow_03, __asan_set_shadow_04, __asan_set_shadow_05,
    __asan_set_shadow_06, __asan_set_shadow_07, __asan_set_shadow_f1, __asan_set_shadow_f2,
    __asan_set_shadow_f3, __asan_set_shadow_f5, __asan_set_shadow_f8,
    __asan_alloca_poison, __asan_allocas_unpoison,
);

#[no_mangle]
pub extern "C" fn __asan_handle_no_return() {}

#[no_mangle]
pub extern "C" fn __asan_before_dynamic_init(_module_name: *const u8) {}

#[no_mangle]
pub extern "C" fn __asan_after_dynamic_init() {}

extern "C" {
    fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8;
    fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
}

// With `-asan-kernel-mem-intrinsic-prefix=1` the instrumented crate calls
// these instead of memset/memcpy/memmove (the runtime checks both ranges).
#[no_mangle]
pub unsafe extern "C" fn __asan_memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    memset(dst, c, n)
}

#[no_mangle]
pub unsafe extern "C" fn __asan_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    memcpy(dst, src, n)
}

#[no_mangle]
pub unsafe extern "C" fn __asan_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    memmove(dst, src, n)
}

/// Referenced by the guest so this crate is always linked.
pub fn linked() {}
