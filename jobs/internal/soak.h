// The job runtime's soak workload, shared by the short test
// (jobs/runtime_soak_test.cc, in every build) and the long run (//jobs:soak,
// a program).
//
// For: showing, over up to millions of frames with every worker allocating,
// that nothing grows and nothing is lost: each frame, every worker's jobs
// take a varying mix of frame memory (16 B to 8 KiB, an oversize 192 KiB
// block every 64th frame) and pool blocks from their node's SmartAlloc,
// write them, and later jobs of the same frame, on any worker, read them
// back; pool blocks live for a few frames and are freed by a job on
// whichever worker runs it (cross-thread frees). Resident memory is sampled
// after warm-up. Not for: timing (see //jobs:jobs_benchmark).
//
// Thread safety: call from one thread that is not a job of `runtime`; no
// frame may be open.
#ifndef JOBS_INTERNAL_SOAK_H_
#define JOBS_INTERNAL_SOAK_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "jobs/runtime.h"

namespace framealloc {
namespace jobs {
namespace jobs_internal {

struct RuntimeSoakResult {
  uint64_t frames = 0;
  uint64_t jobs = 0;  // Jobs and ParallelFor chunks submitted.
  uint64_t frame_allocations = 0;
  uint64_t frame_bytes = 0;      // Frame memory taken, over all frames.
  uint64_t pool_blocks = 0;      // Pool blocks allocated (and freed).
  uint64_t corrupted = 0;        // Blocks read back wrong (must be 0).
  uint64_t failed_jobs = 0;      // From the runtime's statistics (must be 0).
  uint64_t max_frame_bytes = 0;  // Largest frame, from frame_history().
  size_t rss_after_warmup = 0;   // Resident bytes when warm.
  size_t rss_after_max = 0;      // Highest sample after warm-up.
  size_t rss_end = 0;
  double seconds = 0;
};

// Runs `frames` frames on `runtime` (REQUIRES: warmup < frames; at least
// 960 to see the whole mix once). `chunks` ParallelFor chunks per frame,
// split over the nodes. An error only if the runtime refused a frame or a
// job; losses are counted in the result, for the caller to judge.
absl::StatusOr<RuntimeSoakResult> SoakRuntimeFrames(Runtime& runtime,
                                                    uint64_t frames,
                                                    uint64_t warmup,
                                                    size_t chunks = 32);

}  // namespace jobs_internal
}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_INTERNAL_SOAK_H_
