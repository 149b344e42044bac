#!/usr/bin/env bash
# Runs meshgate's whole test suite: set-up, lints, then every test of the workspace, and closes
# with one line that sums them up. Every test binary runs even when an earlier one fails
# (--no-fail-fast), so one failure does not hide another; the script then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if ((status != 0)); then
    # Said even when the count shows no failure: a build error or a crashed test binary leaves
    # no "test result" line to count.
    echo "tests: cargo test failed (exit status $status); see above" >&2
fi
exit "$status"
