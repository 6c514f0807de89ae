// Tests of PoolManager and its ThreadCache: the class mapping and block
// alignment, batching between caches and pages, frees across threads (over
// several thread counts) with no block lost or handed out twice, page
// release, source exhaustion, misuse reports, and a counting source proving
// that steady use acquires no pages.
#include "alloc/pool_manager.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "alloc/internal/sanitizer.h"
#include "alloc/internal/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

using alloc_internal::CountingSource;
using alloc_internal::ErrorRecorder;
using ::testing::HasSubstr;
using ThreadCache = PoolManager::ThreadCache;

constexpr size_t k64K = size_t{64} << 10;

bool IsAligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

uintptr_t PageOf(const void* p, size_t page_size) {
  return reinterpret_cast<uintptr_t>(p) & ~(page_size - 1);
}

class PoolManagerTest : public ::testing::Test {
 protected:
  // Every test ends with its blocks freed and its caches flushed: the pool's
  // destructor would report anything still out (and abort, with the default
  // handler), and then every page must be back in the chunk cache.
  void TearDown() override {
    pool_.reset();
    EXPECT_EQ(cache_.stats().in_use_blocks, 0u);
    EXPECT_EQ(source_.stats().bytes_outstanding, cache_.stats().cached_bytes);
  }
  PoolManager& pool() { return *pool_; }
  void UseOptions(PoolOptions options) {
    pool_ = std::make_unique<PoolManager>(&cache_, options);
  }
  // Blocks out of every class (in use or in a thread cache).
  size_t BlocksOut() const {
    size_t out = 0;
    for (const PoolClassStats& c : pool_->stats().classes) out += c.blocks_out;
    return out;
  }

  CountingSource source_;
  ChunkCache cache_{&source_};
  std::unique_ptr<PoolManager> pool_ = std::make_unique<PoolManager>(&cache_);
};

using PoolManagerDeathTest = PoolManagerTest;

TEST_F(PoolManagerTest, ClassForRoundsSizeAndAlignmentUp) {
  static_assert(PoolManager::ClassFor(24, 8) == 2);  // Usable in constexpr.
  EXPECT_EQ(PoolManager::ClassFor(0, 1), 0);
  EXPECT_EQ(PoolManager::ClassFor(1, 1), 0);
  EXPECT_EQ(PoolManager::ClassFor(8, 8), 0);
  EXPECT_EQ(PoolManager::ClassFor(9, 1), 1);
  EXPECT_EQ(PoolManager::ClassFor(16, 16), 1);
  EXPECT_EQ(PoolManager::ClassFor(17, 8), 2);
  EXPECT_EQ(PoolManager::ClassFor(100, 4), 4);
  EXPECT_EQ(PoolManager::ClassFor(2049, 8), 9);
  EXPECT_EQ(PoolManager::ClassFor(4096, 8), 9);
  // The alignment wins when it is larger than the size.
  EXPECT_EQ(PoolManager::ClassFor(8, 64), 3);
  EXPECT_EQ(PoolManager::ClassFor(0, 4096), 9);
  EXPECT_EQ(PoolManager::ClassFor(24, 256), 5);
}

TEST_F(PoolManagerTest, ClassForRefusesWhatNoClassHonours) {
  EXPECT_EQ(PoolManager::ClassFor(4097, 8), -1);
  EXPECT_EQ(PoolManager::ClassFor(8, 8192), -1);
  EXPECT_EQ(PoolManager::ClassFor(SIZE_MAX, 8), -1);
  EXPECT_EQ(PoolManager::ClassFor(8, 0), -1);
  EXPECT_EQ(PoolManager::ClassFor(8, 3), -1);
  EXPECT_EQ(PoolManager::ClassFor(8, 24), -1);
}

TEST_F(PoolManagerTest, ClassSizesArePowersOfTwoFrom8To4096) {
  for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
    EXPECT_EQ(PoolManager::ClassSize(cls), size_t{8} << cls);
    EXPECT_EQ(PoolManager::ClassFor(PoolManager::ClassSize(cls), 1), cls);
  }
  EXPECT_EQ(PoolManager::ClassSize(PoolManager::kNumClasses - 1),
            PoolManager::kMaxBlockSize);
}

