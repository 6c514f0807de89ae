#include "alloc/bandwidth.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// The sanitizers' allocators abort on an impossible request unless told to
// return null, as glibc does; OutOfMemoryIsResourceExhausted needs the null.
// Options from ASAN_OPTIONS / TSAN_OPTIONS still apply on top of these.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1";
}
extern "C" const char* __tsan_default_options() {
  return "allocator_may_return_null=1";
}

namespace framealloc {
namespace {

using ::testing::HasSubstr;

constexpr size_t kMiB = size_t{1} << 20;

TEST(BandwidthAnalyzerTest, MeasureTimesTheWorkAndDividesBytesBySeconds) {
  BandwidthAnalyzer analyzer;
  const size_t read = 4'000'000'000;
  const size_t written = 1'000'000'000;
  int runs = 0;
  const BandwidthSample s = analyzer.Measure("sleep", read, written, [&] {
    ++runs;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  });
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(s.label, "sleep");
  EXPECT_EQ(s.bytes_read, read);
  EXPECT_EQ(s.bytes_written, written);
  // sleep_for waits at least its time on the steady clock; 10 s is a bound
  // no loaded machine should reach.
  EXPECT_GE(s.seconds, 0.020);
  EXPECT_LT(s.seconds, 10.0);
  // The rates are exact arithmetic on the returned time.
  EXPECT_DOUBLE_EQ(s.read_gbps, 4e9 / s.seconds / 1e9);
  EXPECT_DOUBLE_EQ(s.write_gbps, 1e9 / s.seconds / 1e9);
  EXPECT_DOUBLE_EQ(s.total_gbps, 5e9 / s.seconds / 1e9);
  // Hence, with 0.02 <= seconds < 10: 0.4 < read GB/s <= 200.
  EXPECT_GT(s.read_gbps, 0.4);
  EXPECT_LE(s.read_gbps, 200.0);

  const std::vector<BandwidthSample> kept = analyzer.samples();
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].label, "sleep");
  EXPECT_EQ(kept[0].seconds, s.seconds);
}

TEST(BandwidthAnalyzerTest, RecordComputesRatesFromGivenSeconds) {
  BandwidthAnalyzer analyzer;
  absl::StatusOr<BandwidthSample> s =
      analyzer.Record("pass", 2'000'000'000, 1'000'000'000, 0.5);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->read_gbps, 4.0);
  EXPECT_DOUBLE_EQ(s->write_gbps, 2.0);
  EXPECT_DOUBLE_EQ(s->total_gbps, 6.0);
  EXPECT_EQ(analyzer.samples().size(), 1u);
}

TEST(BandwidthAnalyzerTest, ZeroSecondsGivesZeroRates) {
  const BandwidthSample s = MakeBandwidthSample("instant", 100, 100, 0.0);
  EXPECT_EQ(s.read_gbps, 0.0);
  EXPECT_EQ(s.write_gbps, 0.0);
  EXPECT_EQ(s.total_gbps, 0.0);
}

// Regression (review): a time so short that bytes/seconds overflowed gave
// inf, written into the JSON as `inf` (not JSON).
TEST(BandwidthAnalyzerTest, ARateThatOverflowsIsZeroNotInfinite) {
  const BandwidthSample s =
      MakeBandwidthSample("tiny", size_t{1} << 62, size_t{1} << 62, 1e-300);
  EXPECT_EQ(s.read_gbps, 0.0);
  EXPECT_EQ(s.total_gbps, 0.0);
}

TEST(BandwidthAnalyzerTest, RecordRejectsBadSecondsAndKeepsNothing) {
  BandwidthAnalyzer analyzer;
  for (double bad : {-1.0, std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::quiet_NaN()}) {
    absl::StatusOr<BandwidthSample> s = analyzer.Record("x", 1, 1, bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("seconds"));
  }
  EXPECT_TRUE(analyzer.samples().empty());
}

TEST(BandwidthAnalyzerTest, ClearDropsSamplesButKeepsTheLimit) {
  BandwidthAnalyzer analyzer;
  StreamResult limit;
  limit.gbps = 10.0;
  analyzer.SetLimit(limit);
  ASSERT_TRUE(analyzer.Record("x", 1, 1, 1.0).ok());
  analyzer.Clear();
  EXPECT_TRUE(analyzer.samples().empty());
  ASSERT_TRUE(analyzer.limit().has_value());
  EXPECT_EQ(analyzer.limit()->gbps, 10.0);
}

