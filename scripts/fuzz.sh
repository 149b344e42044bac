#!/usr/bin/env bash
# Fuzzes the wire codec. Targets (their invariants are listed at the top of each file in
# fuzz/fuzz_targets/):
# - frame_reader: arbitrary byte streams through a FrameReader in pieces, each frame decoded as
#   a client frame (sections 2 and 4);
# - peer_frames: arbitrary byte streams of a peer link, each frame decoded as a peer-link frame
#   (9.2, 9.11).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 s, each target in turn).
# Findings land in fuzz/artifacts/TARGET. Each target starts from fuzz/seeds/TARGET (encoded
# frames behind the target's two parameter bytes) and the keys in fuzz/TARGET.dict, and keeps
# what it finds in fuzz/corpus/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame_reader peer_frames)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz builds with sanitizer flags that need a nightly compiler, or this on a stable one.
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -dict="$target.dict"
done
