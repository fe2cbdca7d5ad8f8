#!/usr/bin/env bash
# Every test, from a fresh machine: installs what is missing (C compiler, pkg-config,
# pinned cbindgen, CRIU >= 4), then lints and runs the whole suite: unit and property
# tests, real C programs against the built library, real CRIU on real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="/opt/opalcrs-tools/bin:$PATH"
cargo fmt --check
cargo clippy --locked --all-targets --quiet -- -D warnings
# The C tests link the built libopalcrs.so, which `cargo test` alone does not produce.
cargo build --locked
cargo test --locked --all-targets
