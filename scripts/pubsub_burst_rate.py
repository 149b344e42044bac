#!/usr/bin/env python3
"""The rate of the benchmark's pub/sub runs in bursts, and how it was chosen.

Usage: pubsub_burst_rate.py OUT RUNS [--rate N] [--match-nats]

Prints the publisher's rate (messages/s) and records it in OUT/json/pubsub-burst-rate.json
with its basis, which the report states:

- "given": --rate N, as `scripts/bench.sh --pubsub-burst-rate` was given it;
- "nats" (with --match-nats): the rate at which nats-server delivered to each of its
  subscribers in the same run (natsbench's ps-1to4 results under OUT/nats/run-N, the median
  over the runs, rounded down to thousands), so that meshgate's CPU per delivery is measured at
  the delivery rate nats-server's is: a server's CPU per message falls as more messages share
  each read, write and wake-up;
- "default": 300,000/s, with the reason: nats-server was not measured, or (said on standard
  error too) none of its pub/sub results can be used.
"""

import argparse
import json
import os
import statistics
import sys

from bench_report import natsbench_results

DEFAULT = 300_000


def nats_runs(out, runs):
    """nats-server's deliveries/s and subscribers in each run whose pub/sub result is usable."""
    found = []
    for line in natsbench_results(out, range(1, runs + 1), "ps-1to4"):
        delivered, subscribers = line.get("delivered_msg_per_s"), line.get("subscribers")
        if (
            isinstance(delivered, (int, float))
            and delivered > 0
            and isinstance(subscribers, int)
            and subscribers > 0
        ):
            found.append((delivered, subscribers))
    return found


def choose(out, runs, given, match_nats):
    if given is not None:
        return {"basis": "given", "rate": given}
    if not match_nats:
        return {"basis": "default", "rate": DEFAULT, "reason": "nats-server was not measured"}
    found = nats_runs(out, runs)
    if not found:
        reason = "no run of nats-server's pub/sub gave a result"
    elif len({s for _, s in found}) > 1:
        reason = "nats-server's pub/sub runs had different numbers of subscribers"
    else:
        delivered = statistics.median(d for d, _ in found)
        subscribers = found[0][1]
        return {
            "basis": "nats",
            "rate": max(1000, int(delivered) // (subscribers * 1000) * 1000),
            "nats_delivered_per_s": delivered,
            "subscribers": subscribers,
        }
    print(f"bench: {reason}; the runs in bursts publish at {DEFAULT:,}/s", file=sys.stderr)
    return {"basis": "default", "rate": DEFAULT, "reason": reason}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("runs", type=int)
    p.add_argument("--rate", type=int)
    p.add_argument("--match-nats", action="store_true")
    a = p.parse_args()
    if a.rate is not None and a.rate < 1:
        p.error("--rate must be at least 1")
    record = choose(a.out, a.runs, a.rate, a.match_nats)
    with open(os.path.join(a.out, "json", "pubsub-burst-rate.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(record["rate"])


if __name__ == "__main__":
    main()
