#!/usr/bin/env bash
# Runs Outpost's whole test suite on a fresh Debian machine with rustup stable, installing what the
# tests need first. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a C compiler for the bundled SQLite, Mosquitto for the broker tests (Debian puts
# it in /usr/sbin, often not on PATH). Installed only when missing.
missing=()
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "test.sh: please install: ${missing[*]}" >&2
        exit 1
    fi
fi

export CARGO_TERM_COLOR=never
# The binaries the end-to-end tests run, built up front so build time is not test time.
cargo build --workspace --bins --locked
# The no_std crates must build without std: the firmware uses them.
cargo build -p outpost-proto -p outpost-node --no-default-features --locked
cargo test --workspace --locked
