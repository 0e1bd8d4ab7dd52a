#!/usr/bin/env python3
"""Latency of each small-file operation, per mount, the mounts taking turns.

    python3 tests/bench/latency.py [--files N] [--rounds K] NAME=DIR ...

Runs the mount benchmark's small-file cycle (N files of 4 KiB created,
stat'ed, read, renamed and deleted by this one process; tests/bench/
bench.py's `small`) K times on each DIR in turn, the order reversed every
round, and times every single operation. Prints, per operation and mount,
the 10th, 50th and 90th percentile and the mean in microseconds.

The rates in the mount benchmark are means; this shows what they are made
of. On a FUSE mount, one operation is one or more round trips to the
daemon, and a round trip's time is mostly how soon the daemon's thread
runs after the kernel wakes it: the 10th percentile is close to the
daemon's own work, the tail is the wake-up (on this VM, waking an idle
vCPU costs tens of microseconds; see docs/benchmarks.md, "Where a round
trip's time goes").

Example (the benchmark's layout, both mounts up):

    python3 tests/bench/latency.py gocryptfs=/tmp/gc.mnt lockbox=$HOME/lockbox
"""

import argparse
import os
import sys
import time

import bench  # the small-file cycle (tests/bench/bench.py)

OPS = ("create", "stat", "read", "rename", "delete")


def cycle(d, tag, n, data, lat):
    """One small-file cycle in `d`; appends each operation's ns to lat[op]."""
    now = time.perf_counter_ns
    for op, steps in bench.small_steps(d, n, data, "lat-%s" % tag):
        times = lat[op]
        for step in steps:
            t = now()
            step()
            times.append(now() - t)


def percentile(sorted_xs, q):
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300, help="files per cycle (default 300)")
    ap.add_argument("--rounds", type=int, default=6, help="cycles per mount (default 6)")
    ap.add_argument("mounts", nargs="+", metavar="NAME=DIR")
    args = ap.parse_args()
    mounts = []
    for m in args.mounts:
        name, sep, d = m.partition("=")
        if not sep or not name or not os.path.isdir(d):
            sys.exit("latency.py: '%s': want NAME=DIR with DIR an existing directory" % m)
        mounts.append((name, d))
    if args.files < 1 or args.rounds < 1:
        sys.exit("latency.py: --files and --rounds must be at least 1")
    data = os.urandom(4096)
    lat = {name: {op: [] for op in OPS} for name, _ in mounts}
    for r in range(args.rounds):
        order = mounts if r % 2 == 0 else mounts[::-1]
        for name, d in order:
            cycle(d, "%d-%d" % (os.getpid(), r), args.files, data, lat[name])
    width = max(len(name) for name, _ in mounts)
    print("%-7s %-*s %8s %8s %8s %8s   (µs; %d ops each)"
          % ("op", width, "mount", "p10", "p50", "p90", "mean", args.files * args.rounds))
    for op in OPS:
        for name, _ in mounts:
            xs = sorted(lat[name][op])
            print("%-7s %-*s %8.1f %8.1f %8.1f %8.1f" % (
                op, width, name, percentile(xs, 0.1) / 1e3, percentile(xs, 0.5) / 1e3,
                percentile(xs, 0.9) / 1e3, sum(xs) / len(xs) / 1e3))


if __name__ == "__main__":
    main()
