//! The bug suite in the QEMU test guest: builds the guest (the guest driver,
//! nested cargo with a cleaned environment and its own target directory),
//! boots suite `kasan` in `full`, `hybrid` and `off`, and checks the serial
//! log: per case the exact bug types in order, each report's title
//! `BUG: KASAN: <type> in <case>` and syzkaller validity, no report anywhere
//! else; in `off` no report at all and the end reached. Also: the selftests
//! pass in every mode without a report, and the boot-time and metadata
//! lines exist with hybrid's metadata far below full's.
//!
//! On 2 and 4 CPUs (multi-threaded TCG; the suite runs on the boot CPU while the
//! other three are up and take the TLB shootdowns of every remap): in
//! `full` and `hybrid` the same verdict per case as on one CPU, `smp: 4 cpus
//! up`, and every shootdown served by each other CPU.
//!
//! Logs: target/guest-logs/<mode>/<suite>.log, on 4 CPUs
//! target/guest-logs/smp4/<mode>/<suite>.log. Needs rustup (nightly) and
//! qemu-system-x86_64; installs what it can, otherwise fails naming the
//! command.
#![cfg(target_os = "linux")]

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

use common::syzkaller;
use guest_driver::Checks;

/// The case table the guest runs (one row per case, its bug types in
/// order): the same file, not a copy.
#[allow(dead_code)]
mod cases {
    include!("guest/src/kasan_cases.rs");
}
use cases::KASAN_CASES;

/// One case's part of the log.
struct Segment<'a> {
    name: &'a str,
    expect: Vec<&'a str>,
    text: String,
}

/// Split the log at `kasan-case:` markers; returns (text before the first
/// marker and after the last case's end, segments).
fn segments(log: &str) -> (String, Vec<Segment<'_>>) {
    let mut outside = String::new();
    let mut segs: Vec<Segment> = vec![];
    let mut open = false;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("kasan-case: ") {
            let (name, exp) = rest.split_once(" expect ").unwrap_or((rest, "none"));
            let expect = if exp.trim() == "none" { vec![] } else { exp.trim().split(',').collect() };
            segs.push(Segment { name, expect, text: String::new() });
            open = true;
            continue;
        }
        if line.starts_with("kasan-case-end: ") {
            open = false;
            continue;
        }
        let buf = if open { &mut segs.last_mut().unwrap().text } else { &mut outside };
        buf.push_str(line);
        buf.push('\n');
    }
    (outside, segs)
}

fn check_kasan_suite(mode: &str) {
    check_kasan_suite_on(mode, 1);
}

/// One case's verdict: its name and the bug types reported in it, in order.
type Verdict = (String, Vec<String>);

/// Boot the bug suite in `mode` on `smp` CPUs, check its log against the
/// table (see the file's header) and return every case's verdict.
fn check_kasan_suite_on(mode: &str, smp: u32) -> (guest::Boot, Vec<Verdict>) {
    check_kasan_suite_with(mode, smp, Checks::Outline, "")
}

/// The verdicts of one CPU in `mode`, booted once per test binary.
fn one_cpu_verdicts(mode: &str) -> Vec<Verdict> {
    static ONE: std::sync::Mutex<Vec<(String, Vec<Verdict>)>> = std::sync::Mutex::new(Vec::new());
    if let Some((_, v)) = ONE.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(m, _)| m == mode) {
        return v.clone();
    }
    let (_, v) = check_kasan_suite_on(mode, 1);
    ONE.lock().unwrap_or_else(|e| e.into_inner()).push((mode.to_string(), v.clone()));
    v
}

/// [`check_kasan_suite_on`] on the kernel built with `checks` (inline:
/// cargo profile `inline`, log under target/guest-logs/inline/), with
/// extra command-line words.
fn check_kasan_suite_with(mode: &str, smp: u32, checks: Checks, extra: &str) -> (guest::Boot, Vec<Verdict>) {
    let b = guest::boot_checks(checks, smp, mode, "kasan", &format!("kasan_multi_shot {extra}"));
    let verdicts = check_kasan_log(mode, &b);
    (b, verdicts)
}