TEST_F(PoolManagerTest, EveryBlockIsAlignedToItsClassSize) {
  ThreadCache tc(&pool());
  for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
    const size_t size = PoolManager::ClassSize(cls);
    // A little over one page, so the second page is checked too.
    const size_t n = pool().BlocksPerPage(cls) + 5;
    std::vector<void*> blocks;
    for (size_t i = 0; i < n; ++i) {
      void* p = tc.Allocate(cls);
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(IsAligned(p, size)) << "class " << cls << " block " << i;
      EXPECT_TRUE(pool().Owns(p));
      std::memset(p, 0xab, size);  // The whole block is ours (ASan agrees).
      blocks.push_back(p);
    }
    EXPECT_EQ(pool().stats().classes[cls].pages, 2u);
    for (void* p : blocks) tc.Free(p, cls);
  }
}

TEST_F(PoolManagerTest, StatsDescribeEachClassExactly) {
  ThreadCache tc(&pool());
  void* p = tc.Allocate(5);  // 256 B: one refill of 32 blocks.
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.classes[0].blocks_per_page, (k64K - 64) / 8);
  EXPECT_EQ(stats.classes[3].blocks_per_page, (k64K - 64) / 64);
  EXPECT_EQ(stats.classes[9].blocks_per_page, 15u);  // 4 KiB header slot.
  const PoolClassStats& c = stats.classes[5];
  EXPECT_EQ(c.block_size, 256u);
  EXPECT_EQ(c.blocks_per_page, 255u);
  EXPECT_EQ(c.pages, 1u);
  EXPECT_EQ(c.empty_pages, 0u);
  EXPECT_EQ(c.blocks_total, 255u);
  EXPECT_EQ(c.blocks_free_in_pages, 255u - 32u);
  EXPECT_EQ(c.blocks_out, 32u);
  EXPECT_EQ(stats.pages, 1u);
  EXPECT_EQ(stats.page_bytes, k64K);
  EXPECT_EQ(stats.refills, 1u);
  EXPECT_EQ(stats.flushes, 0u);
  EXPECT_EQ(stats.pages_acquired, 1u);
  EXPECT_EQ(stats.pages_released, 0u);
  EXPECT_EQ(tc.cached_blocks(5), 31u);
  tc.Free(p, 5);
  tc.Flush();
  stats = pool().stats();
  EXPECT_EQ(stats.classes[5].blocks_out, 0u);
  EXPECT_EQ(stats.classes[5].empty_pages, 1u);
  EXPECT_EQ(stats.flushes, 1u);
}

TEST_F(PoolManagerTest, CacheReusesTheLastFreedBlockFirst) {
  ThreadCache tc(&pool());
  void* a = tc.Allocate(2);
  void* b = tc.Allocate(2);
  EXPECT_EQ(static_cast<char*>(b), static_cast<char*>(a) + 32);  // Fresh page.
  tc.Free(a, 2);
  tc.Free(b, 2);
  EXPECT_EQ(tc.Allocate(2), b);
  EXPECT_EQ(tc.Allocate(2), a);
  EXPECT_EQ(pool().stats().refills, 1u);  // All of it in the cache.
  tc.Free(a, 2);
  tc.Free(b, 2);
}

TEST_F(PoolManagerTest, RefillsInBatches) {
  ThreadCache tc(&pool());
  std::vector<void*> blocks;
  blocks.push_back(tc.Allocate(1));
  EXPECT_EQ(pool().stats().refills, 1u);
  EXPECT_EQ(tc.cached_blocks(1), 31u);
  for (int i = 0; i < 31; ++i) blocks.push_back(tc.Allocate(1));
  EXPECT_EQ(pool().stats().refills, 1u);
  EXPECT_EQ(tc.cached_blocks(1), 0u);
  blocks.push_back(tc.Allocate(1));  // The 33rd: a second batch.
  EXPECT_EQ(pool().stats().refills, 2u);
  EXPECT_EQ(tc.cached_blocks(1), 31u);
  EXPECT_EQ(pool().stats().classes[1].blocks_out, 64u);
  for (void* p : blocks) tc.Free(p, 1);
}

