#!/usr/bin/env bash
# Runs one test binary inside a qemu guest with real (emulated) NUMA nodes,
# and passes or fails with the test's exit status.
#
# For: the numa_guest_test macro (tools/numa_guest.bzl), which makes this
# script a Bazel sh_test; also usable by hand (docs/numa_guests.md). It
# packs the binary, every shared library `ldd` names for it (Bazel's _solib
# libraries and ld-linux included) and busybox into an initramfs under
# $TEST_TMPDIR, boots the kernel that tools/guest_kernel.sh fetched with one
# `-numa node` per entry of the layout, streams the guest's console (the
# test's output) to standard output, and exits with the test's exit code.
# Not for: timing (no KVM: the guest is emulated, many times slower), tests
# that need runfiles or data files (only the binary is in the guest), nor
# sanitizer builds (the macro tags its tests noasan/notsan).
#
# Usage: numa_guest_runner.sh <binary> <layout> <timeout_s> [test args...]
#   <layout>  nodes as CPUS:MIB, comma-separated: "2:256,2:256" is two
#             nodes of 2 CPUs and 256 MiB; "3:384,1:96" an asymmetric pair.
#   Bazel's --test_filter (TESTBRIDGE_TEST_ONLY) becomes --gtest_filter.
# Environment: FRAMEALLOC_GUEST_KERNEL (a vmlinuz to boot instead of the
# cached one; pass with --test_env), TEST_TMPDIR (work space; a temporary
# directory outside Bazel). Inside the guest the test sees TEST_TMPDIR=/tmp
# and FRAMEALLOC_GUEST_LAYOUT=<layout>.
#
# Failures are reported, never hung on: a missing qemu, busybox, cpio or
# kernel, a library ldd cannot find, a guest that does not boot (kernel
# panic: panic=-1 and -no-reboot end qemu) or does not finish within
# <timeout_s> seconds each end with a line starting "numa_guest: FAILED".
set -uo pipefail

fail() {
  echo "numa_guest: FAILED: $*"
  exit 1
}

