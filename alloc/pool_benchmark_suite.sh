#!/usr/bin/env bash
# Runs //alloc:pool_benchmark once per malloc (glibc, mimalloc, jemalloc,
# tcmalloc: each linked into its own binary, since each replaces malloc for
# the whole process) and prints one table: SmartAlloc's pool path against
# every malloc, measured in this one run.
#   ./bazelw run -c opt //alloc:pool_benchmark_suite [-- benchmark flags]
set -euo pipefail
runfiles="${RUNFILES_DIR:-$0.runfiles}/framealloc"
[[ -d "$runfiles" ]] || runfiles="$(cd "$(dirname "$0")/.." && pwd)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for peer in glibc mimalloc jemalloc tcmalloc; do
  echo "=== pool_benchmark with ${peer}'s malloc" >&2
  "$runfiles/alloc/pool_benchmark_${peer}" "$@" >"$results.$peer" 2>&1 || {
    cat "$results.$peer" >&2; exit 1; }
  # The reporter's colour codes may precede a line: match anywhere.
  sed -n "s/.*RESULT /${peer} /p" "$results.$peer" >>"$results"
  rm -f "$results.$peer"
done

# Rows: "<peer> <benchmark>/<size>[/threads:N][/manual_time] <ns>".
awk '
function key(name) {  # BM_X_Case/64/threads:2 -> Case/64/threads:2
  sub(/^BM_[A-Za-z]+_/, "", name); sub(/\/manual_time/, "", name); return name
}
{
  peer = $1; name = $2; ns = $3
  if (name ~ /^BM_SmartPool_/) { pool[key(name)] += ns; pool_n[key(name)]++ }
  else if (name ~ /^BM_Malloc_/) {
    k = key(name); mal[k SUBSEP peer] = ns
    if (!(k in seen)) { seen[k] = 1; order[++n] = k }  # Input is sorted.
  }
  else if (name ~ /^BM_SmartFrame_/) { frame[name SUBSEP peer] = ns }
}
END {
  printf "\nSmartAlloc pools vs malloc, ns per operation (alloc+free pair, or one block for ProducerConsumer); medians of interleaved repetitions\n"
  printf "%-28s %9s %9s %9s %9s %9s %10s\n", "case", "pool", "glibc", "mimalloc", "jemalloc", "tcmalloc", "pool/best"
  for (i = 1; i <= n; i++) {
    k = order[i]
    best = 1e18
    split("glibc mimalloc jemalloc tcmalloc", peers, " ")
    for (p = 1; p <= 4; p++) { v = mal[k SUBSEP peers[p]]; if (v > 0 && v < best) best = v }
    mean = pool_n[k] ? pool[k] / pool_n[k] : 0
    printf "%-28s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2fx\n", k, mean,
      mal[k SUBSEP "glibc"], mal[k SUBSEP "mimalloc"], mal[k SUBSEP "jemalloc"],
      mal[k SUBSEP "tcmalloc"], mean / best
  }
  one = frame["BM_SmartFrame_Alloc/threads:1" SUBSEP "glibc"]
  two = frame["BM_SmartFrame_Alloc/threads:2" SUBSEP "glibc"]
  # Google Benchmark divides the mean wall time of the threads by the iterations
  # of all threads: per-thread cost = figure x threads.
  if (one > 0) printf "\nFrame allocation, cost per allocation per thread: 1 thread %.2f ns, 2 threads %.2f ns (%+.1f%%)\n", one, 2 * two, 100 * (2 * two - one) / one
  p1 = pool_n["Pair/64/threads:1"] ? pool["Pair/64/threads:1"] / pool_n["Pair/64/threads:1"] : 0
  p2 = pool_n["Pair/64/threads:2"] ? pool["Pair/64/threads:2"] / pool_n["Pair/64/threads:2"] : 0
  if (p1 > 0) printf "Control with no shared state (pool pair, 64 B), per thread: 1 thread %.2f ns, 2 threads %.2f ns (%+.1f%%): what two threads cost on this machine\n", p1, 2 * p2, 100 * (2 * p2 - p1) / p1
  printf "(pool = mean of the pool figure measured in the four binaries; pool/best < 1 means the pool is faster than the fastest malloc;\n threads:2 rows are wall time per operation with both threads running, i.e. throughput)\n"
}' "$results"
