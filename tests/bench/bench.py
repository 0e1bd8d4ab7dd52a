#!/usr/bin/env python3
"""The Python half of the mount benchmark (tests/bench/mount.sh runs it).

    bench.py small DIR N [PID] [KEY] the small-file rows, N files, in DIR
    bench.py tree DIR N [PID]        the tree rows: N files in 20 folders, cp -r of half, find
    bench.py rand FILE N SEED        N random 4 KiB preads in FILE
    bench.py mkfiles DIR N           N files of 1 KiB (for the idle RSS)
    bench.py table RES TARGETS ...   the report's tables from mount.sh's results
    bench.py pool REPORT...          the paired runs of several reports, pooled

With PID (the daemon serving DIR), `small` and `tree` also print each
phase's daemon CPU per file in µs (`small_create_cpu` ...), counted from
the phase's start until the daemon has used no CPU for 0.3 s: work a
daemon leaves for later (lockbox's grouped sync, the version record its
journal signs) is the phase's too. KEY replaces `small` in the printed
keys (`busy_small` for the busy-host runs).

`pool` reads the "All repetitions" lists of reports that mount.sh wrote
with --out and prints, per row, the median lockbox/gocryptfs ratio over
every pair of runs in them, its 95 % interval and how many pairs lockbox
won: one run's 15 pairs give a wide interval, several runs' a narrow one
(docs/benchmarks.md).
"""

import collections, glob, math, os, random, re, shutil, subprocess, sys, time

def daemon_cpu(pid):
    """CPU nanoseconds per thread name of process `pid` (from
    /proc/PID/task/*/schedstat; names lose their trailing numbers, so
    lockbox's fuser-0..3 count as one "fuser")."""
    by_name = collections.Counter()
    for stat in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(stat) as f:
                ns = int(f.read().split()[0])
            with open(stat[: -len("schedstat")] + "comm") as f:
                name = re.sub(r"-?[0-9]+$", "", f.read().strip()) or "?"
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
        by_name[name] += ns
    return by_name

def settled(pid, quiet=0.3, limit=30.0):
    """daemon_cpu(pid) once the daemon has used none for `quiet` seconds
    (waiting at most `limit` seconds)."""
    last = daemon_cpu(pid)
    still_since = time.monotonic()
    end = still_since + limit
    while time.monotonic() < end:
        time.sleep(0.05)
        now = daemon_cpu(pid)
        if sum(now.values()) != sum(last.values()):
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return last

class Phase:
    """Times one phase and, with a daemon pid, counts its CPU (to idle)."""
    def __init__(self, pid):
        self.pid = pid
    def __enter__(self):
        self.cpu = sum(daemon_cpu(self.pid).values()) if self.pid else 0
        self.t = time.perf_counter()
        return self
    def __exit__(self, *exc):
        self.secs = time.perf_counter() - self.t
        if self.pid and exc[0] is None:
            self.cpu = sum(settled(self.pid).values()) - self.cpu
        return False
    def report(self, key, n):
        """The phase's lines: the rate, and µs of daemon CPU per item."""
        print("%s\t%.1f" % (key, n / self.secs))
        if self.pid:
            print("%s_cpu\t%.1f" % (key, self.cpu / n / 1000.0))

def small_steps(d, n, data, prefix="small"):
    """The small-file cycle, one step per file and phase: n files of `data`
    in d created, stat'ed, read, renamed and deleted (each checked), as
    [(phase, [step, ...]), ...] in order. The one definition of the cycle
    that `small`, per_op.py and latency.py run."""
    names = [os.path.join(d, "%s-%06d" % (prefix, i)) for i in range(n)]
    moved = [os.path.join(d, "%s-moved-%06d" % (prefix, i)) for i in range(n)]

    def create(p):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if os.write(fd, data) != len(data):
                raise OSError("short write on %s" % p)
        finally:
            os.close(fd)

    def stat(p):
        st = os.stat(p)
        if st.st_size != len(data):
            raise OSError("stat %s: size %d, want %d" % (p, st.st_size, len(data)))

    def read(p):
        fd = os.open(p, os.O_RDONLY)
        try:
            b = os.read(fd, len(data) + 1)
        finally:
            os.close(fd)
        if b != data:
            raise OSError("read %s: wrong content (%d bytes)" % (p, len(b)))

    def step(f, *args):
        return lambda: f(*args)

    return [
        ("create", [step(create, p) for p in names]),
        ("stat", [step(stat, p) for p in names]),
        ("read", [step(read, p) for p in names]),
        ("rename", [step(os.rename, a, b) for a, b in zip(names, moved)]),
        ("delete", [step(os.unlink, p) for p in moved]),
    ]