[[ $# -ge 3 ]] || fail "usage: $0 <binary> <layout> <timeout_s> [test args...]"
binary="$1" layout="$2" timeout_s="$3"
shift 3
[[ -x "$binary" ]] || fail "test binary $binary not found or not executable"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || fail "timeout '$timeout_s' is not a number of seconds"

# guest_kernel.sh: from the runfiles under Bazel (this script is then a
# symlink in the test's package), next to this script by hand.
if [[ -n "${TEST_SRCDIR:-}" && -x "$TEST_SRCDIR/${TEST_WORKSPACE:-framealloc}/tools/guest_kernel.sh" ]]; then
  guest_kernel="$TEST_SRCDIR/${TEST_WORKSPACE:-framealloc}/tools/guest_kernel.sh"
else
  guest_kernel="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/guest_kernel.sh"
fi
setup_hint="run tools/setup.sh (or any ./bazelw command) to install it"
qemu="$(command -v qemu-system-x86_64)" ||
  fail "qemu-system-x86_64 is not installed (package qemu-system-x86); $setup_hint"
busybox=/bin/busybox
[[ -x "$busybox" ]] && "$busybox" true 2>/dev/null ||
  fail "$busybox is missing (package busybox-static); $setup_hint"
# The guest has no libraries for it: it must be the static build.
ldd "$busybox" 2>&1 | grep -q '=>' &&
  fail "$busybox is dynamically linked (package busybox); the guest needs busybox-static"
command -v cpio >/dev/null || fail "cpio is not installed; $setup_hint"
if [[ -n "${FRAMEALLOC_GUEST_KERNEL:-}" ]]; then
  kernel="$FRAMEALLOC_GUEST_KERNEL"
else
  kernel="$("$guest_kernel" path)" || fail "cannot run $guest_kernel to find the kernel"
fi
[[ -s "$kernel" ]] ||
  fail "no guest kernel at $kernel; run tools/guest_kernel.sh fetch (tools/setup.sh does)"

# The layout: one -numa node per entry, CPUs numbered in node order.
numa_args=()
cpus=0 memory=0 node=0 described=()
IFS=',' read -r -a entries <<<"$layout"
for entry in "${entries[@]}"; do
  [[ "$entry" =~ ^([0-9]+):([0-9]+)$ ]] ||
    fail "layout entry '$entry' is not CPUS:MIB (layout '$layout')"
  n_cpus="${BASH_REMATCH[1]}" mib="${BASH_REMATCH[2]}"
  ((n_cpus >= 1 && mib >= 32)) ||
    fail "layout entry '$entry': each node needs >= 1 CPU and >= 32 MiB"
  numa_args+=(-object "memory-backend-ram,id=m$node,size=${mib}M"
    -numa "node,memdev=m$node,cpus=$cpus-$((cpus + n_cpus - 1)),nodeid=$node")
  described+=("node$node: cpus $cpus-$((cpus + n_cpus - 1)), $mib MiB")
  cpus=$((cpus + n_cpus)) memory=$((memory + mib)) node=$((node + 1))
done
((node >= 1)) || fail "empty layout"

work="${TEST_TMPDIR:-}"
if [[ -z "$work" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
root="$work/guest-root"
rm -rf "$root"
mkdir -p "$root"/{bin,lib,proc,sys,dev,tmp,test} || fail "cannot create $root"
cp "$busybox" "$root/bin/busybox"
name="$(basename "$binary")"
cp -L "$binary" "$root/test/$name"

# Every library the dynamic linker would load, copied to /lib (found there
# through LD_LIBRARY_PATH: Bazel's RPATH $ORIGIN/../_solib_k8 names nothing
# in the guest), and the loader itself at the path the binary names.
ldd_out="$(ldd "$binary" 2>&1)" || fail "ldd $binary failed: $ldd_out"
if grep -q 'not found' <<<"$ldd_out"; then
  fail "ldd cannot find libraries of $binary: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t\n' ' ')"
fi
while read -r lib; do
  cp -L "$lib" "$root/lib/" || fail "cannot copy $lib"
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$ldd_out")
interp="$(awk '$1 ~ /^\// && $1 ~ /ld-linux/ {print $1; exit}' <<<"$ldd_out")"
[[ -n "$interp" ]] || fail "ldd names no ld-linux for $binary"
mkdir -p "$root$(dirname "$interp")"
cp -L "$interp" "$root$interp"

# The test's arguments, single-quoted for the guest's shell.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
test_args=""
if [[ -n "${TESTBRIDGE_TEST_ONLY:-}" ]]; then
  test_args+=" $(quote "--gtest_filter=$TESTBRIDGE_TEST_ONLY")"
fi
for a in "$@"; do test_args+=" $(quote "$a")"; done

# The marker carries a nonce so test output cannot fake the exit status.
nonce="$RANDOM$RANDOM"
cat >"$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
export PATH=/bin LD_LIBRARY_PATH=/lib TEST_TMPDIR=/tmp HOME=/tmp GTEST_COLOR=no
export FRAMEALLOC_GUEST_LAYOUT='$layout'
/bin/busybox --install -s /bin
echo "numa_guest: booted \$(uname -r); nodes:"
for d in /sys/devices/system/node/node*; do
  echo "  \${d##*/}: cpus \$(cat \$d/cpulist), \$(grep MemTotal \$d/meminfo | tr -s ' ' | cut -d' ' -f4-)"
done
cd /tmp
echo "numa_guest: running /test/$name$test_args"
/test/$name$test_args
echo "numa_guest[$nonce]: exit=\$?"
/bin/busybox poweroff -f
INIT
chmod +x "$root/init"
initrd="$work/initrd.cpio"
(cd "$root" && find . | cpio -o -H newc --quiet >"$initrd") ||
  fail "cannot pack the initramfs"

echo "numa_guest: $node nodes (${described[*]}), $cpus CPUs, $memory MiB;" \
  "kernel $kernel; timeout ${timeout_s} s"
log="$work/console.log"
start=$SECONDS
# No KVM here: TCG emulation. -nodefaults drops VGA and network; the serial
# port is the console; stdin is closed so nothing reads the terminal.
timeout -k 5 "$timeout_s" "$qemu" -nodefaults -display none -serial stdio \
  -no-reboot -m "$memory" -smp "$cpus" "${numa_args[@]}" \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  </dev/null 2>&1 | sed -u 's/\r$//' | tee "$log"
qemu_rc=${PIPESTATUS[0]}
elapsed=$((SECONDS - start))

rc="$(sed -n "s/^numa_guest\[$nonce\]: exit=\([0-9]*\)\$/\1/p" "$log" | tail -n 1)"
if [[ -n "$rc" ]]; then
  echo "numa_guest: test exited with $rc after ${elapsed} s in the guest"
  exit "$rc"
fi
if [[ $qemu_rc -eq 124 || $qemu_rc -eq 137 ]]; then
  if grep -q '^numa_guest: running' "$log"; then
    fail "the test did not finish within ${timeout_s} s (guest killed)"
  fi
  fail "the guest did not boot within ${timeout_s} s (guest killed)"
fi
if grep -q '^numa_guest: running' "$log"; then
  fail "the guest stopped while the test ran (qemu exit $qemu_rc, after ${elapsed} s); see the console above"
fi
fail "the guest did not boot (qemu exit $qemu_rc after ${elapsed} s); last console lines: $(tail -n 5 "$log" | tr '\n' '|')"
