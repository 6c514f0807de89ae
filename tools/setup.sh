#!/usr/bin/env bash
# Installs, with apt-get, every Debian package that framealloc's build, tests
# and benchmarks need, skipping what is already installed. Called by ./bazelw
# before every bazel command, so a fresh Debian 12 machine needs nothing done
# by hand. Safe to run again: with everything present it only checks dpkg.
# It also fetches, without installing it, the kernel the NUMA guest tests
# boot (tools/guest_kernel.sh; one stat when it is there).
#
# For: Debian 12 (bookworm) and derivatives. Not for: other distributions;
# there it explains what is missing and stops.
set -euo pipefail

# One package per line, with what needs it.
PACKAGES=(
  bazel-bootstrap     # Bazel 4.2.3, the build tool (pulls in a JDK)
  g++                 # GCC 12: the default compiler, with ASan/UBSan/TSan
  clang               # --config=clang
  libclang-rt-14-dev  # clang's sanitizer runtimes
  clang-format        # the format check in .ci/run
  libabsl-dev         # Abseil: status, strings, containers, synchronization
  libhwloc-dev        # hwloc: topology (numa/)
  libtbb-dev          # oneTBB: scheduling (jobs/)
  libgtest-dev        # GoogleTest
  libgmock-dev        # GoogleMock
  libbenchmark-dev    # Google Benchmark
  libmimalloc-dev     # peer allocators for //alloc:pool_benchmark_suite
  libjemalloc-dev
  libgoogle-perftools-dev
  valgrind            # memcheck for --config=valgrind (//alloc:valgrind_test)
  qemu-system-x86     # NUMA guest tests: a 2-/4-node Linux guest (tools/numa_guest.bzl)
  busybox-static      # ...the guest's /init and shell
  cpio                # ...packs the guest's initramfs
  libcpp-httplib-dev  # HTTP server and client (integration/server)
  nlohmann-json3-dev  # JSON request bodies (integration/server)
  wrk                 # HTTP load generator (integration/server load test)
  libopenmpi-dev      # MPI (integration/mpi)
  openmpi-bin         # ...mpirun
  linux-perf          # perf, for tools/allocator_share.sh
  python3             # the example tests' output checks
)

log() { printf 'framealloc setup: %s\n' "$*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
# The NUMA guest tests' kernel: downloaded and unpacked into a cache, never
# installed; a no-op (one stat) when present, a warning when it cannot.
guest_kernel="$(dirname "${BASH_SOURCE[0]}")/guest_kernel.sh"
if [[ ${#missing[@]} -eq 0 ]]; then
  "$guest_kernel" fetch
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  log "missing packages: ${missing[*]}"
  log "apt-get is not available; this setup supports Debian 12 only. Install the packages above by other means."
  exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    log "missing packages: ${missing[*]}"
    log "installing them needs root, and sudo is not available. Run as root: apt-get install ${missing[*]}"
    exit 1
  fi
fi

log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Package lists may be absent on a fresh machine; update once, then install.
# (Through sudo too: sudo resets the environment, so the variable goes on
# the command line.)
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
  log "apt-get update failed; check the network or the apt sources."
  exit 1
fi
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
  log "apt-get install failed for: ${missing[*]}"
  exit 1
fi
log "installed: ${missing[*]}"
"$guest_kernel" fetch
