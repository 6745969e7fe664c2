//! The test guest's allocators on 4 CPUs at once (suite `smp`,
//! tests/guest/src/smp_stress.rs): every CPU allocates and frees kmalloc
//! objects, page blocks, vmalloc areas and objects of a shared cache,
//! each filled with its own byte and checked before it is freed, under
//! multi-threaded TCG, in `full` and `hybrid`. Requires: 4 CPUs up, every
//! operation done, no object touched by another CPU, the buddy and slab
//! invariants, no sanitizer report, and shootdowns served by every other
//! CPU (the shadow remaps and vmalloc unmaps of one CPU reach the others).
//!
//! Before that, the guest checks that a shootdown reaches the other CPUs'
//! TLBs (`smp-tlb:`: every AP reads a page, the boot CPU remaps it and
//! shoots it down, every AP must read the new frame); a negative control
//! (`smp_tlb_control=on`: local flush only) shows that the APs then read
//! the old frame through stale entries, so the check can fail.
//!
//! Also: with `smp_sched=on` (tasks on every CPU) the guest's selftests
//! (mm, vmalloc, tasks: spawn, join, call_rcu, workqueue) pass, and the APs
//! ran some of the tasks.
//!
//! And the race stress test (suite `race`, [`check_race`]): planted bugs
//! reported with their type and nothing else while the allocators flip
//! hybrid's shadow pages on every CPU.
//!
//! And the kernel-build workload with its `make -j4` jobs on all 4 CPUs
//! (`smp_sched=on`, [`check_workload`]), small enough for CI (4 units),
//! at 64 MiB with large object files (`obj=60`) so that page reclaim and
//! the vfs shrinker run from every CPU too: no sanitizer report, the
//! guest's allocator invariants hold, and both modes build the same image.
//! Log: target/guest-logs/smp4/<mode>/workload.log. It runs under
//! `-icount` (the CPUs round-robin, deterministic; ~30 s for both modes):
//! multi-threaded, hybrid's ~7,000 shootdowns each waited for three vCPU
//! threads on this loaded 2-core host (4.5 min at load 12);
//! `GUEST_SMP_WL_MTTCG=1` runs it that way.
//!
//! Logs: target/guest-logs/smp4/<mode>/<suite>.log. The run is short
//! (`smp_rounds=150` per CPU): on a 2-core host each shootdown waits for
//! three vCPU threads to be scheduled.
#![cfg(target_os = "linux")]

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

const CPUS: u32 = 4;
const ROUNDS: u64 = 150;

fn check_smp_stress(mode: &str) {
    let b = guest::boot_smp(CPUS, mode, "smp", &format!("smp_rounds={ROUNDS}"));
    let log = &b.log;
    let ctx = || format!("guest {mode}/smp on {CPUS} cpus (log {})\n{}", b.path.display(), guest::excerpt(log));
    assert_eq!(b.code, 33, "exit code {} (want 33): {}", b.code, ctx());
    let up = format!("smp: {CPUS} cpus up");
    assert!(log.lines().any(|l| l.starts_with(&up)), "no '{up}' line: {}", ctx());
    let line = |tag: &str, key: &str| {
        log.lines()
            .find_map(|l| guest_driver::parse_tagged(l, tag).filter(|f| f.get(key).is_some()))
            .unwrap_or_else(|| panic!("no '{tag} {key}=' line: {}", ctx()))
    };
    let tlb = line("smp-tlb:", "stale");
    assert_eq!(tlb.num("control"), 0);
    assert_eq!(tlb.num("checked"), u64::from(CPUS - 1), "every AP took part in the TLB check: {}", ctx());
    assert_eq!(tlb.num("stale"), 0, "an AP read a remapped page through a stale TLB entry: {}", ctx());
    let st = line("smp-stress:", "ops");
    assert_eq!(st.num("cpus"), u64::from(CPUS));
    assert_eq!(st.num("rounds"), ROUNDS);
    // Every CPU did every round (an allocation may fail only when memory
    // runs out, which 24 live objects per CPU never make it do).
    assert_eq!(st.num("ops"), ROUNDS * u64::from(CPUS), "operations lost: {}", ctx());
    assert_eq!(st.num("corrupt"), 0, "an object lost its bytes: {}", ctx());
    assert_eq!(st.num("buddy_bad"), 0, "buddy invariants: {}", ctx());
    assert_eq!(st.num("slab_bad"), 0, "slab invariants: {}", ctx());
    assert_eq!(b.log.matches("BUG: KASAN").count(), 0, "sanitizer report: {}", ctx());
    for bad in ["refused:", "PANIC", "EXCEPTION", "waits for"] {
        assert!(!log.contains(bad), "'{bad}' in the log: {}", ctx());
    }
    let sd = line("smp:", "shootdowns");
    let (shootdowns, served, shadow) = (sd.num("shootdowns"), sd.num("served"), sd.num("shadow"));
    eprintln!(
        "guest {mode}/smp on {CPUS} cpus: {} ops, {shootdowns} shootdowns ({shadow} shadow remaps), {served} served, {:.1}s",
        st.num("ops"),
        b.secs
    );
    assert!(shootdowns > 0, "vfree on one CPU must shoot the others down: {}", ctx());
    assert_eq!(served, shootdowns * u64::from(CPUS - 1), "every shootdown is served once by each other cpu");
    if mode == "hybrid" {
        assert!(shadow > 0, "hybrid's shadow remaps must shoot the other cpus down: {}", ctx());
    }
}

