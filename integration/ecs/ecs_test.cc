// Tests of the ECS: SoA storage, the transform hierarchy against a
// reference, per-frame components, and the "ecs" scenario's determinism
// across variants, worker counts and a synthetic two-node topology.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/test_util.h"
#include "alloc/memory_source.h"
#include "benchmarks/scenario.h"
#include "gtest/gtest.h"
#include "integration/ecs/ecs_scenario.h"
#include "integration/ecs/frame_memory.h"
#include "integration/ecs/soa_store.h"
#include "integration/ecs/transform.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc::integration::ecs {
namespace {

using sim::Variant;

TEST(EntityRegistryTest, GenerationsDoNotAlias) {
  EntityRegistry registry;
  const Entity a = registry.Create();
  ASSERT_TRUE(registry.Destroy(a).ok());
  const Entity b = registry.Create();
  EXPECT_EQ(a.index, b.index);
  EXPECT_NE(a.generation, b.generation);
  EXPECT_FALSE(registry.IsAlive(a));
  EXPECT_TRUE(registry.IsAlive(b));
  EXPECT_EQ(registry.Destroy(a).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.alive_count(), 1u);
}

TEST(SoaStoreTest, AddRemoveQueryKeepColumnsAligned) {
  EntityRegistry registry;
  SoaStore<int, float> store;
  std::vector<Entity> e;
  for (int i = 0; i < 5; ++i) {
    e.push_back(registry.Create());
    ASSERT_TRUE(store.Add(e.back(), i * 10, i * 0.5f).ok());
  }
  ASSERT_EQ(store.size(), 5u);
  // Removing slot 1 moves the last entity (4) into it, in every column.
  ASSERT_TRUE(store.Remove(e[1]).ok());
  ASSERT_EQ(store.size(), 4u);
  EXPECT_FALSE(store.Contains(e[1]));
  EXPECT_EQ(*store.IndexOf(e[4]), 1u);
  EXPECT_EQ(store.column<0>()[1], 40);
  EXPECT_EQ(store.column<1>()[1], 2.0f);
  EXPECT_TRUE(store.entities()[1] == e[4]);
  // Every remaining entity still finds its own values.
  for (int i : {0, 2, 3, 4}) {
    const size_t slot = *store.IndexOf(e[i]);
    EXPECT_EQ(store.column<0>()[slot], i * 10) << i;
    EXPECT_EQ(store.column<1>()[slot], i * 0.5f) << i;
  }
  // Removing the last one needs no move.
  ASSERT_TRUE(store.Remove(e[3]).ok());
  EXPECT_EQ(store.size(), 3u);
  EXPECT_EQ(store.SlotOrAbsent(e[3]), decltype(store)::kAbsent);
}

TEST(SoaStoreTest, BadInputIsAClearStatus) {
  EntityRegistry registry;
  SoaStore<int> store;
  const Entity a = registry.Create();
  EXPECT_EQ(store.Add(Entity::Null(), 1).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store.Add(a, 1).ok());
  absl::Status dup = store.Add(a, 2);
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(dup.message().find("already has this component"),
            std::string::npos);
  // A newer generation of the same index while the old one is stored.
  ASSERT_TRUE(registry.Destroy(a).ok());
  const Entity b = registry.Create();
  EXPECT_EQ(store.Add(b, 3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Remove(b).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.IndexOf(b).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.column<0>()[0], 1);  // Unchanged by the refusals.
}

TEST(SoaStoreTest, PermuteReordersEveryColumnAndTheLookup) {
  EntityRegistry registry;
  SoaStore<int, float> store;
  std::vector<Entity> e;
  for (int i = 0; i < 4; ++i) {
    e.push_back(registry.Create());
    ASSERT_TRUE(store.Add(e.back(), i * 10, i * 0.5f).ok());
  }
  const uint64_t version = store.version();
  const uint32_t order[] = {2, 0, 3, 1};  // New slot j holds old order[j].
  ASSERT_TRUE(store.Permute(order).ok());
  EXPECT_NE(store.version(), version);
  for (size_t j = 0; j < 4; ++j) {
    EXPECT_TRUE(store.entities()[j] == e[order[j]]) << j;
    EXPECT_EQ(store.column<0>()[j], static_cast<int>(order[j]) * 10) << j;
    EXPECT_EQ(store.column<1>()[j], order[j] * 0.5f) << j;
    EXPECT_EQ(*store.IndexOf(e[order[j]]), j);
  }
  // Not a permutation: refused, nothing moves.
  const uint32_t twice[] = {0, 0, 1, 2};
  const uint32_t outside[] = {0, 1, 2, 4};
  const uint32_t short_order[] = {0, 1};
  for (std::span<const uint32_t> bad :
       {std::span<const uint32_t>(twice), std::span<const uint32_t>(outside),
        std::span<const uint32_t>(short_order)}) {
    absl::Status s = store.Permute(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("SoaStore::Permute"), std::string::npos);
  }
  EXPECT_EQ(store.column<0>()[0], 20);
  EXPECT_EQ(*store.IndexOf(e[2]), 0u);
}

LocalTransform Child(Entity parent, Vec3 position = {}) {
  LocalTransform t;
  t.parent = parent;
  t.position = position;
  return t;
}

TEST(TransformsTest, BadParentsAreRefused) {
  EntityRegistry registry;
  Transforms tf;
  const Entity a = registry.Create(), b = registry.Create(),
               c = registry.Create(), ghost = registry.Create();
  EXPECT_EQ(tf.Add(a, Child(a)).code(), absl::StatusCode::kInvalidArgument);
  absl::Status missing = tf.Add(a, Child(ghost));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("add parents first"), std::string::npos);
  ASSERT_TRUE(tf.Add(a, LocalTransform()).ok());
  ASSERT_TRUE(tf.Add(b, Child(a)).ok());
  ASSERT_TRUE(tf.Add(c, Child(b)).ok());
  // a under c would close the loop a -> b -> c -> a.
  absl::Status cycle = tf.SetParent(a, c);
  EXPECT_EQ(cycle.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cycle.message().find("cycle"), std::string::npos);
  EXPECT_EQ(tf.SetParent(a, a).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tf.SetParent(ghost, a).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tf.SetParent(c, ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(tf.SetParent(c, a).ok());
}

// Regression (review): an entity removed while a child still named it, and
// added again under that child, closed a cycle that Add accepted; every
// later HierarchyOrder::Update failed and the reference walk never ended.
TEST(TransformsTest, ReAddingARemovedParentUnderItsOldChildIsRefused) {
  EntityRegistry registry;
  Transforms tf;
  const Entity a = registry.Create(), b = registry.Create(),
               c = registry.Create();
  ASSERT_TRUE(tf.Add(a, LocalTransform()).ok());
  ASSERT_TRUE(tf.Add(b, Child(a)).ok());
  ASSERT_TRUE(tf.Add(c, Child(b)).ok());
  ASSERT_TRUE(tf.Remove(a).ok());  // b is a root now, still naming a.
  for (const Entity under : {b, c}) {
    absl::Status s = tf.Add(a, Child(under));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("cycle"), std::string::npos) << s;
  }
  HierarchyOrder order;
  EXPECT_TRUE(order.Update(tf).ok());
  ASSERT_TRUE(tf.Add(a, LocalTransform()).ok());  // Back as a root: fine.
  EXPECT_TRUE(order.Update(tf).ok());
}

// A random forest of n entities, parents added before children.
Transforms MakeForest(size_t n, uint64_t seed, std::vector<Entity>* out,
                      size_t roots = 8) {
  EntityRegistry registry;
  Transforms tf;
  uint64_t x = seed;
  auto next = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  auto uniform = [&next](float lo, float hi) {
    return lo + (hi - lo) * static_cast<float>(next() % 10000) / 10000.0f;
  };
  for (size_t i = 0; i < n; ++i) {
    const Entity e = registry.Create();
    LocalTransform t;
    t.position = {uniform(-3, 3), uniform(-3, 3), uniform(-3, 3)};
    t.rotation = Quat::AxisAngle(0.6f, 0.8f, 0.0f, uniform(-3, 3));
    t.scale = uniform(0.8f, 1.2f);
    if (i >= roots) t.parent = (*out)[next() % i];
    EXPECT_TRUE(tf.Add(e, t).ok());
    out->push_back(e);
  }
  return tf;
}

bool SameMatrix(const Mat4& a, const Mat4& b) {
  return std::memcmp(a.m, b.m, sizeof(a.m)) == 0;
}

TEST(HierarchyTest, OrderPutsParentsBeforeChildren) {
  std::vector<Entity> e;
  Transforms tf = MakeForest(3000, 7, &e);
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(tf).ok());
  ASSERT_EQ(order.size(), 3000u);
  EXPECT_GT(order.levels(), 3u);
  EXPECT_EQ(order.level_begin(1), 8u);  // Exactly the eight roots.
  for (size_t k = 0; k < order.size(); ++k) {
    EXPECT_LT(order.parent_position(k), static_cast<int32_t>(k));
    EXPECT_EQ(order.parent_position(k) < 0, k < 8) << k;
  }
}

// Checks that `order` is grouped: each level holds its groups' ranges in
// turn, every entity's parent is in its group, and the groups are whole
// trees. Returns each group's entity count.
std::vector<size_t> CheckGroupedOrder(const HierarchyOrder& order) {
  EXPECT_TRUE(order.grouped());
  std::vector<int> group_of(order.size(), -1);
  std::vector<size_t> sizes(order.tree_groups(), 0);
  if (!order.grouped()) return sizes;
  for (size_t d = 0; d < order.levels(); ++d) {
    EXPECT_EQ(order.group_level_begin(0, d), order.level_begin(d));
    EXPECT_EQ(order.group_level_end(order.tree_groups() - 1, d),
              order.level_begin(d + 1));
    for (size_t g = 0; g < order.tree_groups(); ++g) {
      if (g > 0) {
        EXPECT_EQ(order.group_level_begin(g, d),
                  order.group_level_end(g - 1, d));
      }
      for (size_t k = order.group_level_begin(g, d);
           k < order.group_level_end(g, d); ++k) {
        group_of[k] = static_cast<int>(g);
        ++sizes[g];
      }
    }
  }
  for (size_t k = 0; k < order.size(); ++k) {
    const int32_t p = order.parent_position(k);
    if (p >= 0) {
      EXPECT_EQ(group_of[p], group_of[k]) << "position " << k;
    }
  }
  return sizes;
}

TEST(HierarchyTest, ReorderingByTreeGroupGroupsTheOrder) {
  std::vector<Entity> e;
  Transforms tf = MakeForest(3000, 7, &e);  // Eight roots: eight groups.
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(tf).ok());
  EXPECT_EQ(order.tree_groups(), 8u);
  EXPECT_FALSE(order.grouped());  // A random forest interleaves its trees.
  const std::vector<Mat4> before = ReferenceWorldTransforms(tf);
  std::vector<Mat4> by_entity(e.size());
  for (size_t i = 0; i < e.size(); ++i) {
    by_entity[i] = before[*tf.store().IndexOf(e[i])];
  }
  ASSERT_TRUE(tf.Reorder(order.GroupedSlotOrder()).ok());
  ASSERT_TRUE(order.Update(tf).ok());
  EXPECT_EQ(order.tree_groups(), 8u);
  const std::vector<size_t> sizes = CheckGroupedOrder(order);
  EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), size_t{0}), 3000u);
  // Same hierarchy, same world matrices, entity by entity.
  const std::vector<Mat4> after = ReferenceWorldTransforms(tf);
  for (size_t i = 0; i < e.size(); ++i) {
    EXPECT_TRUE(SameMatrix(after[*tf.store().IndexOf(e[i])], by_entity[i]))
        << i;
  }
  // Reordering again changes nothing: the groups are a fixed point.
  const std::vector<uint32_t> again = order.GroupedSlotOrder();
  for (size_t j = 0; j < again.size(); ++j) ASSERT_EQ(again[j], j);
  EXPECT_EQ(tf.Reorder(std::vector<uint32_t>(2, 0)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HierarchyTest, TreeGroupsAreRunsOfRootsOfAboutEqualSize) {
  // 40 roots, each the top of a chain of 1 + (i % 5) entities, added root by
  // root: 16 groups of consecutive roots, none empty, each near 1/16.
  EntityRegistry registry;
  Transforms forest;
  size_t total = 0;
  for (int t = 0; t < 40; ++t) {
    Entity parent = Entity::Null();
    for (int i = 0; i <= t % 5; ++i) {
      const Entity c = registry.Create();
      ASSERT_TRUE(forest.Add(c, Child(parent, {1, 0, 0})).ok());
      parent = c;
      ++total;
    }
  }
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(forest).ok());
  ASSERT_EQ(order.tree_groups(), HierarchyOrder::kTreeGroups);
  ASSERT_TRUE(order.grouped());  // Added tree by tree: already contiguous.
  const std::vector<size_t> sizes = CheckGroupedOrder(order);
  EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), size_t{0}), total);
  for (size_t size : sizes) {
    EXPECT_GE(size, 1u);
    EXPECT_LE(size, total / 16 + 5);  // At most one tree past the share.
  }
  // Fewer roots than groups: one group a root.
  Transforms two;
  const Entity a = registry.Create(), b = registry.Create();
  ASSERT_TRUE(two.Add(a, Child(Entity::Null())).ok());
  ASSERT_TRUE(two.Add(b, Child(Entity::Null())).ok());
  HierarchyOrder small;
  ASSERT_TRUE(small.Update(two).ok());
  EXPECT_EQ(small.tree_groups(), 2u);
  // Nothing: no group.
  Transforms none;
  HierarchyOrder empty;
  ASSERT_TRUE(empty.Update(none).ok());
  EXPECT_EQ(empty.tree_groups(), 0u);
  EXPECT_FALSE(empty.grouped());
}

