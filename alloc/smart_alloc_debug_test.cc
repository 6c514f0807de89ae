// Each memory mistake the debug aids catch, provoked and asserted exactly.
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "alloc/internal/sanitizer.h"
#include "alloc/internal/test_util.h"
#include "alloc/smart_alloc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

using alloc_internal::ErrorRecorder;
using ::testing::HasSubstr;
using ::testing::StartsWith;

bool AllBytes(const void* p, size_t n, unsigned char value) {
  const auto* bytes = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    if (bytes[i] != value) return false;
  }
  return true;
}

class SmartAllocDebugTest : public ::testing::Test {
 protected:
  SmartAlloc alloc_{AllocConfig().set_debug(DebugOptions::All())};
  ErrorRecorder errors_;

  std::string only_error() {
    EXPECT_EQ(errors_.count(), 1u);
    return errors_.count() == 0 ? "" : errors_.reports()[0].message;
  }
};

TEST_F(SmartAllocDebugTest, FreshMemoryCarriesTheFreshPattern) {
  void* frame = alloc_.frame_allocate(64);
  void* pool = alloc_.pool_allocate(40);
  void* heap = alloc_.heap_alloc(5000);
  EXPECT_TRUE(AllBytes(frame, 64, kFreshFill));
  EXPECT_TRUE(AllBytes(pool, 40, kFreshFill));
  EXPECT_TRUE(AllBytes(heap, 5000, kFreshFill));
  alloc_.pool_deallocate(pool, 40);
  alloc_.heap_free(heap);
  EXPECT_EQ(errors_.count(), 0u);
}

// Regression (found by //alloc/fuzz:smart_alloc_fuzzer): the canaries of an
// allocation released by a rewind of the frame arena were still checked at
// the frame's end, in memory reused since (a false "buffer overflow"; under
// ASan a use-after-poison read).
TEST_F(SmartAllocDebugTest, RewoundFrameAllocationsAreNotCheckedAtFrameEnd) {
  {
    ArenaScope scope(&alloc_.frame_arena());
    alloc_.frame_allocate(16);
  }
  // Reuses the rewound bytes, canaries included.
  std::memset(alloc_.frame_allocate(256), 0x11, 256);
  alloc_.end_frame();
  EXPECT_EQ(errors_.count(), 0u);
}

// Regression (found next to the one above): the released-memory fill wrote
// into every chunk of the frame, also those Reset() had already given back
// to the cache (another arena's, or the source's, by then).
TEST(SmartAllocDebugFillTest, ReleasedFillStaysInMemoryTheArenaHolds) {
  // Keeps what it takes back, marked, to see whether anyone writes to it.
  class KeepingSource final : public MemorySource {
   public:
    ~KeepingSource() override {
      for (const Block& b : returned_) {
        SystemMemorySource::Default().Deallocate(b);
      }
    }
    absl::string_view name() const override { return "keeping"; }
    bool ReturnedUntouched() const {
      for (const Block& b : returned_) {
        if (!AllBytes(b.data, b.size, 0x5A)) return false;
      }
      return !returned_.empty();
    }

   protected:
    absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override {
      return SystemMemorySource::Default().Allocate(size, alignment);
    }
    bool DoDeallocate(const Block& block) override {
      FRAMEALLOC_UNPOISON(block.data, block.size);
      std::memset(block.data, 0x5A, block.size);
      returned_.push_back(block);
      return true;
    }

   private:
    std::vector<Block> returned_;
  };
  KeepingSource source;
  ErrorRecorder errors;
  {
    SmartAlloc alloc(AllocConfig()
                         .set_source(&source)
                         .set_arena(FrameArenaOptions()
                                        .set_initial_chunk_size(1024)
                                        .set_max_chunk_size(1024))
                         .set_cache(ChunkCacheOptions().set_max_cached_bytes(0))
                         .set_debug(DebugOptions().set_fill_patterns(true)));
    // 16 KiB: 4 chunks (the cache rounds 1 KiB chunks up to a 4 KiB page).
    for (int i = 0; i < 32; ++i) alloc.frame_allocate(512);
    alloc.end_frame();  // Chunks 2.. go straight back to the source.
    EXPECT_TRUE(source.ReturnedUntouched());
  }
  EXPECT_EQ(errors.count(), 0u);
}

