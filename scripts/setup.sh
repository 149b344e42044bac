#!/usr/bin/env bash
# Installs what a fresh Debian or Ubuntu machine with a Rust toolchain lacks to build and test
# meshgate: cmake and libclang (quiche builds BoringSSL with them) and the rustfmt/clippy
# components. Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# The benchmark report (and the test that rebuilds it) is written by a Python script;
# scripts/bench.sh waits for the gateway with curl.
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The benchmark scripts (and the test of scripts/scaling.sh) pin processes with taskset.
command -v taskset >/dev/null 2>&1 || need+=(util-linux)

if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust from https://rustup.rs and run this again" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
echo "setup: ok" >&2