#[test]
fn guest_smp4_allocators_full() {
    check_smp_stress("full");
}

#[test]
fn guest_smp4_allocators_hybrid() {
    check_smp_stress("hybrid");
}

/// The selftests with tasks on every CPU.
fn check_selftest_sched(mode: &str) {
    let b = guest::boot_smp(CPUS, mode, "selftest", "smp_sched=on");
    let ctx = || format!("guest {mode}/selftest on {CPUS} cpus (log {})\n{}", b.path.display(), guest::excerpt(&b.log));
    assert_eq!(b.code, 33, "exit code {} (want 33): {}", b.code, ctx());
    assert!(b.log.contains("guest: suite selftest PASSED"), "{}", ctx());
    assert!(b.log.contains(&format!("smp: tasks run on {CPUS} cpus")), "{}", ctx());
    for bad in ["BUG: KASAN", "refused:", "selftest: FAILED", "waits for"] {
        assert!(!b.log.contains(bad), "'{bad}' in the log: {}", ctx());
    }
    let line = b
        .log
        .lines()
        .find_map(|l| l.strip_prefix("smp: task switches per cpu:"))
        .unwrap_or_else(|| panic!("no task-switch line: {}", ctx()));
    let per_cpu: Vec<u64> = line.split_whitespace().map(|w| w.parse().unwrap()).collect();
    assert_eq!(per_cpu.len(), CPUS as usize);
    eprintln!("guest {mode}/selftest on {CPUS} cpus, smp_sched=on: task switches per cpu {per_cpu:?}, {:.1}s", b.secs);
    // About 25 tasks are spawned while the APs idle: some run there.
    assert!(per_cpu[1..].iter().sum::<u64>() > 0, "no task ran on an AP: {}", ctx());
}

#[test]
fn guest_smp4_sched_selftest_full() {
    check_selftest_sched("full");
}

#[test]
fn guest_smp4_sched_selftest_hybrid() {
    check_selftest_sched("hybrid");
}

/// The negative control of the TLB check: with a local flush only, the
/// APs read the old frame through their stale TLB entries (multi-threaded
/// TCG keeps one software TLB per vCPU, as hardware does). At least one AP
/// must: otherwise the check above proves nothing.
#[test]
fn guest_smp4_tlb_check_control() {
    // Mode off: its own log (smp4/off/smp.log); the TLB does not care.
    let b = guest::boot_smp(CPUS, "off", "smp", "smp_rounds=10 smp_tlb_control=on");
    let ctx = || format!("(log {})\n{}", b.path.display(), guest::excerpt(&b.log));
    assert_eq!(b.code, 33, "exit code {} (want 33): {}", b.code, ctx());
    let tlb = b
        .log
        .lines()
        .find_map(|l| guest_driver::parse_tagged(l, "smp-tlb:"))
        .unwrap_or_else(|| panic!("no smp-tlb line: {}", ctx()));
    assert_eq!(tlb.num("control"), 1);
    assert_eq!(tlb.num("checked"), u64::from(CPUS - 1));
    eprintln!("TLB control: {} of {} APs read the old frame after a local-only flush", tlb.num("stale"), CPUS - 1);
    assert!(tlb.num("stale") >= 1, "no AP kept a stale entry: the check cannot tell a shootdown from none: {}", ctx());
}

/// Operations per CPU of the race test in `cargo test` (about 40 s of
/// racing on 4 CPUs here); `GUEST_RACE_OPS` for a long run, e.g.
/// `GUEST_RACE_OPS=200000 cargo test --test guest_smp race -- --nocapture`.
const RACE_OPS: u64 = 1500;

