#!/usr/bin/env bash
# Smoke test of //numa:topology: a synthetic 4-node machine is printed with
# its nodes, PUs, memory, default distances and "no binding", and a bad
# description fails with the description named.
set -euo pipefail
tool="$1"

out=$("$tool" --synthetic="pack:4 [numa(memory=1GB)] core:2 pu:1")
expect() {
  if ! grep -qF -- "$1" <<<"$out"; then
    echo "missing: $1"; echo "$out"; exit 1
  fi
}
expect "synthetic \"pack:4 [numa(memory=1GB)] core:2 pu:1\" (not this system)"
expect "4 NUMA node(s), 8 PU(s)"
expect "node 3 (os 3): 2 PU(s) [6,7], 953 MiB local memory"
expect "distances (default: hwloc reported no matrix):"
expect "10 20 20 20"
expect "thread binding:      no"
expect "current node: unknown"

if err=$("$tool" --synthetic="bogus:x" 2>&1); then
  echo "a bad description was accepted"; exit 1
fi
grep -qF 'bogus:x' <<<"$err" || { echo "error does not name it: $err"; exit 1; }

# This machine: at least node 0, and a binding verdict either way.
out=$("$tool")
expect "(this system)"
expect "node 0 (os"
expect "thread binding:"
echo PASS
