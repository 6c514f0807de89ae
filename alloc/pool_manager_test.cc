// Tests of PoolManager and its ThreadCache: the class mapping and block
// alignment, per-class cache limits, batching between caches, the transfer
// caches and pages, frees across threads (over several thread counts) with
// no block lost or handed out twice and stats that balance, page release
// (transfer caches drained first), source exhaustion, misuse reports (at a
// Flush and at a batch flush), and a counting source proving that steady use
// acquires no pages.
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
    // Every cache is gone: so are their raised limits.
    EXPECT_EQ(pool_->raised_cache_bytes(), 0u);
    pool_.reset();
    EXPECT_EQ(cache_.stats().in_use_blocks, 0u);
    EXPECT_EQ(source_.stats().bytes_outstanding, cache_.stats().cached_bytes);
  }
  PoolManager& pool() { return *pool_; }
  void UseOptions(PoolOptions options) {
    EXPECT_EQ(pool_->raised_cache_bytes(), 0u);  // Every cache is gone.
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

// Regression (review): a page went back to the cache with alignment
// page_size, though the chunk under it may be a cached block first acquired
// at a smaller alignment that happened to be page-aligned; a source's
// Deallocate must see the alignment its Allocate was asked for.
TEST(PoolManagerPageTest, PagesGoBackWithTheAlignmentTheirChunkCameWith) {
  // Allocates everything 64 KiB-aligned and remembers what was asked.
  class RememberingSource final : public MemorySource {
   public:
    absl::string_view name() const override { return "remembering"; }
    int mismatches = 0;
    int deallocations = 0;

   protected:
    absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override {
      absl::StatusOr<Block> b =
          SystemMemorySource::Default().Allocate(size, kUnder);
      if (!b.ok()) return b;
      asked_[b->data] = alignment;
      return Block{b->data, b->size, alignment};
    }
    bool DoDeallocate(const Block& block) override {
      ++deallocations;
      if (asked_[block.data] != block.alignment) ++mismatches;
      SystemMemorySource::Default().Deallocate(
          Block{block.data, block.size, kUnder});
      return true;
    }

   private:
    const size_t kUnder = size_t{64} << 10;
    std::map<void*, size_t> asked_;
  };
  RememberingSource source;
  {
    ChunkCache cache(&source);
    // An arena's chunk, 64 KiB at alignment 4096, back to the cache...
    absl::StatusOr<Block> chunk = cache.Acquire(size_t{64} << 10, 4096);
    ASSERT_TRUE(chunk.ok());
    cache.Release(*chunk);
    {
      // ...serves as the pool's 64 KiB page (its address is page-aligned).
      PoolManager pool(&cache);
      ThreadCache tc(&pool);
      tc.Free(tc.Allocate(0), 0);
      tc.Flush();
      EXPECT_EQ(pool.ReleaseEmptyPages(), size_t{64} << 10);
    }
    EXPECT_EQ(cache.stats().hits, 1u);
    cache.Trim(0);
  }
  EXPECT_EQ(source.deallocations, 1);
  EXPECT_EQ(source.mismatches, 0);
}

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
  EXPECT_EQ(c.blocks_in_transfer, 0u);
  EXPECT_EQ(c.blocks_out, 32u);
  EXPECT_EQ(stats.pages, 1u);
  EXPECT_EQ(stats.page_bytes, k64K);
  EXPECT_EQ(stats.refills, 1u);
  EXPECT_EQ(stats.flushes, 0u);
  EXPECT_EQ(stats.transfer_refills, 0u);  // Nothing was there to take.
  EXPECT_EQ(stats.pages_acquired, 1u);
  EXPECT_EQ(stats.pages_released, 0u);
  EXPECT_EQ(tc.cached_blocks(5), 31u);
  tc.Free(p, 5);
  tc.Flush();
  stats = pool().stats();
  EXPECT_EQ(stats.classes[5].blocks_out, 0u);
  EXPECT_EQ(stats.classes[5].empty_pages, 1u);
  EXPECT_EQ(stats.flushes, 1u);
  EXPECT_EQ(stats.transfer_flushes, 0u);  // Flush() goes to the pages.
}

