#!/usr/bin/env bash
# How the gateway's RPC rate grows with its shards, and its report.
#
# For each shard count N in --shards, runs a gateway of N shards pinned to N cores and N load
# generators (`meshgate-cli bench rpc`, one thread each) pinned to N other cores, all at once
# against it, and sums their calls/s. Each load generator has its own callers and providers,
# its sessions on one UDP socket, each placed on a shard by the first byte of its first
# connection ID (the gateway steers datagrams by connection ID), so most calls cross from a
# caller's shard to a provider's on another. Shard counts are interleaved within each of
# --runs rounds, and the report gives the medians: calls/s, calls/s per shard, and the
# efficiency per shard, the rate of N shards over N times the rate of one (target: at least
# 85 % at the largest N). It also gives the gateway's CPU (all shards, and its busiest and
# idlest shard, from the gateway's meshgate_shard_cpu_seconds_total) and the sessions each
# shard holds, so that an uneven spread shows.
#
# The load's default shape is 16 callers x 16 calls in flight and 4 providers per load
# generator, 64-byte payloads: 20 connections each, enough to spread over the shards as the
# many clients of a real gateway do, and enough calls in flight to keep one shard's core busy
# (on a 2-core AMD EPYC VM, at one shard: the gateway 93-97 % busy, its load generator 82-96 %,
# quick runs). Compare one scaling run's figures with each other only.
#
# Needs 2 x the largest N cores: by default shards on cores 0..M-1 and load on M..2M-1 (M the
# largest N). --gateway-cores and --load-cores name others. Where a shard count's load shares a
# core with its gateway, the report marks it and gives no verdict: the figures of such a run
# check the script, not the gateway. The report goes to OUT/scaling.md, the raw JSON of every
# run and the gateways' logs beside it, with the machine and the commit measured.
#
# Usage: scripts/scaling.sh [--out DIR] [--shards "1 2 4 8"] [--runs N] [--duration SECONDS]
#                           [--warmup SECONDS] [--callers N] [--in-flight N] [--providers N]
#                           [--payload BYTES] [--gateway-cores LIST] [--load-cores LIST]
#                           [--port N] [--health-port N] [--bin DIR] [--quick]
#   --shards  the shard counts, in one argument (default: 1, 2, 4, ... up to half the cores)
#   --gateway-cores, --load-cores  comma-separated cores, at least as many as the largest N;
#             shard count N uses the first N of each
#   --port, --health-port  the gateway's UDP and health ports on 127.0.0.1 (19443, 18080)
#   --bin     a folder holding built `meshgate` and `meshgate-cli` to use instead of building
#   --quick   a short pass (1 run, 3 s windows) that checks the script, not figures to quote
set -euo pipefail
cd "$(dirname "$0")/.."

command="scripts/scaling.sh${*:+ $*}"
out=target/scaling-report
cpus=$(nproc)
shards=""
runs=3
duration=10
warmup=2
callers=16
in_flight=16
providers=4
payload=64
gateway_cores=""
load_cores=""
bin_dir=""
port=19443
health=18080
while (($#)); do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --callers) callers=$2; shift 2 ;;
        --in-flight) in_flight=$2; shift 2 ;;
        --providers) providers=$2; shift 2 ;;
        --payload) payload=$2; shift 2 ;;
        --gateway-cores) gateway_cores=$2; shift 2 ;;
        --load-cores) load_cores=$2; shift 2 ;;
        --bin) bin_dir=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --health-port) health=$2; shift 2 ;;
        --quick) runs=1; duration=3; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "scaling: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$shards" ]]; then
    shards=1
    for ((n = 2; 2 * n <= cpus; n *= 2)); do shards+=" $n"; done
