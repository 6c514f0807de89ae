// The report's arithmetic: the scaling breakdown of runtime-arena against
// runtime-arena-1w, its line in the text report, and job_seconds through
// the JSON a child process sends back.
#include "benchmarks/report.h"

#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace framealloc::sim {
namespace {

VariantRun MakeRun(const std::string& label, int threads, double frame_ms,
                   int frames, double job_seconds) {
  VariantRun run;
  run.label = label;
  run.variant = label;
  run.allocator = "glibc";
  run.threads = threads;
  run.job_seconds = job_seconds;
  for (int i = 0; i < frames; ++i) {
    FrameRecord f;
    f.ms = frame_ms;
    run.frames.push_back(f);
  }
  return run;
}

ScenarioResult TwoRuns(double all_job_seconds, double one_job_seconds) {
  ScenarioResult r;
  r.name = "test";
  // Four frames each: 10 ms on two workers, 16 ms on one.
  r.runs.push_back(MakeRun("runtime-arena", 2, 10.0, 4, all_job_seconds));
  r.runs.push_back(MakeRun("runtime-arena-1w", 1, 16.0, 4, one_job_seconds));
  return r;
}

TEST(ScalingTest, SplitsTheSpeedupIntoBusyTimeAndJobTimeGrowth) {
  // Two workers in jobs 64 ms of 2 x 40 ms; one worker 60 ms of 64 ms.
  const std::optional<ScalingBreakdown> b = Scaling(TwoRuns(0.064, 0.060));
  ASSERT_TRUE(b.has_value());
  EXPECT_DOUBLE_EQ(b->speedup, 1.6);
  EXPECT_EQ(b->workers_all, 2);
  EXPECT_EQ(b->workers_one, 1);
  EXPECT_NEAR(b->busy_all, 0.8, 1e-12);
  EXPECT_NEAR(b->busy_one, 0.9375, 1e-12);
  EXPECT_NEAR(b->job_time_growth, 0.064 / 0.060, 1e-12);
  // The identity the report line states.
  EXPECT_NEAR(b->speedup,
              2.0 / 1.0 * (b->busy_all / b->busy_one) / b->job_time_growth,
              1e-12);
}

TEST(ScalingTest, NeedsBothRunsWithJobTime) {
  EXPECT_FALSE(Scaling(TwoRuns(0.0, 0.060)).has_value());
  EXPECT_FALSE(Scaling(TwoRuns(0.064, 0.0)).has_value());
  ScenarioResult one_missing = TwoRuns(0.064, 0.060);
  one_missing.runs.pop_back();
  EXPECT_FALSE(Scaling(one_missing).has_value());
  ScenarioResult no_frames = TwoRuns(0.064, 0.060);
  no_frames.runs[0].frames.clear();
  EXPECT_FALSE(Scaling(no_frames).has_value());
}

TEST(ScalingTest, TheReportPrintsTheBreakdown) {
  const std::string text = FormatScenario(TwoRuns(0.064, 0.060));
  EXPECT_NE(text.find("runtime-arena scaling, mean frames: 1.60x = 2/1 "
                      "workers x 80%/94% busy in jobs / 1.07x job time per "
                      "frame"),
            std::string::npos)
      << text;
  const nlohmann::json j = ScenarioToJson(TwoRuns(0.064, 0.060));
  ASSERT_TRUE(j["scaling"].is_object());
  EXPECT_DOUBLE_EQ(j["scaling"]["speedup"].get<double>(), 1.6);
  EXPECT_TRUE(ScenarioToJson(TwoRuns(0.0, 0.0))["scaling"].is_null());
}

TEST(RunJsonTest, JobSecondsSurviveTheRoundTrip) {
  const VariantRun run = MakeRun("runtime-heap", 2, 5.0, 3, 0.0125);
  absl::StatusOr<VariantRun> back = RunFromJson(RunToJson(run));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_DOUBLE_EQ(back->job_seconds, 0.0125);
  EXPECT_EQ(back->frames.size(), 3u);
  // Optional (older children do not send it); mistyped is an error.
  nlohmann::json without = RunToJson(run);
  without.erase("job_seconds");
  back = RunFromJson(without);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->job_seconds, 0.0);
  nlohmann::json mistyped = RunToJson(run);
  mistyped["job_seconds"] = "soon";
  EXPECT_EQ(RunFromJson(mistyped).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RunJsonTest, PageFaultsSurviveTheRoundTripAndReachTheTable) {
  VariantRun run = MakeRun("heap", 1, 5.0, 2, 0.0);
  run.frames[0].page_faults = 1000;
  run.frames[1].page_faults = 3000;
  absl::StatusOr<VariantRun> back = RunFromJson(RunToJson(run));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->frames.size(), 2u);
  EXPECT_EQ(back->frames[0].page_faults, 1000u);
  EXPECT_EQ(back->frames[1].page_faults, 3000u);
  EXPECT_DOUBLE_EQ(RunToJson(run)["page_faults_per_frame"].get<double>(),
                   2000.0);
  // A frame without the field is refused (the parent and its children are
  // built from the same sources).
  nlohmann::json without = RunToJson(run);
  without["frames"][0].erase("page_faults");
  EXPECT_EQ(RunFromJson(without).status().code(),
            absl::StatusCode::kInvalidArgument);
  ScenarioResult r;
  r.name = "test";
  r.runs.push_back(run);
  const std::string text = FormatScenario(r);
  EXPECT_NE(text.find("faults/f"), std::string::npos) << text;
  // The row ends in the mean faults per frame.
  EXPECT_NE(text.find(" 2,000\n"), std::string::npos) << text;
}