TEST_F(PoolManagerTest, CacheLimitScalesWithTheClassSize) {
  // Default: 64 KiB per class, clamped to [2 * 32, 65536] blocks.
  EXPECT_EQ(pool().CacheLimit(0), 8192u);
  EXPECT_EQ(pool().CacheLimit(3), 1024u);
  EXPECT_EQ(pool().CacheLimit(6), 128u);
  EXPECT_EQ(pool().CacheLimit(7), 64u);
  EXPECT_EQ(pool().CacheLimit(9), 64u);  // 16 by bytes; the floor wins.
  UseOptions(PoolOptions().set_batch(16).set_cache_bytes(0));
  for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
    EXPECT_EQ(pool().CacheLimit(cls), 32u);
  }
  UseOptions(PoolOptions().set_cache_bytes(size_t{256} << 20));
  for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
    EXPECT_EQ(pool().CacheLimit(cls), 65536u);
  }
  // A ThreadCache holds exactly its class's limit before it flushes (limits
  // fixed: max_cache_bytes below cache_bytes).
  UseOptions(
      PoolOptions().set_batch(4).set_cache_bytes(1024).set_max_cache_bytes(0));
  EXPECT_EQ(pool().CacheLimit(2), 32u);  // 1 KiB of 32 B blocks.
  EXPECT_EQ(pool().CacheLimit(9), 8u);   // The floor, 2 * batch.
  ThreadCache tc(&pool());
  std::vector<void*> blocks;
  for (int i = 0; i < 33; ++i) blocks.push_back(tc.Allocate(2));
  EXPECT_EQ(tc.cached_blocks(2), 3u);  // 9 batches of 4.
  for (int i = 0; i < 29; ++i) tc.Free(blocks[i], 2);
  EXPECT_EQ(tc.cached_blocks(2), 32u);  // At the limit: nothing moves.
  EXPECT_EQ(pool().stats().flushes, 0u);
  tc.Free(blocks[29], 2);
  EXPECT_EQ(pool().stats().flushes, 1u);
  EXPECT_EQ(tc.cached_blocks(2), 29u);
  for (int i = 30; i < 33; ++i) tc.Free(blocks[i], 2);
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
  // A fixed limit of 8 (the refills below would raise it otherwise).
  UseOptions(
      PoolOptions().set_batch(4).set_cache_bytes(8 * 64).set_max_cache_bytes(
          0));
  ThreadCache tc(&pool());
  const size_t per_page = pool().BlocksPerPage(3);
  ASSERT_EQ(pool().CacheLimit(3), 8u);
  std::vector<void*> blocks;
  for (int i = 0; i < 12; ++i) blocks.push_back(tc.Allocate(3));
  EXPECT_EQ(pool().stats().refills, 3u);
  EXPECT_EQ(tc.cached_blocks(3), 0u);
  for (int i = 0; i < 8; ++i) tc.Free(blocks[i], 3);
  EXPECT_EQ(tc.cached_blocks(3), 8u);  // At the limit: nothing moves yet.
  EXPECT_EQ(pool().stats().flushes, 0u);
  // Past the limit: `batch` blocks go to the pool as one batch, into the
  // transfer cache; their pages do not see them yet.
  tc.Free(blocks[8], 3);
  EXPECT_EQ(tc.cached_blocks(3), 5u);
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.flushes, 1u);
  EXPECT_EQ(stats.transfer_flushes, 1u);
  EXPECT_EQ(stats.classes[3].blocks_in_transfer, 4u);
  EXPECT_EQ(stats.classes[3].blocks_free_in_pages, per_page - 12);
  EXPECT_EQ(stats.classes[3].blocks_out, 8u);
  for (int i = 9; i < 12; ++i) tc.Free(blocks[i], 3);
  EXPECT_EQ(tc.cached_blocks(3), 8u);
  tc.Flush();  // Straight to the pages.
  EXPECT_EQ(tc.cached_blocks(3), 0u);
  stats = pool().stats();
  EXPECT_EQ(stats.flushes, 2u);
  EXPECT_EQ(stats.transfer_flushes, 1u);
  EXPECT_EQ(stats.classes[3].blocks_free_in_pages, per_page - 4);
  EXPECT_EQ(stats.classes[3].blocks_in_transfer, 4u);
  EXPECT_EQ(stats.classes[3].blocks_out, 0u);
  pool().DrainTransferCaches();
  stats = pool().stats();
  EXPECT_EQ(stats.classes[3].blocks_free_in_pages, per_page);
  EXPECT_EQ(stats.classes[3].blocks_in_transfer, 0u);
  EXPECT_EQ(stats.classes[3].empty_pages, 1u);
}

// Options of the limit tests below: batch 4; class 3 (64 B) starts at 8
// blocks and may grow to 64.
PoolOptions GrowingOptions() {
  return PoolOptions().set_batch(4).set_cache_bytes(8 * 64).set_max_cache_bytes(
      64 * 64);
}

// Sum over classes of the starting limits of GrowingOptions(): 64, 32, 16
// and 8 blocks of 8 to 64 B (512 B each), then the floor of 8 blocks of
// 128 B to 4 KiB.
constexpr size_t kGrowingStartBytes =
    4 * 512 + 8 * (128 + 256 + 512 + 1024 + 2048 + 4096);

TEST_F(PoolManagerTest, LimitGrowsWhenTheListRunsDry) {
  UseOptions(GrowingOptions());
  EXPECT_EQ(pool().CacheLimit(3), 8u);
  EXPECT_EQ(pool().CacheCeiling(3), 64u);
  ThreadCache tc(&pool());
  EXPECT_EQ(tc.cache_limit(3), 8u);
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes);
  // 40 blocks at once: 10 refills, each raising the limit by a batch.
  std::vector<void*> blocks;
  for (int i = 0; i < 40; ++i) blocks.push_back(tc.Allocate(3));
  EXPECT_EQ(pool().stats().refills, 10u);
  EXPECT_EQ(tc.cache_limit(3), 48u);
  EXPECT_EQ(tc.limit_raises(), 10u);
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes + 40 * 64);
  EXPECT_EQ(pool().raised_cache_bytes(), 40u * 64);
  EXPECT_EQ(pool().stats().raised_cache_bytes, 40u * 64);
  // All 40 stay in the thread: no flush, and the next round makes no trip.
  for (void* p : blocks) tc.Free(p, 3);
  EXPECT_EQ(tc.cached_blocks(3), 40u);
  EXPECT_EQ(pool().stats().flushes, 0u);
  for (int round = 0; round < 3; ++round) {
    for (void*& p : blocks) p = tc.Allocate(3);
    for (void* p : blocks) tc.Free(p, 3);
  }
  EXPECT_EQ(pool().stats().refills, 10u);
  EXPECT_EQ(pool().stats().flushes, 0u);
  EXPECT_EQ(tc.cache_limit(3), 48u);
  // Flush gives everything back and starts the limits over.
  tc.Flush();
  EXPECT_EQ(tc.cached_blocks(3), 0u);
  EXPECT_EQ(tc.cache_limit(3), 8u);
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes);
  EXPECT_EQ(pool().raised_cache_bytes(), 0u);
  EXPECT_EQ(pool().stats().classes[3].blocks_out, 0u);
}

TEST_F(PoolManagerTest, FixedLimitsMakeATripPerBatch) {
  // The same rounds with growth off: every round refills and flushes.
  UseOptions(GrowingOptions().set_max_cache_bytes(0));
  EXPECT_EQ(pool().CacheCeiling(3), 8u);
  ThreadCache tc(&pool());
  std::vector<void*> blocks(40);
  for (int round = 0; round < 4; ++round) {
    for (void*& p : blocks) p = tc.Allocate(3);
    for (void* p : blocks) tc.Free(p, 3);
  }
  const PoolStats stats = pool().stats();
  EXPECT_GE(stats.refills, 4u * 8);  // At least 32 blocks a round refilled.
  EXPECT_GE(stats.flushes, 4u * 8);
  EXPECT_EQ(tc.cache_limit(3), 8u);
  EXPECT_EQ(tc.limit_raises(), 0u);
}

TEST_F(PoolManagerTest, LimitStopsAtTheCeiling) {
  UseOptions(GrowingOptions().set_max_cache_bytes(16 * 64));
  ThreadCache tc(&pool());
  std::vector<void*> blocks;
  for (int i = 0; i < 40; ++i) blocks.push_back(tc.Allocate(3));
  EXPECT_EQ(tc.cache_limit(3), 16u);
  EXPECT_EQ(tc.limit_raises(), 2u);
  for (void* p : blocks) tc.Free(p, 3);
  EXPECT_LE(tc.cached_blocks(3), 16u);
  EXPECT_GT(pool().stats().flushes, 0u);
}

