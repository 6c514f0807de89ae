// The renderer on the job runtime, frame by frame: what each frame culled
// and recorded, how much frame memory its slot holds, and the GPU reading
// the previous frame while the next is recorded (two frames in flight).
//   ./bazelw run //integration/renderer:renderer_example -- --frames=8
#include <chrono>
#include <cstdio>
#include <memory>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "benchmarks/scenario.h"
#include "integration/renderer/render_scenario.h"
#include "jobs/runtime.h"

ABSL_FLAG(int, frames, 6, "Frames to render.");
ABSL_FLAG(uint64_t, objects, 20000, "Scene objects.");
ABSL_FLAG(int, workers, 2, "Runtime workers.");
ABSL_FLAG(bool, heap, false, "Heap variant instead of frame memory.");

namespace sim = framealloc::sim;
namespace jobs = framealloc::jobs;
using framealloc::integration::render::RenderSimulation;

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
  RenderSimulation render;
  absl::Status s = render.Init(
      {.seed = 7, .size = static_cast<size_t>(absl::GetFlag(FLAGS_objects))},
      env);
  if (!s.ok()) {
    std::fprintf(stderr, "Init: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("%zu objects, %d workers, %s memory, 2 frames in flight\n",
              render.scene().size(), (*rt)->total_workers(),
              absl::GetFlag(FLAGS_heap) ? "heap" : "frame");
  for (int f = 0; f < absl::GetFlag(FLAGS_frames); ++f) {
    const auto start = std::chrono::steady_clock::now();
    if (s = (*rt)->BeginFrame(); s.ok()) s = render.Step(env);
    absl::Status end = (*rt)->EndFrame();
    const double ms = std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - start)
                          .count();
    if (!s.ok() || !end.ok()) {
      std::fprintf(stderr, "frame %d: %s %s\n", f, s.ToString().c_str(),
                   end.ToString().c_str());
      return 1;
    }
    const auto& st = render.last_frame();
    const jobs::FrameTiming timing = (*rt)->frame_history().back();
    char previous[32] = "empty";
    if (f > 0) std::snprintf(previous, sizeof(previous), "frame %d", f - 1);
    std::printf(
        "frame %2llu: %6zu draws of %zu objects, uniforms %7.1f KiB, "
        "vertices %7.1f KiB | slot %d (frame %d) %7.1f KiB, "
        "slot %d (%s) %7.1f KiB | worker arenas %6.1f KiB | %.2f ms\n",
        static_cast<unsigned long long>(st.recorded.frame), st.recorded.draws,
        st.recorded.objects, st.recorded.uniform_bytes / 1024.0,
        st.recorded.vertex_bytes / 1024.0, f % 2, f, st.slot_bytes[0] / 1024.0,
        1 - f % 2, previous, st.slot_bytes[1] / 1024.0,
        timing.arena_bytes / 1024.0, ms);
    if (st.gpu.has_value()) {
      std::printf(
          "          GPU read frame %llu while frame %llu was "
          "recorded: %zu draws, checksum %016llx\n",
          static_cast<unsigned long long>(st.gpu->frame),
          static_cast<unsigned long long>(st.recorded.frame), st.gpu->draws,
          static_cast<unsigned long long>(st.gpu->digest));
    }
  }
  std::printf("state hash %016llx\n",
              static_cast<unsigned long long>(render.StateHash()));
  return 0;
}
