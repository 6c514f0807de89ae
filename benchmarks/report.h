// The simulation suite's report: the text table with ratios and the
// bandwidth lines, the JSON document, and the SVG plot.
//
// For: //benchmarks:simulation, which prints FormatScenario for every
// scenario, writes ScenariosToJson and RenderSvg to files, and exchanges
// VariantRuns with its mimalloc child as JSON (RunToJson / RunFromJson).
// Not for: measuring (suite.h).
//
// Ratios are "x faster": the slower run's median (or p99) frame time over
// the faster one's, between runs at equal parallelism, so > 1 means the
// first named run is faster.
//
// JSON has no NaN or infinity: every non-finite double is written as the
// string "nan", "inf" or "-inf", and RunFromJson reads those back, so a run
// crosses from a child process unchanged.
//
// Thread safety: plain functions on values. Errors: RunFromJson returns
// InvalidArgument naming the missing or mistyped field.
//
// Example:
//   sim::ScenarioResult r = ...;
//   std::printf("%s", sim::FormatScenario(r).c_str());
//   std::string svg = sim::RenderSvg({r});
#ifndef BENCHMARKS_REPORT_H_
#define BENCHMARKS_REPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "benchmarks/suite.h"
#include "nlohmann/json.hpp"

namespace framealloc::sim {

// Everything measured for one scenario.
struct ScenarioResult {
  std::string name;
  std::string description;
  bool allocation_heavy = false;
  size_t size = 0;  // Element count run (the default resolved).
  int warmup = 0;
  int frames = 0;  // Measured frames per run.
  std::vector<VariantRun> runs;
  // The triad at one thread and at the runtime's worker count, on arrays
  // sized from the scenario (see simulation.cc).
  std::optional<TriadResult> triad_one;
  std::optional<TriadResult> triad_all;
  // The same with the caches evicted before every repetition.
  std::optional<TriadResult> triad_one_cold;
  std::optional<TriadResult> triad_all_cold;
  bool states_equal = true;

  const VariantRun* Find(const std::string& label) const;
};

// A ratio between two runs of one scenario at equal parallelism.
struct Ratio {
  std::string name;    // e.g. "arena vs heap (1 thread)".
  std::string faster;  // The run expected to be faster.
  std::string slower;  // Its baseline.
  double median = 0;   // slower median / faster median.
  double p99 = 0;
};
// The ratios whose runs are both present.
std::vector<Ratio> Ratios(const ScenarioResult& result);

// Why runtime-arena on all workers is as much faster than on one worker per
// node as it is, from mean frame times and the workers' time inside jobs
// (VariantRun::job_seconds). By construction
//   speedup = (workers_all / workers_one) * (busy_all / busy_one)
//             / job_time_growth,
// so a speedup short of the worker ratio is either the workers waiting
// (busy below 100%: serial parts, barriers, imbalance) or the same jobs
// taking longer when they run side by side (growth above 1: shared caches,
// memory bandwidth, or SMT siblings).
struct ScalingBreakdown {
  double speedup = 0;  // Mean frame time, one worker / all workers.
  int workers_all = 0;
  int workers_one = 0;
  double busy_all = 0;  // Job seconds / (measured seconds * workers).
  double busy_one = 0;
  // Job seconds per measured frame, all workers / one worker.
  double job_time_growth = 0;
};
// When "runtime-arena" and "runtime-arena-1w" both ran with job time
// recorded.
std::optional<ScalingBreakdown> Scaling(const ScenarioResult& result);

// The streaming pass of a run as a share of a triad (medians of the
// per-frame rates and of the triad repetitions).
struct PassBandwidth {
  std::string run;
  bool cold_triad = false;  // Against the cache-evicted triad.
  double median_gbps = 0;
  double best_gbps = 0;
  double triad_median_gbps = 0;
  double triad_best_gbps = 0;
  double percent_of_triad = 0;  // 100 * median / triad median.
  int threads = 1;
};
// For the runs "arena" (against triad_one, then triad_one_cold) and
// "runtime-arena" (against triad_all, then triad_all_cold) when they have a
// pass and the triad was measured.
std::vector<PassBandwidth> Bandwidth(const ScenarioResult& result);

nlohmann::json RunToJson(const VariantRun& run);
absl::StatusOr<VariantRun> RunFromJson(const nlohmann::json& json);
nlohmann::json ScenarioToJson(const ScenarioResult& result);

// The table, the ratios, the bandwidth lines and the state check line.
std::string FormatScenario(const ScenarioResult& result);

// A self-contained SVG: per scenario, frame time per frame and memory per
// frame (heap + arena bytes) for every run. A non-finite value is left out
// of its line and of the scale; every point lies inside its panel (values
// below 0 on the panel's bottom edge).
std::string RenderSvg(const std::vector<ScenarioResult>& results);

}  // namespace framealloc::sim

#endif  // BENCHMARKS_REPORT_H_
