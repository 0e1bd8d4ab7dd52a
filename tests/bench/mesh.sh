#!/usr/bin/env bash
# Mesh benchmark (see docs/benchmarks.md, "The mesh benchmark"):
# propagation latency between envoys and fan-out, on loopback, with several
# envoys on this machine (one HOME each), set up through the CLI exactly as
# `lockbox demo` does. Optionally Syncthing on the same small-file workload,
# as an anchor.
#
#   bash tests/bench/mesh.sh                  # full run (~4 min)
#   bash tests/bench/mesh.sh --quick          # fewer runs (~1.5 min)
#   bash tests/bench/mesh.sh --no-syncthing --out results.md
#
# Environment:
#   BENCH_DIR    a fresh lockbox-mesh.XXXX directory is made inside it for
#                the envoys' homes and removed at exit (default: /var/tmp)
#   LOCKBOX_BIN  the lockbox binary (default: target/release/lockbox of this
#                repository; build it first with `cargo build --release`)
#   PYTHON       python 3 interpreter (default: python3)
#   SYNCTHING    the syncthing binary (default: syncthing on PATH)
#
# Mounting needs /dev/fuse, and fusermount3 (package fuse3) unless root.
# Results go to stdout (markdown tables) and, with --out FILE, also to FILE.
# Progress goes to stderr. See docs/benchmarks.md.

set -euo pipefail
ORIG_ARGS="$*"
export LC_ALL=C

usage() {
    cat <<'EOF'
usage: bash tests/bench/mesh.sh [--quick] [--no-syncthing] [--out FILE]

  --quick          fewer runs: 15 × 4 KiB, 3 × 100 MiB, 2 fan-out repetitions
                   (full: 50, 10, 5)
  --small-runs N   runs of the 4 KiB propagation latency
  --big-runs N     runs of the 100 MiB propagation latency
  --fanout-reps N  repetitions of the fan-out comparison (1 vs 4 peers)
  --no-syncthing   skip the Syncthing anchor
  --keep-logs DIR  copy every envoy's agent.log (and Syncthing's logs) to DIR
                   before the cleanup
  --out FILE       also write the result tables (markdown) to FILE
  -h, --help       this help

Environment: BENCH_DIR (default /var/tmp), LOCKBOX_BIN, PYTHON, SYNCTHING.
EOF
}

