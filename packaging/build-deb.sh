#!/usr/bin/env bash
# Builds the Outpost Debian package with cargo-deb:
#
#   packaging/build-deb.sh [--arch amd64|arm64] [--out DIR]
#
# and prints the path of outpost_<version>_<arch>.deb (in DIR, default target/debs/).
#
# amd64 is built natively; arm64 is cross-built with Debian's rustc-web and -Zbuild-std (see
# cross-env.sh), and its binary is run under qemu-aarch64-static to generate the man page and to
# check the shipped config. Both use the `deb` profile (release, fully stripped) and a target
# dir of their own (target/deb, target/cross) that later runs reuse. What goes into the package
# is declared in gateway/Cargo.toml, [package.metadata.deb]; the generated files are staged in
# packaging/staging/ (git-ignored) first:
#   - outpost.toml: config/outpost.toml with the example [[serial]] lines and the example
#     gateway id commented out, so a fresh install starts with no hardware and uses the host
#     name as its id;
#   - outpost.1.gz: the man page, from `outpost man`.
# Needs: cargo-deb (cargo install cargo-deb --locked); for arm64 also rustc-web cargo-web rust-web-src
# gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static (apt-get). scripts/test.sh
# installs all of them.
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "build-deb.sh: $*" >&2
    exit 1
}

arch=amd64
out=
while [ $# -gt 0 ]; do
    case $1 in
        --arch) [ $# -ge 2 ] || usage; arch=$2; shift 2 ;;
        --arch=*) arch=${1#--arch=}; shift ;;
        --out | -o) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h | --help) usage ;;
        *) echo "build-deb.sh: unknown argument: $1" >&2; usage ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=$(mkdir -p "${out:-target/debs}" && cd "${out:-target/debs}" && pwd)
staging=$repo/packaging/staging
export CARGO_TERM_COLOR=never
# Run from inside cargo (tests/install.rs runs this script), the caller's per-crate variables
# would leak into these builds, and ring's build script watches some of them (CARGO_PKG_NAME, …):
# every change of caller would rebuild ring and all above it.
while IFS= read -r var; do
    unset "$var"
done < <(compgen -e | grep -E '^(CARGO_(PKG_|MANIFEST_|CRATE_|BIN_|PRIMARY_PACKAGE|TARGET_TMPDIR)|OUT_DIR$)')

command -v cargo-deb >/dev/null ||
    die "cargo-deb is missing: cargo install cargo-deb --locked (scripts/test.sh does it)"

started=$SECONDS
case $arch in
    amd64)
        [ "$(uname -m)" = x86_64 ] || die "amd64 is built natively, on an x86_64 host"
        export CARGO_TARGET_DIR=$repo/target/deb
        cargo build --locked --profile deb -p outpost --bin outpost --bin outpost-update
        binary=$CARGO_TARGET_DIR/deb/outpost
        run=("$binary")
        target_args=()
        ;;
    arm64)
        for tool in /usr/bin/rustc /usr/bin/cargo aarch64-linux-gnu-gcc qemu-aarch64-static; do
            command -v "$tool" >/dev/null || die "$tool is missing: apt-get install rustc-web cargo-web" \
                "rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static"
        done
        [ -d /usr/lib/rustlib/src/rust/library ] || die "std sources missing: apt-get install rust-web-src"
        # shellcheck source=packaging/cross-env.sh
        . "$repo/packaging/cross-env.sh"
        export CARGO_TARGET_DIR=$repo/target/cross
        triple=aarch64-unknown-linux-gnu
        /usr/bin/cargo build --locked --profile deb --target "$triple" \
            -Zbuild-std=std,panic_abort -p outpost --bin outpost --bin outpost-update
        binary=$CARGO_TARGET_DIR/$triple/deb/outpost
        # The cross libc, unless a multiarch libc6:arm64 is installed: then that one (with the
        # cross one, its ld.so would pick up the other libc build and hang).
        sysroot=/usr/aarch64-linux-gnu
        [ -e /lib/ld-linux-aarch64.so.1 ] && sysroot=/
        run=(qemu-aarch64-static -L "$sysroot" "$binary")
        target_args=(--target "$triple")
        ;;
    *) die "unknown architecture '$arch': amd64 or arm64" ;;
esac
echo "build-deb.sh: $arch binary built in $((SECONDS - started)) s: $binary" >&2

# One packaging at a time: the staged files have fixed paths (named in gateway/Cargo.toml).
mkdir -p "$staging"
exec 9>"$staging.lock"
flock 9

# The man page, generated from the CLI.
if ! "${run[@]}" man >"$staging/outpost.1.tmp" 2>"$staging/man.err"; then
    cat "$staging/man.err" >&2
    die "\`outpost man\` failed: this outpost cannot generate its man page (the hidden 'man' subcommand is missing?)"
fi
[ -s "$staging/outpost.1.tmp" ] || die "\`outpost man\` printed nothing"
gzip -9 -n -c "$staging/outpost.1.tmp" >"$staging/outpost.1.gz"
rm -f "$staging/outpost.1.tmp" "$staging/man.err"

# The shipped config: the documented example, ready to start on a box with no hardware.
awk '
    BEGIN {
        print "# Installed by the outpost package as /etc/outpost/outpost.toml. Your edits are kept on"
        print "# upgrade; site settings can also go in drop-ins (outpost.d/*.toml). The [[serial]]"
        print "# examples are commented out: uncomment and adapt them for the lines in use."
        print "#"
    }
    /^\[/ { table = $0 }
    # The example id would give every fresh install the same identity: the host name is the default.
    table == "[gateway]" && /^id[ \t]*=/ { print "# " $0; next }
    table == "[[serial]]" && !/^[ \t]*(#|$)/ { print "# " $0; next }
    { print }
' config/outpost.toml >"$staging/outpost.toml"
if grep -q '^\[\[serial\]\]' "$staging/outpost.toml"; then
    die "the shipped config still has [[serial]] entries"
fi
# Checked by the binary being packaged (no drop-ins beside the staged file).
"${run[@]}" check --config "$staging/outpost.toml" >/dev/null ||
    die "the shipped config does not pass \`outpost check\`"

packaged=$SECONDS
# Written beside the output and renamed into it: whoever reads the package of an earlier run
# (a test, while another build runs) reads a whole file, never one being written.
building=$(mktemp -d "$out/.building.XXXXXX")
trap 'rm -rf "$building"' EXIT
deb=$(cargo deb -p outpost --no-build --no-strip --profile deb "${target_args[@]}" -o "$building" | tail -n 1)
[ -f "$deb" ] || die "cargo-deb printed no package path (got: $deb)"

# The changelog's newest entry must be this version, or the package documents another one.
version=$(dpkg-deb -f "$deb" Version)
changelog_version=$(sed -n '1s/^outpost (\([^)]*\)).*/\1/p' packaging/debian/changelog)
if [ "$version" != "$changelog_version" ]; then
    die "package version $version has no entry in packaging/debian/changelog (newest: $changelog_version)"
fi
mv -f "$deb" "$out/"
deb=$out/$(basename "$deb")
echo "build-deb.sh: packaged in $((SECONDS - packaged)) s, total $((SECONDS - started)) s" >&2
echo "$deb"
