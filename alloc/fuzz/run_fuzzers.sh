#!/usr/bin/env bash
# Builds framealloc's libFuzzer targets (--config=fuzz: clang 14, ASan,
# UBSan) and runs each for a bounded time, starting from its committed seed
# corpus. Exits non-zero if any fuzzer finds a crash, a leak, a timeout or a
# model violation; the reproducer is kept under $FUZZ_OUT (default: a
# temporary folder) and named in the output.
#
# For: .ci/run's fuzz step and local fuzzing sessions. Not for: growing the
# committed corpus (new inputs go to $FUZZ_OUT, never to alloc/fuzz/corpus;
# see docs/reliability.md for minimizing and committing seeds).
#
# Usage: alloc/fuzz/run_fuzzers.sh [SECONDS_PER_FUZZER] [FUZZER...]
#   defaults: 45 s each; frame_arena smart_alloc pool_manager.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

seconds="${1:-45}"
shift || true
fuzzers=("$@")
[[ ${#fuzzers[@]} -gt 0 ]] || fuzzers=(frame_arena smart_alloc pool_manager)

targets=()
for f in "${fuzzers[@]}"; do targets+=("//alloc/fuzz:${f}_fuzzer"); done
# gold warns once per ASan check helper it cannot export: noise, dropped.
./bazelw build --config=fuzz "${targets[@]}" 2>&1 |
  grep -v "Cannot export local symbol"
if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
  echo "fuzz: build failed"
  exit 1
fi
bin="$(./bazelw info --config=fuzz bazel-bin 2>/dev/null)"

out="${FUZZ_OUT:-$(mktemp -d)}"
failed=()
for f in "${fuzzers[@]}"; do
  work="$out/$f"
  mkdir -p "$work/corpus"
  log="$work/log"
  start=$SECONDS
  # New inputs go to $work/corpus (first folder); the committed seeds are
  # read only. -timeout: one input may take 10 s at most (a hang is a bug).
  "$bin/alloc/fuzz/${f}_fuzzer" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/" \
    "$work/corpus" "alloc/fuzz/corpus/$f" >"$log" 2>&1
  rc=$?
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" |
          grep -oE '[0-9]+$')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
  echo "fuzz ${f}: exit ${rc}, ${execs:-?} executions, ${cov:-cov: ?}," \
       "$((SECONDS - start)) s"
  if [[ $rc -ne 0 ]]; then
    failed+=("$f")
    grep -E -m 20 "ERROR|violated|SUMMARY|Test unit written|#[0-9]+ 0x" "$log"
    echo "fuzz ${f}: full log $log"
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz FAILED: ${failed[*]} (reproduce: bazel-bin/alloc/fuzz/<name>_fuzzer FILE, or the replay test's binary with FILE)"
  exit 1
fi
echo "fuzz: ok (${#fuzzers[@]} fuzzers, ${seconds} s each)"
