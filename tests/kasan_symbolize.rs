//! kasan-symbolize on the test guest's ELF: a known function's address, and
//! a report from the guest's bug suite, resolve to the function and its
//! file:line. And on another kernel, the minimal example: its log, booted
//! once without its symbol table written in (titles and frames are raw
//! addresses) and once with it, is annotated from its ELF. Needs
//! `--features tools` (and builds the guest like tests/guest_suite.rs).
#![cfg(target_os = "linux")]

#[path = "common/example.rs"]
mod example;
#[path = "common/guest.rs"]
mod guest;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

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

/// Run kasan-symbolize on `elf` with `log` on stdin; its output.
fn symbolize_log(elf: &std::path::Path, log: &str) -> String {
    let mut child = Command::new(TOOL)
        .arg(elf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run kasan-symbolize");
    let mut stdin = child.stdin.take().unwrap();
    let input = log.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "kasan-symbolize failed on {}", elf.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The example kernel's cases (tests/example_kernel.rs has their bug types).
const EXAMPLE_CASES: &[&str] = &[
    "box_oob_right",
    "vec_oob_right",
    "box_use_after_free",
    "global_oob_right",
    "stack_oob_right",
    "page_heap_oob_right",
    "page_heap_use_after_free",
    "heap_double_free",
];

/// Every report title of `annotated` is followed by its resolution, and
/// each case's function is named with its line in the example's source: in
/// the title's resolution, or (a kernel without symbols titles a double
/// free with its allocator's frame, which only names can skip) in a frame's.
fn assert_titles_resolved(annotated: &str, raw_titles: bool) {
    let lines: Vec<&str> = annotated.lines().collect();
    let titles: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("BUG: KASAN:")).collect();
    assert_eq!(titles.len(), EXAMPLE_CASES.len(), "one report per case expected:\n{annotated}");
    for (k, (&i, case)) in titles.iter().zip(EXAMPLE_CASES).enumerate() {
        let title = lines[i];
        if raw_titles {
            assert!(title.contains(" in 0x"), "without symbols the title is a raw address: {title}");
        } else {
            assert!(title.contains(&format!(" in {case}+0x")), "title does not name {case}: {title}");
        }
        let names_case = |l: &&str| l.contains(&format!("minimal_kernel::{case} at ")) && l.contains("examples/minimal-kernel/src/main.rs:");
        let resolved: Vec<&str> =
            lines[i + 1..].iter().take_while(|l| l.starts_with("    = ") || l.starts_with("      (inlined")).copied().collect();
        assert!(!resolved.is_empty(), "title not resolved: {title}\n{annotated}");
        let end = titles.get(k + 1).copied().unwrap_or(lines.len());
        let ok = if raw_titles && *case == "heap_double_free" {
            lines[i..end].iter().any(names_case)
        } else {
            resolved.iter().any(names_case)
        };
        assert!(ok, "{case}: not resolved to main.rs: {title}\n{}", lines[i..end].join("\n"));
    }
}

#[test]
fn annotates_the_example_kernels_reports_with_and_without_its_symbol_table() {
    let built = example::build();
    let logs = example::target_dir().join("example-kernel-logs");
    for (elf, name, raw) in [(&built.linked, "hybrid-nosyms", true), (&built.elf, "hybrid-ksyms", false)] {
        let out = guest_driver::boot(&guest_driver::Boot {
            elf,
            san: guest_driver::San::Kasan,
            mode: "hybrid",
            suite: "example",
            ram_mib: 128,
            append: "kasan_multi_shot".into(),
            timeout: std::time::Duration::from_secs(300),
            log: logs.join(format!("{name}.log")),
            icount: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.succeeded(), "{name}: exit {}:\n{}", out.exit, out.tail(60));
        let log = out.log.replace("\r\n", "\n");
        let annotated = symbolize_log(&built.linked, &log);
        assert_titles_resolved(&annotated, raw);
        if raw {
            // Raw frames resolve too: the double free's trace reaches the case.
            let frames = annotated.lines().filter(|l| l.starts_with("    = ")).count();
            assert!(frames > EXAMPLE_CASES.len() * 2, "few raw frames resolved ({frames}):\n{annotated}");
        }
        // Every frame gets a name, even the boot trampoline's (an assembly
        // label without DWARF or size).
        let unnamed: Vec<&str> = annotated.lines().filter(|l| l.starts_with("    = ") && l.contains(" ?? at ")).collect();
        assert!(unnamed.is_empty(), "{name}: frames without a name:\n{}", unnamed.join("\n"));
    }
}
