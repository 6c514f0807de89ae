// Tests of the physics integration: the broad phase against brute force,
// contact generation on known configurations, the solver's behaviour,
// energy, bitwise determinism across variants, worker counts and
// topologies, where per-frame memory comes from, and bad configurations.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "benchmarks/heap_counter.h"
#include "benchmarks/scenario.h"
#include "gtest/gtest.h"
#include "integration/physics/collision.h"
#include "integration/physics/physics_scenario.h"
#include "integration/physics/physics_world.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace integration {
namespace {

std::vector<BodyPair> Sorted(std::vector<BodyPair> pairs) {
  std::sort(pairs.begin(), pairs.end(), [](BodyPair a, BodyPair b) {
    return a.first != b.first ? a.first < b.first : a.second < b.second;
  });
  return pairs;
}

std::vector<BodyPair> BruteForce(const std::vector<SweepEntry>& entries) {
  std::vector<BodyPair> pairs;
  for (size_t i = 0; i < entries.size(); ++i) {
    for (size_t j = i + 1; j < entries.size(); ++j) {
      if ((entries[i].own | entries[j].own) == 0) continue;
      if (Overlaps(entries[i].box, entries[j].box)) {
        const uint32_t a = entries[i].id, b = entries[j].id;
        pairs.push_back({std::min(a, b), std::max(a, b)});
      }
    }
  }
  return Sorted(pairs);
}

std::vector<SweepEntry> RandomBoxes(size_t n, uint64_t seed, bool mixed_own) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> pos(0.0f, 20.0f);
  std::uniform_real_distribution<float> half(0.1f, 1.0f);
  std::vector<SweepEntry> entries;
  for (size_t i = 0; i < n; ++i) {
    const Vec3 c{pos(rng), pos(rng), pos(rng)};
    const Vec3 e{half(rng), half(rng), half(rng)};
    // Ids in scrambled order, so that sorting has work to do.
    const uint32_t id = static_cast<uint32_t>((i * 7919) % n);
    entries.push_back({{c - e, c + e},
                       id,
                       mixed_own ? static_cast<uint32_t>(i % 3 != 0) : 1u});
  }
  return entries;
}

TEST(SortAndSweepTest, MatchesBruteForceOnEveryAxis) {
  for (int axis = 0; axis < 3; ++axis) {
    std::vector<SweepEntry> entries = RandomBoxes(600, 7 + axis, false);
    const std::vector<BodyPair> expected = BruteForce(entries);
    std::vector<BodyPair> pairs;
    SortAndSweep(absl::MakeSpan(entries), axis, pairs);
    EXPECT_GT(expected.size(), 100u);  // The test must have overlaps.
    EXPECT_EQ(Sorted(pairs), expected) << "axis " << axis;
  }
}

TEST(SortAndSweepTest, SkipsPairsOfTwoForeignEntries) {
  std::vector<SweepEntry> entries = RandomBoxes(600, 11, true);
  const std::vector<BodyPair> expected = BruteForce(entries);
  std::vector<BodyPair> pairs;
  SortAndSweep(absl::MakeSpan(entries), 2, pairs);
  EXPECT_EQ(Sorted(pairs), expected);
  // Every reported pair has an own entry.
  std::vector<uint32_t> own(600);
  for (const SweepEntry& e : entries) own[e.id] = e.own;
  for (const BodyPair& p : pairs) EXPECT_TRUE(own[p.first] || own[p.second]);
}

TEST(SortAndSweepTest, ReportsEachPairOnceAndTouchingBoxes) {
  // Boxes that share a face overlap (closed intervals); identical starts
  // are ordered by id.
  std::vector<SweepEntry> entries = {
      {{{0, 0, 0}, {1, 1, 1}}, 5, 1},
      {{{1, 0, 0}, {2, 1, 1}}, 3, 1},
      {{{0, 0, 0}, {1, 1, 1}}, 4, 1},
      {{{3, 0, 0}, {4, 1, 1}}, 9, 1},
  };
  std::vector<BodyPair> pairs;
  SortAndSweep(absl::MakeSpan(entries), 0, pairs);
  EXPECT_EQ(Sorted(pairs), (std::vector<BodyPair>{{3, 4}, {3, 5}, {4, 5}}));
}

