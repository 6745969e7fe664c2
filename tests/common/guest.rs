//! Building and booting the test guest from host tests, through the one
//! guest driver (tests/guest_driver/mod.rs; a test that includes this file
//! declares `mod guest_driver` at its root). The nested cargo gets a
//! cleaned environment and its own target directory (target/guest, as
//! tests/guest_run.sh); a missing tool is installed when that can be done
//! without asking (rustup components; QEMU via apt-get as root) or the test
//! fails naming the command to run. Never skips.
#![allow(dead_code)]

use crate::guest_driver::{self, Checks, San};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    guest_driver::root()
}

/// The bootable guest ELF with its symbol table (what QEMU boots).
pub fn elf() -> PathBuf {
    Sanitizer::Kasan.build_spec(Checks::Outline, &target_dir()).elf()
}

/// The guest's build directory (tests/guest_run.sh's).
fn target_dir() -> PathBuf {
    root().join("target/guest")
}

/// Log of a boot: target/guest-logs/<mode>/<suite>.log.
pub fn log_path(mode: &str, suite: &str) -> PathBuf {
    guest_driver::log_path(San::Kasan, mode, suite)
}

/// Which kernel a boot uses (tests/guest_run.sh's GUEST_SANITIZER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sanitizer {
    /// The KASAN kernel.
    Kasan,
    /// The KMSAN kernel.
    Kmsan,
}

impl Sanitizer {
    fn san(self) -> San {
        match self {
            Sanitizer::Kasan => San::Kasan,
            Sanitizer::Kmsan => San::Kmsan,
        }
    }

    fn name(self) -> &'static str {
        self.san().name()
    }

    /// The dev build tests/guest_run.sh makes for this kernel with
    /// `checks` (GUEST_CHECKS; inline: KASAN only).
    fn build_spec(self, checks: Checks, target_dir: &Path) -> guest_driver::Build<'_> {
        let san = self.san();
        let profile = guest_driver::profile_with(san, "dev", checks).expect("a dev profile (inline checks: KASAN only)");
        guest_driver::Build { san, profile, features: None, target_dir }
    }

    /// Where tests/guest_run.sh keeps the log of `suite` in `mode`.
    pub fn log_path(self, mode: &str, suite: &str) -> PathBuf {
        guest_driver::log_path(self.san(), mode, suite)
    }
}

/// Boot the built `san` kernel: `suite` in `mode`, 512 MiB, 300 s, as
/// tests/guest_run.sh does by default.
fn run_boot(san: Sanitizer, mode: &str, suite: &str, append: &str) -> Result<guest_driver::Outcome, String> {
    run_boot_smp(san, 1, mode, suite, append)
}

/// [`run_boot`] on `smp` CPUs (tests/guest_run.sh's GUEST_SMP; the log
/// under target/guest-logs/smp<N>/ for N > 1).
fn run_boot_smp(san: Sanitizer, smp: u32, mode: &str, suite: &str, append: &str) -> Result<guest_driver::Outcome, String> {
    run_boot_smp_mib(san, smp, Checks::Outline, mode, suite, append, 512, false)
}

/// [`run_boot_smp`] of the kernel built with `checks` (inline: the log
/// under target/guest-logs/inline/), with `ram_mib` of RAM, under `-icount`
/// when `icount` (several CPUs then run round-robin in one thread).
#[allow(clippy::too_many_arguments)]
fn run_boot_smp_mib(san: Sanitizer, smp: u32, checks: Checks, mode: &str, suite: &str, append: &str, ram_mib: u32, icount: bool) -> Result<guest_driver::Outcome, String> {
    let elf = san.build_spec(checks, &target_dir()).elf();
    let qemu = guest_driver::Qemu { smp, ..Default::default() };
    guest_driver::boot_with(&guest_driver::Boot {
        elf: &elf,
        san: san.san(),
        mode,
        suite,
        ram_mib,
        append: append.to_string(),
        timeout: Duration::from_secs(300),
        log: guest_driver::log_path_checks(san.san(), smp, checks, mode, suite),
        icount,
    }, &qemu)
}

