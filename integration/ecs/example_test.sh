#!/bin/bash
# Runs an integration example on a small input and checks that it completes
# and prints the expected per-frame line (a smoke test of the program itself,
# run in every configuration, sanitizers included).
# Usage: example_test.sh <binary> <text every frame line contains>
set -euo pipefail
binary="$1"
expected="${2//\'/}"
output="$("$binary" --frames=4 --workers=2 2>&1)" || {
  echo "$output"
  echo "FAIL: $binary exited with an error"
  exit 1
}
echo "$output"
frames=$(grep -c "$expected" <<<"$output" || true)
if [[ "$frames" -lt 4 ]]; then
  echo "FAIL: expected 4 frame lines containing '$expected', got $frames"
  exit 1
fi
grep -q "state hash" <<<"$output" || { echo "FAIL: no state hash"; exit 1; }
echo PASS
