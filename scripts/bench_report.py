#!/usr/bin/env python3
"""Writes the Markdown report of a `scripts/bench.sh` run from the JSON summaries it left.

Every figure in the report is read from the files in --dir: the `meshgate-cli bench --json`
summaries (json/NAME.json, with the gateway's CPU time over the run added as gateway_cpu_s),
the QUIC echo baseline's (json/baseline-N.json) and, when the run measured nats-server too,
natsbench's JSON lines (nats/run-N/LABEL.json). Figures measured more than once are
given as the median of the runs, with the lowest and highest beside it. The machine and the
commit measured are read from there too (json/machine.json, json/commit.txt, both written by
scripts/bench.sh when it measures), never from the machine or checkout that runs this script,
so a report made again from the same files says the same.
"""

import argparse
import datetime
import functools
import json
import math
import os
import re
import statistics
import sys
import types


def load(d, name):
    path = os.path.join(d, "json", name + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"bench_report: cannot read {path}: {e}")


def baseline(d, run):
    return load(d, f"baseline-{run}")["round_trips_per_s"]


def natsbench_results(d, runs, label):
    """natsbench's results of scenario `label` (d/nats/run-R/label.json) over the runs, those
    that measured: a run that failed has no file, or no usage."""
    lines = []
    for r in runs:
        path = os.path.join(d, "nats", f"run-{r}", f"{label}.json")
        try:
            with open(path) as f:
                line = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(line, dict) and "usage" in line:
            lines.append(line)
    return lines


def nats(d, runs):
    """natsbench's figures over the runs, by label; None when the run did not measure NATS."""
    found = {
        label: natsbench_results(d, runs, label)
        for label in ("rr-c4k16", "rr-c4k16-tls", "ps-1to4")
    }
    if not any(found.values()):
        return None

    def rr(lines):
        return {
            "rate": Figure([x["req_per_s"] for x in lines]),
            "p99": Figure([dig(x, "latency_us", "p99") for x in lines]),
            "cpu": Figure(
                [x["usage"]["server_cpu_pct"] * 1e4 / x["req_per_s"] for x in lines if x["req_per_s"]]
            ),
            "client": Figure([x["usage"]["client_cpu_pct"] / 100 for x in lines]),
        }

    ps = found["ps-1to4"]
    return {
        "plain": rr(found["rr-c4k16"]),
        "tls": rr(found["rr-c4k16-tls"]),
        "ps_rate": Figure([x["delivered_msg_per_s"] for x in ps]),
        "ps_cpu": Figure(
            [
                x["usage"]["server_cpu_pct"] * 1e4 / x["delivered_msg_per_s"]
                for x in ps
                if x["delivered_msg_per_s"]
            ]
        ),
    }


def burst_basis(d):
    """How the runs in bursts' rate was chosen (json/pubsub-burst-rate.json, from
    scripts/pubsub_burst_rate.py), as words to follow the rate; "" for raw results made before
    the rate was recorded."""
    path = os.path.join(d, "json", "pubsub-burst-rate.json")
    if not os.path.exists(path):
        return ""
    record = load(d, "pubsub-burst-rate")
    basis = record.get("basis")
    if basis == "nats" and record.get("nats_delivered_per_s") and record.get("subscribers"):
        return (
            f", nats-server's median delivery rate in this run "
            f"({count(record['nats_delivered_per_s'])}/s) over its {record['subscribers']} "
            "subscribers, rounded down to thousands"
        )
    if basis == "given":
        return ", the rate bench.sh was given"
    if basis == "default":
        return f", the default ({record.get('reason', 'no rate given')})"
    return ""


def dig(summary, *path):
    value = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


class Figure:
    """One figure over the runs: median, lowest, highest."""

    def __init__(self, values):
        self.values = [v for v in values if v is not None]

    @property
    def median(self):
        return statistics.median(self.values) if self.values else None

    def spread(self, fmt):
        if len(self.values) < 2:
            return "1 run"
        return f"{fmt(min(self.values))} – {fmt(max(self.values))} ({len(self.values)} runs)"


def count(v):
    return "n/a" if v is None else f"{v:,.0f}"


def ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f} ms"


def kib(b):
    return "n/a" if b is None else f"{b / 1024:,.1f} KiB"


def mib(b):
    return "n/a" if b is None else f"{b / 1048576:,.1f} MiB"


def pct(x):
    return "n/a" if x is None else f"{x:+.1f} %"


def signed_us(v):
    return "n/a" if v is None else f"{v:+.2f} µs"


def pct_of(x):
    return "n/a" if x is None else f"{x * 100:.0f} %"


def handshake_capacity(hs, cpu_per_connection_us):
    """New connections/s one shard makes at a saturated core (10^6 / its CPU µs per connection),
    where the load generator's core saturated first (at least 90 % busy and busier than the
    gateway's) and so set the rate; None where it did not, or a figure is missing.

    A handshake's client half (verifying the certificate's signature) costs more than the
    server's (making it), so one load core cannot saturate one gateway core."""
    load_us = hs.get("load_cpu_per_connection_us")
    gateway = gateway_busy(hs)
    if not cpu_per_connection_us or load_us is None or gateway is None:
        return None
    load_busy = load_us * hs["connections_per_s"] / 1e6
    if load_busy < 0.9 or load_busy <= gateway:
        return None
    return 1e6 / cpu_per_connection_us


def load_busy(s):
    """The load generator's busy share of its core, less the time it spent polling an idle
    socket (`--spin`; raw results made before it have no such figure)."""
    return busy_less_polling(s, "load")


def gateway_busy(s):
    """The gateway's busy share of its core, less the time its shard spent polling while idle
    (its `--spin`; raw results made before it have no such figure)."""
    return busy_less_polling(s, "gateway")


def busy_less_polling(s, side):
    busy = s.get(f"{side}_cpu_busy")
    return None if busy is None else busy - s.get(f"{side}_cpu_spinning", 0)


def fraction(x):
    """A fraction to two decimals, rounded down: a figure shown at a target's value meets it."""
    return "n/a" if x is None else f"{math.floor(x * 100) / 100:.2f}"


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def window_cpu_per_call(s):
    """The gateway's CPU per call over the measured window (lean engine with --gateway-pid),
    else over the whole run divided by the calls it counted."""
    if s.get("gateway_cpu_per_call_us") is not None:
        return s["gateway_cpu_per_call_us"]
    return s["gateway_cpu_s"] * 1e6 / s["gateway_calls"] if s.get("gateway_calls") else None


