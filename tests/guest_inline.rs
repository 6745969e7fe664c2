//! KASAN with inline checks (Linux's default; the guest driver's
//! `Checks::Inline`, tests/guest_run.sh's GUEST_CHECKS=inline: cargo
//! profiles `inline` and `inline-release`, without
//! `-asan-instrumentation-with-call-threshold=0`). The compiler loads the
//! shadow itself from the first instrumented instruction on, so the guest
//! maps an early zero shadow before it (guest-boot's early_shadow.rs) that
//! the runtime's mapper takes over.
//!
//! Checked here, one guest at a time:
//! - the bug suite in `full` and `hybrid` gives, case by case, the same bug
//!   types with inline checks as with outlined ones, and both are the case
//!   table's (tests/guest/src/kasan_cases.rs); every report a valid
//!   syzkaller title naming the case;
//! - in `off` the inline kernel runs the bug suite and the selftests to the
//!   end without a report (every check reads the zero shadow);
//! - the optimized inline kernel (`inline-release`) boots and passes the
//!   selftests in `off`, `full` and `hybrid`.
//!
//! Logs: target/guest-logs/inline/<mode>/<suite>.log (inline),
//! target/guest-logs/<mode>/<suite>.log (outline).
#![cfg(target_os = "linux")]

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "guest_driver/mod.rs"]
mod guest_driver;

use common::syzkaller;
use guest_driver::{Checks, Outcome, San};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[allow(dead_code)]
mod cases {
    include!("guest/src/kasan_cases.rs");
}
use cases::KASAN_CASES;

/// Builds and boots, one at a time (the tests of this file run in parallel
/// threads; the machine has two cores).
static ONE: Mutex<BTreeMap<&'static str, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());

