#!/usr/bin/env bash
# Runs the simulation suite on a small input and checks its report: every
# run in the table, the ratios, the triad and bandwidth lines, identical
# states, the JSON and SVG files; every run in a process of its own (the
# default) and all in one (--isolate=false), in rounds; the mimalloc child path
# (pointed at this same binary, since the mimalloc build is not made in
# sanitizer configurations); a synthetic two-node topology; a trace; that
# bad flags are refused with a message naming the flag; and that a run with
# nothing to run (only mimalloc, no mimalloc binary) is refused and leaves
# the previous outputs alone.
set -euo pipefail
bin="benchmarks/simulation"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
common=(--size=5000 --frames=3 --warmup=1 --triad_repetitions=2 --progress=false)

out=$("$bin" "${common[@]}" --json="$tmp/s.json" --svg="$tmp/s.svg" \
  --mimalloc_binary="$bin")
echo "$out"
for run in heap arena runtime-heap runtime-arena runtime-arena-1w \
  "glibc heap" "glibc runtime-heap"; do
  grep -qE "^$run +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ " <<<"$out" \
    || { echo "missing row: $run"; exit 1; }
done
grep -qE "arena vs heap, 1 thread +[0-9.]+x median" <<<"$out"
grep -qE "runtime-arena vs runtime-heap, all workers +[0-9.]+x median" <<<"$out"
grep -qE "all workers vs one worker per node +[0-9.]+x median" <<<"$out"
grep -qE "runtime-arena scaling, mean frames: [0-9.]+x = [0-9]+/[0-9]+ workers x [0-9]+%/[0-9]+% busy in jobs / [0-9.]+x job time per frame" <<<"$out"
grep -q "\"job_time_growth\": " "$tmp/s.json"
grep -qE "STREAM triad, 1 thread\(s\), 3 x 1\.0 MiB: [0-9.]+ GB/s median" <<<"$out"
grep -qE "particle update \(IntegrateParticles\) in runtime-arena \([0-9]+ thread\(s\)\): [0-9.]+ GB/s median = [0-9.]+% of the triad" <<<"$out"
# Every registered scenario (particles, physics, ecs, render) ran and agreed.
test "$(grep -cE "state identical in all 7 runs: StateHash [0-9a-f]{16}" <<<"$out")" -eq 4
grep -q "\"name\": \"particles\"" "$tmp/s.json"
grep -q "\"states_equal\": true" "$tmp/s.json"
grep -q "\"label\": \"glibc runtime-heap\"" "$tmp/s.json"
grep -q "\"isolated\": true" "$tmp/s.json"
grep -q ", one round$" <<<"$out"
grep -q "\"rounds\": 1" "$tmp/s.json"
test "$(grep -cE "size 5,000, 3 measured frames per run" <<<"$out")" -eq 4
grep -q "each run in a fresh process" <<<"$out"
grep -qE "^run +thr +median ms .* arena MB/f +faults/f$" <<<"$out"
grep -q "\"page_faults_per_frame\": " "$tmp/s.json"
grep -q "<svg" "$tmp/s.svg"
# Frame time and memory per frame for each of the 7 runs, per scenario.
test "$(grep -c "<polyline" "$tmp/s.svg")" -eq $((14 * 4))

# All runs in this one process: the same runs, the same states.
out=$("$bin" "${common[@]}" --json="$tmp/n.json" --svg= --isolate=false \
  --scenario=physics,render --mimalloc_binary="$bin" --rounds=2)
echo "$out"
grep -q "all runs in this process" <<<"$out"
# Two rounds of 2 frames (3 rounded up to a multiple of the rounds).
grep -q "2 rounds (the runs take turns" <<<"$out"
test "$(grep -cE "size 5,000, 4 measured frames per run" <<<"$out")" -eq 2
test "$(grep -cE "state identical in all 7 runs" <<<"$out")" -eq 2
grep -q "\"isolated\": false" "$tmp/n.json"
grep -q "\"label\": \"glibc runtime-heap\"" "$tmp/n.json"

