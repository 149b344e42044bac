#!/usr/bin/env bash
# Fuzzes the wire codec: feeds arbitrary byte streams to a FrameReader in pieces, decodes each
# frame and checks the invariants listed in fuzz/fuzz_targets/frame_reader.rs.
# Usage: scripts/fuzz.sh [SECONDS]   (default 60). Findings land in fuzz/artifacts/frame_reader.
# The fuzzer starts from fuzz/seeds/frame_reader (one encoded frame of each message type, behind
# the target's two parameter bytes) and the keys in fuzz/frame_reader.dict, and keeps what it
# finds in fuzz/corpus/frame_reader.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p corpus/frame_reader
# cargo-fuzz builds with sanitizer flags that need a nightly compiler, or this on a stable one.
export RUSTC_BOOTSTRAP=1
exec cargo fuzz run frame_reader corpus/frame_reader seeds/frame_reader -- \
    -max_total_time="${1:-60}" -dict=frame_reader.dict
