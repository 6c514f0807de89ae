// libFuzzer target: a PoolManager with two ThreadCaches, one on the calling
// thread and one on a helper thread, over a source that fails on demand,
// driven by a sequence of operations and checked against fuzz_model.h's
// reference model.
//
// For: finding inputs that make the pools hand out a block twice (overlap),
// misalign it, lose a block or its contents across thread caches, transfer
// caches and pages, miscount (every class's blocks_out against the model
// plus both caches), report a misuse that is none, or fail to give every
// page back at the end, or break a cache's limits (each between its start
// and its ceiling, above its count, their sum within the thread budget; the
// raises of both caches equal to the pool's count and within its budget).
// The options (page size, batch, cache bytes, transfer batches, limit
// growth, thread budget, pool-wide budget) come from the input's first three
// bytes, small values included, so flushes, transfer overflows, page refills
// and limit raises and cuts happen often. Operations: allocate on either
// thread, free on either thread (blocks handed over between them: cross-thread
// frees), bursts allocated on one thread and freed on the other, Flush of
// either cache, ReleaseEmptyPages, DrainTransferCaches, source faults and their
// end, statistics and Owns. Not for: misuse detection (a double free corrupts a
// thread cache's list before it can be detected, by design; pool_manager_test
// covers misuse) or SmartAlloc's pool API (smart_alloc_fuzzer).
//
// Build and run: see docs/reliability.md (`--config=fuzz`).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "alloc/chunk_cache.h"
#include "alloc/fuzz/fuzz_model.h"
#include "alloc/internal/test_util.h"
#include "alloc/pool_manager.h"

namespace framealloc {
namespace fuzz_internal {
namespace {

using ThreadCache = PoolManager::ThreadCache;

class Driver {
 public:
  explicit Driver(FuzzInput* in) : in_(in) {
    const uint8_t a = in_->Byte();
    const uint8_t b = in_->Byte();
    PoolOptions options;
    options.page_size = (size_t{16} << 10) << (a % 3);
    options.batch = 1 + (a >> 2) % 32;
    options.cache_bytes = (b % 4) == 0 ? 0 : size_t{256} << (b % 8);
    options.transfer_batches = (b >> 3) % 5;
    // Limits fixed, growing freely, or growing within a small thread budget
    // (where raises take room from other classes).
    const uint8_t g = in_->Byte();
    options.max_cache_bytes = (g % 3) == 0 ? 0 : size_t{1024} << (g % 8);
    options.thread_cache_bytes =
        (g & 0x40) ? size_t{4} << 20 : size_t{16} << 10 << ((g >> 3) % 4);
    // A pool-wide allowance the two caches compete for (one that binds at
    // once, one that lets one cache raise fully and the other in part), or
    // the default.
    options.total_thread_cache_bytes = (g & 0x80) ? size_t{4} << 10
                                       : (g & 0x20)
                                           ? options.thread_cache_bytes / 2 * 3
                                           : size_t{32} << 20;
    cache_ = std::make_unique<ChunkCache>(
        &source_, ChunkCacheOptions().set_max_cached_bytes(
                      (a & 0x80) ? 0 : size_t{1} << 20));
    pool_ = std::make_unique<PoolManager>(cache_.get(), options);
    main_ = std::make_unique<ThreadCache>(pool_.get());
    OnHelper([&] { helper_ = std::make_unique<ThreadCache>(pool_.get()); });
  }

  void Run() {
    for (int steps = 0; !in_->done() && steps < 4096; ++steps) Step();
    Finish();
  }

 private:
  static void OnHelper(const std::function<void()>& fn) {
    HelperThread::Get().Run(fn);
  }
  int Class() { return in_->Byte() % PoolManager::kNumClasses; }

  // `armed`: whether a fault could have hit the call (read right after it).
  void Add(void* p, int cls, bool armed) {
    if (p == nullptr) {
      FUZZ_CHECK(armed, "Allocate(class %d) failed with no fault armed", cls);
      return;
    }
    const size_t size = PoolManager::ClassSize(cls);
    live_.Add(p, size, size, nullptr, cls);
  }
  // Picks up to `n` live blocks (of class `cls`, or any when cls < 0) and
  // takes them out of the model (checking their contents).
  std::vector<std::pair<void*, int>> Take(int n, int cls) {
    std::vector<std::pair<void*, int>> taken;
    for (int k = 0; k < n; ++k) {
      void* p = live_.Pick(in_->U16(), [&](const LiveBlock& b) {
        return cls < 0 || b.kind == cls;
      });
      if (p == nullptr) break;
      taken.emplace_back(p, live_.Remove(p).kind);
    }
    return taken;
  }

