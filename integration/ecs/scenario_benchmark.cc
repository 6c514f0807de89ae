// The scenario frame-loop benchmark (see scenario_benchmark.h).
#include "integration/ecs/scenario_benchmark.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "jobs/runtime.h"

ABSL_FLAG(uint64_t, size, 0, "Scenario size (0: the scenario's default).");
ABSL_FLAG(int, frames, 30, "Measured frames per configuration per round.");
ABSL_FLAG(int, warmup, 5, "Unmeasured frames per configuration first.");
ABSL_FLAG(int, rounds, 5, "Rounds; configurations alternate within each.");
ABSL_FLAG(uint64_t, seed, 42, "Scenario seed.");
ABSL_FLAG(std::string, workers, "1,2", "Runtime worker counts to measure.");
ABSL_FLAG(std::string, label, "glibc malloc", "What this binary links.");

namespace framealloc::integration {
namespace {

struct Config {
  sim::Variant variant;
  int workers = 0;  // 0: no runtime.
  std::unique_ptr<sim::Scenario> scenario;
  jobs::Runtime* runtime = nullptr;
  std::vector<double> ms;  // Measured frames.
  std::string name() const {
    std::string n(sim::VariantName(variant));
    if (workers > 0) n += " x" + std::to_string(workers);
    return n;
  }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty()
             ? 0
             : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

}  // namespace

int RunScenarioBenchmark(const sim::ScenarioInfo& info, int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::vector<int> worker_counts;
  for (absl::string_view w :
       absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipEmpty())) {
    int n = 0;
    if (!absl::SimpleAtoi(w, &n) || n < 1) {
      std::fprintf(stderr, "--workers: bad worker count '%s'\n",
                   std::string(w).c_str());
      return 1;
    }
    worker_counts.push_back(n);
  }
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache,
                   FrameArenaOptions().set_retain_bytes(size_t{64} << 20));
  std::vector<std::unique_ptr<jobs::Runtime>> runtimes;
  for (int w : worker_counts) {
    auto rt = jobs::Runtime::Create(jobs::Config().set_workers_per_node(w));
    if (!rt.ok()) {
      std::fprintf(stderr, "runtime with %d workers: %s\n", w,
                   rt.status().ToString().c_str());
      return 1;
    }
    runtimes.push_back(*std::move(rt));
  }
  std::vector<Config> configs;
  configs.push_back({sim::Variant::kHeap, 0, nullptr, nullptr, {}});
  configs.push_back({sim::Variant::kArena, 0, nullptr, nullptr, {}});
  for (size_t i = 0; i < worker_counts.size(); ++i) {
    for (sim::Variant v :
         {sim::Variant::kRuntimeHeap, sim::Variant::kRuntimeArena}) {
      configs.push_back({v, worker_counts[i], nullptr, runtimes[i].get(), {}});
    }
  }
  const sim::ScenarioConfig sc{absl::GetFlag(FLAGS_seed),
                               static_cast<size_t>(absl::GetFlag(FLAGS_size))};
  auto env_of = [&arena](const Config& c) {
    sim::FrameEnv env;
    env.variant = c.variant;
    env.runtime = c.runtime;
    env.arena = c.variant == sim::Variant::kArena ? &arena : nullptr;
    return env;
  };
  for (Config& c : configs) {
    c.scenario = info.create();
    absl::Status s = c.scenario->Init(sc, env_of(c));
    if (!s.ok()) {
      std::fprintf(stderr, "%s: Init: %s\n", c.name().c_str(),
                   s.ToString().c_str());
      return 1;
    }
  }
  auto step = [&](Config& c) -> double {
    const sim::FrameEnv env = env_of(c);
    const auto start = std::chrono::steady_clock::now();
    absl::Status s;
    if (c.runtime != nullptr) s = c.runtime->BeginFrame();
    if (s.ok()) s = c.scenario->Step(env);
    if (c.runtime != nullptr) {
      absl::Status e = c.runtime->EndFrame();
      if (s.ok()) s = e;
    }
    if (env.arena != nullptr) env.arena->Reset();
    const auto end = std::chrono::steady_clock::now();
    if (!s.ok()) {
      std::fprintf(stderr, "%s: Step: %s\n", c.name().c_str(),
                   s.ToString().c_str());
      std::exit(1);
    }
    return std::chrono::duration<double, std::milli>(end - start).count();
  };
  const int frames = absl::GetFlag(FLAGS_frames);
  const int warmup = absl::GetFlag(FLAGS_warmup);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  for (Config& c : configs) {
    for (int f = 0; f < warmup; ++f) step(c);
  }
  for (int r = 0; r < rounds; ++r) {
    for (Config& c : configs) {
      for (int f = 0; f < frames; ++f) c.ms.push_back(step(c));
    }
  }
  std::printf("scenario %s (%s), size %zu, %d rounds x %d frames, %s\n",
              info.name.c_str(),
              info.allocation_heavy ? "allocation-heavy" : "compute-bound",
              sc.size == 0 ? info.default_size : sc.size, rounds, frames,
              absl::GetFlag(FLAGS_label).c_str());
  std::printf("%-20s %10s %10s %10s   %s\n", "variant", "median ms", "p90 ms",
              "mean ms", "ratio");
  const double heap = Median(configs[0].ms);
  bool same = true;
  const uint64_t hash = configs[0].scenario->StateHash();
  for (const Config& c : configs) {
    double mean = 0;
    for (double m : c.ms) mean += m;
    mean /= std::max<size_t>(1, c.ms.size());
    const double med = Median(c.ms);
    // Ratios: against the heap at the same parallelism, and (runtime
    // variants) against the same variant on the first worker count.
    std::string ratio;
    if (!sim::UsesArena(c.variant)) {
      ratio = c.workers == 0 ? "baseline" : "";
    }
    const Config* heap_peer = nullptr;
    const Config* one_worker = nullptr;
    for (const Config& o : configs) {
      if (o.workers == c.workers && !sim::UsesArena(o.variant)) heap_peer = &o;
      if (o.variant == c.variant && c.workers > 0 &&
          o.workers == worker_counts[0]) {
        one_worker = &o;
      }
    }
    char buf[160];
    if (sim::UsesArena(c.variant) && heap_peer != nullptr) {
      std::snprintf(buf, sizeof(buf), "%.2fx faster than %s",
                    Median(heap_peer->ms) / med, heap_peer->name().c_str());
      ratio = buf;
    }
    if (one_worker != nullptr && one_worker != &c) {
      std::snprintf(buf, sizeof(buf), "%s%.2fx of %s",
                    ratio.empty() ? "" : "; ", Median(one_worker->ms) / med,
                    one_worker->name().c_str());
      ratio += buf;
    }
    std::printf("%-20s %10.3f %10.3f %10.3f   %s\n", c.name().c_str(), med,
                Percentile(c.ms, 0.9), mean, ratio.c_str());
    if (c.scenario->StateHash() != hash) {
      same = false;
      std::printf("  state hash %016llx differs from heap's %016llx\n",
                  static_cast<unsigned long long>(c.scenario->StateHash()),
                  static_cast<unsigned long long>(hash));
    }
  }
  std::printf("heap median %.3f ms; state hashes %s (%016llx)\n", heap,
              same ? "identical" : "DIFFER",
              static_cast<unsigned long long>(hash));
  return same ? 0 : 1;
}

}  // namespace framealloc::integration
