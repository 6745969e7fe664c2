//! Building and booting the test guest from host tests (through
//! tests/guest_run.sh). The nested cargo gets a cleaned environment and its
//! own target directory (target/guest); a missing tool is installed when
//! that can be done without asking (rustup components; QEMU via apt-get as
//! root) or the test fails naming the command to run. Never skips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bootable guest ELF with its symbol table (what QEMU boots).
pub fn elf() -> PathBuf {
    root().join("target/guest/x86_64-unknown-none/debug/hybrid-guest.ksyms")
}

/// Log of a boot: target/guest-logs/<mode>/<suite>.log.
pub fn log_path(mode: &str, suite: &str) -> PathBuf {
    root().join("target/guest-logs").join(mode).join(format!("{suite}.log"))
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
    fn name(self) -> &'static str {
        match self {
            Sanitizer::Kasan => "kasan",
            Sanitizer::Kmsan => "kmsan",
        }
    }

    /// Where tests/guest_run.sh keeps the log of `suite` in `mode`.
    pub fn log_path(self, mode: &str, suite: &str) -> PathBuf {
        match (self, suite) {
            (Sanitizer::Kasan, _) => log_path(mode, suite),
            (Sanitizer::Kmsan, "kmsan") => log_path(mode, "kmsan"),
            (Sanitizer::Kmsan, _) => log_path(mode, &format!("kmsan-{suite}")),
        }
    }
}

/// Remove the outer cargo's variables from a nested command.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let drop = (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("__CARGO")
            || matches!(
                k.as_str(),
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTUP_TOOLCHAIN"
                    | "RUST_RECURSION_COUNT"
            );
        if drop {
            cmd.env_remove(&k);
        }
    }
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Make sure rustup and QEMU exist (installing QEMU when root).
fn ensure_tools() {
    assert!(
        have("rustup", "--version"),
        "rustup not found: install it from https://rustup.rs (the guest needs the nightly toolchain)"
    );
    if !have("qemu-system-x86_64", "--version") {
        assert!(
            is_root() && have("apt-get", "--version"),
            "qemu-system-x86_64 not found: run `apt-get install qemu-system-x86` (as root)"
        );
        let st = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86")
            .status()
            .expect("run apt-get");
        assert!(
            st.success() && have("qemu-system-x86_64", "--version"),
            "installing QEMU failed: run `apt-get install qemu-system-x86`"
        );
    }
}

fn run_script(san: Sanitizer, mode: &str, suite: &str, append: &str, build: bool) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("tests/guest_run.sh")).arg(mode).arg(suite).current_dir(root());
    clean_env(&mut cmd);
    cmd.env("GUEST_APPEND", append);
    cmd.env("GUEST_SANITIZER", san.name());
    if !build {
        cmd.env("GUEST_NO_BUILD", "1");
    }
    cmd.output().expect("run tests/guest_run.sh")
}

fn tail(s: &str, n: usize) -> &str {
    let cut = s.len().saturating_sub(n);
    let mut i = cut;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
static BUILT_KMSAN: OnceLock<Result<(), String>> = OnceLock::new();
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Build the KASAN guest once per test binary (rustup installs the nightly
/// components guest_run.sh needs). Panics with the build output on failure.
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
        ensure_tools();
        let t = Instant::now();
        // Builds, then boots the smoke suite in `off` mode as a sanity check.
        let out = run_script(san, "off", "smoke", "", true);
        let code = out.status.code().unwrap_or(-1);
        eprintln!("{} guest build + smoke boot: {:.1}s, exit {code}", san.name(), t.elapsed().as_secs_f64());
        if code == 33 {
            Ok(())
        } else {
            Err(format!(
                "building/booting the guest failed (tests/guest_run.sh off smoke exit {code}; 3 = a tool is missing, see the command it names):\n--- stderr ---\n{}\n--- stdout ---\n{}",
                tail(&String::from_utf8_lossy(&out.stderr), 6000),
                tail(&String::from_utf8_lossy(&out.stdout), 3000)
            ))
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
    build_san(san);
    // One QEMU at a time per test binary: keeps timings comparable.
    let _g = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let out = run_script(san, mode, suite, append, false);
    let secs = t.elapsed().as_secs_f64();
    let code = out.status.code().unwrap_or(-1);
    let path = san.log_path(mode, suite);
    let log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    eprintln!("guest {mode}/{suite}: exit {code} in {secs:.1}s (log {})", path.display());
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
