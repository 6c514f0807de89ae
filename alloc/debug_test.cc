#include "alloc/debug.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

using ::testing::HasSubstr;

TEST(DebugOptionsTest, ValidateNamesTheField) {
  EXPECT_TRUE(DebugOptions().Validate().ok());
  EXPECT_TRUE(DebugOptions::All().Validate().ok());
  EXPECT_THAT(DebugOptions().set_stack_depth(-1).Validate().message(),
              HasSubstr("DebugOptions.stack_depth = -1"));
  EXPECT_THAT(DebugOptions().set_stack_depth(65).Validate().message(),
              HasSubstr("DebugOptions.stack_depth = 65"));
  EXPECT_THAT(DebugOptions()
                  .set_stack_depth(0)
                  .set_profile_sites(true)
                  .Validate()
                  .message(),
              HasSubstr("profile_sites needs stack_depth"));
  EXPECT_TRUE(DebugOptions::All().any());
  EXPECT_EQ(DebugOptions().any(), kDebugBuild);
}

ABSL_ATTRIBUTE_NOINLINE CallStack CaptureHere() {
  return CallStack::Capture(8, 0);
}

TEST(CallStackTest, CapturesAndSymbolizesTheCaller) {
  CallStack a = CaptureHere();
  CallStack b = CaptureHere();
  ASSERT_GT(a.depth, 1);
  EXPECT_NE(a.Hash(), 0u);
  // CaptureHere records where it was called from: two call sites, two
  // stacks, both starting in this test's body.
  EXPECT_NE(a.Hash(), b.Hash());
  const std::string text = a.Symbolized();
  EXPECT_THAT(text, HasSubstr("#0 "));
  EXPECT_THAT(text.substr(0, text.find('\n')),
              HasSubstr("CallStackTest_CapturesAndSymbolizesTheCaller_Test"));
  EXPECT_EQ(CallStack::Capture(0, 0).depth, 0);
}

TEST(AllocationTrackerTest, AddRemoveFind) {
  AllocationTracker tracker;
  int x = 0, y = 0;
  AllocationRecord r;
  r.size = 64;
  EXPECT_TRUE(tracker.Add(&x, r, nullptr));
  EXPECT_FALSE(tracker.Add(&x, r, nullptr));  // Already live.
  EXPECT_EQ(tracker.Find(&x)->size, 64u);
  EXPECT_EQ(tracker.live(), 1u);
  EXPECT_EQ(tracker.Remove(&y).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tracker.Remove(&x)->size, 64u);
  EXPECT_EQ(tracker.Remove(&x).status().code(),
            absl::StatusCode::kNotFound);  // A double free.
  EXPECT_EQ(tracker.live(), 0u);
}

TEST(AllocationTrackerTest, LeaksAreGroupedBySiteAndFilteredByAge) {
  AllocationTracker tracker;
  std::vector<int> objects(10);
  CallStack site_a = CaptureHere();
  CallStack site_b = CaptureHere();
  for (int i = 0; i < 6; ++i) {
    AllocationRecord r{AllocKind::kPool, 16, 8, 3, /*frame=*/1, 1, 0};
    tracker.Add(&objects[i], r, &site_a);
  }
  for (int i = 6; i < 8; ++i) {
    AllocationRecord r{AllocKind::kHeap, 100, 8, 0, /*frame=*/5, 1, 0};
    tracker.Add(&objects[i], r, &site_b);
  }
  // At frame 10, older than 8 frames: only site a's (frame 1).
  std::vector<LeakGroup> old = tracker.Leaks(10, 8);
  ASSERT_EQ(old.size(), 1u);
  EXPECT_EQ(old[0].count, 6u);
  EXPECT_EQ(old[0].bytes, 96u);
  EXPECT_EQ(old[0].kind, AllocKind::kPool);
  EXPECT_EQ(old[0].tag, 3);
  EXPECT_EQ(old[0].oldest_frame, 1u);
  EXPECT_THAT(old[0].stack, HasSubstr("LeaksAreGroupedBySiteAndFilteredByAge"));
  // Older than 1 frame: both, largest first (heap 200 B > pool 96 B).
  std::vector<LeakGroup> all = tracker.Leaks(10, 1);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].bytes, 200u);
  EXPECT_EQ(all[0].site, site_b.Hash());
  // Regression (review): frame + min_age wrapped, so "older than
  // UINT64_MAX frames" listed everything.
  EXPECT_TRUE(tracker.Leaks(10, UINT64_MAX).empty());
}