# Rounds of separate processes, the mimalloc child's included, on one
# scenario: 3 rounds of one frame each.
out=$("$bin" "${common[@]}" --json="$tmp/r.json" --svg= --scenario=ecs \
  --mimalloc_binary="$bin" --rounds=3)
echo "$out"
grep -q "\"rounds\": 3" "$tmp/r.json"
grep -qE "size 5,000, 3 measured frames per run" <<<"$out"
grep -q "state identical in all 7 runs" <<<"$out"

# Runtime variants on two synthetic nodes, 3 workers.
out=$("$bin" "${common[@]}" --json= --svg= --topology='pack:2 [numa] core:2 pu:1' \
  --workers=3 --variants=runtime-heap,runtime-arena)
echo "$out"
grep -q "2 node(s)" <<<"$out"
grep -qE "^runtime-arena +3 " <<<"$out"
grep -q "state identical in all 2 runs" <<<"$out"

# A Chrome trace of each runtime run's measured frames.
out=$("$bin" "${common[@]}" --json= --svg= --scenario=ecs \
  --variants=heap,runtime-arena,runtime-arena-1w --trace="$tmp/t")
test -s "$tmp/t-ecs-runtime-arena.json"
test -s "$tmp/t-ecs-runtime-arena-1w.json"
test ! -e "$tmp/t-ecs-heap.json"
grep -q '"traceEvents"' "$tmp/t-ecs-runtime-arena.json"
grep -q '"ph":"X"' "$tmp/t-ecs-runtime-arena.json"

expect_error() {
  local pattern="$1"; shift
  if err=$("$bin" --progress=false --json= --svg= "$@" 2>&1); then
    echo "expected failure: $*"; exit 1
  fi
  grep -q -- "$pattern" <<<"$err" || { echo "no '$pattern' in: $err"; exit 1; }
}
expect_error "--size must be in" --size=-1
expect_error "--frames must be in" --frames=-2
expect_error "unknown variant 'bogus'" --variants=heap,bogus
expect_error "unknown scenario 'nosuch'" --scenario=nosuch
expect_error "--workers must be in" --workers=-1
expect_error "--rounds must be in" --rounds=0
expect_error "--child_progress is for child runs" --child_progress=x
# --workers outside what the topology's nodes can hold (at least one, at
# most jobs::kMaxWorkersPerNode = 256 each) is refused before any run,
# naming the flag, the range and the value: the runtime refused it only at
# the first runtime run, after the one-thread runs, without naming the flag.
for workers in 1 513; do
  expect_error "--workers must be in \[2, 512\] on this topology (2 node(s), at least one and at most 256 workers each), got $workers" \
    --size=100 --frames=1 --topology='pack:2 [numa] core:1 pu:1' --workers=$workers
  if grep -q "framealloc simulation suite" <<<"$err"; then
    echo "runs started before --workers=$workers was refused: $err"; exit 1
  fi
done
expect_error "garbage" --topology=garbage --size=100 --frames=1 --variants=runtime-heap
expect_error "size must be in" --size=4294967296 --frames=1 --variants=heap

# Only mimalloc runs, and no mimalloc binary: refused (nothing would run)
# before an earlier run's outputs are overwritten with empty ones.
for isolate in true false; do
  echo keep > "$tmp/m.json"
  echo keep > "$tmp/m.svg"
  if err=$("$bin" "${common[@]}" --variants=mimalloc --isolate=$isolate \
      --mimalloc_binary=/nonexistent/simulation_mimalloc --scenario=particles \
      --json="$tmp/m.json" --svg="$tmp/m.svg" 2>&1); then
    echo "expected failure: --variants=mimalloc without its binary"; exit 1
  fi
  grep -q -- "--mimalloc_binary=/nonexistent/simulation_mimalloc is not an executable" \
    <<<"$err" || { echo "no binary named in: $err"; exit 1; }
  grep -q -- "--variants=mimalloc names only the mimalloc runs" <<<"$err" \
    || { echo "no flag named in: $err"; exit 1; }
  grep -qx keep "$tmp/m.json" || { echo "simulation.json overwritten"; exit 1; }
  grep -qx keep "$tmp/m.svg" || { echo "simulation.svg overwritten"; exit 1; }
done
echo "PASS"
