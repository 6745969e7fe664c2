//! Sampling profiler for the guest's own performance work.
//!
//! The local APIC's timer interrupts every `period_us` of guest time (under
//! `-icount shift=0` guest time is instructions, so a sample every N
//! instructions); the interrupt stub, plain assembly that touches no
//! sanitizer metadata and calls nothing, counts the interrupted RIP in a
//! histogram of 16-byte buckets over `.text`. [`report`] folds the buckets
//! into functions through the symbol table.
//!
//! ```text
//!   LAPIC timer (periodic, vector 32) ──► prof_isr: hist[(rip - text) >> 4] += 1, EOI
//! ```
//!
//! Interrupts are enabled only between [`start`] and [`stop`]; outside a
//! profiled run the guest never takes one.
use core::arch::{asm, global_asm};

use crate::{ksyms, println};

/// Interrupt vector of the timer.
const VECTOR: usize = 32;
/// Spurious-interrupt vector (its stub only returns).
const SPURIOUS: usize = 39;
/// Physical address of the local APIC's registers, and where they are mapped.
const LAPIC_PHYS: u64 = 0xfee0_0000;
const LAPIC_VA: u64 = 0xffff_fe00_0000_0000;
/// Bytes of text per histogram bucket (log2).
const BUCKET_SHIFT: u32 = 4;

// Read and written by the interrupt stub (uninstrumented assembly).
#[no_mangle]
static mut guest_boot_prof_base: u64 = 0;
#[no_mangle]
static mut guest_boot_prof_len: u64 = 0;
#[no_mangle]
static mut guest_boot_prof_buf: u64 = 0;
#[no_mangle]
static mut guest_boot_prof_miss: u64 = 0;
#[no_mangle]
static mut guest_boot_prof_eoi: u64 = 0;

global_asm!(
    r#"
    .text
    .balign 16
    .global guest_boot_prof_isr
guest_boot_prof_isr:
    push %rax
    push %rcx
    mov 16(%rsp), %rax
    sub guest_boot_prof_base(%rip), %rax
    shr $4, %rax
    cmp guest_boot_prof_len(%rip), %rax
    jae 1f
    mov guest_boot_prof_buf(%rip), %rcx
    incl (%rcx,%rax,4)
    jmp 2f
1:
    incq guest_boot_prof_miss(%rip)
2:
    mov guest_boot_prof_eoi(%rip), %rcx
    movl $0, (%rcx)
    pop %rcx
    pop %rax
    iretq
    .balign 16
    .global guest_boot_prof_spurious
guest_boot_prof_spurious:
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    fn guest_boot_prof_isr();
    fn guest_boot_prof_spurious();
    static __text_start: u8;
    static __text_end: u8;
}

/// Write local APIC register `reg`.
///
/// # Safety
/// The registers are mapped at [`LAPIC_VA`] (see [`start`]).
unsafe fn lapic_write(reg: u64, v: u32) {
    // SAFETY: an aligned 32-bit register of the mapped APIC page.
    unsafe { ((LAPIC_VA + reg) as *mut u32).write_volatile(v) };
}

/// Bytes of histogram [`start`] needs: one `u32` per 16 bytes of `.text`.
pub fn buffer_bytes() -> usize {
    let (s, e) = text();
    (((e - s) >> BUCKET_SHIFT) as usize + 1) * 4
}

fn text() -> (u64, u64) {
    (core::ptr::addr_of!(__text_start) as u64, core::ptr::addr_of!(__text_end) as u64)
}

/// Why [`start`] could not start sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// The local APIC's registers could not be mapped (no frame for a page
    /// table, or a large page already covers the address).
    ApicMap,
}

