#include "benchmarks/particles.h"

#include <memory>
#include <vector>

#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "benchmarks/suite.h"
#include "gtest/gtest.h"
#include "numa/topology.h"

namespace framealloc::sim {
namespace {

TEST(ParticlesTest, ParamsGiveAboutEightNeighbours) {
  // r = sqrt(8 / (pi * 10^4)) = 0.01596: 62 cells of 1/62 per side.
  const ParticleParams p = ParticleParams::ForCount(10000);
  EXPECT_EQ(p.grid, 62);
  EXPECT_FLOAT_EQ(p.radius, 1.0f / 62.0f);
}

TEST(ParticlesTest, IntegrateMovesReflectsAndClamps) {
  ParticleParams params;
  params.dt = 0.5f;
  params.gravity = 0.0f;
  // 0: free flight; 1: crosses the left wall; 2: crosses the top wall;
  // 3: so fast it would leave the box even after the reflection.
  std::vector<float> x = {0.5f, 0.1f, 0.5f, 0.5f};
  std::vector<float> y = {0.5f, 0.5f, 0.9f, 0.5f};
  std::vector<float> vx = {0.2f, -0.4f, 0.0f, 10.0f};
  std::vector<float> vy = {0.0f, 0.0f, 0.4f, 0.0f};
  std::vector<float> fx = {0.0f, 0.0f, 0.0f, 0.0f};
  std::vector<float> fy = {0.0f, 0.0f, 0.0f, 0.0f};
  IntegrateParticles(x.data(), y.data(), vx.data(), vy.data(), fx.data(),
                     fy.data(), 4, params);
  EXPECT_FLOAT_EQ(x[0], 0.6f);
  EXPECT_FLOAT_EQ(vx[0], 0.2f);
  EXPECT_FLOAT_EQ(x[1], 0.1f);  // -0.1 reflected.
  EXPECT_FLOAT_EQ(vx[1], 0.4f);
  EXPECT_FLOAT_EQ(y[2], 0.9f);  // 1.1 reflected.
  EXPECT_FLOAT_EQ(vy[2], -0.4f);
  EXPECT_FLOAT_EQ(x[3], 0.0f);  // 5.5 -> 2 - 5.5 = -3.5 -> clamped.
  EXPECT_FLOAT_EQ(vx[3], -10.0f);
}

TEST(ParticlesTest, InitAndStepCheckTheirInput) {
  ParticlesSimulation sim;
  FrameEnv heap;
  EXPECT_EQ(sim.Step(heap).code(), absl::StatusCode::kFailedPrecondition);
  ScenarioConfig too_big;
  too_big.size = ParticlesSimulation::kMaxSize + 1;
  absl::Status s = sim.Init(too_big, heap);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("size must be in"), absl::string_view::npos);
  FrameEnv arena_without_arena;
  arena_without_arena.variant = Variant::kArena;
  EXPECT_EQ(sim.Init({}, arena_without_arena).code(),
            absl::StatusCode::kInvalidArgument);
  FrameEnv runtime_without_runtime;
  runtime_without_runtime.variant = Variant::kRuntimeHeap;
  EXPECT_EQ(sim.Init({}, runtime_without_runtime).code(),
            absl::StatusCode::kInvalidArgument);
  ScenarioConfig small;
  small.size = 100;
  ASSERT_TRUE(sim.Init(small, heap).ok());
  FrameEnv other = heap;
  other.variant = Variant::kArena;
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  other.arena = &arena;
  EXPECT_EQ(sim.Step(other).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParticlesTest, FramesFindNeighboursAndKeepParticlesInTheBox) {
  ParticlesSimulation sim;
  ScenarioConfig config;
  config.size = 5000;
  config.seed = 3;
  FrameEnv env;
  ASSERT_TRUE(sim.Init(config, env).ok());
  const uint64_t initial = sim.StateHash();
  for (int frame = 0; frame < 10; ++frame) ASSERT_TRUE(sim.Step(env).ok());
  EXPECT_NE(sim.StateHash(), initial);
  // About eight neighbours each, each pair in both lists.
  EXPECT_GT(sim.last_neighbour_entries(), 4u * 5000);
  EXPECT_LT(sim.last_neighbour_entries(), 16u * 5000);
  for (size_t i = 0; i < sim.size(); ++i) {
    ASSERT_GE(sim.x()[i], 0.0f);
    ASSERT_LE(sim.x()[i], 1.0f);
    ASSERT_GE(sim.y()[i], 0.0f);
    ASSERT_LE(sim.y()[i], 1.0f);
  }
  // The state is kept in cell order (sorted at the start of the frame,
  // then moved by one integration): rows of cells ascend, except where a
  // particle crossed into the next row. In random order half would descend.
  const int grid = sim.params().grid;
  auto row_of = [grid](float y) {
    return std::min(static_cast<int>(y * static_cast<float>(grid)), grid - 1);
  };
  size_t descents = 0;
  for (size_t i = 1; i < sim.size(); ++i) {
    if (row_of(sim.y()[i - 1]) > row_of(sim.y()[i])) ++descents;
  }
  EXPECT_LT(descents, sim.size() / 20);
}

TEST(ParticlesTest, SeedDecidesTheState) {
  auto hash = [](uint64_t seed) {
    ParticlesSimulation sim;
    ScenarioConfig config;
    config.size = 2000;
    config.seed = seed;
    FrameEnv env;
    EXPECT_TRUE(sim.Init(config, env).ok());
    for (int f = 0; f < 3; ++f) EXPECT_TRUE(sim.Step(env).ok());
    return sim.StateHash();
  };
  EXPECT_EQ(hash(7), hash(7));
  EXPECT_NE(hash(7), hash(8));
}

// Several blocks (9000 particles = 3 blocks), so the runtime splits the
// work and the parallel scatter reorders cells.
TEST(ParticlesTest, EveryVariantAndWorkerCountReachesTheSameState) {
  RunOptions options;
  options.config.size = 9000;
  options.config.seed = 11;
  options.warmup = 1;
  options.frames = 3;
  absl::StatusOr<std::unique_ptr<numa::Topology>> two_nodes =
      numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  std::vector<uint64_t> hashes;
  for (RunKind kind :
       {RunKind::kHeap, RunKind::kArena, RunKind::kRuntimeHeap,
        RunKind::kRuntimeArena, RunKind::kRuntimeArenaOneWorker}) {
    for (const numa::Topology* topology :
         {static_cast<const numa::Topology*>(nullptr),
          static_cast<const numa::Topology*>(two_nodes->get())}) {
      if (topology != nullptr && VariantOf(kind) != Variant::kRuntimeArena &&
          VariantOf(kind) != Variant::kRuntimeHeap) {
        continue;
      }
      options.topology = topology;
      for (int workers : {0, 3}) {
        if (workers != 0 && topology == nullptr) continue;
        options.workers = workers;
        absl::StatusOr<VariantRun> run =
            RunVariant(ParticlesScenario(), kind, options);
        ASSERT_TRUE(run.ok()) << RunKindName(kind) << ": " << run.status();
        EXPECT_EQ(run->frames.size(), 3u);
        hashes.push_back(run->state_hash);
      }
    }
  }
  ASSERT_GE(hashes.size(), 8u);
  for (uint64_t h : hashes) EXPECT_EQ(h, hashes[0]);
}

TEST(ParticlesTest, ArenaVariantsTakeNoHeapAllocationsPerFrame) {
  RunOptions options;
  options.config.size = 20000;
  options.warmup = 2;
  options.frames = 3;
  absl::StatusOr<VariantRun> heap =
      RunVariant(ParticlesScenario(), RunKind::kHeap, options);
  absl::StatusOr<VariantRun> arena =
      RunVariant(ParticlesScenario(), RunKind::kArena, options);
  absl::StatusOr<VariantRun> runtime_arena =
      RunVariant(ParticlesScenario(), RunKind::kRuntimeArena, options);
  ASSERT_TRUE(heap.ok() && arena.ok() && runtime_arena.ok());
  for (const FrameRecord& f : heap->frames) {
    // The frame-wide arrays and two lists per block, at least.
    EXPECT_GE(f.heap_allocations, 10u + 2 * 5);
    EXPECT_GT(f.heap_bytes, 20000u * 4 * 7);
    EXPECT_EQ(f.arena_bytes, 0u);
  }
  for (const FrameRecord& f : arena->frames) {
    // The arena's and its chunk cache's own bookkeeping only (this frame's
    // frame-wide arrays are oversize blocks, handed back to the cache at
    // the reset), never the scenario's temporaries.
    EXPECT_LE(f.heap_allocations, 4u);
    EXPECT_GE(f.arena_allocations, 10 + 2 * 5);
    EXPECT_GT(f.arena_bytes, 20000u * 4 * 7);
  }
  for (const FrameRecord& f : runtime_arena->frames) {
    EXPECT_GT(f.arena_bytes, 20000u * 4 * 7);
    // From the runtime's frame history: every worker arena's allocations.
    EXPECT_GE(f.arena_allocations, 10 + 2 * 5);
  }
  // The streaming pass: 24 bytes read and 16 written per particle.
  ASSERT_TRUE(arena->pass.has_value());
  EXPECT_EQ(arena->pass->bytes_read, 20000u * 24);
  EXPECT_EQ(arena->pass->bytes_written, 20000u * 16);
  EXPECT_EQ(arena->pass->footprint_bytes, 20000u * 24);
  for (const FrameRecord& f : arena->frames) EXPECT_GT(f.pass_seconds, 0);
}

}  // namespace
}  // namespace framealloc::sim
