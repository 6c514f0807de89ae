// Benchmarks of FrameArena against malloc/free and
// std::pmr::monotonic_buffer_resource, with the ratios the README reports.
//
// Every iteration allocates a batch and then resets (or frees), so nothing
// measures a full arena and every allocator does its whole job, release
// included. Run with:
//   ./bazelw run -c opt //alloc:frame_arena_benchmark
// The table after Google Benchmark's output gives the ratios, measured in
// this one run: medians of five repetitions run in random interleaved
// order, so a slow phase of a shared machine hits every benchmark alike.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory_resource>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/benchmark_util.h"
#include "alloc/memory_source.h"
#include "benchmark/benchmark.h"

namespace framealloc {
namespace {

// Allocations per iteration: at least 16, at most 1000, about 1 MiB total.
size_t BatchFor(size_t size) {
  return std::clamp<size_t>((size_t{1} << 20) / std::max<size_t>(size, 1), 16,
                            1000);
}

ChunkCache& Cache() {
  static ChunkCache* cache = new ChunkCache(&SystemMemorySource::Default());
  return *cache;
}

// The function whose machine code docs/frame_arena.md shows: the inline
// fast path of a 16-byte-aligned small allocation, out of line here only so
// it can be disassembled (objdump -d --no-show-raw-insn ... | grep -A20
// FastPathProbe).
ABSL_ATTRIBUTE_NOINLINE void* FastPathProbe(FrameArena& arena, size_t size) {
  return arena.Allocate(size, 16);
}

// A batch of allocations, then a reset. kOutOfLine calls FastPathProbe, as
// code that cannot inline the arena (a virtual interface, another
// translation unit) would pay; otherwise the fast path is inlined.
template <bool kOutOfLine>
void BM_FrameArena(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const size_t batch = BatchFor(size);
  FrameArena arena(&Cache());
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) {
      benchmark::DoNotOptimize(kOutOfLine ? FastPathProbe(arena, size)
                                          : arena.Allocate(size, 16));
    }
    arena.Reset();
  }
  state.counters["batch"] = static_cast<double>(batch);
  state.SetItemsProcessed(state.iterations() * batch);
}
void BM_FrameArena_Alloc(benchmark::State& state) {
  BM_FrameArena<false>(state);
}
void BM_FrameArena_AllocOutOfLine(benchmark::State& state) {
  BM_FrameArena<true>(state);
}

// malloc+free of the same size, back to back: malloc's best case (its
// thread cache hands the same block back every time).
void BM_Malloc_FreeEach(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const size_t batch = BatchFor(size);
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) {
      void* p = std::malloc(size);
      benchmark::DoNotOptimize(p);
      std::free(p);
    }
  }
  state.counters["batch"] = static_cast<double>(batch);
  state.SetItemsProcessed(state.iterations() * batch);
}

// A frame's pattern for malloc: allocate the batch, then free it all.
void BM_Malloc_FreeAtEnd(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const size_t batch = BatchFor(size);
  std::vector<void*> blocks(batch);
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) {
      blocks[i] = std::malloc(size);
      benchmark::DoNotOptimize(blocks[i]);
    }
    for (size_t i = 0; i < batch; ++i) std::free(blocks[i]);
  }
  state.counters["batch"] = static_cast<double>(batch);
  state.SetItemsProcessed(state.iterations() * batch);
}

// std::pmr's bump allocator at its best: a preallocated buffer that holds
// the whole batch, released (rewound) every iteration.
void BM_PmrMonotonic_Alloc(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const size_t batch = BatchFor(size);
  std::vector<std::byte> buffer(batch * (size + 16) + 4096);
  std::pmr::monotonic_buffer_resource resource(buffer.data(), buffer.size());
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) {
      benchmark::DoNotOptimize(resource.allocate(size, 16));
    }
    resource.release();
  }
  state.counters["batch"] = static_cast<double>(batch);
  state.SetItemsProcessed(state.iterations() * batch);
}

