#!/usr/bin/env bash
# LD_PRELOAD cost: a malloc/free + open/close loop natively and with libopalcrs
# preloaded, alternating runs, and the listener thread's CPU use while idle.
#   bench/preload.sh [quick]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=11; iterations=2000000; idle=10
[ "${1:-}" = quick ] && { runs=5; iterations=500000; idle=3; }
cargo build --release --quiet
lib=$PWD/target/release/libopalcrs.so
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cc -O2 -o "$work/hotloop" bench/hotloop.c
export HOME="$work" OMPI_MCA_mca_base_param_files=none
native=(); preloaded=()
for _ in $(seq "$runs"); do
    native+=("$("$work/hotloop" "$iterations")")
    preloaded+=("$(LD_PRELOAD="$lib" "$work/hotloop" "$iterations")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n=$(median "${native[@]}"); p=$(median "${preloaded[@]}")
echo "malloc/free + open/close, ns per iteration (median of $runs alternating runs):"
printf '  native     %8.1f\n  preloaded  %8.1f\n  ratio      %8.3f   (goal <= 1.02, bar <= 1.03)\n' "$n" "$p" "$(echo "$p / $n" | bc -l)"

# Idle: a preloaded sleeping program; CPU ticks of every thread but the main one.
LD_PRELOAD="$lib" sleep $((idle + 5)) &
pid=$!
disown "$pid"
sleep 1
ticks() { awk '{print $14 + $15}' /proc/"$pid"/task/*/stat | tail -n +2 | paste -sd+ | bc; }
before=$(ticks); sleep "$idle"; after=$(ticks)
echo "listener thread CPU over ${idle} s idle: $((after - before)) ticks (goal 0); threads: $(ls /proc/$pid/task | wc -l)"