#if !FRAMEALLOC_HAS_ASAN  // Under ASan the released memory is poisoned.
TEST_F(SmartAllocDebugTest, ReleasedMemoryCarriesTheReleasedPattern) {
  char* frame = static_cast<char*>(alloc_.frame_allocate(64));
  std::memset(frame, 1, 64);
  alloc_.end_frame();
  EXPECT_TRUE(AllBytes(frame, 64, kReleasedFill));  // Dangling, on purpose.
  EXPECT_EQ(errors_.count(), 0u);
}
#endif

TEST_F(SmartAllocDebugTest, FrameOverflowIsReportedAtFrameEnd) {
  char* p = nullptr;
  alloc_.with_tag("physics",
                  [&] { p = static_cast<char*>(alloc_.frame_allocate(16)); });
  p[16] = 'x';  // One past the end.
  EXPECT_EQ(errors_.count(), 0u);
  alloc_.end_frame();
  const std::string message = only_error();
  EXPECT_THAT(message,
              StartsWith("buffer overflow: the frame allocation of 16 bytes "
                         "under tag 'physics' made in frame 0 was written "
                         "past its end"));
  EXPECT_THAT(message, HasSubstr("allocated at:"));
  EXPECT_EQ(errors_.reports()[0].where, "SmartAlloc::end_frame");
}

TEST_F(SmartAllocDebugTest, FrameUnderflowIsReportedAtFrameEnd) {
  char* p = static_cast<char*>(alloc_.frame_allocate(16));
  p[-1] = 'x';
  alloc_.end_frame();
  EXPECT_THAT(only_error(),
              StartsWith("buffer underflow: the frame allocation of 16 bytes "
                         "under tag '' made in frame 0 was written before its "
                         "start"));
}

TEST_F(SmartAllocDebugTest, TypedFrameObjectsAreGuardedToo) {
  struct Pair {
    int a, b;
  };
  Pair* pair = alloc_.frame_alloc<Pair>();
  reinterpret_cast<char*>(pair)[sizeof(Pair)] = 1;
  alloc_.end_frame();
  EXPECT_THAT(only_error(), HasSubstr("frame allocation of 8 bytes"));
}

TEST_F(SmartAllocDebugTest, PoolOverflowIsReportedAtFree) {
  char* p = static_cast<char*>(alloc_.pool_allocate(24, 8));
  p[24] = 'x';
  alloc_.pool_deallocate(p, 24, 8);
  EXPECT_THAT(only_error(),
              StartsWith("buffer overflow: the pool allocation of 24 bytes"));
  EXPECT_EQ(errors_.reports()[0].where, "SmartAlloc::pool_free");
}

TEST_F(SmartAllocDebugTest, PoolDoubleFreeIsReported) {
  void* p = alloc_.pool_allocate(24, 8);
  alloc_.pool_deallocate(p, 24, 8);
  alloc_.pool_deallocate(p, 24, 8);
  EXPECT_THAT(only_error(), HasSubstr("a double free, or a pointer the pool "
                                      "never gave out; ignored"));
  EXPECT_EQ(alloc_.stats().pool.frees, 1u);  // The second one was dropped.
}

TEST_F(SmartAllocDebugTest, PoolFreeOfAForeignPointerIsReported) {
  int64_t local = 0;
  alloc_.pool_free(&local);
  EXPECT_THAT(only_error(), HasSubstr("a pointer the pool never gave out"));
}

TEST_F(SmartAllocDebugTest, PoolFreeWithTheWrongSizeIsReportedAndRepaired) {
  void* p = alloc_.pool_allocate(24, 8);
  alloc_.pool_deallocate(p, 40, 8);
  EXPECT_EQ(only_error(),
            "pool free with the wrong size: allocated 24 bytes (alignment 8), "
            "freed as 40 bytes (alignment 8); freed as allocated");
  AllocStats stats = alloc_.stats();
  EXPECT_EQ(stats.pool.live_bytes(), 0);  // Freed as the 24 bytes it was.
}

TEST_F(SmartAllocDebugTest, HeapOverflowAndUnderflowAreReportedAtFree) {
  char* a = static_cast<char*>(alloc_.heap_alloc(100));
  a[100] = 'x';
  alloc_.heap_free(a);
  char* b = static_cast<char*>(alloc_.heap_alloc(100));
  b[-1] = 'x';
  alloc_.heap_free(b);
  ASSERT_EQ(errors_.count(), 2u);
  EXPECT_THAT(errors_.reports()[0].message,
              StartsWith("buffer overflow: the heap allocation of 100 bytes"));
  EXPECT_THAT(errors_.reports()[1].message,
              StartsWith("buffer underflow: the heap allocation of 100 bytes"));
  EXPECT_EQ(alloc_.stats().heap.live_bytes(), 0);
}