TEST(CollisionTest, OverlappingSpheres) {
  SphereContact c;
  ASSERT_TRUE(CollideSpheres({0, 0, 0}, 0.5f, {0.9f, 0, 0}, 0.5f, 0.05f, &c));
  EXPECT_FLOAT_EQ(c.normal.x, 1.0f);
  EXPECT_FLOAT_EQ(c.normal.y, 0.0f);
  EXPECT_FLOAT_EQ(c.normal.z, 0.0f);
  EXPECT_NEAR(c.separation, -0.1f, 1e-6f);
  EXPECT_FLOAT_EQ(c.point.x, 0.5f);
}

TEST(CollisionTest, DiagonalSpheresWithinMarginAreSpeculative) {
  SphereContact c;
  // Centers 3-4-5 apart: distance 5; radii 2 + 2.98 leave 0.02 < margin.
  ASSERT_TRUE(CollideSpheres({1, 1, 1}, 2.0f, {4, 5, 1}, 2.98f, 0.05f, &c));
  EXPECT_NEAR(c.normal.x, 0.6f, 1e-6f);
  EXPECT_NEAR(c.normal.y, 0.8f, 1e-6f);
  EXPECT_NEAR(c.separation, 0.02f, 1e-5f);
  EXPECT_NEAR(c.point.x, 1.0f + 0.6f * 2.0f, 1e-5f);
  EXPECT_NEAR(c.point.y, 1.0f + 0.8f * 2.0f, 1e-5f);
}

TEST(CollisionTest, SeparatedSpheresBeyondMargin) {
  SphereContact c;
  EXPECT_FALSE(CollideSpheres({0, 0, 0}, 0.5f, {1.1f, 0, 0}, 0.5f, 0.05f, &c));
  EXPECT_FALSE(
      CollideSpheres({0, 0, 0}, 0.5f, {0, 0, -1.06f}, 0.5f, 0.05f, &c));
}

TEST(CollisionTest, CoincidentCentersGetUpNormal) {
  SphereContact c;
  ASSERT_TRUE(CollideSpheres({2, 2, 2}, 0.5f, {2, 2, 2}, 0.4f, 0.0f, &c));
  EXPECT_FLOAT_EQ(c.normal.y, 1.0f);
  EXPECT_FLOAT_EQ(c.separation, -0.9f);
}

TEST(CollisionTest, SphereOnFloorAndWalls) {
  SphereContact c;
  ASSERT_TRUE(
      CollideSpherePlane({3, 0.45f, 2}, 0.5f, {0, 1, 0}, 0.0f, 0.05f, &c));
  EXPECT_NEAR(c.separation, -0.05f, 1e-6f);
  EXPECT_FLOAT_EQ(c.normal.y, 1.0f);
  EXPECT_NEAR(c.point.y, 0.0f, 1e-6f);
  EXPECT_FLOAT_EQ(c.point.x, 3.0f);
  // The wall x = 10 with its normal pointing into the room (-x).
  ASSERT_TRUE(
      CollideSpherePlane({9.6f, 5, 5}, 0.5f, {-1, 0, 0}, -10.0f, 0.05f, &c));
  EXPECT_NEAR(c.separation, -0.1f, 1e-5f);
  EXPECT_NEAR(c.point.x, 10.0f, 1e-5f);
  EXPECT_FALSE(
      CollideSpherePlane({3, 0.6f, 2}, 0.5f, {0, 1, 0}, 0.0f, 0.05f, &c));
}

// Every pair of bodies whose boxes overlap, by brute force.
std::vector<BodyPair> BruteForcePairs(const PhysicsWorld& w) {
  std::vector<BodyPair> pairs;
  for (uint32_t i = 0; i < w.size(); ++i) {
    for (uint32_t j = i + 1; j < w.size(); ++j) {
      if (Overlaps(w.BoxOf(i), w.BoxOf(j))) pairs.push_back({i, j});
    }
  }
  return pairs;
}

