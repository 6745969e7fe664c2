#!/usr/bin/env bash
# The project's two entry points (see README.md):
#   tests/run.sh bench   boot the test guest in off, full and hybrid and print
#                        the memory comparison (target/guest-bench/)
#   tests/run.sh test    run every test: the guest's clippy (SAFETY comments),
#                        host unit/property tests, the guest's bug suite under
#                        QEMU, the stress workload
# Both first run tests/setup.sh, which installs what is missing or names the fix.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cmd=${1:-}
shift || true
"$here/setup.sh"
cd "$root"
case "$cmd" in
    test)
        # The test guest's unsafe discipline first: clippy with
        # undocumented_unsafe_blocks and missing_safety_doc denied in its
        # crates, for the KASAN kernel (~45 s cold) and the KMSAN kernel,
        # whose kmsan-only modules the first does not see (~20-50 s).
        (cd tests/guest && cargo +nightly clippy --target-dir "$root/target/guest-clippy" --workspace)
        (cd tests/guest && cargo +nightly clippy --target-dir "$root/target/guest-clippy" --workspace \
            --profile kmsan --features kmsan --target x86_64-kmsan.json -Zjson-target-spec)
        exec cargo test --workspace "$@"
        ;;
    bench)
        if [ -f benches/guest_memory.rs ]; then
            exec cargo bench --bench guest_memory "$@"
        fi
        exec cargo bench --bench checks "$@"
        ;;
    *)
        echo "usage: tests/run.sh test|bench" >&2
        exit 2
        ;;
esac
