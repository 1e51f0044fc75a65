#!/usr/bin/env bash
# Builds the outpost_batch wheel and installs it into a private virtualenv (target/py) with what
# its tests use. Idempotent; scripts/test.sh runs it. Prints the venv's python at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/py
if ! python3 -m venv --help >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip
    else
        echo "build.sh: please install python3-venv" >&2
        exit 1
    fi
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r cloud/python/requirements-test.txt
# The wheel: abi3 (CPython >= 3.8), release profile, into target/wheels.
"$venv/bin/maturin" build --quiet --release --manifest-path cloud/python/Cargo.toml \
    --interpreter "$venv/bin/python" --out target/wheels
wheel=$(ls -t target/wheels/outpost_batch-*.whl | head -n1)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
echo "$venv/bin/python"
