//! Several CPUs: finding them (ACPI MADT), starting the application
//! processors (APs), and TLB shootdowns by IPI.
//!
//! ```text
//!  boot CPU                                  AP (wait-for-SIPI after reset)
//!  discover(): MADT local APIC entries
//!  start_aps(): copy trampoline to 0x8000
//!    per AP: stack, cpu number ──INIT, SIPI(0x08), SIPI──►  real mode at 0x8000
//!                                                          -> protected -> long mode
//!                                                          (CR3 = the boot tables:
//!                                                           identity + kernel image)
//!                                                          ap_main(cpu): kernel CR3,
//!                                                          GDT/TSS, IDT, GS base,
//!    waits for ONLINE bit  ◄────────────────────────────── LAPIC on, ONLINE |= bit, sti
//!                                                          idle: hlt (IPIs wake it)
//!
//!  shootdown(va):  lock, REQ = va, GEN += 1, IPI all-but-self (vector 0xf0),
//!                  wait until every online CPU's ACKED == GEN, unlock
//!  IPI handler:    if ACKED[me] < GEN { invlpg REQ (or flush all); ACKED[me] = GEN }; EOI
//! ```
//!
//! A CPU that waits for the shootdown lock (or, later, for anything with
//! interrupts off) serves pending requests itself ([`service`]), so two
//! CPUs shooting at each other never deadlock.
//!
//! The AP's first Rust instruction runs on the kernel's tables with GS at
//! its per-CPU block (the trampoline and `guest_boot_ap_entry` set both):
//! in the KMSAN kernel every instrumented function asks the runtime for
//! its context, which asks `cpu_id()` and reads the context through the
//! direct map. The boot CPU gives each AP its KMSAN contexts before
//! starting it ([`set_prepare_hook`]), and interrupt entries switch to
//! the CPU's interrupt context first (`kmsan_interrupt_enter`).
use core::arch::{asm, global_asm};
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

use crate::cpu::{self, MAX_CPUS};
use crate::paging;
use crate::println;

/// Physical address of the local APIC's registers, and where they are mapped
/// (the same page as the profiler's, [`crate::profile`]).
const LAPIC_PHYS: u64 = 0xfee0_0000;
const LAPIC_VA: u64 = 0xffff_fe00_0000_0000;
/// The trampoline's page (SIPI vector 0x08: real mode at 0800:0000).
const TRAMP_PHYS: u64 = 0x8000;
/// IPI vector of a TLB shootdown, and the spurious-interrupt vector.
const SHOOTDOWN_VECTOR: usize = 0xf0;
const SPURIOUS_VECTOR: usize = 0xff;
/// Per-AP stack (as the boot stack: the runtime's report path is deep).
/// Bytes of each AP's stack (as the boot CPU's).
pub const AP_STACK: usize = 256 * 1024;

/// Local APIC IDs of the enabled processors in the MADT (boot CPU included).
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static NAPIC: AtomicUsize = AtomicUsize::new(0);
/// Enabled processors the MADT listed, including those beyond MAX_CPUS.
static LISTED: AtomicUsize = AtomicUsize::new(0);
/// Bit i: CPU i runs and takes shootdowns.
static ONLINE: AtomicU32 = AtomicU32::new(1);

/// TLB shootdown state.
static SHOOT_LOCK: AtomicBool = AtomicBool::new(false);
static SHOOT_GEN: AtomicU64 = AtomicU64::new(0);
/// The first page of the request in flight, or [`FLUSH_ALL`], and its
/// number of pages.
static SHOOT_VA: AtomicU64 = AtomicU64::new(0);
static SHOOT_PAGES: AtomicU64 = AtomicU64::new(0);
/// Ranges longer than this are flushed whole.
const RANGE_MAX: u64 = 32;
const FLUSH_ALL: u64 = u64::MAX;
#[repr(align(64))]
struct Acked(AtomicU64);
static ACKED: [Acked; MAX_CPUS] = [const { Acked(AtomicU64::new(0)) }; MAX_CPUS];

/// Counters: shootdowns (IPI rounds) of one page and of everything, IPIs
/// served (handler or polling), per CPU.
static SHOOT_PAGE: AtomicU64 = AtomicU64::new(0);
static SHOOT_FULL: AtomicU64 = AtomicU64::new(0);
static SERVED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// TSC cycles the shooting CPUs spent in [`shootdown`] (taking its lock,
/// sending, waiting for every acknowledgement), and the cycles CPUs spent
/// serving requests (flushing and acknowledging). Under `-icount` the TSC
/// counts guest instructions (of every CPU: they run round-robin).
static SHOOT_TSC: AtomicU64 = AtomicU64::new(0);
static SERVE_TSC: AtomicU64 = AtomicU64::new(0);
/// Rounds of the shooting CPUs' wait for acknowledgements (a load and a
/// `pause` each): under `-icount` their instructions, where `SHOOT_TSC`
/// also counts what the other CPUs ran meanwhile.
static SHOOT_SPINS: AtomicU64 = AtomicU64::new(0);

