//! The KMSAN bug suite under QEMU: the KMSAN kernel boots in `full`,
//! `hybrid` and `off` with `suite=kmsan kmsan_multi_shot`. Every case of
//! the shared case table (tests/guest/src/kmsan_cases.rs, the same rows the
//! guest runs) must produce exactly its reports, each with its type, title
//! function, origin chain ("Uninit was stored to memory at:" sections and
//! how it was created) and byte range, and pass syzkaller's rules; nothing
//! else may be reported. `full` and `hybrid` must print the same reports.
//! Logs: target/guest-logs/<mode>/kmsan.log.

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

use common::syzkaller;
use guest::Sanitizer;

#[allow(dead_code)]
mod cases {
    include!("guest/src/kmsan_cases.rs");
}
use cases::{Case, Expect, KMSAN_CASES};

/// The lines of the section that starts with `header`, up to a blank line.
fn section<'a>(report: &'a str, header: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = report.lines().collect();
    match lines.iter().position(|l| *l == header) {
        Some(i) => lines[i + 1..].iter().take_while(|l| !l.is_empty()).copied().collect(),
        None => vec![],
    }
}

fn frame_is(line: &str, func: &str) -> bool {
    line.trim_start().starts_with(&format!("{func}+0x"))
}

fn check_report(case: &Case, k: usize, e: &Expect, report: &str) -> Result<(), String> {
    let t = syzkaller::check_kmsan_report(report)?;
    let what = format!("{} report {}", case.name, k + 1);
    if t.bug != e.kind || t.func != e.func {
        return Err(format!("{what}: title is {} in {}, want {} in {}", t.bug, t.func, e.kind, e.func));
    }
    let lines: Vec<&str> = report.lines().collect();
    if !lines.contains(&e.created) {
        return Err(format!("{what}: no line '{}'", e.created));
    }
    let created = section(report, e.created);
    if !e.created_in.is_empty() && !created.iter().any(|l| frame_is(l, e.created_in)) {
        return Err(format!("{what}: the creation stack does not name {}", e.created_in));
    }
    let stored: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| **l == "Uninit was stored to memory at:").map(|(i, _)| i).collect();
    if stored.len() != e.stored_in.len() {
        return Err(format!("{what}: {} 'stored to memory' sections, want {}", stored.len(), e.stored_in.len()));
    }
    for (i, f) in stored.iter().zip(e.stored_in) {
        if !lines.get(i + 1).is_some_and(|l| frame_is(l, f)) {
            return Err(format!("{what}: a 'stored to memory' section does not start in {f}"));
        }
    }
    let bytes = lines.iter().find(|l| l.starts_with("Byte ") || l.starts_with("Bytes "));
    if e.bytes.is_empty() {
        if let Some(b) = bytes {
            return Err(format!("{what}: unexpected '{b}'"));
        }
    } else {
        if bytes != Some(&e.bytes) {
            return Err(format!("{what}: bytes line {bytes:?}, want '{}'", e.bytes));
        }
        if !lines.iter().any(|l| l.starts_with("Memory access of size ")) {
            return Err(format!("{what}: no 'Memory access of size' line"));
        }
    }
    let cut = lines.contains(&"<Zero or more stacks not recorded to save memory>");
    if cut != e.cut {
        return Err(format!("{what}: chain cut note {}, want {}", cut, e.cut));
    }
    Ok(())
}

/// Boot the suite in `mode`, check every case; returns the reports with
/// addresses blanked (to compare modes).
fn check_suite(mode: &str) -> Vec<String> {
    check_suite_on(mode, 1)
}

/// [`check_suite`] on `cpus` CPUs (above 1: tasks on every CPU).
fn check_suite_on(mode: &str, cpus: u32) -> Vec<String> {
    let b = if cpus > 1 {
        guest::boot_san_smp(Sanitizer::Kmsan, cpus, mode, "kmsan", "kmsan_multi_shot smp_sched=on")
    } else {
        guest::boot_san(Sanitizer::Kmsan, mode, "kmsan", "kmsan_multi_shot")
    };
    let log = &b.log.replace("\r\n", "\n");
    let ctx = || format!("mode {mode} on {cpus} cpus, log {}:\n{}", b.path.display(), guest::excerpt(log));
    assert_eq!(b.code, 33, "the suite failed (exit {}) in {}", b.code, ctx());
    if cpus > 1 {
        assert!(log.contains(&format!("smp: {cpus} cpus up")), "{}", ctx());
        assert!(log.contains(&format!("smp: tasks run on {cpus} cpus")), "{}", ctx());
        assert!(!log.contains("runs untracked"), "a CPU without KMSAN contexts: {}", ctx());
    }
    assert!(log.contains(&format!("kmsan-suite: done mode={mode} cases={} failed_checks=0", KMSAN_CASES.len())), "{}", ctx());
    let blank = regex::Regex::new(r"[0-9a-f]{16}").unwrap();
    let mut all = vec![];
    let mut errors = vec![];
    let mut counted = 0;
    for case in KMSAN_CASES {
        let start = format!("kmsan-case: {} expect {}\n", case.name, case.expect.len());
        let end = format!("kmsan-case-end: {} reports=", case.name);
        let (Some(s), Some(e)) = (log.find(&start), log.find(&end)) else {
            errors.push(format!("{}: case markers missing", case.name));
            continue;
        };
        let seg = &log[s + start.len()..e];
        let reports = syzkaller::kmsan_reports(seg);
        counted += reports.len();
        let want = if mode == "off" { 0 } else { case.expect.len() };
        if reports.len() != want {
            errors.push(format!("{}: {} reports, want {want}", case.name, reports.len()));
            continue;
        }
        if mode == "off" {
            continue;
        }
        for (k, (e, r)) in case.expect.iter().zip(&reports).enumerate() {
            if let Err(m) = check_report(case, k, e, r) {
                errors.push(m);
            }
        }
        all.extend(reports.iter().map(|r| blank.replace_all(r, "ADDR").into_owned()));
    }
    let total = syzkaller::kmsan_reports(log).len();
    if total != counted {
        errors.push(format!("{} reports outside the cases", total - counted));
    }
    assert!(errors.is_empty(), "{}\n{}", errors.join("\n"), ctx());
    all
}

