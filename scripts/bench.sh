#!/usr/bin/env bash
# The standard benchmark suite and its report.
#
# Builds meshgate in release mode, then for each scenario starts a fresh gateway with one shard
# pinned to one core and runs the load generator, `meshgate-cli bench`, pinned to another, so
# that the two never share a core. Throughput scenarios run --runs times and the report gives
# their medians. The same run measures the machine's baseline (`meshgate-cli quic-echo`: a bare
# quiche echo between the same two cores) and gives the gateway's RPC rate as a fraction of
# half its rate (a call is two hops), and, before the runs and after them, the machine's own
# stalls (`meshgate-cli stalls`: how long a busy thread on each core goes without running),
# which a call in flight waits out whatever the gateway does. With --nats DIR (natsbench, see
# its README) the same run also measures nats-server, plain and with TLS, in the same shapes,
# interleaved with the meshgate runs, and the report checks the targets against it. The report
# goes to OUT/report.md, with the charts (SVG), the raw JSON of every run and the gateways' logs beside it. The raw results also record
# the machine that measured (OUT/json/machine.json) and the commit measured (OUT/json/commit.txt):
# scripts/bench_report.py reads them from there, so the report can be made again elsewhere.
#
# Usage: scripts/bench.sh [--out DIR] [--runs N] [--duration SECONDS] [--gateway-cpu N]
#                         [--load-cpu N] [--churn-cycles N] [--churn-rate N] [--idle-clients N]
#                         [--pubsub-rate N] [--pubsub-burst-rate N] [--pubsub-tick MS]
#                         [--fixed-payload N] [--mesh-rate N] [--mesh-pairs N] [--nats NATSBENCH_DIR] [--quick]
#   --pubsub-rate  the publisher's rate in the pub/sub runs paced message by message (150,000)
#   --pubsub-burst-rate, --pubsub-tick  the pub/sub runs whose publisher writes the messages
#             of each tick together, as a client flushing its buffer on a timer does (1 ms):
#             the shape compared with nats-server's, whose publisher batches. Their rate is,
#             unless given, the one nats-server delivered at in the same run (its publisher
#             unpaced) over its 4 subscribers, rounded down to thousands, so that the two
#             servers' CPU per delivery is measured at one delivery rate; 300,000 messages/s
#             without --nats or a usable nats-server figure
#   --fixed-payload  the --max-udp-payload of the gateway and the load generator in a second
#             set of the runs in bursts, with path MTU discovery off on both sides
#             (--pmtud-max 0), as on a path of Ethernet frames (1350, the default without
#             discovery); each such run follows a run with the defaults, in which both sides
#             discover what the loopback carries, up to --pmtud-max (8952)
#   --mesh-rate  the paced rate (calls/s) at which a forwarded call's CPU on each gateway is
#             compared with a local call's, both on the same two gateways (default 5,000: low
#             enough that neither run saturates the core the gateways share)
#   --mesh-pairs  pairs of a forwarded and a local paced run per run (3), which goes first
#             alternating: at a paced rate a call's CPU varies from run to run by more than
#             the two differ. In those runs the load generator sleeps between datagrams, as
#             the gateways do (over the loopback a sender pays for waking its receiver)
#   --quick   a short pass (1 run, 3 s windows, 2,000 churn cycles, 500 idle clients) that
#             checks the script and the scenarios, not figures to quote.
set -euo pipefail
cd "$(dirname "$0")/.."

