// The physics workload as a scenario of the simulation suite
// (benchmarks/scenario.h): rigid spheres settling in a container, stepped by
// PhysicsWorld (physics_world.h) in each of the suite's four variants.
//
// For: //benchmarks:simulation (the suite's driver) and this package's own
// benchmark and tests. Not for: applications (use PhysicsWorld directly).
//
// Variants: kHeap and kRuntimeHeap build every per-frame structure on the
// heap (std::vectors, a std::unique_ptr manifold per colliding pair with a
// std::vector of points); kArena and kRuntimeArena put the same structures
// on env.arena or on each job's JobContext::arena(). All four end in the
// same StateHash() for equal seed, size and frame count, on any number of
// workers. Allocation-heavy: several thousand heap allocations per frame in
// the heap variants.
//
// Thread safety: as sim::Scenario (one driver thread; Step runs jobs).
// Errors: Init returns InvalidArgument for a size above 2^24 bodies; Step
// returns InvalidArgument when env lacks what the variant needs (arena,
// runtime), FailedPrecondition for runtime-arena without an open frame, or
// a job's failure.
//
// Example:
//   sim::ScenarioInfo info = integration::PhysicsScenario();
//   std::unique_ptr<sim::Scenario> s = info.create();
//   sim::FrameEnv env{sim::Variant::kArena, nullptr, &arena};
//   absl::Status st = s->Init({.seed = 1, .size = 4096}, env);
//   for (int f = 0; st.ok() && f < 100; ++f) {
//     st = s->Step(env);
//     arena.Reset();
//   }
#ifndef INTEGRATION_PHYSICS_PHYSICS_SCENARIO_H_
#define INTEGRATION_PHYSICS_PHYSICS_SCENARIO_H_

#include <memory>

#include "benchmarks/scenario.h"
#include "integration/physics/physics_world.h"

namespace framealloc {
namespace integration {

// "physics": allocation_heavy, default size PhysicsConfig().bodies.
sim::ScenarioInfo PhysicsScenario();

// A physics scenario whose worlds start from `base` (the scenario config's
// seed and, when non-zero, size replace base.seed and base.bodies).
std::unique_ptr<sim::Scenario> MakePhysicsScenario(PhysicsConfig base = {});

}  // namespace integration
}  // namespace framealloc

#endif  // INTEGRATION_PHYSICS_PHYSICS_SCENARIO_H_
