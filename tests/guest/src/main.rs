//! hybrid-shadow test guest. This crate IS instrumented with
//! `-Zsanitizer=kernel-address`; early boot (guest-boot) and the ABI provider
//! (asan-stub, later hybrid-shadow) are not.
#![no_std]
#![no_main]
#![allow(static_mut_refs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

pub use guest_boot::{print, println};
use guest_boot::{code, exit, BootInfo};

pub mod kasan_glue;
#[cfg(not(feature = "kmsan"))]
pub mod kasan_cases;
#[cfg(not(feature = "kmsan"))]
pub mod kasan_suite;
#[cfg(feature = "kmsan")]
pub mod kmsan_cases;
#[cfg(feature = "kmsan")]
pub mod kmsan_suite;
pub mod mm;
pub mod selftest;
#[cfg(not(feature = "kmsan"))]
pub mod smp_race;
pub mod smp_stress;
pub mod task;
pub mod workload;

#[no_mangle]
pub fn guest_main(info: &'static BootInfo) -> ! {
    kasan_glue::early_init(info);
    mm::buddy::init(info);
    kasan_glue::page_allocator_ready();
    mm::slab::init();
    task::init();
    // SAFETY: once, right after the runtime is up (kasan_glue's init and
    // late page-allocator hook above): the constructors register the globals.
    let n = unsafe { guest_boot::run_init_array() };
    println!("guest: ran {} .init_array constructors", n);
    kasan_glue::late_init(info);
    start_cpus(info);
    task::start_smp();
    let suite = info.config.suite();
    println!("guest: suite {}", suite);
    let ok = run_suite(suite);
    let smp = guest_boot::smp::stats();
    if smp.cpus > 1 {
        println!(
            "smp: shootdowns={} page={} full={} shadow={} served={} cpus={}",
            smp.page + smp.full,
            smp.page,
            smp.full,
            kasan_glue::shadow_shootdowns(),
            smp.served,
            smp.cpus
        );
        if task::spread() {
            print!("smp: task switches per cpu:");
            for c in 0..smp.cpus {
                print!(" {}", task::switches(c));
            }
            println!();
        }
    }
    println!("guest: suite {} {}", suite, if ok { "PASSED" } else { "FAILED" });
    exit(if ok { code::SUCCESS } else { code::FAILURE })
}

/// Start the other processors (the page at 0x8000 holds their real-mode
/// trampoline: it must be RAM, below the first MiB the page allocator never
/// uses).
fn start_cpus(info: &BootInfo) {
    const TRAMP: u64 = 0x8000;
    let ram = info.regions().iter().any(|r| r.kind == guest_boot::E820_RAM && r.addr <= TRAMP && r.addr + r.size >= TRAMP + 0x1000);
    if !ram {
        return;
    }
    guest_boot::smp::set_prepare_hook(kasan_glue::cpu_prepare);
    let mut tables = || mm::buddy::alloc_page_zeroed().map(|p| guest_boot::paging::virt_to_phys(p as u64).expect("direct map"));
    // Each AP's stack from the page allocator, a kernel stack to the sanitizer.
    let mut stacks = || {
        let order = (guest_boot::smp::AP_STACK / mm::PAGE_SIZE).trailing_zeros();
        let s = mm::buddy::alloc_pages_flags(order as usize, mm::buddy::PG_STACK)?;
        kasan_glue::stack_alloc(s, order);
        Some(s as u64)
    };
    // SAFETY: once, on the boot CPU, interrupts off, after paging is up;
    // the trampoline page is RAM (checked above) below the first MiB, which
    // neither the page allocator nor anything else uses after boot; the
    // stacks are fresh direct-map blocks, never freed.
    unsafe { guest_boot::smp::start_aps(&mut tables, &mut stacks) };
}

fn run_suite(name: &str) -> bool {
    match name {
        "smoke" | "boot" => true,
        "mm" => selftest::mm(),
        "vmalloc" => selftest::vmalloc(),
        "tasks" => selftest::tasks(),
        "selftest" => selftest::mm() & selftest::vmalloc() & selftest::tasks(),
        #[cfg(not(feature = "kmsan"))]
        "kasan" => kasan_suite::run(),
        #[cfg(feature = "kmsan")]
        "kmsan" => kmsan_suite::run(),
        "workload" => workload::run(),
        "smp" => smp_stress::run(),
        #[cfg(not(feature = "kmsan"))]
        "race" => smp_race::run(),
        "panic" => panic!("requested panic (suite=panic)"),
        "pagefault" => {
            let p = 0xffff_a000_0000_1000u64 as *const u64;
            // SAFETY: deliberately not: an unmapped address, to take the
            // page fault this suite checks (the handler exits the guest).
            let v = unsafe { core::ptr::read_volatile(p) };
            println!("read {v}");
            false
        }
        "gpfault" => {
            let p = 0x8000_0000_0000_0000u64 as *const u64;
            // SAFETY: deliberately not: a non-canonical address, to take the
            // #GP this suite checks (the handler exits the guest).
            let v = unsafe { core::ptr::read_volatile(p) };
            println!("read {v}");
            false
        }
        _ => {
            println!("guest: unknown suite '{}'", name);
            false
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!();
    println!("guest: PANIC: {}", info);
    println!("Call Trace:");
    guest_boot::stack::print_trace();
    exit(code::PANIC)
}