command="scripts/bench.sh${*:+ $*}"
out=target/bench-report
runs=3
duration=10
gateway_cpu=0
load_cpu=1
churn_cycles=100000
churn_rate=1000
idle_clients=5000
pubsub_rate=150000
pubsub_burst_rate=""
pubsub_tick=1
fixed_payload=1350
mesh_rate=5000
mesh_pairs=3
nats=""
while (($#)); do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --gateway-cpu) gateway_cpu=$2; shift 2 ;;
        --load-cpu) load_cpu=$2; shift 2 ;;
        --churn-cycles) churn_cycles=$2; shift 2 ;;
        --churn-rate) churn_rate=$2; shift 2 ;;
        --idle-clients) idle_clients=$2; shift 2 ;;
        --pubsub-rate) pubsub_rate=$2; shift 2 ;;
        --pubsub-burst-rate)
            [[ -n "$2" ]] || { echo "bench: --pubsub-burst-rate needs a rate" >&2; exit 2; }
            pubsub_burst_rate=$2; shift 2 ;;
        --pubsub-tick) pubsub_tick=$2; shift 2 ;;
        --fixed-payload) fixed_payload=$2; shift 2 ;;
        --mesh-rate) mesh_rate=$2; shift 2 ;;
        --mesh-pairs) mesh_pairs=$2; shift 2 ;;
        --nats) nats=$2; shift 2 ;;
        --quick) runs=1; duration=3; churn_cycles=2000; idle_clients=500; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$runs" "$duration" "$gateway_cpu" "$load_cpu" "$churn_cycles" "$churn_rate" "$idle_clients" \
    "$pubsub_rate" "${pubsub_burst_rate:-1}" "$pubsub_tick" "$fixed_payload" "$mesh_rate" "$mesh_pairs"; do
    [[ "$n" =~ ^(0|[1-9][0-9]*)$ ]] ||
        { echo "bench: '$n' is not a whole number (in decimal, without leading zeros)" >&2; exit 2; }
done
((runs >= 1 && duration >= 1 && mesh_pairs >= 1 && ${pubsub_burst_rate:-1} >= 1)) ||
    { echo "bench: --runs, --duration, --mesh-pairs and --pubsub-burst-rate must be at least 1" >&2; exit 2; }
((fixed_payload >= 1200 && fixed_payload <= 16383)) ||
    { echo "bench: --fixed-payload must be 1200 to 16383 bytes" >&2; exit 2; }
out=$(realpath -m "$out")
cpus=$(nproc)
if ((gateway_cpu >= cpus || load_cpu >= cpus || gateway_cpu == load_cpu)); then
    echo "bench: needs two distinct cores (--gateway-cpu $gateway_cpu, --load-cpu $load_cpu; this machine has $cpus)" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "bench: python3 is needed to write the report" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench: curl is needed to wait for the gateway" >&2; exit 1; }
if [[ -n "$nats" ]]; then
    [[ -x "$nats/run.sh" ]] || { echo "bench: --nats $nats: no run.sh there (give natsbench's folder)" >&2; exit 2; }
    command -v nats-server >/dev/null ||
        { echo "bench: --nats needs nats-server (apt-get install nats-server)" >&2; exit 2; }
    nats=$(cd "$nats" && pwd)
fi

scripts/setup.sh
echo "bench: building (release)" >&2
# One build of both packages: separate ones resolve features apart and build quiche twice.
cargo build --release --locked -p meshgate -p meshgate-cli >&2