fn check_kasan_log(mode: &str, b: &guest::Boot) -> Vec<Verdict> {
    let log = &b.log;
    let mut verdicts = vec![];
    macro_rules! fail {
        ($($a:tt)*) => {
            panic!("guest {mode}/kasan: {}\n(log: {})", format!($($a)*), b.path.display())
        };
    }
    if b.code != 33 {
        fail!("QEMU exit code {} (want 33)\n--- log ---\n{}", b.code, guest::excerpt(log));
    }
    let done = format!("kasan-suite: done mode={mode} cases={} failed_checks=0", KASAN_CASES.len());
    if !log.contains(&done) {
        let bad: Vec<&str> = log.lines().filter(|l| l.contains("kasan-check-failed") || l.starts_with("kasan-suite:")).collect();
        fail!("no '{done}' line; suite lines:\n{}", bad.join("\n"));
    }
    for bad in ["kasan-check-failed", "refused:", "Kernel panic", "PANIC"] {
        if let Some(l) = log.lines().find(|l| l.contains(bad)) {
            fail!("unexpected line: {l}");
        }
    }
    let (outside, segs) = segments(log);
    if outside.contains("BUG: KASAN") {
        fail!("report outside every case:\n{}", guest::excerpt(&outside));
    }
    let names: Vec<&str> = segs.iter().map(|s| s.name).collect();
    let want: Vec<&str> = KASAN_CASES.iter().map(|c| c.name).collect();
    assert_eq!(names, want, "guest {mode}: case list differs from the table");
    for (seg, case) in segs.iter().zip(KASAN_CASES) {
        let (name, types) = (case.name, case.expect);
        assert_eq!(seg.expect, types, "guest {mode}: marker of {name} expects other types than the table");
        let reports = syzkaller::reports(&seg.text);
        let got: Vec<String> = if mode == "off" {
            if seg.text.contains("BUG: KASAN") || !reports.is_empty() {
                fail!("report in off mode in case {name}:\n{}", guest::excerpt(&seg.text));
            }
            verdicts.push((name.to_string(), vec![]));
            continue;
        } else {
            let mut titles = vec![];
            for r in &reports {
                let t = syzkaller::check_report(r).unwrap_or_else(|e| fail!("case {name}: {e}"));
                if t.func != *name {
                    fail!("case {name}: title names {} instead of the case:\n{r}", t.func);
                }
                let title = format!("BUG: KASAN: {} in {name}+", t.bug);
                if !r.contains(&title) {
                    fail!("case {name}: no '{title}' line:\n{r}");
                }
                titles.push(t.bug);
            }
            titles
        };
        if got != types {
            fail!(
                "case {name}: bug types {got:?}, want {types:?}\n--- case log ---\n{}",
                guest::excerpt(&seg.text)
            );
        }
        if seg.text.matches("BUG: KASAN").count() != types.len() {
            fail!("case {name}: a report outside the ===== rules\n{}", guest::excerpt(&seg.text));
        }
        verdicts.push((name.to_string(), got));
    }
    check_meta_lines(mode, log);
    verdicts
}

