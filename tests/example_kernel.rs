//! The minimal example kernel (examples/minimal-kernel, docs/adopting.md):
//! built with a nested, clean-environment cargo into its own target
//! directory (`<this test's target dir>/example-kernel`), its symbol table
//! written in (`kasan-ksyms`, as docs/adopting.md says), booted under QEMU (TCG) in `full`,
//! `hybrid` and `off`. In `full` and `hybrid` each of its 8 bug cases must
//! give exactly one report, of the case's type, titled with the case's
//! function, valid by syzkaller's rules (the stack case on a stack of the
//! kernel's own, registered with `kernel::add_region`); `off` reports nothing. Also counts
//! the example's glue lines (target: at most 60).
//!
//! The same with inline checks (profile `inline`, feature `inline-checks`):
//! the example maps the early zero shadow before its first instrumented
//! instruction and `kernel::start` takes it over (`KernelMap::early_shadow`).
//!
//! Logs: `<target dir>/example-kernel-logs/[inline/]<mode>.log`. Needs rustup
//! (nightly) and qemu-system-x86_64; installs what it can, otherwise fails
//! naming the command.
#![cfg(target_os = "linux")]

mod common;
#[path = "common/example.rs"]
mod example;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::syzkaller;
use example::{target_dir, Checks};
use guest_driver::{boot, root, Boot, San};

/// The cases the example kernel runs, with the bug type each must report
/// (the kernel prints them too; they must agree).
const CASES: &[(&str, &str)] = &[
    ("box_oob_right", "slab-out-of-bounds"),
    ("vec_oob_right", "slab-out-of-bounds"),
    ("box_use_after_free", "slab-use-after-free"),
    ("global_oob_right", "global-out-of-bounds"),
    ("stack_oob_right", "stack-out-of-bounds"),
    ("page_heap_oob_right", "slab-out-of-bounds"),
    ("page_heap_use_after_free", "use-after-free"),
    ("heap_double_free", "double-free"),
];

/// The log between `example-case: <name>` and `example-case-end: <name>`.
fn case_log<'a>(log: &'a str, name: &str) -> &'a str {
    let start = format!("example-case: {name} expect ");
    let end = format!("example-case-end: {name}\n");
    let s = log.find(&start).unwrap_or_else(|| panic!("case {name} never started:\n{log}"));
    let e = log[s..].find(&end).unwrap_or_else(|| panic!("case {name} never ended:\n{}", &log[s..])) + s;
    &log[s..e]
}

/// Non-blank lines between the example's `adoption glue` markers.
fn glue_lines() -> usize {
    let src = std::fs::read_to_string(root().join("examples/minimal-kernel/src/main.rs")).expect("example source");
    let mut inside = false;
    let mut n = 0;
    for line in src.lines() {
        if line.contains("adoption glue: begin") {
            inside = true;
        } else if line.contains("adoption glue: end") {
            inside = false;
        } else if inside && !line.trim().is_empty() {
            n += 1;
        }
    }
    n
}

/// One build and one guest at a time (the tests of this file run in
/// parallel threads; the machine has two cores).
static ONE: Mutex<()> = Mutex::new(());

#[test]
fn example_kernel_reports_its_8_bugs_in_full_and_hybrid() {
    let glue = glue_lines();
    eprintln!("example kernel: {glue} lines of adoption glue");
    assert!(glue > 0 && glue <= 60, "the example's glue is {glue} lines (target: at most 60)");
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let elf = example::build().elf;
    reports_its_8_bugs(&elf, &target_dir().join("example-kernel-logs"));
}

#[test]
fn example_kernel_with_inline_checks_takes_over_its_early_shadow() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let elf = example::build_with(Checks::Inline).elf;
    reports_its_8_bugs(&elf, &target_dir().join("example-kernel-logs/inline"));
}

/// Boot `elf` in `full`, `hybrid` and `off` and check every case's report.
fn reports_its_8_bugs(elf: &Path, logs: &Path) {
    for mode in ["full", "hybrid", "off"] {
        let out = boot(&Boot {
            elf,
            san: San::Kasan,
            mode,
            suite: "example",
            ram_mib: 128,
            append: "kasan_multi_shot".into(),
            timeout: Duration::from_secs(300),
            log: logs.join(format!("{mode}.log")),
            icount: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.succeeded(), "{mode}: exit {} (33 = success):\n{}", out.exit, out.tail(60));
        assert!(out.log.contains("example: done"), "{mode}: did not finish:\n{}", out.tail(40));
        if mode == "off" {
            assert_eq!(out.kasan_reports(), 0, "off: no report expected:\n{}", out.log);
            continue;
        }
        assert_eq!(out.kasan_reports(), CASES.len(), "{mode}: one report per case:\n{}", out.log);
        let all = out.log.replace("\r\n", "\n");
        for (name, bug) in CASES {
            let log = case_log(&all, name);
            assert!(log.starts_with(&format!("example-case: {name} expect {bug}\n")), "{mode}: the kernel's table disagrees:\n{log}");
            let titles = syzkaller::titles(log);
            assert_eq!(titles.len(), 1, "{mode}: {name}: one report expected:\n{log}");
            assert_eq!((titles[0].bug.as_str(), titles[0].func.as_str()), (*bug, *name), "{mode}: {name}:\n{log}");
            if *name == "stack_oob_right" {
                // On the kernel's own case stack (a tracked region), not the boot stack.
                assert!(log.contains(" at addr ffffa2000000"), "{mode}: the stack case did not run on the case stack:\n{log}");
            }
        }
    }
}
