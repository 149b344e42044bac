#!/usr/bin/env bash
# Where an idle session's memory goes: the gateway under heaptrack, N idle sessions, and the
# heap at its peak split by what allocated it (quiche's connection, its streams and recovery,
# TLS, the shard's session, the driver's tables...), per session.
#
# Usage: scripts/heap.sh [--sessions N] [--out DIR]
#   HEAP_GATEWAY_FLAGS adds flags to the gateway's (e.g. "--pmtud-max 0", to compare).
#   Needs heaptrack (apt-get install heaptrack). Writes DIR/heap.md (default
#   target/heap-report) with the table, and keeps heaptrack's data and the stacks beside it.
#   The sessions connect, stay idle for a few seconds and leave; the peak is while they are
#   all connected. Heap bytes only: resident memory adds the allocator's own overhead and
#   the pages it keeps (see `meshgate-cli bench idle`).
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=2000
out=target/heap-report
while (($#)); do
    case "$1" in
        --sessions) sessions=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "heap: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$sessions" =~ ^[1-9][0-9]*$ ]] || { echo "heap: --sessions must be a positive number" >&2; exit 2; }
for tool in heaptrack heaptrack_print python3 curl; do
    command -v "$tool" >/dev/null || { echo "heap: $tool is needed (apt-get install heaptrack)" >&2; exit 1; }
done

echo "heap: building (release)" >&2
cargo build --release --locked -p meshgate -p meshgate-cli >&2
mkdir -p "$out"
out=$(realpath "$out")
rm -f "$out"/heaptrack* "$out"/stacks.txt
port=19643
health=18280
echo "heap: the gateway under heaptrack" >&2
heaptrack -o "$out/heaptrack" target/release/meshgate serve --shards 1 \
    --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$health" \
    --max-clients $((sessions * 2)) ${HEAP_GATEWAY_FLAGS:-} >"$out/gateway.log" 2>&1 &
tracer=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$health/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$health/health" >/dev/null ||
    { echo "heap: the gateway did not start; see $out/gateway.log" >&2; kill "$tracer"; exit 1; }
echo "heap: $sessions idle sessions" >&2
target/release/meshgate-cli bench idle --clients "$sessions" --settle 3s \
    --server "127.0.0.1:$port" --insecure --metrics "http://127.0.0.1:$health/metrics" \
    --json >"$out/idle.json"
pkill -TERM -f "^[^ ]*meshgate serve --shards 1 --listen 127.0.0.1:$port" || true
wait "$tracer" || true
data=$(ls "$out"/heaptrack*.zst "$out"/heaptrack*.gz 2>/dev/null | head -1 || true)
[[ -n "$data" ]] || { echo "heap: heaptrack wrote no data; see $out/gateway.log" >&2; exit 1; }
heaptrack_print -f "$data" --flamegraph-cost-type peak -F "$out/stacks.txt" >"$out/print.txt"

python3 - "$out/stacks.txt" "$sessions" "$out/idle.json" >"$out/heap.md" <<'PY'
import json, re, subprocess, sys

stacks, sessions, idle = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# The first rule whose pattern appears in a stack (searched from the allocating frame up to
# the root) names the allocation's owner.
RULES = [
    ("TLS: BoringSSL (SSL object, handshake, session)", ("SSL_", "ssl_", "boring::", "bssl::", "tls::Handshake")),
    ("quiche: stream buffers", ("quiche::stream::recv_buf", "quiche::stream::send_buf", "stream_send", "stream_recv")),
    ("quiche: stream table", ("quiche::stream::", "get_or_create_stream")),
    ("quiche: loss recovery and congestion", ("quiche::recovery::",)),
    ("quiche: paths and connection ids", ("quiche::path::", "quiche::cid::")),
    ("quiche: packet and frame queues", ("quiche::frame::", "quiche::packet::", "quiche::ranges::", "quiche::dgram::")),
    ("quiche: connection object and the rest", ("quiche::",)),
    ("shard: session, frame reader, output", ("meshgate_shard::", "meshgate_protocol::")),
    ("start-up: inter-shard channels (not per session)", ("meshgate::mailbox::Shared::new",)),
    # What the driver allocates itself under accept is, above all, the box of quiche's
    # connection object (its size is quiche's; the rest are connection ids).
    ("quiche: the connection object (boxed by the driver)", ("meshgate::endpoint::Endpoint::accept", "meshgate::endpoint::Endpoint::connect")),
    ("driver: connection table, connection ids, batches", ("meshgate::",)),
]