TEST(PhysicsWorldTest, SlabBroadPhaseMatchesBruteForce) {
  auto world =
      PhysicsWorld::Create(PhysicsConfig().set_bodies(600).set_slabs(5));
  ASSERT_TRUE(world.ok()) << world.status();
  PhysicsWorld& w = **world;
  for (int frame = 0; frame < 16; ++frame) {
    if (frame % 5 == 0) {
      const std::vector<BodyPair> expected = BruteForcePairs(w);
      ASSERT_EQ(w.CandidatePairs(), expected) << "frame " << frame;
      ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
      // The step's broad phase saw the positions before it moved them.
      ASSERT_EQ(w.last_frame().candidate_pairs, expected.size())
          << "frame " << frame;
    } else {
      ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
    }
  }
  EXPECT_GT(w.last_frame().candidate_pairs, 800u);
}

TEST(PhysicsWorldTest, SolverSeparatesOverlappingBodies) {
  auto world = PhysicsWorld::Create(
      PhysicsConfig().set_bodies(2).set_gravity(0).set_radii(0.5f, 0.5f));
  ASSERT_TRUE(world.ok());
  PhysicsWorld& w = **world;
  w.SetBody(0, {2.0f, 2.0f, 1.0f}, {0, 0, 0});
  w.SetBody(1, {2.6f, 2.0f, 1.0f}, {0, 0, 0});  // 0.4 deep.
  for (int frame = 0; frame < 120; ++frame) {
    ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
  }
  const Vec3 d = w.position(1) - w.position(0);
  const float dist = std::sqrt(Dot(d, d));
  EXPECT_GT(dist, 1.0f - 0.01f);  // Separated up to the slop.
  EXPECT_LT(d.x, 1.1f);           // Pushed apart, not launched.
  EXPECT_NEAR(d.y, 0.0f, 1e-4f);  // Along the line of centers.
  // Position correction used pseudo-velocities: no kinetic energy left.
  for (uint32_t i = 0; i < 2; ++i) {
    const Vec3 v = w.velocity(i);
    EXPECT_LT(std::sqrt(Dot(v, v)), 1e-3f) << "body " << i;
  }
}

TEST(PhysicsWorldTest, RestingBodyStaysOnTheFloor) {
  auto world = PhysicsWorld::Create(PhysicsConfig().set_bodies(1));
  ASSERT_TRUE(world.ok());
  PhysicsWorld& w = **world;
  const float r = w.radius(0);
  w.SetBody(0, {1.0f, r, 0.8f}, {0, 0, 0});
  for (int frame = 0; frame < 600; ++frame) {
    ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
    ASSERT_NEAR(w.position(0).y, r, 0.01f) << "frame " << frame;
  }
  const Vec3 v = w.velocity(0);
  EXPECT_LT(std::sqrt(Dot(v, v)), 1e-3f);
  EXPECT_EQ(w.last_frame().wall_manifolds, 1u);  // The floor only.
}

TEST(PhysicsWorldTest, PileSettlesWithoutSinking) {
  auto world = PhysicsWorld::Create(PhysicsConfig().set_bodies(300));
  ASSERT_TRUE(world.ok());
  PhysicsWorld& w = **world;
  auto kinetic = [&w] {
    double k = 0;
    for (uint32_t i = 0; i < w.size(); ++i) {
      const Vec3 v = w.velocity(i);
      k += Dot(v, v);
    }
    return k;
  };
  const double start = kinetic();
  for (int frame = 0; frame < 150; ++frame) {
    ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
  }
  EXPECT_LT(kinetic(), start * 0.05);
  EXPECT_LT(w.max_penetration(), 0.05f);
  for (uint32_t i = 0; i < w.size(); ++i) {
    ASSERT_GT(w.position(i).y, w.radius(i) - 0.05f) << "body " << i;
  }
  EXPECT_GT(w.last_frame().manifolds, 2 * w.size());
}

