//! The return address of a compiler-ABI entry point: the instrumented code
//! that called it (report titles name it).

/// The return address of the calling (non-inlined) ABI function: the
/// instrumented code's address. Needs frame pointers, as the kernel is
/// built with them; 0 where that cannot be read.
#[inline(always)]
#[allow(dead_code)]
pub(crate) fn caller_ip() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        let ip: usize;
        // SAFETY: with frame pointers forced, the enclosing (non-inlined)
        // ABI function has pushed rbp, so [rbp + 8] is its return address.
        unsafe { core::arch::asm!("mov {}, [rbp + 8]", out(reg) ip, options(nostack, readonly, preserves_flags)) };
        ip
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
    {
        0
    }
}
