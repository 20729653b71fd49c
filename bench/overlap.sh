#!/usr/bin/env bash
# The overlapped outer step in the simulator (issue "one protocol": DiLoCo's compute
# utilisation). Runs bench/sim/diloco-net.toml (the networked DiLoCo benchmark's setup on the
# simulated network) without overlap, delayed and eager, at two outer learning rates and two
# seeds, and prints each run's utilisation, the simulated time to DDP's final loss in the
# networked benchmark (2.4623) and the loss after 20 rounds. Simulated time is virtual, so
# the figures do not depend on this machine; the run takes about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/overlap.txt}
target=${TARGET:-2.4623}
cargo build --release -q -p tessera-cli
bin=${CARGO_TARGET_DIR:-target}/release/tessera
tmp=$(mktemp -d)
{
  echo "# bench/overlap.sh at commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p')"
  echo "# overlap | outer lr | outer momentum | seed | utilisation | simulated s to $target (round) | val loss after 20 rounds | simulated s | state hash"
} > "$out"
for seed in 1 2; do
  for run in "none 0.7 0.9" "delayed 0.7 0.9" "eager 0.7 0.9" "none 0.5 0.9" "delayed 0.5 0.9" "eager 0.5 0.9"; do
    set -- $run
    sed -e "s/^seed = .*/seed = $seed/" -e "\$a outer_lr = $2" -e "\$a outer_momentum = $3" \
      bench/sim/diloco-net.toml > "$tmp/c.toml"
    "$bin" sim --config "$tmp/c.toml" --overlap "$1" --csv "$tmp/r.csv" > "$tmp/out" 2> "$tmp/err"
    util=$(sed -n 's/.*: \([0-9.]*%\) utilisation.*/\1/p' "$tmp/err")
    hash=$(sed -n 's/^state-hash: //p' "$tmp/out")
    awk -F, -v t="$target" -v row="$1 | $2 | $3 | $seed | $util" -v h="${hash:0:12}" '
      NR > 1 && $8 != "" && $8 < t && !hit { hit = sprintf("%.2f (%d)", $6, $3) }
      END { printf "%s | %s | %s | %.2f | %s\n", row, hit ? hit : "not reached", $8, $6, h }' \
      "$tmp/r.csv" | tee -a "$out"
  done
done
rm -rf "$tmp"
