#!/usr/bin/env bash
# Starts a mesh of three gateways on this machine, to try the gateway mesh (PROTOCOL.md
# section 9): a, b and c on 127.0.0.1 ports 9443, 9444 and 9445 (health on 8080, 8081, 8082),
# sharing a cluster token made for the occasion. b and c are given only a's address: gossip
# makes the full mesh. Ctrl-C stops all three.
#
# Usage: scripts/mesh.sh [--base-port N] [--health-base-port N] [--dir DIR] [-- serve flags]
#   --base-port N          QUIC ports N, N+1, N+2 (default 9443)
#   --health-base-port N   health ports N, N+1, N+2 (default 8080)
#   --dir DIR              where the token file and the logs go (default target/mesh)
#   flags after --         passed to every `meshgate serve`
# MESHGATE_BIN=PATH runs that gateway binary instead of building the release one (the tests
# run the script with their debug build).
set -euo pipefail
cd "$(dirname "$0")/.."

base=9443
health_base=8080
dir=target/mesh
extra=()
while (($#)); do
    case "$1" in
        --base-port) base=$2; shift 2 ;;
        --health-base-port) health_base=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "mesh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$base" "$health_base"; do
    [[ "$n" =~ ^[0-9]+$ ]] && ((n > 0 && n < 65534)) ||
        { echo "mesh: '$n' is not a port number" >&2; exit 2; }
done

bin=${MESHGATE_BIN:-}
if [[ -z "$bin" ]]; then
    scripts/setup.sh
    cargo build --release --locked --bin meshgate
    bin=target/release/meshgate
fi
mkdir -p "$dir"
token="$dir/cluster-token"
if [[ ! -s "$token" ]]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token" && echo >>"$token")
fi

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "mesh: stopped" >&2
}
trap stop INT TERM EXIT

names=(a b c)
for i in 0 1 2; do
    name=${names[$i]}
    port=$((base + i))
    seed=()
    ((i == 0)) || seed=(--peer "127.0.0.1:$base")
    "$bin" serve --listen "127.0.0.1:$port" \
        --health-listen "127.0.0.1:$((health_base + i))" \
        --node-name "$name" --cluster-token-file "$token" "${seed[@]}" "${extra[@]}" \
        >"$dir/$name.log" 2>&1 &
    pids+=($!)
done

# Wait until every gateway has 2 up links (gossip from the one seed), showing progress.
full=false
for _ in $(seq 300); do
    up=()
    for i in 0 1 2; do
        peers=$(curl -sf "http://127.0.0.1:$((health_base + i))/health" |
            sed -n 's/.*"peers": *\([0-9]*\).*/\1/p' || true)
        up+=("${names[$i]}=${peers:-?}")
    done
    printf '\rmesh: up links per gateway: %s ' "${up[*]}" >&2
    [[ "${up[*]}" == "a=2 b=2 c=2" ]] && { full=true; break; }
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo; echo "mesh: a gateway stopped; see $dir/*.log" >&2; exit 1; }
    done
    sleep 0.2
done
echo >&2
$full || { echo "mesh: no full mesh after 60 s; see $dir/*.log" >&2; exit 1; }
cat >&2 <<MSG
mesh: three gateways, a full mesh. Try a call and a publish across gateways:
    M=target/release/meshgate-cli      (cargo build --release -p meshgate-cli)
    \$M serve-echo demo.echo --server 127.0.0.1:$base --insecure &
    \$M call demo.echo '{"n": 1}' --server 127.0.0.1:$((base + 1)) --insecure
    \$M sub 'sensor.**' --server 127.0.0.1:$((base + 2)) --insecure &
    \$M pub sensor.temp.room1 21.5 --server 127.0.0.1:$base --insecure
    curl http://127.0.0.1:$health_base/peers
Logs in $dir. Ctrl-C stops all three.
MSG
wait
