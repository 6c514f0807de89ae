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
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace model_harness {

// The environment variable `prefix`_`name` (e.g. RUNTIME_MODEL_SEEDS), null
// if unset.
inline const char* Env(const char* prefix, const char* name) {
  return std::getenv((std::string(prefix) + "_" + name).c_str());
}

// The seeds to run: `prefix`_SEEDS=a,b,c if set; otherwise `iterations`
// (or `prefix`_ITERATIONS) seeds from `first` (or `prefix`_FIRST_SEED),
// 7919 apart.
inline std::vector<uint64_t> Seeds(const char* prefix, int iterations,
                                   uint64_t first) {
  std::vector<uint64_t> seeds;
  if (const char* env = Env(prefix, "SEEDS"); env != nullptr && *env != '\0') {
    for (absl::string_view part : absl::StrSplit(env, ',')) {
      uint64_t seed = 0;
      if (absl::SimpleAtoi(part, &seed)) seeds.push_back(seed);
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

}  // namespace model_harness
}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_INTERNAL_MODEL_HARNESS_H_