/// Low end of each AP's stack ([`AP_STACK`] bytes from the caller of
/// [`start_aps`]; index: CPU number, 0 for the boot CPU, which has its own).
/// Not in the image: a kernel allocates its CPUs' stacks when it starts
/// them, so their sanitizer metadata is not part of the image's.
static AP_STACK_LO: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

// The real-mode trampoline, assembled here and copied to TRAMP_PHYS. Its
// data fields (CR3 of the boot tables, CR0/CR4 of the boot CPU, stack,
// entry, CPU number) are written by `start_aps` before each SIPI.
global_asm!(
    r#"
    .set TRAMP, 0x8000
    .section .rodata.ap_trampoline, "a", @progbits
    .balign 16
    .global guest_boot_tramp_start
    .code16
guest_boot_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdt_desc - guest_boot_tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(TRAMP + tramp_pm32 - guest_boot_tramp_start)

    .code32
tramp_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov (TRAMP + guest_boot_tramp_cr4 - guest_boot_tramp_start), %eax
    mov %eax, %cr4
    mov (TRAMP + guest_boot_tramp_cr3 - guest_boot_tramp_start), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x900, %eax          /* LME | NXE */
    wrmsr
    mov (TRAMP + guest_boot_tramp_cr0 - guest_boot_tramp_start), %eax
    mov %eax, %cr0
    ljmpl $0x18, $(TRAMP + tramp_lm64 - guest_boot_tramp_start)

    .code64
tramp_lm64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    /* GS base: this AP's per-CPU block, before any Rust code runs */
    mov guest_boot_tramp_gs(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    mov $0xC0000101, %ecx
    wrmsr
    mov guest_boot_tramp_stack(%rip), %rsp
    mov guest_boot_tramp_cpu(%rip), %rdi
    mov guest_boot_tramp_entry(%rip), %rax
    xor %ebp, %ebp
    jmp *%rax

    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff     /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff     /* 0x10: data */
    .quad 0x00af9a000000ffff     /* 0x18: 64-bit code */
tramp_gdt_desc:
    .word tramp_gdt_desc - tramp_gdt - 1
    .long TRAMP + tramp_gdt - guest_boot_tramp_start
    .balign 8
    .global guest_boot_tramp_cr3
guest_boot_tramp_cr3: .quad 0
    .global guest_boot_tramp_cr0
guest_boot_tramp_cr0: .quad 0
    .global guest_boot_tramp_cr4
guest_boot_tramp_cr4: .quad 0
    .global guest_boot_tramp_stack
guest_boot_tramp_stack: .quad 0
    .global guest_boot_tramp_entry
guest_boot_tramp_entry: .quad 0
    .global guest_boot_tramp_cpu
guest_boot_tramp_cpu: .quad 0
    .global guest_boot_tramp_gs
guest_boot_tramp_gs: .quad 0
    .global guest_boot_tramp_end
guest_boot_tramp_end:

    .text
    .balign 16
    .global guest_boot_shootdown_isr
guest_boot_shootdown_isr:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cld
    "#,
    irq_enter!(),
    r#"
    call guest_boot_shootdown_ipi
    "#,
    irq_exit!(),
    r#"
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
    .balign 16
    .global guest_boot_spurious_isr
guest_boot_spurious_isr:
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    static guest_boot_tramp_start: u8;
    static guest_boot_tramp_end: u8;
    static guest_boot_tramp_cr3: u8;
    static guest_boot_tramp_cr0: u8;
    static guest_boot_tramp_cr4: u8;
    static guest_boot_tramp_stack: u8;
    static guest_boot_tramp_entry: u8;
    static guest_boot_tramp_cpu: u8;
    static guest_boot_tramp_gs: u8;
    static boot_tables: u8;
    fn guest_boot_shootdown_isr();
    fn guest_boot_spurious_isr();
    fn guest_boot_ap_entry();
}

/// Read physical memory through the boot identity map (before
/// `paging::init`: 0..1 GiB).
///
/// # Safety
///
/// The boot page tables are live and `pa + size_of::<T>() <= 1 GiB`.
unsafe fn rd<T: Copy>(pa: u64) -> T {
    // SAFETY: identity-mapped (caller); unaligned read of plain data.
    unsafe { core::ptr::read_unaligned(pa as *const T) }
}

const LOW_LIMIT: u64 = 0x4000_0000;

fn checksum_ok(pa: u64, len: u64) -> bool {
    // SAFETY: callers check `pa + len` is below LOW_LIMIT.
    (0..len).fold(0u8, |s, i| s.wrapping_add(unsafe { rd::<u8>(pa + i) })) == 0
}

/// The RSDP: the PVH start info's, else a scan of the BIOS area.
fn find_rsdp(hint: u64) -> Option<u64> {
    let sig = |pa: u64| {
        // SAFETY: every candidate is below 1 MiB or checked by the caller.
        unsafe { rd::<[u8; 8]>(pa) == *b"RSD PTR " }
    };
    if hint != 0 && hint + 36 < LOW_LIMIT && sig(hint) {
        return Some(hint);
    }
    (0xe_0000..0x10_0000u64).step_by(16).find(|&pa| sig(pa) && checksum_ok(pa, 20))
}

/// Find the processors: the enabled local-APIC entries of the ACPI MADT.
/// `rsdp_hint` is the PVH start info's `rsdp_paddr` (0: none).
///
/// # Safety
///
/// At boot, on the boot CPU, while the boot page tables (identity map of
/// 0..1 GiB) are live: before `paging::init`.
pub unsafe fn discover(rsdp_hint: u64) {
    let Some(rsdp) = find_rsdp(rsdp_hint) else {
        println!("smp: no ACPI RSDP: one cpu");
        return;
    };
    // Every table address is checked against LOW_LIMIT (the end of the
    // identity map) before it is read.
    // SAFETY: the RSDP is below LOW_LIMIT (find_rsdp), 36 bytes of it read.
    let (root, entry) = unsafe {
        let rev: u8 = rd(rsdp + 15);
        let xsdt: u64 = if rev >= 2 { rd(rsdp + 24) } else { 0 };
        if xsdt != 0 && xsdt < LOW_LIMIT {
            (xsdt, 8u64)
        } else {
            (u64::from(rd::<u32>(rsdp + 16)), 4u64)
        }
    };
    if root == 0 || root + 36 >= LOW_LIMIT {
        println!("smp: ACPI root table at {root:#x} out of reach: one cpu");
        return;
    }
    // SAFETY: below LOW_LIMIT (checked above).
    let len = u64::from(unsafe { rd::<u32>(root + 4) });
    let mut madt = None;
    let mut p = root + 36;
    while p + entry <= root + len && p + entry < LOW_LIMIT {
        // SAFETY: below LOW_LIMIT (loop condition).
        let t = unsafe { if entry == 8 { rd::<u64>(p) } else { u64::from(rd::<u32>(p)) } };
        // SAFETY: below LOW_LIMIT (checked first).
        if t != 0 && t + 44 < LOW_LIMIT && unsafe { rd::<[u8; 4]>(t) } == *b"APIC" {
            madt = Some(t);
            break;
        }
        p += entry;
    }
    let Some(madt) = madt else {
        println!("smp: no ACPI MADT: one cpu");
        return;
    };
    // SAFETY: below LOW_LIMIT (checked when found).
    let mlen = u64::from(unsafe { rd::<u32>(madt + 4) });
    let (mut n, mut listed) = (0, 0);
    let mut e = madt + 44;
    while e + 2 <= madt + mlen && e + 8 < LOW_LIMIT {
        // SAFETY: below LOW_LIMIT (loop condition).
        let (ty, el) = unsafe { (rd::<u8>(e), rd::<u8>(e + 1)) };
        if el < 2 {
            break;
        }
        // Type 0: processor local APIC (ACPI id, APIC id, flags: bit 0 enabled).
        // SAFETY: below LOW_LIMIT (loop condition).
        if ty == 0 && el >= 8 && unsafe { rd::<u32>(e + 4) } & 1 != 0 {
            listed += 1;
            if n < MAX_CPUS {
                // SAFETY: below LOW_LIMIT (loop condition).
                APIC_IDS[n].store(u32::from(unsafe { rd::<u8>(e + 3) }), Relaxed);
                n += 1;
            }
        }
        e += u64::from(el);
    }
    NAPIC.store(n, Relaxed);
    LISTED.store(listed, Relaxed);
}

/// Write local APIC register `reg`.
fn lapic_write(reg: u64, v: u32) {
    // SAFETY: the APIC page is mapped at LAPIC_VA by `start_aps` before any
    // caller runs (callers run only when `ONLINE` has other CPUs, or from
    // `start_aps` after the mapping); an aligned 32-bit register.
    unsafe { ((LAPIC_VA + reg) as *mut u32).write_volatile(v) };
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: as `lapic_write`.
    unsafe { ((LAPIC_VA + reg) as *const u32).read_volatile() }
}

/// Send an IPI: `dest` APIC ID (ignored with a shorthand), `low` the ICR's
/// low word; waits until the APIC accepted it.
fn send_ipi(dest: u32, low: u32) {
    lapic_write(0x310, dest << 24);
    lapic_write(0x300, low);
    while lapic_read(0x300) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

/// Spin for about `us` microseconds (at most 3 GHz of TSC; QEMU needs no
/// real delays, a board would).
fn spin_us(us: u64) {
    let t = crate::time::rdtsc();
    while crate::time::rdtsc().wrapping_sub(t) < us * 3000 {
        core::hint::spin_loop();
    }
}

/// Software-enable this CPU's local APIC (spurious vector, accept everything).
fn lapic_enable() {
    lapic_write(0x80, 0);
    lapic_write(0xf0, 0x100 | SPURIOUS_VECTOR as u32);
}

/// CPUs online (bits of [`ONLINE`]).
pub fn cpus_online() -> usize {
    ONLINE.load(Relaxed).count_ones() as usize
}

/// Start every processor [`discover`] found (up to [`cpu::MAX_CPUS`]);
/// returns the number of CPUs online. `alloc` gives page-table pages
/// (physical) for mapping the local APIC; `stack` the low end (virtual,
/// 16-byte aligned) of a fresh stack of [`AP_STACK`] bytes for each AP,
/// or `None` (no more APs are started). Prints `smp: <n> cpus up` when
/// there is more than one.
///
/// # Safety
///
/// Once, on the boot CPU, after `paging::init` and with interrupts off; the
/// page at 0x8000 (physical) is RAM nothing else uses from now on; the
/// stacks `stack` gives are mapped, writable and the AP's for good.
pub unsafe fn start_aps(alloc: &mut dyn FnMut() -> Option<u64>, stack: &mut dyn FnMut() -> Option<u64>) -> usize {
    let n = NAPIC.load(Relaxed);
    if n <= 1 {
        return 1;
    }
    // SAFETY: uncached mapping of the APIC page at an address nothing else
    // uses (the profiler maps the same page at the same address).
    if unsafe { paging::map_4k(LAPIC_VA, LAPIC_PHYS, paging::PTE_W | paging::PTE_NX | 0x18, alloc) }.is_err() {
        println!("smp: cannot map the local APIC: one cpu");
        return 1;
    }
    crate::cpu::set_gate(SHOOTDOWN_VECTOR, guest_boot_shootdown_isr as *const () as u64);
    crate::cpu::set_gate(SPURIOUS_VECTOR, guest_boot_spurious_isr as *const () as u64);
    lapic_enable();
    let bsp = lapic_read(0x20) >> 24;
    cpu::this_cpu().set_apic_id(bsp);
    // The trampoline, and its fields' addresses at TRAMP_PHYS.
    let start = core::ptr::addr_of!(guest_boot_tramp_start) as u64;
    let len = core::ptr::addr_of!(guest_boot_tramp_end) as u64 - start;
    let dst = paging::phys_to_virt(TRAMP_PHYS);
    let field = |sym: *const u8| (dst + (sym as u64 - start)) as *mut u64;
    let (cr0, cr4): (u64, u64);
    // SAFETY: reading control registers has no side effect.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    // The AP enters long mode on the boot tables (entry.rs: identity map
    // of 0..1 GiB, kernel image): they map the trampoline and the kernel.
    let boot_cr3 = core::ptr::addr_of!(boot_tables) as u64;
    // SAFETY: TRAMP_PHYS is RAM in the direct map that nothing else uses
    // (caller); `len` bytes of the trampoline fit in its page.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, dst as *mut u8, len as usize);
        field(core::ptr::addr_of!(guest_boot_tramp_cr3)).write_volatile(boot_cr3);
        field(core::ptr::addr_of!(guest_boot_tramp_cr0)).write_volatile(cr0 & 0xffff_ffff & !0x6000_0000);
        field(core::ptr::addr_of!(guest_boot_tramp_cr4)).write_volatile(cr4 & 0xffff_ffff);
        field(core::ptr::addr_of!(guest_boot_tramp_entry)).write_volatile(guest_boot_ap_entry as *const () as u64);
    }
    guest_boot_ap_cr3.store(paging::pml4_phys(), SeqCst);
    // Every AP's stack before the first AP runs: what allocating one costs
    // (the sanitizer may remap shadow and shoot other CPUs' TLBs down)
    // happens while the boot CPU is alone.
    for lo in &AP_STACK_LO[1..n.min(MAX_CPUS)] {
        match stack() {
            Some(s) => lo.store(s, Relaxed),
            None => break,
        }
    }
    let t0 = crate::time::rdtsc();
    let mut next = 1;
    for id in &APIC_IDS[..n] {
        let apic = id.load(Relaxed);
        if apic == bsp {
            continue;
        }
        let cpu = next;
        let lo = AP_STACK_LO[cpu].load(Relaxed);
        if lo == 0 {
            println!("smp: no memory for cpu {cpu}'s stack: no more cpus");
            break;
        }
        let top = lo + AP_STACK as u64;
        cpu::percpu(cpu).set_apic_id(apic);
        let gs = cpu::prepare_percpu(cpu);
        let hook = PREPARE_HOOK.load(Acquire);
        if hook != 0 {
            // SAFETY: `set_prepare_hook` stored a `fn(usize)` here.
            let f = unsafe { core::mem::transmute::<usize, fn(usize)>(hook) };
            f(cpu);
        }
        // SAFETY: the trampoline's fields at TRAMP_PHYS (copied above); no
        // AP reads them until the SIPI below.
        unsafe {
            field(core::ptr::addr_of!(guest_boot_tramp_stack)).write_volatile(top);
            field(core::ptr::addr_of!(guest_boot_tramp_cpu)).write_volatile(cpu as u64);
            field(core::ptr::addr_of!(guest_boot_tramp_gs)).write_volatile(gs);
        }
        fence(SeqCst);
        send_ipi(apic, 0x4500); // INIT, assert
        spin_us(100);
        for _ in 0..2 {
            send_ipi(apic, 0x4600 | (TRAMP_PHYS >> 12) as u32); // STARTUP
            spin_us(200);
            if ONLINE.load(Acquire) & (1 << cpu) != 0 {
                break;
            }
        }
        let t = crate::time::rdtsc();
        while ONLINE.load(Acquire) & (1 << cpu) == 0 {
            if crate::time::rdtsc().wrapping_sub(t) > 10_000_000_000 {
                break;
            }
            // A starting AP may shoot the online CPUs' TLBs down (its first
            // stores can make sanitizer metadata private) and wait for this
            // CPU, whose interrupts are off here: serve it.
            service(0);
            core::hint::spin_loop();
        }
        if ONLINE.load(Acquire) & (1 << cpu) == 0 {
            println!("smp: cpu {cpu} (apic {apic}) did not come up");
            continue;
        }
        next += 1;
    }
    let up = cpus_online();
    println!(
        "smp: {} cpus up (madt lists {}, bring-up {} kcycles)",
        up,
        LISTED.load(Relaxed),
        crate::time::rdtsc().wrapping_sub(t0) / 1000
    );
    up
}

/// An AP, from `guest_boot_ap_entry`: on the kernel's tables, its own
/// stack, GS at its per-CPU block, interrupts off.
#[no_mangle]
extern "C" fn guest_boot_ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    // SAFETY: once, by this CPU (its number from `start_aps`), interrupts off.
    unsafe { cpu::init_ap(cpu) };
    lapic_enable();
    // Join the shootdown protocol: nothing older than the current request
    // is owed; the CR3 reload after joining drops anything cached before.
    ACKED[cpu].0.store(SHOOT_GEN.load(SeqCst), SeqCst);
    ONLINE.fetch_or(1 << cpu, SeqCst);
    paging::flush_all();
    service(cpu);
    let mut done = 0;
    loop {
        // SAFETY: interrupts off while this CPU looks for work, so a wake-up
        // IPI cannot fall between the check and the `hlt`.
        unsafe { asm!("cli", options(nomem, nostack)) };
        let gen = WORK_GEN.load(Acquire);
        if gen != done {
            done = gen;
            let f = WORK_FN.load(Acquire);
            if f != 0 {
                // SAFETY: interrupts on while the work runs (it may wait for
                // locks whose holders shoot this CPU down).
                unsafe { asm!("sti", options(nomem, nostack)) };
                // SAFETY: `run_on_aps` stored a `fn(usize)` here.
                let f = unsafe { core::mem::transmute::<usize, fn(usize)>(f) };
                f(cpu);
            }
            WORK_DONE.fetch_add(1, Release);
            continue;
        }
        let idle = IDLE_HOOK.load(Acquire);
        if idle != 0 {
            // SAFETY: as for the work above: interrupts on while tasks run.
            unsafe { asm!("sti", options(nomem, nostack)) };
            // SAFETY: `set_idle_hook` stored a `fn(usize)` here.
            let f = unsafe { core::mem::transmute::<usize, fn(usize)>(idle) };
            f(cpu);
            // SAFETY: back to the check with interrupts off (see above).
            unsafe { asm!("cli", options(nomem, nostack)) };
            if WORK_GEN.load(Acquire) != done {
                continue;
            }
        }
        // SAFETY: `sti; hlt` waits for the next interrupt (the shootdown
        // IPI, which is also the wake-up); the IDT and the APIC are set up.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }
}

/// Work for the APs: a `fn(usize)` (as usize) and its generation; APs that
/// finished it.
static WORK_FN: AtomicUsize = AtomicUsize::new(0);
static WORK_GEN: AtomicUsize = AtomicUsize::new(0);
static WORK_DONE: AtomicUsize = AtomicUsize::new(0);

/// Run `f(cpu)` once on every other online CPU, with interrupts enabled
/// there; returns at once. [`wait_aps`] waits for them.
pub fn run_on_aps(f: fn(usize)) {
    WORK_DONE.store(0, SeqCst);
    WORK_FN.store(f as usize, SeqCst);
    WORK_GEN.fetch_add(1, SeqCst);
    if others_online() {
        send_ipi(0, 0x000c_0000 | SHOOTDOWN_VECTOR as u32);
    }
}

/// Wait until every other online CPU finished the work of [`run_on_aps`],
/// serving shootdowns meanwhile.
pub fn wait_aps() {
    let others = cpus_online() - 1;
    while WORK_DONE.load(Acquire) < others {
        relax();
    }
}

/// Spin-wait step: serve this CPU's pending shootdown (a CPU that waits
/// with interrupts off must, or the holder of what it waits for may wait
/// for it), then pause.
pub fn relax() {
    service(cpu::cpu_id());
    core::hint::spin_loop();
}

/// Enable interrupts on this CPU (IPIs only: nothing else is programmed
/// outside the profiler). CPUs that wait for locks other CPUs hold while
/// they shoot down TLBs must take the IPI.
pub fn irq_enable() {
    // SAFETY: the IDT has gates for every vector the APIC delivers.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disable interrupts on this CPU.
pub fn irq_disable() {
    // SAFETY: masking interrupts only delays IPIs.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// A spin lock that the same CPU may take again (nesting), for allocators
/// whose hooks call back into them. Waiting serves shootdowns ([`relax`]).
pub struct RecLock {
    owner: AtomicU32,
    depth: AtomicU32,
}

const NO_OWNER: u32 = u32::MAX;

impl RecLock {
    pub const fn new() -> Self {
        RecLock { owner: AtomicU32::new(NO_OWNER), depth: AtomicU32::new(0) }
    }

    /// Take the lock (again, if this CPU holds it).
    pub fn lock(&self) -> RecGuard<'_> {
        let me = cpu::cpu_id() as u32;
        if self.owner.load(Relaxed) != me {
            let mut w = Watchdog::new();
            while self.owner.compare_exchange_weak(NO_OWNER, me, Acquire, Relaxed).is_err() {
                w.tick(|| println!("smp: cpu {me} waits for a lock cpu {} holds", self.owner.load(Relaxed)));
                relax();
            }
        }
        self.depth.fetch_add(1, Relaxed);
        RecGuard { lock: self }
    }

    /// Whether this CPU holds the lock.
    pub fn held(&self) -> bool {
        self.owner.load(Relaxed) == cpu::cpu_id() as u32
    }
}

impl Default for RecLock {
    fn default() -> Self {
        Self::new()
    }
}

/// A plain spin lock taken and released by explicit calls (the scheduler
/// holds one across a context switch: the next task releases it). Waiting
/// serves shootdowns ([`relax`]).
pub struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    pub const fn new() -> Self {
        SpinLock { locked: AtomicBool::new(false) }
    }

    pub fn lock(&self) {
        let mut w = Watchdog::new();
        while self.locked.compare_exchange_weak(false, true, Acquire, Relaxed).is_err() {
            w.tick(|| println!("smp: cpu {} waits for a spin lock", cpu::cpu_id()));
            relax();
        }
    }

    /// Release; the caller (or the task it switched from) took it.
    pub fn unlock(&self) {
        self.locked.store(false, Release);
    }
}

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

/// Set the function APs call whenever they are idle (with interrupts on;
/// it returns when it has nothing to run): the scheduler's idle loop.
pub fn set_idle_hook(f: fn(usize)) {
    IDLE_HOOK.store(f as usize, SeqCst);
    wake_others();
}

static IDLE_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Run `f(cpu)` on the boot CPU just before it starts AP `cpu`. The KMSAN
/// kernel gives the CPU its contexts there.
pub fn set_prepare_hook(f: fn(usize)) {
    PREPARE_HOOK.store(f as usize, SeqCst);
}

static PREPARE_HOOK: AtomicUsize = AtomicUsize::new(0);

/// The kernel's tables, for `guest_boot_ap_entry`.
#[no_mangle]
static guest_boot_ap_cr3: AtomicU64 = AtomicU64::new(0);

// From the trampoline (long mode on the boot tables, at the kernel's
// address): load the kernel's tables, then the first Rust code.
global_asm!(
    r#"
    .text
    .balign 16
    .global guest_boot_ap_entry
guest_boot_ap_entry:
    mov guest_boot_ap_cr3(%rip), %rax
    mov %rax, %cr3
    /* the stack may be in the direct map, which only the kernel's tables map */
    push $0
    jmp guest_boot_ap_main
    "#,
    options(att_syntax)
);

/// Wake the other CPUs from `hlt` (new work for their idle hook).
pub fn wake_others() {
    if others_online() {
        send_ipi(0, 0x000c_0000 | SHOOTDOWN_VECTOR as u32);
    }
}

/// Bounds (low, high) of CPU `cpu`'s boot stack (an AP's, or the boot
/// CPU's for 0).
pub fn stack_of(cpu: usize) -> (u64, u64) {
    let lo = AP_STACK_LO.get(cpu).map_or(0, |l| l.load(Relaxed));
    if cpu == 0 || lo == 0 {
        return crate::boot_stack();
    }
    (lo, lo + AP_STACK as u64)
}

/// Says once when a wait has taken more than about 20 s of TSC time (a
/// deadlock, or a host far too loaded), so that a hung run says where.
struct Watchdog {
    start: u64,
    spins: u32,
    said: bool,
}

impl Watchdog {
    fn new() -> Self {
        Watchdog { start: 0, spins: 0, said: false }
    }

    #[inline]
    fn tick(&mut self, say: impl FnOnce()) {
        self.spins = self.spins.wrapping_add(1);
        if self.said || !self.spins.is_multiple_of(1024) {
            return;
        }
        let now = crate::time::rdtsc();
        if self.start == 0 {
            self.start = now;
        } else if now.wrapping_sub(self.start) > 50_000_000_000 {
            self.said = true;
            say();
        }
    }
}

/// Held [`RecLock`]; dropping it releases one level.
pub struct RecGuard<'a> {
    lock: &'a RecLock,
}

