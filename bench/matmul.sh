#!/usr/bin/env bash
# Matmul GFLOP/s: tessera against numpy (OpenBLAS) in the same run, 1 and 2 threads.
# Usage: bench/matmul.sh [PYTHON]   (PYTHON: an interpreter with numpy; default python3)
# Prints one table row per shape with both figures and the ratio tessera/numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
cargo build --release -q -p tessera-cli
out=$(mktemp -d)
for t in 1 2; do
  ./target/release/tessera bench matmul --threads "$t" > "$out/tessera-$t.tsv"
  OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t \
    "$PY" bench/matmul_numpy.py "$t" > "$out/numpy-$t.tsv"
done
echo "| threads | shape | tessera GFLOP/s | numpy GFLOP/s | ratio |"
echo "|---|---|---|---|---|"
for t in 1 2; do
  paste "$out/tessera-$t.tsv" "$out/numpy-$t.tsv" | tail -n +2 |
    awk -F'\t' '{ printf "| %s | %s | %.1f | %.1f | %.2f |\n", $2, $3, $7, $14, $7/$14 }'
done
rm -rf "$out"
