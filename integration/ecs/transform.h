// The transform hierarchy: local transforms (TRS) in SoA columns, world
// matrices computed parent before child as a per-frame component.
//
// For: an ECS's core scene graph. Transforms keeps each entity's local
// position, rotation (unit quaternion), uniform scale and parent in a
// SoaStore; HierarchyOrder sorts the entities by depth so that every parent
// comes before its children (rebuilt only when the store or a parent
// changes); ComputeWorldTransforms fills a FrameColumn<Mat4> level by level,
// each level split over the executor's workers (on one node, all levels in
// one job, each a fork-join; on several, each level split by node). The world
// matrices are the reference guide's FrameallocComponent: they exist for the
// frame only, on frame memory in the arena variants (std::vector on the heap
// otherwise), and are gone when the frame's memory is released.
// Not for: non-uniform scale or shear (TRS with a uniform scale only).
//
// Thread safety: Transforms and HierarchyOrder are single-threaded objects
// (different objects may be used on different threads: the counter their
// versions come from is atomic); ComputeWorldTransforms runs jobs that only
// read them.
// Errors: SetParent/Add with an absent parent, a self-parent or a cycle:
// InvalidArgument or NotFound naming the entities; ComputeWorldTransforms
// with an order not up to date for the transforms, or with ArenaMemory on
// an executor without a frame arena: FailedPrecondition; executor failures
// are returned.
//
// Example:
//   Transforms tf;
//   (void)tf.Add(root, {.position = {0, 1, 0}});
//   (void)tf.Add(child, {.position = {1, 0, 0}, .parent = root});
//   HierarchyOrder order;
//   (void)order.Update(tf);
//   FrameColumn<Mat4, ArenaMemory> world;
//   (void)ComputeWorldTransforms<ArenaMemory>(tf, order, exec, &world);
//   Vec3 p = world[*order.PositionOf(tf, child)].Translation();  // (1, 1, 0)
#ifndef INTEGRATION_ECS_TRANSFORM_H_
#define INTEGRATION_ECS_TRANSFORM_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "integration/ecs/frame_memory.h"
#include "integration/ecs/soa_store.h"

namespace framealloc::integration::ecs {

struct Vec3 {
  float x = 0, y = 0, z = 0;
};

struct Quat {
  float w = 1, x = 0, y = 0, z = 0;
  // Rotation of `radians` about the unit axis (ax, ay, az).
  static Quat AxisAngle(float ax, float ay, float az, float radians);
  Quat operator*(const Quat& q) const;
  Quat Normalized() const;
};

// Column-major 4x4 matrix: m[col * 4 + row].
struct Mat4 {
  float m[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  static Mat4 FromTrs(const Vec3& t, const Quat& r, float s);
  Mat4 operator*(const Mat4& b) const;
  Vec3 Translation() const { return {m[12], m[13], m[14]}; }
  // Applies the matrix to a point.
  Vec3 TransformPoint(const Vec3& p) const;
};

// One entity's local transform, relative to its parent (or the world).
struct LocalTransform {
  Vec3 position;
  Quat rotation;
  float scale = 1;
  Entity parent = Entity::Null();
};

// Local transforms in SoA columns, with a checked hierarchy.
class Transforms {
 public:
  enum Column { kPosition = 0, kRotation = 1, kScale = 2, kParent = 3 };
  using Store = SoaStore<Vec3, Quat, float, Entity>;

  // Empty, at a hierarchy version no other object or state has had.
  Transforms() = default;
  // A copy holds the same hierarchy, so it keeps the version: an order up to
  // date for one is up to date for the other (until either changes).
  Transforms(const Transforms&) = default;
  Transforms& operator=(const Transforms&) = default;
  // The target takes the source's store and version; the source is left
  // empty, at a new version.
  Transforms(Transforms&& other) noexcept;
  Transforms& operator=(Transforms&& other) noexcept;

  // Adds `e`. InvalidArgument if t.parent is `e` itself or descends from
  // `e` (an entity removed and added again is still named by its old
  // children), NotFound if t.parent is not null and has no transform (add
  // parents first), and the store's errors (null entity, already present).
  // No sequence of calls can form a cycle.
  absl::Status Add(Entity e, const LocalTransform& t);
  // Removes `e`. Its children keep naming it and become roots until they
  // are given another parent. NotFound if absent.
  absl::Status Remove(Entity e);
  // Re-parents `child` (Entity::Null(): a root). NotFound for an absent
  // child or parent, InvalidArgument naming both if `parent` is `child` or
  // one of its descendants (a cycle).
  absl::Status SetParent(Entity child, Entity parent);
  // Reorders the dense slots (SoaStore::Permute): new slot j holds old slot
  // slots[j]. HierarchyOrder::GroupedSlotOrder gives the order that lays
  // each tree group out contiguously. InvalidArgument unless a permutation.
  absl::Status Reorder(std::span<const uint32_t> slots);

