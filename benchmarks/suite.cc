// The suite's engine (see suite.h).
#include "benchmarks/suite.h"

#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "benchmarks/heap_counter.h"
#include "benchmarks/triad_kernel.h"
#include "jobs/parallel.h"

namespace framealloc::sim {
namespace {

using Clock = std::chrono::steady_clock;

// Chunk bytes the `arena` variant's FrameArena keeps across Reset.
constexpr size_t kArenaRetainBytes = size_t{64} << 20;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

Variant VariantOf(RunKind kind) {
  switch (kind) {
    case RunKind::kHeap:
      return Variant::kHeap;
    case RunKind::kArena:
      return Variant::kArena;
    case RunKind::kRuntimeHeap:
      return Variant::kRuntimeHeap;
    case RunKind::kRuntimeArena:
    case RunKind::kRuntimeArenaOneWorker:
      return Variant::kRuntimeArena;
  }
  return Variant::kHeap;
}

std::string RunKindName(RunKind kind) {
  if (kind == RunKind::kRuntimeArenaOneWorker) return "runtime-arena-1w";
  return std::string(VariantName(VariantOf(kind)));
}

absl::StatusOr<RunKind> ParseRunKind(absl::string_view name) {
  for (RunKind k : {RunKind::kHeap, RunKind::kArena, RunKind::kRuntimeHeap,
                    RunKind::kRuntimeArena, RunKind::kRuntimeArenaOneWorker}) {
    if (name == RunKindName(k)) return k;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown variant '", name,
                   "' (expected heap, arena, runtime-heap, runtime-arena, "
                   "runtime-arena-1w)"));
}

std::vector<double> VariantRun::FrameMs() const {
  std::vector<double> ms;
  ms.reserve(frames.size());
  for (const FrameRecord& f : frames) ms.push_back(f.ms);
  return ms;
}

std::string BinaryAllocatorName() {
  // mimalloc linked in (with its malloc override) makes malloc an alias of
  // mi_malloc: the same address.
  void* mi = dlsym(RTLD_DEFAULT, "mi_malloc");
  if (mi == nullptr) return "glibc";
  return dlsym(RTLD_DEFAULT, "malloc") == mi
             ? "mimalloc"
             : "mimalloc (not replacing malloc)";
}

absl::StatusOr<std::unique_ptr<jobs::Runtime>> MakeRuntime(
    const numa::Topology* topology, int workers, bool one_per_node) {
  jobs::Config config;
  config.set_topology(topology).set_frame_history(4);
  const int nodes = topology->num_nodes();
  if (one_per_node) {
    config.set_workers_per_node(1);
  } else if (workers > 0) {
    if (workers < nodes) {
      return absl::InvalidArgumentError(
          absl::StrCat("workers: ", workers, " is fewer than the ", nodes,
                       " nodes of the topology (one per node at least)"));
    }
    std::vector<int> per_node;
    for (int k = 0; k < nodes; ++k) {
      per_node.push_back(workers / nodes + (k < workers % nodes ? 1 : 0));
    }
    config.set_node_workers(std::move(per_node));
  }
  return jobs::Runtime::Create(std::move(config));
}

namespace {

// Time inside jobs so far, summed over the runtime's workers.
double BusySeconds(const jobs::Runtime& runtime) {
  double seconds = 0;
  for (const jobs::NodeStats& node : runtime.stats().nodes) {
    seconds += node.busy_seconds;  // The sum of its workers'.
  }
  return seconds;
}

// Page faults of this process so far (every thread, minor and major).
uint64_t PageFaults() {
  struct rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<uint64_t>(usage.ru_minflt) +
         static_cast<uint64_t>(usage.ru_majflt);
}

}  // namespace

absl::Status AppendRound(VariantRun* into, const VariantRun& round) {
  if (round.label != into->label || round.variant != into->variant ||
      round.allocator != into->allocator || round.threads != into->threads ||
      round.warmup != into->warmup ||
      round.working_set_bytes != into->working_set_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("AppendRound: a round of '", round.label, "' (",
                     round.threads, " thread(s)) cannot join '", into->label,
                     "' (", into->threads, " thread(s))"));
  }
  if (round.state_hash != into->state_hash) {
    return absl::InternalError(absl::StrCat(
        "AppendRound: '", round.label, "' ended this round in state ",
        absl::Hex(round.state_hash, absl::kZeroPad16), ", its first round in ",
        absl::Hex(into->state_hash, absl::kZeroPad16),
        " (the same frames from the same seed must give the same state)"));
  }
  into->frames.insert(into->frames.end(), round.frames.begin(),
                      round.frames.end());
  into->job_seconds += round.job_seconds;
  if (round.pass.has_value()) into->pass = round.pass;
  return absl::OkStatus();
}

