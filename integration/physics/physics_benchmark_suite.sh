#!/usr/bin/env bash
# The physics benchmark with glibc's malloc, then with mimalloc (which
# replaces malloc for its whole process, hence a binary of its own):
#   ./bazelw run -c opt //integration/physics:physics_benchmark_suite -- [flags]
# Flags go to both runs (see physics_benchmark.cc).
set -euo pipefail
dir="$(dirname "$0")"
for variant in physics_benchmark physics_benchmark_mimalloc; do
  bin="$dir/$variant"
  [ -x "$bin" ] || bin="${RUNFILES_DIR:-$0.runfiles}/framealloc/integration/physics/$variant"
  label=glibc
  [ "$variant" = physics_benchmark_mimalloc ] && label=mimalloc
  "$bin" --label="$label" "$@"
  echo
done
