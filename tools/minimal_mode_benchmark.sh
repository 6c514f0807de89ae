#!/usr/bin/env bash
# What the bookkeeping costs: runs SmartAlloc's frame and pool benchmarks
# built normally (statistics, budget and debug branches compiled in, all
# off) and built with --config=minimal (compiled out), one after the other,
# and prints the two side by side.
#   bash tools/minimal_mode_benchmark.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
filter='BM_SmartPool_Pair/(8|64|512)/threads:1|BM_SmartPool_Batch/64/threads:1|BM_SmartFrame_Alloc/threads:1'
run() {
  ./bazelw run -c opt "$@" //alloc:pool_benchmark_glibc -- \
    --benchmark_filter="$filter" --benchmark_repetitions=9 2>/dev/null |
    sed -n 's/.*RESULT /RESULT /p'
}
echo "building and running the default build..." >&2
default=$(run)
echo "building and running --config=minimal..." >&2
minimal=$(run --config=minimal)
printf '%s\n' "$default" | sed 's/^RESULT /default /' >/tmp/framealloc_minimal.$$
printf '%s\n' "$minimal" | sed 's/^RESULT /minimal /' >>/tmp/framealloc_minimal.$$
awk '
{ v[$1 SUBSEP $2] = $3; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
END {
  printf "%-34s %12s %12s %9s\n", "benchmark (ns per operation)", "default", "minimal", "cost"
  for (i = 1; i <= n; i++) {
    k = order[i]; d = v["default" SUBSEP k]; m = v["minimal" SUBSEP k]
    cost = (m > 0) ? 100 * (d - m) / m : 0  # Parenthesized: ">" in printf redirects.
    printf "%-34s %12.3f %12.3f %+8.1f%%\n", k, d, m, cost
  }
  print "(cost: how much slower the default build is; medians of 9 interleaved repetitions each)"
}' /tmp/framealloc_minimal.$$
rm -f /tmp/framealloc_minimal.$$
