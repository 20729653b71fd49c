#!/usr/bin/env bash
# S4 of the hostile-peers issue: fuzz every decoder that reads peers' bytes for SECONDS each
# (default 3600, one CPU-hour), one after another on one core, then write each target's
# executions, coverage and crashes to bench/results/fuzz.txt. New inputs go to a temporary
# corpus; the committed seeds are only read. A crash stops the script, and its input is in
# fuzz/artifacts/<target>/ (add it to fuzz/corpus/<target>/ and as a test).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3600}
targets=${TARGETS:-"wire_decode update_decode state_decode reveal_decode dispute_decode ledger_decode"}
out=${OUT:-bench/results/fuzz.txt}
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
{
  echo "# bench/fuzz.sh $secs, at commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)"
  echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; one target at a time, one core each"
} > "$out"
tmp=$(mktemp -d)
for t in $targets; do
  mkdir -p "$tmp/$t"
  echo "== $t ($secs s)"
  if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$tmp/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1) >"$tmp/$t.log" 2>&1; then
    tail -40 "$tmp/$t.log"
    echo "$t: CRASH (see fuzz/artifacts/$t/)" >> "$out"
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$tmp/$t.log" | tail -1 | sed -E 's/.*(cov: [0-9]+ ft: [0-9]+ corp: [0-9]+\/[^ ]+).*/\1/')
  echo "$t: $execs executions in $secs s, $last, 0 crashes" | tee -a "$out"
done
rm -rf "$tmp"
