#include "alloc/arena_allocator.h"

#include <map>
#include <numeric>
#include <string>

#include "alloc/internal/test_util.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

class ArenaAllocatorTest : public ::testing::Test {
 protected:
  alloc_internal::CountingSource source_;
  ChunkCache cache_{&source_};
  FrameArena arena_{&cache_};
};

TEST_F(ArenaAllocatorTest, VectorLivesInTheArena) {
  ArenaVector<int> v{ArenaAllocator<int>(&arena_)};
  for (int i = 0; i < 1000; ++i) v.push_back(i);
  EXPECT_EQ(std::accumulate(v.begin(), v.end(), 0), 999 * 1000 / 2);
  EXPECT_TRUE(arena_.Owns(v.data()));
  // Every regrowth stays in the arena until the reset.
  EXPECT_GE(arena_.stats().bytes_requested, 1000 * sizeof(int));
}

TEST_F(ArenaAllocatorTest, RebindsForNodeBasedContainers) {
  using Alloc = ArenaAllocator<std::pair<const int, std::string>>;
  std::map<int, std::string, std::less<int>, Alloc> map{Alloc(&arena_)};
  map[3] = "three";
  map[1] = "one";
  EXPECT_EQ(map.begin()->second, "one");
  EXPECT_EQ(arena_.stats().allocations, 2u);  // One node each.
}

TEST_F(ArenaAllocatorTest, EqualityFollowsTheArena) {
  FrameArena other(&cache_);
  EXPECT_EQ(ArenaAllocator<int>(&arena_), ArenaAllocator<double>(&arena_));
  EXPECT_FALSE(ArenaAllocator<int>(&arena_) == ArenaAllocator<int>(&other));
}

TEST_F(ArenaAllocatorTest, ContainersPerFrameCostNoSourceCalls) {
  auto frame = [&] {
    ArenaVector<double> v{ArenaAllocator<double>(&arena_)};
    v.resize(20000, 1.0);
    EXPECT_EQ(v.back(), 1.0);
  };
  frame();
  arena_.Reset();
  const int warm = source_.allocate_calls();
  for (int i = 0; i < 50; ++i) {
    frame();
    arena_.Reset();
  }
  EXPECT_EQ(source_.allocate_calls(), warm);
}

}  // namespace
}  // namespace framealloc
