//! GDT + TSS (IST1 for #DF), IDT with stubs for vectors 0..32, exception
//! dispatch: an optional hook (for the runtime) may handle a fault and
//! resume; otherwise print vector, error code, RIP, CR2, a backtrace, exit.
use crate::{print, println};
use crate::serial::{code, exit};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64, pub r14: u64, pub r13: u64, pub r12: u64,
    pub r11: u64, pub r10: u64, pub r9: u64, pub r8: u64,
    pub rdi: u64, pub rsi: u64, pub rbp: u64, pub rbx: u64,
    pub rdx: u64, pub rcx: u64, pub rax: u64,
    pub vector: u64, pub error: u64,
    pub rip: u64, pub cs: u64, pub rflags: u64, pub rsp: u64, pub ss: u64,
}

/// Called first for every exception; return true to resume (iretq) with the
/// (possibly modified) frame. `cr2` is the faulting address for #PF.
pub type FaultHook = fn(frame: &mut ExceptionFrame, cr2: u64) -> bool;
/// The hook, as a `FaultHook` cast to `usize` (0: none).
static FAULT_HOOK: AtomicUsize = AtomicUsize::new(0);

pub fn set_fault_hook(h: Option<FaultHook>) {
    FAULT_HOOK.store(h.map_or(0, |f| f as usize), Relaxed);
}

fn fault_hook() -> Option<FaultHook> {
    let raw = FAULT_HOOK.load(Relaxed);
    // SAFETY: a non-zero value was stored by `set_fault_hook` from a
    // `FaultHook`: casting it back gives the same function pointer.
    (raw != 0).then(|| unsafe { core::mem::transmute::<usize, FaultHook>(raw) })
}

global_asm!(
    r#"
    .macro ISR_NOERR n
    .balign 16
isr_\n:
    push $0
    push $\n
    jmp isr_common
    .endm
    .macro ISR_ERR n
    .balign 16
isr_\n:
    push $\n
    jmp isr_common
    .endm

    .text
    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR 8
    ISR_NOERR 9
    ISR_ERR 10
    ISR_ERR 11
    ISR_ERR 12
    ISR_ERR 13
    ISR_ERR 14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR 17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR 21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR 29
    ISR_ERR 30
    ISR_NOERR 31

isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    cld
    "#,
    irq_enter!(),
    r#"
    mov %rsp, %rdi
    call guest_boot_exception_dispatch
    "#,
    irq_exit!(),
    r#"
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

    .section .rodata
    .balign 8
    .global guest_boot_isr_table
guest_boot_isr_table:
    .quad isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7
    .quad isr_8, isr_9, isr_10, isr_11, isr_12, isr_13, isr_14, isr_15
    .quad isr_16, isr_17, isr_18, isr_19, isr_20, isr_21, isr_22, isr_23
    .quad isr_24, isr_25, isr_26, isr_27, isr_28, isr_29, isr_30, isr_31
    .text
    "#,
    options(att_syntax)
);

extern "C" {
    static guest_boot_isr_table: [u64; 32];
}

#[repr(C, packed)]
struct Tss {
    _r0: u32,
    rsp: [u64; 3],
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap: u16,
}

#[repr(C, align(16))]
struct Stack([u8; 16384]);

/// CPUs the guest can run (boot CPU included).
pub const MAX_CPUS: usize = 8;

// One double-fault stack, TSS and GDT per CPU (a TSS descriptor is marked
// busy when loaded, so CPUs cannot share one); the IDT is shared.
static mut DF_STACK: [Stack; MAX_CPUS] = [const { Stack([0; 16384]) }; MAX_CPUS];
static mut TSS: [Tss; MAX_CPUS] = [const { Tss { _r0: 0, rsp: [0; 3], _r1: 0, ist: [0; 7], _r2: 0, _r3: 0, iomap: 104 } }; MAX_CPUS];
static mut GDT: [[u64; 5]; MAX_CPUS] = [[0, 0x00af9a000000ffff, 0x00cf92000000ffff, 0, 0]; MAX_CPUS];

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u64; 2]);
static mut IDT: [Gate; 256] = [Gate([0; 2]); 256];

#[repr(C, packed)]
struct Desc {
    limit: u16,
    base: u64,
}

