// Fault-injection sweeps: whole workloads run once per memory-source call,
// with that call failing (and, separately, with the source running dry from
// that call on), over the frame arena, the pools and SmartAlloc.
//
// For: proving that every failure of the memory source surfaces as a clear
// error (a try_* null, or a report through the error handler for never-null
// calls: never an abort), that nothing the workload holds is lost or
// corrupted by a failure, that the allocator serves again once the fault is
// over (the next allocation succeeds, frames still reset), and that every
// byte goes back to the source in the end (checked here, and by
// LeakSanitizer under --config=asan). Not for: failures of the C++ heap
// inside the library's own bookkeeping (absl containers, std::vector; see
// docs/reliability.md), or the job runtime.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/test_util.h"
#include "alloc/pool_manager.h"
#include "alloc/smart_alloc.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

using alloc_internal::ErrorRecorder;
using alloc_internal::FailingBackend;
using alloc_internal::FailingSource;

// Blocks a workload holds, each filled with a byte of its own; Verify()
// finds any that lost its contents.
class Held {
 public:
  void Add(void* p, size_t size) {
    const auto fill = static_cast<unsigned char>(0x11 + blocks_.size() * 7);
    std::memset(p, fill, size);
    blocks_.push_back({static_cast<unsigned char*>(p), size, fill});
  }
  // Blocks whose bytes changed since Add.
  int Corrupted() const {
    int bad = 0;
    for (const Entry& e : blocks_) {
      for (size_t i = 0; i < e.size; ++i) {
        if (e.data[i] != e.fill) {
          ++bad;
          break;
        }
      }
    }
    return bad;
  }
  void Clear() { blocks_.clear(); }

 private:
  struct Entry {
    unsigned char* data;
    size_t size;
    unsigned char fill;
  };
  std::vector<Entry> blocks_;
};

// What one run of a workload saw.
struct Outcome {
  int nulls = 0;      // try_* calls that returned null.
  int corrupted = 0;  // Held blocks whose contents changed.
  // Source calls the workload made (before the fault-free rerun).
  int64_t calls = 0;
};

// Totals of a sweep, printed for docs/reliability.md.
struct SweepTotals {
  int runs = 0;
  int64_t faults = 0;
  int64_t nulls = 0;
  void Print(const char* name) const {
    std::printf(
        "fault sweep %s: %d runs, %lld faults injected, %lld nulls, "
        "0 blocks lost\n",
        name, runs, static_cast<long long>(faults),
        static_cast<long long>(nulls));
  }
};

// ---- FrameArena: chunk growth, oversize blocks, marks, three frames -------

Outcome ArenaWorkload(FrameArena& arena) {
  Outcome out;
  Held held;
  const size_t sizes[] = {100, 3000, 40000, 12, 5000, 100000, 800, 2048, 16};
  for (int frame = 0; frame < 3; ++frame) {
    for (int round = 0; round < 3; ++round) {
      for (size_t size : sizes) {
        void* p = arena.TryAllocate(size, size % 3 == 0 ? 64 : 16);
        if (p == nullptr) {
          ++out.nulls;
        } else {
          held.Add(p, size);
        }
      }
      ArenaMark mark = arena.Mark();
      void* scratch = arena.TryAllocate(40000, 16);
      if (scratch == nullptr) ++out.nulls;
      EXPECT_TRUE(arena.Rewind(mark).ok());
    }
    out.corrupted += held.Corrupted();
    held.Clear();
    arena.Reset();
  }
  return out;
}

FrameArenaOptions SmallChunks() {
  return FrameArenaOptions()
      .set_initial_chunk_size(4096)
      .set_max_chunk_size(32768)
      .set_retain_bytes(8192);
}