fn check_meta_lines(mode: &str, log: &str) -> usize {
    let meta = guest::field(log, "kasan-meta:", "metadata_init_bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("guest {mode}: no 'kasan-meta: ... metadata_init_bytes=N' line"));
    assert_eq!(guest::field(log, "kasan-meta:", "mode"), Some(mode));
    let boot = guest::field(log, "kasan-boot:", "boot_ms").unwrap_or_else(|| panic!("guest {mode}: no 'kasan-boot: ... boot_ms=' line"));
    eprintln!("guest {mode}: metadata at init {} KiB, boot to suite {boot} ms", meta >> 10);
    // The boot line comes before the first suite line.
    let bpos = log.find("kasan-boot:").unwrap();
    let spos = log.find("guest: suite ").expect("no 'guest: suite' line");
    assert!(bpos < spos, "guest {mode}: the boot-time line must precede the first suite line");
    meta
}

#[test]
fn guest_kasan_suite_full() {
    check_kasan_suite("full");
}

#[test]
fn guest_kasan_suite_hybrid() {
    check_kasan_suite("hybrid");
}

/// The bug suite on `cpus` CPUs gives the verdicts of one CPU; the APs are up
/// and each serves every shootdown; hybrid's shadow remaps shoot them down.
fn check_kasan_suite_smp(mode: &str, cpus: u32) {
    let one = one_cpu_verdicts(mode);
    let (b, many) = check_kasan_suite_on(mode, cpus);
    let up = format!("smp: {cpus} cpus up");
    assert!(b.log.lines().any(|l| l.starts_with(&up)), "guest {mode}/kasan on {cpus} cpus: no '{up}' line\n{}", guest::excerpt(&b.log));
    for ((name, v1), (_, vn)) in one.iter().zip(&many) {
        assert_eq!(vn, v1, "guest {mode}/kasan: case {name} on {cpus} cpus reports {vn:?}, on one cpu {v1:?}");
    }
    assert_eq!(many.len(), one.len());
    let line = b
        .log
        .lines()
        .find_map(|l| guest_driver::parse_tagged(l, "smp:").filter(|f| f.get("shootdowns").is_some()))
        .unwrap_or_else(|| panic!("guest {mode}/kasan on {cpus} cpus: no 'smp: shootdowns=' line ({})", b.path.display()));
    let (shootdowns, served, shadow) = (line.num("shootdowns"), line.num("served"), line.num("shadow"));
    eprintln!("guest {mode}/kasan on {cpus} cpus: {shootdowns} shootdowns ({shadow} for shadow remaps), {served} served");
    assert_eq!(line.num("cpus"), u64::from(cpus));
    assert_eq!(line.num("page") + line.num("full"), shootdowns);
    assert_eq!(served, shootdowns * u64::from(cpus - 1), "guest {mode}: every shootdown is served once by each other cpu");
    assert!(shadow <= shootdowns);
    if mode == "hybrid" {
        // The suite's hybrid cases move shadow pages between shared and
        // private: each remap is a shootdown of the other CPUs.
        assert!(shadow > 0, "guest hybrid/kasan on {cpus} cpus: no shadow remap shot the other cpus down");
    }
}

/// The bug suite on 4 CPUs with tasks on every CPU (`smp_sched=on`: the
/// suite's tasks, workqueue and RCU callbacks may run on the APs): the
/// verdicts of one CPU.
fn check_kasan_suite_sched(mode: &str) {
    let one = one_cpu_verdicts(mode);
    let (b, many) = check_kasan_suite_with(mode, 4, Checks::Outline, "smp_sched=on");
    assert!(b.log.contains("smp: tasks run on 4 cpus"), "tasks not spread:\n{}", guest::excerpt(&b.log));
    assert_eq!(many, one, "{mode}: verdicts on 4 cpus with smp_sched=on differ from one cpu's");
}

#[test]
fn guest_kasan_suite_smp4_sched_full() {
    check_kasan_suite_sched("full");
}

#[test]
fn guest_kasan_suite_smp4_sched_hybrid() {
    check_kasan_suite_sched("hybrid");
}

#[test]
fn guest_kasan_suite_smp4_full() {
    check_kasan_suite_smp("full", 4);
}

#[test]
fn guest_kasan_suite_smp4_hybrid() {
    check_kasan_suite_smp("hybrid", 4);
}

#[test]
fn guest_kasan_suite_smp2_full() {
    check_kasan_suite_smp("full", 2);
}

#[test]
fn guest_kasan_suite_smp2_hybrid() {
    check_kasan_suite_smp("hybrid", 2);
}

#[test]
fn guest_kasan_suite_off() {
    check_kasan_suite("off");
}

/// The guest's own selftests (mm, vmalloc, tasks) pass in every mode with
/// no report; hybrid's metadata at init is far below full's.
#[test]
fn guest_selftest_all_modes_no_report() {
    let mut meta = std::collections::HashMap::new();
    for mode in ["off", "full", "hybrid"] {
        let b = guest::boot(mode, "selftest", "");
        let ok = b.code == 33 && b.log.contains("guest: suite selftest PASSED");
        assert!(ok, "guest {mode}/selftest: exit {} (want 33)\n{}", b.code, guest::excerpt(&b.log));
        for bad in ["BUG: KASAN", "refused:", "selftest: FAILED"] {
            assert!(!b.log.contains(bad), "guest {mode}/selftest: '{bad}' in the log\n{}", guest::excerpt(&b.log));
        }
        meta.insert(mode, check_meta_lines(mode, &b.log));
    }
    let (full, hybrid) = (meta["full"], meta["hybrid"]);
    assert!(
        hybrid * 10 < full,
        "hybrid metadata at init ({hybrid} bytes) should be far below full's ({full} bytes)"
    );
}