impl Drop for RecGuard<'_> {
    fn drop(&mut self) {
        if self.lock.depth.fetch_sub(1, Relaxed) == 1 {
            self.lock.owner.store(NO_OWNER, Release);
        }
    }
}

/// Serve this CPU's pending shootdown request, if any (interrupts off
/// meanwhile, so that the IPI handler does not serve it a second time).
fn service(me: usize) {
    let flags: u64;
    // SAFETY: reading RFLAGS and masking interrupts has no memory effect.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    let gen = SHOOT_GEN.load(Acquire);
    if ACKED[me].0.load(Relaxed) < gen {
        let t0 = crate::time::rdtsc();
        // Published before SHOOT_GEN (SeqCst); stays until every online
        // CPU acknowledged `gen`, so this is the request of `gen`.
        let (va, pages) = (SHOOT_VA.load(Relaxed), SHOOT_PAGES.load(Relaxed));
        if va == FLUSH_ALL {
            paging::flush_all();
        } else {
            for i in 0..pages {
                paging::flush(va + i * 4096);
            }
        }
        SERVED[me].fetch_add(1, Relaxed);
        ACKED[me].0.store(gen, Release);
        SERVE_TSC.fetch_add(crate::time::rdtsc().wrapping_sub(t0), Relaxed);
    }
    if flags & (1 << 9) != 0 {
        // SAFETY: interrupts were on when this was called: back on.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

#[no_mangle]
extern "C" fn guest_boot_shootdown_ipi() {
    // KMSAN: the handler runs untracked (its own interrupt context, entered
    // by the stub, keeps the interrupted code's compiler state intact): a
    // CPU that holds the runtime lock waits for this acknowledgement, so
    // nothing here may wait for that lock.
    untracked(|| service(cpu::cpu_id()));
    lapic_write(0xb0, 0); // EOI
}

/// Whether any CPU but this one is online.
#[inline]
fn others_online() -> bool {
    ONLINE.load(SeqCst) & !(1 << cpu::cpu_id()) != 0
}

/// Run `f` without entering the KMSAN runtime on this CPU (its metadata
/// calls answered by the dummy page): for code that holds, or is waited
/// for by a CPU that holds, a lock the runtime's lock holder may need.
/// The runtime remaps metadata under its lock and shoots down under it,
/// so the shootdown code must never wait for the runtime's lock, or the
/// shootdown lock's holder and the runtime lock's holder wait for each
/// other. In the KASAN kernel (boot code not instrumented) a plain call.
#[inline(always)]
pub fn untracked<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "kmsan")]
    return hybrid_shadow::kmsan::abi::without_tracking(f);
    #[cfg(not(feature = "kmsan"))]
    f()
}

