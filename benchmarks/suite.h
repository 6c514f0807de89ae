// The simulation suite's engine: runs one scenario in one variant for a
// number of frames and records every frame; measures the STREAM triad at a
// given thread count; summarizes.
//
// For: //benchmarks:simulation (the driver) and the suite's tests, which run
// every registered scenario through exactly this code. Not for: printing
// (report.h) or choosing what to run (simulation.cc).
//
// A variant run creates the scenario, builds its environment (a FrameArena
// on a ChunkCache for kArena; a jobs::Runtime on all workers, or on one
// worker per node, for the runtime variants), runs `warmup` unmeasured
// frames, then measured frames, each timed from before Step to after the
// frame's end (FrameArena::Reset, or Runtime::EndFrame), and counts per
// frame: heap allocations and bytes (operator new, heap_counter.h), and
// arena allocations and bytes (kArena: the arena's statistics; kRuntimeArena:
// the runtime's per-frame figures), and the process's page faults.
//
// Thread safety: call from one thread. Errors: InvalidArgument for bad
// options; what the scenario or the runtime returns.
//
// Example:
//   sim::RunOptions o;
//   o.frames = 30;
//   absl::StatusOr<sim::VariantRun> run =
//       sim::RunVariant(sim::ParticlesScenario(), sim::RunKind::kArena, o);
//   double ms = sim::Median(run->FrameMs());
#ifndef BENCHMARKS_SUITE_H_
#define BENCHMARKS_SUITE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "benchmarks/scenario.h"
#include "benchmarks/streaming_pass.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc::sim {

// What runs: a scenario variant, plus the runtime-arena variant on one
// worker per node (the baseline of the scaling ratio).
enum class RunKind {
  kHeap,
  kArena,
  kRuntimeHeap,
  kRuntimeArena,
  kRuntimeArenaOneWorker,
};
Variant VariantOf(RunKind kind);
// "heap", "arena", "runtime-heap", "runtime-arena", "runtime-arena-1w".
std::string RunKindName(RunKind kind);
// The inverse of RunKindName; InvalidArgument naming the text otherwise.
absl::StatusOr<RunKind> ParseRunKind(absl::string_view name);

struct RunOptions {
  ScenarioConfig config;
  int warmup = 3;
  // Measured frames; 0: as many as fit in budget_seconds (at least
  // min_frames, at most max_frames).
  int frames = 0;
  double budget_seconds = 1.5;
  int min_frames = 5;
  int max_frames = 1000;
  // Runtime variants: the topology (null: this machine) and the total
  // number of workers (0: one per processing unit). Split over the nodes
  // as evenly as possible; at least one per node.
  const numa::Topology* topology = nullptr;
  int workers = 0;
  // Called after every frame (warm-up included) with (done, total); total
  // is 0 while the frame count is open (budget mode).
  std::function<void(int, int)> progress;
  // Runtime variants: if not empty, the measured frames' jobs are recorded
  // (Runtime::StartTrace) and written here as a Chrome trace (each worker
  // keeps its last Config::trace_events_per_worker jobs).
  std::string trace_path;
};

// One frame's figures.
struct FrameRecord {
  double ms = 0;
  uint64_t heap_allocations = 0;
  uint64_t heap_bytes = 0;
  int64_t arena_allocations = -1;  // -1: not reported.
  uint64_t arena_bytes = 0;
  double pass_seconds = 0;  // The scenario's StreamingPass, if any.
  // Page faults of the whole process during the frame (minor and major,
  // getrusage): memory the frame touched for the first time since it was
  // mapped, or since malloc gave it back to the system.
  uint64_t page_faults = 0;
};

struct VariantRun {
  std::string label;      // RunKindName; the driver prefixes the allocator of
                          // the mimalloc binary's runs ("mimalloc heap").
  std::string variant;    // VariantName of the scenario variant.
  std::string allocator;  // "glibc" or "mimalloc": what new/malloc is.
  int threads = 1;        // Threads that ran the frames.
  int warmup = 0;
  std::vector<FrameRecord> frames;  // Measured frames only.
  uint64_t state_hash = 0;          // After warm-up and measured frames.
  size_t working_set_bytes = 0;
  std::optional<StreamingPassStats> pass;  // Label and bytes per frame.
  // Runtime variants: the time the workers spent inside jobs during the
  // measured frames, summed over the workers (WorkerStats::busy_seconds);
  // 0 for the one-thread variants.
  double job_seconds = 0;

  std::vector<double> FrameMs() const;
};

// Adds a later round of the same run (the same scenario, variant and
// frames from the same seed, in a process of its own) to `into`: its
// measured frames after into's, its job time to into's. InvalidArgument if
// the round is of another run (label, variant, allocator, threads, warm-up
// or working set differ); Internal if it ended in another state.
absl::Status AppendRound(VariantRun* into, const VariantRun& round);

// The allocator malloc (and so operator new) ends in, asked of the dynamic
// linker: "mimalloc" when mimalloc's malloc is the process's, "glibc"
// otherwise.
std::string BinaryAllocatorName();

// A runtime laid out as RunOptions says; one worker per node if
// `one_per_node`. FailedPrecondition/InvalidArgument from Runtime::Create.
absl::StatusOr<std::unique_ptr<jobs::Runtime>> MakeRuntime(
    const numa::Topology* topology, int workers, bool one_per_node);

absl::StatusOr<VariantRun> RunVariant(const ScenarioInfo& info, RunKind kind,
                                      const RunOptions& options);

// The STREAM triad (a[i] = b[i] + 3 c[i] on doubles; the vectorized kernel
// of triad_kernel.h) over three arrays of `bytes_per_array`, on this thread
// (runtime null) or split over the runtime's nodes and workers (arrays in
// NodeArrays, so each part is on its node). Bytes counted as STREAM does: 3 x 8
// per element per repetition.
struct TriadResult {
  int threads = 1;
  // The arrays were evicted from the caches before every repetition (a
  // 64 MiB buffer written), so the triad measures memory even when its
  // arrays would fit in the last-level cache.
  bool cold = false;
  size_t bytes_per_array = 0;
  int repetitions = 0;
  double best_gbps = 0;
  double median_gbps = 0;
};
// InvalidArgument when bytes_per_array < 64 KiB or repetitions < 1;
// Internal when the result is wrong.
absl::StatusOr<TriadResult> MeasureTriad(jobs::Runtime* runtime,
                                         size_t bytes_per_array,
                                         int repetitions, bool cold = false);

// Statistics over frame times. Nearest-rank percentiles; 0 for no values.
double Median(std::vector<double> values);
double Percentile(std::vector<double> values, double p);
double Mean(const std::vector<double>& values);

}  // namespace framealloc::sim

#endif  // BENCHMARKS_SUITE_H_
