// A frame loop on the job runtime: the shape of a game or simulation tick.
//
// For: a runnable tour of jobs::Runtime (`bazel run //jobs:frame_loop_example
// -- --frames=60 --trace=/tmp/frames.json`): every frame splits node-homed
// particle data over the nodes with ParallelFor, builds per-worker scratch
// lists on the workers' frame arenas, merges them in a dependent job, and
// ends the frame (which resets every arena). It prints the runtime's
// statistics and writes a Chrome trace to open in ui.perfetto.dev. With
// --outside_wait=help the main thread runs jobs while it waits (in EndFrame,
// ParallelFor and the merge's Wait), in a slot of its own.
// Not for: measuring (see //jobs:jobs_benchmark and //benchmarks).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "jobs/parallel.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

ABSL_FLAG(int, frames, 60, "frames to run");
ABSL_FLAG(size_t, particles, 200000, "particles");
ABSL_FLAG(std::string, synthetic, "",
          "hwloc synthetic topology, e.g. 'pack:2 [numa] core:2 pu:1' "
          "(default: this machine)");
ABSL_FLAG(std::string, trace, "",
          "write a Chrome trace of the last frames here");
ABSL_FLAG(std::string, outside_wait, "sleep",
          "how the main thread waits for jobs: 'sleep', or 'help' (it runs "
          "the node's jobs meanwhile, in a slot of its own)");

namespace fa = framealloc;

// Resident memory of this process in KiB (Linux /proc/self/status), or -1.
long ResidentKiB() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      long kib = -1;
      status >> kib;
      return kib;
    }
    status.ignore(1 << 10, '\n');
  }
  return -1;
}
namespace jobs = framealloc::jobs;

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::unique_ptr<fa::numa::Topology> topology;
  jobs::Config config;
  if (!absl::GetFlag(FLAGS_synthetic).empty()) {
    auto t = fa::numa::Topology::FromSynthetic(absl::GetFlag(FLAGS_synthetic));
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      return 2;
    }
    topology = *std::move(t);
    config.set_topology(topology.get());
  }
  config.set_trace(!absl::GetFlag(FLAGS_trace).empty());
  const std::string wait = absl::GetFlag(FLAGS_outside_wait);
  if (wait != "sleep" && wait != "help") {
    std::fprintf(stderr, "--outside_wait must be sleep or help, got '%s'\n",
                 wait.c_str());
    return 2;
  }
  config.set_outside_wait(wait == "help" ? jobs::OutsideWaitPolicy::kHelp
                                         : jobs::OutsideWaitPolicy::kSleep);
  auto runtime = jobs::Runtime::Create(config);
  if (!runtime.ok()) {
    std::fprintf(stderr, "%s\n", runtime.status().ToString().c_str());
    return 2;
  }
  jobs::Runtime& rt = **runtime;

  const size_t n = absl::GetFlag(FLAGS_particles);
  jobs::NodePartition part = rt.Partition(n);
  auto x = jobs::NodeArray<float>::Create(rt, part);
  auto v = jobs::NodeArray<float>::Create(rt, part);
  if (!x.ok() || !v.ok()) {
    std::fprintf(stderr, "cannot allocate the particles\n");
    return 2;
  }
  for (size_t i = 0; i < n; ++i) (*v)[i] = std::sin(static_cast<float>(i));

  double checksum = 0;
  const int frames = absl::GetFlag(FLAGS_frames);
  long rss_after_warmup = -1;
  for (int frame = 0; frame < frames; ++frame) {
    if (frame == std::min(1000, frames / 2)) rss_after_warmup = ResidentKiB();
    if (!rt.BeginFrame().ok()) return 1;
    // Integrate on the nodes that hold the data.
    absl::Status step =
        rt.ParallelFor(part, 4096, [&](jobs::JobContext&, size_t b, size_t e) {
          auto xs = x->span(b, e);
          auto vs = v->span(b, e);
          for (size_t i = 0; i < xs.size(); ++i) xs[i] += 0.01f * vs[i];
        });
    if (!step.ok()) return 1;
    // Per-node summaries on frame memory, merged by a dependent job.
    std::vector<jobs::JobHandle<double*>> partial;
    for (const jobs::NodeRange& r : part.ranges()) {
      partial.push_back(rt.Submit(
          [&, r](jobs::JobContext& ctx) {
            double* sum = ctx.arena().Create<double>(0.0);  // Until EndFrame.
            for (size_t i = r.begin; i < r.end; ++i) *sum += (*x)[i];
            return sum;
          },
          jobs::SubmitOptions().on_node(r.node).named("summarize")));
    }
    jobs::SubmitOptions merge_options;
    merge_options.named("merge");
    for (auto& p : partial) merge_options.after(p);
    auto merged = rt.Submit(
        [partial] {
          double total = 0;
          for (const auto& p : partial) total += *p.value();
          return total;
        },
        std::move(merge_options));
    if (!merged.Wait().ok()) return 1;
    checksum = merged.value();
    if (!rt.EndFrame().ok()) return 1;
  }

  std::printf("%s", rt.stats().ToText().c_str());
  const auto history = rt.frame_history();
  if (!history.empty()) {
    const auto& last = history.back();
    std::printf("last frame: %.3f ms, %llu jobs, %llu bytes of frame memory\n",
                last.seconds * 1e3, static_cast<unsigned long long>(last.jobs),
                static_cast<unsigned long long>(last.arena_bytes));
  }
  std::printf("checksum %.6g\n", checksum);
  std::printf("resident memory: %ld KiB after warm-up, %ld KiB at the end\n",
              rss_after_warmup, ResidentKiB());
  if (!absl::GetFlag(FLAGS_trace).empty()) {
    absl::Status s = rt.WriteChromeTrace(absl::GetFlag(FLAGS_trace));
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("trace written to %s (open it in ui.perfetto.dev)\n",
                absl::GetFlag(FLAGS_trace).c_str());
  }
  return 0;
}
