// Memory bandwidth analysis (see bandwidth.h).
#include "alloc/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "alloc/internal/bits.h"
#include "alloc/internal/json.h"

namespace framealloc {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMinTriadBytesPerArray = size_t{1} << 20;
// The triad's operands. All three values and every sum of up to 2^50
// elements of a[] are exact in double, so the checksum test is exact.
constexpr double kTriadB = 2.0;
constexpr double kTriadC = 0.5;
constexpr double kTriadScalar = 3.0;
constexpr double kTriadA = kTriadB + kTriadScalar * kTriadC;  // 3.5

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// GB/s; 0 when it is not a finite number (no time, or a time so short the
// quotient overflows), so the JSON never holds inf.
double Rate(size_t bytes, double seconds) {
  if (!(seconds > 0)) return 0.0;
  const double rate = static_cast<double>(bytes) / seconds / 1e9;
  return std::isfinite(rate) ? rate : 0.0;
}

// Tells the compiler that memory may be read here, so the stores of a
// repetition cannot be dropped or merged with the next one's.
void ClobberMemory(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

void AppendStreamJson(std::string* out, const StreamResult& r) {
  absl::StrAppend(out, "{\"bytes_per_array\":", r.bytes_per_array,
                  ",\"elements\":", r.elements,
                  ",\"repetitions\":", r.repetitions,
                  ",\"bytes_per_repetition\":", r.bytes_per_repetition,
                  ",\"best_seconds\":", absl::StrFormat("%.9f", r.best_seconds),
                  ",\"mean_seconds\":", absl::StrFormat("%.9f", r.mean_seconds),
                  ",\"gbps\":", absl::StrFormat("%.4f", r.gbps), "}");
}

}  // namespace

BandwidthSample MakeBandwidthSample(absl::string_view label, size_t bytes_read,
                                    size_t bytes_written, double seconds) {
  BandwidthSample s;
  s.label = std::string(label);
  s.bytes_read = bytes_read;
  s.bytes_written = bytes_written;
  s.seconds = seconds;
  s.read_gbps = Rate(bytes_read, seconds);
  s.write_gbps = Rate(bytes_written, seconds);
  // Summed as doubles: the two counts may add past SIZE_MAX.
  s.total_gbps = s.read_gbps + s.write_gbps;
  return s;
}

BandwidthSample BandwidthAnalyzer::Measure(absl::string_view label,
                                           size_t bytes_read,
                                           size_t bytes_written,
                                           absl::FunctionRef<void()> work) {
  const Clock::time_point start = Clock::now();
  work();
  const double seconds = Seconds(Clock::now() - start);
  BandwidthSample sample =
      MakeBandwidthSample(label, bytes_read, bytes_written, seconds);
  alloc_internal::MutexLock lock(&mu_);
  samples_.push_back(sample);
  return sample;
}

absl::StatusOr<BandwidthSample> BandwidthAnalyzer::Record(
    absl::string_view label, size_t bytes_read, size_t bytes_written,
    double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BandwidthAnalyzer::Record: seconds must be finite and >= 0, got ",
        seconds, " (label '", label, "')"));
  }
  BandwidthSample sample =
      MakeBandwidthSample(label, bytes_read, bytes_written, seconds);
  alloc_internal::MutexLock lock(&mu_);
  samples_.push_back(sample);
  return sample;
}

void BandwidthAnalyzer::SetLimit(const StreamResult& limit) {
  alloc_internal::MutexLock lock(&mu_);
  limit_ = limit;
}

std::optional<StreamResult> BandwidthAnalyzer::limit() const {
  alloc_internal::MutexLock lock(&mu_);
  return limit_;
}

std::vector<BandwidthSample> BandwidthAnalyzer::samples() const {
  alloc_internal::MutexLock lock(&mu_);
  return samples_;
}

void BandwidthAnalyzer::Clear() {
  alloc_internal::MutexLock lock(&mu_);
  samples_.clear();
}

std::string BandwidthAnalyzer::Report() const {
  std::vector<BandwidthSample> samples;
  std::optional<StreamResult> limit;
  {
    alloc_internal::MutexLock lock(&mu_);
    samples = samples_;
    limit = limit_;
  }
  std::string out;
  if (limit.has_value()) {
    absl::StrAppendFormat(
        &out, "limit: STREAM triad, %.2f MiB arrays, best of %d: %.2f GB/s\n",
        static_cast<double>(limit->bytes_per_array) / (1 << 20),
        limit->repetitions, limit->gbps);
  } else {
    out += "limit: none set\n";
  }
  int width = 24;
  for (const BandwidthSample& s : samples) {
    width = std::max(width, static_cast<int>(s.label.size()));
  }
  absl::StrAppendFormat(&out, "%-*s %12s %12s %12s %10s %10s %10s", width,
                        "label", "read MB", "written MB", "seconds",
                        "read GB/s", "write GB/s", "total GB/s");
  out += limit.has_value() ? "    % limit\n" : "\n";
  for (const BandwidthSample& s : samples) {
    absl::StrAppendFormat(
        &out, "%-*s %12.3f %12.3f %12.6f %10.2f %10.2f %10.2f", width, s.label,
        static_cast<double>(s.bytes_read) / 1e6,
        static_cast<double>(s.bytes_written) / 1e6, s.seconds, s.read_gbps,
        s.write_gbps, s.total_gbps);
    if (limit.has_value()) {
      absl::StrAppendFormat(&out, " %10.1f%%",
                            100.0 * FractionOfLimit(s, *limit));
    }
    out += "\n";
  }
  return out;
}