/// Per-CPU data, reached through the GS base (`gs:[0]` is the block's own
/// address, `gs:[8]` the CPU number).
#[repr(C, align(64))]
pub struct PerCpu {
    self_ptr: AtomicU64,
    id: AtomicU32,
    apic_id: AtomicU32,
    /// Exception nesting depth on this CPU.
    in_fault: AtomicU32,
}

static PERCPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu { self_ptr: AtomicU64::new(0), id: AtomicU32::new(0), apic_id: AtomicU32::new(0), in_fault: AtomicU32::new(0) }
}; MAX_CPUS];

/// The number of the CPU running this (0: the boot CPU).
#[inline]
pub fn cpu_id() -> usize {
    let id: u32;
    // SAFETY: GS base points at this CPU's `PerCpu` from `init` / `init_ap`
    // on (set before the IDT is loaded, so before anything can call this).
    unsafe { asm!("mov {:e}, gs:[8]", out(reg) id, options(nostack, readonly, preserves_flags)) };
    id as usize
}

/// This CPU's per-CPU block.
pub fn this_cpu() -> &'static PerCpu {
    &PERCPU[cpu_id()]
}

/// CPU `cpu`'s per-CPU block.
pub fn percpu(cpu: usize) -> &'static PerCpu {
    &PERCPU[cpu]
}

impl PerCpu {
    /// Local APIC ID (0 until [`crate::smp`] reads it).
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Relaxed)
    }
    pub(crate) fn set_apic_id(&self, id: u32) {
        self.apic_id.store(id, Relaxed);
    }
}

/// Fill in CPU `cpu`'s per-CPU block for it (from the CPU that starts it)
/// and return the block's address, which the AP's trampoline loads into
/// GS base before any Rust code runs.
pub(crate) fn prepare_percpu(cpu: usize) -> u64 {
    let p = &PERCPU[cpu];
    let addr = p as *const PerCpu as u64;
    p.self_ptr.store(addr, Relaxed);
    p.id.store(cpu as u32, Relaxed);
    addr
}

/// Point GS base at CPU `cpu`'s per-CPU block.
///
/// # Safety
///
/// Once per CPU, `cpu` its own number; nothing uses GS otherwise.
unsafe fn set_percpu(cpu: usize) {
    let addr = prepare_percpu(cpu);
    // SAFETY: IA32_GS_BASE (0xc0000101) only sets the GS segment base.
    unsafe { asm!("wrmsr", in("ecx") 0xc000_0101u32, in("eax") addr as u32, in("edx") (addr >> 32) as u32, options(nostack)) };
}

/// Load CPU `cpu`'s GDT (with its TSS) and reload the segment registers.
///
/// # Safety
///
/// Once per CPU, by CPU `cpu` itself (`cpu < MAX_CPUS`), with interrupts off.
unsafe fn load_gdt(cpu: usize) {
    // TSS with IST1 = double-fault stack.
    let df_top = core::ptr::addr_of!(DF_STACK[cpu]) as u64 + 16384;
    TSS[cpu].ist[0] = df_top;
    let tss = core::ptr::addr_of!(TSS[cpu]) as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    let gdt = &mut *core::ptr::addr_of_mut!(GDT[cpu]);
    gdt[3] = (limit & 0xffff) | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    gdt[4] = tss >> 32;
    let gdtr = Desc { limit: (5 * 8 - 1) as u16, base: gdt.as_ptr() as u64 };
    asm!(
        "lgdt [{g}]",
        "push 0x08",
        "lea {t}, [rip + 2f]",
        "push {t}",
        "retfq",
        "2:",
        "mov {t:e}, 0x10",
        "mov ds, {t:e}",
        "mov es, {t:e}",
        "mov ss, {t:e}",
        "mov {t:e}, 0x18",
        "ltr {t:x}",
        g = in(reg) &gdtr,
        t = out(reg) _,
    );
}

fn load_idt() {
    let idtr = Desc { limit: (256 * 16 - 1) as u16, base: core::ptr::addr_of!(IDT) as u64 };
    // SAFETY: the IDT is static; its gates point at the stubs above.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(nostack)) };
}

