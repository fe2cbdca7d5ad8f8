#!/usr/bin/env bash
# Builds the opalcrs fuzz targets with cargo-afl and fuzzes each for SECONDS (default 600),
# two targets at a time. A second run resumes from fuzz/out/ (delete it to start afresh).
# Prints execs_done, execs_per_sec and saved_crashes per target; exits 1 if any target
# has saved a crash (inputs in fuzz/out/<target>/default/crashes/).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]     (CARGO_TARGET_DIR defaults to fuzz/target)
set -euo pipefail

seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(metadata manifest param_file control)
parallel=${FUZZ_JOBS:-2}

cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

if ! cargo afl --version >/dev/null 2>&1; then
    echo "== installing cargo-afl"
    cargo install cargo-afl --locked
fi
# Builds AFL++'s LLVM runtime for the current rustc; cargo-afl >= 0.16 already does this
# at install time, and then this step reports "already built", which is fine.
cargo afl config --build >/dev/null 2>&1 || true

echo "== building"
cargo afl build --release

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_AUTORESUME=1
mkdir -p out
running=0
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s (log: fuzz/out/$t.log)"
    cargo afl fuzz -i "corpus/$t" -o "out/$t" -V "$seconds" "$CARGO_TARGET_DIR/release/$t" \
        >"out/$t.log" 2>&1 &
    running=$((running + 1))
    if [ "$running" -ge "$parallel" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

status=0
for t in "${targets[@]}"; do
    stats=out/$t/default/fuzzer_stats
    if [ ! -f "$stats" ]; then
        echo "$t: no fuzzer_stats (see out/$t.log)"; status=1; continue
    fi
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    printf '%-11s execs_done=%s execs_per_sec=%s saved_crashes=%s\n' \
        "$t" "$(get execs_done)" "$(get execs_per_sec)" "$(get saved_crashes)"
    if [ "$(get saved_crashes)" != "0" ]; then
        status=1
        ls out/$t/default/crashes/ | grep -v README || true
    fi
done
exit $status
