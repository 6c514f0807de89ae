// Heap counter: counts every call to the global operator new (and the bytes
// asked for) in a binary that links //benchmarks:heap_counter.
//
// For: the simulation suite's "allocations and bytes per frame" of the heap
// variants. The library replaces the global operator new/delete (all forms)
// with versions that call malloc/free and count; under a malloc replacement
// (mimalloc linked into the binary) the same counts are taken, so the heap
// variants compare like for like. Each thread counts into a slot of its own
// (only the owner writes it: no shared cache line on the allocation path);
// a read sums the slots. Not for: counting malloc calls made directly (C
// code, libraries that call malloc), nor memory use (frees are not
// subtracted).
//
// Thread safety: ReadHeapCounts may be called from any thread; counts of
// other threads are exact once those threads are quiescent (after the
// frame's jobs finished). Errors: operator new throws std::bad_alloc (the
// nothrow forms return nullptr) when malloc or aligned_alloc fails or the
// size rounded up to the alignment would not fit in size_t, as the standard
// one does.
//
// Example:
//   sim::HeapCounts before = sim::ReadHeapCounts();
//   RunFrame();
//   sim::HeapCounts used = sim::ReadHeapCounts() - before;
#ifndef BENCHMARKS_HEAP_COUNTER_H_
#define BENCHMARKS_HEAP_COUNTER_H_

#include <cstdint>

namespace framealloc::sim {

struct HeapCounts {
  uint64_t allocations = 0;  // Calls to operator new (any form).
  uint64_t bytes = 0;        // Bytes they asked for.
  HeapCounts operator-(const HeapCounts& o) const {
    return {allocations - o.allocations, bytes - o.bytes};
  }
};

// The counts of every thread so far.
HeapCounts ReadHeapCounts();

}  // namespace framealloc::sim

#endif  // BENCHMARKS_HEAP_COUNTER_H_
