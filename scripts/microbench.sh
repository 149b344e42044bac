#!/usr/bin/env bash
# Runs the criterion micro-benchmarks of the shard core and prints their medians as a Markdown
# table (the figures quoted in README.md). Extra arguments go to criterion, e.g. a filter.
# Usage: scripts/microbench.sh [criterion args]
set -euo pipefail
cd "$(dirname "$0")/.."

for bench in wire tables subs; do
    echo "== cargo bench --bench $bench" >&2
    cargo bench --locked --bench "$bench" -- --warm-up-time 1 --measurement-time 5 "$@" >&2
done

echo
echo "| benchmark | median |"
echo "|---|---|"
find target/criterion -path '*/new/estimates.json' | sort | while read -r f; do
    name=${f#target/criterion/}
    name=${name%/new/estimates.json}
    python3 - "$f" "$name" <<'PY'
import json, sys
est = json.load(open(sys.argv[1]))
ns = est["median"]["point_estimate"]
unit, div = ("ns", 1) if ns < 1e3 else (("µs", 1e3) if ns < 1e6 else ("ms", 1e6))
print(f"| {sys.argv[2]} | {ns/div:.1f} {unit} |")
PY
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD)"
