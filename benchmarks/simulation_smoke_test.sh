#!/usr/bin/env bash
# Runs the simulation benchmark on a small input and checks its report: both
# variants, the ratio line, zero source calls in steady frames, the memory
# bandwidth lines (a positive triad on 1 MiB arrays, the integration pass
# as a share of it), identical final states; and that bad flags are refused
# with a message.
set -euo pipefail
bin="benchmarks/simulation"
out=$("$bin" --particles=3000 --frames=4 --warmup=2 --rounds=2)
echo "$out"
grep -q "heap (new/std::vector)" <<<"$out"
grep -q "frame arena vs heap: .*x faster at the median" <<<"$out"
grep -qE "^frame arena +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+ +0$" <<<"$out"
triad=$(sed -nE 's/^memory bandwidth \(STREAM triad, 1\.00 MiB arrays\): ([0-9.]+) GB\/s$/\1/p' <<<"$out")
awk -v g="$triad" 'BEGIN { exit !(g > 0) }'
grep -qE "^particle integration: [0-9]+\.[0-9]+ GB/s = [0-9]+\.[0-9]% of the triad$" <<<"$out"
grep -q "in the frame arena variant's 8 measured frames" <<<"$out"
grep -q "final state identical across variants" <<<"$out"

if err=$("$bin" --particles=0 2>&1); then
  echo "expected --particles=0 to fail"; exit 1
fi
grep -q -- "--particles must be in" <<<"$err"
if err=$("$bin" --triad_repetitions=0 2>&1); then
  echo "expected --triad_repetitions=0 to fail"; exit 1
fi
grep -q -- "--triad_repetitions must be >= 1" <<<"$err"
echo "PASS"
