// Every registered scenario of the suite reaches the same state in every
// variant on small sizes: one thread with heap or arena temporaries, the
// runtime on this machine (all workers and one), and the runtime on a
// synthetic two-node topology. Runs through the driver's own RunVariant.
#include "benchmarks/scenarios.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "benchmarks/scenario.h"
#include "benchmarks/suite.h"
#include "gtest/gtest.h"
#include "numa/topology.h"

namespace framealloc::sim {
namespace {

TEST(ScenariosTest, RegistryListsParticlesFirstAndNamesAreUnique) {
  const std::vector<ScenarioInfo> all = RegisteredScenarios();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all[0].name, "particles");
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_TRUE(all[i].create != nullptr) << all[i].name;
    EXPECT_GT(all[i].default_size, 0u) << all[i].name;
    for (size_t j = i + 1; j < all.size(); ++j) {
      EXPECT_NE(all[i].name, all[j].name);
    }
  }
}

TEST(ScenariosTest, FindScenariosSelectsAndRejects) {
  absl::StatusOr<std::vector<ScenarioInfo>> all = FindScenarios("all");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), RegisteredScenarios().size());
  absl::StatusOr<std::vector<ScenarioInfo>> one = FindScenarios("particles");
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].name, "particles");
  absl::StatusOr<std::vector<ScenarioInfo>> bad =
      FindScenarios("particles,nosuch");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("nosuch"), absl::string_view::npos);
}

std::vector<std::string> Names(const std::vector<ScenarioInfo>& infos) {
  std::vector<std::string> names;
  for (const ScenarioInfo& info : infos) names.push_back(info.name);
  return names;
}

// Regression (review): "all" among other names ("--scenario=all,physics")
// was refused as "unknown scenario 'all' (known: ..., all)". It selects
// every scenario, each once; a name given twice is run once; an unknown
// name beside "all" is still refused.
TEST(ScenariosTest, AllInAListSelectsEveryScenarioOnce) {
  const std::vector<std::string> every = Names(RegisteredScenarios());
  for (const char* list : {"all,physics", "physics,all", "all,all", "all,"}) {
    absl::StatusOr<std::vector<ScenarioInfo>> chosen = FindScenarios(list);
    ASSERT_TRUE(chosen.ok()) << list << ": " << chosen.status();
    EXPECT_EQ(Names(*chosen), every) << list;
  }
  absl::StatusOr<std::vector<ScenarioInfo>> twice =
      FindScenarios("ecs,physics,ecs");
  ASSERT_TRUE(twice.ok()) << twice.status();
  EXPECT_EQ(Names(*twice), (std::vector<std::string>{"physics", "ecs"}));
  absl::StatusOr<std::vector<ScenarioInfo>> bad = FindScenarios("all,nosuch");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("unknown scenario 'nosuch'"),
            absl::string_view::npos)
      << bad.status();
}

TEST(ScenariosTest, EveryScenarioReachesTheSameStateInEveryVariant) {
  absl::StatusOr<std::unique_ptr<numa::Topology>> two_nodes =
      numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  for (const ScenarioInfo& info : RegisteredScenarios()) {
    RunOptions options;
    options.config.seed = 5;
    options.config.size = std::min<size_t>(info.default_size, 3000);
    options.warmup = 1;
    options.frames = 4;
    struct Case {
      RunKind kind;
      const numa::Topology* topology;
    };
    const Case cases[] = {
        {RunKind::kHeap, nullptr},
        {RunKind::kArena, nullptr},
        {RunKind::kRuntimeHeap, nullptr},
        {RunKind::kRuntimeArena, nullptr},
        {RunKind::kRuntimeArenaOneWorker, nullptr},
        {RunKind::kRuntimeHeap, two_nodes->get()},
        {RunKind::kRuntimeArena, two_nodes->get()},
    };
    uint64_t first = 0;
    for (const Case& c : cases) {
      options.topology = c.topology;
      absl::StatusOr<VariantRun> run = RunVariant(info, c.kind, options);
      ASSERT_TRUE(run.ok())
          << info.name << " " << RunKindName(c.kind) << ": " << run.status();
      ASSERT_EQ(run->frames.size(), 4u);
      if (&c == &cases[0]) first = run->state_hash;
      EXPECT_EQ(run->state_hash, first)
          << info.name << " " << RunKindName(c.kind)
          << (c.topology != nullptr ? " on 2 synthetic nodes" : "");
    }
    // The frames change the state: one frame fewer is another state.
    options.topology = nullptr;
    options.frames = 3;
    absl::StatusOr<VariantRun> shorter =
        RunVariant(info, RunKind::kHeap, options);
    ASSERT_TRUE(shorter.ok());
    EXPECT_NE(shorter->state_hash, first) << info.name;
  }
}

