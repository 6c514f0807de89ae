// A frame arena on a chunk cache makes no heap allocation once warm: the
// premise of the suite's "heap allocs/f" column for the arena runs, and of
// README's "after warm-up a steady frame makes no call into the system
// allocator". Frames here outgrow the first chunk (so chunks go back to the
// cache at every Reset and come out again the next frame) and take an
// oversize block; the cache ends an epoch per frame, as SmartAlloc's frames
// do. The count is every global operator new in the process
// (//benchmarks:heap_counter): the cache's own bookkeeping included, and
// the system memory source, which allocates with operator new.
#include <cstddef>
#include <cstring>

#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "benchmarks/heap_counter.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

void Frame(FrameArena& arena, int frame) {
  // About 300 KiB in 64 KiB-1 MiB chunks, plus a 2 MiB oversize block.
  for (int i = 0; i < 300; ++i) {
    char* p = arena.AllocateArray<char>(1000 + (frame + i) % 48);
    std::memset(p, i, 16);
  }
  char* big = arena.AllocateArray<char>(size_t{2} << 20);
  big[0] = static_cast<char>(frame);
}

TEST(ArenaSteadyStateTest, WarmFramesMakeNoHeapAllocation) {
  ChunkCache cache(&SystemMemorySource::Default(), ChunkCacheOptions{});
  FrameArena arena(&cache, FrameArenaOptions()
                               .set_initial_chunk_size(size_t{64} << 10)
                               .set_max_chunk_size(size_t{1} << 20));
  for (int frame = 0; frame < 20; ++frame) {  // Warm-up.
    Frame(arena, frame);
    arena.Reset();
    cache.EndEpoch();
  }
  const uint64_t misses_before = cache.stats().misses;
  const sim::HeapCounts before = sim::ReadHeapCounts();
  for (int frame = 20; frame < 220; ++frame) {
    Frame(arena, frame);
    arena.Reset();
    cache.EndEpoch();
  }
  const sim::HeapCounts used = sim::ReadHeapCounts() - before;
  EXPECT_EQ(used.allocations, 0u) << used.bytes << " bytes";
  EXPECT_EQ(cache.stats().misses, misses_before);
  EXPECT_GT(cache.stats().hits, 200u);  // Chunks did cycle through it.
}

}  // namespace
}  // namespace framealloc
