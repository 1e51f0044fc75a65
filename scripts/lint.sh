#!/usr/bin/env bash
# The checks to run before each commit: formatting and clippy with warnings as errors, for the
# workspace and the Python decoder's own workspace (cloud/python). scripts/test.sh (CI) checks the
# formatting too, but not clippy: on a clean machine clippy checks every dependency, ten minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
(cd cloud/python && cargo fmt --check)
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd cloud/python && cargo clippy --release --locked -- -D warnings)