fn shootdown(req: u64, pages: u64) {
    untracked(|| shootdown_untracked(req, pages));
}

fn shootdown_untracked(req: u64, pages: u64) {
    let t0 = crate::time::rdtsc();
    let me = cpu::cpu_id();
    while SHOOT_LOCK.compare_exchange_weak(false, true, Acquire, Relaxed).is_err() {
        relax();
    }
    SHOOT_VA.store(req, Relaxed);
    SHOOT_PAGES.store(pages, Relaxed);
    // Only the lock holder changes SHOOT_GEN. This CPU owes nothing for
    // its own request: acknowledged before it is published.
    let gen = SHOOT_GEN.load(Relaxed) + 1;
    ACKED[me].0.store(gen, Relaxed);
    SHOOT_GEN.store(gen, SeqCst);
    // Everyone online now owes `gen` (a CPU joining later reloads CR3).
    let others = ONLINE.load(SeqCst) & !(1 << me);
    // Fixed, edge, all excluding self.
    send_ipi(0, 0x000c_0000 | SHOOTDOWN_VECTOR as u32);
    let mut spins = 0u64;
    for (i, acked) in ACKED.iter().enumerate() {
        if others & (1 << i) != 0 {
            let mut w = Watchdog::new();
            while acked.0.load(Acquire) < gen {
                w.tick(|| println!("smp: cpu {me} waits for cpu {i} to acknowledge shootdown {gen}"));
                spins += 1;
                core::hint::spin_loop();
            }
        }
    }
    SHOOT_SPINS.fetch_add(spins, Relaxed);
    if req == FLUSH_ALL {
        SHOOT_FULL.fetch_add(1, Relaxed);
    } else {
        SHOOT_PAGE.fetch_add(1, Relaxed);
    }
    SHOOT_LOCK.store(false, Release);
    SHOOT_TSC.fetch_add(crate::time::rdtsc().wrapping_sub(t0), Relaxed);
}

