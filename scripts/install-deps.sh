#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine: a C compiler and
# pkg-config (apt); and, unless --minimal is given (the demo needs none of it), man and
# groff for the man page tests, Debian's python3, curl and sqlite3 for the criu tests and
# libaio-dev for CRIU's zdtm tests (apt), cbindgen pinned to the version the header was
# made with (cargo), CRIU >= 4 (scripts/install-criu.sh) and Slurm with munge
# (scripts/install-slurm.sh).
# Idempotent: what is already there is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."
full=1
[ "${1:-}" = "--minimal" ] && full=0
log() { echo "install-deps: $*" >&2; }
command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }

tools=(cc:gcc pkg-config:pkg-config)
# The criu tests run these unmodified Debian programs (by path: a python3 of pyenv's
# elsewhere in PATH is no Debian binary) under the library.
[ $full = 1 ] && tools+=(man:man-db groff:groff-base /usr/bin/python3:python3 /usr/bin/curl:curl
    /usr/bin/sqlite3:sqlite3)
missing=()
for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
# zdtm's aio00 (scripts/zdtm.sh) includes libaio.h
if [ $full = 1 ] && ! dpkg -s libaio-dev >/dev/null 2>&1; then missing+=(libaio-dev); fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then log "need root to install: ${missing[*]}"; exit 1; fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ $full = 1 ]; then
    CBINDGEN_VERSION=0.27.0
    TOOLS=${OPALCRS_TOOLS:-/opt/opalcrs-tools}
    if ! "$TOOLS/bin/cbindgen" --version 2>/dev/null | grep -q "$CBINDGEN_VERSION"; then
        log "installing cbindgen $CBINDGEN_VERSION into $TOOLS"
        cargo install --quiet --locked cbindgen --version "$CBINDGEN_VERSION" --root "$TOOLS"
    fi
    bash scripts/install-criu.sh "${CRIU_PREFIX:-/opt/criu}"
    bash scripts/install-slurm.sh
fi
