#!/usr/bin/env python3
"""Records the machine that measures, beside a benchmark's raw results: cores, CPU model,
memory and kernel, as JSON in the file named by the one argument. The reports read the machine
from there, never from the machine that makes them."""

import json
import os
import platform
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: record_machine.py OUT.json")
    model = memory_gib = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            memory_gib = round(int(f.readline().split()[1]) / 1048576)
    except (OSError, ValueError, IndexError):
        pass
    machine = {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "kernel": f"{platform.system()} {platform.release()}",
    }
    with open(sys.argv[1], "w") as f:
        json.dump(machine, f, indent=1)


if __name__ == "__main__":
    main()
