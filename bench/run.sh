#!/usr/bin/env bash
# Benchmarks of libopalcrs, printed side by side with their reference or goal.
#
#   bash bench/run.sh          full run (~90 s plus the build): 1 GiB process, 3 CRIU rounds;
#                              tmpfs: 512 MiB best of 10, 4 MiB median of 15
#   bash bench/run.sh quick    short run (~20 s plus the build): 256 MiB, 1 CRIU round;
#                              tmpfs: 128 MiB best of 4, 4 MiB median of 6
#
# Builds the library and tools (cargo, into $CARGO_TARGET_DIR or the repository's
# target/), copies them and the C programs of bench/ into a temporary directory that
# is removed at exit (part 5 mounts a private tmpfs in it, unmounted first), and ends
# every process it started by PID. Needs root (CRIU dumps, drop_caches, the mount), a C
# compiler and CRIU >= 4 ($CRIU, default /opt/criu/sbin/criu).
# Optional: xxhsum (Debian package xxhash) for the hashing figures of part 4.
# BENCH_MIB and BENCH_ROUNDS override the process size and the number of CRIU rounds;
# BENCH_FOLLOW=1 runs our criu checkpoints with crs_criu_follow_images=1 (the image follower).
# See bench/README.md for what each figure means.
set -euo pipefail
export LC_ALL=C

MODE=${1:-full}
case $MODE in
full) MIB=1024 ROUNDS=3 CKPT_RUNS=30 TMPFS_MIB=512 TMPFS_RUNS=10 SMALL_RUNS=15 ;;
quick) MIB=256 ROUNDS=1 CKPT_RUNS=20 TMPFS_MIB=128 TMPFS_RUNS=4 SMALL_RUNS=6 ;;
-h | --help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: bash bench/run.sh [quick]" >&2
    exit 2
    ;;
