#!/usr/bin/env bash
# The cost of determinism: tessera's exact path against its own non-deterministic fast path
# (`--nondeterministic`: threads split one matmul's sum over k), same build, same run.
# GPT `small` training at batch 16 × 128 at 1 and 2 threads, and the matmul shapes at 2 threads.
# At 1 thread there is no second thread to split a sum with, so both runs are the same code.
# Usage: bench/determinism-cost.sh [STEPS] [ROUNDS]   (defaults 10 and 3; best of ROUNDS)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-10}
ROUNDS=${2:-3}
cargo build --release -q -p tessera-cli
bin=./target/release/tessera
out=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    for f in "" --nondeterministic; do
      $bin bench gpt --preset small --batch 16 --threads "$t" --steps "$STEPS" $f | tail -1 >> "$out/gpt.tsv"
    done
  done
  for f in "" --nondeterministic; do
    $bin bench matmul --threads 2 $f | tail -n +2 >> "$out/mm.tsv"
  done
done
echo "path: $(cut -f8 "$out/gpt.tsv" | head -1)"
echo
echo "| threads | exact tokens/s | fast-path tokens/s | exact ÷ fast (best of $ROUNDS) |"
echo "|---|---|---|---|"
awk -F'\t' '{ k = $2; if ($6 > b[$1 "\t" k]) b[$1 "\t" k] = $6; t[k] = 1 }
  END { for (k = 1; k <= 2; k++) if (k in t) printf "| %d | %.0f | %.0f | %.2f |\n", k, b["tessera\t" k], b["tessera-nondet\t" k], b["tessera\t" k] / b["tessera-nondet\t" k] }' "$out/gpt.tsv"
echo
echo "| shape (2 threads) | exact GFLOP/s | fast-path GFLOP/s | exact ÷ fast |"
echo "|---|---|---|---|"
awk -F'\t' '{ k = $3; if (!(k in seen)) { seen[k] = 1; order[n++] = k } if ($7 > b[$1 "\t" k]) b[$1 "\t" k] = $7 }
  END { for (i = 0; i < n; i++) { k = order[i]; printf "| %s | %.1f | %.1f | %.2f |\n", k, b["tessera\t" k], b["tessera-nondet\t" k], b["tessera\t" k] / b["tessera-nondet\t" k] } }' "$out/mm.tsv"
rm -rf "$out"