TEST_F(PoolManagerTest, FlushesABatchWhenTheCacheExceedsItsLimit) {
  UseOptions(PoolOptions().set_batch(4).set_cache_limit(8));
  ThreadCache tc(&pool());
  const size_t per_page = pool().BlocksPerPage(3);
  std::vector<void*> blocks;
  for (int i = 0; i < 12; ++i) blocks.push_back(tc.Allocate(3));
  EXPECT_EQ(pool().stats().refills, 3u);
  EXPECT_EQ(tc.cached_blocks(3), 0u);
  for (int i = 0; i < 8; ++i) tc.Free(blocks[i], 3);
  EXPECT_EQ(tc.cached_blocks(3), 8u);  // At the limit: nothing moves yet.
  EXPECT_EQ(pool().stats().flushes, 0u);
  tc.Free(blocks[8], 3);  // Past the limit: `batch` blocks go back.
  EXPECT_EQ(tc.cached_blocks(3), 5u);
  EXPECT_EQ(pool().stats().flushes, 1u);
  EXPECT_EQ(pool().stats().classes[3].blocks_free_in_pages, per_page - 12 + 4);
  for (int i = 9; i < 12; ++i) tc.Free(blocks[i], 3);
  EXPECT_EQ(tc.cached_blocks(3), 8u);
  tc.Flush();
  EXPECT_EQ(tc.cached_blocks(3), 0u);
  EXPECT_EQ(pool().stats().flushes, 2u);
  EXPECT_EQ(pool().stats().classes[3].blocks_free_in_pages, per_page);
}

TEST_F(PoolManagerTest, FlushReturnsEveryCachedBlockOfEveryClass) {
  ThreadCache tc(&pool());
  for (int cls : {0, 4, 9}) tc.Free(tc.Allocate(cls), cls);
  EXPECT_EQ(tc.cached_blocks(0), 32u);
  EXPECT_EQ(tc.cached_blocks(9), 15u);  // A page of 4 KiB blocks holds 15.
  EXPECT_EQ(BlocksOut(), 32u + 32u + 15u);
  tc.Flush();
  for (int cls : {0, 4, 9}) EXPECT_EQ(tc.cached_blocks(cls), 0u);
  PoolStats stats = pool().stats();
  EXPECT_EQ(BlocksOut(), 0u);
  EXPECT_EQ(stats.flushes, 3u);  // One trip per class.
  for (int cls : {0, 4, 9}) EXPECT_EQ(stats.classes[cls].empty_pages, 1u);
}

TEST_F(PoolManagerTest, NoBlockIsHandedOutTwice) {
  ThreadCache tc(&pool());
  constexpr int kCls = 2;
  const size_t n = 3 * pool().BlocksPerPage(kCls);
  std::vector<void*> blocks;
  std::unordered_set<void*> live;
  for (size_t i = 0; i < n; ++i) {
    void* p = tc.Allocate(kCls);
    EXPECT_TRUE(live.insert(p).second) << "block " << i << " handed out twice";
    blocks.push_back(p);
  }
  // Free every other block, in a scrambled order, then take as many again:
  // none may be one still live.
  std::vector<void*> freed;
  for (size_t i = 0; i < n; i += 2) freed.push_back(blocks[i]);
  std::shuffle(freed.begin(), freed.end(), std::mt19937(7));
  for (void* p : freed) {
    live.erase(p);
    tc.Free(p, kCls);
  }
  for (size_t i = 0; i < freed.size(); ++i) {
    void* p = tc.Allocate(kCls);
    EXPECT_TRUE(live.insert(p).second) << "a live block was handed out again";
  }
  EXPECT_EQ(live.size(), n);
  EXPECT_EQ(pool().stats().classes[kCls].pages, 3u);  // Nothing new needed.
  for (void* p : live) tc.Free(p, kCls);
}