// The renderer keeps each frame's draws in arenas of its own (one per lane
// of each in-flight slot): the table counts them, so its arena variants
// show the per-draw allocations the heap variant makes with new.
TEST(ScenariosTest, TheRenderersOwnArenasAreCounted) {
  const std::vector<ScenarioInfo> all = RegisteredScenarios();
  const ScenarioInfo* render = nullptr;
  for (const ScenarioInfo& info : all) {
    if (info.name == "render") render = &info;
  }
  ASSERT_NE(render, nullptr);
  RunOptions options;
  options.config.seed = 9;
  options.config.size = 3000;
  options.warmup = 1;
  options.frames = 3;
  absl::StatusOr<VariantRun> heap =
      RunVariant(*render, RunKind::kHeap, options);
  ASSERT_TRUE(heap.ok()) << heap.status();
  for (RunKind kind : {RunKind::kArena, RunKind::kRuntimeArena}) {
    absl::StatusOr<VariantRun> arena = RunVariant(*render, kind, options);
    ASSERT_TRUE(arena.ok()) << arena.status();
    for (size_t f = 0; f < 3; ++f) {
      const FrameRecord& h = heap->frames[f];
      const FrameRecord& a = arena->frames[f];
      ASSERT_GT(h.heap_allocations, 1000u);  // A draw is 2-3 allocations.
      // Every draw's command and payloads, in the arenas instead.
      EXPECT_GE(static_cast<double>(a.arena_allocations),
                0.9 * static_cast<double>(h.heap_allocations))
          << RunKindName(kind) << " frame " << f;
      EXPECT_GE(static_cast<double>(a.arena_bytes),
                0.9 * static_cast<double>(h.heap_bytes))
          << RunKindName(kind) << " frame " << f;
      EXPECT_LT(a.heap_allocations, 100u) << RunKindName(kind);
    }
  }
}

// Regression (review): Init builds the initial state from the config, so a
// second Init starts over: after other frames, with another seed and size,
// and in another variant (heap after arena and arena after heap), Init and
// three steps reach the state a fresh object reaches. The ecs scenario kept
// its entities (twice as many after the second Init) and its frame counter;
// the render scenario kept its frame counter (every later Step was refused
// as out of sequence) and the first variant's renderer.
TEST(ScenariosTest, InitAgainStartsOver) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameEnv heap{Variant::kHeap, nullptr, nullptr};
  const FrameEnv with_arena{Variant::kArena, nullptr, &arena};
  const ScenarioConfig first{.seed = 3, .size = 2000};
  const ScenarioConfig second{.seed = 7, .size = 3000};
  auto steps = [&arena](Scenario& s, const FrameEnv& env, int n) {
    for (int f = 0; f < n; ++f) {
      const absl::Status st = s.Step(env);
      arena.Reset();
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  };
  for (const ScenarioInfo& info : RegisteredScenarios()) {
    for (const auto& [before, after] :
         {std::pair{heap, heap}, std::pair{with_arena, with_arena},
          std::pair{with_arena, heap}, std::pair{heap, with_arena}}) {
      SCOPED_TRACE(info.name + " " + std::string(VariantName(before.variant)) +
                   " then " + std::string(VariantName(after.variant)));
      std::unique_ptr<Scenario> fresh = info.create();
      ASSERT_TRUE(fresh->Init(second, after).ok());
      ASSERT_TRUE(steps(*fresh, after, 3).ok());

      std::unique_ptr<Scenario> again = info.create();
      ASSERT_TRUE(again->Init(first, before).ok());
      ASSERT_TRUE(steps(*again, before, 3).ok());
      ASSERT_TRUE(again->Init(second, after).ok());
      const absl::Status st = steps(*again, after, 3);
      ASSERT_TRUE(st.ok()) << st;
      EXPECT_EQ(again->StateHash(), fresh->StateHash());
      EXPECT_EQ(again->WorkingSetBytes(), fresh->WorkingSetBytes());
    }
  }
}

}  // namespace
}  // namespace framealloc::sim