// Runs `workload` with faults at every call (window 1) or from every call
// on (`dry`), then once more without faults on the same allocator. With
// `exact`, a single fault must fail exactly one request; SmartAlloc retries
// a pool refill once, so there a single fault may fail none.
template <typename Setup>
SweepTotals Sweep(Setup setup, bool dry, bool exact = true) {
  // The number of source calls of a fault-free run.
  int64_t calls;
  {
    FailingSource source;
    Outcome clean = setup(source);
    EXPECT_EQ(clean.nulls, 0);
    calls = clean.calls;
  }
  EXPECT_GT(calls, 3);
  SweepTotals totals;
  for (int64_t k = 1; k <= calls; ++k) {
    FailingSource source;
    source.FailCalls(k, dry ? -1 : 1);
    ErrorRecorder errors;
    Outcome out = setup(source);
    SCOPED_TRACE(testing::Message() << "fault at call " << k);
    EXPECT_EQ(out.corrupted, 0);
    if (dry) {
      EXPECT_GE(out.nulls, 1);
    } else if (exact) {
      EXPECT_EQ(out.nulls, 1);  // Exactly the request that met the fault.
    } else {
      EXPECT_LE(out.nulls, 1);
    }
    EXPECT_EQ(errors.count(), 0u);  // try_* calls never report.
    EXPECT_EQ(source.stats().bytes_outstanding, 0u);
    ++totals.runs;
    totals.faults += source.injected_faults();
    totals.nulls += out.nulls;
  }
  return totals;
}

TEST(FaultInjectionTest, FrameArenaSurvivesAFaultAtEveryCall) {
  for (bool dry : {false, true}) {
    SweepTotals totals = Sweep(
        [](FailingSource& source) {
          ChunkCache cache(&source,
                           ChunkCacheOptions().set_max_cached_bytes(0));
          Outcome out;
          {
            FrameArena arena(&cache, SmallChunks());
            out = ArenaWorkload(arena);
            out.calls = source.calls();
            // The fault is over: the same arena serves the whole workload.
            source.StopFailing();
            Outcome after = ArenaWorkload(arena);
            EXPECT_EQ(after.nulls, 0);
            EXPECT_EQ(after.corrupted, 0);
          }
          EXPECT_EQ(cache.stats().in_use_blocks, 0u);
          return out;
        },
        dry);
    totals.Print(dry ? "frame arena (dry source)" : "frame arena");
  }
}

// ---- PoolManager: every class, two thread caches, cross-cache frees -------

Outcome PoolWorkload(PoolManager& pool) {
  Outcome out;
  PoolManager::ThreadCache a(&pool), b(&pool);
  std::vector<std::pair<void*, int>> live;
  Held held;
  for (int round = 0; round < 2; ++round) {
    for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
      for (int i = 0; i < 40; ++i) {
        void* p = (i % 2 == 0 ? a : b).Allocate(cls);
        if (p == nullptr) {
          ++out.nulls;
          continue;
        }
        held.Add(p, PoolManager::ClassSize(cls));
        live.emplace_back(p, cls);
      }
    }
    out.corrupted += held.Corrupted();
    held.Clear();
    // Freed through the other cache: cross-cache frees, flushes, transfers.
    for (size_t i = 0; i < live.size(); ++i) {
      (i % 2 == 0 ? b : a).Free(live[i].first, live[i].second);
    }
    live.clear();
  }
  a.Flush();
  b.Flush();
  return out;
}

TEST(FaultInjectionTest, PoolsSurviveAFaultAtEveryCall) {
  for (bool dry : {false, true}) {
    SweepTotals totals = Sweep(
        [](FailingSource& source) {
          ChunkCache cache(&source,
                           ChunkCacheOptions().set_max_cached_bytes(0));
          Outcome out;
          {
            // Fixed cache limits: growing ones would hold each round's
            // blocks in the caches, and no batch would be flushed.
            PoolManager pool(&cache, PoolOptions()
                                         .set_page_size(16384)
                                         .set_batch(8)
                                         .set_max_cache_bytes(0)
                                         .set_transfer_batches(2));
            out = PoolWorkload(pool);
            out.calls = source.calls();
            source.StopFailing();
            Outcome after = PoolWorkload(pool);
            EXPECT_EQ(after.nulls, 0);
            EXPECT_EQ(after.corrupted, 0);
            const PoolStats stats = pool.stats();
            for (const PoolClassStats& c : stats.classes) {
              EXPECT_EQ(c.blocks_out, 0u);  // Every block came back.
            }
            EXPECT_EQ(stats.dropped_frees, 0u);
            pool.ReleaseEmptyPages();
            EXPECT_EQ(pool.stats().pages, 0u);
          }
          EXPECT_EQ(cache.stats().in_use_blocks, 0u);
          return out;
        },
        dry);
    totals.Print(dry ? "pools (dry source)" : "pools");
  }
}