fi
read -ra counts <<<"$shards"
((${#counts[@]} >= 1)) || { echo "scaling: --shards names no shard count" >&2; exit 2; }
for n in "${counts[@]}" "$runs" "$duration" "$warmup" "$callers" "$in_flight" "$providers" \
    "$payload" "$port" "$health"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "scaling: '$n' is not a whole number" >&2; exit 2; }
done
((runs >= 1 && duration >= 1)) || { echo "scaling: --runs and --duration must be at least 1" >&2; exit 2; }
largest=0
for n in "${counts[@]}"; do
    ((n >= 1)) || { echo "scaling: a shard count must be at least 1" >&2; exit 2; }
    ((n > largest)) && largest=$n
done
[[ -n "$gateway_cores" ]] || gateway_cores=$(seq -s, 0 $((largest - 1)))
[[ -n "$load_cores" ]] || load_cores=$(seq -s, "$largest" $((2 * largest - 1)))
IFS=, read -ra gw_cores <<<"$gateway_cores"
IFS=, read -ra ld_cores <<<"$load_cores"
for c in "${gw_cores[@]}" "${ld_cores[@]}"; do
    [[ "$c" =~ ^[0-9]+$ ]] || { echo "scaling: core '$c' is not a whole number" >&2; exit 2; }
    ((c < cpus)) || {
        echo "scaling: core $c is not on this machine ($cpus cores); shard counts up to $largest need $((2 * largest)) (see --gateway-cores, --load-cores)" >&2
        exit 2
    }
done
if ((${#gw_cores[@]} < largest || ${#ld_cores[@]} < largest)); then
    echo "scaling: $largest shards need $largest gateway cores and $largest load cores (--gateway-cores $gateway_cores, --load-cores $load_cores)" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "scaling: python3 is needed to write the report" >&2; exit 1; }
command -v curl >/dev/null || { echo "scaling: curl is needed to wait for the gateway" >&2; exit 1; }
out=$(realpath -m "$out")

if [[ -n "$bin_dir" ]]; then
    bin=$bin_dir/meshgate
    cli=$bin_dir/meshgate-cli
    [[ -x "$bin" && -x "$cli" ]] || { echo "scaling: --bin $bin_dir holds no meshgate and meshgate-cli" >&2; exit 2; }
else
    scripts/setup.sh
    echo "scaling: building (release)" >&2
    cargo build --release --locked -p meshgate -p meshgate-cli >&2
    bin=target/release/meshgate
    cli=target/release/meshgate-cli
fi

server=127.0.0.1:$port
metrics=http://127.0.0.1:$health/metrics
mkdir -p "$out/json" "$out/logs"
rm -f "$out"/json/*.json "$out"/logs/*.log
gateway_pid=""
load_pids=()

me=scaling
# shellcheck source=scripts/gateway-lib.sh
source scripts/gateway-lib.sh

stop_all() {
    for pid in "${load_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    stop_gateway
}
trap stop_all EXIT

# The gateway's per-shard gauge or counter NAME, space-separated in shard order.
per_shard() {
    curl -sf "$metrics" | awk -v name="$1" -F'[{}"]' '$1 == name && $2 == "shard=" {
            split($5, v, " "); n[$3] = v[1]; if ($3 + 1 > m) m = $3 + 1 }
        END { for (i = 0; i < m; i++) printf "%s ", n[i] }'
}

step=0
steps=$((runs * ${#counts[@]}))
git describe --always --dirty --abbrev=12 2>/dev/null >"$out/json/commit.txt" ||
    echo unknown >"$out/json/commit.txt"
python3 scripts/record_machine.py "$out/json/machine.json"
started=$(date +%s)
# The span over which the shards' CPU is read, in seconds: the middle of the load's window.
middle=$((duration - duration / 4 - 1))
((middle >= 1)) || middle=1

for r in $(seq "$runs"); do
    for n in "${counts[@]}"; do
        step=$((step + 1))
        gw=$(IFS=,; echo "${gw_cores[*]:0:n}")
        ld=$(IFS=,; echo "${ld_cores[*]:0:n}")
        echo "scaling: [$step/$steps] $n shard(s) on cores $gw, $n load generator(s) on cores $ld, run $r of $runs" >&2
        name="scaling-$n-$r"
        start_gateway "$name" "$gw" --shards "$n" --listen "$server"
        load_pids=()
        for k in $(seq 0 $((n - 1))); do
            taskset -c "${ld_cores[k]}" "$cli" bench rpc --server "$server" --insecure \
                --metrics "$metrics" --gateway-pid "$gateway_pid" --json --callers "$callers" \
                --providers "$providers" --in-flight "$in_flight" --payload "$payload" \
                --duration "${duration}s" --warmup "${warmup}s" \
                >"$out/json/$name-load-$k.json.tmp" 2>"$out/logs/$name-load-$k.log" &
            load_pids+=($!)
        done
        # The measured window starts once every load generator has connected and warmed up;
        # the shards' CPU (the gateway's metrics) is read over its middle, where all of them run.
        sleep $((warmup + 1))
        cpu_before=$(per_shard meshgate_shard_cpu_seconds_total)
        sessions=$(per_shard meshgate_clients)
        sleep "$middle"
        cpu_after=$(per_shard meshgate_shard_cpu_seconds_total)
        failed=0
        for k in "${!load_pids[@]}"; do
            if ! wait "${load_pids[k]}"; then
                failed=1
                echo "scaling: load generator $k failed; its log:" >&2
                cat "$out/logs/$name-load-$k.log" >&2
            fi
        done
        load_pids=()
        stop_all
        ((failed == 0)) || exit 1
        python3 - "$out/json" "$name" "$n" "$r" "$gw" "$ld" "$sessions" "$cpu_before" \
            "$cpu_after" "$middle" <<'PY'
import json, os, sys
d, name, n, r, gw, ld, sessions, before, after, seconds = sys.argv[1:]
loads = []
for k in range(int(n)):
    tmp = os.path.join(d, f"{name}-load-{k}.json.tmp")
    with open(tmp) as f:
        loads.append(json.load(f))
    os.remove(tmp)
before, after = [float(x) for x in before.split()], [float(x) for x in after.split()]
busy = None
if before and len(before) == len(after):
    busy = [(a - b) / int(seconds) for a, b in zip(after, before)]
run = {
    "shards": int(n),
    "run": int(r),
    "gateway_cores": [int(c) for c in gw.split(",")],
    "load_cores": [int(c) for c in ld.split(",")],
    "sessions_per_shard": [int(x) for x in sessions.split()],
    "shard_busy": busy,
    "loads": loads,
}
with open(os.path.join(d, f"{name}.json"), "w") as f:
    json.dump(run, f, indent=1)
PY
    done
done

elapsed=$(($(date +%s) - started))
python3 scripts/scaling_report.py --dir "$out" --elapsed "$elapsed" --command "$command" \
    >"$out/scaling.md"
echo "scaling: done in ${elapsed}s; report in $out/scaling.md" >&2
