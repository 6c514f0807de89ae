// An error handler or event callback that throws, from the reports that
// cannot unwind (frees, end_frame, scope destructors, budget events): the
// handler sees the report, its exception is dropped, and nothing is left
// half done. Found by a review of user callbacks that throw.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "alloc/budget.h"
#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "alloc/smart_alloc.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

// Counts the report, then throws.
void CountAndThrow(const ErrorReport& report, void* count) {
  ++*static_cast<int*>(count);
  throw std::runtime_error(report.message);
}
void Count(const ErrorReport&, void* count) { ++*static_cast<int*>(count); }

// Regression: end_frame advanced the frame, then the canary report threw
// before the arena's reset and the budget's release; every later end_frame
// reported the same overflow again and the charge stayed.
TEST(ThrowingHandlerTest, EndFrameStillEndsTheFrame) {
  SmartAlloc alloc(AllocConfig()
                       .set_frames_in_flight(1)
                       .set_global_budget(1 << 20)
                       .set_debug(DebugOptions().set_canaries(true)));
  char* p = static_cast<char*>(alloc.frame_allocate(16));
  p[16] = 0x55;  // Past the end, into the canary.
  int reports = 0;
  {
    ScopedErrorHandler handler(&CountAndThrow, &reports);
    EXPECT_NO_THROW(alloc.end_frame());
  }
  EXPECT_EQ(reports, 1);
  EXPECT_EQ(alloc.stats().global_budget_used, 0u);
  int later = 0;
  {
    ScopedErrorHandler handler(&Count, &later);
    for (int i = 0; i < 3; ++i) alloc.end_frame();
  }
  EXPECT_EQ(later, 0);  // The overflow was reported once, its frame is gone.
}

// Regression: a pool free whose canary report threw lost the block.
TEST(ThrowingHandlerTest, APoolFreeStillFreesTheBlock) {
  SmartAlloc alloc(AllocConfig().set_debug(
      DebugOptions().set_canaries(true).set_track_allocations(true)));
  char* p = static_cast<char*>(alloc.pool_allocate(24));
  p[24] = 0x55;
  int reports = 0;
  {
    ScopedErrorHandler handler(&CountAndThrow, &reports);
    EXPECT_NO_THROW(alloc.pool_deallocate(p, 24));
  }
  EXPECT_EQ(reports, 1);
  const AllocStats s = alloc.stats();
  EXPECT_EQ(s.pool.frees, 1u);
  EXPECT_EQ(s.pool.live_bytes(), 0);
}

// Regression: a report from a scope's destructor with a throwing handler
// ended in std::terminate.
TEST(ThrowingHandlerTest, ScopesClosedOutOfOrderReportWithoutTerminating) {
  int reports = 0;
  ScopedErrorHandler handler(&CountAndThrow, &reports);
  {
    ChunkCache cache(&SystemMemorySource::Default());
    FrameArena arena(&cache);
    auto* outer = new ArenaScope(&arena);
    const ArenaMark inner = arena.Mark();
    (void)inner;
    delete outer;  // Closed while a newer mark is open: reported.
  }
  {
    SmartAlloc alloc;
    auto* a = new TagScope(alloc, "a");
    TagScope b(alloc, "b");
    delete a;  // Out of order: reported.
  }
  EXPECT_GE(reports, 2);
}

// Regression: Charge took every budget, then a warning callback that threw
// left the charge taken for good.
TEST(ThrowingHandlerTest, AThrowingEventCallbackLeavesNoCharge) {
  int events = 0;
  SmartAlloc alloc(AllocConfig()
                       .set_global_budget(1 << 20)
                       .add_tag_budget("t", TagBudget{64, 1 << 20})
                       .set_on_event([&events](const AllocEvent& e) {
                         ++events;
                         if (e.kind == AllocEventKind::kBudgetWarning) {
                           throw std::runtime_error("warning");
                         }
                       }));
  void* pool = nullptr;
  void* frame = nullptr;
  EXPECT_NO_THROW(alloc.with_tag("t", [&] {
    pool = alloc.pool_allocate(100);
    frame = alloc.frame_allocate(100);
  }));
  EXPECT_NE(pool, nullptr);
  EXPECT_NE(frame, nullptr);
  EXPECT_GE(events, 1);
  alloc.pool_deallocate(pool, 100);
  for (int i = 0; i < 3; ++i) alloc.end_frame();
  const AllocStats s = alloc.stats();
  EXPECT_EQ(s.global_budget_used, 0u);
  for (const auto& use : s.tag_budgets) EXPECT_EQ(use.used, 0u) << use.path;
}

}  // namespace
}  // namespace framealloc
