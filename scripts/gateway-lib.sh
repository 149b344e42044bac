# Starting and stopping the gateway under test, for the benchmark scripts (sourced). They set
# `bin` (the gateway binary), `health` (its health port on 127.0.0.1), `out` (the results'
# folder, with logs/ in it) and `me` (their name, for messages); `gateway_pid` is the running
# gateway's, or empty.

# fetch URL: the body of an HTTP GET to the gateway, failing (with no output) where the request
# does; with curl, or with python3 on a machine without curl.
fetch() {
    if command -v curl >/dev/null; then
        curl -sf --max-time 5 "$1"
    else
        python3 -c 'import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.stdout.write(opener.open(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
    fi
}

# start_gateway NAME CORES [serve flags]: a gateway pinned to CORES (a taskset list), its
# output in OUT/logs/NAME.log; returns once its health endpoint answers, or stops the script
# with the gateway's log.
start_gateway() {
    local name=$1 cores=$2
    shift 2
    if fetch "http://127.0.0.1:$health/health" >/dev/null; then
        echo "$me: something already answers on 127.0.0.1:$health; stop it first" >&2
        exit 1
    fi
    taskset -c "$cores" "$bin" serve --health-listen "127.0.0.1:$health" "$@" \
        >"$out/logs/$name.log" 2>&1 &
    gateway_pid=$!
    for _ in $(seq 100); do
        if fetch "http://127.0.0.1:$health/health" >/dev/null; then return 0; fi
        kill -0 "$gateway_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$me: the gateway did not start; its log:" >&2
    cat "$out/logs/$name.log" >&2
    exit 1
}

# Stops the gateway, if one runs: SIGTERM, then SIGKILL after 10 s.
stop_gateway() {
    if [[ -n "${gateway_pid:-}" ]] && kill -0 "$gateway_pid" 2>/dev/null; then
        kill -TERM "$gateway_pid"
        # The gateway closes its sessions first; a port still bound would split the next
        # gateway's packets with this one (SO_REUSEPORT).
        for _ in $(seq 100); do kill -0 "$gateway_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    gateway_pid=""
}