// Each thread allocates blocks, tags them, and passes them to the next
// thread, which checks the tag and frees them into its own cache; the main
// thread frees what is left. A block handed out twice while live shows up in
// the set of live blocks (and usually as a clobbered tag).
TEST_F(PoolManagerTest, CrossThreadFreesLoseNothingAndNeverDuplicate) {
  for (int threads : {2, 4, 8}) {
    UseOptions(PoolOptions().set_batch(16).set_cache_limit(32));
    struct Item {
      void* block;
      int cls;
      uint64_t tag;
    };
    struct Mailbox {
      alloc_internal::Mutex mu;
      std::vector<Item> items ABSL_GUARDED_BY(mu);
    };
    std::vector<Mailbox> mailboxes(threads);
    alloc_internal::Mutex live_mu;
    std::unordered_set<void*> live;
    std::atomic<int> duplicates{0};
    std::atomic<int> bad_tags{0};
    std::atomic<int> nulls{0};

    const auto check_and_free = [&](ThreadCache& tc, const Item& item) {
      uint64_t tag;
      std::memcpy(&tag, item.block, sizeof(tag));
      if (tag != item.tag) bad_tags.fetch_add(1);
      {
        alloc_internal::MutexLock lock(&live_mu);
        live.erase(item.block);
      }
      tc.Free(item.block, item.cls);
    };
    const auto worker = [&](int t) {
      ThreadCache tc(&pool());
      constexpr int kOps = 5000;
      for (int i = 0; i < kOps; ++i) {
        const int cls = (i * 7 + t) % 6;  // 8 B to 256 B.
        void* p = tc.Allocate(cls);
        if (p == nullptr) {
          nulls.fetch_add(1);
          continue;
        }
        const uint64_t tag = (uint64_t{static_cast<uint32_t>(t)} << 32) | i;
        std::memcpy(p, &tag, sizeof(tag));
        {
          alloc_internal::MutexLock lock(&live_mu);
          if (!live.insert(p).second) duplicates.fetch_add(1);
        }
        {
          Mailbox& next = mailboxes[(t + 1) % threads];
          alloc_internal::MutexLock lock(&next.mu);
          next.items.push_back({p, cls, tag});
        }
        std::vector<Item> mine;
        {
          Mailbox& own = mailboxes[t];
          alloc_internal::MutexLock lock(&own.mu);
          mine.swap(own.items);
        }
        for (const Item& item : mine) check_and_free(tc, item);
      }
      // ~ThreadCache flushes: this is what a thread does at exit.
    };
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) workers.emplace_back(worker, t);
    for (auto& w : workers) w.join();
    {
      ThreadCache main_cache(&pool());
      for (Mailbox& m : mailboxes) {
        alloc_internal::MutexLock lock(&m.mu);
        for (const Item& item : m.items) check_and_free(main_cache, item);
        m.items.clear();
      }
    }
    EXPECT_EQ(duplicates.load(), 0) << threads << " threads";
    EXPECT_EQ(bad_tags.load(), 0) << threads << " threads";
    EXPECT_EQ(nulls.load(), 0) << threads << " threads";
    EXPECT_TRUE(live.empty()) << threads << " threads";
    PoolStats stats = pool().stats();
    EXPECT_EQ(BlocksOut(), 0u) << threads << " threads";
    for (const PoolClassStats& c : stats.classes) {
      EXPECT_EQ(c.blocks_free_in_pages, c.blocks_total);
      EXPECT_EQ(c.empty_pages, c.pages);
    }
    EXPECT_GT(stats.refills, 0u);
    EXPECT_GT(stats.flushes, 0u);
    EXPECT_EQ(stats.dropped_frees, 0u);
    EXPECT_EQ(stats.pages_acquired - stats.pages_released, stats.pages);
  }
}