// ---- SmartAlloc: frames in flight, pools, heap, scoped arenas -------------

AllocConfig SmartConfig(MemorySource* source) {
  return AllocConfig()
      .set_source(source)
      .set_frames_in_flight(2)
      .set_arena(SmallChunks())
      .set_cache(ChunkCacheOptions().set_max_cached_bytes(1 << 16))
      .set_pool(PoolOptions().set_page_size(16384).set_batch(8));
}

Outcome SmartWorkload(SmartAlloc& alloc) {
  Outcome out;
  Held frame_held[2];  // By frame slot: frame N's memory lives through N + 1.
  std::vector<std::pair<void*, size_t>> pool_live;
  Held pool_held;
  for (int frame = 0; frame < 4; ++frame) {
    Held& held = frame_held[frame % 2];
    alloc.begin_frame();
    for (size_t size : {200, 9000, 50000, 64, 120000, 3000}) {
      void* p = alloc.try_frame_allocate(size, 32);
      if (p == nullptr) {
        ++out.nulls;
      } else {
        held.Add(p, size);
      }
    }
    for (size_t size : {8, 24, 100, 500, 1500, 4000, 6000}) {
      for (int i = 0; i < 6; ++i) {
        void* p = alloc.try_pool_allocate(size);
        if (p == nullptr) {
          ++out.nulls;
          continue;
        }
        pool_held.Add(p, size);
        pool_live.emplace_back(p, size);
      }
    }
    void* heap = alloc.try_heap_alloc(10000);
    EXPECT_NE(heap, nullptr);  // The heap is not the source: never faulted.
    {
      std::unique_ptr<FrameArena> scoped = alloc.new_scoped_arena();
      Held scoped_held;
      for (size_t size : {700, 30000, 90000}) {
        void* p = scoped->TryAllocate(size);
        if (p == nullptr) {
          ++out.nulls;
        } else {
          scoped_held.Add(p, size);
        }
      }
      out.corrupted += scoped_held.Corrupted();
    }
    alloc.heap_free(heap);
    out.corrupted += frame_held[0].Corrupted() + frame_held[1].Corrupted() +
                     pool_held.Corrupted();
    // Half the pool blocks go each frame.
    for (size_t i = 0; i < pool_live.size() / 2; ++i) {
      alloc.pool_deallocate(pool_live[i].first, pool_live[i].second);
    }
    pool_live.erase(
        pool_live.begin(),
        pool_live.begin() + static_cast<ptrdiff_t>(pool_live.size() / 2));
    pool_held.Clear();
    for (auto [p, size] : pool_live) pool_held.Add(p, size);
    alloc.end_frame();
    frame_held[(frame + 1) % 2].Clear();  // Frame N - 1's memory is gone.
  }
  for (auto [p, size] : pool_live) alloc.pool_deallocate(p, size);
  alloc.end_frame();
  alloc.end_frame();
  return out;
}

TEST(FaultInjectionTest, SmartAllocSurvivesAFaultAtEveryCall) {
  for (bool dry : {false, true}) {
    SweepTotals totals = Sweep(
        [](FailingSource& source) {
          Outcome out;
          {
            std::unique_ptr<SmartAlloc> alloc =
                SmartAlloc::Create(SmartConfig(&source)).value();
            out = SmartWorkload(*alloc);
            out.calls = source.calls();
            source.StopFailing();
            Outcome after = SmartWorkload(*alloc);
            EXPECT_EQ(after.nulls, 0);
            EXPECT_EQ(after.corrupted, 0);
            const AllocStats stats = alloc->stats();
            EXPECT_EQ(stats.pool.allocations + stats.heap.allocations,
                      stats.pool.frees + stats.heap.frees);
            EXPECT_EQ(stats.pool.live_bytes(), 0);
          }
          return out;
        },
        dry, /*exact=*/false);
    totals.Print(dry ? "SmartAlloc (dry source)" : "SmartAlloc");
  }
}