TEST(PhysicsWorldTest, EnergyDoesNotIncreaseWithoutRestitution) {
  auto world =
      PhysicsWorld::Create(PhysicsConfig().set_bodies(200).set_restitution(0));
  ASSERT_TRUE(world.ok());
  PhysicsWorld& w = **world;
  const double initial = w.Energy();
  double previous = initial;
  for (int frame = 0; frame < 80; ++frame) {
    ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
    const double e = w.Energy();
    // Position correction may lift a body by the depth it sank: allow a
    // thousandth of the total.
    ASSERT_LE(e, previous + 1e-3 * initial) << "frame " << frame;
    previous = e;
  }
  EXPECT_LT(previous, initial);
}

// One scenario run: the state hash after `frames` frames.
uint64_t RunScenario(sim::Variant variant, jobs::Runtime* runtime, int frames) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  sim::FrameEnv env;
  env.variant = variant;
  env.runtime = runtime;
  env.arena = variant == sim::Variant::kArena ? &arena : nullptr;
  std::unique_ptr<sim::Scenario> s =
      MakePhysicsScenario(PhysicsConfig().set_slabs(6));
  EXPECT_TRUE(s->Init({.seed = 9, .size = 1500}, env).ok());
  for (int f = 0; f < frames; ++f) {
    if (runtime != nullptr) {
      EXPECT_TRUE(runtime->BeginFrame().ok());
    }
    const absl::Status status = s->Step(env);
    EXPECT_TRUE(status.ok()) << status;
    if (runtime != nullptr) {
      EXPECT_TRUE(runtime->EndFrame().ok());
    }
    arena.Reset();
  }
  return s->StateHash();
}

std::unique_ptr<jobs::Runtime> MakeRuntime(jobs::Config config) {
  auto rt = jobs::Runtime::Create(std::move(config));
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? *std::move(rt) : nullptr;
}

TEST(PhysicsDeterminismTest, EveryVariantWorkerCountAndTopologyAgree) {
  constexpr int kFrames = 12;
  const uint64_t reference = RunScenario(sim::Variant::kHeap, nullptr, kFrames);
  EXPECT_EQ(RunScenario(sim::Variant::kArena, nullptr, kFrames), reference);

  auto two_nodes = numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  std::vector<std::pair<const char*, std::unique_ptr<jobs::Runtime>>> runtimes;
  runtimes.emplace_back("1 worker",
                        MakeRuntime(jobs::Config().set_workers_per_node(1)));
  runtimes.emplace_back("2 workers",
                        MakeRuntime(jobs::Config().set_workers_per_node(2)));
  runtimes.emplace_back(
      "2 nodes x 1 worker",
      MakeRuntime(jobs::Config().set_topology(two_nodes->get())));
  for (auto& [name, rt] : runtimes) {
    ASSERT_NE(rt, nullptr) << name;
    EXPECT_EQ(RunScenario(sim::Variant::kRuntimeHeap, rt.get(), kFrames),
              reference)
        << name;
    EXPECT_EQ(RunScenario(sim::Variant::kRuntimeArena, rt.get(), kFrames),
              reference)
        << name;
  }
  // The hash sees the state: fewer frames give another one.
  EXPECT_NE(RunScenario(sim::Variant::kHeap, nullptr, kFrames - 1), reference);
}