/// The race stress test of issue 9 (suite `race`, tests/guest/src/smp_race.rs):
/// on 4 CPUs, slab objects, pages and vmalloc areas come and go in the
/// same 32 KiB blocks (`pageblocks=off`) while the CPUs access each
/// other's live objects through instrumented checks; every bug a CPU
/// plants on its own memory (past a live object, after a free) must be
/// reported with its type and nothing else. Besides the guest's own
/// matching (per CPU, through its console tap), the log's report titles
/// are counted here by type against what was planted.
fn check_race(mode: &str) {
    let ops = std::env::var("GUEST_RACE_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(RACE_OPS);
    let plant = std::env::var("GUEST_RACE_PLANT").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(40);
    let seed = std::env::var("GUEST_RACE_SEED").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    let append = format!("kasan_multi_shot pageblocks=off race_ops={ops} race_plant={plant} seed={seed}");
    let b = guest::boot_smp(CPUS, mode, "race", &append);
    let log = &b.log;
    let ctx = || format!("guest {mode}/race on {CPUS} cpus, {append} (log {})\n{}", b.path.display(), guest::excerpt(log));
    assert!(b.path.ends_with(format!("smp{CPUS}/{mode}/race.log")), "log at {}", b.path.display());
    assert_eq!(b.code, 33, "exit code {} (want 33): {}", b.code, ctx());
    let lines: Vec<_> = log.lines().filter_map(|l| guest_driver::parse_tagged(l, "smp-race:")).filter(|f| f.get("planted").is_some()).collect();
    assert_eq!(lines.len(), 1, "one smp-race line per run: {}", ctx());
    let r = &lines[0];
    let (transitions, shootdowns, planted, reported, unexpected) =
        (r.num("transitions"), r.num("shootdowns"), r.num("planted"), r.num("reported"), r.num("unexpected"));
    let info = log
        .lines()
        .find_map(|l| guest_driver::parse_tagged(l, "smp-race-info:"))
        .unwrap_or_else(|| panic!("no smp-race-info line: {}", ctx()));
    eprintln!(
        "guest {mode}/race on {CPUS} cpus: transitions={transitions} shootdowns={shootdowns} planted={planted} \
         reported={reported} unexpected={unexpected}; {} ops, {} neighbour accesses, {:.1}s racing, {:.1}s boot",
        info.num("ops"),
        info.num("neighbour_accesses"),
        info.num("ms") as f64 / 1000.0,
        b.secs
    );
    assert_eq!(info.num("cpus"), u64::from(CPUS));
    assert_eq!(info.num("ops"), ops * u64::from(CPUS), "every CPU did every operation: {}", ctx());
    assert!(planted > 0, "no bug planted: {}", ctx());
    assert_eq!(unexpected, 0, "unexpected reports: {}", ctx());
    assert_eq!(planted, reported, "planted bugs without their report: {}", ctx());
    assert_eq!(info.num("missed"), 0);
    assert_eq!(info.num("buddy_bad"), 0, "buddy invariants: {}", ctx());
    assert_eq!(info.num("slab_bad"), 0, "slab invariants: {}", ctx());
    assert!(info.num("neighbour_accesses") > 0, "no CPU accessed a neighbour's object: {}", ctx());
    // The log's reports, by type, are the planted bugs.
    let titles = |t: &str| log.lines().filter(|l| l.starts_with(&format!("BUG: KASAN: {t} in "))).count() as u64;
    assert_eq!(log.matches("BUG: KASAN: ").count() as u64, planted, "reports in the log: {}", ctx());
    assert_eq!(titles("slab-out-of-bounds"), info.num("slab_oob") + info.num("large_oob"), "{}", ctx());
    assert_eq!(titles("vmalloc-out-of-bounds"), info.num("vmalloc_oob") + info.num("vmalloc_uaf"), "{}", ctx());
    assert_eq!(titles("slab-use-after-free"), info.num("slab_uaf"), "{}", ctx());
    assert_eq!(titles("use-after-free"), info.num("page_uaf"), "{}", ctx());
    for bad in ["refused:", "PANIC", "EXCEPTION", "waits for"] {
        assert!(!log.contains(bad), "'{bad}' in the log: {}", ctx());
    }
    assert!(transitions > 0, "no shadow page changed backing: {}", ctx());
    assert!(shootdowns > 0, "no shootdown: {}", ctx());
    if mode == "hybrid" {
        // Blocks flip between the shared pages, CONSULT and private ones
        // (vmalloc areas alone give some in full too).
        assert!(transitions >= ops / 10, "hybrid: only {transitions} transitions in {ops} operations per cpu: {}", ctx());
    }
}

#[test]
fn guest_smp4_race_full() {
    check_race("full");
}

#[test]
fn guest_smp4_race_hybrid() {
    check_race("hybrid");
}

/// Units of the 4-CPU workload in `cargo test` (`GUEST_SMP_WL_UNITS` for more).
const WL_UNITS: u64 = 4;

/// The workload on 4 CPUs in `mode` (see the header); returns its checksum.
fn check_workload(mode: &str) -> String {
    let units = std::env::var("GUEST_SMP_WL_UNITS").ok().and_then(|v| v.parse().ok()).unwrap_or(WL_UNITS);
    let append = format!("units={units} jobs=4 files=1000 obj=60 samples=20 smp_sched=on");
    let icount = std::env::var("GUEST_SMP_WL_MTTCG").map_or(true, |v| v != "1");
    let b = guest::boot_smp_mib(CPUS, mode, "workload", &append, 64, icount);
    let log = &b.log;
    let ctx = || format!("guest {mode}/workload on {CPUS} cpus, {append} (log {})\n{}", b.path.display(), guest::excerpt(log));
    assert!(b.path.ends_with(format!("smp{CPUS}/{mode}/workload.log")), "log at {}", b.path.display());
    assert_eq!(b.code, 33, "exit code {} (want 33): {}", b.code, ctx());
    assert!(log.contains(&format!("smp: tasks run on {CPUS} cpus")), "{}", ctx());
    for bad in ["BUG: KASAN", "refused:", "PANIC", "EXCEPTION", "waits for", "wl-error", "wl-oom"] {
        assert!(!log.contains(bad), "'{bad}' in the log: {}", ctx());
    }
    let r = log
        .lines()
        .find_map(|l| guest_driver::parse_tagged(l, "wl-result"))
        .unwrap_or_else(|| panic!("no wl-result line: {}", ctx()));
    assert_eq!(r.get("mode"), Some(mode));
    assert_eq!(r.num("cpus"), u64::from(CPUS));
    assert_eq!(r.num("jobs_on_cpus"), u64::from(CPUS), "the jobs must run on every CPU: {}", ctx());
    assert_eq!(r.num("units"), units);
    assert_eq!(r.get("invariants"), Some("ok"), "workload invariants (leaks, every unit built): {}", ctx());
    assert_eq!(r.num("buddy_bad"), 0, "buddy invariants: {}", ctx());
    assert_eq!(r.num("slab_bad"), 0, "slab invariants: {}", ctx());
    assert_eq!(r.num("reports"), 0, "runtime report count: {}", ctx());
    assert_eq!(r.num("unchecked_events"), 0, "pages that went without byte shadow: {}", ctx());
    assert!(r.num("reclaimed_pages") > 0, "no page reclaim at 64 MiB: {}", ctx());
    assert!(r.num("shrunk_dentries") > 0, "the vfs shrinker freed nothing: {}", ctx());
    let per_cpu: Vec<u64> = log
        .lines()
        .find_map(|l| l.strip_prefix("smp: task switches per cpu:"))
        .unwrap_or_else(|| panic!("no task-switch line: {}", ctx()))
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(per_cpu.len(), CPUS as usize);
    assert!(per_cpu[1..].iter().all(|&n| n > 0), "an AP ran no task: {per_cpu:?}: {}", ctx());
    let (shootdowns, shadow, ipis) = (r.num("shootdowns"), r.num("shootdowns_shadow"), r.num("shootdown_ipis"));
    assert!(shootdowns > 0, "vfree on one CPU must shoot the others down: {}", ctx());
    if mode == "hybrid" {
        assert!(shadow > 0, "hybrid's shadow remaps must shoot the other cpus down: {}", ctx());
    }
    eprintln!(
        "guest {mode}/workload on {CPUS} cpus: {units} units, {} slab allocs, {} pages reclaimed, {shootdowns} shootdowns ({shadow} shadow, {ipis} IPIs served), task switches {per_cpu:?}, workload {:.1}s, {:.1}s boot",
        r.num("slab_allocs"),
        r.num("reclaimed_pages"),
        r.num("workload_ns") as f64 / 1e9,
        b.secs
    );
    r.get("checksum").unwrap_or_default().to_string()
}

#[test]
fn guest_smp4_workload_full_and_hybrid() {
    let full = check_workload("full");
    let hybrid = check_workload("hybrid");
    assert_eq!(full, hybrid, "full and hybrid built different images on {CPUS} cpus (checksums)");
}