// World matrices of `tf` on one thread (heap memory), by order position.
absl::Status WorldOnOneThread(const Transforms& tf, const HierarchyOrder& order,
                              std::vector<Vec3>* translations) {
  FrameColumn<Mat4, HeapMemory> world;
  absl::Status s = ComputeWorldTransforms<HeapMemory>(
      tf, order, FrameExecutor::Sequential(nullptr), &world);
  if (!s.ok()) return s;
  translations->clear();
  for (size_t k = 0; k < world.size(); ++k) {
    translations->push_back(world[k].Translation());
  }
  return absl::OkStatus();
}

// Regression (review): versions counted one object's changes, so a
// Transforms rebuilt (tf = Transforms() and refilled) with as many changes,
// or another object with as many, had the order's version, and Update kept
// the old order: world matrices of the old hierarchy. Here a chain of three
// rebuilt as three roots, then another object holding the chain again.
TEST(HierarchyTest, UpdateRebuildsForATransformsRebuiltWithTheSameChanges) {
  EntityRegistry registry;
  const Entity a = registry.Create(), b = registry.Create(),
               c = registry.Create();
  Transforms tf;
  ASSERT_TRUE(tf.Add(a, Child(Entity::Null(), {1, 0, 0})).ok());
  ASSERT_TRUE(tf.Add(b, Child(a, {1, 0, 0})).ok());
  ASSERT_TRUE(tf.Add(c, Child(b, {1, 0, 0})).ok());
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(tf).ok());
  ASSERT_EQ(order.levels(), 3u);

  tf = Transforms();
  for (const Entity e : {a, b, c}) {
    ASSERT_TRUE(tf.Add(e, Child(Entity::Null(), {1, 0, 0})).ok());
  }
  ASSERT_TRUE(order.Update(tf).ok());
  EXPECT_EQ(order.levels(), 1u);
  std::vector<Vec3> world;
  ASSERT_TRUE(WorldOnOneThread(tf, order, &world).ok());
  const std::vector<Mat4> reference = ReferenceWorldTransforms(tf);
  ASSERT_EQ(world.size(), 3u);
  for (size_t k = 0; k < world.size(); ++k) {
    EXPECT_EQ(world[k].x, 1.0f) << k;
    EXPECT_EQ(world[k].x, reference[order.slot(k)].Translation().x) << k;
  }

  // Another object, with the chain's three changes: the chain's matrices.
  Transforms chain;
  ASSERT_TRUE(chain.Add(a, Child(Entity::Null(), {1, 0, 0})).ok());
  ASSERT_TRUE(chain.Add(b, Child(a, {1, 0, 0})).ok());
  ASSERT_TRUE(chain.Add(c, Child(b, {1, 0, 0})).ok());
  ASSERT_TRUE(order.Update(chain).ok());
  EXPECT_EQ(order.levels(), 3u);
  ASSERT_TRUE(WorldOnOneThread(chain, order, &world).ok());
  ASSERT_EQ(world.size(), 3u);
  for (size_t k = 0; k < world.size(); ++k) {
    EXPECT_EQ(world[k].x, static_cast<float>(k + 1)) << k;
  }
}

