#!/usr/bin/env bash
# Runs the physics example serially and on a synthetic two-node runtime, and
# checks its report: energy lines, frame memory in use, the pile settling,
# and the same final state both ways.
set -euo pipefail
example="$1"
serial="$("$example" --bodies=600 --frames=90 --report_every=30 --workers=0)"
echo "$serial"
parallel="$("$example" --bodies=600 --frames=90 --report_every=30 --workers=1 \
  --synthetic='pack:2 [numa] core:1 pu:1')"
echo "$parallel"
grep -q '^600 spheres .* serial, one frame arena' <<<"$serial"
grep -q '2 node(s) x 1 worker(s), worker arenas' <<<"$parallel"
[ "$(grep -c '^frame ' <<<"$parallel")" -eq 3 ]
# Frame memory is in use every reported frame.
if grep '^frame ' <<<"$parallel" | grep -q 'frame memory 0 bytes'; then
  echo "a frame used no frame memory" >&2
  exit 1
fi
# The pile settles: kinetic energy at the end below 1% of its peak.
python3 - "$parallel" <<'PY'
import re, sys
m = re.search(r"kinetic energy peak ([0-9.]+) J -> ([0-9.]+) J", sys.argv[1])
peak, end = float(m.group(1)), float(m.group(2))
assert end < 0.01 * peak, (peak, end)
print("settled:", peak, "->", end)
PY
# Serial and parallel end in the same state.
hash() { sed -n 's/.*state hash \([0-9a-f]*\)$/\1/p' <<<"$1"; }
[ -n "$(hash "$serial")" ]
[ "$(hash "$serial")" = "$(hash "$parallel")" ]
echo "same state: $(hash "$serial")"