TEST_F(PoolManagerTest, ReleaseEmptyPagesReturnsExactlyTheEmptyPages) {
  constexpr int kCls = 3;  // 64 B: 1023 blocks a page.
  ThreadCache tc(&pool());
  const size_t per_page = pool().BlocksPerPage(kCls);
  std::map<uintptr_t, std::vector<void*>> by_page;
  for (size_t i = 0; i < 3 * per_page; ++i) {
    void* p = tc.Allocate(kCls);
    by_page[PageOf(p, k64K)].push_back(p);
  }
  ASSERT_EQ(by_page.size(), 3u);
  ASSERT_EQ(tc.cached_blocks(kCls), 0u);
  // Keep one block of the middle page; free everything else.
  auto middle = std::next(by_page.begin());
  char* kept = static_cast<char*>(middle->second.back());
  middle->second.pop_back();
  std::vector<void*> gone;
  for (auto& [page, blocks] : by_page) {
    for (void* p : blocks) tc.Free(p, kCls);
    if (page != middle->first) gone.push_back(blocks.front());
  }
  // Blocks in a thread cache keep their pages: nothing is empty yet.
  EXPECT_EQ(pool().ReleaseEmptyPages(), 0u);
  tc.Flush();
  EXPECT_EQ(pool().stats().classes[kCls].empty_pages, 2u);

  EXPECT_EQ(pool().ReleaseEmptyPages(/*keep_per_class=*/1), k64K);
  EXPECT_EQ(pool().ReleaseEmptyPages(/*keep_per_class=*/1), 0u);
  EXPECT_EQ(pool().ReleaseEmptyPages(), k64K);
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.classes[kCls].pages, 1u);
  EXPECT_EQ(stats.classes[kCls].blocks_out, 1u);
  EXPECT_EQ(stats.pages_released, 2u);
  EXPECT_EQ(cache_.stats().in_use_blocks, 1u);
  EXPECT_EQ(cache_.stats().cached_blocks, 2u);
  EXPECT_TRUE(pool().Owns(kept));
  for (void* p : gone) EXPECT_FALSE(pool().Owns(p));
  std::memset(kept, 1, 64);  // Still ours.
  EXPECT_EQ(PageOf(kept, k64K), middle->first);

  tc.Free(kept, kCls);
  tc.Flush();
  EXPECT_EQ(pool().ReleaseEmptyPages(), k64K);
  EXPECT_EQ(pool().stats().pages, 0u);
  EXPECT_EQ(cache_.stats().in_use_blocks, 0u);
}

TEST_F(PoolManagerTest, ExhaustedSourceGivesNullAndLeavesStateConsistent) {
  constexpr int kCls = 9;  // 4 KiB: 15 blocks a page, one refill.
  source_.RefuseAfter(1);
  ThreadCache tc(&pool());
  std::vector<void*> blocks;
  for (int i = 0; i < 15; ++i) {
    blocks.push_back(tc.Allocate(kCls));
    ASSERT_NE(blocks.back(), nullptr);
  }
  EXPECT_EQ(tc.Allocate(kCls), nullptr);
  EXPECT_EQ(tc.Allocate(kCls), nullptr);
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.failed_page_acquisitions, 2u);
  EXPECT_EQ(stats.refills, 1u);
  EXPECT_EQ(stats.pages, 1u);
  EXPECT_EQ(stats.classes[kCls].blocks_out, 15u);
  EXPECT_EQ(tc.cached_blocks(kCls), 0u);

  // A freed block is served again; so is one returned to its page.
  tc.Free(blocks.back(), kCls);
  EXPECT_EQ(tc.Allocate(kCls), blocks.back());
  tc.Free(blocks.back(), kCls);
  tc.Flush();
  EXPECT_EQ(tc.Allocate(kCls), blocks.back());
  EXPECT_EQ(source_.allocate_calls(), 3);  // One page, two refusals.

  source_.RefuseAfter(-1);
  void* fresh = tc.Allocate(kCls);
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(pool().stats().pages, 2u);
  tc.Free(fresh, kCls);
  for (void* p : blocks) tc.Free(p, kCls);
}