def window_cpu_per_delivery(s):
    """The gateway's CPU per delivery over the measured window (lean engine with
    --gateway-pid), else over the whole run divided by the deliveries it counted."""
    if s.get("gateway_cpu_per_delivery_us") is not None:
        return s["gateway_cpu_per_delivery_us"]
    if s.get("gateway_deliveries"):
        return s["gateway_cpu_s"] * 1e6 / s["gateway_deliveries"]
    return None


def us(v):
    return "n/a" if v is None else f"{v:.2f} µs"


def per(s, key, events):
    """The gateway's count `key` per one of its `events` (both counted over the whole run, from
    its metrics); None for raw results without them."""
    n, v = s.get(events), s.get(key)
    return v / n if n and v is not None else None


def dec(v):
    return "n/a" if v is None else f"{v:,.2f}"


def per_figures(runs, events):
    """UDP datagrams received and sent per event, and events per turn of the loop."""
    return (
        Figure([per(s, "gateway_datagrams_received", events) for s in runs]),
        Figure([per(s, "gateway_datagrams_sent", events) for s in runs]),
        Figure([per(s, events, "gateway_turns") for s in runs]),
    )


def received_sent(label, rx, tx):
    """A row of datagrams received / sent per event: medians, then spreads."""
    return f"| {label} | {dec(rx.median)} / {dec(tx.median)} | {rx.spread(dec)} / {tx.spread(dec)} |"


def times(x):
    return "n/a" if x is None else f"{x:.2f}×"


def stalls(d):
    """The machine's own stalls before and after the runs (json/stalls-WHEN.json), by when;
    raw results made before they were measured have none."""
    found = {}
    for when in ("before", "after"):
        path = os.path.join(d, "json", f"stalls-{when}.json")
        if os.path.exists(path):
            found[when] = load(d, f"stalls-{when}")
    return found


def stalls_section(w, found):
    """The table of the machine's own stalls, when the run measured them."""
    if not found:
        return
    whens = [when for when in ("before", "after") if when in found]
    first = found[whens[0]]
    cores = " and ".join(sorted(first.get("cores", {}), key=int)) or "n/a"
    w("")
    w(
        f"The machine's own stalls: `meshgate-cli stalls` keeps a thread that never sleeps on "
        f"each of cores {cores}, both at once, for {first['duration_s']:g} s, and records each "
        f"gap of {first['min_gap_us']} µs or more between two reads of the clock: time in which "
        "its core ran something else. The kernel accounts for part of it: other threads of "
        "this machine on the core, and the hypervisor's steal; the rest is interrupts and the "
        "kernel's own work. A call or a message in flight while its core stalls waits the stall "
        "out, whatever the gateway does: the longest gap is a floor under the largest latency a "
        "run can be counted on to show, and the gaps bound a percentile when they cover more of "
        "the time than it leaves out."
    )
    w("")
    w("| the machine's own stalls | " + " | ".join(f"{when} the runs" for when in whens) + " |")
    w("|---|" + "---|" * len(whens))
    rows = (
        ("longest gap", lambda s: f"{s['longest_gap_ms']:.2f} ms"),
        ("gaps of 1 ms or more (of 5 ms or more)",
         lambda s: f"{s['gaps_over_1ms']:,} ({s['gaps_over_5ms']:,})"),
        (f"time lost in gaps of {first['min_gap_us']} µs or more",
         lambda s: f"{s['lost_percent']:.2f} %"),
        ("of which waiting for the core while another thread ran (`schedstat`)",
         lambda s: "n/a" if s.get("waited_percent") is None else f"{s['waited_percent']:.2f} %"),
        ("of which stolen by the hypervisor (steal, `/proc/stat`)",
         lambda s: "n/a" if s.get("steal_percent") is None else f"{s['steal_percent']:.2f} %"),
    )
    for label, fmt in rows:
        w(f"| {label} | " + " | ".join(fmt(found[when]) for when in whens) + " |")


def machine(d):
    """The measuring machine's line, from json/machine.json."""
    path = os.path.join(d, "json", "machine.json")
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(
            f"bench_report: cannot read the measuring machine from {path} "
            f"(scripts/bench.sh writes it with the raw results): {e}"
        )
    missing = [
        k for k in ("cpu_model", "cores", "memory_gib", "kernel")
        if not isinstance(m, dict) or k not in m
    ]
    if missing:
        sys.exit(f"bench_report: {path} lacks {', '.join(missing)}")
    cores = "unknown" if m["cores"] is None else m["cores"]
    mem = "" if m["memory_gib"] is None else f", {m['memory_gib']} GiB memory"
    kernel = m["kernel"] or "unknown kernel"
    return f"{cores} × {m['cpu_model'] or 'unknown CPU'}{mem}, {kernel}"


def commit(d):
    """The commit measured, from json/commit.txt."""
    path = os.path.join(d, "json", "commit.txt")
    try:
        with open(path) as f:
            measured = f.read().strip()
    except OSError as e:
        sys.exit(
            f"bench_report: cannot read the commit measured from {path} "
            f"(scripts/bench.sh writes it with the raw results): {e}"
        )
    if not measured:
        sys.exit(f"bench_report: {path} is empty")
    return measured


