#!/usr/bin/env bash
# Measures the CPU an idle gateway uses: starts it with 2 shards, waits, and reads the process's
# user+system time over a window (default 10 s). Prints the share of one core.
# Usage: scripts/idle-cpu.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-10}
cargo build --release --locked --bin meshgate >&2
target/release/meshgate serve --shards 2 --listen 127.0.0.1:0 --health-listen 127.0.0.1:0 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 2
ticks=$(getconf CLK_TCK)
before=$(awk '{print $14 + $15}' /proc/$pid/stat)
sleep "$window"
after=$(awk '{print $14 + $15}' /proc/$pid/stat)
awk -v d=$((after - before)) -v t="$ticks" -v w="$window" \
    'BEGIN { printf "idle gateway, 2 shards: %.2f%% of one core over %d s (%d ticks)\n", 100 * d / (t * w), w, d }'
