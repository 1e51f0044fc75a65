#!/usr/bin/env bash
# Runs Outpost's whole test suite on a fresh Debian machine with rustup stable, installing what the
# tests need first. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# Where the time goes: each step is named with `step`, and the times are printed at the end, pass
# or fail (CI stops at 90 minutes; the tail of its log is what is read first).
step_names=()
step_starts=()
step() {
    step_names+=("$1")
    step_starts+=("$SECONDS")
    echo "test.sh: [$((SECONDS / 60))m$((SECONDS % 60))s] $1" >&2
}
print_steps() {
    local i end
    echo "test.sh: time per step (total ${SECONDS} s):" >&2
    for i in "${!step_names[@]}"; do
        end=${step_starts[$((i + 1))]:-$SECONDS}
        printf 'test.sh: %6d s  %s\n' "$((end - step_starts[i]))" "${step_names[$i]}" >&2
    done
}
trap print_steps EXIT

step "rustfmt"
# Formatting first: it needs nothing else installed and fails in seconds.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo fmt --all --check

step "system packages"
# System packages: a C compiler for the bundled SQLite, Mosquitto for the broker tests (Debian puts
# it in /usr/sbin, often not on PATH). Installed only when missing.
missing=()
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || missing+=(mosquitto)
# A private D-Bus for tests/gateway_health.rs (a fake ModemManager on it).
command -v dbus-daemon >/dev/null || missing+=(dbus-daemon)
# PostgreSQL for the cloud ingest's tests (tests/ingest.rs starts a private cluster of its own with
# initdb on a free port; the package's own cluster is never used).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# tests/diagnostics.rs opens the diagnostics bundle with the standard tools (zstd, tar).
command -v zstd >/dev/null || missing+=(zstd)
command -v tar >/dev/null || missing+=(tar)
# Node.js and npm for the RP2040 emulator (sensor-fw/emu: rp2040js from npm).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# The Debian packages (tests/install.rs): Debian's rustc-web with its std sources and the aarch64
# cross C toolchain for the arm64 cross build, qemu-user to run the arm64 binary, lintian,
# debootstrap and systemd-nspawn for the install test in a booted root, man for
# `systemd-analyze verify` (it checks the unit's Documentation=).
# libfaketime for tests/clock.rs (a gateway without RTC: the clock starts in 1970 and jumps).
# Chromium and its WebDriver for tests/web.rs (the technician's page in a real browser).
# lld-22 and llvm-22 for the RP2040 images (sensor-fw/build.sh, which tests/node_firmware.rs
# runs): the linker behind rustc-web's rust-lld, objcopy and size.
for package in rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
    qemu-user-static lintian systemd-container debootstrap man-db faketime libfaketime \
    chromium chromium-driver lld-22 llvm-22; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$' ||
        missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "test.sh: please install: ${missing[*]}" >&2
        exit 1
    fi
fi

# Prometheus for tests/metrics.rs: `promtool check metrics` on the gateway's /metrics, and a real
# server started by the test (its own config, data directory and free port) that scrapes it.
# Without recommends (node-exporter and the rest are not needed). Its postinst enables the
# packaged service; where systemd runs it listens on 9090, which the test never uses.
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends prometheus
    else
        echo "test.sh: please install: prometheus" >&2
        exit 1
    fi
fi

step "emulator harness (npm)"
# The RP2040 emulator harness (sensor-fw/emu, Node.js + rp2040js; node and npm come with the
# packages above): its unit tests. `npm ci` only when node_modules is older than the lock file.
if [ ! -e sensor-fw/emu/node_modules/.package-lock.json ] ||
    [ sensor-fw/emu/package-lock.json -nt sensor-fw/emu/node_modules/.package-lock.json ]; then
    npm ci --prefix sensor-fw/emu --no-audit --no-fund --loglevel=error
fi
node --test sensor-fw/emu/test/

step "Python decoder wheel"
# The cloud's batch decoder for Python (cloud/python, PyO3 + maturin): the wheel built and
# installed into a private venv (target/py, with pyarrow), then its unit tests; the Rust suite's
# tests/python_decoder.rs and tests/ingest.rs use the same venv.
cloud/python/build.sh
target/py/bin/python -m unittest discover -s cloud/python/tests

