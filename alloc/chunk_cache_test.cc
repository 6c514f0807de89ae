#include "alloc/chunk_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "alloc/internal/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

using alloc_internal::CountingSource;
using alloc_internal::ErrorRecorder;
using ::testing::HasSubstr;

constexpr size_t k64K = size_t{64} << 10;

size_t Page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// Resident pages of a block of `bytes` bytes.
int Resident(const Block& block, size_t bytes) {
  return alloc_internal::ResidentPages(block.data, bytes / Page());
}

// Whether this kernel commits pages on request (MADV_POPULATE_WRITE).
bool KernelCanPopulate() {
  MmapMemorySource probe;
  absl::StatusOr<Block> b = probe.Allocate(Page(), Page());
  if (!b.ok()) return false;
  const bool can = !absl::IsUnimplemented(PopulatePages(b->data, b->size));
  probe.Deallocate(*b);
  return can;
}

TEST(ChunkCacheTest, CommitsBlocksFromTheSourceOnce) {
  if (!KernelCanPopulate()) {
    GTEST_SKIP() << "the kernel cannot commit pages (MADV_POPULATE_WRITE)";
  }
  MmapMemorySource source;  // Fresh mappings: nothing resident before.
  ChunkCache cache(&source);
  ASSERT_TRUE(cache.options().populate);  // The default.
  const size_t bytes = size_t{1} << 20;
  absl::StatusOr<Block> a = cache.Acquire(bytes, Page());
  ASSERT_TRUE(a.ok());
  ChunkCacheStats stats = cache.stats();
  EXPECT_EQ(stats.populated_blocks, 1u);
  EXPECT_EQ(stats.populate_failures, 0u);
  EXPECT_EQ(Resident(*a, bytes), static_cast<int>(bytes / Page()));
  cache.Release(*a);
  // From the cache: committed already, not counted again.
  absl::StatusOr<Block> b = cache.Acquire(bytes, Page());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->data, a->data);
  EXPECT_EQ(cache.stats().populated_blocks, 1u);
  cache.Release(*b);
}

// Acquires a block of `bytes` from a cache with `options` that must not
// commit it: nothing resident until touched, then the one page touched.
void ExpectPagesFaultInAsTouched(ChunkCacheOptions options, size_t bytes) {
  MmapMemorySource source;
  ChunkCache cache(&source, options);
  absl::StatusOr<Block> a = cache.Acquire(bytes, Page());
  ASSERT_TRUE(a.ok());
  // No huge page may stand in for the one page touched below.
  ASSERT_EQ(madvise(a->data, bytes, MADV_NOHUGEPAGE), 0);
  EXPECT_EQ(Resident(*a, bytes), 0);
  static_cast<char*>(a->data)[3 * Page()] = 1;
  EXPECT_EQ(Resident(*a, bytes), 1);
  const ChunkCacheStats stats = cache.stats();
  EXPECT_EQ(stats.populated_blocks, 0u);
  EXPECT_EQ(stats.populate_failures, 0u);
  cache.Release(*a);
}

TEST(ChunkCacheTest, BlocksAbovePopulateMaxBytesFaultInAsTouched) {
  ExpectPagesFaultInAsTouched(
      ChunkCacheOptions().set_populate_max_bytes(size_t{1} << 20),
      size_t{2} << 20);
}

TEST(ChunkCacheTest, WithoutPopulatePagesWaitForFirstTouch) {
  ExpectPagesFaultInAsTouched(ChunkCacheOptions().set_populate(false),
                              size_t{1} << 20);
}

// Regression (review): alignment was checked only on a miss (by the
// source); a hit computed `address % alignment`, so alignment 0 raised
// SIGFPE and alignment 3 was accepted.
TEST(ChunkCacheTest, BadAlignmentsAreRefusedOnAHitToo) {
  CountingSource source;
  ChunkCache cache(&source);
  absl::StatusOr<Block> block = cache.Acquire(4096, 4096);
  ASSERT_TRUE(block.ok());
  cache.Release(*block);
  for (const size_t alignment : {size_t{0}, size_t{3}, size_t{24}}) {
    SCOPED_TRACE(alignment);
    absl::StatusOr<Block> bad = cache.Acquire(4096, alignment);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(bad.status().message(), HasSubstr("alignment"));
  }
  EXPECT_EQ(cache.stats().cached_blocks, 1u);  // The idle block stays.
  block = cache.Acquire(4096, 4096);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(cache.stats().hits, 1u);
  cache.Release(*block);
}