TEST_F(SmartAllocDebugTest, HeapDoubleFreeIsReportedWithoutTouchingMemory) {
  void* p = alloc_.heap_alloc(64);
  alloc_.heap_free(p);
  alloc_.heap_free(p);  // The tracker answers: no read of freed memory.
  EXPECT_THAT(only_error(), HasSubstr("a double free, or a pointer "
                                      "heap_alloc never returned"));
}

// Regression (review): the tracker's record of a pool block let
// heap_free go on to ::operator delete on memory inside a pool page.
TEST_F(SmartAllocDebugTest, HeapFreeOfAPoolBlockIsReportedAndTheBlockKept) {
  void* p = alloc_.pool_allocate(64);
  alloc_.heap_free(p);
  EXPECT_THAT(only_error(), HasSubstr("a live pool allocation of 64 bytes, "
                                      "not a heap_alloc one"));
  alloc_.pool_deallocate(p, 64);  // Still the pool's, and still tracked.
  EXPECT_EQ(errors_.count(), 1u);
  EXPECT_EQ(alloc_.stats().pool.live_bytes(), 0);
  EXPECT_TRUE(alloc_.leaks(0).empty());
}

// Regression (found by a review of the alloc package): heap_free checked
// only the header's magic and then trusted its tag, size, alignment and
// offset. A 9-16 byte underflow, which the canary check reports (to a
// handler that carries on, as docs/debugging.md allows), left the magic
// intact and the tag 0x4141: the free wrote ts.tag_heap[0x4141], far out of
// bounds (SIGSEGV). Such a block is now reported and left alone: not freed,
// not counted, its budget charge kept. The magic now sits next to the
// user's bytes, so an underflow reaches it before any other field.
TEST(SmartAllocHeapHeaderTest,
     AnUnderflowCaughtByTheCanaryDoesNotCrashTheFree) {
  ErrorRecorder errors;
  // Untracked (the --config=debug default tracks, and a tracked free
  // reports from its record instead of the header).
  SmartAlloc alloc(AllocConfig().set_global_budget(1 << 20).set_debug(
      DebugOptions()
          .set_canaries(true)
          .set_track_allocations(false)
          .set_fill_patterns(false)
          .set_stack_depth(0)));
  auto* p = static_cast<uint64_t*>(alloc.heap_alloc(64));
  const uint64_t saved[2] = {p[-2], p[-1]};
  p[-2] = 0x4141414141414141ull;
  p[-1] = 0x4141414141414141ull;
  alloc.heap_free(p);
  ASSERT_EQ(errors.count(), 1u);
  const ErrorReport report = errors.reports()[0];
  EXPECT_EQ(report.where, "SmartAlloc::heap_free");
  EXPECT_THAT(report.message, HasSubstr("corrupted heap header"));
  EXPECT_THAT(report.message,
              HasSubstr("the canary before it reads 0x4141414141414141: a "
                        "buffer underflow"));
  AllocStats stats = alloc.stats();
  EXPECT_EQ(stats.heap.frees, 0u);  // Leaked, not freed with bogus values.
  EXPECT_EQ(stats.heap.live_bytes(), 64);
  EXPECT_EQ(stats.global_budget_used, 64u);
  // The block was left as it was: with its header repaired, it frees.
  p[-2] = saved[0];
  p[-1] = saved[1];
  alloc.heap_free(p);
  EXPECT_EQ(errors.count(), 1u);
  stats = alloc.stats();
  EXPECT_EQ(stats.heap.frees, 1u);
  EXPECT_EQ(stats.heap.live_bytes(), 0);
  EXPECT_EQ(stats.global_budget_used, 0u);
}

