#include "benchmarks/particles.h"

#include "alloc/chunk_cache.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace sim {
namespace {

TEST(ParticlesTest, ParamsGiveAboutEightNeighbours) {
  // r = sqrt(8 / (pi * 10^4)) = 0.01596: 62 cells of 1/62 per side.
  const Params p = Params::ForCount(10000);
  EXPECT_EQ(p.grid, 62);
  EXPECT_FLOAT_EQ(p.radius, 1.0f / 62.0f);
}

TEST(ParticlesTest, SameSeedSameStateOtherSeedOtherState) {
  EXPECT_EQ(Checksum(MakeParticles(500, 7)), Checksum(MakeParticles(500, 7)));
  EXPECT_NE(Checksum(MakeParticles(500, 7)), Checksum(MakeParticles(500, 8)));
}

TEST(ParticlesTest, HeapAndArenaVariantsReachIdenticalStates) {
  for (size_t n : {size_t{1}, size_t{100}, size_t{2000}}) {
    const Params params = Params::ForCount(n);
    Particles on_heap = MakeParticles(n, 42);
    Particles on_arena = MakeParticles(n, 42);
    HeapCounters counters;
    ChunkCache cache(&SystemMemorySource::Default());
    FrameArena arena(&cache);
    for (int frame = 0; frame < 20; ++frame) {
      const FrameCounts a = Step(on_heap, params, HeapPolicy{&counters});
      const FrameCounts b = Step(on_arena, params, ArenaPolicy{&arena});
      arena.Reset();
      ASSERT_EQ(a.contacts, b.contacts) << "n=" << n << " frame " << frame;
      ASSERT_EQ(a.neighbour_entries, b.neighbour_entries);
    }
    EXPECT_EQ(Checksum(on_heap), Checksum(on_arena)) << "n=" << n;
    EXPECT_NE(Checksum(on_heap), Checksum(MakeParticles(n, 42)))
        << "the state must change";
  }
}

TEST(ParticlesTest, FramesFindContactsAndKeepParticlesInTheBox) {
  const size_t n = 5000;
  Particles p = MakeParticles(n, 3);
  const Params params = Params::ForCount(n);
  HeapCounters counters;
  size_t contacts = 0;
  for (int frame = 0; frame < 30; ++frame) {
    contacts = Step(p, params, HeapPolicy{&counters}).contacts;
  }
  // About eight neighbours each, each pair counted once: ~4 per particle.
  EXPECT_GT(contacts, n);
  EXPECT_LT(contacts, 20 * n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_GE(p.x[i], 0.0f);
    ASSERT_LE(p.x[i], 1.0f);
    ASSERT_GE(p.y[i], 0.0f);
    ASSERT_LE(p.y[i], 1.0f);
  }
  // Heap variant: a list per cell and per particle, at least.
  EXPECT_GT(counters.allocations, 30 * n);
}

TEST(ParticlesTest, ArenaFramesReuseChunksAfterWarmUp) {
  const size_t n = 20000;
  Particles p = MakeParticles(n, 5);
  const Params params = Params::ForCount(n);
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  for (int frame = 0; frame < 3; ++frame) {
    Step(p, params, ArenaPolicy{&arena});
    arena.Reset();
    cache.EndEpoch();
  }
  const uint64_t misses = cache.stats().misses;
  for (int frame = 0; frame < 10; ++frame) {
    Step(p, params, ArenaPolicy{&arena});
    EXPECT_GT(arena.stats().allocations, n);  // One list per particle.
    arena.Reset();
    cache.EndEpoch();
  }
  EXPECT_EQ(cache.stats().misses, misses);
}

}  // namespace
}  // namespace sim
}  // namespace framealloc
