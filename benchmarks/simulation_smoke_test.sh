#!/usr/bin/env bash
# Runs the simulation benchmark on a small input and checks its report: both
# variants, the ratio line, zero source calls in steady frames, identical
# final states; and that bad flags are refused with a message.
set -euo pipefail
bin="benchmarks/simulation"
out=$("$bin" --particles=3000 --frames=4 --warmup=2 --rounds=2)
echo "$out"
grep -q "heap (new/std::vector)" <<<"$out"
grep -q "frame arena vs heap: .*x faster at the median" <<<"$out"
grep -qE "^frame arena +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+ +0$" <<<"$out"
grep -q "final state identical across variants" <<<"$out"

if err=$("$bin" --particles=0 2>&1); then
  echo "expected --particles=0 to fail"; exit 1
fi
grep -q -- "--particles must be in" <<<"$err"
echo "PASS"