def forms(pattern):
    """The pattern as written and, for a Rust path, as it appears in a v0-mangled symbol."""
    parts = [x for x in pattern.split("::") if x]
    mangled = "".join(f"{len(x)}{x}" for x in parts) if "::" in pattern else None
    return [f for f in (pattern, mangled) if f]


RULES = [(name, [f for p in patterns for f in forms(p)]) for name, patterns in RULES]
owners = {}
sites = {}
total = 0
with open(stacks) as f:
    for line in f:
        line = line.rstrip("\n")
        if not line:
            continue
        frames, _, cost = line.rpartition(" ")
        try:
            cost = int(cost)
        except ValueError:
            continue
        total += cost
        path = frames.split(";")
        sites[tuple(path)] = sites.get(tuple(path), 0) + cost
        owner = "other (allocator, runtime, start-up)"
        for name, patterns in RULES:
            if any(p in frame for frame in reversed(path) for p in patterns):
                owner = name
                break
        owners[owner] = owners.get(owner, 0) + cost
summary = json.load(open(idle))
print(f"# Heap per idle session ({sessions:,} sessions)")
print()
print("Heap bytes at the gateway's peak (heaptrack), by what allocated them, divided by the")
print(f"sessions connected ({summary.get('connected', sessions):,}). What the gateway allocates at start")
print("(the inter-shard channels, the runtime) is divided by the sessions too, in rows of its own.")
print("`scripts/heap.sh` made it.")
print()
print("| owner | bytes per session | share |")
print("|---|--:|--:|")
for name, cost in sorted(owners.items(), key=lambda kv: -kv[1]):
    print(f"| {name} | {cost / sessions:,.0f} | {cost * 100 / total:.1f} % |")
print(f"| **all heap at the peak** | **{total / sessions:,.0f}** | 100 % |")

# The largest allocation sites, each by the nearest frames of quiche, BoringSSL or meshgate.
top = sorted(sites.items(), key=lambda kv: -kv[1])[:20]
names = sorted({f for path, _ in top for f in path})
try:
    shown = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                           text=True, check=True).stdout.split("\n")
except (OSError, subprocess.CalledProcessError):
    shown = names
demangled = dict(zip(names, shown))


def clean(name):
    name = re.sub(r"::h[0-9a-f]{16}", "", name)
    name = re.sub(r"\[[0-9a-f]+\]", "", name)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("..", "::"), ("$C$", ", ")):
        name = name.replace(a, b)
    return re.sub(r" \([^)]*\.(rs|cc|h|c)\)$", "", name)


print()
print("The largest allocation sites (the nearest frames of quiche, BoringSSL or meshgate,")
print("innermost first):")
print()
print("| bytes per session | where |")
print("|--:|---|")
for path, cost in top:
    frames = [clean(demangled.get(f, f)) for f in reversed(path)]
    near = [f for f in frames if re.search(r"quiche|meshgate|SSL|bssl", f)][:3]
    where = " ← ".join(f"`{f[:80]}`" for f in near) or "(allocator, runtime)"
    print(f"| {cost / sessions:,.0f} | {where} |")
rss = summary.get("bytes_per_idle_session")
if rss:
    print()
    print(f"Resident memory per idle session in the same run (`bench idle`): {rss:,.0f} bytes.")
PY
cat "$out/heap.md"
