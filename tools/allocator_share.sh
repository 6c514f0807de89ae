#!/usr/bin/env bash
# How much of each simulation scenario's frame an allocator could win at
# most: profiles the heap run (glibc), the heap run under mimalloc and the
# frame-arena run of each scenario with `perf record` and prints the share
# of CPU samples inside the allocator's functions and inside the kernel.
# If a run spends a fraction f of its time allocating and freeing, an
# allocator that cost nothing would make it 1/(1-f) times faster; anything
# the frame arena gains beyond that bound comes from where it puts the
# data (locality), not from the calls it saves.
#   bash tools/allocator_share.sh                     # physics, ecs, render
#   bash tools/allocator_share.sh physics:60 render:100
# Each argument is scenario[:frames]. Needs `perf` (linux-perf) and
# permission to profile (perf_event_paranoid <= 2 for one's own processes);
# every run is one process, one thread, --isolate=false, no triad.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v perf >/dev/null; then
  echo "allocator_share.sh: needs perf (apt-get install linux-perf)" >&2
  exit 2
fi
specs=("$@")
[[ ${#specs[@]} -gt 0 ]] || specs=(physics:60 ecs:150 render:100)
./bazelw build -c opt //benchmarks:simulation //benchmarks:simulation_mimalloc >&2
bin=$(./bazelw info -c opt bazel-bin 2>/dev/null)/benchmarks
work=$(mktemp -d "${TMPDIR:-/tmp}/framealloc_share.XXXXXX")
trap 'rm -rf "$work"' EXIT
# glibc's and mimalloc's entry points and internals, and C++'s operators.
allocator='\] (malloc|free|cfree@[^ ]*|calloc|realloc|_int_malloc|_int_free|_int_realloc|_int_memalign|_mid_memalign|malloc_consolidate|unlink_chunk[^ ]*|sysmalloc|systrim|tcache_[^ ]*|__libc_(malloc|free|calloc|realloc|memalign)|posix_memalign|aligned_alloc|operator (new|delete)(\[\])?(\(.*\))?|_?mi_[^ ]*)$'
printf '%-9s %-6s %-9s %10s %12s %9s %14s\n' scenario run allocator \
  "median ms" "in allocator" "in kernel" "bound 1/(1-f)"
for spec in "${specs[@]}"; do
  scenario=${spec%%:*}
  frames=60
  [[ $spec == *:* ]] && frames=${spec##*:}
  for run in heap:simulation:glibc heap:simulation_mimalloc:mimalloc \
    arena:simulation:arena; do
    IFS=: read -r variant binary label <<<"$run"
    out=$work/$scenario.$label
    if ! perf record -q -o "$out.data" "$bin/$binary" --scenario="$scenario" \
      --variants="$variant" --frames="$frames" --isolate=false \
      --progress=false --svg= --json="$out.json" --triad_repetitions=0 \
      >"$out.txt" 2>&1; then
      cat "$out.txt" >&2
      echo "allocator_share.sh: the $label run of $scenario failed" >&2
      exit 1
    fi
    median=$(awk -v v="$variant" '$1 == v && $2 == 1 {print $3}' "$out.txt")
    perf report -i "$out.data" --no-children --sort sym 2>/dev/null |
      grep -v '^#' | grep '%' >"$out.syms" || true
    # (grep finds nothing in some runs: not an error.)
    in_alloc=$({ grep -E "$allocator" "$out.syms" || true; } |
      awk '{s += $1} END {printf "%.1f", s}')
    in_kernel=$({ grep -F '[k]' "$out.syms" || true; } |
      awk '{s += $1} END {printf "%.1f", s}')
    bound=$(awk -v f="$in_alloc" 'BEGIN {printf "%.3fx", 1 / (1 - f / 100)}')
    printf '%-9s %-6s %-9s %10s %11s%% %8s%% %14s\n' "$scenario" "$variant" \
      "$label" "$median" "$in_alloc" "$in_kernel" "$bound"
  done
done
echo "(in allocator: CPU samples in the functions above; in kernel: page" \
  "faults, mmap/munmap and the rest of the kernel; bound: how much faster" \
  "the run could be with allocation free)"
