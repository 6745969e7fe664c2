//! Time from the TSC, calibrated against the i8254 PIT.
//!
//! `guest_boot::time::tsc_khz()` polls PIT channel 0 (1.193182 MHz) for
//! 20 ms against RDTSC. Under QEMU TCG without -icount the guest TSC counts
//! at the host's TSC rate and the PIT follows QEMU's virtual clock (host
//! wall time), so the result converts TSC deltas to wall-clock ns. It is
//! measured once per boot (several samples, median) and printed as
//! `tsc_hz`; when no PIT answers, 1 GHz is assumed and `tsc_source` says so.
pub use guest_boot::time::rdtsc;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Calibrate once; returns (TSC Hz, source).
pub fn init() -> (u64, &'static str) {
    let mut v = [0u64; 5];
    let mut n = 0;
    for s in v.iter_mut() {
        match guest_boot::time::tsc_khz() {
            Some(k) if k > 10_000 => {
                *s = k;
                n += 1;
            }
            _ => break,
        }
    }
    if n == 0 {
        return (TSC_HZ.load(Relaxed), "assumed-1ghz");
    }
    let vs = &mut v[..n];
    vs.sort_unstable();
    let hz = vs[n / 2] * 1000;
    TSC_HZ.store(hz, Relaxed);
    (hz, "pit")
}

/// Nanoseconds between two TSC readings.
pub fn ns_between(t0: u64, t1: u64) -> u64 {
    let hz = TSC_HZ.load(Relaxed);
    ((t1.wrapping_sub(t0)) as u128 * 1_000_000_000u128 / hz as u128) as u64
}