#define FRAMEALLOC_SIZES \
  RangeMultiplier(2)->Range(16, 64 << 10)->Unit(benchmark::kNanosecond)
BENCHMARK(BM_FrameArena_Alloc)->FRAMEALLOC_SIZES;
BENCHMARK(BM_FrameArena_AllocOutOfLine)
    ->Arg(16)
    ->Arg(64)
    ->Arg(256)
    ->Unit(benchmark::kNanosecond);
BENCHMARK(BM_Malloc_FreeEach)->FRAMEALLOC_SIZES;
BENCHMARK(BM_Malloc_FreeAtEnd)->FRAMEALLOC_SIZES;
BENCHMARK(BM_PmrMonotonic_Alloc)->FRAMEALLOC_SIZES;

// An empty frame: Reset() with nothing allocated.
void BM_FrameArena_EmptyReset(benchmark::State& state) {
  FrameArena arena(&Cache());
  arena.Allocate(16);  // The first chunk exists, as in any real frame.
  arena.Reset();
  for (auto _ : state) {
    arena.Reset();
    benchmark::ClobberMemory();
  }
  state.counters["batch"] = 1;
}
BENCHMARK(BM_FrameArena_EmptyReset)->Unit(benchmark::kNanosecond);

// ---- A physics frame: 800 allocations of mixed sizes, about 95 KB. -------

const std::vector<size_t>& PhysicsSizes() {
  static const std::vector<size_t>* sizes = [] {
    auto* s = new std::vector<size_t>;
    std::mt19937 rng(42);
    std::uniform_int_distribution<size_t> dist(8, 230);  // Mean 119 B.
    for (int i = 0; i < 800; ++i) s->push_back(dist(rng));
    return s;
  }();
  return *sizes;
}

void BM_PhysicsFrame_FrameArena(benchmark::State& state) {
  FrameArena arena(&Cache());
  const std::vector<size_t>& sizes = PhysicsSizes();
  size_t bytes = 0;
  for (auto _ : state) {
    for (size_t size : sizes) benchmark::DoNotOptimize(arena.Allocate(size));
    bytes = arena.stats().bytes_requested;
    arena.Reset();
  }
  state.counters["batch"] = static_cast<double>(sizes.size());
  state.counters["bytes_per_frame"] = static_cast<double>(bytes);
}

void BM_PhysicsFrame_Malloc(benchmark::State& state) {
  const std::vector<size_t>& sizes = PhysicsSizes();
  std::vector<void*> blocks(sizes.size());
  for (auto _ : state) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      blocks[i] = std::malloc(sizes[i]);
      benchmark::DoNotOptimize(blocks[i]);
    }
    for (void* p : blocks) std::free(p);
  }
  state.counters["batch"] = static_cast<double>(sizes.size());
}

void BM_PhysicsFrame_PmrMonotonic(benchmark::State& state) {
  const std::vector<size_t>& sizes = PhysicsSizes();
  std::vector<std::byte> buffer(256 << 10);
  std::pmr::monotonic_buffer_resource resource(buffer.data(), buffer.size());
  for (auto _ : state) {
    for (size_t size : sizes) {
      benchmark::DoNotOptimize(resource.allocate(size, 16));
    }
    resource.release();
  }
  state.counters["batch"] = static_cast<double>(sizes.size());
}

BENCHMARK(BM_PhysicsFrame_FrameArena)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PhysicsFrame_Malloc)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PhysicsFrame_PmrMonotonic)->Unit(benchmark::kMicrosecond);

// ---- Mixed alignments: objects of 7, 31 and 63 bytes. ----------------------
//
// Types of odd size have alignment 1, so the arena packs them with no
// padding; the variants that ask for 8 or 16 bytes show what a malloc-like
// alignment would cost. The waste counter is FrameArenaStats::waste_bytes
// over bytes_used, in percent.

