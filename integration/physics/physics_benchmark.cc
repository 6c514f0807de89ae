// The physics scenario's four variants in one run, for the targets:
//
//   ./bazelw run -c opt //integration/physics:physics_benchmark
//   ./bazelw run -c opt //integration/physics:physics_benchmark_mimalloc
//
// (the second is the same program linked with mimalloc, which replaces
// malloc and new for its whole process; physics_benchmark_suite runs both).
// Each round creates every variant's world from the same seed and steps it
// for --warmup + --frames frames, in rotating order, so every variant
// simulates the same frames; frame times are pooled over the rounds.
// Runtime variants run on runtimes of 1 and of 2 workers (this machine's
// topology) and time BeginFrame + Step + EndFrame, as the suite's driver
// does; the serial arena variant times Step + the arena's Reset. Prints
// median and mean frame times, median CPU time per frame (the thread's for
// serial variants, the process's for runtime ones: less sensitive to other
// load on the machine than wall time), heap allocations (operator new calls)
// and frame-memory bytes of one settled frame, and the ratios; exits with 2 if
// any variant ends in a different state than the serial heap variant.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "benchmarks/heap_counter.h"
#include "integration/physics/physics_world.h"
#include "jobs/config.h"
#include "jobs/runtime.h"

ABSL_FLAG(int64_t, bodies, 8192, "Number of bodies.");
ABSL_FLAG(int, frames, 60, "Measured frames per variant and round.");
ABSL_FLAG(int, warmup, 30,
          "Unmeasured frames before measuring (the pile falls into its "
          "hollows in about 30 frames).");
ABSL_FLAG(int, rounds, 3, "Rounds (every variant once per round).");
ABSL_FLAG(int, iterations, 8, "Solver iterations per frame.");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the initial state.");
ABSL_FLAG(std::string, label, "glibc", "Name of the malloc in the report.");
ABSL_FLAG(std::string, only, "",
          "Run only the variant of this name (e.g. 'heap'), for profiling.");

