#!/usr/bin/env bash
# GPT training throughput and peak memory: tessera against PyTorch CPU fp32 in the same run.
# Usage: bench/gpt.sh [PYTHON] [STEPS]   (PYTHON: an interpreter with torch; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
STEPS=${2:-10}
cargo build --release -q -p tessera-cli
echo "| threads | impl | tokens/s | ratio tessera/impl | peak RSS MiB |"
echo "|---|---|---|---|---|"
for t in 1 2; do
  ours=$(./target/release/tessera bench gpt --preset small --batch 16 --threads "$t" --steps "$STEPS" | tail -1)
  ours_tps=$(cut -f6 <<<"$ours"); ours_rss=$(cut -f7 <<<"$ours")
  echo "| $t | tessera ($(cut -f8 <<<"$ours")) | $ours_tps | 1.00 | $ours_rss |"
  for attn in manual sdpa; do
    ref=$(OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$PY" bench/gpt_torch.py "$t" "$STEPS" small 16 "$attn" | tail -1)
    awk -F'\t' -v t="$t" -v o="$ours_tps" '{ printf "| %s | %s (%s) | %s | %.2f | %s |\n", t, $1, $8, $6, o/$6, $7 }' <<<"$ref"
  done
done
