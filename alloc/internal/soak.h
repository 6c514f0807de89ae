// Stress and soak workloads of the allocator, shared by the short tests
// (alloc/reliability_stress_test.cc, in every build) and the long runs
// (//alloc:soak, a program).
//
// For: measuring, over long runs with several threads, that nothing grows
// and nothing is lost: resident memory and the bytes a SmartAlloc holds
// from its source stay flat after warm-up under millions of frames and
// under thread churn, and every pool block crossing threads arrives exactly
// once with its contents intact. Each workload returns what it measured;
// the callers decide what to assert or print. Not for: timing (see the
// benchmarks) or the job runtime.
//
// Thread safety: each function runs its own threads and joins them.
#ifndef ALLOC_INTERNAL_SOAK_H_
#define ALLOC_INTERNAL_SOAK_H_

#include <cstddef>
#include <cstdint>

#include "alloc/smart_alloc.h"

namespace framealloc {
namespace alloc_internal {

// The process's resident set in bytes (/proc/self/statm), or 0 when it
// cannot be read.
size_t ResidentBytes();

// `threads` threads each run `frames` frames on `alloc`: begin_frame, a
// varying mix of frame allocations (16 B to 8 KiB, an oversize 192 KiB block
// every 64th frame), a few pool blocks kept across frames and freed later,
// end_frame. Every block is written and read back. The mix repeats every
// 960 frames; the run is warm once every thread has run `warmup` frames
// (REQUIRES: warmup < frames; at least 960 to see the whole mix). Thread 0
// reads the source's outstanding bytes every frame and resident memory
// every 256 frames.
struct FrameSoakResult {
  uint64_t frames = 0;       // Over all threads.
  uint64_t allocations = 0;  // Frame and pool.
  uint64_t corrupted = 0;    // Blocks whose contents changed (must be 0).
  // Source bytes outstanding (what the instance holds from its source).
  size_t reserved_warmup_max = 0;  // Highest during warm-up.
  size_t reserved_after_max = 0;   // Highest after warm-up.
  size_t reserved_end = 0;
  size_t rss_after_warmup = 0;  // Resident memory at the end of warm-up.
  size_t rss_after_max = 0;     // Highest after warm-up.
  size_t rss_end = 0;
  double seconds = 0;
};
FrameSoakResult SoakFrames(SmartAlloc& alloc, int threads, uint64_t frames,
                           uint64_t warmup);

// `threads` short-lived threads, at most `concurrent` alive at once, each
// allocating frame and pool memory, ending a frame and exiting. The first
// `warmup` threads are the warm-up.
struct ChurnResult {
  uint64_t threads = 0;
  uint64_t exited_threads = 0;  // From the statistics.
  size_t live_threads = 0;      // From the statistics, after the run.
  size_t reserved_after_warmup = 0;
  size_t reserved_end = 0;
  size_t rss_after_warmup = 0;
  size_t rss_end = 0;
  double seconds = 0;
};
ChurnResult SoakThreadChurn(SmartAlloc& alloc, int threads, int concurrent,
                            int warmup);

// `pairs` producer threads each send `blocks` pool blocks (24 B to 2 KiB,
// each carrying its producer, a sequence number and a checksummed payload)
// through a bounded queue to `pairs` consumer threads, which check and free
// them (cross-thread frees). Counts what arrived.
struct PoolSoakResult {
  uint64_t sent = 0;
  uint64_t received = 0;    // Distinct (producer, sequence) pairs seen.
  uint64_t duplicated = 0;  // Seen more than once (must be 0).
  uint64_t lost = 0;        // Sent and never seen (must be 0).
  uint64_t corrupted = 0;   // Bad checksum or payload (must be 0).
  // From the statistics after every thread exited.
  uint64_t pool_allocations = 0;
  uint64_t pool_frees = 0;
  size_t blocks_out = 0;  // Over all classes (must be 0).
  double seconds = 0;
};
PoolSoakResult SoakPools(SmartAlloc& alloc, int pairs, uint64_t blocks);

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_SOAK_H_