bin=target/release/meshgate
cli=target/release/meshgate-cli
port=19443
health=18080
server=127.0.0.1:$port
metrics=http://127.0.0.1:$health/metrics
mkdir -p "$out/json" "$out/logs"
rm -f "$out"/json/*.json "$out"/logs/*.log
gateway_pid=""

me=bench
# shellcheck source=scripts/gateway-lib.sh
source scripts/gateway-lib.sh
trap stop_gateway EXIT

# The gateway's CPU time so far, in clock ticks (user + system).
gateway_ticks() {
    awk '{print $14 + $15}' "/proc/$gateway_pid/stat"
}

step=0
steps=$((runs * (10 + 2 * mesh_pairs) + 11))
[[ -n "$nats" ]] && steps=$((steps + runs))
say() {
    step=$((step + 1))
    echo "bench: [$step/$steps] $*" >&2
}

# counts_of URL: a gateway's calls ended, messages delivered, UDP datagrams received and sent,
# turns of its shards' loops and messages published so far, from its metrics at URL.
counts_of() {
    curl -sf "$1" | awk '
        /^meshgate_calls_total\{outcome=/ && !/shard=/ { calls += $2 }
        /^meshgate_deliveries_total / { deliveries = $2 }
        /^meshgate_udp_datagrams_received_total / { received = $2 }
        /^meshgate_udp_datagrams_sent_total / { sent = $2 }
        /^meshgate_shard_turns_total / { turns = $2 }
        /^meshgate_publishes_total / { publishes = $2 }
        END { printf "%d %d %d %d %d %d\n", calls, deliveries, received, sent, turns, publishes }'
}

# The gateway's counts (counts_of) so far.
gateway_counts() {
    counts_of "$metrics"
}

# load NAME SCENARIO [flags]: runs one scenario pinned to the load core, its summary as JSON.
# Added to the JSON: the gateway's CPU time over the whole run (gateway_cpu_s), and the calls,
# deliveries, UDP datagrams and loop turns it counted over the same span (gateway_calls,
# gateway_deliveries, gateway_datagrams_received, gateway_datagrams_sent, gateway_turns).
load() {
    local name=$1 scenario=$2
    shift 2
    local ticks_before ticks_after counts_before counts_after
    counts_before=$(gateway_counts)
    ticks_before=$(gateway_ticks)
    # rpc, pubsub and handshake report both sides' CPU over their measured window.
    local pid=()
    [[ "$scenario" =~ ^(rpc|pubsub|handshake)$ ]] && pid=(--gateway-pid "$gateway_pid")
    # --insecure: the gateway runs with the self-signed certificate it makes at start.
    taskset -c "$load_cpu" "$cli" bench "$scenario" --server "$server" --insecure \
        --metrics "$metrics" --json "${pid[@]}" "$@" >"$out/json/$name.json.tmp"
    ticks_after=$(gateway_ticks)
    counts_after=$(gateway_counts)
    python3 - "$out/json/$name.json.tmp" "$out/json/$name.json" "$ticks_before" "$ticks_after" \
        "$(getconf CLK_TCK)" "$counts_before" "$counts_after" <<'PY'
import json, sys
src, dst, before, after, tck, counts_before, counts_after = sys.argv[1:]
summary = json.load(open(src))
summary["gateway_cpu_s"] = (int(after) - int(before)) / int(tck)
b, a = [int(x) for x in counts_before.split()], [int(x) for x in counts_after.split()]
names = ["calls", "deliveries", "datagrams_received", "datagrams_sent", "turns", "publishes"]
for name, after, before in zip(names, a, b):
    summary[f"gateway_{name}"] = after - before
json.dump(summary, open(dst, "w"), indent=1)
PY
    rm -f "$out/json/$name.json.tmp"
}

# fresh NAME [serve flags] -- SCENARIO [bench flags]: the scenario against a gateway of its
# own, stopped afterwards.
fresh() {
    local name=$1 flags=()
    shift
    while [[ "$1" != -- ]]; do
        flags+=("$1")
        shift
    done
    shift
    start_gateway "$name" "$gateway_cpu" --shards 1 --listen "$server" "${flags[@]}"
    load "$name" "$@"
    stop_gateway
}

started=$(date +%s)
git describe --always --dirty --abbrev=12 2>/dev/null >"$out/json/commit.txt" ||
    echo unknown >"$out/json/commit.txt"
# The machine, as the report's Machine line gives it: cores, CPU model, memory, kernel.
python3 scripts/record_machine.py "$out/json/machine.json"
# stalls WHEN: how long the machine keeps a busy thread on each of the two cores from running,
# both at once: a floor under the largest latency a run can be counted on to show.
stalls() {
    say "the machine's own stalls: a busy thread on each core, $1"
    "$cli" stalls --cores "$gateway_cpu,$load_cpu" --duration "${duration}s" --json \
        >"$out/json/stalls-$1.json"
}

rm -rf "$out/nats"
stalls before
for r in $(seq "$runs"); do
    say "baseline: QUIC echo, 4 connections x 16 in flight, 64 B, run $r of $runs"
    "$cli" quic-echo --server-cpu "$gateway_cpu" --client-cpu "$load_cpu" --connections 4 \
        --in-flight 16 --payload 64 --duration "${duration}s" --warmup 2s --json \
        >"$out/json/baseline-$r.json"
    say "rpc: 4 callers x 16 in flight, 2 providers, 64-byte payloads, run $r of $runs"
    fresh "rpc-$r" -- rpc --callers 4 --providers 2 --in-flight 16 --payload 64 \
        --duration "${duration}s" --warmup 2s
    if [[ -n "$nats" ]]; then
        say "nats-server, plain and TLS, the same shapes (natsbench), run $r of $runs"
        mkdir -p "$out/nats"
        OUT="$out/nats/run-$r" DUR="$duration" SERVER_CPU="$gateway_cpu" CLIENT_CPU="$load_cpu" \
            "$nats/run.sh" >"$out/logs/nats-$r.log" 2>&1 ||
            echo "bench: natsbench run $r failed; see $out/logs/nats-$r.log" >&2
    fi
done

half=$(python3 - "$out/json" "$runs" <<'PY'
import json, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
rates = [json.load(open(f"{d}/rpc-{r}.json"))["calls_per_s"] for r in range(1, runs + 1)]
print(max(1, round(statistics.median(rates) / 2)))
PY
)
# The runs in bursts publish at the rate given, or at the one nats-server delivered to each of
# its subscribers in this run, or at 300,000/s (see scripts/pubsub_burst_rate.py), which says
# why where nats-server was to be matched and cannot be.
pubsub_burst_rate=$(python3 scripts/pubsub_burst_rate.py "$out" "$runs" \
    ${pubsub_burst_rate:+--rate "$pubsub_burst_rate"} ${nats:+--match-nats})

for r in $(seq "$runs"); do
    say "rpc at half the maximum rate ($half calls/s), run $r of $runs"
    fresh "rpc-half-$r" -- rpc --callers 4 --providers 2 --payload 64 --rate "$half" \
        --duration "${duration}s" --warmup 2s
done

for r in $(seq "$runs"); do
    say "rpc at the target's half rate (25,000 calls/s), run $r of $runs"
    fresh "rpc-25k-$r" -- rpc --callers 4 --providers 2 --payload 64 --rate 25000 \
        --duration "${duration}s" --warmup 2s
done

# The targets' shape keeps 4 x 16 calls in flight; with four times as many, more calls share
# each packet: how far the gateway's core goes when the calls in flight do not set the rate.
for r in $(seq "$runs"); do
    say "rpc with 4 callers x 64 in flight, 2 providers, 64-byte payloads, run $r of $runs"
    fresh "rpc-deep-$r" -- rpc --callers 4 --providers 2 --in-flight 64 --payload 64 \
        --duration "${duration}s" --warmup 2s
done

for r in $(seq "$runs"); do
    say "pubsub: 1 publisher at $pubsub_rate/s, 4 subscribers (exact topic), 64-byte payloads, run $r of $runs"
    fresh "pubsub-$r" -- pubsub --publishers 1 --subscribers 4 --pattern exact --payload 64 \
        --rate "$pubsub_rate" --duration "${duration}s" --warmup 2s
done

for r in $(seq "$runs"); do
    say "pubsub in bursts: 1 publisher at $pubsub_burst_rate/s, each ${pubsub_tick} ms's messages together, 4 subscribers, run $r of $runs"
    fresh "pubsub-burst-$r" -- pubsub --publishers 1 --subscribers 4 --pattern exact --payload 64 \
        --rate "$pubsub_burst_rate" --tick "${pubsub_tick}ms" --duration "${duration}s" --warmup 2s
    say "pubsub in bursts with fixed $fixed_payload-byte datagrams (no path MTU discovery on either side), run $r of $runs"
    fresh "pubsub-fixed-$r" --max-udp-payload "$fixed_payload" --pmtud-max 0 -- pubsub \
        --publishers 1 --subscribers 4 --pattern exact --payload 64 --rate "$pubsub_burst_rate" \
        --tick "${pubsub_tick}ms" --max-udp-payload "$fixed_payload" --pmtud-max 0 \
        --duration "${duration}s" --warmup 2s
done

say "pubsub unpaced: as fast as the publisher goes (past what the gateway delivers: losses)"
fresh pubsub-unpaced -- pubsub --publishers 1 --subscribers 4 --pattern exact --payload 64 \
    --duration "${duration}s" --warmup 2s

for r in $(seq "$runs"); do
    say "idle: $idle_clients idle sessions, run $r of $runs"
    fresh "idle-$r" --max-clients $((idle_clients * 2)) -- \
        idle --clients "$idle_clients" --settle 3s
done

say "churn: $churn_cycles cycles at $churn_rate/s"
fresh churn -- churn --rate "$churn_rate" --cycles "$churn_cycles" --svg "$out/churn.svg" \
    --csv "$out/churn.csv" --duration 3600s

say "caller-death: 4 callers with 1,000 calls in flight leave"
fresh caller-death --call-timeout 30s -- caller-death --callers 4 --calls 1000 --call-timeout 30s

say "slow-consumer: a subscriber stops reading, --max-output 4 MiB, timeout 3 s"
fresh slow-consumer --max-output 4194304 --slow-consumer-timeout 3s -- \
    slow-consumer --max-output 4194304 --rate 20000 --duration 8s \
    --svg "$out/slow-consumer.svg" --csv "$out/slow-consumer.csv"

say "flood: 2,000 new sessions against --max-clients 1000"
fresh flood --max-clients 1000 -- flood --clients 2000 --duration "${duration}s"

say "handshake: new connections as fast as they come"
fresh handshake -- handshake --duration "${duration}s"

# The gateway mesh: gateways of one shard each, all pinned to the gateway core (on two cores
# they share it: a forwarded call costs both of them, on the same core). Gateways that share a
# core do not poll while idle (--spin 0s): one polling would hold the core the other needs.
mesh_pids=()
mesh_port() { echo $((port + 10 + $1)); }
mesh_health() { echo $((health + 10 + $1)); }
stop_mesh() {
    for pid in "${mesh_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${mesh_pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    mesh_pids=()
}
trap 'stop_gateway; stop_mesh' EXIT

# start_mesh NAME N: N gateways m0..m(N-1), m1.. given m0 as their seed; returns once every
# one has N-1 up links.
start_mesh() {
    local name=$1 n=$2 i
    local token="$out/logs/cluster-token"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token"
    for i in $(seq 0 $((n - 1))); do
        local seed=()
        ((i == 0)) || seed=(--peer "127.0.0.1:$(mesh_port 0)")
        taskset -c "$gateway_cpu" "$bin" serve --shards 1 --listen "127.0.0.1:$(mesh_port "$i")" \
            --health-listen "127.0.0.1:$(mesh_health "$i")" --node-name "m$i" \
            --cluster-token-file "$token" --spin 0s "${seed[@]}" >"$out/logs/$name-m$i.log" 2>&1 &
        mesh_pids+=($!)
    done
    for _ in $(seq 300); do
        local up=0
        for i in $(seq 0 $((n - 1))); do
            peers=$(curl -sf "http://127.0.0.1:$(mesh_health "$i")/health" |
                sed -n 's/.*"peers": *\([0-9]*\).*/\1/p' || true)
            [[ "${peers:-0}" == $((n - 1)) ]] && up=$((up + 1))
        done
        if ((up == n)); then
            # With 3 gateways or more, each learns the others by gossip and dials them up to
            # 1 s later (PROTOCOL.md 9.4): two that dial each other keep one link and close the
            # other (9.3), discarding what was queued on it (9.5). The load starts after.
            ((n < 3)) || sleep 1.5
            return 0
        fi
        sleep 0.1
    done
    echo "bench: the mesh did not form; its logs are in $out/logs/$name-m*.log" >&2
    exit 1
}

