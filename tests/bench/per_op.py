#!/usr/bin/env python3
"""Per-operation cost of a FUSE daemon on the small-file rows.

    python3 tests/bench/per_op.py DIR PID [--files N] [--pause S] [--cycles K]

Runs the mount benchmark's small-file cycle (N files of 4 KiB created,
stat'ed, read, renamed and deleted by this one process) in DIR, K times,
and prints for each phase the rate and the CPU time the daemon PID spent
per operation, summed over its threads and split by thread name (from
/proc/PID/task/*/schedstat, in nanoseconds; thread names lose their
trailing numbers, so lockbox's fuser-0..3 count as one "fuser").

--pause S sleeps S seconds between the creates and the stats: with it,
the stat phase no longer overlaps what the daemon does right after a
burst of creates (lockbox's last grouped-sync round; see
docs/benchmarks.md, "The runs of 2026-12-06").

A phase's CPU is counted until the daemon settles after it (no CPU for
--settle S seconds, 0.3 by default): work a daemon leaves for later (a
grouped sync, signing a version record) is the phase's cost too. The
rate is the phase's own wall-clock time.

The cycle does not drop caches; run `sync; echo 3 >
/proc/sys/vm/drop_caches` between invocations for cold starts. The
daemon's pid: `cat ~/.lockbox/agent.lock` for lockbox, `pgrep gocryptfs`.
"""

import argparse
import os
import sys
import time

import bench  # the small-file cycle and the CPU counters (tests/bench/bench.py)
from bench import daemon_cpu, settled


def phases(d, n):
    """The small-file cycle's phases in order, as (name, function)."""
    def phase(steps):
        def run():
            for step in steps:
                step()
        return run
    return [(name, phase(steps))
            for name, steps in bench.small_steps(d, n, os.urandom(4096), "per-op")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="the mount (or folder) to work in")
    ap.add_argument("pid", type=int, help="the daemon's process id")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds between the creates and the stats")
    ap.add_argument("--cycles", type=int, default=1)
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds without daemon CPU that end a phase's count")
    a = ap.parse_args()
    if not os.path.isdir("/proc/%d/task" % a.pid):
        sys.exit("per_op.py: no process %d" % a.pid)
    if a.files < 1 or a.cycles < 1 or a.pause < 0:
        sys.exit("per_op.py: --files and --cycles must be positive, --pause not negative")
    for c in range(a.cycles):
        out = []
        for name, run in phases(a.dir, a.files):
            if name == "stat" and a.pause:
                time.sleep(a.pause)
            before = daemon_cpu(a.pid)
            t = time.perf_counter()
            run()
            secs = time.perf_counter() - t
            after = settled(a.pid, a.settle)
            per = {k: (after[k] - before.get(k, 0)) / a.files / 1000.0
                   for k in after if after[k] > before.get(k, 0)}
            out.append("%-6s %7.0f/s %6.1f µs (%s)" % (
                name, a.files / secs, sum(per.values()),
                " ".join("%s=%.0f" % kv for kv in sorted(per.items()))))
        print("cycle %d/%d" % (c + 1, a.cycles))
        for line in out:
            print("  " + line)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
