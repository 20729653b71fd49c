#!/usr/bin/env bash
# DDP against DiLoCo + int8 as real processes (a coordinator and 4 trainers on this machine),
# every process's uplink shaped by tessera-net's test-only shaper (default 10 Mbit/s and 50 ms
# one-way delay): wall-clock until the validation loss first reaches the same target.
# Usage: bench/net.sh [SHAPE]     e.g. bench/net.sh 10mbit,50ms
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-10mbit,50ms}
cargo build --release -q -p tessera-cli
bin=target/release/tessera
data=runs/data/embedded
out=bench/out/net
mkdir -p "$out"
run() {
  local name=$1 cfg=$2 every=$3 dir="$out/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  "$bin" coordinator --config "$cfg" --dir "$dir/coord" --data-dir "$data" --shape "$shape" \
    --eval-every "$every" >"$dir/coordinator.out" 2>"$dir/coordinator.log" &
  local coord=$!
  while [ ! -s "$dir/coord/ticket" ]; do sleep 0.1; done
  local pids=()
  for i in 1 2 3 4; do
    "$bin" node --join "$(cat "$dir/coord/ticket")" --data-dir "$data" --key "$dir/node$i.key" \
      --shape "$shape" --threads 1 >"$dir/node$i.out" 2>"$dir/node$i.log" &
    pids+=($!)
  done
  wait "$coord"
  kill "${pids[@]}" 2>/dev/null || true
  echo "$name: $(tail -1 "$dir/coordinator.log")"
}
run ddp bench/net/ddp.toml 10
run diloco bench/net/diloco.toml 1
python3 - "$out" "$shape" <<'PY'
import sqlite3, sys
out, shape = sys.argv[1], sys.argv[2]
def evals(name):
    db = sqlite3.connect(f"{out}/{name}/coord/coordinator.sqlite")
    return db.execute("SELECT round, ms, val_loss FROM evals ORDER BY round").fetchall()
runs = {n: evals(n) for n in ("ddp", "diloco")}
target = max(r[-1][2] for r in runs.values())  # the loss both runs reach
print(f"links: {shape} per process uplink; 4 trainers + coordinator on one machine")
print(f"target validation loss: {target:.4f} nats/byte (the higher of the two final losses)")
times = {}
for n, rows in runs.items():
    hit = next((ms for _, ms, l in rows if l <= target + 1e-12), None)
    times[n] = hit
    print(f"{n:7s} final loss {rows[-1][2]:.4f} after {rows[-1][0]} rounds, {rows[-1][1]/1e3:7.1f} s; "
          f"reaches target at {hit/1e3:7.1f} s")
print(f"DiLoCo int8 reaches it {times['ddp']/times['diloco']:.1f}x sooner than DDP")
PY
