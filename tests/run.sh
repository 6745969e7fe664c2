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
        # crates (KASAN kernel, ~45 s cold; the KMSAN kernel's variant,
        # another ~50 s, is in tests/guest/README.md).
        (cd tests/guest && cargo +nightly clippy --target-dir "$root/target/guest-clippy" --workspace)
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
