#!/usr/bin/env bash
# A/B of two lockbox binaries on the rows this host's noise blurs most:
# the binaries take turns, so a change is compared within one run instead
# of across runs (see docs/benchmarks.md, "Latest run").
#
#   sudo bash tests/bench/ab.sh OLD_BIN NEW_BIN [REPS]
#   AB_SMALL_ONLY=1 sudo bash tests/bench/ab.sh OLD_BIN NEW_BIN [REPS]
#
# AB_SMALL_ONLY=1 runs only the small-file rows (about 20 s a turn instead
# of a minute), for the many turns those noisy rows need.
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
# The rows themselves are the mount benchmark's (tests/bench/bench.py).
ROWS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bench.py"
rows() {  # bench.py's "name<TAB>value" lines as "name=value/s" on one line
    "$PYTHON" "$ROWS" "$@" | awk -F'\t' '{ printf "%s%s=%.0f/s", (NR > 1 ? " " : ""), $1, $2 } END { print "" }'
}

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
        if [ "${AB_SMALL_ONLY:-0}" = 1 ]; then
            echo "rep $rep $BIN: $(rows small "$mnt" 2000)"
            HOME="$HOME_DIR" timeout 120 "$BIN" stop >/dev/null
            HOME_DIR=""
            continue
        fi
        dd if=/dev/zero of="$mnt/big" bs=1M count=1024 conv=fsync 2>/dev/null
        drop
        seq="$(dd if="$mnt/big" of=/dev/null bs=1M 2>&1 | awk '/copied/ { print $(NF-1), $NF }')"
        drop
        rnd="$(rows rand "$mnt/big" 1000 20240601)"
        rm -f "$mnt/big"
        drop
        sml="$(rows small "$mnt" 2000)"
        echo "rep $rep $BIN: seq_read=$seq $rnd $sml"
        HOME="$HOME_DIR" timeout 120 "$BIN" stop >/dev/null
        HOME_DIR=""
    done
done