  const Store& store() const { return store_; }
  // The columns, for systems that change local transforms in place (not
  // the parent column: use SetParent).
  std::span<Vec3> positions() { return store_.column<kPosition>(); }
  std::span<Quat> rotations() { return store_.column<kRotation>(); }
  std::span<float> scales() { return store_.column<kScale>(); }
  size_t size() const { return store_.size(); }
  // Identifies the hierarchy (entities, dense order, parents): changes on
  // every successful Add, Remove, SetParent and Reorder, and each new value
  // is drawn from a process-wide counter, so two states (of this object or
  // of any other, e.g. one rebuilt as `tf = Transforms()` and refilled)
  // never share a version unless one is a copy of the other.
  // HierarchyOrder::Update rebuilds on any other version than its own.
  uint64_t hierarchy_version() const { return hierarchy_version_; }

 private:
  // A version no object has had: the next value of the process-wide
  // counter.
  static uint64_t NewHierarchyVersion();
  // Whether walking up the parents from `from` meets `target` (`from`
  // itself included); a removed entity ends the walk.
  bool Reaches(Entity from, Entity target) const;

  Store store_;
  uint64_t hierarchy_version_ = NewHierarchyVersion();
};

// The entities of a Transforms sorted parent before child: by depth, then
// by dense slot. Level d holds the entities of depth d (roots: 0) at
// positions [level_begin(d), level_begin(d + 1)).
//
// Tree groups: the roots, in slot order, cut into at most kTreeGroups runs
// of about equal entity count (a run ends once the trees in it reach the
// next multiple of size / groups); a group is its roots' trees. When the
// store lays the groups out one after the other (Transforms::Reorder with
// GroupedSlotOrder(); grouped() says so), each level holds group 0's
// entities, then group 1's, and so on, and a group can be computed parent
// before child on its own, by one thread, from contiguous memory: no
// barrier between levels, every parent read by the thread that wrote it.
class HierarchyOrder {
 public:
  static constexpr size_t kTreeGroups = 16;

  // Rebuilds unless the order was last built for tf's hierarchy_version()
  // (for `tf` in its current state, or a copy of it): a changed object, a
  // rebuilt one, or another object is always rebuilt for. Internal error if
  // a cycle is found (Transforms prevents them).
  absl::Status Update(const Transforms& tf);
  // Whether the order was built for tf's current hierarchy (Update(tf) has
  // nothing to do).
  bool IsUpToDate(const Transforms& tf) const {
    return version_ == tf.hierarchy_version();
  }
  // The Transforms::hierarchy_version() the order was last built for
  // (UINT64_MAX, which no Transforms has, before the first Update).
  uint64_t version() const { return version_; }

  size_t size() const { return slot_.size(); }
  // The dense slot of the entity at position k.
  uint32_t slot(size_t k) const { return slot_[k]; }
  // The position of the parent of the entity at position k, or -1 (root).
  int32_t parent_position(size_t k) const { return parent_pos_[k]; }
  size_t levels() const { return level_begin_.size() - 1; }
  size_t level_begin(size_t d) const { return level_begin_[d]; }
  // The position of `e`, NotFound if `tf` has no `e`, or
  // FailedPrecondition if the order is not up to date for `tf`
  // (IsUpToDate; call Update(tf) first).
  absl::StatusOr<size_t> PositionOf(const Transforms& tf, Entity e) const;

  // Tree groups: min(kTreeGroups, roots) of them.
  size_t tree_groups() const { return groups_; }
  // Whether every level holds its entities group by group (group ids never
  // decrease within a level): true after Transforms::Reorder with
  // GroupedSlotOrder(), and for a store whose trees were added one after
  // the other.
  bool grouped() const { return grouped_; }
  // Entities in the largest tree group (0 without groups).
  size_t largest_tree_group() const { return largest_group_; }
  // Group g's entities of level d: positions [group_level_begin(g, d),
  // group_level_end(g, d)). REQUIRES: grouped().
  size_t group_level_begin(size_t g, size_t d) const {
    return group_level_[d * (groups_ + 1) + g];
  }
  size_t group_level_end(size_t g, size_t d) const {
    return group_level_[d * (groups_ + 1) + g + 1];
  }
  // The dense slots ordered by tree group, then depth, then slot: the
  // argument of Transforms::Reorder that makes the order grouped. Reordering
  // keeps the roots' relative order, so the groups, and grouped(), stay.
  std::vector<uint32_t> GroupedSlotOrder() const;

