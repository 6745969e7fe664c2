//! Time stamps: the TSC at boot, and the TSC frequency measured against the
//! i8254 PIT (channel 0 polled, interrupts stay off).
use crate::serial::{inb, outb};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

#[inline]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: reads the time-stamp counter; no memory access.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    ((hi as u64) << 32) | lo as u64
}

/// Record the boot time stamp (first thing in `boot_entry64`).
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Relaxed);
}

/// TSC value recorded at boot.
pub fn boot_tsc() -> u64 {
    BOOT_TSC.load(Relaxed)
}

const PIT_HZ: u64 = 1_193_182;

fn pit_count() -> u16 {
    // SAFETY: port I/O to the PIT (latch channel 0, read lo then hi).
    unsafe {
        outb(0x43, 0x00);
        let lo = inb(0x40) as u16;
        let hi = inb(0x40) as u16;
        (hi << 8) | lo
    }
}

/// TSC ticks per millisecond, measured over ~20 ms of PIT time; None when
/// the PIT does not count (no PIT on this machine).
pub fn tsc_khz() -> Option<u64> {
    // SAFETY: program PIT channel 0: lobyte/hibyte, mode 2, reload 0 (65536).
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
    }
    let want = PIT_HZ / 50; // 20 ms
    let mut prev = pit_count();
    let t0 = rdtsc();
    let mut elapsed = 0u64;
    let mut polls = 0u64;
    while elapsed < want {
        let cur = pit_count();
        // counting down, wrapping at 65536
        elapsed += prev.wrapping_sub(cur) as u64;
        prev = cur;
        polls += 1;
        if polls > 5_000_000 && elapsed == 0 {
            return None;
        }
        if polls > 50_000_000 {
            return None;
        }
    }
    let t1 = rdtsc();
    Some(((t1 - t0) as u128 * PIT_HZ as u128 / elapsed as u128 / 1000) as u64)
}