// Regression (review): released blocks were filed by their size and
// looked up by their class, so a source that rounds blocks up (64 KiB
// pages) never had one found again: every chunk came from the source.
// Now a rounded block is filed under the class it was acquired for.
TEST(ChunkCacheTest, BlocksASourceRoundedUpAreFoundAgain) {
  alloc_internal::RoundingSource source(64 << 10);
  ChunkCache cache(&source);
  ASSERT_EQ(ChunkCache::SizeClass(100 << 10), size_t{104} << 10);
  absl::StatusOr<Block> first = cache.Acquire(100 << 10, 64);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->size, size_t{128} << 10);  // Rounded by the source.
  cache.Release(*first);
  absl::StatusOr<Block> again = cache.Acquire(100 << 10, 64);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->data, first->data);
  EXPECT_EQ(cache.stats().hits, 1u);
  EXPECT_EQ(source.allocate_calls(), 1);
  cache.Release(*again);
  // Filed under its class (104 KiB): a 40 KiB request does not take it.
  absl::StatusOr<Block> small = cache.Acquire(40 << 10, 64);
  ASSERT_TRUE(small.ok());
  EXPECT_NE(small->data, first->data);
  EXPECT_EQ(small->size, size_t{64} << 10);
  cache.Release(*small);
  EXPECT_EQ(cache.stats().hits, 1u);
}

TEST(ChunkCacheTest, SizeClasses) {
  EXPECT_EQ(ChunkCache::SizeClass(1), 4096u);
  EXPECT_EQ(ChunkCache::SizeClass(4096), 4096u);
  EXPECT_EQ(ChunkCache::SizeClass(4097), 8192u);
  EXPECT_EQ(ChunkCache::SizeClass(k64K), k64K);  // Powers of two are exact.
  // 100 KiB lies in (64 KiB, 128 KiB]: steps of 8 KiB.
  EXPECT_EQ(ChunkCache::SizeClass(100 << 10), 104u << 10);
  // 1.5 MiB + 1 lies in (1 MiB, 2 MiB]: steps of 128 KiB.
  EXPECT_EQ(ChunkCache::SizeClass((3 << 19) + 1), (3u << 19) + (128u << 10));
}

TEST(ChunkCacheTest, ReusesReleasedBlocks) {
  CountingSource source;
  ChunkCache cache(&source);
  absl::StatusOr<Block> a = cache.Acquire(k64K, 4096);
  ASSERT_TRUE(a.ok());
  cache.Release(*a);
  absl::StatusOr<Block> b = cache.Acquire(k64K, 4096);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->data, a->data);
  EXPECT_EQ(source.allocate_calls(), 1);
  ChunkCacheStats stats = cache.stats();
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 1u);
  EXPECT_EQ(stats.in_use_blocks, 1u);
  EXPECT_EQ(stats.in_use_bytes, k64K);
  EXPECT_EQ(stats.cached_blocks, 0u);
  cache.Release(*b);
  EXPECT_EQ(cache.stats().cached_bytes, k64K);
}

TEST(ChunkCacheTest, DoesNotServeAnotherSizeClass) {
  CountingSource source;
  ChunkCache cache(&source);
  absl::StatusOr<Block> big = cache.Acquire(2 * k64K, 4096);
  ASSERT_TRUE(big.ok());
  cache.Release(*big);
  absl::StatusOr<Block> small = cache.Acquire(k64K, 4096);
  ASSERT_TRUE(small.ok());
  EXPECT_NE(small->data, big->data);
  EXPECT_EQ(small->size, k64K);
  EXPECT_EQ(source.allocate_calls(), 2);
  cache.Release(*small);
}

TEST(ChunkCacheTest, HonoursAlignmentOfCachedBlocks) {
  CountingSource source;
  ChunkCache cache(&source);
  absl::StatusOr<Block> a = cache.Acquire(k64K, 16);
  ASSERT_TRUE(a.ok());
  const bool a_is_page_aligned =
      reinterpret_cast<uintptr_t>(a->data) % (1 << 20) == 0;
  cache.Release(*a);
  absl::StatusOr<Block> b = cache.Acquire(k64K, 1 << 20);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data) % (1 << 20), 0u);
  EXPECT_EQ(b->data == a->data, a_is_page_aligned);
  cache.Release(*b);
}

TEST(ChunkCacheTest, MaxCachedBytesCapsIdleMemory) {
  CountingSource source;
  ChunkCache cache(&source, ChunkCacheOptions().set_max_cached_bytes(k64K));
  absl::StatusOr<Block> a = cache.Acquire(k64K, 4096);
  absl::StatusOr<Block> b = cache.Acquire(k64K, 4096);
  ASSERT_TRUE(a.ok() && b.ok());
  cache.Release(*a);
  cache.Release(*b);  // Over the cap: straight back to the source.
  EXPECT_EQ(source.deallocate_calls(), 1);
  EXPECT_EQ(cache.stats().cached_bytes, k64K);
  EXPECT_EQ(cache.stats().returned_to_source, 1u);
}

TEST(ChunkCacheTest, SteadyEpochsMakeNoSourceCalls) {
  CountingSource source;
  ChunkCache cache(&source, ChunkCacheOptions().set_trim_window_epochs(4));
  auto frame = [&] {
    std::vector<Block> blocks;
    for (size_t size : {k64K, 2 * k64K, 4 * k64K, 300 * 1024ul}) {
      absl::StatusOr<Block> b = cache.Acquire(size, 4096);
      ASSERT_TRUE(b.ok());
      blocks.push_back(*b);
    }
    for (const Block& b : blocks) cache.Release(b);
    cache.EndEpoch();
  };
  frame();
  const int warm_calls = source.allocate_calls();
  EXPECT_EQ(warm_calls, 4);
  for (int i = 0; i < 100; ++i) frame();
  EXPECT_EQ(source.allocate_calls(), warm_calls);
  EXPECT_EQ(source.deallocate_calls(), 0);
}

