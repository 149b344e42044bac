#!/usr/bin/env bash
# Builds meshgate (release) and runs the gateway with working defaults: QUIC on 127.0.0.1:9443
# with a self-signed certificate, health and metrics on http://127.0.0.1:8080. Extra arguments
# are `meshgate serve` flags (see `meshgate serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked --bin meshgate
cat >&2 <<'MSG'
meshgate: starting. Reach it with the client library or the command-line tools, for example:
    cargo run -p meshgate-client --example quickstart        (self-signed certificate accepted)
    cargo run -p meshgate-cli -- sub 'sensor.**' --insecure
    curl http://127.0.0.1:8080/health      curl http://127.0.0.1:8080/metrics
Stop it with Ctrl-C.
MSG
exec target/release/meshgate serve "$@"