absl::StatusOr<VariantRun> RunVariant(const ScenarioInfo& info, RunKind kind,
                                      const RunOptions& options) {
  if (options.warmup < 0 || options.frames < 0 || options.min_frames < 1 ||
      options.max_frames < options.min_frames ||
      !(options.budget_seconds >= 0)) {
    return absl::InvalidArgumentError(
        "RunOptions: warmup and frames must be >= 0, 1 <= min_frames <= "
        "max_frames, budget_seconds >= 0");
  }
  const Variant variant = VariantOf(kind);
  VariantRun run;
  run.label = RunKindName(kind);
  run.variant = std::string(VariantName(variant));
  run.allocator = BinaryAllocatorName();
  run.warmup = options.warmup;

  // The environment. Declared in this order so the runtime goes before its
  // topology and the arena before its cache.
  std::unique_ptr<numa::Topology> discovered;
  std::unique_ptr<jobs::Runtime> runtime;
  std::unique_ptr<ChunkCache> cache;
  std::unique_ptr<FrameArena> arena;
  FrameEnv env;
  env.variant = variant;
  if (UsesRuntime(variant)) {
    const numa::Topology* topology = options.topology;
    if (topology == nullptr) {
      absl::StatusOr<std::unique_ptr<numa::Topology>> t =
          numa::Topology::Discover();
      if (!t.ok()) return t.status();
      discovered = *std::move(t);
      topology = discovered.get();
    }
    absl::StatusOr<std::unique_ptr<jobs::Runtime>> rt = MakeRuntime(
        topology, options.workers, kind == RunKind::kRuntimeArenaOneWorker);
    if (!rt.ok()) return rt.status();
    runtime = *std::move(rt);
    env.runtime = runtime.get();
    run.threads = runtime->total_workers();
  } else if (variant == Variant::kArena) {
    cache = std::make_unique<ChunkCache>(&SystemMemorySource::Default());
    // One thread's frame arena: it keeps its chunks from frame to frame
    // (up to kArenaRetainBytes) instead of handing them back to the cache
    // at every Reset and taking them again in the next frame (the cache's
    // bookkeeping allocated on the heap on every such round trip). Oversize
    // blocks still go back to the cache.
    arena = std::make_unique<FrameArena>(
        cache.get(), FrameArenaOptions().set_retain_bytes(kArenaRetainBytes));
    env.arena = arena.get();
  }

  std::unique_ptr<Scenario> scenario = info.create();
  absl::Status s = scenario->Init(options.config, env);
  if (!s.ok()) return s;
  run.working_set_bytes = scenario->WorkingSetBytes();
  const auto* pass = dynamic_cast<const StreamingPass*>(scenario.get());

  const bool budget_mode = options.frames == 0;
  const int total = budget_mode ? 0 : options.warmup + options.frames;
  Clock::time_point measure_start;
  double busy_start = 0;
  for (int frame = 0;; ++frame) {
    const bool measured = frame >= options.warmup;
    if (measured) {
      const int done = frame - options.warmup;
      if (frame == options.warmup) {
        measure_start = Clock::now();
        if (runtime != nullptr) {
          busy_start = BusySeconds(*runtime);
          if (!options.trace_path.empty()) runtime->StartTrace();
        }
      }
      if (budget_mode) {
        const double elapsed = Seconds(Clock::now() - measure_start);
        if (done >= options.max_frames ||
            (done >= options.min_frames && elapsed >= options.budget_seconds)) {
          break;
        }
      } else if (done >= options.frames) {
        break;
      }
    }
    FrameRecord record;
    const uint64_t faults_before = PageFaults();
    const HeapCounts heap_before = ReadHeapCounts();
    const Clock::time_point start = Clock::now();
    if (runtime != nullptr) {
      s = runtime->BeginFrame();
      if (!s.ok()) return s;
      absl::Status step = scenario->Step(env);
      s = runtime->EndFrame();
      if (!step.ok()) return step;
      if (!s.ok()) return s;
    } else {
      s = scenario->Step(env);
      if (!s.ok()) return s;
      if (arena != nullptr) {
        const FrameArenaStats stats = arena->stats();
        // The scenario's allocations, not the arena's destructor records
        // (as FrameTiming::arena_allocations for runtime-arena).
        record.arena_allocations =
            static_cast<int64_t>(stats.allocations - stats.destructor_records);
        record.arena_bytes = stats.bytes_requested;
        arena->Reset();  // The frame's end is part of its cost.
        cache->EndEpoch();
      }
    }
    const Clock::time_point end = Clock::now();
    const HeapCounts heap = ReadHeapCounts() - heap_before;
    record.page_faults = PageFaults() - faults_before;
    record.ms = 1e3 * Seconds(end - start);
    record.heap_allocations = heap.allocations;
    record.heap_bytes = heap.bytes;
    if (variant == Variant::kRuntimeHeap) record.arena_allocations = 0;
    if (variant == Variant::kHeap) record.arena_allocations = 0;
    if (variant == Variant::kRuntimeArena) {
      const std::vector<jobs::FrameTiming> history = runtime->frame_history();
      if (!history.empty()) {
        record.arena_bytes = history.back().arena_bytes;
        record.arena_allocations =
            static_cast<int64_t>(history.back().arena_allocations);
      }
    }
    // The scenario's own arenas count with the variant's (a count the
    // runtime did not report stays unreported).
    const OwnArenaUse own = scenario->LastFrameOwnArenas();
    if (record.arena_allocations >= 0) {
      record.arena_allocations += own.allocations;
    }
    record.arena_bytes += own.bytes;
    if (pass != nullptr) {
      const StreamingPassStats p = pass->LastPass();
      record.pass_seconds = p.seconds;
      run.pass = p;
    }
    if (measured) run.frames.push_back(record);
    if (options.progress) options.progress(frame + 1, total);
  }
  run.state_hash = scenario->StateHash();
  if (runtime != nullptr) run.job_seconds = BusySeconds(*runtime) - busy_start;
  if (runtime != nullptr && !options.trace_path.empty()) {
    runtime->StopTrace();
    // After EndFrame: no job runs.
    s = runtime->WriteChromeTrace(options.trace_path);
    if (!s.ok()) return s;
  }
  return run;
}

