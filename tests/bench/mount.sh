#!/usr/bin/env bash
# Mount benchmark (see docs/benchmarks.md, "The mount benchmark"): the
# lockbox mount against gocryptfs (the anchor) and a plain directory (the
# limit), in one run, on the same disk.
#
#   sudo bash tests/bench/mount.sh                 # full run (1 GiB, 2000 files)
#   sudo bash tests/bench/mount.sh --quick         # fast check (256 MiB, 500 files)
#   sudo bash tests/bench/mount.sh --only plain,gocryptfs
#
# Environment:
#   BENCH_DIR    directory on the disk to test; a fresh lockbox-bench.XXXX
#                directory is made inside it and removed at exit
#                (default: /var/tmp)
#   LOCKBOX_BIN  the lockbox binary (default: target/release/lockbox of this
#                repository; build it first with `cargo build --release`)
#   PYTHON       python 3 interpreter (default: python3)
#
# Root is required: cold-cache rows drop the page cache through
# /proc/sys/vm/drop_caches. Results go to stdout (markdown tables) and, with
# --out FILE, also to FILE. Progress goes to stderr. See docs/benchmarks.md.

set -euo pipefail
ORIG_ARGS="$*"
export LC_ALL=C

usage() {
    cat <<'EOF'
usage: sudo bash tests/bench/mount.sh [--quick] [--only LIST] [--reps N] [--rounds N]
                                     [--recipients N] [--out FILE]

  --quick       256 MiB instead of 1 GiB, 500 instead of 2000 small files,
                2000 instead of 10000 files for the idle-RSS measurement
  --only LIST   comma-separated subset of: plain,gocryptfs,lockbox
  --reps N      repetitions of every row, the table shows the median
                (default 3; 1 with --quick)
  --rounds N    runs of the random-read and small-file rows within each
                repetition (default 5; 1 with --quick): they take a
                second or less each, so one run is mostly noise
  --recipients N  envoys in lockbox's circle (default 1): with N > 1, N - 1
                more envoys on loopback join it (their own agents, mounts
                and stores), so every file is sealed to N recipients and
                pushed to N - 1 peers, as in a real circle
  --out FILE    also write the result tables (markdown) to FILE
  -h, --help    this help

Environment: BENCH_DIR (default /var/tmp), LOCKBOX_BIN, PYTHON.
EOF
}

QUICK=0
REPS=""
ROUNDS=""
ONLY="plain,gocryptfs,lockbox"
OUT=""
RECIPIENTS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) [ $# -ge 2 ] || { echo "mount.sh: --only needs a list" >&2; exit 2; }
                ONLY="$2"; shift ;;
        --only=*) ONLY="${1#--only=}" ;;
        --reps) [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] ||
                    { echo "mount.sh: --reps needs a positive number" >&2; exit 2; }
                REPS="$2"; shift ;;
        --rounds) [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] ||
                    { echo "mount.sh: --rounds needs a positive number" >&2; exit 2; }
                ROUNDS="$2"; shift ;;
        --recipients) [ $# -ge 2 ] && [[ "$2" =~ ^[1-8]$ ]] ||
                    { echo "mount.sh: --recipients needs a number from 1 to 8" >&2; exit 2; }
                RECIPIENTS="$2"; shift ;;
        --out) [ $# -ge 2 ] || { echo "mount.sh: --out needs a file" >&2; exit 2; }
               OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "mount.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

TARGETS=()
IFS=',' read -r -a _only <<<"$ONLY"
for t in "${_only[@]}"; do
    case "$t" in
        plain|gocryptfs|lockbox) TARGETS+=("$t") ;;
        "") ;;
        *) echo "mount.sh: --only: unknown target '$t' (use plain,gocryptfs,lockbox)" >&2; exit 2 ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || { echo "mount.sh: --only selects no target" >&2; exit 2; }