TEST_F(PoolManagerTest, SteadyStateAcquiresNoPagesAfterWarmUp) {
  ThreadCache tc(&pool());
  std::vector<std::pair<void*, int>> live;
  // The same frame every time: 3000 blocks of mixed classes, freed in a
  // scrambled order.
  const auto frame = [&] {
    std::mt19937 rng(42);
    for (int i = 0; i < 3000; ++i) {
      const int cls = static_cast<int>(rng() % 7);
      live.emplace_back(tc.Allocate(cls), cls);
    }
    std::shuffle(live.begin(), live.end(), rng);
    for (auto [p, cls] : live) tc.Free(p, cls);
    live.clear();
  };
  frame();
  const PoolStats warm = pool().stats();
  const int source_calls = source_.allocate_calls();
  EXPECT_GT(warm.pages_acquired, 0u);
  for (int i = 0; i < 100; ++i) frame();
  const PoolStats steady = pool().stats();
  EXPECT_GT(steady.refills, warm.refills);  // The pages were visited,
  EXPECT_GT(steady.flushes, warm.flushes);
  EXPECT_EQ(steady.pages_acquired, warm.pages_acquired);  // never grown.
  EXPECT_EQ(source_.allocate_calls(), source_calls);
  EXPECT_EQ(cache_.stats().hits + cache_.stats().misses, warm.pages_acquired);
}

TEST_F(PoolManagerTest, OwnsOnlyItsOwnPages) {
  PoolManager other(&cache_);
  ThreadCache tc(&pool());
  ThreadCache other_tc(&other);
  char* p = static_cast<char*>(tc.Allocate(4));
  void* q = other_tc.Allocate(4);
  int local = 0;
  EXPECT_TRUE(pool().Owns(p));
  EXPECT_TRUE(pool().Owns(p + 127));
  EXPECT_FALSE(pool().Owns(q));
  EXPECT_TRUE(other.Owns(q));
  EXPECT_FALSE(pool().Owns(&local));
  EXPECT_FALSE(pool().Owns(nullptr));
  tc.Free(p, 4);
  other_tc.Free(q, 4);
  tc.Flush();
  EXPECT_EQ(pool().ReleaseEmptyPages(), k64K);
  EXPECT_FALSE(pool().Owns(p));
}

TEST_F(PoolManagerTest, FreeOfAForeignPointerIsReportedAndDropped) {
  PoolManager other(&cache_);
  ThreadCache tc(&pool());
  ThreadCache other_tc(&other);
  void* theirs = other_tc.Allocate(3);
  alignas(64) static uint64_t foreign_words[8];
  ErrorRecorder errors;
  tc.Free(theirs, 3);
  tc.Free(foreign_words, 3);
  EXPECT_EQ(errors.count(), 0u);  // Detected when the blocks reach the pool.
  tc.Flush();
  ASSERT_EQ(errors.count(), 2u);
  for (const ErrorReport& report : errors.reports()) {
    EXPECT_EQ(report.kind, ErrorKind::kMisuse);
    EXPECT_EQ(report.where, "PoolManager::ThreadCache::Free");
    EXPECT_THAT(report.message,
                HasSubstr("pool free of a pointer this pool never gave out"));
    EXPECT_EQ(report.size, 64u);
  }
  EXPECT_EQ(pool().stats().dropped_frees, 2u);
  EXPECT_EQ(pool().stats().pages, 0u);  // Nothing was linked in.
  // The owner can still free its block (after undoing the poisoning).
  FRAMEALLOC_UNPOISON(foreign_words, sizeof(foreign_words));
  FRAMEALLOC_UNPOISON(theirs, 64);
  other_tc.Free(theirs, 3);
}

TEST_F(PoolManagerTest, FreeWithTheWrongSizeClassIsReportedAndDropped) {
  ThreadCache tc(&pool());
  void* p = tc.Allocate(3);  // 64 B.
  ErrorRecorder errors;
  tc.Free(p, 4);  // As 128 B.
  tc.Flush();
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_EQ(errors.reports()[0].kind, ErrorKind::kMisuse);
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("freed with the wrong size class (block of 64 B "
                        "freed as 128 B)"));
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.dropped_frees, 1u);
  EXPECT_EQ(stats.classes[3].blocks_out, 1u);  // Dropped: still out.
  EXPECT_EQ(stats.classes[4].pages, 0u);
  FRAMEALLOC_UNPOISON(p, 64);
  tc.Free(p, 3);
}