// The same without debug aids, where nothing guards the header: an
// underflow of 1-8 bytes wrote the tag (then at the user pointer - 8), went
// unreported, and indexed the tag counters out of bounds.
TEST(SmartAllocHeapHeaderTest, AnUnderflowWithoutDebugAidsIsReportedNotFreed) {
  ErrorRecorder errors;
  SmartAlloc alloc(AllocConfig().set_debug(DebugOptions()
                                               .set_fill_patterns(false)
                                               .set_canaries(false)
                                               .set_track_allocations(false)
                                               .set_stack_depth(0)));
  auto* p = static_cast<uint64_t*>(alloc.heap_alloc(64));
  const uint64_t saved = p[-1];
  p[-1] = 0x4141414141414141ull;
  alloc.heap_free(p);
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_THAT(errors.reports()[0].message, HasSubstr("corrupted heap header"));
  EXPECT_EQ(alloc.stats().heap.frees, 0u);
  p[-1] = saved;
  alloc.heap_free(p);
  EXPECT_EQ(errors.count(), 1u);
  EXPECT_EQ(alloc.stats().heap.frees, 1u);
  EXPECT_EQ(alloc.stats().heap.live_bytes(), 0);
}

// A stray write into the header that leaves its magic (the word next to the
// user's bytes) intact: every other word is validated before it is used.
TEST(SmartAllocHeapHeaderTest, EveryHeaderFieldIsValidatedBeforeItIsUsed) {
  ErrorRecorder errors;
  SmartAlloc alloc(AllocConfig().set_global_budget(1 << 20).set_debug(
      DebugOptions()
          .set_fill_patterns(false)
          .set_canaries(false)
          .set_track_allocations(false)
          .set_stack_depth(0)));
  auto* p = static_cast<uint64_t*>(alloc.heap_alloc(64, 64));
  // Words 2 to 5 below the user pointer: tag, size, alignment, offset.
  for (int word = 2; word <= 5; ++word) {
    SCOPED_TRACE(word);
    const uint64_t saved = p[-word];
    p[-word] = 0x4141414141414141ull;
    alloc.heap_free(p);
    ASSERT_EQ(errors.count(), static_cast<size_t>(word - 1));
    EXPECT_THAT(errors.reports().back().message,
                HasSubstr("corrupted heap header"));
    EXPECT_THAT(errors.reports().back().message,
                HasSubstr("the block is leaked"));
    EXPECT_EQ(alloc.stats().heap.frees, 0u);
    EXPECT_EQ(alloc.stats().global_budget_used, 64u);
    p[-word] = saved;
  }
  alloc.heap_free(p);
  EXPECT_EQ(errors.count(), 4u);
  EXPECT_EQ(alloc.stats().heap.live_bytes(), 0);
  EXPECT_EQ(alloc.stats().global_budget_used, 0u);
}

// Regression (review): stacks were kept only with profile_sites, so leak
// and canary reports had none with stack_depth alone.
TEST(SmartAllocStackTest, LeakReportsCarryStacksWithoutTheSiteProfiler) {
  SmartAlloc alloc(AllocConfig().set_debug(
      DebugOptions().set_track_allocations(true).set_stack_depth(8)));
  void* p = alloc.pool_allocate(64);
  std::vector<LeakGroup> leaks = alloc.leaks(0);
  ASSERT_EQ(leaks.size(), 1u);
  EXPECT_NE(leaks[0].site, 0u);
  EXPECT_THAT(leaks[0].stack, HasSubstr("#0 "));
  EXPECT_EQ(alloc.leak_report(0).find("no stack"), std::string::npos);
  EXPECT_TRUE(alloc.hottest_sites(10).empty());  // Kept, not counted.
  alloc.pool_deallocate(p, 64);
}

TEST_F(SmartAllocDebugTest, UseAfterFrameThroughAFrameBoxIsCaught) {
  FrameBox<int> box = alloc_.frame_box<int>(1);
  alloc_.end_frame();
  EXPECT_FALSE(box.alive());
  EXPECT_EQ(box.get(), nullptr);
  EXPECT_DEATH(*box = 2, "use after frame");
}

TEST_F(SmartAllocDebugTest, EndingAFrameWithAnOpenScopeIsReported) {
  ArenaMark mark = alloc_.frame_arena().Mark();
  alloc_.end_frame();
  EXPECT_THAT(only_error(), HasSubstr("frame reset with 1 open marks"));
  EXPECT_FALSE(alloc_.frame_arena().Rewind(mark).ok());
}

