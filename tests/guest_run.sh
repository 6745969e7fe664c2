#!/usr/bin/env bash
# Build and boot the hybrid-shadow test guest.
#   tests/guest_run.sh <mode> <suite> [ram_mib]
#     mode:  off | full | hybrid      (kasan.shadow=<mode>, or kmsan.shadow=<mode>)
#     suite: guest suite name (suite=<suite>)
#     ram_mib: guest RAM (default 512)
# GUEST_SANITIZER=kasan|kmsan picks the kernel (default kasan): the KMSAN kernel
# is built with profile kmsan (kmsan-release with GUEST_PROFILE=release), feature kmsan and target x86_64-kmsan.json.
# Environment: GUEST_PROFILE=dev|release (default dev), GUEST_APPEND="extra cmdline words",
#              GUEST_TIMEOUT=seconds (default 300), GUEST_FEATURES="cargo features" (e.g. runtime;
#              built with --no-default-features), GUEST_NO_BUILD=1 to reuse the last build,
#              QEMU_MACHINE=microvm|q35 (default microvm),
#              GUEST_QEMU_ARGS="extra qemu arguments" (e.g. -icount shift=0,align=off,sleep=off),
#              GUEST_SMP=N CPUs (default 1; above 1: -smp N with multi-threaded TCG,
#              -accel tcg,thread=multi, and the log under target/guest-logs/smp<N>/),
#              GUEST_ICOUNT=1 (-icount shift=0,align=off,sleep=off: guest time = instructions;
#              with GUEST_SMP, or -icount in GUEST_QEMU_ARGS, single-threaded TCG runs the CPUs
#              round-robin: deterministic, the TSC counts every CPU's instructions),
#              GUEST_CHECKS=outline|inline (KASAN only; default outline: a call per access;
#              inline: the compiler loads the shadow itself, Linux's default; cargo profile
#              inline or inline-release, ELF under target/guest/x86_64-unknown-none/inline[-release]/,
#              log under target/guest-logs/inline/).
# Build directory: target/guest (cargo --target-dir, a clean environment).
# Serial log: target/guest-logs[/smp<N>]/<mode>/<suite>.log (KMSAN: <mode>/kmsan.log for the
# kmsan suite, <mode>/kmsan-<suite>.log for others). Prints the log, then "qemu exit code: N",
# and exits with N.
# Guest exit codes (QEMU status = (code << 1) | 1): 33 success, 35 failure, 37 panic,
# 39 page fault, 41 #GP, 43 double fault, 45 other exception, 47 KASAN panic,
# 49 bad boot. 0 = triple fault (-no-reboot), 124 = timeout. This script's own:
# 2 = bad argument or variable, 3 = a tool is missing (the message names the fix)
# or the guest does not build.
#
# The builder and booter is the Rust driver (tests/guest_driver/mod.rs, the one
# QEMU command line and build command the host tests and the benchmark use too);
# this script builds its small front end, the binary guest-run
# (tests/guest_driver/guest_run.rs), with the host toolchain and runs it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
command -v cargo >/dev/null || { echo "guest_run.sh: cargo not found; install Rust from https://rustup.rs" >&2; exit 3; }
target_dir=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build -q --features tools --bin guest-run --target-dir "$target_dir" >&2) \
    || { echo "guest_run.sh: building the guest-run driver failed (cargo build --features tools --bin guest-run)" >&2; exit 3; }
exec "$target_dir/debug/guest-run" "$@"
