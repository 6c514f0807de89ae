// Shared plumbing of the Google Benchmark programs in this repository.
//
// For: benchmark mains that print ratios measured in one run. Two pieces:
// RunWithRobustDefaults() runs every benchmark with defaults suited to a
// shared, noisy machine (five repetitions in random interleaved order,
// medians only; flags on the command line win), and MedianReporter keeps
// the median ns per operation of every benchmark by name. Not for: library
// code (benchmark binaries only).
#ifndef ALLOC_INTERNAL_BENCHMARK_UTIL_H_
#define ALLOC_INTERNAL_BENCHMARK_UTIL_H_

#include <map>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace framealloc {
namespace alloc_internal {

// Console output as usual, plus ns per operation and counters per
// benchmark (the median aggregate with repetitions, the single run
// without). A run's "batch" counter, when set, is the number of operations
// per iteration.
class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const bool median =
          run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type != Run::RT_Iteration && !median) continue;
      const std::string name = run.run_name.str();
      const double seconds = run.GetAdjustedRealTime() /
                             benchmark::GetTimeUnitMultiplier(run.time_unit);
      auto batch = run.counters.find("batch");
      ns_per_op_[name] =
          seconds * 1e9 /
          (batch == run.counters.end() ? 1.0 : batch->second.value);
      for (const auto& [counter_name, counter] : run.counters) {
        counters_[name + ":" + counter_name] = counter.value;
      }
    }
  }
  // 0 when the benchmark did not run.
  double ns(const std::string& name) const {
    auto it = ns_per_op_.find(name);
    return it == ns_per_op_.end() ? 0.0 : it->second;
  }
  double counter(const std::string& name) const {
    auto it = counters_.find(name);
    return it == counters_.end() ? 0.0 : it->second;
  }
  const std::map<std::string, double>& all() const { return ns_per_op_; }

 private:
  std::map<std::string, double> ns_per_op_;
  std::map<std::string, double> counters_;
};

// Initializes Google Benchmark with the robust defaults (before the user's
// flags, so those win), runs every selected benchmark into `reporter`.
// Returns false on unrecognized flags (already reported).
inline bool RunWithRobustDefaults(std::vector<char*> args,
                                  const char* min_time_flag,
                                  MedianReporter* reporter) {
  char repetitions[] = "--benchmark_repetitions=5";
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  char aggregates[] = "--benchmark_report_aggregates_only=true";
  std::string min_time = min_time_flag;
  args.insert(args.begin() + 1,
              {repetitions, interleave, aggregates, min_time.data()});
  int argc = static_cast<int>(args.size());
  benchmark::Initialize(&argc, args.data());
  if (benchmark::ReportUnrecognizedArguments(argc, args.data())) return false;
  benchmark::RunSpecifiedBenchmarks(reporter);
  return true;
}
inline bool RunWithRobustDefaults(int argc, char** argv,
                                  const char* min_time_flag,
                                  MedianReporter* reporter) {
  return RunWithRobustDefaults(std::vector<char*>(argv, argv + argc),
                               min_time_flag, reporter);
}

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_BENCHMARK_UTIL_H_