// Regression (review), the same with another size: three roots rebuilt as
// two adds and a SetParent (three changes again) kept the order of three,
// and ComputeWorldTransforms read past the columns of two.
// Three roots at x = 1, and an order built for them.
struct ThreeRoots {
  absl::Status Build() {
    for (const Entity e : {a, b, c}) {
      if (absl::Status s = tf.Add(e, Child(Entity::Null(), {1, 0, 0}));
          !s.ok()) {
        return s;
      }
    }
    return order.Update(tf);
  }
  EntityRegistry registry;
  const Entity a = registry.Create(), b = registry.Create(),
               c = registry.Create();
  Transforms tf;
  HierarchyOrder order;
};

TEST(HierarchyTest, UpdateRebuildsForATransformsRebuiltSmaller) {
  ThreeRoots roots;
  ASSERT_TRUE(roots.Build().ok());
  auto& [registry, a, b, c, tf, order] = roots;
  ASSERT_EQ(order.size(), 3u);

  tf = Transforms();
  ASSERT_TRUE(tf.Add(a, Child(Entity::Null(), {1, 0, 0})).ok());
  ASSERT_TRUE(tf.Add(b, Child(Entity::Null(), {1, 0, 0})).ok());
  ASSERT_TRUE(tf.SetParent(b, a).ok());
  ASSERT_TRUE(order.Update(tf).ok());
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order.levels(), 2u);
  std::vector<Vec3> world;
  ASSERT_TRUE(WorldOnOneThread(tf, order, &world).ok());
  ASSERT_EQ(world.size(), 2u);
  EXPECT_EQ(world[*order.PositionOf(tf, a)].x, 1.0f);
  EXPECT_EQ(world[*order.PositionOf(tf, b)].x, 2.0f);
}

