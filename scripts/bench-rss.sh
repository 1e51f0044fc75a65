#!/usr/bin/env bash
# Gateway resident memory with N simulated nodes at R Hz (defaults: 32 nodes, 10 Hz, 60 s).
#   scripts/bench-rss.sh [NODES] [RATE_HZ] [SECONDS]
# Runs the release gateway against outpost-node-sim processes on ptys; prints the gateway's
# VmRSS (now) and VmHWM (peak) from /proc, and the readings it stored meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-32}; rate=${2:-10}; seconds=${3:-60}
cargo build --release --quiet -p outpost -p outpost-node --features outpost-node/std --bins
dir=$(mktemp -d /tmp/outpost-rss-XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  printf '[gateway]\nid = "bench"\ndata_dir = "%s/data"\n[api]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' "$dir" "$port"
  for i in $(seq 0 $((nodes - 1))); do printf '[[serial]]\npath = "%s/tty%d"\n' "$dir" "$i"; done
} > "$dir/outpost.toml"
for i in $(seq 0 $((nodes - 1))); do
  target/release/outpost-node-sim --pty "$dir/tty$i" --uid "$(printf 'be%014x' "$i")" --seed "$i" --rate "$rate" &
  pids+=($!)
done
sleep 1
target/release/outpost run --config "$dir/outpost.toml" &
gw=$!; pids+=($gw)
stored() { curl -s "http://127.0.0.1:$port/api/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["readings_stored"])'; }
sleep 5
first=$(stored)
sleep "$seconds"
last=$(stored)
echo "nodes=$nodes rate=${rate}Hz window=${seconds}s"
echo "readings stored in window: $((last - first)) ($(( (last - first) / seconds ))/s)"
grep -E 'VmRSS|VmHWM' "/proc/$gw/status"
echo "threads: $(ls /proc/$gw/task | wc -l)"
