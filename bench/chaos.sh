#!/usr/bin/env bash
# Q of the hostile-peers issue: the demo run (tiny GPT, 4 trainers and a validator as real
# processes, DiLoCo with int8 updates, 30 rounds) once fault-free and once with
# `--chaos SEED`: one random trainer killed with SIGKILL inside every round after the first
# and restarted, and the coordinator killed mid-round twice and restarted from its directory.
# Writes both summaries and the ratio of their final validation losses to
# bench/results/chaos.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
out=${OUT:-bench/results/chaos.txt}
cargo build --release --quiet -p tessera-cli
bin=target/release/tessera
run() { "$bin" demo --dir "$1" "${@:2}" 2>&1 | grep -v '^    |'; }
{
  echo "# bench/chaos.sh $seed, at commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)"
  echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
  echo; echo "## fault-free: tessera demo"; run runs/chaos-clean
  echo; echo "## faults: tessera demo --chaos $seed"; run runs/chaos --chaos "$seed"
} | tee "$out"
loss() { grep "validation loss" | sed -n "$1p" | sed -E 's/.*-> ([0-9.]+).*/\1/'; }
clean=$(loss 1 < "$out"); chaos=$(loss 2 < "$out")
python3 -c "c,f=$clean,$chaos; print(f'final validation loss: fault-free {c}, with faults {f}: {100*(f-c)/c:+.2f}% (target within 2%)')" | tee -a "$out"