want() { local t; for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

if [ "$QUICK" = 1 ]; then
    BIG_MIB=256; SMALL_FILES=500; RSS_FILES=2000; REPS="${REPS:-1}"; ROUNDS="${ROUNDS:-1}"
else
    BIG_MIB=1024; SMALL_FILES=2000; RSS_FILES=10000; REPS="${REPS:-3}"; ROUNDS="${ROUNDS:-5}"
fi
RANDOM_READS=1000
SEED=20240601
# Idle RSS is read after the daemon used no CPU for this long: lockbox
# gives its free heap back 2-4 s into an idle stretch (docs/design.md,
# "Memory").
RSS_IDLE_SECS=6

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'mount.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
[ "$(id -u)" = 0 ] || die "must run as root (cold-cache rows write /proc/sys/vm/drop_caches): sudo bash $0 $ORIG_ARGS"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python 3 is missing: apt-get install python3 (or set PYTHON)"
if want gocryptfs; then
    command -v gocryptfs >/dev/null ||
        die "gocryptfs is missing (the anchor): apt-get install gocryptfs   (or use --only plain,lockbox)"
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if want lockbox; then
    LOCKBOX_BIN="${LOCKBOX_BIN:-$REPO/target/release/lockbox}"
    [ -x "$LOCKBOX_BIN" ] ||
        die "no lockbox binary at $LOCKBOX_BIN: run 'cargo build --release' in $REPO (or set LOCKBOX_BIN)"
fi
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null ||
    die "cannot write /proc/sys/vm/drop_caches (read-only /proc in a container?): run on a host or a privileged container"

BASE="${BENCH_DIR:-/var/tmp}"
mkdir -p "$BASE"
WORK="$(mktemp -d "$BASE/lockbox-bench.XXXX")"
WORK="$(cd "$WORK" && pwd -P)"
RES="$WORK/results.tsv"       # target <TAB> key <TAB> value
: >"$RES"

# ------------------------------------------------------------------ cleanup
GC_CIPHER="$WORK/gocryptfs.cipher"
GC_MNT="$WORK/gocryptfs.mnt"
GC_PID=""
LB_HOME="$WORK/lockbox-home"
LB_MNT="$LB_HOME/lockbox"
LB_STARTED=0
PEER_HOMES=()   # the other envoys of the circle (--recipients)
SAMPLER_PID=""

is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/self/mounts; }
lb() { HOME="$LB_HOME" "$LOCKBOX_BIN" "$@"; }
lb_pid() { tr -dc '0-9' <"$LB_HOME/.lockbox/agent.lock" 2>/dev/null || true; }

unmount() {   # unmount a FUSE mount point if mounted, politely first
    local m="$1" i
    is_mounted "$m" || return 0
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || true
    for i in $(seq 50); do is_mounted "$m" || return 0; sleep 0.1; done
    log "unmount of $m is stuck: lazy unmount"
    fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}