struct Obj7 {
  char bytes[7];
};
struct Obj31 {
  char bytes[31];
};
struct Obj63 {
  char bytes[63];
};

void BM_MixedAlign_FrameArena(benchmark::State& state) {
  const size_t forced_alignment = static_cast<size_t>(state.range(0));
  FrameArena arena(&Cache());
  constexpr int kTriples = 1000;
  double waste_pct = 0;
  for (auto _ : state) {
    for (int i = 0; i < kTriples; ++i) {
      if (forced_alignment == 0) {
        benchmark::DoNotOptimize(arena.Create<Obj7>());
        benchmark::DoNotOptimize(arena.Create<Obj31>());
        benchmark::DoNotOptimize(arena.Create<Obj63>());
      } else {
        benchmark::DoNotOptimize(arena.Allocate(7, forced_alignment));
        benchmark::DoNotOptimize(arena.Allocate(31, forced_alignment));
        benchmark::DoNotOptimize(arena.Allocate(63, forced_alignment));
      }
    }
    const FrameArenaStats stats = arena.stats();
    waste_pct = 100.0 * static_cast<double>(stats.waste_bytes) /
                static_cast<double>(stats.bytes_used);
    arena.Reset();
  }
  state.counters["batch"] = 3 * kTriples;
  state.counters["waste_pct"] = waste_pct;
}
// 0 = natural alignment (alignof = 1); 8 and 16 = forced.
BENCHMARK(BM_MixedAlign_FrameArena)
    ->Arg(0)
    ->Arg(8)
    ->Arg(16)
    ->Unit(benchmark::kMicrosecond);

void BM_MixedAlign_Malloc(benchmark::State& state) {
  constexpr int kTriples = 1000;
  std::vector<void*> blocks(3 * kTriples);
  for (auto _ : state) {
    for (int i = 0; i < kTriples; ++i) {
      blocks[3 * i] = std::malloc(7);
      blocks[3 * i + 1] = std::malloc(31);
      blocks[3 * i + 2] = std::malloc(63);
      benchmark::DoNotOptimize(blocks[3 * i + 2]);
    }
    for (void* p : blocks) std::free(p);
  }
  state.counters["batch"] = 3 * kTriples;
}
BENCHMARK(BM_MixedAlign_Malloc)->Unit(benchmark::kMicrosecond);

// ---- A frame that grows into new memory
// --------------------------------------------------------------
// The first frame, or one bigger than any before: 8 MiB in 4 KiB pieces,
// each written in full, from an arena on a fresh cache over fresh mmap
// memory (everything unmapped again after the frame). Arg 1: the cache
// commits each chunk when it takes it from the source (the default);
// arg 0: the pages fault in one by one as the frame first writes them.

void BM_GrowthFrame(benchmark::State& state) {
  const bool populate = state.range(0) != 0;
  constexpr size_t kFrameBytes = size_t{8} << 20;
  constexpr size_t kPiece = 4096;
  for (auto _ : state) {
    MmapMemorySource source;
    ChunkCache cache(&source, ChunkCacheOptions().set_populate(populate));
    {
      FrameArena arena(&cache);
      for (size_t done = 0; done < kFrameBytes; done += kPiece) {
        void* p = arena.Allocate(kPiece);
        std::memset(p, static_cast<int>(done >> 12), kPiece);
        benchmark::DoNotOptimize(p);
      }
      benchmark::ClobberMemory();
    }
    cache.Trim(0);
  }
  state.counters["MiB_per_frame"] = static_cast<double>(kFrameBytes >> 20);
}
BENCHMARK(BM_GrowthFrame)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// ---- Ratio table
// --------------------------------------------------------------

using RecordingReporter = alloc_internal::MedianReporter;

