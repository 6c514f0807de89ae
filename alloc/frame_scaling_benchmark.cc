// Does per-thread frame allocation scale? Per-thread cost of SmartAlloc's
// frame path on one thread and on two at once, next to a control with
// nothing shared (a private FrameArena and ChunkCache per thread), over
// alternating rounds; medians reported.
//   ./bazelw run -c opt //alloc:frame_scaling_benchmark [-- --rounds=9]
// A driver program rather than a Google Benchmark: each round starts fresh
// threads that run the same frames side by side, which is the question.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/smart_alloc.h"

ABSL_FLAG(int, rounds, 9, "Alternating rounds of 1 and 2 threads.");
ABSL_FLAG(int, frames, 500, "Frames per thread per measurement.");
ABSL_FLAG(int, allocations, 4096, "64-byte allocations per frame.");

namespace framealloc {
namespace {

using Clock = std::chrono::steady_clock;

// ns per allocation of `frames` frames on the calling thread (after one
// warm-up pass of the same length).
template <typename AllocateFn, typename EndFrameFn>
double TimeFrames(AllocateFn allocate, EndFrameFn end_frame) {
  const int frames = absl::GetFlag(FLAGS_frames);
  const int allocations = absl::GetFlag(FLAGS_allocations);
  double ns = 0;
  for (int pass = 0; pass < 2; ++pass) {
    const Clock::time_point start = Clock::now();
    for (int f = 0; f < frames; ++f) {
      for (int i = 0; i < allocations; ++i) {
        void* p = allocate();
        asm volatile("" : : "r"(p) : "memory");
      }
      end_frame();
    }
    ns =
        std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
        (static_cast<double>(frames) * allocations);
  }
  return ns;
}

double SmartFrames(SmartAlloc& alloc) {
  return TimeFrames([&] { return alloc.frame_allocate(64, 16); },
                    [&] { alloc.end_frame(); });
}

double ControlFrames() {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  return TimeFrames([&] { return arena.Allocate(64, 16); },
                    [&] { arena.Reset(); });
}

// Mean per-thread ns/allocation with `threads` threads running `fn` at once.
template <typename Fn>
double PerThread(int threads, Fn fn) {
  std::vector<double> ns(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] { ns[t] = fn(); });
  }
  for (auto& w : workers) w.join();
  double sum = 0;
  for (double v : ns) sum += v;
  return sum / threads;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Main() {
  const int rounds = absl::GetFlag(FLAGS_rounds);
  if (rounds < 1 || absl::GetFlag(FLAGS_frames) < 1 ||
      absl::GetFlag(FLAGS_allocations) < 1) {
    std::fprintf(stderr, "--rounds, --frames and --allocations must be >= 1\n");
    return 1;
  }
  SmartAlloc alloc;
  std::vector<double> smart1, smart2, control1, control2;
  for (int r = 0; r < rounds; ++r) {
    smart1.push_back(PerThread(1, [&] { return SmartFrames(alloc); }));
    smart2.push_back(PerThread(2, [&] { return SmartFrames(alloc); }));
    control1.push_back(PerThread(1, ControlFrames));
    control2.push_back(PerThread(2, ControlFrames));
  }
  const double s1 = Median(smart1), s2 = Median(smart2);
  const double c1 = Median(control1), c2 = Median(control2);
  std::printf(
      "frame allocation, ns per 64-byte allocation per thread (%d frames of "
      "%d allocations, median of %d rounds)\n",
      absl::GetFlag(FLAGS_frames), absl::GetFlag(FLAGS_allocations), rounds);
  std::printf("%-44s %9s %9s %9s\n", "", "1 thread", "2 threads", "change");
  std::printf("%-44s %9.3f %9.3f %+8.1f%%\n",
              "SmartAlloc (per-thread arenas, one instance)", s1, s2,
              100 * (s2 - s1) / s1);
  std::printf("%-44s %9.3f %9.3f %+8.1f%%\n",
              "control (private arena and cache per thread)", c1, c2,
              100 * (c2 - c1) / c1);
  return 0;
}

}  // namespace
}  // namespace framealloc

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return framealloc::Main();
}