// Regression (review): RunToJson wrote a NaN or infinite time as null (JSON
// has neither), and RunFromJson refused the null as "field 'ms' missing or
// mistyped": a child's run with such a frame was lost. They go as the
// strings "nan", "inf" and "-inf" and come back as they were.
TEST(RunJsonTest, NonFiniteValuesSurviveTheRoundTrip) {
  const double inf = std::numeric_limits<double>::infinity();
  VariantRun run = MakeRun("heap", 1, 5.0, 4, inf);
  run.frames[0].ms = std::nan("");
  run.frames[1].ms = inf;
  run.frames[2].ms = -inf;
  run.frames[3].pass_seconds = std::nan("");
  const nlohmann::json j = RunToJson(run);
  EXPECT_EQ(j["frames"][0]["ms"], "nan");
  EXPECT_EQ(j["frames"][1]["ms"], "inf");
  EXPECT_EQ(j["frames"][2]["ms"], "-inf");
  EXPECT_EQ(j["job_seconds"], "inf");
  // Through text, as from a child process.
  absl::StatusOr<VariantRun> back =
      RunFromJson(nlohmann::json::parse(j.dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->frames.size(), 4u);
  EXPECT_TRUE(std::isnan(back->frames[0].ms));
  EXPECT_EQ(back->frames[1].ms, inf);
  EXPECT_EQ(back->frames[2].ms, -inf);
  EXPECT_EQ(back->frames[3].ms, 5.0);
  EXPECT_TRUE(std::isnan(back->frames[3].pass_seconds));
  EXPECT_EQ(back->frames[0].pass_seconds, 0.0);
  EXPECT_EQ(back->job_seconds, inf);
  // Any other string is refused, naming the field and the value.
  nlohmann::json other = j;
  other["frames"][0]["ms"] = "soon";
  const absl::Status s = RunFromJson(other).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("field 'ms' is \"soon\""), std::string::npos) << s;
  other["frames"][0]["ms"] = nullptr;
  EXPECT_EQ(RunFromJson(other).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The points of the index-th polyline of `svg`, as (x, y).
std::vector<std::pair<double, double>> PolylinePoints(const std::string& svg,
                                                      int index) {
  size_t at = 0;
  for (int i = 0; i <= index; ++i) {
    at = svg.find("<polyline", at);
    if (at == std::string::npos) return {};
    ++at;
  }
  const size_t begin = svg.find("points='", at) + 8;
  const size_t end = svg.find('\'', begin);
  std::istringstream in(svg.substr(begin, end - begin));
  std::vector<std::pair<double, double>> points;
  double x = 0, y = 0;
  char comma = 0;
  while (in >> x >> comma >> y) points.emplace_back(x, y);
  return points;
}

// Regression (review): RenderSvg wrote "nan" coordinates for a non-finite
// frame time (an infinite one also set the scale to infinity, flattening
// every other point onto the axis) and drew a negative value below its
// panel. Non-finite values are left out, and every point lies in the panel.
TEST(RenderSvgTest, NonFiniteValuesAreSkippedAndPointsStayInThePanel) {
  ScenarioResult r;
  r.name = "test";
  r.runs.push_back(MakeRun("heap", 1, 10.0, 5, 0.0));
  r.runs[0].frames[1].ms = std::nan("");
  r.runs[0].frames[2].ms = std::numeric_limits<double>::infinity();
  r.runs[0].frames[3].ms = -5.0;
  const std::string svg = RenderSvg({r});
  EXPECT_EQ(svg.find("nan"), std::string::npos) << svg;
  EXPECT_EQ(svg.find("inf"), std::string::npos) << svg;
  // The frame-time panel: x 70 to 450, y 80 (top, 10 ms) to 290 (0 ms).
  const std::vector<std::pair<double, double>> points = PolylinePoints(svg, 0);
  const std::vector<std::pair<double, double>> expected = {
      {70.0, 80.0}, {355.0, 290.0}, {450.0, 80.0}};
  EXPECT_EQ(points, expected) << svg;
  // The memory panel still has a point per frame.
  EXPECT_EQ(PolylinePoints(svg, 1).size(), 5u) << svg;
}

TEST(AppendRoundTest, JoinsTheFramesAndJobTimeOfTheSameRun) {
  VariantRun first = MakeRun("runtime-arena", 2, 10.0, 3, 0.02);
  first.state_hash = 0x1234;
  VariantRun second = MakeRun("runtime-arena", 2, 12.0, 3, 0.03);
  second.state_hash = 0x1234;
  ASSERT_TRUE(AppendRound(&first, second).ok());
  ASSERT_EQ(first.frames.size(), 6u);
  EXPECT_EQ(first.frames[0].ms, 10.0);
  EXPECT_EQ(first.frames[5].ms, 12.0);
  EXPECT_DOUBLE_EQ(first.job_seconds, 0.05);
  EXPECT_DOUBLE_EQ(Median(first.FrameMs()), 11.0);
}

TEST(AppendRoundTest, RefusesAnotherRunOrAnotherState) {
  VariantRun into = MakeRun("heap", 1, 5.0, 2, 0.0);
  VariantRun other = MakeRun("arena", 1, 5.0, 2, 0.0);
  EXPECT_EQ(AppendRound(&into, other).code(),
            absl::StatusCode::kInvalidArgument);
  VariantRun wider = MakeRun("heap", 2, 5.0, 2, 0.0);
  EXPECT_EQ(AppendRound(&into, wider).code(),
            absl::StatusCode::kInvalidArgument);
  VariantRun drifted = MakeRun("heap", 1, 5.0, 2, 0.0);
  drifted.state_hash = 7;
  const absl::Status s = AppendRound(&into, drifted);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("0000000000000007"), std::string::npos) << s;
  EXPECT_EQ(into.frames.size(), 2u);  // Nothing joined.
}

}  // namespace
}  // namespace framealloc::sim