TEST(BandwidthAnalyzerTest, JsonHasEveryFieldAndEscapesLabels) {
  BandwidthAnalyzer analyzer;
  ASSERT_TRUE(
      analyzer.Record("a \"quoted\" pass", 2'000'000'000, 1'000'000'000, 0.5)
          .ok());
  std::string json = analyzer.ToJson();
  EXPECT_THAT(json, HasSubstr("\"limit\":null"));
  EXPECT_THAT(json, HasSubstr("\"label\":\"a \\\"quoted\\\" pass\""));
  EXPECT_THAT(json, HasSubstr("\"bytes_read\":2000000000"));
  EXPECT_THAT(json, HasSubstr("\"bytes_written\":1000000000"));
  EXPECT_THAT(json, HasSubstr("\"seconds\":0.500000000"));
  EXPECT_THAT(json, HasSubstr("\"read_gbps\":4.0000"));
  EXPECT_THAT(json, HasSubstr("\"write_gbps\":2.0000"));
  EXPECT_THAT(json, HasSubstr("\"total_gbps\":6.0000"));

  StreamResult limit;
  limit.bytes_per_array = 4 * kMiB;
  limit.elements = kMiB / 2;
  limit.repetitions = 7;
  limit.bytes_per_repetition = 12 * kMiB;
  limit.best_seconds = 0.001;
  limit.mean_seconds = 0.002;
  limit.gbps = 12.0;
  analyzer.SetLimit(limit);
  json = analyzer.ToJson();
  EXPECT_THAT(json, HasSubstr("\"limit\":{\"bytes_per_array\":4194304,"));
  EXPECT_THAT(json, HasSubstr("\"elements\":524288"));
  EXPECT_THAT(json, HasSubstr("\"repetitions\":7"));
  EXPECT_THAT(json, HasSubstr("\"bytes_per_repetition\":12582912"));
  EXPECT_THAT(json, HasSubstr("\"best_seconds\":0.001000000"));
  EXPECT_THAT(json, HasSubstr("\"mean_seconds\":0.002000000"));
  EXPECT_THAT(json, HasSubstr("\"gbps\":12.0000}"));
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(json.back(), '}');
}

TEST(BandwidthAnalyzerTest, ReportShowsSamplesAndShareOfTheLimit) {
  BandwidthAnalyzer analyzer;
  EXPECT_THAT(analyzer.Report(), HasSubstr("limit: none set"));
  ASSERT_TRUE(
      analyzer.Record("integration", 2'000'000'000, 1'000'000'000, 0.5).ok());
  StreamResult limit;
  limit.bytes_per_array = 2 * kMiB;
  limit.repetitions = 5;
  limit.gbps = 12.0;
  analyzer.SetLimit(limit);
  const std::string report = analyzer.Report();
  EXPECT_THAT(report,
              HasSubstr("limit: STREAM triad, 2.00 MiB arrays, best of 5: "
                        "12.00 GB/s"));
  EXPECT_THAT(report, HasSubstr("integration"));
  EXPECT_THAT(report, HasSubstr("6.00"));   // Total GB/s.
  EXPECT_THAT(report, HasSubstr("50.0%"));  // 6 of 12 GB/s.
}

