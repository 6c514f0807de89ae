// A pile of spheres settling in a box, stepped on the job runtime with every
// per-frame buffer on the workers' frame arenas (or serially on one arena):
//
//   ./bazelw run //integration/physics:physics_example
//   ./bazelw run //integration/physics:physics_example -- --workers=0
//   ./bazelw run //integration/physics:physics_example -- --workers=1
//       --synthetic='pack:2 [numa] core:1 pu:1'   (two logical nodes)
//
// Every --report_every frames it prints the total energy (kinetic, linear and
// rotational, plus potential above the floor), the kinetic share, the
// deepest penetration, the frame's manifolds and the frame memory the frame
// used; at the end, how far the kinetic energy fell from its peak (the
// pile first falls into its hollows, then comes to rest).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "integration/physics/physics_world.h"
#include "jobs/config.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

ABSL_FLAG(int64_t, bodies, 4096, "Number of spheres.");
ABSL_FLAG(int, frames, 300, "Frames to simulate (60 per second).");
ABSL_FLAG(int, report_every, 30, "Print a line every this many frames.");
ABSL_FLAG(int, workers, 2,
          "Workers per node of the job runtime; 0 steps serially on one "
          "frame arena.");
ABSL_FLAG(std::string, synthetic, "",
          "An hwloc synthetic topology for the runtime (e.g. 'pack:2 [numa] "
          "core:1 pu:1'); empty: this machine.");
ABSL_FLAG(float, restitution, 0.1f, "Bounce, 0 to 1.");

namespace framealloc {
namespace integration {
namespace {

int Run() {
  PhysicsConfig config;
  config.bodies = static_cast<size_t>(absl::GetFlag(FLAGS_bodies));
  config.restitution = absl::GetFlag(FLAGS_restitution);
  auto created = PhysicsWorld::Create(config);
  if (!created.ok()) {
    std::fprintf(stderr, "%s\n", created.status().ToString().c_str());
    return 1;
  }
  PhysicsWorld& world = **created;
  const int frames = absl::GetFlag(FLAGS_frames);
  const int every = std::max(1, absl::GetFlag(FLAGS_report_every));
  const int workers = absl::GetFlag(FLAGS_workers);

  std::unique_ptr<numa::Topology> topology;
  std::unique_ptr<jobs::Runtime> runtime;
  if (workers > 0) {
    jobs::Config rc;
    rc.set_workers_per_node(workers);
    if (const std::string s = absl::GetFlag(FLAGS_synthetic); !s.empty()) {
      auto t = numa::Topology::FromSynthetic(s);
      if (!t.ok()) {
        std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
        return 1;
      }
      topology = *std::move(t);
      rc.set_topology(topology.get());
    }
    auto rt = jobs::Runtime::Create(rc);
    if (!rt.ok()) {
      std::fprintf(stderr, "%s\n", rt.status().ToString().c_str());
      return 1;
    }
    runtime = *std::move(rt);
  }
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);

  std::printf("%zu spheres in a %.1f x %.1f box, %d slabs; %s\n", world.size(),
              world.width(), world.depth(), world.slabs(),
              runtime == nullptr
                  ? "serial, one frame arena"
                  : (std::to_string(runtime->num_nodes()) + " node(s) x " +
                     std::to_string(workers) + " worker(s), worker arenas")
                        .c_str());
  auto kinetic = [&world] {
    double k = 0;
    for (uint32_t i = 0; i < world.size(); ++i) {
      const Vec3 v = world.velocity(i);
      k += 0.5 *
           (4.0 / 3.0 * 3.14159265358979 * world.radius(i) * world.radius(i) *
            world.radius(i)) *
           Dot(v, v);
    }
    return k;
  };
  double kinetic_peak = kinetic();
  RuntimeFrameStats steps;  // Summed over the frames.
  const auto start = std::chrono::steady_clock::now();
  for (int f = 1; f <= frames; ++f) {
    absl::Status status;
    uint64_t frame_bytes = 0;
    if (runtime != nullptr) {
      status = runtime->BeginFrame();
      if (status.ok())
        status = world.Step(StepOptions::RuntimeArena(runtime.get()));
      absl::Status ended = runtime->EndFrame();
      if (status.ok()) status = ended;
      frame_bytes = runtime->frame_history().back().arena_bytes;
    } else {
      status = world.Step(StepOptions::Arena(&arena));
      frame_bytes = arena.stats().bytes_used;
      arena.Reset();
    }
    if (!status.ok()) {
      std::fprintf(stderr, "frame %d: %s\n", f, status.ToString().c_str());
      return 1;
    }
    steps.steps += world.last_runtime_frame().steps;
    steps.moved_steps += world.last_runtime_frame().moved_steps;
    steps.wait_seconds += world.last_runtime_frame().wait_seconds;
    kinetic_peak = std::max(kinetic_peak, kinetic());
    if (f % every == 0 || f == frames) {
      const FrameStats& s = world.last_frame();
      std::printf(
          "frame %4d: energy %10.2f J (kinetic %8.3f J), max penetration "
          "%.4f m, %6zu manifolds, frame memory %zu bytes\n",
          f, world.Energy(), kinetic(), world.max_penetration(), s.manifolds,
          static_cast<size_t>(frame_bytes));
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::printf(
      "settled: kinetic energy peak %.3f J -> %.3f J after %d frames (%.1f "
      "ms per frame); state hash %016llx\n",
      kinetic_peak, kinetic(), frames, 1e3 * seconds / frames,
      static_cast<unsigned long long>(world.StateHash()));
  if (runtime != nullptr) {
    std::printf(
        "slab steps: %llu, %.1f%% run by a job other than the slab's owner; "
        "slab jobs waited %.3f ms per frame for a neighbour's step\n",
        static_cast<unsigned long long>(steps.steps),
        steps.steps == 0 ? 0.0 : 100.0 * steps.moved_steps / steps.steps,
        1e3 * steps.wait_seconds / frames);
    // How the frames' jobs spread over the workers.
    for (const jobs::NodeStats& node : runtime->stats().nodes) {
      for (const jobs::WorkerStats& ws : node.worker_stats) {
        std::printf("node %d worker %d: %llu jobs, busy %.3f s\n", ws.node,
                    ws.worker, static_cast<unsigned long long>(ws.jobs_run),
                    ws.busy_seconds);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace integration
}  // namespace framealloc

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "A pile of spheres settling; prints energy and frame memory.");
  absl::ParseCommandLine(argc, argv);
  return framealloc::integration::Run();
}
