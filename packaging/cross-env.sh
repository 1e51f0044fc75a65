# Environment for cross-building Outpost for aarch64-unknown-linux-gnu with Debian's toolchain.
# Sourced by build-deb.sh; source it by hand to run cargo for arm64 yourself. scripts/test.sh
# sources it too, for the thumbv6m-none-eabi build of the no_std crates (-Zbuild-std=core).
#
# Debian's rustc-web ships no prebuilt aarch64 std, so std is built from rust-web-src with
# -Zbuild-std (RUSTC_BOOTSTRAP unlocks it on this stable compiler). /usr/bin comes first on PATH:
# otherwise /usr/bin/cargo would call a rustup rustc, which has no aarch64 std either.
export PATH="/usr/bin:$PATH"
export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# `cargo run/test --target aarch64-unknown-linux-gnu` under qemu-user. `-L /usr/aarch64-linux-gnu`
# is the cross libc; once a multiarch libc6:arm64 is installed it hangs (the cross ld.so finds the
# other libc build): use `-L /` then.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
