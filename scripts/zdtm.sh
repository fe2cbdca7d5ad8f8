#!/usr/bin/env bash
# zdtm.sh - CRIU's own zdtm static tests, each run two ways on the same test binary:
#   criu : the CRIU command line, as zdtm.py runs a static test in the host flavour
#          (criu dump --tree PID, the test is gone, criu restore --restore-detached);
#   ours : the library preloaded into the test, opal-checkpoint PID, the test's process
#          tree killed, opal-restart --fork SNAPSHOT.
# Then SIGTERM, and the test's own verdict: PASS in its .out file.
# A test the command line fails is not counted; the figure is
#   zdtm: ours N/M where criu passes M
#
# Usage: zdtm.sh [--quick] [TEST...]     (as root; default: the whole static list)
#   --quick   the subset that the test command runs (tests/zdtm.rs)
# Environment:
#   CRIU        criu binary (default: criu in PATH, else /opt/criu/sbin/criu)
#   ZDTM_SRC    CRIU's test/zdtm directory (default: the source tree install-criu.sh
#               keeps, $CRIU_WORK/src/criu-<version>/test/zdtm, CRIU_WORK=/var/tmp/criu-install)
#   OPALCRS_BIN directory with opal-checkpoint, opal-restart and libopalcrs.so
#               (default: target/debug of this tree)
# Exit: 0 every counted test passes through the library, 1 some do not,
#       2 usage, 3 cannot run here (not root, no CRIU, no CRIU source, build failed).
set -uo pipefail
# The script makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER, kept across
# exec): the daemonized tests and whatever they leave behind are its descendants, ended by
# PID after each test, and a killed test is reaped at once (this machine's PID 1 takes
# about a second, and a restore needs the PID free).
if [ -z "${ZDTM_SUBREAPER:-}" ]; then
    command -v python3 >/dev/null || { echo "zdtm: cannot run: needs python3" >&2; exit 3; }
    ZDTM_SUBREAPER=1 exec python3 -c 'import ctypes, os, sys
if ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("zdtm: prctl(PR_SET_CHILD_SUBREAPER) failed")
os.execvp("bash", ["bash"] + sys.argv[1:])' "$0" "$@"
fi
unset ZDTM_SUBREAPER
# A test starts with fds 0-2 only, as under zdtm.py (close_fds).
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-"
done
cd "$(dirname "$0")/.."
REPO=$PWD

# The quick subset: tests that pass both ways, none with an INET socket (CRIU 4.1.1
# cannot dump one on new kernels): processes and trees, memory, registers, signals,
# timers, credentials, files, pipes, FIFOs, UNIX sockets, epoll, fsnotify, ptys, a
# stopped child, a child subreaper; and
# what the library once got wrong (its fds on numbers tests use, pending signals,
# signalfd, files under /proc, file locks, seccomp in a forked child, a descriptor
# table shared by clone()'d children).
QUICK="pipe00 tty00 signalfd00 sigpending child_opened_proc file_locks00 seccomp_filter_tsync
fdt_shared
busyloop00 sleeping00 caps00 wait00 zombie00 fpu00 futex-rl mprotect00 timers01
timerfd sched_prio00 rlimits00 env00 umask00 cmdlinenv00 pthread00 vdso00 maps00
sigaltstack pdeath_sig xids00 sockets00 sockets_dgram pipe01 write_read00 file_append
cwd00 fifo file_fown epoll eventfs00 pty00 stopped child_subreaper"

die() { echo "zdtm: $*" >&2; exit "${2:-2}"; }
cannot() { echo "zdtm: cannot run: $*" >&2; exit 3; }

quick=0
names=()
for a in "$@"; do
    case "$a" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $a (usage: zdtm.sh [--quick] [TEST...])" ;;
    *) names+=("$a") ;;
    esac
done

[ "$(id -u)" = 0 ] || cannot "needs root (CRIU dumps and restores)"
if [ -z "${CRIU:-}" ]; then
    CRIU=$(command -v criu || echo /opt/criu/sbin/criu)
fi
[ -x "$CRIU" ] || cannot "no criu binary (looked at ${CRIU}; bash scripts/install-criu.sh)"
version=$("$CRIU" --version 2>/dev/null | awk '/^Version:/ { print $2 }')
[ -n "$version" ] || cannot "$CRIU --version names no version"
ZDTM_SRC=${ZDTM_SRC:-${CRIU_WORK:-/var/tmp/criu-install}/src/criu-$version/test/zdtm}
[ -f "$ZDTM_SRC/static/Makefile" ] \
    || cannot "the CRIU $version source with test/zdtm is not at $ZDTM_SRC (scripts/install-criu.sh keeps it when it builds from source; set ZDTM_SRC)"
