// The simulation benchmark: framealloc's main job.
//
//   ./bazelw run -c opt //benchmarks:simulation
//
// Runs the particle scenario (benchmarks/particles.h) twice in one process,
// with the same seed: once with every frame temporary on the heap
// (new/std::vector), once on a frame arena reset each frame. Prints frame
// times (median, p99), allocations and bytes per frame, and the ratio, then
// checks that both variants reached bit-identical states (exit code 2 if
// not). After the table it puts the particle integration pass (Integrate(),
// timed inside the frame arena variant's measured frames) next to the
// machine's streaming limit (the STREAM triad on arrays the size of the
// particle arrays), measured in the same run (exit code 1 if that
// measurement fails). Later issues add scenarios, the job runtime and NUMA
// variants.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "alloc/bandwidth.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "benchmarks/particles.h"

ABSL_FLAG(int64_t, particles, 200000, "Number of particles.");
ABSL_FLAG(int, frames, 60, "Measured frames per variant.");
ABSL_FLAG(int, warmup, 5, "Unmeasured frames per variant before measuring.");
ABSL_FLAG(uint64_t, seed, 1, "Random seed of the initial state.");
ABSL_FLAG(int, rounds, 3,
          "Rounds; each round runs every variant once, alternating, and "
          "frame times are pooled across rounds.");
ABSL_FLAG(int, triad_repetitions, 50,
          "Repetitions of the STREAM triad; the best one is reported.");