TEST(AllocationTrackerTest, HottestSitesCountPerTag) {
  AllocationTracker tracker;
  CallStack hot = CaptureHere();
  CallStack cold = CaptureHere();
  for (int i = 0; i < 5; ++i) tracker.CountSite(hot, 1, 10);
  for (int i = 0; i < 3; ++i) tracker.CountSite(hot, 2, 100);
  tracker.CountSite(cold, 1, 1000);
  tracker.CountSite(CallStack(), 1, 1);  // No stack: not a site.
  std::vector<SiteStats> sites = tracker.HottestSites(10);
  ASSERT_EQ(sites.size(), 2u);
  EXPECT_EQ(sites[0].site, hot.Hash());
  EXPECT_EQ(sites[0].count, 8u);
  EXPECT_EQ(sites[0].bytes, 350u);
  ASSERT_EQ(sites[0].tags.size(), 2u);
  EXPECT_EQ(sites[0].tags[0].tag, 1);
  EXPECT_EQ(sites[0].tags[0].count, 5u);
  EXPECT_EQ(sites[1].count, 1u);
  EXPECT_EQ(tracker.HottestSites(1).size(), 1u);
}

TEST(AllocationTrackerTest, ConcurrentUseKeepsEveryRecord) {
  for (int threads : {2, 4}) {
    AllocationTracker tracker;
    std::vector<std::vector<char>> memory(threads, std::vector<char>(1000));
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (int i = 0; i < 1000; ++i) {
          tracker.Add(&memory[t][i], AllocationRecord{}, nullptr);
        }
        for (int i = 0; i < 1000; i += 2) {
          EXPECT_TRUE(tracker.Remove(&memory[t][i]).ok());
        }
      });
    }
    for (auto& w : workers) w.join();
    EXPECT_EQ(tracker.live(), 500u * threads);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(FrameTracerTest, RecordsOnlyChosenFrames) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR")
                                             : "/tmp") +
      "/trace.jsonl";
  TagRegistry tags;
  TagId tag = *tags.FromPath("render/\"x\"");
  FrameTracer tracer;
  EXPECT_FALSE(tracer.Wants(3));
  ASSERT_TRUE(tracer.Start(path, 3, 2).ok());
  EXPECT_EQ(tracer.Start(path, 3, 2).code(),
            absl::StatusCode::kFailedPrecondition);
  for (uint64_t frame = 0; frame < 8; ++frame) {
    if (!tracer.Wants(frame)) continue;
    tracer.Record(
        {TraceEvent::Op::kAlloc, AllocKind::kPool, frame, 1, tag, 64, &tags},
        tags);
  }
  EXPECT_EQ(tracer.events_written(), 2u);  // Frames 3 and 4.
  ASSERT_TRUE(tracer.Stop().ok());
  const std::string text = ReadFile(path);
  EXPECT_THAT(text, HasSubstr("{\"op\":\"alloc\",\"kind\":\"pool\",\"frame\":3,"
                              "\"thread\":1,\"tag\":\"render/\\\"x\\\"\","
                              "\"size\":64,"));
  EXPECT_THAT(text, HasSubstr("\"frame\":4,"));
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);
  EXPECT_FALSE(tracer.Wants(3));
}

// Regression (review): first_frame + frame_count wrapped, so a window
// "from frame 5 on" recorded nothing.
TEST(FrameTracerTest, AWindowPastTheLastFrameNumberRecordsToTheEnd) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR")
                                             : "/tmp") +
      "/trace_open_ended.jsonl";
  FrameTracer tracer;
  ASSERT_TRUE(tracer.Start(path, 5, UINT64_MAX).ok());
  EXPECT_FALSE(tracer.Wants(4));
  EXPECT_TRUE(tracer.Wants(5));
  EXPECT_TRUE(tracer.Wants(uint64_t{1} << 62));
  ASSERT_TRUE(tracer.Stop().ok());
}

TEST(FrameTracerTest, BadArgumentsAreRefused) {
  FrameTracer tracer;
  EXPECT_EQ(tracer.Start("/tmp/x", 0, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(tracer.Start("/nonexistent-dir/trace.jsonl", 0, 1).ok());
  EXPECT_TRUE(tracer.Stop().ok());
}

}  // namespace
}  // namespace framealloc
