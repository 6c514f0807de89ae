"""numa_guest_test: run a cc_test inside a qemu guest with real NUMA nodes.

For: checking placement, binding and routing on 2, 4 or asymmetric NUMA
nodes from an ordinary `bazel test`, on a one-node machine. The guest is a
real Linux kernel (tools/guest_kernel.sh fetches it) booted by
tools/numa_guest_runner.sh with one `-numa node` per entry of `nodes`; the
test binary runs as the guest's only program and its exit status is the
test's. Not for: timing (software emulation, no KVM), tests that read
runfiles or data files (only the binary and its shared libraries go into
the guest), nor sanitizer builds (tagged noasan/notsan: an instrumented
binary under emulation is far too slow).

Usage (BUILD):

    load("//tools:numa_guest.bzl", "guest_node", "numa_guest_test")

    numa_guest_test(
        name = "numa_alloc_test_4nodes",
        test = ":numa_alloc_test",
        nodes = [guest_node(cpus = 1, memory_mib = 256)] * 4,
    )

`bazel test --test_filter=Suite.Case` and `--test_arg=...` reach the test
binary in the guest (as --gtest_filter and arguments).
"""

def guest_node(cpus, memory_mib):
    """One NUMA node of a guest: `cpus` CPUs and `memory_mib` MiB of memory.

    Args:
      cpus: CPUs of the node (>= 1); the guest numbers CPUs in node order.
      memory_mib: the node's memory in MiB (>= 32). The kernel and the
        initramfs (the test binary and its libraries, ~30 MiB) take some
        of the guest's memory, mostly from one node.

    Returns:
      The node as the runner's layout entry "CPUS:MIB".
    """
    if cpus < 1 or memory_mib < 32:
        fail("guest_node: need cpus >= 1 and memory_mib >= 32, got %d, %d" % (cpus, memory_mib))
    return "%d:%d" % (cpus, memory_mib)

def numa_guest_test(
        name,
        test,
        nodes,
        args = [],
        timeout_seconds = 90,
        size = "medium",
        tags = [],
        **kwargs):
    """A test that runs the cc_test `test` in a guest with `nodes`.

    Args:
      name: the test's name.
      test: label of a cc_test (or cc_binary) built for the host; fastbuild
        is what the guest runs by default.
      nodes: list of guest_node(...), one per NUMA node, in node order.
      args: arguments for the test binary; Bazel's --test_arg ones follow.
      timeout_seconds: the runner kills the guest after this long and
        fails with a clear message (Bazel's own timeout, from `size`, is
        larger, so the runner's message wins).
      size: Bazel test size; "medium" allows 300 s.
      tags: extra tags. Always added: numa_guest (select or exclude them
        with --test_tag_filters), noasan and notsan (the sanitizer configs
        skip them), and cpu:2 (qemu emulates several CPUs: Bazel schedules
        the guest as two cores' worth of work, not one).
      **kwargs: passed to sh_test (flaky, visibility, ...). Sharding is
        not supported: the whole binary runs in one guest.
    """
    if not nodes:
        fail("numa_guest_test %s: nodes is empty" % name)
    native.sh_test(
        name = name,
        srcs = ["//tools:numa_guest_runner.sh"],
        data = [
            test,
            "//tools:guest_kernel.sh",
        ],
        args = [
            "$(rootpath %s)" % test,
            ",".join(nodes),
            str(timeout_seconds),
        ] + args,
        size = size,
        tags = tags + ["numa_guest", "noasan", "notsan", "cpu:2"],
        **kwargs
    )
