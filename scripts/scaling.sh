#!/usr/bin/env bash
# How the gateway's RPC rate grows with its shards, and its report.
#
# For each shard count N in --shards, runs a gateway of N shards pinned to N cores and N load
# generators (`meshgate-cli bench rpc`, one thread each) pinned to N other cores, all at once
# against it, and sums their calls/s. Each load generator has its own callers and providers,
# its sessions on one UDP socket, each placed on the shard its first connection ID names (the
# gateway steers datagrams by connection ID), so most calls cross from a
# caller's shard to a provider's on another. Shard counts are interleaved within each of
# --runs rounds, and the report gives the medians: calls/s, calls/s per shard, and the
# efficiency per shard, the rate of N shards over N times the rate of one (target: at least
# 85 % at the largest N). It also gives the gateway's CPU (all shards, and its busiest and
# idlest shard, from the gateway's meshgate_shard_cpu_seconds_total less its polling while
# idle) and the sessions each shard holds, so that an uneven spread shows.
#
# The load's default shape is 16 callers x 16 calls in flight and 4 providers per load
# generator, 64-byte payloads: 20 connections each, enough to spread over the shards as the
# many clients of a real gateway do, and enough calls in flight to keep one shard's core busy
# (on a 2-core AMD EPYC VM, at one shard: the gateway 93-97 % busy, its load generator 82-96 %,
# quick runs). Compare one scaling run's figures with each other only.
#
# Needs 2 x the largest N physical cores: by default one logical CPU of each physical core
# (SMT siblings share a core), the shards on the first M of them and the load on the next M (M
# the largest N). --gateway-cores and --load-cores name others. Where a shard count's processes
# share a core (a CPU named twice, or SMT siblings), the report marks it and gives no verdict:
# the figures of such a run check the script, not the gateway. The report goes to OUT/scaling.md, the raw JSON of every
# run and the gateways' logs beside it, with the machine and the commit measured.
#
# Usage: scripts/scaling.sh [--out DIR] [--shards "1 2 4 8"] [--runs N] [--duration SECONDS]
#                           [--warmup SECONDS] [--callers N] [--in-flight N] [--providers N]
#                           [--payload BYTES] [--gateway-cores LIST] [--load-cores LIST]
#                           [--port N] [--health-port N] [--bin DIR] [--quick]
#   --shards  the shard counts, in one argument (default: 1, 2, 4, ... up to half the physical
#             cores)
#   --gateway-cores, --load-cores  comma-separated cores, at least as many as the largest N;
#             shard count N uses the first N of each
#   --port, --health-port  the gateway's UDP and health ports on 127.0.0.1 (19443, 18080)
#   --bin     a folder holding built `meshgate` and `meshgate-cli` to use instead of building
#   --quick   a short pass (1 run, 3 s windows) that checks the script, not figures to quote
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."

