//! The bug suite in the QEMU test guest: builds the guest (the guest driver,
//! nested cargo with a cleaned environment and its own target directory),
//! boots suite `kasan` in `full`, `hybrid` and `off`, and checks the serial
//! log: per case the exact bug types in order, each report's title
//! `BUG: KASAN: <type> in <case>` and syzkaller validity, no report anywhere
//! else; in `off` no report at all and the end reached. Also: the selftests
//! pass in every mode without a report, and the boot-time and metadata
//! lines exist with hybrid's metadata far below full's.
//!
//! Logs: target/guest-logs/<mode>/<suite>.log. Needs rustup (nightly) and
//! qemu-system-x86_64; installs what it can, otherwise fails naming the
//! command.
#![cfg(target_os = "linux")]

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

use common::syzkaller;

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
    let b = guest::boot(mode, "kasan", "kasan_multi_shot");
    let log = &b.log;
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
    }
    check_meta_lines(mode, log);
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
