#!/usr/bin/env bash
# Fuzzes the wire codec. Targets (their invariants are listed at the top of each file in
# fuzz/fuzz_targets/):
# - frame_reader: arbitrary byte streams through a FrameReader in pieces, each frame decoded as
#   a client frame (sections 2 and 4);
# - peer_frames: arbitrary byte streams of a peer link, each frame decoded as a peer-link frame
#   (9.2, 9.11);
# - shard_sessions: one shard driven by sessions whose streams carry arbitrary bytes, opened,
#   ended, closed and stalled in any order, the clock moved on between (no panic, only valid
#   frames sent, no state left once every session has closed).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 s, each target in turn).
# Findings land in fuzz/artifacts/TARGET. Each target starts from fuzz/seeds/TARGET (encoded
# frames behind the target's two parameter bytes; for shard_sessions, operations that open and
# connect two sessions and hand them those frames) and the keys in fuzz/TARGET.dict
# (shard_sessions: frame_reader.dict, the client protocol's), and keeps what it finds in
# fuzz/corpus/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame_reader peer_frames shard_sessions)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz builds with sanitizer flags that need a nightly compiler, or this on a stable one.
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    case "$target" in
        shard_sessions) dict=frame_reader.dict ;;
        *) dict="$target.dict" ;;
    esac
    mkdir -p "corpus/$target"
    cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -dict="$dict"
done
