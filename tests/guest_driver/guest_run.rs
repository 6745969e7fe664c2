//! `guest-run`: what tests/guest_run.sh runs (see its header for the
//! arguments, environment, log paths and exit codes). Builds and boots the
//! test guest through the one driver (tests/guest_driver/mod.rs), prints
//! the serial log and `qemu exit code: N`, and exits with N.

#[path = "mod.rs"]
mod guest_driver;

use guest_driver::{boot_with, build, ensure_qemu, log_path_checks, profile_with, root, Boot, Build, Checks, Qemu, San};
use std::time::Duration;

/// Exit status for a bad argument or environment variable.
const EXIT_USAGE: i32 = 2;
/// Exit status when a tool is missing (the message names the fix) or the
/// guest does not build.
const EXIT_TOOLS: i32 = 3;

const USAGE: &str = "usage: guest_run.sh <off|full|hybrid> <suite> [ram_mib]";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("guest_run.sh: {msg}");
    std::process::exit(code)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(suite)) = (args.first(), args.get(1)) else { fail(EXIT_USAGE, USAGE) };
    if args.len() > 3 {
        fail(EXIT_USAGE, USAGE);
    }
    if !matches!(mode.as_str(), "off" | "full" | "hybrid") {
        fail(EXIT_USAGE, &format!("mode must be off|full|hybrid, got '{mode}'"));
    }
    let ram_mib: u32 = match args.get(2) {
        None => 512,
        Some(r) => r.parse().unwrap_or_else(|_| fail(EXIT_USAGE, &format!("ram_mib must be a number, got '{r}'"))),
    };
    let san_name = env("GUEST_SANITIZER").unwrap_or_else(|| "kasan".into());
    let san = San::from_name(&san_name)
        .unwrap_or_else(|| fail(EXIT_USAGE, &format!("GUEST_SANITIZER must be kasan|kmsan, got '{san_name}'")));
    let word = env("GUEST_PROFILE").unwrap_or_else(|| "dev".into());
    let checks_name = env("GUEST_CHECKS").unwrap_or_else(|| "outline".into());
    let checks = Checks::from_name(&checks_name)
        .unwrap_or_else(|| fail(EXIT_USAGE, &format!("GUEST_CHECKS must be outline|inline, got '{checks_name}'")));
    if checks == Checks::Inline && san != San::Kasan {
        fail(EXIT_USAGE, "GUEST_CHECKS=inline is for the KASAN kernel only");
    }
    let profile = profile_with(san, &word, checks)
        .unwrap_or_else(|| fail(EXIT_USAGE, &format!("GUEST_PROFILE must be dev|release, got '{word}'")));
    let timeout: u64 = match env("GUEST_TIMEOUT") {
        None => 300,
        Some(t) => t.parse().unwrap_or_else(|_| fail(EXIT_USAGE, &format!("GUEST_TIMEOUT must be seconds, got '{t}'"))),
    };
    let smp: u32 = match env("GUEST_SMP") {
        None => 1,
        Some(n) => match n.parse() {
            Ok(n) if (1..=8).contains(&n) => n,
            _ => fail(EXIT_USAGE, &format!("GUEST_SMP must be a CPU count 1..=8, got '{n}'")),
        },
    };
    let icount = match env("GUEST_ICOUNT").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(v) => fail(EXIT_USAGE, &format!("GUEST_ICOUNT must be 0 or 1, got '{v}'")),
    };
    let features = env("GUEST_FEATURES");
    let target_dir = root().join("target/guest");
    let b = Build { san, profile, features: features.as_deref(), target_dir: &target_dir };
    let elf = if env("GUEST_NO_BUILD").is_some() {
        if let Err(e) = ensure_qemu() {
            fail(EXIT_TOOLS, &e);
        }
        b.elf()
    } else {
        build(&b).unwrap_or_else(|e| fail(EXIT_TOOLS, &e))
    };
    let qemu = Qemu {
        machine: env("QEMU_MACHINE").unwrap_or_else(|| "microvm".into()),
        args: env("GUEST_QEMU_ARGS").map(|a| a.split_whitespace().map(String::from).collect()).unwrap_or_default(),
        smp,
    };
    let log = log_path_checks(san, smp, checks, mode, suite);
    let boot = Boot {
        elf: &elf,
        san,
        mode,
        suite,
        ram_mib,
        append: env("GUEST_APPEND").unwrap_or_default(),
        timeout: Duration::from_secs(timeout),
        log,
        icount,
    };
    let out = boot_with(&boot, &qemu).unwrap_or_else(|e| fail(EXIT_TOOLS, &e));
    print!("{}", out.log);
    if !out.log.ends_with('\n') {
        println!();
    }
    println!("qemu exit code: {}", out.exit);
    std::process::exit(out.exit);
}