def small(d, n, pid=None, key="small", size=4096):
    """n files of `size` bytes: create, stat, read, rename, delete (one process)."""
    rng = random.Random(1)
    data = bytes(rng.getrandbits(8) for _ in range(size))
    for phase, steps in small_steps(d, n, data):
        with Phase(pid) as p:
            for run in steps:
                run()
        p.report("%s_%s" % (key, phase), n)
    left = [f for f in os.listdir(d) if f.startswith("small-")]
    if left:
        raise OSError("%d files left after delete" % len(left))

def tree(d, n, pid=None, folders=20, size=1024):
    """The tree rows: n files of `size` bytes made in `folders` folders
    (two halves of folders/2 each), `cp -r` of one half (n/2 files) to a
    new folder, then `find` over everything (1.5 n files). The trees are
    removed afterwards, untimed."""
    rng = random.Random(2)
    data = bytes(rng.getrandbits(8) for _ in range(size))
    src = os.path.join(d, "tree-src")
    copy = os.path.join(d, "tree-copy")
    half = folders // 2
    with Phase(pid) as made:
        os.mkdir(src)
        for h in ("a", "b"):
            os.mkdir(os.path.join(src, h))
        for f in range(folders):
            os.mkdir(os.path.join(src, "ab"[f // half], "d%02d" % f))
        for i in range(n):
            f = i % folders
            with open(os.path.join(src, "ab"[f // half], "d%02d" % f, "f%05d" % i), "wb") as fh:
                fh.write(data)
    with Phase(pid) as copied:
        subprocess.run(["cp", "-r", os.path.join(src, "a"), copy], check=True)
    want = n + n // 2
    with Phase(pid) as walked:
        found = subprocess.run(["find", src, copy, "-type", "f"], check=True,
                               stdout=subprocess.PIPE).stdout.count(b"\n")
    if found != want:
        raise OSError("find saw %d files, not %d" % (found, want))
    shutil.rmtree(copy)
    shutil.rmtree(src)
    made.report("tree_create", n)
    copied.report("tree_cp", n // 2)
    walked.report("tree_find", want)

def rand(path, n, seed):
    """n random 4 KiB-aligned 4 KiB preads in `path` (content must be zeros)."""
    zero = bytes(4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        blocks = os.fstat(fd).st_size // 4096
        rng = random.Random(seed)
        offs = [rng.randrange(blocks) * 4096 for _ in range(n)]
        t = time.perf_counter()
        for o in offs:
            b = os.pread(fd, 4096, o)
            if b != zero:
                raise OSError("pread at %d: %d bytes, not the zeros written" % (o, len(b)))
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
    print("random_read\t%.1f" % (n / dt))

def mkfiles(d, n, size=1024):
    """n small files (for the idle-RSS measurement)."""
    data = os.urandom(size)
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(os.path.join(d, "rss-%06d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    print("%.1f" % (time.perf_counter() - t))

def _isnum(v):
    try:
        float(v)
        return True
    except ValueError:
        return False

def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2

def median_interval(xs, alpha=0.05):
    """A distribution-free confidence interval of the median of xs: the
    k-th smallest and the k-th largest, with k the largest such that a
    fair coin gives fewer than k heads in len(xs) tosses with probability
    at most alpha/2. It covers the median with probability at least
    1 - alpha whatever the distribution, and needs no more than that the
    runs are independent. None with fewer than 6 runs (no such k)."""
    n = len(xs)
    below, k = 0.0, 0
    while True:
        below += math.comb(n, k) / 2.0 ** n  # P(fewer than k + 1 heads)
        if below > alpha / 2:
            break
        k += 1
    if k == 0:
        return None
    xs = sorted(xs)
    return (xs[k - 1], xs[n - k])

def versus_mark(ratio, ci):
    """The target mark of "lockbox >= gocryptfs" for a row: with an
    interval, ahead when all of it is above 1.00, behind when all of it
    is below, else level (the runs do not tell the two apart); with too
    few runs for one, by the median ratio alone."""
    if ci is None:
        return "≥ gocryptfs: " + ("ok" if ratio >= 1.0 else "**MISS**") + " (median)"
    lo, hi = ci
    if lo > 1.0:
        return "≥ gocryptfs: ok (ahead)"
    if hi < 1.0:
        return "≥ gocryptfs: **MISS** (behind)"
    return "≥ gocryptfs: level (interval spans 1.00)"

def cpu_mark(ratio, ci, limit):
    """The mark of a CPU row against "lockbox ≤ limit × gocryptfs": met
    when all of the interval is at or below the limit, missed when all of
    it is above, else level with the limit; by the median alone without
    an interval."""
    target = "≤ %.2f× gocryptfs: " % limit
    if ci is None:
        return target + ("ok" if ratio <= limit else "**MISS**") + " (median)"
    lo, hi = ci
    if hi <= limit:
        return target + "ok"
    if lo > limit:
        return target + "**MISS**"
    return target + "level (interval spans it)"

def table(res_path, targets, big_mib, small_n, rand_n, rss_n, out):
    V = {}
    for line in open(res_path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3:
            V.setdefault((parts[0], parts[1]), []).append(parts[2])
    R = {}  # median of the repetitions, or the first non-number (ERR, BAD, "")
    for key, vals in V.items():
        try:
            xs = sorted(float(v) for v in vals)
        except ValueError:
            R[key] = next(v for v in vals if not _isnum(v)) or "n/a"
            continue
        R[key] = str(median(xs))
    cols = ["plain", "gocryptfs", "lockbox"]
    def num(t, k):
        try:
            return float(R[(t, k)])
        except (KeyError, ValueError):
            return None
    def cell(t, k, fmt):
        if t not in targets:
            return "–"
        v = R.get((t, k))
        if v is None:
            return "n/a"
        try:
            return fmt % float(v)
        except ValueError:
            return v  # ERR etc.
    size = "1 GiB" if big_mib == 1024 else "%d MiB" % big_mib
    rows = [
        ("seq_write", "sequential write %s (dd bs=1M conv=fsync)" % size, "MB/s", "%.0f"),
        ("seq_read", "sequential read %s, cold cache (dd bs=1M)" % size, "MB/s", "%.0f"),
        ("small_create", "create %d × 4 KiB files" % small_n, "files/s", "%.0f"),
        ("small_stat", "stat %d files" % small_n, "files/s", "%.0f"),
        ("small_read", "read %d files" % small_n, "files/s", "%.0f"),
        ("small_rename", "rename %d files" % small_n, "files/s", "%.0f"),
        ("small_delete", "delete %d files" % small_n, "files/s", "%.0f"),
        ("busy_small_create", "busy host: create %d × 4 KiB files" % small_n, "files/s", "%.0f"),
        ("busy_small_stat", "busy host: stat %d files" % small_n, "files/s", "%.0f"),
        ("busy_small_read", "busy host: read %d files" % small_n, "files/s", "%.0f"),
        ("busy_small_rename", "busy host: rename %d files" % small_n, "files/s", "%.0f"),
        ("busy_small_delete", "busy host: delete %d files" % small_n, "files/s", "%.0f"),
        ("random_read", "%d random 4 KiB preads in the %s file, cold cache" % (rand_n, size), "reads/s", "%.0f"),
        ("tree_create", "create %d × 1 KiB files in 20 folders" % small_n, "files/s", "%.0f"),
        ("tree_cp", "`cp -r` of %d of them (10 folders)" % (small_n // 2), "files/s", "%.0f"),
        ("tree_find", "`find` over the %d files" % (small_n + small_n // 2), "files/s", "%.0f"),
    ]
    L = []
    def pairs(k):
        # Runs are paired by their place in the run order: the n-th run of
        # a row on lockbox and on gocryptfs belong to the same repetition
        # and round, seconds apart (the targets take turns).
        try:
            lb = [float(v) for v in V[("lockbox", k)]]
            gc = [float(v) for v in V[("gocryptfs", k)]]
        except (KeyError, ValueError):
            return None
        if len(lb) != len(gc) or not lb or min(gc) <= 0:
            return None
        return list(zip(lb, gc))
    L.append("| measurement | unit | plain | gocryptfs | lockbox | lockbox/gocryptfs | 95 % interval | lockbox ahead (runs) | lockbox/plain | target |")
    L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for k, label, unit, fmt in rows:
        lb, gc, pl = num("lockbox", k), num("gocryptfs", k), num("plain", k)
        r_gc = lb / gc if lb is not None and gc else None
        r_pl = lb / pl if lb is not None and pl else None
        ps = pairs(k)
        ci = median_interval([a / b for a, b in ps]) if ps else None
        marks = []
        if r_gc is not None:
            marks.append(versus_mark(r_gc, ci))
        if k == "seq_read" and r_pl is not None:
            marks.append("≥ 50 % plain: " + ("ok" if r_pl >= 0.5 else "**MISS**"))
        if not marks:
            marks.append("≥ gocryptfs" + ("; ≥ 50 % plain" if k == "seq_read" else "") + " (not measured)")
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, unit, cell("plain", k, fmt), cell("gocryptfs", k, fmt), cell("lockbox", k, fmt),
            "%.2f" % r_gc if r_gc is not None else "–",
            "%.2f–%.2f" % ci if ci else "–",
            "%d/%d" % (sum(a > b for a, b in ps), len(ps)) if ps else "–",
            "%.2f" % r_pl if r_pl is not None else "–",
            "; ".join(marks)))
    cpu_rows = [(k + "_cpu", label) for k, label, _, _ in rows
                if k.startswith(("small_", "busy_small_", "tree_"))]
    if any(("lockbox", k) in V or ("gocryptfs", k) in V for k, _ in cpu_rows):
        L.append("")
        L.append("Daemon CPU per operation (µs, from the phase's start until the daemon is idle; lower is better):")
        L.append("")
        L.append("| operation | gocryptfs | lockbox | lockbox/gocryptfs | 95 % interval | target |")
        L.append("|---|--:|--:|--:|--:|---|")
        for k, label in cpu_rows:
            lb, gc = num("lockbox", k), num("gocryptfs", k)
            ratio = lb / gc if lb is not None and gc else None
            ps = pairs(k)
            ci = median_interval([a / b for a, b in ps]) if ps else None
            limit = 0.5 if k.endswith("small_create_cpu") else 1.0
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                label, cell("gocryptfs", k, "%.0f"), cell("lockbox", k, "%.0f"),
                "%.2f" % ratio if ratio is not None else "–",
                "%.2f–%.2f" % ci if ci else "–",
                cpu_mark(ratio, ci, limit) if ratio is not None else "–"))
    if R.get(("lockbox", "store_check")) == "BAD":
        L.append("")
        L.append("**WARNING: after the sequential write the lockbox store did not hold a complete age file; "
                 "the lockbox numbers are not trustworthy.**")
    L.append("")
    mem = [
        ("rss_fresh", "daemon RSS, idle, fresh mount, empty", None),
        ("rss_idle_files", "daemon RSS, idle, after creating %d × 1 KiB files through a fresh mount" % rss_n, 50),
        ("hwm_write", "daemon peak RSS during the %s sequential write (VmHWM, reset before)" % size, None),
        ("max_sampled_write", "daemon peak RSS during the write (VmRSS sampled every 0.1 s)", None),
        ("rss_after_rows", "daemon RSS, idle, after all the rows above", None),
    ]
    mt = [t for t in ("gocryptfs", "lockbox") if t in targets]
    if mt:
        L.append("| memory (MiB) | " + " | ".join(mt) + " | target |")
        L.append("|---|" + "--:|" * len(mt) + "---|")
        for k, label, limit in mem:
            cells = []
            for t in mt:
                v = num(t, k)
                cells.append("%.1f" % (v / 1024.0) if v is not None else R.get((t, k), "n/a"))
            mark = ""
            if limit is not None:
                v = num("lockbox", k)
                if v is None:
                    mark = "lockbox < %d MiB (not measured)" % limit
                else:
                    mark = "lockbox < %d MiB: " % limit + ("ok" if v / 1024.0 < limit else "**MISS**")
            L.append("| %s | %s | %s |" % (label, " | ".join(cells), mark))
        L.append("")
    multi = [(k, t, v) for (t, k), v in sorted(V.items(), key=lambda kv: (kv[0][1], kv[0][0])) if len(v) > 1]
    if multi:
        L.append("All repetitions (in run order):")
        L.append("")
        for k, t, v in multi:
            L.append("- %s %s: %s" % (k, t, ", ".join(("%.0f" % float(x)) if _isnum(x) else x for x in v)))
        L.append("")
    text = "\n".join(L)
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")

ROW_LABELS = {
    "seq_write": "sequential write", "seq_read": "sequential read",
    "small_create": "create", "small_stat": "stat", "small_read": "read",
    "small_rename": "rename", "small_delete": "delete", "random_read": "random 4 KiB reads",
    "tree_create": "tree: create", "tree_cp": "tree: cp -r", "tree_find": "tree: find",
    "busy_small_create": "busy host: create", "busy_small_stat": "busy host: stat",
    "busy_small_read": "busy host: read", "busy_small_rename": "busy host: rename",
    "busy_small_delete": "busy host: delete",
}

def pool(paths):
    """Pool the lockbox/gocryptfs pairs of runs of several reports."""
    ratios = {}
    for path in paths:
        runs = {}
        with open(path) as f:
            for line in f:
                m = re.match(r"- (\w+) (plain|gocryptfs|lockbox): (.*)$", line.strip())
                if not m or m.group(1) not in ROW_LABELS:
                    continue
                try:
                    runs[(m.group(1), m.group(2))] = [float(x) for x in m.group(3).split(", ")]
                except ValueError:
                    continue  # a row with a failed run (ERR) is left out
        if not runs:
            sys.exit("pool: %s has no \"All repetitions\" lists (a report of mount.sh --out)" % path)
        for k in ROW_LABELS:
            lb, gc = runs.get((k, "lockbox")), runs.get((k, "gocryptfs"))
            if lb and gc and len(lb) == len(gc) and min(gc) > 0:
                ratios.setdefault(k, []).extend(a / b for a, b in zip(lb, gc))
    print("Pooled over %d report(s): %s" % (len(paths), ", ".join(paths)))
    print()
    print("| row | pairs | lockbox/gocryptfs (median) | 95 % interval | lockbox ahead | target |")
    print("|---|--:|--:|--:|--:|---|")
    for k, label in ROW_LABELS.items():
        rs = ratios.get(k)
        if not rs:
            continue
        ci = median_interval(rs)
        print("| %s | %d | %.2f | %s | %d/%d | %s |" % (
            label, len(rs), median(rs), "%.2f–%.2f" % ci if ci else "–",
            sum(r > 1 for r in rs), len(rs), versus_mark(median(rs), ci)))

if __name__ == "__main__":
    cmd = sys.argv[1]
    def pid():
        return int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else None
    if cmd == "small":
        small(sys.argv[2], int(sys.argv[3]), pid(), sys.argv[5] if len(sys.argv) > 5 else "small")
    elif cmd == "tree":
        tree(sys.argv[2], int(sys.argv[3]), pid())
    elif cmd == "rand":
        rand(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "mkfiles":
        mkfiles(sys.argv[2], int(sys.argv[3]))
    elif cmd == "pool":
        pool(sys.argv[2:])
    elif cmd == "table":
        table(sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]), int(sys.argv[5]),
              int(sys.argv[6]), int(sys.argv[7]), sys.argv[8] if len(sys.argv) > 8 else "")
