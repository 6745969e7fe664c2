//! kasan-symbolize on the test guest's ELF: a known function's address, and
//! a report from the guest's bug suite, resolve to the function and its
//! file:line. Needs `--features tools` (and builds the guest like
//! tests/guest_suite.rs).
#![cfg(target_os = "linux")]

#[path = "common/guest.rs"]
mod guest;

use std::io::Write;
use std::process::{Command, Stdio};

const TOOL: &str = env!("CARGO_BIN_EXE_kasan-symbolize");

/// Address of the function whose demangled name ends in `suffix`, from the
/// `.ksyms` table in the ELF.
fn ksyms_addr(elf: &[u8], suffix: &str) -> u64 {
    // The header string also appears in the guest's code: try every one.
    let mut from = 0;
    while let Some(p) = elf[from..].windows(7).position(|w| w == b"KSYMS1\n") {
        let pos = from + p;
        let end = elf[pos..].iter().position(|&c| c == 0).map_or(elf.len(), |e| pos + e);
        let text = String::from_utf8_lossy(&elf[pos + 7..end]);
        if let Some(line) = text.lines().find(|l| l.ends_with(suffix)) {
            return u64::from_str_radix(line.split(' ').next().unwrap(), 16).unwrap();
        }
        from = pos + 7;
    }
    panic!("{suffix} not in the guest ELF's .ksyms table")
}

#[test]
fn symbolizes_a_known_function_address() {
    guest::build();
    let elf = guest::elf();
    let bytes = std::fs::read(&elf).expect("read the guest ELF");
    let addr = ksyms_addr(&bytes, "::kasan_suite::kmalloc_oob_right");
    // As a return address: the call site is looked up at addr - 1, so give
    // the first byte after the function's entry.
    let out = Command::new(TOOL).arg(&elf).arg(format!("{:x}", addr + 1)).output().expect("run kasan-symbolize");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kasan-symbolize failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("kasan_suite::kmalloc_oob_right"), "function not named:\n{text}");
    assert!(text.contains("tests/guest/src/kasan_suite.rs:"), "no file:line:\n{text}");
}

#[test]
fn annotates_a_guest_report() {
    let b = guest::boot("hybrid", "kasan", "kasan_multi_shot");
    assert_eq!(b.code, 33, "guest hybrid/kasan failed:\n{}", guest::excerpt(&b.log));
    // The first report of the kmalloc_oob_right case.
    let start = b.log.find("BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right+").expect("no kmalloc_oob_right report");
    let report: String = b.log[start..].lines().take(12).collect::<Vec<_>>().join("\n");
    let mut child = Command::new(TOOL)
        .arg(guest::elf())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run kasan-symbolize");
    child.stdin.take().unwrap().write_all(report.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let title = text.lines().position(|l| l.starts_with("BUG: KASAN:")).unwrap();
    let next = text.lines().nth(title + 1).unwrap_or("");
    assert!(next.trim_start().starts_with("= "), "the title's address is not resolved:\n{text}");
    let resolved = text
        .lines()
        .any(|l| l.contains("kasan_suite::kmalloc_oob_right at ") && l.contains("tests/guest/src/kasan_suite.rs:"));
    assert!(resolved, "title frame not resolved to kasan_suite.rs:\n{text}");
}