TEST_F(PoolManagerTest, OverflowsCutARaisedLimitBackToItsStart) {
  // A consumer: its limit raised to 20 by three refills, then it frees
  // blocks another cache allocated, overflowing again and again. Every
  // third overflow takes a batch off, down to the start and no further.
  UseOptions(GrowingOptions());
  ThreadCache consumer(&pool());
  ThreadCache producer(&pool());
  std::vector<void*> own;
  for (int i = 0; i < 12; ++i) own.push_back(consumer.Allocate(3));
  ASSERT_EQ(consumer.cache_limit(3), 20u);
  for (void* p : own) consumer.Free(p, 3);
  ASSERT_EQ(consumer.cached_blocks(3), 12u);
  std::vector<uint32_t> limits;
  for (int i = 0; i < 400; ++i) {
    consumer.Free(producer.Allocate(3), 3);
    EXPECT_LE(consumer.cached_blocks(3), consumer.cache_limit(3));
    if (limits.empty() || limits.back() != consumer.cache_limit(3)) {
      limits.push_back(consumer.cache_limit(3));
    }
  }
  EXPECT_EQ(limits, (std::vector<uint32_t>{20, 16, 12, 8}));
  EXPECT_EQ(consumer.limit_cuts(), 3u);
  EXPECT_EQ(consumer.limit_bytes(), kGrowingStartBytes);
  // The producer, always dry, went to its ceiling.
  EXPECT_EQ(producer.cache_limit(3), 64u);
}

TEST_F(PoolManagerTest, ThreadBudgetBoundsTheLimitsAndMovesBetweenClasses) {
  // Room for 16 more blocks of 64 B (or 8 of 128 B) beyond the starts.
  UseOptions(
      GrowingOptions().set_thread_cache_bytes(kGrowingStartBytes + 16 * 64));
  ThreadCache tc(&pool());
  std::vector<void*> small;
  for (int i = 0; i < 40; ++i) small.push_back(tc.Allocate(3));
  EXPECT_EQ(tc.cache_limit(3), 24u);  // 4 raises, then the budget is full.
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes + 16 * 64);
  // Class 3 keeps 12 of its 24: 12 blocks of its raise sit unused.
  for (int i = 0; i < 12; ++i) tc.Free(small[i], 3);
  EXPECT_EQ(tc.cached_blocks(3), 12u);
  // Class 4 (128 B) runs dry: its raises take class 3's unused room, a
  // batch (512 B, 8 blocks of 64 B) at a time, down to class 3's count.
  std::vector<void*> large;
  for (int i = 0; i < 4; ++i) large.push_back(tc.Allocate(4));  // 1 refill.
  EXPECT_EQ(tc.cache_limit(4), 12u);
  EXPECT_EQ(tc.cache_limit(3), 16u);
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes + 16 * 64);
  // The second refill finds 4 blocks of 64 B unused (class 3 holds 12): room
  // for 2 blocks of 128 B, not the batch of 4 it would take.
  for (int i = 0; i < 4; ++i) large.push_back(tc.Allocate(4));
  EXPECT_EQ(tc.cache_limit(4), 14u);
  EXPECT_EQ(tc.cache_limit(3), 12u);
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes + 16 * 64);
  // Then nothing is left to take: class 4 stays where it is.
  for (int i = 0; i < 8; ++i) large.push_back(tc.Allocate(4));
  EXPECT_EQ(tc.cache_limit(4), 14u);
  EXPECT_EQ(tc.cache_limit(3), 12u);
  EXPECT_EQ(tc.limit_cuts(), 2u);
  EXPECT_EQ(tc.limit_raises(), 4u + 2u);
  for (void* p : large) tc.Free(p, 4);
  for (size_t i = 12; i < small.size(); ++i) tc.Free(small[i], 3);
  EXPECT_LE(tc.limit_bytes(), kGrowingStartBytes + 16 * 64);
}

// tcmalloc's transfer cache: a batch flushed by one cache is the next
// refill of another, handed over whole; no page is read or written.
TEST_F(PoolManagerTest, FlushThenRefillElsewhereHandsOverTheSameBatch) {
  UseOptions(PoolOptions().set_batch(4).set_cache_bytes(0).set_max_cache_bytes(
      0));  // Limit 8, fixed.
  ThreadCache producer(&pool());
  ThreadCache consumer(&pool());
  std::vector<void*> blocks;
  for (int i = 0; i < 12; ++i) blocks.push_back(producer.Allocate(3));
  ASSERT_EQ(producer.cached_blocks(3), 0u);
  const PoolClassStats before = pool().stats().classes[3];
  // The 9th free flushes the newest four: blocks 8, 7, 6 and 5.
  for (int i = 0; i < 9; ++i) producer.Free(blocks[i], 3);
  EXPECT_EQ(producer.cached_blocks(3), 5u);
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.classes[3].blocks_in_transfer, 4u);
  EXPECT_EQ(stats.classes[3].blocks_free_in_pages, before.blocks_free_in_pages);
  EXPECT_EQ(stats.transfer_flushes, 1u);
  const uint64_t refills = stats.refills;

  // The newest block comes first, as from the producer's own list.
  for (int i = 8; i >= 5; --i) EXPECT_EQ(consumer.Allocate(3), blocks[i]);
  EXPECT_EQ(consumer.cached_blocks(3), 0u);
  stats = pool().stats();
  EXPECT_EQ(stats.refills, refills + 1);
  EXPECT_EQ(stats.transfer_refills, 1u);
  EXPECT_EQ(stats.classes[3].blocks_in_transfer, 0u);
  EXPECT_EQ(stats.classes[3].blocks_free_in_pages, before.blocks_free_in_pages);
  EXPECT_EQ(stats.classes[3].pages, before.pages);
  EXPECT_EQ(stats.classes[3].blocks_out, before.blocks_out);
  for (int i = 5; i < 9; ++i) consumer.Free(blocks[i], 3);
  for (int i = 9; i < 12; ++i) producer.Free(blocks[i], 3);
}

