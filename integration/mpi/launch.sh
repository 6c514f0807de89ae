#!/usr/bin/env bash
# Runs //integration/mpi:mpi_particles under Open MPI's mpirun on this host.
#
#   ./bazelw run -c opt //integration/mpi:launch -- --ranks=4 [program flags]
#   ./bazelw run -c opt //integration/mpi:launch -- --scaling [--particles=N]
#       [--frames=F] [--repeats=R] [--max_ranks=4]
#
# --ranks=N (default 2): one run of N ranks; every other flag goes to the
#   program (--particles, --frames, --seed, --workers, --cutoff, --box,
#   --dt, --output, --weak, --report_every).
# --scaling: strong scaling (--particles in all: 1, 2, 4 ranks of one worker
#   each, and 1 rank of all cores' workers for comparison) and weak scaling
#   (--particles per rank, the box widened with the ranks), each run
#   --repeats times (the median is reported); prints the tables.
# mpirun gets --allow-run-as-root when run as root, --oversubscribe when
# there are more ranks than cores, --bind-to none (each rank's runtime
# places its own workers) and mpi_yield_when_idle (a rank waiting for a
# message yields its core instead of spinning: here ranks share cores with
# each other and with their runtimes' workers; on a cluster node with a
# core per thread, spinning is the faster choice). MPIRUN overrides the
# mpirun found on PATH.
set -euo pipefail

here=$(dirname "$0")
program=""
for candidate in "$here/mpi_particles" \
  "${RUNFILES_DIR:-$0.runfiles}/framealloc/integration/mpi/mpi_particles"; do
  if [[ -x "$candidate" ]]; then
    program=$(cd "$(dirname "$candidate")" && pwd)/mpi_particles
    break
  fi
done
if [[ -z "$program" ]]; then
  echo "launch: cannot find mpi_particles next to $0 or in its runfiles" >&2
  exit 1
fi
mpirun=${MPIRUN:-$(command -v mpirun || true)}
if [[ -z "$mpirun" ]]; then
  echo "launch: mpirun not found (Debian: apt-get install openmpi-bin)" >&2
  exit 1
fi
# Relative paths (--output) are the caller's, not the runfiles'.
if [[ -n "${BUILD_WORKING_DIRECTORY:-}" ]]; then
  cd "$BUILD_WORKING_DIRECTORY"
fi

ranks=2
scaling=0
particles=""
frames=""
repeats=3
max_ranks=4
passthrough=()
for arg in "$@"; do
  case "$arg" in
    --ranks=*) ranks=${arg#--ranks=} ;;
    --scaling) scaling=1 ;;
    --repeats=*) repeats=${arg#--repeats=} ;;
    --max_ranks=*) max_ranks=${arg#--max_ranks=} ;;
    --particles=*) particles=${arg#--particles=}; passthrough+=("$arg") ;;
    --frames=*) frames=${arg#--frames=}; passthrough+=("$arg") ;;
    *) passthrough+=("$arg") ;;
  esac
done
for value in "$ranks" "$repeats" "$max_ranks"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "launch: --ranks, --repeats and --max_ranks must be positive" \
      "integers, got '$value'" >&2
    exit 2
  fi
done

cores=$(nproc)

# Open MPI's shared-memory transport (vader) names its segments in
# /dev/shm after the job id, which derives from mpirun's PID. Two launches
# in separate PID namespaces (Bazel's sandboxed tests running at once) can
# have the same PID, open each other's segments and crash or hang (4 runs
# in 16 of mpi_determinism_test with --runs_per_test=16 before this). Each
# launch gets a private directory for them, unless the caller chose one.
if [[ -z "${OMPI_MCA_btl_vader_backing_directory:-}" ]]; then
  shm_root=/dev/shm
  [[ -d $shm_root && -w $shm_root ]] || shm_root=${TMPDIR:-/tmp}
  backing=$(mktemp -d "$shm_root/framealloc_mpi.XXXXXX")
  trap 'rm -rf "$backing"' EXIT
  export OMPI_MCA_btl_vader_backing_directory=$backing
fi

# run_mpi N args...: mpirun with the flags this host needs for N ranks.
run_mpi() {
  local n=$1
  shift
  local flags=(-np "$n" --bind-to none --mca mpi_yield_when_idle 1)
  if [[ $(id -u) -eq 0 ]]; then flags+=(--allow-run-as-root); fi
  if ((n > cores)); then flags+=(--oversubscribe); fi
  "$mpirun" "${flags[@]}" "$program" "$@"
}