 private:
  // Finds each position's tree group and whether the levels are grouped.
  void BuildTreeGroups();

  // See version(). Versions count up from 1: none reaches UINT64_MAX.
  uint64_t version_ = UINT64_MAX;
  std::vector<uint32_t> slot_;
  std::vector<int32_t> parent_pos_;
  std::vector<uint32_t> position_of_slot_;
  std::vector<size_t> level_begin_ = {0};
  size_t groups_ = 0;
  size_t largest_group_ = 0;
  std::vector<uint32_t> group_of_;  // By position.
  bool grouped_ = false;
  std::vector<size_t> group_level_;  // (levels) x (groups + 1) boundaries.
};

// A FrameallocComponent: one T per item for one frame, in one segment per
// node (each allocated and first touched by a job on its node) from the
// memory policy: frame arenas (ArenaMemory) or the heap (HeapMemory).
// Valid until the frame's memory is released (arena variants) or the column
// is destroyed or Allocated again (heap).
template <typename T, typename Mem>
class FrameColumn {
 public:
  // Allocates n Ts homed as exec.Partition(n) says: value-initialized on
  // the heap (a std::vector), left unwritten on frame memory when T is
  // trivially copyable and destructible (the column is a frame buffer that
  // its producer writes in full before anything reads it: no zero fill, no
  // initializer pass over it). Frame memory (ArenaMemory) needs an executor
  // whose bodies get a frame arena (FrameExecutor::has_arena(): any runtime,
  // or Sequential with a non-null arena): FailedPrecondition otherwise,
  // with the column left empty. Executor failures are returned.
  absl::Status Allocate(const FrameExecutor& exec, size_t n) {
    Release();
    if constexpr (Mem::kUsesArena) {
      if (!exec.has_arena()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "FrameColumn::Allocate: ", n,
            " items on frame memory (ArenaMemory) need a frame arena, and the "
            "executor's arena is null (FrameExecutor::Sequential(nullptr)); it "
            "must be non-null (or a runtime's), or use HeapMemory"));
      }
    }
    homes_ = exec.Partition(n);
    for (const jobs::NodeRange& r : homes_.ranges()) {
      segments_.push_back(Segment{r.begin, r.end, nullptr, std::nullopt});
    }
    // One chunk per node range (grain n): the job on the range's node
    // allocates the segment from its own arena.
    return exec.ForRange(homes_, 0, n, n == 0 ? 1 : n,
                         [this](const Lane& lane, size_t b, size_t e) {
                           for (Segment& s : segments_) {
                             if (s.begin != b) continue;
                             if constexpr (kRawOnArena) {
                               s.data =
                                   lane.arena->template AllocateArray<T>(e - b);
                             } else {
                               Mem mem = Mem::From(lane);
                               s.storage.emplace(mem.template MakeVec<T>());
                               s.storage->resize(e - b);
                               s.data = s.storage->data();
                             }
                           }
                         });
  }

  size_t size() const { return homes_.size(); }
  const jobs::NodePartition& homes() const { return homes_; }
  T& operator[](size_t i) { return *Locate(i); }
  const T& operator[](size_t i) const { return *Locate(i); }
  // The first item of the segment holding i (tests check where memory is).
  const T* segment_data(size_t i) const { return Locate(i); }
  // Drops the storage (heap: frees it; arena: forgets it).
  void Release() {
    segments_.clear();
    homes_ = jobs::NodePartition();
  }

 private:
  // Frame memory holds T as raw storage: an implicit-lifetime type that
  // needs no destruction.
  static constexpr bool kRawOnArena = Mem::kUsesArena &&
                                      std::is_trivially_copyable_v<T> &&
                                      std::is_trivially_destructible_v<T>;
  struct Segment {
    size_t begin, end;
    T* data;
    std::optional<typename Mem::template Vec<T>> storage;
  };
  T* Locate(size_t i) const {
    for (const Segment& s : segments_) {
      if (i < s.end) return s.data + (i - s.begin);
    }
    return nullptr;
  }

  absl::InlinedVector<Segment, 2> segments_;
  jobs::NodePartition homes_;
};

