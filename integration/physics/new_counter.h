// Counts calls of the global operator new, for tests and the benchmark.
//
// For: checking that a frame-arena step makes no heap allocation, and
// reporting how many a heap step makes. Linking this library replaces the
// global operator new and delete of the whole program (they call malloc and
// free, so a malloc replacement such as mimalloc still serves them). Not for:
// production binaries.
//
// Thread safety: counting may be switched from any thread; the count is a
// relaxed atomic, exact once the counted threads are quiescent.
// Errors: none (operator new throws std::bad_alloc as usual).
//
// Example:
//   NewCounter::Start();
//   world.Step(StepOptions::Heap());
//   uint64_t allocations = NewCounter::Stop();
#ifndef INTEGRATION_PHYSICS_NEW_COUNTER_H_
#define INTEGRATION_PHYSICS_NEW_COUNTER_H_

#include <cstdint>

namespace framealloc {
namespace integration {

class NewCounter {
 public:
  // Zeroes the count and starts counting operator new calls (all threads).
  static void Start();
  // Stops counting and returns the calls since Start().
  static uint64_t Stop();
};

}  // namespace integration
}  // namespace framealloc

#endif  // INTEGRATION_PHYSICS_NEW_COUNTER_H_