# mesh_counts N: calls ended (on the callers' gateway, m0) and publishes (all gateways) so far,
# then each gateway's UDP datagrams received and sent and turns of its loop.
mesh_counts() {
    local i
    for i in $(seq 0 $(($1 - 1))); do
        counts_of "http://127.0.0.1:$(mesh_health "$i")/metrics" ||
            { echo "bench: m$i's metrics cannot be read" >&2; exit 1; }
    done |
        awk '
        { calls += $1; publishes += $6; each = each " " $3 " " $4 " " $5 }
        END { print calls, publishes each }'
}

# mesh_load NAME N SCENARIO [flags]: the scenario against m0 (the flags say where else its
# sessions go); adds each gateway's CPU time, UDP datagrams and loop turns over the run and
# PUBLISH frames sent per peer to the JSON.
mesh_load() {
    local name=$1 n=$2 scenario=$3 i
    shift 3
    local before=() after=() counts_before counts_after
    counts_before=$(mesh_counts "$n")
    for i in $(seq 0 $((n - 1))); do before+=("$(awk '{print $14 + $15}' "/proc/${mesh_pids[$i]}/stat")"); done
    taskset -c "$load_cpu" "$cli" bench "$scenario" --server "127.0.0.1:$(mesh_port 0)" --insecure \
        --metrics "http://127.0.0.1:$(mesh_health 0)/metrics" --json "$@" >"$out/json/$name.json.tmp"
    for i in $(seq 0 $((n - 1))); do after+=("$(awk '{print $14 + $15}' "/proc/${mesh_pids[$i]}/stat")"); done
    counts_after=$(mesh_counts "$n")
    for i in $(seq 0 $((n - 1))); do
        curl -sf "http://127.0.0.1:$(mesh_health "$i")/metrics" >"$out/json/$name-m$i.metrics"
    done
    python3 - "$out/json/$name.json.tmp" "$out/json/$name.json" "$(getconf CLK_TCK)" \
        "${before[*]}" "${after[*]}" "$out/json/$name" "$n" "$counts_before" "$counts_after" <<'PY'
import json, re, sys
src, dst, tck, before, after, prefix, n, counts_before, counts_after = sys.argv[1:]
summary = json.load(open(src))
b, a = [int(x) for x in before.split()], [int(x) for x in after.split()]
summary["gateway_cpu_s"] = [(y - x) / int(tck) for x, y in zip(b, a)]
cb, ca = [int(x) for x in counts_before.split()], [int(x) for x in counts_after.split()]
summary["gateway_calls"] = ca[0] - cb[0]
summary["gateway_publishes"] = ca[1] - cb[1]
each = [y - x for x, y in zip(cb[2:], ca[2:])]
summary["gateway_datagrams_received"] = each[0::3]
summary["gateway_datagrams_sent"] = each[1::3]
summary["gateway_turns"] = each[2::3]
# Each gateway is fresh: its counters cover this scenario alone.
sent, publishes = {}, {}
for i in range(int(n)):
    for line in open(f"{prefix}-m{i}.metrics"):
        m = re.match(r'meshgate_peer_frames_sent_total\{peer="([^"]+)",type="PUBLISH"\} (\d+)', line)
        if m:
            sent[f"m{i}->{m.group(1)}"] = int(m.group(2))
        m = re.match(r'meshgate_publishes_total (\d+)', line)
        if m:
            publishes[f"m{i}"] = int(m.group(1))
summary["publish_frames_sent"] = sent
summary["publishes_by_gateway"] = publishes
json.dump(summary, open(dst, "w"), indent=1)
PY
    rm -f "$out/json/$name.json.tmp"
}