void PrintRatios(const RecordingReporter& r) {
  std::printf("\nRatios measured in this run (higher = frame arena faster)\n");
  std::printf("%-8s %10s %12s %12s %12s %10s %10s\n", "size", "arena ns",
              "malloc+free", "batch free", "pmr mono", "x pair", "x batch");
  for (size_t size = 16; size <= (64 << 10); size *= 2) {
    const std::string arg = "/" + std::to_string(size);
    const double arena = r.ns("BM_FrameArena_Alloc" + arg);
    const double pair = r.ns("BM_Malloc_FreeEach" + arg);
    const double batch = r.ns("BM_Malloc_FreeAtEnd" + arg);
    const double pmr = r.ns("BM_PmrMonotonic_Alloc" + arg);
    if (arena <= 0) continue;
    std::printf("%-8zu %10.2f %12.2f %12.2f %12.2f %9.1fx %9.1fx\n", size,
                arena, pair, batch, pmr, pair / arena, batch / arena);
  }
  for (int size : {16, 64, 256}) {
    const std::string arg = "/" + std::to_string(size);
    const double outofline = r.ns("BM_FrameArena_AllocOutOfLine" + arg);
    std::printf(
        "Out-of-line call per allocation, %d B: %.2f ns (%.1fx faster than "
        "malloc+free)\n",
        size, outofline, r.ns("BM_Malloc_FreeEach" + arg) / outofline);
  }
  const double empty_reset = r.ns("BM_FrameArena_EmptyReset");
  const double small = r.ns("BM_FrameArena_Alloc/64");
  std::printf(
      "\nEmpty frame (Reset with nothing allocated): %.2f ns = %.2f small "
      "(64 B) allocations\n",
      empty_reset, small > 0 ? empty_reset / small : 0.0);
  const double phys_arena = r.ns("BM_PhysicsFrame_FrameArena");
  const double phys_malloc = r.ns("BM_PhysicsFrame_Malloc");
  const double phys_pmr = r.ns("BM_PhysicsFrame_PmrMonotonic");
  std::printf(
      "Physics frame (800 allocations, %.0f bytes): arena %.1f us, malloc "
      "%.1f us (%.1fx), pmr monotonic %.1f us (%.1fx)\n",
      r.counter("BM_PhysicsFrame_FrameArena:bytes_per_frame"),
      phys_arena * 800 / 1000, phys_malloc * 800 / 1000,
      phys_malloc / phys_arena, phys_pmr * 800 / 1000, phys_pmr / phys_arena);
  std::printf(
      "Mixed alignments (7/31/63 B): waste %.2f%% natural, %.2f%% at 8 B, "
      "%.2f%% at 16 B; arena %.2f ns/alloc vs malloc %.2f (%.1fx)\n",
      r.counter("BM_MixedAlign_FrameArena/0:waste_pct"),
      r.counter("BM_MixedAlign_FrameArena/8:waste_pct"),
      r.counter("BM_MixedAlign_FrameArena/16:waste_pct"),
      r.ns("BM_MixedAlign_FrameArena/0"), r.ns("BM_MixedAlign_Malloc"),
      r.ns("BM_MixedAlign_Malloc") / r.ns("BM_MixedAlign_FrameArena/0"));
  const double grow_lazy = r.ns("BM_GrowthFrame/0");
  const double grow_populated = r.ns("BM_GrowthFrame/1");
  std::printf(
      "Frame growing into 8 MiB of new memory: %.0f us with chunks committed "
      "on acquisition (ChunkCacheOptions::populate), %.0f us faulting page "
      "by page (%.1fx)\n",
      grow_populated / 1000, grow_lazy / 1000,
      grow_populated > 0 ? grow_lazy / grow_populated : 0.0);
}

}  // namespace
}  // namespace framealloc

int main(int argc, char** argv) {
  framealloc::alloc_internal::MedianReporter reporter;
  if (!framealloc::alloc_internal::RunWithRobustDefaults(
          argc, argv, "--benchmark_min_time=0.1", &reporter)) {
    return 1;
  }
  framealloc::PrintRatios(reporter);
  benchmark::Shutdown();
  return 0;
}