TEST(ChunkCacheTest, EndEpochTrimsWhatRecentEpochsDidNotNeed) {
  CountingSource source;
  ChunkCache cache(&source, ChunkCacheOptions().set_trim_window_epochs(3));
  // One spike epoch needing 8 blocks...
  std::vector<Block> spike;
  for (int i = 0; i < 8; ++i) spike.push_back(*cache.Acquire(k64K, 4096));
  for (const Block& b : spike) cache.Release(b);
  EXPECT_EQ(cache.EndEpoch(), 0u);  // Window not full yet.
  // ...then quiet epochs needing 2.
  size_t trimmed = 0;
  for (int epoch = 0; epoch < 3; ++epoch) {
    Block a = *cache.Acquire(k64K, 4096);
    Block b = *cache.Acquire(k64K, 4096);
    cache.Release(a);
    cache.Release(b);
    trimmed += cache.EndEpoch();
  }
  // Once the spike left the window, only two blocks' worth stays idle.
  EXPECT_EQ(trimmed, 6 * k64K);
  EXPECT_EQ(cache.stats().cached_bytes, 2 * k64K);
  EXPECT_EQ(source.deallocate_calls(), 6);
}

TEST(ChunkCacheTest, TrimWindowZeroNeverTrims) {
  CountingSource source;
  ChunkCache cache(&source, ChunkCacheOptions().set_trim_window_epochs(0));
  cache.Release(*cache.Acquire(k64K, 4096));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(cache.EndEpoch(), 0u);
  EXPECT_EQ(cache.stats().cached_bytes, k64K);
  EXPECT_EQ(cache.stats().epochs, 10u);
}

TEST(ChunkCacheTest, ExplicitTrimKeepsRequestedBytes) {
  CountingSource source;
  ChunkCache cache(&source);
  Block a = *cache.Acquire(k64K, 4096);
  Block b = *cache.Acquire(4 * k64K, 4096);
  cache.Release(a);
  cache.Release(b);
  EXPECT_EQ(cache.Trim(k64K), 4 * k64K);  // Largest first.
  EXPECT_EQ(cache.stats().cached_bytes, k64K);
  EXPECT_EQ(cache.Trim(0), k64K);
  EXPECT_EQ(source.stats().bytes_outstanding, 0u);
}

TEST(ChunkCacheTest, SourceErrorsPassThrough) {
  CountingSource source;
  source.RefuseAfter(0);
  ChunkCache cache(&source);
  absl::StatusOr<Block> block = cache.Acquire(k64K, 4096);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.stats().in_use_blocks, 0u);
  EXPECT_EQ(cache.Acquire(0, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Acquire(4096, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChunkCacheTest, CreateValidatesOptions) {
  CountingSource source;
  EXPECT_EQ(ChunkCache::Create(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad = ChunkCache::Create(&source,
                                ChunkCacheOptions().set_trim_window_epochs(-1));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(),
              ::testing::HasSubstr("ChunkCacheOptions.trim_window_epochs"));
  EXPECT_TRUE(ChunkCache::Create(&source).ok());
}

TEST(ChunkCacheTest, DestroyReturnsIdleBlocksAndReportsLeakedOnes) {
  CountingSource source;
  ErrorRecorder errors;
  Block leaked;
  {
    ChunkCache cache(&source);
    cache.Release(*cache.Acquire(k64K, 4096));
    leaked = *cache.Acquire(2 * k64K, 4096);
  }
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_EQ(errors.reports()[0].kind, ErrorKind::kMisuse);
  EXPECT_THAT(errors.reports()[0].message,
              ::testing::HasSubstr("1 blocks (131072 bytes) still acquired"));
  EXPECT_EQ(source.stats().bytes_outstanding, 2 * k64K);
  source.Deallocate(leaked);
}

TEST(ChunkCacheTest, ConcurrentAcquireReleaseLosesNothing) {
  for (int threads : {2, 4, 8}) {
    CountingSource source;
    ChunkCache cache(&source);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&cache, t] {
        for (int i = 0; i < 500; ++i) {
          Block b = *cache.Acquire(k64K << (i % 3), 4096);
          static_cast<char*>(b.data)[0] = static_cast<char>(t);
          cache.Release(b);
          if (i % 50 == 0) cache.EndEpoch();
        }
      });
    }
    for (auto& w : workers) w.join();
    ChunkCacheStats stats = cache.stats();
    EXPECT_EQ(stats.in_use_blocks, 0u);
    EXPECT_EQ(stats.hits + stats.misses, 500u * threads);
    EXPECT_EQ(stats.releases, 500u * threads);
    EXPECT_EQ(source.stats().bytes_outstanding, stats.cached_bytes);
  }
}

}  // namespace
}  // namespace framealloc
