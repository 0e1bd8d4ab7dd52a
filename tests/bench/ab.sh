#!/usr/bin/env bash
# A/B of two lockbox binaries on the rows this host's noise blurs most:
# the binaries take turns, so a change is compared within one run instead
# of across runs (see docs/benchmarks.md, "Latest run").
#
#   sudo bash tests/bench/ab.sh OLD_BIN NEW_BIN [REPS]
#
# Per turn: a fresh envoy (own HOME under $BENCH_DIR, default /var/tmp),
# unlocked; 1 GiB written by dd; cold sequential read (dd); 1000 cold
# random 4 KiB preads (the mount benchmark's seed); then 2000 × 4 KiB
# files created, stat'ed, read, renamed and deleted by one process. Root
# is needed to drop caches. Every agent is stopped, and its mount
# detached, on exit.

set -euo pipefail
export LC_ALL=C
[ $# -ge 2 ] || { echo "usage: sudo bash $0 OLD_BIN NEW_BIN [REPS]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "ab.sh: must run as root (drop_caches)" >&2; exit 1; }
BINS=("$1" "$2")
REPS="${3:-2}"
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "ab.sh: no binary at $b" >&2; exit 1; }; done
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/lockbox-ab.XXXX")"
HOME_DIR=""
BIN=""

cleanup() {
    if [ -n "$HOME_DIR" ]; then
        HOME="$HOME_DIR" timeout 120 "$BIN" stop >/dev/null 2>&1 || true
        mountpoint -q "$HOME_DIR/lockbox" && umount -l "$HOME_DIR/lockbox" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "bench passphrase" >"$WORK/pass"
chmod 600 "$WORK/pass"
cat >"$WORK/rows.py" <<'PY'
import os, random, sys, time

def rand(path, n=1000, seed=20240601):
    fd = os.open(path, os.O_RDONLY)
    blocks = os.fstat(fd).st_size // 4096
    rng = random.Random(seed)
    offs = [rng.randrange(blocks) * 4096 for _ in range(n)]
    t = time.perf_counter()
    for o in offs:
        if os.pread(fd, 4096, o) != bytes(4096):
            raise OSError("pread at %d: not the zeros written" % o)
    os.close(fd)
    return n / (time.perf_counter() - t)

def small(d, n=2000):
    data = os.urandom(4096)
    a = [os.path.join(d, "small-%06d" % i) for i in range(n)]
    b = [os.path.join(d, "moved-%06d" % i) for i in range(n)]
    r = {}
    t = time.perf_counter()
    for p in a:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
    r["create"] = n / (time.perf_counter() - t); t = time.perf_counter()
    for p in a:
        os.stat(p)
    r["stat"] = n / (time.perf_counter() - t); t = time.perf_counter()
    for p in a:
        fd = os.open(p, os.O_RDONLY)
        if os.read(fd, 4097) != data:
            raise OSError("read %s: wrong content" % p)
        os.close(fd)
    r["read"] = n / (time.perf_counter() - t); t = time.perf_counter()
    for x, y in zip(a, b):
        os.rename(x, y)
    r["rename"] = n / (time.perf_counter() - t); t = time.perf_counter()
    for p in b:
        os.unlink(p)
    r["delete"] = n / (time.perf_counter() - t)
    return r

if sys.argv[1] == "rand":
    print("random=%.0f/s" % rand(sys.argv[2]))
else:
    print(" ".join("%s=%.0f/s" % kv for kv in small(sys.argv[2]).items()))
PY

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

for rep in $(seq "$REPS"); do
    for BIN in "${BINS[@]}"; do
        HOME_DIR="$WORK/home"
        rm -rf "$HOME_DIR"
        mkdir -p "$HOME_DIR/.lockbox"
        printf 'multicast: off\npeer_port: 0\nlisten: 127.0.0.1\n' >"$HOME_DIR/.lockbox/config.yaml"
        HOME="$HOME_DIR" "$BIN" init --passphrase-file "$WORK/pass" --envoy ab >/dev/null
        HOME="$HOME_DIR" "$BIN" unlock --passphrase-file "$WORK/pass" >/dev/null
        mnt="$HOME_DIR/lockbox"
        dd if=/dev/zero of="$mnt/big" bs=1M count=1024 conv=fsync 2>/dev/null
        drop
        seq="$(dd if="$mnt/big" of=/dev/null bs=1M 2>&1 | awk '/copied/ { print $(NF-1), $NF }')"
        drop
        rnd="$("$PYTHON" "$WORK/rows.py" rand "$mnt/big")"
        rm -f "$mnt/big"
        drop
        sml="$("$PYTHON" "$WORK/rows.py" small "$mnt")"
        echo "rep $rep $BIN: seq_read=$seq $rnd $sml"
        HOME="$HOME_DIR" timeout 120 "$BIN" stop >/dev/null
        HOME_DIR=""
    done
done