QUICK=0
SMALL_RUNS=""; BIG_RUNS=""; FANOUT_REPS=""
SYNCTHING_WANTED=1
OUT=""
KEEP_LOGS=""
posint() { [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "mesh.sh: $1 needs a positive number" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --small-runs) posint "$1" "${2:-}"; SMALL_RUNS="$2"; shift ;;
        --big-runs) posint "$1" "${2:-}"; BIG_RUNS="$2"; shift ;;
        --fanout-reps) posint "$1" "${2:-}"; FANOUT_REPS="$2"; shift ;;
        --no-syncthing) SYNCTHING_WANTED=0 ;;
        --keep-logs) [ $# -ge 2 ] || { echo "mesh.sh: --keep-logs needs a directory" >&2; exit 2; }
                     KEEP_LOGS="$2"; shift ;;
        --out) [ $# -ge 2 ] || { echo "mesh.sh: --out needs a file" >&2; exit 2; }
               OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "mesh.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    SMALL_RUNS="${SMALL_RUNS:-15}"; BIG_RUNS="${BIG_RUNS:-3}"; FANOUT_REPS="${FANOUT_REPS:-2}"
else
    SMALL_RUNS="${SMALL_RUNS:-50}"; BIG_RUNS="${BIG_RUNS:-10}"; FANOUT_REPS="${FANOUT_REPS:-5}"
fi
SMALL_SIZE=4096
BIG_SIZE=$((100 * 1048576))
FANOUT_PEERS=4
# Long enough that anti-entropy (one contact per interval) cannot pass for a
# push: a file that only arrives by the periodic catch-up shows up as a
# latency of seconds, not milliseconds.
ANNOUNCE_INTERVAL=10s
STALE_AFTER=60s

log() { printf '[mesh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'mesh.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
if [ "$(id -u)" != 0 ]; then
    command -v fusermount3 >/dev/null || die "fusermount3 is missing: apt-get install fuse3 (or run as root)"
fi
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python 3 is missing: apt-get install python3 (or set PYTHON)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCKBOX_BIN="${LOCKBOX_BIN:-$REPO/target/release/lockbox}"
[ -x "$LOCKBOX_BIN" ] ||
    die "no lockbox binary at $LOCKBOX_BIN: run 'cargo build --release' in $REPO (or set LOCKBOX_BIN)"
LOCKBOX_BIN="$(cd "$(dirname "$LOCKBOX_BIN")" && pwd -P)/$(basename "$LOCKBOX_BIN")"
SYNCTHING="${SYNCTHING:-syncthing}"
if [ "$SYNCTHING_WANTED" = 1 ] && ! command -v "$SYNCTHING" >/dev/null; then
    log "syncthing not found: the Syncthing anchor is skipped (apt-get install syncthing)"
    SYNCTHING_WANTED=0
fi

BASE="${BENCH_DIR:-/var/tmp}"
mkdir -p "$BASE"
WORK="$(mktemp -d "$BASE/lockbox-mesh.XXXX")"
WORK="$(cd "$WORK" && pwd -P)"
RES="$WORK/results.jsonl"     # one JSON object per measured run
: >"$RES"

# ------------------------------------------------------------------ cleanup
PY_PID=""         # a long-running python step, run in the background so that
                  # INT/TERM are handled at once (bash runs traps only
                  # between foreground commands)
pyrun() { local rc=0; "$PYTHON" "$PY" "$@" & PY_PID=$!; wait "$PY_PID" || rc=$?; PY_PID=""; return "$rc"; }
HOMES=()          # every envoy HOME whose agent may run
ST_PIDS=()        # syncthing processes
is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/self/mounts; }
agent_pid() { tr -dc '0-9' <"$1/.lockbox/agent.lock" 2>/dev/null || true; }

unmount() {   # unmount a FUSE mount point if mounted, politely first
    local m="$1" i
    is_mounted "$m" || return 0
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || true
    for i in $(seq 50); do is_mounted "$m" || return 0; sleep 0.1; done
    log "unmount of $m is stuck: lazy unmount"
    fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}

stop_envoy() {  # lockbox stop; if that fails, signal the agent; then unmount
    local h="$1" pid
    pid="$(agent_pid "$h")"
    if ! timeout 120 env HOME="$h" "$LOCKBOX_BIN" stop >/dev/null 2>"$WORK/stop.err"; then
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "cleanup: lockbox stop failed for $h: $(tail -n 2 "$WORK/stop.err" | tr '\n' ' '); SIGTERM to pid $pid"
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && { log "cleanup: SIGKILL to pid $pid"; kill -KILL "$pid"; }
        fi
    fi
    unmount "$h/lockbox"
}

CLEANED=0
cleanup() {
    local rc=$? h p
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    set +e
    if [ -n "$PY_PID" ]; then kill -TERM "$PY_PID" 2>/dev/null; wait "$PY_PID" 2>/dev/null; fi
    for p in "${ST_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in "${ST_PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ ${#HOMES[@]} -gt 0 ]; then
        log "cleanup: lockbox stop on ${#HOMES[@]} envoys"
        for h in "${HOMES[@]}"; do stop_envoy "$h" & done
        wait
    fi
    if [ -n "$KEEP_LOGS" ]; then
        mkdir -p "$KEEP_LOGS"
        for h in "${HOMES[@]}"; do
            cp "$h/.lockbox/agent.log" "$KEEP_LOGS/$(basename "$(dirname "$h")")-$(basename "$h").agent.log" 2>/dev/null
        done
        cp "$WORK"/syncthing/*.log "$KEEP_LOGS/" 2>/dev/null
        cp "$RES" "$KEEP_LOGS/" 2>/dev/null
        log "cleanup: logs copied to $KEEP_LOGS"
    fi
    if awk -v p="$WORK/" 'index($2, p) == 1 { f = 1 } END { exit !f }' /proc/self/mounts; then
        log "cleanup: something is still mounted under $WORK; NOT removing it (unmount, then rm -rf $WORK)"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------- python part
PY="$WORK/mesh.py"
cat >"$PY" <<'PYEOF'
import hashlib, json, os, socket, subprocess, sys, threading, time

POLL = 0.001          # poll interval on the receiving mounts, 4 KiB files
POLL_BIG = 0.001      # the same for 100 MiB files (10 ms made no measurable difference)
RUN_TIMEOUT = 120.0   # a run that has not arrived by then is recorded as lost
HZ = os.sysconf("SC_CLK_TCK")

def log(msg):
    sys.stderr.write("[mesh %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()

def ports(n):
    """n loopback ports that are free now (all bound at once, so distinct)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()

def status(binary, home):
    try:
        out = subprocess.run([binary, "status", "--json"], env=dict(os.environ, HOME=home),
                             capture_output=True, timeout=30).stdout
        return json.loads(out)
    except (subprocess.TimeoutExpired, ValueError):
        return None

def ready(binary, timeout, homes):
    """Until every envoy lists all envoys as recipients and all others as live peers."""
    n = len(homes)
    t0 = time.monotonic()
    while True:
        missing = []
        for h in homes:
            s = status(binary, h)
            rec = len(s.get("recipients") or []) if s else 0
            live = sum(1 for p in (s.get("peers") or []) if p.get("state") == "live") if s else 0
            if rec != n or live != n - 1:
                missing.append("%s (recipients %d/%d, live peers %d/%d)" % (os.path.basename(h), rec, n, live, n - 1))
        if not missing:
            print("%.1f" % (time.monotonic() - t0))
            return
        if time.monotonic() - t0 > timeout:
            sys.exit("not ready after %d s: %s" % (timeout, "; ".join(missing)))
        time.sleep(0.2)

def ticks(pids):
    t = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                s = f.read()
        except OSError:
            continue
        fields = s.rsplit(")", 1)[1].split()
        t += int(fields[11]) + int(fields[12])
    return t

def machine_ticks():
    """(busy, total) clock ticks of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)

def wait_idle(pids, window=0.5, limit=30.0):
    """Until the processes used at most one clock tick in `window` seconds."""
    t0 = time.monotonic()
    prev = ticks(pids)
    while time.monotonic() - t0 < limit:
        time.sleep(window)
        cur = ticks(pids)
        if cur - prev <= 1:
            return True
        prev = cur
    log("warning: pids %s still busy after %.0f s" % (pids, limit))
    return False

def content(size, seed):
    # Random bytes (not compressible, not shared between runs), made quickly.
    if size <= 1 << 20:
        return os.urandom(size)
    block = os.urandom(1 << 20)
    parts = []
    for i in range(size >> 20):
        parts.append(hashlib.sha256(b"%d-%d" % (seed, i)).digest() + block[32:])
    data = b"".join(parts)
    return data + os.urandom(size - len(data))

def sha256_file(path, size):
    """Hash of the file read through the mount, or None if not (yet) there."""
    h = hashlib.sha256()
    n = 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
    finally:
        os.close(fd)
    return h.hexdigest() if n == size else "short:%d" % n

class Watcher(threading.Thread):
    """Polls one receiving mount for NAME until its content hash matches.

    visible: first time stat showed the full size (big files) or the open
    succeeded (small files). read: time the byte-identical read completed.
    Both in seconds after the writer's close(2) returned."""
    def __init__(self, path, size, want, go, pid):
        super().__init__(daemon=True)
        self.path, self.size, self.want, self.go, self.pid = path, size, want, go, pid
        self.visible = self.read = None
        self.polls = 0
        self.cpu0 = self.cpu_visible = None
        self.mismatch = 0
        self.error = None
        self.start_at = None

    def run(self):
        self.go.wait()
        t0 = self.start_at
        big = self.size > (1 << 20)
        poll = POLL_BIG if big else POLL
        deadline = t0 + RUN_TIMEOUT
        while time.monotonic() < deadline:
            self.polls += 1
            try:
                if big:
                    try:
                        st = os.stat(self.path)
                    except FileNotFoundError:
                        time.sleep(poll)
                        continue
                    if st.st_size != self.size:
                        time.sleep(poll)
                        continue
                    if self.visible is None:
                        self.visible = time.monotonic() - t0
                        self.cpu_visible = (ticks([self.pid]) - self.cpu0) / HZ
                got = sha256_file(self.path, self.size)
                if got is None:
                    time.sleep(poll)
                    continue
                if self.visible is None:
                    self.visible = time.monotonic() - t0
                if got == self.want:
                    self.read = time.monotonic() - t0
                    return
                self.mismatch += 1
            except OSError as e:
                self.error = str(e)
            time.sleep(poll)

def one_run(src, dsts, name, size, seed, pids):
    """Write NAME through src, then wait until every dst reads it back."""
    data = content(size, seed)
    want = hashlib.sha256(data).hexdigest()
    wait_idle(pids)
    go = threading.Event()
    ws = [Watcher(os.path.join(d, name), size, want, go, p) for d, p in zip(dsts, pids[1:])]
    for w in ws:
        w.start()
    path = os.path.join(src, name)
    tw = time.monotonic()
    self_cpu0 = sum(os.times()[:2])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        off = 0
        while off < size:
            off += os.write(fd, view[off:off + (1 << 20)])
    finally:
        os.close(fd)
    t0 = time.monotonic()          # the clock starts when close(2) has returned
    cpu0 = [ticks([p]) for p in pids]
    m0 = machine_ticks()
    for w, c in zip(ws, cpu0[1:]):
        w.start_at, w.cpu0 = t0, c
    go.set()
    for w in ws:
        w.join()
    cpu = [(ticks([p]) - c) / HZ for p, c in zip(pids, cpu0)]
    m1 = machine_ticks()
    busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    others = max(0.0, (m1[0] - m0[0]) / HZ - sum(cpu) - sum(os.times()[:2]) + self_cpu0)
    r = {"write_close": t0 - tw, "cpu_sender": cpu[0], "cpu_receivers": sum(cpu[1:]),
         "machine_busy": busy, "cpu_others": others,
         "visible": [w.visible for w in ws], "read": [w.read for w in ws],
         "polls": [w.polls for w in ws], "cpu_visible": [w.cpu_visible for w in ws],
         "mismatch": sum(w.mismatch for w in ws),
         "errors": [w.error for w in ws if w.error]}
    r["all_read"] = max(r["read"]) if all(x is not None for x in r["read"]) else None
    r["all_visible"] = max(r["visible"]) if all(x is not None for x in r["visible"]) else None
    return r

def remove(src, dsts, name, timeout=60.0):
    """rm NAME on src, then wait until it is gone on every dst."""
    os.unlink(os.path.join(src, name))
    t0 = time.monotonic()
    for d in dsts:
        p = os.path.join(d, name)
        while os.path.exists(p):
            if time.monotonic() - t0 > timeout:
                log("warning: %s still exists %.0f s after the delete on %s" % (p, timeout, src))
                return False
            time.sleep(0.01)
    return True

def run_series(spec_json):
    """Runs described by a JSON spec; appends one JSON line per run to spec.out.

    spec: {"out": FILE, "kind": label, "size": bytes, "runs": n, "delete": bool,
           "meshes": [{"label": .., "src": mount, "dsts": [mounts], "pids": [..]}]}
    With several meshes, the runs are interleaved (mesh 1 run 1, mesh 2 run 1, ...)
    so that load drift on the machine hits all of them alike."""
    spec = json.loads(spec_json)
    with open(spec["out"], "a") as out:
        for i in range(spec["runs"]):
            for m in spec["meshes"]:
                name = "%s-%s-%03d-%s" % (spec["kind"], m["label"], i, os.urandom(4).hex())
                r = one_run(m["src"], m["dsts"], name, spec["size"], i, m["pids"])
                r.update(kind=spec["kind"], mesh=m["label"], run=i, peers=len(m["dsts"]))
                out.write(json.dumps(r) + "\n")
                out.flush()
                if r["all_read"] is None:
                    log("%s %s run %d: NOT received within %.0f s (visible %s, read %s, mismatches %d, errors %s)" % (
                        spec["kind"], m["label"], i + 1, RUN_TIMEOUT, r["visible"], r["read"], r["mismatch"], r["errors"]))
                else:
                    log("%s %s run %d/%d: %.1f ms (write+close %.1f ms)" % (
                        spec["kind"], m["label"], i + 1, spec["runs"], r["all_read"] * 1e3, r["write_close"] * 1e3))
                if spec.get("delete"):
                    remove(m["src"], m["dsts"], name)

# ---------------------------------------------------------------- Syncthing
def st_series(spec_json):
    """The 4 KiB workload between two Syncthing folders (plain directories)."""
    spec = json.loads(spec_json)
    with open(spec["out"], "a") as out:
        for i in range(spec["runs"]):
            name = "st-%03d-%s" % (i, os.urandom(4).hex())
            r = one_run(spec["src"], [spec["dst"]], name, spec["size"], i, spec["pids"])
            r.update(kind="syncthing", mesh="syncthing", run=i, peers=1)
            out.write(json.dumps(r) + "\n")
            out.flush()
            if r["all_read"] is None:
                log("syncthing run %d: NOT received within %.0f s" % (i + 1, RUN_TIMEOUT))
            else:
                log("syncthing run %d/%d: %.1f ms" % (i + 1, spec["runs"], r["all_read"] * 1e3))

def st_config(path, me, peer, folder, gui_port, listen_port, peer_port, folder_id):
    """Edit a generated config.xml: loopback only, one peer, one fast folder."""
    import xml.etree.ElementTree as ET
    tree = ET.parse(path)
    root = tree.getroot()
    for f in root.findall("folder"):
        root.remove(f)
    for d in root.findall("device"):
        if d.get("id") != me:
            root.remove(d)
    f = ET.SubElement(root, "folder", {
        "id": folder_id, "label": folder_id, "path": folder, "type": "sendreceive",
        "rescanIntervalS": "3600", "fsWatcherEnabled": "true", "fsWatcherDelayS": "1",
        "ignorePerms": "true", "autoNormalize": "true"})
    ET.SubElement(f, "device", {"id": me})
    ET.SubElement(f, "device", {"id": peer})
    ET.SubElement(f, "minDiskFree", {"unit": "%"}).text = "1"
    ET.SubElement(f, "markerName").text = ".stfolder"
    d = ET.SubElement(root, "device", {"id": peer, "name": "peer", "compression": "never",
                                       "introducer": "false", "autoAcceptFolders": "false"})
    ET.SubElement(d, "address").text = "tcp://127.0.0.1:%d" % peer_port
    gui = root.find("gui")
    gui.set("enabled", "true")
    gui.set("tls", "false")
    gui.find("address").text = "127.0.0.1:%d" % gui_port
    o = root.find("options")
    def opt(k, v):
        for e in o.findall(k):
            o.remove(e)
        ET.SubElement(o, k).text = v
    opt("listenAddress", "tcp://127.0.0.1:%d" % listen_port)
    opt("globalAnnounceEnabled", "false")
    opt("localAnnounceEnabled", "false")
    opt("relaysEnabled", "false")
    opt("natEnabled", "false")
    opt("urAccepted", "-1")
    opt("autoUpgradeIntervalH", "0")
    opt("startBrowser", "false")
    opt("crashReportingEnabled", "false")
    opt("announceLANAddresses", "false")
    opt("setLowPriority", "false")
    tree.write(path)
    print(root.find("gui").findtext("apikey"))

def st_api(port, key, path):
    import urllib.request
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())

def st_ready(timeout, *args):
    """Until both instances see each other connected and the folder idle."""
    a = args
    insts = [(int(a[i]), a[i + 1], a[i + 2]) for i in range(0, len(a), 3)]  # port, key, peer id
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        ok = True
        for port, key, peer in insts:
            try:
                c = st_api(port, key, "/rest/system/connections")["connections"]
                f = st_api(port, key, "/rest/db/status?folder=bench")
                if not c.get(peer, {}).get("connected") or f.get("state") != "idle":
                    ok = False
                    last = "port %d: connected=%s folder=%s" % (port, c.get(peer, {}).get("connected"), f.get("state"))
            except Exception as e:
                ok = False
                last = "port %d: %s" % (port, e)
        if ok:
            print("%.1f" % (time.monotonic() - t0))
            return
        time.sleep(0.2)
    sys.exit("syncthing not ready after %d s: %s" % (timeout, last))

# ------------------------------------------------------------------- table
def pct(xs, p):
    """Nearest-rank percentile of a sorted list."""
    import math
    k = max(1, math.ceil(p / 100.0 * len(xs)))
    return xs[k - 1]

def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2

def table(res, out, syncthing_note):
    R = [json.loads(l) for l in open(res) if l.strip()]
    L = []
    def ms(x):
        return "%.1f" % (x * 1e3) if x < 10 else "%.0f" % (x * 1e3)
    def lat_row(label, rs, key, target=None):
        ok = [r[key] for r in rs if r[key] is not None]
        lost = len(rs) - len(ok)
        xs = sorted(ok)
        if not xs:
            return "| %s | %d | %d | – | – | – | – | %s |" % (label, len(rs), lost, "not measured" if target else "")
        p50 = pct(xs, 50)
        mark = ""
        if target is not None:
            mark = "p50 ≤ %d ms: %s" % (target * 1e3, "ok" if p50 <= target and not lost else "**MISS**")
        return "| %s | %d | %d | %s | %s | %s | %s | %s |" % (
            label, len(rs), lost, ms(p50), ms(pct(xs, 95)), ms(xs[0]), ms(xs[-1]), mark)
    small = [r for r in R if r["kind"] == "small"]
    big = [r for r in R if r["kind"] == "big"]
    st = [r for r in R if r["kind"] == "syncthing"]
    L.append("### Propagation latency, 2 envoys (A → B), ms from close(2) on A")
    L.append("")
    L.append("| workload | runs | lost | p50 | p95 | min | max | target |")
    L.append("|---|--:|--:|--:|--:|--:|--:|---|")
    if small:
        L.append(lat_row("lockbox 4 KiB: read back on B, byte-identical", small, "all_read", 0.050))
    if big:
        L.append(lat_row("lockbox 100 MiB: read back on B, byte-identical", big, "all_read"))
        L.append(lat_row("lockbox 100 MiB: full size visible on B (stat)", big, "all_visible"))
    if st:
        L.append(lat_row("Syncthing 4 KiB (fsWatcherDelayS=1): read back on B", st, "all_read"))
    elif syncthing_note:
        L.append("| Syncthing 4 KiB | – | – | – | – | – | – | %s |" % syncthing_note)
    L.append("")
    for lab, rs in (("4 KiB", small), ("100 MiB", big)):
        if rs:
            xs = sorted(r["write_close"] for r in rs)
            L.append("Write on A (open to close returned), %s: median %s ms, max %s ms." % (
                lab, ms(median(xs)), ms(xs[-1])))
    L.append("")
    fan = [r for r in R if r["kind"] == "fanout"]
    if fan:
        L.append("### Fan-out of 100 MiB: 1 peer (2 envoys) vs 4 peers (5 envoys), ms from close(2) on A")
        L.append("")
        L.append("| measurement | 1 peer | 4 peers | 4 peers / 1 peer | target |")
        L.append("|---|--:|--:|--:|---|")
        by = {}
        for r in fan:
            by.setdefault(r["peers"], []).append(r)
        one, four = by.get(1, []), by.get(4, [])
        for key, label, target in (("all_read", "median, every peer read back byte-identical", 1.5),
                                   ("all_visible", "median, every peer shows the full size (stat)", None)):
            a = [r[key] for r in one if r[key] is not None]
            b = [r[key] for r in four if r[key] is not None]
            lost = (len(one) - len(a)) + (len(four) - len(b))
            if a and b:
                ra = median(b) / median(a)
                mark = ""
                if target:
                    mark = "≤ %.1f×: %s" % (target, "ok" if ra <= target and not lost else "**MISS**")
                L.append("| %s | %s | %s | %.2f | %s |" % (label, ms(median(a)), ms(median(b)), ra, mark))
            else:
                L.append("| %s | – | – | – | not measured |" % label)
        for r in fan:
            r["cpu_recv_visible"] = sum(x for x in r["cpu_visible"] if x is not None)
        for key, label in (("cpu_sender", "median CPU time of the sending agent, close to last read (s)"),
                           ("cpu_receivers", "median CPU time of all receiving agents together, same span (s)"),
                           ("cpu_recv_visible", "median CPU time of all receiving agents together, "
                            "close until each shows the full size (s)"),
                           ("cpu_others", "median CPU time of everything else (kernel threads such as writeback, "
                            "other processes), close to last read (s)")):
            a, b = [r[key] for r in one], [r[key] for r in four]
            if a and b and median(a) > 0:
                L.append("| %s | %.2f | %.2f | %.2f | |" % (label, median(a), median(b), median(b) / median(a)))
        a, b = [r["machine_busy"] for r in one], [r["machine_busy"] for r in four]
        if a and b:
            L.append("| median share of both cores busy, close to last read | %.0f %% | %.0f %% | | |" % (
                100 * median(a), 100 * median(b)))
        L.append("")
        L.append("Every repetition, in run order (ms; read back on the last peer / per peer):")
        L.append("")
        for r in fan:
            per = ", ".join(ms(x) if x is not None else "lost" for x in r["read"])
            L.append("- %d peer%s, rep %d: %s (%s)" % (
                r["peers"], "" if r["peers"] == 1 else "s", r["run"] + 1,
                ms(r["all_read"]) if r["all_read"] is not None else "LOST", per))
        L.append("")
    bad = [r for r in R if r["all_read"] is None or r["mismatch"] or r["errors"]]
    if bad:
        L.append("**%d run(s) lost, mismatched or failed:**" % len(bad))
        L.append("")
        for r in bad:
            L.append("- %s %s run %d: read %s, mismatches %d, errors %s" % (
                r["kind"], r["mesh"], r["run"] + 1, r["read"], r["mismatch"], r["errors"]))
        L.append("")
    text = "\n".join(L)
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")
    return 1 if bad else 0

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        ports(int(args[0]))
    elif cmd == "ready":
        ready(args[0], int(args[1]), args[2:])
    elif cmd == "series":
        run_series(args[0])
    elif cmd == "st-series":
        st_series(args[0])
    elif cmd == "st-config":
        st_config(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6]), args[7])
    elif cmd == "st-ready":
        st_ready(int(args[0]), *args[1:])
    elif cmd == "table":
        sys.exit(table(args[0], args[1], args[2] if len(args) > 2 else ""))
    else:
        sys.exit("unknown command " + cmd)
PYEOF

# ------------------------------------------------------------------ meshes
lb() { local h="$1"; shift; HOME="$h" "$LOCKBOX_BIN" "$@"; }
lb_fail() {  # a setup step failed: show the envoy's log, then stop
    local h="$1"
    log "$2"
    [ -f "$h/.lockbox/agent.log" ] && { log "last lines of $h/.lockbox/agent.log:"; tail -n 20 "$h/.lockbox/agent.log" >&2; }
    die "$2"
}

# mesh_up LABEL N: N envoys on loopback under $WORK/LABEL, each with its own
# HOME, fleet certificate, peer port and mount, all unlocked and all seeing
# each other (recipients and live peers). Sets MESH_HOMES and MESH_PIDS.
mesh_up() {
    local label="$1" n="$2" dir="$WORK/$1" i j h peers took pid
    local -a p
    mkdir -p "$dir"
    echo "mesh-bench-$label-$RANDOM$RANDOM" >"$dir/passphrase"; chmod 600 "$dir/passphrase"
    lb "$dir" fleet init --out "$dir/fleet-ca" >>"$WORK/lockbox.out" 2>&1 ||
        die "fleet init failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
    read -r -a p <<<"$("$PYTHON" "$PY" ports "$n")"
    MESH_HOMES=()
    for i in $(seq 0 $((n - 1))); do
        h="$dir/e$i"
        mkdir -p "$h/.lockbox"; chmod 700 "$h" "$h/.lockbox"
        peers=""
        for j in $(seq 0 $((n - 1))); do
            [ "$j" = "$i" ] && continue
            peers="${peers:+$peers, }\"127.0.0.1:${p[$j]}\""
        done
        printf 'multicast: off\nlisten: 127.0.0.1\npeer_port: %s\ncross_subnet_peers: [%s]\nannounce_interval: %s\nstale_after: %s\n' \
            "${p[$i]}" "$peers" "$ANNOUNCE_INTERVAL" "$STALE_AFTER" >"$h/.lockbox/config.yaml"
        chmod 600 "$h/.lockbox/config.yaml"
        lb "$h" fleet issue --ca "$dir/fleet-ca" --envoy "$label-e$i" --host 127.0.0.1 --out "$h/.lockbox/tls" \
            >>"$WORK/lockbox.out" 2>&1 || lb_fail "$h" "fleet issue failed for $h"
        lb "$h" init --passphrase-file "$dir/passphrase" --envoy "$label-e$i" >>"$WORK/lockbox.out" 2>&1 ||
            lb_fail "$h" "init failed for $h: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
        MESH_HOMES+=("$h")
    done
    for h in "${MESH_HOMES[@]}"; do
        HOMES+=("$h")
        lb "$h" unlock --passphrase-file "$dir/passphrase" >>"$WORK/lockbox.out" 2>&1 ||
            lb_fail "$h" "unlock failed for $h: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
        for _ in $(seq 300); do is_mounted "$h/lockbox" && break; sleep 0.1; done
        is_mounted "$h/lockbox" || lb_fail "$h" "unlock returned but $h/lockbox is not mounted"
    done
    took="$("$PYTHON" "$PY" ready "$LOCKBOX_BIN" 120 "${MESH_HOMES[@]}")" ||
        lb_fail "${MESH_HOMES[0]}" "mesh $label ($n envoys) did not form"
    MESH_PIDS=()
    for h in "${MESH_HOMES[@]}"; do
        pid="$(agent_pid "$h")"
        [ -n "$pid" ] && [ -d "/proc/$pid" ] || lb_fail "$h" "no live agent pid in $h/.lockbox/agent.lock"
        MESH_PIDS+=("$pid")
    done
    log "mesh $label: $n envoys unlocked and connected ($took s after the last unlock)"
}

json_list() {  # json_list a b c -> ["a","b","c"] (paths and numbers without quotes or backslashes)
    local out="" x
    for x in "$@"; do out="${out:+$out,}\"$x\""; done
    echo "[$out]"
}
json_nums() { local IFS=,; echo "[$*]"; }

# ------------------------------------------------------------------- syncthing
# Two Syncthing instances with their own homes, GUI/API and listen ports on
# 127.0.0.1, no discovery, relays or NAT; one shared folder with the file
# system watcher on (delay 1 s, Syncthing's minimum) and no periodic rescan.
SYNCTHING_NOTE=""
syncthing_bench() {
    local d="$WORK/syncthing" i id key ids=() keys=() took kids work=()
    local -a p
    read -r -a p <<<"$("$PYTHON" "$PY" ports 4)"   # gui0 gui1 listen0 listen1
    for i in 0 1; do
        mkdir -p "$d/home$i" "$d/folder$i"
        if ! "$SYNCTHING" generate --home="$d/home$i" --no-default-folder >"$d/gen$i.log" 2>&1; then
            SYNCTHING_NOTE="syncthing generate failed: $(tail -n 1 "$d/gen$i.log")"; return 1
        fi
        id="$("$SYNCTHING" --home="$d/home$i" --device-id 2>/dev/null)" ||
            id="$(grep -o 'Device ID: [A-Z0-9-]*' "$d/gen$i.log" | head -n 1 | cut -d' ' -f3)"
        [ -n "$id" ] || { SYNCTHING_NOTE="cannot read the device id of instance $i"; return 1; }
        ids+=("$id")
    done
    for i in 0 1; do
        key="$("$PYTHON" "$PY" st-config "$d/home$i/config.xml" "${ids[$i]}" "${ids[$((1 - i))]}" "$d/folder$i" \
                   "${p[$i]}" "${p[$((2 + i))]}" "${p[$((3 - i))]}" bench)" ||
            { SYNCTHING_NOTE="cannot edit config.xml of instance $i"; return 1; }
        keys+=("$key")
    done
    for i in 0 1; do
        STNODEFAULTFOLDER=1 STNOUPGRADE=1 "$SYNCTHING" serve --home="$d/home$i" --no-browser --no-restart \
            --no-upgrade --logflags=3 >"$d/serve$i.log" 2>&1 &
        ST_PIDS+=($!)
    done
    if ! took="$("$PYTHON" "$PY" st-ready 120 "${p[0]}" "${keys[0]}" "${ids[1]}" "${p[1]}" "${keys[1]}" "${ids[0]}")"; then
        SYNCTHING_NOTE="the two instances did not connect within 120 s"
        tail -n 10 "$d/serve0.log" >&2
        return 1
    fi
    log "syncthing: two instances connected, folder idle ($took s)"
    # `syncthing serve` runs a monitor process that starts the real one as
    # its child: measure (and, at cleanup, also stop) the children.
    for i in 0 1; do
        kids=($(cat "/proc/${ST_PIDS[$i]}"/task/*/children 2>/dev/null))
        [ ${#kids[@]} -gt 0 ] || kids=("${ST_PIDS[$i]}")
        work+=("${kids[0]}")
        ST_PIDS+=("${kids[@]}")
    done
    pyrun st-series "{\"out\": \"$RES\", \"size\": $SMALL_SIZE, \"runs\": $ST_RUNS,
        \"src\": \"$d/folder0\", \"dst\": \"$d/folder1\", \"pids\": $(json_nums "${work[@]}")}" ||
        { SYNCTHING_NOTE="the Syncthing runs failed"; return 1; }
}

# ------------------------------------------------------------------- main
{
    echo "# lockbox mesh benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- command: bash tests/bench/mesh.sh $ORIG_ARGS"
    echo "- runs: $SMALL_RUNS × 4 KiB, $BIG_RUNS × 100 MiB (2 envoys); fan-out $FANOUT_REPS repetitions of 1 peer vs $FANOUT_PEERS peers, interleaved"
    echo "- envoys: loopback (127.0.0.1), multicast off, cross_subnet_peers, announce_interval $ANNOUNCE_INTERVAL, stale_after $STALE_AFTER; poll interval 1 ms"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- homes: $WORK ($(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }'))"
    echo "- lockbox: $LOCKBOX_BIN ($("$LOCKBOX_BIN" --version 2>/dev/null), file dated $(date -u -r "$LOCKBOX_BIN" '+%Y-%m-%d %H:%M UTC'); repo HEAD at run time $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    if [ "$SYNCTHING_WANTED" = 1 ]; then echo "- syncthing: $("$SYNCTHING" --version 2>/dev/null | head -n 1)"; fi
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/header.md"

log "== mesh of 2 envoys (A, B) and mesh of $((FANOUT_PEERS + 1)) envoys, side by side"
mesh_up m2 2
M2_HOMES=("${MESH_HOMES[@]}"); M2_PIDS=("${MESH_PIDS[@]}")
mesh_up m5 $((FANOUT_PEERS + 1))
M5_HOMES=("${MESH_HOMES[@]}"); M5_PIDS=("${MESH_PIDS[@]}")

mesh_spec() {  # mesh_spec LABEL HOME... : JSON for one mesh (first HOME writes)
    local label="$1"; shift
    local src="$1/lockbox" dsts=() h
    shift
    for h in "$@"; do dsts+=("$h/lockbox"); done
    echo "{\"label\": \"$label\", \"src\": \"$src\", \"dsts\": $(json_list "${dsts[@]}"), \"pids\": PIDS}"
}
M2_SPEC="$(mesh_spec m2 "${M2_HOMES[@]}")"; M2_SPEC="${M2_SPEC/PIDS/$(json_nums "${M2_PIDS[@]}")}"
M5_SPEC="$(mesh_spec m5 "${M5_HOMES[@]}")"; M5_SPEC="${M5_SPEC/PIDS/$(json_nums "${M5_PIDS[@]}")}"

log "== propagation latency, 4 KiB × $SMALL_RUNS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
pyrun series "{\"out\": \"$RES\", \"kind\": \"small\", \"size\": $SMALL_SIZE, \"runs\": $SMALL_RUNS,
    \"delete\": false, \"meshes\": [$M2_SPEC]}"
log "== propagation latency, 100 MiB × $BIG_RUNS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
pyrun series "{\"out\": \"$RES\", \"kind\": \"big\", \"size\": $BIG_SIZE, \"runs\": $BIG_RUNS,
    \"delete\": true, \"meshes\": [$M2_SPEC]}"
log "== fan-out of 100 MiB, 1 peer vs $FANOUT_PEERS peers × $FANOUT_REPS (interleaved) (load average $(cut -d' ' -f1-3 /proc/loadavg))"
pyrun series "{\"out\": \"$RES\", \"kind\": \"fanout\", \"size\": $BIG_SIZE, \"runs\": $FANOUT_REPS,
    \"delete\": true, \"meshes\": [$M2_SPEC, $M5_SPEC]}"

if [ "$SYNCTHING_WANTED" = 1 ]; then
    ST_RUNS="$SMALL_RUNS"
    log "== Syncthing anchor, 4 KiB × $ST_RUNS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    syncthing_bench || log "syncthing skipped: $SYNCTHING_NOTE"
else
    SYNCTHING_NOTE="not run (--no-syncthing or not installed)"
fi

{
    cat "$WORK/header.md"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
} >"$WORK/report.md"
cat "$WORK/report.md"
[ -n "$OUT" ] && cat "$WORK/report.md" >"$OUT"
rc=0
"$PYTHON" "$PY" table "$RES" "$OUT" "$SYNCTHING_NOTE" || rc=$?
if [ "$rc" != 0 ]; then
    log "some runs were lost or failed (see the table); agent logs: \$HOME/.lockbox/agent.log of each envoy"
    for h in "${HOMES[@]}"; do
        grep -hE ' (WARN|ERROR) ' "$h/.lockbox/agent.log" 2>/dev/null | tail -n 5 | sed "s|^|  $(basename "$(dirname "$h")")/$(basename "$h"): |" >&2
    done
    exit 1
fi
