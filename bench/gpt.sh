#!/usr/bin/env bash
# GPT `small` training throughput (batch 16 × 128) and peak memory: tessera against PyTorch CPU
# fp32 (the identical model in bench/gpt_torch.py, with tessera's attention and with SDPA).
# Usage: bench/gpt.sh [PYTHON] [STEPS] [ROUNDS]   (PYTHON: an interpreter with torch)
# Implementations alternate for ROUNDS rounds (default 2); each keeps its best tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
STEPS=${2:-10}
ROUNDS=${3:-2}
cargo build --release -q -p tessera-cli
out=$(mktemp)
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    ./target/release/tessera bench gpt --preset small --batch 16 --threads "$t" --steps "$STEPS" | tail -1 >> "$out"
    for attn in manual sdpa; do
      OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$PY" bench/gpt_torch.py "$t" "$STEPS" small 16 "$attn" | tail -1 >> "$out"
    done
  done
done
echo "| threads | impl | tokens/s (best of $ROUNDS) | tessera ÷ impl | peak RSS MiB |"
echo "|---|---|---|---|---|"
awk -F'\t' '
  { k = $2 "\t" $1; if (!(k in seen)) { seen[k] = 1; order[n++] = k; label[k] = $1 " (" $8 ")" }
    if ($6 > best[k]) best[k] = $6; rss[k] = $7 }
  END { for (i = 0; i < n; i++) { k = order[i]; split(k, p, "\t"); ours = best[p[1] "\ttessera"]
        printf "| %s | %s | %.0f | %.2f | %s |\n", p[1], label[k], best[k], ours / best[k], rss[k] } }' "$out"
rm -f "$out"
