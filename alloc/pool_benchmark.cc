// Pool and frame allocation through SmartAlloc against the process's
// malloc, on one and two threads, plus a producer/consumer case where every
// block is freed on another thread.
//
// The same source is built four times (see BUILD.bazel): with glibc's
// malloc, and linked with mimalloc, jemalloc or tcmalloc, each of which
// replaces malloc for its whole process. //alloc:pool_benchmark_suite runs
// the four and prints one table of ratios:
//   ./bazelw run -c opt //alloc:pool_benchmark_suite
// Each binary ends with machine-readable lines "RESULT <name> <ns>", the
// median ns per operation over interleaved repetitions.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "alloc/internal/benchmark_util.h"
#include "alloc/smart_alloc.h"
#include "benchmark/benchmark.h"

namespace framealloc {
namespace {

SmartAlloc& Alloc() {
  static SmartAlloc* alloc = new SmartAlloc();
  return *alloc;
}

constexpr int kBatch = 256;  // Operations per iteration.

// Alloc/free pairs through the thread-local pool path.
void BM_SmartPool_Pair(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  SmartAlloc& alloc = Alloc();
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      void* p = alloc.pool_allocate(size, 8);
      benchmark::DoNotOptimize(p);
      alloc.pool_deallocate(p, size, 8);
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  // Operations per iteration, averaged (not summed) over threads.
  state.counters["batch"] =
      benchmark::Counter(kBatch, benchmark::Counter::kAvgThreads);
}

void BM_Malloc_Pair(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      void* p = std::malloc(size);
      benchmark::DoNotOptimize(p);
      std::free(p);
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  // Operations per iteration, averaged (not summed) over threads.
  state.counters["batch"] =
      benchmark::Counter(kBatch, benchmark::Counter::kAvgThreads);
}

// kBatch allocations, then kBatch frees (a working set, not one block).
void BM_SmartPool_Batch(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  SmartAlloc& alloc = Alloc();
  void* blocks[kBatch];
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      blocks[i] = alloc.pool_allocate(size, 8);
      benchmark::DoNotOptimize(blocks[i]);
    }
    for (int i = 0; i < kBatch; ++i) alloc.pool_deallocate(blocks[i], size, 8);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  // Operations per iteration, averaged (not summed) over threads.
  state.counters["batch"] =
      benchmark::Counter(kBatch, benchmark::Counter::kAvgThreads);
}

void BM_Malloc_Batch(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  void* blocks[kBatch];
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      blocks[i] = std::malloc(size);
      benchmark::DoNotOptimize(blocks[i]);
    }
    for (int i = 0; i < kBatch; ++i) std::free(blocks[i]);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  // Operations per iteration, averaged (not summed) over threads.
  state.counters["batch"] =
      benchmark::Counter(kBatch, benchmark::Counter::kAvgThreads);
}

#define FRAMEALLOC_POOL_ARGS                                        \
  RangeMultiplier(8)->Range(8, 4096)->Threads(1)->Threads(2)->Unit( \
      benchmark::kNanosecond)
BENCHMARK(BM_SmartPool_Pair)->FRAMEALLOC_POOL_ARGS;
BENCHMARK(BM_Malloc_Pair)->FRAMEALLOC_POOL_ARGS;
BENCHMARK(BM_SmartPool_Batch)->FRAMEALLOC_POOL_ARGS;
BENCHMARK(BM_Malloc_Batch)->FRAMEALLOC_POOL_ARGS;

// Frame allocation through SmartAlloc (per-thread arenas), 1 and 2 threads:
// per-thread cost must not grow with threads.
void BM_SmartFrame_Alloc(benchmark::State& state) {
  SmartAlloc& alloc = Alloc();
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      benchmark::DoNotOptimize(alloc.frame_allocate(64, 16));
    }
    alloc.end_frame();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  // Operations per iteration, averaged (not summed) over threads.
  state.counters["batch"] =
      benchmark::Counter(kBatch, benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_SmartFrame_Alloc)
    ->Threads(1)
    ->Threads(2)
    ->Unit(benchmark::kNanosecond);

// Producer/consumer: one thread allocates, another frees, through a
// single-producer single-consumer ring. Manual time: the producer's wall
// time for kBlocks blocks to be allocated and freed.
template <bool kPool>
void ProducerConsumer(benchmark::State& state) {
  constexpr size_t kBlocks = 200000;
  constexpr size_t kRing = 1024;
  const size_t size = static_cast<size_t>(state.range(0));
  SmartAlloc& alloc = Alloc();
  for (auto _ : state) {
    std::vector<std::atomic<void*>> ring(kRing);
    for (auto& slot : ring) slot.store(nullptr, std::memory_order_relaxed);
    const auto start = std::chrono::steady_clock::now();
    std::thread consumer([&] {
      size_t head = 0;
      for (size_t n = 0; n < kBlocks; ++n) {
        void* p;
        // Acquire: the block's contents were written before publication.
        while ((p = ring[head].load(std::memory_order_acquire)) == nullptr) {
        }
        ring[head].store(nullptr, std::memory_order_relaxed);
        head = (head + 1) % kRing;
        if (kPool) {
          alloc.pool_deallocate(p, size, 8);
        } else {
          std::free(p);
        }
      }
    });
    size_t tail = 0;
    for (size_t n = 0; n < kBlocks; ++n) {
      void* p = kPool ? alloc.pool_allocate(size, 8) : std::malloc(size);
      static_cast<char*>(p)[0] = 1;
      while (ring[tail].load(std::memory_order_relaxed) != nullptr) {
      }
      ring[tail].store(p, std::memory_order_release);
      tail = (tail + 1) % kRing;
    }
    consumer.join();
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
  }
  state.counters["batch"] = kBlocks;
}
void BM_SmartPool_ProducerConsumer(benchmark::State& state) {
  ProducerConsumer<true>(state);
}
void BM_Malloc_ProducerConsumer(benchmark::State& state) {
  ProducerConsumer<false>(state);
}
BENCHMARK(BM_SmartPool_ProducerConsumer)
    ->Arg(64)
    ->UseManualTime()
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Malloc_ProducerConsumer)
    ->Arg(64)
    ->UseManualTime()
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace framealloc

int main(int argc, char** argv) {
  framealloc::alloc_internal::MedianReporter reporter;
  if (!framealloc::alloc_internal::RunWithRobustDefaults(
          argc, argv, "--benchmark_min_time=0.05", &reporter)) {
    return 1;
  }
  // Machine-readable lines for the suite driver, after the console output.
  for (const auto& [name, ns] : reporter.all()) {
    std::printf("RESULT %s %.3f\n", name.c_str(), ns);
  }
  benchmark::Shutdown();
  return 0;
}