// Regression (review): an order not updated since the transforms changed
// was used as it was: read past the columns when it held more entities,
// wrong matrices otherwise. ComputeWorldTransforms and PositionOf refuse it.
TEST(HierarchyTest, AnOrderNotUpdatedSinceAChangeIsRefused) {
  ThreeRoots roots;
  ASSERT_TRUE(roots.Build().ok());
  auto& [registry, a, b, c, tf, order] = roots;
  ASSERT_TRUE(tf.Remove(c).ok());  // The order still holds three.
  std::vector<Vec3> world;
  absl::Status s = WorldOnOneThread(tf, order, &world);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("order holds 3 entities and the transforms 2"),
            std::string::npos)
      << s;
  ASSERT_TRUE(order.Update(tf).ok());
  ASSERT_TRUE(WorldOnOneThread(tf, order, &world).ok());
  EXPECT_EQ(world.size(), 2u);

  // Same size, another parent: refused too, and PositionOf with it.
  ASSERT_TRUE(tf.SetParent(b, a).ok());
  s = WorldOnOneThread(tf, order, &world);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(absl::StrCat(
                "built for hierarchy version ", order.version(),
                ", the transforms are at version ", tf.hierarchy_version())),
            std::string::npos)
      << s;
  EXPECT_EQ(order.PositionOf(tf, b).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(order.Update(tf).ok());
  ASSERT_TRUE(WorldOnOneThread(tf, order, &world).ok());
  EXPECT_EQ(world[*order.PositionOf(tf, b)].x, 2.0f);
}

TEST(TransformsTest, HierarchyVersionsAreUniqueAcrossObjectsAndStates) {
  EntityRegistry registry;
  const Entity a = registry.Create(), b = registry.Create();
  Transforms x, y;
  EXPECT_NE(x.hierarchy_version(), y.hierarchy_version());
  ASSERT_TRUE(x.Add(a, LocalTransform()).ok());
  ASSERT_TRUE(y.Add(a, LocalTransform()).ok());
  EXPECT_NE(x.hierarchy_version(), y.hierarchy_version());
  // Every change is a new version; a refused one changes nothing.
  uint64_t v = x.hierarchy_version();
  EXPECT_FALSE(x.Add(a, LocalTransform()).ok());
  EXPECT_EQ(x.hierarchy_version(), v);
  ASSERT_TRUE(x.Add(b, LocalTransform()).ok());
  EXPECT_NE(x.hierarchy_version(), v);
  v = x.hierarchy_version();
  ASSERT_TRUE(x.SetParent(b, a).ok());
  EXPECT_NE(x.hierarchy_version(), v);
  v = x.hierarchy_version();
  const uint32_t swap[] = {1, 0};
  ASSERT_TRUE(x.Reorder(swap).ok());
  EXPECT_NE(x.hierarchy_version(), v);
  // A copy holds the same hierarchy: the same version, and an order of one
  // is up to date for the other.
  Transforms copy = x;
  EXPECT_EQ(copy.hierarchy_version(), x.hierarchy_version());
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(x).ok());
  EXPECT_TRUE(order.IsUpToDate(copy));
  // A move takes the version along; the source, now empty, gets a new one.
  v = x.hierarchy_version();
  Transforms moved = std::move(x);
  EXPECT_EQ(moved.hierarchy_version(), v);
  EXPECT_NE(x.hierarchy_version(), v);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(x.size(), 0u);              // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(order.IsUpToDate(x));
  ASSERT_TRUE(order.Update(x).ok());
  EXPECT_EQ(order.size(), 0u);
}

class Runtimes {
 public:
  // Workers on this machine, or two logical nodes of one worker each.
  static std::unique_ptr<jobs::Runtime> Make(
      int workers, bool two_nodes,
      std::unique_ptr<numa::Topology>* topology_out) {
    jobs::Config config;
    if (two_nodes) {
      auto t = numa::Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
      EXPECT_TRUE(t.ok()) << t.status();
      *topology_out = *std::move(t);
      config.set_topology(topology_out->get()).set_workers_per_node(1);
    } else {
      config.set_workers_per_node(workers).set_pinning(
          jobs::PinningPolicy::kNone);
    }
    auto rt = jobs::Runtime::Create(config);
    EXPECT_TRUE(rt.ok()) << rt.status();
    return *std::move(rt);
  }
};

