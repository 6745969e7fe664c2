//! The one place that builds and boots the test guest: host tests
//! (tests/common/guest.rs, tests/guest_stress.rs, ...), the memory
//! benchmark (benches/guest_memory.rs) and tests/guest_run.sh (through the
//! `guest-run` binary, tests/guest_driver/guest_run.rs) all come here. It builds
//! the guest with a nested, clean-environment cargo (own target directory)
//! and writes its symbol table, boots it in QEMU (TCG, microvm by default),
//! and parses the workload's `wl-start` / `wl-sample` / `wl-result` lines
//! from the serial log.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// QEMU exit status of a successful suite ((0x10 << 1) | 1).
pub const EXIT_SUCCESS: i32 = 33;

/// A command with the outer cargo's environment removed, so that a nested
/// build neither inherits its toolchain, flags nor target directory.
pub fn clean(mut c: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let strip = (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("__CARGO")
            || k.starts_with("RUSTC")
            || k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
            || k.starts_with("CARGO_ENCODED");
        if strip {
            c.env_remove(&k);
        }
    }
    c
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd} >/dev/null 2>&1")).status().map(|s| s.success()).unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// QEMU present, or installed with apt-get when root; otherwise an error
/// naming the command to run. Never a silent skip.
pub fn ensure_qemu() -> Result<(), String> {
    if have("qemu-system-x86_64") {
        return Ok(());
    }
    if is_root() && have("apt-get") {
        eprintln!("guest driver: installing qemu-system-x86 with apt-get");
        let ok = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok && have("qemu-system-x86_64") {
            return Ok(());
        }
        return Err("apt-get could not install qemu-system-x86; run: apt-get install --no-install-recommends qemu-system-x86".into());
    }
    Err("qemu-system-x86_64 is missing; run: sudo apt-get install --no-install-recommends qemu-system-x86".into())
}

/// The nightly toolchain pieces the guest needs (installed through rustup
/// when missing, as tests/setup.sh does).
pub fn ensure_toolchain() -> Result<(), String> {
    if !have("rustup") {
        return Err("rustup not found: install it from https://rustup.rs (the guest needs nightly)".into());
    }
    let st = clean(Command::new(root().join("tests/setup.sh"))).status();
    match st {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err("tests/setup.sh failed (see its message above)".into()),
        // No setup script: fall back to the minimal checks.
        Err(_) => Ok(()),
    }
}

/// The sanitizer a guest kernel is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    /// KASAN (target x86_64-unknown-none).
    Kasan,
    /// KMSAN (target x86_64-kmsan.json, feature kmsan).
    Kmsan,
}

impl San {
    /// "kasan" or "kmsan": the command-line prefix (`kasan.shadow=`) and
    /// the `sanitizer` field of results.
    pub fn name(self) -> &'static str {
        match self {
            San::Kasan => "kasan",
            San::Kmsan => "kmsan",
        }
    }

    /// Parse a name.
    pub fn from_name(s: &str) -> Option<San> {
        match s {
            "kasan" => Some(San::Kasan),
            "kmsan" => Some(San::Kmsan),
            _ => None,
        }
    }

    /// The cargo profile for an optimized build of this kernel.
    pub fn release_profile(self) -> &'static str {
        match self {
            San::Kasan => "release",
            San::Kmsan => "kmsan-release",
        }
    }
}

/// Build the KASAN guest (`profile` = "release" or "dev") into `target_dir`
/// and write its symbol table; returns the bootable ELF.
pub fn build_guest(profile: &str, target_dir: &Path) -> Result<PathBuf, String> {
    build_guest_san(San::Kasan, profile, target_dir)
}

/// Build the `san` guest with cargo profile `profile` (KMSAN: `kmsan` or
/// `kmsan-release`) into `target_dir`; returns the bootable ELF.
pub fn build_guest_san(san: San, profile: &str, target_dir: &Path) -> Result<PathBuf, String> {
    build(&Build { san, profile, features: None, target_dir })
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Build<'a> {
    /// The kernel's sanitizer.
    pub san: San,
    /// The cargo profile (`dev`, `release`; KASAN with inline checks:
    /// `inline`, `inline-release`; KMSAN: `kmsan`, `kmsan-release`).
    pub profile: &'a str,
    /// `Some(list)`: `--no-default-features --features <list>` (guest_run.sh's
    /// GUEST_FEATURES); `None`: the default features.
    pub features: Option<&'a str>,
    /// The nested cargo's target directory.
    pub target_dir: &'a Path,
}