TEST_F(PoolManagerTest, FreeOfAnInteriorPointerIsReportedAndDropped) {
  ThreadCache tc(&pool());
  char* p = static_cast<char*>(tc.Allocate(3));
  ErrorRecorder errors;
  tc.Free(p + 8, 3);
  tc.Flush();
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message, HasSubstr("never gave out (0x"));
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("is not the start of a block"));
  EXPECT_EQ(pool().stats().classes[3].blocks_out, 1u);
  FRAMEALLOC_UNPOISON(p, 64);
  tc.Free(p, 3);
}

#if !FRAMEALLOC_HAS_ASAN
// Under ASan the second Free writes into a poisoned block and is an ASan
// report instead (DoubleFreeIsAnAsanReport).
TEST_F(PoolManagerTest, DoubleFreeIntoAFullyFreePageIsReported) {
  ThreadCache tc(&pool());
  void* p = tc.Allocate(3);
  tc.Free(p, 3);
  tc.Flush();  // The page has every block back.
  ErrorRecorder errors;
  tc.Free(p, 3);
  tc.Flush();
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message, HasSubstr("a double free"));
  EXPECT_EQ(pool().stats().dropped_frees, 1u);
  EXPECT_EQ(pool().stats().classes[3].blocks_out, 0u);
}

// A write after free into the link of a block in a page's free list: the
// garbage link is cut, never followed, and the blocks it hid are reported.
TEST_F(PoolManagerTest, GarbageInAPageFreeListIsCutNotFollowed) {
  ErrorRecorder errors;
  int local = 0;
  {
    PoolManager local_pool(&cache_);
    ThreadCache tc(&local_pool);
    char* first = static_cast<char*>(tc.Allocate(3));
    tc.Free(first, 3);
    tc.Flush();  // The page's list: block 31, 30, ..., 0.
    void* garbage = &local;
    std::memcpy(first + 31 * 64, &garbage, sizeof(garbage));
    const size_t per_page = local_pool.BlocksPerPage(3);
    std::unordered_set<void*> handed_out;
    for (size_t i = 0; i < per_page; ++i) {
      void* p = tc.Allocate(3);
      ASSERT_NE(p, nullptr);
      EXPECT_NE(p, static_cast<void*>(&local));
      EXPECT_TRUE(local_pool.Owns(p));
      EXPECT_TRUE(handed_out.insert(p).second);
    }
    // Blocks 0..30 were reachable only through the cut link.
    ASSERT_EQ(errors.count(), 1u);
    EXPECT_THAT(errors.reports()[0].message,
                HasSubstr("31 free blocks of 64 B were missing"));
    EXPECT_EQ(local_pool.stats().classes[3].pages, 2u);
    for (void* p : handed_out) tc.Free(p, 3);
  }
  // The given-up blocks count as out when the pool goes.
  ASSERT_EQ(errors.count(), 2u);
  EXPECT_THAT(errors.reports()[1].message,
              HasSubstr("pool destroyed with 31 blocks still allocated"));
}
#endif

TEST_F(PoolManagerTest, DestroyingThePoolReportsBlocksStillOut) {
  ErrorRecorder errors;
  {
    PoolManager local_pool(&cache_);
    ThreadCache tc(&local_pool);
    for (int i = 0; i < 3; ++i) tc.Allocate(2);
  }  // The cache flushes its other 29 blocks; 3 stay out.
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_EQ(errors.reports()[0].kind, ErrorKind::kMisuse);
  EXPECT_EQ(errors.reports()[0].where, "PoolManager::~PoolManager");
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("pool destroyed with 3 blocks still allocated"));
  EXPECT_EQ(cache_.stats().in_use_blocks, 0u);  // Its page went back anyway.
}

TEST_F(PoolManagerTest, DestroyingThePoolReportsAttachedCaches) {
  ErrorRecorder errors;
  // A cache that is never destroyed (so it cannot touch the dead pool).
  alignas(ThreadCache) unsigned char storage[sizeof(ThreadCache)];
  {
    PoolManager local_pool(&cache_);
    ::new (storage) ThreadCache(&local_pool);
  }
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("1 ThreadCaches are still attached"));
}