absl::StatusOr<TriadResult> MeasureTriad(jobs::Runtime* runtime,
                                         size_t bytes_per_array,
                                         int repetitions, bool cold) {
  if (bytes_per_array < (size_t{64} << 10) || repetitions < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MeasureTriad: bytes_per_array must be >= 64 KiB (got ",
        bytes_per_array, ") and repetitions >= 1 (got ", repetitions, ")"));
  }
  const size_t n = bytes_per_array / sizeof(double);
  constexpr double kScalar = 3.0;
  constexpr double kExpected = 2.0 + kScalar * 0.5;
  std::vector<double> gbps;
  TriadResult result;
  result.cold = cold;
  result.bytes_per_array = n * sizeof(double);
  // Written before each cold repetition: pushes the arrays out of the
  // caches (64 MiB is beyond the last-level cache of the machines we run).
  std::vector<unsigned char> evict(cold ? size_t{64} << 20 : 0);
  auto evict_caches = [&evict](int round) {
    if (!evict.empty()) std::memset(evict.data(), round & 0xff, evict.size());
  };
  result.repetitions = repetitions;
  const double bytes = 3.0 * static_cast<double>(n * sizeof(double));
  bool correct = true;
  if (runtime == nullptr) {
    std::vector<double> a(n, 0.0), b(n, 2.0), c(n, 0.5);
    for (int r = 0; r < repetitions; ++r) {
      evict_caches(r);
      const Clock::time_point start = Clock::now();
      VectorTriad(a.data(), b.data(), c.data(), kScalar, n);
      gbps.push_back(bytes / Seconds(Clock::now() - start) / 1e9);
    }
    correct =
        a[0] == kExpected && a[n / 2] == kExpected && a[n - 1] == kExpected;
  } else {
    const jobs::NodePartition part = runtime->Partition(n);
    auto a = jobs::NodeArray<double>::Create(*runtime, part);
    if (!a.ok()) return a.status();
    auto b = jobs::NodeArray<double>::Create(*runtime, part);
    if (!b.ok()) return b.status();
    auto c = jobs::NodeArray<double>::Create(*runtime, part);
    if (!c.ok()) return c.status();
    constexpr size_t kGrain = size_t{1} << 15;
    absl::Status s = runtime->ParallelFor(
        part, kGrain, [&](jobs::JobContext&, size_t first, size_t end) {
          std::fill(b->span(first, end).begin(), b->span(first, end).end(),
                    2.0);
          std::fill(c->span(first, end).begin(), c->span(first, end).end(),
                    0.5);
        });
    if (!s.ok()) return s;
    for (int r = 0; r < repetitions; ++r) {
      evict_caches(r);
      const Clock::time_point start = Clock::now();
      s = runtime->ParallelFor(
          part, kGrain, [&](jobs::JobContext&, size_t first, size_t end) {
            VectorTriad(a->span(first, end).data(), b->span(first, end).data(),
                        c->span(first, end).data(), kScalar, end - first);
          });
      gbps.push_back(bytes / Seconds(Clock::now() - start) / 1e9);
      if (!s.ok()) return s;
    }
    correct = (*a)[0] == kExpected && (*a)[n / 2] == kExpected &&
              (*a)[n - 1] == kExpected;
    result.threads = runtime->total_workers();
  }
  if (!correct) {
    return absl::InternalError("MeasureTriad: wrong triad result");
  }
  result.best_gbps = *std::max_element(gbps.begin(), gbps.end());
  result.median_gbps = Median(gbps);
  return result;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  // Nearest rank: the smallest value with at least p of the values at or
  // below it.
  const double rank = std::ceil(p * static_cast<double>(values.size()));
  const size_t index = static_cast<size_t>(std::max(rank, 1.0)) - 1;
  return values[std::min(index, values.size() - 1)];
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t m = values.size() / 2;
  return values.size() % 2 == 1 ? values[m] : 0.5 * (values[m - 1] + values[m]);
}

double Mean(const std::vector<double>& values) {
  if (values.empty()) return 0;
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

}  // namespace framealloc::sim