template <typename Mem>
void ExpectWorldMatchesReference(const Transforms& tf,
                                 const FrameExecutor& exec) {
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(tf).ok());
  const std::vector<Mat4> reference = ReferenceWorldTransforms(tf);
  FrameColumn<Mat4, Mem> world;
  ASSERT_TRUE(
      ComputeWorldTransforms<Mem>(tf, order, exec, &world, /*grain=*/64).ok());
  ASSERT_EQ(world.size(), tf.size());
  size_t mismatches = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    if (!SameMatrix(world[k], reference[order.slot(k)])) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(HierarchyTest, WorldTransformsMatchReference) {
  std::vector<Entity> e;
  Transforms tf = MakeForest(4000, 11, &e);
  // A known case by hand: a root at (0,1,0), a child at (1,0,0) local.
  EntityRegistry registry;
  Transforms small;
  const Entity r = registry.Create(), c = registry.Create();
  ASSERT_TRUE(small.Add(r, Child(Entity::Null(), {0, 1, 0})).ok());
  ASSERT_TRUE(small.Add(c, Child(r, {1, 0, 0})).ok());
  const std::vector<Mat4> w = ReferenceWorldTransforms(small);
  EXPECT_EQ(w[1].Translation().x, 1.0f);
  EXPECT_EQ(w[1].Translation().y, 1.0f);

  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  ExpectWorldMatchesReference<HeapMemory>(tf,
                                          FrameExecutor::Sequential(nullptr));
  ExpectWorldMatchesReference<ArenaMemory>(tf,
                                           FrameExecutor::Sequential(&arena));
  arena.Reset();
  std::unique_ptr<numa::Topology> topology;
  auto rt = Runtimes::Make(0, /*two_nodes=*/true, &topology);
  ASSERT_TRUE(rt->BeginFrame().ok());
  ExpectWorldMatchesReference<ArenaMemory>(tf,
                                           FrameExecutor::OnRuntime(rt.get()));
  ExpectWorldMatchesReference<HeapMemory>(tf,
                                          FrameExecutor::OnRuntime(rt.get()));
  ASSERT_TRUE(rt->EndFrame().ok());
  // One node: the levels run inside one job, each a fork-join.
  std::unique_ptr<numa::Topology> unused;
  auto one_node = Runtimes::Make(2, /*two_nodes=*/false, &unused);
  ASSERT_EQ(one_node->num_nodes(), 1);
  ASSERT_TRUE(one_node->BeginFrame().ok());
  ExpectWorldMatchesReference<ArenaMemory>(
      tf, FrameExecutor::OnRuntime(one_node.get()));
  ExpectWorldMatchesReference<HeapMemory>(
      tf, FrameExecutor::OnRuntime(one_node.get()));
  ASSERT_TRUE(one_node->EndFrame().ok());
  // Grouped by tree, 128 roots: on one node, each group on one worker. (The
  // eight trees of `tf` are too uneven: the largest is over twice its share, so
  // it keeps the level-by-level jobs.)
  {
    std::vector<Entity> many_roots;
    Transforms wide = MakeForest(4000, 13, &many_roots, /*roots=*/128);
    HierarchyOrder order;
    ASSERT_TRUE(order.Update(wide).ok());
    ASSERT_TRUE(wide.Reorder(order.GroupedSlotOrder()).ok());
    ASSERT_TRUE(order.Update(wide).ok());
    ASSERT_TRUE(order.grouped());
    ASSERT_EQ(order.tree_groups(), HierarchyOrder::kTreeGroups);
    ASSERT_LE(order.largest_tree_group() * order.tree_groups(),
              2 * order.size());
    ASSERT_TRUE(one_node->BeginFrame().ok());
    const uint64_t jobs_before = one_node->stats().jobs_submitted;
    ExpectWorldMatchesReference<ArenaMemory>(
        wide, FrameExecutor::OnRuntime(one_node.get()));
    // The column's allocation, then the sixteen groups dealt to one part
    // job per worker.
    EXPECT_EQ(one_node->stats().jobs_submitted - jobs_before,
              1u + static_cast<uint64_t>(std::min(16, one_node->workers(0))));
    ExpectWorldMatchesReference<HeapMemory>(
        wide, FrameExecutor::OnRuntime(one_node.get()));
    ASSERT_TRUE(one_node->EndFrame().ok());
    ExpectWorldMatchesReference<ArenaMemory>(wide,
                                             FrameExecutor::Sequential(&arena));
    arena.Reset();
    // Uneven groups keep the level-by-level jobs: the column, one job for
    // the levels.
    HierarchyOrder uneven;
    ASSERT_TRUE(uneven.Update(tf).ok());
    ASSERT_TRUE(tf.Reorder(uneven.GroupedSlotOrder()).ok());
    ASSERT_TRUE(uneven.Update(tf).ok());
    ASSERT_TRUE(uneven.grouped());
    ASSERT_GT(uneven.largest_tree_group() * uneven.tree_groups(),
              2 * uneven.size());
    ASSERT_TRUE(one_node->BeginFrame().ok());
    const uint64_t before_uneven = one_node->stats().jobs_submitted;
    ExpectWorldMatchesReference<ArenaMemory>(
        tf, FrameExecutor::OnRuntime(one_node.get()));
    EXPECT_EQ(one_node->stats().jobs_submitted - before_uneven, 1u + 1u);
    ASSERT_TRUE(one_node->EndFrame().ok());
  }

  // Re-parenting and removal change the hierarchy; still the reference.
  ASSERT_TRUE(tf.SetParent(e[100], e[3]).ok());
  ASSERT_TRUE(tf.SetParent(e[3], Entity::Null()).ok());
  ASSERT_TRUE(tf.Remove(e[5]).ok());  // Its children become roots.
  ExpectWorldMatchesReference<HeapMemory>(tf,
                                          FrameExecutor::Sequential(nullptr));
}

TEST(FrameComponentTest, WorldColumnLivesOnFrameMemoryForOneFrame) {
  std::vector<Entity> e;
  Transforms tf = MakeForest(2000, 3, &e);
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(tf).ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const Mat4* data = nullptr;
  {
    FrameColumn<Mat4, ArenaMemory> world;
    ASSERT_TRUE(ComputeWorldTransforms<ArenaMemory>(
                    tf, order, FrameExecutor::Sequential(&arena), &world)
                    .ok());
    data = world.segment_data(0);
    EXPECT_TRUE(arena.Owns(data));
    EXPECT_GE(arena.stats().bytes_requested, 2000 * sizeof(Mat4));
    // Frame end: everything the frame put in the arena is gone at once.
  }
  const uint64_t generation = arena.generation();
  arena.Reset();
  EXPECT_NE(arena.generation(), generation);
  EXPECT_EQ(arena.stats().bytes_used, 0u);
  EXPECT_EQ(arena.stats().allocations, 0u);
  // 2000 matrices (125 KiB) outgrow the first chunk: the chunk that held
  // them went back to the cache.
  EXPECT_FALSE(arena.Owns(data));
}

// Regression (review): FrameExecutor::Sequential's arena "may be null", but
// ComputeWorldTransforms<ArenaMemory> on Sequential(nullptr) allocated the
// world column through the null arena (SIGSEGV); a column of a type that
// is not raw storage (a vector per segment) did the same through
// ArenaMemory::From. Both are a FailedPrecondition now, the column empty.
TEST(FrameComponentTest, ArenaMemoryWithoutAnArenaIsAFailedPrecondition) {
  std::vector<Entity> e;
  Transforms tf = MakeForest(100, 3, &e);
  HierarchyOrder order;
  ASSERT_TRUE(order.Update(tf).ok());
  const FrameExecutor no_arena = FrameExecutor::Sequential(nullptr);
  FrameColumn<Mat4, ArenaMemory> world;
  absl::Status s =
      ComputeWorldTransforms<ArenaMemory>(tf, order, no_arena, &world);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("100 items on frame memory"), std::string::npos)
      << s;
  EXPECT_NE(s.message().find("arena is null"), std::string::npos) << s;
  EXPECT_EQ(world.size(), 0u);
  FrameColumn<std::vector<int>, ArenaMemory> lists;
  s = lists.Allocate(no_arena, 10);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(lists.size(), 0u);
  EXPECT_FALSE(no_arena.has_arena());
  // The heap needs no arena; an executor with one serves frame memory.
  FrameColumn<Mat4, HeapMemory> heap_world;
  EXPECT_TRUE(
      ComputeWorldTransforms<HeapMemory>(tf, order, no_arena, &heap_world)
          .ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameExecutor with_arena = FrameExecutor::Sequential(&arena);
  EXPECT_TRUE(with_arena.has_arena());
  ASSERT_TRUE(
      ComputeWorldTransforms<ArenaMemory>(tf, order, with_arena, &world).ok());
  EXPECT_EQ(world.size(), 100u);
  EXPECT_TRUE(arena.Owns(world.segment_data(0)));
  ASSERT_TRUE(lists.Allocate(with_arena, 10).ok());
  EXPECT_EQ(lists.size(), 10u);
  EXPECT_TRUE(lists[9].empty());
  // Dropped before the arena they live in (declared after them) is.
  lists.Release();
  world.Release();
}

