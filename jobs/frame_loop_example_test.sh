#!/usr/bin/env bash
# Runs the frame loop example on a synthetic two-node topology and checks
# its output and its Chrome trace (valid JSON, a slice per job).
set -euo pipefail
example="$1"
trace="${TEST_TMPDIR:-/tmp}/frames.json"
out="$("$example" --frames=5 --particles=20000 \
  --synthetic='pack:2 [numa] core:1 pu:1' --trace="$trace")"
echo "$out"
grep -q '^node 1: 1 workers' <<<"$out"
# Per frame: 2 ParallelFor shares, 2 summaries, 1 merge.
grep -q '^last frame: .* 5 jobs' <<<"$out"
grep -q '^resident memory: [0-9]* KiB after warm-up' <<<"$out"
python3 - "$trace" <<'PY'
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
slices = [e for e in events if e["ph"] == "X"]
merges = [e for e in slices if e["name"] == "merge"]
assert len(merges) == 5, len(merges)
assert {e["pid"] for e in slices} == {0, 1}, {e["pid"] for e in slices}
names = {e["args"]["name"] for e in events if e["ph"] == "M"}
assert {"node 0", "node 1", "worker 0"} <= names, names
print("trace ok:", len(slices), "slices")
PY

# The same loop with the main thread helping in its waits: same results,
# and the outside slot shows in the statistics and names a trace track.
out="$("$example" --frames=5 --particles=20000 \
  --synthetic='pack:2 [numa] core:1 pu:1' --trace="$trace" --outside_wait=help)"
echo "$out"
grep -q '^last frame: .* 5 jobs' <<<"$out"
grep -q '^  outside thread, slot 1: ' <<<"$out"
python3 - "$trace" <<'PY'
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
names = {e["args"]["name"] for e in events if e["ph"] == "M"}
assert "outside thread (helping)" in names, names
print("helping trace ok")
PY
if "$example" --frames=1 --outside_wait=spin 2>/dev/null; then
  echo "a bad --outside_wait was accepted"; exit 1
fi
