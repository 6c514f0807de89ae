// The registry of the simulation suite's scenarios.
//
// For: the driver (//benchmarks:simulation) and the suite's tests, which run
// every scenario listed here. Adding a scenario is one line in scenarios.cc
// (its ScenarioInfo factory) and one dep in the :scenarios target of
// benchmarks/BUILD.bazel. Not for: defining scenarios (see scenario.h).
//
// Thread safety: RegisteredScenarios builds a fresh list on every call.
// Errors: FindScenarios returns InvalidArgument naming an unknown scenario.
//
// Example:
//   for (const sim::ScenarioInfo& info : sim::RegisteredScenarios()) {
//     std::unique_ptr<sim::Scenario> s = info.create();
//   }
#ifndef BENCHMARKS_SCENARIOS_H_
#define BENCHMARKS_SCENARIOS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "benchmarks/scenario.h"

namespace framealloc::sim {

// Every scenario, in the order the suite runs them.
std::vector<ScenarioInfo> RegisteredScenarios();

// The scenarios named in a comma-separated list, in registry order, each
// once however often it is named; "all", alone or among other names
// ("all,physics"), or an empty list selects every one. InvalidArgument
// naming an unknown name and listing the known ones (and "all").
absl::StatusOr<std::vector<ScenarioInfo>> FindScenarios(absl::string_view list);

}  // namespace framealloc::sim

#endif  // BENCHMARKS_SCENARIOS_H_
