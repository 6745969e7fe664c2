//! Frame-pointer stack walker (all guest code is built with frame pointers).
//! Frame record at rbp: [rbp] = caller's rbp, [rbp + 8] = return address.
//! Bounded: stops at rbp == 0, a misaligned or non-kernel rbp, a chain that
//! does not move up the stack, a jump of more than 1 MiB, or `max` frames.
use crate::println;

#[inline(always)]
pub fn current_rbp() -> u64 {
    let rbp: u64;
    // SAFETY: copies a register; no memory access.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    rbp
}

fn plausible(rbp: u64) -> bool {
    rbp != 0
        && rbp & 7 == 0
        && rbp >= 0xffff_8000_0000_0000
        && crate::paging::translate(rbp).is_some()
        && crate::paging::translate(rbp + 8).is_some()
}

/// Fill `out` with return addresses starting from frame `rbp`, skipping the
/// first `skip` frames. Returns the number stored.
pub fn walk_from(mut rbp: u64, skip: usize, out: &mut [u64]) -> usize {
    let mut n = 0;
    let mut seen = 0;
    let max_frames = 64 + skip;
    while seen < max_frames && n < out.len() && plausible(rbp) {
        // SAFETY: `plausible` checked that rbp is 8-aligned and that rbp and
        // rbp + 8 are mapped kernel addresses: both loads are of mapped memory.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        if seen >= skip {
            out[n] = ret;
            n += 1;
        }
        seen += 1;
        if next <= rbp || next - rbp > (1 << 20) {
            break;
        }
        rbp = next;
    }
    n
}

/// Return addresses of the caller's callers (the caller of `walk` itself is
/// the first entry unless skipped).
#[inline(never)]
pub fn walk(skip: usize, out: &mut [u64]) -> usize {
    walk_from(current_rbp(), skip, out)
}

/// Print a call trace, one ` name+0xoff/0xsize` line per frame. Return
/// addresses are printed as found (they point after the call).
pub fn print_trace_from(rbp: u64, skip: usize) {
    let mut buf = [0u64; 64];
    let n = walk_from(rbp, skip, &mut buf);
    for &pc in &buf[..n] {
        println!(" {}", crate::ksyms::Ret(pc));
    }
}

#[inline(never)]
pub fn print_trace() {
    print_trace_from(current_rbp(), 0);
}
