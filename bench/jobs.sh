#!/usr/bin/env bash
# Figures for parallel jobs (README "Parallel jobs"), self component:
#   1. a global checkpoint of 4 ranks (opal-checkpoint of the launcher) against 4 single
#      checkpoints, one after the other, of 4 processes with the same state size;
#   2. the round trip (checkpoint, SIGKILL, restart until every process has loaded its
#      state) of the 4-rank job against that of one process;
#   3. as root with CRIU (criu component): a global checkpoint of the 4-rank ring (one
#      dump of the launcher's tree) against single checkpoints of 4 ring processes
#      (each the one rank of its own job, dumped by itself), one after the other.
#
#   bash bench/jobs.sh [RUNS]     best and median of RUNS (default 5) of each
#
# BIN: the directory with the tools and libopalcrs.so (default target/debug, built by
# cargo build); STATE_MIB: each process's state (default 16). Works in a temporary
# directory that is removed at exit, and ends every process it started by PID.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$REPO/target/debug}
RUNS=${1:-5}
MIB=${STATE_MIB:-16}
[[ $RUNS =~ ^[1-9][0-9]*$ && $MIB =~ ^[0-9]+$ ]] || { echo "usage: bash bench/jobs.sh [RUNS]" >&2; exit 2; }
for tool in opal-run opal-checkpoint opal-restart libopalcrs.so; do
    [[ -e $BIN/$tool ]] || { echo "jobs.sh: no $BIN/$tool (cargo build first)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/opalcrs-bench-jobs.XXXXXX)
GROUPS_STARTED=()
cleanup() {
    for group in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
export HOME=$WORK OMPI_MCA_mca_base_param_files=none OMPI_MCA_crs_base_snapshot_keep=1
export RING_STATE_BYTES=$((MIB * 1048576)) RING_DELAY_US=1000

cc_prog() {
    cc -std=gnu11 -O2 -pthread -I"$REPO/include" -o "$WORK/$2" "$REPO/c-tests/$1" \
        -L"$BIN" -lopalcrs -Wl,--export-dynamic -Wl,-rpath,"$BIN"
}
ln -sf libopalcrs.so "$BIN/libopalcrs.so.0"
cc_prog ring.c ring
cc_prog selfapp.c selfapp

now() { date +%s%N; }
wait_for() { # CONDITION...: polls for up to 20 s
    local i
    for ((i = 0; i < 2000; i++)); do "$@" && return 0; sleep 0.01; done
    echo "jobs.sh: timed out waiting for: $*" >&2
    exit 1
}
ring_up() { local r; for ((r = 0; r < ${NP:-4}; r++)); do [[ -S $1/ring.$r.sock ]] || return 1; done; }
ring_restored() { local r; for r in 0 1 2 3; do [[ -e $1/ring.$r.restarted ]] || return 1; done; }
log_has() { grep -q "$2" "$1" 2>/dev/null; }

# Starts the ring of ${NP:-4} ranks in its own session with results in $1 (series $2 if
# given); sets LAUNCHER.
start_job() {
    mkdir -p "$1"
    setsid "$BIN/opal-run" -np "${NP:-4}" ${2:+-n "$2"} "$WORK/ring" "$1" 100000000 >"$1.out" 2>&1 &
    LAUNCHER=$!
    disown "$LAUNCHER"
    GROUPS_STARTED+=("$LAUNCHER")
    wait_for ring_up "$1"
}

# Starts selfapp logging to $1 in its own session; sets APP.
start_app() {
    setsid "$WORK/selfapp" "$1" --state-bytes "$RING_STATE_BYTES" >"$1.out" 2>&1 &
    APP=$!
    disown "$APP"
    GROUPS_STARTED+=("$APP")
    wait_for log_has "$1" "init rc=0 pid=$APP "
}

# Prints "best median" of the numbers (ms) on stdin.
summary() { sort -n | awk '{ v[NR] = $1 } END { printf "best %5d ms   median %5d ms\n", v[1], v[int((NR + 1) / 2)] }'; }

echo "state per process: $MIB MiB; $RUNS runs each; binaries from $BIN"

start_job "$WORK/ckpt"
for ((i = 0; i < RUNS; i++)); do
    t0=$(now); "$BIN/opal-checkpoint" -q "$LAUNCHER" >/dev/null; t1=$(now)
    echo $(((t1 - t0) / 1000000))
done | summary | sed 's/^/global checkpoint, 4 ranks:      /'
kill -KILL -- "-$LAUNCHER"

apps=()
for r in 0 1 2 3; do start_app "$WORK/single.$r.log"; apps+=("$APP"); done
for ((i = 0; i < RUNS; i++)); do
    t0=$(now)
    for app in "${apps[@]}"; do "$BIN/opal-checkpoint" -q "$app" >/dev/null; done
    t1=$(now)
    echo $(((t1 - t0) / 1000000))
done | summary | sed 's/^/4 single checkpoints, in turn:    /'
for app in "${apps[@]}"; do kill -KILL -- "-$app"; done

for ((i = 0; i < RUNS; i++)); do
    dir=$WORK/trip$i
    start_job "$dir" "trip$i.ckpt"
    t0=$(now)
    "$BIN/opal-checkpoint" -q "$LAUNCHER" >/dev/null
    kill -KILL -- "-$LAUNCHER"
    setsid "$BIN/opal-restart" "trip$i.ckpt" >"$dir.restart.out" 2>&1 &
    restarted=$!
    disown "$restarted"
    GROUPS_STARTED+=("$restarted")
    wait_for ring_restored "$dir"
    t1=$(now)
    kill -KILL -- "-$restarted"
    echo $(((t1 - t0) / 1000000))
done | summary | sed 's/^/round trip, 4-rank job:          /'

for ((i = 0; i < RUNS; i++)); do
    log=$WORK/trip-single$i.log
    start_app "$log"
    t0=$(now)
    "$BIN/opal-checkpoint" -q -n "single$i.ckpt" "$APP" >/dev/null
    kill -KILL -- "-$APP"
    setsid "$BIN/opal-restart" "single$i.ckpt" >"$log.restart.out" 2>&1 &
    restarted=$!
    disown "$restarted"
    GROUPS_STARTED+=("$restarted")
    wait_for log_has "$log" "^restart "
    t1=$(now)
    kill -KILL -- "-$restarted"
    echo $(((t1 - t0) / 1000000))
done | summary | sed 's/^/round trip, one process:         /'

CRIU=${CRIU:-/opt/criu/sbin/criu}
if [[ $EUID -ne 0 || ! -x $CRIU ]]; then
    echo "criu figures skipped: they need root and CRIU (\$CRIU=$CRIU)"
    exit 0
fi
export OMPI_MCA_crs=criu OMPI_MCA_crs_criu_binary=$CRIU

start_job "$WORK/criu-job"
for ((i = 0; i < RUNS; i++)); do
    t0=$(now); "$BIN/opal-checkpoint" -q "$LAUNCHER" >/dev/null; t1=$(now)
    echo $(((t1 - t0) / 1000000))
done | summary | sed 's/^/criu: global checkpoint, 4 ranks: /'
kill -KILL -- "-$LAUNCHER"

ranks=()
for r in 0 1 2 3; do
    NP=1 start_job "$WORK/criu-single$r"
    ranks+=("$(tr -d " " <"/proc/$LAUNCHER/task/$LAUNCHER/children")")
done
for ((i = 0; i < RUNS; i++)); do
    t0=$(now)
    for rank in "${ranks[@]}"; do "$BIN/opal-checkpoint" -q "$rank" >/dev/null; done
    t1=$(now)
    echo $(((t1 - t0) / 1000000))
done | summary | sed 's/^/criu: 4 single checkpoints:      /'
