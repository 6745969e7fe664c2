#!/usr/bin/env bash
# Build and boot the hybrid-shadow test guest.
#   tests/guest_run.sh <mode> <suite> [ram_mib]
#     mode:  off | full | hybrid      (kasan.shadow=<mode>, or kmsan.shadow=<mode>)
#     suite: guest suite name (suite=<suite>)
# GUEST_SANITIZER=kasan|kmsan picks the kernel (default kasan): the KMSAN kernel
# is built with profile kmsan (kmsan-release with GUEST_PROFILE=release), feature kmsan and target x86_64-kmsan.json.
# Environment: GUEST_PROFILE=dev|release (default dev), GUEST_APPEND="extra cmdline words",
#              GUEST_TIMEOUT=seconds (default 300), GUEST_FEATURES="cargo features" (e.g. runtime),
#              GUEST_NO_BUILD=1 to reuse the last build, QEMU_MACHINE=microvm|q35,
#              GUEST_QEMU_ARGS="extra qemu arguments" (e.g. -icount shift=0,align=off,sleep=off).
# Serial log: target/guest-logs/<mode>/<suite>.log (KMSAN: <mode>/kmsan.log for the
# kmsan suite, <mode>/kmsan-<suite>.log for others). Prints "qemu exit code: N" and exits with N.
# Guest exit codes (QEMU status = (code << 1) | 1): 33 success, 35 failure, 37 panic,
# 39 page fault, 41 #GP, 43 double fault, 45 other exception, 47 KASAN panic,
# 49 bad boot. 0 = triple fault (-no-reboot), 124 = timeout.
set -euo pipefail

mode=${1:?usage: guest_run.sh <off|full|hybrid> <suite> [ram_mib]}
suite=${2:?usage: guest_run.sh <off|full|hybrid> <suite> [ram_mib]}
ram=${3:-512}
case "$mode" in off|full|hybrid) ;; *) echo "guest_run.sh: mode must be off|full|hybrid, got '$mode'" >&2; exit 2;; esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
guest="$here/guest"
target_dir="$root/target/guest"
sanitizer=${GUEST_SANITIZER:-kasan}
case "$sanitizer" in kasan|kmsan) ;; *) echo "guest_run.sh: GUEST_SANITIZER must be kasan|kmsan, got '$sanitizer'" >&2; exit 2;; esac
if [ "$sanitizer" = kmsan ]; then
    profile=$([ "${GUEST_PROFILE:-dev}" = release ] && echo kmsan-release || echo kmsan)
    triple=x86_64-kmsan
    logname=$([ "$suite" = kmsan ] && echo kmsan || echo "kmsan-$suite")
else
    profile=${GUEST_PROFILE:-dev}
    triple=x86_64-unknown-none
    logname=$suite
fi
profdir=$([ "$profile" = dev ] && echo debug || echo "$profile")
linked="$target_dir/$triple/$profdir/hybrid-guest"
elf="$linked.ksyms"   # with the symbol table written in (ksyms.sh)
logdir="$root/target/guest-logs/$mode"
log="$logdir/$logname.log"

# A nested build must not inherit the outer cargo's environment.
for v in $(env | sed -n 's/^\(CARGO_[A-Za-z0-9_]*\|RUSTUP_TOOLCHAIN\|RUSTFLAGS\|RUSTDOCFLAGS\|RUSTC\|RUSTC_WRAPPER\|RUSTC_WORKSPACE_WRAPPER\|__CARGO_[A-Za-z0-9_]*\)=.*/\1/p'); do
    [ "$v" = CARGO_HOME ] || unset "$v"
done

need_tools() {
    if ! command -v rustup >/dev/null; then
        echo "guest_run.sh: rustup not found; install it from https://rustup.rs" >&2; exit 3
    fi
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
    rustup target list --installed --toolchain nightly | grep -q x86_64-unknown-none \
        || rustup target add x86_64-unknown-none --toolchain nightly >&2
    rustup component list --installed --toolchain nightly | grep -q '^rust-src' \
        || rustup component add rust-src --toolchain nightly >&2
    rustup component list --installed --toolchain nightly | grep -q '^llvm-tools' \
        || rustup component add llvm-tools --toolchain nightly >&2
    if ! command -v qemu-system-x86_64 >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            (apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-system-x86) >&2
        else
            echo "guest_run.sh: qemu-system-x86_64 missing; run: apt-get install qemu-system-x86" >&2; exit 3
        fi
    fi
}

build() {
    local feats=()
    [ -n "${GUEST_FEATURES:-}" ] && feats=(--no-default-features --features "$GUEST_FEATURES")
    local target=()
    [ "$sanitizer" = kmsan ] && target=(--features kmsan --target x86_64-kmsan.json -Zjson-target-spec)
    (cd "$guest" && cargo +nightly build --profile "$profile" --target-dir "$target_dir" "${feats[@]}" "${target[@]}" >&2)
    "$here/guest/ksyms.sh" "$linked" "$elf" >&2
}

need_tools
[ -n "${GUEST_NO_BUILD:-}" ] || build

mkdir -p "$logdir"
machine=${QEMU_MACHINE:-microvm}
append="$sanitizer.shadow=$mode suite=$suite ${GUEST_APPEND:-}"
set +e
timeout "${GUEST_TIMEOUT:-300}" qemu-system-x86_64 \
    -M "$machine" -accel tcg -cpu max -m "$ram" -smp 1 \
    -nographic -no-reboot -nodefaults \
    -serial "file:$log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$elf" -append "$append" ${GUEST_QEMU_ARGS:-} </dev/null
rc=$?
set -e
cat "$log"
echo "qemu exit code: $rc"
exit $rc
