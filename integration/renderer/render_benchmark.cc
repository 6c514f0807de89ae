// The render scenario's benchmark: heap, arena, runtime-heap and
// runtime-arena at 1 and 2 workers, in one run, with ratios. Linked twice:
// //integration/renderer:render_benchmark (glibc malloc) and
// :render_benchmark_mimalloc (mimalloc replaces malloc for the process).
//   ./bazelw run -c opt //integration/renderer:render_benchmark
#include "integration/ecs/scenario_benchmark.h"
#include "integration/renderer/render_scenario.h"

int main(int argc, char** argv) {
  return framealloc::integration::RunScenarioBenchmark(
      framealloc::integration::RenderScenario(), argc, argv);
}
