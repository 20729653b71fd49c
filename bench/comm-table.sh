#!/usr/bin/env bash
# The communication table: 8 peers, the tiny GPT, the embedded corpus, the same tokens for every
# method (2400 inner steps × batch 8 × 64 per peer), links of 10 Mbit/s and 100 ms RTT.
# Writes bench/results/comm-*.csv, the table (bench/results/comm-table.md) and a plot.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tessera-cli
mkdir -p bench/results
csvs=()
for m in ddp diloco-f32 diloco-int8 sparseloco noloco demo; do
  start=$(date +%s)
  ./target/release/tessera sim --config "bench/comm/$m.toml" --csv "bench/results/comm-$m.csv" 2>&1 | tail -2
  echo "$m: $(( $(date +%s) - start )) s of host time"
  csvs+=("bench/results/comm-$m.csv")
done
./target/release/tessera bench comm-report --out-dir bench/results "${csvs[@]}" | tee bench/results/comm-table.md
