// What the job runtime's model-checked stress tests share: their seeds, the
// watchdog that turns a hang into a failure naming its seed, and the
// synthetic topologies they run on.
//
// For: //jobs:runtime_model_test and //jobs:parallel_model_test (testonly).
// Not for: the runtime itself.
#ifndef JOBS_INTERNAL_MODEL_HARNESS_H_
#define JOBS_INTERNAL_MODEL_HARNESS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "jobs/config.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace model_harness {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FRAMEALLOC_MODEL_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define FRAMEALLOC_MODEL_SANITIZED 1
#endif
#endif
// Built with ASan or TSan: several times slower, so fewer programs.
#if defined(FRAMEALLOC_MODEL_SANITIZED)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// The environment variable `prefix`_`name` (e.g. RUNTIME_MODEL_SEEDS), null
// if unset.
inline const char* Env(const char* prefix, const char* name) {
  return std::getenv((std::string(prefix) + "_" + name).c_str());
}

// The seeds to run: `prefix`_SEEDS=a,b,c if set, the list run
// `prefix`_REPEAT=n times over if that is set too (a program that hangs
// now and then); otherwise `iterations` (or `prefix`_ITERATIONS) seeds from
// `first` (or `prefix`_FIRST_SEED), 7919 apart.
inline std::vector<uint64_t> Seeds(const char* prefix, int iterations,
                                   uint64_t first) {
  std::vector<uint64_t> seeds;
  if (const char* env = Env(prefix, "SEEDS"); env != nullptr && *env != '\0') {
    for (absl::string_view part : absl::StrSplit(env, ',')) {
      uint64_t seed = 0;
      if (absl::SimpleAtoi(part, &seed)) seeds.push_back(seed);
    }
    int repeat = 1;
    if (const char* times = Env(prefix, "REPEAT")) {
      (void)absl::SimpleAtoi(times, &repeat);
    }
    const size_t listed = seeds.size();
    for (int round = 1; round < repeat; ++round) {
      for (size_t i = 0; i < listed; ++i) seeds.push_back(seeds[i]);
    }
    return seeds;
  }
  if (const char* env = Env(prefix, "ITERATIONS")) {
    (void)absl::SimpleAtoi(env, &iterations);
  }
  if (const char* env = Env(prefix, "FIRST_SEED")) {
    (void)absl::SimpleAtoi(env, &first);
  }
  for (int i = 0; i < iterations; ++i) {
    seeds.push_back(first + static_cast<uint64_t>(i) * 7919);
  }
  return seeds;
}

// A synthetic topology of `nodes` (1 or 2) NUMA nodes of two PUs each,
// made once and kept for the process.
inline const numa::Topology& TopologyOf(int nodes) {
  static const numa::Topology* one =
      numa::Topology::FromSynthetic("pack:1 [numa] core:2 pu:1")->release();
  static const numa::Topology* two =
      numa::Topology::FromSynthetic("pack:2 [numa] core:2 pu:1")->release();
  return nodes == 1 ? *one : *two;
}

// Aborts the process when an iteration runs past its deadline, naming the
// seed: a hang (a lost job, a wait that never returns) fails fast and
// reproducibly instead of timing the whole test out. Configure once, then
// Arm per seed.
class Watchdog {
 public:
  static Watchdog& Get() {
    static Watchdog* watchdog = new Watchdog();
    return *watchdog;
  }
  // `test` names the test in the report, `prefix` its variables; the
  // deadline is `seconds` (or `prefix`_HANG_SECONDS) per iteration.
  void Configure(const char* test, const char* prefix, int seconds) {
    if (const char* env = Env(prefix, "HANG_SECONDS")) {
      (void)absl::SimpleAtoi(env, &seconds);
    }
    test_.store(test, std::memory_order_relaxed);
    prefix_.store(prefix, std::memory_order_relaxed);
    seconds_.store(seconds, std::memory_order_relaxed);
  }
  int seconds() const { return seconds_.load(std::memory_order_relaxed); }
  void Arm(uint64_t seed) {
    seed_.store(seed, std::memory_order_relaxed);
    phase_.store("start", std::memory_order_relaxed);
    deadline_.store(NowNs() + int64_t{seconds()} * 1000000000,
                    std::memory_order_release);
  }
  void Phase(const char* phase) {
    phase_.store(phase, std::memory_order_relaxed);
  }
  void Disarm() { deadline_.store(0, std::memory_order_release); }
  // Called before the abort, to say what was left unfinished.
  void SetDump(void (*dump)(void*), void* context) {
    dump_context_.store(context, std::memory_order_relaxed);
    dump_.store(dump, std::memory_order_release);
  }

