// The STREAM triad kernel of the simulation suite, compiled like the
// scenarios' streaming passes.
//
// For: the suite's bandwidth limit (suite.cc's MeasureTriad). alloc/
// bandwidth.h has the same kernel, but built with the repository's -O2
// flags gcc 12 leaves it scalar (one double a step), so it measures the
// loop, not the memory; comparing a vectorized particle update with it
// would flatter the update. This one is built with the particles' flags:
// vectorized, and cloned for AVX2 where the CPU has it. Not for: anything
// but measuring.
//
// Thread safety: none needed (pure function). Errors: none.
//
// Example:
//   sim::VectorTriad(a, b, c, 3.0, n);  // a[i] = b[i] + 3 c[i]
#ifndef BENCHMARKS_TRIAD_KERNEL_H_
#define BENCHMARKS_TRIAD_KERNEL_H_

#include <cstddef>

namespace framealloc::sim {

// a[i] = b[i] + scalar * c[i] for i < n.
// REQUIRES: a, b and c hold n doubles each and do not overlap.
void VectorTriad(double* a, const double* b, const double* c, double scalar,
                 size_t n);

}  // namespace framealloc::sim

#endif  // BENCHMARKS_TRIAD_KERNEL_H_