// Fills `world` (position k: the entity at order position k) with every
// entity's world matrix: parent's world times its local TRS, roots' local
// TRS alone. Level by level. On a runtime of one node with a grouped order
// (HierarchyOrder::grouped()) of at least one group per worker, none over
// twice its share, the tree groups dealt to the workers (FrameExecutor),
// each group's trees computed by one worker with no barrier between levels
// (docs/ecs.md has the figures); on one node
// otherwise, one job runs the levels in turn, each a
// JobContext::ParallelFor in chunks of at least `grain`; on several nodes
// each level is split by node in chunks of `grain`, from the calling
// thread. InvalidArgument if grain is 0. FailedPrecondition, before
// anything is allocated, if `order` is not up to date for `tf`
// (HierarchyOrder::IsUpToDate: its size differs from tf.size(), or tf
// changed, was rebuilt or is another object since the order's last
// Update(tf)), or if Mem is ArenaMemory and the executor has no frame arena
// (FrameExecutor::Sequential(nullptr); see FrameColumn::Allocate).
template <typename Mem>
absl::Status ComputeWorldTransforms(const Transforms& tf,
                                    const HierarchyOrder& order,
                                    const FrameExecutor& exec,
                                    FrameColumn<Mat4, Mem>* world,
                                    size_t grain = 1024) {
  if (grain == 0) {
    return absl::InvalidArgumentError(
        "ComputeWorldTransforms: grain must be >= 1");
  }
  // A stale order reads the columns at its own slots and parent positions:
  // wrong matrices, or reads past tf's columns when the sizes differ.
  if (order.size() != tf.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ComputeWorldTransforms: the order holds ", order.size(),
        " entities and the transforms ", tf.size(),
        "; they must be equal (call HierarchyOrder::Update(tf) first)"));
  }
  if (!order.IsUpToDate(tf)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ComputeWorldTransforms: the order is not up to date: built for "
        "hierarchy version ",
        order.version(), ", the transforms are at version ",
        tf.hierarchy_version(),
        "; they must be equal (call HierarchyOrder::Update(tf) first)"));
  }
  absl::Status s = world->Allocate(exec, order.size());
  if (!s.ok()) return s;
  const auto pos = tf.store().template column<Transforms::kPosition>();
  const auto rot = tf.store().template column<Transforms::kRotation>();
  const auto scl = tf.store().template column<Transforms::kScale>();
  auto level_chunk = [&](size_t b, size_t e) {
    for (size_t k = b; k < e; ++k) {
      const uint32_t i = order.slot(k);
      const Mat4 local = Mat4::FromTrs(pos[i], rot[i], scl[i]);
      const int32_t p = order.parent_position(k);
      (*world)[k] = p < 0 ? local : (*world)[p] * local;
    }
  };
  if (exec.runtime() != nullptr && world->homes().ranges().size() == 1 &&
      order.grouped() && order.tree_groups() > 1 &&
      order.tree_groups() >= static_cast<size_t>(exec.runtime()->workers(
                                 world->homes().ranges()[0].node)) &&
      order.largest_tree_group() * order.tree_groups() <= 2 * order.size()) {
    // One node, grouped store, at least a group per worker and none over
    // twice its share (else one tree would be the whole frame's critical
    // path): each tree group's trees computed level by level, from
    // contiguous ranges, by one worker (FrameExecutor deals the groups). A
    // parent's matrix is read by the worker that just wrote it, and no
    // level waits for the others.
    return exec.ForBlocks(order.tree_groups(), [&](const Lane&, size_t g) {
      for (size_t d = 0; d < order.levels(); ++d) {
        level_chunk(order.group_level_begin(g, d), order.group_level_end(g, d));
      }
    });
  }
  if (exec.runtime() != nullptr && world->homes().ranges().size() == 1 &&
      order.levels() > 1) {
    // One node: one job runs the levels in turn, each a fork-join over the
    // node's workers (JobContext::ParallelFor), so the barrier between two
    // levels is the workers', not a round trip through this thread.
    jobs::JobHandle<void> levels = exec.runtime()->Submit(
        [&](jobs::JobContext& ctx) {
          for (size_t d = 0; d < order.levels(); ++d) {
            ctx.ParallelFor(order.level_begin(d), order.level_begin(d + 1),
                            grain, [&](jobs::JobContext&, size_t b, size_t e) {
                              level_chunk(b, e);
                            });
          }
        },
        jobs::SubmitOptions()
            .on_node(world->homes().ranges()[0].node)
            .named("world_levels"));
    return levels.Wait();
  }
  // Several nodes (a level's parents may be on any of them), or one thread:
  // level by level from this thread.
  for (size_t d = 0; d < order.levels(); ++d) {
    s = exec.ForRange(
        world->homes(), order.level_begin(d), order.level_begin(d + 1), grain,
        [&](const Lane&, size_t b, size_t e) { level_chunk(b, e); });
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The reference: each entity's world matrix by walking up its parent chain
// (no ordering, no frame memory), in dense-slot order. For tests.
std::vector<Mat4> ReferenceWorldTransforms(const Transforms& tf);

}  // namespace framealloc::integration::ecs

#endif  // INTEGRATION_ECS_TRANSFORM_H_
