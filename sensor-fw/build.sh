#!/usr/bin/env bash
# Builds the RP2040 node firmware: Outpost's bootloader and the node application, each as ELF,
# BIN and UF2, plus a factory image (bootloader and application in one BIN for a blank flash).
#
#   sensor-fw/build.sh --fleet-keys fleet/firmware.pub [--version 1.2.0] [--hw-rev 1]
#                      [--sample-interval-ms 1000] [--profile prod|dev]
#                      [--features cycle-marks,...] [--out DIR]
#
# --fleet-keys  the fleet's firmware public keys (`outpost firmware keygen` writes firmware.pub);
#               the image takes updates signed by them and nothing else. Required.
# --version     the image's version, MAJOR.MINOR.PATCH (default 0.1.0); sign the BIN with the
#               same: `outpost firmware sign --version 1.2.0 --hw-rev 1 outpost-node-1.2.0.bin`.
# --sample-interval-ms  time between samples (default 1000: one a second).
# --profile     prod (default): no debug console, no unauthenticated command, no test feature.
#               dev: adds the `dev` feature, and allows --features (cycle-marks,
#               test-never-confirm).
# --out         where the files go (default sensor-fw/rp2040/target/images).
#
# Installs what it needs from Debian when it is missing (as root): rustup has only the host
# target here, so the build uses Debian's rustc-web with core built from rust-web-src
# (-Zbuild-std=core, RUSTC_BOOTSTRAP), lld-22 as the linker and llvm-22's objcopy and size;
# elf2uf2-rs (without its serial-port feature) is installed into the target directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
workspace="$here/rp2040"

fleet_keys="" version="0.1.0" hw_rev="1" sample_interval_ms="1000" profile="prod" features="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --fleet-keys) fleet_keys="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --hw-rev) hw_rev="$2"; shift 2 ;;
    --sample-interval-ms) sample_interval_ms="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --features) features="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ -n "$fleet_keys" ] || { echo "build.sh: --fleet-keys FILE is required (see --help)" >&2; exit 2; }
[ -r "$fleet_keys" ] || { echo "build.sh: cannot read $fleet_keys" >&2; exit 2; }
fleet_keys="$(cd "$(dirname "$fleet_keys")" && pwd)/$(basename "$fleet_keys")"
case "$profile" in
prod)
    [ -z "$features" ] || {
        echo "build.sh: --features ($features) is for development images; use --profile dev" >&2
        exit 2
    }
    suffix="" ;;
dev)
    features="dev${features:+,$features}"
    suffix="-dev" ;;
*) echo "build.sh: --profile is prod or dev, not $profile" >&2; exit 2 ;;
esac
target_dir="${CARGO_TARGET_DIR:-$workspace/target}"
out="${out:-$target_dir/images}"
mkdir -p "$out"

# The toolchain, from Debian only.
missing=()
for package in rustc-web cargo-web rust-web-src lld-22 llvm-22; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$' ||
        missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "build.sh: please install: ${missing[*]}" >&2
        exit 1
    fi
fi
tools="$target_dir/tools"
if [ ! -x "$tools/bin/elf2uf2-rs" ]; then
    # With the host's cargo (rustup); the serial-port feature would need libudev for nothing.
    env -u RUSTC -u CARGO cargo install --quiet --locked --no-default-features \
        --root "$tools" elf2uf2-rs --version 2.2.0
fi

export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target_dir"
export OUTPOST_FW_FLEET_KEYS="$fleet_keys" OUTPOST_FW_VERSION="$version" OUTPOST_FW_HW_REV="$hw_rev"
export OUTPOST_FW_SAMPLE_INTERVAL_MS="$sample_interval_ms"
cd "$workspace"
/usr/bin/cargo build --release --locked -p outpost-bootloader-rp2040
/usr/bin/cargo build --release --locked -p outpost-node-rp2040 ${features:+--features "$features"}

elf_dir="$target_dir/thumbv6m-none-eabi/release"
# The bootloader does not depend on the version or the keys: one name.
emit() {
    local elf="$1" name="$2"
    cp "$elf" "$out/$name.elf"
    llvm-objcopy-22 -O binary "$out/$name.elf" "$out/$name.bin"
    "$tools/bin/elf2uf2-rs" "$out/$name.elf" "$out/$name.uf2" >/dev/null
}
emit "$elf_dir/outpost-bootloader-rp2040" outpost-bootloader
app="outpost-node-$version$suffix"
emit "$elf_dir/outpost-node-rp2040" "$app"

# The factory image: the bootloader, erased flash up to ACTIVE (0x7000, boot/layout.rs), the
# application. STATE stays erased: the first boot is a plain one.
active_offset=$((0x7000))
bootloader_size=$(stat -c %s "$out/outpost-bootloader.bin")
[ "$bootloader_size" -le $((0x6000)) ] || { echo "build.sh: bootloader larger than 24 KiB" >&2; exit 1; }
{
    cat "$out/outpost-bootloader.bin"
    head -c $((active_offset - bootloader_size)) /dev/zero | tr '\0' '\377'
    cat "$out/$app.bin"
} >"$out/$app-factory.bin"

echo "build.sh: $profile image $version (hw rev $hw_rev${features:+, features $features}) in $out:"
(cd "$out" && llvm-size-22 outpost-bootloader.elf "$app.elf" && ls -l outpost-bootloader.* "$app".* "$app-factory.bin" | awk '{print "  " $5 "\t" $9}')