TEST_F(SmartAllocDebugTest, LeakReportGroupsOldLiveAllocationsBySite) {
  std::vector<void*> kept;
  alloc_.with_tag("cache", [&] {
    for (int i = 0; i < 5; ++i) kept.push_back(alloc_.pool_allocate(32));
  });
  void* young = nullptr;
  for (int frame = 0; frame < 10; ++frame) {
    if (frame == 9) young = alloc_.heap_alloc(1000);
    alloc_.end_frame();
  }
  std::vector<LeakGroup> leaks = alloc_.leaks(5);
  ASSERT_EQ(leaks.size(), 1u);  // The heap block is only 1 frame old.
  EXPECT_EQ(leaks[0].count, 5u);
  EXPECT_EQ(leaks[0].bytes, 160u);
  EXPECT_EQ(leaks[0].kind, AllocKind::kPool);
  EXPECT_EQ(leaks[0].oldest_frame, 0u);
  EXPECT_EQ(alloc_.leaks(0).size(), 2u);
  const std::string report = alloc_.leak_report(5);
  EXPECT_THAT(report, StartsWith("5 live allocations (160 bytes) older than 5 "
                                 "frames at frame 10, from 1 sites\n"));
  EXPECT_THAT(report, HasSubstr("- 5 pool allocations, 160 bytes, tag "
                                "'cache', oldest from frame 0"));
  EXPECT_THAT(report, HasSubstr("LeakReportGroupsOldLiveAllocationsBySite"));
  for (void* p : kept) alloc_.pool_deallocate(p, 32);
  alloc_.heap_free(young);
  EXPECT_TRUE(alloc_.leaks(0).empty());
}

ABSL_ATTRIBUTE_NOINLINE void HotSite(SmartAlloc& alloc) {
  for (int i = 0; i < 10; ++i) alloc.frame_allocate(16);
}
ABSL_ATTRIBUTE_NOINLINE void ColdSite(SmartAlloc& alloc) {
  alloc.frame_allocate(16);
}

TEST_F(SmartAllocDebugTest, SiteProfilerRanksHotSites) {
  alloc_.with_tag("ai", [&] { HotSite(alloc_); });
  ColdSite(alloc_);
  std::vector<SiteStats> sites = alloc_.hottest_sites(2);
  ASSERT_EQ(sites.size(), 2u);
  EXPECT_EQ(sites[0].count, 10u);
  EXPECT_EQ(sites[0].bytes, 160u);
  ASSERT_EQ(sites[0].tags.size(), 1u);
  EXPECT_THAT(sites[0].stack, HasSubstr("HotSite"));
  EXPECT_EQ(sites[1].count, 1u);
  EXPECT_THAT(sites[1].stack, HasSubstr("ColdSite"));
  EXPECT_THAT(alloc_.site_report(1), HasSubstr("10 allocations, 160 bytes: "
                                               "'ai' 10/160B"));
}

TEST(SmartAllocTraceTest, RecordsTheChosenFramesToAFile) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR")
                                             : "/tmp") +
      "/alloc_trace.jsonl";
  SmartAlloc alloc;  // No debug options: tracing works in any build.
  ASSERT_TRUE(alloc.start_trace(path, 1, 1).ok());
  for (int frame = 0; frame < 3; ++frame) {
    alloc.frame_allocate(10 + frame);
    alloc.pool_free(alloc.pool_alloc<int64_t>());
    alloc.end_frame();
  }
  ASSERT_TRUE(alloc.stop_trace().ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const std::string trace = text.str();
  // Frame 1 only: a frame allocation of 11 bytes, a pool alloc and free,
  // and the frame's end.
  EXPECT_EQ(alloc.trace_events(), 4u);
  EXPECT_THAT(trace, HasSubstr("{\"op\":\"alloc\",\"kind\":\"frame\","
                               "\"frame\":1,\"thread\":1,\"tag\":\"\","
                               "\"size\":11,"));
  EXPECT_THAT(trace, HasSubstr("{\"op\":\"free\",\"kind\":\"pool\""));
  EXPECT_THAT(trace, HasSubstr("{\"op\":\"frame_end\""));
  EXPECT_EQ(trace.find("\"size\":10,"), std::string::npos);
  EXPECT_EQ(trace.find("\"size\":12,"), std::string::npos);
  // The fast paths are back once tracing stops.
  EXPECT_EQ(alloc.stats().pool.allocations, 3u);
}

TEST(SmartAllocDebugConfigTest, BadDebugOptionsAreRefused) {
  auto alloc = SmartAlloc::Create(
      AllocConfig().set_debug(DebugOptions().set_stack_depth(100)));
  EXPECT_THAT(alloc.status().message(), HasSubstr("DebugOptions.stack_depth"));
}

}  // namespace
}  // namespace framealloc
