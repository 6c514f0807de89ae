// A frame-loop benchmark for one simulation-suite scenario: every variant,
// at 1 and 2 workers, in one process, with ratios.
//
// For: the benchmark programs of the integration libraries
// (//integration/ecs:ecs_benchmark, //integration/renderer:render_benchmark
// and their copies linked with mimalloc). It plays the suite driver's part
// (benchmarks/scenario.h): a frame arena for kArena, reset after each Step;
// a runtime per worker count for the runtime variants, BeginFrame before
// and EndFrame after each Step, both inside the timed frame. Configurations
// alternate frame block by frame block (rounds) so a slow phase of a shared
// machine hits all of them alike; every configuration steps the same frames
// and must end with the same StateHash (checked; exit code 1 otherwise).
// Not for: the simulation suite itself (//benchmarks:simulation), nor
// library code.
//
// Thread safety: a program's main. Errors: a failing Init/Step is printed
// and the program exits with status 1.
//
// Example (a benchmark's main):
//   int main(int argc, char** argv) {
//     return framealloc::integration::RunScenarioBenchmark(
//         framealloc::integration::RenderScenario(), argc, argv);
//   }
#ifndef INTEGRATION_ECS_SCENARIO_BENCHMARK_H_
#define INTEGRATION_ECS_SCENARIO_BENCHMARK_H_

#include "benchmarks/scenario.h"

namespace framealloc::integration {

// Flags: --size (0: the scenario's default), --frames (measured per round
// and configuration), --warmup, --rounds, --seed, --workers (a list, e.g.
// "1,2"), --label (printed in the heading, e.g. the malloc in use).
int RunScenarioBenchmark(const sim::ScenarioInfo& info, int argc, char** argv);

}  // namespace framealloc::integration

#endif  // INTEGRATION_ECS_SCENARIO_BENCHMARK_H_
