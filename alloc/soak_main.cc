// //alloc:soak: the long versions of the allocator's stress tests.
//
// For: running the soak workloads of alloc/internal/soak.h at full length
// and printing what they measured (frames, threads, blocks, resident memory
// and bytes held from the source before and after), for docs/reliability.md
// and before a release. Exits 1 if anything was lost, duplicated, corrupted
// or kept growing. Not for: CI (alloc/reliability_stress_test.cc runs short
// versions in every build) or timing.
//
//   ./bazelw run -c opt //alloc:soak -- --frames=1000000 --threads=4
//   ./bazelw run -c opt //alloc:soak -- --only=churn --churn_threads=10000
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "alloc/internal/soak.h"
#include "alloc/smart_alloc.h"

ABSL_FLAG(uint64_t, frames, 1000000, "frames per thread (frame soak)");
ABSL_FLAG(int, threads, 4, "threads allocating frames (frame soak)");
ABSL_FLAG(int, churn_threads, 10000, "short-lived threads (churn soak)");
ABSL_FLAG(int, churn_concurrent, 8, "of them alive at once");
ABSL_FLAG(uint64_t, pool_blocks, 2000000,
          "blocks per producer (producer/consumer soak)");
ABSL_FLAG(int, pairs, 2, "producer/consumer thread pairs");
ABSL_FLAG(std::string, only, "all", "frames, churn, pools or all");

namespace {

using framealloc::SmartAlloc;
namespace internal = framealloc::alloc_internal;

double MiB(size_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// A SmartAlloc over its own system source, so its outstanding bytes are
// this instance's alone.
struct Instance {
  framealloc::SystemMemorySource source;
  std::unique_ptr<SmartAlloc> alloc =
      SmartAlloc::Create(framealloc::AllocConfig().set_source(&source)).value();
};

bool Frames() {
  Instance in;
  const uint64_t frames = absl::GetFlag(FLAGS_frames);
  const int threads = absl::GetFlag(FLAGS_threads);
  const internal::FrameSoakResult r = internal::SoakFrames(
      *in.alloc, threads, frames, std::max<uint64_t>(frames / 10, 1920));
  std::printf(
      "frames: %llu frames (%d threads x %llu), %llu allocations, %.1f s\n"
      "  reserved (bytes held from the source): warm-up max %.2f MiB, after "
      "warm-up max %.2f MiB, end %.2f MiB\n"
      "  resident: after warm-up %.1f MiB, max after %.1f MiB, end %.1f MiB\n"
      "  corrupted blocks: %llu\n",
      static_cast<unsigned long long>(r.frames), threads,
      static_cast<unsigned long long>(frames),
      static_cast<unsigned long long>(r.allocations), r.seconds,
      MiB(r.reserved_warmup_max), MiB(r.reserved_after_max),
      MiB(r.reserved_end), MiB(r.rss_after_warmup), MiB(r.rss_after_max),
      MiB(r.rss_end), static_cast<unsigned long long>(r.corrupted));
  // Flat: after warm-up the instance never holds more than one extra
  // oversize block per thread beyond its warm-up peak.
  return r.corrupted == 0 &&
         r.reserved_after_max <=
             r.reserved_warmup_max + static_cast<size_t>(threads) * (256 << 10);
}

bool Churn() {
  Instance in;
  const int threads = absl::GetFlag(FLAGS_churn_threads);
  const internal::ChurnResult r = internal::SoakThreadChurn(
      *in.alloc, threads, absl::GetFlag(FLAGS_churn_concurrent), threads / 10);
  std::printf(
      "churn: %llu threads (%llu exited, %zu live after), %.1f s\n"
      "  reserved: after warm-up %.2f MiB, end %.2f MiB\n"
      "  resident: after warm-up %.1f MiB, end %.1f MiB\n",
      static_cast<unsigned long long>(r.threads),
      static_cast<unsigned long long>(r.exited_threads), r.live_threads,
      r.seconds, MiB(r.reserved_after_warmup), MiB(r.reserved_end),
      MiB(r.rss_after_warmup), MiB(r.rss_end));
  // Bounded by what the threads alive at once can hold (a 64 KiB first
  // chunk each, idle in the cache after they exit) plus the pool's pages.
  const size_t bound =
      static_cast<size_t>(absl::GetFlag(FLAGS_churn_concurrent)) * (64 << 10) +
      (512 << 10);
  return r.exited_threads == r.threads && r.live_threads == 0 &&
         r.reserved_end <= bound;
}

bool Pools() {
  Instance in;
  const internal::PoolSoakResult r = internal::SoakPools(
      *in.alloc, absl::GetFlag(FLAGS_pairs), absl::GetFlag(FLAGS_pool_blocks));
  std::printf(
      "pools: %llu blocks sent, %llu received, %llu lost, %llu duplicated, "
      "%llu corrupted; statistics: %llu allocations, %llu frees, %zu blocks "
      "out; %.1f s\n",
      static_cast<unsigned long long>(r.sent),
      static_cast<unsigned long long>(r.received),
      static_cast<unsigned long long>(r.lost),
      static_cast<unsigned long long>(r.duplicated),
      static_cast<unsigned long long>(r.corrupted),
      static_cast<unsigned long long>(r.pool_allocations),
      static_cast<unsigned long long>(r.pool_frees), r.blocks_out, r.seconds);
  return r.lost == 0 && r.duplicated == 0 && r.corrupted == 0 &&
         r.pool_allocations == r.sent && r.pool_frees == r.sent &&
         r.blocks_out == 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string only = absl::GetFlag(FLAGS_only);
  bool ok = true;
  if (only == "all" || only == "frames") ok &= Frames();
  if (only == "all" || only == "churn") ok &= Churn();
  if (only == "all" || only == "pools") ok &= Pools();
  std::printf("soak: %s\n", ok ? "nothing lost, nothing grew" : "FAILED");
  return ok ? 0 : 1;
}