CLEANED=0
cleanup() {
    local rc=$? pid
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    set +e
    if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; fi
    if [ "$LB_STARTED" = 1 ]; then
        pid="$(lb_pid)"
        log "cleanup: lockbox stop"
        if ! timeout 180 env HOME="$LB_HOME" "$LOCKBOX_BIN" stop >/dev/null 2>"$WORK/stop.err"; then
            log "cleanup: lockbox stop failed: $(tail -n 3 "$WORK/stop.err" | tr '\n' ' ')"
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                log "cleanup: SIGTERM to the agent (pid $pid)"
                kill -TERM "$pid" 2>/dev/null
                for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -0 "$pid" 2>/dev/null && { log "cleanup: SIGKILL to the agent (pid $pid)"; kill -KILL "$pid"; }
            fi
        fi
        unmount "$LB_MNT"
    fi
    for h in "${PEER_HOMES[@]}"; do
        log "cleanup: lockbox stop ($h)"
        timeout 180 env HOME="$h" "$LOCKBOX_BIN" stop >/dev/null 2>&1 || log "cleanup: stop of $h failed"
        unmount "$h/lockbox"
    done
    if is_mounted "$GC_MNT"; then log "cleanup: unmount gocryptfs"; unmount "$GC_MNT"; fi
    if [ -n "$GC_PID" ]; then
        for _ in $(seq 50); do kill -0 "$GC_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$GC_PID" 2>/dev/null && kill -TERM "$GC_PID" 2>/dev/null
        wait "$GC_PID" 2>/dev/null
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
PY="$REPO/tests/bench/bench.py"

# ---------------------------------------------------------------- helpers
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
settle() {  # before a row: every daemon idle, then cold caches
    local t pids=()
    for t in "${!TPID[@]}"; do [ -n "${TPID[$t]}" ] && pids+=("${TPID[$t]}"); done
    [ ${#pids[@]} -eq 0 ] || wait_idle "${pids[@]}" || true
    drop_caches
}
kib_of() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
cpu_ticks() {  # utime + stime of a pid
    local s f
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    s="${s##*) }"
    read -r -a f <<<"$s"
    echo $(( f[11] + f[12] ))
}
wait_idle() {  # until the pids used no CPU for IDLE_SECS (2) s in a row (max 120 s)
    local prev cur still=0 i p
    prev="$(for p in "$@"; do cpu_ticks "$p"; done)" || return 1
    for i in $(seq 120); do
        sleep 1
        cur="$(for p in "$@"; do cpu_ticks "$p"; done)" || return 1
        if [ "$cur" = "$prev" ]; then still=$((still + 1)); else still=0; fi
        prev="$cur"
        [ "$still" -ge "${IDLE_SECS:-2}" ] && return 0
    done
    log "warning: pid(s) $* still busy after 120 s"
}
dd_rate() {  # MB/s (10^6 bytes/s) from dd's summary line
    awk '/bytes/ && /copied/ {
            for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") secs = $(i-1)
            if (secs > 0) printf "%.1f\n", $1 / secs / 1e6
         }' "$1"
}

start_sampler() {  # max VmRSS of a pid, every 0.1 s, into a file
    local pid="$1" out="$2"
    ( max=0
      while kill -0 "$pid" 2>/dev/null; do
          v=""   # bash builtins only: no fork per sample
          { while read -r k n _; do [ "$k" = "VmRSS:" ] && { v="$n"; break; }; done <"/proc/$pid/status"; } 2>/dev/null || true
          [ -n "$v" ] && [ "$v" -gt "$max" ] && { max="$v"; echo "$max" >"$out"; }
          sleep 0.1
      done ) &
    SAMPLER_PID=$!
}
stop_sampler() {
    [ -n "$SAMPLER_PID" ] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# ------------------------------------------------------------ the targets
setup_plain() { mkdir -p "$WORK/plain"; DIR="$WORK/plain"; DPID=""; }
teardown_plain() { :; }

gc_mount() {
    mkdir -p "$GC_MNT"
    gocryptfs -q -fg -passfile "$WORK/gc.pass" "$GC_CIPHER" "$GC_MNT" >>"$WORK/gocryptfs.log" 2>&1 &
    GC_PID=$!
    local i
    for i in $(seq 300); do
        is_mounted "$GC_MNT" && { DPID="$GC_PID"; return 0; }
        kill -0 "$GC_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "gocryptfs did not mount: $(tail -n 5 "$WORK/gocryptfs.log" | tr '\n' ' ')"
}
gc_umount() {
    unmount "$GC_MNT"
    if [ -n "$GC_PID" ]; then wait "$GC_PID" 2>/dev/null || true; GC_PID=""; fi
}
setup_gocryptfs() {
    echo "bench passphrase" >"$WORK/gc.pass"; chmod 600 "$WORK/gc.pass"
    mkdir -p "$GC_CIPHER"
    gocryptfs -init -q -passfile "$WORK/gc.pass" "$GC_CIPHER" >>"$WORK/gocryptfs.log" 2>&1 ||
        die "gocryptfs -init failed: $(tail -n 5 "$WORK/gocryptfs.log" | tr '\n' ' ')"
    gc_mount
    DIR="$GC_MNT"
}
restart_gocryptfs() { gc_umount; gc_mount; }
teardown_gocryptfs() { gc_umount; }

lb_fail() {
    log "lockbox: $1"
    [ -f "$LB_HOME/.lockbox/agent.log" ] && tail -n 20 "$LB_HOME/.lockbox/agent.log" >&2
    die "lockbox: $1"
}
lb_unlock() {
    lb unlock --passphrase-file "$WORK/pass" >>"$WORK/lockbox.out" 2>&1 ||
        lb_fail "unlock failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
    LB_STARTED=1
    local i
    for i in $(seq 300); do is_mounted "$LB_MNT" && break; sleep 0.1; done
    is_mounted "$LB_MNT" || lb_fail "unlock returned but $LB_MNT is not mounted"
    DPID="$(lb_pid)"
    [ -n "$DPID" ] && [ -d "/proc/$DPID" ] || lb_fail "no live agent pid in $LB_HOME/.lockbox/agent.lock ('$DPID')"
}
lb_stop() {
    timeout 180 env HOME="$LB_HOME" "$LOCKBOX_BIN" stop >>"$WORK/lockbox.out" 2>&1 ||
        lb_fail "lockbox stop failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
    local i
    for i in $(seq 100); do is_mounted "$LB_MNT" || break; sleep 0.1; done
    is_mounted "$LB_MNT" && lb_fail "lockbox stop returned but $LB_MNT is still mounted"
    LB_STARTED=0
}
setup_lockbox() {
    mkdir -p "$LB_HOME/.lockbox"
    printf 'multicast: off\npeer_port: 0\nlisten: 127.0.0.1\n' >"$LB_HOME/.lockbox/config.yaml"
    echo "bench passphrase" >"$WORK/pass"; chmod 600 "$WORK/pass"
    [ "$RECIPIENTS" -gt 1 ] && setup_circle
    lb init --passphrase-file "$WORK/pass" --envoy bench >>"$WORK/lockbox.out" 2>&1 ||
        lb_fail "init failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
    lb_unlock
    [ "$RECIPIENTS" -gt 1 ] && wait_circle
    DIR="$LB_MNT"
}
setup_circle() {  # --recipients: the other envoys, each with a fleet certificate, all on loopback
    local i h ports others names
    mkdir -p "$WORK/fleet-home"
    HOME="$WORK/fleet-home" "$LOCKBOX_BIN" fleet init --out "$WORK/fleet" >>"$WORK/lockbox.out" 2>&1 ||
        lb_fail "fleet init failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
    read -r -a ports <<<"$("$PYTHON" -c "
import socket
socks = [socket.socket() for _ in range($RECIPIENTS)]
for s in socks: s.bind(('127.0.0.1', 0))
print(' '.join(str(s.getsockname()[1]) for s in socks))")"
    names=(bench)
    for i in $(seq 2 "$RECIPIENTS"); do names+=("peer$i"); done
    for i in $(seq 0 $((RECIPIENTS - 1))); do
        if [ "$i" = 0 ]; then h="$LB_HOME"; else h="$WORK/peer$((i + 1))-home"; PEER_HOMES+=("$h"); fi
        mkdir -p "$h/.lockbox"
        others="$(for j in $(seq 0 $((RECIPIENTS - 1))); do [ "$j" = "$i" ] || printf '"127.0.0.1:%s",' "${ports[$j]}"; done)"
        printf 'multicast: off\nlisten: 127.0.0.1\npeer_port: %s\ncross_subnet_peers: [%s]\n' \
            "${ports[$i]}" "${others%,}" >"$h/.lockbox/config.yaml"
        HOME="$h" "$LOCKBOX_BIN" fleet issue --ca "$WORK/fleet" --envoy "${names[$i]}" \
            --out "$h/.lockbox/tls" --host 127.0.0.1 >>"$WORK/lockbox.out" 2>&1 ||
            lb_fail "fleet issue for ${names[$i]} failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
        [ "$i" = 0 ] && continue
        HOME="$h" "$LOCKBOX_BIN" init --passphrase-file "$WORK/pass" --envoy "${names[$i]}" >>"$WORK/lockbox.out" 2>&1 ||
            lb_fail "init of ${names[$i]} failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
        HOME="$h" "$LOCKBOX_BIN" unlock --passphrase-file "$WORK/pass" >>"$WORK/lockbox.out" 2>&1 ||
            lb_fail "unlock of ${names[$i]} failed: $(tail -n 3 "$WORK/lockbox.out" | tr '\n' ' ')"
    done
}
wait_circle() {  # until the bench envoy seals to every envoy of the circle
    local i n=0
    for i in $(seq 600); do
        n="$(lb status --json 2>/dev/null | "$PYTHON" -c 'import json, sys; print(len(json.load(sys.stdin)["recipients"]))' 2>/dev/null || echo 0)"
        [ "$n" = "$RECIPIENTS" ] && { log "lockbox: the circle has $n envoys"; return 0; }
        sleep 0.2
    done
    lb_fail "the circle did not form: $n of $RECIPIENTS envoys after 120 s"
}
lb_check_store() {  # the write really went to the store, as age ciphertext
    local f="$LB_HOME/.lockbox/store/$(basename "$1")" size magic
    size="$(stat -c %s "$f" 2>/dev/null || echo 0)"
    magic="$(head -c 21 "$f" 2>/dev/null || true)"
    if [ "$magic" != "age-encryption.org/v1" ] || [ "$size" -le $((BIG_MIB * 1048576)) ]; then
        log "lockbox: WARNING: store file $f is not a complete age file (size $size, starts '$magic')"
        record lockbox store_check BAD
    else
        log "lockbox: store has $f: age ciphertext, $size bytes"
    fi
}
restart_lockbox() { lb_stop; lb_unlock; }
teardown_lockbox() { lb_stop; }

# ------------------------------------------------------------- the rows
declare -A TDIR TPID
use() { DIR="${TDIR[$1]}"; DPID="${TPID[$1]}"; }  # make target $1 current

row_seq_write() {  # target, repetition
    local t="$1" rep="$2" big
    use "$t"; big="$DIR/big"
    log "$t (rep $rep/$REPS): sequential write of $BIG_MIB MiB"
    settle
    if [ -n "$DPID" ] && [ "$rep" = 1 ]; then
        echo 5 >"/proc/$DPID/clear_refs" 2>/dev/null || log "warning: cannot reset VmHWM of pid $DPID"
        echo 0 >"$WORK/sampled"
        start_sampler "$DPID" "$WORK/sampled"
    fi
    if dd if=/dev/zero of="$big" bs=1M count="$BIG_MIB" conv=fsync 2>"$WORK/dd.err"; then
        record "$t" seq_write "$(dd_rate "$WORK/dd.err")"
    else
        log "$t: write FAILED: $(tr '\n' ' ' <"$WORK/dd.err")"; record "$t" seq_write ERR
    fi
    if [ -n "$DPID" ] && [ "$rep" = 1 ]; then
        stop_sampler
        record "$t" hwm_write "$(kib_of "$DPID" VmHWM)"
        record "$t" max_sampled_write "$(cat "$WORK/sampled")"
    fi
    [ "$t" = lockbox ] && lb_check_store "$big"
    return 0
}

row_seq_read() {  # target, repetition
    local t="$1" rep="$2" big rc
    use "$t"; big="$DIR/big"
    log "$t (rep $rep/$REPS): sequential read, cold cache"
    settle
    if dd if="$big" of=/dev/null bs=1M 2>"$WORK/dd.err"; then
        record "$t" seq_read "$(dd_rate "$WORK/dd.err")"
        rc="$(awk '/records in/ { print $1; exit }' "$WORK/dd.err")"
        [ "$rc" = "$BIG_MIB+0" ] || log "$t: read returned '$rc' records, expected $BIG_MIB+0"
    else
        log "$t: read FAILED: $(tr '\n' ' ' <"$WORK/dd.err")"; record "$t" seq_read ERR
    fi
}

# Each round reads other offsets (its own seed), so that lockbox's cache
# of decrypted chunks, which drop_caches does not empty, serves at most
# the few that the rounds share. Every target of a round reads the same
# offsets.
row_random() {  # target, repetition, round
    local t="$1" rep="$2" round="$3" out
    use "$t"
    log "$t (rep $rep/$REPS, round $round/$ROUNDS): $RANDOM_READS random 4 KiB reads, cold cache"
    settle
    if out="$("$PYTHON" "$PY" rand "$DIR/big" "$RANDOM_READS" "$((SEED + (rep - 1) * ROUNDS + round - 1))" 2>"$WORK/py.err")"; then
        printf '%s\n' "$out" | sed "s/^/$t\t/" >>"$RES"
    else
        log "$t: random reads FAILED: $(tail -n 2 "$WORK/py.err" | tr '\n' ' ')"; record "$t" random_read ERR
    fi
}

row_small() {  # target, repetition, round
    local t="$1" rep="$2" round="$3" out k
    use "$t"
    log "$t (rep $rep/$REPS, round $round/$ROUNDS): $SMALL_FILES small files: create / stat / read / rename / delete"
    settle
    small_run "$t" small
}

small_run() {  # target, key (small or busy_small): the small-file cycle, now
    local t="$1" key="$2" out k
    if out="$("$PYTHON" "$PY" small "$DIR" "$SMALL_FILES" "$DPID" "$key" 2>"$WORK/py.err")"; then
        printf '%s\n' "$out" | sed "s/^/$t\t/" >>"$RES"
    else
        log "$t: small files FAILED: $(tail -n 2 "$WORK/py.err" | tr '\n' ' ')"
        # rm what is left so that the next round starts clean
        find "$DIR" -maxdepth 1 -type f \( -name 'small-*' -o -name 'moved-*' \) -delete 2>/dev/null || true
        for k in create stat read rename delete; do record "$t" "${key}_$k" ERR; done
    fi
}

row_small_busy() {  # target, repetition, round: the same cycle on a busy host
    # The vCPUs are awake and the daemon warm: right after a 256 MiB
    # write, its cold read and its delete on this mount, with no wait for
    # idle in between (the state a `git checkout` or an `rsync` on a
    # working laptop finds). The quiet runs (row_small) start from idle.
    local t="$1" rep="$2" round="$3"
    use "$t"
    log "$t (rep $rep/$REPS, round $round/$ROUNDS): $SMALL_FILES small files on a busy host"
    settle
    dd if=/dev/zero of="$DIR/warm" bs=1M count=256 conv=fsync status=none &&
        drop_caches && cat "$DIR/warm" >/dev/null && rm -f "$DIR/warm" ||
        log "$t: the busy host's warm-up failed"
    small_run "$t" busy_small
}

row_tree() {  # target, repetition, round
    local t="$1" rep="$2" round="$3" out k
    use "$t"
    log "$t (rep $rep/$REPS, round $round/$ROUNDS): a tree of $SMALL_FILES files in 20 folders: create / cp -r / find"
    settle
    if out="$("$PYTHON" "$PY" tree "$DIR" "$SMALL_FILES" "$DPID" 2>"$WORK/py.err")"; then
        printf '%s\n' "$out" | sed "s/^/$t\t/" >>"$RES"
    else
        log "$t: tree FAILED: $(tail -n 2 "$WORK/py.err" | tr '\n' ' ')"
        rm -rf "$DIR/tree-src" "$DIR/tree-copy" 2>/dev/null || true
        for k in create cp find; do record "$t" "tree_$k" ERR; done
    fi
}

idle_rss_with_files() {  # fresh daemon, RSS_FILES small files created through it, then idle
    local t="$1" out
    log "$t: idle RSS with $RSS_FILES small files (fresh mount)"
    "restart_$t"
    TPID[$t]="$DPID"
    wait_idle "$DPID" || true
    if out="$("$PYTHON" "$PY" mkfiles "$DIR" "$RSS_FILES" 2>"$WORK/py.err")"; then
        log "$t: created $RSS_FILES files in $out s; waiting for the daemon to be idle"
        IDLE_SECS=$RSS_IDLE_SECS wait_idle "$DPID" || true
        record "$t" rss_idle_files "$(kib_of "$DPID" VmRSS)"
    else
        log "$t: creating $RSS_FILES files FAILED: $(tail -n 2 "$WORK/py.err" | tr '\n' ' ')"
        record "$t" rss_idle_files ERR
    fi
}

# ------------------------------------------------------------------- main
{
    echo "# lockbox mount benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- command: bash tests/bench/mount.sh $ORIG_ARGS"
    echo "- repetitions: $REPS, with $ROUNDS rounds of the random-read and small-file rows in each (rows show the median of all runs; targets interleaved within each repetition)"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- bench dir: $WORK ($(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }'))"
    if want gocryptfs; then echo "- gocryptfs: $(gocryptfs -version 2>/dev/null | head -n 1)"; fi
    if want lockbox; then
        echo "- lockbox: $LOCKBOX_BIN (built $(date -u -r "$LOCKBOX_BIN" '+%Y-%m-%d %H:%M UTC'), repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
        echo "- lockbox's circle: $RECIPIENTS envoy(s) (every file sealed to $RECIPIENTS recipient(s))"
    fi
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/header.md"

# All selected targets are mounted side by side; each repetition runs the
# rows on every target in turn, so that load drift hits all of them alike.
for t in plain gocryptfs lockbox; do
    want "$t" || continue
    log "== set up $t"
    "setup_$t"
    TDIR[$t]="$DIR"; TPID[$t]="$DPID"
done
for t in "${!TPID[@]}"; do
    [ -n "${TPID[$t]}" ] || continue
    wait_idle "${TPID[$t]}" || true
    record "$t" rss_fresh "$(kib_of "${TPID[$t]}" VmRSS)"
done
# Targets take turns row by row, and within the random-read and
# small-file rows round by round, so the runs compared (the same row,
# repetition and round on each target) are seconds apart, not minutes:
# this host's load drifts over minutes. The order of the turns rotates by
# one target from one turn to the next (plain, gocryptfs, lockbox; then
# gocryptfs, lockbox, plain; ...): a run can depend on what ran just
# before it on the same disk (ext4 skips inodes deleted in the last
# minute when it allocates one, so creates right after another target's
# deletes scan past its 2000 fresh holes), so each target runs first,
# second and last alike.
TURN=0
TURN_ORDER=()
turn() {  # TURN_ORDER: the selected targets, in the order of the next turn
    local order=(plain gocryptfs lockbox) shift_by t
    shift_by=$((TURN % ${#order[@]}))
    TURN=$((TURN + 1))
    TURN_ORDER=()
    for t in "${order[@]:$shift_by}" "${order[@]:0:$shift_by}"; do
        if want "$t"; then TURN_ORDER+=("$t"); fi
    done
}
for rep in $(seq "$REPS"); do
    # Each target reads its big file right after writing it, so every
    # target's read finds the same state (this VM's host caches the disk,
    # and a file written two files ago may have left that cache).
    turn; for t in "${TURN_ORDER[@]}"; do
        row_seq_write "$t" "$rep"
        row_seq_read "$t" "$rep"
    done
    for round in $(seq "$ROUNDS"); do
        turn; for t in "${TURN_ORDER[@]}"; do row_random "$t" "$rep" "$round"; done
    done
    turn; for t in "${TURN_ORDER[@]}"; do
        use "$t"
        rm -f "$DIR/big" || log "$t: rm of the big file failed"
    done
    for round in $(seq "$ROUNDS"); do
        turn; for t in "${TURN_ORDER[@]}"; do row_small "$t" "$rep" "$round"; done
    done
    for round in $(seq "$ROUNDS"); do
        turn; for t in "${TURN_ORDER[@]}"; do row_small_busy "$t" "$rep" "$round"; done
    done
    for round in $(seq "$ROUNDS"); do
        turn; for t in "${TURN_ORDER[@]}"; do row_tree "$t" "$rep" "$round"; done
    done
done
for t in gocryptfs lockbox; do
    want "$t" || continue
    DIR="${TDIR[$t]}"; DPID="${TPID[$t]}"
    IDLE_SECS=$RSS_IDLE_SECS wait_idle "$DPID" || true
    record "$t" rss_after_rows "$(kib_of "$DPID" VmRSS)"
    idle_rss_with_files "$t"
    "teardown_$t"
done

{
    cat "$WORK/header.md"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
} >"$WORK/report.md"
cat "$WORK/report.md"
[ -n "$OUT" ] && cat "$WORK/report.md" >"$OUT"
"$PYTHON" "$PY" table "$RES" "$(IFS=,; echo "${TARGETS[*]}")" "$BIG_MIB" "$SMALL_FILES" \
    "$RANDOM_READS" "$RSS_FILES" "$OUT"
if grep -qE $'\t(ERR|BAD)$' "$RES"; then
    log "some measurements FAILED (ERR in the table); see the messages above"
    exit 1
fi
