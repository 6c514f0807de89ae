// The suite's triad kernel (see triad_kernel.h).
#include "benchmarks/triad_kernel.h"

namespace framealloc::sim {

// The same clones as IntegrateParticles (particles.cc).
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("avx2", "default")))
#endif
void VectorTriad(double* __restrict a, const double* __restrict b,
                 const double* __restrict c, double scalar, size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + scalar * c[i];
}

}  // namespace framealloc::sim
