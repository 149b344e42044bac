#!/usr/bin/env python3
"""Writes the Markdown report of a `scripts/scaling.sh` run from the JSON it left.

Every figure is read from --dir: json/scaling-N-R.json for each shard count N and run R (the
load generators' `meshgate-cli bench rpc --json` summaries, the sessions of each shard, the
shards' CPU), json/machine.json and json/commit.txt. A figure measured more than once is the
median of the runs. The efficiency per shard of N shards is the median rate of N shards over N
times the median rate of one; a shard count whose processes shared a core (a CPU named twice,
or SMT siblings) gets none, since its rate says nothing of the gateway's scaling.
"""

import argparse
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import (  # noqa: E402
    Figure, commit, count, load, load_busy, machine, pct_of, us, verdict,
    gateway_busy as gateway_busy_of,
)

# The efficiency per shard the largest shard count must reach.
TARGET = 0.85


def runs_by_shards(d):
    """The runs of each shard count, by count, in run order."""
    found = {}
    for path in glob.glob(os.path.join(d, "json", "scaling-*-*.json")):
        m = re.fullmatch(r"scaling-(\d+)-(\d+)\.json", os.path.basename(path))
        if m:
            found.setdefault(int(m.group(1)), []).append((int(m.group(2)), m.group(0)[:-5]))
    if not found:
        sys.exit(f"scaling_report: no json/scaling-N-R.json in {d} (scripts/scaling.sh writes them)")
    return {n: [load(d, name) for _, name in sorted(rs)] for n, rs in sorted(found.items())}


def calls_per_s(run):
    return sum(s["calls_per_s"] for s in run["loads"])


def gateway_busy(run):
    """The gateway's CPU over the load's window, in cores, less the time its shards spent
    polling while idle: the mean of what each load generator read of the whole process over
    its own window."""
    values = [gateway_busy_of(s) for s in run["loads"] if "gateway_cpu_busy" in s]
    return sum(values) / len(values) if values else None


def shared(run):
    """Whether a core served two of the run's processes (a CPU named twice, or SMT siblings)."""
    cores = run["gateway_cores"] + run["load_cores"]
    return run.get("cores_shared", len(set(cores)) < len(cores))


def span(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{fmt(min(values))} – {fmt(max(values))}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--elapsed", type=int, required=True)
    p.add_argument("--command", required=True)
    a = p.parse_args()
    d = a.dir
    by_n = runs_by_shards(d)
    rates = {n: Figure([calls_per_s(r) for r in runs]) for n, runs in by_n.items()}
    single = rates.get(1)
    sharing = {n for n, runs in by_n.items() if any(shared(r) for r in runs)}

    def efficiency(n):
        if single is None or 1 in sharing or n in sharing or not single.median:
            return None
        return rates[n].median / (n * single.median)

    first = next(iter(by_n.values()))[0]["loads"][0]
    shape = (
        f"{first['callers']} callers × {first['in_flight']} calls in flight and "
        f"{first['providers']} providers per load generator, {first['payload_bytes']}-byte payloads"
    )
    largest = max(by_n)
    w = print
    w("# meshgate scaling report")
    w()
    w(f"Machine: {machine(d)}. Commit measured: `{commit(d)}`.")
    w()
    w(
        f"Made by `{a.command}` in {a.elapsed} s. Each shard count N ran a gateway of N shards "
        f"pinned to N cores and N load generators (`meshgate-cli bench rpc`) pinned to N other "
        f"cores, all at once: {shape}. Runs: "
        f"{max(len(r) for r in by_n.values())} of {first['duration_s']:g} s each, the shard "
        "counts interleaved; figures are medians. Each load generator's callers call its own "
        "providers, which may be on any shard."
    )
    w()
    w("## Target")
    w()
    w("| target | measured | |")
    w("|---|---|---|")
    e = efficiency(largest)
    measured = "n/a" if e is None else f"{pct_of(e)} at {largest} shards"
    if largest == 1:
        measured, e = "one shard only: nothing to scale", None
    w(f"| efficiency per shard at the largest shard count ≥ {pct_of(TARGET)} | {measured} | "
      f"{verdict(None if e is None else e >= TARGET)} |")
    w()
    w("## Calls per second by shard count")
    w()
    w("| shards | calls/s | spread | per shard | efficiency per shard | gateway CPU (cores) "
      "| gateway CPU/call | shards busy, all runs (idlest – busiest) | sessions per shard, all runs "
      "(fewest – most) | messages between shards per call | datagrams forwarded | load busy "
      "(median) | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, runs in by_n.items():
        rate = rates[n]
        busy = Figure([gateway_busy(r) for r in runs])
        per_call = Figure([
            None if gateway_busy(r) is None or not calls_per_s(r)
            else gateway_busy(r) * 1e6 / calls_per_s(r)
            for r in runs
        ])
        shard_busy = [b for r in runs for b in (r.get("shard_busy") or [])]
        sessions = [s for r in runs for s in r["sessions_per_shard"]]
        loads = Figure([load_busy(s) for r in runs for s in r["loads"]])
        errors = sum(s["errors"] for r in runs for s in r["loads"])
        messages = Figure([r.get("shard_messages_per_call") for r in runs])
        forwarded = [r.get("datagrams_forwarded") for r in runs]
        forwarded = "n/a" if None in forwarded else f"{sum(forwarded):,}"
        eff = efficiency(n)
        eff = "n/a (processes share cores)" if n in sharing else (
            "n/a" if eff is None else pct_of(eff))
        w(
            f"| {n} | {count(rate.median)} | {rate.spread(count)} | {count(rate.median / n)} "
            f"| {eff} | {'n/a' if busy.median is None else f'{busy.median:.2f}'} "
            f"| {us(per_call.median)} | {span(shard_busy, pct_of)} | {span(sessions, count)} "
            f"| {'n/a' if messages.median is None else f'{messages.median:.2f}'} | {forwarded} "
            f"| {pct_of(loads.median)} | {errors:,} |"
        )
    w()
    w(
        "The gateway's CPU is the whole process's over each load generator's window (`/proc`), "
        "less the time its shards spent polling while idle (`--spin`); "
        "each shard's busy share is its `meshgate_shard_cpu_seconds_total` less its "
        "`meshgate_shard_spin_seconds_total` (time spent polling while idle) over the middle half "
        "of the window, and the sessions per shard are the gateway's `meshgate_clients` gauges read "
        "there. A shard holding more sessions than another gets more of the load: each session "
        "lands on the shard its first connection ID names, a random one. Messages between shards "
        "per call (`meshgate_shard_messages_total` over `meshgate_calls_total`, the same span) "
        "are what a call costs in cross-shard traffic: a call between sessions of two shards "
        "crosses once each way. Datagrams forwarded (`meshgate_udp_datagrams_forwarded_total`, "
        "summed over the runs' spans) reached a shard other than their connection's: none while "
        "the kernel steers by connection ID."
    )
    if sharing:
        w()
        w(
            f"With {', '.join(str(n) for n in sorted(sharing))} shard(s) a core (or SMT siblings "
            "of one) served two of the processes: those rows check the script, not the gateway's "
            "scaling."
        )


if __name__ == "__main__":
    main()