/// Start sampling every `period_us` microseconds of guest time into
/// `buf`, which must be zeroed and at least [`buffer_bytes`] long. `alloc`
/// gives page-table pages (physical addresses) for mapping the APIC.
///
/// # Safety
/// `buf` stays valid and unused by anything else until [`stop`]; the
/// caller runs on the boot CPU with the IDT of [`crate::cpu::init`] loaded.
pub unsafe fn start(buf: *mut u32, bytes: usize, period_us: u64, alloc: &mut dyn FnMut() -> Option<u64>) -> Result<(), ProfileError> {
    let (s, e) = text();
    let len = ((e - s) >> BUCKET_SHIFT).min(bytes as u64 / 4);
    // SAFETY: uncached mapping of the APIC page at an address nothing else uses.
    unsafe { crate::paging::map_4k(LAPIC_VA, LAPIC_PHYS, crate::paging::PTE_W | crate::paging::PTE_NX | 0x18, alloc) }
        .map_err(|_| ProfileError::ApicMap)?;
    // SAFETY: the interrupt is not enabled yet; nothing else uses these.
    unsafe {
        guest_boot_prof_base = s;
        guest_boot_prof_len = len;
        guest_boot_prof_buf = buf as u64;
        guest_boot_prof_miss = 0;
        guest_boot_prof_eoi = LAPIC_VA + 0xb0;
    }
    crate::cpu::set_gate(VECTOR, guest_boot_prof_isr as *const () as u64);
    crate::cpu::set_gate(SPURIOUS, guest_boot_prof_spurious as *const () as u64);
    // SAFETY: the APIC is mapped above; the guest owns it.
    unsafe {
        lapic_write(0x80, 0); // task priority: accept everything
        lapic_write(0xf0, 0x100 | SPURIOUS as u32); // software enable
        lapic_write(0x3e0, 0xb); // divide by 1: one tick per ns of guest time
        lapic_write(0x320, VECTOR as u32 | 1 << 17); // periodic
        lapic_write(0x380, (period_us * 1000).min(u64::from(u32::MAX)) as u32);
        let flags: u64;
        asm!("pushfq", "pop {}", out(reg) flags, options(nomem));
        IRQ_WAS_ON.store(flags & (1 << 9) != 0, core::sync::atomic::Ordering::Relaxed);
        asm!("sti", options(nomem, nostack));
    }
    Ok(())
}

/// Interrupts were on before [`start`] (several CPUs with tasks on all of
/// them keep them on: see `smp::irq_enable`); [`stop`] leaves them so.
static IRQ_WAS_ON: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Stop sampling (the timer masked and stopped; interrupts off again
/// unless they were on before [`start`]).
pub fn stop() {
    // SAFETY: disabling interrupts is always allowed; the APIC is mapped
    // since `start`.
    unsafe {
        asm!("cli", options(nomem, nostack));
        lapic_write(0x320, 1 << 16);
        lapic_write(0x380, 0);
    }
    if IRQ_WAS_ON.load(core::sync::atomic::Ordering::Relaxed) {
        crate::smp::irq_enable();
    }
}

/// Print one line per function with samples, `prof <samples> <name>`,
/// in address order, then `prof-total samples=<n> outside=<n>`.
///
/// # Safety
/// `buf` is the buffer given to [`start`], after [`stop`].
pub unsafe fn report(buf: *const u32) {
    let (s, _) = text();
    // SAFETY: sampling stopped; the stub no longer writes these.
    let (len, miss) = unsafe { (guest_boot_prof_len, guest_boot_prof_miss) };
    let (mut cur, mut cur_n, mut total) = (None::<ksyms::Symbol>, 0u64, 0u64);
    let flush = |sym: Option<ksyms::Symbol>, n: u64| {
        if n > 0 {
            match sym {
                Some(sym) => println!("prof {} {}", n, sym.folded()),
                None => println!("prof {} ?", n),
            }
        }
    };
    for i in 0..len as usize {
        // SAFETY: `i < len` buckets of the caller's buffer.
        let n = u64::from(unsafe { buf.add(i).read_volatile() });
        if n == 0 {
            continue;
        }
        total += n;
        let pc = s + ((i as u64) << BUCKET_SHIFT);
        let same = cur.is_some_and(|c| pc >= c.addr && pc < c.addr + c.size.max(1));
        if !same {
            flush(cur, cur_n);
            cur = ksyms::lookup(pc);
            cur_n = 0;
        }
        cur_n += n;
    }
    flush(cur, cur_n);
    println!("prof-total samples={} outside={}", total, miss);
}
