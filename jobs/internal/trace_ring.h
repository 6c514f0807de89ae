// Per-worker job timelines and their export as Chrome trace events.
//
// For: jobs::Runtime, which gives every worker slot a TraceRing and writes
// them out with WriteChromeTrace. Not for: users (Runtime::StartTrace and
// Runtime::WriteChromeTrace are the interface).
//
// A ring keeps the newest `capacity` events; only the thread occupying the
// slot writes it, and it is read only when no job runs.
#ifndef JOBS_INTERNAL_TRACE_RING_H_
#define JOBS_INTERNAL_TRACE_RING_H_

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <vector>

namespace framealloc {
namespace jobs {
namespace jobs_internal {

inline constexpr uint8_t kTraceStolen = 1;  // Taken from another node.
inline constexpr uint8_t kTraceInline = 2;  // Run inline by a waiting job.
inline constexpr uint8_t kTraceChild = 4;   // A Fork/ParallelFor child.

struct TraceEvent {
  uint64_t id = 0;             // Job id (0 for children).
  const char* name = nullptr;  // Static string or null.
  uint64_t start = 0;          // Time-stamp counter ticks.
  uint64_t end = 0;
  uint8_t flags = 0;
};

class TraceRing {
 public:
  void Init(size_t capacity) {
    events_.assign(capacity, TraceEvent());
    next_ = 0;
    size_ = 0;
  }
  void Add(const TraceEvent& e) {
    events_[next_] = e;
    next_ = next_ + 1 == events_.size() ? 0 : next_ + 1;
    if (size_ < events_.size()) ++size_;
  }
  size_t size() const { return size_; }
  // Oldest first.
  template <typename F>
  void ForEach(F&& f) const {
    if (events_.empty()) return;  // Never initialized: tracing never ran.
    const size_t first = (next_ + events_.size() - size_) % events_.size();
    for (size_t i = 0; i < size_; ++i) f(events_[(first + i) % events_.size()]);
  }

 private:
  std::vector<TraceEvent> events_;
  size_t next_ = 0;
  size_t size_ = 0;
};

struct TraceTrack {
  int node = 0;
  int worker = 0;
  const TraceRing* ring = nullptr;
  // The slot of an outside thread that helps in its waits
  // (OutsideWaitPolicy::kHelp), named so.
  bool outside = false;
};

// Writes {"traceEvents": [...]} with a process per node ("node k"), a
// thread per worker ("worker w") and one complete ("ph":"X") event per
// job, times in microseconds from `origin_ticks`.
void WriteChromeTrace(std::ostream& out, const std::vector<TraceTrack>& tracks,
                      uint64_t origin_ticks, double seconds_per_tick);

}  // namespace jobs_internal
}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_INTERNAL_TRACE_RING_H_
