#!/usr/bin/env bash
# Determinism across builds and SIMD paths: a baseline x86-64 build and a `-C target-cpu=native`
# build each run the test suite's reference training (`tessera bench reference-run`, built here as
# the small `reference_run` example of tessera-model so the networking stack is not rebuilt: tiny GPT,
# 20 steps, seed 1234, batch 4) once per SIMD path this CPU supports. Every run must print the
# golden state hash of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
golden=$(grep -oE '[0-9a-f]{64}' crates/tessera-model/tests/common/mod.rs | head -1)
base_dir=${CARGO_TARGET_DIR:-target}
fail=0
for build in baseline native; do
  dir="$base_dir/determinism-$build"
  flags=""
  [ "$build" = native ] && flags="-C target-cpu=native"
  echo "building ($build) into $dir"
  RUSTFLAGS="$flags" CARGO_TARGET_DIR="$dir" cargo build --release -q -p tessera-model --example reference_run
  for path in scalar avx2 avx512; do
    if ! out=$(TESSERA_SIMD=$path "$dir/release/examples/reference_run" 2 2>&1); then
      if grep -q "cannot run" <<<"$out"; then echo "  $build/$path: not supported by this CPU, skipped"; continue; fi
      echo "$out"; exit 1
    fi
    hash=$(grep -oE 'state-hash: [0-9a-f]{64}' <<<"$out" | cut -d' ' -f2)
    if [ "$hash" = "$golden" ]; then
      echo "  $build/$path: $hash ok"
    else
      echo "  $build/$path: $hash DIFFERS from golden $golden"; fail=1
    fi
  done
done
[ "$fail" = 0 ] && echo "build determinism: all runs match the golden hash"
exit "$fail"
