// //jobs:soak: the long soak of the job runtime (docs/reliability.md).
//
// For: a million frames (by default) through jobs::Runtime with every
// worker allocating frame memory and pool blocks, read back by later jobs
// of the frame and freed on other workers (jobs/internal/soak.h). Prints
// what it measured; exits 1 if a block was corrupted, a job failed, or
// resident memory grew by more than --rss_growth_mib after warm-up.
// Not for: CI (jobs/runtime_soak_test.cc runs a short version) or timing.
//
//   ./bazelw run -c opt //jobs:soak -- --frames=1000000
//   ./bazelw run -c opt //jobs:soak -- --synthetic='pack:2 [numa] core:1 pu:1'
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "jobs/internal/soak.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

ABSL_FLAG(uint64_t, frames, 1000000, "frames to run");
ABSL_FLAG(uint64_t, warmup, 10000, "frames before resident memory counts");
ABSL_FLAG(size_t, chunks, 32, "ParallelFor chunks per frame");
ABSL_FLAG(double, rss_growth_mib, 16,
          "resident growth after warm-up that fails the run");
ABSL_FLAG(std::string, synthetic, "",
          "hwloc synthetic topology (default: this machine)");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  namespace fa = framealloc;
  namespace jobs = framealloc::jobs;
  std::unique_ptr<fa::numa::Topology> topology;
  jobs::Config config;
  if (!absl::GetFlag(FLAGS_synthetic).empty()) {
    auto t = fa::numa::Topology::FromSynthetic(absl::GetFlag(FLAGS_synthetic));
    if (!t.ok()) {
      std::fprintf(stderr, "soak: %s\n", t.status().ToString().c_str());
      return 2;
    }
    topology = *std::move(t);
    config.set_topology(topology.get());
  }
  auto rt = jobs::Runtime::Create(config);
  if (!rt.ok()) {
    std::fprintf(stderr, "soak: %s\n", rt.status().ToString().c_str());
    return 2;
  }
  auto r = jobs::jobs_internal::SoakRuntimeFrames(
      **rt, absl::GetFlag(FLAGS_frames), absl::GetFlag(FLAGS_warmup),
      absl::GetFlag(FLAGS_chunks));
  if (!r.ok()) {
    std::fprintf(stderr, "soak: %s\n", r.status().ToString().c_str());
    return 1;
  }
  const double mib = 1 << 20;
  const double growth =
      (static_cast<double>(r->rss_after_max) - r->rss_after_warmup) / mib;
  std::printf(
      "runtime soak: %llu frames on %d workers (%d nodes), %.1f s\n"
      "  %llu jobs and chunks, %llu frame allocations (%.1f GiB), %llu pool "
      "blocks allocated and freed across workers\n"
      "  largest frame: %.1f KiB of worker-arena memory\n"
      "  resident: %.1f MiB after warm-up, max after %.1f MiB (+%.2f MiB), "
      "end %.1f MiB\n"
      "  corrupted blocks: %llu, failed or cancelled jobs: %llu\n",
      static_cast<unsigned long long>(r->frames), (*rt)->total_workers(),
      (*rt)->num_nodes(), r->seconds, static_cast<unsigned long long>(r->jobs),
      static_cast<unsigned long long>(r->frame_allocations),
      r->frame_bytes / (mib * 1024),
      static_cast<unsigned long long>(r->pool_blocks),
      r->max_frame_bytes / 1024.0, r->rss_after_warmup / mib,
      r->rss_after_max / mib, growth, r->rss_end / mib,
      static_cast<unsigned long long>(r->corrupted),
      static_cast<unsigned long long>(r->failed_jobs));
  const bool ok = r->corrupted == 0 && r->failed_jobs == 0 &&
                  growth <= absl::GetFlag(FLAGS_rss_growth_mib);
  std::printf("%s\n", ok ? "OK: nothing lost, memory flat"
                         : "FAILED: see the figures above");
  return ok ? 0 : 1;
}