// The suite's driver, in small: one scenario run in one variant.
struct DriveResult {
  uint64_t hash = 0;
  std::vector<EcsFrameStats> frames;
  std::vector<size_t> arena_bytes;  // Frame memory each frame used.
};

DriveResult Drive(Variant variant, jobs::Runtime* rt, size_t size, int frames) {
  DriveResult run;
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  sim::FrameEnv env;
  env.variant = variant;
  env.runtime = sim::UsesRuntime(variant) ? rt : nullptr;
  env.arena = variant == Variant::kArena ? &arena : nullptr;
  EcsSimulation scenario;
  absl::Status s = scenario.Init({.seed = 5, .size = size}, env);
  EXPECT_TRUE(s.ok()) << s;
  // Init lays the store out by tree group; the frames keep that layout
  // (the reorder is a fixed point: no frame reorders again).
  EXPECT_TRUE(scenario.order().grouped());
  const uint64_t layout = scenario.transforms().hierarchy_version();
  for (int f = 0; f < frames; ++f) {
    if (env.runtime != nullptr) {
      EXPECT_TRUE(rt->BeginFrame().ok());
    }
    s = scenario.Step(env);
    EXPECT_TRUE(s.ok()) << s;
    if (env.runtime != nullptr) {
      EXPECT_TRUE(rt->EndFrame().ok());
      run.arena_bytes.push_back(rt->frame_history().back().arena_bytes);
    } else {
      run.arena_bytes.push_back(arena.stats().bytes_requested);
      arena.Reset();
    }
    run.frames.push_back(scenario.last_frame());
  }
  EXPECT_EQ(scenario.transforms().hierarchy_version(), layout);
  run.hash = scenario.StateHash();
  return run;
}

TEST(EcsScenarioTest, IdenticalAcrossVariantsAndWorkerCounts) {
  constexpr size_t kSize = 6000;
  constexpr int kFrames = 6;
  const DriveResult reference = Drive(Variant::kHeap, nullptr, kSize, kFrames);
  size_t contacts = 0, visible = 0;
  for (const EcsFrameStats& f : reference.frames) {
    contacts += f.contacts;
    visible += f.visible;
  }
  // The scenario exercises its systems: contacts and visibility happen.
  EXPECT_GT(contacts, 0u);
  EXPECT_GT(visible, 0u);
  EXPECT_LT(visible, kSize * kFrames);
  EXPECT_EQ(Drive(Variant::kArena, nullptr, kSize, kFrames).hash,
            reference.hash);
  for (int workers : {1, 2}) {
    std::unique_ptr<numa::Topology> unused;
    auto rt = Runtimes::Make(workers, false, &unused);
    for (Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
      EXPECT_EQ(Drive(v, rt.get(), kSize, kFrames).hash, reference.hash)
          << sim::VariantName(v) << " on " << workers << " workers";
    }
  }
  std::unique_ptr<numa::Topology> topology;
  auto two = Runtimes::Make(0, /*two_nodes=*/true, &topology);
  ASSERT_EQ(two->num_nodes(), 2);
  for (Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
    EXPECT_EQ(Drive(v, two.get(), kSize, kFrames).hash, reference.hash)
        << sim::VariantName(v) << " on two nodes";
  }
  // A different seed gives a different state (the hash sees the state).
  ChunkCache cache(&SystemMemorySource::Default());
  EcsSimulation other;
  ASSERT_TRUE(other.Init({.seed = 6, .size = kSize}, {}).ok());
  for (int f = 0; f < kFrames; ++f) ASSERT_TRUE(other.Step({}).ok());
  EXPECT_NE(other.StateHash(), reference.hash);
}

TEST(EcsScenarioTest, ArenaVariantsUseFrameMemory) {
  constexpr size_t kSize = 5000;
  const size_t world_bytes = kSize * sizeof(Mat4);
  const DriveResult arena = Drive(Variant::kArena, nullptr, kSize, 2);
  const DriveResult heap = Drive(Variant::kHeap, nullptr, kSize, 2);
  for (int f = 0; f < 2; ++f) {
    // World matrices plus query results: all of it in the frame arena...
    EXPECT_GE(arena.arena_bytes[f], world_bytes);
    // ...and none of it in the heap variant's (unused) arena.
    EXPECT_EQ(heap.arena_bytes[f], 0u);
  }
  std::unique_ptr<numa::Topology> unused;
  auto rt = Runtimes::Make(2, false, &unused);
  const DriveResult rt_arena =
      Drive(Variant::kRuntimeArena, rt.get(), kSize, 2);
  const DriveResult rt_heap = Drive(Variant::kRuntimeHeap, rt.get(), kSize, 2);
  for (int f = 0; f < 2; ++f) {
    EXPECT_GE(rt_arena.arena_bytes[f], world_bytes);
    EXPECT_LT(rt_heap.arena_bytes[f], world_bytes / 4);
  }
}

TEST(EcsScenarioTest, BadInputIsAClearStatus) {
  EcsSimulation s;
  absl::Status big =
      s.Init({.size = EcsSimulation::kMaxEntities + 1}, sim::FrameEnv());
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.message().find("ScenarioConfig.size"), std::string::npos);
  sim::FrameEnv no_arena;
  no_arena.variant = Variant::kArena;
  absl::Status arena = s.Init({.size = 10}, no_arena);
  EXPECT_EQ(arena.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(arena.message().find("FrameEnv.arena"), std::string::npos);
  sim::FrameEnv no_runtime;
  no_runtime.variant = Variant::kRuntimeArena;
  EXPECT_EQ(s.Step(no_runtime).code(), absl::StatusCode::kInvalidArgument);
  // Regression (review): without an open frame the runtime variants' jobs
  // got scratch arenas, rewound as each returned, while their per-frame
  // data was read later (ASan: use-after-poison); Step returned OK.
  auto rt = jobs::Runtime::Create(jobs::Config().set_workers_per_node(1));
  ASSERT_TRUE(rt.ok()) << rt.status();
  for (const Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
    EcsSimulation sim;
    const sim::FrameEnv env{v, rt->get(), nullptr};
    ASSERT_TRUE(sim.Init({.size = 100}, env).ok());
    absl::Status step = sim.Step(env);
    EXPECT_EQ(step.code(), absl::StatusCode::kFailedPrecondition) << step;
    EXPECT_NE(step.message().find("open frame"), std::string::npos);
    ASSERT_TRUE((*rt)->BeginFrame().ok());
    EXPECT_TRUE(sim.Step(env).ok());
    ASSERT_TRUE((*rt)->EndFrame().ok());
  }
  // The registration is what the suite expects.
  const sim::ScenarioInfo info = EcsScenario();
  EXPECT_EQ(info.name, "ecs");
  EXPECT_FALSE(info.allocation_heavy);
  EXPECT_NE(info.create(), nullptr);
}