// Regression (review): the world's block and slab homes were cached by the
// runtime's address only, so a runtime created where a destroyed one had
// been, with another layout, ran with the old one's homes: blocks sent to
// a node the new runtime does not have, and the step failed. Runtimes of
// one and of two nodes take turns until glibc hands a one-node runtime the
// address of the two-node one before it (within a few tries here; checked
// to fail with the address-only cache). Sanitizer allocators quarantine
// freed memory, so under ASan and TSan the case is not made and the test
// says so (the states are still compared).
TEST(PhysicsLayoutTest, ANewRuntimeAtAnOldOnesAddressGetsItsOwnLayout) {
  auto make_world = [] {
    auto w =
        PhysicsWorld::Create(PhysicsConfig().set_bodies(2500).set_slabs(6));
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : nullptr;
  };
  std::unique_ptr<PhysicsWorld> reference = make_world();
  std::unique_ptr<PhysicsWorld> world = make_world();
  ASSERT_NE(reference, nullptr);
  ASSERT_NE(world, nullptr);
  int frames = 0;
  auto step = [&frames](PhysicsWorld& w, jobs::Runtime& rt) {
    EXPECT_TRUE(rt.BeginFrame().ok());
    const absl::Status s = w.Step(StepOptions::RuntimeArena(&rt));
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(rt.EndFrame().ok());
    ++frames;
  };
  bool reused = false;
  const void* previous = nullptr;  // The runtime the world stepped with last.
  auto one_node = numa::Topology::FromSynthetic("pack:1 [numa] core:2 pu:1");
  auto two_nodes = numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(one_node.ok()) << one_node.status();
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  for (int attempt = 0; attempt < 64 && !reused; ++attempt) {
    // One node of two workers, then two nodes of one, and so on.
    const numa::Topology* topology =
        attempt % 2 == 0 ? one_node->get() : two_nodes->get();
    std::unique_ptr<jobs::Runtime> rt =
        MakeRuntime(jobs::Config().set_topology(topology).set_workers_per_node(
            3 - topology->num_nodes()));
    ASSERT_NE(rt, nullptr);
    // The case that broke: one node where two were, so the cached homes
    // name a node the runtime does not have.
    reused = rt.get() == previous && topology == one_node->get();
    for (int f = 0; f < 3; ++f) step(*world, *rt);
    EXPECT_EQ(rt->stats().jobs_failed, 0u);
    previous = rt.get();
  }
  for (int f = 0; f < frames; ++f) {
    ASSERT_TRUE(reference->Step(StepOptions::Heap()).ok());
  }
  EXPECT_EQ(world->StateHash(), reference->StateHash());
  if (!reused) {
    GTEST_SKIP() << "no one-node runtime got the address of the two-node one "
                    "before it in 64 tries (the states agree, but the "
                    "stale-cache case was not made)";
  }
}

TEST(PhysicsMemoryTest, ArenaStepMakesNoHeapAllocation) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  auto world = PhysicsWorld::Create(PhysicsConfig().set_bodies(1000));
  ASSERT_TRUE(world.ok());
  PhysicsWorld& w = **world;
  for (int f = 0; f < 25; ++f) {  // Settle a little; warm the chunks up.
    ASSERT_TRUE(w.Step(StepOptions::Arena(&arena)).ok());
    arena.Reset();
  }
  const sim::HeapCounts arena_before = sim::ReadHeapCounts();
  ASSERT_TRUE(w.Step(StepOptions::Arena(&arena)).ok());
  const uint64_t arena_allocations =
      (sim::ReadHeapCounts() - arena_before).allocations;
  const FrameArenaStats stats = arena.stats();
  arena.Reset();
  EXPECT_EQ(arena_allocations, 0u);
  const size_t manifolds = w.last_frame().manifolds;
  ASSERT_GT(manifolds, 800u);
  // Each manifold and its point live in the arena (plus bins, sweep,
  // pairs and solver bodies)...
  EXPECT_GT(stats.bytes_used, manifolds * 100);
  // ...in two arrays per slab taken up front (PhysicsFrame's
  // frame_slice(max_contacts)), not one allocation per manifold: the
  // frame's allocations are the blocks' and slabs' buffers.
  EXPECT_LT(stats.allocations, manifolds / 2);
  EXPECT_GE(stats.allocations, 2u * w.slabs());

  // The heap variant of the same frame allocates every manifold and its
  // points vector from the heap.
  const sim::HeapCounts heap_before = sim::ReadHeapCounts();
  ASSERT_TRUE(w.Step(StepOptions::Heap()).ok());
  const uint64_t heap_allocations =
      (sim::ReadHeapCounts() - heap_before).allocations;
  EXPECT_GE(heap_allocations, 2 * w.last_frame().manifolds);
}