  void Step() {
    uint8_t op = in_->Byte() % 16;
    if (!live_.HasRoom() && op <= 3) op = 6;  // Free instead.
    FUZZ_TRACE("op %d (%zu live)", op, live_.size());
    switch (op) {
      case 0:
      case 1:
      case 2: {
        const int cls = Class();
        void* p = main_->Allocate(cls);
        Add(p, cls, source_.armed());
        break;
      }
      case 3: {  // The helper allocates; its blocks come here.
        const int cls = Class();
        const int n = 1 + in_->Byte() % 16;
        std::vector<std::pair<void*, bool>> got;
        OnHelper([&] {
          for (int k = 0; k < n; ++k) {
            void* p = helper_->Allocate(cls);
            got.emplace_back(p, source_.armed());
          }
        });
        for (auto [p, armed] : got) Add(p, cls, armed);
        break;
      }
      case 4:
      case 5: {
        for (auto [p, cls] : Take(1 + in_->Byte() % 4, -1)) main_->Free(p, cls);
        break;
      }
      case 6: {  // Cross-thread frees: blocks handed to the helper.
        auto taken = Take(1 + in_->Byte() % 16, -1);
        OnHelper([&] {
          for (auto [p, cls] : taken) helper_->Free(p, cls);
        });
        break;
      }
      case 7: {  // A burst on one thread, freed on the other.
        const int cls = Class();
        const int n = 1 + in_->Byte() % 200;
        const bool from_main = in_->Byte() & 1;
        std::vector<std::pair<void*, bool>> got;
        auto allocate = [&](ThreadCache* tc) {
          for (int k = 0; k < n; ++k) {
            void* p = tc->Allocate(cls);
            got.emplace_back(p, source_.armed());
          }
        };
        if (from_main) {
          allocate(main_.get());
        } else {
          OnHelper([&] { allocate(helper_.get()); });
        }
        for (auto [p, armed] : got) Add(p, cls, armed);
        auto taken = Take(n, cls);
        if (from_main) {
          OnHelper([&] {
            for (auto [p, c] : taken) helper_->Free(p, c);
          });
        } else {
          for (auto [p, c] : taken) main_->Free(p, c);
        }
        break;
      }
      case 8:
        main_->Flush();
        break;
      case 9:
        OnHelper([&] { helper_->Flush(); });
        break;
      case 10:
        pool_->ReleaseEmptyPages(in_->Byte() % 2);
        live_.CheckAll();
        break;
      case 11:
        pool_->DrainTransferCaches();
        live_.CheckAll();
        break;
      case 12: {
        const uint8_t n = in_->Byte();
        if (n & 0x80) {
          source_.StopFailing();
          const int cls = Class();
          void* p = main_->Allocate(cls);
          FUZZ_CHECK(p != nullptr,
                     "Allocate(class %d) failed after the fault "
                     "window",
                     cls);
          Add(p, cls, false);
        } else {
          source_.FailNext(n % 8 == 7 ? -1 : 1 + n % 4);
        }
        break;
      }
      case 13: {
        void* p = live_.Pick(in_->U16(), [](const LiveBlock&) { return true; });
        if (p != nullptr) FUZZ_CHECK(pool_->Owns(p), "pool disowns %p", p);
        break;
      }
      default:
        CheckStats();
        break;
    }
  }