 private:
  Watchdog() {
    std::thread([this] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        const int64_t deadline = deadline_.load(std::memory_order_acquire);
        if (deadline != 0 && NowNs() > deadline) {
          const unsigned long long seed = seed_.load();
          std::fprintf(stderr,
                       "%s: seed %llu hung for %d s in phase '%s'; rerun it "
                       "with %s_SEEDS=%llu\n",
                       test_.load(), seed, seconds(), phase_.load(),
                       prefix_.load(), seed);
          if (auto* dump = dump_.load(std::memory_order_acquire)) {
            dump(dump_context_.load(std::memory_order_relaxed));
          }
          std::fflush(stderr);
          std::abort();
        }
      }
    }).detach();
  }
  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  std::atomic<const char*> test_{"model test"};
  std::atomic<const char*> prefix_{"MODEL"};
  std::atomic<int> seconds_{60};
  std::atomic<int64_t> deadline_{0};
  std::atomic<uint64_t> seed_{0};
  std::atomic<const char*> phase_{""};
  std::atomic<void (*)(void*)> dump_{nullptr};
  std::atomic<void*> dump_context_{nullptr};
};

// The loop both model tests run: for each seed, builds its plan
// (build(seed)), creates the runtime the plan asks for (plan.nodes,
// .workers, .stealing, .outside), runs an Iteration(plan, runtime) under the
// watchdog (Run, then after_run(iteration), then DropHandles), destroys the
// runtime and fails the test with the plan, the violations and the
// variable that reruns the seed; it stops after three failing seeds.
// `prefix`_VERBOSE=1 prints each plan. before(seed) runs first (a crash
// handler's note of the seed, say).
template <typename Iteration, typename Build, typename AfterRun,
          typename Before>
void RunPrograms(const char* prefix, const std::vector<uint64_t>& seeds,
                 Build build, AfterRun after_run, Before before) {
  const bool verbose = Env(prefix, "VERBOSE") != nullptr;
  int failures = 0;
  for (const uint64_t seed : seeds) {
    const auto plan = build(seed);
    if (verbose) std::fprintf(stderr, "%s\n", plan.Describe().c_str());
    before(seed);
    Watchdog::Get().Arm(seed);
    std::vector<std::string> violations;
    {
      Config config;
      config.set_topology(&TopologyOf(plan.nodes))
          .set_node_workers(plan.workers)
          .set_stealing(plan.stealing)
          .set_outside_wait(plan.outside);
      auto created = Runtime::Create(config);
      ASSERT_TRUE(created.ok()) << created.status();
      std::unique_ptr<Runtime> rt = *std::move(created);
      {
        Iteration it(plan, rt.get());
        Watchdog::Get().SetDump(&Iteration::Dump, &it);
        it.Run();
        after_run(it);
        violations = it.violations();
        it.DropHandles();
        Watchdog::Get().SetDump(nullptr, nullptr);
      }
      Watchdog::Get().Phase("destroying the runtime");
      rt.reset();
    }
    Watchdog::Get().Disarm();
    if (!violations.empty()) {
      ++failures;
      ADD_FAILURE() << plan.Describe() << "\nrerun it with " << prefix
                    << "_SEEDS=" << seed << "\n  "
                    << absl::StrJoin(violations, "\n  ");
      if (failures >= 3) break;
    }
  }
}

}  // namespace model_harness
}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_INTERNAL_MODEL_HARNESS_H_
