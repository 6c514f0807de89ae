#include "alloc/memory_resources.h"

#include <memory_resource>
#include <string>
#include <unordered_map>
#include <vector>

#include "alloc/internal/test_util.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

TEST(FrameArenaResourceTest, PmrContainersLiveInTheArena) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  FrameArenaResource resource(&arena);
  std::pmr::vector<int> v(&resource);
  std::pmr::string s("a string long enough to leave the small buffer",
                     &resource);
  for (int i = 0; i < 1000; ++i) v.push_back(i);
  EXPECT_TRUE(arena.Owns(v.data()));
  EXPECT_TRUE(arena.Owns(s.data()));
  EXPECT_TRUE(resource.is_equal(resource));
  FrameArena other(&cache);
  FrameArenaResource other_resource(&other);
  EXPECT_FALSE(resource.is_equal(other_resource));
}

TEST(FrameArenaResourceTest, RefusalIsBadAlloc) {
  alloc_internal::CountingSource source;
  source.RefuseAfter(0);
  ChunkCache cache(&source);
  FrameArena arena(&cache);
  FrameArenaResource resource(&arena);
  std::pmr::vector<int> v(&resource);
  EXPECT_THROW(v.reserve(10), std::bad_alloc);
}

class SmartResourcesTest : public ::testing::Test {
 protected:
  alloc_internal::CountingSource source_;
  SmartAlloc alloc_{AllocConfig().set_source(&source_)};
};

TEST_F(SmartResourcesTest, FrameMemoryResourceCountsAndResetsPerFrame) {
  FrameMemoryResource resource(&alloc_);
  {
    std::pmr::unordered_map<int, std::pmr::string> m(&resource);
    for (int i = 0; i < 100; ++i) {
      m.emplace(i, std::pmr::string(40, 'x', &resource));
    }
    EXPECT_EQ(m.at(50).size(), 40u);
    EXPECT_TRUE(alloc_.frame_arena().Owns(&m.at(50)));
  }
  EXPECT_GT(alloc_.stats().frame.allocations, 200u);
  alloc_.end_frame();
  EXPECT_EQ(alloc_.frame_arena().stats().bytes_used, 0u);
}

TEST_F(SmartResourcesTest, PoolMemoryResourceFreesEverything) {
  PoolMemoryResource resource(&alloc_);
  {
    std::pmr::vector<std::pmr::string> v(&resource);
    for (int i = 0; i < 500; ++i) v.emplace_back(std::string(100, 'y'));
    EXPECT_EQ(v[499].size(), 100u);
  }
  AllocStats stats = alloc_.stats();
  EXPECT_GT(stats.pool.allocations, 500u);
  EXPECT_EQ(stats.pool.live_bytes(), 0);
  EXPECT_EQ(stats.heap.live_bytes(), 0);
}

TEST(SmartResourcesBudgetTest, RefusedBudgetIsBadAlloc) {
  SmartAlloc alloc(AllocConfig().set_global_budget(256));
  PoolMemoryResource pool(&alloc);
  FrameMemoryResource frame(&alloc);
  std::pmr::vector<char> a(&pool);
  std::pmr::vector<char> b(&frame);
  EXPECT_THROW(a.reserve(1000), std::bad_alloc);
  EXPECT_THROW(b.reserve(1000), std::bad_alloc);
  EXPECT_NO_THROW(a.reserve(100));
}

}  // namespace
}  // namespace framealloc