OPALCRS_BIN=${OPALCRS_BIN:-$REPO/target/debug}
LIB=$OPALCRS_BIN/libopalcrs.so
for f in "$OPALCRS_BIN/opal-checkpoint" "$OPALCRS_BIN/opal-restart" "$LIB"; do
    [ -e "$f" ] || cannot "$f not built (cargo build)"
done

# Scratch: a copy of zdtm, built there; dumps and snapshots next to it; removed at exit.
W=$(mktemp -d "${TMPDIR:-/tmp}/opalcrs-zdtm.XXXXXX")
chmod 755 "$W"
descendants() {  # descendants PID: all of them, read from /proc by builtins (no child of ours)
    local f stat p added=1
    local -A parent=() found=([$1]=1)
    for f in /proc/[0-9]*/stat; do
        read -r stat 2>/dev/null <"$f" || continue
        p=${f#/proc/}
        stat=${stat##*) }      # the fields after "(comm) ": state ppid ...
        stat=${stat#* }
        parent[${p%/stat}]=${stat%% *}
    done
    while [ $added = 1 ]; do
        added=0
        for p in "${!parent[@]}"; do
            [ "$p" != "$BASHPID" ] || continue   # the subshell running this
            if [ -z "${found[$p]:-}" ] && [ -n "${found[${parent[$p]}]:-}" ]; then
                found[$p]=1
                added=1
                echo "$p"
            fi
        done
    done
}
kill_tree() {  # kill_tree PID: stopped first, so that none forks on; SIGKILL
    local p left i
    for ((i = 0; i < 100; i++)); do
        left=$(descendants "$1")
        [ "$1" = $$ ] || ! kill -0 "$1" 2>/dev/null || left="$1 $left"
        [ -n "$left" ] || return 0
        for p in $left; do kill -STOP "$p" 2>/dev/null; done
        for p in $left; do kill -KILL "$p" 2>/dev/null; done
        sleep 0.05   # bash reaps them meanwhile
    done
    echo "zdtm: processes left after the tests: $left" >&2
}
end_tests() {  # ends every process the tests left, and unmounts what they mounted
    local m
    kill_tree $$
    for m in $(awk -v w="$W/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount -l "$m" || echo "zdtm: cannot unmount $m" >&2
    done
}
cleanup() {
    end_tests
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -a "$ZDTM_SRC" "$W/zdtm" || cannot "copying $ZDTM_SRC"
S=$W/zdtm/static
# The hook: a preloaded library initialises only the process that loaded it; the test's
# daemonized child (fork without exec) calls opal_init itself, when the library is there.
sed -i -e '0,/^#include/s//#include <dlfcn.h>\n#include/' \
    -e '/^\tmaster_pid = getpid();$/a\
\t{\
\t\tint (*opal_init_fn)(int *, char ***) = (int (*)(int *, char ***))dlsym(RTLD_DEFAULT, "opal_init");\
\t\tif (opal_init_fn \&\& opal_init_fn(NULL, NULL) != 0) {\
\t\t\tpr_err("opal_init failed\\n");\
\t\t\texit(1);\
\t\t}\
\t}' "$W/zdtm/lib/test.c"
grep -q 'dlsym(RTLD_DEFAULT, "opal_init")' "$W/zdtm/lib/test.c" \
    || cannot "patching zdtm's lib/test.c failed (its test_init changed?)"
make -s -C "$W/zdtm/lib" -j"$(nproc)" >"$W/build-lib.log" 2>&1 \
    || { tail -20 "$W/build-lib.log" >&2; cannot "building zdtm's lib failed"; }

all=$(make -s --no-print-directory -C "$S" --eval 'zdtm-list: ; @echo $(TST)' zdtm-list)
if [ ${#names[@]} -gt 0 ]; then
    list="${names[*]}"
elif [ $quick = 1 ]; then
    list=$QUICK
else
    list=$all
fi
for t in $list; do
    [[ " $all " == *" $t "* ]] || die "$t is not in zdtm's static list"
done
# shellcheck disable=SC2086
make -k -s -C "$S" -j"$(nproc)" $list >"$W/build.log" 2>&1

ARCH=$(uname -m)   # zdtm.py compares a .desc's arch with it as a whole string
# One field of a test's .desc (a Python dict literal).
desc() {  # desc TEST KEY
    [ -f "$S/$1.desc" ] || return 0
    tr '\n' ' ' <"$S/$1.desc" | grep -o "'$2': *'[^']*'" | sed "s/^'$2': *'\\(.*\\)'$/\\1/"
}
declare -A FEATURE
has_feature() {
    [ -n "${FEATURE[$1]:-}" ] || {
        "$CRIU" check --no-default-config -v0 --feature "$1" >/dev/null 2>&1 && FEATURE[$1]=y || FEATURE[$1]=n
    }
    [ "${FEATURE[$1]}" = y ]
}
# CRIU options of a .desc, as library parameters; empty when one has no parameter.
declare -A PARAM_OF=([--tcp-established]=OMPI_MCA_crs_criu_tcp_established=1
                     [--file-locks]=OMPI_MCA_crs_criu_file_locks=1)
params_for() {  # params_for OPTIONS...
    local o out=()
    for o in "$@"; do
        [ -n "${PARAM_OF[$o]:-}" ] || { echo "!$o"; return; }
        out+=("${PARAM_OF[$o]}")
    done
    echo "${out[*]}"
}
build_error() {  # build_error TEST: the first compiler or linker error about it
    grep -m1 -E "^$1\.c:[0-9]+:[0-9]+: (fatal )?error|$1\.c:[0-9]+: undefined" "$W/build.log" || echo "see make's output"
}
# Why a test is not run here, if it is not.
skip_reason() {  # skip_reason TEST
    local t=$1 f flags flavor
    local arch; arch=$(desc "$t" arch)
    [ -z "$arch" ] || [ "$arch" = "$ARCH" ] || { echo "arch $arch"; return; }
    flags=" $(desc "$t" flags) "
    for f in crfail noauto crlib; do
        [[ $flags == *" $f "* ]] && { echo "flag $f"; return; }
    done
    flavor=$(desc "$t" flavor)
    [ -z "$flavor" ] || [[ " $flavor " == *" h "* ]] || { echo "flavor '$flavor' only (no host flavour)"; return; }
    [ -x "$S/$t" ] && [ -f "$S/$t" ] || { echo "did not build: $(build_error "$t")"; return; }
    for f in $(desc "$t" feature); do
        has_feature "$f" || { echo "criu check: no feature $f"; return; }
    done
    if [ -x "$S/$t.checkskip" ]; then
        (cd "$S" && "./$t.checkskip") >/dev/null 2>&1 || { echo "its checkskip failed"; return; }
    fi
}

PIDWAIT=10    # seconds for a killed or stopped test to leave the process table
STEPWAIT=30   # seconds for one start, dump, restore (zdtm.py's default)
gone() {  # gone PID SECONDS: waits until kill -0 fails (a zombie counts as there)
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}
ended() {  # ended PID SECONDS: gone, or a zombie (its verdict is written)
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ] && return 0
        sleep 0.05
    done
    return 1
}
WHY=   # the first lines of why the last run failed
fail() {  # fail STEP [FILE]: records why, returns 1
    WHY="$1"
    if [ -n "${2:-}" ] && [ -s "$2" ]; then
        WHY+=": $(grep -v '^$' "$2" | grep -m3 -i 'error\|fail\|fatal\|refus' || grep -v '^$' "$2" | head -3)"
        WHY=${WHY//$'\n'/ | }
    fi
    return 1
}
# Starts a test as zdtm does (its make rule's command line); sets PID.
PID=
start() {  # start TEST ENV...
    local t=$1 cmd
    shift
    PID=
    make -s -C "$S" "$t.cleanout" >/dev/null 2>&1
    cmd=$(make -n -s --no-print-directory -C "$S" "$t.pid" | tail -1)
    # env(1) puts LD_PRELOAD on the test only, not on timeout or make
    (cd "$S" && eval "timeout -k 5 $STEPWAIT env $* $cmd") >"$D/start.log" 2>&1
    case $? in
    0) ;;
    124 | 137) fail "start: not ready after $STEPWAIT s" "$S/$t.out.inprogress"; return 1 ;;
    *) fail "start" "$D/start.log"; return 1 ;;
    esac
    PID=$(cat "$S/$t.pid" 2>/dev/null) && kill -0 "$PID" 2>/dev/null \
        || { fail "start: no live PID in $t.pid"; return 1; }
}
verdict() {  # verdict TEST PID
    kill -TERM "$2" 2>/dev/null || { fail "the restored test is not running"; return 1; }
    ended "$2" "$PIDWAIT" || { fail "the test did not end on SIGTERM"; return 1; }
    if tail -1 "$S/$1.out" 2>/dev/null | grep -qw PASS; then
        return 0
    fi
    local out
    out=$(ls "$S/$1.out" "$S/$1.out.inprogress" 2>/dev/null | head -1)
    [ -s "$out" ] || { fail "no PASS: the test ended without a word (killed by a signal?)"; return 1; }
    fail "test verdict" "$out"
}
# The environment zdtm.py gives a host-flavour test, except that every test runs as root,
# as zdtm.py runs its 'suid' ones: it switches the others to uid 18943, and a root without
# CAP_SYS_RESOURCE (as on this machine) cannot read another user's rlimits, so CRIU's
# dump fails for all of them.
TEST_ENV="TMPDIR=${TMPDIR:-/tmp} ZDTM_THREAD_BOMB=5"

run_criu() {  # run_criu TEST
    local t=$1 pid opts dopts ropts
    D=$W/dump/$t/criu; mkdir -p "$D"
    start "$t" $TEST_ENV || return 1
    pid=$PID
    opts=$(desc "$t" opts); dopts=$(desc "$t" dopts); ropts=$(desc "$t" ropts)
    # shellcheck disable=SC2086
    timeout -k 5 $STEPWAIT "$CRIU" dump --tree "$pid" -D "$D" -o dump.log -v4 $opts $dopts \
        --pidfile "$S/$t.pid" --timeout 10 >"$D/dump.out" 2>&1 \
        || { fail "criu dump" "$D/dump.log"; return 1; }
    gone "$pid" "$PIDWAIT" || { fail "the dumped test is still there"; return 1; }
    rm -f "$S/$t.pid"
    # shellcheck disable=SC2086
    timeout -k 5 $STEPWAIT "$CRIU" restore -D "$D" -o restore.log -v4 $opts $ropts \
        --pidfile "$S/$t.pid" --restore-detached >"$D/restore.out" 2>&1 \
        || { fail "criu restore" "$D/restore.log"; return 1; }
    pid=$(tr -d ' \n' <"$S/$t.pid")
    verdict "$t" "$pid"
}

run_ours() {  # run_ours TEST
    local t=$1 pid params snapshot
    D=$W/dump/$t/ours; mkdir -p "$D"
    params=$(params_for $(desc "$t" opts) $(desc "$t" dopts) $(desc "$t" ropts))
    local lib_env="OMPI_MCA_mca_base_param_files=none OMPI_MCA_crs=criu OMPI_MCA_crs_criu_binary=$CRIU HOME=$D OMPI_MCA_crs_base_snapshot_dir=$D $params"
    start "$t" $TEST_ENV "$lib_env" LD_PRELOAD="$LIB" || return 1
    pid=$PID
    # shellcheck disable=SC2086
    timeout -k 5 $((STEPWAIT + 10)) env $lib_env "$OPALCRS_BIN/opal-checkpoint" --timeout $STEPWAIT "$pid" >"$D/checkpoint.out" 2>&1 \
        || { fail "opal-checkpoint" "$D/checkpoint.out"; return 1; }
    snapshot=$(sed -n 's/^Snapshot Path: *//p' "$D/checkpoint.out")
    kill_tree "$pid"   # as CRIU's dump does: the whole tree
    gone "$pid" "$PIDWAIT" || { fail "the killed test is still there"; return 1; }
    # shellcheck disable=SC2086
    timeout -k 5 $STEPWAIT env $lib_env "$OPALCRS_BIN/opal-restart" --fork "$snapshot" >"$D/restart.out" 2>"$D/restart.err" \
        || { fail "opal-restart" "$D/restart.err"; return 1; }
    pid=$(tr -d ' \n' <"$D/restart.out")
    verdict "$t" "$pid"
}

skipped=() counted=() failed=() not_counted=()
started=$SECONDS
echo "zdtm: CRIU $version ($CRIU), tests from $ZDTM_SRC"
for t in $list; do
    why=$(skip_reason "$t")
    if [ -n "$why" ]; then
        skipped+=("$t: $why")
        continue
    fi
    params=$(params_for $(desc "$t" opts) $(desc "$t" dopts) $(desc "$t" ropts))
    if [[ $params == !* ]]; then
        skipped+=("$t: needs CRIU's ${params#!}, for which the library has no parameter")
        continue
    fi
    t0=$SECONDS
    if ! run_criu "$t"; then
        not_counted+=("$t: $WHY")
        printf '%-28s criu FAIL  (not counted)\n' "$t"
        end_tests
        rm -rf "$W/dump/$t"
        continue
    fi
    counted+=("$t")
    if run_ours "$t"; then
        printf '%-28s criu PASS  ours PASS  %3ds\n' "$t" $((SECONDS - t0))
    else
        failed+=("$t: $WHY")
        printf '%-28s criu PASS  ours FAIL  %3ds\n' "$t" $((SECONDS - t0))
    fi
    end_tests
    rm -rf "$W/dump/$t"
done

echo
if [ ${#skipped[@]} -gt 0 ]; then
    echo "not run here (${#skipped[@]}):"
    printf '  %s\n' "${skipped[@]}"
fi
if [ ${#not_counted[@]} -gt 0 ]; then
    echo "not counted, the CRIU command line fails (${#not_counted[@]}):"
    printf '  %s\n' "${not_counted[@]}"
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "pass with the CRIU command line, fail through the library (${#failed[@]}):"
    printf '  %s\n' "${failed[@]}"
fi
M=${#counted[@]}
echo "zdtm: ours $((M - ${#failed[@]}))/$M where criu passes $M ($((SECONDS - started)) s)"
[ ${#failed[@]} = 0 ]