  // Every block out of the pages is live in the model or in a thread cache.
  void CheckStats() {
    live_.CheckAll();
    const PoolStats s = pool_->stats();
    size_t helper_cached[PoolManager::kNumClasses];
    OnHelper([&] {
      for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
        helper_cached[cls] = helper_->cached_blocks(cls);
      }
    });
    for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
      const size_t expected =
          live_.Count([&](const LiveBlock& b) { return b.kind == cls; }) +
          main_->cached_blocks(cls) + helper_cached[cls];
      const PoolClassStats& c = s.classes[cls];
      FUZZ_CHECK(c.blocks_out == expected,
                 "class %d: %zu blocks out, %zu live or cached", cls,
                 c.blocks_out, expected);
      FUZZ_CHECK(c.blocks_total == c.blocks_out + c.blocks_free_in_pages +
                                       c.blocks_in_transfer,
                 "class %d: blocks do not add up", cls);
    }
    FUZZ_CHECK(s.dropped_frees == 0, "%llu frees dropped",
               static_cast<unsigned long long>(s.dropped_frees));
    size_t raised = CheckLimits(*main_);
    OnHelper([&] { raised += CheckLimits(*helper_); });
    FUZZ_CHECK(raised == pool_->raised_cache_bytes(),
               "caches raised by %zu, the pool counts %zu", raised,
               pool_->raised_cache_bytes());
    FUZZ_CHECK(raised <= pool_->options().total_thread_cache_bytes,
               "caches raised by %zu over the pool's %zu", raised,
               pool_->options().total_thread_cache_bytes);
  }

  // A cache's limits: each between its start and its ceiling and above its
  // count, their sum as reported, and within the thread budget (or at the
  // starts, which always hold). Returns the bytes they are raised by.
  size_t CheckLimits(const ThreadCache& tc) {
    size_t sum = 0, starts = 0;
    for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
      const uint32_t limit = tc.cache_limit(cls);
      FUZZ_CHECK(
          limit >= pool_->CacheLimit(cls) && limit <= pool_->CacheCeiling(cls),
          "class %d: limit %u outside [%u, %u]", cls, limit,
          pool_->CacheLimit(cls), pool_->CacheCeiling(cls));
      FUZZ_CHECK(tc.cached_blocks(cls) <= limit,
                 "class %d: %zu blocks cached over the limit %u", cls,
                 tc.cached_blocks(cls), limit);
      sum += size_t{limit} * PoolManager::ClassSize(cls);
      starts += size_t{pool_->CacheLimit(cls)} * PoolManager::ClassSize(cls);
    }
    FUZZ_CHECK(sum == tc.limit_bytes(), "limit_bytes %zu, limits add to %zu",
               tc.limit_bytes(), sum);
    FUZZ_CHECK(sum <= std::max(starts, pool_->options().thread_cache_bytes),
               "limits add to %zu over the budget %zu", sum,
               pool_->options().thread_cache_bytes);
    return sum - starts;
  }

  void Finish() {
    source_.StopFailing();
    CheckStats();
    for (auto& [p, b] : live_.TakeAll()) main_->Free(p, b.kind);
    main_->Flush();
    OnHelper([&] { helper_->Flush(); });
    CheckStats();
    pool_->ReleaseEmptyPages(0);
    const PoolStats s = pool_->stats();
    FUZZ_CHECK(s.pages == 0, "%zu pages not empty with every block free",
               s.pages);
    OnHelper([&] { helper_.reset(); });
    main_.reset();
    pool_.reset();
    FUZZ_CHECK(cache_->stats().in_use_blocks == 0,
               "%zu blocks still acquired from the cache",
               cache_->stats().in_use_blocks);
    cache_.reset();
    FUZZ_CHECK(source_.stats().bytes_outstanding == 0,
               "%zu bytes never returned to the source",
               source_.stats().bytes_outstanding);
    FUZZ_CHECK(handler_.reports() == 0, "%zu error reports; last: %s",
               handler_.reports(), handler_.last_message().c_str());
  }

  FuzzInput* const in_;
  ReportHandler handler_;
  alloc_internal::FailingSource source_;
  std::unique_ptr<ChunkCache> cache_;
  std::unique_ptr<PoolManager> pool_;
  std::unique_ptr<ThreadCache> main_;
  std::unique_ptr<ThreadCache> helper_;  // Used on the helper thread only.
  LiveBlocks live_;
};

}  // namespace
}  // namespace fuzz_internal
}  // namespace framealloc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  framealloc::fuzz_internal::FuzzInput in(data, size);
  framealloc::fuzz_internal::Driver driver(&in);
  driver.Run();
  return 0;
}