static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
static BUILT_KMSAN: OnceLock<Result<(), String>> = OnceLock::new();
static BUILT_INLINE: OnceLock<Result<(), String>> = OnceLock::new();
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Build the KASAN guest once per test binary (rustup installs the nightly
/// components the guest needs). Panics with the build output on failure.
pub fn build() {
    build_san(Sanitizer::Kasan);
}

/// Build the guest for `san` once per test binary.
pub fn build_san(san: Sanitizer) {
    let cell = match san {
        Sanitizer::Kasan => &BUILT,
        Sanitizer::Kmsan => &BUILT_KMSAN,
    };
    let r = cell.get_or_init(|| {
        let t = Instant::now();
        let dir = target_dir();
        guest_driver::build(&san.build_spec(Checks::Outline, &dir))?;
        // Then boot the smoke suite in `off` mode as a sanity check.
        let out = run_boot(san, "off", "smoke", "")?;
        eprintln!("{} guest build + smoke boot: {:.1}s, exit {}", san.name(), t.elapsed().as_secs_f64(), out.exit);
        if out.succeeded() {
            Ok(())
        } else {
            Err(format!("booting the guest's smoke suite in off mode failed (exit {}):\n{}", out.exit, out.tail(60)))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// One boot of the guest.
pub struct Boot {
    /// QEMU exit status ((guest code << 1) | 1; 33 = success).
    pub code: i32,
    /// The serial log.
    pub log: String,
    /// Wall time of the boot, seconds.
    pub secs: f64,
    /// Where the log is kept.
    pub path: PathBuf,
}

/// Boot `suite` in `mode` with extra command-line words (builds first).
pub fn boot(mode: &str, suite: &str, append: &str) -> Boot {
    boot_san(Sanitizer::Kasan, mode, suite, append)
}

/// Boot the `san` kernel's `suite` in `mode` (builds first).
pub fn boot_san(san: Sanitizer, mode: &str, suite: &str, append: &str) -> Boot {
    boot_san_smp(san, 1, mode, suite, append)
}

/// Boot the KASAN kernel's `suite` in `mode` on `smp` CPUs (builds first).
pub fn boot_smp(smp: u32, mode: &str, suite: &str, append: &str) -> Boot {
    boot_san_smp(Sanitizer::Kasan, smp, mode, suite, append)
}

/// Boot the `san` kernel's `suite` in `mode` on `smp` CPUs (builds first).
pub fn boot_san_smp(san: Sanitizer, smp: u32, mode: &str, suite: &str, append: &str) -> Boot {
    boot_san_smp_mib(san, smp, Checks::Outline, mode, suite, append, 512, false)
}

/// [`boot_smp`] with `ram_mib` of RAM instead of 512, under `-icount`
/// when `icount` (the CPUs round-robin in one thread: deterministic).
pub fn boot_smp_mib(smp: u32, mode: &str, suite: &str, append: &str, ram_mib: u32, icount: bool) -> Boot {
    boot_san_smp_mib(Sanitizer::Kasan, smp, Checks::Outline, mode, suite, append, ram_mib, icount)
}

/// Boot the KASAN kernel built with `checks` (the dev profile `dev` or
/// `inline`): `suite` in `mode` on `smp` CPUs (builds first).
pub fn boot_checks(checks: Checks, smp: u32, mode: &str, suite: &str, append: &str) -> Boot {
    boot_san_smp_mib(Sanitizer::Kasan, smp, checks, mode, suite, append, 512, false)
}

/// [`boot_san_smp`] of the kernel built with `checks`, with `ram_mib` of
/// RAM, `-icount` when `icount`.
#[allow(clippy::too_many_arguments)]
fn boot_san_smp_mib(san: Sanitizer, smp: u32, checks: Checks, mode: &str, suite: &str, append: &str, ram_mib: u32, icount: bool) -> Boot {
    if checks == Checks::Outline {
        build_san(san);
    } else {
        let r = BUILT_INLINE.get_or_init(|| guest_driver::build(&san.build_spec(checks, &target_dir())).map(|_| ()));
        if let Err(e) = r {
            panic!("{e}");
        }
    }
    // One QEMU at a time per test binary: keeps timings comparable.
    let _g = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_boot_smp_mib(san, smp, checks, mode, suite, append, ram_mib, icount).unwrap_or_else(|e| panic!("{e}"));
    let (code, log, secs) = (out.exit, out.log, out.wall.as_secs_f64());
    let path = guest_driver::log_path_checks(san.san(), smp, checks, mode, suite);
    let cpus = if smp > 1 { format!(" on {smp} cpus") } else { String::new() };
    eprintln!("guest {mode}/{suite}{cpus}: exit {code} in {secs:.1}s (log {})", path.display());
    Boot { code, log, secs, path }
}

/// `key=value` of the first line starting with `prefix`.
pub fn field<'a>(log: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    let line = log.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Shorten a log for a failure message.
pub fn excerpt(s: &str) -> String {
    if s.len() <= 12000 {
        s.to_string()
    } else {
        let mut i = 12000;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        format!("{}\n[... {} more bytes]", &s[..i], s.len() - i)
    }
}

/// Whether `p` exists (for tools that need the guest ELF).
pub fn exists(p: &Path) -> bool {
    p.exists()
}