for r in $(seq "$runs"); do
    say "mesh rpc: callers on m0, the provider on m1 (every call crosses a link), run $r of $runs"
    start_mesh "mesh-rpc-$r" 2
    mesh_load "mesh-rpc-$r" 2 rpc --callers 4 --providers 2 --in-flight 16 --payload 64 \
        --provider-server "127.0.0.1:$(mesh_port 1)" --duration "${duration}s" --warmup 2s
    # A gateway's CPU per call depends on the rate (at a low one, each packet carries one
    # call): the cost of a forwarded call on each side against a local call's is measured at
    # one paced rate, on the same two gateways, the local calls' callers and provider on m0.
    # Which goes first alternates from pair to pair, counting on across the runs, so that
    # neither always goes first or always follows the unpaced run. The load
    # generator sleeps between datagrams as the gateways do (--spin 0s): over the loopback the
    # sender of a datagram pays for waking its receiver, so a load generator that polls would
    # spare a local call's sends what a forwarded call's sends to the other gateway pay.
    for p in $(seq "$mesh_pairs"); do
        order=(forwarded local)
        ((((r - 1) * mesh_pairs + p) % 2)) || order=(local forwarded)
        for kind in "${order[@]}"; do
            if [[ $kind == forwarded ]]; then
                say "mesh rpc: forwarded calls at $mesh_rate/s, run $r of $runs, pair $p of $mesh_pairs"
                mesh_load "mesh-rpc-paced-$r-$p" 2 rpc --callers 4 --providers 2 \
                    --payload 64 --rate "$mesh_rate" --provider-server "127.0.0.1:$(mesh_port 1)" \
                    --spin 0s --duration "${duration}s" --warmup 2s
            else
                say "mesh rpc: local calls on m0 at $mesh_rate/s, run $r of $runs, pair $p of $mesh_pairs"
                mesh_load "mesh-rpc-local-$r-$p" 2 rpc --callers 4 --providers 2 \
                    --payload 64 --rate "$mesh_rate" --spin 0s --duration "${duration}s" \
                    --warmup 2s
            fi
        done
    done
    stop_mesh