#[test]
fn guest_kmsan_suite_full_and_hybrid_agree() {
    let full = check_suite("full");
    let hybrid = check_suite("hybrid");
    assert_eq!(full.len(), KMSAN_CASES.iter().map(|c| c.expect.len()).sum::<usize>());
    for (f, h) in full.iter().zip(&hybrid) {
        assert_eq!(f, h, "full and hybrid print different reports");
    }
}

/// The suite on 4 CPUs (multi-threaded TCG, tasks on every CPU, the
/// metadata mapper's remaps shot down on every CPU): each CPU with its own
/// KMSAN contexts, the same reports as on one.
#[test]
fn guest_kmsan_suite_smp4_full_and_hybrid_agree() {
    let full = check_suite_on("full", 4);
    let hybrid = check_suite_on("hybrid", 4);
    assert_eq!(full.len(), KMSAN_CASES.iter().map(|c| c.expect.len()).sum::<usize>());
    assert_eq!(full, hybrid, "full and hybrid print different reports on 4 cpus");
}

/// Suite `smp` in the KMSAN kernel: every CPU allocates and frees slab
/// objects, pages and vmalloc areas at once, writing and checking each,
/// while the hybrid runtime remaps metadata under them (shootdowns on
/// every CPU): no report, no corruption, allocator invariants hold. 300
/// rounds per CPU (the KASAN kernel runs 2000): every page allocation and
/// free flips its metadata between the shared pages, each flip a
/// shootdown of every CPU, slow under multi-threaded TCG on two host cores.
fn check_kmsan_allocators_smp4(mode: &str) {
    let b = guest::boot_san_smp(Sanitizer::Kmsan, 4, mode, "smp", "kmsan_multi_shot smp_sched=on smp_rounds=300");
    let log = &b.log;
    let ctx = || format!("KMSAN {mode}/smp on 4 cpus (log {})\n{}", b.path.display(), guest::excerpt(log));
    assert_eq!(b.code, 33, "exit code {}: {}", b.code, ctx());
    let s = log
        .lines()
        .find_map(|l| guest_driver::parse_tagged(l, "smp-stress:"))
        .unwrap_or_else(|| panic!("no smp-stress line: {}", ctx()));
    assert_eq!(s.num("cpus"), 4, "{}", ctx());
    assert!(s.num("ops") > 0);
    for k in ["corrupt", "buddy_bad", "slab_bad", "leaked_pages"] {
        assert_eq!(s.num(k), 0, "{k}: {}", ctx());
    }
    assert!(!log.contains("BUG: KMSAN"), "a report: {}", ctx());
    for bad in ["refused:", "PANIC", "EXCEPTION", "waits for", "runs untracked"] {
        assert!(!log.contains(bad), "'{bad}' in the log: {}", ctx());
    }
    if mode == "hybrid" {
        let smp = log
            .lines()
            .find_map(|l| guest_driver::parse_tagged(l, "smp:").filter(|f| f.get("shadow").is_some()))
            .unwrap_or_else(|| panic!("no smp: shootdowns line: {}", ctx()));
        assert!(smp.num("shadow") > 0, "hybrid remapped no metadata page on 4 cpus: {}", ctx());
    }
}

#[test]
fn guest_kmsan_smp4_allocators_full() {
    check_kmsan_allocators_smp4("full");
}

#[test]
fn guest_kmsan_smp4_allocators_hybrid() {
    check_kmsan_allocators_smp4("hybrid");
}

#[test]
fn guest_kmsan_suite_off_reports_nothing() {
    check_suite("off");
}

#[test]
fn kmsan_case_table_names_each_case_once() {
    let mut names: Vec<&str> = KMSAN_CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "duplicate case names");
    // Every case of ../shared/kmsan-cases.md is in the table (28, with memset16/32/64 as three).
    for name in [
        "test_uninit_kmalloc", "test_init_kmalloc", "test_init_kzalloc", "test_uninit_stack_var", "test_init_stack_var",
        "test_params", "test_uninit_multiple_params", "test_uninit_kmsan_check_memory", "test_init_kmsan_vmap_vunmap",
        "test_init_vmalloc", "test_uninit_page", "test_uaf", "test_uaf_pages", "test_uaf_high_order_pages",
        "test_percpu_propagate", "test_printk", "test_init_memcpy", "test_memcpy_aligned_to_aligned",
        "test_memcpy_aligned_to_unaligned", "test_memcpy_initialized_gap", "test_memset16", "test_memset32",
        "test_memset64", "test_memset_on_guarded_buffer", "test_long_origin_chain", "test_stackdepot_roundtrip",
        "test_unpoison_memory", "test_copy_from_kernel_nofault",
    ] {
        assert!(names.contains(&name), "{name} missing from the case table");
    }
}