esac
INIT_PAIRS=1000
MIB=${BENCH_MIB:-$MIB}
ROUNDS=${BENCH_ROUNDS:-$ROUNDS}
[[ $MIB =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_MIB and BENCH_ROUNDS take positive numbers" >&2; exit 2; }
FOLLOW=${BENCH_FOLLOW:-0}
[[ $FOLLOW == [01] ]] || { echo "BENCH_FOLLOW takes 0 or 1" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRIU=${CRIU:-/opt/criu/sbin/criu}
BENCH_START=$SECONDS

die() {
    echo "run.sh: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "needs root (CRIU dumps and drop_caches)"
[[ -x $CRIU ]] || die "no CRIU at $CRIU (set CRIU=/path/to/criu)"
command -v cc >/dev/null || die "no C compiler (cc)"
command -v cargo >/dev/null || die "no cargo"

# ---------------------------------------------------------------------------------
# Work directory, processes, cleanup

W=$(mktemp -d "${TMPDIR:-/tmp}/opalcrs-bench.XXXXXX")
PIDS=()
MOUNTED= # the private tmpfs of part 5, unmounted at exit

# A PID is ours if its command line names a program in $W (a PID may be reused).
is_ours() {
    local cmdline
    cmdline=$(tr '\0' ' ' 2>/dev/null </proc/"$1"/cmdline) || return 1
    [[ $cmdline == *"$W/"* ]]
}

# Running (present and neither zombie nor dead); bash builtins only, it is polled.
alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != [ZX] ]]
}

# Short sleeps without forking: read with a timeout on a pipe that never delivers.
exec {NAP_FD}<> <(:)
nap() { read -r -t "$1" -u "$NAP_FD" || true; }

# Kills one process we started (by PID) and waits until the PID has left /proc (an
# orphan is reaped lazily by this machine's PID 1; a restore needs the PID free).
kill_wait() {
    local pid=$1 i
    if is_ours "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for ((i = 0; i < 1000; i++)); do
        [[ -e /proc/$pid ]] || return 0
        # A dying or zombie process has an empty command line; another one, read in
        # the same go, means the PID was reused by a process that is not ours.
        local cmdline
        cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || cmdline=
        if [[ -n $cmdline && $cmdline != *"$W/"* ]]; then
            return 0
        fi
        nap 0.01
    done
    echo "run.sh: PID $pid still in /proc after 10 s" >&2
    return 1
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        if is_ours "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        kill_wait "$pid" || true
    done
    if [[ -n $MOUNTED ]]; then
        umount "$MOUNTED" || true
    fi
    rm -rf "$W"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# ---------------------------------------------------------------------------------
# Formatting

ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; } # µs -> "12.3"
ms2() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
# "median min max" of integers
med_min_max() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%s %s %s\n", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
median() { med_min_max "$@" | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v v="$1" -v goal="$2" 'BEGIN { print (v <= goal ? "met" : "NOT met") }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
section() {
    printf '\n== %s ==   [%d s so far]\n' "$*" $((SECONDS - BENCH_START))
}
SUMMARY=()
summary() { SUMMARY+=("$(printf '%-46s %-22s %-30s %s' "$@")"); }

# ---------------------------------------------------------------------------------
# Build

section "build ($MODE)"
mkdir -p "$W/lib" "$W/bin" "$W/home"
(cd "$REPO" && cargo build --release --quiet)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
for f in libopalcrs.so opal-checkpoint opal-restart; do
    cp "$TARGET/release/$f" "$W/lib/$f"
done
ln -s libopalcrs.so "$W/lib/libopalcrs.so.0"
CK=$W/lib/opal-checkpoint
RS=$W/lib/opal-restart
ccopal() { # OUTPUT SOURCE [flags]
    local out=$1 src=$2
    shift 2
    cc -O2 -std=gnu11 -Wall -Wextra -Werror -I"$REPO/include" "$@" -o "$W/bin/$out" "$REPO/bench/$src" \
        -L"$W/lib" -lopalcrs -Wl,--export-dynamic -Wl,-rpath,"$W/lib"
}
ccopal init_self init_cost.c -DSELF_CALLBACKS
ccopal init_plain init_cost.c
ccopal self_app self_app.c
ccopal mem_hold mem_hold.c
cc -O2 -std=gnu11 -Wall -Wextra -Werror -o "$W/bin/criu_stats" "$REPO/bench/criu_stats.c"
echo "library and tools: $TARGET/release (copied to $W/lib); build took $((SECONDS - BENCH_START)) s"
echo "CRIU: $CRIU ($("$CRIU" --version | head -1))"
echo "work dir: $W on $(stat -f -c %T "$W") ($(df -P "$W" | awk 'NR == 2 { print $1 }'))"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"

# The environment of every program: a private HOME (snapshots go there), no parameter
# files of the machine, none of the caller's OMPI_MCA_ settings.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^OMPI_MCA_' || true)
export HOME=$W/home
export OMPI_MCA_mca_base_param_files=none
cd "$HOME"

# Starts a program in its own session, stdin /dev/null, output appended to
# $HOME/NAME.out; waits for its "pid N ready" line. Sets STARTED.
start() { # NAME ENV... -- PROGRAM ARGS...
    local name=$1 i
    shift
    local envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    env "${envs[@]}" setsid "$@" </dev/null >>"$HOME/$name.out" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    for ((i = 0; i < 12000; i++)); do
        if grep -q "^pid $STARTED ready" "$HOME/$name.out" 2>/dev/null; then
            return 0
        fi
        alive "$STARTED" || die "$name exited: $(cat "$HOME/$name.out")"
        nap 0.01
    done
    die "$name not ready after 120 s"
}

# ---------------------------------------------------------------------------------
section "1. opal_init + opal_finalize, $INIT_PAIRS pairs in-process (goal <= 2 ms per pair)"

printf '%-40s %-9s %10s %10s %10s %10s\n' "case" "selected" "first us" "median us" "p90 us" "max us"
init_case() { # LABEL SHORT PROGRAM ENV...
    local label=$1 short=$2 prog=$3 out comp line
    shift 3
    out=$(env "$@" "$W/bin/$prog" "$INIT_PAIRS") || die "$prog failed: $out"
    comp=$(sed -n 's/^status: Component: //p' <<<"$out")
    line=$(grep '^pairs=' <<<"$out")
    # pairs=N first_us=A median_us=B p90_us=C min_us=D max_us=E
    local first median p90 max
    first=$(sed -E 's/.*first_us=([0-9.]+).*/\1/' <<<"$line")
    median=$(sed -E 's/.*median_us=([0-9.]+).*/\1/' <<<"$line")
    p90=$(sed -E 's/.*p90_us=([0-9.]+).*/\1/' <<<"$line")
    max=$(sed -E 's/.*max_us=([0-9.]+).*/\1/' <<<"$line")
    printf '%-40s %-9s %10s %10s %10s %10s\n' "$label" "${comp:-n/a}" "$first" "$median" "$p90" "$max"
    summary "$short (median / p90)" "$median / $p90 us" "goal <= 2000 us per pair" "$(verdict "$p90" 2000)"
}
init_case "(a) self callbacks exported" "1a. init+finalize, self" init_self OPAL_CHECKPOINT="$CK"
init_case "(b) no callbacks, OMPI_MCA_crs=^criu" "1b. init+finalize, none" init_plain OPAL_CHECKPOINT="$CK" OMPI_MCA_crs='^criu'
init_case "(c) no callbacks, CRIU found" "1c. init+finalize, criu" init_plain OPAL_CHECKPOINT="$CK"
# --status needs the listener thread, so (d) does not ask; selection is as in (c).
init_case "(d) as (c), opal_cr_use_thread=0" "1d. init+fin., criu, thread off" init_plain OMPI_MCA_opal_cr_use_thread=0
echo "first = pair 1 alone: in (c) and (d) it includes finding CRIU (criu --version), which the"
echo "library caches for the life of the process; median/p90/max are over pairs 2..$INIT_PAIRS."
echo "'selected' is what 'opal-checkpoint --status' reported while the program was initialised"
echo "((d) cannot be asked: without the listener thread nothing answers the tool)."
echo "With the listener thread on (default) each opal_init starts a thread and binds a socket."

# ---------------------------------------------------------------------------------
section "2. opal-checkpoint round trip, self component ($CKPT_RUNS runs each, goal <= 10 ms, target <= 5 ms)"

start self_fsync -- "$W/bin/self_app"
SELF_FSYNC=$STARTED
start self_nofsync OMPI_MCA_crs_base_snapshot_fsync=0 -- "$W/bin/self_app"
SELF_NOFSYNC=$STARTED
ckpt_once() { # PID -> LAST_US
    local t0 t1
    t0=${EPOCHREALTIME/./}
    "$CK" "$1" >"$W/ckpt.out" 2>"$W/ckpt.err" || die "opal-checkpoint $1 failed: $(cat "$W/ckpt.out" "$W/ckpt.err")"
    t1=${EPOCHREALTIME/./}
    LAST_US=$((t1 - t0))
}
# One warm-up each (not counted): the first request of a process and a cold tool.
ckpt_once "$SELF_FSYNC"
ckpt_once "$SELF_NOFSYNC"
T_FSYNC=() T_NOFSYNC=()
for ((i = 0; i < CKPT_RUNS; i++)); do
    ckpt_once "$SELF_FSYNC"
    T_FSYNC+=("$LAST_US")
    ckpt_once "$SELF_NOFSYNC"
    T_NOFSYNC+=("$LAST_US")
done
n_fsync=$(find "$HOME/opal_snapshot_$SELF_FSYNC.ckpt" -mindepth 1 -maxdepth 1 -name '[0-9]*' | wc -l)
[[ $n_fsync == $((CKPT_RUNS + 1)) ]] || die "expected $((CKPT_RUNS + 1)) snapshots, found $n_fsync"
printf '%-40s %10s %10s %10s\n' "whole 'opal-checkpoint PID' command" "median ms" "min ms" "max ms"
for kind in fsync nofsync; do
    if [[ $kind == fsync ]]; then
        read -r med mn mx < <(med_min_max "${T_FSYNC[@]}")
        label="crs_base_snapshot_fsync=1 (default)" short="2. opal-checkpoint (self), fsync=1"
    else
        read -r med mn mx < <(med_min_max "${T_NOFSYNC[@]}")
        label="crs_base_snapshot_fsync=0" short="2. opal-checkpoint (self), fsync=0"
    fi
    printf '%-40s %10s %10s %10s\n' "$label" "$(ms2 "$med")" "$(ms2 "$mn")" "$(ms2 "$mx")"
    summary "$short (median)" "$(ms2 "$med") ms" "orig. 1012; goal 10; target 5" \
        "goal $(verdict "$med" 10000), target $(verdict "$med" 5000)"
done
echo "reference: the original Open MPI opal-checkpoint took 1012 ms for the same request."
echo "Each run: fork+exec of the tool, find the process, request, callback writes a state file,"
echo "metadata + manifest (hashes), publish (rename), reply. Runs alternate between the two targets."
kill_wait "$SELF_FSYNC"
kill_wait "$SELF_NOFSYNC"

# ---------------------------------------------------------------------------------
section "3. criu component vs the CRIU command line, $MIB MiB process, $ROUNDS round(s)"

# From here on ours and the reference use the same CRIU (part 1 let the library search).
export OMPI_MCA_crs_criu_binary=$CRIU
start mem_hold OMPI_MCA_crs=criu OMPI_MCA_crs_criu_follow_images="$FOLLOW" -- "$W/bin/mem_hold" "$MIB"
P=$STARTED
[[ $(awk '{ print $6 }' "/proc/$P/stat") == "$P" ]] || die "mem_hold is not a session leader"
SERIES=$HOME/opal_snapshot_$P.ckpt
REF=$W/ref
echo "process $P holds $MIB MiB of xorshift data; caches dropped before every timed step"

# progress line "[host:pid] [ d / t] STATE - ..." -> t in µs
progress_us() { sed -n -E "s/.*\/ *([0-9.]+)\] $2 - .*/\1/p" "$1" | awk '{ printf "%d", $1 * 1000000 }'; }
stat_field() { sed -n -E "s/.*$2=([0-9]+).*/\1/p" <<<"$1"; }

D_OURS=() D_REF=() R_OURS=() R_REF=() F_OURS=() F_REF=() PUB=() DUMP_PHASE=() DUMP_ONLY_REF=() SYNC_REF=()
dump_ours() {
    local t0 t1 dir stats
    drop_caches
    t0=${EPOCHREALTIME/./}
    "$CK" -v "$P" >"$W/dump.out" 2>"$W/dump.err" || die "opal-checkpoint $P failed: $(cat "$W/dump.out" "$W/dump.err")"
    t1=${EPOCHREALTIME/./}
    D_OURS+=($((t1 - t0)))
    dir=$(sed -n 's/^Snapshot Path: //p' "$W/dump.out")
    [[ -d $dir ]] || die "no snapshot directory in: $(cat "$W/dump.out")"
    OURS_DIR=$dir
    local running finished established
    running=$(progress_us "$W/dump.err" Running)
    finished=$(progress_us "$W/dump.err" "Locally Finished")
    established=$(progress_us "$W/dump.err" "Checkpoint Established")
    DUMP_PHASE+=($((finished - running)))
    PUB+=($((established - finished)))
    stats=$("$W/bin/criu_stats" "$dir")
    F_OURS+=("$(stat_field "$stats" frozen_time_us)")
    printf '  %-44s %8s ms  (component %s ms, publish %s ms; CRIU frozen %s ms)\n' \
        "ours: opal-checkpoint -v PID" "$(ms "${D_OURS[-1]}")" "$(ms "${DUMP_PHASE[-1]}")" "$(ms "${PUB[-1]}")" "$(ms "${F_OURS[-1]}")"
}
dump_ref() {
    local t0 tm t1 stats
    mkdir "$REF"
    drop_caches
    t0=${EPOCHREALTIME/./}
    "$CRIU" dump -t "$P" -D "$REF" --shell-job --leave-running -o dump.log ||
        die "criu dump failed: $(tail -5 "$REF/dump.log")"
    tm=${EPOCHREALTIME/./}
    sync
    t1=${EPOCHREALTIME/./}
    D_REF+=($((t1 - t0)))
    DUMP_ONLY_REF+=($((tm - t0)))
    SYNC_REF+=($((t1 - tm)))
    stats=$("$W/bin/criu_stats" "$REF")
    F_REF+=("$(stat_field "$stats" frozen_time_us)")
    printf '  %-44s %8s ms  (criu dump %s ms, sync %s ms; CRIU frozen %s ms)\n' "ref:  criu dump --leave-running && sync" \
        "$(ms "${D_REF[-1]}")" "$(ms "${DUMP_ONLY_REF[-1]}")" "$(ms "${SYNC_REF[-1]}")" "$(ms "${F_REF[-1]}")"
}
wait_running() { # PID: polls /proc until it runs (not stopped: ours restores it stopped)
    local i stat
    for ((i = 0; i < 60000; i++)); do
        if { read -r stat <"/proc/$1/stat"; } 2>/dev/null; then
            stat=${stat##*) }
            [[ ${stat:0:1} != [ZXT] ]] && return 0
        fi
        nap 0.001
    done
    die "PID $1 not running 60 s after the restore"
}
restore_ours() {
    local t0 t1 newpid
    kill_wait "$P"
    drop_caches
    t0=${EPOCHREALTIME/./}
    "$RS" --fork "$SERIES" >"$W/restore.out" 2>"$W/restore.err" || die "opal-restart failed: $(cat "$W/restore.out" "$W/restore.err")"
    newpid=$(tail -1 "$W/restore.out")
    [[ $newpid =~ ^[0-9]+$ ]] || die "opal-restart printed no PID: $(cat "$W/restore.out" "$W/restore.err")"
    PIDS+=("$newpid")
    wait_running "$newpid"
    t1=${EPOCHREALTIME/./}
    [[ $newpid == "$P" ]] || die "restored as PID $newpid, expected $P: $(cat "$W/restore.err")"
    R_OURS+=($((t1 - t0)))
    printf '  %-44s %8s ms\n' "ours: opal-restart --fork SERIES" "$(ms "${R_OURS[-1]}")"
}
restore_ref() {
    local t0 t1
    kill_wait "$P"
    drop_caches
    t0=${EPOCHREALTIME/./}
    "$CRIU" restore -D "$REF" --shell-job -d -o restore.log || die "criu restore failed: $(tail -5 "$REF/restore.log")"
    wait_running "$P"
    t1=${EPOCHREALTIME/./}
    R_REF+=($((t1 - t0)))
    printf '  %-44s %8s ms\n' "ref:  criu restore --shell-job -d" "$(ms "${R_REF[-1]}")"
}

# This VM's disk reads data 2-3x slower the first time after it was written (a
# host-side effect: it happens with cat as well, and whichever restore of a round came
# first was slow). So both image directories are read once, untimed, before the
# restores; guest caches are still dropped before every timed step.
pre_read() {
    local t0 t1
    drop_caches
    t0=${EPOCHREALTIME/./}
    cat "$OURS_DIR"/* "$REF"/* >/dev/null
    t1=${EPOCHREALTIME/./}
    printf '  %-44s %8s ms  (untimed, both image directories)\n' "first read of the fresh images" "$(ms $((t1 - t0)))"
}

for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r$([[ $r == 1 ]] && echo " (our first dump of the process includes the one-time 'criu check')")"
    if ((r % 2)); then
        dump_ours
        dump_ref
        pre_read
        restore_ours
        restore_ref
    else
        dump_ref
        dump_ours
        pre_read
        restore_ref
        restore_ours
    fi
    # Keep only this round's images (disk space; ours: the newest is what restores).
    # The file system is mounted with online discard here: a cold read right after
    # deleting GiBs of files is slower for a few seconds, so deletions happen only
    # here, followed by a pause, never just before a timed step.
    if ((r < ROUNDS)); then
        for old in "$SERIES"/[0-9]*; do
            [[ $old == "$OURS_DIR" ]] || rm -rf "$old"
        done
        rm -rf "$REF"
        sync
        nap 3
    fi
done

read -r d_ours _ _ < <(med_min_max "${D_OURS[@]}")
read -r d_ref _ _ < <(med_min_max "${D_REF[@]}")
read -r r_ours _ _ < <(med_min_max "${R_OURS[@]}")
read -r r_ref _ _ < <(med_min_max "${R_REF[@]}")
f_ours=$(median "${F_OURS[@]}")
f_ref=$(median "${F_REF[@]}")
size_ours=$(du -sb "$OURS_DIR" | cut -f1)
size_ref=$(du -sb "$REF" | cut -f1)
echo
printf '%-46s %12s %12s %8s %s\n' "median of $ROUNDS round(s)" "ours ms" "CRIU CLI ms" "ratio" "(goal <= 1.05)"
printf '%-46s %12s %12s %8s %s\n' "(a) dump (ours: + fsync, checksums, publish)" "$(ms "$d_ours")" "$(ms "$d_ref")" "$(ratio "$d_ours" "$d_ref")" "$(verdict "$(ratio "$d_ours" "$d_ref")" 1.05)"
printf '%-46s %12s %12s %8s %s\n' "(b) restore, cold, until running" "$(ms "$r_ours")" "$(ms "$r_ref")" "$(ratio "$r_ours" "$r_ref")" "$(verdict "$(ratio "$r_ours" "$r_ref")" 1.05)"
printf '%-46s %12s %12s %8s\n' "(c) frozen time (CRIU's stats-dump)" "$(ms "$f_ours")" "$(ms "$f_ref")" "$(ratio "$f_ours" "$f_ref")"
printf '%-46s %12s %12s\n' "image directory size" "$(mib "$size_ours")" "$(mib "$size_ref")"
echo "(a) ours = the whole 'opal-checkpoint -v PID' command: request, criu swrk dump, fsync of every"
echo "    file, XXH3-128 of every file, manifest, atomic publish; reference = criu dump + global sync."
echo "(b) ours = 'opal-restart --fork SERIES' (criu restore of a stopped copy while the manifest hashes"
echo "    are checked, then SIGCONT) until the PID runs; reference = 'criu restore -d' until the PID runs."
echo "    The original PID is free for both."
echo "(c) frozen_time from the stats-dump image CRIU writes into each image directory (decoded by"
echo "    bench/criu_stats.c: crit is not installed): from freezing the task to thawing it."
summary "3a. dump $MIB MiB (ours / criu dump+sync)" "$(ms "$d_ours") / $(ms "$d_ref") ms" "ratio $(ratio "$d_ours" "$d_ref"), goal <= 1.05" "$(verdict "$(ratio "$d_ours" "$d_ref")" 1.05)"
summary "3b. restore $MIB MiB (ours / criu restore)" "$(ms "$r_ours") / $(ms "$r_ref") ms" "ratio $(ratio "$r_ours" "$r_ref"), goal <= 1.05" "$(verdict "$(ratio "$r_ours" "$r_ref")" 1.05)"
summary "3c. frozen during dump (ours / criu dump)" "$(ms "$f_ours") / $(ms "$f_ref") ms" "(CRIU stats-dump)" ""
summary "3.  image dir size (ours / criu dump)" "$(mib "$size_ours") / $(mib "$size_ref")" "" ""

# ---------------------------------------------------------------------------------
section "4. checksum cost ($MIB MiB snapshot, checksums always on)"

pub=$(median "${PUB[@]}")
dphase=$(median "${DUMP_PHASE[@]}")
echo "our dump: phases reported by 'opal-checkpoint -v' (10 ms resolution), median:"
printf '  %-58s %8s ms\n' "component (criu swrk dump)" "$(ms "$dphase")"
printf '  %-58s %8s ms\n' "publish (metadata, XXH3-128 of every file, fsync, rename)" "$(ms "$pub")"
printf '  %-58s %8s ms\n' "whole command" "$(ms "$d_ours")"
echo "reference dump, median:"
printf '  %-58s %8s ms\n' "criu dump --leave-running" "$(ms "$(median "${DUMP_ONLY_REF[@]}")")"
printf '  %-58s %8s ms\n' "sync" "$(ms "$(median "${SYNC_REF[@]}")")"
echo "our restore: the check opal-restart runs alongside CRIU's restore (every hash):"
drop_caches
t0=${EPOCHREALTIME/./}
if "$RS" --verify "$SERIES" >"$W/verify.out" 2>&1; then
    t1=${EPOCHREALTIME/./}
    verify_us=$((t1 - t0))
    printf '  %-58s %8s ms\n' "opal-restart --verify SERIES, cold (part of (b))" "$(ms "$verify_us")"
else
    verify_us=
    echo "  opal-restart --verify SERIES: failed or not supported: $(head -2 "$W/verify.out")"
fi
if command -v xxhsum >/dev/null; then
    files=("$OURS_DIR"/*)
    hash_time() { # -> LAST_US
        local t0 t1
        t0=${EPOCHREALTIME/./}
        xxhsum "$@" "${files[@]}" >"$W/xxh.out" 2>"$W/xxh.err" # (progress goes to stderr)
        t1=${EPOCHREALTIME/./}
        LAST_US=$((t1 - t0))
    }
    cat "${files[@]}" >/dev/null # warm
    hash_time -H2
    warm2=$LAST_US
    hash_time -H3
    warm3=$LAST_US
    drop_caches
    hash_time -H2
    cold2=$LAST_US
    gbs() { awk -v b="$size_ours" -v us="$1" 'BEGIN { printf "%.2f GB/s", b / us / 1000 }'; }
    bench_mbs() { xxhsum -q -i1 "-b$1" 2>&1 | tr '\r' '\n' | grep -o '([0-9.]* MB/s)' | tail -1 | tr -d '()'; }
    # Our manifest hash of the pages image must be the standard XXH3-128.
    pages=$(basename "$(ls "$OURS_DIR"/pages-*.img | head -1)")
    ours_hash=$(tr -d ' \n' <"$OURS_DIR/opalcrs_manifest.json" |
        grep -o "\"path\":\"$pages\",\"size\":[0-9]*,\"hash\":\"[0-9a-f]*\"" | sed -E 's/.*"([0-9a-f]+)"$/\1/' || true)
    their_hash=$(xxhsum -H2 "$OURS_DIR/$pages" 2>/dev/null | cut -d' ' -f1)
    echo "hashing alone with xxhsum $(xxhsum --version 2>&1 | grep -o '[0-9]\.[0-9]\.[0-9]' | head -1) (the same $(mib "$size_ours") of files):"
    printf '  %-58s %8s ms  %s\n' "xxhsum -H2 (XXH128 = XXH3-128, as the manifest), warm" "$(ms "$warm2")" "$(gbs "$warm2")"
    printf '  %-58s %8s ms  %s\n' "xxhsum -H3 (XXH3-64), warm" "$(ms "$warm3")" "$(gbs "$warm3")"
    printf '  %-58s %8s ms  %s\n' "xxhsum -H2, cold (what opal-restart's verification reads)" "$(ms "$cold2")" "$(gbs "$cold2")"
    printf '  %-58s %8s\n' "xxhsum -b11 (XXH128 in memory, 100 KB sample)" "$(bench_mbs 11)"
    printf '  %-58s %8s\n' "xxhsum -b5 (XXH3-64 in memory, 100 KB sample)" "$(bench_mbs 5)"
    if [[ -n $ours_hash && $ours_hash == "$their_hash" ]]; then
        echo "  manifest hash of $pages = xxhsum -H2: $ours_hash (same algorithm)"
    else
        echo "  MISMATCH: manifest has '$ours_hash' for $pages, xxhsum -H2 says '$their_hash'"
    fi
    summary "4. publish phase (hashes+fsync+rename)" "$(ms "$pub") ms" "xxhsum -H2 warm $(ms "$warm2") ms" ""
else
    echo "hashing alone: skipped, xxhsum is not installed (Debian: apt-get install xxhash)"
    summary "4. publish phase (hash+fsync)" "$(ms "$pub") ms" "xxhsum missing: skipped" ""
fi

# ---------------------------------------------------------------------------------
section "5. criu to tmpfs, large ($TMPFS_MIB MiB, best of $TMPFS_RUNS) and small (median of $SMALL_RUNS), vs the CRIU command line"

T=$W/tmpfs
mkdir "$T"
mount -t tmpfs -o "size=$((3 * TMPFS_MIB + 256))m,mode=0700" opalcrs-bench "$T"
MOUNTED=$T
echo "images on a private tmpfs ($T); nothing to flush, so what remains is the work itself"

# The process logs its phases at debug level (crs_base_verbose=10) into its output file.
start_logged() { # NAME MIB -> STARTED
    start "$1" OMPI_MCA_crs=criu OMPI_MCA_crs_base_verbose=10 OMPI_MCA_crs_base_snapshot_dir="$T" \
        OMPI_MCA_crs_criu_follow_images="$FOLLOW" \
        -- "$W/bin/mem_hold" "$2"
}
# "NAME VALUE ms" of the phase lines the process logged since line $2 of its output $1:
# criu (checked, prepared, dumped, followed (the follower's records are in), files
# recorded: since the component started),
# publish (hashed, flushed, published: since the publish started), established.
phase_lines() {
    tail -n +"$2" "$1" | sed -n -E \
        -e 's/.*crs:criu: phases: checked ([0-9.]+) ms, prepared ([0-9.]+) ms, dumped ([0-9.]+) ms, followed ([0-9.]+) ms, files recorded ([0-9.]+) ms.*/checked \1\nprepared \2\ndumped \3\nfollowed \4\nrecorded \5/p' \
        -e 's/.*swrk started after ([0-9.]+)(µs|ms|s)\).*/swrk_\2 \1/p' \
        -e 's/.*crs: publish phases: hashed ([0-9.]+) ms, flushed ([0-9.]+) ms.*/hashed \1\nflushed \2/p' \
        -e 's/.*crs: publish phases: published ([0-9.]+) ms.*/published \1/p' \
        -e 's/.*cr: checkpoint [0-9]+ of .* established in ([0-9.]+) ms.*/established \1/p'
}
# Prints one row per phase name: the median over runs, from the files given.
phase_medians() {
    awk '
        $1 == "swrk_µs" { $1 = "swrk"; $2 /= 1000 } $1 == "swrk_s" { $1 = "swrk"; $2 *= 1000 } $1 == "swrk_ms" { $1 = "swrk" }
        { v[$1] = v[$1] " " $2; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
        END {
            for (i = 1; i <= n; i++) {
                k = split(substr(v[order[i]], 2), a, " ")
                for (x = 1; x <= k; x++) for (y = x + 1; y <= k; y++) if (a[y] < a[x]) { t = a[x]; a[x] = a[y]; a[y] = t }
                printf "%s %.2f\n", order[i], a[int((k + 1) / 2)]
            }
        }' "$@"
}

# One run: ours and the reference on process $1, order alternating with $3 (run index).
# Appends to the arrays named by $2: <name>_OURS, <name>_REF, <name>_FOURS, <name>_FREF.
tmpfs_run() { # PID NAME RUN
    local pid=$1 name=$2 run=$3 out=$HOME/$2.out lines t0 t1 dir stats
    local -n ours=${name}_OURS ref=${name}_REF fours=${name}_FOURS fref=${name}_FREF
    local step
    for step in $( ((run % 2)) && echo "ours ref" || echo "ref ours"); do
        if [[ $step == ours ]]; then
            lines=$(($(wc -l <"$out") + 1))
            t0=${EPOCHREALTIME/./}
            "$CK" "$pid" >"$W/dump.out" 2>"$W/dump.err" || die "opal-checkpoint $pid failed: $(cat "$W/dump.out" "$W/dump.err")"
            t1=${EPOCHREALTIME/./}
            ours+=($((t1 - t0)))
            dir=$(sed -n 's/^Snapshot Path: //p' "$W/dump.out")
            [[ -d $dir ]] || die "no snapshot directory in: $(cat "$W/dump.out")"
            stats=$("$W/bin/criu_stats" "$dir")
            fours+=("$(stat_field "$stats" frozen_time_us)")
            phase_lines "$out" "$lines" >"$W/phases.$name.$run"
            echo "whole $(ms "${ours[-1]}")" >>"$W/phases.$name.$run"
            rm -rf "$dir"
        else
            mkdir "$T/ref"
            t0=${EPOCHREALTIME/./}
            "$CRIU" dump -t "$pid" -D "$T/ref" --shell-job --leave-running -o dump.log ||
                die "criu dump failed: $(tail -5 "$T/ref/dump.log")"
            sync
            t1=${EPOCHREALTIME/./}
            ref+=($((t1 - t0)))
            stats=$("$W/bin/criu_stats" "$T/ref")
            fref+=("$(stat_field "$stats" frozen_time_us)")
            rm -rf "$T/ref"
        fi
    done
}

SMALL_MIB=4
for kind in large small; do
    if [[ $kind == large ]]; then
        name=big mib=$TMPFS_MIB runs=$TMPFS_RUNS
    else
        name=small mib=$SMALL_MIB runs=$SMALL_RUNS
    fi
    declare -a "${name}_OURS=()" "${name}_REF=()" "${name}_FOURS=()" "${name}_FREF=()"
    start_logged "$name" "$mib"
    pid=$STARTED
    # Warm-up, not counted: the first dump of a process also runs 'criu check' once.
    "$CK" "$pid" >"$W/dump.out" 2>&1 || die "opal-checkpoint $pid failed: $(cat "$W/dump.out")"
    rm -rf "$(sed -n 's/^Snapshot Path: //p' "$W/dump.out")"
    for ((i = 1; i <= runs; i++)); do
        tmpfs_run "$pid" "$name" "$i"
    done
    kill_wait "$pid"
    declare -n o=${name}_OURS r=${name}_REF fo=${name}_FOURS fr=${name}_FREF
    read -r o_med o_min _ < <(med_min_max "${o[@]}")
    read -r r_med r_min _ < <(med_min_max "${r[@]}")
    f_o=$(median "${fo[@]}") f_r=$(median "${fr[@]}")
    echo "$kind process: $mib MiB, $runs runs each, alternating which goes first (plus one warm-up of ours)"
    printf '  %-44s %10s %10s\n' "" "median ms" "best ms"
    printf '  %-44s %10s %10s\n' "ours: opal-checkpoint PID" "$(ms "$o_med")" "$(ms "$o_min")"
    printf '  %-44s %10s %10s\n' "ref:  criu dump --leave-running && sync" "$(ms "$r_med")" "$(ms "$r_min")"
    printf '  %-44s %10s %10s\n' "ratio" "$(ratio "$o_med" "$r_med")" "$(ratio "$o_min" "$r_min")"
    printf '  %-44s %10s %10s  (median; ratio %s)\n' "CRIU frozen time: ours / reference" "$(ms "$f_o")" "$(ms "$f_r")" "$(ratio "$f_o" "$f_r")"
    echo "  our phases, median over the runs (ms; criu: since the component started; publish: since it started):"
    phase_medians "$W"/phases."$name".* | awk '{ printf "    %-12s %8s\n", $1, $2 }'
    if [[ $kind == large ]]; then
        T_BIG="$(ms "$o_min") / $(ms "$r_min") ms" T_BIG_RATIO=$(ratio "$o_min" "$r_min") T_BIG_FROZEN="$(ms "$f_o") / $(ms "$f_r")"
    else
        T_SMALL="$(ms "$o_med") / $(ms "$r_med") ms" T_SMALL_RATIO=$(ratio "$o_med" "$r_med") T_SMALL_FROZEN="$(ms "$f_o") / $(ms "$f_r")"
    fi
    unset -n o r fo fr
done
echo "whole = the 'opal-checkpoint PID' command; established = the checkpoint inside the process"
echo "(component + publish); whole - established = the tool, the request and waiting for the result."

section "issue 15 table (ours / CRIU CLI, ratio, goal)"
printf '%-52s %-22s %-7s %s\n' "case" "ours / CRIU CLI" "ratio" "goal"
printf '%-52s %-22s %-7s %s\n' "$MIB MiB dump to disk (part 3a, median of $ROUNDS)" "$(ms "$d_ours") / $(ms "$d_ref") ms" "$(ratio "$d_ours" "$d_ref")" "<= 1.05"
printf '%-52s %-22s %-7s %s\n' "$MIB MiB restore, cold, until running (3b, median)" "$(ms "$r_ours") / $(ms "$r_ref") ms" "$(ratio "$r_ours" "$r_ref")" "<= 1.00"
printf '%-52s %-22s %-7s %s\n' "$TMPFS_MIB MiB dump to tmpfs (best of $TMPFS_RUNS)" "$T_BIG" "$T_BIG_RATIO" "<= 1.05"
printf '%-52s %-22s %-7s %s\n' "small process ($SMALL_MIB MiB) to tmpfs (median of $SMALL_RUNS)" "$T_SMALL" "$T_SMALL_RATIO" "<= 1.10"
echo "CRIU frozen time, ours / CRIU CLI (medians, ms): disk $(ms "$f_ours") / $(ms "$f_ref"), tmpfs large $T_BIG_FROZEN, small $T_SMALL_FROZEN"
summary "5a. dump $TMPFS_MIB MiB to tmpfs (best)" "$T_BIG" "ratio $T_BIG_RATIO, goal <= 1.05" "$(verdict "$T_BIG_RATIO" 1.05)"
summary "5b. dump small process to tmpfs (median)" "$T_SMALL" "ratio $T_SMALL_RATIO, goal <= 1.10" "$(verdict "$T_SMALL_RATIO" 1.10)"

# ---------------------------------------------------------------------------------
section "summary ($MODE, $((SECONDS - BENCH_START)) s)"
printf '%-46s %-22s %-30s %s\n' "figure" "ours" "reference / goal" "verdict"
printf '%s\n' "${SUMMARY[@]}"