TEST_F(PoolManagerTest, TransferCacheOverflowFallsBackToThePages) {
  const PoolOptions options =
      PoolOptions().set_batch(4).set_cache_bytes(0).set_max_cache_bytes(
          0);  // Limit 8, fixed.
  UseOptions(PoolOptions(options).set_transfer_batches(2));
  {
    ThreadCache tc(&pool());
    std::vector<void*> blocks;
    for (int i = 0; i < 20; ++i) blocks.push_back(tc.Allocate(3));
    const size_t free_in_pages = pool().stats().classes[3].blocks_free_in_pages;
    // Flushes at the 9th, 13th and 17th frees: two batches fill the
    // transfer cache, the third finds it full and goes to its pages.
    for (void* p : blocks) tc.Free(p, 3);
    const PoolStats stats = pool().stats();
    EXPECT_EQ(tc.cached_blocks(3), 8u);
    EXPECT_EQ(stats.flushes, 3u);
    EXPECT_EQ(stats.transfer_flushes, 2u);
    EXPECT_EQ(stats.transfer_overflows, 1u);
    EXPECT_EQ(stats.classes[3].blocks_in_transfer, 8u);
    EXPECT_EQ(stats.classes[3].blocks_free_in_pages, free_in_pages + 4);
    EXPECT_EQ(stats.classes[3].blocks_out, 8u);  // The thread cache's.
  }

  // With the transfer cache off, every flush goes to the pages.
  UseOptions(PoolOptions(options).set_transfer_batches(0));
  ThreadCache tc(&pool());
  std::vector<void*> blocks;
  for (int i = 0; i < 12; ++i) blocks.push_back(tc.Allocate(3));
  const size_t free_in_pages = pool().stats().classes[3].blocks_free_in_pages;
  for (void* p : blocks) tc.Free(p, 3);  // The 9th flushes.
  const PoolStats stats = pool().stats();
  EXPECT_EQ(stats.flushes, 1u);
  EXPECT_EQ(stats.transfer_flushes, 0u);
  EXPECT_EQ(stats.transfer_overflows, 1u);
  EXPECT_EQ(stats.classes[3].blocks_in_transfer, 0u);
  EXPECT_EQ(stats.classes[3].blocks_free_in_pages, free_in_pages + 4);
  EXPECT_EQ(stats.classes[3].blocks_out, 8u);
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
  // Small fixed caches (32 blocks a class), so that blocks keep moving
  // through the transfer caches and the pages; then limits that start there
  // and grow, each thread raising them as it allocates and cutting them as
  // it frees the other thread's blocks.
  for (const bool grow : {false, true}) {
    for (int threads : {2, 4, 8}) {
      SCOPED_TRACE(grow ? "growing limits" : "fixed limits");
      UseOptions(
          PoolOptions().set_batch(16).set_cache_bytes(0).set_max_cache_bytes(
              grow ? size_t{1} << 20 : 0));
      std::atomic<uint64_t> raises{0};
      std::atomic<int> over_limit{0};
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
          if (tc.cached_blocks(cls) > tc.cache_limit(cls)) {
            over_limit.fetch_add(1);
          }
        }
        raises.fetch_add(tc.limit_raises());
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
        EXPECT_EQ(c.blocks_free_in_pages + c.blocks_in_transfer,
                  c.blocks_total);
      }
      EXPECT_GT(stats.refills, 0u);
      EXPECT_EQ(over_limit.load(), 0);
      if (grow) {
        // Every thread's first allocation of each class ran dry.
        EXPECT_GE(raises.load(), static_cast<uint64_t>(threads));
      } else {
        EXPECT_EQ(raises.load(), 0u);
        EXPECT_GT(stats.flushes, 0u);
        EXPECT_GT(stats.transfer_refills, 0u) << threads << " threads";
        EXPECT_GT(stats.transfer_flushes, 0u) << threads << " threads";
      }
      EXPECT_EQ(stats.dropped_frees, 0u);
      EXPECT_EQ(stats.pages_acquired - stats.pages_released, stats.pages);
      pool().DrainTransferCaches();
      for (const PoolClassStats& c : pool().stats().classes) {
        EXPECT_EQ(c.blocks_in_transfer, 0u);
        EXPECT_EQ(c.blocks_free_in_pages, c.blocks_total);
        EXPECT_EQ(c.empty_pages, c.pages);
      }
    }
  }
}

// Stats stay exact (total = free in pages + in transfer + out, and out is
// what the program holds) while blocks cross threads, flush into full
// transfer caches and are refilled from them.
TEST_F(PoolManagerTest, StatsBalanceAcrossThreads) {
  // Fixed limits (every 16 blocks a trip, through the transfer caches), and
  // limits that grow to hold each thread's working set.
  for (const bool grow : {false, true}) {
    for (int threads : {2, 4, 8}) {
      SCOPED_TRACE(grow ? "growing limits" : "fixed limits");
      UseOptions(PoolOptions()
                     .set_batch(8)
                     .set_cache_bytes(0)
                     .set_max_cache_bytes(grow ? size_t{1} << 20 : 0)
                     .set_transfer_batches(4));
      constexpr int kPerThread = 3000;
      // Each thread keeps every third block live and hands it to the main
      // thread; the rest it frees at once or after a while.
      std::vector<std::vector<std::pair<void*, int>>> kept(threads);
      std::atomic<int> nulls{0};
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
          ThreadCache tc(&pool());
          std::vector<std::pair<void*, int>> later;
          for (int i = 0; i < kPerThread; ++i) {
            const int cls = (i + t) % 4;
            void* p = tc.Allocate(cls);
            if (p == nullptr) {
              nulls.fetch_add(1);
              continue;
            }
            if (i % 3 == 0) {
              kept[t].emplace_back(p, cls);
            } else if (i % 3 == 1) {
              tc.Free(p, cls);
            } else {
              later.emplace_back(p, cls);
            }
            if (later.size() == 100) {
              for (auto [q, c] : later) tc.Free(q, c);
              later.clear();
            }
          }
          for (auto [q, c] : later) tc.Free(q, c);
        });
      }
      for (auto& w : workers) w.join();
      ASSERT_EQ(nulls.load(), 0);

      size_t live[PoolManager::kNumClasses] = {};
      for (const auto& v : kept) {
        for (const auto& item : v) ++live[item.second];
      }
      PoolStats stats = pool().stats();
      size_t pages = 0;
      for (int cls = 0; cls < PoolManager::kNumClasses; ++cls) {
        const PoolClassStats& c = stats.classes[cls];
        EXPECT_EQ(c.blocks_total, c.pages * c.blocks_per_page);
        EXPECT_EQ(c.blocks_free_in_pages + c.blocks_in_transfer + c.blocks_out,
                  c.blocks_total)
            << threads << " threads, class " << cls;
        // Every cache is gone (flushed): out is exactly what is live.
        EXPECT_EQ(c.blocks_out, live[cls])
            << threads << " threads, class " << cls;
        // 4 transfer slots of a batch each, or of up to two batches when a
        // flush also cut a raised limit.
        EXPECT_LE(c.blocks_in_transfer, (grow ? 2u : 1u) * 4u * 8u);
        pages += c.pages;
      }
      if (!grow) {
        EXPECT_GT(stats.transfer_flushes, 0u);
        EXPECT_GT(stats.transfer_refills, 0u);
      }
      EXPECT_EQ(stats.dropped_frees, 0u);

      {
        ThreadCache main_cache(&pool());
        for (const auto& v : kept) {
          for (auto [p, cls] : v) main_cache.Free(p, cls);
        }
      }
      EXPECT_EQ(BlocksOut(), 0u);
      EXPECT_EQ(pool().ReleaseEmptyPages(), pages * k64K) << threads;
      stats = pool().stats();
      EXPECT_EQ(stats.pages, 0u);
      for (const PoolClassStats& c : stats.classes) {
        EXPECT_EQ(c.blocks_in_transfer, 0u);
        EXPECT_EQ(c.blocks_free_in_pages, 0u);
      }
    }
  }
}