impl Build<'_> {
    /// The target triple's directory name under the target directory.
    pub fn triple(&self) -> &'static str {
        match self.san {
            San::Kasan => "x86_64-unknown-none",
            San::Kmsan => "x86_64-kmsan",
        }
    }

    /// The ELF as the linker wrote it.
    pub fn linked(&self) -> PathBuf {
        let dir = if self.profile == "dev" { "debug" } else { self.profile };
        self.target_dir.join(self.triple()).join(dir).join("hybrid-guest")
    }

    /// The bootable ELF: a copy of [`Build::linked`] with its symbol table
    /// written in (`hybrid_shadow::ksyms::embed`).
    pub fn elf(&self) -> PathBuf {
        self.linked().with_extension("ksyms")
    }

    /// The cargo command line, for messages.
    fn describe(&self) -> String {
        let mut s = format!("(cd tests/guest && cargo +nightly build --profile {}", self.profile);
        if let Some(f) = self.features {
            s += &format!(" --no-default-features --features '{f}'");
        }
        if self.san == San::Kmsan {
            s += " --features kmsan --target x86_64-kmsan.json -Zjson-target-spec";
        }
        s + ")"
    }
}

/// The cargo profile guest_run.sh's GUEST_PROFILE (`dev` or `release`)
/// stands for with `san`: KMSAN builds with its own profiles, `kmsan` and
/// `kmsan-release`. `None` for another word.
pub fn profile_for(san: San, word: &str) -> Option<&'static str> {
    match (san, word) {
        (San::Kasan, "dev") => Some("dev"),
        (San::Kasan, "release") => Some("release"),
        (San::Kmsan, "dev") => Some("kmsan"),
        (San::Kmsan, "release") => Some("kmsan-release"),
        _ => None,
    }
}

/// How the KASAN kernel's accesses are checked (guest_run.sh's GUEST_CHECKS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Checks {
    /// A call to `__asan_load*` / `__asan_store*` per access
    /// (`-asan-instrumentation-with-call-threshold=0`; cargo profiles
    /// `dev` and `release`). The default.
    #[default]
    Outline,
    /// The compiler loads the shadow byte itself and calls the runtime only
    /// to report (Linux's default; cargo profiles `inline` and
    /// `inline-release`). KASAN only.
    Inline,
}

impl Checks {
    /// "outline" or "inline".
    pub fn name(self) -> &'static str {
        match self {
            Checks::Outline => "outline",
            Checks::Inline => "inline",
        }
    }

    /// Parse a name.
    pub fn from_name(s: &str) -> Option<Checks> {
        match s {
            "outline" => Some(Checks::Outline),
            "inline" => Some(Checks::Inline),
            _ => None,
        }
    }

    /// The checks a cargo profile builds ([`profile_with`]'s inverse).
    pub fn of_profile(profile: &str) -> Checks {
        if profile.starts_with("inline") {
            Checks::Inline
        } else {
            Checks::Outline
        }
    }
}

/// [`profile_for`] with `checks`: the KASAN kernel's inline checks build
/// with profiles `inline` (dev) and `inline-release` (release); `None` for
/// KMSAN with inline checks (its instrumentation always calls the runtime).
pub fn profile_with(san: San, word: &str, checks: Checks) -> Option<&'static str> {
    match (checks, san, word) {
        (Checks::Outline, ..) => profile_for(san, word),
        (Checks::Inline, San::Kasan, "dev") => Some("inline"),
        (Checks::Inline, San::Kasan, "release") => Some("inline-release"),
        _ => None,
    }
}

/// Where a boot's serial log is kept by guest_run.sh and the host tests:
/// target/guest-logs/<mode>/<suite>.log (KMSAN: <mode>/kmsan.log for the
/// `kmsan` suite, <mode>/kmsan-<suite>.log for others).
pub fn log_path(san: San, mode: &str, suite: &str) -> PathBuf {
    let name = match (san, suite) {
        (San::Kasan, _) => suite.to_string(),
        (San::Kmsan, "kmsan") => "kmsan".to_string(),
        (San::Kmsan, _) => format!("kmsan-{suite}"),
    };
    root().join("target/guest-logs").join(mode).join(format!("{name}.log"))
}