TEST(PhysicsMemoryTest, RuntimeArenaStepUsesWorkerArenas) {
  auto rt = MakeRuntime(jobs::Config().set_workers_per_node(2));
  ASSERT_NE(rt, nullptr);
  auto world = PhysicsWorld::Create(PhysicsConfig().set_bodies(1000));
  ASSERT_TRUE(world.ok());
  PhysicsWorld& w = **world;
  for (Memory memory : {Memory::kArena, Memory::kHeap}) {
    StepOptions options;
    options.memory = memory;
    options.runtime = rt.get();
    ASSERT_TRUE(rt->BeginFrame().ok());
    ASSERT_TRUE(w.Step(options).ok());
    ASSERT_TRUE(rt->EndFrame().ok());
    const uint64_t bytes = rt->frame_history().back().arena_bytes;
    if (memory == Memory::kArena) {
      EXPECT_GT(bytes, w.last_frame().manifolds * 100);
    } else {
      EXPECT_EQ(bytes, 0u);
    }
  }
}

// A serial arena world stepped `frames` times: the reference state.
uint64_t SerialHash(const PhysicsConfig& config, int frames) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  auto world = PhysicsWorld::Create(config);
  EXPECT_TRUE(world.ok());
  for (int f = 0; f < frames; ++f) {
    EXPECT_TRUE((*world)->Step(StepOptions::Arena(&arena)).ok());
    arena.Reset();
  }
  EXPECT_EQ((*world)->last_runtime_frame().steps, 0u);
  return (*world)->StateHash();
}

// A world of 8 slabs on a runtime of two workers.
class PhysicsRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rt = MakeRuntime(jobs::Config().set_workers_per_node(2));
    ASSERT_NE(rt, nullptr);
    auto created = PhysicsWorld::Create(config);
    ASSERT_TRUE(created.ok()) << created.status();
    world = *std::move(created);
  }
  const uint64_t steps = 8u * (PhysicsConfig().iterations + 2);
  const PhysicsConfig config = PhysicsConfig().set_bodies(2000).set_slabs(8);
  std::unique_ptr<jobs::Runtime> rt;
  std::unique_ptr<PhysicsWorld> world;
};

TEST_F(PhysicsRuntimeTest, EveryStepRunsOnceOnTwoWorkers) {
  constexpr int kFrames = 6;
  for (int f = 0; f < kFrames; ++f) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    ASSERT_TRUE(world->Step(StepOptions::RuntimeArena(rt.get())).ok());
    ASSERT_TRUE(rt->EndFrame().ok());
    const RuntimeFrameStats& r = world->last_runtime_frame();
    EXPECT_EQ(r.steps, steps);
    EXPECT_LE(r.moved_steps, r.steps);
    EXPECT_GE(r.wait_seconds, 0.0);
  }
  // How many steps change hands depends on when the second worker wakes
  // up (in a small frame under a sanitizer the first slab job may do them
  // all); the figures (docs/physics.md) measure it on real frames.
  EXPECT_EQ(world->StateHash(), SerialHash(config, kFrames));
}

TEST_F(PhysicsRuntimeTest, OneSlabJobFinishesTheFrameWhenTheOtherCannotRun) {
  // One of the two workers held by a job until the step returns: the slab
  // job that runs does every step, its own range and the other's, and the
  // other one (run afterwards) finds nothing left.
  constexpr int kFrames = 3;
  for (int f = 0; f < kFrames; ++f) {
    std::atomic<bool> held{false};
    std::atomic<bool> release{false};
    ASSERT_TRUE(rt->BeginFrame().ok());
    ASSERT_TRUE(rt->Spawn([&](jobs::JobContext&) {
                    held.store(true);
                    while (!release.load()) std::this_thread::yield();
                  }).ok());
    while (!held.load()) std::this_thread::yield();
    const absl::Status status =
        world->Step(StepOptions::RuntimeArena(rt.get()));
    release.store(true);
    ASSERT_TRUE(rt->EndFrame().ok());
    ASSERT_TRUE(status.ok()) << status;
    const RuntimeFrameStats& r = world->last_runtime_frame();
    EXPECT_EQ(r.steps, steps);
    // The other range's steps (half of the slabs) ran away from their owner,
    // and the job never had to wait (its node's steps were all its to run;
    // waiting would mean it missed them until the 20 ms fallback).
    EXPECT_EQ(r.moved_steps, steps / 2);
    EXPECT_LT(r.wait_seconds, 0.015);
  }
  EXPECT_EQ(world->StateHash(), SerialHash(config, kFrames));
}

