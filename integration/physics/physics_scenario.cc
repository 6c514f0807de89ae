// The "physics" scenario (see physics_scenario.h).
#include "integration/physics/physics_scenario.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "benchmarks/scenario.h"
#include "integration/physics/physics_world.h"

namespace framealloc {
namespace integration {
namespace {

class PhysicsScenarioImpl final : public sim::Scenario {
 public:
  explicit PhysicsScenarioImpl(PhysicsConfig base) : base_(base) {}

  absl::Status Init(const sim::ScenarioConfig& config,
                    const sim::FrameEnv& env) override {
    PhysicsConfig c = base_;
    c.seed = config.seed;
    if (config.size != 0) c.bodies = config.size;
    auto world = PhysicsWorld::Create(c);
    if (!world.ok()) return world.status();
    world_ = *std::move(world);
    return absl::OkStatus();
  }

  absl::Status Step(const sim::FrameEnv& env) override {
    if (world_ == nullptr) {
      return absl::FailedPreconditionError(
          "physics scenario: Step before a successful Init");
    }
    if (absl::Status s = sim::CheckStepEnv(env, "physics scenario"); !s.ok()) {
      return s;
    }
    switch (env.variant) {
      case sim::Variant::kHeap:
        return world_->Step(StepOptions::Heap());
      case sim::Variant::kArena:
        return world_->Step(StepOptions::Arena(env.arena));
      case sim::Variant::kRuntimeHeap:
        return world_->Step(StepOptions::RuntimeHeap(env.runtime));
      case sim::Variant::kRuntimeArena:
        return world_->Step(StepOptions::RuntimeArena(env.runtime));
    }
    return absl::InvalidArgumentError("physics scenario: unknown variant");
  }

  uint64_t StateHash() const override {
    return world_ == nullptr ? 0 : world_->StateHash();
  }

  size_t WorkingSetBytes() const override {
    return world_ == nullptr ? 0 : world_->WorkingSetBytes();
  }

 private:
  PhysicsConfig base_;
  std::unique_ptr<PhysicsWorld> world_;
};

}  // namespace

std::unique_ptr<sim::Scenario> MakePhysicsScenario(PhysicsConfig base) {
  return std::make_unique<PhysicsScenarioImpl>(base);
}

sim::ScenarioInfo PhysicsScenario() {
  sim::ScenarioInfo info;
  info.name = "physics";
  info.description =
      "rigid spheres settling in a box: sort-and-sweep, contact manifolds, "
      "sequential impulses over spatial slabs";
  info.allocation_heavy = true;
  info.default_size = PhysicsConfig().bodies;
  info.create = [] { return MakePhysicsScenario(); };
  return info;
}

}  // namespace integration
}  // namespace framealloc