/// [`log_path`] of a boot on `smp` CPUs: the same path on one CPU,
/// target/guest-logs/smp<N>/<mode>/<suite>.log on N > 1.
pub fn log_path_smp(san: San, smp: u32, mode: &str, suite: &str) -> PathBuf {
    let one = log_path(san, mode, suite);
    if smp <= 1 {
        return one;
    }
    let rel = one.strip_prefix(root().join("target/guest-logs")).expect("log_path is under target/guest-logs").to_path_buf();
    root().join("target/guest-logs").join(format!("smp{smp}")).join(rel)
}

/// [`log_path_smp`] of a kernel with `checks`: the same path for outlined
/// checks, under target/guest-logs/inline/ for inline ones (so the logs of
/// the two builds never overwrite each other).
pub fn log_path_checks(san: San, smp: u32, checks: Checks, mode: &str, suite: &str) -> PathBuf {
    let p = log_path_smp(san, smp, mode, suite);
    match checks {
        Checks::Outline => p,
        Checks::Inline => {
            let logs = root().join("target/guest-logs");
            let rel = p.strip_prefix(&logs).expect("log_path_smp is under target/guest-logs").to_path_buf();
            logs.join("inline").join(rel)
        }
    }
}

/// Build the guest `b` describes (the toolchain and QEMU are installed
/// first when missing) and write its symbol table; returns the bootable ELF.
pub fn build(b: &Build) -> Result<PathBuf, String> {
    ensure_toolchain()?;
    ensure_qemu()?;
    let guest = root().join("tests/guest");
    let t0 = Instant::now();
    let mut c = clean(Command::new("rustup"));
    c.args(["run", "nightly", "cargo", "build", "--profile", b.profile, "--target-dir"]).arg(b.target_dir).current_dir(&guest);
    if let Some(f) = b.features {
        c.args(["--no-default-features", "--features", f]);
    }
    if b.san == San::Kmsan {
        c.args(["--features", "kmsan", "--target", "x86_64-kmsan.json", "-Zjson-target-spec"]);
    }
    // Cargo's progress goes to stderr; nothing of it on stdout, which
    // guest_run.sh keeps for the log.
    let st = c.stdout(Stdio::null()).status().map_err(|e| format!("cannot run rustup: {e}"))?;
    if !st.success() {
        return Err(format!("guest build failed ({st}): {}", b.describe()));
    }
    let (linked, elf) = (b.linked(), b.elf());
    hybrid_shadow::ksyms::embed::embed(&linked, &elf)
        .map_err(|e| format!("symbol table for {}: {e}", linked.display()))?;
    eprintln!("guest driver: built {} in {:.1}s", elf.display(), t0.elapsed().as_secs_f64());
    Ok(elf)
}

/// One boot of the guest.
pub struct Boot<'a> {
    pub elf: &'a Path,
    /// The kernel's sanitizer (the `<san>.shadow=` word).
    pub san: San,
    pub mode: &'a str,
    pub suite: &'a str,
    pub ram_mib: u32,
    /// Extra command-line words (units=, jobs=, seed=, kasan.*).
    pub append: String,
    pub timeout: Duration,
    pub log: PathBuf,
    /// Run QEMU with `-icount shift=0,align=off,sleep=off`: guest time
    /// counts instructions (1 ns each), independent of the host's load (and
    /// about 3x slower). With several CPUs, single-threaded TCG runs them
    /// round-robin, and the TSC counts the instructions of all of them.
    pub icount: bool,
}

pub struct Outcome {
    /// QEMU exit status; 124 = timed out (as `timeout` reports it).
    pub exit: i32,
    pub log: String,
    pub wall: Duration,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.exit == EXIT_SUCCESS
    }
    /// Fields of the first line starting with `tag ` (e.g. "wl-result").
    pub fn line(&self, tag: &str) -> Option<Fields> {
        self.log.lines().find_map(|l| parse_tagged(l, tag))
    }
    pub fn lines(&self, tag: &str) -> Vec<Fields> {
        self.log.lines().filter_map(|l| parse_tagged(l, tag)).collect()
    }
    pub fn kasan_reports(&self) -> usize {
        self.log.matches("BUG: KASAN:").count()
    }
    /// Sanitizer reports of either kind (KASAN or KMSAN).
    pub fn reports(&self) -> usize {
        self.kasan_reports() + self.log.matches("BUG: KMSAN:").count()
    }
    /// The last lines of the log, for assertion messages.
    pub fn tail(&self, n: usize) -> String {
        let v: Vec<&str> = self.log.lines().collect();
        v[v.len().saturating_sub(n)..].join("\n")
    }
}

