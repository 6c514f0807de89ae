#!/usr/bin/env bash
# Runs alloc/valgrind_check (built with --config=valgrind) under memcheck
# twice: its two deliberate bugs must be reported as invalid reads inside
# framealloc's memory, and its clean workload (every debug aid on) must be
# reported for nothing. Tagged manual: only meaningful with --config=valgrind.
set -uo pipefail
if ! command -v valgrind >/dev/null; then
  echo "valgrind is not installed (tools/setup.sh installs it)"; exit 1
fi
out=$(valgrind --error-exitcode=42 --track-origins=no \
  alloc/valgrind_check 2>&1)
rc=$?
echo "$out"
[[ $rc -eq 42 ]] || { echo "expected memcheck errors (exit 42), got $rc"; exit 1; }
reads=$(grep -c "Invalid read of size" <<<"$out")
[[ $reads -ge 2 ]] || { echo "expected 2 invalid reads, saw $reads"; exit 1; }
grep -q "ERROR SUMMARY: [2-9]" <<<"$out" || exit 1
echo "PASS: memcheck saw both uses after release"

# Before the fix the released fill of every end_frame wrote into the chunk
# Reset() had just marked NOACCESS: an "Invalid write" per frame.
out=$(valgrind --error-exitcode=42 --track-origins=no \
  alloc/valgrind_check clean 2>&1)
rc=$?
echo "$out"
[[ $rc -eq 0 ]] || { echo "expected no memcheck error on the clean run, got exit $rc"; exit 1; }
grep -q "ERROR SUMMARY: 0 errors" <<<"$out" || { echo "expected 0 memcheck errors"; exit 1; }
echo "PASS: memcheck saw nothing wrong in the clean run with every debug aid on"
