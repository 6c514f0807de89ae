// Memory bandwidth: how many bytes a piece of work moves per second, and how
// that compares with what the machine can stream.
//
// For: putting a number on a memory-bound pass (a particle integration, a
// copy, a clear) next to the machine's limit, measured in the same run.
// BandwidthAnalyzer times a workload whose traffic the caller counts from
// the code (bytes it reads, bytes it writes) and keeps the samples for a
// text report and JSON. MeasureStreamTriad measures the limit the way
// STREAM does. Not for: counting traffic by itself (no hardware counters:
// the byte counts are the caller's), cache-level analysis, or profiling
// code whose traffic is not known.
//
// Units: GB/s means 10^9 bytes per second, as in STREAM; array sizes are
// given in bytes (MiB = 2^20 bytes in reports).
//
// Thread safety: BandwidthAnalyzer is thread-safe (Measure may run from
// several threads at once; the work itself runs outside the lock). The free
// functions hold no state.
// Out of memory: MeasureStreamTriad returns ResourceExhausted when its arrays
// cannot be allocated; the analyzer's sample list grows with std::vector
// (std::bad_alloc, like any container).
//
// Example:
//   framealloc::BandwidthAnalyzer analyzer;
//   absl::StatusOr<framealloc::StreamResult> limit =
//       framealloc::MeasureStreamTriad(size_t{64} << 20, 10);
//   if (limit.ok()) analyzer.SetLimit(*limit);
//   framealloc::BandwidthSample s = analyzer.Measure(
//       "copy", n * sizeof(float), n * sizeof(float),
//       [&] { std::memcpy(dst, src, n * sizeof(float)); });
//   std::printf("%s", analyzer.Report().c_str());
#ifndef ALLOC_BANDWIDTH_H_
#define ALLOC_BANDWIDTH_H_

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/internal/mutex.h"

namespace framealloc {

// One timed workload. Rates are bytes / seconds / 1e9, and 0 when `seconds`
// is 0 (a rate over no time is undefined; 0 keeps reports and JSON finite).
struct BandwidthSample {
  std::string label;
  size_t bytes_read = 0;
  size_t bytes_written = 0;
  double seconds = 0;
  double read_gbps = 0;
  double write_gbps = 0;
  double total_gbps = 0;  // (bytes_read + bytes_written) / seconds / 1e9.
};

// The STREAM triad's result: the machine's streaming limit for arrays of
// this size (arrays larger than the caches measure main memory; smaller
// ones measure the cache level they fit in).
struct StreamResult {
  size_t bytes_per_array = 0;  // elements * 8 (the request, rounded down).
  size_t elements = 0;         // Doubles per array.
  int repetitions = 0;
  // Bytes counted per repetition: 3 * bytes_per_array (2 arrays read, 1
  // written), STREAM's convention. Write-allocate caches also read the
  // written array, so the hardware moves up to 4/3 of this.
  size_t bytes_per_repetition = 0;
  double best_seconds = 0;  // Fastest repetition.
  double mean_seconds = 0;  // Mean of all repetitions.
  double gbps = 0;          // bytes_per_repetition / best_seconds / 1e9.
  // Sum of a[] after the last repetition; equals elements * (2 + 3 * 0.5)
  // (checked: a wrong sum is an InternalError). Keeps the triad observable.
  double checksum = 0;
};

// Times workloads and keeps their samples. Thread-safe.
class BandwidthAnalyzer {
 public:
  BandwidthAnalyzer() = default;
  BandwidthAnalyzer(const BandwidthAnalyzer&) = delete;
  BandwidthAnalyzer& operator=(const BandwidthAnalyzer&) = delete;

  // Runs `work` once, timed with a steady clock, and records a sample of
  // `bytes_read` and `bytes_written` (the caller's count of the traffic
  // `work` does) over the measured time. Returns the sample. `work` runs
  // without the analyzer's lock held, so it may call the analyzer.
  BandwidthSample Measure(absl::string_view label, size_t bytes_read,
                          size_t bytes_written, absl::FunctionRef<void()> work)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Records a sample timed elsewhere (for a pass timed in pieces, such as
  // one phase of many frames). InvalidArgument naming `seconds` when it is
  // negative, infinite or NaN; nothing is recorded then.
  absl::StatusOr<BandwidthSample> Record(absl::string_view label,
                                         size_t bytes_read,
                                         size_t bytes_written, double seconds)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The machine's limit, for the "% of limit" column of Report() and the
  // "limit" object of ToJson(). The latest call wins.
  void SetLimit(const StreamResult& limit) ABSL_LOCKS_EXCLUDED(mu_);
  std::optional<StreamResult> limit() const ABSL_LOCKS_EXCLUDED(mu_);

  // Every sample so far, in the order they were recorded.
  std::vector<BandwidthSample> samples() const ABSL_LOCKS_EXCLUDED(mu_);
  void Clear() ABSL_LOCKS_EXCLUDED(mu_);

  // A table, one line per sample (label, MB read and written, seconds, GB/s
  // read, written and total, and % of the limit when one is set), after a
  // line on the limit.
  std::string Report() const ABSL_LOCKS_EXCLUDED(mu_);
  // {"limit":{...}|null,"samples":[{"label":..,"bytes_read":..,
  // "bytes_written":..,"seconds":..,"read_gbps":..,"write_gbps":..,
  // "total_gbps":..},...]}.
  std::string ToJson() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable alloc_internal::Mutex mu_;
  std::vector<BandwidthSample> samples_ ABSL_GUARDED_BY(mu_);
  std::optional<StreamResult> limit_ ABSL_GUARDED_BY(mu_);
};

// A sample from counted bytes and a time (the arithmetic of Measure).
// REQUIRES: seconds >= 0 and finite (Record checks; this does not).
BandwidthSample MakeBandwidthSample(absl::string_view label, size_t bytes_read,
                                    size_t bytes_written, double seconds);

// The STREAM triad kernel: a[i] = b[i] + scalar * c[i] for i < n.
// REQUIRES: a, b and c hold n doubles each and do not overlap.
void StreamTriad(double* a, const double* b, const double* c, double scalar,
                 size_t n);

// Measures the STREAM triad (a[i] = b[i] + 3 * c[i]) over three arrays of
// `bytes_per_array / 8` doubles, `repetitions` times, and reports the best
// repetition. Bytes are counted as STREAM counts them: 3 arrays x 8 bytes
// per element per repetition (b and c read, a written). The arrays are
// written once before timing so page faults stay out of the measurement.
// InvalidArgument naming `bytes_per_array` when it is below 1 MiB (smaller
// arrays measure timer resolution more than bandwidth) or `repetitions`
// when it is below 1; ResourceExhausted when the arrays cannot be
// allocated.
absl::StatusOr<StreamResult> MeasureStreamTriad(size_t bytes_per_array,
                                                int repetitions);

// sample.total_gbps / limit.gbps: the fraction of the machine's streaming
// limit the sample reached (1.0 = 100%). 0 when limit.gbps is not positive.
double FractionOfLimit(const BandwidthSample& sample,
                       const StreamResult& limit);

}  // namespace framealloc

#endif  // ALLOC_BANDWIDTH_H_
