// The ECS scenario's benchmark: heap, arena, runtime-heap and runtime-arena
// at 1 and 2 workers, in one run, with ratios (and a copy linked with
// mimalloc).
//   ./bazelw run -c opt //integration/ecs:ecs_benchmark
#include "integration/ecs/ecs_scenario.h"
#include "integration/ecs/scenario_benchmark.h"

int main(int argc, char** argv) {
  return framealloc::integration::RunScenarioBenchmark(
      framealloc::integration::EcsScenario(), argc, argv);
}