TEST(BandwidthTest, FractionOfLimit) {
  const BandwidthSample s = MakeBandwidthSample("x", 3'000'000'000, 0, 1.0);
  StreamResult limit;
  limit.gbps = 12.0;
  EXPECT_DOUBLE_EQ(FractionOfLimit(s, limit), 0.25);
  limit.gbps = 0.0;
  EXPECT_EQ(FractionOfLimit(s, limit), 0.0);
}

// Sweeps 2 and 4 threads; every sample of every thread must be kept once.
TEST(BandwidthAnalyzerTest, ConcurrentMeasureKeepsEverySample) {
  constexpr int kPerThread = 200;
  for (int threads : {2, 4}) {
    BandwidthAnalyzer analyzer;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&analyzer, t] {
        volatile int sink = 0;
        for (int i = 0; i < kPerThread; ++i) {
          const size_t id = static_cast<size_t>(t) * 1000 + i;
          analyzer.Measure(absl::StrCat("t", t, "/", i), id, 2 * id,
                           [&sink] { sink = sink + 1; });
        }
      });
    }
    for (std::thread& w : workers) w.join();
    const std::vector<BandwidthSample> samples = analyzer.samples();
    ASSERT_EQ(samples.size(), static_cast<size_t>(threads * kPerThread))
        << threads << " threads";
    std::set<std::string> labels;
    for (const BandwidthSample& s : samples) {
      labels.insert(s.label);
      // Each sample is whole: its bytes belong to its label.
      const size_t slash = s.label.find('/');
      const size_t t = std::stoul(s.label.substr(1, slash - 1));
      const size_t i = std::stoul(s.label.substr(slash + 1));
      EXPECT_EQ(s.bytes_read, t * 1000 + i) << s.label;
      EXPECT_EQ(s.bytes_written, 2 * (t * 1000 + i)) << s.label;
    }
    EXPECT_EQ(labels.size(), samples.size()) << threads << " threads";
  }
}

TEST(StreamTriadTest, KernelComputesBPlusScalarTimesC) {
  const size_t n = 2 * kMiB / sizeof(double);
  std::vector<double> a(n + 1, -1.0), b(n), c(n);
  for (size_t i = 0; i < n; ++i) {
    b[i] = static_cast<double>(i);
    c[i] = 0.25 * static_cast<double>(i);
  }
  StreamTriad(a.data(), b.data(), c.data(), 3.0, n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(a[i], 1.75 * static_cast<double>(i)) << "element " << i;
  }
  EXPECT_EQ(a[n], -1.0) << "wrote past n";
}

TEST(StreamTriadTest, TwoMiBArraysGivePositiveBandwidth) {
  absl::StatusOr<StreamResult> r = MeasureStreamTriad(2 * kMiB, 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->bytes_per_array, 2 * kMiB);
  EXPECT_EQ(r->elements, 2 * kMiB / 8);
  EXPECT_EQ(r->repetitions, 3);
  EXPECT_EQ(r->bytes_per_repetition, 6 * kMiB);  // 2 reads + 1 write.
  EXPECT_GT(r->best_seconds, 0.0);
  EXPECT_LE(r->best_seconds, r->mean_seconds);
  EXPECT_GT(r->gbps, 0.0);
  EXPECT_DOUBLE_EQ(r->gbps, 6.0 * kMiB / r->best_seconds / 1e9);
  // a[i] = 2 + 3 * 0.5 = 3.5 in every element after the last repetition.
  EXPECT_EQ(r->checksum, 3.5 * static_cast<double>(r->elements));
}

TEST(StreamTriadTest, SizeRoundsDownToWholeDoubles) {
  absl::StatusOr<StreamResult> r = MeasureStreamTriad(kMiB + 7, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->bytes_per_array, kMiB);
  EXPECT_EQ(r->elements, kMiB / 8);
  EXPECT_EQ(r->bytes_per_repetition, 3 * kMiB);
}

TEST(StreamTriadTest, BadArgumentsAreNamed) {
  absl::StatusOr<StreamResult> small = MeasureStreamTriad(kMiB - 1, 1);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.status().message(), HasSubstr("bytes_per_array"));
  EXPECT_THAT(small.status().message(), HasSubstr("1048575"));

  for (int reps : {0, -3}) {
    absl::StatusOr<StreamResult> r = MeasureStreamTriad(kMiB, reps);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << reps;
    EXPECT_THAT(r.status().message(), HasSubstr("repetitions"));
  }
}

TEST(StreamTriadTest, OutOfMemoryIsResourceExhausted) {
  // 1 PiB per array: more than x86-64's 128 TiB of user address space.
  absl::StatusOr<StreamResult> r = MeasureStreamTriad(size_t{1} << 50, 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("bytes_per_array"));
  // 3 arrays overflow size_t.
  r = MeasureStreamTriad(std::numeric_limits<size_t>::max() / 2, 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace framealloc
