// Short versions of the allocator's soak workloads (alloc/internal/soak.h),
// in every build: several threads running many frames, thread churn, and
// pools under producer/consumer cross-thread frees. Under ASan and TSan the
// counts are scaled down so each test stays within seconds.
//
// For: asserting, on every CI run, that nothing is lost, duplicated or
// corrupted and that the memory an instance holds stays flat after warm-up.
// Not for: the long runs (//alloc:soak, docs/reliability.md) or timing.
#include <cstdint>
#include <cstdio>
#include <memory>

#include "alloc/internal/soak.h"
#include "alloc/smart_alloc.h"
#include "gtest/gtest.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FRAMEALLOC_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define FRAMEALLOC_SANITIZED 1
#endif
#endif

namespace framealloc {
namespace {

#if defined(FRAMEALLOC_SANITIZED)
// Sanitizers slow the workloads 5-15x, and their own bookkeeping (ASan's
// quarantine, TSan's shadow) makes resident memory meaningless.
constexpr int kScale = 10;
constexpr bool kCheckResident = false;
#else
constexpr int kScale = 1;
constexpr bool kCheckResident = true;
#endif

class ReliabilityStressTest : public ::testing::Test {
 protected:
  SystemMemorySource source_;  // This instance's bytes alone.
  std::unique_ptr<SmartAlloc> alloc_ =
      SmartAlloc::Create(AllocConfig().set_source(&source_)).value();
};

TEST_F(ReliabilityStressTest, ManyFramesOnTwoThreadsStayFlat) {
  const uint64_t frames = 40000 / kScale;
  // Warm-up: two periods of the workload's mix (960 frames each).
  alloc_internal::FrameSoakResult r =
      alloc_internal::SoakFrames(*alloc_, 2, frames, 1920);
  std::printf(
      "frames: %llu, reserved warm-up max %zu, after max %zu, end "
      "%zu; resident after warm-up %zu, max after %zu; %.2f s\n",
      static_cast<unsigned long long>(r.frames), r.reserved_warmup_max,
      r.reserved_after_max, r.reserved_end, r.rss_after_warmup, r.rss_after_max,
      r.seconds);
  EXPECT_EQ(r.frames, 2 * frames);
  EXPECT_EQ(r.corrupted, 0u);
  // The source's bytes never exceed the warm-up peak by more than one
  // oversize block per thread (the threads' peaks need not coincide).
  EXPECT_LE(r.reserved_after_max, r.reserved_warmup_max + 2 * (256 << 10));
  if (kCheckResident) {
    EXPECT_LE(r.rss_after_max, r.rss_after_warmup + (16 << 20));
  }
}

TEST_F(ReliabilityStressTest, ThreadChurnLeavesNothingBehind) {
  const int threads = 2000 / kScale;
  alloc_internal::ChurnResult r =
      alloc_internal::SoakThreadChurn(*alloc_, threads, 8, threads / 10);
  std::printf(
      "churn: %d threads, reserved after warm-up %zu, end %zu; "
      "resident after warm-up %zu, end %zu; %.2f s\n",
      threads, r.reserved_after_warmup, r.reserved_end, r.rss_after_warmup,
      r.rss_end, r.seconds);
  EXPECT_EQ(r.exited_threads, static_cast<uint64_t>(threads));
  EXPECT_EQ(r.live_threads, 0u);
  // Bounded by what the 8 threads alive at once can hold (a 64 KiB first
  // chunk each, idle in the cache after they exit, and the pool's pages),
  // however many threads ran: 2000 leaked arenas would be 125 MiB.
  EXPECT_LE(r.reserved_end, size_t{1} << 20);
  if (kCheckResident) {
    EXPECT_LE(r.rss_end, r.rss_after_warmup + (16 << 20));
  }
}

TEST_F(ReliabilityStressTest, CrossThreadPoolFreesLoseNothing) {
  const uint64_t blocks = 100000 / kScale;
  alloc_internal::PoolSoakResult r =
      alloc_internal::SoakPools(*alloc_, 2, blocks);
  std::printf("pools: %llu sent, %llu received; %.2f s\n",
              static_cast<unsigned long long>(r.sent),
              static_cast<unsigned long long>(r.received), r.seconds);
  EXPECT_EQ(r.sent, 2 * blocks);
  EXPECT_EQ(r.received, r.sent);
  EXPECT_EQ(r.lost, 0u);
  EXPECT_EQ(r.duplicated, 0u);
  EXPECT_EQ(r.corrupted, 0u);
  EXPECT_EQ(r.pool_allocations, r.sent);
  EXPECT_EQ(r.pool_frees, r.sent);
  EXPECT_EQ(r.blocks_out, 0u);  // Every block is back in a page or batch.
}

}  // namespace
}  // namespace framealloc