TEST_F(PoolManagerTest, ReleaseEmptyPagesReturnsExactlyTheEmptyPages) {
  constexpr int kCls = 3;  // 64 B: 1023 blocks a page.
  // A cache large enough to hold three pages' worth of blocks.
  UseOptions(PoolOptions().set_cache_bytes(size_t{4} << 20));
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

// Blocks parked in a transfer cache keep their pages from looking empty;
// ReleaseEmptyPages drains them first and then releases every page.
TEST_F(PoolManagerTest, ReleaseEmptyPagesDrainsTheTransferCacheFirst) {
  constexpr int kCls = 3;
  UseOptions(PoolOptions()
                 .set_batch(4)
                 .set_cache_bytes(0)
                 .set_max_cache_bytes(0)
                 .set_transfer_batches(1024));
  ThreadCache tc(&pool());
  const size_t n = 2 * pool().BlocksPerPage(kCls);
  std::vector<void*> blocks;
  for (size_t i = 0; i < n; ++i) blocks.push_back(tc.Allocate(kCls));
  for (void* p : blocks) tc.Free(p, kCls);
  tc.Flush();
  PoolStats stats = pool().stats();
  const PoolClassStats& c = stats.classes[kCls];
  EXPECT_EQ(c.pages, 2u);
  EXPECT_GE(c.blocks_in_transfer, n - 8);  // All but the cache's last few.
  EXPECT_EQ(c.blocks_out, 0u);
  EXPECT_EQ(c.blocks_free_in_pages + c.blocks_in_transfer, c.blocks_total);
  EXPECT_EQ(c.empty_pages, 0u);  // Not yet: their blocks are in transfer.

  EXPECT_EQ(pool().ReleaseEmptyPages(), 2 * k64K);
  stats = pool().stats();
  EXPECT_EQ(stats.pages, 0u);
  EXPECT_EQ(stats.pages_released, 2u);
  EXPECT_EQ(stats.classes[kCls].blocks_in_transfer, 0u);
  EXPECT_EQ(stats.classes[kCls].blocks_total, 0u);
  EXPECT_EQ(stats.dropped_frees, 0u);
  EXPECT_EQ(cache_.stats().in_use_blocks, 0u);
  for (void* p : blocks) EXPECT_FALSE(pool().Owns(p));
}

// keep_per_class counts pages emptied by the drain too.
TEST_F(PoolManagerTest, ReleaseEmptyPagesKeepsPagesEmptiedByTheDrain) {
  UseOptions(
      PoolOptions().set_batch(4).set_cache_bytes(0).set_max_cache_bytes(0));
  ThreadCache tc(&pool());
  const size_t n = 2 * pool().BlocksPerPage(9);  // 4 KiB: 15 a page.
  std::vector<void*> blocks;
  for (size_t i = 0; i < n; ++i) blocks.push_back(tc.Allocate(9));
  for (void* p : blocks) tc.Free(p, 9);
  tc.Flush();
  ASSERT_GT(pool().stats().classes[9].blocks_in_transfer, 0u);
  EXPECT_EQ(pool().ReleaseEmptyPages(/*keep_per_class=*/1), k64K);
  PoolStats stats = pool().stats();
  EXPECT_EQ(stats.classes[9].pages, 1u);
  EXPECT_EQ(stats.classes[9].empty_pages, 1u);
  EXPECT_EQ(stats.classes[9].blocks_in_transfer, 0u);
  // The kept page serves again without a new one.
  void* p = tc.Allocate(9);
  EXPECT_NE(p, nullptr);
  EXPECT_EQ(pool().stats().pages_acquired, 2u);
  tc.Free(p, 9);
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

// The same frame every time: 3000 blocks of mixed classes (8 B to 512 B),
// freed in a scrambled order.
void MixedFrame(ThreadCache& tc) {
  std::vector<std::pair<void*, int>> live;
  std::mt19937 rng(42);
  for (int i = 0; i < 3000; ++i) {
    const int cls = static_cast<int>(rng() % 7);
    live.emplace_back(tc.Allocate(cls), cls);
  }
  std::shuffle(live.begin(), live.end(), rng);
  for (auto [p, cls] : live) tc.Free(p, cls);
}

TEST_F(PoolManagerTest, SteadyStateAcquiresNoPagesAfterWarmUp) {
  // Fixed limits: the frame's working set does not fit the cache, so every
  // frame visits the pages, and still acquires none.
  UseOptions(PoolOptions().set_max_cache_bytes(0));
  ThreadCache tc(&pool());
  const auto frame = [&tc] { MixedFrame(tc); };
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

TEST_F(PoolManagerTest, ReclaimStopsAtAnIdleClasssStart) {
  // Class 3 raised to 24 with all its blocks in use (none cached): class 4
  // takes its room down to its start, 8, and no further.
  UseOptions(
      GrowingOptions().set_thread_cache_bytes(kGrowingStartBytes + 16 * 64));
  ThreadCache tc(&pool());
  std::vector<std::pair<void*, int>> held;
  for (int i = 0; i < 16; ++i) held.emplace_back(tc.Allocate(3), 3);
  ASSERT_EQ(tc.cache_limit(3), 24u);
  ASSERT_EQ(tc.cached_blocks(3), 0u);
  const std::pair<uint32_t, uint32_t> expected[] = {{12, 16}, {16, 8}, {16, 8}};
  for (const auto& [limit4, limit3] : expected) {
    for (int i = 0; i < 4; ++i) held.emplace_back(tc.Allocate(4), 4);
    EXPECT_EQ(tc.cache_limit(4), limit4);
    EXPECT_EQ(tc.cache_limit(3), limit3);
    EXPECT_LE(tc.limit_bytes(), kGrowingStartBytes + 16 * 64);
  }
  for (auto [p, cls] : held) tc.Free(p, cls);
}

TEST_F(PoolManagerTest, BudgetBelowTheStartsKeepsEveryLimitAtItsStart) {
  UseOptions(GrowingOptions().set_thread_cache_bytes(1024));
  ThreadCache tc(&pool());
  std::vector<void*> blocks;
  for (int i = 0; i < 40; ++i) blocks.push_back(tc.Allocate(3));
  EXPECT_EQ(tc.cache_limit(3), 8u);
  EXPECT_EQ(tc.limit_raises(), 0u);
  EXPECT_EQ(tc.limit_bytes(), kGrowingStartBytes);  // The starts still hold.
  for (void* p : blocks) tc.Free(p, 3);
  // 8 cached, then every fourth free flushes a batch: 8 at the end.
  EXPECT_EQ(tc.cached_blocks(3), 8u);
  EXPECT_EQ(pool().stats().flushes, 8u);
}

TEST_F(PoolManagerTest, RaisesAndCutsStopExactlyAtTheCeilingAndTheStart) {
  // A ceiling of 14, not a multiple of the batch (4): raises of 4 then 2;
  // cuts of 4 then 2 back to the start, 8.
  UseOptions(GrowingOptions().set_max_cache_bytes(14 * 64));
  ThreadCache consumer(&pool());
  ThreadCache producer(&pool());
  std::vector<void*> own;
  for (int i = 0; i < 12; ++i) own.push_back(consumer.Allocate(3));
  EXPECT_EQ(consumer.cache_limit(3), 14u);
  EXPECT_EQ(consumer.limit_raises(), 2u);
  for (void* p : own) consumer.Free(p, 3);
  std::vector<uint32_t> limits = {consumer.cache_limit(3)};
  for (int i = 0; i < 200; ++i) {
    consumer.Free(producer.Allocate(3), 3);
    if (limits.back() != consumer.cache_limit(3)) {
      limits.push_back(consumer.cache_limit(3));
    }
  }
  EXPECT_EQ(limits, (std::vector<uint32_t>{14, 10, 8}));
  EXPECT_EQ(consumer.limit_cuts(), 2u);
  // The cut flushes went to the transfer cache whole (4 + 4 and 4 + 2
  // blocks), and a refill hands such a batch over in one piece.
  const PoolStats stats = pool().stats();
  EXPECT_GT(stats.transfer_flushes, 0u);
  EXPECT_EQ(stats.dropped_frees, 0u);
}

TEST_F(PoolManagerTest, PoolBudgetBoundsAllCachesTogether) {
  // 16 blocks of 64 B of raises for the whole pool: the first cache takes
  // them all, the second none until the first gives them back.
  UseOptions(GrowingOptions().set_total_thread_cache_bytes(16 * 64));
  ThreadCache a(&pool());
  ThreadCache b(&pool());
  std::vector<void*> blocks_a, blocks_b;
  for (int i = 0; i < 40; ++i) blocks_a.push_back(a.Allocate(3));
  EXPECT_EQ(a.cache_limit(3), 24u);
  EXPECT_EQ(pool().raised_cache_bytes(), 16u * 64);
  for (int i = 0; i < 40; ++i) blocks_b.push_back(b.Allocate(3));
  EXPECT_EQ(b.cache_limit(3), 8u);
  EXPECT_EQ(b.limit_raises(), 0u);
  for (void* p : blocks_a) a.Free(p, 3);
  a.Flush();  // Gives its raises back.
  EXPECT_EQ(a.cache_limit(3), 8u);
  EXPECT_EQ(pool().raised_cache_bytes(), 0u);
  for (int i = 0; i < 8; ++i) blocks_b.push_back(b.Allocate(3));
  EXPECT_EQ(b.cache_limit(3), 16u);  // Two refills, two raises.
  EXPECT_EQ(pool().raised_cache_bytes(), 8u * 64);
  for (void* p : blocks_b) b.Free(p, 3);
}

TEST_F(PoolManagerTest, PoolBudgetGrantsPartRaisesAndCutsGiveBack) {
  // Room for 6 blocks: a raise of 4, then one of 2; then the cache's
  // overflow cuts return them, a batch at a time.
  UseOptions(GrowingOptions().set_total_thread_cache_bytes(6 * 64));
  ThreadCache consumer(&pool());
  ThreadCache producer(&pool());
  std::vector<void*> own;
  for (int i = 0; i < 12; ++i) own.push_back(consumer.Allocate(3));
  EXPECT_EQ(consumer.cache_limit(3), 14u);
  EXPECT_EQ(pool().raised_cache_bytes(), 6u * 64);
  for (void* p : own) consumer.Free(p, 3);
  for (int i = 0; i < 200; ++i) consumer.Free(producer.Allocate(3), 3);
  EXPECT_EQ(consumer.cache_limit(3), 8u);
  // The producer, always dry, took what the consumer's cuts gave back.
  EXPECT_EQ(producer.cache_limit(3), 14u);
  EXPECT_EQ(pool().raised_cache_bytes(), 6u * 64);
}

TEST_F(PoolManagerTest, RoomMovesWithinACacheWhenThePoolBudgetIsSpent) {
  // The pool's allowance spent on class 3, whose blocks then sit unused:
  // class 4 takes class 3's room, and the pool's figure does not move.
  UseOptions(GrowingOptions().set_total_thread_cache_bytes(16 * 64));
  ThreadCache tc(&pool());
  std::vector<std::pair<void*, int>> held;
  for (int i = 0; i < 16; ++i) held.emplace_back(tc.Allocate(3), 3);
  ASSERT_EQ(tc.cache_limit(3), 24u);
  ASSERT_EQ(pool().raised_cache_bytes(), 16u * 64);
  for (int i = 0; i < 4; ++i) held.emplace_back(tc.Allocate(4), 4);
  EXPECT_EQ(tc.cache_limit(4), 12u);
  EXPECT_EQ(tc.cache_limit(3), 16u);
  EXPECT_EQ(pool().raised_cache_bytes(), 16u * 64);
  for (auto [p, cls] : held) tc.Free(p, cls);
}

TEST_F(PoolManagerTest, ReclaimedSurplusGoesBackToThePool) {
  // The pool's allowance spent on class 9 (4 KiB): one raise of 4 blocks,
  // unused. Class 3 then needs 4 blocks of 64 B (256 B): the cut takes a
  // whole 4 KiB block, and what class 3 does not use goes back to the pool.
  UseOptions(GrowingOptions()
                 .set_max_cache_bytes(64 * 4096)
                 .set_total_thread_cache_bytes(4 * 4096));
  ThreadCache tc(&pool());
  std::vector<std::pair<void*, int>> held;
  held.emplace_back(tc.Allocate(9), 9);  // One refill: 4 blocks, one raise.
  ASSERT_EQ(tc.cache_limit(9), 12u);
  ASSERT_EQ(pool().raised_cache_bytes(), 4u * 4096);
  const size_t before = tc.limit_bytes();
  held.emplace_back(tc.Allocate(3), 3);
  EXPECT_EQ(tc.cache_limit(3), 12u);
  EXPECT_EQ(tc.cache_limit(9), 11u);
  EXPECT_EQ(pool().raised_cache_bytes(), 4u * 4096 - (4096 - 4 * 64));
  EXPECT_EQ(tc.limit_bytes(), before - (4096 - 4 * 64));
  for (auto [p, cls] : held) tc.Free(p, cls);
}

TEST_F(PoolManagerTest, PoolBudgetHoldsWithThreadsCompeting) {
  // Four threads raising, cutting and flushing against a 64 KiB allowance:
  // the pool's count stays within it and returns to 0 when they are gone.
  UseOptions(PoolOptions()
                 .set_batch(8)
                 .set_cache_bytes(0)
                 .set_total_thread_cache_bytes(size_t{64} << 10));
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      ThreadCache tc(&pool());
      std::vector<void*> blocks;
      for (int round = 0; round < 50; ++round) {
        const int cls = (round + t) % 5;
        for (int i = 0; i < 100 + 20 * t; ++i)
          blocks.push_back(tc.Allocate(cls));
        if (pool().raised_cache_bytes() > (size_t{64} << 10)) over = true;
        for (void* p : blocks) tc.Free(p, cls);
        blocks.clear();
        if (round % 7 == 6) tc.Flush();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(over.load());
  EXPECT_EQ(pool().raised_cache_bytes(), 0u);
  EXPECT_EQ(BlocksOut(), 0u);
}

TEST_F(PoolManagerTest, GrownLimitsMakeNoTripAfterWarmUp) {
  // MixedFrame with the default options: the first frame raises each
  // class's limit to its share of the 3000 blocks, and from then on every
  // allocation and free stays in the thread.
  ThreadCache tc(&pool());
  const auto frame = [&tc] { MixedFrame(tc); };
  frame();
  const PoolStats warm = pool().stats();
  EXPECT_GT(warm.refills, 0u);
  EXPECT_EQ(warm.flushes, 0u);
  const size_t limit_bytes = tc.limit_bytes();
  EXPECT_LE(limit_bytes, pool().options().thread_cache_bytes);
  for (int i = 0; i < 100; ++i) frame();
  const PoolStats steady = pool().stats();
  EXPECT_EQ(steady.refills, warm.refills);
  EXPECT_EQ(steady.flushes, 0u);
  EXPECT_EQ(steady.pages_acquired, warm.pages_acquired);
  EXPECT_EQ(tc.limit_bytes(), limit_bytes);
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

// The same detections when a batch leaves the cache on its own (past the
// cache limit), not at a Flush(): a batch with a bad block never enters the
// transfer cache (where another thread's refill would hand it out); it goes
// block by block to the pages, the bad block is reported and dropped, the
// good ones are kept.
class BatchMisuseTest : public PoolManagerTest {
 protected:
  // Batch 2, limit 4 (fixed): the fifth free flushes the two newest blocks.
  void SetUp() override {
    UseOptions(
        PoolOptions().set_batch(2).set_cache_bytes(0).set_max_cache_bytes(0));
  }
  // Frees three good blocks of `cls` (from `tc`), then `bad` as `cls`, then
  // one more good block: that free flushes {good, bad}.
  void FlushWithABadBlock(ThreadCache& tc, int cls, void* bad) {
    tc.Flush();  // An empty list, so that the count below is exact.
    for (int i = 0; i < 4; ++i) good_.push_back(tc.Allocate(cls));
    for (int i = 0; i < 3; ++i) tc.Free(good_[i], cls);
    tc.Free(bad, cls);
    before_ = pool().stats();
    tc.Free(good_[3], cls);
    ASSERT_EQ(pool().stats().flushes, before_.flushes + 1);
  }
  // The flush since before_ went to the pages and dropped one block.
  void ExpectFellBackToThePages(int cls) {
    const PoolStats stats = pool().stats();
    EXPECT_EQ(stats.transfer_flushes, before_.transfer_flushes);
    EXPECT_EQ(stats.transfer_overflows, before_.transfer_overflows);
    EXPECT_EQ(stats.classes[cls].blocks_in_transfer,
              before_.classes[cls].blocks_in_transfer);
    EXPECT_EQ(stats.dropped_frees, before_.dropped_frees + 1);
    // The good block of the batch is back in its page.
    EXPECT_EQ(stats.classes[cls].blocks_free_in_pages,
              before_.classes[cls].blocks_free_in_pages + 1);
  }
  std::vector<void*> good_;
  PoolStats before_;
};

TEST_F(BatchMisuseTest, ForeignPointerIsReportedAtTheBatchFlush) {
  PoolManager other(&cache_);
  ThreadCache other_tc(&other);
  ThreadCache tc(&pool());
  void* theirs = other_tc.Allocate(3);
  ErrorRecorder errors;
  FlushWithABadBlock(tc, 3, theirs);
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("pool free of a pointer this pool never gave out"));
  ExpectFellBackToThePages(3);
  FRAMEALLOC_UNPOISON(theirs, 64);
  other_tc.Free(theirs, 3);
}

TEST_F(BatchMisuseTest, WrongSizeClassIsReportedAtTheBatchFlush) {
  ThreadCache tc(&pool());
  void* p = tc.Allocate(3);  // 64 B, freed among 128 B blocks.
  ErrorRecorder errors;
  FlushWithABadBlock(tc, 4, p);
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("freed with the wrong size class (block of 64 B "
                        "freed as 128 B)"));
  ExpectFellBackToThePages(4);
  FRAMEALLOC_UNPOISON(p, 64);
  tc.Free(p, 3);
}

TEST_F(BatchMisuseTest, InteriorPointerIsReportedAtTheBatchFlush) {
  ThreadCache tc(&pool());
  char* p = static_cast<char*>(tc.Allocate(3));
  ErrorRecorder errors;
  FlushWithABadBlock(tc, 3, p + 8);
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("is not the start of a block"));
  ExpectFellBackToThePages(3);
  FRAMEALLOC_UNPOISON(p, 64);
  tc.Free(p, 3);
}

TEST_F(BatchMisuseTest, NeverCarvedBlockIsReportedAtTheBatchFlush) {
  ThreadCache tc(&pool());
  char* p = static_cast<char*>(tc.Allocate(3));
  ErrorRecorder errors;
  // Block-aligned and in a page of the class, but never handed out (and so
  // poisoned: opened for the Free's write of its link).
  FRAMEALLOC_UNPOISON(p + 64 * 500, 64);
  FlushWithABadBlock(tc, 3, p + 64 * 500);
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message,
              HasSubstr("is not the start of a block handed out"));
  ExpectFellBackToThePages(3);
  tc.Free(p, 3);
}

#if !FRAMEALLOC_HAS_ASAN
// Under ASan the second Free writes into a poisoned block and is an ASan
// report instead (DoubleFreeIsAnAsanReport).
TEST_F(BatchMisuseTest, DoubleFreeIsReportedAtTheBatchFlush) {
  constexpr int kCls = 9;  // 4 KiB: 15 blocks a page.
  ThreadCache tc(&pool());
  std::vector<void*> first;  // All 15 blocks of the first page.
  std::vector<void*> second;
  for (int i = 0; i < 20; ++i) {
    void* p = tc.Allocate(kCls);
    (i < 15 ? first : second).push_back(p);
  }
  ASSERT_EQ(PageOf(first.front(), k64K), PageOf(first.back(), k64K));
  ASSERT_NE(PageOf(first.front(), k64K), PageOf(second.front(), k64K));
  // Every block of the first page but `a` goes back to it, `x` among them.
  void* a = first[0];
  void* x = first[1];
  for (size_t i = 1; i < first.size(); ++i) tc.Free(first[i], kCls);
  tc.Flush();
  pool().DrainTransferCaches();
  ASSERT_EQ(pool().stats().classes[kCls].blocks_out, 1u + 5u);  // a, second.
  ErrorRecorder errors;
  // Three blocks of the other page, then x again and a: the batch flushed,
  // {a, x}, holds two blocks of a page that has one block out.
  for (int i = 0; i < 3; ++i) tc.Free(second[i], kCls);
  tc.Free(x, kCls);
  before_ = pool().stats();
  tc.Free(a, kCls);
  EXPECT_EQ(pool().stats().flushes, before_.flushes + 1);
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message, HasSubstr("a double free"));
  ExpectFellBackToThePages(kCls);
  EXPECT_EQ(pool().stats().classes[kCls].empty_pages, 1u);  // a is back.
  for (size_t i = 3; i < second.size(); ++i) tc.Free(second[i], kCls);
}

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
      {PoolOptions().set_batch(2000), "PoolOptions.batch = 2000"},
      {PoolOptions().set_cache_bytes((size_t{256} << 20) + 1),
       "PoolOptions.cache_bytes = 268435457 is above 268435456"},
      {PoolOptions().set_max_cache_bytes((size_t{256} << 20) + 1),
       "PoolOptions.max_cache_bytes = 268435457 is above 268435456"},
      {PoolOptions().set_thread_cache_bytes((size_t{512} << 20) + 1),
       "PoolOptions.thread_cache_bytes = 536870913 is above 536870912"},
      {PoolOptions().set_transfer_batches(-1),
       "PoolOptions.transfer_batches = -1 is outside [0, 4096]"},
      {PoolOptions().set_transfer_batches(4097),
       "PoolOptions.transfer_batches = 4097"},
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
                                              .set_cache_bytes(0)
                                              .set_transfer_batches(0))
                  .ok());
  EXPECT_TRUE(
      PoolManager::Create(&cache, PoolOptions()
                                      .set_page_size(size_t{4} << 20)
                                      .set_batch(1024)
                                      .set_cache_bytes(size_t{256} << 20)
                                      .set_transfer_batches(4096))
          .ok());
}

TEST_F(PoolManagerDeathTest, InvalidOptionsAreFatalInTheConstructor) {
  EXPECT_DEATH(PoolManager(&cache_, PoolOptions().set_batch(0)),
               "PoolOptions.batch = 0");
  EXPECT_DEATH(PoolManager(&cache_, PoolOptions().set_transfer_batches(-5)),
               "PoolOptions.transfer_batches = -5");
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

TEST_F(PoolManagerDeathTest, UseAfterFreeInTheTransferCacheIsAnAsanReport) {
  UseOptions(
      PoolOptions().set_batch(2).set_cache_bytes(0).set_max_cache_bytes(0));
  ThreadCache tc(&pool());  // Limit 4, fixed.
  char* blocks[5];
  for (char*& p : blocks) p = static_cast<char*>(tc.Allocate(3));
  for (char* p : blocks) tc.Free(p, 3);  // The 5th flushes blocks 4 and 3.
  ASSERT_EQ(pool().stats().classes[3].blocks_in_transfer, 2u);
  EXPECT_DEATH(blocks[4][0] = 2, "use-after-poison");  // Its link word.
  EXPECT_DEATH(blocks[3][40] = 2, "use-after-poison");
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
