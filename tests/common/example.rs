//! Building the minimal example kernel (examples/minimal-kernel) from host
//! tests, as docs/adopting.md tells a kernel to: a nested, clean-environment
//! `cargo +nightly build` into `<this test's target dir>/example-kernel`,
//! then `kasan-ksyms` writes the symbol table into a copy of the ELF.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use crate::guest_driver::{clean, ensure_qemu, ensure_toolchain, root};

/// The target directory this test was built into (…/target/debug/deps/exe).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors().nth(3).map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// The example kernel, built.
pub struct Built {
    /// As linked: the `.ksyms` room unwritten (titles are raw addresses).
    pub linked: PathBuf,
    /// The copy with the symbol table written in (what the test boots).
    pub elf: PathBuf,
}

/// How the example's checks are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    /// `__asan_load8_noabort` & co. (profile `dev`): nothing mapped before
    /// `kernel::start`.
    Outlined,
    /// The compiler loads the shadow itself (profile `inline`, feature
    /// `inline-checks`: guest-boot maps the early zero shadow, which
    /// `kernel::start` takes over).
    Inline,
}

/// Build the example kernel (outlined checks) and write its symbol table
/// with `kasan-ksyms`.
pub fn build() -> Built {
    build_with(Checks::Outlined)
}

/// Build the example kernel with `checks` and write its symbol table with
/// `kasan-ksyms`.
pub fn build_with(checks: Checks) -> Built {
    ensure_toolchain().unwrap_or_else(|e| panic!("{e}"));
    ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
    let dir = root().join("examples/minimal-kernel");
    let target = target_dir().join("example-kernel");
    let (args, out_dir): (&[&str], _) = match checks {
        Checks::Outlined => (&[], "debug"),
        Checks::Inline => (&["--profile", "inline", "--features", "inline-checks"], "inline"),
    };
    let st = clean(Command::new("rustup"))
        .args(["run", "nightly", "cargo", "build"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&dir)
        .status()
        .expect("cannot run rustup");
    assert!(st.success(), "example kernel build failed: (cd examples/minimal-kernel && cargo +nightly build {})", args.join(" "));
    let linked = target.join("x86_64-unknown-none").join(out_dir).join("minimal-kernel");
    let elf = linked.with_extension("ksyms");
    let out = Command::new(env!("CARGO_BIN_EXE_kasan-ksyms")).arg(&linked).arg(&elf).output().expect("cannot run kasan-ksyms");
    assert!(
        out.status.success(),
        "kasan-ksyms failed on {}: {}",
        linked.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    Built { linked, elf }
}
