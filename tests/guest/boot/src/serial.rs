//! COM1 console (port 0x3f8) and isa-debug-exit.
use core::arch::asm;
use core::fmt;

const COM1: u16 = 0x3f8;

/// Write `v` to I/O port `port`.
///
/// # Safety
///
/// `port` is a device register whose write has no effect on memory the
/// program relies on (the UART, isa-debug-exit).
#[inline]
pub unsafe fn outb(port: u16, v: u8) {
    asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags));
}
/// Read I/O port `port`.
///
/// # Safety
///
/// As [`outb`]: a device register whose read has no effect on memory.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags));
    v
}
/// Write the 32-bit `v` to I/O port `port`.
///
/// # Safety
///
/// As [`outb`].
#[inline]
pub unsafe fn outl(port: u16, v: u32) {
    asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags));
}

pub fn init() {
    // SAFETY: COM1's registers (0x3f8..0x3fd): programming the UART touches
    // no memory.
    unsafe {
        outb(COM1 + 1, 0x00); // no interrupts
        outb(COM1 + 3, 0x80); // DLAB
        outb(COM1, 0x01); // 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0xc7); // FIFO
        outb(COM1 + 4, 0x03); // DTR | RTS
    }
}

pub fn write_byte(b: u8) {
    // SAFETY: COM1's line status and data registers: no memory effect.
    unsafe {
        let mut spins = 0u32;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        outb(COM1, b);
    }
}

pub fn write_bytes(s: &[u8]) {
    for &b in s {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::Write::write_fmt(&mut Console, args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::serial::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Exit codes passed to isa-debug-exit; QEMU exits with `(code << 1) | 1`.
pub mod code {
    /// QEMU status 33.
    pub const SUCCESS: u32 = 0x10;
    /// QEMU status 35: a test or check failed.
    pub const FAILURE: u32 = 0x11;
    /// QEMU status 37: Rust panic.
    pub const PANIC: u32 = 0x12;
    /// QEMU status 39: unhandled page fault.
    pub const PAGE_FAULT: u32 = 0x13;
    /// QEMU status 41: unhandled general protection fault.
    pub const GP_FAULT: u32 = 0x14;
    /// QEMU status 43: double fault.
    pub const DOUBLE_FAULT: u32 = 0x15;
    /// QEMU status 45: any other exception.
    pub const OTHER_EXCEPTION: u32 = 0x16;
    /// QEMU status 47: KASAN report with kasan.fault=panic (for the runtime).
    pub const KASAN_PANIC: u32 = 0x17;
    /// QEMU status 49: bad boot (no PVH start info, no memory map, ...).
    pub const BAD_BOOT: u32 = 0x18;
}

/// Exit QEMU through isa-debug-exit (iobase 0xf4). Never returns.
pub fn exit(code: u32) -> ! {
    // SAFETY: isa-debug-exit's port (0xf4) stops QEMU; without the device
    // the CPU halts with interrupts off. Neither touches memory.
    unsafe {
        outl(0xf4, code);
        // Without the device: stop here.
        loop {
            asm!("cli; hlt", options(nomem, nostack));
        }
    }
}
