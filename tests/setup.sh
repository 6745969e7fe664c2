#!/usr/bin/env bash
# Install what the project needs on a fresh machine, or stop naming the fix.
#   - rustup's nightly toolchain with the x86_64-unknown-none target, rust-src
#     and llvm-tools (the test guest is built with -Zsanitizer=kernel-address)
#   - the x86_64-unknown-none target for stable (the arch crate builds there too)
#   - qemu-system-x86_64 (apt-get when root)
# Idempotent; prints what it installs on stderr.
set -euo pipefail

fail() { echo "setup: $*" >&2; exit 3; }

command -v rustup >/dev/null || fail "rustup not found: install it from https://rustup.rs"
command -v cargo >/dev/null || fail "cargo not found: install Rust with rustup (https://rustup.rs)"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "setup: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal >&2 \
        || fail "could not install nightly: run 'rustup toolchain install nightly'"
fi
installed_targets() { rustup target list --installed --toolchain "$1"; }
installed_components() { rustup component list --installed --toolchain "$1"; }
for tc in nightly stable; do
    installed_targets "$tc" | grep -q '^x86_64-unknown-none$' || {
        echo "setup: adding x86_64-unknown-none to $tc" >&2
        rustup target add x86_64-unknown-none --toolchain "$tc" >&2 \
            || fail "run 'rustup target add x86_64-unknown-none --toolchain $tc'"
    }
done
for comp in rust-src llvm-tools clippy; do
    installed_components nightly | grep -q "^$comp" || {
        echo "setup: adding $comp to nightly" >&2
        rustup component add "$comp" --toolchain nightly >&2 \
            || fail "run 'rustup component add $comp --toolchain nightly'"
    }
done

if ! command -v qemu-system-x86_64 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing qemu-system-x86 with apt-get" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86) >&2 \
            || fail "apt-get could not install qemu-system-x86"
    else
        fail "qemu-system-x86_64 is missing: run 'sudo apt-get install --no-install-recommends qemu-system-x86'"
    fi
fi
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 still missing after install"