if ((scaling == 0)); then
  run_mpi "$ranks" "${passthrough[@]+"${passthrough[@]}"}"
  exit $?
fi

# ---- Scaling ----------------------------------------------------------------
strong_particles=${particles:-80000}
weak_particles=${particles:-40000}
frames=${frames:-50}
extra=()
for arg in "${passthrough[@]+"${passthrough[@]}"}"; do
  case "$arg" in
    --particles=* | --frames=* | --weak | --workers=* | --output=*) ;;
    *) extra+=("$arg") ;;
  esac
done

# measure N W args...: "wall cpu", the medians over `repeats` runs of the
# time per frame and of the CPU time per frame (all threads of all ranks).
measure() {
  local n=$1 w=$2
  shift 2
  local walls=() cpus=() out
  for ((rep = 0; rep < repeats; ++rep)); do
    if ! out=$(run_mpi "$n" --workers="$w" --frames="$frames" \
      "${extra[@]+"${extra[@]}"}" "$@" 2>&1); then
      echo "$out" >&2
      echo "launch: the run of $n ranks failed" >&2
      return 1
    fi
    walls+=("$(sed -nE 's/^RESULT .* ms_per_frame=([0-9.]+) .*/\1/p' <<<"$out")")
    cpus+=("$(sed -nE 's/^RESULT .* cpu_ms_per_frame=([0-9.]+) .*/\1/p' <<<"$out")")
  done
  echo "$(median "${walls[@]}") $(median "${cpus[@]}")"
}
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

rank_counts=()
for ((n = 1; n <= max_ranks; n *= 2)); do rank_counts+=("$n"); done

echo "host: $cores cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before" \
  "the runs; $frames frames per run, median of $repeats runs;" \
  "mpirun $($mpirun --version 2>/dev/null | head -1 | sed 's/^mpirun //')"
echo
echo "strong scaling: $strong_particles particles in all"
printf '%-24s %10s %10s %9s %11s %10s %11s\n' "ranks x workers" particles \
  "ms/frame" speedup efficiency "cpu ms" "cpu ratio"
# row LABEL THREADS PARTICLES WALL CPU: one table line against the first.
base_wall=""
base_cpu=""
row() {
  base_wall=${base_wall:-$4}
  base_cpu=${base_cpu:-$5}
  awk -v l="$1" -v t="$2" -v p="$3" -v w="$4" -v c="$5" -v bw="$base_wall" \
    -v bc="$base_cpu" -v weak="$weak" 'BEGIN {
    if (weak) printf "%-24s %10d %10.3f %9s %10.0f%% %10.3f %10.2fx\n", l, p, w, "", 100 * bw / w, c, c / bc
    else printf "%-24s %10d %10.3f %8.2fx %10.0f%% %10.3f %10.2fx\n", l, p, w, bw / w, 100 * bw / w / t, c, c / bc }'
}
label() {
  local n=$1 w=$2
  local text="$n x $w"
  if ((n * w > cores)); then text+=" (oversubscribed)"; fi
  echo "$text"
}
weak=0
for n in "${rank_counts[@]}"; do
  read -r wall cpu < <(measure "$n" 1 --particles="$strong_particles")
  row "$(label "$n" 1)" "$n" "$strong_particles" "$wall" "$cpu"
done
if ((cores > 1)); then
  read -r wall cpu < <(measure 1 "$cores" --particles="$strong_particles")
  row "1 x $cores (threads)" "$cores" "$strong_particles" "$wall" "$cpu"
fi
echo
echo "weak scaling: $weak_particles particles per rank (box widened with the" \
  "ranks)"
printf '%-24s %10s %10s %9s %11s %10s %11s\n' "ranks x workers" particles \
  "ms/frame" "" efficiency "cpu ms" "cpu ratio"
weak=1
base_wall=""
base_cpu=""
for n in "${rank_counts[@]}"; do
  read -r wall cpu < <(measure "$n" 1 --particles="$weak_particles" --weak)
  row "$(label "$n" 1)" "$n" "$((weak_particles * n))" "$wall" "$cpu"
done
echo
echo "ms/frame: wall time per frame; cpu ms: CPU time per frame of all" \
  "threads of all ranks; cpu ratio: against the first row (strong: 1.00x" \
  "means no work added by the decomposition; weak: ideal is the rank" \
  "count). speedup = t(first row) / t; strong efficiency = speedup /" \
  "(ranks x workers); weak efficiency = t(1 rank) / t."