std::unique_ptr<jobs::Runtime> ExecutorRuntime(const numa::Topology* topology,
                                               int workers_per_node) {
  jobs::Config config;
  config.set_workers_per_node(workers_per_node);
  if (topology != nullptr) config.set_topology(topology);
  auto rt = jobs::Runtime::Create(config);
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? *std::move(rt) : nullptr;
}

// Regression (review): on one thread a body's exception left ForRange and
// ForBlocks, where on a runtime it becomes the call's status.
TEST(FrameExecutorTest, ABodysExceptionIsAnUnknownStatusOnEveryExecutor) {
  auto rt = ExecutorRuntime(nullptr, 1);
  ASSERT_NE(rt, nullptr);
  ASSERT_TRUE(rt->BeginFrame().ok());
  for (const FrameExecutor& exec : {FrameExecutor::Sequential(nullptr),
                                    FrameExecutor::OnRuntime(rt.get())}) {
    absl::Status s = exec.ForBlocks(3, [](const Lane&, size_t block) {
      if (block == 1) throw std::runtime_error("block one");
    });
    EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
    EXPECT_NE(s.message().find("block one"), std::string::npos) << s;
  }
  EXPECT_FALSE(rt->EndFrame().ok());  // The runtime's frame saw the failure.
}

// A body that throws on a runtime of two workers (one chunk, or every
// chunk) after taking frame memory: the call returns Unknown without
// waiting for anything that will not come, the frame ends (EndFrame reports
// the failure) with every worker arena reset, and the next frame's calls
// run every chunk once.
TEST(FrameExecutorTest, AThrowingBodyLeavesTheRuntimeReadyForTheNextFrame) {
  auto rt = ExecutorRuntime(nullptr, 2);
  ASSERT_NE(rt, nullptr);
  const FrameExecutor exec = FrameExecutor::OnRuntime(rt.get());
  constexpr size_t kItems = 1000;
  for (const bool every_chunk : {false, true}) {
    SCOPED_TRACE(every_chunk ? "every chunk throws" : "one chunk throws");
    ASSERT_TRUE(rt->BeginFrame().ok());
    absl::Status s =
        exec.ForRange(kItems, 7, [&](const Lane& lane, size_t b, size_t) {
          lane.arena->AllocateArray<double>(64);
          if (every_chunk || b == 497) throw std::runtime_error("system");
        });
    EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
    EXPECT_NE(s.message().find("system"), std::string::npos) << s;
    EXPECT_FALSE(rt->EndFrame().ok());

    ASSERT_TRUE(rt->BeginFrame().ok());
    std::vector<std::atomic<int>> hits(kItems);
    std::atomic<size_t> bytes_at_start{0};
    s = exec.ForRange(kItems, 7, [&](const Lane& lane, size_t b, size_t e) {
      bytes_at_start.fetch_add(lane.arena->stats().bytes_used);
      for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(bytes_at_start.load(), 0u);  // The failed frame's memory went.
    for (size_t i = 0; i < kItems; ++i) ASSERT_EQ(hits[i].load(), 1) << i;
    EXPECT_TRUE(rt->EndFrame().ok());
  }
}

void ThrowingHandler(const ErrorReport& report, void*) {
  throw std::runtime_error(report.message);
}

// A frame whose memory runs out with a throwing error handler (the world
// column's allocation throws out of its body): Step returns Unknown and
// the scenario steps on, its per-frame results rebuilt from scratch.
TEST(EcsScenarioTest, AFailedFrameLeavesTheScenarioSteppable) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const sim::FrameEnv env{Variant::kArena, nullptr, &arena};
  EcsSimulation s;
  ASSERT_TRUE(s.Init({.seed = 4, .size = 5000}, env).ok());
  ASSERT_TRUE(s.Step(env).ok());
  arena.Reset();
  {
    alloc_internal::FailingSource dry;
    dry.FailNext(-1);
    ChunkCache dry_cache(&dry);
    FrameArena dry_arena(&dry_cache);
    ScopedErrorHandler throwing(&ThrowingHandler, nullptr);
    const absl::Status failed = s.Step({Variant::kArena, nullptr, &dry_arena});
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnknown) << failed;
    EXPECT_NE(failed.message().find("failing source"), std::string::npos)
        << failed;
  }
  for (int f = 0; f < 3; ++f) {
    const absl::Status step = s.Step(env);
    EXPECT_TRUE(step.ok()) << "step " << f << " after the failure: " << step;
    arena.Reset();
  }
  EXPECT_EQ(s.last_frame().frame, 3u);
  EXPECT_EQ(s.last_frame().entities, 5000u);
}