/// QEMU options beyond [`Boot`]'s: the machine and extra arguments
/// (guest_run.sh's QEMU_MACHINE and GUEST_QEMU_ARGS).
#[derive(Clone, Debug)]
pub struct Qemu {
    /// `-M` (default `microvm`; `q35` works too).
    pub machine: String,
    /// Extra arguments, appended after the kernel's (e.g. `-icount
    /// shift=0,align=off,sleep=off` for the guest profiler `prof=<us>`).
    pub args: Vec<String>,
    /// CPUs (`-smp`; guest_run.sh's GUEST_SMP). Above 1, TCG runs one host
    /// thread per CPU (`-accel tcg,thread=multi`), so the CPUs really run
    /// at once; 1 (the default) keeps the single-threaded command line.
    /// With `-icount` ([`Boot::icount`], guest_run.sh's GUEST_ICOUNT=1, or
    /// `-icount` in `args`) the CPUs run round-robin in one thread instead.
    pub smp: u32,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu { machine: "microvm".into(), args: vec![], smp: 1 }
    }
}

/// The QEMU command line for `b` (the one place it is written).
pub fn qemu_command(b: &Boot, q: &Qemu) -> Command {
    let append = format!("{}.shadow={} suite={} {}", b.san.name(), b.mode, b.suite, b.append);
    let mut cmd = Command::new("qemu-system-x86_64");
    let smp = q.smp.max(1);
    // `-icount` (asked by `b.icount` or among the extra arguments) needs
    // single-threaded TCG: QEMU then runs the CPUs round-robin in one
    // thread (deterministic; a `pause` hands over to the next CPU).
    let icount = b.icount || q.args.iter().any(|a| a == "-icount");
    cmd.args(["-M", &q.machine, "-accel", if smp > 1 && !icount { "tcg,thread=multi" } else { "tcg" }]);
    if b.icount {
        cmd.args(["-icount", "shift=0,align=off,sleep=off"]);
    }
    cmd.args(["-cpu", "max", "-m"])
        .arg(b.ram_mib.to_string())
        .arg("-smp")
        .arg(smp.to_string())
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial"])
        .arg(format!("file:{}", b.log.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel"])
        .arg(b.elf)
        .arg("-append")
        .arg(append)
        .args(&q.args);
    cmd
}

/// Boot `b` with the default QEMU options.
pub fn boot(b: &Boot) -> Result<Outcome, String> {
    boot_with(b, &Qemu::default())
}

/// Boot `b` with QEMU options `q`; the log is written to `b.log` (removed
/// first) and read back; QEMU is killed after `b.timeout` (exit 124).
pub fn boot_with(b: &Boot, q: &Qemu) -> Result<Outcome, String> {
    if let Some(d) = b.log.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let _ = std::fs::remove_file(&b.log);
    let t0 = Instant::now();
    let mut cmd = qemu_command(b, q);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let exit = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st.code().unwrap_or(-1);
        }
        if t0.elapsed() > b.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break 124;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = t0.elapsed();
    let mut log = std::fs::read(&b.log).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
    if exit != EXIT_SUCCESS {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        if !err.is_empty() {
            log.push_str("\n[qemu stderr] ");
            log.push_str(&err);
        }
    }
    Ok(Outcome { exit, log, wall })
}

/// `key=value` fields of a tagged line.
#[derive(Clone, Debug, Default)]
pub struct Fields(pub BTreeMap<String, String>);

impl Fields {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    pub fn u64(&self, k: &str) -> Option<u64> {
        self.get(k)?.parse().ok()
    }
    pub fn num(&self, k: &str) -> u64 {
        self.u64(k).unwrap_or_else(|| panic!("field {k} missing or not a number in {:?}", self.0))
    }
}

pub fn parse_tagged(line: &str, tag: &str) -> Option<Fields> {
    let rest = line.trim_end().strip_prefix(tag)?.strip_prefix(' ')?;
    let mut m = BTreeMap::new();
    for w in rest.split_ascii_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            m.insert(k.to_string(), v.to_string());
        }
    }
    Some(Fields(m))
}
