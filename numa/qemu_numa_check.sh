#!/usr/bin/env bash
# Runs numa's tests inside a qemu guest with real NUMA nodes.
#
# For: proving placement, binding and routing on 2 or 4 real (emulated)
# nodes, which this one-node machine cannot: the guest's kernel places pages
# by mbind and reports them by move_pages like a real multi-node server.
# Not for: timing (no KVM; everything runs many times slower) nor CI: the
# numa_guest_test targets (tools/numa_guest.bzl, docs/numa_guests.md) run
# each test in its own guest from `bazel test`; this script is the manual
# all-in-one-boot variant. tools/guest_kernel.sh path prints the kernel that
# tools/setup.sh fetched.
#
# Usage: numa/qemu_numa_check.sh <vmlinuz> [nodes=2]
#   Needs: apt-get install qemu-system-x86 busybox-static cpio, and a kernel:
#     apt-get download "$(apt-cache depends linux-image-amd64 | awk '/Depends/ {print $2}')"
#     dpkg -x linux-image-*.deb kernel   # kernel/boot/vmlinuz-*
# Builds //numa tests (fastbuild), packs them with their shared libraries
# and busybox into an initramfs, boots a guest with <nodes> nodes of 2 CPUs
# and 512 MiB each, prints the topology the guest sees, runs every test, and
# exits non-zero unless all of them pass.
set -euo pipefail
kernel="${1:?usage: $0 <vmlinuz> [nodes]}"
nodes="${2:-2}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tests=(topology_test binding_test node_memory_source_test numa_alloc_test)

./bazelw build //numa:topology "${tests[@]/#/\/\/numa:}" >/dev/null
bin="$(./bazelw info bazel-bin 2>/dev/null)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,lib,lib64,proc,sys,dev,tmp,tests}
cp /bin/busybox "$root/bin/"
for t in topology "${tests[@]}"; do cp "$bin/numa/$t" "$root/tests/"; done
cp -L "$bin"/_solib_k8/*.so "$root/lib/"
for t in topology "${tests[@]}"; do
  ldd "$bin/numa/$t" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do cp -nL "$lib" "$root/lib/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"

cat >"$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
export LD_LIBRARY_PATH=/lib TEST_TMPDIR=/tmp
/tests/topology
for t in ${tests[*]}; do
  /tests/\$t --gtest_brief=1 --gtest_death_test_style=threadsafe
  echo "RESULT \$t exit=\$?"
done
/bin/busybox poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.gz")

numa_args=()
for ((k = 0; k < nodes; ++k)); do
  numa_args+=(-object "memory-backend-ram,id=m$k,size=512M"
              -numa "node,memdev=m$k,cpus=$((2 * k))-$((2 * k + 1)),nodeid=$k")
done
log="$work/console.log"
timeout 900 qemu-system-x86_64 -m $((512 * nodes)) -smp $((2 * nodes)) \
  "${numa_args[@]}" -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" -nographic -no-reboot \
  | tr -d '\r' | tee "$log" | sed -n '/topology: discovered/,$p'

passed=$(grep -c '^RESULT .* exit=0$' "$log" || true)
echo "qemu_numa_check: $passed of ${#tests[@]} test binaries passed on $nodes nodes"
[[ "$passed" -eq "${#tests[@]}" ]]
