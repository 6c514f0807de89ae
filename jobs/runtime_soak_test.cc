// A short version of //jobs:soak in every build: frames through the
// runtime with every worker allocating frame memory and pool blocks, read
// back by later jobs and freed across workers (jobs/internal/soak.h).
#include <memory>

#include "gtest/gtest.h"
#include "jobs/internal/soak.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // Quarantines and shadow memory grow.
#else
constexpr bool kSanitized = false;
#endif

void Soak(Config config, size_t chunks) {
  auto rt = Runtime::Create(config);
  ASSERT_TRUE(rt.ok()) << rt.status();
  constexpr uint64_t kFrames = 2400, kWarmup = 1200;
  auto r = jobs_internal::SoakRuntimeFrames(**rt, kFrames, kWarmup, chunks);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->frames, kFrames);
  EXPECT_EQ(r->corrupted, 0u);
  EXPECT_EQ(r->failed_jobs, 0u);
  EXPECT_EQ(r->pool_blocks, kFrames * chunks * 2);
  EXPECT_GT(r->frame_bytes, kFrames * chunks * 16);
  // The largest frame: every chunk's blocks (at most 8 of at most 8 KiB,
  // plus the manifest) and one 192 KiB block.
  EXPECT_GT(r->max_frame_bytes, 192u << 10);
  EXPECT_LT(r->max_frame_bytes, (192u << 10) + chunks * (8 * (8u << 10) + 512));
  if (!kSanitized) {
    EXPECT_LT(r->rss_after_max, r->rss_after_warmup + (16u << 20))
        << "resident memory grew after warm-up";
  }
}

TEST(RuntimeSoakTest, ThisMachine) { Soak(Config(), 16); }

TEST(RuntimeSoakTest, TwoSyntheticNodes) {
  auto topology = numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(topology.ok()) << topology.status();
  Soak(Config().set_topology(topology->get()), 24);
}

TEST(RuntimeSoakTest, BadArgumentsAreRefused) {
  auto rt = Runtime::Create(Config());
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ(jobs_internal::SoakRuntimeFrames(**rt, 10, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(jobs_internal::SoakRuntimeFrames(**rt, 10, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
