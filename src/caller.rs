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

/// The return address one frame further up: the caller of the function
/// that called the ABI function (Linux's `__builtin_return_address(1)`).
#[inline(always)]
#[allow(dead_code)]
pub(crate) fn caller_ip2() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        let ip: usize;
        // SAFETY: with frame pointers forced everywhere, [rbp] is the
        // caller's saved rbp and [[rbp] + 8] the caller's return address.
        unsafe {
            core::arch::asm!(
                "mov {0}, [rbp]",
                "test {0}, {0}",
                "jz 2f",
                "mov {0}, [{0} + 8]",
                "2:",
                out(reg) ip,
                options(nostack, readonly)
            )
        };
        ip
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
    {
        0
    }
}