done

say "mesh pubsub: publishers and subscribers on each of 3 gateways"
start_mesh mesh-pubsub 3
mesh_load mesh-pubsub 3 pubsub --publishers 3 --subscribers 3 --pattern exact --payload 64 \
    --publisher-servers "127.0.0.1:$(mesh_port 0),127.0.0.1:$(mesh_port 1),127.0.0.1:$(mesh_port 2)" \
    --subscriber-servers "127.0.0.1:$(mesh_port 0),127.0.0.1:$(mesh_port 1),127.0.0.1:$(mesh_port 2)" \
    --rate 20000 --duration "${duration}s" --warmup 2s
stop_mesh

say "mesh pubsub: a publisher on m0, subscribers on m1 only (m2 has no interest)"
start_mesh mesh-pubsub-one 3
mesh_load mesh-pubsub-one 3 pubsub --publishers 1 --subscribers 2 --pattern exact --payload 64 \
    --subscriber-servers "127.0.0.1:$(mesh_port 1)" --rate 20000 --duration "${duration}s" --warmup 2s
stop_mesh

stalls after

say "report"
elapsed=$(($(date +%s) - started))
python3 scripts/bench_report.py --dir "$out" --runs "$runs" --duration "$duration" \
    --gateway-cpu "$gateway_cpu" --load-cpu "$load_cpu" --churn-cycles "$churn_cycles" \
    --churn-rate "$churn_rate" --idle-clients "$idle_clients" --pubsub-rate "$pubsub_rate" \
    --pubsub-tick "$pubsub_tick" \
    --fixed-payload "$fixed_payload" \
    --mesh-rate "$mesh_rate" --elapsed "$elapsed" \
    --command "$command" >"$out/report.md"
echo "bench: done in ${elapsed}s; report in $out/report.md" >&2