TEST(PhysicsRuntimeNodesTest,
     ASlabJobRunsAnotherNodesStepsWhenItsWorkerIsHeld) {
  // Two nodes of one worker, stealing when idle; node 1's worker held for
  // a second: node 0 takes node 1's blocks (the runtime's thieves) and its
  // slab job, once idle, node 1's slab steps too.
  auto topology = numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(topology.ok()) << topology.status();
  auto rt = MakeRuntime(jobs::Config()
                            .set_topology(topology->get())
                            .set_workers_per_node(1)
                            .set_stealing(jobs::StealPolicy::kWhenIdle));
  ASSERT_NE(rt, nullptr);
  const PhysicsConfig config = PhysicsConfig().set_bodies(4096).set_slabs(8);
  auto world = PhysicsWorld::Create(config);
  ASSERT_TRUE(world.ok());
  std::atomic<bool> held{false};
  std::atomic<bool> release{false};
  ASSERT_TRUE(rt->BeginFrame().ok());
  ASSERT_TRUE(rt->Spawn(
                    [&](jobs::JobContext&) {
                      held.store(true);
                      while (!release.load()) std::this_thread::yield();
                    },
                    jobs::SubmitOptions().on_node(1))
                  .ok());
  while (!held.load()) std::this_thread::yield();
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    release.store(true);
  });
  const absl::Status status =
      (*world)->Step(StepOptions::RuntimeArena(rt.get()));
  releaser.join();
  ASSERT_TRUE(rt->EndFrame().ok());
  ASSERT_TRUE(status.ok()) << status;
  const RuntimeFrameStats& r = (*world)->last_runtime_frame();
  EXPECT_EQ(r.steps, 8u * (config.iterations + 2));
  EXPECT_GT(r.moved_steps, 0u);
  EXPECT_EQ((*world)->StateHash(), SerialHash(config, 1));
}