/// Build (once per profile) and boot `suite` in `mode` on the KASAN kernel
/// of cargo profile `profile` (`dev`, `release`, `inline`,
/// `inline-release`), 512 MiB, one CPU.
fn boot(profile: &'static str, mode: &str, suite: &str, append: &str) -> Outcome {
    let mut built = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let target_dir = guest_driver::root().join("target/guest");
    let elf = built
        .entry(profile)
        .or_insert_with(|| {
            guest_driver::build(&guest_driver::Build { san: San::Kasan, profile, features: None, target_dir: &target_dir })
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"));
    let checks = Checks::of_profile(profile);
    let log = guest_driver::log_path_checks(San::Kasan, 1, checks, mode, suite);
    let b = guest_driver::Boot {
        elf: &elf,
        san: San::Kasan,
        mode,
        suite,
        ram_mib: 512,
        append: append.to_string(),
        timeout: Duration::from_secs(300),
        log: log.clone(),
        icount: false,
    };
    let out = guest_driver::boot(&b).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest {profile} {mode}/{suite}: exit {} in {:.1}s (log {})", out.exit, out.wall.as_secs_f64(), log.display());
    out
}

/// One case's verdict: its name and the bug types of its reports, in order.
type Verdict = (String, Vec<String>);

/// Boot the bug suite in `mode` with `profile` and read every case's
/// verdict from the log (titles checked with syzkaller's rules).
fn verdicts(profile: &'static str, mode: &str) -> Vec<Verdict> {
    let out = boot(profile, mode, "kasan", "kasan_multi_shot");
    let ctx = format!("guest {profile} {mode}/kasan");
    assert_eq!(out.exit, guest_driver::EXIT_SUCCESS, "{ctx}: QEMU exit {}\n{}", out.exit, guest::excerpt(&out.log));
    let done = format!("kasan-suite: done mode={mode} cases={} failed_checks=0", KASAN_CASES.len());
    assert!(out.log.contains(&done), "{ctx}: no '{done}' line\n{}", out.tail(40));
    for bad in ["kasan-check-failed", "refused:", "Kernel panic", "PANIC"] {
        assert!(!out.log.contains(bad), "{ctx}: a '{bad}' line\n{}", guest::excerpt(&out.log));
    }
    // Split the log at the case markers: (name, text) per case, and the rest.
    let mut segs: Vec<(String, String)> = vec![];
    let mut outside = String::new();
    let mut open = false;
    for line in out.log.lines() {
        if let Some(rest) = line.strip_prefix("kasan-case: ") {
            let name = rest.split_once(" expect ").map_or(rest, |(n, _)| n);
            segs.push((name.to_string(), String::new()));
            open = true;
        } else if line.starts_with("kasan-case-end: ") {
            open = false;
        } else {
            let buf = if open { &mut segs.last_mut().expect("open case").1 } else { &mut outside };
            buf.push_str(line);
            buf.push('\n');
        }
    }
    assert!(!outside.contains("BUG: KASAN"), "{ctx}: a report outside every case\n{}", guest::excerpt(&outside));
    let mut v: Vec<Verdict> = vec![];
    for (name, text) in segs {
        let mut types = vec![];
        for r in syzkaller::reports(&text) {
            let t = syzkaller::check_report(&r).unwrap_or_else(|e| panic!("{ctx}: case {name}: {e}"));
            assert_eq!(t.func, name, "{ctx}: the title names {} instead of the case\n{r}", t.func);
            types.push(t.bug);
        }
        assert_eq!(text.matches("BUG: KASAN").count(), types.len(), "{ctx}: case {name}: a report outside the ===== rules\n{text}");
        v.push((name, types));
    }
    v
}

/// The case table's verdicts in `mode` (none in `off`).
fn table(mode: &str) -> Vec<Verdict> {
    KASAN_CASES
        .iter()
        .map(|c| (c.name.to_string(), if mode == "off" { vec![] } else { c.expect.iter().map(|s| s.to_string()).collect() }))
        .collect()
}

fn same_verdicts(mode: &str) {
    let inline = verdicts("inline", mode);
    let outline = verdicts("dev", mode);
    for (i, o) in inline.iter().zip(&outline) {
        assert_eq!(i, o, "{mode}: case {} differs between inline and outlined checks", i.0);
    }
    assert_eq!(inline, outline, "{mode}: inline and outlined checks ran different cases");
    assert_eq!(inline, table(mode), "{mode}: verdicts differ from the case table");
}

#[test]
fn guest_inline_kasan_suite_full() {
    same_verdicts("full");
}

#[test]
fn guest_inline_kasan_suite_hybrid() {
    same_verdicts("hybrid");
}

/// `off`: the zero shadow stays, every inline check passes: the bug suite
/// runs to its end without a report, the selftests pass.
#[test]
fn guest_inline_off_runs() {
    assert_eq!(verdicts("inline", "off"), table("off"));
    let out = boot("inline", "off", "selftest", "");
    assert!(out.succeeded(), "inline off/selftest: exit {}\n{}", out.exit, out.tail(40));
    assert_eq!(out.kasan_reports(), 0, "inline off/selftest: a report\n{}", guest::excerpt(&out.log));
}

/// The optimized inline kernel boots in every mode (before the early zero
/// shadow, it faulted at boot in all three: guest_main read the shadow of
/// a global before the runtime was up) and passes the selftests without a
/// report.
#[test]
fn guest_inline_release_boots() {
    for mode in ["off", "full", "hybrid"] {
        let out = boot("inline-release", mode, "selftest", "");
        assert!(out.succeeded(), "inline-release {mode}/selftest: exit {}\n{}", out.exit, out.tail(40));
        assert_eq!(out.kasan_reports(), 0, "inline-release {mode}/selftest: a report\n{}", guest::excerpt(&out.log));
        let meta = out.line("kasan-meta:").unwrap_or_else(|| panic!("inline-release {mode}: no kasan-meta line"));
        assert_eq!(meta.get("mode"), Some(mode));
    }
}
