// The ECS on the job runtime, frame by frame: entities, hierarchy levels,
// visible entities and contact events, and the frame memory that the
// per-frame components (world matrices, query results) took and gave back.
//   ./bazelw run //integration/ecs:ecs_example -- --frames=8
#include <chrono>
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "benchmarks/scenario.h"
#include "integration/ecs/ecs_scenario.h"
#include "jobs/runtime.h"

ABSL_FLAG(int, frames, 6, "Frames to run.");
ABSL_FLAG(uint64_t, entities, 20000, "Entities.");
ABSL_FLAG(int, workers, 2, "Runtime workers.");
ABSL_FLAG(bool, heap, false, "Heap variant instead of frame memory.");

namespace sim = framealloc::sim;
namespace jobs = framealloc::jobs;
using framealloc::integration::ecs::EcsSimulation;

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto rt = jobs::Runtime::Create(
      jobs::Config().set_workers_per_node(absl::GetFlag(FLAGS_workers)));
  if (!rt.ok()) {
    std::fprintf(stderr, "runtime: %s\n", rt.status().ToString().c_str());
    return 1;
  }
  sim::FrameEnv env;
  env.variant = absl::GetFlag(FLAGS_heap) ? sim::Variant::kRuntimeHeap
                                          : sim::Variant::kRuntimeArena;
  env.runtime = rt->get();
  EcsSimulation ecs;
  absl::Status s = ecs.Init(
      {.seed = 3, .size = static_cast<size_t>(absl::GetFlag(FLAGS_entities))},
      env);
  if (!s.ok()) {
    std::fprintf(stderr, "Init: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("%zu entities in %zu hierarchy levels, %d workers, %s memory\n",
              ecs.transforms().size(), ecs.order().levels(),
              (*rt)->total_workers(),
              absl::GetFlag(FLAGS_heap) ? "heap" : "frame");
  for (int f = 0; f < absl::GetFlag(FLAGS_frames); ++f) {
    const auto start = std::chrono::steady_clock::now();
    if (s = (*rt)->BeginFrame(); s.ok()) s = ecs.Step(env);
    absl::Status end = (*rt)->EndFrame();
    const double ms = std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - start)
                          .count();
    if (!s.ok() || !end.ok()) {
      std::fprintf(stderr, "frame %d: %s %s\n", f, s.ToString().c_str(),
                   end.ToString().c_str());
      return 1;
    }
    const auto& st = ecs.last_frame();
    const jobs::FrameTiming timing = (*rt)->frame_history().back();
    std::printf(
        "frame %2llu: %zu entities, %zu visible, %zu contacts | world "
        "matrices %.1f KiB; frame memory used %.1f KiB, released at frame end "
        "| %.2f ms\n",
        static_cast<unsigned long long>(st.frame), st.entities, st.visible,
        st.contacts, st.world_bytes / 1024.0, timing.arena_bytes / 1024.0, ms);
  }
  std::printf("state hash %016llx\n",
              static_cast<unsigned long long>(ecs.StateHash()));
  return 0;
}
