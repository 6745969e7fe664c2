//! Stress: the kernel-build-like workload (guest suite `workload`) in `full`
//! and `hybrid` at 128 MiB, with enough compilation units for at least one
//! million slab allocations in each run, on the KASAN kernel and on the
//! KMSAN kernel. Asserts the exact QEMU exit status, no sanitizer report,
//! the allocators' invariants (checked in the guest), the slab-allocation
//! count, the same build result in both modes, that `hybrid`'s
//! on-demand metadata comes back to its level before the workload, and
//! (profile build, the default) that the peak of byte-tracked memory is
//! 12-25% of RAM, as a kernel build's slab, and that the vfs shrinker ran.
//!
//! Needs QEMU and rustup's nightly (installed when missing and possible,
//! else the test fails naming the command). Log files:
//! target/guest-stress/logs/<mode>.log (KASAN), kmsan-<mode>.log (KMSAN).
//! Environment: STRESS_UNITS (default 240), STRESS_JOBS (4), STRESS_SEED
//! (1), STRESS_TIMEOUT seconds (1200).
#![cfg(target_os = "linux")]

mod guest_driver;

use guest_driver::*;
use std::time::Duration;

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[test]
fn workload_full_and_hybrid_128mib() {
    stress(San::Kasan);
}

#[test]
fn kmsan_workload_full_and_hybrid_128mib() {
    stress(San::Kmsan);
}

/// One sanitizer's pair of QEMUs at a time (each is single-threaded TCG).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn stress(san: San) {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/guest-stress");
    let elf = build_guest_san(san, san.release_profile(), &dir.join("build")).unwrap_or_else(|e| panic!("{e}"));
    let prefix = if san == San::Kasan { "" } else { "kmsan-" };
    let units = env_or("STRESS_UNITS", 240);
    let jobs = env_or("STRESS_JOBS", 4);
    let seed = env_or("STRESS_SEED", 1);
    let timeout = Duration::from_secs(env_or("STRESS_TIMEOUT", 1200));
    let append = format!("units={units} jobs={jobs} seed={seed} samples=50");

    // Both modes at once (QEMU TCG is single-threaded).
    let runs: Vec<(&str, Outcome)> = std::thread::scope(|s| {
        let hs: Vec<_> = ["full", "hybrid"]
            .into_iter()
            .map(|mode| {
                let b = Boot {
                    elf: &elf,
                    san,
                    mode,
                    suite: "workload",
                    ram_mib: 128,
                    append: append.clone(),
                    timeout,
                    log: dir.join("logs").join(format!("{prefix}{mode}.log")),
                    icount: false,
                };
                s.spawn(move || (mode, boot(&b).unwrap_or_else(|e| panic!("{mode}: {e}"))))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("runner thread")).collect()
    });

    let mut sums = Vec::new();
    for (mode, out) in &runs {
        let ctx = || format!("{} mode {mode}, log target/guest-stress/logs/{prefix}{mode}.log:\n{}", san.name(), out.tail(25));
        assert_eq!(out.exit, EXIT_SUCCESS, "QEMU exit status (33 = suite passed, 124 = timeout); {}", ctx());
        assert_eq!(out.reports(), 0, "sanitizer report during the workload; {}", ctx());
        let r = out.line("wl-result").unwrap_or_else(|| panic!("no wl-result line; {}", ctx()));
        assert_eq!(r.get("mode"), Some(*mode), "{}", ctx());
        assert_eq!(r.get("runtime"), Some("real"), "the runtime must be linked; {}", ctx());
        assert_eq!(r.get("invariants"), Some("ok"), "allocator invariants / leaks; {}", ctx());
        assert_eq!(r.num("reports"), 0, "runtime report count; {}", ctx());
        assert_eq!(r.num("unchecked_events"), 0, "pages that went without byte shadow; {}", ctx());
        assert_eq!(r.num("units"), units);
        let slab = r.num("slab_allocs");
        assert!(slab >= 1_000_000, "{mode}: only {slab} slab allocations (want >= 1M; raise STRESS_UNITS); {}", ctx());
        assert!(r.num("large_folios") > 0, "{mode}: the page cache made no folio; {}", ctx());
        assert!(r.num("reclaimed_pages") > 0, "{mode}: no page-cache reclaim happened (no memory pressure); {}", ctx());
        // The workload's calibration (profile build): byte-tracked memory
        // (slab, stacks, globals, vmalloc) peaks at 12-25% of RAM, and the
        // shrinker frees vfs objects under the pressure.
        assert_eq!(r.get("profile"), Some("build"), "{}", ctx());
        let pct = r.num("tracked_peak_bytes") as f64 * 100.0 / (128u64 << 20) as f64;
        assert!((12.0..=25.0).contains(&pct), "{mode}: tracked peak {pct:.1}% of RAM, want 12-25%; {}", ctx());
        assert!(r.num("shrunk_dentries") > 0, "{mode}: the vfs shrinker freed nothing; {}", ctx());
        if *mode == "hybrid" {
            let before = r.num("ondemand_before_bytes");
            let end = r.num("ondemand_end_bytes");
            assert_eq!(end, before, "hybrid: on-demand shadow {end} B after the workload, {before} B before; {}", ctx());
            assert!(r.num("ondemand_peak_bytes") > before, "hybrid: no on-demand shadow was mapped; {}", ctx());
        }
        eprintln!(
            "stress {} {mode}: {:.1}s wall, workload {:.1}s, {} slab allocs, ondemand peak {} KiB, min free {} KiB, {} pages reclaimed, tracked peak {pct:.1}% of RAM",
            san.name(),
            out.wall.as_secs_f64(),
            r.num("workload_ns") as f64 / 1e9,
            slab,
            r.num("ondemand_peak_bytes") >> 10,
            r.num("min_free_bytes") >> 10,
            r.num("reclaimed_pages")
        );
        sums.push(r.get("checksum").unwrap_or("").to_string());
    }
    assert_eq!(sums[0], sums[1], "{}: full and hybrid built different images (checksums)", san.name());
}