def pubsub_figures(runs):
    """The figures of a set of pub/sub runs: deliveries/s, published/s, delivery p99, losses
    over all of them, gateway CPU per delivery, and both cores' busy shares."""
    return types.SimpleNamespace(
        rate=Figure([s["delivered_per_s"] for s in runs]),
        pub=Figure([s["published_per_s"] for s in runs]),
        p99=Figure([dig(s, "latency_us", "p99") for s in runs]),
        losses=sum(s["losses"] for s in runs),
        cpu=Figure([window_cpu_per_delivery(s) for s in runs]),
        gw_busy=Figure([gateway_busy(s) for s in runs]),
        load_busy=Figure([load_busy(s) for s in runs]),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--duration", type=int, required=True)
    p.add_argument("--gateway-cpu", type=int, required=True)
    p.add_argument("--load-cpu", type=int, required=True)
    p.add_argument("--churn-cycles", type=int, required=True)
    p.add_argument("--churn-rate", type=int, required=True)
    p.add_argument("--idle-clients", type=int, required=True)
    p.add_argument("--pubsub-rate", type=int, required=True)
    p.add_argument("--pubsub-tick", type=int, required=True)
    p.add_argument("--fixed-payload", type=int, required=True)
    p.add_argument("--mesh-rate", type=int, required=True)
    p.add_argument("--elapsed", type=int, required=True)
    p.add_argument("--command", required=True)
    a = p.parse_args()
    d, runs = a.dir, range(1, a.runs + 1)

    base = Figure([baseline(d, r) for r in runs])
    rpc = [load(d, f"rpc-{r}") for r in runs]
    half = [load(d, f"rpc-half-{r}") for r in runs]
    at25k = [load(d, f"rpc-25k-{r}") for r in runs]
    # Raw results made before the runs with 4 x 64 calls in flight have none.
    deep = [
        load(d, f"rpc-deep-{r}")
        for r in runs
        if os.path.exists(os.path.join(d, "json", f"rpc-deep-{r}.json"))
    ]
    pubsub = [load(d, f"pubsub-{r}") for r in runs]
    burst = [load(d, f"pubsub-burst-{r}") for r in runs]
    a.pubsub_burst_rate = round(burst[0]["rate_target"])
    a.burst_basis = burst_basis(d)
    fixed = [load(d, f"pubsub-fixed-{r}") for r in runs]
    unpaced = load(d, "pubsub-unpaced")
    idle = [load(d, f"idle-{r}") for r in runs]
    churn = load(d, "churn")
    death = load(d, "caller-death")
    slow = load(d, "slow-consumer")
    flood = load(d, "flood")
    hs = load(d, "handshake")
    machine_stalls = stalls(d)

    rpc_rate = Figure([s["calls_per_s"] for s in rpc])
    rpc_p99 = Figure([dig(s, "latency_us", "p99") for s in rpc])
    rpc_errors = sum(s["errors"] for s in rpc)
    rpc_cpu = Figure([window_cpu_per_call(s) for s in rpc])
    rpc_gw_busy = Figure([gateway_busy(s) for s in rpc])
    rpc_gw_spinning = Figure([s.get("gateway_cpu_spinning") for s in rpc])
    rpc_load_busy = Figure([load_busy(s) for s in rpc])
    rpc_spinning = Figure([s.get("load_cpu_spinning") for s in rpc])
    rpc_load_cpu = Figure([s.get("load_cpu_per_call_us") for s in rpc])
    # A call is two hops of the echo: the ceiling is half its rate.
    ratio = (
        rpc_rate.median / (base.median / 2) if rpc_rate.median and base.median else None
    )
    theirs = nats(d, runs)
    half_rate = Figure([s["calls_per_s"] for s in half])
    half_p50 = Figure([dig(s, "latency_us", "p50") for s in half])
    half_p99 = Figure([dig(s, "latency_us", "p99") for s in half])
    half_errors = sum(s["errors"] for s in half)
    half_target = half[0].get("rate_target")
    ps = pubsub_figures(pubsub)
    pb = pubsub_figures(burst)
    pf = pubsub_figures(fixed)
    t25_p99 = Figure([dig(s, "latency_us", "p99") for s in at25k])
    t25_errors = sum(s["errors"] for s in at25k)
    t25_cpu = Figure([window_cpu_per_call(s) for s in at25k])
    deep_rate = Figure([s["calls_per_s"] for s in deep])
    deep_cpu = Figure([window_cpu_per_call(s) for s in deep])
    deep_gw_busy = Figure([gateway_busy(s) for s in deep])
    deep_load_busy = Figure([load_busy(s) for s in deep])
    hs_cpu = hs.get("gateway_cpu_per_connection_us")
    if hs_cpu is None and hs.get("connections"):
        hs_cpu = hs["gateway_cpu_s"] * 1e6 / hs["connections"]
    idle_per = Figure([s["bytes_per_idle_session"] for s in idle])
    idle_connected = min(s["connected"] for s in idle)
    c_tenth = dig(churn, "memory_bytes", "after_10pct")
    c_end = dig(churn, "memory_bytes", "end")
    c_drift = (c_end - c_tenth) * 100 / c_tenth if c_tenth and c_end else None

    def ms_fig(f):
        return ms(f.median)

    lines = []
    w = lines.append
    w("# meshgate benchmark report")
    w("")
    w(f"- **Date:** {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    w(f"- **Commit:** `{commit(d)}`")
    w(f"- **Machine:** {machine(d)}")
    w(
        f"- **Layout:** one gateway shard pinned to core {a.gateway_cpu}, the load generator "
        f"(`meshgate-cli bench`, its lean engine: one thread) pinned to core {a.load_cpu}; release build; "
        "a fresh gateway for every run, over the loopback interface."
    )
    w(
        f"- **Runs:** throughput figures are the median of {a.runs} run(s), each measured over "
        f"{a.duration} s after a 2 s warm-up; the spread gives the lowest and highest run."
    )
    w(f"- **Reproduce:** `{a.command}` (took {a.elapsed} s).")
    w("")
    w("## Targets")
    w("")
    targets(w, a, theirs, rpc_rate, rpc_cpu, rpc_p99, rpc_gw_busy, rpc_load_busy, ratio,
            idle_per, hs, hs_cpu, pb.cpu, pf.cpu, pubsub + burst + fixed, d, runs)
    w("")
    w("## Other figures")
    w("")
    w("| figure | median | spread | target | |")
    w("|---|---|---|---|---|")
    w(
        f"| RPC p99 at 25,000 calls/s | "
        f"{ms_fig(t25_p99)} | {t25_p99.spread(ms)} | < 2 ms | "
        f"{verdict(t25_p99.median is not None and t25_p99.median < 2000)} |"
    )
    w(
        f"| RPC p99 at half the measured rate ({count(half_target)} calls/s) | "
        f"{ms_fig(half_p99)} | {half_p99.spread(ms)} | | |"
    )
    w(
        f"| pub/sub deliveries/s (1 publisher at {a.pubsub_rate:,}/s, 4 subscribers, 64 B) | "
        f"{count(ps.rate.median)} | {ps.rate.spread(count)} | ≥ 300,000, no loss | "
        f"{verdict(bool(ps.rate.median and ps.rate.median >= 300000 and ps.losses == 0))} |"
    )
    w(
        f"| pub/sub deliveries/s (1 publisher at {a.pubsub_burst_rate:,}/s in {a.pubsub_tick} ms "
        f"bursts, 4 subscribers, 64 B) | {count(pb.rate.median)} | {pb.rate.spread(count)} | "
        f"no loss | {verdict(bool(pb.rate.median) and pb.losses == 0)} |"
    )
    w(
        f"| churn: memory after {a.churn_cycles:,} cycles vs after the first 10 % | "
        f"{pct(c_drift)} | 1 run | within ±5 % | "
        f"{verdict(c_drift is not None and abs(c_drift) <= 5)} |"
    )
    if machine_stalls:
        longest = max(s["longest_gap_ms"] for s in machine_stalls.values())
        lost = max(s["lost_percent"] for s in machine_stalls.values())
        w("")
        w(
            f"The machine itself stalled a busy thread for up to {longest:.2f} ms, and for "
            f"{lost:.2f} % of the time in the worse of its two measures (the table of its "
            "stalls is under Against the machine): the latencies here are the gateway's and "
            "the machine's together."
        )
    w("")
    w("## Against the machine")
    w("")
    w(
        "The baseline is `meshgate-cli quic-echo` between the same two cores: a bare quiche echo "
        "server on the gateway's core (one socket, batched receives, GSO) and the load engine's "
        "sessions on the other, 4 connections × 16 requests of 64 bytes in flight on one "
        "stream each, so that requests share packets. A call through the gateway is two such "
        "hops (caller to gateway, gateway to provider), so half the echo's rate is the "
        "ceiling a gateway on that core could reach."
    )
    w("")
    w("| figure | median | spread |")
    w("|---|---|---|")
    w(f"| QUIC echo round trips/s | {count(base.median)} | {base.spread(count)} |")
    w(f"| RPC calls/s through the gateway | {count(rpc_rate.median)} | {rpc_rate.spread(count)} |")
    w(f"| RPC calls/s / (QUIC echo / 2) | {fraction(ratio)} | |")
    w(f"| gateway CPU per call (one shard) | {us(rpc_cpu.median)} | {rpc_cpu.spread(us)} |")
    w(f"| gateway core busy | {pct_of(rpc_gw_busy.median)} | {rpc_gw_busy.spread(pct_of)} |")
    if rpc_gw_spinning.values:
        w(
            f"| gateway core polling while idle (`--spin`, left out of the figures above) | "
            f"{pct_of(rpc_gw_spinning.median)} | {rpc_gw_spinning.spread(pct_of)} |"
        )
    w(f"| load generator CPU per call | {us(rpc_load_cpu.median)} | {rpc_load_cpu.spread(us)} |")
    w(f"| load generator core busy | {pct_of(rpc_load_busy.median)} | {rpc_load_busy.spread(pct_of)} |")
    rx, tx, turn = per_figures(rpc, "gateway_calls")
    if turn.values:
        w(received_sent("gateway UDP datagrams per call, received / sent", rx, tx))
        w(f"| calls per turn of the gateway's loop | {dec(turn.median)} | {turn.spread(dec)} |")
    if deep:
        w(f"| RPC calls/s with 4 callers × 64 in flight | {count(deep_rate.median)} | {deep_rate.spread(count)} |")
        w(f"| gateway CPU per call, 4 × 64 in flight | {us(deep_cpu.median)} | {deep_cpu.spread(us)} |")
        w(
            f"| gateway core / load generator core busy, 4 × 64 in flight | "
            f"{pct_of(deep_gw_busy.median)} / {pct_of(deep_load_busy.median)} | "
            f"{deep_gw_busy.spread(pct_of)} / {deep_load_busy.spread(pct_of)} |"
        )
        rx, tx, turn = per_figures(deep, "gateway_calls")
        if turn.values:
            w(received_sent("gateway UDP datagrams per call, received / sent, 4 × 64 in flight", rx, tx))
            w(
                f"| calls per turn of the gateway's loop, 4 × 64 in flight | {dec(turn.median)} "
                f"| {turn.spread(dec)} |"
            )
    w(f"| gateway CPU per call at 25,000 calls/s | {us(t25_cpu.median)} | {t25_cpu.spread(us)} |")
    w(
        f"| gateway CPU per delivery (pub/sub, 1 → 4 at {a.pubsub_rate:,}/s, paced message by "
        f"message) | {us(ps.cpu.median)} | {ps.cpu.spread(us)} |"
    )
    w(
        f"| gateway CPU per delivery (pub/sub, 1 → 4 at {a.pubsub_burst_rate:,}/s in "
        f"{a.pubsub_tick} ms bursts) | {us(pb.cpu.median)} | {pb.cpu.spread(us)} |"
    )
    w(
        f"| the same with fixed {a.fixed_payload:,}-byte datagrams (`--pmtud-max 0` on both "
        f"sides) | {us(pf.cpu.median)} | {pf.cpu.spread(us)} |"
    )
    for runs_, shape in ((burst, "in bursts"), (fixed, f"in bursts, fixed {a.fixed_payload:,} B")):
        rx, tx, _ = per_figures(runs_, "gateway_deliveries")
        if tx.values:
            w(received_sent(f"gateway UDP datagrams per delivery, received / sent (pub/sub {shape})", rx, tx))
    w(f"| gateway CPU per new connection | {us(hs_cpu)} | 1 run |")
    w("")
    w(
        "RPC and pub/sub CPU figures are read from `/proc` over the measured window, for the "
        "gateway and for the load generator (`--gateway-pid`), and so is the new-connection "
        "figure (over the handshake run, divided by the connections made)."
        + (
            " Datagrams and turns are the gateway's own counts (its metrics "
            "`meshgate_udp_datagrams_received_total`, `meshgate_udp_datagrams_sent_total`, "
            "`meshgate_shard_turns_total`) over the whole run, warm-up included, divided by the "
            "calls or deliveries it counted over the same span: each datagram costs both "
            "processes a share of a system call, of quiche's packet work and of its encryption, "
            "and each turn a wake-up."
            if any(s.get("gateway_turns") for s in rpc)
            else ""
        )
        + (
            " The targets' RPC shape keeps 4 × 16 calls in flight; the runs with 4 × 64 show how "
            "far the gateway goes when more calls share each packet and the calls in flight do "
            "not set the rate."
            if deep
            else ""
        )
        + (
            " The load generator, and the echo's client, poll their socket for a while "
            "(`--spin`, 200 µs by default) before they sleep, so that while the load flows "
            "neither they nor the server pay for waking them. The load generator's busy "
            "figures and CPU per call leave that polling out: it was "
            f"{pct_of(rpc_spinning.median)} of its core in the RPC runs (median)."
            if rpc_spinning.values
            else ""
        )
        + (
            " The gateway's shard polls too, for up to 50 µs (its `--spin`), while its idle "
            "spells are that short; it reports that time (`meshgate_shard_spin_seconds_total`), "
            "and the gateway's busy figures and CPU per call or delivery leave it out as well: "
            f"it was {pct_of(rpc_gw_spinning.median)} of its core in the RPC runs (median)."
            if rpc_gw_spinning.values
            else ""
        )
    )
    stalls_section(w, machine_stalls)
    w("")
    w("## RPC")
    w("")
    w("| run | calls/s | p50 | p90 | p99 | p99.9 | max | errors | gateway CPU/call | gateway busy | load busy |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, group in (("max", rpc), ("half", half), ("25k", at25k), ("4 × 64", deep)):
        for i, s in enumerate(group, 1):
            lat = s.get("latency_us", {})
            w(
                f"| {name} {i} | {count(s['calls_per_s'])} | {ms(lat.get('p50'))} | "
                f"{ms(lat.get('p90'))} | {ms(lat.get('p99'))} | {ms(lat.get('p99.9'))} | "
                f"{ms(lat.get('max'))} | {s['errors']} | {us(window_cpu_per_call(s))} | "
                f"{pct_of(gateway_busy(s))} | {pct_of(load_busy(s))} |"
            )
    w("")
    w(
        f"Errors over all runs: {rpc_errors} at the maximum rate, {half_errors} at half rate, "
        f"{t25_errors} at 25,000 calls/s"
        + (f", {sum(s['errors'] for s in deep)} with 4 × 64 in flight" if deep else "")
        + ". "
        f"Median p50 at half rate: {ms_fig(half_p50)}; median rate achieved "
        f"{count(half_rate.median)} calls/s."
    )
    w("")
    w("## Publish/subscribe")
    w("")
    w("| run | published/s | delivered/s | p50 | p99 | max | losses | out of order |")
    w("|---|---|---|---|---|---|---|---|")
    rows = [(str(i), s) for i, s in enumerate(pubsub, 1)]
    rows += [(f"bursts {i}", s) for i, s in enumerate(burst, 1)]
    rows += [(f"bursts, fixed {a.fixed_payload:,} B datagrams {i}", s) for i, s in enumerate(fixed, 1)]
    for i, s in rows + [("unpaced", unpaced)]:
        lat = s.get("latency_us", {})
        w(
            f"| {i} | {count(s['published_per_s'])} | {count(s['delivered_per_s'])} | "
            f"{ms(lat.get('p50'))} | {ms(lat.get('p99'))} | {ms(lat.get('max'))} | "
            f"{s['losses']} | {s['out_of_order']} |"
        )
    w("")
    w(
        f"Paced runs: gateway core {pct_of(ps.gw_busy.median)} busy, load generator core "
        f"{pct_of(ps.load_busy.median)}, gateway CPU per delivery {us(ps.cpu.median)} "
        "(over the measured window)."
    )
    w("")
    w(
        f"Runs in bursts: the publisher writes the messages of each {a.pubsub_tick} ms tick "
        "together, as a client flushing its buffer on a timer does, and as the nats-server "
        "runs' publisher does (unpaced, writing through its client's buffer), at "
        f"{a.pubsub_burst_rate:,}/s{a.burst_basis}. Gateway core "
        f"{pct_of(pb.gw_busy.median)} busy, load generator core {pct_of(pb.load_busy.median)}, "
        f"gateway CPU per delivery {us(pb.cpu.median)}, delivered {count(pb.rate.median)}/s, "
        f"delivery p99 {ms_fig(pb.p99)}, losses {pb.losses}. This is the shape the target "
        "compares with nats-server: per message the gateway's cost is per packet, and a "
        "publisher paced message by message sends a packet per message or two."
    )
    w("")
    w(
        "In every run with the defaults, the gateway and the load generator discover the path "
        "MTU (`--pmtud-max 8952` on both sides): the loopback carries the first probe, so a "
        "busy connection's packets grow to 8,952 bytes once it is acknowledged. "
        f"The same runs in bursts with fixed {a.fixed_payload:,}-byte datagrams "
        f"(`--max-udp-payload {a.fixed_payload} --pmtud-max 0` on the gateway and the load "
        "generator), as on a path of Ethernet frames (each run follows one with the defaults): "
        f"gateway core {pct_of(pf.gw_busy.median)} busy, load generator core "
        f"{pct_of(pf.load_busy.median)}, gateway CPU per delivery {us(pf.cpu.median)}, "
        f"delivered {count(pf.rate.median)}/s, delivery p99 {ms_fig(pf.p99)}, losses "
        f"{pf.losses}. Most of the gateway's cost per delivery is per packet (quiche's packet "
        "work, AES-GCM's per-packet part, the kernel's per-datagram path), and a packet of "
        "8,952 bytes carries about six times the messages of one of 1,350. nats-server's TCP "
        "connections over the loopback carry segments of up to 64 KiB."
    )
    w("")
    w(
        f"Median published {count(ps.pub.median)}/s, delivered {count(ps.rate.median)}/s, "
        f"delivery p99 {ms_fig(ps.p99)}; losses over the paced runs: {ps.losses}. "
        "Unpaced, the publisher (on the lean engine) publishes faster than the gateway "
        "delivers to four subscribers: the gateway drops their PUBLISH frames once each has "
        "--max-output queued, as it should, and the losses count them."
    )
    w("")
    w("## Memory per idle session")
    w("")
    w("| run | sessions | before | with sessions | after they left | per session |")
    w("|---|---|---|---|---|---|")
    for i, s in enumerate(idle, 1):
        m = s["memory_bytes"]
        w(
            f"| {i} | {s['connected']:,} | {mib(m['before'])} | {mib(m['with_sessions'])} | "
            f"{mib(m['after_close'])} | {kib(s['bytes_per_idle_session'])} |"
        )
    w("")
    w(
        f"At least {idle_connected:,} of {a.idle_clients:,} sessions connected in every run. "
        "Memory is the gateway's resident set (`/proc/self/statm`), read from `/metrics`; "
        "freed memory the allocator keeps is why it does not drop after the sessions leave."
    )
    w("")
    w("## Churn")
    w("")
    w("| cycles | cycles/s | errors | start | after 10 % | peak | end | tables back to zero |")
    w("|---|---|---|---|---|---|---|---|")
    m = churn["memory_bytes"]
    w(
        f"| {churn['cycles']:,} | {count(churn['cycles_per_s'])} | {churn['errors']} | "
        f"{mib(m['start'])} | {mib(m['after_10pct'])} | {mib(m['peak'])} | {mib(m['end'])} | "
        f"{'yes' if churn['gauges_zero'] else '**no**'} |"
    )
    w("")
    w(
        "Each cycle connects a session, subscribes, registers a procedure, calls it and "
        f"disconnects. Gauges at the end: {json.dumps(churn.get('end_gauges', {}))}."
    )
    w("")
    w("![memory and live sessions during churn](churn.svg)")
    w("")
    w("## Callers that die with calls in flight")
    w("")
    pc, dm = death["pending_calls"], death["memory_bytes"]
    w(
        f"{death['callers']} callers left with {death['calls_in_flight']:,} calls in flight "
        f"(call timeout {death['call_timeout_s']:.0f} s). Pending calls: {pc['before']:,} "
        f"before, {pc['after']:,} right after, {pc['after_1s']:,} a second later; back to the "
        f"baseline of {pc['baseline']:,} in {death.get('back_to_baseline_ms')} ms. "
        f"The provider was told of {death['provider_cancelled']:,} cancelled calls. "
        f"Memory: {', '.join(f'{k} {mib(v)}' for k, v in dm.items())}."
    )
    w("")
    w("## Slow consumer")
    w("")
    w(
        f"{slow['publishers']} publishers sent {count(slow['published_per_s'])} messages/s of "
        f"{slow['payload_bytes']} bytes to a subscriber that stopped reading and to "
        f"{slow['readers']} that kept reading. The gateway's memory grew by at most "
        f"{mib(slow['peak_growth_bytes'])} ({slow['growth_over_max_output']} × --max-output "
        f"of {mib(slow['max_output_bytes'])}); {count(slow['dropped_slow_consumer'])} messages "
        f"to the stalled subscriber were dropped; it was "
        + (
            f"disconnected after {slow['disconnected_after_s']} s"
            if slow["disconnected"]
            else "**not disconnected**"
        )
        + f". The readers lost {slow['reader_losses']:,} messages."
    )
    w("")
    w("![memory during the slow consumer run](slow-consumer.svg)")
    w("")
    w("## Flood and handshakes")
    w("")
    pp = flood["probe_ping_us"]
    w(
        f"Flood: {flood['attempts']:,} new sessions against `--max-clients 1000`; "
        f"{flood['admitted']:,} admitted, {flood['refused_max_clients']:,} refused with "
        f"`max_clients_reached` (the gateway counted {flood['gateway_refused_max_clients']}). "
        f"Ping p99 of sessions connected before: {ms(dig(pp, 'before_flood', 'p99'))} before "
        f"the flood, {ms(dig(pp, 'during_flood', 'p99'))} during it."
    )
    w("")
    w(
        f"Handshakes: {count(hs['connections_per_s'])} new connections/s "
        f"(connect p50 {ms(dig(hs, 'connect_latency_us', 'p50'))}, p99 "
        f"{ms(dig(hs, 'connect_latency_us', 'p99'))}), "
        f"{hs['refused']:,} refused, gateway CPU {hs['gateway_cpu_s']:.1f} s "
        f"({us(hs.get('gateway_cpu_per_connection_us'))} per connection, its core "
        f"{pct_of(gateway_busy(hs))} busy); the load generator, which makes the "
        f"client's half of every handshake, {us(hs.get('load_cpu_per_connection_us'))} per "
        "connection."
    )
    w("")
    mesh_section(w, d, runs, rpc_rate, rpc_p99, rpc_cpu, a.mesh_rate)
    nats_section(w, theirs, d)
    w("The raw summaries are in `json/`, the gateways' logs in `logs/`.")
    print("\n".join(lines))


def targets(w, a, theirs, rpc_rate, rpc_cpu, rpc_p99, gw_busy, load_busy, ratio, idle_per,
            hs, hs_cpu, ps_cpu, fixed_cpu, pubsub, d, runs):
    """The performance targets, each met or not, against nats-server where the run measured
    it (same machine, same cores, same shapes)."""
    w("| target | meshgate | against | |")
    w("|---|---|---|---|")
    if theirs:
        tls, plain = theirs["tls"], theirs["plain"]
        need = tls["rate"].median * 1.5 if tls["rate"].median else None
        w(
            f"| RPC calls/s ≥ 1.5 × nats-server with TLS | {count(rpc_rate.median)} | "
            f"{count(tls['rate'].median)} (× 1.5 = {count(need)}) | "
            f"{verdict(need is not None and rpc_rate.median is not None and rpc_rate.median >= need)} |"
        )
        w(
            f"| RPC calls/s ≥ nats-server plain | {count(rpc_rate.median)} | "
            f"{count(plain['rate'].median)} | "
            f"{verdict(plain['rate'].median is not None and rpc_rate.median is not None and rpc_rate.median >= plain['rate'].median)} |"
        )
        limit = tls["cpu"].median * 0.67 if tls["cpu"].median else None
        w(
            f"| gateway CPU per call ≤ 0.67 × nats-server-with-TLS's per request | "
            f"{us(rpc_cpu.median)} | {us(tls['cpu'].median)} (× 0.67 = {us(limit)}) | "
            f"{verdict(limit is not None and rpc_cpu.median is not None and rpc_cpu.median <= limit)} |"
        )
        best = min([f for f in (tls["p99"].median, plain["p99"].median) if f is not None], default=None)
        w(
            f"| RPC p99 no worse than nats-server's (TLS / plain) | {ms(rpc_p99.median)} | "
            f"{ms(tls['p99'].median)} / {ms(plain['p99'].median)} | "
            f"{verdict(best is not None and rpc_p99.median is not None and rpc_p99.median <= best)} |"
        )
        w(
            f"| gateway CPU per pub/sub delivery ≤ nats-server's (plain, 1 → 4; meshgate at "
            f"{a.pubsub_burst_rate:,}/s in {a.pubsub_tick} ms bursts{a.burst_basis}, with the "
            "defaults: path MTU "
            f"discovery up to 8,952 bytes) | "
            f"{us(ps_cpu.median)} | {us(theirs['ps_cpu'].median)} | "
            f"{verdict(theirs['ps_cpu'].median is not None and ps_cpu.median is not None and ps_cpu.median <= theirs['ps_cpu'].median)} |"
        )
        w(
            f"| the same with fixed {a.fixed_payload:,}-byte datagrams (`--pmtud-max 0` on both "
            f"sides, as on a path of Ethernet frames) | {us(fixed_cpu.median)} | "
            f"{us(theirs['ps_cpu'].median)} | "
            f"{verdict(theirs['ps_cpu'].median is not None and fixed_cpu.median is not None and fixed_cpu.median <= theirs['ps_cpu'].median)} |"
        )
    else:
        w("| the targets against nats-server | | not measured (run with `--nats`) | n/a |")
    w(
        f"| RPC calls/s ≥ half the QUIC echo ceiling (echo / 2) | "
        f"{'n/a' if ratio is None else f'{fraction(ratio)} of it'} | 0.5 | "
        f"{verdict(ratio is not None and ratio >= 0.5)} |"
    )
    w(
        f"| in RPC the gateway's core saturates first | gateway {pct_of(gw_busy.median)}, "
        f"load generator {pct_of(load_busy.median)} | ≥ 90 %, above the load's | "
        f"{verdict(gw_busy.median is not None and load_busy.median is not None and gw_busy.median >= 0.9 and gw_busy.median > load_busy.median)} |"
    )
    w(
        f"| resident memory per idle session ({a.idle_clients:,} sessions) | "
        f"{kib(idle_per.median)} | ≤ 17 KiB | "
        f"{verdict(idle_per.median is not None and idle_per.median <= 17 * 1024)} |"
    )
    hs_rate = hs["connections_per_s"]
    hs_shard = handshake_capacity(hs, hs_cpu)
    if hs_shard is None:
        hs_figure = f"{count(hs_rate)} ({us(hs_cpu)} of gateway CPU each)"
    else:
        hs_figure = (
            f"{count(hs_rate)} made, the load generator's core saturated first "
            f"({us(hs.get('load_cpu_per_connection_us'))} per connection); at the gateway's "
            f"{us(hs_cpu)} each, a saturated shard makes {count(hs_shard)}"
        )
    w(
        f"| new connections/s per shard | {hs_figure} | ≥ 5,000 | "
        f"{verdict(max(hs_rate, hs_shard or 0) >= 5000)} |"
    )
    losses = sum(s["losses"] for s in pubsub)
    w(
        f"| pub/sub subscribers keep up (1 → 4 at {a.pubsub_rate:,}/s, and at "
        f"{a.pubsub_burst_rate:,}/s in bursts, with either datagram size) | {losses:,} losses | 0 | "
        f"{verdict(losses == 0)} |"
    )
    sides, local = paced_mesh_cpu(d, runs)
    if local:
        sides, local = [Figure(f.values()) for f in sides], Figure(local.values())
        worst = max([f.median for f in sides if f.median is not None], default=None)
        w(
            f"| CPU per forwarded call, each side ≤ a local call's (both at {a.mesh_rate:,} "
            f"calls/s on the same two gateways) | m0 {us(sides[0].median)}, "
            f"m1 {us(sides[1].median)} | {us(local.median)} | "
            f"{verdict(worst is not None and local.median is not None and worst <= local.median)} |"
        )


@functools.lru_cache(maxsize=None)
def paced_mesh_runs(d, name, runs):
    """The summaries of the paced mesh runs `name` over the runs, by (run, pair)
    (`name-R-P.json`), in that order; read once, the callers only read them."""
    pattern = re.compile(re.escape(name) + r"-(\d+)-(\d+)\.json")
    keys = sorted(
        (int(m.group(1)), int(m.group(2)))
        for m in map(pattern.fullmatch, os.listdir(os.path.join(d, "json")))
        if m and int(m.group(1)) in runs
    )
    return {(r, p): load(d, f"{name}-{r}-{p}") for r, p in keys}


def paced_mesh_cpu(d, runs):
    """Gateway CPU per call (µs) at --mesh-rate by (run, pair): forwarded (m0's and m1's) and
    local (m0's); None where a run ended no call. Empty when the runs measured none."""
    def side(name, i):
        return {
            key: s["gateway_cpu_s"][i] * 1e6 / s["gateway_calls"] if s["gateway_calls"] else None
            for key, s in paced_mesh_runs(d, name, runs).items()
        }

    return [side("mesh-rpc-paced", 0), side("mesh-rpc-paced", 1)], side("mesh-rpc-local", 0)


def paced_mesh_counts(d, runs, name, i, key):
    """Gateway `i`'s `key` count (datagrams received or sent, turns) per call at --mesh-rate
    over the pairs of the paced mesh runs `name`; None when the runs did not count them."""
    found = [s for s in paced_mesh_runs(d, name, runs).values() if s["gateway_calls"]]
    if not found or any(key not in s for s in found):
        return None
    return Figure([s[key][i] / s["gateway_calls"] for s in found])


def paced_mesh_polling(d, runs):
    """What the load generator's polling in the paced mesh runs does to the comparison."""
    polled = Figure(
        [
            s.get("load_cpu_spinning")
            for name in ("mesh-rpc-paced", "mesh-rpc-local")
            for s in paced_mesh_runs(d, name, runs).values()
        ]
    )
    if not polled.values:
        return ""
    why = "over the loopback the sender of a datagram pays for waking its receiver, so "
    if max(polled.values) == 0:
        return (
            " The load generator slept between datagrams in these runs, as the gateways do "
            f"(`--spin 0s`): {why}a load generator that polled would spare a local call's "
            "sends to it what a forwarded call's sends to the other gateway pay."
        )
    return (
        " The load generator polled its socket between datagrams in these runs "
        f"({pct_of(polled.median)} of its core, median), while the gateways slept: {why}its "
        "polling spared a local call's sends to it what a forwarded call's sends to the other "
        "gateway paid."
    )


def paired_excess(forwarded, local):
    """A forwarded call's CPU less the local call's of the same run and pair, where both
    ended calls."""
    return Figure(
        [
            f - local[key]
            for key, f in forwarded.items()
            if f is not None and local.get(key) is not None
        ]
    )


def nats_section(w, theirs, d):
    """nats-server in the same run, for the comparison."""
    if not theirs:
        return
    w("## nats-server, same run")
    w("")
    w(
        "natsbench (its run.sh, once per round, between the meshgate runs): nats-server pinned "
        "to the gateway's core with GOMAXPROCS=1, its client to the load core; request-reply "
        "with 4 callers × 16 in flight and 2 responders, 64 B; pub/sub 1 publisher to 4 "
        "subscribers, 64 B. Server CPU per request or delivery is its CPU over the window "
        "divided by the rate."
    )
    w("")
    w("| figure | median | spread |")
    w("|---|---|---|")
    for name, f in (("plain", theirs["plain"]), ("TLS", theirs["tls"])):
        w(f"| {name}: requests/s | {count(f['rate'].median)} | {f['rate'].spread(count)} |")
        w(f"| {name}: server CPU per request | {us(f['cpu'].median)} | {f['cpu'].spread(us)} |")
        w(f"| {name}: p99 | {ms(f['p99'].median)} | {f['p99'].spread(ms)} |")
        w(f"| {name}: client core busy | {pct_of(f['client'].median)} | {f['client'].spread(pct_of)} |")
    w(f"| pub/sub 1 → 4: deliveries/s | {count(theirs['ps_rate'].median)} | {theirs['ps_rate'].spread(count)} |")
    w(f"| pub/sub 1 → 4: server CPU per delivery | {us(theirs['ps_cpu'].median)} | {theirs['ps_cpu'].spread(us)} |")
    w("")


def mesh_section(w, d, runs, rpc_rate, rpc_p99, rpc_cpu, mesh_rate):
    """The gateway mesh: cross-gateway RPC beside single-gateway RPC, CPU on each side,
    PUBLISH frames per link per publish. Left out for results measured before the mesh."""
    if not os.path.exists(os.path.join(d, "json", "mesh-rpc-1.json")):
        return
    mrpc = [load(d, f"mesh-rpc-{r}") for r in runs]
    spread = load(d, "mesh-pubsub")
    one = load(d, "mesh-pubsub-one")
    m_rate = Figure([s["calls_per_s"] for s in mrpc])
    m_p99 = Figure([dig(s, "latency_us", "p99") for s in mrpc])
    sides = [
        Figure(
            [s["gateway_cpu_s"][i] * 1e6 / s["gateway_calls"] for s in mrpc if s["gateway_calls"]]
        )
        for i in (0, 1)
    ]

    def us(f):
        return "n/a" if f.median is None else f"{f.median:.2f} µs"

    w("## Gateway mesh")
    w("")
    w(
        "Gateways of one shard each, all pinned to the gateway core (on two cores they share "
        "it, so none polls while idle: `--spin 0s`), linked by `--peer` and a cluster token; "
        "the load generator on the other core. "
        "In the RPC runs the callers connect to m0 and the provider to m1, so that every call "
        "crosses the link: m0 forwards it, m1 hands it to the provider, and the reply goes "
        "back the same way."
    )
    w("")
    w("| figure | median | spread |")
    w("|---|---|---|")
    w(f"| cross-gateway RPC calls/s (4 × 16 in flight, 64 B) | {count(m_rate.median)} | {m_rate.spread(count)} |")
    w(f"| single-gateway RPC calls/s (the same run) | {count(rpc_rate.median)} | {rpc_rate.spread(count)} |")
    w(f"| cross-gateway RPC p99 | {ms(m_p99.median)} | {m_p99.spread(ms)} |")
    w(f"| single-gateway RPC p99 | {ms(rpc_p99.median)} | {rpc_p99.spread(ms)} |")
    w(f"| CPU per forwarded call, caller's gateway (m0) | {us(sides[0])} | {sides[0].spread(lambda v: f'{v:.2f} µs')} |")
    w(f"| CPU per forwarded call, provider's gateway (m1) | {us(sides[1])} | {sides[1].spread(lambda v: f'{v:.2f} µs')} |")
    w(f"| CPU per local call (single gateway) | {us(rpc_cpu)} | {rpc_cpu.spread(lambda v: f'{v:.2f} µs')} |")
    paced, local = paced_mesh_cpu(d, runs)
    if local:
        excess = [paired_excess(f, local) for f in paced]
        paced, local = [Figure(f.values()) for f in paced], Figure(local.values())
        for name, f in (
            (f"CPU per forwarded call at {mesh_rate:,}/s, m0", paced[0]),
            (f"CPU per forwarded call at {mesh_rate:,}/s, m1", paced[1]),
            (f"CPU per local call at {mesh_rate:,}/s, m0 (callers and provider on m0)", local),
        ):
            w(f"| {name} | {us(f)} | {f.spread(lambda v: f'{v:.2f} µs')} |")
        for side, f in zip(("m0", "m1"), excess):
            w(
                f"| a forwarded call's CPU on {side} less the local call's, pair by pair | "
                f"{signed_us(f.median)} | {f.spread(signed_us)} |"
            )
        keys = ("gateway_datagrams_received", "gateway_datagrams_sent", "gateway_turns")
        counts = {
            side: [paced_mesh_counts(d, runs, name, i, key) for key in keys]
            for side, name, i in (
                ("forwarded, m0", "mesh-rpc-paced", 0),
                ("forwarded, m1", "mesh-rpc-paced", 1),
                ("local, m0", "mesh-rpc-local", 0),
            )
        }
        for side, (received, sent, turns) in counts.items():
            if None not in (received, sent, turns):
                w(
                    f"| UDP datagrams received / sent and turns of the loop per call at "
                    f"{mesh_rate:,}/s, {side} | {received.median:.2f} / {sent.median:.2f}, "
                    f"{turns.median:.2f} | |"
                )
        if None not in (paced[0].median, paced[1].median, local.median):
            both = (paced[0].median + paced[1].median) * mesh_rate / 1e6
            w(
                f"| gateway core busy at {mesh_rate:,}/s (CPU per call × rate): forwarded "
                f"(m0 + m1), local (m0) | {both:.0%}, {local.median * mesh_rate / 1e6:.0%} | |"
            )
    w("")
    w(
        "A gateway's CPU per call depends on the rate: unpaced, many calls share each packet; "
        f"paced at {mesh_rate:,} calls/s, most packets carry one. The target compares a "
        "forwarded call with a local call at that one paced rate, on the same two gateways "
        "sharing the gateway core (m1 idle in the local runs), at a rate low enough that "
        "neither saturates it (the busy row). At such a rate a call's CPU is mostly the "
        "gateway's wake-ups, and it drifts from one run to the next by more than the two "
        "differ: each run therefore measures them in pairs, one right after the other, "
        "alternating which goes first. The medians are over all pairs; the rows pair by pair "
        "give the difference within each pair, which that drift moves less."
        + paced_mesh_polling(d, runs)
    )
    w("")

    def per_publish(summary, link):
        published = summary.get("publishes_by_gateway", {}).get(link.split("->")[0], 0)
        frames = summary.get("publish_frames_sent", {}).get(link)
        return "n/a" if frames is None or not published else f"{frames / published:.3f}"

    w(
        "PUBLISH frames per link per publish (from `meshgate_peer_frames_sent_total` on the "
        "sending gateway, divided by the messages its clients published, warm-up included):"
    )
    w("")
    w("| run | link | interest behind it | frames per publish |")
    w("|---|---|---|---|")
    for link in sorted(spread.get("publish_frames_sent", {})):
        w(f"| 3 publishers, subscribers on every gateway | {link} | yes | {per_publish(spread, link)} |")
    for link, interest in (("m0->m1", "yes"), ("m0->m2", "no")):
        w(f"| 1 publisher on m0, subscribers on m1 | {link} | {interest} | {per_publish(one, link)} |")
    w("")
    w(
        f"Deliveries: {count(spread['delivered_per_s'])}/s with {spread['losses']} losses "
        f"(spread), {count(one['delivered_per_s'])}/s with {one['losses']} losses (one "
        "publisher). On two cores the gateways share one core with each other, so the "
        "cross-gateway rate is bounded by that core doing two gateways' work per call, plus "
        "the link's own QUIC packets; these figures show the mesh's costs, not its scaling."
    )
    w("")


if __name__ == "__main__":
    main()