# Clippy is scripts/lint.sh, run before each commit: ten minutes of checking every dependency on a
# clean machine, which this suite's 90-minute CI budget cannot spare.
step "thumbv6m builds"
# The no_std crates for the firmware's target, where a std leak (an `extern crate std`, a std-only
# dependency or feature) cannot compile. rustup has no thumbv6m std, so this is Debian's rustc-web
# with core built from rust-web-src (-Zbuild-std), in the cross-env.sh setup of the arm64 build;
# its own target dir so the host build is not invalidated. A library build links nothing: no lld.
(
    # shellcheck source=packaging/cross-env.sh
    . packaging/cross-env.sh
    CARGO_TARGET_DIR=target/thumbv6m /usr/bin/cargo build --locked -Zbuild-std=core \
        --target thumbv6m-none-eabi -p outpost-proto -p outpost-node --no-default-features
    # With embassy-boot: the board firmware (tests/node_firmware.rs, sensor-fw/build.sh) builds it.
)

step "cargo-deb"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
step "workspace binaries"
# The binaries the end-to-end tests run, built up front so build time is not test time.
cargo build --workspace --bins --locked
# The no_std crates must build without std: the firmware uses them.
cargo build -p outpost-proto -p outpost-node --no-default-features --locked
step "test builds"
cargo test --workspace --locked --no-run
# Long jobs run beside the suite, which mostly waits on timers and leaves the CPU idle:
# - the broker-flapping suite (a quarter of an hour, its broker down 20 s of every minute), from
#   its test binary, with its own broker, ports and files;
# - both Debian packages (release builds, arm64 a cross build with its own std: the longest
#   CPU-bound step), at the lowest CPU priority so the tests' processes come first, and then the
#   installation suite (tests/install.rs, ignored by a plain `cargo test`), which needs them. A
#   package is renamed into target/debs whole, so a test never reads one being written;
#   tests/self_update.rs runs build-deb.sh itself, which waits for cargo's lock on the same target
#   dir and finds the package built.
# How a failed test's own words begin in cargo test's output: its section, a panic, or the error
# it returned.
why='^---- .* ----$\|panicked at\|^Error: '
test_exe() {
    cargo test --workspace --locked --test "$1" --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep "/$1-" | tail -n1
}
flapping_bin=$(test_exe flapping)
install_bin=$(test_exe install)
(cd tests && "$flapping_bin" --ignored --nocapture) >target/flapping.log 2>&1 &
flapping=$!
(
    started=$SECONDS
    nice -n 19 packaging/build-deb.sh --arch amd64
    nice -n 19 packaging/build-deb.sh --arch arm64
    echo "test.sh: both Debian packages built beside the tests in $((SECONDS - started)) s"
    started=$SECONDS
    (cd tests && "$install_bin" --ignored)
    echo "test.sh: the installation suite took $((SECONDS - started)) s"
) >target/packages.log 2>&1 &
packages=$!
status=0
step "cargo test (flapping, the Debian packages and their installation suite beside it)"
# Every suite runs even after one fails, so a run shows every failure.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/cargo-test.log || status=$?
step "waiting for the Debian packages and their installation suite"
if ! wait "$packages"; then
    echo "test.sh: a Debian package build or the installation suite failed:" >&2
    grep -A 12 "$why" target/packages.log | grep -v '^\S*\[2m\|^ *at \|^ *[0-9]*: ' |
        head -n 100 >&2 || true
    tail -n 60 target/packages.log >&2
    status=1
fi
grep -h '^test.sh: \|^build-deb.sh:\|^test result:' target/packages.log >&2 || true
step "waiting for the flapping suite"
if ! wait "$flapping"; then
    echo "test.sh: the broker-flapping suite failed:" >&2
    tail -n 60 target/flapping.log >&2
    status=1
fi
grep -h '^figure:' target/flapping.log || true
if [ "$status" != 0 ] && grep -q "$why" target/cargo-test.log; then
    # The failures' own words (a panic, or the error a test returned) at the end of the log,
    # where a truncated CI view still shows them.
    echo "test.sh: why the failed tests failed (all of it in target/cargo-test.log):" >&2
    grep -A 12 "$why" target/cargo-test.log | grep -v '^\S*\[2m\|^ *at \|^ *[0-9]*: ' |
        head -n 200 >&2
fi
exit "$status"