TEST(PhysicsConfigTest, BadConfigurationsNameTheField) {
  struct Case {
    PhysicsConfig config;
    const char* field;
  };
  const float nan = std::nanf("");
  const Case cases[] = {
      {PhysicsConfig().set_bodies(0), "bodies"},
      {PhysicsConfig().set_bodies(size_t{1} << 25), "bodies"},
      {PhysicsConfig().set_dt(-0.01f), "dt"},
      {PhysicsConfig().set_dt(0), "dt"},
      {PhysicsConfig().set_dt(nan), "dt"},
      {PhysicsConfig().set_gravity(INFINITY), "gravity"},
      {PhysicsConfig().set_iterations(0), "iterations"},
      {PhysicsConfig().set_restitution(1.5f), "restitution"},
      {PhysicsConfig().set_friction(-1), "friction"},
      {PhysicsConfig().set_slabs(-2), "slabs"},
      {PhysicsConfig().set_radii(0.5f, 0.4f), "min_radius"},
      {PhysicsConfig().set_damping(-1, 0), "linear_damping"},
  };
  for (const Case& c : cases) {
    auto world = PhysicsWorld::Create(c.config);
    ASSERT_FALSE(world.ok()) << c.field;
    EXPECT_EQ(world.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(world.status().message().find(c.field), absl::string_view::npos)
        << world.status();
  }
}

// Regression (review): Validate accepted any radius above 0; at 1e-8 the
// inverse inertia 1 / (0.4 m r^2) overflowed float to infinity and the state
// turned NaN while Step returned OK. Radii outside [kMinRadius, kMaxRadius]
// (0.01 to 10) are refused, naming both fields, the range and the values;
// at both ends of the range the bodies stay finite and above the floor.
TEST(PhysicsConfigTest, RadiiOutsideTheirRangeAreRefused) {
  struct Case {
    float min_radius, max_radius;
    const char* values;
  };
  const float nan = std::nanf("");
  const Case cases[] = {
      {1e-8f, 1e-8f, "got 1e-08 and 1e-08"},
      {0.005f, 0.5f, "got 0.005 and 0.5"},
      {0.4f, 1e13f, "got 0.4 and 1e+13"},
      {0.4f, INFINITY, "got 0.4 and inf"},
      {nan, 0.5f, "got nan and 0.5"},
      {0.4f, nan, "got 0.4 and nan"},
  };
  for (const Case& c : cases) {
    PhysicsConfig config =
        PhysicsConfig().set_radii(c.min_radius, c.max_radius);
    config.contact_margin = 0;  // Not the field refused.
    auto world = PhysicsWorld::Create(config);
    ASSERT_FALSE(world.ok()) << c.values;
    EXPECT_EQ(world.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(world.status().message().find(
                  "min_radius and max_radius must satisfy 0.01 <= min_radius "
                  "<= max_radius <= 10"),
              absl::string_view::npos)
        << world.status();
    EXPECT_NE(world.status().message().find(c.values), absl::string_view::npos)
        << world.status();
  }
  for (const float r : {PhysicsConfig::kMinRadius, PhysicsConfig::kMaxRadius}) {
    SCOPED_TRACE(testing::Message() << "radius " << r);
    PhysicsConfig config = PhysicsConfig().set_bodies(300).set_radii(r, r);
    config.contact_margin = std::min(config.contact_margin, r);
    auto world = PhysicsWorld::Create(config);
    ASSERT_TRUE(world.ok()) << world.status();
    for (int f = 0; f < 60; ++f) {
      ASSERT_TRUE((*world)->Step(StepOptions::Heap()).ok());
    }
    EXPECT_TRUE(std::isfinite((*world)->Energy()));
    for (uint32_t i = 0; i < (*world)->size(); ++i) {
      const Vec3 p = (*world)->position(i);
      const Vec3 v = (*world)->velocity(i);
      ASSERT_TRUE(std::isfinite(p.x) && std::isfinite(p.y) &&
                  std::isfinite(p.z) && std::isfinite(v.x) &&
                  std::isfinite(v.y) && std::isfinite(v.z))
          << "body " << i;
      EXPECT_GT(p.y, 0.0f) << "body " << i;  // Resting at most r/2 deep.
    }
  }
}

TEST(PhysicsConfigTest, ScenarioRejectsBadSizesAndMissingEnvironment) {
  sim::ScenarioInfo info = PhysicsScenario();
  EXPECT_EQ(info.name, "physics");
  EXPECT_TRUE(info.allocation_heavy);
  EXPECT_EQ(info.default_size, PhysicsConfig().bodies);
  std::unique_ptr<sim::Scenario> s = info.create();
  sim::FrameEnv env;
  absl::Status status = s->Init({.seed = 1, .size = size_t{1} << 25}, env);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("bodies"), absl::string_view::npos);
  EXPECT_EQ(s->Step(env).code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(s->Init({.seed = 1, .size = 100}, env).ok());
  env.variant = sim::Variant::kArena;  // No arena.
  EXPECT_EQ(s->Step(env).code(), absl::StatusCode::kInvalidArgument);
  env.variant = sim::Variant::kRuntimeArena;  // No runtime.
  status = s->Step(env);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("runtime"), absl::string_view::npos);

  auto world = PhysicsWorld::Create(PhysicsConfig().set_bodies(100));
  ASSERT_TRUE(world.ok());
  EXPECT_EQ((*world)->Step(StepOptions::Arena(nullptr)).code(),
            absl::StatusCode::kInvalidArgument);
  auto rt = MakeRuntime(jobs::Config().set_workers_per_node(1));
  ASSERT_NE(rt, nullptr);
  // Frame memory on the runtime needs an open frame.
  EXPECT_EQ((*world)->Step(StepOptions::RuntimeArena(rt.get())).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace integration
}  // namespace framealloc
