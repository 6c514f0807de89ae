// The registry (see scenarios.h). To add a scenario: include its header,
// add its factory to the list below, and add its target to the deps of
// :scenarios in benchmarks/BUILD.bazel.
#include "benchmarks/scenarios.h"

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "benchmarks/particles.h"
#include "integration/ecs/ecs_scenario.h"
#include "integration/physics/physics_scenario.h"
#include "integration/renderer/render_scenario.h"

namespace framealloc::sim {

std::vector<ScenarioInfo> RegisteredScenarios() {
  return {
      ParticlesScenario(),
      integration::PhysicsScenario(),
      integration::EcsScenario(),
      integration::RenderScenario(),
  };
}

absl::StatusOr<std::vector<ScenarioInfo>> FindScenarios(
    absl::string_view list) {
  std::vector<ScenarioInfo> all = RegisteredScenarios();
  if (list.empty()) return all;
  absl::flat_hash_set<std::string> wanted;
  bool every = false;
  for (absl::string_view name :
       absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    // "all" is a name like the others ("all,physics" is every scenario,
    // once each), and the message below lists it among the known ones.
    if (name == "all") {
      every = true;
      continue;
    }
    bool known = false;
    for (const ScenarioInfo& info : all) known = known || info.name == name;
    if (!known) {
      std::vector<std::string> names;
      for (const ScenarioInfo& info : all) names.push_back(info.name);
      return absl::InvalidArgumentError(
          absl::StrCat("scenario: unknown scenario '", name,
                       "' (known: ", absl::StrJoin(names, ", "), ", all)"));
    }
    wanted.insert(std::string(name));
  }
  if (every) return all;
  std::vector<ScenarioInfo> chosen;
  for (ScenarioInfo& info : all) {
    if (wanted.contains(info.name)) chosen.push_back(std::move(info));
  }
  return chosen;
}

}  // namespace framealloc::sim