namespace framealloc {
namespace sim {
namespace {

struct VariantResult {
  std::string name;
  std::vector<double> frame_ms;
  double allocations_per_frame = 0;
  double bytes_per_frame = 0;
  uint64_t source_calls = 0;  // Source allocations during measured frames.
  uint64_t checksum = 0;
  size_t contacts = 0;
  // Integrate() over the measured frames (arena variant only).
  double integrate_seconds = 0;
  int integrate_frames = 0;
};

double Percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const size_t index = std::min(
      values.size() - 1,
      static_cast<size_t>(p * static_cast<double>(values.size() - 1) + 0.5));
  return values[index];
}

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

void RunHeap(size_t n, uint64_t seed, int warmup, int frames,
             VariantResult& out) {
  Particles particles = MakeParticles(n, seed);
  const Params params = Params::ForCount(n);
  HeapCounters counters;
  HeapPolicy policy{&counters};
  for (int f = 0; f < warmup; ++f) Step(particles, params, policy);
  counters = {};
  for (int f = 0; f < frames; ++f) {
    const Clock::time_point start = Clock::now();
    const FrameCounts counts = Step(particles, params, policy);
    out.frame_ms.push_back(Ms(Clock::now() - start));
    out.contacts = counts.contacts;
  }
  out.allocations_per_frame +=
      static_cast<double>(counters.allocations) / frames;
  out.bytes_per_frame += static_cast<double>(counters.bytes) / frames;
  out.checksum = Checksum(particles);
}

void RunArena(size_t n, uint64_t seed, int warmup, int frames,
              VariantResult& out) {
  Particles particles = MakeParticles(n, seed);
  const Params params = Params::ForCount(n);
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  ArenaPolicy policy{&arena};
  for (int f = 0; f < warmup; ++f) {
    Step(particles, params, policy);
    arena.Reset();
    cache.EndEpoch();
  }
  const uint64_t calls_before = cache.stats().misses;
  double allocations = 0, bytes = 0;
  for (int f = 0; f < frames; ++f) {
    const Clock::time_point start = Clock::now();
    const FrameCounts counts = Step(particles, params, policy);
    const FrameArenaStats stats = arena.stats();
    arena.Reset();  // The frame's end is part of its cost.
    cache.EndEpoch();
    out.frame_ms.push_back(Ms(Clock::now() - start));
    out.integrate_seconds += counts.integrate_seconds;
    ++out.integrate_frames;
    allocations += static_cast<double>(stats.allocations);
    bytes += static_cast<double>(stats.bytes_used);
    out.contacts = counts.contacts;
  }
  out.source_calls += cache.stats().misses - calls_before;
  out.allocations_per_frame += allocations / frames;
  out.bytes_per_frame += bytes / frames;
  out.checksum = Checksum(particles);
}

// Puts the integration pass of `arena`'s measured frames next to the
// machine's limit. The triad runs on arrays the size of one particle array
// (n floats), at least 1 MiB so the timer resolution does not dominate.
// False (after printing why) when a measurement fails.
bool ReportBandwidth(size_t n, const VariantResult& arena,
                     int triad_repetitions) {
  const size_t particle_array_bytes = n * sizeof(float);
  const size_t triad_bytes = std::max(particle_array_bytes, size_t{1} << 20);
  absl::StatusOr<StreamResult> triad =
      MeasureStreamTriad(triad_bytes, triad_repetitions);
  if (!triad.ok()) {
    std::fprintf(stderr, "STREAM triad failed: %s\n",
                 triad.status().ToString().c_str());
    return false;
  }
  BandwidthAnalyzer analyzer;
  analyzer.SetLimit(*triad);
  // Integrate() per particle, counted from its loop: reads x, y, vx, vy,
  // fx, fy (6 floats) and writes x, y, vx, vy (4 floats). The written
  // arrays are read first, so no write-allocate traffic hides behind it.
  const size_t integrated = n * static_cast<size_t>(arena.integrate_frames);
  absl::StatusOr<BandwidthSample> integration =
      analyzer.Record("particle integration", integrated * 6 * sizeof(float),
                      integrated * 4 * sizeof(float), arena.integrate_seconds);
  if (!integration.ok()) {
    std::fprintf(stderr, "%s\n", integration.status().ToString().c_str());
    return false;
  }
  std::printf(
      "\nmemory bandwidth (STREAM triad, %.2f MiB arrays): %.2f GB/s\n"
      "  a[i] = b[i] + s * c[i] on doubles, best of %d, counting 3 arrays x "
      "8 bytes per element (2 read, 1 written) as STREAM does\n",
      static_cast<double>(triad->bytes_per_array) / (1 << 20), triad->gbps,
      triad->repetitions);
  std::printf(
      "particle integration: %.2f GB/s = %.1f%% of the triad\n"
      "  Integrate() in the frame arena variant's %d measured frames: "
      "%.3f ms per frame, 40 bytes per particle (reads x, y, vx, vy, fx, "
      "fy; writes x, y, vx, vy), %.2f MiB per array\n",
      integration->total_gbps, 100.0 * FractionOfLimit(*integration, *triad),
      arena.integrate_frames,
      1e3 * arena.integrate_seconds / arena.integrate_frames,
      static_cast<double>(particle_array_bytes) / (1 << 20));
  return true;
}

int Main() {
  const int64_t particles_flag = absl::GetFlag(FLAGS_particles);
  const int frames = absl::GetFlag(FLAGS_frames);
  const int warmup = absl::GetFlag(FLAGS_warmup);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (particles_flag < 1 || particles_flag > (int64_t{1} << 28)) {
    std::fprintf(stderr, "--particles must be in [1, 2^28], got %lld\n",
                 static_cast<long long>(particles_flag));
    return 1;
  }
  if (frames < 1 || warmup < 0 || rounds < 1) {
    std::fprintf(stderr, "--frames and --rounds must be >= 1, --warmup >= 0\n");
    return 1;
  }
  const int triad_repetitions = absl::GetFlag(FLAGS_triad_repetitions);
  if (triad_repetitions < 1) {
    std::fprintf(stderr, "--triad_repetitions must be >= 1, got %d\n",
                 triad_repetitions);
    return 1;
  }
  const size_t n = static_cast<size_t>(particles_flag);
  const Params params = Params::ForCount(n);
  std::printf(
      "framealloc simulation: particles (SoA), %zu particles, grid %dx%d, "
      "%d rounds x %d frames per variant (+%d warm-up), seed %llu\n",
      n, params.grid, params.grid, rounds, frames, warmup,
      static_cast<unsigned long long>(seed));

  VariantResult heap;
  heap.name = "heap (new/std::vector)";
  VariantResult arena;
  arena.name = "frame arena";
  for (int round = 0; round < rounds; ++round) {
    // Alternate the order so neither variant always runs on a warmer or
    // cooler machine.
    if (round % 2 == 0) {
      RunHeap(n, seed, warmup, frames, heap);
      RunArena(n, seed, warmup, frames, arena);
    } else {
      RunArena(n, seed, warmup, frames, arena);
      RunHeap(n, seed, warmup, frames, heap);
    }
    std::printf("  round %d/%d done\n", round + 1, rounds);
    std::fflush(stdout);
  }
  heap.allocations_per_frame /= rounds;
  heap.bytes_per_frame /= rounds;
  arena.allocations_per_frame /= rounds;
  arena.bytes_per_frame /= rounds;

  std::printf("\n%-24s %10s %10s %10s %14s %14s %12s\n", "variant", "median ms",
              "p99 ms", "mean ms", "allocs/frame", "bytes/frame",
              "src allocs*");
  for (const VariantResult* v : {&heap, &arena}) {
    double mean = 0;
    for (double ms : v->frame_ms) mean += ms;
    mean /= static_cast<double>(v->frame_ms.size());
    std::printf(
        "%-24s %10.3f %10.3f %10.3f %14.0f %14.0f %12s\n", v->name.c_str(),
        Percentile(v->frame_ms, 0.5), Percentile(v->frame_ms, 0.99), mean,
        v->allocations_per_frame, v->bytes_per_frame,
        v == &arena ? absl::StrFormat("%llu", static_cast<unsigned long long>(
                                                  v->source_calls))
                          .c_str()
                    : "n/a");
  }
  const double ratio_median =
      Percentile(heap.frame_ms, 0.5) / Percentile(arena.frame_ms, 0.5);
  const double ratio_p99 =
      Percentile(heap.frame_ms, 0.99) / Percentile(arena.frame_ms, 0.99);
  std::printf(
      "\nframe arena vs heap: %.2fx faster at the median, %.2fx at p99 "
      "(ratios of frame times measured in this run)\n",
      ratio_median, ratio_p99);
  std::printf(
      "* src allocs: memory-source allocations by the arena's chunk cache "
      "during measured frames (0 = every frame reused cached chunks)\n");
  std::printf("contacts in the last frame: %zu\n", arena.contacts);

  const bool bandwidth_ok = ReportBandwidth(n, arena, triad_repetitions);
  if (heap.checksum != arena.checksum) {
    std::printf("STATE MISMATCH: heap %016llx, arena %016llx\n",
                static_cast<unsigned long long>(heap.checksum),
                static_cast<unsigned long long>(arena.checksum));
    return 2;
  }
  std::printf("final state identical across variants (checksum %016llx)\n",
              static_cast<unsigned long long>(heap.checksum));
  return bandwidth_ok ? 0 : 1;
}

}  // namespace
}  // namespace sim
}  // namespace framealloc

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Particle simulation: frame temporaries on the heap vs a frame arena.");
  absl::ParseCommandLine(argc, argv);
  return framealloc::sim::Main();
}