std::string BandwidthAnalyzer::ToJson() const {
  std::vector<BandwidthSample> samples;
  std::optional<StreamResult> limit;
  {
    alloc_internal::MutexLock lock(&mu_);
    samples = samples_;
    limit = limit_;
  }
  std::string out = "{\"limit\":";
  if (limit.has_value()) {
    AppendStreamJson(&out, *limit);
  } else {
    out += "null";
  }
  out += ",\"samples\":[";
  for (size_t i = 0; i < samples.size(); ++i) {
    const BandwidthSample& s = samples[i];
    if (i != 0) out += ",";
    out += "{\"label\":";
    alloc_internal::AppendJsonString(&out, s.label);
    absl::StrAppend(&out, ",\"bytes_read\":", s.bytes_read,
                    ",\"bytes_written\":", s.bytes_written,
                    ",\"seconds\":", absl::StrFormat("%.9f", s.seconds),
                    ",\"read_gbps\":", absl::StrFormat("%.4f", s.read_gbps),
                    ",\"write_gbps\":", absl::StrFormat("%.4f", s.write_gbps),
                    ",\"total_gbps\":", absl::StrFormat("%.4f", s.total_gbps),
                    "}");
  }
  out += "]}";
  return out;
}

void StreamTriad(double* __restrict a, const double* __restrict b,
                 const double* __restrict c, double scalar, size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + scalar * c[i];
}

absl::StatusOr<StreamResult> MeasureStreamTriad(size_t bytes_per_array,
                                                int repetitions) {
  if (bytes_per_array < kMinTriadBytesPerArray) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MeasureStreamTriad: bytes_per_array must be at least ",
        kMinTriadBytesPerArray, " (1 MiB), got ", bytes_per_array));
  }
  if (repetitions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("MeasureStreamTriad: repetitions must be at least 1, got ",
                     repetitions));
  }
  StreamResult result;
  result.elements = bytes_per_array / sizeof(double);
  result.bytes_per_array = result.elements * sizeof(double);
  result.repetitions = repetitions;
  if (!alloc_internal::CheckedMul(3, result.bytes_per_array,
                                  &result.bytes_per_repetition)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "MeasureStreamTriad: 3 arrays of bytes_per_array = ", bytes_per_array,
        " bytes exceed the address space"));
  }
  const size_t n = result.elements;
  std::unique_ptr<double[]> a(new (std::nothrow) double[n]);
  std::unique_ptr<double[]> b(new (std::nothrow) double[n]);
  std::unique_ptr<double[]> c(new (std::nothrow) double[n]);
  if (a == nullptr || b == nullptr || c == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "MeasureStreamTriad: cannot allocate 3 arrays of bytes_per_array = ",
        result.bytes_per_array, " bytes"));
  }
  // First touch: page faults happen here, not in the timed repetitions.
  for (size_t i = 0; i < n; ++i) {
    a[i] = 0.0;
    b[i] = kTriadB;
    c[i] = kTriadC;
  }
  double best = 0, total = 0;
  for (int r = 0; r < repetitions; ++r) {
    const Clock::time_point start = Clock::now();
    StreamTriad(a.get(), b.get(), c.get(), kTriadScalar, n);
    ClobberMemory(a.get());
    const double seconds = Seconds(Clock::now() - start);
    total += seconds;
    if (r == 0 || seconds < best) best = seconds;
  }
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += a[i];
  if (sum != kTriadA * static_cast<double>(n)) {
    return absl::InternalError(
        absl::StrFormat("MeasureStreamTriad: checksum %.17g, expected %.17g",
                        sum, kTriadA * static_cast<double>(n)));
  }
  result.checksum = sum;
  result.best_seconds = best;
  result.mean_seconds = total / repetitions;
  result.gbps = Rate(result.bytes_per_repetition, best);
  return result;
}

double FractionOfLimit(const BandwidthSample& sample,
                       const StreamResult& limit) {
  return limit.gbps > 0 ? sample.total_gbps / limit.gbps : 0.0;
}

}  // namespace framealloc
