#!/usr/bin/env bash
# Every networked algorithm against DDP, as real processes (a coordinator and 4 trainers on
# this machine), every process's uplink shaped by tessera-net's test-only shaper (default
# 10 Mbit/s and 50 ms one-way delay). For each: wall-clock until the validation loss first
# reaches DDP's final loss, compute utilisation (each trainer's time training ÷ the span from
# its first training to the end of the run), and bytes (the coordinator's, and each
# trainer's sent + received).
# Usage: bench/net.sh [SHAPE] [ALGO…]     e.g. bench/net.sh 10mbit,50ms ddp diloco
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-10mbit,50ms}
shift || true
algos=("$@")
[ ${#algos[@]} -eq 0 ] && algos=(ddp diloco sparseloco demo)
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
  wait "${pids[@]}" || true
  echo "$name: $(tail -1 "$dir/coordinator.log")"
}
for a in "${algos[@]}"; do
  case $a in
    ddp|demo) run "$a" "bench/net/$a.toml" 10 ;;
    *) run "$a" "bench/net/$a.toml" 1 ;;
  esac
done
python3 - "$out" "$shape" "${algos[@]}" <<'PY'
import re, sqlite3, sys
out, shape, algos = sys.argv[1], sys.argv[2], sys.argv[3:]
def evals(name):
    db = sqlite3.connect(f"{out}/{name}/coord/coordinator.sqlite")
    return db.execute("SELECT round, ms, val_loss FROM evals ORDER BY round").fetchall()
def coord_traffic(name):
    db = sqlite3.connect(f"{out}/{name}/coord/coordinator.sqlite")
    b = db.execute("SELECT value FROM meta WHERE key = 'traffic'").fetchone()[0]
    # postcard varints: (sent, received)
    vals, cur, shift = [], 0, 0
    for byte in b:
        cur |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            vals.append(cur); cur, shift = 0, 0
    return vals[0], vals[1]
def reports(name):
    db = sqlite3.connect(f"{out}/{name}/coord/coordinator.sqlite")
    return db.execute("SELECT COUNT(*), SUM(agrees), SUM(agrees AND computed) FROM reports").fetchone()
def nodes(name):
    rows = []
    for i in range(1, 5):
        text = open(f"{out}/{name}/node{i}.out").read()
        t = dict(re.findall(r"(\w+)=([0-9.]+)", " ".join(l for l in text.splitlines() if l.startswith(("traffic", "compute")))))
        rows.append({k: float(v) for k, v in t.items()})
    return rows
import os
runs = {n: evals(n) for n in algos}
print(f"links: {shape} per process uplink; 4 trainers + coordinator on one machine")
ddp = runs.get("ddp")
if ddp is None and os.path.exists(f"{out}/ddp/coord/coordinator.sqlite"):
    ddp = evals("ddp")  # the target from an earlier DDP run in the same output directory
    print("(DDP's target and time from its earlier run in", f"{out}/ddp)")
target = ddp[-1][2] if ddp else None
if target is not None:
    print(f"target validation loss: {target:.4f} nats/byte (DDP's final)")
print("| method | rounds | final val loss | wall to DDP's final loss | speed-up vs DDP | utilisation (min–max over trainers) | coordinator sent + received | per trainer sent + received (mean) | blob bytes from peers (mean) | reports agreed (computed) |")
print("|---|---|---|---|---|---|---|---|---|---|")
times = {}
for n in algos:
    rows = runs[n]
    hit = next((ms for _, ms, l in rows if target is not None and l <= target + 1e-12), None)
    times[n] = hit
    if ddp and "ddp" not in times:
        times["ddp"] = next((ms for _, ms, l in ddp if l <= target + 1e-12), None)
    cs, cr = coord_traffic(n)
    nd = nodes(n)
    util = [r["train_s"] / r["run_s"] for r in nd if r.get("run_s")]
    per = sum(r["sent"] + r["received"] for r in nd) / len(nd)
    peers = sum(r.get("blob_bytes_from_peers", 0) for r in nd) / len(nd)
    total, agreed, computed = reports(n)
    speed = f"{times['ddp'] / hit:.1f}x" if hit and times.get("ddp") else "—"
    reach = f"{hit / 1e3:.1f} s" if hit else "not reached"
    print(f"| {n} | {rows[-1][0]} | {rows[-1][2]:.4f} | {reach} | {speed} | {100*min(util):.0f}–{100*max(util):.0f}% | "
          f"{(cs + cr) / 1e6:.2f} MB | {per / 1e6:.2f} MB | {peers / 1e6:.3f} MB | {agreed} of {total} ({computed}) |")
print("validation loss over time (round, seconds, nats/byte):")
for n in algos:
    pts = runs[n]
    step = max(1, len(pts) // 5)
    print(f"{n:10s} " + " ".join(f"({r}, {ms/1e3:.1f}, {l:.3f})" for r, ms, l in pts[step - 1::step]))
PY
