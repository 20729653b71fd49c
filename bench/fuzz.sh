#!/usr/bin/env bash
# S4 of the hostile-peers issue: fuzz every decoder that reads peers' bytes for SECONDS of CPU
# time each (default 3600, one CPU-hour), one after another on one core, then write each
# target's executions, coverage, CPU and wall time and crashes to bench/results/fuzz.txt.
# The clock is the fuzzer process's own CPU time (utime + stime in /proc), read every 5 s, so
# a target sharing its core with other work still gets its full CPU-hour; it is stopped with
# SIGINT, on which libFuzzer prints its final stats. New inputs go to a temporary corpus; the
# committed seeds are only read. A crash stops the script, and its input is in
# fuzz/artifacts/<target>/ (add it to fuzz/corpus/<target>/ and as a test).
# Two streams at once on a 2-core machine: TARGETS="a b c" OUT=file bench/fuzz.sh, twice.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3600}
targets=${TARGETS:-"wire_decode update_decode state_decode reveal_decode dispute_decode ledger_decode"}
out=${OUT:-bench/results/fuzz.txt}
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
{
  echo "# bench/fuzz.sh $secs, at commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)"
  echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; one target at a time, each to $secs s of its own CPU time"
} > "$out"
tmp=$(mktemp -d)
for t in $targets; do
  mkdir -p "$tmp/$t"
  echo "== $t ($secs s)"
  # A wall-clock limit far past the CPU budget: the watcher below stops it first.
  (cd fuzz && exec env RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$tmp/$t" "corpus/$t" -- \
      -max_total_time="$((secs * 20))" -print_final_stats=1) \
      >"$tmp/$t.log" 2>&1 &
  runner=$! start=$(date +%s) cpu=0
  while kill -0 "$runner" 2>/dev/null; do
    sleep 5
    pid=$(pgrep -n -f "release/$t " || true)
    [ -n "$pid" ] || continue
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    cpu=$((ticks / $(getconf CLK_TCK)))
    if [ "$cpu" -ge "$secs" ]; then kill -INT "$pid"; break; fi
  done
  rc=0
  wait "$runner" || rc=$?
  # Stopped by the watcher, libFuzzer exits 72 after its stats; anything else is a crash.
  if { [ "$rc" -ne 0 ] && ! grep -q "libFuzzer: run interrupted" "$tmp/$t.log"; } ||
      grep -q "ERROR: libFuzzer\|SUMMARY: .*Sanitizer\|deadly signal" "$tmp/$t.log"; then
    tail -40 "$tmp/$t.log"
    echo "$t: CRASH (see fuzz/artifacts/$t/)" >> "$out"
    exit 1
  fi
  wall=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$tmp/$t.log" | tail -1 | sed -E 's/.*(cov: [0-9]+ ft: [0-9]+ corp: [0-9]+\/[^ ]+).*/\1/')
  echo "$t: $execs executions in $cpu s of CPU ($wall s of wall time, build included), $last, 0 crashes" | tee -a "$out"
done
rm -rf "$tmp"
