#!/usr/bin/env bash
# Gateway resident memory and CPU with simulated nodes at R Hz, for each node count given.
#   scripts/bench-rss.sh [RATE_HZ] [SECONDS] [NODE_COUNTS...]     (defaults: 10 60 1 32)
# Runs the release gateway against outpost-node-sim processes on ptys; prints, per node count, the
# gateway's VmRSS (end) and VmHWM (peak) from /proc, its CPU time and the readings it stored in the
# window. The 1-node run is the baseline the 32-node run is compared with.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-10}; seconds=${2:-60}; shift $(( $# > 2 ? 2 : $# )) || true
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(1 32)
cargo build --release --quiet -p outpost -p outpost-node --features outpost-node/std --bins
pids=(); dir=""
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -z "$dir" ] || rm -rf "$dir"; pids=(); }
trap cleanup EXIT
api() { python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1]))["readings_stored"])' "http://127.0.0.1:$port/api/v1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-6s %-10s %-14s %-10s %-10s %-8s\n' nodes rate readings/s VmRSS_kB VmHWM_kB cpu_%
for nodes in "${counts[@]}"; do
  dir=$(mktemp -d /tmp/outpost-rss-XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  {
    printf '[gateway]\nid = "bench"\ndata_dir = "%s/data"\n[api]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "error"\n' "$dir" "$port"
    for i in $(seq 0 $((nodes - 1))); do printf '[[serial]]\npath = "%s/tty%d"\n' "$dir" "$i"; done
  } > "$dir/outpost.toml"
  for i in $(seq 0 $((nodes - 1))); do
    target/release/outpost-node-sim --pty "$dir/tty$i" --uid "$(printf 'be%014x' "$i")" --seed "$i" --rate "$rate" 2>/dev/null &
    pids+=($!)
  done
  sleep 1
  target/release/outpost run --config "$dir/outpost.toml" &
  gw=$!; pids+=($gw)
  sleep 5
  first=$(api); t0=$(cpu_ticks "$gw")
  sleep "$seconds"
  last=$(api); t1=$(cpu_ticks "$gw")
  rss=$(awk '/VmRSS/{print $2}' "/proc/$gw/status"); hwm=$(awk '/VmHWM/{print $2}' "/proc/$gw/status")
  cpu=$(python3 -c "print(f'{100*($t1-$t0)/$hz/$seconds:.1f}')")
  printf '%-6s %-10s %-14s %-10s %-10s %-8s\n' "$nodes" "${rate}Hz" "$(( (last - first) / seconds ))" "$rss" "$hwm" "$cpu"
  cleanup
done