TEST(PoolOptionsTest, ValidateNamesTheBadField) {
  ChunkCache cache(&SystemMemorySource::Default());
  struct Case {
    PoolOptions options;
    const char* text;
  };
  const Case cases[] = {
      {PoolOptions().set_page_size(8192), "PoolOptions.page_size = 8192"},
      {PoolOptions().set_page_size(size_t{8} << 20), "PoolOptions.page_size"},
      {PoolOptions().set_page_size(3 << 16), "is not a power of two"},
      {PoolOptions().set_batch(0),
       "PoolOptions.batch = 0 is outside [1, 1024]"},
      {PoolOptions().set_batch(2000).set_cache_limit(4000),
       "PoolOptions.batch = 2000"},
      {PoolOptions().set_cache_limit(16),
       "PoolOptions.cache_limit = 16 is outside [batch = 32, 65536]"},
      {PoolOptions().set_cache_limit(1 << 20), "PoolOptions.cache_limit"},
  };
  for (const Case& c : cases) {
    auto pool = PoolManager::Create(&cache, c.options);
    EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(pool.status().message(), HasSubstr(c.text));
  }
  EXPECT_EQ(PoolManager::Create(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(PoolManager::Create(&cache, PoolOptions()
                                              .set_page_size(size_t{16} << 10)
                                              .set_batch(1)
                                              .set_cache_limit(1))
                  .ok());
  EXPECT_TRUE(PoolManager::Create(&cache, PoolOptions()
                                              .set_page_size(size_t{4} << 20)
                                              .set_batch(1024)
                                              .set_cache_limit(65536))
                  .ok());
}

TEST_F(PoolManagerDeathTest, InvalidOptionsAreFatalInTheConstructor) {
  EXPECT_DEATH(PoolManager(&cache_, PoolOptions().set_batch(0)),
               "PoolOptions.batch = 0");
}

TEST_F(PoolManagerTest, SmallPagesStillServeTheLargestClass) {
  UseOptions(PoolOptions().set_page_size(size_t{16} << 10));
  ThreadCache tc(&pool());
  EXPECT_EQ(pool().BlocksPerPage(9), 3u);
  void* blocks[4];
  for (void*& p : blocks) {
    p = tc.Allocate(9);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(IsAligned(p, 4096));
  }
  EXPECT_EQ(pool().stats().classes[9].pages, 2u);
  for (void* p : blocks) tc.Free(p, 9);
}

#if FRAMEALLOC_HAS_ASAN
TEST_F(PoolManagerDeathTest, UseAfterFreeIsAnAsanReport) {
  ThreadCache tc(&pool());
  char* p = static_cast<char*>(tc.Allocate(3));
  p[0] = 1;
  tc.Free(p, 3);
  EXPECT_DEATH(p[8] = 2, "use-after-poison");
  EXPECT_DEATH(p[0] = 2, "use-after-poison");  // The link word too.
}

TEST_F(PoolManagerDeathTest, UseAfterFlushIsAnAsanReport) {
  ThreadCache tc(&pool());
  char* p = static_cast<char*>(tc.Allocate(3));
  tc.Free(p, 3);
  tc.Flush();  // Now in its page's free list.
  EXPECT_DEATH(p[63] = 2, "use-after-poison");
}

TEST_F(PoolManagerDeathTest, NeverHandedOutPartOfAPageIsPoisoned) {
  ThreadCache tc(&pool());
  char* p = static_cast<char*>(tc.Allocate(3));
  char* beyond = p + 64 * 100;  // Not carved yet.
  EXPECT_DEATH(beyond[0] = 2, "use-after-poison");
  tc.Free(p, 3);
}

TEST_F(PoolManagerDeathTest, DoubleFreeIsAnAsanReport) {
  ThreadCache tc(&pool());
  void* p = tc.Allocate(3);
  tc.Free(p, 3);
  EXPECT_DEATH(tc.Free(p, 3), "use-after-poison");
}
#endif

}  // namespace
}  // namespace framealloc
