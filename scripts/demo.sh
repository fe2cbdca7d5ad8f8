#!/usr/bin/env bash
# The main job, end to end: build the library and tools, build a C program against
# them with pkg-config, start it, checkpoint it, kill it, restart it, and show it
# continuing from its saved state. Needs only cargo, a C compiler and pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --minimal
make -s build uninstalled-pc
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export PKG_CONFIG_PATH="$PWD/build/uninstalled" HOME="$work" OMPI_MCA_mca_base_param_files=none
export PATH="$PWD/target/release:$PATH" LD_LIBRARY_PATH="$PWD/target/release"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "cc examples/counter.c \$(pkg-config --cflags --libs opalcrs)"
cc -o "$work/counter" examples/counter.c $(pkg-config --cflags --libs opalcrs)

say "start the program"
"$work/counter" 40 > "$work/out.log" 2>&1 &
pid=$!
sleep 1.2
cat "$work/out.log"

say "opal-checkpoint -v $pid"
opal-checkpoint -v "$pid"
sleep 0.5

say "kill -9 $pid (it had counted to $(grep -c '^count' "$work/out.log"))"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=

say "opal-restart opal_snapshot_*.ckpt  (HOME=$work)"
series=$(basename "$work"/opal_snapshot_*.ckpt)
opal-restart -v "$series" > "$work/restarted.log"
head -n 3 "$work/restarted.log"; echo "..."; tail -n 2 "$work/restarted.log"
say "the restarted program continued from its checkpoint and finished"
