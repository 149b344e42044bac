#!/usr/bin/env python3
"""The CPUs a benchmark may pin its processes to, for scripts/scaling.sh.

  cores.py allowed           the logical CPUs this process may run on, comma-separated
  cores.py physical          one logical CPU of each physical core among them, in order: two
                             logical CPUs of one core (SMT siblings) share its execution units,
                             so a shard and a load generator on siblings would share a core
  cores.py shared LIST...    prints "true" if any CPU of the comma-separated LISTs is named
                             twice or is a sibling of another one named, else "false"
"""

import os
import sys


def allowed():
    return sorted(os.sched_getaffinity(0))


def core_of(cpu):
    """The physical core of a logical CPU: its siblings list, or the CPU alone where the
    machine does not say."""
    path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return str(cpu)


def physical():
    seen, cpus = set(), []
    for cpu in allowed():
        core = core_of(cpu)
        if core not in seen:
            seen.add(core)
            cpus.append(cpu)
    return cpus


def shared(cpus):
    cores = [core_of(c) for c in cpus]
    return len(set(cores)) < len(cores)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("allowed", "physical", "shared"):
        sys.exit(__doc__)
    if sys.argv[1] == "shared":
        cpus = [int(c) for arg in sys.argv[2:] for c in arg.split(",") if c]
        print("true" if shared(cpus) else "false")
    else:
        print(",".join(str(c) for c in (allowed() if sys.argv[1] == "allowed" else physical())))


if __name__ == "__main__":
    main()
