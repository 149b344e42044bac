#!/usr/bin/env python3
"""The rate of the benchmark's pub/sub runs in bursts, and how it was chosen.

Usage: pubsub_burst_rate.py OUT RUNS [RATE]

Prints the publisher's rate (messages/s) and records it in OUT/json/pubsub-burst-rate.json
with its basis, which the report states:

- "given": RATE, as `scripts/bench.sh --pubsub-burst-rate` was given it;
- "nats": the rate at which nats-server delivered to each of its subscribers in the same run
  (natsbench's ps-1to4 runs under OUT/nats/run-N, the median over the runs, in whole
  thousands), so that meshgate's CPU per delivery is measured at the delivery rate nats-server's
  is: a server's CPU per message falls as more messages share each read, write and wake-up;
- "default": 300,000/s, where nats-server was not measured.
"""

import json
import os
import statistics
import sys

DEFAULT = 300_000


def nats_per_subscriber(out, runs):
    """The median over the runs of nats-server's deliveries/s and its subscribers; None when
    no run measured its pub/sub."""
    rates, subscribers = [], set()
    for r in range(1, runs + 1):
        path = os.path.join(out, "nats", f"run-{r}", "ps-1to4.json")
        try:
            with open(path) as f:
                line = json.load(f)
        except (OSError, ValueError):
            continue
        if "usage" in line and line.get("delivered_msg_per_s") and line.get("subscribers"):
            rates.append(line["delivered_msg_per_s"])
            subscribers.add(line["subscribers"])
    if not rates or len(subscribers) != 1:
        return None
    return statistics.median(rates), subscribers.pop()


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: pubsub_burst_rate.py OUT RUNS [RATE]")
    out, runs = sys.argv[1], int(sys.argv[2])
    given = sys.argv[3] if len(sys.argv) == 4 and sys.argv[3] else None
    if given is not None:
        record = {"basis": "given", "rate": int(given)}
    else:
        nats = nats_per_subscriber(out, runs)
        if nats is None:
            record = {"basis": "default", "rate": DEFAULT}
        else:
            delivered, subscribers = nats
            record = {
                "basis": "nats",
                "rate": max(1000, int(delivered / subscribers / 1000) * 1000),
                "nats_delivered_per_s": delivered,
                "subscribers": subscribers,
            }
    with open(os.path.join(out, "json", "pubsub-burst-rate.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(record["rate"])


if __name__ == "__main__":
    main()
