// The ECS scenario of the simulation suite: a transform hierarchy with
// spinning entities, visibility and ground contacts, every frame.
//
// For: //benchmarks:simulation's "ecs" workload, the ECS example and its
// benchmark. Each frame: a spin system rotates every entity's local
// transform (SoA columns, split by node); the transform system computes
// world matrices parent before child (the store laid out by tree group,
// each group on one worker on one node; HierarchyOrder), into a per-frame
// component (FrameColumn<Mat4>, on frame memory in the arena variants); a
// visibility system culls every entity's bounding sphere and a contact
// system emits ground-contact events, both as per-block query results on
// frame memory; a response system applies the events (spin reversed,
// entity lifted) in block order. World matrices, visible lists and events
// are gone when the frame's memory is released; only the local transforms
// and a digest of each frame persist.
// Not for: a general-purpose ECS (see soa_store.h and transform.h for the
// reusable pieces).
//
// Determinism: blocks of 1024 positions are fixed by the entity count;
// block results are combined in block order; so StateHash() is identical
// across variants and worker counts.
// Thread safety: as sim::Scenario (Init/Step/StateHash from one thread).
// Init starts over: called again (any seed, size or variant), it replaces
// the whole state, frame counter and digests included, so Init and N steps
// reach a fresh object's state; a failed Init changes nothing.
// Errors: Init: InvalidArgument for a size above kMaxEntities or an
// environment that does not match the variant; Step: the same for the
// environment, and job failures.
//
// Example:
//   auto scenario = framealloc::integration::EcsScenario().create();
//   sim::FrameEnv env{.variant = sim::Variant::kArena, .arena = &arena};
//   (void)scenario->Init({.seed = 1, .size = 10000}, env);
//   for (int f = 0; f < 60; ++f) { (void)scenario->Step(env); arena.Reset(); }
#ifndef INTEGRATION_ECS_ECS_SCENARIO_H_
#define INTEGRATION_ECS_ECS_SCENARIO_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "benchmarks/scenario.h"
#include "integration/ecs/frame_memory.h"
#include "integration/ecs/soa_store.h"
#include "integration/ecs/transform.h"

namespace framealloc::integration {

// The suite's registration: name "ecs", allocation_heavy = false.
sim::ScenarioInfo EcsScenario();

namespace ecs {

// What the last frame did.
struct EcsFrameStats {
  uint64_t frame = 0;
  size_t entities = 0;
  size_t levels = 0;       // Depth levels of the hierarchy.
  size_t visible = 0;      // Entities whose bounds were in view.
  size_t contacts = 0;     // Ground-contact events.
  size_t world_bytes = 0;  // The frame's world-matrix component.
};

// A ground-contact event: the entity at a dense slot sinks `depth` below y=0.
struct ContactEvent {
  uint32_t slot = 0;
  float depth = 0;
};

class EcsSimulation final : public sim::Scenario {
 public:
  static constexpr size_t kDefaultEntities = 100000;
  static constexpr size_t kMaxEntities = size_t{1} << 24;
  static constexpr size_t kBlock = 1024;  // Positions per result block.

  absl::Status Init(const sim::ScenarioConfig& config,
                    const sim::FrameEnv& env) override;
  absl::Status Step(const sim::FrameEnv& env) override;
  uint64_t StateHash() const override;
  size_t WorkingSetBytes() const override;

  const EcsFrameStats& last_frame() const { return last_; }
  const Transforms& transforms() const { return transforms_; }
  const HierarchyOrder& order() const { return order_; }
  std::span<const Entity> entities() const { return entities_; }

 private:
  template <typename Mem>
  struct BlockOut {
    std::optional<typename Mem::template Vec<uint32_t>> visible;
    std::optional<typename Mem::template Vec<ContactEvent>> contacts;
    double world_sum = 0;  // Sum of world translations, in position order.
    uint64_t digest = 0;   // Of the counts, world_sum and the visible list.
  };
  // The initial state of n entities from `seed`, into this (new) object.
  absl::Status Build(size_t n, uint64_t seed);
  // Lays the transforms out by tree group (HierarchyOrder::GroupedSlotOrder)
  // and the motion components in the same entity order, then updates the
  // order: in Init, and in a frame whose hierarchy changed so that the
  // order is no longer grouped.
  absl::Status GroupStores();
  template <typename Mem>
  absl::Status RunFrame(const FrameExecutor& exec,
                        std::vector<BlockOut<Mem>>& blocks);
  template <typename Mem>
  std::vector<BlockOut<Mem>>& Blocks();

  EntityRegistry registry_;
  std::vector<Entity> entities_;
  Transforms transforms_;
  // Spin rate (radians per second) and bounding radius, by entity.
  SoaStore<float, float> motion_;
  HierarchyOrder order_;
  std::vector<BlockOut<HeapMemory>> heap_blocks_;
  std::vector<BlockOut<ArenaMemory>> arena_blocks_;
  uint64_t frame_ = 0;
  uint64_t digest_ = 0;
  uint64_t total_contacts_ = 0;
  EcsFrameStats last_;
};

}  // namespace ecs
}  // namespace framealloc::integration

#endif  // INTEGRATION_ECS_ECS_SCENARIO_H_