// The backend boundary: a backend answering Error at the k-th request.
TEST(FaultInjectionTest, SmartAllocSurvivesABackendErrorAtEveryCall) {
  int64_t calls;
  {
    auto backend = std::make_shared<FailingBackend>();
    std::unique_ptr<SmartAlloc> alloc =
        SmartAlloc::Create(SmartConfig(nullptr).set_backend(backend)).value();
    EXPECT_EQ(SmartWorkload(*alloc).nulls, 0);
    calls = backend->calls();
  }
  EXPECT_GT(calls, 3);
  SweepTotals totals;
  for (int64_t k = 1; k <= calls; ++k) {
    auto backend = std::make_shared<FailingBackend>();
    backend->FailCalls(k);
    ErrorRecorder errors;
    std::unique_ptr<SmartAlloc> alloc =
        SmartAlloc::Create(SmartConfig(nullptr).set_backend(backend)).value();
    Outcome out = SmartWorkload(*alloc);
    EXPECT_LE(out.nulls, 1) << "backend error at call " << k;
    EXPECT_EQ(out.corrupted, 0);
    EXPECT_EQ(SmartWorkload(*alloc).nulls, 0);
    EXPECT_EQ(errors.count(), 0u);
    ++totals.runs;
    totals.faults += backend->injected_faults();
    totals.nulls += out.nulls;
  }
  totals.Print("SmartAlloc (backend)");
}

// Never-null calls: the fault reaches the error handler as an out-of-memory
// report (here a handler that throws, which error.h allows), nothing aborts,
// and the allocator goes on.
struct OutOfMemory {
  ErrorKind kind;
};

TEST(FaultInjectionTest, NeverNullCallsReportTheFaultAndRecover) {
  SweepTotals totals;
  for (int64_t k = 1; k <= 12; ++k) {
    FailingSource source;
    source.FailCalls(k);
    ScopedErrorHandler handler([](const ErrorReport& report,
                                  void*) { throw OutOfMemory{report.kind}; },
                               nullptr);
    std::unique_ptr<SmartAlloc> alloc =
        SmartAlloc::Create(SmartConfig(&source)).value();
    int reports = 0;
    for (int i = 0; i < 12; ++i) {
      try {
        std::memset(alloc->frame_allocate(20000), 1, 20000);
        alloc->pool_free(alloc->pool_alloc<int64_t>(7));
      } catch (const OutOfMemory& e) {
        EXPECT_EQ(e.kind, ErrorKind::kOutOfMemory);
        ++reports;
      }
    }
    // The pool retries a refill once, so a fault on a page may be absorbed.
    EXPECT_LE(reports, 1) << "fault at call " << k;
    alloc->end_frame();
    EXPECT_NE(alloc->frame_allocate(20000), nullptr);  // Serves again.
    alloc->end_frame();
    ++totals.runs;
    totals.faults += source.injected_faults();
    totals.nulls += reports;
  }
  totals.Print("never-null calls (reports)");
}

// Creating a SmartAlloc touches no memory source: it succeeds on a dry one,
// whose first request then fails cleanly, and serves once the source does.
TEST(FaultInjectionTest, CreationNeedsNoSourceMemory) {
  FailingSource source;
  source.FailCalls(1, -1);
  ErrorRecorder errors;
  absl::StatusOr<std::unique_ptr<SmartAlloc>> alloc =
      SmartAlloc::Create(SmartConfig(&source));
  ASSERT_TRUE(alloc.ok());
  EXPECT_EQ(source.calls(), 0);
  EXPECT_EQ((*alloc)->try_frame_allocate(64), nullptr);
  EXPECT_EQ((*alloc)->try_pool_allocate(64), nullptr);
  EXPECT_EQ((*alloc)->new_scoped_arena()->TryAllocate(64), nullptr);
  source.StopFailing();
  EXPECT_NE((*alloc)->try_frame_allocate(64), nullptr);
  void* p = (*alloc)->try_pool_allocate(64);
  EXPECT_NE(p, nullptr);
  (*alloc)->pool_deallocate(p, 64);
  (*alloc)->end_frame();
  EXPECT_EQ(errors.count(), 0u);
}

}  // namespace
}  // namespace framealloc
