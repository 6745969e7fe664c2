//! One parser of the sanitizer's knobs. The test guest's boot code had its
//! own copy, which read `kasan_multi_shot=1` as multi-shot while the runtime
//! ignored the word (one-shot): the KASAN suite then expected every report
//! of a case and the runtime printed only the first, and the suite failed.
//! The guest now reads the knobs with the runtime's parser
//! (`hybrid_shadow::config`); this boots the guest's KASAN suite with
//! `kasan_multi_shot=1` and checks that both sides agree (the suite passes,
//! multi-shot, with several reports). Builds the guest into its own target
//! directory (`<this test's target dir>/guest-cmdline`).
#![cfg(target_os = "linux")]

#[path = "guest_driver/mod.rs"]
mod guest_driver;

use std::path::PathBuf;
use std::time::Duration;

use guest_driver::{boot, build_guest, root, Boot, San};

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors().nth(3).map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

#[test]
fn guest_and_runtime_agree_on_kasan_multi_shot_with_a_value() {
    let dir = target_dir().join("guest-cmdline");
    let elf = build_guest("dev", &dir.join("build")).unwrap_or_else(|e| panic!("{e}"));
    let out = boot(&Boot {
        elf: &elf,
        san: San::Kasan,
        mode: "hybrid",
        suite: "kasan",
        ram_mib: 256,
        append: "kasan_multi_shot=1".into(),
        timeout: Duration::from_secs(600),
        log: dir.join("kasan-multi-shot-1.log"),
        icount: false,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.log.contains("kasan_multi_shot=true"), "the guest's boot line does not read multi-shot:\n{}", out.tail(40));
    assert!(out.log.contains("multi_shot=true"), "the suite does not run multi-shot:\n{}", out.tail(40));
    assert!(out.succeeded(), "exit {} (33 = success): the suite and the runtime disagree?\n{}", out.exit, out.tail(60));
    assert!(out.kasan_reports() > 10, "multi-shot, yet {} reports", out.kasan_reports());
}
