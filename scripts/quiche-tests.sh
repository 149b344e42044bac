#!/usr/bin/env bash
# Runs the vendored quiche's own library tests (vendor/quiche, with the changes listed in
# vendor/PATCHES.md). quiche is kept out of the workspace, so this builds a copy of it as a
# project of its own, BoringSSL included: several minutes on two cores. Not part of
# scripts/test.sh, whose tests cover each change end to end.
#
# Usage: scripts/quiche-tests.sh [FILTER]   (FILTER: as for `cargo test`, e.g. pmtud)
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r vendor/quiche "$work/quiche"
printf '\n[workspace]\n' >>"$work/quiche/Cargo.toml"
echo "quiche-tests: building and testing a copy of vendor/quiche in $work" >&2
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/quiche-tests}" \
    cargo test --manifest-path "$work/quiche/Cargo.toml" --lib -- "$@"