command="scripts/scaling.sh${*:+ $*}"
out=target/scaling-report
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
command -v python3 >/dev/null || { echo "scaling: python3 is needed" >&2; exit 1; }
# The CPUs to pin to: one per physical core by default, so that no shard shares a core with a
# load generator through SMT; the checks accept any CPU this process may run on. A machine of
# one physical core (two SMT siblings, say) uses its logical CPUs: its runs are marked as
# sharing a core, and get no efficiency.
IFS=, read -ra physical <<<"$(python3 scripts/cores.py physical)"
if ((${#physical[@]} < 2)); then
    IFS=, read -ra physical <<<"$(python3 scripts/cores.py allowed)"
fi
allowed=",$(python3 scripts/cores.py allowed),"
if [[ -z "$shards" ]]; then
    shards=1
    for ((n = 2; 2 * n <= ${#physical[@]}; n *= 2)); do shards+=" $n"; done
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
if ((2 * largest <= ${#physical[@]})); then
    [[ -n "$gateway_cores" ]] || gateway_cores=$(IFS=,; echo "${physical[*]:0:largest}")
    [[ -n "$load_cores" ]] || load_cores=$(IFS=,; echo "${physical[*]:largest:largest}")
fi
IFS=, read -ra gw_cores <<<"$gateway_cores"
IFS=, read -ra ld_cores <<<"$load_cores"
for c in "${gw_cores[@]}" "${ld_cores[@]}"; do
    [[ "$c" =~ ^[0-9]+$ ]] || { echo "scaling: core '$c' is not a whole number" >&2; exit 2; }
    [[ "$allowed" == *",$c,"* ]] || {
        echo "scaling: this process may not run on CPU $c (it may on ${allowed:1:-1})" >&2
        exit 2
    }
done
if ((${#gw_cores[@]} < largest || ${#ld_cores[@]} < largest)); then
    echo "scaling: $largest shards need $largest gateway cores and $largest load cores, $((2 * largest)) physical cores in all (this machine has ${#physical[@]}; --gateway-cores and --load-cores name others)" >&2
    exit 2
fi
out=$(cd "$caller_dir" && realpath -m "$out")

if [[ -n "$bin_dir" ]]; then
    bin_dir=$(cd "$caller_dir" && realpath -m "$bin_dir")
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

# The gateway's per-shard gauge or counter NAME for each of its SHARDS shards, space-separated
# in shard order, "-" for a shard the metrics do not give (or all of them, if they cannot be
# read).
per_shard() {
    { fetch "$metrics" || true; } | awk -v name="$1" -v shards="$2" -F'[{}"]' '
        $1 == name && $2 == "shard=" { split($5, v, " "); n[$3] = v[1] }
        END { for (i = 0; i < shards; i++) printf "%s ", (i in n) ? n[i] : "-" }'
}

# The gateway's calls ended, messages between its shards and datagrams forwarded between them
# so far, space-separated ("- - -" if the metrics cannot be read).
totals() {
    { fetch "$metrics" || true; } | awk '
        /^meshgate_calls_total\{outcome=/ && !/shard=/ { calls += $2; seen = 1 }
        /^meshgate_shard_messages_total / { messages = $2 }
        /^meshgate_udp_datagrams_forwarded_total / { forwarded = $2 }
        END { if (seen) printf "%d %d %d", calls, messages, forwarded; else printf "- - -" }'
}

step=0
steps=$((runs * ${#counts[@]}))
git describe --always --dirty --abbrev=12 2>/dev/null >"$out/json/commit.txt" ||
    echo unknown >"$out/json/commit.txt"
python3 scripts/record_machine.py "$out/json/machine.json"
started=$(date +%s)
# The shards' CPU is read over the middle half of the load's window (at least a second).
quarter=$((duration / 4))
half=$((duration / 2 > 1 ? duration / 2 : 1))

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
        # The load's window starts once every load generator has connected and warmed up (a
        # fraction of a second to connect); the shards' CPU is read over its middle half.
        sleep $((warmup + quarter))
        cpu_before=$(per_shard meshgate_shard_cpu_seconds_total "$n")
        spin_before=$(per_shard meshgate_shard_spin_seconds_total "$n")
        totals_before=$(totals)
        t_before=$(date +%s.%N)
        sessions=$(per_shard meshgate_clients "$n")
        sleep "$half"
        cpu_after=$(per_shard meshgate_shard_cpu_seconds_total "$n")
        spin_after=$(per_shard meshgate_shard_spin_seconds_total "$n")
        totals_after=$(totals)
        t_after=$(date +%s.%N)
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
            "$cpu_after" "$t_before" "$t_after" "$totals_before" "$totals_after" \
            "$spin_before" "$spin_after" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts")
from cores import shared
d, name, n, r, gw, ld, sessions, before, after, t_before, t_after = sys.argv[1:12]
totals_before, totals_after, spin_before, spin_after = sys.argv[12:]
loads = []
for k in range(int(n)):
    tmp = os.path.join(d, f"{name}-load-{k}.json.tmp")
    with open(tmp) as f:
        loads.append(json.load(f))
    os.remove(tmp)
def figures(text):
    return [None if x == "-" else float(x) for x in text.split()]
seconds = float(t_after) - float(t_before)
# A shard's busy share leaves out the time it spent polling while idle (its --spin).
spun = [
    0 if a is None or b is None else a - b
    for a, b in zip(figures(spin_after), figures(spin_before))
]
busy = [
    None if a is None or b is None else (a - b - s) / seconds
    for a, b, s in zip(figures(after), figures(before), spun)
]
gw, ld = [int(c) for c in gw.split(",")], [int(c) for c in ld.split(",")]
# Over the same span: calls ended, messages between shards, datagrams forwarded.
spent = [
    None if a is None or b is None else a - b
    for a, b in zip(figures(totals_after), figures(totals_before))
]
calls, messages, forwarded = spent
run = {
    "shards": int(n),
    "run": int(r),
    "gateway_cores": gw,
    "load_cores": ld,
    # Whether a core (or an SMT sibling of it) serves two of the processes.
    "cores_shared": shared(gw + ld),
    "sessions_per_shard": [None if x is None else int(x) for x in figures(sessions)],
    "shard_busy": busy,
    "shard_messages_per_call": messages / calls if calls and messages is not None else None,
    "datagrams_forwarded": None if forwarded is None else int(forwarded),
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