TEST(FrameExecutorTest, ForRangeRunsEveryChunkOnceOnAnyLayout) {
  auto two_nodes = numa::Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  for (const auto& [topology, workers] :
       std::vector<std::pair<const numa::Topology*, int>>{
           {nullptr, 1},
           {nullptr, 2},
           {two_nodes->get(), 1},
           {two_nodes->get(), 2}}) {
    auto rt = ExecutorRuntime(topology, workers);
    ASSERT_NE(rt, nullptr);
    const FrameExecutor exec = FrameExecutor::OnRuntime(rt.get());
    constexpr size_t kItems = 1000;
    const jobs::NodePartition homes = exec.Partition(kItems);
    for (size_t grain : {size_t{1}, size_t{7}, size_t{64}, size_t{5000},
                         SIZE_MAX - 5, SIZE_MAX}) {
      for (size_t begin : {size_t{0}, size_t{13}}) {
        std::vector<std::atomic<int>> hits(kItems);
        ASSERT_TRUE(exec.ForRange(homes, begin, kItems, grain,
                                  [&](const Lane& lane, size_t b, size_t e) {
                                    EXPECT_LT(b, e);
                                    EXPECT_LE(e - b, grain);
                                    EXPECT_GE(lane.lane, 0);
                                    EXPECT_LT(lane.lane, exec.lanes());
                                    for (size_t i = b; i < e; ++i) {
                                      hits[i].fetch_add(1);
                                    }
                                  })
                        .ok());
        for (size_t i = 0; i < kItems; ++i) {
          EXPECT_EQ(hits[i].load(), i < begin ? 0 : 1)
              << "item " << i << " grain " << grain << " begin " << begin
              << " workers " << workers;
        }
      }
    }
  }
}

// Regression (review): the chunk count (len + grain - 1) / grain wrapped to
// 0 for a grain near SIZE_MAX, so on a runtime nothing ran and the call
// returned OK, where one thread ran every item. A grain of SIZE_MAX means
// one chunk per node's share, on every executor; 0 is still refused.
TEST(FrameExecutorTest, AHugeGrainRunsEveryItemOnEveryExecutor) {
  auto two_nodes = numa::Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  auto one_node = ExecutorRuntime(nullptr, 1);
  auto two = ExecutorRuntime(two_nodes->get(), 1);
  ASSERT_NE(one_node, nullptr);
  ASSERT_NE(two, nullptr);
  for (const FrameExecutor& exec : {FrameExecutor::Sequential(nullptr),
                                    FrameExecutor::OnRuntime(one_node.get()),
                                    FrameExecutor::OnRuntime(two.get())}) {
    const int nodes =
        exec.runtime() == nullptr ? 1 : exec.runtime()->num_nodes();
    for (const size_t grain : {SIZE_MAX, SIZE_MAX - 5, SIZE_MAX - 99}) {
      SCOPED_TRACE(testing::Message()
                   << "grain " << grain << " nodes " << nodes << " runtime "
                   << (exec.runtime() != nullptr));
      constexpr size_t kItems = 100;
      std::vector<std::atomic<int>> hits(kItems);
      std::atomic<int> calls{0};
      const absl::Status s =
          exec.ForRange(kItems, grain, [&](const Lane&, size_t b, size_t e) {
            calls.fetch_add(1);
            for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
          });
      ASSERT_TRUE(s.ok()) << s;
      for (size_t i = 0; i < kItems; ++i) EXPECT_EQ(hits[i].load(), 1) << i;
      EXPECT_EQ(calls.load(), nodes);  // One chunk per node's share.
    }
    EXPECT_EQ(exec.ForRange(10, 0, [](const Lane&, size_t, size_t) {}).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(FrameExecutorTest, ChunksStartAtTheGrainFromEachNodesShare) {
  auto two_nodes = numa::Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
  ASSERT_TRUE(two_nodes.ok()) << two_nodes.status();
  auto rt = ExecutorRuntime(two_nodes->get(), 2);
  ASSERT_NE(rt, nullptr);
  const FrameExecutor exec = FrameExecutor::OnRuntime(rt.get());
  const jobs::NodePartition homes = exec.Partition(100);
  ASSERT_EQ(homes.ranges().size(), 2u);
  // std::mutex, not absl::Mutex: the system Abseil is not TSan-instrumented.
  std::mutex mu;
  std::vector<std::pair<size_t, size_t>> chunks;
  ASSERT_TRUE(exec.ForRange(homes, 0, 100, 8,
                            [&](const Lane&, size_t b, size_t e) {
                              std::lock_guard<std::mutex> lock(mu);
                              chunks.emplace_back(b, e);
                            })
                  .ok());
  std::sort(chunks.begin(), chunks.end());
  // Each node's share cut at multiples of 8 from its start; never across
  // the boundary between the nodes' shares.
  std::vector<std::pair<size_t, size_t>> expected;
  for (const jobs::NodeRange& r : homes.ranges()) {
    for (size_t b = r.begin; b < r.end; b += 8) {
      expected.emplace_back(b, std::min(r.end, b + 8));
    }
  }
  EXPECT_EQ(chunks, expected);
}

TEST(FrameExecutorTest, OnePartJobRunsEveryChunkWhenTheOtherWorkerIsHeld) {
  auto rt = ExecutorRuntime(nullptr, 2);
  ASSERT_NE(rt, nullptr);
  const FrameExecutor exec = FrameExecutor::OnRuntime(rt.get());
  std::atomic<bool> held{false};
  std::atomic<bool> release{false};
  std::atomic<int> held_lane{-1};
  ASSERT_TRUE(rt->Spawn([&](jobs::JobContext& ctx) {
                  held_lane.store(ctx.worker());
                  held.store(true);
                  while (!release.load()) std::this_thread::yield();
                }).ok());
  while (!held.load()) std::this_thread::yield();
  constexpr size_t kItems = 640;  // 64 chunks of 10: two parts of 32.
  std::vector<std::atomic<int>> hits(kItems);
  std::atomic<int> other_lane{0};
  // std::mutex, not absl::Mutex: the system Abseil is not TSan-instrumented.
  std::mutex mu;
  std::vector<size_t> order;  // Chunk indexes as they ran.
  const absl::Status s =
      exec.ForRange(kItems, 10, [&](const Lane& lane, size_t b, size_t e) {
        if (lane.lane == held_lane.load()) other_lane.fetch_add(1);
        for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(b / 10);
      });
  release.store(true);
  ASSERT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < kItems; ++i) EXPECT_EQ(hits[i].load(), 1) << i;
  // Every chunk ran on the free worker: its own part from the front, then
  // the held worker's part from the back, all by the first part job.
  EXPECT_EQ(other_lane.load(), 0);
  const size_t free_worker = held_lane.load() == 0 ? 1 : 0;
  std::vector<size_t> expected;
  for (size_t c = 32 * free_worker; c < 32 * free_worker + 32; ++c) {
    expected.push_back(c);
  }
  for (size_t c = 32 * (1 - free_worker) + 32; c-- > 32 * (1 - free_worker);) {
    expected.push_back(c);
  }
  EXPECT_EQ(order, expected);
}

}  // namespace
}  // namespace framealloc::integration::ecs