/// Drop the translation of the page at `va` on every CPU: `invlpg` here,
/// and an IPI to every other online CPU, waited for. True if other CPUs
/// were shot down.
pub fn flush_page(va: u64) -> bool {
    paging::flush(va);
    let remote = others_online();
    if remote {
        shootdown(va & !0xfff, 1);
    }
    remote
}

/// Drop the translations of `pages` pages from `va` on every CPU (one IPI
/// round; everything for long ranges). True if other CPUs were shot down.
pub fn flush_range(va: u64, pages: u64) -> bool {
    if pages > RANGE_MAX {
        return flush_all();
    }
    let va = va & !0xfff;
    for i in 0..pages {
        paging::flush(va + i * 4096);
    }
    let remote = others_online();
    if remote && pages > 0 {
        shootdown(va, pages);
    }
    remote
}

/// Drop every non-global translation (and, here, the global ones too) on
/// every CPU. True if other CPUs were shot down.
pub fn flush_all() -> bool {
    paging::flush_all();
    let remote = others_online();
    if remote {
        shootdown(FLUSH_ALL, 0);
    }
    remote
}

/// Shootdown statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// CPUs online.
    pub cpus: usize,
    /// Shootdowns of one page / of everything (one IPI round each).
    pub page: u64,
    pub full: u64,
    /// Requests the other CPUs served (in the handler or while waiting).
    pub served: u64,
    /// TSC cycles the shooting CPUs spent shooting (lock, IPI, waiting for
    /// every acknowledgement), summed over shootdowns.
    pub shoot_tsc: u64,
    /// TSC cycles the other CPUs spent serving requests, summed.
    pub serve_tsc: u64,
    /// Rounds of the shooting CPUs' wait for acknowledgements.
    pub shoot_spins: u64,
}

pub fn stats() -> Stats {
    Stats {
        cpus: cpus_online(),
        page: SHOOT_PAGE.load(Relaxed),
        full: SHOOT_FULL.load(Relaxed),
        served: SERVED.iter().map(|s| s.load(Relaxed)).sum(),
        shoot_tsc: SHOOT_TSC.load(Relaxed),
        serve_tsc: SERVE_TSC.load(Relaxed),
        shoot_spins: SHOOT_SPINS.load(Relaxed),
    }
}
