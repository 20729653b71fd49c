#!/usr/bin/env bash
# Quality bar: trains `small` on the embedded corpus with bench/quality.toml, timing the whole
# run, then samples text from the final checkpoint. Results land in bench/out/quality/ and are
# copied to bench/results/ (metrics CSV, loss plot, samples) for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tessera-cli
rm -rf bench/out/quality
mkdir -p bench/out
start=$(date +%s)
./target/release/tessera train --config bench/quality.toml 2>&1 | tee bench/out/quality.log
end=$(date +%s)
echo "wall-clock: $((end - start)) s" | tee -a bench/out/quality.log
mkdir -p bench/results
{
  for p in "ROMEO:" "To be, or not to be" "KING HENRY."; do
    echo "--- prompt: $p"
    ./target/release/tessera sample --checkpoint bench/out/quality/checkpoints --prompt "$p" \
      --tokens 300 --temperature 0.8 --top-k 40 --seed 1 2>/dev/null
  done
} > bench/results/quality-samples.txt
cp bench/out/quality/metrics.csv bench/results/quality-metrics.csv
cp bench/out/quality/loss.png bench/results/quality-loss.png
cp bench/out/quality.log bench/results/quality-log.txt
