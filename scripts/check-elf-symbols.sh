#!/usr/bin/env bash
# Proves that a built libopalcrs.so exports only the intended symbols (opal_* and
# opalcrs_* functions, the opal_crs data object, and the two libc functions it wraps on
# purpose: unshare and setns) and that its SONAME is libopalcrs.so.0. A preloaded
# library interposes on every symbol it exports, so a stray one (a Rust or dependency
# symbol) could break a host program.
set -euo pipefail
lib=${1:?usage: check-elf-symbols.sh path/to/libopalcrs.so}
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ "$soname" != "libopalcrs.so.0" ]; then
    echo "check-elf-symbols: $lib has SONAME '$soname', expected libopalcrs.so.0" >&2
    exit 1
fi
stray=$(nm -D --defined-only "$lib" | awk '{print $NF}' | grep -v -E '^(opal_|opalcrs_|unshare$|setns$)' || true)
if [ -n "$stray" ]; then
    echo "check-elf-symbols: $lib exports symbols outside opal_*/opalcrs_*/unshare/setns:" >&2
    echo "$stray" >&2
    exit 1
fi
data=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[BDR]$/ {print $3}')
if [ "$data" != "opal_crs" ]; then
    echo "check-elf-symbols: exported data should be opal_crs only, found: $data" >&2
    exit 1
fi
echo "check-elf-symbols: $lib: SONAME $soname, $(nm -D --defined-only "$lib" | wc -l) symbols, all opal_*/opalcrs_* but unshare and setns"
