#!/usr/bin/env bash
# Matmul GFLOP/s: tessera against numpy (OpenBLAS) in the same run, 1 and 2 threads.
# Usage: bench/matmul.sh [PYTHON] [ROUNDS]   (PYTHON: an interpreter with numpy; default python3)
# The two alternate for ROUNDS rounds (default 3); each keeps its best figure per shape, which
# damps the noise of a shared machine. Prints a Markdown table with the ratio tessera/numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
ROUNDS=${2:-3}
cargo build --release -q -p tessera-cli
out=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    ./target/release/tessera bench matmul --threads "$t" | tail -n +2 >> "$out/all.tsv"
    OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t \
      "$PY" bench/matmul_numpy.py "$t" | tail -n +2 >> "$out/all.tsv"
  done
done
echo "| threads | shape | tessera GFLOP/s | numpy GFLOP/s | ratio |"
echo "|---|---|---|---|---|"
awk -F'\t' '
  { k = $2 "\t" $3; if (!(k in seen)) { seen[k] = 1; order[n++] = k }
    if ($7 > best[$1 "\t" k]) best[$1 "\t" k] = $7 }
  END { for (i = 0; i < n; i++) { split(order[i], p, "\t"); a = best["tessera\t" order[i]]; b = best["numpy\t" order[i]]
        printf "| %s | %s | %.1f | %.1f | %.2f |\n", p[1], p[2], a, b, a / b } }' "$out/all.tsv"
rm -rf "$out"