namespace framealloc {
namespace integration {
namespace {

using Clock = std::chrono::steady_clock;

struct Variant {
  std::string name;
  Memory memory = Memory::kHeap;
  int workers = 0;  // 0: serial.
  std::vector<double> frame_ms;
  std::vector<double> cpu_ms;  // CPU time: the thread's (serial) or the
                               // process's (runtime), per frame.
  double allocations = 0;      // Heap allocations in one counted frame.
  double arena_bytes = 0;      // Frame memory in one counted frame.
  uint64_t hash = 0;
  FrameStats stats;
};

double CpuMs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return 1e3 * static_cast<double>(ts.tv_sec) +
         1e-6 * static_cast<double>(ts.tv_nsec);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

absl::Status RunVariant(Variant& v, const PhysicsConfig& config, int warmup,
                        int frames, jobs::Runtime* runtime) {
  auto world = PhysicsWorld::Create(config);
  if (!world.ok()) return world.status();
  PhysicsWorld& w = **world;
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  StepOptions options;
  options.memory = v.memory;
  options.runtime = runtime;
  if (runtime == nullptr && v.memory == Memory::kArena) options.arena = &arena;
  auto step = [&]() -> absl::Status {
    if (runtime != nullptr) {
      absl::Status s = runtime->BeginFrame();
      if (!s.ok()) return s;
      s = w.Step(options);
      absl::Status e = runtime->EndFrame();
      return s.ok() ? e : s;
    }
    absl::Status s = w.Step(options);
    arena.Reset();
    cache.EndEpoch();
    return s;
  };
  for (int f = 0; f < warmup; ++f) {
    if (absl::Status s = step(); !s.ok()) return s;
  }
  const clockid_t cpu_clock =
      runtime == nullptr ? CLOCK_THREAD_CPUTIME_ID : CLOCK_PROCESS_CPUTIME_ID;
  for (int f = 0; f < frames; ++f) {
    const double cpu_start = CpuMs(cpu_clock);
    const Clock::time_point start = Clock::now();
    if (absl::Status s = step(); !s.ok()) return s;
    v.frame_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - start)
            .count());
    v.cpu_ms.push_back(CpuMs(cpu_clock) - cpu_start);
  }
  // One more frame, counted and not timed: heap allocations and frame
  // memory of a settled frame.
  const sim::HeapCounts heap_before = sim::ReadHeapCounts();
  if (runtime == nullptr) {
    absl::Status s = w.Step(options);
    v.arena_bytes = static_cast<double>(arena.stats().bytes_used);
    arena.Reset();
    cache.EndEpoch();
    v.allocations =
        static_cast<double>((sim::ReadHeapCounts() - heap_before).allocations);
    if (!s.ok()) return s;
  } else {
    absl::Status s = step();
    v.allocations =
        static_cast<double>((sim::ReadHeapCounts() - heap_before).allocations);
    if (!s.ok()) return s;
    v.arena_bytes =
        static_cast<double>(runtime->frame_history().back().arena_bytes);
  }
  v.hash = w.StateHash();
  v.stats = w.last_frame();
  return absl::OkStatus();
}

int Main() {
  PhysicsConfig config;
  config.bodies = static_cast<size_t>(absl::GetFlag(FLAGS_bodies));
  config.seed = absl::GetFlag(FLAGS_seed);
  config.iterations = absl::GetFlag(FLAGS_iterations);
  const int frames = absl::GetFlag(FLAGS_frames);
  const int warmup = absl::GetFlag(FLAGS_warmup);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  if (frames < 1 || warmup < 0 || rounds < 1) {
    std::fprintf(stderr, "--frames and --rounds must be >= 1, --warmup >= 0\n");
    return 1;
  }
  if (absl::Status s = config.Validate(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<jobs::Runtime>> runtimes;
  for (int workers : {1, 2}) {
    auto rt =
        jobs::Runtime::Create(jobs::Config().set_workers_per_node(workers));
    if (!rt.ok()) {
      std::fprintf(stderr, "runtime: %s\n", rt.status().ToString().c_str());
      return 1;
    }
    runtimes.push_back(*std::move(rt));
  }
  std::vector<Variant> variants;
  auto add = [&](const char* name, Memory memory, int workers) {
    Variant v;
    v.name = name;
    v.memory = memory;
    v.workers = workers;
    variants.push_back(v);
  };
  add("heap", Memory::kHeap, 0);
  add("arena", Memory::kArena, 0);
  add("runtime-heap 1w", Memory::kHeap, 1);
  add("runtime-arena 1w", Memory::kArena, 1);
  add("runtime-heap 2w", Memory::kHeap, 2);
  add("runtime-arena 2w", Memory::kArena, 2);
  for (int round = 0; round < rounds; ++round) {
    for (size_t k = 0; k < variants.size(); ++k) {
      Variant& v = variants[(k + round) % variants.size()];
      const std::string only = absl::GetFlag(FLAGS_only);
      if (!only.empty() && v.name != only) continue;
      jobs::Runtime* rt =
          v.workers == 0 ? nullptr : runtimes[v.workers - 1].get();
      absl::Status s = RunVariant(v, config, warmup, frames, rt);
      if (!s.ok()) {
        std::fprintf(stderr, "%s: %s\n", v.name.c_str(), s.ToString().c_str());
        return 1;
      }
    }
  }
  if (const std::string only = absl::GetFlag(FLAGS_only); !only.empty()) {
    for (const Variant& v : variants) {
      if (v.name != only) continue;
      std::printf("%s: median %.2f ms, CPU %.2f ms per frame (%zu manifolds)\n",
                  v.name.c_str(), Median(v.frame_ms), Median(v.cpu_ms),
                  v.stats.manifolds);
      return 0;
    }
    std::fprintf(stderr, "no variant named '%s'\n", only.c_str());
    return 1;
  }
  const FrameStats& st = variants[0].stats;
  std::printf(
      "physics: %zu bodies, %d slabs, %d iterations; last frame: %zu "
      "candidate pairs, %zu manifolds (%zu with walls), %zu contact points\n",
      config.bodies, (*PhysicsWorld::Create(config))->slabs(),
      config.iterations, st.candidate_pairs, st.manifolds, st.wall_manifolds,
      st.contact_points);
  std::printf("malloc: %s; %d rounds x %d frames (after %d warm-up)\n\n",
              absl::GetFlag(FLAGS_label).c_str(), rounds, frames, warmup);
  std::printf(
      "| variant | median ms | mean ms | median CPU ms | heap allocs/frame "
      "| frame-memory bytes/frame |\n|---|---:|---:|---:|---:|---:|\n");
  for (const Variant& v : variants) {
    std::printf("| %s | %.2f | %.2f | %.2f | %.0f | %.0f |\n", v.name.c_str(),
                Median(v.frame_ms), Mean(v.frame_ms), Median(v.cpu_ms),
                v.allocations, v.arena_bytes);
  }
  auto med = [&](size_t i) { return Median(variants[i].frame_ms); };
  std::printf("\nheap / arena (serial):              %.2fx\n", med(0) / med(1));
  std::printf("runtime-heap / runtime-arena, 1w:   %.2fx\n", med(2) / med(3));
  std::printf("runtime-heap / runtime-arena, 2w:   %.2fx\n", med(4) / med(5));
  std::printf("scaling 1w -> 2w, runtime-arena:    %.2fx\n", med(3) / med(5));
  std::printf("scaling 1w -> 2w, runtime-heap:     %.2fx\n", med(2) / med(4));
  std::printf("runtime-arena 1w / serial arena:    %.2fx\n", med(3) / med(1));
  auto cpu = [&](size_t i) { return Median(variants[i].cpu_ms); };
  std::printf("heap / arena (serial), CPU time:    %.2fx\n", cpu(0) / cpu(1));
  bool same = true;
  for (const Variant& v : variants) same = same && v.hash == variants[0].hash;
  std::printf("\nstate after every variant: %s (hash %016llx)\n",
              same ? "identical" : "DIFFERENT",
              static_cast<unsigned long long>(variants[0].hash));
  return same ? 0 : 2;
}

}  // namespace
}  // namespace integration
}  // namespace framealloc

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs the physics scenario's variants and prints frame times, "
      "allocations and ratios.");
  absl::ParseCommandLine(argc, argv);
  return framealloc::integration::Main();
}