/// Load the GDT (with the TSS) and the IDT.
///
/// # Safety
///
/// Once, at boot, on the boot CPU, before interrupts are enabled: it
/// reloads the segment registers and replaces the IDT.
pub unsafe fn init() {
    set_percpu(0);
    load_gdt(0);
    for v in 0..32 {
        let h = guest_boot_isr_table[v];
        let ist = if v == 8 { 1u64 } else { 0 };
        IDT[v] = Gate([
            (h & 0xffff) | (0x08 << 16) | (ist << 32) | (0x8e << 40) | (((h >> 16) & 0xffff) << 48),
            h >> 32,
        ]);
    }
    load_idt();
}

/// An application processor's part of [`init`]: its per-CPU block, its
/// own GDT and TSS, the shared IDT.
///
/// # Safety
///
/// Once, by CPU `cpu` (`0 < cpu < MAX_CPUS`) itself, with interrupts off,
/// after [`init`] ran on the boot CPU.
pub unsafe fn init_ap(cpu: usize) {
    set_percpu(cpu);
    load_gdt(cpu);
    load_idt();
}

/// Point IDT vector `v` at handler `h` (interrupt gate, ring 0, no IST).
pub fn set_gate(v: usize, h: u64) {
    // SAFETY: one 16-byte store per gate; the IDT is static and loaded by
    // `init`, and the caller enables the vector's source only afterwards.
    unsafe { IDT[v] = Gate([(h & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((h >> 16) & 0xffff) << 48), h >> 32]) };
}

fn name(v: u64) -> &'static str {
    match v {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection fault",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        _ => "exception",
    }
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 (the last page-fault address) has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

#[no_mangle]
extern "C" fn guest_boot_exception_dispatch(f: &mut ExceptionFrame) {
    // The CPU and the entry stub wrote the frame: KMSAN cannot see those
    // writes (Linux: kmsan_unpoison_entry_regs).
    #[cfg(feature = "kmsan")]
    {
        extern "C" {
            fn kmsan_unpoison_memory(addr: usize, size: usize);
        }
        // SAFETY: the runtime's API; the frame is valid for its size.
        unsafe { kmsan_unpoison_memory(f as *mut ExceptionFrame as usize, core::mem::size_of::<ExceptionFrame>()) };
    }
    let cr2 = read_cr2();
    let in_fault = &this_cpu().in_fault;
    if in_fault.load(Relaxed) == 0 {
        if let Some(h) = fault_hook() {
            in_fault.fetch_add(1, Relaxed);
            let handled = h(f, cr2);
            in_fault.fetch_sub(1, Relaxed);
            if handled {
                return;
            }
        }
    }
    if in_fault.fetch_add(1, Relaxed) + 1 > 2 {
        exit(code::DOUBLE_FAULT);
    }
    println!();
    print!("EXCEPTION: {} (vector {}) error code {:#x}", name(f.vector), f.vector, f.error);
    match cpu_id() {
        0 => println!(),
        cpu => println!(" on cpu {cpu}"),
    }
    if f.vector == 14 {
        println!(
            "  fault address {:#018x} ({} {}{})",
            cr2,
            if f.error & 2 != 0 { "write" } else { "read" },
            if f.error & 1 != 0 { "protection" } else { "not-present" },
            if f.error & 16 != 0 { ", instruction fetch" } else { "" }
        );
    }
    print!("  RIP {:#018x} ", f.rip);
    crate::ksyms::print_symbol(f.rip);
    println!();
    println!("  RSP {:#018x} RBP {:#018x} RFLAGS {:#x}", f.rsp, f.rbp, f.rflags);
    println!("  RAX {:#018x} RBX {:#018x} RCX {:#018x} RDX {:#018x}", f.rax, f.rbx, f.rcx, f.rdx);
    println!("  RSI {:#018x} RDI {:#018x} R8  {:#018x} R9  {:#018x}", f.rsi, f.rdi, f.r8, f.r9);
    println!("Call Trace:");
    println!(" {}", crate::ksyms::Sym(f.rip));
    crate::stack::print_trace_from(f.rbp, 0);
    let c = match f.vector {
        14 => code::PAGE_FAULT,
        13 => code::GP_FAULT,
        8 => code::DOUBLE_FAULT,
        _ => code::OTHER_EXCEPTION,
    };
    exit(c);
}
